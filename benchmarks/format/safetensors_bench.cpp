// Opening and validating a safetensors file with 10,000 tensors, against parsing the same
// header with nlohmann::json (the same bytes, in the same run).
#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include <unistd.h>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "safeshard/format/safetensors.hpp"
#include "safeshard/format/safetensors_writer.hpp"

namespace {

using namespace safeshard;

constexpr std::size_t tensor_count = 10'000;

// A llama-like checkpoint header: long dotted names, 2-D BF16 shapes; tiny data (4x4) so the
// header dominates, as in a real file's open.
const std::vector<std::byte>& checkpoint() {
    static const std::vector<std::byte> file = [] {
        static const char* parts[] = {
            "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
            "self_attn.o_proj.weight", "mlp.gate_proj.weight",    "mlp.up_proj.weight",
            "mlp.down_proj.weight",    "input_layernorm.weight",  "post_attention_layernorm.weight",
            "self_attn.q_norm.weight"};
        std::vector<std::string> names;
        for (std::size_t i = 0; i < tensor_count; ++i)
            names.push_back("model.layers." + std::to_string(i / 10) + "." + parts[i % 10]);
        static std::vector<std::byte> data(32);
        std::vector<tensor_data> ts;
        for (const auto& n : names) ts.push_back({n, dtype::bf16, shape{4, 4}, data});
        return serialize(ts, metadata_map{{"format", "pt"}});
    }();
    return file;
}

std::string_view header_text() {
    const auto& f = checkpoint();
    std::uint64_t n = 0;
    std::memcpy(&n, f.data(), 8);
    return {reinterpret_cast<const char*>(f.data()) + 8, static_cast<std::size_t>(n)};
}

void bm_file_view_span(benchmark::State& state) {
    const auto& f = checkpoint();
    for (auto _ : state) {
        const file_view v{std::span<const std::byte>(f)};
        benchmark::DoNotOptimize(v.size());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * header_text().size()));
    state.counters["tensors"] = tensor_count;
}
BENCHMARK(bm_file_view_span)->Unit(benchmark::kMicrosecond);

void bm_file_view_path(benchmark::State& state) {
    const auto path = std::filesystem::temp_directory_path() /
                      ("safeshard-bench-" + std::to_string(::getpid()) + ".safetensors");
    std::vector<tensor_data> none;
    {
        FILE* fp = std::fopen(path.c_str(), "wb");
        std::fwrite(checkpoint().data(), 1, checkpoint().size(), fp);
        std::fclose(fp);
    }
    for (auto _ : state) {
        const file_view v{path};
        benchmark::DoNotOptimize(v.size());
    }
    std::filesystem::remove(path);
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * header_text().size()));
}
BENCHMARK(bm_file_view_path)->Unit(benchmark::kMicrosecond);

// nlohmann::json parse of the header alone: no schema checks, no offsets validated.
void bm_nlohmann_parse(benchmark::State& state) {
    const auto h = header_text();
    for (auto _ : state) {
        auto j = nlohmann::json::parse(h.begin(), h.end());
        benchmark::DoNotOptimize(j.size());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * h.size()));
}
BENCHMARK(bm_nlohmann_parse)->Unit(benchmark::kMicrosecond);

// nlohmann::json parse plus reading each tensor's fields, the least a loader must do.
void bm_nlohmann_parse_and_read(benchmark::State& state) {
    const auto h = header_text();
    for (auto _ : state) {
        auto j = nlohmann::json::parse(h.begin(), h.end());
        std::uint64_t sum = 0;
        for (const auto& [k, v] : j.items()) {
            if (k == "__metadata__") continue;
            sum += v.at("data_offsets").at(1).get<std::uint64_t>();
            sum += v.at("shape").size();
            sum += v.at("dtype").get_ref<const std::string&>().size();
        }
        benchmark::DoNotOptimize(sum);
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * h.size()));
}
BENCHMARK(bm_nlohmann_parse_and_read)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
