// Streamed parsing of generated ids into reasoning, answer and tool calls.
//
// The router feeds each request's generated ids, as they arrive, to one
// OutputParser. Push() returns what can be streamed to the client now:
// answer text, reasoning text (between [THINK] and [/THINK], v13+), and tool
// calls (a begin fragment with index, id and name, then argument text).
// Finish() returns the whole turn exactly as mistral-common's reference parser
// reads the same ids (the `detokenize_to_assistant_message` route of its
// experimental server): the same content chunks, tool calls (arguments
// normalised to `json.dumps(json.loads(raw))`), EOS/prefix flag, and the same
// rejections. Where the reference rejects the output (nested [THINK],
// [/THINK] without [THINK], a tool call without [ARGS], arguments that are not
// JSON, ...) Finish() still returns everything it could read plus the raw text
// of what it could not, and names the problem so the router can pick a finish
// reason.
//
// Tool-call syntax follows the tokenizer's version:
//   v2..v7  [TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}, ...]
//   v11     [TOOL_CALLS]name[CALL_ID]id[ARGS]{...}   ([CALL_ID]id optional)
//   v13+    [TOOL_CALLS]name[ARGS]{...}               (no call id: "null")
// one [TOOL_CALLS] per call for v11+, and everything after the first
// [TOOL_CALLS] belongs to tool calls (as in the reference).
//
// Text is produced by IncrementalDetokenizer and flushed at every special
// token, so a character split across tokens is never broken and the streamed
// text is what decoding each segment whole gives (the reference decodes each
// run of ordinary tokens on its own). The streamed answer and reasoning always
// add up to the final ones; streamed tool calls equal the final ones whenever
// the output is valid, except the one v11 case `stream_diverged` reports.
//
// Two deliberate departures, both where the reference cannot answer at all:
// an id outside the vocabulary (the reference raises KeyError) reads as
// nothing, and a lone surrogate escape in a JSON name, id or string argument
// (a Python str UTF-8 cannot carry) becomes U+FFFD.
//
// Thread-safety: an OutputParser belongs to one request and one thread at a
// time. The Tekkenizer it reads must outlive it and may be shared (const).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/text/detokenizer.h"
#include "engine/text/tekken.h"

namespace sirocco::text {

enum class OutputDeltaKind : std::uint8_t {
  kAnswer,             // `text`: more answer text
  kReasoning,          // `text`: more reasoning text
  kToolCallBegin,      // a new tool call: `tool_index`, `tool_id`, `tool_name`
  kToolCallArguments,  // `text`: more argument text of call `tool_index`
};

// One piece of the stream. For v11+ the argument text is the model's own
// text, streamed as it arrives; for v2..v7 (one JSON list per [TOOL_CALLS]) a
// call is streamed once its list element is complete, with the normalised
// arguments.
struct OutputDelta {
  OutputDeltaKind kind = OutputDeltaKind::kAnswer;
  std::string text;
  int tool_index = -1;  // 0-based, counting every call begun in this turn
  std::string tool_id;
  std::string tool_name;

  bool operator==(const OutputDelta&) const = default;
};

// What the reference rejects, by cause. The router maps any of them to an
// error-like finish reason (OpenAI servers say "error"/"tool_calls" with the
// raw text as content).
enum class OutputProblem : std::uint8_t {
  kNone,
  kNestedThink,           // [THINK] inside a think block
  kUnmatchedEndThink,     // [/THINK] outside a think block
  kMalformedToolCall,     // no/repeated [ARGS] or [CALL_ID]; v2..v7 payload not a
                          // JSON list of {"name", "arguments"}; name or id not a string
  kInvalidToolArguments,  // arguments not JSON, or JSON that is neither an object,
                          // a string nor null
};

// A content chunk as the reference builds it, in order.
struct OutputChunk {
  bool thinking = false;  // a ThinkChunk (else a TextChunk)
  std::string text;
  bool closed = false;  // ThinkChunk only: ended by [/THINK]

  bool operator==(const OutputChunk&) const = default;
};

struct ParsedToolCall {
  std::string id = "null";  // the reference's default when the format has no id
  std::string name;
  // mistral-common's FunctionCall.arguments: json.dumps of the parsed value
  // (ensure_ascii, ", "/": " separators); a JSON string value is kept as is,
  // null becomes "{}".
  std::string arguments;
  // The argument text as generated (v11+); v2..v7 have no separate argument
  // text, so it equals `arguments` there.
  std::string raw_arguments;

  bool operator==(const ParsedToolCall&) const = default;
};

enum class FinishHint : std::uint8_t {
  kStop,           // ended with EOS, no tool call
  kToolCalls,      // at least one tool call and no problem (EOS or not)
  kUnfinished,     // no EOS at the end: the router's own reason (length, stop string...)
  kInvalidOutput,  // `problem` is set: the reference would reject this output
};

struct ParsedOutput {
  std::vector<OutputChunk> content;        // empty when the reference's content is None
  std::string answer;                      // the text chunks, concatenated
  std::string reasoning;                   // the think chunks, concatenated
  std::vector<ParsedToolCall> tool_calls;  // only the calls that parsed
  bool ended_with_eos = false;             // the reference's `prefix` is its negation

  // The first problem the reference would reject the output for (its order:
  // think blocks, then tool calls in order), with the reference's message.
  OutputProblem problem = OutputProblem::kNone;
  std::string problem_message;
  // Text (special tokens spelled out) of each [TOOL_CALLS] segment that did
  // not parse, for the router to surface instead of silently dropping it.
  std::string unparsed_text;

  FinishHint finish_hint = FinishHint::kStop;
  // The streamed tool calls (begin fragments and argument text) differ from
  // `tool_calls` although the reference accepts the output. Only v11 does
  // this: a [CALL_ID] after an [ARGS] of the same call makes the reference
  // read that [ARGS] as part of the name, which a stream that already
  // announced the call cannot take back. The router should then replace the
  // streamed calls with `tool_calls` (or fail the request).
  bool stream_diverged = false;
  // Text the detokenizer held back at the end (an incomplete character,
  // streamed as U+FFFD): stream these before reporting the end of the turn.
  std::vector<OutputDelta> last_deltas;
};

// The control tokens of a tokenizer's output syntax (ids; -1 when absent).
struct OutputSyntax {
  // Fails when the tokenizer lacks a control token its version's syntax
  // needs ([TOOL_CALLS] from v2, [ARGS] and [CALL_ID] from v11), as
  // mistral-common's instruct tokenizers do.
  [[nodiscard]] static absl::StatusOr<OutputSyntax> ForTokenizer(const Tekkenizer& tokenizer);

  int version = 0;  // the TokenizerVersion's number
  std::int32_t eos = -1;
  std::int32_t tool_calls = -1;   // -1: v1, no tool calls
  std::int32_t args = -1;         // v11+
  std::int32_t call_id = -1;      // v11+ (only v11 reads it)
  std::int32_t begin_think = -1;  // v13+ and only when both think tokens exist
  std::int32_t end_think = -1;
};

// The reference's reading of a whole id sequence (what Finish returns, less
// `last_deltas`): mistral-common's `detokenize_to_assistant_message`.
ParsedOutput ParseOutputIds(const Tekkenizer& tokenizer, const OutputSyntax& syntax, std::span<const std::int32_t> ids);

class OutputParser {
 public:
  // Fails as OutputSyntax::ForTokenizer does.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<OutputParser>> Create(const Tekkenizer& tokenizer);

  // Consumes the next generated ids; returns the new deltas, in order.
  std::vector<OutputDelta> Push(std::span<const std::int32_t> ids);

  ~OutputParser();
  OutputParser(const OutputParser&) = delete;
  OutputParser& operator=(const OutputParser&) = delete;

  // Ends the turn: the reference's reading of every id pushed. Call once;
  // Push and Finish may not be called afterwards.
  ParsedOutput Finish();

 private:
  enum class State : std::uint8_t { kAnswer, kThink, kToolName, kToolId, kToolArgs, kToolJson };
  class JsonListScanner;

  OutputParser(const Tekkenizer& tokenizer, OutputSyntax syntax);

  void PushOne(std::int32_t id, std::vector<OutputDelta>* out);
  void OnSpecial(std::int32_t id, std::vector<OutputDelta>* out);
  void Emit(std::string text, std::vector<OutputDelta>* out);
  void BeginToolCall(std::string name, std::string call_id, std::vector<OutputDelta>* out);
  void StreamJsonElement(const std::string& element, std::vector<OutputDelta>* out);

  const Tekkenizer& tokenizer_;
  const OutputSyntax syntax_;
  std::vector<std::int32_t> ids_;  // everything pushed, for Finish
  IncrementalDetokenizer detokenizer_;
  State state_ = State::kAnswer;
  int tool_calls_begun_ = 0;
  std::string pending_name_;                       // v11+: name text until [ARGS]
  std::string pending_id_;                         // v11: id text between [CALL_ID] and [ARGS]
  std::unique_ptr<JsonListScanner> json_scanner_;  // v2..v7: current [TOOL_CALLS] list
  // The calls as streamed (id, name, argument text), to tell in Finish
  // whether the stream agrees with the reference's reading.
  std::vector<ParsedToolCall> streamed_calls_;
  bool finished_ = false;
};

}  // namespace sirocco::text
