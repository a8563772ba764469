// A sweep's results: one point per resolved config, the axis values that made it, and its run
// report. Writers lay it out for pandas (HDF5 compound tables, CSV, JSON); readers give compare a
// flat view of any report file. Keys and columns are a public contract (docs/report-schema.md).
#pragma once

#include <array>
#include <string>
#include <utility>
#include <vector>

#include "reports/result.hpp"

namespace npusim::reports {

struct SweepPoint {
  std::string id;                 // stable: a hash of the point's resolved config
  std::vector<std::string> keys;  // one value per SweepReport::key_columns, as text
  RunReport report;
};

struct SweepReport {
  std::string tool_version, git_revision, command_line;
  std::string sweep_yaml;                // the resolved sweep, UTF-8 YAML
  std::vector<std::string> key_columns;  // axis key paths, e.g. "hardware", "workload.tokens"
  std::vector<SweepPoint> points;        // in point order
};

// The utilization fields by their report name, in report order (JSON keys, metric and table
// columns, /units rows).
inline constexpr std::array<std::pair<const char*, double Utilization::*>, 7> kUtilizationFields{{
    {"cube", &Utilization::cube},
    {"vector", &Utilization::vector},
    {"mte1", &Utilization::mte1},
    {"mte2", &Utilization::mte2},
    {"mte3", &Utilization::mte3},
    {"fixpipe", &Utilization::fixpipe},
    {"hbm_bw", &Utilization::hbm_bw},
}};

// The scalar metrics of one point (one column each in the points table), in a fixed order:
// cycles and time of the whole run, and its kernels' utilization weighted by their time.
std::vector<std::pair<std::string, double>> point_metrics(const RunReport& r);
// The names point_metrics() returns, in its order.
const std::vector<std::string>& point_metric_names();

// A run report back from its JSON (the inverse of to_json(RunReport)); throws std::runtime_error
// naming what is missing.
RunReport run_report_from_json(const nlohmann::json& j);

nlohmann::json to_json(const SweepReport& s);
std::string to_csv(const SweepReport& s);  // one row per point: id, key columns, metrics
// Writes the HDF5 report atomically (temporary name, then rename), with no timestamps: the same
// report gives the same bytes. Throws ConfigError "cannot write '<path>': <why>" and leaves no
// temporary file.
void write_hdf5(const SweepReport& s, const std::string& path);

}  // namespace npusim::reports
