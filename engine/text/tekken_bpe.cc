#include "engine/text/tekken_bpe.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <functional>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/check.h"

namespace sirocco::text {
namespace {

constexpr std::int32_t kNoRank = std::numeric_limits<std::int32_t>::max();

// Pair-table slots pack three ranks of kRankBits each.
constexpr int kRankBits = 20;
constexpr std::uint64_t kRankMask = (std::uint64_t{1} << kRankBits) - 1;
constexpr std::uint64_t kEmptyPair = ~std::uint64_t{0};

inline std::uint64_t PairKey(std::int32_t left, std::int32_t right) {
  return (static_cast<std::uint64_t>(left) << kRankBits) | static_cast<std::uint64_t>(right);
}

__extension__ typedef unsigned __int128 U128;

inline std::uint64_t Fold(std::uint64_t a, std::uint64_t b) {
  const U128 r = static_cast<U128>(a) * b;
  return static_cast<std::uint64_t>(r) ^ static_cast<std::uint64_t>(r >> 64);
}
inline std::uint64_t Load64(const char* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline std::uint64_t Load32(const char* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// A multiply-fold hash over 8-byte loads; tokens are short (a handful of
// bytes), so the short cases read the key in at most four overlapping loads.
std::uint64_t HashBytes(const char* p, std::size_t n) {
  constexpr std::uint64_t kA = 0xa0761d6478bd642full, kB = 0xe7037ed1a0b428dbull, kC = 0x8ebc6af09c88c6e3ull;
  std::uint64_t a, b, seed = kC ^ n;
  if (n <= 16) {
    if (n >= 4) {
      const std::size_t mid = (n >> 3) << 2;  // 0 or 4
      a = (Load32(p) << 32) | Load32(p + mid);
      b = (Load32(p + n - 4) << 32) | Load32(p + n - 4 - mid);
    } else if (n > 0) {
      const auto* u = reinterpret_cast<const unsigned char*>(p);
      a = (std::uint64_t{u[0]} << 16) | (std::uint64_t{u[n >> 1]} << 8) | u[n - 1];
      b = 0;
    } else {
      a = b = 0;
    }
  } else {
    std::size_t i = n;
    while (i > 16) {
      seed = Fold(Load64(p) ^ kA, Load64(p + 8) ^ seed);
      p += 16;
      i -= 16;
    }
    a = Load64(p + i - 16);
    b = Load64(p + i - 8);
  }
  return Fold(a ^ kA ^ seed, b ^ kB);
}

}  // namespace

absl::StatusOr<BpeRanks> BpeRanks::Create(std::vector<std::string> tokens) {
  if (tokens.size() < 256) {
    return absl::InvalidArgumentError(absl::StrCat("vocabulary has ", tokens.size(), " tokens; needs the 256 bytes"));
  }
  if (tokens.size() > kRankMask) return absl::InvalidArgumentError("vocabulary too large (over 2^20 tokens)");
  BpeRanks r;
  std::size_t total = 0;
  for (const std::string& t : tokens) total += t.size();
  if (total >= std::numeric_limits<std::uint32_t>::max()) return absl::InvalidArgumentError("vocabulary too large");
  r.arena_.reserve(total);
  r.offsets_.reserve(tokens.size() + 1);
  r.offsets_.push_back(0);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (i < 256 && (tokens[i].size() != 1 || static_cast<unsigned char>(tokens[i][0]) != i)) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", i, " must be the single byte ", i));
    }
    if (tokens[i].empty()) return absl::InvalidArgumentError(absl::StrCat("rank ", i, " is empty"));
    r.arena_ += tokens[i];
    r.offsets_.push_back(static_cast<std::uint32_t>(r.arena_.size()));
  }
  std::size_t capacity = 1;
  while (capacity < 2 * tokens.size()) capacity <<= 1;
  r.slots_.assign(capacity, Slot{0, -1});
  r.mask_ = capacity - 1;
  for (std::int32_t rank = 0; rank < r.size(); ++rank) {
    const std::string_view bytes = r.Bytes(rank);
    const std::uint64_t h = HashBytes(bytes.data(), bytes.size());
    for (std::uint64_t idx = h & r.mask_;; idx = (idx + 1) & r.mask_) {
      Slot& slot = r.slots_[idx];
      if (slot.rank < 0) {
        slot = Slot{static_cast<std::uint32_t>(h), rank};
        break;
      }
      if (r.Bytes(slot.rank) == bytes) {
        return absl::InvalidArgumentError(absl::StrCat("ranks ", slot.rank, " and ", rank, " have the same bytes"));
      }
    }
  }
  // Every way a token splits into two tokens.
  std::vector<std::uint64_t> entries;
  for (std::int32_t rank = 256; rank < r.size(); ++rank) {
    const std::string_view bytes = r.Bytes(rank);
    for (std::size_t cut = 1; cut < bytes.size(); ++cut) {
      const std::int32_t left = r.Find(bytes.substr(0, cut));
      if (left < 0) continue;
      const std::int32_t right = r.Find(bytes.substr(cut));
      if (right >= 0) entries.push_back((PairKey(left, right) << kRankBits) | static_cast<std::uint64_t>(rank));
    }
  }
  // Load factor at most 2/3: the table is 4 MB for a 130k vocabulary, small
  // enough to stay in the last-level cache.
  std::size_t pair_capacity = 2;
  while (2 * pair_capacity < 3 * entries.size()) pair_capacity <<= 1;
  r.pairs_.assign(pair_capacity, kEmptyPair);
  r.pair_mask_ = pair_capacity - 1;
  r.pair_shift_ = 64 - std::countr_zero(pair_capacity);
  r.byte_pairs_.assign(256 * 256, -1);
  for (const std::uint64_t e : entries) {
    const std::uint64_t key = e >> kRankBits;
    if (key >> kRankBits < 256 && (key & kRankMask) < 256) {
      r.byte_pairs_[((key >> kRankBits) << 8) | (key & kRankMask)] = static_cast<std::int32_t>(e & kRankMask);
    }
    std::uint64_t idx = (key * 0x9E3779B97F4A7C15ull) >> r.pair_shift_;
    while (r.pairs_[idx] != kEmptyPair) idx = (idx + 1) & r.pair_mask_;
    r.pairs_[idx] = e;
  }
  return r;
}

std::int32_t BpeRanks::PairRank(std::int32_t left, std::int32_t right) const {
  const std::uint64_t key = PairKey(left, right);
  for (std::uint64_t idx = (key * 0x9E3779B97F4A7C15ull) >> pair_shift_;; idx = (idx + 1) & pair_mask_) {
    const std::uint64_t slot = pairs_[idx];
    if ((slot >> kRankBits) == key) return static_cast<std::int32_t>(slot & kRankMask);
    if (slot == kEmptyPair) return -1;
  }
}

std::int32_t BpeRanks::Find(std::string_view bytes) const {
  const std::uint64_t h = HashBytes(bytes.data(), bytes.size());
  const auto tag = static_cast<std::uint32_t>(h);
  for (std::uint64_t idx = h & mask_;; idx = (idx + 1) & mask_) {
    const Slot slot = slots_[idx];
    if (slot.rank < 0) return -1;
    if (slot.hash == tag) {
      const std::uint32_t begin = offsets_[slot.rank];
      const std::uint32_t len = offsets_[slot.rank + 1] - begin;
      if (len == bytes.size() && std::memcmp(arena_.data() + begin, bytes.data(), len) == 0) return slot.rank;
    }
  }
}

void BpeRanks::Encode(std::string_view piece, std::int32_t id_offset, std::vector<std::int32_t>* out) const {
  if (const std::int32_t rank = Find(piece); rank >= 0) {
    out->push_back(rank + id_offset);
  } else if (piece.size() <= BpeRanks::kScanMaxBytes) {
    MergeByScan(piece, id_offset, out);
  } else {
    MergeByHeap(piece, id_offset, out);
  }
}

// tiktoken's loop: part_rank[k] is the token of part k, pair_rank[k] the
// token parts k and k+1 would merge into. Each round merges the leftmost
// lowest-ranked pair.
void BpeRanks::MergeByScan(std::string_view piece, std::int32_t id_offset, std::vector<std::int32_t>* out) const {
  const std::size_t n = piece.size();
  SIROCCO_CHECK(n > 0 && n <= BpeRanks::kScanMaxBytes, "MergeByScan: piece size");
  std::int32_t part_rank[BpeRanks::kScanMaxBytes];
  std::int32_t pair_rank[BpeRanks::kScanMaxBytes];
  auto pair_of = [&](std::int32_t left, std::int32_t right) {
    const std::int32_t r = PairRank(left, right);
    return r < 0 ? kNoRank : r;
  };
  std::size_t parts = n;
  for (std::size_t k = 0; k < n; ++k) part_rank[k] = static_cast<unsigned char>(piece[k]);
  for (std::size_t k = 0; k + 1 < n; ++k) pair_rank[k] = BytePair(piece[k], piece[k + 1]);
  pair_rank[n - 1] = kNoRank;
  while (true) {
    std::int32_t best = kNoRank;
    std::size_t at = 0;
    for (std::size_t k = 0; k + 1 < parts; ++k) {
      if (pair_rank[k] < best) {
        best = pair_rank[k];
        at = k;
      }
    }
    if (best == kNoRank) break;
    // Part `at` absorbs part at+1.
    part_rank[at] = best;
    --parts;
    for (std::size_t k = at + 1; k < parts; ++k) {
      part_rank[k] = part_rank[k + 1];
      pair_rank[k] = pair_rank[k + 1];
    }
    pair_rank[at] = at + 1 < parts ? pair_of(best, part_rank[at + 1]) : kNoRank;
    if (at > 0) pair_rank[at - 1] = pair_of(part_rank[at - 1], best);
  }
  for (std::size_t k = 0; k < parts; ++k) out->push_back(part_rank[k] + id_offset);
}

// The same merges with a min-heap of (pair rank, start offset): offsets order
// parts left to right, so the heap's minimum is the scan's choice. Entries go
// stale when a neighbour merges; a popped entry counts only if its part is
// alive and still has that pair rank (a rank names one byte string, so an
// equal rank at the same start is the same pair).
void BpeRanks::MergeByHeap(std::string_view piece, std::int32_t id_offset, std::vector<std::int32_t>* out) const {
  const std::size_t n = piece.size();
  SIROCCO_CHECK(n > 0 && n < (std::size_t{1} << 32), "MergeByHeap: piece size");
  // Parts are named by their start offset; next[k] is the next part's start (n
  // at the end), prev[k] the previous one's (n at the front); a merged-away
  // part has part_rank -1. Buffers are reused across calls on this thread.
  struct Scratch {
    std::vector<std::uint32_t> next, prev;
    std::vector<std::int32_t> part_rank, pair_rank;
    std::vector<std::uint64_t> heap;
  };
  thread_local Scratch s;
  s.next.resize(n);
  s.prev.resize(n);
  s.part_rank.resize(n);
  s.pair_rank.resize(n);
  s.heap.clear();
  std::uint32_t* next = s.next.data();
  std::uint32_t* prev = s.prev.data();
  std::int32_t* part_rank = s.part_rank.data();
  std::int32_t* pair_rank = s.pair_rank.data();
  std::vector<std::uint64_t>& heap = s.heap;
  const std::greater<> later;  // std heap functions keep the max; this makes it the min
  auto push = [&](std::int32_t rank, std::size_t pos) {
    heap.push_back((static_cast<std::uint64_t>(rank) << 32) | pos);
    std::push_heap(heap.begin(), heap.end(), later);
  };
  auto pair_of = [&](std::int32_t left, std::int32_t right) {
    const std::int32_t r = PairRank(left, right);
    return r < 0 ? kNoRank : r;
  };
  for (std::size_t k = 0; k < n; ++k) {
    next[k] = static_cast<std::uint32_t>(k + 1);
    prev[k] = k == 0 ? static_cast<std::uint32_t>(n) : static_cast<std::uint32_t>(k - 1);
    part_rank[k] = static_cast<unsigned char>(piece[k]);
    pair_rank[k] = k + 1 < n ? BytePair(piece[k], piece[k + 1]) : kNoRank;
    if (pair_rank[k] != kNoRank) heap.push_back((static_cast<std::uint64_t>(pair_rank[k]) << 32) | k);
  }
  std::make_heap(heap.begin(), heap.end(), later);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const std::uint64_t top = heap.back();
    heap.pop_back();
    const auto rank = static_cast<std::int32_t>(top >> 32);
    const std::size_t k = top & 0xFFFFFFFFu;
    if (part_rank[k] < 0 || pair_rank[k] != rank) continue;
    const std::size_t j = next[k];
    part_rank[k] = rank;
    part_rank[j] = -1;
    next[k] = next[j];
    if (next[j] < n) prev[next[j]] = static_cast<std::uint32_t>(k);
    pair_rank[k] = next[k] < n ? pair_of(rank, part_rank[next[k]]) : kNoRank;
    if (pair_rank[k] != kNoRank) push(pair_rank[k], k);
    if (prev[k] < n) {
      const std::size_t p = prev[k];
      pair_rank[p] = pair_of(part_rank[p], rank);
      if (pair_rank[p] != kNoRank) push(pair_rank[p], p);
    }
  }
  for (std::size_t k = 0; k < n; k = next[k]) out->push_back(part_rank[k] + id_offset);
}

}  // namespace sirocco::text
