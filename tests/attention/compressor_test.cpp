// The V4 compressor (kernels/compressor.hpp) on both data paths (GM workspace on 910C, L0C->UB on
// 950): overlapped m = 4 prefill from position 0 (block 0's -inf previous half), m = 128, chunks
// that start mid-block with a carried state (two calls equal one), decode batches at mixed
// positions, both rope layouts and positions, d 128 and 512, FP8 fake quant; the reference's
// building blocks by hand; refusals naming their keys; broken programs caught by validation.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <limits>

#include "common/errors.hpp"
#include "common/numerics.hpp"
#include "kernels/compressor.hpp"
#include "kernels/cube_vector.hpp"
#include "kernels/tensor_io.hpp"
#include "sim/functional.hpp"
#include "test_support.hpp"

namespace npusim {
namespace {

using kernels::CompressorKernel;
using kernels::CompressorShape;
using ref::RopeLayout;

const char* const kHardware[] = {"ascend910c", "ascend950pr"};

CompressorShape shape(int64_t H, int64_t d, int64_t m, int64_t tokens, std::vector<int64_t> starts, bool fp8 = false,
                      RopeLayout layout = RopeLayout::Interleaved, bool tail = true) {
  CompressorShape s;
  s.cfg.hidden = H, s.cfg.head_dim = d, s.cfg.ratio = m, s.cfg.overlap = m == 4, s.cfg.tokens = tokens;
  s.cfg.starts = std::move(starts), s.cfg.fp8 = fp8, s.cfg.rope.layout = layout, s.cfg.rope.at_tail = tail;
  return s;
}

app::LoadedRun make_run(const CompressorShape& s, const std::string& hw) {
  app::LoadedRun run;
  run.config_file = "test";
  run.hw = test::preset(hw);
  run.kernel = std::make_unique<CompressorKernel>(s, kernels::default_compressor_tiling(s, run.hw), true);
  run.inputs = {"normal", 1.0, 7};
  return run;
}

std::string failures(const reports::ValidationReport& v) {
  std::string why;
  for (const auto& f : v.failures) why += "\n  " + f;
  return why;
}

void expect_valid(const CompressorShape& s, const std::string& hw, const std::string& what) {
  auto run = make_run(s, hw);
  const kernels::Status st = run.kernel->can_implement(run.hw);
  ASSERT_TRUE(st.ok) << what << ": " << st.key << ": " << st.reason;
  const auto out = app::execute_functional(run);
  ASSERT_TRUE(out.kernel.validation.has_value()) << what;
  EXPECT_TRUE(out.kernel.validation->passed) << hw << " " << what << failures(*out.kernel.validation);
  EXPECT_EQ(out.kernel.validation->outputs.size(), 3u) << "the entries and both states are judged";
  // The instruction estimate used for limits up front stays within 30% of the real count.
  const double est = run.kernel->estimated_instructions(), real = static_cast<double>(out.sim.instructions);
  EXPECT_LT(est, 1.3 * real) << what;
  EXPECT_GT(est, 0.8 * real) << what;
}

// ---- The reference's building blocks, by hand ----

TEST(CompressorReference, RopeLayoutsRotateTheirPairs) {
  const double cos1 = std::cos(3.0), sin1 = std::sin(3.0), f = std::pow(100.0, -0.5);
  const double cos2 = std::cos(3.0 * f), sin2 = std::sin(3.0 * f);
  const int64_t pos = 3;
  for (auto layout : {RopeLayout::Interleaved, RopeLayout::Half})
    for (bool tail : {true, false}) {
      ref::RopeSpec r{layout, 4, tail, 100};
      std::vector<double> cs(4), sn(4), x{9, 9, 9, 9, 9, 9};
      ref::rope_tables(r, 1, &pos, cs.data(), sn.data());
      const int64_t o = tail ? 2 : 0;
      x[o] = 1, x[o + 1] = 2, x[o + 2] = 3, x[o + 3] = 4;
      ref::rope_rows(r, 1, 6, x.data(), cs.data(), sn.data());
      // Interleaved pairs (0,1) turn by pos, (2,3) by pos theta^-1/2; half pairs (0,2) and (1,3).
      const int a = 0, b = layout == RopeLayout::Interleaved ? 1 : 2, c = layout == RopeLayout::Interleaved ? 2 : 1, d = 3;
      const double in[4] = {1, 2, 3, 4};
      EXPECT_NEAR(x[o + a], in[a] * cos1 - in[b] * sin1, 1e-12);
      EXPECT_NEAR(x[o + b], in[b] * cos1 + in[a] * sin1, 1e-12);
      EXPECT_NEAR(x[o + c], in[c] * cos2 - in[d] * sin2, 1e-12);
      EXPECT_NEAR(x[o + d], in[d] * cos2 + in[c] * sin2, 1e-12);
      EXPECT_EQ(x[tail ? 0 : 4], 9.0) << "dims outside the rope dims stay";
    }
}

TEST(CompressorReference, Fp8FakeQuantUsesPowerOfTwoScalesAndTakesTheDevicesTieChoice) {
  // amax 1: scale 2^ceil(log2(1/448)) = 2^-8; 1 -> 256 exactly; 0.3 -> e4m3(76.8) = 80 -> 0.3125.
  std::vector<double> x{1.0, 0.3, -0.5, 0.0};
  ref::fp8_fake_quant(x.data(), 4, 64);
  EXPECT_EQ(x[0], 1.0);
  EXPECT_EQ(x[1], 80.0 / 256);
  EXPECT_EQ(x[2], -0.5);
  EXPECT_EQ(x[3], 0.0);
  // 1 + 1/16 sits on the tie between codes 1 and 1.125 (scale 2^-8 as 1 is the block's amax):
  // the device may take either; a value two codes away is not taken.
  const double tie = 1.0 + 1.0 / 16;
  std::vector<double> y{1.0, tie}, out(2), dev{1.0, 1.125};
  EXPECT_EQ(ref::fp8_fake_quant_like(y.data(), dev.data(), 2, 64, 1e-6, out.data()), 1);
  EXPECT_EQ(out[1], 1.125);
  dev[1] = 1.25;
  EXPECT_EQ(ref::fp8_fake_quant_like(y.data(), dev.data(), 2, 64, 1e-6, out.data()), 0);
  EXPECT_EQ(out[1], 1.0) << "round to nearest even at the tie, the device's far code is not adopted";
}

// Non-overlapped m = 2, d = 2, H = 1: entry 0 pools rows 0 and 1 per channel with a softmax over
// their scores; RMSNorm; RoPE at position 0 is the identity.
TEST(CompressorReference, PoolsEachChannelWithASoftmaxOverTheBlocksRows) {
  ref::CompressorConfig c;
  c.hidden = 1, c.head_dim = 2, c.ratio = 2, c.overlap = false, c.eps = 0, c.tokens = 2, c.starts = {0};
  c.rope.dims = 2;
  const double x[2] = {1, 2}, wkv[2] = {1, -1}, wg[2] = {0.5, 2}, ape[4] = {0, 0, 1, -1}, nw[2] = {1, 1};
  const double st[4] = {}, cs[2] = {1, 1}, sn[2] = {0, 0};
  const auto r = ref::compressor(c, x, wkv, wg, ape, nw, st, st, cs, sn);
  ASSERT_EQ(r.entries.size(), 2u);
  double pooled[2];
  for (int ch = 0; ch < 2; ++ch) {
    const double s0 = x[0] * wg[ch] + ape[ch], s1 = x[1] * wg[ch] + ape[2 + ch];
    const double p0 = std::exp(s0) / (std::exp(s0) + std::exp(s1));
    pooled[ch] = p0 * x[0] * wkv[ch] + (1 - p0) * x[1] * wkv[ch];
  }
  const double rms = std::sqrt((pooled[0] * pooled[0] + pooled[1] * pooled[1]) / 2);
  EXPECT_NEAR(r.entries[0], pooled[0] / rms, 1e-12);
  EXPECT_NEAR(r.entries[1], pooled[1] / rms, 1e-12);
}

// Overlapped m = 2: entry 1 pools block 0's rows on channels [0, d) with block 1's on [d, 2d);
// entry 0 sees only its own rows (the -inf previous half).
TEST(CompressorReference, OverlapPoolsThePreviousBlocksFirstHalf) {
  ref::CompressorConfig c;
  c.hidden = 1, c.head_dim = 2, c.ratio = 2, c.overlap = true, c.eps = 0, c.tokens = 4, c.starts = {0};
  c.rope.dims = 2;
  const double x[4] = {1, -2, 0.5, 3}, wkv[4] = {1, 2, 3, 4}, wg[4] = {0.1, 0.2, 0.3, 0.4}, ape[8] = {}, nw[2] = {1, 1};
  const double st[16] = {}, cs[4] = {1, 1, 1, 1}, sn[4] = {};
  const auto r = ref::compressor(c, x, wkv, wg, ape, nw, st, st, cs, sn);
  ASSERT_EQ(r.prequant.size(), 4u);
  auto pool = [&](std::vector<std::pair<int, int>> rows, int ch) {  // (token, channel of the 2d-wide row)
    double z = 0, n = 0;
    for (auto [t, col] : rows) z += std::exp(x[t] * wg[col + ch]), n += std::exp(x[t] * wg[col + ch]) * x[t] * wkv[col + ch];
    return n / z;
  };
  const double e0[2] = {pool({{0, 2}, {1, 2}}, 0), pool({{0, 2}, {1, 2}}, 1)};
  const double e1[2] = {pool({{0, 0}, {1, 0}, {2, 2}, {3, 2}}, 0), pool({{0, 0}, {1, 0}, {2, 2}, {3, 2}}, 1)};
  const double r0 = std::hypot(e0[0], e0[1]) / std::sqrt(2.0), r1 = std::hypot(e1[0], e1[1]) / std::sqrt(2.0);
  for (int ch = 0; ch < 2; ++ch) {  // normalised (weight 1, eps 0); RoPE with cos 1, sin 0
    EXPECT_NEAR(r.prequant[ch], e0[ch] / r0, 1e-12);
    EXPECT_NEAR(r.prequant[2 + ch], e1[ch] / r1, 1e-12);
  }
  // The state: rows [0, 2) hold block 1 (the last complete one), nothing current.
  EXPECT_EQ(r.kv_state[0], x[2] * wkv[0]);
  EXPECT_EQ(r.kv_state[4 + 3], x[3] * wkv[3]);
}

// ---- The kernel on both data paths ----

TEST(Compressor, OverlappedPrefillFromZero) {
  for (const char* hw : kHardware) {
    expect_valid(shape(256, 128, 4, 64, {0}), hw, "m4 d128 T64");
    expect_valid(shape(256, 512, 4, 70, {0}, true), hw, "m4 d512 T70 fp8");
    expect_valid(shape(256, 128, 4, 50, {0}, false, RopeLayout::Half), hw, "m4 d128 T50 half");
    expect_valid(shape(1024, 512, 4, 1024, {0}, true), hw, "m4 d512 H1024 T1024 fp8 (many FP8 blocks)");
  }
}

TEST(Compressor, NonOverlappedPrefill) {
  for (const char* hw : kHardware) {
    expect_valid(shape(256, 512, 128, 300, {0}, true), hw, "m128 d512 T300 fp8 (a trailing 44-row block)");
    expect_valid(shape(256, 128, 128, 512, {0}, false, RopeLayout::Half, false), hw, "m128 d128 T512 half head");
  }
}

TEST(Compressor, ChunkStartingMidBlock) {
  for (const char* hw : kHardware) {
    expect_valid(shape(256, 128, 4, 37, {6}), hw, "m4 start 6 T37");
    expect_valid(shape(256, 512, 4, 9, {13}, true), hw, "m4 start 13 T9 fp8");
    expect_valid(shape(256, 128, 128, 200, {200}), hw, "m128 start 200 T200");
    expect_valid(shape(256, 128, 4, 2, {5}), hw, "m4 start 5 T2 (no block completes)");
    expect_valid(shape(256, 128, 4, 9, {3, 22}), hw, "m4 two sequences");
    expect_valid(shape(256, 128, 4, 10, {8}, false, RopeLayout::Half), hw, "m4 start 8 (only the previous block is held)");
  }
}

TEST(Compressor, DecodeEmitsOnlyWhereABlockCompletes) {
  const std::vector<int64_t> p4{3, 0, 7, 10, 4, 11, 1, 2, 15}, p128{127, 5, 255, 0, 383, 130};
  for (const char* hw : kHardware) {
    expect_valid(shape(256, 512, 4, 1, p4, true), hw, "m4 decode");
    expect_valid(shape(256, 128, 128, 1, p128), hw, "m128 decode");
    expect_valid(shape(256, 128, 4, 1, p4, false, RopeLayout::Half), hw, "m4 decode half");
  }
  // (pos + 1) mod m == 0: 3, 7, 11, 15 for m = 4; 127, 255, 383 for m = 128.
  EXPECT_EQ(shape(256, 512, 4, 1, p4).cfg.entries(), 4);
  EXPECT_EQ(CompressorKernel(shape(256, 128, 128, 1, p128), {}, true).tensors()[9].rows, 3);
}

// ---- Two calls with the state carried equal one call on the concatenation ----

struct Outputs {
  bool passed = false;
  std::vector<std::vector<double>> values;  // c, kv_state_out, score_state_out
};

Outputs run_with(const CompressorShape& s, const std::string& hw, const std::vector<std::vector<double>>& inputs) {
  const auto& spec = test::preset(hw);
  CompressorKernel k(s, kernels::default_compressor_tiling(s, spec), true);
  EXPECT_TRUE(k.can_implement(spec).ok);
  const sim::Program prog = k.lower(spec, true);
  sim::SimOptions opt;
  opt.record_work = true;
  const auto timed = sim::simulate(spec, prog, opt);
  sim::FunctionalMemory mem(spec, prog);
  const auto ts = k.tensors();
  for (size_t i = 0; i < inputs.size(); ++i) kernels::write_tensor(mem.gm(), ts[i], inputs[i]);
  sim::run_functional(prog, timed, mem);
  Outputs o;
  o.passed = true;
  for (const auto& v : kernels::validate_outputs(k, inputs, mem.gm())) o.passed = o.passed && v.v.passed;
  for (const auto& t : ts)
    if (t.output) o.values.push_back(kernels::read_tensor(mem.gm(), t));
  return o;
}

void expect_two_calls_equal_one(int64_t m, int64_t d, int64_t p0, int64_t t1, int64_t t2, const std::string& hw) {
  SCOPED_TRACE(hw + " m " + std::to_string(m) + " d " + std::to_string(d) + " from " + std::to_string(p0) + ": " +
               std::to_string(t1) + " + " + std::to_string(t2));
  const CompressorShape whole = shape(256, d, m, t1 + t2, {p0}), first = shape(256, d, m, t1, {p0}),
                        second = shape(256, d, m, t2, {p0 + t1});
  const CompressorKernel kw(whole, {}, true), k1(first, {}, true), k2(second, {}, true);
  const kernels::InputSpec spec{"normal", 1.0, 11};
  std::vector<std::vector<double>> in_w, in_1, in_2;
  for (size_t i = 0; i < 9; ++i) in_w.push_back(kw.make_input(i, spec));
  in_1 = in_2 = in_w;
  const size_t H = 256, split = static_cast<size_t>(t1) * H;
  in_1[0].assign(in_w[0].begin(), in_w[0].begin() + split);
  in_2[0].assign(in_w[0].begin() + split, in_w[0].end());
  for (size_t i : {5, 6}) in_1[i] = k1.make_input(i, spec), in_2[i] = k2.make_input(i, spec);
  const Outputs ow = run_with(whole, hw, in_w), o1 = run_with(first, hw, in_1);
  in_2[7] = o1.values[1], in_2[8] = o1.values[2];  // the state carried
  const Outputs o2 = run_with(second, hw, in_2);
  EXPECT_TRUE(ow.passed) << "one call";
  EXPECT_TRUE(o1.passed) << "first call";
  EXPECT_TRUE(o2.passed) << "second call";
  std::vector<double> joined = o1.values[0];
  joined.insert(joined.end(), o2.values[0].begin(), o2.values[0].end());
  ASSERT_EQ(joined.size(), ow.values[0].size()) << hw;
  ASSERT_FALSE(joined.empty());
  for (size_t i = 0; i < joined.size(); ++i)  // a bf16 ulp or so: the calls pool in different tiles
    ASSERT_NEAR(joined[i], ow.values[0][i], std::ldexp(1.0, -6) * std::fabs(ow.values[0][i]) + 1e-3) << hw << " entry value " << i;
  // The state rows that hold positions (the rest are not read by any call and may differ).
  const int64_t end = p0 + t1 + t2, C = whole.cfg.coff() * d;
  std::vector<int64_t> rows;
  for (int64_t j = 0; j < end % m; ++j) rows.push_back(whole.cfg.overlap ? m + j : j);
  for (int64_t j = 0; whole.cfg.overlap && end >= m && j < m; ++j) rows.push_back(j);
  for (int k : {1, 2})
    for (int64_t r : rows)
      for (int64_t ch = 0; ch < C; ++ch) {
        const size_t i = static_cast<size_t>(r * C + ch);
        ASSERT_NEAR(o2.values[k][i], ow.values[k][i], 1e-5 * (1 + std::fabs(ow.values[k][i]))) << "state " << k << " row " << r;
      }
}

TEST(Compressor, TwoCallsWithACarriedStateEqualOne) {
  for (const char* hw : kHardware) {
    expect_two_calls_equal_one(4, 128, 0, 7, 22, hw);     // the first call ends mid-block
    expect_two_calls_equal_one(4, 512, 9, 12, 11, hw);    // both start mid-block
    expect_two_calls_equal_one(128, 128, 0, 200, 90, hw);
    expect_two_calls_equal_one(4, 128, 0, 31, 1, hw);     // prefill, then a decode step that emits
    expect_two_calls_equal_one(128, 128, 0, 127, 1, hw);
  }
}

// ---- Refusals name their keys ----

kernels::Status status_of(const std::string& workload, const std::string& tiling = "") {
  auto doc = YamlDoc::from_string("workload: " + workload + (tiling.empty() ? "" : "\ntiling: " + tiling) + "\n", "t.yaml");
  const auto& hw = test::preset("ascend910c");
  const std::optional<YamlNode> t = tiling.empty() ? std::nullopt : std::optional<YamlNode>(doc->root().at("tiling"));
  return kernels::make_compressor(doc->root().at("workload"), t, hw)->can_implement(hw);
}

TEST(CompressorBadInput, RefusalsNameTheirKeys) {
  const std::string ok = "{op: compressor, hidden: 256, head_dim: 512, ratio: 4, tokens: 64, starts: [0]";
  EXPECT_TRUE(status_of(ok + "}").ok);
  EXPECT_EQ(status_of("{op: compressor, hidden: 250, head_dim: 512, ratio: 4, tokens: 64, starts: [0]}").key, "workload.hidden");
  EXPECT_EQ(status_of(ok + ", rope: {dims: 63}}").key, "workload.rope.dims");
  EXPECT_EQ(status_of(ok + ", rope: {dims: 96}, quant: fp8}").key, "workload.quant");
  EXPECT_EQ(status_of(ok + "}", "{buffers: 9}").key, "tiling.buffers");
  EXPECT_EQ(status_of(ok + "}", "{entries_per_tile: 64}").key, "tiling.entries_per_tile");
  EXPECT_EQ(status_of(ok + "}", "{blocks_per_tile: 64}").key, "tiling.blocks_per_tile");
  EXPECT_EQ(status_of("{op: compressor, hidden: 256, head_dim: 128, ratio: 128, tokens: 300, starts: [0]}",
                      "{l1: [64, 128, 256]}").key, "tiling.l1");
  // Parse errors name the key too.
  try {
    status_of(ok + ", rope: {layout: neox}}");
    ADD_FAILURE() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("rope.layout"), std::string::npos) << e.what();
  }
}

// ---- Broken programs fail validation ----

bool caught(const CompressorShape& s, const std::string& hw, const std::function<void(sim::Program&)>& breakit) {
  auto run = make_run(s, hw);
  sim::Program p = run.kernel->lower(run.hw, true);
  breakit(p);
  try {
    return !app::execute_functional(run, p).kernel.validation->passed;
  } catch (const SimError&) {
    return true;
  }
}

void erase_if(sim::CoreProgram& c, const std::function<bool(const sim::Instr&, const sim::Operands&)>& f, size_t limit) {
  for (size_t i = 0; i < c.code.size() && limit;)
    if (f(c.code[i], c.operands[i])) {
      c.code.erase(c.code.begin() + static_cast<long>(i));
      c.operands.erase(c.operands.begin() + static_cast<long>(i));
      --limit;
    } else {
      ++i;
    }
}

TEST(CompressorBadInput, BrokenProgramsFailValidation) {
  for (const char* hw : kHardware) {
    const auto s = shape(256, 128, 4, 64, {6}, true);
    auto run = make_run(s, hw);
    EXPECT_FALSE(caught(s, hw, [](sim::Program&) {})) << hw << ": the unbroken program passes";
    // One AIV skips an exp of the softmax pooling.
    EXPECT_TRUE(caught(s, hw, [](sim::Program& p) {
      for (auto& c : p.cores)
        if (c.kind == sim::CoreKind::Aiv) return erase_if(c, [](const sim::Instr& i, const sim::Operands&) {
            return i.op == sim::Op::Vector && i.vop == sim::VecOp::Exp; }, 1);
    })) << hw;
    // The state rows are not written back.
    const auto ts = run.kernel->tensors();
    const uint64_t lo = ts[7].addr, hi = ts[8].addr + static_cast<uint64_t>(ts[8].rows * ts[8].cols * 4);
    EXPECT_TRUE(caught(s, hw, [&](sim::Program& p) {
      for (auto& c : p.cores) erase_if(c, [&](const sim::Instr& i, const sim::Operands& o) {
          return i.op == sim::Op::Copy && i.path == sim::Path::UbToGm && o.dst.offset >= lo && o.dst.offset < hi; }, 1 << 30);
    })) << hw;
    // The AIVs stop waiting for their AIC's rows and read the slots before the cube wrote them. (With
    // a state to read first, phase S gives the cube enough of a head start to hide this, as on the
    // chip; from position 0 nothing does.)
    EXPECT_TRUE(caught(shape(256, 128, 4, 64, {0}, true), hw, [](sim::Program& p) {
      for (auto& c : p.cores)
        if (c.kind == sim::CoreKind::Aiv) erase_if(c, [](const sim::Instr& i, const sim::Operands&) {
            return i.op == sim::Op::CrossWait && i.id == kernels::CubeVectorSlots::kReady; }, 1 << 30);
    })) << hw;
  }
}

// ---- V4-Flash shapes: timing-only programs stay small (a layer must simulate in well under 2 s) ----

std::vector<int64_t> v4_starts(bool decode) {
  // Decode: 60 sequences at mixed positions, 15 completing an m = 4 block and one an m = 128 block.
  std::vector<int64_t> starts;
  for (int b = 0; b < (decode ? 60 : 1); ++b) starts.push_back(decode ? 4096 * (1 + b % 3) + 37 * b + 127 : 0);
  return starts;
}

TEST(Compressor, V4FlashShapesLowerWithinAnInstructionBudget) {
  for (const char* hw : kHardware)
    for (int64_t m : {4, 128})
      for (bool decode : {true, false}) {
        auto run = make_run(shape(4096, 512, m, decode ? 1 : 4096, v4_starts(decode), true), hw);
        const auto st = run.kernel->can_implement(run.hw);
        ASSERT_TRUE(st.ok) << hw << " " << st.key << ": " << st.reason;
        const auto out = app::execute(run);
        EXPECT_GT(out.kernel.time_us, 0);
        EXPECT_LT(out.sim.instructions, decode ? 40000u : 400000u) << hw << " m " << m;
      }
}

// ---- V4-Flash timings (run by hand: --gtest_also_run_disabled_tests) ----

TEST(CompressorTiming, DISABLED_V4Flash) {
  for (const char* hw : kHardware)
    for (int64_t m : {4, 128})
      for (bool decode : {true, false}) {
        auto s = shape(4096, 512, m, decode ? 1 : 4096, v4_starts(decode), true);
        auto run = make_run(s, hw);
        const auto st = run.kernel->can_implement(run.hw);
        ASSERT_TRUE(st.ok) << st.key << " " << st.reason;
        const auto t0 = std::chrono::steady_clock::now();
        const auto out = app::execute(run);
        const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        printf("%s m=%ld %s (%ld entries): %.2f us, %.1f%% of peak (cube busy %.1f%%, HBM %.1f%%), %lu instructions "
               "(estimate %.0f), %.3f s wall; tiling %s\n", hw, static_cast<long>(m), decode ? "decode B60" : "prefill T4096",
               static_cast<long>(s.cfg.entries()), out.kernel.time_us, 100 * out.kernel.peak_fraction,
               100 * out.kernel.utilization.cube, 100 * out.kernel.utilization.hbm_bw, static_cast<unsigned long>(out.sim.instructions),
               run.kernel->estimated_instructions(), wall, run.kernel->tiling_json().dump().c_str());
      }
}

}  // namespace
}  // namespace npusim
