// What a layout computes before boxes: runs along its dim.
#pragma once

#include <cstddef>
#include <cstdint>

#include "safeshard/config.hpp"
#include "safeshard/shard/layout_status.hpp"

namespace safeshard {

// A run along the layout's dim: indices [start, start + length) of source `source`,
// placed after the previous runs in the local tensor.
struct segment {
    std::uint8_t source = 0;
    std::uint64_t start = 0;
    std::uint64_t length = 0;

    friend constexpr bool operator==(const segment&, const segment&) = default;
};

class segment_list {
public:
    static constexpr std::size_t capacity = 16;

    // Appends, merging with the last run when it continues it; false when full.
    SAFESHARD_HOST_DEVICE constexpr bool push(segment s) noexcept {
        if (s.length == 0) return true;
        if (count_ > 0) {
            segment& last = items_[count_ - 1];
            if (last.source == s.source && last.start + last.length == s.start) {
                last.length += s.length;
                return true;
            }
        }
        if (count_ == capacity) return false;
        items_[count_++] = s;
        return true;
    }

    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::size_t size() const noexcept {
        return count_;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr const segment& operator[](
        std::size_t i) const noexcept {
        return items_[i];
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr const segment* begin() const noexcept {
        return items_;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr const segment* end() const noexcept {
        return items_ + count_;
    }
    // Total length of the runs.
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint64_t length() const noexcept {
        std::uint64_t n = 0;
        for (std::size_t i = 0; i < count_; ++i) n += items_[i].length;
        return n;
    }

private:
    segment items_[capacity] = {};
    std::uint8_t count_ = 0;
};

}  // namespace safeshard
