// Internal helpers shared by the reference kernels (not part of the API): argument checks, the
// scalar activation functions (so unary() and swiglu() agree bit for bit) and the row-parallel
// loop.
#pragma once

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace npusim::ref::detail {

inline void require(bool ok, const char* fn, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("npusim::ref::") + fn + ": " + what);
}

inline void require_nonnegative(const char* fn, const char* name, int64_t v) {
  require(v >= 0, fn, std::string(name) + " must be >= 0, got " + std::to_string(v));
}

// Numerically safe logistic function: never evaluates exp of a positive argument.
inline double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);  // x < 0 or NaN (NaN propagates)
  return e / (1.0 + e);
}

inline double silu(double x) {
  if (x == -std::numeric_limits<double>::infinity()) return -0.0;  // the limit; inf * 0 is NaN
  return x * sigmoid(x);
}

// Elements of work per oneTBB task: below this a loop runs on the calling thread.
inline constexpr int64_t kMinTaskWork = 16384;

// Calls body(begin, end) over [0, rows) in chunks. Which thread runs a chunk never affects results:
// every row is computed entirely inside one call, so callers must keep rows independent.
template <class Body>
void for_rows(int64_t rows, int64_t work_per_row, const Body& body) {
  if (rows <= 0) return;
  const int64_t grain = std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, work_per_row));
  if (rows <= grain) {
    body(int64_t{0}, rows);
    return;
  }
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, rows, grain),
                    [&](const tbb::blocked_range<int64_t>& r) { body(r.begin(), r.end()); });
}

}  // namespace npusim::ref::detail
