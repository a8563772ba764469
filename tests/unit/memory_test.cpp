#include <gtest/gtest.h>

#include <vector>

#include "sim/memory.hpp"

namespace npusim::sim {
namespace {

TEST(L2Cache, HitsAfterFirstTouchAndEvictsLeastRecentlyUsed) {
  L2Cache l2(4 * 512, 512, 1 << 20);  // four lines
  GmRegion a{0, 1, 2048, 2048};       // lines 0..3
  EXPECT_EQ(l2.access(a, false).hit_lines, 0u);
  EXPECT_EQ(l2.access(a, false).hit_lines, 4u);
  GmRegion b{4096, 1, 512, 512};  // line 8 evicts line 0 (LRU)
  l2.access(b, false);
  EXPECT_EQ(l2.access(GmRegion{0, 1, 512, 512}, false).hit_lines, 0u);
}

TEST(L2Cache, DirtyLinesAreWrittenBackOnEviction) {
  L2Cache l2(2 * 512, 512, 1 << 20);
  l2.access(GmRegion{0, 1, 1024, 1024}, true);
  EXPECT_EQ(l2.dirty_lines(), 2u);
  auto acc = l2.access(GmRegion{8192, 1, 1024, 1024}, false);
  EXPECT_EQ(acc.writeback_lines, 2u);
  EXPECT_EQ(l2.dirty_lines(), 0u);
}

TEST(L2Cache, StridedRowsTouchEachLineOnce) {
  L2Cache l2(1 << 20, 512, 1 << 22);
  auto acc = l2.access(GmRegion{0, 64, 32, 32}, false);  // 64 rows of 32 B packed: 4 lines
  EXPECT_EQ(acc.lines, 4u);
}

TEST(SharedLink, FlowsShareCapacityInProportionToTheirCaps) {
  SharedLink link(100.0);
  link.add(0, 1, 1000, 100);  // alone: 10 cycles
  link.add(0, 2, 1000, 100);  // together: each gets 50 -> 20 cycles
  EXPECT_NEAR(link.next_finish(), 20.0, 1e-9);
  std::vector<uint32_t> done;
  link.pop_finished(20.0, done);
  EXPECT_EQ(done.size(), 2u);
}

TEST(SharedLink, AFlowAloneRunsAtItsCap) {
  SharedLink link(1000.0);
  link.add(5, 1, 300, 30);
  EXPECT_NEAR(link.next_finish(), 15.0, 1e-9);
}

}  // namespace
}  // namespace npusim::sim
