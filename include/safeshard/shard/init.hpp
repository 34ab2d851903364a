// Initialisation of parameters that are created instead of loaded: zeros, ones, a normal
// distribution from a counter-based generator, or a user function.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>

#include "safeshard/config.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/shard/slice_map.hpp"

namespace safeshard {

enum class init_kind : std::uint8_t { none, zeros, ones, normal, user };

// A user's generator: the value of the element at `global_index` (row-major position in
// the world-1 tensor). A plain function pointer keeps schemas constant expressions; it runs
// on the host only.
using init_function = float (*)(std::uint64_t global_index, std::uint64_t seed);

struct init_spec {
    init_kind kind = init_kind::none;
    float mean = 0.0f;
    float stddev = 1.0f;
    std::uint64_t seed = 0;
    init_function function = nullptr;

    friend constexpr bool operator==(const init_spec&, const init_spec&) = default;
};

[[nodiscard]] constexpr init_spec init_zeros() noexcept { return {init_kind::zeros}; }
[[nodiscard]] constexpr init_spec init_ones() noexcept { return {init_kind::ones}; }
[[nodiscard]] constexpr init_spec init_normal(float mean, float stddev,
                                              std::uint64_t seed) noexcept {
    return {init_kind::normal, mean, stddev, seed, nullptr};
}
[[nodiscard]] constexpr init_spec init_user(init_function f, std::uint64_t seed = 0) noexcept {
    return {init_kind::user, 0.0f, 1.0f, seed, f};
}

[[nodiscard]] constexpr std::string_view to_string(init_kind k) noexcept {
    switch (k) {
        case init_kind::none: return "none";
        case init_kind::zeros: return "zeros";
        case init_kind::ones: return "ones";
        case init_kind::normal: return "normal";
        case init_kind::user: return "user";
    }
    return "?";
}

namespace detail {
// splitmix64's finaliser: a bijective 64-bit mix.
SAFESHARD_HOST_DEVICE constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Natural log with + - * / only, so host and device compute it the same way (no libm).
// x must be a positive normal double.
SAFESHARD_HOST_DEVICE constexpr double log_positive(double x) noexcept {
    const auto bits = std::bit_cast<std::uint64_t>(x);
    int e = static_cast<int>((bits >> 52) & 0x7ff) - 1023;
    double m = std::bit_cast<double>((bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
    if (m > 1.4142135623730951) {  // keep m in [sqrt(1/2), sqrt(2)] for a fast series
        m *= 0.5;
        ++e;
    }
    const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
    double term = s, sum = 0.0;
    for (int k = 0; k < 16; ++k) {  // |s| <= 0.172: 16 terms reach double precision
        sum += term / (2 * k + 1);
        term *= s2;
    }
    return e * 0.6931471805599453 + 2.0 * sum;
}

SAFESHARD_HOST_DEVICE inline double sqrt_positive(double x) noexcept {
#if defined(__CUDA_ARCH__)
    return ::sqrt(x);  // correctly rounded on the device, as std::sqrt is on the host
#else
    return std::sqrt(x);
#endif
}
}  // namespace detail

// The generator's raw stream: 64 random bits for (seed, element index, draw).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint64_t counter_bits(
    std::uint64_t seed, std::uint64_t index, std::uint64_t draw) noexcept {
    return detail::mix64(detail::mix64(seed ^ detail::mix64(index)) + draw);
}

// A standard normal value for element `index`, a function of (seed, index) alone, so any
// rank computes any element without the others: Marsaglia's polar method, whose rejected
// draws are simply the next counters.
[[nodiscard]] SAFESHARD_HOST_DEVICE inline double standard_normal(std::uint64_t seed,
                                                                  std::uint64_t index) noexcept {
    for (std::uint64_t draw = 0; draw < 128; draw += 2) {
        const double u =
            static_cast<double>(counter_bits(seed, index, draw) >> 11) * 0x1.0p-52 - 1.0;
        const double v =
            static_cast<double>(counter_bits(seed, index, draw + 1) >> 11) * 0x1.0p-52 - 1.0;
        const double s = u * u + v * v;
        if (s > 0.0 && s < 1.0)
            return u * detail::sqrt_positive(-2.0 * detail::log_positive(s) / s);
    }
    return 0.0;  // 64 rejections in a row: probability below 1e-42
}

// The value of the element at `global_index` of a parameter initialised by `spec`.
[[nodiscard]] SAFESHARD_HOST_DEVICE inline float init_value(const init_spec& spec,
                                                            std::uint64_t global_index) noexcept {
    switch (spec.kind) {
        case init_kind::none:
        case init_kind::zeros: return 0.0f;
        case init_kind::ones: return 1.0f;
        case init_kind::normal:
            return static_cast<float>(spec.mean +
                                      spec.stddev * standard_normal(spec.seed, global_index));
        case init_kind::user:
#if defined(__CUDA_ARCH__)
            return std::numeric_limits<float>::quiet_NaN();  // a host function pointer
#else
            return spec.function ? spec.function(global_index, spec.seed) : 0.0f;
#endif
    }
    return 0.0f;
}

// Fills a rank's local tensor of a created parameter: the map is the parameter's slice of
// its own global shape (one source), so each box's source offsets are global positions and
// every rank's slice equals the same slice of the world-1 tensor. Padding stays zero.
// T is the element type written (float, double; convert to narrower types afterwards).
template <class T>
void fill(const init_spec& spec, const slice_map& m, std::span<T> local) {
    if (spec.kind == init_kind::user && !spec.function)
        throw error(errc::invalid_argument, "a user init without a function");
    for (const auto& b : m) {
        if (b.source != 0)
            throw error(errc::invalid_argument,
                        "init fill takes the slice of a single global tensor (source 0)");
        if (b.rows && b.dst_offset + (b.rows - 1) * b.dst_row_stride + b.row_elems > local.size())
            throw error(errc::shape_mismatch,
                        "init fill: the slice reaches beyond the local tensor (" +
                            std::to_string(local.size()) + " elements)");
    }
    for (std::size_t i = 0; i < m.zero_count(); ++i) {
        const zero_box& z = m.zero(i);
        if (z.rows && z.dst_offset + (z.rows - 1) * z.dst_row_stride + z.row_elems > local.size())
            throw error(errc::shape_mismatch,
                        "init fill: the padding reaches beyond the local tensor");
        for (std::uint64_t r = 0; r < z.rows; ++r)
            for (std::uint64_t c = 0; c < z.row_elems; ++c)
                local[z.dst_offset + r * z.dst_row_stride + c] = T(0);
    }
    for (const auto& b : m)
        for (std::uint64_t r = 0; r < b.rows; ++r)
            for (std::uint64_t c = 0; c < b.row_elems; ++c)
                local[b.dst_offset + r * b.dst_row_stride + c] =
                    static_cast<T>(init_value(spec, b.src_offset + r * b.src_row_stride + c));
}

}  // namespace safeshard
