// Backend selection: maps the Backend enum to its kernel table, after checking
// that the table's instructions exist on this CPU.
#include "kernels/kernels.h"

#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

#include "kernels/cpu/ref/ref_kernels.h"
#ifdef SIROCCO_KERNELS_HAVE_AVX2
#include "kernels/cpu/avx2/avx2_kernels.h"
#endif

namespace sirocco::kernels {
namespace {

bool CpuHasAvx2AndFma() {
#ifdef SIROCCO_KERNELS_HAVE_AVX2
  // The CPU-feature cache is filled by a libgcc constructor; initialise it
  // explicitly because we may be called from other static initialisers (the
  // benchmark registers one benchmark per available backend at static-init
  // time).
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

[[noreturn]] void Die(const char* what, Backend backend) {
  std::fprintf(stderr, "sirocco::kernels: %s: %s (%d)\n", what, BackendName(backend), static_cast<int>(backend));
  std::abort();
}

}  // namespace

bool Available(Backend backend) {
  switch (backend) {
    case Backend::kRef:
      return true;
    case Backend::kAvx2: {
      static const bool available = CpuHasAvx2AndFma();
      return available;
    }
  }
  return false;
}

const KernelTable& Get(Backend backend) {
  if (!Available(backend)) Die("backend not available on this CPU or build", backend);
  switch (backend) {
    case Backend::kRef:
      return RefKernels();
    case Backend::kAvx2:
#ifdef SIROCCO_KERNELS_HAVE_AVX2
      return Avx2Kernels();
#else
      break;
#endif
  }
  Die("unknown backend", backend);
}

std::span<const Backend> AvailableBackends() {
  static const std::vector<Backend> backends = [] {
    std::vector<Backend> list;
    for (Backend backend : {Backend::kRef, Backend::kAvx2}) {
      if (Available(backend)) list.push_back(backend);
    }
    return list;
  }();
  return backends;
}

const char* BackendName(Backend backend) {
  switch (backend) {
    case Backend::kRef:
      return "ref";
    case Backend::kAvx2:
      return "avx2";
  }
  return "unknown";
}

}  // namespace sirocco::kernels
