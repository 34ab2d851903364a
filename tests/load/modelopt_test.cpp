// ModelOpt's other forms (vLLM's modelopt.py, QUANT_ALGOS): MIXED_PRECISION, whose
// "quantized_layers" give each layer its own quant_algo (FP8 attention, NVFP4 MLP here, as
// NVIDIA's mixed checkpoints quantize dense layers and experts); MXFP8 (weight_scale U8 E8M0
// [N, K/32]); FP8_PER_CHANNEL_PER_TOKEN (weight_scale [N]); W4A16_NVFP4 (NVFP4 weights, no
// input scale); quant_algo written in lower case (vLLM upper-cases it). Small random llamas
// with the published names and dtypes, every rank of the worlds the blocks allow, compared with
// rows and columns computed here from the definitions (quantized_llama.hpp's rank_range).
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../support/dequantize_reference.hpp"
#include "../support/expect_error.hpp"
#include "../support/quantized_llama.hpp"
#include "../support/sparse_replica.hpp"
#include "safeshard/format/config.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"

using namespace safeshard;
using namespace safeshard::test;

namespace {

bool attention(const std::string& linear) { return linear.starts_with("self_attn."); }

// NVFP4's tensors of a linear [N, K] (ModelOpt's names), with or without the input scale.
std::map<std::string, stored> nvfp4_linear(const std::vector<std::uint64_t>& dims,
                                           std::mt19937_64& rng, bool input_scale = true) {
    std::map<std::string, stored> s;
    s["weight"] = random_stored(dtype::u8, {dims[0], dims[1] / 2}, rng);
    s["weight_scale"] = random_stored(dtype::f8_e4m3, {dims[0], dims[1] / 16}, rng);
    s["weight_scale_2"] = random_stored(dtype::f32, {}, rng);
    if (input_scale) s["input_scale"] = random_stored(dtype::f32, {}, rng);
    return s;
}

// The mixed model (as nvidia/MiniMax-M3-NVFP4 mixes MXFP8 and NVFP4, Qwen3.6-NVFP4 FP8 and
// NVFP4): attention FP8 with per-tensor scales, gate and up NVFP4, down MXFP8 (K = 64: two
// blocks of 32).
std::map<std::string, stored> mixed_llama() {
    std::mt19937_64 rng(41);
    auto t = fp8_llama([](const std::vector<std::uint64_t>&, std::mt19937_64&) {
        return std::map<std::string, stored>{};
    });
    for (const auto& [n, dims] : linears()) {
        const std::string p = "model.layers.0." + n + ".";
        if (attention(n)) {
            t[p + "weight_scale"] = random_stored(dtype::f32, {}, rng);
            t[p + "input_scale"] = random_stored(dtype::f32, {}, rng);
            continue;
        }
        if (n == "mlp.down_proj") {
            t[p + "weight_scale"] = random_stored(dtype::u8, {dims[0], dims[1] / 32}, rng);
            continue;
        }
        t.erase(p + "weight");
        for (auto& [suffix, s] : nvfp4_linear(dims, rng)) t[p + suffix] = std::move(s);
    }
    return t;
}

const std::string mixed_quantization = R"({"quant_method": "modelopt",
    "quant_algo": "MIXED_PRECISION", "kv_cache_scheme": null, "ignore": ["lm_head"],
    "quantized_layers": {
        "model.layers.0.self_attn.q_proj": {"quant_algo": "FP8"},
        "model.layers.0.self_attn.k_proj": {"quant_algo": "FP8"},
        "model.layers.0.self_attn.v_proj": {"quant_algo": "FP8"},
        "model.layers.0.self_attn.o_proj": {"quant_algo": "FP8"},
        "model.layers.0.mlp.gate_proj": {"quant_algo": "NVFP4", "group_size": 16},
        "model.layers.0.mlp.up_proj": {"quant_algo": "NVFP4", "group_size": 16},
        "model.layers.0.mlp.down_proj": {"quant_algo": "MXFP8"}}})";

// Rank g's NVFP4 weight at p: its rows, K in bytes, scales in groups of 16, scalars whole.
void check_nvfp4(const loaded_model<host_tensor>& m, const std::map<std::string, stored>& src,
                 const std::string& p, const range_2d& g) {
    CHECK(m.at(p + "weight").dtype() == dtype::u8);
    CHECK(bytes_of(m.at(p + "weight")) ==
          take(src.at(p + "weight"), g.r0, g.r1, g.c0 / 2, g.c1 / 2));
    CHECK(bytes_of(m.at(p + "weight_scale")) ==
          take(src.at(p + "weight_scale"), g.r0, g.r1, g.c0 / 16, g.c1 / 16));
    CHECK(bytes_of(m.at(p + "weight_scale_2")) == src.at(p + "weight_scale_2").bytes);
}

}  // namespace

TEST_CASE("ModelOpt MIXED_PRECISION: FP8, NVFP4 and MXFP8 layers, each cut with its scales") {
    const auto src = mixed_llama();
    temp_dir dir;
    write(dir.path(), llama_config(mixed_quantization), src);
    for_each_rank_linear(
        dir.path(), {1, 2},
        [&](const auto& m, const std::vector<std::uint64_t>&, const std::string& p,
            const range_2d& g) {
            if (p.ends_with("down_proj.")) {  // MXFP8: the scales of 32 values
                CHECK(bytes_of(m.at(p + "weight")) ==
                      take(src.at(p + "weight"), g.r0, g.r1, g.c0, g.c1));
                CHECK(m.at(p + "weight_scale").dtype() == dtype::u8);
                CHECK(bytes_of(m.at(p + "weight_scale")) ==
                      take(src.at(p + "weight_scale"), g.r0, g.r1, g.c0 / 32, g.c1 / 32));
                return;
            }
            if (p.find("self_attn.") == std::string::npos) {
                check_nvfp4(m, src, p, g);
                CHECK(bytes_of(m.at(p + "input_scale")) == src.at(p + "input_scale").bytes);
                return;
            }
            CHECK(m.at(p + "weight").dtype() == dtype::f8_e4m3);
            CHECK(bytes_of(m.at(p + "weight")) ==
                  take(src.at(p + "weight"), g.r0, g.r1, g.c0, g.c1));
            for (const char* s : {"weight_scale", "input_scale"})
                CHECK(bytes_of(m.at(p + s)) == src.at(p + s).bytes);
            CHECK_FALSE(m.contains(p + "weight_scale_2"));
        });
    // Fused projections keep one scalar a projection, whatever the layer's algorithm.
    load_options o{.rank = 1, .world = 2};
    o.plan.schema.fuse_qkv = true;
    o.plan.schema.fuse_gate_up = true;
    const auto fused = load<host_tensor>(dir.path().string(), o);
    CHECK(fused.at("model.layers.0.self_attn.qkv_proj.weight_scale").shape() == shape{3});
    CHECK(fused.at("model.layers.0.mlp.gate_up_proj.weight_scale_2").shape() == shape{2});
    schema_options fuse;
    fuse.fuse_qkv = fuse.fuse_gate_up = true;
    check_round_trip(dir.path(), src, 2, fuse);
    // The same layers under hf_quant_config.json (older ModelOpt exports), lower case.
    temp_dir side;
    write(side.path(), llama_config("null"), src);
    std::ofstream(side.path() / "hf_quant_config.json") << R"({"producer": {"name": "modelopt"},
        "quantization": {"quant_algo": "mixed_precision", "kv_cache_quant_algo": null,
        "quantized_layers": {"model.layers.0.self_attn.q_proj": {"quant_algo": "fp8"},
                             "model.layers.0.mlp.up_proj": {"quant_algo": "nvfp4",
                                                            "group_size": 16}}}})";
    const load_plan p = load_plan::build(checkpoint::open(side.path().string()), {0, 2});
    for (const char* n : {"model.layers.0.mlp.gate_proj.weight_scale_2",
                          "model.layers.0.mlp.down_proj.weight_scale",
                          "model.layers.0.self_attn.o_proj.input_scale"}) {
        CAPTURE(n);
        REQUIRE(p.find(n));
        CHECK(p.find(n)->companion_of);
    }
}

TEST_CASE("ModelOpt MIXED_PRECISION: layers of another algorithm are refused, naming them") {
    temp_dir dir;
    write(dir.path(), llama_config(R"({"quant_method": "modelopt",
        "quant_algo": "MIXED_PRECISION", "quantized_layers": {
            "model.layers.0.self_attn.q_proj": {"quant_algo": "FP8"},
            "model.layers.0.mlp.up_proj": {"quant_algo": "FP8_PB_WO"}}})"),
          fp8_llama([](const std::vector<std::uint64_t>&, std::mt19937_64& rng) {
              std::map<std::string, stored> s;
              s["weight_scale"] = random_stored(dtype::f32, {}, rng);
              return s;
          }));
    expect_error(
        errc::quantized_checkpoint,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 1});
        },
        "quant_method 'modelopt' (quant_algo 'MIXED_PRECISION' of layers FP8, FP8_PB_WO), which "
        "no plan cuts yet");
}

TEST_CASE("ModelOpt MIXED_PRECISION dequantized: each layer by its own algorithm's scales") {
    // FP8 attention x its scalar, NVFP4 gate/up x their E4M3 groups x weight_scale_2, MXFP8 down
    // x its E8M0 blocks of 32; fused q/k/v and gate/up keep a scalar a projection.
    const auto src = mixed_llama();
    temp_dir dir;
    write(dir.path(), llama_config(mixed_quantization), src);
    for (const bool fused : {false, true})
        for (const std::uint32_t w : {1u, 2u})
            for (std::uint32_t r = 0; r < w; ++r) {
                CAPTURE(fused);
                CAPTURE(w);
                CAPTURE(r);
                load_options o{.rank = r, .world = w};
                o.plan.schema.fuse_qkv = o.plan.schema.fuse_gate_up = fused;
                const auto stored = load<host_tensor>(dir.path().string(), o);
                o.plan.dtype = dtype_policy::fixed(dtype::f16);
                const auto m = load<host_tensor>(dir.path().string(), o);
                CHECK(m.names().size() == 5 + (fused ? 4 : linears().size()));
                for (const auto& [n, parts] :
                     fused
                         ? std::vector<std::pair<std::string, int>>{{"self_attn.qkv_proj", 3},
                                                                    {"self_attn.o_proj", 1},
                                                                    {"mlp.gate_up_proj", 2},
                                                                    {"mlp.down_proj", 1}}
                         : std::vector<std::pair<std::string, int>>{
                               {"self_attn.k_proj", 1}, {"mlp.up_proj", 1}, {"mlp.down_proj", 1}}) {
                    CAPTURE(n);
                    const std::string p = "model.layers.0." + n + ".";
                    const host_tensor& v = stored.at(p + "weight");
                    const bool fp4 = v.dtype() == dtype::u8;
                    const bool mx = n == "mlp.down_proj";
                    const std::uint64_t rows = v.shape()[0];
                    ref_quantized q{.values = &v,
                                    .fp4 = fp4,
                                    .rows = rows,
                                    .cols = v.shape()[1] * (fp4 ? 2 : 1),
                                    .scales = &stored.at(p + "weight_scale"),
                                    .block_rows = fp4 || mx ? 1u : 0u,
                                    .block_cols = fp4  ? 16u
                                                  : mx ? 32u
                                                       : 0u};
                    // The rank's rows of each projection: q, k, v heads or gate, up, in order.
                    std::vector<std::uint64_t> ends;
                    if (n == "self_attn.qkv_proj")
                        for (const char* part : {"self_attn.q_proj", "self_attn.k_proj"}) {
                            const range_2d g = rank_range(part, w, r);
                            ends.push_back((ends.empty() ? 0 : ends.back()) + g.r1 - g.r0);
                        }
                    if (n == "mlp.gate_up_proj") ends.push_back(rows / 2);
                    auto part_of = [ends](std::uint64_t row) {
                        std::uint64_t k = 0;
                        while (k < ends.size() && row >= ends[k]) ++k;
                        return k;
                    };
                    if (!fp4 && !mx)
                        q.scale_entry = [=](std::uint64_t, std::uint64_t row, std::uint64_t) {
                            return part_of(row);
                        };
                    if (fp4) {
                        q.global = &stored.at(p + "weight_scale_2");
                        q.global_entry = [=](std::uint64_t, std::uint64_t row) {
                            return part_of(row);
                        };
                    }
                    CHECK(parts == static_cast<int>(ends.size()) + 1);
                    const host_tensor& x = m.at(p + "weight");
                    CHECK(x.dtype() == dtype::f16);
                    CHECK(bytes_of(x) == ref_dequantize(q, dtype::f16));
                    for (const char* s : {"weight_scale", "weight_scale_2", "input_scale"})
                        CHECK_FALSE(m.contains(p + s));
                }
            }
}

TEST_CASE("ModelOpt MXFP8: F8 weights with E8M0 scales of 32 values, cut in whole blocks") {
    const auto src = quantized_llama(
        dtype::f8_e4m3, [](const std::vector<std::uint64_t>& dims, std::mt19937_64& r) {
            std::map<std::string, stored> s;
            s["weight_scale"] = random_stored(dtype::u8, {dims[0], dims[1] / 32}, r);
            return s;
        });
    temp_dir dir;
    write(dir.path(), llama_config(R"({"quant_method": "modelopt", "quant_algo": "MXFP8"})"), src);
    for_each_rank_linear(
        dir.path(), {1},
        [&](const auto& m, const std::vector<std::uint64_t>&, const std::string& p,
            const range_2d& g) {
            CHECK(bytes_of(m.at(p + "weight")) ==
                  take(src.at(p + "weight"), g.r0, g.r1, g.c0, g.c1));
            CHECK(m.at(p + "weight_scale").dtype() == dtype::u8);
            CHECK(bytes_of(m.at(p + "weight_scale")) ==
                  take(src.at(p + "weight_scale"), g.r0, g.r1, g.c0 / 32, g.c1 / 32));
        });
    // World 4: down_proj's K of 64 values gives each rank 16, half a block. (o_proj's K of 32
    // is one block: its [N, 1] scale is one a row, which every piece of the row shares.)
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 4});
        },
        "not in whole blocks of 32");
}

TEST_CASE("ModelOpt FP8_PER_CHANNEL_PER_TOKEN and W4A16_NVFP4: scales per channel, no input") {
    std::mt19937_64 rng(47);
    const auto per_channel = quantized_llama(
        dtype::f8_e4m3, [](const std::vector<std::uint64_t>& dims, std::mt19937_64& r) {
            std::map<std::string, stored> s;
            s["weight_scale"] = random_stored(dtype::f32, {dims[0]}, r);
            return s;
        });
    temp_dir dir;
    write(
        dir.path(),
        llama_config(R"({"quant_method": "modelopt", "quant_algo": "FP8_PER_CHANNEL_PER_TOKEN"})"),
        per_channel);
    for_each_rank_linear(dir.path(), {1, 2, 4},
                         [&](const auto& m, const std::vector<std::uint64_t>&, const std::string& p,
                             const range_2d& g) {
                             CHECK(m.at(p + "weight_scale").shape() == shape{g.r1 - g.r0});
                             CHECK(bytes_of(m.at(p + "weight_scale")) ==
                                   take(per_channel.at(p + "weight_scale"), g.r0, g.r1, 0, 1));
                         });
    auto w4a16 = fp8_llama([](const std::vector<std::uint64_t>&, std::mt19937_64&) {
        return std::map<std::string, stored>{};
    });
    for (const auto& [n, dims] : linears()) {
        const std::string p = "model.layers.0." + n + ".";
        w4a16.erase(p + "weight");
        for (auto& [suffix, s] : nvfp4_linear(dims, rng, false)) w4a16[p + suffix] = std::move(s);
    }
    temp_dir dir2;
    write(dir2.path(), llama_config(R"({"quant_method": "modelopt", "quant_algo": "w4a16_nvfp4",
                                        "group_size": 16})"),
          w4a16);
    for_each_rank_linear(dir2.path(), {1, 2},
                         [&](const auto& m, const std::vector<std::uint64_t>&, const std::string& p,
                             const range_2d& g) { check_nvfp4(m, w4a16, p, g); });
}

TEST_CASE("ModelOpt quantized_layers: parsed, and each malformed field refused") {
    auto config_with = [](const std::string& q) {
        return R"({"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1,
                   "num_attention_heads": 4, "vocab_size": 64, "quantization_config": )" +
               q + "}";
    };
    const model_config ok = parse_model_config(config_with(mixed_quantization));
    REQUIRE(ok.quantization);
    CHECK(ok.quantization->quant_algo == "MIXED_PRECISION");
    CHECK(ok.quantization->layer_algos == std::vector<std::string>{"FP8", "MXFP8", "NVFP4"});
    CHECK(ok.quantization->group_size == 16);  // from the NVFP4 layers
    CHECK(find_quantization_scheme(*ok.quantization) == &modelopt_mixed_scheme);
    CHECK(parse_model_config(config_with(R"({"quant_method": "modelopt", "quant_algo": "nvfp4"})"))
              .quantization->quant_algo == "NVFP4");
    struct bad {
        const char* q;
        const char* says;
    };
    for (const bad& b : {
             bad{R"({"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION"})",
                 "says quant_algo MIXED_PRECISION without a non-empty 'quantized_layers'"},
             bad{R"({"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION",
                     "quantized_layers": {}})",
                 "without a non-empty 'quantized_layers'"},
             bad{R"({"quant_method": "modelopt", "quantized_layers": []})",
                 "'quantization_config.quantized_layers' must be an object"},
             bad{R"({"quant_method": "modelopt", "quantized_layers": {"a": {"group_size": 16}}})",
                 "'quantization_config.quantized_layers.a' must be an object with a string "
                 "'quant_algo'"},
             bad{R"({"quant_method": "modelopt", "quantized_layers": {"a": "FP8"}})",
                 "'quantization_config.quantized_layers.a' must be an object"},
             bad{R"({"quant_method": "modelopt", "quantized_layers": {
                     "a": {"quant_algo": "NVFP4", "group_size": 0}}})",
                 "'quantization_config.quantized_layers.a.group_size' must be a positive"},
             bad{R"({"quant_method": "modelopt", "quantized_layers": {
                     "a": {"quant_algo": "NVFP4", "group_size": 16},
                     "b": {"quant_algo": "NVFP4", "group_size": 32}}})",
                 "has NVFP4 layers of group sizes 16 and 32"},
         }) {
        CAPTURE(b.q);
        expect_error(
            errc::invalid_config, [&] { (void)parse_model_config(config_with(b.q)); }, b.says);
    }
}

namespace {

const std::filesystem::path quantized_data =
    std::filesystem::path(SAFESHARD_TEST_DATA) / "quantized";

std::string file_text(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The quantization_config of a published hf_quant_config.json, beside a config.json without one.
quantization_config adopted(const std::filesystem::path& hf_quant_config) {
    config_file f = config_file::parse(R"({"model_type": "llama", "hidden_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 64})");
    f.adopt_hf_quant_config(file_text(hf_quant_config), hf_quant_config.string());
    REQUIRE(f.config().quantization);
    return *f.config().quantization;
}

const quantization_scheme* scheme_of(const quantization_config& q) {
    return find_quantization_scheme(q);
}

}  // namespace

TEST_CASE("ModelOpt and compressed-tensors configs as published: each scheme found or refused") {
    const auto dir = quantized_data / "modelopt";
    // New-style ModelOpt export: quant_method modelopt in config.json, config_groups beside.
    const model_config kimi = load_model_config(dir / "nvidia--Kimi-K2.5-NVFP4_config.json");
    REQUIRE(kimi.quantization);
    CHECK(scheme_of(*kimi.quantization) == &modelopt_nvfp4_scheme);
    // MIXED_PRECISION, FP8 and W4A16_NVFP4 layers, in config.json and in hf_quant_config.json.
    const model_config qwen = load_model_config(dir / "nvidia--Qwen3.6-35B-A3B-NVFP4_config.json");
    REQUIRE(qwen.quantization);
    CHECK(qwen.quantization->layer_algos == std::vector<std::string>{"FP8", "W4A16_NVFP4"});
    CHECK(qwen.quantization->group_size == 16);
    CHECK(scheme_of(*qwen.quantization) == &modelopt_mixed_scheme);
    const quantization_config qwen_side =
        adopted(dir / "nvidia--Qwen3.6-35B-A3B-NVFP4_hf_quant_config.json");
    CHECK(qwen_side.layer_algos == qwen.quantization->layer_algos);
    CHECK(scheme_of(qwen_side) == &modelopt_mixed_scheme);
    CHECK(scheme_of(adopted(dir / "nvidia--Qwen3-235B-A22B-NVFP4_hf_quant_config.json")) ==
          &modelopt_nvfp4_scheme);
    CHECK(scheme_of(adopted(quantized_data / "nvidia__DeepSeek-R1-0528-FP4" /
                            "hf_quant_config.json")) == &modelopt_nvfp4_scheme);
    // quant_method fp8 with NVFP4 layers: neither FP8 blocks alone nor ModelOpt's.
    const model_config v4 = load_model_config(dir / "nvidia--DeepSeek-V4-Flash-NVFP4_config.json");
    REQUIRE(v4.quantization);
    CHECK(v4.quantization->quant_method == "fp8");
    CHECK(v4.quantization->layer_algos == std::vector<std::string>{"NVFP4"});
    CHECK(scheme_of(*v4.quantization) == nullptr);
    CHECK(detail::scheme_details(*v4.quantization) ==
          " (quant_algo 'MIXED_PRECISION' of layers NVFP4)");
    // compressed-tensors int4, the quantization_config in text_config.
    const model_config k25 = load_model_config(dir / "moonshotai--Kimi-K2.5_config.json");
    REQUIRE(k25.quantization);
    CHECK(k25.quantization->bits == 4);
    CHECK(k25.quantization->group_size == 32);
    CHECK(scheme_of(*k25.quantization) == &compressed_tensors_wna16_scheme);
}

TEST_CASE("NVFP4 as published: DeepSeek-R1-0528-FP4, every rank's tensors at tp 8") {
    // config.json (no quantization_config) and hf_quant_config.json as published; the tensors
    // of the schema with the shapes config.json implies: the MLPs' and experts' linears NVFP4
    // (layer 0 as the published listing shows it), attention, routers, lm_head and the
    // multi-token prediction layer BF16 (excluded), the KV cache's scales per layer.
    const auto data = quantized_data / "nvidia__DeepSeek-R1-0528-FP4";
    const model_config c = load_model_config(data / "config.json");
    std::vector<tensor_info> tensors;
    for (const tensor_info& t : test::replica_tensors(c)) {
        const bool excluded =
            t.name.find(".self_attn.") != std::string::npos || t.name.starts_with("lm_head") ||
            t.name.starts_with("model.layers.61.") || t.name.ends_with("mlp.gate.weight");
        if (excluded || !t.name.ends_with("_proj.weight") || t.shape.rank() != 2) {
            tensors.push_back(t);
            if (t.name.ends_with("self_attn.kv_b_proj.weight") &&
                !t.name.starts_with("model.layers.61.")) {
                const std::string a = t.name.substr(0, t.name.size() - 16);
                tensors.push_back({a + "k_proj.k_scale", dtype::f32, shape{}});
                tensors.push_back({a + "v_proj.v_scale", dtype::f32, shape{}});
            }
            continue;
        }
        const std::string p = t.name.substr(0, t.name.size() - 6);
        const std::uint64_t n = t.shape[0], k = t.shape[1];
        tensors.push_back({p + "weight", dtype::u8, shape{n, k / 2}});
        tensors.push_back({p + "weight_scale", dtype::f8_e4m3, shape{n, k / 16}});
        tensors.push_back({p + "weight_scale_2", dtype::f32, shape{}});
        tensors.push_back({p + "input_scale", dtype::f32, shape{}});
    }
    // Layer 0 and the embedding as the published listing has them.
    std::map<std::string, std::string> listed;
    std::ifstream in(data / "tensors_layer0.txt");
    for (std::string line; std::getline(in, line);)
        if (!line.empty() && line.front() != '#')
            listed[line.substr(0, line.find(' '))] = line.substr(line.find(' ') + 1);
    std::map<std::string, std::string> ours;
    for (const tensor_info& t : tensors)
        if (t.name.starts_with("model.layers.0.") || t.name == "model.embed_tokens.weight") {
            std::string dims;
            for (const auto d : t.shape.dims())
                dims += (dims.empty() ? "" : ",") + std::to_string(d);
            ours[t.name] = std::string(name(t.dtype)) + " [" + dims + "]";
        }
    CHECK(ours == listed);

    temp_dir dir;
    test::write_sparse_replica(dir.path(), data / "config.json", tensors, 32);
    std::filesystem::copy_file(data / "hf_quant_config.json", dir.path() / "hf_quant_config.json");
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    auto local = [](const load_plan& p, const std::string& n) {
        const plan_destination* d = p.find(n);
        REQUIRE_MESSAGE(d, n);
        return d->local;
    };
    // Rank 3 of tp 8 / ep 8: whole experts (32 a rank), dense MLPs cut 8 ways in whole groups.
    const load_plan p = load_plan::build(ckpt, {.rank = 3, .world = 8, .experts = {.ep = 8}});
    CHECK(p.unexpected().empty());
    const std::string l0 = "model.layers.0.mlp.", l5 = "model.layers.5.mlp.";
    CHECK(local(p, l0 + "gate_proj.weight") == shape{2304, 3584});
    CHECK(local(p, l0 + "gate_proj.weight_scale") == shape{2304, 448});
    CHECK(local(p, l0 + "down_proj.weight") == shape{7168, 1152});
    CHECK(local(p, l0 + "down_proj.weight_scale") == shape{7168, 144});
    CHECK(local(p, l0 + "down_proj.weight_scale_2") == shape{});
    CHECK(local(p, l5 + "experts.96.gate_proj.weight") == shape{2048, 3584});
    CHECK(local(p, l5 + "experts.127.down_proj.weight_scale") == shape{7168, 128});
    CHECK(p.find(l5 + "experts.0.gate_proj.weight_scale") == nullptr);
    CHECK(local(p, l5 + "shared_experts.up_proj.weight") == shape{256, 3584});
    CHECK(local(p, "model.layers.0.self_attn.q_b_proj.weight") == shape{3072, 1536});
    CHECK(local(p, "model.layers.7.self_attn.k_proj.k_scale") == shape{});
    // ep 1: each expert cut 8 ways, 256 of its 2048 rows; down's K 256 values, 16 groups.
    const load_plan q = load_plan::build(ckpt, {.rank = 7, .world = 8});
    CHECK(local(q, l5 + "experts.0.gate_proj.weight") == shape{256, 3584});
    CHECK(local(q, l5 + "experts.255.down_proj.weight") == shape{7168, 128});
    CHECK(local(q, l5 + "experts.255.down_proj.weight_scale") == shape{7168, 16});
    // Fused for the engine: vLLM's w13/w2 with their scales, one scalar a projection.
    plan_options fused;
    fused.schema.fuse_experts = true;
    const load_plan f =
        load_plan::build(ckpt, {.rank = 3, .world = 8, .experts = {.ep = 8}}, fused);
    CHECK(local(f, l5 + "experts.w13_weight") == shape{32, 4096, 3584});
    CHECK(local(f, l5 + "experts.w13_weight_scale") == shape{32, 4096, 448});
    CHECK(local(f, l5 + "experts.w13_weight_scale_2") == shape{32, 2});
    CHECK(local(f, l5 + "experts.w13_input_scale") == shape{32, 2});
    CHECK(local(f, l5 + "experts.w2_weight") == shape{32, 7168, 1024});
    CHECK(local(f, l5 + "experts.w2_weight_scale") == shape{32, 7168, 128});
}
