// The scalar reference backend (Backend::kRef): the executable spec of every op
// in kernels.h. Use kernels::Get(Backend::kRef) outside the kernels library.
#pragma once

#include "kernels/kernels.h"

namespace sirocco::kernels {

const KernelTable& RefKernels();

namespace ref {

// The reference router, exposed so that other backends can point their table
// at it: it is a few hundred flops per token, not worth specialising.
void RouteTopk(const RouterParams& p);
// The reference GELU, exposed for the same reason: it is cheap next to the
// products around it (a projector's activation), and a vectorised erf would
// only add an approximation to test.
void GeluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out, int ldo);

}  // namespace ref

}  // namespace sirocco::kernels
