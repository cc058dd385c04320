// Step 1 of the instruct format (instruct.h): mistral-common's
// MistralRequestValidator of each tokenizer version, in its default ("test")
// mode, over a parsed request. Rejections are ChatErrors with the reference's
// exception class and message.
//
// Pure function: safe to call from any thread.
#pragma once

#include "absl/status/status.h"
#include "engine/text/chat_request.h"
#include "engine/text/tekken.h"

namespace sirocco::text {

[[nodiscard]] absl::Status ValidateChatRequest(const ChatRequest& request, TokenizerVersion version);

}  // namespace sirocco::text
