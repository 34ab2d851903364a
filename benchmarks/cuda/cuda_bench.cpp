// cuda_engine against the physical limit, on a GPU (prints "skip" and exits 77 without one).
//
// P5  page cache -> GPU, the whole checkpoint (>= 2 GiB), divided by a pinned cudaMemcpy H2D of
//     the same bytes in the same run, for each policy (staged, pageable, registered). Goal >= 0.90.
// P6  the end-to-end load (plan, cudaMalloc, copy) beside the peers' figures: with
//     --peer-json FILE (peer_bench.py --json FILE on the same files) the ratio to
//     safetensors.torch.load_file(device="cuda:0") is printed. Goal >= 3x.
// P7  one rank of world 8 divided by the full load, every 2-D tensor split on dim 1 (strided
//     rows; pread per row, mmap copies, registered DMA) or alternately on dim 0 and 1.
//     Goal <= 0.15.
// P8  anonymous host memory (RssAnon, sampled every millisecond) beyond the staging ring, and
//     device memory beyond the tensors (cudaMemGetInfo, sampled too). Goals: <= 64 MiB, none.
// --sweep: buffers x buffer size x streams x threads, the full load's copy time each, the best
//     printed last (the defaults in cuda_engine_options come from it).
//
// Files: 4096x4096 BF16 tensors in 4 shards (the layout peer_bench.py --make writes), written to
// $SAFESHARD_BENCH_DIR or /tmp and removed at exit, or the checkpoint in --dir DIR (any
// safetensors files; 2-D tensors are split on dim 1 for P7, others replicated). The files are
// read once before timing (page cache warm).
//
//   cuda_bench [--gib 2] [--runs 5] [--dir DIR] [--world 8] [--device 0] [--sweep]
//              [--sweep-buffers 4,8,16] [--sweep-mib 4,8,16,32] [--sweep-streams 2,4]
//              [--sweep-threads 2,4,8] [--p7-threads 8,12,16] [--peer-json FILE]
//              [--no-policies]
//   --dry-run: write or index the files and build the plans, without a GPU (a setup check)
#include <cuda_runtime_api.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "safeshard/cuda/cuda_engine.hpp"
#include "safeshard/cuda/cuda_tensor.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/safetensors.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"

namespace fs = std::filesystem;
using namespace safeshard;
using clk = std::chrono::steady_clock;

namespace {

struct args {
    double gib = 2;
    int runs = 5;
    std::string dir;
    std::uint32_t world = 8;
    int device = 0;
    bool sweep = false;
    bool policies = true;
    bool dry_run = false;  // files, index and plans only: no GPU needed (checks the setup)
    std::string peer_json;
    std::vector<unsigned> sweep_buffers{4, 8, 16};
    std::vector<unsigned> sweep_mib{4, 8, 16, 32};
    std::vector<unsigned> sweep_streams{2, 4};
    std::vector<unsigned> sweep_threads{2, 4, 8};
    std::vector<unsigned> p7_threads{};  // P7 again with these reader threads (CPU-bound rows)
};

std::vector<unsigned> parse_list(const std::string& s) {
    std::vector<unsigned> v;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) v.push_back(static_cast<unsigned>(std::stoul(item)));
    return v;
}

args parse(int argc, char** argv) {
    args a;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", k.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (k == "--gib")
            a.gib = std::stod(next());
        else if (k == "--runs")
            a.runs = std::max(1, std::stoi(next()));
        else if (k == "--dir")
            a.dir = next();
        else if (k == "--world")
            a.world = static_cast<std::uint32_t>(std::stoul(next()));
        else if (k == "--device")
            a.device = std::stoi(next());
        else if (k == "--sweep")
            a.sweep = true;
        else if (k == "--no-policies")
            a.policies = false;
        else if (k == "--dry-run")
            a.dry_run = true;
        else if (k == "--peer-json")
            a.peer_json = next();
        else if (k == "--sweep-buffers")
            a.sweep_buffers = parse_list(next());
        else if (k == "--sweep-mib")
            a.sweep_mib = parse_list(next());
        else if (k == "--sweep-streams")
            a.sweep_streams = parse_list(next());
        else if (k == "--sweep-threads")
            a.sweep_threads = parse_list(next());
        else if (k == "--p7-threads")
            a.p7_threads = parse_list(next());
        else {
            std::fprintf(stderr, "unknown argument %s (see the header of cuda_bench.cpp)\n",
                         k.c_str());
            std::exit(2);
        }
    }
    return a;
}

void cuda_check(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return;
    std::fprintf(stderr, "%s failed: %s\n", what, cudaGetErrorName(e));
    std::exit(1);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

std::uint64_t rss_anon_bytes() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("RssAnon:", 0) == 0) return std::stoull(line.substr(8)) * 1024;
    return 0;
}

std::uint64_t gpu_free_bytes() {
    std::size_t free_b = 0, total = 0;
    (void)cudaMemGetInfo(&free_b, &total);
    return free_b;
}

// Peak RssAnon and lowest free device memory while it runs (1 ms samples).
class sampler {
public:
    explicit sampler(int device)
        : anon0_(rss_anon_bytes()),
          free0_(gpu_free_bytes()),
          peak_anon_(anon0_),
          low_free_(free0_) {
        t_ = std::thread([this, device] {
            (void)cudaSetDevice(device);
            while (!stop_) {
                peak_anon_ = std::max(peak_anon_.load(), rss_anon_bytes());
                low_free_ = std::min(low_free_.load(), gpu_free_bytes());
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
        });
    }
    void finish() {
        stop_ = true;
        if (t_.joinable()) t_.join();
        peak_anon_ = std::max(peak_anon_.load(), rss_anon_bytes());
        low_free_ = std::min(low_free_.load(), gpu_free_bytes());
    }
    ~sampler() { finish(); }
    [[nodiscard]] std::int64_t anon_growth() const {
        return static_cast<std::int64_t>(peak_anon_) - static_cast<std::int64_t>(anon0_);
    }
    [[nodiscard]] std::int64_t gpu_used() const {
        return static_cast<std::int64_t>(free0_) - static_cast<std::int64_t>(low_free_);
    }

private:
    std::uint64_t anon0_, free0_;
    std::atomic<std::uint64_t> peak_anon_, low_free_;
    std::atomic<bool> stop_{false};
    std::thread t_;
};

// The layout peer_bench.py --make writes: 4096x4096 BF16 tensors, 4 shards.
void make_files(const fs::path& dir, double gib) {
    fs::create_directories(dir);
    const int shards = 4;
    const std::uint64_t tensor_bytes = 4096ull * 4096 * 2;
    const auto per = static_cast<std::uint64_t>(gib * double(1ull << 30)) / shards;
    const std::uint64_t n = std::max<std::uint64_t>(1, per / tensor_bytes);
    std::vector<std::byte> data(tensor_bytes);
    std::mt19937_64 rng(7);
    for (std::size_t i = 0; i + 8 <= data.size(); i += 8) {
        const auto v = rng();
        std::memcpy(&data[i], &v, 8);
    }
    for (int s = 0; s < shards; ++s) {
        std::vector<std::string> names;
        for (std::uint64_t i = 0; i < n; ++i)
            names.push_back("layer" + std::to_string(s) + ".w" + std::to_string(i));
        std::vector<tensor_data> t;
        for (const auto& nm : names) t.push_back({nm, dtype::bf16, shape{4096, 4096}, data});
        char file[64];
        std::snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, shards);
        save_file(dir / file, t);
    }
}

// Shards without an index (peer_bench.py --make writes none): an index naming every tensor.
void ensure_index(const fs::path& dir) {
    if (fs::exists(dir / "model.safetensors.index.json") || fs::exists(dir / "model.safetensors"))
        return;
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.path().extension() == ".safetensors") files.push_back(e.path().filename().string());
    std::sort(files.begin(), files.end());
    if (files.size() < 2) return;
    std::string map;
    for (const auto& f : files) {
        const file_view v(dir / f);
        for (const auto& t : v)
            map += (map.empty() ? "\"" : ",\"") + std::string(t.name()) + "\":\"" + f + "\"";
    }
    std::ofstream(dir / "model.safetensors.index.json")
        << "{\"metadata\":{},\"weight_map\":{" << map << "}}";
}

void warm(const checkpoint& ckpt) {
    std::vector<char> buf(std::size_t{64} << 20);
    for (const auto& f : ckpt.files()) {
        std::ifstream in(f.path, std::ios::binary);
        while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
        }
    }
}

// 2-D tensors split on dim 1 (a rank's columns: strided rows), or alternately on dim 0 and
// dim 1 (as a decoder's layers are: q/k/v/gate/up by rows, o/down by columns); the rest
// replicated.
schema split_schema(const checkpoint& ckpt, bool alternate) {
    schema s;
    std::size_t i = 0;
    for (const auto& f : ckpt.files())
        for (const auto& t : f.view) {
            parameter_meta p;
            p.name = std::string(t.name());
            p.sources = {p.name};
            if (t.shape().rank() == 2) p.layout = make_split(alternate && i++ % 2 == 0 ? 0 : 1);
            s.add(p);
        }
    return s;
}

// A plan's destinations allocated once, and its targets.
struct prepared {
    load_plan plan;
    std::vector<cuda_tensor> tensors;
    file_cache files;
    std::vector<std::byte*> addresses;
    std::vector<std::uint64_t> sizes;
    std::uint64_t bytes = 0;

    prepared(load_plan p, int device) : plan(std::move(p)), files(cached_files(plan)) {
        const auto d = plan.destinations();
        addresses.assign(d.size(), nullptr);
        sizes.assign(d.size(), 0);
        tensors.reserve(d.size());
        for (std::size_t i = 0; i < d.size(); ++i) {
            if (d[i].tied()) continue;
            tensors.emplace_back(d[i].dtype, d[i].local, d[i].bytes, device);
            addresses[i] = tensors.back().data();
            sizes[i] = d[i].bytes;
            bytes += d[i].bytes;
        }
        // Every file open and mapped before the timed copies (the bench's few files fit).
        if (files.open_for(plan.ops()) != plan.ops().size())
            throw std::runtime_error("the checkpoint has more files than can be open at once");
    }

    double copy(cuda_engine& e) {
        const auto t0 = clk::now();
        e.bind(copy_targets{files.sources(), addresses, sizes});
        e.submit(plan.ops());
        e.wait();
        return std::chrono::duration<double>(clk::now() - t0).count();
    }
};

// Median seconds of `runs` copies after one warm-up (which also allocates the ring).
double timed_copy(prepared& p, const cuda_engine_options& o, int runs) {
    cuda_engine e(o);
    (void)p.copy(e);
    std::vector<double> t;
    for (int i = 0; i < runs; ++i) t.push_back(p.copy(e));
    return median(t);
}

// Pinned host -> device cudaMemcpyAsync of `bytes` (1 GiB chunks), median of runs.
double pinned_limit(std::uint64_t bytes, int device, int runs) {
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(bytes, 1ull << 30));
    void* host = nullptr;
    void* dev = nullptr;
    cuda_check(cudaHostAlloc(&host, chunk, cudaHostAllocDefault), "cudaHostAlloc");
    std::memset(host, 1, chunk);
    cuda_check(cudaMalloc(&dev, chunk), "cudaMalloc");
    cudaStream_t s = nullptr;
    cuda_check(cudaStreamCreate(&s), "cudaStreamCreate");
    auto once = [&] {
        const auto t0 = clk::now();
        for (std::uint64_t left = bytes; left > 0;) {
            const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, chunk));
            cuda_check(cudaMemcpyAsync(dev, host, n, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
            left -= n;
        }
        cuda_check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
        return std::chrono::duration<double>(clk::now() - t0).count();
    };
    (void)once();
    std::vector<double> t;
    for (int i = 0; i < runs; ++i) t.push_back(once());
    (void)cudaStreamDestroy(s);
    (void)cudaFree(dev);
    (void)cudaFreeHost(host);
    return median(t);
}

double peer_seconds(const std::string& file, const std::string& key) {
    std::ifstream in(file);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string s = ss.str();
    const auto k = s.find("\"" + key + "\"");
    if (k == std::string::npos) return 0;
    const auto colon = s.find(':', k);
    return colon == std::string::npos ? 0 : std::strtod(s.c_str() + colon + 1, nullptr);
}

double gbps(std::uint64_t bytes, double s) { return s > 0 ? double(bytes) / s / 1e9 : 0; }

}  // namespace

int main(int argc, char** argv) try {
    const args a = parse(argc, argv);
    int count = 0;
    const cudaError_t ce = a.dry_run ? cudaSuccess : cudaGetDeviceCount(&count);
    if (!a.dry_run && (ce != cudaSuccess || count == 0)) {
        std::printf("skip: no CUDA device (%s)\n", ce != cudaSuccess ? cudaGetErrorName(ce) : "0");
        return 77;
    }
    cudaDeviceProp prop{};
    if (!a.dry_run) {
        cuda_check(cudaGetDeviceProperties(&prop, a.device), "cudaGetDeviceProperties");
        cuda_check(cudaSetDevice(a.device), "cudaSetDevice");
        cuda_check(cudaFree(nullptr), "cudaFree(nullptr)");  // the context, before measuring
    }

    fs::path dir = a.dir;
    bool own = false;
    if (dir.empty()) {
        const char* base = std::getenv("SAFESHARD_BENCH_DIR");
        dir =
            fs::path(base ? base : "/tmp") / ("safeshard-cuda-bench-" + std::to_string(::getpid()));
        make_files(dir, a.gib);
        own = true;
    }
    struct cleanup {
        fs::path d;
        bool own;
        ~cleanup() {
            std::error_code ec;
            if (own) fs::remove_all(d, ec);
        }
    } clean{dir, own};

    ensure_index(dir);
    const checkpoint ckpt = checkpoint::open(dir.string());
    const schema s = split_schema(ckpt, false);
    warm(ckpt);
    plan_options po;
    po.device = {device_kind::cuda, a.device};
    if (a.dry_run) {
        const schema mixed = split_schema(ckpt, true);
        auto show = [&](const char* label, const schema& sch, std::uint32_t world) {
            const load_plan p = load_plan::build(ckpt, sch, {0, world}, po);
            std::uint64_t read = 0;
            for (const auto& op : p.ops()) read += op.bytes_read();
            std::printf("dry run: %s: %zu ops, %.3f GB read, %zu files\n", label, p.ops().size(),
                        double(read) / 1e9, p.files().size());
        };
        show("full", s, 1);
        show("rank 0, dim 1", s, a.world);
        show("rank 0, dim 0|1", mixed, a.world);
        return 0;
    }
    prepared full(load_plan::build(ckpt, s, {0, 1}, po), a.device);
    const std::uint64_t bytes = full.bytes;
    double load1 = 0, load5 = 0, load15 = 0;
    if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
        if (std::fscanf(f, "%lf %lf %lf", &load1, &load5, &load15) != 3) load1 = -1;
        std::fclose(f);
    }
    std::printf(
        "%s (device %d of %d); %zu files, %.2f GB, page cache warm, median of %d; "
        "load average %.2f %.2f %.2f\n",
        prop.name, a.device, count, ckpt.files().size(), double(bytes) / 1e9, a.runs, load1, load5,
        load15);

    const double limit = pinned_limit(bytes, a.device, a.runs);
    std::printf("%-34s %8.3f s %7.2f GB/s\n", "limit: pinned cudaMemcpy H2D", limit,
                gbps(bytes, limit));

    // P5: each policy, the copy into allocated tensors
    const cuda_engine_options defaults{.device = a.device};
    double staged_s = 0;
    for (const auto policy :
         {cuda_policy::staged, cuda_policy::pageable, cuda_policy::registered}) {
        if (!a.policies && policy != cuda_policy::staged) continue;
        cuda_engine_options o = defaults;
        o.policy = policy;
        try {
            const double t = timed_copy(full, o, a.runs);
            if (policy == cuda_policy::staged) staged_s = t;
            std::printf("P5 %-31s %8.3f s %7.2f GB/s  %.3f of the limit%s\n",
                        ("copy, " + std::string(to_string(policy))).c_str(), t, gbps(bytes, t),
                        limit / t, policy == cuda_policy::staged ? "  (goal >= 0.90)" : "");
        } catch (const std::exception& x) {
            std::printf("P5 copy, %s: FAILED: %s\n", std::string(to_string(policy)).c_str(),
                        x.what());
        }
    }

    // P6: end to end (plan, cudaMalloc of every tensor, copy, free)
    {
        std::vector<double> t;
        for (int i = 0; i <= a.runs; ++i) {
            const auto t0 = clk::now();
            {
                cuda_engine e(defaults);
                const load_plan plan = load_plan::build(ckpt, s, {0, 1}, po);
                const auto m = load_tensors<cuda_tensor>(plan, e);
                cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
            }
            if (i > 0) t.push_back(std::chrono::duration<double>(clk::now() - t0).count());
        }
        const double e2e = median(t);
        std::printf("P6 %-31s %8.3f s %7.2f GB/s  %.3f of the limit\n",
                    "load (plan+malloc+copy+free)", e2e, gbps(bytes, e2e), limit / e2e);
        if (!a.peer_json.empty()) {
            const double lf = peer_seconds(a.peer_json, "load_file");
            if (lf > 0)
                std::printf(
                    "P6 safetensors load_file %.3f s: safeshard is %.2fx faster "
                    "(goal >= 3)\n",
                    lf, lf / e2e);
            else
                std::printf("P6 no load_file figure in %s\n", a.peer_json.c_str());
        }
    }

    // P7: one rank of world W against the full load (default options). Each run opens the
    // checkpoint afresh, as a load does: mappings start cold (it matters to strided mmap reads).
    {
        const double base = staged_s > 0 ? staged_s : timed_copy(full, defaults, a.runs);
        const schema mixed = split_schema(ckpt, true);
        auto p7 = [&](const std::string& label, const schema& sch,
                      cuda_engine_options o) -> double {
            try {
                cuda_engine e(o);
                std::vector<double> t;
                std::uint64_t rank_bytes = 0;
                for (int i = 0; i <= a.runs; ++i) {
                    const checkpoint c = checkpoint::open(dir.string());
                    prepared r(load_plan::build(c, sch, {0, a.world}, po), a.device);
                    rank_bytes = r.bytes;
                    const double sec = r.copy(e);
                    if (i > 0) t.push_back(sec);  // the first allocates the ring
                }
                const double m = median(t);
                std::printf("P7 %-31s %8.3f s %7.2f GB/s  %.3f of the full load (goal <= 0.15)\n",
                            label.c_str(), m, gbps(rank_bytes, m), m / base);
                return m / base;
            } catch (const std::exception& x) {
                std::printf("P7 %s: FAILED: %s\n", label.c_str(), x.what());
                return 0;
            }
        };
        const std::string r0 = "rank 0/" + std::to_string(a.world);
        cuda_engine_options o = defaults;
        o.strided = read_mode::mmap;
        p7(r0 + " dim 1, mmap rows", s, o);
        p7(r0 + " dim 0|1, mmap rows", mixed, o);
        o.strided = read_mode::pread;
        p7(r0 + " dim 1, pread rows", s, o);
        p7(r0 + " dim 0|1, pread rows", mixed, o);
        o = defaults;
        o.policy = cuda_policy::registered;
        p7(r0 + " dim 1, registered", s, o);
        // A rank's columns are gathered by the CPU (row copies out of the mapping), the full
        // load waits on the link: the reader count that suits one need not suit the other.
        // The full load at each count is in the sweep (--sweep-threads).
        for (const unsigned th : a.p7_threads) {
            o = defaults;
            o.threads = th;
            const std::string t = ", " + std::to_string(th) + " threads";
            p7(r0 + " dim 1" + t, s, o);
            p7(r0 + " dim 0|1" + t, mixed, o);
        }
    }

    // P8: host anonymous memory beyond the ring, device memory beyond the tensors
    {
        const std::uint64_t ring = std::uint64_t{defaults.buffers} * defaults.buffer_bytes;
        std::int64_t anon = 0, gpu = 0;
        {
            sampler smp(a.device);
            cuda_engine e(defaults);
            (void)full.copy(e);
            smp.finish();
            anon = smp.anon_growth();
            gpu = smp.gpu_used();
        }
        std::printf(
            "P8 copy: RssAnon +%.1f MiB (ring %.1f MiB, beyond it %.1f MiB, goal <= 64); "
            "device memory +%.1f MiB beyond the tensors\n",
            double(anon) / 1048576.0, double(ring) / 1048576.0,
            double(anon - static_cast<std::int64_t>(ring)) / 1048576.0, double(gpu) / 1048576.0);
        sampler smp(a.device);
        {
            cuda_engine e(defaults);
            const load_plan plan = load_plan::build(ckpt, s, {0, 1}, po);
            const auto m = load_tensors<cuda_tensor>(plan, e);
            smp.finish();
        }
        std::printf(
            "P8 load: RssAnon +%.1f MiB (beyond the ring %.1f MiB); device memory "
            "+%.1f MiB, tensors %.1f MiB, beyond them %.1f MiB\n",
            double(smp.anon_growth()) / 1048576.0,
            double(smp.anon_growth() - static_cast<std::int64_t>(ring)) / 1048576.0,
            double(smp.gpu_used()) / 1048576.0, double(bytes) / 1048576.0,
            double(smp.gpu_used() - static_cast<std::int64_t>(bytes)) / 1048576.0);
    }

    if (a.sweep) {
        std::printf(
            "sweep: buffers x buffer MiB x streams x threads, copy of %.2f GB, median of "
            "%d\n",
            double(bytes) / 1e9, std::min(a.runs, 3));
        double best = 1e30;
        cuda_engine_options best_o = defaults;
        for (unsigned b : a.sweep_buffers)
            for (unsigned mib : a.sweep_mib)
                for (unsigned st : a.sweep_streams)
                    for (unsigned th : a.sweep_threads) {
                        cuda_engine_options o = defaults;
                        o.buffers = b;
                        o.buffer_bytes = std::size_t{mib} << 20;
                        o.streams = st;
                        o.threads = th;
                        const double t = timed_copy(full, o, std::min(a.runs, 3));
                        std::printf(
                            "  buffers %2u x %2u MiB, streams %u, threads %u: %.3f s "
                            "%6.2f GB/s  %.3f of the limit\n",
                            b, mib, st, th, t, gbps(bytes, t), limit / t);
                        std::fflush(stdout);
                        if (t < best) {
                            best = t;
                            best_o = o;
                        }
                    }
        std::printf(
            "best: buffers %u, buffer_bytes %zu MiB, streams %u, threads %u: %.3f s "
            "%.2f GB/s, %.3f of the limit\n",
            best_o.buffers, best_o.buffer_bytes >> 20, best_o.streams, best_o.threads, best,
            gbps(bytes, best), limit / best);
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_bench: %s\n", e.what());
    return 1;
}
