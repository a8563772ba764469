// Dense, batched and grouped GEMM on OpenBLAS, parallelised over fixed C tiles with oneTBB.
//
// Every GEMM is lowered to a list of "problems" (one C matrix each, sharing n, k and beta) and then
// to fixed tiles of at most kTileM x kTileN of C. Each tile is one single-threaded OpenBLAS call
// (the full k range, B's columns and A's rows of that tile), so a C element's bytes depend only on
// the shape and the data, never on how many threads ran or which thread ran the tile. OpenBLAS
// itself is pinned to one thread (its own M/N partitioning changes results with the thread count).
#include <cblas.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <climits>
#include <mutex>
#include <vector>

#include "kernels/reference/detail.hpp"
#include "kernels/reference/reference.hpp"

namespace npusim::ref {
namespace {

constexpr int64_t kTileM = 256;
constexpr int64_t kTileN = 256;
// Below this many multiply-adds in total, tiles run on the calling thread (same tiles, same bytes).
constexpr double kParallelMacs = 1 << 20;

void pin_openblas_to_one_thread() {
  static std::mutex mu;
  if (openblas_get_num_threads() == 1) return;
  std::lock_guard<std::mutex> lock(mu);
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

template <class T>
struct Problem {
  const T* a;  // m x k
  const T* b;  // k x n
  T* c;        // m x n
  int64_t m;
};

template <class T>
struct Tile {
  const Problem<T>* p;
  int64_t i0, j0, mt, nt;
};

inline void blas(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
                 int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
              static_cast<int>(ldc));
}

inline void blas(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                 int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0f, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

void check_dims(const char* fn, int64_t m, int64_t n, int64_t k) {
  detail::require_nonnegative(fn, "m", m);
  detail::require_nonnegative(fn, "n", n);
  detail::require_nonnegative(fn, "k", k);
  // k and n are OpenBLAS leading dimensions (32-bit int); m is tiled so only tiles reach OpenBLAS.
  detail::require(n <= INT_MAX && k <= INT_MAX, fn, "n and k must fit in a 32-bit int");
}

// Runs all problems (all with the same n, k): C = A * B (+ C when accumulate).
template <class T>
void run(const std::vector<Problem<T>>& problems, int64_t n, int64_t k, bool accumulate) {
  if (n == 0) return;
  if (k == 0) {  // empty sum: C = 0 (or unchanged); OpenBLAS rejects lda = 0
    if (!accumulate)
      for (const auto& p : problems) std::fill(p.c, p.c + p.m * n, T(0));
    return;
  }
  std::vector<Tile<T>> tiles;
  double macs = 0;
  for (const auto& p : problems) {
    for (int64_t i0 = 0; i0 < p.m; i0 += kTileM)
      for (int64_t j0 = 0; j0 < n; j0 += kTileN)
        tiles.push_back({&p, i0, j0, std::min(kTileM, p.m - i0), std::min(kTileN, n - j0)});
    macs += double(p.m) * double(n) * double(k);
  }
  if (tiles.empty()) return;
  pin_openblas_to_one_thread();
  const T beta = accumulate ? T(1) : T(0);
  auto do_tile = [&](const Tile<T>& t) {
    blas(t.mt, t.nt, k, t.p->a + t.i0 * k, k, t.p->b + t.j0, n, beta, t.p->c + t.i0 * n + t.j0, n);
  };
  if (tiles.size() == 1 || macs < kParallelMacs) {
    for (const auto& t : tiles) do_tile(t);
  } else {
    tbb::parallel_for(size_t{0}, tiles.size(), [&](size_t i) { do_tile(tiles[i]); });
  }
}

template <class T>
void gemm_impl(int64_t m, int64_t n, int64_t k, const T* a, const T* b, T* c, bool accumulate) {
  check_dims("gemm", m, n, k);
  run<T>({Problem<T>{a, b, c, m}}, n, k, accumulate);
}

}  // namespace

void gemm(int64_t m, int64_t n, int64_t k, const double* a, const double* b, double* c,
          bool accumulate) {
  gemm_impl(m, n, k, a, b, c, accumulate);
}

void gemm(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c,
          bool accumulate) {
  gemm_impl(m, n, k, a, b, c, accumulate);
}

void batched_gemm(int64_t batch, int64_t m, int64_t n, int64_t k, const double* a, const double* b,
                  double* c) {
  detail::require_nonnegative("batched_gemm", "batch", batch);
  check_dims("batched_gemm", m, n, k);
  std::vector<Problem<double>> problems;
  problems.reserve(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i)
    problems.push_back({a + i * m * k, b + i * k * n, c + i * m * n, m});
  run(problems, n, k, false);
}

void grouped_gemm(const std::vector<int64_t>& group_rows, int64_t n, int64_t k, const double* a,
                  const double* b, double* c) {
  for (int64_t r : group_rows) detail::require_nonnegative("grouped_gemm", "group_rows[g]", r);
  check_dims("grouped_gemm", 0, n, k);
  std::vector<Problem<double>> problems;
  int64_t off = 0;
  for (size_t g = 0; g < group_rows.size(); ++g) {
    const int64_t rows = group_rows[g];
    if (rows > 0)
      problems.push_back({a + off * k, b + static_cast<int64_t>(g) * k * n, c + off * n, rows});
    off += rows;
  }
  run(problems, n, k, false);
}

}  // namespace npusim::ref
