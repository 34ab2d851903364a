#include "safeshard/core/name_hash.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "name_flood.hpp"

using safeshard::detail::name_hash;
using safeshard::detail::name_index;
using safeshard::detail::sip_key;
using safeshard::detail::siphash;

namespace {

// Key 00 01 .. 0f and message i = bytes 00 .. i-1: the reference implementation's vectors.
constexpr sip_key test_key{0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull};

std::string message(std::size_t n) {
    std::string s;
    for (std::size_t i = 0; i < n; ++i) s += static_cast<char>(i);
    return s;
}

}  // namespace

TEST_SUITE("name_hash") {
    TEST_CASE("SipHash-2-4 and SipHash-1-3 give the reference test vectors") {
        CHECK(siphash<2, 4>(test_key, message(0)) == 0x726fdb47dd0e0e31ull);
        CHECK(siphash<2, 4>(test_key, message(1)) == 0x74f839c593dc67fdull);
        CHECK(siphash<2, 4>(test_key, message(63)) == 0x958a324ceb064572ull);
        CHECK(siphash<1, 3>(test_key, message(0)) == 0xabac0158050fc4dcull);
        CHECK(siphash<1, 3>(test_key, message(1)) == 0xc9f49bf37d57ca93ull);
        CHECK(siphash<1, 3>(test_key, message(7)) == 0xd3927d989bb11140ull);
        CHECK(siphash<1, 3>(test_key, message(8)) == 0x369095118d299a8eull);
        CHECK(siphash<1, 3>(test_key, message(15)) == 0xd320d86d2a519956ull);
        CHECK(siphash<1, 3>(test_key, message(63)) == 0x9d199062b7bbb3a8ull);
        // The same in constant expressions (byte by byte there, whole words at run time).
        static_assert(siphash<2, 4>(test_key, "") == 0x726fdb47dd0e0e31ull);
        static_assert(siphash<1, 3>(test_key, std::string_view(
                                                  "\0\1\2\3\4\5\6\7\10\11\12\13\14\15\16", 15)) ==
                      0xd320d86d2a519956ull);
    }

    TEST_CASE("the key changes every hash") {
        const sip_key other{test_key.k0 + 1, test_key.k1};
        CHECK(siphash<1, 3>(test_key, "model.embed_tokens.weight") !=
              siphash<1, 3>(other, "model.embed_tokens.weight"));
        // The process key is drawn once, and is not the zero key.
        const auto& k = safeshard::detail::process_name_key();
        CHECK(&k == &safeshard::detail::process_name_key());
        CHECK((k.k0 | k.k1) != 0);
        CHECK(name_hash{}("lm_head.weight") == name_hash{}("lm_head.weight"));
    }

    TEST_CASE("names crafted into one std::hash cluster spread out under name_hash") {
        const auto names = safeshard::test::flooding_names(4096, 8192, 1024);
        // The crafted names do share one region of an unkeyed table of 8192 slots.
        std::size_t low = 0;
        for (const auto& n : names)
            if ((std::hash<std::string_view>{}(n)&8191) < 1024) ++low;
        CHECK(low == names.size());
        // Under the keyed hash, they fill a table as random names do.
        std::vector<int> slots(8192);
        const name_hash h;
        for (const auto& n : names) ++slots[h(n) & 8191];
        std::size_t fullest = 0;
        for (const int c : slots) fullest = std::max<std::size_t>(fullest, c);
        CHECK(fullest <= 12);
        std::unordered_map<std::string_view, int, name_hash> map;
        for (const auto& n : names) map.emplace(n, 0);
        std::size_t longest_chain = 0;
        for (std::size_t b = 0; b < map.bucket_count(); ++b)
            longest_chain = std::max(longest_chain, map.bucket_size(b));
        CHECK(longest_chain <= 12);
    }
}

TEST_SUITE("name_index") {
    TEST_CASE("insert finds duplicates, find finds every name") {
        const std::vector<std::string> names{"a", "b", "model.layers.0.mlp.up_proj.weight", ""};
        const auto name_of = [&](std::uint32_t i) { return std::string_view(names[i]); };
        name_index ix;
        CHECK_FALSE(ix.find("a", name_of));  // never reset: empty
        ix.reset(names.size());
        for (std::uint32_t i = 0; i < names.size(); ++i)
            CHECK_FALSE(ix.insert(names[i], i, name_of));
        for (std::uint32_t i = 0; i < names.size(); ++i) CHECK(ix.find(names[i], name_of) == i);
        CHECK_FALSE(ix.find("c", name_of));
        CHECK(ix.insert("b", 7, name_of) == 1u);
        ix.reset(1);
        CHECK_FALSE(ix.find("a", name_of));
    }

    TEST_CASE("names crafted to collide under std::hash take linear probes") {
        // 20,000 names whose std::hash lands in the first 4,096 of the table's 65,536 slots:
        // under the unkeyed hash each insert walks the whole cluster before it (about 10^8
        // name comparisons in all); under the keyed hash about 1.5 slots each.
        constexpr std::size_t n = 20'000;
        const auto names = safeshard::test::flooding_names(n, 65536, 4096);
        std::uint64_t compared = 0;
        const auto name_of = [&](std::uint32_t i) {
            ++compared;
            return std::string_view(names[i]);
        };
        name_index ix;
        ix.reset(n);
        for (std::uint32_t i = 0; i < n; ++i) REQUIRE_FALSE(ix.insert(names[i], i, name_of));
        CHECK(compared <= n);
        CHECK(ix.probes() <= 3 * n);
        for (std::uint32_t i = 0; i < n; i += 97) CHECK(ix.find(names[i], name_of) == i);
    }
}
