#include "tools/sirocco/text_commands.h"

#include <cstdint>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/status_macros.h"
#include "engine/text/instruct.h"
#include "engine/text/tekken.h"
#include "engine/text/tekken_file.h"
#include "nlohmann/json.hpp"
#include "tools/sirocco/commands.h"

namespace sirocco::tools {
namespace {

using text::SpecialTokenPolicy;
using text::Tekkenizer;

absl::StatusOr<std::string> RequiredFlag(Flags& f, const std::string& name) {
  auto v = f.Get(name);
  if (!v || v->empty()) return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  return *v;
}

absl::StatusOr<std::vector<std::int32_t>> ParseTokenIds(const std::string& text) {
  std::vector<std::int32_t> ids;
  if (text.empty()) return ids;
  for (absl::string_view part : absl::StrSplit(absl::string_view(text.data(), text.size()), ',')) {
    std::int32_t v = 0;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("--ids: '", part, "' is not a token id"));
    }
    ids.push_back(v);
  }
  return ids;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void PrintIdsAndText(const std::vector<std::int32_t>& ids, const std::string& text) {
  nlohmann::json j = {{"ids", ids}, {"text", text}};
  std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
}

// --text: plain text, as Tekkenizer.encode(s, bos=False, eos=False).
absl::Status TokenizeText(const Tekkenizer& tokenizer, const std::string& input) {
  const std::vector<std::int32_t> ids = tokenizer.Encode(input);
  SIROCCO_ASSIGN_OR_RETURN(const std::string rendered, tokenizer.Decode(ids, SpecialTokenPolicy::kKeep));
  PrintIdsAndText(ids, rendered);
  return absl::OkStatus();
}

// --chat: the instruct format (engine/text/instruct.h) renders the request.
absl::Status TokenizeChatFile(const Tekkenizer& tokenizer, const std::string& request_path) {
  SIROCCO_ASSIGN_OR_RETURN(const std::string request_json, ReadTextFile(request_path));
  SIROCCO_ASSIGN_OR_RETURN(const text::RenderedChat chat, text::TokenizeChat(tokenizer, request_json));
  PrintIdsAndText(chat.ids, chat.text);
  return absl::OkStatus();
}

}  // namespace

absl::Status RunTokenize(int argc, char** argv) {
  SIROCCO_ASSIGN_OR_RETURN(Flags f, Flags::Parse(argc, argv, 2, {}));
  SIROCCO_ASSIGN_OR_RETURN(const std::string path, RequiredFlag(f, "tokenizer"));
  const std::optional<std::string> input = f.Get("text");
  const std::optional<std::string> chat = f.Get("chat");
  SIROCCO_RETURN_IF_ERROR(f.CheckAllUsed());
  if (input.has_value() == chat.has_value()) {
    return absl::InvalidArgumentError("give exactly one of --text STRING and --chat REQUEST.json");
  }
  SIROCCO_ASSIGN_OR_RETURN(const std::unique_ptr<Tekkenizer> tokenizer, Tekkenizer::Load(path));
  if (input) return TokenizeText(*tokenizer, *input);
  return TokenizeChatFile(*tokenizer, *chat);
}

absl::Status RunDetokenize(int argc, char** argv) {
  SIROCCO_ASSIGN_OR_RETURN(Flags f, Flags::Parse(argc, argv, 2, {}));
  SIROCCO_ASSIGN_OR_RETURN(const std::string path, RequiredFlag(f, "tokenizer"));
  const std::optional<std::string> ids_text = f.Get("ids");
  const std::string special = f.Get("special").value_or("ignore");
  SIROCCO_RETURN_IF_ERROR(f.CheckAllUsed());
  if (!ids_text) return absl::InvalidArgumentError("--ids is required");
  SpecialTokenPolicy policy;
  if (special == "ignore") {
    policy = SpecialTokenPolicy::kIgnore;
  } else if (special == "keep") {
    policy = SpecialTokenPolicy::kKeep;
  } else if (special == "raise") {
    policy = SpecialTokenPolicy::kRaise;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--special: '", special, "' is not one of ignore, keep, raise"));
  }
  SIROCCO_ASSIGN_OR_RETURN(const std::vector<std::int32_t> ids, ParseTokenIds(*ids_text));
  SIROCCO_ASSIGN_OR_RETURN(const std::unique_ptr<Tekkenizer> tokenizer, Tekkenizer::Load(path));
  SIROCCO_ASSIGN_OR_RETURN(const std::string text, tokenizer->Decode(ids, policy));
  std::cout << text << '\n' << std::flush;
  return absl::OkStatus();
}

absl::Status RunMakeTekken(int argc, char** argv) {
  SIROCCO_ASSIGN_OR_RETURN(Flags f, Flags::Parse(argc, argv, 2, {}));
  SIROCCO_ASSIGN_OR_RETURN(const std::string base, RequiredFlag(f, "base"));
  SIROCCO_ASSIGN_OR_RETURN(const std::string version_name, RequiredFlag(f, "version"));
  SIROCCO_ASSIGN_OR_RETURN(const std::string out, RequiredFlag(f, "out"));
  SIROCCO_RETURN_IF_ERROR(f.CheckAllUsed());
  SIROCCO_ASSIGN_OR_RETURN(const text::TokenizerVersion version, text::ParseTokenizerVersion(version_name));
  SIROCCO_RETURN_IF_ERROR(text::WriteDerivedTekken(base, version, out));
  std::cout << nlohmann::json{{"out", out}, {"version", version_name}}.dump() << std::endl;
  return absl::OkStatus();
}

}  // namespace sirocco::tools
