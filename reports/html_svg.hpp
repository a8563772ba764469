// Private to reports/html.cpp: the SVG vocabulary of the HTML report. Text escaping, number
// formatting, scales (linear, log, category) with their ticks, and a plot frame that draws the
// grid, tick labels and axis titles. Everything here is deterministic: the same inputs give the
// same bytes (fixed-precision formatting, no locale, no clocks).
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "common/text.hpp"

namespace npusim::reports::html_detail {

// Text and attribute values alike: kernel names may hold <, >, & and quotes.
inline std::string escape(std::string_view s) { return escape_markup(s); }

// At most `max_chars` bytes, cut with an ellipsis (never inside a UTF-8 sequence); escaped.
inline std::string short_text(std::string_view s, size_t max_chars) {
  if (s.size() <= max_chars) return escape(s);
  size_t n = max_chars > 1 ? max_chars - 1 : 0;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return escape(s.substr(0, n)) + "&#8230;";
}

// Compact numbers for labels: `digits` significant digits, plain from 1e-4 to 1e6 ("1600",
// "0.001"), else "1e7" rather than "1e+07".
inline std::string num(double v, int digits = 3) {
  if (!std::isfinite(v)) return "n/a";
  if (v == 0) return "0";
  int e = static_cast<int>(std::floor(std::log10(std::abs(v))));
  const double unit = std::pow(10.0, e - digits + 1);
  const double r = std::round(v / unit) * unit;  // 999.7 at 3 digits becomes 1000: one more decade
  e = static_cast<int>(std::floor(std::log10(std::abs(r)) + 1e-12));
  if (e >= -4 && e < 6) {
    std::string s = fmt::format("{:.{}f}", r, std::max(0, digits - 1 - e));
    if (s.find('.') != std::string::npos) {
      while (s.back() == '0') s.pop_back();
      if (s.back() == '.') s.pop_back();
    }
    return s;
  }
  std::string s = fmt::format("{:.{}e}", r, digits - 1);
  size_t at = s.find('e');
  std::string mant = s.substr(0, at), ex = s.substr(at + 1);
  if (mant.find('.') != std::string::npos) {
    while (mant.back() == '0') mant.pop_back();
    if (mant.back() == '.') mant.pop_back();
  }
  const bool neg = ex[0] == '-';
  size_t i = (ex[0] == '+' || ex[0] == '-') ? 1 : 0;
  while (i + 1 < ex.size() && ex[i] == '0') ++i;
  return mant + "e" + (neg ? "-" : "") + ex.substr(i);
}

// Pixel coordinates: one decimal is well below a pixel and keeps the file small.
inline std::string px(double v) {
  std::string s = fmt::format("{:.1f}", v);
  if (s.size() > 2 && s.compare(s.size() - 2, 2, ".0") == 0) s.resize(s.size() - 2);
  if (s == "-0") s = "0";
  return s;
}

// A number written by a person (a sweep axis value); false for text such as a preset name.
inline bool parse_number(const std::string& s, double& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  v = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() && std::isfinite(v);
}

struct Tick {
  double value;
  std::string label;  // empty: a minor tick (grid line only)
};

// Maps a domain onto a pixel range. Category: value i is the i-th category, centred in its band.
struct Scale {
  enum class Kind { Linear, Log, Category };
  Kind kind = Kind::Linear;
  double lo = 0, hi = 1;  // domain
  double p0 = 0, p1 = 1;  // pixels for lo and hi
  std::vector<Tick> ticks;

  double map(double v) const {
    double t = 0;
    if (kind == Kind::Log)
      t = (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
    else
      t = (v - lo) / (hi - lo);
    return p0 + t * (p1 - p0);
  }
};

// Domain widened to round steps of 1, 2 or 5 times a power of ten, about five ticks.
inline Scale linear_scale(double lo, double hi, double p0, double p1) {
  if (!(hi > lo)) {
    double pad = lo == 0 ? 1 : std::abs(lo) * 0.1;
    lo -= pad, hi += pad;
  }
  double raw = (hi - lo) / 5, mag = std::pow(10.0, std::floor(std::log10(raw))), step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  Scale s;
  s.kind = Scale::Kind::Linear;
  s.lo = std::floor(lo / step + 1e-9) * step;
  s.hi = std::ceil(hi / step - 1e-9) * step;
  s.p0 = p0, s.p1 = p1;
  int n = static_cast<int>(std::lround((s.hi - s.lo) / step));
  for (int i = 0; i <= n; ++i) {
    double v = s.lo + i * step;
    if (std::abs(v) < step * 1e-9) v = 0;
    s.ticks.push_back({v, num(v, 4)});
  }
  return s;
}

// Domain widened to 1, 2 or 5 times a power of ten. Decades and both ends are labelled (every
// other decade or fewer when there are many); with two decades or fewer, 2x and 5x too. Minor grid
// lines at 2..9 while the decades are few enough to see them.
inline Scale log_scale(double lo, double hi, double p0, double p1) {
  auto snap_down = [](double v) {
    double d = std::pow(10.0, std::floor(std::log10(v) + 1e-9));
    for (double m : {5.0, 2.0})
      if (m * d <= v * (1 + 1e-9)) return m * d;
    return d;
  };
  auto snap_up = [](double v) {
    double d = std::pow(10.0, std::floor(std::log10(v) - 1e-9));
    for (double m : {1.0, 2.0, 5.0})
      if (m * d >= v * (1 - 1e-9)) return m * d;
    return 10 * d;
  };
  if (!(hi > lo * 1.0001)) lo /= 2, hi *= 2;
  Scale s;
  s.kind = Scale::Kind::Log;
  s.lo = snap_down(lo), s.hi = snap_up(hi);
  s.p0 = p0, s.p1 = p1;
  const int e0 = static_cast<int>(std::floor(std::log10(s.lo) + 1e-9));
  const int e1 = static_cast<int>(std::ceil(std::log10(s.hi) - 1e-9));
  const int decades = e1 - e0, every = decades <= 8 ? 1 : (decades + 7) / 8;
  for (int e = e0; e <= e1; ++e)
    for (int m = 1; m <= 9; ++m) {
      const double v = m * std::pow(10.0, e);
      if (v < s.lo * (1 - 1e-9) || v > s.hi * (1 + 1e-9)) continue;
      if (m == 1)
        s.ticks.push_back({v, (e - e0) % every == 0 ? num(v) : ""});
      else if (const bool end = std::abs(v / s.lo - 1) < 1e-9 || std::abs(v / s.hi - 1) < 1e-9;
               decades <= 6 || end)
        s.ticks.push_back({v, end || (decades <= 2 && (m == 2 || m == 5)) ? num(v) : ""});
    }
  return s;
}

inline Scale category_scale(const std::vector<std::string>& names, double p0, double p1) {
  Scale s;
  s.kind = Scale::Kind::Category;
  s.lo = -0.5, s.hi = static_cast<double>(names.size()) - 0.5;
  s.p0 = p0, s.p1 = p1;
  for (size_t i = 0; i < names.size(); ++i) s.ticks.push_back({static_cast<double>(i), names[i]});
  return s;
}

// The plot area of a chart: `left`..`right` and `top`..`bottom` in pixels of a width x height SVG.
struct Frame {
  double width, height, left, right, top, bottom;
};

inline void open_svg(std::string& out, const Frame& f, const std::string& cls,
                     const std::string& label) {
  fmt::format_to(
      std::back_inserter(out),
      "<svg class=\"chart {}\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\" role=\"img\" "
      "aria-label=\"{}\">\n",
      cls, px(f.width), px(f.height), px(f.width), px(f.height), escape(label));
}

// Grid lines, tick labels, the plot border and the axis titles (already escaped by the caller
// only if they hold markup; plain text is escaped here).
inline void draw_axes(std::string& out, const Frame& f, const Scale& x, const Scale& y,
                      const std::string& x_title, const std::string& y_title) {
  auto o = std::back_inserter(out);
  bool rotate = false;
  if (x.kind == Scale::Kind::Category && !x.ticks.empty()) {
    size_t longest = 0;
    for (const auto& t : x.ticks) longest = std::max(longest, t.label.size());
    rotate = static_cast<double>(longest) * 6.5 >
             (f.right - f.left) / static_cast<double>(x.ticks.size());
  }
  for (const auto& t : x.ticks) {
    double X = x.map(t.value);
    fmt::format_to(o, "<line class=\"{}\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\n",
                   t.label.empty() ? "grid minor" : "grid", px(X), px(f.top), px(X), px(f.bottom));
    if (t.label.empty()) continue;
    if (rotate)
      fmt::format_to(o,
                     "<text class=\"tick\" text-anchor=\"end\" transform=\"translate({},{}) "
                     "rotate(-30)\">{}</text>\n",
                     px(X), px(f.bottom + 14), short_text(t.label, 20));
    else
      fmt::format_to(o, "<text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                     px(X), px(f.bottom + 16),
                     escape(t.label));  // fits its band, else it would be rotated
  }
  for (const auto& t : y.ticks) {
    double Y = y.map(t.value);
    fmt::format_to(o, "<line class=\"{}\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\n",
                   t.label.empty() ? "grid minor" : "grid", px(f.left), px(Y), px(f.right), px(Y));
    if (!t.label.empty())
      fmt::format_to(o, "<text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
                     px(f.left - 6), px(Y + 4), escape(t.label));
  }
  fmt::format_to(o, "<rect class=\"frame\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>\n",
                 px(f.left), px(f.top), px(f.right - f.left), px(f.bottom - f.top));
  fmt::format_to(o,
                 "<text class=\"axis-title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                 px((f.left + f.right) / 2), px(f.bottom + (rotate ? 84 : 40)), escape(x_title));
  fmt::format_to(o,
                 "<text class=\"axis-title\" text-anchor=\"middle\" transform=\"translate(16,{}) "
                 "rotate(-90)\">{}</text>\n",
                 px((f.top + f.bottom) / 2), escape(y_title));
}

// Series colours: CSS classes s0..s9 (fill and stroke set in the page's style sheet).
inline constexpr int kPaletteSize = 10;
inline std::string series_class(size_t i) {
  return fmt::format("s{}", i % kPaletteSize);
}

// The page's style sheet: the series palette (Tableau 10) in classes s0..s9 to match
// series_class, one colour per pipe for the utilization bars (p-*), chart text and grid.
inline constexpr const char* kPageStyle = R"(
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
margin:24px auto;max-width:1280px;padding:0 16px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 12px}h3{font-size:15px;margin:18px 0 4px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px}
th,td{padding:3px 9px;border-bottom:1px solid #e1e4e8;text-align:right;vertical-align:top}
th{background:#f6f8fa}td.t,th.t{text-align:left}table.meta td{text-align:left}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#f6f8fa;padding:8px;overflow:auto}.note{color:#57606a;font-size:13px}
svg.chart{display:block;background:#fff;font-family:inherit}
.grid{stroke:#d8dee4;stroke-width:1}.grid.minor{stroke:#f0f2f4}.frame{fill:none;stroke:#57606a}
.tick{font-size:11px;fill:#57606a}.axis-title{font-size:12px;fill:#1f2328}
.legend{font-size:11px;fill:#1f2328}.legend-title{font-size:11px;font-weight:600;fill:#1f2328}
.s0{fill:#4e79a7;stroke:#4e79a7}.s1{fill:#f28e2b;stroke:#f28e2b}.s2{fill:#e15759;stroke:#e15759}
.s3{fill:#76b7b2;stroke:#76b7b2}.s4{fill:#59a14f;stroke:#59a14f}.s5{fill:#edc948;stroke:#edc948}
.s6{fill:#b07aa1;stroke:#b07aa1}.s7{fill:#ff9da7;stroke:#ff9da7}.s8{fill:#9c755f;stroke:#9c755f}
.s9{fill:#bab0ac;stroke:#bab0ac}
circle.k{fill-opacity:.8;stroke:#fff;stroke-width:.8}
circle.k:hover,circle.m:hover{stroke:#000;stroke-width:2}
path.line{fill:none;stroke-width:2}circle.m{stroke:#fff;stroke-width:1}
.ceiling{fill:none;stroke:#24292f;stroke-width:1.6}.ceiling.bw{stroke:#57606a;stroke-dasharray:6 3}
.ceiling-label{font-size:11px;fill:#24292f;paint-order:stroke;stroke:#fff;stroke-width:3px}
.track{fill:#eef1f4}.p-cube{fill:#e15759}.p-vector{fill:#4e79a7}.p-mte1{fill:#f28e2b}
.p-mte2{fill:#59a14f}.p-mte3{fill:#b07aa1}.p-fixpipe{fill:#edc948}.p-hbm{fill:#76b7b2}
.p-time{fill:#9c755f}.colhead{font-size:11px;fill:#1f2328}
.val{font-size:10px;fill:#1f2328;paint-order:stroke;stroke:#fff;stroke-width:2.5px}
.kname{font:11px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;fill:#1f2328}
)";

inline constexpr size_t kMaxLegend = 16;  // legend entries before "+N more"

inline  // Right of the plot: a title (one line per entry of `title`), then a swatch per series.
    void
    legend(std::string& out, const Frame& f, const std::vector<std::string>& title,
           const std::vector<std::string>& labels) {
  auto o = std::back_inserter(out);
  double x = f.right + 18, y = f.top + 8;
  for (size_t i = 0; i < title.size(); ++i, y += 14)
    fmt::format_to(o, "<text class=\"legend-title\" x=\"{}\" y=\"{}\">{}</text>\n", px(x), px(y),
                   short_text(title[i], 38));
  y -= 14;
  for (size_t i = 0; i < labels.size() && i < kMaxLegend; ++i) {
    y += 17;
    fmt::format_to(o, "<rect class=\"{}\" x=\"{}\" y=\"{}\" width=\"11\" height=\"11\"/>",
                   series_class(i), px(x), px(y - 9));
    fmt::format_to(o, "<text class=\"legend\" x=\"{}\" y=\"{}\"><title>{}</title>{}</text>\n",
                   px(x + 16), px(y), escape(labels[i]), short_text(labels[i], 36));
  }
  if (labels.size() > kMaxLegend)
    fmt::format_to(o, "<text class=\"legend\" x=\"{}\" y=\"{}\">+{} more (colours repeat)</text>\n",
                   px(x), px(y + 17), labels.size() - kMaxLegend);
}

}  // namespace npusim::reports::html_detail
