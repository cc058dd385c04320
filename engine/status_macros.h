// Early-return helpers for absl::Status / absl::StatusOr, used at every
// fallible boundary of the engine and the layers above it.
#pragma once

#include "absl/status/status.h"

#define SIROCCO_STATUS_CONCAT_INNER(a, b) a##b
#define SIROCCO_STATUS_CONCAT(a, b) SIROCCO_STATUS_CONCAT_INNER(a, b)

// Returns the status of `expr` from the enclosing function if it is not OK.
#define SIROCCO_RETURN_IF_ERROR(expr)                                     \
  do {                                                                    \
    if (::absl::Status sirocco_status_ = (expr); !sirocco_status_.ok()) { \
      return sirocco_status_;                                             \
    }                                                                     \
  } while (0)

// `SIROCCO_ASSIGN_OR_RETURN(auto x, MakeX());` declares x from a StatusOr or
// returns its error.
#define SIROCCO_ASSIGN_OR_RETURN(lhs, expr) \
  SIROCCO_ASSIGN_OR_RETURN_IMPL(SIROCCO_STATUS_CONCAT(sirocco_statusor_, __LINE__), lhs, expr)
#define SIROCCO_ASSIGN_OR_RETURN_IMPL(var, lhs, expr) \
  auto var = (expr);                                  \
  if (!var.ok()) return var.status();                 \
  lhs = std::move(*var)
