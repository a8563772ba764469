// MoE routing references: gate, hash gate, init-routing and finalize. fp64; the gate and finalize
// run one token per thread, init-routing sorts on one thread (a strict total order, so the result
// never depends on the sort algorithm) and gathers rows in parallel.
#include "kernels/reference/moe.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "kernels/reference/detail.hpp"
#include "kernels/reference/reference.hpp"

namespace npusim::ref {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The ranking key of a score: NaN ranks as -inf (the rule of ref::topk).
inline double rank_key(double v) {
  return std::isnan(v) ? kNegInf : v;
}

inline double softplus(double z) {
  return z > 20 ? z : std::log1p(std::exp(z));
}

void check_gate(const char* fn, int64_t tokens, int64_t experts, const GateConfig& c) {
  detail::require_nonnegative(fn, "tokens", tokens);
  detail::require(experts >= 1 && experts <= INT32_MAX, fn,
                  "experts must be in [1, INT32_MAX], got " + std::to_string(experts));
  detail::require(c.score == ScoreFunc::Sigmoid || c.score == ScoreFunc::Softmax ||
                      c.score == ScoreFunc::SqrtSoftplus,
                  fn, "unknown score function");
  detail::require(c.topk >= 1 && c.topk <= experts, fn,
                  "need 1 <= topk <= experts, got topk=" + std::to_string(c.topk));
  detail::require(c.eps >= 0, fn, "eps must be >= 0 and not NaN");
}

// One token's scores from its logits.
void score_row(ScoreFunc f, int64_t experts, const double* z, double* s) {
  switch (f) {
    case ScoreFunc::Sigmoid:
      for (int64_t e = 0; e < experts; ++e) s[e] = detail::sigmoid(z[e]);
      return;
    case ScoreFunc::SqrtSoftplus:
      for (int64_t e = 0; e < experts; ++e) s[e] = std::sqrt(softplus(z[e]));
      return;
    case ScoreFunc::Softmax:
      softmax_rows(1, experts, z, s);
      return;
  }
}

void weights_row(const GateConfig& c, const double* s, const int32_t* picks, double* w) {
  double sum = 0;
  for (int64_t j = 0; j < c.topk; ++j) sum += w[j] = s[picks[j]];
  for (int64_t j = 0; j < c.topk; ++j) {
    if (c.renormalizes()) w[j] /= sum + c.eps;
    w[j] *= c.route_scale;
  }
}

// Group score of the selection scores c[0 .. size) of one group.
double group_score(GroupScore how, const double* c, int64_t size) {
  double best = kNegInf, second = kNegInf;
  for (int64_t i = 0; i < size; ++i) {
    const double v = rank_key(c[i]);
    if (v > best) {
      second = best;
      best = v;
    } else if (v > second) {
      second = v;
    }
  }
  if (how == GroupScore::Max || size == 1) return best;
  return best + second;
}

}  // namespace

void gate_scores(int64_t tokens, int64_t experts, const double* logits, ScoreFunc f,
                 double* scores) {
  GateConfig c;
  c.score = f;
  check_gate("gate_scores", tokens, experts, c);
  detail::for_rows(tokens, experts, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      score_row(f, experts, logits + t * experts, scores + t * experts);
  });
}

void gate(int64_t tokens, int64_t experts, const double* logits, const double* bias,
          const GateConfig& config, int32_t* picks, double* weights, double* scores) {
  check_gate("gate", tokens, experts, config);
  const int64_t G = config.groups, K = config.topk;
  detail::require(G >= 1 && experts % G == 0, "gate",
                  "experts must divide into groups >= 1, got groups=" + std::to_string(G));
  const int64_t size = experts / G;
  const int64_t kept_groups = G > 1 ? config.topk_groups : G;
  detail::require(kept_groups >= 1 && kept_groups <= G, "gate",
                  "need 1 <= topk_groups <= groups, got " + std::to_string(config.topk_groups));
  detail::require(
      G == 1 || config.group_score == GroupScore::Top2Sum || config.group_score == GroupScore::Max,
      "gate", "unknown group score");
  // More picks than the kept groups hold would pick masked experts.
  detail::require(K <= kept_groups * size, "gate",
                  "topk " + std::to_string(K) + " exceeds the " +
                      std::to_string(kept_groups * size) + " experts of the kept groups");
  detail::for_rows(tokens, experts, [&](int64_t t0, int64_t t1) {
    std::vector<double> s(experts), c(experts), gs(G);
    std::vector<int32_t> chosen(kept_groups);
    for (int64_t t = t0; t < t1; ++t) {
      score_row(config.score, experts, logits + t * experts, s.data());
      for (int64_t e = 0; e < experts; ++e) c[e] = bias ? s[e] + bias[e] : s[e];
      if (G > 1) {
        for (int64_t g = 0; g < G; ++g)
          gs[g] = group_score(config.group_score, c.data() + g * size, size);
        topk(1, G, gs.data(), kept_groups, chosen.data(), nullptr);
        std::vector<bool> keep(G, false);
        for (int32_t g : chosen) keep[g] = true;
        for (int64_t e = 0; e < experts; ++e)
          if (!keep[e / size]) c[e] = kNegInf;
      }
      int32_t* p = picks + t * K;
      topk(1, experts, c.data(), K, p, nullptr);
      weights_row(config, s.data(), p, weights + t * K);
      if (scores) std::copy(s.begin(), s.end(), scores + t * experts);
    }
  });
}

void gate_weights_for(int64_t tokens, int64_t experts, const double* scores, const int32_t* picks,
                      const GateConfig& config, double* weights) {
  check_gate("gate_weights_for", tokens, experts, config);
  const int64_t K = config.topk;
  for (int64_t i = 0; i < tokens * K; ++i)
    detail::require(picks[i] >= 0 && picks[i] < experts, "gate_weights_for",
                    "pick " + std::to_string(picks[i]) + " outside [0, experts)");
  detail::for_rows(tokens, K, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      weights_row(config, scores + t * experts, picks + t * K, weights + t * K);
  });
}

void hash_gate(int64_t tokens, int64_t experts, const double* logits, const int64_t* input_ids,
               int64_t vocab, const int32_t* tid2eid, const GateConfig& config, int32_t* picks,
               double* weights, double* scores) {
  check_gate("hash_gate", tokens, experts, config);
  detail::require(config.groups == 1, "hash_gate", "hash routing has no expert groups");
  detail::require_nonnegative("hash_gate", "vocab", vocab);
  const int64_t K = config.topk;
  for (int64_t t = 0; t < tokens; ++t)
    detail::require(input_ids[t] >= 0 && input_ids[t] < vocab, "hash_gate",
                    "input id " + std::to_string(input_ids[t]) + " outside [0, vocab)");
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = tid2eid[input_ids[t] * K + j];
      detail::require(e >= 0 && e < experts, "hash_gate",
                      "tid2eid entry " + std::to_string(e) + " outside [0, experts)");
    }
  detail::for_rows(tokens, experts, [&](int64_t t0, int64_t t1) {
    std::vector<double> s(experts);
    for (int64_t t = t0; t < t1; ++t) {
      score_row(config.score, experts, logits + t * experts, s.data());
      std::copy_n(tid2eid + input_ids[t] * K, K, picks + t * K);
      weights_row(config, s.data(), picks + t * K, weights + t * K);
      if (scores) std::copy(s.begin(), s.end(), scores + t * experts);
    }
  });
}

Routing init_routing(int64_t tokens, int64_t topk, const int32_t* picks, const double* weights,
                     const double* x, int64_t hidden, const RoutingConfig& config) {
  const char* fn = "init_routing";
  detail::require_nonnegative(fn, "tokens", tokens);
  detail::require_nonnegative(fn, "topk", topk);
  detail::require_nonnegative(fn, "hidden", hidden);
  const int64_t E = config.experts, C = config.capacity;
  detail::require(E >= 1, fn, "experts must be >= 1, got " + std::to_string(E));
  detail::require(topk == 0 || tokens <= INT32_MAX / topk, fn, "tokens * topk must fit in int32");
  const CapacityMode mode = config.mode;
  detail::require(mode == CapacityMode::Dropless || mode == CapacityMode::Position ||
                      mode == CapacityMode::Probability,
                  fn, "unknown capacity mode");
  const bool drops = mode != CapacityMode::Dropless;
  detail::require(!drops || C >= 0, fn, "capacity must be >= 0, got " + std::to_string(C));
  detail::require(mode != CapacityMode::Probability || weights || tokens * topk == 0, fn,
                  "probability mode needs the weights");
  detail::require(config.pad == PadMode::None || config.pad == PadMode::Multiple ||
                      (config.pad == PadMode::Capacity && drops),
                  fn, "padding to capacity needs a drop mode");
  detail::require(config.pad != PadMode::Multiple || config.pad_multiple >= 1, fn,
                  "pad multiple must be >= 1, got " + std::to_string(config.pad_multiple));
  const int64_t N = tokens * topk;
  for (int64_t f = 0; f < N; ++f)
    detail::require(picks[f] >= 0 && picks[f] < E, fn,
                    "expert id " + std::to_string(picks[f]) + " outside [0, experts)");

  Routing r;
  r.before_capacity.assign(E, 0);
  for (int64_t f = 0; f < N; ++f) ++r.before_capacity[picks[f]];
  r.perm.resize(N);
  std::iota(r.perm.begin(), r.perm.end(), 0);
  std::sort(r.perm.begin(), r.perm.end(), [&](int32_t a, int32_t b) {
    if (picks[a] != picks[b]) return picks[a] < picks[b];
    if (mode == CapacityMode::Probability) {
      const double wa = rank_key(weights[a]), wb = rank_key(weights[b]);
      if (wa != wb) return wa > wb;
    }
    return a < b;
  });
  r.counts.resize(E), r.cumsum.resize(E), r.offsets.resize(E);
  int64_t total = 0, rows = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t kept = drops ? std::min(r.before_capacity[e], C) : r.before_capacity[e];
    r.counts[e] = kept;
    r.cumsum[e] = total += kept;
    r.offsets[e] = rows;
    switch (config.pad) {
      case PadMode::None:
        rows += kept;
        break;
      case PadMode::Multiple:
        rows += (kept + config.pad_multiple - 1) / config.pad_multiple * config.pad_multiple;
        break;
      case PadMode::Capacity:
        rows += C;
        break;
    }
  }
  detail::require(rows <= INT32_MAX, fn, "expanded rows must fit in int32");
  r.rows = rows;
  r.expanded_row_idx.assign(N, -1);
  for (int64_t i = 0, rank = 0; i < N; ++i) {
    const int32_t f = r.perm[i];
    rank = i > 0 && picks[r.perm[i - 1]] == picks[f] ? rank + 1 : 0;
    if (rank < r.counts[picks[f]])
      r.expanded_row_idx[f] = static_cast<int32_t>(r.offsets[picks[f]] + rank);
  }
  r.expanded_x.assign(static_cast<size_t>(rows * hidden), 0.0);
  detail::for_rows(N, hidden, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f)
      if (const int32_t row = r.expanded_row_idx[f]; row >= 0)
        std::copy_n(x + (f / topk) * hidden, hidden, r.expanded_x.data() + row * hidden);
  });
  return r;
}

void finalize(int64_t tokens, int64_t topk, int64_t hidden, const double* y, int64_t y_rows,
              const int32_t* expanded_row_idx, const double* weights, const double* residual,
              const double* shared, double* out) {
  const char* fn = "finalize";
  detail::require_nonnegative(fn, "tokens", tokens);
  detail::require_nonnegative(fn, "topk", topk);
  detail::require_nonnegative(fn, "hidden", hidden);
  detail::require_nonnegative(fn, "y_rows", y_rows);
  for (int64_t f = 0; f < tokens * topk; ++f)
    detail::require(
        expanded_row_idx[f] >= -1 && expanded_row_idx[f] < y_rows, fn,
        "expanded row index " + std::to_string(expanded_row_idx[f]) + " outside [-1, y_rows)");
  detail::for_rows(tokens, (topk + 2) * hidden, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      double* o = out + t * hidden;
      std::fill(o, o + hidden, 0.0);
      auto add = [&](const double* row, double w) {
        for (int64_t d = 0; d < hidden; ++d) o[d] += w * row[d];
      };
      if (residual) add(residual + t * hidden, 1.0);
      if (shared) add(shared + t * hidden, 1.0);
      for (int64_t j = 0; j < topk; ++j)
        if (const int32_t row = expanded_row_idx[t * topk + j]; row >= 0)
          add(y + static_cast<int64_t>(row) * hidden, weights ? weights[t * topk + j] : 1.0);
    }
  });
}

}  // namespace npusim::ref
