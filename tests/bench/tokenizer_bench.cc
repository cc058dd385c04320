// Tekken tokenizer throughput, single-threaded, in MB/s of UTF-8 input:
//   encode/<corpus>  Tekkenizer::Encode on the whole corpus in one call
//   split/<corpus>   the PCRE2 pre-split alone (the regex's share of encode)
//   decode/<corpus>  Tekkenizer::Decode of the corpus's ids (MB/s of text out)
// tests/reference/text/tokenizer_throughput.py runs this binary next to
// mistral-common's and tiktoken's encode on the same corpus files and prints
// the ratios (docs/benchmarks.md, "Tokenizer").
//
// Flags (removed before benchmark::Initialize):
//   --tokenizer=FILE   a tekken.json (default: third_party/tekken/tekken_240911.json)
//   --corpus_dir=DIR   every DIR/*.txt is one corpus, named after the file;
//                      without it the corpora are built from the committed
//                      string goldens (prose, code, CJK, multilingual)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "engine/text/tekken.h"
#include "engine/text/tekken_regex.h"
#include "nlohmann/json.hpp"

namespace sirocco::text {
namespace {

std::string g_tokenizer = std::string(SIROCCO_TEKKEN_DIR) + "/tekken_240911.json";  // --tokenizer
std::string g_corpus_dir;                                                          // --corpus_dir

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// strings_golden/strings.bin (format in strings_reference.py): category and
// text of every string.
std::vector<std::pair<std::string, std::string>> GoldenStrings() {
  const auto manifest = nlohmann::json::parse(ReadFile(std::string(SIROCCO_STRINGS_GOLDEN_DIR) + "/manifest.json"),
                                              nullptr, /*allow_exceptions=*/false);
  if (manifest.is_discarded()) return {};
  const auto categories = manifest["categories"].get<std::vector<std::string>>();
  const std::string data = ReadFile(std::string(SIROCCO_STRINGS_GOLDEN_DIR) + "/strings.bin");
  std::size_t pos = 8;
  auto varint = [&] {
    std::uint64_t v = 0;
    for (int shift = 0; pos < data.size(); shift += 7) {
      const auto b = static_cast<unsigned char>(data[pos++]);
      v |= std::uint64_t{b & 0x7Fu} << shift;
      if (!(b & 0x80)) break;
    }
    return v;
  };
  std::vector<std::pair<std::string, std::string>> out;
  if (data.compare(0, 8, "SIRSTR01") != 0) return out;
  for (std::uint64_t n = varint(); n > 0 && pos < data.size(); --n) {
    const std::uint64_t category = varint();
    std::string text;
    for (std::uint64_t s = varint(); s > 0; --s) {
      const std::uint64_t repeat = varint();
      const std::uint64_t len = varint();
      for (std::uint64_t k = 0; k < repeat; ++k) text.append(data, pos, len);
      pos += len;
    }
    out.emplace_back(category < categories.size() ? categories[category] : "", std::move(text));
  }
  return out;
}

// Corpora from the goldens' categories.
std::map<std::string, std::string> GoldenCorpora() {
  std::map<std::string, std::string> corpora;
  for (const auto& [category, text] : GoldenStrings()) {
    if (category == "prose_latin") corpora["prose"] += text + "\n";
    if (category == "code") corpora["code"] += text + "\n";
    if (category == "long" && !text.empty() && static_cast<unsigned char>(text[0]) >= 0xE0) corpora["cjk"] += text;
    if (category == "emoji" || category == "mixed" || category == "prose_other") {
      corpora["multilingual"] += text + "\n";
    }
  }
  return corpora;
}

std::map<std::string, std::string> Corpora() {
  if (g_corpus_dir.empty()) return GoldenCorpora();
  std::map<std::string, std::string> corpora;
  for (const auto& entry : std::filesystem::directory_iterator(g_corpus_dir)) {
    if (entry.path().extension() == ".txt") corpora[entry.path().stem().string()] = ReadFile(entry.path().string());
  }
  return corpora;
}

void RegisterAll() {
  auto loaded = Tekkenizer::Load(g_tokenizer);
  if (!loaded.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s (run tools/setup.sh, or pass --tokenizer=FILE)\n",
                 std::string(loaded.status().message()).c_str());
    std::exit(1);
  }
  // Shared by every benchmark for the life of the process.
  static const Tekkenizer* tokenizer = loaded->release();
  static const PreTokenizer* splitter = PreTokenizer::Create(tokenizer->pattern())->release();
  static const auto* corpora = new std::map<std::string, std::string>(Corpora());
  if (corpora->empty()) {
    std::fprintf(stderr, "tokenizer_bench: no corpus found\n");
    std::exit(1);
  }
  for (const auto& [name, text] : *corpora) {
    const std::string* corpus = &text;
    benchmark::RegisterBenchmark(("encode/" + name).c_str(), [corpus](benchmark::State& state) {
      std::size_t tokens = 0;
      for (auto _ : state) {
        std::vector<std::int32_t> ids = tokenizer->Encode(*corpus);
        tokens = ids.size();
        benchmark::DoNotOptimize(ids.data());
      }
      state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * corpus->size()));
      state.counters["bytes"] = static_cast<double>(corpus->size());
      state.counters["bytes_per_token"] = static_cast<double>(corpus->size()) / static_cast<double>(tokens);
    })->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("split/" + name).c_str(), [corpus](benchmark::State& state) {
      for (auto _ : state) {
        std::size_t pieces = 0;
        splitter->Split(*corpus, [&](std::string_view) { ++pieces; });
        benchmark::DoNotOptimize(pieces);
      }
      state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * corpus->size()));
    })->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("decode/" + name).c_str(), [corpus](benchmark::State& state) {
      const std::vector<std::int32_t> ids = tokenizer->Encode(*corpus);
      for (auto _ : state) {
        auto decoded = tokenizer->Decode(ids, SpecialTokenPolicy::kKeep);
        benchmark::DoNotOptimize(decoded->data());
      }
      state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * corpus->size()));
    })->Unit(benchmark::kMillisecond);
  }
}

// Removes this binary's own flags from argv.
void ParseFlags(int* argc, char** argv) {
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string_view arg = argv[i];
    constexpr std::string_view kTokenizer = "--tokenizer=", kCorpus = "--corpus_dir=";
    if (arg.substr(0, kTokenizer.size()) == kTokenizer) {
      g_tokenizer = std::string(arg.substr(kTokenizer.size()));
    } else if (arg.substr(0, kCorpus.size()) == kCorpus) {
      g_corpus_dir = std::string(arg.substr(kCorpus.size()));
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  argv[out] = nullptr;
}

}  // namespace
}  // namespace sirocco::text

int main(int argc, char** argv) {
  sirocco::text::ParseFlags(&argc, argv);
  sirocco::text::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
