// PyValue against Python's own output: the expected strings below are what
// CPython 3.11 prints for the same values (repr, json.dumps with
// ensure_ascii=False), and what json.loads keeps of repeated keys and long
// integers.
#include "engine/text/instruct_json.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace sirocco::text {
namespace {

TEST(PyFloatReprTest, MatchesPythonRepr) {
  EXPECT_EQ(PyFloatRepr(0.1), "0.1");
  EXPECT_EQ(PyFloatRepr(1e16), "1e+16");
  EXPECT_EQ(PyFloatRepr(1e15), "1000000000000000.0");
  EXPECT_EQ(PyFloatRepr(1e-5), "1e-05");
  EXPECT_EQ(PyFloatRepr(1e-4), "0.0001");
  EXPECT_EQ(PyFloatRepr(100000.0), "100000.0");
  EXPECT_EQ(PyFloatRepr(1e22), "1e+22");
  EXPECT_EQ(PyFloatRepr(123456789012345680.0), "1.2345678901234568e+17");
  EXPECT_EQ(PyFloatRepr(-0.0), "-0.0");
  EXPECT_EQ(PyFloatRepr(5e-324), "5e-324");
  EXPECT_EQ(PyFloatRepr(1.7976931348623157e308), "1.7976931348623157e+308");
  EXPECT_EQ(PyFloatRepr(0.30000000000000004), "0.30000000000000004");
  EXPECT_EQ(PyFloatRepr(1234.5678e10), "12345678000000.0");
  EXPECT_EQ(PyFloatRepr(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(PyFloatRepr(std::nan("")), "nan");
}

TEST(PyJsonDumpsTest, MatchesJsonDumpsWithoutAsciiEscapes) {
  absl::StatusOr<PyValue> v = ParsePyJson(R"({"a": "é\n\u0001\u007f\"\\", "b": [1, 2.0, null, true, 1E2, -0]})");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(PyJsonDumps(*v), "{\"a\": \"é\\n\\u0001\x7f\\\"\\\\\", \"b\": [1, 2.0, null, true, 100.0, 0]}");
}

TEST(PyJsonDumpsTest, KeepsLongIntegersAndFloatValues) {
  absl::StatusOr<PyValue> v = ParsePyJson("[12345678901234567890123, -98765432109876543210, 1.50, 1.5E+300, 0.00001]");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(PyJsonDumps(*v), "[12345678901234567890123, -98765432109876543210, 1.5, 1.5e+300, 1e-05]");
}

TEST(PyJsonDumpsTest, RepeatedKeyKeepsFirstPlaceAndLastValue) {
  absl::StatusOr<PyValue> v = ParsePyJson(R"({"x": 1, "y": 2, "x": 3})");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(PyJsonDumps(*v), R"({"x": 3, "y": 2})");
}

TEST(ParsePyJsonTest, RejectsWhatJsonLoadsRejects) {
  EXPECT_FALSE(ParsePyJson("not json {").ok());
  EXPECT_FALSE(ParsePyJson("{\"a\": 1,}").ok());
  EXPECT_FALSE(ParsePyJson("\"raw\ncontrol\"").ok());
  EXPECT_FALSE(ParsePyJson("").ok());
  EXPECT_TRUE(ParsePyJson("  [1, 2]  ").ok());
}

TEST(PyReprTest, MatchesPythonRepr) {
  EXPECT_EQ(PyStrRepr("it's"), "\"it's\"");
  EXPECT_EQ(PyStrRepr("say \"hi\""), "'say \"hi\"'");
  EXPECT_EQ(PyStrRepr("both ' \""), "'both \\' \"'");
  EXPECT_EQ(PyStrRepr(std::string("tab\t\0\xc2\xa0\xc3\xa9", 9)), "'tab\\t\\x00\\xa0\xc3\xa9'");
  absl::StatusOr<PyValue> v = ParsePyJson(R"({"a": [1, 2.0, null, true, "s"]})");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(PyRepr(*v), "{'a': [1, 2.0, None, True, 's']}");
}

}  // namespace
}  // namespace sirocco::text
