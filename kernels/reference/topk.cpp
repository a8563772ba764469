// Stable top-k per row (TileKernels stable_topk rule: descending, the lower index wins ties; NaN
// ranks as -inf). fp64, parallel over rows.
#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/reference/detail.hpp"
#include "kernels/reference/reference.hpp"

namespace npusim::ref {

void topk(int64_t rows, int64_t cols, const double* scores, int64_t k, int32_t* indices,
          double* values) {
  detail::require_nonnegative("topk", "rows", rows);
  detail::require_nonnegative("topk", "cols", cols);
  detail::require(
      k >= 0 && k <= cols, "topk",
      "need 0 <= k <= cols, got k=" + std::to_string(k) + " cols=" + std::to_string(cols));
  detail::require(cols <= INT32_MAX, "topk", "cols must fit in int32 indices");
  if (k == 0) return;
  detail::for_rows(rows, cols, [&](int64_t r0, int64_t r1) {
    std::vector<double> key(static_cast<size_t>(cols));
    std::vector<int32_t> idx(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      const double* s = scores + r * cols;
      for (int64_t j = 0; j < cols; ++j)
        key[j] = std::isnan(s[j]) ? -std::numeric_limits<double>::infinity() : s[j];
      std::iota(idx.begin(), idx.end(), 0);
      // A strict total order (key descending, then index ascending): the result equals a stable
      // descending sort's first k, whatever algorithm partial_sort uses internally.
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
        return key[a] > key[b] || (key[a] == key[b] && a < b);
      });
      for (int64_t j = 0; j < k; ++j) {
        indices[r * k + j] = idx[j];
        if (values) values[r * k + j] = s[idx[j]];
      }
    }
  });
}

}  // namespace npusim::ref
