// Shared by the output parser's unit and golden tests: the tokenizers the
// goldens were made with, a chunked run of the parser, and the invariants
// every run must satisfy.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/text/output_parser.h"
#include "engine/text/tekken.h"
#include "nlohmann/json.hpp"

namespace sirocco::text::parser_test {

// tests/reference/text/parse_golden.json, parsed once.
const nlohmann::json& ParseGolden();

// The tokenizer named in the golden's "tokenizers" map ("v3", "v7", "v11",
// "v13", "v15"): a shipped tekken file, or one derived from the shipped
// vocabulary as the tokenizer tests derive it. Loaded once per process.
const Tekkenizer& ParserTokenizer(std::string_view name);

struct ParseRun {
  // Canonical form: adjacent text deltas of the same stream merged, so runs
  // with different chunkings compare equal when they stream the same thing.
  std::vector<OutputDelta> deltas;
  ParsedOutput result;  // last_deltas moved into `deltas`
};

// Pushes `ids` in chunks of the given sizes (cycled), then finishes. Checks
// on the way that no delta holds broken UTF-8 and no text delta is empty.
ParseRun ParseInChunks(const Tekkenizer& tokenizer, const std::vector<std::int32_t>& ids,
                       const std::vector<std::size_t>& chunks);

// "v15 ids=[1,2,3]" for failure messages.
std::string DescribeIds(const std::vector<std::int32_t>& ids, std::string_view tokenizer);

// Every field of ParsedOutput equal.
void ExpectSameResult(const ParsedOutput& actual, const ParsedOutput& expected);

// What was streamed adds up to the final result: answer and reasoning text
// always; when the output is valid, one begin per tool call with its name and
// id, and its argument text (raw for v11+, normalised for v2..v7).
void ExpectStreamMatchesResult(const std::vector<OutputDelta>& deltas, const ParsedOutput& result,
                               TokenizerVersion version);

}  // namespace sirocco::text::parser_test
