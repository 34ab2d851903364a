// gpt-oss's MXFP4 experts (quant_method mxfp4): `*_blocks` U8 [E, N, K/32, 16] and `*_scales`
// U8 [E, N, K/32], cut by vLLM's rule (gpt_oss.py _load_weights_mxfp4, tests/data/moe/README.md
// "gpt_oss"): each rank of an expert group takes cdiv(I/32, ways) whole blocks of the
// intermediate dim, the last ranks fewer, zero-padded to the same size; gate_up's rows (gate
// and up interleaved: 64 rows a block), its bias and down's K blocks take the same range. The
// bytes each rank gets are computed here from that rule, not with the library's algebra.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/quantized_llama.hpp"
#include "../support/sparse_replica.hpp"
#include "../support/temp_dir.hpp"
#include "safeshard/format/config.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"

using namespace safeshard;
using namespace safeshard::test;

namespace {

// A one-layer gpt-oss: I = 160 is 5 blocks, which no world above 1 but 5 divides; 840 heads
// (and a vocabulary padded to 840) so that attention and embeddings cut for every world 1-8.
constexpr std::uint64_t gH = 64, gI = 160, gE = 6, g_heads = 840, gV = 840;
constexpr std::uint64_t blocks_of_I = gI / 32;

std::string gpt_oss_config(bool mxfp4 = true) {
    return R"({"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 1,
        "num_attention_heads": 840, "num_key_value_heads": 840, "head_dim": 1,
        "num_local_experts": 6, "num_experts_per_tok": 2, "experts_per_token": 2,
        "vocab_size": 840, "tie_word_embeddings": false, "attention_bias": true,
        "sliding_window": 128, "layer_types": ["sliding_attention"], "torch_dtype": "bfloat16")" +
           std::string(mxfp4 ? R"(, "quantization_config": {"quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
        "model.embed_tokens", "lm_head"]})"
                             : "") +
           "}";
}

const std::string ex = "model.layers.0.mlp.experts.";

std::map<std::string, stored> gpt_oss_mxfp4() {
    std::mt19937_64 rng(29);
    std::map<std::string, stored> t;
    auto bf16 = [&](std::vector<std::uint64_t> dims) {
        return random_stored(dtype::bf16, std::move(dims), rng);
    };
    auto u8 = [&](std::vector<std::uint64_t> dims) {
        stored s = random_stored(dtype::u8, std::move(dims), rng);
        for (auto& b : s.bytes) b = static_cast<std::byte>(rng());  // every code, 0 included
        return s;
    };
    t["model.embed_tokens.weight"] = bf16({gV, gH});
    t["lm_head.weight"] = bf16({gV, gH});
    t["model.norm.weight"] = bf16({gH});
    const std::string p = "model.layers.0.";
    t[p + "input_layernorm.weight"] = bf16({gH});
    t[p + "post_attention_layernorm.weight"] = bf16({gH});
    for (const char* n : {"q_proj", "k_proj", "v_proj"}) {
        t[p + "self_attn." + n + ".weight"] = bf16({g_heads, gH});
        t[p + "self_attn." + n + ".bias"] = bf16({g_heads});
    }
    t[p + "self_attn.o_proj.weight"] = bf16({gH, g_heads});
    t[p + "self_attn.o_proj.bias"] = bf16({gH});
    t[p + "self_attn.sinks"] = bf16({g_heads});
    t[p + "mlp.router.weight"] = bf16({gE, gH});
    t[p + "mlp.router.bias"] = bf16({gE});
    t[ex + "gate_up_proj_blocks"] = u8({gE, 2 * gI, gH / 32, 16});
    t[ex + "gate_up_proj_scales"] = u8({gE, 2 * gI, gH / 32});
    t[ex + "gate_up_proj_bias"] = bf16({gE, 2 * gI});
    t[ex + "down_proj_blocks"] = u8({gE, gH, blocks_of_I, 16});
    t[ex + "down_proj_scales"] = u8({gE, gH, blocks_of_I});
    t[ex + "down_proj_bias"] = bf16({gE, gH});
    return t;
}

// The experts group g of ep holds: linear placement (the first E % ep groups one more).
std::vector<std::uint64_t> held_experts(std::uint32_t g, std::uint32_t ep) {
    const std::uint64_t base = gE / ep, rem = gE % ep;
    const std::uint64_t first = g * base + std::min<std::uint64_t>(g, rem);
    std::vector<std::uint64_t> v;
    for (std::uint64_t e = first; e < first + base + (g < rem ? 1 : 0); ++e) v.push_back(e);
    return v;
}

// The bytes of the held experts' slabs of `t`, each slab's dim `dim` (of the slab) cut to the
// range [lo, hi) and zero-padded to `local` entries.
std::vector<std::byte> expected_cut(const stored& t, const std::vector<std::uint64_t>& held,
                                    std::size_t dim, std::uint64_t lo, std::uint64_t hi,
                                    std::uint64_t local) {
    const std::vector<std::uint64_t> slab(t.dims.begin() + 1, t.dims.end());
    std::uint64_t outer = 1, inner = t.elem(), slab_bytes = t.elem();
    for (std::size_t j = 0; j < slab.size(); ++j) {
        slab_bytes *= slab[j];
        if (j < dim) outer *= slab[j];
        if (j > dim) inner *= slab[j];
    }
    std::vector<std::byte> out;
    for (const std::uint64_t e : held)
        for (std::uint64_t o = 0; o < outer; ++o)
            for (std::uint64_t i = 0; i < local; ++i) {
                if (lo + i >= hi) {
                    out.insert(out.end(), inner, std::byte{0});
                    continue;
                }
                const auto at =
                    static_cast<std::ptrdiff_t>(e * slab_bytes + (o * slab[dim] + lo + i) * inner);
                out.insert(out.end(), t.bytes.begin() + at,
                           t.bytes.begin() + at + static_cast<std::ptrdiff_t>(inner));
            }
    return out;
}

plan_options vocab_840() {
    plan_options o;
    o.schema.vocab_multiple = gV;
    return o;
}

}  // namespace

TEST_CASE("MXFP4 (gpt-oss): whole blocks of the intermediate dim a rank, zero-padded, every rank") {
    const auto src = gpt_oss_mxfp4();
    temp_dir dir;
    write(dir.path(), gpt_oss_config(), src);
    for (std::uint32_t w = 1; w <= 8; ++w)
        for (const std::uint32_t ep : {1u, 2u, w}) {
            if (w % ep != 0 || ep > gE) continue;
            const std::uint32_t ways = w / ep;
            const std::uint64_t per = (blocks_of_I + ways - 1) / ways;  // cdiv(I/32, ways)
            for (std::uint32_t r = 0; r < w; ++r) {
                CAPTURE(w);
                CAPTURE(ep);
                CAPTURE(r);
                const std::uint32_t pos = r % ways;
                const auto held = held_experts(r / ways, ep);
                const std::uint64_t start = std::min(pos * per, blocks_of_I);
                const std::uint64_t end = std::min(start + per, blocks_of_I);
                load_options lo{.rank = r, .world = w, .experts = {.ep = ep}};
                lo.plan = vocab_840();
                const auto m = load<host_tensor>(dir.path().string(), lo);
                const auto n_held = static_cast<std::uint64_t>(held.size());
                // gate_up: rows 64·start .. 64·end (gate/up pairs of whole blocks), padded.
                for (const char* n :
                     {"gate_up_proj_blocks", "gate_up_proj_scales", "gate_up_proj_bias"}) {
                    CAPTURE(n);
                    const stored& t = src.at(ex + n);
                    const host_tensor& got = m.at(ex + n);
                    std::vector<std::uint64_t> dims = t.dims;
                    dims[0] = n_held;
                    dims[1] = 64 * per;
                    CHECK(got.shape() == shape::from(std::span(dims)));
                    CHECK(got.dtype() == t.type);
                    CHECK(bytes_of(got) ==
                          expected_cut(t, held, 0, 64 * start, 64 * end, 64 * per));
                }
                // down: K blocks start .. end of every row, padded.
                for (const char* n : {"down_proj_blocks", "down_proj_scales"}) {
                    CAPTURE(n);
                    const stored& t = src.at(ex + n);
                    const host_tensor& got = m.at(ex + n);
                    std::vector<std::uint64_t> dims = t.dims;
                    dims[0] = n_held;
                    dims[2] = per;
                    CHECK(got.shape() == shape::from(std::span(dims)));
                    CHECK(bytes_of(got) == expected_cut(t, held, 1, start, end, per));
                }
                // down's bias (row-parallel) whole for each held expert.
                const stored& b = src.at(ex + "down_proj_bias");
                CHECK(bytes_of(m.at(ex + "down_proj_bias")) == expected_cut(b, held, 0, 0, gH, gH));
            }
        }
}

TEST_CASE("MXFP4 (gpt-oss): plan names the rule; export and merge keep it, bit for bit") {
    const auto src = gpt_oss_mxfp4();
    temp_dir dir;
    write(dir.path(), gpt_oss_config(), src);
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const load_plan p = load_plan::build(ckpt, {.rank = 3, .world = 4}, vocab_840());
    CHECK(p.unexpected().empty());
    const plan_destination* d = p.find(ex + "gate_up_proj_blocks");
    REQUIRE(d);
    CHECK(layout_name(*d) == "stacked_experts<ceil_split<0,64>>");
    CHECK(d->global == shape{gE, 2 * gI, gH / 32, 16});
    CHECK(d->local == shape{gE, 128, gH / 32, 16});  // 2 blocks of 5 a rank; rank 3 none
    CHECK(layout_name(*p.find(ex + "down_proj_scales")) == "stacked_experts<ceil_split<1,1>>");
    CHECK(layout_name(*p.find(ex + "down_proj_bias")) == "stacked_experts<replicated>");
    schema_options s;
    s.vocab_multiple = gV;
    for (const std::uint32_t w : {1u, 3u, 4u}) check_round_trip(dir.path(), src, w, s);
    check_round_trip(dir.path(), src, 4, s, {.ep = 2});
}

TEST_CASE("MXFP4 (gpt-oss): a checkpoint off the rule is refused, naming what is wrong") {
    temp_dir dir;
    // The intermediate size is no whole count of blocks: no cut of whole blocks exists.
    auto src = gpt_oss_mxfp4();
    std::mt19937_64 rng(3);
    const std::uint64_t odd = gI + 16;
    src[ex + "gate_up_proj_blocks"] = random_stored(dtype::u8, {gE, 2 * odd, gH / 32, 16}, rng);
    src[ex + "gate_up_proj_scales"] = random_stored(dtype::u8, {gE, 2 * odd, gH / 32}, rng);
    src[ex + "gate_up_proj_bias"] = random_stored(dtype::bf16, {gE, 2 * odd}, rng);
    src[ex + "down_proj_blocks"] = random_stored(dtype::u8, {gE, gH, 6, 16}, rng);  // ceil
    src[ex + "down_proj_scales"] = random_stored(dtype::u8, {gE, gH, 6}, rng);
    std::string config = gpt_oss_config();
    config.replace(config.find("\"intermediate_size\": 160"), 24, "\"intermediate_size\": 176");
    write(dir.path(), config, src);
    auto plan_error = [&] {
        const error e = expect_error([&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 2}, vocab_840());
        });
        return std::string(e.what());
    };
    const std::string units = plan_error();
    CHECK_MESSAGE(units.find("gate_up_proj_blocks") != std::string::npos, units);
    CHECK_MESSAGE(units.find("extent 352) is not whole units of 64") != std::string::npos, units);
    // Blocks of another shape than config.json implies.
    auto wrong = gpt_oss_mxfp4();
    wrong[ex + "down_proj_scales"] = random_stored(dtype::u8, {gE, gH, blocks_of_I + 1}, rng);
    write(dir.path(), gpt_oss_config(), wrong);
    const std::string off = plan_error();
    CHECK_MESSAGE(off.find("down_proj_scales") != std::string::npos, off);
    CHECK_MESSAGE(off.find("moe_intermediate_size / 32") != std::string::npos, off);
    // fuse_experts: the blocks are the engine's stacked experts already.
    write(dir.path(), gpt_oss_config(), gpt_oss_mxfp4());
    plan_options fuse = vocab_840();
    fuse.schema.fuse_experts = true;
    expect_error(
        errc::invalid_argument,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 2}, fuse);
        },
        "stacked in the engine's order already");
    // Without quant_method mxfp4 the blocks are no tensors of the model, and their scales say
    // it is quantized.
    write(dir.path(), gpt_oss_config(false), gpt_oss_mxfp4());
    const std::string unknown = plan_error();
    CHECK_MESSAGE(unknown.find("quantized") != std::string::npos, unknown);
    CHECK_MESSAGE(unknown.find("gate_up_proj_scales") != std::string::npos, unknown);
}

TEST_CASE("MXFP4 as published (gpt-oss-20b): vLLM's 736/672 and 384/192 intermediate ranges") {
    const auto data = std::filesystem::path(SAFESHARD_TEST_DATA) / "moe" / "openai__gpt-oss-20b";
    const model_config c = load_model_config(data / "config.json");
    std::vector<tensor_info> tensors = replica_tensors(c);
    for (auto& t : tensors)
        if (t.name.ends_with("_blocks") || t.name.ends_with("_scales")) t.dtype = dtype::u8;
    CHECK(tensors.size() == 24 * 19 + 3);
    temp_dir dir;
    write_sparse_replica(dir.path(), data / "config.json", tensors, 3);
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const std::string e = "model.layers.6.mlp.experts.";
    auto local = [](const load_plan& p, const std::string& n) {
        const plan_destination* d = p.find(n);
        REQUIRE_MESSAGE(d, n);
        return d->local;
    };
    // tp 4: cdiv(90, 4) = 23 blocks = 736 of I on every rank (rank 3 holds 672 and zeros).
    for (const std::uint32_t r : {0u, 3u}) {
        const load_plan p = load_plan::build(ckpt, {.rank = r, .world = 4});
        CHECK(p.unexpected().empty());
        CHECK(local(p, e + "gate_up_proj_blocks") == shape{32, 2 * 736, 90, 16});
        CHECK(local(p, e + "gate_up_proj_scales") == shape{32, 2 * 736, 90});
        CHECK(local(p, e + "gate_up_proj_bias") == shape{32, 2 * 736});
        CHECK(local(p, e + "down_proj_blocks") == shape{32, 2880, 23, 16});
        CHECK(local(p, e + "down_proj_scales") == shape{32, 2880, 23});
        CHECK(local(p, e + "down_proj_bias") == shape{32, 2880});
        CHECK(local(p, "model.layers.6.self_attn.sinks") == shape{16});
    }
    // tp 8: 12 blocks = 384 (rank 7: 192 real); with ep 8, whole experts, 4 a rank.
    const load_plan p8 = load_plan::build(ckpt, {.rank = 7, .world = 8});
    CHECK(local(p8, e + "gate_up_proj_blocks") == shape{32, 2 * 384, 90, 16});
    CHECK(local(p8, e + "down_proj_scales") == shape{32, 2880, 12});
    const load_plan ep8 = load_plan::build(ckpt, {.rank = 7, .world = 8, .experts = {.ep = 8}});
    CHECK(local(ep8, e + "gate_up_proj_blocks") == shape{4, 5760, 90, 16});
    CHECK(local(ep8, e + "down_proj_blocks") == shape{4, 2880, 90, 16});
    CHECK(local(ep8, "model.layers.6.self_attn.q_proj.weight") == shape{512, 2880});
}
