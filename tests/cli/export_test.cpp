// `safeshard export` and `safeshard merge` end to end: the built binary on generated
// checkpoints; verify passes on exported and merged folders, the merge is bit-exact, exit
// codes, and no partial output on error or SIGINT.
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "../load/model_gen.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/load/convert.hpp"

using namespace safeshard;
namespace fs = std::filesystem;

namespace {

std::string fmt_names(const std::vector<std::string>& names) {
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : " ") + n;
    return s;
}

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

struct result {
    int rc = -1;
    std::string out;
    std::string err;
};

result run(const fs::path& dir, const std::string& args) {
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

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

void make_model(const fs::path& dir, const test::model_spec& m) {
    fs::create_directories(dir);
    auto tensors = test::make_tensors(m);
    std::mt19937_64 rng(7);
    tensors["extra.position_bias"] = test::random_tensor({2, 3}, rng);  // outside the schema
    test::write_checkpoint(dir, m, tensors);
}

// Every tensor of `b` equals `a`'s (converted to `to` where given).
void check_same(const fs::path& a_path, const fs::path& b_path,
                std::optional<dtype> to = std::nullopt) {
    const auto a = checkpoint::open(a_path.string());
    const auto b = checkpoint::open(b_path.string());
    REQUIRE(a.tensor_count() == b.tensor_count());
    for (const auto& ta : a.tensors()) {
        CAPTURE(ta.tensor.name());
        const auto tb = b.tensor(ta.tensor.name()).tensor;
        CHECK(tb.shape() == ta.tensor.shape());
        const dtype from = ta.tensor.dtype();
        const dtype want = to ? *to : from;
        REQUIRE(tb.dtype() == want);
        std::vector<std::byte> expect(tb.byte_size());
        (want == from ? converter(from) : find_converter(from, want))(
            ta.tensor.bytes().data(), expect.data(), ta.tensor.element_count());
        CHECK(std::memcmp(tb.bytes().data(), expect.data(), expect.size()) == 0);
    }
}

std::size_t count_entries(const fs::path& dir) {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
    return n;
}

// Runs `args` (argv, without the program) and sends SIGINT at spread points of one measured
// run; every outcome is 130 with nothing at `out`, or 0 with `check` passing.
void interrupt_at_spread_points(const test::temp_folder& d, std::vector<std::string> args,
                                const fs::path& out, const std::function<void()>& check) {
    auto spawn = [&] {
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
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
    };
    // The fastest of two complete runs: the kill points below are fractions of it (a slow
    // first run, cold caches, would put them all after the end).
    auto full = std::chrono::microseconds::max();
    for (int k = 0; k < 2; ++k) {
        const auto t0 = std::chrono::steady_clock::now();
        const pid_t pid = spawn();
        int status = 0;
        REQUIRE(::waitpid(pid, &status, 0) == pid);
        REQUIRE(WIFEXITED(status));
        REQUIRE(WEXITSTATUS(status) == 0);
        full = std::min(full, std::chrono::duration_cast<std::chrono::microseconds>(
                                  std::chrono::steady_clock::now() - t0));
        check();
        fs::remove_all(out);
    }
    MESSAGE("one run took " << full.count() << " us");
    int interrupted = 0;
    for (int attempt = 0; attempt < 20 && interrupted < 2; ++attempt) {
        const pid_t pid = spawn();
        std::this_thread::sleep_for(full * (1 + attempt % 8) / 10);
        ::kill(pid, SIGINT);
        int status = 0;
        REQUIRE(::waitpid(pid, &status, 0) == pid);
        if (WIFSIGNALED(status)) {  // before main() installed its handler
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
    for (const auto& e : fs::directory_iterator(d.path())) {
        const std::string n = e.path().filename().string();
        CHECK(n.find(".tmp-") == std::string::npos);
        CHECK(n.find(".new-") == std::string::npos);
    }
}

}  // namespace

TEST_SUITE("cli") {
    TEST_CASE("export then merge: verify passes on every rank and on the merge, bit-exact") {
        test::temp_folder d;
        test::model_spec m;
        m.type = "qwen2";
        m.bias = true;
        make_model(d.path() / "in", m);
        auto r = run(d.path(), "export " + q(d.path() / "in") + " --tp 4 --kv-convention " +
                                   "interleaved --out " + q(d.path() / "ex"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("for a world of 4 (dtypes kept)") != std::string::npos);
        CHECK(r.out.find("4 rank folders") != std::string::npos);
        CHECK(count_entries(d.path() / "ex") == 4);
        for (int k = 0; k < 4; ++k) {
            const auto rank = d.path() / "ex" / ("rank-0000" + std::to_string(k));
            CHECK(fs::exists(rank / "config.json"));
            const auto v = run(d.path(), "verify " + q(rank));
            CHECK_MESSAGE(v.rc == 0, v.err);
        }
        r = run(d.path(), "merge " + q(d.path() / "ex") + " --out " + q(d.path() / "merged") +
                              " --max-shard-size 20KB");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("merged 4 rank folders") != std::string::npos);
        CHECK(r.out.find("shards + index") != std::string::npos);
        check_same(d.path() / "in", d.path() / "merged");
        const auto v = run(d.path(), "verify " + q(d.path() / "merged"));
        CHECK_MESSAGE(v.rc == 0, v.err);
        CHECK(count_entries(d.path()) == 3);  // in ex merged: no temporaries
    }

    TEST_CASE("export --dtype: converted ranks, config.json torch_dtype updated, merge converted") {
        test::temp_folder d;
        test::model_spec m;
        m.type = "phi3";
        m.fused = true;
        make_model(d.path() / "in", m);
        auto r = run(d.path(), "export " + q(d.path() / "in") + " --tp 2 --dtype f16 --out " +
                                   q(d.path() / "ex") + " --max-shard-size 10KB");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("floating-point tensors as F16") != std::string::npos);
        const std::string cfg = slurp(d.path() / "ex" / "rank-00001" / "config.json");
        CHECK(cfg.find("\"torch_dtype\":\"float16\"") != std::string::npos);
        CHECK(fs::exists(d.path() / "ex" / "rank-00001" / "model.safetensors.index.json"));
        CHECK(run(d.path(), "verify " + q(d.path() / "ex" / "rank-00001")).rc == 0);
        r = run(d.path(), "merge " + q(d.path() / "ex") + " --out " + q(d.path() / "merged"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        check_same(d.path() / "in", d.path() / "merged", dtype::f16);
        CHECK(run(d.path(), "verify " + q(d.path() / "merged")).rc == 0);
    }

    TEST_CASE("export and merge: exit codes, and nothing written on error") {
        test::temp_folder d;
        test::model_spec m;
        make_model(d.path() / "in", m);
        const std::string in = q(d.path() / "in");
        const std::string ex = q(d.path() / "ex");
        CHECK(run(d.path(), "export " + in + " --tp 0 --out " + ex).rc == 2);
        CHECK(run(d.path(), "export " + in + " --out " + ex).rc == 2);  // --tp required
        CHECK(run(d.path(), "export " + in + " --tp 2").rc == 2);       // --out required
        CHECK(run(d.path(), "export " + in + " --tp 2 --out " + ex + " --dtype i8").rc == 2);
        CHECK(run(d.path(), "export " + in + " --tp 2 --out " + ex + " --kv-convention x").rc == 2);
        CHECK(run(d.path(), "export " + in + " --tp 2 --out " + ex + " --max-shard-size 1QB").rc ==
              2);
        CHECK(run(d.path(), "export " + in + " --tp 2 --out " + q(d.path() / "in" / "x")).rc == 2);
        CHECK(run(d.path(), "export " + q(d.path() / "nope") + " --tp 2 --out " + ex).rc == 1);
        auto r = run(d.path(), "export " + in + " --tp 3 --out " + ex);  // 8 heads, 3 ranks
        CHECK(r.rc == 1);
        CHECK(r.err.find("invalid_layout") != std::string::npos);
        r = run(d.path(), "export " + in + " --tp 2 --arch nosuch --out " + ex);
        CHECK(r.rc == 1);
        CHECK(r.err.find("nosuch") != std::string::npos);
        CHECK_FALSE(fs::exists(d.path() / "ex"));

        REQUIRE(run(d.path(), "export " + in + " --tp 2 --out " + ex).rc == 0);
        r = run(d.path(), "export " + in + " --tp 2 --out " + ex);
        CHECK(r.rc == 3);
        CHECK(r.err.find("already exists") != std::string::npos);
        r = run(d.path(), "export " + in + " --tp 4 --out " + ex + " --force");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("old folder replaced") != std::string::npos);
        CHECK(fs::exists(d.path() / "ex" / "rank-00003"));
        r = run(d.path(), "export " + q(d.path() / "ex" / "rank-00000") + " --tp 2 --out " +
                              q(d.path() / "again"));
        CHECK(r.rc == 1);
        CHECK(r.err.find("invalid_export") != std::string::npos);

        // merge: a folder that is no export, a missing rank, an existing output.
        const std::string out = q(d.path() / "merged");
        r = run(d.path(), "merge " + in + " --out " + out);
        CHECK(r.rc == 1);
        CHECK(r.err.find("not a per-rank export") != std::string::npos);
        CHECK(run(d.path(), "merge " + q(d.path() / "nope") + " --out " + out).rc == 1);
        CHECK(run(d.path(), "merge " + ex).rc == 2);
        fs::rename(d.path() / "ex" / "rank-00003", d.path() / "r3");
        r = run(d.path(), "merge " + ex + " --out " + out);
        CHECK(r.rc == 1);
        CHECK(r.err.find("rank-00003 is missing") != std::string::npos);
        CHECK_FALSE(fs::exists(d.path() / "merged"));
        fs::rename(d.path() / "r3", d.path() / "ex" / "rank-00003");
        REQUIRE(run(d.path(), "merge " + ex + " --out " + out).rc == 0);
        CHECK(run(d.path(), "merge " + ex + " --out " + out).rc == 3);
        CHECK(run(d.path(), "merge " + ex + " --out " + out + " --force").rc == 0);
        check_same(d.path() / "in", d.path() / "merged");
    }

    TEST_CASE("export and merge: SIGINT stops with 130 and no partial output") {
        test::temp_folder d;
        test::model_spec m;
        m.layers = 8;
        m.hidden = 256;
        m.intermediate = 1024;
        m.head_dim = 32;
        m.vocab = 1000;
        make_model(d.path() / "in", m);  // about 17 MB
        const auto ex = d.path() / "ex";
        interrupt_at_spread_points(
            d, {"export", (d.path() / "in").string(), "--tp", "4", "--out", ex.string()}, ex,
            [&] { CHECK(count_entries(ex) == 4); });
        REQUIRE(run(d.path(), "export " + q(d.path() / "in") + " --tp 4 --out " + q(ex)).rc == 0);
        const auto merged = d.path() / "merged";
        interrupt_at_spread_points(d, {"merge", ex.string(), "--out", merged.string()}, merged,
                                   [&] { check_same(d.path() / "in", merged); });
    }
    TEST_CASE("export: SIGKILL at 60 random moments leaves OUT absent or complete") {
        test::temp_folder d;
        test::model_spec m;
        make_model(d.path() / "in", m);
        // On a private tmpfs when we may mount one (fsync costs nothing there).
        fs::path work = d.path() / "work";
        fs::create_directories(work);
        const bool tmpfs = ::mount("tmpfs", work.c_str(), "tmpfs", 0, "size=64m") == 0;
        MESSAGE("crash runs on " << std::string(tmpfs ? "tmpfs" : "disk"));
        struct unmount {
            fs::path p;
            bool on;
            ~unmount() {
                if (on) (void)::umount2(p.c_str(), MNT_DETACH);
            }
        } guard{work, tmpfs};

        auto spawn = [&](const fs::path& out, bool force) {
            const pid_t pid = ::fork();
            REQUIRE(pid >= 0);
            if (pid == 0) {
                const int null = ::open("/dev/null", O_WRONLY);
                ::dup2(null, 1);
                ::dup2(null, 2);
                ::execl(SAFESHARD_EXE, SAFESHARD_EXE, "export", (d.path() / "in").c_str(), "--tp",
                        "4", "--out", out.c_str(), "--max-shard-size", "10KB",
                        force ? "--force" : static_cast<char*>(nullptr),
                        static_cast<char*>(nullptr));
                ::_exit(127);
            }
            return pid;
        };
        auto wait_status = [](pid_t pid) {
            int status = 0;
            REQUIRE(::waitpid(pid, &status, 0) == pid);
            return status;
        };
        const auto t0 = std::chrono::steady_clock::now();
        const int s0 = wait_status(spawn(work / "ref", false));
        const auto full_us = std::chrono::duration_cast<std::chrono::microseconds>(
                                 std::chrono::steady_clock::now() - t0)
                                 .count();
        REQUIRE(WIFEXITED(s0));
        REQUIRE(WEXITSTATUS(s0) == 0);
        const std::string ref_meta =
            slurp(work / "ref" / "rank-00003" / "model.safetensors.index.json");

        std::mt19937 rng(2024);
        std::uniform_int_distribution<long> delay(0, std::max<long>(full_us, 1000));
        int killed_mid = 0, absent = 0;
        for (int i = 0; i < 60; ++i) {
            const bool force = i % 2 == 1;  // odd runs replace a complete export
            const auto out = work / "out";
            if (!force)
                fs::remove_all(out);
            else if (!fs::exists(out))
                fs::copy(work / "ref", out, fs::copy_options::recursive);
            const pid_t pid = spawn(out, force);
            std::this_thread::sleep_for(std::chrono::microseconds(delay(rng)));
            ::kill(pid, SIGKILL);
            if (WIFSIGNALED(wait_status(pid))) ++killed_mid;
            if (!fs::exists(out)) {
                ++absent;
                CHECK_FALSE(force);  // a forced run never loses the old export
                continue;
            }
            // Present: every rank folder, complete, and it merges back to the input.
            CHECK(count_entries(out) == 4);
            CHECK(slurp(out / "rank-00003" / "model.safetensors.index.json") == ref_meta);
        }
        MESSAGE(killed_mid << " of 60 runs killed before they ended, " << absent << " left no OUT");
        CHECK(killed_mid > 5);
        // The last run replaces an existing export (--force): it also removes what killed
        // forced runs left beside OUT. A forced run killed between its swap and the removal of
        // the old folder leaves that folder; while OUT is absent (the loop deletes it before
        // plain runs) such folders are kept, as they may be the only copies.
        if (!fs::exists(work / "out"))
            fs::copy(work / "ref", work / "out", fs::copy_options::recursive);
        REQUIRE(WEXITSTATUS(wait_status(spawn(work / "out", true))) == 0);
        const auto r = run(d.path(), "merge " + q(work / "out") + " --out " + q(work / "merged"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        check_same(d.path() / "in", work / "merged");
        // The last run cleaned what killed runs left: nothing but the outputs remains.
        std::vector<std::string> names;
        for (const auto& e : fs::directory_iterator(work))
            names.push_back(e.path().filename().string());
        std::sort(names.begin(), names.end());
        CAPTURE(fmt_names(names));
        CHECK(names == std::vector<std::string>{"merged", "out", "ref"});
    }
}
