// Sirocco's own form of mistral-common's ChatCompletionRequest, and its JSON
// reader. The JSON is the one mistral-common reads with
// `ChatCompletionRequest.model_validate_json(text)` (its Mistral form, not the
// OpenAI one), so one request file feeds both sides; what pydantic rejects is
// rejected here with the same error class (ChatErrorKind), the location and
// error type of pydantic's first error, and a message like its own.
//
// Sampling fields (temperature, ...) are carried but play no part in
// rendering. Images are kept as the base64 / data-URL text the request holds;
// the renderer reads only their size (instruct_image.h). Audio chunks are read
// so that they are rejected the way the reference rejects them (no tokenizer
// Sirocco serves has an audio encoder).
//
// Plain data and pure functions: safe to use from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/text/instruct_json.h"

namespace sirocco::text {

// The mistral-common (or Python built-in) exception class a rejection stands
// for. Every rejection of a chat request is an InvalidArgument status whose
// message starts with the class name, e.g.
// "InvalidMessageStructureException: Unexpected role 'tool' after role 'user'".
enum class ChatErrorKind : std::uint8_t {
  kValidationError,  // pydantic: the JSON does not fit ChatCompletionRequest
  kInvalidRequest,
  kInvalidMessageStructure,
  kInvalidSystemPrompt,
  kInvalidUserMessage,
  kInvalidAssistantMessage,
  kInvalidToolMessage,
  kInvalidFunctionCall,
  kInvalidTool,
  kInvalidToolSchema,
  kTokenizer,
  kUnsupportedTokenizerFeature,
  kValueError,
  kAssertionError,
  kRuntimeError,
};

std::string_view ChatErrorKindName(ChatErrorKind kind);
[[nodiscard]] absl::Status ChatError(ChatErrorKind kind, std::string_view message);
// pydantic's ValidationError, printed as pydantic prints its first error:
// "1 validation error for ChatCompletionRequest\n<loc>\n  <msg> [type=<type>]".
[[nodiscard]] absl::Status PydanticError(std::string_view loc, std::string_view type, std::string_view msg);
// The class name that starts a ChatError's message ("" for any other status).
std::string ChatErrorClass(const absl::Status& status);

enum class Role : std::uint8_t { kSystem, kUser, kAssistant, kTool };
std::string_view RoleName(Role role);

enum class ChunkType : std::uint8_t { kText, kImage, kImageUrl, kInputAudio, kAudioUrl, kThinking };
// The reference's class name for the chunk type ("TextChunk", "ImageURLChunk", ...).
std::string_view ChunkClassName(ChunkType type);

struct ContentChunk {
  ChunkType type = ChunkType::kText;
  std::string text;    // kText: the text; kThinking: the thinking
  bool closed = true;  // kThinking: false while the reasoning is still open
  // kImage: base64, optionally as a data URL; kImageUrl: the URL (data URLs
  // only, offline); kInputAudio / kAudioUrl: the audio reference.
  std::string data;
  std::optional<std::string> detail;  // kImageUrl given as {"url", "detail"}
};

// A message's content: a string, or a list of chunks.
struct Content {
  bool is_chunks = false;
  std::string text;
  std::vector<ContentChunk> chunks;

  static Content Text(std::string s);
  static Content Chunks(std::vector<ContentChunk> c);
  // Python truthiness: a non-empty string or a non-empty list.
  bool truthy() const { return is_chunks ? !chunks.empty() : !text.empty(); }
};

struct FunctionCall {
  std::string name;
  std::string arguments;  // JSON text (a dict given in the request is dumped, as pydantic does)
};

struct ToolCall {
  std::string id = "null";  // the reference's default for a missing id
  FunctionCall function;
};

struct ChatMessage {
  Role role = Role::kUser;
  std::optional<Content> content;                   // nullopt only for an assistant message (None)
  std::optional<std::vector<ToolCall>> tool_calls;  // assistant
  bool prefix = false;                              // assistant: the final message, to be continued
  std::optional<std::string> tool_call_id;          // tool
  std::optional<std::string> name;                  // tool (deprecated by the reference, still validated)
};

struct FunctionDef {
  std::string name;
  std::string description;
  PyValue parameters;  // a JSON object (a JSON-schema)
  bool strict = false;
};

struct Tool {
  FunctionDef function;
};

enum class ToolChoiceMode : std::uint8_t { kAuto, kNone, kAny, kRequired, kNamed };
struct ToolChoice {
  ToolChoiceMode mode = ToolChoiceMode::kAuto;
  std::string function_name;  // kNamed
};

enum class ReasoningEffort : std::uint8_t { kNone, kMinimal, kLow, kMedium, kHigh, kXHigh, kMax };
std::string_view ReasoningEffortName(ReasoningEffort effort);

enum class ResponseFormatType : std::uint8_t { kText, kJsonObject, kJsonSchema };
struct JsonSchemaFormat {
  std::string name;
  std::optional<std::string> description;
  PyValue schema;
  bool strict = false;
};
struct ResponseFormat {
  ResponseFormatType type = ResponseFormatType::kText;
  std::optional<JsonSchemaFormat> json_schema;
};

struct ChatRequest {
  double temperature = 0.7;
  double top_p = 1.0;
  std::optional<std::int64_t> max_tokens;
  std::optional<std::int64_t> random_seed;
  std::optional<std::string> model;
  std::vector<ChatMessage> messages;
  ResponseFormat response_format;
  std::optional<std::vector<Tool>> tools;
  ToolChoice tool_choice;
  bool parallel_tool_calls = true;
  bool truncate_for_context_length = false;
  std::optional<ReasoningEffort> reasoning_effort;
};

// Reads the JSON form of a ChatCompletionRequest. Errors are ChatErrors.
[[nodiscard]] absl::StatusOr<ChatRequest> ParseChatRequest(std::string_view json_text);

}  // namespace sirocco::text
