// `sirocco bench`: flags -> bench::RunnerOptions / LoadOptions /
// WorkloadOptions, then the run(s), the summary table on stdout, the JSON
// result file and the HTML report.
#include "tools/sirocco/bench_command.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tools/bench/report_html.h"
#include "tools/bench/report_json.h"
#include "tools/bench/report_text.h"
#include "tools/bench/runner.h"
#include "tools/bench/workload.h"
#include "tools/sirocco/commands.h"

namespace sirocco::tools {
namespace {

constexpr const char* kBenchUsage =
    R"(sirocco bench: load generator for a Sirocco router (sirocco.v1 Generate/Chat streams)

Usage:
  sirocco bench [--target HOST:PORT] [options] [--out FILE.json] [--html FILE.html]
  sirocco bench compare A.json B.json      prints B/A for every metric of two result files
  sirocco bench --help

Connection
  --target HOST:PORT       the router (default 127.0.0.1:50051)
  --connections N          HTTP/2 connections, requests spread round-robin (default 1)
  --timeout-s S            per-request deadline (default 600)
  --wait-s S               how long to wait for the router to answer GetModelInfo (default 60)
  --direct-worker=true|false  --target is a colocated worker (role both), not a router: each request
                           is one worker-API Decode with local_prefill, the call a router makes,
                           to measure what the router adds (Generate workloads only; default false)
  --worker-token TOKEN     the worker API token for --direct-worker (default $SIROCCO_WORKER_TOKEN)

Load (closed loop unless --rate or --sweep-rates is given)
  --concurrency N          closed loop: requests in flight (default 1); open loop: cap on
                           requests in flight, 0 = none (default 0)
  --rate R                 open loop at R requests/s ("inf": all at once)
  --arrival KIND           constant | poisson | gamma (default poisson)
  --burstiness B           gamma shape; gaps have CV 1/sqrt(B) (default 1; needs --arrival gamma
                           unless 1)
  --sweep-rates R1,R2,...  one open-loop run per rate, recording the throughput-latency curve
  --num-requests N         measured requests per run, 0 = no bound (default 100)
  --duration-s S           stop sending after S seconds, 0 = no bound (default 0)
  --warmup N               warm-up requests before each run, not in the results (default 1)
  --seed S                 seed of the workload and the arrivals (default 0)

Workload
  --api generate|chat      generate: random token ids (exact lengths); chat: random words, about
                           one token each (default generate)
  --input-len DIST         prompt tokens: N | uniform:MIN:MAX | normal:MEAN:STD |
                           mix:N@W,N@W... (default 128)
  --output-len DIST        output tokens (max_tokens), same forms (default 128)
  --ignore-eos=true|false  generate exactly max_tokens (default true)
  --min-token-id N         random ids from [N, vocab) to avoid special tokens; lowered to 0 when the
                           vocabulary is not larger (default 1000)
  --prefix-groups N        shared-prefix groups: request i starts with group i%N's prefix (default 0)
  --prefix-len L           tokens of each group's prefix (default 0)
  --conversations C        multi-turn: request i is turn i/C of conversation i%C; its prompt holds every
                           earlier turn (user tokens, then an answer of that turn's output length) and
                           input-len new tokens (Generate only; default 0: single turns)
  --sharegpt FILE.jsonl    prompts: the first human turn of each ShareGPT conversation (Chat)
  --reasoning-mix MIX      Chat only: e.g. none:0.5,high:0.5 (default: unspecified for all)
  --json-schema FILE       every request asks for structured output: a strict response_format with the
                           JSON schema in FILE (default: free text; implies --ignore-eos false)
  --image-share F          share of requests sent as Chat with an image part (default 0)
  --image-size WxH         the image part: a W x H gradient PNG, stored uncompressed (default 32x32)
  --image-file FILE        the image part: this PNG, JPEG, WebP or GIF file instead
  --images-per-request N   image parts in each image request (default 1)
  --cancel-share F         share of requests cancelled mid-stream (default 0)
  --cancel-max-chunks K    a cancelled request stops after U[1, K] chunks; 0 = U[1, output/2]
                           (default 0)

Metrics and output
  --slo NAME=MS            service-level objective for goodput; repeatable or comma-separated:
                           ttft_ms=500, tpot_ms=50, e2e_ms=10000 (default: none, goodput =
                           request throughput)
  --out FILE.json          result file (schema sirocco.bench/1) with every per-request record
                           (default: none)
  --html FILE.html         self-contained HTML report with SVG charts (default: none)
  --label NAME             name of the run in tables and charts (default: from the load)
  --no-progress            no progress line on stderr
)";

// Typed flag reads that also record the value used in the config JSON.
class Reader {
 public:
  explicit Reader(Flags& flags) : flags_(flags) {}
  std::string Str(const std::string& name, const std::string& def) {
    auto v = flags_.Get(name);
    const std::string out = v ? *v : def;
    config_[name] = out;
    return out;
  }
  template <typename T>
  T Num(const std::string& name, T def) {
    auto v = flags_.Get(name);
    T out = def;
    if (v) {
      bool ok;
      if constexpr (std::is_floating_point_v<T>) {
        double d = 0;
        ok = absl::SimpleAtod(*v, &d) && !std::isnan(d);
        out = static_cast<T>(d);
      } else {
        ok = absl::SimpleAtoi(*v, &out);
      }
      if (!ok && status_.ok())
        status_ = absl::InvalidArgumentError(absl::StrCat("--", name, ": '", *v, "' is not a number"));
    }
    config_[name] = std::isfinite(static_cast<double>(out)) ? nlohmann::json(out) : nlohmann::json("inf");
    return out;
  }
  bool Bool(const std::string& name, bool def) {
    const std::string v = Str(name, def ? "true" : "false");
    if (v != "true" && v != "false" && status_.ok())
      status_ = absl::InvalidArgumentError(absl::StrCat("--", name, ": true or false"));
    config_[name] = v == "true";
    return v == "true";
  }
  bool Has(const std::string& name) {
    auto v = flags_.Get(name);
    return v.has_value();
  }
  const absl::Status& status() const { return status_; }
  nlohmann::json& config() { return config_; }

 private:
  Flags& flags_;
  absl::Status status_;
  nlohmann::json config_ = nlohmann::json::object();
};

absl::Status RunCompare(int argc, char** argv) {
  if (argc != 5) return absl::InvalidArgumentError("usage: sirocco bench compare A.json B.json");
  auto a = bench::ReadResultFile(argv[3]);
  if (!a.ok()) return a.status();
  auto b = bench::ReadResultFile(argv[4]);
  if (!b.ok()) return b.status();
  std::fputs(bench::CompareTable(*a, *b, argv[3], argv[4]).c_str(), stdout);
  return absl::OkStatus();
}

std::string LoadLabel(const bench::LoadOptions& load) {
  if (load.mode == bench::LoadOptions::Mode::kClosed) return absl::StrCat("concurrency ", load.concurrency);
  return absl::StrCat(bench::ArrivalKindName(load.arrival.kind), " ", load.arrival.rate, " req/s",
                      load.arrival.kind == bench::ArrivalKind::kGamma
                          ? absl::StrCat(" burstiness ", load.arrival.burstiness)
                          : std::string());
}

nlohmann::json LoadJson(const bench::LoadOptions& load) {
  nlohmann::json j = {{"mode", load.mode == bench::LoadOptions::Mode::kClosed ? "closed" : "open"},
                      {"concurrency", load.concurrency},
                      {"num_requests", load.num_requests},
                      {"duration_s", load.duration_s},
                      {"warmup_requests", load.warmup_requests},
                      {"first_index", load.first_index}};
  if (load.mode == bench::LoadOptions::Mode::kOpen) {
    j["arrival"] = bench::ArrivalKindName(load.arrival.kind);
    j["rate"] = std::isfinite(load.arrival.rate) ? nlohmann::json(load.arrival.rate) : nlohmann::json("inf");
    j["burstiness"] = load.arrival.burstiness;
    j["seed"] = load.arrival.seed;
  }
  return j;
}

}  // namespace

absl::Status RunBench(int argc, char** argv) {
  if (argc >= 3 && std::string(argv[2]) == "compare") return RunCompare(argc, argv);
  // --slo may repeat: gather every occurrence into one comma-separated value.
  std::vector<std::string> args = {argv[0], argv[1]};
  std::vector<std::string> slos;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kBenchUsage, stdout);
      return absl::OkStatus();
    }
    if (a == "--slo" && i + 1 < argc) {
      slos.push_back(argv[++i]);
    } else if (a.rfind("--slo=", 0) == 0) {
      slos.push_back(a.substr(6));
    } else {
      args.push_back(a);
    }
  }
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  auto flags = Flags::Parse(static_cast<int>(cargv.size()), cargv.data(), 2, {"no-progress"});
  if (!flags.ok()) return flags.status();
  Reader read(*flags);

  bench::RunnerOptions runner_options;
  runner_options.target = read.Str("target", "127.0.0.1:50051");
  runner_options.connections = read.Num<int>("connections", 1);
  runner_options.timeout_s = read.Num<double>("timeout-s", 600);
  const double wait_s = read.Num<double>("wait-s", 60);
  runner_options.progress = !read.Has("no-progress");
  runner_options.direct_worker = read.Bool("direct-worker", false);
  const char* env_token = std::getenv("SIROCCO_WORKER_TOKEN");
  runner_options.worker_token = read.Str("worker-token", env_token != nullptr ? env_token : "");

  bench::LoadOptions load;
  const std::string rate_text = read.Str("rate", "");
  const bool has_rate = !rate_text.empty();
  const std::string sweep = read.Str("sweep-rates", "");
  const bool open = has_rate || !sweep.empty();
  load.mode = open ? bench::LoadOptions::Mode::kOpen : bench::LoadOptions::Mode::kClosed;
  load.concurrency = read.Num<int>("concurrency", open ? 0 : 1);
  auto arrival = bench::ParseArrivalKind(read.Str("arrival", "poisson"));
  if (!arrival.ok()) return arrival.status();
  load.arrival.kind = *arrival;
  load.arrival.burstiness = read.Num<double>("burstiness", 1.0);
  if (load.arrival.burstiness != 1.0 && load.arrival.kind != bench::ArrivalKind::kGamma)
    return absl::InvalidArgumentError("--burstiness needs --arrival gamma");
  load.num_requests = read.Num<std::int64_t>("num-requests", 100);
  load.duration_s = read.Num<double>("duration-s", 0);
  load.warmup_requests = read.Num<int>("warmup", 1);
  const auto seed = read.Num<std::uint64_t>("seed", 0);
  load.arrival.seed = seed;

  bench::WorkloadOptions wl;
  wl.seed = seed;
  const std::string api = read.Str("api", "generate");
  if (api == "generate") {
    wl.api = bench::Api::kGenerate;
  } else if (api == "chat") {
    wl.api = bench::Api::kChat;
  } else {
    return absl::InvalidArgumentError("--api: generate or chat");
  }
  auto input_len = bench::LengthDist::Parse(read.Str("input-len", "128"));
  if (!input_len.ok()) return absl::InvalidArgumentError(absl::StrCat("--input-len: ", input_len.status().message()));
  auto output_len = bench::LengthDist::Parse(read.Str("output-len", "128"));
  if (!output_len.ok())
    return absl::InvalidArgumentError(absl::StrCat("--output-len: ", output_len.status().message()));
  wl.input_len = *input_len;
  wl.output_len = *output_len;
  const std::string schema_file = read.Str("json-schema", "");
  if (!schema_file.empty()) {
    std::ifstream in(schema_file, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("--json-schema: cannot read ", schema_file));
    std::ostringstream text;
    text << in.rdbuf();
    runner_options.response_schema = text.str();
  }
  // A JSON answer ends at EOS, so structured output never ignores it.
  wl.ignore_eos = read.Bool("ignore-eos", schema_file.empty());
  wl.min_token_id = read.Num<int>("min-token-id", 1000);
  wl.prefix_groups = read.Num<int>("prefix-groups", 0);
  wl.prefix_len = read.Num<int>("prefix-len", 0);
  wl.conversations = read.Num<int>("conversations", 0);
  wl.sharegpt_path = read.Str("sharegpt", "");
  const std::string mix = read.Str("reasoning-mix", "");
  if (!mix.empty()) {
    auto m = bench::ParseEffortMix(mix);
    if (!m.ok()) return m.status();
    wl.effort_mix = *m;
  }
  wl.image_share = read.Num<double>("image-share", 0);
  runner_options.images_per_request = read.Num<int>("images-per-request", 1);
  if (runner_options.images_per_request < 1 || runner_options.images_per_request > 64) {
    return absl::InvalidArgumentError("--images-per-request: 1 to 64");
  }
  const std::string image_size = read.Str("image-size", "");
  const std::string image_file = read.Str("image-file", "");
  if (!image_size.empty() && !image_file.empty()) {
    return absl::InvalidArgumentError("--image-size and --image-file exclude each other");
  }
  if (!image_file.empty()) {
    absl::StatusOr<ImageFile> file = ReadImageFile(image_file, "image-file");
    if (!file.ok()) return file.status();
    runner_options.image_data = std::move(file->data);
    runner_options.image_mime_type = file->mime_type;
  } else if (!image_size.empty()) {
    const std::vector<std::string> wh = absl::StrSplit(image_size, 'x');
    int w = 0, h = 0;
    if (wh.size() != 2 || !absl::SimpleAtoi(wh[0], &w) || !absl::SimpleAtoi(wh[1], &h) || w < 1 || h < 1 || w > 8192 ||
        h > 8192) {
      return absl::InvalidArgumentError(absl::StrCat("--image-size: '", image_size, "' is not WxH within 8192x8192"));
    }
    runner_options.image_data = bench::TestPng(w, h);
  }
  wl.cancel_share = read.Num<double>("cancel-share", 0);
  wl.cancel_max_chunks = read.Num<int>("cancel-max-chunks", 0);
  if (runner_options.direct_worker &&
      (wl.api != bench::Api::kGenerate || !wl.sharegpt_path.empty() || wl.image_share > 0 || wl.cancel_share > 0 ||
       !wl.effort_mix.empty() || !runner_options.response_schema.empty())) {
    return absl::InvalidArgumentError(
        "--direct-worker: random token-id prompts only (--api generate; no --sharegpt, --image-share, "
        "--cancel-share, --reasoning-mix or --json-schema)");
  }

  bench::Slo slo;
  for (const std::string& s : slos) {
    if (absl::Status st = slo.Add(s); !st.ok()) return st;
  }
  read.config()["slo"] = absl::StrJoin(slos, ",");
  const std::string out_path = read.Str("out", "");
  const std::string html_path = read.Str("html", "");
  const std::string label = read.Str("label", "");
  runner_options.label = label;
  if (!read.status().ok()) return read.status();
  if (absl::Status s = flags->CheckAllUsed(); !s.ok()) return s;

  // The rate list: --rate R, or every rate of --sweep-rates.
  std::vector<double> rates;
  auto parse_rate = [](const std::string& r, double* v) {
    if (r == "inf") {
      *v = std::numeric_limits<double>::infinity();
      return true;
    }
    return absl::SimpleAtod(r, v) && *v > 0 && std::isfinite(*v);
  };
  if (!sweep.empty()) {
    if (has_rate) return absl::InvalidArgumentError("--rate and --sweep-rates exclude each other");
    for (const std::string& r : std::vector<std::string>(absl::StrSplit(sweep, ','))) {
      double v = 0;
      if (!parse_rate(r, &v))
        return absl::InvalidArgumentError(absl::StrCat("--sweep-rates: '", r, "' is not a rate > 0"));
      rates.push_back(v);
    }
  } else if (has_rate) {
    double v = 0;
    if (!parse_rate(rate_text, &v))
      return absl::InvalidArgumentError(absl::StrCat("--rate: '", rate_text, "' is not a rate > 0"));
    rates.push_back(v);
  }

  auto runner = bench::Runner::Create(runner_options);
  if (!runner.ok()) return runner.status();
  auto model = (*runner)->GetModelInfo(wait_s);
  if (!model.ok()) return model.status();
  wl.vocab_size = model->vocab_size;
  if (wl.min_token_id >= wl.vocab_size) {
    std::fprintf(stderr, "sirocco bench: vocabulary of %d tokens: random ids from 0, not %d\n", wl.vocab_size,
                 wl.min_token_id);
    wl.min_token_id = 0;
  }
  auto workload = bench::Workload::Create(wl);
  if (!workload.ok()) return workload.status();

  bench::BenchReport report;
  report.target = runner_options.target;
  report.model = *model;
  report.config = read.config();
  report.slo = slo;
  // One run per rate (a sweep), or one closed-loop run.
  const std::size_t n_runs = rates.empty() ? 1 : rates.size();
  for (std::size_t i = 0; i < n_runs; ++i) {
    bench::LoadOptions step = load;
    if (!rates.empty()) step.arrival.rate = rates[i];
    // Every step sends different prompts (no prefix-cache reuse across steps).
    step.first_index = static_cast<std::int64_t>(i) * (load.num_requests > 0 ? load.num_requests : 1000000);
    bench::RunReport run;
    run.label = label.empty() ? LoadLabel(step) : (n_runs > 1 ? absl::StrCat(label, " ", LoadLabel(step)) : label);
    if (!rates.empty()) run.offered_rate = rates[i];
    run.load = LoadJson(step);
    auto result = (*runner)->Run(step, **workload);
    if (!result.ok()) return result.status();
    run.result = std::move(*result);
    run.aggregates = bench::Aggregate(run.result.records, run.result.duration_s, slo, run.result.client_cpu_s);
    run.by_class = bench::AggregateByClass(run.result.records, run.result.duration_s, slo);
    report.runs.push_back(std::move(run));
  }

  const nlohmann::json j = bench::ReportToJson(report);
  std::fputs(bench::SummaryTable(j).c_str(), stdout);
  std::fflush(stdout);
  if (!out_path.empty()) {
    if (absl::Status s = bench::WriteJsonFile(out_path, j); !s.ok()) return s;
    std::fprintf(stderr, "sirocco bench: wrote %s\n", out_path.c_str());
  }
  if (!html_path.empty()) {
    std::ofstream html(html_path);
    html << bench::RenderHtml(report, j);
    if (!html) return absl::UnavailableError(absl::StrCat("cannot write ", html_path));
    std::fprintf(stderr, "sirocco bench: wrote %s\n", html_path.c_str());
  }
  return absl::OkStatus();
}

}  // namespace sirocco::tools
