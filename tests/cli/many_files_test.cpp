// The tool on checkpoints of many files: 300 shards under RLIMIT_NOFILE 128 (soft and hard)
// convert, export and merge; the soft limit is raised to the hard one at start; 70,000
// one-tensor shards verify and inspect (one mapping each would pass vm.max_map_count, 65530
// by default).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "../load/model_gen.hpp"
#include "cli_support.hpp"

using namespace safeshard;
using namespace safeshard::test::cli;
namespace fs = std::filesystem;

namespace {

// The tool with `args` under RLIMIT_NOFILE soft/hard, its output captured through files.
result run_limited(const fs::path& dir, rlim_t soft, rlim_t hard, std::vector<std::string> args) {
    const auto o = dir / "stdout", e = dir / "stderr";
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const rlimit l{soft, hard};
        if (::setrlimit(RLIMIT_NOFILE, &l) != 0) ::_exit(90);
        const int out = ::open(o.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        const int err = ::open(e.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (out < 0 || err < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) ::_exit(91);
        std::vector<char*> argv{const_cast<char*>(SAFESHARD_EXE)};
        for (auto& s : args) argv.push_back(s.data());
        argv.push_back(nullptr);
        ::execv(SAFESHARD_EXE, argv.data());
        ::_exit(127);
    }
    const int status = wait_status(pid);
    REQUIRE(WIFEXITED(status));
    result r;
    r.rc = WEXITSTATUS(status);
    r.out = slurp(o);
    r.err = slurp(e);
    fs::remove(o);
    fs::remove(e);
    return r;
}

// A generated llama checkpoint of 300 shards, one tensor each.
void write_300_shards(const fs::path& dir) {
    safeshard::test::model_spec m;
    m.layers = 33;
    m.shards = 300;
    fs::create_directories(dir);
    safeshard::test::write_checkpoint(dir, m, safeshard::test::make_tensors(m));
}

// One safetensors file holding a U8 tensor [1] named `name` whose byte is `value`.
std::string one_byte_file(const std::string& name, char value) {
    std::string header =
        "{\"" + name + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    while (header.size() % 8 != 0) header += ' ';
    std::string out(8, '\0');
    const std::uint64_t n = header.size();
    std::memcpy(out.data(), &n, 8);
    return out + header + value;
}

}  // namespace

TEST_SUITE("cli") {
    TEST_CASE("300 shards under RLIMIT_NOFILE 128: convert, export and merge go through") {
        safeshard::test::temp_folder d;
        const fs::path in = d.path() / "in";
        write_300_shards(in);
        // Soft and hard: the tool cannot raise it, so it must read with fewer files open.
        auto r = run_limited(d.path(), 128, 128,
                             {"convert", in.string(), "--out", (d.path() / "conv").string()});
        CHECK_MESSAGE(r.rc == 0, "convert: " << r.err);
        if (r.rc == 0) check_same(in, d.path() / "conv");
        const std::vector<std::string> export_args = {
            "export",           in.string(), "--tp",  "2",
            "--max-shard-size", "1",         "--out", (d.path() / "ex").string()};
        r = run_limited(d.path(), 128, 128, export_args);
        CHECK_MESSAGE(r.rc == 0, "export: " << r.err);
        if (r.rc != 0) {  // failed above; made without the limit so that merge is tried too
            rlimit now{};
            REQUIRE(::getrlimit(RLIMIT_NOFILE, &now) == 0);
            REQUIRE(run_limited(d.path(), now.rlim_cur, now.rlim_max, export_args).rc == 0);
        }
        std::size_t rank_files = 0;
        for (const auto& e : fs::directory_iterator(d.path() / "ex" / "rank-00000"))
            rank_files += e.path().extension() == ".safetensors";
        CHECK(rank_files >= 128);  // the merge reads more files than it may open at once
        r = run_limited(
            d.path(), 128, 128,
            {"merge", (d.path() / "ex").string(), "--out", (d.path() / "merged").string()});
        CHECK_MESSAGE(r.rc == 0, "merge: " << r.err);
        if (r.rc == 0) check_same(in, d.path() / "merged");
    }

    TEST_CASE("the tool raises its soft RLIMIT_NOFILE to the hard limit") {
        safeshard::test::temp_folder d;
        write_300_shards(d.path() / "in");
        rlimit now{};
        REQUIRE(::getrlimit(RLIMIT_NOFILE, &now) == 0);
        const rlim_t hard = std::min<rlim_t>(now.rlim_max, 4096);
        REQUIRE(hard > 64);
        // The listing goes to a pipe of one page that is not read until the tool's limits are:
        // the tool is blocked writing, alive, when /proc says what its soft limit is.
        int fds[2];
        REQUIRE(::pipe(fds) == 0);
        (void)::fcntl(fds[0], F_SETPIPE_SZ, 4096);
        std::fflush(nullptr);
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            const rlimit l{64, hard};
            if (::setrlimit(RLIMIT_NOFILE, &l) != 0) ::_exit(90);
            ::dup2(fds[1], 1);
            ::close(fds[0]);
            ::close(fds[1]);
            const int null = ::open("/dev/null", O_WRONLY);
            ::dup2(null, 2);
            std::string cmd = "inspect", path = (d.path() / "in").string();
            char* argv[] = {const_cast<char*>(SAFESHARD_EXE), cmd.data(), path.data(), nullptr};
            ::execv(SAFESHARD_EXE, argv);
            ::_exit(127);
        }
        ::close(fds[1]);
        char c = 0;
        REQUIRE(::read(fds[0], &c, 1) == 1);  // main() has run its first lines
        std::string soft;
        {
            std::ifstream limits("/proc/" + std::to_string(pid) + "/limits");
            std::string line;
            while (std::getline(limits, line))
                if (line.starts_with("Max open files")) {
                    std::istringstream words(line.substr(std::strlen("Max open files")));
                    words >> soft;
                }
        }
        std::size_t listed = 1;
        char buf[4096];
        for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;)
            listed += static_cast<std::size_t>(n);
        ::close(fds[0]);
        const int status = wait_status(pid);
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 0);
        CHECK(listed > 4096);
        CHECK(soft == std::to_string(hard));
    }

    TEST_CASE("70,000 one-tensor shards: verify and inspect map none of them") {
        safeshard::test::temp_folder d;
        const fs::path in = d.path() / "in";
        fs::create_directories(in);
        constexpr int n = 70000;
        const auto t0 = std::chrono::steady_clock::now();
        std::string index =
            "{\"metadata\":{\"total_size\":" + std::to_string(n) + "},\"weight_map\":{";
        for (int i = 0; i < n; ++i) {
            char file[32];
            std::snprintf(file, sizeof file, "s%05d.safetensors", i);
            const std::string name = "t" + std::to_string(i);
            const std::string bytes = one_byte_file(name, static_cast<char>(i));
            const int fd =
                ::open((in / file).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            REQUIRE(fd >= 0);
            REQUIRE(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
            ::close(fd);
            index += (i ? ",\"" : "\"") + name + "\":\"" + file + "\"";
        }
        safeshard::test::write_text(in / "model.safetensors.index.json", index + "}}");
        const auto t1 = std::chrono::steady_clock::now();
        auto r = run(d.path(), "verify " + q(in));
        CAPTURE(r.err);
        CHECK(r.rc == 0);
        CHECK(r.out.starts_with("ok\n70000 tensors in 70000 files"));
        const auto t2 = std::chrono::steady_clock::now();
        r = run(d.path(), "inspect " + q(in));
        CAPTURE(r.err);
        CHECK(r.rc == 0);
        CHECK(r.out.find("t69999") != std::string::npos);
        const auto t3 = std::chrono::steady_clock::now();
        auto ms = [](auto a, auto b) {
            return std::chrono::duration_cast<std::chrono::milliseconds>(b - a).count();
        };
        MESSAGE("70,000 shards: written in " << ms(t0, t1) << " ms, verify " << ms(t1, t2)
                                             << " ms, inspect " << ms(t2, t3) << " ms");
    }
}
