#include "safeshard/core/checked.hpp"
#include "../support/expect_error.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>

using namespace safeshard;
using safeshard::test::expect_error;

constexpr std::uint64_t max64 = std::numeric_limits<std::uint64_t>::max();

static_assert(checked_add<std::uint64_t>(1, 2) == 3u);
static_assert(!checked_add<std::uint64_t>(max64, 1).has_value());
static_assert(checked_add<std::uint64_t>(max64, 0) == max64);
static_assert(checked_mul<std::uint64_t>(1ull << 32, (1ull << 32) - 1).has_value());
static_assert(!checked_mul<std::uint64_t>(1ull << 32, 1ull << 32).has_value());  // wraps to 0
static_assert(checked_mul<std::uint64_t>(0, max64) == 0u);
static_assert(checked_align_up<std::uint64_t>(13, 8) == 16u);
static_assert(checked_align_up<std::uint64_t>(16, 8) == 16u);
static_assert(checked_align_up<std::uint64_t>(0, 8) == 0u);
static_assert(checked_align_up<std::uint64_t>(10, 3) == 12u);
static_assert(!checked_align_up<std::uint64_t>(max64, 8).has_value());
static_assert(!checked_align_up<std::uint64_t>(5, 0).has_value());
static_assert(checked_align_up<std::uint64_t>(max64 - 7, 8) == max64 - 7);
static_assert(checked_cast<std::uint32_t>(std::uint64_t{1} << 32) == std::nullopt);
static_assert(checked_cast<std::int64_t>(std::uint64_t{42}) == 42);
static_assert(checked_cast<std::size_t>(-1) == std::nullopt);

TEST_CASE("add_or_throw reports overflow with both operands") {
    CHECK(add_or_throw(2, 3, "x") == 5u);
    {
        const auto e = expect_error(errc::validation_overflow, [&] {
            (void)add_or_throw(max64, 2, "data offset + length", {.tensor = "w"});
        });
        CHECK(e.tensor() == "w");
        CHECK(e.message().find("data offset + length") != std::string::npos);
        CHECK(e.message().find("18446744073709551615 + 2") != std::string::npos);
    }
}

TEST_CASE("mul_or_throw catches products that wrap to exactly zero") {
    CHECK(mul_or_throw(1ull << 31, 2, "n") == 1ull << 32);
    CHECK_THROWS_AS((void)mul_or_throw(1ull << 32, 1ull << 32, "n"), error);
    CHECK_THROWS_AS((void)mul_or_throw(max64, 2, "n"), error);
    CHECK(mul_or_throw(0, max64, "n") == 0u);
}

TEST_CASE("align_up_or_throw") {
    CHECK(align_up_or_throw(1, 8, "header") == 8u);
    CHECK(align_up_or_throw(8, 8, "header") == 8u);
    (void)expect_error(errc::validation_overflow,
                       [&] { (void)align_up_or_throw(max64 - 1, 8, "header"); });
    (void)expect_error(errc::invalid_argument, [&] { (void)align_up_or_throw(1, 0, "header"); });
}

TEST_CASE("overflow forms leave the output untouched on overflow") {
    std::uint64_t out = 7;
    CHECK(add_overflows(max64, std::uint64_t{1}, out));
    CHECK(out == 7u);
    CHECK(mul_overflows(max64, std::uint64_t{3}, out));
    CHECK(out == 7u);
    CHECK_FALSE(mul_overflows(std::uint64_t{6}, std::uint64_t{7}, out));
    CHECK(out == 42u);
    std::uint8_t small = 0;
    CHECK(add_overflows(std::uint8_t{200}, std::uint8_t{56}, small));
    CHECK_FALSE(add_overflows(std::uint8_t{200}, std::uint8_t{55}, small));
    CHECK(small == 255);
}
