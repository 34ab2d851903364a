// Quantized experts fused for the engine (schema_options::fuse_experts): each rank's
// `w13_<weight>` and `w2_<weight>` and every companion stacked the same way, vLLM's fused-MoE
// parameters (fused_moe/layer.py's weight_loader; fp8.py's w13_weight_scale_inv
// [E, 2·ceil(I/b), ceil(H/b)]; compressed_tensors_moe.py's w13_weight_packed, w13_weight_scale,
// w13_weight_shape; gptq_marlin.py's w13_qweight [E, K/p, 2N], w13_scales, w13_qzeros,
// w13_g_idx). A small Qwen3-MoE of each scheme, every rank of worlds 1, 2 and 4 under each ep
// its blocks allow, compared with the rank's unfused load (each expert's gate, up and down and
// their companions, whose cuts quantized_test.cpp and int_quantized_test.cpp check from the
// definitions): an expert's slab of w13 is its gate's piece then its up's, joined on N (on the
// stored dim 1 where the scheme stores [K, N]: GPTQ, AWQ; one entry each for per-tensor
// scales), of w2 its down's piece. The FP8 blocks are also checked from the definitions, and
// transformers v5's stacked FP8 experts (mlp.experts.gate_up_proj with gate_up_proj_scale_inv,
// finegrained_fp8.py's FP8Experts) give the same fused tensors. Export keeps them fused, merge
// gives back the checkpoint bit-exact.
#include <doctest/doctest.h>

#include <functional>
#include <map>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "../support/dequantize_reference.hpp"
#include "../support/expect_error.hpp"
#include "../support/quantized_llama.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"

using namespace safeshard;
using namespace safeshard::test;

namespace {

// One layer of Qwen3-MoE: 4 experts, hidden 64, each expert's intermediate 32.
constexpr std::uint64_t experts = 4, hidden = 64, inter = 32;
const std::string experts_at = "model.layers.0.mlp.experts.";

std::string moe_config(const std::string& quantization) {
    return R"({"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "vocab_size": 64, "tie_word_embeddings": false,
        "torch_dtype": "bfloat16", "num_experts": 4, "moe_intermediate_size": 32,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "quantization_config": )" +
           quantization + "}";
}

using linear_tensors = std::map<std::string, stored>;

// A scheme as its checkpoints store a linear [N, K]: config.json's quantization_config, the
// stored tensors by suffix (the weight under its stored name), the suffixes stored [K.., N..]
// (gate and up join on their dim 1), and the most tensor-parallel ways of an expert its blocks
// and packing allow for these sizes.
struct scheme_case {
    std::string name;
    std::string quantization;
    std::function<linear_tensors(std::uint64_t, std::uint64_t, std::mt19937_64&)> linear;
    std::set<std::string> transposed{};
    std::uint32_t max_ways = 4;
};

stored scalar_u8(std::uint8_t v) { return {dtype::u8, {}, {static_cast<std::byte>(v)}}; }

const std::vector<scheme_case>& schemes() {
    static const std::vector<scheme_case> v = {
        {"FP8 block",
         R"({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [8, 8]})",
         [](std::uint64_t n, std::uint64_t k, std::mt19937_64& rng) {
             return linear_tensors{
                 {"weight", random_stored(dtype::f8_e4m3, {n, k}, rng)},
                 {"weight_scale_inv", random_stored(dtype::f32, {n / 8, k / 8}, rng)}};
         }},
        {"FP8 per channel (compressed-tensors)",
         R"({"quant_method": "compressed-tensors", "format": "float-quantized",
             "config_groups": {}})",
         [](std::uint64_t n, std::uint64_t k, std::mt19937_64& rng) {
             return linear_tensors{{"weight", random_stored(dtype::f8_e4m3, {n, k}, rng)},
                                   {"weight_scale", random_stored(dtype::f32, {n, 1}, rng)},
                                   {"input_scale", random_stored(dtype::f32, {1}, rng)}};
         }},
        {"NVFP4 (ModelOpt)",
         R"({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16})",
         [](std::uint64_t n, std::uint64_t k, std::mt19937_64& rng) {
             return linear_tensors{
                 {"weight", random_stored(dtype::u8, {n, k / 2}, rng)},
                 {"weight_scale", random_stored(dtype::f8_e4m3, {n, k / 16}, rng)},
                 {"weight_scale_2", random_stored(dtype::f32, {}, rng)},
                 {"input_scale", random_stored(dtype::f32, {}, rng)}};
         },
         {},
         2},  // w2's K: 32 / 4 = 8 values, half a scale group
        {"int4 pack-quantized (compressed-tensors)",
         R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
             "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4,
             "group_size": 8, "strategy": "group", "symmetric": false, "type": "int",
             "actorder": null}}}, "ignore": ["lm_head"]})",
         [](std::uint64_t n, std::uint64_t k, std::mt19937_64& rng) {
             return linear_tensors{
                 {"weight_packed", random_stored(dtype::i32, {n, k / 8}, rng)},
                 {"weight_scale", random_stored(dtype::bf16, {n, k / 8}, rng)},
                 {"weight_zero_point", random_stored(dtype::i32, {n / 8, k / 8}, rng)},
                 {"weight_shape", random_stored(dtype::i64, {2}, rng)}};
         }},
        {"GPTQ",
         R"({"quant_method": "gptq", "bits": 4, "group_size": 8, "desc_act": false,
             "sym": true, "checkpoint_format": "gptq"})",
         [](std::uint64_t n, std::uint64_t k, std::mt19937_64& rng) {
             return linear_tensors{{"qweight", random_stored(dtype::i32, {k / 8, n}, rng)},
                                   {"scales", random_stored(dtype::f16, {k / 8, n}, rng)},
                                   {"qzeros", random_stored(dtype::i32, {k / 8, n / 8}, rng)},
                                   {"g_idx", random_stored(dtype::i32, {k}, rng)}};
         },
         {"qweight", "scales", "qzeros"}},
        {"AWQ",
         R"({"quant_method": "awq", "bits": 4, "group_size": 8, "zero_point": true,
             "version": "gemm"})",
         [](std::uint64_t n, std::uint64_t k, std::mt19937_64& rng) {
             return linear_tensors{{"qweight", random_stored(dtype::i32, {k, n / 8}, rng)},
                                   {"qzeros", random_stored(dtype::i32, {k / 8, n / 8}, rng)},
                                   {"scales", random_stored(dtype::f16, {k / 8, n}, rng)}};
         },
         {"qweight", "qzeros", "scales"}},
        {"bitsandbytes 8-bit", R"({"quant_method": "bitsandbytes", "load_in_8bit": true})",
         [](std::uint64_t n, std::uint64_t k, std::mt19937_64& rng) {
             return linear_tensors{{"weight", random_stored(dtype::i8, {n, k}, rng)},
                                   {"SCB", random_stored(dtype::f32, {n}, rng)},
                                   {"weight_format", scalar_u8(0)}};
         }},
    };
    return v;
}

// The model: BF16 attention, norms, router and embeddings; each expert's gate, up [I, H] and
// down [H, I] as the scheme stores them.
std::map<std::string, stored> quantized_moe(const scheme_case& s) {
    std::mt19937_64 rng(31);
    std::map<std::string, stored> t;
    const dtype b = dtype::bf16;
    t["model.embed_tokens.weight"] = random_stored(b, {64, hidden}, rng);
    t["lm_head.weight"] = random_stored(b, {64, hidden}, rng);
    t["model.norm.weight"] = random_stored(b, {hidden}, rng);
    const std::string p = "model.layers.0.";
    t[p + "input_layernorm.weight"] = random_stored(b, {hidden}, rng);
    t[p + "post_attention_layernorm.weight"] = random_stored(b, {hidden}, rng);
    t[p + "self_attn.q_proj.weight"] = random_stored(b, {64, hidden}, rng);
    t[p + "self_attn.k_proj.weight"] = random_stored(b, {32, hidden}, rng);
    t[p + "self_attn.v_proj.weight"] = random_stored(b, {32, hidden}, rng);
    t[p + "self_attn.o_proj.weight"] = random_stored(b, {hidden, 64}, rng);
    t[p + "self_attn.q_norm.weight"] = random_stored(b, {16}, rng);
    t[p + "self_attn.k_norm.weight"] = random_stored(b, {16}, rng);
    t[p + "mlp.gate.weight"] = random_stored(b, {experts, hidden}, rng);
    for (std::uint64_t e = 0; e < experts; ++e)
        for (const auto& [proj, n, k] :
             {std::tuple{"gate_proj", inter, hidden}, std::tuple{"up_proj", inter, hidden},
              std::tuple{"down_proj", hidden, inter}})
            for (auto& [suffix, x] : s.linear(n, k, rng))
                t[experts_at + std::to_string(e) + "." + proj + "." + suffix] = std::move(x);
    return t;
}

// Two stored tensors as one: b's rows after a's, or (`columns`) each row of a then b's.
std::vector<std::byte> joined(const host_tensor& a, const host_tensor& b, bool columns) {
    std::vector<std::byte> out = bytes_of(a);
    const std::vector<std::byte> tail = bytes_of(b);
    if (!columns) {
        out.insert(out.end(), tail.begin(), tail.end());
        return out;
    }
    REQUIRE(a.shape().rank() == 2);
    REQUIRE(b.shape().rank() == 2);
    REQUIRE(a.shape()[0] == b.shape()[0]);
    const std::size_t ra = out.size() / a.shape()[0], rb = tail.size() / b.shape()[0];
    std::vector<std::byte> rows;
    for (std::uint64_t r = 0; r < a.shape()[0]; ++r) {
        rows.insert(rows.end(), out.begin() + static_cast<std::ptrdiff_t>(r * ra),
                    out.begin() + static_cast<std::ptrdiff_t>((r + 1) * ra));
        rows.insert(rows.end(), tail.begin() + static_cast<std::ptrdiff_t>(r * rb),
                    tail.begin() + static_cast<std::ptrdiff_t>((r + 1) * rb));
    }
    return rows;
}

load_options fused_options(std::uint32_t r, std::uint32_t w, std::uint32_t ep) {
    load_options o{.rank = r, .world = w, .experts = {.ep = ep}};
    o.plan.schema.fuse_experts = true;
    return o;
}

// Rank r of world w under ep groups: its fused tensors are its unfused experts' tensors
// stacked, gate and up joined; nothing else changes.
void check_fused_rank(const std::filesystem::path& dir, const scheme_case& s,
                      const std::set<std::string>& suffixes, std::uint32_t r, std::uint32_t w,
                      std::uint32_t ep) {
    CAPTURE(w);
    CAPTURE(ep);
    CAPTURE(r);
    const auto fused = load<host_tensor>(dir.string(), fused_options(r, w, ep));
    const auto plain =
        load<host_tensor>(dir.string(), {.rank = r, .world = w, .experts = {.ep = ep}});
    const std::uint64_t per_group = experts / ep, first = r / (w / ep) * per_group;
    CHECK(fused.size() == plain.size() - 3 * per_group * suffixes.size() + 2 * suffixes.size());
    for (const std::string& x : suffixes) {
        CAPTURE(x);
        std::vector<std::byte> w13, w2;
        for (std::uint64_t e = first; e < first + per_group; ++e) {
            const std::string at = experts_at + std::to_string(e) + ".";
            const auto gate_up = joined(plain.at(at + "gate_proj." + x),
                                        plain.at(at + "up_proj." + x), s.transposed.contains(x));
            w13.insert(w13.end(), gate_up.begin(), gate_up.end());
            const auto down = bytes_of(plain.at(at + "down_proj." + x));
            w2.insert(w2.end(), down.begin(), down.end());
        }
        for (const auto& [name, bytes] : {std::pair{"w13_" + x, w13}, std::pair{"w2_" + x, w2}}) {
            CAPTURE(name);
            const host_tensor& t = fused.at(experts_at + name);
            CHECK(t.shape()[0] == per_group);
            CHECK(t.dtype() ==
                  plain.at(experts_at + std::to_string(first) + ".down_proj." + x).dtype());
            CHECK(bytes_of(t) == bytes);
        }
    }
    CHECK(bytes_of(fused.at("model.layers.0.self_attn.q_proj.weight")) ==
          bytes_of(plain.at("model.layers.0.self_attn.q_proj.weight")));
}

// The worlds and expert-parallel sizes the scheme allows: (w, ep) with ep | w, w / ep ways.
template <class F>
void for_each_world(const scheme_case& s, F&& f) {
    for (const std::uint32_t w : {1u, 2u, 4u})
        for (const std::uint32_t ep : {1u, 2u, 4u})
            if (w % ep == 0 && w / ep <= s.max_ways) f(w, ep);
}

}  // namespace

TEST_CASE("quantized MoE, fused: every scheme's weights and companions stacked per rank") {
    for (const scheme_case& s : schemes()) {
        CAPTURE(s.name);
        const auto src = quantized_moe(s);
        temp_dir dir;
        write(dir.path(), moe_config(s.quantization), src);
        std::set<std::string> suffixes;
        std::mt19937_64 rng(1);
        for (const auto& [x, t] : s.linear(inter, hidden, rng)) suffixes.insert(x);
        for_each_world(s, [&](std::uint32_t w, std::uint32_t ep) {
            for (std::uint32_t r = 0; r < w; ++r)
                check_fused_rank(dir.path(), s, suffixes, r, w, ep);
        });
        // Exported fused, each rank folder loads back as the rank's fused load; merged back to
        // the per-expert checkpoint, bit-exact.
        schema_options fuse;
        fuse.fuse_experts = true;
        check_round_trip(dir.path(), src, 4, fuse, {.ep = 2});
        if (s.max_ways >= 4) check_round_trip(dir.path(), src, 4, fuse, {.ep = 1});
    }
}

TEST_CASE("quantized MoE, fused: FP8 blocks from the definitions, and named as vLLM names them") {
    const scheme_case& s = schemes().front();
    const auto src = quantized_moe(s);
    temp_dir dir;
    write(dir.path(), moe_config(s.quantization), src);
    constexpr std::uint64_t b = 8;
    for_each_world(s, [&](std::uint32_t w, std::uint32_t ep) {
        for (std::uint32_t r = 0; r < w; ++r) {
            CAPTURE(w);
            CAPTURE(ep);
            CAPTURE(r);
            const std::uint64_t ways = w / ep, per_group = experts / ep;
            const std::uint64_t first = r / ways * per_group, i = inter / ways, pos = r % ways;
            const auto model = load<host_tensor>(dir.path().string(), fused_options(r, w, ep));
            const host_tensor& w13 = model.at(experts_at + "w13_weight_scale_inv");
            const host_tensor& w2 = model.at(experts_at + "w2_weight_scale_inv");
            CHECK(w13.shape() == shape{per_group, 2 * i / b, hidden / b});
            CHECK(w2.shape() == shape{per_group, hidden / b, i / b});
            CHECK(model.at(experts_at + "w13_weight").shape() == shape{per_group, 2 * i, hidden});
            std::vector<std::byte> want13, want2;
            for (std::uint64_t e = first; e < first + per_group; ++e) {
                const std::string at = experts_at + std::to_string(e) + ".";
                for (const char* proj : {"gate_proj.", "up_proj."}) {
                    const auto rows = take(src.at(at + proj + "weight_scale_inv"), pos * i / b,
                                           (pos + 1) * i / b, 0, hidden / b);
                    want13.insert(want13.end(), rows.begin(), rows.end());
                }
                const auto cols = take(src.at(at + "down_proj.weight_scale_inv"), 0, hidden / b,
                                       pos * i / b, (pos + 1) * i / b);
                want2.insert(want2.end(), cols.begin(), cols.end());
            }
            CHECK(bytes_of(w13) == want13);
            CHECK(bytes_of(w2) == want2);
        }
    });
    // The plan lists them as the weight's companions, stacked as it is.
    plan_options o;
    o.schema.fuse_experts = true;
    const checkpoint c = checkpoint::open(dir.path().string());
    const load_plan p = load_plan::build(c, {.rank = 1, .world = 2}, o);
    const plan_destination* scale = p.find(experts_at + "w13_weight_scale_inv");
    REQUIRE(scale);
    REQUIRE(scale->companion_of);
    CHECK(p.destinations()[*scale->companion_of].name == experts_at + "w13_weight");
    CHECK(layout_name(*scale) == "gathered_experts<grid<8,8>(fused<0>)>");
    CHECK(scale->global == shape{experts, 2 * inter / b, hidden / b});
    CHECK(scale->sources == std::vector<std::string>{experts_at + "{e}.gate_proj.weight_scale_inv",
                                                     experts_at + "{e}.up_proj.weight_scale_inv"});
    // Under ep 2 a rank reads its own experts' scales only.
    const load_plan q = load_plan::build(c, {.rank = 1, .world = 2, .experts = {.ep = 2}}, o);
    std::uint64_t scale_bytes = 0;
    for (const copy_op& op : q.ops())
        if (q.destinations()[op.destination].companion_of) scale_bytes += op.bytes_read();
    CHECK(scale_bytes == 2 * (2 * inter / b * hidden / b + hidden / b * inter / b) * 4);
}

TEST_CASE("quantized MoE, fused: packed weights named and stacked as stored") {
    // GPTQ: w13_qweight [E, K/8, 2·N/t] (gate's columns then up's), its scales alike.
    const scheme_case& gptq = schemes()[4];
    REQUIRE(gptq.name == "GPTQ");
    temp_dir dir;
    write(dir.path(), moe_config(gptq.quantization), quantized_moe(gptq));
    const auto model = load<host_tensor>(dir.path().string(), fused_options(1, 2, 1));
    CHECK(model.at(experts_at + "w13_qweight").shape() == shape{experts, hidden / 8, inter});
    CHECK(model.at(experts_at + "w13_scales").shape() == shape{experts, hidden / 8, inter});
    CHECK(model.at(experts_at + "w13_qzeros").shape() == shape{experts, hidden / 8, inter / 8});
    CHECK(model.at(experts_at + "w13_g_idx").shape() == shape{experts, 2, hidden});
    CHECK(model.at(experts_at + "w2_qweight").shape() == shape{experts, inter / 2 / 8, hidden});
    CHECK(model.at(experts_at + "w2_g_idx").shape() == shape{experts, inter / 2});
    // compressed-tensors: w13_weight_packed [E, 2·N/t, K/8], w13_weight_shape one per source.
    const scheme_case& ct = schemes()[3];
    temp_dir dir2;
    write(dir2.path(), moe_config(ct.quantization), quantized_moe(ct));
    const auto m2 = load<host_tensor>(dir2.path().string(), fused_options(0, 4, 2));
    CHECK(m2.at(experts_at + "w13_weight_packed").shape() == shape{2, inter, hidden / 8});
    CHECK(m2.at(experts_at + "w13_weight_shape").shape() == shape{2, 2, 2});
    CHECK(m2.at(experts_at + "w2_weight_packed").shape() == shape{2, hidden, inter / 2 / 8});
    const checkpoint c = checkpoint::open(dir2.path().string());
    plan_options o;
    o.schema.fuse_experts = true;
    const load_plan p = load_plan::build(c, {.rank = 0, .world = 4, .experts = {.ep = 2}}, o);
    CHECK(layout_name(*p.find(experts_at + "w13_weight_packed")) ==
          "gathered_experts<packed<8>(fused<0>)>");
}

TEST_CASE("quantized MoE, fused: transformers v5's stacked FP8 experts give the same tensors") {
    // finegrained_fp8.py's FP8Experts: gate_up_proj F8 [E, 2I, H] (each expert's gate rows,
    // then its up rows) with gate_up_proj_scale_inv [E, 2I/b, H/b]; down_proj [E, H, I] with
    // down_proj_scale_inv [E, H/b, I/b].
    const scheme_case& s = schemes().front();
    auto src = quantized_moe(s);
    auto stacked = src;
    auto stack = [&](const std::string& to, std::vector<std::string> parts) {
        const stored& first = src.at(experts_at + "0." + parts.front());
        stored out{first.type, {experts, 0, first.cols()}, {}};
        for (std::uint64_t e = 0; e < experts; ++e)
            for (const auto& part : parts) {
                const std::string n = experts_at + std::to_string(e) + "." + part;
                const stored& x = src.at(n);
                if (e == 0) out.dims[1] += x.rows();
                out.bytes.insert(out.bytes.end(), x.bytes.begin(), x.bytes.end());
                stacked.erase(n);
            }
        stacked[experts_at + to] = std::move(out);
    };
    stack("gate_up_proj", {"gate_proj.weight", "up_proj.weight"});
    stack("gate_up_proj_scale_inv", {"gate_proj.weight_scale_inv", "up_proj.weight_scale_inv"});
    stack("down_proj", {"down_proj.weight"});
    stack("down_proj_scale_inv", {"down_proj.weight_scale_inv"});
    temp_dir per_expert, v5;
    write(per_expert.path(), moe_config(s.quantization), src);
    write(v5.path(), moe_config(s.quantization), stacked);
    for_each_world(s, [&](std::uint32_t w, std::uint32_t ep) {
        for (std::uint32_t r = 0; r < w; ++r) {
            CAPTURE(w);
            CAPTURE(ep);
            CAPTURE(r);
            const auto want =
                load<host_tensor>(per_expert.path().string(), fused_options(r, w, ep));
            const auto got = load<host_tensor>(v5.path().string(), fused_options(r, w, ep));
            CHECK(got.size() == want.size());
            for (const std::string& n : want.names()) {
                CAPTURE(n);
                REQUIRE(got.contains(n));
                CHECK(got.at(n).shape() == want.at(n).shape());
                CHECK(bytes_of(got.at(n)) == bytes_of(want.at(n)));
            }
            // Unfused, the stacked tensors keep their names, their scales cut with them.
            const auto as_stored = load<host_tensor>(
                v5.path().string(), {.rank = r, .world = w, .experts = {.ep = ep}});
            CHECK(bytes_of(as_stored.at(experts_at + "gate_up_proj_scale_inv")) ==
                  bytes_of(want.at(experts_at + "w13_weight_scale_inv")));
            CHECK(bytes_of(as_stored.at(experts_at + "down_proj_scale_inv")) ==
                  bytes_of(want.at(experts_at + "w2_weight_scale_inv")));
        }
    });
    schema_options fuse;
    fuse.fuse_experts = true;
    check_round_trip(v5.path(), stacked, 4, fuse, {.ep = 2});
    check_round_trip(v5.path(), stacked, 4, {}, {.ep = 1});
}

TEST_CASE("quantized MoE, fused: companions that do not stack are refused, naming them") {
    const scheme_case& s = schemes().front();
    plan_options o;
    o.schema.fuse_experts = true;
    {  // Expert 2's up scale has another grid than expert 0's.
        auto src = quantized_moe(s);
        src[experts_at + "2.up_proj.weight_scale_inv"].dims = {inter / 8 / 2, hidden / 4};
        temp_dir dir;
        write(dir.path(), moe_config(s.quantization), src);
        const checkpoint c = checkpoint::open(dir.path().string());
        const model_config cfg = c.load_config()->config();
        schema_options so = o.schema;
        so.experts_stored = schema_options::expert_storage::per_expert;
        const schema sch = make_schema(cfg, so);
        expect_error(
            errc::shape_mismatch,
            [&] {
                (void)load_plan::build(c, sch, {0, 1}, o, &cfg);
            },
            "'model.layers.0.mlp.experts.2.up_proj.weight_scale_inv' is [2, 16], "
            "'model.layers.0.mlp.experts.0.up_proj.weight_scale_inv' [4, 8]");
        // A rank of the other expert group does not read expert 2, and plans.
        const load_plan p = load_plan::build(c, sch, {0, 2, {.ep = 2}}, o, &cfg);
        CHECK(p.find(experts_at + "w13_weight_scale_inv") != nullptr);
    }
    {  // Expert 3's up projection has no scale where the others have one.
        auto src = quantized_moe(s);
        src.erase(experts_at + "3.up_proj.weight_scale_inv");
        temp_dir dir;
        write(dir.path(), moe_config(s.quantization), src);
        expect_error(
            errc::missing_tensor,
            [&] {
                (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 1}, o);
            },
            "carry a weight_scale_inv and others not: "
            "model.layers.0.mlp.experts.3.up_proj.weight_scale_inv missing");
    }
    {  // A stacked scale that does not hold the layer's experts on dim 0.
        auto src = quantized_moe(s);
        std::map<std::string, stored> v5;
        for (auto& [n, t] : src)
            if (!n.starts_with(experts_at)) v5[n] = t;
        std::mt19937_64 rng(3);
        v5[experts_at + "gate_up_proj"] =
            random_stored(dtype::f8_e4m3, {experts, 2 * inter, hidden}, rng);
        v5[experts_at + "gate_up_proj_scale_inv"] =
            random_stored(dtype::f32, {experts - 1, 2 * inter / 8, hidden / 8}, rng);
        v5[experts_at + "down_proj"] = random_stored(dtype::f8_e4m3, {experts, hidden, inter}, rng);
        v5[experts_at + "down_proj_scale_inv"] =
            random_stored(dtype::f32, {experts, hidden / 8, inter / 8}, rng);
        temp_dir dir;
        write(dir.path(), moe_config(s.quantization), v5);
        expect_error(
            errc::shape_mismatch,
            [&] {
                (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 1});
            },
            "stacks the layer's 4 experts on dim 0, but its source "
            "'model.layers.0.mlp.experts.gate_up_proj_scale_inv' is [3, 8, 8]");
    }
}

TEST_CASE("dequantized MoE, fused: FP8 blocks, FP8 per channel and NVFP4 stacked per rank") {
    for (const scheme_case& s : std::span(schemes()).first(3)) {
        CAPTURE(s.name);
        const bool fp4 = s.name.starts_with("NVFP4");
        const bool per_channel = s.name.starts_with("FP8 per channel");
        const std::string scale = s.name == "FP8 block" ? "weight_scale_inv" : "weight_scale";
        const auto src = quantized_moe(s);
        temp_dir dir;
        write(dir.path(), moe_config(s.quantization), src);
        for_each_world(s, [&](std::uint32_t w, std::uint32_t ep) {
            for (std::uint32_t r = 0; r < w; ++r) {
                CAPTURE(w);
                CAPTURE(ep);
                CAPTURE(r);
                const auto stored = load<host_tensor>(dir.path().string(), fused_options(r, w, ep));
                load_options o = fused_options(r, w, ep);
                o.plan.dtype = dtype_policy::fixed(dtype::f32);
                const auto m = load<host_tensor>(dir.path().string(), o);
                for (const char* n : {"w13_", "w2_"}) {
                    CAPTURE(n);
                    const host_tensor& v = stored.at(experts_at + n + "weight");
                    const host_tensor& sc = stored.at(experts_at + n + scale);
                    const std::uint64_t held = v.shape()[0], rows = v.shape()[1];
                    ref_quantized q{.values = &v,
                                    .fp4 = fp4,
                                    .experts = held,
                                    .rows = rows,
                                    .cols = v.shape()[2] * (fp4 ? 2 : 1),
                                    .scales = &sc,
                                    .block_rows = fp4 || per_channel ? 1u : 8u,
                                    .block_cols = fp4           ? 16u
                                                  : per_channel ? 0u
                                                                : 8u};
                    if (fp4) {
                        q.global = &stored.at(experts_at + n + "weight_scale_2");
                        const std::uint64_t parts = *q.global->shape().element_count() / held;
                        q.global_entry = [=](std::uint64_t e, std::uint64_t row) {
                            return e * parts + (parts == 2 && row >= rows / 2 ? 1 : 0);
                        };
                    }
                    const host_tensor& x = m.at(experts_at + n + "weight");
                    CHECK(x.dtype() == dtype::f32);
                    CHECK(x.shape() == shape{held, rows, q.cols});
                    CHECK(bytes_of(x) == ref_dequantize(q, dtype::f32));
                    CHECK_FALSE(m.contains(experts_at + n + scale));
                }
            }
        });
    }
}
