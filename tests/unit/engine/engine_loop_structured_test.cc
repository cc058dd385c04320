// The engine loop with a response format, on the tiny test model with a
// 512-token vocabulary given made-up bytes: every answer is checked with
// nlohmann::json (a parser independent of the grammar) and against the
// schema by hand; a replayed token the format refuses, and a loop without a
// vocabulary, are refused with the documented codes.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine_loop.h"
#include "engine/structured/constraint.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/test_models.h"

namespace sirocco::engine {
namespace {

constexpr std::int32_t kSpecial = 10;  // ids below are control tokens; 2 is EOS (the config's)

// Token bytes: a few JSON pieces, then short lowercase words, spaces and
// digits, so that the random model has many ways to write each document.
std::vector<std::string> TokenBytes(std::int32_t vocab) {
  std::vector<std::string> out(static_cast<std::size_t>(kSpecial));
  for (const char* piece :
       {"{",     "}",    "[", "]", "\"", ":",  ",",   " ",    "\n",  "{\"", "\":",      "\",\"",  "true",
        "false", "null", "-", ".", "e",  "\\", "\\n", "name", "age", "ok",  "\"name\"", "\"age\""}) {
    out.emplace_back(piece);
  }
  for (int d = 0; d < 10; ++d) out.push_back(std::to_string(d));
  for (std::size_t i = 0; out.size() < static_cast<std::size_t>(vocab); ++i) {
    std::string word(1 + i % 3, static_cast<char>('a' + i % 26));
    word[0] = static_cast<char>('a' + (i / 3) % 26);
    out.push_back(word);
  }
  return out;
}

class EngineLoopStructuredTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = testing::MakeTestModel(testing::SmallVocabTiny(), "engine_loop_structured").release();
  }
  static void TearDownTestSuite() { delete model_; }

  static std::shared_ptr<const structured::ConstraintVocabulary> Vocabulary() {
    static const std::vector<std::string> bytes = TokenBytes(static_cast<std::int32_t>(model_->config().vocab_size));
    std::vector<std::string_view> views(bytes.begin(), bytes.end());
    std::unique_ptr<bool[]> special(new bool[views.size()]);
    for (std::size_t i = 0; i < views.size(); ++i) special[i] = i < static_cast<std::size_t>(kSpecial);
    return std::make_shared<const structured::ConstraintVocabulary>(
        views, std::span<const bool>(special.get(), views.size()), structured::ControlTokens{3, 4, 5, 6, {2}});
  }

  std::unique_ptr<EngineLoop> Loop(bool with_vocabulary) {
    EngineOptions o;
    o.model = model_;
    o.num_blocks = 64;
    o.block_size = 8;
    o.max_tokens_per_step = 16;
    o.max_seqs_per_step = 6;
    if (with_vocabulary) o.constraint_vocabulary = Vocabulary();
    auto loop = EngineLoop::Create(o);
    EXPECT_TRUE(loop.ok()) << loop.status();
    return loop.ok() ? *std::move(loop) : nullptr;
  }

  // One grammar for every request, as a worker's GrammarCache gives them:
  // equal states of different requests then share cached masks.
  static structured::ResponseConstraint Schema() {
    static const auto grammar = structured::JsonGrammar::Compile(R"({"type": "object",
        "properties": {"name": {"type": "string", "maxLength": 5},
                       "age": {"type": "integer", "minimum": 0, "maximum": 99},
                       "ok": {"type": "boolean"}},
        "required": ["name", "age"], "additionalProperties": false})");
    EXPECT_TRUE(grammar.ok()) << grammar.status();
    return structured::ResponseConstraint{*grammar, nullptr, false};
  }

  static RequestSpec Spec(std::uint64_t seed) {
    RequestSpec r;
    r.prompt = {1, 40, 41, 42, 43};
    r.stop.max_tokens = 120;
    r.sampling.temperature = 1.0f;
    r.sampling.seed = seed;
    r.response = Schema();
    return r;
  }

  // Tokens and the end event of a stream.
  static std::pair<std::vector<std::int32_t>, StreamEvent> Run(RequestStream& stream) {
    std::vector<std::int32_t> tokens;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < give_up) {
      if (!stream.Wait(std::chrono::milliseconds(100))) continue;
      for (StreamEvent& e : stream.Drain()) {
        if (e.type == StreamEvent::Type::kEnd) return {tokens, std::move(e)};
        tokens.push_back(e.sample.token);
      }
    }
    ADD_FAILURE() << "no end event";
    return {tokens, StreamEvent{}};
  }

  static Mistral4Model* model_;
};
Mistral4Model* EngineLoopStructuredTest::model_ = nullptr;

TEST_F(EngineLoopStructuredTest, EverySampledAnswerIsADocumentOfTheSchema) {
  auto loop = Loop(true);
  ASSERT_NE(loop, nullptr);
  const std::vector<std::string> bytes = TokenBytes(static_cast<std::int32_t>(model_->config().vocab_size));
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (std::uint64_t seed = 0; seed < 6; ++seed) {
    auto stream = loop->Submit(RequestId{seed + 1}, Spec(seed));
    ASSERT_TRUE(stream.ok()) << stream.status();
    streams.push_back(*stream);
  }
  std::vector<std::string> texts;
  for (auto& stream : streams) {
    auto [tokens, end] = Run(*stream);
    EXPECT_EQ(end.reason, ExitReason::kStop) << end.status;
    ASSERT_FALSE(tokens.empty());
    EXPECT_EQ(tokens.back(), 2) << "ends at EOS";
    std::string text;
    for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
      ASSERT_GE(tokens[i], kSpecial) << "a control token inside the answer";
      text += bytes[static_cast<std::size_t>(tokens[i])];
    }
    const nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
    ASSERT_TRUE(doc.is_object()) << text;
    ASSERT_TRUE(doc.contains("name") && doc["name"].is_string()) << text;
    EXPECT_LE(doc["name"].get<std::string>().size(), 5u) << text;  // ASCII-only bytes: length in characters
    ASSERT_TRUE(doc.contains("age") && doc["age"].is_number_integer()) << text;
    EXPECT_GE(doc["age"].get<int>(), 0) << text;
    EXPECT_LE(doc["age"].get<int>(), 99) << text;
    for (const auto& [key, value] : doc.items()) {
      EXPECT_TRUE(key == "name" || key == "age" || (key == "ok" && value.is_boolean())) << text;
    }
    texts.push_back(text);
  }
  EXPECT_NE(texts[0], texts[1]) << "seeds sample different documents";
  // One mask per sampled token; the start of the document, the same state in
  // all six requests, came from the cache for five of them at least.
  const EngineStats stats = loop->Stats();
  EXPECT_EQ(stats.token_masks, stats.tokens_sampled);
  EXPECT_GE(stats.token_mask_cache_hits, 5);
  EXPECT_LE(stats.token_mask_cache_hits, stats.token_masks);
  loop->Stop();
  EXPECT_EQ(loop->Stats().scheduler.free_blocks, loop->Stats().scheduler.total_blocks);
}

TEST_F(EngineLoopStructuredTest, AReplayedTokenTheFormatRefusesFailsTheRequest) {
  auto loop = Loop(true);
  ASSERT_NE(loop, nullptr);
  RequestSpec spec = Spec(1);
  spec.prompt.push_back(10 + 1);  // "}": no document starts with it
  spec.replayed = 1;
  auto stream = loop->Submit(RequestId{1}, std::move(spec));
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto [tokens, end] = Run(**stream);
  EXPECT_TRUE(tokens.empty());
  EXPECT_EQ(end.reason, ExitReason::kFailed);
  EXPECT_EQ(end.status.code(), absl::StatusCode::kInvalidArgument) << end.status;
  EXPECT_NE(std::string(end.status.message()).find("replayed"), std::string::npos) << end.status;
  // A replayed "{" is fine, and the answer continues from it.
  RequestSpec ok = Spec(1);
  ok.prompt.push_back(10);
  ok.replayed = 1;
  auto next = loop->Submit(RequestId{2}, std::move(ok));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(Run(**next).second.reason, ExitReason::kStop);
  loop->Stop();
  EXPECT_EQ(loop->Stats().scheduler.free_blocks, loop->Stats().scheduler.total_blocks);
}

TEST_F(EngineLoopStructuredTest, WithoutAVocabularyAResponseFormatIsRefused) {
  auto loop = Loop(false);
  ASSERT_NE(loop, nullptr);
  auto stream = loop->Submit(RequestId{1}, Spec(1));
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kFailedPrecondition) << stream.status();
}

}  // namespace
}  // namespace sirocco::engine
