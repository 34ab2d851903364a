// Compile-time checks of core/: dtype sizes and names, checked arithmetic, shapes.
#include <safeshard/core/checked.hpp>
#include <safeshard/core/dtype.hpp>
#include <safeshard/core/shape.hpp>

#include <cstdint>
#include <limits>

namespace {

using safeshard::dtype;

static_assert(safeshard::bit_size(dtype::f4) == 4);
static_assert(safeshard::bit_size(dtype::f6_e3m2) == 6);
static_assert(safeshard::byte_size(dtype::f6_e2m3) == 0);
static_assert(safeshard::byte_size(dtype::bf16) == 2);
static_assert(safeshard::byte_size(dtype::c64) == 8);
static_assert(safeshard::is_sub_byte(dtype::f4) && !safeshard::is_sub_byte(dtype::u8));
static_assert(safeshard::name(dtype::f8_e4m3fnuz) == "F8_E4M3FNUZ");
static_assert(safeshard::parse_dtype("BF16") == dtype::bf16);
static_assert(!safeshard::parse_dtype("bf16").has_value());
static_assert(safeshard::parse_dtype_ignore_case("bf16") == dtype::bf16);

constexpr bool mul_reports(std::uint64_t a, std::uint64_t b) {
    std::uint64_t r = 0;
    return safeshard::mul_overflows(a, b, r);
}
static_assert(!mul_reports(1ULL << 32, 1ULL << 31));
static_assert(mul_reports(1ULL << 32, 1ULL << 32));
static_assert(safeshard::checked_add<std::uint64_t>(std::numeric_limits<std::uint64_t>::max(), 1) ==
              std::nullopt);

static_assert(safeshard::shape{4096, 14336}.rank() == 2);
static_assert(safeshard::shape{4096, 14336}.element_count() == 4096ULL * 14336ULL);
static_assert(!safeshard::shape{1ULL << 40, 1ULL << 40}.element_count().has_value());

}  // namespace
