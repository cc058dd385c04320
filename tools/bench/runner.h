// The load generator's engine: sends a Workload's requests to a router's
// public sirocco.v1.Sirocco service (Generate or Chat, server-streaming) under
// a closed-loop (fixed concurrency) or open-loop (arrival process) load, and
// records every request's timestamps (RequestRecord).
//
// One dispatch thread (the caller of Run) decides when each request starts;
// each stream is a gRPC ClientReadReactor that takes its timestamp
// (steady_clock) first thing in each receive callback, appends it to its own
// record, and never blocks or prints, so thousands of streams need no thread
// each. A progress thread prints one carriage-return-updated line to stderr
// from atomic counters.
//
// Thread-safety: a Runner may be used by one thread at a time (Run blocks
// until every request of the run has ended).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/bench/arrival.h"
#include "tools/bench/metrics.h"
#include "tools/bench/workload.h"

namespace sirocco::bench {

struct LoadOptions {
  enum class Mode { kClosed, kOpen };
  Mode mode = Mode::kClosed;
  // kClosed: requests in flight (>= 1). kOpen: cap on requests in flight
  // (0: none), the sends then wait for a free slot.
  int concurrency = 1;
  ArrivalOptions arrival;  // kOpen only
  // Stop sending after this many measured requests (0: no bound) and/or
  // after duration_s seconds (0: no bound). At least one bound is needed.
  std::int64_t num_requests = 100;
  double duration_s = 0;
  // Sent (closed loop, min(warmup, concurrency) at a time) and awaited
  // before the measured phase; their records are dropped.
  int warmup_requests = 0;
  // Index of the first measured request (a sweep continues the numbering so
  // every step sends different prompts).
  std::int64_t first_index = 0;

  [[nodiscard]] absl::Status Validate() const;
};

struct RunnerOptions {
  std::string target;      // host:port of the router (or of a worker: direct_worker)
  int connections = 1;     // HTTP/2 connections, requests spread round-robin
  double timeout_s = 600;  // per-request gRPC deadline
  bool progress = true;    // the stderr progress line
  std::string label;       // prefix of the progress line
  // Talk to one colocated worker (role both) through the internal worker API
  // instead of a router: one Decode call with local_prefill, exactly what a
  // router sends it. Generate workloads only; measures what the router adds
  // when run next to the same load through a router.
  bool direct_worker = false;
  std::string worker_token;  // the worker API token (direct_worker)
  // The image part of image requests (WorkloadOptions::image_share); empty:
  // TestPng(32, 32).
  std::string image_data;
  std::string image_mime_type = "image/png";
  // A JSON schema every request asks its answer to follow (a strict
  // response_format); empty: free text.
  std::string response_schema;
  int images_per_request = 1;  // image parts of an image request (>= 1)
};

// What GetModelInfo said that the workload needs.
struct ModelSummary {
  std::string model_name;
  int vocab_size = 0;
  int context_length = 0;
  bool supports_images = false;
  std::string server_version;
};

struct RunResult {
  std::vector<RequestRecord> records;  // measured requests, by index
  double duration_s = 0;               // run start (first send) -> last request's end
  double client_cpu_s = 0;             // this process's CPU time over the measured phase
  int warmup_requests = 0;
};

class Runner {
 public:
  // INVALID_ARGUMENT for bad options. Connects lazily.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Runner>> Create(const RunnerOptions& options);
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  // Asks the router (blocking), waiting up to timeout_s for it to be ready;
  // direct_worker: the worker's GetLoad (vocabulary and context length).
  [[nodiscard]] absl::StatusOr<ModelSummary> GetModelInfo(double timeout_s);

  // Runs the warm-up, then the measured phase; returns when every request
  // ended. Request failures are records, not errors; the status fails only
  // for bad options.
  [[nodiscard]] absl::StatusOr<RunResult> Run(const LoadOptions& load, const Workload& workload);

 private:
  struct Impl;
  explicit Runner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sirocco::bench
