// One program, timing and numbers: functional runs of the GEMM and vector templates checked
// against the CPU reference, and deliberately broken programs that the checks must catch.
#include <gtest/gtest.h>

#include <fstream>

#include "kernels/gemm.hpp"
#include "test_support.hpp"

namespace npusim {
namespace {

app::LoadedRun load(const std::string& yaml) {
  return app::load_run(test::write_temp_config("validation", yaml));
}

std::string gemm_yaml(int m, int n, int k, const std::string& in, const std::string& out, const std::string& a,
                      const std::string& b, const std::string& tiling = "", const std::string& hw = "ascend910b2") {
  return "hardware: " + hw + "\nworkload: {op: gemm, m: " + std::to_string(m) + ", n: " + std::to_string(n) +
         ", k: " + std::to_string(k) + ", dtype: " + in + ", out_dtype: " + out + ", layout: {a: " + a + ", b: " + b +
         "}}\n" + (tiling.empty() ? "" : "tiling: " + tiling + "\n") + "inputs: {distribution: normal, seed: 7}\n";
}

void expect_valid(const app::RunOutput& out, const std::string& what) {
  ASSERT_TRUE(out.kernel.validation.has_value()) << what;
  const auto& v = *out.kernel.validation;
  std::string why;
  for (const auto& f : v.failures) why += "\n  " + f;
  EXPECT_TRUE(v.passed) << what << why;
  EXPECT_GT(out.kernel.cycles, 0u) << what;
}

struct DtypePair {
  const char *in, *out;
};

TEST(GemmValidation, EveryDtypePairPasses) {
  for (DtypePair p : {DtypePair{"fp16", "fp16"}, {"fp16", "fp32"}, {"fp16", "bf16"}, {"bf16", "bf16"}, {"bf16", "fp32"},
                      {"fp32", "fp32"}, {"int8", "int32"}, {"int8", "fp16"}}) {
    auto out = app::execute_functional(load(gemm_yaml(96, 80, 200, p.in, p.out, "row_major", "col_major")));
    expect_valid(out, std::string(p.in) + "->" + p.out);
  }
}

TEST(GemmValidation, ShapesWithTailsTilingsAndEveryLayoutPass) {
  struct Shape {
    int m, n, k;
  };
  const std::vector<std::string> tilings{"", "{l1: [64, 64, 64], l0: [32, 32, 32], stages: 3}",
                                         "{l1: [128, 128, 128], l0: [64, 128, 32], swizzle: {offset: 2, direction: 1}}",
                                         "{l1: [16, 256, 256], l0: [16, 128, 64], stages: 1, cores: 3}"};
  int runs = 0;
  for (Shape s : {Shape{1, 1, 1}, Shape{17, 33, 65}, Shape{100, 70, 300}, Shape{257, 129, 1000}})
    for (const auto& t : tilings)
      for (const char* a : {"row_major", "col_major"})
        for (const char* b : {"row_major", "col_major", "nz"}) {
          std::string what = std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k) + " a=" + a +
                             " b=" + b + " tiling=" + t;
          expect_valid(app::execute_functional(load(gemm_yaml(s.m, s.n, s.k, "fp16", "fp16", a, b, t))), what);
          ++runs;
        }
  EXPECT_EQ(runs, 96);
}

TEST(GemmValidation, RunsOn950) {
  expect_valid(app::execute_functional(load(gemm_yaml(200, 300, 400, "bf16", "fp32", "row_major", "nz", "", "ascend950pr"))),
               "950pr");
}

TEST(GemmValidation, TieInputsAndOnesPass) {
  for (const char* dist : {"ties", "ones", "uniform"}) {
    std::string y = gemm_yaml(64, 48, 512, "fp16", "fp32", "row_major", "row_major");
    y.replace(y.find("distribution: normal"), 20, std::string("distribution: ") + dist);
    expect_valid(app::execute_functional(load(y)), dist);
  }
}

bool caught(const app::LoadedRun& run, const sim::Program& broken);
void erase_at(sim::CoreProgram& c, size_t i);

std::string grouped_yaml(const std::string& rows_or_routing, const std::string& dtype, const std::string& b_layout,
                         const std::string& tiling = "") {
  return "hardware: ascend910b2\nworkload: {op: grouped_gemm, n: 96, k: 200, dtype: " + dtype + ", layout: {b: " + b_layout +
         "}, " + rows_or_routing + "}\n" + (tiling.empty() ? "" : "tiling: " + tiling + "\n") +
         "inputs: {distribution: normal, seed: 3}\n";
}

TEST(GroupedGemmValidation, EmptyExpertsTailsAndOneExpertHoldingAllRowsPass) {
  for (const char* rows : {"group_rows: [0, 37, 0, 100, 1, 0]", "group_rows: [0, 0, 300, 0]", "group_rows: [16, 16, 16]",
                           "group_rows: [0, 0, 0]"})
    for (const char* b : {"row_major", "col_major", "nz"})
      expect_valid(app::execute_functional(load(grouped_yaml(rows, "bf16", b))), std::string(rows) + " b=" + b);
  expect_valid(app::execute_functional(load(grouped_yaml("group_rows: [5, 70, 0, 33]", "fp16", "nz",
                                                         "{l1: [32, 64, 64], l0: [32, 32, 32], stages: 3}"))),
               "small tiles");
  expect_valid(app::execute_functional(load(grouped_yaml("group_rows: [9, 0, 40]", "int8", "row_major"))), "int8");
}

TEST(GroupedGemmValidation, SeededRoutingPasses) {
  for (const char* d : {"uniform", "zipf", "hot_expert"})
    expect_valid(app::execute_functional(load(grouped_yaml(
                     std::string("routing: {experts: 8, tokens: 40, topk: 3, distribution: ") + d + ", seed: 9}", "fp16", "nz"))),
                 d);
}

TEST(SwigluValidation, ClampHalfOrdersRowWeightsAndDtypesPass) {
  for (const char* w : {"{op: swiglu, rows: 37, inter: 256, dtype: bf16}",
                        "{op: swiglu, rows: 64, inter: 2048, dtype: bf16, clamp: 10.0, row_weights: true}",
                        "{op: swiglu, rows: 5, inter: 128, dtype: fp16, halves: up_first, out_dtype: fp32}",
                        "{op: swiglu, rows: 33, inter: 512, dtype: fp32, clamp: 0.5}",
                        "{op: swiglu, rows: 100, inter: 64, dtype: bf16, clamp: 1.0, row_weights: true, halves: up_first}"})
    expect_valid(app::execute_functional(load(std::string("hardware: ascend910b2\nworkload: ") + w +
                                              "\ninputs: {distribution: normal, scale: 3.0, seed: 2}\n")),
                 w);
}

TEST(SwigluValidation, AKernelThatForgetsTheClampIsCaught) {
  auto run = load("hardware: ascend910b2\nworkload: {op: swiglu, rows: 16, inter: 256, dtype: bf16, clamp: 2.0}\n"
                  "inputs: {distribution: normal, scale: 8.0, seed: 4}\n");
  sim::Program p = run.kernel->lower(run.hw, true);
  for (auto& c : p.cores)
    for (size_t i = c.code.size(); i-- > 0;)
      if (c.code[i].op == sim::Op::Vector && (c.code[i].vop == sim::VecOp::Mins || c.code[i].vop == sim::VecOp::Maxs))
        erase_at(c, i);
  EXPECT_TRUE(caught(run, p));
}

TEST(CombineValidation, WeightedPlainSharedAndResidualVariantsPass) {
  for (const char* w :
       {"{op: combine, hidden: 256, dtype: bf16, routing: {experts: 8, tokens: 12, topk: 3, seed: 4}}",
        "{op: combine, hidden: 7168, dtype: bf16, shared: true, residual: true, routing: {experts: 256, tokens: 20, topk: 8, "
        "distribution: zipf, seed: 4}}",
        "{op: combine, hidden: 4096, dtype: bf16, weighted: false, shared: true, routing: {experts: 64, tokens: 9, topk: 6, seed: 1}}",
        "{op: combine, hidden: 96, dtype: fp16, residual: true, routing: {experts: 4, tokens: 7, topk: 4, seed: 2}}",
        "{op: combine, hidden: 512, dtype: fp32, routing: {experts: 16, tokens: 30, topk: 1, distribution: hot_expert, "
        "hot_fraction: 1.0, seed: 2}}"})
    expect_valid(app::execute_functional(load(std::string("hardware: ascend910b2\nworkload: ") + w + "\n")), w);
}

TEST(CombineValidation, GatheringAWrongRowIsCaught) {
  auto run = load("hardware: ascend910b2\nworkload: {op: combine, hidden: 256, dtype: bf16, routing: {experts: 8, tokens: 12, topk: 3, seed: 4}}\n");
  sim::Program p = run.kernel->lower(run.hw, true);
  // Point core 0's first gather at the next row of Y.
  for (size_t i = 0; i < p.cores[0].code.size(); ++i)
    if (p.cores[0].code[i].op == sim::Op::Copy && p.cores[0].code[i].path == sim::Path::GmToUb) {
      p.cores[0].code[i].gm.addr += 256 * 2;
      p.cores[0].operands[i].src.offset += 256 * 2;
      break;
    }
  EXPECT_TRUE(caught(run, p));
}

TEST(VectorValidation, EveryOpPasses) {
  for (const char* y : {"{op: add, shape: [1000, 37], dtype: fp16}", "{op: add, shape: [4097], dtype: fp32}",
                        "{op: mul, shape: [333, 77], dtype: fp16}", "{op: exp, shape: [5000], dtype: fp32}",
                        "{op: exp, shape: [5000], dtype: fp16}", "{op: relu, shape: [64, 65], dtype: fp16}",
                        "{op: cast, shape: [9999], dtype: fp32, out_dtype: fp16}",
                        "{op: cast, shape: [2048], dtype: fp16, out_dtype: fp32}",
                        "{op: cast, shape: [2048], dtype: fp32, out_dtype: bf16}"}) {
    auto out = app::execute_functional(
        load(std::string("hardware: ascend910b2\nworkload: ") + y + "\ntiling: {tile_elems: 1024, buffers: 2, cores: 8}\n"));
    expect_valid(out, y);
  }
}

TEST(Functional, SameSeedGivesTheSameBytes) {
  auto a = app::execute_functional(load(gemm_yaml(70, 90, 130, "bf16", "bf16", "row_major", "nz")));
  auto b = app::execute_functional(load(gemm_yaml(70, 90, 130, "bf16", "bf16", "row_major", "nz")));
  EXPECT_EQ(a.kernel.validation->max_abs_err, b.kernel.validation->max_abs_err);
  EXPECT_EQ(a.kernel.cycles, b.kernel.cycles);
}

TEST(Functional, TimingIsTheSameWithAndWithoutNumbers) {
  auto run = load(gemm_yaml(300, 200, 500, "fp16", "fp16", "row_major", "col_major"));
  EXPECT_EQ(app::execute(run).kernel.cycles, app::execute_functional(run).kernel.cycles);
}

// ---- Mutation tests: broken programs must fail validation. ----

app::LoadedRun mutation_target() {
  return load(gemm_yaml(200, 160, 768, "fp16", "fp16", "row_major", "col_major",
                        "{l1: [128, 128, 256], l0: [128, 128, 64], stages: 2}"));
}

bool caught(const app::LoadedRun& run, const sim::Program& broken) {
  try {
    auto out = app::execute_functional(run, broken);
    return !out.kernel.validation->passed;
  } catch (const SimError&) {
    return true;  // a deadlock or out-of-range operand is caught too
  }
}

void erase_at(sim::CoreProgram& c, size_t i) {
  c.code.erase(c.code.begin() + static_cast<long>(i));
  c.operands.erase(c.operands.begin() + static_cast<long>(i));
}

TEST(Mutation, TheUnbrokenProgramPasses) {
  auto run = mutation_target();
  EXPECT_FALSE(caught(run, run.kernel->lower(run.hw, true)));
}

TEST(Mutation, SkippingOneKTileIsCaught) {
  auto run = mutation_target();
  sim::Program p = run.kernel->lower(run.hw, true);
  // Drop the MMADs of the second L1 K step of core 0's first block (L1 K 256 = 4 MMADs of K 64);
  // their set/wait pairs stay, so the flags remain balanced and only the arithmetic is missing.
  auto& c = p.cores[0];
  std::vector<size_t> mmads;
  for (size_t i = 0; i < c.code.size(); ++i)
    if (c.code[i].op == sim::Op::Mmad) mmads.push_back(i);
  ASSERT_GE(mmads.size(), 8u);
  for (size_t j = 8; j-- > 4;) erase_at(c, mmads[j]);
  EXPECT_TRUE(caught(run, p));
}

TEST(Mutation, RemovingAFlagWaitIsCaught) {
  auto run = mutation_target();
  sim::Program p = run.kernel->lower(run.hw, true);
  // FIXPIPE stops waiting for the cube to finish a block: it drains L0C while the accumulation is
  // still running. (Dropping a wait between MTE2, MTE1 and the cube can be harmless here: the
  // double-buffered schedule leaves enough slack that the producer is done anyway, as on the chip.)
  auto& c = p.cores[0];
  bool removed = false;
  for (size_t i = 0; i < c.code.size() && !removed; ++i)
    if (c.code[i].op == sim::Op::WaitFlag && c.code[i].pipe == sim::Pipe::Fixpipe && c.code[i].other == sim::Pipe::M) {
      erase_at(c, i);
      removed = true;
    }
  ASSERT_TRUE(removed);
  EXPECT_TRUE(caught(run, p));
}

TEST(Mutation, AWrongOutputCastIsCaught) {
  auto run = mutation_target();
  sim::Program p = run.kernel->lower(run.hw, true);
  for (auto& c : p.cores)
    for (size_t i = 0; i < c.code.size(); ++i)
      if (c.code[i].op == sim::Op::Copy && c.code[i].path == sim::Path::L0CToGmNz2Nd) c.operands[i].dst.dtype = sim::DType::Bf16;
  EXPECT_TRUE(caught(run, p));
}

TEST(Mutation, AnOffByOneTailIsCaught) {
  auto run = mutation_target();
  sim::Program p = run.kernel->lower(run.hw, true);
  // The N tail block (160 = 128 + 32) writes one column short.
  bool changed = false;
  for (auto& c : p.cores)
    for (size_t i = 0; i < c.code.size(); ++i)
      if (c.code[i].op == sim::Op::Copy && c.code[i].path == sim::Path::L0CToGmNz2Nd && c.operands[i].cols == 32) {
        c.operands[i].cols = 31;
        changed = true;
      }
  ASSERT_TRUE(changed);
  EXPECT_TRUE(caught(run, p));
}

TEST(FunctionalLimits, ARunThatWouldNotFitInMemoryIsRefusedWithTheSizeItNeeds) {
  auto run = load(gemm_yaml(16384, 16384, 16384, "fp16", "fp16", "row_major", "col_major"));
  setenv("NPUSIM_MAX_FUNCTIONAL_BYTES", "1000000000", 1);
  try {
    app::execute_functional(run);
    ADD_FAILURE() << "expected a refusal";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("needs about"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("GiB"), std::string::npos) << e.what();
  }
  unsetenv("NPUSIM_MAX_FUNCTIONAL_BYTES");
}

// The instruction limit (README "Limits") refuses a single kernel when the config is loaded and
// each kernel of a model block before it is lowered; both messages say how to raise it.
TEST(InstructionLimit, RefusedBeforeSimulationNamingTheLimitAndHowToRaiseIt) {
  const auto expect_refusal = [](auto&& f, const std::string& what) {
    try {
      f();
      ADD_FAILURE() << what << ": expected a refusal";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("above the limit of 1e+03"), std::string::npos) << what << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find("NPUSIM_MAX_INSTRUCTIONS"), std::string::npos) << what << ": " << e.what();
    }
  };
  setenv("NPUSIM_MAX_INSTRUCTIONS", "1000", 1);
  expect_refusal([] { (void)load(gemm_yaml(1024, 1024, 1024, "fp16", "fp16", "row_major", "row_major")); }, "gemm");
  const std::string moe = std::string(NPUSIM_SOURCE_DIR) + "/configs/workloads/v4_flash_moe_decode.yaml";
  const app::LoadedRun run = app::load_run(moe);  // a model block's kernels are built when it runs
  expect_refusal([&] { (void)app::execute_graph(run, /*functional=*/false); }, "moe block");
  unsetenv("NPUSIM_MAX_INSTRUCTIONS");
}

}  // namespace
}  // namespace npusim
