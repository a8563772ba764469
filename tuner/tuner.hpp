// Tuning one kernel: enumerate its space, let a strategy propose batches, evaluate them in parallel
// as timing-only simulations (reusing what the database already holds), then validate the winner
// functionally before it is stored: a winner that fails is reported and the next best is tried.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/kernel.hpp"
#include "sim/hardware_spec.hpp"
#include "tuner/db.hpp"
#include "tuner/space.hpp"

namespace npusim::tuner {

// A functional run of a candidate against the CPU reference. `ran` is false when it could not run
// (e.g. it needs more memory than the functional limit); `report` is the validation JSON.
struct ValidationOutcome {
  bool ran = false, passed = false;
  nlohmann::json report;
  std::string why_not;
};
using Validator = std::function<ValidationOutcome(std::unique_ptr<kernels::Kernel> candidate)>;

struct Progress {
  size_t evaluated = 0, budget = 0;
  double rate = 0, eta_s = 0, best_cycles = 0;
};

struct TuneOptions {
  std::string strategy = "auto";
  size_t budget = 256;
  uint64_t seed = 1;
  std::vector<Pin> pins;
  size_t batch = 8;  // proposals per round: fixed, so results do not depend on the thread count
  TuningDb* db = nullptr;
  Validator validate;  // empty: the winner is not validated and never stored as best
  std::function<void(const Progress&)> progress;
  const std::atomic<bool>* stop = nullptr;  // set: finish the batch in flight, then stop
  std::string tool_version;
};

struct Candidate {
  size_t point = 0;
  nlohmann::json tiling;
  std::string status;  // ok | pruned | failed
  double cycles = 0;
  std::string reason;
  bool reused = false;  // read from the database, not simulated
};

struct TuneResult {
  std::string strategy;  // the one that ran (auto resolved)
  std::string hardware, kernel;  // database keys
  nlohmann::json signature;
  double raw_size = 0;
  size_t valid_size = 0;
  std::map<std::string, double> pruned_by_space;      // constraint -> points removed
  std::map<std::string, size_t> pruned_by_kernel;     // evaluated candidates can_implement refused, by reason
  size_t evaluated = 0, reused = 0, failed = 0;
  std::vector<std::pair<size_t, double>> trajectory;  // evaluation index (1-based) -> best cycles so far
  std::vector<Candidate> candidates;                  // in evaluation order
  double default_cycles = 0;
  std::optional<Candidate> best;                      // the validated winner
  nlohmann::json best_validation;
  std::vector<nlohmann::json> rejected;               // winners that failed validation, with why
  std::string not_stored;                             // why the winner was not stored (empty: stored)
  bool interrupted = false;
  double seconds = 0;
};

// The database keys: a fingerprint of the resolved hardware parameters and of the kernel signature.
std::string hardware_fingerprint(const sim::HardwareSpec& hw);
std::string kernel_key(const kernels::Kernel& k);

// A candidate kernel from a tiling JSON (the `tiling:` section of a space point).
std::unique_ptr<kernels::Kernel> build_candidate(const kernels::Kernel& base, const nlohmann::json& tiling,
                                                 const sim::HardwareSpec& hw);

// Simulated cycles of one candidate (timing only); pruned / failed candidates say why. A candidate
// whose program would exceed instruction_limit(base) is pruned without simulating.
double instruction_limit(const kernels::Kernel& base);
Candidate evaluate(const kernels::Kernel& base, const nlohmann::json& tiling, const sim::HardwareSpec& hw);

TuneResult tune_kernel(const kernels::Kernel& kernel, const sim::HardwareSpec& hw, const TuneOptions& opt);

// The result as best.json: best {tiling, fusion, time_us, cycles}, validation, counts, trajectory.
nlohmann::json to_json(const TuneResult& r, const sim::HardwareSpec& hw);

}  // namespace npusim::tuner
