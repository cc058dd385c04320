// Integration-test helpers: a tiny model on disk, and a worker binary
// (sirocco-decode / sirocco-prefill) started as a subprocess on 127.0.0.1
// with its gRPC channel and stubs.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "engine/generator.h"
#include "engine/model_maker.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "sirocco/worker/v1/worker.grpc.pb.h"

namespace sirocco::integration {

inline constexpr char kTestToken[] = "test-token";

// The `tiny` preset with vocab 512, written to a fresh temp folder.
inline engine::ModelConfig TestModelConfig() {
  engine::ModelConfig c = *engine::PresetConfig("tiny");
  c.vocab_size = 512;
  return c;
}

inline std::string MakeTestModelDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("sirocco_it_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  engine::MakeModelOptions o;
  o.seed = 7;
  o.dtype = engine::DType::kF32;
  if (!engine::MakeModel(TestModelConfig(), o, dir.string()).ok()) return "";
  return dir.string();
}

class WorkerProcess {
 public:
  // Starts `binary` with `args` plus --listen/--port-file/--metrics-port and
  // waits (up to 120 s) until health says SERVING. ok() tells whether it did.
  WorkerProcess(const std::string& binary, std::vector<std::string> args) {
    port_file_ = (std::filesystem::temp_directory_path() /
                  ("sirocco_it_port_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++)))
                     .string();
    std::filesystem::remove(port_file_);
    args.insert(args.begin(), binary);
    args.push_back("--listen=127.0.0.1:0");
    bool metrics = false;
    for (const std::string& a : args) metrics = metrics || a.rfind("--metrics-port=", 0) == 0;
    if (!metrics) args.push_back("--metrics-port=-1");
    args.push_back("--port-file=" + port_file_);
    pid_ = ::fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < give_up) {
      if (Exited()) return;
      std::ifstream in(port_file_);
      if (in >> port_) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (port_ == 0) return;
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
    stub_ = sirocco::worker::v1::Worker::NewStub(channel_);
    health_ = grpc::health::v1::Health::NewStub(channel_);
    while (std::chrono::steady_clock::now() < give_up) {
      if (Health() == grpc::health::v1::HealthCheckResponse::SERVING) {
        ok_ = true;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~WorkerProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
    std::filesystem::remove(port_file_);
  }

  bool ok() const { return ok_; }
  int port() const { return port_; }
  sirocco::worker::v1::Worker::Stub& stub() { return *stub_; }

  // The health status of "" (UNKNOWN when the call fails).
  grpc::health::v1::HealthCheckResponse::ServingStatus Health() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    if (!health_->Check(&ctx, req, &resp).ok()) return grpc::health::v1::HealthCheckResponse::UNKNOWN;
    return resp.status();
  }

  void Signal(int sig) { ::kill(pid_, sig); }
  // Waits up to `timeout` for the process to exit; its wait status, or -1.
  int WaitExit(std::chrono::seconds timeout) {
    const auto give_up = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < give_up) {
      if (Exited()) return exit_status_;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  bool Exited() {
    if (reaped_) return true;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      exit_status_ = status;
      return true;
    }
    return false;
  }

  std::string port_file_;
  pid_t pid_ = -1;
  int port_ = 0;
  bool ok_ = false;
  bool reaped_ = false;
  int exit_status_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<sirocco::worker::v1::Worker::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// GET http://127.0.0.1:port/path; the whole response ("" on failure).
inline std::string HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) out.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return out;
}

// A client context carrying the worker token and a deadline.
inline std::unique_ptr<grpc::ClientContext> WorkerContext(std::chrono::milliseconds deadline = std::chrono::seconds(120),
                                                          const std::string& token = kTestToken) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) ctx->AddMetadata("x-sirocco-worker-token", token);
  ctx->set_deadline(std::chrono::system_clock::now() + deadline);
  return ctx;
}

inline sirocco::worker::v1::SamplingParams Greedy() {
  sirocco::worker::v1::SamplingParams s;
  s.set_temperature(0.0f);
  s.set_top_p(1.0f);
  s.set_repetition_penalty(1.0f);
  s.set_seed(1);
  s.set_logprobs(-1);
  return s;
}

// engine::Generate on the same checkpoint, greedy, in the engine loop's form:
// what every worker topology must reproduce token for token.
inline std::vector<std::int32_t> GreedyReference(const std::string& model_dir, const std::vector<std::int32_t>& prompt,
                                                 int max_tokens, std::int64_t pool_blocks, std::int64_t block_size,
                                                 engine::WeightType weight_type = engine::WeightType::kF32) {
  auto model = engine::Mistral4Model::Load(
      model_dir,
      engine::ModelOptions{.backend = kernels::Backend::kRef, .device = nullptr, .weight_type = weight_type});
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return {};
  auto pool = *engine::KvPool::Create((*model)->PoolOptions(pool_blocks, block_size));
  engine::GenerateRequest g;
  g.prompt = prompt;
  g.sampling.temperature = 0.0f;
  g.stop.max_tokens = max_tokens;
  g.stop.ignore_eos = true;
  auto out = engine::Generate(**model, *pool, {&g, 1}, engine::GeneratorOptions{engine::AttentionForm::kAbsorbed, 0});
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? (*out)[0].tokens : std::vector<std::int32_t>{};
}

}  // namespace sirocco::integration
