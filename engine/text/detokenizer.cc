#include "engine/text/detokenizer.h"

#include "absl/strings/str_cat.h"

namespace sirocco::text {

IncrementalDetokenizer::IncrementalDetokenizer(const Tekkenizer& tokenizer, SpecialTokenPolicy policy)
    : tokenizer_(tokenizer), policy_(policy) {}

absl::Status IncrementalDetokenizer::PushAppend(std::int32_t id, std::string* out) {
  if (id < 0 || id >= tokenizer_.vocab_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token id ", id, " is outside the vocabulary [0, ", tokenizer_.vocab_size(), ")"));
  }
  if (!tokenizer_.IsSpecial(id)) {
    decoder_.Append(tokenizer_.TokenBytes(id), out);
    return absl::OkStatus();
  }
  if (policy_ == SpecialTokenPolicy::kRaise) {
    return absl::InvalidArgumentError(
        absl::StrCat("Decoding `tokens` that contain special tokens ([", id, "]) is not allowed."));
  }
  // A special token ends the run of ordinary tokens even when it renders as
  // nothing: Decode decodes each run separately, so a character cut by it
  // is U+FFFD on both sides of it.
  decoder_.Finish(out);
  if (policy_ == SpecialTokenPolicy::kKeep) out->append(tokenizer_.TokenBytes(id));
  return absl::OkStatus();
}

absl::StatusOr<std::string> IncrementalDetokenizer::Push(std::int32_t id) {
  std::string out;
  absl::Status s = PushAppend(id, &out);
  if (!s.ok()) return s;
  return out;
}

std::string IncrementalDetokenizer::Flush() {
  std::string out;
  decoder_.Finish(&out);
  return out;
}

}  // namespace sirocco::text
