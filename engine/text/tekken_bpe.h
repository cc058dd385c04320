// Byte-level BPE by rank, the algorithm of tiktoken: a piece that is itself a
// token is that token; otherwise start from its bytes and repeatedly merge the
// adjacent pair whose concatenation has the lowest rank (the leftmost such
// pair on a tie) until no adjacent pair is a token.
//
// Ranks live in one arena of token bytes with an open-addressing hash table
// over it, used for the whole-piece lookup. Merges never hash bytes: parts are
// always tokens, so "is A+B a token, and which" is a lookup of the pair
// (rank A, rank B) in a second table, built at load from every token that
// splits into two tokens. Short pieces use tiktoken's array scan; long ones (a
// run of one script or of spaces can be a whole 100 KB piece) a heap,
// O(n log n), which yields the same merges in the same order.
//
// Thread-safety: immutable after construction; Encode may run on many
// threads at once.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sirocco::text {

class BpeRanks {
 public:
  // tokens[r] is the byte string of rank r. Ranks 0..255 must be the single
  // bytes 0..255 in order and all strings distinct (as tekken files have).
  [[nodiscard]] static absl::StatusOr<BpeRanks> Create(std::vector<std::string> tokens);

  BpeRanks(BpeRanks&&) = default;
  BpeRanks& operator=(BpeRanks&&) = default;

  std::int32_t size() const { return static_cast<std::int32_t>(offsets_.size()) - 1; }
  // Rank of `bytes`, or -1.
  std::int32_t Find(std::string_view bytes) const;
  std::string_view Bytes(std::int32_t rank) const {
    return std::string_view(arena_.data() + offsets_[rank], offsets_[rank + 1] - offsets_[rank]);
  }

  // Appends rank + id_offset for each token of the piece (non-empty).
  void Encode(std::string_view piece, std::int32_t id_offset, std::vector<std::int32_t>* out) const;

  // Pieces up to this many bytes merge by array scan, longer ones by heap:
  // the scan's O(n^2) wins on short pieces (measured on tokenizer_bench's
  // CJK and multilingual corpora; 16, 64 and 128 were slower).
  static constexpr std::size_t kScanMaxBytes = 32;

  // The two merge loops, exposed so tests can check they agree; Encode picks
  // one by length. MergeByScan takes at most kScanMaxBytes bytes.
  void MergeByScan(std::string_view piece, std::int32_t id_offset, std::vector<std::int32_t>* out) const;
  void MergeByHeap(std::string_view piece, std::int32_t id_offset, std::vector<std::int32_t>* out) const;

 private:
  BpeRanks() = default;
  // Rank of the token bytes(left) + bytes(right), or -1.
  std::int32_t PairRank(std::int32_t left, std::int32_t right) const;
  // Rank of the two-byte token a b, or INT32_MAX (a merge that cannot happen).
  std::int32_t BytePair(char a, char b) const {
    const std::int32_t r =
        byte_pairs_[(static_cast<std::size_t>(static_cast<unsigned char>(a)) << 8) | static_cast<unsigned char>(b)];
    return r < 0 ? 0x7FFFFFFF : r;
  }

  struct Slot {
    std::uint32_t hash;  // low 32 bits of the 64-bit hash, to skip most byte compares
    std::int32_t rank;   // -1: empty
  };

  std::string arena_;                  // every token's bytes, by rank
  std::vector<std::uint32_t> offsets_;  // rank r is arena_[offsets_[r], offsets_[r + 1])
  std::vector<Slot> slots_;            // power-of-two size, linear probing
  std::uint64_t mask_ = 0;
  // (left << 20 | right) << 20 | merged, or ~0 when empty; linear probing.
  std::vector<std::uint64_t> pairs_;
  std::uint64_t pair_mask_ = 0;
  int pair_shift_ = 0;
  // The two-byte tokens, indexed by (first byte << 8 | second byte): the first
  // round of every merge, without hashing.
  std::vector<std::int32_t> byte_pairs_;
};

}  // namespace sirocco::text
