#include "safeshard/save/shard_plan.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using namespace safeshard;

namespace {

std::vector<tensor_info> u8_tensors(
    std::initializer_list<std::pair<const char*, std::uint64_t>> l) {
    std::vector<tensor_info> v;
    for (const auto& [n, size] : l) v.push_back(tensor_info{n, dtype::u8, shape{size}});
    return v;
}

std::vector<std::vector<std::size_t>> groups(const shard_plan& p) {
    std::vector<std::vector<std::size_t>> g;
    for (const auto& s : p.shards) g.push_back(s.tensors);
    return g;
}

errc code_of(auto&& f) {
    try {
        f();
    } catch (const error& e) {
        return e.code();
    }
    FAIL("no error thrown");
    return errc::io_error;
}

}  // namespace

TEST_SUITE("save") {
    TEST_CASE("parse_shard_size: huggingface_hub units are decimal, KiB.. binary, bare bytes") {
        CHECK(parse_shard_size("5GB") == 5'000'000'000u);
        CHECK(parse_shard_size("5gb") == 5'000'000'000u);
        CHECK(parse_shard_size(" 1.5 MB ") == 1'500'000u);
        CHECK(parse_shard_size("10KB") == 10'000u);
        CHECK(parse_shard_size("2TB") == 2'000'000'000'000u);
        CHECK(parse_shard_size("0.1KB") == 100u);
        CHECK(parse_shard_size("1KiB") == 1024u);
        CHECK(parse_shard_size("3MiB") == 3u * 1048576u);
        CHECK(parse_shard_size("1gib") == 1073741824u);
        CHECK(parse_shard_size("2TiB") == 2ull * 1099511627776ull);
        CHECK(parse_shard_size("12345") == 12345u);
        CHECK(parse_shard_size("0") == 0u);
        CHECK(parse_shard_size("18446744073709551615") == 18446744073709551615ull);
        for (const char* bad : {"", "  ", "5XB", "GB", "-1GB", "1.2.3GB", "18446744073709551616",
                                "99999999999TB", "5 G", "abc", "1e3KB", ".GB"}) {
            CAPTURE(bad);
            CHECK(code_of([&] { (void)parse_shard_size(bad); }) == errc::invalid_argument);
        }
        CHECK(default_max_shard_size == parse_shard_size("5GB"));
    }

    TEST_CASE("plan_shards: the issue's example and huggingface_hub's rules") {
        // A tensor over the limit gets its own shard at once; the open shard stays open.
        const auto t = u8_tensors({{"a", 1}, {"B", 10}, {"c", 1}});
        const auto p = plan_shards(t, 5);
        CHECK(groups(p) == std::vector<std::vector<std::size_t>>{{1}, {0, 2}});
        CHECK(p.total_size == 12);
        REQUIRE(p.shards.size() == 2);
        CHECK(p.shards[0].file_name == "model-00001-of-00002.safetensors");
        CHECK(p.shards[1].file_name == "model-00002-of-00002.safetensors");
        CHECK(p.shards[0].bytes == 10);
        CHECK(p.shards[1].bytes == 2);
        CHECK(p.is_sharded());

        // huggingface_hub's docstring: [6, 6, 2, 6, 2, 2] with 10 -> [6], [6, 2], [6, 2, 2].
        const auto d = u8_tensors({{"a", 6}, {"b", 6}, {"c", 2}, {"d", 6}, {"e", 2}, {"f", 2}});
        CHECK(groups(plan_shards(d, 10)) ==
              std::vector<std::vector<std::size_t>>{{0}, {1, 2}, {3, 4, 5}});
        // Exactly full is not an overflow.
        CHECK(groups(plan_shards(u8_tensors({{"a", 5}, {"b", 5}}), 10)) ==
              std::vector<std::vector<std::size_t>>{{0, 1}});
        // Limit 0: every non-empty tensor alone, empty ones in the open shard.
        CHECK(groups(plan_shards(u8_tensors({{"a", 1}, {"z", 0}, {"b", 1}}), 0)) ==
              std::vector<std::vector<std::size_t>>{{0}, {2}, {1}});
    }

    TEST_CASE("plan_shards: one shard is model.safetensors; sizes are nbytes; empty input") {
        std::vector<tensor_info> t{{"w", dtype::bf16, shape{4, 8}}, {"b", dtype::f32, shape{8}}};
        const auto p = plan_shards(t, default_max_shard_size);
        REQUIRE(p.shards.size() == 1);
        CHECK(p.shards[0].file_name == "model.safetensors");
        CHECK(p.total_size == 4 * 8 * 2 + 8 * 4);
        CHECK_FALSE(p.is_sharded());
        // 64 bytes of bf16 and 32 of f32 with a 64-byte limit: two shards.
        CHECK(groups(plan_shards(t, 64)) == std::vector<std::vector<std::size_t>>{{0}, {1}});
        const auto e = plan_shards({}, 10);
        REQUIRE(e.shards.size() == 1);
        CHECK(e.shards[0].tensors.empty());
        CHECK(e.total_size == 0);
    }

    TEST_CASE("shard_file_name pads to 5 digits and grows past them") {
        CHECK(shard_file_name(0, 1) == "model.safetensors");
        CHECK(shard_file_name(2, 4) == "model-00003-of-00004.safetensors");
        CHECK(shard_file_name(99999, 100000) == "model-100000-of-100000.safetensors");
    }

    TEST_CASE("plan_shards refuses duplicate names, overflowing and sub-byte-misaligned sizes") {
        CHECK(code_of([] {
                  (void)plan_shards(u8_tensors({{"a", 1}, {"a", 2}}), 10);
              }) == errc::duplicate_name);
        std::vector<tensor_info> big{{"x", dtype::f64, shape{1ull << 62, 4}}};
        CHECK(code_of([&] { (void)plan_shards(big, 10); }) == errc::validation_overflow);
        std::vector<tensor_info> two{{"x", dtype::u8, shape{~0ull}}, {"y", dtype::u8, shape{2}}};
        CHECK(code_of([&] { (void)plan_shards(two, 10); }) == errc::validation_overflow);
        std::vector<tensor_info> f4{{"x", dtype::f4, shape{3}}};
        CHECK(code_of([&] { (void)plan_shards(f4, 10); }) == errc::misaligned_slice);
    }

    TEST_CASE("serialize_index_json writes transformers' layout, names sorted, Python escapes") {
        const auto t = u8_tensors({{"b", 1}, {"a", 10}, {"c\"\xc3\xa9\xf0\x9f\x98\x80\x7f", 1}});
        const auto p = plan_shards(t, 5);
        CHECK(serialize_index_json(p, t) ==
              "{\n"
              "  \"metadata\": {\n"
              "    \"total_size\": 12\n"
              "  },\n"
              "  \"weight_map\": {\n"
              "    \"a\": \"model-00001-of-00002.safetensors\",\n"
              "    \"b\": \"model-00002-of-00002.safetensors\",\n"
              "    \"c\\\"\\u00e9\\ud83d\\ude00\\u007f\": \"model-00002-of-00002.safetensors\"\n"
              "  }\n"
              "}\n");
        std::vector<tensor_info> bad{{"\xff", dtype::u8, shape{1}}};
        CHECK(code_of([&] { (void)serialize_index_json(plan_shards(bad, 5), bad); }) ==
              errc::invalid_argument);
    }
}
