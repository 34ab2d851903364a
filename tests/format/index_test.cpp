#include "safeshard/format/index.hpp"

#include <unistd.h>

#include <string>

#include <doctest/doctest.h>

#include "../checkpoint/test_util.hpp"

using namespace safeshard;
using safeshard::test::code_of;

TEST_CASE("is_safe_relative_path") {
    CHECK(is_safe_relative_path("model-00001-of-00002.safetensors"));
    CHECK(is_safe_relative_path("sub/model.safetensors"));
    CHECK(is_safe_relative_path("a..b.safetensors"));
    CHECK_FALSE(is_safe_relative_path(""));
    CHECK_FALSE(is_safe_relative_path("/etc/passwd"));
    CHECK_FALSE(is_safe_relative_path("../x.safetensors"));
    CHECK_FALSE(is_safe_relative_path("a/../../x.safetensors"));
    CHECK_FALSE(is_safe_relative_path("a/.."));
    CHECK_FALSE(is_safe_relative_path("./x"));
    CHECK_FALSE(is_safe_relative_path("a//b"));
    CHECK_FALSE(is_safe_relative_path("a/"));
    CHECK_FALSE(is_safe_relative_path("..\\x"));
    CHECK_FALSE(is_safe_relative_path(std::string_view("a\0b", 3)));
}

TEST_CASE("index: weight_map, shards sorted, lookups, metadata") {
    const auto ix = safetensors_index::parse(R"({
      "metadata": {"total_size": 1234, "total_parameters": 617, "mergekit_version": "0.1",
                   "extra": {"a": [1, 2]}},
      "weight_map": {
        "lm_head.weight": "model-00002-of-00002.safetensors",
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors",
        "esc\"aped\u00e9": "model-00001-of-00002.safetensors"
      }})",
                                             "idx.json");
    REQUIRE(ix.size() == 4);
    REQUIRE(ix.shards().size() == 2);
    CHECK(ix.shards()[0] == "model-00001-of-00002.safetensors");
    CHECK(ix.shards()[1] == "model-00002-of-00002.safetensors");
    CHECK(ix.entries()[0].name == "lm_head.weight");  // file order kept
    CHECK(ix.entries()[0].shard == 1);
    CHECK(ix.shard_of("model.embed_tokens.weight") == "model-00001-of-00002.safetensors");
    CHECK(ix.shard_index_of("model.norm.weight") == 1u);
    CHECK(ix.shard_of("esc\"aped\xc3\xa9") == "model-00001-of-00002.safetensors");
    CHECK_FALSE(ix.contains("nope"));
    CHECK_FALSE(ix.shard_of("nope"));
    CHECK(ix.total_size() == 1234u);
    CHECK(ix.total_parameters() == 617u);
    REQUIRE(ix.extra_metadata().size() == 2);
    CHECK(ix.extra_metadata()[0].first == "mergekit_version");
    CHECK(ix.extra_metadata()[0].second == "\"0.1\"");
    CHECK(ix.extra_metadata()[1].second == R"({"a":[1,2]})");
    CHECK(ix.source() == "idx.json");
}

TEST_CASE("index: metadata optional, null or integral double") {
    auto a = safetensors_index::parse(R"({"weight_map": {"a": "x.safetensors"}})");
    CHECK_FALSE(a.total_size());
    auto b =
        safetensors_index::parse(R"({"metadata": null, "weight_map": {"a": "x.safetensors"}})");
    CHECK_FALSE(b.total_size());
    auto c = safetensors_index::parse(
        R"({"metadata": {"total_size": 16.0}, "weight_map": {"a": "x.safetensors"}})");
    CHECK(c.total_size() == 16u);
}

TEST_CASE("index: many entries survive a move") {
    std::string json = R"({"weight_map": {)";
    for (int i = 0; i < 5000; ++i) {
        if (i != 0) json += ',';
        json += "\"model.layers." + std::to_string(i) + ".weight\": \"s" + std::to_string(i % 7) +
                ".safetensors\"";
    }
    json += "}}";
    auto ix = safetensors_index::parse(json);
    auto moved = std::move(ix);
    CHECK(moved.size() == 5000);
    CHECK(moved.shards().size() == 7);
    for (int i = 0; i < 5000; i += 37) {
        CHECK(moved.shard_of("model.layers." + std::to_string(i) + ".weight") ==
              "s" + std::to_string(i % 7) + ".safetensors");
    }
}

TEST_CASE("index: every bad input is invalid_index") {
    std::string what;
    auto bad = [&](std::string_view json) {
        return code_of([&] { (void)safetensors_index::parse(json, "i.json"); }, &what);
    };
    CHECK(bad("{\"weight_map\": {\"a\": \"x\"") == errc::invalid_index);  // malformed
    CHECK(what.find("not valid JSON") != std::string::npos);
    CHECK(bad("") == errc::invalid_index);
    CHECK(bad("[1]") == errc::invalid_index);
    CHECK(bad(R"({"metadata": {}})") == errc::invalid_index);
    CHECK(what.find("weight_map") != std::string::npos);
    CHECK(bad(R"({"weight_map": []})") == errc::invalid_index);
    CHECK(bad(R"({"weight_map": {}})") == errc::invalid_index);
    CHECK(bad(R"({"weight_map": {"a": 1}})") == errc::invalid_index);
    CHECK(bad(R"({"weight_map": {"a": "/etc/passwd"}})") == errc::invalid_index);  // absolute
    CHECK(what.find("/etc/passwd") != std::string::npos);
    CHECK(what.find("tensor 'a'") != std::string::npos);
    CHECK(bad(R"({"weight_map": {"a": "../../x.safetensors"}})") == errc::invalid_index);
    CHECK(bad(R"({"weight_map": {"a": "sub/../../x.safetensors"}})") == errc::invalid_index);
    CHECK(bad(R"({"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}})") ==
          errc::invalid_index);  // duplicate key
    CHECK(what.find("duplicate key") != std::string::npos);
    CHECK(bad(R"({"weight_map": {"a": "x"}, "weight_map": {"b": "x"}})") == errc::invalid_index);
    CHECK(bad(R"({"metadata": {"total_size": -1}, "weight_map": {"a": "x"}})") ==
          errc::invalid_index);
    CHECK(bad(R"({"metadata": {"total_size": "12"}, "weight_map": {"a": "x"}})") ==
          errc::invalid_index);
    CHECK(bad(R"({"metadata": {"total_size": 1.5}, "weight_map": {"a": "x"}})") ==
          errc::invalid_index);
    CHECK(bad(R"({"metadata": [], "weight_map": {"a": "x"}})") == errc::invalid_index);
    CHECK(bad(R"({"weight_map": {"a": "x"}} trailing)") == errc::invalid_index);
}

TEST_CASE("index: load from a file; io_error for a missing one") {
    safeshard::test::temp_dir d;
    safeshard::test::write_file(d / "i.json", R"({"weight_map": {"a": "x.safetensors"}})");
    auto ix = safetensors_index::load(d / "i.json");
    CHECK(ix.source() == (d / "i.json").string());
    CHECK(ix.size() == 1);
    std::string what;
    CHECK(code_of([&] { (void)safetensors_index::load(d / "missing.json"); }, &what) ==
          errc::io_error);
    CHECK(code_of([&] { (void)safetensors_index::load(d.path()); }) == errc::invalid_index);
}

TEST_CASE("index: large files parse the same mapped (room for the padding) or read (none)") {
    // Over 1 MiB the file is mapped when its last page leaves simdjson's padding free, and
    // read into a padded buffer when it does not (a size that is a multiple of the page).
    std::string body = R"({"metadata": {"total_size": 7}, "weight_map": {)";
    for (int i = 0; i < 30000; ++i) {
        if (i != 0) body += ',';
        body += "\"model.layers." + std::to_string(i) + ".mlp.weight\": \"s" +
                std::to_string(i % 5) + ".safetensors\"";
    }
    body += "}}";
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    REQUIRE(body.size() > (std::size_t{1} << 20));
    safeshard::test::temp_dir d;
    // Whitespace after the JSON sets the file's size: a page's multiple, a tail with room for
    // the padding, and a tail 8 bytes short of the page (no room).
    const std::size_t whole = (body.size() / page + 1) * page;
    for (const std::size_t size : {whole, whole + 100, whole + page - 8}) {
        CAPTURE(size);
        std::string json = body;
        json.resize(size, ' ');
        safeshard::test::write_file(d / "i.json", json);
        const auto ix = safetensors_index::load(d / "i.json");
        CHECK(ix.size() == 30000);
        CHECK(ix.shards().size() == 5);
        CHECK(ix.total_size() == 7);
        CHECK(ix.shard_of("model.layers.29999.mlp.weight") == "s4.safetensors");
        CHECK(ix.shard_of("model.layers.0.mlp.weight") == "s0.safetensors");
    }
    // The mapping ends where the file does: a truncated document is still an error.
    std::string cut = body.substr(0, body.size() - 1);
    cut.resize(whole + 100, ' ');
    safeshard::test::write_file(d / "cut.json", cut);
    CHECK(code_of([&] { (void)safetensors_index::load(d / "cut.json"); }) == errc::invalid_index);
}

TEST_CASE("index: a padded buffer parses without a copy, as a string does") {
    const std::string json = R"({"weight_map": {"a": "x.safetensors", "b": "y.safetensors"}})";
    const simdjson::padded_string padded(json);
    const auto ix = safetensors_index::parse_padded(padded, "mem");
    CHECK(ix.size() == 2);
    CHECK(ix.source() == "mem");
    CHECK(ix.shard_of("b") == "y.safetensors");
    std::string spare = json;
    spare.append(simdjson::SIMDJSON_PADDING, ' ');
    const auto ix2 = safetensors_index::parse_padded(
        simdjson::padded_string_view(spare.data(), json.size(), spare.size()));
    CHECK(ix2.shard_of("a") == "x.safetensors");
}

TEST_CASE("index: what Python's json module reads is read (wide integers, huge floats, depth)") {
    // transformers and huggingface_hub read indexes with json.load: integers of any width,
    // floats beyond the f64 range as infinity, nesting up to its recursion limit.
    const auto ix = safetensors_index::parse(
        R"({"metadata": {"total_size": 4, "seed": 123456789012345678901234567890,
                         "scale": 1e400, "floor": -1e999, "tiny": 1e-400, "zero": -0,
                         "list": [18446744073709551616, -9223372036854775809]},
            "weight_map": {"a": "m.safetensors"}})",
        "i.json");
    CHECK(ix.total_size() == 4u);
    REQUIRE(ix.extra_metadata().size() == 6);
    // Kept as the nearest f64 (the largest finite one for what Python reads as infinity).
    CHECK(ix.extra_metadata()[0].second == "1.2345678901234568e+29");
    CHECK(ix.extra_metadata()[1].second == "1.7976931348623157e+308");
    CHECK(ix.extra_metadata()[2].second == "-1.7976931348623157e+308");
    CHECK(ix.extra_metadata()[3].second == "0.0");
    CHECK(ix.extra_metadata()[4].second == "0");
    CHECK(ix.extra_metadata()[5].second == "[1.8446744073709552e+19,-9.223372036854776e+18]");

    const auto nested = [](int levels) {  // `levels` arrays and objects in all
        return R"({"weight_map": {"a": "m.safetensors"}, "metadata": {"x": )" +
               std::string(static_cast<std::size_t>(levels - 2), '[') + "1" +
               std::string(static_cast<std::size_t>(levels - 2), ']') + "}}";
    };
    CHECK(safetensors_index::parse(nested(128)).size() == 1);
    CHECK(safetensors_index::parse(nested(990)).size() == 1);
    std::string what;
    CHECK(code_of([&] { (void)safetensors_index::parse(nested(1001)); }, &what) ==
          errc::invalid_index);
    CHECK(what.find("nested 1001 deep, over the limit of 1000") != std::string::npos);
    // A size is still an integer of 64 bits.
    CHECK(code_of([] {
              (void)safetensors_index::parse(
                  R"({"metadata": {"total_size": 18446744073709551616},
                      "weight_map": {"a": "m.safetensors"}})");
          }) == errc::invalid_index);
}
