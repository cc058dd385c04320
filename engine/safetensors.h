// Reading and writing safetensors checkpoints.
//
// File format: an 8-byte little-endian header length N, N bytes of JSON
// ({"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]},
// ..., "__metadata__": {"k": "v"}}), then the data buffer the offsets index.
//
// SafetensorsFile maps one file read-only and validates the whole header up
// front, so every TensorInfo it hands out points at `nbytes` readable bytes
// of the right dtype and shape. Checkpoint gathers the files of a model
// directory (sharded Hugging Face layout, a single model file, or Mistral's
// consolidated file) behind one name lookup. SafetensorsWriter produces
// files the readers (and the Python safetensors package) accept; it exists
// for tools and tests, not for the serving path.
//
// Thread safety: SafetensorsFile and Checkpoint are immutable after Open;
// their const methods may be called from any thread concurrently. Tensor
// data pointers stay valid for the lifetime of the object that returned
// them. SafetensorsWriter is a plain value type: one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/dtype.h"

namespace sirocco::engine {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  // Into the read-only mapping; no alignment guarantee (the format has none).
  const std::byte* data = nullptr;
  std::size_t nbytes = 0;  // == numel() * DTypeSize(dtype), checked at Open

  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps `path` and validates it: the header length fits in the file, the
  // header is a JSON object without duplicate keys, every dtype is known,
  // shapes are non-negative, offsets lie inside the data buffer with
  // begin <= end, each tensor's byte size equals numel * dtype size, and no
  // two tensors overlap. Any violation is an error naming the file and the
  // tensor or field at fault.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  // nullptr when the file has no tensor of that name.
  const TensorInfo* Find(std::string_view name) const;
  // In data-offset order, which is the order a writer emitted them.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The "__metadata__" string map; empty when the header has none.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile(std::string path, void* mapping, std::size_t mapped_size);

  std::string path_;
  void* mapping_;
  std::size_t mapped_size_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> tensors_
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model directory. Which files make up the checkpoint:
//   1. model.safetensors.index.json: its "weight_map" (tensor -> shard file
//      in the same directory) is authoritative; each shard is opened once
//      and only the tensors the index names are visible. A shard missing,
//      or missing a tensor the index assigns to it, is an error.
//   2. else model.safetensors alone;
//   3. else consolidated.safetensors alone (Mistral's native layout; a
//      directory often carries both layouts, hence one file, not a merge);
//   4. else every *.safetensors in the directory, in name order, merged; a
//      tensor name present in two files is an error.
class Checkpoint {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;
  bool Has(std::string_view name) const { return Find(name) != nullptr; }
  // The file holding `name` (for error messages); nullptr when absent.
  const SafetensorsFile* FileOf(std::string_view name) const;
  // Every visible tensor name, sorted.
  std::vector<std::string> Names() const;
  const std::string& dir() const { return dir_; }
  // The opened files, in the order they were opened.
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  struct Entry {
    const TensorInfo* tensor;
    const SafetensorsFile* file;
  };

  explicit Checkpoint(std::string dir) : dir_(std::move(dir)) {}

  absl::Status OpenIndexed(const std::string& index_path);
  absl::Status AddWholeFile(const std::string& path);

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry, std::less<>> entries_;
};

// Accumulates tensors, then writes them as one file or as a sharded
// directory. Files are written under a temporary name, flushed to disk and
// renamed into place, so a crash never leaves a partial file under the
// final name.
class SafetensorsWriter {
 public:
  using Metadata = std::map<std::string, std::string>;

  // Copies a tensor in. `bytes` must hold exactly numel(shape) *
  // DTypeSize(dtype) bytes, little-endian. Errors (empty, reserved or
  // duplicate name; negative dimension; size mismatch) are recorded, the
  // tensor is dropped, and the first such error is returned by the next
  // WriteFile/WriteSharded, so call sites stay linear.
  void Add(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<std::byte> bytes);
  void Add(std::string name, DType dtype, std::vector<int64_t> shape, std::span<const std::byte> bytes);

  // One file: header padded with spaces to a multiple of 8 bytes (so the
  // data starts 8-aligned), tensors in the order added, data contiguous.
  // `metadata` becomes "__metadata__" when non-empty.
  [[nodiscard]] absl::Status WriteFile(const std::string& path, const Metadata& metadata = {}) const;

  // Into `dir` (created if missing), in the Hugging Face layout: tensors are
  // packed in the order added into shards of at most `max_shard_bytes` of
  // data (a larger tensor gets a shard of its own). One shard is written as
  // model.safetensors, and a stale model.safetensors.index.json is removed
  // (it would otherwise take precedence in Checkpoint::Open). Several are
  // written as model-00001-of-0000N.safetensors ... and then, last, the
  // index {"metadata": {"total_size": bytes}, "weight_map": {...}}. Every
  // shard carries `metadata`.
  [[nodiscard]] absl::Status WriteSharded(const std::string& dir, std::size_t max_shard_bytes,
                                          const Metadata& metadata = {}) const;

  std::size_t num_tensors() const { return tensors_.size(); }
  // Sum of the tensors' data sizes.
  std::size_t total_bytes() const;

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<std::byte> bytes;
  };

  absl::Status WriteGroup(const std::string& path, std::span<const Pending* const> group,
                          const Metadata& metadata) const;

  std::vector<Pending> tensors_;
  std::map<std::string, std::size_t, std::less<>> names_;
  absl::Status first_error_;
};

}  // namespace sirocco::engine
