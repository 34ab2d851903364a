// The host loader against memcpy, pages in the page cache.
//
// P1: world 1, a 1 GiB checkpoint (8 tensors of 128 MiB) into freshly allocated host tensors,
//     against a memcpy of the same bytes into freshly allocated memory (both pay first touch),
//     on 1 and N threads. Goal: loader / memcpy >= 0.90.
// P2: rank 3 of world 8 of four 4096x14336 BF16 matrices split on dim 1 (rows of 3.5 KiB every
//     28 KiB), against a contiguous load of the same bytes (the same matrices split on dim 0).
//     Goal: >= 0.80, with bytes read / rank bytes <= 1.05 (the engine's count, reported as
//     the counter read_ratio). Modes: per-row pread, whole rows + scatter, mmap copy.
//
// The files go to $SAFESHARD_BENCH_DIR or /tmp and are removed at exit. Run:
//   build/benchmarks/load/load_bench --benchmark_repetitions=5
//   --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"

namespace fs = std::filesystem;
using namespace safeshard;

namespace {

fs::path bench_dir() {
    const char* d = std::getenv("SAFESHARD_BENCH_DIR");
    return fs::path(d ? d : "/tmp") / ("safeshard-load-bench-" + std::to_string(::getpid()));
}

// A file of `count` BF16 tensors of `shape`, filled with a cheap pattern.
void write_file(const fs::path& p, int count, shape s) {
    const std::uint64_t bytes = *s.element_count() * 2;
    std::vector<std::byte> data(bytes);
    std::mt19937_64 rng(1);
    for (std::size_t i = 0; i + 8 <= data.size(); i += 8) {
        const auto v = rng();
        std::memcpy(&data[i], &v, 8);
    }
    std::vector<std::string> names;
    for (int i = 0; i < count; ++i) names.push_back("w" + std::to_string(i));
    std::vector<tensor_data> t;
    for (int i = 0; i < count; ++i) t.push_back({names[i], dtype::bf16, s, data});
    save_file(p, t);
}

void warm(const fs::path& p) {  // into the page cache
    file_reader f(p);
    aligned_buffer b(std::size_t{64} << 20);
    for (std::uint64_t off = 0; off < f.size(); off += b.size())
        f.read_exact(
            {b.data(), static_cast<std::size_t>(std::min<std::uint64_t>(b.size(), f.size() - off))},
            off);
}

struct files {
    fs::path dir = bench_dir();
    fs::path p1 = dir / "p1";
    fs::path p2 = dir / "p2";
    std::optional<checkpoint> c1, c2;
    files() {
        fs::create_directories(p1);
        fs::create_directories(p2);
        write_file(p1 / "model.safetensors", 8, shape{8192, 8192});   // 8 x 128 MiB
        write_file(p2 / "model.safetensors", 4, shape{4096, 14336});  // 4 x 112 MiB
        warm(p1 / "model.safetensors");
        warm(p2 / "model.safetensors");
        c1.emplace(checkpoint::open((p1 / "model.safetensors").string()));
        c2.emplace(checkpoint::open((p2 / "model.safetensors").string()));
    }
    ~files() {
        c1.reset();
        c2.reset();
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
};

files* g = nullptr;

unsigned hw() { return std::max(1u, std::thread::hardware_concurrency()); }

// ---- P1 ----

void BM_p1_memcpy(benchmark::State& st) {
    const auto threads = static_cast<unsigned>(st.range(0));
    const std::uint64_t total = g->c1->total_bytes();
    aligned_buffer src(total);
    std::memset(src.data(), 1, total);
    for (auto _ : st) {
        aligned_buffer dst(total);  // fresh: first touch paid, as the loader's tensors pay it
        std::vector<std::jthread> t;
        const std::uint64_t per = total / threads;
        for (unsigned i = 0; i < threads; ++i)
            t.emplace_back([&, i] {
                const std::uint64_t n = i + 1 == threads ? total - i * per : per;
                std::memcpy(dst.data() + i * per, src.data() + i * per, n);
            });
        t.clear();
        benchmark::DoNotOptimize(dst.data());
    }
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * total));
}

void BM_p1_load(benchmark::State& st) {
    const load_plan plan = load_plan::build(*g->c1, schema::replicate_all(), {0, 1});
    host_engine engine({.threads = static_cast<unsigned>(st.range(0))});
    for (auto _ : st) {
        auto m = load_tensors<host_tensor>(plan, engine);
        benchmark::DoNotOptimize(m.tensors().data());
    }
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * plan.total_bytes()));
}

// ---- P2 ----

schema matrices(layout l) {
    schema s;
    for (int i = 0; i < 4; ++i) {
        parameter_meta p;
        p.name = "w" + std::to_string(i);
        p.layout = l;
        p.sources = {p.name};
        s.add(std::move(p));
    }
    return s;
}

// Each iteration opens the checkpoint afresh (a new mapping: its page tables are built again,
// as in a real load) and plans, for every mode alike; both take microseconds here.
void run_p2(benchmark::State& st, layout l, host_engine_options o) {
    const fs::path file = g->p2 / "model.safetensors";
    const schema s2 = matrices(l);
    o.threads = static_cast<unsigned>(st.range(0));
    host_engine engine(o);
    std::uint64_t bytes = 0;
    for (auto _ : st) {
        const checkpoint c = checkpoint::open(file.string());
        const load_plan plan = load_plan::build(c, s2, {3, 8});
        auto m = load_tensors<host_tensor>(plan, engine);
        benchmark::DoNotOptimize(m.tensors().data());
        bytes = plan.total_bytes();
    }
    const auto s = engine.stats();
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes));
    st.counters["read_ratio"] =
        static_cast<double>(s.bytes_read) / static_cast<double>(s.bytes_written);
}

void BM_p2_contiguous(benchmark::State& st) { run_p2(st, make_split(0), {}); }
void BM_p2_split1_automatic(benchmark::State& st) {
    run_p2(st, make_split(1), {.strided = strided_read::automatic});
}
void BM_p2_split1_populate(benchmark::State& st) {
    run_p2(st, make_split(1), {.strided = strided_read::automatic, .populate = true});
}
void BM_p2_contiguous_huge(benchmark::State& st) {
    run_p2(st, make_split(0), {.huge_pages = true});
}
void BM_p2_split1_automatic_huge(benchmark::State& st) {
    run_p2(st, make_split(1), {.strided = strided_read::automatic, .huge_pages = true});
}
void BM_p2_split1_per_row(benchmark::State& st) {
    run_p2(st, make_split(1), {.strided = strided_read::per_row});
}
void BM_p2_split1_whole_rows(benchmark::State& st) {
    run_p2(st, make_split(1), {.strided = strided_read::whole_rows});
}
void BM_p2_split1_batched(benchmark::State& st) {
    run_p2(st, make_split(1), {.strided = strided_read::batched});
}
void BM_p2_split1_mmap(benchmark::State& st) {
    run_p2(st, make_split(1), {.mode = read_mode::mmap});
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    files f;
    g = &f;
    const auto n = static_cast<std::int64_t>(hw());
    for (auto* b : {benchmark::RegisterBenchmark("BM_p1_memcpy", BM_p1_memcpy),
                    benchmark::RegisterBenchmark("BM_p1_load", BM_p1_load)}) {
        b->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
        if (n > 1) b->Arg(n);
    }
    for (auto* b :
         {benchmark::RegisterBenchmark("BM_p2_contiguous", BM_p2_contiguous),
          benchmark::RegisterBenchmark("BM_p2_split1_automatic", BM_p2_split1_automatic),
          benchmark::RegisterBenchmark("BM_p2_split1_populate", BM_p2_split1_populate),
          benchmark::RegisterBenchmark("BM_p2_contiguous_huge", BM_p2_contiguous_huge),
          benchmark::RegisterBenchmark("BM_p2_split1_automatic_huge", BM_p2_split1_automatic_huge),
          benchmark::RegisterBenchmark("BM_p2_split1_per_row", BM_p2_split1_per_row),
          benchmark::RegisterBenchmark("BM_p2_split1_whole_rows", BM_p2_split1_whole_rows),
          benchmark::RegisterBenchmark("BM_p2_split1_batched", BM_p2_split1_batched),
          benchmark::RegisterBenchmark("BM_p2_split1_mmap", BM_p2_split1_mmap)}) {
        b->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
        if (n > 1) b->Arg(n);
    }
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
