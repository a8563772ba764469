// Any report file as a flat table of points: what `npusim compare` reads. Accepts a single run's
// JSON (`npusim run --json`: one point, no key columns), a sweep's JSON (to_json(SweepReport)) and
// a sweep's HDF5 (write_hdf5; recognised by its signature, not its extension). Every point carries
// the point_metrics() columns, so the three formats of one sweep read the same.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/errors.hpp"

namespace npusim::reports {

// A report that cannot be read: the message names the file and what is wrong. A ConfigError (the
// user named the file), so the command line reports it like any bad input.
class ReportError : public ConfigError {
 public:
  using ConfigError::ConfigError;
};

struct FlatReport {
  int schema_version = 0;
  std::string source;  // the file read
  std::string format;  // "run-json" | "sweep-json" | "hdf5"
  std::vector<std::string> key_columns;
  std::vector<std::string> metric_names;  // point_metric_names() order, then any unknown ones
  struct Point {
    std::string id;
    std::vector<std::string> keys;  // aligned with key_columns
    std::vector<double> metrics;    // aligned with metric_names; NaN for no value
  };
  std::vector<Point> points;  // in file order

  // Index of a metric in metric_names, if the report has it.
  std::optional<size_t> metric_index(const std::string& name) const;
};

FlatReport read_report(const std::string& path);

// The same from an already parsed JSON report (a run's or a sweep's); `source` names it in errors.
FlatReport flatten_report(const nlohmann::json& j, const std::string& source);

}  // namespace npusim::reports
