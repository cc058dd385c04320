// Crash-safe file writing: bytes go to a temporary sibling, are flushed, and
// the file is renamed into place, so readers see the old file or the complete
// new one, never a prefix. Used by every writer of checkpoints and arrays.
//
// Thread-safety: one AtomicFile per thread; distinct files may be written
// concurrently (temporary names are unique per process and call).
#pragma once

#include <cstddef>
#include <initializer_list>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sirocco::engine {

class AtomicFile {
 public:
  [[nodiscard]] static absl::StatusOr<AtomicFile> Create(const std::string& path);
  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&&) = delete;
  // Without Commit, the temporary file is removed and `path` is untouched.
  ~AtomicFile();

  [[nodiscard]] absl::Status Write(const void* data, std::size_t size);
  // fsync, close, rename over the final path.
  [[nodiscard]] absl::Status Commit();

 private:
  AtomicFile(std::string path, std::string tmp, int fd);
  std::string path_;
  std::string tmp_;
  int fd_;
};

// Writes the concatenation of `parts` to `path` atomically.
[[nodiscard]] absl::Status WriteFileAtomically(const std::string& path,
                                               std::initializer_list<std::string_view> parts);

}  // namespace sirocco::engine
