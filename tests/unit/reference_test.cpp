// Unit tests for the CPU reference kernels (kernels/reference/reference.hpp).
#include "kernels/reference/reference.hpp"

#include <cblas.h>
#include <gtest/gtest.h>
#include <tbb/global_control.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

namespace npusim::ref {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<double> random_vec(size_t n, uint64_t seed, double lo = -1, double hi = 1) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

std::vector<double> random_ints(size_t n, uint64_t seed, int lo, int hi) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

bool same_bits(double a, double b) {
  return std::bit_cast<uint64_t>(a) == std::bit_cast<uint64_t>(b);
}

// Naive triple loop in fp64 (also for float inputs), returning the result and an error bound per
// element: sum_k |a||b| (the rounding-error scale of a length-k dot product).
struct Naive {
  std::vector<double> c, abs;
};
template <class T>
Naive naive_gemm(int64_t m, int64_t n, int64_t k, const T* a, const T* b) {
  Naive r{std::vector<double>(m * n, 0.0), std::vector<double>(m * n, 0.0)};
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p) {
        r.c[i * n + j] += double(a[i * k + p]) * double(b[p * n + j]);
        r.abs[i * n + j] += std::abs(double(a[i * k + p]) * double(b[p * n + j]));
      }
  return r;
}

// |got - naive| <= 2 k u sum|a||b| (standard dot-product bound, u = unit roundoff of T).
template <class T>
void expect_close_to_naive(int64_t m, int64_t n, int64_t k, const std::vector<T>& got,
                           const Naive& want, const char* what) {
  const double u = std::numeric_limits<T>::epsilon() / 2;
  for (int64_t i = 0; i < m * n; ++i) {
    const double tol = 2.0 * double(k + 2) * u * want.abs[i] + 1e-300;
    ASSERT_LE(std::abs(double(got[i]) - want.c[i]), tol) << what << " element " << i;
  }
}

const std::vector<std::array<int64_t, 3>> kOddShapes = {
    {1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {300, 261, 19}, {2, 530, 9}};  // last two span C tiles

// ---- GEMM ----

TEST(RefGemm, DoubleMatchesNaiveLoopOnOddShapes) {
  for (auto [m, n, k] : kOddShapes) {
    auto a = random_vec(m * k, 1), b = random_vec(k * n, 2);
    std::vector<double> c(m * n, kNaN);  // not accumulating: old C must be ignored (even NaN)
    gemm(m, n, k, a.data(), b.data(), c.data());
    expect_close_to_naive(m, n, k, c, naive_gemm(m, n, k, a.data(), b.data()), "dgemm");
  }
}

TEST(RefGemm, FloatMatchesNaiveLoopOnOddShapesWithFp32Bound) {
  for (auto [m, n, k] : kOddShapes) {
    auto ad = random_vec(m * k, 3), bd = random_vec(k * n, 4);
    std::vector<float> a(ad.begin(), ad.end()), b(bd.begin(), bd.end()), c(m * n, NAN);
    gemm(m, n, k, a.data(), b.data(), c.data());
    expect_close_to_naive(m, n, k, c, naive_gemm(m, n, k, a.data(), b.data()), "sgemm");
  }
}

TEST(RefGemm, SmallIntegerInputsAreExactInBothPrecisions) {
  for (auto [m, n, k] : kOddShapes) {
    auto ad = random_ints(m * k, 5, -8, 8), bd = random_ints(k * n, 6, -8, 8);
    const auto want = naive_gemm(m, n, k, ad.data(), bd.data());
    std::vector<double> cd(m * n);
    gemm(m, n, k, ad.data(), bd.data(), cd.data());
    EXPECT_TRUE(same_bytes(cd, want.c)) << m << "x" << n << "x" << k;
    std::vector<float> af(ad.begin(), ad.end()), bf(bd.begin(), bd.end()), cf(m * n);
    gemm(m, n, k, af.data(), bf.data(), cf.data());
    EXPECT_TRUE(same_bytes(cf, std::vector<float>(want.c.begin(), want.c.end())));
  }
}

TEST(RefGemm, Fp32AccumulationDiffersFromFp64WhereItMust) {
  // 2^24 + 1 - 2^24: fp32 accumulation loses the 1, fp64 keeps it.
  const std::vector<double> a = {16777216.0, 1.0, -16777216.0}, b = {1, 1, 1};
  double cd = 0;
  gemm(1, 1, 3, a.data(), b.data(), &cd);
  EXPECT_EQ(cd, 1.0);
  const std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end());
  float cf = 0;
  gemm(1, 1, 3, af.data(), bf.data(), &cf);
  EXPECT_EQ(cf, 0.0f);
}

TEST(RefGemm, AccumulateAddsProductToC) {
  for (auto [m, n, k] : kOddShapes) {
    auto a = random_ints(m * k, 7, -4, 4), b = random_ints(k * n, 8, -4, 4);
    auto c0 = random_ints(m * n, 9, -100, 100);
    const auto prod = naive_gemm(m, n, k, a.data(), b.data());
    std::vector<double> c = c0;
    gemm(m, n, k, a.data(), b.data(), c.data(), /*accumulate=*/true);
    for (int64_t i = 0; i < m * n; ++i) ASSERT_EQ(c[i], c0[i] + prod.c[i]);
    std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end()), cf(c0.begin(), c0.end());
    gemm(m, n, k, af.data(), bf.data(), cf.data(), true);
    for (int64_t i = 0; i < m * n; ++i) ASSERT_EQ(cf[i], float(c0[i] + prod.c[i]));
  }
}

TEST(RefGemm, EmptySizesAndZeroK) {
  std::vector<double> c = {5, 6, 7, 8};
  const double* none = nullptr;
  gemm(0, 2, 3, none, none, nullptr);
  gemm(2, 0, 3, none, none, nullptr);
  gemm(2, 2, 0, none, none, c.data(), /*accumulate=*/true);  // empty sum: unchanged
  EXPECT_EQ(c, (std::vector<double>{5, 6, 7, 8}));
  gemm(2, 2, 0, none, none, c.data());  // empty sum: zeros
  EXPECT_EQ(c, (std::vector<double>{0, 0, 0, 0}));
}

TEST(RefGemm, RejectsNegativeSizes) {
  double x = 0;
  EXPECT_THROW(gemm(-1, 1, 1, &x, &x, &x), std::invalid_argument);
  EXPECT_THROW(gemm(1, -1, 1, &x, &x, &x), std::invalid_argument);
  EXPECT_THROW(gemm(1, 1, -1, &x, &x, &x), std::invalid_argument);
  EXPECT_THROW(batched_gemm(-1, 1, 1, 1, &x, &x, &x), std::invalid_argument);
}

TEST(RefBatchedGemm, EachBatchEqualsItsOwnGemm) {
  const int64_t batch = 5, m = 17, n = 33, k = 65;
  auto a = random_vec(batch * m * k, 10), b = random_vec(batch * k * n, 11);
  std::vector<double> c(batch * m * n);
  batched_gemm(batch, m, n, k, a.data(), b.data(), c.data());
  for (int64_t i = 0; i < batch; ++i) {
    std::vector<double> one(m * n);
    gemm(m, n, k, a.data() + i * m * k, b.data() + i * k * n, one.data());
    EXPECT_TRUE(
        same_bytes(one, std::vector<double>(c.begin() + i * m * n, c.begin() + (i + 1) * m * n)))
        << "batch " << i;
    std::vector<double> got(c.begin() + i * m * n, c.begin() + (i + 1) * m * n);
    expect_close_to_naive(
        m, n, k, got, naive_gemm(m, n, k, a.data() + i * m * k, b.data() + i * k * n), "batched");
  }
  batched_gemm(0, m, n, k, nullptr, nullptr, nullptr);  // no batches: nothing to do
}

// Per-group naive reference for grouped_gemm.
std::vector<double> naive_grouped(const std::vector<int64_t>& rows, int64_t n, int64_t k,
                                  const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> c;
  int64_t off = 0;
  for (size_t g = 0; g < rows.size(); ++g) {
    auto r = naive_gemm(rows[g], n, k, a.data() + off * k, b.data() + g * k * n);
    c.insert(c.end(), r.c.begin(), r.c.end());
    off += rows[g];
  }
  return c;
}

TEST(RefGroupedGemm, MatchesPerGroupLoopWithEmptyGroups) {
  const int64_t n = 33, k = 19;
  for (const std::vector<int64_t>& rows : {std::vector<int64_t>{3, 0, 5, 0, 1},
                                           {0, 0, 7},
                                           {4, 0, 0},
                                           {1, 1, 1, 1},
                                           {0, 300, 2, 0, 260}}) {
    const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t{0});
    auto a = random_ints(total * k, 12, -5, 5), b = random_ints(rows.size() * k * n, 13, -5, 5);
    std::vector<double> c(total * n, kNaN);
    grouped_gemm(rows, n, k, a.data(), b.data(), c.data());
    EXPECT_TRUE(same_bytes(c, naive_grouped(rows, n, k, a, b)));  // integer inputs: exact
  }
}

TEST(RefGroupedGemm, SingleGroupHoldingAllRowsEqualsPlainGemm) {
  const int64_t n = 45, k = 70, rows = 41;
  const std::vector<int64_t> groups = {0, 0, rows, 0};
  auto a = random_vec(rows * k, 14), b = random_vec(groups.size() * k * n, 15);
  std::vector<double> c(rows * n), want(rows * n);
  grouped_gemm(groups, n, k, a.data(), b.data(), c.data());
  gemm(rows, n, k, a.data(), b.data() + 2 * k * n, want.data());
  EXPECT_TRUE(same_bytes(c, want));
}

TEST(RefGroupedGemm, AllGroupsEmptyOrNoGroupsWritesNothing) {
  grouped_gemm({}, 4, 4, nullptr, nullptr, nullptr);
  grouped_gemm({0, 0, 0}, 4, 4, nullptr, nullptr, nullptr);
  SUCCEED();
}

TEST(RefGroupedGemm, RejectsNegativeGroupRows) {
  double x = 0;
  EXPECT_THROW(grouped_gemm({1, -1}, 1, 1, &x, &x, &x), std::invalid_argument);
}

// ---- Elementwise ----

// Expects bit-exact equality; NaN matches any NaN.
void expect_same(double got, double want, const char* what, double in) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << what << "(" << in << ") = " << got;
  } else {
    EXPECT_TRUE(same_bits(got, want)) << what << "(" << in << ") = " << got << ", want " << want;
  }
}

TEST(RefUnary, SpecialValuesOfEveryOp) {
  const double tiny = 1e-310;  // subnormal
  struct Case {
    Unary op;
    const char* name;
    std::vector<std::pair<double, double>> io;
  };
  const std::vector<Case> cases = {
      {Unary::Exp,
       "exp",
       {{0.0, 1.0},
        {-0.0, 1.0},
        {kInf, kInf},
        {-kInf, 0.0},
        {kNaN, kNaN},
        {800, kInf},
        {-800, 0.0},
        {1.0, std::exp(1.0)}}},
      {Unary::Relu,
       "relu",
       {{2.5, 2.5},
        {-2.5, 0.0},
        {0.0, 0.0},
        {-0.0, 0.0},
        {kInf, kInf},
        {-kInf, 0.0},
        {kNaN, kNaN},
        {tiny, tiny},
        {-tiny, 0.0}}},
      {Unary::Neg,
       "neg",
       {{2.5, -2.5}, {0.0, -0.0}, {-0.0, 0.0}, {kInf, -kInf}, {-kInf, kInf}, {kNaN, kNaN}}},
      {Unary::Sqrt,
       "sqrt",
       {{4.0, 2.0},
        {0.0, 0.0},
        {-0.0, -0.0},
        {kInf, kInf},
        {-1.0, kNaN},
        {-kInf, kNaN},
        {kNaN, kNaN},
        {2.0, std::sqrt(2.0)}}},
      {Unary::Ln,
       "ln",
       {{1.0, 0.0},
        {0.0, -kInf},
        {-0.0, -kInf},
        {kInf, kInf},
        {-1.0, kNaN},
        {kNaN, kNaN},
        {std::exp(2.0), std::log(std::exp(2.0))}}},
      {Unary::Sigmoid,
       "sigmoid",
       {{0.0, 0.5},
        {-0.0, 0.5},
        {kInf, 1.0},
        {-kInf, 0.0},
        {kNaN, kNaN},
        {800, 1.0},
        {-800, 0.0},
        {2.0, 1.0 / (1.0 + std::exp(-2.0))}}},
      {Unary::Silu,
       "silu",
       {{0.0, 0.0},
        {kInf, kInf},
        {-kInf, -0.0},
        {kNaN, kNaN},
        {800, 800},
        {-800, -0.0},
        {2.0, 2.0 / (1.0 + std::exp(-2.0))}}},
  };
  for (const auto& c : cases) {
    std::vector<double> x, y(c.io.size());
    for (auto [in, out] : c.io) x.push_back(in);
    unary(c.op, x.data(), x.size(), y.data());
    for (size_t i = 0; i < x.size(); ++i) {
      expect_same(y[i], c.io[i].second, c.name, x[i]);
      expect_same(unary(c.op, x[i]), y[i], c.name, x[i]);  // scalar form agrees
    }
  }
}

TEST(RefUnary, SigmoidAndSiluAccurateForLargeNegativeInputs) {
  // The stable form keeps relative accuracy where 1 - 1/(1+e) would cancel.
  for (double x : {-20.0, -40.0, -700.0}) {
    const double want = std::exp(x) / (1 + std::exp(x));
    EXPECT_NEAR(unary(Unary::Sigmoid, x) / want, 1.0, 1e-15) << x;
    EXPECT_NEAR(unary(Unary::Silu, x) / (x * want), 1.0, 1e-15) << x;
  }
  const double huge_neg = -1e308;  // exp underflows to 0: silu is -0, not NaN
  EXPECT_FALSE(std::isnan(unary(Unary::Silu, huge_neg)));
}

TEST(RefUnary, InPlaceAndEmpty) {
  std::vector<double> x = {-1, 0, 4};
  unary(Unary::Sqrt, x.data(), x.size(), x.data());
  EXPECT_TRUE(std::isnan(x[0]));
  EXPECT_EQ(x[1], 0.0);
  EXPECT_EQ(x[2], 2.0);
  unary(Unary::Exp, nullptr, 0, nullptr);
}

TEST(RefBinary, SpecialValuesOfEveryOp) {
  struct Case {
    Binary op;
    const char* name;
    std::vector<std::array<double, 3>> xyo;
  };
  const std::vector<Case> cases = {
      {Binary::Add,
       "add",
       {{1, 2, 3},
        {kInf, -kInf, kNaN},
        {kInf, 1, kInf},
        {kNaN, 1, kNaN},
        {-0.0, -0.0, -0.0},
        {-0.0, 0.0, 0.0},
        {1e308, 1e308, kInf}}},
      {Binary::Sub,
       "sub",
       {{1, 2, -1}, {kInf, kInf, kNaN}, {0.0, 0.0, 0.0}, {-0.0, 0.0, -0.0}, {1, kNaN, kNaN}}},
      {Binary::Mul,
       "mul",
       {{2, 3, 6}, {kInf, 0.0, kNaN}, {-1, 0.0, -0.0}, {kInf, -2, -kInf}, {kNaN, 0, kNaN}}},
      {Binary::Div,
       "div",
       {{6, 3, 2},
        {1, 0.0, kInf},
        {1, -0.0, -kInf},
        {0.0, 0.0, kNaN},
        {kInf, kInf, kNaN},
        {1, kInf, 0.0},
        {-1, kInf, -0.0}}},
      {Binary::Max,
       "max",
       {{1, 2, 2},
        {2, 1, 2},
        {kNaN, 1, kNaN},
        {1, kNaN, kNaN},
        {-kInf, kInf, kInf},
        {-0.0, 0.0, 0.0},
        {0.0, -0.0, 0.0},
        {-0.0, -0.0, -0.0}}},
      {Binary::Min,
       "min",
       {{1, 2, 1},
        {2, 1, 1},
        {kNaN, 1, kNaN},
        {1, kNaN, kNaN},
        {-kInf, kInf, -kInf},
        {-0.0, 0.0, -0.0},
        {0.0, -0.0, -0.0},
        {0.0, 0.0, 0.0}}},
  };
  for (const auto& c : cases) {
    std::vector<double> x, y, out(c.xyo.size());
    for (const auto& t : c.xyo) x.push_back(t[0]), y.push_back(t[1]);
    binary(c.op, x.data(), y.data(), x.size(), out.data());
    for (size_t i = 0; i < x.size(); ++i) {
      expect_same(out[i], c.xyo[i][2], c.name, x[i]);
      expect_same(binary(c.op, x[i], y[i]), out[i], c.name, x[i]);
    }
  }
}

TEST(RefBinary, InPlaceOnEitherOperand) {
  std::vector<double> x = {1, 2, 3}, y = {10, 20, 30};
  binary(Binary::Sub, x.data(), y.data(), 3, x.data());
  EXPECT_EQ(x, (std::vector<double>{-9, -18, -27}));
  binary(Binary::Add, x.data(), y.data(), 3, y.data());
  EXPECT_EQ(y, (std::vector<double>{1, 2, 3}));
}

// ---- Softmax ----

TEST(RefSoftmax, RowsSumToOneAndMatchFormula) {
  const int64_t rows = 7, cols = 129;
  auto x = random_vec(rows * cols, 20, -30, 30);
  std::vector<double> y(rows * cols);
  softmax_rows(rows, cols, x.data(), y.data());
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0, m = -kInf, z = 0;
    for (int64_t j = 0; j < cols; ++j) sum += y[r * cols + j], m = std::max(m, x[r * cols + j]);
    for (int64_t j = 0; j < cols; ++j) z += std::exp(x[r * cols + j] - m);
    EXPECT_NEAR(sum, 1.0, 1e-14);
    for (int64_t j = 0; j < cols; ++j) {
      EXPECT_GE(y[r * cols + j], 0.0);
      EXPECT_NEAR(y[r * cols + j], std::exp(x[r * cols + j] - m) / z, 1e-15);
    }
  }
  const std::vector<double> x3 = {0, std::log(2.0), std::log(5.0)};
  std::vector<double> y3(3);
  softmax_rows(1, 3, x3.data(), y3.data());
  EXPECT_NEAR(y3[0], 1.0 / 8, 1e-16);
  EXPECT_NEAR(y3[1], 2.0 / 8, 1e-16);
  EXPECT_NEAR(y3[2], 5.0 / 8, 1e-16);
}

TEST(RefSoftmax, InvariantToAddingAConstant) {
  // Multiples of 1/8 in a small range: x + c is exact, so the max-subtracted exponents are
  // identical and the outputs must be bit-identical.
  const int64_t rows = 4, cols = 33;
  auto xi = random_ints(rows * cols, 21, -80, 80);
  std::vector<double> x(rows * cols), xs(rows * cols), y(rows * cols), ys(rows * cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = xi[i] / 8, xs[i] = x[i] + 1000.0;
  softmax_rows(rows, cols, x.data(), y.data());
  softmax_rows(rows, cols, xs.data(), ys.data());
  EXPECT_TRUE(same_bytes(y, ys));
  // Arbitrary reals and a huge shift: equal to rounding (the shift itself rounds x).
  auto xr = random_vec(cols, 22, -5, 5), xrs = xr;
  for (auto& v : xrs) v -= 12345.678;
  std::vector<double> a(cols), b(cols);
  softmax_rows(1, cols, xr.data(), a.data());
  softmax_rows(1, cols, xrs.data(), b.data());
  for (int64_t j = 0; j < cols; ++j) EXPECT_NEAR(a[j], b[j], 1e-11 * a[j]);
}

TEST(RefSoftmax, MinusInfEntriesGetExactlyZero) {
  const std::vector<double> x = {-kInf, 1.0, -kInf, 1.0, -kInf};
  std::vector<double> y(5);
  softmax_rows(1, 5, x.data(), y.data());
  EXPECT_TRUE(same_bytes(y, std::vector<double>{0.0, 0.5, 0.0, 0.5, 0.0}));
}

TEST(RefSoftmax, AllMinusInfRowIsAllZeroNotNaN) {
  const std::vector<double> x = {1, 2, 3, -kInf, -kInf, -kInf};
  std::vector<double> y(6, kNaN);
  softmax_rows(2, 3, x.data(), y.data());
  for (int j = 3; j < 6; ++j) EXPECT_TRUE(same_bits(y[j], 0.0)) << y[j];
  EXPECT_NEAR(y[0] + y[1] + y[2], 1.0, 1e-15);
}

TEST(RefSoftmax, NaNOrPlusInfMakesTheRowNaN) {
  const std::vector<double> x = {1, kNaN, 2, 1, kInf, 2, -kInf, kNaN, -kInf};
  std::vector<double> y(9);
  softmax_rows(3, 3, x.data(), y.data());
  for (double v : y) EXPECT_TRUE(std::isnan(v));
}

TEST(RefSoftmax, InPlaceEqualsOutOfPlace) {
  auto x = random_vec(3 * 50, 23, -3, 3);
  std::vector<double> y(x.size()), z = x;
  softmax_rows(3, 50, x.data(), y.data());
  softmax_rows(3, 50, z.data(), z.data());
  EXPECT_TRUE(same_bytes(y, z));
}

// ---- RMSNorm ----

TEST(RefRmsnorm, MatchesFormulaWithAndWithoutWeight) {
  const int64_t rows = 5, cols = 77;
  const double eps = 1e-6;
  auto x = random_vec(rows * cols, 30, -3, 3), w = random_vec(cols, 31, 0.5, 1.5);
  std::vector<double> y(rows * cols), yw(rows * cols);
  rmsnorm_rows(rows, cols, x.data(), nullptr, eps, y.data());
  rmsnorm_rows(rows, cols, x.data(), w.data(), eps, yw.data());
  for (int64_t r = 0; r < rows; ++r) {
    long double ss = 0;
    for (int64_t j = 0; j < cols; ++j) ss += (long double)x[r * cols + j] * x[r * cols + j];
    const long double inv = 1.0L / std::sqrt(ss / cols + eps);
    double rms_out = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double want = double(x[r * cols + j] * inv);
      EXPECT_NEAR(y[r * cols + j], want, 4e-16 * std::abs(want) + 1e-300);
      EXPECT_NEAR(yw[r * cols + j], want * w[j], 8e-16 * std::abs(want * w[j]) + 1e-300);
      rms_out += y[r * cols + j] * y[r * cols + j];
    }
    EXPECT_NEAR(std::sqrt(rms_out / cols), 1.0, 1e-6);  // eps shifts it by ~eps/2
  }
}

TEST(RefRmsnorm, HandComputedRowAndEpsOnZeroRow) {
  const std::vector<double> x = {3, 4, 0, 0}, w = {2, 0.5};
  std::vector<double> y(4, kNaN);
  rmsnorm_rows(2, 2, x.data(), w.data(), 0.0 + 1e-12, y.data());
  // mean(x^2) = 12.5 -> y = x / sqrt(12.5 + 1e-12) * w
  EXPECT_NEAR(y[0], 3 / std::sqrt(12.5) * 2, 1e-12);
  EXPECT_NEAR(y[1], 4 / std::sqrt(12.5) * 0.5, 1e-12);
  EXPECT_TRUE(same_bits(y[2], 0.0));  // zero row with eps > 0: zeros, no NaN
  EXPECT_TRUE(same_bits(y[3], 0.0));
}

// ---- SwiGLU ----

double silu_ref(double v) {
  return v / (1 + std::exp(-v));
}

TEST(RefSwiglu, GateFirstMatchesFormula) {
  const int64_t rows = 3, inter = 11;
  auto gu = random_vec(rows * 2 * inter, 40, -6, 6);
  std::vector<double> out(rows * inter);
  swiglu(rows, inter, gu.data(), out.data());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < inter; ++j) {
      const double g = gu[r * 2 * inter + j], u = gu[r * 2 * inter + inter + j];
      EXPECT_NEAR(out[r * inter + j], silu_ref(g) * u, 1e-15 * (1 + std::abs(g * u)));
      EXPECT_TRUE(same_bits(out[r * inter + j], unary(Unary::Silu, g) * u));
    }
}

TEST(RefSwiglu, UpFirstReadsTheHalvesSwapped) {
  const int64_t rows = 4, inter = 9;
  auto gu = random_vec(rows * 2 * inter, 41, -15, 15);
  std::vector<double> ug(gu.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < inter; ++j) {
      ug[r * 2 * inter + j] = gu[r * 2 * inter + inter + j];
      ug[r * 2 * inter + inter + j] = gu[r * 2 * inter + j];
    }
  for (std::optional<double> clamp : {std::optional<double>{}, std::optional<double>{7.0}}) {
    std::vector<double> a(rows * inter), b(rows * inter);
    swiglu(rows, inter, gu.data(), a.data(), clamp, HalfOrder::GateFirst);
    swiglu(rows, inter, ug.data(), b.data(), clamp, HalfOrder::UpFirst);
    EXPECT_TRUE(same_bytes(a, b));
    swiglu(rows, inter, ug.data(), b.data(), clamp, HalfOrder::GateFirst);
    EXPECT_FALSE(same_bytes(a, b));  // the order really matters
  }
}

TEST(RefSwiglu, ClampAppliedAtPlusMinusLimitBoundaries) {
  const double L = 10;
  const double below = std::nextafter(L, 0.0), above = std::nextafter(L, 100.0);
  // gate: min(g, L) (no lower clamp); up: clamp(u, -L, L).
  const std::vector<double> g = {below, L, above, 1000, -1000, 3, 3, 3, 3, 3, 3};
  const std::vector<double> u = {2, 2, 2, 2, 2, below, L, above, 1000, -above, -1000};
  const int64_t inter = static_cast<int64_t>(g.size());
  std::vector<double> gu(g), out(inter), raw(inter);
  gu.insert(gu.end(), u.begin(), u.end());
  swiglu(1, inter, gu.data(), out.data(), L);
  swiglu(1, inter, gu.data(), raw.data());
  const double sL = unary(Unary::Silu, L), s3 = unary(Unary::Silu, 3);
  const std::vector<double> want = {unary(Unary::Silu, below) * 2,
                                    sL * 2,
                                    sL * 2,
                                    sL * 2,
                                    unary(Unary::Silu, -1000) * 2,
                                    s3 * below,
                                    s3 * L,
                                    s3 * L,
                                    s3 * L,
                                    s3 * -L,
                                    s3 * -L};
  for (int64_t j = 0; j < inter; ++j)
    EXPECT_TRUE(same_bits(out[j], want[j])) << j << ": " << out[j];
  EXPECT_TRUE(same_bits(out[0], raw[0]));  // strictly inside: untouched
  EXPECT_TRUE(same_bits(out[1], raw[1]));  // exactly L: untouched
  EXPECT_GT(raw[2], out[2]);               // just above L: clamped
  EXPECT_GT(raw[3], out[3] * 50);
  EXPECT_EQ(out[4], raw[4]);       // gate has no lower clamp
  EXPECT_EQ(raw[9], s3 * -above);  // without clamp nothing happens
}

TEST(RefSwiglu, NaNPropagatesAndBadClampThrows) {
  const std::vector<double> gu = {kNaN, 1.0, 1.0, kNaN};
  std::vector<double> out(2);
  swiglu(1, 2, gu.data(), out.data(), 5.0);
  EXPECT_TRUE(std::isnan(out[0]));
  EXPECT_TRUE(std::isnan(out[1]));
  EXPECT_THROW(swiglu(1, 2, gu.data(), out.data(), -1.0), std::invalid_argument);
  EXPECT_THROW(swiglu(1, 2, gu.data(), out.data(), kNaN), std::invalid_argument);
}

// ---- Top-k ----

std::vector<int32_t> topk_idx(const std::vector<double>& row, int64_t k,
                              std::vector<double>* vals = nullptr) {
  std::vector<int32_t> idx(k);
  std::vector<double> v(k);
  topk(1, static_cast<int64_t>(row.size()), row.data(), k, idx.data(), v.data());
  if (vals) *vals = v;
  return idx;
}

TEST(RefTopk, AllEqualRowReturnsFirstKIndices) {
  const std::vector<double> row(10, 0.25);
  EXPECT_EQ(topk_idx(row, 4), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(topk_idx(std::vector<double>(6, -kInf), 3), (std::vector<int32_t>{0, 1, 2}));
}

TEST(RefTopk, DescendingWithLowerIndexWinningTies) {
  const std::vector<double> row = {1, 3, 3, 2, 3, 0.0, -0.0, 5};
  std::vector<double> vals;
  EXPECT_EQ(topk_idx(row, 5, &vals), (std::vector<int32_t>{7, 1, 2, 4, 3}));
  EXPECT_EQ(vals, (std::vector<double>{5, 3, 3, 3, 2}));
  EXPECT_EQ(topk_idx({-0.0, 0.0}, 1), (std::vector<int32_t>{0}));  // signed zeros tie
  EXPECT_EQ(topk_idx({0.0, -0.0}, 1), (std::vector<int32_t>{0}));
}

TEST(RefTopk, MinusInfAndNaNOnlyWhenFewerThanKOthers) {
  const std::vector<double> row = {-kInf, kNaN, 1.0, -kInf, -5.0, kInf};
  std::vector<double> vals;
  EXPECT_EQ(topk_idx(row, 3, &vals), (std::vector<int32_t>{5, 2, 4}));
  // k = 5 needs two of {-inf@0, NaN@1, -inf@3}: NaN ranks as -inf, so index order decides.
  EXPECT_EQ(topk_idx(row, 5, &vals), (std::vector<int32_t>{5, 2, 4, 0, 1}));
  EXPECT_TRUE(same_bits(vals[3], -kInf));
  EXPECT_TRUE(std::isnan(vals[4]));  // values gather the original score
  EXPECT_EQ(topk_idx({kNaN, -kInf, -1e300}, 1), (std::vector<int32_t>{2}));
  EXPECT_EQ(topk_idx({kNaN, -kInf, kNaN}, 2), (std::vector<int32_t>{0, 1}));
}

TEST(RefTopk, KEqualsColsIsAFullStableSortAndMatchesStableSortOnRandomTies) {
  const int64_t rows = 50, cols = 40;
  auto s = random_ints(rows * cols, 50, 0, 6);  // many ties
  for (size_t i = 0; i < s.size(); i += 7) s[i] = (i % 3 == 0) ? kNaN : -kInf;
  for (int64_t k : {int64_t{1}, int64_t{8}, cols}) {
    std::vector<int32_t> idx(rows * k);
    std::vector<double> vals(rows * k);
    topk(rows, cols, s.data(), k, idx.data(), vals.data());
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<int32_t> order(cols);
      std::iota(order.begin(), order.end(), 0);
      auto key = [&](int32_t j) { return std::isnan(s[r * cols + j]) ? -kInf : s[r * cols + j]; };
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return key(a) > key(b); });
      for (int64_t j = 0; j < k; ++j) {
        ASSERT_EQ(idx[r * k + j], order[j]) << "row " << r << " k " << k << " pos " << j;
        ASSERT_TRUE(same_bits(vals[r * k + j], s[r * cols + order[j]]));
      }
    }
  }
}

TEST(RefTopk, NullValuesZeroKAndBadK) {
  const std::vector<double> row = {1, 2, 3};
  std::vector<int32_t> idx(2);
  topk(1, 3, row.data(), 2, idx.data(), nullptr);
  EXPECT_EQ(idx, (std::vector<int32_t>{2, 1}));
  topk(1, 3, row.data(), 0, nullptr, nullptr);
  EXPECT_THROW(topk(1, 3, row.data(), 4, idx.data(), nullptr), std::invalid_argument);
  EXPECT_THROW(topk(1, 3, row.data(), -1, idx.data(), nullptr), std::invalid_argument);
}

// ---- Determinism ----

struct RowOutputs {
  std::vector<double> un, bin, sm, rms, sw, tv, gemm_c, grouped_c;
  std::vector<float> sgemm_c;
  std::vector<int32_t> ti;
  bool operator==(const RowOutputs& o) const {
    return same_bytes(un, o.un) && same_bytes(bin, o.bin) && same_bytes(sm, o.sm) &&
           same_bytes(rms, o.rms) && same_bytes(sw, o.sw) && same_bytes(tv, o.tv) &&
           same_bytes(ti, o.ti) && same_bytes(gemm_c, o.gemm_c) && same_bytes(sgemm_c, o.sgemm_c) &&
           same_bytes(grouped_c, o.grouped_c);
  }
};

RowOutputs run_all() {
  const int64_t rows = 8192, cols = 96, k = 8;
  static const auto x = random_vec(rows * cols, 60, -8, 8), y = random_vec(rows * cols, 61, -8, 8);
  static const auto w = random_vec(cols, 62);
  RowOutputs o;
  o.un.resize(x.size()), o.bin.resize(x.size()), o.sm.resize(x.size()), o.rms.resize(x.size());
  unary(Unary::Silu, x.data(), x.size(), o.un.data());
  binary(Binary::Div, x.data(), y.data(), x.size(), o.bin.data());
  softmax_rows(rows, cols, x.data(), o.sm.data());
  rmsnorm_rows(rows, cols, x.data(), w.data(), 1e-6, o.rms.data());
  o.sw.resize(rows * cols / 2);
  swiglu(rows, cols / 2, x.data(), o.sw.data(), 7.0);
  o.ti.resize(rows * k), o.tv.resize(rows * k);
  topk(rows, cols, x.data(), k, o.ti.data(), o.tv.data());
  // GEMMs large enough for several C tiles and the parallel path.
  const int64_t m = 600, n = 520, kk = 300;
  static const auto a = random_vec(m * kk, 63), b = random_vec(kk * n, 64);
  o.gemm_c.resize(m * n);
  gemm(m, n, kk, a.data(), b.data(), o.gemm_c.data());
  const std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end());
  o.sgemm_c.resize(m * n);
  gemm(m, n, kk, af.data(), bf.data(), o.sgemm_c.data());
  const std::vector<int64_t> groups = {100, 0, 300, 37, 0, 163};  // 600 rows, b needs 6 x (kk x n)
  static const auto bg = random_vec(groups.size() * kk * n, 65);
  o.grouped_c.resize(m * n);
  grouped_gemm(groups, n, kk, a.data(), bg.data(), o.grouped_c.data());
  return o;
}

TEST(RefDeterminism, ByteIdenticalAcrossRunsAndThreadCounts) {
  const RowOutputs first = run_all();
  EXPECT_TRUE(first == run_all()) << "two runs differ";
  {
    tbb::global_control one(tbb::global_control::max_allowed_parallelism, 1);
    EXPECT_TRUE(first == run_all()) << "single-threaded run differs";
  }
  {
    tbb::global_control many(tbb::global_control::max_allowed_parallelism, 8);
    openblas_set_num_threads(
        4);  // someone else changed OpenBLAS threading: the reference re-pins it
    EXPECT_TRUE(first == run_all()) << "8-thread run differs";
  }
}

}  // namespace
}  // namespace npusim::ref
