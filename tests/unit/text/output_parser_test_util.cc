#include "tests/unit/text/output_parser_test_util.h"

#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include "engine/text/tekken_file.h"
#include "engine/text/utf8.h"
#include "gtest/gtest.h"

namespace sirocco::text::parser_test {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) ADD_FAILURE() << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::unique_ptr<Tekkenizer> LoadFromSource(const nlohmann::json& source) {
  absl::StatusOr<std::unique_ptr<Tekkenizer>> tok;
  if (source.contains("file")) {
    tok = Tekkenizer::Load(std::string(SIROCCO_TEKKEN_DIR) + "/" + source["file"].get<std::string>());
  } else {
    absl::StatusOr<TokenizerVersion> version = ParseTokenizerVersion(source["derived"].get<std::string>());
    if (!version.ok()) {
      ADD_FAILURE() << version.status();
      return nullptr;
    }
    tok = LoadDerivedTekken(std::string(SIROCCO_TEKKEN_DIR) + "/" + source["base"].get<std::string>(), *version);
  }
  if (!tok.ok()) {
    ADD_FAILURE() << "tokenizer " << source.dump() << ": " << tok.status();
    return nullptr;
  }
  return *std::move(tok);
}

void AppendCanonical(const OutputDelta& d, std::vector<OutputDelta>* out) {
  if (d.kind != OutputDeltaKind::kToolCallBegin && !out->empty() && out->back().kind == d.kind &&
      out->back().tool_index == d.tool_index) {
    out->back().text += d.text;
  } else {
    out->push_back(d);
  }
}

void CheckDelta(const OutputDelta& d) {
  EXPECT_TRUE(IsValidUtf8(d.text)) << d.text;
  EXPECT_TRUE(IsValidUtf8(d.tool_name)) << d.tool_name;
  EXPECT_TRUE(IsValidUtf8(d.tool_id)) << d.tool_id;
  if (d.kind != OutputDeltaKind::kToolCallBegin) {
    EXPECT_FALSE(d.text.empty());
  }
}

}  // namespace

const nlohmann::json& ParseGolden() {
  static const nlohmann::json* golden = [] {
    const std::string text = ReadFile(std::string(SIROCCO_TEXT_REFERENCE_DIR) + "/parse_golden.json");
    return new nlohmann::json(nlohmann::json::parse(text));
  }();
  return *golden;
}

const Tekkenizer& ParserTokenizer(std::string_view name) {
  static std::mutex mu;
  static auto* loaded = new std::map<std::string, std::unique_ptr<Tekkenizer>, std::less<>>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded->find(name);
  if (it == loaded->end()) {
    const nlohmann::json& sources = ParseGolden().at("tokenizers");
    std::unique_ptr<Tekkenizer> tok = LoadFromSource(sources.at(std::string(name)));
    if (tok == nullptr) std::abort();  // the failure is already reported
    it = loaded->emplace(std::string(name), std::move(tok)).first;
  }
  return *it->second;
}

ParseRun ParseInChunks(const Tekkenizer& tokenizer, const std::vector<std::int32_t>& ids,
                       const std::vector<std::size_t>& chunks) {
  absl::StatusOr<std::unique_ptr<OutputParser>> parser = OutputParser::Create(tokenizer);
  EXPECT_TRUE(parser.ok()) << parser.status();
  ParseRun run;
  if (!parser.ok()) return run;
  std::size_t pos = 0;
  for (std::size_t c = 0; pos < ids.size(); ++c) {
    const std::size_t n = std::min(std::max<std::size_t>(chunks[c % chunks.size()], 1), ids.size() - pos);
    for (const OutputDelta& d : (*parser)->Push(std::span(ids).subspan(pos, n))) {
      CheckDelta(d);
      AppendCanonical(d, &run.deltas);
    }
    pos += n;
  }
  run.result = (*parser)->Finish();
  for (const OutputDelta& d : run.result.last_deltas) {
    CheckDelta(d);
    AppendCanonical(d, &run.deltas);
  }
  run.result.last_deltas.clear();
  return run;
}

std::string DescribeIds(const std::vector<std::int32_t>& ids, std::string_view tokenizer) {
  std::string s = std::string(tokenizer) + " ids=[";
  for (std::size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "]";
}

void ExpectSameResult(const ParsedOutput& actual, const ParsedOutput& expected) {
  EXPECT_EQ(actual.content, expected.content);
  EXPECT_EQ(actual.answer, expected.answer);
  EXPECT_EQ(actual.reasoning, expected.reasoning);
  EXPECT_EQ(actual.tool_calls, expected.tool_calls);
  EXPECT_EQ(actual.ended_with_eos, expected.ended_with_eos);
  EXPECT_EQ(actual.problem, expected.problem);
  EXPECT_EQ(actual.problem_message, expected.problem_message);
  EXPECT_EQ(actual.unparsed_text, expected.unparsed_text);
  EXPECT_EQ(actual.finish_hint, expected.finish_hint);
  EXPECT_EQ(actual.stream_diverged, expected.stream_diverged);
  EXPECT_EQ(actual.last_deltas, expected.last_deltas);
}

void ExpectStreamMatchesResult(const std::vector<OutputDelta>& deltas, const ParsedOutput& result,
                               TokenizerVersion version) {
  std::string answer;
  std::string reasoning;
  std::vector<const OutputDelta*> begins;
  std::vector<std::string> arguments;
  for (const OutputDelta& d : deltas) {
    switch (d.kind) {
      case OutputDeltaKind::kAnswer:
        answer += d.text;
        break;
      case OutputDeltaKind::kReasoning:
        reasoning += d.text;
        break;
      case OutputDeltaKind::kToolCallBegin:
        EXPECT_EQ(d.tool_index, static_cast<int>(begins.size()));
        begins.push_back(&d);
        arguments.emplace_back();
        break;
      case OutputDeltaKind::kToolCallArguments:
        ASSERT_GE(d.tool_index, 0);
        ASSERT_LT(d.tool_index, static_cast<int>(arguments.size()));
        arguments[static_cast<std::size_t>(d.tool_index)] += d.text;
        break;
    }
  }
  EXPECT_EQ(answer, result.answer);
  EXPECT_EQ(reasoning, result.reasoning);
  if (result.problem != OutputProblem::kNone) {
    EXPECT_FALSE(result.stream_diverged);
    return;
  }
  bool same = begins.size() == result.tool_calls.size();
  for (std::size_t i = 0; same && i < begins.size(); ++i) {
    const ParsedToolCall& call = result.tool_calls[i];
    same = begins[i]->tool_name == call.name && begins[i]->tool_id == call.id &&
           arguments[i] == (version <= TokenizerVersion::kV7 ? call.arguments : call.raw_arguments);
  }
  // The stream may only disagree where the parser says so, and only for v11.
  EXPECT_EQ(result.stream_diverged, !same);
  if (!same) {
    EXPECT_EQ(version, TokenizerVersion::kV11);
  }
}

}  // namespace sirocco::text::parser_test
