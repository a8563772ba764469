// Operator graphs: presets carry KERNELS.md 6 shapes, graph YAML files load with located errors,
// fusion plans partition the ops, and graph runs time (and validate) every kernel in order.
#include <gtest/gtest.h>

#include <algorithm>

#include <fstream>

#include "graphs/models.hpp"
#include "reports/writers.hpp"
#include "test_support.hpp"

namespace npusim {
namespace {

std::string write_config(const std::string& yaml) { return test::write_temp_config("graph", yaml); }

std::vector<int64_t> shape_of(const graphs::Graph& g, const std::string& t) { return g.tensor(t).shape; }

TEST(GraphPresets, CarryTheDerivedGemmShapesOfKernelsMd) {
  const SourceLoc here{"test", 0, 0, ""};
  graphs::MoeBlockOptions opt;
  opt.tokens = 60;
  auto flash = graphs::build_moe_graph(graphs::moe_model("deepseek-v4-flash", here), opt);
  EXPECT_EQ(shape_of(flash, "w_gate"), (std::vector<int64_t>{4096, 256}));
  EXPECT_EQ(shape_of(flash, "w13"), (std::vector<int64_t>{256, 4096, 4096}));
  EXPECT_EQ(shape_of(flash, "w2"), (std::vector<int64_t>{256, 2048, 4096}));
  EXPECT_EQ(shape_of(flash, "topk_ids"), (std::vector<int64_t>{60, 6}));
  auto pro = graphs::build_moe_graph(graphs::moe_model("deepseek-v4-pro", here), opt);
  EXPECT_EQ(shape_of(pro, "w_gate"), (std::vector<int64_t>{7168, 384}));
  EXPECT_EQ(shape_of(pro, "w13"), (std::vector<int64_t>{384, 7168, 6144}));
  EXPECT_EQ(shape_of(pro, "w2"), (std::vector<int64_t>{384, 3072, 7168}));
  auto v3 = graphs::build_moe_graph(graphs::moe_model("deepseek-v3", here), opt);
  EXPECT_EQ(shape_of(v3, "w13"), (std::vector<int64_t>{256, 7168, 4096}));
  EXPECT_EQ(shape_of(v3, "ws13"), (std::vector<int64_t>{7168, 4096}));
  // V3 weights the combine (after W2); V4 scales the SwiGLU rows (before W2).
  auto op_named = [](const graphs::Graph& g, const std::string& n) -> const graphs::OpNode& {
    for (const auto& o : g.ops)
      if (o.name == n) return o;
    throw std::runtime_error("no op " + n);
  };
  EXPECT_TRUE(op_named(v3, "combine").inputs.count("weights"));
  EXPECT_FALSE(op_named(v3, "swiglu").inputs.count("row_weights"));
  EXPECT_FALSE(op_named(flash, "combine").inputs.count("weights"));
  EXPECT_TRUE(op_named(flash, "swiglu").inputs.count("row_weights"));
  EXPECT_EQ(op_named(flash, "swiglu").attrs["clamp"], 10.0);
  EXPECT_EQ(op_named(v3, "select").attrs["groups"], 8);
  EXPECT_FALSE(flash.notes.empty());
}

TEST(GraphPresets, V4FirstLayersRouteByHash) {
  const auto& m = graphs::moe_model("deepseek-v4-flash", SourceLoc{});
  graphs::MoeBlockOptions opt;
  opt.tokens = 8;
  opt.layer = 0;
  auto g = graphs::build_moe_graph(m, opt);
  bool hash = false;
  for (const auto& o : g.ops) hash = hash || o.kind == "hash_topk";
  EXPECT_TRUE(hash);
  opt.layer = 3;
  g = graphs::build_moe_graph(m, opt);
  for (const auto& o : g.ops) EXPECT_NE(o.kind, "hash_topk");
}

TEST(GraphPlans, NoneGivesOneKernelPerOp) {
  auto run = app::load_run(write_config("hardware: ascend910b2\nworkload: {model: toy, block: moe}\nfusion: none\n"));
  ASSERT_TRUE(run.graph);
  EXPECT_EQ(run.graph->plan.groups.size(), run.graph->graph.ops.size());
}

TEST(GraphYaml, DenseMlpRunsAndValidatesEveryKernel) {
  const std::string cfg = write_config("hardware: ascend910b2\nworkload: {model: " + std::string(NPUSIM_SOURCE_DIR) +
                                       "/configs/graphs/dense_mlp.yaml, block: moe, tokens: 40}\nfusion: none\n"
                                       "inputs: {seed: 5}\n");
  auto run = app::load_run(cfg);
  auto out = app::execute_graph(run, /*functional=*/true);
  ASSERT_EQ(out.kernels.size(), 3u);
  for (const auto& k : out.kernels) {
    ASSERT_TRUE(k.validation) << k.name;
    EXPECT_TRUE(k.validation->passed) << k.name;
  }
  EXPECT_TRUE(out.run.passed());
  // A chain: the critical path is every kernel, and equals the serial total.
  EXPECT_EQ(out.graph.critical_path.size(), 3u);
  EXPECT_DOUBLE_EQ(out.graph.critical_path_us, out.graph.total_us);
  EXPECT_NEAR(out.graph.total_us, out.kernels[0].time_us + out.kernels[1].time_us + out.kernels[2].time_us +
                                      3 * run.hw.launch_overhead_us, 1e-9);
  // Same config, same bytes.
  auto again = app::execute_graph(run, true);
  reports::RunReport a = app::make_report(run.hw, cfg, "test"), b = a;
  a.kernels = out.kernels, a.graph = out.graph;
  b.kernels = again.kernels, b.graph = again.graph;
  EXPECT_EQ(reports::to_json(a).dump(), reports::to_json(b).dump());
}

void expect_all_valid(const app::GraphOutput& out, const std::string& what) {
  for (const auto& k : out.kernels) {
    ASSERT_TRUE(k.validation) << what << " " << k.name;
    std::string why;
    for (const auto& f : k.validation->failures) why += "\n  " + f;
    EXPECT_TRUE(k.validation->passed) << what << " " << k.name << why;
  }
}

TEST(MoeGraph, ToyBlockValidatesUnderEveryPlanAndRouting) {
  for (const char* fusion : {"none", "default"})
    for (const char* routing : {"from_gate", "zipf", "hot_expert"})
      for (const char* phase : {"decode", "prefill"}) {
        const std::string what = std::string(fusion) + " " + routing + " " + phase;
        auto run = app::load_run(write_config(std::string("hardware: ascend910b2\nworkload: {model: toy, block: moe, phase: ") +
                                              phase + ", routing: {distribution: " + routing +
                                              ", seed: 4}}\nfusion: " + fusion + "\ninputs: {seed: 2}\n"));
        auto out = app::execute_graph(run, true);
        expect_all_valid(out, what);
        int64_t routed = 0, most = 0;
        for (int64_t c : out.graph.tokens_per_expert) routed += c, most = std::max(most, c);
        EXPECT_EQ(routed, run.graph->tokens * 4) << what;
        const double mean = static_cast<double>(routed) / static_cast<double>(out.graph.tokens_per_expert.size());
        EXPECT_DOUBLE_EQ(out.graph.imbalance, static_cast<double>(most) / mean) << what;
        // The shared expert runs beside the routed chain: the critical path is shorter than the stream.
        EXPECT_LT(out.graph.critical_path_us, out.graph.total_us) << what;
      }
}

TEST(MoeGraph, HashLayerAndFusedChainsMatchTheUnfusedOutput) {
  std::vector<double> finals;
  for (const char* fusion : {"none", "default"}) {
    auto run = app::load_run(write_config(std::string("hardware: ascend910b2\nworkload: {model: toy, block: moe, layer: 0, "
                                                      "routing: {distribution: from_gate}}\nfusion: ") + fusion + "\n"));
    bool hash = false;
    for (const auto& o : run.graph->graph.ops) hash = hash || o.kind == "hash_topk";
    EXPECT_TRUE(hash);
    auto out = app::execute_graph(run, true);
    expect_all_valid(out, fusion);
    finals.push_back(out.graph.total_us);
  }
  EXPECT_LT(finals[1], finals[0]) << "fusing saves kernels and launches";
}

TEST(MoeGraph, FromGateTimingRoutesLikeTheFunctionalRun) {
  auto run = app::load_run(write_config("hardware: ascend910b2\nworkload: {model: toy, block: moe, phase: prefill, "
                                        "routing: {distribution: from_gate}}\n"));
  auto timed = app::execute_graph(run, false);
  auto functional = app::execute_graph(run, true);
  EXPECT_EQ(timed.graph.tokens_per_expert, functional.graph.tokens_per_expert);
  for (size_t i = 0; i < timed.kernels.size(); ++i) EXPECT_EQ(timed.kernels[i].cycles, functional.kernels[i].cycles) << timed.kernels[i].name;
}

void expect_config_error(const std::string& yaml, const std::vector<std::string>& says) {
  try {
    app::load_run(write_config(yaml));
    ADD_FAILURE() << "expected a ConfigError for\n" << yaml;
  } catch (const ConfigError& e) {
    for (const auto& s : says) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what() << "\nmissing: " << s;
  }
}

TEST(GraphBadInput, UnknownModelSuggestsAPreset) {
  expect_config_error("hardware: ascend910b2\nworkload: {model: deepseek-v4-flesh, block: moe}\n",
                      {"unknown model 'deepseek-v4-flesh'", "did you mean 'deepseek-v4-flash'", ":2:"});
}

TEST(GraphBadInput, DenseLayerOfV3IsNotMoe) {
  expect_config_error("hardware: ascend910b2\nworkload: {model: deepseek-v3, block: moe, layer: 1}\n",
                      {"workload.layer", "dense MLP"});
}

TEST(GraphBadInput, UnknownFusionGroupNamesTheChoices) {
  expect_config_error("hardware: ascend910b2\nworkload: {model: toy, block: moe}\nfusion: [gatting]\n",
                      {"unknown fusion group 'gatting'", ":3:"});
}

TEST(GraphBadInput, ShapesThatDoNotChainNameTheOpAndSizes) {
  const std::string g = std::string(NPUSIM_SOURCE_DIR) + "/tests/data/graphs/not_chaining.yaml";
  expect_config_error("hardware: ascend910b2\nworkload: {model: " + g + ", block: moe, tokens: 8}\n",
                      {"not_chaining.yaml:8:", "op up (gemm)", "shapes do not chain", "(256 vs 128)"});
}

TEST(GraphBadInput, TopkLargerThanTheExpertsAvailable) {
  const std::string g = std::string(NPUSIM_SOURCE_DIR) + "/tests/data/graphs/topk_too_large.yaml";
  expect_config_error("hardware: ascend910b2\nworkload: {model: " + g + ", block: moe, tokens: 8}\n",
                      {"topk_too_large.yaml:8:", "top-k 12 is larger than the 8 experts available"});
}

TEST(GraphBadInput, UnknownOpKindSuggestsNearest) {
  const std::string g = std::string(NPUSIM_SOURCE_DIR) + "/tests/data/graphs/unknown_op.yaml";
  expect_config_error("hardware: ascend910b2\nworkload: {model: " + g + ", block: moe, tokens: 8}\n",
                      {"unknown_op.yaml:6:", "swiglo", "did you mean 'swiglu'"});
}

TEST(GraphBadInput, TilingIsRefusedForModelWorkloads) {
  expect_config_error("hardware: ascend910b2\nworkload: {model: toy, block: moe}\ntiling: {cores: 2}\n",
                      {"per-kernel tilings are not supported yet"});
}

}  // namespace
}  // namespace npusim
