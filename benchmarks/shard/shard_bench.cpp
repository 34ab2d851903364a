// Cost of planning the cut: a 405B-like schema and all ranks' slice maps at world 8.
#include <benchmark/benchmark.h>

#include <string_view>
#include <vector>

#include "safeshard/shard/architectures/registry.hpp"
#include "safeshard/shard/slice.hpp"

namespace {
using namespace safeshard;

// Llama 3.1 405B's config.json sizes.
model_config config_405b() {
    model_config c;
    c.model_type = "llama";
    c.hidden_size = 16384;
    c.intermediate_size = 53248;
    c.num_hidden_layers = 126;
    c.num_attention_heads = 128;
    c.num_key_value_heads = 8;
    c.head_dim = 128;
    c.vocab_size = 128256;
    c.tie_word_embeddings = false;
    return c;
}

// The checkpoint's shapes, as a loader would read them from the headers.
shape hf_shape(const model_config& c, std::string_view n) {
    const std::uint64_t hd = c.num_attention_heads * c.head_dim,
                        kvd = c.num_key_value_heads * c.head_dim, h = c.hidden_size,
                        i = c.intermediate_size;
    if (n.ends_with("embed_tokens.weight") || n.ends_with("lm_head.weight"))
        return shape{c.vocab_size, h};
    if (n.ends_with("q_proj.weight")) return shape{hd, h};
    if (n.ends_with("k_proj.weight") || n.ends_with("v_proj.weight")) return shape{kvd, h};
    if (n.ends_with("o_proj.weight")) return shape{h, hd};
    if (n.ends_with("gate_proj.weight") || n.ends_with("up_proj.weight")) return shape{i, h};
    if (n.ends_with("down_proj.weight")) return shape{h, i};
    return shape{h};
}

void BM_schema_405b(benchmark::State& state) {
    const model_config c = config_405b();
    for (auto _ : state) {
        schema s = make_schema(c);
        benchmark::DoNotOptimize(s);
    }
}
BENCHMARK(BM_schema_405b)->Unit(benchmark::kMillisecond);

// The goal (< 5 ms): the schema, then every parameter's map for every rank of world 8.
void BM_schema_and_all_maps_405b_world8(benchmark::State& state) {
    const model_config c = config_405b();
    std::size_t maps = 0;
    for (auto _ : state) {
        const schema s = make_schema(c);
        maps = 0;
        shape shapes[max_sources];
        for (const auto& p : s.parameters()) {
            for (std::size_t i = 0; i < p.sources.size(); ++i)
                shapes[i] = hf_shape(c, p.sources[i]);
            for (std::uint32_t r = 0; r < 8; ++r) {
                const slice_result res =
                    slice_parameter(p, std::span<const shape>(shapes, p.sources.size()), 8, r);
                benchmark::DoNotOptimize(res);
                ++maps;
            }
        }
    }
    state.counters["maps"] = static_cast<double>(maps);
}
BENCHMARK(BM_schema_and_all_maps_405b_world8)->Unit(benchmark::kMillisecond);

// One run-time slice of the largest kind (fused q/k/v from three sources).
void BM_slice_gqa_qkv(benchmark::State& state) {
    const layout l = make_gqa_qkv(kv_contiguous, 128, 8, 128);
    const shape src[3] = {shape{16384, 16384}, shape{1024, 16384}, shape{1024, 16384}};
    std::uint32_t r = 0;
    for (auto _ : state) {
        const slice_result res = slice(l, src, 3, 8, r);
        benchmark::DoNotOptimize(res);
        r = (r + 1) & 7;
    }
}
BENCHMARK(BM_slice_gqa_qkv);

// A fully static case: the map is computed by the compiler; at run time only the value
// is read.
constexpr slice_result static_map = slice(split<1>::value, shape{16384, 53248}, 8, 3);
static_assert(static_map.ok());

void BM_static_slice(benchmark::State& state) {
    for (auto _ : state) {
        const copy_box b = static_map.map[0];
        benchmark::DoNotOptimize(b);
    }
}
BENCHMARK(BM_static_slice);

}  // namespace

BENCHMARK_MAIN();
