// The sparse attention kernel (kernels/sparse_attention.hpp): functional runs on both data paths
// (GM workspace on 2201, L0C->UB / UB->L1 on 3510) against the fp64 reference and the
// same-precision emulation, over index lists with -1 and out-of-range entries, duplicates across
// tokens, unsorted lists, a query with no valid index, partial kv blocks, split_kv and both
// gather modes; broken programs; refusals naming their key; the YAML factory; and the
// first-principles property that the rows gathered, not the cache size, set the time.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>

#include <fmt/format.h>

#include "common/errors.hpp"
#include "common/yaml_reader.hpp"
#include "kernels/rng.hpp"
#include "kernels/sparse_attention.hpp"
#include "kernels/tensor_io.hpp"
#include "kernels/validation.hpp"
#include "sim/functional.hpp"
#include "test_support.hpp"

namespace npusim {
namespace {

using kernels::GatherBy;
using kernels::SparseAttentionKernel;
using kernels::SparseAttentionShape;
using kernels::SparseAttentionTiling;
using kernels::SparseKvSource;

const char* const kHardware[] = {"ascend910c", "ascend950pr"};

// DSA-like: H heads (16), d 576 / 512, T 5 over a 700-row cache, 300 indices per query. Token 0:
// 210 valid rows first, then -1 padding; token 1: unsorted, with -1 and >= rows mixed in and rows
// token 0 also reads; token 2: no valid index (-1 and >= rows only); token 3: 37 valid rows
// scattered among -1 (one partial block); token 4: all 300 valid, 100 of them token 0's.
SparseAttentionShape dsa_like(int64_t heads = 16) {
  SparseAttentionShape s;
  s.tokens = 5, s.heads = heads, s.d_qk = 576, s.d_v = 512;
  s.scale = 1.0 / std::sqrt(576.0);
  SparseKvSource src;
  src.rows = 700, src.per_query = 300;
  src.idx.assign(5 * 300, -1);
  kernels::Rng rng(11);
  auto at = [&](int t, int j) -> int32_t& { return src.idx[static_cast<size_t>(t * 300 + j)]; };
  for (int j = 0; j < 210; ++j) at(0, j) = (j * 7) % 700;
  for (int j = 0; j < 300; ++j) {
    const uint64_t r = rng.next() % 10;
    at(1, j) = r == 0 ? -1 : r == 1 ? 700 + static_cast<int32_t>(rng.next() % 50) : static_cast<int32_t>(rng.next() % 700);
  }
  for (int j = 0; j < 300; ++j) at(2, j) = j % 2 ? -1 : 700 + j;
  for (int j = 0; j < 37; ++j) at(3, 8 * j + 3) = static_cast<int32_t>((599 - 13 * j) % 700);
  for (int j = 0; j < 300; ++j) at(4, j) = j < 100 ? at(0, j) : static_cast<int32_t>(rng.next() % 700);
  s.sources.push_back(std::move(src));
  return s;
}

// V4-like: a 16-entry window ring per sequence and a compressed cache's top-32, with sinks; two
// sequences of 3 tokens; d_qk = d_v (K = V, the rope inside). The first token's window is not
// full yet (-1 in front); the compressed picks are unsorted and may repeat.
SparseAttentionShape v4_like() {
  SparseAttentionShape s;
  s.tokens = 6, s.heads = 16, s.d_qk = 128, s.d_v = 128, s.sink = true;
  s.scale = 1.0 / std::sqrt(128.0);
  SparseKvSource win, cmp;
  win.rows = 2 * 16, win.per_query = 16;
  cmp.rows = 2 * 60, cmp.per_query = 32;
  kernels::Rng rng(5);
  for (int t = 0; t < 6; ++t) {
    const int seq = t / 3, pos = 9 + 7 * (t % 3);  // positions 9, 16, 23
    for (int j = 0; j < 16; ++j) {
      const int p = pos - 15 + j;
      win.idx.push_back(p < 0 ? -1 : seq * 16 + p % 16);
    }
    const int visible = std::min(60, (pos + 1) * 2);
    for (int j = 0; j < 32; ++j) cmp.idx.push_back(j < 30 ? seq * 60 + static_cast<int32_t>(rng.next() % visible) : -1);
  }
  s.sources = {win, cmp};
  return s;
}

// The workbench's toy attention (KERNELS.md 6.1: 8 query heads, MQA, d_qk 80 = latent 64 + rope
// 16, d_v 64): 8 heads are one 32-byte fp32 vector, so the head block runs on one AIV of the pair.
// DSA-like: 3 decode tokens over a 600-row cache, 32 indices each. Token 0: 20 valid rows, then
// -1 padding; token 1: 32 unsorted picks with -1 and >= rows mixed in, some token 0's; token 2:
// 5 valid rows scattered among -1.
SparseAttentionShape toy_dsa() {
  SparseAttentionShape s;
  s.tokens = 3, s.heads = 8, s.d_qk = 80, s.d_v = 64;
  s.scale = 1.0 / std::sqrt(80.0);
  SparseKvSource src;
  src.rows = 600, src.per_query = 32;
  src.idx.assign(3 * 32, -1);
  kernels::Rng rng(23);
  auto at = [&](int t, int j) -> int32_t& { return src.idx[static_cast<size_t>(t * 32 + j)]; };
  for (int j = 0; j < 20; ++j) at(0, j) = (j * 29 + 3) % 600;
  for (int j = 0; j < 32; ++j) {
    const uint64_t r = rng.next() % 8;
    at(1, j) = r == 0 ? -1 : r == 1 ? 600 + static_cast<int32_t>(rng.next() % 40) : r == 2 ? at(0, j % 20)
                                                                                   : static_cast<int32_t>(rng.next() % 600);
  }
  for (int j = 0; j < 5; ++j) at(2, 6 * j + 1) = static_cast<int32_t>(590 - 37 * j);
  s.sources.push_back(std::move(src));
  return s;
}

// Toy V4-like: 3 sequences of one decode token at positions 9, 70 and 199 (context 200), a
// 16-slot window ring each (the first not full: -1 in front) and the top-32 of the sequence's
// compressed entries (m = 4: 50 per sequence, the visible ones only; fewer than 32 visible for
// the first: -1 padding), with sinks.
SparseAttentionShape toy_v4() {
  SparseAttentionShape s;
  s.tokens = 3, s.heads = 8, s.d_qk = 80, s.d_v = 64, s.sink = true;
  s.scale = 1.0 / std::sqrt(80.0);
  SparseKvSource win, cmp;
  win.rows = 3 * 16, win.per_query = 16;
  cmp.rows = 3 * 50, cmp.per_query = 32;
  kernels::Rng rng(31);
  const int pos[3] = {9, 70, 199};
  for (int t = 0; t < 3; ++t) {
    for (int j = 0; j < 16; ++j) {
      const int p = pos[t] - 15 + j;
      win.idx.push_back(p < 0 ? -1 : t * 16 + p % 16);
    }
    const int visible = (pos[t] + 1) / 4;
    for (int j = 0; j < 32; ++j) cmp.idx.push_back(j < visible ? t * 50 + static_cast<int32_t>(rng.next() % visible) : -1);
  }
  s.sources = {win, cmp};
  return s;
}

SparseAttentionTiling tiling(int64_t kv_block, int64_t head_block, GatherBy g, int split = 1, int stages = 2, int cores = 3) {
  SparseAttentionTiling t;
  t.kv_block = kv_block, t.head_block = head_block, t.gather = g, t.split_kv = split, t.stages = stages, t.cores = cores;
  return t;
}

app::LoadedRun make_run(const SparseAttentionShape& s, const SparseAttentionTiling& t, const std::string& hw,
                        double scale = 1.0, uint64_t seed = 7) {
  app::LoadedRun run;
  run.config_file = "test";
  run.hw = test::preset(hw);
  run.kernel = std::make_unique<SparseAttentionKernel>(s, t, false);
  run.inputs = {"normal", scale, seed};
  return run;
}

std::vector<std::vector<double>> inputs_of(const app::LoadedRun& run) {
  std::vector<std::vector<double>> in;
  const auto ts = run.kernel->tensors();
  for (size_t i = 0; i < ts.size(); ++i)
    if (!ts[i].output) in.push_back(run.kernel->make_input(i, run.inputs));
  return in;
}

// The device's outputs (out, lse) of a functional run of `prog`.
std::vector<std::vector<double>> device_outputs(const app::LoadedRun& run, const sim::Program& prog) {
  sim::SimOptions opt;
  opt.record_work = true;
  const sim::SimResult res = sim::simulate(run.hw, prog, opt);
  sim::FunctionalMemory mem(run.hw, prog);
  const auto ts = run.kernel->tensors();
  for (size_t i = 0; i < ts.size(); ++i)
    if (!ts[i].output) kernels::write_tensor(mem.gm(), ts[i], run.kernel->make_input(i, run.inputs));
  sim::run_functional(prog, res, mem);
  std::vector<std::vector<double>> out;
  for (const auto& t : ts)
    if (t.output) out.push_back(kernels::read_tensor(mem.gm(), t));
  return out;
}

std::string describe(const reports::ValidationReport& v) {
  std::string why;
  for (const auto& [name, o] : v.outputs)
    why += fmt::format("\n  {}: max_abs {:.3g} ratio_to_same {:.3g} cos {:.3g} mere {:.3g} mare {:.3g} failed {}", name, o.max_abs_err,
                       o.ratio_to_same_precision, o.cos_diff, o.mere, o.mare, o.failed_elements);
  for (const auto& f : v.failures) why += "\n  " + f;
  return why;
}

// Runs functionally and judges it. lse must pass every check. out must pass every check that its
// same-precision emulation (the kernel's own rounding points, judged by the same policy as if it
// were the device) passes. The validation widens each element's bound to twice the emulation's
// error there (plus atol), so most runs pass outright (every toy run does), but not all: the
// whole-tensor MARE (max relative error over |g| >= atol / rtol) is not widened, and rounding P to
// bf16 before P V, which the emulation and every flash attention incur, puts it above 0.078 on the
// DSA-like shape at kv_block 64 and 128 (0.091, 0.085, the emulation's own figure), where also a
// handful of elements (5 of 81920) land one bf16 ulp beyond the widened bound because the cube
// sums the scores in another order than the emulation. There the kernel may fail no more elements
// than its emulation (judged without the widening: 527 and 1136) and no more than 0.1%.
void expect_valid(const SparseAttentionShape& s, const SparseAttentionTiling& t, const std::string& hw, const std::string& what,
                  double scale = 1.0) {
  const app::LoadedRun run = make_run(s, t, hw, scale);
  const kernels::Status st = run.kernel->can_implement(run.hw);
  ASSERT_TRUE(st.ok) << what << ": " << st.key << ": " << st.reason;
  const app::RunOutput out = app::execute_functional(run);
  ASSERT_TRUE(out.kernel.validation.has_value()) << what;
  const auto& v = *out.kernel.validation;
  ASSERT_EQ(v.outputs.size(), 2u) << what << ": out and lse both judged";
  const std::string ctx = what + " " + run.kernel->tiling_json().dump() + describe(v);
  const auto golden = run.kernel->references(inputs_of(run), {});
  const auto tensors = run.kernel->tensors();  // by value: a reference into the temporary would dangle
  const kernels::TensorInfo& out_t = tensors[tensors.size() - 2];
  const kernels::Validation emu =
      kernels::validate_output(golden[0].same_precision, {golden[0].exact, {}}, kernels::tolerance_for(out_t.dtype), out_t.cols);
  for (const auto& [name, o] : v.outputs) {
    if (o.passed) continue;
    if (name == "lse") {
      ADD_FAILURE() << "lse fails: " << ctx;
      continue;
    }
    for (const auto& f : o.failures) {
      const std::string check = f.substr(0, f.find(':'));
      bool shared = false;
      for (const auto& ef : emu.failures) shared |= ef.substr(0, ef.find(':')) == check;
      EXPECT_TRUE(shared) << "out fails a check its emulation passes (" << f << "): " << ctx;
    }
    EXPECT_LE(o.failed_elements, std::min(emu.failed_elements, o.elements / 1000 + 2))
        << "out fails more elements than its emulation (" << emu.failed_elements << ") or 0.1% of them: " << ctx;
  }
  EXPECT_GT(out.kernel.cycles, 0u) << what;
  if (std::getenv("SA_VERBOSE"))
    std::printf("%s%s\n", ctx.c_str(), v.passed ? "  [passed]" : fmt::format("  [emulation's failures only: it fails {} elements]",
                                                                          emu.failed_elements).c_str());
}

TEST(SparseAttention, DsaLikeValidatesOnBothDataPathsAndGatherModes) {
  for (const char* hw : kHardware)
    for (GatherBy g : {GatherBy::Aic, GatherBy::Aiv}) {
      const std::string what = std::string(hw) + (g == GatherBy::Aic ? " aic" : " aiv");
      expect_valid(dsa_like(), tiling(64, 16, g), hw, what);
      expect_valid(dsa_like(), tiling(32, 16, g, 1, 3, 2), hw, what + " kv 32, 3 stages", 1.5);
    }
}

TEST(SparseAttention, V4LikeTwoSourcesWithSinkValidates) {
  // kv_block 16 cuts the window + top-k rows into blocks that straddle the two sources.
  for (const char* hw : kHardware)
    for (GatherBy g : {GatherBy::Aic, GatherBy::Aiv}) {
      const std::string what = std::string(hw) + (g == GatherBy::Aic ? " aic" : " aiv");
      expect_valid(v4_like(), tiling(16, 16, g), hw, what);
      expect_valid(v4_like(), tiling(48, 16, g, 1, 3, 4), hw, what + " kv 48");
    }
}

TEST(SparseAttention, SplitKvMergesOnTheAivs) {
  // DSA-like token 3 has all its rows in the first two thirds (some splits empty); token 2 none.
  for (const char* hw : kHardware) {
    expect_valid(dsa_like(), tiling(32, 16, GatherBy::Aic, 3), hw, std::string(hw) + " split 3");
    expect_valid(dsa_like(), tiling(64, 16, GatherBy::Aiv, 7, 2, 5), hw, std::string(hw) + " split 7 aiv");
    expect_valid(v4_like(), tiling(16, 16, GatherBy::Aic, 2, 3, 6), hw, std::string(hw) + " v4 split 2");
  }
}

TEST(SparseAttention, HeadBlocksValidate) {
  // 32 heads in two head blocks of 16 (each row gathered once per block), larger kv blocks.
  for (const char* hw : kHardware) {
    expect_valid(dsa_like(32), tiling(128, 16, GatherBy::Aic, 1, 2, 4), hw, std::string(hw) + " 2 head blocks");
    expect_valid(dsa_like(32), tiling(64, 32, GatherBy::Aiv, 2, 2, 3), hw, std::string(hw) + " 32-head block, split 2");
  }
}

TEST(SparseAttention, ToyEightHeadsRunOnOneAivOfThePair) {
  // head_block 8 (one fp32 vector of heads): AIV 0 of each pair holds the block, AIV 1 only
  // gathers (gather: aiv), answers nothing but takes the AIC's broadcasts, and merges (split_kv).
  for (const char* hw : kHardware)
    for (GatherBy g : {GatherBy::Aic, GatherBy::Aiv}) {
      const std::string what = std::string(hw) + (g == GatherBy::Aic ? " toy aic" : " toy aiv");
      // (a) one source; kv 16 cuts token 0's 20 rows and token 1's into a full and a partial block.
      expect_valid(toy_dsa(), tiling(16, 8, g), hw, what + " dsa");
      expect_valid(toy_dsa(), tiling(32, 8, g, 1, 3, 2), hw, what + " dsa kv 32, 3 stages, 2 cores", 1.5);
      // (b) window 16 + compressed 32 with sinks; kv 16 blocks straddle the two sources.
      expect_valid(toy_v4(), tiling(16, 8, g), hw, what + " v4");
      expect_valid(toy_v4(), tiling(48, 8, g, 1, 2, 1), hw, what + " v4 kv 48, 1 core");
      // (c) split_kv: each AIV pair's both AIVs merge; token 2 of the DSA-like has empty splits.
      expect_valid(toy_dsa(), tiling(16, 8, g, 3, 2, 3), hw, what + " dsa split 3");
      expect_valid(toy_v4(), tiling(16, 8, g, 2, 3, 6), hw, what + " v4 split 2");
      expect_valid(toy_v4(), tiling(16, 8, g, 4, 2, 5), hw, what + " v4 split 4, 5 cores");
    }
  // The default tilings (the graphs' choice): head block 8, split_kv over the idle AICs.
  for (const char* hw : kHardware)
    for (const SparseAttentionShape& s : {toy_dsa(), toy_v4()})
      expect_valid(s, kernels::default_sparse_attention_tiling(s, test::preset(hw)), hw, std::string(hw) + " toy default");
}

TEST(SparseAttention, HeadBlocksOfOddVectorCountsRunOnOneAiv) {
  // 16 heads in two blocks of 8, and 24 heads as one block of 24 (3 vectors: not split evenly over
  // two AIVs), beside the split 16-head blocks the other tests run.
  for (const char* hw : kHardware) {
    SparseAttentionShape s = toy_dsa();
    s.heads = 16;
    expect_valid(s, tiling(16, 8, GatherBy::Aic, 1, 2, 4), hw, std::string(hw) + " 16 heads in blocks of 8");
    s.heads = 24;
    expect_valid(s, tiling(32, 24, GatherBy::Aiv, 2, 2, 3), hw, std::string(hw) + " 24-head block, split 2");
  }
}

TEST(SparseAttention, IdleAivComputesNothing) {
  // With head_block 8 and gathers on the AIC, AIV 1 of a pair issues no vector instruction and no
  // copy outside the merge; the AIC hands S and O_blk to AIV 0 only.
  for (const char* hw : kHardware) {
    const app::LoadedRun run = make_run(toy_v4(), tiling(16, 8, GatherBy::Aic, 1, 2, 3), hw);
    const sim::Program prog = run.kernel->lower(run.hw, true);
    int active_vec = 0;
    for (const auto& c : prog.cores) {
      if (c.kind != sim::CoreKind::Aiv) continue;
      int work = 0;
      for (const auto& ins : c.code) work += ins.op == sim::Op::Vector || ins.op == sim::Op::Copy;
      if (c.index % 2) EXPECT_EQ(work, 0) << hw << " AIV " << c.index;
      else active_vec += work;
    }
    EXPECT_GT(active_vec, 0) << hw;
    const bool via_ub = run.hw.path(sim::Path::L0CToUb).available;
    if (!via_ub) continue;
    int to_ub = 0;
    for (const auto& c : prog.cores) {
      if (c.kind != sim::CoreKind::Aic) continue;
      for (size_t i = 0; i < c.code.size(); ++i) {
        if (c.code[i].op != sim::Op::Copy || c.code[i].path != sim::Path::L0CToUb) continue;
        ++to_ub;
        EXPECT_EQ(c.operands[i].sibling, 0) << hw << ": an L0C->UB copy to AIV 1";
      }
    }
    EXPECT_GT(to_ub, 0) << hw;
  }
}

TEST(SparseAttention, NoValidIndexGivesZeroOutAndInfiniteLse) {
  for (const char* hw : kHardware)
    for (int split : {1, 3}) {
      const app::LoadedRun run = make_run(dsa_like(), tiling(64, 16, GatherBy::Aic, split), hw);
      const auto dev = device_outputs(run, run.kernel->lower(run.hw, true));
      const int64_t H = 16, D = 512;
      for (int64_t h = 0; h < H; ++h) {
        EXPECT_EQ(dev[1][static_cast<size_t>(2 * H + h)], std::numeric_limits<double>::infinity()) << hw << " split " << split;
        EXPECT_TRUE(std::isfinite(dev[1][static_cast<size_t>(3 * H + h)])) << hw << " split " << split;
        for (int64_t d = 0; d < D; ++d) ASSERT_EQ(dev[0][static_cast<size_t>((2 * H + h) * D + d)], 0.0) << hw << " split " << split;
      }
    }
}

TEST(SparseAttention, DeviceFollowsItsEmulation) {
  // The device and the same-precision emulation differ only by the cube's summation order in
  // the scores: lse to a few fp32 ulps, out to one bf16 ulp of the rows' scale.
  for (const char* hw : kHardware) {
    const app::LoadedRun run = make_run(v4_like(), tiling(16, 16, GatherBy::Aic, 2), hw);
    const auto dev = device_outputs(run, run.kernel->lower(run.hw, true));
    const auto golden = run.kernel->references(inputs_of(run), dev);
    double out_err = 0, lse_err = 0;
    for (size_t i = 0; i < dev[0].size(); ++i) out_err = std::max(out_err, std::fabs(dev[0][i] - golden[0].same_precision[i]));
    for (size_t i = 0; i < dev[1].size(); ++i)
      lse_err = std::max(lse_err, std::fabs(dev[1][i] - golden[1].same_precision[i]) / std::max(1.0, std::fabs(golden[1].same_precision[i])));
    EXPECT_LE(out_err, 1.0 / 128) << hw;
    EXPECT_LE(lse_err, 1e-6) << hw;
  }
}

// Removes the first wait (`op`, flag or event `id`, on `pipe`) from the first core of `kind`.
sim::Program drop_wait(sim::Program prog, sim::CoreKind kind, sim::Op op, int id, sim::Pipe pipe) {
  for (auto& c : prog.cores) {
    if (c.kind != kind) continue;
    for (size_t i = 0; i < c.code.size(); ++i)
      if (c.code[i].op == op && c.code[i].id == id && c.code[i].pipe == pipe) {
        c.code.erase(c.code.begin() + static_cast<std::ptrdiff_t>(i));
        c.operands.erase(c.operands.begin() + static_cast<std::ptrdiff_t>(i));
        return prog;
      }
    break;
  }
  ADD_FAILURE() << "no wait to drop";
  return prog;
}

TEST(SparseAttention, BrokenProgramsFailValidation) {
  for (const char* hw : kHardware) {
    const app::LoadedRun run = make_run(dsa_like(), tiling(64, 16, GatherBy::Aic), hw);
    const sim::Program good = run.kernel->lower(run.hw, true);
    const bool via_ub = run.hw.path(sim::Path::L0CToUb).available;
    auto fails = [&](const sim::Program& p, const std::string& what) {
      const auto out = app::execute_functional(run, p);
      ASSERT_TRUE(out.kernel.validation.has_value());
      EXPECT_FALSE(out.kernel.validation->passed) << hw << ": " << what << " passed";
    };
    // An AIV reads the scores before the cube has written them (cross-core flag 0, S READY).
    fails(drop_wait(good, sim::CoreKind::Aiv, sim::Op::CrossWait, 0, via_ub ? sim::Pipe::V : sim::Pipe::Mte2),
          "a softmax on unwritten scores");
    // An AIV adds O_blk into O before the cube has written it (flag 4, O READY).
    fails(drop_wait(good, sim::CoreKind::Aiv, sim::Op::CrossWait, 4, via_ub ? sim::Pipe::V : sim::Pipe::Mte2),
          "an O update before O_blk arrived");
    // The AIC's C1 loads the first K tile before its gathers land (event 0, MTE2 -> MTE1).
    fails(drop_wait(good, sim::CoreKind::Aic, sim::Op::WaitFlag, 0, sim::Pipe::Mte1), "C1 on an ungathered K tile");
  }
  // The same on the toy shape, whose head block runs on AIV 0 alone, with and without split_kv.
  for (const char* hw : kHardware)
    for (int split : {1, 2}) {
      const app::LoadedRun run = make_run(toy_dsa(), tiling(16, 8, GatherBy::Aic, split), hw);
      const sim::Program good = run.kernel->lower(run.hw, true);
      const bool via_ub = run.hw.path(sim::Path::L0CToUb).available;
      auto fails = [&](const sim::Program& p, const std::string& what) {
        const auto out = app::execute_functional(run, p);
        ASSERT_TRUE(out.kernel.validation.has_value());
        EXPECT_FALSE(out.kernel.validation->passed) << hw << " toy split " << split << ": " << what << " passed";
      };
      const sim::Pipe in = via_ub ? sim::Pipe::V : sim::Pipe::Mte2;
      fails(drop_wait(good, sim::CoreKind::Aiv, sim::Op::CrossWait, 0, in), "a softmax on unwritten scores");
      fails(drop_wait(good, sim::CoreKind::Aiv, sim::Op::CrossWait, 4, in), "an O update before O_blk arrived");
      fails(drop_wait(good, sim::CoreKind::Aic, sim::Op::WaitFlag, 0, sim::Pipe::Mte1), "C1 on an ungathered K tile");
    }
}

TEST(SparseAttention, RefusalsNameTheirKeys) {
  const auto& hw = test::preset("ascend910c");
  auto refused = [&](SparseAttentionShape s, SparseAttentionTiling t) {
    return SparseAttentionKernel(std::move(s), t, false).can_implement(hw).key;
  };
  const SparseAttentionTiling ok = tiling(64, 16, GatherBy::Aic);
  EXPECT_EQ(refused(dsa_like(), ok), "");
  EXPECT_EQ(refused(dsa_like(), tiling(64, 12, GatherBy::Aic)), "tiling.head_block");  // not whole fp32 vectors of heads
  EXPECT_EQ(refused(dsa_like(), tiling(64, 8, GatherBy::Aic)), "");  // 8 heads: on one AIV of the pair
  EXPECT_EQ(refused(toy_dsa(), tiling(64, 8, GatherBy::Aiv, 2)), "");
  EXPECT_EQ(refused(toy_dsa(), tiling(64, 16, GatherBy::Aic)), "tiling.head_block");  // does not divide 8 heads
  EXPECT_EQ(refused(dsa_like(), tiling(64, 32, GatherBy::Aic)), "tiling.head_block");  // does not divide 16 heads
  EXPECT_EQ(refused(dsa_like(128), tiling(64, 128, GatherBy::Aic)), "tiling.head_block");  // O of 64 heads > UB
  EXPECT_EQ(refused(dsa_like(), tiling(24, 16, GatherBy::Aic)), "tiling.kv_block");
  EXPECT_EQ(refused(dsa_like(), tiling(1024, 16, GatherBy::Aic)), "tiling.kv_block");  // S^T tiles fill L0C
  EXPECT_EQ(refused(dsa_like(), tiling(64, 16, GatherBy::Aic, 1, 1)), "tiling.stages");
  EXPECT_EQ(refused(dsa_like(64), tiling(128, 64, GatherBy::Aic, 1, 4)), "tiling.stages");  // 4 K tiles > L1
  EXPECT_EQ(refused(dsa_like(), tiling(64, 16, GatherBy::Aic, 0)), "tiling.split_kv");
  EXPECT_EQ(refused(dsa_like(), tiling(64, 16, GatherBy::Aic, 301)), "tiling.split_kv");
  EXPECT_EQ(refused(dsa_like(), tiling(64, 16, GatherBy::Aic, 1, 2, 0)), "tiling.cores");
  EXPECT_EQ(refused(dsa_like(), tiling(64, 16, GatherBy::Aic, 1, 2, 25)), "tiling.cores");
  SparseAttentionShape s = dsa_like();
  s.d_v = 600;
  EXPECT_EQ(refused(s, ok), "workload.d_v");
  s = dsa_like(), s.d_qk = 570;
  EXPECT_EQ(refused(s, ok), "workload.d_v");
  s = dsa_like(), s.dtype = sim::DType::Fp32;
  EXPECT_EQ(refused(s, ok), "workload.dtype");
  s = dsa_like(), s.sources.clear();
  EXPECT_EQ(refused(s, ok), "workload.sources");
  s = dsa_like(), s.sources[0].idx.pop_back();
  EXPECT_EQ(refused(s, ok), "workload.sources[0]");
}

std::unique_ptr<kernels::Kernel> from_yaml(const std::string& yaml, const std::string& hw) {
  auto doc = YamlDoc::from_string(yaml, "test.yaml");
  YamlNode root = doc->root();
  std::optional<YamlNode> t = root.get("tiling");
  return kernels::make_sparse_attention(root.at("workload"), t, test::preset(hw));
}

TEST(SparseAttention, FactoryDrawsIndicesPerSource) {
  // Two sequences of 2 tokens; the window ring holds 8 slots per sequence at positions 97, 98.
  const std::string yaml =
      "workload: {op: sparse_attention, tokens: 4, batch: 2, heads: 16, d_qk: 64, d_v: 64, dtype: bf16, sink: true,\n"
      "  sources: [{rows: 16, per_query: 8, select: window, visible: 99},\n"
      "            {rows: 200, per_query: 12, visible: 40, indices: {distribution: uniform, seed: 3}}]}\n";
  const auto k = from_yaml(yaml, "ascend910c");
  const auto& s = dynamic_cast<const SparseAttentionKernel&>(*k).shape();
  ASSERT_EQ(s.sources.size(), 2u);
  for (int64_t t = 0; t < 4; ++t) {
    const int64_t seq = t / 2, last = 98 - (1 - t % 2);  // the sequence's tokens sit at 97 and 98
    for (int64_t j = 0; j < 8; ++j) EXPECT_EQ(s.sources[0].idx[static_cast<size_t>(t * 8 + j)], seq * 8 + (last - 7 + j) % 8);
    for (int64_t j = 0; j < 12; ++j) {
      const int32_t i = s.sources[1].idx[static_cast<size_t>(t * 12 + j)];
      EXPECT_GE(i, seq * 100);
      EXPECT_LT(i, seq * 100 + 40);
    }
  }
  EXPECT_TRUE(k->can_implement(test::preset("ascend910c")).ok);
  EXPECT_NEAR(s.scale, 0.125, 1e-12);
  // Mistakes are ConfigErrors at their key.
  auto error = [](const std::string& y) {
    try {
      from_yaml(y, "ascend910c");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string base = "workload: {op: sparse_attention, tokens: 4, batch: 2, heads: 16, d_qk: 64, d_v: 64, dtype: bf16, ";
  EXPECT_NE(error(base + "sources: [{rows: 16, per_query: 8, select: ring}]}\n").find("select"), std::string::npos);
  EXPECT_NE(error(base + "sources: [{rows: 16, per_query: 8, visible: 9}]}\n").find("visible"), std::string::npos);
  EXPECT_NE(error(base + "sources: [{rows: 15, per_query: 8}]}\n").find("rows"), std::string::npos);
  EXPECT_NE(error(base + "sources: [{rows: 16, per_query: 8, select: all, indices: {seed: 1}}]}\n").find("indices"),
            std::string::npos);
  EXPECT_NE(error(base + "sources: []}\n").find("sources"), std::string::npos);
  EXPECT_NE(error(base + "sources: [{rows: 16, per_query: 4, select: all}]}\n").find("per_query"), std::string::npos);
  // HCA-style: every visible compressed entry, then -1.
  const auto hca = from_yaml(base + "sources: [{rows: 16, per_query: 8, select: all, visible: 5}]}\n", "ascend910c");
  const auto& hs = dynamic_cast<const SparseAttentionKernel&>(*hca).shape();
  EXPECT_EQ(std::vector<int32_t>(hs.sources[0].idx.begin() + 8, hs.sources[0].idx.begin() + 16),
            (std::vector<int32_t>{0, 1, 2, 3, 4, -1, -1, -1}));
  EXPECT_NE(error("workload: {op: sparse_attention, tokens: 3, batch: 2, heads: 16, d_qk: 64, d_v: 64, dtype: bf16, "
                  "sources: [{rows: 16, per_query: 8}]}\n")
                .find("batch"),
            std::string::npos);
}

TEST(SparseAttention, DefaultTilingsFitAndSplitFewTokens) {
  for (const char* hw : kHardware) {
    const auto& spec = test::preset(hw);
    // The toy's 8 heads: one head block of 8, on one AIV of the pair.
    for (const SparseAttentionShape& s : {toy_dsa(), toy_v4()}) {
      const SparseAttentionTiling t = kernels::default_sparse_attention_tiling(s, spec);
      EXPECT_EQ(t.head_block, 8) << hw;
      EXPECT_EQ(kernels::sparse_attention_active_aivs(t.head_block, spec.aiv_per_aic), 1) << hw;
      const kernels::Status st = SparseAttentionKernel(s, t, true).can_implement(spec);
      EXPECT_TRUE(st.ok) << hw << " toy: " << st.key << ": " << st.reason;
    }
    for (int64_t heads : {64, 128}) {
      SparseAttentionShape s = dsa_like(heads);
      const SparseAttentionTiling t = kernels::default_sparse_attention_tiling(s, spec);
      const kernels::Status st = SparseAttentionKernel(s, t, true).can_implement(spec);
      EXPECT_TRUE(st.ok) << hw << " " << heads << ": " << st.key << ": " << st.reason;
      // 5 tokens x (heads / head_block) items leave AICs idle: the keys are split.
      EXPECT_GT(t.split_kv, 1) << hw << " " << heads;
      EXPECT_LE(t.cores, spec.num_aic);
    }
  }
}

// Timing only: `tokens` queries, each of its own sequence, `k` distinct uniform picks among the
// sequence's `rows` cache rows.
double timed_us(const std::string& hw, int64_t rows, int64_t k) {
  const std::string yaml = fmt::format(
      "workload: {{op: sparse_attention, tokens: 16, batch: 16, heads: 64, d_qk: 576, d_v: 512, dtype: bf16,\n"
      "  sources: [{{rows: {}, per_query: {}, indices: {{distribution: uniform, seed: 4}}}}]}}\n",
      16 * rows, k);
  app::LoadedRun run;
  run.config_file = "test";
  run.hw = test::preset(hw);
  run.kernel = from_yaml(yaml, hw);
  return app::execute(run).kernel.time_us;
}

TEST(SparseAttention, TimeIsFlatInCacheSizeAndGrowsWithTheRowsGathered) {
  // First principles: the kernel touches only the rows its indices name, so with the index count
  // fixed the time does not depend on how large the cache is; it grows with the rows gathered.
  for (const char* hw : kHardware) {
    const double small = timed_us(hw, 4096, 512), large = timed_us(hw, 1 << 20, 512), huge = timed_us(hw, 1 << 24, 512);
    std::printf("%s: 512 rows gathered from caches of 4K, 1M, 16M rows per sequence: %.1f, %.1f, %.1f us\n", hw, small, large, huge);
    EXPECT_NEAR(large / small, 1.0, 0.05) << hw << ": " << small << " vs " << large << " us";
    EXPECT_NEAR(huge / small, 1.0, 0.05) << hw << ": " << small << " vs " << huge << " us";
    EXPECT_GT(timed_us(hw, 1 << 20, 2048), 2.5 * large) << hw;
  }
}

const char* const kDsaDecode =
    "workload: {op: sparse_attention, tokens: 120, batch: 60, heads: 128, d_qk: 576, d_v: 512, dtype: bf16,\n"
    "  sources: [{rows: 7864320, per_query: 2048, visible: 131072, indices: {distribution: recent_biased, seed: 1}}]}\n";
const char* const kCsaDecode =
    "workload: {op: sparse_attention, tokens: 60, batch: 30, heads: 64, d_qk: 512, d_v: 512, dtype: bf16, sink: true,\n"
    "  sources: [{rows: 3840, per_query: 128, select: window, visible: 131072},\n"
    "            {rows: 983040, per_query: 512, visible: 32768, indices: {distribution: recent_biased, seed: 2}}]}\n";

TEST(SparseAttention, RealShapesSimulateQuickly) {
  // V3.2 DSA decode (60 sequences x 2 MTP tokens, 128 heads, top-2048 of a 128K context) and
  // V4-Flash CSA decode (30 x 2 tokens, 64 heads, window 128 + top-512 of 32K compressed entries).
  for (const char* hw : kHardware)
    for (const char* yaml : {kDsaDecode, kCsaDecode}) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::clock_t c0 = std::clock();
      app::LoadedRun run;
      run.config_file = "test";
      run.hw = test::preset(hw);
      run.kernel = from_yaml(yaml, hw);
      const kernels::Status st = run.kernel->can_implement(run.hw);
      ASSERT_TRUE(st.ok) << st.key << ": " << st.reason;
      const app::RunOutput out = app::execute(run);
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
      std::printf("%s %s %s: %.1f us, %.1f%% of cube peak, %llu instructions (estimate %.0f), %.2f s wall, %.2f s cpu\n", hw,
                  run.kernel->name().c_str(), run.kernel->tiling_json().dump().c_str(), out.kernel.time_us,
                  100 * out.kernel.peak_fraction, static_cast<unsigned long long>(out.kernel.instructions),
                  run.kernel->estimated_instructions(), wall, cpu);
      EXPECT_GT(out.kernel.peak_fraction, 0.05);
      EXPECT_LT(out.kernel.peak_fraction, 1.0);
      EXPECT_NEAR(run.kernel->estimated_instructions() / static_cast<double>(out.kernel.instructions), 1.0, 0.15);
      EXPECT_LT(wall, 10.0);  // a loose bound for a shared machine; about 0.5 s alone
    }
}

}  // namespace
}  // namespace npusim
