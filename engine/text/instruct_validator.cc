#include "engine/text/instruct_validator.h"

#include <algorithm>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "engine/status_macros.h"
#include "engine/text/instruct_schema.h"
#include "engine/text/instruct_strings.h"

namespace sirocco::text {
namespace {

constexpr std::string_view kNullId = "null";
constexpr std::string_view kInvalidIdV13 =
    "Tool call id must be a non-empty string other than 'null' for tokenizer version 13 or newer.";

bool AtLeast(TokenizerVersion v, TokenizerVersion min) { return static_cast<int>(v) >= static_cast<int>(min); }

// Python's re.match(r"^[<class>]{lo,hi}$", s): `$` also matches before one
// final newline.
template <typename CharOk>
bool MatchesWholly(std::string_view s, std::size_t lo, std::size_t hi, CharOk ok) {
  if (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  if (s.size() < lo || s.size() > hi) return false;
  return std::all_of(s.begin(), s.end(), [&](char c) { return ok(static_cast<unsigned char>(c)); });
}
bool IsAlnum(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }
bool IsFunctionName(std::string_view s) {
  return MatchesWholly(s, 1, 64, [](unsigned char c) { return IsAlnum(c) || c == '_' || c == '-'; });
}
bool IsV3ToolCallId(std::string_view s) { return MatchesWholly(s, 9, 9, IsAlnum); }

std::string FunctionNameMessage(std::string_view name) {
  return Cat("Function name was ", name,
             " but must be a-z, A-Z, 0-9, or contain underscores and dashes, with a maximum length of 64.");
}

// Python's str() of an optional string.
std::string PyStr(const std::optional<std::string>& s) { return s.has_value() ? *s : "None"; }

// `_validate_content_chunk_types`: the sorted names of disallowed chunk types.
template <typename Allowed>
absl::Status CheckChunkTypes(const std::optional<Content>& content, Allowed allowed, std::string_view role,
                             ChatErrorKind kind) {
  if (!content.has_value() || !content->is_chunks) return absl::OkStatus();
  std::set<std::string_view> invalid;
  for (const ContentChunk& chunk : content->chunks) {
    if (!allowed(chunk.type)) invalid.insert(ChunkClassName(chunk.type));
  }
  if (invalid.empty()) return absl::OkStatus();
  std::string list = "[";
  for (std::string_view name : invalid) CatAppend(&list, list.size() > 1 ? ", " : "", "'", name, "'");
  list.push_back(']');
  return ChatError(kind, Cat("Unexpected content chunk types in ", role, " message: ", list));
}

class Validator {
 public:
  explicit Validator(TokenizerVersion v) : v_(v) {}

  absl::Status Validate(const ChatRequest& request) const {
    SIROCCO_RETURN_IF_ERROR(Structure(request.messages));
    for (std::size_t i = 0; i < request.messages.size(); ++i) {
      SIROCCO_RETURN_IF_ERROR(Content(request.messages[i], i + 1 == request.messages.size()));
    }
    if (request.tools.has_value()) {
      for (const Tool& tool : *request.tools) {
        if (std::optional<std::string> error = Draft7SchemaError(tool.function.parameters)) {
          return ChatError(ChatErrorKind::kInvalidToolSchema, Cat("Invalid tool schema: ", *error));
        }
        if (!IsFunctionName(tool.function.name)) {
          return ChatError(ChatErrorKind::kInvalidTool, FunctionNameMessage(tool.function.name));
        }
      }
    }
    if (!AtLeast(v_, TokenizerVersion::kV15) && request.reasoning_effort.has_value()) {
      return ChatError(ChatErrorKind::kInvalidRequest,
                       Cat("reasoning_effort='", ReasoningEffortName(*request.reasoning_effort),
                           "' is not supported for this model"));
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Structure(const std::vector<ChatMessage>& messages) const {
    if (messages.empty()) {
      return ChatError(ChatErrorKind::kInvalidMessageStructure, "Conversation must have at least one message");
    }
    if (messages.size() == 1 && messages[0].role != Role::kUser && messages[0].role != Role::kSystem) {
      return ChatError(ChatErrorKind::kInvalidMessageStructure,
                       "Conversation must start with a user message or system message");
    }
    if (messages.size() > 1) {
      const ChatMessage& last = messages.back();
      const bool bad_assistant = last.role == Role::kAssistant && !last.prefix;
      const bool bad_role = last.role != Role::kUser && last.role != Role::kTool;
      if (bad_assistant && bad_role) {
        return ChatError(ChatErrorKind::kInvalidMessageStructure,
                         Cat("Expected last role User or Tool (or Assistant with prefix) for serving but got ",
                             RoleName(last.role)));
      }
    }
    for (std::size_t i = 1; i < messages.size(); ++i) {
      const Role prev = messages[i - 1].role;
      const Role cur = messages[i].role;
      const bool ok = prev == Role::kSystem ? cur != Role::kTool
                      : prev == Role::kUser ? cur != Role::kTool
                                            : cur != Role::kSystem;  // after assistant or tool
      if (!ok) {
        return ChatError(ChatErrorKind::kInvalidMessageStructure,
                         Cat("Unexpected role '", RoleName(cur), "' after role '", RoleName(prev), "'"));
      }
    }
    SIROCCO_RETURN_IF_ERROR(AtLeast(v_, TokenizerVersion::kV11) ? ToolPairingById(messages)
                                                                : ToolPairingByCount(messages));
    if (v_ == TokenizerVersion::kV7) SIROCCO_RETURN_IF_ERROR(SystemPromptAndAudio(messages));
    return absl::OkStatus();
  }

  // Every assistant message's calls are answered before the next assistant
  // message (the first message is never checked, as in the reference).
  static absl::Status ToolPairingByCount(const std::vector<ChatMessage>& messages) {
    long expected = 0;
    for (std::size_t i = 1; i < messages.size(); ++i) {
      if (messages[i].role == Role::kTool) {
        --expected;
      } else if (messages[i].role == Role::kAssistant) {
        if (expected != 0) {
          return ChatError(ChatErrorKind::kInvalidMessageStructure,
                           "Not the same number of function calls and responses");
        }
        if (messages[i].tool_calls.has_value()) expected = static_cast<long>(messages[i].tool_calls->size());
      }
    }
    return absl::OkStatus();
  }

  static absl::Status ToolPairingById(const std::vector<ChatMessage>& messages) {
    std::set<std::string> expected;
    std::set<std::string> observed;
    for (std::size_t i = 1; i < messages.size(); ++i) {
      const ChatMessage& m = messages[i];
      if (m.role == Role::kTool) {
        const std::string id = PyStr(m.tool_call_id);
        // A missing id is Python's None: never expected, as no call id is None.
        if (m.tool_call_id.has_value() && observed.contains(id)) {
          return ChatError(ChatErrorKind::kInvalidMessageStructure,
                           Cat("Duplicate tool call id ", id, " in tool results"));
        }
        if (!m.tool_call_id.has_value() || !expected.contains(id)) {
          return ChatError(ChatErrorKind::kInvalidMessageStructure,
                           Cat("Unexpected tool call id ", id, " in tool results"));
        }
        observed.insert(id);
      } else if (m.role == Role::kAssistant) {
        if (expected.size() != observed.size()) {
          return ChatError(ChatErrorKind::kInvalidMessageStructure,
                           "Not the same number of function calls and responses");
        }
        expected.clear();
        observed.clear();
        if (m.tool_calls.has_value()) {
          for (const ToolCall& call : *m.tool_calls) {
            if (!expected.insert(call.id).second) {
              return ChatError(ChatErrorKind::kInvalidMessageStructure,
                               Cat("Duplicate tool call id ", call.id, " in assistant message"));
            }
          }
        }
      }
    }
    return absl::OkStatus();
  }

  static bool HasAudio(const ChatMessage& m) {
    if (m.role != Role::kUser || !m.content.has_value() || !m.content->is_chunks) return false;
    return std::any_of(m.content->chunks.begin(), m.content->chunks.end(), [](const ContentChunk& c) {
      return c.type == ChunkType::kInputAudio || c.type == ChunkType::kAudioUrl;
    });
  }

  static absl::Status SystemPromptAndAudio(const std::vector<ChatMessage>& messages) {
    std::vector<std::size_t> system, audio;
    for (std::size_t i = 0; i < messages.size(); ++i) {
      if (messages[i].role == Role::kSystem) system.push_back(i);
      if (HasAudio(messages[i])) audio.push_back(i);
    }
    if (system.empty() || audio.empty()) return absl::OkStatus();
    auto list = [](const std::vector<std::size_t>& xs) {
      std::string s = "[";
      for (std::size_t k = 0; k < xs.size(); ++k) CatAppend(&s, k ? ", " : "", xs[k]);
      return s + "]";
    };
    return ChatError(ChatErrorKind::kValueError,
                     Cat("Found system messages at indexes ", list(system), " and audio chunks in messages at ",
                         "indexes ", list(audio), ". This is not allowed prior to the tokenizer version 13."));
  }

  absl::Status Content(const ChatMessage& m, bool is_last) const {
    const bool v7 = AtLeast(v_, TokenizerVersion::kV7);
    switch (m.role) {
      case Role::kUser:
        return CheckChunkTypes(
            m.content,
            [v7](ChunkType t) {
              return t == ChunkType::kText || t == ChunkType::kImage || t == ChunkType::kImageUrl ||
                     (v7 && (t == ChunkType::kInputAudio || t == ChunkType::kAudioUrl));
            },
            "user", ChatErrorKind::kInvalidUserMessage);
      case Role::kSystem: {
        const bool v15 = AtLeast(v_, TokenizerVersion::kV15);
        return CheckChunkTypes(
            m.content,
            [v7, v15](ChunkType t) {
              return t == ChunkType::kText || (v7 && t == ChunkType::kInputAudio) ||
                     (v7 && !v15 && t == ChunkType::kThinking);
            },
            "system", ChatErrorKind::kInvalidSystemPrompt);
      }
      case Role::kTool:
        return ToolMessage(m);
      case Role::kAssistant:
        return AssistantMessage(m, is_last);
    }
    return absl::OkStatus();
  }

  absl::Status ToolMessage(const ChatMessage& m) const {
    if (!AtLeast(v_, TokenizerVersion::kV15)) {
      SIROCCO_RETURN_IF_ERROR(CheckChunkTypes(
          m.content, [](ChunkType t) { return t == ChunkType::kText; }, "tool", ChatErrorKind::kInvalidToolMessage));
    }
    if (m.name.has_value() && !IsFunctionName(*m.name)) {
      return ChatError(ChatErrorKind::kInvalidToolMessage, FunctionNameMessage(*m.name));
    }
    if (AtLeast(v_, TokenizerVersion::kV13)) {
      if (!m.tool_call_id.has_value() || m.tool_call_id->empty() || *m.tool_call_id == kNullId) {
        return ChatError(ChatErrorKind::kInvalidToolMessage, kInvalidIdV13);
      }
    } else {
      if (!m.tool_call_id.has_value())
        return ChatError(ChatErrorKind::kInvalidRequest, "Tool call id has to be defined.");
      if (!IsV3ToolCallId(*m.tool_call_id)) {
        return ChatError(ChatErrorKind::kInvalidToolMessage,
                         Cat("Tool call id was ", *m.tool_call_id, " but must be a-z, A-Z, 0-9, with a length of 9."));
      }
    }
    return absl::OkStatus();
  }

  absl::Status AssistantMessage(const ChatMessage& m, bool is_last) const {
    const bool v11 = AtLeast(v_, TokenizerVersion::kV11);
    SIROCCO_RETURN_IF_ERROR(CheckChunkTypes(
        m.content, [v11](ChunkType t) { return t == ChunkType::kText || (v11 && t == ChunkType::kThinking); },
        "assistant", ChatErrorKind::kInvalidAssistantMessage));
    if (!AtLeast(v_, TokenizerVersion::kV7)) {
      const bool has_content = m.content.has_value() && m.content->truthy();
      const bool has_calls = m.tool_calls.has_value() && !m.tool_calls->empty();
      if (has_content == has_calls) {
        return ChatError(ChatErrorKind::kInvalidAssistantMessage,
                         "Assistant message must have either content or tool_calls, but not both.");
      }
    }
    if (m.tool_calls.has_value()) {
      for (const ToolCall& call : *m.tool_calls) {
        SIROCCO_RETURN_IF_ERROR(ToolCallId(call.id));
        if (!IsFunctionName(call.function.name)) {
          return ChatError(ChatErrorKind::kInvalidFunctionCall, FunctionNameMessage(call.function.name));
        }
      }
    }
    if (m.prefix && !is_last) {
      return ChatError(ChatErrorKind::kInvalidAssistantMessage,
                       "Assistant message with prefix True must be last message");
    }
    return absl::OkStatus();
  }

  absl::Status ToolCallId(const std::string& id) const {
    if (AtLeast(v_, TokenizerVersion::kV13)) {
      if (id.empty() || id == kNullId) return ChatError(ChatErrorKind::kInvalidFunctionCall, kInvalidIdV13);
      return absl::OkStatus();
    }
    if (id == kNullId) {
      return ChatError(ChatErrorKind::kInvalidFunctionCall,
                       "Tool call id 'null' is only allowed for the last assistant message in finetuning mode.");
    }
    if (!IsV3ToolCallId(id)) {
      return ChatError(ChatErrorKind::kInvalidFunctionCall,
                       Cat("Tool call id was ", id, " but must be a-z, A-Z, 0-9, with a length of 9."));
    }
    return absl::OkStatus();
  }

  TokenizerVersion v_;
};

}  // namespace

absl::Status ValidateChatRequest(const ChatRequest& request, TokenizerVersion version) {
  return Validator(version).Validate(request);
}

}  // namespace sirocco::text
