// Device-side sampling (sampling.h): one block of kThreads threads per row,
// walking the CPU sampler's steps (engine/sampler.cc) in its order, each step
// a few block-wide passes over vocab-sized arrays in the row's workspace:
//
//   1. penalised logits: the raw row copied, then the row's seen tokens
//      overwritten with their penalised values;
//   2. the maximum (NaN ignored) and the argmax (the greedy choice, and the
//      fallback of a row without a finite maximum);
//   3. the draw: weights exp((v - max) / T), the argmax's exactly 1. With no
//      filter, a chunked prefix scan in id order finds the first token whose
//      cumulative weight exceeds u * total. With filters, a weight floor that
//      every kept token clears (min-p's threshold, or a power of two from a
//      histogram of binary exponents, as the CPU's NucleusFloor) selects the
//      candidates; a bitonic sort puts them in the CPU's order (the 64-bit key
//      packs weight and id, so the order is total and equal to ByWeightDesc),
//      and the top-k, min-p and top-p cuts and the CDF walk are prefix scans
//      over that order;
//   4. logprobs: log-sum-exp in double, and the top-n from per-thread sorted
//      lists merged by n block-wide argmax rounds.
//
// Rounding follows the CPU: penalties, the shift and the temperature division
// are float operations with explicit round-to-nearest intrinsics (so nvcc
// cannot contract them into FMAs the host does not use); every exp is
// evaluated in double and rounded once to float, i.e. the correctly rounded
// result, which glibc's expf (within 0.502 ulp) also returns except for rare
// one-ulp cases; every sum is double. Only the association order of the sums
// differs from the CPU's sequential loops, by ~1e-16 relative.
//
// What would make it faster, in order of payoff: replacing the candidate sort
// by a radix select over (weight bits, id) for the cuts and the draw (the sort
// of a flat row's ~10^5 candidates dominates today); splitting a row over
// several blocks when the batch has fewer rows than SMs; computing the logprob
// sum from the weights when T == 1; warp-aggregated histogram atomics; and an
// exp evaluated in float that still rounds correctly.
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/sampling.h"

namespace sirocco::kernels::cuda {
namespace {

using internal::Aligned16;
using internal::BlockMax;
using internal::CheckMatrix;
using internal::CheckPointer;
using internal::Invalid;
using internal::kFullMask;
using internal::kWarpSize;
using internal::LaunchStatus;
using internal::RowPtr;

using Key = unsigned long long;  // (~weight bits) << 32 | id: ascending = weight desc, id asc

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kMaxVocab = 1 << 24;
// Prefix scans: each thread owns kScanItems consecutive entries of a chunk.
constexpr int kScanItems = 4;
constexpr int kScanChunk = kThreads * kScanItems;
// Bitonic merges up to this many keys run in shared memory (32 KiB).
constexpr int kSortTile = 4096;
// Binary-exponent bins of weights in [0, 1]: bin b holds [2^-b, 2^(1-b)),
// bin 127 the subnormals and zeros (as the CPU's NucleusFloor).
constexpr int kExponentBins = 128;
// The CPU's kTopPSlack (engine/sampler.cc): top-p's target is
// top_p * mass * (1 - kTopPSlack).
constexpr double kTopPSlack = 1e-6;
// The exponent-bin masses are summed with atomics, in no fixed order, so the
// nucleus floor is chosen against a target raised by far more than that
// rounding (~1e-12): the floor can only come out lower (more candidates, the
// same kept set), never higher.
constexpr double kFloorMargin = 1e-9;

static_assert(kThreads % kWarpSize == 0 && kWarps == kWarpSize, "block reductions assume 32 warps of 32 lanes");
static_assert(kSortTile % 2 == 0 && (kSortTile & (kSortTile - 1)) == 0, "the sort tile is a power of two");

// Byte offsets of one row's arrays inside the workspace.
struct RowLayout {
  std::size_t row_bytes = 0;       // distance between rows, a multiple of 256
  std::size_t weights_offset = 0;  // float[vocab]; the penalised logits, float[vocab], are at 0
  std::size_t keys_offset = 0;     // Key[sort capacity]
};

std::size_t AlignUp(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

RowLayout LayoutFor(int vocab) {
  const std::size_t floats = AlignUp(static_cast<std::size_t>(vocab), 64);  // 256-byte multiples
  std::size_t sort_capacity = 1;
  while (sort_capacity < static_cast<std::size_t>(vocab)) sort_capacity *= 2;
  RowLayout layout;
  layout.weights_offset = floats * sizeof(float);
  layout.keys_offset = 2 * floats * sizeof(float);
  layout.row_bytes = AlignUp(layout.keys_offset + sort_capacity * sizeof(Key), 256);
  return layout;
}

// ---------------------------------------------------------------------------
// Block-wide primitives for blocks of exactly kThreads threads. Each is called
// by every thread, returns the same value to all of them, and leaves its
// shared scratch free for the next call (a trailing barrier).

struct Candidate {
  float value;
  int index;  // -1: none
};

struct SampleShared {
  Key tile[kSortTile];
  double dscratch[kWarpSize];
  float fscratch[kWarpSize];
  int iscratch[kWarpSize];
  Candidate cscratch[kWarpSize];
  double bin_mass[kExponentBins];
  int bin_count[kExponentBins];
  int num_candidates;
  double floor;
};

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MinOp {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct MaxOp {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};

// Butterfly reductions: at every step lanes L and L ^ offset combine the same
// two values, and + is commutative, so all lanes (and all threads) end with
// bit-identical results, and the order is fixed for a given block size.
template <typename T, typename Op>
__device__ T BlockReduce(T v, T identity, Op op, T* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = lane < kWarps ? scratch[lane] : identity;
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    total = op(total, __shfl_xor_sync(kFullMask, total, offset));
  __syncthreads();
  return total;
}

// Whether `b` beats `a`: the larger value, then the lower index (the CPU's
// strict '>' scans in id order). Never called with NaN values.
__device__ __forceinline__ bool Beats(const Candidate& b, const Candidate& a) {
  if (b.index < 0) return false;
  if (a.index < 0) return true;
  return b.value > a.value || (b.value == a.value && b.index < a.index);
}

__device__ __forceinline__ Candidate WarpArgmax(Candidate c) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const Candidate other{__shfl_xor_sync(kFullMask, c.value, offset), __shfl_xor_sync(kFullMask, c.index, offset)};
    if (Beats(other, c)) c = other;
  }
  return c;
}

__device__ Candidate BlockArgmax(Candidate c, Candidate* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  c = WarpArgmax(c);
  if (lane == 0) scratch[warp] = c;
  __syncthreads();
  c = lane < kWarps ? scratch[lane] : Candidate{0.0f, -1};
  c = WarpArgmax(c);
  __syncthreads();
  return c;
}

// The sum of v over the threads before this one; *total = the sum over all.
// A thread's exclusive prefix is the previous lane's inclusive one, never its
// own inclusive prefix minus its value, which would not be exact.
__device__ double BlockExclusiveScan(double v, double* scratch, double* total) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  double inclusive = v;
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const double up = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  double exclusive = __shfl_up_sync(kFullMask, inclusive, 1);
  if (lane == 0) exclusive = 0.0;
  if (lane == kWarpSize - 1) scratch[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    double warps = scratch[lane];  // kWarps == kWarpSize: one warp total per lane
#pragma unroll
    for (int offset = 1; offset < kWarpSize; offset *= 2) {
      const double up = __shfl_up_sync(kFullMask, warps, offset);
      if (lane >= offset) warps += up;
    }
    scratch[lane] = warps;  // inclusive over warps; every lane read its slot before the shuffles
  }
  __syncthreads();
  const double before = warp > 0 ? scratch[warp - 1] : 0.0;
  *total = scratch[kWarps - 1];
  __syncthreads();
  return before + exclusive;
}

// ---------------------------------------------------------------------------
// The CPU's per-token arithmetic.

// exp of a float as the float nearest the true value (see the file comment).
__device__ __forceinline__ float ExpFloat(float x) { return __double2float_rn(exp(static_cast<double>(x))); }

// SamplerState::Penalise: the repetition penalty on the raw logit, then the
// additive ones for tokens of the output.
__device__ __forceinline__ float Penalise(float logit, int output_count, const SampleRowParams& prm) {
  const float rep = prm.repetition_penalty;
  if (rep != 1.0f) logit = logit > 0.0f ? __fdiv_rn(logit, rep) : __fmul_rn(logit, rep);
  if (output_count > 0) {
    logit = __fsub_rn(logit, __fmul_rn(prm.frequency_penalty, static_cast<float>(output_count)));
    logit = __fsub_rn(logit, prm.presence_penalty);
  }
  return logit;
}

// Unnormalised probability; NaN and -inf logits get 0.
__device__ __forceinline__ float Weight(float v, float max_logit, float temperature) {
  return v > -INFINITY ? ExpFloat(__fdiv_rn(__fsub_rn(v, max_logit), temperature)) : 0.0f;
}

__device__ __forceinline__ double TopPTarget(float top_p, double mass) {
  return static_cast<double>(top_p) * mass * (1.0 - kTopPSlack);
}

// Weights are in [0, 1], so their bits order like their values.
__device__ __forceinline__ Key MakeKey(float w, int id) {
  return (static_cast<Key>(~__float_as_uint(w)) << 32) | static_cast<unsigned>(id);
}
__device__ __forceinline__ float KeyWeight(Key k) { return __uint_as_float(~static_cast<unsigned>(k >> 32)); }
__device__ __forceinline__ int KeyId(Key k) { return static_cast<int>(k & 0xffffffffull); }

__device__ __forceinline__ int ExponentBin(float w) {
  constexpr unsigned kLastBin = kExponentBins - 1;  // also the biased exponent of 1.0f
  const unsigned biased = __float_as_uint(w) >> 23;
  return static_cast<int>(kLastBin - (biased < kLastBin ? biased : kLastBin));
}

// ---------------------------------------------------------------------------
// Scans over a walk order: ids ascending, or the sorted candidates.

struct IdOrder {
  const float* weights;
  __device__ float operator()(int j) const { return weights[j]; }
};
struct SortedOrder {
  const Key* keys;
  __device__ float operator()(int j) const { return KeyWeight(keys[j]); }
};

struct ScanHit {
  int index;     // the first position whose cumulative weight passes the target; -1: none
  double total;  // the cumulative weight of all n positions, when index is -1
};

// Walks positions 0..n-1 of `weight_at` accumulating weight in double and
// returns the first position with positive weight whose cumulative weight is
// > target (>= when at_least). A position of weight 0 never passes: on the CPU
// it adds nothing, so it can never be the first to pass.
template <typename WeightAt>
__device__ ScanHit ScanFind(WeightAt weight_at, int n, double target, bool at_least, SampleShared& sh) {
  double carry = 0.0;
  for (int start = 0; start < n; start += kScanChunk) {
    const int first = start + static_cast<int>(threadIdx.x) * kScanItems;
    float w[kScanItems];
    double local = 0.0;
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) {
      w[i] = first + i < n ? weight_at(first + i) : 0.0f;
      local += w[i];
    }
    double chunk_total = 0.0;
    double cumulative = carry + BlockExclusiveScan(local, sh.dscratch, &chunk_total);
    int hit = INT_MAX;
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) {
      cumulative += w[i];
      const bool passed = at_least ? cumulative >= target : cumulative > target;
      if (hit == INT_MAX && w[i] > 0.0f && passed) hit = first + i;
    }
    hit = BlockReduce(hit, INT_MAX, MinOp{}, sh.iscratch);
    if (hit != INT_MAX) return ScanHit{hit, 0.0};
    carry += chunk_total;
  }
  return ScanHit{-1, carry};
}

// How many of the first n sorted candidates satisfy `pred`, a condition that
// holds on a prefix of the order (a weight threshold).
template <typename Pred>
__device__ int CountPrefix(const Key* keys, int n, Pred pred, SampleShared& sh) {
  int count = 0;
  for (int j = threadIdx.x; j < n; j += kThreads) count += pred(KeyWeight(keys[j])) ? 1 : 0;
  return BlockReduce(count, 0, SumOp{}, sh.iscratch);
}

struct AtLeast {
  float threshold;
  __device__ bool operator()(float w) const { return w >= threshold; }
};
struct Positive {
  __device__ bool operator()(float w) const { return w > 0.0f; }
};

// ---------------------------------------------------------------------------
// Candidate floors: weights every kept token has, so that only tokens at or
// above them are sorted.

// The k heaviest tokens all weigh at least 2^-b for the first bin b at which
// bins 0..b hold k tokens; 0 (everything) when only bin 127 would get there.
__device__ double CountFloor(const float* weights, int vocab, int k, SampleShared& sh) {
  for (int b = threadIdx.x; b < kExponentBins; b += kThreads) sh.bin_count[b] = 0;
  __syncthreads();
  for (int id = threadIdx.x; id < vocab; id += kThreads) atomicAdd(&sh.bin_count[ExponentBin(weights[id])], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    double floor = 0.0;
    int cumulative = 0;
    for (int b = 0; b < kExponentBins - 1; ++b) {
      cumulative += sh.bin_count[b];
      if (cumulative >= k) {
        floor = ldexp(1.0, -b);
        break;
      }
    }
    sh.floor = floor;
  }
  __syncthreads();
  const double floor = sh.floor;
  __syncthreads();
  return floor;
}

// The CPU's NucleusFloor: every token of the top-p nucleus weighs at least
// 2^-b for the first bin b at which bins 0..b hold the target mass.
__device__ double MassFloor(const float* weights, int vocab, double target, SampleShared& sh) {
  for (int b = threadIdx.x; b < kExponentBins; b += kThreads) sh.bin_mass[b] = 0.0;
  __syncthreads();
  for (int id = threadIdx.x; id < vocab; id += kThreads) {
    const float w = weights[id];
    if (w > 0.0f) atomicAdd(&sh.bin_mass[ExponentBin(w)], static_cast<double>(w));
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const double raised = target * (1.0 + kFloorMargin);
    double floor = 0.0;
    double cumulative = 0.0;
    for (int b = 0; b < kExponentBins - 1; ++b) {
      cumulative += sh.bin_mass[b];
      if (cumulative >= raised) {
        floor = ldexp(1.0, -b);
        break;
      }
    }
    sh.floor = floor;
  }
  __syncthreads();
  const double floor = sh.floor;
  __syncthreads();
  return floor;
}

// Writes the keys of every token with weight >= floor to keys[0, count), in
// no particular order (the sort makes it total), and returns count.
__device__ int GatherCandidates(const float* weights, int vocab, double floor, Key* keys, SampleShared& sh) {
  const int lane = threadIdx.x % kWarpSize;
  if (threadIdx.x == 0) sh.num_candidates = 0;
  __syncthreads();
  for (int base = 0; base < vocab; base += kThreads) {  // whole warps iterate together for the ballot
    const int id = base + static_cast<int>(threadIdx.x);
    const float w = id < vocab ? weights[id] : 0.0f;
    const bool keep = id < vocab && static_cast<double>(w) >= floor;
    const unsigned mask = __ballot_sync(kFullMask, keep);
    if (mask == 0) continue;
    const int leader = __ffs(mask) - 1;
    int start = 0;
    if (lane == leader) start = atomicAdd(&sh.num_candidates, __popc(mask));
    start = __shfl_sync(kFullMask, start, leader);
    if (keep) keys[start + __popc(mask & ((1u << lane) - 1u))] = MakeKey(w, id);
  }
  __syncthreads();
  const int count = sh.num_candidates;
  __syncthreads();
  return count;
}

// ---------------------------------------------------------------------------
// Bitonic sort of keys[0, len) ascending, len a power of two. The pair of
// stage (k, j) is (i, i + j) for every i with bit j clear, ascending where
// bit k of i is clear. Stages with j < tile stay inside aligned tiles, so they
// run in shared memory; only the wider ones touch global memory.

__device__ __forceinline__ int PairLow(int q, int j) { return ((q & ~(j - 1)) << 1) | (q & (j - 1)); }

__device__ __forceinline__ void CompareExchange(Key* data, int i, int l, bool ascending) {
  const Key a = data[i];
  const Key b = data[l];
  if ((a > b) == ascending) {
    data[i] = b;
    data[l] = a;
  }
}

// Merges k = k_first, 2 k_first, ..., k_last on the tile of `tile_len` keys
// at global position `base`, staged through shared memory: for each, the
// stages j < tile_len (all of them when k <= tile_len).
__device__ void TileMerges(Key* keys, int base, int tile_len, int k_first, int k_last, Key* tile) {
  for (int i = threadIdx.x; i < tile_len; i += kThreads) tile[i] = keys[base + i];
  __syncthreads();
  for (int k = k_first; k <= k_last; k *= 2) {
    for (int j = (k < tile_len ? k : tile_len) / 2; j > 0; j /= 2) {
      for (int q = threadIdx.x; q < tile_len / 2; q += kThreads) {
        const int i = PairLow(q, j);
        CompareExchange(tile, i, i + j, ((base + i) & k) == 0);
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < tile_len; i += kThreads) keys[base + i] = tile[i];
  __syncthreads();
}

__device__ void SortKeys(Key* keys, int len, Key* tile) {
  const int tile_len = len < kSortTile ? len : kSortTile;
  // Every tile sorted, in alternating directions when there are several (the
  // direction of merge k == tile_len is bit tile_len of the tile's base).
  for (int base = 0; base < len; base += tile_len) TileMerges(keys, base, tile_len, 2, tile_len, tile);
  // Merges wider than a tile: global stages down to j == tile_len, then the
  // rest of the merge tile by tile.
  for (int k = 2 * tile_len; k <= len; k *= 2) {
    for (int j = k / 2; j >= tile_len; j /= 2) {
      for (int q = threadIdx.x; q < len / 2; q += kThreads) {
        const int i = PairLow(q, j);
        CompareExchange(keys, i, i + j, (i & k) == 0);
      }
      __syncthreads();
    }
    for (int base = 0; base < len; base += tile_len) TileMerges(keys, base, tile_len, k, k, tile);
  }
}

// ---------------------------------------------------------------------------
// The draw (SamplerState::Draw after its max check): max_logit is finite.

__device__ int Draw(const float* pen, float* weights, Key* keys, int vocab, float max_logit, const SampleRowParams& prm,
                    SampleShared& sh) {
  double total = 0.0;
  int last_positive = -1;
  for (int id = threadIdx.x; id < vocab; id += kThreads) {
    const float w = Weight(pen[id], max_logit, prm.temperature);
    weights[id] = w;
    total += w;
    if (w > 0.0f) last_positive = id;
  }
  // The reductions' barriers also publish `weights` to the whole block.
  total = BlockReduce(total, 0.0, SumOp{}, sh.dscratch);
  last_positive = BlockReduce(last_positive, -1, MaxOp{}, sh.iscratch);

  const bool top_k_on = prm.top_k > 0 && prm.top_k < vocab;
  const bool top_p_on = prm.top_p < 1.0f;
  const bool min_p_on = prm.min_p > 0.0f;
  if (!top_k_on && !top_p_on && !min_p_on) {
    // The whole vocabulary in id order. Rounding can leave the cumulative a
    // hair under u * total; then the CPU returns the last token with weight.
    const ScanHit hit = ScanFind(IdOrder{weights}, vocab, prm.u * total, false, sh);
    return hit.index >= 0 ? hit.index : (last_positive >= 0 ? last_positive : 0);
  }

  // With top-k on, top-k alone fixes the candidates: its mass (over all k,
  // before min-p) is what top-p is measured against.
  double floor = 0.0;
  if (top_k_on) {
    floor = CountFloor(weights, vocab, prm.top_k, sh);
  } else {
    if (min_p_on) floor = prm.min_p;
    if (top_p_on) floor = fmax(floor, MassFloor(weights, vocab, TopPTarget(prm.top_p, total), sh));
  }
  // The argmax weighs 1 >= any floor, so there is at least one candidate.
  const int num_candidates = GatherCandidates(weights, vocab, floor, keys, sh);
  int len = 1;
  while (len < num_candidates) len *= 2;
  for (int j = num_candidates + static_cast<int>(threadIdx.x); j < len; j += kThreads) keys[j] = ~Key{0};
  __syncthreads();
  SortKeys(keys, len, sh.tile);

  const SortedOrder sorted{keys};
  int n = num_candidates;
  double top_p_mass = total;
  if (top_k_on) {
    n = prm.top_k;  // the floor keeps at least k candidates
    top_p_mass = ScanFind(sorted, n, INFINITY, false, sh).total;
    if (min_p_on) n = CountPrefix(keys, n, AtLeast{prm.min_p}, sh);
  }
  if (top_p_on) {
    // The shortest prefix reaching the target; n stays when min-p cut shorter.
    const ScanHit cut = ScanFind(sorted, n, TopPTarget(prm.top_p, top_p_mass), true, sh);
    if (cut.index >= 0) n = cut.index + 1;
  }
  const double kept_mass = ScanFind(sorted, n, INFINITY, false, sh).total;
  const ScanHit pick = ScanFind(sorted, n, prm.u * kept_mass, false, sh);
  int j = pick.index;
  if (j < 0) {
    // Weights descend, so the last kept token with weight ends the positives.
    const int positives = CountPrefix(keys, n, Positive{}, sh);
    j = positives > 0 ? positives - 1 : 0;
  }
  return KeyId(keys[j]);
}

// ---------------------------------------------------------------------------
// Logprobs (SamplerState::FillLogprobs): the n best penalised logits (NaN
// excluded, -inf included, ties lower id first) minus the log-normaliser.
// Thread 0 writes all kSampleMaxLogprobs slots of the row.

__device__ void TopLogprobs(const float* pen, int vocab, int want, double log_normaliser, std::int32_t* ids_out,
                            float* logprobs_out, SampleShared& sh) {
  // This thread's best `want` of the ids it owns, best first. Its ids arrive
  // ascending, so inserting after equal values keeps lower ids first.
  float values[kSampleMaxLogprobs];
  int ids[kSampleMaxLogprobs];
  int have = 0;
  if (want > 0) {
    for (int id = threadIdx.x; id < vocab; id += kThreads) {
      const float v = pen[id];
      if (isnan(v) || (have == want && !(v > values[have - 1]))) continue;
      int pos = have < want - 1 ? have : want - 1;
      while (pos > 0 && values[pos - 1] < v) {
        values[pos] = values[pos - 1];
        ids[pos] = ids[pos - 1];
        --pos;
      }
      values[pos] = v;
      ids[pos] = id;
      have = have + 1 < want ? have + 1 : want;
    }
  }
  // Each round takes the best head of all the threads' lists. The global n
  // best are each among their owner's n best, so n rounds find them in order.
  int head = 0;
  int filled = 0;
  for (; filled < want; ++filled) {
    const Candidate mine = head < have ? Candidate{values[head], ids[head]} : Candidate{0.0f, -1};
    const Candidate best = BlockArgmax(mine, sh.cscratch);
    if (best.index < 0) break;  // fewer than `want` non-NaN logits
    if (mine.index == best.index) ++head;
    if (threadIdx.x == 0 && ids_out != nullptr) {
      ids_out[filled] = best.index;
      logprobs_out[filled] = static_cast<float>(static_cast<double>(best.value) - log_normaliser);
    }
  }
  if (threadIdx.x == 0 && ids_out != nullptr) {
    for (int slot = filled; slot < kSampleMaxLogprobs; ++slot) {
      ids_out[slot] = -1;
      logprobs_out[slot] = 0.0f;
    }
  }
}

// ---------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads, 1) SampleKernel(SampleBatchParams p, RowLayout layout) {
  __shared__ SampleShared sh;
  const int row = blockIdx.x;
  const int vocab = p.vocab;
  const SampleRowParams prm = p.params[row];
  const float* logits = RowPtr(p.logits, row, p.ld);
  char* ws = static_cast<char*>(p.workspace) + static_cast<std::size_t>(row) * layout.row_bytes;
  float* pen = reinterpret_cast<float*>(ws);
  float* weights = reinterpret_cast<float*>(ws + layout.weights_offset);
  Key* keys = reinterpret_cast<Key*>(ws + layout.keys_offset);

  // 1. Penalised logits. Seen tokens are distinct within a row, so each id
  // is overwritten by at most one thread, after the barrier ends the copy.
  for (int id = threadIdx.x; id < vocab; id += kThreads) pen[id] = logits[id];
  if (p.seen_offsets != nullptr) {
    const int begin = p.seen_offsets[row];
    const int end = p.seen_offsets[row + 1];
    __syncthreads();
    for (int s = begin + static_cast<int>(threadIdx.x); s < end; s += kThreads) {
      const int token = p.seen_tokens[s];
      if (token >= 0 && token < vocab) pen[token] = Penalise(logits[token], p.seen_counts[s], prm);
    }
  }
  __syncthreads();

  // 2. fmaxf ignores NaN as std::max(max, v) does; the argmax scan's strict
  // '>' from -inf never takes NaN or -inf, and a row with neither gives 0.
  float max_logit = -INFINITY;
  Candidate best{-INFINITY, -1};
  for (int id = threadIdx.x; id < vocab; id += kThreads) {
    const float v = pen[id];
    max_logit = fmaxf(max_logit, v);
    if (v > best.value) best = Candidate{v, id};
  }
  max_logit = BlockMax(max_logit, sh.fscratch);
  best = BlockArgmax(best, sh.cscratch);

  // 3. The token: greedy below the greedy temperature, and for a row whose
  // maximum is not finite (nothing to normalise by).
  int token = best.index >= 0 ? best.index : 0;
  if (!(prm.temperature < kSampleGreedyTemperature) && isfinite(max_logit)) {
    token = Draw(pen, weights, keys, vocab, max_logit, prm, sh);
  }
  if (threadIdx.x == 0) p.tokens[row] = token;

  // 4. Logprobs at temperature 1, from the same maximum.
  std::int32_t* top_ids =
      p.top_ids != nullptr ? p.top_ids + static_cast<std::size_t>(row) * kSampleMaxLogprobs : nullptr;
  float* top_logprobs =
      p.top_logprobs != nullptr ? p.top_logprobs + static_cast<std::size_t>(row) * kSampleMaxLogprobs : nullptr;
  if (prm.logprobs < 0) {
    if (threadIdx.x == 0) {
      if (p.logprob != nullptr) p.logprob[row] = 0.0f;
      for (int slot = 0; top_ids != nullptr && slot < kSampleMaxLogprobs; ++slot) {
        top_ids[slot] = -1;
        top_logprobs[slot] = 0.0f;
      }
    }
    return;
  }
  double sum = 0.0;
  for (int id = threadIdx.x; id < vocab; id += kThreads) {
    const float v = pen[id];
    if (v > -INFINITY) sum += ExpFloat(__fsub_rn(v, max_logit));
  }
  sum = BlockReduce(sum, 0.0, SumOp{}, sh.dscratch);
  const double log_normaliser = static_cast<double>(max_logit) + log(sum);
  if (threadIdx.x == 0 && p.logprob != nullptr) {
    p.logprob[row] = static_cast<float>(static_cast<double>(pen[token]) - log_normaliser);
  }
  int want = prm.logprobs < vocab ? prm.logprobs : vocab;
  if (want > kSampleMaxLogprobs) want = kSampleMaxLogprobs;  // validated on the host; kept in bounds regardless
  TopLogprobs(pen, vocab, want, log_normaliser, top_ids, top_logprobs, sh);
}

}  // namespace

std::size_t SamplingWorkspaceBytes(int rows, int vocab) {
  if (rows < 0 || vocab < 1 || vocab > kMaxVocab) return 0;
  return static_cast<std::size_t>(rows) * LayoutFor(vocab).row_bytes;
}

absl::Status Sample(const SampleBatchParams& p, Stream stream) {
  constexpr const char* kOp = "cuda::Sample";
  if (p.rows < 0) return Invalid(kOp, "rows must be >= 0, got " + std::to_string(p.rows));
  if (p.vocab < 1 || p.vocab > kMaxVocab) {
    return Invalid(kOp, "vocab must be in [1, " + std::to_string(kMaxVocab) + "], got " + std::to_string(p.vocab));
  }
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "logits", p.rows, p.vocab, p.logits, p.ld));
  if (p.rows == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "params", p.params));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "tokens", p.tokens));
  if (p.seen_offsets != nullptr) {
    SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "seen_tokens", p.seen_tokens));
    SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "seen_counts", p.seen_counts));
  }
  if ((p.top_ids == nullptr) != (p.top_logprobs == nullptr)) {
    return Invalid(kOp, "top_ids and top_logprobs must be both set or both null");
  }
  const std::size_t need = SamplingWorkspaceBytes(p.rows, p.vocab);
  if (p.workspace_bytes < need) {
    return Invalid(
        kOp, "workspace of " + std::to_string(p.workspace_bytes) + " bytes < the " + std::to_string(need) + " needed");
  }
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "workspace", p.workspace));
  if (!Aligned16(p.workspace)) return Invalid(kOp, "workspace must be 16-byte aligned");
  SampleKernel<<<p.rows, kThreads, 0, stream>>>(p, LayoutFor(p.vocab));
  return LaunchStatus(kOp);
}

}  // namespace sirocco::kernels::cuda
