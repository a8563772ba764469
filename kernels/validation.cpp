#include "kernels/validation.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "common/errors.hpp"
#include "kernels/tensor_io.hpp"

namespace npusim::kernels {

Tolerance tolerance_for(sim::DType out) {
  switch (out) {
    case sim::DType::Fp32:
      return {std::ldexp(1.0, -13), 1e-5, 1e-9, std::ldexp(1.0, -13), 10 * std::ldexp(1.0, -13), false,
              "fp32 output, fp32 accumulation"};
    case sim::DType::Fp16:
      return {std::ldexp(1.0, -10), 1e-3, 1e-6, std::ldexp(1.0, -10), 10 * std::ldexp(1.0, -10), false,
              "fp16 output, fp32 accumulation"};
    case sim::DType::Bf16:
      return {std::ldexp(1.0, -6), 1e-3, 1e-5, std::ldexp(1.0, -7), 10 * std::ldexp(1.0, -7), false,
              "bf16 output, fp32 accumulation"};
    default:
      return {0, 0, 0, 0, 0, true, "integer output: exact"};
  }
}

Validation validate_output(const std::vector<double>& a, const Golden& golden, const Tolerance& tol, int64_t cols) {
  const std::vector<double>& g = golden.exact;
  Validation v;
  v.tol = tol;
  v.elements = a.size();
  if (a.size() != g.size()) {
    v.failures.push_back(fmt::format("size mismatch: device {} vs golden {}", a.size(), g.size()));
    return v;
  }
  // RMS of the finite golden values scales the absolute tolerance.
  double sum_sq = 0;
  size_t finite = 0;
  for (double x : g)
    if (std::isfinite(x)) sum_sq += x * x, ++finite;
  const double rms = finite ? std::sqrt(sum_sq / finite) : 0.0;
  v.atol = tol.atol_rms * (rms > 0 ? rms : 1.0);
  // Relative metrics where the relative part of the element bound governs (rtol |g| >= atol).
  const double rel_floor = tol.rtol > 0 ? v.atol / tol.rtol : v.atol;

  struct Scored {
    double score;
    size_t i;
  };
  std::vector<Scored> bad;
  double dot = 0, na = 0, ng = 0, rel_sum = 0, same_max = 0;
  size_t rel_n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const bool fa = std::isfinite(a[i]), fg = std::isfinite(g[i]);
    if (!fa || !fg) {
      const bool same = (std::isnan(a[i]) && std::isnan(g[i])) || (!std::isnan(a[i]) && a[i] == g[i]);
      if (!same) {
        ++v.nonfinite_mismatches;
        bad.push_back({INFINITY, i});
      }
      continue;
    }
    const double err = std::fabs(a[i] - g[i]);
    v.max_abs_err = std::max(v.max_abs_err, err);
    if (!golden.same_precision.empty() && std::isfinite(golden.same_precision[i]))
      same_max = std::max(same_max, std::fabs(golden.same_precision[i] - g[i]));
    // An element the kernel's own storage rounding (the same-precision emulation: P in bf16 before
    // P V, say) already puts outside atol + rtol |g| is judged as the ratio test judges the whole
    // tensor: within twice the emulation's error there, plus atol.
    double bound = tol.exact ? 0.0 : v.atol + tol.rtol * std::fabs(g[i]);
    if (!tol.exact && !golden.same_precision.empty() && std::isfinite(golden.same_precision[i]))
      bound = std::max(bound, 2 * std::fabs(golden.same_precision[i] - g[i]) + v.atol);
    if (err > bound) {
      ++v.failed_elements;
      bad.push_back({bound > 0 ? err / bound : INFINITY, i});
    }
    if (std::fabs(g[i]) >= rel_floor && g[i] != 0) {
      const double rel = err / std::fabs(g[i]);
      v.max_rel_err = std::max(v.max_rel_err, rel);
      rel_sum += rel;
      ++rel_n;
    }
    dot += a[i] * g[i], na += a[i] * a[i], ng += g[i] * g[i];
  }
  v.mere = rel_n ? rel_sum / rel_n : 0.0;
  v.mare = v.max_rel_err;
  v.cos_diff = (na + ng) > 0 ? 1.0 - 2.0 * dot / (na + ng) : 0.0;
  v.ratio_to_same_precision = same_max > 0 ? v.max_abs_err / same_max : (v.max_abs_err > 0 ? INFINITY : 0.0);

  if (v.nonfinite_mismatches) v.failures.push_back(fmt::format("non-finite parity: {} positions differ", v.nonfinite_mismatches));
  if (v.failed_elements)
    v.failures.push_back(fmt::format("element-wise: {} of {} elements exceed atol {:.3g} + rtol {:.3g} |g| (and twice "
                                     "the same-precision error there)", v.failed_elements, v.elements, v.atol, tol.rtol));
  if (!tol.exact) {
    if (v.cos_diff > tol.cos_diff) v.failures.push_back(fmt::format("cosine difference {:.3g} > {:.3g}", v.cos_diff, tol.cos_diff));
    if (v.mere > tol.mere) v.failures.push_back(fmt::format("MERE {:.3g} > {:.3g}", v.mere, tol.mere));
    if (v.mare > tol.mare) v.failures.push_back(fmt::format("MARE {:.3g} > {:.3g}", v.mare, tol.mare));
    if (!golden.same_precision.empty() && v.max_abs_err > 2 * same_max + v.atol)
      v.failures.push_back(fmt::format("ratio test: max error {:.3g} > 2 x same-precision error {:.3g} + atol {:.3g}",
                                       v.max_abs_err, same_max, v.atol));
  }
  std::sort(bad.begin(), bad.end(), [](const Scored& x, const Scored& y) {
    return x.score != y.score ? x.score > y.score : x.i < y.i;
  });
  for (size_t j = 0; j < bad.size() && j < 10; ++j) {
    size_t i = bad[j].i;
    v.worst.push_back({i, static_cast<int64_t>(i) / cols, static_cast<int64_t>(i) % cols, a[i], g[i], std::fabs(a[i] - g[i])});
  }
  v.passed = v.failures.empty();
  return v;
}

bool topk_sets_agree(const std::vector<int32_t>& device, const std::vector<int32_t>& reference,
                     const std::vector<double>& scores, double rtol, double atol, double min_overlap) {
  const size_t k = reference.size();
  if (device.size() != k) return false;
  std::vector<double> ref_scores;
  for (int32_t i : reference)
    if (i >= 0) ref_scores.push_back(scores[i]);
  if (ref_scores.empty()) return std::set<int32_t>(device.begin(), device.end()) == std::set<int32_t>(reference.begin(), reference.end());
  const double rk = *std::min_element(ref_scores.begin(), ref_scores.end());
  const double delta = rtol * std::fabs(rk) + atol;
  std::set<int32_t> d(device.begin(), device.end()), r(reference.begin(), reference.end());
  size_t common = 0;
  for (int32_t i : d) {
    if (r.count(i)) {
      ++common;
      continue;
    }
    if (i < 0 || static_cast<size_t>(i) >= scores.size() || std::fabs(scores[i] - rk) > delta) return false;
  }
  for (int32_t i : r)
    if (!d.count(i) && (i < 0 || std::fabs(scores[i] - rk) > delta)) return false;
  return k < 512 || static_cast<double>(common) / k >= min_overlap;
}

std::vector<OutputValidation> validate_outputs(const Kernel& k, const std::vector<std::vector<double>>& inputs,
                                               const std::vector<uint8_t>& gm) {
  std::vector<TensorInfo> outs;
  std::vector<std::vector<double>> device;
  for (const auto& t : k.tensors())
    if (t.output) {
      outs.push_back(t);
      device.push_back(read_tensor(gm, t));
    }
  std::vector<Golden> golden = k.references(inputs, device);
  if (golden.size() != outs.size())
    throw InternalError(fmt::format("{} gives {} references for {} outputs", k.name(), golden.size(), outs.size()));
  std::vector<OutputValidation> r;
  for (size_t i = 0; i < outs.size(); ++i)
    r.push_back({outs[i].name, validate_output(device[i], golden[i], tolerance_for(outs[i].dtype), outs[i].cols)});
  return r;
}

}  // namespace npusim::kernels
