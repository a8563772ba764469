// Fusion plans and graph execution.
//
// A fusion rule names a chain of op kinds, each consuming an output of the one before, that one
// fused kernel runs. A plan partitions the graph's ops into kernel groups: `none` gives one kernel
// per op, `default` applies every rule, a list applies the rules it names. Execution lowers each
// group's kernel in op order and simulates it; a kernel whose shape depends on data (rows per
// expert, the gathers of a permutation) is lowered once the data is known, as the real kernel's
// scalar unit would read it. Functional runs also carry every tensor's values from kernel to
// kernel and validate each kernel against its CPU reference on the inputs it actually got.
//
// Timing of the graph: kernels run one after another on one stream, each with the hardware's
// launch overhead; the report gives that serial total and the critical path through the kernel
// DAG (the time with every independent branch, such as the shared expert, fully overlapped).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "graphs/graph.hpp"
#include "kernels/indices.hpp"
#include "kernels/kernel.hpp"
#include "kernels/tensor_io.hpp"
#include "kernels/validation.hpp"
#include "sim/engine.hpp"

namespace npusim::graphs {

struct FusionRule {
  std::string name;
  std::vector<std::vector<std::string>> chain;  // op kinds per position (alternatives)
  std::string kernel;                           // the kernel template (workload.op) it becomes
  std::string description;
};
const std::vector<FusionRule>& fusion_rules();

// The kernel template an unfused op of this kind runs as.
std::string kernel_of_op(const std::string& kind);

struct KernelGroup {
  std::string name;       // the rule's name, or the op's name when unfused
  std::string rule;       // "" for a single unfused op
  std::vector<int> ops;   // indices into Graph::ops, in order
};

struct FusionPlan {
  std::string label;  // none | default | the rules listed
  std::vector<KernelGroup> groups;
};

// `choice`: "none", "default" or rule names; an unknown rule is a ConfigError at `where`.
FusionPlan plan_fusion(const Graph& g, const std::vector<std::string>& choice, const SourceLoc& where);

struct GraphRunOptions {
  RoutingChoice routing;
  kernels::IndexSpec indices;  // sparse attention's index sets: drawn, or distribution from_indexer
  bool functional = false;
  kernels::InputSpec inputs;  // functional runs: the distribution of activations
  sim::SimOptions sim;
  // Each kernel's estimated instruction count must stay at or below this (0: no limit); checked as
  // soon as the kernel is built, before it is lowered. The message names how to raise it.
  double max_instructions = 0;
  std::string max_instructions_hint;
  // A `tiling:` section to apply over a kernel group's default tiling (tuned tilings), asked with
  // the group's name and its kernel as built; nullopt keeps the default.
  std::function<std::optional<nlohmann::json>(const std::string& group, const kernels::Kernel& k)> tiling_for;
};

struct KernelRun {
  KernelGroup group;
  std::unique_ptr<kernels::Kernel> kernel;
  sim::SimResult sim;
  double time_us = 0;                           // the kernel alone (cycles at the clock)
  std::vector<int> after;                       // kernels it waits for (indices into GraphRun::kernels)
  std::vector<kernels::OutputValidation> validation;  // functional runs
};

struct GraphRun {
  std::vector<KernelRun> kernels;
  std::vector<int64_t> tokens_per_expert;  // of the routing the expert kernels ran
  double imbalance = 0;                    // max / mean
  std::string routing_source;              // from_gate or the distribution drawn
  std::string index_source;                // sparse attention: from_indexer or the distribution drawn
  double launch_us = 0;                    // per kernel
  double serial_us = 0;                    // sum of kernel times and launches
  double critical_path_us = 0;
  std::vector<int> critical_path;          // kernel indices along it
  // Functional runs: the values of every tensor a kernel wrote (not those inside a fused kernel).
  std::map<std::string, std::vector<double>> values;
  bool passed() const;                     // every kernel's outputs validated (functional runs)
};

// Lowers and simulates every kernel of the plan in order (functionally too when asked). A kernel
// that cannot run on `hw` is a ConfigError naming its group.
GraphRun run_graph(const Graph& g, const FusionPlan& plan, const sim::HardwareSpec& hw, const GraphRunOptions& opt);

// Text listing of the plan: each kernel group, the kernel it becomes, the ops it covers.
std::string format_plan(const Graph& g, const FusionPlan& plan);

}  // namespace npusim::graphs
