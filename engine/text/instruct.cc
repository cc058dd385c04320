#include "engine/text/instruct.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/status_macros.h"
#include "engine/text/instruct_normalizer.h"
#include "engine/text/instruct_strings.h"
#include "engine/text/instruct_validator.h"

namespace sirocco::text {
namespace {

using Ids = std::vector<std::int32_t>;

bool AtLeast(TokenizerVersion v, TokenizerVersion min) { return static_cast<int>(v) >= static_cast<int>(min); }

PyValue Object(std::vector<std::pair<std::string, PyValue>> members) {
  PyValue v;
  v.kind = PyValue::Kind::kObject;
  v.object = std::move(members);
  return v;
}

// The first `n` code points of UTF-8 text (Python's s[:n]).
std::string_view HeadCodePoints(std::string_view s, std::size_t n) {
  std::size_t i = 0;
  for (std::size_t k = 0; k < n && i < s.size(); ++k) {
    ++i;
    while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
  }
  return s.substr(0, i);
}

// Python's repr of a (normalized) AssistantMessage, which some of the
// reference's errors quote.
std::string AssistantRepr(const NormalizedMessage& m) {
  std::string content;
  if (!m.content.is_chunks) {
    content = PyStrRepr(m.content.text);
  } else {
    content = "[";
    for (std::size_t i = 0; i < m.content.chunks.size(); ++i) {
      const ContentChunk& c = m.content.chunks[i];
      CatAppend(&content, i ? ", " : "",
                c.type == ChunkType::kThinking ? Cat("ThinkChunk(type='thinking', thinking=", PyStrRepr(c.text),
                                                     ", closed=", c.closed ? "True" : "False", ")")
                                               : Cat("TextChunk(type='text', text=", PyStrRepr(c.text), ")"));
    }
    content.push_back(']');
  }
  std::string calls = "None";
  if (!m.tool_calls.empty()) {
    calls = "[";
    for (std::size_t i = 0; i < m.tool_calls.size(); ++i) {
      const ToolCall& t = m.tool_calls[i];
      CatAppend(&calls, i ? ", " : "", "ToolCall(id=", PyStrRepr(t.id),
                ", type='function', function=FunctionCall(name=", PyStrRepr(t.function.name),
                ", arguments=", PyStrRepr(t.function.arguments), "))");
    }
    calls.push_back(']');
  }
  return Cat("role='assistant' content=", content, " tool_calls=", calls, " prefix=", m.prefix ? "True" : "False");
}

// A version's special ids, resolved when the format is created.
struct SpecialIds {
  std::int32_t bos = -1, eos = -1;
  std::int32_t inst = -1, end_inst = -1;
  std::int32_t tools = -1, end_tools = -1;
  std::int32_t tool_results = -1, end_tool_results = -1, tool_calls = -1;
  std::int32_t system = -1, end_system = -1, tool_content = -1;  // v7+
  std::int32_t args = -1, call_id = -1;                          // v11+
  std::optional<std::int32_t> think, end_think;                  // v13+, when the file has them
  std::int32_t settings = -1, end_settings = -1;                 // v15+
  std::int32_t img = -1, img_break = -1, img_end = -1;           // with an image config
};

}  // namespace

struct InstructFormat::Impl {
  const Tekkenizer& tok;
  TokenizerVersion v;
  SpecialIds id;
  std::optional<ImageConfig> image;
  std::optional<ModelSettingsBuilder> builder;

  // One rendering: the request's ids and images so far.
  struct Out {
    Ids ids;
    std::vector<RenderedImage> images;
  };

  void Text(std::string_view text, Out* out) const { tok.EncodeAppend(text, &out->ids); }

  absl::Status Image(const ContentChunk& chunk, Out* out) const {
    if (!image.has_value())
      return ChatError(ChatErrorKind::kAssertionError, "Make sure to define a image encoder at init");
    std::string bytes;
    if (chunk.type == ChunkType::kImage) {
      // Checked when the request was read (an ImageChunk is opened eagerly).
      SIROCCO_ASSIGN_OR_RETURN(std::string_view payload, StripBase64DataUrl(chunk.data));
      SIROCCO_ASSIGN_OR_RETURN(bytes, PyBase64Decode(payload));
    } else {
      const std::string& url = chunk.data;
      const std::string_view head = HeadCodePoints(url, 64);
      if (url.rfind("data:", 0) == 0) {
        absl::StatusOr<std::string_view> payload = StripBase64DataUrl(url);
        if (!payload.ok()) return ChatError(ChatErrorKind::kValueError, ToStd(payload.status().message()));
        bool ascii = true;
        for (const char c : *payload) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
        absl::StatusOr<std::string> decoded = ascii ? PyBase64Decode(*payload) : absl::InvalidArgumentError("");
        if (!decoded.ok()) {
          return ChatError(ChatErrorKind::kValueError,
                           Cat("Invalid image data URL ", head, ": payload is not valid base64."));
        }
        bytes = *std::move(decoded);
        if (!ReadImageSize(bytes).ok()) {
          return ChatError(ChatErrorKind::kValueError,
                           Cat("Invalid image data URL ", head, ": payload is not a decodable image."));
        }
      } else if (url.rfind("file://", 0) == 0 || url.rfind("http", 0) == 0) {
        // The reference would read the file or download the URL; a server
        // must not, so only inline images are accepted.
        return ChatError(ChatErrorKind::kValueError,
                         Cat("Unsupported image url ", head, ": Sirocco accepts images only as base64 data"));
      } else {
        return ChatError(ChatErrorKind::kValueError, Cat("Unsupported image url scheme ", url));
      }
    }
    SIROCCO_ASSIGN_OR_RETURN(const ImageSize size, ReadImageSize(bytes));
    const ImageGrid grid =
        ImageTokenGrid(size, image->image_patch_size, image->max_image_size, image->spatial_merge_size);
    if (grid.width_tokens <= 0 || grid.height_tokens <= 0) return ChatError(ChatErrorKind::kAssertionError, "");
    for (std::int64_t row = 0; row < grid.height_tokens; ++row) {
      out->ids.insert(out->ids.end(), static_cast<std::size_t>(grid.width_tokens), id.img);
      out->ids.push_back(row + 1 == grid.height_tokens ? id.img_end : id.img_break);
    }
    out->images.push_back(RenderedImage{size, grid});
    return absl::OkStatus();
  }

  absl::Status Think(const ContentChunk& chunk, Out* out) const {
    if (!AtLeast(v, TokenizerVersion::kV13)) {
      return ChatError(ChatErrorKind::kTokenizer, "Think not implemented for tokenizer < V13.");
    }
    if (!id.think.has_value() || !id.end_think.has_value()) {
      return ChatError(ChatErrorKind::kAssertionError, "think tokens are not available for this tokenizer.");
    }
    out->ids.push_back(*id.think);
    Text(chunk.text, out);
    if (chunk.closed) out->ids.push_back(*id.end_think);
    return absl::OkStatus();
  }

  // `_encode_content_chunk`.
  absl::Status Chunk(const ContentChunk& chunk, Out* out) const {
    switch (chunk.type) {
      case ChunkType::kText:
        Text(chunk.text, out);
        return absl::OkStatus();
      case ChunkType::kThinking:
        return Think(chunk, out);
      case ChunkType::kImage:
      case ChunkType::kImageUrl:
        return Image(chunk, out);
      case ChunkType::kInputAudio:
      case ChunkType::kAudioUrl:
        return ChatError(ChatErrorKind::kAssertionError, "Make sure to define a audio encoder at init");
    }
    return absl::OkStatus();
  }

  absl::Status Chunks(const std::vector<ContentChunk>& chunks, Out* out) const {
    for (const ContentChunk& c : chunks) SIROCCO_RETURN_IF_ERROR(Chunk(c, out));
    return absl::OkStatus();
  }

  // `_maybe_put_image_first`: text chunks followed by one image put the image first.
  static std::vector<ContentChunk> ImageFirst(const std::vector<ContentChunk>& chunks) {
    const auto is_image = [](const ContentChunk& c) {
      return c.type == ChunkType::kImage || c.type == ChunkType::kImageUrl;
    };
    if (chunks.size() < 2 || !is_image(chunks.back())) return chunks;
    for (std::size_t i = 0; i + 1 < chunks.size(); ++i) {
      if (chunks[i].type != ChunkType::kText) return chunks;
    }
    std::vector<ContentChunk> reordered = {chunks.back()};
    reordered.insert(reordered.end(), chunks.begin(), chunks.end() - 1);
    return reordered;
  }

  absl::Status Settings(const ModelSettings& settings, Out* out) const {
    if (!AtLeast(v, TokenizerVersion::kV15)) return absl::OkStatus();
    if (!builder.has_value()) {
      return ChatError(ChatErrorKind::kTokenizer,
                       Cat("Tokenizer ", TokenizerVersionName(v), " needs a `model_settings_builder`."));
    }
    if (!builder->reasoning_effort.has_value() && settings.reasoning_effort.has_value()) {
      return ChatError(ChatErrorKind::kInvalidRequest, "reasoning_effort not supported for this model");
    }
    if (!builder->json_schema && settings.json_schema.has_value()) {
      return ChatError(ChatErrorKind::kInvalidRequest, "json_schema not supported for this model");
    }
    if (settings.empty()) return absl::OkStatus();
    // Top-level keys sorted (the schema inside keeps its own order).
    PyValue dumped = Object({});
    if (settings.json_schema.has_value()) dumped.object.emplace_back("json_schema", *settings.json_schema);
    if (settings.reasoning_effort.has_value()) {
      dumped.object.emplace_back("reasoning_effort", PyValue::String(*settings.reasoning_effort));
    }
    out->ids.push_back(id.settings);
    Text(PyJsonDumps(dumped), out);
    out->ids.push_back(id.end_settings);
    return absl::OkStatus();
  }

  absl::Status User(const NormalizedMessage& m, const ChatRequest& request, const NormalizedRequest& norm,
                    bool is_first, bool is_last, Out* out) const {
    const bool tools_here = AtLeast(v, TokenizerVersion::kV13) ? is_first : is_last;
    if (tools_here && request.tools.has_value() && !request.tools->empty()) {
      PyValue tools;
      tools.kind = PyValue::Kind::kArray;
      for (const Tool& t : *request.tools) {
        tools.array.push_back(Object({{"type", PyValue::String("function")},
                                      {"function", Object({{"name", PyValue::String(t.function.name)},
                                                           {"description", PyValue::String(t.function.description)},
                                                           {"parameters", t.function.parameters}})}}));
      }
      out->ids.push_back(id.tools);
      Text(PyJsonDumps(tools), out);
      out->ids.push_back(id.end_tools);
    }
    if (tools_here) SIROCCO_RETURN_IF_ERROR(Settings(norm.settings, out));
    out->ids.push_back(id.inst);
    // v3 puts the system prompt before the last user message's content.
    const std::optional<std::string>& sp = norm.system_prompt;
    const bool with_system = is_last && sp.has_value() && !sp->empty();
    if (!m.content.is_chunks) {
      Text(with_system ? Cat(*sp, "\n\n", m.content.text) : m.content.text, out);
    } else {
      const std::vector<ContentChunk> chunks = ImageFirst(m.content.chunks);
      for (std::size_t i = 0; i < chunks.size(); ++i) {
        if (i == 0 && with_system) Text(Cat(*sp, "\n\n"), out);
        SIROCCO_RETURN_IF_ERROR(Chunk(chunks[i], out));
      }
    }
    out->ids.push_back(id.end_inst);
    return absl::OkStatus();
  }

  absl::Status ToolResult(const NormalizedMessage& m, Out* out) const {
    out->ids.push_back(id.tool_results);
    if (!AtLeast(v, TokenizerVersion::kV7)) {
      const PyValue result = Object(
          {{"content", ParseJsonOrString(m.content.text)}, {"call_id", PyValue::String(m.tool_call_id.value_or(""))}});
      Text(PyJsonDumps(result), out);
    } else if (!AtLeast(v, TokenizerVersion::kV13)) {
      Text(m.tool_call_id.value_or(""), out);
      out->ids.push_back(id.tool_content);
      Text(m.content.text, out);
    } else if (!m.content.is_chunks) {
      Text(m.content.text, out);
    } else {
      SIROCCO_RETURN_IF_ERROR(Chunks(m.content.chunks, out));
    }
    out->ids.push_back(id.end_tool_results);
    return absl::OkStatus();
  }

  // The v3/v7 tool-call object: name, parsed arguments, and the id when set.
  static PyValue CallObject(const ToolCall& call) {
    PyValue obj = Object(
        {{"name", PyValue::String(call.function.name)}, {"arguments", ParseJsonOrString(call.function.arguments)}});
    if (!call.id.empty() && call.id != "null") obj.object.emplace_back("id", PyValue::String(call.id));
    return obj;
  }

  void ToolCalls(const std::vector<ToolCall>& calls, Out* out) const {
    if (!AtLeast(v, TokenizerVersion::kV11)) {
      PyValue list;
      list.kind = PyValue::Kind::kArray;
      for (const ToolCall& call : calls) list.array.push_back(CallObject(call));
      out->ids.push_back(id.tool_calls);
      Text(PyJsonDumps(list), out);
      return;
    }
    for (const ToolCall& call : calls) {
      out->ids.push_back(id.tool_calls);
      Text(call.function.name, out);
      if (!AtLeast(v, TokenizerVersion::kV13) && !call.id.empty() && call.id != "null") {
        out->ids.push_back(id.call_id);
        Text(call.id, out);
      }
      out->ids.push_back(id.args);
      Text(PyJsonDumps(ParseJsonOrString(call.function.arguments)), out);
    }
  }

  static std::string_view RstripSpaces(std::string_view s) {
    while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
    return s;
  }

  absl::Status Assistant(const NormalizedMessage& m, Out* out) const {
    const bool has_content = m.content.truthy();
    const bool has_calls = !m.tool_calls.empty();
    if (!AtLeast(v, TokenizerVersion::kV7)) {
      if (has_calls && has_content) {
        return ChatError(
            ChatErrorKind::kValueError,
            Cat("Cannot have tool calls and content defined in the same assistant message ", AssistantRepr(m)));
      }
      if (has_calls) {
        ToolCalls(m.tool_calls, out);
      } else if (has_content) {
        Text(RstripSpaces(m.content.text), out);
      } else {
        return ChatError(ChatErrorKind::kTokenizer, Cat("Invalid assistant message: ", m.content.text));
      }
    } else {
      if (!has_content && !has_calls) {
        return ChatError(ChatErrorKind::kTokenizer, Cat("Invalid assistant message: ", AssistantRepr(m)));
      }
      if (has_content && !m.content.is_chunks) {
        Text(RstripSpaces(m.content.text), out);
      } else if (has_content) {
        SIROCCO_RETURN_IF_ERROR(Chunks(m.content.chunks, out));
      }
      if (has_calls) ToolCalls(m.tool_calls, out);
    }
    if (!m.prefix) out->ids.push_back(id.eos);
    return absl::OkStatus();
  }

  absl::Status System(const NormalizedMessage& m, Out* out) const {
    if (AtLeast(v, TokenizerVersion::kV15) && m.content.is_chunks) {
      for (const ContentChunk& c : m.content.chunks) {
        if (c.type == ChunkType::kThinking) {
          return ChatError(ChatErrorKind::kTokenizer, "ThinkChunk in system message is not supported for this model");
        }
      }
    }
    out->ids.push_back(id.system);
    if (m.content.is_chunks) {
      SIROCCO_RETURN_IF_ERROR(Chunks(m.content.chunks, out));
    } else {
      Text(m.content.text, out);
    }
    out->ids.push_back(id.end_system);
    return absl::OkStatus();
  }

  absl::StatusOr<RenderedChat> Render(const ChatRequest& request) const {
    SIROCCO_RETURN_IF_ERROR(ValidateChatRequest(request, v));
    if (request.truncate_for_context_length) {
      return ChatError(ChatErrorKind::kTokenizer,
                       "encoding a chat completion request with truncation, but no max model len was provided");
    }
    SIROCCO_ASSIGN_OR_RETURN(const NormalizedRequest norm, NormalizeChatRequest(request, v, builder));
    std::size_t first_user = norm.messages.size(), last_user = norm.messages.size();
    for (std::size_t i = 0; i < norm.messages.size(); ++i) {
      if (norm.messages[i].role != Role::kUser) continue;
      if (first_user == norm.messages.size()) first_user = i;
      last_user = i;
    }
    Out out;
    out.ids.push_back(id.bos);
    for (std::size_t i = 0; i < norm.messages.size(); ++i) {
      const NormalizedMessage& m = norm.messages[i];
      switch (m.role) {
        case Role::kUser:
          SIROCCO_RETURN_IF_ERROR(User(m, request, norm, i == first_user, i == last_user, &out));
          break;
        case Role::kTool:
          SIROCCO_RETURN_IF_ERROR(ToolResult(m, &out));
          break;
        case Role::kAssistant:
          SIROCCO_RETURN_IF_ERROR(Assistant(m, &out));
          break;
        case Role::kSystem:
          SIROCCO_RETURN_IF_ERROR(System(m, &out));
          break;
      }
    }
    RenderedChat rendered;
    SIROCCO_ASSIGN_OR_RETURN(rendered.text, tok.Decode(out.ids, SpecialTokenPolicy::kKeep));
    rendered.ids = std::move(out.ids);
    rendered.images = std::move(out.images);
    return rendered;
  }
};

InstructFormat::InstructFormat(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
InstructFormat::~InstructFormat() = default;

absl::StatusOr<std::unique_ptr<InstructFormat>> InstructFormat::Create(const Tekkenizer& tokenizer) {
  const TokenizerVersion v = tokenizer.version();
  if (!AtLeast(v, TokenizerVersion::kV3)) {
    return absl::FailedPreconditionError(
        Cat("instruct format ", TokenizerVersionName(v), " is not supported (tekken files are v3+)"));
  }
  auto special = [&](std::string_view text) -> absl::StatusOr<std::int32_t> {
    absl::StatusOr<std::int32_t> found = tokenizer.SpecialTokenId(text);
    if (!found.ok()) {
      return absl::FailedPreconditionError(
          Cat("tokenizer ", tokenizer.name(), " (", TokenizerVersionName(v), ") lacks the special token ", text));
    }
    return found;
  };
  auto impl = std::make_unique<Impl>(Impl{tokenizer, v, {}, tokenizer.image_config(), std::nullopt});
  SpecialIds& id = impl->id;
  id.bos = tokenizer.bos_id();
  id.eos = tokenizer.eos_id();
  SIROCCO_ASSIGN_OR_RETURN(id.inst, special("[INST]"));
  SIROCCO_ASSIGN_OR_RETURN(id.end_inst, special("[/INST]"));
  SIROCCO_ASSIGN_OR_RETURN(id.tools, special("[AVAILABLE_TOOLS]"));
  SIROCCO_ASSIGN_OR_RETURN(id.end_tools, special("[/AVAILABLE_TOOLS]"));
  SIROCCO_ASSIGN_OR_RETURN(id.tool_results, special("[TOOL_RESULTS]"));
  SIROCCO_ASSIGN_OR_RETURN(id.end_tool_results, special("[/TOOL_RESULTS]"));
  SIROCCO_ASSIGN_OR_RETURN(id.tool_calls, special("[TOOL_CALLS]"));
  // The reference's v2+ tokenizer also requires the FIM markers.
  SIROCCO_RETURN_IF_ERROR(special("[PREFIX]").status());
  SIROCCO_RETURN_IF_ERROR(special("[SUFFIX]").status());
  if (AtLeast(v, TokenizerVersion::kV7)) {
    SIROCCO_ASSIGN_OR_RETURN(id.system, special("[SYSTEM_PROMPT]"));
    SIROCCO_ASSIGN_OR_RETURN(id.end_system, special("[/SYSTEM_PROMPT]"));
    SIROCCO_ASSIGN_OR_RETURN(id.tool_content, special("[TOOL_CONTENT]"));
  }
  if (AtLeast(v, TokenizerVersion::kV11)) {
    SIROCCO_ASSIGN_OR_RETURN(id.args, special("[ARGS]"));
    SIROCCO_ASSIGN_OR_RETURN(id.call_id, special("[CALL_ID]"));
  }
  if (AtLeast(v, TokenizerVersion::kV13)) {
    absl::StatusOr<std::int32_t> think = tokenizer.SpecialTokenId("[THINK]");
    absl::StatusOr<std::int32_t> end_think = tokenizer.SpecialTokenId("[/THINK]");
    if (think.ok() && end_think.ok()) {
      id.think = *think;
      id.end_think = *end_think;
    }
  }
  if (AtLeast(v, TokenizerVersion::kV15)) {
    SIROCCO_ASSIGN_OR_RETURN(id.settings, special("[MODEL_SETTINGS]"));
    SIROCCO_ASSIGN_OR_RETURN(id.end_settings, special("[/MODEL_SETTINGS]"));
  }
  if (impl->image.has_value()) {
    SIROCCO_ASSIGN_OR_RETURN(id.img, special("[IMG]"));
    SIROCCO_ASSIGN_OR_RETURN(id.img_break, special("[IMG_BREAK]"));
    SIROCCO_ASSIGN_OR_RETURN(id.img_end, special("[IMG_END]"));
  }
  if (const std::optional<std::string>& json = tokenizer.model_settings_builder_json()) {
    SIROCCO_ASSIGN_OR_RETURN(impl->builder, ParseModelSettingsBuilder(*json));
  }
  return std::unique_ptr<InstructFormat>(new InstructFormat(std::move(impl)));
}

absl::StatusOr<RenderedChat> InstructFormat::Render(const ChatRequest& request) const { return impl_->Render(request); }

absl::StatusOr<RenderedChat> RenderChat(const Tekkenizer& tokenizer, const ChatRequest& request) {
  SIROCCO_ASSIGN_OR_RETURN(std::unique_ptr<InstructFormat> format, InstructFormat::Create(tokenizer));
  return format->Render(request);
}

absl::StatusOr<RenderedChat> TokenizeChat(const Tekkenizer& tokenizer, std::string_view request_json) {
  SIROCCO_ASSIGN_OR_RETURN(std::unique_ptr<InstructFormat> format, InstructFormat::Create(tokenizer));
  SIROCCO_ASSIGN_OR_RETURN(const ChatRequest request, ParseChatRequest(request_json));
  return format->Render(request);
}

}  // namespace sirocco::text
