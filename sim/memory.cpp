#include "sim/memory.hpp"

#include <algorithm>
#include <limits>

namespace npusim::sim {

L2Cache::L2Cache(uint64_t capacity_bytes, uint32_t line_bytes, uint64_t address_space_bytes)
    : line_bytes_(line_bytes), capacity_lines_(std::max<uint64_t>(1, capacity_bytes / line_bytes)) {
  lines_.resize(address_space_bytes / line_bytes + 2);
}

void L2Cache::unlink(uint32_t line) {
  uint32_t p = lines_[line].prev, n = lines_[line].next;
  if (p != kNone) lines_[p].next = n; else head_ = n;
  if (n != kNone) lines_[n].prev = p; else tail_ = p;
}

void L2Cache::push_front(uint32_t line) {
  lines_[line].prev = kNone;
  lines_[line].next = head_;
  if (head_ != kNone) lines_[head_].prev = line;
  head_ = line;
  if (tail_ == kNone) tail_ = line;
}

void L2Cache::touch(uint32_t line, bool write, Access& acc) {
  ++acc.lines;
  if (lines_[line].state) {
    ++acc.hit_lines;
    if (head_ != line) {
      unlink(line);
      push_front(line);
    }
  } else {
    if (size_ == capacity_lines_) {
      uint32_t victim = tail_;
      unlink(victim);
      if (lines_[victim].state == 2) {
        ++acc.writeback_lines;
        --dirty_;
      }
      lines_[victim].state = 0;
      --size_;
    }
    push_front(line);
    lines_[line].state = 1;
    ++size_;
  }
  if (write && lines_[line].state != 2) {
    lines_[line].state = 2;
    ++dirty_;
  }
}

L2Cache::Access L2Cache::access(const GmRegion& r, bool write) {
  Access acc;
  uint64_t last = UINT64_MAX;
  for (uint32_t row = 0; row < r.rows; ++row) {
    uint64_t a = r.addr + row * r.stride;
    uint64_t first_line = a / line_bytes_, last_line = (a + r.row_bytes - 1) / line_bytes_;
    for (uint64_t l = first_line; l <= last_line && l < lines_.size(); ++l) {
      if (l == last) continue;  // rows sharing a line touch it once
      touch(static_cast<uint32_t>(l), write, acc);
      last = l;
    }
  }
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
