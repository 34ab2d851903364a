// Per-rank export and loading an exported rank, each against its yardstick in the same run:
//  - export_checkpoint for a world of 4 against pread of the input plus write + fsync of the
//    bytes the export writes (into 4 files): the least any export must do;
//  - one rank loading its export folder against the same rank loading its slices from the
//    original checkpoint (the loader both times, files in the page cache).
// A generated llama-like BF16 checkpoint of about 240 MB is written under /tmp (or
// $SAFESHARD_BENCH_DIR) and removed at exit. Each repetition runs the pair once, interleaved.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "../../tests/load/model_gen.hpp"
#include "safeshard/core/clock.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/save/export.hpp"

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

using safeshard::seconds_since;

constexpr std::uint32_t world = 4;
constexpr std::uint32_t rank = 1;

struct fixture {
    fs::path work;
    fs::path in;
    fs::path kept;  // an export kept for the load benchmark
    std::uint64_t input_bytes = 0;
    std::uint64_t export_written = 0;
    std::uint64_t rank_bytes = 0;

    fixture() {
        const char* dir = std::getenv("SAFESHARD_BENCH_DIR");
        work =
            fs::path(dir ? dir : "/tmp") / ("safeshard-export-bench-" + std::to_string(::getpid()));
        in = work / "in";
        kept = work / "kept";
        fs::create_directories(in);
        safeshard::test::model_spec m;
        m.layers = 6;
        m.hidden = 1024;
        m.intermediate = 4096;
        m.heads = 16;
        m.kv_heads = 4;
        m.head_dim = 64;
        m.vocab = 16000;
        m.shards = 4;
        safeshard::test::write_checkpoint(in, m, safeshard::test::make_tensors(m));
        for (const auto& e : fs::directory_iterator(in)) input_bytes += fs::file_size(e.path());
        safeshard::export_options o;
        o.world = world;
        const auto rep =
            safeshard::export_checkpoint(safeshard::checkpoint::open(in.string()), kept, o);
        export_written = rep.bytes_written;
        for (const auto& e : fs::directory_iterator(kept / safeshard::export_rank_folder(rank)))
            if (e.path().extension() == ".safetensors") rank_bytes += fs::file_size(e.path());
    }
    ~fixture() {
        std::error_code ec;
        fs::remove_all(work, ec);
    }
};

fixture& fx() {
    static fixture f;
    return f;
}

// pread every input file in 8 MiB chunks; write `bytes` into `files` files in `out`, fsync each.
double read_plus_write(const fs::path& in, const fs::path& out, std::uint64_t bytes, int files) {
    fs::create_directories(out);
    std::vector<char> buf(8u << 20);
    const auto t0 = clock_type::now();
    for (const auto& e : fs::directory_iterator(in)) {
        const int fd = ::open(e.path().c_str(), O_RDONLY);
        for (off_t off = 0;;) {
            const ssize_t n = ::pread(fd, buf.data(), buf.size(), off);
            if (n <= 0) break;
            off += n;
        }
        ::close(fd);
    }
    const std::uint64_t per_file = bytes / static_cast<std::uint64_t>(files);
    for (int f = 0; f < files; ++f) {
        std::string name = "f";  // (not "f" + to_string: g++ 12 -O3 warns -Wrestrict there)
        name += std::to_string(f);
        const int fd = ::open((out / name).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        for (std::uint64_t done = 0; done < per_file;) {
            const auto n =
                static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), per_file - done));
            const ssize_t w = ::write(fd, buf.data(), n);
            if (w <= 0) {
                std::perror("write");
                std::exit(1);
            }
            done += static_cast<std::uint64_t>(w);
        }
        ::fsync(fd);
        ::close(fd);
    }
    const double s = seconds_since(t0);
    fs::remove_all(out);
    return s;
}

void BM_export_world4(benchmark::State& state) {
    fixture& f = fx();
    const auto ckpt = safeshard::checkpoint::open(f.in.string());
    double limit_s = 0, export_s = 0;
    for (auto _ : state) {
        limit_s += read_plus_write(f.in, f.work / "limit", f.export_written, world);
        safeshard::export_options o;
        o.world = world;
        o.overlap_io = state.range(0) != 0;
        const auto t0 = clock_type::now();
        const auto rep = safeshard::export_checkpoint(ckpt, f.work / "ex", o);
        const double s = seconds_since(t0);
        benchmark::DoNotOptimize(rep.bytes_written);
        export_s += s;
        state.SetIterationTime(s);
        fs::remove_all(f.work / "ex");
    }
    const double n = static_cast<double>(state.iterations());
    state.counters["written_GBps"] = static_cast<double>(f.export_written) / 1e9 / (export_s / n);
    state.counters["limit_GBps"] = static_cast<double>(f.export_written) / 1e9 / (limit_s / n);
    state.counters["ratio_to_limit"] = limit_s / export_s;
    state.counters["input_MB"] = static_cast<double>(f.input_bytes) / 1e6;
}
// Arg: 1 = the next tensor read while this one is written, 0 = one after the other (default).
BENCHMARK(BM_export_world4)
    ->Arg(1)
    ->Arg(0)
    ->UseManualTime()
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

void BM_load_rank_from_export(benchmark::State& state) {
    fixture& f = fx();
    const std::string exported = (f.kept / safeshard::export_rank_folder(rank)).string();
    const std::string original = f.in.string();
    double original_s = 0, export_s = 0;
    for (auto _ : state) {
        auto t0 = clock_type::now();
        {
            auto m =
                safeshard::load<safeshard::host_tensor>(original, {.rank = rank, .world = world});
            benchmark::DoNotOptimize(m.tensors().data());
        }
        original_s += seconds_since(t0);
        t0 = clock_type::now();
        {
            auto m =
                safeshard::load<safeshard::host_tensor>(exported, {.rank = rank, .world = world});
            benchmark::DoNotOptimize(m.tensors().data());
        }
        const double s = seconds_since(t0);
        export_s += s;
        state.SetIterationTime(s);
    }
    const double n = static_cast<double>(state.iterations());
    state.counters["rank_MB"] = static_cast<double>(f.rank_bytes) / 1e6;
    state.counters["export_GBps"] = static_cast<double>(f.rank_bytes) / 1e9 / (export_s / n);
    state.counters["original_GBps"] = static_cast<double>(f.rank_bytes) / 1e9 / (original_s / n);
    state.counters["speedup_vs_original"] = original_s / export_s;
}
BENCHMARK(BM_load_rank_from_export)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
