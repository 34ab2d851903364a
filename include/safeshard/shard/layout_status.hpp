// layout_status: why a layout cannot cut the given sources (device code gets this value).
#pragma once

#include <cstdint>
#include <ostream>
#include <string_view>

namespace safeshard {

// Why a layout cannot cut the given sources for (world, rank). Device code gets this value;
// the host boundary (slice_or_throw) turns it into a safeshard::error naming the parameter.
enum class layout_status : std::uint8_t {
    ok,
    invalid_world,       // world == 0
    rank_out_of_range,   // rank >= world
    dim_out_of_range,    // the layout's dim is not a dim of the sources
    source_count,        // wrong number of source tensors for this layout
    shape_mismatch,      // sources disagree, or do not match the part / head sizes
    indivisible,         // the extent (or a part) is not divisible by world
    padded_indivisible,  // the padded extent is not divisible by world
    part_misaligned,     // a part's split is not a whole number of its units (heads)
    heads_indivisible,   // query heads do not split evenly (H % world, H % KV, ...)
    kv_heads_mismatch,   // neither world % KV == 0 nor KV % world == 0 (or KV*m % world)
    invalid_parameters,  // a zero multiple, stride, head count, or too many parts
    too_many_pieces,     // more boxes than slice_map::box_capacity
    overflow,            // an extent product overflows 64 bits
};

[[nodiscard]] constexpr std::string_view to_string(layout_status s) noexcept {
    switch (s) {
        case layout_status::ok: return "ok";
        case layout_status::invalid_world: return "invalid_world";
        case layout_status::rank_out_of_range: return "rank_out_of_range";
        case layout_status::dim_out_of_range: return "dim_out_of_range";
        case layout_status::source_count: return "source_count";
        case layout_status::shape_mismatch: return "shape_mismatch";
        case layout_status::indivisible: return "indivisible";
        case layout_status::padded_indivisible: return "padded_indivisible";
        case layout_status::part_misaligned: return "part_misaligned";
        case layout_status::heads_indivisible: return "heads_indivisible";
        case layout_status::kv_heads_mismatch: return "kv_heads_mismatch";
        case layout_status::invalid_parameters: return "invalid_parameters";
        case layout_status::too_many_pieces: return "too_many_pieces";
        case layout_status::overflow: return "overflow";
    }
    return "?";
}

inline std::ostream& operator<<(std::ostream& os, layout_status s) { return os << to_string(s); }

}  // namespace safeshard
