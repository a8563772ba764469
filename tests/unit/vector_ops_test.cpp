// The sort, reduction and index vector instructions (sim/program.hpp, Operands): exact output bytes
// from functional runs of one-AIV programs, operand errors, and timing = start-up + ceil(m / rate).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "common/errors.hpp"
#include "sim/functional.hpp"
#include "test_support.hpp"

namespace npusim::sim {
namespace {

const HardwareSpec& hw() { return test::preset("ascend910b2"); }

constexpr float kInf = std::numeric_limits<float>::infinity();

TileRef at(uint64_t offset, DType d) { return {offset, 0, 0, 0, TileLayout::Flat, d}; }

// One AIV whose UB is filled by `fill`, runs the instructions `emit` adds, and is then returned.
class UbRun {
 public:
  explicit UbRun(const std::function<void(CoreBuilder&)>& emit, const HardwareSpec& spec = hw())
      : prog_(test::single_core(CoreKind::Aiv)), spec_(spec) {
    CoreBuilder b(prog_.cores[0], /*functional=*/true);
    emit(b);
    mem_ = std::make_unique<FunctionalMemory>(spec_, prog_);
  }
  template <typename T>
  void put(uint64_t offset, const std::vector<T>& v) {
    std::memcpy(mem_->buffer(0, Buffer::Ub, offset, offset + v.size() * sizeof(T)), v.data(), v.size() * sizeof(T));
  }
  template <typename T>
  std::vector<T> get(uint64_t offset, size_t n) {
    std::vector<T> v(n);
    std::memcpy(v.data(), mem_->buffer(0, Buffer::Ub, offset, offset + n * sizeof(T)), n * sizeof(T));
    return v;
  }
  void run() {
    SimOptions opt;
    opt.record_work = true;
    run_functional(prog_, simulate(spec_, prog_, opt), *mem_);
  }

 private:
  Program prog_;
  const HardwareSpec& spec_;
  std::unique_ptr<FunctionalMemory> mem_;
};

std::string sim_error(UbRun& r) {
  try {
    r.run();
  } catch (const SimError& e) {
    return e.what();
  }
  return "";
}

struct Pair {
  float key;
  int32_t index;
  bool operator==(const Pair& o) const {
    return index == o.index && (std::memcmp(&key, &o.key, 4) == 0);
  }
};

TEST(VectorOps, ReduceSumAndMaxPerSegmentRoundOnce) {
  // Segment 0 sums to 1 + 2^-23 only when added in double and rounded once (fp32 step by step gives 1).
  const std::vector<float> x{1.0f, 0x1p-24f, 0x1p-24f, 0.0f, -kInf, -3.0f, -kInf, -5.0f, 2.0f, NAN, 1.0f, 0.5f};
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.src = at(0, DType::Fp32), o.dst = at(256, DType::Fp32), o.cols = 4;
    b.vec(VecOp::ReduceSum, DType::Fp32, 12, o);
    o.dst = at(512, DType::Fp32);
    b.vec(VecOp::ReduceMax, DType::Fp32, 12, o);
  });
  r.put(0, x);
  r.run();
  const auto sum = r.get<float>(256, 3), mx = r.get<float>(512, 3);
  EXPECT_EQ(sum[0], 1.0f + 0x1p-23f);
  EXPECT_EQ(sum[1], -kInf);
  EXPECT_TRUE(std::isnan(sum[2]));
  EXPECT_EQ(mx[0], 1.0f);
  EXPECT_EQ(mx[1], -3.0f);
  EXPECT_TRUE(std::isnan(mx[2]));
}

TEST(VectorOps, ReduceSumInInt32RunsWhereTheHardwareHasIt) {
  const auto& a5 = test::preset("ascend950pr");
  UbRun r(
      [](CoreBuilder& b) {
        Operands o;
        o.src = at(0, DType::Int32), o.dst = at(64, DType::Int32), o.cols = 3;
        b.vec(VecOp::ReduceSum, DType::Int32, 6, o);
      },
      a5);
  r.put(0, std::vector<int32_t>{1, 2, 3, -7, 100000, 5});
  r.run();
  EXPECT_EQ(r.get<int32_t>(64, 2), (std::vector<int32_t>{6, 99998}));
  // 2201 lists no int32 reduction: the program checker refuses it.
  Program p = test::single_core(CoreKind::Aiv);
  CoreBuilder(p.cores[0]).vec(VecOp::ReduceSum, DType::Int32, 64);
  EXPECT_THROW(simulate(hw(), p), SimError);
}

TEST(VectorOps, ASegmentThatDoesNotDivideTheCountIsAnError) {
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.src = at(0, DType::Fp32), o.dst = at(256, DType::Fp32), o.cols = 5;
    b.vec(VecOp::ReduceSum, DType::Fp32, 12, o);
  });
  EXPECT_NE(sim_error(r).find("reduce_sum"), std::string::npos);
}

TEST(VectorOps, ArangeCountsFromTheScalar) {
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.dst = at(0, DType::Int32), o.scalar = -3;
    b.vec(VecOp::Arange, DType::Int32, 6, o);
    o.dst = at(64, DType::Fp32), o.scalar = 0.5;
    b.vec(VecOp::Arange, DType::Fp32, 3, o);
  });
  r.run();
  EXPECT_EQ(r.get<int32_t>(0, 6), (std::vector<int32_t>{-3, -2, -1, 0, 1, 2}));
  EXPECT_EQ(r.get<float>(64, 3), (std::vector<float>{0.5f, 1.5f, 2.5f}));
}

TEST(VectorOps, Sort32SortsEachBlockDescendingStablyWithNanLast) {
  std::vector<float> keys(64);
  std::vector<int32_t> idx(64);
  for (int i = 0; i < 64; ++i) keys[i] = static_cast<float>((i * 7) % 5), idx[i] = 1000 + i;
  keys[3] = NAN, keys[4] = -kInf, keys[5] = kInf, keys[6] = -0.0f, keys[40] = NAN;
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.src = at(0, DType::Fp32), o.src2 = at(256, DType::Int32), o.dst = at(1024, DType::Fp32);
    b.vec(VecOp::Sort32, DType::Fp32, 64, o);
  });
  r.put(0, keys);
  r.put(256, idx);
  r.run();
  const auto out = r.get<Pair>(1024, 64);
  for (int blk = 0; blk < 2; ++blk) {
    // The expected order, built by hand: key classes high to low, input order inside a class.
    std::vector<Pair> want;
    auto take = [&](const std::function<bool(float)>& cls) {
      for (int i = blk * 32; i < blk * 32 + 32; ++i)
        if (cls(keys[i])) want.push_back({keys[i], idx[i]});
    };
    take([](float k) { return k == kInf; });
    for (int v = 4; v >= 0; --v) take([v](float k) { return k == static_cast<float>(v); });  // -0 ties +0
    take([](float k) { return k == -kInf; });
    take([](float k) { return std::isnan(k); });
    ASSERT_EQ(want.size(), 32u);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(out[blk * 32 + i], want[i]) << "block " << blk << " position " << i;
  }
  EXPECT_EQ(out[31].index, 1003);  // NaN after -inf
  EXPECT_EQ(out[30].index, 1004);
}

TEST(VectorOps, Sort32RefusesAPartialBlock) {
  Program p = test::single_core(CoreKind::Aiv);
  CoreBuilder(p.cores[0]).vec(VecOp::Sort32, DType::Fp32, 40);
  try {
    simulate(hw(), p);
    FAIL() << "sort32 of 40 pairs ran";
  } catch (const SimError& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 32"), std::string::npos) << e.what();
  }
}

// mrgsort: each chunk of `chunk` pairs inside rows of `row` pairs is stably sorted.
std::vector<Pair> chunk_sorted(std::vector<Pair> v, size_t row, size_t chunk) {
  for (size_t r0 = 0; r0 < v.size(); r0 += row)
    for (size_t c0 = r0; c0 < std::min(v.size(), r0 + row); c0 += chunk)
      std::stable_sort(v.begin() + c0, v.begin() + std::min({v.size(), r0 + row, c0 + chunk}),
                       [](const Pair& a, const Pair& b) { return a.key > b.key; });
  return v;
}

TEST(VectorOps, MrgSortSortsEveryChunkOfEveryRowStably) {
  // Two rows of 96 pairs, chunks of 64 (so each row has a full chunk and a 32-pair tail), keys
  // with many ties whose indices show the order kept.
  std::vector<Pair> in(192);
  for (int i = 0; i < 192; ++i) in[i] = {static_cast<float>((i * 13) % 7) - 3.0f, i};
  for (int i = 0; i < 192; i += 32) std::stable_sort(in.begin() + i, in.begin() + i + 32, [](auto& a, auto& b) { return a.key > b.key; });
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.src = at(0, DType::Fp32), o.dst = at(4096, DType::Fp32), o.rows = 96, o.cols = 64;
    b.vec(VecOp::MrgSort, DType::Fp32, 192, o);
  });
  r.put(0, in);
  r.run();
  const auto out = r.get<Pair>(4096, 192);
  const auto want = chunk_sorted(in, 96, 64);
  for (int i = 0; i < 192; ++i) EXPECT_EQ(out[i], want[i]) << "pair " << i;
  // The tail chunk of row 0 (pairs 64..95) stays apart from row 1.
  EXPECT_EQ(out[64], in[64]);
}

TEST(VectorOps, MrgSortRefusesOverlappingBuffers) {
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.src = at(0, DType::Fp32), o.dst = at(128, DType::Fp32);
    b.vec(VecOp::MrgSort, DType::Fp32, 64, o);
  });
  EXPECT_NE(sim_error(r).find("overlap"), std::string::npos);
}

TEST(VectorOps, ExtractTakesKeysOrIndicesBitForBit) {
  const float payload_nan = std::bit_cast<float>(0x7fc01234u);
  const std::vector<Pair> in{{2.5f, 7}, {payload_nan, -1}, {-kInf, 123456}};
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.src = at(0, DType::Fp32), o.dst = at(256, DType::Fp32), o.scalar = 0;
    b.vec(VecOp::Extract, DType::Fp32, 3, o);
    o.dst = at(512, DType::Int32), o.scalar = 1;
    b.vec(VecOp::Extract, DType::Fp32, 3, o);
  });
  r.put(0, in);
  r.run();
  const auto keys = r.get<uint32_t>(256, 3);
  EXPECT_EQ(keys[0], std::bit_cast<uint32_t>(2.5f));
  EXPECT_EQ(keys[1], 0x7fc01234u);
  EXPECT_EQ(keys[2], std::bit_cast<uint32_t>(-kInf));
  EXPECT_EQ(r.get<int32_t>(512, 3), (std::vector<int32_t>{7, -1, 123456}));
}

TEST(VectorOps, GatherReadsThroughElementOffsets) {
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.src = at(64, DType::Fp32), o.src2 = at(0, DType::Int32), o.dst = at(256, DType::Fp32), o.cols = 8;
    b.vec(VecOp::Gather, DType::Fp32, 5, o);
    o.src = at(512, DType::Fp16), o.src2 = at(32, DType::Int32), o.dst = at(768, DType::Fp16), o.cols = 4;
    b.vec(VecOp::Gather, DType::Fp16, 3, o);  // offsets count 2-byte elements here
  });
  r.put(0, std::vector<int32_t>{7, 0, 0, 3, 2});
  r.put(32, std::vector<int32_t>{3, 0, 0});
  r.put(64, std::vector<float>{10, 11, 12, 13, 14, 15, 16, 17});
  r.put(512, std::vector<uint16_t>{0x3c00, 0x4000, 0x4200, 0x4400});
  r.run();
  EXPECT_EQ(r.get<float>(256, 5), (std::vector<float>{17, 10, 10, 13, 12}));
  EXPECT_EQ(r.get<uint16_t>(768, 3), (std::vector<uint16_t>{0x4400, 0x3c00, 0x3c00}));
}

TEST(VectorOps, AGatherIndexOutsideItsRegionNamesTheInstruction) {
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.dst = at(512, DType::Fp32);
    b.vec(VecOp::Dup, DType::Fp32, 8, o);
    o.src = at(64, DType::Fp32), o.src2 = at(0, DType::Int32), o.dst = at(256, DType::Fp32), o.cols = 8;
    b.vec(VecOp::Gather, DType::Fp32, 3, o);
  });
  r.put(0, std::vector<int32_t>{1, 8, 2});
  const std::string msg = sim_error(r);
  EXPECT_NE(msg.find("aiv0 instruction #1 'vector gather fp32 x3'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("index 8"), std::string::npos) << msg;
}

TEST(VectorOps, ScatterWritesTheAddressedElementsOnly) {
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.src = at(64, DType::Int32), o.src2 = at(0, DType::Int32), o.dst = at(256, DType::Int32), o.cols = 6;
    b.vec(VecOp::Scatter, DType::Int32, 4, o);
  });
  r.put(0, std::vector<int32_t>{5, 0, 5, 2});
  r.put(64, std::vector<int32_t>{1, 2, 3, 4});
  r.put(256, std::vector<int32_t>{-1, -1, -1, -1, -1, -1, 99});
  r.run();
  // Index 5 is written twice: the later element wins. Element 6 lies outside the region.
  EXPECT_EQ(r.get<int32_t>(256, 7), (std::vector<int32_t>{2, -1, 4, -1, -1, 3, 99}));

  UbRun bad([](CoreBuilder& b) {
    Operands o;
    o.src = at(64, DType::Int32), o.src2 = at(0, DType::Int32), o.dst = at(256, DType::Int32), o.cols = 6;
    b.vec(VecOp::Scatter, DType::Int32, 2, o);
  });
  bad.put(0, std::vector<int32_t>{0, -1});
  EXPECT_NE(sim_error(bad).find("destination region"), std::string::npos);
}

TEST(VectorOps, HistogramCountsValuesInRange) {
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.src = at(0, DType::Int32), o.dst = at(256, DType::Int32), o.cols = 4;
    b.vec(VecOp::Histogram, DType::Int32, 9, o);
  });
  r.put(0, std::vector<int32_t>{3, 0, 3, -1, 4, 3, 1, 100, 0});
  r.put(256, std::vector<int32_t>{7, 7, 7, 7});
  r.run();
  EXPECT_EQ(r.get<int32_t>(256, 4), (std::vector<int32_t>{2, 1, 0, 3}));
}

TEST(VectorOps, CumsumIsInclusive) {
  UbRun r([](CoreBuilder& b) {
    Operands o;
    o.src = at(0, DType::Int32), o.dst = at(64, DType::Int32);
    b.vec(VecOp::Cumsum, DType::Int32, 5, o);
    o.src = at(128, DType::Fp32), o.dst = at(192, DType::Fp32);
    b.vec(VecOp::Cumsum, DType::Fp32, 3, o);
  });
  r.put(0, std::vector<int32_t>{3, 0, -1, 4, 10});
  r.put(128, std::vector<float>{1.0f, 0x1p-24f, 0x1p-24f});
  r.run();
  EXPECT_EQ(r.get<int32_t>(64, 5), (std::vector<int32_t>{3, 3, 2, 6, 16}));
  // Each prefix is rounded once from the double sum: 1 + 2^-24 rounds to 1, 1 + 2^-23 does not.
  EXPECT_EQ(r.get<float>(192, 3), (std::vector<float>{1.0f, 1.0f, 1.0f + 0x1p-23f}));
}

TEST(VectorOps, TimingIsStartupPlusElementsOverRate) {
  int checked = 0;
  for (const char* preset : {"ascend910b2", "ascend950pr"}) {
    const auto& spec = test::preset(preset);
    for (int op = static_cast<int>(VecOp::ReduceSum); op < kNumVecOps; ++op)
      for (int d = 0; d < kNumDTypes; ++d) {
        const double rate = spec.aiv.vec_rate[op][d];
        if (!(rate > 0)) continue;
        constexpr uint32_t m = 4000;  // whole sort32 blocks
        Program p = test::single_core(CoreKind::Aiv);
        CoreBuilder(p.cores[0]).vec(static_cast<VecOp>(op), static_cast<DType>(d), m);
        EXPECT_DOUBLE_EQ(simulate(spec, p).cycles, spec.aiv.vector_startup_cycles + std::ceil(m / rate))
            << preset << " " << vec_op_name(static_cast<VecOp>(op)) << " " << dtype_name(static_cast<DType>(d));
        ++checked;
      }
  }
  EXPECT_EQ(checked, 42);  // every rate the two architectures list for these ops
}

TEST(VectorOps, RatesComeFromTheTheoryTables) {
  const auto& a2 = test::preset("ascend910b2").aiv.vec_rate;
  const auto& a5 = test::preset("ascend950pr").aiv.vec_rate;
  auto rate = [](const auto& t, VecOp op, DType d) { return t[static_cast<int>(op)][static_cast<int>(d)]; };
  EXPECT_NEAR(rate(a2, VecOp::ReduceSum, DType::Fp16), 128.0 / 7, 0.01);  // 表8 ReduceRepeat
  EXPECT_NEAR(rate(a2, VecOp::ReduceMax, DType::Fp32), 64.0 / 7, 0.01);
  EXPECT_EQ(rate(a2, VecOp::Sort32, DType::Fp32), 2);                      // 表11
  EXPECT_EQ(rate(a2, VecOp::MrgSort, DType::Fp32), 2);
  EXPECT_EQ(rate(a2, VecOp::Gather, DType::Fp32), 5);                      // 表12
  EXPECT_EQ(rate(a2, VecOp::Arange, DType::Int32), 64);                    // 表10 CreateVecIndex
  EXPECT_EQ(rate(a5, VecOp::ReduceSum, DType::Fp32), 64);                  // RegBase 表11
  EXPECT_EQ(rate(a5, VecOp::Arange, DType::Int32), 32);                    // RegBase 表17
  EXPECT_EQ(rate(a5, VecOp::Gather, DType::Fp32), 16);                     // RegBase 表13
}

}  // namespace
}  // namespace npusim::sim
