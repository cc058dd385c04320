// The Tekkenizer on small tekken files written here: id layout, truncation,
// special tokens (never produced from text), decode policies, and the load
// errors mistral-common raises for the same files.
#include "engine/text/tekken.h"

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sirocco::text {
namespace {

using nlohmann::json;
using Ids = std::vector<std::int32_t>;

constexpr const char* kPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Ranks 256.. of the toy vocabulary.
const std::vector<std::string> kExtra = {"He", "ll", "llo", "Hello", " world", "wo", "rld"};

json Vocab(const std::vector<std::string>& extra) {
  json v = json::array();
  for (int b = 0; b < 256; ++b) {
    v.push_back({{"rank", b}, {"token_bytes", absl::Base64Escape(std::string(1, static_cast<char>(b)))},
                 {"token_str", nullptr}});
  }
  for (std::size_t i = 0; i < extra.size(); ++i) {
    v.push_back({{"rank", 256 + i}, {"token_bytes", absl::Base64Escape(extra[i])}, {"token_str", extra[i]}});
  }
  return v;
}

json Specials(const std::vector<std::string>& names) {
  json s = json::array();
  for (std::size_t i = 0; i < names.size(); ++i) s.push_back({{"rank", i}, {"token_str", names[i]}, {"is_control", true}});
  return s;
}

// 10 special tokens (<unk>, <s>, </s>, [INST] and six fillers), all of kExtra.
json ToyFile(const std::string& version = "v11", int inner = 256 + 7) {
  return {{"config",
           {{"pattern", kPattern},
            {"num_vocab_tokens", 256 + kExtra.size()},
            {"default_vocab_size", inner + 10},
            {"default_num_special_tokens", 10},
            {"version", version}}},
          {"vocab", Vocab(kExtra)},
          {"special_tokens", Specials({"<unk>", "<s>", "</s>", "[INST]"})}};
}

std::unique_ptr<Tekkenizer> Load(const json& file) {
  auto t = Tekkenizer::FromJson(file.dump(), "toy");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

std::string LoadError(const json& file) {
  auto t = Tekkenizer::FromJson(file.dump(), "toy");
  return t.ok() ? "loaded" : std::string(t.status().message());
}

TEST(Tekkenizer, OrdinaryIdsAreRanksShiftedPastTheSpecialTokens) {
  auto t = Load(ToyFile());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->num_special_tokens(), 10);
  EXPECT_EQ(t->vocab_size(), 273);
  EXPECT_EQ(t->version(), TokenizerVersion::kV11);
  // "Hello" (rank 259) and " world" (rank 260) are whole tokens.
  EXPECT_EQ(t->Encode("Hello world"), (Ids{269, 270}));
  EXPECT_EQ(t->Encode("A"), (Ids{10 + 'A'}));
  EXPECT_EQ(t->Encode(""), Ids{});
  EXPECT_EQ(t->TokenBytes(269), "Hello");
  EXPECT_EQ(t->TokenBytes(3), "[INST]");
  EXPECT_EQ(t->TokenBytes(273), "");
}

TEST(Tekkenizer, VocabularyIsTruncatedToTheConfiguredSize) {
  // Only ranks 256..258 (He, ll, llo) survive: "Hello" merges He + l + l + o
  // -> He|ll|o -> He|llo, and " world" stays bytes.
  auto t = Load(ToyFile("v11", 256 + 3));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 269);
  EXPECT_EQ(t->Encode("Hello"), (Ids{266, 268}));
  EXPECT_EQ(t->Encode(" world"), (Ids{10 + ' ', 10 + 'w', 10 + 'o', 10 + 'r', 10 + 'l', 10 + 'd'}));
  EXPECT_EQ(t->TokenBytes(269), "");
}

TEST(Tekkenizer, SpecialTokenTextInContentStaysText) {
  auto t = Load(ToyFile());
  ASSERT_NE(t, nullptr);
  for (std::int32_t id : t->Encode("<s>[INST]</s><unk><SPECIAL_5>")) EXPECT_FALSE(t->IsSpecial(id)) << id;
  auto text = t->Decode(t->Encode("<s>[INST] Hello"), SpecialTokenPolicy::kRaise);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<s>[INST] Hello");
}

TEST(Tekkenizer, SpecialTokenLookupAndFillers) {
  auto t = Load(ToyFile());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->bos_id(), 1);
  EXPECT_EQ(t->eos_id(), 2);
  EXPECT_EQ(t->unk_id(), 0);
  EXPECT_EQ(t->pad_id(), -1);  // not in this file
  EXPECT_EQ(*t->SpecialTokenId("[INST]"), 3);
  EXPECT_EQ(*t->SpecialTokenId("<SPECIAL_5>"), 5);  // slots after the list are named by id
  EXPECT_EQ(t->SpecialTokenId("[TOOL_CALLS]").status().message(), "Unknown control token [TOOL_CALLS]");
  EXPECT_TRUE(t->IsSpecial(9));
  EXPECT_FALSE(t->IsSpecial(10));
  EXPECT_EQ(t->IdToPiece(5), "<SPECIAL_5>");
  EXPECT_EQ(t->IdToPiece(269), "Hello");
  EXPECT_EQ(t->IdToPiece(10 + 0xE2), "\xEF\xBF\xBD");  // a lone lead byte renders as U+FFFD
}

TEST(Tekkenizer, DecodePolicies) {
  auto t = Load(ToyFile());
  ASSERT_NE(t, nullptr);
  const Ids ids = {1, 269, 3, 270, 2};
  EXPECT_EQ(*t->Decode(ids, SpecialTokenPolicy::kIgnore), "Hello world");
  EXPECT_EQ(*t->Decode(ids, SpecialTokenPolicy::kKeep), "<s>Hello[INST] world</s>");
  auto raised = t->Decode(ids, SpecialTokenPolicy::kRaise);
  EXPECT_EQ(raised.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(raised.status().message().find("([1])"), std::string::npos) << raised.status();
  EXPECT_FALSE(t->Decode(Ids{273}, SpecialTokenPolicy::kKeep).ok());
  EXPECT_FALSE(t->Decode(Ids{-1}, SpecialTokenPolicy::kIgnore).ok());
}

TEST(Tekkenizer, DecodeRendersEachRunOfOrdinaryTokensOnItsOwn) {
  auto t = Load(ToyFile());
  ASSERT_NE(t, nullptr);
  const std::int32_t e2 = 10 + 0xE2, x82 = 10 + 0x82, xac = 10 + 0xAC;
  EXPECT_EQ(*t->Decode(Ids{e2, x82, xac}, SpecialTokenPolicy::kKeep), "\xE2\x82\xAC");  // the euro sign
  // A special token splits the character even when it renders as nothing.
  EXPECT_EQ(*t->Decode(Ids{e2, 1, x82, xac}, SpecialTokenPolicy::kIgnore), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(*t->Decode(Ids{e2, x82, 1, xac}, SpecialTokenPolicy::kKeep), "\xEF\xBF\xBD<s>\xEF\xBF\xBD");
}

TEST(Tekkenizer, InvalidUtf8InputIsEncodedAsReplacementCharacters) {
  auto t = Load(ToyFile());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->Encode("a\xFF" "b"), t->Encode("a\xEF\xBF\xBD" "b"));
  EXPECT_EQ(t->Encode("\xE2\x82"), t->Encode("\xEF\xBF\xBD"));
}

TEST(Tekkenizer, OlderFilesWithoutSpecialTokensGetTheDeprecatedList) {
  json f = ToyFile("v3");
  f.erase("special_tokens");
  f["config"]["default_num_special_tokens"] = 100;
  f["config"]["default_vocab_size"] = 256 + 7 + 100;
  auto t = Load(f);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->SpecialTokenId("[TOOL_CALLS]"), 9);
  EXPECT_EQ(*t->SpecialTokenId("<pad>"), 11);
  EXPECT_EQ(*t->SpecialTokenId("[TOOL_CONTENT]"), 19);
  EXPECT_EQ(*t->SpecialTokenId("<SPECIAL_20>"), 20);
  EXPECT_EQ(t->pad_id(), 11);
}

TEST(Tekkenizer, ImageAndModelSettingsSections) {
  json f = ToyFile("v11");
  f["multimodal"] = {{"image_patch_size", 14}, {"max_image_size", 1540}, {"spatial_merge_size", 2}};
  auto t = Load(f);
  ASSERT_NE(t, nullptr);
  ASSERT_TRUE(t->image_config().has_value());
  EXPECT_EQ(t->image_config()->image_patch_size, 14);
  EXPECT_EQ(t->image_config()->spatial_merge_size, 2);

  json v15 = ToyFile("v15");
  v15["image"] = {{"image_patch_size", 16}, {"max_image_size", 1024}};
  v15["model_settings_builder"] = {{"reasoning_effort", {{"values", {"none", "high"}}}}};
  t = Load(v15);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->image_config()->spatial_merge_size, 1);
  ASSERT_TRUE(t->model_settings_builder_json().has_value());
  EXPECT_EQ(json::parse(*t->model_settings_builder_json()), v15["model_settings_builder"]);
  EXPECT_FALSE(Load(ToyFile("v13"))->model_settings_builder_json().has_value());
}

TEST(Tekkenizer, RejectsWhatMistralCommonRejects) {
  json f = ToyFile("v4");
  EXPECT_NE(LoadError(f).find("Unknown version: v4"), std::string::npos) << LoadError(f);
  f = ToyFile("v11");
  f.erase("special_tokens");
  EXPECT_NE(LoadError(f).find("Special tokens not found"), std::string::npos);
  f = ToyFile("v13");
  f["multimodal"] = {{"image_patch_size", 14}, {"max_image_size", 1540}};
  EXPECT_NE(LoadError(f).find("has to be called 'image'"), std::string::npos);
  f = ToyFile("v13");
  f["model_settings_builder"] = json::object();
  EXPECT_NE(LoadError(f).find("model_settings_builder is not supported"), std::string::npos);
  f = ToyFile();
  f["special_tokens"] = Specials({"<s>", "<s>"});
  EXPECT_NE(LoadError(f).find("unique"), std::string::npos);
  f = ToyFile();
  f["special_tokens"][1]["rank"] = 7;
  EXPECT_NE(LoadError(f).find("rank"), std::string::npos);
  f = ToyFile("v11", 256 + 8);  // needs one more token than the vocabulary has
  EXPECT_NE(LoadError(f).find("vocabulary has"), std::string::npos);
  f = ToyFile();
  f["vocab"][256]["rank"] = 5;
  EXPECT_NE(LoadError(f).find("has rank"), std::string::npos);
  f = ToyFile();
  f["vocab"][3]["token_bytes"] = "!!";
  EXPECT_NE(LoadError(f).find("base64"), std::string::npos);
  f = ToyFile();
  f["config"]["pattern"] = R"(\w+)";
  EXPECT_NE(LoadError(f).find("unsupported escape"), std::string::npos);
  f = ToyFile();
  f["image"] = {{"image_patch_size", 14}, {"max_image_size", 1540}, {"bogus", 1}};
  EXPECT_NE(LoadError(f).find("unknown image config field"), std::string::npos);
  EXPECT_NE(LoadError(json::array()).find("not a JSON object"), std::string::npos);
}

TEST(Tekkenizer, ConcurrentEncodesAgree) {
  auto t = Load(ToyFile());
  ASSERT_NE(t, nullptr);
  const std::string text = "Hello world, hello  Wörld 123 \xF0\x9F\x8E\x89\n\n";
  const Ids expected = t->Encode(text);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 2000; ++i) mismatches[k] += t->Encode(text) != expected;
    });
  }
  for (auto& th : threads) th.join();
  for (int m : mismatches) EXPECT_EQ(m, 0);
}

TEST(TokenizerVersionNames, RoundTrip) {
  for (const char* name : {"v1", "v2", "v3", "v7", "v11", "v13", "v15"}) {
    auto v = ParseTokenizerVersion(name);
    ASSERT_TRUE(v.ok()) << name;
    EXPECT_EQ(TokenizerVersionName(*v), name);
  }
  EXPECT_FALSE(ParseTokenizerVersion("v14").ok());
  EXPECT_LT(TokenizerVersion::kV13, TokenizerVersion::kV15);
}

}  // namespace
}  // namespace sirocco::text
