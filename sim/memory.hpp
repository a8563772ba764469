// The shared memory system behind GM: an L2 cache (fully associative, LRU, write-back,
// write-allocate; line granularity) and one bandwidth server shared by every transfer in flight.
//
// Sharing model: the L2 is a processor-sharing server measured in "L2 work": a byte that hits
// costs 1, a byte that misses (or is written back) costs B_L2 / B_HBM, a written byte costs
// B_L2 / B_L2write. Hits and misses are thus served one after the other, as the asc-devkit
// data_copy sample models them (time = hit/B_L2 + miss/B_HBM) and as its measurements agree
// (calibration/transfer_multicore.csv). A flow asks for `cap` work/cycle (its path's rate); while
// the caps in flight sum to more than the capacity, every flow is slowed by the same factor.
// Virtual time makes this O(log n) per change: a flow's finish point in virtual time is fixed
// when it starts, and the virtual clock runs at the current slow-down factor.
#pragma once

#include <cstdint>
#include <queue>
#include <vector>

#include "sim/program.hpp"

namespace npusim::sim {

class L2Cache {
 public:
  L2Cache(uint64_t capacity_bytes, uint32_t line_bytes, uint64_t address_space_bytes);

  struct Access {
    uint64_t lines = 0;
    uint64_t hit_lines = 0;
    uint64_t writeback_lines = 0;  // dirty lines evicted to make room
  };
  Access access(const GmRegion& region, bool write);
  uint64_t dirty_lines() const { return dirty_; }
  uint32_t line_bytes() const { return line_bytes_; }

 private:
  static constexpr uint32_t kNone = UINT32_MAX;
  void touch(uint32_t line, bool write, Access& acc);
  void unlink(uint32_t line);
  void push_front(uint32_t line);

  uint32_t line_bytes_;
  uint64_t capacity_lines_;
  uint64_t size_ = 0;
  uint64_t dirty_ = 0;
  uint32_t head_ = kNone, tail_ = kNone;  // most / least recently used
  struct Line {
    uint32_t prev = kNone, next = kNone;
    uint8_t state = 0;  // 0 absent, 1 clean, 2 dirty
  };
  std::vector<Line> lines_;  // one entry per line of the GM address space, links kept together
};

class SharedLink {
 public:
  explicit SharedLink(double capacity_bytes_per_cycle) : capacity_(capacity_bytes_per_cycle) {}

  void add(double now, uint32_t flow, double bytes, double cap);
  // Time of the next flow completion (infinity when idle).
  double next_finish() const;
  // Removes the flows that have finished by `now`, appending their ids.
  void pop_finished(double now, std::vector<uint32_t>& out);
  double capacity() const { return capacity_; }

 private:
  void advance(double now);
  void rescale() { scale_ = cap_sum_ > capacity_ ? capacity_ / cap_sum_ : 1.0; }

  struct Entry {
    double finish_v;
    uint32_t flow;
    double cap;
    bool operator>(const Entry& o) const {
      return finish_v != o.finish_v ? finish_v > o.finish_v : flow > o.flow;
    }
  };
  double capacity_;
  double cap_sum_ = 0;
  double scale_ = 1;
  double vclock_ = 0;
  double last_ = 0;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap_;
};

}  // namespace npusim::sim
