// The MoE gate (kernels/gating.hpp): functional runs of the DeepSeek conventions checked against
// the CPU reference (ids tie-aware, weights from the device's ids), each stage alone and chained,
// the tie-aware judging itself, broken programs, and config errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "kernels/gating.hpp"
#include "kernels/tensor_io.hpp"
#include "kernels/validation.hpp"
#include "sim/functional.hpp"
#include "test_support.hpp"

namespace npusim {
namespace {

app::LoadedRun load(const std::string& yaml) { return app::load_run(test::write_temp_config("gating", yaml)); }

// A run config: the workload's keys (without braces), optional tiling and inputs.
std::string gate_yaml(const std::string& workload, const std::string& tiling = "", const std::string& inputs = "",
                      const std::string& hw = "ascend910b2") {
  return "hardware: " + hw + "\nworkload: {op: gating, " + workload + "}\n" + (tiling.empty() ? "" : "tiling: " + tiling + "\n") +
         (inputs.empty() ? "" : "inputs: " + inputs + "\n");
}

const std::string kV3 = "tokens: 48, experts: 64, topk: 8, score: sigmoid, bias: true, groups: 8, topk_groups: 4, route_scale: 2.5";
const std::string kToy = "tokens: 64, experts: 16, topk: 4, score: sigmoid, bias: true, groups: 4, topk_groups: 2";
const std::string kV4 = "tokens: 40, experts: 256, topk: 6, score: sqrtsoftplus, bias: true, route_scale: 1.5";
const std::string kSoftmax = "tokens: 37, experts: 60, topk: 6, score: softmax, groups: 4, topk_groups: 2, route_scale: 16";
const std::string kHash = "tokens: 30, experts: 256, topk: 6, score: sqrtsoftplus, route_scale: 1.5, hash: {vocab: 500}";
// V3 at full width (groups of 32: no padding inside a row) and a 2048-key row (three merge levels).
const std::string kV3Full = "tokens: 20, experts: 256, topk: 8, score: sigmoid, bias: true, groups: 8, topk_groups: 4, route_scale: 2.5";
const std::string kWide = "tokens: 9, experts: 2048, topk: 16, score: softmax";

void expect_valid(const app::RunOutput& out, const std::string& what) {
  ASSERT_TRUE(out.kernel.validation.has_value()) << what;
  std::string why;
  for (const auto& f : out.kernel.validation->failures) why += "\n  " + f;
  EXPECT_TRUE(out.kernel.validation->passed) << what << why;
  EXPECT_GT(out.kernel.cycles, 0u) << what;
}

// A functional run on given inputs (missing ones drawn by the kernel), returning every tensor in
// tensors() order and whether the outputs pass validation.
struct Ran {
  std::vector<std::vector<double>> inputs, outputs;
  bool passed = false;
  double cycles = 0;
};

Ran run_on(const app::LoadedRun& run, std::vector<std::vector<double>> inputs = {}) {
  const sim::Program prog = run.kernel->lower(run.hw, true);
  sim::SimOptions opt;
  opt.record_work = true;
  const sim::SimResult timed = sim::simulate(run.hw, prog, opt);
  sim::FunctionalMemory mem(run.hw, prog);
  const auto ts = run.kernel->tensors();
  size_t next = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (ts[i].output) continue;
    if (next == inputs.size()) inputs.push_back(run.kernel->make_input(i, run.inputs));
    kernels::write_tensor(mem.gm(), ts[i], inputs[next++]);
  }
  sim::run_functional(prog, timed, mem);
  Ran r;
  for (const auto& t : ts)
    if (t.output) r.outputs.push_back(kernels::read_tensor(mem.gm(), t));
  const auto judged = kernels::validate_outputs(*run.kernel, inputs, mem.gm());
  r.passed = std::all_of(judged.begin(), judged.end(), [](const auto& o) { return o.v.passed; });
  r.inputs = std::move(inputs);
  r.cycles = timed.cycles;
  return r;
}

const kernels::GatingKernel& gate(const app::LoadedRun& run) { return dynamic_cast<const kernels::GatingKernel&>(*run.kernel); }

TEST(GatingValidation, DeepSeekConventionsPass) {
  for (const std::string& w : {kV3, kToy, kV4, kSoftmax, kHash, kV3Full, kWide})
    expect_valid(app::execute_functional(load(gate_yaml(w, "", "{distribution: normal, scale: 2.0, seed: 5}"))), w);
}

TEST(GatingValidation, IdsEqualTheStableReferenceWithoutTies) {
  for (const std::string& w : {kV3, kToy, kV4, kSoftmax, kHash, kV3Full, kWide}) {
    const auto run = load(gate_yaml(w));
    const Ran r = run_on(run);
    EXPECT_TRUE(r.passed) << w;
    const std::vector<int32_t> want = gate(run).reference_ids(r.inputs);
    ASSERT_EQ(r.outputs[1].size(), want.size()) << w;
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(r.outputs[1][i], want[i]) << w << ": id " << i;
  }
}

TEST(GatingValidation, TiedScoresPassTieAware) {
  for (const std::string& w : {kV3, kToy, kV4, kSoftmax})
    expect_valid(app::execute_functional(load(gate_yaml(w, "", "{distribution: ties, seed: 2}"))), w + " (ties)");
}

TEST(GatingValidation, TailTilesBuffersAndCoreCountsPass) {
  for (const char* tiling : {"{rows_per_tile: 5, buffers: 2, cores: 3}", "{rows_per_tile: 7, buffers: 3, cores: 2}",
                             "{rows_per_tile: 12, buffers: 1, cores: 4}"})
    for (const std::string& w : {kV3, kSoftmax})
      expect_valid(app::execute_functional(load(gate_yaml(w, tiling))), w + " " + tiling);
}

TEST(GatingValidation, RunsOn950) {
  for (const std::string& w : {kV3, kV4})
    expect_valid(app::execute_functional(load(gate_yaml(w, "", "", "ascend950pr"))), w + " on 950");
}

TEST(GatingValidation, EachStageAlonePasses) {
  for (const std::string& w : {kV3, kV4, kSoftmax, kHash})
    for (const char* stage : {"score", "select", "normalize"})
      expect_valid(app::execute_functional(load(gate_yaml(w + ", stage: " + stage))), w + " stage " + stage);
}

// Runs score -> select -> normalize on the fused kernel's inputs and compares bit for bit.
void expect_chain_equals_fused(const std::string& w) {
  const Ran fused = run_on(load(gate_yaml(w)));
  ASSERT_TRUE(fused.passed) << w;
  const bool hash = w.find("hash") != std::string::npos, bias = w.find("bias: true") != std::string::npos;
  const Ran score = run_on(load(gate_yaml(w + ", stage: score")), {fused.inputs[0]});
  std::vector<std::vector<double>> select_in{score.outputs[0]};
  for (size_t i = 1; i < fused.inputs.size(); ++i) select_in.push_back(fused.inputs[i]);  // bias, or input_ids and tid2eid
  const Ran select = run_on(load(gate_yaml(w + ", stage: select")), select_in);
  const Ran norm = run_on(load(gate_yaml(w + ", stage: normalize")), {select.outputs[0]});
  EXPECT_TRUE(score.passed && select.passed && norm.passed) << w;
  EXPECT_EQ(select.outputs[1], fused.outputs[1]) << w << ": ids";
  EXPECT_EQ(norm.outputs[0], fused.outputs[0]) << w << ": weights";
  // Three launches with GM between them cost more than one.
  EXPECT_GT(score.cycles + select.cycles + norm.cycles, fused.cycles) << w;
  EXPECT_EQ(fused.inputs.size(), size_t{1} + (bias ? 1 : 0) + (hash ? 2 : 0)) << w;
}

TEST(GatingValidation, TheUnfusedChainGivesTheFusedBits) {
  for (const std::string& w : {kV3, kToy, kV4, kSoftmax, kHash}) expect_chain_equals_fused(w);
}

// ---- The tie-aware judging of ids (KERNELS.md 5.4), on a hand-made select row ----

// One token, 4 groups of 2 experts, 2 groups kept, top-3. Groups 1 and 2 tie exactly on their
// top-2 sums (0.75), so the reference keeps groups 0 and 1 (lower index) and picks 0, 1, 2.
struct TieCase {
  app::LoadedRun run = load(gate_yaml("tokens: 1, experts: 8, topk: 3, groups: 4, topk_groups: 2, group_select: top2sum, stage: select"));
  std::vector<std::vector<double>> inputs{{1.0, 0.875, 0.5, 0.25, 0.375, 0.375, 0.125, 0.0625}};
  bool accepted(std::vector<double> ids) const {
    const std::vector<double> raw{inputs[0][static_cast<size_t>(ids[0])], inputs[0][static_cast<size_t>(ids[1])],
                                  inputs[0][static_cast<size_t>(ids[2])]};
    return run.kernel->references(inputs, {raw, ids})[1].exact == ids;
  }
};

TEST(GatingTies, TheReferenceBreaksTiesByLowerIndex) {
  TieCase c;
  EXPECT_EQ(gate(c.run).reference_ids(c.inputs), (std::vector<int32_t>{0, 1, 2}));
}

TEST(GatingTies, APickFromATiedGroupIsAccepted) {
  TieCase c;
  EXPECT_TRUE(c.accepted({0, 1, 2}));
  EXPECT_TRUE(c.accepted({0, 1, 4}));  // group 2 instead of the tied group 1
  EXPECT_TRUE(c.accepted({0, 1, 5}));  // ... and its other, tied, expert
}

TEST(GatingTies, AWrongGroupOrOrderOrRepeatIsRejected) {
  TieCase c;
  EXPECT_FALSE(c.accepted({0, 1, 6}));  // group 3 scores 0.1875, far below the boundary
  EXPECT_FALSE(c.accepted({0, 1, 3}));  // 0.25 while 0.5 is free in the same group
  EXPECT_FALSE(c.accepted({0, 2, 1}));  // not in descending order
  EXPECT_FALSE(c.accepted({0, 0, 1}));
}

// Sigmoid scores of 17 and 17.5 differ in fp64 but are both 1.0 in fp32, so the device sees a tie
// the fp64 reference does not and keeps the lower index: an accepted difference.
TEST(GatingTies, AnFp32TieTheReferenceSplitsIsAccepted) {
  std::vector<double> logits(16, 0.0);
  logits[3] = logits[5] = 17.0, logits[9] = 17.5;
  const auto flat = load(gate_yaml("tokens: 1, experts: 16, topk: 2"));
  const Ran r = run_on(flat, {logits});
  EXPECT_EQ(gate(flat).reference_ids(r.inputs), (std::vector<int32_t>{9, 3}));
  EXPECT_EQ(r.outputs[1], (std::vector<double>{3, 5}));
  EXPECT_TRUE(r.passed);
}

TEST(GatingTies, AGroupTieTheReferenceSplitsIsAccepted) {
  // Groups of 4; group 1 holds two 17s, group 2 two 17.5s: the top-2 sums tie at 2.0 in fp32 only.
  std::vector<double> logits(16, 0.0);
  logits[4] = logits[5] = 17.0, logits[8] = logits[9] = 17.5;
  const auto grouped = load(gate_yaml("tokens: 1, experts: 16, topk: 2, groups: 4, topk_groups: 1, group_select: top2sum"));
  const Ran r = run_on(grouped, {logits});
  EXPECT_EQ(gate(grouped).reference_ids(r.inputs), (std::vector<int32_t>{8, 9}));
  EXPECT_EQ(r.outputs[1], (std::vector<double>{4, 5}));
  EXPECT_TRUE(r.passed);
}

// ---- Broken programs must fail validation ----

// The broken program still runs to the end; its numbers must fail validation.
bool caught(const app::LoadedRun& run, const sim::Program& broken) {
  return !app::execute_functional(run, broken).kernel.validation->passed;
}

// Drops every vector instruction `pred` matches.
sim::Program without(const app::LoadedRun& run, const std::function<bool(const sim::Instr&, const sim::Operands&)>& pred) {
  sim::Program p = run.kernel->lower(run.hw, true);
  size_t dropped = 0;
  for (auto& c : p.cores)
    for (size_t i = c.code.size(); i-- > 0;)
      if (c.code[i].op == sim::Op::Vector && pred(c.code[i], c.operands[i])) {
        c.code.erase(c.code.begin() + static_cast<long>(i));
        c.operands.erase(c.operands.begin() + static_cast<long>(i));
        ++dropped;
      }
  EXPECT_GT(dropped, 0u);
  return p;
}

TEST(GatingMutation, DroppingTheBiasAddIsCaught) {
  const auto run = load(gate_yaml(kV3));
  EXPECT_TRUE(caught(run, without(run, [](const sim::Instr& i, const sim::Operands&) {
    return i.vop == sim::VecOp::Add && i.dtype == sim::DType::Fp32;
  })));
}

TEST(GatingMutation, DroppingTheRenormalizationIsCaught) {
  const auto run = load(gate_yaml(kV4));
  EXPECT_TRUE(caught(run, without(run, [](const sim::Instr& i, const sim::Operands& o) {
    return i.vop == sim::VecOp::Muls && o.scalar_from_src2;
  })));
}

TEST(GatingMutation, DroppingTheGroupMaskIsCaught) {
  const auto run = load(gate_yaml(kV3));
  EXPECT_TRUE(caught(run, without(run, [](const sim::Instr& i, const sim::Operands&) { return i.vop == sim::VecOp::Scatter; })));
}

// ---- Config errors name the key ----

std::string config_error(const std::string& workload) {
  try {
    load(gate_yaml(workload));
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(GatingConfig, BadValuesAreConfigErrorsAtTheirKey) {
  struct Case {
    std::string workload, key;
  };
  for (const Case& c : std::vector<Case>{
           {"tokens: 8, experts: 16, topk: 17", "workload.topk"},
           {"tokens: 8, experts: 60, topk: 4, groups: 8", "workload.groups"},
           {"tokens: 8, experts: 64, topk: 4, groups: 8, topk_groups: 9", "workload.topk_groups"},
           {"tokens: 8, experts: 64, topk: 20, groups: 8, topk_groups: 2", "workload.topk"},
           {"tokens: 8, experts: 64, topk: 4, score: tanh", "workload.score"},
           {"tokens: 8, experts: 64, topk: 4, stage: gather", "workload.stage"},
           {"tokens: 8, experts: 64, topk: 4, groups: 8, hash: {vocab: 10}", "workload.groups"},
           {"tokens: 8, experts: 4096, topk: 4", "workload.experts"},
           {"tokens: 8, experts: 64, topk: 4, hash: {vocab: 10, seeds: 1}", "workload.hash.seeds"},
       }) {
    const std::string msg = config_error(c.workload);
    EXPECT_NE(msg.find(c.key), std::string::npos) << c.workload << " -> " << msg;
  }
  EXPECT_EQ(config_error("tokens: 8, experts: 64, topk: 4"), "");  // while a valid one loads
}

TEST(GatingConfig, ATileThatDoesNotFitUbIsRefused) {
  try {
    load(gate_yaml(kV4, "{rows_per_tile: 4096}"));
    FAIL() << "a 4096-row tile was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("rows_per_tile"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace npusim
