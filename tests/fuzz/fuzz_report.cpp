// libFuzzer target: the report readers `npusim compare` uses. The input is read as a report file
// (reports::read_report: HDF5 when it starts with the HDF5 signature, else JSON), and, when it
// parses as JSON, flattened directly (reports::flatten_report). A report that reads is then
// compared with itself and formatted in every --format, as compare would.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_support.hpp"
#include "reports/compare.hpp"
#include "reports/report_reader.hpp"

namespace {

void compare_with_itself(const npusim::reports::FlatReport& r) {
  using namespace npusim::reports;
  const Comparison c = compare_reports(r, r, parse_thresholds({}));
  for (CompareFormat f : {CompareFormat::kTable, CompareFormat::kMarkdown, CompareFormat::kJson})
    (void)format_comparison(c, f, FormatOptions{.all_metrics = true});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace npusim;
  if (size > 256 * 1024) return -1;  // HDF5 seeds are larger than the YAML ones
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const std::string file = (fuzz::scratch_dir() / "report.input").string();
  fuzz::write_file(file, bytes);
  fuzz::expect_clean_errors("reports::read_report", [&] { compare_with_itself(reports::read_report(file)); });

  const nlohmann::json j = nlohmann::json::parse(bytes, nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded())
    fuzz::expect_clean_errors("reports::flatten_report",
                              [&] { compare_with_itself(reports::flatten_report(j, "fuzz input")); });
  return 0;
}
