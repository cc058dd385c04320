#include "tools/sirocco/cluster_commands.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "decode/worker_service.h"
#include "engine/model_maker.h"
#include "engine/text/tekken.h"
#include "engine/text/tekken_file.h"
#include "sirocco/v1/sirocco.grpc.pb.h"
#include "tools/sirocco/commands.h"

namespace sirocco::tools {
namespace {

namespace fs = std::filesystem;

// --name value | --name=value; everything else is positional.
struct Args {
  std::map<std::string, std::string> flags;
  std::vector<std::string> positional;

  static absl::StatusOr<Args> Parse(int argc, char** argv) {
    Args a;
    for (int i = 2; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) {
        a.positional.push_back(arg);
        continue;
      }
      arg = arg.substr(2);
      if (auto eq = arg.find('='); eq != std::string::npos) {
        a.flags[arg.substr(0, eq)] = arg.substr(eq + 1);
      } else if (i + 1 < argc) {
        a.flags[arg] = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("--", arg, " needs a value"));
      }
    }
    return a;
  }
  std::string Take(const std::string& name, std::string fallback) {
    auto it = flags.find(name);
    if (it == flags.end()) return fallback;
    std::string v = it->second;
    flags.erase(it);
    return v;
  }
  absl::StatusOr<long long> TakeInt(const std::string& name, long long fallback) {
    std::string v = Take(name, "");
    if (v.empty()) return fallback;
    long long out = 0;
    if (!absl::SimpleAtoi(v, &out)) return absl::InvalidArgumentError(absl::StrCat("--", name, ": not an integer"));
    return out;
  }
  absl::Status CheckAllUsed() const {
    if (!flags.empty()) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", flags.begin()->first));
    return absl::OkStatus();
  }
};

// The sibling binary `name`: next to this executable, or in the build tree
// (build/tools/sirocco -> build/router/sirocco-router, build/decode/...).
absl::StatusOr<std::string> FindBinary(const std::string& name) {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  std::vector<fs::path> candidates;
  if (!ec) {
    fs::path dir = self.parent_path();
    for (const char* sub : {"", "../router", "../decode", "../prefill", "router", "decode", "prefill"})
      candidates.push_back(dir / sub / name);
  }
  for (const auto& c : candidates) {
    if (fs::exists(c) && ::access(c.c_str(), X_OK) == 0) return fs::weakly_canonical(c).string();
  }
  return absl::NotFoundError(absl::StrCat("cannot find ", name, " next to ", self.string(), " or in the build tree"));
}

struct Child {
  std::string name;
  pid_t pid = -1;
  std::string port_file;
  int port = 0;
};

// fork/exec with the parent's blocked signals unblocked in the child.
absl::StatusOr<pid_t> Spawn(const std::string& binary, const std::vector<std::string>& args) {
  std::vector<std::string> all = {binary};
  all.insert(all.end(), args.begin(), args.end());
  pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::setpgid(0, 0);  // Ctrl-C reaches the children through us, once
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    std::perror("execv");
    ::_exit(127);
  }
  return pid;
}

// Waits for a port file; fails if the child exits first.
absl::Status WaitForPort(Child& child, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(child.port_file);
    if (in >> child.port && child.port > 0) return absl::OkStatus();
    int status = 0;
    if (::waitpid(child.pid, &status, WNOHANG) == child.pid) {
      child.pid = -1;
      return absl::UnavailableError(absl::StrCat(child.name, " exited before serving"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat(child.name, " did not start serving in time"));
}

void StopAll(std::vector<Child>& children) {
  // The router first (it drains its streams), then the workers.
  for (auto it = children.rbegin(); it != children.rend(); ++it) {
    if (it->pid > 0) ::kill(it->pid, SIGTERM);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (auto& c : children) {
    while (c.pid > 0) {
      int status = 0;
      pid_t r = ::waitpid(c.pid, &status, WNOHANG);
      if (r == c.pid || r < 0) {
        c.pid = -1;
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(c.pid, SIGKILL);
        ::waitpid(c.pid, &status, 0);
        c.pid = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

absl::Status EnsureModel(const std::string& dir, const std::string& tekken_base) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::exists(fs::path(dir) / "config.json")) {
    std::fprintf(stderr, "sirocco up: making the tiny model in %s\n", dir.c_str());
    auto config = engine::PresetConfig("tiny");
    if (!config.ok()) return config.status();
    engine::MakeModelOptions options;
    options.seed = 0;
    options.vision = engine::PresetVisionConfig("tiny");  // the multimodal layout, with a small vision encoder
    if (absl::Status s = engine::MakeModel(*config, options, dir); !s.ok()) return s;
  }
  const std::string tekken = (fs::path(dir) / "tekken.json").string();
  if (!fs::exists(tekken)) {
    if (absl::Status s = text::WriteDerivedTekken(tekken_base, text::TokenizerVersion::kV15, tekken); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunUp(int argc, char** argv) {
  auto args = Args::Parse(argc, argv);
  if (!args.ok()) return args.status();
  auto port = args->TakeInt("port", 50051);
  auto prefill = args->TakeInt("prefill", 0);
  auto decode = args->TakeInt("decode", 0);
  if (!port.ok()) return port.status();
  if (!prefill.ok()) return prefill.status();
  if (!decode.ok()) return decode.status();
  auto colocated = args->TakeInt("colocated", (*prefill == 0 && *decode == 0) ? 1 : 0);
  if (!colocated.ok()) return colocated.status();
  const std::string model = args->Take("model", "models/tiny");
  const std::string host = args->Take("host", "127.0.0.1");
  const std::string tekken_base =
      args->Take("tekken-base", std::string(SIROCCO_SOURCE_DIR) + "/third_party/tekken/tekken_240911.json");
  // Passed to every worker: where the model runs and how its weights are held.
  const std::string kernels = args->Take("kernels", "");
  const std::string weights = args->Take("weights", "");
  const std::string prefix_caching = args->Take("prefix-caching", "");
  const std::string prefix_routing = args->Take("prefix-routing", "");
  const std::string local_prefill_max = args->Take("local-prefill-max-tokens", "");
  const std::string image_threads = args->Take("image-threads", "");
  const std::string vision_layers = args->Take("vision-layers-per-step", "");
  if (absl::Status s = args->CheckAllUsed(); !s.ok()) return s;
  if (!prefix_caching.empty() && prefix_caching != "on" && prefix_caching != "off") {
    return absl::InvalidArgumentError("--prefix-caching: must be on or off");
  }
  if (!prefix_routing.empty() && prefix_routing != "on" && prefix_routing != "off") {
    return absl::InvalidArgumentError("--prefix-routing: must be on or off");
  }
  if (!args->positional.empty()) return absl::InvalidArgumentError("sirocco up takes no positional arguments");
  if ((*prefill > 0) != (*decode > 0))
    return absl::InvalidArgumentError("--prefill and --decode: give both (disaggregated) or neither");
  if (*prefill < 0 || *decode < 0 || *colocated < 0 || *prefill + *decode + *colocated == 0)
    return absl::InvalidArgumentError("--colocated/--prefill/--decode: at least one worker");

  if (absl::Status s = EnsureModel(model, tekken_base); !s.ok()) return s;
  auto router_bin = FindBinary("sirocco-router");
  auto decode_bin = FindBinary("sirocco-decode");
  if (!router_bin.ok()) return router_bin.status();
  if (!decode_bin.ok()) return decode_bin.status();
  std::string prefill_bin = *decode_bin;
  if (auto p = FindBinary("sirocco-prefill"); p.ok()) prefill_bin = *p;

  // The router names the model in every Reserve; the workers compare it.
  auto fingerprint = decode::ModelFingerprint(model);
  if (!fingerprint.ok()) return fingerprint.status();
  std::mt19937_64 rng(std::random_device{}());
  const std::string token = absl::StrCat("up-", rng());
  const fs::path run_dir = fs::temp_directory_path() / absl::StrCat("sirocco_up_", ::getpid());
  fs::create_directories(run_dir);

  // Block the signals before any child starts; children unblock them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGCHLD);
  ::sigprocmask(SIG_BLOCK, &signals, nullptr);

  std::vector<Child> children;
  auto fail = [&](absl::Status s) {
    StopAll(children);
    fs::remove_all(run_dir);
    return s;
  };
  std::vector<std::string> colocated_addrs, prefill_addrs, decode_addrs;
  auto start_worker = [&](const std::string& role, int index) -> absl::Status {
    Child c;
    c.name = absl::StrCat(role, "-", index);
    c.port_file = (run_dir / (c.name + ".port")).string();
    const std::string& bin = role == "prefill" ? prefill_bin : *decode_bin;
    std::vector<std::string> worker_args = {
        "--role",         role, "--model",      model, "--listen",    host + ":0", "--port-file", c.port_file,
        "--metrics-port", "-1", "--auth-token", token, "--worker-id", c.name};
    if (!kernels.empty()) worker_args.insert(worker_args.end(), {"--kernels", kernels});
    // A KV pool in GPU memory needs UCX's own (CUDA-aware) transport choice.
    if (kernels == "cuda") worker_args.insert(worker_args.end(), {"--ucx-transports", "default"});
    if (!weights.empty()) worker_args.insert(worker_args.end(), {"--weights", weights});
    if (!prefix_caching.empty()) worker_args.insert(worker_args.end(), {"--prefix-caching", prefix_caching});
    if (!image_threads.empty()) worker_args.insert(worker_args.end(), {"--image-threads", image_threads});
    if (!vision_layers.empty()) worker_args.insert(worker_args.end(), {"--vision-layers-per-step", vision_layers});
    auto pid = Spawn(bin, worker_args);
    if (!pid.ok()) return pid.status();
    c.pid = *pid;
    children.push_back(c);
    return absl::OkStatus();
  };
  for (int i = 0; i < *colocated; ++i)
    if (absl::Status s = start_worker("both", i); !s.ok()) return fail(s);
  for (int i = 0; i < *prefill; ++i)
    if (absl::Status s = start_worker("prefill", i); !s.ok()) return fail(s);
  for (int i = 0; i < *decode; ++i)
    if (absl::Status s = start_worker("decode", i); !s.ok()) return fail(s);
  for (auto& c : children) {
    if (absl::Status s = WaitForPort(c, std::chrono::seconds(300)); !s.ok()) return fail(s);
    const std::string addr = absl::StrCat(host, ":", c.port);
    std::fprintf(stderr, "sirocco up: %s serving on %s\n", c.name.c_str(), addr.c_str());
    if (c.name.rfind("both", 0) == 0)
      colocated_addrs.push_back(addr);
    else if (c.name.rfind("prefill", 0) == 0)
      prefill_addrs.push_back(addr);
    else
      decode_addrs.push_back(addr);
  }
  Child router;
  router.name = "router";
  router.port_file = (run_dir / "router.port").string();
  std::vector<std::string> rargs = {"--listen",
                                    absl::StrCat(host, ":", *port),
                                    "--port-file",
                                    router.port_file,
                                    "--tokenizer",
                                    (fs::path(model) / "tekken.json").string(),
                                    "--worker-token",
                                    token,
                                    "--metrics-port",
                                    "-1",
                                    "--model-fingerprint",
                                    *fingerprint};
  if (!colocated_addrs.empty()) rargs.insert(rargs.end(), {"--colocated", absl::StrJoin(colocated_addrs, ",")});
  if (!prefill_addrs.empty()) rargs.insert(rargs.end(), {"--prefill", absl::StrJoin(prefill_addrs, ",")});
  if (!decode_addrs.empty()) rargs.insert(rargs.end(), {"--decode", absl::StrJoin(decode_addrs, ",")});
  if (!prefix_routing.empty()) rargs.insert(rargs.end(), {"--prefix-routing", prefix_routing});
  if (!local_prefill_max.empty()) rargs.insert(rargs.end(), {"--local-prefill-max-tokens", local_prefill_max});
  auto rpid = Spawn(*router_bin, rargs);
  if (!rpid.ok()) return fail(rpid.status());
  router.pid = *rpid;
  children.push_back(router);
  if (absl::Status s = WaitForPort(children.back(), std::chrono::seconds(60)); !s.ok()) return fail(s);
  std::printf("sirocco up: serving on %s:%d (Ctrl-C stops the cluster)\n", host.c_str(), children.back().port);
  std::fflush(stdout);

  absl::Status result = absl::OkStatus();
  for (;;) {
    int sig = 0;
    ::sigwait(&signals, &sig);
    if (sig == SIGCHLD) {
      bool died = false;
      for (auto& c : children) {
        int status = 0;
        if (c.pid > 0 && ::waitpid(c.pid, &status, WNOHANG) == c.pid) {
          std::fprintf(stderr, "sirocco up: %s exited (status %d); stopping the cluster\n", c.name.c_str(), status);
          c.pid = -1;
          died = true;
        }
      }
      if (!died) continue;
      result = absl::InternalError("a cluster process exited");
      break;
    }
    std::fprintf(stderr, "sirocco up: stopping\n");
    break;
  }
  StopAll(children);
  fs::remove_all(run_dir);
  return result;
}

absl::Status RunChat(int argc, char** argv) {
  auto args = Args::Parse(argc, argv);
  if (!args.ok()) return args.status();
  const std::string target = args->Take("target", "127.0.0.1:50051");
  const std::string effort = args->Take("reasoning-effort", "");
  auto max_tokens = args->TakeInt("max-tokens", 0);
  if (!max_tokens.ok()) return max_tokens.status();
  const std::string temperature = args->Take("temperature", "");
  const std::string seed = args->Take("seed", "");
  const std::string system = args->Take("system", "");
  const std::string image_path = args->Take("image", "");
  // Structured output: --format json (any JSON object or array), or
  // --json-schema FILE, enforced token by token unless --strict off.
  const std::string format_name = args->Take("format", "text");
  const std::string schema_path = args->Take("json-schema", "");
  const std::string strict = args->Take("strict", "on");
  if (absl::Status s = args->CheckAllUsed(); !s.ok()) return s;
  if (args->positional.size() != 1) return absl::InvalidArgumentError("give exactly one prompt");
  if (format_name != "text" && format_name != "json") return absl::InvalidArgumentError("--format: text or json");
  if (strict != "on" && strict != "off") return absl::InvalidArgumentError("--strict: on or off");
  if (format_name == "json" && !schema_path.empty()) {
    return absl::InvalidArgumentError("--format json and --json-schema exclude each other");
  }

  sirocco::v1::ChatRequest request;
  if (!system.empty()) {
    auto* m = request.add_messages();
    m->set_role(sirocco::v1::ROLE_SYSTEM);
    m->add_content()->set_text(system);
  }
  auto* m = request.add_messages();
  m->set_role(sirocco::v1::ROLE_USER);
  if (!image_path.empty()) {
    // The image goes before the text, as in a user turn that shows a picture
    // and asks about it. The router checks the type against the bytes.
    absl::StatusOr<ImageFile> file = ReadImageFile(image_path, "image");
    if (!file.ok()) return file.status();
    auto* image = m->add_content()->mutable_image();
    image->set_mime_type(file->mime_type);
    image->set_data(std::move(file->data));
  }
  m->add_content()->set_text(args->positional[0]);
  if (effort == "none") {
    request.set_reasoning_effort(sirocco::v1::REASONING_EFFORT_NONE);
  } else if (effort == "high") {
    request.set_reasoning_effort(sirocco::v1::REASONING_EFFORT_HIGH);
  } else if (!effort.empty()) {
    return absl::InvalidArgumentError("--reasoning-effort: none or high");
  }
  if (format_name == "json") request.mutable_response_format()->set_type(sirocco::v1::ResponseFormat::TYPE_JSON_OBJECT);
  if (!schema_path.empty()) {
    std::ifstream in(schema_path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("--json-schema: cannot read ", schema_path));
    std::ostringstream text;
    text << in.rdbuf();
    auto* format = request.mutable_response_format();
    format->set_type(sirocco::v1::ResponseFormat::TYPE_JSON_SCHEMA);
    format->mutable_json_schema()->set_name(std::filesystem::path(schema_path).stem().string());
    format->mutable_json_schema()->set_schema(text.str());
    format->mutable_json_schema()->set_strict(strict == "on");
  }
  if (*max_tokens > 0) request.mutable_stop()->set_max_tokens(static_cast<std::int32_t>(*max_tokens));
  if (!temperature.empty()) {
    float t = 0;
    if (!absl::SimpleAtof(temperature, &t)) return absl::InvalidArgumentError("--temperature: not a number");
    request.mutable_sampling()->set_temperature(t);
  }
  if (!seed.empty()) {
    std::uint64_t s = 0;
    if (!absl::SimpleAtoi(seed, &s)) return absl::InvalidArgumentError("--seed: not an integer");
    request.mutable_sampling()->set_seed(s);
  }

  auto stub = sirocco::v1::Sirocco::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  auto reader = stub->Chat(&context, request);
  sirocco::v1::ChatResponse response;
  enum class Section { kNone, kReasoning, kAnswer } section = Section::kNone;
  sirocco::v1::Final final;
  while (reader->Read(&response)) {
    if (response.has_delta()) {
      const auto& d = response.delta();
      if (!d.reasoning().empty()) {
        if (section != Section::kReasoning) std::printf("%s[reasoning]\n", section == Section::kNone ? "" : "\n");
        section = Section::kReasoning;
        std::fputs(d.reasoning().c_str(), stdout);
      }
      if (!d.text().empty()) {
        if (section != Section::kAnswer) std::printf("%s[answer]\n", section == Section::kNone ? "" : "\n");
        section = Section::kAnswer;
        std::fputs(d.text().c_str(), stdout);
      }
      for (const auto& t : d.tool_calls()) {
        if (!t.name().empty()) std::printf("\n[tool call %d] %s ", t.index(), t.name().c_str());
        std::fputs(t.arguments().c_str(), stdout);
      }
      std::fflush(stdout);
    } else if (response.has_final()) {
      final = response.final();
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  std::printf("\n");
  std::fprintf(stderr,
               "[%s; prompt %d tokens (%d cached), completion %d tokens (reasoning %d); ttft %.1f ms, e2e %.1f ms]\n",
               sirocco::v1::FinishReason_Name(final.finish_reason()).c_str(), final.usage().prompt_tokens(),
               final.usage().cached_tokens(), final.usage().completion_tokens(), final.usage().reasoning_tokens(),
               final.timing().ttft_us() / 1e3, final.timing().e2e_us() / 1e3);
  if (final.finish_reason() == sirocco::v1::FINISH_REASON_ERROR) return absl::InternalError(final.error());
  return absl::OkStatus();
}

}  // namespace sirocco::tools
