#include "sim/engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>

#include "common/errors.hpp"
#include "sim/memory.hpp"

namespace npusim::sim {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kSyncIssueCycles = 1;  // a flag or barrier instruction occupies its pipe one cycle

std::string describe(const Instr& ins);

// A FIFO of times that only grows at the back; cheap for the few entries a flag holds.
class TimeQueue {
 public:
  bool empty() const { return head_ == v_.size(); }
  size_t size() const { return v_.size() - head_; }
  double front() const { return v_[head_]; }
  void push(double t) { v_.push_back(t); }
  void push_sorted(double t) {
    v_.push_back(t);
    for (size_t i = v_.size() - 1; i > head_ && v_[i - 1] > v_[i]; --i) std::swap(v_[i - 1], v_[i]);
  }
  void pop() {
    if (++head_ == v_.size()) {
      v_.clear();
      head_ = 0;
    }
  }

 private:
  std::vector<double> v_;
  size_t head_ = 0;
};

struct QEntry {
  uint32_t pc;
  double ready;  // dispatch time
};

struct Waiting {
  uint32_t transfer;
  double data_ready;
};

struct PipeState {
  std::vector<QEntry> q;  // ring buffer of dispatched, not yet issued instructions
  size_t q_head = 0, q_count = 0;
  int depth = 1;
  uint64_t dispatched = 0, started = 0;
  std::vector<double> start_ring;  // data-start time of the last `depth` instructions
  double issue_free = 0;
  double busy_until = 0;      // end of the last data phase whose end is known
  double last_complete = 0;   // latest known completion
  double slice_end = 0;
  int unknown = 0;            // issued instructions whose completion is not yet known
  bool channel_reserved = false;  // a transfer with unknown end owns the data channel
  std::vector<Waiting> waiting;   // issued, queued behind the reserved channel
  size_t waiting_head = 0;
};

struct Transfer {
  uint32_t unit;
  uint32_t pc;
  Pipe pipe;
  bool gm;
  bool write;
  double issue;
  double data_start;
  double work;          // L2 work units (see memory.hpp)
  double cap;           // work units per cycle the path can take
  double local_cycles;  // data phase of a non-GM instruction queued behind a transfer
};

struct Unit {
  CoreKind kind;
  int index;
  const std::vector<Instr>* code;
  uint32_t pc = 0;
  double s_free = 0;
  std::array<PipeState, kNumPipes> pipes;
  std::vector<TimeQueue> flags;        // [src][dst][id]
  std::vector<TimeQueue> cross;        // [id]
  std::vector<int> cross_pending;      // sets delivered, not yet consumed
  std::vector<uint32_t> blocked_setters;  // units waiting for this unit's pending sets to drain
  double scheduled_wake = kInf;
  bool done = false;
  UnitStats stats;
};

enum class EvType : uint8_t { Wake, FlowStart, LocalDone, LinkCheck };

struct Event {
  double t;
  uint64_t seq;
  EvType type;
  uint32_t a;
  uint64_t b;
  bool operator>(const Event& o) const { return t != o.t ? t > o.t : seq > o.seq; }
};

class Engine {
 public:
  Engine(const HardwareSpec& hw, const Program& prog, const SimOptions& opt);
  SimResult run();

 private:
  void schedule(double t, EvType type, uint32_t a, uint64_t b = 0) {
    events_.push({t, seq_++, type, a, b});
  }
  void wake(uint32_t u, double t);
  void advance(uint32_t u, double now);
  bool dispatch(Unit& unit);
  bool try_issue(uint32_t u, Pipe p, double now, double& next_wake);
  void issue_work(uint32_t u, Pipe p, const Instr& ins, uint32_t pc, double st);
  void start_transfer(uint32_t id, double t);
  void complete_transfer(uint32_t id, double t);
  void record_slice(uint32_t u, Pipe p, const Instr& ins, double start, double end);
  void link_changed();
  double startup_cycles(const Instr& ins) const;
  double local_data_cycles(const Instr& ins) const;
  double issue_gap(const Instr& ins) const;
  bool deliver_cross(uint32_t from, const Instr& ins, double tf, double now);
  [[noreturn]] void report_deadlock() const;
  int flag_index(Pipe src, Pipe dst, int id) const {
    return (static_cast<int>(src) * kNumPipes + static_cast<int>(dst)) * hw_.sync.event_ids + id;
  }

  const HardwareSpec& hw_;
  const Program& prog_;
  SimOptions opt_;
  std::vector<Unit> units_;
  std::vector<int> aic_unit_, aiv_unit_;  // core index -> unit id (-1 when absent)
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events_;
  uint64_t seq_ = 0;
  L2Cache l2_;
  SharedLink link_;
  uint64_t link_version_ = 0;
  double miss_cost_;   // L2 work per byte served by HBM
  double write_cost_;  // L2 work per byte written
  std::vector<Transfer> transfers_;
  std::vector<uint32_t> free_transfers_;
  std::vector<uint32_t> finished_;
  std::vector<std::pair<int, double>> mode0_;  // per cross id: (sets so far, latest fire time), per kind
  SimResult res_;
};

Engine::Engine(const HardwareSpec& hw, const Program& prog, const SimOptions& opt)
    : hw_(hw),
      prog_(prog),
      opt_(opt),
      l2_(static_cast<uint64_t>(hw.l2.size_mib * 1048576.0), static_cast<uint32_t>(hw.l2.line_bytes),
          prog.gm_footprint_bytes),
      link_(hw.l2.aggregate_bw_gbs * 1e3 / hw.freq_mhz),
      miss_cost_(hw.l2.aggregate_bw_gbs / (hw.hbm.peak_bw_gbs * hw.hbm.efficiency)),
      write_cost_(hw.l2.aggregate_bw_gbs / hw.l2.aggregate_write_bw_gbs) {
  aic_unit_.assign(hw.num_aic, -1);
  aiv_unit_.assign(hw.num_aiv, -1);
  units_.resize(prog.cores.size());
  for (size_t i = 0; i < prog.cores.size(); ++i) {
    const CoreProgram& cp = prog.cores[i];
    Unit& u = units_[i];
    u.kind = cp.kind;
    u.index = cp.index;
    u.code = &cp.code;
    (cp.kind == CoreKind::Aic ? aic_unit_ : aiv_unit_)[cp.index] = static_cast<int>(i);
    const auto& depth = cp.kind == CoreKind::Aic ? hw.aic.queue_depth : hw.aiv.queue_depth;
    for (int p = 0; p < kNumPipes; ++p) {
      PipeState& ps = u.pipes[p];
      ps.depth = std::max(1, depth[p]);
      ps.q.resize(ps.depth);
      ps.start_ring.assign(ps.depth, 0.0);
    }
    u.flags.resize(static_cast<size_t>(kNumPipes) * kNumPipes * hw.sync.event_ids);
    u.cross.resize(hw.sync.cross_flag_ids);
    u.cross_pending.assign(hw.sync.cross_flag_ids, 0);
    u.stats.kind = cp.kind;
    u.stats.index = cp.index;
  }
  mode0_.assign(2 * static_cast<size_t>(hw.sync.cross_flag_ids), {0, 0.0});
}

void Engine::wake(uint32_t u, double t) {
  Unit& unit = units_[u];
  if (t < unit.scheduled_wake) {
    unit.scheduled_wake = t;
    schedule(t, EvType::Wake, u);
  }
}

double Engine::startup_cycles(const Instr& ins) const {
  switch (ins.op) {
    case Op::Copy: return hw_.path(ins.path).startup_cycles;
    case Op::Mmad: return hw_.aic.mmad_head_cycles;
    case Op::Vector: return hw_.aiv.vector_startup_cycles;
    default: return 0;
  }
}

double Engine::local_data_cycles(const Instr& ins) const {
  switch (ins.op) {
    case Op::Copy: return hw_.path(ins.path).data_cycles(ins.bytes);
    case Op::Mmad: {
      double k0 = hw_.aic.cube_k0[static_cast<int>(ins.dtype)];
      double fractals = std::ceil(ins.m / 16.0) * std::ceil(ins.n / 16.0) * std::ceil(ins.k / k0);
      return fractals + hw_.aic.mmad_issue_cycles;
    }
    case Op::Vector:
      return std::ceil(ins.m / hw_.aiv.vec_rate[static_cast<int>(ins.vop)][static_cast<int>(ins.dtype)]);
    default: return 0;
  }
}

double Engine::issue_gap(const Instr& ins) const {
  switch (ins.op) {
    case Op::Copy:
      return (path_reads_gm(ins.path) || path_writes_gm(ins.path)) ? hw_.mte_issue_gap_cycles : 1.0;
    case Op::Vector: return std::max(1.0, hw_.aiv.vector_issue_cycles);
    default: return kSyncIssueCycles;
  }
}

bool Engine::dispatch(Unit& unit) {
  bool progress = false;
  const auto& code = *unit.code;
  while (unit.pc < code.size()) {
    const Instr& ins = code[unit.pc];
    if (ins.op == Op::Scalar) {  // occupies the scalar unit, and so delays every later dispatch
      unit.s_free += ins.m;
      ++unit.pc;
      progress = true;
      continue;
    }
    if (ins.op == Op::Barrier && ins.pipe == Pipe::S) {
      double drained = unit.s_free;
      for (auto& ps : unit.pipes) {
        if (ps.q_count || ps.unknown) return progress;
        drained = std::max(drained, ps.last_complete);
      }
      unit.s_free = drained + hw_.scalar_dispatch_cycles;
      ++unit.pc;
      progress = true;
      continue;
    }
    PipeState& ps = unit.pipes[static_cast<int>(ins.pipe)];
    const uint64_t j = ps.dispatched;
    double t = unit.s_free;
    if (j >= static_cast<uint64_t>(ps.depth)) {
      if (ps.started + ps.depth <= j) return progress;  // queue full until its head moves data
      t = std::max(t, ps.start_ring[(j - ps.depth) % ps.depth]);
    }
    ps.q[(ps.q_head + ps.q_count) % ps.depth] = {unit.pc, t};
    ++ps.q_count;
    ++ps.dispatched;
    unit.s_free = t + hw_.scalar_dispatch_cycles;
    ++unit.pc;
    progress = true;
  }
  return progress;
}

void Engine::record_slice(uint32_t u, Pipe p, const Instr& ins, double start, double end) {
  Unit& unit = units_[u];
  PipeState& ps = unit.pipes[static_cast<int>(p)];
  double s = std::max(start, ps.slice_end);
  if (end > s) {
    unit.stats.pipes[static_cast<int>(p)].busy_cycles += end - s;
    if (opt_.trace) {
      uint8_t sub = ins.op == Op::Copy ? static_cast<uint8_t>(ins.path)
                    : ins.op == Op::Vector ? static_cast<uint8_t>(ins.vop)
                                           : static_cast<uint8_t>(ins.dtype);
      res_.slices.push_back({u, p, ins.op, sub, s, end});
    }
    ps.slice_end = end;
  }
  ps.last_complete = std::max(ps.last_complete, end);
}

// Issues a Copy/Mmad/Vector at `st` (<= now for GM copies).
void Engine::issue_work(uint32_t u, Pipe p, const Instr& ins, uint32_t pc, double st) {
  Unit& unit = units_[u];
  PipeState& ps = unit.pipes[static_cast<int>(p)];
  auto& pstats = unit.stats.pipes[static_cast<int>(p)];
  ++pstats.instructions;
  const bool gm = ins.op == Op::Copy && (path_reads_gm(ins.path) || path_writes_gm(ins.path));
  if (ins.op == Op::Copy) {
    pstats.bytes += ins.bytes;
    res_.path_bytes[static_cast<int>(ins.path)] += ins.bytes;
  }
  double startup = startup_cycles(ins);

  if (!gm && !ps.channel_reserved) {
    // Everything known now: compute the data phase directly.
    double data_start = std::max(st + startup, ps.busy_until);
    double end = data_start + local_data_cycles(ins);
    ps.start_ring[ps.started % ps.depth] = data_start;
    ++ps.started;
    ps.busy_until = end;
    record_slice(u, p, ins, st, end);
    if (opt_.record_work) res_.work.push_back({u, pc, data_start, end});
    return;
  }

  uint32_t id;
  if (!free_transfers_.empty()) {
    id = free_transfers_.back();
    free_transfers_.pop_back();
  } else {
    id = static_cast<uint32_t>(transfers_.size());
    transfers_.emplace_back();
  }
  Transfer& tr = transfers_[id];
  tr = Transfer{u, pc, p, gm, false, st, 0, 0, 0, 0};
  if (gm) {
    const bool write = path_writes_gm(ins.path);
    tr.write = write;
    L2Cache::Access acc = l2_.access(ins.gm, write);
    const uint64_t line = l2_.line_bytes();
    auto& m = res_.mem;
    uint64_t wb = acc.writeback_lines * line;
    m.hbm_write_bytes += wb;
    const double bytes = ins.bytes;
    const double wb_work = static_cast<double>(wb) * miss_cost_;
    if (write) {
      m.gm_write_bytes += ins.bytes;
      m.l2_write_lines += acc.lines;
      tr.work = bytes * write_cost_ + wb_work;
    } else {
      m.gm_read_bytes += ins.bytes;
      m.l2_read_lines += acc.lines;
      m.l2_read_hit_lines += acc.hit_lines;
      m.hbm_read_bytes += (acc.lines - acc.hit_lines) * line;
      const double miss_frac = acc.lines ? static_cast<double>(acc.lines - acc.hit_lines) / acc.lines : 0.0;
      tr.work = bytes * (1.0 - miss_frac + miss_frac * miss_cost_) + wb_work;
      if (acc.hit_lines < acc.lines) startup += hw_.l2.miss_extra_latency_cycles;
    }
    // The path's byte rate, expressed in L2 work: alone, the transfer takes bytes / rate.
    tr.cap = bytes > 0 ? hw_.path(ins.path).rate_at(ins.bytes) * tr.work / bytes : 1.0;
  } else {
    tr.local_cycles = local_data_cycles(ins);
  }
  ++ps.unknown;
  double data_ready = st + startup;
  if (!ps.channel_reserved) {
    ps.channel_reserved = true;
    schedule(std::max(data_ready, ps.busy_until), EvType::FlowStart, id);
  } else {
    ps.waiting.push_back({id, data_ready});
  }
}

void Engine::start_transfer(uint32_t id, double t) {
  Transfer& tr = transfers_[id];
  tr.data_start = t;
  PipeState& ps = units_[tr.unit].pipes[static_cast<int>(tr.pipe)];
  ps.start_ring[ps.started % ps.depth] = t;
  ++ps.started;
  wake(tr.unit, t);  // a queue slot may have opened for the scalar
  if (!tr.gm) {
    schedule(t + tr.local_cycles, EvType::LocalDone, id);
    return;
  }
  if (tr.work <= 0) {
    schedule(t, EvType::LocalDone, id);
    return;
  }
  link_.add(t, id, tr.work, tr.cap);
  link_changed();
}

void Engine::complete_transfer(uint32_t id, double t) {
  Transfer tr = transfers_[id];
  free_transfers_.push_back(id);
  Unit& unit = units_[tr.unit];
  PipeState& ps = unit.pipes[static_cast<int>(tr.pipe)];
  const Instr& ins = (*unit.code)[tr.pc];
  ps.busy_until = t;
  --ps.unknown;
  record_slice(tr.unit, tr.pipe, ins, tr.issue, t);
  if (opt_.record_work) res_.work.push_back({tr.unit, tr.pc, tr.data_start, t});
  ps.channel_reserved = false;
  if (ps.waiting_head < ps.waiting.size()) {
    Waiting w = ps.waiting[ps.waiting_head++];
    if (ps.waiting_head == ps.waiting.size()) {
      ps.waiting.clear();
      ps.waiting_head = 0;
    }
    ps.channel_reserved = true;
    schedule(std::max(w.data_ready, t), EvType::FlowStart, w.transfer);
  }
  wake(tr.unit, t);
}

void Engine::link_changed() {
  double t = link_.next_finish();
  ++link_version_;
  if (t < kInf) schedule(t, EvType::LinkCheck, 0, link_version_);
}

bool Engine::deliver_cross(uint32_t from, const Instr& ins, double tf, double now) {
  const Unit& src = units_[from];
  std::vector<int> targets;
  switch (ins.mode) {
    case 0: {  // all cores of this kind: released when every one of them has set
      auto& [count, latest] = mode0_[(src.kind == CoreKind::Aiv) * hw_.sync.cross_flag_ids + ins.id];
      ++count;
      latest = std::max(latest, tf);
      int members = 0;
      for (const auto& u : units_) members += u.kind == src.kind;
      if (count < members) return true;
      for (size_t i = 0; i < units_.size(); ++i)
        if (units_[i].kind == src.kind) targets.push_back(static_cast<int>(i));
      tf = latest;
      count = 0;
      latest = 0;
      break;
    }
    case 1:
      if (src.kind == CoreKind::Aiv && (src.index ^ 1) < hw_.num_aiv) targets.push_back(aiv_unit_[src.index ^ 1]);
      break;
    case 2:
      if (src.kind == CoreKind::Aic) {
        for (int k = 0; k < hw_.aiv_per_aic; ++k) targets.push_back(aiv_unit_[src.index * hw_.aiv_per_aic + k]);
      } else {
        targets.push_back(aic_unit_[src.index / hw_.aiv_per_aic]);
      }
      break;
  }
  for (int t : targets)
    if (t >= 0 && units_[t].cross_pending[ins.id] >= hw_.sync.cross_max_pending) {
      units_[t].blocked_setters.push_back(from);
      return false;
    }
  for (int t : targets) {
    if (t < 0) continue;
    units_[t].cross[ins.id].push_sorted(tf);
    ++units_[t].cross_pending[ins.id];
    wake(static_cast<uint32_t>(t), std::max(tf, now));
  }
  return true;
}

bool Engine::try_issue(uint32_t u, Pipe p, double now, double& next_wake) {
  Unit& unit = units_[u];
  PipeState& ps = unit.pipes[static_cast<int>(p)];
  if (!ps.q_count) return false;
  const QEntry e = ps.q[ps.q_head];
  const Instr& ins = (*unit.code)[e.pc];
  double st = std::max(ps.issue_free, e.ready);
  switch (ins.op) {
    case Op::Copy:
    case Op::Mmad:
    case Op::Vector: {
      const bool gm = ins.op == Op::Copy && (path_reads_gm(ins.path) || path_writes_gm(ins.path));
      if (gm && st > now) {  // shared state is touched only at its simulated time
        next_wake = std::min(next_wake, st);
        return false;
      }
      if (gm) st = std::max(st, now);
      issue_work(u, p, ins, e.pc, st);
      ps.issue_free = std::max(ps.issue_free, st + issue_gap(ins));
      break;
    }
    case Op::SetFlag: {
      if (ps.unknown) return false;
      double t = std::max(st, ps.last_complete);
      unit.flags[flag_index(p, ins.other, ins.id)].push(t + hw_.sync.set_wait_latency_cycles);
      ps.issue_free = t + kSyncIssueCycles;
      break;
    }
    case Op::WaitFlag: {
      TimeQueue& f = unit.flags[flag_index(ins.other, p, ins.id)];
      if (f.empty()) return false;
      double t = std::max(st, f.front());
      f.pop();
      ps.issue_free = t + kSyncIssueCycles;
      ps.last_complete = std::max(ps.last_complete, t);
      break;
    }
    case Op::Barrier: {
      if (ps.unknown) return false;
      double t = std::max(st, ps.last_complete);
      ps.issue_free = t + kSyncIssueCycles;
      break;
    }
    case Op::CrossSet: {
      if (ps.unknown) return false;
      double t = std::max({st, ps.last_complete, now});
      if (!deliver_cross(u, ins, t + hw_.sync.cross_core_latency_cycles, now)) return false;
      ps.issue_free = t + kSyncIssueCycles;
      break;
    }
    case Op::Scalar:
      throw InternalError("scalar work is executed at dispatch and never queued on a pipe");
    case Op::CrossWait: {
      TimeQueue& f = unit.cross[ins.id];
      if (f.empty()) return false;
      if (f.front() > now || st > now) {
        next_wake = std::min(next_wake, std::max(f.front(), st));
        return false;
      }
      double t = std::max(st, f.front());
      f.pop();
      --unit.cross_pending[ins.id];
      for (uint32_t s : unit.blocked_setters) wake(s, now);
      unit.blocked_setters.clear();
      ps.issue_free = t + kSyncIssueCycles;
      ps.last_complete = std::max(ps.last_complete, t);
      break;
    }
  }
  if (ins.op != Op::Copy && ins.op != Op::Mmad && ins.op != Op::Vector) {
    // Sync instructions start (and free their queue slot) when they issue.
    ps.start_ring[ps.started % ps.depth] = ps.issue_free - kSyncIssueCycles;
    ++ps.started;
  }
  ps.q_head = (ps.q_head + 1) % ps.depth;
  --ps.q_count;
  return true;
}

void Engine::advance(uint32_t u, double now) {
  Unit& unit = units_[u];
  if (unit.done) return;
  double next_wake = kInf;
  bool progress = true;
  while (progress) {
    progress = dispatch(unit);
    for (int p = 0; p < kNumPipes; ++p)
      while (try_issue(u, static_cast<Pipe>(p), now, next_wake)) progress = true;
  }
  if (unit.pc == unit.code->size()) {
    bool idle = true;
    double finish = unit.s_free;
    for (const auto& ps : unit.pipes) {
      idle = idle && !ps.q_count && !ps.unknown;
      finish = std::max(finish, ps.last_complete);
    }
    if (idle) {
      unit.done = true;
      unit.stats.finish_cycles = finish;
      return;
    }
  }
  if (next_wake < kInf) wake(u, next_wake);
}

SimResult Engine::run() {
  for (uint32_t u = 0; u < units_.size(); ++u) wake(u, 0.0);
  while (!events_.empty()) {
    Event ev = events_.top();
    events_.pop();
    ++res_.events;
    switch (ev.type) {
      case EvType::Wake:
        if (units_[ev.a].scheduled_wake == ev.t) units_[ev.a].scheduled_wake = kInf;
        advance(ev.a, ev.t);
        break;
      case EvType::FlowStart:
        start_transfer(ev.a, ev.t);
        break;
      case EvType::LocalDone:
        complete_transfer(ev.a, ev.t);
        break;
      case EvType::LinkCheck: {
        if (ev.b != link_version_) break;  // superseded by a later change
        finished_.clear();
        link_.pop_finished(ev.t, finished_);
        link_changed();
        for (uint32_t id : finished_) complete_transfer(id, ev.t);
        break;
      }
    }
  }
  for (const auto& u : units_)
    if (!u.done) report_deadlock();
  res_.mem.hbm_flush_bytes = l2_.dirty_lines() * l2_.line_bytes();
  for (auto& u : units_) {
    res_.cycles = std::max(res_.cycles, u.stats.finish_cycles);
    res_.instructions += u.code->size();
    res_.units.push_back(u.stats);
  }
  return std::move(res_);
}

std::string describe(const Instr& ins) {
  switch (ins.op) {
    case Op::Copy: return fmt::format("copy {} ({} B)", path_name(ins.path), ins.bytes);
    case Op::Mmad: return fmt::format("mmad {}x{}x{}", ins.m, ins.n, ins.k);
    case Op::Vector: return fmt::format("vector {} {} x{}", vec_op_name(ins.vop), dtype_name(ins.dtype), ins.m);
    case Op::SetFlag: return fmt::format("set_flag {}->{} event {}", pipe_name(ins.pipe), pipe_name(ins.other), ins.id);
    case Op::WaitFlag: return fmt::format("wait_flag {}->{} event {}", pipe_name(ins.other), pipe_name(ins.pipe), ins.id);
    case Op::Barrier: return fmt::format("pipe_barrier {}", ins.pipe == Pipe::S ? "ALL" : pipe_name(ins.pipe));
    case Op::CrossSet: return fmt::format("cross_core_set_flag mode {} flag {}", ins.mode, ins.id);
    case Op::CrossWait: return fmt::format("cross_core_wait_flag flag {}", ins.id);
    case Op::Scalar: return fmt::format("scalar {} cycles", ins.m);
  }
  return "?";
}

void Engine::report_deadlock() const {
  std::string msg = "deadlock: the program cannot finish";
  int shown = 0;
  for (const auto& u : units_) {
    if (u.done) continue;
    if (++shown > 8) {
      msg += "\n  ... and more cores";
      break;
    }
    std::string core = fmt::format("{}{}", core_kind_name(u.kind), u.index);
    bool any = false;
    for (int p = 0; p < kNumPipes; ++p) {
      const PipeState& ps = u.pipes[p];
      if (!ps.q_count) continue;
      const Instr& ins = (*u.code)[ps.q[ps.q_head].pc];
      std::string why;
      if (ins.op == Op::WaitFlag) why = "the flag is never set";
      else if (ins.op == Op::CrossWait) why = "no core sets this cross-core flag";
      else if (ins.op == Op::CrossSet) why = fmt::format("the target already holds {} pending sets", hw_.sync.cross_max_pending);
      else why = "blocked behind work that cannot complete";
      msg += fmt::format("\n  {} pipe {}: instruction #{} '{}' waits: {}", core, pipe_name(static_cast<Pipe>(p)),
                         ps.q[ps.q_head].pc, describe(ins), why);
      any = true;
    }
    if (u.pc < u.code->size()) {
      const Instr& next = (*u.code)[u.pc];
      msg += fmt::format("\n  {} scalar: cannot dispatch #{} '{}' ({})", core, u.pc, describe(next),
                         next.op == Op::Barrier && next.pipe == Pipe::S ? "waiting for all pipes to drain"
                                                                       : fmt::format("{} queue full", pipe_name(next.pipe)));
      any = true;
    }
    if (!any) msg += fmt::format("\n  {}: waiting for in-flight work", core);
  }
  throw SimError(msg);
}

bool pipe_allowed(CoreKind k, Pipe p) {
  if (p == Pipe::S || p == Pipe::Mte2) return true;
  if (k == CoreKind::Aic) return p == Pipe::Mte1 || p == Pipe::M || p == Pipe::Fixpipe;
  return p == Pipe::V || p == Pipe::Mte3;
}

}  // namespace

void check_program(const HardwareSpec& hw, const Program& prog) {
  for (const auto& cp : prog.cores) {
    const int limit = cp.kind == CoreKind::Aic ? hw.num_aic : hw.num_aiv;
    std::string core = fmt::format("{}{}", core_kind_name(cp.kind), cp.index);
    if (cp.index < 0 || cp.index >= limit)
      throw SimError(fmt::format("program '{}': core {} does not exist on {} ({} {}s)", prog.name, core, hw.name,
                                 limit, core_kind_name(cp.kind)));
    for (size_t i = 0; i < cp.code.size(); ++i) {
      const Instr& ins = cp.code[i];
      auto bad = [&](const std::string& why) {
        throw SimError(fmt::format("program '{}': {} instruction #{} '{}': {}", prog.name, core, i, describe(ins), why));
      };
      if (!pipe_allowed(cp.kind, ins.pipe)) bad(fmt::format("pipe {} does not exist on an {}", pipe_name(ins.pipe), core_kind_name(cp.kind)));
      switch (ins.op) {
        case Op::Copy:
          if (!hw.path(ins.path).available) bad(fmt::format("path {} does not exist on {}", path_name(ins.path), hw.name));
          if ((path_reads_gm(ins.path) || path_writes_gm(ins.path)) &&
              ins.gm.addr + (ins.gm.rows ? (ins.gm.rows - 1) * ins.gm.stride + ins.gm.row_bytes : 0) > prog.gm_footprint_bytes)
            bad("GM region lies outside the program's footprint");
          break;
        case Op::Mmad:
          if (!hw.aic.cube_k0[static_cast<int>(ins.dtype)]) bad(fmt::format("the cube does not support {}", dtype_name(ins.dtype)));
          break;
        case Op::Vector:
          if (!(hw.aiv.vec_rate[static_cast<int>(ins.vop)][static_cast<int>(ins.dtype)] > 0))
            bad(fmt::format("the vector unit has no rate for {} on {}", vec_op_name(ins.vop), dtype_name(ins.dtype)));
          if (ins.vop == VecOp::Sort32 && ins.m % 32)
            bad(fmt::format("sort32 sorts whole blocks of 32 pairs; {} is not a multiple of 32", ins.m));
          break;
        case Op::SetFlag:
        case Op::WaitFlag:
          if (ins.id >= hw.sync.event_ids) bad(fmt::format("event id {} >= {}", ins.id, hw.sync.event_ids));
          if (!pipe_allowed(cp.kind, ins.other)) bad("peer pipe does not exist on this core");
          break;
        case Op::CrossSet:
        case Op::CrossWait:
          if (ins.id >= hw.sync.cross_flag_ids) bad(fmt::format("cross-core flag id {} >= {}", ins.id, hw.sync.cross_flag_ids));
          if (ins.op == Op::CrossSet && ins.mode > 2) bad(fmt::format("cross-core mode {} not modelled (0, 1, 2)", ins.mode));
          break;
        case Op::Barrier:
          break;
        case Op::Scalar:
          if (ins.pipe != Pipe::S) bad("scalar work runs on the S pipe");
          break;
      }
    }
  }
}

SimResult simulate(const HardwareSpec& hw, const Program& prog, const SimOptions& opt) {
  check_program(hw, prog);
  Engine engine(hw, prog, opt);
  return engine.run();
}

}  // namespace npusim::sim
