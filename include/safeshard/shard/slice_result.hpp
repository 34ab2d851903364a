// slice_result: what a layout computes for one rank (local shape, slice map), or why not.
#pragma once

#include <cstddef>
#include <cstdint>

#include "safeshard/config.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout_status.hpp"
#include "safeshard/shard/segment.hpp"
#include "safeshard/shard/slice_map.hpp"

namespace safeshard {

// Most source tensors one parameter is made of (q, k, v).
inline constexpr std::size_t max_sources = 4;

struct slice_result {
    layout_status status = layout_status::ok;
    shape global{};       // the parameter's whole shape: sources concatenated along dim
    shape local{};        // this rank's shape (padded rows included)
    slice_map map{};      // boxes from the sources into the local tensor, zero regions
    segment_list runs{};  // the same, as runs along dim (for printing and planning)
    std::uint8_t dim = 0;

    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool ok() const noexcept {
        return status == layout_status::ok;
    }
};

}  // namespace safeshard
