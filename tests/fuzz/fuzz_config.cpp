// libFuzzer target: the run-config loader (app::load_run: hardware preset and overrides, workload
// of every op and model block, tiling feasibility, inputs, fusion) and the hardware preset loader
// (app::load_hardware, with `extends:` layering), each given the input as a YAML file. Load and
// validate only: nothing is simulated.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "app/session.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace npusim;
  if (size > fuzz::kMaxInputBytes) return -1;  // -1: not added to the corpus
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const fuzz::fs::path& dir = fuzz::scratch_dir();

  // As a run config, beside the fixtures (so `model: graph.yaml` resolves).
  const std::string config = (dir / "config.yaml").string();
  fuzz::write_file(config, bytes);
  fuzz::expect_clean_errors("app::load_run", [&] { (void)app::load_run(config); });

  // As a hardware file beside copies of the presets (so `extends: arch2201` resolves).
  const std::string hw = (dir / "hw" / "fuzz_hw.yaml").string();
  fuzz::write_file(hw, bytes);
  fuzz::expect_clean_errors("app::load_hardware", [&] { (void)app::load_hardware(hw); });
  return 0;
}
