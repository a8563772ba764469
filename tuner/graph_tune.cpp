#include "tuner/graph_tune.hpp"

#include <fmt/format.h>

#include <set>

namespace npusim::tuner {

namespace {

struct Tuned {
  nlohmann::json tiling;
  double cycles = 0;
  bool stored = false;
  std::string note;
  size_t evaluations = 0;
};

}  // namespace

GraphTuneResult tune_graph(const graphs::Graph& g, const graphs::FusionPlan& plan, const sim::HardwareSpec& hw,
                           const graphs::GraphRunOptions& run_in, const GraphTuneOptions& opt) {
  graphs::GraphRunOptions run = run_in;
  run.functional = false;
  std::vector<graphs::FusionPlan> plans{plan};
  if (opt.search_fusion) {
    // The rules that apply to this graph, then every subset of them (none .. all).
    std::vector<std::string> rules;
    for (const auto& grp : graphs::plan_fusion(g, {"default"}, SourceLoc{}).groups)
      if (!grp.rule.empty() && std::find(rules.begin(), rules.end(), grp.rule) == rules.end()) rules.push_back(grp.rule);
    for (uint32_t mask = 0; mask < (1u << rules.size()); ++mask) {
      std::vector<std::string> pick;
      for (size_t r = 0; r < rules.size(); ++r)
        if (mask & (1u << r)) pick.push_back(rules[r]);
      graphs::FusionPlan p = graphs::plan_fusion(g, pick.empty() ? std::vector<std::string>{"none"} : pick, SourceLoc{});
      if (p.label != plan.label) plans.push_back(std::move(p));
    }
  }

  std::map<std::string, Tuned> tuned;  // by kernel key
  GraphTuneResult out;
  for (const auto& p : plans) {
    PlanTuning pt;
    pt.label = p.label;
    for (const auto& grp : p.groups)
      if (!grp.rule.empty() && std::find(pt.rules.begin(), pt.rules.end(), grp.rule) == pt.rules.end()) pt.rules.push_back(grp.rule);
    if (opt.log) opt.log(fmt::format("plan {}: {} kernels", p.label, p.groups.size()));
    graphs::GraphRun base = graphs::run_graph(g, p, hw, run);
    pt.default_us = base.serial_us;
    std::map<std::string, nlohmann::json> tilings;
    for (const auto& kr : base.kernels) {
      KernelTuning kt;
      kt.group = kr.group.name, kt.op = kr.kernel->op(), kt.name = kr.kernel->name(), kt.default_us = kr.time_us;
      kt.tuned_us = kr.time_us;
      if (kr.kernel->search_space(hw).params.empty()) {
        kt.note = "no tiling parameters";
        pt.kernels.push_back(kt);
        continue;
      }
      const std::string key = kernel_key(*kr.kernel);
      auto it = tuned.find(key);
      if (it == tuned.end()) {
        TuneOptions ko = opt.kernel;
        if (opt.validator_for) ko.validate = opt.validator_for(*kr.kernel);
        TuneResult r = tune_kernel(*kr.kernel, hw, ko);
        Tuned t;
        t.evaluations = r.evaluated;
        if (r.best) t.tiling = r.best->tiling, t.cycles = r.best->cycles;
        t.stored = r.not_stored.empty(), t.note = r.not_stored;
        ++out.kernels_tuned, out.evaluations += r.evaluated;
        if (opt.log)
          opt.log(fmt::format("  {} ({}): default {:.2f} us, tuned {:.2f} us after {} evaluations{}", kr.group.name,
                              kr.kernel->name(), kr.time_us, r.best ? hw.cycles_to_us(r.best->cycles) : kr.time_us, r.evaluated,
                              t.stored ? "" : " (" + t.note + ")"));
        it = tuned.emplace(key, std::move(t)).first;
      }
      // Keep the default tiling when tuning found nothing faster.
      if (!it->second.tiling.is_null() && hw.cycles_to_us(it->second.cycles) < kr.time_us) {
        kt.tiling = it->second.tiling;
        tilings[kr.group.name] = it->second.tiling;
      }
      kt.stored = it->second.stored, kt.note = it->second.note;
      pt.kernels.push_back(kt);
    }
    graphs::GraphRunOptions tuned_run = run;
    tuned_run.tiling_for = [&](const std::string& group, const kernels::Kernel&) -> std::optional<nlohmann::json> {
      auto t = tilings.find(group);
      return t == tilings.end() ? std::nullopt : std::optional<nlohmann::json>(t->second);
    };
    graphs::GraphRun after = graphs::run_graph(g, p, hw, tuned_run);
    pt.tuned_us = after.serial_us;
    for (size_t i = 0; i < after.kernels.size() && i < pt.kernels.size(); ++i) pt.kernels[i].tuned_us = after.kernels[i].time_us;
    out.plans.push_back(std::move(pt));
  }
  for (size_t i = 1; i < out.plans.size(); ++i)
    if (out.plans[i].tuned_us < out.plans[out.best].tuned_us) out.best = i;
  return out;
}

nlohmann::json to_json(const GraphTuneResult& r) {
  nlohmann::json plans = nlohmann::json::array();
  for (const auto& p : r.plans) {
    nlohmann::json ks = nlohmann::json::array();
    for (const auto& k : p.kernels)
      ks.push_back({{"group", k.group}, {"op", k.op}, {"name", k.name}, {"default_us", k.default_us}, {"tuned_us", k.tuned_us},
                    {"tiling", k.tiling}, {"stored", k.stored}, {"note", k.note}});
    plans.push_back({{"fusion", p.label}, {"rules", p.rules}, {"default_us", p.default_us}, {"tuned_us", p.tuned_us}, {"kernels", ks}});
  }
  const auto& b = r.plans[r.best];
  nlohmann::json tilings = nlohmann::json::object();
  for (const auto& k : b.kernels)
    if (!k.tiling.is_null()) tilings[k.group] = k.tiling;
  return {{"best", {{"fusion", b.label}, {"rules", b.rules}, {"tiling", tilings}, {"time_us", b.tuned_us}}},
          {"config_plan", {{"fusion", r.plans[0].label}, {"default_us", r.plans[0].default_us}, {"tuned_us", r.plans[0].tuned_us}}},
          {"speedup_vs_default", b.tuned_us > 0 ? r.plans[0].default_us / b.tuned_us : 0},
          {"kernels_tuned", r.kernels_tuned}, {"evaluations", r.evaluations}, {"plans", plans}};
}

}  // namespace npusim::tuner
