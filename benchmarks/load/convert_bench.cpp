// Conversion throughput on one thread, against a plain memcpy of the output bytes in the same run.
//
// Each pair converts n elements where the larger of its two buffers is 64 MiB (past the caches,
// like a tensor being loaded); memcpy_<bytes> copies as many bytes as that conversion writes.
// The dequantizing conversions (dequantize/...) write a 64 MiB BF16 tensor of 4096 columns row
// by row, as a load's copy calls them: FP8 E4M3 with F32 scales of 128x128 blocks (DeepSeek-V3),
// MXFP4 (E2M1 two a byte, an E8M0 scale per 32 values: gpt-oss's experts), NVFP4 (E4M3 scales
// per 16 values times a global F32 scale: ModelOpt).
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

// A dequantizing conversion to BF16 of a [dequant_rows, dequant_cols] tensor.
struct dequant_case {
    const char* label;
    dtype values;
    dtype scales;
    std::uint64_t block_rows;
    std::uint64_t block_cols;
    bool global;
};

constexpr std::uint64_t dequant_cols = 4096;
constexpr std::uint64_t dequant_rows = big / 2 / dequant_cols;  // a 64 MiB BF16 output

constexpr dequant_case dequant_cases[] = {
    {"fp8_block128", dtype::f8_e4m3, dtype::f32, 128, 128, false},
    {"mxfp4", dtype::f4, dtype::f8_e8m0, 1, 32, false},
    {"nvfp4", dtype::f4, dtype::f8_e4m3, 1, 16, true},
};

// Scale codes of ordinary magnitude: E8M0 2^-10..2^-1; E4M3 and F32 small positive numbers.
std::vector<std::byte> make_scales(dtype t, std::size_t n) {
    std::mt19937 rng(7);
    std::vector<std::byte> out(n * safeshard::byte_size(t));
    if (t == dtype::f32) {
        std::uniform_real_distribution<float> u(1e-4f, 1e-2f);
        for (std::size_t i = 0; i < n; ++i) {
            const float x = u(rng);
            std::memcpy(out.data() + 4 * i, &x, 4);
        }
        return out;
    }
    for (auto& b : out)  // E8M0: 117..126; E4M3: 0x20..0x3f (positive normals)
        b = static_cast<std::byte>(t == dtype::f8_e8m0 ? 117 + rng() % 10 : 0x20 + rng() % 32);
    return out;
}

void bm_dequantize(benchmark::State& state, dequant_case c, convert_isa isa) {
    using namespace safeshard;
    const std::uint64_t grid_rows = (dequant_rows + c.block_rows - 1) / c.block_rows;
    const std::uint64_t grid_cols = (dequant_cols + c.block_cols - 1) / c.block_cols;
    const auto scales = make_scales(c.scales, grid_rows * grid_cols);
    const float global = 1.0f / 448.0f;
    dequant_view view;
    view.rows = dequant_rows;
    view.cols = dequant_cols;
    view.scales = {.data = scales.data(),
                   .type = c.scales,
                   .block_rows = c.block_rows,
                   .block_cols = c.block_cols,
                   .row_step = grid_cols};
    std::vector<convert_input> inputs{{convert_role::values, c.values},
                                      {convert_role::scales, c.scales}};
    if (c.global) {
        view.global = {.data = reinterpret_cast<const std::byte*>(&global), .type = dtype::f32};
        view.global.per_part = true;
        inputs.push_back({convert_role::global_scales, dtype::f32});
    }
    const converter conv = detail::find_dequantizer_for(inputs, dtype::bf16, &view, isa);
    const std::uint64_t n = dequant_rows * dequant_cols;
    std::vector<std::byte> src(conv.src_bytes(n));
    std::mt19937 rng(3);
    for (auto& b : src) {  // FP8: finite codes; FP4: any two codes
        const auto x = static_cast<std::uint8_t>(rng());
        b = static_cast<std::byte>(c.values == dtype::f8_e4m3 && (x & 0x7f) == 0x7f ? 0x3c : x);
    }
    std::vector<std::byte> dst(n * 2, std::byte{1});
    const converter placed = conv.placed(0, dequant_cols * 2);
    for (auto _ : state) {
        for (std::uint64_t r = 0; r < dequant_rows; ++r)
            placed.row(r)(src.data() + conv.src_bytes(r * dequant_cols),
                          dst.data() + r * dequant_cols * 2, dequant_cols);
        benchmark::DoNotOptimize(dst.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * dst.size()));
    state.counters["out_MiB"] = static_cast<double>(dst.size()) / (1 << 20);
}

std::string dequant_name(const dequant_case& c, const char* isa) {
    return std::string("dequantize/") + c.label + "_to_BF16/" + size_name(big) + "/" + isa;
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
                for (const char* isa : {"portable", "avx2"})
                    print_row("convert/" + pair_name(c) + "/" + size_name(size) + "/" + isa,
                              safeshard::byte_size(c.to) * elements_for(c, size));
        for (const auto& c : dequant_cases)
            for (const char* isa : {"portable", "avx2"}) print_row(dequant_name(c, isa), big);
    }

private:
    struct entry {
        double real = 0;  // in the benchmarks' unit (ms)
        double cpu = 0;
        bool median = false;
    };
    std::map<std::string, entry> times_;

    // Conversion `name`'s times against memcpy's and the copy loop's of its `out` bytes.
    void print_row(const std::string& name, std::size_t out) const {
        const auto conv = times_.find(name);
        const auto copy = times_.find(memcpy_name(out));
        const auto loop = times_.find(copy_loop_name(out));
        if (conv == times_.end() || copy == times_.end()) return;
        const entry& a = conv->second;
        const entry& b = copy->second;
        const entry l = loop == times_.end() ? entry{} : loop->second;
        std::printf("  %-40s %9.3f %9.3f %6.2f   %9.3f %9.3f %6.2f   %9.3f %6.2f\n", name.c_str(),
                    a.real, b.real, b.real / a.real, a.cpu, b.cpu, b.cpu / a.cpu, l.cpu,
                    l.cpu / a.cpu);
    }
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
    for (const auto& c : dequant_cases) {
        benchmark::RegisterBenchmark(dequant_name(c, "portable").c_str(), bm_dequantize, c,
                                     convert_isa::portable)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
        if (safeshard::detail::cpu_has_avx2())
            benchmark::RegisterBenchmark(dequant_name(c, "avx2").c_str(), bm_dequantize, c,
                                         convert_isa::avx2)
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
    }
    if (std::find(copy_sizes.begin(), copy_sizes.end(), big) == copy_sizes.end())
        copy_sizes.push_back(big);
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
