// The read strategy for copy_kind::zero: the destination rows are set to zero, no file read.
#pragma once

#include <cstdint>
#include <cstring>

#include "safeshard/load/host/piece.hpp"

namespace safeshard::host {

class zero_fill {
public:
    explicit zero_fill(tally& t) noexcept : tally_(t) {}

    bool try_run(const piece& p) {
        if (p.op.kind != copy_kind::zero) return false;
        const byte_box& b = p.op.box;
        for (std::uint64_t r = 0; r < b.rows; ++r)
            std::memset(p.dst + r * b.dst_pitch, 0, b.dst_row_bytes);
        tally_.written += b.rows * b.dst_row_bytes;
        return true;
    }

private:
    tally& tally_;
};

static_assert(read_strategy<zero_fill>);

}  // namespace safeshard::host
