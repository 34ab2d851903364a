// convert_checkpoint (what `safeshard convert` runs) throughput against the bytes' physical
// cost on the same file system, in one run: reading the input with pread plus writing the same
// number of bytes with write (and one fsync per file, as convert does), per mode (BF16 -> F16,
// and a plain re-shard).
//
// Usage: convert_bench [WORK_DIR=/tmp] [MIB=512] [REPS=5]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "safeshard/core/clock.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/save/convert.hpp"

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

using safeshard::seconds_since;

// Realistic BF16 weights: N(0, 0.02), in 8 files of `mib`/8 MiB, 16 tensors each.
void make_input(const fs::path& dir, std::size_t mib) {
    fs::create_directories(dir);
    const std::size_t per_tensor = (mib << 20) / 8 / 16 / 2;  // elements
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0.f, 0.02f);
    std::vector<float> f(per_tensor);
    std::vector<std::vector<std::byte>> bufs(16, std::vector<std::byte>(per_tensor * 2));
    const auto to_bf16 = safeshard::find_converter(safeshard::dtype::f32, safeshard::dtype::bf16);
    std::string weight_map;
    std::uint64_t total = 0;
    for (int file = 0; file < 8; ++file) {
        std::vector<safeshard::tensor_data> tensors;
        std::vector<std::string> names;
        for (int t = 0; t < 16; ++t)
            names.push_back("model.layers." + std::to_string(file * 16 + t) + ".w");
        for (int t = 0; t < 16; ++t) {
            for (auto& v : f) v = dist(rng);
            to_bf16(reinterpret_cast<const std::byte*>(f.data()), bufs[t].data(), per_tensor);
            tensors.push_back(safeshard::tensor_data{names[t], safeshard::dtype::bf16,
                                                     safeshard::shape{per_tensor / 1024, 1024},
                                                     bufs[t]});
        }
        const std::string file_name =
            "model-0000" + std::to_string(file + 1) + "-of-00008.safetensors";
        safeshard::save_file(dir / file_name, tensors, safeshard::metadata_map{{"format", "pt"}});
        for (const auto& n : names) {
            weight_map += (weight_map.empty() ? "\"" : ",\"") + n + "\":\"" + file_name + "\"";
            total += per_tensor * 2;
        }
    }
    std::FILE* ix = std::fopen((dir / "model.safetensors.index.json").c_str(), "w");
    std::fprintf(ix, "{\"metadata\":{\"total_size\":%llu},\"weight_map\":{%s}}",
                 static_cast<unsigned long long>(total), weight_map.c_str());
    std::fclose(ix);
}

// pread every input file in 8 MiB chunks and write the same bytes to files in `out`, split
// like the output (`shards` files), fsync each: what any convert must at least do.
double read_plus_write(const fs::path& in, const fs::path& out, int shards) {
    fs::create_directories(out);
    std::vector<std::byte> buf(8u << 20);
    std::uint64_t total = 0;
    for (const auto& e : fs::directory_iterator(in)) total += fs::file_size(e.path());
    const std::uint64_t per_shard =
        (total + static_cast<std::uint64_t>(shards) - 1) / static_cast<std::uint64_t>(shards);
    const auto t0 = clock_type::now();
    int wfd = -1;
    int shard = 0;
    std::uint64_t in_shard = per_shard;
    for (const auto& e : fs::directory_iterator(in)) {
        const int rfd = ::open(e.path().c_str(), O_RDONLY);
        for (off_t off = 0;;) {
            const ssize_t n = ::pread(rfd, buf.data(), buf.size(), off);
            if (n <= 0) break;
            off += n;
            if (in_shard >= per_shard) {
                if (wfd >= 0) {
                    ::fsync(wfd);
                    ::close(wfd);
                }
                wfd = ::open((out / ("s" + std::to_string(shard++))).c_str(),
                             O_WRONLY | O_CREAT | O_TRUNC, 0644);
                in_shard = 0;
            }
            for (ssize_t done = 0; done < n;) {
                const ssize_t w =
                    ::write(wfd, buf.data() + done, static_cast<std::size_t>(n - done));
                if (w <= 0) {
                    std::perror("write");
                    std::exit(1);
                }
                done += w;
            }
            in_shard += static_cast<std::uint64_t>(n);
        }
        ::close(rfd);
    }
    if (wfd >= 0) {
        ::fsync(wfd);
        ::close(wfd);
    }
    const double s = seconds_since(t0);
    fs::remove_all(out);
    return s;
}

double run_convert(const fs::path& in, const fs::path& out, safeshard::convert_options o) {
    const auto t0 = clock_type::now();
    const auto c = safeshard::checkpoint::open(in.string());
    (void)safeshard::convert_checkpoint(c, out, o);
    const double s = seconds_since(t0);
    fs::remove_all(out);
    return s;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    const fs::path work = fs::path(argc > 1 ? argv[1] : "/tmp") /
                          ("safeshard-convert-bench-" + std::to_string(::getpid()));
    const std::size_t mib = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 512;
    const int reps = argc > 3 ? std::atoi(argv[3]) : 5;
    make_input(work / "in", mib);
    std::uint64_t bytes = 0;
    for (const auto& e : fs::directory_iterator(work / "in")) bytes += fs::file_size(e.path());
    safeshard::convert_options to_f16, reshard_only;  // 3 output shards of ~mib/3
    to_f16.to = safeshard::dtype::f16;
    to_f16.max_shard_size = reshard_only.max_shard_size = (mib << 20) / 3;
    std::vector<double> base, f16, reshard;
    for (int r = 0; r < reps; ++r) {
        // Interleaved so that load changes on a shared machine hit every column alike.
        base.push_back(read_plus_write(work / "in", work / "base", 3));
        f16.push_back(run_convert(work / "in", work / "f16", to_f16));
        reshard.push_back(run_convert(work / "in", work / "re", reshard_only));
    }
    fs::remove_all(work);
    const double gb = static_cast<double>(bytes) / 1e9;
    const double b = median(base);
    std::printf("input %.0f MiB in 8 files, %d repetitions, medians (s, GB/s of input):\n",
                static_cast<double>(bytes) / 1048576.0, reps);
    std::printf("| run | seconds | GB/s | ratio to read+write |\n|---|---:|---:|---:|\n");
    std::printf("| pread + write + fsync (the limit) | %.3f | %.2f | 1.00 |\n", b, gb / b);
    std::printf("| convert --dtype f16 (BF16->F16) | %.3f | %.2f | %.2f |\n", median(f16),
                gb / median(f16), b / median(f16));
    std::printf("| convert (re-shard only) | %.3f | %.2f | %.2f |\n", median(reshard),
                gb / median(reshard), b / median(reshard));
    return 0;
}
