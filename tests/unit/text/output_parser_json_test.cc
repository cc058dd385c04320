// ParsePythonJson/DumpPythonJson against Python 3.11's own json module: each
// row is an input and what `json.dumps(json.loads(input))` printed (or that
// json.loads raised), produced by running Python on these inputs.
#include "engine/text/output_parser_json.h"

#include <string>

#include "gtest/gtest.h"

namespace sirocco::text {
namespace {

struct Row {
  const char* input;
  const char* dumped;  // json.dumps(json.loads(input)); "" when it raised
  bool valid;
};

// Generated with: for s in inputs: json.dumps(json.loads(s)) (Python 3.11).
constexpr Row kRows[] = {
    {"{\"a\": 1}", "{\"a\": 1}", true},
    {"{}", "{}", true},
    {"[]", "[]", true},
    {" \x0a"
     "\x09"
     "{ \"a\" :[1 ,2.50, -0, 1E3] }\x0d"
     "",
     "{\"a\": [1, 2.5, 0, 1000.0]}", true},
    {"null", "null", true},
    {"true", "true", true},
    {"false", "false", true},
    {"\"str\"", "\"str\"", true},
    {"{\"a\": 1, \"b\": 2, \"a\": 3}", "{\"a\": 3, \"b\": 2}", true},
    {"{\"x\": NaN, \"y\": -Infinity, \"z\": Infinity}", "{\"x\": NaN, \"y\": -Infinity, \"z\": Infinity}", true},
    {"1e400", "Infinity", true},
    {"-1e400", "-Infinity", true},
    {"1e-400", "0.0", true},
    {"-1e-400", "-0.0", true},
    {"123456789012345678901234567890", "123456789012345678901234567890", true},
    {"-0", "0", true},
    {"-0.0", "-0.0", true},
    {"0.0", "0.0", true},
    {"1.0", "1.0", true},
    {"0.1", "0.1", true},
    {"1e-5", "1e-05", true},
    {"0.0001", "0.0001", true},
    {"0.00001", "1e-05", true},
    {"1e16", "1e+16", true},
    {"1e15", "1000000000000000.0", true},
    {"123456789012345678", "123456789012345678", true},
    {"12345678912345678.0", "1.2345678912345678e+16", true},
    {"1.5e300", "1.5e+300", true},
    {"2.2250738585072014e-308", "2.2250738585072014e-308", true},
    {"5e-324", "5e-324", true},
    {"4.9406564584124654e-324", "5e-324", true},
    {"1.7976931348623157e308", "1.7976931348623157e+308", true},
    {"0.30000000000000004", "0.30000000000000004", true},
    {"100", "100", true},
    {"1E+2", "100.0", true},
    {"1e-2", "0.01", true},
    {"-12.5e-3", "-0.0125", true},
    {"9007199254740993.0", "9007199254740992.0", true},
    {"\"\\u00e9\\ud83d\\ude00\\ud800 \\/ \\\"q\\\"\"", "\"\\u00e9\\ud83d\\ude00\\ud800 / \\\"q\\\"\"", true},
    {"\"\\ud83d\"", "\"\\ud83d\"", true},
    {"\"\\udc00\\ud83d\"", "\"\\udc00\\ud83d\"", true},
    {"\"\\ud83d\\u0041\"", "\"\\ud83dA\"", true},
    {"\"caf\xc3\xa9"
     " \xf0\x9f\x98\x80"
     " \xe6\xb7\xb1"
     " \x7f"
     "\"",
     "\"caf\\u00e9 \\ud83d\\ude00 \\u6df1 \\u007f\"", true},
    {"\"\\b\\f\\n\\r\\t\\u0001\\u001f\"", "\"\\b\\f\\n\\r\\t\\u0001\\u001f\"", true},
    {"\"\\U0041\"", "", false},
    {"\"\\x41\"", "", false},
    {"{\"a\": \"x\x09"
     "y\"}",
     "", false},
    {"{\"a\": \"x\x1f"
     "y\"}",
     "", false},
    {"\"\xe2\x80\xa8"
     "\xe2\x80\xa9"
     "\"",
     "\"\\u2028\\u2029\"", true},
    {"{'a': 1}", "", false},
    {"{\"a\": 1", "", false},
    {"{\"a\": 1} x", "", false},
    {"{\"a\": 1,}", "", false},
    {"[1,]", "", false},
    {"[1 2]", "", false},
    {"01", "", false},
    {"1.", "", false},
    {".5", "", false},
    {"-", "", false},
    {"+1", "", false},
    {"1e", "", false},
    {"1e+", "", false},
    {"nul", "", false},
    {"NaN", "NaN", true},
    {"-NaN", "", false},
    {"Infinity", "Infinity", true},
    {"-Infinity", "-Infinity", true},
    {"", "", false},
    {"   ", "", false},
    {"\xef\xbb\xbf"
     "{}",
     "", false},
    {"{\"a\" 1}", "", false},
    {"{1: 2}", "", false},
    {"[\"a\", {\"b\": [null, true, {\"c\": {}}]}]", "[\"a\", {\"b\": [null, true, {\"c\": {}}]}]", true},
    {"[[[[[]]]]]", "[[[[[]]]]]", true},
    {"{\"s\": \"]}[{\\\"\\\\\"}", "{\"s\": \"]}[{\\\"\\\\\"}", true},
    {"{\"\xc3\xa9"
     "\xc3\xa9"
     "\": {\"\xe3\x82\xad"
     "\xe3\x83\xbc"
     "\": [1, -2, 3.25]}}",
     "{\"\\u00e9\\u00e9\": {\"\\u30ad\\u30fc\": [1, -2, 3.25]}}", true},
};

TEST(OutputParserJsonTest, MatchesPythonJsonModule) {
  for (const Row& row : kRows) {
    SCOPED_TRACE(row.input);
    absl::StatusOr<PyJsonValue> value = ParsePythonJson(row.input);
    ASSERT_EQ(value.ok(), row.valid) << value.status();
    if (row.valid) {
      EXPECT_EQ(DumpPythonJson(*value), row.dumped);
    }
  }
}

TEST(OutputParserJsonTest, KeepsBigIntegersAndKeyOrder) {
  absl::StatusOr<PyJsonValue> value = ParsePythonJson(R"({"z": 1, "a": [18446744073709551617, -5], "m": {}})");
  ASSERT_TRUE(value.ok());
  ASSERT_EQ(value->kind, PyJsonValue::Kind::kObject);
  ASSERT_EQ(value->keys.size(), 3u);
  EXPECT_EQ(value->keys[0], "z");
  EXPECT_EQ(value->keys[1], "a");
  EXPECT_EQ(value->items[1].items[0].text, "18446744073709551617");
}

TEST(OutputParserJsonTest, RejectsDeepNestingWithoutCrashing) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_FALSE(ParsePythonJson(deep).ok());
  const std::string ok_depth = std::string(200, '[') + std::string(200, ']');
  EXPECT_TRUE(ParsePythonJson(ok_depth).ok());
}

}  // namespace
}  // namespace sirocco::text
