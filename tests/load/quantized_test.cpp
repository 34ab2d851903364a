// Quantized checkpoints: FP8 weights and their scales, cut together. Small random checkpoints
// with the published names and dtypes (DeepSeek-V3's and Qwen3-FP8's `weight` F8_E4M3 with
// `weight_scale_inv` F32 [ceil(N/b), ceil(K/b)]; compressed-tensors' `weight_scale` [N, 1] and
// `input_scale` [1]), every rank of the worlds the blocks allow, compared with row and column
// ranges computed here from the definitions (vLLM's fp8.py: a rank's share of N and K in whole
// blocks; per-channel scales sliced with N, per-tensor ones whole), not with the library's
// companion algebra.
#include <doctest/doctest.h>

#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "../support/dequantize_reference.hpp"
#include "../support/expect_error.hpp"
#include "../support/quantized_llama.hpp"
#include "../support/run_tool.hpp"
#include "../support/sparse_replica.hpp"
#include "model_gen.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"
#include "safeshard/save/export.hpp"
#include "safeshard/save/merge.hpp"

using namespace safeshard;
using namespace safeshard::test;

TEST_CASE("FP8 block-scaled (DeepSeek-V3's form): each rank's weights and scale blocks") {
    constexpr std::uint64_t b = 4;
    const auto src = fp8_llama(block_scaled(b));
    temp_folder dir;
    write(dir.path(),
          llama_config(R"({"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                          "weight_block_size": [4, 4]})"),
          src);
    for (std::uint32_t w : {1u, 2u, 4u})
        for (std::uint32_t r = 0; r < w; ++r) {
            CAPTURE(w);
            CAPTURE(r);
            auto model = load<host_tensor>(dir.path().string(), {.rank = r, .world = w});
            for (const auto& [n, dims] : linears()) {
                CAPTURE(n);
                const std::string p = "model.layers.0." + n + ".";
                const range_2d g = rank_range(n, w, r);
                const host_tensor& x = model.at(p + "weight");
                CHECK(x.dtype() == dtype::f8_e4m3);
                CHECK(bytes_of(x) == take(src.at(p + "weight"), g.r0, g.r1, g.c0, g.c1));
                const host_tensor& s = model.at(p + "weight_scale_inv");
                CHECK(s.dtype() == dtype::f32);
                CHECK(s.shape() == shape{(g.r1 - g.r0) / b, (g.c1 - g.c0) / b});
                CHECK(bytes_of(s) ==
                      take(src.at(p + "weight_scale_inv"), g.r0 / b, g.r1 / b, g.c0 / b, g.c1 / b));
            }
            // The BF16 tensors load as before; nothing is unexpected or ignored.
            CHECK(model.at("model.norm.weight").dtype() == dtype::bf16);
            CHECK(model.names().size() == 5 + 2 * linears().size());
        }
    // A --dtype policy converts the BF16 tensors and dequantizes the FP8 weights, their scales
    // consumed (tests/load/dequantize_test.cpp checks the values).
    load_options o{.rank = 0, .world = 2};
    o.plan.dtype = dtype_policy::fixed(dtype::f32);
    auto converted = load<host_tensor>(dir.path().string(), o);
    CHECK(converted.at("model.norm.weight").dtype() == dtype::f32);
    CHECK(converted.at("model.layers.0.mlp.up_proj.weight").dtype() == dtype::f32);
    CHECK_FALSE(converted.contains("model.layers.0.mlp.up_proj.weight_scale_inv"));
}

TEST_CASE("FP8 block-scaled: a rank's share that is not whole blocks is refused, naming it") {
    const auto src = fp8_llama(block_scaled(16));
    temp_folder dir;
    write(dir.path(), llama_config(R"({"quant_method": "fp8", "weight_block_size": [16, 16]})"),
          src);
    const checkpoint c = checkpoint::open(dir.path().string());
    // World 1 is whole tensors: fine.
    CHECK(load_plan::build(c, {0, 1}).find("model.layers.0.self_attn.q_proj.weight_scale_inv"));
    // World 2: each KV head (8 rows) is half a block.
    const auto e = expect_error(errc::invalid_layout, [&] { (void)load_plan::build(c, {0, 2}); });
    CHECK(e.message().find("model.layers.0.self_attn.k_proj.weight") != std::string::npos);
    CHECK(e.message().find("rows of extent 16 cut 2 ways") != std::string::npos);
    CHECK(e.message().find("not in whole blocks of 16") != std::string::npos);
    CHECK(e.message().find("grid<16,16>") != std::string::npos);
}

TEST_CASE("FP8 per channel and per tensor (compressed-tensors): scales follow N, or stay whole") {
    const auto src = fp8_llama([&](const std::vector<std::uint64_t>& dims, std::mt19937_64& rng) {
        std::map<std::string, stored> s;
        s["weight_scale"] = random_stored(dtype::f32, {dims[0], 1}, rng);
        s["input_scale"] = random_stored(dtype::f32, {1}, rng);
        return s;
    });
    temp_folder dir;
    write(dir.path(),
          llama_config(R"({"quant_method": "compressed-tensors", "format": "float-quantized",
                          "config_groups": {}})"),
          src);
    for_each_rank_linear(
        dir.path(), {1, 2, 4},
        [&](const auto& model, const std::vector<std::uint64_t>&, const std::string& p,
            const range_2d& g) {
            CHECK(bytes_of(model.at(p + "weight")) ==
                  take(src.at(p + "weight"), g.r0, g.r1, g.c0, g.c1));
            CHECK(model.at(p + "weight_scale").shape() == shape{g.r1 - g.r0, 1});
            CHECK(bytes_of(model.at(p + "weight_scale")) ==
                  take(src.at(p + "weight_scale"), g.r0, g.r1, 0, 1));
            CHECK(model.at(p + "input_scale").shape() == shape{1});
            CHECK(bytes_of(model.at(p + "input_scale")) == src.at(p + "input_scale").bytes);
        });
    // Fused q/k/v (schema option): the per-channel scales join along N like their weights (the
    // rank's q rows, then k's, then v's); the per-tensor input_scales are kept one per
    // projection, [q, k, v], never one for all.
    for (std::uint32_t r : {0u, 1u}) {
        load_options o{.rank = r, .world = 2};
        o.plan.schema.fuse_qkv = true;
        auto model = load<host_tensor>(dir.path().string(), o);
        const std::string p = "model.layers.0.self_attn.";
        std::vector<std::byte> scales, inputs;
        for (const char* n : {"q_proj", "k_proj", "v_proj"}) {
            const range_2d g = rank_range(std::string("self_attn.") + n, 2, r);
            const auto v = take(src.at(p + n + ".weight_scale"), g.r0, g.r1, 0, 1);
            scales.insert(scales.end(), v.begin(), v.end());
            const auto& in = src.at(p + n + ".input_scale").bytes;
            inputs.insert(inputs.end(), in.begin(), in.end());
        }
        CHECK(bytes_of(model.at(p + "qkv_proj.weight_scale")) == scales);
        CHECK(model.at(p + "qkv_proj.input_scale").shape() == shape{3});
        CHECK(bytes_of(model.at(p + "qkv_proj.input_scale")) == inputs);
    }
}

TEST_CASE("quantized checkpoints: an unknown scheme is refused, naming it; raw load still works") {
    const auto src = fp8_llama([&](const std::vector<std::uint64_t>& dims, std::mt19937_64& rng) {
        std::map<std::string, stored> s;
        s["weight_scale"] = random_stored(dtype::f32, {dims[0], 1}, rng);
        return s;
    });
    temp_folder dir;
    write(dir.path(), llama_config(R"({"quant_method": "hqq", "nbits": 4})"), src);
    const checkpoint c = checkpoint::open(dir.path().string());
    expect_error(
        errc::quantized_checkpoint,
        [&] {
            (void)load_plan::build(c, {0, 2});
        },
        "quant_method 'hqq', which no plan cuts yet");
    plan_options raw;
    raw.allow_quantized = true;
    const load_plan p = load_plan::build(c, {0, 2}, raw);
    CHECK(p.find("model.layers.0.mlp.up_proj.weight_scale") == nullptr);  // not a companion
    // No quantization_config at all: the scale names still refuse.
    temp_folder bare;
    write(bare.path(), llama_config("null"), src);
    expect_error(
        errc::quantized_checkpoint,
        [&] {
            (void)load_plan::build(checkpoint::open(bare.path().string()), {0, 1});
        },
        "scale tensors: ");
}

TEST_CASE("quantized checkpoints: a scale of no known grid over its weight is refused") {
    auto src = fp8_llama(block_scaled(4));
    src.at("model.layers.0.mlp.down_proj.weight_scale_inv").dims = {8, 8};  // [8, 16] expected
    src.at("model.layers.0.mlp.down_proj.weight_scale_inv").bytes.resize(8 * 8 * 4);
    temp_folder dir;
    write(dir.path(), llama_config(R"({"quant_method": "fp8", "weight_block_size": [4, 4]})"), src);
    expect_error(
        errc::shape_mismatch,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 1});
        },
        "the quantization companion 'model.layers.0.mlp.down_proj.weight_scale_inv' of shape "
        "[8, 8] is no fp8 grid over its weight of [32, 64] values (blocks of 4 x 4)");
    // An orphan scale (no weight of that name) is refused too.
    src = fp8_llama(block_scaled(4));
    std::mt19937_64 rng(3);
    src["model.layers.0.mlp.extra.weight_scale_inv"] = random_stored(dtype::f32, {2, 2}, rng);
    temp_folder orphan;
    write(orphan.path(), llama_config(R"({"quant_method": "fp8", "weight_block_size": [4, 4]})"),
          src);
    expect_error(
        errc::quantized_checkpoint,
        [&] {
            (void)load_plan::build(checkpoint::open(orphan.path().string()), {0, 1});
        },
        "no weight of the fp8 scheme claims: model.layers.0.mlp.extra.weight_scale_inv");
}

TEST_CASE("quantized checkpoints: export and merge keep FP8 blocks and their scales, bit-exact") {
    const auto src = fp8_llama(block_scaled(4));
    temp_folder dir;
    write(dir.path(), llama_config(R"({"quant_method": "fp8", "weight_block_size": [4, 4]})"), src);
    for (std::uint32_t w : {1u, 2u, 4u}) check_round_trip(dir.path(), src, w);
    // Fused q/k/v and gate/up: each projection's scale blocks join with its rows, and part
    // again on the merge.
    schema_options fused;
    fused.fuse_qkv = fused.fuse_gate_up = true;
    for (std::uint32_t w : {2u, 4u}) check_round_trip(dir.path(), src, w, fused);
}

TEST_CASE("quantized checkpoints: export and merge keep per-channel and per-tensor scales") {
    const auto src = fp8_llama([&](const std::vector<std::uint64_t>& dims, std::mt19937_64& rng) {
        std::map<std::string, stored> s;
        s["weight_scale"] = random_stored(dtype::f32, {dims[0], 1}, rng);
        s["input_scale"] = random_stored(dtype::f32, {1}, rng);
        return s;
    });
    temp_folder dir;
    write(dir.path(),
          llama_config(R"({"quant_method": "compressed-tensors", "format": "float-quantized",
                          "config_groups": {}})"),
          src);
    for (std::uint32_t w : {1u, 2u, 4u}) check_round_trip(dir.path(), src, w);
    // Fused q/k/v: the per-tensor input scales ride as [q, k, v] on every rank and come back
    // as three tensors.
    schema_options fused;
    fused.fuse_qkv = true;
    check_round_trip(dir.path(), src, 4, fused);
}

namespace {

// NVFP4 (ModelOpt): `weight` U8 [N, K/2] (two E2M1 values a byte), `weight_scale` F8_E4M3
// [N, K/16], `weight_scale_2` and `input_scale` F32 scalars (vLLM's modelopt.py,
// ModelOptNvFp4LinearMethod.create_weights); compressed-tensors' nvfp4-pack-quantized the same
// under `weight_packed`, `weight_global_scale` [1] and `input_global_scale` [1]
// (compressed_tensors_w4a4_nvfp4.py).
struct nvfp4_names {
    std::string weight, scale, global, input;
};
const nvfp4_names modelopt_names{"weight", "weight_scale", "weight_scale_2", "input_scale"};
const nvfp4_names ct_names{"weight_packed", "weight_scale", "weight_global_scale",
                           "input_global_scale"};

std::map<std::string, stored> nvfp4_llama(const nvfp4_names& names,
                                          std::vector<std::uint64_t> scalar) {
    auto t = fp8_llama([](const std::vector<std::uint64_t>&, std::mt19937_64&) {
        return std::map<std::string, stored>{};
    });
    std::mt19937_64 rng(5);
    for (const auto& [n, dims] : linears()) {
        const std::string p = "model.layers.0." + n + ".";
        t.erase(p + "weight");
        t[p + names.weight] = random_stored(dtype::u8, {dims[0], dims[1] / 2}, rng);
        t[p + names.scale] = random_stored(dtype::f8_e4m3, {dims[0], dims[1] / 16}, rng);
        t[p + names.global] = random_stored(dtype::f32, scalar, rng);
        t[p + names.input] = random_stored(dtype::f32, scalar, rng);
    }
    return t;
}

// Every rank of world w: each weight's rows and K range in bytes (2 values a byte), its
// scales' rows and K range in groups of 16, the scalars whole.
void check_nvfp4_world(const std::filesystem::path& dir, const std::map<std::string, stored>& src,
                       const nvfp4_names& names, std::uint32_t w) {
    for_each_rank_linear(dir, {w},
                         [&](const auto& model, const std::vector<std::uint64_t>&,
                             const std::string& p, const range_2d& g) {
                             const host_tensor& weight = model.at(p + names.weight);
                             CHECK(weight.dtype() == dtype::u8);
                             CHECK(weight.shape() == shape{g.r1 - g.r0, (g.c1 - g.c0) / 2});
                             CHECK(bytes_of(weight) ==
                                   take(src.at(p + names.weight), g.r0, g.r1, g.c0 / 2, g.c1 / 2));
                             const host_tensor& scale = model.at(p + names.scale);
                             CHECK(scale.dtype() == dtype::f8_e4m3);
                             CHECK(bytes_of(scale) ==
                                   take(src.at(p + names.scale), g.r0, g.r1, g.c0 / 16, g.c1 / 16));
                             for (const std::string& s : {names.global, names.input})
                                 CHECK(bytes_of(model.at(p + s)) == src.at(p + s).bytes);
                         });
}

}  // namespace

TEST_CASE("NVFP4 (ModelOpt, compressed-tensors): packed weights and their scales cut in values") {
    // ModelOpt with quantization_config in config.json; then the older form, config.json
    // without it and hf_quant_config.json beside it.
    const auto src = nvfp4_llama(modelopt_names, {});
    temp_folder dir;
    write(dir.path(),
          llama_config(R"({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16})"),
          src);
    for (std::uint32_t w : {1u, 2u}) check_nvfp4_world(dir.path(), src, modelopt_names, w);
    temp_folder side;
    write(side.path(), llama_config("null"), src);
    std::ofstream(side.path() / "hf_quant_config.json")
        << R"({"producer": {"name": "modelopt", "version": "0.29.0"},
              "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": null,
                               "group_size": 16, "exclude_modules": ["lm_head"]}})";
    check_nvfp4_world(side.path(), src, modelopt_names, 2);
    // World 4: o_proj's K of 32 values gives each rank 8, half a scale group.
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 4});
        },
        "columns of extent 32 cut 4 ways gives a rank the piece [0, 8), which is not in whole "
        "blocks of 16 (its grid<1,16> weight_scale cannot follow)");

    const auto ct = nvfp4_llama(ct_names, {1});
    temp_folder ctdir;
    write(ctdir.path(), llama_config(R"({"quant_method": "compressed-tensors",
                          "format": "nvfp4-pack-quantized", "config_groups": {}})"),
          ct);
    for (std::uint32_t w : {1u, 2u}) check_nvfp4_world(ctdir.path(), ct, ct_names, w);
    // Fused gate/up: the packed rows join, each projection's global scale kept.
    load_options o{.rank = 1, .world = 2};
    o.plan.schema.fuse_gate_up = true;
    auto model = load<host_tensor>(ctdir.path().string(), o);
    const std::string p = "model.layers.0.mlp.";
    CHECK(model.at(p + "gate_up_proj.weight_packed").shape() == shape{I, H / 2});
    CHECK(model.at(p + "gate_up_proj.weight_scale").shape() == shape{I, H / 16});
    CHECK(model.at(p + "gate_up_proj.weight_global_scale").shape() == shape{2});

    // Export and merge keep them packed: the records say the layout cuts values.
    for (std::uint32_t w : {1u, 2u}) {
        check_round_trip(dir.path(), src, w);
        check_round_trip(ctdir.path(), ct, w);
    }
    schema_options fused;
    fused.fuse_qkv = fused.fuse_gate_up = true;
    check_round_trip(ctdir.path(), ct, 2, fused);
}

TEST_CASE(
    "quantized checkpoints: the KV cache's scales (k_scale, v_scale) held whole by every rank") {
    // ModelOpt writes them beside k_proj and v_proj (X.k_proj.k_scale, X.v_proj.v_scale: F32
    // scalars, vLLM's maybe_remap_kv_scale_name); compressed-tensors beside the attention
    // (X.self_attn.k_scale). Every rank holds each as stored, fused q/k/v or not; an FP8
    // checkpoint of the fp8 scheme (which writes none) finds them unexpected.
    auto src = nvfp4_llama(modelopt_names, {});
    std::mt19937_64 rng(13);
    const std::string a = "model.layers.0.self_attn.";
    src[a + "k_proj.k_scale"] = random_stored(dtype::f32, {}, rng);
    src[a + "v_proj.v_scale"] = random_stored(dtype::f32, {}, rng);
    temp_folder dir;
    write(dir.path(), llama_config(R"({"quant_method": "modelopt", "quant_algo": "NVFP4"})"), src);
    for (const bool fuse : {false, true})
        for (std::uint32_t r = 0; r < 2; ++r) {
            CAPTURE(fuse);
            load_options o{.rank = r, .world = 2};
            o.plan.schema.fuse_qkv = fuse;
            auto model = load<host_tensor>(dir.path().string(), o);
            for (const char* n : {"k_proj.k_scale", "v_proj.v_scale"}) {
                CHECK(model.at(a + n).shape() == shape{});
                CHECK(bytes_of(model.at(a + n)) == src.at(a + n).bytes);
            }
        }
    check_round_trip(dir.path(), src, 2);
    schema_options fused;
    fused.fuse_qkv = true;
    check_round_trip(dir.path(), src, 2, fused);
    // A pipeline stage without layer 0 leaves them out with the layer.
    plan_options stage;
    stage.schema.layer_begin = 1;
    const load_plan p = load_plan::build(checkpoint::open(dir.path().string()), {0, 1}, stage);
    CHECK(p.unexpected().empty());
    CHECK(p.find(a + "k_proj.k_scale") == nullptr);

    auto fp8 = fp8_llama(block_scaled(4));
    fp8[a + "k_proj.k_scale"] = random_stored(dtype::f32, {}, rng);
    temp_folder other;
    write(other.path(), llama_config(R"({"quant_method": "fp8", "weight_block_size": [4, 4]})"),
          fp8);
    expect_error(
        errc::unexpected_tensor,
        [&] {
            (void)load_plan::build(checkpoint::open(other.path().string()), {0, 1});
        },
        "model.layers.0.self_attn.k_proj.k_scale");
}

TEST_CASE(
    "NVFP4 dequantized in the copy: ModelOpt multiplies by weight_scale_2, "
    "compressed-tensors divides by weight_global_scale") {
    struct form {
        const nvfp4_names& names;
        std::string quantization;
        std::vector<std::uint64_t> scalar;
    };
    for (const form& f :
         {form{modelopt_names,
               R"({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16})",
               {}},
          form{ct_names,
               R"({"quant_method": "compressed-tensors",
                          "format": "nvfp4-pack-quantized", "config_groups": {}})",
               {1}}}) {
        CAPTURE(f.names.weight);
        const bool divides = f.names.global == "weight_global_scale";
        const auto src = nvfp4_llama(f.names, f.scalar);
        temp_folder dir;
        write(dir.path(), llama_config(f.quantization), src);
        for (const bool fused : {false, true})
            for (const std::uint32_t w : {1u, 2u})
                for (std::uint32_t r = 0; r < w; ++r) {
                    CAPTURE(fused);
                    CAPTURE(w);
                    CAPTURE(r);
                    load_options o{.rank = r, .world = w};
                    o.plan.schema.fuse_gate_up = fused;
                    const auto stored = load<host_tensor>(dir.path().string(), o);
                    o.plan.dtype = dtype_policy::fixed(dtype::bf16);
                    const auto m = load<host_tensor>(dir.path().string(), o);
                    for (const std::string& n :
                         {std::string("self_attn.q_proj"), std::string("self_attn.o_proj"),
                          std::string(fused ? "mlp.gate_up_proj" : "mlp.up_proj"),
                          std::string("mlp.down_proj")}) {
                        CAPTURE(n);
                        const std::string p = "model.layers.0." + n + ".";
                        const host_tensor& v = stored.at(p + f.names.weight);
                        ref_quantized q{.values = &v,
                                        .fp4 = true,
                                        .rows = v.shape()[0],
                                        .cols = v.shape()[1] * 2,
                                        .scales = &stored.at(p + f.names.scale),
                                        .block_rows = 1,
                                        .block_cols = 16,
                                        .global = &stored.at(p + f.names.global),
                                        .divides = divides};
                        if (n == "mlp.gate_up_proj")  // the rank's gate rows, then its up rows
                            q.global_entry = [&](std::uint64_t, std::uint64_t row) {
                                return row < v.shape()[0] / 2 ? 0u : 1u;
                            };
                        else
                            q.global_entry = [](std::uint64_t, std::uint64_t) { return 0u; };
                        const host_tensor& x = m.at(p + "weight");
                        CHECK(x.dtype() == dtype::bf16);
                        CHECK(x.shape() == shape{q.rows, q.cols});
                        CHECK(bytes_of(x) == ref_dequantize(q, dtype::bf16));
                        for (const std::string& s : {f.names.scale, f.names.global, f.names.input})
                            CHECK_FALSE(m.contains(p + s));
                        CHECK(m.contains(p + f.names.weight) == (f.names.weight == "weight"));
                    }
                }
        // Written dequantized: the packed weights under their values' names, in values.
        check_written_dequantized(dir.path(), 2, dtype::bf16);
    }
    // ModelOpt's older form: hf_quant_config.json, which the dequantized copies leave behind.
    temp_folder side;
    write(side.path(), llama_config("null"), nvfp4_llama(modelopt_names, {}));
    std::ofstream(side.path() / "hf_quant_config.json")
        << R"({"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4",
              "group_size": 16}})";
    check_written_dequantized(side.path(), 1, dtype::f32);
}

TEST_CASE("NVFP4: a packed weight whose rank share splits a byte is refused, naming it") {
    // An intermediate size of 62: down_proj's K cut 2 ways gives each rank 31 values, 15.5
    // bytes.
    auto src = nvfp4_llama(modelopt_names, {});
    std::mt19937_64 rng(9);
    for (const char* n : {"gate_proj", "up_proj"}) {
        const std::string p = std::string("model.layers.0.mlp.") + n + ".";
        src[p + "weight"] = random_stored(dtype::u8, {62, H / 2}, rng);
        src[p + "weight_scale"] = random_stored(dtype::f8_e4m3, {62, H / 16}, rng);
    }
    src["model.layers.0.mlp.down_proj.weight"] = random_stored(dtype::u8, {H, 31}, rng);
    src["model.layers.0.mlp.down_proj.weight_scale"] = random_stored(dtype::f8_e4m3, {H, 4}, rng);
    temp_folder dir;
    write(dir.path(),
          with_intermediate_size(
              llama_config(R"({"quant_method": "modelopt", "quant_algo": "NVFP4"})"), 62),
          src);
    (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 1});  // whole: fine
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 2});
        },
        "parameter 'model.layers.0.mlp.down_proj.weight': its columns of extent 62 cut 2 ways "
        "gives a rank the piece [0, 31), which is not in whole blocks of 2 (its grid<1,2> packed "
        "storage of U8 cannot follow)");
}

namespace {

// compressed-tensors pack-quantized (W4A16), as vLLM's compressed_tensors_wNa16.py creates
// it: `weight_packed` I32 [N, K/8] (8 values a word along K), `weight_scale` BF16 [N, K/g],
// `weight_zero_point` I32 [N/8, K/g] (packed along N), `weight_shape` I64 [2].
std::string wna16_config(std::uint64_t bits, std::uint64_t group,
                         const std::string& actorder = "null") {
    return llama_config(R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": )" +
                        std::to_string(bits) + R"(, "group_size": )" + std::to_string(group) +
                        R"(, "strategy": "group", "symmetric": false, "type": "int",
                        "actorder": )" +
                        actorder + R"(}}}, "ignore": ["lm_head"]})");
}

std::map<std::string, stored> wna16_llama(std::uint64_t group) {
    auto t = fp8_llama([](const std::vector<std::uint64_t>&, std::mt19937_64&) {
        return std::map<std::string, stored>{};
    });
    std::mt19937_64 rng(17);
    for (const auto& [n, dims] : linears()) {
        const std::string p = "model.layers.0." + n + ".";
        t.erase(p + "weight");
        t[p + "weight_packed"] = random_stored(dtype::i32, {dims[0], dims[1] / 8}, rng);
        t[p + "weight_scale"] = random_stored(dtype::bf16, {dims[0], dims[1] / group}, rng);
        t[p + "weight_zero_point"] = random_stored(dtype::i32, {dims[0] / 8, dims[1] / group}, rng);
        t[p + "weight_shape"] = random_stored(dtype::i64, {2}, rng);
    }
    return t;
}

}  // namespace

TEST_CASE(
    "compressed-tensors pack-quantized (int4): words, group scales, zero points cut in values") {
    constexpr std::uint64_t g = 8;
    const auto src = wna16_llama(g);
    temp_folder dir;
    write(dir.path(), wna16_config(4, g), src);
    for_each_rank_linear(
        dir.path(), {1, 2, 4},
        [&](const auto& model, const std::vector<std::uint64_t>&, const std::string& p,
            const range_2d& q) {
            CHECK(model.at(p + "weight_packed").shape() == shape{q.r1 - q.r0, (q.c1 - q.c0) / 8});
            CHECK(bytes_of(model.at(p + "weight_packed")) ==
                  take(src.at(p + "weight_packed"), q.r0, q.r1, q.c0 / 8, q.c1 / 8));
            CHECK(bytes_of(model.at(p + "weight_scale")) ==
                  take(src.at(p + "weight_scale"), q.r0, q.r1, q.c0 / g, q.c1 / g));
            CHECK(model.at(p + "weight_zero_point").shape() ==
                  shape{(q.r1 - q.r0) / 8, (q.c1 - q.c0) / g});
            CHECK(bytes_of(model.at(p + "weight_zero_point")) ==
                  take(src.at(p + "weight_zero_point"), q.r0 / 8, q.r1 / 8, q.c0 / g, q.c1 / g));
            CHECK(bytes_of(model.at(p + "weight_shape")) == src.at(p + "weight_shape").bytes);
        });
    // Fused q/k/v: the logical shapes stay one per projection, [3, 2].
    load_options o{.rank = 0, .world = 2};
    o.plan.schema.fuse_qkv = true;
    auto fused = load<host_tensor>(dir.path().string(), o);
    const std::string a = "model.layers.0.self_attn.";
    CHECK(fused.at(a + "qkv_proj.weight_shape").shape() == shape{3, 2});
    std::vector<std::byte> shapes;
    for (const char* n : {"q_proj", "k_proj", "v_proj"}) {
        const auto& b = src.at(a + n + ".weight_shape").bytes;
        shapes.insert(shapes.end(), b.begin(), b.end());
    }
    CHECK(bytes_of(fused.at(a + "qkv_proj.weight_shape")) == shapes);
    // Rank 0 of 2: 16 q rows, 8 k rows, 8 v rows, a word of zero points for each 8.
    CHECK(fused.at(a + "qkv_proj.weight_zero_point").shape() == shape{4, H / g});

    // Export and merge keep them packed, bit for bit.
    for (std::uint32_t w : {1u, 2u, 4u}) check_round_trip(dir.path(), src, w);
    schema_options both;
    both.fuse_qkv = both.fuse_gate_up = true;
    check_round_trip(dir.path(), src, 2, both);

    // A pipeline stage without layer 0: its packed weights are outside the stage, like their
    // scales (not unexpected names).
    plan_options stage;
    stage.schema.layer_begin = 1;
    const load_plan p = load_plan::build(checkpoint::open(dir.path().string()), {0, 1}, stage);
    CHECK(p.unexpected().empty());
    std::size_t outside = 0;
    for (const auto& ig : p.ignored())
        if (ig.name.starts_with("model.layers.0.")) {
            ++outside;
            CHECK(ig.note == "outside this pipeline stage");
        }
    CHECK(outside == 2 + 4 * linears().size());  // 2 norms, 4 tensors a linear

    // Groups of 16 at world 4: o_proj's 8 values a rank are half a group.
    const auto g16 = wna16_llama(16);
    temp_folder dir16;
    write(dir16.path(), wna16_config(4, 16), g16);
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)load_plan::build(checkpoint::open(dir16.path().string()), {0, 4});
        },
        "columns of extent 32 cut 4 ways gives a rank the piece [0, 8), which is not in whole "
        "blocks of 16");
    // Act order ("actorder": "group"): weight_g_idx [K] cut with K, every group's scales and
    // zero points on every rank (vLLM's marlin_repeat_scales_on_all_ranks), so groups of 16
    // at world 4 are fine.
    auto act = g16;
    std::mt19937_64 rng(21);
    for (const auto& [n, dims] : linears())
        act["model.layers.0." + n + ".weight_g_idx"] = random_stored(dtype::i32, {dims[1]}, rng);
    temp_folder act_dir;
    write(act_dir.path(), wna16_config(4, 16, "\"group\""), act);
    for (std::uint32_t r = 0; r < 4; ++r) {
        auto model = load<host_tensor>(act_dir.path().string(), {.rank = r, .world = 4});
        for (const auto& [n, dims] : linears()) {
            CAPTURE(n);
            const std::string p = "model.layers.0." + n + ".";
            const range_2d q = rank_range(n, 4, r);
            CHECK(bytes_of(model.at(p + "weight_scale")) ==
                  take(act.at(p + "weight_scale"), q.r0, q.r1, 0, dims[1] / 16));
            CHECK(bytes_of(model.at(p + "weight_zero_point")) ==
                  take(act.at(p + "weight_zero_point"), q.r0 / 8, q.r1 / 8, 0, dims[1] / 16));
            CHECK(model.at(p + "weight_g_idx").shape() == shape{q.c1 - q.c0});
            CHECK(bytes_of(model.at(p + "weight_g_idx")) ==
                  take(act.at(p + "weight_g_idx"), q.c0, q.c1, 0, 1));
        }
    }
    check_round_trip(act_dir.path(), act, 4);
    // "weight" (the weights put back in order): no g_idx, groups along K as usual.
    temp_folder weight_order;
    write(weight_order.path(), wna16_config(4, 16, "\"weight\""), g16);
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)load_plan::build(checkpoint::open(weight_order.path().string()), {0, 4});
        },
        "not in whole blocks of 16");
    temp_folder bad_order;
    write(bad_order.path(), wna16_config(4, 16, "\"sideways\""), g16);
    expect_error(
        errc::invalid_config,
        [&] {
            (void)load_plan::build(checkpoint::open(bad_order.path().string()), {0, 1});
        },
        "actorder' must be \"group\", \"weight\"");
    // 3 bits do not pack into 32.
    temp_folder dir3;
    write(dir3.path(), wna16_config(3, g), src);
    expect_error(
        errc::quantized_checkpoint,
        [&] {
            (void)load_plan::build(checkpoint::open(dir3.path().string()), {0, 1});
        },
        "its 3-bit values do not fill the I32 elements the compressed-tensors pack-quantized "
        "scheme packs them in");
}

TEST_CASE("quantization_config and hf_quant_config.json: each malformed field is refused") {
    auto config_with = [](const std::string& q) {
        return R"({"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1,
                   "num_attention_heads": 4, "vocab_size": 64, "quantization_config": )" +
               q + "}";
    };
    const model_config ok = parse_model_config(config_with(
        R"({"quant_method": "fp8", "weight_block_size": [128, 64], "group_size": -1})"));
    REQUIRE(ok.quantization);
    CHECK(ok.quantization->block_rows == 128);
    CHECK(ok.quantization->block_cols == 64);
    CHECK(ok.quantization->group_size == 0);  // -1: per channel
    CHECK(parse_model_config(config_with(R"({"quant_method": "gptq", "group_size": 128})"))
              .quantization->group_size == 128);
    const model_config ct = parse_model_config(config_with(R"({"quant_method":
        "compressed-tensors", "format": "pack-quantized", "config_groups": {"group_0":
        {"targets": ["Linear"], "weights": {"num_bits": 4, "group_size": 32}},
         "kv": {"input_activations": null}}})"));
    CHECK(ct.quantization->bits == 4);
    CHECK(ct.quantization->group_size == 32);
    struct bad {
        const char* q;
        const char* says;
    };
    for (
        const bad& b : {
            bad{"[]", "'quantization_config' must be an object, found an array"},
            bad{R"({"bits": 4})", "'quantization_config' has no 'quant_method'"},
            bad{R"({"quant_method": 8})", "'quantization_config.quant_method' must be a string"},
            bad{R"({"quant_method": "fp8", "weight_block_size": [128]})",
                "'quantization_config.weight_block_size' must be two positive integers"},
            bad{R"({"quant_method": "fp8", "weight_block_size": [0, 128]})",
                "'quantization_config.weight_block_size' must be two positive integers"},
            bad{R"({"quant_method": "gptq", "group_size": 0})",
                "'quantization_config.group_size' must be a positive integer or -1"},
            bad{R"({"quant_method": "gptq", "group_size": -2})",
                "'quantization_config.group_size' must be a positive integer or -1"},
            bad{R"({"quant_method": "gptq", "group_size": "128"})",
                "'quantization_config.group_size' must be a positive integer or -1"},
            bad{R"({"quant_method": "gptq", "bits": 0})",
                "'quantization_config.bits' must be an integer from 1 to 64"},
            bad{R"({"quant_method": "gptq", "bits": 65})",
                "'quantization_config.bits' must be an integer from 1 to 64"},
            bad{R"({"quant_method": "compressed-tensors", "config_groups": []})",
                "'quantization_config.config_groups' must be an object"},
            bad{R"({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": 4}}})",
                "'quantization_config.config_groups.g.weights' must be an object"},
            bad{R"({"quant_method": "compressed-tensors",
                     "config_groups": {"g": {"weights": {"num_bits": 0}}}})",
                "'quantization_config.config_groups.g.weights.num_bits' must be an integer"},
            bad{R"({"quant_method": "compressed-tensors",
                     "config_groups": {"g": {"weights": {"num_bits": 4, "group_size": 0}}}})",
                "'quantization_config.config_groups.g.weights.group_size' must be a positive"},
            bad{R"({"quant_method": "compressed-tensors", "config_groups": {
                     "a": {"weights": {"num_bits": 4, "group_size": 128}},
                     "b": {"weights": {"num_bits": 8, "group_size": 128}}}})",
                "has groups of different num_bits, group_size or actorder (4/128 and 8/128)"},
            bad{R"({"quant_method": "compressed-tensors", "config_groups": {
                     "a": {"weights": {"num_bits": 4, "group_size": 128, "actorder": "group"}},
                     "b": {"weights": {"num_bits": 4, "group_size": 128}}}})",
                "has groups of different num_bits, group_size or actorder"},
            bad{R"({"quant_method": "compressed-tensors",
                     "config_groups": {"g": {"weights": {"num_bits": 4, "actorder": 1}}}})",
                "'quantization_config.config_groups.g.weights.actorder' must be \"group\""},
            bad{R"({"quant_method": "gptq", "desc_act": "yes"})",
                "'quantization_config.desc_act' must be true or false, found a string"},
        }) {
        CAPTURE(b.q);
        expect_error(
            errc::invalid_config, [&] { (void)parse_model_config(config_with(b.q)); }, b.says);
    }

    // Act order: GPTQ's desc_act, compressed-tensors' actorder "group" (or true, "dynamic").
    for (const char* q : {R"({"quant_method": "gptq", "desc_act": true})",
                          R"({"quant_method": "compressed-tensors", "config_groups": {"g":
                                {"weights": {"num_bits": 4, "actorder": "group"}}}})",
                          R"({"quant_method": "compressed-tensors", "config_groups": {"g":
                                {"weights": {"num_bits": 4, "actorder": true}}}})"}) {
        CAPTURE(q);
        CHECK(parse_model_config(config_with(q)).quantization->act_order);
    }
    CHECK_FALSE(parse_model_config(config_with(R"({"quant_method": "compressed-tensors",
                    "config_groups": {"g": {"weights": {"actorder": "weight"}}}})"))
                    .quantization->act_order);

    // hf_quant_config.json: read where config.json says no quantization_config.
    config_file c = config_file::parse(config_with("null"));
    c.adopt_hf_quant_config(
        R"({"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4",
            "group_size": 16, "kv_cache_quant_algo": null, "exclude_modules": ["lm_head"]}})",
        "hf_quant_config.json");
    REQUIRE(c.config().quantization);
    CHECK(c.config().quantization->quant_method == "modelopt");
    CHECK(c.config().quantization->quant_algo == "NVFP4");
    CHECK(c.config().quantization->group_size == 16);
    config_file own = config_file::parse(config_with(R"({"quant_method": "fp8"})"));
    own.adopt_hf_quant_config(R"({"quantization": {"quant_algo": "NVFP4"}})", "x");
    CHECK(own.config().quantization->quant_method == "fp8");  // config.json's wins
    for (const bad& b : {
             bad{"{", "hf_quant_config.json is not valid JSON"},
             bad{"[1]", "hf_quant_config.json is no JSON object"},
             bad{R"({"producer": {}})", "hf_quant_config.json has no 'quantization' object"},
             bad{R"({"quantization": 3})", "'quantization' must be an object, found"},
             bad{R"({"quantization": {"group_size": 16}})", "has no 'quant_algo'"},
             bad{R"({"quantization": {"quant_algo": "NVFP4", "group_size": 0}})",
                 "'quantization.group_size' must be a positive integer or -1"},
         }) {
        CAPTURE(b.q);
        config_file f = config_file::parse(config_with("null"));
        expect_error(
            errc::invalid_config, [&] { f.adopt_hf_quant_config(b.q, "hf_quant_config.json"); },
            b.says);
    }
    // Beside a checkpoint: a broken one stops the load, naming the file.
    const auto src = nvfp4_llama(modelopt_names, {});
    temp_folder dir;
    write(dir.path(), llama_config("null"), src);
    std::ofstream(dir.path() / "hf_quant_config.json") << R"({"quantization": []})";
    expect_error(
        errc::invalid_config,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 1});
        },
        "hf_quant_config.json");
}

TEST_CASE("safeshard plan --json: a quantized weight lists its companions, FP8 dequantized" *
          doctest::skip(!have_tool())) {
    const auto src = fp8_llama(block_scaled(4));
    temp_folder dir;
    write(dir.path(), llama_config(R"({"quant_method": "fp8", "weight_block_size": [4, 4]})"), src);
    const auto r = run_tool("plan " + dir.path().string() + " --tp 2 --json");
    REQUIRE_MESSAGE(r.code == 0, r.out);
    simdjson::dom::parser parser;
    const simdjson::dom::element doc = parser.parse(r.out);
    std::vector<std::uint64_t> total(2, 0);
    bool saw = false;
    for (auto p : doc["parameters"].get_array()) {
        const std::string name(p["name"].get_string().value());
        CAPTURE(name);
        for (auto k : p["ranks"].get_array())
            total[k["rank"].get_uint64().value()] += k["nbytes"].get_uint64().value();
        simdjson::dom::array companions = p["companions"].get_array();
        const bool quantized = name.find("_proj.weight") != std::string::npos;
        CHECK(companions.size() == (quantized ? 1u : 0u));
        for (auto c : companions) {
            for (auto k : c["ranks"].get_array())
                total[k["rank"].get_uint64().value()] += k["nbytes"].get_uint64().value();
            if (name != "model.layers.0.mlp.down_proj.weight") continue;
            saw = true;
            CHECK(std::string(c["name"].get_string().value()) ==
                  "model.layers.0.mlp.down_proj.weight_scale_inv");
            CHECK(std::string(c["layout"].get_string().value()) == "grid<4,4>(split<1>)");
            CHECK(std::string(c["dtype"].get_string().value()) == "F32");
            std::vector<std::uint64_t> g;
            for (auto x : c["global_shape"].get_array()) g.push_back(x.get_uint64().value());
            CHECK(g == std::vector<std::uint64_t>{8, 16});
            auto k1 = c["ranks"].get_array().at(1);
            std::vector<std::uint64_t> s1;
            for (auto x : k1["shape"].get_array()) s1.push_back(x.get_uint64().value());
            CHECK(s1 == std::vector<std::uint64_t>{8, 8});
            CHECK(k1["nbytes"].get_uint64().value() == 8 * 8 * 4);
        }
    }
    CHECK(saw);
    // rank_bytes count the companions.
    std::vector<std::uint64_t> said;
    for (auto x : doc["rank_bytes"].get_array()) said.push_back(x.get_uint64().value());
    CHECK(said == total);

    // --dtype BF16 dequantizes: the weights are BF16 [N, K] values, their scales consumed (no
    // companions listed, none counted).
    const auto d = run_tool("plan " + dir.path().string() + " --tp 2 --dtype BF16 --json");
    REQUIRE_MESSAGE(d.code == 0, d.out);
    const simdjson::dom::element dq = parser.parse(d.out);
    std::vector<std::uint64_t> dq_total(2, 0);
    for (auto p : dq["parameters"].get_array()) {
        const std::string name(p["name"].get_string().value());
        CAPTURE(name);
        CHECK(std::string(p["dtype"].get_string().value()) == "BF16");
        CHECK(p["companions"].get_array().size() == 0u);
        for (auto k : p["ranks"].get_array())
            dq_total[k["rank"].get_uint64().value()] += k["nbytes"].get_uint64().value();
        if (name == "model.layers.0.mlp.down_proj.weight")
            CHECK(p["ranks"].get_array().at(1)["nbytes"].get_uint64().value() == H * I / 2 * 2);
    }
    said.clear();
    for (auto x : dq["rank_bytes"].get_array()) said.push_back(x.get_uint64().value());
    CHECK(said == dq_total);
}

namespace {

const std::filesystem::path moe_data = std::filesystem::path(SAFESHARD_TEST_DATA) / "moe";

// The local shapes of a weight and of its weight_scale_inv in a plan.
std::pair<shape, shape> planned(const load_plan& p, const std::string& weight) {
    const plan_destination* w = p.find(weight);
    const plan_destination* s = p.find(weight + "_scale_inv");
    REQUIRE_MESSAGE(w, weight);
    REQUIRE_MESSAGE(s, (weight + "_scale_inv"));
    CHECK(s->companion_of.has_value());
    return {w->local, s->local};
}

}  // namespace

TEST_CASE("DeepSeek-V3 FP8 as published: every rank's weights and scale blocks at tp 8") {
    // Its config.json (quant_method fp8, weight_block_size [128, 128]) and its 91,991 tensor
    // names (tests/data/moe), headers and holes: the weights the listing gives a
    // weight_scale_inv are F8_E4M3 with their F32 grid.
    const auto data = moe_data / "deepseek-ai__DeepSeek-V3";
    const model_config c = load_model_config(data / "config.json");
    REQUIRE(c.quantization);
    CHECK(c.quantization->quant_method == "fp8");
    CHECK(c.quantization->block_rows == 128);
    const auto tensors = test::replica_tensors(c, test::fp8_listing(data / "tensors.txt", c));
    CHECK(tensors.size() == 91991);
    temp_folder dir;
    test::write_sparse_replica(dir.path(), data / "config.json", tensors, 16);
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    // Rank 3 of tp 8 / ep 8: whole experts (32 a rank), attention and dense MLPs cut 8 ways.
    const load_plan p = load_plan::build(ckpt, {.rank = 3, .world = 8, .experts = {.ep = 8}});
    CHECK(p.unexpected().empty());
    const std::string a = "model.layers.0.self_attn.";
    CHECK(planned(p, a + "q_a_proj.weight") == std::pair{shape{1536, 7168}, shape{12, 56}});
    CHECK(planned(p, a + "q_b_proj.weight") == std::pair{shape{3072, 1536}, shape{24, 12}});
    CHECK(planned(p, a + "kv_a_proj_with_mqa.weight") ==
          std::pair{shape{576, 7168}, shape{5, 56}});  // 4.5 blocks: whole, the last partial
    CHECK(planned(p, a + "kv_b_proj.weight") == std::pair{shape{4096, 512}, shape{32, 4}});
    CHECK(planned(p, a + "o_proj.weight") == std::pair{shape{7168, 2048}, shape{56, 16}});
    CHECK(planned(p, "model.layers.0.mlp.gate_proj.weight") ==
          std::pair{shape{2304, 7168}, shape{18, 56}});
    CHECK(planned(p, "model.layers.0.mlp.down_proj.weight") ==
          std::pair{shape{7168, 2304}, shape{56, 18}});
    CHECK(planned(p, "model.layers.3.mlp.experts.96.gate_proj.weight") ==
          std::pair{shape{2048, 7168}, shape{16, 56}});
    CHECK(planned(p, "model.layers.60.mlp.experts.127.down_proj.weight") ==
          std::pair{shape{7168, 2048}, shape{56, 16}});
    CHECK(p.find("model.layers.3.mlp.experts.0.gate_proj.weight_scale_inv") == nullptr);
    CHECK(planned(p, "model.layers.3.mlp.shared_experts.up_proj.weight") ==
          std::pair{shape{256, 7168}, shape{2, 56}});
    CHECK(p.find("model.layers.3.mlp.gate.weight")->companion_of == std::nullopt);
    // The multi-token prediction layer is left out with its scales.
    std::size_t mtp = 0, mtp_left_out = 0;
    for (const auto& t : tensors) mtp += t.name.starts_with("model.layers.61.") ? 1 : 0;
    for (const auto& ig : p.ignored()) mtp_left_out += ig.left_out ? 1 : 0;
    CHECK(mtp_left_out == mtp);
    // ep 1: each expert cut 8 ways, 256 of its 2048 rows: 2 blocks.
    const load_plan q = load_plan::build(ckpt, {.rank = 7, .world = 8});
    CHECK(planned(q, "model.layers.3.mlp.experts.0.gate_proj.weight") ==
          std::pair{shape{256, 7168}, shape{2, 56}});
    CHECK(planned(q, "model.layers.3.mlp.experts.255.down_proj.weight") ==
          std::pair{shape{7168, 256}, shape{56, 2}});
    // tp 32: the dense layers' 18432 MLP rows give a rank 576, four and a half blocks.
    const auto e = expect_error(errc::invalid_layout,
                                [&] { (void)load_plan::build(ckpt, {.rank = 0, .world = 32}); });
    CHECK(e.message().find("not in whole blocks of 128") != std::string::npos);
}

TEST_CASE("Qwen3-30B-A3B-FP8: tp 4 is refused (768 / 4 = 192 rows), as vLLM refuses it") {
    // Qwen3-30B-A3B's config.json with the quantization_config of its FP8 release
    // (quant_method fp8, weight_block_size [128, 128]); every projection FP8, the routers BF16.
    const auto data = moe_data / "Qwen__Qwen3-30B-A3B";
    std::ifstream in(data / "config.json");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    text.insert(text.rfind('}'),
                R"(, "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                    "quant_method": "fp8", "weight_block_size": [128, 128]})");
    temp_folder dir;
    std::filesystem::create_directories(dir.path() / "cfg");
    test::write_text_file(dir.path() / "cfg" / "config.json", text);
    const model_config c = load_model_config(dir.path() / "cfg" / "config.json");
    const auto tensors =
        test::replica_tensors(c, [](const std::string& n) { return n.ends_with("_proj.weight"); });
    test::write_sparse_replica(dir.path() / "ckpt", dir.path() / "cfg" / "config.json", tensors, 8);
    const checkpoint ckpt = checkpoint::open((dir.path() / "ckpt").string());
    const auto e = expect_error(errc::invalid_layout,
                                [&] { (void)load_plan::build(ckpt, {.rank = 0, .world = 4}); });
    CHECK(e.message().find(".mlp.experts.") != std::string::npos);
    CHECK(e.message().find("rows of extent 768 cut 4 ways") != std::string::npos);
    CHECK(e.message().find("[0, 192)") != std::string::npos);
    // tp 2 (384 rows, 3 blocks) and tp 4 with ep 4 (whole experts) plan.
    const load_plan two = load_plan::build(ckpt, {.rank = 1, .world = 2});
    CHECK(planned(two, "model.layers.0.mlp.experts.5.up_proj.weight") ==
          std::pair{shape{384, 2048}, shape{3, 16}});
    const load_plan ep = load_plan::build(ckpt, {.rank = 0, .world = 4, .experts = {.ep = 4}});
    CHECK(planned(ep, "model.layers.0.mlp.experts.5.up_proj.weight") ==
          std::pair{shape{768, 2048}, shape{6, 16}});
    // Fused experts stack the scales as vLLM's w13_weight_scale_inv [E, 2·ceil(I/128),
    // ceil(H/128)] and w2_weight_scale_inv [E, ceil(H/128), ceil(I/128)], a rank's share.
    plan_options fused;
    fused.schema.fuse_experts = true;
    const load_plan f = load_plan::build(ckpt, {.rank = 1, .world = 2}, fused);
    const std::string x = "model.layers.47.mlp.experts.";
    CHECK(planned(f, x + "w13_weight") == std::pair{shape{128, 768, 2048}, shape{128, 6, 16}});
    CHECK(planned(f, x + "w2_weight") == std::pair{shape{128, 2048, 384}, shape{128, 16, 3}});
    expect_error(
        errc::invalid_layout, [&] { (void)load_plan::build(ckpt, {.rank = 0, .world = 4}, fused); },
        "rows of extent 768 cut 4 ways");
}
