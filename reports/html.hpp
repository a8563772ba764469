// The HTML report: one self-contained file (inline CSS and SVG, no network) with a roofline chart
// (every kernel a point under its hardware's ceilings), stacked per-pipe utilization bars per
// kernel, and a line chart along each sweep axis.
#pragma once

#include <string>

#include "reports/sweep_report.hpp"

namespace npusim::reports {

std::string to_html(const SweepReport& s);

}  // namespace npusim::reports
