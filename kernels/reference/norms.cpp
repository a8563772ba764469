// Row normalisations: softmax and RMSNorm, fp64, one row per thread, sums left to right.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/reference/detail.hpp"
#include "kernels/reference/reference.hpp"

namespace npusim::ref {

void softmax_rows(int64_t rows, int64_t cols, const double* x, double* y) {
  detail::require_nonnegative("softmax_rows", "rows", rows);
  detail::require_nonnegative("softmax_rows", "cols", cols);
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  detail::for_rows(rows, cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const double* xr = x + r * cols;
      double* yr = y + r * cols;
      double m = kNegInf;
      bool nan = false;
      for (int64_t j = 0; j < cols; ++j) {
        if (std::isnan(xr[j]))
          nan = true;
        else if (xr[j] > m)
          m = xr[j];
      }
      if (nan) {
        std::fill(yr, yr + cols, std::numeric_limits<double>::quiet_NaN());
        continue;
      }
      if (m == kNegInf) {  // all -inf: no mass to distribute; defined as 0 (NaN-free)
        std::fill(yr, yr + cols, 0.0);
        continue;
      }
      double sum = 0;
      for (int64_t j = 0; j < cols; ++j) {
        const double e = std::exp(xr[j] - m);  // +inf row max gives NaN, as PyTorch
        yr[j] = e;
        sum += e;
      }
      for (int64_t j = 0; j < cols; ++j) yr[j] /= sum;
    }
  });
}

void rmsnorm_rows(int64_t rows, int64_t cols, const double* x, const double* weight, double eps,
                  double* y) {
  detail::require_nonnegative("rmsnorm_rows", "rows", rows);
  detail::require_nonnegative("rmsnorm_rows", "cols", cols);
  if (cols == 0) return;
  detail::for_rows(rows, cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const double* xr = x + r * cols;
      double* yr = y + r * cols;
      double ss = 0;
      for (int64_t j = 0; j < cols; ++j) ss += xr[j] * xr[j];
      const double inv = 1.0 / std::sqrt(ss / static_cast<double>(cols) + eps);
      if (weight) {
        for (int64_t j = 0; j < cols; ++j) yr[j] = (xr[j] * inv) * weight[j];
      } else {
        for (int64_t j = 0; j < cols; ++j) yr[j] = xr[j] * inv;
      }
    }
  });
}

}  // namespace npusim::ref
