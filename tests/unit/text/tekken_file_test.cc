// Derived tekken files (v7, v11, v13, v15): the special-token layout each
// version declares in engine/text/data/tekken_versions.json, the v15 model
// settings, and that writing the file and loading it back gives the same
// tokenizer as building it in memory.
#include "engine/text/tekken_file.h"

#include <cstdio>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sirocco::text {
namespace {

std::string BaseFile() { return std::string(SIROCCO_TEKKEN_DIR) + "/tekken_240911.json"; }

// The real vocabulary is not committed; tools/setup.sh fetches it.
bool HaveBase() {
  if (std::filesystem::exists(BaseFile())) return true;
  ADD_FAILURE() << BaseFile() << " is missing: run tools/setup.sh (it extracts the tekken files of the "
                << "mistral-common wheel into third_party/tekken/)";
  return false;
}

TEST(DerivedTekken, SpecListsTheFourVersions) {
  const auto spec = nlohmann::json::parse(DerivedTekkenSpecJson());
  EXPECT_EQ(spec["base_vocabulary"], "tekken_240911.json");
  ASSERT_EQ(spec["versions"].size(), DerivedTekkenVersions().size());
  for (TokenizerVersion v : DerivedTekkenVersions()) {
    EXPECT_TRUE(spec["versions"].contains(std::string(TokenizerVersionName(v)))) << TokenizerVersionName(v);
  }
}

TEST(DerivedTekken, SpecialTokensOfEachVersion) {
  if (!HaveBase()) return;
  struct Expected {
    TokenizerVersion version;
    std::vector<std::pair<std::string, int>> tokens;
    std::vector<std::string> absent;
  };
  const Expected cases[] = {
      {TokenizerVersion::kV7, {{"<s>", 1}, {"[TOOL_CALLS]", 9}, {"[TOOL_CONTENT]", 19}, {"<SPECIAL_20>", 20}},
       {"[ARGS]", "[THINK]"}},
      {TokenizerVersion::kV11, {{"[SYSTEM_PROMPT]", 17}, {"<SPECIAL_31>", 31}, {"[ARGS]", 32}, {"[CALL_ID]", 33}},
       {"[THINK]", "[MODEL_SETTINGS]"}},
      {TokenizerVersion::kV13, {{"[ARGS]", 32}, {"[THINK]", 34}, {"[/THINK]", 35}, {"<SPECIAL_36>", 36}},
       {"[MODEL_SETTINGS]"}},
      {TokenizerVersion::kV15,
       {{"[THINK]", 34}, {"[/THINK]", 35}, {"[MODEL_SETTINGS]", 36}, {"[/MODEL_SETTINGS]", 37}, {"<SPECIAL_999>", 999}},
       {}},
  };
  for (const Expected& c : cases) {
    auto t = LoadDerivedTekken(BaseFile(), c.version);
    ASSERT_TRUE(t.ok()) << t.status();
    const auto& tok = **t;
    EXPECT_EQ(tok.version(), c.version);
    EXPECT_EQ(tok.num_special_tokens(), 1000);
    EXPECT_EQ(tok.vocab_size(), 131072);
    for (const auto& [text, id] : c.tokens) {
      auto got = tok.SpecialTokenId(text);
      EXPECT_TRUE(got.ok() && *got == id) << TokenizerVersionName(c.version) << " " << text;
    }
    for (const std::string& text : c.absent) EXPECT_FALSE(tok.SpecialTokenId(text).ok()) << text;
    ASSERT_TRUE(tok.image_config().has_value());
    EXPECT_EQ(tok.image_config()->image_patch_size, 14);
    EXPECT_EQ(tok.image_config()->max_image_size, 1540);
    EXPECT_EQ(tok.image_config()->spatial_merge_size, 2);
    EXPECT_EQ(tok.model_settings_builder_json().has_value(), c.version == TokenizerVersion::kV15);
  }
}

TEST(DerivedTekken, V15DeclaresReasoningEffortNoneOrHigh) {
  if (!HaveBase()) return;
  auto t = LoadDerivedTekken(BaseFile(), TokenizerVersion::kV15);
  ASSERT_TRUE(t.ok()) << t.status();
  const auto msb = nlohmann::json::parse(*(*t)->model_settings_builder_json());
  EXPECT_EQ(msb["reasoning_effort"]["values"], nlohmann::json({"none", "high"}));
  EXPECT_EQ(msb["reasoning_effort"]["default"], "none");
  EXPECT_EQ(msb["reasoning_effort"]["accepts_none"], true);
}

TEST(DerivedTekken, WrittenFileLoadsAsTheSameTokenizer) {
  if (!HaveBase()) return;
  const std::string out = ::testing::TempDir() + "/tekken_v15.json";
  ASSERT_TRUE(WriteDerivedTekken(BaseFile(), TokenizerVersion::kV15, out).ok());
  auto from_file = Tekkenizer::Load(out);
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  auto in_memory = LoadDerivedTekken(BaseFile(), TokenizerVersion::kV15);
  ASSERT_TRUE(in_memory.ok());
  EXPECT_EQ((*from_file)->name(), "tekken_v15");
  const std::string text = "[MODEL_SETTINGS]{\"reasoning_effort\": \"high\"} Bonjour 世界 🎉";
  EXPECT_EQ((*from_file)->Encode(text), (*in_memory)->Encode(text));
  // The id of the released Mistral Small 4 tokenizer for this JSON (mistral-common's test data).
  EXPECT_EQ((*from_file)->Encode("{\"reasoning_effort\": \"none\"}"),
            (std::vector<std::int32_t>{19227, 80277, 1302, 13196, 1609, 1449, 2811, 1429, 17670, 46005}));
  std::remove(out.c_str());
}

TEST(DerivedTekken, Errors) {
  EXPECT_FALSE(BuildDerivedTekkenJson("{}", TokenizerVersion::kV15).ok());
  EXPECT_FALSE(BuildDerivedTekkenJson("{\"config\": {}, \"vocab\": []}", TokenizerVersion::kV3).ok());
  EXPECT_EQ(WriteDerivedTekken("/nonexistent/tekken.json", TokenizerVersion::kV7, "/tmp/x.json").code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sirocco::text
