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

}  // namespace ref

}  // namespace sirocco::kernels
