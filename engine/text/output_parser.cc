// The streaming half of the output parser: a small state machine over the
// ids as they arrive. The final reading is output_parser_reference.cc's.

#include "engine/text/output_parser.h"

#include <utility>

#include "engine/check.h"
#include "engine/text/output_parser_json.h"

namespace sirocco::text {
namespace {

constexpr int kV7 = 7;
constexpr int kV11 = 11;

bool IsJsonSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

OutputDelta TextDelta(OutputDeltaKind kind, std::string text, int tool_index) {
  OutputDelta d;
  d.kind = kind;
  d.text = std::move(text);
  d.tool_index = tool_index;
  return d;
}

}  // namespace

// v2..v7 stream a whole JSON list after [TOOL_CALLS]. This finds where each
// top-level object of the list ends, so a call can be streamed as soon as its
// element is complete, long before the list (and the turn) ends. It stops at
// the first thing that cannot be a list of objects; the final reading then
// decides what the reference makes of the text.
class OutputParser::JsonListScanner {
 public:
  // Appends each element completed by `text` to `elements`.
  void Feed(std::string_view text, std::vector<std::string>* elements) {
    for (char c : text) {
      if (dead_) return;
      if (depth_ == 0) {  // before the list
        if (c == '[') {
          depth_ = 1;
        } else if (!IsJsonSpace(c)) {
          dead_ = true;
        }
        continue;
      }
      if (depth_ == 1) {  // between elements
        if (c == '{') {
          element_.assign(1, c);
          depth_ = 2;
        } else if (c != ',' && !IsJsonSpace(c)) {
          dead_ = true;  // the list ends, or an element that is no object
        }
        continue;
      }
      element_.push_back(c);
      if (in_string_) {
        if (escaped_) {
          escaped_ = false;
        } else if (c == '\\') {
          escaped_ = true;
        } else if (c == '"') {
          in_string_ = false;
        }
      } else if (c == '"') {
        in_string_ = true;
      } else if (c == '{' || c == '[') {
        ++depth_;
      } else if (c == '}' || c == ']') {
        if (--depth_ == 1) elements->push_back(std::move(element_));
      }
    }
  }

 private:
  int depth_ = 0;  // 0 before '[', 1 inside the list, 2+ inside an element
  bool in_string_ = false;
  bool escaped_ = false;
  bool dead_ = false;
  std::string element_;
};

absl::StatusOr<std::unique_ptr<OutputParser>> OutputParser::Create(const Tekkenizer& tokenizer) {
  absl::StatusOr<OutputSyntax> syntax = OutputSyntax::ForTokenizer(tokenizer);
  if (!syntax.ok()) return syntax.status();
  return std::unique_ptr<OutputParser>(new OutputParser(tokenizer, *syntax));
}

OutputParser::OutputParser(const Tekkenizer& tokenizer, OutputSyntax syntax)
    : tokenizer_(tokenizer), syntax_(syntax), detokenizer_(tokenizer, SpecialTokenPolicy::kIgnore) {}

OutputParser::~OutputParser() = default;

std::vector<OutputDelta> OutputParser::Push(std::span<const std::int32_t> ids) {
  SIROCCO_CHECK(!finished_, "OutputParser::Push after Finish");
  std::vector<OutputDelta> out;
  for (std::int32_t id : ids) PushOne(id, &out);
  return out;
}

ParsedOutput OutputParser::Finish() {
  SIROCCO_CHECK(!finished_, "OutputParser::Finish called twice");
  finished_ = true;
  std::vector<OutputDelta> last;
  Emit(detokenizer_.Flush(), &last);
  ParsedOutput result = ParseOutputIds(tokenizer_, syntax_, ids_);
  result.last_deltas = std::move(last);
  if (result.problem == OutputProblem::kNone) {
    const bool normalized = syntax_.version <= kV7;  // v2..v7 stream the normalised arguments
    bool same = streamed_calls_.size() == result.tool_calls.size();
    for (size_t i = 0; same && i < streamed_calls_.size(); ++i) {
      const ParsedToolCall& a = streamed_calls_[i];
      const ParsedToolCall& b = result.tool_calls[i];
      same = a.id == b.id && a.name == b.name && a.raw_arguments == (normalized ? b.arguments : b.raw_arguments);
    }
    result.stream_diverged = !same;
  }
  return result;
}

void OutputParser::PushOne(std::int32_t id, std::vector<OutputDelta>* out) {
  ids_.push_back(id);
  if (tokenizer_.IsSpecial(id)) {
    // The reference decodes each run of ordinary tokens on its own: bytes
    // held back for a character are released (as U+FFFD) at a special token.
    Emit(detokenizer_.Flush(), out);
    OnSpecial(id, out);
    return;
  }
  // An id outside the vocabulary is a bug upstream; it reads as nothing here
  // (and in the final reading) rather than ending the stream.
  absl::StatusOr<std::string> text = detokenizer_.Push(id);
  if (text.ok()) Emit(*std::move(text), out);
}

void OutputParser::OnSpecial(std::int32_t id, std::vector<OutputDelta>* out) {
  if (id == syntax_.tool_calls) {
    // Everything after the first [TOOL_CALLS] belongs to tool calls.
    pending_name_.clear();
    pending_id_.clear();
    if (syntax_.version <= kV7) {
      state_ = State::kToolJson;
      json_scanner_ = std::make_unique<JsonListScanner>();
    } else {
      state_ = State::kToolName;
    }
    return;
  }
  // Any other special token is ignored text, as in the reference's decode;
  // these are the ones that move the parser.
  switch (state_) {
    case State::kAnswer:
      if (id == syntax_.begin_think) state_ = State::kThink;
      break;
    case State::kThink:
      if (id == syntax_.end_think) state_ = State::kAnswer;
      break;
    case State::kToolName:
      if (id == syntax_.args) {
        BeginToolCall(std::move(pending_name_), "null", out);
      } else if (id == syntax_.call_id && syntax_.version == kV11) {
        state_ = State::kToolId;
      }
      break;
    case State::kToolId:
      if (id == syntax_.args) BeginToolCall(std::move(pending_name_), std::move(pending_id_), out);
      break;
    case State::kToolArgs:
    case State::kToolJson:
      break;
  }
}

void OutputParser::BeginToolCall(std::string name, std::string call_id, std::vector<OutputDelta>* out) {
  streamed_calls_.push_back({.id = call_id, .name = name, .arguments = "", .raw_arguments = ""});
  OutputDelta begin;
  begin.kind = OutputDeltaKind::kToolCallBegin;
  begin.tool_index = tool_calls_begun_++;
  begin.tool_id = std::move(call_id);
  begin.tool_name = std::move(name);
  out->push_back(std::move(begin));
  state_ = State::kToolArgs;
}

void OutputParser::Emit(std::string text, std::vector<OutputDelta>* out) {
  if (text.empty()) return;
  auto append = [&](OutputDeltaKind kind, int index) {
    // Consecutive text of the same stream within one Push becomes one delta.
    if (!out->empty() && out->back().kind == kind && out->back().tool_index == index) {
      out->back().text += text;
    } else {
      out->push_back(TextDelta(kind, std::move(text), index));
    }
  };
  switch (state_) {
    case State::kAnswer:
      append(OutputDeltaKind::kAnswer, -1);
      break;
    case State::kThink:
      append(OutputDeltaKind::kReasoning, -1);
      break;
    case State::kToolName:
      pending_name_ += text;
      break;
    case State::kToolId:
      pending_id_ += text;
      break;
    case State::kToolArgs:
      streamed_calls_.back().raw_arguments += text;
      append(OutputDeltaKind::kToolCallArguments, tool_calls_begun_ - 1);
      break;
    case State::kToolJson: {
      std::vector<std::string> elements;
      json_scanner_->Feed(text, &elements);
      for (const std::string& element : elements) StreamJsonElement(element, out);
      break;
    }
  }
}

void OutputParser::StreamJsonElement(const std::string& element, std::vector<OutputDelta>* out) {
  // Stream only what the reference can accept: an object with a string name,
  // object arguments and, if any, a string id.
  absl::StatusOr<PyJsonValue> call = ParsePythonJson(element);
  if (!call.ok()) return;
  const PyJsonValue* name = FindMember(*call, "name");
  const PyJsonValue* arguments = FindMember(*call, "arguments");
  const PyJsonValue* id = FindMember(*call, "id");
  if (name == nullptr || name->kind != PyJsonValue::Kind::kString || arguments == nullptr ||
      arguments->kind != PyJsonValue::Kind::kObject || (id != nullptr && id->kind != PyJsonValue::Kind::kString)) {
    return;
  }
  const int index = tool_calls_begun_;
  BeginToolCall(PyStringToUtf8(name->text), id != nullptr ? PyStringToUtf8(id->text) : "null", out);
  streamed_calls_.back().raw_arguments = DumpPythonJson(*arguments);
  out->push_back(TextDelta(OutputDeltaKind::kToolCallArguments, streamed_calls_.back().raw_arguments, index));
  state_ = State::kToolJson;
}

}  // namespace sirocco::text
