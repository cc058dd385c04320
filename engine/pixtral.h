// The Pixtral vision encoder and the multimodal projector of Mistral Small 4's
// multimodal checkpoint (transformers' Mistral3ForConditionalGeneration:
// PixtralVisionModel + Mistral3MultiModalProjector), written once against
// the Device interface, so it runs wherever the text decoder runs.
//
// One image in (CHW float32 pixels, already resized and normalised, height and
// width multiples of patch_size * spatial_merge_size), one row of
// text_hidden_size floats out per [IMG] token, row-major over the merged
// patch grid: the rows that replace the embeddings of the image's [IMG] tokens
// (ForwardItem::embed_rows).
//
//   patch_conv (patch_size x patch_size, stride patch_size) -> ln_pre RMSNorm
//   -> vision_feature_layer layers of [RMSNorm -> attention (2D axial rope, every
//      patch sees every patch of the image) -> residual; RMSNorm -> act(gate) *
//      up -> down -> residual]
//   -> projector: RMSNorm (text rms_norm_eps) -> patch merger (each
//      spatial_merge_size^2 block of patches -> merging_layer) -> linear_1 ->
//      act -> linear_2
//
// Thread-safety: VisionConfig is a plain value. A PixtralEncoder's weights are
// immutable after Load, but Encode reuses the encoder's scratch memory and the
// device's stream: one thread at a time (the engine thread).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/device.h"
#include "engine/mistral4_weights.h"

namespace sirocco::engine {

class Checkpoint;

enum class VisionActivation : std::uint8_t { kSilu, kGelu };  // gelu: exact (erf)

// The `vision_config` of a `mistral3` config.json and the wrapper's fields
// that concern images. Defaults are transformers' (PixtralVisionConfig,
// Mistral3Config) for fields a file leaves out.
struct VisionConfig {
  // vision_config
  std::int64_t hidden_size = 1024;
  std::int64_t intermediate_size = 4096;
  std::int64_t num_hidden_layers = 24;
  std::int64_t num_attention_heads = 16;
  std::int64_t num_channels = 3;
  std::int64_t patch_size = 16;
  std::int64_t image_size = 1024;  // longest side the processor resizes to; not enforced here
  VisionActivation hidden_act = VisionActivation::kGelu;
  double rope_theta = 10000.0;
  // The wrapper (top level).
  std::int64_t image_token_index = 10;
  std::int64_t spatial_merge_size = 2;
  // hidden_states[vision_feature_layer] feeds the projector: index 0 is
  // ln_pre's output, k >= 1 the output of layer k-1, negative counts from
  // the end (-1: the last layer).
  std::int64_t vision_feature_layer = -1;
  VisionActivation projector_hidden_act = VisionActivation::kGelu;

  std::int64_t head_dim() const { return hidden_size / num_attention_heads; }
  // Encoder layers that run: vision_feature_layer as a non-negative index.
  std::int64_t layers_used() const {
    return vision_feature_layer >= 0 ? vision_feature_layer : num_hidden_layers + 1 + vision_feature_layer;
  }
  // Pixels per side of one output token.
  std::int64_t token_pixels() const { return patch_size * spatial_merge_size; }
};

// The image part of config.json text. std::nullopt when the file has no
// `vision_config` (a text-only model). Invalid or unsupported values are
// InvalidArgument naming the field, e.g. "config.json:
// vision_config.hidden_act ('gelu_new') is not supported (silu, gelu)".
absl::StatusOr<std::optional<VisionConfig>> ParseVisionConfig(std::string_view json_text);
absl::StatusOr<std::optional<VisionConfig>> LoadVisionConfig(const std::string& path);
absl::Status ValidateVisionConfig(const VisionConfig& config);
// The multimodal wrapper's config.json, as transformers' Mistral3Config
// writes it: `text_config` is ModelConfigToJson(text) (without
// `architectures`), `vision_config` the pixtral config.
std::string MultimodalConfigToJson(const ModelConfig& text, const VisionConfig& vision);
// Every vision tower and projector tensor, named as save_pretrained names
// them (prefixes `model.vision_tower.`, `model.multi_modal_projector.`).
std::vector<TensorSpec> PixtralTensorSpecs(const VisionConfig& vision, const ModelConfig& text);

class PixtralEncoder {
 public:
  // Reads the vision tower and projector weights (prefixes
  // `model.vision_tower.` / `model.multi_modal_projector.`, or the older
  // `vision_tower.` / `multi_modal_projector.`; F32, BF16 or F16) and puts
  // them on `device` in float32. `device` must outlive the encoder.
  static absl::StatusOr<std::unique_ptr<PixtralEncoder>> Load(const Checkpoint& checkpoint, const ModelConfig& text,
                                                              const VisionConfig& vision, Device* device);
  ~PixtralEncoder();
  PixtralEncoder(const PixtralEncoder&) = delete;
  PixtralEncoder& operator=(const PixtralEncoder&) = delete;

  // One image, pixels_chw = [num_channels, height, width]. Returns
  // [tokens_for(height, width), output_dim()] in host memory. height and
  // width must be positive multiples of token_pixels().
  absl::StatusOr<std::vector<float>> Encode(std::span<const float> pixels_chw, int height, int width);

  // Encode in parts, so that a caller can spread one image's encoder over
  // several engine steps: Start (patch embedding; checks as Encode), Step
  // until it says every layer has run, Finish (the projector). The same
  // operations in the same order as Encode: the same result. A Job holds
  // its image's activations on the device; jobs may be interleaved, one
  // call at a time (the encoder's temporaries are shared), on one thread at
  // a time (the encoder's). A Job must not outlive its encoder.
  class Job {
   public:
    ~Job();
    Job(const Job&) = delete;
    Job& operator=(const Job&) = delete;
    std::int64_t layers_done() const { return layers_done_; }

   private:
    friend class PixtralEncoder;
    explicit Job(PixtralEncoder* owner) : owner_(owner) {}
    PixtralEncoder* owner_;  // takes the buffers back for the next image
    std::int64_t height_ = 0, width_ = 0, patches_ = 0, grid_w_ = 0;
    std::int64_t layers_done_ = 0;
    std::unique_ptr<DeviceMemory> x_;     // [patches, hidden]: the residual stream
    std::unique_ptr<DeviceMemory> ints_;  // rope rows, rope columns, merger order
  };
  absl::StatusOr<std::unique_ptr<Job>> Start(std::span<const float> pixels_chw, int height, int width);
  // Runs up to `max_layers` more layers (every one left when <= 0); true
  // once all have run.
  absl::StatusOr<bool> Step(Job& job, int max_layers);
  // The projector on a job whose layers have all run (FailedPrecondition
  // otherwise): Encode's result.
  absl::StatusOr<std::vector<float>> Finish(Job& job);
  // Encoder layers an image runs through (vision_feature_layer's).
  std::int64_t layers() const { return config_.layers_used(); }
  // [IMG] tokens of a height x width image (whole token_pixels() cells).
  std::int64_t tokens_for(std::int64_t height, std::int64_t width) const;
  std::int64_t output_dim() const { return text_hidden_; }
  const VisionConfig& config() const { return config_; }

 private:
  struct Weights;  // device addresses of the weights
  struct Scratch;  // device buffers reused across Encode calls

  PixtralEncoder(const VisionConfig& vision, const ModelConfig& text, Device* device);
  absl::Status LoadWeights(const Checkpoint& checkpoint, const ModelConfig& text);
  // Keeps `host` resident on the device and returns its device address.
  absl::StatusOr<const float*> Put(std::vector<float> host);
  // A device buffer of at least `bytes` for a Job: a finished job's, else a
  // new one (allocating and freeing device memory per image would
  // synchronise a GPU each time).
  absl::StatusOr<std::unique_ptr<DeviceMemory>> JobBuffer(std::size_t bytes);
  void ReturnJobBuffer(std::unique_ptr<DeviceMemory> buffer);
  absl::Status Layer(std::int64_t layer, std::int64_t patches, float* x, const std::int32_t* pos_h,
                     const std::int32_t* pos_w);

  VisionConfig config_;
  std::int64_t text_hidden_;
  float projector_eps_;
  Device* device_;
  std::unique_ptr<Weights> w_;
  std::unique_ptr<Scratch> scratch_;
  std::vector<std::unique_ptr<DeviceMemory>> spare_;  // finished jobs' buffers
};

// The encoder of the checkpoint folder `dir` (config.json + safetensors).
// NotFound ("... has no vision encoder") when its config.json has no
// vision_config.
absl::StatusOr<std::unique_ptr<PixtralEncoder>> LoadPixtralEncoder(const std::string& dir, Device* device);

}  // namespace sirocco::engine
