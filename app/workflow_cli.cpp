// The sweep, merge and regress subcommands (registered through app/command.hpp).
#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "app/command.hpp"
#include "app/regress.hpp"
#include "app/sweep.hpp"

namespace npusim::app {
namespace {

class SweepCommand : public Command {
 public:
  CLI::App* add_to(CLI::App& cli) override {
    CLI::App* sub = cli.add_subcommand(
        "sweep", "run every point of a sweep (base config x axes of --set overrides)");
    sub->add_option("sweep", file_, "sweep YAML (base:, axes:, zip:)")->required();
    sub->add_option("--out", opt_.out,
                    "output folder: points/<id>/, sweep.yaml, report.{h5,html,json,csv}")
        ->capture_default_str();
    sub->add_option("--jobs,-j", opt_.jobs, "points run in parallel")->capture_default_str();
    sub->add_option(
        "--shard", shard_,
        "run slice i of N (1-based; e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT), "
        "then `npusim merge`");
    sub->add_flag("--resume", opt_.resume, "skip points already finished in --out");
    sub->add_flag("--mpi", opt_.mpi,
                  built_with_mpi() ? "share the points across MPI ranks (rank 0 coordinates)"
                                   : "share the points across MPI ranks (this build has no MPI)");
    return sub;
  }
  int run(const std::string&) override {
    if (!shard_.empty()) opt_.shard = parse_shard(shard_);
    return run_sweep(file_, opt_);
  }

 private:
  std::string file_, shard_;
  SweepOptions opt_;
};

class MergeCommand : public Command {
 public:
  CLI::App* add_to(CLI::App& cli) override {
    CLI::App* sub = cli.add_subcommand(
        "merge", "merge the point folders of a sweep's shards or MPI run into one report");
    sub->add_option("dirs", dirs_, "sweep output folder(s) (each with sweep.yaml and points/)")
        ->required();
    sub->add_option("-o,--output", outputs_, "report file(s): .h5, .json, .csv or .html")
        ->required();
    sub->add_flag("--allow-partial", allow_partial_,
                  "write the report even when points are missing");
    return sub;
  }
  int run(const std::string&) override { return merge_sweeps(dirs_, outputs_, allow_partial_); }

 private:
  std::vector<std::string> dirs_, outputs_;
  bool allow_partial_ = false;
};

class RegressCommand : public Command {
 public:
  CLI::App* add_to(CLI::App& cli) override {
    CLI::App* sub = cli.add_subcommand("regress",
                                       "run a regression suite against its baseline (exit 0 pass, "
                                       "1 regression or mismatch, 2 bad suite)");
    sub->add_option("suite", file_, "suite YAML (cases: name, config, set, validate, tolerance)")
        ->required();
    sub->add_option("--baseline", opt_.baseline,
                    "baseline JSON (default: the suite's `baseline:`)");
    sub->add_flag("--update-baseline", opt_.update,
                  "rewrite the baseline from this run and print the changes");
    sub->add_option("--junit", opt_.junit, "write JUnit XML here");
    return sub;
  }
  int run(const std::string&) override { return run_regress(file_, opt_); }

 private:
  std::string file_;
  RegressOptions opt_;
};

const RegisterCommand kSweep{[] { return std::make_unique<SweepCommand>(); }};
const RegisterCommand kMerge{[] { return std::make_unique<MergeCommand>(); }};
const RegisterCommand kRegress{[] { return std::make_unique<RegressCommand>(); }};

}  // namespace
}  // namespace npusim::app
