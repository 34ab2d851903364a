// What the tests of the writing commands (convert, export, merge) share: running the built
// tool, comparing checkpoints, a private tmpfs, and the interruption harnesses (SIGINT at
// spread points of a measured run, SIGKILL at random moments).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "../support/tmpfs_mount.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/load/convert.hpp"

#ifndef SAFESHARD_EXE
#error "SAFESHARD_EXE (the built tool's path) must be defined"
#endif

namespace safeshard::test::cli {

namespace fs = std::filesystem;

inline std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

inline std::size_t count_entries(const fs::path& dir) {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
    return n;
}

struct result {
    int rc = -1;
    std::string out;
    std::string err;
};

// The tool with `args` (a shell command line), its output captured through files in `dir`
// that are removed again.
inline result run(const fs::path& dir, const std::string& args) {
    const auto o = dir / "stdout";
    const auto e = dir / "stderr";
    const std::string cmd =
        "'" SAFESHARD_EXE "' " + args + " >'" + o.string() + "' 2>'" + e.string() + "'";
    const int status = std::system(cmd.c_str());
    result r;
    REQUIRE(WIFEXITED(status));
    r.rc = WEXITSTATUS(status);
    r.out = slurp(o);
    r.err = slurp(e);
    fs::remove(o);
    fs::remove(e);
    return r;
}

// Every tensor of `b` has the name, shape and bytes of `a`'s; with `to`, floating-point
// tensors converted to it (as convert and export --dtype do).
inline void check_same(const fs::path& a_path, const fs::path& b_path,
                       std::optional<dtype> to = {}) {
    const auto a = checkpoint::open(a_path.string());
    const auto b = checkpoint::open(b_path.string());
    REQUIRE(a.tensor_count() == b.tensor_count());
    for (const auto& ta : a.tensors()) {
        CAPTURE(ta.tensor.name());
        const auto tb = b.tensor(ta.tensor.name()).tensor;
        CHECK(tb.shape() == ta.tensor.shape());
        const dtype from = ta.tensor.dtype();
        const bool converts = to && (from == dtype::bf16 || from == dtype::f32 ||
                                     from == dtype::f16 || from == dtype::f64);
        const dtype want = converts ? *to : from;
        REQUIRE(tb.dtype() == want);
        std::vector<std::byte> expect(tb.byte_size());
        (want == from ? converter(from) : find_converter(from, want))(
            ta.tensor.bytes().data(), expect.data(), ta.tensor.element_count());
        REQUIRE(tb.byte_size() == expect.size());
        CHECK(std::memcmp(tb.bytes().data(), expect.data(), expect.size()) == 0);
    }
}

// A private tmpfs mounted while it lives (where the test may mount one).
using safeshard::test::tmpfs_mount;

// The tool with `args` (argv without the program), stdout and stderr to /dev/null. A SIGINT
// that reaches the child before exec kills it by the default action (it must not run the test
// framework's handler in a copy of the test process).
inline pid_t spawn(std::vector<std::string> args) {
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    ::sigprocmask(SIG_BLOCK, &block, &old);
    const pid_t pid = ::fork();
    if (pid != 0) ::sigprocmask(SIG_SETMASK, &old, nullptr);
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::signal(SIGINT, SIG_DFL);
        ::sigprocmask(SIG_SETMASK, &old, nullptr);
        const int null = ::open("/dev/null", O_WRONLY);
        ::dup2(null, 1);
        ::dup2(null, 2);
        std::vector<char*> argv{const_cast<char*>(SAFESHARD_EXE)};
        for (auto& s : args) argv.push_back(s.data());
        argv.push_back(nullptr);
        ::execv(SAFESHARD_EXE, argv.data());
        ::_exit(127);
    }
    return pid;
}

inline int wait_status(pid_t pid) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    return status;
}

// The fastest of `runs` complete runs of `args` (each must exit 0); `after` checks and removes
// the output of each.
inline std::chrono::microseconds time_runs(const std::vector<std::string>& args, int runs,
                                           const std::function<void()>& after) {
    auto full = std::chrono::microseconds::max();
    for (int k = 0; k < runs; ++k) {
        const auto t0 = std::chrono::steady_clock::now();
        const int status = wait_status(spawn(args));
        REQUIRE(WIFEXITED(status));
        REQUIRE(WEXITSTATUS(status) == 0);
        full = std::min(full, std::chrono::duration_cast<std::chrono::microseconds>(
                                  std::chrono::steady_clock::now() - t0));
        after();
    }
    return full;
}

// Runs `args` and sends SIGINT at spread points of one measured run (the fastest of two: a
// slow first run, cold caches, would put them all after the end), so a fast machine is
// interrupted as surely as a slow one. Every outcome is 130 with nothing at `out`, or 0 with
// `check` passing; at least one run is interrupted, and no temporary is left beside `out`.
inline void interrupt_at_spread_points(const std::vector<std::string>& args, const fs::path& out,
                                       const std::function<void()>& check) {
    const auto full = time_runs(args, 2, [&] {
        check();
        fs::remove_all(out);
    });
    MESSAGE("one run took " << full.count() << " us");
    int interrupted = 0;
    for (int attempt = 0; attempt < 20 && interrupted < 2; ++attempt) {
        const pid_t pid = spawn(args);
        std::this_thread::sleep_for(full * (1 + attempt % 8) / 10);
        ::kill(pid, SIGINT);
        const int status = wait_status(pid);
        if (WIFSIGNALED(status)) {  // before main() installed its handler: nothing written yet
            CHECK(WTERMSIG(status) == SIGINT);
            CHECK_FALSE(fs::exists(out));
            continue;
        }
        REQUIRE(WIFEXITED(status));
        const int rc = WEXITSTATUS(status);
        CAPTURE(rc);
        CHECK((rc == 130 || rc == 0));
        if (rc == 130) {
            ++interrupted;
            CHECK_FALSE(fs::exists(out));
        } else {
            check();
            fs::remove_all(out);
        }
    }
    CHECK(interrupted > 0);
    for (const auto& e : fs::directory_iterator(out.parent_path())) {
        const std::string n = e.path().filename().string();
        CHECK(n.find(".tmp-") == std::string::npos);
        CHECK(n.find(".new-") == std::string::npos);
    }
}

struct crash_tally {
    int killed_mid = 0;  // runs the signal found still running
    int absent = 0;      // runs that left no OUT
};

// `runs` runs of `args_for(out, force)` into `work`/out, each killed with SIGKILL at a random
// moment (seeded) within the fastest of three measured runs (one slow run on a loaded machine
// would put most moments after the end); the first makes `work`/ref, kept. Odd runs replace a
// complete copy of ref with --force. After each, OUT is absent (never after a forced run: the
// old folder is not lost) or complete, which `complete(out)` checks.
inline crash_tally kill_at_random_moments(
    const fs::path& work, int runs, unsigned seed,
    const std::function<std::vector<std::string>(const fs::path& out, bool force)>& args_for,
    const std::function<void(const fs::path& out)>& complete) {
    const auto out = work / "out";
    const auto full_us = std::min(time_runs(args_for(work / "ref", false), 1, [] {}),
                                  time_runs(args_for(out, false), 2, [&] { fs::remove_all(out); }))
                             .count();
    std::mt19937 rng(seed);
    std::uniform_int_distribution<long> delay(0, std::max<long>(full_us, 1000));
    crash_tally t;
    for (int i = 0; i < runs; ++i) {
        const bool force = i % 2 == 1;
        if (!force)
            fs::remove_all(out);
        else if (!fs::exists(out))
            fs::copy(work / "ref", out, fs::copy_options::recursive);
        const pid_t pid = spawn(args_for(out, force));
        std::this_thread::sleep_for(std::chrono::microseconds(delay(rng)));
        ::kill(pid, SIGKILL);
        if (WIFSIGNALED(wait_status(pid))) ++t.killed_mid;
        if (!fs::exists(out)) {
            ++t.absent;
            CHECK_FALSE(force);
            continue;
        }
        complete(out);
    }
    MESSAGE(t.killed_mid << " of " << runs << " runs killed before they ended, " << t.absent
                         << " left no OUT");
    return t;
}

// The names in `dir`, sorted.
inline std::vector<std::string> listing(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

// The names in `dir`, with, for each hidden one ending in a pid (a temporary), that process's
// state now: "gone", or its /proc state letter and command (Z: a zombie), for failure messages.
inline std::string listing_with_owners(const fs::path& dir) {
    std::string s;
    for (const auto& n : listing(dir)) {
        s += (s.empty() ? "" : ", ") + n;
        const auto dash = n.find_last_of('-');
        if (n.front() != '.' || dash == std::string::npos) continue;
        const std::string digits = n.substr(dash + 1);
        if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
        const std::string stat = slurp("/proc/" + digits + "/stat");
        const auto close = stat.rfind(')');
        s += stat.empty() || close == std::string::npos
                 ? " (pid " + digits + " gone)"
                 : " (pid " + digits + " state " + stat.substr(close + 2, 1) + " " +
                       stat.substr(0, close + 1) + ")";
    }
    return s;
}

}  // namespace safeshard::test::cli
