#include "engine/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sirocco::engine {

absl::StatusOr<AtomicFile> AtomicFile::Create(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  std::string tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot create ", tmp));
  return AtomicFile(path, std::move(tmp), fd);
}

AtomicFile::AtomicFile(std::string path, std::string tmp, int fd)
    : path_(std::move(path)), tmp_(std::move(tmp)), fd_(fd) {}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : path_(std::move(other.path_)), tmp_(std::move(other.tmp_)), fd_(std::exchange(other.fd_, -1)) {}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

absl::Status AtomicFile::Write(const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat(path_, ": write failed"));
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFile::Commit() {
  if (::fsync(fd_) != 0) return absl::ErrnoToStatus(errno, absl::StrCat(path_, ": fsync failed"));
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) {
    const int error = errno;
    ::unlink(tmp_.c_str());
    return absl::ErrnoToStatus(error, absl::StrCat(path_, ": close failed"));
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int error = errno;
    ::unlink(tmp_.c_str());
    return absl::ErrnoToStatus(error, absl::StrCat(path_, ": rename from ", tmp_, " failed"));
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, std::initializer_list<std::string_view> parts) {
  auto file = AtomicFile::Create(path);
  if (!file.ok()) return file.status();
  for (std::string_view part : parts) {
    if (absl::Status s = file->Write(part.data(), part.size()); !s.ok()) return s;
  }
  return file->Commit();
}

}  // namespace sirocco::engine
