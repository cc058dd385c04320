// Sirocco's tokenizer against mistral-common's, id for id: every generated
// string of tests/reference/text/strings_golden/ (>= 10,000, six of them over
// 100 KB) encoded with each tekken file the package ships and each derived
// file (v7, v11, v13, v15, built here from the shipped vocabulary), and the
// reference's decode of random id sequences under each special-token policy,
// also streamed through IncrementalDetokenizer. Goldens come from
// strings_reference.py generate; no Python here.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/text/detokenizer.h"
#include "engine/text/tekken.h"
#include "engine/text/tekken_file.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sirocco::text {
namespace {

using nlohmann::json;
using Ids = std::vector<std::int32_t>;

const std::string kGoldenDir = SIROCCO_STRINGS_GOLDEN_DIR;
const std::string kTekkenDir = SIROCCO_TEKKEN_DIR;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Reads the varint records of strings_reference.py's formats.
class Reader {
 public:
  Reader(std::string data, std::string_view magic) : data_(std::move(data)) {
    ok_ = data_.compare(0, 8, magic) == 0;
    pos_ = 8;
  }
  bool ok() const { return ok_ && pos_ <= data_.size(); }
  std::uint64_t Varint() {
    std::uint64_t v = 0;
    for (int shift = 0; pos_ < data_.size(); shift += 7) {
      const auto b = static_cast<unsigned char>(data_[pos_++]);
      v |= std::uint64_t{b & 0x7Fu} << shift;
      if (!(b & 0x80)) return v;
    }
    ok_ = false;
    return 0;
  }
  std::string Blob() {
    const std::uint64_t n = Varint();
    if (n > data_.size() - pos_) {
      ok_ = false;
      return {};
    }
    pos_ += n;
    return data_.substr(pos_ - n, n);
  }

 private:
  std::string data_;
  std::size_t pos_ = 0;
  bool ok_ = false;
};

struct Golden {
  json manifest;
  std::vector<std::string> categories;
  std::vector<std::pair<std::string, std::string>> strings;  // (category, text)
};

const Golden& LoadGolden() {
  static const Golden* golden = [] {
    auto* g = new Golden;
    g->manifest = json::parse(ReadFile(kGoldenDir + "/manifest.json"), nullptr, false);
    if (g->manifest.is_discarded()) return g;
    g->categories = g->manifest["categories"].get<std::vector<std::string>>();
    Reader r(ReadFile(kGoldenDir + "/strings.bin"), "SIRSTR01");
    const std::uint64_t n = r.Varint();
    for (std::uint64_t i = 0; i < n && r.ok(); ++i) {
      const std::uint64_t category = r.Varint();
      std::string text;
      for (std::uint64_t s = r.Varint(); s > 0; --s) {
        const std::uint64_t repeat = r.Varint();
        const std::string unit = r.Blob();
        for (std::uint64_t k = 0; k < repeat; ++k) text += unit;
      }
      g->strings.emplace_back(category < g->categories.size() ? g->categories[category] : "?", std::move(text));
    }
    return g;
  }();
  return *golden;
}

std::vector<Ids> ReadIds(const std::string& file) {
  Reader r(ReadFile(kGoldenDir + "/" + file), "SIRIDS01");
  const auto offset = static_cast<std::int32_t>(r.Varint());
  std::vector<Ids> all(r.Varint());
  for (Ids& ids : all) {
    ids.resize(r.Varint());
    for (std::int32_t& id : ids) id = offset + static_cast<std::int32_t>(r.Varint());
  }
  EXPECT_TRUE(r.ok()) << file;
  return all;
}

struct DecodeCase {
  Ids ids;
  std::string ignore, keep;
};

std::vector<DecodeCase> ReadDecodeCases(const std::string& file) {
  Reader r(ReadFile(kGoldenDir + "/" + file), "SIRDEC01");
  std::vector<DecodeCase> cases(r.Varint());
  for (DecodeCase& c : cases) {
    c.ids.resize(r.Varint());
    for (std::int32_t& id : c.ids) id = static_cast<std::int32_t>(r.Varint());
    c.ignore = r.Blob();
    c.keep = r.Blob();
  }
  EXPECT_TRUE(r.ok()) << file;
  return cases;
}

// The real tokenizer files are not committed: a missing folder is a failure
// that says how to get them, never a skip.
bool HaveTekkenDir() {
  if (std::filesystem::exists(kTekkenDir + "/tekken_240911.json") &&
      std::filesystem::exists(kTekkenDir + "/tekken_240718.json")) {
    return true;
  }
  ADD_FAILURE() << "the tekken files are missing from " << kTekkenDir
                << ": run tools/setup.sh (it extracts data/tekken_*.json of the mistral-common wheel there)";
  return false;
}

absl::StatusOr<std::unique_ptr<Tekkenizer>> LoadByName(const json& entry) {
  const std::string name = entry["name"];
  if (entry["source"] == "shipped") return Tekkenizer::Load(kTekkenDir + "/" + name + ".json");
  auto version = ParseTokenizerVersion(entry["version"].get<std::string>());
  if (!version.ok()) return version.status();
  return LoadDerivedTekken(kTekkenDir + "/tekken_240911.json", *version);
}

class TekkenGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TekkenGolden, EncodesEveryStringAsMistralCommon) {
  const Golden& golden = LoadGolden();
  ASSERT_FALSE(golden.manifest.is_discarded()) << "cannot read " << kGoldenDir << "/manifest.json";
  if (!HaveTekkenDir()) return;
  const json* entry = nullptr;
  for (const json& e : golden.manifest["tokenizers"]) {
    if (e["name"] == GetParam()) entry = &e;
  }
  ASSERT_NE(entry, nullptr) << GetParam() << " is not in the manifest";
  auto loaded = LoadByName(*entry);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Tekkenizer& tok = **loaded;
  EXPECT_EQ(TokenizerVersionName(tok.version()), (*entry)["version"].get<std::string>());
  EXPECT_EQ(tok.num_special_tokens(), (*entry)["num_special_tokens"].get<int>());
  EXPECT_EQ(tok.vocab_size(), (*entry)["vocab_size"].get<std::int64_t>());

  const std::vector<Ids> expected = ReadIds((*entry)["ids"]);
  ASSERT_EQ(expected.size(), golden.strings.size());
  ASSERT_GE(golden.strings.size(), 10000u);
  int mismatches = 0, long_inputs = 0;
  for (std::size_t i = 0; i < golden.strings.size(); ++i) {
    const auto& [category, text] = golden.strings[i];
    long_inputs += text.size() >= 100000;
    const Ids got = tok.Encode(text);
    if (got != expected[i]) {
      if (++mismatches <= 5) {
        std::size_t at = 0;
        while (at < got.size() && at < expected[i].size() && got[at] == expected[i][at]) ++at;
        ADD_FAILURE() << GetParam() << ": string " << i << " (" << category << ", " << text.size()
                      << " bytes) differs at id " << at << ": got "
                      << (at < got.size() ? got[at] : -1) << ", mistral-common "
                      << (at < expected[i].size() ? expected[i][at] : -1);
      }
      continue;
    }
    auto round_trip = tok.Decode(got, SpecialTokenPolicy::kRaise);
    if (!round_trip.ok() || *round_trip != text) {
      ++mismatches;
      ADD_FAILURE() << GetParam() << ": string " << i << " does not decode back to itself";
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << golden.strings.size() << " strings";
  EXPECT_GE(long_inputs, 1);
}

TEST_P(TekkenGolden, DecodesAsMistralCommonAlsoWhenStreamed) {
  const Golden& golden = LoadGolden();
  ASSERT_FALSE(golden.manifest.is_discarded());
  if (!HaveTekkenDir()) return;
  const json* entry = nullptr;
  for (const json& e : golden.manifest["tokenizers"]) {
    if (e["name"] == GetParam()) entry = &e;
  }
  ASSERT_NE(entry, nullptr);
  auto loaded = LoadByName(*entry);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Tekkenizer& tok = **loaded;
  const std::vector<DecodeCase> cases = ReadDecodeCases((*entry)["decode"]);
  ASSERT_EQ(cases.size(), (*entry)["decode_cases"].get<std::size_t>());
  int wrong = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const DecodeCase& c = cases[i];
    bool has_special = false;
    for (std::int32_t id : c.ids) has_special |= tok.IsSpecial(id);
    for (const auto& [policy, want] : {std::pair{SpecialTokenPolicy::kIgnore, &c.ignore},
                                       std::pair{SpecialTokenPolicy::kKeep, &c.keep}}) {
      auto got = tok.Decode(c.ids, policy);
      IncrementalDetokenizer stream(tok, policy);
      std::string streamed;
      for (std::int32_t id : c.ids) streamed += stream.Push(id).value_or("<error>");
      streamed += stream.Flush();
      if (!got.ok() || *got != *want || streamed != *want) {
        if (++wrong <= 5) ADD_FAILURE() << GetParam() << ": decode case " << i << " differs";
      }
    }
    if (tok.Decode(c.ids, SpecialTokenPolicy::kRaise).ok() == has_special) {
      if (++wrong <= 5) ADD_FAILURE() << GetParam() << ": decode case " << i << ": RAISE policy";
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << cases.size() << " decode cases";
}

INSTANTIATE_TEST_SUITE_P(Files, TekkenGolden,
                         ::testing::Values("tekken_240718", "tekken_240911", "tekken_v7", "tekken_v11",
                                           "tekken_v13", "tekken_v15"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

TEST(TekkenGoldenThreads, ConcurrentEncodesMatchTheGoldens) {
  const Golden& golden = LoadGolden();
  ASSERT_FALSE(golden.manifest.is_discarded());
  if (!HaveTekkenDir()) return;
  auto tok = Tekkenizer::Load(kTekkenDir + "/tekken_240911.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<Ids> expected = ReadIds(golden.manifest["tokenizers"][0]["ids"]);
  std::vector<int> wrong(3, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 3; ++k) {
    threads.emplace_back([&, k] {
      for (std::size_t i = k; i < golden.strings.size(); i += 3) wrong[k] += (*tok)->Encode(golden.strings[i].second) != expected[i];
    });
  }
  for (auto& t : threads) t.join();
  for (int w : wrong) EXPECT_EQ(w, 0);
}

}  // namespace
}  // namespace sirocco::text
