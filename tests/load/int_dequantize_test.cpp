// Integer-quantized checkpoints dequantized in the copy (a load's dtype asks BF16, F16 or F32 of
// them): GPTQ (v1 and v2 zero points, 4 and 8 bits, desc_act with g_idx), compressed-tensors
// pack-quantized (symmetric, asymmetric, act order) and bitsandbytes 8-bit. Every rank's
// weights equal its as-stored tensors (part 1's load, checked against the definitions by
// int_quantized_test.cpp, quantized_test.cpp and bitsandbytes_test.cpp) dequantized by
// tests/support/dequantize_reference.hpp; the companions are consumed; the refusals name why.
#include <doctest/doctest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "../support/dequantize_reference.hpp"
#include "../support/expect_error.hpp"
#include "../support/quantized_llama.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"

using namespace safeshard;
using namespace safeshard::test;

namespace {

// Every bit random (the part-1 generators keep bytes below 0x80: finite scales).
stored any_bits(dtype t, std::vector<std::uint64_t> dims, std::mt19937_64& rng) {
    stored s = random_stored(t, std::move(dims), rng);
    for (auto& b : s.bytes) b = static_cast<std::byte>(rng() & 0xff);
    return s;
}

// F16 or BF16 scales, finite and of both signs, some subnormal, some zero.
stored scales_of(dtype t, std::vector<std::uint64_t> dims, std::mt19937_64& rng) {
    stored s = random_stored(t, std::move(dims), rng);
    for (std::size_t i = 0; i + 1 < s.bytes.size(); i += 2) {
        const auto v = static_cast<std::uint16_t>(rng());
        const std::uint16_t h = t == dtype::f16
                                    ? static_cast<std::uint16_t>(v & 0xbbff)  // exp < 31
                                    : static_cast<std::uint16_t>(v & 0xbfff);
        std::memcpy(s.bytes.data() + i, &h, 2);
    }
    return s;
}

// Each input channel's group: random in [0, groups) (act order).
stored group_index(std::uint64_t k, std::uint64_t groups, std::mt19937_64& rng) {
    stored s = random_stored(dtype::i32, {k}, rng);
    for (std::uint64_t i = 0; i < k; ++i) {
        const auto g = static_cast<std::int32_t>(rng() % groups);
        std::memcpy(s.bytes.data() + i * 4, &g, 4);
    }
    return s;
}

// The llama's other tensors (embeddings, norms, head) as BF16, its linears as `linear` says.
template <class Linear>
std::map<std::string, stored> int_llama(Linear&& linear) {
    auto t = fp8_llama([](const std::vector<std::uint64_t>&, std::mt19937_64&) {
        return std::map<std::string, stored>{};
    });
    std::mt19937_64 rng(41);
    for (const auto& [n, dims] : linears()) {
        const std::string p = "model.layers.0." + n + ".";
        t.erase(p + "weight");
        for (auto& [suffix, s] : linear(dims[0], dims[1], rng)) t[p + suffix] = std::move(s);
    }
    return t;
}

constexpr std::uint64_t group = 8;

std::string gptq_config(unsigned bits, const std::string& format, bool desc_act) {
    return llama_config(
        R"({"quant_method": "gptq", "bits": )" + std::to_string(bits) +
        R"(, "group_size": 8, "desc_act": )" + (desc_act ? "true" : "false") + R"(, "sym": false)" +
        (format.empty() ? "" : R"(, "checkpoint_format": ")" + format + "\"") + "}");
}

// GPTQ's tensors of a linear [N, K]: qweight I32 [K/p, N], scales F16 [K/g, N], qzeros I32
// [K/g, N/p], g_idx I32 [K] (random groups under act order, k / g otherwise).
std::map<std::string, stored> gptq_llama(unsigned bits, bool desc_act) {
    const std::uint64_t p = 32 / bits;
    return int_llama([&](std::uint64_t N, std::uint64_t K, std::mt19937_64& rng) {
        std::map<std::string, stored> s;
        s["qweight"] = any_bits(dtype::i32, {K / p, N}, rng);
        s["scales"] = scales_of(dtype::f16, {K / group, N}, rng);
        s["qzeros"] = any_bits(dtype::i32, {K / group, N / p}, rng);
        s["g_idx"] = group_index(K, K / group, rng);
        if (!desc_act)
            for (std::uint64_t k = 0; k < K; ++k) {
                const auto g = static_cast<std::int32_t>(k / group);
                std::memcpy(s["g_idx"].bytes.data() + k * 4, &g, 4);
            }
        return s;
    });
}

std::string wna16_config(unsigned bits, bool symmetric, bool act_order) {
    return llama_config(R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": )" +
                        std::to_string(bits) +
                        R"(, "group_size": 8, "strategy": "group", "type": "int", "symmetric": )" +
                        (symmetric ? "true" : "false") + R"(, "actorder": )" +
                        (act_order ? "\"group\"" : "null") + R"(}}}, "ignore": ["lm_head"]})");
}

// compressed-tensors' tensors of a linear [N, K]: weight_packed I32 [N, K/p], weight_scale BF16
// [N, K/g], weight_zero_point I32 [N/p, K/g] (asymmetric), weight_g_idx I32 [K] (act order),
// weight_shape I64 [2].
std::map<std::string, stored> wna16_llama(unsigned bits, bool symmetric, bool act_order) {
    const std::uint64_t p = 32 / bits;
    return int_llama([&](std::uint64_t N, std::uint64_t K, std::mt19937_64& rng) {
        std::map<std::string, stored> s;
        s["weight_packed"] = any_bits(dtype::i32, {N, K / p}, rng);
        s["weight_scale"] = scales_of(dtype::bf16, {N, K / group}, rng);
        if (!symmetric) s["weight_zero_point"] = any_bits(dtype::i32, {N / p, K / group}, rng);
        if (act_order) s["weight_g_idx"] = group_index(K, K / group, rng);
        stored shape_of{dtype::i64, {2}, std::vector<std::byte>(16)};
        const std::int64_t dims[2] = {static_cast<std::int64_t>(N), static_cast<std::int64_t>(K)};
        std::memcpy(shape_of.bytes.data(), dims, 16);
        s["weight_shape"] = shape_of;
        return s;
    });
}

// f throws `code`, its message naming each of `parts`.
template <class F>
void refused(F&& f, errc code, std::initializer_list<std::string_view> parts) {
    const error e = expect_error(code, std::forward<F>(f));
    for (const std::string_view part : parts)
        CHECK_MESSAGE(std::string_view(e.what()).find(part) != std::string_view::npos,
                      "\"" << std::string(part) << "\" not in: " << std::string(e.what()));
}

load_options dequantized(std::uint32_t r, std::uint32_t w, dtype to) {
    load_options o{.rank = r, .world = w};
    o.plan.dtype = dtype_policy::fixed(to);
    return o;
}

// Every rank of `worlds` loads `dir` as stored and dequantized to `to`; each linear's weight
// is compared with `ref` of the rank's stored tensors (prefix "model.layers.0.<n>."), and the
// companions `consumed` are no tensors of the rank.
template <class Ref>
void check_every_rank(const std::filesystem::path& dir, std::initializer_list<std::uint32_t> worlds,
                      dtype to, const std::vector<std::string>& consumed, Ref&& ref) {
    for (const std::uint32_t w : worlds)
        for (std::uint32_t r = 0; r < w; ++r) {
            CAPTURE(w);
            CAPTURE(r);
            const auto stored = load<host_tensor>(dir.string(), {.rank = r, .world = w});
            const auto m = load<host_tensor>(dir.string(), dequantized(r, w, to));
            for (const auto& [n, dims] : linears()) {
                CAPTURE(n);
                const std::string p = "model.layers.0." + n + ".";
                const host_tensor& x = m.at(p + "weight");
                const auto range = rank_range(n, w, r);
                CHECK(x.dtype() == to);
                CHECK(x.shape() == shape{range.r1 - range.r0, range.c1 - range.c0});
                CHECK(bytes_of(x) == ref(stored, p, x.shape()[0], x.shape()[1]));
                for (const std::string& c : consumed) CHECK_FALSE(m.contains(p + c));
            }
            std::uint64_t bytes = 0;
            for (const host_tensor& t : m.tensors()) bytes += t.size_bytes();
            CHECK(m.report.rank_bytes == bytes);
        }
}

}  // namespace

TEST_CASE("GPTQ dequantized in the copy: v1 and v2 zero points, 4 and 8 bits, act order") {
    for (const unsigned bits : {4u, 8u})
        for (const std::string format : {"", "gptq", "gptq_v2"})
            for (const bool desc_act : {false, true}) {
                CAPTURE(bits);
                CAPTURE(format);
                CAPTURE(desc_act);
                temp_dir dir;
                write(dir.path(), gptq_config(bits, format, desc_act), gptq_llama(bits, desc_act));
                const dtype to = desc_act ? dtype::f16 : bits == 4 ? dtype::bf16 : dtype::f32;
                check_every_rank(
                    dir.path(), {1, 2, 4}, to, {"qweight", "scales", "qzeros", "g_idx"},
                    [&](const auto& st, const std::string& p, std::uint64_t n, std::uint64_t k) {
                        return ref_dequantize_int(
                            {.codes = &st.at(p + "qweight"),
                             .bits = bits,
                             .transposed = true,
                             .rows = n,
                             .cols = k,
                             .scales = &st.at(p + "scales"),
                             .group = group,
                             .group_index = desc_act ? &st.at(p + "g_idx") : nullptr,
                             .zeros = &st.at(p + "qzeros"),
                             .zero_adjust = format == "gptq_v2" ? 0 : 1},
                            to);
                    });
            }
}

TEST_CASE("compressed-tensors pack-quantized dequantized: symmetric, asymmetric, act order") {
    for (const unsigned bits : {4u, 8u})
        for (const bool symmetric : {true, false})
            for (const bool act_order : {false, true}) {
                CAPTURE(bits);
                CAPTURE(symmetric);
                CAPTURE(act_order);
                temp_dir dir;
                write(dir.path(), wna16_config(bits, symmetric, act_order),
                      wna16_llama(bits, symmetric, act_order));
                check_every_rank(
                    dir.path(), {1, 2, 4}, dtype::bf16,
                    {"weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx",
                     "weight_shape"},
                    [&](const auto& st, const std::string& p, std::uint64_t n, std::uint64_t k) {
                        return ref_dequantize_int(
                            {.codes = &st.at(p + "weight_packed"),
                             .bits = bits,
                             .rows = n,
                             .cols = k,
                             .scales = &st.at(p + "weight_scale"),
                             .group = group,
                             .group_index = act_order ? &st.at(p + "weight_g_idx") : nullptr,
                             .zeros = symmetric ? nullptr : &st.at(p + "weight_zero_point"),
                             .zero = 1 << (bits - 1)},
                            dtype::bf16);
                    });
            }
}

TEST_CASE("bitsandbytes 8-bit dequantized: weight x SCB x 1/127, every rank") {
    const auto src = int_llama([](std::uint64_t N, std::uint64_t K, std::mt19937_64& rng) {
        std::map<std::string, stored> s;
        s["weight"] = any_bits(dtype::i8, {N, K}, rng);
        s["SCB"] = random_stored(dtype::f32, {N}, rng);
        s["weight_format"] = stored{dtype::u8, {}, {std::byte{0}}};
        return s;
    });
    const std::string bnb8 = R"({"quant_method": "bitsandbytes", "load_in_8bit": true})";
    temp_dir dir;
    write(dir.path(), llama_config(bnb8), src);
    for (const dtype to : {dtype::bf16, dtype::f16, dtype::f32})
        check_every_rank(
            dir.path(), {1, 2}, to, {"SCB", "weight_format"},
            [&](const auto& st, const std::string& p, std::uint64_t n, std::uint64_t k) {
                return ref_dequantize_int({.codes = &st.at(p + "weight"),
                                           .bits = 0,
                                           .rows = n,
                                           .cols = k,
                                           .scales = &st.at(p + "SCB"),
                                           .post = 7.874015718698502e-3f},
                                          to);
            });

    SUBCASE("a tiled weight_format is not dequantized, even whole") {
        auto tiled = src;
        tiled["model.layers.0.mlp.down_proj.weight_format"] = stored{dtype::u8, {}, {std::byte{1}}};
        temp_dir t;
        write(t.path(), llama_config(bnb8), tiled);
        refused([&] { (void)load<host_tensor>(t.path().string(), dequantized(0, 1, dtype::bf16)); },
                errc::quantized_checkpoint, {"mlp.down_proj", "is dequantized", "col32"});
    }
}

TEST_CASE("integer dequantization refuses what it cannot read right") {
    SUBCASE("GPTQ without its zero points") {
        auto t = gptq_llama(4, false);
        t.erase("model.layers.0.mlp.up_proj.qzeros");
        temp_dir dir;
        write(dir.path(), gptq_config(4, "gptq", false), t);
        refused(
            [&] { (void)load<host_tensor>(dir.path().string(), dequantized(0, 1, dtype::f16)); },
            errc::quantized_checkpoint, {"mlp.up_proj", "qzeros", "zero points"});
    }
    SUBCASE("act order without the group index") {
        auto t = gptq_llama(4, true);
        t.erase("model.layers.0.mlp.up_proj.g_idx");
        temp_dir dir;
        write(dir.path(), gptq_config(4, "gptq", true), t);
        refused(
            [&] { (void)load<host_tensor>(dir.path().string(), dequantized(0, 1, dtype::f16)); },
            errc::quantized_checkpoint, {"mlp.up_proj", "g_idx", "act order"});
    }
    SUBCASE("a group index beyond the groups, or negative") {
        for (const std::int32_t bad : {std::int32_t{4096}, std::int32_t{-1}}) {
            auto t = gptq_llama(4, true);
            std::memcpy(t["model.layers.0.self_attn.o_proj.g_idx"].bytes.data() + 12, &bad, 4);
            temp_dir dir;
            write(dir.path(), gptq_config(4, "gptq", true), t);
            refused(
                [&] {
                    (void)load<host_tensor>(dir.path().string(), dequantized(0, 1, dtype::f16));
                },
                errc::quantized_checkpoint,
                {"self_attn.o_proj", "column 3", std::to_string(bad), "groups"});
        }
    }
    SUBCASE("codes of other than 4 or 8 bits") {
        auto t = gptq_llama(2, false);
        temp_dir dir;
        write(dir.path(), gptq_config(2, "gptq", false), t);
        refused(
            [&] { (void)load<host_tensor>(dir.path().string(), dequantized(0, 1, dtype::f16)); },
            errc::unsupported_conversion, {"2-bit codes", "4 or 8 bits"});
    }
    SUBCASE("GPTQ of another checkpoint format is no GPTQ of ours") {
        temp_dir dir;
        write(dir.path(), gptq_config(4, "marlin", false), gptq_llama(4, false));
        refused([&] { (void)load<host_tensor>(dir.path().string(), load_options{}); },
                errc::quantized_checkpoint, {"gptq"});
    }
}
