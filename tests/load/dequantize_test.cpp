// Quantized checkpoints dequantized in the copy (a load's dtype asks BF16, F16 or F32 of them):
// every rank's weights equal its as-stored tensors (part 1's load, checked against the
// definitions by quantized_test.cpp) dequantized by tests/support/dequantize_reference.hpp,
// and the companions are consumed: no tensors of the rank, no bytes of its size.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../support/dequantize_reference.hpp"
#include "../support/expect_error.hpp"
#include "../support/quantized_llama.hpp"
#include "model_gen.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"
#include "safeshard/save/convert.hpp"
#include "safeshard/save/export.hpp"

using namespace safeshard;
using namespace safeshard::test;

namespace {

const std::string fp8_blocks = R"({"quant_method": "fp8", "activation_scheme": "dynamic",
    "fmt": "e4m3", "weight_block_size": [4, 4]})";

// The llama with FP8 linears in blocks of 4 (DeepSeek-V3's form), written into `dir`.
void write_fp8_blocks(const std::filesystem::path& dir) {
    write(dir, llama_config(fp8_blocks), fp8_llama(block_scaled(4)));
}

// Rank r of world w planned with BF16 asked.
load_plan bf16_plan(const checkpoint& c, std::uint32_t r, std::uint32_t w) {
    plan_options po;
    po.dtype = dtype_policy::fixed(dtype::bf16);
    return load_plan::build(c, {r, w}, po);
}

load_options dequantized(std::uint32_t r, std::uint32_t w, dtype to) {
    load_options o{.rank = r, .world = w};
    o.plan.dtype = dtype_policy::fixed(to);
    return o;
}

// The rank's tensors without the scheme's companions, and no bytes of theirs counted.
void check_consumed(const loaded_model<host_tensor>& m, const std::vector<std::string>& suffixes) {
    std::uint64_t bytes = 0;
    for (const host_tensor& t : m.tensors()) bytes += t.size_bytes();
    CHECK(m.report.rank_bytes == bytes);
    for (const auto& [n, dims] : linears())
        for (const std::string& s : suffixes)
            CHECK_FALSE(m.contains("model.layers.0." + n + "." + s));
}

}  // namespace

TEST_CASE("FP8 blocks dequantized in the copy: every rank's weights in BF16, F16 and F32") {
    temp_folder dir;
    write_fp8_blocks(dir.path());
    for (const dtype to : {dtype::bf16, dtype::f16, dtype::f32})
        for (const std::uint32_t w : {1u, 2u, 4u})
            for (std::uint32_t r = 0; r < w; ++r) {
                CAPTURE(name(to));
                CAPTURE(w);
                CAPTURE(r);
                const auto stored = load<host_tensor>(dir.path().string(), {.rank = r, .world = w});
                const auto m = load<host_tensor>(dir.path().string(), dequantized(r, w, to));
                for (const auto& [n, dims] : linears()) {
                    CAPTURE(n);
                    const std::string p = "model.layers.0." + n + ".";
                    const host_tensor& x = m.at(p + "weight");
                    const host_tensor& v = stored.at(p + "weight");
                    CHECK(x.dtype() == to);
                    CHECK(x.shape() == v.shape());
                    CHECK(bytes_of(x) ==
                          ref_dequantize({.values = &v,
                                          .rows = v.shape()[0],
                                          .cols = v.shape()[1],
                                          .scales = &stored.at(p + "weight_scale_inv"),
                                          .block_rows = 4,
                                          .block_cols = 4},
                                         to));
                }
                CHECK(m.at("model.norm.weight").dtype() == to);
                CHECK(m.names().size() == 5 + linears().size());
                check_consumed(m, {"weight_scale_inv"});
            }
}

TEST_CASE("FP8 dequantized: fused q/k/v and gate/up read each part's scale blocks") {
    temp_folder dir;
    write_fp8_blocks(dir.path());
    for (const std::uint32_t w : {1u, 2u})
        for (std::uint32_t r = 0; r < w; ++r) {
            CAPTURE(w);
            CAPTURE(r);
            load_options o = dequantized(r, w, dtype::bf16);
            o.plan.schema.fuse_qkv = o.plan.schema.fuse_gate_up = true;
            const auto m = load<host_tensor>(dir.path().string(), o);
            load_options as_stored{.rank = r, .world = w};
            as_stored.plan.schema = o.plan.schema;
            const auto stored = load<host_tensor>(dir.path().string(), as_stored);
            for (const char* n : {"self_attn.qkv_proj.", "mlp.gate_up_proj."}) {
                CAPTURE(n);
                const std::string p = std::string("model.layers.0.") + n;
                const host_tensor& v = stored.at(p + "weight");
                CHECK(bytes_of(m.at(p + "weight")) ==
                      ref_dequantize({.values = &v,
                                      .rows = v.shape()[0],
                                      .cols = v.shape()[1],
                                      .scales = &stored.at(p + "weight_scale_inv"),
                                      .block_rows = 4,
                                      .block_cols = 4},
                                     dtype::bf16));
                CHECK_FALSE(m.contains(p + "weight_scale_inv"));
            }
        }
}

TEST_CASE("FP8 dequantized per channel and per tensor (compressed-tensors), one scale a part") {
    // q/k/v with per-tensor scales (one a projection, kept so when fused), the MLP per channel;
    // input_scale is the activations': not read once dequantized, said so.
    int linear = 0;  // in linears() order: q, k, v, o, gate, up, down
    const auto src = fp8_llama([&](const std::vector<std::uint64_t>& dims, std::mt19937_64& rng) {
        std::map<std::string, stored> s;
        const int at = linear++;
        s["weight_scale"] = at < 3    ? random_stored(dtype::f32, {1}, rng)
                            : at == 3 ? random_stored(dtype::f32, {dims[0], 1}, rng)
                                      : random_stored(dtype::bf16, {dims[0], 1}, rng);
        s["input_scale"] = random_stored(dtype::f32, {1}, rng);
        return s;
    });
    temp_folder dir;
    write(dir.path(),
          llama_config(R"({"quant_method": "compressed-tensors", "format": "float-quantized",
                          "config_groups": {}})"),
          src);
    for (const bool fused : {false, true})
        for (const std::uint32_t w : {1u, 2u, 4u})
            for (std::uint32_t r = 0; r < w; ++r) {
                CAPTURE(fused);
                CAPTURE(w);
                CAPTURE(r);
                load_options o = dequantized(r, w, dtype::f32);
                o.plan.schema.fuse_qkv = fused;
                const auto m = load<host_tensor>(dir.path().string(), o);
                load_options as_stored{.rank = r, .world = w};
                as_stored.plan.schema = o.plan.schema;
                const auto stored = load<host_tensor>(dir.path().string(), as_stored);
                check_consumed(m, {"weight_scale", "input_scale"});
                for (const std::string& n :
                     fused ? std::vector<std::string>{"self_attn.qkv_proj", "self_attn.o_proj",
                                                      "mlp.gate_proj", "mlp.down_proj"}
                           : std::vector<std::string>{"self_attn.q_proj", "self_attn.k_proj",
                                                      "self_attn.o_proj", "mlp.up_proj"}) {
                    CAPTURE(n);
                    const std::string p = "model.layers.0." + n + ".";
                    const host_tensor& v = stored.at(p + "weight");
                    const host_tensor& s = stored.at(p + "weight_scale");
                    ref_quantized q{
                        .values = &v,
                        .rows = v.shape()[0],
                        .cols = v.shape()[1],
                        .scales = &s,
                        .block_rows = s.shape().element_count() == v.shape()[0] ? 1u : 0u};
                    if (n == "self_attn.qkv_proj") {  // q's rows, then k's, then v's
                        const std::uint64_t qr = rank_range("self_attn.q_proj", w, r).r1 -
                                                 rank_range("self_attn.q_proj", w, r).r0;
                        const std::uint64_t kr = rank_range("self_attn.k_proj", w, r).r1 -
                                                 rank_range("self_attn.k_proj", w, r).r0;
                        q.scale_entry = [=](std::uint64_t, std::uint64_t row, std::uint64_t) {
                            return row < qr ? 0u : row < qr + kr ? 1u : 2u;
                        };
                    }
                    CHECK(bytes_of(m.at(p + "weight")) == ref_dequantize(q, dtype::f32));
                }
                std::size_t said = 0;
                for (const auto& i : m.report.ignored)
                    if (i.name.ends_with(".input_scale") &&
                        i.note.find("dequantized") != std::string::npos)
                        ++said;
                CHECK(said == linears().size());
            }
}

TEST_CASE("FP8 dequantized: every read mode and thread count gives the same tensors") {
    temp_folder dir;
    write_fp8_blocks(dir.path());
    const checkpoint c = checkpoint::open(dir.path().string());
    const load_plan plan = bf16_plan(c, 1, 2);
    host_engine base;
    const auto expected = load_tensors<host_tensor>(plan, base);
    for (const read_mode mode : {read_mode::pread, read_mode::mmap, read_mode::direct})
        for (const std::uint64_t chunk : {std::uint64_t{4096}, std::uint64_t{1} << 20}) {
            CAPTURE(static_cast<int>(mode));
            CAPTURE(chunk);
            host_engine e(
                {.threads = 3, .mode = mode, .chunk_bytes = chunk, .staging_bytes = chunk});
            const auto m = load_tensors<host_tensor>(plan, e);
            for (const std::string& n : expected.names()) {
                CAPTURE(n);
                CHECK(bytes_of(m.at(n)) == bytes_of(expected.at(n)));
            }
        }
}

TEST_CASE("FP8 dequantized: a plan's companions are consumed, its conversion checked first") {
    temp_folder dir;
    write_fp8_blocks(dir.path());
    const checkpoint c = checkpoint::open(dir.path().string());
    const load_plan plan = bf16_plan(c, 0, 2);
    const plan_destination* w = plan.find("model.layers.0.mlp.up_proj.weight");
    REQUIRE(w != nullptr);
    CHECK(w->dequant.has_value());
    CHECK(w->source_dtype == dtype::f8_e4m3);
    CHECK(w->dtype == dtype::bf16);
    const plan_destination* s = plan.find("model.layers.0.mlp.up_proj.weight_scale_inv");
    REQUIRE(s != nullptr);
    CHECK(s->consumed);
    // Without a dtype, or with keep, the checkpoint loads as stored.
    const load_plan kept = load_plan::build(c, {0, 2});
    CHECK_FALSE(kept.find("model.layers.0.mlp.up_proj.weight")->dequant.has_value());
    CHECK_FALSE(kept.find("model.layers.0.mlp.up_proj.weight_scale_inv")->consumed);
    // Per parameter: only the named weight dequantizes.
    plan_options one;
    one.dtype_per_parameter = {{"*.up_proj.weight", dtype::f16}};
    const load_plan partly = load_plan::build(c, {0, 2}, one);
    CHECK(partly.find("model.layers.0.mlp.up_proj.weight")->dtype == dtype::f16);
    CHECK(partly.find("model.layers.0.mlp.gate_proj.weight")->dtype == dtype::f8_e4m3);
    // A target no dequantizing conversion writes: refused while planning, naming it.
    plan_options f64;
    f64.dtype_per_parameter = {{"*.up_proj.weight", dtype::f64}};
    expect_error(
        errc::unsupported_conversion,
        [&] {
            (void)load_plan::build(c, {0, 1}, f64);
        },
        "cannot dequantize F8_E4M3 x F32 scales to F64 (supported: F8_E4M3 x F32 scales");
}

TEST_CASE("FP8 dequantized written: export, merge and convert write the dequantized tensors") {
    temp_folder dir;
    write_fp8_blocks(dir.path());
    for (const dtype to : {dtype::bf16, dtype::f32})
        for (const std::uint32_t w : {1u, 2u}) check_written_dequantized(dir.path(), w, to);
    schema_options fused;
    fused.fuse_qkv = fused.fuse_gate_up = true;
    check_written_dequantized(dir.path(), 2, dtype::bf16, fused);
}

TEST_CASE("FP8 dequantized written: the scales and activation scales are not written") {
    temp_folder dir;
    auto src = fp8_llama(block_scaled(4));
    std::mt19937_64 rng(5);
    for (const auto& [n, dims] : linears())
        src["model.layers.0." + n + ".input_scale"] = random_stored(dtype::f32, {}, rng);
    write(dir.path(), llama_config(fp8_blocks), src);
    std::ofstream(dir.path() / "tokenizer.json") << "{}";
    temp_dir out;
    const checkpoint c = checkpoint::open(dir.path().string());
    const convert_report rep = convert_checkpoint(c, out.path() / "bf16", {.to = dtype::bf16});
    CHECK(rep.dequantized == linears().size());
    CHECK(rep.companions_dropped == 2 * linears().size());
    CHECK(rep.tensors == src.size() - 2 * linears().size());
    CHECK(rep.converted == linears().size());  // the BF16 ones were BF16 already
    CHECK(rep.side_files == 2);
    const checkpoint written = checkpoint::open((out.path() / "bf16").string());
    CHECK(written.tensor_count() == rep.tensors);
    for (const located_tensor& t : written.tensors()) {
        CAPTURE(t.tensor.name());
        CHECK(t.tensor.dtype() == dtype::bf16);
        CHECK_FALSE(t.tensor.name().ends_with("scale"));
        CHECK_FALSE(t.tensor.name().ends_with("scale_inv"));
    }
    check_same_tensors(out.path() / "bf16", 0, 1, load_dequantized(dir.path(), 0, 1, dtype::bf16));
    CHECK(config_text(out.path() / "bf16").find("\"torch_dtype\": \"bfloat16\"") !=
          std::string::npos);

    // The export's rank folders: the same, cut.
    export_options eo;
    eo.world = 2;
    eo.plan.dtype = dtype_policy::fixed(dtype::f16);
    const export_report er = export_checkpoint(c, out.path() / "ex", eo);
    CHECK(er.tensors == 2 * rep.tensors);
    CHECK(er.dequantized == 2 * linears().size());
    const checkpoint rank = checkpoint::open((out.path() / "ex" / "rank-00001").string());
    CHECK(rank.tensor_count() == rep.tensors);
    CHECK_FALSE(rank.find("model.layers.0.mlp.up_proj.weight_scale_inv"));
    CHECK(rank.tensor("model.layers.0.mlp.up_proj.weight").tensor.dtype() == dtype::f16);
}

TEST_CASE("FP8 dequantized written: a checkpoint half dequantized, or unknown, is refused") {
    temp_folder dir;
    write_fp8_blocks(dir.path());
    const checkpoint c = checkpoint::open(dir.path().string());
    temp_dir out;
    // One weight asked a dtype, the others kept: their quantization_config would go.
    export_options eo;
    eo.plan.dtype_per_parameter = {{"*.up_proj.weight", dtype::bf16}};
    expect_error(
        errc::unsupported_conversion, [&] { (void)export_checkpoint(c, out.path() / "ex", eo); },
        "a checkpoint is written dequantized whole");
    CHECK_FALSE(std::filesystem::exists(out.path() / "ex"));
    // Without a dtype, convert re-shards it as stored, scales and quantization_config kept.
    const convert_report kept = convert_checkpoint(c, out.path() / "kept", {});
    CHECK(kept.dequantized == 0);
    CHECK(checkpoint::open((out.path() / "kept").string()).tensor_count() == c.tensor_count());
    CHECK(config_text(out.path() / "kept").find("quantization_config") != std::string::npos);

    // A scheme safeshard does not know: its scales are not converted as if plain floats.
    temp_folder unknown;
    write(unknown.path(), llama_config(R"({"quant_method": "mystery"})"),
          fp8_llama(block_scaled(4)));
    expect_error(
        errc::unsupported_conversion,
        [&] {
            (void)convert_checkpoint(checkpoint::open(unknown.path().string()), out.path() / "u",
                                     {.to = dtype::bf16});
        },
        "quant_method 'mystery'), which safeshard does not know");
    // A lone file with scales and no config.json: its quantization is unknown.
    expect_error(
        errc::unsupported_conversion,
        [&] {
            (void)convert_checkpoint(checkpoint::open((dir.path() / "model.safetensors").string()),
                                     out.path() / "lone", {.to = dtype::bf16});
        },
        "is a quantization scale, but no config.json");
    CHECK_FALSE(std::filesystem::exists(out.path() / "u"));
    CHECK_FALSE(std::filesystem::exists(out.path() / "lone"));
}
