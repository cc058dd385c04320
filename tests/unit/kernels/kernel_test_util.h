// Helpers shared by the kernel tests of every backend (tests/unit/kernels for
// the CPU backends, tests/gpu for CUDA): the error measure and its bounds, and
// padded matrices that catch writes outside a view. The bounds are explained at
// the top of tests/unit/kernels/ops_test.cc.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <random>
#include <vector>

namespace sirocco::kernels::test_util {

constexpr double kTolerance = 1e-5;
constexpr float kSentinel = -12345.0f;  // fills padding no op may write
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// max|got - want| / max(1, max|want|). Non-finite values must match exactly
// (same infinity, or NaN on both sides); otherwise the error is infinite.
inline double NormalizedError(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double max_diff = 0.0;
  double max_ref = 0.0;
  for (std::size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const bool got_finite = std::isfinite(got[i]);
    const bool want_finite = std::isfinite(want[i]);
    if (!got_finite || !want_finite) {
      const bool same = (std::isnan(got[i]) && std::isnan(want[i])) || got[i] == want[i];
      if (!same) return std::numeric_limits<double>::infinity();
      continue;
    }
    max_diff = std::max(max_diff, std::abs(static_cast<double>(got[i]) - want[i]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(want[i])));
  }
  return max_diff / std::max(1.0, max_ref);
}

inline std::vector<float> RandomVector(std::size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A rows x cols row-major matrix inside a buffer of leading dimension ld; the
// padding columns hold kSentinel so that writes outside the view are caught.
struct Padded {
  Padded(int rows_in, int cols_in, int ld_in)
      : rows(rows_in),
        cols(cols_in),
        ld(ld_in),
        data(static_cast<std::size_t>(std::max(rows_in, 1)) * ld_in, kSentinel) {}

  float& at(int r, int c) { return data[static_cast<std::size_t>(r) * ld + c]; }
  float at(int r, int c) const { return data[static_cast<std::size_t>(r) * ld + c]; }

  void Fill(std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> dist(lo, hi);
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) at(r, c) = dist(rng);
    }
  }
  void FillWith(float value) {
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) at(r, c) = value;
    }
  }
  std::vector<float> Logical() const {
    std::vector<float> v;
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) v.push_back(at(r, c));
    }
    return v;
  }
  bool PaddingIntact() const {
    for (int r = 0; r < rows; ++r) {
      for (int c = cols; c < ld; ++c) {
        if (at(r, c) != kSentinel) return false;
      }
    }
    return true;
  }

  int rows;
  int cols;
  int ld;
  std::vector<float> data;
};

inline double GemmTolerance(int k) { return kTolerance * std::max(1.0, std::sqrt(k / 256.0)); }

}  // namespace sirocco::kernels::test_util
