#include "engine/text/instruct_normalizer.h"

#include <algorithm>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"
#include "engine/text/instruct_schema.h"
#include "engine/text/instruct_strings.h"

namespace sirocco::text {
namespace {

constexpr std::string_view kJoin = "\n\n";

bool AtLeast(TokenizerVersion v, TokenizerVersion min) { return static_cast<int>(v) >= static_cast<int>(min); }

// `_aggregate_content_chunks_impl`: adjacent text of one message is joined by
// `chunk_join`, text of different messages by `msg_join`; other chunks stay
// in place. Only text gives a string; empty strings and text chunks vanish.
Content Aggregate(const std::vector<const std::optional<Content>*>& contents, std::string_view chunk_join) {
  std::vector<ContentChunk> all;
  std::string text;
  bool has_text = false;
  auto flush = [&]() {
    if (!has_text) return;
    ContentChunk chunk;
    chunk.type = ChunkType::kText;
    chunk.text = std::move(text);
    all.push_back(std::move(chunk));
    text.clear();
    has_text = false;
  };
  for (const std::optional<Content>* content : contents) {
    bool needs_msg_sep = has_text;
    if (!content->has_value() || !(*content)->truthy()) continue;
    const Content& c = **content;
    if (!c.is_chunks) {
      CatAppend(&text, needs_msg_sep ? kJoin : "", c.text);
      has_text = true;
      continue;
    }
    for (const ContentChunk& chunk : c.chunks) {
      if (chunk.type == ChunkType::kText) {
        if (chunk.text.empty()) continue;
        CatAppend(&text, !has_text ? "" : needs_msg_sep ? kJoin : chunk_join, chunk.text);
        has_text = true;
        needs_msg_sep = false;
      } else {
        flush();
        all.push_back(chunk);
      }
    }
  }
  if (all.empty()) return Content::Text(std::move(text));
  flush();
  return Content::Chunks(std::move(all));
}

// `_normalize_json_content`: "" becomes "{}", JSON is re-dumped, anything
// else is kept as it is.
std::string NormalizeJsonText(const std::string& text) {
  if (text.empty()) return "{}";
  absl::StatusOr<PyValue> value = ParsePyJson(text);
  return value.ok() ? PyJsonDumps(*value) : text;
}

class Normalizer {
 public:
  explicit Normalizer(TokenizerVersion v) : v_(v), chunk_join_(AtLeast(v, TokenizerVersion::kV15) ? "" : kJoin) {}

  std::vector<NormalizedMessage> Messages(const std::vector<ChatMessage>& messages) const {
    std::vector<NormalizedMessage> out;
    std::vector<std::string> latest_call_ids;
    std::size_t begin = 0;
    while (begin < messages.size()) {
      std::size_t end = begin;
      while (end < messages.size() && messages[end].role == messages[begin].role) ++end;
      const std::vector<const ChatMessage*> group = Group(messages, begin, end);
      switch (messages[begin].role) {
        case Role::kUser: {
          NormalizedMessage m;
          m.content = Aggregate(Contents(group), chunk_join_);
          out.push_back(std::move(m));
          break;
        }
        case Role::kAssistant: {
          out.push_back(Assistant(group));
          for (const ToolCall& call : out.back().tool_calls) latest_call_ids.push_back(call.id);
          break;
        }
        case Role::kTool: {
          std::vector<NormalizedMessage> results = Tools(group, latest_call_ids);
          for (NormalizedMessage& r : results) out.push_back(std::move(r));
          latest_call_ids.clear();
          break;
        }
        case Role::kSystem:
          if (AtLeast(v_, TokenizerVersion::kV7)) {  // v3 folds them into the system prompt
            for (const ChatMessage* s : group) {
              NormalizedMessage m;
              m.role = Role::kSystem;
              m.content = Aggregate({&s->content}, chunk_join_);
              out.push_back(std::move(m));
            }
          }
          break;
      }
      begin = end;
    }
    // v3 wants a user message first; v7+ only a non-empty list.
    if (out.empty() || (!AtLeast(v_, TokenizerVersion::kV7) && out.front().role != Role::kUser)) {
      out.insert(out.begin(), NormalizedMessage{});
    }
    return out;
  }

  std::optional<std::string> SystemPrompt(const std::vector<ChatMessage>& messages) const {
    std::vector<std::string> parts;
    for (const ChatMessage& m : messages) {
      if (m.role == Role::kSystem && m.content.has_value() && m.content->truthy()) {
        parts.push_back(Aggregate({&m.content}, chunk_join_).text);
      }
    }
    if (parts.empty()) return std::nullopt;
    return absl::StrJoin(parts, "\n\n");
  }

 private:
  static std::vector<const ChatMessage*> Group(const std::vector<ChatMessage>& messages, std::size_t b, std::size_t e) {
    std::vector<const ChatMessage*> group;
    for (std::size_t i = b; i < e; ++i) group.push_back(&messages[i]);
    return group;
  }
  static std::vector<const std::optional<Content>*> Contents(const std::vector<const ChatMessage*>& group) {
    std::vector<const std::optional<Content>*> contents;
    for (const ChatMessage* m : group) contents.push_back(&m->content);
    return contents;
  }

  NormalizedMessage Assistant(const std::vector<const ChatMessage*>& group) const {
    NormalizedMessage m;
    m.role = Role::kAssistant;
    m.content = Aggregate(Contents(group), chunk_join_);
    for (const ChatMessage* msg : group) {
      if (msg->tool_calls.has_value()) {
        for (const ToolCall& call : *msg->tool_calls) {
          ToolCall normalized = call;
          normalized.function.arguments = NormalizeJsonText(call.function.arguments);
          m.tool_calls.push_back(std::move(normalized));
        }
      }
      m.prefix = m.prefix || msg->prefix;
    }
    return m;
  }

  std::vector<NormalizedMessage> Tools(const std::vector<const ChatMessage*>& group,
                                       const std::vector<std::string>& latest_call_ids) const {
    std::vector<NormalizedMessage> results;
    for (const ChatMessage* msg : group) {
      NormalizedMessage m;
      m.role = Role::kTool;
      m.content = Aggregate({&msg->content}, chunk_join_);
      // v3 re-dumps JSON results; v7+ keep the text as sent.
      if (!AtLeast(v_, TokenizerVersion::kV7)) m.content.text = NormalizeJsonText(m.content.text);
      m.tool_call_id = msg->tool_call_id;
      m.name = msg->name;
      results.push_back(std::move(m));
    }
    if (AtLeast(v_, TokenizerVersion::kV11)) SortByCallOrder(latest_call_ids, &results);
    return results;
  }

  // `_inplace_sort_tool_messages`: results follow the order of the calls of
  // the latest assistant turn(s); unknown ids go last; ties keep their order.
  // As with the reference's dicts, a repeated id counts at its last position.
  static void SortByCallOrder(const std::vector<std::string>& call_ids, std::vector<NormalizedMessage>* results) {
    std::map<std::string, double> call_index;
    for (std::size_t i = 0; i < call_ids.size(); ++i) call_index[call_ids[i]] = static_cast<double>(i);
    std::map<std::optional<std::string>, std::size_t> result_index;
    for (std::size_t i = 0; i < results->size(); ++i) result_index[(*results)[i].tool_call_id] = i;
    auto key = [&](const NormalizedMessage& m) {
      const std::string id = m.tool_call_id.has_value() && !m.tool_call_id->empty() ? *m.tool_call_id : "null";
      const auto it = call_index.find(id);
      const double call = it == call_index.end() ? std::numeric_limits<double>::infinity() : it->second;
      return std::make_pair(call, result_index.at(m.tool_call_id));
    };
    std::stable_sort(results->begin(), results->end(),
                     [&](const NormalizedMessage& a, const NormalizedMessage& b) { return key(a) < key(b); });
  }

  TokenizerVersion v_;
  std::string_view chunk_join_;
};

// ModelSettingsBuilder.build_settings for a v15 request.
absl::StatusOr<ModelSettings> BuildSettings(const ChatRequest& request, const ModelSettingsBuilder& builder) {
  ModelSettings settings;
  if (builder.reasoning_effort.has_value()) {
    const ModelSettingsBuilder::Enum& b = *builder.reasoning_effort;
    std::optional<std::string> value;
    if (request.reasoning_effort.has_value()) {
      value = std::string(ReasoningEffortName(*request.reasoning_effort));
    } else if (!b.accepts_none) {
      return ChatError(ChatErrorKind::kInvalidRequest, "reasoning_effort should be set for this model.");
    } else {
      value = b.default_value;
    }
    if (value.has_value()) {
      if (b.values.empty()) {
        return ChatError(ChatErrorKind::kInvalidRequest, "reasoning_effort not supported for this model.");
      }
      if (std::find(b.values.begin(), b.values.end(), *value) == b.values.end()) {
        std::string list = "[";
        for (std::size_t i = 0; i < b.values.size(); ++i) CatAppend(&list, i ? ", " : "", "'", b.values[i], "'");
        return ChatError(ChatErrorKind::kInvalidRequest,
                         Cat("reasoning_effort should be one of ", list, "], got ", *value, "."));
      }
    }
    settings.reasoning_effort = value;
  }
  if (builder.json_schema) {
    const ResponseFormat& format = request.response_format;
    if (format.type == ResponseFormatType::kJsonSchema && format.json_schema.has_value()) {
      settings.json_schema = format.json_schema->schema;
    } else if (format.type == ResponseFormatType::kJsonObject) {
      // The reference's schema for "any JSON object or array".
      absl::StatusOr<PyValue> any = ParsePyJson(R"({"anyOf": [{"type": "object"}, {"type": "array"}]})");
      settings.json_schema = *any;
    }
    if (settings.json_schema.has_value()) {
      if (std::optional<std::string> error = Draft7SchemaError(*settings.json_schema)) {
        return ChatError(ChatErrorKind::kInvalidRequest, Cat("json_schema is not a valid JSON schema: ", *error));
      }
    }
  }
  return settings;
}

}  // namespace

absl::StatusOr<ModelSettingsBuilder> ParseModelSettingsBuilder(std::string_view json_text) {
  SIROCCO_ASSIGN_OR_RETURN(PyValue root, ParsePyJson(json_text));
  auto bad = [](std::string_view why) {
    return absl::FailedPreconditionError(Cat("invalid model_settings_builder: ", why));
  };
  if (!root.is_object()) return bad("not an object");
  ModelSettingsBuilder builder;
  for (const auto& [key, value] : root.object) {
    if (key == "reasoning_effort") {
      if (value.is_null()) continue;
      if (!value.is_object()) return bad("reasoning_effort is not an object");
      ModelSettingsBuilder::Enum e;
      if (const PyValue* accepts = value.Find("accepts_none")) e.accepts_none = accepts->boolean;
      if (const PyValue* d = value.Find("default"); d != nullptr && d->is_string()) e.default_value = d->str;
      if (const PyValue* values = value.Find("values"); values != nullptr && values->is_array()) {
        for (const PyValue& v : values->array) {
          if (!v.is_string()) return bad("reasoning_effort values must be strings");
          e.values.push_back(v.str);
        }
      }
      if (!e.default_value.has_value()) return bad("reasoning_effort needs a default");
      builder.reasoning_effort = std::move(e);
    } else if (key == "json_schema") {
      builder.json_schema = !value.is_null();
    } else {
      return bad(Cat("unknown field ", key));
    }
  }
  return builder;
}

PyValue ParseJsonOrString(std::string_view text) {
  absl::StatusOr<PyValue> value = ParsePyJson(text);
  if (value.ok()) return *std::move(value);
  return PyValue::String(std::string(text));
}

absl::StatusOr<NormalizedRequest> NormalizeChatRequest(const ChatRequest& request, TokenizerVersion version,
                                                       const std::optional<ModelSettingsBuilder>& builder) {
  Normalizer normalizer(version);
  NormalizedRequest out;
  if (!AtLeast(version, TokenizerVersion::kV7)) out.system_prompt = normalizer.SystemPrompt(request.messages);
  out.messages = normalizer.Messages(request.messages);
  if (AtLeast(version, TokenizerVersion::kV15)) {
    if (!builder.has_value()) {
      return ChatError(ChatErrorKind::kInvalidRequest,
                       "model_settings_builder must not be None for InstructRequestNormalizerV15");
    }
    SIROCCO_ASSIGN_OR_RETURN(out.settings, BuildSettings(request, *builder));
  }
  return out;
}

}  // namespace sirocco::text
