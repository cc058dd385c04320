// The whole cluster as real processes on loopback: sirocco-router in front of
// one colocated worker (role both), then of prefill and decode workers.
// Greedy tokens through the cluster equal engine::Generate on the same
// checkpoint, for prompts of 1 to 3000 tokens; 16 concurrent streams; a
// cancel mid-stream leaves no used blocks on the workers; a bad request is
// INVALID_ARGUMENT naming the field. Faults, with real processes: a prefill
// worker killed under load, the only prefill worker lost, a KV transfer that
// fails or times out, a decode worker killed mid-stream; and the router's own
// drain on SIGTERM. Every request still completes with the reference tokens
// and leaves no block behind on the surviving workers.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "decode/worker_service.h"
#include "engine/generator.h"
#include "engine/image/image.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "engine/model_maker.h"
#include "engine/pixtral.h"
#include "engine/text/instruct_image.h"
#include "engine/text/tekken_file.h"
#include "sirocco/v1/sirocco.grpc.pb.h"
#include "tests/integration/worker_process.h"

namespace sirocco::integration {
namespace {

namespace v1 = ::sirocco::v1;
namespace wv1 = ::sirocco::worker::v1;

// The tiny preset with the full tekken vocabulary (the router tokenizes real
// text), and its v15 tekken file.
std::string MakeRouterModelDir() {
  auto dir = std::filesystem::temp_directory_path() / ("sirocco_it_router_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  engine::MakeModelOptions o;
  o.seed = 7;
  o.dtype = engine::DType::kF32;
  o.vision = engine::PresetVisionConfig("tiny");  // the default model's multimodal layout
  auto config = engine::PresetConfig("tiny");
  if (!config.ok() || !engine::MakeModel(*config, o, dir.string()).ok()) return "";
  if (!text::WriteDerivedTekken(std::string(SIROCCO_TEKKEN_DIR) + "/tekken_240911.json", text::TokenizerVersion::kV15,
                                (dir / "tekken.json").string())
           .ok())
    return "";
  return dir.string();
}

class RouterClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_dir_ = new std::string(MakeRouterModelDir());
    ASSERT_FALSE(model_dir_->empty());
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*model_dir_);
    delete model_dir_;
  }
  void TearDown() override {
    router_.reset();
    workers_.clear();
  }

  static std::vector<std::string> WorkerArgs(const std::string& role) {
    return {"--role=" + role,   "--model=" + *model_dir_, "--kernels=ref",
            "--num-blocks=512", "--block-size=8",         std::string("--auth-token=") + kTestToken};
  }

  // Starts the workers, then the router in front of them. `extra` adds flags
  // to the workers of a role, and extra["router"] to the router. The router
  // always disaggregates (--local-prefill-max-tokens=0) unless told
  // otherwise, so that the tests of the disaggregated path take it.
  void StartCluster(const std::vector<std::string>& roles,
                    const std::map<std::string, std::vector<std::string>>& extra = {}) {
    // No --model-fingerprint: each decode worker reports its own.
    std::vector<std::string> router_args = {"--tokenizer=" + *model_dir_ + "/tekken.json",
                                            std::string("--worker-token=") + kTestToken, "--load-interval-ms=50"};
    if (auto it = extra.find("router"); it != extra.end()) {
      router_args.insert(router_args.end(), it->second.begin(), it->second.end());
    }
    if (std::none_of(router_args.begin(), router_args.end(),
                     [](const std::string& a) { return a.starts_with("--local-prefill-max-tokens"); })) {
      router_args.push_back("--local-prefill-max-tokens=0");
    }
    for (const auto& role : roles) {
      std::vector<std::string> args = WorkerArgs(role);
      if (auto it = extra.find(role); it != extra.end()) args.insert(args.end(), it->second.begin(), it->second.end());
      auto w =
          std::make_unique<WorkerProcess>(role == "prefill" ? SIROCCO_PREFILL_BINARY : SIROCCO_DECODE_BINARY, args);
      ASSERT_TRUE(w->ok()) << role << " worker did not start";
      const std::string flag = role == "both" ? "--colocated=" : role == "prefill" ? "--prefill=" : "--decode=";
      router_args.push_back(flag + "127.0.0.1:" + std::to_string(w->port()));
      workers_.push_back(std::move(w));
    }
    router_ = std::make_unique<WorkerProcess>(SIROCCO_ROUTER_BINARY, router_args);
    ASSERT_TRUE(router_->ok()) << "the router did not start";
    stub_ = v1::Sirocco::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(router_->port()), grpc::InsecureChannelCredentials()));
  }

  static std::vector<std::int32_t> Reference(const std::vector<std::int32_t>& prompt, int max_tokens,
                                             const engine::SamplingParams* sampling = nullptr) {
    auto model = engine::Mistral4Model::Load(
        *model_dir_, engine::ModelOptions{.backend = kernels::Backend::kRef, .device = nullptr});
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return {};
    const std::int64_t blocks = (static_cast<std::int64_t>(prompt.size()) + max_tokens) / 8 + 2;
    auto pool = *engine::KvPool::Create((*model)->PoolOptions(blocks, 8));
    engine::GenerateRequest g;
    g.prompt = prompt;
    g.sampling.temperature = 0.0f;
    if (sampling != nullptr) g.sampling = *sampling;
    g.stop.max_tokens = max_tokens;
    g.stop.ignore_eos = true;
    auto out = engine::Generate(**model, *pool, {&g, 1}, engine::GeneratorOptions{engine::AttentionForm::kAbsorbed, 0});
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? (*out)[0].tokens : std::vector<std::int32_t>{};
  }

  static v1::ChatRequest GreedyChat(const std::string& text, int max_tokens) {
    v1::ChatRequest r;
    auto* m = r.add_messages();
    m->set_role(v1::ROLE_USER);
    m->add_content()->set_text(text);
    r.mutable_sampling()->set_temperature(0);
    r.mutable_stop()->set_max_tokens(max_tokens);
    r.mutable_stop()->set_ignore_eos(true);
    r.mutable_output()->set_return_token_ids(true);
    return r;
  }

  struct Result {
    grpc::Status status;
    std::vector<std::int32_t> ids;
    bool has_final = false;
    v1::Final final;
  };

  Result RunChat(const v1::ChatRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    auto reader = stub_->Chat(&context, request);
    return Collect<v1::ChatResponse>(*reader);
  }

  // Reads a Chat or Generate stream to its end: the streamed ids and the final.
  template <typename Response, typename Reader>
  static Result Collect(Reader& reader) {
    Result result;
    Response response;
    while (reader.Read(&response)) {
      if (response.has_delta()) {
        result.ids.insert(result.ids.end(), response.delta().token_ids().begin(), response.delta().token_ids().end());
      } else if (response.has_final()) {
        result.has_final = true;
        result.final = response.final();
      }
    }
    result.status = reader.Finish();
    return result;
  }

  // Generate with token ids (no chat template), greedy.
  static v1::GenerateRequest GreedyGenerate(const std::vector<std::int32_t>& prompt, int max_tokens) {
    v1::GenerateRequest request;
    request.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
    request.mutable_sampling()->set_temperature(0);
    request.mutable_stop()->set_max_tokens(max_tokens);
    request.mutable_stop()->set_ignore_eos(true);
    request.mutable_output()->set_return_token_ids(true);
    return request;
  }

  Result RunGenerate(const std::vector<std::int32_t>& prompt, int max_tokens) {
    const v1::GenerateRequest request = GreedyGenerate(prompt, max_tokens);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    auto reader = stub_->Generate(&context, request);
    return Collect<v1::GenerateResponse>(*reader);
  }

  // `n` ids drawn from ordinary (non-special) tokens, fixed by `seed`.
  static std::vector<std::int32_t> RandomPrompt(int n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<std::int32_t> id(1000, 60000);
    std::vector<std::int32_t> out(static_cast<std::size_t>(n));
    for (auto& t : out) t = id(rng);
    return out;
  }

  // Prompts of 1 to 3000 tokens, one at a time: the reference tokens.
  void LongPromptsMatchReference() {
    for (int n : {1, 257, 3000}) {
      const std::vector<std::int32_t> prompt = RandomPrompt(n, static_cast<std::uint32_t>(n));
      Result r = RunGenerate(prompt, 4);
      ASSERT_TRUE(r.status.ok()) << n << " tokens: " << r.status.error_message();
      ASSERT_TRUE(r.has_final);
      EXPECT_EQ(r.final.usage().prompt_tokens(), n);
      EXPECT_EQ(r.ids, Reference(prompt, 4)) << n << " tokens";
    }
    ExpectWorkersIdle();
  }

  // 16 concurrent greedy Generate calls with distinct prompts; each must
  // return its own reference tokens. `during` runs once workers_[busy] is
  // working on some of them (the load is then in flight there).
  void SixteenConcurrentDistinct(int prompt_len, int max_tokens, const std::function<void()>& during,
                                 std::size_t busy = 0) {
    std::vector<std::vector<std::int32_t>> prompts, expected;
    for (int i = 0; i < 16; ++i) {
      prompts.push_back(RandomPrompt(prompt_len + i, 100u + static_cast<std::uint32_t>(i)));
      expected.push_back(Reference(prompts.back(), max_tokens));
    }
    std::vector<Result> results(16);
    std::atomic<bool> started{false};
    std::vector<std::thread> threads;
    for (int i = 0; i < 16; ++i) {
      threads.emplace_back([&, i] { results[static_cast<std::size_t>(i)] = RunGenerate(prompts[i], max_tokens); });
    }
    if (during) {
      for (int tries = 0; tries < 2000 && !started; ++tries) {
        wv1::Load load;
        auto ctx = WorkerContext();
        if (workers_[busy]->stub().GetLoad(ctx.get(), wv1::GetLoadRequest(), &load).ok() &&
            load.running() + load.waiting() > 0) {
          started = true;
        } else {
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
      }
      EXPECT_TRUE(started) << "the load never reached the workers";
      during();
    }
    for (auto& t : threads) t.join();
    for (int i = 0; i < 16; ++i) {
      const Result& r = results[static_cast<std::size_t>(i)];
      EXPECT_TRUE(r.status.ok()) << "request " << i << ": " << r.status.error_message();
      EXPECT_TRUE(r.has_final) << "request " << i;
      EXPECT_EQ(r.ids, expected[static_cast<std::size_t>(i)]) << "request " << i;
    }
  }

  std::vector<std::int32_t> Tokenize(const v1::ChatRequest& request) {
    v1::TokenizeRequest req;
    *req.mutable_chat() = request;
    v1::TokenizeResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->Tokenize(&ctx, req, &resp).ok());
    return {resp.token_ids().begin(), resp.token_ids().end()};
  }

  // Waits until every worker reports no used blocks and no requests.
  void ExpectWorkersIdle() {
    for (auto& w : workers_) {
      wv1::Load load;
      for (int i = 0; i < 200; ++i) {
        auto ctx = WorkerContext();
        ASSERT_TRUE(w->stub().GetLoad(ctx.get(), wv1::GetLoadRequest(), &load).ok());
        if (load.free_blocks() == load.total_blocks() && load.running() == 0 && load.waiting() == 0) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
      }
      EXPECT_EQ(load.free_blocks(), load.total_blocks()) << load.worker_id();
      EXPECT_EQ(load.running() + load.waiting() + load.reservations(), 0u) << load.worker_id();
    }
  }

  static std::string ReadFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
  }

  // The model run directly on `prompt` with `image_file`'s rows in place of
  // its [IMG] tokens: decoded and resized as the workers do, encoded, one
  // prefill, then greedy decode steps.
  static std::vector<std::int32_t> ReferenceWithImage(const std::vector<std::int32_t>& prompt,
                                                      const std::string& image_file, int max_tokens) {
    auto model = engine::Mistral4Model::Load(
        *model_dir_, engine::ModelOptions{.backend = kernels::Backend::kRef, .device = nullptr});
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok() || (*model)->vision() == nullptr) return {};
    engine::PixtralEncoder& vision = *(*model)->vision();
    const std::string bytes = ReadFile(image_file);
    auto rgb = image::DecodeImage(bytes, image::DecodeLimits{});
    EXPECT_TRUE(rgb.ok()) << rgb.status();
    if (!rgb.ok()) return {};
    const text::ImageGrid grid =
        text::ImageTokenGrid(text::ImageSize{.width = rgb->width, .height = rgb->height}, 14, 1540, 2);
    const int cell = static_cast<int>(vision.config().token_pixels());
    const int width = static_cast<int>(grid.width_tokens) * cell, height = static_cast<int>(grid.height_tokens) * cell;
    auto rows = vision.Encode(image::PreprocessImage(*rgb, width, height), height, width);
    EXPECT_TRUE(rows.ok()) << rows.status();
    if (!rows.ok()) return {};
    std::vector<std::int32_t> at;
    for (std::size_t p = 0; p < prompt.size(); ++p) {
      if (prompt[p] == vision.config().image_token_index) at.push_back(static_cast<std::int32_t>(p));
    }
    EXPECT_EQ(static_cast<std::int64_t>(at.size()), grid.width_tokens * grid.height_tokens);
    auto pool = *engine::KvPool::Create((*model)->PoolOptions(static_cast<std::int64_t>(prompt.size()) / 8 + 4, 8));
    engine::BlockTable bt(pool.get());
    EXPECT_TRUE(bt.Reserve(static_cast<std::int64_t>(prompt.size()) + max_tokens).ok());
    const auto vocab = static_cast<std::ptrdiff_t>((*model)->config().vocab_size);
    std::vector<float> logits;
    auto argmax = [&] {
      return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.begin() + vocab) - logits.begin());
    };
    engine::ForwardItem first{prompt, 0, &bt, false};
    first.embed_at = at;
    first.embed_rows = *rows;
    EXPECT_TRUE((*model)->Forward({&first, 1}, *pool, engine::AttentionForm::kAbsorbed, &logits).ok());
    std::vector<std::int32_t> out = {argmax()};
    while (static_cast<int>(out.size()) < max_tokens) {
      engine::ForwardItem step{std::span<const std::int32_t>(&out.back(), 1),
                               static_cast<std::int64_t>(prompt.size() + out.size()) - 1, &bt, false};
      EXPECT_TRUE((*model)->Forward({&step, 1}, *pool, engine::AttentionForm::kAbsorbed, &logits).ok());
      out.push_back(argmax());
    }
    return out;
  }

  // A chat with an image (two, in turn), and a corrupt one: the first gives
  // the reference tokens, the second fails INVALID_ARGUMENT, no worker keeps
  // a block.
  void ImagesMatchReference() {
    for (const char* name : {"png_rgba.png", "jpeg_baseline.jpg"}) {
      const std::string file = std::string(SIROCCO_GOLDEN_IMAGES_DIR) + "/" + name;
      const std::string bytes = ReadFile(file);
      ASSERT_FALSE(bytes.empty()) << file;
      v1::ChatRequest req = GreedyChat("What is in this picture?", 6);
      auto* image = req.mutable_messages(0)->add_content()->mutable_image();
      image->set_data(bytes);
      image->set_mime_type(bytes[0] == '\x89' ? "image/png" : "image/jpeg");
      const std::vector<std::int32_t> ids = Tokenize(req);
      ASSERT_FALSE(ids.empty());
      Result r = RunChat(req);
      ASSERT_TRUE(r.status.ok()) << name << ": " << r.status.error_message();
      EXPECT_EQ(r.final.usage().prompt_tokens(), static_cast<int>(ids.size()));
      EXPECT_EQ(r.ids, ReferenceWithImage(ids, file, 6)) << name;
      // The same request again: every full block but the last token's comes
      // from the prefill worker's cache, the image's included (keyed by the
      // image's bytes), and the answer is the same.
      Result again = RunChat(req);
      ASSERT_TRUE(again.status.ok()) << name << ": " << again.status.error_message();
      EXPECT_EQ(again.ids, r.ids) << name;
      EXPECT_EQ(again.final.usage().cached_tokens(), (static_cast<int>(ids.size()) - 1) / 8 * 8) << name;

      // The same header with its pixel data cut off: sized, but undecodable.
      image->set_data(bytes.substr(0, bytes.size() / 2));
      r = RunChat(req);
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name << ": " << r.status.error_message();
      // The worker's "images[0]" is the request's field.
      EXPECT_EQ(r.status.error_message().rfind("messages[0].content[1].image", 0), 0u) << r.status.error_message();
    }
    ExpectWorkersIdle();
  }

  void GreedyMatchesReference() {
    for (const char* prompt : {"Hello", "What is the capital of France?", "Write a haiku about wind."}) {
      v1::ChatRequest req = GreedyChat(prompt, 8);
      const std::vector<std::int32_t> ids = Tokenize(req);
      ASSERT_FALSE(ids.empty());
      Result r = RunChat(req);
      ASSERT_TRUE(r.status.ok()) << r.status.error_message();
      ASSERT_TRUE(r.has_final);
      EXPECT_EQ(r.final.finish_reason(), v1::FINISH_REASON_LENGTH);
      EXPECT_EQ(r.ids, Reference(ids, 8)) << prompt;
      EXPECT_EQ(r.final.usage().prompt_tokens(), static_cast<int>(ids.size()));
    }
    ExpectWorkersIdle();
  }

  void SixteenConcurrent() {
    const std::vector<std::int32_t> expected = Reference(Tokenize(GreedyChat("Hello", 6)), 6);
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int i = 0; i < 16; ++i) {
      threads.emplace_back([&] {
        Result r = RunChat(GreedyChat("Hello", 6));
        if (r.status.ok() && r.has_final && r.ids == expected) ++ok;
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(ok, 16);
    ExpectWorkersIdle();
  }

  void CancelMidStream() {
    grpc::ClientContext context;
    auto reader = stub_->Chat(&context, GreedyChat("Tell me a long story.", 2000));
    v1::ChatResponse response;
    int deltas = 0;
    while (deltas < 3 && reader->Read(&response)) ++deltas;
    EXPECT_EQ(deltas, 3);
    context.TryCancel();
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
    ExpectWorkersIdle();
  }

  // Prompts sharing a 300-token prefix, one after another: each returns its
  // reference tokens, and every one after the first reports the prefix's
  // whole blocks (--block-size=8: 37 of them) as cached, unless caching is
  // off.
  void SharedPrefixReusesTheCache(bool caching) {
    const std::vector<std::int32_t> shared = RandomPrompt(300, 77);
    for (int i = 0; i < 4; ++i) {
      std::vector<std::int32_t> prompt = shared;
      const std::vector<std::int32_t> tail = RandomPrompt(5 + 20 * i, 200u + static_cast<std::uint32_t>(i));
      prompt.insert(prompt.end(), tail.begin(), tail.end());
      Result r = RunGenerate(prompt, 4);
      ASSERT_TRUE(r.status.ok()) << "request " << i << ": " << r.status.error_message();
      ASSERT_TRUE(r.has_final);
      EXPECT_EQ(r.ids, Reference(prompt, 4)) << "request " << i;
      EXPECT_EQ(r.final.usage().cached_tokens(), caching && i > 0 ? 296 : 0) << "request " << i;
    }
    ExpectWorkersIdle();
  }

  static inline std::string* model_dir_ = nullptr;
  std::vector<std::unique_ptr<WorkerProcess>> workers_;
  std::unique_ptr<WorkerProcess> router_;
  std::unique_ptr<v1::Sirocco::Stub> stub_;
};

TEST_F(RouterClusterTest, ColocatedGreedyMatchesEngineGenerate) {
  StartCluster({"both"});
  GreedyMatchesReference();
}

TEST_F(RouterClusterTest, ColocatedSixteenConcurrentStreams) {
  StartCluster({"both"});
  SixteenConcurrent();
}

TEST_F(RouterClusterTest, ColocatedCancelMidStreamFreesEveryBlock) {
  StartCluster({"both"});
  CancelMidStream();
}

TEST_F(RouterClusterTest, ColocatedChatWithAnImageMatchesTheModelRunDirectly) {
  StartCluster({"both"});
  ImagesMatchReference();
}

TEST_F(RouterClusterTest, DisaggregatedChatWithAnImageMatchesTheModelRunDirectly) {
  StartCluster({"prefill", "decode"});
  ImagesMatchReference();
}

TEST_F(RouterClusterTest, BadRequestIsInvalidArgumentNamingTheField) {
  StartCluster({"both"});
  v1::ChatRequest req = GreedyChat("Hello", 4);
  req.mutable_sampling()->set_top_p(0);
  Result r = RunChat(req);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(r.status.error_message().rfind("sampling.top_p", 0), 0u) << r.status.error_message();
  ExpectWorkersIdle();
}

// A strict schema all of whose documents are short (bounded strings,
// integers, arrays and enums), so that a random model always completes one.
constexpr char kBoundedSchema[] = R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "maxLength": 6},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 2},
    "ok": {"type": "boolean"}
  },
  "required": ["name", "age", "ok"],
  "additionalProperties": false
})";

v1::ChatRequest StructuredChat(std::uint64_t seed) {
  v1::ChatRequest r;
  auto* m = r.add_messages();
  m->set_role(v1::ROLE_USER);
  m->add_content()->set_text("Describe a person as JSON.");
  r.set_reasoning_effort(v1::REASONING_EFFORT_NONE);
  r.mutable_sampling()->set_temperature(1.0f);
  r.mutable_sampling()->set_seed(seed);
  r.mutable_stop()->set_max_tokens(200);
  r.mutable_output()->set_return_token_ids(true);
  auto* format = r.mutable_response_format();
  format->set_type(v1::ResponseFormat::TYPE_JSON_SCHEMA);
  format->mutable_json_schema()->set_name("person");
  format->mutable_json_schema()->set_schema(kBoundedSchema);
  format->mutable_json_schema()->set_strict(true);
  return r;
}

// Sampled structured output through a colocated and a disaggregated cluster:
// the same seeded tokens on both (the prefill worker constrains the first
// token, the decode worker the rest), every answer a complete document
// (finish STOP) that an independent parser reads with the schema's fields.
TEST_F(RouterClusterTest, StructuredOutputIsTheSameColocatedAndDisaggregated) {
  struct Answer {
    std::vector<std::int32_t> ids;
    std::string text;
  };
  auto run_all = [&](const char* shape) {
    std::vector<Answer> answers;
    for (std::uint64_t seed = 1; seed <= 3; ++seed) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
      auto reader = stub_->Chat(&context, StructuredChat(seed));
      v1::ChatResponse response;
      Answer a;
      v1::Final final;
      while (reader->Read(&response)) {
        if (response.has_delta()) {
          a.ids.insert(a.ids.end(), response.delta().token_ids().begin(), response.delta().token_ids().end());
          a.text += response.delta().text();
          EXPECT_TRUE(response.delta().reasoning().empty()) << shape;
        } else if (response.has_final()) {
          final = response.final();
        }
      }
      const grpc::Status status = reader->Finish();
      EXPECT_TRUE(status.ok()) << shape << ": " << status.error_message();
      EXPECT_EQ(final.finish_reason(), v1::FINISH_REASON_STOP) << shape << " seed " << seed << ": " << a.text;
      const nlohmann::json doc = nlohmann::json::parse(a.text, nullptr, /*allow_exceptions=*/false);
      EXPECT_TRUE(doc.is_object()) << shape << " seed " << seed << ": " << a.text;
      if (doc.is_object()) {
        EXPECT_TRUE(doc.contains("name") && doc["name"].is_string() && doc["name"].get<std::string>().size() <= 24)
            << a.text;
        EXPECT_TRUE(doc.contains("age") && doc["age"].is_number_integer() && doc["age"].get<int>() >= 0 &&
                    doc["age"].get<int>() <= 120)
            << a.text;
        EXPECT_TRUE(doc.contains("ok") && doc["ok"].is_boolean()) << a.text;
        for (const auto& [key, value] : doc.items()) {
          EXPECT_TRUE(key == "name" || key == "age" || key == "tags" || key == "ok") << key;
        }
      }
      answers.push_back(std::move(a));
    }
    ExpectWorkersIdle();
    return answers;
  };
  StartCluster({"both"});
  const std::vector<Answer> colocated = run_all("colocated");
  TearDown();
  StartCluster({"prefill", "decode"});
  const std::vector<Answer> disaggregated = run_all("disaggregated");
  ASSERT_EQ(colocated.size(), disaggregated.size());
  for (std::size_t i = 0; i < colocated.size(); ++i) {
    EXPECT_EQ(colocated[i].ids, disaggregated[i].ids) << "seed " << i + 1;
  }
  // Different seeds sample different documents: the sampler was not bypassed.
  EXPECT_NE(colocated[0].text, colocated[1].text);
  // Generate (no chat template) takes the same response format.
  v1::GenerateRequest generate;
  generate.set_text("A person as JSON:");
  generate.mutable_sampling()->set_temperature(1.0f);
  generate.mutable_sampling()->set_seed(9);
  generate.mutable_stop()->set_max_tokens(200);
  *generate.mutable_response_format() = StructuredChat(1).response_format();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = stub_->Generate(&context, generate);
  v1::GenerateResponse response;
  std::string text;
  v1::Final final;
  while (reader->Read(&response)) {
    if (response.has_delta()) text += response.delta().text();
    if (response.has_final()) final = response.final();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(final.finish_reason(), v1::FINISH_REASON_STOP) << text;
  const nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(doc.is_object()) << text;
  EXPECT_TRUE(doc.contains("name") && doc.contains("age") && doc.contains("ok")) << text;
}

// Forced tool calls (tool_choice MODE_NAMED, then MODE_ANY with two tools),
// sampled from the random model through a disaggregated cluster: every
// answer is calls of the allowed tools and nothing else, finishing with
// TOOL_CALLS, and each call's arguments parse (nlohmann) with the strict
// schema's fields.
TEST_F(RouterClusterTest, ForcedToolCallsAreCallsOfTheGivenTools) {
  StartCluster({"prefill", "decode"});
  auto add_tool = [](v1::ChatRequest& r, const char* name, const char* schema) {
    auto* tool = r.add_tools();
    tool->set_name(name);
    tool->set_parameters_json_schema(schema);
    tool->set_strict(true);
  };
  for (const bool named : {true, false}) {
    for (std::uint64_t seed = 1; seed <= 3; ++seed) {
      v1::ChatRequest r;
      auto* m = r.add_messages();
      m->set_role(v1::ROLE_USER);
      m->add_content()->set_text("What is the weather in Paris this week?");
      r.set_reasoning_effort(v1::REASONING_EFFORT_NONE);
      r.mutable_sampling()->set_temperature(1.0f);
      r.mutable_sampling()->set_seed(seed);
      r.mutable_stop()->set_max_tokens(300);
      add_tool(r, "get_weather", R"({"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
          "days": {"type": "integer", "minimum": 1, "maximum": 7}}, "required": ["city", "days"],
          "additionalProperties": false})");
      add_tool(r, "lookup", R"({"type": "object", "properties": {"q": {"enum": ["a", "b"]}}, "required": ["q"],
          "additionalProperties": false})");
      if (named) {
        r.mutable_tool_choice()->set_mode(v1::ToolChoice::MODE_NAMED);
        r.mutable_tool_choice()->set_name("get_weather");
        r.set_parallel_tool_calls(false);
      } else {
        r.mutable_tool_choice()->set_mode(v1::ToolChoice::MODE_ANY);
      }
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
      auto reader = stub_->Chat(&context, r);
      v1::ChatResponse response;
      std::map<int, std::pair<std::string, std::string>> calls;  // index -> name, arguments
      std::string text;
      v1::Final final;
      while (reader->Read(&response)) {
        if (response.has_final()) {
          final = response.final();
          continue;
        }
        text += response.delta().text();
        for (const v1::ToolCallDelta& d : response.delta().tool_calls()) {
          calls[d.index()].first += d.name();
          calls[d.index()].second += d.arguments();
        }
      }
      const grpc::Status status = reader->Finish();
      const std::string what = absl::StrCat(named ? "named" : "any", " seed ", seed);
      ASSERT_TRUE(status.ok()) << what << ": " << status.error_message();
      EXPECT_EQ(final.finish_reason(), v1::FINISH_REASON_TOOL_CALLS) << what << ": " << final.error();
      EXPECT_TRUE(text.empty()) << what << ": " << text;
      ASSERT_FALSE(calls.empty()) << what;
      if (named) {
        EXPECT_EQ(calls.size(), 1u) << what;
      }
      for (const auto& [index, call] : calls) {
        const nlohmann::json args = nlohmann::json::parse(call.second, nullptr, false);
        ASSERT_TRUE(args.is_object()) << what << ": " << call.second;
        if (call.first == "get_weather") {
          EXPECT_TRUE(args.contains("city") && args["city"].is_string()) << call.second;
          EXPECT_TRUE(args.contains("days") && args["days"].is_number_integer() && args["days"].get<int>() >= 1 &&
                      args["days"].get<int>() <= 7)
              << call.second;
          EXPECT_EQ(args.size(), 2u) << call.second;
        } else {
          EXPECT_FALSE(named) << what << ": called " << call.first;
          EXPECT_EQ(call.first, "lookup") << what;
          const bool a_or_b =
              args == nlohmann::json::parse(R"({"q": "a"})") || args == nlohmann::json::parse(R"({"q": "b"})");
          EXPECT_TRUE(a_or_b) << call.second;
        }
      }
    }
  }
  ExpectWorkersIdle();
}

// Response formats the router refuses before any work, naming the field.
TEST_F(RouterClusterTest, BadResponseFormatsAreInvalidArgument) {
  StartCluster({"both"});
  struct Case {
    const char* what;
    std::function<void(v1::ChatRequest&)> edit;
    const char* field;
  };
  const std::vector<Case> cases = {
      {"unsupported keyword",
       [](v1::ChatRequest& r) {
         r.mutable_response_format()->mutable_json_schema()->set_schema(R"({"type": "string", "pattern": "^a+$"})");
       },
       "response_format.json_schema.schema"},
      {"not JSON", [](v1::ChatRequest& r) { r.mutable_response_format()->mutable_json_schema()->set_schema("{"); },
       "response_format.json_schema.schema"},
      {"not a draft 7 schema",
       [](v1::ChatRequest& r) { r.mutable_response_format()->mutable_json_schema()->set_schema(R"({"type": 5})"); },
       "response_format.json_schema.schema"},
      {"no name", [](v1::ChatRequest& r) { r.mutable_response_format()->mutable_json_schema()->clear_name(); },
       "response_format.json_schema.name"},
      {"no schema", [](v1::ChatRequest& r) { r.mutable_response_format()->clear_json_schema(); },
       "response_format.json_schema"},
      {"ignore_eos", [](v1::ChatRequest& r) { r.mutable_stop()->set_ignore_eos(true); }, "stop.ignore_eos"},
      {"tools",
       [](v1::ChatRequest& r) {
         auto* tool = r.add_tools();
         tool->set_name("get_weather");
         tool->set_parameters_json_schema(R"({"type": "object"})");
       },
       "response_format"},
  };
  for (const Case& c : cases) {
    v1::ChatRequest req = StructuredChat(1);
    c.edit(req);
    const Result r = RunChat(req);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.what;
    EXPECT_EQ(r.status.error_message().rfind(c.field, 0), 0u) << c.what << ": " << r.status.error_message();
  }
  // A forced call to a strict tool whose schema uses an unsupported keyword.
  v1::ChatRequest forced = StructuredChat(1);
  forced.clear_response_format();
  auto* tool = forced.add_tools();
  tool->set_name("f");
  tool->set_parameters_json_schema(R"({"type": "object", "properties": {"x": {"not": {"type": "null"}}}})");
  tool->set_strict(true);
  forced.mutable_tool_choice()->set_mode(v1::ToolChoice::MODE_ANY);
  const Result r = RunChat(forced);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(r.status.error_message().rfind("tools[0].parameters_json_schema", 0), 0u) << r.status.error_message();
  EXPECT_NE(r.status.error_message().find("/properties/x/not"), std::string::npos) << r.status.error_message();
  ExpectWorkersIdle();
}

TEST_F(RouterClusterTest, DisaggregatedGreedyMatchesEngineGenerate) {
  StartCluster({"prefill", "decode"});
  GreedyMatchesReference();
}

TEST_F(RouterClusterTest, DisaggregatedCancelMidStreamFreesEveryBlock) {
  StartCluster({"prefill", "decode"});
  CancelMidStream();
}

TEST_F(RouterClusterTest, DisaggregatedSixteenConcurrentStreams) {
  StartCluster({"prefill", "decode"});
  SixteenConcurrent();
}

TEST_F(RouterClusterTest, ColocatedLongPromptsMatchEngineGenerate) {
  StartCluster({"both"});
  LongPromptsMatchReference();
}

TEST_F(RouterClusterTest, DisaggregatedLongPromptsMatchEngineGenerate) {
  StartCluster({"prefill", "decode"});
  LongPromptsMatchReference();
}

TEST_F(RouterClusterTest, ColocatedSharedPrefixesComeFromThePrefixCache) {
  StartCluster({"both"});
  SharedPrefixReusesTheCache(true);
}

TEST_F(RouterClusterTest, DisaggregatedSharedPrefixesComeFromThePrefillersCache) {
  StartCluster({"prefill", "decode"});
  SharedPrefixReusesTheCache(true);
}

// Two prefixes warmed up concurrently (so usually on different prefill
// workers); afterwards each prefix's requests go where it is cached, though
// both workers are idle.
TEST_F(RouterClusterTest, RequestsGoToThePrefillWorkerThatHoldsTheirPrefix) {
  StartCluster({"prefill", "prefill", "decode"});
  const std::vector<std::vector<std::int32_t>> prefixes = {RandomPrompt(300, 31), RandomPrompt(300, 32)};
  auto prompt = [&](std::size_t p, std::uint32_t seed) {
    std::vector<std::int32_t> out = prefixes[p];
    const std::vector<std::int32_t> tail = RandomPrompt(12, seed);
    out.insert(out.end(), tail.begin(), tail.end());
    return out;
  };
  std::vector<Result> warm(2);
  {
    std::vector<std::thread> threads;
    for (std::size_t p = 0; p < 2; ++p) threads.emplace_back([&, p] { warm[p] = RunGenerate(prompt(p, 0), 2); });
    for (auto& t : threads) t.join();
  }
  for (const Result& r : warm) ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  for (std::uint32_t i = 1; i <= 3; ++i) {
    for (std::size_t p = 0; p < 2; ++p) {
      const std::vector<std::int32_t> ids = prompt(p, i);
      Result r = RunGenerate(ids, 2);
      ASSERT_TRUE(r.status.ok()) << r.status.error_message();
      EXPECT_EQ(r.final.prefill_worker(), warm[p].final.prefill_worker()) << "prefix " << p << ", request " << i;
      EXPECT_EQ(r.final.usage().cached_tokens(), 296) << "prefix " << p << ", request " << i;
      EXPECT_EQ(r.ids, Reference(ids, 2));
    }
  }
  ExpectWorkersIdle();
}

// Conditional disaggregation: a follow-up whose prompt the decode worker
// holds but for a short tail (the previous prompt and answer) is prefilled
// there; a new prompt still goes to the prefill worker.
TEST_F(RouterClusterTest, AFollowUpTheDecodeWorkerHoldsIsPrefilledThere) {
  StartCluster({"prefill", "decode"}, {{"router", {"--local-prefill-max-tokens=64"}}});
  const std::vector<std::int32_t> first = RandomPrompt(300, 41);
  Result a = RunGenerate(first, 6);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  EXPECT_NE(a.final.prefill_worker(), a.final.decode_worker());
  // The next turn: the first prompt, its answer, 20 new tokens. The decode
  // worker held 300 + 5 tokens (the last answer token is never fed back):
  // 38 blocks of 8.
  std::vector<std::int32_t> next = first;
  next.insert(next.end(), a.ids.begin(), a.ids.end());
  const std::vector<std::int32_t> tail = RandomPrompt(20, 42);
  next.insert(next.end(), tail.begin(), tail.end());
  Result b = RunGenerate(next, 4);
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  EXPECT_EQ(b.final.prefill_worker(), b.final.decode_worker()) << "the decode worker prefilled the tail";
  EXPECT_EQ(b.final.usage().cached_tokens(), 304);
  EXPECT_EQ(b.final.timing().kv_transfer_us(), 0);
  EXPECT_EQ(b.ids, Reference(next, 4));
  // A new prompt, and one whose uncached part is longer than 64 tokens,
  // are disaggregated as usual.
  for (int extra : {0, 100}) {
    std::vector<std::int32_t> other = extra == 0 ? RandomPrompt(200, 43) : first;
    const std::vector<std::int32_t> more = RandomPrompt(extra, 44);
    other.insert(other.end(), more.begin(), more.end());
    Result c = RunGenerate(other, 4);
    ASSERT_TRUE(c.status.ok()) << c.status.error_message();
    EXPECT_NE(c.final.prefill_worker(), c.final.decode_worker()) << extra;
    EXPECT_EQ(c.ids, Reference(other, 4));
  }
  ExpectWorkersIdle();
}

TEST_F(RouterClusterTest, PrefixCachingOffComputesEveryPrompt) {
  StartCluster({"prefill", "decode"}, {{"prefill", {"--prefix-caching=off"}}});
  SharedPrefixReusesTheCache(false);
}

TEST_F(RouterClusterTest, DisaggregatedSixteenDistinctPromptsConcurrently) {
  StartCluster({"prefill", "decode"});
  SixteenConcurrentDistinct(120, 5, nullptr);
  ExpectWorkersIdle();
}

TEST_F(RouterClusterTest, KillingAPrefillWorkerUnderLoadLosesNoRequest) {
  StartCluster({"prefill", "prefill", "decode"});
  SixteenConcurrentDistinct(200, 5, [&] { workers_[0]->Signal(SIGKILL); });
  EXPECT_GT(workers_[0]->WaitExit(std::chrono::seconds(10)), -1);
  workers_.erase(workers_.begin());
  ExpectWorkersIdle();
}

TEST_F(RouterClusterTest, LosingTheOnlyPrefillWorkerFallsBackToDecode) {
  StartCluster({"prefill", "decode"});
  SixteenConcurrentDistinct(200, 5, [&] { workers_[0]->Signal(SIGKILL); });
  workers_.erase(workers_.begin());
  // New requests keep completing: the decode worker prefills them itself.
  const std::vector<std::int32_t> prompt = RandomPrompt(50, 9);
  Result r = RunGenerate(prompt, 4);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, Reference(prompt, 4));
  EXPECT_EQ(r.final.prefill_worker(), r.final.decode_worker());
  ExpectWorkersIdle();
}

// The prefill worker's first KV write fails as a transport error would.
TEST_F(RouterClusterTest, FailedTransferFallsBackToLocalPrefill) {
  StartCluster({"prefill", "decode"}, {{"prefill", {"--test-kv-fault=fail-first"}}});
  const std::vector<std::int32_t> prompt = RandomPrompt(100, 5);
  Result r = RunGenerate(prompt, 6);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, Reference(prompt, 6));
  EXPECT_EQ(r.final.prefill_worker(), r.final.decode_worker()) << "the decode worker prefilled";
  wv1::Load load;
  auto ctx = WorkerContext();
  ASSERT_TRUE(workers_[0]->stub().GetLoad(ctx.get(), wv1::GetLoadRequest(), &load).ok());
  EXPECT_EQ(load.transfer().failures(), 1u);
  // The next request transfers normally.
  Result next = RunGenerate(prompt, 6);
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.ids, r.ids);
  EXPECT_NE(next.final.prefill_worker(), next.final.decode_worker());
  ExpectWorkersIdle();
}

// Structured output through a failed transfer: the decode worker prefills
// and samples the first token under the same constraint, so the seeded answer
// is the one the next, normally transferred, request gets.
TEST_F(RouterClusterTest, StructuredOutputIsTheSameAfterAFailedTransfer) {
  StartCluster({"prefill", "decode"}, {{"prefill", {"--test-kv-fault=fail-first"}}});
  const v1::ChatRequest request = StructuredChat(5);
  const Result fallback = RunChat(request);
  ASSERT_TRUE(fallback.status.ok()) << fallback.status.error_message();
  EXPECT_EQ(fallback.final.prefill_worker(), fallback.final.decode_worker()) << "the decode worker prefilled";
  EXPECT_EQ(fallback.final.finish_reason(), v1::FINISH_REASON_STOP);
  const Result normal = RunChat(request);
  ASSERT_TRUE(normal.status.ok()) << normal.status.error_message();
  EXPECT_NE(normal.final.prefill_worker(), normal.final.decode_worker());
  EXPECT_EQ(normal.ids, fallback.ids);
  ExpectWorkersIdle();
}

// Every KV write stalls past the prefill worker's transfer timeout.
TEST_F(RouterClusterTest, TimedOutTransferFallsBackToLocalPrefill) {
  StartCluster({"prefill", "decode"}, {{"prefill", {"--test-kv-fault=delay-ms:5000", "--kv-transfer-timeout-ms=300"}}});
  for (int n : {10, 300}) {
    const std::vector<std::int32_t> prompt = RandomPrompt(n, 11);
    Result r = RunGenerate(prompt, 5);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids, Reference(prompt, 5)) << n << " tokens";
    EXPECT_EQ(r.final.prefill_worker(), r.final.decode_worker());
  }
  wv1::Load load;
  auto ctx = WorkerContext();
  ASSERT_TRUE(workers_[0]->stub().GetLoad(ctx.get(), wv1::GetLoadRequest(), &load).ok());
  EXPECT_EQ(load.transfer().failures(), 2u);
  ExpectWorkersIdle();
}

// A seeded, non-greedy request draws the same tokens whichever way it is
// split: the decode worker replays the prefill worker's draw for the first
// token, and a penalty sees the real prompt.
TEST_F(RouterClusterTest, SeededSamplingIsTheSameDisaggregatedAsInOneEngine) {
  StartCluster({"prefill", "decode"});
  const std::vector<std::int32_t> prompt = RandomPrompt(30, 77);
  engine::SamplingParams sampling;
  sampling.temperature = 1.3f;
  sampling.top_k = 50;
  sampling.repetition_penalty = 1.2f;
  sampling.seed = 4242;
  const std::vector<std::int32_t> expected = Reference(prompt, 12, &sampling);
  v1::GenerateRequest request = GreedyGenerate(prompt, 12);
  request.mutable_sampling()->set_temperature(sampling.temperature);
  request.mutable_sampling()->set_top_k(sampling.top_k);
  request.mutable_sampling()->set_repetition_penalty(sampling.repetition_penalty);
  request.mutable_sampling()->set_seed(*sampling.seed);
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, request);
  v1::GenerateResponse response;
  std::vector<std::int32_t> ids;
  while (reader->Read(&response)) {
    if (response.has_delta())
      ids.insert(ids.end(), response.delta().token_ids().begin(), response.delta().token_ids().end());
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(ids, expected);
  // A greedy run of the same prompt differs: the test would catch a sampler
  // that ignored the temperature.
  EXPECT_NE(ids, Reference(prompt, 12));
}

// The decode worker streaming a request dies: the router moves the request
// to the other decode worker, which re-prefills prompt + tokens so far, and
// the client's stream continues to the same tokens.
TEST_F(RouterClusterTest, DecodeWorkerLostMidStreamMigratesTheRequest) {
  StartCluster({"prefill", "decode", "decode"});
  const std::vector<std::int32_t> prompt = RandomPrompt(40, 21);
  constexpr int kTokens = 160;
  const std::vector<std::int32_t> expected = Reference(prompt, kTokens);
  const v1::GenerateRequest request = GreedyGenerate(prompt, kTokens);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = stub_->Generate(&context, request);
  v1::GenerateResponse response;
  std::vector<std::int32_t> ids;
  bool killed = false;
  v1::Final final;
  while (reader->Read(&response)) {
    if (response.has_final()) {
      final = response.final();
      continue;
    }
    ids.insert(ids.end(), response.delta().token_ids().begin(), response.delta().token_ids().end());
    if (!killed && !ids.empty()) {
      // Kill whichever decode worker holds the request.
      for (std::size_t i = 1; i < workers_.size() && !killed; ++i) {
        wv1::Load load;
        auto ctx = WorkerContext();
        if (workers_[i]->stub().GetLoad(ctx.get(), wv1::GetLoadRequest(), &load).ok() && load.running() > 0) {
          workers_[i]->Signal(SIGKILL);
          workers_[i]->WaitExit(std::chrono::seconds(10));
          workers_.erase(workers_.begin() + static_cast<std::ptrdiff_t>(i));
          killed = true;
        }
      }
    }
  }
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(killed) << "the request finished before a decode worker could be killed";
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(final.finish_reason(), v1::FINISH_REASON_LENGTH) << final.error();
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(final.usage().completion_tokens(), kTokens);
  ExpectWorkersIdle();
}

// SIGTERM to the router: health goes NOT_SERVING, new requests are refused,
// the stream in flight finishes, then the router exits 0.
TEST_F(RouterClusterTest, RouterSigtermDrainsInFlightStreams) {
  StartCluster({"both"});
  const std::vector<std::int32_t> prompt = RandomPrompt(20, 3);
  // Long enough (~10 ms a token here) to still be streaming when the late
  // request arrives, short enough to end well within the router's grace
  // (25 s by default) on a loaded machine.
  constexpr int kTokens = 400;
  const v1::GenerateRequest request = GreedyGenerate(prompt, kTokens);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = stub_->Generate(&context, request);
  v1::GenerateResponse response;
  std::vector<std::int32_t> ids;
  bool signalled = false, refused = false;
  while (reader->Read(&response)) {
    if (!response.has_delta()) continue;
    ids.insert(ids.end(), response.delta().token_ids().begin(), response.delta().token_ids().end());
    if (!signalled) {
      router_->Signal(SIGTERM);
      signalled = true;
      // Wait until the router reports draining, then try a new request.
      for (int i = 0; i < 300 && router_->Health() == grpc::health::v1::HealthCheckResponse::SERVING; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      Result late = RunGenerate(prompt, 2);
      refused = late.status.error_code() == grpc::StatusCode::UNAVAILABLE;
      EXPECT_TRUE(refused) << late.status.error_code() << " " << late.status.error_message();
    }
  }
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(ids.size(), static_cast<std::size_t>(kTokens));
  EXPECT_EQ(router_->WaitExit(std::chrono::seconds(30)), 0);
}

}  // namespace
}  // namespace sirocco::integration
