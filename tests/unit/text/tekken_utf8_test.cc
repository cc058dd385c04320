// UTF-8 decoding with U+FFFD for maximal subparts, against the Unicode
// Standard's own example (Table 3-8) and facts Python's
// bytes.decode("utf-8", "replace") shows; the stream decoder against the
// one-shot decoder on random splits.
#include "engine/text/utf8.h"

#include <random>
#include <string>

#include "gtest/gtest.h"

namespace sirocco::text {
namespace {

const std::string R(kReplacementCharacter);

TEST(Utf8Lossy, UnicodeStandardTable3_8) {
  // Unicode 15, section 3.9, Table 3-8: "U+FFFD for each maximal subpart".
  EXPECT_EQ(Utf8Lossy("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a" + R + R + R + "b" + R + "c" + R + R + "d");
}

TEST(Utf8Lossy, MaximalSubparts) {
  EXPECT_EQ(Utf8Lossy("\xC0\x80"), R + R);               // C0 never starts a character
  EXPECT_EQ(Utf8Lossy("\xED\xA0\x80"), R + R + R);       // an encoded surrogate
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98"), R);               // truncated emoji at the end
  EXPECT_EQ(Utf8Lossy("\xF4\x90\x80\x80"), R + R + R + R);  // above U+10FFFF
  EXPECT_EQ(Utf8Lossy("\xE2\x82x"), R + "x");
  EXPECT_EQ(Utf8Lossy("\xF0\x80\x80"), R + R + R);       // overlong 4-byte form
  EXPECT_EQ(Utf8Lossy("\xFF\xFE"), R + R);
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98\x80\x80"), "\xF0\x9F\x98\x80" + R);
  EXPECT_EQ(Utf8Lossy("h\xC3\xA9llo \xE2\x82\xAC"), "h\xC3\xA9llo \xE2\x82\xAC");  // valid passes through
  EXPECT_EQ(Utf8Lossy(std::string("a\0b", 3)), std::string("a\0b", 3));
}

TEST(Utf8Validation, PrefixLength) {
  EXPECT_EQ(ValidUtf8PrefixLength("abc"), 3u);
  EXPECT_EQ(ValidUtf8PrefixLength("ab\xE2\x82"), 2u);
  EXPECT_EQ(ValidUtf8PrefixLength("\xF0\x9F\x98\x80!"), 5u);
  EXPECT_EQ(ValidUtf8PrefixLength("0123456789abcdef\x80"), 16u);
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));
}

TEST(Utf8Validation, CodePointEncoding) {
  std::string s;
  AppendCodePoint(0x41, &s);
  AppendCodePoint(0xE9, &s);
  AppendCodePoint(0x20AC, &s);
  AppendCodePoint(0x1F600, &s);
  EXPECT_EQ(s, "A\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
}

// Random bytes biased towards UTF-8 structure: leads, continuations, ASCII.
std::string RandomBytes(std::mt19937& rng, int n) {
  static const unsigned char kPool[] = {'a', ' ', 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF,
                                        0xE0, 0xE1, 0xED, 0xEF, 0xF0, 0xF1, 0xF4, 0xF5, 0xFF, 0x00, 0x7F};
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(static_cast<char>(kPool[rng() % sizeof(kPool)]));
  return s;
}

TEST(Utf8StreamDecoder, AnySplitGivesTheOneShotResult) {
  std::mt19937 rng(42);
  for (int trial = 0; trial < 20000; ++trial) {
    const std::string bytes = RandomBytes(rng, static_cast<int>(rng() % 24));
    const std::string expected = Utf8Lossy(bytes);
    Utf8StreamDecoder decoder;
    std::string got;
    std::size_t pos = 0;
    while (pos < bytes.size()) {
      const std::size_t n = std::min<std::size_t>(bytes.size() - pos, rng() % 4);
      std::string before = got;
      decoder.Append(std::string_view(bytes).substr(pos, n), &got);
      ASSERT_TRUE(IsValidUtf8(got.substr(before.size()))) << "a broken sequence left the decoder";
      ASSERT_LE(decoder.pending_bytes(), 3u);
      pos += n;
    }
    decoder.Finish(&got);
    ASSERT_EQ(got, expected) << "trial " << trial;
  }
}

TEST(Utf8StreamDecoder, HoldsBackOnlyWhatMayStillComplete) {
  Utf8StreamDecoder d;
  std::string out;
  d.Append("\xF0\x9F", &out);
  EXPECT_EQ(out, "");
  EXPECT_EQ(d.pending_bytes(), 2u);
  d.Append("\x98", &out);
  EXPECT_EQ(out, "");
  d.Append("\x80z", &out);
  EXPECT_EQ(out, "\xF0\x9F\x98\x80z");
  d.Append("\xE2\x82", &out);
  d.Append("q", &out);  // cannot continue: the held bytes are one U+FFFD
  EXPECT_EQ(out, "\xF0\x9F\x98\x80z" + R + "q");
  EXPECT_EQ(d.pending_bytes(), 0u);
}

}  // namespace
}  // namespace sirocco::text
