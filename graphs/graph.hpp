// The operator graph: named tensors (shape, dtype) and ops that read and write them, in an order
// where every op comes after the ops producing its inputs. A graph comes from a model preset
// (models.hpp) or from a graph YAML file (load_graph_file; the format is in graphs/README.md).
//
// Op kinds and their ports (inputs / outputs by role; `?` marks optional ports):
//   gemm           a [M, K], b [K, N]                        -> c [M, N]
//   gating_score   logits [T, E]                             -> scores [T, E] fp32     score
//   topk           scores [T, E], bias? [E]                  -> ids [T, K] int32, weights [T, K] fp32
//                                                               groups, topk_groups, group_select
//   hash_topk      scores [T, E], input_ids [T], tid2eid [V, K] -> ids, weights
//   normalize      weights [T, K]                            -> weights [T, K]          renormalize, eps, route_scale
//   routing_sort   ids [T, K]                                -> row_idx [T*K] int32, expert_tokens [E] int32
//   permute        x [T, D], row_idx [T*K], weights? [T, K]  -> rows [T*K, D], row_weights? [T*K]
//   grouped_gemm   a [R, K], b [E, K, N], expert_tokens [E]  -> c [R, N]
//   swiglu         h [R, 2I], row_weights? [R]               -> a [R, I]                clamp, halves
//   combine        y [T*K, D], row_idx [T*K], weights? [T, K], residual? [T, D], shared? [T, D] -> out [T, D]
//   flash_attention   q [T, H*dqk], k [S, Hkv*dqk], v? [S, Hkv*dv], sinks? [H] -> out [T, H*dv], lse? [T, H]
//                     batch, heads_kv, causal, scale (0: dqk^-0.5), lse_base (e | 2); no v: K = V (the first dv columns)
//   lightning_indexer q [T, HI*DI], k [S, DI], q_scale [T, HI], k_scale [S], w [T, HI], after?
//                                                           -> scores [T, S/batch]
//                     batch, context, ratio (keys are compressed entries of `ratio` tokens)
//   index_topk        scores [T, S]                         -> indices [T, K] int32, values? [T, K]
//   sparse_attention  q [T, H*d], kv [R, d], idx [T, n], kv1? [R1, d], idx1? [T, n1], sinks? [H],
//                     after? (orders it after the op writing that tensor) -> out [T, H*dv], lse? [T, H]
//                     heads, scale, lse_base (e | 2), batch, context; window: kv is each sequence's sliding window of
//                     this many tokens (a ring in decode) and idx is computed from the positions;
//                     ratio: kv1 holds entries of `ratio` tokens; all_visible: idx1 takes every
//                     entry a query sees (computed); otherwise an idx comes from the op producing it
//                     (per-sequence positions) or, until an indexer runs, is drawn (`indices:`)
//   compressor        x [T, D], w_kv [D, c*d], w_gate [D, c*d], ape [m, c*d], norm [d], kv_state and
//                     score_state [B*c*m, c*d] fp32, rope_cos? rope_sin? [n, 64] fp32
//                     -> entries? [n, d], kv_state, score_state      batch, context, ratio, quant, rope_dims
// The topk-style ops' weights are the gathered unbiased scores; `normalize` turns them into
// routing weights. Which kernels run these ops is the fusion plan's business (plan.hpp).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/errors.hpp"
#include "sim/types.hpp"

namespace npusim::graphs {

struct TensorDesc {
  std::string name;
  std::vector<int64_t> shape;
  sim::DType dtype = sim::DType::Bf16;
  SourceLoc loc;  // where it was declared (a preset: the model name)
  int64_t elements() const;
};

struct OpNode {
  std::string name;
  std::string kind;
  std::map<std::string, std::string> inputs, outputs;  // role -> tensor name
  nlohmann::json attrs = nlohmann::json::object();     // checked against the kind's attribute list
  SourceLoc loc;
};

// The routing the MoE ops see: how tokens pick experts, when not taken from the gate's outputs.
struct RoutingChoice {
  std::string distribution = "from_gate";  // from_gate | uniform | zipf | hot_expert
  double s = 1.2, hot_fraction = 0.5;
  uint64_t seed = 1;
};

struct Graph {
  std::string name;   // e.g. "deepseek-v4-flash moe decode T=60"
  std::string model;  // preset name or graph file
  std::vector<TensorDesc> tensors;
  std::vector<OpNode> ops;
  std::vector<std::string> notes;  // confidence notes of the shapes (KERNELS.md 6)

  const TensorDesc& tensor(const std::string& name) const;
  bool has_tensor(const std::string& name) const;
  // The op writing `tensor`, or -1 for a graph input (weights, activations coming in).
  int producer(const std::string& tensor) const;
};

struct PortSpec {
  std::string role;
  bool optional = false;
};
struct AttrSpec {
  std::string name;
  std::string type;  // int | double | bool | one of "a|b|c"
  nlohmann::json default_value;
};
struct OpKindSpec {
  std::string kind;
  std::string description;
  std::vector<PortSpec> inputs, outputs;
  std::vector<AttrSpec> attrs;
};
const std::vector<OpKindSpec>& op_kinds();
const OpKindSpec& op_kind(const std::string& kind);  // InternalError when unknown

// Checks the graph: known kinds, ports filled, tensors declared, every input produced earlier or a
// graph input, each tensor written once, and that shapes chain as the kinds above require. A
// mismatch is a ConfigError at the op's location naming the ports and shapes.
void check_graph(const Graph& g);

// Loads a graph YAML file. `tokens` binds the dimension named `tokens` (the workload's token count).
Graph load_graph_file(const std::string& file, int64_t tokens);

// Text listing: tensors with shapes, ops with their ports.
std::string format_graph(const Graph& g);

std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace npusim::graphs
