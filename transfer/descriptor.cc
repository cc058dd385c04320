#include "transfer/descriptor.h"

#include "absl/strings/str_cat.h"
#include "transfer/wire.h"

namespace sirocco::transfer {
namespace {

constexpr std::uint32_t kMagic = 0x44564b53;  // "SKVD" little-endian
constexpr std::uint32_t kFormat = 1;

}  // namespace

const char* BackendName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kInProcess:
      return "in-process";
    case BackendKind::kUcx:
      return "ucx";
  }
  return "unknown";
}

std::string TargetDescriptor::Serialize() const {
  std::string out;
  wire::Writer w(&out);
  w.U32(kMagic);
  w.U32(kFormat);
  w.U8(static_cast<std::uint8_t>(backend));
  w.U64(agent_id);
  w.U64(pool_id);
  w.Bytes(address);
  w.Bytes(rkey);
  w.U64(base_address);
  w.U64(pool_bytes);
  w.Layout(layout);
  return out;
}

absl::StatusOr<TargetDescriptor> TargetDescriptor::Parse(std::string_view bytes) {
  wire::Reader r(bytes, "TargetDescriptor");
  const std::uint32_t magic = r.U32();
  const std::uint32_t format = r.U32();
  if (r.status(false).ok() && magic != kMagic) {
    return absl::InvalidArgumentError("TargetDescriptor: bad magic (not a KV target descriptor)");
  }
  if (r.status(false).ok() && format != kFormat) {
    return absl::InvalidArgumentError(absl::StrCat("TargetDescriptor: format ", format,
                                                   " is not supported (this build reads ",
                                                   kFormat, ")"));
  }
  TargetDescriptor d;
  const std::uint8_t backend = r.U8();
  d.agent_id = r.U64();
  d.pool_id = r.U64();
  d.address = r.Bytes();
  d.rkey = r.Bytes();
  d.base_address = r.U64();
  d.pool_bytes = r.U64();
  d.layout = r.Layout();
  if (absl::Status s = r.status(); !s.ok()) return s;
  if (backend != static_cast<std::uint8_t>(BackendKind::kInProcess) &&
      backend != static_cast<std::uint8_t>(BackendKind::kUcx)) {
    return absl::InvalidArgumentError(
        absl::StrCat("TargetDescriptor: unknown backend ", static_cast<int>(backend)));
  }
  d.backend = static_cast<BackendKind>(backend);
  if (absl::Status s = d.layout.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("TargetDescriptor: ", s.message()));
  }
  if (d.pool_bytes < d.layout.pool_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("TargetDescriptor: pool_bytes ", d.pool_bytes,
                                                   " is smaller than the layout needs (",
                                                   d.layout.pool_bytes(), ")"));
  }
  return d;
}

}  // namespace sirocco::transfer
