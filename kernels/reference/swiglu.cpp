// SwiGLU over [gate | up] rows (DeepSeek expert FFN, KERNELS.md 1.3 / 1.4 step 7), with the
// optional DeepSeek-V4 swiglu_limit clamp (KERNELS.md 2.3). fp64, parallel over rows.
#include <algorithm>
#include <cmath>

#include "kernels/reference/detail.hpp"
#include "kernels/reference/reference.hpp"

namespace npusim::ref {

void swiglu(int64_t rows, int64_t inter, const double* gate_up, double* out,
            std::optional<double> clamp, HalfOrder order) {
  detail::require_nonnegative("swiglu", "rows", rows);
  detail::require_nonnegative("swiglu", "inter", inter);
  detail::require(!clamp || *clamp >= 0, "swiglu", "clamp limit must be >= 0 and not NaN");
  detail::require(order == HalfOrder::GateFirst || order == HalfOrder::UpFirst, "swiglu",
                  "unknown half order");
  const int64_t gate_off = order == HalfOrder::GateFirst ? 0 : inter;
  const int64_t up_off = order == HalfOrder::GateFirst ? inter : 0;
  detail::for_rows(rows, inter, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const double* g = gate_up + r * 2 * inter + gate_off;
      const double* u = gate_up + r * 2 * inter + up_off;
      double* o = out + r * inter;
      if (clamp) {
        const double lim = *clamp;
        for (int64_t j = 0; j < inter; ++j) {
          // std::min/std::clamp return the NaN argument unchanged, so NaN propagates.
          const double gj = std::min(g[j], lim);
          const double uj = std::clamp(u[j], -lim, lim);
          o[j] = detail::silu(gj) * uj;
        }
      } else {
        for (int64_t j = 0; j < inter; ++j) o[j] = detail::silu(g[j]) * u[j];
      }
    }
  });
}

}  // namespace npusim::ref
