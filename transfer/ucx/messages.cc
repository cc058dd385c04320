#include "transfer/ucx/messages.h"

#include "absl/strings/str_cat.h"
#include "transfer/wire.h"

namespace sirocco::transfer::ucx {

std::string Encode(const HelloMsg& m) {
  std::string out;
  wire::Writer w(&out);
  w.U32(kProtocolMagic);
  w.U32(kProtocolVersion);
  w.U64(m.sender_agent);
  w.U64(m.peer_id);
  w.U64(m.target_pool);
  w.Layout(m.layout);
  return out;
}

std::string Encode(const ReplyMsg& m) {
  std::string out;
  wire::Writer w(&out);
  w.U64(m.peer_id);
  w.U64(m.transfer);
  w.I32(m.code);
  w.Bytes(m.message);
  return out;
}

std::string Encode(const DataMsg& m) {
  std::string out;
  wire::Writer w(&out);
  w.U64(m.peer_id);
  w.U64(m.transfer);
  w.U64(m.pool);
  w.U32(m.op_count);
  w.U32(m.regions);
  w.U64(m.tag);
  w.U64(m.bytes);
  w.U32(static_cast<std::uint32_t>(m.segments.size()));
  for (const Segment& seg : m.segments) {
    w.U64(seg.offset);
    w.U64(seg.length);
  }
  return out;
}

std::string Encode(const CancelMsg& m) {
  std::string out;
  wire::Writer w(&out);
  w.U64(m.peer_id);
  w.U64(m.transfer);
  return out;
}

absl::StatusOr<HelloMsg> DecodeHello(std::string_view bytes) {
  wire::Reader r(bytes, "transfer hello");
  const std::uint32_t magic = r.U32();
  const std::uint32_t version = r.U32();
  HelloMsg m;
  m.sender_agent = r.U64();
  m.peer_id = r.U64();
  m.target_pool = r.U64();
  m.layout = r.Layout();
  if (absl::Status s = r.status(); !s.ok()) return s;
  if (magic != kProtocolMagic) return absl::InvalidArgumentError("transfer hello: bad magic");
  if (version != kProtocolVersion) {
    return absl::FailedPreconditionError(absl::StrCat("transfer protocol version ", version,
                                                      " at the peer, ", kProtocolVersion,
                                                      " here"));
  }
  return m;
}

absl::StatusOr<ReplyMsg> DecodeReply(std::string_view bytes) {
  wire::Reader r(bytes, "transfer reply");
  ReplyMsg m;
  m.peer_id = r.U64();
  m.transfer = r.U64();
  m.code = r.I32();
  m.message = r.Bytes();
  if (absl::Status s = r.status(); !s.ok()) return s;
  return m;
}

absl::StatusOr<DataMsg> DecodeData(std::string_view bytes) {
  wire::Reader r(bytes, "transfer data header");
  DataMsg m;
  m.peer_id = r.U64();
  m.transfer = r.U64();
  m.pool = r.U64();
  m.op_count = r.U32();
  m.regions = r.U32();
  m.tag = r.U64();
  m.bytes = r.U64();
  const std::uint32_t n = r.U32();
  if (n > bytes.size() / 16) return absl::InvalidArgumentError("transfer data header: bad segment count");
  m.segments.resize(n);
  for (Segment& seg : m.segments) {
    seg.offset = r.U64();
    seg.length = r.U64();
  }
  if (absl::Status s = r.status(); !s.ok()) return s;
  return m;
}

absl::StatusOr<CancelMsg> DecodeCancel(std::string_view bytes) {
  wire::Reader r(bytes, "transfer cancel");
  CancelMsg m;
  m.peer_id = r.U64();
  m.transfer = r.U64();
  if (absl::Status s = r.status(); !s.ok()) return s;
  return m;
}

}  // namespace sirocco::transfer::ucx
