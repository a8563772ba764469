// The lse base is a parameter of the attention kernels (KERNELS.md 3.3 item 5): base 2 reports
// log2-sum-exp2 = the natural lse x log2(e). Flash and sparse attention are validated with it on both
// data paths, split (the partials merge in the natural base) and not.
#include <gtest/gtest.h>

#include "kernels/flash_attention.hpp"
#include "kernels/sparse_attention.hpp"
#include "test_support.hpp"

namespace npusim {
namespace {

app::RunOutput run_kernel(const std::string& hw, std::unique_ptr<kernels::Kernel> k) {
  app::LoadedRun run;
  run.config_file = "lse_base_test";
  run.hw = test::preset(hw);
  run.kernel = std::move(k);
  run.inputs = {"normal", 1.0, 5};
  return app::execute_functional(run);
}

bool lse_passed(const app::RunOutput& out) {
  for (const auto& o : out.kernel.validation->outputs)
    if (o.name == "lse") return o.report.passed;
  return false;
}

TEST(LseBase, FlashAttentionInBaseTwoValidatesSplitOrNot) {
  for (const char* hw : {"ascend910c", "ascend950pr"})
    for (int split : {1, 3}) {
      kernels::FlashAttentionShape s;
      s.batch = 2, s.q_len = 1, s.kv_len = 300, s.heads_q = 16, s.heads_kv = 1, s.d_qk = 80, s.d_v = 64;
      s.causal = true, s.sink = true, s.kv_shared = true, s.lse_base2 = true;
      auto t = kernels::default_flash_attention_tiling(s, test::preset(hw));
      t.split_kv = split;
      auto out = run_kernel(hw, std::make_unique<kernels::FlashAttentionKernel>(s, t, false));
      ASSERT_TRUE(out.kernel.validation);
      EXPECT_TRUE(out.kernel.validation->passed) << hw << " split " << split;
    }
}

TEST(LseBase, SparseAttentionInBaseTwoValidates) {
  for (const char* hw : {"ascend910c", "ascend950pr"}) {
    kernels::SparseAttentionShape s;
    s.tokens = 3, s.heads = 16, s.d_qk = 80, s.d_v = 64, s.sink = true, s.lse_base2 = true;
    kernels::SparseKvSource src;
    src.rows = 400, src.per_query = 40;
    for (int t = 0; t < 3; ++t)
      for (int j = 0; j < 40; ++j) src.idx.push_back(j < 35 ? (7 * j + 13 * t) % 400 : -1);
    s.sources.push_back(src);
    auto out = run_kernel(hw, std::make_unique<kernels::SparseAttentionKernel>(s, kernels::default_sparse_attention_tiling(s, test::preset(hw)), true));
    ASSERT_TRUE(out.kernel.validation);
    EXPECT_TRUE(out.kernel.validation->passed) << hw;
    EXPECT_TRUE(lse_passed(out)) << hw;
  }
}

}  // namespace
}  // namespace npusim
