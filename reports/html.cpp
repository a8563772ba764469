// The HTML report: one self-contained page (inline CSS and SVG, no script, no URL) laid out as
// a header with the points table, a roofline per hardware, per-pipe utilization bars per kernel,
// and a line chart of time along each sweep axis. It reads SweepReport and RunReport fields only,
// so it needs nothing from the other sweep writers.
#include "reports/html.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <map>
#include <numbers>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "reports/html_svg.hpp"

namespace npusim::reports {
namespace {

using namespace html_detail;

constexpr size_t kMaxBarPoints = 40;  // utilization bars: a huge sweep shows its first points only
constexpr const char* kUs = "\u00b5s";

double kernel_time_us(const RunReport& r) {
  double t = 0;
  for (const auto& k : r.kernels) t += k.time_us;
  return t;
}

// A point's time: the graph's total with launch overheads, else its kernels back to back.
double point_time_us(const RunReport& r) {
  return r.graph ? r.graph->total_us : kernel_time_us(r);
}

uint64_t point_cycles(const RunReport& r) {
  uint64_t c = 0;
  for (const auto& k : r.kernels) c += k.cycles;
  return c;
}

// The kernels' utilization weighted by their time.
Utilization weighted_utilization(const RunReport& r) {
  Utilization u;
  double t = kernel_time_us(r);
  if (t <= 0) return u;
  for (const auto& k : r.kernels) {
    const double w = k.time_us / t;
    u.cube += w * k.utilization.cube;
    u.vector += w * k.utilization.vector;
    u.mte1 += w * k.utilization.mte1;
    u.mte2 += w * k.utilization.mte2;
    u.mte3 += w * k.utilization.mte3;
    u.fixpipe += w * k.utilization.fixpipe;
    u.hbm_bw += w * k.utilization.hbm_bw;
  }
  return u;
}

std::string key_at(const SweepPoint& p, size_t i) {
  return i < p.keys.size() ? p.keys[i] : std::string();
}

// "col=value, col=value" (unescaped), or "point N" for a sweep without axes.
std::string point_keys(const SweepReport& s, size_t i) {
  if (s.key_columns.empty()) return fmt::format("point {}", i);
  std::string out;
  for (size_t c = 0; c < s.key_columns.size(); ++c)
    out += fmt::format("{}{}={}", c ? ", " : "", s.key_columns[c], key_at(s.points[i], c));
  return out;
}

// The key values alone, for legends whose title names the columns.
std::string point_values(const SweepReport& s, size_t i) {
  if (s.key_columns.empty()) return fmt::format("point {}", i);
  std::string out;
  for (size_t c = 0; c < s.key_columns.size(); ++c)
    out += (c ? " / " : "") + key_at(s.points[i], c);
  return out;
}

// Percent with one decimal; a nonzero fraction below that reads "<0.1" (plain text: escape it).
std::string pct(double f) {
  return f > 0 && f < 0.0005 ? "<0.1" : fmt::format("{:.1f}", 100 * f);
}

// ---- header --------------------------------------------------------------------------------

void write_header(std::string& out, const SweepReport& s) {
  auto o = std::back_inserter(out);
  out += "<h1>npusim sweep report</h1>\n<table class=\"meta\">\n";
  fmt::format_to(o, "<tr><th class=\"t\">tool version</th><td>{}</td></tr>\n",
                 escape(s.tool_version));
  fmt::format_to(o, "<tr><th class=\"t\">git revision</th><td><code>{}</code></td></tr>\n",
                 escape(s.git_revision));
  fmt::format_to(o, "<tr><th class=\"t\">command line</th><td><code>{}</code></td></tr>\n",
                 escape(s.command_line));
  fmt::format_to(o, "<tr><th class=\"t\">points</th><td>{}</td></tr>\n", s.points.size());
  std::string cols;
  for (size_t c = 0; c < s.key_columns.size(); ++c)
    cols += (c ? ", " : "") + escape(s.key_columns[c]);
  fmt::format_to(o, "<tr><th class=\"t\">key columns</th><td>{}</td></tr>\n</table>\n",
                 cols.empty() ? "none (a single run)" : cols);
  if (!s.sweep_yaml.empty())
    fmt::format_to(o, "<details><summary>resolved sweep</summary><pre>{}</pre></details>\n",
                   escape(s.sweep_yaml));
  out +=
      "<p class=\"note\"><a href=\"#points\">points</a> &#183; <a href=\"#roofline\">roofline</a> "
      "&#183; <a href=\"#utilization\">utilization</a> &#183; <a href=\"#axes\">sweep "
      "axes</a></p>\n";

  out += "<h2 id=\"points\">Points</h2>\n<table class=\"points\">\n<tr><th>#</th>";
  for (const auto& c : s.key_columns) fmt::format_to(o, "<th class=\"t\">{}</th>", escape(c));
  const bool hw_is_key =
      std::find(s.key_columns.begin(), s.key_columns.end(), "hardware") != s.key_columns.end();
  if (!hw_is_key) out += "<th class=\"t\">hardware</th>";
  out +=
      "<th>kernels</th><th>time_us</th><th>cycles</th><th>cube %</th><th>vector %</th><th>mte2 "
      "%</th><th>hbm_bw %</th></tr>\n";
  for (size_t i = 0; i < s.points.size(); ++i) {
    const auto& p = s.points[i];
    const RunReport& r = p.report;
    fmt::format_to(o, "<tr><td title=\"{}\">{}</td>", escape(p.id), i);
    for (size_t c = 0; c < s.key_columns.size(); ++c)
      fmt::format_to(o, "<td class=\"t\">{}</td>", escape(key_at(p, c)));
    Utilization u = weighted_utilization(r);
    if (!hw_is_key) fmt::format_to(o, "<td class=\"t\">{}</td>", escape(r.hardware_name));
    fmt::format_to(
        o,
        "<td>{}</td><td>{:.2f}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        r.kernels.size(), point_time_us(r), point_cycles(r), escape(pct(u.cube)),
        escape(pct(u.vector)), escape(pct(u.mte2)), escape(pct(u.hbm_bw)));
  }
  out +=
      "</table>\n<p class=\"note\">time_us: the graph's total with a launch overhead per kernel "
      "for graph runs, else the kernels' time; utilizations: the kernels' busy fractions weighted "
      "by kernel time.</p>\n";
}

// ---- roofline ------------------------------------------------------------------------------

struct Ceiling {
  double tflops;
  std::string unit;  // cube | vector
};

// Each kernel's peak is its rate over its achieved fraction; kernels on the cube (AIC cores
// used) are measured against the cube peak, AIV-only ops against the vector peak. Peaks within 1%
// of one another are one ceiling.
std::vector<Ceiling> compute_ceilings(const SweepReport& s, const std::vector<size_t>& points) {
  std::vector<Ceiling> out;
  for (size_t i : points)
    for (const auto& k : s.points[i].report.kernels) {
      if (!(k.peak_fraction > 0) || !(k.tflops > 0)) continue;
      double peak = k.tflops / k.peak_fraction;
      if (!std::isfinite(peak)) continue;
      std::string unit = k.aic_used > 0 ? "cube" : "vector";
      bool known = std::any_of(out.begin(), out.end(), [&](const Ceiling& c) {
        return c.unit == unit && std::abs(c.tflops - peak) <= 0.01 * c.tflops;
      });
      if (!known) out.push_back({peak, unit});
    }
  std::sort(out.begin(), out.end(),
            [](const Ceiling& a, const Ceiling& b) { return a.tflops > b.tflops; });
  return out;
}

void write_roofline(std::string& out, const SweepReport& s, const std::string& hw,
                    const std::vector<size_t>& points) {
  auto o = std::back_inserter(out);
  struct Dot {
    double ai, tflops;
    size_t series, point;
    const KernelReport* k;
  };
  std::vector<Dot> dots;
  std::vector<std::string> skipped;
  std::set<double> bandwidths;
  for (size_t j = 0; j < points.size(); ++j) {
    const RunReport& r = s.points[points[j]].report;
    if (r.hbm_peak_gbs > 0) bandwidths.insert(r.hbm_peak_gbs);
    for (const auto& k : r.kernels) {
      double bytes = static_cast<double>(k.bytes.hbm_read + k.bytes.hbm_write);
      if (k.flops > 0 && bytes > 0 && k.tflops > 0 && std::isfinite(k.tflops))
        dots.push_back({k.flops / bytes, k.tflops, j, points[j], &k});
      else if (std::find(skipped.begin(), skipped.end(), k.name) == skipped.end())
        skipped.push_back(k.name);
    }
  }
  std::vector<Ceiling> ceilings = compute_ceilings(s, points);
  fmt::format_to(o, "<h3>{}</h3>\n", escape(hw));
  if (dots.empty()) {
    out +=
        "<p class=\"note\">No kernel of this hardware has both flops and HBM traffic: nothing to "
        "place.</p>\n";
    return;
  }

  const double top_peak = ceilings.empty() ? 0 : ceilings.front().tflops;
  const double max_bw = bandwidths.empty() ? 0 : *bandwidths.rbegin();
  double x_lo = dots[0].ai, x_hi = x_lo, y_lo = dots[0].tflops, y_hi = y_lo;
  for (const auto& d : dots) {
    x_lo = std::min(x_lo, d.ai), x_hi = std::max(x_hi, d.ai);
    y_lo = std::min(y_lo, d.tflops), y_hi = std::max(y_hi, d.tflops);
  }
  for (const auto& c : ceilings) {
    y_lo = std::min(y_lo, c.tflops), y_hi = std::max(y_hi, c.tflops);
    for (double bw : bandwidths)
      x_hi = std::max(x_hi, c.tflops * 1000 / bw), x_lo = std::min(x_lo, c.tflops * 1000 / bw);
  }
  const Frame f{820, 440, 72, 550, 16, 384};
  Scale x = log_scale(x_lo / 1.3, x_hi * 1.3, f.left, f.right);
  Scale y = log_scale(y_lo / 1.3, y_hi * 1.3, f.bottom, f.top);
  open_svg(out, f, "roofline", "roofline of " + hw);
  draw_axes(out, f, x, y, "arithmetic intensity (flop / HBM byte)", "achieved TFLOPS");

  // Bandwidth ceilings run up to the highest compute peak; compute ceilings start at their ridge
  // with the fastest bandwidth line: the classic roofline, one roof per (bandwidth, peak) pair.
  for (double bw : bandwidths) {
    double a0 = std::max(x.lo, y.lo * 1000 / bw), a1 = std::min(x.hi, y.hi * 1000 / bw);
    if (top_peak > 0) a1 = std::min(a1, top_peak * 1000 / bw);
    if (!(a1 > a0)) continue;
    double X0 = x.map(a0), Y0 = y.map(bw * a0 / 1000), X1 = x.map(a1), Y1 = y.map(bw * a1 / 1000);
    fmt::format_to(o,
                   "<line class=\"ceiling bw\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"><title>HBM "
                   "{} GB/s</title></line>\n",
                   px(X0), px(Y0), px(X1), px(Y1), num(bw, 4));
    double angle = std::atan2(Y1 - Y0, X1 - X0) * 180 / std::numbers::pi,
           LX = X0 + 0.06 * (X1 - X0), LY = Y0 + 0.06 * (Y1 - Y0);
    fmt::format_to(o,
                   "<text class=\"ceiling-label\" transform=\"translate({},{}) rotate({})\" "
                   "dy=\"-5\">HBM {} GB/s</text>\n",
                   px(LX), px(LY), px(angle), num(bw, 4));
  }
  double last_label_y = -1e9;
  for (const auto& c : ceilings) {
    double a0 = max_bw > 0 ? std::max(x.lo, c.tflops * 1000 / max_bw) : x.lo;
    double Y = y.map(c.tflops);
    fmt::format_to(o,
                   "<line class=\"ceiling\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"><title>{} peak "
                   "{} TFLOPS</title></line>\n",
                   px(x.map(a0)), px(Y), px(f.right), px(Y), c.unit, num(c.tflops, 4));
    // Above the line, unless that leaves the plot or lands on the previous ceiling's label.
    double LY = Y - 5;
    if (LY - 10 < f.top || std::abs(LY - last_label_y) < 12) LY = Y + 13;
    fmt::format_to(o,
                   "<text class=\"ceiling-label\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{} peak {} "
                   "TFLOPS</text>\n",
                   px(f.right - 4), px(LY), c.unit, num(c.tflops, 4));
    last_label_y = LY;
  }
  for (const auto& d : dots) {
    std::string peak_note;
    if (d.k->peak_fraction > 0)
      peak_note = fmt::format(" ({}% of {} peak)", pct(d.k->peak_fraction),
                              d.k->aic_used > 0 ? "cube" : "vector");
    std::string tip = fmt::format("{}\n{}\ntime {} {}, intensity {} flop/B, {} TFLOPS{}",
                                  point_keys(s, d.point), d.k->name, num(d.k->time_us, 4), kUs,
                                  num(d.ai, 4), num(d.tflops, 4), peak_note);
    fmt::format_to(
        o, "<circle class=\"k {}\" cx=\"{}\" cy=\"{}\" r=\"4.5\"><title>{}</title></circle>\n",
        series_class(d.series), px(x.map(d.ai)), px(y.map(d.tflops)), escape(tip));
  }
  std::vector<std::string> labels;
  for (size_t i : points) labels.push_back(point_values(s, i));
  std::vector<std::string> title{"points"};
  for (size_t c = 0; c < s.key_columns.size(); ++c)
    title.push_back(s.key_columns[c] + (c + 1 < s.key_columns.size() ? " /" : ""));
  if (title.size() > 1) title[0] = "points:";
  legend(out, f, title, labels);
  out += "</svg>\n";

  std::string note = fmt::format(
      "{} kernels of {} point(s) on {}; hover a dot for its point, kernel, time and rates.",
      dots.size(), points.size(), escape(hw));
  if (!skipped.empty()) {
    std::string names;
    for (size_t i = 0; i < skipped.size() && i < 8; ++i)
      names += (i ? ", " : "") + escape(skipped[i]);
    if (skipped.size() > 8) names += fmt::format(", +{} more", skipped.size() - 8);
    note += fmt::format(" Not drawn (no flops or no HBM traffic): {}.", names);
  }
  fmt::format_to(o, "<p class=\"note\">{}</p>\n", note);
}

void write_rooflines(std::string& out, const SweepReport& s) {
  out +=
      "<h2 id=\"roofline\">Roofline</h2>\n<p class=\"note\">One chart per hardware. x: kernel "
      "flops over the bytes that reached HBM (read + write); y: achieved TFLOPS; both "
      "logarithmic. Dashed: the HBM bandwidth ceiling of each bandwidth in the sweep; solid: the "
      "compute peaks the kernels were measured against (TFLOPS / peak fraction: cube for kernels "
      "on AIC cores, vector for AIV-only ops). Colour: the point.</p>\n";
  std::vector<std::pair<std::string, std::vector<size_t>>> by_hw;  // in order of first appearance
  for (size_t i = 0; i < s.points.size(); ++i) {
    const std::string& hw = s.points[i].report.hardware_name;
    auto it =
        std::find_if(by_hw.begin(), by_hw.end(), [&](const auto& g) { return g.first == hw; });
    if (it == by_hw.end()) it = by_hw.insert(by_hw.end(), {hw, {}});
    it->second.push_back(i);
  }
  if (by_hw.empty()) out += "<p class=\"note\">The sweep has no points.</p>\n";
  for (const auto& [hw, points] : by_hw) write_roofline(out, s, hw, points);
}

// ---- utilization bars ----------------------------------------------------------------------

struct PipeField {
  const char* name;
  const char* css;
  double Utilization::*field;
};
constexpr PipeField kPipes[] = {
    {"cube", "p-cube", &Utilization::cube},   {"vector", "p-vector", &Utilization::vector},
    {"mte1", "p-mte1", &Utilization::mte1},   {"mte2", "p-mte2", &Utilization::mte2},
    {"mte3", "p-mte3", &Utilization::mte3},   {"fixpipe", "p-fixpipe", &Utilization::fixpipe},
    {"HBM bw", "p-hbm", &Utilization::hbm_bw}};
constexpr size_t kPipeSlots = 6;  // the first six of kPipes form the bar; HBM bw stands apart

void write_point_bars(std::string& out, const SweepReport& s, size_t i) {
  auto o = std::back_inserter(out);
  const RunReport& r = s.points[i].report;
  std::string graph;
  if (r.graph)
    graph = fmt::format(" &#183; {} {} {} (fusion {}, T={})", escape(r.graph->model),
                        escape(r.graph->block), escape(r.graph->phase), escape(r.graph->fusion),
                        r.graph->tokens);
  fmt::format_to(
      o, "<h3>Point {}: {}</h3>\n<p class=\"note\">{}{} &#183; {} kernel(s) &#183; {} {}</p>\n", i,
      escape(point_keys(s, i)), escape(r.hardware_name), graph, r.kernels.size(),
      num(point_time_us(r), 5), kUs);
  if (r.kernels.empty()) return;

  const double label_w = 310, slot = 60, gap = 4, hbm_x = label_w + kPipeSlots * (slot + gap) + 12;
  const double time_x = hbm_x + slot + 16, row = 20, head = 30;
  const Frame f{1000, head + row * static_cast<double>(r.kernels.size()) + 6, 0, 0, 0, 0};
  open_svg(out, f, "util", "per-pipe utilization of point " + std::to_string(i));
  auto slot_x = [&](size_t p) {
    return p < kPipeSlots ? label_w + static_cast<double>(p) * (slot + gap) : hbm_x;
  };
  for (size_t p = 0; p < std::size(kPipes); ++p) {
    fmt::format_to(o, "<rect class=\"{}\" x=\"{}\" y=\"10\" width=\"10\" height=\"10\"/>",
                   kPipes[p].css, px(slot_x(p) + 2));
    fmt::format_to(o, "<text class=\"colhead\" x=\"{}\" y=\"19\">{}</text>\n", px(slot_x(p) + 16),
                   kPipes[p].name);
  }
  fmt::format_to(o, "<rect class=\"p-time\" x=\"{}\" y=\"10\" width=\"10\" height=\"10\"/>",
                 px(time_x));
  fmt::format_to(o, "<text class=\"colhead\" x=\"{}\" y=\"19\">time (share of kernels)</text>\n",
                 px(time_x + 14));

  const double total = kernel_time_us(r);
  for (size_t n = 0; n < r.kernels.size(); ++n) {
    const KernelReport& k = r.kernels[n];
    double y = head + row * static_cast<double>(n);
    std::string tip = k.name;
    for (const auto& p : kPipes)
      tip += fmt::format("\n{} {}%", p.name, pct(k.utilization.*p.field));
    fmt::format_to(o,
                   "<g><title>{}</title>\n<text class=\"kname\" x=\"{}\" y=\"{}\" "
                   "text-anchor=\"end\">{}</text>\n",
                   escape(tip), px(label_w - 8), px(y + 13), short_text(k.name, 44));
    for (size_t p = 0; p < std::size(kPipes); ++p) {
      double v = std::clamp(k.utilization.*kPipes[p].field, 0.0, 1.0), X = slot_x(p);
      fmt::format_to(o, "<rect class=\"track\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"15\"/>",
                     px(X), px(y + 2), px(slot));
      if (v > 0)
        fmt::format_to(o, "<rect class=\"{}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"15\"/>",
                       kPipes[p].css, px(X), px(y + 2), px(std::max(v * slot, 0.5)));
      if (v >= 0.005)
        fmt::format_to(o,
                       "<text class=\"val\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0f}%</text>",
                       px(X + slot - 3), px(y + 13), 100 * v);
      out += "\n";
    }
    double share = total > 0 ? k.time_us / total : 0;
    fmt::format_to(o, "<rect class=\"p-time\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"15\"/>",
                   px(time_x), px(y + 2), px(std::max(share * 80, 0.5)));
    fmt::format_to(o, "<text class=\"val\" x=\"{}\" y=\"{}\">{} {} &#183; {}%</text>\n</g>\n",
                   px(time_x + 86), px(y + 13), num(k.time_us, 4), kUs, escape(pct(share)));
  }
  out += "</svg>\n";
}

void write_utilization(std::string& out, const SweepReport& s) {
  out +=
      "<h2 id=\"utilization\">Per-pipe utilization</h2>\n<p class=\"note\">One row per kernel. "
      "The bar has one slot per pipe (cube, vector, mte1, mte2, mte3, fixpipe), each slot as wide "
      "as 100% of the kernel time, so the full bar is six pipes wide: pipes run at the same time, "
      "so their busy fractions sit side by side instead of adding up. A slot's fill is the pipe's "
      "busy fraction averaged over the cores that have it (cube, mte1, fixpipe: AIC; vector, "
      "mte3: AIV; mte2: all). HBM bw: bytes HBM served during the kernel over peak bandwidth "
      "times time. Right: kernel time and its share of the point's kernel time. Hover a row for "
      "the exact numbers.</p>\n";
  if (s.points.size() > kMaxBarPoints)
    fmt::format_to(std::back_inserter(out),
                   "<p class=\"note\"><b>Showing the first {} of {} points</b>; the points table "
                   "and the charts above "
                   "cover all of them.</p>\n",
                   kMaxBarPoints, s.points.size());
  for (size_t i = 0; i < s.points.size() && i < kMaxBarPoints; ++i) write_point_bars(out, s, i);
}

// ---- line charts along the sweep axes ------------------------------------------------------

void write_axis_chart(std::string& out, const SweepReport& s, size_t col) {
  auto o = std::back_inserter(out);
  const std::string& name = s.key_columns[col];
  std::vector<std::string> values;  // in order of first appearance
  for (const auto& p : s.points)
    if (std::find(values.begin(), values.end(), key_at(p, col)) == values.end())
      values.push_back(key_at(p, col));
  fmt::format_to(o, "<h3>{}</h3>\n", escape(name));
  if (values.size() < 2) {
    fmt::format_to(o, "<p class=\"note\">One value ({}) along this axis: no chart.</p>\n",
                   escape(values.empty() ? "" : values[0]));
    return;
  }
  bool numeric = true;
  std::map<std::string, double> as_number;
  for (const auto& v : values) {
    double d = 0;
    numeric = numeric && parse_number(v, d);
    as_number[v] = d;
  }
  // One series per combination of the other axes' values, in order of first appearance.
  struct Series {
    std::string label;
    std::vector<std::pair<double, size_t>> xs;  // (x, point)
  };
  std::vector<Series> series;
  std::map<std::vector<std::string>, size_t> series_of;
  double t_lo = 0, t_hi = 0;
  bool first = true;
  for (size_t i = 0; i < s.points.size(); ++i) {
    std::vector<std::string> others;
    std::string label;
    for (size_t c = 0; c < s.key_columns.size(); ++c) {
      if (c == col) continue;
      others.push_back(key_at(s.points[i], c));
      label += fmt::format("{}{}={}", label.empty() ? "" : ", ", s.key_columns[c],
                           key_at(s.points[i], c));
    }
    auto [it, fresh] = series_of.emplace(others, series.size());
    if (fresh) series.push_back({label.empty() ? "all points" : label, {}});
    const std::string& v = key_at(s.points[i], col);
    double xv =
        numeric ? as_number[v]
                : static_cast<double>(std::find(values.begin(), values.end(), v) - values.begin());
    series[it->second].xs.push_back({xv, i});
    double t = point_time_us(s.points[i].report);
    t_lo = first ? t : std::min(t_lo, t), t_hi = first ? t : std::max(t_hi, t);
    first = false;
  }
  double x_min = numeric ? as_number[values[0]] : 0, x_max = x_min;
  for (const auto& v : values)
    x_min = std::min(x_min, as_number[v]), x_max = std::max(x_max, as_number[v]);

  const Frame f{820, 460, 72, 550, 16, 366};  // room below for rotated category labels
  Scale x;
  std::string x_title = name;
  if (!numeric) {
    x = category_scale(values, f.left, f.right);
  } else if (x_min > 0 && x_max / x_min >= 20) {
    x = log_scale(x_min, x_max, f.left, f.right);
    x_title += " (log scale)";
  } else {
    x = linear_scale(x_min, x_max, f.left, f.right);
  }
  Scale y;
  std::string y_title = fmt::format("time ({})", kUs);
  if (t_lo > 0 && t_hi / t_lo > 30) {
    y = log_scale(t_lo / 1.1, t_hi * 1.1, f.bottom, f.top);
    y_title += ", log scale";
  } else {
    y = linear_scale(0, t_hi > 0 ? t_hi * 1.05 : 1, f.bottom, f.top);
  }
  open_svg(out, f, "axis", "time along " + name);
  draw_axes(out, f, x, y, x_title, y_title);
  std::vector<std::string> labels;
  for (size_t n = 0; n < series.size(); ++n) {
    auto& xs = series[n].xs;
    std::stable_sort(xs.begin(), xs.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string d;
    for (const auto& [xv, i] : xs)
      d += fmt::format("{}{},{}", d.empty() ? "M" : " L", px(x.map(xv)),
                       px(y.map(point_time_us(s.points[i].report))));
    fmt::format_to(o, "<path class=\"line {}\" d=\"{}\"/>\n", series_class(n), d);
    for (const auto& [xv, i] : xs) {
      double t = point_time_us(s.points[i].report);
      fmt::format_to(o,
                     "<circle class=\"m {}\" cx=\"{}\" cy=\"{}\" r=\"3.5\"><title>{}\n{} "
                     "{}</title></circle>\n",
                     series_class(n), px(x.map(xv)), px(y.map(t)), escape(point_keys(s, i)),
                     num(t, 5), kUs);
    }
    labels.push_back(series[n].label);
  }
  legend(out, f, {s.key_columns.size() > 1 ? "other axes" : "series"}, labels);
  out += "</svg>\n";
}

void write_axes(std::string& out, const SweepReport& s) {
  out += "<h2 id=\"axes\">Time along the sweep axes</h2>\n";
  if (s.key_columns.empty()) {
    out += "<p class=\"note\">This report has no sweep axes (a single run): no line charts.</p>\n";
    return;
  }
  out +=
      "<p class=\"note\">One chart per key column: x the axis value (numbers on a numeric scale, "
      "text as categories), y the point's time (the graph's total with launches for graph runs, "
      "else the kernels' time), one line per combination of the other key columns' values.</p>\n";
  for (size_t c = 0; c < s.key_columns.size(); ++c) write_axis_chart(out, s, c);
}

}  // namespace

std::string to_html(const SweepReport& s) {
  std::string out;
  out.reserve(64 * 1024);
  out +=
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
      "<title>npusim sweep report</title>\n<style>";
  out += kPageStyle;
  out += "</style>\n</head>\n<body>\n";
  write_header(out, s);
  write_rooflines(out, s);
  write_utilization(out, s);
  write_axes(out, s);
  out += "</body>\n</html>\n";
  return out;
}

}  // namespace npusim::reports
