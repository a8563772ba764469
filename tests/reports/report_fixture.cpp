// Writes the report files tests/reports/h5_check.py checks with h5py and pandas:
// DIR/report.h5 and DIR/report.json of one sweep (a real functional GEMM run and synthetic points
// with commas, quotes, UTF-8 and NaN).
#include <fmt/format.h>

#include <exception>
#include <filesystem>

#include "report_test_support.hpp"
#include "reports/writers.hpp"

int main(int argc, char** argv) {
  using namespace npusim;
  if (argc != 2) {
    fmt::print(stderr, "usage: report_fixture DIR\n");
    return 2;
  }
  try {
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    reports::SweepReport s = test::synthetic_sweep(6, 5);
    reports::SweepPoint real;
    real.id = "gemm_bf16_tails_validate";
    real.keys = {"ascend910b2", "1000"};
    real.report = test::run_config(test::workload("gemm_bf16_tails_validate.yaml"), {}, true);
    s.points.insert(s.points.begin() + 1, std::move(real));
    reports::write_hdf5(s, (dir / "report.h5").string());
    reports::write_file_atomic((dir / "report.json").string(), reports::to_json(s).dump(2) + "\n");
    fmt::print("wrote {} and {}\n", (dir / "report.h5").string(), (dir / "report.json").string());
  } catch (const std::exception& e) {
    fmt::print(stderr, "report_fixture: {}\n", e.what());
    return 1;
  }
  return 0;
}
