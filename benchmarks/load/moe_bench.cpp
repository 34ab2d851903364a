// Mixtures of experts at scale (Google Benchmark):
//   - plan: a sparse replica of DeepSeek-V3 in BF16 (its published config.json, tests/data/moe;
//     46,183 tensors with their true shapes in 163 shards, the data as holes) opened and
//     planned for rank 0 of tp 8 / ep 8 (goal: <= 100 ms on 2 cores); counters: the tensors
//     and the bytes the rank reads over the bytes it holds (goal: <= 1.05); and the same as
//     its FP8 checkpoint stores it (91,991 tensors: the weights F8_E4M3 with their
//     weight_scale_inv grids; goal: <= 150 ms);
//   - per-tensor overhead: a world-1 load (host_engine, warm page cache) of 20,000 tensors of
//     64 KiB against the same bytes in 200 tensors (goal: throughput ratio >= 0.90);
//   - stacked experts: rank 0 of tp 8 / ep 8 of a Qwen3-30B-A3B-shaped checkpoint (its
//     published config.json, 48 layers of 128 experts, the matrices shrunk to hidden 256,
//     moe_intermediate 96: 0.9 GB) loaded from the stacked form (transformers v5's
//     mlp.experts.gate_up_proj / down_proj) against the same rank from one tensor per expert
//     (throughput ratio), each also as the engine's fused experts (schema_options::
//     fuse_experts: w13_weight, w2_weight per layer; goal: fused / per expert >= 0.95), at
//     ep 8 (whole experts) and ep 1 (every expert cut 8 ways).
//
//   moe_bench [--dir=DIR] [google benchmark flags]
//
// The files go to DIR (kept and reused) or a fresh folder under /tmp (removed at exit).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "../../tests/support/sparse_replica.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/config.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"
#include "safeshard/shard/architectures/registry.hpp"

namespace fs = std::filesystem;
using namespace safeshard;

namespace {

fs::path g_dir;
bool g_remove = false;

void write_text(const fs::path& p, const std::string& s) { test::write_text_file(p, s); }

using test::replica_shard_name;

// DeepSeek-V3 as published (tests/data/moe): its config.json, its 46,183 tensor names (the MTP
// layer included) with their true shapes in 163 shards of headers and holes; `fp8`: as its
// FP8 checkpoint stores them, the weights F8_E4M3 with their weight_scale_inv (91,991 tensors,
// the published count), otherwise all BF16.
fs::path write_v3_replica(bool fp8) {
    const fs::path dir = g_dir / (fp8 ? "deepseek_v3_fp8" : "deepseek_v3");
    if (fs::exists(dir / "model.safetensors.index.json")) return dir;
    const fs::path data =
        fs::path(SAFESHARD_SOURCE_ROOT) / "tests/data/moe/deepseek-ai__DeepSeek-V3";
    const model_config c = load_model_config(data / "config.json");
    const auto tensors = fp8 ? test::replica_tensors(c, test::fp8_listing(data / "tensors.txt", c))
                             : test::replica_tensors(c);
    test::write_sparse_replica(dir, data / "config.json", tensors, 163);
    return dir;
}

// Arg: 0 for BF16, 1 for the FP8 checkpoint (weights and their scale grids), 2 for the FP8
// checkpoint with its experts fused for the engine (w13_weight and w13_weight_scale_inv, ...).
void BM_v3_open_and_plan(benchmark::State& st) {
    const fs::path dir = write_v3_replica(st.range(0) >= 1);
    const parallel_context ctx{.rank = 0, .world = 8, .experts = {.ep = 8}};
    plan_options o;
    o.schema.fuse_experts = st.range(0) == 2;
    std::size_t tensors = 0;
    double read_ratio = 0;
    for (auto _ : st) {
        const checkpoint c = checkpoint::open(dir.string());
        const load_plan p = load_plan::build(c, ctx, o);
        tensors = 0;
        for (const auto& f : c.files()) tensors += f.view.size();
        read_ratio = static_cast<double>(p.bytes_to_read()) / static_cast<double>(p.total_bytes());
        benchmark::DoNotOptimize(p.ops().data());
    }
    st.counters["tensors"] = static_cast<double>(tensors);
    st.counters["read_over_rank_bytes"] = read_ratio;
}

void BM_v3_plan_only(benchmark::State& st) {
    const fs::path dir = write_v3_replica(false);
    const checkpoint c = checkpoint::open(dir.string());
    const parallel_context ctx{.rank = static_cast<std::uint32_t>(st.range(0)),
                               .world = 8,
                               .experts = {.ep = static_cast<std::uint32_t>(st.range(1))}};
    std::size_t destinations = 0;
    for (auto _ : st) {
        const load_plan p = load_plan::build(c, ctx);
        destinations = p.destinations().size();
        benchmark::DoNotOptimize(p.ops().data());
    }
    st.counters["destinations"] = static_cast<double>(destinations);
}

// n tensors of `bytes` each in 4 files, BF16 [bytes / 2 / 64, 64].
fs::path write_many(std::size_t n, std::size_t bytes) {
    const fs::path dir = g_dir / ("many_" + std::to_string(n) + "x" + std::to_string(bytes));
    if (fs::exists(dir / "model.safetensors.index.json")) return dir;
    fs::create_directories(dir);
    std::vector<std::uint16_t> data(bytes / 2);
    std::mt19937 rng(1);
    for (auto& x : data) x = static_cast<std::uint16_t>(0x3c00 | (rng() & 0x3ff));
    constexpr std::size_t files = 4;
    std::string weight_map;
    std::vector<std::string> names(n);
    for (std::size_t i = 0; i < n; ++i) names[i] = "t." + std::to_string(i) + ".weight";
    for (std::size_t f = 0; f < files; ++f) {
        std::vector<tensor_data> part;
        const std::string file = replica_shard_name(f, files);
        for (std::size_t i = f * n / files; i < (f + 1) * n / files; ++i) {
            part.push_back(
                {names[i], dtype::bf16, shape{bytes / 2 / 64, 64}, std::as_bytes(std::span(data))});
            weight_map += (weight_map.empty() ? "\"" : ",\"") + names[i] + "\":\"" + file + "\"";
        }
        save_file(dir / file, part);
    }
    write_text(dir / "model.safetensors.index.json",
               "{\"metadata\":{},\"weight_map\":{" + weight_map + "}}");
    return dir;
}

// A Qwen3-30B-A3B-shaped checkpoint (see the top) in one form of storing the experts, with
// data, in 8 files.
fs::path write_qwen3(schema_options::expert_storage form) {
    const bool stacked = form == schema_options::expert_storage::stacked;
    const fs::path dir = g_dir / (stacked ? "qwen3_stacked" : "qwen3_per_expert");
    if (fs::exists(dir / "model.safetensors.index.json")) return dir;
    fs::create_directories(dir);
    const fs::path published =
        fs::path(SAFESHARD_SOURCE_ROOT) / "tests/data/moe/Qwen__Qwen3-30B-A3B/config.json";
    model_config c = load_model_config(published);
    c.hidden_size = 256;
    c.intermediate_size = 384;
    c.moe_intermediate_size = 96;
    c.num_attention_heads = 8;
    c.num_key_value_heads = 4;
    c.head_dim = 32;
    c.vocab_size = 4096;
    write_text(dir / "config.json",
               "{\"model_type\":\"qwen3_moe\",\"hidden_size\":256,\"intermediate_size\":384,"
               "\"moe_intermediate_size\":96,\"num_hidden_layers\":" +
                   std::to_string(c.num_hidden_layers) +
                   ",\"num_attention_heads\":8,\"num_key_value_heads\":4,\"head_dim\":32,"
                   "\"vocab_size\":4096,\"num_experts\":" +
                   std::to_string(c.num_experts) + ",\"tie_word_embeddings\":false}");
    schema_options o;
    o.experts_stored = form;
    const schema s = make_schema(c, o);
    const architecture_table& t = architecture_shapes(c.model_type);
    std::vector<tensor_info> all;
    std::uint64_t largest = 0;
    for (const auto& p : s.parameters())
        for (const auto& name : p.sources) {
            shape sh;
            for (const auto& d : t.implied_shape(name, sizes_of(c))) sh.push_back(d.size);
            all.push_back({name, dtype::bf16, sh});
            largest = std::max(largest, *sh.element_count());
        }
    std::vector<std::uint16_t> data(largest);
    std::mt19937 rng(1);
    for (auto& x : data) x = static_cast<std::uint16_t>(0x3c00 | (rng() & 0x3ff));
    constexpr std::size_t files = 8;
    std::string weight_map;
    for (std::size_t f = 0; f < files; ++f) {
        std::vector<tensor_data> part;
        const std::string file = replica_shard_name(f, files);
        for (std::size_t i = f * all.size() / files; i < (f + 1) * all.size() / files; ++i) {
            const auto n = static_cast<std::size_t>(*all[i].shape.element_count());
            part.push_back(
                {all[i].name, dtype::bf16, all[i].shape, std::as_bytes(std::span(data).first(n))});
            weight_map += (weight_map.empty() ? "\"" : ",\"") + all[i].name + "\":\"" + file + "\"";
        }
        save_file(dir / file, part);
    }
    write_text(dir / "model.safetensors.index.json",
               "{\"metadata\":{},\"weight_map\":{" + weight_map + "}}");
    return dir;
}

// Rank 0 of tp 8: args (form: 0 per expert, 1 stacked; 1: fused experts; ep).
void BM_qwen3_rank_load(benchmark::State& st) {
    const fs::path dir = write_qwen3(st.range(0) == 1 ? schema_options::expert_storage::stacked
                                                      : schema_options::expert_storage::per_expert);
    const checkpoint c = checkpoint::open(dir.string());
    plan_options o;
    o.schema.fuse_experts = st.range(1) == 1;
    const auto ep = static_cast<std::uint32_t>(st.range(2));
    const load_plan p = load_plan::build(c, {.rank = 0, .world = 8, .experts = {.ep = ep}}, o);
    host_engine engine;
    for (auto _ : st) {
        auto m = load_tensors<host_tensor>(p, engine);
        benchmark::DoNotOptimize(m.tensors().data());
    }
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * p.total_bytes()));
    st.counters["rank_MiB"] = static_cast<double>(p.total_bytes()) / (1 << 20);
    st.counters["read_over_rank_bytes"] =
        static_cast<double>(p.bytes_to_read()) / static_cast<double>(p.total_bytes());
    st.counters["destinations"] = static_cast<double>(p.destinations().size());
}

// The physical limit of the rank loads above: one memcpy of rank 0's bytes (tp 8 / ep 8) from
// memory into memory already touched (the loads' tensors, a few hundred KiB each, come from
// the allocator's reused pages too).
void BM_qwen3_memcpy(benchmark::State& st) {
    const fs::path dir = write_qwen3(schema_options::expert_storage::per_expert);
    const checkpoint c = checkpoint::open(dir.string());
    const load_plan p = load_plan::build(c, {.rank = 0, .world = 8, .experts = {.ep = 8}});
    const auto n = static_cast<std::size_t>(p.total_bytes());
    std::vector<std::byte> from(n, std::byte{1}), to(n, std::byte{0});
    for (auto _ : st) {
        std::memcpy(to.data(), from.data(), n);
        benchmark::DoNotOptimize(to.data());
        benchmark::ClobberMemory();
    }
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * p.total_bytes()));
}

void BM_load_many(benchmark::State& st) {
    const auto n = static_cast<std::size_t>(st.range(0));
    const std::size_t total = std::size_t{200} * (std::size_t{64} << 10) * 100;  // 1.25 GiB
    const fs::path dir = write_many(n, total / n);
    const checkpoint c = checkpoint::open(dir.string());
    const load_plan p = load_plan::build(c, schema::replicate_all(), {0, 1});
    host_engine engine;
    for (auto _ : st) {
        auto m = load_tensors<host_tensor>(p, engine);
        benchmark::DoNotOptimize(m.tensors().data());
    }
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * total));
    st.counters["tensors"] = static_cast<double>(n);
}

}  // namespace

BENCHMARK(BM_v3_open_and_plan)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ArgName("fp8")
    ->Arg(0)
    ->Arg(1)
    ->Arg(2);
BENCHMARK(BM_v3_plan_only)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Args({0, 8})
    ->Args({0, 1});
BENCHMARK(BM_load_many)->Unit(benchmark::kMillisecond)->UseRealTime()->Arg(200)->Arg(20000);
BENCHMARK(BM_qwen3_rank_load)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ArgNames({"stacked", "fused", "ep"})
    ->Args({0, 0, 8})
    ->Args({0, 1, 8})
    ->Args({1, 0, 8})
    ->Args({1, 1, 8})
    ->Args({0, 0, 1})
    ->Args({0, 1, 1})
    ->Args({1, 0, 1})
    ->Args({1, 1, 1});
BENCHMARK(BM_qwen3_memcpy)->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
    std::vector<char*> rest;
    for (int i = 0; i < argc; ++i) {
        if (std::strncmp(argv[i], "--dir=", 6) == 0)
            g_dir = argv[i] + 6;
        else
            rest.push_back(argv[i]);
    }
    if (g_dir.empty()) {
        g_dir = fs::temp_directory_path() / ("safeshard-moe-bench-" + std::to_string(::getpid()));
        g_remove = true;
    }
    int n = static_cast<int>(rest.size());
    benchmark::Initialize(&n, rest.data());
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    if (g_remove) fs::remove_all(g_dir);
    return 0;
}
