// HardwareSpec: the immutable, fully resolved description of one NPU (units resolved, defaults
// filled). It is parsed from a preset in configs/hardware/ (with `extends:` layering and
// `--set hardware.<path>=<value>` overrides) through the parameter table in hardware_params.cpp,
// which declares every parameter once: name, unit, description. The simulator is built from it.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sim/types.hpp"

namespace npusim {
class YamlDoc;
}

namespace npusim::sim {

// Cost of one data path. A transfer of B bytes costs `startup_cycles` (pipelined: a later
// transfer on the same pipe may start up while this one moves data) plus B / rate(B), where
// rate(B) follows the measured size dependence (`curve`, bytes -> B/cycle of the data phase,
// linear between points, clamped outside) or, without a curve, the theoretical `bytes_per_cycle`.
struct PathSpec {
  bool available = false;
  double startup_cycles = 0;
  double bytes_per_cycle = 0;
  std::vector<std::pair<double, double>> curve;

  double rate_at(double bytes) const;
  double data_cycles(double bytes) const { return bytes / rate_at(bytes); }
};

struct HardwareSpec {
  std::string name;
  int npu_arch = 0;
  double freq_mhz = 0;
  int num_aic = 0;
  int num_aiv = 0;
  int aiv_per_aic = 0;
  bool direct_aic_aiv = false;  // 3510: L0C->UB and UB->L1 paths; 2201: through GM only

  struct Hbm {
    double capacity_gib = 0;
    double peak_bw_gbs = 0;
    double efficiency = 1;  // sustained fraction of peak for large streaming copies
  } hbm;

  struct L2 {
    double size_mib = 0;
    int line_bytes = 512;
    double aggregate_bw_gbs = 0;        // reads, over all cores
    double aggregate_write_bw_gbs = 0;  // over all cores
    double hit_latency_cycles = 0;
    double miss_extra_latency_cycles = 0;
  } l2;

  struct Aic {
    int64_t l1_bytes = 0, l0a_bytes = 0, l0b_bytes = 0, l0c_bytes = 0, bt_bytes = 0, fb_bytes = 0;
    std::array<int, kNumDTypes> cube_k0{};  // K elements per fractal step; 0 = not supported
    double mmad_head_cycles = 0;            // pipelined start-up of one MMAD
    double mmad_issue_cycles = 0;           // per-instruction cost beyond the fractal count
    std::array<int, kNumPipes> queue_depth{};
  } aic;

  struct Aiv {
    int64_t ub_bytes = 0;
    double vector_startup_cycles = 0;  // pipelined start-up of one vector instruction
    double vector_issue_cycles = 0;    // minimum spacing of two vector instructions
    // Elements per cycle for each op and dtype; 0 = not supported.
    std::array<std::array<double, kNumDTypes>, kNumVecOps> vec_rate{};
    std::array<int, kNumPipes> queue_depth{};
  } aiv;

  double mte_issue_gap_cycles = 0;  // minimum spacing of two transfers issued on one MTE pipe
  double scalar_dispatch_cycles = 1;
  double scalar_group_cycles = 0;  // scalar work per group a grouped kernel walks (its block range)

  struct Sync {
    int event_ids = 8;
    int cross_flag_ids = 16;
    int cross_max_pending = 15;
    double set_wait_latency_cycles = 0;
    double cross_core_latency_cycles = 0;
  } sync;

  double launch_overhead_us = 0;
  std::array<PathSpec, kNumPaths> paths{};

  // Derived figures.
  double cycles_to_us(double cycles) const { return cycles / freq_mhz; }
  double hbm_bytes_per_cycle() const { return hbm.peak_bw_gbs * 1e3 / freq_mhz; }
  double cube_macs_per_cycle(DType d) const { return 16.0 * 16.0 * aic.cube_k0[static_cast<int>(d)]; }
  double peak_tflops(DType d) const { return 2.0 * cube_macs_per_cycle(d) * num_aic * freq_mhz * 1e-6; }
  const PathSpec& path(Path p) const { return paths[static_cast<int>(p)]; }
};

// One declared parameter, as `npusim hw show` prints it.
struct ParamInfo {
  std::string name;  // dotted path below `hardware`
  std::string unit;
  std::string description;
};

// Parses a layered hardware document (root path "hardware"). Throws ConfigError with the key path.
HardwareSpec parse_hardware(const std::shared_ptr<YamlDoc>& doc);

// Every declared parameter with its resolved value rendered for display (units appended).
struct ParamValue {
  ParamInfo info;
  std::string value;
};
std::vector<ParamValue> describe_hardware(const HardwareSpec& spec);

}  // namespace npusim::sim
