// load/file_cache.hpp: a bounded number of files open (and mapped) at once, least recently used
// closed first; engines run window by window over it.
#include "safeshard/load/file_cache.hpp"

#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "../support/expect_error.hpp"
#include "model_gen.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"

using namespace safeshard;
using safeshard::test::expect_error;
using namespace safeshard::test;
namespace fs = std::filesystem;

namespace {

std::size_t open_descriptors() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
    return n;
}

// Files f0..f{n-1}, file i holding i + 1 bytes of value i.
std::vector<cached_file> numbered_files(const fs::path& dir, std::size_t n) {
    std::vector<cached_file> files;
    for (std::size_t i = 0; i < n; ++i) {
        const auto p = dir / ("f" + std::to_string(i));
        write_text(p, std::string(i + 1, static_cast<char>(i)));
        files.push_back(cached_file{p, {}});
    }
    return files;
}

copy_op reads(std::uint32_t file) {
    copy_op op;
    op.file = file;
    op.box.rows = 1;
    op.box.src_row_bytes = op.box.dst_row_bytes = op.box.src_pitch = op.box.dst_pitch = 1;
    return op;
}

// Runs `work` in a child whose RLIMIT_NOFILE is `limit` (soft and hard); its exit status.
template <class F>
int with_fd_limit(rlim_t limit, F&& work) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const rlimit l{limit, limit};
        if (::setrlimit(RLIMIT_NOFILE, &l) != 0) ::_exit(90);
        int rc = 0;
        try {
            rc = work();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "child: %s\n", e.what());
            rc = 91;
        }
        std::fflush(nullptr);
        ::_exit(rc);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    return WEXITSTATUS(status);
}

}  // namespace

TEST_CASE("file_cache: at most capacity files open, the least recently used closed first") {
    temp_folder dir;
    const std::size_t fds = open_descriptors();
    file_cache c(numbered_files(dir.path(), 6), {.capacity = 2});
    CHECK(c.capacity() == 2);
    CHECK(c.size() == 6);
    CHECK(c.reader(0).size() == 1);
    CHECK(c.reader(1).size() == 2);
    CHECK(c.reader(0).size() == 1);  // 0 is the newest now: opening 2 closes 1
    CHECK(c.reader(2).size() == 3);
    CHECK(c.open_count() == 2);
    CHECK(open_descriptors() == fds + 2);
    CHECK(c.sources()[1].reader == nullptr);
    CHECK(c.sources()[1].mapping.empty());
    REQUIRE(c.sources()[0].reader != nullptr);
    // The mapping is of the file the reader has open.
    REQUIRE(c.sources()[2].mapping.size() == 3);
    CHECK(c.sources()[2].mapping[2] == std::byte{2});
    for (std::size_t i = 0; i < 6; ++i) {
        std::byte b{};
        c.reader(i).read_exact(std::span(&b, 1), i);
        CHECK(b == std::byte(i));
        CHECK(c.open_count() <= 2);
    }
    c.close_all();
    CHECK(c.open_count() == 0);
    CHECK(open_descriptors() == fds);
    CHECK_THROWS_AS((void)c.reader(6), error);
}

TEST_CASE("file_cache: open_for covers the leading ops whose files fit at once") {
    temp_folder dir;
    file_cache c(numbered_files(dir.path(), 5), {.map = false, .capacity = 2});
    copy_op zero;
    zero.kind = copy_kind::zero;
    const std::vector<copy_op> ops = {reads(0), reads(0), reads(1), reads(2), reads(2),
                                      reads(3), zero,     reads(4), reads(4)};
    std::span<const copy_op> rest(ops);
    std::vector<std::size_t> windows;
    while (!rest.empty()) {
        const std::size_t n = c.open_for(rest);
        REQUIRE(n > 0);
        for (const copy_op& op : rest.first(n))
            if (op.kind == copy_kind::copy) CHECK(c.sources()[op.file].reader != nullptr);
        CHECK(c.sources()[0].mapping.empty());  // map = false
        windows.push_back(n);
        rest = rest.subspan(n);
    }
    CHECK(windows == std::vector<std::size_t>{3, 4, 2});
}

TEST_CASE("file_cache: a file renamed over since its header was read is refused") {
    temp_folder dir;
    auto files = numbered_files(dir.path(), 2);
    struct stat st {};
    REQUIRE(::stat(files[1].path.c_str(), &st) == 0);
    files[1].expect = file_version::of(st);
    // What a download or an atomic save does: a new file renamed over the name.
    write_text(dir.path() / "new.tmp", std::string(2, '\1'));
    fs::rename(dir.path() / "new.tmp", files[1].path);
    file_cache c(files, {.capacity = 1});
    CHECK(c.reader(0).size() == 1);
    {
        const auto e = expect_error(errc::io_error, [&] { (void)c.reader(1); });
        CHECK(std::string(e.what()).find("replaced") != std::string::npos);
        CHECK(e.file() == files[1].path.string());
    }
    CHECK(c.open_count() == 0);  // 0 was closed to make room, 1 never opened
}

TEST_CASE("default_file_capacity: half the descriptors left under RLIMIT_NOFILE") {
    CHECK(with_fd_limit(128, [] {
              const std::size_t in_use = open_descriptors();  // the listing's own counted too
              const std::size_t cap = default_file_capacity(false);
              const std::size_t mapped = default_file_capacity(true);
              return cap == (128 - in_use) / 2 && mapped >= 1 && mapped <= cap ? 0 : 1;
          }) == 0);
    CHECK(with_fd_limit(4, [] { return default_file_capacity(true) == 1 ? 0 : 1; }) == 0);
}

TEST_CASE("run_windows: more files than fit give the same bytes, progress over all of them") {
    model_spec m;
    m.layers = 6;
    m.shards = 12;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const load_plan plan = load_plan::build(ckpt, {1, 2});
    std::uint64_t written = 0;
    for (const copy_op& op : plan.ops()) written += op.bytes_written();
    auto run = [&](std::size_t capacity, std::vector<std::uint64_t>* seen) {
        const auto dests = plan.destinations();
        std::vector<std::vector<std::byte>> out(dests.size());
        std::vector<std::byte*> addresses(dests.size(), nullptr);
        std::vector<std::uint64_t> sizes(dests.size(), 0);
        for (std::size_t i = 0; i < dests.size(); ++i) {
            out[i].resize(dests[i].bytes);
            addresses[i] = out[i].data();
            sizes[i] = dests[i].bytes;
        }
        file_cache files(cached_files(plan), {.capacity = capacity});
        host_engine engine({.threads = 2});
        std::uint64_t total = 0;
        run_windows(engine, files, plan.ops(), addresses, sizes,
                    [&](std::uint64_t done, std::uint64_t all) {
                        if (seen) seen->push_back(done);
                        total = all;
                    });
        CHECK(files.open_count() <= capacity);
        if (seen) CHECK(total == written);
        return out;
    };
    std::vector<std::uint64_t> seen;
    const auto whole = run(64, nullptr);
    const auto windowed = run(3, &seen);
    CHECK(windowed == whole);
    // Worker threads report in any order; the last window ends at the plan's total.
    REQUIRE_FALSE(seen.empty());
    CHECK(*std::max_element(seen.begin(), seen.end()) == written);
}
