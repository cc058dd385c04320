// Streaming detokenization: ids arrive one at a time (from the decode stream)
// and text leaves as soon as it is complete.
//
// Invariant (tested): the concatenation of every Push() result and Flush()
// equals Tekkenizer::Decode(all ids, policy). So:
//   * a multi-byte character split across tokens is held back until its last
//     byte arrives (never a broken UTF-8 sequence on the wire);
//   * bytes that can no longer become a valid character are emitted as U+FFFD
//     exactly as Decode renders them (never silently dropped);
//   * a special token ends the current run of ordinary tokens (Decode decodes
//     each run on its own), then renders per policy (kKeep: its text; kIgnore:
//     nothing; kRaise: INVALID_ARGUMENT).
//
// Thread-safety: one detokenizer per stream, used from one thread at a time.
// The Tekkenizer must outlive it.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/text/tekken.h"
#include "engine/text/utf8.h"

namespace sirocco::text {

class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tekkenizer& tokenizer, SpecialTokenPolicy policy);

  // The text that became complete with this id (possibly empty).
  // INVALID_ARGUMENT for an id outside the vocabulary or, with kRaise, for a
  // special token; the detokenizer is unchanged by a rejected id.
  [[nodiscard]] absl::StatusOr<std::string> Push(std::int32_t id);
  // Same, appending to *out.
  [[nodiscard]] absl::Status PushAppend(std::int32_t id, std::string* out);

  // End of stream: renders the held-back bytes (an unfinished character
  // becomes U+FFFD, as in Decode). The detokenizer may be reused afterwards.
  std::string Flush();

  // Bytes held back, waiting for the rest of a character (0 to 3).
  std::size_t pending_bytes() const { return decoder_.pending_bytes(); }

 private:
  const Tekkenizer& tokenizer_;
  SpecialTokenPolicy policy_;
  Utf8StreamDecoder decoder_;
};

}  // namespace sirocco::text
