// Replays tests/reference/text/parse_golden.json (written by
// parse_reference.py from mistral-common's own parser) through OutputParser:
// every case at three chunkings (all at once, one id at a time, random
// sizes) must give the reference's reading: same content chunks, tool calls,
// EOS flag, or the same rejection. No Python needed.
#include <random>
#include <string>
#include <vector>

#include "engine/text/output_parser.h"
#include "gtest/gtest.h"
#include "tests/unit/text/output_parser_test_util.h"

namespace sirocco::text {
namespace {

using parser_test::ParseGolden;
using parser_test::ParserTokenizer;

OutputProblem ProblemFromKind(const std::string& kind) {
  if (kind == "nested_think") return OutputProblem::kNestedThink;
  if (kind == "unmatched_end_think") return OutputProblem::kUnmatchedEndThink;
  if (kind == "malformed_tool_call") return OutputProblem::kMalformedToolCall;
  if (kind == "invalid_tool_arguments") return OutputProblem::kInvalidToolArguments;
  ADD_FAILURE() << "unknown error kind " << kind;
  return OutputProblem::kNone;
}

void ExpectMatchesReference(const ParsedOutput& r, const nlohmann::json& expected) {
  if (expected.contains("error")) {
    const nlohmann::json& error = expected["error"];
    EXPECT_EQ(r.problem, ProblemFromKind(error["kind"].get<std::string>()));
    if (!error["message"].is_null()) {
      EXPECT_EQ(r.problem_message, error["message"].get<std::string>());
    }
    EXPECT_EQ(r.finish_hint, FinishHint::kInvalidOutput);
    return;
  }
  EXPECT_EQ(r.problem, OutputProblem::kNone) << r.problem_message;
  std::vector<OutputChunk> content;
  for (const nlohmann::json& c : expected["content"]) {
    if (c["type"] == "text") {
      content.push_back({.thinking = false, .text = c["text"].get<std::string>(), .closed = false});
    } else {
      content.push_back(
          {.thinking = true, .text = c["thinking"].get<std::string>(), .closed = c["closed"].get<bool>()});
    }
  }
  EXPECT_EQ(r.content, content);
  ASSERT_EQ(r.tool_calls.size(), expected["tool_calls"].size());
  for (std::size_t i = 0; i < r.tool_calls.size(); ++i) {
    const nlohmann::json& call = expected["tool_calls"][i];
    EXPECT_EQ(r.tool_calls[i].id, call["id"].get<std::string>()) << "call " << i;
    EXPECT_EQ(r.tool_calls[i].name, call["name"].get<std::string>()) << "call " << i;
    EXPECT_EQ(r.tool_calls[i].arguments, call["arguments"].get<std::string>()) << "call " << i;
  }
  EXPECT_EQ(r.ended_with_eos, !expected["prefix"].get<bool>());
}

class OutputParserGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(OutputParserGoldenTest, MatchesMistralCommonAtAnyChunking) {
  const std::string& tokenizer_name = GetParam();
  const Tekkenizer& tok = ParserTokenizer(tokenizer_name);
  std::mt19937 rng(12345);
  int cases = 0;
  for (const nlohmann::json& c : ParseGolden()["cases"]) {
    if (c["tokenizer"] != tokenizer_name) continue;
    ++cases;
    const std::vector<std::int32_t> ids = c["ids"].get<std::vector<std::int32_t>>();
    SCOPED_TRACE(c["label"].get<std::string>() + " " + parser_test::DescribeIds(ids, tokenizer_name));
    const parser_test::ParseRun whole = parser_test::ParseInChunks(tok, ids, {ids.size()});
    ExpectMatchesReference(whole.result, c["expected"]);
    parser_test::ExpectStreamMatchesResult(whole.deltas, whole.result, tok.version());

    std::vector<std::size_t> random_sizes;
    for (int k = 0; k < 16; ++k) random_sizes.push_back(std::uniform_int_distribution<std::size_t>(1, 7)(rng));
    for (const std::vector<std::size_t>& chunks : {std::vector<std::size_t>{1}, random_sizes}) {
      const parser_test::ParseRun chunked = parser_test::ParseInChunks(tok, ids, chunks);
      EXPECT_EQ(chunked.deltas, whole.deltas);
      parser_test::ExpectSameResult(chunked.result, whole.result);
    }
  }
  EXPECT_GE(cases, 100) << "golden cases for " << tokenizer_name;
  RecordProperty("cases", cases);
}

std::vector<std::string> GoldenTokenizers() {
  std::vector<std::string> names;
  for (const auto& [name, source] : ParseGolden()["tokenizers"].items()) names.push_back(name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(Goldens, OutputParserGoldenTest, ::testing::ValuesIn(GoldenTokenizers()),
                         [](const ::testing::TestParamInfo<std::string>& param_info) { return param_info.param; });

}  // namespace
}  // namespace sirocco::text
