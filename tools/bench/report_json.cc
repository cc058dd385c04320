#include "tools/bench/report_json.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace sirocco::bench {
namespace {

// NaN (an empty sample) becomes null.
nlohmann::json Num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

nlohmann::json SloToJson(const Slo& slo) {
  nlohmann::json j = nlohmann::json::object();
  if (slo.ttft_ms) j["ttft_ms"] = *slo.ttft_ms;
  if (slo.tpot_ms) j["tpot_ms"] = *slo.tpot_ms;
  if (slo.e2e_ms) j["e2e_ms"] = *slo.e2e_ms;
  return j;
}

}  // namespace

nlohmann::json StatsToJson(const Stats& s) {
  return {{"count", s.count},  {"mean", Num(s.mean)},     {"stddev", Num(s.stddev)},
          {"min", Num(s.min)}, {"median", Num(s.median)}, {"p90", Num(s.p90)},
          {"p95", Num(s.p95)}, {"p99", Num(s.p99)},       {"max", Num(s.max)}};
}

nlohmann::json AggregatesToJson(const Aggregates& a) {
  nlohmann::json errors = nlohmann::json::object();
  for (const auto& [k, v] : a.errors) errors[k] = v;
  return {
      {"duration_s", a.duration_s},
      {"requests", a.requests},
      {"completed", a.completed},
      {"cancelled", a.cancelled},
      {"failed", a.failed},
      {"errors", errors},
      {"input_tokens", a.input_tokens},
      {"cached_tokens", a.cached_tokens},
      {"output_tokens", a.output_tokens},
      {"request_throughput", a.request_throughput},
      {"output_throughput", a.output_throughput},
      {"total_token_throughput", a.total_token_throughput},
      {"good", a.good},
      {"goodput", a.goodput},
      {"ttft_ms", StatsToJson(a.ttft_ms)},
      {"tpot_ms", StatsToJson(a.tpot_ms)},
      {"itl_ms", StatsToJson(a.itl_ms)},
      {"e2e_ms", StatsToJson(a.e2e_ms)},
      {"server",
       {{"queue_ms", StatsToJson(a.server_queue_ms)},
        {"prefill_ms", StatsToJson(a.server_prefill_ms)},
        {"kv_transfer_ms", StatsToJson(a.server_kv_transfer_ms)},
        {"first_decode_step_ms", StatsToJson(a.server_first_decode_step_ms)},
        {"ttft_ms", StatsToJson(a.server_ttft_ms)},
        {"e2e_ms", StatsToJson(a.server_e2e_ms)}}},
      {"overhead",
       {{"send_lag_ms", StatsToJson(a.send_lag_ms)},
        {"callback_mean_us", StatsToJson(a.callback_mean_us)},
        {"callback_max_us", a.callback_max_us},
        {"client_cpu_s", a.client_cpu_s},
        {"client_cpu_share", a.client_cpu_share}}},
  };
}

nlohmann::json RecordToJson(const RequestRecord& r) {
  nlohmann::json j = {
      {"index", r.index},
      {"api", r.api},
      {"group", r.group},
      {"effort", r.effort},
      {"image", r.image},
      {"input_len", r.input_len},
      {"max_tokens", r.max_tokens},
      {"scheduled_s", r.scheduled_s},
      {"send_s", r.send_s},
      {"first_token_s", r.chunk_s.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.chunk_s.front())},
      {"end_s", r.end_s},
      {"chunk_s", r.chunk_s},
      {"chunk_tokens", r.chunk_tokens},
      {"prompt_tokens", r.prompt_tokens},
      {"cached_tokens", r.cached_tokens},
      {"output_tokens", r.output_tokens},
      {"status", r.status_code},
      {"status_message", r.status_message},
      {"finish_reason", r.finish_reason},
      {"cancelled", r.cancelled},
      {"cancel_after_chunks", r.cancel_after_chunks},
      {"callbacks", r.callbacks},
      {"callback_total_us", r.callback_total_us},
      {"callback_max_us", r.callback_max_us},
  };
  if (r.has_timing) {
    j["server_timing"] = {{"queue_us", r.timing.queue_us},
                          {"prefill_us", r.timing.prefill_us},
                          {"kv_transfer_us", r.timing.kv_transfer_us},
                          {"first_decode_step_us", r.timing.first_decode_step_us},
                          {"ttft_us", r.timing.ttft_us},
                          {"e2e_us", r.timing.e2e_us}};
  } else {
    j["server_timing"] = nullptr;
  }
  return j;
}

nlohmann::json ReportToJson(const BenchReport& report) {
  nlohmann::json runs = nlohmann::json::array();
  for (const RunReport& run : report.runs) {
    nlohmann::json records = nlohmann::json::array();
    for (const RequestRecord& r : run.result.records) records.push_back(RecordToJson(r));
    nlohmann::json by_class = nlohmann::json::object();
    for (const auto& [name, a] : run.by_class) by_class[name] = AggregatesToJson(a);
    runs.push_back({{"label", run.label},
                    {"offered_rate", run.offered_rate ? nlohmann::json(*run.offered_rate) : nlohmann::json(nullptr)},
                    {"load", run.load},
                    {"duration_s", run.result.duration_s},
                    {"client_cpu_s", run.result.client_cpu_s},
                    {"warmup_requests", run.result.warmup_requests},
                    {"aggregates", AggregatesToJson(run.aggregates)},
                    {"by_class", by_class},
                    {"records", records}});
  }
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return {{"schema", kSchema},
          {"created_unix_s", std::chrono::duration<double>(now).count()},
          {"target", report.target},
          {"model",
           {{"name", report.model.model_name},
            {"vocab_size", report.model.vocab_size},
            {"context_length", report.model.context_length},
            {"supports_images", report.model.supports_images},
            {"server_version", report.model.server_version}}},
          {"config", report.config},
          {"slo", SloToJson(report.slo)},
          {"time_unit", "seconds from the run's start on the client's steady clock"},
          {"runs", runs}};
}

absl::Status WriteJsonFile(const std::string& path, const nlohmann::json& j) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
    out << j.dump(1) << "\n";
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> ReadResultFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not JSON"));
  if (j.value("schema", "") != kSchema)
    return absl::InvalidArgumentError(absl::StrCat(path, ": schema is not ", kSchema));
  if (!j.contains("runs") || !j["runs"].is_array() || j["runs"].empty())
    return absl::InvalidArgumentError(absl::StrCat(path, ": no runs"));
  return j;
}

}  // namespace sirocco::bench
