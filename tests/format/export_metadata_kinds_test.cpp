// Each layout kind's fields in the export metadata (format/export_metadata_writer.hpp and
// _reader.hpp): a cut of every kind of the list survives the JSON, and a version-2 cut with a
// field of another kind is refused, naming it.
#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "safeshard/core/error.hpp"
#include "safeshard/format/export_metadata.hpp"
#include "safeshard/format/export_metadata_reader.hpp"
#include "safeshard/format/export_metadata_writer.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/layouts/kinds.hpp"

using namespace safeshard;

namespace {

// A layout of each kind with every field it has set to something other than its default.
std::optional<layout> sample(layout_kind k) {
    const std::uint64_t sizes[] = {6, 10}, units[] = {2, 1};
    for (const layout& l :
         {make_replicated(), make_split(1, 2), make_padded_split(0, 32), make_strided_split(1, 3),
          make_ceil_split(1, 4), make_fused(0, sizes, 2, units),
          make_gqa_qkv(kv_interleaved, 8, 2, 4, gqa_part::k, 2),
          make_gqa_o(kv_interleaved, 8, 2, 4, 2)})
        if (l.kind == k) return l;
    return std::nullopt;
}

// One tensor cut by `l`, stored whole (rank 0 of 1), read back through the JSON.
export_metadata round_trip(const layout& l, std::string* json = nullptr) {
    export_metadata m;
    export_tensor t;
    t.name = "t";
    t.dtype = dtype::f32;
    t.local = t.global = shape{16, 8};
    t.layout = l;
    t.sources = {export_source{"t", t.global, dtype::bf16}};
    if (const auto v = valid_rows(l, t.global, t.local, 0))
        std::tie(t.valid_begin, t.valid_end) = *v;
    m.kv_multiplier = rank_kv_multiplier(l, m.world);
    m.tensors.push_back(t);
    const std::string doc = to_json(m);
    if (json) *json = doc;
    std::vector<export_shard_file> files{
        export_shard_file{"a.safetensors", doc, {export_stored_tensor{"t", t.dtype, t.local}}}};
    const auto back = read_export_metadata(files);
    REQUIRE(back.has_value());
    CHECK(*back == m);
    return *back;
}

}  // namespace

TEST_CASE("every layout kind's fields survive the export metadata") {
    for_each_layout_kind([&]<class K>(K) {
        CAPTURE(K::name);
        const auto l = sample(K::id);
        REQUIRE_MESSAGE(l.has_value(), "no sample layout for a kind of the list");
        std::string json;
        const export_metadata back = round_trip(*l, &json);
        CHECK(back.tensors.front().layout == *l);
        CHECK(json.find("\"kind\":\"" + std::string(K::name) + "\"") != std::string::npos);
        CHECK((json.find("\"dim\":") != std::string::npos) == K::cuts_along_dim);
        for (const std::string_view key : K::json_fields)
            CHECK(json.find("\"" + std::string(key) + "\":") != std::string::npos);
    });
}

TEST_CASE("a cut with another kind's field is refused, naming the field") {
    std::string json;
    (void)round_trip(make_split(1), &json);
    const auto at = json.find("\"kind\":\"split\",\"dim\":1");
    REQUIRE(at != std::string::npos);
    json.insert(at + std::string("\"kind\":\"split\",\"dim\":1").size(), ",\"stride\":2");
    std::vector<export_shard_file> files{export_shard_file{
        "a.safetensors", json, {export_stored_tensor{"t", dtype::f32, shape{16, 8}}}}};
    std::string what;
    try {
        (void)read_export_metadata(files);
    } catch (const error& e) {
        CHECK(e.code() == errc::invalid_export);
        what = e.what();
    }
    CHECK(what.find("a cut (split) has the field \"stride\"") != std::string::npos);
}
