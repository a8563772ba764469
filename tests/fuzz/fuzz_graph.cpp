// libFuzzer target: the graph YAML loader (graphs::load_graph_file: dims, tensors, ops, ports,
// shape checks) on the input, then what `npusim graph show` and a model workload do with a graph
// that loaded: its listing and the `none` and `default` fusion plans.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_support.hpp"
#include "graphs/graph.hpp"
#include "graphs/plan.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace npusim;
  if (size > fuzz::kMaxInputBytes) return -1;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const std::string file = (fuzz::scratch_dir() / "graph_input.yaml").string();
  fuzz::write_file(file, bytes);
  fuzz::expect_clean_errors("graphs::load_graph_file", [&] {
    const graphs::Graph g = graphs::load_graph_file(file, /*tokens=*/64);
    (void)graphs::format_graph(g);
    for (const char* choice : {"none", "default"}) {
      fuzz::expect_clean_errors("graphs::plan_fusion", [&] {
        const graphs::FusionPlan plan = graphs::plan_fusion(g, {choice}, SourceLoc{file, 0, 0, "fusion"});
        (void)graphs::format_plan(g, plan);
      });
    }
  });
  return 0;
}
