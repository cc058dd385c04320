// Small random Mistral 4 models for engine tests, written to a temp folder
// by the model maker and loaded back through the normal checkpoint path.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "engine/config.h"
#include "engine/mistral4.h"
#include "engine/model_maker.h"

namespace sirocco::engine::testing {

// The `tiny` preset with a small vocabulary so tests run in milliseconds.
inline ModelConfig SmallVocabTiny(bool q_lora = true) {
  ModelConfig c = *PresetConfig(q_lora ? "tiny" : "tiny-noqlora");
  c.vocab_size = 512;
  return c;
}

inline std::string TempDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("sirocco_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

inline std::unique_ptr<Mistral4Model> MakeTestModel(const ModelConfig& config, const std::string& name,
                                                    kernels::Backend backend = kernels::Backend::kRef,
                                                    DType dtype = DType::kF32) {
  const std::string dir = TempDir(name);
  MakeModelOptions o;
  o.seed = 7;
  o.dtype = dtype;
  if (!MakeModel(config, o, dir).ok()) return nullptr;
  auto model = Mistral4Model::Load(dir, ModelOptions{.backend = backend, .device = nullptr});
  std::filesystem::remove_all(dir);
  return model.ok() ? std::move(*model) : nullptr;
}

}  // namespace sirocco::engine::testing
