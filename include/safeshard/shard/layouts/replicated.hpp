// replicated: every rank holds the whole tensor.
#pragma once

#include <cstddef>
#include <cstdint>

#include "safeshard/config.hpp"
#include "safeshard/core/checked.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout_value.hpp"
#include "safeshard/shard/layouts/kind.hpp"

namespace safeshard {

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_replicated() noexcept { return {}; }

// The tag: names the layout at compile time (`replicated::value` is the layout value).
struct replicated {
    static constexpr layout value = make_replicated();
};

// One source, copied whole (one box of all its elements); no dim.
struct replicated_kind : layout_kind_defaults {
    static constexpr layout_kind id = layout_kind::replicated;
    static constexpr std::string_view name = "replicated";
    static constexpr bool cuts_along_dim = false;

    SAFESHARD_HOST_DEVICE static constexpr void slice(const layout&, const shape* sources,
                                                      std::size_t n, std::uint32_t, std::uint32_t,
                                                      slice_result& r) noexcept {
        if (n != 1) {
            r.status = layout_status::source_count;
            return;
        }
        const std::size_t nd = sources[0].rank();
        std::uint64_t count = 1;
        for (std::size_t i = 0; i < nd; ++i)
            if (mul_overflows(count, sources[0][i], count)) {
                r.status = layout_status::overflow;
                return;
            }
        r.global = r.local = sources[0];
        r.map.push(copy_box{0, 0, 1, count, count, 0, count});
        if (nd > 0) r.runs.push(segment{0, 0, sources[0][0]});
    }
};
static_assert(layout_kind_traits<replicated_kind>);

}  // namespace safeshard
