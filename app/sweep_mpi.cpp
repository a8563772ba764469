// `npusim sweep --mpi`: one sweep shared by the ranks of an MPI job (dynamic work sharing).
//
// Protocol. Every rank expands and validates the sweep itself (deterministic, so all agree on the
// points and their ids; an error on any rank stops all, via MPI_Allreduce). Rank 0 prepares OUT
// and then only coordinates: a worker sends a request (tag kTagRequest: the point it just finished,
// its exit code, seconds, error length, whether it is leaving, and whether the point's folder could
// not be written), followed by the error text (kTagError) when there is one; rank 0 answers with
// the next point index to run (kTagWork), or -1 to stop (interrupted, or a folder that could not be
// written: a full disk stops every rank). Workers write their point folders themselves (OUT is on a
// shared file system), so a point is published by the same atomic rename as in a single-process
// sweep; rank 0 then reads every point folder in point order and writes the merged report. The
// result is byte-identical to a single-process sweep (the points' wall_clock.seconds aside;
// report.csv, report.h5 and report.html whole): tests/workflow/mpi_sweep.sh. With one rank, the
// sweep runs locally.
#include <fmt/format.h>

#include <chrono>
#include <exception>
#include <map>

#include "app/sweep.hpp"

#ifdef NPUSIM_HAVE_MPI
#include <mpi.h>
#endif

namespace npusim::app {

#ifndef NPUSIM_HAVE_MPI

bool built_with_mpi() {
  return false;
}

int run_sweep_mpi(const std::string&, const SweepOptions&) {
  throw ConfigError(
      "--mpi: this npusim was built without MPI (install OpenMPI, e.g. apt-get install openmpi-bin "
      "libopenmpi-dev, and "
      "reconfigure with -DNPUSIM_WITH_MPI=ON); use --jobs N on one machine or --shard i/N across "
      "machines");
}

#else

namespace {

constexpr int kTagRequest = 1, kTagWork = 2, kTagError = 3;

// MPI_Init .. MPI_Finalize around one sweep.
class MpiSession {
 public:
  MpiSession() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) MPI_Init(nullptr, nullptr);
    owns_ = !inited;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~MpiSession() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  int rank() const { return rank_; }
  int size() const { return size_; }

 private:
  bool owns_ = false;
  int rank_ = 0, size_ = 1;
};

// Every rank learns whether any rank failed a step; each failing rank rethrows its own error, the
// others stop with a pointer to it.
void agree(std::exception_ptr failure, int rank) {
  int mine = failure ? 1 : 0, any = 0;
  MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (failure) std::rethrow_exception(failure);
  if (any)
    throw ConfigError(
        fmt::format("sweep stopped on rank {}: another rank failed (see its message)", rank));
}

struct Request {
  int64_t index = -1;  // the point just finished, or -1
  int64_t exit_code = 0;
  int64_t micros = 0;
  int64_t error_len = 0;
  int64_t leaving = 0;    // interrupted: this worker takes no more points
  int64_t unwritten = 0;  // the point's folder could not be written: no more points for anyone
};
constexpr int kRequestFields = 6;
static_assert(sizeof(Request) == kRequestFields * sizeof(int64_t));

void coordinate(const SweepPlan& plan, const std::vector<size_t>& todo,
                std::vector<PointOutcome>& outcomes, Progress& progress, int workers,
                bool& interrupted) {
  std::map<size_t, size_t> slot;  // point index -> position in todo
  for (size_t k = 0; k < todo.size(); ++k) slot[todo[k]] = k;
  size_t next = 0;
  bool stop = false;  // a point folder could not be written: hand out no more points
  while (workers > 0) {
    Request r;
    MPI_Status st;
    MPI_Recv(&r, kRequestFields, MPI_INT64_T, MPI_ANY_SOURCE, kTagRequest, MPI_COMM_WORLD, &st);
    std::string error(static_cast<size_t>(r.error_len), '\0');
    if (r.error_len > 0)
      MPI_Recv(error.data(), static_cast<int>(r.error_len), MPI_CHAR, st.MPI_SOURCE, kTagError,
               MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (r.index >= 0) {
      PointOutcome& o = outcomes[slot.at(static_cast<size_t>(r.index))];
      o.ok = r.exit_code == 0, o.exit_code = static_cast<int>(r.exit_code), o.error = error,
      o.seconds = r.micros * 1e-6, o.unwritten = r.unwritten != 0;
      stop = stop || o.unwritten;
      progress.point_done(point_label(plan, plan.points[static_cast<size_t>(r.index)]), o);
    }
    if (r.leaving) {
      interrupted = true;
      --workers;
      continue;
    }
    int64_t work = -1;
    if (!InterruptGuard::interrupted() && !stop && next < todo.size())
      work = static_cast<int64_t>(todo[next++]);
    MPI_Send(&work, 1, MPI_INT64_T, st.MPI_SOURCE, kTagWork, MPI_COMM_WORLD);
    if (work < 0) --workers;
  }
  interrupted = interrupted || InterruptGuard::interrupted();
}

void work(SweepPlan& plan, const SweepOptions& opt) {
  Request r;
  std::string error;
  for (;;) {
    r.leaving = InterruptGuard::interrupted() ? 1 : 0;
    MPI_Send(&r, kRequestFields, MPI_INT64_T, 0, kTagRequest, MPI_COMM_WORLD);
    if (r.error_len > 0)
      MPI_Send(error.data(), static_cast<int>(r.error_len), MPI_CHAR, 0, kTagError, MPI_COMM_WORLD);
    if (r.leaving) return;
    int64_t index = -1;
    MPI_Recv(&index, 1, MPI_INT64_T, 0, kTagWork, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (index < 0) return;
    PlannedPoint& p = plan.points[static_cast<size_t>(index)];
    PointOutcome o = run_point(p, opt.out);
    p.run.reset();
    error = o.ok ? "" : o.error;
    r.index = index, r.exit_code = o.ok ? 0 : o.exit_code,
    r.micros = static_cast<int64_t>(o.seconds * 1e6), r.unwritten = o.unwritten ? 1 : 0;
    r.error_len = static_cast<int64_t>(error.size());
  }
}

}  // namespace

bool built_with_mpi() {
  return true;
}

int run_sweep_mpi(const std::string& file, const SweepOptions& opt) {
  if (opt.shard.active())
    throw ConfigError("--mpi shares the points across ranks; it does not take --shard");
  if (opt.jobs != 1)
    throw ConfigError(
        "--mpi runs one point per rank at a time; start more ranks instead of --jobs");
  MpiSession mpi;
  if (mpi.size() == 1) {
    SweepOptions local = opt;
    local.mpi = false;
    return run_sweep(file, local);
  }
  const auto t0 = std::chrono::steady_clock::now();
  SweepPlan plan;
  std::vector<size_t> todo;
  std::exception_ptr failure;
  try {
    plan = plan_sweep(load_sweep(file));
    if (mpi.rank() == 0) todo = prepare_out(plan, opt);
  } catch (...) {
    failure = std::current_exception();
  }
  agree(failure, mpi.rank());

  InterruptGuard guard;
  if (mpi.rank() != 0) {
    work(plan, opt);
    int code = 0;
    MPI_Bcast(&code, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return code;
  }

  size_t mine = 0;
  for (const auto& p : plan.points) mine += p.first == p.index;
  fmt::print(stderr,
             "sweep '{}': {} points, {} to run{} on {} MPI ranks (rank 0 coordinates) into {}\n",
             plan.spec.name, plan.points.size(), todo.size(),
             mine > todo.size() ? fmt::format(" ({} finished before)", mine - todo.size()) : "",
             mpi.size(), opt.out);
  std::vector<PointOutcome> outcomes(todo.size());
  bool interrupted = false;
  int code = kExitOk;
  try {
    Progress progress(mine, mine - todo.size());
    coordinate(plan, todo, outcomes, progress, mpi.size() - 1, interrupted);
    progress.finish();
    code = finish_sweep(plan, opt, todo, outcomes, interrupted);
    if (!stopped_early(outcomes, interrupted))
      publish_reports(plan, opt.out,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  } catch (...) {
    failure = std::current_exception();
    code = kExitConfig;
  }
  MPI_Bcast(&code, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (failure) std::rethrow_exception(failure);
  return code;
}

#endif

}  // namespace npusim::app
