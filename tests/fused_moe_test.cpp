// The fused MoE expert kernels: GMM1 + SwiGLU and GMM2 + finalize, each a cube->vector pipeline
// (GM workspace on 2201, L0C->UB on 3510), validated against the CPU reference on routings with
// empty experts, one expert taking every row, and row counts that are not tile multiples; and in
// the toy MoE graph, fused against unfused.
#include <gtest/gtest.h>

#include <cmath>

#include "test_support.hpp"

namespace npusim {
namespace {

const char* const kHardware[] = {"ascend910b2", "ascend950pr"};

app::RunOutput validate(const std::string& yaml) {
  return app::execute_functional(app::load_run(test::write_temp_config("fused_moe", yaml)));
}

void expect_valid(const app::RunOutput& out, const std::string& what) {
  ASSERT_TRUE(out.kernel.validation.has_value()) << what;
  std::string why;
  for (const auto& f : out.kernel.validation->failures) why += "\n  " + f;
  EXPECT_TRUE(out.kernel.validation->passed) << what << why;
  EXPECT_GT(out.kernel.cycles, 0u) << what;
}

TEST(GmmSwiglu, ValidatesOnBothDataPaths) {
  // Rows per expert: empty experts and tails; one expert with everything; one row in all.
  const std::vector<std::string> rows{"[0, 37, 1, 200, 0, 16]", "[0, 0, 300, 0]", "[1]"};
  // inter 384 leaves a 128-column tail item after the 256-wide ones.
  const std::vector<std::string> variants{"inter: 128, clamp: 10, row_weights: true",
                                          "inter: 384, halves: up_first", "inter: 64, dtype: fp16"};
  for (const char* hw : kHardware)
    for (const auto& r : rows)
      for (const auto& v : variants) {
        std::string dtype = v.find("dtype") == std::string::npos ? ", dtype: bf16" : "";
        const std::string yaml = std::string("hardware: ") + hw + "\nworkload: {op: grouped_gemm_swiglu, k: 256" + dtype +
                                 ", " + v + ", group_rows: " + r + "}\ninputs: {seed: 3}\n";
        expect_valid(validate(yaml), std::string(hw) + " " + r + " " + v);
      }
}

TEST(GmmSwiglu, SmallTilingsAndOneSlotStillValidate) {
  for (const char* hw : kHardware) {
    const std::string yaml = std::string("hardware: ") + hw +
                             "\nworkload: {op: grouped_gemm_swiglu, k: 96, inter: 160, dtype: bf16, row_weights: true, "
                             "routing: {experts: 8, tokens: 29, topk: 3, distribution: zipf, s: 1.2, seed: 5}}\n"
                             "tiling: {l1: [32, 64, 64], slots: 1, rows_per_tile: 4, buffers: 1, cores: 3}\ninputs: {seed: 9}\n";
    expect_valid(validate(yaml), hw);
  }
}

TEST(GmmFinalize, ValidatesWeightedAndPlainWithSharedAndResidual) {
  const std::vector<std::string> routings{
      "{experts: 16, tokens: 37, topk: 4, distribution: zipf, s: 1.2, seed: 7}",
      "{experts: 8, tokens: 20, topk: 2, distribution: hot_expert, hot_fraction: 1.0, seed: 1}",  // one expert takes all
      "{experts: 64, tokens: 5, topk: 6, distribution: uniform, seed: 3}"};                       // mostly empty experts
  const std::vector<std::string> flags{"weighted: true, shared: true, residual: true", "weighted: false",
                                       "weighted: true, residual: true"};
  for (const char* hw : kHardware)
    for (const auto& r : routings)
      for (const auto& f : flags) {
        const std::string yaml = std::string("hardware: ") + hw +
                                 "\nworkload: {op: grouped_gemm_finalize, n: 288, k: 128, dtype: bf16, " + f +
                                 ", routing: " + r + "}\ninputs: {seed: 4}\n";
        expect_valid(validate(yaml), std::string(hw) + " " + r + " " + f);
      }
}

TEST(GmmFinalize, SmallTilingsValidate) {
  for (const char* hw : kHardware) {
    const std::string yaml = std::string("hardware: ") + hw +
                             "\nworkload: {op: grouped_gemm_finalize, n: 160, k: 64, dtype: fp16, shared: true, "
                             "routing: {experts: 4, tokens: 33, topk: 2, distribution: zipf, s: 1.2, seed: 2}}\n"
                             "tiling: {l1: [32, 64, 64], rows_per_tile: 3, cols_per_tile: 48, slots: 1, cores: 2}\ninputs: {seed: 1}\n";
    expect_valid(validate(yaml), hw);
  }
}

TEST(FusedMoeBadInput, SlotsBeyondThePendingLimitAndUbOverflowNameTheKey) {
  auto fails = [](const std::string& tiling, const std::string& says) {
    const std::string yaml = "hardware: ascend910b2\nworkload: {op: grouped_gemm_swiglu, k: 256, inter: 256, dtype: bf16, "
                             "group_rows: [40, 8]}\ntiling: " + tiling + "\n";
    try {
      auto run = app::load_run(test::write_temp_config("fused_moe_bad", yaml));
      app::execute(run);
      ADD_FAILURE() << "expected an error for " << tiling;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  fails("{slots: 16}", "tiling.slots");
  fails("{rows_per_tile: 64}", "tiling.rows_per_tile");
}

// The toy MoE layer with its expert chain fused and unfused. GMM1 + SwiGLU rounds H where the
// unfused GEMM does, so A is the same bits; GMM2 + finalize keeps Y in fp32, so the output only
// agrees to bf16 precision (measured: at most 0.0063 relative, about one ulp).
TEST(MoeGraphFusion, FusedExpertKernelsMatchTheUnfusedChain) {
  for (const char* hw : kHardware)
    for (const char* model_layer : {"", ", layer: 0"}) {  // V3-style weights in combine vs hash layer
      std::map<std::string, std::vector<double>> values[2];
      int i = 0;
      for (const char* fusion : {"none", "[gmm1_swiglu, gmm2_finalize]"}) {
        auto run = app::load_run(test::write_temp_config(
            "fused_graph", std::string("hardware: ") + hw + "\nworkload: {model: toy, block: moe, phase: prefill" +
                               model_layer + ", routing: {distribution: zipf, s: 1.2, seed: 3}}\nfusion: " + fusion +
                               "\ninputs: {seed: 6}\n"));
        auto out = app::execute_graph(run, true);
        for (const auto& k : out.kernels) {
          ASSERT_TRUE(k.validation) << k.name;
          EXPECT_TRUE(k.validation->passed) << hw << " " << fusion << " " << k.name;
        }
        values[i++] = out.run.values;
      }
      EXPECT_EQ(values[0].at("act"), values[1].at("act")) << hw << ": SwiGLU output differs between plans";
      const auto &o0 = values[0].at("out"), &o1 = values[1].at("out");
      ASSERT_EQ(o0.size(), o1.size());
      double worst = 0;
      for (size_t j = 0; j < o0.size(); ++j) worst = std::max(worst, std::abs(o0[j] - o1[j]) / (1.0 + std::abs(o0[j])));
      EXPECT_LT(worst, 1.0 / 64) << hw << model_layer << ": more than a couple of bf16 ulps apart";
      EXPECT_FALSE(values[1].count("h")) << "H stays inside the fused kernel";
    }
}

}  // namespace
}  // namespace npusim
