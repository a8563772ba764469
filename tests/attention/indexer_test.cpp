// The lightning indexer (DSA / V4 CSA index scores, fused top-k) and the standalone top-k: V3.2-like
// toys (prefill and decode), the compressed visibility of V4 CSA (ratio 4), rows with fewer visible
// keys than k (-1 padding), tied scores judged tie-aware, two-stage top-k, partial tiles, several
// sequences, refusals naming their key, broken programs the checks catch, and the decode timings.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <functional>

#include "common/yaml_reader.hpp"
#include "kernels/lightning_indexer.hpp"
#include "kernels/tensor_io.hpp"
#include "kernels/topk.hpp"
#include "sim/functional.hpp"
#include "test_support.hpp"

namespace npusim {
namespace {

using kernels::IndexerShape;
using kernels::IndexerTiling;
using kernels::LightningIndexerKernel;
using kernels::TopkKernel;
using kernels::TopkShape;

const char* const kHardware[] = {"ascend910c", "ascend950pr"};

// A V3.2-like toy: 4 index heads of 32, one sequence of `context` tokens whose last `tokens` query.
IndexerShape toy(const sim::HardwareSpec& hw, int64_t tokens, int64_t context, int64_t topk, int64_t ratio = 1,
                 bool fused = true) {
  IndexerShape s;
  s.heads = 4, s.head_dim = 32, s.topk = topk, s.ratio = ratio, s.fused_topk = fused;
  s.context = {context}, s.keys = {context / ratio}, s.queries = {tokens};
  s.dtype = kernels::indexer_dtype_for(hw);
  return s;
}

app::LoadedRun indexer_run(const std::string& hw, const IndexerShape& s, std::optional<IndexerTiling> t = {},
                           const std::string& dist = "normal", uint64_t seed = 7) {
  app::LoadedRun run;
  run.config_file = "test";
  run.hw = test::preset(hw);
  run.kernel = std::make_unique<LightningIndexerKernel>(s, t ? *t : kernels::default_indexer_tiling(s, run.hw), !t);
  run.inputs = {dist, 1.0, seed};
  return run;
}

app::LoadedRun topk_run(const std::string& hw, const TopkShape& s, std::optional<kernels::TopkTiling> t = {},
                        const std::string& dist = "normal") {
  app::LoadedRun run;
  run.config_file = "test";
  run.hw = test::preset(hw);
  run.kernel = std::make_unique<TopkKernel>(s, t ? *t : kernels::default_topk_tiling(s, run.hw), !t);
  run.inputs = {dist, 1.0, 5};
  return run;
}

// A functional run that keeps the inputs and the device's outputs (tensors() order).
struct Ran {
  bool passed = false;
  std::string why;
  std::vector<std::vector<double>> inputs, outputs;
};

Ran run_on(const app::LoadedRun& run, std::optional<sim::Program> prog = {}) {
  const kernels::Status st = run.kernel->can_implement(run.hw);
  EXPECT_TRUE(st.ok) << st.key << ": " << st.reason;
  Ran r;
  if (!st.ok) return r;
  const sim::Program p = prog ? *prog : run.kernel->lower(run.hw, true);
  sim::SimOptions opt;
  opt.record_work = true;
  const sim::SimResult timed = sim::simulate(run.hw, p, opt);
  sim::FunctionalMemory mem(run.hw, p);
  const auto ts = run.kernel->tensors();
  for (size_t i = 0; i < ts.size(); ++i)
    if (!ts[i].output) {
      r.inputs.push_back(run.kernel->make_input(i, run.inputs));
      kernels::write_tensor(mem.gm(), ts[i], r.inputs.back());
    }
  sim::run_functional(p, timed, mem);
  for (const auto& t : ts)
    if (t.output) r.outputs.push_back(kernels::read_tensor(mem.gm(), t));
  r.passed = true;
  for (const auto& o : kernels::validate_outputs(*run.kernel, r.inputs, mem.gm())) {
    r.passed = r.passed && o.v.passed;
    for (const auto& f : o.v.failures) r.why += "\n  " + o.tensor + ": " + f;
  }
  return r;
}

// Every row's -1 padding is exactly k minus its visible keys (when fewer), and it is the tail.
void expect_padding(const IndexerShape& s, const Ran& r, const std::string& what) {
  const std::vector<int64_t> vis = s.visible();
  const int64_t K = s.topk;
  ASSERT_EQ(r.outputs.size(), 2u) << what;
  for (size_t t = 0; t < vis.size(); ++t) {
    const int64_t valid = std::min(K, vis[t]);
    for (int64_t j = 0; j < K; ++j) {
      const double id = r.outputs[0][t * K + j];
      if (j < valid) {
        ASSERT_GE(id, 0) << what << " row " << t << " slot " << j;
        ASSERT_LT(id, vis[t]) << what << " row " << t << ": an invisible key was picked";
      } else {
        ASSERT_EQ(id, -1) << what << " row " << t << " slot " << j;
        ASSERT_EQ(r.outputs[1][t * K + j], -INFINITY) << what;
      }
    }
  }
}

TEST(Indexer, V32ToyPrefillAndDecodeValidateFusedAndUnfused) {
  for (const char* hw : kHardware)
    for (bool fused : {true, false})
      for (int64_t tokens : {40, 3}) {  // causal prefill at the end of a 300-token context; decode (MTP-2)
        const IndexerShape s = toy(test::preset(hw), tokens, 300, 32, 1, fused);
        const Ran r = run_on(indexer_run(hw, s));
        const std::string what = std::string(hw) + (fused ? " fused T=" : " scores T=") + std::to_string(tokens);
        EXPECT_TRUE(r.passed) << what << r.why;
        if (fused) expect_padding(s, r, what);
      }
}

TEST(Indexer, CompressedCsaVisibilityAndPadding) {
  for (const char* hw : kHardware)
    for (int64_t context : {300, 40}) {  // the end of a long context; a prefill from the start (0..10 keys visible)
      const int64_t k = context == 300 ? 32 : 8;
      const IndexerShape s = toy(test::preset(hw), 40, context, k, 4);
      const Ran r = run_on(indexer_run(hw, s));
      const std::string what = std::string(hw) + " ratio 4, context " + std::to_string(context);
      EXPECT_TRUE(r.passed) << what << r.why;
      expect_padding(s, r, what);
      const IndexerShape u = toy(test::preset(hw), 40, context, k, 4, false);
      const Ran ru = run_on(indexer_run(hw, u));
      EXPECT_TRUE(ru.passed) << what << " (scores)" << ru.why;
      // The scores row of query t: exactly its (t+1)/4 visible entries are finite.
      const std::vector<int64_t> vis = u.visible();
      for (size_t t = 0; t < vis.size(); ++t)
        for (int64_t c = 0; c < u.max_keys(); ++c)
          ASSERT_EQ(std::isfinite(ru.outputs[0][t * u.max_keys() + c]), c < vis[t]) << what << " row " << t << " col " << c;
    }
}

TEST(Indexer, FewerVisibleKeysThanTopkArePaddedWithMinusOne) {
  for (const char* hw : kHardware) {
    const IndexerShape s = toy(test::preset(hw), 40, 40, 32);  // query t sees t + 1 keys
    const Ran r = run_on(indexer_run(hw, s));
    EXPECT_TRUE(r.passed) << hw << r.why;
    expect_padding(s, r, hw);
  }
}

// Identical key rows score identically: a tied boundary, judged tie-aware (KERNELS.md 5.4).
TEST(Indexer, TiedScoresValidateTieAware) {
  for (const char* hw : kHardware) {
    const IndexerShape s = toy(test::preset(hw), 8, 300, 32);
    const Ran r = run_on(indexer_run(hw, s, {}, "ties"));
    EXPECT_TRUE(r.passed) << hw << r.why;
    // Three distinct key rows: each row's picks are ties of at most three scores.
    const auto& v = r.outputs[1];
    for (int64_t t = 0; t < 8; ++t) EXPECT_EQ(v[t * 32], v[t * 32 + 31]) << hw << " row " << t << ": 32 picks of 3 distinct scores";
  }
}

TEST(Indexer, TieAwareJudgingAcceptsASwapOfTiedKeysOnly) {
  const IndexerShape s = toy(test::preset("ascend910c"), 2, 300, 32);
  const app::LoadedRun run = indexer_run("ascend910c", s, {}, "ties");
  const Ran r = run_on(run);
  ASSERT_TRUE(r.passed) << r.why;
  auto accepted = [&](const std::vector<double>& ids) {
    return run.kernel->references(r.inputs, {ids, r.outputs[1]})[0].exact == ids;
  };
  EXPECT_TRUE(accepted(r.outputs[0]));
  // Row 0's last pick swapped for another key with the same (tied) score that was not picked.
  std::vector<double> swapped = r.outputs[0];
  IndexerShape u = s;  // the same inputs' scores, from the unfused kernel's reference
  u.fused_topk = false;
  const std::vector<double> ref_scores = LightningIndexerKernel(u, kernels::default_indexer_tiling(u, run.hw), true).reference(r.inputs).exact;
  const double boundary = ref_scores[static_cast<size_t>(swapped[31])];
  int64_t other = -1, lower = -1;
  for (int64_t c = 0; c < 300; ++c) {
    const bool picked = std::find(swapped.begin(), swapped.begin() + 32, c) != swapped.begin() + 32;
    if (!picked && ref_scores[c] == boundary && other < 0) other = c;
    if (!picked && ref_scores[c] < boundary && lower < 0) lower = c;
  }
  ASSERT_GE(other, 0);
  ASSERT_GE(lower, 0);
  swapped[31] = static_cast<double>(other);
  EXPECT_TRUE(accepted(swapped)) << "a tied key instead of the stable pick";
  swapped[31] = static_cast<double>(lower);
  EXPECT_FALSE(accepted(swapped)) << "a lower-scoring key";
  swapped[31] = -1;
  EXPECT_FALSE(accepted(swapped)) << "padding where a key is visible";
}

// k above what a key block and a merge batch hold, and rows split over AICs (stage 2 merges).
TEST(Indexer, TwoStageTopkBeyondOnePass) {
  for (const char* hw : kHardware)
    for (int splits : {1, 3}) {
      const IndexerShape s = toy(test::preset(hw), 6, 300, 100);
      IndexerTiling t = kernels::default_indexer_tiling(s, test::preset(hw));
      t.key_block = 32, t.merge_blocks = 1, t.splits = splits, t.q_block = 2;
      const Ran r = run_on(indexer_run(hw, s, t));
      EXPECT_TRUE(r.passed) << hw << " splits " << splits << r.why;
      expect_padding(s, r, hw);
    }
}

// Partial query blocks and key blocks, several sequences of different lengths, one slot, one stage.
TEST(Indexer, PartialTilesAndSeveralSequences) {
  for (const char* hw : kHardware) {
    IndexerShape s = toy(test::preset(hw), 5, 300, 32);
    s.keys = {300, 77, 129}, s.context = {300, 77, 129}, s.queries = {5, 3, 1};
    const Ran r = run_on(indexer_run(hw, s));
    EXPECT_TRUE(r.passed) << hw << r.why;
    expect_padding(s, r, hw);
    IndexerTiling t = kernels::default_indexer_tiling(s, test::preset(hw));
    t.q_block = 3, t.key_block = 96, t.slots = 1, t.stages = 1, t.cores = 2, t.splits = 2, t.merge_blocks = 2;
    const Ran r2 = run_on(indexer_run(hw, s, t));
    EXPECT_TRUE(r2.passed) << hw << " small tiling" << r2.why;
    EXPECT_EQ(r.outputs[0], r2.outputs[0]) << hw << ": the picks depend on the tiling";
    s.fused_topk = false;
    const Ran r3 = run_on(indexer_run(hw, s, t));
    EXPECT_TRUE(r3.passed) << hw << " scores, small tiling" << r3.why;
  }
}

// DeepSeek's index heads (64 x 128) on a short context, and a head count that is no power of two
// (the halving adds fold the tail first).
TEST(Indexer, RealHeadShapeAndOddHeadCount) {
  for (const char* hw : kHardware) {
    IndexerShape s = toy(test::preset(hw), 4, 700, 64);
    s.heads = 64, s.head_dim = 128;
    const Ran r = run_on(indexer_run(hw, s));
    EXPECT_TRUE(r.passed) << hw << " 64 x 128" << r.why;
    IndexerShape odd = toy(test::preset(hw), 9, 300, 32);
    odd.heads = 6;
    const Ran r6 = run_on(indexer_run(hw, odd));
    EXPECT_TRUE(r6.passed) << hw << " 6 heads" << r6.why;
  }
}

// The unfused plan (scores, then topk) picks what the fused kernel picks.
TEST(Indexer, UnfusedScoresThenTopkMatchTheFusedKernel) {
  for (const char* hw : kHardware) {
    IndexerShape s = toy(test::preset(hw), 40, 300, 32);
    const Ran fused = run_on(indexer_run(hw, s));
    s.fused_topk = false;
    const Ran scores = run_on(indexer_run(hw, s));
    ASSERT_TRUE(fused.passed && scores.passed) << fused.why << scores.why;
    TopkShape ts{40, 300, 32};
    const app::LoadedRun tk = topk_run(hw, ts);
    const std::vector<double> idx = tk.kernel->references({scores.outputs[0]}, {})[0].exact;
    EXPECT_EQ(idx, fused.outputs[0]) << hw;
  }
}

TEST(Topk, ValidatesRandomTiedAndMaskedRows) {
  for (const char* hw : kHardware) {
    for (const char* dist : {"normal", "ties"}) {
      const Ran r = run_on(topk_run(hw, TopkShape{37, 1000, 64}, {}, dist));
      EXPECT_TRUE(r.passed) << hw << " " << dist << r.why;
    }
    TopkShape masked{20, 300, 32};
    masked.causal_from = 10;  // row t has 11 + t finite scores: rows 0..20 padded
    const Ran r = run_on(topk_run(hw, masked));
    EXPECT_TRUE(r.passed) << hw << " masked" << r.why;
    for (int64_t t = 0; t < 20; ++t)
      for (int64_t j = 0; j < 32; ++j) ASSERT_EQ(r.outputs[0][t * 32 + j] < 0, j >= 11 + t) << hw << " row " << t << " slot " << j;
  }
}

TEST(Topk, TwoStageAndKBeyondOneChunk) {
  for (const char* hw : kHardware)
    for (int splits : {1, 4}) {
      const kernels::TopkTiling t{64, splits, 3};  // chunk 64 < k = 100
      TopkShape s{7, 1000, 100};
      s.causal_from = 90;
      const Ran r = run_on(topk_run(hw, s, t, "ties"));
      EXPECT_TRUE(r.passed) << hw << " splits " << splits << r.why;
    }
}

TEST(Indexer, TimingIsTheSameWithAndWithoutNumbers) {
  for (const char* hw : kHardware) {
    const app::LoadedRun run = indexer_run(hw, toy(test::preset(hw), 40, 300, 32));
    EXPECT_EQ(app::execute(run).kernel.cycles, app::execute_functional(run).kernel.cycles) << hw;
    const app::LoadedRun tk = topk_run(hw, TopkShape{9, 700, 40});
    EXPECT_EQ(app::execute(tk).kernel.cycles, app::execute_functional(tk).kernel.cycles) << hw;
  }
}

// ---- Refusals name their key ----

std::string refusal(const std::string& hw, const IndexerShape& s, const std::function<void(IndexerTiling&)>& edit = {}) {
  IndexerTiling t = kernels::default_indexer_tiling(s, test::preset(hw));
  if (edit) edit(t);
  const kernels::Status st = LightningIndexerKernel(s, t, false).can_implement(test::preset(hw));
  return st.ok ? "" : st.key + ": " + st.reason;
}

TEST(IndexerConfig, WhatCannotBeTiledIsRefusedAtItsKey) {
  for (const char* hw : kHardware) {
    const sim::HardwareSpec& h = test::preset(hw);
    IndexerShape s = toy(h, 8, 300, 32);
    EXPECT_EQ(refusal(hw, s), "") << hw;
    IndexerShape big_k = s;
    big_k.topk = 301;
    EXPECT_EQ(refusal(hw, big_k).rfind("workload.topk", 0), 0u) << refusal(hw, big_k);
    IndexerShape odd_dim = s;
    odd_dim.head_dim = 24;  // no multiple of the cube's 32-byte K fractal (16 bf16, 32 fp8)
    EXPECT_EQ(refusal(hw, odd_dim).rfind("workload.head_dim", 0), 0u) << refusal(hw, odd_dim);
    EXPECT_EQ(refusal(hw, s, [](IndexerTiling& t) { t.key_block = 48; }).rfind("tiling.key_block", 0), 0u);
    EXPECT_EQ(refusal(hw, s, [](IndexerTiling& t) { t.merge_blocks = 1000; }).rfind("tiling.merge_blocks", 0), 0u);
    EXPECT_EQ(refusal(hw, s, [](IndexerTiling& t) { t.cores = 999; }).rfind("tiling.cores", 0), 0u);
    EXPECT_EQ(refusal(hw, s, [](IndexerTiling& t) { t.slots = 16; }).rfind("tiling.slots", 0), 0u);
    IndexerShape v32 = s;  // 64 heads x 128 with 4096-key blocks: the UB cannot hold the head rows
    v32.heads = 64, v32.head_dim = 128;
    EXPECT_EQ(refusal(hw, v32, [](IndexerTiling& t) { t.key_block = 4096, t.merge_blocks = 1; }).rfind("tiling.key_block", 0), 0u)
        << refusal(hw, v32, [](IndexerTiling& t) { t.key_block = 4096, t.merge_blocks = 1; });
  }
  IndexerShape fp8 = toy(test::preset("ascend910c"), 8, 300, 32);
  fp8.dtype = sim::DType::Fp8;  // 2201 has no fp8 cube
  EXPECT_EQ(refusal("ascend910c", fp8).rfind("workload.dtype", 0), 0u) << refusal("ascend910c", fp8);
}

TEST(TopkConfig, WhatCannotBeTiledIsRefusedAtItsKey) {
  const sim::HardwareSpec& h = test::preset("ascend910c");
  auto st = [&](TopkShape s, kernels::TopkTiling t) {
    const kernels::Status r = TopkKernel(s, t, false).can_implement(h);
    return r.ok ? std::string() : r.key;
  };
  EXPECT_EQ(st({4, 100, 101}, {64, 1, 4}), "workload.topk");
  EXPECT_EQ(st({4, 100, 10}, {48, 1, 4}), "tiling.chunk");
  EXPECT_EQ(st({4, 100, 10}, {8192, 1, 4}), "tiling.chunk");
  EXPECT_EQ(st({4, 100, 10}, {64, 1, 99}), "tiling.cores");
  EXPECT_EQ(st({4, 10000, 5000}, {64, 2, 4}), "tiling.splits");
  EXPECT_EQ(st({4, 100, 10}, {64, 2, 4}), "");
}

// The YAML factories: defaults, per-sequence lists, and config errors at their key.
std::unique_ptr<kernels::Kernel> from_yaml(const std::string& hw, const std::string& workload, const std::string& tiling = "") {
  auto doc = YamlDoc::from_string("workload: " + workload + (tiling.empty() ? "" : "\ntiling: " + tiling), "test.yaml");
  YamlNode root = doc->root();
  std::optional<YamlNode> t;
  if (!tiling.empty()) t.emplace(root.at("tiling"));
  const std::string op = root.at("workload").at("op").as_string();
  return op == "topk" ? kernels::make_topk(root.at("workload"), t, test::preset(hw))
                      : kernels::make_lightning_indexer(root.at("workload"), t, test::preset(hw));
}

std::string yaml_error(const std::string& workload, const std::string& tiling = "") {
  try {
    from_yaml("ascend950pr", workload, tiling);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(IndexerConfig, TheFactoriesParseTheirYaml) {
  auto k = from_yaml("ascend950pr", "{op: lightning_indexer, tokens: 4, keys: [300, 77], batch: 2, topk: 32, heads: 4, head_dim: 32, ratio: 4, "
                                    "context: [1200, 308]}", "{key_block: 64, q_block: 2}");
  auto* li = dynamic_cast<LightningIndexerKernel*>(k.get());
  ASSERT_NE(li, nullptr);
  EXPECT_EQ(li->shape().keys, (std::vector<int64_t>{300, 77}));
  EXPECT_EQ(li->shape().visible(), (std::vector<int64_t>{299, 300, 76, 77}));  // positions 1198, 1199 and 306, 307
  EXPECT_EQ(li->shape().dtype, sim::DType::Fp8);
  EXPECT_EQ(li->tiling_json()["key_block"], 64);
  EXPECT_EQ(from_yaml("ascend910c", "{op: lightning_indexer, tokens: 3, keys: 300, topk: 32}")->tensors()[0].dtype, sim::DType::Bf16);
  EXPECT_EQ(from_yaml("ascend910c", "{op: topk, tokens: 3, cols: 300, topk: 32}")->tensors().size(), 3u);
  struct Case {
    std::string workload, key;
  };
  for (const Case& c : std::vector<Case>{
           {"{op: lightning_indexer, tokens: 4, keys: 30, topk: 32}", "workload.topk"},
           {"{op: lightning_indexer, tokens: 5, keys: 300, topk: 32, batch: 2}", "workload.tokens"},
           {"{op: lightning_indexer, tokens: 4, keys: [300], topk: 32, batch: 2}", "workload.keys"},
           {"{op: lightning_indexer, tokens: 4, keys: 300, topk: 32, ratio: 4, context: 300}", "workload.context"},
           {"{op: lightning_indexer, tokens: 400, keys: 300, topk: 32}", "workload.tokens"},
           {"{op: lightning_indexer, tokens: 4, keys: 300, topk: 32, dtype: fp16}", "workload.dtype"},
           {"{op: topk, tokens: 4, cols: 30, topk: 32}", "workload.topk"},
       }) {
    const std::string msg = yaml_error(c.workload);
    EXPECT_NE(msg.find(c.key), std::string::npos) << c.workload << " -> " << msg;
  }
}

// ---- Broken programs must fail validation ----

// Drops every instruction `pred` matches (at least one).
sim::Program without(const app::LoadedRun& run, const std::function<bool(const sim::Instr&, const sim::Operands&)>& pred) {
  sim::Program p = run.kernel->lower(run.hw, true);
  size_t dropped = 0;
  for (auto& c : p.cores)
    for (size_t i = c.code.size(); i-- > 0;)
      if (pred(c.code[i], c.operands[i])) {
        c.code.erase(c.code.begin() + static_cast<long>(i));
        c.operands.erase(c.operands.begin() + static_cast<long>(i));
        ++dropped;
      }
  EXPECT_GT(dropped, 0u);
  return p;
}

TEST(IndexerMutation, TheUnbrokenProgramPassesAndBrokenOnesAreCaught) {
  for (const char* hw : kHardware)
    for (bool fused : {true, false}) {
      const app::LoadedRun run = indexer_run(hw, toy(test::preset(hw), 40, 300, 32, 1, fused));
      const std::string what = std::string(hw) + (fused ? " fused" : " scores");
      EXPECT_TRUE(run_on(run).passed) << what;
      // No ReLU: negative dot products leak into the head sums.
      EXPECT_FALSE(run_on(run, without(run, [](const sim::Instr& i, const sim::Operands&) {
                     return i.op == sim::Op::Vector && i.vop == sim::VecOp::Relu;
                   })).passed) << what << ": dropping the ReLU";
      // The AIVs stop waiting for the cube's READY: they read slots the cube has not written yet
      // (GM workspace on 2201, UB on 3510). Fewer than 15 blocks per AIC, so nothing deadlocks.
      EXPECT_FALSE(run_on(run, without(run, [](const sim::Instr& i, const sim::Operands&) {
                     return i.op == sim::Op::CrossWait && (i.pipe == sim::Pipe::V || i.pipe == sim::Pipe::Mte2);
                   })).passed) << what << ": no READY wait";
    }
}

TEST(TopkMutation, DroppingTheListMergeIsCaught) {
  for (const char* hw : kHardware) {
    const app::LoadedRun run = topk_run(hw, TopkShape{9, 700, 40}, kernels::TopkTiling{128, 1, 4});
    EXPECT_TRUE(run_on(run).passed) << hw;
    // The 2-way merge of list + candidates is the only mrgsort over k + chunk pairs.
    EXPECT_FALSE(run_on(run, without(run, [](const sim::Instr& i, const sim::Operands&) {
                   return i.op == sim::Op::Vector && i.vop == sim::VecOp::MrgSort && i.m == 40 + 128;
                 })).passed) << hw;
  }
}

// ---- Decode timings at DeepSeek shapes (timing only; run with --gtest_also_run_disabled_tests) ----

IndexerShape deepseek(const sim::HardwareSpec& hw, int64_t batch, int64_t per_seq, int64_t keys, int64_t topk, int64_t ratio) {
  IndexerShape s;
  s.heads = 64, s.head_dim = 128, s.topk = topk, s.ratio = ratio;
  s.keys.assign(batch, keys), s.context.assign(batch, keys * ratio), s.queries.assign(batch, per_seq);
  s.dtype = kernels::indexer_dtype_for(hw);
  return s;
}

TEST(IndexerTiming, DISABLED_DeepSeekDecode) {
  struct Case {
    const char* name;
    int64_t batch, per_seq, keys, topk, ratio;
  };
  for (const char* hw : kHardware)
    for (const Case& c : {Case{"V3.2 DSA decode, 1 x 120 queries", 1, 120, 131072, 2048, 1},
                          Case{"V3.2 DSA decode, 60 x 2 queries", 60, 2, 131072, 2048, 1},
                          Case{"V4-Flash CSA decode, 30 x 2 queries", 30, 2, 32768, 512, 4}})
      for (bool fused : {true, false}) {
        const auto t0 = std::chrono::steady_clock::now();
        IndexerShape s = deepseek(test::preset(hw), c.batch, c.per_seq, c.keys, c.topk, c.ratio);
        s.fused_topk = fused;
        app::LoadedRun run = indexer_run(hw, s);
        ASSERT_TRUE(run.kernel->can_implement(run.hw).ok) << run.kernel->can_implement(run.hw).reason;
        const auto out = app::execute(run);
        const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("%-12s %-38s %-6s %9.1f us  %5.1f%% of cube peak  %8llu instr (est %.0f)  wall %.2f s  tiling %s\n", hw, c.name,
                    fused ? "fused" : "scores", out.kernel.time_us, 100 * out.kernel.peak_fraction,
                    static_cast<unsigned long long>(out.kernel.instructions), run.kernel->estimated_instructions(), wall,
                    run.kernel->tiling_json().dump().c_str());
        if (!fused) {  // the unfused plan's top-k over the scores
          const auto t1 = std::chrono::steady_clock::now();
          const app::LoadedRun tk = topk_run(hw, TopkShape{s.tokens(), c.keys, c.topk});
          const auto o = app::execute(tk);
          std::printf("%-12s %-38s %-6s %9.1f us  %8llu instr  wall %.2f s  tiling %s\n", hw, c.name, "topk", o.kernel.time_us,
                      static_cast<unsigned long long>(o.kernel.instructions),
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count(), tk.kernel->tiling_json().dump().c_str());
        }
      }
}

}  // namespace
}  // namespace npusim
