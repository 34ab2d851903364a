// Opening files whose tensor names were crafted against an unkeyed hash (hash flooding):
// names whose libstdc++ std::hash falls into the first sixteenth of the library's name table
// (one probe cluster under that hash), against ordinary names of the same length, in
//   - one safetensors file (file_view over its bytes in memory), 200,000 tensors;
//   - a checkpoint folder: model.safetensors.index.json + one shard (checkpoint::open_path,
//     the index parsed, the header validated, every indexed name looked up), 100,000 tensors.
// Both sides run in the same process on the same machine. At exit the ratios of the medians
// (crafted ÷ ordinary) are printed; the goal is at most 1.5 (BENCHMARKS.md).
//
//   name_flood_bench [--names=200000] [--checkpoint_names=100000] [google benchmark flags]
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <benchmark/benchmark.h>

#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/safetensors.hpp"

namespace fs = std::filesystem;

namespace {

std::size_t file_names = 200'000;
std::size_t checkpoint_names = 100'000;

std::string tensor_name(std::uint64_t k) {
    return "model.layers." + std::to_string(k) + ".mlp.down_proj.weight";
}

// The library's table for n names: a power of two, at least 2n slots.
std::size_t table_slots(std::size_t n) {
    std::size_t cap = 16;
    while (cap < n * 2) cap *= 2;
    return cap;
}

// n names numbered from 1,000,000 (seven digits, as the crafted ones).
std::vector<std::string> ordinary_names(std::size_t n) {
    std::vector<std::string> out;
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) out.push_back(tensor_name(1'000'000 + i));
    return out;
}

// n names whose std::hash lands in the first sixteenth of the table: found by brute force
// (about 16 hashes a name; the numbers stay below 10^7, so the names keep seven digits).
std::vector<std::string> crafted_names(std::size_t n) {
    const std::size_t slots = table_slots(n);
    std::vector<std::string> out;
    out.reserve(n);
    for (std::uint64_t k = 1'000'000; out.size() < n; ++k) {
        std::string name = tensor_name(k);
        if ((std::hash<std::string_view>{}(name) & (slots - 1)) < slots / 16)
            out.push_back(std::move(name));
    }
    return out;
}

// A safetensors file of U8 [1] tensors, in the names' order.
std::string safetensors_bytes(const std::vector<std::string>& names) {
    std::string header = "{";
    for (std::size_t i = 0; i < names.size(); ++i) {
        if (i) header += ',';
        header += '"' + names[i] + R"(":{"dtype":"U8","shape":[1],"data_offsets":[)" +
                  std::to_string(i) + ',' + std::to_string(i + 1) + "]}";
    }
    header += '}';
    while (header.size() % 8 != 0) header += ' ';
    std::string out(8, '\0');
    const std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
    out += header;
    out.append(names.size(), '\x01');
    return out;
}

std::string index_json(const std::vector<std::string>& names) {
    std::string s = "{\"metadata\": {\"total_size\": " + std::to_string(names.size()) +
                    "}, \"weight_map\": {\n";
    for (std::size_t i = 0; i < names.size(); ++i) {
        s += "  \"" + names[i] + "\": \"model-00001-of-00001.safetensors\"";
        s += i + 1 < names.size() ? ",\n" : "\n";
    }
    return s + "}}\n";
}

void write_file(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

struct fixture {
    std::string ordinary_file, crafted_file;
    fs::path ordinary_dir, crafted_dir;

    fixture() {
        ordinary_file = safetensors_bytes(ordinary_names(file_names));
        crafted_file = safetensors_bytes(crafted_names(file_names));
        const fs::path root =
            fs::temp_directory_path() / ("safeshard-bench-flood-" + std::to_string(::getpid()));
        fs::remove_all(root);
        ordinary_dir = root / "ordinary";
        crafted_dir = root / "crafted";
        for (const auto& [dir, names] : {std::pair{ordinary_dir, ordinary_names(checkpoint_names)},
                                         std::pair{crafted_dir, crafted_names(checkpoint_names)}}) {
            fs::create_directories(dir);
            write_file(dir / "model-00001-of-00001.safetensors", safetensors_bytes(names));
            write_file(dir / "model.safetensors.index.json", index_json(names));
        }
    }
    ~fixture() {
        std::error_code ec;
        fs::remove_all(ordinary_dir.parent_path(), ec);
    }
};

fixture& data() {
    static fixture f;
    return f;
}

void bm_open_file(benchmark::State& state) {
    const std::string& bytes = state.range(0) ? data().crafted_file : data().ordinary_file;
    const std::span<const std::byte> span(reinterpret_cast<const std::byte*>(bytes.data()),
                                          bytes.size());
    for (auto _ : state) {
        const safeshard::file_view v{span};
        benchmark::DoNotOptimize(v.size());
    }
    state.counters["names"] = static_cast<double>(file_names);
    state.SetLabel(state.range(0) ? "crafted" : "ordinary");
}
BENCHMARK(bm_open_file)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

void bm_open_checkpoint(benchmark::State& state) {
    const fs::path& dir = state.range(0) ? data().crafted_dir : data().ordinary_dir;
    (void)safeshard::checkpoint::open_path(dir);  // the page cache warm
    for (auto _ : state) {
        const auto c = safeshard::checkpoint::open_path(dir);
        benchmark::DoNotOptimize(&c);
    }
    state.counters["names"] = static_cast<double>(checkpoint_names);
    state.SetLabel(state.range(0) ? "crafted" : "ordinary");
}
BENCHMARK(bm_open_checkpoint)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

// Collects the real and CPU time of each run (or the median aggregates, with repetitions) per
// benchmark and argument, and prints the ratios of the medians at the end. On a shared
// machine the CPU time is the steadier of the two.
class ratio_reporter : public benchmark::ConsoleReporter {
public:
    void ReportRuns(const std::vector<Run>& runs) override {
        for (const auto& r : runs) {
            if (r.error_occurred) continue;
            auto& t = times_[r.run_name.str()];
            if (r.run_type == Run::RT_Iteration) {
                t.real.push_back(r.GetAdjustedRealTime());
                t.cpu.push_back(r.GetAdjustedCPUTime());
            } else if (r.aggregate_name == "median") {
                t.real_median = r.GetAdjustedRealTime();
                t.cpu_median = r.GetAdjustedCPUTime();
            }
        }
        ConsoleReporter::ReportRuns(runs);
    }
    void Finalize() override {
        ConsoleReporter::Finalize();
        for (const char* family : {"bm_open_file", "bm_open_checkpoint"}) {
            auto& a = times_[std::string(family) + "/0"];
            auto& b = times_[std::string(family) + "/1"];
            const double ra = median(a.real, a.real_median), rb = median(b.real, b.real_median);
            const double ca = median(a.cpu, a.cpu_median), cb = median(b.cpu, b.cpu_median);
            if (ra > 0 && rb > 0 && ca > 0 && cb > 0)
                std::printf(
                    "%s medians: crafted %.1f ms real, %.1f ms CPU; ordinary %.1f ms real, "
                    "%.1f ms CPU; ratio %.2f real, %.2f CPU\n",
                    family, rb, cb, ra, ca, rb / ra, cb / ca);
        }
    }

private:
    struct samples {
        std::vector<double> real, cpu;
        double real_median = 0, cpu_median = 0;
    };
    static double median(std::vector<double>& v, double aggregate) {
        if (aggregate > 0) return aggregate;
        if (v.empty()) return 0;
        std::sort(v.begin(), v.end());
        return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
    }
    std::map<std::string, samples> times_;
};

}  // namespace

int main(int argc, char** argv) {
    std::vector<char*> rest{argv[0]};
    for (int i = 1; i < argc; ++i) {
        if (std::strncmp(argv[i], "--names=", 8) == 0)
            file_names = std::strtoull(argv[i] + 8, nullptr, 10);
        else if (std::strncmp(argv[i], "--checkpoint_names=", 19) == 0)
            checkpoint_names = std::strtoull(argv[i] + 19, nullptr, 10);
        else
            rest.push_back(argv[i]);
    }
    int n = static_cast<int>(rest.size());
    benchmark::Initialize(&n, rest.data());
    ratio_reporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    benchmark::Shutdown();
    return 0;
}
