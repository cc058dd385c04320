// Little-endian byte writer/reader for the transfer layer's own wire formats
// (TargetDescriptor bytes, UCX control messages). Internal to transfer/.
//
// Thread-safety: none; each object is used by one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "transfer/kv_layout.h"

namespace sirocco::transfer::wire {

class Writer {
 public:
  explicit Writer(std::string* out) : out_(out) {}
  void U8(std::uint8_t v) { out_->push_back(static_cast<char>(v)); }
  void U32(std::uint32_t v) { Fixed(v, 4); }
  void U64(std::uint64_t v) { Fixed(v, 8); }
  void I32(std::int32_t v) { U32(static_cast<std::uint32_t>(v)); }
  void Bytes(std::string_view s) {
    U32(static_cast<std::uint32_t>(s.size()));
    out_->append(s);
  }
  void Layout(const KvLayout& l) {
    U32(l.version);
    U64(l.model_fingerprint);
    U32(l.dtype_bytes);
    U32(l.num_layers);
    U32(l.num_blocks);
    U32(l.block_size);
    U32(l.entry_bytes);
  }

 private:
  void Fixed(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string* out_;
};

// Reads fields in order; the first short read latches an error naming `what`
// and every later read returns zeros, so callers check status() once.
class Reader {
 public:
  Reader(std::string_view in, const char* what) : in_(in), what_(what) {}
  std::uint8_t U8() { return static_cast<std::uint8_t>(Fixed(1)); }
  std::uint32_t U32() { return static_cast<std::uint32_t>(Fixed(4)); }
  std::uint64_t U64() { return Fixed(8); }
  std::int32_t I32() { return static_cast<std::int32_t>(U32()); }
  std::string Bytes() {
    const std::uint32_t n = U32();
    if (!Need(n)) return {};
    std::string s(in_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  KvLayout Layout() {
    KvLayout l;
    l.version = U32();
    l.model_fingerprint = U64();
    l.dtype_bytes = U32();
    l.num_layers = U32();
    l.num_blocks = U32();
    l.block_size = U32();
    l.entry_bytes = U32();
    return l;
  }
  bool done() const { return pos_ == in_.size(); }
  // OK, or INVALID_ARGUMENT for a truncated input (or trailing bytes when
  // `expect_end`).
  absl::Status status(bool expect_end = true) const {
    if (!error_.ok()) return error_;
    if (expect_end && !done()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what_, ": ", in_.size() - pos_, " unexpected trailing bytes"));
    }
    return absl::OkStatus();
  }

 private:
  bool Need(std::size_t n) {
    if (!error_.ok()) return false;
    if (in_.size() - pos_ < n) {
      error_ = absl::InvalidArgumentError(absl::StrCat(what_, ": truncated at byte ", pos_, " of ",
                                                       in_.size()));
      return false;
    }
    return true;
  }
  std::uint64_t Fixed(int n) {
    if (!Need(static_cast<std::size_t>(n))) return 0;
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) {
      v |= static_cast<std::uint64_t>(static_cast<unsigned char>(in_[pos_ + i])) << (8 * i);
    }
    pos_ += static_cast<std::size_t>(n);
    return v;
  }
  std::string_view in_;
  const char* what_;
  std::size_t pos_ = 0;
  absl::Status error_;
};

}  // namespace sirocco::transfer::wire
