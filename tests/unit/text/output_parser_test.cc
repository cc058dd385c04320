// OutputParser: hand-written cases with facts stated by the format (where a
// [THINK] block ends, which call an argument belongs to, what mistral-common
// stores as arguments), and the streaming invariants: any chunking of the same
// ids gives the same deltas and the same final result, the streamed text adds
// up to the final fields, and no delta ever carries broken UTF-8.
#include "engine/text/output_parser.h"

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/text/output_parser_test_util.h"

namespace sirocco::text {
namespace {

using parser_test::ParserTokenizer;

// Builds ids from pieces: "[X]"-style names of special tokens and "</s>" become
// their ids, std::string pieces are encoded as text.
class Ids {
 public:
  explicit Ids(const Tekkenizer& tok) : tok_(tok) {}
  Ids& Text(std::string_view text) {
    tok_.EncodeAppend(text, &ids_);
    return *this;
  }
  Ids& Special(std::string_view name) {
    absl::StatusOr<std::int32_t> id = tok_.SpecialTokenId(name);
    EXPECT_TRUE(id.ok()) << name;
    ids_.push_back(id.value_or(0));
    return *this;
  }
  Ids& Eos() {
    ids_.push_back(tok_.eos_id());
    return *this;
  }
  // Ordinary tokens of single bytes (the first 256 ranks are the bytes).
  Ids& Bytes(std::string_view bytes) {
    for (unsigned char b : bytes) ids_.push_back(tok_.num_special_tokens() + b);
    return *this;
  }
  const std::vector<std::int32_t>& ids() const { return ids_; }

 private:
  const Tekkenizer& tok_;
  std::vector<std::int32_t> ids_;
};

using parser_test::ParseRun;

ParseRun Parse(const Tekkenizer& tok, const std::vector<std::int32_t>& ids, const std::vector<size_t>& chunks) {
  return parser_test::ParseInChunks(tok, ids, chunks);
}

ParseRun ParseAll(const Tekkenizer& tok, const std::vector<std::int32_t>& ids) {
  return Parse(tok, ids, {std::max<size_t>(ids.size(), 1)});
}

std::string Streamed(const ParseRun& run, OutputDeltaKind kind, int index = -1) {
  std::string s;
  for (const OutputDelta& d : run.deltas) {
    if (d.kind == kind && d.tool_index == index) s += d.text;
  }
  return s;
}

std::vector<const OutputDelta*> Begins(const ParseRun& run) {
  std::vector<const OutputDelta*> out;
  for (const OutputDelta& d : run.deltas) {
    if (d.kind == OutputDeltaKind::kToolCallBegin) out.push_back(&d);
  }
  return out;
}

TEST(OutputParserTest, ReasoningThenAnswer) {
  const Tekkenizer& tok = ParserTokenizer("v15");
  Ids ids(tok);
  ids.Special("[THINK]").Text("Let me think… 🤔").Special("[/THINK]").Text("The answer is 42.").Eos();
  const ParseRun run = Parse(tok, ids.ids(), {1});
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kReasoning), "Let me think… 🤔");
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kAnswer), "The answer is 42.");
  ASSERT_EQ(run.deltas.size(), 2u);
  EXPECT_EQ(run.deltas[0].kind, OutputDeltaKind::kReasoning);  // reasoning streams first
  const ParsedOutput& r = run.result;
  ASSERT_EQ(r.content.size(), 2u);
  EXPECT_EQ(r.content[0], (OutputChunk{.thinking = true, .text = "Let me think… 🤔", .closed = true}));
  EXPECT_EQ(r.content[1], (OutputChunk{.thinking = false, .text = "The answer is 42.", .closed = false}));
  EXPECT_EQ(r.reasoning, "Let me think… 🤔");
  EXPECT_EQ(r.answer, "The answer is 42.");
  EXPECT_TRUE(r.ended_with_eos);
  EXPECT_EQ(r.problem, OutputProblem::kNone);
  EXPECT_EQ(r.finish_hint, FinishHint::kStop);
}

TEST(OutputParserTest, UnterminatedThinkIsReasoning) {
  const Tekkenizer& tok = ParserTokenizer("v15");
  Ids ids(tok);
  ids.Special("[THINK]").Text("still thinking");
  const ParseRun run = Parse(tok, ids.ids(), {2});
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kReasoning), "still thinking");
  ASSERT_EQ(run.result.content.size(), 1u);
  EXPECT_EQ(run.result.content[0], (OutputChunk{.thinking = true, .text = "still thinking", .closed = false}));
  EXPECT_EQ(run.result.answer, "");
  EXPECT_EQ(run.result.problem, OutputProblem::kNone);
  EXPECT_EQ(run.result.finish_hint, FinishHint::kUnfinished);
}

TEST(OutputParserTest, ThinkTokensAreOnlySpecialFromV13) {
  // v7 has no [THINK]: "[THINK]" typed as text is text, and stays answer.
  const Tekkenizer& tok = ParserTokenizer("v7");
  Ids ids(tok);
  ids.Text("[THINK]plain[/THINK]").Eos();
  const ParseRun run = ParseAll(tok, ids.ids());
  EXPECT_EQ(run.result.answer, "[THINK]plain[/THINK]");
  EXPECT_EQ(run.result.reasoning, "");
}

TEST(OutputParserTest, SeveralToolCallsV15) {
  const Tekkenizer& tok = ParserTokenizer("v15");
  Ids ids(tok);
  ids.Text("Checking.")
      .Special("[TOOL_CALLS]")
      .Text("get_weather")
      .Special("[ARGS]")
      .Text(R"({"city": "Zürich", "days": [1, 2]})")
      .Special("[TOOL_CALLS]")
      .Text("météo_🌦")
      .Special("[ARGS]")
      .Text(R"({"q":{"nested":{"deep":true}},"n":1.50})")
      .Eos();
  const ParseRun run = Parse(tok, ids.ids(), {3, 1, 5});
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kAnswer), "Checking.");
  const auto begins = Begins(run);
  ASSERT_EQ(begins.size(), 2u);
  EXPECT_EQ(begins[0]->tool_index, 0);
  EXPECT_EQ(begins[0]->tool_name, "get_weather");
  EXPECT_EQ(begins[0]->tool_id, "null");  // v13+ carries no call id
  EXPECT_EQ(begins[1]->tool_index, 1);
  EXPECT_EQ(begins[1]->tool_name, "météo_🌦");
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kToolCallArguments, 0), R"({"city": "Zürich", "days": [1, 2]})");
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kToolCallArguments, 1), R"({"q":{"nested":{"deep":true}},"n":1.50})");

  const ParsedOutput& r = run.result;
  ASSERT_EQ(r.tool_calls.size(), 2u);
  EXPECT_EQ(r.tool_calls[0].name, "get_weather");
  // json.dumps(json.loads(raw)): ASCII escapes, ", " and ": ", Python floats.
  EXPECT_EQ(r.tool_calls[0].arguments, R"({"city": "Z\u00fcrich", "days": [1, 2]})");
  EXPECT_EQ(r.tool_calls[0].raw_arguments, R"({"city": "Zürich", "days": [1, 2]})");
  EXPECT_EQ(r.tool_calls[1].arguments, R"({"q": {"nested": {"deep": true}}, "n": 1.5})");
  EXPECT_EQ(r.tool_calls[1].id, "null");
  EXPECT_EQ(r.answer, "Checking.");
  EXPECT_EQ(r.finish_hint, FinishHint::kToolCalls);
}

TEST(OutputParserTest, ReasoningThenToolCall) {
  const Tekkenizer& tok = ParserTokenizer("v15");
  Ids ids(tok);
  ids.Special("[THINK]")
      .Text("I need the weather.")
      .Special("[/THINK]")
      .Special("[TOOL_CALLS]")
      .Text("get_weather")
      .Special("[ARGS]")
      .Text("{}")
      .Eos();
  const ParseRun run = Parse(tok, ids.ids(), {1});
  EXPECT_EQ(run.result.reasoning, "I need the weather.");
  EXPECT_EQ(run.result.answer, "");
  ASSERT_EQ(run.result.tool_calls.size(), 1u);
  EXPECT_EQ(run.result.tool_calls[0].arguments, "{}");
  EXPECT_EQ(run.result.finish_hint, FinishHint::kToolCalls);
}

TEST(OutputParserTest, CallIdV11) {
  const Tekkenizer& tok = ParserTokenizer("v11");
  Ids ids(tok);
  ids.Special("[TOOL_CALLS]")
      .Text("f")
      .Special("[CALL_ID]")
      .Text("abc123XYZ")
      .Special("[ARGS]")
      .Text(R"({"a": 1})")
      .Special("[TOOL_CALLS]")
      .Text("g")
      .Special("[ARGS]")
      .Text("{}")
      .Eos();
  const ParseRun run = Parse(tok, ids.ids(), {1});
  const auto begins = Begins(run);
  ASSERT_EQ(begins.size(), 2u);
  EXPECT_EQ(begins[0]->tool_id, "abc123XYZ");
  EXPECT_EQ(begins[1]->tool_id, "null");
  ASSERT_EQ(run.result.tool_calls.size(), 2u);
  EXPECT_EQ(run.result.tool_calls[0].id, "abc123XYZ");
  EXPECT_EQ(run.result.tool_calls[0].name, "f");
  EXPECT_EQ(run.result.tool_calls[1].id, "null");
}

TEST(OutputParserTest, V11CallIdAfterArgsIsFlaggedAsDivergedStream) {
  // mistral-common (v11) splits a call at its [CALL_ID] first, so an earlier
  // [ARGS] becomes an ignored token of the name: the call is f / abc /
  // {"a": 1}. The stream announced f with no id at that first [ARGS] and
  // cannot take it back; the parser must say so.
  const Tekkenizer& tok = ParserTokenizer("v11");
  Ids ids(tok);
  ids.Special("[TOOL_CALLS]")
      .Text("f")
      .Special("[ARGS]")
      .Special("[CALL_ID]")
      .Text("abc")
      .Special("[ARGS]")
      .Text(R"({"a": 1})")
      .Eos();
  const ParseRun run = Parse(tok, ids.ids(), {1});
  ASSERT_EQ(run.result.tool_calls.size(), 1u);
  EXPECT_EQ(run.result.tool_calls[0].id, "abc");
  EXPECT_EQ(run.result.tool_calls[0].name, "f");
  EXPECT_EQ(run.result.tool_calls[0].arguments, R"({"a": 1})");
  EXPECT_EQ(run.result.problem, OutputProblem::kNone);
  EXPECT_TRUE(run.result.stream_diverged);
  EXPECT_EQ(run.result.finish_hint, FinishHint::kToolCalls);

  // The well-formed order streams exactly what the reference reads.
  Ids good(tok);
  good.Special("[TOOL_CALLS]").Text("f").Special("[CALL_ID]").Text("abc").Special("[ARGS]").Text(R"({"a": 1})").Eos();
  EXPECT_FALSE(Parse(tok, good.ids(), {1}).result.stream_diverged);
}

TEST(OutputParserTest, JsonListCallStreamsWhenItsElementCloses) {
  // v3/v7: [TOOL_CALLS][{...}, {...}]. The first call must be streamed once
  // its object is complete, before the second is generated.
  const Tekkenizer& tok = ParserTokenizer("v3");
  Ids head(tok);
  head.Special("[TOOL_CALLS]").Text(R"([{"name": "f", "arguments": {"s": "]}[{\"", "n": 1e2}, "id": "abcdefghi"})");
  Ids tail(tok);
  tail.Text(R"(, {"name": "g", "arguments": {}}])").Eos();

  absl::StatusOr<std::unique_ptr<OutputParser>> parser = OutputParser::Create(tok);
  ASSERT_TRUE(parser.ok());
  std::vector<OutputDelta> first;
  for (std::int32_t id : head.ids()) {
    for (OutputDelta& d : (*parser)->Push(std::span(&id, 1))) first.push_back(std::move(d));
  }
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].kind, OutputDeltaKind::kToolCallBegin);
  EXPECT_EQ(first[0].tool_name, "f");
  EXPECT_EQ(first[0].tool_id, "abcdefghi");
  EXPECT_EQ(first[1].text, R"({"s": "]}[{\"", "n": 100.0})");
  const std::vector<OutputDelta> second = (*parser)->Push(tail.ids());
  ASSERT_EQ(second.size(), 2u);
  EXPECT_EQ(second[0].tool_index, 1);
  EXPECT_EQ(second[0].tool_id, "null");
  const ParsedOutput r = (*parser)->Finish();
  ASSERT_EQ(r.tool_calls.size(), 2u);
  EXPECT_EQ(r.tool_calls[0].arguments, first[1].text);
  EXPECT_EQ(r.tool_calls[1].name, "g");
  EXPECT_EQ(r.finish_hint, FinishHint::kToolCalls);
}

TEST(OutputParserTest, CharacterSplitAcrossTokensIsNeverBroken) {
  const Tekkenizer& tok = ParserTokenizer("v15");
  Ids ids(tok);
  ids.Special("[THINK]").Bytes("\xF0\x9F").Bytes("\xA4\x94").Special("[/THINK]").Bytes("caf\xC3").Bytes("\xA9!").Eos();
  const ParseRun run = Parse(tok, ids.ids(), {1});
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kReasoning), "🤔");
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kAnswer), "café!");
  EXPECT_EQ(run.result.reasoning, "🤔");
  EXPECT_EQ(run.result.answer, "café!");
}

TEST(OutputParserTest, CharacterCutBySpecialTokenBecomesReplacement) {
  // The reference decodes each side of a special token on its own: the two
  // halves of one character become U+FFFD on each side.
  const Tekkenizer& tok = ParserTokenizer("v15");
  Ids ids(tok);
  ids.Special("[THINK]").Bytes("\xF0\x9F").Special("[/THINK]").Bytes("\xA4\x94").Eos();
  const ParseRun run = Parse(tok, ids.ids(), {1});
  EXPECT_EQ(run.result.reasoning, "\uFFFD");
  EXPECT_EQ(run.result.answer, "\uFFFD\uFFFD");
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kReasoning), run.result.reasoning);
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kAnswer), run.result.answer);
}

TEST(OutputParserTest, TrailingPartialCharacterComesInLastDeltas) {
  const Tekkenizer& tok = ParserTokenizer("v15");
  Ids ids(tok);
  ids.Text("ok ").Bytes("\xE2\x82");
  absl::StatusOr<std::unique_ptr<OutputParser>> parser = OutputParser::Create(tok);
  ASSERT_TRUE(parser.ok());
  std::string streamed;
  for (const OutputDelta& d : (*parser)->Push(ids.ids())) streamed += d.text;
  EXPECT_EQ(streamed, "ok ");
  const ParsedOutput r = (*parser)->Finish();
  ASSERT_EQ(r.last_deltas.size(), 1u);
  EXPECT_EQ(r.last_deltas[0].text, "\uFFFD");
  EXPECT_EQ(r.answer, "ok \uFFFD");
}

TEST(OutputParserTest, InvalidJsonArgumentsAreReportedWithTheRawText) {
  const Tekkenizer& tok = ParserTokenizer("v15");
  Ids ids(tok);
  ids.Special("[TOOL_CALLS]").Text("f").Special("[ARGS]").Text(R"({"city": "Par)");
  const ParseRun run = Parse(tok, ids.ids(), {1});
  const ParsedOutput& r = run.result;
  EXPECT_TRUE(r.tool_calls.empty());
  EXPECT_EQ(r.problem, OutputProblem::kInvalidToolArguments);
  EXPECT_EQ(r.problem_message, "Invalid tokenized tool call arguments.");
  EXPECT_EQ(r.unparsed_text, R"([TOOL_CALLS]f[ARGS]{"city": "Par)");
  EXPECT_EQ(r.finish_hint, FinishHint::kInvalidOutput);
  // The call was announced and its text streamed before the problem showed.
  ASSERT_EQ(Begins(run).size(), 1u);
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kToolCallArguments, 0), R"({"city": "Par)");
}

TEST(OutputParserTest, MissingArgsIsMalformed) {
  const Tekkenizer& tok = ParserTokenizer("v15");
  Ids ids(tok);
  ids.Special("[TOOL_CALLS]").Text("get_weather{}").Eos();
  const ParsedOutput r = ParseAll(tok, ids.ids()).result;
  EXPECT_EQ(r.problem, OutputProblem::kMalformedToolCall);
  EXPECT_EQ(r.problem_message, "Control token [ARGS] not found in the list of tokens.");
  EXPECT_EQ(r.unparsed_text, "[TOOL_CALLS]get_weather{}");
}

TEST(OutputParserTest, ArgsWithoutNameGivesAnEmptyNameAsTheReferenceDoes) {
  const Tekkenizer& tok = ParserTokenizer("v15");
  Ids ids(tok);
  ids.Special("[TOOL_CALLS]").Special("[ARGS]").Text(R"({"a": 1})").Eos();
  const ParseRun run = Parse(tok, ids.ids(), {1});
  ASSERT_EQ(run.result.tool_calls.size(), 1u);
  EXPECT_EQ(run.result.tool_calls[0].name, "");
  EXPECT_EQ(run.result.problem, OutputProblem::kNone);
  ASSERT_EQ(Begins(run).size(), 1u);
  EXPECT_EQ(Begins(run)[0]->tool_name, "");
}

TEST(OutputParserTest, ThinkProblems) {
  const Tekkenizer& tok = ParserTokenizer("v15");
  Ids nested(tok);
  nested.Special("[THINK]").Text("a").Special("[THINK]").Text("b").Special("[/THINK]").Text("c").Eos();
  const ParseRun n = Parse(tok, nested.ids(), {1});
  EXPECT_EQ(n.result.problem, OutputProblem::kNestedThink);
  EXPECT_EQ(n.result.finish_hint, FinishHint::kInvalidOutput);
  // Read on regardless: the inner [THINK] is ignored.
  EXPECT_EQ(n.result.reasoning, "ab");
  EXPECT_EQ(n.result.answer, "c");
  EXPECT_EQ(Streamed(n, OutputDeltaKind::kReasoning), "ab");

  Ids stray(tok);
  stray.Text("x").Special("[/THINK]").Text("y").Eos();
  const ParseRun s = Parse(tok, stray.ids(), {1});
  EXPECT_EQ(s.result.problem, OutputProblem::kUnmatchedEndThink);
  EXPECT_EQ(s.result.answer, "xy");
  EXPECT_EQ(Streamed(s, OutputDeltaKind::kAnswer), "xy");
}

TEST(OutputParserTest, EmptyAndOutOfVocabularyInputDoNotCrash) {
  const Tekkenizer& tok = ParserTokenizer("v15");
  const ParseRun empty = ParseAll(tok, {});
  EXPECT_TRUE(empty.deltas.empty());
  EXPECT_EQ(empty.result.finish_hint, FinishHint::kUnfinished);

  Ids ids(tok);
  ids.Text("a");
  std::vector<std::int32_t> bad = ids.ids();
  bad.push_back(static_cast<std::int32_t>(tok.vocab_size()) + 5);
  bad.push_back(-3);
  Ids rest(tok);
  rest.Text("b").Eos();
  bad.insert(bad.end(), rest.ids().begin(), rest.ids().end());
  const ParseRun run = Parse(tok, bad, {1});
  EXPECT_EQ(run.result.answer, "ab");
  EXPECT_EQ(Streamed(run, OutputDeltaKind::kAnswer), "ab");
}

TEST(OutputParserTest, CreateRequiresTheVersionsControlTokens) {
  for (const char* name : {"v3", "v7", "v11", "v13", "v15"}) {
    EXPECT_TRUE(OutputParser::Create(ParserTokenizer(name)).ok()) << name;
  }
}

// Streaming invariants over random id sequences made of the pieces that
// matter: control tokens, EOS, split characters, JSON fragments.
TEST(OutputParserTest, AnyChunkingGivesTheSameDeltasAndResult) {
  std::mt19937 rng(7);
  const char* const kTexts[] = {"a",    " hello", "😀", "é", "{", "}",           "[",
                                "]",    "\"",     ":", ",", "1", R"({"a": 1})", R"([{"name": "f", "arguments": {}}])",
                                "name", "\\",     "\n"};
  const char* const kSpecials[] = {"[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "[INST]"};
  for (const char* version : {"v3", "v7", "v11", "v13", "v15"}) {
    const Tekkenizer& tok = ParserTokenizer(version);
    for (int trial = 0; trial < 150; ++trial) {
      Ids ids(tok);
      const int n = std::uniform_int_distribution<int>(1, 16)(rng);
      for (int i = 0; i < n; ++i) {
        const int r = std::uniform_int_distribution<int>(0, 99)(rng);
        if (r < 30) {
          const char* special = kSpecials[rng() % std::size(kSpecials)];
          if (tok.SpecialTokenId(special).ok()) ids.Special(special);
        } else if (r < 40) {
          ids.Eos();
        } else if (r < 55) {
          ids.Bytes(std::string(1, static_cast<char>("\xF0\x9F\x98\x80\xC3\xA9\xFF"[rng() % 7])));
        } else {
          ids.Text(kTexts[rng() % std::size(kTexts)]);
        }
      }
      SCOPED_TRACE(parser_test::DescribeIds(ids.ids(), version));
      const ParseRun whole = ParseAll(tok, ids.ids());
      std::vector<size_t> sizes;
      for (int k = 0; k < 8; ++k) sizes.push_back(std::uniform_int_distribution<size_t>(1, 6)(rng));
      for (const std::vector<size_t>& chunks : {std::vector<size_t>{1}, sizes}) {
        const ParseRun chunked = Parse(tok, ids.ids(), chunks);
        EXPECT_EQ(chunked.deltas, whole.deltas);
        parser_test::ExpectSameResult(chunked.result, whole.result);
      }
      parser_test::ExpectStreamMatchesResult(whole.deltas, whole.result, tok.version());
    }
  }
}

}  // namespace
}  // namespace sirocco::text
