#include "tools/sirocco/commands.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/generator.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "engine/device_loader.h"
#include "engine/model_maker.h"
#include "engine/npy.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace sirocco::tools {
namespace {

using engine::AttentionForm;

constexpr std::int64_t kBlockSize = 16;

absl::StatusOr<std::vector<std::int32_t>> ParseIds(const std::string& flag, const std::string& text) {
  std::vector<std::int32_t> ids;
  for (absl::string_view part : absl::StrSplit(absl::string_view(text.data(), text.size()), ',')) {
    std::int32_t v = 0;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", part, "' is not a token id"));
    }
    ids.push_back(v);
  }
  return ids;
}

absl::StatusOr<std::string> Required(Flags& f, const std::string& name) {
  auto v = f.Get(name);
  if (!v || v->empty()) return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  return *v;
}

template <typename T>
absl::Status Number(Flags& f, const std::string& name, T* out) {
  auto v = f.Get(name);
  if (!v) return absl::OkStatus();
  bool ok = false;
  if constexpr (std::is_same_v<T, float>) {
    ok = absl::SimpleAtof(*v, out) && std::isfinite(*out);
  } else if constexpr (std::is_same_v<T, double>) {
    ok = absl::SimpleAtod(*v, out) && std::isfinite(*out);
  } else {
    ok = absl::SimpleAtoi(*v, out);
  }
  if (!ok) return absl::InvalidArgumentError(absl::StrCat("--", name, ": '", *v, "' is not a valid number"));
  return absl::OkStatus();
}

// --backend ref|avx2|cuda: the CPU kernels (default avx2 where the CPU has
// it), or the whole model on the GPU (builds with the CUDA backend only).
// --weights f32|bf16|fp8: how weight matrices are held and multiplied.
absl::StatusOr<engine::ModelOptions> ParseBackend(Flags& f) {
  engine::ModelOptions options{.backend = kernels::Available(kernels::Backend::kAvx2) ? kernels::Backend::kAvx2
                                                                                       : kernels::Backend::kRef,
                               .device = nullptr};
  // logits and generate take token ids only: a multimodal checkpoint's
  // vision encoder is not loaded (nor needed to be complete).
  options.load_vision = false;
  if (auto w = f.Get("weights")) {
    absl::StatusOr<engine::WeightType> type = engine::ParseWeightType(*w);
    if (!type.ok()) return absl::InvalidArgumentError(absl::StrCat("--weights: ", type.status().message()));
    options.weight_type = *type;
  }
  auto v = f.Get("backend");
  if (!v) return options;
  if (*v == "cuda") {
    SIROCCO_ASSIGN_OR_RETURN(options.device, engine::LoadCudaDevice());
    return options;
  }
  if (*v == "ref") options.backend = kernels::Backend::kRef;
  else if (*v == "avx2") options.backend = kernels::Backend::kAvx2;
  else return absl::InvalidArgumentError(absl::StrCat("--backend: '", *v, "' is not one of ref, avx2, cuda"));
  if (!kernels::Available(options.backend)) {
    return absl::FailedPreconditionError(absl::StrCat("--backend ", *v, " is not available"));
  }
  return options;
}

absl::StatusOr<AttentionForm> ParseForm(Flags& f) {
  auto v = f.Get("attention");
  if (!v || *v == "expanded") return AttentionForm::kExpanded;
  if (*v == "absorbed") return AttentionForm::kAbsorbed;
  return absl::InvalidArgumentError(absl::StrCat("--attention: '", *v, "' is not one of expanded, absorbed"));
}

}  // namespace

absl::Status RunMakeModel(int argc, char** argv) {
  SIROCCO_ASSIGN_OR_RETURN(Flags f, Flags::Parse(argc, argv, 2, {"config-only"}));
  auto preset = f.Get("preset");
  auto config_file = f.Get("config");
  SIROCCO_ASSIGN_OR_RETURN(std::string out, Required(f, "out"));
  engine::MakeModelOptions options;
  SIROCCO_RETURN_IF_ERROR(Number(f, "seed", &options.seed));
  const bool config_only = f.Get("config-only").has_value();
  if (auto d = f.Get("dtype")) {
    if (*d == "bf16") options.dtype = engine::DType::kBF16;
    else if (*d == "f16") options.dtype = engine::DType::kF16;
    else if (*d == "f32") options.dtype = engine::DType::kF32;
    else return absl::InvalidArgumentError(absl::StrCat("--dtype: '", *d, "' is not one of bf16, f16, f32"));
  }
  SIROCCO_RETURN_IF_ERROR(f.CheckAllUsed());
  if (preset.has_value() == config_file.has_value()) {
    return absl::InvalidArgumentError("give exactly one of --preset NAME and --config FILE");
  }
  engine::ModelConfig config;
  if (preset) {
    SIROCCO_ASSIGN_OR_RETURN(config, engine::PresetConfig(*preset));
    options.vision = engine::PresetVisionConfig(*preset);
  } else {
    SIROCCO_ASSIGN_OR_RETURN(config, engine::LoadModelConfig(*config_file));
    SIROCCO_ASSIGN_OR_RETURN(options.vision, engine::LoadVisionConfig(*config_file));
  }
  const engine::ParameterCount count = engine::CountParameters(config);
  const std::int64_t vision_count = options.vision ? engine::CountVisionParameters(*options.vision, config) : 0;
  // Writing more than this many parameters is a mistake, not a test model.
  constexpr std::int64_t kMaxParameters = 8'000'000'000;
  if (config_only) {
    std::error_code ec;
    std::filesystem::create_directories(out, ec);
    FILE* file = std::fopen((out + "/config.json").c_str(), "wb");
    if (file == nullptr) return absl::InternalError(absl::StrCat("cannot write ", out, "/config.json"));
    const std::string text =
        options.vision ? engine::MultimodalConfigToJson(config, *options.vision) : engine::ModelConfigToJson(config);
    std::fwrite(text.data(), 1, text.size(), file);
    std::fclose(file);
  } else if (count.total + vision_count > kMaxParameters) {
    return absl::InvalidArgumentError(absl::StrCat("this configuration has ", count.total + vision_count,
                                                   " parameters; write it with --config-only"));
  } else {
    SIROCCO_RETURN_IF_ERROR(engine::MakeModel(config, options, out));
  }
  // parameters / active_parameters: the text decoder; vision_parameters: the
  // vision encoder and projector (0 for a text-only model).
  nlohmann::json j = {{"out", out},
                      {"parameters", count.total},
                      {"active_parameters", count.active},
                      {"vision_parameters", vision_count},
                      {"config_only", config_only}};
  std::cout << j.dump() << std::endl;
  return absl::OkStatus();
}

absl::Status RunLogits(int argc, char** argv) {
  SIROCCO_ASSIGN_OR_RETURN(Flags f, Flags::Parse(argc, argv, 2, {"incremental"}));
  SIROCCO_ASSIGN_OR_RETURN(std::string model_dir, Required(f, "model"));
  SIROCCO_ASSIGN_OR_RETURN(std::string tokens_text, Required(f, "tokens"));
  SIROCCO_ASSIGN_OR_RETURN(std::string out, Required(f, "out"));
  const bool incremental = f.Get("incremental").has_value();
  SIROCCO_ASSIGN_OR_RETURN(engine::ModelOptions model_options, ParseBackend(f));
  SIROCCO_ASSIGN_OR_RETURN(AttentionForm form, ParseForm(f));
  SIROCCO_RETURN_IF_ERROR(f.CheckAllUsed());
  SIROCCO_ASSIGN_OR_RETURN(std::vector<std::int32_t> tokens, ParseIds("tokens", tokens_text));

  SIROCCO_ASSIGN_OR_RETURN(auto model, engine::Mistral4Model::Load(model_dir, model_options));
  const std::int64_t n = static_cast<std::int64_t>(tokens.size());
  const std::int64_t vocab = model->config().vocab_size;
  SIROCCO_ASSIGN_OR_RETURN(auto pool, engine::KvPool::Create(model->PoolOptions(n / kBlockSize + 1, kBlockSize),
                                                             model->device()));
  engine::BlockTable blocks(pool.get());
  SIROCCO_RETURN_IF_ERROR(blocks.Reserve(n));

  std::vector<float> all(static_cast<std::size_t>(n * vocab));
  std::vector<float> logits;
  if (!incremental) {
    engine::ForwardItem item{tokens, 0, &blocks, true};
    SIROCCO_RETURN_IF_ERROR(model->Forward({&item, 1}, *pool, form, &logits));
    all = std::move(logits);
  } else {
    for (std::int64_t i = 0; i < n; ++i) {
      engine::ForwardItem item{std::span<const std::int32_t>(tokens).subspan(static_cast<std::size_t>(i), 1), i,
                               &blocks, true};
      // The first token is the prefill; every later one is a decode step.
      SIROCCO_RETURN_IF_ERROR(model->Forward({&item, 1}, *pool, i == 0 ? form : AttentionForm::kAbsorbed, &logits));
      std::copy(logits.begin(), logits.end(), all.begin() + i * vocab);
    }
  }
  const std::vector<std::int64_t> shape = {n, vocab};
  return engine::WriteNpy(out, shape, all.data());
}

absl::Status RunGenerate(int argc, char** argv) {
  SIROCCO_ASSIGN_OR_RETURN(Flags f, Flags::Parse(argc, argv, 2, {"ignore-eos"}));
  SIROCCO_ASSIGN_OR_RETURN(std::string model_dir, Required(f, "model"));
  SIROCCO_ASSIGN_OR_RETURN(std::string tokens_text, Required(f, "tokens"));
  engine::GenerateRequest request;
  SIROCCO_ASSIGN_OR_RETURN(request.prompt, ParseIds("tokens", tokens_text));
  SIROCCO_ASSIGN_OR_RETURN(std::string max_tokens, Required(f, "max-tokens"));
  if (!absl::SimpleAtoi(max_tokens, &request.stop.max_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat("--max-tokens: '", max_tokens, "' is not a valid number"));
  }
  engine::SamplingParams& s = request.sampling;
  s.temperature = 0.0f;  // greedy unless asked
  SIROCCO_RETURN_IF_ERROR(Number(f, "temperature", &s.temperature));
  SIROCCO_RETURN_IF_ERROR(Number(f, "top-p", &s.top_p));
  SIROCCO_RETURN_IF_ERROR(Number(f, "top-k", &s.top_k));
  SIROCCO_RETURN_IF_ERROR(Number(f, "min-p", &s.min_p));
  SIROCCO_RETURN_IF_ERROR(Number(f, "repetition-penalty", &s.repetition_penalty));
  SIROCCO_RETURN_IF_ERROR(Number(f, "presence-penalty", &s.presence_penalty));
  SIROCCO_RETURN_IF_ERROR(Number(f, "frequency-penalty", &s.frequency_penalty));
  SIROCCO_RETURN_IF_ERROR(Number(f, "logprobs", &s.logprobs));
  if (auto seed = f.Get("seed")) {
    std::uint64_t v = 0;
    if (!absl::SimpleAtoi(*seed, &v)) return absl::InvalidArgumentError(absl::StrCat("--seed: '", *seed, "' is not a valid number"));
    s.seed = v;
  }
  if (auto stop = f.Get("stop-token-ids")) {
    SIROCCO_ASSIGN_OR_RETURN(request.stop.stop_token_ids, ParseIds("stop-token-ids", *stop));
  }
  request.stop.ignore_eos = f.Get("ignore-eos").has_value();
  SIROCCO_ASSIGN_OR_RETURN(engine::ModelOptions model_options, ParseBackend(f));
  engine::GeneratorOptions options;
  SIROCCO_ASSIGN_OR_RETURN(options.prefill_form, ParseForm(f));
  SIROCCO_RETURN_IF_ERROR(f.CheckAllUsed());
  if (request.stop.max_tokens < 1) return absl::InvalidArgumentError("--max-tokens must be at least 1");

  SIROCCO_ASSIGN_OR_RETURN(auto model, engine::Mistral4Model::Load(model_dir, model_options));
  const std::int64_t total = static_cast<std::int64_t>(request.prompt.size()) + request.stop.max_tokens;
  SIROCCO_ASSIGN_OR_RETURN(auto pool, engine::KvPool::Create(model->PoolOptions(total / kBlockSize + 1, kBlockSize),
                                                             model->device()));
  SIROCCO_ASSIGN_OR_RETURN(auto outputs, engine::Generate(*model, *pool, {&request, 1}, options));
  const engine::GenerateOutput& o = outputs[0];
  nlohmann::json j;
  j["token_ids"] = o.tokens;
  j["finish_reason"] = o.finish == engine::FinishReason::kStop ? "stop" : "length";
  if (s.logprobs >= 0) {
    nlohmann::json lp = nlohmann::json::array();
    for (const engine::SampleResult& r : o.samples) {
      nlohmann::json top = nlohmann::json::array();
      for (const engine::TokenLogprob& t : r.top) top.push_back({{"token_id", t.token}, {"logprob", t.logprob}});
      lp.push_back({{"token_id", r.token}, {"logprob", r.logprob}, {"top", top}});
    }
    j["logprobs"] = lp;
  }
  std::cout << j.dump() << std::endl;
  return absl::OkStatus();
}

absl::StatusOr<ImageFile> ReadImageFile(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("--", flag, ": cannot read ", path));
  ImageFile f;
  f.data.resize(static_cast<std::size_t>(in.tellg()));
  in.seekg(0);
  if (!in.read(f.data.data(), static_cast<std::streamsize>(f.data.size()))) {
    return absl::DataLossError(absl::StrCat("--", flag, ": cannot read ", path));
  }
  const std::string_view d = f.data;
  auto starts = [&](std::string_view magic, std::size_t at = 0) {
    return d.size() >= at + magic.size() && d.substr(at, magic.size()) == magic;
  };
  if (starts("\x89PNG\r\n\x1a\n")) {
    f.mime_type = "image/png";
  } else if (starts("\xff\xd8\xff")) {
    f.mime_type = "image/jpeg";
  } else if (starts("GIF87a") || starts("GIF89a")) {
    f.mime_type = "image/gif";
  } else if (starts("RIFF") && starts("WEBP", 8)) {
    f.mime_type = "image/webp";
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", path, " is not a PNG, JPEG, WebP or GIF file"));
  }
  return f;
}

}  // namespace sirocco::tools
