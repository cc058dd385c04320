#include "transfer/kv_layout.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sirocco::transfer {

absl::Status KvLayout::Validate() const {
  if (version != kKvLayoutVersion) {
    return absl::InvalidArgumentError(absl::StrCat("KvLayout.version ", version,
                                                   " is not supported (this build speaks ",
                                                   kKvLayoutVersion, ")"));
  }
  if (dtype_bytes == 0) return absl::InvalidArgumentError("KvLayout.dtype_bytes must be > 0");
  if (num_layers == 0) return absl::InvalidArgumentError("KvLayout.num_layers must be > 0");
  if (num_blocks == 0) return absl::InvalidArgumentError("KvLayout.num_blocks must be > 0");
  if (block_size == 0) return absl::InvalidArgumentError("KvLayout.block_size must be > 0");
  if (entry_bytes == 0) return absl::InvalidArgumentError("KvLayout.entry_bytes must be > 0");
  if (entry_bytes % dtype_bytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("KvLayout.entry_bytes ", entry_bytes,
                                                   " is not a multiple of dtype_bytes ",
                                                   dtype_bytes));
  }
  return absl::OkStatus();
}

std::string KvLayout::DebugString() const {
  return absl::StrFormat(
      "KvLayout{version=%u fingerprint=%016x dtype_bytes=%u layers=%u blocks=%u block_size=%u "
      "entry_bytes=%u}",
      version, model_fingerprint, dtype_bytes, num_layers, num_blocks, block_size, entry_bytes);
}

namespace {

absl::Status Mismatch(absl::string_view field, absl::string_view here, absl::string_view there) {
  return absl::FailedPreconditionError(
      absl::StrCat("KV layout mismatch: ", field, " ", here, " here, ", there, " at the peer"));
}

}  // namespace

absl::Status CheckCompatible(const KvLayout& local, const KvLayout& remote) {
  if (local.version != remote.version) {
    return Mismatch("layout version", absl::StrCat(local.version), absl::StrCat(remote.version));
  }
  if (local.model_fingerprint != remote.model_fingerprint) {
    return Mismatch("model_fingerprint", absl::StrFormat("%016x", local.model_fingerprint),
                    absl::StrFormat("%016x", remote.model_fingerprint));
  }
  if (local.dtype_bytes != remote.dtype_bytes) {
    return Mismatch("dtype_bytes", absl::StrCat(local.dtype_bytes),
                    absl::StrCat(remote.dtype_bytes));
  }
  if (local.num_layers != remote.num_layers) {
    return Mismatch("num_layers", absl::StrCat(local.num_layers), absl::StrCat(remote.num_layers));
  }
  if (local.block_size != remote.block_size) {
    return Mismatch("block_size", absl::StrCat(local.block_size), absl::StrCat(remote.block_size));
  }
  if (local.entry_bytes != remote.entry_bytes) {
    return Mismatch("entry_bytes", absl::StrCat(local.entry_bytes),
                    absl::StrCat(remote.entry_bytes));
  }
  return absl::OkStatus();
}

std::uint64_t Fingerprint64(std::string_view bytes) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : bytes) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

}  // namespace sirocco::transfer
