// Running a sweep's points: the output folder, one point's folder written atomically, the worker
// pool, progress, and a clean stop on SIGINT/SIGTERM.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include "app/sweep.hpp"
#include "common/text.hpp"
#include "reports/writers.hpp"

namespace npusim::app {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// A file inside a point's temporary folder: the folder's rename publishes it, so no rename of its
// own. Not flushed to disk: a killed sweep loses nothing the kernel holds, and three fdatasyncs per
// point (about 12 ms) would be most of a sweep's own cost per point. (After a power loss a point
// could hold a short file: remove its folder and --resume reruns it.)
void write_in_tmp(const fs::path& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0)
    throw std::runtime_error(
        fmt::format("cannot write '{}': {}", path.string(), std::strerror(errno)));
  int err = reports::write_all(fd, text, /*flush=*/false);
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0)
    throw std::runtime_error(
        fmt::format("cannot write '{}': {}", path.string(), std::strerror(err)));
}

std::string duration_text(double s) {
  const long t = static_cast<long>(s + 0.5);
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{}:{:02}", t / 60, t % 60);
}

std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the signal handler needs a lock-free flag");

struct sigaction g_old_int = {}, g_old_term = {};  // restored when the InterruptGuard ends

extern "C" void on_signal(int) {
  g_interrupted.store(true);
}

}  // namespace

std::string point_label(const SweepPlan& plan, const PlannedPoint& p) {
  std::string label = p.id;
  for (size_t a = 0; a < plan.spec.axes.size(); ++a) {
    const auto& key = plan.spec.axes[a].key;
    label += " " + key + "=" + (key == "base" ? fs::path(p.keys[a]).stem().string() : p.keys[a]);
  }
  return label;
}

// ---------------------------------------------------------------------------------------------

std::vector<size_t> prepare_out(const SweepPlan& plan, const SweepOptions& opt) {
  const fs::path out(opt.out), points = out / "points";
  std::error_code ec;
  // What OUT holds already: finished points (report.json) and the sweep they belong to.
  std::set<std::string> present, finished;
  if (fs::is_directory(points, ec)) {
    for (const auto& e : fs::directory_iterator(points, ec)) {
      const std::string name = e.path().filename().string();
      if (!e.is_directory() || name.empty() || name[0] == '.') continue;
      present.insert(name);
      if (fs::exists(e.path() / "report.json")) finished.insert(name);
    }
  }
  if (!present.empty() && !opt.resume) {
    std::string other;
    if (!fs::exists(out / "sweep.yaml")) {
      other = "points of an unknown sweep (no sweep.yaml)";
    } else {
      SweepManifest m = read_manifest((out / "sweep.yaml").string());
      if (m.sweep_id != plan.sweep_id)
        other = fmt::format("points of another sweep ('{}', {} points)", m.name, m.points.size());
    }
    if (!other.empty())
      throw ConfigError(fmt::format(
          "output folder '{}' holds {}; pass --resume to keep the points the two share, "
          "or choose another --out",
          opt.out, other));
  }
  fs::create_directories(points, ec);
  if (ec || !fs::is_directory(points))
    throw ConfigError(fmt::format("cannot create output folder '{}': {}", points.string(),
                                  ec ? ec.message() : "not a folder"));
  // What killed runs on this host left: point folders in the making, reports half written.
  reports::remove_stale_temps(points.string());
  reports::remove_stale_temps(out.string());
  reports::write_file_atomic((out / "sweep.yaml").string(), plan.resolved_yaml);

  std::vector<size_t> todo;
  for (const auto& p : plan.points) {
    if (p.first != p.index) continue;  // the same config as an earlier point
    if (opt.shard.active() && static_cast<int>(p.index % opt.shard.count) != opt.shard.index - 1)
      continue;
    if (opt.resume && finished.count(p.id)) continue;
    todo.push_back(p.index);
  }
  return todo;
}

PointOutcome simulate_point(const PlannedPoint& p, std::string& report_json) {
  PointOutcome o;
  const auto t0 = Clock::now();
  try {
    if (!p.run) throw InternalError("point " + p.id + " has no validated run");
    const LoadedRun& run = *p.run;
    // The point folder's own config and a command that reruns it: the same bytes wherever the
    // sweep ran (its --jobs, shard or rank are not part of the result).
    reports::RunReport rep = make_report(run.hw, "config.yaml", "npusim run config.yaml");
    if (run.graph) {
      GraphOutput g = execute_graph(run, false);
      rep.kernels = std::move(g.kernels);
      rep.graph = std::move(g.graph);
    } else {
      rep.kernels.push_back(execute(run).kernel);
    }
    rep.wall_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    report_json = reports::json_text(reports::to_json(rep));
    o.ok = true;
  } catch (const SimError& e) {
    o.exit_code = kExitSim, o.error = fmt::format("simulation error: {}", e.what());
  } catch (const ConfigError& e) {
    o.exit_code = kExitConfig, o.error = fmt::format("error: {}", e.what());
  } catch (const std::exception& e) {
    o.exit_code = kExitInternal, o.error = fmt::format("internal error: {}", e.what());
  }
  o.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return o;
}

void write_point_dir(const PlannedPoint& p, const std::string& out_dir, const PointOutcome& o,
                     const std::string& report_json) {
  const fs::path points = fs::path(out_dir) / "points";
  const fs::path tmp =
      points / fmt::format(".tmp-{}-{}-{}", p.id, reports::temp_host(), ::getpid());
  const fs::path final_dir = points / p.id;
  std::error_code ec;
  try {
    fs::remove_all(tmp, ec);
    if (!fs::create_directory(tmp, ec))
      throw std::runtime_error(fmt::format("cannot create '{}': {}", tmp.string(), ec.message()));
    write_in_tmp(tmp / "config.yaml", p.config_text);
    if (o.ok) write_in_tmp(tmp / "report.json", report_json);
    write_in_tmp(tmp / "log.txt",
                 fmt::format("point {} (index {})\nbase: {}\nset: {}\nstatus: {} ({:.3f} s)\n{}",
                             p.id, p.index, p.base, join(p.sets, " "), o.ok ? "ok" : "failed",
                             o.seconds, o.ok ? "" : o.error + "\n"));
    // Publish with one rename. An older folder of this id (a failed try, a rerun without --resume,
    // or the same point finished by another process) is swapped out atomically, then removed.
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      if (errno != ENOTEMPTY && errno != EEXIST)
        throw std::runtime_error(
            fmt::format("cannot rename '{}': {}", tmp.string(), std::strerror(errno)));
      if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) != 0)
        throw std::runtime_error(
            fmt::format("cannot replace '{}': {}", final_dir.string(), std::strerror(errno)));
      fs::remove_all(tmp, ec);  // now the old folder
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

PointOutcome run_point(const PlannedPoint& p, const std::string& out_dir) {
  std::string report_json;
  PointOutcome o = simulate_point(p, report_json);
  try {
    write_point_dir(p, out_dir, o, report_json);
  } catch (const std::exception& e) {
    o.ok = false, o.exit_code = kExitConfig, o.unwritten = true;
    o.error = fmt::format("cannot write the point folder: {}", e.what());
  }
  return o;
}

// ---------------------------------------------------------------------------------------------

struct Progress::State {
  std::mutex mu;
  size_t total = 0, done = 0, ran = 0, failed = 0;
  bool tty = false;
  Clock::time_point start = Clock::now(), last_line = Clock::now();
  size_t last_done_logged = 0;
};

Progress::Progress(size_t total, size_t already_done) : s_(std::make_shared<State>()) {
  s_->total = total;
  s_->done = s_->last_done_logged = already_done;
  s_->tty = isatty(STDERR_FILENO) != 0;
}

void Progress::point_done(const std::string& label, const PointOutcome& o) {
  std::lock_guard lock(s_->mu);
  auto& s = *s_;
  ++s.done, ++s.ran;
  if (!o.ok) {
    ++s.failed;
    fmt::print(stderr, "{}point {} failed: {}\n", s.tty ? "\r\x1b[K" : "", label, o.error);
  }
  const auto now = Clock::now();
  const double elapsed = std::chrono::duration<double>(now - s.start).count();
  const double rate = elapsed > 0 ? s.ran / elapsed : 0;
  const double eta = rate > 0 ? (s.total - s.done) / rate : 0;
  const std::string line =
      fmt::format("[{}/{}] {:.1f} pt/s ETA {} last: {}{}", s.done, s.total, rate,
                  duration_text(eta), label, s.failed ? fmt::format(" ({} failed)", s.failed) : "");
  if (s.tty) {
    fmt::print(stderr, "\r{}\x1b[K", line);
  } else if (now - s.last_line >= std::chrono::seconds(10) ||
             (s.done - s.last_done_logged) * 10 >= s.total || s.done == s.total) {
    fmt::print(stderr, "{}\n", line);
    s.last_line = now, s.last_done_logged = s.done;
  }
  std::fflush(stderr);
}

void Progress::finish() {
  std::lock_guard lock(s_->mu);
  if (s_->tty && s_->ran) fmt::print(stderr, "\n");
}

InterruptGuard::InterruptGuard() {
  g_interrupted.store(false);
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;  // a second signal acts as usual (kills)
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
}

InterruptGuard::~InterruptGuard() {
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
}

bool InterruptGuard::interrupted() {
  return g_interrupted.load();
}

std::vector<PointOutcome> run_points(SweepPlan& plan, const std::vector<size_t>& todo, int jobs,
                                     const std::string& out, Progress& progress) {
  std::vector<PointOutcome> outcomes(todo.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> unwritten{false};
  auto worker = [&] {
    while (!InterruptGuard::interrupted() && !unwritten.load()) {
      const size_t k = next.fetch_add(1);
      if (k >= todo.size()) return;
      PlannedPoint& p = plan.points[todo[k]];
      outcomes[k] = run_point(p, out);
      p.run.reset();  // only this worker touches point todo[k]
      if (outcomes[k].unwritten) unwritten.store(true);
      progress.point_done(point_label(plan, p), outcomes[k]);
    }
  };
  const int n = std::max(1, std::min<int>(jobs, static_cast<int>(todo.size())));
  if (n == 1) {
    worker();
  } else {
    std::vector<std::thread> pool;
    for (int t = 0; t < n; ++t) pool.emplace_back(worker);
    for (auto& t : pool) t.join();
  }
  progress.finish();
  return outcomes;
}

int finish_sweep(const SweepPlan& plan, const SweepOptions& opt, const std::vector<size_t>& todo,
                 const std::vector<PointOutcome>& outcomes, bool interrupted) {
  size_t failed = 0, ran = 0;
  int code = kExitOk;
  for (size_t k = 0; k < todo.size(); ++k) {
    if (outcomes[k].ok || outcomes[k].exit_code) ++ran;
    if (!outcomes[k].ok && outcomes[k].exit_code) {
      ++failed;
      if (code == kExitOk || outcomes[k].exit_code == kExitInternal) code = outcomes[k].exit_code;
    }
  }
  std::string again = plan.command + " --out " + opt.out + " --resume";
  if (opt.shard.active()) again += fmt::format(" --shard {}/{}", opt.shard.index, opt.shard.count);
  if (opt.mpi) again = "mpirun ... " + again + " --mpi";
  if (interrupted) {
    fmt::print(
        stderr,
        "interrupted: {} of {} points run in this session ({} still to run); finish with:\n  {}\n",
        ran, todo.size(), todo.size() - ran, again);
    return 130;
  }
  for (size_t k = 0; k < todo.size(); ++k)
    if (outcomes[k].unwritten) {
      // The first unwritten point says why (disk full, folder gone); the others fail alike.
      fmt::print(stderr,
                 "error: {}\nthe sweep stopped: {} of {} points run in this session, no report "
                 "written; free space (or fix the folder), then finish with:\n  {}\n",
                 outcomes[k].error, ran, todo.size(), again);
      return kExitConfig;
    }
  if (failed) {
    fmt::print(stderr, "{} of {} points failed (see points/<id>/log.txt):\n", failed, todo.size());
    for (size_t k = 0; k < todo.size(); ++k)
      if (!outcomes[k].ok)
        fmt::print(stderr, "  {}: {}\n", plan.points[todo[k]].id, outcomes[k].error);
  }
  return code;
}

bool stopped_early(const std::vector<PointOutcome>& outcomes, bool interrupted) {
  return interrupted || std::any_of(outcomes.begin(), outcomes.end(),
                                    [](const PointOutcome& o) { return o.unwritten; });
}

int run_sweep(const std::string& file, const SweepOptions& opt) {
  if (opt.mpi) return run_sweep_mpi(file, opt);
  if (opt.jobs < 1) throw ConfigError(fmt::format("--jobs {}: expected at least 1", opt.jobs));
  const auto t0 = Clock::now();
  // Everything is validated before the output folder is touched.
  SweepPlan plan = plan_sweep(load_sweep(file));
  std::vector<size_t> todo = prepare_out(plan, opt);
  size_t mine = 0;
  for (const auto& p : plan.points)
    if (p.first == p.index &&
        (!opt.shard.active() || static_cast<int>(p.index % opt.shard.count) == opt.shard.index - 1))
      ++mine;
  fmt::print(stderr, "sweep '{}': {} points{}, {} to run{} on {} job(s) into {}\n", plan.spec.name,
             plan.points.size(),
             opt.shard.active()
                 ? fmt::format(" (shard {}/{}: {})", opt.shard.index, opt.shard.count, mine)
                 : "",
             todo.size(),
             mine > todo.size() ? fmt::format(" ({} finished before)", mine - todo.size()) : "",
             opt.jobs, opt.out);
  std::vector<PointOutcome> outcomes;
  bool interrupted = false;
  {
    InterruptGuard guard;
    Progress progress(mine, mine - todo.size());
    outcomes = run_points(plan, todo, opt.jobs, opt.out, progress);
    interrupted = InterruptGuard::interrupted();
  }
  const int code = finish_sweep(plan, opt, todo, outcomes, interrupted);
  if (stopped_early(outcomes, interrupted)) return code;
  if (opt.shard.active()) {
    fmt::print(stderr, "shard {}/{} done; when every shard is: npusim merge {} -o report.h5\n",
               opt.shard.index, opt.shard.count, opt.out);
    return code;
  }
  publish_reports(plan, opt.out, std::chrono::duration<double>(Clock::now() - t0).count());
  return code;
}

}  // namespace npusim::app
