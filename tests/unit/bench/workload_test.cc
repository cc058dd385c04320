// Workloads: determinism by (seed, index), lengths and token ids within their
// bounds, shared prefixes, ShareGPT parsing, shares of images, cancellations
// and reasoning efforts, and the test PNG's structure.
#include "tools/bench/workload.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

namespace sirocco::bench {
namespace {

WorkloadOptions Base() {
  WorkloadOptions o;
  o.vocab_size = 5000;
  o.min_token_id = 1000;
  return o;
}

TEST(LengthDistTest, ParsesEveryForm) {
  auto f = LengthDist::Parse("64");
  ASSERT_TRUE(f.ok());
  std::mt19937_64 rng(1);
  EXPECT_EQ(f->Sample(rng), 64);
  EXPECT_TRUE(LengthDist::Parse("fixed:3").ok());
  auto u = LengthDist::Parse("uniform:10:20");
  ASSERT_TRUE(u.ok());
  std::map<int, int> seen;
  for (int i = 0; i < 2000; ++i) ++seen[u->Sample(rng)];
  EXPECT_EQ(seen.begin()->first, 10);
  EXPECT_EQ(seen.rbegin()->first, 20);
  EXPECT_EQ(seen.size(), 11u);
  auto n = LengthDist::Parse("normal:100:10");
  ASSERT_TRUE(n.ok());
  double sum = 0, sum2 = 0;
  for (int i = 0; i < 20000; ++i) {
    const double v = n->Sample(rng);
    sum += v;
    sum2 += v * v;
  }
  EXPECT_NEAR(sum / 20000, 100, 0.5);
  EXPECT_NEAR(std::sqrt(sum2 / 20000 - (sum / 20000) * (sum / 20000)), 10, 0.5);
  auto m = LengthDist::Parse("mix:5@3,50@1");
  ASSERT_TRUE(m.ok());
  int fives = 0;
  for (int i = 0; i < 8000; ++i) {
    const int v = m->Sample(rng);
    ASSERT_TRUE(v == 5 || v == 50);
    fives += v == 5;
  }
  EXPECT_NEAR(fives / 8000.0, 0.75, 0.02);
  for (const char* bad : {"0", "abc", "uniform:5", "uniform:9:3", "normal:10:-1", "mix:5", "mix:5@0", "1.5"})
    EXPECT_FALSE(LengthDist::Parse(bad).ok()) << bad;
}

TEST(WorkloadTest, RandomTokenIdsAreDeterministicAndInRange) {
  WorkloadOptions o = Base();
  o.input_len = *LengthDist::Parse("uniform:5:40");
  o.output_len = *LengthDist::Parse("normal:20:5");
  o.seed = 42;
  auto w = Workload::Create(o);
  ASSERT_TRUE(w.ok());
  for (std::int64_t i = 0; i < 200; ++i) {
    const RequestSpec r = (*w)->Make(i);
    EXPECT_EQ(r.api, Api::kGenerate);
    EXPECT_EQ(static_cast<int>(r.prompt_ids.size()), r.input_len);
    EXPECT_GE(r.input_len, 5);
    EXPECT_LE(r.input_len, 40);
    EXPECT_GE(r.max_tokens, 1);
    for (int id : r.prompt_ids) {
      EXPECT_GE(id, 1000);
      EXPECT_LT(id, 5000);
    }
    EXPECT_EQ((*w)->Make(i).prompt_ids, r.prompt_ids);  // same index, same request
  }
  EXPECT_NE((*w)->Make(0).prompt_ids, (*w)->Make(1).prompt_ids);
  o.seed = 43;
  auto other = Workload::Create(o);
  ASSERT_TRUE(other.ok());
  EXPECT_NE((*other)->Make(0).prompt_ids, (*w)->Make(0).prompt_ids);
}

TEST(WorkloadTest, SharedPrefixGroups) {
  WorkloadOptions o = Base();
  o.input_len = *LengthDist::Parse("8");
  o.prefix_groups = 3;
  o.prefix_len = 16;
  auto w = Workload::Create(o);
  ASSERT_TRUE(w.ok());
  std::map<int, std::vector<std::int32_t>> prefixes;
  for (std::int64_t i = 0; i < 12; ++i) {
    const RequestSpec r = (*w)->Make(i);
    ASSERT_EQ(r.prompt_ids.size(), 24u);
    EXPECT_EQ(r.group, i % 3);
    std::vector<std::int32_t> prefix(r.prompt_ids.begin(), r.prompt_ids.begin() + 16);
    auto [it, inserted] = prefixes.emplace(r.group, prefix);
    if (!inserted) {
      EXPECT_EQ(it->second, prefix) << "request " << i;
    }
  }
  EXPECT_NE(prefixes[0], prefixes[1]);
  EXPECT_NE(prefixes[1], prefixes[2]);
  // The suffixes differ within a group.
  EXPECT_NE((*w)->Make(0).prompt_ids, (*w)->Make(3).prompt_ids);
}

TEST(WorkloadTest, ShareGptPrompts) {
  const std::string path = ::testing::TempDir() + "/sharegpt.jsonl";
  {
    std::ofstream out(path);
    out << R"({"id": "a", "conversations": [{"from": "human", "value": "first question"}, {"from": "gpt", "value": "x"}]})"
        << "\n\n"
        << R"({"id": "b", "conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "second"}]})"
        << "\n"
        << R"({"id": "c", "conversations": [{"from": "gpt", "value": "no human turn"}]})"
        << "\n";
  }
  WorkloadOptions o;
  o.sharegpt_path = path;
  auto effort = ParseEffortMix("none:1,high:1");
  ASSERT_TRUE(effort.ok());
  o.effort_mix = *effort;
  auto w = Workload::Create(o);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->sharegpt_prompts(), 2u);
  std::map<std::string, int> prompts;
  std::map<Effort, int> efforts;
  for (std::int64_t i = 0; i < 400; ++i) {
    const RequestSpec r = (*w)->Make(i);
    EXPECT_EQ(r.api, Api::kChat);
    ++prompts[r.prompt_text];
    ++efforts[r.effort];
  }
  EXPECT_EQ(prompts.size(), 2u);
  EXPECT_EQ(prompts["first question"], 200);
  EXPECT_EQ(prompts["second"], 200);
  EXPECT_NEAR(efforts[Effort::kHigh] / 400.0, 0.5, 0.1);

  std::ofstream(path) << "not json\n";
  EXPECT_EQ(Workload::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.sharegpt_path = path + ".missing";
  EXPECT_EQ(Workload::Create(o).status().code(), absl::StatusCode::kNotFound);
}

TEST(WorkloadTest, SharesOfImagesAndCancellations) {
  WorkloadOptions o = Base();
  o.output_len = *LengthDist::Parse("20");
  o.image_share = 0.25;
  o.cancel_share = 0.5;
  auto w = Workload::Create(o);
  ASSERT_TRUE(w.ok());
  int images = 0, cancels = 0;
  for (std::int64_t i = 0; i < 4000; ++i) {
    const RequestSpec r = (*w)->Make(i);
    if (r.image) {
      ++images;
      EXPECT_EQ(r.api, Api::kChat);
      EXPECT_FALSE(r.prompt_text.empty());
    }
    if (r.cancel_after_chunks > 0) {
      ++cancels;
      EXPECT_LE(r.cancel_after_chunks, 10);  // U[1, output/2]
    }
  }
  EXPECT_NEAR(images / 4000.0, 0.25, 0.03);
  EXPECT_NEAR(cancels / 4000.0, 0.5, 0.03);
}

TEST(WorkloadTest, ConversationsRepeatEveryEarlierTurn) {
  WorkloadOptions o = Base();
  o.input_len = *LengthDist::Parse("uniform:3:9");
  o.output_len = *LengthDist::Parse("uniform:2:5");
  o.conversations = 4;
  auto w = Workload::Create(o);
  ASSERT_TRUE(w.ok());
  for (std::int64_t c = 0; c < 4; ++c) {
    std::vector<std::int32_t> before;  // the previous turn's prompt
    int answer = 0;                    // and its max_tokens
    for (std::int64_t t = 0; t < 5; ++t) {
      const RequestSpec r = (*w)->Make(c + 4 * t);
      ASSERT_EQ(r.api, Api::kGenerate);
      EXPECT_EQ(r.input_len, static_cast<int>(r.prompt_ids.size()));
      ASSERT_GE(r.prompt_ids.size(), before.size() + static_cast<std::size_t>(answer) + 3);
      EXPECT_LE(r.prompt_ids.size(), before.size() + static_cast<std::size_t>(answer) + 9);
      EXPECT_TRUE(std::equal(before.begin(), before.end(), r.prompt_ids.begin()))
          << "turn " << t << " of conversation " << c << " starts with the previous turn's prompt";
      EXPECT_GE(r.max_tokens, 2);
      EXPECT_LE(r.max_tokens, 5);
      for (std::int32_t id : r.prompt_ids) {
        EXPECT_GE(id, 1000);
        EXPECT_LT(id, 5000);
      }
      EXPECT_EQ(r.prompt_ids, (*w)->Make(c + 4 * t).prompt_ids) << "deterministic";
      before = r.prompt_ids;
      answer = r.max_tokens;
    }
  }
  // Conversations differ from their first turn on.
  EXPECT_NE((*w)->Make(0).prompt_ids, (*w)->Make(1).prompt_ids);
  // Warm-up requests are conversations of their own.
  EXPECT_FALSE((*w)->Make(-1).prompt_ids.empty());
}

TEST(WorkloadTest, RejectsInconsistentOptions) {
  WorkloadOptions o = Base();
  o.effort_mix = {{Effort::kHigh, 1}};
  EXPECT_FALSE(Workload::Create(o).ok());  // effort needs chat
  o = Base();
  o.prefix_groups = 2;
  EXPECT_FALSE(Workload::Create(o).ok());  // no prefix length
  o = Base();
  o.vocab_size = 0;
  EXPECT_FALSE(Workload::Create(o).ok());
  o = Base();
  o.cancel_share = 1.5;
  EXPECT_FALSE(Workload::Create(o).ok());
  o = Base();
  o.conversations = 2;
  o.api = Api::kChat;
  EXPECT_FALSE(Workload::Create(o).ok());  // conversations need token ids
  EXPECT_FALSE(ParseEffortMix("low:1").ok());
}

TEST(TestPngTest, HasValidStructure) {
  const std::string png = TestPng(32, 32);
  ASSERT_GT(png.size(), 8u + 25 + 12);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  // IDAT holds a zlib stream of 32 rows of 1 + 32*3 bytes, stored: 2 header
  // bytes, 5 block-header bytes, the data, 4 Adler bytes.
  EXPECT_EQ(png.substr(37, 4), "IDAT");
  const auto idat_len = (static_cast<unsigned char>(png[33]) << 24) | (static_cast<unsigned char>(png[34]) << 16) |
                        (static_cast<unsigned char>(png[35]) << 8) | static_cast<unsigned char>(png[36]);
  EXPECT_EQ(idat_len, 2 + 5 + 32 * 97 + 4);
  EXPECT_EQ(png.substr(png.size() - 8, 4), "IEND");
}

}  // namespace
}  // namespace sirocco::bench
