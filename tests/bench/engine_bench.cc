// End-to-end engine throughput on the `tiny` and `small` presets, next to
// baselines measured in the same run:
//   * prefill: one sequence of 128 / 512 (tiny: also 2048) tokens, expanded and
//     absorbed attention. Reports tokens/s and Gflop/s from an analytic count
//     of the forward pass (ForwardFlops below; an estimate), and the ratio to
//     cblas_sgemm on [T, hidden] x [hidden, hidden] (`sgemm_pct`).
//   * decode: batch 1 and 8 at context 512, absorbed attention, one step timed
//     per iteration (the same position is rewritten, so the context stays 512).
//     Reports tokens/s and the memory-bandwidth floor: float32 weight bytes the
//     step must read (DecodeWeightBytes) over the memcpy bandwidth of a buffer
//     larger than the last-level cache. `roofline_pct` = floor / measured time.
// Ratios are plain counters in percent (benchmark would print 0.35 as "350m"),
// computed from the loop's own wall-clock time; rates print as "Gflop=45/s".
//
// Flags (removed before benchmark::Initialize):
//   --model_cache=DIR  where checkpoints are created once and reused
//                      (default bench_models, relative to the working dir)
//   --skip_small       register only the tiny model (quick runs)
// The small preset (~1.1B parameters, ~2.2 GB bf16 on disk, ~4.4 GB float32 in
// memory) is created on first use; a full run with --benchmark_min_time=0.1
// takes about a minute on two cores with creation, about 20 s without.
//
// The AVX2 backend is used when the CPU has it, else the scalar reference (the
// label names the backend; the reference is far slower on `small`).
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/config.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "engine/model_maker.h"
#include "kernels/kernels.h"

namespace sirocco::engine {
namespace {

std::string g_model_cache = "bench_models";  // --model_cache
bool g_skip_small = false;                   // --skip_small

constexpr std::int64_t kBlockSize = 16;
constexpr std::int64_t kDecodeContext = 512;
constexpr std::int64_t kMaxDecodeBatch = 8;

kernels::Backend BenchBackend() {
  return kernels::Available(kernels::Backend::kAvx2) ? kernels::Backend::kAvx2 : kernels::Backend::kRef;
}

double Seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

void SetRate(benchmark::State& state, const char* name, double per_iteration) {
  state.counters[name] = benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

// ---------------------------------------------------------------------------
// Analytic cost model (an estimate: matrix products only, 2*m*n*k each;
// norms, rope, softmax, routing and copies are left out).

// Flops of one Forward item: `tokens` new tokens after `start_pos` cached ones,
// `logit_rows` rows through the LM head.
double ForwardFlops(const ModelConfig& c, std::int64_t tokens, std::int64_t start_pos, AttentionForm form,
                    std::int64_t logit_rows) {
  const double T = static_cast<double>(tokens);
  const double H = static_cast<double>(c.hidden_size), heads = static_cast<double>(c.num_attention_heads);
  const double qk = static_cast<double>(c.qk_head_dim()), nope = static_cast<double>(c.qk_nope_head_dim);
  const double rope = static_cast<double>(c.qk_rope_head_dim), vd = static_cast<double>(c.v_head_dim);
  const double R = static_cast<double>(c.kv_lora_rank), E = static_cast<double>(c.kv_entry_dim());
  const double n_keys = static_cast<double>(start_pos + tokens);
  // Causal (query, key) pairs: query i sees start_pos + i + 1 keys.
  const double pairs = T * static_cast<double>(start_pos) + T * (T + 1) / 2;

  double attn = 0;
  if (c.q_lora_rank > 0) {
    const double ql = static_cast<double>(c.q_lora_rank);
    attn += 2 * T * ql * H + 2 * T * heads * qk * ql;  // q_a_proj, q_b_proj
  } else {
    attn += 2 * T * heads * qk * H;  // q_proj
  }
  attn += 2 * T * E * H;           // kv_a_proj (latent + rope key)
  attn += 2 * T * H * heads * vd;  // o_proj
  if (form == AttentionForm::kExpanded) {
    attn += 2 * n_keys * heads * (nope + vd) * R;  // kv_b_proj over every key
    attn += 2 * pairs * heads * qk;                // Q K^T
    attn += 2 * pairs * heads * vd;                // P V
  } else {
    attn += 2 * T * heads * nope * R;        // fold W_uk into the query
    attn += 2 * pairs * heads * (R + rope);  // scores over latent + rope key
    attn += 2 * pairs * heads * R;           // P V over the latent
    attn += 2 * T * heads * R * vd;          // unfold W_uv
  }

  const double mlp_per_row_inter = 6 * H;  // gate, up: 2*H*I each; down: 2*I*H
  double total = 0;
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    total += attn;
    if (c.is_moe_layer(l)) {
      total += 2 * T * static_cast<double>(c.n_routed_experts) * H;  // router
      const double active = static_cast<double>(c.num_experts_per_tok + c.n_shared_experts);
      total += T * active * mlp_per_row_inter * static_cast<double>(c.moe_intermediate_size);
    } else {
      total += T * mlp_per_row_inter * static_cast<double>(c.intermediate_size);
    }
  }
  total += 2 * static_cast<double>(logit_rows) * static_cast<double>(c.vocab_size) * H;  // LM head
  return total;
}

// Float32 weight bytes one decode step of `batch` sequences must read: every
// attention weight, router and shared expert, min(E, batch * top_k) distinct
// routed experts per MoE layer (an estimate of what a batch touches), the LM
// head, the norms and the batch's embedding rows. The KV cache is left out.
double DecodeWeightBytes(const ModelConfig& c, std::int64_t batch) {
  const std::int64_t H = c.hidden_size, heads = c.num_attention_heads, qk = c.qk_head_dim();
  const std::int64_t R = c.kv_lora_rank, E = c.kv_entry_dim(), vd = c.v_head_dim, nope = c.qk_nope_head_dim;
  std::int64_t attn = 0;
  if (c.q_lora_rank > 0) {
    attn += c.q_lora_rank * H + c.q_lora_rank + heads * qk * c.q_lora_rank;  // q_a, q_a_norm, q_b
  } else {
    attn += heads * qk * H;
  }
  attn += E * H + R;                // kv_a_proj, kv_a_norm
  attn += heads * (nope + vd) * R;  // kv_b_proj
  attn += H * heads * vd;           // o_proj
  attn += 2 * H;                    // input and post-attention norms
  const std::int64_t expert = 3 * H * c.moe_intermediate_size;
  const std::int64_t touched = std::min(c.n_routed_experts, batch * c.num_experts_per_tok);
  std::int64_t floats = 0;
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    floats += attn;
    if (c.is_moe_layer(l)) {
      floats += c.n_routed_experts * H + (touched + c.n_shared_experts) * expert;
    } else {
      floats += 3 * H * c.intermediate_size;
    }
  }
  floats += c.vocab_size * H + H + batch * H;  // LM head, final norm, embedding rows
  return static_cast<double>(floats) * sizeof(float);
}

// ---------------------------------------------------------------------------
// Baselines. Each baseline benchmark stores what it measured; the engine
// benchmarks read the stored value (or measure it on the spot when the
// baseline was filtered out), so the ratios compare numbers from one run.

std::map<std::pair<int, int>, double> g_sgemm_flops_per_s;  // (m, hidden) -> flop/s
double g_memcpy_bytes_per_s = 0;                            // bytes read + written per second

std::vector<float> RandomVector(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Each of memcpy's source and destination: twice the last-level cache that
// sysconf reports, at least 256 MiB, at most 1 GiB.
std::size_t MemcpyBufferBytes() {
  long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (llc <= 0) llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
  const std::size_t twice = llc > 0 ? 2 * static_cast<std::size_t>(llc) : 0;
  return std::clamp<std::size_t>(twice, std::size_t{256} << 20, std::size_t{1} << 30);
}

struct CopyBuffers {
  std::vector<char> src, dst;
  CopyBuffers() : src(MemcpyBufferBytes(), 1), dst(MemcpyBufferBytes(), 2) {}  // touched: no first-use faults
};

CopyBuffers& Buffers() {
  static CopyBuffers* buffers = new CopyBuffers();
  return *buffers;
}

void BM_Memcpy(benchmark::State& state) {
  CopyBuffers& b = Buffers();
  const std::size_t n = b.src.size();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    std::memcpy(b.dst.data(), b.src.data(), n);
    benchmark::DoNotOptimize(b.dst.data());
    benchmark::ClobberMemory();
  }
  const double s = Seconds(std::chrono::steady_clock::now() - t0);
  g_memcpy_bytes_per_s = 2.0 * static_cast<double>(n) * static_cast<double>(state.iterations()) / s;
  SetRate(state, "GB", 2.0 * static_cast<double>(n) * 1e-9);
  state.SetLabel(std::to_string(n >> 20) + " MiB copied; GB = read + written");
}

double MemcpyBytesPerSecond() {
  if (g_memcpy_bytes_per_s == 0) {
    CopyBuffers& b = Buffers();
    constexpr int kCopies = 5;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kCopies; ++i) {
      std::memcpy(b.dst.data(), b.src.data(), b.src.size());
      benchmark::DoNotOptimize(b.dst.data());
      benchmark::ClobberMemory();
    }
    g_memcpy_bytes_per_s =
        2.0 * static_cast<double>(b.src.size()) * kCopies / Seconds(std::chrono::steady_clock::now() - t0);
  }
  return g_memcpy_bytes_per_s;
}

void Sgemm(int m, int hidden, const std::vector<float>& a, const std::vector<float>& w, std::vector<float>& c) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, hidden, hidden, 1.0f, a.data(), hidden, w.data(), hidden,
              0.0f, c.data(), hidden);
}

// cblas_sgemm y[m, hidden] = x[m, hidden] W[hidden, hidden]^T.
void BM_Sgemm(benchmark::State& state, int m, int hidden) {
  const auto a = RandomVector(static_cast<std::size_t>(m) * hidden, 1);
  const auto w = RandomVector(static_cast<std::size_t>(hidden) * hidden, 2);
  std::vector<float> c(static_cast<std::size_t>(m) * hidden);
  const double flops = 2.0 * m * hidden * hidden;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    Sgemm(m, hidden, a, w, c);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  const double s = Seconds(std::chrono::steady_clock::now() - t0);
  g_sgemm_flops_per_s[{m, hidden}] = flops * static_cast<double>(state.iterations()) / s;
  SetRate(state, "Gflop", flops * 1e-9);
}

double SgemmFlopsPerSecond(int m, int hidden) {
  auto it = g_sgemm_flops_per_s.find({m, hidden});
  if (it != g_sgemm_flops_per_s.end()) return it->second;
  const auto a = RandomVector(static_cast<std::size_t>(m) * hidden, 1);
  const auto w = RandomVector(static_cast<std::size_t>(hidden) * hidden, 2);
  std::vector<float> c(static_cast<std::size_t>(m) * hidden);
  Sgemm(m, hidden, a, w, c);  // warm-up
  int iters = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double s = 0;
  while (s < 0.1 || iters < 3) {
    Sgemm(m, hidden, a, w, c);
    benchmark::DoNotOptimize(c.data());
    ++iters;
    s = Seconds(std::chrono::steady_clock::now() - t0);
  }
  return g_sgemm_flops_per_s[{m, hidden}] = 2.0 * m * hidden * hidden * iters / s;
}

// ---------------------------------------------------------------------------
// Models: created once per cache folder, one loaded at a time (small needs
// ~4.4 GB in float32), plus a KV pool holding kMaxDecodeBatch copies of one
// 512-token prefill for the decode benchmarks.

struct LoadedModel {
  std::string preset;
  std::unique_ptr<Mistral4Model> model;
  // Decode state, built on first use. Tables are declared after the pool so
  // they release their blocks before it goes away.
  std::unique_ptr<KvPool> decode_pool;
  std::vector<BlockTable> decode_tables;
};

LoadedModel& Current() {
  static LoadedModel* current = new LoadedModel();
  return *current;
}

absl::StatusOr<Mistral4Model*> GetModel(const std::string& preset) {
  LoadedModel& cur = Current();
  if (cur.preset == preset && cur.model != nullptr) return cur.model.get();
  cur.decode_tables.clear();
  cur.decode_pool.reset();
  cur.model.reset();
  cur.preset.clear();

  auto config = PresetConfig(preset);
  if (!config.ok()) return config.status();
  const std::string dir = (std::filesystem::path(g_model_cache) / preset).string();
  if (!std::filesystem::exists(dir + "/config.json")) {
    std::fprintf(stderr, "engine_bench: creating the %s model in %s ...\n", preset.c_str(), dir.c_str());
    const auto t0 = std::chrono::steady_clock::now();
    if (absl::Status s = MakeModel(*config, MakeModelOptions{}, dir); !s.ok()) return s;
    std::fprintf(stderr, "engine_bench: created in %.1f s\n", Seconds(std::chrono::steady_clock::now() - t0));
  } else {
    // A folder left by another preset or an older maker is not what we time.
    auto on_disk = LoadModelConfig(dir + "/config.json");
    if (!on_disk.ok()) return on_disk.status();
    if (ModelConfigToJson(*on_disk) != ModelConfigToJson(*config)) {
      return absl::FailedPreconditionError(dir + " holds a model other than preset " + preset + "; delete it");
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto model = Mistral4Model::Load(dir, ModelOptions{.backend = BenchBackend(), .device = nullptr});
  if (!model.ok()) return model.status();
  std::fprintf(stderr, "engine_bench: loaded %s in %.1f s\n", preset.c_str(),
               Seconds(std::chrono::steady_clock::now() - t0));
  cur.model = std::move(*model);
  cur.preset = preset;
  return cur.model.get();
}

std::vector<std::int32_t> Tokens(std::int64_t n, std::int64_t vocab, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int32_t> dist(3, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = dist(rng);
  return t;
}

// Prefills one 512-token prompt and copies its cache into every other
// sequence's blocks (what prefilling each of them would write).
absl::Status EnsureDecodeState(LoadedModel& cur) {
  if (cur.decode_pool != nullptr) return absl::OkStatus();
  const Mistral4Model& model = *cur.model;
  const std::int64_t blocks_per_seq = (kDecodeContext + 1 + kBlockSize - 1) / kBlockSize;
  auto pool = KvPool::Create(model.PoolOptions(kMaxDecodeBatch * blocks_per_seq, kBlockSize));
  if (!pool.ok()) return pool.status();
  cur.decode_pool = std::move(*pool);
  KvPool& p = *cur.decode_pool;
  for (std::int64_t s = 0; s < kMaxDecodeBatch; ++s) {
    cur.decode_tables.emplace_back(&p);
    if (absl::Status st = cur.decode_tables.back().Reserve(kDecodeContext + 1); !st.ok()) return st;
  }
  const auto prompt = Tokens(kDecodeContext, model.config().vocab_size, 7);
  const ForwardItem item{prompt, 0, &cur.decode_tables[0], false};
  std::vector<float> logits;
  if (absl::Status st = model.Forward({&item, 1}, p, AttentionForm::kExpanded, &logits); !st.ok()) return st;
  const std::size_t block_floats = static_cast<std::size_t>(p.block_size() * p.entry_dim());
  for (std::int64_t l = 0; l < p.num_layers(); ++l) {
    for (std::int64_t s = 1; s < kMaxDecodeBatch; ++s) {
      for (std::int64_t b = 0; b < blocks_per_seq; ++b) {
        std::memcpy(p.entry(l, cur.decode_tables[s].block(b), 0), p.entry(l, cur.decode_tables[0].block(b), 0),
                    block_floats * sizeof(float));
      }
    }
  }
  return absl::OkStatus();
}

std::string FormName(AttentionForm form) { return form == AttentionForm::kExpanded ? "expanded" : "absorbed"; }

// ---------------------------------------------------------------------------
// Engine benchmarks.

void BM_Prefill(benchmark::State& state, const std::string& preset, AttentionForm form, std::int64_t tokens) {
  auto model_or = GetModel(preset);
  if (!model_or.ok()) {
    state.SkipWithError(std::string(model_or.status().message()).c_str());
    return;
  }
  const Mistral4Model& model = **model_or;
  const ModelConfig& c = model.config();
  auto pool = KvPool::Create(model.PoolOptions((tokens + kBlockSize - 1) / kBlockSize, kBlockSize));
  if (!pool.ok()) {
    state.SkipWithError(std::string(pool.status().message()).c_str());
    return;
  }
  BlockTable table(pool->get());
  if (absl::Status s = table.Reserve(tokens); !s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    return;
  }
  const auto prompt = Tokens(tokens, c.vocab_size, 11);
  const ForwardItem item{prompt, 0, &table, false};
  std::vector<float> logits;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    if (absl::Status s = model.Forward({&item, 1}, **pool, form, &logits); !s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(logits.data());
  }
  const double per_iter_s = Seconds(std::chrono::steady_clock::now() - t0) / static_cast<double>(state.iterations());
  const double flops = ForwardFlops(c, tokens, 0, form, 1);
  const double sgemm = SgemmFlopsPerSecond(static_cast<int>(tokens), static_cast<int>(c.hidden_size));
  state.SetItemsProcessed(state.iterations() * tokens);
  SetRate(state, "Gflop", flops * 1e-9);
  state.counters["sgemm_Gflop/s"] = sgemm * 1e-9;
  state.counters["sgemm_pct"] = 100.0 * flops / per_iter_s / sgemm;  // achieved / sgemm
  state.SetLabel(std::string(kernels::BackendName(BenchBackend())) + " " + FormName(form) + "; flops estimated");
}

void BM_Decode(benchmark::State& state, const std::string& preset, std::int64_t batch) {
  auto model_or = GetModel(preset);
  absl::Status s = model_or.status();
  if (s.ok()) s = EnsureDecodeState(Current());
  if (!s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    return;
  }
  LoadedModel& cur = Current();
  const Mistral4Model& model = *cur.model;
  const ModelConfig& c = model.config();
  const auto next = Tokens(batch, c.vocab_size, 13);
  std::vector<ForwardItem> items;
  for (std::int64_t i = 0; i < batch; ++i) {
    items.push_back(ForwardItem{{&next[static_cast<std::size_t>(i)], 1},
                                kDecodeContext,
                                &cur.decode_tables[static_cast<std::size_t>(i)],
                                false});
  }
  std::vector<float> logits;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    // Writes position kDecodeContext again each time: the context stays fixed.
    if (absl::Status st = model.Forward(items, *cur.decode_pool, AttentionForm::kAbsorbed, &logits); !st.ok()) {
      state.SkipWithError(std::string(st.message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(logits.data());
  }
  const double per_iter_s = Seconds(std::chrono::steady_clock::now() - t0) / static_cast<double>(state.iterations());
  const double bytes = DecodeWeightBytes(c, batch);
  const double bandwidth = MemcpyBytesPerSecond();
  const double floor_s = bytes / bandwidth;
  state.SetItemsProcessed(state.iterations() * batch);
  SetRate(state, "Gflop",
          static_cast<double>(batch) * ForwardFlops(c, 1, kDecodeContext, AttentionForm::kAbsorbed, 1) * 1e-9);
  state.counters["weight_MB"] = bytes * 1e-6;
  state.counters["memcpy_GB/s"] = bandwidth * 1e-9;
  state.counters["floor_ms"] = floor_s * 1e3;
  state.counters["roofline_pct"] = 100.0 * floor_s / per_iter_s;  // floor time / measured time
  state.SetLabel(std::string(kernels::BackendName(BenchBackend())) + " absorbed; floor estimated");
}

// ---------------------------------------------------------------------------

benchmark::internal::Benchmark* Register(const std::string& name, auto&&... args) {
  return benchmark::RegisterBenchmark(name.c_str(), std::forward<decltype(args)>(args)...)
      ->UseRealTime()  // OpenBLAS threads: the calling thread's CPU time misses them
      ->Unit(benchmark::kMillisecond);
}

void RegisterAll() {
  // At least 0.5 s whatever --benchmark_min_time says: every decode floor divides by this one number.
  Register("baseline/memcpy", BM_Memcpy)->MinTime(0.5);
  std::vector<std::string> presets = {"tiny"};
  if (!g_skip_small) presets.push_back("small");
  for (const std::string& preset : presets) {
    const ModelConfig c = *PresetConfig(preset);
    std::vector<std::int64_t> lengths = {128, 512};
    if (preset == "tiny") lengths.push_back(2048);
    for (std::int64_t t : lengths) {
      Register("baseline/cblas_sgemm/" + preset + "/m:" + std::to_string(t) + "/n:" + std::to_string(c.hidden_size) +
                   "/k:" + std::to_string(c.hidden_size),
               BM_Sgemm, static_cast<int>(t), static_cast<int>(c.hidden_size));
    }
    for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
      for (std::int64_t t : lengths) {
        Register("prefill/" + preset + "/" + FormName(form) + "/tokens:" + std::to_string(t), BM_Prefill, preset, form,
                 t);
      }
    }
    for (std::int64_t batch : {std::int64_t{1}, kMaxDecodeBatch}) {
      Register("decode/" + preset + "/batch:" + std::to_string(batch) + "/ctx:" + std::to_string(kDecodeContext),
               BM_Decode, preset, batch);
    }
  }
}

// Removes this binary's own flags from argv.
void ParseFlags(int* argc, char** argv) {
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string_view arg = argv[i];
    constexpr std::string_view kCache = "--model_cache=";
    if (arg.substr(0, kCache.size()) == kCache) {
      g_model_cache = std::string(arg.substr(kCache.size()));
    } else if (arg == "--skip_small") {
      g_skip_small = true;
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  argv[out] = nullptr;
}

}  // namespace
}  // namespace sirocco::engine

int main(int argc, char** argv) {
  sirocco::engine::ParseFlags(&argc, argv);
  sirocco::engine::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
