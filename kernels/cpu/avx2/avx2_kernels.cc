// The AVX2 + FMA backend: dense products through OpenBLAS, everything else
// vectorised by hand with 8-wide float intrinsics. Tested against the scalar
// reference in tests/unit/kernels/ops_test.cc.
//
// Build note: this is the only file of the library compiled with -mavx2 -mfma.
// Any inline function with external linkage emitted here (a std:: template such
// as std::max<float>, or a <cmath> overload such as std::exp(float) when it is
// not inlined, e.g. at -O0) would be compiled with AVX encodings, and the
// linker may keep this copy for the whole program, which would then fault on a
// CPU without AVX2 even on the reference path. So this file uses only
// intrinsics, its own internal-linkage helpers and C library functions (expf,
// cosf, malloc, ...), whose single definitions live outside this file.
#include "kernels/cpu/avx2/avx2_kernels.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>  // C functions on purpose, see the build note
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/ref/ref_kernels.h"

namespace sirocco::kernels {
namespace {

constexpr float kInf = HUGE_VALF;

float* RowPtr(float* base, int r, int ld) { return base + static_cast<std::ptrdiff_t>(r) * ld; }
const float* RowPtr(const float* base, int r, int ld) { return base + static_cast<std::ptrdiff_t>(r) * ld; }
int MinInt(int a, int b) { return a < b ? a : b; }
float MaxFloat(float a, float b) { return a > b ? a : b; }

// Per-call scratch memory: on the stack when small, else on the heap. Nothing
// outlives the call, so the ops stay pure and thread-safe.
class Scratch {
 public:
  explicit Scratch(std::size_t n) : data_(n <= kInline ? inline_ : static_cast<float*>(malloc(n * sizeof(float)))) {
    if (data_ == nullptr) {
      fprintf(stderr, "sirocco::kernels avx2: out of memory (%zu floats)\n", n);
      abort();
    }
  }
  ~Scratch() {
    if (data_ != inline_) free(data_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  float* get() const { return data_; }

 private:
  static constexpr std::size_t kInline = 4096;
  alignas(32) float inline_[kInline];
  float* data_;
};

// ---------------------------------------------------------------------------
// Vector helpers.

// Lanes [0, n) all-ones, the rest zero, for masked loads/stores of the last
// n < 8 elements of a row (masked-off lanes are never touched in memory).
alignas(32) constexpr std::int32_t kTailMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
__m256i TailMask(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMaskTable + 8 - n)); }

float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The horizontal sums of eight vectors, as one vector: lane i = sum of v[i].
__m256 HorizontalSums8(const __m256 (&v)[8]) {
  const __m256 s01 = _mm256_hadd_ps(v[0], v[1]);
  const __m256 s23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 s45 = _mm256_hadd_ps(v[4], v[5]);
  const __m256 s67 = _mm256_hadd_ps(v[6], v[7]);
  // Per 128-bit half: [v0 v1 v2 v3] and [v4 v5 v6 v7], partial sums of that half.
  const __m256 s0123 = _mm256_hadd_ps(s01, s23);
  const __m256 s4567 = _mm256_hadd_ps(s45, s67);
  const __m256 low_halves = _mm256_permute2f128_ps(s0123, s4567, 0x20);
  const __m256 high_halves = _mm256_permute2f128_ps(s0123, s4567, 0x31);
  return _mm256_add_ps(low_halves, high_halves);
}

// exp(x) in every lane, within a few ulp of the correctly rounded result (the
// unit test bounds it at relative 1e-6 against the reference's expf) over the
// whole float range: overflows to +inf, underflows through denormals to 0,
// propagates NaN.
__m256 Exp8(__m256 x) {
  // Beyond these bounds the result is already +inf (ln(FLT_MAX) = 88.72) or 0
  // (ln of half the smallest denormal = -103.97); clamping keeps the exponent
  // arithmetic below in range. min/max return their second operand when either
  // is NaN, so x goes second to keep NaN.
  x = _mm256_min_ps(_mm256_set1_ps(89.0f), x);
  x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);

  // x = n ln2 + r with |r| <= ln2 / 2. ln2 is split so that n * kLn2Hi is exact
  // (kLn2Hi has 9 significant bits, |n| <= 150) and x - n * kLn2Hi is exact
  // too; kLn2Lo = ln2 - kLn2Hi carries the rest.
  constexpr float kLog2E = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440054690583e-4f;
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);

  // exp(r) by its Taylor polynomial of degree 7: the truncation error is below
  // 0.3466^8 / 8! * e^0.35 < 1e-8 relative, far under float rounding.
  __m256 poly = _mm256_set1_ps(1.0f / 5040.0f);
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 720.0f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 120.0f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 24.0f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 6.0f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(0.5f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f));

  // Scale by 2^n as 2^(n/2) * 2^(n - n/2): each factor is a normal float for
  // every n in [-150, 128], so overflow (n = 128) and denormal results need no
  // special case; the final multiplications round them correctly.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 scale1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 scale2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(poly, scale1), scale2);
}

// ---------------------------------------------------------------------------
// Dense products: OpenBLAS. Its sgemm/sgemv do not read C when beta == 0,
// which is the contract of kernels.h.

// C = beta * C for k == 0, which BLAS rejects through its leading-dimension
// checks (lda >= max(1, k)) for the views our callers may pass.
void ScaleOutput(int m, int n, float beta, float* c, int ldc) {
  for (int i = 0; i < m; ++i) {
    float* row = RowPtr(c, i, ldc);
    for (int j = 0; j < n; ++j) row[j] = beta == 0.0f ? 0.0f : beta * row[j];
  }
}

void GemmNt(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) return ScaleOutput(m, n, beta, c, ldc);
  if (m == 1) {
    // A single row (decode) is a matrix-vector product; sgemv skips sgemm's
    // packing, which for m == 1 costs as much as the product.
    cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, 1.0f, b, ldb, a, 1, beta, c, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

void GemmNn(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) return ScaleOutput(m, n, beta, c, ldc);
  if (m == 1) {
    cblas_sgemv(CblasRowMajor, CblasTrans, k, n, 1.0f, b, ldb, a, 1, beta, c, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

// ---------------------------------------------------------------------------
// Element-wise and row-wise ops.

void RmsNorm(int rows, int dim, const float* x, int ldx, const float* w, float eps, float* y, int ldy) {
  const __m256i tail = TailMask(dim % 8);
  for (int r = 0; r < rows; ++r) {
    const float* xr = RowPtr(x, r, ldx);
    float* yr = RowPtr(y, r, ldy);
    // Four accumulators hide the FMA latency.
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps();
    __m256 acc3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= dim; i += 32) {
      const __m256 v0 = _mm256_loadu_ps(xr + i);
      const __m256 v1 = _mm256_loadu_ps(xr + i + 8);
      const __m256 v2 = _mm256_loadu_ps(xr + i + 16);
      const __m256 v3 = _mm256_loadu_ps(xr + i + 24);
      acc0 = _mm256_fmadd_ps(v0, v0, acc0);
      acc1 = _mm256_fmadd_ps(v1, v1, acc1);
      acc2 = _mm256_fmadd_ps(v2, v2, acc2);
      acc3 = _mm256_fmadd_ps(v3, v3, acc3);
    }
    for (; i + 8 <= dim; i += 8) {
      const __m256 v = _mm256_loadu_ps(xr + i);
      acc0 = _mm256_fmadd_ps(v, v, acc0);
    }
    if (i < dim) {
      const __m256 v = _mm256_maskload_ps(xr + i, tail);
      acc0 = _mm256_fmadd_ps(v, v, acc0);
    }
    const float sum_sq = HorizontalSum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    const __m256 inv_rms = _mm256_set1_ps(1.0f / sqrtf(sum_sq / static_cast<float>(dim) + eps));
    // Same association as the reference: w * (x * inv_rms). Row r of x is
    // fully read above before y (which may alias x) is written.
    i = 0;
    for (; i + 8 <= dim; i += 8) {
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xr + i), inv_rms);
      _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_loadu_ps(w + i), v));
    }
    if (i < dim) {
      const __m256 v = _mm256_mul_ps(_mm256_maskload_ps(xr + i, tail), inv_rms);
      _mm256_maskstore_ps(yr + i, tail, _mm256_mul_ps(_mm256_maskload_ps(w + i, tail), v));
    }
  }
}

// Splits 8 interleaved pairs (x[0..16)) into their first and second elements.
void Deinterleave8Pairs(const float* x, __m256* first, __m256* second) {
  const __m256 lo = _mm256_loadu_ps(x);      // pairs 0..3
  const __m256 hi = _mm256_loadu_ps(x + 8);  // pairs 4..7
  // Within each 128-bit lane: [lo0 lo2 hi0 hi2]; then reorder the 64-bit
  // quarters so the pairs come out in order.
  const __m256 even = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
  const __m256 odd = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
  *first = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0)));
  *second = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd), _MM_SHUFFLE(3, 1, 2, 0)));
}

void RopeInterleaved(int rows, int rows_per_pos, int dim, float* x, int ldx, const std::int32_t* pos,
                     const float* inv_freq, float attn_factor) {
  const int half = dim / 2;
  Scratch scratch(static_cast<std::size_t>(2 * half + dim));
  float* cos_table = scratch.get();
  float* sin_table = cos_table + half;
  float* rotated = sin_table + half;

  // Rows sharing a position (the heads of a token) share their cos/sin, which
  // are computed once, in scalar float32 exactly as the reference does.
  for (int r0 = 0; r0 < rows; r0 += rows_per_pos) {
    const float position = static_cast<float>(pos[r0 / rows_per_pos]);
    for (int p = 0; p < half; ++p) {
      const float angle = position * inv_freq[p];
      cos_table[p] = cosf(angle) * attn_factor;
      sin_table[p] = sinf(angle) * attn_factor;
    }
    const int r_end = MinInt(rows, r0 + rows_per_pos);
    for (int r = r0; r < r_end; ++r) {
      float* xr = RowPtr(x, r, ldx);
      // The output is de-interleaved, so write a copy and then the row.
      int p = 0;
      for (; p + 8 <= half; p += 8) {
        __m256 x0;
        __m256 x1;
        Deinterleave8Pairs(xr + 2 * p, &x0, &x1);
        const __m256 c = _mm256_loadu_ps(cos_table + p);
        const __m256 s = _mm256_loadu_ps(sin_table + p);
        _mm256_storeu_ps(rotated + p, _mm256_sub_ps(_mm256_mul_ps(x0, c), _mm256_mul_ps(x1, s)));
        _mm256_storeu_ps(rotated + half + p, _mm256_add_ps(_mm256_mul_ps(x1, c), _mm256_mul_ps(x0, s)));
      }
      for (; p < half; ++p) {
        const float x0 = xr[2 * p];
        const float x1 = xr[2 * p + 1];
        rotated[p] = x0 * cos_table[p] - x1 * sin_table[p];
        rotated[p + half] = x1 * cos_table[p] + x0 * sin_table[p];
      }
      memcpy(xr, rotated, static_cast<std::size_t>(dim) * sizeof(float));
    }
  }
}

__m256 Silu8(__m256 g) {
  const __m256 neg_g = _mm256_sub_ps(_mm256_setzero_ps(), g);
  return _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), Exp8(neg_g)));
}

void SiluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out, int ldo) {
  const __m256i tail = TailMask(n % 8);
  for (int r = 0; r < rows; ++r) {
    const float* gr = RowPtr(gate, r, ldg);
    float* outr = RowPtr(out, r, ldo);
    int i = 0;
    if (up == nullptr) {  // plain silu
      for (; i + 8 <= n; i += 8) _mm256_storeu_ps(outr + i, Silu8(_mm256_loadu_ps(gr + i)));
      if (i < n) _mm256_maskstore_ps(outr + i, tail, Silu8(_mm256_maskload_ps(gr + i, tail)));
      continue;
    }
    const float* ur = RowPtr(up, r, ldu);
    for (; i + 8 <= n; i += 8) {
      const __m256 silu = Silu8(_mm256_loadu_ps(gr + i));
      _mm256_storeu_ps(outr + i, _mm256_mul_ps(silu, _mm256_loadu_ps(ur + i)));
    }
    if (i < n) {
      const __m256 silu = Silu8(_mm256_maskload_ps(gr + i, tail));
      _mm256_maskstore_ps(outr + i, tail, _mm256_mul_ps(silu, _mm256_maskload_ps(ur + i, tail)));
    }
  }
}

void Axpy(int n, float alpha, const float* x, float* y) {
  const __m256 a = _mm256_set1_ps(alpha);
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 y0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i));
    const __m256 y1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8));
    _mm256_storeu_ps(y + i, y0);
    _mm256_storeu_ps(y + i + 8, y1);
  }
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  if (i < n) {
    const __m256i tail = TailMask(n - i);
    _mm256_maskstore_ps(y + i, tail,
                        _mm256_fmadd_ps(a, _mm256_maskload_ps(x + i, tail), _mm256_maskload_ps(y + i, tail)));
  }
}

// Numerically stable softmax of x[0..n), in place: exp(x - max) / sum.
void SoftmaxRow(float* x, int n) {
  const __m256i tail = TailMask(n % 8);
  const __m256 neg_inf = _mm256_set1_ps(-kInf);
  __m256 vmax = neg_inf;
  int i = 0;
  for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
  if (i < n) {
    const __m256 v = _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(x + i, tail), _mm256_castsi256_ps(tail));
    vmax = _mm256_max_ps(vmax, v);
  }
  const __m256 max = _mm256_set1_ps(HorizontalMax(vmax));

  __m256 vsum = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), max));
    _mm256_storeu_ps(x + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (i < n) {
    // Masked-off lanes hold exp(0 - max); zero them before summing.
    const __m256 e =
        _mm256_and_ps(Exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, tail), max)), _mm256_castsi256_ps(tail));
    _mm256_maskstore_ps(x + i, tail, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  const __m256 sum = _mm256_set1_ps(HorizontalSum(vsum));

  for (i = 0; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(x + i, _mm256_div_ps(_mm256_loadu_ps(x + i), sum));
  }
  if (i < n) {
    _mm256_maskstore_ps(x + i, tail, _mm256_div_ps(_mm256_maskload_ps(x + i, tail), sum));
  }
}

void Softmax(int rows, int n, float* x, int ldx) {
  for (int r = 0; r < rows; ++r) SoftmaxRow(RowPtr(x, r, ldx), n);
}

// ---------------------------------------------------------------------------
// Attention building blocks, register-blocked over heads (h) and cache rows (t).

// Cache rows handled per online-softmax step. 32 rows of an MLA cache are 40 KB
// at kv_rank 256 + rope 64: they stay in L2 between the score pass and the
// weighted-sum pass over the same rows.
constexpr int kTile = 32;

// acc[h][t] += q_h[0, len) . rows[t][offset, offset + len) with
// q_h = q + h * q_stride: kH * kT independent FMA chains, each q vector loaded
// once for kT rows and each row vector once for kH heads.
template <int kH, int kT>
[[gnu::always_inline]] inline void DotAccumulate(const float* q, std::ptrdiff_t q_stride, const float* const* rows,
                                                 int offset, int len, __m256 (&acc)[kH][kT]) {
  const float* row[kT];
#pragma GCC unroll 8
  for (int t = 0; t < kT; ++t) row[t] = rows[t] + offset;
  int k = 0;
  for (; k + 8 <= len; k += 8) {
    __m256 rv[kT];
#pragma GCC unroll 8
    for (int t = 0; t < kT; ++t) rv[t] = _mm256_loadu_ps(row[t] + k);
#pragma GCC unroll 8
    for (int h = 0; h < kH; ++h) {
      const __m256 qv = _mm256_loadu_ps(q + h * q_stride + k);
#pragma GCC unroll 8
      for (int t = 0; t < kT; ++t) acc[h][t] = _mm256_fmadd_ps(qv, rv[t], acc[h][t]);
    }
  }
  if (k < len) {
    const __m256i tail = TailMask(len - k);
    __m256 rv[kT];
#pragma GCC unroll 8
    for (int t = 0; t < kT; ++t) rv[t] = _mm256_maskload_ps(row[t] + k, tail);
#pragma GCC unroll 8
    for (int h = 0; h < kH; ++h) {
      const __m256 qv = _mm256_maskload_ps(q + h * q_stride + k, tail);
#pragma GCC unroll 8
      for (int t = 0; t < kT; ++t) acc[h][t] = _mm256_fmadd_ps(qv, rv[t], acc[h][t]);
    }
  }
}

// scores[h * score_stride + t] = scale * horizontal_sum(acc[h][t]), reducing
// eight accumulators at a time when there are that many.
template <int kH, int kT>
[[gnu::always_inline]] inline void StoreScores(const __m256 (&acc)[kH][kT], float scale, float* scores,
                                               int score_stride) {
  constexpr int kN = kH * kT;
  alignas(32) float sums[kN];
  int i = 0;
  if constexpr (kN >= 8) {
    __m256 flat[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) flat[j] = acc[j / kT][j % kT];
    _mm256_store_ps(sums, _mm256_mul_ps(HorizontalSums8(flat), _mm256_set1_ps(scale)));
    i = 8;
  }
#pragma GCC unroll 8
  for (; i < kN; ++i) sums[i] = scale * HorizontalSum(acc[i / kT][i % kT]);
#pragma GCC unroll 16
  for (int j = 0; j < kN; ++j) scores[(j / kT) * score_stride + j % kT] = sums[j];
}

// out_h[d, d + 8 kV) = alpha_h * out_h[...] + sum_t w_h[t] * rows[t][d, d + 8 kV)
// for kH heads, out_h = out + h * out_stride, w_h = w + h * w_stride. With
// `tail`, only kV == 1 and the masked lanes are touched.
template <int kH, int kV, bool kMasked>
[[gnu::always_inline]] inline void WeightedSumChunk(float* out, std::ptrdiff_t out_stride, const float* w, int w_stride,
                                                    const float* alpha, const float* const* rows, int num_rows, int d,
                                                    __m256i tail) {
  static_assert(!kMasked || kV == 1);
  __m256 acc[kH][kV];
#pragma GCC unroll 8
  for (int h = 0; h < kH; ++h) {
    const __m256 a = _mm256_set1_ps(alpha[h]);
#pragma GCC unroll 8
    for (int v = 0; v < kV; ++v) {
      const float* src = out + h * out_stride + d + 8 * v;
      const __m256 old = kMasked ? _mm256_maskload_ps(src, tail) : _mm256_loadu_ps(src);
      acc[h][v] = _mm256_mul_ps(old, a);
    }
  }
  for (int t = 0; t < num_rows; ++t) {
    const float* row = rows[t] + d;
    __m256 rv[kV];
#pragma GCC unroll 8
    for (int v = 0; v < kV; ++v) {
      rv[v] = kMasked ? _mm256_maskload_ps(row + 8 * v, tail) : _mm256_loadu_ps(row + 8 * v);
    }
#pragma GCC unroll 8
    for (int h = 0; h < kH; ++h) {
      const __m256 wt = _mm256_broadcast_ss(w + h * w_stride + t);
#pragma GCC unroll 8
      for (int v = 0; v < kV; ++v) acc[h][v] = _mm256_fmadd_ps(wt, rv[v], acc[h][v]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < kH; ++h) {
#pragma GCC unroll 8
    for (int v = 0; v < kV; ++v) {
      float* dst = out + h * out_stride + d + 8 * v;
      if (kMasked) {
        _mm256_maskstore_ps(dst, tail, acc[h][v]);
      } else {
        _mm256_storeu_ps(dst, acc[h][v]);
      }
    }
  }
}

// WeightedSumChunk for every head h < heads, at columns [d, d + 8 kV).
template <int kV, bool kMasked>
void WeightedSumHeads(float* out, std::ptrdiff_t out_stride, int heads, const float* w, int w_stride,
                      const float* alpha, const float* const* rows, int num_rows, int d, __m256i tail) {
  int h = 0;
  for (; h + 2 <= heads; h += 2) {
    WeightedSumChunk<2, kV, kMasked>(out + h * out_stride, out_stride, w + h * w_stride, w_stride, alpha + h, rows,
                                     num_rows, d, tail);
  }
  for (; h < heads; ++h) {
    WeightedSumChunk<1, kV, kMasked>(out + h * out_stride, out_stride, w + h * w_stride, w_stride, alpha + h, rows,
                                     num_rows, d, tail);
  }
}

// For every head h < heads, over the whole width [0, len):
//   out_h = alpha[h] * out_h + sum_t w_h[t] * rows[t].
// Columns are the outer loop so that a column chunk of the rows (num_rows x 32
// floats, 4 KB for a tile) stays in L1 while every head uses it; head-major
// order would stream the whole tile from L2 once per head pair.
void WeightedSum(float* out, std::ptrdiff_t out_stride, int heads, const float* w, int w_stride, const float* alpha,
                 const float* const* rows, int num_rows, int len) {
  const __m256i tail = TailMask(len % 8);
  int d = 0;
  for (; d + 32 <= len; d += 32) {
    WeightedSumHeads<4, false>(out, out_stride, heads, w, w_stride, alpha, rows, num_rows, d, tail);
  }
  for (; d + 8 <= len; d += 8) {
    WeightedSumHeads<1, false>(out, out_stride, heads, w, w_stride, alpha, rows, num_rows, d, tail);
  }
  if (d < len) {
    WeightedSumHeads<1, true>(out, out_stride, heads, w, w_stride, alpha, rows, num_rows, d, tail);
  }
}

// ---------------------------------------------------------------------------
// MLA attention over the paged latent cache.
//
// Decode is the hot path: per query, all heads read the same cache entries, so
// the entries are visited once per query, kTile at a time, and each tile is
// used by every head while it is in cache: scores for all heads (a small
// [heads x tile] product), an online-softmax update per head, then the
// weighted sum of the tile's latents into every head's output. The output
// rows double as the (unnormalised) accumulators.

template <int kH, int kT>
[[gnu::always_inline]] inline void MlaScoreBlock(const MlaAttentionParams& p, const float* q_lat, const float* q_rope,
                                                 const float* const* entries, float* scores) {
  __m256 acc[kH][kT];
#pragma GCC unroll 8
  for (int h = 0; h < kH; ++h) {
#pragma GCC unroll 8
    for (int t = 0; t < kT; ++t) acc[h][t] = _mm256_setzero_ps();
  }
  DotAccumulate<kH, kT>(q_lat, p.kv_rank, entries, 0, p.kv_rank, acc);
  DotAccumulate<kH, kT>(q_rope, p.rope_dim, entries, p.kv_rank, p.rope_dim, acc);
  StoreScores<kH, kT>(acc, p.scale, scores, kTile);
}

// scores[h * kTile + t] for every head and the tile's `tile` entries.
void MlaScores(const MlaAttentionParams& p, const float* q_lat, const float* q_rope, const float* const* entries,
               int tile, float* scores) {
  int h = 0;
  for (; h + 4 <= p.num_heads; h += 4) {
    const float* ql = q_lat + static_cast<std::ptrdiff_t>(h) * p.kv_rank;
    const float* qr = q_rope + static_cast<std::ptrdiff_t>(h) * p.rope_dim;
    float* s = scores + h * kTile;
    int t = 0;
    for (; t + 3 <= tile; t += 3) MlaScoreBlock<4, 3>(p, ql, qr, entries + t, s + t);
    for (; t < tile; ++t) MlaScoreBlock<4, 1>(p, ql, qr, entries + t, s + t);
  }
  for (; h < p.num_heads; ++h) {
    const float* ql = q_lat + static_cast<std::ptrdiff_t>(h) * p.kv_rank;
    const float* qr = q_rope + static_cast<std::ptrdiff_t>(h) * p.rope_dim;
    float* s = scores + h * kTile;
    int t = 0;
    for (; t + 4 <= tile; t += 4) MlaScoreBlock<1, 4>(p, ql, qr, entries + t, s + t);
    for (; t < tile; ++t) MlaScoreBlock<1, 1>(p, ql, qr, entries + t, s + t);
  }
}

// Online softmax step for one head: folds scores[0, tile) into the running
// (max, sum), turns the scores into exp(score - new_max) in place and returns
// the factor exp(old_max - new_max) that rescales the running output.
float OnlineSoftmaxStep(float* scores, int tile, float* running_max, float* running_sum) {
  float tile_max = -kInf;
  for (int t = 0; t < tile; ++t) tile_max = MaxFloat(tile_max, scores[t]);
  const float new_max = MaxFloat(*running_max, tile_max);
  const float rescale = expf(*running_max - new_max);
  const __m256 vmax = _mm256_set1_ps(new_max);
  __m256 vsum = _mm256_setzero_ps();
  int t = 0;
  for (; t + 8 <= tile; t += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + t), vmax));
    _mm256_storeu_ps(scores + t, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (t < tile) {
    const __m256i tail = TailMask(tile - t);
    const __m256 e =
        _mm256_and_ps(Exp8(_mm256_sub_ps(_mm256_maskload_ps(scores + t, tail), vmax)), _mm256_castsi256_ps(tail));
    _mm256_maskstore_ps(scores + t, tail, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  *running_sum = *running_sum * rescale + HorizontalSum(vsum);
  *running_max = new_max;
  return rescale;
}

void MlaAttention(const MlaAttentionParams& p) {
  const int heads = p.num_heads;
  const std::ptrdiff_t entry_width = p.kv_rank + p.rope_dim;
  Scratch scratch(static_cast<std::size_t>(heads) * (kTile + 3));
  float* scores = scratch.get();                // [heads, kTile]
  float* running_max = scores + heads * kTile;  // [heads]
  float* running_sum = running_max + heads;     // [heads]
  float* rescale = running_sum + heads;         // [heads]
  const float* entries[kTile];

  for (int i = 0; i < p.num_queries; ++i) {
    const std::ptrdiff_t first_row = static_cast<std::ptrdiff_t>(i) * heads;
    const float* q_lat = p.q_lat + first_row * p.kv_rank;
    const float* q_rope = p.q_rope + first_row * p.rope_dim;
    float* out = p.out + first_row * p.kv_rank;
    const std::int32_t* table = p.block_tables[i];
    const int ctx = p.ctx_lens[i];

    memset(out, 0, static_cast<std::size_t>(heads) * p.kv_rank * sizeof(float));
    for (int h = 0; h < heads; ++h) {
      running_max[h] = -kInf;
      running_sum[h] = 0.0f;
    }

    for (int j0 = 0; j0 < ctx; j0 += kTile) {
      const int tile = MinInt(kTile, ctx - j0);
      for (int t = 0; t < tile; ++t) {
        const int j = j0 + t;
        const std::ptrdiff_t block = table[j / p.block_size];
        entries[t] = p.cache + (block * p.block_size + j % p.block_size) * entry_width;
      }
      MlaScores(p, q_lat, q_rope, entries, tile, scores);
      for (int h = 0; h < heads; ++h) {
        rescale[h] = OnlineSoftmaxStep(scores + h * kTile, tile, &running_max[h], &running_sum[h]);
      }
      WeightedSum(out, p.kv_rank, heads, scores, kTile, rescale, entries, tile, p.kv_rank);
    }

    const __m256i tail = TailMask(p.kv_rank % 8);
    for (int h = 0; h < heads; ++h) {
      float* o = out + static_cast<std::ptrdiff_t>(h) * p.kv_rank;
      const __m256 sum = _mm256_set1_ps(running_sum[h]);
      int d = 0;
      for (; d + 8 <= p.kv_rank; d += 8) {
        _mm256_storeu_ps(o + d, _mm256_div_ps(_mm256_loadu_ps(o + d), sum));
      }
      if (d < p.kv_rank) {
        _mm256_maskstore_ps(o + d, tail, _mm256_div_ps(_mm256_maskload_ps(o + d, tail), sum));
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Dense attention (expanded-form prefill, causal; vision patches, not): per
// (query, head), all visible scores, a softmax, then the probability-weighted sum of the values.

void Attention(const AttentionParams& p) {
  const std::ptrdiff_t k_stride = static_cast<std::ptrdiff_t>(p.num_heads) * p.qk_dim;
  const std::ptrdiff_t v_stride = static_cast<std::ptrdiff_t>(p.num_heads) * p.v_dim;
  Scratch scratch(static_cast<std::size_t>(p.num_keys));
  float* probs = scratch.get();
  const float* rows[kTile];
  const float kOne = 1.0f;

  for (int i = 0; i < p.num_queries; ++i) {
    // Causal: keys 0 .. q_offset + i; otherwise every key.
    const int visible = p.causal ? p.q_offset + i + 1 : p.num_keys;
    for (int h = 0; h < p.num_heads; ++h) {
      const std::ptrdiff_t qh = static_cast<std::ptrdiff_t>(i) * p.num_heads + h;
      const float* q = p.q + qh * p.qk_dim;
      float* out = p.out + qh * p.v_dim;
      const float* k_head = p.k + static_cast<std::ptrdiff_t>(h) * p.qk_dim;
      const float* v_head = p.v + static_cast<std::ptrdiff_t>(h) * p.v_dim;

      for (int j0 = 0; j0 < visible; j0 += kTile) {
        const int tile = MinInt(kTile, visible - j0);
        for (int t = 0; t < tile; ++t) rows[t] = k_head + (j0 + t) * k_stride;
        int t = 0;
        for (; t + 4 <= tile; t += 4) {
          __m256 acc[1][4] = {{_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()}};
          DotAccumulate<1, 4>(q, 0, rows + t, 0, p.qk_dim, acc);
          StoreScores<1, 4>(acc, p.scale, probs + j0 + t, 0);
        }
        for (; t < tile; ++t) {
          __m256 acc[1][1] = {{_mm256_setzero_ps()}};
          DotAccumulate<1, 1>(q, 0, rows + t, 0, p.qk_dim, acc);
          StoreScores<1, 1>(acc, p.scale, probs + j0 + t, 0);
        }
      }
      SoftmaxRow(probs, visible);

      memset(out, 0, static_cast<std::size_t>(p.v_dim) * sizeof(float));
      for (int j0 = 0; j0 < visible; j0 += kTile) {
        const int tile = MinInt(kTile, visible - j0);
        for (int t = 0; t < tile; ++t) rows[t] = v_head + (j0 + t) * v_stride;
        WeightedSum(out, 0, 1, probs + j0, 0, &kOne, rows, tile, p.v_dim);
      }
    }
  }
}

constexpr KernelTable kAvx2Table = {
    .backend = Backend::kAvx2,
    .name = "avx2",
    .gemm_nt = GemmNt,
    .gemm_nn = GemmNn,
    .rms_norm = RmsNorm,
    .rope_interleaved = RopeInterleaved,
    .silu_mul = SiluMul,
    // GELU runs where products dominate (a projector's activation): the
    // reference's scalar erf is used as is rather than a vectorised
    // approximation.
    .gelu_mul = ref::GeluMul,
    .axpy = Axpy,
    .softmax = Softmax,
    .mla_attention = MlaAttention,
    .attention = Attention,
    // The router is a few hundred flops per token: the reference is used as is.
    .route_topk = ref::RouteTopk,
};

}  // namespace

const KernelTable& Avx2Kernels() { return kAvx2Table; }

}  // namespace sirocco::kernels
