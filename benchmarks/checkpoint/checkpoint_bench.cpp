// Index parsing against nlohmann::json on a DeepSeek-R1-sized index (92,000 entries, 8.9 MB),
// and opening a checkpoint of 163 shards with the index and every header validated. Google
// Benchmark; both sides run in the same process on the same bytes, warm page cache. At exit
// the medians' ratios are printed (BENCHMARKS.md).
//
//   checkpoint_bench [--entries=92000] [--shards=163] [--tensor-bytes=16] [google benchmark flags]
//
// --tensor-bytes (a multiple of 4) sizes each tensor; past 1 MiB of data a shard's data is a
// hole (sparse file), so a few shards of gigabytes cost no disk.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/index.hpp"

namespace fs = std::filesystem;

namespace {

std::string shard_name(int i, int n) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05d-of-%06d.safetensors", i + 1, n);
    return buf;
}

// DeepSeek-R1-like names: 61 layers of attention, norms, 256 experts x 3 projections, each
// FP8 weight with its weight_scale_inv.
std::vector<std::string> tensor_names(std::size_t n) {
    std::vector<std::string> names;
    names.reserve(n);
    names.emplace_back("model.embed_tokens.weight");
    for (int layer = 0; names.size() < n; ++layer) {
        const std::string p = "model.layers." + std::to_string(layer) + ".";
        for (const char* s : {"input_layernorm.weight", "post_attention_layernorm.weight",
                              "self_attn.kv_a_layernorm.weight", "self_attn.q_a_proj.weight",
                              "self_attn.q_a_proj.weight_scale_inv", "self_attn.kv_b_proj.weight",
                              "mlp.gate.weight", "mlp.gate.e_score_correction_bias"}) {
            names.push_back(p + s);
        }
        for (int e = 0; e < 256 && names.size() < n; ++e) {
            for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
                const std::string q = p + "mlp.experts." + std::to_string(e) + "." + proj;
                names.push_back(q + ".weight");
                names.push_back(q + ".weight_scale_inv");
            }
        }
    }
    names.resize(n);
    return names;
}

std::string index_json(const std::vector<std::string>& names, int shards, std::uint64_t total) {
    std::string s = "{\n  \"metadata\": {\n    \"total_size\": " + std::to_string(total) +
                    "\n  },\n  \"weight_map\": {\n";
    for (std::size_t i = 0; i < names.size(); ++i) {
        const int shard = static_cast<int>(i * static_cast<std::size_t>(shards) / names.size());
        s += "    \"" + names[i] + "\": \"" + shard_name(shard, shards) + "\"";
        s += i + 1 < names.size() ? ",\n" : "\n";
    }
    s += "  }\n}\n";
    return s;
}

void write_file(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file of `names`, each an F8_E4M3 [bytes / 4, 4] tensor; `data` is set
// to the size of the data, which is left out past 1 MiB (written as a hole).
std::string shard_bytes(const std::vector<std::string>& names, std::size_t first, std::size_t last,
                        std::uint64_t bytes, std::uint64_t& data) {
    std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
    std::uint64_t off = 0;
    for (std::size_t i = first; i < last; ++i) {
        header += ",\"" + names[i] + "\":{\"dtype\":\"F8_E4M3\",\"shape\":[" +
                  std::to_string(bytes / 4) + ",4],\"data_offsets\":[" + std::to_string(off) + "," +
                  std::to_string(off + bytes) + "]}";
        off += bytes;
    }
    header += "}";
    while (header.size() % 8 != 0) header += ' ';
    std::string out(8, '\0');
    const std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
    out += header;
    data = off;
    if (off <= (std::uint64_t{1} << 20)) out.append(static_cast<std::size_t>(off), '\x11');
    return out;
}

struct fixture {
    std::size_t entries = 92000;
    int shards = 163;
    std::uint64_t tensor_bytes = 16;
    std::vector<std::string> names;
    std::string json;
    simdjson::padded_string padded;
    fs::path dir;

    void make() {
        names = tensor_names(entries);
        json = index_json(names, shards, entries * tensor_bytes);
        padded = simdjson::padded_string(json);
        dir = fs::temp_directory_path() / ("safeshard-bench-ckpt-" + std::to_string(::getpid()));
        fs::remove_all(dir);
        fs::create_directories(dir);
        std::size_t first = 0;
        for (int s = 0; s < shards; ++s) {
            std::size_t last = first;
            while (last < names.size() &&
                   static_cast<int>(last * static_cast<std::size_t>(shards) / names.size()) == s) {
                ++last;
            }
            std::uint64_t data_bytes = 0;
            const std::string bytes = shard_bytes(names, first, last, tensor_bytes, data_bytes);
            const fs::path p = dir / shard_name(s, shards);
            write_file(p, bytes);
            if (data_bytes > (std::uint64_t{1} << 20))
                fs::resize_file(p, bytes.size() + data_bytes);
            first = last;
        }
        write_file(dir / "model.safetensors.index.json", json);
        (void)safeshard::checkpoint::open(dir.string());  // warm the page cache
    }
};

fixture& data() {
    static fixture f;
    return f;
}

void set_json_bytes(benchmark::State& st) {
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * data().json.size()));
    st.counters["entries"] = static_cast<double>(data().entries);
}

// The index parsed from a padded buffer (as index files are read) and the weight_map built.
void BM_index_safeshard(benchmark::State& st) {
    for (auto _ : st) {
        const auto ix = safeshard::safetensors_index::parse_padded(data().padded);
        benchmark::DoNotOptimize(ix.size());
    }
    set_json_bytes(st);
}
// The same from a std::string: the copy into a padded buffer is paid too.
void BM_index_safeshard_from_string(benchmark::State& st) {
    for (auto _ : st) {
        const auto ix = safeshard::safetensors_index::parse(std::string_view(data().json));
        benchmark::DoNotOptimize(ix.size());
    }
    set_json_bytes(st);
}
// The index file read and parsed (page cache warm).
void BM_index_safeshard_load(benchmark::State& st) {
    const fs::path p = data().dir / "model.safetensors.index.json";
    for (auto _ : st) {
        const auto ix = safeshard::safetensors_index::load(p);
        benchmark::DoNotOptimize(ix.size());
    }
    set_json_bytes(st);
}
void BM_index_nlohmann_parse(benchmark::State& st) {
    for (auto _ : st) {
        const auto j = nlohmann::json::parse(data().json);
        benchmark::DoNotOptimize(j.size());
    }
    set_json_bytes(st);
}
void BM_index_nlohmann_map(benchmark::State& st) {
    for (auto _ : st) {
        const auto j = nlohmann::json::parse(data().json);
        std::unordered_map<std::string, std::string> wm;
        for (const auto& [k, v] : j.at("weight_map").items()) wm.emplace(k, v.get<std::string>());
        benchmark::DoNotOptimize(wm.size());
    }
    set_json_bytes(st);
}

void set_per_shard(benchmark::State& st) {
    st.counters["shards"] = data().shards;
    st.counters["per_shard"] = benchmark::Counter(
        static_cast<double>(data().shards) * static_cast<double>(st.iterations()),
        benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
// checkpoint::open: the index parsed and checked, every shard mapped and its header validated.
void BM_checkpoint_open(benchmark::State& st) {
    for (auto _ : st) {
        const auto c = safeshard::checkpoint::open(data().dir.string());
        benchmark::DoNotOptimize(c.tensor_count());
    }
    set_per_shard(st);
}
// Of which: the shards' file_views alone.
void BM_checkpoint_file_views(benchmark::State& st) {
    for (auto _ : st) {
        for (int s = 0; s < data().shards; ++s) {
            const safeshard::file_view v(data().dir / shard_name(s, data().shards));
            benchmark::DoNotOptimize(v.size());
        }
    }
    set_per_shard(st);
}

BENCHMARK(BM_index_safeshard)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_index_safeshard_from_string)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_index_safeshard_load)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_index_nlohmann_parse)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_index_nlohmann_map)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_checkpoint_open)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_checkpoint_file_views)->Unit(benchmark::kMillisecond);

// Keeps each run's wall time per iteration (median aggregate when repetitions are asked for)
// to print the ratios the goals are stated in.
class ratio_reporter : public benchmark::ConsoleReporter {
public:
    void ReportRuns(const std::vector<Run>& runs) override {
        ConsoleReporter::ReportRuns(runs);
        for (const Run& r : runs) {
            if (r.error_occurred) continue;
            const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
            if (r.run_type == Run::RT_Iteration || median) {
                const std::string name = r.run_name.function_name;
                if (median || !seen_median_.contains(name)) times_[name] = r.GetAdjustedRealTime();
                if (median) seen_median_[name] = true;
            }
        }
    }
    void print_ratios() const {
        const auto t = [&](const char* n) {
            const auto it = times_.find(n);
            return it == times_.end() ? 0.0 : it->second;
        };
        const double ours = t("BM_index_safeshard");
        if (ours > 0 && t("BM_index_nlohmann_parse") > 0)
            std::printf("index: safeshard parse + weight_map is %.1fx faster than nlohmann parse\n",
                        t("BM_index_nlohmann_parse") / ours);
        if (ours > 0 && t("BM_index_nlohmann_map") > 0)
            std::printf("index: %.1fx faster than nlohmann parse + unordered_map\n",
                        t("BM_index_nlohmann_map") / ours);
        if (t("BM_index_safeshard_load") > 0 && t("BM_index_nlohmann_parse") > 0)
            std::printf("index: read from the file and parsed: %.1fx faster than nlohmann parse\n",
                        t("BM_index_nlohmann_parse") / t("BM_index_safeshard_load"));
        if (t("BM_checkpoint_open") > 0)
            std::printf("checkpoint::open of %d shards: %.2f ms (%.0f us per shard)\n",
                        data().shards, t("BM_checkpoint_open"),
                        t("BM_checkpoint_open") * 1e3 / data().shards);
    }

private:
    std::map<std::string, double> times_;
    std::map<std::string, bool> seen_median_;
};

}  // namespace

int main(int argc, char** argv) {
    std::vector<char*> rest;
    for (int i = 0; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a.starts_with("--entries="))
            data().entries = std::strtoull(argv[i] + 10, nullptr, 10);
        else if (a.starts_with("--shards="))
            data().shards = std::atoi(argv[i] + 9);
        else if (a.starts_with("--tensor-bytes="))
            data().tensor_bytes = std::strtoull(argv[i] + 15, nullptr, 10);
        else
            rest.push_back(argv[i]);
    }
    int n = static_cast<int>(rest.size());
    benchmark::Initialize(&n, rest.data());
    if (data().entries == 0 || data().shards <= 0 || data().tensor_bytes == 0 ||
        data().tensor_bytes % 4 != 0) {
        std::fprintf(stderr,
                     "checkpoint_bench: --entries and --shards must be positive, "
                     "--tensor-bytes a positive multiple of 4\n");
        return 2;
    }
    data().make();
    std::printf("index: %zu entries, %d shards, %.2f MB of JSON\n", data().entries, data().shards,
                static_cast<double>(data().json.size()) / 1e6);
    ratio_reporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    reporter.print_ratios();
    fs::remove_all(data().dir);
    benchmark::Shutdown();
    return 0;
}
