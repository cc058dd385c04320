#include "engine/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/config_json.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace sirocco::engine {
namespace {

using Json = nlohmann::json;

using config_json::FieldError;
using config_json::Positive;

// Reads an integer field; `null` and absence give `fallback`.
absl::Status GetInt(const Json& j, const char* field, std::int64_t fallback, std::int64_t* out) {
  *out = fallback;
  return config_json::GetInt(j, field, field, out);
}

absl::Status GetDouble(const Json& j, const char* field, double fallback, double* out) {
  *out = fallback;
  return config_json::GetDouble(j, field, field, out);
}

absl::Status GetOptionalDouble(const Json& j, const char* field, std::optional<double>* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    out->reset();
    return absl::OkStatus();
  }
  double v = 0;
  if (auto s = GetDouble(j, field, 0.0, &v); !s.ok()) return s;
  *out = v;
  return absl::OkStatus();
}

absl::Status GetBool(const Json& j, const char* field, bool fallback, bool* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    *out = fallback;
    return absl::OkStatus();
  }
  if (!it->is_boolean()) return FieldError(field, absl::StrCat("must be true or false, got ", it->dump()));
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status ParseRope(const Json& text, ModelConfig* c) {
  // transformers writes `rope_parameters` (with rope_theta inside); older files
  // carry `rope_scaling` plus a top-level `rope_theta`. With neither, the
  // Mistral4Config defaults apply.
  const Json* rp = nullptr;
  if (auto it = text.find("rope_parameters"); it != text.end() && !it->is_null()) rp = &*it;
  else if (auto it2 = text.find("rope_scaling"); it2 != text.end() && !it2->is_null()) rp = &*it2;
  RopeConfig& r = c->rope;
  if (rp == nullptr) {
    r = RopeConfig{};
    r.factor = 128.0;
    r.llama_4_scaling_beta = 0.1;
    return absl::OkStatus();
  }
  if (!rp->is_object()) return FieldError("rope_parameters", "must be an object");
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (auto it = rp->find(key); it != rp->end() && it->is_string()) {
      type = it->get<std::string>();
      break;
    }
  }
  if (type == "yarn") {
    r.type = RopeConfig::Type::kYarn;
  } else if (type == "default") {
    r.type = RopeConfig::Type::kDefault;
  } else {
    return FieldError("rope_parameters.rope_type", absl::StrCat("'", type, "' is not supported (yarn, default)"));
  }
  double top_theta = 10000.0;
  SIROCCO_RETURN_IF_ERROR(GetDouble(text, "rope_theta", 10000.0, &top_theta));
  SIROCCO_RETURN_IF_ERROR(GetDouble(*rp, "rope_theta", top_theta, &r.theta));
  SIROCCO_RETURN_IF_ERROR(GetOptionalDouble(*rp, "factor", &r.factor));
  SIROCCO_RETURN_IF_ERROR(GetInt(*rp, "original_max_position_embeddings", 8192, &r.original_max_position_embeddings));
  SIROCCO_RETURN_IF_ERROR(GetDouble(*rp, "beta_fast", 32.0, &r.beta_fast));
  SIROCCO_RETURN_IF_ERROR(GetDouble(*rp, "beta_slow", 1.0, &r.beta_slow));
  // Absent mscale / mscale_all_dim behave as 0 in the reference (falsy).
  SIROCCO_RETURN_IF_ERROR(GetDouble(*rp, "mscale", 0.0, &r.mscale));
  SIROCCO_RETURN_IF_ERROR(GetDouble(*rp, "mscale_all_dim", 0.0, &r.mscale_all_dim));
  SIROCCO_RETURN_IF_ERROR(GetOptionalDouble(*rp, "attention_factor", &r.attention_factor));
  SIROCCO_RETURN_IF_ERROR(GetBool(*rp, "truncate", true, &r.truncate));
  SIROCCO_RETURN_IF_ERROR(GetOptionalDouble(*rp, "llama_4_scaling_beta", &r.llama_4_scaling_beta));
  // beta_fast/beta_slow of 0 fall back to the defaults, as in the reference.
  if (r.beta_fast == 0) r.beta_fast = 32.0;
  if (r.beta_slow == 0) r.beta_slow = 1.0;
  double partial = 0;
  SIROCCO_RETURN_IF_ERROR(GetDouble(*rp, "partial_rotary_factor", -1.0, &partial));
  if (partial >= 0) {
    const auto dim = static_cast<std::int64_t>(static_cast<double>(c->qk_head_dim()) * partial);
    if (dim != c->qk_rope_head_dim) {
      return FieldError("rope_parameters.partial_rotary_factor",
                        absl::StrCat("(", partial, ") gives ", dim, " rotary dims, but qk_rope_head_dim is ",
                                     c->qk_rope_head_dim));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseText(const Json& t, ModelConfig* c) {
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "vocab_size", 131072, &c->vocab_size));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "hidden_size", 4096, &c->hidden_size));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "intermediate_size", 12288, &c->intermediate_size));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "moe_intermediate_size", 2048, &c->moe_intermediate_size));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "num_hidden_layers", 36, &c->num_hidden_layers));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "num_attention_heads", 32, &c->num_attention_heads));
  std::int64_t kv_heads = 0;
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "num_key_value_heads", c->num_attention_heads, &kv_heads));
  if (kv_heads != c->num_attention_heads) {
    return FieldError("num_key_value_heads",
                      absl::StrCat("(", kv_heads, ") must equal num_attention_heads (", c->num_attention_heads,
                                   "): MLA shares one latent across heads"));
  }
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "n_shared_experts", 1, &c->n_shared_experts));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "n_routed_experts", 128, &c->n_routed_experts));
  SIROCCO_RETURN_IF_ERROR(GetDouble(t, "routed_scaling_factor", 1.0, &c->routed_scaling_factor));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "kv_lora_rank", 256, &c->kv_lora_rank));
  if (t.contains("q_lora_rank") && t["q_lora_rank"].is_null()) {
    c->q_lora_rank = 0;
  } else {
    SIROCCO_RETURN_IF_ERROR(GetInt(t, "q_lora_rank", 1024, &c->q_lora_rank));
    if (c->q_lora_rank <= 0) return FieldError("q_lora_rank", "must be positive or null");
  }
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "qk_rope_head_dim", 64, &c->qk_rope_head_dim));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "qk_nope_head_dim", 64, &c->qk_nope_head_dim));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "v_head_dim", 128, &c->v_head_dim));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "n_group", 1, &c->n_group));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "topk_group", 1, &c->topk_group));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "num_experts_per_tok", 4, &c->num_experts_per_tok));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "first_k_dense_replace", 0, &c->first_k_dense_replace));
  SIROCCO_RETURN_IF_ERROR(GetBool(t, "norm_topk_prob", true, &c->norm_topk_prob));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "max_position_embeddings", 1048576, &c->max_position_embeddings));
  SIROCCO_RETURN_IF_ERROR(GetDouble(t, "rms_norm_eps", 1e-6, &c->rms_norm_eps));
  SIROCCO_RETURN_IF_ERROR(GetBool(t, "tie_word_embeddings", false, &c->tie_word_embeddings));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "bos_token_id", 1, &c->bos_token_id));
  SIROCCO_RETURN_IF_ERROR(GetInt(t, "pad_token_id", 11, &c->pad_token_id));
  if (auto it = t.find("eos_token_id"); it != t.end() && !it->is_null()) {
    c->eos_token_ids.clear();
    if (it->is_array()) {
      for (const auto& v : *it) {
        if (!v.is_number_integer()) return FieldError("eos_token_id", "must be an integer or a list of integers");
        c->eos_token_ids.push_back(v.get<std::int64_t>());
      }
    } else if (it->is_number_integer()) {
      c->eos_token_ids.push_back(it->get<std::int64_t>());
    } else {
      return FieldError("eos_token_id", "must be an integer or a list of integers");
    }
  }
  if (auto it = t.find("hidden_act"); it != t.end() && !it->is_null()) {
    if (!it->is_string() || it->get<std::string>() != "silu") {
      return FieldError("hidden_act", absl::StrCat("(", it->dump(), ") is not supported (silu)"));
    }
  }
  bool flag = false;
  SIROCCO_RETURN_IF_ERROR(GetBool(t, "attention_bias", false, &flag));
  if (flag) return FieldError("attention_bias", "true is not supported");
  SIROCCO_RETURN_IF_ERROR(GetBool(t, "rope_interleave", true, &flag));
  if (!flag) return FieldError("rope_interleave", "false is not supported (Mistral 4 rotates interleaved pairs)");
  SIROCCO_RETURN_IF_ERROR(ParseRope(t, c));
  return absl::OkStatus();
}

absl::Status ParseQuantization(const Json& root, ModelConfig* c) {
  auto it = root.find("quantization_config");
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) return FieldError("quantization_config", "must be an object");
  std::string method;
  if (auto m = it->find("quant_method"); m != it->end() && m->is_string()) method = m->get<std::string>();
  if (method != "fp8") {
    return FieldError("quantization_config.quant_method", absl::StrCat("'", method, "' is not supported (fp8)"));
  }
  if (auto f = it->find("fmt"); f != it->end() && f->is_string() && f->get<std::string>() != "e4m3") {
    return FieldError("quantization_config.fmt", absl::StrCat("'", f->get<std::string>(), "' is not supported (e4m3)"));
  }
  c->quantization.fp8 = true;
  if (auto b = it->find("weight_block_size"); b != it->end() && !b->is_null()) {
    if (!b->is_array() || b->size() != 2 || !(*b)[0].is_number_integer() || !(*b)[1].is_number_integer() ||
        (*b)[0].get<std::int64_t>() <= 0 || (*b)[1].get<std::int64_t>() <= 0) {
      return FieldError("quantization_config.weight_block_size", "must be two positive integers");
    }
    c->quantization.weight_block_size = {(*b)[0].get<std::int64_t>(), (*b)[1].get<std::int64_t>()};
  }
  return absl::OkStatus();
}

}  // namespace

namespace config_json {

absl::Status FieldError(std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", std::string(field), " ", std::string(what)));
}

absl::Status GetInt(const Json& j, const char* key, std::string_view field, std::int64_t* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (it->is_number_integer() || it->is_number_unsigned()) {
    *out = it->get<std::int64_t>();
    return absl::OkStatus();
  }
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (std::floor(v) == v && std::abs(v) < 9e15) {
      *out = static_cast<std::int64_t>(v);
      return absl::OkStatus();
    }
  }
  return FieldError(field, absl::StrCat("must be an integer, got ", it->dump()));
}

absl::Status GetDouble(const Json& j, const char* key, std::string_view field, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return FieldError(field, absl::StrCat("must be a number, got ", it->dump()));
  *out = it->get<double>();
  if (!std::isfinite(*out)) return FieldError(field, "must be finite");
  return absl::OkStatus();
}

absl::Status Positive(std::string_view field, std::int64_t v) {
  if (v <= 0) return FieldError(field, absl::StrCat("must be positive, got ", v));
  return absl::OkStatus();
}

}  // namespace config_json

absl::Status ValidateModelConfig(const ModelConfig& c) {
  SIROCCO_RETURN_IF_ERROR(Positive("vocab_size", c.vocab_size));
  SIROCCO_RETURN_IF_ERROR(Positive("hidden_size", c.hidden_size));
  SIROCCO_RETURN_IF_ERROR(Positive("num_hidden_layers", c.num_hidden_layers));
  SIROCCO_RETURN_IF_ERROR(Positive("num_attention_heads", c.num_attention_heads));
  SIROCCO_RETURN_IF_ERROR(Positive("kv_lora_rank", c.kv_lora_rank));
  SIROCCO_RETURN_IF_ERROR(Positive("qk_rope_head_dim", c.qk_rope_head_dim));
  SIROCCO_RETURN_IF_ERROR(Positive("qk_nope_head_dim", c.qk_nope_head_dim));
  SIROCCO_RETURN_IF_ERROR(Positive("v_head_dim", c.v_head_dim));
  SIROCCO_RETURN_IF_ERROR(Positive("max_position_embeddings", c.max_position_embeddings));
  if (c.q_lora_rank < 0) return FieldError("q_lora_rank", "must be positive or null");
  if (c.qk_rope_head_dim % 2 != 0) {
    return FieldError("qk_rope_head_dim", absl::StrCat("(", c.qk_rope_head_dim, ") must be even"));
  }
  if (c.first_k_dense_replace < 0) return FieldError("first_k_dense_replace", "must not be negative");
  if (c.first_k_dense_replace > 0) SIROCCO_RETURN_IF_ERROR(Positive("intermediate_size", c.intermediate_size));
  if (c.first_k_dense_replace < c.num_hidden_layers) {
    SIROCCO_RETURN_IF_ERROR(Positive("n_routed_experts", c.n_routed_experts));
    SIROCCO_RETURN_IF_ERROR(Positive("moe_intermediate_size", c.moe_intermediate_size));
    SIROCCO_RETURN_IF_ERROR(Positive("n_group", c.n_group));
    SIROCCO_RETURN_IF_ERROR(Positive("topk_group", c.topk_group));
    SIROCCO_RETURN_IF_ERROR(Positive("num_experts_per_tok", c.num_experts_per_tok));
    if (c.n_shared_experts < 0) return FieldError("n_shared_experts", "must not be negative");
    if (c.n_routed_experts % c.n_group != 0) {
      return FieldError("n_group", absl::StrCat("(", c.n_group, ") must divide n_routed_experts (",
                                                c.n_routed_experts, ")"));
    }
    if (c.topk_group > c.n_group) {
      return FieldError("topk_group", absl::StrCat("(", c.topk_group, ") exceeds n_group (", c.n_group, ")"));
    }
    const std::int64_t eligible = c.topk_group * (c.n_routed_experts / c.n_group);
    if (c.num_experts_per_tok > eligible) {
      return FieldError("num_experts_per_tok", absl::StrCat("(", c.num_experts_per_tok,
                                                            ") exceeds the experts in topk_group groups (",
                                                            eligible, ")"));
    }
  }
  if (!(c.rms_norm_eps > 0)) return FieldError("rms_norm_eps", "must be positive");
  if (!(c.rope.theta > 0)) return FieldError("rope_parameters.rope_theta", "must be positive");
  if (c.rope.type == RopeConfig::Type::kYarn) {
    SIROCCO_RETURN_IF_ERROR(
        Positive("rope_parameters.original_max_position_embeddings", c.rope.original_max_position_embeddings));
    if (c.rope.factor && !(*c.rope.factor > 0)) return FieldError("rope_parameters.factor", "must be positive");
  }
  if (c.rope.llama_4_scaling_beta) {
    SIROCCO_RETURN_IF_ERROR(
        Positive("rope_parameters.original_max_position_embeddings", c.rope.original_max_position_embeddings));
  }
  for (std::int64_t id : c.eos_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return FieldError("eos_token_id", absl::StrCat("(", id, ") is outside the vocabulary (", c.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  Json root = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!root.is_object()) return absl::InvalidArgumentError("config.json: top level must be an object");
  ModelConfig c;
  std::string model_type;
  if (auto it = root.find("model_type"); it != root.end() && it->is_string()) model_type = it->get<std::string>();
  const Json* text = &root;
  if (auto it = root.find("text_config"); it != root.end() && it->is_object()) {
    std::string inner;
    if (auto t = it->find("model_type"); t != it->end() && t->is_string()) inner = t->get<std::string>();
    if (inner != "mistral4") {
      return FieldError("text_config.model_type", absl::StrCat("'", inner, "' is not supported (mistral4)"));
    }
    text = &*it;
    c.multimodal_wrapper = true;
  } else if (model_type != "mistral4") {
    return FieldError("model_type", absl::StrCat("'", model_type, "' is not supported (mistral4)"));
  }
  SIROCCO_RETURN_IF_ERROR(ParseText(*text, &c));
  // The wrapper may carry the quantization block at either level.
  SIROCCO_RETURN_IF_ERROR(ParseQuantization(root, &c));
  if (!c.quantization.fp8 && text != &root) SIROCCO_RETURN_IF_ERROR(ParseQuantization(*text, &c));
  if (c.multimodal_wrapper) {
    // transformers reads the wrapper's own tie_word_embeddings for the
    // multimodal model; it wins over the text config's when present.
    bool tied = c.tie_word_embeddings;
    SIROCCO_RETURN_IF_ERROR(GetBool(root, "tie_word_embeddings", tied, &tied));
    c.tie_word_embeddings = tied;
  }
  SIROCCO_RETURN_IF_ERROR(ValidateModelConfig(c));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto config = ParseModelConfig(ss.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

std::string ModelConfigToJson(const ModelConfig& c) {
  Json rope = Json::object();
  rope["rope_type"] = c.rope.type == RopeConfig::Type::kYarn ? "yarn" : "default";
  rope["type"] = rope["rope_type"];
  rope["rope_theta"] = c.rope.theta;
  if (c.rope.type == RopeConfig::Type::kYarn) {
    if (c.rope.factor) rope["factor"] = *c.rope.factor;
    rope["original_max_position_embeddings"] = c.rope.original_max_position_embeddings;
    rope["beta_fast"] = c.rope.beta_fast;
    rope["beta_slow"] = c.rope.beta_slow;
    rope["mscale"] = c.rope.mscale;
    rope["mscale_all_dim"] = c.rope.mscale_all_dim;
    if (c.rope.attention_factor) rope["attention_factor"] = *c.rope.attention_factor;
  }
  if (c.rope.llama_4_scaling_beta) rope["llama_4_scaling_beta"] = *c.rope.llama_4_scaling_beta;
  rope["max_position_embeddings"] = c.max_position_embeddings;
  rope["partial_rotary_factor"] =
      static_cast<double>(c.qk_rope_head_dim) / static_cast<double>(c.qk_head_dim());
  Json j = {
      {"architectures", {"Mistral4ForCausalLM"}},
      {"model_type", "mistral4"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"moe_intermediate_size", c.moe_intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_attention_heads},
      {"n_shared_experts", c.n_shared_experts},
      {"n_routed_experts", c.n_routed_experts},
      {"routed_scaling_factor", c.routed_scaling_factor},
      {"kv_lora_rank", c.kv_lora_rank},
      {"qk_rope_head_dim", c.qk_rope_head_dim},
      {"qk_nope_head_dim", c.qk_nope_head_dim},
      {"v_head_dim", c.v_head_dim},
      {"head_dim", c.qk_head_dim()},
      {"n_group", c.n_group},
      {"topk_group", c.topk_group},
      {"num_experts_per_tok", c.num_experts_per_tok},
      {"first_k_dense_replace", c.first_k_dense_replace},
      {"norm_topk_prob", c.norm_topk_prob},
      {"hidden_act", "silu"},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"bos_token_id", c.bos_token_id},
      {"pad_token_id", c.pad_token_id},
      {"rope_interleave", true},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"rope_parameters", rope},
      {"dtype", "bfloat16"},
  };
  j["q_lora_rank"] = c.q_lora_rank > 0 ? Json(c.q_lora_rank) : Json(nullptr);
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  else j["eos_token_id"] = c.eos_token_ids;
  return j.dump(2) + "\n";
}

namespace {
double YarnGetMscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}
}  // namespace

RopeTables ComputeRopeTables(const ModelConfig& c) {
  RopeTables t;
  const std::int64_t dim = c.qk_rope_head_dim;
  const double base = c.rope.theta;
  // Mirrors the reference's float32 tensor arithmetic step by step.
  std::vector<float> pos_freqs(static_cast<std::size_t>(dim / 2));
  for (std::int64_t i = 0; i < dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(dim);
    pos_freqs[static_cast<std::size_t>(i)] = std::pow(static_cast<float>(base), e);
  }
  t.inv_freq.resize(pos_freqs.size());
  double softmax_scale = 1.0 / std::sqrt(static_cast<double>(c.qk_head_dim()));
  if (c.rope.type == RopeConfig::Type::kDefault) {
    for (std::size_t i = 0; i < pos_freqs.size(); ++i) t.inv_freq[i] = 1.0f / pos_freqs[i];
    t.attention_factor = 1.0f;
    t.softmax_scale = static_cast<float>(softmax_scale);
    return t;
  }
  const double factor = c.rope.factor ? *c.rope.factor
                                      : static_cast<double>(c.max_position_embeddings) /
                                            static_cast<double>(c.rope.original_max_position_embeddings);
  double attention_factor = 0;
  if (c.rope.attention_factor) {
    attention_factor = *c.rope.attention_factor;
  } else if (c.rope.mscale != 0 && c.rope.mscale_all_dim != 0) {
    attention_factor = YarnGetMscale(factor, c.rope.mscale) / YarnGetMscale(factor, c.rope.mscale_all_dim);
  } else {
    attention_factor = YarnGetMscale(factor, 1.0);
  }
  auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) *
            std::log(static_cast<double>(c.rope.original_max_position_embeddings) / (rotations * 2 * M_PI))) /
           (2 * std::log(base));
  };
  double low = correction_dim(c.rope.beta_fast);
  double high = correction_dim(c.rope.beta_slow);
  if (c.rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const float flow = static_cast<float>(low);
  const float span = static_cast<float>(high - low);
  const float ffactor = static_cast<float>(factor);
  for (std::size_t i = 0; i < pos_freqs.size(); ++i) {
    const float extrapolation = 1.0f / pos_freqs[i];
    const float interpolation = 1.0f / (ffactor * pos_freqs[i]);
    float ramp = (static_cast<float>(i) - flow) / span;
    ramp = std::clamp(ramp, 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    t.inv_freq[i] = interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  t.attention_factor = static_cast<float>(attention_factor);
  if (c.rope.mscale_all_dim != 0) {
    const double m = YarnGetMscale(factor, c.rope.mscale_all_dim);
    softmax_scale = softmax_scale * m * m;
  }
  t.softmax_scale = static_cast<float>(softmax_scale);
  return t;
}

float Llama4QueryScale(const ModelConfig& c, std::int64_t pos) {
  if (!c.rope.llama_4_scaling_beta) return 1.0f;
  const float floored =
      std::floor(static_cast<float>(pos) / static_cast<float>(c.rope.original_max_position_embeddings));
  return 1.0f + static_cast<float>(*c.rope.llama_4_scaling_beta) * std::log(1.0f + floored);
}

}  // namespace sirocco::engine
