// The whole-sequence reading of generated ids, step for step as
// mistral-common's `detokenize_to_assistant_message` (experimental/app/
// routers.py with experimental/{tools,think}.py) does it: split off the tool
// calls at every [TOOL_CALLS], split the content into think and text chunks,
// decode every part on its own with special tokens ignored, parse each tool
// call in the version's syntax. Where the reference raises, this records the
// first problem in the reference's order and carries on with what it can read.

#include <algorithm>
#include <string>
#include <utility>

#include "engine/text/output_parser.h"
#include "engine/text/output_parser_json.h"

namespace sirocco::text {
namespace {

using Ids = std::span<const std::int32_t>;

constexpr int kV7 = 7;
constexpr int kV11 = 11;
constexpr int kV13 = 13;

class Reader {
 public:
  Reader(const Tekkenizer& tokenizer, const OutputSyntax& syntax) : tokenizer_(tokenizer), syntax_(syntax) {}

  ParsedOutput Read(Ids ids) {
    if (ids.empty()) {
      out_.finish_hint = FinishHint::kUnfinished;
      return std::move(out_);
    }
    out_.ended_with_eos = ids.back() == syntax_.eos;

    // Content is everything before the first [TOOL_CALLS]; each call starts at one.
    const auto first_call = syntax_.tool_calls < 0 ? ids.end() : std::find(ids.begin(), ids.end(), syntax_.tool_calls);
    ReadContent(Ids(ids.begin(), first_call));
    for (auto it = first_call; it != ids.end();) {
      const auto next = std::find(it + 1, ids.end(), syntax_.tool_calls);
      ReadToolCallSegment(Ids(it, next));
      it = next;
    }

    for (const OutputChunk& chunk : out_.content) {
      (chunk.thinking ? out_.reasoning : out_.answer) += chunk.text;
    }
    if (out_.problem != OutputProblem::kNone) {
      out_.finish_hint = FinishHint::kInvalidOutput;
    } else if (!out_.tool_calls.empty()) {
      out_.finish_hint = FinishHint::kToolCalls;
    } else {
      out_.finish_hint = out_.ended_with_eos ? FinishHint::kStop : FinishHint::kUnfinished;
    }
    return std::move(out_);
  }

 private:
  std::string Decode(Ids ids, SpecialTokenPolicy policy = SpecialTokenPolicy::kIgnore) const {
    absl::StatusOr<std::string> text = tokenizer_.Decode(ids, policy);
    if (text.ok()) return *std::move(text);
    // Ids come from the model's own vocabulary; one outside it is a bug
    // upstream and reads as nothing, as in the stream.
    std::vector<std::int32_t> known;
    for (std::int32_t id : ids) {
      if (id >= 0 && id < tokenizer_.vocab_size()) known.push_back(id);
    }
    return tokenizer_.Decode(known, policy).value_or(std::string());
  }

  void Problem(OutputProblem problem, std::string message) {
    if (out_.problem != OutputProblem::kNone) return;  // the reference stops at the first
    out_.problem = problem;
    out_.problem_message = std::move(message);
  }

  void ReadContent(Ids ids) {
    if (syntax_.begin_think < 0 || syntax_.end_think < 0) {
      if (!ids.empty()) out_.content.push_back({.thinking = false, .text = Decode(ids), .closed = false});
      return;
    }
    // Think chunks include their [THINK]/[/THINK]; a chunk that is exactly one
    // EOS is dropped. A nested [THINK] or a stray [/THINK] is an error in the
    // reference; here it is read as an ignored special token of its chunk.
    size_t start = 0;
    bool in_think = false;
    auto close_chunk = [&](size_t end, bool thinking, bool closed) {
      const Ids chunk = ids.subspan(start, end - start);
      start = end;
      if (chunk.empty() || (chunk.size() == 1 && chunk[0] == syntax_.eos)) return;
      out_.content.push_back({.thinking = thinking, .text = Decode(chunk), .closed = closed});
    };
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] == syntax_.begin_think) {
        if (in_think) {
          Problem(OutputProblem::kNestedThink, "Nested think chunks are not allowed.");
          continue;
        }
        close_chunk(i, false, false);
        in_think = true;
      } else if (ids[i] == syntax_.end_think) {
        if (!in_think) {
          Problem(OutputProblem::kUnmatchedEndThink, "End think token found without a begin think token.");
          continue;
        }
        close_chunk(i + 1, true, true);
        in_think = false;
      }
    }
    close_chunk(ids.size(), in_think, false);
  }

  void ReadToolCallSegment(Ids segment) {
    const bool ok = syntax_.version <= kV7 ? ReadJsonList(segment) : ReadNamedCall(segment);
    if (!ok) {
      std::vector<std::int32_t> visible;
      for (std::int32_t id : segment) {
        if (id != syntax_.eos) visible.push_back(id);
      }
      out_.unparsed_text += Decode(visible, SpecialTokenPolicy::kKeep);
    }
  }

  // Returns false (and records the problem) when the segment does not parse.
  bool Fail(OutputProblem problem, std::string message) {
    Problem(problem, std::move(message));
    return false;
  }

  // v2..v7: [TOOL_CALLS] followed by a JSON list of {"name", "arguments"[, "id"]}.
  bool ReadJsonList(Ids segment) {
    absl::StatusOr<PyJsonValue> list = ParsePythonJson(Decode(segment));
    if (!list.ok()) {
      return Fail(OutputProblem::kMalformedToolCall,
                  "Invalid tool call tokenization. Expected a JSON list of tool calls.");
    }
    if (list->kind != PyJsonValue::Kind::kArray) {
      return Fail(OutputProblem::kMalformedToolCall, "Invalid tool call tokenization. Expected a list of tool calls.");
    }
    // The reference checks every element's shape before building any call.
    for (const PyJsonValue& item : list->items) {
      if (item.kind != PyJsonValue::Kind::kObject || FindMember(item, "name") == nullptr) {
        return Fail(OutputProblem::kMalformedToolCall, "Invalid tool call tokenization. Expected a dict with a name.");
      }
      const PyJsonValue* arguments = FindMember(item, "arguments");
      if (arguments == nullptr || arguments->kind != PyJsonValue::Kind::kObject) {
        return Fail(OutputProblem::kInvalidToolArguments, "Invalid tool call arguments tokenization. Expected a dict.");
      }
    }
    std::vector<ParsedToolCall> calls;
    for (const PyJsonValue& item : list->items) {
      const PyJsonValue* name = FindMember(item, "name");
      const PyJsonValue* id = FindMember(item, "id");
      if (name->kind != PyJsonValue::Kind::kString) {
        return Fail(OutputProblem::kMalformedToolCall, "Tool call name must be a string.");
      }
      if (id != nullptr && id->kind != PyJsonValue::Kind::kString) {
        return Fail(OutputProblem::kMalformedToolCall, "Tool call id must be a string.");
      }
      ParsedToolCall call;
      if (id != nullptr) call.id = PyStringToUtf8(id->text);
      call.name = PyStringToUtf8(name->text);
      call.arguments = DumpPythonJson(*FindMember(item, "arguments"));
      call.raw_arguments = call.arguments;
      calls.push_back(std::move(call));
    }
    for (ParsedToolCall& call : calls) out_.tool_calls.push_back(std::move(call));
    return true;
  }

  // mistral-common's one-occurrence split: `ids[0]` never counts as the
  // separator; `after` starts with it.
  bool SplitOnce(Ids ids, std::int32_t separator, std::string_view separator_text, Ids* before, Ids* after) {
    const auto begin = ids.empty() ? ids.end() : ids.begin() + 1;
    const auto at = std::find(begin, ids.end(), separator);
    if (at == ids.end()) {
      return Fail(OutputProblem::kMalformedToolCall,
                  "Control token " + std::string(separator_text) + " not found in the list of tokens.");
    }
    if (std::find(at + 1, ids.end(), separator) != ids.end()) {
      return Fail(OutputProblem::kMalformedToolCall,
                  "Control token " + std::string(separator_text) + " found more than once in the list of tokens.");
    }
    *before = Ids(ids.begin(), at);
    *after = Ids(at, ids.end());
    return true;
  }

  // v11+: [TOOL_CALLS]name[ARGS]{...}; v11 also [TOOL_CALLS]name[CALL_ID]id[ARGS]{...}.
  bool ReadNamedCall(Ids segment) {
    ParsedToolCall call;
    Ids name_ids;
    Ids args_ids;
    const bool with_id =
        syntax_.version == kV11 && std::find(segment.begin(), segment.end(), syntax_.call_id) != segment.end();
    if (with_id) {
      Ids id_and_args;
      Ids id_ids;
      if (!SplitOnce(segment, syntax_.call_id, "[CALL_ID]", &name_ids, &id_and_args)) return false;
      if (!SplitOnce(id_and_args, syntax_.args, "[ARGS]", &id_ids, &args_ids)) return false;
      call.id = Decode(id_ids);
    } else if (!SplitOnce(segment, syntax_.args, "[ARGS]", &name_ids, &args_ids)) {
      return false;
    }
    call.name = Decode(name_ids);
    call.raw_arguments = Decode(args_ids);
    absl::StatusOr<PyJsonValue> arguments = ParsePythonJson(call.raw_arguments);
    if (!arguments.ok()) return Fail(OutputProblem::kInvalidToolArguments, "Invalid tokenized tool call arguments.");
    // FunctionCall(arguments=...): an object is dumped, null is "{}", a string
    // is taken as the argument text itself, anything else fails validation.
    switch (arguments->kind) {
      case PyJsonValue::Kind::kObject:
        call.arguments = DumpPythonJson(*arguments);
        break;
      case PyJsonValue::Kind::kNull:
        call.arguments = "{}";
        break;
      case PyJsonValue::Kind::kString:
        call.arguments = PyStringToUtf8(arguments->text);
        break;
      default:
        return Fail(OutputProblem::kInvalidToolArguments,
                    "Tool call arguments must be a JSON object, a string or null.");
    }
    out_.tool_calls.push_back(std::move(call));
    return true;
  }

  const Tekkenizer& tokenizer_;
  const OutputSyntax& syntax_;
  ParsedOutput out_;
};

}  // namespace

absl::StatusOr<OutputSyntax> OutputSyntax::ForTokenizer(const Tekkenizer& tokenizer) {
  OutputSyntax syntax;
  syntax.version = static_cast<int>(tokenizer.version());
  syntax.eos = tokenizer.eos_id();
  if (syntax.version >= 2) {
    absl::StatusOr<std::int32_t> id = tokenizer.SpecialTokenId("[TOOL_CALLS]");
    if (!id.ok()) return id.status();
    syntax.tool_calls = *id;
  }
  if (syntax.version >= kV11) {
    absl::StatusOr<std::int32_t> args = tokenizer.SpecialTokenId("[ARGS]");
    if (!args.ok()) return args.status();
    absl::StatusOr<std::int32_t> call_id = tokenizer.SpecialTokenId("[CALL_ID]");
    if (!call_id.ok()) return call_id.status();
    syntax.args = *args;
    syntax.call_id = *call_id;
  }
  if (syntax.version >= kV13) {
    absl::StatusOr<std::int32_t> begin = tokenizer.SpecialTokenId("[THINK]");
    absl::StatusOr<std::int32_t> end = tokenizer.SpecialTokenId("[/THINK]");
    if (begin.ok() && end.ok()) {
      syntax.begin_think = *begin;
      syntax.end_think = *end;
    }
  }
  return syntax;
}

ParsedOutput ParseOutputIds(const Tekkenizer& tokenizer, const OutputSyntax& syntax,
                            std::span<const std::int32_t> ids) {
  return Reader(tokenizer, syntax).Read(ids);
}

}  // namespace sirocco::text
