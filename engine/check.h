// SIROCCO_CHECK: internal invariants only (a failure is a bug in Sirocco, never
// bad input). Prints where and why, then aborts.
#pragma once

#include <cstdio>
#include <cstdlib>

#define SIROCCO_CHECK(cond, msg)                                                          \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s: %s\n", __FILE__, __LINE__, #cond, msg); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)
