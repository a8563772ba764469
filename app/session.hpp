// What the command line does, as library calls: load a run config (hardware preset + overrides,
// workload, tiling) into specs, check it, simulate it, and turn the result into a report.
// Tests, benchmarks and (later) the tuner call these directly.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "graphs/graph.hpp"
#include "graphs/plan.hpp"
#include "kernels/indices.hpp"
#include "kernels/kernel.hpp"
#include "kernels/tensor_io.hpp"
#include "kernels/validation.hpp"
#include "reports/result.hpp"
#include "sim/engine.hpp"
#include "sim/hardware_spec.hpp"

namespace npusim::app {

// Folder holding hardware/ presets: $NPUSIM_CONFIG_DIR, else the source tree's configs/.
std::string config_dir();

// Names of the hardware presets (files in configs/hardware/ with a `name:` key).
std::vector<std::string> list_presets();

// Resolves a preset name or a path to a hardware YAML, applying `hardware.*` --set overrides.
sim::HardwareSpec load_hardware(const std::string& name_or_path, const std::vector<std::string>& sets = {});

// Programs above this many instructions are refused before lowering (about 40 bytes each);
// NPUSIM_MAX_INSTRUCTIONS raises or lowers it.
inline constexpr double kDefaultMaxInstructions = 2e8;
inline constexpr const char* kInstructionLimitHint =
    " (raise it with the environment variable NPUSIM_MAX_INSTRUCTIONS, e.g. NPUSIM_MAX_INSTRUCTIONS=5e8, "
    "or use larger tiles)";
double max_instructions();

// A run config names either one kernel (`workload.op`) or a block of a model (`workload.model`),
// which becomes an operator graph run under a fusion plan (`fusion:`).
struct GraphWorkload {
  graphs::Graph graph;
  graphs::FusionPlan plan;
  graphs::RoutingChoice routing;   // MoE blocks
  kernels::IndexSpec indices;      // attention blocks: drawn index sets, or from_indexer
  std::string block, phase, layer;
  int64_t tokens = 0;              // query rows (MoE: tokens; attention: batch in decode, tokens in prefill)
  int64_t batch = 0, context = 0;  // attention blocks
  // Tilings over the plan's defaults, per kernel group (run --tuned); empty: the defaults.
  std::function<std::optional<nlohmann::json>(const std::string& group, const kernels::Kernel& k)> tiling_for;
};

struct LoadedRun {
  std::string config_file;
  sim::HardwareSpec hw;
  std::unique_ptr<kernels::Kernel> kernel;  // null for a graph workload
  std::optional<GraphWorkload> graph;
  kernels::InputSpec inputs;  // for functional runs (`inputs:` section)
  // The config as run, runnable with `npusim run`: the document after the --set overrides, keys
  // sorted, comments dropped, hardware.* overrides folded into `hardware: {preset: NAME, ...}`.
  // Sweeps hash it (with the resolved hardware) into a point's id.
  std::string resolved_config;
};

// While one lives (on any thread), load_run resolves each distinct hardware (preset, the config's
// hardware overrides, hardware.* sets) once and reuses it, instead of reading and checking the
// preset files again: a sweep loads thousands of points on a few presets. Failures are not kept.
class HardwareCacheScope {
 public:
  HardwareCacheScope();
  ~HardwareCacheScope();
  HardwareCacheScope(const HardwareCacheScope&) = delete;
  HardwareCacheScope& operator=(const HardwareCacheScope&) = delete;
};

// Parses and validates a run config; a tiling that cannot run is a ConfigError at its key.
// `sets` are "key.path=value": hardware=NAME (replaces the preset), hardware.<param>,
// workload.<key>, tiling.<key>, inputs.<key>, fusion.
LoadedRun load_run(const std::string& config_file, const std::vector<std::string>& sets = {});

struct RunOutput {
  reports::KernelReport kernel;
  sim::SimResult sim;
};

RunOutput execute(const LoadedRun& run, const sim::SimOptions& opt = {});

// A graph workload's run: one report entry per kernel, the graph summary and the routing.
struct GraphOutput {
  std::vector<reports::KernelReport> kernels;
  reports::GraphSummary graph;
  graphs::GraphRun run;
};
GraphOutput execute_graph(const LoadedRun& run, bool functional, const sim::SimOptions& opt = {});

// Memory a functional run of `run` would allocate (GM image, on-chip buffers, inputs, references).
uint64_t functional_bytes_needed(const LoadedRun& run);
// The most a functional run may allocate: $NPUSIM_MAX_FUNCTIONAL_BYTES, else 80% of physical memory.
uint64_t functional_bytes_limit();

// Times the kernel and executes it on real numbers from the same program, then checks the output
// against the CPU reference. Refuses (ConfigError) a run that would exceed functional_bytes_limit().
RunOutput execute_functional(const LoadedRun& run, const sim::SimOptions& opt = {});
// The same on a program already lowered with operands (tests use it to break programs on purpose).
RunOutput execute_functional(const LoadedRun& run, const sim::Program& prog, const sim::SimOptions& opt = {});

// A kernel's validation for the report; several outputs give one entry each under `outputs`.
reports::ValidationReport to_report(const kernels::Validation& v);
reports::ValidationReport to_report(const std::vector<kernels::OutputValidation>& outs);

// Builds the report's kernel entry from a simulation.
reports::KernelReport summarize(const sim::HardwareSpec& hw, const kernels::Kernel& k, const sim::SimResult& r);

// The report header (tool, hardware parameters) for a run on `hw`.
reports::RunReport make_report(const sim::HardwareSpec& hw, const std::string& config_file,
                               const std::string& command_line);

// One track per core and pipe that did work.
reports::Trace make_trace(const sim::HardwareSpec& hw, const sim::SimResult& r);

// The kernels of a graph run on one timeline, in stream order with their launch gaps.
reports::Trace make_graph_trace(const sim::HardwareSpec& hw, const graphs::GraphRun& run);

std::string tool_version();
std::string git_revision();

}  // namespace npusim::app
