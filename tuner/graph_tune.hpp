// Tuning a model block: every kernel of a fusion plan is tuned on its own (kernels of a graph run
// one after another, so the block's time is the sum of theirs plus launches), and with fusion
// search every subset of the fusion rules that apply is planned, its kernels tuned, and the plans
// compared on their tuned totals. Kernels shared between plans are tuned once (same signature).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "graphs/graph.hpp"
#include "graphs/plan.hpp"
#include "tuner/tuner.hpp"

namespace npusim::tuner {

struct GraphTuneOptions {
  TuneOptions kernel;                // per kernel (budget, strategy, seed, database)
  bool search_fusion = false;        // every subset of the applicable fusion rules
  // The validator for candidates of a kernel of the graph (empty: none).
  std::function<Validator(const kernels::Kernel& base)> validator_for;
  std::function<void(const std::string& what)> log;
};

struct KernelTuning {
  std::string group, op, name;
  double default_us = 0, tuned_us = 0;
  nlohmann::json tiling;  // null: kept the default (nothing to tune)
  bool stored = false;    // validated and stored in the database
  std::string note;
};

struct PlanTuning {
  std::string label;
  std::vector<std::string> rules;
  double default_us = 0;  // default tilings (serial: kernels + launches)
  double tuned_us = 0;    // tuned tilings
  std::vector<KernelTuning> kernels;
};

struct GraphTuneResult {
  std::vector<PlanTuning> plans;  // the config's plan first, then the searched ones
  size_t best = 0;                // index of the fastest tuned plan
  size_t kernels_tuned = 0, evaluations = 0;
};

GraphTuneResult tune_graph(const graphs::Graph& g, const graphs::FusionPlan& plan, const sim::HardwareSpec& hw,
                           const graphs::GraphRunOptions& run, const GraphTuneOptions& opt);

nlohmann::json to_json(const GraphTuneResult& r);

}  // namespace npusim::tuner
