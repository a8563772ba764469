// CPU reference kernels ("golden" results) for the kernels the simulator models: dense, batched
// and grouped GEMM, elementwise unary/binary ops, row softmax, RMSNorm, SwiGLU and stable top-k.
// Definitions follow /work/shared/design/KERNELS.md (sections 1.2-1.4, 2.3 and 5.2).
//
// Contract (every function):
//  * All matrices are dense row-major with no padding (leading dimension = number of columns);
//    sizes are int64_t. A zero size is allowed and writes nothing (GEMM with k == 0 writes zeros,
//    or leaves C unchanged when accumulating).
//  * Bad arguments (a negative size, k > cols, a negative or NaN swiglu clamp, a dimension that
//  does
//    not fit OpenBLAS's 32-bit int) throw std::invalid_argument before anything is written.
//  * Pointers must be valid for the sizes given (they may be null only when that size is 0).
//    Outputs must not overlap inputs, except that unary, binary, softmax_rows and rmsnorm_rows may
//    run in place (output pointer == an input pointer, exactly).
//  * The double API computes in fp64 throughout (no fp32 shortcuts). Only the float gemm overload
//    works in fp32 (OpenBLAS sgemm: fp32 products and fp32 accumulation).
//  * Determinism: the same inputs give the same output bytes on every run and for every thread
//    count. Row-wise kernels compute each row on one thread with sums in left-to-right order;
//    oneTBB (tbb::parallel_for) only decides which thread does which row.
//  * GEMMs use OpenBLAS, but OpenBLAS's own threading is NOT thread-count independent (its M/N
//    partition changes the bytes), so the first GEMM call pins OpenBLAS to one thread
//    (openblas_set_num_threads(1), re-applied if someone changes it) and the reference splits C
//    itself into fixed 256 x 256 tiles, one single-threaded OpenBLAS call per tile, run in parallel
//    with oneTBB (over tiles of all batches / groups). The tiling depends only on the shape. Note:
//    this pins OpenBLAS to one thread for the whole process.
//  * Results are bitwise reproducible on one machine. Across CPUs, GEMM bytes may differ because
//    OpenBLAS selects its kernel by CPU type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace npusim::ref {

// ---- GEMM (gemm.cpp) ----

// C(m x n) = A(m x k) * B(k x n), or C += A * B when `accumulate`. OpenBLAS dgemm / sgemm (the
// float overload uses fp32 products and fp32 accumulation).
void gemm(int64_t m, int64_t n, int64_t k, const double* a, const double* b, double* c,
          bool accumulate = false);
void gemm(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c,
          bool accumulate = false);

// For each of `batch` contiguous batches: C_i(m x n) = A_i(m x k) * B_i(k x n). A_i starts at
// a + i*m*k, B_i at b + i*k*n, C_i at c + i*m*n.
void batched_gemm(int64_t batch, int64_t m, int64_t n, int64_t k, const double* a, const double* b,
                  double* c);

// Grouped GEMM (MoE experts, KERNELS.md 1.4 step 6/8): the rows of `a` (sum(group_rows) x k) are
// grouped consecutively; group g uses rows off[g] .. off[g] + group_rows[g] - 1 (off = exclusive
// cumsum) and its own B_g = b + g*k*n (k x n). c (sum(group_rows) x n) gets, for every row, that
// row of A times its group's B. Empty groups (0 rows) are allowed; their B is not read. Negative
// row counts throw.
void grouped_gemm(const std::vector<int64_t>& group_rows, int64_t n, int64_t k, const double* a,
                  const double* b, double* c);

// ---- Elementwise (elementwise.cpp) ----

// IEEE-754 double semantics with these definitions:
//   Exp     exp(x)                      (overflow -> +inf, exp(-inf) = +0)
//   Relu    x > 0 ? x : +0              (NaN -> NaN, -0 -> +0)
//   Neg     -x                          (flips the sign of zeros and NaN)
//   Sqrt    sqrt(x)                     (x < 0 -> NaN, sqrt(-0) = -0)
//   Ln      log(x)                      (log(+-0) = -inf, x < 0 -> NaN)
//   Sigmoid 1 / (1 + exp(-x)), evaluated as e/(1+e) with e = exp(x) for x < 0 so it never
//           overflows: sigmoid(+inf) = 1, sigmoid(-inf) = +0, NaN -> NaN
//   Silu    x * sigmoid(x), with silu(-inf) = -0 (the limit; the naive product is NaN) and
//           silu(+inf) = +inf
enum class Unary { Exp, Relu, Neg, Sqrt, Ln, Sigmoid, Silu };
//   Add/Sub/Mul/Div   x op y (IEEE: 0/0 = NaN, 1/+-0 = +-inf, inf - inf = NaN)
//   Max/Min           NaN if either operand is NaN (torch.maximum/minimum); max(-0, +0) = +0 and
//                     min(-0, +0) = -0 in either argument order.
enum class Binary { Add, Sub, Mul, Div, Max, Min };

// y[i] = op(x[i]) for i < n.
void unary(Unary op, const double* x, size_t n, double* y);
// out[i] = op(x[i], y[i]) for i < n.
void binary(Binary op, const double* x, const double* y, size_t n, double* out);

// Scalar forms of the ops above (the exact functions the array versions apply).
double unary(Unary op, double x);
double binary(Binary op, double x, double y);

// ---- Row normalisations (norms.cpp) ----

// Row softmax, max-subtracted: m = max_j x[j]; e_j = exp(x[j] - m); y[j] = e_j / sum_j e_j (sum
// left to right). Special rows:
//  * every entry -inf (or cols == 0): y = 0 everywhere (defined, NaN-free; there is no mass to
//    distribute). -inf entries in other rows get exactly 0.
//  * any NaN in the row: the whole row is NaN.
//  * any +inf in the row: the whole row is NaN (inf - inf, as PyTorch).
void softmax_rows(int64_t rows, int64_t cols, const double* x, double* y);

// RMSNorm (torch.nn.functional.rms_norm): r = 1 / sqrt(sum_j x[j]^2 / cols + eps) (sum left to
// right), y[j] = (x[j] * r) * w[j]; `weight` (cols values) may be null, meaning w = 1.
void rmsnorm_rows(int64_t rows, int64_t cols, const double* x, const double* weight, double eps,
                  double* y);

// ---- SwiGLU (swiglu.cpp) ----

// Order of the two halves within a row of gate_up.
enum class HalfOrder { GateFirst, UpFirst };

// gate_up is rows x (2*inter): each row is [gate | up] (GateFirst) or [up | gate] (UpFirst).
// out is rows x inter: out = silu(g) * u with silu as Unary::Silu. With a clamp L (DeepSeek-V4
// swiglu_limit, KERNELS.md 2.3), first g = min(g, L) and u = clamp(u, -L, L). L must be >= 0 and
// not NaN. NaN inputs propagate.
void swiglu(int64_t rows, int64_t inter, const double* gate_up, double* out,
            std::optional<double> clamp = std::nullopt, HalfOrder order = HalfOrder::GateFirst);

// ---- Top-k (topk.cpp) ----

// Per row of scores (rows x cols), the k largest entries in descending order, ties broken by the
// LOWER column index (a stable descending sort, TileKernels stable_topk, KERNELS.md 1.2). NaN is
// ranked as -inf; -0 and +0 tie. So -inf/NaN entries are picked only when the row has fewer than k
// other entries, in index order. indices (rows x k) gets column indices; values (rows x k, may be
// null) gets the gathered scores, values[r,j] == scores[r, indices[r,j]] bit for bit (a selected
// NaN comes back as NaN). Requires 0 <= k <= cols and cols <= INT32_MAX.
void topk(int64_t rows, int64_t cols, const double* scores, int64_t k, int32_t* indices,
          double* values);

}  // namespace npusim::ref
