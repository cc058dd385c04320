#include "engine/text/tekken.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"
#include "engine/text/tekken_bpe.h"
#include "engine/text/tekken_regex.h"
#include "engine/text/utf8.h"
#include "nlohmann/json.hpp"

namespace sirocco::text {
namespace {

using nlohmann::json;

constexpr std::pair<std::string_view, TokenizerVersion> kVersionNames[] = {
    {"v1", TokenizerVersion::kV1},   {"v2", TokenizerVersion::kV2},   {"v3", TokenizerVersion::kV3},
    {"v7", TokenizerVersion::kV7},   {"v11", TokenizerVersion::kV11}, {"v13", TokenizerVersion::kV13},
    {"v15", TokenizerVersion::kV15},
};

// Tekkenizer.DEPRECATED_SPECIAL_TOKENS: the special tokens of files (<= v7)
// that do not list their own.
constexpr std::string_view kDeprecatedSpecialTokens[] = {
    "<unk>",      "<s>",         "</s>",           "[INST]",          "[/INST]",         "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",        "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]",    "[IMG]",
    "<pad>",      "[IMG_BREAK]", "[IMG_END]",      "[PREFIX]",        "[MIDDLE]",        "[SUFFIX]",
    "[SYSTEM_PROMPT]",           "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
};

absl::Status Invalid(const std::string& name, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tekken file ", name, ": ", std::string(what)));
}

absl::StatusOr<std::int64_t> IntField(const json& object, const char* key, const std::string& name) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_number_integer()) {
    return Invalid(name, absl::StrCat("'", key, "' must be an integer"));
  }
  return it->get<std::int64_t>();
}

absl::StatusOr<ImageConfig> ParseImageConfig(const json& j, const std::string& name) {
  if (!j.is_object()) return Invalid(name, "the image config must be an object");
  ImageConfig c;
  for (const auto& [key, value] : j.items()) {
    int* field = key == "image_patch_size"     ? &c.image_patch_size
                 : key == "max_image_size"     ? &c.max_image_size
                 : key == "spatial_merge_size" ? &c.spatial_merge_size
                                               : nullptr;
    if (field == nullptr) return Invalid(name, absl::StrCat("unknown image config field '", key, "'"));
    if (!value.is_number_integer() || value.get<std::int64_t>() <= 0 || value.get<std::int64_t>() > (1 << 30)) {
      return Invalid(name, absl::StrCat("image config '", key, "' must be a positive integer"));
    }
    *field = value.get<int>();
  }
  if (c.image_patch_size <= 0 || c.max_image_size <= 0) {
    return Invalid(name, "the image config needs image_patch_size and max_image_size");
  }
  return c;
}

}  // namespace

absl::StatusOr<TokenizerVersion> ParseTokenizerVersion(std::string_view name) {
  for (const auto& [n, v] : kVersionNames) {
    if (n == name) return v;
  }
  return absl::InvalidArgumentError(absl::StrCat("Unknown version: ", std::string(name),
                                                 ". Make sure to use a valid version string: "
                                                 "['v1', 'v2', 'v3', 'v7', 'v11', 'v13', 'v15']"));
}

std::string_view TokenizerVersionName(TokenizerVersion version) {
  for (const auto& [n, v] : kVersionNames) {
    if (v == version) return n;
  }
  return "v?";
}

Tekkenizer::Tekkenizer() = default;
Tekkenizer::~Tekkenizer() = default;

absl::StatusOr<std::unique_ptr<Tekkenizer>> Tekkenizer::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tekken file ", path));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (!in.good() && !in.eof()) return absl::DataLossError(absl::StrCat("cannot read tekken file ", path));
  std::string name = path.substr(path.find_last_of('/') + 1);  // npos + 1 == 0
  if (const auto dot = name.find(".json"); dot != std::string::npos) name.erase(dot, 5);
  return FromJson(buffer.str(), std::move(name));
}

absl::StatusOr<std::unique_ptr<Tekkenizer>> Tekkenizer::FromJson(std::string_view json_text, std::string name) {
  json root = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) return Invalid(name, "not a JSON object");
  std::unique_ptr<Tekkenizer> t(new Tekkenizer());
  t->name_ = name;

  auto config_it = root.find("config");
  if (config_it == root.end() || !config_it->is_object()) return Invalid(name, "missing 'config'");
  const json& config = *config_it;
  auto version_it = config.find("version");
  const std::string version_name =
      version_it != config.end() && version_it->is_string() ? version_it->get<std::string>() : "None";
  absl::StatusOr<TokenizerVersion> version = ParseTokenizerVersion(version_name);
  if (!version.ok()) return Invalid(name, std::string(version.status().message()));
  t->version_ = *version;
  auto pattern_it = config.find("pattern");
  if (pattern_it == config.end() || !pattern_it->is_string()) return Invalid(name, "config 'pattern' missing");
  t->pattern_ = pattern_it->get<std::string>();
  SIROCCO_ASSIGN_OR_RETURN(const std::int64_t vocab_size, IntField(config, "default_vocab_size", name));
  SIROCCO_ASSIGN_OR_RETURN(const std::int64_t num_special, IntField(config, "default_num_special_tokens", name));
  if (num_special <= 0 || num_special > vocab_size || vocab_size > (std::int64_t{1} << 30)) {
    return Invalid(name, "default_num_special_tokens must be in (0, default_vocab_size]");
  }
  t->vocab_size_ = vocab_size;
  t->num_special_tokens_ = static_cast<std::int32_t>(num_special);

  // Special tokens: the file's list (required above v7), padded to the
  // configured count with <SPECIAL_{id}>; ranks must be the list positions.
  auto specials_it = root.find("special_tokens");
  if (specials_it == root.end() || specials_it->is_null()) {
    if (t->version_ > TokenizerVersion::kV7) {
      return Invalid(name, "Special tokens not found. Please update your tokenizer file and include all special "
                           "tokens you need.");
    }
    for (std::string_view s : kDeprecatedSpecialTokens) t->special_text_.emplace_back(s);
  } else {
    if (!specials_it->is_array()) return Invalid(name, "'special_tokens' must be a list");
    for (const json& s : *specials_it) {
      const std::size_t position = t->special_text_.size();
      if (!s.is_object() || !s.contains("rank") || !s["rank"].is_number_integer() || !s.contains("token_str") ||
          !s["token_str"].is_string()) {
        return Invalid(name, absl::StrCat("special token ", position, " needs an integer 'rank' and a 'token_str'"));
      }
      if (s["rank"].get<std::int64_t>() != static_cast<std::int64_t>(position)) {
        return Invalid(name, absl::StrCat("special token '", s["token_str"].get<std::string>(), "' has rank ",
                                          s["rank"].get<std::int64_t>(), " at position ", position));
      }
      t->special_text_.push_back(s["token_str"].get<std::string>());
    }
  }
  if (static_cast<std::int64_t>(t->special_text_.size()) > num_special) {
    return Invalid(name, absl::StrCat(t->special_text_.size(), " special tokens but default_num_special_tokens is ",
                                      num_special));
  }
  for (auto i = static_cast<std::int32_t>(t->special_text_.size()); i < num_special; ++i) {
    t->special_text_.push_back(absl::StrCat("<SPECIAL_", i, ">"));
  }
  for (std::int32_t i = 0; i < num_special; ++i) {
    if (!t->special_ids_.emplace(t->special_text_[i], i).second) {
      return Invalid(name, absl::StrCat("Special tokens must be unique: '", t->special_text_[i], "' repeats"));
    }
  }
  auto id_or = [&](std::string_view s) {
    auto it = t->special_ids_.find(std::string(s));
    return it == t->special_ids_.end() ? -1 : it->second;
  };
  t->bos_id_ = id_or("<s>");
  t->eos_id_ = id_or("</s>");
  t->pad_id_ = id_or("<pad>");
  t->unk_id_ = id_or("<unk>");

  // Image config: "image", or the deprecated "multimodal" (<= v11 only).
  if (auto mm = root.find("multimodal"); mm != root.end() && !mm->is_null() && !mm->empty()) {
    if (t->version_ > TokenizerVersion::kV11) {
      return Invalid(name, absl::StrCat("The image config has to be called 'image' for tokenizers of version ",
                                        std::string(TokenizerVersionName(t->version_)), "."));
    }
    SIROCCO_ASSIGN_OR_RETURN(t->image_config_, ParseImageConfig(*mm, name));
  } else if (auto image = root.find("image"); image != root.end() && !image->is_null() && !image->empty()) {
    SIROCCO_ASSIGN_OR_RETURN(t->image_config_, ParseImageConfig(*image, name));
  }
  if (auto msb = root.find("model_settings_builder"); msb != root.end() && !msb->is_null()) {
    if (t->version_ < TokenizerVersion::kV15) {
      return Invalid(name, absl::StrCat("model_settings_builder is not supported for version ",
                                        std::string(TokenizerVersionName(t->version_))));
    }
    if (!msb->is_object()) return Invalid(name, "'model_settings_builder' must be an object");
    t->model_settings_builder_json_ = msb->dump();
  }

  // Ordinary tokens: the first default_vocab_size - num_special entries of
  // the vocabulary, in rank order.
  auto vocab_it = root.find("vocab");
  if (vocab_it == root.end() || !vocab_it->is_array()) return Invalid(name, "missing 'vocab'");
  const std::int64_t inner = vocab_size - num_special;
  if (static_cast<std::int64_t>(vocab_it->size()) < inner) {
    return Invalid(name, absl::StrCat("vocabulary has ", vocab_it->size(), " tokens; default_vocab_size needs ",
                                      inner, " besides the special tokens"));
  }
  std::vector<std::string> tokens;
  tokens.reserve(inner);
  for (std::int64_t i = 0; i < inner; ++i) {
    const json& entry = (*vocab_it)[i];
    if (!entry.is_object() || entry.size() != 3 || !entry.contains("token_str") || !entry.contains("rank") ||
        !entry["rank"].is_number_integer() || !entry.contains("token_bytes") || !entry["token_bytes"].is_string()) {
      return Invalid(name, absl::StrCat("vocab entry ", i, " must have exactly rank, token_bytes and token_str"));
    }
    if (entry["rank"].get<std::int64_t>() != i) {
      return Invalid(name, absl::StrCat("vocab entry ", i, " has rank ", entry["rank"].get<std::int64_t>()));
    }
    std::string bytes;
    if (!absl::Base64Unescape(entry["token_bytes"].get_ref<const std::string&>(), &bytes)) {
      return Invalid(name, absl::StrCat("vocab entry ", i, ": token_bytes is not base64"));
    }
    tokens.push_back(std::move(bytes));
  }
  absl::StatusOr<BpeRanks> ranks = BpeRanks::Create(std::move(tokens));
  if (!ranks.ok()) return Invalid(name, std::string(ranks.status().message()));
  t->ranks_ = std::make_unique<BpeRanks>(std::move(*ranks));

  absl::StatusOr<std::unique_ptr<PreTokenizer>> pre = PreTokenizer::Create(t->pattern_);
  if (!pre.ok()) return Invalid(name, std::string(pre.status().message()));
  t->pre_tokenizer_ = std::move(*pre);
  return t;
}

std::vector<std::int32_t> Tekkenizer::Encode(std::string_view text) const {
  std::vector<std::int32_t> out;
  out.reserve(text.size() / 3 + 1);
  EncodeAppend(text, &out);
  return out;
}

void Tekkenizer::EncodeAppend(std::string_view text, std::vector<std::int32_t>* out) const {
  if (IsValidUtf8(text)) {
    EncodeValidUtf8(text, out);
  } else {
    EncodeValidUtf8(Utf8Lossy(text), out);
  }
}

void Tekkenizer::EncodeValidUtf8(std::string_view text, std::vector<std::int32_t>* out) const {
  pre_tokenizer_->Split(text, [&](std::string_view piece) { ranks_->Encode(piece, num_special_tokens_, out); });
}

absl::StatusOr<std::string> Tekkenizer::Decode(std::span<const std::int32_t> ids, SpecialTokenPolicy policy) const {
  std::string text;
  std::string run;  // bytes of the current run of ordinary tokens
  std::size_t i = 0;
  while (i < ids.size()) {
    const std::int32_t id = ids[i];
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary [0, ",
                                                     vocab_size_, ")"));
    }
    if (!IsSpecial(id)) {
      run += TokenBytes(id);
      ++i;
      continue;
    }
    AppendUtf8Lossy(run, &text);
    run.clear();
    std::size_t end = i;
    while (end < ids.size() && IsSpecial(ids[end])) ++end;
    if (policy == SpecialTokenPolicy::kRaise) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Decoding `tokens` that contain special tokens ([", absl::StrJoin(ids.subspan(i, end - i), ", "),
          "]) is not allowed. Either make sure `tokens` do not include any special tokens or change the special "
          "token policy to IGNORE or KEEP."));
    }
    if (policy == SpecialTokenPolicy::kKeep) {
      for (std::size_t k = i; k < end; ++k) text += special_text_[ids[k]];
    }
    i = end;
  }
  AppendUtf8Lossy(run, &text);
  return text;
}

std::string_view Tekkenizer::TokenBytes(std::int32_t id) const {
  if (id < 0 || id >= vocab_size_) return {};
  if (IsSpecial(id)) return special_text_[id];
  return ranks_->Bytes(id - num_special_tokens_);
}

std::string Tekkenizer::IdToPiece(std::int32_t id) const {
  const std::int32_t one[] = {id};
  absl::StatusOr<std::string> s = Decode(one, SpecialTokenPolicy::kKeep);
  return s.ok() ? *std::move(s) : std::string();
}

absl::StatusOr<std::int32_t> Tekkenizer::SpecialTokenId(std::string_view text) const {
  auto it = special_ids_.find(std::string(text));
  if (it == special_ids_.end()) return absl::NotFoundError(absl::StrCat("Unknown control token ", std::string(text)));
  return it->second;
}

}  // namespace sirocco::text
