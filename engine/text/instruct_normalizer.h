// Step 2 of the instruct format (instruct.h): mistral-common's
// InstructRequestNormalizer of each tokenizer version turns a validated
// request into the message list the encoder walks. Consecutive messages of
// one role are merged (text joined by "\n\n", or directly for chunks of one
// message in v15), system messages become the system prompt (v3) or stay in
// place (v7+), tool-call arguments are normalized JSON, tool results follow
// the order of their calls (v11+), and v15 builds the model settings from the
// tokenizer's model_settings_builder.
//
// Pure functions over values: safe to call from any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/text/chat_request.h"
#include "engine/text/instruct_json.h"
#include "engine/text/tekken.h"

namespace sirocco::text {

// A tokenizer file's "model_settings_builder" (v15+): which settings a request
// may carry and the value each takes when absent.
struct ModelSettingsBuilder {
  struct Enum {
    bool accepts_none = true;
    std::optional<std::string> default_value;
    std::vector<std::string> values;
  };
  std::optional<Enum> reasoning_effort;
  bool json_schema = false;  // the response format's schema is a setting
};

[[nodiscard]] absl::StatusOr<ModelSettingsBuilder> ParseModelSettingsBuilder(std::string_view json_text);

// What [MODEL_SETTINGS] carries; unset fields are left out of it.
struct ModelSettings {
  std::optional<std::string> reasoning_effort;
  std::optional<PyValue> json_schema;
  bool empty() const { return !reasoning_effort.has_value() && !json_schema.has_value(); }
};

struct NormalizedMessage {
  Role role = Role::kUser;
  Content content;                   // an assistant with only tool calls has ""
  std::vector<ToolCall> tool_calls;  // arguments normalized (json.dumps(json.loads(...)))
  bool prefix = false;
  std::optional<std::string> tool_call_id;
  std::optional<std::string> name;
};

struct NormalizedRequest {
  std::vector<NormalizedMessage> messages;
  std::optional<std::string> system_prompt;  // v3 only
  ModelSettings settings;                    // v15 only
};

[[nodiscard]] absl::StatusOr<NormalizedRequest> NormalizeChatRequest(
    const ChatRequest& request, TokenizerVersion version, const std::optional<ModelSettingsBuilder>& builder);

// The JSON value mistral-common reads from a string it may or may not hold
// JSON (`_parse_json_content`): json.loads of it, or the string itself.
PyValue ParseJsonOrString(std::string_view text);

}  // namespace sirocco::text
