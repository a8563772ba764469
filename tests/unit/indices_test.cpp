// Drawn sparse-attention index sets (kernels/indices.hpp): distinct visible positions, ascending,
// -1 padding, deterministic per seed, and the recent bias visible in where the picks fall.
#include <gtest/gtest.h>

#include <set>

#include "kernels/indices.hpp"

namespace npusim::kernels {
namespace {

void expect_well_formed(const std::vector<int32_t>& idx, const std::vector<int64_t>& visible, int64_t k) {
  ASSERT_EQ(idx.size(), visible.size() * k);
  for (size_t q = 0; q < visible.size(); ++q) {
    const int64_t want = std::min(k, visible[q]);
    std::set<int32_t> seen;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t i = idx[q * k + j];
      if (j < want) {
        EXPECT_GE(i, 0);
        EXPECT_LT(i, visible[q]);
        EXPECT_TRUE(seen.insert(i).second) << "repeated index in query " << q;
        if (j > 0) {
          EXPECT_GT(i, idx[q * k + j - 1]);
        }
      } else {
        EXPECT_EQ(i, -1);
      }
    }
  }
}

TEST(DrawIndices, DistinctAscendingPaddedAndDeterministic) {
  const std::vector<int64_t> visible{0, 3, 40, 41, 1000, 100000};
  for (const char* d : {"uniform", "recent_biased"}) {
    IndexSpec s;
    s.distribution = d, s.seed = 5;
    auto a = draw_indices(s, visible, 32);
    expect_well_formed(a, visible, 32);
    EXPECT_EQ(a, draw_indices(s, visible, 32)) << d;
    s.seed = 6;
    EXPECT_NE(a, draw_indices(s, visible, 32)) << d;
  }
}

TEST(DrawIndices, RecentBiasedFavoursRecentAndSinkPositions) {
  IndexSpec s;
  s.distribution = "recent_biased", s.seed = 2;
  const std::vector<int64_t> visible(200, 131072);
  auto idx = draw_indices(s, visible, 512);
  expect_well_formed(idx, visible, 512);
  int64_t recent = 0, sinks = 0, n = 0;
  for (int32_t i : idx) {
    recent += i >= 131072 - 1024;
    sinks += i < 4;
    ++n;
  }
  // The newest 0.8 % of the positions hold a large share of the picks; uniform would give 0.8 %.
  EXPECT_GT(static_cast<double>(recent) / n, 0.2);
  EXPECT_GT(sinks, 100);
  s.distribution = "uniform";
  auto u = draw_indices(s, visible, 512);
  int64_t urecent = 0;
  for (int32_t i : u) urecent += i >= 131072 - 1024;
  EXPECT_LT(static_cast<double>(urecent) / n, 0.02);
}

TEST(DrawIndices, MostOfTheVisibleWantedKeepsTheSinksAndTheNewest) {
  IndexSpec s;
  s.distribution = "recent_biased";
  auto idx = draw_indices(s, {100}, 90);
  expect_well_formed(idx, {100}, 90);
  EXPECT_EQ(idx[0], 0);
  EXPECT_EQ(idx[89], 99);
}

}  // namespace
}  // namespace npusim::kernels
