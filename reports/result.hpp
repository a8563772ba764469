// The result model every writer reads: plain data, no simulator types. The JSON keys are a public
// contract (see docs/report-schema.md); bump kSchemaVersion when one changes meaning.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace npusim::reports {

inline constexpr int kSchemaVersion = 1;

struct Utilization {  // fractions 0..1 of the kernel time, averaged over the chip's cores
  double cube = 0, vector = 0, mte1 = 0, mte2 = 0, mte3 = 0, fixpipe = 0, hbm_bw = 0;
};

struct Traffic {
  uint64_t gm_read = 0, gm_write = 0;   // bytes requested by transfers
  uint64_t hbm_read = 0, hbm_write = 0;  // bytes that reached HBM (write: incl. final write-back)
  double l2_hit_rate = 0;               // read lines found in L2
};

struct Mismatch {
  uint64_t index;
  int64_t row, col;
  double device, golden, abs_err;
};

// A functional run's numbers against the CPU reference (KERNELS.md 5.2).
struct ValidationReport {
  bool passed = false;
  double max_abs_err = 0, max_rel_err = 0, cos_diff = 0, mere = 0, mare = 0, ratio_to_same_precision = 0;
  uint64_t elements = 0, failed_elements = 0, nonfinite_mismatches = 0;
  nlohmann::json tolerance;
  std::vector<std::string> failures;
  std::vector<Mismatch> worst;
  // Kernels with several outputs: one report per output tensor. The fields above are then the
  // first output's figures, `passed` holds only when every output passes, and `failures` / `worst`
  // gather every output's, each failure prefixed with its output's name.
  struct Output;
  std::vector<Output> outputs;
};

struct ValidationReport::Output {
  std::string name;
  ValidationReport report;
};

struct KernelReport {
  std::string name;
  std::string op;
  nlohmann::json tiling;
  bool tiling_default = false;
  uint64_t cycles = 0;
  double time_us = 0;
  double flops = 0;
  double tflops = 0;
  double peak_fraction = 0;  // achieved rate over the unit's peak (cube for GEMM, vector for AIV ops)
  uint64_t instructions = 0;
  int aic_used = 0, aiv_used = 0;
  Traffic bytes;
  Utilization utilization;
  std::optional<ValidationReport> validation;  // functional runs only
  nlohmann::json details;                      // kernel-specific keys (e.g. routing), null for none
};

// A graph workload (a model block under a fusion plan): its kernels run in order on one stream.
struct GraphSummary {
  std::string model, block, phase, fusion;
  int64_t tokens = 0;
  std::string layer;                // attention blocks: dense | dsa | csa | hca | swa
  int64_t batch = 0, context = 0;   // attention blocks
  std::string index_source;         // attention blocks: where the sparse index sets came from
  double total_us = 0;          // kernels one after another, each with its launch overhead
  double launch_us = 0;         // per kernel
  double critical_path_us = 0;  // longest chain through the kernel DAG (branches overlapped)
  std::vector<std::string> critical_path;  // kernel names along it
  std::vector<std::string> notes;          // confidence of the model's shapes
  // The routing the expert kernels ran (empty when the graph has no routing).
  std::string routing_source;
  std::vector<int64_t> tokens_per_expert;
  double imbalance = 0;  // max / mean
};

struct HardwareParam {
  std::string name, unit, value;
};

struct RunReport {
  std::string tool_version;
  std::string git_revision;
  std::string command_line;
  std::string config_file;
  std::string hardware_name;
  double freq_mhz = 0;
  double hbm_peak_gbs = 0;
  std::vector<HardwareParam> hardware;
  std::vector<KernelReport> kernels;
  std::optional<GraphSummary> graph;
  double wall_seconds = 0;  // wall-clock: excluded from determinism checks
};

// One track per core and pipe; slices never overlap on a track.
struct TraceSlice {
  uint32_t track;
  std::string name;
  std::string category;
  double start_us, dur_us;
};
struct TraceTrack {
  int process;  // one per core
  int thread;   // one per pipe
  std::string process_name, thread_name;
};
struct Trace {
  std::vector<TraceTrack> tracks;
  std::vector<TraceSlice> slices;
};

}  // namespace npusim::reports
