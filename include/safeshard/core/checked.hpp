// Checked arithmetic for every size and offset that comes from a file.
#pragma once

#include <concepts>
#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>

#include "safeshard/config.hpp"
#include "safeshard/core/error.hpp"

namespace safeshard {

// Overflow-reporting forms, usable in constant expressions and device code: each returns
// true when the exact result does not fit, and writes it to `out` only when it does.
template <std::unsigned_integral T>
SAFESHARD_HOST_DEVICE constexpr bool add_overflows(T a, T b, T& out) noexcept {
    if (a > std::numeric_limits<T>::max() - b) return true;
    out = static_cast<T>(a + b);
    return false;
}

template <std::unsigned_integral T>
SAFESHARD_HOST_DEVICE constexpr bool mul_overflows(T a, T b, T& out) noexcept {
    if (a != 0 && b > std::numeric_limits<T>::max() / a) return true;
    out = static_cast<T>(a * b);
    return false;
}

// Rounds `v` up to a multiple of `align` (any non-zero value, not only powers of two).
template <std::unsigned_integral T>
SAFESHARD_HOST_DEVICE constexpr bool align_up_overflows(T v, T align, T& out) noexcept {
    if (align == 0) return true;
    const T rem = static_cast<T>(v % align);
    if (rem == 0) {
        out = v;
        return false;
    }
    return add_overflows(v, static_cast<T>(align - rem), out);
}

// std::optional forms for host code.
template <std::unsigned_integral T>
[[nodiscard]] constexpr std::optional<T> checked_add(T a, T b) noexcept {
    T r{};
    if (add_overflows(a, b, r)) return std::nullopt;
    return r;
}

template <std::unsigned_integral T>
[[nodiscard]] constexpr std::optional<T> checked_mul(T a, T b) noexcept {
    T r{};
    if (mul_overflows(a, b, r)) return std::nullopt;
    return r;
}

template <std::unsigned_integral T>
[[nodiscard]] constexpr std::optional<T> checked_align_up(T v, T align) noexcept {
    T r{};
    if (align_up_overflows(v, align, r)) return std::nullopt;
    return r;
}

// Throwing forms: `what` names the quantity in the message ("data offset + length").
[[nodiscard]] inline std::uint64_t add_or_throw(std::uint64_t a, std::uint64_t b,
                                                std::string_view what, error_context ctx = {}) {
    std::uint64_t r = 0;
    if (add_overflows(a, b, r))
        throw error(errc::validation_overflow,
                    std::string(what) + " overflows 64 bits (" + std::to_string(a) + " + " +
                        std::to_string(b) + ")",
                    std::move(ctx));
    return r;
}

[[nodiscard]] inline std::uint64_t mul_or_throw(std::uint64_t a, std::uint64_t b,
                                                std::string_view what, error_context ctx = {}) {
    std::uint64_t r = 0;
    if (mul_overflows(a, b, r))
        throw error(errc::validation_overflow,
                    std::string(what) + " overflows 64 bits (" + std::to_string(a) + " * " +
                        std::to_string(b) + ")",
                    std::move(ctx));
    return r;
}

[[nodiscard]] inline std::uint64_t align_up_or_throw(std::uint64_t v, std::uint64_t align,
                                                     std::string_view what,
                                                     error_context ctx = {}) {
    if (align == 0)
        throw error(errc::invalid_argument, std::string(what) + ": alignment must not be 0",
                    std::move(ctx));
    std::uint64_t r = 0;
    if (align_up_overflows(v, align, r))
        throw error(errc::validation_overflow,
                    std::string(what) + " rounded up to a multiple of " + std::to_string(align) +
                        " overflows 64 bits (" + std::to_string(v) + ")",
                    std::move(ctx));
    return r;
}

// Narrowing that refuses values the target cannot hold (a 64-bit size into size_t, say).
template <std::integral To, std::integral From>
[[nodiscard]] constexpr std::optional<To> checked_cast(From v) noexcept {
    if (!std::in_range<To>(v)) return std::nullopt;
    return static_cast<To>(v);
}

}  // namespace safeshard
