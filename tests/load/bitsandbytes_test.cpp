// bitsandbytes checkpoints (quant_method "bitsandbytes"), as transformers saves them through
// bitsandbytes' nn/modules.py: 8-bit (load_in_8bit) `weight` I8 [N, K] with `SCB` F32 [N] and
// `weight_format` U8 scalar (LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING: 0 row, 1 col32, 2
// col_turing, 3 col_ampere); 4-bit (load_in_4bit) `weight` U8 [N·K/2, 1] with
// `weight.absmax`, `weight.quant_map`, `weight.nested_absmax`, `weight.nested_quant_map` and
// `weight.quant_state.bitsandbytes__nf4` (its JSON). Each rank's bytes are computed here from
// the rules (the rows or columns vLLM gives a rank), not with the library's companion algebra.
#include <doctest/doctest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/quantized_llama.hpp"
#include "../support/temp_dir.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"

using namespace safeshard;
using namespace safeshard::test;

namespace {

const std::string bnb8 = R"({"quant_method": "bitsandbytes", "load_in_8bit": true,
    "load_in_4bit": false, "llm_int8_threshold": 6.0, "llm_int8_skip_modules": null})";
const std::string bnb4 = R"({"quant_method": "bitsandbytes", "load_in_4bit": true,
    "load_in_8bit": false, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true,
    "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8"})";

stored scalar_u8(unsigned v) { return stored{dtype::u8, {}, {static_cast<std::byte>(v)}}; }

// The 8-bit model: I8 weights, one SCB a row, row-major weight_format (0).
std::map<std::string, stored> int8_llama() {
    return quantized_llama(dtype::i8,
                           [](const std::vector<std::uint64_t>& dims, std::mt19937_64& rng) {
                               std::map<std::string, stored> s;
                               s["SCB"] = random_stored(dtype::f32, {dims[0]}, rng);
                               s["weight_format"] = scalar_u8(0);
                               return s;
                           });
}

// The 4-bit model (NF4, double quantization): each weight flattened, two values a byte, with its
// quantization state (absmax quantized to U8 a block of 64, its own absmax a block of 256).
std::map<std::string, stored> nf4_llama() {
    std::mt19937_64 rng(5);
    auto t = quantized_llama(dtype::u8, [](const std::vector<std::uint64_t>&, std::mt19937_64&) {
        return std::map<std::string, stored>{};
    });
    for (const auto& [n, dims] : linears()) {
        const std::string p = "model.layers.0." + n + ".weight";
        const std::uint64_t values = dims[0] * dims[1];
        t[p] = random_stored(dtype::u8, {values / 2, 1}, rng);
        t[p + ".absmax"] = random_stored(dtype::u8, {values / 64}, rng);
        t[p + ".quant_map"] = random_stored(dtype::f32, {16}, rng);
        t[p + ".nested_absmax"] = random_stored(dtype::f32, {1}, rng);
        t[p + ".nested_quant_map"] = random_stored(dtype::f32, {256}, rng);
        const std::string state =
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [)" +
            std::to_string(dims[0]) + ", " + std::to_string(dims[1]) +
            R"(], "nested_blocksize": 256, "nested_offset": 0.0, "nested_dtype": "float32"})";
        stored json{dtype::u8, {state.size()}, {}};
        for (const char ch : state) json.bytes.push_back(static_cast<std::byte>(ch));
        t[p + ".quant_state.bitsandbytes__nf4"] = json;
    }
    return t;
}

}  // namespace

TEST_CASE("bitsandbytes 8-bit: I8 weights cut with their SCB rows, weight_format whole") {
    const auto src = int8_llama();
    temp_dir dir;
    write(dir.path(), llama_config(bnb8), src);
    for_each_rank_linear(
        dir.path(), {1, 2, 4},
        [&](const auto& model, const std::vector<std::uint64_t>&, const std::string& p,
            const range_2d& g) {
            CHECK(model.at(p + "weight").dtype() == dtype::i8);
            CHECK(bytes_of(model.at(p + "weight")) ==
                  take(src.at(p + "weight"), g.r0, g.r1, g.c0, g.c1));
            // One absmax a row: the rank's rows (all of them for o/down, cut on K).
            CHECK(model.at(p + "SCB").shape() == shape{g.r1 - g.r0});
            CHECK(bytes_of(model.at(p + "SCB")) == take(src.at(p + "SCB"), g.r0, g.r1, 0, 1));
            CHECK(model.at(p + "weight_format").shape() == shape{});
            CHECK(bytes_of(model.at(p + "weight_format")) == std::vector{std::byte{0}});
        });
    // Fused gate/up: the rank's gate rows' SCB, then up's; weight_format one a projection.
    load_options o{.rank = 1, .world = 2};
    o.plan.schema.fuse_gate_up = true;
    auto model = load<host_tensor>(dir.path().string(), o);
    std::vector<std::byte> scb;
    for (const char* n : {"gate_proj", "up_proj"}) {
        const range_2d g = rank_range(std::string("mlp.") + n, 2, 1);
        const auto v =
            take(src.at("model.layers.0.mlp." + std::string(n) + ".SCB"), g.r0, g.r1, 0, 1);
        scb.insert(scb.end(), v.begin(), v.end());
    }
    CHECK(bytes_of(model.at("model.layers.0.mlp.gate_up_proj.SCB")) == scb);
    CHECK(model.at("model.layers.0.mlp.gate_up_proj.weight_format").shape() == shape{2});
    for (const std::uint32_t w : {1u, 2u, 4u}) check_round_trip(dir.path(), src, w);
    schema_options fused;
    fused.fuse_qkv = fused.fuse_gate_up = true;
    check_round_trip(dir.path(), src, 2, fused);
}

TEST_CASE("bitsandbytes 8-bit: a tiled weight_format is held whole only, and says why") {
    auto src = int8_llama();
    src["model.layers.0.self_attn.o_proj.weight_format"] = scalar_u8(2);
    temp_dir dir;
    write(dir.path(), llama_config(bnb8), src);
    const checkpoint c = checkpoint::open(dir.path().string());
    CHECK(load_plan::build(c, {0, 1}).find("model.layers.0.self_attn.o_proj.weight"));
    const error e = expect_error(errc::quantized_checkpoint, [&] {
        (void)load_plan::build(c, {1, 2});
    });
    CHECK_MESSAGE(e.message().find("model.layers.0.self_attn.o_proj.weight") != std::string::npos,
                  e.message());
    CHECK_MESSAGE(e.message().find("weight_format is 2 (col_turing)") != std::string::npos,
                  e.message());
    CHECK_MESSAGE(e.message().find("load it as stored at world 1") != std::string::npos,
                  e.message());
    // A weight_format that is no one-byte scalar.
    src["model.layers.0.self_attn.o_proj.weight_format"] =
        stored{dtype::u8, {2}, std::vector<std::byte>(2)};
    write(dir.path(), llama_config(bnb8), src);
    expect_error(
        errc::quantized_checkpoint,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 2});
        },
        "no one-byte scalar");
}

TEST_CASE("bitsandbytes 4-bit: every tensor whole and as stored at world 1; a cut refused") {
    const auto src = nf4_llama();
    temp_dir dir;
    write(dir.path(), llama_config(bnb4), src);
    auto model = load<host_tensor>(dir.path().string(), {.rank = 0, .world = 1});
    CHECK(model.size() == src.size());
    for (const auto& [n, t] : src) {
        CAPTURE(n);
        REQUIRE(model.contains(n));
        CHECK(model.at(n).shape() == shape::from(std::span(t.dims)));
        CHECK(model.at(n).dtype() == t.type);
        CHECK(bytes_of(model.at(n)) == t.bytes);
    }
    const checkpoint c = checkpoint::open(dir.path().string());
    const load_plan p = load_plan::build(c, {0, 1});
    const plan_destination* q = p.find("model.layers.0.self_attn.q_proj.weight");
    REQUIRE(q);
    CHECK(layout_name(*q) == "replicated");
    const plan_destination* absmax = p.find("model.layers.0.self_attn.q_proj.weight.absmax");
    REQUIRE(absmax);
    CHECK(absmax->companion_of);
    check_round_trip(dir.path(), src, 1);
    // Any world above 1: refused, saying why.
    const error e = expect_error(errc::quantized_checkpoint, [&] {
        (void)load_plan::build(c, {0, 2});
    });
    CHECK_MESSAGE(e.message().find("bitsandbytes 4-bit") != std::string::npos, e.message());
    CHECK_MESSAGE(e.message().find("load it at world 1") != std::string::npos, e.message());
    // Fused projections would join tensors of separate quantization states.
    plan_options fused;
    fused.schema.fuse_gate_up = true;
    expect_error(
        errc::quantized_checkpoint,
        [&] {
            (void)load_plan::build(c, {0, 1}, fused);
        },
        "unfused");
}

TEST_CASE("bitsandbytes: quantization_config says 8 or 4 bits, never both") {
    const auto src = int8_llama();
    temp_dir dir;
    write(dir.path(), llama_config(R"({"quant_method": "bitsandbytes", "load_in_8bit": true,
                           "load_in_4bit": true})"),
          src);
    expect_error(
        errc::invalid_config,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 1});
        },
        "both load_in_8bit and load_in_4bit");
    write(dir.path(), llama_config(R"({"quant_method": "bitsandbytes", "load_in_8bit": "yes"})"),
          src);
    expect_error(
        errc::invalid_config,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 1});
        },
        "load_in_8bit' must be true or false");
    // Neither: no scheme to cut by.
    write(dir.path(), llama_config(R"({"quant_method": "bitsandbytes"})"), src);
    expect_error(
        errc::quantized_checkpoint,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 1});
        },
        "which no plan cuts yet");
}
