#include "sim/memory.hpp"

#include <algorithm>
#include <bit>
#include <limits>
#include <stdexcept>

namespace npusim::sim {

L2Cache::L2Cache(uint64_t capacity_bytes, uint32_t line_bytes, uint64_t address_space_bytes)
    : line_bytes_(line_bytes),
      line_shift_(std::has_single_bit(line_bytes) ? std::countr_zero(line_bytes) : -1),
      capacity_lines_(std::max<uint64_t>(1, capacity_bytes / line_bytes)),
      address_lines_(address_space_bytes / line_bytes + 2) {
  // Node indices are 32-bit (kNone reserved); at most one page per resident line can be in use.
  const uint64_t max_pages = std::min(capacity_lines_, (address_lines_ >> kPageBits) + 1);
  if (max_pages > (uint64_t{kNone} >> kPageBits)) throw std::length_error("L2Cache: too many lines");
  grow_table();
  const uint64_t max_resident = std::min(capacity_lines_, address_lines_);
  history_.assign(std::bit_ceil(std::clamp<uint64_t>(4 * max_resident, 1024, uint64_t{1} << 24)), kNone);
  history_mask_ = static_cast<uint32_t>(history_.size() - 1);
}

void L2Cache::grow_table() {
  std::vector<Slot> old = std::move(slots_);
  const size_t size = std::max<size_t>(16, 2 * old.size());
  slots_.assign(size, Slot{0, kNone});
  mask_ = size - 1;
  hash_shift_ = 64 - std::countr_zero(size);
  for (const Slot& s : old) {
    if (s.page == kNone) continue;
    size_t i = home(s.tag);
    while (slots_[i].page != kNone) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

size_t L2Cache::find(uint64_t number) const {
  const uint32_t tag = static_cast<uint32_t>(number);
  for (size_t i = home(number);; i = (i + 1) & mask_) {
    const Slot s = slots_[i];
    if (s.page == kNone || (s.tag == tag && pages_[s.page].number == number)) return i;
  }
}

// Takes a page for `number` (not in the table) and enters it.
uint32_t L2Cache::add_page(uint64_t number) {
  if (2 * (pages_.size() - free_pages_.size() + 1) > slots_.size()) grow_table();
  uint32_t p;
  if (!free_pages_.empty()) {
    p = free_pages_.back();
    free_pages_.pop_back();
  } else {
    p = static_cast<uint32_t>(pages_.size());
    pages_.emplace_back();
    nodes_.resize(nodes_.size() + kPageLines);
  }
  pages_[p].number = number;
  slots_[find(number)] = Slot{static_cast<uint32_t>(number), p};
  return p;
}

// Removes a page without resident lines from the table. Backward-shift deletion: entries after
// the hole that may live there move back, so probe runs stay unbroken without tombstones.
void L2Cache::drop_page(uint32_t page) {
  size_t hole = find(pages_[page].number);
  for (size_t j = (hole + 1) & mask_; slots_[j].page != kNone; j = (j + 1) & mask_) {
    const size_t h = home(slots_[j].tag);
    if (((hole - h) & mask_) < ((j - h) & mask_)) {  // the hole lies in [home, j): move back
      slots_[hole] = slots_[j];
      hole = j;
    }
  }
  slots_[hole].page = kNone;
  pages_[page].number = kNoPage;
  free_pages_.push_back(page);
}

L2Cache::Access L2Cache::access(const GmRegion& r, bool write) {
  // The hot state lives in locals for the loops (registers, rather than members the compiler must
  // reload after every node store) and is written back at the end.
  Node* nodes = nodes_.data();
  Page* pages = pages_.data();
  uint32_t head = head_, tail = tail_;
  uint64_t size = size_, dirty = dirty_, lines = 0, hits = 0, writebacks = 0;
  uint32_t* const history = history_.data();
  uint32_t history_next = history_next_;
  uint64_t number = kNoPage;  // the page of the line touched last, and its index (kNone: absent)
  uint32_t page = kNone;

  // One line: a hit moves it to the front of the LRU list; a miss evicts the tail when the cache
  // is full and enters the line at the front.
  auto touch = [&](uint64_t line) __attribute__((always_inline)) {
    ++lines;
    if (line >> kPageBits != number) {
      number = line >> kPageBits;
      page = page_of(number);
    }
    const uint32_t off = static_cast<uint32_t>(line % kPageLines);
    uint32_t n = (page << kPageBits) + off;
    if (page != kNone && nodes[n].state) {
      ++hits;
      if (n != head) {  // n has a predecessor
        const uint32_t p = nodes[n].prev, x = nodes[n].next;
        nodes[p].next = x;
        if (x != kNone) nodes[x].prev = p; else tail = p;
        nodes[n].prev = kNone;
        nodes[n].next = head;
        nodes[head].prev = n;
        head = n;
      }
    } else {
      if (size == capacity_lines_) {
        // The line touched kVictimsAhead after the victim is likely a victim soon: prefetch it.
        constexpr uint32_t kVictimsAhead = 16;
        const uint32_t v = tail;
        const uint32_t soon = history[(nodes[v].touched + kVictimsAhead) & history_mask_];
        if (soon != kNone) __builtin_prefetch(&nodes[soon]);
        tail = nodes[v].prev;
        if (tail != kNone) nodes[tail].next = kNone; else head = kNone;
        if (nodes[v].state == 2) {
          ++writebacks;
          --dirty;
        }
        nodes[v].state = 0;
        if (--pages[v >> kPageBits].resident == 0) {
          if (v >> kPageBits == page) page = kNone;  // the page of this very line
          drop_page(v >> kPageBits);
        }
      } else {
        ++size;
      }
      if (page == kNone) {
        page = add_page(number);
        nodes = nodes_.data();
        pages = pages_.data();
        n = (page << kPageBits) + off;
      }
      nodes[n].state = 1;
      ++pages[page].resident;
      nodes[n].prev = kNone;
      nodes[n].next = head;
      if (head != kNone) nodes[head].prev = n; else tail = n;
      head = n;
    }
    if (write && nodes[n].state != 2) {
      nodes[n].state = 2;
      ++dirty;
    }
    nodes[n].touched = history_next;
    history[history_next] = n;
    history_next = (history_next + 1) & history_mask_;
  };

  // The node of each row's first line is prefetched kRowsAhead rows before the row is touched
  // (the page looked up then may be gone by the touch: a hint only).
  constexpr uint32_t kRowsAhead = 8;
  uint64_t ahead_number = kNoPage;
  uint32_t ahead_page = kNone;
  auto prefetch = [&](uint64_t line) __attribute__((always_inline)) {
    if (line >> kPageBits != ahead_number) {
      ahead_number = line >> kPageBits;
      ahead_page = page_of(ahead_number);
    }
    if (ahead_page != kNone) __builtin_prefetch(&nodes[(ahead_page << kPageBits) + line % kPageLines]);
  };
  const uint64_t max_line = address_lines_ - 1;

  // Rows in address order, each touching its lines (but the previous row's last line once only).
  auto rows = [&](auto line_of) {
    uint64_t a = r.addr, ahead = r.addr;
    for (uint32_t row = 0; row < std::min(r.rows, kRowsAhead); ++row, ahead += r.stride) prefetch(line_of(ahead));
    uint64_t last = UINT64_MAX;  // the line touched last
    for (uint32_t row = 0; row < r.rows; ++row, a += r.stride, ahead += r.stride) {
      if (row + kRowsAhead < r.rows) prefetch(line_of(ahead));
      uint64_t first = line_of(a);
      const uint64_t end = std::min(line_of(a + r.row_bytes - 1), max_line);  // inclusive
      if (first > end) continue;
      first += first == last;
      for (uint64_t l = first; l <= end; ++l) touch(l);
      last = end;
    }
  };
  // The common case, every row within one line (a tile's column of a row-major matrix): the same
  // walk without the per-row span of lines.
  auto one_line_rows = [&](int shift) {
    uint64_t a = r.addr, ahead = r.addr;
    for (uint32_t row = 0; row < std::min(r.rows, kRowsAhead); ++row, ahead += r.stride) prefetch(ahead >> shift);
    uint64_t last = UINT64_MAX;  // the line touched last
    for (uint32_t row = 0; row < r.rows; ++row, a += r.stride, ahead += r.stride) {
      if (row + kRowsAhead < r.rows) prefetch(ahead >> shift);
      const uint64_t l = a >> shift;
      if (l > max_line || l == last) continue;
      touch(l);
      last = l;
    }
  };

  const uint64_t line_mask = uint64_t{line_bytes_} - 1;
  if (line_shift_ < 0) {
    rows([bytes = uint64_t{line_bytes_}](uint64_t addr) { return addr / bytes; });
  } else if (r.row_bytes > 0 && (r.stride & line_mask) == 0 && (r.addr & line_mask) + r.row_bytes <= line_bytes_) {
    one_line_rows(line_shift_);
  } else {
    rows([shift = line_shift_](uint64_t addr) { return addr >> shift; });
  }

  head_ = head;
  tail_ = tail;
  size_ = size;
  dirty_ = dirty;
  history_next_ = history_next;
  Access acc;
  acc.lines = lines;
  acc.hit_lines = hits;
  acc.writeback_lines = writebacks;
  return acc;
}

void SharedLink::advance(double now) {
  if (now > last_) {
    vclock_ += (now - last_) * scale_;
    last_ = now;
  }
}

void SharedLink::add(double now, uint32_t flow, double bytes, double cap) {
  advance(now);
  heap_.push({vclock_ + bytes / cap, flow, cap});
  cap_sum_ += cap;
  rescale();
}

double SharedLink::next_finish() const {
  if (heap_.empty()) return std::numeric_limits<double>::infinity();
  return last_ + std::max(0.0, heap_.top().finish_v - vclock_) / scale_;
}

void SharedLink::pop_finished(double now, std::vector<uint32_t>& out) {
  advance(now);
  // Tolerance for the rounding of virtual-time arithmetic.
  const double eps = 1e-9 * std::max(1.0, vclock_);
  while (!heap_.empty() && heap_.top().finish_v <= vclock_ + eps) {
    cap_sum_ -= heap_.top().cap;
    out.push_back(heap_.top().flow);
    heap_.pop();
  }
  if (heap_.empty()) cap_sum_ = 0;  // clear accumulated rounding
  rescale();
}

}  // namespace npusim::sim
