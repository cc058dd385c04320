// Drives a JsonMatcher for jsonschema_check.py.
//   structured_walk SCHEMA_FILE N SEED
//     N seeded random walks: at each step a byte drawn uniformly among those
//     the matcher accepts (biased away from whitespace and towards closing
//     quotes and brackets), stopping with probability 0.3 when CanEnd (always
//     when MustEnd); walks longer than 2000 bytes are dropped. Prints each
//     finished document as one JSON string literal per line.
//   structured_walk --accept SCHEMA_FILE
//     Reads documents, one per line, from stdin; prints 1 when the matcher
//     accepts the whole line and may end there, else 0.
// Exits 2 when the schema does not compile (message on stderr).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/structured/json_grammar.h"

namespace {

using sirocco::engine::structured::JsonGrammar;
using sirocco::engine::structured::JsonMatcher;

std::string JsonQuote(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

}  // namespace

int main(int argc, char** argv) {
  const bool accept = argc == 3 && std::string(argv[1]) == "--accept";
  if (!accept && argc != 4) {
    std::cerr << "usage: structured_walk SCHEMA_FILE N SEED | structured_walk --accept SCHEMA_FILE\n";
    return 1;
  }
  std::ifstream in(accept ? argv[2] : argv[1], std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  auto grammar = JsonGrammar::Compile(text.str());
  if (!grammar.ok()) {
    std::cerr << grammar.status() << "\n";
    return 2;
  }
  if (accept) {
    std::string line;
    while (std::getline(std::cin, line)) {
      JsonMatcher m(*grammar);
      std::cout << (m.Consume(line) && m.CanEnd() ? 1 : 0) << "\n";
    }
    return 0;
  }
  const int n = std::stoi(argv[2]);
  std::mt19937_64 rng(std::stoull(argv[3]));
  for (int walk = 0; walk < n; ++walk) {
    JsonMatcher m(*grammar);
    std::string doc;
    bool done = false;
    while (doc.size() < 2000) {
      if (m.MustEnd() || (m.CanEnd() && std::uniform_real_distribution<double>(0, 1)(rng) < 0.3)) {
        done = true;
        break;
      }
      std::vector<std::uint8_t> options;
      for (int c = 0; c < 256; ++c) {
        JsonMatcher copy = m;
        if (copy.ConsumeByte(static_cast<std::uint8_t>(c))) options.push_back(static_cast<std::uint8_t>(c));
      }
      if (options.empty()) break;  // a dead end: reported as a failed walk below
      // Mostly skip whitespace, and sometimes close a string or container, so
      // that walks explore structure and finish.
      std::vector<std::uint8_t> solid, closers;
      for (const std::uint8_t c : options) {
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') solid.push_back(c);
        if (c == '"' || c == '}' || c == ']') closers.push_back(c);
      }
      const double r = std::uniform_real_distribution<double>(0, 1)(rng);
      const std::vector<std::uint8_t>& pool =
          !closers.empty() && r < 0.1 ? closers : (!solid.empty() && r < 0.85 ? solid : options);
      const std::uint8_t c = pool[std::uniform_int_distribution<std::size_t>(0, pool.size() - 1)(rng)];
      m.ConsumeByte(c);
      doc += static_cast<char>(c);
    }
    if (done) {
      std::cout << JsonQuote(doc) << "\n";
    } else if (doc.size() < 2000) {
      std::cerr << "dead end after " << JsonQuote(doc) << "\n";
      return 3;
    }
  }
  return 0;
}
