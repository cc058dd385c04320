#include "engine/text/tekken_file.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace sirocco::text {
namespace internal {
extern const std::string_view kTekkenVersionsJson;  // tekken_versions.cc (generated)
}  // namespace internal

namespace {

using nlohmann::json;

const json& Spec() {
  static const json* spec = [] {
    auto* j = new json(json::parse(internal::kTekkenVersionsJson.begin(), internal::kTekkenVersionsJson.end(), nullptr, /*allow_exceptions=*/false));
    return j;
  }();
  return *spec;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

std::vector<TokenizerVersion> DerivedTekkenVersions() {
  return {TokenizerVersion::kV7, TokenizerVersion::kV11, TokenizerVersion::kV13, TokenizerVersion::kV15};
}

std::string_view DerivedTekkenSpecJson() { return internal::kTekkenVersionsJson; }

absl::StatusOr<std::string> BuildDerivedTekkenJson(std::string_view base_json, TokenizerVersion version) {
  const json& spec = Spec();
  const std::string version_name(TokenizerVersionName(version));
  if (spec.is_discarded() || !spec.contains("versions") || !spec["versions"].contains(version_name)) {
    return absl::InvalidArgumentError(absl::StrCat("no derived tekken file is defined for version ", version_name));
  }
  const json& entry = spec["versions"][version_name];
  json file = json::parse(base_json.begin(), base_json.end(), nullptr, /*allow_exceptions=*/false);
  if (file.is_discarded() || !file.is_object() || !file.contains("config") || !file["config"].is_object() ||
      !file.contains("vocab")) {
    return absl::InvalidArgumentError("the base vocabulary is not a tekken file (needs 'config' and 'vocab')");
  }
  file["config"]["version"] = version_name;
  json specials = json::array();
  const json& names = entry["special_tokens"];
  for (std::size_t rank = 0; rank < names.size(); ++rank) {
    const std::string text =
        names[rank].is_null() ? absl::StrCat("<SPECIAL_", rank, ">") : names[rank].get<std::string>();
    specials.push_back({{"rank", rank}, {"token_str", text}, {"is_control", true}});
  }
  file["special_tokens"] = std::move(specials);
  file.erase("multimodal");
  if (entry.contains("image")) file["image"] = entry["image"];
  if (entry.contains("model_settings_builder")) {
    file["model_settings_builder"] = entry["model_settings_builder"];
  } else {
    file.erase("model_settings_builder");
  }
  return file.dump();
}

absl::Status WriteDerivedTekken(const std::string& base_path, TokenizerVersion version, const std::string& out_path) {
  SIROCCO_ASSIGN_OR_RETURN(const std::string base, ReadFile(base_path));
  SIROCCO_ASSIGN_OR_RETURN(const std::string text, BuildDerivedTekkenJson(base, version));
  const std::string tmp = out_path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = std::fclose(f) == 0;
  if (!written || !closed || std::rename(tmp.c_str(), out_path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", out_path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tekkenizer>> LoadDerivedTekken(const std::string& base_path,
                                                              TokenizerVersion version) {
  SIROCCO_ASSIGN_OR_RETURN(const std::string base, ReadFile(base_path));
  SIROCCO_ASSIGN_OR_RETURN(const std::string text, BuildDerivedTekkenJson(base, version));
  return Tekkenizer::FromJson(text, absl::StrCat("tekken_", std::string(TokenizerVersionName(version))));
}

}  // namespace sirocco::text
