#include "services/call_gate.h"

#include <cstddef>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"

#include "services/server.h"
#include "services/status_mapping.h"

namespace sirocco::services {
namespace {

// Compares without an early exit, so the time taken does not tell how many
// leading bytes of a guess were right. (The length is not secret.)
bool ConstantTimeEqual(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

}  // namespace

void AttachWorkerToken(grpc::ClientContext& context, std::string_view token) {
  if (token.empty()) return;
  context.AddMetadata(kWorkerTokenMetadataKey, std::string(token));
}

CallGate::CallGate(const ServerOptions& options) : worker_token_(options.worker_auth_token) {}

absl::Status CallGate::AdmitPublic() const {
  if (draining()) return DrainingError();
  return absl::OkStatus();
}

absl::Status CallGate::AdmitWorker(const grpc::ServerContextBase& context) const {
  if (!worker_token_.empty()) {
    const auto& metadata = context.client_metadata();
    auto [begin, end] = metadata.equal_range(kWorkerTokenMetadataKey);
    // Exactly one value: a second copy of the header is a malformed call,
    // not a second chance.
    if (begin == end || std::next(begin) != end ||
        !ConstantTimeEqual(std::string_view(begin->second.data(), begin->second.size()), worker_token_)) {
      return absl::UnauthenticatedError(
          absl::StrCat("missing or wrong ", kWorkerTokenMetadataKey, " metadata"));
    }
  }
  return AdmitPublic();
}

void CallGate::StartDrain() {
  std::vector<std::function<void()>> to_run;
  {
    absl::MutexLock lock(&mu_);
    if (draining_.exchange(true, std::memory_order_acq_rel)) return;
    to_run = listeners_;
  }
  for (auto& listener : to_run) listener();
}

void CallGate::OnDrain(std::function<void()> listener) {
  {
    absl::MutexLock lock(&mu_);
    if (!draining_.load(std::memory_order_acquire)) {
      listeners_.push_back(std::move(listener));
      return;
    }
  }
  listener();
}

}  // namespace sirocco::services
