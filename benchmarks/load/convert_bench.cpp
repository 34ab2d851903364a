// Conversion throughput on one thread, against a plain memcpy of the output bytes in the same run.
//
// Each pair converts n elements where the larger of its two buffers is 64 MiB (past the caches,
// like a tensor being loaded); memcpy_<bytes> copies as many bytes as that conversion writes.
// After the usual table, a summary prints each conversion's median time as a ratio of memcpy's
// (>= 1 means the conversion writes its output at least as fast as memcpy writes the same bytes).
#include "safeshard/load/convert.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

using safeshard::dtype;
using safeshard::detail::convert_isa;

constexpr std::size_t big = std::size_t{64} << 20;
constexpr std::size_t hot = std::size_t{256} << 10;  // fits L2: the kernels' own speed

struct pair_case {
    dtype from;
    dtype to;
};

constexpr pair_case cases[] = {
    {dtype::bf16, dtype::f32}, {dtype::f32, dtype::bf16},     {dtype::f16, dtype::f32},
    {dtype::f32, dtype::f16},  {dtype::f8_e4m3, dtype::bf16}, {dtype::f64, dtype::f32},
};

std::size_t elements_for(pair_case c, std::size_t larger_buffer) {
    return larger_buffer / std::max(safeshard::byte_size(c.from), safeshard::byte_size(c.to));
}

std::string size_name(std::size_t bytes) {
    return bytes >= (1u << 20) ? std::to_string(bytes >> 20) + "MiB"
                               : std::to_string(bytes >> 10) + "KiB";
}

// Source bytes that decode to ordinary weights (small normal numbers of both signs, a few zeros),
// so no path is timed on unrealistic NaN-only or zero-only data.
std::vector<std::byte> make_source(dtype t, std::size_t n) {
    std::mt19937 rng(42);
    std::normal_distribution<float> weight(0.0f, 0.02f);
    std::vector<std::byte> out(n * safeshard::byte_size(t));
    if (t == dtype::f8_e4m3) {  // no f32 -> f8 converter: random finite codes
        for (auto& b : out) {
            auto x = static_cast<std::uint8_t>(rng());
            b = static_cast<std::byte>((x & 0x7f) == 0x7f ? 0x3c : x);
        }
        return out;
    }
    const auto from_f32 = safeshard::find_converter(dtype::f32, t);
    std::vector<float> chunk(4096);
    for (std::size_t done = 0; done < n; done += chunk.size()) {
        const std::size_t k = std::min(chunk.size(), n - done);
        for (std::size_t i = 0; i < k; ++i) chunk[i] = weight(rng);
        from_f32(reinterpret_cast<const std::byte*>(chunk.data()),
                 out.data() + from_f32.dst_bytes(done), k);
    }
    return out;
}

void bm_convert(benchmark::State& state, pair_case c, convert_isa isa, std::size_t larger_buffer) {
    const std::size_t n = elements_for(c, larger_buffer);
    const auto conv = safeshard::detail::find_converter_for(c.from, c.to, isa);
    const auto src = make_source(c.from, n);
    std::vector<std::byte> dst(conv.dst_bytes(n), std::byte{1});  // touched: no page faults timed
    for (auto _ : state) {
        conv(src.data(), dst.data(), n);
        benchmark::DoNotOptimize(dst.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * conv.dst_bytes(n)));
    state.counters["out_MiB"] = static_cast<double>(conv.dst_bytes(n)) / (1 << 20);
}

void bm_memcpy(benchmark::State& state, std::size_t bytes) {
    std::vector<std::byte> src(bytes, std::byte{3});
    std::vector<std::byte> dst(bytes, std::byte{1});
    for (auto _ : state) {
        std::memcpy(dst.data(), src.data(), bytes);
        benchmark::DoNotOptimize(dst.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
}

// A second yardstick: a copy loop the compiler vectorises (16/32-byte moves), in case the C
// library's memcpy is slow on a machine (rep movsb on some virtualised AMD parts).
constexpr std::uint32_t identity(std::uint32_t x) noexcept { return x; }
using copy_op = safeshard::detail::element_op<std::uint32_t, std::uint32_t, &identity>;

void bm_copy_loop(benchmark::State& state, std::size_t bytes) {
    std::vector<std::byte> src(bytes, std::byte{3});
    std::vector<std::byte> dst(bytes, std::byte{1});
    const auto kernel =
        safeshard::detail::pick_kernel<copy_op>(safeshard::detail::best_convert_isa());
    for (auto _ : state) {
        kernel(src.data(), dst.data(), bytes / 4);
        benchmark::DoNotOptimize(dst.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
}

std::string pair_name(pair_case c) {
    return std::string(safeshard::name(c.from)) + "_to_" + std::string(safeshard::name(c.to));
}

std::string memcpy_name(std::size_t bytes) { return "memcpy/" + size_name(bytes); }
std::string copy_loop_name(std::size_t bytes) { return "copy_loop/" + size_name(bytes); }

// Prints the usual table, then each conversion's time against memcpy of its output bytes
// (medians when repetitions are asked for, else the single run), by wall and by CPU time.
class ratio_reporter : public benchmark::ConsoleReporter {
public:
    void ReportRuns(const std::vector<Run>& runs) override {
        ConsoleReporter::ReportRuns(runs);
        for (const auto& r : runs) {
            if (r.error_occurred) continue;
            const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
            if (r.run_type == Run::RT_Aggregate && !median) continue;
            auto& slot = times_[r.run_name.function_name];
            if (median || !slot.median)
                slot = {r.GetAdjustedRealTime(), r.GetAdjustedCPUTime(), median};
        }
    }

    void Finalize() override {
        ConsoleReporter::Finalize();
        std::printf(
            "\nconversion vs memcpy of the output bytes, ratio = memcpy time / conversion time\n"
            "(last column: the same by CPU time against a vectorised copy loop)\n");
        std::printf("  %-40s %9s %9s %6s   %9s %9s %6s   %9s %6s\n", "", "wall ms", "memcpy",
                    "ratio", "cpu ms", "memcpy", "ratio", "loop ms", "ratio");
        for (const std::size_t size : {big, hot})
            for (const auto& c : cases)
                for (const char* isa : {"portable", "avx2"}) {
                    const std::string name =
                        "convert/" + pair_name(c) + "/" + size_name(size) + "/" + isa;
                    const auto conv = times_.find(name);
                    const std::size_t out = safeshard::byte_size(c.to) * elements_for(c, size);
                    const auto copy = times_.find(memcpy_name(out));
                    const auto loop = times_.find(copy_loop_name(out));
                    if (conv == times_.end() || copy == times_.end()) continue;
                    const entry& a = conv->second;
                    const entry& b = copy->second;
                    const entry l = loop == times_.end() ? entry{} : loop->second;
                    std::printf("  %-40s %9.3f %9.3f %6.2f   %9.3f %9.3f %6.2f   %9.3f %6.2f\n",
                                name.c_str(), a.real, b.real, b.real / a.real, a.cpu, b.cpu,
                                b.cpu / a.cpu, l.cpu, l.cpu / a.cpu);
                }
    }

private:
    struct entry {
        double real = 0;  // in the benchmarks' unit (ms)
        double cpu = 0;
        bool median = false;
    };
    std::map<std::string, entry> times_;
};

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::size_t> copy_sizes;
    for (const std::size_t size : {big, hot})
        for (const auto& c : cases) {
            const std::string base = "convert/" + pair_name(c) + "/" + size_name(size);
            benchmark::RegisterBenchmark((base + "/portable").c_str(), bm_convert, c,
                                         convert_isa::portable, size)
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
            if (safeshard::detail::cpu_has_avx2())
                benchmark::RegisterBenchmark((base + "/avx2").c_str(), bm_convert, c,
                                             convert_isa::avx2, size)
                    ->Unit(benchmark::kMillisecond)
                    ->UseRealTime();
            const std::size_t out = safeshard::byte_size(c.to) * elements_for(c, size);
            if (std::find(copy_sizes.begin(), copy_sizes.end(), out) == copy_sizes.end())
                copy_sizes.push_back(out);
        }
    for (const std::size_t bytes : copy_sizes) {
        benchmark::RegisterBenchmark(memcpy_name(bytes).c_str(), bm_memcpy, bytes)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
        benchmark::RegisterBenchmark(copy_loop_name(bytes).c_str(), bm_copy_loop, bytes)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    ratio_reporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    benchmark::Shutdown();
    return 0;
}
