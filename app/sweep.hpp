// Sweeps: a base run config (or a list of them) crossed with axes of `--set` overrides, each point
// run once into its own folder, then gathered into one SweepReport.
//
// A sweep file (strict YAML):
//   name: tokens_vs_bw                      # optional
//   base: ../workloads/v4_flash_moe_decode.yaml   # or a list: then `base` is the first axis
//   axes:                                   # cartesian product in the order written, last fastest
//     hardware: [ascend910b2, ascend950pr]
//     workload.tokens: [60, 240, 960]
//   zip:                                    # optional: each map is one dimension, its axes
//   lock-step
//     - {tiling.l1: [[128,256,256], [256,128,256]], tiling.l0: [[128,256,64], [256,128,64]]}
// `axes` and `zip` dimensions follow the order of the two keys in the file.
//
// Contract:
// - Every point is validated (load_run) before anything runs or is written; an error names the
//   axis's file:line:col in the sweep file.
// - A point's id hashes its resolved config (the hardware as its resolved parameters), never
//   its index: the same config is the same point, in any sweep (`1.6TB/s` and 1600 alike).
// - OUT/points/<id>/ (config.yaml, report.json, log.txt) is built as
//   OUT/points/.tmp-<id>-<host>-<pid>/ (its files flushed to disk) and renamed, so readers see
//   whole points only and a process killed at any moment loses only the points in flight;
//   --resume skips points with a report.json and removes the temporaries of dead processes.
// - Every other file (sweep.yaml, the reports) is written to a temporary name and renamed
//   (reports::write_file_atomic): a full disk or an unwritable folder is a ConfigError naming the
//   file, and the previous file, if any, stays whole.
// - The report is assembled from the point folders in point order, so a resumed, sharded, parallel
//   or MPI sweep gives the same bytes as a single-process one (wall-clock fields aside).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "app/session.hpp"
#include "common/errors.hpp"
#include "reports/sweep_report.hpp"

namespace npusim::app {

// ---------------------------------------------------------------------------------------------
// The sweep file and its points

// One key column: a key path as --set takes it (or "base") and its values as YAML text.
struct SweepAxis {
  std::string key;
  std::string where;  // "axes.workload.tokens", "zip[0].tiling.l1", "base": for messages
  SourceLoc loc;      // the key in the sweep file
  std::vector<std::string> values;
  std::vector<SourceLoc> value_locs;
  size_t dim = 0;  // the dimension of the product it belongs to (a zip group's axes share one)
};

struct SweepSpec {
  std::string file;  // as given
  std::string name;
  std::string text;                // the file, verbatim (kept in the resolved sweep)
  std::vector<std::string> bases;  // paths as written (relative to the sweep file)
  std::vector<SweepAxis> axes;     // the key columns, in order
  std::vector<size_t> dims;        // the length of each dimension, outermost first
  size_t num_points() const;
};

// Parses a sweep file strictly; an empty axis, unequal zip lengths or a repeated key is a
// ConfigError at its line and column.
SweepSpec load_sweep(const std::string& file);

struct PlannedPoint {
  size_t index = 0;
  std::vector<std::string> keys;  // one value per SweepSpec::axes
  std::string base;               // the base config's path (resolved against the sweep file)
  std::vector<std::string> sets;  // "key=value" for load_run
  std::string config_text;        // config.yaml: the resolved config and the resolved hardware
  std::string id;                 // hash of the resolved config, hardware as resolved parameters
  size_t first = 0;               // index of the first point with this id (itself if unique)
  std::shared_ptr<const LoadedRun> run;  // the validated run (first of its id), dropped once run
};

struct SweepPlan {
  SweepSpec spec;
  std::string command;  // "npusim sweep FILE": the report's command line (no --jobs etc.)
  std::vector<PlannedPoint> points;
  std::string sweep_id;       // hash of the key columns and every point's id and keys
  std::string resolved_yaml;  // OUT/sweep.yaml
};

// Expands the product and validates every point. `keep_runs`: hold each LoadedRun for running.
SweepPlan plan_sweep(const SweepSpec& spec, bool keep_runs = true);

// 16 hex digits of the 64-bit FNV-1a hash of `text`.
std::string hash_hex(const std::string& text);

// The resolved sweep (OUT/sweep.yaml) read back: what merge needs to order and label points.
struct SweepManifest {
  std::string file;  // where it was read from
  std::string name, command, sweep_id, text;
  std::vector<std::string> key_columns;
  struct Point {
    std::string id;
    std::vector<std::string> keys;
  };
  std::vector<Point> points;
};
SweepManifest read_manifest(const std::string& file);
SweepManifest manifest_of(const SweepPlan& plan);

// ---------------------------------------------------------------------------------------------
// Running

struct Shard {
  int index = 1, count = 1;  // 1-based: this process runs points with index % count == index - 1
  bool active() const { return count > 1; }
};
// "i/N" with 1 <= i <= N; anything else is a ConfigError.
Shard parse_shard(const std::string& text);

struct SweepOptions {
  std::string out = "runs";
  int jobs = 1;
  Shard shard;
  bool resume = false;
  bool mpi = false;
};

// The whole `npusim sweep`: returns the exit code (0; 4 when a point failed at simulation, 3 when
// one failed otherwise; 130 when interrupted, with the finished points kept).
int run_sweep(const std::string& file, const SweepOptions& opt);
// The same across MPI ranks (sweep_mpi.cpp); a ConfigError when npusim was built without MPI.
int run_sweep_mpi(const std::string& file, const SweepOptions& opt);
bool built_with_mpi();

// Checks OUT against the plan (another sweep's points need --resume), creates it, writes
// OUT/sweep.yaml and returns the indices of the points this process must run (first of each id,
// in its shard, not already finished when resuming). Nothing is written on error.
std::vector<size_t> prepare_out(const SweepPlan& plan, const SweepOptions& opt);

struct PointOutcome {
  bool ok = false;
  int exit_code = 0;  // of a failed point: kExitSim, kExitInternal, ...
  std::string error;
  double seconds = 0;
  // Its folder could not be written (disk full, folder gone): every later point would fail the
  // same way, so the sweep starts no new point and writes no report (exit 2).
  bool unwritten = false;
};
// Runs one point and writes its folder atomically. Never throws: failures are in the outcome
// (and in the point's log.txt).
PointOutcome run_point(const PlannedPoint& p, const std::string& out);
// Its two halves: the simulation (timing only; the report JSON when it succeeds), and the point
// folder written under a temporary name and renamed (throws std::runtime_error when it cannot).
PointOutcome simulate_point(const PlannedPoint& p, std::string& report_json);
void write_point_dir(const PlannedPoint& p, const std::string& out, const PointOutcome& o,
                     const std::string& report_json);

// "<id> key=value ..." (a base config by its file stem), for progress and messages.
std::string point_label(const SweepPlan& plan, const PlannedPoint& p);

// Progress on stderr: one updating line on a terminal, else a line every 10 s or 10% of points.
class Progress {
 public:
  Progress(size_t total, size_t already_done);
  void point_done(const std::string& label, const PointOutcome& o);  // label: point_label()
  void finish();

 private:
  struct State;
  std::shared_ptr<State> s_;
};

// SIGINT/SIGTERM set a flag while an InterruptGuard lives: no new point starts, the ones in
// flight finish. A second signal kills as usual.
class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
  static bool interrupted();
};

// Runs `todo` on `jobs` threads, in order of index (each point's LoadedRun is released once it
// ran); returns one outcome per entry of `todo`. Stops starting points after an unwritten one.
std::vector<PointOutcome> run_points(SweepPlan& plan, const std::vector<size_t>& todo, int jobs,
                                     const std::string& out, Progress& progress);

// The exit code of a finished sweep and its closing lines on stderr (interrupt, failures, a point
// folder that could not be written).
int finish_sweep(const SweepPlan& plan, const SweepOptions& opt, const std::vector<size_t>& todo,
                 const std::vector<PointOutcome>& outcomes, bool interrupted);
// Whether the sweep stopped early (interrupted, or a point folder could not be written): then no
// report is written, and finish_sweep told how to resume.
bool stopped_early(const std::vector<PointOutcome>& outcomes, bool interrupted);

// ---------------------------------------------------------------------------------------------
// Reports

// After a whole (unsharded) sweep: OUT/report.{json,csv,h5,html} from the point folders, and the
// summary table on stdout. `seconds`: the sweep's wall time, for the closing line on stderr.
void publish_reports(const SweepPlan& plan, const std::string& out, double seconds);

// The report of the points under `dirs` (each a sweep's OUT), in the manifest's order. Points
// without a report.json are listed in `missing` (ids) and left out.
reports::SweepReport assemble_report(const SweepManifest& m, const std::vector<std::string>& dirs,
                                     std::vector<std::string>* missing);

// Writes `report` to `path` by its extension: .json, .csv, .h5/.hdf5, .html (atomically).
void write_report(const reports::SweepReport& report, const std::string& path);
// Throws ConfigError for an extension write_report does not know.
void check_report_path(const std::string& path);

// One line per point: its keys, time_us, cycles, cube %, vector %, hbm_bw %.
std::string format_summary(const reports::SweepReport& report);

// `npusim merge`: returns the exit code (2 when points are missing, unless allow_partial).
int merge_sweeps(const std::vector<std::string>& dirs, const std::vector<std::string>& outputs,
                 bool allow_partial);

}  // namespace npusim::app
