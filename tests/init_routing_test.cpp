// The init-routing kernel: functional runs of every capacity mode and padding against the CPU
// reference, the shared routing layout, determinism, broken programs and bad configs.
#include "kernels/init_routing.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "kernels/tensor_io.hpp"
#include "sim/functional.hpp"
#include "test_support.hpp"

namespace npusim {
namespace {

using kernels::InitRoutingKernel;

app::LoadedRun load(const std::string& workload, const std::string& tiling = "",
                    const std::string& hw = "ascend910b2") {
  return app::load_run(test::write_temp_config(
      "init_routing", "hardware: " + hw + "\nworkload: {op: init_routing, " + workload + "}\n" +
                          (tiling.empty() ? "" : "tiling: " + tiling + "\n") +
                          "inputs: {distribution: normal, seed: 5}\n"));
}

// The toy shape of KERNELS.md 6.1: T 64, E 16, K 4, H 256.
std::string toy(const std::string& extra = "", const std::string& routing = "seed: 3") {
  return "hidden: 256, dtype: bf16, routing: {experts: 16, tokens: 64, topk: 4, " + routing + "}" +
         (extra.empty() ? "" : ", " + extra);
}

void expect_valid(const app::LoadedRun& run, const std::string& what) {
  const auto out = app::execute_functional(run);
  ASSERT_TRUE(out.kernel.validation.has_value()) << what;
  std::string why;
  for (const auto& f : out.kernel.validation->failures) why += "\n  " + f;
  EXPECT_TRUE(out.kernel.validation->passed) << what << why;
}

const InitRoutingKernel& kernel_of(const app::LoadedRun& run) {
  return dynamic_cast<const InitRoutingKernel&>(*run.kernel);
}

// The GM image after a functional run of `prog` (inputs as the run writes them).
std::vector<uint8_t> run_gm(const app::LoadedRun& run, const sim::Program& prog) {
  sim::SimOptions opt;
  opt.record_work = true;
  const sim::SimResult timed = sim::simulate(run.hw, prog, opt);
  sim::FunctionalMemory mem(run.hw, prog);
  const auto ts = run.kernel->tensors();
  for (size_t i = 0; i < ts.size(); ++i)
    if (!ts[i].output)
      kernels::write_tensor(mem.gm(), ts[i], run.kernel->make_input(i, run.inputs));
  sim::run_functional(prog, timed, mem);
  return mem.gm();
}

std::vector<double> output(const app::LoadedRun& run, const std::vector<uint8_t>& gm,
                           const std::string& name) {
  for (const auto& t : run.kernel->tensors())
    if (t.name == name) return kernels::read_tensor(gm, t);
  ADD_FAILURE() << "no output " << name;
  return {};
}

bool caught(const app::LoadedRun& run, const sim::Program& broken) {
  try {
    return !app::execute_functional(run, broken).kernel.validation->passed;
  } catch (const SimError&) {
    return true;
  }
}

TEST(InitRoutingValidation, DroplessToyAndA16AlignedShapePass) {
  expect_valid(load(toy()), "toy");
  expect_valid(load("hidden: 1024, dtype: fp16, routing: {experts: 32, tokens: 128, topk: 8, "
                    "distribution: zipf, seed: 2}"),
               "toy-ascend-legal");
  expect_valid(
      load("hidden: 4096, dtype: bf16, routing: {experts: 256, tokens: 60, topk: 6, seed: 2}", "",
           "ascend950pr"),
      "V4-Flash decode on 950");
  expect_valid(
      load("hidden: 96, dtype: fp32, routing: {experts: 8, tokens: 300, topk: 2, seed: 6}"),
      "fp32 rows");
}

TEST(InitRoutingValidation, AllTokensToOneExpertPass) {
  for (const char* cap : {"", ", capacity: {mode: position, factor: 2.0}",
                          ", capacity: {mode: probability, rows: 40}, pad: capacity"}) {
    auto run = load(std::string("hidden: 256, dtype: bf16, routing: {experts: 16, tokens: 64, "
                                "topk: 1, distribution: hot_expert, "
                                "hot_fraction: 1.0, seed: 4}") +
                    cap);
    const auto& routed = kernel_of(run).layout().routed;
    EXPECT_EQ(*std::max_element(routed.begin(), routed.end()), 64) << cap;
    expect_valid(run, cap);
  }
}

TEST(InitRoutingValidation, EmptyExpertsAndRaggedChunksPass) {
  // 8 tokens x 2 picks over 64 experts leave most experts empty.
  auto sparse = load(
      "hidden: 128, dtype: bf16, routing: {experts: 64, tokens: 8, topk: 2, seed: 1}, pad: "
      "{multiple: 8}");
  const auto& routed = kernel_of(sparse).layout().routed;
  EXPECT_GT(std::count(routed.begin(), routed.end(), 0), 40);
  expect_valid(sparse, "empty experts");
  // 183 entries: no multiple of 32, six chunks dealt unevenly to five cores; rows in column pieces.
  expect_valid(
      load("hidden: 200, dtype: fp16, routing: {experts: 16, tokens: 61, topk: 3, seed: 3}",
           "{chunk: 32, rows_per_tile: 3, cols_per_tile: 64, cores: 5}"),
      "ragged");
  expect_valid(
      load("hidden: 200, dtype: fp16, routing: {experts: 16, tokens: 61, topk: 3, seed: 3}, "
           "capacity: {mode: probability, factor: 0.8}, pad: {multiple: 4}",
           "{chunk: 64, cores: 3, buffers: 1}"),
      "ragged probability");
}

TEST(InitRoutingValidation, EveryCapacityModeWithAndWithoutPaddingPasses) {
  for (const char* mode : {"position", "probability"})
    for (const char* factor : {"factor: 0.5", "factor: 1.25", "rows: 1"})
      for (const char* pad : {"", ", pad: none", ", pad: capacity", ", pad: {multiple: 4}"}) {
        const std::string extra =
            std::string("capacity: {mode: ") + mode + ", " + factor + "}" + pad;
        expect_valid(load(toy(extra)), extra);
      }
  expect_valid(load(toy("capacity: {mode: dropless}, pad: {multiple: 16}")), "dropless padded");
}

TEST(InitRoutingValidation, CountAndCumsumFormsOfExpertTokens) {
  for (const char* cap : {"", "capacity: {mode: position, factor: 0.75}, "}) {
    auto count = load(toy(std::string(cap) + "expert_tokens: count"));
    auto cumsum = load(toy(std::string(cap) + "expert_tokens: cumsum"));
    expect_valid(cumsum, cap);
    const auto c =
        output(count, run_gm(count, count.kernel->lower(count.hw, true)), "expert_tokens");
    const auto s =
        output(cumsum, run_gm(cumsum, cumsum.kernel->lower(cumsum.hw, true)), "expert_tokens");
    std::vector<double> expect(c.size());
    std::partial_sum(c.begin(), c.end(), expect.begin());
    EXPECT_EQ(s, expect) << cap;
    const auto& kept = kernel_of(count).layout().kept;
    EXPECT_EQ(c, std::vector<double>(kept.begin(), kept.end())) << cap;
  }
}

TEST(InitRoutingValidation, TiedWeightsInProbabilityModeKeepTheLowerFlatIndex) {
  auto run = load(toy("capacity: {mode: probability, factor: 0.5}", "weights: ties, seed: 3"));
  // The capacity cut falls inside a run of equal weights for some expert: the test means something.
  const auto& l = kernel_of(run).layout();
  const auto w = run.kernel->make_input(2, run.inputs);
  bool split_tie = false;
  for (size_t e = 0; e < l.routed.size(); ++e)
    if (l.kept[e] > 0 && l.kept[e] < l.routed[e])
      split_tie =
          split_tie || w[l.order[l.start[e] + l.kept[e] - 1]] == w[l.order[l.start[e] + l.kept[e]]];
  EXPECT_TRUE(split_tie);
  expect_valid(run, "ties");
}

TEST(InitRoutingReport, DetailsCountDroppedEntriesAndPaddingRows) {
  auto run = load(toy("capacity: {mode: position, rows: 10}, pad: capacity"));
  const auto& l = kernel_of(run).layout();
  const int64_t kept = std::accumulate(l.kept.begin(), l.kept.end(), int64_t{0});
  EXPECT_LT(kept, 160);
  const nlohmann::json d = run.kernel->details();
  EXPECT_EQ(d.at("capacity").at("rows"), 160);  // [E, C, H] with C = 10
  EXPECT_EQ(d.at("capacity").at("capacity"), 10);
  EXPECT_EQ(d.at("capacity").at("dropped_entries"), 256 - kept);
  EXPECT_EQ(d.at("capacity").at("padding_rows"), 160 - kept);
  const auto counts = d.at("routing").at("tokens_per_expert").get<std::vector<int64_t>>();
  EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), int64_t{0}), 256);
  EXPECT_DOUBLE_EQ(d.at("routing").at("imbalance").get<double>(),
                   *std::max_element(counts.begin(), counts.end()) / 16.0);
}

TEST(InitRoutingLayout, AgreesWithTheReferenceInEveryMode) {
  using ref::CapacityMode, ref::PadMode;
  struct Case {
    const char* yaml;
    ref::RoutingConfig config;  // what the yaml asks for, on the toy shape
  };
  for (const Case& k : {Case{"", {16, CapacityMode::Dropless, 0, PadMode::None, 0}},
                        Case{"capacity: {mode: position, factor: 0.75}, pad: capacity",
                             {16, CapacityMode::Position, 12, PadMode::Capacity, 0}},
                        Case{"capacity: {mode: probability, factor: 1.0}, pad: {multiple: 8}",
                             {16, CapacityMode::Probability, 16, PadMode::Multiple, 8}}}) {
    auto run = load(toy(k.yaml, "distribution: zipf, seed: 8"));
    const auto ids = run.kernel->make_input(1, run.inputs);
    const std::vector<int32_t> picks(ids.begin(), ids.end());
    const bool by_weight = k.config.mode == CapacityMode::Probability;
    const auto w = by_weight ? run.kernel->make_input(2, run.inputs) : std::vector<double>{};
    const ref::Routing r = ref::init_routing(64, 4, picks.data(), by_weight ? w.data() : nullptr,
                                             nullptr, 0, k.config);
    const auto& l = kernel_of(run).layout();
    EXPECT_EQ(l.order, r.perm) << k.yaml;
    EXPECT_EQ(l.dest, r.expanded_row_idx) << k.yaml;
    EXPECT_EQ(l.kept, r.counts) << k.yaml;
    EXPECT_EQ(l.routed, r.before_capacity) << k.yaml;
    EXPECT_EQ(l.offset, r.offsets) << k.yaml;
    EXPECT_EQ(l.rows, r.rows) << k.yaml;
  }
}

TEST(InitRoutingValidation, SameSeedGivesTheSameBytes) {
  const std::string w = toy("capacity: {mode: probability, factor: 1.0}, pad: capacity");
  auto a = load(w), b = load(w);
  EXPECT_EQ(run_gm(a, a.kernel->lower(a.hw, true)), run_gm(b, b.kernel->lower(b.hw, true)));
  EXPECT_EQ(app::execute(a).kernel.cycles, app::execute(b).kernel.cycles);
}

TEST(InitRoutingMutation, AWrongDestinationOrAMissingMergeIsCaught) {
  // Two chunks of 128 entries, one per core; each sort is sort32 and one merge round.
  auto run = load(toy("capacity: {mode: position, factor: 1.0}"), "{chunk: 128, cores: 2}");
  EXPECT_FALSE(caught(run, run.kernel->lower(run.hw, true)));
  auto nth = [](const sim::CoreProgram& c, sim::VecOp op, int n) {
    for (size_t i = 0; i < c.code.size(); ++i)
      if (c.code[i].op == sim::Op::Vector && c.code[i].vop == op && n-- == 0) return i;
    ADD_FAILURE() << "no such instruction";
    return size_t{0};
  };
  // Core 1's first destination arange (the second arange: the first numbers the flat entries)
  // starts one row late.
  sim::Program p = run.kernel->lower(run.hw, true);
  p.cores[1].operands[nth(p.cores[1], sim::VecOp::Arange, 1)].scalar += 1;
  EXPECT_TRUE(caught(run, p));
  // Core 0's merge round merges nothing: the runs of 32 stay unmerged.
  p = run.kernel->lower(run.hw, true);
  p.cores[0].operands[nth(p.cores[0], sim::VecOp::MrgSort, 0)].cols = 32;
  EXPECT_TRUE(caught(run, p));
}

TEST(InitRoutingConfig, BadCapacityAndPaddingAreConfigErrors) {
  auto error_at = [](const std::string& workload, const std::string& key) {
    try {
      load(workload);
      ADD_FAILURE() << "accepted: " << workload;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  error_at(toy("capacity: {mode: position}"), "workload.capacity");
  error_at(toy("capacity: {mode: probability, factor: 1.0, rows: 4}"), "workload.capacity.rows");
  error_at(toy("capacity: {mode: by_weight, factor: 1.0}"), "workload.capacity.mode");
  error_at(toy("capacity: {mode: dropless, factor: 1.0}"), "workload.capacity.factor");
  error_at(toy("capacity: {mode: position, factor: -1}"), "workload.capacity.factor");
  error_at(toy("pad: capacity"), "workload.pad");
  error_at(toy("pad: {multiple: 0}"), "workload.pad.multiple");
  error_at(toy("expert_tokens: prefix"), "workload.expert_tokens");
  error_at(toy("", "weights: ties, seed: 3"), "workload.routing.weights");
  // Probability mode sorts an expert in one chunk: 64 entries do not fit a chunk of 32.
  try {
    load(
        "hidden: 256, dtype: bf16, routing: {experts: 16, tokens: 64, topk: 1, distribution: "
        "hot_expert, hot_fraction: 1.0}, "
        "capacity: {mode: probability, factor: 1.0}",
        "{chunk: 32}");
    ADD_FAILURE() << "accepted an expert larger than the chunk";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("tiling.chunk"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace npusim
