// The tuning database: SQLite in WAL mode, one file shared by tuning runs. Every evaluation is
// stored as it completes (one transaction per batch), keyed by hardware fingerprint (a hash of the
// resolved parameters), kernel signature (op, shape, dtypes, layouts, routing) and tiling, so a run
// killed at any moment loses at most the batch in flight and a rerun reuses the rest. `best` holds
// only winners that passed functional validation. A file that is not a database, or is damaged, is
// reported and never overwritten; a database written by a newer npusim is refused.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

struct sqlite3;

namespace npusim::tuner {

inline constexpr int kDbSchemaVersion = 1;

struct StoredEvaluation {
  std::string tiling;  // canonical JSON of the `tiling:` section
  std::string status;  // ok | pruned | failed
  double cycles = 0;   // ok only
  std::string reason;  // pruned / failed: why
};

struct BestRecord {
  std::string hardware, kernel;  // fingerprint, signature hash
  std::string hardware_name, op;
  nlohmann::json signature, tiling, validation;
  double cycles = 0, time_us = 0, default_cycles = 0;
  std::string strategy;
  uint64_t seed = 0;
  int64_t evaluations = 0;
  std::string tool_version;
};

class TuningDb {
 public:
  // Opens or creates `path`; throws ConfigError when it is corrupt, not a database, or newer.
  explicit TuningDb(const std::string& path);
  ~TuningDb();
  TuningDb(const TuningDb&) = delete;
  TuningDb& operator=(const TuningDb&) = delete;

  std::vector<StoredEvaluation> evaluations(const std::string& hardware, const std::string& kernel) const;
  void record(const std::string& hardware, const std::string& kernel, const std::vector<StoredEvaluation>& batch);
  std::optional<BestRecord> best(const std::string& hardware, const std::string& kernel) const;
  void store_best(const BestRecord& b);
  void store_hardware(const std::string& fingerprint, const std::string& name, const nlohmann::json& parameters);
  // Everything: hardware, best records, evaluation counts (for `npusim tune --export`).
  nlohmann::json export_json() const;
  const std::string& path() const { return path_; }

 private:
  void exec(const char* sql) const;
  std::string path_;
  sqlite3* db_ = nullptr;
};

}  // namespace npusim::tuner
