// npusim tune: search a kernel's tilings (or a model block's fusion and tilings), validate the
// winner functionally, remember everything in the tuning database.
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>

#include "app/command.hpp"
#include "app/session.hpp"
#include "common/errors.hpp"
#include "reports/writers.hpp"
#include "tuner/graph_tune.hpp"
#include "tuner/strategy.hpp"
#include "tuner/tuner.hpp"

namespace npusim::app {

namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_interrupt(int) { g_stop.store(true); }

// Runs a candidate functionally against the CPU reference, unless it would need more memory than
// a functional run may take.
tuner::Validator make_validator(const LoadedRun& run) {
  return [&run](std::unique_ptr<kernels::Kernel> candidate) {
    tuner::ValidationOutcome v;
    LoadedRun probe;
    probe.config_file = run.config_file, probe.hw = run.hw, probe.inputs = run.inputs;
    probe.kernel = std::move(candidate);
    const uint64_t need = functional_bytes_needed(probe), limit = functional_bytes_limit();
    std::string reduced;
    if (need > limit) {
      // Too big to run whole: the same tiling on the template's reduced problem, when it has one.
      const std::string full = probe.kernel->name();
      if (auto smaller = probe.kernel->reduced_for_validation()) probe.kernel = std::move(smaller);
      if (probe.kernel->name() == full || functional_bytes_needed(probe) > limit) {
        v.why_not = fmt::format("a functional run needs {:.1f} GiB, above the limit of {:.1f} GiB (NPUSIM_MAX_FUNCTIONAL_BYTES)",
                                need / 1073741824.0, limit / 1073741824.0);
        return v;
      }
      reduced = fmt::format("the tiling on {} (the full {} needs {:.1f} GiB)", probe.kernel->name(), full, need / 1073741824.0);
    }
    RunOutput out = execute_functional(probe);
    v.ran = true;
    v.passed = out.kernel.validation && out.kernel.validation->passed;
    if (out.kernel.validation) v.report = reports::to_json(*out.kernel.validation);
    if (!reduced.empty()) v.report["validated_on"] = reduced;
    return v;
  };
}

class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet), tty_(isatty(STDERR_FILENO) != 0) {}
  void operator()(const tuner::Progress& p, double default_cycles) {
    if (quiet_) return;
    const auto now = std::chrono::steady_clock::now();
    std::string line = fmt::format("[{}/{}] {:.0f} eval/s  ETA {:.0f} s  best {:.0f} cycles", p.evaluated, p.budget, p.rate,
                                   p.eta_s, p.best_cycles);
    if (default_cycles > 0 && p.best_cycles > 0) line += fmt::format(" ({:.2f}x default)", default_cycles / p.best_cycles);
    if (tty_) {
      fmt::print(stderr, "\r{:<90}", line);
      drawn_ = true;
    } else if (now - last_ >= std::chrono::seconds(10) || p.evaluated >= p.budget) {
      fmt::print(stderr, "tune: {}\n", line);
      last_ = now;
    }
  }
  void end() {
    if (drawn_) fmt::print(stderr, "\n");
    drawn_ = false;
  }

 private:
  bool quiet_, tty_, drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

class TuneCommand : public Command {
 public:
  CLI::App* add_to(CLI::App& cli) override {
    CLI::App* t = cli.add_subcommand("tune", "search tilings (and with --fusion search, fusion plans); validate and store the winner");
    t->add_option("config", config_, "run config YAML (a kernel: workload.op, or a model block: workload.model)");
    t->add_option("--strategy", strategy_, "search strategy (see --list-strategies)")->default_val("auto");
    t->add_option("--budget", budget_, "evaluations (timing-only simulations) per kernel")->default_val(256);
    t->add_option("--seed", seed_, "seed: same seed, same trajectory and pick")->default_val(1);
    t->add_option("--db", db_, "SQLite tuning database (created when missing; reused across runs)");
    t->add_option("--json", json_, "write best.json here");
    t->add_option("--pin", pins_, "fix a tiling parameter: name=value (must be inside its domain)");
    t->add_option("--set", sets_, "override a config key, as for run");
    t->add_option("--fusion", fusion_, "model blocks: `config` keeps the config's fusion plan, `search` tries every subset of the rules")
        ->default_val("config");
    t->add_option("--export", export_, "write the database's contents as JSON here (needs --db)");
    t->add_flag("--list-strategies", list_, "list the search strategies");
    t->add_flag("--quiet", quiet_, "no progress line");
    return t;
  }

  int run(const std::string& command_line) override {
    (void)command_line;
    if (list_) {
      for (const auto& s : tuner::strategy_registry()) fmt::print("{:<11} {}\n", s.name, s.description);
      return kExitOk;
    }
    if (fusion_ != "config" && fusion_ != "search")
      throw ConfigError(SourceLoc{"--fusion", 0, 0, "fusion"}, fmt::format("expected config or search, found '{}'", fusion_));
    if (budget_ <= 0) throw ConfigError(SourceLoc{"--budget", 0, 0, "budget"}, "the budget must be at least 1 evaluation");
    if (config_.empty() && export_.empty())
      throw ConfigError("tune needs a config (or --list-strategies, or --db with --export)");
    if (!export_.empty() && db_.empty()) throw ConfigError(SourceLoc{"--export", 0, 0, ""}, "--export needs --db FILE");
    // Every argument and the config are checked before the database is opened (or created).
    std::vector<tuner::Pin> pins;
    LoadedRun run;
    if (!config_.empty()) {
      for (const auto& p : pins_) pins.push_back(tuner::parse_pin(p));
      tuner::require_known_strategy(strategy_);
      run = load_run(config_, sets_);
      if (run.graph && !pins.empty())
        throw ConfigError(SourceLoc{"--pin", 0, 0, ""}, "--pin applies to a single kernel config (workload.op)");
    }
    std::unique_ptr<tuner::TuningDb> db;
    if (!db_.empty()) db = std::make_unique<tuner::TuningDb>(db_);
    if (!export_.empty()) {
      reports::write_file_atomic(export_, reports::json_text(db->export_json()));
      if (config_.empty()) return kExitOk;
    }
    tuner::TuneOptions opt;
    opt.strategy = strategy_, opt.budget = static_cast<size_t>(budget_), opt.seed = seed_, opt.pins = pins;
    opt.db = db.get(), opt.stop = &g_stop, opt.tool_version = tool_version();
    Progress progress(quiet_);
    std::signal(SIGINT, on_interrupt);
    std::signal(SIGTERM, on_interrupt);

    nlohmann::json best;
    int rc = kExitOk;
    if (run.graph) {
      const GraphWorkload& gw = *run.graph;
      graphs::GraphRunOptions go;
      go.routing = gw.routing, go.indices = gw.indices, go.inputs = run.inputs;
      tuner::GraphTuneOptions gopt;
      opt.progress = [&](const tuner::Progress& p) { progress(p, 0); };
      gopt.kernel = opt;
      gopt.search_fusion = fusion_ == "search";
      gopt.validator_for = [&](const kernels::Kernel&) { return make_validator(run); };
      gopt.log = [&](const std::string& s) {
        progress.end();
        if (!quiet_) fmt::print(stderr, "tune: {}\n", s);
      };
      tuner::GraphTuneResult r = tuner::tune_graph(gw.graph, gw.plan, run.hw, go, gopt);
      best = tuner::to_json(r);
      const auto& b = r.plans[r.best];
      fmt::print("{} on {}: fusion {} default {:.2f} us; best: fusion {} tuned {:.2f} us ({:.3f}x); {} kernels tuned, {} evaluations\n",
                 gw.graph.name, run.hw.name, r.plans[0].label, r.plans[0].default_us, b.label, b.tuned_us,
                 b.tuned_us > 0 ? r.plans[0].default_us / b.tuned_us : 0.0, r.kernels_tuned, r.evaluations);
      if (g_stop.load()) rc = 130;
    } else {
      opt.validate = make_validator(run);
      double default_cycles = 0;
      opt.progress = [&](const tuner::Progress& p) { progress(p, default_cycles); };
      // The default's cycles are known once tuning starts; the progress line reads them from here.
      tuner::TuneResult r = tuner::tune_kernel(*run.kernel, run.hw, opt);
      default_cycles = r.default_cycles;
      progress.end();
      best = tuner::to_json(r, run.hw);
      if (r.best) best["report"] = report_of(run, r);
      print_summary(r, run);
      if (r.interrupted) rc = 130;
      else if (!r.best || !r.rejected.empty()) rc = r.best && r.not_stored.empty() ? kExitOk : kExitMismatch;
    }
    best["command_line"] = command_line;
    if (!json_.empty()) reports::write_file_atomic(json_, reports::json_text(best));
    return rc;
  }

 private:
  // The winner's full run report (functional, with its validation when it ran).
  nlohmann::json report_of(const LoadedRun& run, const tuner::TuneResult& r) {
    LoadedRun w;
    w.config_file = run.config_file, w.hw = run.hw, w.inputs = run.inputs;
    w.kernel = tuner::build_candidate(*run.kernel, r.best->tiling, run.hw);
    reports::RunReport rep = make_report(run.hw, run.config_file, "npusim tune");
    const bool functional = functional_bytes_needed(w) <= functional_bytes_limit() && !r.interrupted;
    rep.kernels.push_back(functional ? execute_functional(w).kernel : execute(w).kernel);
    return reports::to_json(rep);
  }
  void print_summary(const tuner::TuneResult& r, const LoadedRun& run) {
    fmt::print("{} on {}: strategy {}, space {:.3g} raw / {} valid, {} evaluated ({} from the database, {} pruned, {} failed) in {:.2f} s\n",
               run.kernel->name(), run.hw.name, r.strategy, r.raw_size, r.valid_size, r.evaluated, r.reused,
               [&] { size_t n = 0; for (const auto& [k, v] : r.pruned_by_kernel) n += v; return n; }(), r.failed, r.seconds);
    fmt::print("default tiling: {:.0f} cycles ({:.2f} us)\n", r.default_cycles, run.hw.cycles_to_us(r.default_cycles));
    if (r.best)
      fmt::print("best:           {:.0f} cycles ({:.2f} us), {:.3f}x the default: {}\n", r.best->cycles,
                 run.hw.cycles_to_us(r.best->cycles), r.best->cycles > 0 ? r.default_cycles / r.best->cycles : 0.0,
                 r.best->tiling.dump());
    for (const auto& j : r.rejected) fmt::print("rejected (failed validation): {}\n", j["tiling"].dump());
    fmt::print("{}\n", r.not_stored.empty() ? "validated against the CPU reference and stored" : "not stored: " + r.not_stored);
  }

  std::string config_, strategy_ = "auto", db_, json_, fusion_ = "config", export_;
  int64_t budget_ = 256;
  uint64_t seed_ = 1;
  std::vector<std::string> pins_, sets_;
  bool list_ = false, quiet_ = false;
};

const RegisterCommand kRegister{[] { return std::make_unique<TuneCommand>(); }};

}  // namespace

}  // namespace npusim::app
