// libFuzzer target: the sweep expander (app::load_sweep, then app::plan_sweep, which loads and
// checks every point) on the input as a sweep file beside the fixture configs (gemm.yaml,
// vector.yaml, moe.yaml, attention.yaml, graph_model.yaml), and the two other YAML files of the
// sweep workflow on the same bytes: the resolved sweep `npusim merge` reads (read_manifest) and a
// regress suite (load_suite).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "app/regress.hpp"
#include "app/sweep.hpp"
#include "fuzz_support.hpp"

namespace {

// plan_sweep loads every point (a millisecond or more each); the tool itself accepts up to 10^6
// points, which is a plan, not a bug, so larger products are expanded no further here.
constexpr size_t kMaxPlannedPoints = 64;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace npusim;
  if (size > fuzz::kMaxInputBytes) return -1;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const std::string file = (fuzz::scratch_dir() / "sweep.yaml").string();
  fuzz::write_file(file, bytes);

  fuzz::expect_clean_errors("app::load_sweep / plan_sweep", [&] {
    const app::SweepSpec spec = app::load_sweep(file);
    if (spec.num_points() <= kMaxPlannedPoints) {
      const app::SweepPlan plan = app::plan_sweep(spec, /*keep_runs=*/false);
      (void)app::manifest_of(plan);
    }
  });
  fuzz::expect_clean_errors("app::read_manifest", [&] { (void)app::read_manifest(file); });
  fuzz::expect_clean_errors("app::load_suite", [&] { (void)app::load_suite(file); });
  return 0;
}
