// The 22 safetensors dtypes, in the reference crate's enum order, with names and bit sizes; and,
// after them, the dtypes a load reads that no file holds (dtype::u4).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string_view>

#include "safeshard/config.hpp"

namespace safeshard {

// Order matters: the reference writer sorts a header by dtype descending in this order.
enum class dtype : std::uint8_t {
    bool_,
    f4,
    f6_e2m3,
    f6_e3m2,
    u8,
    i8,
    f8_e5m2,
    f8_e4m3,
    f8_e8m0,
    f8_e4m3fnuz,
    f8_e5m2fnuz,
    i16,
    u16,
    f16,
    bf16,
    i32,
    u32,
    f32,
    c64,
    f64,
    i64,
    u64,
    // Not a file's: the 4-bit unsigned integers of a weight packed in I32 words (GPTQ's,
    // compressed-tensors' int4), eight a little-endian word, low bits first: two a byte, low
    // nibble first. A dequantizing conversion reads them (load/convert.hpp); no file is
    // written or read with it.
    u4,
};

// The safetensors dtypes: the first dtype_count of the enum.
inline constexpr std::size_t dtype_count = 22;

namespace detail {

struct dtype_info {
    dtype type;
    std::string_view name;  // as spelled in a safetensors header
    std::uint8_t bits;      // size of one element in bits (F4 is 4, F6 is 6)
    bool floating;          // a floating-point format (complex included)
    bool is_signed;         // integers: signed; floats: true
};

inline constexpr std::array<dtype_info, dtype_count + 1> dtype_table{{
    {dtype::bool_, "BOOL", 8, false, false},
    {dtype::f4, "F4", 4, true, true},
    {dtype::f6_e2m3, "F6_E2M3", 6, true, true},
    {dtype::f6_e3m2, "F6_E3M2", 6, true, true},
    {dtype::u8, "U8", 8, false, false},
    {dtype::i8, "I8", 8, false, true},
    {dtype::f8_e5m2, "F8_E5M2", 8, true, true},
    {dtype::f8_e4m3, "F8_E4M3", 8, true, true},
    {dtype::f8_e8m0, "F8_E8M0", 8, true, false},
    {dtype::f8_e4m3fnuz, "F8_E4M3FNUZ", 8, true, true},
    {dtype::f8_e5m2fnuz, "F8_E5M2FNUZ", 8, true, true},
    {dtype::i16, "I16", 16, false, true},
    {dtype::u16, "U16", 16, false, false},
    {dtype::f16, "F16", 16, true, true},
    {dtype::bf16, "BF16", 16, true, true},
    {dtype::i32, "I32", 32, false, true},
    {dtype::u32, "U32", 32, false, false},
    {dtype::f32, "F32", 32, true, true},
    {dtype::c64, "C64", 64, true, true},
    {dtype::f64, "F64", 64, true, true},
    {dtype::i64, "I64", 64, false, true},
    {dtype::u64, "U64", 64, false, false},
    {dtype::u4, "U4", 4, false, false},
}};

SAFESHARD_HOST_DEVICE constexpr char ascii_upper(char c) noexcept {
    return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
}

}  // namespace detail

// Every safetensors dtype, in enum order (dtype::u4, no file's, is not among them).
inline constexpr std::array<dtype, dtype_count> all_dtypes = [] {
    std::array<dtype, dtype_count> out{};
    for (std::size_t i = 0; i < dtype_count; ++i) out[i] = detail::dtype_table[i].type;
    return out;
}();

[[nodiscard]] constexpr const detail::dtype_info& info(dtype t) noexcept {
    return detail::dtype_table[static_cast<std::size_t>(t)];
}

// Size of one element in bits.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t bit_size(dtype t) noexcept {
    switch (t) {
        case dtype::f4:
        case dtype::u4: return 4;
        case dtype::f6_e2m3:
        case dtype::f6_e3m2: return 6;
        case dtype::bool_:
        case dtype::u8:
        case dtype::i8:
        case dtype::f8_e5m2:
        case dtype::f8_e4m3:
        case dtype::f8_e8m0:
        case dtype::f8_e4m3fnuz:
        case dtype::f8_e5m2fnuz: return 8;
        case dtype::i16:
        case dtype::u16:
        case dtype::f16:
        case dtype::bf16: return 16;
        case dtype::i32:
        case dtype::u32:
        case dtype::f32: return 32;
        case dtype::c64:
        case dtype::f64:
        case dtype::i64:
        case dtype::u64: return 64;
    }
    return 0;
}

// Size of one element in bytes; 0 for sub-byte dtypes (F4, F6_*), whose elements share bytes.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t byte_size(dtype t) noexcept {
    return bit_size(t) % 8 == 0 ? bit_size(t) / 8 : 0;
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool is_sub_byte(dtype t) noexcept {
    return bit_size(t) % 8 != 0;
}

[[nodiscard]] constexpr bool is_floating_point(dtype t) noexcept { return info(t).floating; }

// The name as written in a safetensors header ("BF16").
[[nodiscard]] constexpr std::string_view name(dtype t) noexcept { return info(t).name; }

// Whether t is a safetensors dtype (a file may hold it).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool is_file_dtype(dtype t) noexcept {
    return static_cast<std::size_t>(t) < dtype_count;
}

// Parses a header dtype string exactly (case-sensitive, as the format requires): a
// safetensors dtype only.
[[nodiscard]] constexpr std::optional<dtype> parse_dtype(std::string_view s) noexcept {
    for (const dtype t : all_dtypes)
        if (name(t) == s) return t;
    return std::nullopt;
}

// Parses a dtype given by a person (command line): case-insensitive ("bf16", "Bf16"); a
// safetensors dtype only.
[[nodiscard]] constexpr std::optional<dtype> parse_dtype_ignore_case(std::string_view s) noexcept {
    for (std::size_t i = 0; i < dtype_count; ++i) {
        const detail::dtype_info& row = detail::dtype_table[i];
        if (row.name.size() != s.size()) continue;
        bool same = true;
        for (std::size_t i = 0; i < s.size() && same; ++i)
            same = detail::ascii_upper(s[i]) == row.name[i];
        if (same) return row.type;
    }
    return std::nullopt;
}

inline std::ostream& operator<<(std::ostream& os, dtype t) { return os << name(t); }

}  // namespace safeshard
