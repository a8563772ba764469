// The HTML report on a real sweep: a GEMM on ascend910b3 and the DeepSeek-V4-Flash MoE decode
// block on ascend910b2, each at two HBM bandwidths. Checks structure (balanced tags, one roofline
// per hardware, one dot per kernel), self-containment, escaping and determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "app/session.hpp"
#include "reports/html.hpp"
#include "reports/writers.hpp"

namespace {

using namespace npusim;

reports::RunReport run_workload(const std::string& file, const std::vector<std::string>& sets) {
  const std::string path = std::string(NPUSIM_SOURCE_DIR) + "/configs/workloads/" + file;
  app::LoadedRun run = app::load_run(path, sets);
  std::string cmd = "npusim run " + file;
  for (const auto& s : sets) cmd += " --set " + s;
  reports::RunReport rep = app::make_report(run.hw, path, cmd);
  if (run.graph) {
    app::GraphOutput out = app::execute_graph(run, false);
    rep.kernels = std::move(out.kernels);
    rep.graph = std::move(out.graph);
  } else {
    rep.kernels.push_back(app::execute(run).kernel);
  }
  return rep;
}

const reports::SweepReport& sample_sweep() {
  static const reports::SweepReport sweep = [] {
    reports::SweepReport s;
    s.tool_version = app::tool_version();
    s.git_revision = app::git_revision();
    s.command_line = "npusim sweep html_test.yaml --html report.html";
    s.key_columns = {"hardware", "hardware.hbm.peak_bw_gbs"};
    s.sweep_yaml =
        "configs: [gemm_1024x576x6144.yaml, v4_flash_moe_decode.yaml]\n"
        "axes: {hardware.hbm.peak_bw_gbs: [800, 1600]}\n";
    for (const std::string file : {"gemm_1024x576x6144.yaml", "v4_flash_moe_decode.yaml"})
      for (const std::string bw : {"800", "1600"}) {
        reports::SweepPoint p;
        p.report = run_workload(file, {"hardware.hbm.peak_bw_gbs=" + bw});
        p.keys = {p.report.hardware_name, bw};
        p.id = file.substr(0, 4) + "-" + bw;
        s.points.push_back(std::move(p));
      }
    return s;
  }();
  return sweep;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size()))
    ++n;
  return n;
}

// The bodies of the elements that open with `open` (e.g. the roofline SVGs), in order.
std::vector<std::string> sections(const std::string& html, const std::string& open,
                                  const std::string& close) {
  std::vector<std::string> out;
  for (size_t at = html.find(open); at != std::string::npos; at = html.find(open, at + 1)) {
    size_t end = html.find(close, at);
    out.push_back(html.substr(at, end == std::string::npos ? std::string::npos : end - at));
  }
  return out;
}

// Every opened element is closed in order (void and self-closed elements aside). Returns the
// first problem, empty when the tags balance.
std::string tag_balance(const std::string& html) {
  static const std::set<std::string> kVoid{"meta", "br", "hr", "img", "input", "link", "!DOCTYPE"};
  std::vector<std::string> stack;
  for (size_t at = html.find('<'); at != std::string::npos; at = html.find('<', at + 1)) {
    size_t end = html.find('>', at);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(at);
    std::string tag = html.substr(at + 1, end - at - 1);
    if (tag.rfind("!DOCTYPE", 0) == 0 || (!tag.empty() && tag.back() == '/')) continue;
    const bool closing = !tag.empty() && tag[0] == '/';
    std::string name = tag.substr(closing ? 1 : 0);
    name = name.substr(0, name.find_first_of(" \n\t"));
    if (kVoid.count(name)) continue;
    if (!closing) {
      stack.push_back(name);
      if (name == "style") {  // raw text: skip to its end tag
        at = html.find("</style>", end) - 1;
      }
    } else if (stack.empty() || stack.back() != name) {
      return "</" + name + "> at " + std::to_string(at) + " closes <" +
             (stack.empty() ? "" : stack.back()) + ">";
    } else {
      stack.pop_back();
    }
  }
  return stack.empty() ? "" : "<" + stack.back() + "> never closed";
}

// Kernels the roofline can place: flops and HBM bytes to make an intensity, a rate to plot.
size_t placeable_kernels(const reports::SweepReport& s, const std::string& hw) {
  size_t n = 0;
  for (const auto& p : s.points)
    if (p.report.hardware_name == hw)
      for (const auto& k : p.report.kernels)
        n += k.flops > 0 && k.bytes.hbm_read + k.bytes.hbm_write > 0 && k.tflops > 0;
  return n;
}

TEST(HtmlReport, TagsBalance) {
  const std::string html = reports::to_html(sample_sweep());
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(tag_balance(html), "");
  EXPECT_EQ(count(html, "<svg "), count(html, "</svg>"));
  EXPECT_EQ(count(html, "<text"), count(html, "</text>"));
}

TEST(HtmlReport, DrawsOneRooflinePerHardware) {
  const auto& s = sample_sweep();
  const std::string html = reports::to_html(s);
  auto charts = sections(html, "<svg class=\"chart roofline\"", "</svg>");
  ASSERT_EQ(charts.size(), 2u);  // ascend910b3 (GEMM), ascend910b2 (MoE block), in sweep order
  EXPECT_NE(charts[0].find("roofline of ascend910b3"), std::string::npos);
  EXPECT_NE(charts[1].find("roofline of ascend910b2"), std::string::npos);
}

TEST(HtmlReport, PlacesOneDotPerKernelWithFlopsAndTraffic) {
  const auto& s = sample_sweep();
  const std::string html = reports::to_html(s);
  auto charts = sections(html, "<svg class=\"chart roofline\"", "</svg>");
  ASSERT_EQ(charts.size(), 2u);
  EXPECT_EQ(count(charts[0], "<circle"), placeable_kernels(s, "ascend910b3"));
  EXPECT_EQ(count(charts[1], "<circle"), placeable_kernels(s, "ascend910b2"));
  EXPECT_EQ(placeable_kernels(s, "ascend910b3"), 2u);
  EXPECT_GE(placeable_kernels(s, "ascend910b2"), 10u);  // most of 9 kernels x 2 bandwidths
  // Both bandwidths of the sweep and the cube peak are ceilings; the MoE block has vector ops too.
  EXPECT_NE(charts[1].find("HBM 800 GB/s"), std::string::npos);
  EXPECT_NE(charts[1].find("HBM 1600 GB/s"), std::string::npos);
  EXPECT_NE(charts[1].find("cube peak"), std::string::npos);
  EXPECT_NE(charts[1].find("vector peak"), std::string::npos);
  EXPECT_EQ(count(charts[0], "vector peak"), 0u);
}

TEST(HtmlReport, DrawsBarsPerKernelAndALineChartPerAxis) {
  const auto& s = sample_sweep();
  const std::string html = reports::to_html(s);
  auto bars = sections(html, "<svg class=\"chart util\"", "</svg>");
  ASSERT_EQ(bars.size(), s.points.size());
  for (size_t i = 0; i < bars.size(); ++i)
    EXPECT_EQ(count(bars[i], "<rect class=\"p-time\""),
              s.points[i].report.kernels.size() + 1);  // + legend swatch
  auto lines = sections(html, "<svg class=\"chart axis\"", "</svg>");
  ASSERT_EQ(lines.size(), 2u);  // hardware (categories) and bandwidth (numeric)
  EXPECT_EQ(count(lines[0], "<path class=\"line"), 2u);  // one per bandwidth
  EXPECT_EQ(count(lines[1], "<path class=\"line"), 2u);  // one per hardware
  EXPECT_EQ(count(lines[1], "<circle"), s.points.size());
}

TEST(HtmlReport, IsSelfContained) {
  const std::string html = reports::to_html(sample_sweep());
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("url("), std::string::npos);
  EXPECT_EQ(html.find("@import"), std::string::npos);
  for (size_t at = html.find("href=\""); at != std::string::npos; at = html.find("href=\"", at + 1))
    EXPECT_EQ(html[at + 6], '#') << "link out of the page at " << at;
}

TEST(HtmlReport, EscapesKernelNamesAndKeys) {
  reports::SweepReport s = sample_sweep();
  s.points[0].report.kernels[0].name = "gemm<&>\"x'";
  s.points[1].keys[0] = "<b>hw</b>";
  const std::string html = reports::to_html(s);
  EXPECT_EQ(html.find("<&>"), std::string::npos);
  EXPECT_EQ(html.find("<b>"), std::string::npos);
  EXPECT_NE(html.find("gemm&lt;&amp;&gt;&quot;x&#39;"), std::string::npos);
  EXPECT_NE(html.find("&lt;b&gt;hw&lt;/b&gt;"), std::string::npos);
  EXPECT_EQ(tag_balance(html), "");
}

TEST(HtmlReport, IsDeterministic) {
  const auto& s = sample_sweep();
  reports::SweepReport other = s;
  for (auto& p : other.points) p.report.wall_seconds += 1.5;  // wall-clock never reaches the page
  const std::string html = reports::to_html(s);
  EXPECT_EQ(html, reports::to_html(s));
  EXPECT_EQ(html, reports::to_html(other));
}

TEST(HtmlReport, SaysSoWhenThereAreNoAxes) {
  reports::SweepReport s;
  s.tool_version = "0.1.0";
  s.points.push_back(sample_sweep().points[0]);
  s.points[0].keys.clear();
  const std::string html = reports::to_html(s);
  EXPECT_NE(html.find("no sweep axes (a single run)"), std::string::npos);
  EXPECT_EQ(count(html, "<svg class=\"chart axis\""), 0u);
  EXPECT_EQ(count(html, "<svg class=\"chart roofline\""), 1u);
  EXPECT_EQ(tag_balance(html), "");
}

TEST(HtmlReport, SkipsAnAxisWithOneValue) {
  reports::SweepReport s = sample_sweep();
  s.points.resize(2);  // the GEMM at both bandwidths: one hardware
  const std::string html = reports::to_html(s);
  EXPECT_NE(html.find("One value (ascend910b3) along this axis"), std::string::npos);
  EXPECT_EQ(count(html, "<svg class=\"chart axis\""), 1u);
}

TEST(HtmlReport, CapsUtilizationBarsOnHugeSweeps) {
  reports::SweepReport s;
  s.key_columns = {"workload.n"};
  for (int i = 0; i < 45; ++i) {
    reports::SweepPoint p = sample_sweep().points[0];
    p.keys = {std::to_string(64 * (i + 1))};
    s.points.push_back(std::move(p));
  }
  const std::string html = reports::to_html(s);
  EXPECT_NE(html.find("Showing the first 40 of 45 points"), std::string::npos);
  EXPECT_EQ(count(html, "<svg class=\"chart util\""), 40u);
  EXPECT_EQ(count(html, "<circle class=\"k "), 45u);  // the roofline still shows every point
  EXPECT_EQ(tag_balance(html), "");
}

// Token counts spanning decades get a log axis; long preset names become rotated categories.
TEST(HtmlReport, ScalesWideNumericAxesLogarithmically) {
  reports::SweepReport s;
  s.key_columns = {"workload.tokens", "hardware"};
  for (int tokens : {1, 16, 256, 4096})
    for (const std::string hw : {"ascend910b3_with_a_long_custom_name",
                                 "ascend910b3_with_another_long_name", "ascend910b3_third"}) {
      reports::SweepPoint p = sample_sweep().points[0];
      p.keys = {std::to_string(tokens), hw};
      p.report.kernels[0].time_us = 10 + tokens * (hw.size() % 7 + 1) * 0.1;
      s.points.push_back(std::move(p));
    }
  const std::string html = reports::to_html(s);
  auto lines = sections(html, "<svg class=\"chart axis\"", "</svg>");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_NE(lines[0].find("workload.tokens (log scale)"), std::string::npos);
  EXPECT_NE(lines[1].find("rotate(-30)"), std::string::npos);
  EXPECT_EQ(count(lines[0], "<path class=\"line"), 3u);
  EXPECT_EQ(count(lines[1], "<path class=\"line"), 4u);
  EXPECT_EQ(tag_balance(html), "");
  std::filesystem::create_directories(std::filesystem::path(HTML_SAMPLE_PATH).parent_path());
  reports::write_file_atomic(
      std::filesystem::path(HTML_SAMPLE_PATH).replace_filename("synthetic.html").string(), html);
}

TEST(HtmlReport, EmptySweepStillMakesAPage) {
  const std::string html = reports::to_html(reports::SweepReport{});
  EXPECT_EQ(tag_balance(html), "");
  EXPECT_NE(html.find("The sweep has no points"), std::string::npos);
}

// The fixture of the browser check (html_render_browser): the sample page on disk.
TEST(HtmlSample, WritesSamplePage) {
  std::filesystem::create_directories(std::filesystem::path(HTML_SAMPLE_PATH).parent_path());
  reports::write_file_atomic(HTML_SAMPLE_PATH, reports::to_html(sample_sweep()));
  std::ifstream in(HTML_SAMPLE_PATH);
  std::string head(15, '\0');
  in.read(head.data(), 15);
  EXPECT_EQ(head, "<!DOCTYPE html>");
}

}  // namespace
