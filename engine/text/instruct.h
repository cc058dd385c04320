// The Mistral instruct format: a chat request rendered into token ids exactly
// as mistral-common's `MistralTokenizer.from_file(...).encode_chat_completion`
// renders it for the tokenizer's declared version (v3, v7, v11, v13, v15; the
// Mistral Small 4 family is v15), including what it rejects.
//
// The path is the reference's, in three steps:
//   1. validate (MistralRequestValidator of the version, default "test" mode):
//      roles and their order, tool calls answered by tool results, ids and
//      names, chunk types per role, tool schemas, reasoning_effort;
//   2. normalize (InstructRequestNormalizer of the version): merge
//      consecutive messages of one role, gather the system prompt (v3),
//      normalize tool-call JSON, order tool results as their calls (v11+),
//      build the model settings (v15: reasoning_effort and its default);
//   3. encode (InstructTokenizerV*): BOS, [SYSTEM_PROMPT] blocks (v7+) or the
//      system prompt before the last user message (v3), [AVAILABLE_TOOLS] at
//      the last (v3-v11) or first (v13+) user message, [MODEL_SETTINGS] (v15),
//      [INST]...[/INST], tool calls and results in each version's syntax,
//      [THINK] reasoning (v13+), image grids of [IMG]/[IMG_BREAK]/[IMG_END],
//      EOS after each assistant turn but a final prefix.
// A rejection is a ChatError (chat_request.h) naming the reference's
// exception class, with its message.
//
// Thread-safety: an InstructFormat is immutable after Create; Render may be
// called from any number of threads at once. The Tekkenizer must outlive it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/text/chat_request.h"
#include "engine/text/instruct_image.h"
#include "engine/text/tekken.h"

namespace sirocco::text {

struct RenderedImage {
  ImageSize size;  // pixels, as the file's header states
  ImageGrid grid;  // the [IMG] layout rendered for it
};

struct RenderedChat {
  std::vector<std::int32_t> ids;
  // The ids decoded with special tokens kept: mistral-common's Tokenized.text.
  std::string text;
  // The images in the order their placeholders appear.
  std::vector<RenderedImage> images;
};

// The version-specific pieces of a tokenizer the format needs, resolved once.
class InstructFormat {
 public:
  // FAILED_PRECONDITION when the tokenizer lacks a special token its
  // version's instruct tokenizer needs (the reference fails to load it too) or
  // its version is not a tekken instruct version this supports (v1, v2).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<InstructFormat>> Create(const Tekkenizer& tokenizer);

  // Validates, normalizes and encodes `request`. Rejections are ChatErrors.
  [[nodiscard]] absl::StatusOr<RenderedChat> Render(const ChatRequest& request) const;

  struct Impl;
  ~InstructFormat();

 private:
  explicit InstructFormat(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// One-shot forms of the above, for tools and tests.
[[nodiscard]] absl::StatusOr<RenderedChat> RenderChat(const Tekkenizer& tokenizer, const ChatRequest& request);
// Parses the JSON form of a ChatCompletionRequest (ParseChatRequest), then renders it.
[[nodiscard]] absl::StatusOr<RenderedChat> TokenizeChat(const Tekkenizer& tokenizer, std::string_view request_json);

}  // namespace sirocco::text
