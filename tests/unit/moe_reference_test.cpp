// Unit tests for the MoE routing references (kernels/reference/moe.hpp): hand-computed tiny cases.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "kernels/reference/moe.hpp"

namespace npusim::ref {
namespace {

double sigmoid(double z) {
  return 1.0 / (1.0 + std::exp(-z));
}

struct GateOut {
  std::vector<int32_t> picks;
  std::vector<double> weights, scores;
};

GateOut run_gate(const std::vector<double>& logits, int64_t experts,
                 const std::vector<double>& bias, const GateConfig& c) {
  const int64_t tokens = static_cast<int64_t>(logits.size()) / experts;
  GateOut o{std::vector<int32_t>(tokens * c.topk), std::vector<double>(tokens * c.topk),
            std::vector<double>(logits.size())};
  gate(tokens, experts, logits.data(), bias.empty() ? nullptr : bias.data(), c, o.picks.data(),
       o.weights.data(), o.scores.data());
  return o;
}

// ---- Gate ----

TEST(RefGate, V3BiasChangesTheChoiceButWeightsComeFromUnbiasedScores) {
  // 8 experts in 4 groups of 2, keep 2 groups, top-2, sigmoid, route scale 2.5.
  const std::vector<double> z = {2, 1, 0, 0, -1, -1, -2, -2};
  GateConfig c;
  c.topk = 2, c.groups = 4, c.topk_groups = 2, c.route_scale = 2.5;
  // Without bias: group sums {1.61, 1.0, 0.54, 0.24} keep groups 0 and 1; experts 0 and 1 win.
  GateOut plain = run_gate(z, 8, {}, c);
  EXPECT_EQ(plain.picks, (std::vector<int32_t>{0, 1}));
  EXPECT_DOUBLE_EQ(plain.weights[0], 2.5 * sigmoid(2) / (sigmoid(2) + sigmoid(1)));
  // The bias lifts group 2 (experts 4 and 5) to the top, unevenly; the weights stay the unbiased
  // sigmoid scores, which tie: 2.5 * 0.5 each.
  GateOut biased = run_gate(z, 8, {0, 0, 0, 0, 1.0, 0.8, 0, 0}, c);
  EXPECT_EQ(biased.picks, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(biased.weights, (std::vector<double>{1.25, 1.25}));
  for (int e = 0; e < 8; ++e) EXPECT_DOUBLE_EQ(biased.scores[e], sigmoid(z[e]));
}

TEST(RefGate, ExcludedGroupsAreMaskedToMinusInfNotZero) {
  // KERNELS.md 1.2: every score 0.5, a negative bias makes every selection score negative.
  // c = {-0.2, -0.3 | -0.9, -0.95}; group 0 wins (top-2 sum -0.5 vs -1.85). With a 0 mask the
  // masked experts 2 and 3 (c = 0) would beat both in-group experts; with -inf they never do.
  GateConfig c;
  c.topk = 2, c.groups = 2, c.topk_groups = 1;
  GateOut o = run_gate({0, 0, 0, 0}, 4, {-0.7, -0.8, -1.4, -1.45}, c);
  EXPECT_EQ(o.picks, (std::vector<int32_t>{0, 1}));
  EXPECT_DOUBLE_EQ(o.weights[0], 0.5);
}

TEST(RefGate, MaxGroupScoreDiffersFromTop2Sum) {
  // Group 0 = {0.9, 0.1}, group 1 = {0.6, 0.6} in selection scores (bias on raw logits 0).
  GateConfig c;
  c.topk = 1, c.groups = 2, c.topk_groups = 1;
  const std::vector<double> bias = {0.4, -0.4, 0.1, 0.1};
  c.group_score = GroupScore::Top2Sum;
  EXPECT_EQ(run_gate({0, 0, 0, 0}, 4, bias, c).picks, (std::vector<int32_t>{2}));
  c.group_score = GroupScore::Max;
  EXPECT_EQ(run_gate({0, 0, 0, 0}, 4, bias, c).picks, (std::vector<int32_t>{0}));
}

TEST(RefGate, TiesGoToTheLowerExpertAndTheLowerGroup) {
  GateConfig c;
  c.topk = 3;
  EXPECT_EQ(run_gate(std::vector<double>(6, 0.3), 6, {}, c).picks, (std::vector<int32_t>{0, 1, 2}));
  c.topk = 2, c.groups = 3, c.topk_groups = 1;
  EXPECT_EQ(run_gate({1, 0, 0, 1, 1, 0}, 6, {}, c).picks, (std::vector<int32_t>{0, 1}));
  // Equal weights of tied picks: 1/3 each after renormalisation.
  c.groups = 1, c.topk = 3;
  GateOut o = run_gate(std::vector<double>(6, 0.3), 6, {}, c);
  for (double w : o.weights) EXPECT_DOUBLE_EQ(w, 1.0 / 3.0);
}

TEST(RefGate, SoftmaxDoesNotRenormalizeByDefault) {
  GateConfig c;
  c.score = ScoreFunc::Softmax, c.topk = 2, c.route_scale = 1.5;
  const std::vector<double> z = {0, std::log(2.0), std::log(3.0),
                                 std::log(4.0)};  // softmax 0.1 .. 0.4
  GateOut o = run_gate(z, 4, {}, c);
  EXPECT_EQ(o.picks, (std::vector<int32_t>{3, 2}));
  EXPECT_NEAR(o.weights[0], 0.4 * 1.5, 1e-15);
  EXPECT_NEAR(o.weights[1], 0.3 * 1.5, 1e-15);
  c.renormalize = true;
  o = run_gate(z, 4, {}, c);
  EXPECT_NEAR(o.weights[0], 4.0 / 7.0 * 1.5, 1e-15);
  EXPECT_NEAR(o.weights[1], 3.0 / 7.0 * 1.5, 1e-15);
}

TEST(RefGate, SqrtSoftplusSwitchesToIdentityAbove20) {
  GateConfig c;
  c.score = ScoreFunc::SqrtSoftplus, c.topk = 2, c.route_scale = 1.5;
  GateOut o = run_gate({20, 30}, 2, {}, c);
  const double s20 = std::sqrt(std::log1p(std::exp(20.0))), s30 = std::sqrt(30.0);
  EXPECT_EQ(o.scores[0], s20);  // z = 20 is not above the threshold: the log1p branch
  EXPECT_NE(o.scores[0], std::sqrt(20.0));
  EXPECT_EQ(o.scores[1], s30);
  EXPECT_EQ(o.picks, (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(o.weights[0], s30 / (s30 + s20 + 1e-20) * 1.5);
  EXPECT_EQ(o.weights[1], s20 / (s30 + s20 + 1e-20) * 1.5);
}

TEST(RefGate, RenormalizationAddsEps) {
  GateConfig c;
  c.topk = 1, c.eps = 0.5;
  GateOut o = run_gate({0, -1}, 2, {}, c);  // s = 0.5: 0.5 / (0.5 + 0.5)
  EXPECT_EQ(o.weights[0], 0.5);
}

TEST(RefGate, WeightsForGivenPicksFollowThePicksOrder) {
  // Tied scores: a device may pick {5, 4} where the reference picks {4, 5}.
  const std::vector<double> s = {0.1, 0.2, 0.3, 0.4, 0.6, 0.6};
  GateConfig c;
  c.topk = 2, c.route_scale = 2.0;
  std::vector<int32_t> picks = {5, 3};
  std::vector<double> w(2);
  gate_weights_for(1, 6, s.data(), picks.data(), c, w.data());
  EXPECT_DOUBLE_EQ(w[0], 2.0 * 0.6 / 1.0);
  EXPECT_DOUBLE_EQ(w[1], 2.0 * 0.4 / 1.0);
  picks = {6, 0};
  EXPECT_THROW(gate_weights_for(1, 6, s.data(), picks.data(), c, w.data()), std::invalid_argument);
}

TEST(RefGate, RejectsBadConfigs) {
  std::vector<double> z(8, 0.0);
  GateConfig c;
  c.topk = 3, c.groups = 4, c.topk_groups = 1;  // the kept group holds only 2 experts
  EXPECT_THROW(run_gate(z, 8, {}, c), std::invalid_argument);
  c.groups = 3;  // 8 experts do not divide into 3 groups
  EXPECT_THROW(run_gate(z, 8, {}, c), std::invalid_argument);
  c.groups = 1, c.topk = 9;
  EXPECT_THROW(run_gate(z, 8, {}, c), std::invalid_argument);
  c.topk = 1, c.eps = -1;
  EXPECT_THROW(run_gate(z, 8, {}, c), std::invalid_argument);
}

TEST(RefHashGate, PicksComeFromTheTableAndWeightsFromTheScores) {
  const std::vector<int32_t> table = {0, 1, 2, 3, 3, 0};  // vocab 3 x K 2
  const std::vector<int64_t> ids = {2, 0, 1};
  const std::vector<double> z = {0, 1, 2, 3, 0, 0, 0, 0, 1, 1, 1, 1};  // 3 tokens x 4 experts
  GateConfig c;
  c.score = ScoreFunc::SqrtSoftplus, c.topk = 2, c.route_scale = 2.5;
  std::vector<int32_t> picks(6);
  std::vector<double> w(6);
  hash_gate(3, 4, z.data(), ids.data(), 3, table.data(), c, picks.data(), w.data());
  EXPECT_EQ(picks, (std::vector<int32_t>{3, 0, 0, 1, 2, 3}));
  auto s = [](double v) { return std::sqrt(std::log1p(std::exp(v))); };
  EXPECT_DOUBLE_EQ(w[0], 2.5 * s(3) / (s(3) + s(0)));
  EXPECT_DOUBLE_EQ(w[2], 1.25);  // token 1: equal scores
  const std::vector<int64_t> bad = {3};
  EXPECT_THROW(hash_gate(1, 4, z.data(), bad.data(), 3, table.data(), c, picks.data(), w.data()),
               std::invalid_argument);
  c.groups = 2;
  EXPECT_THROW(hash_gate(3, 4, z.data(), ids.data(), 3, table.data(), c, picks.data(), w.data()),
               std::invalid_argument);
}

// ---- Init routing ----

// T = 3, K = 2: flat entries f = 0..5 go to experts {2, 0, 0, 1, 2, 1}; expert 3 is empty.
const std::vector<int32_t> kPicks = {2, 0, 0, 1, 2, 1};
const std::vector<double> kX = {10, 11, 20, 21, 30, 31};  // tokens x hidden 2

RoutingConfig config(CapacityMode mode, int64_t capacity = 0, PadMode pad = PadMode::None,
                     int64_t multiple = 0) {
  RoutingConfig c;
  c.experts = 4, c.mode = mode, c.capacity = capacity, c.pad = pad, c.pad_multiple = multiple;
  return c;
}

std::vector<double> rows_of(const std::vector<int>& tokens) {
  std::vector<double> out;
  for (int t : tokens) {
    if (t < 0) {
      out.insert(out.end(), {0.0, 0.0});
    } else {
      out.insert(out.end(), {kX[2 * t], kX[2 * t + 1]});
    }
  }
  return out;
}

TEST(RefInitRouting, DroplessIsAStableSortByExpert) {
  Routing r =
      init_routing(3, 2, kPicks.data(), nullptr, kX.data(), 2, config(CapacityMode::Dropless));
  EXPECT_EQ(r.perm, (std::vector<int32_t>{1, 2, 3, 5, 0, 4}));
  EXPECT_EQ(r.expanded_row_idx, (std::vector<int32_t>{4, 0, 1, 2, 5, 3}));
  EXPECT_EQ(r.counts, (std::vector<int64_t>{2, 2, 2, 0}));
  EXPECT_EQ(r.cumsum, (std::vector<int64_t>{2, 4, 6, 6}));
  EXPECT_EQ(r.before_capacity, r.counts);
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 2, 4, 6}));
  EXPECT_EQ(r.rows, 6);
  EXPECT_EQ(r.expanded_x, rows_of({0, 1, 1, 2, 0, 2}));  // source token f / K
}

TEST(RefInitRouting, DroplessPaddingToAMultipleAddsZeroRows) {
  Routing r = init_routing(3, 2, kPicks.data(), nullptr, kX.data(), 2,
                           config(CapacityMode::Dropless, 0, PadMode::Multiple, 3));
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 3, 6, 9}));
  EXPECT_EQ(r.rows, 9);  // the empty expert takes no rows
  EXPECT_EQ(r.counts, (std::vector<int64_t>{2, 2, 2, 0}));
  EXPECT_EQ(r.expanded_row_idx, (std::vector<int32_t>{6, 0, 1, 3, 7, 4}));
  EXPECT_EQ(r.expanded_x, rows_of({0, 1, -1, 1, 2, -1, 0, 2, -1}));
}

TEST(RefInitRouting, PositionModeKeepsTheFirstEntriesOfEachExpert) {
  Routing r =
      init_routing(3, 2, kPicks.data(), nullptr, kX.data(), 2, config(CapacityMode::Position, 1));
  EXPECT_EQ(r.perm, (std::vector<int32_t>{1, 2, 3, 5, 0, 4}));
  EXPECT_EQ(r.expanded_row_idx, (std::vector<int32_t>{2, 0, -1, 1, -1, -1}));
  EXPECT_EQ(r.counts, (std::vector<int64_t>{1, 1, 1, 0}));
  EXPECT_EQ(r.cumsum, (std::vector<int64_t>{1, 2, 3, 3}));
  EXPECT_EQ(r.before_capacity, (std::vector<int64_t>{2, 2, 2, 0}));
  EXPECT_EQ(r.rows, 3);
  EXPECT_EQ(r.expanded_x, rows_of({0, 1, 0}));
  // Padded to capacity: the [E, C, H] layout, empty expert 3 a zero row.
  r = init_routing(3, 2, kPicks.data(), nullptr, kX.data(), 2,
                   config(CapacityMode::Position, 1, PadMode::Capacity));
  EXPECT_EQ(r.rows, 4);
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(r.expanded_x, rows_of({0, 1, 0, -1}));
  // A capacity above every count drops nothing but still pads.
  r = init_routing(3, 2, kPicks.data(), nullptr, kX.data(), 2,
                   config(CapacityMode::Position, 3, PadMode::Capacity));
  EXPECT_EQ(r.expanded_row_idx, (std::vector<int32_t>{6, 0, 1, 3, 7, 4}));
  EXPECT_EQ(r.expanded_x, rows_of({0, 1, -1, 1, 2, -1, 0, 2, -1, -1, -1, -1}));
}

TEST(RefInitRouting, ProbabilityModeKeepsTheHeaviestAndBreaksTiesByFlatIndex) {
  // Expert 0: f1 0.3, f2 0.7; expert 1: f3 0.5, f5 0.5 (tie); expert 2: f0 0.1, f4 0.9.
  const std::vector<double> w = {0.1, 0.3, 0.7, 0.5, 0.9, 0.5};
  Routing r = init_routing(3, 2, kPicks.data(), w.data(), kX.data(), 2,
                           config(CapacityMode::Probability, 1));
  EXPECT_EQ(r.perm, (std::vector<int32_t>{2, 1, 3, 5, 4, 0}));
  EXPECT_EQ(r.expanded_row_idx, (std::vector<int32_t>{-1, -1, 0, 1, 2, -1}));
  EXPECT_EQ(r.counts, (std::vector<int64_t>{1, 1, 1, 0}));
  EXPECT_EQ(r.expanded_x, rows_of({1, 1, 2}));
  // Capacity 2 keeps all, in weight order within each expert; padded to [4, 2, 2].
  r = init_routing(3, 2, kPicks.data(), w.data(), kX.data(), 2,
                   config(CapacityMode::Probability, 2, PadMode::Capacity));
  EXPECT_EQ(r.expanded_row_idx, (std::vector<int32_t>{5, 1, 0, 2, 4, 3}));
  EXPECT_EQ(r.expanded_x, rows_of({1, 0, 1, 2, 2, 0, -1, -1}));
}

TEST(RefInitRouting, AllTokensToOneExpertAndZeroCapacity) {
  const std::vector<int32_t> picks(5, 3);
  const std::vector<double> x = {1, 2, 3, 4, 5};
  Routing r =
      init_routing(5, 1, picks.data(), nullptr, x.data(), 1, config(CapacityMode::Dropless));
  EXPECT_EQ(r.counts, (std::vector<int64_t>{0, 0, 0, 5}));
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_EQ(r.expanded_row_idx, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(r.expanded_x, x);
  r = init_routing(5, 1, picks.data(), nullptr, x.data(), 1, config(CapacityMode::Position, 2));
  EXPECT_EQ(r.expanded_row_idx, (std::vector<int32_t>{0, 1, -1, -1, -1}));
  EXPECT_EQ(r.before_capacity, (std::vector<int64_t>{0, 0, 0, 5}));
  r = init_routing(5, 1, picks.data(), nullptr, x.data(), 1, config(CapacityMode::Position, 0));
  EXPECT_EQ(r.rows, 0);
  EXPECT_EQ(r.expanded_row_idx, std::vector<int32_t>(5, -1));
}

TEST(RefInitRouting, RejectsBadArguments) {
  const std::vector<int32_t> bad = {0, 4};
  EXPECT_THROW(init_routing(1, 2, bad.data(), nullptr, nullptr, 0, config(CapacityMode::Dropless)),
               std::invalid_argument);
  EXPECT_THROW(init_routing(3, 2, kPicks.data(), nullptr, kX.data(), 2,
                            config(CapacityMode::Dropless, 0, PadMode::Capacity)),
               std::invalid_argument);
  EXPECT_THROW(init_routing(3, 2, kPicks.data(), nullptr, kX.data(), 2,
                            config(CapacityMode::Probability, 1)),
               std::invalid_argument);
  EXPECT_THROW(
      init_routing(3, 2, kPicks.data(), nullptr, kX.data(), 2, config(CapacityMode::Position, -1)),
      std::invalid_argument);
  EXPECT_THROW(init_routing(3, 2, kPicks.data(), nullptr, kX.data(), 2,
                            config(CapacityMode::Dropless, 0, PadMode::Multiple, 0)),
               std::invalid_argument);
}

// ---- Finalize ----

TEST(RefFinalize, WeightedSumSkipsDroppedEntries) {
  // 2 tokens, K 2, hidden 2; token 1's second entry was dropped.
  const std::vector<double> y = {1, 2, 10, 20, 100, 200};
  const std::vector<int32_t> inv = {2, 0, 1, -1};
  const std::vector<double> w = {0.5, 2.0, 3.0, 7.0};
  const std::vector<double> res = {1, 1, 2, 2}, sh = {0.25, 0.25, 0, 0};
  std::vector<double> out(4);
  finalize(2, 2, 2, y.data(), 3, inv.data(), w.data(), res.data(), sh.data(), out.data());
  EXPECT_EQ(out, (std::vector<double>{1 + 0.25 + 50 + 2, 1 + 0.25 + 100 + 4, 2 + 30, 2 + 60}));
  finalize(2, 2, 2, y.data(), 3, inv.data(), nullptr, nullptr, nullptr,
           out.data());  // V4: a plain sum
  EXPECT_EQ(out, (std::vector<double>{101, 202, 10, 20}));
  const std::vector<int32_t> beyond = {3, 0, 0, 0};
  EXPECT_THROW(finalize(2, 2, 2, y.data(), 3, beyond.data(), nullptr, nullptr, nullptr, out.data()),
               std::invalid_argument);
}

TEST(RefFinalize, UndoesInitRoutingOfAPaddedDropLayout) {
  // Combining the expanded rows back with unit weights gives each token once per kept entry.
  Routing r = init_routing(3, 2, kPicks.data(), nullptr, kX.data(), 2,
                           config(CapacityMode::Position, 1, PadMode::Capacity));
  std::vector<double> out(6);
  finalize(3, 2, 2, r.expanded_x.data(), r.rows, r.expanded_row_idx.data(), nullptr, nullptr,
           nullptr, out.data());
  EXPECT_EQ(out, (std::vector<double>{20, 22, 20, 21, 0, 0}));  // token 0 kept twice, token 2 never
}

}  // namespace
}  // namespace npusim::ref
