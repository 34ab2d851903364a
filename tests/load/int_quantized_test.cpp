// Integer-quantized checkpoints stored transposed: GPTQ and AWQ. Small random llamas with the
// published names and dtypes, every rank of the worlds the packing and the groups allow, each
// rank's bytes compared with row and column ranges computed here from the definitions (vLLM's
// gptq.py and awq.py create_weights: qweight's input_dim 0 and output_dim 1, the packed dim,
// scales and zeros by group along K; act order keeps every group on every rank), not with the
// library's companion algebra; the refusals of the rest, naming the parameter.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/quantized_llama.hpp"
#include "../support/sparse_replica.hpp"
#include "safeshard/format/config.hpp"
#include "safeshard/load/plan.hpp"

using namespace safeshard;
using namespace safeshard::test;

namespace {

std::string gptq_config(std::uint64_t group, bool desc_act, std::uint64_t bits = 4) {
    return llama_config(R"({"quant_method": "gptq", "bits": )" + std::to_string(bits) +
                        R"(, "group_size": )" + std::to_string(group) + R"(, "desc_act": )" +
                        (desc_act ? "true" : "false") +
                        R"(, "sym": true, "checkpoint_format": "gptq"})");
}

// GPTQ's tensors of a linear [N, K]: qweight I32 [K/p, N] (p = 32 / bits values a word along
// K), scales F16 [K/g, N], qzeros I32 [K/g, N/p] (packed along N), g_idx I32 [K].
std::map<std::string, stored> gptq_llama(std::uint64_t g, std::uint64_t bits = 4) {
    const std::uint64_t p = 32 / bits;
    auto t = fp8_llama([](const std::vector<std::uint64_t>&, std::mt19937_64&) {
        return std::map<std::string, stored>{};
    });
    std::mt19937_64 rng(23);
    for (const auto& [n, dims] : linears()) {
        const std::string at = "model.layers.0." + n + ".";
        const std::uint64_t N = dims[0], K = dims[1];
        t.erase(at + "weight");
        t[at + "qweight"] = random_stored(dtype::i32, {K / p, N}, rng);
        t[at + "scales"] = random_stored(dtype::f16, {K / g, N}, rng);
        t[at + "qzeros"] = random_stored(dtype::i32, {K / g, N / p}, rng);
        t[at + "g_idx"] = random_stored(dtype::i32, {K}, rng);
    }
    return t;
}

std::string awq_config(std::uint64_t group, const std::string& version = "gemm") {
    return llama_config(R"({"quant_method": "awq", "bits": 4, "group_size": )" +
                        std::to_string(group) + R"(, "zero_point": true, "version": ")" + version +
                        "\"}");
}

// AWQ's (GEMM) tensors of a linear [N, K]: qweight I32 [K, N/8] (eight values a word along N),
// qzeros I32 [K/g, N/8], scales F16 [K/g, N].
std::map<std::string, stored> awq_llama(std::uint64_t g) {
    auto t = fp8_llama([](const std::vector<std::uint64_t>&, std::mt19937_64&) {
        return std::map<std::string, stored>{};
    });
    std::mt19937_64 rng(29);
    for (const auto& [n, dims] : linears()) {
        const std::string p = "model.layers.0." + n + ".";
        const std::uint64_t N = dims[0], K = dims[1];
        t.erase(p + "weight");
        t[p + "qweight"] = random_stored(dtype::i32, {K, N / 8}, rng);
        t[p + "scales"] = random_stored(dtype::f16, {K / g, N}, rng);
        t[p + "qzeros"] = random_stored(dtype::i32, {K / g, N / 8}, rng);
    }
    return t;
}

// The layout plan --json gives destination `name` of rank 0 of `world`.
std::string layout_of(const std::filesystem::path& dir, std::uint32_t world,
                      const std::string& name) {
    const load_plan p = load_plan::build(checkpoint::open(dir.string()), {0, world});
    for (const auto& d : p.destinations())
        if (d.name == name) return layout_name(d);
    FAIL("no destination " << name);
    return {};
}

}  // namespace

TEST_CASE("GPTQ: transposed words, group scales and zeros, g_idx cut with K, every rank") {
    constexpr std::uint64_t g = 8;
    const auto src = gptq_llama(g);
    for (const bool act_order : {false, true}) {
        CAPTURE(act_order);
        temp_dir dir;
        write(dir.path(), gptq_config(g, act_order), src);
        for_each_rank_linear(
            dir.path(), {1, 2, 4},
            [&](const auto& model, const std::vector<std::uint64_t>& dims, const std::string& p,
                const range_2d& q) {
                // rows N, columns K, in values
                const std::uint64_t groups = dims[1] / g;
                // Act order: every group on every rank; otherwise the rank's K range's.
                const std::uint64_t g0 = act_order ? 0 : q.c0 / g;
                const std::uint64_t g1 = act_order ? groups : q.c1 / g;
                CHECK(model.at(p + "qweight").shape() == shape{(q.c1 - q.c0) / 8, q.r1 - q.r0});
                CHECK(bytes_of(model.at(p + "qweight")) ==
                      take(src.at(p + "qweight"), q.c0 / 8, q.c1 / 8, q.r0, q.r1));
                CHECK(model.at(p + "scales").shape() == shape{g1 - g0, q.r1 - q.r0});
                CHECK(bytes_of(model.at(p + "scales")) ==
                      take(src.at(p + "scales"), g0, g1, q.r0, q.r1));
                CHECK(model.at(p + "qzeros").shape() == shape{g1 - g0, (q.r1 - q.r0) / 8});
                CHECK(bytes_of(model.at(p + "qzeros")) ==
                      take(src.at(p + "qzeros"), g0, g1, q.r0 / 8, q.r1 / 8));
                CHECK(model.at(p + "g_idx").shape() == shape{q.c1 - q.c0});
                CHECK(bytes_of(model.at(p + "g_idx")) ==
                      take(src.at(p + "g_idx"), q.c0, q.c1, 0, 1));
            });
        const std::string o = "model.layers.0.mlp.down_proj.";
        CHECK(layout_of(dir.path(), 2, o + "qweight") == "packed<grid<1,8>^T>(split<1>)");
        CHECK(layout_of(dir.path(), 2, o + "scales") ==
              (act_order ? "grid<1,all/8>^T(split<1>)" : "grid<1,8>^T(split<1>)"));
        CHECK(layout_of(dir.path(), 2, o + "g_idx") == "grid<*,1>(split<1>)");
        // Export and merge keep them packed, bit for bit, fused or not.
        for (std::uint32_t w : {1u, 2u, 4u}) check_round_trip(dir.path(), src, w);
        schema_options both;
        both.fuse_qkv = both.fuse_gate_up = true;
        check_round_trip(dir.path(), src, 2, both);
    }
    // Fused q/k/v at world 2: rank 0's 16 q, 8 k and 8 v columns of words side by side.
    temp_dir dir;
    write(dir.path(), gptq_config(g, false), src);
    load_options fo{.rank = 0, .world = 2};
    fo.plan.schema.fuse_qkv = true;
    auto fused = load<host_tensor>(dir.path().string(), fo);
    const std::string a = "model.layers.0.self_attn.";
    CHECK(fused.at(a + "qkv_proj.qweight").shape() == shape{H / 8, 32});
    CHECK(fused.at(a + "qkv_proj.qzeros").shape() == shape{H / g, 4});
    // The g_idx of a weight joining three, one row a projection (never one kept and the
    // others dropped).
    CHECK(fused.at(a + "qkv_proj.g_idx").shape() == shape{3, H});
    std::vector<std::byte> rows;
    for (const char* n : {"q_proj", "k_proj", "v_proj"}) {
        const auto& b = src.at(a + n + ".g_idx").bytes;
        rows.insert(rows.end(), b.begin(), b.end());
    }
    CHECK(bytes_of(fused.at(a + "qkv_proj.g_idx")) == rows);
}

TEST_CASE("GPTQ: a rank share that splits a word or a group is refused; act order takes it") {
    // Groups of 16 at world 4: o_proj's 8 values of K a rank are half a group.
    const auto g16 = gptq_llama(16);
    temp_dir dir;
    write(dir.path(), gptq_config(16, false), g16);
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)load_plan::build(checkpoint::open(dir.path().string()), {0, 4});
        },
        "columns of extent 32 cut 4 ways gives a rank the piece [0, 8), which is not in whole "
        "blocks of 16 (its grid<1,16>^T scales cannot follow)");
    // Under act order the groups are g_idx's, not K's: every rank holds all of them.
    temp_dir act;
    write(act.path(), gptq_config(16, true), g16);
    auto model = load<host_tensor>(act.path().string(), {.rank = 3, .world = 4});
    CHECK(model.at("model.layers.0.self_attn.o_proj.scales").shape() == shape{2, H});
    // 2 bits, sixteen values a word, at world 4: q_proj's 8 rows a rank are half a word of
    // zeros (packed along N).
    temp_dir two_bits;
    write(two_bits.path(), gptq_config(8, true, 2), gptq_llama(8, 2));
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)load_plan::build(checkpoint::open(two_bits.path().string()), {0, 4});
        },
        "parameter 'model.layers.0.self_attn.q_proj.qweight': its rows of extent 32 cut 4 ways "
        "gives a rank the piece [0, 8), which is not in whole blocks of 16 (its "
        "grid<16,all/8>^T qzeros cannot follow)");
    // A qweight of the wrong shape for its config, and scales off the grid.
    auto bad = gptq_llama(8);
    std::mt19937_64 rng(1);
    bad["model.layers.0.mlp.up_proj.scales"] = random_stored(dtype::f16, {3, I}, rng);
    temp_dir off;
    write(off.path(), gptq_config(8, false), bad);
    expect_error(
        errc::shape_mismatch,
        [&] {
            (void)load_plan::build(checkpoint::open(off.path().string()), {0, 2});
        },
        "the quantization companion 'model.layers.0.mlp.up_proj.scales' of shape [3, 64] is no "
        "gptq grid<1,8>^T over its weight of [64, 32] values");
}

TEST_CASE("AWQ (GEMM): words along N, group scales and zeros, every rank; the rest refused") {
    constexpr std::uint64_t g = 8;
    const auto src = awq_llama(g);
    temp_dir dir;
    write(dir.path(), awq_config(g), src);
    for_each_rank_linear(
        dir.path(), {1, 2, 4},
        [&](const auto& model, const std::vector<std::uint64_t>&, const std::string& p,
            const range_2d& q) {
            CHECK(model.at(p + "qweight").shape() == shape{q.c1 - q.c0, (q.r1 - q.r0) / 8});
            CHECK(bytes_of(model.at(p + "qweight")) ==
                  take(src.at(p + "qweight"), q.c0, q.c1, q.r0 / 8, q.r1 / 8));
            CHECK(bytes_of(model.at(p + "scales")) ==
                  take(src.at(p + "scales"), q.c0 / g, q.c1 / g, q.r0, q.r1));
            CHECK(bytes_of(model.at(p + "qzeros")) ==
                  take(src.at(p + "qzeros"), q.c0 / g, q.c1 / g, q.r0 / 8, q.r1 / 8));
        });
    CHECK(layout_of(dir.path(), 2, "model.layers.0.mlp.gate_proj.qweight") ==
          "packed<grid<8,1>^T>(split<0>)");
    for (std::uint32_t w : {1u, 2u, 4u}) check_round_trip(dir.path(), src, w);
    schema_options both;
    both.fuse_qkv = both.fuse_gate_up = true;
    check_round_trip(dir.path(), src, 2, both);

    // An intermediate size of 40 at world 2: gate_proj's 20 rows a rank are two words and a
    // half.
    auto i40 = awq_llama(g);
    std::mt19937_64 rng(5);
    for (const char* n : {"gate_proj", "up_proj"}) {
        const std::string p = std::string("model.layers.0.mlp.") + n + ".";
        i40[p + "qweight"] = random_stored(dtype::i32, {H, 5}, rng);
        i40[p + "scales"] = random_stored(dtype::f16, {H / g, 40}, rng);
        i40[p + "qzeros"] = random_stored(dtype::i32, {H / g, 5}, rng);
    }
    const std::string d = "model.layers.0.mlp.down_proj.";
    i40[d + "qweight"] = random_stored(dtype::i32, {40, H / 8}, rng);
    i40[d + "scales"] = random_stored(dtype::f16, {40 / g, H}, rng);
    i40[d + "qzeros"] = random_stored(dtype::i32, {40 / g, H / 8}, rng);
    temp_dir dir40;
    write(dir40.path(), with_intermediate_size(awq_config(g), 40), i40);
    (void)load_plan::build(checkpoint::open(dir40.path().string()), {0, 1});  // whole: fine
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)load_plan::build(checkpoint::open(dir40.path().string()), {0, 2});
        },
        "parameter 'model.layers.0.mlp.gate_proj.qweight': its rows of extent 40 cut 2 ways "
        "gives a rank the piece [0, 20), which is not in whole blocks of 8 (its grid<8,1>^T "
        "packed storage of I32 cannot follow)");
    // GEMV's layout is another: an unknown scheme, named.
    temp_dir gemv;
    write(gemv.path(), awq_config(g, "gemv"), src);
    expect_error(
        errc::quantized_checkpoint,
        [&] {
            (void)load_plan::build(checkpoint::open(gemv.path().string()), {0, 1});
        },
        "awq");
}

namespace {

const std::filesystem::path quantized_data =
    std::filesystem::path(SAFESHARD_TEST_DATA) / "quantized";

// The tensors of a published GPTQ or AWQ checkpoint (tests/data/quantized: its config.json and
// names) with the shapes its config implies: each linear's qweight, qzeros, scales (and g_idx)
// by the scheme's rules over the linear's [N, K], the rest as the architecture says, in BF16.
std::vector<tensor_info> int_replica(const std::filesystem::path& folder, const model_config& c) {
    const quantization_config& q = *c.quantization;
    const bool gptq = q.quant_method == "gptq";
    const std::uint64_t p = 32 / q.bits, g = q.group_size;
    const architecture_table& t = architecture_shapes(c.model_type);
    std::ifstream in(folder / "tensors.txt");
    std::vector<tensor_info> v;
    for (std::string n; std::getline(in, n);) {
        if (n.empty() || n.front() == '#') continue;
        const std::size_t dot = n.rfind('.');
        const std::string suffix = n.substr(dot + 1);
        const bool packed =
            suffix == "qweight" || suffix == "qzeros" || suffix == "scales" || suffix == "g_idx";
        shape sh;
        for (const auto& d :
             t.implied_shape(packed ? n.substr(0, dot) + ".weight" : n, sizes_of(c)))
            sh.push_back(d.size);
        if (!packed) {
            v.push_back({n, dtype::bf16, sh});
            continue;
        }
        const std::uint64_t N = sh[0], K = sh[1];
        if (suffix == "qweight")
            v.push_back({n, dtype::i32, gptq ? shape{K / p, N} : shape{K, N / p}});
        else if (suffix == "qzeros")
            v.push_back({n, dtype::i32, shape{K / g, N / p}});
        else if (suffix == "scales")
            v.push_back({n, dtype::f16, shape{K / g, N}});
        else
            v.push_back({n, dtype::i32, shape{K}});
    }
    return v;
}

shape local_of(const load_plan& p, const std::string& name) {
    const plan_destination* d = p.find(name);
    REQUIRE_MESSAGE(d, name);
    return d->local;
}

}  // namespace

TEST_CASE("GPTQ as published (Llama-3.1-70B, act order): every projection's tensors at tp 8") {
    const auto data = quantized_data / "ModelCloud__Meta-Llama-3.1-70B-Instruct-gptq-4bit";
    const model_config c = load_model_config(data / "config.json");
    REQUIRE(c.quantization);
    CHECK(c.quantization->quant_method == "gptq");
    CHECK(c.quantization->act_order);
    CHECK(c.quantization->group_size == 128);
    const auto tensors = int_replica(data, c);
    CHECK(tensors.size() == 2403);
    temp_dir dir;
    write_sparse_replica(dir.path(), data / "config.json", tensors, 5);
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const load_plan p = load_plan::build(ckpt, {.rank = 3, .world = 8});
    CHECK(p.unexpected().empty());
    const std::string a = "model.layers.41.self_attn.", m = "model.layers.41.mlp.";
    // Column-parallel: N cut 8 ways (q 8192 -> 1024, k 1024 -> 128, gate 28672 -> 3584).
    CHECK(local_of(p, a + "q_proj.qweight") == shape{1024, 1024});
    CHECK(local_of(p, a + "q_proj.scales") == shape{64, 1024});
    CHECK(local_of(p, a + "q_proj.qzeros") == shape{64, 128});
    CHECK(local_of(p, a + "q_proj.g_idx") == shape{8192});
    CHECK(local_of(p, a + "k_proj.qweight") == shape{1024, 128});
    CHECK(local_of(p, a + "k_proj.qzeros") == shape{64, 16});
    CHECK(local_of(p, m + "gate_proj.qweight") == shape{1024, 3584});
    CHECK(local_of(p, m + "up_proj.qzeros") == shape{64, 448});
    // Row-parallel: K cut 8 ways; act order keeps every group's scales and zeros.
    CHECK(local_of(p, a + "o_proj.qweight") == shape{128, 8192});
    CHECK(local_of(p, a + "o_proj.scales") == shape{64, 8192});
    CHECK(local_of(p, a + "o_proj.qzeros") == shape{64, 1024});
    CHECK(local_of(p, a + "o_proj.g_idx") == shape{1024});
    CHECK(local_of(p, m + "down_proj.qweight") == shape{448, 8192});
    CHECK(local_of(p, m + "down_proj.scales") == shape{224, 8192});
    CHECK(local_of(p, m + "down_proj.g_idx") == shape{3584});
    CHECK(p.find(m + "down_proj.scales")->dtype == dtype::f16);
    CHECK(local_of(p, "lm_head.weight") == shape{128256 / 8, 8192});
    // Without act order the row-parallel scales are cut with K: 224 groups -> 28.
    std::ifstream in(data / "config.json");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string act = "\"desc_act\": true";
    REQUIRE(text.find(act) != std::string::npos);
    text.replace(text.find(act), act.size(), "\"desc_act\": false");
    write_text_file(dir.path() / "config.json", text);
    const load_plan q = load_plan::build(checkpoint::open(dir.path().string()), {3, 8});
    CHECK(local_of(q, m + "down_proj.scales") == shape{28, 8192});
    CHECK(local_of(q, m + "down_proj.qzeros") == shape{28, 1024});
}

TEST_CASE("AWQ as published (Llama-3-70B, GEMM): every projection's tensors at tp 8") {
    const auto data = quantized_data / "TechxGenus__Meta-Llama-3-70B-AWQ";
    const model_config c = load_model_config(data / "config.json");
    REQUIRE(c.quantization);
    CHECK(c.quantization->quant_method == "awq");
    CHECK(c.quantization->version == "gemm");
    const auto tensors = int_replica(data, c);
    CHECK(tensors.size() == 1843);
    temp_dir dir;
    write_sparse_replica(dir.path(), data / "config.json", tensors, 9);
    const load_plan p = load_plan::build(checkpoint::open(dir.path().string()), {5, 8});
    CHECK(p.unexpected().empty());
    const std::string a = "model.layers.0.self_attn.", m = "model.layers.79.mlp.";
    CHECK(local_of(p, a + "q_proj.qweight") == shape{8192, 128});
    CHECK(local_of(p, a + "q_proj.scales") == shape{64, 1024});
    CHECK(local_of(p, a + "v_proj.qzeros") == shape{64, 16});
    CHECK(local_of(p, a + "o_proj.qweight") == shape{1024, 1024});
    CHECK(local_of(p, a + "o_proj.scales") == shape{8, 8192});
    CHECK(local_of(p, m + "gate_proj.qweight") == shape{8192, 448});
    CHECK(local_of(p, m + "down_proj.qweight") == shape{3584, 1024});
    CHECK(local_of(p, m + "down_proj.qzeros") == shape{28, 1024});
    // Fused gate/up: two projections' words side by side, 2 x 448.
    plan_options fused;
    fused.schema.fuse_gate_up = true;
    const load_plan f = load_plan::build(checkpoint::open(dir.path().string()), {5, 8}, fused);
    CHECK(local_of(f, m + "gate_up_proj.qweight") == shape{8192, 896});
    CHECK(local_of(f, m + "gate_up_proj.scales") == shape{64, 7168});
}
