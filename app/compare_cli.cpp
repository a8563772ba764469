// npusim compare BASE CANDIDATE: pairs the points of two reports (JSON run or sweep reports, or
// HDF5 sweep reports) and holds each metric to its threshold. Exit 0 no regression, 1 regression,
// 2 cannot compare (unreadable file, another schema, different key columns, no common point).
#include <fmt/format.h>

#include "app/command.hpp"
#include "common/errors.hpp"
#include "reports/compare.hpp"
#include "reports/report_reader.hpp"
#include "reports/writers.hpp"

namespace npusim::app {

namespace {

class CompareCommand : public Command {
 public:
  CLI::App* add_to(CLI::App& cli) override {
    CLI::App* c = cli.add_subcommand("compare", "compare two reports point by point (exit 0 ok, 1 regression, 2 cannot compare)");
    c->add_option("base", base_, "baseline report (.json or .h5)")->required();
    c->add_option("candidate", candidate_, "candidate report (.json or .h5)")->required();
    c->add_option("--fail", fail_,
                  "regression threshold metric:+X% (relative) or metric:-Xpp (percentage points); repeatable; "
                  "default cycles:+1% time_us:+1% validation_passed:-0pp");
    c->add_option("--format", format_, "table, markdown or json")->default_val("table");
    c->add_option("--out", out_, "also write the comparison (in --format) to this file");
    c->add_flag("--all", all_, "list every metric of every point, not only those that changed");
    return c;
  }

  int run(const std::string&) override {
    const reports::CompareFormat format = reports::parse_compare_format(format_);
    const std::vector<reports::Threshold> thresholds = reports::parse_thresholds(fail_);
    const reports::FlatReport base = reports::read_report(base_), cand = reports::read_report(candidate_);
    const reports::Comparison c = reports::compare_reports(base, cand, thresholds);
    reports::FormatOptions fo;
    fo.all_metrics = all_;
    const std::string text = reports::format_comparison(c, format, fo);
    fmt::print("{}", text);
    if (!out_.empty()) {
      try {
        reports::write_file_atomic(out_, text);
      } catch (const std::runtime_error& e) {
        throw ConfigError(e.what());
      }
    }
    if (c.status == reports::CompareStatus::kCannotCompare) fmt::print(stderr, "error: cannot compare: {}\n", c.reason);
    return c.exit_code();
  }

 private:
  std::string base_, candidate_, format_ = "table", out_;
  std::vector<std::string> fail_;
  bool all_ = false;
};

const RegisterCommand kRegister{[] { return std::make_unique<CompareCommand>(); }};

}  // namespace

}  // namespace npusim::app
