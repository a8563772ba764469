#include "tuner/tuner.hpp"

#include <fmt/format.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <unordered_map>

#include "common/errors.hpp"
#include "common/hash.hpp"
#include "common/yaml_reader.hpp"
#include "sim/engine.hpp"
#include "tuner/strategy.hpp"

namespace npusim::tuner {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// A candidate whose program is many times the default's (tiny tiles on a large problem) is pruned
// rather than simulated: it cannot win, and its simulation would cost seconds.
constexpr double kInstructionFactor = 16, kInstructionFloor = 2e5;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::string hardware_fingerprint(const sim::HardwareSpec& hw) {
  std::string text;
  for (const auto& p : sim::describe_hardware(hw)) text += p.info.name + "=" + p.value + "\n";
  return hash_hex(text);
}

std::string kernel_key(const kernels::Kernel& k) { return hash_hex(k.signature().dump()); }

std::unique_ptr<kernels::Kernel> build_candidate(const kernels::Kernel& base, const nlohmann::json& tiling,
                                                 const sim::HardwareSpec& hw) {
  // JSON is YAML: the candidate goes through the same parser as a hand-written `tiling:`.
  auto doc = YamlDoc::from_string(tiling.dump(), "tuner candidate", "tiling");
  return base.with_tiling(doc->root(), hw);
}

double instruction_limit(const kernels::Kernel& base) {
  return std::max(kInstructionFloor, kInstructionFactor * base.estimated_instructions());
}

Candidate evaluate(const kernels::Kernel& base, const nlohmann::json& tiling, const sim::HardwareSpec& hw) {
  Candidate c;
  c.tiling = tiling;
  try {
    auto k = build_candidate(base, tiling, hw);
    kernels::Status st = k->can_implement(hw);
    if (!st.ok) {
      c.status = "pruned", c.reason = st.key.empty() ? st.reason : st.key + ": " + st.reason;
      return c;
    }
    if (k->estimated_instructions() > instruction_limit(base)) {
      c.status = "pruned", c.reason = fmt::format("instruction limit: over {:g}x the default tiling's program", kInstructionFactor);
      return c;
    }
    sim::SimResult r = sim::simulate(hw, k->lower(hw));
    c.status = "ok", c.cycles = r.cycles;
  } catch (const ConfigError& e) {
    c.status = "pruned", c.reason = e.what();
  } catch (const std::exception& e) {  // a deadlock or a model error: the candidate cannot run
    c.status = "failed", c.reason = e.what();
  }
  return c;
}

TuneResult tune_kernel(const kernels::Kernel& kernel, const sim::HardwareSpec& hw, const TuneOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  if (opt.budget == 0) throw ConfigError(SourceLoc{"--budget", 0, 0, "budget"}, "the budget must be at least 1 evaluation");
  TuneResult res;
  res.hardware = hardware_fingerprint(hw), res.kernel = kernel_key(kernel), res.signature = kernel.signature();
  const kernels::SearchSpace space = kernel.search_space(hw);
  if (space.params.empty())
    throw ConfigError(SourceLoc{"", 0, 0, "workload.op"}, fmt::format("{} has no tiling parameters to tune", kernel.op()));
  const ValidPoints points(space, opt.pins);
  res.raw_size = points.raw_size(), res.valid_size = points.size(), res.pruned_by_space = points.pruned();
  if (points.size() == 0) throw ConfigError(SourceLoc{"--pin", 0, 0, ""}, "no valid tiling is left in the space (check the pins)");

  // What the database already knows about this kernel on this hardware.
  std::unordered_map<std::string, StoredEvaluation> known;
  if (opt.db) {
    opt.db->store_hardware(res.hardware, hw.name, nullptr);
    for (auto& e : opt.db->evaluations(res.hardware, res.kernel)) known.emplace(e.tiling, std::move(e));
  }
  // The kernel as configured: the speedup's reference, and a contender for the winner.
  Candidate as_given = evaluate(kernel, kernel.tiling_json(), hw);
  as_given.point = SIZE_MAX;
  res.default_cycles = as_given.status == "ok" ? as_given.cycles : 0;

  std::vector<char> proposed(points.size(), 0);
  StrategyContext ctx{&points, opt.seed, opt.budget, [&](size_t i) { return proposed[i] != 0; }};
  auto strategy = make_strategy(opt.strategy, ctx, &res.strategy);
  double best = kInf;
  while (res.candidates.size() < opt.budget) {
    if (opt.stop && opt.stop->load()) {
      res.interrupted = true;
      break;
    }
    std::vector<size_t> batch = strategy->propose(std::min(opt.batch, opt.budget - res.candidates.size()));
    if (batch.empty()) break;
    std::vector<Candidate> done(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      proposed[batch[i]] = 1;
      done[i].point = batch[i];
      done[i].tiling = space.tiling(points.point(batch[i]));
    }
    tbb::parallel_for(size_t{0}, batch.size(), [&](size_t i) {
      auto it = known.find(done[i].tiling.dump());
      if (it != known.end()) {
        done[i].status = it->second.status, done[i].cycles = it->second.cycles, done[i].reason = it->second.reason;
        done[i].reused = true;
        return;
      }
      Candidate c = evaluate(kernel, done[i].tiling, hw);
      c.point = done[i].point;
      done[i] = std::move(c);
    });
    std::vector<StoredEvaluation> fresh;
    for (auto& c : done) {
      if (!c.reused) fresh.push_back({c.tiling.dump(), c.status, c.cycles, c.reason});
      res.reused += c.reused;
      if (c.status == "pruned") ++res.pruned_by_kernel[c.reason.substr(0, c.reason.find(':'))];
      if (c.status == "failed") ++res.failed;
      const double cost = c.status == "ok" ? c.cycles : kInf;
      strategy->observe(c.point, cost);
      best = std::min(best, cost);
      res.candidates.push_back(c);
      res.trajectory.push_back({res.candidates.size(), best});
    }
    if (opt.db) opt.db->record(res.hardware, res.kernel, fresh);  // one transaction per batch
    if (opt.progress) {
      Progress p;
      p.evaluated = res.candidates.size(), p.budget = std::min(opt.budget, points.size());
      const double s = seconds_since(t0);
      p.rate = s > 0 ? static_cast<double>(p.evaluated) / s : 0;
      p.eta_s = p.rate > 0 ? static_cast<double>(p.budget - std::min(p.budget, p.evaluated)) / p.rate : 0;
      p.best_cycles = std::isfinite(best) ? best : 0;
      opt.progress(p);
    }
  }
  res.evaluated = res.candidates.size();

  // The winner: the fastest candidate (the configured tiling competes too) that passes validation.
  std::vector<const Candidate*> ranked;
  for (const auto& c : res.candidates)
    if (c.status == "ok") ranked.push_back(&c);
  if (as_given.status == "ok") ranked.push_back(&as_given);
  std::stable_sort(ranked.begin(), ranked.end(), [](const Candidate* a, const Candidate* b) { return a->cycles < b->cycles; });
  if (ranked.empty()) {
    res.not_stored = "no candidate could run";
  } else if (res.interrupted) {
    res.best = *ranked.front();
    res.not_stored = "interrupted before validation: the best so far is reported, not stored";
  } else if (!opt.validate) {
    res.best = *ranked.front();
    res.not_stored = "not validated (no validator)";
  } else {
    for (const Candidate* c : ranked) {
      ValidationOutcome v = opt.validate(build_candidate(kernel, c->tiling, hw));
      if (!v.ran) {
        res.best = *c;
        res.not_stored = "not validated: " + v.why_not;
        break;
      }
      if (v.passed) {
        res.best = *c, res.best_validation = v.report;
        break;
      }
      res.rejected.push_back({{"tiling", c->tiling}, {"cycles", c->cycles}, {"validation", v.report}});
      if (res.rejected.size() >= 8) {
        res.not_stored = "the 8 fastest candidates all failed validation";
        break;
      }
    }
    if (!res.best && res.not_stored.empty()) res.not_stored = "every candidate failed validation";
  }
  if (res.best && res.not_stored.empty() && opt.db) {
    BestRecord b;
    b.hardware = res.hardware, b.kernel = res.kernel, b.hardware_name = hw.name, b.op = kernel.op();
    b.signature = res.signature, b.tiling = res.best->tiling, b.validation = res.best_validation;
    b.cycles = res.best->cycles, b.time_us = hw.cycles_to_us(res.best->cycles), b.default_cycles = res.default_cycles;
    b.strategy = res.strategy, b.seed = opt.seed, b.evaluations = static_cast<int64_t>(res.evaluated);
    b.tool_version = opt.tool_version;
    // Keep the better of what is stored and what this run found.
    auto old = opt.db->best(res.hardware, res.kernel);
    if (!old || old->cycles > b.cycles) opt.db->store_best(b);
  }
  res.seconds = seconds_since(t0);
  return res;
}

nlohmann::json to_json(const TuneResult& r, const sim::HardwareSpec& hw) {
  nlohmann::json j;
  if (r.best)
    j["best"] = {{"tiling", r.best->tiling}, {"fusion", nullptr}, {"cycles", r.best->cycles},
                 {"time_us", hw.cycles_to_us(r.best->cycles)}, {"validated", r.not_stored.empty()},
                 {"source", r.best->point == SIZE_MAX ? "the configured tiling" : "search"}};
  else
    j["best"] = nullptr;
  j["validation"] = r.best_validation;  // the winner's functional check (validated_on: a reduced problem)
  j["stored"] = r.not_stored.empty();
  if (!r.not_stored.empty()) j["not_stored"] = r.not_stored;
  j["default"] = {{"cycles", r.default_cycles}, {"time_us", hw.cycles_to_us(r.default_cycles)}};
  j["speedup_vs_default"] = r.best && r.best->cycles > 0 ? r.default_cycles / r.best->cycles : 0;
  j["strategy"] = r.strategy;
  j["space"] = {{"raw", r.raw_size}, {"valid", r.valid_size}, {"pruned", r.pruned_by_space}};
  j["evaluations"] = {{"total", r.evaluated}, {"reused_from_db", r.reused}, {"failed", r.failed},
                      {"pruned", r.pruned_by_kernel}};
  nlohmann::json traj = nlohmann::json::array();
  for (const auto& [i, c] : r.trajectory) traj.push_back({i, std::isfinite(c) ? nlohmann::json(c) : nlohmann::json()});
  j["trajectory"] = traj;
  j["rejected"] = r.rejected;
  j["interrupted"] = r.interrupted;
  j["database"] = {{"hardware", r.hardware}, {"kernel", r.kernel}, {"signature", r.signature}};
  return j;
}

}  // namespace npusim::tuner
