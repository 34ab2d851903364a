#include "safeshard/shard/schema.hpp"
#include "../support/expect_error.hpp"

#include <doctest/doctest.h>

#include <array>

using namespace safeshard;
using safeshard::test::expect_error;

namespace {
constexpr auto tiny = make_static_schema(
    3,
    parameter_spec{.name = "model.embed_tokens.weight",
                   .layout = padded_split<0>::value,
                   .role = parameter_role::embedding},
    parameter_spec{.name = "model.layers.{i}.mlp.up_proj.weight", .layout = split<0>::value},
    parameter_spec{.name = "model.layers.{i}.mlp.gate_up_proj.weight",
                   .layout = fused<0>::value,
                   .sources = {"model.layers.{i}.mlp.gate_proj.weight",
                               "model.layers.{i}.mlp.up2_proj.weight"}},
    parameter_spec{
        .name = "model.layers.{i}.extra.bias", .layout = replicated::value, .init = init_zeros()},
    parameter_spec{.name = "model.norm.weight",
                   .layout = replicated::value,
                   .role = parameter_role::final_norm},
    parameter_spec{.name = "lm_head.weight",
                   .layout = padded_split<0>::value,
                   .tied_to = "model.embed_tokens.weight",
                   .role = parameter_role::lm_head});
}  // namespace

TEST_CASE("glob_match") {
    CHECK(glob_match("*rotary_emb.inv_freq", "model.layers.3.self_attn.rotary_emb.inv_freq"));
    CHECK_FALSE(glob_match("*rotary_emb.inv_freq", "model.layers.3.self_attn.rotary_emb.x"));
    CHECK(glob_match("a*b*c", "aXXbYYc"));
    CHECK_FALSE(glob_match("a*b*c", "aXXbYY"));
    CHECK(glob_match("exact", "exact"));
    CHECK(glob_match("*", ""));
    static_assert(glob_match("x.*", "x.y"));
}

TEST_CASE("name_map strips and adds prefixes") {
    const name_map m{.checkpoint_prefix = "language_model.", .schema_prefix = ""};
    CHECK(m.to_checkpoint("model.norm.weight") == "language_model.model.norm.weight");
    CHECK(m.from_checkpoint("language_model.model.norm.weight") == "model.norm.weight");
    CHECK_FALSE(m.from_checkpoint("vision_tower.x").has_value());
    const name_map add{.checkpoint_prefix = "", .schema_prefix = "decoder."};
    CHECK(add.to_checkpoint("decoder.model.norm.weight") == "model.norm.weight");
    CHECK(add.from_checkpoint("model.norm.weight") == "decoder.model.norm.weight");
}

TEST_CASE("expanding a static table: layers, sources, ties, init, ignore rules") {
    const schema s = expand(tiny);
    CHECK(s.size() == tiny.expanded_size());
    CHECK(s.size() == 12);
    CHECK(s.parameters()[0].name == "model.embed_tokens.weight");
    CHECK(s.parameters()[1].name == "model.layers.0.mlp.up_proj.weight");
    CHECK(s.parameters()[4].name == "model.layers.1.mlp.up_proj.weight");
    CHECK(s.parameters()[10].name == "model.norm.weight");
    const auto& gu = s.at("model.layers.2.mlp.gate_up_proj.weight");
    CHECK(gu.sources == std::vector<std::string>{"model.layers.2.mlp.gate_proj.weight",
                                                 "model.layers.2.mlp.up2_proj.weight"});
    CHECK(gu.layer == 2u);
    CHECK(gu.loaded());
    CHECK(s.find_by_source("model.layers.2.mlp.up2_proj.weight") == &gu);
    const auto& extra = s.at("model.layers.1.extra.bias");
    CHECK(extra.created());
    CHECK(extra.sources.empty());
    const auto& head = s.at("lm_head.weight");
    CHECK(head.tied());
    CHECK(head.tied_to == "model.embed_tokens.weight");
    CHECK(head.sources.empty());
    CHECK(s.ignored("lm_head.weight").value_or("").find("tied") != std::string_view::npos);
    CHECK(s.ignored("model.layers.0.self_attn.rotary_emb.inv_freq").has_value());
    CHECK_FALSE(s.ignored("model.layers.0.mlp.down_proj.weight").has_value());
    CHECK(s.find("nope") == nullptr);
    CHECK_THROWS_AS((void)s.at("nope"), error);
    CHECK(to_string(parameter_role::lm_head) == "lm_head");
    CHECK(s.at("model.layers.0.mlp.up_proj.weight").role == parameter_role::layer);
    CHECK(s.at("model.norm.weight").role == parameter_role::final_norm);
    CHECK(to_string(head) ==
          "lm_head.weight: padded_split<0,64> tied to model.embed_tokens.weight");
}

TEST_CASE("pipeline stages and name maps") {
    schema_options o;
    o.layer_begin = 1;
    o.layer_end = 3;
    o.embeddings = false;
    o.names.checkpoint_prefix = "language_model.";
    o.ignore = {"*.vision.*"};
    const schema s = expand(tiny, o);
    CHECK(s.find("model.embed_tokens.weight") == nullptr);
    CHECK(s.find("model.layers.0.mlp.up_proj.weight") == nullptr);
    CHECK(s.find("model.layers.1.mlp.up_proj.weight") != nullptr);
    CHECK(s.at("model.layers.1.mlp.up_proj.weight").sources ==
          std::vector<std::string>{"language_model.model.layers.1.mlp.up_proj.weight"});
    // lm_head's tie target is elsewhere: it reads the embedding's tensor itself.
    const auto& head = s.at("lm_head.weight");
    CHECK_FALSE(head.tied());
    CHECK(head.sources == std::vector<std::string>{"language_model.model.embed_tokens.weight"});
    REQUIRE(s.notes().size() == 1);
    CHECK(s.notes()[0].find("lm_head.weight") != std::string::npos);
    CHECK(s.ignored("language_model.model.layers.0.mlp.up_proj.weight") ==
          std::optional<std::string_view>("outside this pipeline stage"));
    CHECK(s.ignored("x.vision.y") == std::optional<std::string_view>("ignored by request"));

    schema_options first;
    first.layer_end = 1;
    first.lm_head = false;
    first.final_norm = false;
    const schema f = expand(tiny, first);
    CHECK(f.find("lm_head.weight") == nullptr);
    CHECK(f.find("model.norm.weight") == nullptr);
    CHECK(f.ignored("lm_head.weight").has_value());
    CHECK(f.ignored("model.norm.weight").has_value());
    CHECK(f.size() == 1 + 3);

    schema_options bad;
    bad.layer_begin = 2;
    bad.layer_end = 1;
    CHECK_THROWS_AS((void)expand(tiny, bad), error);
    bad.layer_begin = 0;
    bad.layer_end = 4;
    CHECK_THROWS_AS((void)expand(tiny, bad), error);
}

TEST_CASE("expand: a layer count whose parameters overflow is refused, never wrapped") {
    // 3 layer templates × 2^63 layers: the count of parameters does not fit 64 bits.
    {
        const auto e = expect_error(errc::validation_overflow, [&] {
            (void)expand(std::span<const parameter_spec>(tiny.parameters), std::uint64_t{1} << 63);
        });
        CHECK(std::string(e.what()).find("9223372036854775808 layers") != std::string::npos);
    }
}

TEST_CASE("run-time schemas: add, duplicates, validation, replicate_all") {
    schema s;
    s.add(parameter_meta{.name = "w", .layout = split<0>::value, .sources = {"w"}});
    (void)expect_error(errc::duplicate_name, [&] {
        s.add(parameter_meta{.name = "w", .layout = replicated::value, .sources = {"w"}});
    });
    CHECK_THROWS_AS(
        s.add(parameter_meta{
            .name = "many", .layout = fused<0>::value, .sources = {"a", "b", "c", "d", "e"}}),
        error);
    s.add(parameter_meta{.name = "t", .layout = split<0>::value, .tied_to = "missing"});
    CHECK_THROWS_AS(s.validate(), error);
    schema chain;
    chain.add(parameter_meta{.name = "a", .layout = replicated::value, .sources = {"a"}});
    chain.add(parameter_meta{.name = "b", .layout = replicated::value, .tied_to = "a"});
    CHECK_NOTHROW(chain.validate());
    chain.add(parameter_meta{.name = "c", .layout = replicated::value, .tied_to = "b"});
    CHECK_THROWS_AS(chain.validate(), error);
    schema orphan;
    orphan.add(parameter_meta{.name = "o", .layout = replicated::value});
    CHECK_THROWS_AS(orphan.validate(), error);

    const schema all = schema::replicate_all();
    CHECK(all.empty());
    REQUIRE(all.fallback().has_value());
    CHECK(*all.fallback() == make_replicated());
}

TEST_CASE("slice_parameter checks the shapes against the sources") {
    const schema s = expand(tiny);
    const auto& gu = s.at("model.layers.0.mlp.gate_up_proj.weight");
    const std::array<shape, 2> two{shape{8, 4}, shape{8, 4}};
    const auto r = slice_parameter(gu, two, 2, 1);
    CHECK(r.local == shape{8, 4});
    CHECK_THROWS_AS((void)slice_parameter(gu, std::span<const shape>(two.data(), 1), 2, 1), error);
    {
        const auto e = expect_error([&] {
            (void)slice_parameter(s.at("model.layers.0.mlp.up_proj.weight"),
                                  std::span<const shape>(two.data(), 1), 3, 1);
        });
        CHECK(e.tensor() == "model.layers.0.mlp.up_proj.weight");
        CHECK(e.message().find("world 3") != std::string::npos);
    }
}
