#include "engine/text/chat_request.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "engine/status_macros.h"
#include "engine/text/chat_request_fields.h"
#include "engine/text/instruct_image.h"
#include "engine/text/instruct_schema.h"
#include "engine/text/instruct_strings.h"

namespace sirocco::text {
namespace {

using fields::ExpectObject;
using fields::Fields;
using fields::FirstIssue;
using fields::Issue;
using fields::Join;
using fields::Missing;
using fields::PydanticErrors;
using fields::ReadBool;
using fields::ReadEnum;
using fields::ReadFloat;
using fields::ReadOptNonNegativeInt;
using fields::ReadOptStr;
using fields::ReadStr;
using fields::TagText;

// pydantic names the list-of-chunks branch of `str | list[ContentChunk]` after
// its type; locations below it carry this segment.
constexpr std::string_view kChunkListLoc =
    "list[tagged-union[TextChunk,ImageChunk,ImageURLChunk,AudioChunk,AudioURLChunk,ThinkChunk]]";

constexpr std::string_view kChunkTypeNames[] = {"text", "image", "image_url", "input_audio", "audio_url", "thinking"};
constexpr ChunkType kChunkTypes[] = {ChunkType::kText,       ChunkType::kImage,    ChunkType::kImageUrl,
                                     ChunkType::kInputAudio, ChunkType::kAudioUrl, ChunkType::kThinking};

// ImageChunk's `image` validator: the image is opened when the request is read.
absl::Status CheckImageChunkData(const std::string& data, std::string_view loc) {
  absl::StatusOr<std::string_view> payload = StripBase64DataUrl(data);
  if (!payload.ok()) return PydanticError(loc, "value_error", Cat("Value error, ", payload.status().message()));
  bool ascii = true;
  for (const char c : *payload) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  absl::StatusOr<std::string> bytes = ascii ? PyBase64Decode(*payload) : absl::InvalidArgumentError("not ASCII");
  if (!bytes.ok() || !ReadImageSize(*bytes).ok()) {
    // Pillow's failure escapes pydantic as a RuntimeError, not a ValidationError.
    std::string head;
    std::size_t i = 0;
    for (int n = 0; n < 20 && i < payload->size(); ++n) {  // the first 20 code points
      do head.push_back((*payload)[i++]);
      while (i < payload->size() && (static_cast<unsigned char>((*payload)[i]) & 0xC0) == 0x80);
    }
    return ChatError(ChatErrorKind::kRuntimeError,
                     Cat("Encountered an error when loading image from bytes starting with '", head,
                         "'. Expected either a PIL.Image.Image or a base64 encoded string of bytes."));
  }
  return absl::OkStatus();
}

absl::Status ReadChunk(const PyValue& v, const std::string& loc, ContentChunk* chunk) {
  if (!v.is_object()) return PydanticError(loc, "model_attributes_type", "Input should be an object");
  const PyValue* tag = v.Find("type");
  if (tag == nullptr)
    return PydanticError(loc, "union_tag_not_found", "Unable to extract tag using discriminator 'type'");
  std::size_t index = std::size(kChunkTypeNames);
  for (std::size_t i = 0; i < std::size(kChunkTypeNames); ++i) {
    if (tag->is_string() && tag->str == kChunkTypeNames[i]) index = i;
  }
  if (index == std::size(kChunkTypeNames)) {
    return PydanticError(loc, "union_tag_invalid",
                         Cat("Input tag '", TagText(*tag),
                             "' found using 'type' does not match any of the expected tags: "
                             "<ChunkTypes.text: 'text'>, <ChunkTypes.image: 'image'>, "
                             "<ChunkTypes.image_url: 'image_url'>, <ChunkTypes.input_audio: 'input_audio'>, "
                             "<ChunkTypes.audio_url: 'audio_url'>, <ChunkTypes.thinking: 'thinking'>"));
  }
  chunk->type = kChunkTypes[index];
  Fields f(v, Join(loc, kChunkTypeNames[index]));
  f.Take("type");
  switch (chunk->type) {
    case ChunkType::kText: {
      const PyValue* text = f.Take("text");
      if (text == nullptr) return Missing(f.Loc("text"));
      SIROCCO_RETURN_IF_ERROR(ReadStr(*text, f.Loc("text"), &chunk->text));
      break;
    }
    case ChunkType::kThinking: {
      const PyValue* thinking = f.Take("thinking");
      if (thinking == nullptr) return Missing(f.Loc("thinking"));
      SIROCCO_RETURN_IF_ERROR(ReadStr(*thinking, f.Loc("thinking"), &chunk->text));
      if (const PyValue* closed = f.Take("closed"))
        SIROCCO_RETURN_IF_ERROR(ReadBool(*closed, f.Loc("closed"), &chunk->closed));
      break;
    }
    case ChunkType::kImage: {
      const PyValue* image = f.Take("image");
      if (image == nullptr) return Missing(f.Loc("image"));
      SIROCCO_RETURN_IF_ERROR(ReadStr(*image, f.Loc("image"), &chunk->data));
      SIROCCO_RETURN_IF_ERROR(CheckImageChunkData(chunk->data, f.Loc("image")));
      break;
    }
    case ChunkType::kImageUrl: {
      const PyValue* url = f.Take("image_url");
      if (url == nullptr) return Missing(f.Loc("image_url"));
      if (url->is_object()) {
        Fields u(*url, Join(f.Loc("image_url"), "ImageURL"));
        const PyValue* u_url = u.Take("url");
        if (u_url == nullptr) return Missing(u.Loc("url"));
        SIROCCO_RETURN_IF_ERROR(ReadStr(*u_url, u.Loc("url"), &chunk->data));
        std::optional<std::string> detail;
        SIROCCO_RETURN_IF_ERROR(ReadOptStr(u.Take("detail"), u.Loc("detail"), &detail));
        chunk->detail = detail;
        SIROCCO_RETURN_IF_ERROR(u.CheckNoExtras());
      } else {
        SIROCCO_RETURN_IF_ERROR(ReadStr(*url, Join(f.Loc("image_url"), "str"), &chunk->data));
      }
      break;
    }
    case ChunkType::kInputAudio: {
      const PyValue* audio = f.Take("input_audio");
      if (audio == nullptr) return Missing(f.Loc("input_audio"));
      const PyValue* data = audio->is_object() && audio->Find("data") != nullptr ? audio->Find("data") : audio;
      SIROCCO_RETURN_IF_ERROR(ReadStr(*data, f.Loc("input_audio"), &chunk->data));
      if (absl::StripAsciiWhitespace(chunk->data).empty()) {
        return PydanticError(f.Loc("input_audio"), "value_error", "Value error, `input_audio` should not be empty.");
      }
      break;
    }
    case ChunkType::kAudioUrl: {
      const PyValue* url = f.Take("audio_url");
      if (url == nullptr) return Missing(f.Loc("audio_url"));
      const PyValue* inner = url->is_object() && url->Find("url") != nullptr ? url->Find("url") : url;
      SIROCCO_RETURN_IF_ERROR(ReadStr(*inner, f.Loc("audio_url"), &chunk->data));
      break;
    }
  }
  return f.CheckNoExtras();
}

// `str | list[ContentChunk]`: when neither branch fits, pydantic reports the
// str branch first and the list branch's own error second.
absl::Status ReadContent(const PyValue& v, const std::string& loc, Content* out) {
  if (v.is_string()) {
    *out = Content::Text(v.str);
    return absl::OkStatus();
  }
  std::vector<Issue> issues = {{Join(loc, "str"), "string_type", "Input should be a valid string"}};
  const std::string list_loc = Join(loc, kChunkListLoc);
  if (!v.is_array()) {
    issues.push_back({list_loc, "list_type", "Input should be a valid array"});
    return PydanticErrors(issues);
  }
  std::vector<ContentChunk> chunks(v.array.size());
  for (std::size_t i = 0; i < v.array.size(); ++i) {
    const absl::Status s = ReadChunk(v.array[i], Join(list_loc, i), &chunks[i]);
    if (s.ok()) continue;
    if (ChatErrorClass(s) != "ValidationError") return s;
    issues.push_back(FirstIssue(s));
    return PydanticErrors(issues);
  }
  *out = Content::Chunks(std::move(chunks));
  return absl::OkStatus();
}

// What tools and tool calls share: an optional `type` that can only be
// "function", and a required `function` object with a required `name`, read
// into *name. Returns the `function` object's fields, `name` taken.
absl::StatusOr<Fields> ReadFunctionHead(Fields& f, std::string* name) {
  if (const PyValue* type = f.Take("type")) {
    static constexpr std::string_view kTypes[] = {"function"};
    int unused = 0;
    SIROCCO_RETURN_IF_ERROR(ReadEnum(*type, f.Loc("type"), kTypes, &unused));
  }
  const PyValue* function = f.Take("function");
  if (function == nullptr) return Missing(f.Loc("function"));
  SIROCCO_RETURN_IF_ERROR(ExpectObject(*function, f.Loc("function")));
  Fields g(*function, f.Loc("function"));
  const PyValue* n = g.Take("name");
  if (n == nullptr) return Missing(g.Loc("name"));
  SIROCCO_RETURN_IF_ERROR(ReadStr(*n, g.Loc("name"), name));
  return g;
}

absl::Status ReadToolCall(const PyValue& v, const std::string& loc, ToolCall* call) {
  SIROCCO_RETURN_IF_ERROR(ExpectObject(v, loc));
  Fields f(v, loc);
  if (const PyValue* id = f.Take("id")) SIROCCO_RETURN_IF_ERROR(ReadStr(*id, f.Loc("id"), &call->id));
  absl::StatusOr<Fields> head = ReadFunctionHead(f, &call->function.name);
  if (!head.ok()) return head.status();
  Fields& g = *head;
  const PyValue* arguments = g.Take("arguments");
  if (arguments == nullptr) return Missing(g.Loc("arguments"));
  // FunctionCall turns a dict into its JSON text and None into "{}".
  if (arguments->is_object()) {
    call->function.arguments = PyJsonDumps(*arguments);
  } else if (arguments->is_null()) {
    call->function.arguments = "{}";
  } else {
    SIROCCO_RETURN_IF_ERROR(ReadStr(*arguments, g.Loc("arguments"), &call->function.arguments));
  }
  SIROCCO_RETURN_IF_ERROR(g.CheckNoExtras());
  return f.CheckNoExtras();
}

// The chunk types each message class admits (BaseMessage._allowed_content_chunks).
bool ChunkAllowed(Role role, ChunkType type) {
  switch (role) {
    case Role::kSystem:
      return type == ChunkType::kText || type == ChunkType::kInputAudio || type == ChunkType::kThinking;
    case Role::kAssistant:
      return type == ChunkType::kText || type == ChunkType::kThinking;
    case Role::kUser:
    case Role::kTool:
      return type != ChunkType::kThinking;
  }
  return false;
}

absl::Status ReadMessage(const PyValue& v, const std::string& loc, ChatMessage* msg) {
  if (!v.is_object()) return PydanticError(loc, "model_attributes_type", "Input should be an object");
  const PyValue* tag = v.Find("role");
  if (tag == nullptr)
    return PydanticError(loc, "union_tag_not_found", "Unable to extract tag using discriminator 'role'");
  constexpr std::string_view kRoles[] = {"system", "user", "assistant", "tool"};
  std::size_t index = std::size(kRoles);
  for (std::size_t i = 0; i < std::size(kRoles); ++i) {
    if (tag->is_string() && tag->str == kRoles[i]) index = i;
  }
  if (index == std::size(kRoles)) {
    return PydanticError(loc, "union_tag_invalid",
                         Cat("Input tag '", TagText(*tag),
                             "' found using 'role' does not match any of the expected tags: "
                             "<Roles.system: 'system'>, <Roles.user: 'user'>, "
                             "<Roles.assistant: 'assistant'>, <Roles.tool: 'tool'>"));
  }
  msg->role = static_cast<Role>(index);
  Fields f(v, Join(loc, kRoles[index]));
  f.Take("role");
  const PyValue* content = f.Take("content");
  if (msg->role != Role::kAssistant && content == nullptr) return Missing(f.Loc("content"));
  if (content != nullptr && !(msg->role == Role::kAssistant && content->is_null())) {
    Content c;
    SIROCCO_RETURN_IF_ERROR(ReadContent(*content, f.Loc("content"), &c));
    msg->content = std::move(c);
  }
  if (msg->role == Role::kAssistant) {
    const PyValue* calls = f.Take("tool_calls");
    if (calls != nullptr && !calls->is_null()) {
      if (!calls->is_array()) return PydanticError(f.Loc("tool_calls"), "list_type", "Input should be a valid array");
      std::vector<ToolCall> parsed(calls->array.size());
      for (std::size_t i = 0; i < parsed.size(); ++i) {
        SIROCCO_RETURN_IF_ERROR(ReadToolCall(calls->array[i], Join(f.Loc("tool_calls"), i), &parsed[i]));
      }
      msg->tool_calls = std::move(parsed);
    }
    if (const PyValue* prefix = f.Take("prefix"))
      SIROCCO_RETURN_IF_ERROR(ReadBool(*prefix, f.Loc("prefix"), &msg->prefix));
  }
  if (msg->role == Role::kTool) {
    SIROCCO_RETURN_IF_ERROR(ReadOptStr(f.Take("tool_call_id"), f.Loc("tool_call_id"), &msg->tool_call_id));
    SIROCCO_RETURN_IF_ERROR(ReadOptStr(f.Take("name"), f.Loc("name"), &msg->name));
  }
  SIROCCO_RETURN_IF_ERROR(f.CheckNoExtras());
  if (msg->content.has_value() && msg->content->is_chunks) {
    for (const ContentChunk& chunk : msg->content->chunks) {
      if (!ChunkAllowed(msg->role, chunk.type)) {
        return PydanticError(
            f.loc(), "value_error",
            Cat("Value error, ", ChunkClassName(chunk.type), " cannot be used in ", RoleName(msg->role), " message."));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ReadTool(const PyValue& v, const std::string& loc, Tool* tool) {
  SIROCCO_RETURN_IF_ERROR(ExpectObject(v, loc));
  Fields f(v, loc);
  absl::StatusOr<Fields> head = ReadFunctionHead(f, &tool->function.name);
  if (!head.ok()) return head.status();
  Fields& g = *head;
  if (const PyValue* d = g.Take("description")) {
    SIROCCO_RETURN_IF_ERROR(ReadStr(*d, g.Loc("description"), &tool->function.description));
  }
  const PyValue* parameters = g.Take("parameters");
  if (parameters == nullptr) return Missing(g.Loc("parameters"));
  if (!parameters->is_object()) return PydanticError(g.Loc("parameters"), "dict_type", "Input should be an object");
  tool->function.parameters = *parameters;
  if (const PyValue* strict = g.Take("strict")) {
    SIROCCO_RETURN_IF_ERROR(ReadBool(*strict, g.Loc("strict"), &tool->function.strict));
  }
  SIROCCO_RETURN_IF_ERROR(g.CheckNoExtras());
  return f.CheckNoExtras();
}

absl::Status ReadToolChoice(const PyValue& v, ToolChoice* out) {
  static constexpr std::string_view kModes[] = {"auto", "none", "any", "required"};
  constexpr std::string_view kEnumLoc =
      "tool_choice.`function-after[operator.attrgetter('value')(), str-enum[ToolChoiceEnum]]`";
  if (v.is_string()) return ReadEnum(v, kEnumLoc, kModes, &out->mode);
  absl::Status enum_error = PydanticError(kEnumLoc, "enum", "Input should be 'auto', 'none', 'any' or 'required'");
  if (!v.is_object()) return enum_error;
  Fields f(v, "tool_choice.NamedToolChoice");
  if (const PyValue* type = f.Take("type")) {
    static constexpr std::string_view kTypes[] = {"function"};
    int unused = 0;
    if (!ReadEnum(*type, f.Loc("type"), kTypes, &unused).ok()) return enum_error;
  }
  const PyValue* function = f.Take("function");
  if (function == nullptr || !function->is_object()) return enum_error;
  Fields g(*function, f.Loc("function"));
  const PyValue* name = g.Take("name");
  if (name == nullptr || !name->is_string() || !g.CheckNoExtras().ok() || !f.CheckNoExtras().ok()) return enum_error;
  out->mode = ToolChoiceMode::kNamed;
  out->function_name = name->str;
  return absl::OkStatus();
}

absl::Status ReadResponseFormat(const PyValue& v, ResponseFormat* out) {
  SIROCCO_RETURN_IF_ERROR(ExpectObject(v, "response_format"));
  Fields f(v, "response_format");
  if (const PyValue* type = f.Take("type")) {
    static constexpr std::string_view kTypes[] = {"text", "json_object", "json_schema"};
    SIROCCO_RETURN_IF_ERROR(ReadEnum(*type, f.Loc("type"), kTypes, &out->type));
  }
  const PyValue* schema = f.Take("json_schema");
  if (schema != nullptr && !schema->is_null()) {
    SIROCCO_RETURN_IF_ERROR(ExpectObject(*schema, f.Loc("json_schema")));
    Fields g(*schema, f.Loc("json_schema"));
    JsonSchemaFormat js;
    const PyValue* name = g.Take("name");
    if (name == nullptr) return Missing(g.Loc("name"));
    SIROCCO_RETURN_IF_ERROR(ReadStr(*name, g.Loc("name"), &js.name));
    SIROCCO_RETURN_IF_ERROR(ReadOptStr(g.Take("description"), g.Loc("description"), &js.description));
    const PyValue* body = g.Take("schema");
    const PyValue* by_name = g.Take("custom_schema");  // populate_by_name
    if (body == nullptr) body = by_name;
    if (body == nullptr) return Missing(g.Loc("schema"));
    if (!body->is_object()) return PydanticError(g.Loc("schema"), "dict_type", "Input should be an object");
    if (std::optional<std::string> error = Draft7SchemaError(*body)) {
      return PydanticError(g.Loc("schema"), "value_error", Cat("Value error, ", *error));
    }
    js.schema = *body;
    if (const PyValue* strict = g.Take("strict"))
      SIROCCO_RETURN_IF_ERROR(ReadBool(*strict, g.Loc("strict"), &js.strict));
    SIROCCO_RETURN_IF_ERROR(g.CheckNoExtras());
    out->json_schema = std::move(js);
  }
  SIROCCO_RETURN_IF_ERROR(f.CheckNoExtras());
  if (out->type == ResponseFormatType::kJsonSchema && !out->json_schema.has_value()) {
    return PydanticError("response_format", "value_error",
                         "Value error, Response format `json_schema` must define the schema");
  }
  return absl::OkStatus();
}

// The deprecated `continue_final_message` flag marks the last message as a
// prefix before the fields are read (ChatCompletionRequest's "before" hook).
absl::Status ApplyContinueFinalMessage(PyValue* root) {
  const PyValue* flag = root->Find("continue_final_message");
  if (flag == nullptr) return absl::OkStatus();
  bool value = false;
  SIROCCO_RETURN_IF_ERROR(ReadBool(*flag, "", &value));
  constexpr std::string_view kError = "continue_final_message=True requires final message to be an assistant.";
  PyValue rest;
  rest.kind = PyValue::Kind::kObject;
  for (auto& [key, v] : root->object) {
    if (key != "continue_final_message") rest.object.emplace_back(key, std::move(v));
  }
  *root = std::move(rest);
  PyValue* messages = nullptr;
  for (auto& [key, v] : root->object) {
    if (key == "messages") messages = &v;
  }
  if (messages == nullptr || !messages->is_array()) {
    return value ? ChatError(ChatErrorKind::kInvalidMessageStructure, kError) : absl::OkStatus();
  }
  if (!value) return absl::OkStatus();
  if (messages->array.empty() || !messages->array.back().is_object()) {
    return ChatError(ChatErrorKind::kInvalidMessageStructure, kError);
  }
  PyValue& last = messages->array.back();
  const PyValue* role = last.Find("role");
  if (role == nullptr || !role->is_string() || role->str != "assistant") {
    return ChatError(ChatErrorKind::kInvalidMessageStructure, kError);
  }
  if (const PyValue* prefix = last.Find("prefix")) {
    bool unused = false;
    SIROCCO_RETURN_IF_ERROR(ReadBool(*prefix, "", &unused));
  }
  PyValue t;
  t.kind = PyValue::Kind::kBool;
  t.boolean = true;
  last.Set("prefix", std::move(t));
  return absl::OkStatus();
}

}  // namespace

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kSystem:
      return "system";
    case Role::kUser:
      return "user";
    case Role::kAssistant:
      return "assistant";
    case Role::kTool:
      return "tool";
  }
  return "?";
}

std::string_view ChunkClassName(ChunkType type) {
  switch (type) {
    case ChunkType::kText:
      return "TextChunk";
    case ChunkType::kImage:
      return "ImageChunk";
    case ChunkType::kImageUrl:
      return "ImageURLChunk";
    case ChunkType::kInputAudio:
      return "AudioChunk";
    case ChunkType::kAudioUrl:
      return "AudioURLChunk";
    case ChunkType::kThinking:
      return "ThinkChunk";
  }
  return "?";
}

std::string_view ReasoningEffortName(ReasoningEffort effort) {
  static constexpr std::string_view kNames[] = {"none", "minimal", "low", "medium", "high", "xhigh", "max"};
  return kNames[static_cast<int>(effort)];
}

Content Content::Text(std::string s) {
  Content c;
  c.text = std::move(s);
  return c;
}

Content Content::Chunks(std::vector<ContentChunk> c) {
  Content content;
  content.is_chunks = true;
  content.chunks = std::move(c);
  return content;
}

absl::StatusOr<ChatRequest> ParseChatRequest(std::string_view json_text) {
  absl::StatusOr<PyValue> parsed = ParsePyJson(json_text);
  if (!parsed.ok()) return PydanticError("", "json_invalid", Cat("Invalid JSON: ", parsed.status().message()));
  PyValue root = std::move(*parsed);
  if (!root.is_object()) return PydanticError("", "model_type", "Input should be an object");
  SIROCCO_RETURN_IF_ERROR(ApplyContinueFinalMessage(&root));

  ChatRequest req;
  Fields f(root, "");
  if (const PyValue* v = f.Take("temperature"))
    SIROCCO_RETURN_IF_ERROR(ReadFloat(*v, "temperature", 0, 1, &req.temperature));
  if (const PyValue* v = f.Take("top_p")) SIROCCO_RETURN_IF_ERROR(ReadFloat(*v, "top_p", 0, 1, &req.top_p));
  SIROCCO_RETURN_IF_ERROR(ReadOptNonNegativeInt(f.Take("max_tokens"), "max_tokens", &req.max_tokens));
  SIROCCO_RETURN_IF_ERROR(ReadOptNonNegativeInt(f.Take("random_seed"), "random_seed", &req.random_seed));
  SIROCCO_RETURN_IF_ERROR(ReadOptStr(f.Take("model"), "model", &req.model));
  const PyValue* messages = f.Take("messages");
  if (messages == nullptr) return Missing("messages");
  if (!messages->is_array()) return PydanticError("messages", "list_type", "Input should be a valid array");
  req.messages.resize(messages->array.size());
  for (std::size_t i = 0; i < req.messages.size(); ++i) {
    SIROCCO_RETURN_IF_ERROR(ReadMessage(messages->array[i], Join("messages", i), &req.messages[i]));
  }
  if (const PyValue* v = f.Take("response_format"))
    SIROCCO_RETURN_IF_ERROR(ReadResponseFormat(*v, &req.response_format));
  if (const PyValue* v = f.Take("tools"); v != nullptr && !v->is_null()) {
    if (!v->is_array()) return PydanticError("tools", "list_type", "Input should be a valid array");
    std::vector<Tool> tools(v->array.size());
    for (std::size_t i = 0; i < tools.size(); ++i) {
      SIROCCO_RETURN_IF_ERROR(ReadTool(v->array[i], Join("tools", i), &tools[i]));
    }
    req.tools = std::move(tools);
  }
  if (const PyValue* v = f.Take("tool_choice")) SIROCCO_RETURN_IF_ERROR(ReadToolChoice(*v, &req.tool_choice));
  if (const PyValue* v = f.Take("parallel_tool_calls")) {
    SIROCCO_RETURN_IF_ERROR(ReadBool(*v, "parallel_tool_calls", &req.parallel_tool_calls));
  }
  if (const PyValue* v = f.Take("truncate_for_context_length")) {
    SIROCCO_RETURN_IF_ERROR(ReadBool(*v, "truncate_for_context_length", &req.truncate_for_context_length));
  }
  if (const PyValue* v = f.Take("reasoning_effort"); v != nullptr && !v->is_null()) {
    static constexpr std::string_view kEfforts[] = {"none", "minimal", "low", "medium", "high", "xhigh", "max"};
    ReasoningEffort effort = ReasoningEffort::kNone;
    SIROCCO_RETURN_IF_ERROR(ReadEnum(*v, "reasoning_effort", kEfforts, &effort));
    req.reasoning_effort = effort;
  }
  SIROCCO_RETURN_IF_ERROR(f.CheckNoExtras());
  return req;
}

}  // namespace sirocco::text
