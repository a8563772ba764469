// npusim command line: parses arguments and calls the library (app/session.hpp). Only this file
// catches errors and maps them to exit codes (2 config, 3 internal, 4 simulation).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <set>

#include "app/command.hpp"
#include "app/session.hpp"
#include "common/errors.hpp"
#include "reports/writers.hpp"
#include "tuner/db.hpp"
#include "tuner/tuner.hpp"

namespace {

using namespace npusim;

std::string command_line(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) s += (i ? " " : "") + std::string(argv[i]);
  return s;
}

int cmd_hw_list() {
  for (const auto& name : app::list_presets()) {
    sim::HardwareSpec hw = app::load_hardware(name);
    fmt::print("{:<20} arch {}  {} AIC / {} AIV  {} MHz  HBM {} GB/s  L2 {} MiB  fp16 {:.1f} TFLOPS\n", name, hw.npu_arch,
               hw.num_aic, hw.num_aiv, hw.freq_mhz, hw.hbm.peak_bw_gbs, hw.l2.size_mib, hw.peak_tflops(sim::DType::Fp16));
  }
  return kExitOk;
}

int cmd_hw_show(const std::string& name, const std::vector<std::string>& sets) {
  sim::HardwareSpec hw = app::load_hardware(name, sets);
  fmt::print("# {} (resolved; override any value with --set hardware.<name>=<value>)\n", hw.name);
  for (const auto& p : sim::describe_hardware(hw))
    fmt::print("{:<44} {:>14} {:<16} # {}\n", p.info.name, p.value, p.info.unit, p.info.description);
  fmt::print("{:<44} {:>14.1f} {:<16} # derived: 2 x 256 x k0 x num_aic x freq\n", "peak.fp16_tflops",
             hw.peak_tflops(sim::DType::Fp16), "TFLOPS");
  return kExitOk;
}

struct RunArgs {
  std::vector<std::string> configs;
  std::vector<std::string> sets;
  std::string json, trace, out, tuned;
  bool quiet = false;
  bool functional = false;
};

// graph show: the operator graph of a model workload and the kernels its fusion plan makes.
int cmd_graph_show(const RunArgs& a) {
  for (const auto& c : a.configs) {
    app::LoadedRun run = app::load_run(c, a.sets);
    if (!run.graph) throw ConfigError(SourceLoc{c, 0, 0, "workload"}, "graph show needs a model workload (workload.model)");
    fmt::print("{}{}", graphs::format_graph(run.graph->graph), graphs::format_plan(run.graph->graph, run.graph->plan));
  }
  return kExitOk;
}

int cmd_check(const RunArgs& a) {
  for (const auto& c : a.configs) {
    app::LoadedRun run = app::load_run(c, a.sets);
    if (run.graph) {
      fmt::print("{}: ok ({} on {}, {} ops in {} kernels, fusion {})\n", c, run.graph->graph.name, run.hw.name,
                 run.graph->graph.ops.size(), run.graph->plan.groups.size(), run.graph->plan.label);
      continue;
    }
    fmt::print("{}: ok ({} on {}, tiling {}{})\n", c, run.kernel->name(), run.hw.name, run.kernel->tiling_json().dump(),
               run.kernel->tiling_is_default() ? " (default)" : "");
  }
  return kExitOk;
}

// run --tuned DB: a kernel the database has a validated best tiling for runs with it.
// A model block looks each kernel of its plan up as it is built (shapes follow the routing).
void use_tuned(const std::string& db_path, std::vector<app::LoadedRun>& runs) {
  auto db = std::make_shared<tuner::TuningDb>(db_path);
  for (auto& run : runs) {
    if (!run.kernel) {
      const std::string fp = tuner::hardware_fingerprint(run.hw);
      run.graph->tiling_for = [db, fp](const std::string&, const kernels::Kernel& k) -> std::optional<nlohmann::json> {
        auto best = db->best(fp, tuner::kernel_key(k));
        return best ? std::optional<nlohmann::json>(best->tiling) : std::nullopt;
      };
      continue;
    }
    auto best = db->best(tuner::hardware_fingerprint(run.hw), tuner::kernel_key(*run.kernel));
    if (!best) {
      fmt::print(stderr, "{}: no tuned tiling for {} on {} in {}; using the default\n", run.config_file, run.kernel->name(),
                 run.hw.name, db_path);
      continue;
    }
    run.kernel = tuner::build_candidate(*run.kernel, best->tiling, run.hw);
    fmt::print(stderr, "{}: tuned tiling from {} ({:.3f}x the default): {}\n", run.config_file, db_path,
               best->cycles > 0 ? best->default_cycles / best->cycles : 0.0, best->tiling.dump());
  }
}

// run (and validate, which is run --functional with the verdict as exit code).
int cmd_run(const RunArgs& a, const std::string& cmdline) {
  auto t0 = std::chrono::steady_clock::now();
  // Load every config first, so a bad one fails before any simulation runs or any file is written.
  std::vector<app::LoadedRun> runs;
  for (const auto& c : a.configs) runs.push_back(app::load_run(c, a.sets));
  if (!a.tuned.empty()) use_tuned(a.tuned, runs);
  if (!a.json.empty() && runs.size() > 1)
    throw ConfigError("--json takes one config; use --out DIR to write one report per config");
  std::vector<reports::RunReport> reports_out;
  reports::Trace trace;
  for (size_t i = 0; i < runs.size(); ++i) {
    auto t_run = std::chrono::steady_clock::now();
    sim::SimOptions opt;
    opt.trace = !a.trace.empty() && i == 0;
    reports::RunReport rep = app::make_report(runs[i].hw, a.configs[i], cmdline);
    if (runs[i].graph) {
      app::GraphOutput out = app::execute_graph(runs[i], a.functional, opt);
      if (opt.trace) trace = app::make_graph_trace(runs[i].hw, out.run);
      rep.kernels = std::move(out.kernels);
      rep.graph = std::move(out.graph);
    } else {
      app::RunOutput out = a.functional ? app::execute_functional(runs[i], opt) : app::execute(runs[i], opt);
      if (opt.trace) trace = app::make_trace(runs[i].hw, out.sim);
      rep.kernels.push_back(out.kernel);
    }
    rep.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
    reports_out.push_back(std::move(rep));
  }
  if (!a.json.empty()) reports::write_file_atomic(a.json, reports::json_text(reports::to_json(reports_out.front())));
  if (!a.out.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(a.out, ec);
    if (ec) throw ConfigError(fmt::format("cannot create output folder '{}': {}", a.out, ec.message()));
    std::set<std::string> used;
    for (size_t i = 0; i < runs.size(); ++i) {
      std::string stem = std::filesystem::path(a.configs[i]).stem().string();
      for (int n = 2; !used.insert(stem).second; ++n) stem = std::filesystem::path(a.configs[i]).stem().string() + "_" + std::to_string(n);
      reports::write_file_atomic((std::filesystem::path(a.out) / (stem + ".json")).string(),
                                 reports::json_text(reports::to_json(reports_out[i])));
    }
  }
  if (!a.trace.empty()) reports::write_file_atomic(a.trace, reports::json_text(reports::trace_json(trace), -1));
  bool all_passed = true;
  for (const auto& r : reports_out)
    for (const auto& k : r.kernels)
      if (k.validation) {
        all_passed = all_passed && k.validation->passed;
        if (!a.quiet || !k.validation->passed) fmt::print("{}", reports::format_validation(k.name, *k.validation));
      }
  if (!a.quiet) {
    fmt::print("{}", reports::format_table(reports_out));
    fmt::print("({} config(s) in {:.2f} s wall)\n", runs.size(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return all_passed ? kExitOk : kExitMismatch;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"npusim: a cycle-approximate Ascend-class NPU workbench"};
  cli.require_subcommand(1);
  cli.set_version_flag("--version", fmt::format("npusim {} (git {})", app::tool_version(), app::git_revision()));

  RunArgs run_args;
  auto add_run_opts = [&](CLI::App* sub, bool outputs, bool functional_flag = false) {
    sub->add_option("configs", run_args.configs, "run config YAML file(s)")->required();
    sub->add_option("--set", run_args.sets, "override a key: hardware.<param>=V, workload.<key>=V, tiling.<key>=V");
    if (outputs) {
      sub->add_option("--json", run_args.json, "write the JSON report here");
      sub->add_option("--trace", run_args.trace, "write a Chrome/Perfetto trace of the first config here");
      sub->add_option("--out", run_args.out, "write one JSON report per config (named after it) into this folder");
      sub->add_flag("--quiet", run_args.quiet, "do not print the table");
    }
    if (functional_flag)
      sub->add_option("--tuned", run_args.tuned, "use the best tilings stored in this tuning database (npusim tune --db)");
    if (functional_flag)
      sub->add_flag("--functional", run_args.functional,
                    "also execute on real numbers and validate against the CPU reference (report gains `validation`)");
  };
  CLI::App* run = cli.add_subcommand("run", "simulate config(s) and print the utilization table");
  add_run_opts(run, true, true);
  CLI::App* validate = cli.add_subcommand(
      "validate", "time and execute config(s) functionally, check the numbers (exit 0 pass, 1 mismatch, 2 config error)");
  add_run_opts(validate, true);
  CLI::App* check = cli.add_subcommand("check", "validate config(s) without simulating");
  add_run_opts(check, false);
  CLI::App* graph = cli.add_subcommand("graph", "operator graphs of model workloads");
  graph->require_subcommand(1);
  CLI::App* graph_show = graph->add_subcommand("show", "print a config's graph (tensors, ops) and its fusion plan's kernels");
  add_run_opts(graph_show, false);
  CLI::App* hw = cli.add_subcommand("hw", "hardware presets");
  hw->require_subcommand(1);
  hw->add_subcommand("list", "list the presets");
  CLI::App* show = hw->add_subcommand("show", "print a preset's resolved parameters with units");
  std::string hw_name;
  std::vector<std::string> hw_sets;
  show->add_option("name", hw_name, "preset name or hardware YAML path")->required();
  show->add_option("--set", hw_sets, "override hardware.<param>=<value>");

  // sweep, merge, compare, regress, tune: each registered from its own app/*_cli.cpp.
  std::vector<std::pair<std::unique_ptr<app::Command>, CLI::App*>> commands;
  for (const auto& make : app::command_registry()) {
    auto c = make();
    CLI::App* sub = c->add_to(cli);
    commands.emplace_back(std::move(c), sub);
  }

  try {
    cli.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return cli.exit(e);
  } catch (const CLI::ParseError& e) {
    cli.exit(e);
    return kExitConfig;
  }

  try {
    if (*run) return cmd_run(run_args, command_line(argc, argv));
    if (*validate) {
      run_args.functional = true;
      return cmd_run(run_args, command_line(argc, argv));
    }
    if (*check) return cmd_check(run_args);
    if (*graph_show) return cmd_graph_show(run_args);
    if (hw->got_subcommand("list")) return cmd_hw_list();
    if (hw->got_subcommand("show")) return cmd_hw_show(hw_name, hw_sets);
    for (auto& [c, sub] : commands)
      if (*sub) return c->run(command_line(argc, argv));
  } catch (const ConfigError& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return kExitConfig;
  } catch (const SimError& e) {
    fmt::print(stderr, "simulation error: {}\n", e.what());
    return kExitSim;
  } catch (const std::exception& e) {
    fmt::print(stderr, "internal error: {}\n", e.what());
    return kExitInternal;
  }
  return kExitInternal;
}
