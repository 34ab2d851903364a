// A small fixed-capacity shape: tensor extents without heap allocation, host and device.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <ostream>
#include <span>
#include <string>

#include "safeshard/config.hpp"
#include "safeshard/core/checked.hpp"
#include "safeshard/core/error.hpp"

namespace safeshard {

class shape {
public:
    // Highest rank a tensor may have. safetensors sets no limit; 8 covers every model we know
    // (PyTorch allows more): a header with a deeper tensor is refused with rank_too_large.
    static constexpr std::size_t capacity = 8;
    using value_type = std::uint64_t;

    constexpr shape() noexcept = default;

    // Throws rank_too_large beyond `capacity` (a compile error in a constant expression; a
    // trap on the device, which has no exceptions).
    SAFESHARD_HOST_DEVICE constexpr shape(std::initializer_list<value_type> dims) {
        if (dims.size() > capacity) too_deep(dims.size());
        for (auto d : dims) dims_[rank_++] = d;
    }

    SAFESHARD_HOST_DEVICE static constexpr shape from(std::span<const value_type> dims) {
        if (dims.size() > capacity) too_deep(dims.size());
        shape s;
        for (auto d : dims) s.dims_[s.rank_++] = d;
        return s;
    }

    // Appends one dimension; false (and no change) when full.
    SAFESHARD_HOST_DEVICE constexpr bool try_push_back(value_type d) noexcept {
        if (rank_ == capacity) return false;
        dims_[rank_++] = d;
        return true;
    }

    constexpr void push_back(value_type d) {
        if (!try_push_back(d)) throw_too_deep(capacity + 1);
    }

    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::size_t rank() const noexcept {
        return rank_;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::size_t size() const noexcept {
        return rank_;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool empty() const noexcept { return rank_ == 0; }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr value_type operator[](
        std::size_t i) const noexcept {
        return dims_[i];
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr value_type& operator[](std::size_t i) noexcept {
        return dims_[i];
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr const value_type* begin() const noexcept {
        return dims_.data();
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr const value_type* end() const noexcept {
        return dims_.data() + rank_;
    }
    [[nodiscard]] constexpr std::span<const value_type> dims() const noexcept {
        return {dims_.data(), rank_};
    }

    // Product of the extents (1 for rank 0), folded left to right with overflow checks as the
    // reference reader does, or nullopt when a partial product overflows 64 bits: [2^32, 2^32]
    // (which would wrap to exactly 0) and [2^32, 2^32, 0] are refused, [0, 2^32, 2^32] is not.
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::optional<value_type> element_count()
        const noexcept {
        value_type n = 1;
        for (std::size_t i = 0; i < rank_; ++i)
            if (mul_overflows(n, dims_[i], n)) return std::nullopt;
        return n;
    }

    // Product of the extents after dimension `dim` (the row length of a split on `dim`).
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::optional<value_type> inner_count(
        std::size_t dim) const noexcept {
        value_type n = 1;
        for (std::size_t i = dim + 1; i < rank_; ++i)
            if (mul_overflows(n, dims_[i], n)) return std::nullopt;
        return n;
    }

    friend constexpr bool operator==(const shape& a, const shape& b) noexcept {
        if (a.rank_ != b.rank_) return false;
        for (std::size_t i = 0; i < a.rank_; ++i)
            if (a.dims_[i] != b.dims_[i]) return false;
        return true;
    }

    // "[4096, 14336]"; "[]" for a scalar.
    [[nodiscard]] std::string to_string() const {
        std::string s = "[";
        for (std::size_t i = 0; i < rank_; ++i) {
            if (i) s += ", ";
            s += std::to_string(dims_[i]);
        }
        return s + "]";
    }

    friend std::ostream& operator<<(std::ostream& os, const shape& s) {
        return os << s.to_string();
    }

private:
    // Not constexpr: reached, it ends constant evaluation with a compile error.
    SAFESHARD_HOST_DEVICE static void too_deep([[maybe_unused]] std::size_t rank) {
#if defined(__CUDA_ARCH__)
        __trap();
#else
        throw_too_deep(rank);
#endif
    }

    [[noreturn]] static void throw_too_deep(std::size_t rank) {
        throw error(errc::rank_too_large, "a shape of rank " + std::to_string(rank) +
                                              " exceeds safeshard's limit of " +
                                              std::to_string(capacity) + " dimensions");
    }

    std::array<value_type, capacity> dims_{};
    std::uint8_t rank_ = 0;
};

}  // namespace safeshard
