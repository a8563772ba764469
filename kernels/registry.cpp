#include <fmt/format.h>

#include "common/text.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/flash_attention.hpp"
#include "kernels/gemm.hpp"
#include "kernels/grouped_gemm.hpp"
#include "kernels/grouped_gemm_finalize.hpp"
#include "kernels/grouped_gemm_swiglu.hpp"
#include "kernels/swiglu.hpp"
#include "kernels/topk.hpp"
#include "kernels/combine.hpp"
#include "kernels/compressor.hpp"
#include "kernels/gating.hpp"
#include "kernels/init_routing.hpp"
#include "kernels/lightning_indexer.hpp"
#include "kernels/permute.hpp"
#include "kernels/sparse_attention.hpp"

namespace npusim::kernels {

const std::vector<KernelEntry>& kernel_registry() {
  static const std::vector<KernelEntry> kEntries{
      {"gemm", "C = A x B on the cube cores (tiling: l1, l0, swizzle, stages, cores)", make_gemm},
      {"grouped_gemm", "per-group C = A x B_g over rows per expert (group_rows or a seeded routing)", make_grouped_gemm},
      {"grouped_gemm_swiglu", "GMM1 + SwiGLU fused: cube blocks of W13 handed to the AIVs through a GM workspace (2201) or L0C->UB (3510)", make_grouped_gemm_swiglu},
      {"grouped_gemm_finalize", "GMM2 + finalize fused: expert rows scaled and atomically added into residual + shared token rows", make_grouped_gemm_finalize},
      {"swiglu", "out = silu(g) * u over [g | u] rows on the AIVs (clamp, row weights; tiling: rows_per_tile, buffers, cores)", make_swiglu},
      {"combine", "MoE finalize: residual + shared + sum of (weighted) expert rows gathered by the routing", make_combine},
      {"gating", "MoE gate on the AIVs: scores, bias for choosing, group-limited stable top-k, normalize, route scale", make_gating},
      {"init_routing", "MoE dispatch: stable sort by expert, expanded row index, per-expert counts, capacity modes, row gather", make_init_routing},
      {"permute", "MoE permute: token rows (and weights) gathered into expert order by the routing", make_permute},
      {"flash_attention", "dense flash attention (MHA / GQA / MQA, causal, sinks, K = V latent): C1 -> V1 -> C2 cube/vector pipeline, split-KV decode", make_flash_attention},
      {"lightning_indexer", "DSA / V4 CSA index scores sum_h w ReLU(q.k) x scales (fp8 on 950, bf16-held fp8 on 910), causal or compressed visibility, optional fused running top-k", make_lightning_indexer},
      {"topk", "row top-k on the AIVs: sort32/mrgsort running top-k, two stages for long rows, -1 padding", make_topk},
      {"sparse_attention", "sparse MLA attention (MQA, K = V) over index sets from one or two KV sources (V3.2 DSA, V4 CSA / HCA / window), sink, split-KV merge, gathers on AIC or AIV", make_sparse_attention},
      {"compressor", "DeepSeek-V4 KV compressor (CSA m = 4 overlapped / HCA m = 128): x[Wkv|Wgate] GEMM with per-channel softmax pooling, RMSNorm, RoPE, optional FP8 fake quant; fp32 state in place", make_compressor},
      {"add", "out = x + y on the AIVs (tiling: tile_elems, buffers, cores)", make_elementwise},
      {"mul", "out = x * y on the AIVs", make_elementwise},
      {"exp", "out = exp(x) on the AIVs", make_elementwise},
      {"relu", "out = max(x, 0) on the AIVs", make_elementwise},
      {"cast", "out = cast(x) to out_dtype on the AIVs", make_elementwise},
  };
  return kEntries;
}

std::unique_ptr<Kernel> make_kernel(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                    const sim::HardwareSpec& hw) {
  YamlNode op = workload.at("op");
  std::vector<std::string> names;
  for (const auto& e : kernel_registry()) {
    if (e.op == op.as_string()) return e.make(workload, tiling, hw);
    names.push_back(e.op);
  }
  op.as_enum(names);  // throws with the nearest name and the list
  return nullptr;
}

}  // namespace npusim::kernels
