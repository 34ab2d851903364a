// padded_split<Dim, Multiple>: vocabulary padding as vLLM does it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/segment.hpp"

namespace safeshard {

// The dim is padded to a multiple of Multiple, then split evenly; rows beyond the real
// extent are zero-filled. The global shape stays the source shape; the local extent is
// padded / world. A padded size not divisible by world is an error, as in vLLM.
template <std::size_t Dim, std::uint64_t Multiple = default_vocab_multiple>
struct padded_split {
    static_assert(Dim < shape::capacity, "padded_split<Dim>: Dim beyond the highest tensor rank");
    static_assert(Multiple > 0, "padded_split: Multiple must be positive");
    static constexpr layout value = make_padded_split(static_cast<std::uint8_t>(Dim), Multiple);
};

namespace detail {
SAFESHARD_HOST_DEVICE constexpr layout_status plan_padded_split(
    std::uint64_t extent, std::uint64_t multiple, std::uint32_t world, std::uint32_t rank,
    segment_list& runs, std::uint64_t& local_extent) noexcept {
    if (multiple == 0) return layout_status::invalid_parameters;
    std::uint64_t padded = 0;
    if (align_up_overflows(extent, multiple, padded)) return layout_status::overflow;
    if (padded % world != 0) return layout_status::padded_indivisible;
    const std::uint64_t local = padded / world;
    const std::uint64_t lo = rank * local;
    const std::uint64_t real = lo >= extent ? 0 : (extent - lo < local ? extent - lo : local);
    local_extent = local;
    runs.push(segment{0, lo, real});
    return layout_status::ok;
}
}  // namespace detail

}  // namespace safeshard
