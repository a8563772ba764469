// Regression suites: each case is a run config (plus --set overrides), run functionally and
// checked against the CPU reference, and its simulated cycles held against a committed baseline.
// Simulated cycles are deterministic, so the check is exact unless the case (or the suite) gives
// a tolerance.
//
// A suite file (strict YAML; paths relative to it):
//   name: kernels                          # optional: the file's stem
//   baseline: kernels.baseline.json        # optional: <stem>.baseline.json beside the suite
//   tolerance: {cycles: 0%}                # optional default for every case
//   cases:
//     - name: gemm_bf16_tails
//       config: ../workloads/gemm_bf16_tails_validate.yaml
//       set: [workload.m=1000]             # optional
//       validate: true                     # default: functional run against the CPU reference
//       tolerance: {cycles: 0.5%}          # optional: relative, on the total and on every kernel
//
// The baseline (JSON, keys sorted): {format, suite, cases: {NAME: {cycles, time_us, kernels:
// [{name, cycles}]}}}, rewritten atomically by --update-baseline.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/errors.hpp"

namespace npusim::app {

struct RegressCase {
  std::string name;
  std::string config;  // resolved against the suite's folder
  std::vector<std::string> sets;
  std::vector<SourceLoc> set_locs;
  bool validate = true;
  std::optional<double> tolerance;  // relative, on cycles; none: exact
  SourceLoc loc;
};

struct RegressSuite {
  std::string file, name, baseline;
  std::vector<RegressCase> cases;
};

RegressSuite load_suite(const std::string& file);

struct CaseResult {
  std::string name;
  bool ran = false;  // false: a simulation or run error (see failure)
  bool passed = false;
  std::string failure_type;  // "regression", "validation", "missing-baseline", "error"
  std::string failure;       // the reason, for the table and JUnit
  uint64_t cycles = 0;
  double time_us = 0;
  std::vector<std::pair<std::string, uint64_t>> kernels;  // per-kernel cycles, in run order
  std::optional<uint64_t> baseline_cycles;
  std::optional<bool> validation;  // validated cases: every kernel's verdict
  double seconds = 0;              // wall time
};

struct RegressOptions {
  std::string baseline;  // overrides the suite's
  bool update = false;
  std::string junit;
};

// The whole `npusim regress`: 0 all pass, 1 any fails, 2 bad suite or baseline.
int run_regress(const std::string& suite_file, const RegressOptions& opt);

// JUnit XML (testsuites/testsuite/testcase/failure) for CI systems.
std::string junit_xml(const RegressSuite& suite, const std::vector<CaseResult>& results,
                      double seconds);

}  // namespace npusim::app
