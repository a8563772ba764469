#include <gtest/gtest.h>

#include <list>
#include <map>
#include <random>
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

// The paged, hashed LRU against a plain one (std::list + map, the definition): every count after
// every access of a long random sequence of reads and writes, strided tiles, streams past the
// capacity, and line reuse across many pages.
TEST(L2Cache, MatchesAPlainLruOnRandomAccesses) {
  struct PlainLru {
    uint64_t capacity;
    std::list<uint64_t> order;  // front: most recent
    std::map<uint64_t, std::pair<std::list<uint64_t>::iterator, bool>> lines;  // line -> (node, dirty)
    uint64_t dirty = 0;
    L2Cache::Access access(const GmRegion& r, bool write, uint32_t line_bytes) {
      L2Cache::Access acc;
      uint64_t last = UINT64_MAX;
      for (uint32_t row = 0; row < r.rows; ++row) {
        const uint64_t a = r.addr + row * r.stride;
        for (uint64_t l = a / line_bytes; l <= (a + r.row_bytes - 1) / line_bytes; ++l) {
          if (l == last) continue;
          last = l;
          ++acc.lines;
          auto it = lines.find(l);
          if (it != lines.end()) {
            ++acc.hit_lines;
            order.erase(it->second.first);
          } else {
            if (lines.size() == capacity) {
              auto v = lines.find(order.back());
              if (v->second.second) ++acc.writeback_lines, --dirty;
              lines.erase(v);
              order.pop_back();
            }
            it = lines.emplace(l, std::pair{order.end(), false}).first;
          }
          order.push_front(l);
          it->second.first = order.begin();
          if (write && !it->second.second) it->second.second = true, ++dirty;
        }
      }
      return acc;
    }
  };
  std::mt19937_64 rng(11);
  for (uint64_t capacity_lines : {3, 64, 1500}) {
    L2Cache l2(capacity_lines * 128, 128, uint64_t(1) << 32);
    PlainLru ref{capacity_lines, {}, {}, 0};
    for (int i = 0; i < 20000; ++i) {
      GmRegion r;
      const int kind = static_cast<int>(rng() % 4);
      const uint64_t base = (rng() % 4 == 0 ? (uint64_t(1) << 31) : 0) + rng() % (capacity_lines * 128 * 6);
      if (kind == 0) r = {base, 1, static_cast<uint32_t>(1 + rng() % 4096), 0};                       // a run
      if (kind == 1) r = {base, static_cast<uint32_t>(1 + rng() % 32), static_cast<uint32_t>(1 + rng() % 300),
                          static_cast<uint64_t>(128 + rng() % 2048)};                                     // a strided tile
      if (kind == 2) r = {base, static_cast<uint32_t>(1 + rng() % 64), 32, 32};                             // packed rows
      if (kind == 3) r = {rng() % (uint64_t(1) << 32) / 2, 1, 256, 0};                                       // far pages
      const bool write = rng() % 3 == 0;
      const auto got = l2.access(r, write), want = ref.access(r, write, 128);
      ASSERT_EQ(got.lines, want.lines) << "access " << i;
      ASSERT_EQ(got.hit_lines, want.hit_lines) << "access " << i;
      ASSERT_EQ(got.writeback_lines, want.writeback_lines) << "access " << i;
      ASSERT_EQ(l2.dirty_lines(), ref.dirty) << "access " << i;
    }
  }
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
