// ParseChatRequest against pydantic's reading of the same JSON
// (ChatCompletionRequest.model_validate_json in mistral-common 1.13.1): the
// fields it fills, its lax conversions, and the location and type of the
// first error it reports. The instruct golden test covers whole requests.
#include "engine/text/chat_request.h"

#include <string>

#include "gtest/gtest.h"

namespace sirocco::text {
namespace {

std::string ErrorOf(std::string_view json) {
  absl::StatusOr<ChatRequest> r = ParseChatRequest(json);
  EXPECT_FALSE(r.ok()) << json;
  return r.ok() ? "" : std::string(r.status().message());
}

TEST(ChatRequestTest, ReadsEveryMessageKind) {
  absl::StatusOr<ChatRequest> r = ParseChatRequest(R"({
    "messages": [
      {"role": "system", "content": "sys"},
      {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:x", "detail": "low"}}]},
      {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "closed": false}],
       "tool_calls": [{"id": "abcdefghi", "function": {"name": "f", "arguments": {"a": 1}}}, {"function": {"name": "g", "arguments": null}}]},
      {"role": "tool", "content": "r", "tool_call_id": "abcdefghi", "name": "f"},
      {"role": "assistant", "content": "go", "prefix": "yes"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "reasoning_effort": "high", "temperature": "0.5", "max_tokens": 2.0})");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->messages.size(), 5u);
  EXPECT_EQ(r->messages[1].content->chunks[1].type, ChunkType::kImageUrl);
  EXPECT_EQ(r->messages[1].content->chunks[1].detail, "low");
  EXPECT_FALSE(r->messages[2].content->chunks[0].closed);
  EXPECT_EQ((*r->messages[2].tool_calls)[0].function.arguments, R"({"a": 1})");
  EXPECT_EQ((*r->messages[2].tool_calls)[1].id, "null");  // the reference's default
  EXPECT_EQ((*r->messages[2].tool_calls)[1].function.arguments, "{}");
  EXPECT_EQ(r->messages[3].name, "f");
  EXPECT_TRUE(r->messages[4].prefix);  // pydantic's lax bool
  EXPECT_EQ(r->tool_choice.mode, ToolChoiceMode::kNamed);
  EXPECT_EQ(r->reasoning_effort, ReasoningEffort::kHigh);
  EXPECT_DOUBLE_EQ(r->temperature, 0.5);
  EXPECT_EQ(r->max_tokens, 2);
}

TEST(ChatRequestTest, FirstErrorIsPydantics) {
  EXPECT_NE(ErrorOf(R"({"messages":[{"role":"bogus","content":"x"}]})").find("\nmessages.0\n"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"messages":[{"role":"bogus","content":"x"}]})").find("[type=union_tag_invalid]"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"messages":[{"role":"user"}]})").find("\nmessages.0.user.content\n  Field required [type=missing]"),
      std::string::npos);
  EXPECT_NE(ErrorOf(R"({"messages":[{"role":"user","content":5}]})")
                .find("messages.0.user.content.str\n  Input should be a valid string"),
            std::string::npos);
  // Field errors come before extra-field errors, whatever the key order.
  EXPECT_NE(
      ErrorOf(R"({"zzz":1,"messages":[{"role":"user","content":"x"}],"temperature":"hot"})").find("\ntemperature\n"),
      std::string::npos);
  EXPECT_NE(ErrorOf(R"({"messages":[{"role":"user","content":[{"type":"thinking","thinking":"b"}]}]})")
                .find("messages.0.user\n  Value error, ThinkChunk cannot be used in user message. [type=value_error]"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"messages":[],"reasoning_effort":"medium2"})").find("[type=enum]"), std::string::npos);
  EXPECT_EQ(ChatErrorClass(ParseChatRequest("[]").status()), "ValidationError");
}

TEST(ChatRequestTest, ContinueFinalMessageMarksThePrefix) {
  absl::StatusOr<ChatRequest> r = ParseChatRequest(
      R"({"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"}],"continue_final_message":true})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->messages[1].prefix);
  absl::StatusOr<ChatRequest> bad =
      ParseChatRequest(R"({"messages":[{"role":"user","content":"x"}],"continue_final_message":true})");
  EXPECT_EQ(ChatErrorClass(bad.status()), "InvalidMessageStructureException");
}

TEST(ChatRequestTest, UndecodableImageIsARuntimeError) {
  // Pillow's failure escapes pydantic's validation as a RuntimeError.
  absl::StatusOr<ChatRequest> r =
      ParseChatRequest(R"({"messages":[{"role":"user","content":[{"type":"image","image":"bm90IGFuIGltYWdl"}]}]})");
  EXPECT_EQ(ChatErrorClass(r.status()), "RuntimeError");
  EXPECT_NE(std::string(r.status().message()).find("starting with 'bm90IGFuIGltYWdl'"), std::string::npos);
}

}  // namespace
}  // namespace sirocco::text
