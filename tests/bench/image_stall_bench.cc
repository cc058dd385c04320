// What an arriving image costs the requests a worker is already running,
// with the image's file decoded on the engine thread (image_threads 0) and
// on image threads (image_threads 1 and 2), and the baseline of the same
// image with its pixels at hand (image_threads:-1: no file to decode), in
// the same run.
//
// The tiny preset's multimodal checkpoint runs 8 text streams (32-token
// prompts, greedy, ignore EOS) in continuous batching. Once every stream
// has produced tokens, a request with one image arrives: a 2048 x 1536
// photo-like PNG (a gradient under noise, 7.2 MB: about 60 ms to decode on
// one core here) that the worker decodes (engine/image, Pillow's pixels) and
// resizes to 4 x 3 cells of 28 pixels. The target is small on purpose: the
// vision encoder's cost grows with the target and stays on the engine
// thread either way, while this measures the file's cost alone. Each
// iteration records, from the engine thread, when each text token was
// produced, and reports:
//   gap_max_ms      the longest gap between two tokens of one text stream,
//                   from the image's arrival until its first token (mean
//                   over iterations): what the image cost the others
//   gap_base_ms     the median gap before the image arrived (the step time)
//   image_ttft_ms   the image request's time to its first token
//   pixels_ms       the time its pixels took (decode + resize)
// BM_EncoderStall measures the vision encoder's share the same way: a
// 30 x 30-cell image (840 x 840 pixels, 3600 patches) with its pixels at
// hand, encoded whole in one step (vision_layers_per_step 0) or a layer a
// step (1).
// Run: build/tests/bench/image_stall_bench (about 20 s). The model is made
// in a temporary folder and removed afterwards.
#include <benchmark/benchmark.h>
#include <png.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine_loop.h"
#include "engine/image/image.h"
#include "engine/mistral4.h"
#include "engine/model_maker.h"
#include "engine/pixtral.h"
#include "kernels/kernels.h"

namespace sirocco::engine {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kStreams = 8;
constexpr int kCols = 4, kRows = 3;  // the image's cells

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// A 2048 x 1536 RGB PNG that compresses like a photo (a gradient under
// noise), encoded with libpng's default settings.
std::string PhotoLikePng() {
  const int w = 2048, h = 1536;
  std::mt19937_64 rng(7);
  std::normal_distribution<double> noise(0.0, 12.0);
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(w * h * 3));
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const double base[3] = {x * 255.0 / w, y * 255.0 / h, static_cast<double>((x + y) % 256)};
      for (int c = 0; c < 3; ++c) {
        rgb[static_cast<std::size_t>((y * w + x) * 3 + c)] =
            static_cast<std::uint8_t>(std::clamp(base[c] + noise(rng), 0.0, 255.0));
      }
    }
  }
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = w;
  image.height = h;
  image.format = PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, rgb.data(), 0, nullptr)) return {};
  std::string out(size, '\0');
  if (!png_image_write_to_memory(&image, out.data(), &size, 0, rgb.data(), 0, nullptr)) return {};
  out.resize(size);
  return out;
}

struct Bench {
  std::unique_ptr<Mistral4Model> model;
  std::shared_ptr<const std::string> png;
  std::int32_t img = 0;
};

// [IMG_BREAK] and [IMG_END] of the tekken vocabulary (the engine checks [IMG]
// tokens only).
constexpr std::int32_t kBreak = 12, kEnd = 13;

Bench* Get() {
  static Bench* bench = [] {
    auto* b = new Bench;
    const std::string dir = (std::filesystem::temp_directory_path() / "sirocco_image_stall_bench").string();
    MakeModelOptions o;
    o.seed = 1;
    o.vision = PresetVisionConfig("tiny");
    absl::Status s = MakeModel(*PresetConfig("tiny"), o, dir);
    if (s.ok()) {
      const kernels::Backend backend =
          kernels::Available(kernels::Backend::kAvx2) ? kernels::Backend::kAvx2 : kernels::Backend::kRef;
      auto model = Mistral4Model::Load(dir, ModelOptions{.backend = backend, .device = nullptr});
      if (model.ok()) b->model = *std::move(model);
    }
    std::filesystem::remove_all(dir);
    b->png = std::make_shared<const std::string>(PhotoLikePng());
    if (b->model != nullptr && b->model->vision() != nullptr) {
      b->img = static_cast<std::int32_t>(b->model->vision()->config().image_token_index);
    }
    return b;
  }();
  return bench;
}

// Records when each of a stream's tokens was produced: on_ready runs on the
// engine thread as a token is pushed, and drains it there.
struct Recorder {
  std::mutex mu;
  std::shared_ptr<RequestStream> stream;  // guarded by mu
  std::vector<Clock::time_point> tokens;  // guarded by mu
  bool ended = false;                     // guarded by mu

  void DrainLocked() {
    for (const StreamEvent& e : stream->Drain()) {
      if (e.type == StreamEvent::Type::kToken) {
        tokens.push_back(Clock::now());
      } else {
        ended = true;
      }
    }
  }
  std::function<void()> OnReady() {
    return [this] {
      std::lock_guard<std::mutex> lock(mu);
      if (stream != nullptr) DrainLocked();
    };
  }
  void Attach(std::shared_ptr<RequestStream> s) {
    std::lock_guard<std::mutex> lock(mu);
    stream = std::move(s);
    DrainLocked();  // what came before the pointer was set
  }
  std::size_t count() {
    std::lock_guard<std::mutex> lock(mu);
    return tokens.size();
  }
};

RequestSpec TextSpec(std::uint64_t seed, int max_tokens) {
  std::mt19937_64 rng(seed);
  RequestSpec r;
  for (int i = 0; i < 32; ++i) r.prompt.push_back(static_cast<std::int32_t>(1000 + rng() % 100000));
  r.stop.max_tokens = max_tokens;
  r.stop.ignore_eos = true;
  r.sampling.temperature = 0.0f;
  return r;
}

struct Scenario {
  int image_threads = 2;
  int vision_layers_per_step = 4;
  int cols = kCols, rows = kRows;  // the image's cells
  bool at_hand = false;            // pixels ready, no file to decode
};

void RunScenario(benchmark::State& state, const Scenario& sc);

void BM_ImageStall(benchmark::State& state) {
  // -1: the baseline, pixels at hand (no file to decode), on image threads.
  Scenario sc;
  sc.at_hand = state.range(0) < 0;
  sc.image_threads = sc.at_hand ? 2 : static_cast<int>(state.range(0));
  RunScenario(state, sc);
  state.SetLabel(sc.at_hand              ? "baseline: pixels at hand"
                 : sc.image_threads == 0 ? "file on the engine thread"
                                         : "file on image threads");
}

// The vision encoder's own cost: a 30 x 30-cell image (840 x 840 pixels,
// 3600 patches) with its pixels at hand, its encoder run whole in one step
// (vision_layers_per_step 0) or a layer a step.
void BM_EncoderStall(benchmark::State& state) {
  Scenario sc;
  sc.at_hand = true;
  sc.vision_layers_per_step = static_cast<int>(state.range(0));
  sc.cols = sc.rows = 30;
  RunScenario(state, sc);
  state.SetLabel(sc.vision_layers_per_step == 0 ? "encoder in one step" : "encoder a layer a step");
}

void RunScenario(benchmark::State& state, const Scenario& sc) {
  Bench* b = Get();
  if (b->model == nullptr || b->png->empty()) {
    state.SkipWithError("could not make the model or the image");
    return;
  }
  const bool at_hand = sc.at_hand;
  const int threads = sc.image_threads;
  const int cols = sc.cols, rows = sc.rows;
  const int cell = static_cast<int>(b->model->vision()->config().token_pixels());
  std::vector<float> ready_pixels;
  if (at_hand) {
    absl::StatusOr<image::RgbImage> rgb = image::DecodeImage(*b->png, image::DecodeLimits{});
    if (!rgb.ok()) {
      state.SkipWithError(std::string(rgb.status().message()).c_str());
      return;
    }
    ready_pixels = image::PreprocessImage(*rgb, cols * cell, rows * cell);
  }
  double gap_max = 0, gap_base = 0, ttft = 0;
  std::atomic<double> pixels_ms_total = 0;
  std::int64_t n = 0;
  for (auto _ : state) {
    EngineOptions o;
    o.model = b->model.get();
    o.num_blocks = 256;
    o.block_size = 16;
    o.max_tokens_per_step = 256;
    o.image_threads = threads;
    o.vision_layers_per_step = sc.vision_layers_per_step;
    auto loop = EngineLoop::Create(o);
    if (!loop.ok()) {
      state.SkipWithError(std::string(loop.status().message()).c_str());
      return;
    }
    std::vector<std::unique_ptr<Recorder>> text;
    for (int i = 0; i < kStreams; ++i) {
      text.push_back(std::make_unique<Recorder>());
      auto s =
          (*loop)->Submit(RequestId{static_cast<std::uint64_t>(i + 1)}, TextSpec(i + 1, 2000), text.back()->OnReady());
      if (!s.ok()) {
        state.SkipWithError(std::string(s.status().message()).c_str());
        return;
      }
      text.back()->Attach(*s);
    }
    auto steady = [&] {
      for (auto& r : text) {
        if (r->count() < 20) return false;
      }
      return true;
    };
    while (!steady()) std::this_thread::sleep_for(std::chrono::milliseconds(1));

    RequestSpec spec = TextSpec(99, 4);
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) spec.prompt.push_back(b->img);
      spec.prompt.push_back(r + 1 == rows ? kEnd : kBreak);
    }
    const int width = cols * cell, height = rows * cell;
    spec.images.push_back(ImageInput{.height = height,
                                     .width = width,
                                     .pixels = [png = b->png, width, height, &pixels_ms_total,
                                                &ready_pixels]() -> absl::StatusOr<std::vector<float>> {
                                       if (!ready_pixels.empty()) return ready_pixels;
                                       const auto t0 = Clock::now();
                                       absl::StatusOr<image::RgbImage> rgb =
                                           image::DecodeImage(*png, image::DecodeLimits{});
                                       if (!rgb.ok()) return rgb.status();
                                       std::vector<float> px = image::PreprocessImage(*rgb, width, height);
                                       pixels_ms_total = pixels_ms_total + Ms(Clock::now() - t0);
                                       return px;
                                     },
                                     .content_hash = 0});
    Recorder image;
    const auto arrive = Clock::now();
    auto s = (*loop)->Submit(RequestId{1000}, std::move(spec), image.OnReady());
    if (!s.ok()) {
      state.SkipWithError(std::string(s.status().message()).c_str());
      return;
    }
    image.Attach(*s);
    while (image.count() == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    Clock::time_point first;
    {
      std::lock_guard<std::mutex> lock(image.mu);
      first = image.tokens.front();
    }
    (*loop)->Stop(StopMode::kCancel);

    double worst = 0;
    std::vector<double> before;
    for (auto& r : text) {
      std::lock_guard<std::mutex> lock(r->mu);
      for (std::size_t k = 1; k < r->tokens.size(); ++k) {
        const auto a = r->tokens[k - 1], z = r->tokens[k];
        if (z <= arrive) before.push_back(Ms(z - a));
        // A gap that overlaps [arrive, first image token].
        if (z > arrive && a < first) worst = std::max(worst, Ms(z - a));
      }
    }
    std::sort(before.begin(), before.end());
    gap_max += worst;
    gap_base += before.empty() ? 0 : before[before.size() / 2];
    ttft += Ms(first - arrive);
    ++n;
  }
  const double k = static_cast<double>(std::max<std::int64_t>(n, 1));
  state.counters["gap_max_ms"] = gap_max / k;
  state.counters["gap_base_ms"] = gap_base / k;
  state.counters["image_ttft_ms"] = ttft / k;
  state.counters["pixels_ms"] = pixels_ms_total / k;
}

BENCHMARK(BM_EncoderStall)
    ->ArgName("vision_layers_per_step")
    ->Arg(0)
    ->Arg(1)
    ->Iterations(4)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

BENCHMARK(BM_ImageStall)
    ->ArgName("image_threads")
    ->Arg(-1)
    ->Arg(0)
    ->Arg(1)
    ->Arg(2)
    ->Iterations(8)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace sirocco::engine

BENCHMARK_MAIN();
