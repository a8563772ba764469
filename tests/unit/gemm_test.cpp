#include <gtest/gtest.h>

#include <map>
#include <set>

#include "kernels/elementwise.hpp"
#include "kernels/gemm.hpp"
#include "test_support.hpp"

namespace npusim::kernels {
namespace {

const sim::HardwareSpec& hw() { return test::preset("ascend910b2"); }

GemmShape shape(int64_t m, int64_t n, int64_t k) {
  GemmShape s;
  s.m = m, s.n = n, s.k = k;
  return s;
}

TEST(GemmTiling, DefaultFitsForManyShapes) {
  for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {16, 6144, 16384}, {6144, 6144, 6144},
                                                            {1000, 570, 6100}, {4096, 64, 7168}, {33, 4097, 129}}) {
    GemmKernel g(shape(m, n, k), default_gemm_tiling(shape(m, n, k), hw()), true);
    EXPECT_TRUE(g.can_implement(hw()).ok) << m << "x" << n << "x" << k << ": " << g.can_implement(hw()).reason;
  }
}

TEST(GemmTiling, RejectsL0AOverflow) {
  GemmTiling t = default_gemm_tiling(shape(1024, 1024, 1024), hw());
  t.m1 = t.m0 = 256;
  t.k1 = 256;
  t.k0 = 128;
  auto st = GemmKernel(shape(1024, 1024, 1024), t, false).can_implement(hw());
  EXPECT_FALSE(st.ok);
  EXPECT_EQ(st.key, "tiling.l0");
}

TEST(GemmTiling, RejectsL1OverflowMisalignmentAndTooManyCores) {
  GemmTiling t = default_gemm_tiling(shape(1024, 1024, 1024), hw());
  t.stages = 4;
  EXPECT_EQ(GemmKernel(shape(1024, 1024, 1024), t, false).can_implement(hw()).key, "tiling.l1");
  t = default_gemm_tiling(shape(1024, 1024, 1024), hw());
  t.m1 = t.m0 = 120;
  EXPECT_EQ(GemmKernel(shape(1024, 1024, 1024), t, false).can_implement(hw()).key, "tiling.l1");
  t = default_gemm_tiling(shape(1024, 1024, 1024), hw());
  t.cores = 25;
  EXPECT_EQ(GemmKernel(shape(1024, 1024, 1024), t, false).can_implement(hw()).key, "tiling.cores");
}

TEST(GemmSwizzle, VisitsEveryBlockExactlyOnce) {
  for (int dir : {0, 1})
    for (int off : {1, 3, 4}) {
      std::set<std::pair<int64_t, int64_t>> seen;
      for (int64_t i = 0; i < 7 * 5; ++i) seen.insert(swizzle_block(i, 7, 5, off, dir));
      EXPECT_EQ(seen.size(), 35u) << off << " " << dir;
      for (auto [m, n] : seen) {
        EXPECT_LT(m, 7);
        EXPECT_LT(n, 5);
      }
    }
}

// Every flag set is eventually waited for, per (src, dst, id): the lowering leaves no event dangling.
void expect_balanced(const sim::Program& p) {
  for (const auto& c : p.cores) {
    std::map<std::tuple<int, int, int>, int> balance;
    for (const auto& i : c.code) {
      if (i.op == sim::Op::SetFlag) ++balance[{int(i.pipe), int(i.other), i.id}];
      if (i.op == sim::Op::WaitFlag) --balance[{int(i.other), int(i.pipe), i.id}];
    }
    for (auto& [k, v] : balance) EXPECT_EQ(v, 0);
  }
}

TEST(GemmLowering, FlagsAreBalancedAndTheCubeDoesAllTheMacs) {
  GemmShape s = shape(1000, 570, 6100);
  GemmKernel g(s, default_gemm_tiling(s, hw()), true);
  sim::Program p = g.lower(hw());
  expect_balanced(p);
  double macs = 0;
  for (const auto& c : p.cores)
    for (const auto& i : c.code)
      if (i.op == sim::Op::Mmad) macs += double(i.m) * i.n * i.k;
  EXPECT_EQ(macs, 1000.0 * 570 * 6100);
  // The estimate leaves out only the per-core flag prologue and epilogue.
  EXPECT_NEAR(g.estimated_instructions() / static_cast<double>(p.instruction_count()), 1.0, 0.01);
}

TEST(ElementwiseLowering, FlagsAreBalancedAndEveryElementIsComputedOnce) {
  ElementwiseShape s;
  s.op = sim::VecOp::Add;
  s.dims = {1000, 777};
  s.elems = 777000;
  ElementwiseKernel k(s, default_elementwise_tiling(s, hw()), true);
  ASSERT_TRUE(k.can_implement(hw()).ok);
  sim::Program p = k.lower(hw());
  expect_balanced(p);
  uint64_t elems = 0;
  for (const auto& c : p.cores)
    for (const auto& i : c.code)
      if (i.op == sim::Op::Vector) elems += i.m;
  EXPECT_EQ(elems, 777000u);
}

}  // namespace
}  // namespace npusim::kernels
