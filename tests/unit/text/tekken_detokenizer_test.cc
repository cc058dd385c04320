// Streaming detokenization: hand-worked cases, and the invariant that the
// streamed text equals Tekkenizer::Decode of the whole sequence on many random
// sequences that cut characters and mix special tokens. (The golden test also
// streams mistral-common's decode cases.)
#include "engine/text/detokenizer.h"

#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "engine/text/utf8.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sirocco::text {
namespace {

using nlohmann::json;
constexpr std::string_view R = kReplacementCharacter;

// Special tokens 0..4; ranks 256.. hold whole and partial characters.
const std::vector<std::string> kExtra = {"\xF0\x9F", "\x8E\x89", "\xE4\xB8", "\xAD\xE6\x96\x87", "Hello",
                                         "a\xC3",    "\xA9t\xC3", "\xE2\x82\xAC", " \xF0\x9F\x98"};
constexpr std::int32_t kSpecial = 5;

std::unique_ptr<Tekkenizer> Toy() {
  json vocab = json::array();
  for (int b = 0; b < 256; ++b) {
    vocab.push_back({{"rank", b}, {"token_bytes", absl::Base64Escape(std::string(1, static_cast<char>(b)))},
                     {"token_str", nullptr}});
  }
  for (std::size_t i = 0; i < kExtra.size(); ++i) {
    vocab.push_back({{"rank", 256 + i}, {"token_bytes", absl::Base64Escape(kExtra[i])}, {"token_str", nullptr}});
  }
  json specials = json::array();
  const char* names[] = {"<unk>", "<s>", "</s>", "[INST]", "[THINK]"};
  for (int i = 0; i < kSpecial; ++i) specials.push_back({{"rank", i}, {"token_str", names[i]}, {"is_control", true}});
  json file = {{"config",
                {{"pattern", ".+"},
                 {"num_vocab_tokens", 256 + kExtra.size()},
                 {"default_vocab_size", 256 + kExtra.size() + kSpecial},
                 {"default_num_special_tokens", kSpecial},
                 {"version", "v13"}}},
               {"vocab", vocab},
               {"special_tokens", specials}};
  auto t = Tekkenizer::FromJson(file.dump(), "toy");
  EXPECT_TRUE(t.ok()) << t.status();
  return std::move(*t);
}

std::int32_t Byte(int b) { return kSpecial + b; }
std::int32_t Extra(int i) { return kSpecial + 256 + i; }

std::string Stream(IncrementalDetokenizer& d, const std::vector<std::int32_t>& ids,
                   std::vector<std::string>* chunks = nullptr) {
  std::string all;
  for (std::int32_t id : ids) {
    auto piece = d.Push(id);
    EXPECT_TRUE(piece.ok()) << piece.status();
    EXPECT_TRUE(IsValidUtf8(*piece)) << "broken UTF-8 left the detokenizer";
    if (chunks) chunks->push_back(*piece);
    all += *piece;
  }
  const std::string tail = d.Flush();
  if (chunks) chunks->push_back(tail);
  return all + tail;
}

TEST(IncrementalDetokenizer, HoldsASplitEmojiUntilItsLastByte) {
  auto t = Toy();
  IncrementalDetokenizer d(*t, SpecialTokenPolicy::kKeep);
  std::vector<std::string> chunks;
  EXPECT_EQ(Stream(d, {Extra(4), Extra(0), Extra(1), Byte('!')}, &chunks), "Hello\xF0\x9F\x8E\x89!");
  EXPECT_EQ(chunks, (std::vector<std::string>{"Hello", "", "\xF0\x9F\x8E\x89", "!", ""}));
}

TEST(IncrementalDetokenizer, SpecialTokenEndsTheRunEvenWhenIgnored) {
  auto t = Toy();
  IncrementalDetokenizer ignore(*t, SpecialTokenPolicy::kIgnore);
  std::vector<std::string> chunks;
  EXPECT_EQ(Stream(ignore, {Byte(0xE2), 1, Byte(0x82), Byte(0xAC)}, &chunks),
            std::string(R) + std::string(R) + std::string(R));
  EXPECT_EQ(chunks[1], R);  // the held byte is rendered when the special token arrives
  IncrementalDetokenizer keep(*t, SpecialTokenPolicy::kKeep);
  EXPECT_EQ(Stream(keep, {Extra(2), 4, Extra(3)}), std::string(R) + "[THINK]" + std::string(R) + "\xE6\x96\x87");
}

TEST(IncrementalDetokenizer, FlushRendersAnUnfinishedCharacter) {
  auto t = Toy();
  IncrementalDetokenizer d(*t, SpecialTokenPolicy::kIgnore);
  EXPECT_EQ(*d.Push(Extra(8)), " ");
  EXPECT_EQ(d.pending_bytes(), 3u);
  EXPECT_EQ(d.Flush(), R);
  EXPECT_EQ(d.pending_bytes(), 0u);
  EXPECT_EQ(*d.Push(Extra(7)), "\xE2\x82\xAC");  // reusable after Flush
}

TEST(IncrementalDetokenizer, RaiseRejectsSpecialTokensAndKeepsState) {
  auto t = Toy();
  IncrementalDetokenizer d(*t, SpecialTokenPolicy::kRaise);
  EXPECT_EQ(*d.Push(Extra(5)), "a");
  EXPECT_EQ(d.Push(2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d.Push(t->vocab_size()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d.Push(-3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*d.Push(Byte(0xA9)), "\xC3\xA9");
}

TEST(IncrementalDetokenizer, StreamEqualsDecodeOnRandomSequences) {
  auto t = Toy();
  std::mt19937 rng(3);
  const int vocab = static_cast<int>(t->vocab_size());
  for (const SpecialTokenPolicy policy : {SpecialTokenPolicy::kIgnore, SpecialTokenPolicy::kKeep}) {
    for (int trial = 0; trial < 20000; ++trial) {
      std::vector<std::int32_t> ids;
      const int n = 1 + static_cast<int>(rng() % 16);
      for (int i = 0; i < n; ++i) {
        const unsigned r = rng() % 10;
        if (r < 2) ids.push_back(static_cast<std::int32_t>(rng() % kSpecial));
        else if (r < 5) ids.push_back(Extra(static_cast<int>(rng() % kExtra.size())));
        else if (r < 8) ids.push_back(Byte(0x80 + static_cast<int>(rng() % 0x80)));  // UTF-8 structure bytes
        else ids.push_back(static_cast<std::int32_t>(kSpecial + rng() % (vocab - kSpecial)));
      }
      IncrementalDetokenizer d(*t, policy);
      ASSERT_EQ(Stream(d, ids), *t->Decode(ids, policy)) << "trial " << trial;
    }
  }
}

}  // namespace
}  // namespace sirocco::text
