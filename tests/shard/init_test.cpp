#include "safeshard/shard/init.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <vector>

#include "safeshard/shard/apply.hpp"
#include "safeshard/shard/slice.hpp"

using namespace safeshard;

namespace {
std::vector<float> rank_values(const init_spec& spec, const layout& l, const shape& global,
                               std::uint32_t world, std::uint32_t rank) {
    const auto r = slice_or_throw("p", l, global, world, rank);
    std::vector<float> local(*r.local.element_count(), -7.0f);
    fill(spec, r.map, std::span<float>(local));
    return local;
}
}  // namespace

TEST_CASE("the generator is a function of (seed, index) alone") {
    CHECK(counter_bits(1, 2, 0) == counter_bits(1, 2, 0));
    CHECK(counter_bits(1, 2, 0) != counter_bits(1, 3, 0));
    CHECK(counter_bits(1, 2, 0) != counter_bits(2, 2, 0));
    CHECK(counter_bits(1, 2, 0) != counter_bits(1, 2, 1));
    static_assert(counter_bits(5, 6, 7) == counter_bits(5, 6, 7));
    CHECK(standard_normal(42, 1000) == standard_normal(42, 1000));
    CHECK(standard_normal(42, 1000) != standard_normal(43, 1000));
}

TEST_CASE("the library's log agrees with std::log") {
    for (double x : {1e-30, 1e-5, 0.1, 0.5, 0.7071, 1.0, 1.5, 2.0, 3.14159, 1e10})
        CHECK(detail::log_positive(x) == doctest::Approx(std::log(x)).epsilon(1e-15));
    static_assert(detail::log_positive(1.0) == 0.0);
}

TEST_CASE("normal values have the requested mean and standard deviation") {
    const init_spec spec = init_normal(0.5f, 2.0f, 1234);
    double sum = 0, sq = 0;
    const int n = 200000;
    int beyond3 = 0;
    for (int i = 0; i < n; ++i) {
        const double v = init_value(spec, static_cast<std::uint64_t>(i));
        sum += v;
        sq += v * v;
        if (std::abs(v - 0.5) > 6.0) ++beyond3;
    }
    const double mean = sum / n, var = sq / n - mean * mean;
    CHECK(mean == doctest::Approx(0.5).epsilon(0.02));
    CHECK(std::sqrt(var) == doctest::Approx(2.0).epsilon(0.01));
    // 3 sigma: about 0.27 % of the draws.
    CHECK(beyond3 > n / 1000);
    CHECK(beyond3 < n / 200);
}

TEST_CASE("a rank's slice equals that slice of the world-1 tensor") {
    const init_spec spec = init_normal(0.0f, 0.02f, 7);
    const shape g{12, 10};
    for (const layout& l :
         {split<0>::value, split<1>::value, replicated::value, make_strided_split(0, 2)}) {
        const auto whole = rank_values(spec, l, g, 1, 0);
        for (std::uint32_t world : {2u, 3u}) {
            for (std::uint32_t r = 0; r < world; ++r) {
                const auto res = slice(l, g, world, r);
                if (!res.ok()) continue;
                const auto part = rank_values(spec, l, g, world, r);
                // The same elements as apply() takes out of the world-1 tensor.
                std::vector<float> expect(part.size());
                apply(res.map, std::as_bytes(std::span(whole)),
                      std::as_writable_bytes(std::span(expect)), sizeof(float));
                CHECK(part == expect);
            }
        }
    }
    // Padding rows stay zero.
    const auto pad = rank_values(init_ones(), padded_split<0, 8>::value, shape{5, 2}, 2, 1);
    CHECK(pad == std::vector<float>{1, 1, 0, 0, 0, 0, 0, 0});
}

TEST_CASE("zeros, ones, user functions; bad fills refused") {
    CHECK(rank_values(init_zeros(), split<0>::value, shape{4}, 2, 1) == std::vector<float>{0, 0});
    CHECK(rank_values(init_ones(), split<0>::value, shape{4}, 2, 1) == std::vector<float>{1, 1});
    const init_spec user = init_user(
        [](std::uint64_t i, std::uint64_t seed) { return static_cast<float>(i * 10 + seed); }, 3);
    CHECK(rank_values(user, split<0>::value, shape{4}, 2, 1) == std::vector<float>{23, 33});
    std::vector<double> d(2);
    fill(init_ones(), slice(split<0>::value, shape{4}, 2, 0).map, std::span<double>(d));
    CHECK(d == std::vector<double>{1.0, 1.0});

    std::vector<float> small(1);
    CHECK_THROWS_AS(
        fill(init_ones(), slice(split<0>::value, shape{4}, 2, 0).map, std::span<float>(small)),
        error);
    CHECK_THROWS_AS(fill(init_user(nullptr), slice(split<0>::value, shape{4}, 2, 0).map,
                         std::span<float>(small)),
                    error);
    const std::array<shape, 2> two{shape{2}, shape{2}};
    std::vector<float> out(2);
    CHECK_THROWS_AS(fill(init_ones(), slice(fused<0>::value, two, 2, 1).map, std::span<float>(out)),
                    error);
    CHECK(to_string(init_kind::normal) == "normal");
}
