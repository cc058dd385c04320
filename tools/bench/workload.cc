#include "tools/bench/workload.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace sirocco::bench {
namespace {

// Words that the tekken tokenizer encodes as one token each when preceded by
// a space, so a chat prompt of n words is about n tokens.
constexpr const char* kWords[] = {
    "the",   "of",    "and",   "to",    "in",    "is",    "that",  "for",   "it",    "as",    "was",   "with", "be",
    "by",    "on",    "not",   "he",    "this",  "are",   "or",    "his",   "from",  "at",    "which", "but",  "have",
    "an",    "had",   "they",  "you",   "were",  "their", "one",   "all",   "we",    "can",   "her",   "has",  "there",
    "been",  "if",    "more",  "when",  "will",  "would", "who",   "so",    "no",    "time",  "water", "city", "world",
    "house", "river", "light", "music", "story", "table", "green", "small", "large", "north", "south", "early"};
constexpr int kNumWords = sizeof(kWords) / sizeof(kWords[0]);

// An independent generator per (seed, stream, index): requests do not depend
// on each other or on the order they are made in.
std::mt19937_64 Rng(std::uint64_t seed, std::uint64_t stream, std::int64_t index) {
  const auto u = static_cast<std::uint64_t>(index);
  std::seed_seq seq{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                    static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(u),
                    static_cast<std::uint32_t>(u >> 32)};
  return std::mt19937_64(seq);
}

constexpr std::uint64_t kRequestStream = 1;
constexpr std::uint64_t kPrefixStream = 2;
constexpr std::uint64_t kShuffleStream = 3;
constexpr std::uint64_t kTurnStream = 4;

std::string Words(std::mt19937_64& rng, int n) {
  std::uniform_int_distribution<int> pick(0, kNumWords - 1);
  std::string out;
  for (int i = 0; i < n; ++i) {
    if (i > 0) out += ' ';
    out += kWords[pick(rng)];
  }
  return out;
}

std::uint32_t Crc32(const std::string& bytes) {
  std::uint32_t crc = 0xffffffffu;
  for (unsigned char c : bytes) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void PutBe32(std::string& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xff);
}

void PngChunk(std::string& out, const char* type, const std::string& data) {
  PutBe32(out, static_cast<std::uint32_t>(data.size()));
  std::string body = std::string(type, 4) + data;
  out += body;
  PutBe32(out, Crc32(body));
}

absl::StatusOr<std::vector<std::string>> LoadShareGpt(const std::string& path, std::uint64_t seed) {
  if (!std::filesystem::exists(path)) return absl::NotFoundError(absl::StrCat("--sharegpt: no file ", path));
  std::ifstream in(path);
  std::vector<std::string> prompts;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object())
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": not a JSON object"));
    auto it = j.find("conversations");
    if (it == j.end() || !it->is_array()) continue;
    for (const auto& turn : *it) {
      if (!turn.is_object()) continue;
      const std::string from = turn.value("from", "");
      if ((from == "human" || from == "user") && turn.contains("value") && turn["value"].is_string()) {
        std::string value = turn["value"].get<std::string>();
        if (!value.empty()) prompts.push_back(std::move(value));
        break;
      }
    }
  }
  if (prompts.empty())
    return absl::InvalidArgumentError(absl::StrCat("--sharegpt: ", path, " holds no conversation with a human turn"));
  auto rng = Rng(seed, kShuffleStream, 0);
  std::shuffle(prompts.begin(), prompts.end(), rng);
  return prompts;
}

}  // namespace

absl::StatusOr<LengthDist> LengthDist::Parse(const std::string& text) {
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("length '", text, "' is not N, fixed:N, uniform:MIN:MAX, normal:MEAN:STD or mix:N@W,N@W..."));
  };
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  LengthDist d;
  double v = 0;
  if (parts.size() == 1 || (parts.size() == 2 && parts[0] == "fixed")) {
    if (!absl::SimpleAtod(parts.back(), &v) || v < 1 || v != std::floor(v)) return bad();
    d.kind = Kind::kFixed;
    d.a = v;
    return d;
  }
  if (parts.size() == 3 && (parts[0] == "uniform" || parts[0] == "normal")) {
    double w = 0;
    if (!absl::SimpleAtod(parts[1], &v) || !absl::SimpleAtod(parts[2], &w)) return bad();
    d.kind = parts[0] == "uniform" ? Kind::kUniform : Kind::kNormal;
    d.a = v;
    d.b = w;
    if (d.kind == Kind::kUniform && (v < 1 || w < v || v != std::floor(v) || w != std::floor(w))) return bad();
    if (d.kind == Kind::kNormal && (v < 1 || w < 0)) return bad();
    return d;
  }
  if (parts.size() == 2 && parts[0] == "mix") {
    d.kind = Kind::kMix;
    for (const std::string& item : std::vector<std::string>(absl::StrSplit(parts[1], ','))) {
      std::vector<std::string> lw = absl::StrSplit(item, '@');
      int len = 0;
      double weight = 0;
      if (lw.size() != 2 || !absl::SimpleAtoi(lw[0], &len) || !absl::SimpleAtod(lw[1], &weight) || len < 1 ||
          !(weight > 0))
        return bad();
      d.mix.emplace_back(len, weight);
    }
    return d;
  }
  return bad();
}

std::string LengthDist::ToString() const {
  switch (kind) {
    case Kind::kFixed:
      return absl::StrCat(a);
    case Kind::kUniform:
      return absl::StrCat("uniform:", a, ":", b);
    case Kind::kNormal:
      return absl::StrCat("normal:", a, ":", b);
    case Kind::kMix: {
      std::string out = "mix:";
      for (std::size_t i = 0; i < mix.size(); ++i)
        absl::StrAppend(&out, i ? "," : "", mix[i].first, "@", mix[i].second);
      return out;
    }
  }
  return "?";
}

int LengthDist::Sample(std::mt19937_64& rng) const {
  switch (kind) {
    case Kind::kFixed:
      return static_cast<int>(a);
    case Kind::kUniform:
      return std::uniform_int_distribution<int>(static_cast<int>(a), static_cast<int>(b))(rng);
    case Kind::kNormal:
      return std::max(1, static_cast<int>(std::lround(std::normal_distribution<double>(a, b)(rng))));
    case Kind::kMix: {
      std::vector<double> weights;
      for (const auto& [len, w] : mix) weights.push_back(w);
      std::discrete_distribution<int> pick(weights.begin(), weights.end());
      return mix[static_cast<std::size_t>(pick(rng))].first;
    }
  }
  return 1;
}

const char* ApiName(Api api) { return api == Api::kGenerate ? "generate" : "chat"; }

const char* EffortName(Effort effort) {
  switch (effort) {
    case Effort::kUnspecified:
      return "unspecified";
    case Effort::kNone:
      return "none";
    case Effort::kHigh:
      return "high";
  }
  return "?";
}

absl::StatusOr<std::vector<std::pair<Effort, double>>> ParseEffortMix(const std::string& text) {
  std::vector<std::pair<Effort, double>> mix;
  for (const std::string& item : std::vector<std::string>(absl::StrSplit(text, ','))) {
    std::vector<std::string> ew = absl::StrSplit(item, ':');
    double weight = 0;
    if (ew.size() != 2 || !absl::SimpleAtod(ew[1], &weight) || !(weight > 0))
      return absl::InvalidArgumentError(absl::StrCat("reasoning mix '", text, "': want EFFORT:WEIGHT,..."));
    Effort e;
    if (ew[0] == "none") {
      e = Effort::kNone;
    } else if (ew[0] == "high") {
      e = Effort::kHigh;
    } else if (ew[0] == "unspecified") {
      e = Effort::kUnspecified;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("reasoning mix: '", ew[0], "' is not one of unspecified, none, high"));
    }
    mix.emplace_back(e, weight);
  }
  return mix;
}

absl::Status WorkloadOptions::Validate() const {
  const bool chat_prompts = api == Api::kChat || !sharegpt_path.empty();
  if (!chat_prompts && vocab_size <= 0) return absl::InvalidArgumentError("vocab_size: needed for token-id prompts");
  if (!chat_prompts && min_token_id >= vocab_size)
    return absl::InvalidArgumentError(absl::StrCat("min_token_id ", min_token_id, " >= vocab_size ", vocab_size));
  if (min_token_id < 0) return absl::InvalidArgumentError("min_token_id: negative");
  if (prefix_groups < 0 || prefix_len < 0) return absl::InvalidArgumentError("prefix groups/length: negative");
  if ((prefix_groups > 0) != (prefix_len > 0))
    return absl::InvalidArgumentError("prefix groups and prefix length: give both or neither");
  if (prefix_groups > 0 && !sharegpt_path.empty())
    return absl::InvalidArgumentError("shared-prefix groups and ShareGPT prompts exclude each other");
  if (conversations < 0) return absl::InvalidArgumentError("conversations: negative");
  if (conversations > 0 && chat_prompts)
    return absl::InvalidArgumentError("conversations: token-id prompts only (not --api chat or --sharegpt)");
  if (!effort_mix.empty() && !chat_prompts)
    return absl::InvalidArgumentError("a reasoning-effort mix needs Chat requests (--api chat or --sharegpt)");
  if (!(image_share >= 0 && image_share <= 1)) return absl::InvalidArgumentError("image share: not in [0, 1]");
  if (!(cancel_share >= 0 && cancel_share <= 1)) return absl::InvalidArgumentError("cancel share: not in [0, 1]");
  if (cancel_max_chunks < 0) return absl::InvalidArgumentError("cancel max chunks: negative");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Workload>> Workload::Create(const WorkloadOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<Workload> w(new Workload(options));
  if (!options.sharegpt_path.empty()) {
    auto prompts = LoadShareGpt(options.sharegpt_path, options.seed);
    if (!prompts.ok()) return prompts.status();
    w->sharegpt_ = std::move(*prompts);
  }
  return w;
}

RequestSpec Workload::Make(std::int64_t index) const {
  const WorkloadOptions& o = options_;
  auto rng = Rng(o.seed, kRequestStream, index);
  RequestSpec r;
  r.index = index;
  r.ignore_eos = o.ignore_eos;
  r.input_len = o.input_len.Sample(rng);
  r.max_tokens = o.output_len.Sample(rng);
  r.api = (o.api == Api::kChat || !sharegpt_.empty()) ? Api::kChat : Api::kGenerate;
  // Each draw below happens for every request, so changing one share does
  // not reshuffle the others.
  const double u_image = std::uniform_real_distribution<double>(0, 1)(rng);
  const double u_cancel = std::uniform_real_distribution<double>(0, 1)(rng);
  const int max_chunks = o.cancel_max_chunks > 0 ? o.cancel_max_chunks : std::max(1, r.max_tokens / 2);
  const int cancel_chunks = std::uniform_int_distribution<int>(1, max_chunks)(rng);
  if (!o.effort_mix.empty()) {
    std::vector<double> weights;
    for (const auto& [e, w] : o.effort_mix) weights.push_back(w);
    std::discrete_distribution<int> pick(weights.begin(), weights.end());
    r.effort = o.effort_mix[static_cast<std::size_t>(pick(rng))].first;
  }
  r.image = u_image < o.image_share;
  if (r.image) r.api = Api::kChat;
  if (u_cancel < o.cancel_share) r.cancel_after_chunks = cancel_chunks;

  if (!sharegpt_.empty()) {
    const auto n = static_cast<std::int64_t>(sharegpt_.size());
    r.prompt_text = sharegpt_[static_cast<std::size_t>(((index % n) + n) % n)];
    r.input_len = 0;  // unknown before the server tokenizes it
    return r;
  }
  if (o.prefix_groups > 0) {
    const std::int64_t g = ((index % o.prefix_groups) + o.prefix_groups) % o.prefix_groups;
    r.group = static_cast<int>(g);
  }
  if (r.api == Api::kGenerate) {
    std::uniform_int_distribution<std::int32_t> id(o.min_token_id, o.vocab_size - 1);
    if (r.group >= 0) {
      auto prefix_rng = Rng(o.seed, kPrefixStream, r.group);
      for (int i = 0; i < o.prefix_len; ++i) r.prompt_ids.push_back(id(prefix_rng));
    }
    if (o.conversations > 0) {
      // Turns 0 .. t of conversation c, each from its own generator; warm-up
      // requests (negative indices) are one-turn conversations of their own.
      const std::int64_t c = index >= 0 ? index % o.conversations : index;
      const std::int64_t t = index >= 0 ? index / o.conversations : 0;
      for (std::int64_t k = 0; k <= t; ++k) {
        auto turn = Rng(o.seed, kTurnStream, c * (std::int64_t{1} << 24) + k);
        const int user = o.input_len.Sample(turn);
        const int answer = o.output_len.Sample(turn);
        for (int i = 0; i < user; ++i) r.prompt_ids.push_back(id(turn));
        if (k == t) {
          r.max_tokens = answer;
        } else {
          for (int i = 0; i < answer; ++i) r.prompt_ids.push_back(id(turn));
        }
      }
      r.input_len = static_cast<int>(r.prompt_ids.size());
      return r;
    }
    for (int i = 0; i < r.input_len; ++i) r.prompt_ids.push_back(id(rng));
    r.input_len = static_cast<int>(r.prompt_ids.size());
  } else {
    if (r.group >= 0) {
      auto prefix_rng = Rng(o.seed, kPrefixStream, r.group);
      r.prompt_text = Words(prefix_rng, o.prefix_len) + " ";
    }
    r.prompt_text += Words(rng, r.input_len);
    if (r.group >= 0) r.input_len += o.prefix_len;
  }
  return r;
}

std::string TestPng(int width, int height) {
  // Raw scanlines (filter byte 0, then RGB), stored in uncompressed deflate
  // blocks inside a zlib stream.
  std::string raw;
  for (int y = 0; y < height; ++y) {
    raw += '\0';
    for (int x = 0; x < width; ++x) {
      raw += static_cast<char>(x * 255 / std::max(1, width - 1));
      raw += static_cast<char>(y * 255 / std::max(1, height - 1));
      raw += static_cast<char>(128);
    }
  }
  std::string z = "\x78\x01";
  for (std::size_t pos = 0; pos < raw.size() || pos == 0;) {
    const std::size_t n = std::min<std::size_t>(65535, raw.size() - pos);
    const bool last = pos + n >= raw.size();
    z += static_cast<char>(last ? 1 : 0);
    z += static_cast<char>(n & 0xff);
    z += static_cast<char>(n >> 8);
    z += static_cast<char>(~n & 0xff);
    z += static_cast<char>((~n >> 8) & 0xff);
    z.append(raw, pos, n);
    pos += n;
    if (last) break;
  }
  std::uint32_t s1 = 1, s2 = 0;
  for (unsigned char c : raw) {
    s1 = (s1 + c) % 65521;
    s2 = (s2 + s1) % 65521;
  }
  PutBe32(z, (s2 << 16) | s1);

  std::string png = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  PutBe32(ihdr, static_cast<std::uint32_t>(width));
  PutBe32(ihdr, static_cast<std::uint32_t>(height));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB, deflate, no filter, no interlace
  PngChunk(png, "IHDR", ihdr);
  PngChunk(png, "IDAT", z);
  PngChunk(png, "IEND", "");
  return png;
}

}  // namespace sirocco::bench
