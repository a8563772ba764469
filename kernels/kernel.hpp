// The kernel-template interface. A template is parsed from the run config's `workload:` and
// `tiling:` sections (a missing tiling gets the template's documented default heuristic), answers
// can_implement() on a given hardware before anything is lowered, and lowers itself into a
// per-core sim::Program. Templates are chosen by `workload.op` from the registry below.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/yaml_reader.hpp"
#include "kernels/search_space.hpp"
#include "sim/hardware_spec.hpp"
#include "sim/program.hpp"

namespace npusim::kernels {

struct InputSpec;  // tensor_io.hpp

// Why a tiling cannot run, and which config key to blame (dotted path, "" when none).
struct Status {
  bool ok = true;
  std::string reason;
  std::string key;
  static Status good() { return {}; }
  static Status bad(std::string key, std::string reason) { return {false, std::move(reason), std::move(key)}; }
};

// How a tensor is stored in GM: row-major, column-major (the transpose row-major), or the cube's
// zN fractal format (16-column strips of the 16-padded row count).
enum class TensorLayout { RowMajor, ColMajor, Nz };

// A GM tensor of a lowered kernel, seen as a rows x cols matrix (vectors: one row).
struct TensorInfo {
  std::string name;
  sim::DType dtype;
  int64_t rows, cols;
  TensorLayout layout;
  uint64_t addr;
  bool output;
};

// The references a device output is judged against (KERNELS.md 5.2): `exact` computed in fp64 from
// the operand values the device sees, and `same_precision` emulating the kernel's own rounding
// points (fp32 accumulation, output rounding) for the ratio test.
struct Golden {
  std::vector<double> exact;
  std::vector<double> same_precision;
};

class Kernel {
 public:
  virtual ~Kernel() = default;
  virtual std::string op() const = 0;
  virtual std::string name() const = 0;                // shape-bearing name for reports
  virtual nlohmann::json tiling_json() const = 0;      // the tiling actually used
  virtual bool tiling_is_default() const = 0;
  virtual Status can_implement(const sim::HardwareSpec& hw) const = 0;
  // Per-core programs; with `functional` each work instruction also carries its operands.
  virtual sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const = 0;
  // GM tensors in the order lower() places them: inputs first, then the outputs.
  virtual std::vector<TensorInfo> tensors() const = 0;
  // References for the (first) output from the inputs' device values (row-major, one per input).
  virtual Golden reference(const std::vector<std::vector<double>>& inputs) const = 0;
  // References for every output, in tensors() order. `device` holds the device's outputs, for
  // kernels whose reference depends on a legitimate device choice: a top-k pick among tied scores
  // (KERNELS.md 5.4) is accepted when tie-equivalent, and what follows from the pick (the weights
  // of the chosen experts) is derived from the device's pick.
  virtual std::vector<Golden> references(const std::vector<std::vector<double>>& inputs,
                                         const std::vector<std::vector<double>>& device) const {
    (void)device;
    return {reference(inputs)};
  }
  virtual double flops() const = 0;                    // arithmetic work (MACs x 2 for GEMM)
  virtual double compulsory_bytes() const = 0;         // each operand read once, output written once
  virtual double peak_flops_per_cycle(const sim::HardwareSpec& hw) const = 0;  // for "% of peak"
  // Instructions lower() will emit, computed without lowering (for limits checked up front).
  virtual double estimated_instructions() const = 0;
  // Functional-run input values for tensor `index` of tensors(). The default draws them from the
  // run's `inputs:` spec (generate_input); kernels whose inputs carry structure override it for
  // those tensors (expert ids in [0, E), the routing the kernel was lowered for, a hash table).
  virtual std::vector<double> make_input(size_t index, const InputSpec& spec) const;
  // Extra report keys of this kernel (e.g. the routing a grouped GEMM ran); null for none.
  virtual nlohmann::json details() const { return nullptr; }

  // Tuning. The tilings the tuner may try for this shape on `hw` (no parameters: nothing to tune).
  virtual SearchSpace search_space(const sim::HardwareSpec& hw) const {
    (void)hw;
    return {};
  }
  // The same kernel (shape, routing, operands) with `tiling` parsed over this kernel's defaults,
  // exactly as a `tiling:` section would be; the result may fail can_implement().
  virtual std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const {
    (void)hw;
    tiling.fail(op() + " has no tiling to set");
  }
  // A smaller problem with this tiling that takes the same code paths (a few of many experts: the
  // fullest, the emptiest non-empty, an empty one), to validate a tiling whose full functional run
  // does not fit in memory; null when the template has no such reduction.
  virtual std::unique_ptr<Kernel> reduced_for_validation() const { return nullptr; }
  // Identifies the problem a tiling is tuned for (op, shape, dtypes, layouts, routing), for the
  // tuning database; two kernels with equal signatures accept the same tilings.
  virtual nlohmann::json signature() const { return {{"op", op()}, {"name", name()}, {"details", details()}}; }
};

// Parses `workload` (and `tiling`, when present) for the op it names.
using KernelFactory = std::function<std::unique_ptr<Kernel>(const YamlNode& workload,
                                                            const std::optional<YamlNode>& tiling,
                                                            const sim::HardwareSpec& hw)>;

struct KernelEntry {
  std::string op;
  std::string description;
  KernelFactory make;
};
const std::vector<KernelEntry>& kernel_registry();

// Looks up workload.op and builds the kernel; an unknown op names the known ones.
std::unique_ptr<Kernel> make_kernel(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                    const sim::HardwareSpec& hw);

// GM layout helper: tensors placed one after another, each aligned to 512 bytes (an L2 line).
class GmAllocator {
 public:
  uint64_t alloc(uint64_t bytes) {
    uint64_t at = next_;
    next_ = (next_ + bytes + 511) / 512 * 512;
    return at;
  }
  uint64_t footprint() const { return next_; }

 private:
  uint64_t next_ = 0;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

}  // namespace npusim::kernels
