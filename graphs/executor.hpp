// The graph executor's internals, shared by plan.cpp (the run loop, inputs, scheduling) and the
// builders that turn op groups into kernels: moe_kernels.cpp (GEMM, gating, routing, expert
// kernels) and attention_kernels.cpp (flash, indexer, top-k, sparse attention, compressor).
// Not part of the public API (plan.hpp is).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "graphs/plan.hpp"
#include "kernels/sparse_attention.hpp"

namespace npusim::graphs::detail {

using Values = std::map<std::string, std::vector<double>>;

// Where each kernel tensor's values live in the graph: a tensor and an element offset into it
// (a grouped GEMM's per-expert weights are slices of one [E, K, N] tensor). An empty name is
// a tensor the kernel owns (a workspace).
struct Binding {
  std::string tensor;
  int64_t offset = 0;
};

struct Built {
  std::unique_ptr<kernels::Kernel> kernel;
  std::vector<Binding> bind;
  // Input tensors (kernel names) whose functional values the kernel draws itself (make_input):
  // quantized operands with their scales, index lists in the kernel's own row numbering.
  std::vector<std::string> own_inputs;
};

class Executor {
 public:
  Executor(const Graph& g, const sim::HardwareSpec& hw, const GraphRunOptions& opt) : g_(g), hw_(hw), opt_(opt) {}

  GraphRun run(const FusionPlan& plan);

 private:
  const TensorDesc& port(const OpNode& op, const std::string& role, bool output = false) const {
    const auto& ports = output ? op.outputs : op.inputs;
    return g_.tensor(ports.at(role));
  }
  bool has(const OpNode& op, const std::string& role) const { return op.inputs.count(role) > 0; }
  Built build(const KernelGroup& grp);
  Built build_single(const OpNode& op);
  Built build_gating(const std::vector<const OpNode*>& ops);
  Built build_init_routing(const std::vector<const OpNode*>& ops);
  Built build_gmm_swiglu(const OpNode& gmm, const OpNode& act);
  Built build_gmm_finalize(const OpNode& gmm, const OpNode& combine);
  void bind_expert_weights(Built& b, const TensorDesc& w) const;
  Built build_flash(const OpNode& op);
  Built build_indexer(const OpNode& op, const OpNode* topk);
  Built build_topk(const OpNode& op);
  Built build_sparse(const OpNode& op);
  Built build_compressor(const OpNode& op);
  std::vector<int64_t> visible_entries(const OpNode& op, int64_t rows_per_seq, int64_t ratio) const;
  kernels::SparseKvSource sparse_source(const OpNode& op, const std::string& kv_role, const std::string& idx_role);
  const std::vector<double>& input_values(const std::string& tensor);
  const std::vector<int32_t>& routing();  // the expert ids the routed kernels are lowered for
  void generate_inputs();
  std::vector<double> graph_input(const TensorDesc& t, size_t index) const;
  std::vector<int32_t> reference_picks() const;
  void simulate_all(std::vector<KernelRun>& kernels) const;

  const Graph& g_;
  const sim::HardwareSpec& hw_;
  const GraphRunOptions& opt_;
  Values values_;
  std::vector<int32_t> ids_;
  std::string ids_tensor_;
  int64_t experts_ = 0, topk_ = 0;
  std::string index_source_;  // where sparse attention's index lists came from
};

// Binds a kernel's tensors to graph tensors by the kernel's tensor names.
void bind_by_name(Built& b, const std::map<std::string, std::string>& names);

}  // namespace npusim::graphs::detail
