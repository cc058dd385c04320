// The whole cluster as real processes on loopback: sirocco-router in front of
// one colocated worker (role both), then of a prefill and a decode worker.
// Greedy tokens through the cluster equal engine::Generate on the same
// checkpoint; 16 concurrent streams; a cancel mid-stream leaves no used
// blocks on the workers; a bad request is INVALID_ARGUMENT naming the field.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "decode/worker_service.h"
#include "engine/generator.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "engine/model_maker.h"
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

  // Starts the workers, then the router in front of them.
  void StartCluster(const std::vector<std::string>& roles) {
    std::vector<std::string> router_args = {"--tokenizer=" + *model_dir_ + "/tekken.json",
                                            std::string("--worker-token=") + kTestToken, "--load-interval-ms=50",
                                            "--model-fingerprint=" + *decode::ModelFingerprint(*model_dir_)};
    for (const auto& role : roles) {
      auto w = std::make_unique<WorkerProcess>(role == "prefill" ? SIROCCO_PREFILL_BINARY : SIROCCO_DECODE_BINARY,
                                               WorkerArgs(role));
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

  static std::vector<std::int32_t> Reference(const std::vector<std::int32_t>& prompt, int max_tokens) {
    auto model = engine::Mistral4Model::Load(*model_dir_, engine::ModelOptions{kernels::Backend::kRef});
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return {};
    auto pool = *engine::KvPool::Create((*model)->PoolOptions(64, 8));
    engine::GenerateRequest g;
    g.prompt = prompt;
    g.sampling.temperature = 0.0f;
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
    Result result;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    auto reader = stub_->Chat(&context, request);
    v1::ChatResponse response;
    while (reader->Read(&response)) {
      if (response.has_delta()) {
        result.ids.insert(result.ids.end(), response.delta().token_ids().begin(), response.delta().token_ids().end());
      } else if (response.has_final()) {
        result.has_final = true;
        result.final = response.final();
      }
    }
    result.status = reader->Finish();
    return result;
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

TEST_F(RouterClusterTest, BadRequestIsInvalidArgumentNamingTheField) {
  StartCluster({"both"});
  v1::ChatRequest req = GreedyChat("Hello", 4);
  req.mutable_sampling()->set_top_p(0);
  Result r = RunChat(req);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(r.status.error_message().rfind("sampling.top_p", 0), 0u) << r.status.error_message();
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

}  // namespace
}  // namespace sirocco::integration
