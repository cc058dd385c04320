// Internal to engine/*.cc: reading config.json fields with errors that name
// the field ("config.json: <field> <what>"), shared by the text config
// (config.cc) and the vision config (pixtral.cc). Public engine headers never
// include JSON; this one forward-declares it.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "nlohmann/json_fwd.hpp"

namespace sirocco::engine::config_json {

absl::Status FieldError(std::string_view field, std::string_view what);
// j[key] as an integer (an integral float counts); absent or null keeps
// *out. Errors name `field`.
absl::Status GetInt(const nlohmann::json& j, const char* key, std::string_view field, std::int64_t* out);
// j[key] as a finite number; absent or null keeps *out.
absl::Status GetDouble(const nlohmann::json& j, const char* key, std::string_view field, double* out);
absl::Status Positive(std::string_view field, std::int64_t v);

}  // namespace sirocco::engine::config_json
