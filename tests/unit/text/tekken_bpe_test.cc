// Byte-level BPE by rank on toy vocabularies: merges worked out by hand, and
// both merge loops against a plain transcription of the tiktoken loop.
#include "engine/text/tekken_bpe.h"

#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sirocco::text {
namespace {

std::vector<std::string> Bytes256() {
  std::vector<std::string> v;
  for (int b = 0; b < 256; ++b) v.emplace_back(1, static_cast<char>(b));
  return v;
}

BpeRanks Toy(const std::vector<std::string>& extra) {
  std::vector<std::string> tokens = Bytes256();
  tokens.insert(tokens.end(), extra.begin(), extra.end());
  auto r = BpeRanks::Create(std::move(tokens));
  EXPECT_TRUE(r.ok()) << r.status();
  return std::move(*r);
}

std::vector<std::int32_t> Encode(const BpeRanks& r, std::string_view piece) {
  std::vector<std::int32_t> out;
  r.Encode(piece, 0, &out);
  return out;
}

TEST(Bpe, HandWorkedMerges) {
  // ranks: ab 256, bc 257, abc 258, aa 259, aaaa 260, cd 261
  const BpeRanks r = Toy({"ab", "bc", "abc", "aa", "aaaa", "cd"});
  EXPECT_EQ(Encode(r, "abc"), (std::vector<std::int32_t>{258}));  // a whole token is taken as is
  // ab (256) beats bc (257) and cd (261); then ab+c = abc (258) beats cd.
  EXPECT_EQ(Encode(r, "abcd"), (std::vector<std::int32_t>{258, 'd'}));
  EXPECT_EQ(Encode(r, "bcd"), (std::vector<std::int32_t>{257, 'd'}));
  // Ties go to the leftmost pair: aa|a|a|a -> aa|aa|a -> aaaa|a.
  EXPECT_EQ(Encode(r, "aaaaa"), (std::vector<std::int32_t>{260, 'a'}));
  // aa|aa|aa: the two aaaa candidates tie, the left one wins.
  EXPECT_EQ(Encode(r, "aaaaaa"), (std::vector<std::int32_t>{260, 259}));
  EXPECT_EQ(Encode(r, "x"), (std::vector<std::int32_t>{'x'}));
  EXPECT_EQ(Encode(r, std::string("\xFF\x00", 2)), (std::vector<std::int32_t>{255, 0}));
}

TEST(Bpe, IdOffsetAndLookup) {
  const BpeRanks r = Toy({"hello", " world"});
  std::vector<std::int32_t> out;
  r.Encode(" world", 1000, &out);
  EXPECT_EQ(out, (std::vector<std::int32_t>{1257}));
  EXPECT_EQ(r.Find("hello"), 256);
  EXPECT_EQ(r.Find("hell"), -1);
  EXPECT_EQ(r.Bytes(257), " world");
  EXPECT_EQ(r.size(), 258);
}

TEST(Bpe, RejectsMalformedVocabularies) {
  std::vector<std::string> swapped = Bytes256();
  std::swap(swapped[1], swapped[2]);
  EXPECT_FALSE(BpeRanks::Create(swapped).ok());
  std::vector<std::string> duplicate = Bytes256();
  duplicate.push_back("ab");
  duplicate.push_back("ab");
  EXPECT_FALSE(BpeRanks::Create(duplicate).ok());
  EXPECT_FALSE(BpeRanks::Create({"a"}).ok());
}

// The tiktoken loop written as plainly as possible: a list of parts, merge
// the leftmost lowest-ranked adjacent pair while one is a token.
std::vector<std::int32_t> PlainMerge(const BpeRanks& r, const std::string& piece) {
  std::vector<std::string> parts;
  for (char c : piece) parts.emplace_back(1, c);
  while (true) {
    std::int32_t best = std::numeric_limits<std::int32_t>::max();
    std::size_t at = 0;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
      const std::int32_t rank = r.Find(parts[i] + parts[i + 1]);
      if (rank >= 0 && rank < best) {
        best = rank;
        at = i;
      }
    }
    if (best == std::numeric_limits<std::int32_t>::max()) break;
    parts[at] += parts[at + 1];
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  std::vector<std::int32_t> ids;
  for (const std::string& p : parts) ids.push_back(r.Find(p));
  return ids;
}

TEST(Bpe, BothLoopsAgreeWithThePlainLoop) {
  // Every string over {a, b, c} of length 2..5, ranked in a random order, so
  // merges tie and conflict everywhere.
  std::mt19937 rng(7);
  std::vector<std::string> extra;
  for (int len = 2; len <= 5; ++len) {
    int count = 1;
    for (int i = 0; i < len; ++i) count *= 3;
    for (int k = 0; k < count; ++k) {
      std::string s;
      for (int i = 0, v = k; i < len; ++i, v /= 3) s.push_back(static_cast<char>('a' + v % 3));
      if (rng() % 3 != 0) extra.push_back(s);  // leave holes so some merges are impossible
    }
  }
  std::shuffle(extra.begin(), extra.end(), rng);
  const BpeRanks r = Toy(extra);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string piece;
    const int n = 2 + static_cast<int>(rng() % (trial < 2500 ? BpeRanks::kScanMaxBytes - 1 : 400));
    for (int i = 0; i < n; ++i) piece.push_back(static_cast<char>('a' + rng() % 3));
    const std::vector<std::int32_t> expected = PlainMerge(r, piece);
    std::vector<std::int32_t> heap;
    r.MergeByHeap(piece, 0, &heap);
    ASSERT_EQ(heap, expected) << piece;
    if (static_cast<std::size_t>(n) <= BpeRanks::kScanMaxBytes) {
      std::vector<std::int32_t> scan;
      r.MergeByScan(piece, 0, &scan);
      ASSERT_EQ(scan, expected) << piece;
    }
    const std::int32_t whole = r.Find(piece);
    ASSERT_EQ(Encode(r, piece), whole >= 0 ? std::vector<std::int32_t>{whole} : expected) << piece;
  }
}

}  // namespace
}  // namespace sirocco::text
