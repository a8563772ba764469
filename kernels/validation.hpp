// Judging a device output against its references, as KERNELS.md 5.2 and 5.4 define it:
//  1. non-finite parity: NaN / +inf / -inf at the same positions;
//  2. element-wise |a - g| <= atol + rtol |g|, atol scaled by the RMS of the golden; where the
//     same-precision emulation is itself farther off (the kernel's storage rounding points, e.g.
//     P in bf16 before P V: about 2^-9 RMS on near-zero attention outputs, above 1e-3 RMS), the
//     bound of the ratio test (4) per element, 2 |a_same - g| + atol;
//  3. global metrics: cosine difference 1 - 2<a,g>/(|a|^2 + |g|^2) (fp64), MERE and MARE
//     (relative errors |a - g| / |g|, taken over the elements where the relative part of check 2
//     governs, rtol |g| >= atol; nearer zero the absolute bound of check 2 judges. The CANN form
//     divides by |g| + 1e-7 and fails any long fp32 reduction whose output happens to sit near
//     zero, where fp32 accumulation alone gives relative errors of 0.1);
//  4. ratio test: max|a - g| <= 2 max|a_same - g| + atol, a_same the same-precision emulation.
// Integer outputs must match exactly. Top-k index sets are compared tie-aware (5.4).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernel.hpp"

namespace npusim::kernels {

struct Tolerance {
  double rtol = 0, atol_rms = 0, cos_diff = 0, mere = 0, mare = 0;
  bool exact = false;
  std::string basis;  // which row of the policy table
};

// The policy row for an output dtype (KERNELS.md 5.2).
Tolerance tolerance_for(sim::DType out);

struct Mismatch {
  size_t index;
  int64_t row, col;
  double device, golden, abs_err;
};

struct Validation {
  bool passed = false;
  size_t elements = 0, failed_elements = 0, nonfinite_mismatches = 0;
  double max_abs_err = 0, max_rel_err = 0, cos_diff = 0, mere = 0, mare = 0;
  double ratio_to_same_precision = 0;  // max|a - g| / max|a_same - g|
  double atol = 0;                     // atol_rms x RMS(golden)
  Tolerance tol;
  std::vector<std::string> failures;   // which checks failed, with figures
  std::vector<Mismatch> worst;         // up to 10, worst first (error over its bound)
};

struct OutputValidation {
  std::string tensor;
  Validation v;
};
// Reads every output of `k` from the GM image and judges it against k.references(inputs, device).
std::vector<OutputValidation> validate_outputs(const Kernel& k, const std::vector<std::vector<double>>& inputs,
                                               const std::vector<uint8_t>& gm);

Validation validate_output(const std::vector<double>& device, const Golden& golden, const Tolerance& tol, int64_t cols);

// KERNELS.md 5.4: device and reference index sets (one row each) agree when every index in their
// symmetric difference has a reference score within delta = rtol |r_k| + atol of the k-th largest
// score r_k, and (for k >= 512) they share at least `min_overlap` of their indices.
bool topk_sets_agree(const std::vector<int32_t>& device, const std::vector<int32_t>& reference,
                     const std::vector<double>& scores, double rtol, double atol, double min_overlap = 0.99);

}  // namespace npusim::kernels
