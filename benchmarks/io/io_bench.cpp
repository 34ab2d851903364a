// Read paths out of one file, each against memcpy of the same bytes (the physical limit).
// SAFESHARD_BENCH_FILE_MIB sets the file size (default 256); the file lives in TMPDIR or /tmp.
#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/io/atomic_file.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/mapped_file.hpp"

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;

std::size_t file_bytes() {
    const char* mib = std::getenv("SAFESHARD_BENCH_FILE_MIB");
    return static_cast<std::size_t>(mib != nullptr ? std::atoll(mib) : 256) << 20;
}

// The benchmark file, written once (through atomic_file) and removed at exit.
const fs::path& bench_file() {
    struct file {
        fs::path path;
        file() {
            path = fs::temp_directory_path() /
                   ("safeshard-io-bench-" + std::to_string(::getpid()) + ".bin");
            std::vector<std::byte> chunk(1 << 20);
            for (std::size_t i = 0; i < chunk.size(); ++i)
                chunk[i] = static_cast<std::byte>(i * 131 + 7);
            safeshard::atomic_file f(path);
            for (std::size_t done = 0; done < file_bytes(); done += chunk.size()) f.write(chunk);
            f.commit();
        }
        ~file() {
            std::error_code ec;
            fs::remove(path, ec);
        }
    };
    static const file f;
    return f.path;
}

// The physical limit: memcpy of as many bytes between two warm host buffers.
void bm_memcpy(benchmark::State& state) {
    const std::size_t n = file_bytes();
    std::vector<std::byte> src(n, std::byte{1}), dst(n);
    for (auto _ : state) {
        std::memcpy(dst.data(), src.data(), n);
        benchmark::DoNotOptimize(dst.data());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

// pread of the whole (page-cached) file in chunks of range(0) bytes into one buffer.
void bm_pread(benchmark::State& state) {
    safeshard::file_reader r(bench_file());
    const auto chunk = static_cast<std::size_t>(state.range(0));
    std::vector<std::byte> dst(r.size());
    for (auto _ : state) {
        for (std::size_t off = 0; off < dst.size(); off += chunk)
            r.read_exact(std::span(dst).subspan(off, std::min(chunk, dst.size() - off)), off);
        benchmark::DoNotOptimize(dst.data());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * dst.size()));
}

// A fresh map per iteration, copied out: what the zero-copy view costs for bulk loads.
void bm_mmap_copy(benchmark::State& state) {
    const auto advice = static_cast<safeshard::access_advice>(state.range(0));
    std::vector<std::byte> dst(file_bytes());
    for (auto _ : state) {
        safeshard::mapped_file m(bench_file(), advice);
        std::memcpy(dst.data(), m.data(), m.size());
        benchmark::DoNotOptimize(dst.data());
    }
    state.SetLabel(std::string(safeshard::to_string(advice)));
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * dst.size()));
}

// O_DIRECT into an aligned buffer (storage speed, page cache bypassed), or the fallback.
void bm_direct(benchmark::State& state) {
    safeshard::file_reader r(bench_file(), {.direct = true});
    const auto chunk = static_cast<std::size_t>(state.range(0));
    safeshard::aligned_buffer dst(r.size());
    for (auto _ : state) {
        for (std::size_t off = 0; off < dst.size(); off += chunk)
            r.read_exact(dst.bytes().subspan(off, std::min(chunk, dst.size() - off)), off);
        benchmark::DoNotOptimize(dst.data());
    }
    state.SetLabel(r.direct() ? "O_DIRECT" : std::string(r.fallback_note()));
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * dst.size()));
}

}  // namespace

BENCHMARK(bm_memcpy)->Unit(benchmark::kMillisecond);
BENCHMARK(bm_pread)->Arg(1 << 20)->Arg(16 << 20)->Unit(benchmark::kMillisecond);
BENCHMARK(bm_mmap_copy)
    ->Arg(static_cast<int>(safeshard::access_advice::normal))
    ->Arg(static_cast<int>(safeshard::access_advice::sequential))
    ->Arg(static_cast<int>(safeshard::access_advice::willneed))
    ->Unit(benchmark::kMillisecond);
BENCHMARK(bm_direct)->Arg(1 << 20)->Arg(16 << 20)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
