// Elementwise unary and binary ops in fp64, parallel over element chunks (each element
// independent).
#include <cmath>
#include <limits>

#include "kernels/reference/detail.hpp"
#include "kernels/reference/reference.hpp"

namespace npusim::ref {

double unary(Unary op, double x) {
  switch (op) {
    case Unary::Exp:
      return std::exp(x);
    case Unary::Relu:
      return std::isnan(x) ? x : (x > 0 ? x : 0.0);
    case Unary::Neg:
      return -x;
    case Unary::Sqrt:
      return std::sqrt(x);
    case Unary::Ln:
      return std::log(x);
    case Unary::Sigmoid:
      return detail::sigmoid(x);
    case Unary::Silu:
      return detail::silu(x);
  }
  detail::require(false, "unary", "unknown op");
  return 0;
}

double binary(Binary op, double x, double y) {
  switch (op) {
    case Binary::Add:
      return x + y;
    case Binary::Sub:
      return x - y;
    case Binary::Mul:
      return x * y;
    case Binary::Div:
      return x / y;
    case Binary::Max:
      if (std::isnan(x) || std::isnan(y)) return std::numeric_limits<double>::quiet_NaN();
      if (x == y) return std::signbit(x) ? y : x;  // max(-0, +0) = +0
      return x > y ? x : y;
    case Binary::Min:
      if (std::isnan(x) || std::isnan(y)) return std::numeric_limits<double>::quiet_NaN();
      if (x == y) return std::signbit(x) ? x : y;  // min(-0, +0) = -0
      return x < y ? x : y;
  }
  detail::require(false, "binary", "unknown op");
  return 0;
}

namespace {

// Applies f per element; the switch is hoisted out of the loop by instantiating per op.
template <class F>
void for_elements(size_t n, const F& f) {
  detail::for_rows(static_cast<int64_t>(n), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) f(static_cast<size_t>(i));
  });
}

template <Unary Op>
void unary_loop(const double* x, size_t n, double* y) {
  for_elements(n, [&](size_t i) { y[i] = unary(Op, x[i]); });
}

template <Binary Op>
void binary_loop(const double* x, const double* y, size_t n, double* out) {
  for_elements(n, [&](size_t i) { out[i] = binary(Op, x[i], y[i]); });
}

}  // namespace

void unary(Unary op, const double* x, size_t n, double* y) {
  switch (op) {
    case Unary::Exp:
      return unary_loop<Unary::Exp>(x, n, y);
    case Unary::Relu:
      return unary_loop<Unary::Relu>(x, n, y);
    case Unary::Neg:
      return unary_loop<Unary::Neg>(x, n, y);
    case Unary::Sqrt:
      return unary_loop<Unary::Sqrt>(x, n, y);
    case Unary::Ln:
      return unary_loop<Unary::Ln>(x, n, y);
    case Unary::Sigmoid:
      return unary_loop<Unary::Sigmoid>(x, n, y);
    case Unary::Silu:
      return unary_loop<Unary::Silu>(x, n, y);
  }
  detail::require(false, "unary", "unknown op");
}

void binary(Binary op, const double* x, const double* y, size_t n, double* out) {
  switch (op) {
    case Binary::Add:
      return binary_loop<Binary::Add>(x, y, n, out);
    case Binary::Sub:
      return binary_loop<Binary::Sub>(x, y, n, out);
    case Binary::Mul:
      return binary_loop<Binary::Mul>(x, y, n, out);
    case Binary::Div:
      return binary_loop<Binary::Div>(x, y, n, out);
    case Binary::Max:
      return binary_loop<Binary::Max>(x, y, n, out);
    case Binary::Min:
      return binary_loop<Binary::Min>(x, y, n, out);
  }
  detail::require(false, "binary", "unknown op");
}

}  // namespace npusim::ref
