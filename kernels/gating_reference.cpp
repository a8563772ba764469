// The gating kernel's references: fp64 scores, group-limited stable top-k and normalization, and
// the device's fp32 chain for the same-precision golden; picks judged tie-aware (KERNELS.md 5.4).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "kernels/gating_impl.hpp"
#include "kernels/reference/reference.hpp"
#include "kernels/rng.hpp"
#include "kernels/tensor_io.hpp"
#include "kernels/validation.hpp"

namespace npusim::kernels {

using sim::DType;
using namespace gating_impl;

namespace {

// ---- References (fp64) and the device's fp32 chain ----

float f32(double v) { return static_cast<float>(v); }

// score(x) of one row of E logits in fp64.
void score_exact(GateScore f, const double* x, int64_t E, double* s) {
  switch (f) {
    case GateScore::Sigmoid: ref::unary(ref::Unary::Sigmoid, x, static_cast<size_t>(E), s); break;
    case GateScore::Softmax: ref::softmax_rows(1, E, x, s); break;
    case GateScore::SqrtSoftplus:
      for (int64_t e = 0; e < E; ++e) s[e] = std::sqrt(x[e] > kSoftplusLinear ? x[e] : std::log1p(std::exp(x[e])));
      break;
  }
}

// The same with the device's rounding points: every vector instruction rounds once to fp32.
void score_device(GateScore f, const double* x, int64_t E, double* s) {
  switch (f) {
    case GateScore::Sigmoid:
      for (int64_t e = 0; e < E; ++e) s[e] = f32(1.0 / f32(f32(std::exp(f32(-x[e]))) + 1.0));
      break;
    case GateScore::SqrtSoftplus:
      for (int64_t e = 0; e < E; ++e) {
        const float soft = f32(std::log(f32(f32(std::exp(f32(std::min(x[e], kSoftplusLinear)))) + 1.0)));
        s[e] = f32(std::sqrt(f32(soft + std::max(static_cast<double>(f32(x[e] - kSoftplusLinear)), 0.0))));
      }
      break;
    case GateScore::Softmax: {
      const double mx = *std::max_element(x, x + E);
      double sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += s[e] = f32(std::exp(f32(x[e] - mx)));
      const float inv = f32(1.0 / f32(sum));
      for (int64_t e = 0; e < E; ++e) s[e] = f32(s[e] * inv);
      break;
    }
  }
}

std::vector<double> score_rows(GateScore f, const std::vector<double>& x, int64_t rows, int64_t cols, bool device) {
  std::vector<double> s(x.size());
  for (int64_t r = 0; r < rows; ++r) (device ? score_device : score_exact)(f, &x[r * cols], cols, &s[r * cols]);
  return s;
}

// w (one row of K) -> the final weights, in fp64 or with the device's rounding points.
void normalize_row(const GatingShape& s, double* w, bool device) {
  const int64_t K = s.topk;
  if (!s.renormalize) {
    for (int64_t j = 0; j < K; ++j) w[j] = device ? f32(w[j] * s.route_scale) : w[j] * s.route_scale;
    return;
  }
  double sum = 0;
  for (int64_t j = 0; j < K; ++j) sum += w[j];
  if (!device) {
    for (int64_t j = 0; j < K; ++j) w[j] = w[j] / (sum + s.eps) * s.route_scale;
    return;
  }
  const float r = f32(f32(1.0 / f32(f32(sum) + s.eps)) * s.route_scale);
  for (int64_t j = 0; j < K; ++j) w[j] = f32(w[j] * r);
}

// Group scores of one row of selection keys c.
std::vector<double> group_scores(const GatingShape& s, const double* c) {
  const int64_t Eg = s.experts / s.groups;
  std::vector<double> gs(s.groups);
  for (int64_t g = 0; g < s.groups; ++g) {
    std::vector<double> v(c + g * Eg, c + (g + 1) * Eg);
    if (s.group_select == GroupSelect::Max) {
      gs[g] = *std::max_element(v.begin(), v.end());
    } else {
      std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<>());
      gs[g] = v[0] + v[1];
    }
  }
  return gs;
}

std::vector<int32_t> stable_top(const std::vector<double>& v, int64_t k) {
  std::vector<int32_t> idx(k);
  ref::topk(1, static_cast<int64_t>(v.size()), v.data(), k, idx.data(), nullptr);
  return idx;
}

// c with the experts of groups outside `chosen` at -inf.
std::vector<double> masked(const GatingShape& s, const double* c, const std::vector<int32_t>& chosen) {
  const int64_t Eg = s.experts / s.groups;
  std::vector<double> m(s.experts, -kInf);
  for (int32_t g : chosen) std::copy(c + g * Eg, c + (g + 1) * Eg, m.begin() + g * Eg);
  return m;
}

// The fp32 policy's absolute tolerance for scores v: atol_rms times their RMS (KERNELS.md 5.2).
double score_atol(const std::vector<double>& v) {
  double sq = 0;
  int64_t finite = 0;
  for (double x : v)
    if (std::isfinite(x)) sq += x * x, ++finite;
  return tolerance_for(DType::Fp32).atol_rms * (finite ? std::sqrt(sq / finite) : 1.0);
}

// Picks D agree with reference picks R under keys m (KERNELS.md 5.4, delta from the fp32 policy),
// and come in non-increasing key order.
bool tie_equivalent(const std::vector<int32_t>& D, const std::vector<int32_t>& R, const std::vector<double>& m) {
  const Tolerance tol = tolerance_for(DType::Fp32);
  const double atol = score_atol(m);
  if (!topk_sets_agree(D, R, m, tol.rtol, atol)) return false;
  const double delta = tol.rtol * std::fabs(m[R.back()]) + atol;
  for (size_t j = 1; j < D.size(); ++j)
    if (m[D[j]] > m[D[j - 1]] + delta) return false;
  return true;
}

// Selection keys c = s + bias of row t (inputs in tensors() order: the bias follows the scores).
std::vector<double> keys_row(const GatingShape& s, const std::vector<double>& scores,
                             const std::vector<std::vector<double>>& in, int64_t t) {
  std::vector<double> c(scores.begin() + t * s.experts, scores.begin() + (t + 1) * s.experts);
  if (s.bias && !s.hash_vocab)
    for (int64_t e = 0; e < s.experts; ++e) c[e] += in[1][e];
  return c;
}

// The stable picks of one row of keys (KERNELS.md 1.2).
std::vector<int32_t> stable_picks(const GatingShape& s, const std::vector<double>& c) {
  if (!s.grouped()) return stable_top(c, s.topk);
  return stable_top(masked(s, c.data(), stable_top(group_scores(s, c.data()), s.topk_groups)), s.topk);
}

// Whether device row D is a legitimate choice for keys c: tie-equivalent to the stable picks, or,
// with groups, to the picks under a group choice that is itself tie-equivalent to the reference's.
bool row_accepted(const GatingShape& s, const std::vector<int32_t>& D, const std::vector<double>& c) {
  std::set<int32_t> distinct;
  for (int32_t e : D)
    if (e < 0 || e >= s.experts || !distinct.insert(e).second) return false;
  if (!s.grouped()) return tie_equivalent(D, stable_top(c, s.topk), c);
  const std::vector<double> gs = group_scores(s, c.data());
  const std::vector<int32_t> ref_groups = stable_top(gs, s.topk_groups);
  std::vector<double> m = masked(s, c.data(), ref_groups);
  if (tie_equivalent(D, stable_top(m, s.topk), m)) return true;
  // The device's groups, completed from the reference's, each swap within delta of the boundary score.
  std::vector<int32_t> dev_groups;
  auto keep = [&dev_groups](int32_t g) {
    if (std::find(dev_groups.begin(), dev_groups.end(), g) == dev_groups.end()) dev_groups.push_back(g);
  };
  for (int32_t e : D) keep(static_cast<int32_t>(e / (s.experts / s.groups)));
  if (static_cast<int64_t>(dev_groups.size()) > s.topk_groups) return false;
  for (int32_t g : ref_groups)
    if (static_cast<int64_t>(dev_groups.size()) < s.topk_groups) keep(g);
  const double boundary = gs[ref_groups.back()];
  const double delta = tolerance_for(DType::Fp32).rtol * std::fabs(boundary) + score_atol(gs);
  const std::set<int32_t> a(dev_groups.begin(), dev_groups.end()), r(ref_groups.begin(), ref_groups.end());
  for (int32_t g = 0; g < s.groups; ++g)
    if (a.count(g) != r.count(g) && std::fabs(gs[g] - boundary) > delta) return false;
  m = masked(s, c.data(), dev_groups);
  return tie_equivalent(D, stable_top(m, s.topk), m);
}

}  // namespace

// ---- Inputs and references ----

std::vector<double> GatingKernel::make_input(size_t index, const InputSpec& spec) const {
  const TensorInfo t = tensors().at(index);
  const std::string& name = t.name;
  if (name == "input_ids") return {hash_ids_.begin(), hash_ids_.end()};
  Rng rng(spec.seed * 0x9E3779B97F4A7C15ull + index + 7);
  std::vector<double> v(static_cast<size_t>(t.rows * t.cols));
  if (name == "tid2eid") {  // K distinct experts per row: a partial Fisher-Yates shuffle
    std::vector<int32_t> perm(s_.experts);
    for (int64_t r = 0; r < t.rows; ++r) {
      std::iota(perm.begin(), perm.end(), 0);
      for (int64_t j = 0; j < t.cols; ++j) {
        std::swap(perm[j], perm[j + static_cast<int64_t>(rng.next() % static_cast<uint64_t>(s_.experts - j))]);
        v[r * t.cols + j] = perm[j];
      }
    }
    return v;
  }
  if (name == "bias") {  // small, as trained correction biases are; `ties` draws from five levels
    for (auto& x : v)
      x = f32(spec.distribution == "ties" ? 0.05 * static_cast<double>(static_cast<int>(rng.next() % 5) - 2) : 0.1 * rng.normal());
    return v;
  }
  v = generate_input(spec, t, static_cast<int>(index));  // logits, or the logits behind scores / raw weights
  if (name == "scores" || name == "raw_weights") {
    v = score_rows(s_.score, v, t.rows, t.cols, false);
    for (auto& x : v) x = f32(x);
  }
  return v;
}

std::vector<int32_t> GatingKernel::reference_ids(const std::vector<std::vector<double>>& in) const {
  const int64_t T = s_.tokens, E = s_.experts, K = s_.topk;
  std::vector<int32_t> ids(static_cast<size_t>(T * K));
  if (s_.hash_vocab) {
    const std::vector<double>&input_ids = in[1], &table = in[2];  // after the logits or scores
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < K; ++j) ids[t * K + j] = static_cast<int32_t>(table[static_cast<int64_t>(input_ids[t]) * K + j]);
    return ids;
  }
  const std::vector<double> s = s_.stage == GateStage::Fused ? score_rows(s_.score, in[0], T, E, false) : in[0];
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<int32_t> pick = stable_picks(s_, keys_row(s_, s, in, t));
    std::copy(pick.begin(), pick.end(), ids.begin() + t * K);
  }
  return ids;
}

Golden GatingKernel::reference(const std::vector<std::vector<double>>& inputs) const { return references(inputs, {})[0]; }

std::vector<Golden> GatingKernel::references(const std::vector<std::vector<double>>& in,
                                             const std::vector<std::vector<double>>& device) const {
  const int64_t T = s_.tokens, E = s_.experts, K = s_.topk;
  if (s_.stage == GateStage::Score)
    return {Golden{score_rows(s_.score, in[0], T, E, false), score_rows(s_.score, in[0], T, E, true)}};
  if (s_.stage == GateStage::Normalize) {
    Golden g{in[0], in[0]};
    for (int64_t t = 0; t < T; ++t) normalize_row(s_, &g.exact[t * K], false), normalize_row(s_, &g.same_precision[t * K], true);
    return {g};
  }
  // Ids: a device row stands when it is a legitimate (tie-aware) choice; weights follow the ids
  // the device chose whenever those are experts at all.
  const bool fused = s_.stage == GateStage::Fused;
  const std::vector<double> exact = fused ? score_rows(s_.score, in[0], T, E, false) : in[0];
  const std::vector<double> dev = fused ? score_rows(s_.score, in[0], T, E, true) : in[0];
  const std::vector<int32_t> ref_ids = reference_ids(in);
  Golden ids{std::vector<double>(ref_ids.begin(), ref_ids.end()), {}};
  Golden w{std::vector<double>(T * K), std::vector<double>(T * K)};
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> row(ref_ids.begin() + t * K, ref_ids.begin() + (t + 1) * K);
    if (!device.empty()) {
      std::vector<int32_t> D(K);
      for (int64_t j = 0; j < K; ++j) D[j] = static_cast<int32_t>(device[1][t * K + j]);
      if (!s_.hash_vocab && row_accepted(s_, D, keys_row(s_, exact, in, t)))
        for (int64_t j = 0; j < K; ++j) ids.exact[t * K + j] = D[j];
      if (std::all_of(D.begin(), D.end(), [E](int32_t e) { return e >= 0 && e < E; })) row = D;
    }
    for (int64_t j = 0; j < K; ++j) w.exact[t * K + j] = exact[t * E + row[j]], w.same_precision[t * K + j] = dev[t * E + row[j]];
    if (fused) normalize_row(s_, &w.exact[t * K], false), normalize_row(s_, &w.same_precision[t * K], true);
  }
  return {w, ids};
}

}  // namespace npusim::kernels
