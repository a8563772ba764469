#include <gtest/gtest.h>

#include <numeric>
#include <set>

#include "kernels/routing.hpp"

namespace npusim::kernels {
namespace {

RoutingSpec spec(const std::string& dist, int64_t e = 64, int64_t t = 2000, int64_t k = 6) {
  RoutingSpec s;
  s.experts = e, s.tokens = t, s.topk = k, s.distribution = dist, s.seed = 5;
  return s;
}

TEST(Routing, EachTokenPicksDistinctExpertsAndCountsAddUp) {
  for (const char* d : {"uniform", "zipf", "hot_expert"}) {
    RoutingSpec s = spec(d);
    auto ids = draw_routing(s);
    ASSERT_EQ(ids.size(), static_cast<size_t>(s.tokens * s.topk));
    for (int64_t t = 0; t < s.tokens; ++t) {
      std::set<int32_t> seen(ids.begin() + t * s.topk, ids.begin() + (t + 1) * s.topk);
      EXPECT_EQ(seen.size(), static_cast<size_t>(s.topk)) << d;
      for (int32_t e : seen) EXPECT_TRUE(e >= 0 && e < s.experts);
    }
    auto c = tokens_per_expert(ids, s.experts);
    EXPECT_EQ(std::accumulate(c.begin(), c.end(), int64_t{0}), s.tokens * s.topk);
  }
}

TEST(Routing, SameSeedSameRoutingAndSkewOrdersAsExpected) {
  EXPECT_EQ(draw_routing(spec("zipf")), draw_routing(spec("zipf")));
  double u = imbalance(tokens_per_expert(draw_routing(spec("uniform")), 64));
  double z = imbalance(tokens_per_expert(draw_routing(spec("zipf")), 64));
  EXPECT_LT(u, 1.5);
  EXPECT_GT(z, u);
}

TEST(Routing, HotExpertGetsItsShareOfFirstChoices) {
  RoutingSpec s = spec("hot_expert", 16, 4000, 1);
  s.hot_fraction = 0.75;
  auto c = tokens_per_expert(draw_routing(s), 16);
  EXPECT_NEAR(static_cast<double>(*std::max_element(c.begin(), c.end())) / 4000, 0.75, 0.03);
  s.hot_fraction = 1.0;
  c = tokens_per_expert(draw_routing(s), 16);
  EXPECT_EQ(*std::max_element(c.begin(), c.end()), 4000);  // all tokens to one expert
}

}  // namespace
}  // namespace npusim::kernels
