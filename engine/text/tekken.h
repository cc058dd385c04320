// The tekken tokenizer: Mistral's byte-level BPE (tiktoken-style) loaded from a
// tekken.json file, producing exactly the ids of mistral-common's Tekkenizer.
//
//   * Text is pre-split with the file's own regex (PCRE2 with JIT; Unicode
//     property classes patched to the Unicode version tiktoken's regex engine
//     uses, see tekken_regex.h), then each piece is merged by rank.
//   * Ids below num_special_tokens() are special tokens ("<s>", "[INST]", ...);
//     the file's inner ranks are offset by num_special_tokens(). The inner
//     vocabulary is truncated to default_vocab_size - num_special_tokens, as
//     the reference does.
//   * Encode() treats everything as plain text: "[INST]" typed by a user is
//     encoded as the characters '[', 'INST', ']', never as the special id.
//     No BOS/EOS is added (the instruct format adds them).
//   * Decode() follows the reference's special-token policy and renders bytes
//     that are not valid UTF-8 as U+FFFD, one per maximal invalid subpart, each
//     run of ordinary tokens between special tokens decoded on its own.
//
// Thread-safety: a Tekkenizer is immutable after Load/FromJson; every const
// method may be called from any number of threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace sirocco::text {

class PreTokenizer;
class BpeRanks;

// The tokenizer generations of mistral-common (TokenizerVersion). The numeric
// value is the version number, so versions compare with < and >.
enum class TokenizerVersion : std::uint8_t { kV1 = 1, kV2 = 2, kV3 = 3, kV7 = 7, kV11 = 11, kV13 = 13, kV15 = 15 };

// "v15" -> kV15; anything else is INVALID_ARGUMENT.
absl::StatusOr<TokenizerVersion> ParseTokenizerVersion(std::string_view name);
// kV15 -> "v15".
std::string_view TokenizerVersionName(TokenizerVersion version);

// What Decode does with special tokens (mistral-common SpecialTokenPolicy).
enum class SpecialTokenPolicy : std::uint8_t {
  kIgnore,  // drop them
  kKeep,    // render their text, e.g. "[INST]"
  kRaise,   // INVALID_ARGUMENT if any is present
};

// The file's "image" section (or the deprecated "multimodal" one, <= v11).
struct ImageConfig {
  int image_patch_size = 0;
  int max_image_size = 0;
  int spatial_merge_size = 1;
};

class Tekkenizer {
 public:
  // Reads and validates a tekken.json file. The tokenizer's name is the file
  // name without ".json", as the reference names it.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Tekkenizer>> Load(const std::string& path);
  // Same, from the file's text.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Tekkenizer>> FromJson(std::string_view json_text,
                                                                            std::string name);

  ~Tekkenizer();
  Tekkenizer(const Tekkenizer&) = delete;
  Tekkenizer& operator=(const Tekkenizer&) = delete;

  // Plain text to ids: no BOS/EOS, special-token text stays text. The input is
  // UTF-8; invalid sequences are encoded as U+FFFD (what Python gets when it
  // decodes such bytes with errors="replace").
  std::vector<std::int32_t> Encode(std::string_view text) const;
  void EncodeAppend(std::string_view text, std::vector<std::int32_t>* out) const;

  // Ids to text, like mistral-common's Tekkenizer.decode. INVALID_ARGUMENT for
  // an id outside [0, vocab_size()) or, with kRaise, for a special token.
  [[nodiscard]] absl::StatusOr<std::string> Decode(std::span<const std::int32_t> ids,
                                                   SpecialTokenPolicy policy) const;

  // The token's raw bytes (not necessarily valid UTF-8: a token may hold part
  // of a character); a special token's text, e.g. "[INST]". Empty for an id
  // outside [0, vocab_size()). The view lives as long as the tokenizer.
  std::string_view TokenBytes(std::int32_t id) const;
  // The reference's id_to_piece: Decode({id}, kKeep), so a partial character
  // renders as U+FFFD. Empty for an id outside [0, vocab_size()).
  std::string IdToPiece(std::int32_t id) const;

  // Special ids are exactly [0, num_special_tokens()).
  bool IsSpecial(std::int32_t id) const { return id >= 0 && id < num_special_tokens_; }
  // "[INST]" -> its id; NOT_FOUND ("Unknown control token [X]") if absent.
  [[nodiscard]] absl::StatusOr<std::int32_t> SpecialTokenId(std::string_view text) const;

  std::int32_t bos_id() const { return bos_id_; }
  std::int32_t eos_id() const { return eos_id_; }
  std::int32_t pad_id() const { return pad_id_; }
  std::int32_t unk_id() const { return unk_id_; }
  // Special + ordinary tokens (the reference's n_words).
  std::int64_t vocab_size() const { return vocab_size_; }
  std::int32_t num_special_tokens() const { return num_special_tokens_; }
  TokenizerVersion version() const { return version_; }
  const std::string& name() const { return name_; }
  const std::optional<ImageConfig>& image_config() const { return image_config_; }
  // The file's "model_settings_builder" object serialized as JSON (v15+; e.g.
  // {"reasoning_effort":{"type":"enum","accepts_none":true,...}}), if present.
  const std::optional<std::string>& model_settings_builder_json() const { return model_settings_builder_json_; }
  // The pre-split pattern as written in the file.
  const std::string& pattern() const { return pattern_; }

 private:
  Tekkenizer();
  // Appends the ids of one pre-split piece.
  void EncodePiece(std::string_view piece, std::vector<std::int32_t>* out) const;
  void EncodeValidUtf8(std::string_view text, std::vector<std::int32_t>* out) const;

  std::string name_;
  TokenizerVersion version_ = TokenizerVersion::kV3;
  std::string pattern_;
  std::int64_t vocab_size_ = 0;
  std::int32_t num_special_tokens_ = 0;
  std::int32_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1, unk_id_ = -1;
  std::optional<ImageConfig> image_config_;
  std::optional<std::string> model_settings_builder_json_;
  // Special tokens' text by id, and the reverse map.
  std::vector<std::string> special_text_;
  absl::flat_hash_map<std::string, std::int32_t> special_ids_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeRanks> ranks_;
};

}  // namespace sirocco::text
