// The metrics endpoint over a real socket: HTTP status lines and headers,
// and the exposition text parsed independently of prometheus-cpp (HELP/TYPE
// before samples, valid names and labels, histogram buckets ascending and
// cumulative with +Inf == _count), vLLM's names and bucket boundaries, the
// observed values, and the probes.
#include "services/metrics.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "services/server.h"

namespace sirocco::services {
namespace {

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

// One request on a fresh connection, read to EOF (the server closes).
HttpResponse Http(int port, const std::string& method, const std::string& path) {
  HttpResponse response;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ADD_FAILURE() << "connect to port " << port;
    close(fd);
    return response;
  }
  const std::string request = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  EXPECT_EQ(send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  std::string raw;
  char buffer[4096];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) raw.append(buffer, static_cast<std::size_t>(n));
  close(fd);

  const std::size_t header_end = raw.find("\r\n\r\n");
  if (header_end == std::string::npos) {
    ADD_FAILURE() << "no header end in: " << raw;
    return response;
  }
  std::istringstream head(raw.substr(0, header_end));
  std::string line;
  std::getline(head, line);
  std::smatch m;
  if (!std::regex_match(line, m, std::regex(R"(HTTP/1\.[01] (\d{3}) .*\r?)"))) {
    ADD_FAILURE() << "bad status line: " << line;
    return response;
  }
  response.status = std::stoi(m[1]);
  while (std::getline(head, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(' '));
    response.headers[name] = value;
  }
  response.body = raw.substr(header_end + 4);
  return response;
}

// ---- A small parser of the text exposition format (0.0.4) ----

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> help;  // family -> text
  std::map<std::string, std::string> type;  // family -> counter|gauge|histogram|...
  std::vector<Sample> samples;
};

double ParseValue(const std::string& text) {
  if (text == "+Inf") return INFINITY;
  if (text == "-Inf") return -INFINITY;
  if (text == "NaN") return NAN;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  EXPECT_EQ(*end, '\0') << "bad value: " << text;
  return v;
}

const std::regex kNameRe(R"([a-zA-Z_:][a-zA-Z0-9_:]*)");

// The family a sample belongs to: histogram series add a suffix.
std::string FamilyOf(const std::string& sample, const std::map<std::string, std::string>& types) {
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string s(suffix);
    if (sample.size() > s.size() && sample.compare(sample.size() - s.size(), s.size(), s) == 0) {
      const std::string base = sample.substr(0, sample.size() - s.size());
      auto it = types.find(base);
      if (it != types.end() && it->second == "histogram") return base;
    }
  }
  return sample;
}

Exposition ParseExposition(const std::string& text) {
  Exposition out;
  EXPECT_TRUE(text.empty() || text.back() == '\n') << "exposition must end with a newline";
  std::istringstream in(text);
  std::string line;
  const std::regex help_re(R"(# HELP ([^ ]+) (.*))");
  const std::regex type_re(R"(# TYPE ([^ ]+) (counter|gauge|histogram|summary|untyped))");
  const std::regex sample_re(R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ([^ ]+)( -?\d+)?)");
  const std::regex label_re(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?)re");
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::smatch m;
    if (std::regex_match(line, m, help_re)) {
      EXPECT_TRUE(std::regex_match(m[1].str(), kNameRe)) << line;
      EXPECT_EQ(out.help.count(m[1]), 0u) << "HELP twice: " << line;
      out.help[m[1]] = m[2];
    } else if (std::regex_match(line, m, type_re)) {
      EXPECT_EQ(out.type.count(m[1]), 0u) << "TYPE twice: " << line;
      out.type[m[1]] = m[2];
    } else if (line[0] == '#') {
      // Other comments are allowed.
    } else if (std::regex_match(line, m, sample_re)) {
      Sample sample;
      sample.name = m[1];
      std::string labels = m[3];
      for (std::sregex_iterator it(labels.begin(), labels.end(), label_re), end; it != end; ++it) {
        EXPECT_EQ(sample.labels.count((*it)[1]), 0u) << "label twice: " << line;
        sample.labels[(*it)[1]] = (*it)[2];
      }
      // Every character of the label block must belong to a label.
      EXPECT_EQ(std::regex_replace(labels, label_re, ""), "") << "bad labels: " << line;
      sample.value = ParseValue(m[4]);
      const std::string family = FamilyOf(sample.name, out.type);
      // HELP and TYPE come before the family's first sample.
      EXPECT_EQ(out.type.count(family), 1u) << "sample before its TYPE: " << line;
      EXPECT_EQ(out.help.count(family), 1u) << "sample before its HELP: " << line;
      out.samples.push_back(sample);
    } else {
      ADD_FAILURE() << "unparseable line: " << line;
    }
  }
  return out;
}

std::vector<const Sample*> Find(const Exposition& e, const std::string& name,
                                const std::map<std::string, std::string>& labels = {}) {
  std::vector<const Sample*> found;
  for (const Sample& s : e.samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) match = false;
    }
    if (match) found.push_back(&s);
  }
  return found;
}

double Value(const Exposition& e, const std::string& name, const std::map<std::string, std::string>& labels = {}) {
  auto found = Find(e, name, labels);
  EXPECT_EQ(found.size(), 1u) << name;
  return found.empty() ? NAN : found[0]->value;
}

// Checks every histogram series: le ascending, counts cumulative, +Inf last
// and equal to _count, _sum present. Returns the le values per family.
std::map<std::string, std::vector<double>> CheckHistograms(const Exposition& e) {
  std::map<std::string, std::vector<double>> bounds;
  for (const auto& [family, type] : e.type) {
    if (type != "histogram") continue;
    std::vector<const Sample*> buckets = Find(e, family + "_bucket");
    EXPECT_FALSE(buckets.empty()) << family;
    double last_le = -INFINITY;
    double last_count = 0;
    for (const Sample* b : buckets) {
      EXPECT_EQ(b->labels.count("le"), 1u) << family;
      if (b->labels.count("le") != 1) continue;
      const double le = ParseValue(b->labels.at("le"));
      EXPECT_GT(le, last_le) << family << " buckets not ascending";
      EXPECT_GE(b->value, last_count) << family << " le=" << b->labels.at("le") << " not cumulative";
      last_le = le;
      last_count = b->value;
      bounds[family].push_back(le);
    }
    EXPECT_TRUE(std::isinf(last_le)) << family << " has no +Inf bucket";
    EXPECT_EQ(Value(e, family + "_count"), last_count) << family;
    EXPECT_EQ(Find(e, family + "_sum").size(), 1u) << family;
  }
  return bounds;
}

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_ = std::make_shared<prometheus::Registry>();
    auto metrics = RegisterServingMetrics(*registry_, {"mistral-small-4", "router"}, 131072);
    ASSERT_TRUE(metrics.ok()) << metrics.status();
    metrics_ = *metrics;
    ServerOptions server_options;
    gate_ = std::make_shared<CallGate>(server_options);
    MetricsServerOptions options;
    options.listen_address = "127.0.0.1:0";
    auto server = MetricsServer::Start(options, registry_, gate_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_GT(server_->port(), 0);
  }

  std::shared_ptr<prometheus::Registry> registry_;
  ServingMetrics metrics_;
  std::shared_ptr<CallGate> gate_;
  std::unique_ptr<MetricsServer> server_;
};

TEST_F(MetricsTest, ServesValidExpositionWithVllmNamesAndBuckets) {
  metrics_.time_to_first_token->Observe(0.05);
  metrics_.time_to_first_token->Observe(0.001);  // on a boundary: le is inclusive
  for (int i = 0; i < 3; ++i) metrics_.inter_token_latency->Observe(0.02);
  metrics_.e2e_request_latency->Observe(3.0);
  metrics_.request_success_for(RequestFinish::kStop).Increment();
  metrics_.request_success_for(RequestFinish::kStop).Increment();
  metrics_.request_success_for(RequestFinish::kToolCalls).Increment();
  metrics_.prompt_tokens->Increment(1234);
  metrics_.generation_tokens->Increment(56);
  metrics_.num_requests_running->Set(3);
  metrics_.num_requests_waiting->Set(1);
  metrics_.kv_cache_usage_perc->Set(0.25);
  metrics_.kv_transfer_bytes->Increment(23552.0 * 8192);
  metrics_.kv_transfer_seconds->Observe(0.04);
  metrics_.request_prompt_tokens->Observe(1234);

  HttpResponse response = Http(server_->port(), "GET", "/metrics");
  ASSERT_EQ(response.status, 200);
  EXPECT_EQ(response.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
  ASSERT_EQ(response.headers.count("content-length"), 1u);
  EXPECT_EQ(std::stoul(response.headers["content-length"]), response.body.size());

  const Exposition e = ParseExposition(response.body);
  const std::map<std::string, std::string> expected_types = {
      {"sirocco:num_requests_running", "gauge"},
      {"sirocco:num_requests_waiting", "gauge"},
      {"sirocco:kv_cache_usage_perc", "gauge"},
      {"sirocco:prompt_tokens_total", "counter"},
      {"sirocco:generation_tokens_total", "counter"},
      {"sirocco:num_preemptions_total", "counter"},
      {"sirocco:prefix_cache_queries_total", "counter"},
      {"sirocco:prefix_cache_hits_total", "counter"},
      {"sirocco:request_success_total", "counter"},
      {"sirocco:kv_transfer_bytes_total", "counter"},
      {"sirocco:kv_transfer_failures_total", "counter"},
      {"sirocco:local_prefill_fallbacks_total", "counter"},
      {"sirocco:request_migrations_total", "counter"},
      {"sirocco:vision_encoder_layers_total", "counter"},
      {"sirocco:token_masks_total", "counter"},
      {"sirocco:token_mask_cache_hits_total", "counter"},
      {"sirocco:time_to_first_token_seconds", "histogram"},
      {"sirocco:inter_token_latency_seconds", "histogram"},
      {"sirocco:e2e_request_latency_seconds", "histogram"},
      {"sirocco:request_queue_time_seconds", "histogram"},
      {"sirocco:request_prefill_time_seconds", "histogram"},
      {"sirocco:request_decode_time_seconds", "histogram"},
      {"sirocco:request_prompt_tokens", "histogram"},
      {"sirocco:request_generation_tokens", "histogram"},
      {"sirocco:kv_transfer_seconds", "histogram"},
  };
  EXPECT_EQ(e.type, expected_types);
  for (const auto& [name, type] : expected_types) {
    ASSERT_EQ(e.help.count(name), 1u) << name;
    EXPECT_FALSE(e.help.at(name).empty()) << name;
  }

  for (const Sample& s : e.samples) {
    EXPECT_EQ(s.labels.at("model_name"), "mistral-small-4") << s.name;
    EXPECT_EQ(s.labels.at("role"), "router") << s.name;
  }

  const auto bounds = CheckHistograms(e);
  // vLLM's boundaries, written out from vllm/v1/metrics/loggers.py.
  const std::vector<double> ttft = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,   0.25,  0.5,    0.75,    1.0,
                                    2.5,   5.0,   7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0, INFINITY};
  const std::vector<double> itl = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4,  0.5,
                                   0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0, INFINITY};
  const std::vector<double> latency = {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,   20.0,
                                       30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0, INFINITY};
  EXPECT_EQ(bounds.at("sirocco:time_to_first_token_seconds"), ttft);
  EXPECT_EQ(bounds.at("sirocco:inter_token_latency_seconds"), itl);
  for (const char* name : {"sirocco:e2e_request_latency_seconds", "sirocco:request_queue_time_seconds",
                           "sirocco:request_prefill_time_seconds", "sirocco:request_decode_time_seconds"}) {
    EXPECT_EQ(bounds.at(name), latency) << name;
  }
  // 1-2-5 up to the model length (131072): 1, 2, 5, ..., 100000, +Inf.
  const std::vector<double>& tokens = bounds.at("sirocco:request_prompt_tokens");
  ASSERT_EQ(tokens.size(), 17u);
  EXPECT_EQ(tokens.front(), 1.0);
  EXPECT_EQ(tokens[15], 100000.0);

  // The values observed above.
  const std::string t = "sirocco:time_to_first_token_seconds";
  EXPECT_EQ(Value(e, t + "_count"), 2);
  EXPECT_NEAR(Value(e, t + "_sum"), 0.051, 1e-12);
  EXPECT_EQ(Value(e, t + "_bucket", {{"le", "0.001"}}), 1);
  EXPECT_EQ(Value(e, t + "_bucket", {{"le", "0.04"}}), 1);
  EXPECT_EQ(Value(e, t + "_bucket", {{"le", "0.06"}}), 2);
  EXPECT_EQ(Value(e, "sirocco:inter_token_latency_seconds_count"), 3);
  EXPECT_EQ(Value(e, "sirocco:inter_token_latency_seconds_bucket", {{"le", "0.01"}}), 0);
  EXPECT_EQ(Value(e, "sirocco:inter_token_latency_seconds_bucket", {{"le", "0.025"}}), 3);
  EXPECT_EQ(Value(e, "sirocco:request_success_total", {{"finished_reason", "stop"}}), 2);
  EXPECT_EQ(Value(e, "sirocco:request_success_total", {{"finished_reason", "tool_calls"}}), 1);
  EXPECT_EQ(Value(e, "sirocco:request_success_total", {{"finished_reason", "error"}}), 0);
  EXPECT_EQ(Find(e, "sirocco:request_success_total").size(), 5u);
  EXPECT_EQ(Value(e, "sirocco:prompt_tokens_total"), 1234);
  EXPECT_EQ(Value(e, "sirocco:generation_tokens_total"), 56);
  EXPECT_EQ(Value(e, "sirocco:num_requests_running"), 3);
  EXPECT_EQ(Value(e, "sirocco:kv_cache_usage_perc"), 0.25);
  EXPECT_EQ(Value(e, "sirocco:kv_transfer_bytes_total"), 23552.0 * 8192);
  EXPECT_EQ(Value(e, "sirocco:kv_transfer_seconds_bucket", {{"le", "0.05"}}), 1);
}

TEST_F(MetricsTest, RegisteringTwiceReturnsTheSameMetrics) {
  auto again = RegisterServingMetrics(*registry_, {"mistral-small-4", "router"}, 131072);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->time_to_first_token, metrics_.time_to_first_token);
  EXPECT_EQ(&again->request_success_for(RequestFinish::kError), &metrics_.request_success_for(RequestFinish::kError));

  auto clash = RegisterServingMetrics(*registry_, {"other-model", "router"}, 131072);
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kInvalidArgument) << clash.status();
  EXPECT_EQ(RegisterServingMetrics(*registry_, {"m", "r"}, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(MetricsTest, ProbesAndOtherRequests) {
  HttpResponse healthz = Http(server_->port(), "GET", "/healthz");
  EXPECT_EQ(healthz.status, 200);
  EXPECT_EQ(healthz.body, "ok\n");
  EXPECT_EQ(Http(server_->port(), "GET", "/readyz").status, 200);

  gate_->StartDrain();
  HttpResponse ready = Http(server_->port(), "GET", "/readyz");
  EXPECT_EQ(ready.status, 503);
  EXPECT_EQ(ready.body, "draining\n");
  EXPECT_EQ(Http(server_->port(), "GET", "/healthz").status, 200);  // alive while draining

  HttpResponse head = Http(server_->port(), "HEAD", "/metrics");
  EXPECT_EQ(head.status, 200);
  EXPECT_TRUE(head.body.empty());
  EXPECT_GT(std::stoul(head.headers["content-length"]), 0u);

  HttpResponse post = Http(server_->port(), "POST", "/metrics");
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(post.headers["allow"], "GET, HEAD");

  EXPECT_EQ(Http(server_->port(), "GET", "/").status, 404);
  EXPECT_EQ(Http(server_->port(), "GET", "/metricsx").status, 404);
  EXPECT_EQ(Http(server_->port(), "GET", "/metrics/x").status, 404);
}

TEST_F(MetricsTest, ATakenPortIsAnError) {
  MetricsServerOptions options;
  options.listen_address = "127.0.0.1:" + std::to_string(server_->port());
  auto second = MetricsServer::Start(options, registry_, nullptr);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
}

TEST(MetricsBucketsTest, OneTwoFiveLikeVllm) {
  EXPECT_EQ(OneTwoFiveBuckets(100), (std::vector<double>{1, 2, 5, 10, 20, 50, 100}));
  EXPECT_EQ(OneTwoFiveBuckets(7), (std::vector<double>{1, 2, 5}));
  EXPECT_EQ(OneTwoFiveBuckets(1), (std::vector<double>{1}));
}

}  // namespace
}  // namespace sirocco::services
