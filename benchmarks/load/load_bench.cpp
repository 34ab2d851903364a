// The host loader against memcpy and against the disk, files in the page cache unless cold.
//
// P1: world 1, a 1 GiB checkpoint (8 BF16 tensors of 8192x8192) into freshly allocated host
//     tensors, against a memcpy of the same bytes into freshly allocated memory (both pay first
//     touch), for each read mode and 1..N threads. Goal: loader / memcpy >= 0.90.
// P2: rank 3 of world 8 of four 4096x14336 BF16 matrices split on dim 1 (rows of 3.5 KiB every
//     28 KiB), against a contiguous load of the same bytes (the same matrices split on dim 0).
//     Goal: >= 0.80, with bytes read / rank bytes <= 1.05 (the engine's count, reported as
//     the counter read_ratio). Each iteration opens the checkpoint afresh: the mapping's page
//     tables are paid in every iteration, as in a real load.
// P3: conversions fused into the load: the P1 file loaded as F32 (BF16 -> F32), and four
//     4096x14336 F32 matrices loaded as BF16 (F32 -> BF16), against a memcpy of the output
//     bytes into fresh memory. Goal (BF16 -> F32): >= 0.70.
// P4: quantized checkpoints dequantized in the load: a one-layer llama of 218 M values (its
//     linears FP8 with 128x128 blocks of scales, or NVFP4, loaded as BF16; or GPTQ 4-bit,
//     loaded as F16), against a memcpy of the output bytes into fresh memory; and loaded as
//     stored. Goal (FP8 blocks): >= 0.70.
// cold: the P1 file from the disk: the file's pages dropped from the page cache before each
//     iteration (posix_fadvise(DONTNEED) per file, or the whole cache with --drop-caches),
//     loaded with pread and with O_DIRECT, against `dd iflag=direct` of the same file.
//
// Options (before Google Benchmark's own):
//   --dir=DIR      write the files into DIR and keep them (reused when present: peer_bench.py
//                  reads the same files); default: a folder under $SAFESHARD_BENCH_DIR or /tmp,
//                  removed at exit
//   --drop-caches  drop the whole page cache (echo 3 > /proc/sys/vm/drop_caches, root only)
//                  for the cold runs instead of posix_fadvise(DONTNEED) of the files
// Each figure is given in wall time and in process CPU time (all threads, user + system).
// Run:
//   build/benchmarks/load/load_bench --benchmark_repetitions=5
//   --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"

namespace fs = std::filesystem;
using namespace safeshard;

namespace {

struct settings {
    std::optional<fs::path> dir;
    bool drop_caches = false;
} opts;

fs::path bench_dir() {
    if (opts.dir) return *opts.dir;
    const char* d = std::getenv("SAFESHARD_BENCH_DIR");
    return fs::path(d ? d : "/tmp") / ("safeshard-load-bench-" + std::to_string(::getpid()));
}

// `count` tensors of `shape` and dtype `t` (BF16 or F32) holding weight-like values (small
// normal numbers of both signs), so conversions run on realistic data.
void write_file(const fs::path& p, int count, shape s, dtype t) {
    const std::uint64_t n = *s.element_count();
    std::vector<std::byte> data(n * byte_size(t));
    std::mt19937_64 rng(1);
    for (std::uint64_t i = 0; i < n; ++i) {
        const auto r = rng();
        const auto code = static_cast<std::uint16_t>(
            ((r & 1) << 15) | ((100 + (r >> 1) % 27) << 7) | ((r >> 8) & 0x7f));
        if (t == dtype::bf16) {
            std::memcpy(&data[i * 2], &code, 2);
        } else {
            const std::uint32_t f = std::uint32_t{code} << 16 | static_cast<std::uint16_t>(r >> 20);
            std::memcpy(&data[i * 4], &f, 4);
        }
    }
    std::vector<std::string> names;
    for (int i = 0; i < count; ++i) names.push_back("w" + std::to_string(i));
    std::vector<tensor_data> tensors;
    for (int i = 0; i < count; ++i) tensors.push_back({names[i], t, s, data});
    save_file(p, tensors);
}

void warm(const fs::path& p) {  // into the page cache
    file_reader f(p);
    aligned_buffer b(std::size_t{64} << 20);
    for (std::uint64_t off = 0; off < f.size(); off += b.size())
        f.read_exact(
            {b.data(), static_cast<std::size_t>(std::min<std::uint64_t>(b.size(), f.size() - off))},
            off);
}

// Drops the file's pages from the page cache; returns the fraction still resident.
double evict(const fs::path& p) {
    if (opts.drop_caches) {
        ::sync();
        std::ofstream("/proc/sys/vm/drop_caches") << "3\n";
    } else {
        const int fd = ::open(p.c_str(), O_RDONLY);
        if (fd >= 0) {
            (void)::fdatasync(fd);
            (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
            ::close(fd);
        }
    }
    const int fd = ::open(p.c_str(), O_RDONLY);
    if (fd < 0) return 1;
    const auto size = static_cast<std::size_t>(fs::file_size(p));
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (m == MAP_FAILED) return 1;
    std::vector<unsigned char> v((size + 4095) / 4096);
    std::size_t n = 0;
    if (::mincore(m, size, v.data()) == 0)
        for (auto c : v) n += c & 1;
    ::munmap(m, size);
    return static_cast<double>(n) / static_cast<double>(v.size());
}

// P4's one-layer llama (hidden 4096, intermediate 14336, 32 heads of 128, 8 KV heads) with
// its linears quantized: FP8 with 128x128 blocks of F32 scales (DeepSeek-V3's form),
// ModelOpt NVFP4 (E2M1 two a byte, E4M3 scales of 16, a global F32 scale), or GPTQ 4-bit
// (qweight I32 [K/8, N], F16 scales and packed zero points by groups of 128 along K, g_idx);
// weight-like codes (no NaN) and scales near what quantizers write.
enum class p4_form { fp8, nvfp4, gptq };
void write_quantized(const fs::path& dir, p4_form form) {
    constexpr std::uint64_t H = 4096, I = 14336, KV = 1024, V = 256;
    const std::vector<std::pair<std::string, std::pair<std::uint64_t, std::uint64_t>>> linears = {
        {"self_attn.q_proj", {H, H}}, {"self_attn.k_proj", {KV, H}}, {"self_attn.v_proj", {KV, H}},
        {"self_attn.o_proj", {H, H}}, {"mlp.gate_proj", {I, H}},     {"mlp.up_proj", {I, H}},
        {"mlp.down_proj", {H, I}}};
    std::mt19937_64 rng(3);
    std::vector<std::vector<std::byte>> keep;
    std::vector<std::string> names;
    std::vector<tensor_data> tensors;
    auto add = [&](std::string n, dtype t, shape s, auto&& code) {
        keep.emplace_back(*s.element_count() * bit_size(t) / 8);
        for (auto& b : keep.back()) b = static_cast<std::byte>(code());
        names.push_back(std::move(n));
        tensors.push_back({names.back(), t, s, keep.back()});
    };
    names.reserve(64);
    auto bf16 = [&] { return static_cast<std::uint8_t>(0x3c + rng() % 2); };  // ~0.01..0.03
    add("model.embed_tokens.weight", dtype::bf16, shape{V, H}, bf16);
    add("lm_head.weight", dtype::bf16, shape{V, H}, bf16);
    add("model.norm.weight", dtype::bf16, shape{H}, bf16);
    add("model.layers.0.input_layernorm.weight", dtype::bf16, shape{H}, bf16);
    add("model.layers.0.post_attention_layernorm.weight", dtype::bf16, shape{H}, bf16);
    auto value = [&] { return static_cast<std::uint8_t>(rng() % 0x7f | (rng() & 0x80)); };
    for (const auto& [n, nk] : linears) {
        const auto [N, K] = nk;
        const std::string p = "model.layers.0." + n + ".";
        if (form == p4_form::gptq) {
            add(p + "qweight", dtype::i32, shape{K / 8, N}, [&] { return rng() & 0xff; });
            add(p + "scales", dtype::f16, shape{K / 128, N},  // ~0.001..0.002
                [&, i = 0]() mutable { return i++ % 2 ? 0x14 : rng() & 0xff; });
            add(p + "qzeros", dtype::i32, shape{K / 128, N / 8}, [] { return 0x77; });
            std::vector<std::int32_t> g_idx(K);
            for (std::uint64_t k = 0; k < K; ++k) g_idx[k] = static_cast<std::int32_t>(k / 128);
            add(p + "g_idx", dtype::i32, shape{K}, [&, i = std::size_t{0}]() mutable {
                const std::size_t b = i++;
                return static_cast<std::uint8_t>(g_idx[b / 4] >> (8 * (b % 4)));
            });
            continue;
        }
        if (form == p4_form::fp8) {
            add(p + "weight", dtype::f8_e4m3, shape{N, K}, value);
            std::uint32_t f = 0x3a800000;  // 0.001 and near
            add(p + "weight_scale_inv", dtype::f32, shape{N / 128, K / 128},
                [&, i = 0]() mutable { return static_cast<std::uint8_t>((f >> (8 * (i++ % 4)))); });
            continue;
        }
        add(p + "weight", dtype::u8, shape{N, K / 2}, [&] { return rng() & 0xff; });
        add(p + "weight_scale", dtype::f8_e4m3, shape{N, K / 16},
            [&] { return 0x30 + rng() % 16; });
        const std::uint32_t g = 0x3a800000;
        for (const char* s : {"weight_scale_2", "input_scale"})
            add(p + s, dtype::f32, shape{},
                [&, i = 0]() mutable { return static_cast<std::uint8_t>(g >> (8 * (i++ % 4))); });
    }
    fs::create_directories(dir);
    save_file(dir / "model.safetensors", tensors);
    std::ofstream(dir / "config.json")
        << R"({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
              "num_hidden_layers": 1, "num_attention_heads": 32, "num_key_value_heads": 8,
              "vocab_size": 256, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
              "quantization_config": )"
        << (form == p4_form::nvfp4
                ? R"({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16})"
            : form == p4_form::gptq
                ? R"({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false,
                     "sym": true, "checkpoint_format": "gptq"})"
                : R"({"quant_method": "fp8", "weight_block_size": [128, 128]})")
        << "}";
}

struct files {
    fs::path dir = bench_dir();
    fs::path p1 = dir / "p1" / "model.safetensors";              // 8 x 8192x8192 BF16: 1 GiB
    fs::path p2 = dir / "p2" / "model.safetensors";              // 4 x 4096x14336 BF16: 448 MiB
    fs::path p3 = dir / "p3" / "model.safetensors";              // 4 x 4096x14336 F32: 896 MiB
    fs::path p4_fp8 = dir / "p4_fp8" / "model.safetensors";      // 218 M FP8 values: 208 MiB
    fs::path p4_nvfp4 = dir / "p4_nvfp4" / "model.safetensors";  // the same as NVFP4: 117 MiB
    fs::path p4_gptq = dir / "p4_gptq" / "model.safetensors";    // the same as GPTQ: 106 MiB
    files() {
        auto make = [](const fs::path& p, int count, shape s, dtype t) {
            const std::uint64_t want = *s.element_count() * byte_size(t) * count;
            std::error_code ec;
            if (fs::exists(p) && fs::file_size(p, ec) > want) return;  // kept from a run
            fs::create_directories(p.parent_path());
            write_file(p, count, s, t);
        };
        make(p1, 8, shape{8192, 8192}, dtype::bf16);
        make(p2, 4, shape{4096, 14336}, dtype::bf16);
        make(p3, 4, shape{4096, 14336}, dtype::f32);
        if (!fs::exists(p4_fp8)) write_quantized(p4_fp8.parent_path(), p4_form::fp8);
        if (!fs::exists(p4_nvfp4)) write_quantized(p4_nvfp4.parent_path(), p4_form::nvfp4);
        if (!fs::exists(p4_gptq)) write_quantized(p4_gptq.parent_path(), p4_form::gptq);
        // As a checkpoint that was read from the disk: the pages the writer left in the page
        // cache are dropped and read back (readahead fills the cache with large folios, which
        // the kernel maps many pages at a time; the writer's pages can be 4 KiB folios, which
        // made copies out of the mapping 2-3x slower).
        for (const auto& p : {p1, p2, p3, p4_fp8, p4_nvfp4, p4_gptq}) {
            (void)evict(p);
            warm(p);
        }
    }
    ~files() {
        if (opts.dir) return;
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
};

files* g = nullptr;

unsigned hw() { return std::max(1u, std::thread::hardware_concurrency()); }

// The read modes side by side.
enum class mode { pread, per_row, mmap, direct, huge_pages, populate, no_prefault };

host_engine_options options_for(mode m, unsigned threads) {
    host_engine_options o{.threads = threads};
    switch (m) {
        case mode::pread: break;  // the default: pread, strided_read::automatic
        case mode::per_row: o.strided = strided_read::per_row; break;
        case mode::mmap: o.mode = read_mode::mmap; break;
        case mode::direct: o.mode = read_mode::direct; break;
        case mode::huge_pages: o.huge_pages = true; break;
        case mode::populate: o.populate = true; break;
        case mode::no_prefault: o.prefault = false; break;
    }
    return o;
}

const char* name_of(mode m) {
    switch (m) {
        case mode::pread: return "default";
        case mode::per_row: return "per_row";
        case mode::mmap: return "mmap";
        case mode::direct: return "direct";
        case mode::huge_pages: return "huge_pages";
        case mode::populate: return "populate";
        case mode::no_prefault: return "no_prefault";
    }
    return "?";
}

// What memcpy_fresh does to its fresh destination first.
enum class advice { none, huge, prefault };

// memcpy of `bytes` into fresh memory (first touch paid), `threads` threads, optionally with
// the destination advised MADV_HUGEPAGE (as the loader's huge_pages option does) or populated
// with MADV_POPULATE_WRITE by each thread for its part (as the loader's prefault option does).
void memcpy_fresh(benchmark::State& st, std::uint64_t bytes, advice adv) {
    const auto threads = static_cast<unsigned>(st.range(0));
    aligned_buffer src(bytes);
    std::memset(src.data(), 1, bytes);
    for (auto _ : st) {
        aligned_buffer dst(bytes);
        if (adv == advice::huge) (void)::madvise(dst.data(), dst.capacity(), MADV_HUGEPAGE);
        std::vector<std::jthread> t;
        const std::uint64_t per = bytes / threads / 4096 * 4096;
        for (unsigned i = 0; i < threads; ++i)
            t.emplace_back([&, i] {
                const std::uint64_t n = i + 1 == threads ? bytes - i * per : per;
                if (adv == advice::prefault)
                    (void)::madvise(dst.data() + i * per, n, detail::madv_populate_write);
                std::memcpy(dst.data() + i * per, src.data() + i * per, n);
            });
        t.clear();
        benchmark::DoNotOptimize(dst.data());
    }
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes));
}

schema matrices(int count, layout l) {
    schema s;
    for (int i = 0; i < count; ++i) {
        parameter_meta p;
        p.name = "w" + std::to_string(i);
        p.layout = l;
        p.sources = {p.name};
        s.add(std::move(p));
    }
    return s;
}

// Loads `file` (opened afresh in each iteration) for {rank, world} with `target` dtype, cut by
// schema `s` (nullptr: the one config.json beside the file says).
void run_load(benchmark::State& st, const fs::path& file, const schema* s, std::uint32_t rank,
              std::uint32_t world, host_engine_options o, dtype_policy target, bool cold = false) {
    host_engine engine(o);
    std::uint64_t bytes = 0;
    double resident = 0;
    for (auto _ : st) {
        if (cold) {
            st.PauseTiming();
            resident = std::max(resident, evict(file));
            st.ResumeTiming();
        }
        const checkpoint c = checkpoint::open(file.string());
        const load_plan plan = s ? load_plan::build(c, *s, {rank, world}, {.dtype = target})
                                 : load_plan::build(c, {rank, world}, {.dtype = target});
        load_report r;
        auto m = load_tensors<host_tensor>(plan, engine, &r);
        benchmark::DoNotOptimize(m.tensors().data());
        bytes = plan.total_bytes();
        if (!r.notes.empty()) st.SetLabel(r.notes.front());
    }
    const auto stats = engine.stats();
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes));
    st.counters["read_ratio"] =
        static_cast<double>(stats.bytes_read) / static_cast<double>(stats.bytes_written);
    if (cold) st.counters["resident_after_evict"] = resident;
}

const schema& p1_schema() {
    static const schema s = schema::replicate_all();
    return s;
}
const schema& p2_schema(layout l) {
    static const schema s0 = matrices(4, make_split(0)), s1 = matrices(4, make_split(1));
    return l == make_split(0) ? s0 : s1;
}

// `dd if=FILE of=/dev/null bs=16M iflag=direct` (cold: the pages dropped first).
void BM_cold_dd(benchmark::State& st) {
    const std::string cmd =
        "dd if='" + g->p1.string() + "' of=/dev/null bs=16M iflag=direct status=none";
    double resident = 0;
    for (auto _ : st) {
        st.PauseTiming();
        resident = std::max(resident, evict(g->p1));
        st.ResumeTiming();
        if (std::system(cmd.c_str()) != 0) {
            st.SkipWithError("dd failed");
            break;
        }
    }
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * fs::file_size(g->p1)));
    st.counters["resident_after_evict"] = resident;
}

void register_all() {
    const auto n = static_cast<std::int64_t>(hw());
    // Threads 1, 2, 4, ... and N; direct modes also 0: the engine's default (N, at least 4,
    // to keep reads in flight).
    auto threads = [n](benchmark::internal::Benchmark* b, bool direct = false) {
        // Wall time, and the CPU time of every thread of the process (user and system: page
        // faults and the kernel's copies are the work): on a shared machine the CPU time is
        // the figure that waiting for a core does not inflate.
        b->Unit(benchmark::kMillisecond)->UseRealTime()->MeasureProcessCPUTime();
        for (std::int64_t t = 1; t < n; t *= 2) b->Arg(t);
        b->Arg(n);
        if (direct) b->Arg(0);
    };
    const std::uint64_t p1_bytes = std::uint64_t{8} * 8192 * 8192 * 2;
    const std::uint64_t p2_f32 = std::uint64_t{4} * 4096 * 14336 * 2;  // F32 -> BF16 output

    // P1: same dtype, every read mode, against memcpy (4 KiB and 2 MiB pages).
    threads(benchmark::RegisterBenchmark(
        "BM_p1_memcpy", [=](benchmark::State& st) { memcpy_fresh(st, p1_bytes, advice::none); }));
    threads(benchmark::RegisterBenchmark("BM_p1_memcpy_huge", [=](benchmark::State& st) {
        memcpy_fresh(st, p1_bytes, advice::huge);
    }));
    threads(benchmark::RegisterBenchmark("BM_p1_memcpy_prefault", [=](benchmark::State& st) {
        memcpy_fresh(st, p1_bytes, advice::prefault);
    }));
    for (mode m : {mode::pread, mode::no_prefault, mode::mmap, mode::direct, mode::huge_pages})
        threads(benchmark::RegisterBenchmark(
                    (std::string("BM_p1_load/") + name_of(m)).c_str(),
                    [m](benchmark::State& st) {
                        run_load(st, g->p1, &p1_schema(), 0, 1,
                                 options_for(m, static_cast<unsigned>(st.range(0))),
                                 dtype_policy::keep());
                    }),
                m == mode::direct);

    // P2: rank 3 of world 8, dim 1, against dim 0.
    for (mode m : {mode::pread, mode::no_prefault, mode::huge_pages})
        threads(benchmark::RegisterBenchmark(
            (std::string("BM_p2_contiguous/") + name_of(m)).c_str(), [m](benchmark::State& st) {
                run_load(st, g->p2, &p2_schema(make_split(0)), 3, 8,
                         options_for(m, static_cast<unsigned>(st.range(0))), dtype_policy::keep());
            }));
    struct p2_mode {
        const char* name;
        host_engine_options o;
    };
    for (const p2_mode& m : {
             p2_mode{"automatic", {.strided = strided_read::automatic}},
             p2_mode{"no_prefault", {.strided = strided_read::automatic, .prefault = false}},
             p2_mode{"populate", {.strided = strided_read::automatic, .populate = true}},
             p2_mode{"per_row", {.strided = strided_read::per_row}},
             p2_mode{"batched", {.strided = strided_read::batched}},
             p2_mode{"whole_rows", {.strided = strided_read::whole_rows}},
             p2_mode{"mmap", {.mode = read_mode::mmap}},
             p2_mode{"huge_pages", {.huge_pages = true}},
             p2_mode{"direct", {.mode = read_mode::direct}},
         })
        threads(benchmark::RegisterBenchmark(
            (std::string("BM_p2_split1/") + m.name).c_str(), [m](benchmark::State& st) {
                host_engine_options o = m.o;
                o.threads = static_cast<unsigned>(st.range(0));
                run_load(st, g->p2, &p2_schema(make_split(1)), 3, 8, o, dtype_policy::keep());
            }));

    // P3: conversions, against memcpy of the output bytes.
    threads(benchmark::RegisterBenchmark("BM_p3_memcpy_out/bf16_f32", [=](benchmark::State& st) {
        memcpy_fresh(st, 2 * p1_bytes, advice::none);
    }));
    threads(benchmark::RegisterBenchmark(
        "BM_p3_memcpy_out_huge/bf16_f32",
        [=](benchmark::State& st) { memcpy_fresh(st, 2 * p1_bytes, advice::huge); }));
    for (mode m : {mode::pread, mode::per_row, mode::huge_pages})
        threads(benchmark::RegisterBenchmark(
            (std::string("BM_p3_bf16_f32/") + name_of(m)).c_str(), [m](benchmark::State& st) {
                run_load(st, g->p1, &p1_schema(), 0, 1,
                         options_for(m, static_cast<unsigned>(st.range(0))),
                         dtype_policy::fixed(dtype::f32));
            }));
    threads(benchmark::RegisterBenchmark("BM_p3_memcpy_out/f32_bf16", [=](benchmark::State& st) {
        memcpy_fresh(st, p2_f32, advice::none);
    }));
    for (mode m : {mode::pread, mode::per_row, mode::huge_pages})
        threads(benchmark::RegisterBenchmark(
            (std::string("BM_p3_f32_bf16/") + name_of(m)).c_str(), [m](benchmark::State& st) {
                run_load(st, g->p3, &p2_schema(make_split(0)), 0, 1,
                         options_for(m, static_cast<unsigned>(st.range(0))),
                         dtype_policy::fixed(dtype::bf16));
            }));

    // P4: quantized checkpoints dequantized in the load (FP8 blocks, NVFP4 -> BF16, GPTQ ->
    // F16), against a memcpy of the output bytes; as stored beside them.
    const std::uint64_t p4_out = [] {
        const checkpoint c = checkpoint::open(g->p4_fp8.string());
        return load_plan::build(c, {0, 1}, {.dtype = dtype_policy::fixed(dtype::bf16)})
            .total_bytes();
    }();
    threads(benchmark::RegisterBenchmark(
        "BM_p4_memcpy_out/dequantize_bf16",
        [=](benchmark::State& st) { memcpy_fresh(st, p4_out, advice::none); }));
    // GPTQ, as its reference dequantizes it, to F16 (the same output bytes).
    for (const auto& [label, file, to] : {std::tuple{"fp8_block", &files::p4_fp8, dtype::bf16},
                                          std::tuple{"nvfp4", &files::p4_nvfp4, dtype::bf16},
                                          std::tuple{"gptq", &files::p4_gptq, dtype::f16}})
        for (const dtype_policy d : {dtype_policy::fixed(to), dtype_policy::keep()})
            threads(benchmark::RegisterBenchmark(
                (std::string("BM_p4_") + label +
                 (d == dtype_policy::keep()
                      ? std::string("/as_stored")
                      : std::string(to == dtype::f16 ? "/dequantize_f16" : "/dequantize_bf16")))
                    .c_str(),
                [file, d](benchmark::State& st) {
                    run_load(st, g->*file, nullptr, 0, 1,
                             options_for(mode::pread, static_cast<unsigned>(st.range(0))), d);
                }));

    // cold: from the disk.
    for (mode m : {mode::pread, mode::direct})
        for (bool huge : {false, true})
            threads(
                benchmark::RegisterBenchmark(
                    (std::string("BM_cold_p1/") + name_of(m) + (huge ? "+huge_pages" : "")).c_str(),
                    [m, huge](benchmark::State& st) {
                        host_engine_options o = options_for(m, static_cast<unsigned>(st.range(0)));
                        o.huge_pages = huge;
                        run_load(st, g->p1, &p1_schema(), 0, 1, o, dtype_policy::keep(), true);
                    }),
                m == mode::direct);
    benchmark::RegisterBenchmark("BM_cold_p1/dd_iflag_direct", BM_cold_dd)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Arg(1);
}

}  // namespace

int main(int argc, char** argv) {
    // Our options first; Google Benchmark sees the rest.
    std::vector<char*> rest{argv[0]};
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a.starts_with("--dir="))
            opts.dir = fs::path(std::string(a.substr(6)));
        else if (a == "--drop-caches")
            opts.drop_caches = true;
        else
            rest.push_back(argv[i]);
    }
    // Every tensor of 1 MiB or more gets fresh pages from the kernel in every iteration: glibc
    // would otherwise raise its mmap threshold after the first frees and hand the next
    // iterations memory that is already faulted in (first touch not paid, and by chance).
    ::mallopt(M_MMAP_THRESHOLD, 1 << 20);
    int rc = static_cast<int>(rest.size());
    benchmark::Initialize(&rc, rest.data());
    if (benchmark::ReportUnrecognizedArguments(rc, rest.data())) return 1;
    files f;
    g = &f;
    register_all();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
