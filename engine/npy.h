// NumPy .npy files: how reference activations dumped from Python (np.save)
// reach the C++ tests, and how C++ results go back for inspection.
//
// Only what those exchanges need: little-endian float32/float64/int32/int64
// in C order, format versions 1.0 and 2.0. Anything else is rejected with an
// error naming the file and the header field, never guessed at. Pure
// functions of their arguments; callable from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/dtype.h"

namespace sirocco::engine {

// Writes a C-order '<f4' array of `shape` (numel(shape) floats at `data`)
// byte for byte as numpy.save would: format 1.0 (2.0 only if the header
// outgrows 64 KiB), the header dict padded with spaces and a final '\n' so
// the data starts 64-byte aligned, including numpy's spare room for the
// first dimension to grow. Written under a temporary name and renamed, so a
// crash leaves no partial file.
[[nodiscard]] absl::Status WriteNpy(const std::string& path, std::span<const int64_t> shape, const float* data);

struct NpyArray {
  DType dtype = DType::kF32;  // kF32, kF64, kI32 or kI64
  std::vector<int64_t> shape;
  std::vector<std::byte> data;  // numel() * DTypeSize(dtype) bytes, C order

  int64_t numel() const;
};

// Reads '<f4', '<f8', '<i4' or '<i8' arrays in C order, versions 1.0 and
// 2.0. Fortran order, big-endian data, other dtypes, other versions, a
// malformed header and a data size that disagrees with the shape are errors.
[[nodiscard]] absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

}  // namespace sirocco::engine
