// libFuzzer target: the command-line argument parsers. Each line of the input is one argument:
// every line goes through parse_set_arg (--set), parse_shard (sweep --shard), parse_threshold
// (compare --fail), parse_compare_format (compare --format) and tuner::parse_pin (tune --pin);
// then all lines together are the --set overrides of load_run on a fixed small config and of
// load_hardware (hw show --set). A first line `@gemm`, `@vector`, `@moe`, `@attention` or
// `@graph` picks the fixture config (default: gemm).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "app/session.hpp"
#include "app/sweep.hpp"
#include "fuzz_support.hpp"
#include "reports/compare.hpp"
#include "tuner/space.hpp"

namespace {

// A handful of overrides exercises their interplay; more only repeats it.
constexpr size_t kMaxArgs = 8;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace npusim;
  if (size > 4096) return -1;  // an argument list, not a file
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> lines;
  for (size_t pos = 0; pos <= bytes.size() && lines.size() < kMaxArgs + 1;) {
    size_t end = bytes.find('\n', pos);
    if (end == std::string_view::npos) end = bytes.size();
    lines.emplace_back(bytes.substr(pos, end - pos));
    pos = end + 1;
  }
  std::string config = "gemm.yaml";
  if (!lines.empty() && lines.front().size() > 1 && lines.front()[0] == '@') {
    const std::string pick = lines.front().substr(1);
    if (pick == "vector" || pick == "moe" || pick == "attention") config = pick + ".yaml";
    if (pick == "graph") config = "graph_model.yaml";
    lines.erase(lines.begin());
  }
  if (lines.size() > kMaxArgs) lines.resize(kMaxArgs);

  for (const auto& arg : lines) {
    fuzz::expect_clean_errors("parse_set_arg", [&] { (void)parse_set_arg(arg); });
    fuzz::expect_clean_errors("app::parse_shard", [&] { (void)app::parse_shard(arg); });
    fuzz::expect_clean_errors("reports::parse_threshold", [&] { (void)reports::parse_threshold(arg); });
    fuzz::expect_clean_errors("reports::parse_compare_format", [&] { (void)reports::parse_compare_format(arg); });
    fuzz::expect_clean_errors("tuner::parse_pin", [&] { (void)tuner::parse_pin(arg); });
  }
  const std::string path = (fuzz::scratch_dir() / config).string();
  fuzz::expect_clean_errors("app::load_run --set", [&] { (void)app::load_run(path, lines); });
  std::vector<std::string> hw_sets;
  for (const auto& arg : lines)
    if (arg.rfind("hardware.", 0) == 0) hw_sets.push_back(arg);
  fuzz::expect_clean_errors("app::load_hardware --set", [&] { (void)app::load_hardware("ascend910b2", hw_sets); });
  return 0;
}
