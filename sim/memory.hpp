// The shared memory system behind GM: an L2 cache (fully associative, LRU, write-back,
// write-allocate; line granularity) and one bandwidth server shared by every transfer in flight.
//
// Cache bookkeeping: an exact LRU list over the resident lines, kept only for the GM pages
// (aligned runs of kPageLines lines) that hold a resident line, so memory follows what the L2
// holds rather than the GM footprint (tens of GB of expert weights for a MoE layer). Within a page
// the lines' list nodes sit side by side, as in a flat per-line array, so the lines of a strided
// tile or a stream stay near each other in host memory. An open-addressing hash table (linear
// probing, backward-shift deletion, at most half full, grown by doubling) maps a page number to
// its page; a page whose last line is evicted goes to a free list. The page of the previous line
// is remembered, so most touches skip the lookup. Host cache misses dominate the cost, so nodes
// are prefetched: each row's a few rows ahead, and the likely next victims from a ring of the
// latest touches (the lines touched after the LRU line are evicted next unless touched again).
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
  // Lines at or beyond address_space_bytes / line_bytes + 2 are ignored (never touched).
  L2Cache(uint64_t capacity_bytes, uint32_t line_bytes, uint64_t address_space_bytes);

  struct Access {
    uint64_t lines = 0;
    uint64_t hit_lines = 0;
    uint64_t writeback_lines = 0;  // dirty lines evicted to make room
  };
  // Touches the lines of every row in address order; rows sharing a line touch it once.
  Access access(const GmRegion& region, bool write);
  uint64_t dirty_lines() const { return dirty_; }
  uint32_t line_bytes() const { return line_bytes_; }

 private:
  static constexpr uint32_t kNone = UINT32_MAX;
  static constexpr uint64_t kNoPage = UINT64_MAX;
  static constexpr int kPageBits = 10;
  static constexpr uint32_t kPageLines = 1u << kPageBits;

  // Line i of page p is node (p << kPageBits) + i.
  struct Node {
    uint32_t prev = kNone, next = kNone;  // towards the most / least recently used end
    uint32_t touched = 0;                 // history_ index of the latest touch (a hint)
    uint8_t state = 0;                    // 0 absent, 1 clean, 2 dirty
  };
  struct Page {
    uint64_t number = kNoPage;  // line >> kPageBits
    uint32_t resident = 0;      // its lines in the cache
  };
  // A table entry: the page number's low 32 bits (which alone choose the home slot, so entries
  // move without reading their page) and the page; page == kNone marks an empty slot.
  struct Slot {
    uint32_t tag;
    uint32_t page;
  };

  size_t home(uint64_t number) const {
    return (static_cast<uint32_t>(number) * 0x9E3779B97F4A7C15ull) >> hash_shift_;
  }
  size_t find(uint64_t number) const;  // the page's slot, or the empty slot ending its probe run
  uint32_t page_of(uint64_t number) const { return slots_[find(number)].page; }  // kNone: absent
  uint32_t add_page(uint64_t number);
  void drop_page(uint32_t page);
  void grow_table();

  uint32_t line_bytes_;
  int line_shift_;            // log2(line_bytes_) when a power of two, else -1
  uint64_t capacity_lines_;   // lines the cache holds
  uint64_t address_lines_;    // lines that can be touched (address space + 2, as a bound)
  uint64_t size_ = 0;         // resident lines
  uint64_t dirty_ = 0;
  uint32_t head_ = kNone, tail_ = kNone;  // most / least recently used node
  std::vector<Node> nodes_;   // kPageLines per page
  std::vector<Page> pages_;
  std::vector<uint32_t> free_pages_;  // pages without resident lines
  std::vector<Slot> slots_;   // power-of-two size
  size_t mask_ = 0;
  int hash_shift_ = 64;       // 64 - log2(slots_.size())
  // The nodes touched, in order, overwritten round robin (4x the capacity): the lines touched
  // after the LRU line are the next victims unless touched again since. A prefetch hint only.
  std::vector<uint32_t> history_;
  uint32_t history_mask_ = 0;
  uint32_t history_next_ = 0;
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
