// String concatenation for the instruct-format sources. Debian's Abseil
// (20220623) has its own absl::string_view, which absl::StrCat does not take
// as std::string_view; these helpers take std::string_view, strings and
// numbers directly.
//
// Pure functions: safe to use from any thread.
#pragma once

#include <cmath>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/string_view.h"

namespace sirocco::text {

inline std::string_view ToStd(absl::string_view s) { return std::string_view(s.data(), s.size()); }

inline void CatAppend(std::string* /*out*/) {}

template <typename T, typename... Rest>
void CatAppend(std::string* out, const T& first, const Rest&... rest) {
  if constexpr (std::is_floating_point_v<T>) {
    // Whole numbers print without a fraction, as pydantic quotes its bounds.
    if (std::floor(first) == first) {
      out->append(std::to_string(static_cast<long long>(first)));
    } else {
      out->append(std::to_string(first));
    }
  } else if constexpr (std::is_integral_v<T>) {
    out->append(std::to_string(first));
  } else if constexpr (std::is_same_v<T, absl::string_view>) {
    out->append(first.data(), first.size());
  } else {
    out->append(std::string_view(first));
  }
  CatAppend(out, rest...);
}

template <typename... Args>
std::string Cat(const Args&... args) {
  std::string out;
  CatAppend(&out, args...);
  return out;
}

}  // namespace sirocco::text
