// JsonGrammar/JsonMatcher: per keyword, hand-written documents the language
// (json_grammar.h, docs/structured-output.md) must accept or refuse.
#include "engine/structured/json_grammar.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sirocco::engine::structured {
namespace {

std::shared_ptr<const JsonGrammar> MustCompile(const std::string& schema) {
  auto g = JsonGrammar::Compile(schema);
  EXPECT_TRUE(g.ok()) << schema << ": " << g.status();
  return g.ok() ? *g : nullptr;
}

bool Accepts(const std::shared_ptr<const JsonGrammar>& g, const std::string& doc) {
  JsonMatcher m(g);
  return m.Consume(doc) && m.CanEnd();
}

struct Case {
  std::string schema;
  std::vector<std::string> accept;
  std::vector<std::string> refuse;
};

void Check(const Case& c) {
  auto g = MustCompile(c.schema);
  if (!g) return;
  for (const auto& doc : c.accept) EXPECT_TRUE(Accepts(g, doc)) << c.schema << " should accept " << doc;
  for (const auto& doc : c.refuse) EXPECT_FALSE(Accepts(g, doc)) << c.schema << " should refuse " << doc;
}

TEST(JsonGrammarTest, Whitespace) {
  Check({R"({"type":"array","items":{"type":"integer"}})",
         {"[1,2]", "[ 1 , 2 ]", "\n\t[\r\n1]", "        [1]", "[" + std::string(16, ' ') + "1]",
          "[1" + std::string(16, '\n') + "]"},
         {"         [1]", "[" + std::string(17, ' ') + "1]", "[1] ", "[1]\n", " [1,2] ", "[1\v]"}});
  // A whitespace run is reset by every structural token.
  Check({R"({"type":"object","properties":{"a":{"type":"integer"}}})",
         {"{" + std::string(16, ' ') + "\"a\"" + std::string(16, ' ') + ":" + std::string(16, ' ') + "1" +
          std::string(16, ' ') + "}"},
         {"{\"a\":" + std::string(17, ' ') + "1}"}});
}

TEST(JsonGrammarTest, Strings) {
  Check({R"({"type":"string"})",
         {R"("")", R"("abc")", R"("\" \\ \/ \b \f \n \r \t")", R"("\u00e9\u00E9\uFFFF\u0000")",
          "\"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\""},
         {"\"\x01\"", "\"\t\"", R"("\x")", R"("\u00g0")", R"("\uD83D\uDE00")", R"("\udc00")", "\"\xc0\xaf\"",
          "\"\xe0\x80\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xff\"", "\"\x80\"", "\"\xc3\"", "abc",
          R"("abc)", R"("a""b")"}});
}

TEST(JsonGrammarTest, Utf8SplitAcrossCalls) {
  auto g = MustCompile(R"({"type":"string","maxLength":2})");
  JsonMatcher m(g);
  ASSERT_TRUE(m.Consume("\"\xf0\x9f"));
  EXPECT_FALSE(m.CanEnd());
  EXPECT_FALSE(m.Consume("\""));  // mid-character
  EXPECT_FALSE(m.Consume("\x41"));
  ASSERT_TRUE(m.Consume("\x98"));
  ASSERT_TRUE(m.Consume("\x80\xc3"));
  EXPECT_FALSE(m.Consume("a"));
  ASSERT_TRUE(m.Consume("\xa9"));
  EXPECT_FALSE(m.Consume("a"));  // two code points already
  ASSERT_TRUE(m.Consume("\""));
  EXPECT_TRUE(m.CanEnd());
  EXPECT_TRUE(m.MustEnd());
}

TEST(JsonGrammarTest, StringLength) {
  Check({R"({"type":"string","minLength":2,"maxLength":3})",
         {R"("ab")", R"("abc")", "\"\xc3\xa9\xc3\xa9\"", R"("\n\u0041")", "\"\xf0\x9f\x98\x80\xf0\x9f\x98\x80\""},
         {R"("a")", R"("abcd")", "\"\xf0\x9f\x98\x80\"", R"("\n\n\n\n")"}});
}

TEST(JsonGrammarTest, Numbers) {
  Check({R"({"type":"number"})",
         {"0", "-0", "-0.5", "12", "1.25", "1e5", "1E+05", "2.5e-3", "-10", "1234567890123456789"},
         {"01", "-", "1.", "1e", "1e+", ".5", "+1", "-01", "1.5.2", "0x10", "12345678901234567890", "1e100", "Infinity",
          "NaN"}});
  Check({R"({"type":"integer"})", {"0", "7", "-7", "1234567890123456789"}, {"-0", "1.0", "1e2", "007", "-"}});
}

TEST(JsonGrammarTest, IntegerBounds) {
  auto g = MustCompile(R"({"type":"integer","minimum":10,"maximum":250})");
  for (const char* doc : {"10", "99", "100", "250", "25", "200"}) EXPECT_TRUE(Accepts(g, doc)) << doc;
  for (const char* doc : {"9", "251", "0", "-10", "1000", "300"}) EXPECT_FALSE(Accepts(g, doc)) << doc;
  JsonMatcher m(g);
  ASSERT_TRUE(m.Consume("9"));  // 90..99 still possible
  EXPECT_FALSE(m.CanEnd());
  JsonMatcher m2(g);
  ASSERT_TRUE(m2.Consume("25"));
  EXPECT_TRUE(m2.CanEnd());
  EXPECT_FALSE(m2.MustEnd());
  EXPECT_FALSE(m2.Consume("1"));
  ASSERT_TRUE(m2.Consume("0"));
  EXPECT_TRUE(m2.MustEnd());
  JsonMatcher m3(g);
  EXPECT_FALSE(m3.Consume("-"));
  EXPECT_FALSE(m3.Consume("0"));
  ASSERT_TRUE(m3.Consume("3"));  // 30..39
  EXPECT_FALSE(m3.CanEnd());
  EXPECT_FALSE(m3.Consume("00"));  // 300 > 250
  ASSERT_TRUE(m3.Consume("0"));
  EXPECT_TRUE(m3.MustEnd());

  Check({R"({"type":"integer","minimum":-300,"exclusiveMaximum":-7})",
         {"-300", "-8", "-30", "-299"},
         {"-7", "-301", "0", "7", "-0", "-3000"}});
  Check({R"({"type":"integer","exclusiveMinimum":-1,"maximum":0})", {"0"}, {"-1", "1", "-0"}});
  Check({R"({"type":"integer","minimum":1.5,"maximum":3.5})", {"2", "3"}, {"1", "4"}});
  Check(
      {R"({"type":"integer","maximum":9223372036854775807})", {"9223372036854775807", "-5"}, {"9223372036854775808"}});
}

TEST(JsonGrammarTest, NumberBounds) {
  Check({R"({"type":"number","minimum":-1.5,"maximum":2.25})",
         {"-1.5", "2.25", "0", "-0", "0.1234", "2", "-1.4999"},
         {"2.2501", "-1.5001", "3", "-2", "1e0", "0.12345"}});
  Check({R"({"type":"number","exclusiveMinimum":0,"exclusiveMaximum":1})",
         {"0.5", "0.0001", "0.9999"},
         {"0", "1", "1.0", "-0.5", "0.0"}});
}

TEST(JsonGrammarTest, Objects) {
  const std::string schema = R"({"type":"object","properties":{
      "a":{"type":"integer"},"b":{"type":"string"},"c":{"type":"boolean"}},"required":["b"]})";
  Check({schema,
         {R"({"b":"x"})", R"({"a":1,"b":"x"})", R"({"a":1,"b":"x","c":true})", R"({"b":"x","c":false})",
          R"({ "a" : 1 , "b" : "" })"},
         {R"({})", R"({"a":1})", R"({"b":"x","a":1})", R"({"b":"x","d":1})", R"({"b":"x",})", R"({"b":1})",
          R"({"b":"x","b":"y"})", R"({"\u0062":"x"})"}});
  // additionalProperties: a schema; extra keys after the declared ones, never a declared name.
  Check({R"({"type":"object","properties":{"a":{"type":"integer"}},"additionalProperties":{"type":"null"}})",
         {R"({})", R"({"a":1,"x":null,"y":null})", R"({"x":null})", R"({"ab":null})", R"({"":null})"},
         {R"({"x":1})", R"({"x":null,"a":1})", R"({"a":1,"a":null})", R"({"\u0061":null})", R"({"\/":1})"}});
  Check({R"({"type":"object","properties":{"a":{"type":"integer"}},"additionalProperties":false})",
         {R"({"a":1})"},
         {R"({"b":1})"}});
  Check({R"({"type":"object"})", {R"({})", R"({"k":[1,{"z":null}]})"}, {R"([])"}});
}

TEST(JsonGrammarTest, Arrays) {
  Check({R"({"type":"array","items":{"type":"integer"},"minItems":1,"maxItems":2})",
         {"[1]", "[1,2]"},
         {"[]", "[1,2,3]", "[1,]", "[,1]", "[\"a\"]"}});
  Check({R"({"type":"array","prefixItems":[{"type":"string"},{"type":"null"}],"items":false})",
         {"[]", R"(["a"])", R"(["a",null])"},
         {R"([null])", R"(["a",null,1])"}});
  Check({R"({"type":"array","prefixItems":[{"type":"string"}],"items":{"type":"integer"},"minItems":2})",
         {R"(["a",1])", R"(["a",1,2])"},
         {R"(["a"])", R"([1,1])"}});
}

TEST(JsonGrammarTest, EnumConst) {
  Check({R"({"enum":["a","é",1,1.5,null,true,{"k":[1,{"z":"w"}]},["x",2]]})",
         {R"("a")", "\"\xc3\xa9\"", "1", "1.5", "null", "true", R"({"k":[1,{"z":"w"}]})", R"(["x",2])"},
         {R"("b")", R"("\u00e9")", "2", "1.50", "false", R"({"k": [1,{"z":"w"}]})", R"(["x"])"}});
  Check({R"({"const":"q\"\\\n"})", {R"("q\"\\\n")"}, {R"("q\"\\\u000a")"}});
  Check({R"({"type":"integer","enum":[1,"1",2.0,2.5]})", {"1", "2.0"}, {R"("1")", "2.5"}});
}

TEST(JsonGrammarTest, AnyOfOneOfAllOf) {
  Check({R"({"anyOf":[{"type":"string","maxLength":1},{"type":"integer","minimum":5},{"type":"null"}]})",
         {R"("a")", "5", "null", "123"},
         {R"("ab")", "4", "true"}});
  Check({R"({"oneOf":[{"type":"string"},{"type":"array"}]})", {R"("s")", "[1]"}, {"1"}});
  Check({R"({"oneOf":[{"enum":[1,2]},{"const":3}]})", {"1", "3"}, {"4"}});
  Check({R"({"oneOf":[{"type":"object","properties":{"t":{"const":"a"}},"required":["t"]},
                      {"type":"object","properties":{"t":{"const":"b"},"v":{"type":"integer"}},"required":["t"]}]})",
         {R"({"t":"a"})", R"({"t":"b","v":1})"},
         {R"({"t":"c"})"}});
  Check({R"({"allOf":[{"type":"integer"}],"description":"d"})", {"1"}, {"\"a\""}});
}

TEST(JsonGrammarTest, RefRecursion) {
  const std::string tree = R"({"$defs":{"node":{"type":"object","properties":{
      "v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["v"]}},
      "$ref":"#/$defs/node"})";
  Check({tree,
         {R"({"v":1})", R"({"v":1,"kids":[{"v":2,"kids":[{"v":3}]},{"v":4,"kids":[]}]})"},
         {R"({"v":1,"kids":[{}]})", R"({"kids":[]})"}});
  Check({R"({"definitions":{"a~b/c":{"type":"null"}},"$ref":"#/definitions/a~0b~1c"})", {"null"}, {"1"}});
  Check({R"({"type":"array","items":{"$ref":"#"}})", {"[]", "[[],[[]]]"}, {"[1]"}});
}

TEST(JsonGrammarTest, AnyObjectOrArray) {
  auto g = JsonGrammar::AnyObjectOrArray();
  for (const char* doc : {"{}", "[]", R"({"a":[1,"x",{"b":null}],"c":true})", " [1, 2.5, -3e2]"}) {
    EXPECT_TRUE(Accepts(g, doc)) << doc;
  }
  for (const char* doc : {"1", "\"s\"", "null", "{\"a\"}", "[1,]"}) EXPECT_FALSE(Accepts(g, doc)) << doc;
}

TEST(JsonGrammarTest, NestingLimit) {
  auto g = MustCompile("true");
  JsonMatcher m(g);
  EXPECT_TRUE(m.Consume(std::string(kMaxNestingDepth, '[')));
  EXPECT_FALSE(m.Consume("["));
  EXPECT_TRUE(m.Consume(std::string(kMaxNestingDepth, ']')));
  EXPECT_TRUE(m.CanEnd());
}

TEST(JsonGrammarTest, ConsumeIsAtomic) {
  auto g = MustCompile(R"({"type":"object","properties":{"a":{"type":"string"}},"additionalProperties":true})");
  JsonMatcher m(g);
  ASSERT_TRUE(m.Consume("{\"a\":\"x"));
  const JsonMatcher before = m;
  EXPECT_FALSE(m.Consume("yz\"}x"));  // the last byte fails
  EXPECT_TRUE(m == before);
  EXPECT_EQ(m.Hash(), before.Hash());
  EXPECT_FALSE(m.ConsumeByte(0x01));
  EXPECT_TRUE(m == before);
  EXPECT_TRUE(m.Consume("\"}"));
  EXPECT_TRUE(m.CanEnd());
  EXPECT_TRUE(m.MustEnd());
  EXPECT_FALSE(m == before);
}

TEST(JsonGrammarTest, MustEnd) {
  auto g = MustCompile(R"({"type":"integer","maximum":50})");
  JsonMatcher m(g);
  ASSERT_TRUE(m.Consume("5"));
  EXPECT_TRUE(m.CanEnd());
  EXPECT_FALSE(m.MustEnd());
  ASSERT_TRUE(m.Consume("0"));
  EXPECT_TRUE(m.MustEnd());
  auto any = MustCompile("{}");
  JsonMatcher n(any);
  ASSERT_TRUE(n.Consume("12"));
  EXPECT_FALSE(n.MustEnd());
  JsonMatcher o(any);
  ASSERT_TRUE(o.Consume("[1]"));
  EXPECT_TRUE(o.MustEnd());
}

TEST(JsonGrammarTest, EqualityAndHash) {
  auto g = MustCompile(R"({"type":"array","items":{"anyOf":[{"type":"integer"},{"type":"number"}]}})");
  JsonMatcher a(g), b(g);
  ASSERT_TRUE(a.Consume("[1,"));
  ASSERT_TRUE(b.Consume("[2"));
  EXPECT_FALSE(a == b);
  ASSERT_TRUE(b.Consume(","));
  // Different text, same state: an item count of 1 after a comma.
  EXPECT_TRUE(a == b);
  EXPECT_EQ(a.Hash(), b.Hash());
  ASSERT_TRUE(a.Consume(" "));
  EXPECT_FALSE(a == b);  // the whitespace run counts
  auto g2 = MustCompile(R"({"type":"array","items":{"anyOf":[{"type":"integer"},{"type":"number"}]}})");
  JsonMatcher c(g2);
  ASSERT_TRUE(c.Consume("[1,"));
  EXPECT_FALSE(c == b);  // another grammar
}

void ExpectError(const std::string& schema, const std::vector<std::string>& parts) {
  auto g = JsonGrammar::Compile(schema);
  ASSERT_FALSE(g.ok()) << schema;
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << schema;
  for (const auto& part : parts) {
    EXPECT_NE(std::string(g.status().message()).find(part), std::string::npos)
        << schema << ": " << g.status().message() << " lacks " << part;
  }
}

TEST(JsonGrammarTest, CompileErrors) {
  for (const char* kw :
       {"pattern", "patternProperties", "propertyNames", "multipleOf", "uniqueItems", "contains", "minContains",
        "maxContains", "minProperties", "maxProperties", "dependentRequired", "dependentSchemas", "dependencies", "not",
        "if", "then", "else", "unevaluatedProperties", "unevaluatedItems"}) {
    ExpectError(std::string(R"({"type":"object","properties":{"x":{")") + kw + R"(":1}}})",
                {std::string("/properties/x/") + kw + ":", std::string("unsupported keyword '") + kw + "'"});
  }
  ExpectError(R"({"allOf":[{"type":"string"},{"maxLength":3}]})", {"/allOf:", "allOf"});
  ExpectError(R"({"oneOf":[{"type":"integer"},{"type":"number"}]})", {"/oneOf:", "disjoint"});
  ExpectError(R"({"oneOf":[{"type":"string"},{"minLength":1}]})", {"/oneOf:"});
  ExpectError(R"({"$ref":"#/$defs/a","type":"string","$defs":{"a":{}}})", {"/type:", "$ref"});
  ExpectError(R"({"$ref":"other.json"})", {"/$ref:"});
  ExpectError(R"({"$ref":"#/$defs/missing"})", {"/$ref:", "missing"});
  ExpectError(R"({"type":"object","properties":{"a":{}},"required":["b"]})", {"/required:", "\"b\""});
  ExpectError(R"({"type":"integer","minimum":1e30})", {"/minimum:"});
  ExpectError(R"({"type":"integer","minimum":5,"maximum":4})", {"(root):"});
  ExpectError(R"({"type":"string","minLength":3,"maxLength":2})", {"/minLength:"});
  ExpectError(R"({"type":"strin"})", {"/type:"});
  ExpectError(R"({"enum":[]})", {"/enum:"});
  ExpectError(R"({"items":[{"type":"string"}]})", {"/items:"});
  ExpectError("false", {"(root):"});
  ExpectError("{\"type\":", {"(root):", "JSON"});
  ExpectError("[]", {"(root):"});
  // No finite document: a required property that recurses forever.
  ExpectError(R"({"type":"object","properties":{"a":{"$ref":"#"}},"required":["a"]})", {"(root):", "finite"});
  std::string deep = "true";
  for (int i = 0; i < kMaxSchemaDepth + 2; ++i) deep = R"({"type":"array","items":)" + deep + "}";
  ExpectError(deep, {"deeper"});
  // Annotations and unknown keywords are ignored.
  EXPECT_TRUE(JsonGrammar::Compile(R"({"title":"t","description":"d","default":1,"examples":[1],"format":"date",
      "$schema":"x","$id":"y","$comment":"c","readOnly":true,"x-custom":{"pattern":1},"type":"integer"})")
                  .ok());
}

}  // namespace
}  // namespace sirocco::engine::structured
