#include "graphs/plan.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <cmath>
#include <map>
#include <set>

#include "common/text.hpp"
#include "graphs/executor.hpp"
#include "kernels/rng.hpp"
#include "kernels/routing.hpp"
#include "kernels/tensor_io.hpp"
#include "sim/functional.hpp"

namespace npusim::graphs {

const std::vector<FusionRule>& fusion_rules() {
  static const std::vector<FusionRule> kRules{
      {"gating", {{"gating_score"}, {"topk", "hash_topk"}, {"normalize"}}, "gating",
       "scores, top-k (or hash) and normalization in one AIV kernel (CANN MoeGatingTopK): the scores and the raw "
       "weights stay in UB"},
      {"init_routing", {{"routing_sort"}, {"permute"}}, "init_routing",
       "sort by expert, expanded row index, tokens per expert and the row gather in one AIV kernel (CANN "
       "MoeInitRoutingV2); applies when the permute carries no weights"},
      {"gmm1_swiglu", {{"grouped_gemm"}, {"swiglu"}}, "grouped_gemm_swiglu",
       "GMM1 on the cube feeding SwiGLU on the AIVs block by block (through a GM workspace on 2201, L0C->UB on "
       "3510): H never goes to HBM as a tensor"},
      {"indexer_topk", {{"lightning_indexer"}, {"index_topk"}}, "lightning_indexer",
       "the index scores and their top-k in one kernel (CANN LightningIndexer): the [T, S] score matrix never "
       "goes to HBM, a running top-k per key block keeps only the candidates"},
      {"gmm2_finalize", {{"grouped_gemm"}, {"combine"}}, "grouped_gemm_finalize",
       "GMM2 on the cube, each expert row scaled and atomically added into residual + shared token rows by the "
       "AIVs (CANN GroupedMatmulFinalizeRouting): Y never goes to HBM as a tensor"},
  };
  return kRules;
}

namespace {

// Does op `next` read an output of op `prev`?
bool feeds(const OpNode& prev, const OpNode& next) {
  for (const auto& [r, out] : prev.outputs)
    for (const auto& [r2, in] : next.inputs)
      if (out == in) return true;
  return false;
}

bool kind_in(const std::string& kind, const std::vector<std::string>& alts) {
  return std::find(alts.begin(), alts.end(), kind) != alts.end();
}

}  // namespace

FusionPlan plan_fusion(const Graph& g, const std::vector<std::string>& choice, const SourceLoc& where) {
  FusionPlan plan;
  std::vector<const FusionRule*> rules;
  std::vector<std::string> names;
  for (const auto& r : fusion_rules()) names.push_back(r.name);
  if (choice.size() == 1 && choice[0] == "none") {
    plan.label = "none";
  } else if (choice.size() == 1 && choice[0] == "default") {
    plan.label = "default";
    for (const auto& r : fusion_rules()) rules.push_back(&r);
  } else {
    plan.label = fmt::format("{}", fmt::join(choice, "+"));
    for (const auto& c : choice) {
      auto it = std::find(names.begin(), names.end(), c);
      if (it == names.end())
        throw ConfigError(where, fmt::format("unknown fusion group '{}'{} (groups: {}; or none / default)", c,
                                             did_you_mean(c, names), names.empty() ? "none yet" : fmt::format("{}", fmt::join(names, ", "))));
      rules.push_back(&fusion_rules()[it - names.begin()]);
    }
  }
  std::vector<bool> taken(g.ops.size(), false);
  for (size_t i = 0; i < g.ops.size(); ++i) {
    if (taken[i]) continue;
    KernelGroup grp{g.ops[i].name, "", {static_cast<int>(i)}};
    for (const FusionRule* r : rules) {
      if (!kind_in(g.ops[i].kind, r->chain[0])) continue;
      // Follow the chain through the first untaken consumer of each kind in turn.
      std::vector<int> chain{static_cast<int>(i)};
      for (size_t step = 1; step < r->chain.size(); ++step) {
        int found = -1;
        for (size_t j = chain.back() + 1; j < g.ops.size() && found < 0; ++j)
          if (!taken[j] && kind_in(g.ops[j].kind, r->chain[step]) && feeds(g.ops[chain.back()], g.ops[j]))
            found = static_cast<int>(j);
        if (found < 0) break;
        chain.push_back(found);
      }
      // The init-routing kernel gathers rows only: a permute that also carries weights stays apart.
      if (r->name == "init_routing" && chain.size() == 2 && g.ops[chain[1]].inputs.count("weights")) break;
      if (chain.size() == r->chain.size()) {
        grp = {r->name, r->name, chain};
        break;
      }
    }
    for (int o : grp.ops) taken[o] = true;
    plan.groups.push_back(std::move(grp));
  }
  return plan;
}

std::string kernel_of_op(const std::string& kind) {
  if (kind == "gating_score" || kind == "topk" || kind == "hash_topk" || kind == "normalize") return "gating";
  if (kind == "routing_sort") return "init_routing";
  if (kind == "index_topk") return "topk";
  return kind;  // gemm, grouped_gemm, swiglu, combine, permute: a kernel of the same name
}

std::string format_plan(const Graph& g, const FusionPlan& plan) {
  std::string out = fmt::format("fusion {}: {} kernels\n", plan.label, plan.groups.size());
  for (const auto& grp : plan.groups) {
    std::vector<std::string> ops;
    for (int o : grp.ops) ops.push_back(g.ops[o].name + ":" + g.ops[o].kind);
    std::string kernel = kernel_of_op(g.ops[grp.ops[0]].kind);
    for (const auto& r : fusion_rules())
      if (r.name == grp.rule) kernel = r.kernel;
    out += fmt::format("  {:<16} {:<22} {}\n", grp.name, kernel, fmt::join(ops, " + "));
  }
  return out;
}

bool GraphRun::passed() const {
  for (const auto& k : kernels)
    for (const auto& v : k.validation)
      if (!v.v.passed) return false;
  return true;
}

namespace detail {

// Values for a graph input, seeded per tensor. Weights are scaled by 1/sqrt(fan-in) so that
// activations keep unit scale through the block (and the SwiGLU clamp sees realistic values).
std::vector<double> Executor::graph_input(const TensorDesc& t, size_t index) const {
  kernels::Rng rng(opt_.inputs.seed * 0x9E3779B97F4A7C15ull + 977 * (index + 1));
  std::vector<double> v(static_cast<size_t>(t.elements()));
  std::string role;
  const OpNode* consumer = nullptr;
  for (const auto& op : g_.ops)
    for (const auto& [r, name] : op.inputs)
      if (name == t.name && !consumer) consumer = &op, role = r;
  if (consumer && consumer->kind == "hash_topk" && role == "input_ids") {
    const int64_t vocab = port(*consumer, "tid2eid").shape[0];
    for (auto& x : v) x = static_cast<double>(rng.next() % static_cast<uint64_t>(vocab));
    return v;
  }
  if (consumer && consumer->kind == "hash_topk" && role == "tid2eid") {  // distinct experts per row
    const int64_t K = t.shape[1], E = port(*consumer, "scores").shape[1];
    std::vector<int> perm(E);
    for (int64_t r = 0; r < t.shape[0]; ++r) {
      for (int64_t e = 0; e < E; ++e) perm[e] = static_cast<int>(e);
      for (int64_t j = 0; j < K; ++j) {
        std::swap(perm[j], perm[j + rng.next() % static_cast<uint64_t>(E - j)]);
        v[r * K + j] = perm[j];
      }
    }
    return v;
  }
  kernels::InputSpec spec = opt_.inputs;
  spec.seed = spec.seed * 1000003 + index;
  if (consumer && role == "b" && (consumer->kind == "gemm" || consumer->kind == "grouped_gemm"))
    spec.scale /= std::sqrt(static_cast<double>(t.shape[t.shape.size() - 2]));
  if (role == "bias") spec.scale *= 0.1;
  kernels::TensorInfo info{t.name, t.dtype, 1, t.elements(), kernels::TensorLayout::RowMajor, 0, false};
  return kernels::generate_input(spec, info, static_cast<int>(index));
}

void Executor::generate_inputs() {
  for (size_t i = 0; i < g_.tensors.size(); ++i)
    if (g_.producer(g_.tensors[i].name) < 0) values_[g_.tensors[i].name] = graph_input(g_.tensors[i], i);
}

// Graph input values: generated on first use (timing-only runs need only the routing's inputs).
const std::vector<double>& Executor::input_values(const std::string& tensor) {
  auto it = values_.find(tensor);
  if (it != values_.end()) return it->second;
  for (size_t i = 0; i < g_.tensors.size(); ++i)
    if (g_.tensors[i].name == tensor) return values_[tensor] = graph_input(g_.tensors[i], i);
  throw InternalError("no tensor " + tensor);
}

Built Executor::build(const KernelGroup& grp) {
  std::vector<const OpNode*> ops;
  for (int o : grp.ops) ops.push_back(&g_.ops[o]);
  const std::string& k = ops.front()->kind;
  const std::string kernel = grp.rule.empty() ? kernel_of_op(k) : "";
  if (grp.rule == "gating" || kernel == "gating") return build_gating(ops);
  if (grp.rule == "init_routing" || kernel == "init_routing") return build_init_routing(ops);
  if (grp.rule == "indexer_topk") return build_indexer(*ops[0], ops[1]);
  if (kernel == "lightning_indexer") return build_indexer(*ops[0], nullptr);
  if (kernel == "flash_attention") return build_flash(*ops[0]);
  if (kernel == "topk") return build_topk(*ops[0]);
  if (kernel == "sparse_attention") return build_sparse(*ops[0]);
  if (kernel == "compressor") return build_compressor(*ops[0]);
  if (grp.rule == "gmm1_swiglu") return build_gmm_swiglu(*ops[0], *ops[1]);
  if (grp.rule == "gmm2_finalize") return build_gmm_finalize(*ops[0], *ops[1]);
  if (grp.rule.empty()) return build_single(*ops.front());
  throw InternalError("fusion rule " + grp.rule + " has no kernel");
}

// Timing-only runs know the routing before any kernel runs (a draw, or the reference gate), so the
// kernels are independent simulations: run them on every worker thread, the largest first.
void Executor::simulate_all(std::vector<KernelRun>& kernels) const {
  std::vector<size_t> order(kernels.size());
  std::vector<double> size(kernels.size());
  for (size_t i = 0; i < kernels.size(); ++i) order[i] = i, size[i] = kernels[i].kernel->estimated_instructions();
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return size[a] > size[b]; });
  std::atomic<size_t> next{0};
  const int workers = std::max(1, std::min<int>(tbb::this_task_arena::max_concurrency(), static_cast<int>(order.size())));
  tbb::parallel_for(0, workers, [&](int) {
    for (size_t j; (j = next++) < order.size();) {
      KernelRun& kr = kernels[order[j]];
      const sim::Program prog = kr.kernel->lower(hw_, false);
      kr.sim = sim::simulate(hw_, prog, opt_.sim);
      kr.time_us = hw_.cycles_to_us(kr.sim.cycles);
    }
  });
}

GraphRun Executor::run(const FusionPlan& plan) {
  for (const auto& op : g_.ops)
    if (op.kind == "topk" || op.kind == "hash_topk") {
      ids_tensor_ = op.outputs.at("ids");
      experts_ = port(op, "scores").shape[1];
      topk_ = g_.tensor(ids_tensor_).shape[1];
    }
  if (opt_.functional) generate_inputs();
  GraphRun run;
  run.launch_us = hw_.launch_overhead_us;
  std::map<std::string, int> written_by;  // tensor -> kernel index
  for (const auto& grp : plan.groups) {
    KernelRun kr;
    kr.group = grp;
    Built b = build(grp);
    if (opt_.tiling_for)
      if (auto t = opt_.tiling_for(grp.name, *b.kernel)) {
        auto doc = YamlDoc::from_string(t->dump(), "tiling of kernel " + grp.name, "tiling");
        b.kernel = b.kernel->with_tiling(doc->root(), hw_);
      }
    kernels::Status st = b.kernel->can_implement(hw_);
    const OpNode& first = g_.ops[grp.ops[0]];
    if (!st.ok) throw ConfigError(first.loc, fmt::format("kernel {} ({}) cannot run: {}", grp.name, b.kernel->name(), st.reason));
    if (const double n = b.kernel->estimated_instructions(); opt_.max_instructions > 0 && n > opt_.max_instructions)
      throw ConfigError(first.loc, fmt::format("kernel {} ({}) would have about {:.3g} instructions, above the limit of "
                                               "{:.3g}{}", grp.name, b.kernel->name(), n, opt_.max_instructions,
                                               opt_.max_instructions_hint));
    const auto tensors = b.kernel->tensors();
    if (tensors.size() != b.bind.size())
      throw InternalError(fmt::format("{}: {} tensors, {} bindings", b.kernel->name(), tensors.size(), b.bind.size()));
    // Dependencies follow the graph's edges: a kernel may read data through its lowering (row
    // counts, gather indices) rather than as a tensor.
    std::set<int> after;
    for (int o : grp.ops)
      for (const auto& [role, t] : g_.ops[o].inputs)
        if (auto it = written_by.find(t); it != written_by.end()) after.insert(it->second);
    kr.after.assign(after.begin(), after.end());

    kr.kernel = std::move(b.kernel);
    if (opt_.functional) {
      sim::Program prog = kr.kernel->lower(hw_, true);
      sim::SimOptions so = opt_.sim;
      so.record_work = true;
      kr.sim = sim::simulate(hw_, prog, so);
      kr.time_us = hw_.cycles_to_us(kr.sim.cycles);
      sim::FunctionalMemory mem(hw_, prog);
      std::vector<std::vector<double>> inputs;
      for (size_t i = 0; i < tensors.size(); ++i) {
        if (tensors[i].output) continue;
        const size_t n = static_cast<size_t>(tensors[i].rows * tensors[i].cols);
        const bool own = std::find(b.own_inputs.begin(), b.own_inputs.end(), tensors[i].name) != b.own_inputs.end();
        if (b.bind[i].tensor.empty()) {  // a tensor with no graph counterpart (an empty x)
          inputs.emplace_back(n, 0.0);
        } else if (own) {
          inputs.push_back(kr.kernel->make_input(i, opt_.inputs));
          if (g_.producer(b.bind[i].tensor) < 0) values_[b.bind[i].tensor] = inputs.back();  // later readers agree
        } else {
          const auto& all = values_.at(b.bind[i].tensor);
          inputs.emplace_back(all.begin() + b.bind[i].offset, all.begin() + b.bind[i].offset + n);
        }
        kernels::write_tensor(mem.gm(), tensors[i], inputs.back());
      }
      sim::run_functional(prog, kr.sim, mem);
      kr.validation = kernels::validate_outputs(*kr.kernel, inputs, mem.gm());
      for (size_t i = 0; i < tensors.size(); ++i)
        if (tensors[i].output && !b.bind[i].tensor.empty()) {
          std::vector<double> v = kernels::read_tensor(mem.gm(), tensors[i]);
          auto& dst = values_[b.bind[i].tensor];
          dst.resize(static_cast<size_t>(g_.tensor(b.bind[i].tensor).elements()));
          std::copy(v.begin(), v.end(), dst.begin() + b.bind[i].offset);
        }
      kr.sim.work.clear();
      kr.sim.work.shrink_to_fit();
    }
    for (int o : grp.ops)
      for (const auto& [role, t] : g_.ops[o].outputs) written_by[t] = static_cast<int>(run.kernels.size());
    // A drawn routing replaces the gate's picks from here on (the gate still ran and was judged).
    if (written_by.count(ids_tensor_) && written_by[ids_tensor_] == static_cast<int>(run.kernels.size()) &&
        opt_.routing.distribution != "from_gate" && opt_.functional) {
      const auto& ids = routing();
      values_[ids_tensor_].assign(ids.begin(), ids.end());
    }
    run.kernels.push_back(std::move(kr));
  }
  if (!opt_.functional) simulate_all(run.kernels);
  if (!ids_tensor_.empty()) {
    run.tokens_per_expert = kernels::tokens_per_expert(routing(), experts_);
    run.imbalance = kernels::imbalance(run.tokens_per_expert);
    run.routing_source = opt_.routing.distribution;
  }
  run.index_source = index_source_;
  if (opt_.functional)
    for (auto& [name, v] : values_)
      if (g_.producer(name) >= 0) run.values[name] = std::move(v);
  // Serial stream and the critical path through the kernel DAG (kernels are in topological order).
  std::vector<double> finish(run.kernels.size(), 0);
  std::vector<int> pred(run.kernels.size(), -1);
  for (size_t i = 0; i < run.kernels.size(); ++i) {
    const auto& k = run.kernels[i];
    run.serial_us += k.time_us + run.launch_us;
    double start = 0;
    for (int a : k.after)
      if (finish[a] > start) start = finish[a], pred[i] = a;
    finish[i] = start + k.time_us + run.launch_us;
  }
  int last = -1;
  for (size_t i = 0; i < finish.size(); ++i)
    if (last < 0 || finish[i] > finish[last]) last = static_cast<int>(i);
  if (last >= 0) run.critical_path_us = finish[last];
  for (int i = last; i >= 0; i = pred[i]) run.critical_path.insert(run.critical_path.begin(), i);
  return run;
}

}  // namespace detail

GraphRun run_graph(const Graph& g, const FusionPlan& plan, const sim::HardwareSpec& hw, const GraphRunOptions& opt) {
  detail::Executor ex(g, hw, opt);
  return ex.run(plan);
}

}  // namespace npusim::graphs
