// The AVX2 + FMA backend (Backend::kAvx2). Calling any function of this table
// on a CPU without AVX2/FMA faults; go through kernels::Get(Backend::kAvx2),
// which checks the CPU first.
#pragma once

#include "kernels/kernels.h"

namespace sirocco::kernels {

const KernelTable& Avx2Kernels();

}  // namespace sirocco::kernels
