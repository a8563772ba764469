// ThreadSanitizer stand-in for oneTBB (scripts/sanitize.sh tsan; why: ../README.md): the range of
// tbb::parallel_for(range, body), as much of oneTBB's blocked_range as npusim uses.
#pragma once

#include <cstddef>

namespace tbb {

template <typename Value>
class blocked_range {
 public:
  using const_iterator = Value;
  using size_type = std::size_t;

  blocked_range(Value begin, Value end, size_type grainsize = 1)
      : begin_(begin), end_(end), grainsize_(grainsize ? grainsize : 1) {}

  const_iterator begin() const { return begin_; }
  const_iterator end() const { return end_; }
  size_type size() const { return end_ > begin_ ? static_cast<size_type>(end_ - begin_) : 0; }
  size_type grainsize() const { return grainsize_; }
  bool empty() const { return !(begin_ < end_); }

 private:
  Value begin_, end_;
  size_type grainsize_;
};

}  // namespace tbb
