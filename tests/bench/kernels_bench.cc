// Kernel throughput per backend, next to baselines in the same binary:
//   * gemm_nt at model shapes, in Gflop/s, next to plain cblas_sgemm;
//   * rms_norm, silu_mul, axpy in GB/s (bytes read + written), next to a
//     memcpy moving the same number of bytes (STREAM-style);
//   * mla_attention decode in GB/s of latent cache read (and Gflop/s).
// Rate counters print as "<name>=<value>/s": "Gflop=45/s" is 45 Gflop/s.
//
// Sizes are kept small so that the whole binary runs in well under a minute
// with --benchmark_min_time=0.05; the scalar reference skips the shapes where
// one iteration would take seconds.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/kernels.h"

namespace sirocco::kernels {
namespace {

std::vector<float> RandomVector(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void SetRate(benchmark::State& state, const char* name, double per_iteration) {
  state.counters[name] = benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

// One iteration of the reference above this many flops would take ~0.3 s.
constexpr double kRefFlopLimit = 3e8;

// ---------------------------------------------------------------------------
// gemm_nt: y = x W^T with W[n, k]. The model's 4096x4096 and 2048x4096
// projections are benchmarked full size for decode (m = 1, memory-bound) and
// scaled down to 1024x1024 / 512x1024 for batches, to bound the run time.

struct GemmShape {
  int m;
  int n;
  int k;
};
constexpr GemmShape kGemmShapes[] = {
    {1, 4096, 4096}, {1, 2048, 4096},   {1, 1024, 1024},  {16, 1024, 1024},
    {16, 512, 1024}, {128, 1024, 1024}, {128, 512, 1024},
};

double GemmFlops(const GemmShape& s) { return 2.0 * s.m * s.n * s.k; }

// gemm_nt of `table`, or plain cblas_sgemm when `table` is null.
void BM_GemmNt(benchmark::State& state, const KernelTable* table, GemmShape s) {
  const std::vector<float> a = RandomVector(static_cast<std::size_t>(s.m) * s.k, 1);
  const std::vector<float> b = RandomVector(static_cast<std::size_t>(s.n) * s.k, 2);
  std::vector<float> c(static_cast<std::size_t>(s.m) * s.n);
  for (auto _ : state) {
    if (table != nullptr) {
      table->gemm_nt(s.m, s.n, s.k, a.data(), s.k, b.data(), s.k, 0.0f, c.data(), s.n);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.m, s.n, s.k, 1.0f, a.data(), s.k, b.data(), s.k, 0.0f,
                  c.data(), s.n);
    }
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  SetRate(state, "Gflop", GemmFlops(s) * 1e-9);
}

// ---------------------------------------------------------------------------
// Streaming ops over 4 MiB arrays (past L2), and memcpy baselines moving the
// same bytes.

constexpr int kRows = 256;
constexpr int kDim = 4096;
constexpr std::size_t kElems = static_cast<std::size_t>(kRows) * kDim;
constexpr double kArrayBytes = static_cast<double>(kElems) * sizeof(float);

void BM_RmsNorm(benchmark::State& state, const KernelTable* table) {
  const std::vector<float> x = RandomVector(kElems, 3);
  const std::vector<float> w = RandomVector(kDim, 4);
  std::vector<float> y(kElems);
  for (auto _ : state) {
    table->rms_norm(kRows, kDim, x.data(), kDim, w.data(), 1e-5f, y.data(), kDim);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  SetRate(state, "GB", 2 * kArrayBytes * 1e-9);  // read x, write y
}

void BM_SiluMul(benchmark::State& state, const KernelTable* table) {
  const std::vector<float> gate = RandomVector(kElems, 5);
  const std::vector<float> up = RandomVector(kElems, 6);
  std::vector<float> out(kElems);
  for (auto _ : state) {
    table->silu_mul(kRows, kDim, gate.data(), kDim, up.data(), kDim, out.data(), kDim);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  SetRate(state, "GB", 3 * kArrayBytes * 1e-9);  // read gate, up; write out
}

void BM_Axpy(benchmark::State& state, const KernelTable* table) {
  const std::vector<float> x = RandomVector(kElems, 7);
  std::vector<float> y = RandomVector(kElems, 8);
  for (auto _ : state) {
    table->axpy(static_cast<int>(kElems), 1e-3f, x.data(), y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  SetRate(state, "GB", 3 * kArrayBytes * 1e-9);  // read x, y; write y
}

// memcpy of bytes / 2: reads and writes `bytes` in all.
void BM_Memcpy(benchmark::State& state, double bytes) {
  const std::size_t half = static_cast<std::size_t>(bytes / 2);
  std::vector<char> src(half, 1);
  std::vector<char> dst(half);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), half);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  SetRate(state, "GB", bytes * 1e-9);
}

// ---------------------------------------------------------------------------
// mla_attention decode: one token per sequence, Mistral Small 4 shapes.

constexpr int kMlaHeads = 32;
constexpr int kMlaRank = 256;
constexpr int kMlaRope = 64;
constexpr int kMlaBlock = 16;

void BM_MlaDecode(benchmark::State& state, const KernelTable* table, int queries, int ctx) {
  const int entry = kMlaRank + kMlaRope;
  const int blocks_per_seq = (ctx + kMlaBlock - 1) / kMlaBlock;
  const int num_blocks = queries * blocks_per_seq;
  // Sequences own shuffled blocks, as after a while of serving.
  std::vector<std::int32_t> ids(num_blocks);
  for (int b = 0; b < num_blocks; ++b) ids[b] = b;
  std::mt19937 rng(9);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<const std::int32_t*> tables(queries);
  for (int i = 0; i < queries; ++i) tables[i] = ids.data() + i * blocks_per_seq;
  const std::vector<std::int32_t> ctx_lens(queries, ctx);
  const std::vector<float> cache = RandomVector(static_cast<std::size_t>(num_blocks) * kMlaBlock * entry, 10);
  const std::vector<float> q_lat = RandomVector(static_cast<std::size_t>(queries) * kMlaHeads * kMlaRank, 11);
  const std::vector<float> q_rope = RandomVector(static_cast<std::size_t>(queries) * kMlaHeads * kMlaRope, 12);
  std::vector<float> out(static_cast<std::size_t>(queries) * kMlaHeads * kMlaRank);

  MlaAttentionParams p;
  p.num_queries = queries;
  p.num_heads = kMlaHeads;
  p.kv_rank = kMlaRank;
  p.rope_dim = kMlaRope;
  p.block_size = kMlaBlock;
  p.q_lat = q_lat.data();
  p.q_rope = q_rope.data();
  p.cache = cache.data();
  p.block_tables = tables.data();
  p.ctx_lens = ctx_lens.data();
  p.scale = 0.0625f;
  p.out = out.data();
  for (auto _ : state) {
    table->mla_attention(p);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double entries = static_cast<double>(queries) * ctx;
  SetRate(state, "GB", entries * entry * sizeof(float) * 1e-9);
  SetRate(state, "Gflop", entries * kMlaHeads * 2.0 * (kMlaRank + kMlaRope + kMlaRank) * 1e-9);
}

double MlaFlops(int queries, int ctx) {
  return static_cast<double>(queries) * ctx * kMlaHeads * 2.0 * (2 * kMlaRank + kMlaRope);
}

// ---------------------------------------------------------------------------

std::string Shape(const GemmShape& s) {
  return "/m:" + std::to_string(s.m) + "/n:" + std::to_string(s.n) + "/k:" + std::to_string(s.k);
}

// Every benchmark is timed by the wall clock: OpenBLAS runs its own threads,
// whose CPU time the default (calling thread's CPU time) would leave out.
template <typename... Args>
void Register(const std::string& name, Args&&... args) {
  benchmark::RegisterBenchmark(name.c_str(), std::forward<Args>(args)...)->UseRealTime();
}

bool RegisterAll() {
  const std::vector<Backend> backends(AvailableBackends().begin(), AvailableBackends().end());
  for (const GemmShape& s : kGemmShapes) {
    Register("gemm_nt/cblas_sgemm" + Shape(s), BM_GemmNt, nullptr, s);
    for (Backend b : backends) {
      if (b == Backend::kRef && GemmFlops(s) > kRefFlopLimit) continue;
      Register("gemm_nt/" + std::string(BackendName(b)) + Shape(s), BM_GemmNt, &Get(b), s);
    }
  }

  Register("rms_norm/memcpy", BM_Memcpy, 2 * kArrayBytes);
  for (Backend b : backends) {
    Register("rms_norm/" + std::string(BackendName(b)), BM_RmsNorm, &Get(b));
  }
  Register("silu_mul/memcpy", BM_Memcpy, 3 * kArrayBytes);
  for (Backend b : backends) {
    Register("silu_mul/" + std::string(BackendName(b)), BM_SiluMul, &Get(b));
  }
  Register("axpy/memcpy", BM_Memcpy, 3 * kArrayBytes);
  for (Backend b : backends) {
    Register("axpy/" + std::string(BackendName(b)), BM_Axpy, &Get(b));
  }

  for (int queries : {1, 8}) {
    for (int ctx : {512, 4096}) {
      for (Backend b : backends) {
        if (b == Backend::kRef && MlaFlops(queries, ctx) > kRefFlopLimit) continue;
        const std::string name = "mla_decode/" + std::string(BackendName(b)) + "/queries:" + std::to_string(queries) +
                                 "/ctx:" + std::to_string(ctx);
        Register(name, BM_MlaDecode, &Get(b), queries, ctx);
      }
    }
  }
  return true;
}

const bool kRegistered = RegisterAll();

}  // namespace
}  // namespace sirocco::kernels
