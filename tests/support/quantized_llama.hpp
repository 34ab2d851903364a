// Small quantized llama checkpoints for the loader's tests (tests/load/quantized_test.cpp,
// tests/load/int_quantized_test.cpp): random tensors with the published names and dtypes,
// the byte ranges of a rank computed here from the definitions (not with the library's
// companion algebra), the export/merge round trip every scheme must survive, and the checks of
// a checkpoint written dequantized (export, merge and convert asked a float dtype).
#pragma once

#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/save/convert.hpp"
#include "safeshard/save/export.hpp"
#include "safeshard/save/merge.hpp"
#include "temp_dir.hpp"

namespace safeshard::test {

// A tensor of the checkpoint: dtype, 2-D (or 1-D / scalar) shape, random bytes.
struct stored {
    dtype type = dtype::u8;
    std::vector<std::uint64_t> dims;
    std::vector<std::byte> bytes;
    [[nodiscard]] std::uint64_t rows() const { return dims.empty() ? 1 : dims[0]; }
    [[nodiscard]] std::uint64_t cols() const { return dims.size() > 1 ? dims[1] : 1; }
    [[nodiscard]] std::size_t elem() const { return bit_size(type) / 8; }
};

inline stored random_stored(dtype t, std::vector<std::uint64_t> dims, std::mt19937_64& rng) {
    stored s{t, std::move(dims), {}};
    std::uint64_t n = 1;
    for (auto d : s.dims) n *= d;
    s.bytes.resize(n * (bit_size(t) / 8));
    for (auto& b : s.bytes) b = static_cast<std::byte>(rng() & 0x7f);  // finite codes
    return s;
}

// Rows [r0, r1) and columns [c0, c1) of a 2-D tensor's bytes.
inline std::vector<std::byte> take(const stored& t, std::uint64_t r0, std::uint64_t r1,
                                   std::uint64_t c0, std::uint64_t c1) {
    std::vector<std::byte> out;
    const std::size_t e = t.elem();
    for (std::uint64_t r = r0; r < r1; ++r)
        out.insert(out.end(),
                   t.bytes.begin() + static_cast<std::ptrdiff_t>((r * t.cols() + c0) * e),
                   t.bytes.begin() + static_cast<std::ptrdiff_t>((r * t.cols() + c1) * e));
    return out;
}

inline void write(const std::filesystem::path& dir, const std::string& config,
                  const std::map<std::string, stored>& tensors) {
    std::vector<tensor_data> v;
    for (const auto& [n, t] : tensors)
        v.push_back({n, t.type, shape::from(std::span(t.dims)), std::span(t.bytes)});
    save_file(dir / "model.safetensors", v);
    std::ofstream(dir / "config.json") << config;
}

// A one-layer llama: 4 query heads of 8, 2 KV heads, hidden 32, intermediate 64.
inline constexpr std::uint64_t H = 32, I = 64, q_heads = 4, kv_heads = 2, head_size = 8, V = 64;

inline std::string llama_config(const std::string& quantization) {
    return R"({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 64, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "quantization_config": )" +
           quantization + "}";
}

// `config` (llama_config's) with another intermediate size.
inline std::string with_intermediate_size(std::string config, std::uint64_t n) {
    const std::string i = "\"intermediate_size\": " + std::to_string(I);
    config.replace(config.find(i), i.size(), "\"intermediate_size\": " + std::to_string(n));
    return config;
}

inline const std::vector<std::pair<std::string, std::vector<std::uint64_t>>>& linears() {
    static const std::vector<std::pair<std::string, std::vector<std::uint64_t>>> v = {
        {"self_attn.q_proj", {q_heads * head_size, H}},
        {"self_attn.k_proj", {kv_heads * head_size, H}},
        {"self_attn.v_proj", {kv_heads * head_size, H}},
        {"self_attn.o_proj", {H, q_heads * head_size}},
        {"mlp.gate_proj", {I, H}},
        {"mlp.up_proj", {I, H}},
        {"mlp.down_proj", {H, I}}};
    return v;
}

// The model with linears of `weights` (random codes); `scales(weight dims)` gives each
// weight's companions.
template <class Scales>
inline std::map<std::string, stored> quantized_llama(dtype weights, Scales&& scales) {
    std::mt19937_64 rng(11);
    std::map<std::string, stored> t;
    t["model.embed_tokens.weight"] = random_stored(dtype::bf16, {V, H}, rng);
    t["lm_head.weight"] = random_stored(dtype::bf16, {V, H}, rng);
    t["model.norm.weight"] = random_stored(dtype::bf16, {H}, rng);
    t["model.layers.0.input_layernorm.weight"] = random_stored(dtype::bf16, {H}, rng);
    t["model.layers.0.post_attention_layernorm.weight"] = random_stored(dtype::bf16, {H}, rng);
    for (const auto& [n, dims] : linears()) {
        const std::string p = "model.layers.0." + n + ".";
        t[p + "weight"] = random_stored(weights, dims, rng);
        for (auto& [suffix, s] : scales(dims, rng)) t[p + suffix] = std::move(s);
    }
    return t;
}

// The model with FP8 linears.
template <class Scales>
inline std::map<std::string, stored> fp8_llama(Scales&& scales) {
    return quantized_llama(dtype::f8_e4m3, std::forward<Scales>(scales));
}

inline std::uint64_t ceil_div(std::uint64_t a, std::uint64_t b) { return (a + b - 1) / b; }

// The companions of DeepSeek-V3's form: weight_scale_inv [ceil(N/b), ceil(K/b)].
inline auto block_scaled(std::uint64_t b) {
    return [b](const std::vector<std::uint64_t>& dims, std::mt19937_64& rng) {
        std::map<std::string, stored> s;
        s["weight_scale_inv"] =
            random_stored(dtype::f32, {ceil_div(dims[0], b), ceil_div(dims[1], b)}, rng);
        return s;
    };
}

// The rows (column-parallel) or columns (row-parallel) of a linear rank r holds, in weight
// elements: vLLM's q/k/v heads (a KV head per rank once the ranks outnumber them), gate/up
// rows, o/down columns.
struct range_2d {
    std::uint64_t r0, r1, c0, c1;
};
inline range_2d rank_range(const std::string& n, std::uint32_t w, std::uint32_t r) {
    for (const auto& [name, dims] : linears()) {
        if (name != n) continue;
        const std::uint64_t N = dims[0], K = dims[1];
        if (n == "self_attn.q_proj") return {r * N / w, (r + 1) * N / w, 0, K};
        if (n == "self_attn.k_proj" || n == "self_attn.v_proj") {
            if (w <= kv_heads) return {r * N / w, (r + 1) * N / w, 0, K};
            const std::uint64_t h = r / (w / kv_heads);
            return {h * head_size, (h + 1) * head_size, 0, K};
        }
        if (n == "self_attn.o_proj" || n == "mlp.down_proj")
            return {0, N, r * K / w, (r + 1) * K / w};
        return {r * N / w, (r + 1) * N / w, 0, K};
    }
    FAIL("no such linear");
    return {};
}

// Every rank of each of `worlds` loads the checkpoint at `dir`; for each linear n of the rank's
// model, f(model, n's dims [N, K], its tensors' prefix "model.layers.0.<n>.", the rows and
// columns the rank holds of it: rank_range).
template <class F>
inline void for_each_rank_linear(const std::filesystem::path& dir,
                                 std::initializer_list<std::uint32_t> worlds, F&& f) {
    for (const std::uint32_t w : worlds)
        for (std::uint32_t r = 0; r < w; ++r) {
            CAPTURE(w);
            CAPTURE(r);
            const auto model = load<host_tensor>(dir.string(), {.rank = r, .world = w});
            for (const auto& [n, dims] : linears()) {
                CAPTURE(n);
                f(model, dims, "model.layers.0." + n + ".", rank_range(n, w, r));
            }
        }
}

inline std::vector<std::byte> bytes_of(const host_tensor& x) {
    const auto* p = static_cast<const std::byte*>(x.data());
    return {p, p + x.size_bytes()};
}

// An export of the checkpoint at `in` (written from `src`) for `world` ranks keeps it
// quantized: each rank folder loads back (without config.json's scheme: the records say
// what each tensor is) to the tensors a load of that rank of the checkpoint gives, and the
// merge gives back every tensor of `src`, bit for bit, and nothing else.
inline void check_round_trip(const std::filesystem::path& in,
                             const std::map<std::string, stored>& src, std::uint32_t world,
                             const schema_options& schema = {}, expert_parallel experts = {}) {
    CAPTURE(world);
    CAPTURE(experts.ep);
    temp_dir out;
    export_options o;
    o.world = world;
    o.experts = experts;
    o.plan.schema = schema;
    (void)export_checkpoint(checkpoint::open(in.string()), out.path() / "ex", o);
    for (std::uint32_t r = 0; r < world; ++r) {
        CAPTURE(r);
        load_options lo{.rank = r, .world = world, .experts = experts};
        lo.plan.schema = schema;
        auto direct = load<host_tensor>(in.string(), lo);
        auto back = load<host_tensor>((out.path() / "ex" / export_rank_folder(r)).string(),
                                      {.rank = r, .world = world, .experts = experts});
        CHECK(back.size() == direct.size());
        for (const std::string& n : direct.names()) {
            CAPTURE(n);
            const host_tensor& t = direct.at(n);
            REQUIRE(back.contains(n));
            CHECK(back.at(n).shape() == t.shape());
            CHECK(back.at(n).dtype() == t.dtype());
            CHECK(bytes_of(back.at(n)) == bytes_of(t));
        }
    }
    (void)merge_export(out.path() / "ex", out.path() / "merged");
    const checkpoint merged = checkpoint::open((out.path() / "merged").string());
    CHECK(merged.tensor_count() == src.size());
    for (const auto& [n, t] : src) {
        CAPTURE(n);
        const located_tensor l = merged.tensor(n);
        CHECK(l.tensor.dtype() == t.type);
        CHECK(l.tensor.shape() == shape::from(std::span(t.dims)));
        const auto b = l.tensor.bytes();
        CHECK(std::vector<std::byte>(b.begin(), b.end()) == t.bytes);
    }
}

// The text of `dir`'s config.json.
inline std::string config_text(const std::filesystem::path& dir) {
    std::ifstream f(dir / "config.json");
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Rank r of world w of the quantized checkpoint at `in`, loaded dequantized into `to`.
inline loaded_model<host_tensor> load_dequantized(const std::filesystem::path& in, std::uint32_t r,
                                                  std::uint32_t w, dtype to,
                                                  const schema_options& schema = {}) {
    load_options o{.rank = r, .world = w};
    o.plan.schema = schema;
    o.plan.dtype = dtype_policy::fixed(to);
    return load<host_tensor>(in.string(), o);
}

// The checkpoint at `written`, loaded as rank r of w (no quantization: as stored), holds
// exactly the tensors of `expected`, bit for bit, and its config.json no quantization_config.
inline void check_same_tensors(const std::filesystem::path& written, std::uint32_t r,
                               std::uint32_t w, const loaded_model<host_tensor>& expected) {
    const auto back = load<host_tensor>(written.string(), {.rank = r, .world = w});
    CHECK(back.names().size() == expected.names().size());
    for (const std::string& n : expected.names()) {
        CAPTURE(n);
        REQUIRE(back.contains(n));
        CHECK(back.at(n).dtype() == expected.at(n).dtype());
        CHECK(back.at(n).shape() == expected.at(n).shape());
        CHECK(bytes_of(back.at(n)) == bytes_of(expected.at(n)));
    }
    const std::string config = config_text(written);
    CHECK(config.find("\"model_type\"") != std::string::npos);
    CHECK(config.find("quantization_config") == std::string::npos);
    CHECK_FALSE(std::filesystem::exists(written / "hf_quant_config.json"));
}

// The quantized checkpoint at `in`, exported for `world` ranks with `to` asked: each rank
// folder is that rank's dequantized load, and the merge, and a convert to `to`, are the
// dequantized load of world 1.
inline void check_written_dequantized(const std::filesystem::path& in, std::uint32_t world,
                                      dtype to, const schema_options& schema = {}) {
    CAPTURE(world);
    CAPTURE(name(to));
    temp_dir out;
    export_options o;
    o.world = world;
    o.plan.schema = schema;
    o.plan.dtype = dtype_policy::fixed(to);
    const checkpoint c = checkpoint::open(in.string());
    (void)export_checkpoint(c, out.path() / "ex", o);
    for (std::uint32_t r = 0; r < world; ++r) {
        CAPTURE(r);
        check_same_tensors(out.path() / "ex" / export_rank_folder(r), r, world,
                           load_dequantized(in, r, world, to, schema));
    }
    const auto whole = load_dequantized(in, 0, 1, to);
    (void)merge_export(out.path() / "ex", out.path() / "merged");
    if (!schema.fuse_qkv && !schema.fuse_gate_up)
        check_same_tensors(out.path() / "merged", 0, 1, whole);
    const convert_report rep = convert_checkpoint(c, out.path() / "converted", {.to = to});
    CHECK(rep.dequantized == linears().size());
    CHECK(rep.tensors == whole.names().size());
    check_same_tensors(out.path() / "converted", 0, 1, whole);
}

}  // namespace safeshard::test
