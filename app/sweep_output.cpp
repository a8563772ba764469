// A sweep's report from its point folders, the writers by file extension, the summary table, and
// `npusim merge` (shards or an MPI run's folders into one report).
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "app/sweep.hpp"
#include "common/text.hpp"
#include "reports/html.hpp"
#include "reports/writers.hpp"

namespace npusim::app {
namespace fs = std::filesystem;

namespace {

reports::RunReport read_point_report(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(SourceLoc{file.string(), 0, 0, ""},
                      fmt::format("not a JSON report: {}", e.what()));
  }
  if (!j.is_object() || !j.contains("schema_version") || !j["schema_version"].is_number_integer())
    throw ConfigError(SourceLoc{file.string(), 0, 0, "schema_version"},
                      "not an npusim run report (no schema_version)");
  if (const int v = j["schema_version"].get<int>(); v != reports::kSchemaVersion)
    throw ConfigError(SourceLoc{file.string(), 0, 0, "schema_version"},
                      fmt::format("a report of schema version {}; this npusim reads version {}", v,
                                  reports::kSchemaVersion));
  try {
    return reports::run_report_from_json(j);
  } catch (const std::exception& e) {
    throw ConfigError(SourceLoc{file.string(), 0, 0, ""}, e.what());
  }
}

std::string lower_extension(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

}  // namespace

reports::SweepReport assemble_report(const SweepManifest& m, const std::vector<std::string>& dirs,
                                     std::vector<std::string>* missing) {
  reports::SweepReport r;
  r.tool_version = tool_version();
  r.git_revision = git_revision();
  r.command_line = m.command;
  r.sweep_yaml = m.text;
  r.key_columns = m.key_columns;
  std::map<std::string, reports::RunReport> by_id;
  std::set<std::string> absent;
  for (const auto& p : m.points) {
    auto it = by_id.find(p.id);
    if (it == by_id.end()) {
      if (absent.count(p.id)) continue;
      std::optional<fs::path> file;
      for (const auto& d : dirs)
        if (fs::path f = fs::path(d) / "points" / p.id / "report.json"; fs::exists(f)) {
          file = f;
          break;
        }
      if (!file) {
        absent.insert(p.id);
        if (missing) missing->push_back(p.id);
        continue;
      }
      it = by_id.emplace(p.id, read_point_report(*file)).first;
    }
    r.points.push_back({p.id, p.keys, it->second});
  }
  return r;
}

void check_report_path(const std::string& path) {
  static const std::set<std::string> known{".json", ".csv", ".h5", ".hdf5", ".html"};
  if (!known.count(lower_extension(path)))
    throw ConfigError(SourceLoc{"-o " + path, 0, 0, ""},
                      "unknown report format: name the file .h5 (or .hdf5), .json, .csv or .html");
}

void write_report(const reports::SweepReport& report, const std::string& path) {
  check_report_path(path);
  const std::string ext = lower_extension(path);
  // A file that cannot be written (reports::write_file_atomic: disk full, folder missing) is a
  // ConfigError naming it; anything else a writer refuses is the user's to fix as well.
  try {
    if (ext == ".json")
      reports::write_file_atomic(path, reports::json_text(reports::to_json(report)));
    else if (ext == ".csv")
      reports::write_file_atomic(path, reports::to_csv(report));
    else if (ext == ".html")
      reports::write_file_atomic(path, reports::to_html(report));
    else
      reports::write_hdf5(report, path);
  } catch (const std::runtime_error& e) {
    throw ConfigError(e.what());
  }
}

std::string format_summary(const reports::SweepReport& report) {
  std::vector<std::string> head{"point"};
  for (const auto& k : report.key_columns) head.push_back(k);
  for (const char* h : {"time us", "cycles", "cube %", "vector %", "hbm_bw %"}) head.push_back(h);
  const size_t nkeys = report.key_columns.size();
  std::vector<std::vector<std::string>> rows{head};
  for (const auto& p : report.points) {
    std::vector<std::string> row{p.id};
    for (size_t k = 0; k < nkeys; ++k)
      row.push_back(report.key_columns[k] == "base" ? fs::path(p.keys[k]).stem().string()
                                                    : p.keys[k]);
    // Utilization of the whole run: the kernels' figures weighted by their time.
    double t = 0, cube = 0, vec = 0, hbm = 0;
    uint64_t cycles = 0;
    for (const auto& k : p.report.kernels) {
      t += k.time_us, cycles += k.cycles;
      cube += k.utilization.cube * k.time_us, vec += k.utilization.vector * k.time_us,
          hbm += k.utilization.hbm_bw * k.time_us;
    }
    auto pct = [&](double x) { return fmt::format("{:.1f}", t > 0 ? 100 * x / t : 0.0); };
    row.insert(row.end(),
               {fmt::format("{:.2f}", t), std::to_string(cycles), pct(cube), pct(vec), pct(hbm)});
    rows.push_back(std::move(row));
  }
  std::vector<size_t> width(head.size(), 0);
  for (const auto& row : rows)
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      const bool number = c > nkeys;  // metrics right-aligned, id and keys left
      line += (c ? "  " : "") + (number ? fmt::format("{:>{}}", row[c], width[c])
                                        : fmt::format("{:<{}}", row[c], width[c]));
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

void publish_reports(const SweepPlan& plan, const std::string& out, double seconds) {
  // Failed points have no report.json: finish_sweep listed them; the report holds the others.
  reports::SweepReport report = assemble_report(manifest_of(plan), {out}, nullptr);
  for (const char* name : {"report.json", "report.csv", "report.h5", "report.html"})
    write_report(report, (fs::path(out) / name).string());
  fmt::print("{}", format_summary(report));
  fmt::print(stderr, "{} points in {:.1f} s; reports: {}/report.{{h5,html,json,csv}}\n",
             report.points.size(), seconds, out);
}

int merge_sweeps(const std::vector<std::string>& dirs, const std::vector<std::string>& outputs,
                 bool allow_partial) {
  if (outputs.empty())
    throw ConfigError("merge needs at least one output: -o report.h5 (or .json, .csv, .html)");
  for (const auto& o : outputs) check_report_path(o);
  if (dirs.empty()) throw ConfigError("merge needs the output folder(s) of a sweep");
  const SweepManifest m = read_manifest((fs::path(dirs.front()) / "sweep.yaml").string());
  for (size_t i = 1; i < dirs.size(); ++i) {
    const SweepManifest other = read_manifest((fs::path(dirs[i]) / "sweep.yaml").string());
    if (other.sweep_id != m.sweep_id)
      throw ConfigError(fmt::format(
          "'{}' holds sweep '{}' ({}) but '{}' holds sweep '{}' ({}): merge takes the folders "
          "of one sweep",
          dirs[i], other.name, other.sweep_id, dirs.front(), m.name, m.sweep_id));
  }
  std::vector<std::string> missing;
  reports::SweepReport report = assemble_report(m, dirs, &missing);
  // Point folders the manifest does not list (an earlier sweep resumed into the same folder).
  std::set<std::string> listed;
  for (const auto& p : m.points) listed.insert(p.id);
  size_t stray = 0;
  for (const auto& d : dirs) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(fs::path(d) / "points", ec)) {
      const std::string name = e.path().filename().string();
      if (e.is_directory() && !name.empty() && name[0] != '.' && !listed.count(name)) ++stray;
    }
  }
  if (stray)
    fmt::print(stderr, "note: {} point folder(s) not in sweep '{}' left out\n", stray, m.name);
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 20; ++i) list += "\n  " + missing[i];
    if (missing.size() > 20) list += fmt::format("\n  ... and {} more", missing.size() - 20);
    std::set<std::string> found;
    for (const auto& p : report.points) found.insert(p.id);
    const std::string what = fmt::format(
        "{} of {} distinct points of sweep '{}' have no report (not run yet, failed, "
        "or in a folder not given):{}",
        missing.size(), missing.size() + found.size(), m.name, list);
    if (!allow_partial)
      throw ConfigError(
          what + "\nrun the missing shards (or the sweep with --resume), or pass --allow-partial");
    fmt::print(stderr, "warning: {}\n", what);
  }
  for (const auto& o : outputs) write_report(report, o);
  fmt::print("{}", format_summary(report));
  fmt::print(stderr, "merged {} points from {} folder(s) into {}\n", report.points.size(),
             dirs.size(), join(outputs));
  return kExitOk;
}

}  // namespace npusim::app
