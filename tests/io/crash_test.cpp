// Crash safety: writers killed with SIGKILL at random moments never leave a partial target.
#include "safeshard/io/atomic_directory.hpp"
#include "safeshard/io/atomic_file.hpp"

#include "io_test_support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace safeshard;
using namespace io_test;

namespace {

constexpr int crash_runs = 100;

// Where the writers run: a private tmpfs when we may mount one (a SIGKILL loses no page cache,
// so the outcome is the same as on a disk, and no fsync wait makes 100 runs take seconds),
// else the scratch folder on disk.
class crash_area {
public:
    crash_area() : mnt_(scratch_ / "tmpfs", "size=16m") {
        if (!mnt_.mounted()) fs::remove(scratch_ / "tmpfs");
    }
    [[nodiscard]] const fs::path& path() const {
        return mnt_.mounted() ? mnt_.path() : scratch_.path();
    }
    [[nodiscard]] fs::path operator/(const std::string& name) const { return path() / name; }
    [[nodiscard]] std::string kind() const { return mnt_.mounted() ? "tmpfs" : "disk"; }

private:
    scratch_dir scratch_;
    tmpfs_mount mnt_;
};

// Written in small pieces so that a kill often lands between two writes.
void write_in_pieces(atomic_file& f, const std::vector<std::byte>& bytes) {
    for (std::size_t off = 0; off < bytes.size(); off += 4096)
        f.write(std::span(bytes).subspan(off, std::min<std::size_t>(4096, bytes.size() - off)));
}

// Runs `work` in a child; kills it `delay` after fork() returned unless it finished (a
// negative delay waits). Returns whether it was killed. With `worked`, the child reports how
// long its work took (its exit, slow under ASan, is not a moment worth killing in).
bool run_child(const std::function<void()>& work, std::chrono::microseconds delay,
               std::chrono::microseconds* worked = nullptr) {
    int report[2] = {-1, -1};
    if (worked != nullptr) REQUIRE(::pipe(report) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const auto t0 = std::chrono::steady_clock::now();
        int code = 0;
        try {
            work();
        } catch (...) {
            code = 3;
        }
        const std::int64_t us = std::chrono::duration_cast<std::chrono::microseconds>(
                                    std::chrono::steady_clock::now() - t0)
                                    .count();
        if (report[1] >= 0 && ::write(report[1], &us, sizeof us) != sizeof us) code = 4;
        ::_exit(code);
    }
    if (worked != nullptr) {
        ::close(report[1]);
        std::int64_t us = 0;
        const bool got = ::read(report[0], &us, sizeof us) == sizeof us;
        ::close(report[0]);
        REQUIRE(got);
        *worked = std::chrono::microseconds(us);
    }
    if (delay.count() >= 0) {
        std::this_thread::sleep_for(delay);
        ::kill(pid, SIGKILL);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    if (WIFEXITED(status)) REQUIRE(WEXITSTATUS(status) == 0);  // the writer itself never fails
    return WIFSIGNALED(status);
}

// How long one uninterrupted child works (the median of three); `reset` runs before each.
std::chrono::microseconds time_child(
    const std::function<void()>& work, const std::function<void()>& reset = [] {}) {
    std::vector<std::chrono::microseconds> runs;
    for (int i = 0; i < 3; ++i) {
        reset();
        std::chrono::microseconds worked{};
        run_child(work, std::chrono::microseconds(-1), &worked);
        runs.push_back(worked);
    }
    std::sort(runs.begin(), runs.end());
    return std::max(runs[1], std::chrono::microseconds(1));
}

std::size_t count_prefixed(const fs::path& dir, const std::string& prefix) {
    const auto names = list_names(dir);
    return static_cast<std::size_t>(std::count_if(
        names.begin(), names.end(), [&](const std::string& n) { return n.starts_with(prefix); }));
}

std::vector<std::byte> file_version(int v) {
    return pattern(100000 + static_cast<std::size_t>(v) * 4099, static_cast<std::uint32_t>(v) + 1);
}

// Plain writes, in pieces; atomic_directory::commit() makes them durable.
void write_plain(const fs::path& p, const std::vector<std::byte>& bytes) {
    safeshard::detail::unique_fd fd(
        ::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd) throw std::runtime_error("open failed");
    for (std::size_t off = 0; off < bytes.size(); off += 4096) {
        const std::size_t n = std::min<std::size_t>(4096, bytes.size() - off);
        if (::write(fd.get(), bytes.data() + off, n) != static_cast<ssize_t>(n))
            throw std::runtime_error("write failed");
    }
}

constexpr int model_files = 3;

// The folder a writer produces: several files, one in a subfolder.
void write_model(const fs::path& dir) {
    for (int i = 0; i < model_files; ++i)
        write_plain(dir / ("shard-" + std::to_string(i) + ".bin"),
                    pattern(40000 + static_cast<std::size_t>(i), static_cast<std::uint32_t>(i)));
    fs::create_directory(dir / "sub");
    write_plain(dir / "sub" / "index.json", pattern(1234, 99));
}

bool model_is_complete(const fs::path& dir) {
    std::vector<std::string> expected;
    for (int i = 0; i < model_files; ++i) {
        const auto p = dir / ("shard-" + std::to_string(i) + ".bin");
        if (!fs::exists(p) || read_file(p) != pattern(40000 + static_cast<std::size_t>(i),
                                                      static_cast<std::uint32_t>(i)))
            return false;
        expected.push_back("shard-" + std::to_string(i) + ".bin");
    }
    expected.push_back("sub");
    return list_names(dir) == expected &&
           list_names(dir / "sub") == std::vector<std::string>{"index.json"} &&
           read_file(dir / "sub" / "index.json") == pattern(1234, 99);
}

}  // namespace

TEST_SUITE("io") {
    TEST_CASE("crash safety: atomic_file killed at random moments leaves the old or the new file") {
        crash_area dir;
        const auto target = dir / "ckpt.bin";
        {
            atomic_file f(target);
            f.write(file_version(0));
            f.commit();
        }
        int current = 0;
        int next = 1;
        auto writer = [&] {
            atomic_file f(target);
            write_in_pieces(f, file_version(next));
            f.commit();
        };
        const auto full = time_child(writer);
        current = next++;
        std::mt19937 rng(20261123);
        std::uniform_int_distribution<std::int64_t> delay_us(0, full.count() * 2);
        const std::string prefix = ".ckpt.bin.tmp-";
        int killed = 0, replaced = 0, mid_write = 0;
        for (int run = 0; run < crash_runs; ++run) {
            CAPTURE(run);
            const bool was_killed = run_child(writer, std::chrono::microseconds(delay_us(rng)));
            killed += was_killed ? 1 : 0;
            const auto now = read_file(target);
            const bool is_old = now == file_version(current);
            const bool is_new = now == file_version(next);
            REQUIRE((is_old || is_new));  // never partial, never mixed
            if (is_new) {
                ++replaced;
                current = next;
            }
            ++next;
            // A temporary left behind means the kill landed while the file was being written.
            if (count_prefixed(dir.path(), prefix) > 0) ++mid_write;
        }
        MESSAGE("atomic_file on " << dir.kind() << ": " << killed << " of " << crash_runs
                                  << " writers killed, " << mid_write << " of them mid-write, "
                                  << replaced << " replaced the target (one run takes "
                                  << full.count() << " us)");
        CHECK(mid_write > 0);
        // Each writer cleans its dead predecessors' temporaries; remove_stale takes the rest.
        const auto left = count_prefixed(dir.path(), prefix);
        CHECK(atomic_file::remove_stale(target) == left);
        CHECK(list_names(dir.path()) == std::vector<std::string>{"ckpt.bin"});
    }

    TEST_CASE("crash safety: atomic_directory killed at random moments leaves nothing or all") {
        crash_area dir;
        const auto target = dir / "model";
        auto writer = [&] {
            atomic_directory d(target);
            write_model(d.path());
            d.commit();
        };
        const auto full = time_child(writer, [&] { fs::remove_all(target); });
        fs::remove_all(target);
        std::mt19937 rng(11232026);
        std::uniform_int_distribution<std::int64_t> delay_us(0, full.count() * 2);
        int killed = 0, complete = 0, max_left = 0, mid_write = 0;
        for (int run = 0; run < crash_runs; ++run) {
            CAPTURE(run);
            const bool was_killed = run_child(writer, std::chrono::microseconds(delay_us(rng)));
            killed += was_killed ? 1 : 0;
            if (fs::exists(target)) {
                REQUIRE(model_is_complete(target));
                ++complete;
                fs::remove_all(target);
            }
            const auto temps =
                static_cast<int>(count_prefixed(dir.path(), ".model.safeshard.tmp-"));
            max_left = std::max(max_left, temps);
            if (temps > 0) ++mid_write;
        }
        MESSAGE("atomic_directory on " << dir.kind() << ": " << killed << " of " << crash_runs
                                       << " writers killed, " << mid_write << " of them mid-write, "
                                       << complete << " committed (one run takes " << full.count()
                                       << " us)");
        CHECK(mid_write > 0);
        CHECK(max_left <= 1);  // each new writer removed its dead predecessor's folder
        const auto left = count_prefixed(dir.path(), ".model.safeshard.tmp-");
        CHECK(atomic_directory::remove_stale(target) == left);
        CHECK(list_names(dir.path()).empty());
    }

}  // TEST_SUITE
