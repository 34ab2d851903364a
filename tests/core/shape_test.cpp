#include "safeshard/core/shape.hpp"
#include "../support/expect_error.hpp"

#include <doctest/doctest.h>

#include <array>
#include <sstream>
#include <vector>

using namespace safeshard;
using safeshard::test::expect_error;

static_assert(shape{}.rank() == 0);
static_assert(shape{}.element_count() == 1u);  // a scalar is one element
static_assert(shape{4096, 14336}.element_count() == 4096ull * 14336ull);
static_assert(shape{3, 0, 5}.element_count() == 0u);
static_assert(!shape{1ull << 32, 1ull << 32}.element_count().has_value());     // wraps to 0
static_assert(!shape{1ull << 32, 1ull << 32, 0}.element_count().has_value());  // as the reference
static_assert(shape{0, 1ull << 32, 1ull << 32}.element_count() == 0u);
static_assert(shape{2, 3, 4}.inner_count(0) == 12u);
static_assert(shape{2, 3, 4}.inner_count(2) == 1u);
static_assert(shape{2, 3} == shape{2, 3} && !(shape{2, 3} == shape{3, 2}));
static_assert(!(shape{2} == shape{2, 1}));

TEST_CASE("shape holds up to its capacity and refuses more") {
    shape s;
    for (std::size_t i = 0; i < shape::capacity; ++i) CHECK(s.try_push_back(i + 1));
    CHECK(s.rank() == shape::capacity);
    CHECK_FALSE(s.try_push_back(9));
    CHECK(s.rank() == shape::capacity);
    (void)expect_error(errc::rank_too_large, [&] { s.push_back(9); });
    std::vector<std::uint64_t> nine(9, 1);
    CHECK_THROWS_AS((void)shape::from(nine), error);
    CHECK(shape::from(std::vector<std::uint64_t>(8, 2)).element_count() == 256u);
}

TEST_CASE("shape prints as a bracketed list") {
    std::ostringstream os;
    os << shape{4096, 14336} << ' ' << shape{};
    CHECK(os.str() == "[4096, 14336] []");
    CHECK(shape{7}.to_string() == "[7]");
}

TEST_CASE("shape iterates its dimensions") {
    shape s{2, 3, 4};
    std::uint64_t p = 1;
    for (auto d : s) p *= d;
    CHECK(p == 24u);
    CHECK(s.dims().size() == 3);
    s[1] = 5;
    CHECK(s == shape{2, 5, 4});
    CHECK(s.size() == 3);
    CHECK_FALSE(s.empty());
}

TEST_CASE("element_count overflow at the largest partial products") {
    CHECK(shape{~0ull}.element_count() == ~0ull);
    CHECK_FALSE(shape{~0ull, 2}.element_count().has_value());
    CHECK(shape{~0ull, 1, 1}.element_count() == ~0ull);
    CHECK(shape{1, 2, 3}.inner_count(0) == 6u);
    CHECK_FALSE(shape{1, ~0ull, 2}.inner_count(0).has_value());
}
