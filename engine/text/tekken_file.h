// Tekken files for versions mistral-common ships no file for (v7, v11, v13,
// v15): the shipped vocabulary (tekken_240911.json) plus the version's special
// tokens, declared version, image section and, for v15, the
// model_settings_builder that mistral-common needs for reasoning_effort. The
// per-version data is engine/text/data/tekken_versions.json, compiled into the
// library; the output is an ordinary tekken.json that mistral-common's
// Tekkenizer.from_file loads as it is (tests/reference/text/ checks that both
// sides tokenize the same file identically).
//
// Thread-safety: pure functions.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/text/tekken.h"

namespace sirocco::text {

// The versions a derived file can be built for: v7, v11, v13, v15.
std::vector<TokenizerVersion> DerivedTekkenVersions();
// engine/text/data/tekken_versions.json as compiled in.
std::string_view DerivedTekkenSpecJson();

// The derived file's JSON text from the base file's text. INVALID_ARGUMENT for
// a version without a spec or a base that is not a tekken file.
[[nodiscard]] absl::StatusOr<std::string> BuildDerivedTekkenJson(std::string_view base_json,
                                                                 TokenizerVersion version);

// Reads base_path, writes the derived file to out_path (through a temporary
// file and a rename, so readers never see half a file). Name the output
// "*tekken*.json" if mistral-common's MistralTokenizer.from_file must
// recognise it (e.g. "tekken_v15.json").
[[nodiscard]] absl::Status WriteDerivedTekken(const std::string& base_path, TokenizerVersion version,
                                              const std::string& out_path);

// The derived tokenizer in memory, without a file.
[[nodiscard]] absl::StatusOr<std::unique_ptr<Tekkenizer>> LoadDerivedTekken(const std::string& base_path,
                                                                            TokenizerVersion version);

}  // namespace sirocco::text
