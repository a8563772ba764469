// Building blocks of the kernel templates' tiling search spaces (search_space.hpp): the value
// ladders a kernel engineer tries (powers of two and the 1.5x steps between them, as catlass and
// the Ascend samples size their tiles) and the rule that keeps one representative of the values
// that all cover a tiling's work (core counts beyond the work units, sub-tiles beyond a share).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "kernels/search_space.hpp"

namespace npusim::kernels::space {

// Multiples of `align` on the align x {1, 1.5, 2, 3, 4, 6, ...} ladder within [lo, hi], plus hi
// itself when it is a multiple of `align` (a tile covering the whole extent); ascending.
std::vector<int64_t> ladder(int64_t lo, int64_t hi, int64_t align = 1);

// `values` with `x` added (a default that is off the ladder), ascending and unique; x <= 0 is
// ignored.
std::vector<int64_t> with(std::vector<int64_t> values, int64_t x);

// Core counts worth trying on a template with `hw_cores` cores whose tilings have at most
// `max_work` work units: the ladder from a eighth of the top to the top (top = min of the two),
// and the top itself.
std::vector<int64_t> core_counts(int64_t hw_cores, int64_t max_work);

// Whether a domain value `v` is worth trying when `need` units of it are all there is to cover:
// values up to `need`, and the smallest value of `domain` that reaches it (larger ones behave the
// same: the lowering clamps them).
bool within_reach(const std::vector<int64_t>& domain, int64_t v, int64_t need);

// The `tiling:` section of a point of `sp` when every parameter is a tiling key of its own name
// (an enum parameter gives its label).
std::function<nlohmann::json(const int64_t*)> tiling_by_name(const SearchSpace& sp);

}  // namespace npusim::kernels::space
