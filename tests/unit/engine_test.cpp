// Engine semantics on hand-written programs: pipelining, flags, queues, cross-core sync,
// shared bandwidth, deadlock reports.
#include <gtest/gtest.h>

#include "common/errors.hpp"
#include "test_support.hpp"

namespace npusim::sim {
namespace {

const HardwareSpec& hw() { return test::preset("ascend910b2"); }

std::string deadlock_of(const Program& p) {
  try {
    simulate(hw(), p);
  } catch (const SimError& e) {
    return e.what();
  }
  return "";
}

TEST(Engine, OneLocalCopyCostsStartupPlusBytesOverRate) {
  Program p = test::single_core(CoreKind::Aic);
  CoreBuilder(p.cores[0]).copy(Path::L1ToL0A, 32768);
  const auto& ps = hw().path(Path::L1ToL0A);
  EXPECT_NEAR(simulate(hw(), p).cycles, ps.startup_cycles + 32768 / ps.rate_at(32768), 1e-6);
}

TEST(Engine, StartupOverlapsWithinAPipeButDataPhasesSerialise) {
  Program one = test::single_core(CoreKind::Aic), two = test::single_core(CoreKind::Aic);
  GmRegion a{0, 1, 65536, 65536}, b{65536, 1, 65536, 65536};
  CoreBuilder(one.cores[0]).copy(Path::GmToL1, 65536, a);
  CoreBuilder b2(two.cores[0]);
  b2.copy(Path::GmToL1, 65536, a);
  b2.copy(Path::GmToL1, 65536, b);
  double t1 = simulate(hw(), one).cycles, t2 = simulate(hw(), two).cycles;
  EXPECT_LT(t2, 2 * t1);
  EXPECT_GE(t2, t1 + 65536 / hw().path(Path::GmToL1).rate_at(65536) - 1e-6);
}

TEST(Engine, WaitFlagOrdersPipes) {
  Program p = test::single_core(CoreKind::Aic);
  CoreBuilder b(p.cores[0]);
  b.copy(Path::L1ToL0A, 65536);
  b.set_flag(Pipe::Mte1, Pipe::M, 0);
  b.wait_flag(Pipe::Mte1, Pipe::M, 0);
  b.mmad(128, 128, 64, DType::Fp16);
  SimOptions opt;
  opt.trace = true;
  auto r = simulate(hw(), p, opt);
  ASSERT_EQ(r.slices.size(), 2u);
  const auto& copy = r.slices[0].pipe == Pipe::Mte1 ? r.slices[0] : r.slices[1];
  const auto& mmad = r.slices[0].pipe == Pipe::M ? r.slices[0] : r.slices[1];
  EXPECT_GE(mmad.start, copy.end + hw().sync.set_wait_latency_cycles - 1e-9);
}

TEST(Engine, WithoutAFlagPipesRunConcurrently) {
  Program p = test::single_core(CoreKind::Aic);
  CoreBuilder b(p.cores[0]);
  b.copy(Path::L1ToL0A, 65536);
  b.mmad(128, 128, 64, DType::Fp16);
  SimOptions opt;
  opt.trace = true;
  auto r = simulate(hw(), p, opt);
  ASSERT_EQ(r.slices.size(), 2u);
  EXPECT_LT(std::max(r.slices[0].start, r.slices[1].start), std::min(r.slices[0].end, r.slices[1].end));
}

TEST(Engine, AWaitNobodySetsIsReportedAsDeadlockNamingCorePipeAndFlag) {
  Program p = test::single_core(CoreKind::Aic);
  CoreBuilder b(p.cores[0]);
  b.wait_flag(Pipe::Mte2, Pipe::Mte1, 3);
  b.copy(Path::L1ToL0A, 512);
  std::string msg = deadlock_of(p);
  EXPECT_NE(msg.find("deadlock"), std::string::npos) << msg;
  EXPECT_NE(msg.find("aic0 pipe MTE1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("wait_flag MTE2->MTE1 event 3"), std::string::npos) << msg;
}

TEST(Engine, AFullQueueThatNeverDrainsStallsTheScalarAndIsReported) {
  Program p = test::single_core(CoreKind::Aic);
  CoreBuilder b(p.cores[0]);
  b.wait_flag(Pipe::Mte2, Pipe::M, 0);  // blocks M forever
  for (int i = 0; i < 40; ++i) b.mmad(16, 16, 16, DType::Fp16);
  std::string msg = deadlock_of(p);
  EXPECT_NE(msg.find("M queue full"), std::string::npos) << msg;
}

Program mix_program() {
  Program p;
  p.name = "mix";
  p.gm_footprint_bytes = 1 << 20;
  p.cores.push_back({CoreKind::Aic, 0, {}, {}});
  p.cores.push_back({CoreKind::Aiv, 0, {}, {}});
  p.cores.push_back({CoreKind::Aiv, 1, {}, {}});
  return p;
}

TEST(Engine, CrossCoreFlagsHandWorkFromCubeToVector) {
  Program p = mix_program();
  CoreBuilder aic(p.cores[0]);
  aic.mmad(128, 128, 128, DType::Fp16);
  aic.copy(Path::L0CToGm, 32768, GmRegion{0, 1, 32768, 32768});
  aic.cross_set(Pipe::Fixpipe, 2, 5);
  for (int v = 1; v <= 2; ++v) {
    CoreBuilder b(p.cores[v]);
    b.cross_wait(Pipe::Mte2, 5);
    b.copy(Path::GmToUb, 16384, GmRegion{uint64_t(v - 1) * 16384, 1, 16384, 16384});
  }
  SimOptions opt;
  opt.trace = true;
  auto r = simulate(hw(), p, opt);
  double fix_end = 0, ub_start = 1e30;
  for (const auto& s : r.slices) {
    if (s.pipe == Pipe::Fixpipe) fix_end = s.end;
    if (s.pipe == Pipe::Mte2 && r.units[s.unit].kind == CoreKind::Aiv) ub_start = std::min(ub_start, s.start);
  }
  EXPECT_GE(ub_start, fix_end + hw().sync.cross_core_latency_cycles - 1e-9);
}

TEST(Engine, CrossCoreSetsBeyondThePendingLimitDeadlockWhenNobodyWaits) {
  Program p = mix_program();
  CoreBuilder aic(p.cores[0]);
  for (int i = 0; i < hw().sync.cross_max_pending + 1; ++i) aic.cross_set(Pipe::M, 2, 1);
  std::string msg = deadlock_of(p);
  EXPECT_NE(msg.find("pending sets"), std::string::npos) << msg;
}

TEST(Engine, CrossCoreWaitWithoutASetIsReported) {
  Program p = mix_program();
  CoreBuilder(p.cores[1]).cross_wait(Pipe::V, 2);
  std::string msg = deadlock_of(p);
  EXPECT_NE(msg.find("aiv0 pipe V"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cross-core"), std::string::npos) << msg;
}

TEST(Engine, ACoreCopySlowsWhenOthersCopy) {
  auto program = [](int cores) {
    Program p;
    p.name = "bw";
    p.gm_footprint_bytes = uint64_t(cores) * 4 * 131072;
    for (int c = 0; c < cores; ++c) {
      p.cores.push_back({CoreKind::Aiv, c, {}, {}});
      CoreBuilder b(p.cores.back());
      for (int t = 0; t < 4; ++t)
        b.copy(Path::GmToUb, 131072, GmRegion{(uint64_t(c) * 4 + t) * 131072, 1, 131072, 131072});
    }
    return p;
  };
  double alone = simulate(hw(), program(1)).cycles, crowd = simulate(hw(), program(48)).cycles;
  EXPECT_GT(crowd, 2 * alone);
}

TEST(Engine, IllegalInstructionsAreRejectedBeforeSimulation) {
  Program p = test::single_core(CoreKind::Aiv);
  CoreBuilder(p.cores[0]).mmad(16, 16, 16, DType::Fp16);  // no cube on an AIV
  EXPECT_THROW(simulate(hw(), p), SimError);
  Program q = test::single_core(CoreKind::Aic);
  CoreBuilder(q.cores[0]).copy(Path::L0CToUb, 512);  // 3510 only
  EXPECT_THROW(simulate(hw(), q), SimError);
}

TEST(Engine, DirectCubeToVectorPathsExistOnlyOn3510) {
  Program p = mix_program();
  CoreBuilder aic(p.cores[0]);
  aic.copy(Path::L0CToUb, 16384);
  aic.cross_set(Pipe::Fixpipe, 2, 0);
  CoreBuilder aiv(p.cores[1]);
  aiv.cross_wait(Pipe::V, 0);
  aiv.vec(VecOp::Exp, DType::Fp32, 4096);
  aiv.copy(Path::UbToL1, 16384);
  CoreBuilder(p.cores[2]).cross_wait(Pipe::V, 0);
  EXPECT_GT(simulate(test::preset("ascend950pr"), p).cycles, 0);
  EXPECT_THROW(simulate(hw(), p), SimError);
}

TEST(Engine, SameProgramGivesIdenticalResults) {
  Program p = mix_program();
  CoreBuilder aic(p.cores[0]);
  for (int i = 0; i < 50; ++i) aic.copy(Path::GmToL1, 8192, GmRegion{uint64_t(i % 7) * 8192, 1, 8192, 8192});
  auto a = simulate(hw(), p), b = simulate(hw(), p);
  EXPECT_EQ(a.cycles, b.cycles);
  EXPECT_EQ(a.mem.l2_read_hit_lines, b.mem.l2_read_hit_lines);
}

}  // namespace
}  // namespace npusim::sim
