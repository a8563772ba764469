// Attention blocks as graphs: the presets' layers and shapes, the refusals (a layer the model lacks,
// a top-k larger than the cache), and first-principles behaviour of the timing: DSA decode's
// attention is flat in the context once it exceeds the top-k while its indexer grows linearly;
// HCA's cost grows with context / 128; a window layer does not grow at all.
#include <gtest/gtest.h>

#include "test_support.hpp"

namespace npusim {
namespace {

std::string config(const std::string& hw, const std::string& workload, const std::string& fusion = "default") {
  return test::write_temp_config("attention_graph", "hardware: " + hw + "\nworkload: " + workload + "\nfusion: " + fusion + "\n");
}

const reports::KernelReport& kernel_named(const app::GraphOutput& out, const std::string& group) {
  for (const auto& k : out.kernels)
    if (k.name.rfind(group + ":", 0) == 0) return k;
  throw std::runtime_error("no kernel group " + group);
}

TEST(AttentionGraph, PresetLayersHaveTheirOpsAndShapes) {
  auto run = app::load_run(config("ascend910c", "{model: deepseek-v4-flash, block: attention, layer: csa, batch: 60, "
                                                "context: 131072}"));
  const auto& g = run.graph->graph;
  std::vector<std::string> kinds;
  for (const auto& op : g.ops) kinds.push_back(op.kind);
  EXPECT_EQ(kinds, (std::vector<std::string>{"compressor", "compressor", "lightning_indexer", "index_topk", "sparse_attention"}));
  EXPECT_EQ(g.tensor("q").shape, (std::vector<int64_t>{60, 64 * 512}));
  EXPECT_EQ(g.tensor("ckv_cache").shape, (std::vector<int64_t>{60 * 131072 / 4, 512}));
  EXPECT_EQ(g.tensor("topk_idx").shape, (std::vector<int64_t>{60, 512}));
  EXPECT_EQ(g.tensor("window_idx").shape, (std::vector<int64_t>{60, 128}));
  // Default fusion puts the top-k inside the indexer.
  ASSERT_EQ(run.graph->plan.groups.size(), 4u);
  EXPECT_EQ(run.graph->plan.groups[2].rule, "indexer_topk");

  auto pro = app::load_run(config("ascend950pr", "{model: deepseek-v4-pro, block: attention, layer: csa, context: 65536}"));
  EXPECT_EQ(pro.graph->graph.tensor("topk_idx").shape[1], 1024);
  EXPECT_EQ(pro.graph->batch, 120);  // KERNELS.md 6.1 decode batch
  auto dsa = app::load_run(config("ascend910c", "{model: deepseek-v3.2, block: attention, layer: dsa, context: 8192}"));
  EXPECT_EQ(dsa.graph->graph.tensor("topk_idx").shape[1], 2048);
  EXPECT_EQ(dsa.graph->graph.tensor("q").shape[1], 128 * 576);
}

void expect_config_error(const std::string& file, const std::vector<std::string>& says) {
  try {
    app::load_run(file);
    ADD_FAILURE() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    for (const auto& s : says) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what() << "\nmissing: " << s;
  }
}

TEST(AttentionGraphBadInput, LayerTheModelLacksAndTopkLargerThanTheCache) {
  expect_config_error(config("ascend910c", "{model: deepseek-v3.2, block: attention, layer: csa}"),
                      {"workload.layer", "deepseek-v3.2 has no 'csa' attention layer (it has: dsa)"});
  expect_config_error(config("ascend910c", "{model: deepseek-v3.2, block: attention, layer: dsa, context: 1000}"),
                      {"workload.context", "index top-k 2048 is larger than the cache of 1000 tokens"});
  expect_config_error(config("ascend910c", "{model: deepseek-v4-flash, block: attention, layer: csa, context: 1024}"),
                      {"index top-k 512 is larger than the 256 compressed entries"});
  expect_config_error(config("ascend910c", "{model: deepseek-v4-flash, block: attention, layer: swa, phase: decode, tokens: 8}"),
                      {"workload.tokens", "decode takes `batch`"});
  expect_config_error(config("ascend910c", "{model: deepseek-v4-flash, block: attention, layer: swa, indices: {distribution: "
                                           "top}}"),
                      {"workload.indices.distribution", "uniform, recent_biased, from_indexer"});
}

TEST(AttentionGraph, FromIndexerNeedsAFunctionalRun) {
  auto run = app::load_run(config("ascend910c", "{model: deepseek-v3.2, block: attention, layer: dsa, context: 4096, "
                                                "indices: {distribution: from_indexer}}"));
  EXPECT_THROW(app::execute_graph(run, false), ConfigError);
}

// Every layer kind of the toy preset, decode and prefill, on both data paths: each kernel validated
// on the values it got, the sparse attention reading the indexer's own picks (from_indexer).
TEST(AttentionGraph, ToyLayersValidateEveryKernel) {
  for (const char* hw : {"ascend910c", "ascend950pr"})
    for (const char* layer : {"dense", "dsa", "csa", "hca", "swa"})
      for (const char* phase : {"decode", "prefill"}) {
        const bool sparse_index = std::string(layer) == "dsa" || std::string(layer) == "csa";
        for (const char* fusion : {"none", "default"}) {
          if (!sparse_index && std::string(fusion) == "none") continue;  // nothing to fuse
          const std::string size = std::string(phase) == "decode" ? "batch: 3" : "tokens: 40";
          const std::string what = std::string(hw) + " " + layer + " " + phase + " " + fusion;
          auto run = app::load_run(config(hw, std::string("{model: toy, block: attention, layer: ") + layer + ", phase: " + phase +
                                                  ", " + size + ", context: 200, indices: {distribution: from_indexer}}",
                                          fusion));
          auto out = app::execute_graph(run, true);
          for (const auto& k : out.kernels) {
            ASSERT_TRUE(k.validation) << what << " " << k.name;
            std::string why;
            for (const auto& f : k.validation->failures) why += "\n  " + f;
            EXPECT_TRUE(k.validation->passed) << what << " " << k.name << why;
          }
          EXPECT_EQ(out.graph.index_source, sparse_index ? "from_indexer" : "") << what;
        }
      }
}

double group_time(const std::string& hw, const std::string& workload, const std::string& group) {
  auto run = app::load_run(config(hw, workload, "none"));
  return kernel_named(app::execute_graph(run, false), group).time_us;
}

TEST(AttentionGraphModel, DsaAttentionIsFlatInContextWhileTheIndexerGrows) {
  std::vector<double> attn, index;
  for (int64_t ctx : {8192, 32768, 131072}) {
    const std::string w = "{model: deepseek-v3.2, block: attention, layer: dsa, batch: 12, context: " + std::to_string(ctx) +
                          ", indices: {distribution: uniform, seed: 1}}";
    attn.push_back(group_time("ascend910c", w, "attention"));
    index.push_back(group_time("ascend910c", w, "indexer"));
  }
  // 2048 rows gathered per query either way: within 25 % from 8K to 128K (L2 locality differs).
  EXPECT_NEAR(attn[2] / attn[0], 1.0, 0.25);
  // The indexer scores every visible key: 16x the keys, at least 8x the time.
  EXPECT_GT(index[2] / index[0], 8.0);
  EXPECT_GT(index[1], index[0]);
}

TEST(AttentionGraphModel, HcaGrowsWithContextOver128AndTheWindowDoesNot) {
  std::vector<double> hca, swa;
  for (int64_t ctx : {65536, 262144, 1048576}) {
    const std::string c = std::to_string(ctx);
    hca.push_back(group_time("ascend950pr", "{model: deepseek-v4-flash, block: attention, layer: hca, batch: 60, context: " + c + "}",
                             "attention"));
    swa.push_back(group_time("ascend950pr", "{model: deepseek-v4-flash, block: attention, layer: swa, batch: 60, context: " + c + "}",
                             "attention"));
  }
  // 128 + context / 128 entries: 640, 2176, 8320 -> x3.4 and x13 (fixed costs make it a little less).
  EXPECT_GT(hca[1] / hca[0], 2.0);
  EXPECT_GT(hca[2] / hca[0], 7.0);
  EXPECT_NEAR(swa[2] / swa[0], 1.0, 0.1);
}

}  // namespace
}  // namespace npusim
