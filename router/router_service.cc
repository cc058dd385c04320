#include "router/router_service.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <utility>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/hash/hash.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/mix64.h"
#include "engine/structured/grammar_cache.h"
#include "engine/text/chat_request.h"
#include "engine/text/detokenizer.h"
#include "engine/text/instruct_json.h"
#include "engine/text/instruct_schema.h"
#include "services/server.h"
#include "services/status_mapping.h"

namespace sirocco::router {
namespace {

namespace v1 = ::sirocco::v1;
namespace wk = ::sirocco::worker::v1;
using services::InvalidFieldError;

constexpr std::int64_t kAssumedBlockSize = 16;
// How long a client told "no KV blocks free now" should wait before retrying.
constexpr absl::Duration kBlocksPushback = absl::Seconds(1);

// RESOURCE_EXHAUSTED for want of KV blocks (no decode worker has enough now,
// or Reserve refused) passes on to the client with a retry pushback.
absl::Status WithPushback(absl::Status status) {
  if (status.code() != absl::StatusCode::kResourceExhausted || services::RetryPushback(status).has_value()) {
    return status;
  }
  return services::OverloadedError(std::string(status.message()), kBlocksPushback);
}

// Decode workers a request may move to after losing its own mid-stream.
constexpr int kMaxMigrations = 2;

std::int64_t NowMicros() { return absl::ToUnixMicros(absl::Now()); }

WorkerLoad FromProto(const wk::Load& load) {
  WorkerLoad w;
  w.free_blocks = static_cast<std::int64_t>(load.free_blocks());
  w.total_blocks = static_cast<std::int64_t>(load.total_blocks());
  w.block_size = load.block_size_tokens() > 0 ? load.block_size_tokens() : kAssumedBlockSize;
  w.running = load.running();
  w.waiting = load.waiting();
  w.prefill_tokens_queued = static_cast<std::int64_t>(load.prefill_tokens_queued());
  w.draining = load.draining();
  w.model_fingerprint = load.model_fingerprint();
  w.context_length = load.context_length();
  w.prefix_caching = load.prefix_caching();
  w.supports_images = load.supports_images();
  w.cached_blocks = static_cast<std::int64_t>(load.cached_blocks());
  return w;
}

bool Finite(float f) { return std::isfinite(f); }

bool ValidToolName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
  }
  return true;
}

// The resolved, validated parameters of one Chat or Generate.
struct Job {
  std::string request_id;
  std::string internal_id;
  std::vector<std::int32_t> prompt;
  // The prompt's images, in placeholder order, as the workers take them, and
  // each one's field in the request (a worker's "images[i]" error names it).
  std::vector<wk::ImageInput> images;
  std::vector<std::string> image_fields;
  // The ids the router's prefix estimates key the prompt by: `prompt` with
  // each image placeholder replaced by a negative id from the image's bytes
  // and its place in the image (a block's KV depends on the image, not the
  // placeholder). Empty: `prompt`.
  std::vector<std::int32_t> cache_key;
  wk::SamplingParams sampling;
  wk::StopParams stop;
  std::vector<std::string> stop_strings;
  bool include_stop_string = false;
  bool chat = true;
  bool keep_special = false;
  v1::OutputOptions output;
};

absl::Status ValidateSampling(const v1::SamplingParams& s, std::int64_t vocab) {
  if (s.has_temperature() && (!Finite(s.temperature()) || s.temperature() < 0 || s.temperature() > 2))
    return InvalidFieldError("sampling.temperature", absl::StrCat(s.temperature(), " is outside [0, 2]"));
  if (s.has_top_p() && (!Finite(s.top_p()) || s.top_p() <= 0 || s.top_p() > 1))
    return InvalidFieldError("sampling.top_p", absl::StrCat(s.top_p(), " is outside (0, 1]"));
  if (s.has_top_k() && (s.top_k() < 0 || s.top_k() > vocab))
    return InvalidFieldError("sampling.top_k", absl::StrCat(s.top_k(), " is outside [0, ", vocab, "]"));
  if (s.has_min_p() && (!Finite(s.min_p()) || s.min_p() < 0 || s.min_p() > 1))
    return InvalidFieldError("sampling.min_p", absl::StrCat(s.min_p(), " is outside [0, 1]"));
  if (s.has_presence_penalty() &&
      (!Finite(s.presence_penalty()) || s.presence_penalty() < -2 || s.presence_penalty() > 2))
    return InvalidFieldError("sampling.presence_penalty", absl::StrCat(s.presence_penalty(), " is outside [-2, 2]"));
  if (s.has_frequency_penalty() &&
      (!Finite(s.frequency_penalty()) || s.frequency_penalty() < -2 || s.frequency_penalty() > 2))
    return InvalidFieldError("sampling.frequency_penalty", absl::StrCat(s.frequency_penalty(), " is outside [-2, 2]"));
  if (s.has_repetition_penalty() &&
      (!Finite(s.repetition_penalty()) || s.repetition_penalty() <= 0 || s.repetition_penalty() > 2))
    return InvalidFieldError("sampling.repetition_penalty", absl::StrCat(s.repetition_penalty(), " is outside (0, 2]"));
  return absl::OkStatus();
}

absl::Status ValidateRequestId(const std::string& id, const v1::Limits& limits) {
  if (static_cast<std::int64_t>(id.size()) > limits.max_request_id_bytes())
    return InvalidFieldError(
        "request_id", absl::StrCat("longer than limits.max_request_id_bytes (", limits.max_request_id_bytes(), ")"));
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return InvalidFieldError("request_id", "must be printable ASCII (0x21-0x7e)");
  }
  return absl::OkStatus();
}

// Job::cache_key for a prompt and its images (placeholder grids checked by
// the render).
std::vector<std::int32_t> ImageCacheKey(const std::vector<std::int32_t>& prompt,
                                        const std::vector<wk::ImageInput>& images) {
  std::vector<std::int32_t> key = prompt;
  for (const wk::ImageInput& im : images) {
    const std::uint64_t hash = absl::HashOf(absl::string_view(im.data()));
    std::uint64_t index = 0;
    for (std::uint32_t r = 0; r < im.grid_height(); ++r) {
      for (std::uint32_t c = 0; c < im.grid_width(); ++c) {
        const std::size_t p = im.token_offset() + r * (im.grid_width() + 1) + c;
        if (p < key.size()) key[p] = engine::ImagePlaceholderKey(hash, index++);
      }
    }
  }
  return key;
}

// Everything but the prompt: sampling, stop and output options.
absl::StatusOr<Job> ResolveJob(const v1::SamplingParams& sampling, const v1::StopParams& stop,
                               const v1::OutputOptions& output, std::vector<std::int32_t> prompt,
                               const v1::Limits& limits, std::int32_t context_length, std::int64_t vocab,
                               const std::string& prompt_field) {
  Job job;
  if (absl::Status s = ValidateSampling(sampling, vocab); !s.ok()) return s;
  if (prompt.empty()) return InvalidFieldError(prompt_field, "the prompt is empty");
  const auto n = static_cast<std::int64_t>(prompt.size());
  if (n > limits.max_prompt_tokens())
    return InvalidFieldError(prompt_field,
                             absl::StrCat("the prompt has ", n, " tokens, more than limits.max_prompt_tokens (",
                                          limits.max_prompt_tokens(), ")"));
  for (std::size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= vocab)
      return InvalidFieldError(absl::StrCat(prompt_field, "[", i, "]"),
                               absl::StrCat(prompt[i], " is outside [0, ", vocab, ")"));
  }
  std::int64_t max_tokens = std::min<std::int64_t>(limits.max_output_tokens(), context_length - n);
  if (stop.has_max_tokens()) {
    if (stop.max_tokens() < 1 || stop.max_tokens() > limits.max_output_tokens())
      return InvalidFieldError("stop.max_tokens",
                               absl::StrCat(stop.max_tokens(), " is outside [1, ", limits.max_output_tokens(), "]"));
    if (n + stop.max_tokens() > context_length)
      return InvalidFieldError("stop.max_tokens",
                               absl::StrCat("prompt tokens (", n, ") + max_tokens (", stop.max_tokens(),
                                            ") exceed the context length (", context_length, ")"));
    max_tokens = stop.max_tokens();
  }
  if (max_tokens < 1) return InvalidFieldError(prompt_field, "the prompt leaves no room for output");
  if (stop.stop_size() > limits.max_stop_strings())
    return InvalidFieldError("stop.stop",
                             absl::StrCat("more than limits.max_stop_strings (", limits.max_stop_strings(), ")"));
  for (int i = 0; i < stop.stop_size(); ++i) {
    const auto& s = stop.stop(i);
    if (s.empty() || static_cast<std::int64_t>(s.size()) > limits.max_stop_string_bytes())
      return InvalidFieldError(absl::StrCat("stop.stop[", i, "]"),
                               absl::StrCat("must be 1 to ", limits.max_stop_string_bytes(), " bytes"));
    job.stop_strings.push_back(s);
  }
  if (stop.stop_token_ids_size() > limits.max_stop_token_ids())
    return InvalidFieldError("stop.stop_token_ids",
                             absl::StrCat("more than limits.max_stop_token_ids (", limits.max_stop_token_ids(), ")"));
  for (int i = 0; i < stop.stop_token_ids_size(); ++i) {
    if (stop.stop_token_ids(i) < 0 || stop.stop_token_ids(i) >= vocab)
      return InvalidFieldError(absl::StrCat("stop.stop_token_ids[", i, "]"),
                               absl::StrCat(stop.stop_token_ids(i), " is outside [0, ", vocab, ")"));
    job.stop.add_stop_token_ids(stop.stop_token_ids(i));
  }
  if (output.top_logprobs() < 0 || output.top_logprobs() > limits.max_top_logprobs())
    return InvalidFieldError("output.top_logprobs",
                             absl::StrCat(output.top_logprobs(), " is outside [0, ", limits.max_top_logprobs(), "]"));
  if (output.top_logprobs() > 0 && !output.logprobs())
    return InvalidFieldError("output.top_logprobs", "requires output.logprobs");

  job.prompt = std::move(prompt);
  job.stop.set_max_tokens(static_cast<std::uint32_t>(max_tokens));
  job.stop.set_ignore_eos(stop.ignore_eos());
  job.include_stop_string = stop.include_stop_string();
  job.output = output;
  auto& w = job.sampling;
  w.set_temperature(sampling.has_temperature() ? sampling.temperature() : 1.0f);
  w.set_top_p(sampling.has_top_p() ? sampling.top_p() : 1.0f);
  w.set_top_k(sampling.has_top_k() ? sampling.top_k() : 0);
  w.set_min_p(sampling.has_min_p() ? sampling.min_p() : 0.0f);
  w.set_presence_penalty(sampling.presence_penalty());
  w.set_frequency_penalty(sampling.frequency_penalty());
  w.set_repetition_penalty(sampling.has_repetition_penalty() ? sampling.repetition_penalty() : 1.0f);
  if (sampling.has_seed()) {
    w.set_seed(sampling.seed());
  } else {
    thread_local std::mt19937_64 rng(std::random_device{}());
    w.set_seed(rng());
  }
  w.set_logprobs(output.logprobs() ? output.top_logprobs() : -1);
  return job;
}

constexpr std::string_view kImageMimeTypes[] = {"image/png", "image/jpeg", "image/webp"};

absl::Status ValidateImage(const v1::Image& image, const v1::Limits& limits, const std::string& path) {
  if (image.data().empty()) return InvalidFieldError(path + ".data", "is empty");
  if (static_cast<std::int64_t>(image.data().size()) > limits.max_image_bytes())
    return InvalidFieldError(path + ".data", absl::StrCat(image.data().size(), " bytes exceed limits.max_image_bytes (",
                                                          limits.max_image_bytes(), ")"));
  if (std::find(std::begin(kImageMimeTypes), std::end(kImageMimeTypes), image.mime_type()) ==
      std::end(kImageMimeTypes)) {
    return InvalidFieldError(path + ".mime_type",
                             absl::StrCat("\"", image.mime_type(), "\" is not one of ModelInfo.image_mime_types"));
  }
  // The file's signature must be its type's (the workers decode by content).
  const std::string_view d = image.data();
  const bool matches = image.mime_type() == "image/png" ? d.starts_with("\x89PNG\r\n\x1a\n")
                       : image.mime_type() == "image/jpeg"
                           ? d.starts_with("\xff\xd8\xff")
                           : d.size() >= 12 && d.starts_with("RIFF") && d.substr(8, 4) == "WEBP";
  if (!matches) return InvalidFieldError(path + ".data", absl::StrCat("is not a ", image.mime_type(), " file"));
  return absl::OkStatus();
}

// A response format's fields, checked; nullopt for free text. The schema
// is parsed and checked as draft 7, as mistral-common does.
absl::StatusOr<std::optional<text::ResponseFormat>> CheckResponseFormat(const v1::ResponseFormat& format,
                                                                        const v1::Limits& limits) {
  text::ResponseFormat out;
  switch (format.type()) {
    case v1::ResponseFormat::TYPE_UNSPECIFIED:
    case v1::ResponseFormat::TYPE_TEXT:
      if (format.has_json_schema())
        return InvalidFieldError("response_format.json_schema", "is set but the type is not TYPE_JSON_SCHEMA");
      return std::nullopt;
    case v1::ResponseFormat::TYPE_JSON_OBJECT:
      if (format.has_json_schema())
        return InvalidFieldError("response_format.json_schema", "is set but the type is not TYPE_JSON_SCHEMA");
      out.type = text::ResponseFormatType::kJsonObject;
      return out;
    case v1::ResponseFormat::TYPE_JSON_SCHEMA:
      break;
    default:
      return InvalidFieldError("response_format.type", "unknown type");
  }
  if (!format.has_json_schema())
    return InvalidFieldError("response_format.json_schema", "is required with TYPE_JSON_SCHEMA");
  const v1::JsonSchema& js = format.json_schema();
  if (js.name().empty() || js.name().size() > 256)
    return InvalidFieldError("response_format.json_schema.name", "must be 1 to 256 bytes");
  if (static_cast<std::int64_t>(js.schema().size()) > limits.max_response_schema_bytes())
    return InvalidFieldError(
        "response_format.json_schema.schema",
        absl::StrCat("longer than limits.max_response_schema_bytes (", limits.max_response_schema_bytes(), ")"));
  if (js.schema().empty()) return InvalidFieldError("response_format.json_schema.schema", "is required");
  absl::StatusOr<text::PyValue> schema = text::ParsePyJson(js.schema());
  if (!schema.ok())
    return InvalidFieldError("response_format.json_schema.schema", std::string(schema.status().message()));
  if (!schema->is_object()) return InvalidFieldError("response_format.json_schema.schema", "must be a JSON object");
  if (std::optional<std::string> error = text::Draft7SchemaError(*schema))
    return InvalidFieldError("response_format.json_schema.schema", absl::StrCat("not a valid JSON schema: ", *error));
  out.type = text::ResponseFormatType::kJsonSchema;
  text::JsonSchemaFormat& f = out.json_schema.emplace();
  f.name = js.name();
  if (!js.description().empty()) f.description = js.description();
  f.schema = *std::move(schema);
  f.strict = js.strict();
  return out;
}

// What the workers constrain the output to, for a checked response format;
// nullopt for free text. A strict schema is compiled here (and cached) so
// that an unsupported one fails before any work starts.
absl::StatusOr<std::optional<wk::ResponseFormat>> WorkerResponseFormat(const v1::ResponseFormat& format,
                                                                       const v1::StopParams& stop, bool allow_think,
                                                                       engine::structured::GrammarCache& grammars) {
  if (format.type() != v1::ResponseFormat::TYPE_JSON_OBJECT && format.type() != v1::ResponseFormat::TYPE_JSON_SCHEMA)
    return std::nullopt;
  if (stop.ignore_eos())
    return InvalidFieldError("stop.ignore_eos", "cannot be combined with a JSON response_format, which ends at EOS");
  wk::ResponseFormat out;
  out.set_allow_think(allow_think);
  if (format.type() == v1::ResponseFormat::TYPE_JSON_SCHEMA && format.json_schema().strict()) {
    absl::StatusOr<std::shared_ptr<const engine::structured::JsonGrammar>> grammar =
        grammars.Get(format.json_schema().schema());
    if (!grammar.ok())
      return InvalidFieldError("response_format.json_schema.schema", std::string(grammar.status().message()));
    out.set_json_schema(format.json_schema().schema());
  }
  return out;
}

// The tool calls a chat must make (tool_choice MODE_ANY or MODE_NAMED), as
// mistral-common's grammar has them: each tool's arguments follow its schema
// when the tool is strict, else any JSON object; only the named tool with
// MODE_NAMED. nullopt when the choice forces nothing. Strict schemas are
// compiled here (cached) so that an unsupported one fails before any work.
absl::StatusOr<std::optional<wk::ResponseFormat>> ForcedToolCalls(const v1::ChatRequest& request, bool allow_think,
                                                                  engine::structured::GrammarCache& grammars) {
  const v1::ToolChoice::Mode mode = request.tool_choice().mode();
  if (mode != v1::ToolChoice::MODE_ANY && mode != v1::ToolChoice::MODE_NAMED) return std::nullopt;
  wk::ResponseFormat out;
  out.set_allow_think(allow_think);
  out.set_parallel_tool_calls(!request.has_parallel_tool_calls() || request.parallel_tool_calls());
  for (int i = 0; i < request.tools_size(); ++i) {
    const v1::Tool& tool = request.tools(i);
    if (mode == v1::ToolChoice::MODE_NAMED && tool.name() != request.tool_choice().name()) continue;
    wk::ToolFormat* f = out.add_tools();
    f->set_name(tool.name());
    if (!tool.strict()) {
      f->set_args_json_schema(R"({"type": "object"})");
      continue;
    }
    const std::string& schema = tool.parameters_json_schema();
    const bool empty = schema.empty() || absl::StripAsciiWhitespace(schema) == "{}";
    f->set_args_json_schema(empty ? R"({"type": "object", "properties": {}, "additionalProperties": false})" : schema);
    absl::StatusOr<std::shared_ptr<const engine::structured::JsonGrammar>> grammar =
        grammars.Get(f->args_json_schema());
    if (!grammar.ok())
      return InvalidFieldError(absl::StrCat("tools[", i, "].parameters_json_schema"),
                               std::string(grammar.status().message()));
  }
  return out;
}

// `num_images` counts the image parts converted.
absl::StatusOr<text::ChatRequest> ToTextRequest(const v1::ChatRequest& request, const v1::Limits& limits,
                                                int* num_images) {
  text::ChatRequest out;
  if (request.messages_size() < 1 || request.messages_size() > limits.max_messages())
    return InvalidFieldError(
        "messages", absl::StrCat("must have 1 to ", limits.max_messages(), " messages, got ", request.messages_size()));
  int total_parts = 0;
  for (int i = 0; i < request.messages_size(); ++i) {
    const v1::Message& m = request.messages(i);
    const std::string path = absl::StrCat("messages[", i, "]");
    text::ChatMessage tm;
    switch (m.role()) {
      case v1::ROLE_SYSTEM:
        tm.role = text::Role::kSystem;
        break;
      case v1::ROLE_USER:
        tm.role = text::Role::kUser;
        break;
      case v1::ROLE_ASSISTANT:
        tm.role = text::Role::kAssistant;
        break;
      case v1::ROLE_TOOL:
        tm.role = text::Role::kTool;
        break;
      default:
        return InvalidFieldError(path + ".role", "must be set");
    }
    if (m.content_size() > limits.max_content_parts())
      return InvalidFieldError(path + ".content",
                               absl::StrCat("more than limits.max_content_parts (", limits.max_content_parts(), ")"));
    total_parts += m.content_size();
    if (total_parts > limits.max_total_content_parts())
      return InvalidFieldError(path + ".content", absl::StrCat("more than limits.max_total_content_parts (",
                                                               limits.max_total_content_parts(), ") in the request"));
    std::vector<text::ContentChunk> chunks;
    for (int j = 0; j < m.content_size(); ++j) {
      const v1::ContentPart& part = m.content(j);
      const std::string ppath = absl::StrCat(path, ".content[", j, "]");
      text::ContentChunk chunk;
      switch (part.part_case()) {
        case v1::ContentPart::kText:
          chunk.type = text::ChunkType::kText;
          chunk.text = part.text();
          break;
        case v1::ContentPart::kReasoning:
          if (m.role() != v1::ROLE_ASSISTANT)
            return InvalidFieldError(ppath + ".reasoning", "only assistant messages carry reasoning");
          chunk.type = text::ChunkType::kThinking;
          chunk.text = part.reasoning();
          chunk.closed = true;
          break;
        case v1::ContentPart::kImage: {
          if (limits.max_images() <= 0)
            return InvalidFieldError(ppath + ".image", "images are not supported by this deployment");
          if (m.role() != v1::ROLE_USER) return InvalidFieldError(ppath + ".image", "only user messages carry images");
          if (absl::Status s = ValidateImage(part.image(), limits, ppath + ".image"); !s.ok()) return s;
          if (++*num_images > limits.max_images())
            return InvalidFieldError(ppath + ".image", absl::StrCat("more than limits.max_images (",
                                                                    limits.max_images(), ") in the request"));
          chunk.type = text::ChunkType::kImage;
          chunk.data = absl::Base64Escape(part.image().data());
          break;
        }
        default:
          return InvalidFieldError(ppath, "exactly one of text, image, reasoning must be set");
      }
      chunks.push_back(std::move(chunk));
    }
    if (chunks.size() == 1 && chunks[0].type == text::ChunkType::kText) {
      tm.content = text::Content::Text(chunks[0].text);
    } else if (!chunks.empty()) {
      tm.content = text::Content::Chunks(std::move(chunks));
    } else if (m.role() != v1::ROLE_ASSISTANT) {
      tm.content = text::Content::Text("");
    }
    if (m.tool_calls_size() > 0) {
      if (m.role() != v1::ROLE_ASSISTANT)
        return InvalidFieldError(path + ".tool_calls", "only assistant messages carry tool calls");
      std::vector<text::ToolCall> calls;
      for (int k = 0; k < m.tool_calls_size(); ++k) {
        const auto& c = m.tool_calls(k);
        const std::string cpath = absl::StrCat(path, ".tool_calls[", k, "]");
        if (c.id().empty() || c.id().size() > 64) return InvalidFieldError(cpath + ".id", "must be 1 to 64 bytes");
        if (!ValidToolName(c.name()))
          return InvalidFieldError(cpath + ".name", "must be 1 to 64 characters from [a-zA-Z0-9_-]");
        text::ToolCall tc;
        tc.id = c.id();
        tc.function.name = c.name();
        tc.function.arguments = c.arguments().empty() ? "{}" : c.arguments();
        calls.push_back(std::move(tc));
      }
      tm.tool_calls = std::move(calls);
    }
    if (m.role() == v1::ROLE_TOOL) {
      if (m.tool_call_id().empty() || m.tool_call_id().size() > 64)
        return InvalidFieldError(path + ".tool_call_id", "must be 1 to 64 bytes");
      tm.tool_call_id = m.tool_call_id();
    } else if (!m.tool_call_id().empty()) {
      return InvalidFieldError(path + ".tool_call_id", "only tool messages carry a tool_call_id");
    }
    if (m.prefix()) {
      if (m.role() != v1::ROLE_ASSISTANT || i + 1 != request.messages_size())
        return InvalidFieldError(path + ".prefix", "only the last message, an assistant one, may be a prefix");
      tm.prefix = true;
    }
    out.messages.push_back(std::move(tm));
  }
  if (request.tools_size() > limits.max_tools())
    return InvalidFieldError("tools", absl::StrCat("more than limits.max_tools (", limits.max_tools(), ")"));
  if (request.tools_size() > 0) {
    std::vector<text::Tool> tools;
    std::set<std::string> names;
    for (int i = 0; i < request.tools_size(); ++i) {
      const auto& t = request.tools(i);
      const std::string path = absl::StrCat("tools[", i, "]");
      if (!ValidToolName(t.name()))
        return InvalidFieldError(path + ".name", "must be 1 to 64 characters from [a-zA-Z0-9_-]");
      if (!names.insert(t.name()).second) return InvalidFieldError(path + ".name", "duplicate tool name");
      if (static_cast<std::int64_t>(t.parameters_json_schema().size()) > limits.max_tool_schema_bytes())
        return InvalidFieldError(
            path + ".parameters_json_schema",
            absl::StrCat("longer than limits.max_tool_schema_bytes (", limits.max_tool_schema_bytes(), ")"));
      auto schema = text::ParsePyJson(t.parameters_json_schema().empty() ? "{}" : t.parameters_json_schema());
      if (!schema.ok())
        return InvalidFieldError(path + ".parameters_json_schema", std::string(schema.status().message()));
      text::Tool tool;
      tool.function.name = t.name();
      tool.function.description = t.description();
      tool.function.parameters = *std::move(schema);
      tool.function.strict = t.strict();
      tools.push_back(std::move(tool));
    }
    out.tools = std::move(tools);
  }
  switch (request.tool_choice().mode()) {
    case v1::ToolChoice::MODE_UNSPECIFIED:
      out.tool_choice.mode = request.tools_size() > 0 ? text::ToolChoiceMode::kAuto : text::ToolChoiceMode::kNone;
      break;
    case v1::ToolChoice::MODE_AUTO:
      out.tool_choice.mode = text::ToolChoiceMode::kAuto;
      break;
    case v1::ToolChoice::MODE_NONE:
      out.tool_choice.mode = text::ToolChoiceMode::kNone;
      break;
    case v1::ToolChoice::MODE_ANY:
      out.tool_choice.mode = text::ToolChoiceMode::kAny;
      break;
    case v1::ToolChoice::MODE_NAMED:
      if (std::none_of(request.tools().begin(), request.tools().end(),
                       [&](const v1::Tool& t) { return t.name() == request.tool_choice().name(); }))
        return InvalidFieldError("tool_choice.name", "must name one of tools");
      out.tool_choice.mode = text::ToolChoiceMode::kNamed;
      out.tool_choice.function_name = request.tool_choice().name();
      break;
    default:
      return InvalidFieldError("tool_choice.mode", "unknown mode");
  }
  if (request.tool_choice().mode() != v1::ToolChoice::MODE_UNSPECIFIED &&
      request.tool_choice().mode() != v1::ToolChoice::MODE_NONE && request.tools_size() == 0)
    return InvalidFieldError("tool_choice.mode", "requires a non-empty tools");
  out.parallel_tool_calls = !request.has_parallel_tool_calls() || request.parallel_tool_calls();
  absl::StatusOr<std::optional<text::ResponseFormat>> format = CheckResponseFormat(request.response_format(), limits);
  if (!format.ok()) return format.status();
  if (format->has_value()) {
    if (out.tool_choice.mode != text::ToolChoiceMode::kNone)
      return InvalidFieldError("response_format",
                               "a JSON answer cannot be combined with tool calls: set tool_choice to MODE_NONE");
    out.response_format = **std::move(format);
  }
  return out;
}

// One output step, before it becomes a ChatDelta or a GenerateDelta.
struct Piece {
  std::string text;
  std::string reasoning;
  std::vector<v1::ToolCallDelta> tool_calls;
  std::vector<std::int32_t> token_ids;
  std::vector<v1::TokenLogprob> logprobs;
  bool empty() const {
    return text.empty() && reasoning.empty() && tool_calls.empty() && token_ids.empty() && logprobs.empty();
  }
};

void FillDelta(v1::ChatResponse* r, Piece p) {
  auto* d = r->mutable_delta();
  d->set_text(std::move(p.text));
  d->set_reasoning(std::move(p.reasoning));
  for (auto& t : p.tool_calls) *d->add_tool_calls() = std::move(t);
  for (int id : p.token_ids) d->add_token_ids(id);
  for (auto& l : p.logprobs) *d->add_logprobs() = std::move(l);
}
void FillDelta(v1::GenerateResponse* r, Piece p) {
  auto* d = r->mutable_delta();
  d->set_text(std::move(p.text));
  for (int id : p.token_ids) d->add_token_ids(id);
  for (auto& l : p.logprobs) *d->add_logprobs() = std::move(l);
}

}  // namespace

struct RouterService::Shared {
  RouterOptions options;
  v1::Limits limits;
  const text::Tekkenizer* tokenizer = nullptr;
  std::unique_ptr<text::InstructFormat> format;
  text::OutputSyntax syntax;
  WorkerDirectory* directory = nullptr;
  std::shared_ptr<services::CallGate> gate;
  // [IMG], when requests may carry images (RouterOptions::images and a
  // tokenizer with an image section); else -1.
  std::int32_t image_token_id = -1;
  // A chat's JSON answer may follow a [THINK] section (v15 tokenizers with
  // think tokens, as mistral-common's grammar has it).
  bool think_before_json = false;
  // Forced tool calls are constrained (tekken v11+, whose calls are
  // [TOOL_CALLS] name [ARGS] arguments); before them a think section may
  // come with v13+ tokenizers that have think tokens.
  bool constrains_tool_calls = false;
  bool think_before_calls = false;
  engine::structured::GrammarCache grammars;
  std::atomic<std::uint64_t> next_id{0};
  // Requests whose reactor still exists (it may outlive its server stream
  // while worker calls wind down); ~RouterService waits for zero.
  std::atomic<int> live_calls{0};
  // Cancel calls not yet done (SendCancel: no reactor waits for them);
  // ~RouterService waits for zero too.
  std::atomic<int> cancels_in_flight{0};
};

namespace {

// The context length requests are checked against: the router's own, lowered
// to the smallest one the healthy workers' models hold, so that a request
// without max_tokens gets a default its workers accept.
std::int32_t EffectiveContextLength(const RouterService::Shared& shared) {
  const std::int64_t workers = shared.directory->WorkerContextLength();
  if (workers <= 0) return shared.options.context_length;
  return static_cast<std::int32_t>(std::min<std::int64_t>(shared.options.context_length, workers));
}

// Fire-and-forget Cancel on a worker, so that it frees what the request holds
// even when the stream was already torn down. Counted in cancels_in_flight
// until its callback is done: its context shares the worker's channel, and
// were the directory (whose stubs own the channels) gone first, the callback
// would drop the channel's last reference on a gRPC callback thread, tearing
// down the completion queue that very thread serves (gRPC aborts on a
// refcount assertion).
void SendCancel(const std::shared_ptr<RouterService::Shared>& shared, const std::shared_ptr<wk::Worker::Stub>& stub,
                const std::string& request_id) {
  if (!stub) return;
  struct State {
    std::shared_ptr<RouterService::Shared> shared;
    grpc::ClientContext context;
    wk::CancelRequest request;
    wk::CancelResponse response;
  };
  auto* state = new State;
  state->shared = shared;
  state->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  services::AttachWorkerToken(state->context, shared->directory->worker_token());
  state->request.set_request_id(request_id);
  shared->cancels_in_flight.fetch_add(1);
  stub->async()->Cancel(&state->context, &state->request, &state->response, [state](const grpc::Status&) {
    std::shared_ptr<RouterService::Shared> keep = std::move(state->shared);
    delete state;  // the context, and with it its reference to the channel
    keep->cancels_in_flight.fetch_sub(1);
  });
}

// Drives one Chat or Generate through the workers. Owned by itself: deleted
// once the server stream is done and no worker call is outstanding.
template <class Response>
class StreamCall final : public grpc::ServerWriteReactor<Response> {
 public:
  StreamCall(std::shared_ptr<RouterService::Shared> shared, grpc::CallbackServerContext* context)
      : shared_(std::move(shared)), server_context_(context), received_(absl::Now()) {
    shared_->live_calls.fetch_add(1);
  }

  // Called once from the handler: fails the call, or starts the workers.
  void Begin(absl::StatusOr<Job> job) {
    std::lock_guard lock(mu_);
    if (!job.ok()) return FailLocked(job.status());
    job_ = *std::move(job);
    if (job_.request_id.empty())
      job_.request_id = absl::StrCat("req-", NowMicros(), "-", shared_->next_id.fetch_add(1));
    job_.internal_id = absl::StrCat(job_.request_id, "#", shared_->next_id.fetch_add(1));
    server_context_->AddInitialMetadata("x-sirocco-request-id", job_.request_id);
    if (job_.chat) {
      auto parser = text::OutputParser::Create(*shared_->tokenizer);
      if (!parser.ok()) return FailLocked(parser.status());
      parser_ = *std::move(parser);
    } else {
      detok_ = std::make_unique<text::IncrementalDetokenizer>(
          *shared_->tokenizer, job_.keep_special ? text::SpecialTokenPolicy::kKeep : text::SpecialTokenPolicy::kIgnore);
    }
    for (const auto& s : job_.stop_strings) max_stop_len_ = std::max(max_stop_len_, s.size());
    prompt_tokens_ = static_cast<std::int64_t>(job_.prompt.size());
    Admission admission = shared_->directory->TryAdmit(prompt_tokens_);
    if (!admission.admitted)
      return FailLocked(services::OverloadedError("the router is at capacity", admission.retry_after));
    admitted_ = true;
    if (auto* m = shared_->options.metrics) m->num_requests_running->Increment();
    blocks_ = (prompt_tokens_ + kAssumedBlockSize - 1) / kAssumedBlockSize + 1;
    auto decode = shared_->directory->PickDecode(blocks_);
    if (!decode.ok()) return FailLocked(WithPushback(decode.status()));
    decode_id_ = decode->id;
    decode_picked_ = true;
    decode_stub_ = shared_->directory->Stub(decode_id_);
    decode_fingerprint_ = decode->load.model_fingerprint;
    // Colocated, one Decode call computes the prompt and streams every
    // token, the first included (a Prefill first would compute it twice).
    // So does a decode worker that likely holds all but a short tail of the
    // prompt (an earlier turn it served): prefilling the tail there costs
    // less than a remote prefill plus its transfer.
    colocated_ = decode->role == WorkerRole::kBoth;
    std::int64_t cached = 0;
    if (!colocated_) cached = shared_->directory->CachedOnDecode(decode_id_, CacheKeyPrompt());
    if (colocated_ || (cached > 0 && prompt_tokens_ - cached <= shared_->options.local_prefill_max_tokens)) {
      prefill_id_ = decode_id_;
      local_prefill_ = true;
      worker_started_ = true;
      StartDecodeLocked();
    } else {
      StartReserveLocked();
    }
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mu_);
    writing_ = false;
    if (!out_.empty()) out_.pop_front();
    if (!ok) {
      client_gone_ = true;
      CancelWorkersLocked();
      out_.clear();
      if (!finish_started_) {
        finish_started_ = true;
        this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      }
      return;
    }
    PumpLocked();
  }

  void OnCancel() override {
    std::lock_guard lock(mu_);
    client_gone_ = true;
    CancelWorkersLocked();
    if (!finish_started_ && !writing_) {
      finish_started_ = true;
      out_.clear();
      this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
    }
  }

  void OnDone() override {
    {
      std::lock_guard lock(mu_);
      server_done_ = true;
      CancelWorkersLocked();
    }
    Unref();
  }

 private:
  class DecodeReader final : public grpc::ClientReadReactor<wk::DecodeResponse> {
   public:
    explicit DecodeReader(StreamCall* call) : call_(call) {}
    void Go(wk::Worker::Stub* stub, grpc::ClientContext* context, const wk::DecodeRequest* request) {
      stub->async()->Decode(context, request, this);
      StartRead(&response_);
      StartCall();
    }
    void OnReadDone(bool ok) override {
      if (!ok) return;
      if (call_->OnDecodeMessage(response_)) {
        response_.Clear();
        StartRead(&response_);
      }
    }
    void OnDone(const grpc::Status& status) override { call_->OnDecodeDone(status); }

   private:
    StreamCall* call_;
    wk::DecodeResponse response_;
  };

  void Ref() { refs_.fetch_add(1); }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) {
      Cleanup();
      std::shared_ptr<RouterService::Shared> shared = shared_;
      delete this;
      shared->live_calls.fetch_sub(1);
    }
  }

  void Cleanup() {
    if (admitted_) {
      shared_->directory->Release(prompt_tokens_);
      if (auto* m = shared_->options.metrics) m->num_requests_running->Decrement();
    }
    if (decode_picked_) shared_->directory->DoneDecode(decode_id_, blocks_);
    if (prefill_pending_accounting_) shared_->directory->DonePrefill(prefill_id_, prompt_tokens_);
  }

  // A fresh client context carrying the client's deadline and cancellation.
  grpc::ClientContext* NewContextLocked() {
    auto context = grpc::ClientContext::FromCallbackServerContext(*server_context_);
    services::AttachWorkerToken(*context, shared_->directory->worker_token());
    contexts_.push_back(std::move(context));
    return contexts_.back().get();
  }

  bool StoppedLocked() const { return done_ || client_gone_ || server_done_; }

  void CancelWorkersLocked() {
    for (auto& c : contexts_) c->TryCancel();
    if (worker_started_ && !worker_cancel_sent_ && !finished_normally_) {
      worker_cancel_sent_ = true;
      SendCancel(shared_, decode_stub_, job_.internal_id);
      if (prefill_stub_) SendCancel(shared_, prefill_stub_, job_.internal_id);
    }
  }

  // --- Worker steps -------------------------------------------------------

  void StartReserveLocked() {
    auto* context = NewContextLocked();
    reserve_.set_request_id(job_.internal_id);
    reserve_.set_prompt_tokens(static_cast<std::uint32_t>(prompt_tokens_));
    reserve_.mutable_prompt_token_ids()->Add(job_.prompt.begin(), job_.prompt.end());
    reserve_.set_max_output_tokens(job_.stop.max_tokens());
    reserve_.set_layout_version(shared_->options.layout_version);
    // The configured fingerprint, else the decode worker's own: the prefill
    // worker still checks the KvTarget's against its model.
    reserve_.set_model_fingerprint(shared_->options.model_fingerprint.empty() ? decode_fingerprint_
                                                                              : shared_->options.model_fingerprint);
    worker_started_ = true;
    Ref();
    decode_stub_->async()->Reserve(context, &reserve_, &target_, [this, context](grpc::Status status) {
      {
        std::lock_guard lock(mu_);
        if (!StoppedLocked()) {
          if (!status.ok()) {
            FailLocked(WithPushback(services::FromGrpcStatus(status, context)));
          } else {
            StartPrefillLocked();
          }
        }
      }
      Unref();
    });
  }

  // What the prefix estimates key the prompt by (Job::cache_key).
  std::span<const std::int32_t> CacheKeyPrompt() const { return job_.cache_key.empty() ? job_.prompt : job_.cache_key; }

  // Disaggregated: Prefill on a prefill worker, its KV into the reservation.
  void StartPrefillLocked() {
    auto prefill = shared_->directory->PickPrefill(CacheKeyPrompt(), excluded_prefill_);
    if (!prefill.ok()) {
      // No healthy prefill worker (all lost, or this one's retries spent):
      // the decode worker prefills itself rather than fail the request.
      return StartLocalPrefillLocked();
    }
    prefill_id_ = *prefill;
    prefill_stub_ = shared_->directory->Stub(prefill_id_);
    prefill_pending_accounting_ = true;
    auto* context = NewContextLocked();
    prefill_request_.Clear();
    prefill_request_.set_request_id(job_.internal_id);
    prefill_request_.mutable_token_ids()->Add(job_.prompt.begin(), job_.prompt.end());
    prefill_request_.mutable_images()->Add(job_.images.begin(), job_.images.end());
    *prefill_request_.mutable_sampling() = job_.sampling;
    *prefill_request_.mutable_target() = target_;
    prefill_response_.Clear();
    prefill_sent_ = absl::Now();
    worker_started_ = true;
    Ref();
    prefill_stub_->async()->Prefill(context, &prefill_request_, &prefill_response_,
                                    [this, context](grpc::Status status) {
                                      {
                                        std::lock_guard lock(mu_);
                                        if (prefill_pending_accounting_) {
                                          shared_->directory->DonePrefill(prefill_id_, prompt_tokens_);
                                          prefill_pending_accounting_ = false;
                                        }
                                        if (!StoppedLocked())
                                          OnPrefillDoneLocked(services::FromGrpcStatus(status, context));
                                      }
                                      Unref();
                                    });
  }

  void OnPrefillDoneLocked(const absl::Status& status) {
    if (!status.ok()) {
      if (status.code() == absl::StatusCode::kUnavailable) {
        excluded_prefill_.insert(prefill_id_);
        shared_->directory->MarkUnhealthy(prefill_id_);
        return StartPrefillLocked();  // another prefill worker, same reservation
      }
      if (status.code() == absl::StatusCode::kAborted) {
        // The KV transfer failed (peer unreachable, transport error, timeout):
        // the decode worker drops the reservation and prefills itself.
        return StartLocalPrefillLocked();
      }
      return FailLocked(status);
    }
    queue_us_ = absl::ToInt64Microseconds(prefill_sent_ - received_) + prefill_response_.queue_us();
    prefill_us_ = prefill_response_.prefill_us();
    kv_transfer_us_ = prefill_response_.kv_transfer_us();
    cached_tokens_ = prefill_response_.cached_tokens();
    prefill_worker_ =
        prefill_response_.prefill_worker_id().empty() ? prefill_id_.address : prefill_response_.prefill_worker_id();
    const std::int32_t first = prefill_response_.first_token_id();
    std::vector<wk::TokenLogprob> lps;
    if (prefill_response_.has_logprob()) lps.push_back(prefill_response_.logprob());
    ConsumeLocked({first}, lps);
    if (done_) return;
    // Does the first token end it?
    const bool eos = !job_.stop.ignore_eos() && first == shared_->tokenizer->eos_id();
    const bool stop_token = std::find(job_.stop.stop_token_ids().begin(), job_.stop.stop_token_ids().end(), first) !=
                            job_.stop.stop_token_ids().end();
    if (eos || stop_token) {
      stop_token_id_ = first;
      return EndLocked(wk::DecodeFinish::REASON_STOP);
    }
    if (job_.stop.max_tokens() <= 1) return EndLocked(wk::DecodeFinish::REASON_LENGTH);
    StartDecodeLocked();
  }

  // Disaggregated fallback: Decode on the same decode worker with
  // local_prefill and no first token; its stream starts with the first token.
  void StartLocalPrefillLocked() {
    local_prefill_ = true;
    if (auto* m = shared_->options.metrics) m->local_prefill_fallbacks->Increment();
    StartDecodeLocked();
  }

  void StartDecodeLocked() {
    auto* context = NewContextLocked();
    decode_request_.Clear();
    decode_request_.set_request_id(job_.internal_id);
    decode_request_.set_reservation_id(colocated_ || migrations_ > 0 ? "" : target_.reservation_id());
    decode_request_.mutable_prompt_token_ids()->Add(job_.prompt.begin(), job_.prompt.end());
    decode_request_.mutable_output_token_ids()->Add(all_ids_.begin(), all_ids_.end());
    decode_request_.mutable_images()->Add(job_.images.begin(), job_.images.end());
    decode_request_.set_local_prefill(local_prefill_);
    *decode_request_.mutable_sampling() = job_.sampling;
    *decode_request_.mutable_stop() = job_.stop;
    decode_context_ = context;
    decode_sent_ = absl::Now();
    decode_tokens_ = 0;
    if (reader_) retired_readers_.push_back(std::move(reader_));  // a lost worker's: its callbacks have run
    reader_ = std::make_unique<DecodeReader>(this);
    Ref();
    reader_->Go(decode_stub_.get(), context, &decode_request_);
  }

  // Returns whether to keep reading.
  bool OnDecodeMessage(const wk::DecodeResponse& response) {
    std::lock_guard lock(mu_);
    if (StoppedLocked()) return false;
    if (response.token_ids_size() > 0 && migrations_ == 0) {
      // The first decode step's token: the stream's first, or its second
      // when this worker computed the prompt too (local prefill).
      const absl::Time now = absl::Now();
      const int before = decode_tokens_;
      decode_tokens_ += response.token_ids_size();
      if (!local_prefill_ && before == 0) {
        first_step_us_ = absl::ToInt64Microseconds(now - decode_sent_);
      } else if (local_prefill_ && before == 0) {
        first_token_at_ = now;
        if (decode_tokens_ >= 2) first_step_us_ = 0;  // both in one message: not measurable here
      } else if (local_prefill_ && before == 1) {
        first_step_us_ = absl::ToInt64Microseconds(now - first_token_at_);
      }
    }
    std::vector<std::int32_t> ids(response.token_ids().begin(), response.token_ids().end());
    std::vector<wk::TokenLogprob> lps(response.logprobs().begin(), response.logprobs().end());
    ConsumeLocked(ids, lps);
    if (done_) return false;
    if (response.has_finish()) {
      const auto& f = response.finish();
      if (migrations_ > 0) {
        // Timing describes the request's first path; a migration only adds.
      } else if (f.local_prefill()) {
        // The decode worker computed the prompt: its queue and prefill.
        queue_us_ = absl::ToInt64Microseconds(decode_sent_ - received_) + f.queue_us();
        prefill_us_ = f.local_prefill_us();
        cached_tokens_ = f.cached_tokens();
      } else if (f.first_step_us() > 0) {
        first_step_us_ = f.first_step_us();
      }
      if (!f.decode_worker_id().empty()) decode_worker_ = f.decode_worker_id();
      if (f.local_prefill()) prefill_worker_ = decode_worker_.empty() ? decode_id_.address : decode_worker_;
      if (f.reason() == wk::DecodeFinish::REASON_STOP) stop_token_id_ = f.stop_token_id();
      // What the decode worker's pool now holds: the prompt and every token
      // fed back (all but the last).
      if (!all_ids_.empty()) {
        std::vector<std::int32_t> held(CacheKeyPrompt().begin(), CacheKeyPrompt().end());
        held.insert(held.end(), all_ids_.begin(), all_ids_.end() - 1);
        shared_->directory->RecordDecoded(decode_id_, held);
      }
      finished_normally_ = true;
      EndLocked(f.reason());
      return false;
    }
    return true;
  }

  // The decode worker was lost mid-stream (UNAVAILABLE: the process or its
  // host went away): continue on another decode worker, which prefills the
  // prompt plus every token streamed so far and samples on from there (the
  // sampler replays the earlier draws, so a seeded request continues
  // exactly). Returns false when there is nowhere to go.
  bool MigrateLocked() {
    if (migrations_ >= kMaxMigrations) return false;
    shared_->directory->MarkUnhealthy(decode_id_);
    if (decode_picked_) shared_->directory->DoneDecode(decode_id_, blocks_);
    decode_picked_ = false;
    blocks_ =
        (prompt_tokens_ + static_cast<std::int64_t>(all_ids_.size()) + kAssumedBlockSize - 1) / kAssumedBlockSize + 1;
    auto decode = shared_->directory->PickDecode(blocks_);
    if (!decode.ok()) return false;
    decode_id_ = decode->id;
    decode_picked_ = true;
    decode_stub_ = shared_->directory->Stub(decode_id_);
    colocated_ = decode->role == WorkerRole::kBoth;
    ++migrations_;
    local_prefill_ = true;
    if (auto* m = shared_->options.metrics) m->request_migrations->Increment();
    StartDecodeLocked();
    return true;
  }

  void OnDecodeDone(const grpc::Status& status) {
    {
      std::lock_guard lock(mu_);
      if (!StoppedLocked() && status.error_code() == grpc::StatusCode::UNAVAILABLE && MigrateLocked()) {
        // continues on the new decode worker
      } else if (!StoppedLocked()) {
        if (status.ok()) {
          FailLocked(absl::InternalError("the decode stream ended without a finish"));
        } else {
          FailLocked(services::FromGrpcStatus(status, decode_context_));
        }
      }
    }
    Unref();
  }

  // --- Output ---------------------------------------------------------------

  v1::TokenLogprob ToPublic(const wk::TokenLogprob& l) const {
    v1::TokenLogprob out;
    out.set_token_id(l.token_id());
    out.set_logprob(l.logprob());
    out.set_token(std::string(shared_->tokenizer->TokenBytes(l.token_id())));
    for (const auto& t : l.top()) {
      auto* top = out.add_top();
      top->set_token_id(t.token_id());
      top->set_logprob(t.logprob());
      top->set_token(std::string(shared_->tokenizer->TokenBytes(t.token_id())));
    }
    return out;
  }

  void ConsumeLocked(const std::vector<std::int32_t>& ids, const std::vector<wk::TokenLogprob>& lps) {
    Piece piece;
    if (job_.output.return_token_ids()) piece.token_ids = ids;
    if (job_.output.logprobs())
      for (const auto& l : lps) piece.logprobs.push_back(ToPublic(l));
    for (std::int32_t id : ids) {
      all_ids_.push_back(id);
      if (job_.chat) {
        if (id == shared_->syntax.begin_think) in_think_ = true;
        if (in_think_) ++reasoning_tokens_;
        if (id == shared_->syntax.end_think) in_think_ = false;
      }
    }
    if (job_.chat) {
      for (auto& d : parser_->Push(ids)) ApplyDelta(std::move(d), &piece);
    } else {
      for (std::int32_t id : ids) {
        std::string t;
        if (detok_->PushAppend(id, &t).ok()) answer_ += t;
      }
    }
    EmitAnswerLocked(&piece, /*final=*/false);
    SendPieceLocked(std::move(piece));
    if (stop_string_matched_) EndLocked(wk::DecodeFinish::REASON_STOP);
  }

  void ApplyDelta(text::OutputDelta d, Piece* piece) {
    switch (d.kind) {
      case text::OutputDeltaKind::kAnswer:
        answer_ += d.text;
        break;
      case text::OutputDeltaKind::kReasoning:
        piece->reasoning += d.text;
        break;
      case text::OutputDeltaKind::kToolCallBegin: {
        v1::ToolCallDelta t;
        t.set_index(d.tool_index);
        t.set_id(d.tool_id);
        t.set_name(d.tool_name);
        piece->tool_calls.push_back(std::move(t));
        break;
      }
      case text::OutputDeltaKind::kToolCallArguments: {
        v1::ToolCallDelta t;
        t.set_index(d.tool_index);
        t.set_arguments(d.text);
        piece->tool_calls.push_back(std::move(t));
        break;
      }
    }
  }

  // Moves answer text that can no longer be part of a stop string into the
  // piece; on a match, ends the text there.
  void EmitAnswerLocked(Piece* piece, bool final) {
    if (stop_string_matched_) return;
    if (!job_.stop_strings.empty()) {
      const std::size_t from = emitted_ > max_stop_len_ ? emitted_ - max_stop_len_ : 0;
      std::size_t best = std::string::npos;
      const std::string* which = nullptr;
      for (const auto& s : job_.stop_strings) {
        std::size_t p = answer_.find(s, from);
        if (p != std::string::npos && p + s.size() > emitted_ && (best == std::string::npos || p < best)) {
          best = p;
          which = &s;
        }
      }
      if (which != nullptr) {
        std::size_t end = job_.include_stop_string ? best + which->size() : best;
        if (end > emitted_) piece->text += answer_.substr(emitted_, end - emitted_);
        emitted_ = std::max(emitted_, end);
        stop_string_ = *which;
        stop_string_matched_ = true;
        return;
      }
    }
    std::size_t safe = answer_.size();
    if (!final && max_stop_len_ > 0) {
      safe = answer_.size() >= max_stop_len_ - 1 ? answer_.size() - (max_stop_len_ - 1) : 0;
      while (safe > emitted_ && safe < answer_.size() && (static_cast<unsigned char>(answer_[safe]) & 0xC0) == 0x80)
        --safe;
    }
    if (safe > emitted_) {
      piece->text += answer_.substr(emitted_, safe - emitted_);
      emitted_ = safe;
    }
  }

  void SendPieceLocked(Piece piece) {
    if (piece.empty() || client_gone_) return;
    if (!sent_delta_) {
      sent_delta_ = true;
      ttft_us_ = absl::ToInt64Microseconds(absl::Now() - received_);
    }
    Response r;
    FillDelta(&r, std::move(piece));
    out_.push_back(std::move(r));
    PumpLocked();
  }

  void PumpLocked() {
    if (writing_ || finish_started_) return;
    if (client_gone_) {
      out_.clear();
      finish_started_ = true;
      this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
      return;
    }
    if (!out_.empty()) {
      writing_ = true;
      this->StartWrite(&out_.front());
      return;
    }
    if (final_queued_) {
      finish_started_ = true;
      this->Finish(finish_status_);
    }
  }

  void EndLocked(wk::DecodeFinish::Reason reason) {
    if (done_) return;
    done_ = true;
    if (!finished_normally_) CancelWorkersLocked();
    Piece piece;
    v1::FinishReason finish =
        reason == wk::DecodeFinish::REASON_LENGTH ? v1::FINISH_REASON_LENGTH : v1::FINISH_REASON_STOP;
    if (job_.chat) {
      text::ParsedOutput parsed = parser_->Finish();
      if (!stop_string_matched_) {
        for (auto& d : parsed.last_deltas) ApplyDelta(std::move(d), &piece);
        if (reason == wk::DecodeFinish::REASON_STOP && parsed.finish_hint == text::FinishHint::kToolCalls)
          finish = v1::FINISH_REASON_TOOL_CALLS;
      }
    } else if (!stop_string_matched_) {
      answer_ += detok_->Flush();
    }
    EmitAnswerLocked(&piece, /*final=*/true);
    if (stop_string_matched_) finish = v1::FINISH_REASON_STOP;
    SendPieceLocked(std::move(piece));
    Response r;
    v1::Final* f = r.mutable_final();
    f->set_finish_reason(finish);
    f->set_stop_string(stop_string_);
    if (finish == v1::FINISH_REASON_STOP && !stop_string_matched_ && stop_token_id_ >= 0)
      f->set_stop_token_id(stop_token_id_);
    FillUsageLocked(f);
    ObserveLocked(*f);
    out_.push_back(std::move(r));
    final_queued_ = true;
    PumpLocked();
  }

  void ObserveLocked(const v1::Final& f) {
    const services::ServingMetrics* m = shared_->options.metrics;
    if (m == nullptr) return;
    services::RequestFinish finish = services::RequestFinish::kStop;
    switch (f.finish_reason()) {
      case v1::FINISH_REASON_LENGTH:
        finish = services::RequestFinish::kLength;
        break;
      case v1::FINISH_REASON_TOOL_CALLS:
        finish = services::RequestFinish::kToolCalls;
        break;
      case v1::FINISH_REASON_CANCELLED:
        finish = services::RequestFinish::kCancelled;
        break;
      case v1::FINISH_REASON_ERROR:
        finish = services::RequestFinish::kError;
        break;
      default:
        break;
    }
    m->request_success_for(finish).Increment();
    m->prompt_tokens->Increment(static_cast<double>(f.usage().prompt_tokens()));
    m->generation_tokens->Increment(static_cast<double>(f.usage().completion_tokens()));
    m->request_prompt_tokens->Observe(static_cast<double>(f.usage().prompt_tokens()));
    m->request_generation_tokens->Observe(static_cast<double>(f.usage().completion_tokens()));
    if (f.timing().ttft_us() > 0) m->time_to_first_token->Observe(f.timing().ttft_us() / 1e6);
    m->e2e_request_latency->Observe(f.timing().e2e_us() / 1e6);
    if (f.usage().completion_tokens() > 1 && f.timing().e2e_us() > f.timing().ttft_us())
      m->inter_token_latency->Observe((f.timing().e2e_us() - f.timing().ttft_us()) / 1e6 /
                                      (f.usage().completion_tokens() - 1));
  }

  void FillUsageLocked(v1::Final* f) {
    f->mutable_usage()->set_prompt_tokens(static_cast<std::int32_t>(prompt_tokens_));
    f->mutable_usage()->set_completion_tokens(static_cast<std::int32_t>(all_ids_.size()));
    f->mutable_usage()->set_cached_tokens(static_cast<std::int32_t>(std::min(cached_tokens_, prompt_tokens_)));
    f->mutable_usage()->set_reasoning_tokens(static_cast<std::int32_t>(reasoning_tokens_));
    auto* t = f->mutable_timing();
    t->set_queue_us(queue_us_);
    t->set_prefill_us(prefill_us_);
    t->set_kv_transfer_us(kv_transfer_us_);
    t->set_first_decode_step_us(first_step_us_);
    t->set_ttft_us(ttft_us_);
    t->set_e2e_us(absl::ToInt64Microseconds(absl::Now() - received_));
    f->set_request_id(job_.request_id);
    f->set_seed(job_.sampling.seed());
    f->set_prefill_worker(prefill_worker_.empty() ? prefill_id_.address : prefill_worker_);
    f->set_decode_worker(decode_worker_.empty() ? decode_id_.address : decode_worker_);
  }

  // Before any delta: end the RPC with `status`. After: a Final with ERROR.
  void FailLocked(absl::Status status) {
    if (done_) return;
    // A worker names an image by its index in the worker request; the client
    // knows it by its place in the messages.
    if (status.code() == absl::StatusCode::kInvalidArgument && absl::StartsWith(status.message(), "images[")) {
      const absl::string_view msg = status.message();
      int index = -1;
      const std::size_t close = msg.find(']');
      if (close != absl::string_view::npos && absl::SimpleAtoi(msg.substr(7, close - 7), &index) && index >= 0 &&
          static_cast<std::size_t>(index) < job_.image_fields.size()) {
        status = absl::InvalidArgumentError(
            absl::StrCat(job_.image_fields[static_cast<std::size_t>(index)], msg.substr(close + 1)));
      }
    }
    done_ = true;
    CancelWorkersLocked();
    if (finish_started_) return;
    // The call itself is over (the client's deadline passed, or it cancelled):
    // the status says so, even after deltas, rather than an in-band error
    // final followed by OK, which a client could read as a normal end.
    const bool call_over = status.code() == absl::StatusCode::kDeadlineExceeded ||
                           status.code() == absl::StatusCode::kCancelled || server_context_->IsCancelled();
    if (!sent_delta_ || call_over) {
      // Drop what is queued, except a message being written (out_.front()
      // while writing_): gRPC still reads it, and OnWriteDone pops it.
      while (out_.size() > (writing_ ? 1u : 0u)) out_.pop_back();
      finish_status_ = services::ToGrpcStatus(status, server_context_);
      if (!writing_) {
        finish_started_ = true;
        this->Finish(finish_status_);
      } else {
        final_queued_ = true;  // finishes with finish_status_ after the pending write
      }
      return;
    }
    Response r;
    v1::Final* f = r.mutable_final();
    f->set_finish_reason(v1::FINISH_REASON_ERROR);
    f->set_error(std::string(status.message()));
    FillUsageLocked(f);
    ObserveLocked(*f);
    out_.push_back(std::move(r));
    final_queued_ = true;
    PumpLocked();
  }

  const std::shared_ptr<RouterService::Shared> shared_;
  grpc::CallbackServerContext* const server_context_;
  const absl::Time received_;
  std::recursive_mutex mu_;
  std::atomic<int> refs_{1};  // the server stream
  Job job_;

  // Workers.
  bool admitted_ = false, decode_picked_ = false, prefill_pending_accounting_ = false;
  bool colocated_ = false, local_prefill_ = false, worker_started_ = false, worker_cancel_sent_ = false;
  bool finished_normally_ = false;
  std::int64_t prompt_tokens_ = 0, blocks_ = 0;
  WorkerId decode_id_, prefill_id_;
  std::string decode_fingerprint_;  // as the picked decode worker reports it
  std::set<WorkerId> excluded_prefill_;
  std::shared_ptr<wk::Worker::Stub> decode_stub_, prefill_stub_;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts_;
  wk::ReserveRequest reserve_;
  wk::KvTarget target_;
  wk::PrefillRequest prefill_request_;
  wk::PrefillResponse prefill_response_;
  wk::DecodeRequest decode_request_;
  grpc::ClientContext* decode_context_ = nullptr;
  std::unique_ptr<DecodeReader> reader_;
  std::vector<std::unique_ptr<DecodeReader>> retired_readers_;  // of decode workers lost mid-stream
  int migrations_ = 0;
  absl::Time decode_sent_, first_token_at_, prefill_sent_;
  int decode_tokens_ = 0;  // tokens received from the current Decode call

  // Output.
  std::unique_ptr<text::OutputParser> parser_;
  std::unique_ptr<text::IncrementalDetokenizer> detok_;
  std::vector<std::int32_t> all_ids_;
  std::string answer_;
  std::size_t emitted_ = 0, max_stop_len_ = 0;
  bool stop_string_matched_ = false, in_think_ = false;
  std::string stop_string_;
  std::int32_t stop_token_id_ = -1;
  std::int64_t reasoning_tokens_ = 0, cached_tokens_ = 0;
  std::int64_t queue_us_ = 0, prefill_us_ = 0, kv_transfer_us_ = 0, first_step_us_ = 0, ttft_us_ = 0;
  std::string prefill_worker_, decode_worker_;

  // The server stream.
  std::deque<Response> out_;
  bool writing_ = false, finish_started_ = false, final_queued_ = false, sent_delta_ = false;
  bool done_ = false, client_gone_ = false, server_done_ = false;
  grpc::Status finish_status_;  // what a queued finish ends the call with (OK unless FailLocked set it)
};

}  // namespace

RouterService::~RouterService() {
  // Worker calls of finished streams end quickly (their contexts are
  // cancelled; a Cancel has a 5 s deadline); the directory they touch, and
  // whose channels they share, must outlive them.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while ((shared_->live_calls.load() > 0 || shared_->cancels_in_flight.load() > 0) && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(5));
}

int RouterService::live_streams() const { return shared_->live_calls.load(); }

v1::Limits DefaultLimits(std::int32_t context_length) {
  v1::Limits l;
  l.set_max_messages(512);
  l.set_max_content_parts(64);
  l.set_max_total_content_parts(1024);
  l.set_max_images(0);  // RouterService::Create: 8 when the tokenizer renders images
  l.set_max_image_bytes(0);
  l.set_max_prompt_tokens(std::max(1, context_length - 1));
  l.set_max_output_tokens(std::max(1, context_length - 1));
  l.set_max_stop_strings(16);
  l.set_max_stop_string_bytes(256);
  l.set_max_stop_token_ids(64);
  l.set_max_tools(128);
  l.set_max_tool_schema_bytes(64 << 10);
  l.set_max_top_logprobs(20);
  l.set_max_request_id_bytes(128);
  l.set_max_response_schema_bytes(64 << 10);
  l.set_max_request_bytes(services::kMaxPublicMessageBytes);
  return l;
}

absl::StatusOr<std::unique_ptr<RouterService>> RouterService::Create(RouterOptions options,
                                                                     const text::Tekkenizer* tokenizer,
                                                                     WorkerDirectory* directory,
                                                                     std::shared_ptr<services::CallGate> gate) {
  auto shared = std::make_shared<Shared>();
  shared->limits = DefaultLimits(options.context_length);
  if (options.images && tokenizer->image_config().has_value()) {
    absl::StatusOr<std::int32_t> img = tokenizer->SpecialTokenId("[IMG]");
    if (!img.ok()) return absl::FailedPreconditionError("the tokenizer has an image section but no [IMG] token");
    shared->image_token_id = *img;
    shared->limits.set_max_images(8);
    shared->limits.set_max_image_bytes(10 << 20);
  }
  shared->limits.MergeFrom(options.limits);  // non-zero fields override
  if (shared->image_token_id < 0) {
    shared->limits.set_max_images(0);
    shared->limits.set_max_image_bytes(0);
  }
  shared->options = std::move(options);
  shared->tokenizer = tokenizer;
  const bool think_tokens = tokenizer->SpecialTokenId("[THINK]").ok() && tokenizer->SpecialTokenId("[/THINK]").ok();
  shared->think_before_json = tokenizer->version() >= text::TokenizerVersion::kV15 && think_tokens;
  shared->constrains_tool_calls = tokenizer->version() >= text::TokenizerVersion::kV11 &&
                                  tokenizer->SpecialTokenId("[TOOL_CALLS]").ok() &&
                                  tokenizer->SpecialTokenId("[ARGS]").ok();
  shared->think_before_calls = tokenizer->version() >= text::TokenizerVersion::kV13 && think_tokens;
  auto format = text::InstructFormat::Create(*tokenizer);
  if (!format.ok()) return format.status();
  shared->format = *std::move(format);
  auto syntax = text::OutputSyntax::ForTokenizer(*tokenizer);
  if (!syntax.ok()) return syntax.status();
  shared->syntax = *syntax;
  shared->directory = directory;
  shared->gate = std::move(gate);
  return std::unique_ptr<RouterService>(new RouterService(std::move(shared)));
}

absl::StatusOr<std::vector<std::int32_t>> RouterService::RenderChat(const v1::ChatRequest& request) const {
  absl::StatusOr<RenderedPrompt> rendered = RenderChatWithImages(request);
  if (!rendered.ok()) return rendered.status();
  return std::move(rendered->ids);
}

absl::StatusOr<RouterService::RenderedPrompt> RouterService::RenderChatWithImages(
    const v1::ChatRequest& request) const {
  const v1::Limits& limits = shared_->limits;
  int num_images = 0;
  auto converted = ToTextRequest(request, limits, &num_images);
  if (converted.ok() && num_images > 0 && !shared_->directory->ImagesSupported()) {
    return InvalidFieldError("messages",
                             "images are not supported by this deployment: its workers' model has no "
                             "vision encoder");
  }
  if (!converted.ok()) return converted.status();
  switch (request.reasoning_effort()) {
    case v1::REASONING_EFFORT_UNSPECIFIED:
      converted->reasoning_effort = shared_->options.default_reasoning_effort == v1::REASONING_EFFORT_HIGH
                                        ? text::ReasoningEffort::kHigh
                                        : text::ReasoningEffort::kNone;
      break;
    case v1::REASONING_EFFORT_NONE:
      converted->reasoning_effort = text::ReasoningEffort::kNone;
      break;
    case v1::REASONING_EFFORT_HIGH:
      converted->reasoning_effort = text::ReasoningEffort::kHigh;
      break;
    default:
      return InvalidFieldError("reasoning_effort", "not one of ModelInfo.supported_reasoning_efforts");
  }
  auto rendered = shared_->format->Render(*converted);
  if (!rendered.ok()) return InvalidFieldError("messages", std::string(rendered.status().message()));
  RenderedPrompt out;
  out.ids = std::move(rendered->ids);
  if (rendered->images.empty()) return out;
  // The images' bytes in request order, which is their placeholders' order.
  std::vector<const v1::Image*> images;
  for (int i = 0; i < request.messages_size(); ++i) {
    for (int j = 0; j < request.messages(i).content_size(); ++j) {
      const v1::ContentPart& part = request.messages(i).content(j);
      if (part.part_case() != v1::ContentPart::kImage) continue;
      images.push_back(&part.image());
      out.image_fields.push_back(absl::StrCat("messages[", i, "].content[", j, "].image"));
    }
  }
  if (images.size() != rendered->images.size()) {
    return absl::InternalError(absl::StrCat("rendered ", rendered->images.size(), " images of ", images.size()));
  }
  // Each image's placeholders: grid rows of [IMG] tokens, each row closed by
  // one [IMG_BREAK] (the last by [IMG_END]).
  std::size_t cursor = 0;
  for (std::size_t i = 0; i < images.size(); ++i) {
    const text::ImageGrid& grid = rendered->images[i].grid;
    const auto first =
        std::find(out.ids.begin() + static_cast<std::ptrdiff_t>(cursor), out.ids.end(), shared_->image_token_id);
    const auto offset = static_cast<std::size_t>(first - out.ids.begin());
    const auto span = static_cast<std::size_t>(grid.height_tokens * (grid.width_tokens + 1));
    if (first == out.ids.end() || offset + span > out.ids.size()) {
      return absl::InternalError(absl::StrCat("image ", i, ": its placeholders are not in the rendered prompt"));
    }
    wk::ImageInput& in = out.images.emplace_back();
    in.set_data(images[i]->data());
    in.set_mime_type(images[i]->mime_type());
    in.set_token_offset(static_cast<std::uint32_t>(offset));
    in.set_grid_width(static_cast<std::uint32_t>(grid.width_tokens));
    in.set_grid_height(static_cast<std::uint32_t>(grid.height_tokens));
    cursor = offset + span;
  }
  return out;
}

grpc::ServerWriteReactor<v1::ChatResponse>* RouterService::Chat(grpc::CallbackServerContext* context,
                                                                const v1::ChatRequest* request) {
  auto* call = new StreamCall<v1::ChatResponse>(shared_, context);
  absl::StatusOr<Job> job = [&]() -> absl::StatusOr<Job> {
    if (absl::Status s = shared_->gate->AdmitPublic(); !s.ok()) return s;
    if (absl::Status s = ValidateRequestId(request->request_id(), shared_->limits); !s.ok()) return s;
    if (request->priority() < -100 || request->priority() > 100)
      return InvalidFieldError("priority", absl::StrCat(request->priority(), " is outside [-100, 100]"));
    auto rendered = RenderChatWithImages(*request);
    if (!rendered.ok()) return rendered.status();
    auto resolved =
        ResolveJob(request->sampling(), request->stop(), request->output(), std::move(rendered->ids), shared_->limits,
                   EffectiveContextLength(*shared_), shared_->tokenizer->vocab_size(), "messages");
    if (resolved.ok()) {
      // A think section may open a constrained answer only when the request
      // reasons.
      const bool reasons = request->reasoning_effort() == v1::REASONING_EFFORT_HIGH ||
                           (request->reasoning_effort() == v1::REASONING_EFFORT_UNSPECIFIED &&
                            shared_->options.default_reasoning_effort == v1::REASONING_EFFORT_HIGH);
      auto format = WorkerResponseFormat(request->response_format(), request->stop(),
                                         reasons && shared_->think_before_json, shared_->grammars);
      if (!format.ok()) return format.status();
      if (format->has_value()) *resolved->sampling.mutable_response_format() = **std::move(format);
      if (shared_->constrains_tool_calls) {
        auto calls = ForcedToolCalls(*request, reasons && shared_->think_before_calls, shared_->grammars);
        if (!calls.ok()) return calls.status();
        if (calls->has_value()) *resolved->sampling.mutable_response_format() = **std::move(calls);
      }
      resolved->request_id = request->request_id();
      resolved->chat = true;
      resolved->images = std::move(rendered->images);
      resolved->image_fields = std::move(rendered->image_fields);
      if (!resolved->images.empty()) resolved->cache_key = ImageCacheKey(resolved->prompt, resolved->images);
    }
    return resolved;
  }();
  call->Begin(std::move(job));
  return call;
}

grpc::ServerWriteReactor<v1::GenerateResponse>* RouterService::Generate(grpc::CallbackServerContext* context,
                                                                        const v1::GenerateRequest* request) {
  auto* call = new StreamCall<v1::GenerateResponse>(shared_, context);
  absl::StatusOr<Job> job = [&]() -> absl::StatusOr<Job> {
    if (absl::Status s = shared_->gate->AdmitPublic(); !s.ok()) return s;
    if (absl::Status s = ValidateRequestId(request->request_id(), shared_->limits); !s.ok()) return s;
    if (request->priority() < -100 || request->priority() > 100)
      return InvalidFieldError("priority", absl::StrCat(request->priority(), " is outside [-100, 100]"));
    std::vector<std::int32_t> ids;
    std::string field;
    switch (request->prompt_case()) {
      case v1::GenerateRequest::kText:
        if (request->text().empty()) return InvalidFieldError("text", "must not be empty");
        if (!request->skip_bos()) ids.push_back(shared_->tokenizer->bos_id());
        shared_->tokenizer->EncodeAppend(request->text(), &ids);
        field = "text";
        break;
      case v1::GenerateRequest::kTokenIds:
        ids.assign(request->token_ids().ids().begin(), request->token_ids().ids().end());
        field = "token_ids.ids";
        break;
      default:
        return InvalidFieldError("prompt", "exactly one of text, token_ids must be set");
    }
    auto resolved = ResolveJob(request->sampling(), request->stop(), request->output(), std::move(ids), shared_->limits,
                               EffectiveContextLength(*shared_), shared_->tokenizer->vocab_size(), field);
    if (resolved.ok()) {
      if (auto checked = CheckResponseFormat(request->response_format(), shared_->limits); !checked.ok())
        return checked.status();
      auto format = WorkerResponseFormat(request->response_format(), request->stop(), false, shared_->grammars);
      if (!format.ok()) return format.status();
      if (format->has_value()) *resolved->sampling.mutable_response_format() = **std::move(format);
      resolved->request_id = request->request_id();
      resolved->chat = false;
      resolved->keep_special = request->keep_special_tokens();
    }
    return resolved;
  }();
  call->Begin(std::move(job));
  return call;
}

grpc::ServerUnaryReactor* RouterService::Tokenize(grpc::CallbackServerContext* context,
                                                  const v1::TokenizeRequest* request, v1::TokenizeResponse* response) {
  auto* reactor = context->DefaultReactor();
  absl::Status status = [&]() -> absl::Status {
    if (absl::Status s = shared_->gate->AdmitPublic(); !s.ok()) return s;
    std::vector<std::int32_t> ids;
    switch (request->input_case()) {
      case v1::TokenizeRequest::kText:
        if (!request->skip_bos()) ids.push_back(shared_->tokenizer->bos_id());
        shared_->tokenizer->EncodeAppend(request->text(), &ids);
        break;
      case v1::TokenizeRequest::kChat: {
        auto rendered = RenderChat(request->chat());
        if (!rendered.ok()) {
          absl::Status s = rendered.status();
          return absl::Status(s.code(), "chat." + std::string(s.message()));
        }
        ids = *std::move(rendered);
        break;
      }
      default:
        return InvalidFieldError("input", "exactly one of text, chat must be set");
    }
    for (std::int32_t id : ids) {
      response->add_token_ids(id);
      if (request->return_tokens()) response->add_tokens(std::string(shared_->tokenizer->TokenBytes(id)));
    }
    return absl::OkStatus();
  }();
  reactor->Finish(services::ToGrpcStatus(status, context));
  return reactor;
}

grpc::ServerUnaryReactor* RouterService::GetModelInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetModelInfoRequest*, v1::ModelInfo* response) {
  auto* reactor = context->DefaultReactor();
  const auto& o = shared_->options;
  const std::int32_t context_length = EffectiveContextLength(*shared_);
  response->set_model_name(o.model_name);
  response->set_model_fingerprint(o.model_fingerprint);
  response->set_context_length(context_length);
  response->set_vocab_size(static_cast<std::int32_t>(shared_->tokenizer->vocab_size()));
  response->set_tokenizer_version("tekken " + std::string(text::TokenizerVersionName(shared_->tokenizer->version())));
  response->set_bos_token_id(shared_->tokenizer->bos_id());
  response->add_eos_token_ids(shared_->tokenizer->eos_id());
  response->add_supported_reasoning_efforts(v1::REASONING_EFFORT_NONE);
  if (shared_->syntax.begin_think >= 0) response->add_supported_reasoning_efforts(v1::REASONING_EFFORT_HIGH);
  response->set_default_reasoning_effort(o.default_reasoning_effort);
  const bool images = shared_->image_token_id >= 0 && shared_->directory->ImagesSupported();
  response->set_supports_images(images);
  if (images) {
    for (std::string_view mime : kImageMimeTypes) response->add_image_mime_types(std::string(mime));
  }
  *response->mutable_limits() = shared_->limits;
  if (!images) {
    response->mutable_limits()->set_max_images(0);
    response->mutable_limits()->set_max_image_bytes(0);
  }
  // Prompt and output each leave room for at least one token of the other.
  auto* limits = response->mutable_limits();
  limits->set_max_prompt_tokens(std::min(limits->max_prompt_tokens(), context_length - 1));
  limits->set_max_output_tokens(std::min(limits->max_output_tokens(), context_length - 1));
  response->set_server_version("0.1.0");
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

// --- WorkerDirectory ----------------------------------------------------------

WorkerDirectory::WorkerDirectory(DirectoryOptions options)
    : options_(std::move(options)), admission_(options_.admission) {
  absl::MutexLock lock(&mu_);
  pool_.set_prefix_routing(options_.prefix_routing);
}

WorkerDirectory::~WorkerDirectory() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (load_thread_.joinable()) load_thread_.join();
  if (dns_thread_.joinable()) dns_thread_.join();
}

void WorkerDirectory::Start() {
  ResolveOnce();
  PollOnce();
  load_thread_ = std::thread([this] { LoadLoop(); });
  dns_thread_ = std::thread([this] { DnsLoop(); });
}

bool WorkerDirectory::WaitForHealthy(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    for (const auto& w : Snapshot())
      if (w.healthy) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

void WorkerDirectory::ResolveOnce() {
  std::set<WorkerId> present;
  bool complete = true;
  std::vector<std::pair<WorkerId, WorkerRole>> found;
  for (const auto& source : options_.sources) {
    if (!source.dns) {
      found.push_back({WorkerId{source.address}, source.role});
      continue;
    }
    auto endpoint = ParseEndpoint(source.address);
    if (!endpoint.ok()) {
      complete = false;
      continue;
    }
    auto ids = Resolve(*endpoint);
    if (!ids.ok()) {
      complete = false;
      continue;
    }
    for (const auto& id : *ids) found.push_back({id, source.role});
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [id, role] : found) {
    pool_.Upsert(id, role);
    present.insert(id);
  }
  if (complete) pool_.Retain(present);  // keep what a failed lookup knew before
}

void WorkerDirectory::PollOnce() {
  std::vector<WorkerState> workers = Snapshot();
  for (const auto& w : workers) {
    auto stub = Stub(w.id);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1000));
    services::AttachWorkerToken(context, options_.worker_token);
    wk::GetLoadRequest request;
    wk::Load load;
    grpc::Status status = stub->GetLoad(&context, request, &load);
    absl::MutexLock lock(&mu_);
    if (status.ok()) {
      pool_.ReportLoad(w.id, FromProto(load), absl::Now());
    } else {
      pool_.MarkUnhealthy(w.id);
    }
  }
  absl::MutexLock lock(&mu_);
  pool_.ExpireStale(absl::Now(), options_.max_report_age);
}

void WorkerDirectory::LoadLoop() {
  while (!stop_.WaitForNotificationWithTimeout(options_.load_interval)) PollOnce();
}

void WorkerDirectory::DnsLoop() {
  while (!stop_.WaitForNotificationWithTimeout(options_.dns_interval)) ResolveOnce();
}

absl::StatusOr<WorkerState> WorkerDirectory::PickDecode(std::int64_t blocks) {
  absl::MutexLock lock(&mu_);
  auto id = pool_.PickDecode(blocks);
  if (!id.ok()) return id.status();
  auto state = pool_.Find(*id);
  if (!state) return absl::UnavailableError("the picked decode worker vanished");
  return *state;
}

absl::StatusOr<WorkerId> WorkerDirectory::PickPrefill(std::span<const std::int32_t> prompt,
                                                      const std::set<WorkerId>& exclude) {
  absl::MutexLock lock(&mu_);
  return pool_.PickPrefill(prompt, exclude);
}

std::int64_t WorkerDirectory::CachedOnDecode(const WorkerId& id, std::span<const std::int32_t> prompt) {
  absl::MutexLock lock(&mu_);
  return pool_.CachedOnDecode(id, prompt);
}

void WorkerDirectory::RecordDecoded(const WorkerId& id, std::span<const std::int32_t> tokens) {
  absl::MutexLock lock(&mu_);
  pool_.RecordDecoded(id, tokens);
}

void WorkerDirectory::DoneDecode(const WorkerId& id, std::int64_t blocks) {
  absl::MutexLock lock(&mu_);
  pool_.DoneDecode(id, blocks);
}

void WorkerDirectory::DonePrefill(const WorkerId& id, std::int64_t prompt_tokens) {
  absl::MutexLock lock(&mu_);
  pool_.DonePrefill(id, prompt_tokens);
}

void WorkerDirectory::MarkUnhealthy(const WorkerId& id) {
  absl::MutexLock lock(&mu_);
  pool_.MarkUnhealthy(id);
}

Admission WorkerDirectory::TryAdmit(std::int64_t prompt_tokens) {
  absl::MutexLock lock(&mu_);
  return admission_.TryAdmit(prompt_tokens);
}

void WorkerDirectory::Release(std::int64_t prompt_tokens) {
  absl::MutexLock lock(&mu_);
  admission_.Release(prompt_tokens);
}

std::vector<WorkerState> WorkerDirectory::Snapshot() {
  absl::MutexLock lock(&mu_);
  return pool_.Snapshot();
}

bool WorkerDirectory::ImagesSupported() {
  absl::MutexLock lock(&mu_);
  return pool_.ImagesSupported();
}

std::int64_t WorkerDirectory::WorkerContextLength() {
  absl::MutexLock lock(&mu_);
  return pool_.MinContextLength();
}

std::shared_ptr<wk::Worker::Stub> WorkerDirectory::Stub(const WorkerId& id) {
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[id.address];
  if (!stub) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(services::kMaxWorkerMessageBytes);
    args.SetMaxSendMessageSize(services::kMaxWorkerMessageBytes);
    stub = wk::Worker::NewStub(grpc::CreateCustomChannel(id.address, grpc::InsecureChannelCredentials(), args));
  }
  return stub;
}

}  // namespace sirocco::router
