// The raw bytes of a tekken file's tokens, for the structured-output tests and
// benchmarks (the engine gets them from the tokenizer; these programs do not
// link it).
#pragma once

#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"

namespace sirocco::engine::structured::testing {

struct TekkenTokens {
  std::vector<std::string> bytes;  // by id; empty for special tokens
  std::vector<char> special;       // by id: ids below the file's special-token count
};

// Token id = rank + number of special tokens, up to the file's vocabulary
// size. nullopt when the file cannot be read or is not a tekken file.
inline std::optional<TekkenTokens> LoadTekkenTokens(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("config") || !j.contains("vocab")) return std::nullopt;
  const int special = j["config"]["default_num_special_tokens"].get<int>();
  const int size = j["config"]["default_vocab_size"].get<int>();
  TekkenTokens out;
  out.bytes.assign(static_cast<std::size_t>(size), "");
  out.special.assign(static_cast<std::size_t>(size), 0);
  for (int id = 0; id < special && id < size; ++id) out.special[static_cast<std::size_t>(id)] = 1;
  for (const auto& entry : j["vocab"]) {
    const int id = entry["rank"].get<int>() + special;
    if (id >= size) continue;
    std::string bytes;
    if (!absl::Base64Unescape(entry["token_bytes"].get<std::string>(), &bytes)) return std::nullopt;
    out.bytes[static_cast<std::size_t>(id)] = std::move(bytes);
  }
  return out;
}

}  // namespace sirocco::engine::structured::testing
