// Commands whose input changes under them, on the built tool (and a load in a child process):
//  - "cli": a shard rewritten in place (same size) while convert reads it: exit 3, no OUT;
//  - "stress": 200 runs of a load, a convert and an export with a shard cut short at a random
//    moment: each ends in success with bit-exact output, exit 1 or exit 3, never a signal,
//    and no temporary is left once a later run has cleaned.
#include <fcntl.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../io/file_change.hpp"
#include "../load/model_gen.hpp"
#include "cli_support.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/load/loader.hpp"

using namespace safeshard;
using namespace safeshard::test::cli;
namespace fs = std::filesystem;

namespace {

// The tool with `args` under ptrace: `act` runs once, when the tool is about to make its first
// read (pread64, preadv) of `file`, and the tool goes on untraced after it. stderr goes to
// `err`. Returns the wait status, and whether `act` ran.
std::pair<int, bool> run_acting_at_first_read(std::vector<std::string> args, const fs::path& file,
                                              const fs::path& err,
                                              const std::function<void()>& act) {
    const fs::path target = fs::canonical(file);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const int null = ::open("/dev/null", O_WRONLY);
        const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(null, 1);
        ::dup2(e, 2);
        std::vector<char*> argv{const_cast<char*>(SAFESHARD_EXE)};
        for (auto& s : args) argv.push_back(s.data());
        argv.push_back(nullptr);
        ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
        ::execv(SAFESHARD_EXE, argv.data());
        ::_exit(127);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);  // stopped after exec
    REQUIRE(WIFSTOPPED(status));
    REQUIRE(::ptrace(PTRACE_SETOPTIONS, pid, nullptr, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL) ==
            0);
    const std::string fds = "/proc/" + std::to_string(pid) + "/fd/";
    int deliver = 0;
    for (;;) {
        if (::ptrace(PTRACE_SYSCALL, pid, nullptr, deliver) != 0 ||
            ::waitpid(pid, &status, 0) != pid)
            FAIL("tracing the tool: " << std::strerror(errno));
        deliver = 0;
        if (!WIFSTOPPED(status)) return {status, false};  // ended without reading the file
        if (WSTOPSIG(status) != (SIGTRAP | 0x80)) {       // a signal for the tool: let it have it
            deliver = WSTOPSIG(status);
            continue;
        }
        __ptrace_syscall_info info{};
        if (::ptrace(PTRACE_GET_SYSCALL_INFO, pid, sizeof info, &info) <= 0 ||
            info.op != PTRACE_SYSCALL_INFO_ENTRY ||
            (info.entry.nr != SYS_pread64 && info.entry.nr != SYS_preadv))
            continue;
        std::error_code ec;
        if (fs::read_symlink(fds + std::to_string(info.entry.args[0]), ec) != target) continue;
        act();
        break;
    }
    REQUIRE(::ptrace(PTRACE_DETACH, pid, nullptr, 0) == 0);
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    return {status, true};
}

}  // namespace

TEST_SUITE("cli") {
    TEST_CASE("convert: a shard rewritten in place (same size) while it is read: exit 3, no OUT") {
        test::temp_folder d;
        test::model_spec m;
        fs::create_directories(d.path() / "in");
        test::write_checkpoint(d.path() / "in", m, test::make_tensors(m));
        const auto f = d.path() / "in" / "model-00002-of-00003.safetensors";
        const std::uint64_t data =
            checkpoint::open((d.path() / "in").string()).files()[1].view.data_offset();
        const auto out = d.path() / "out";
        const auto err = d.path() / "stderr";
        const std::vector<std::string> args{"convert", (d.path() / "in").string(), "--out",
                                            out.string()};

        // Nobody writing: the same run under the same tracing ends well.
        auto [status, acted] = run_acting_at_first_read(args, f, err, [] {});
        CHECK(acted);
        REQUIRE(WIFEXITED(status));
        REQUIRE_MESSAGE(WEXITSTATUS(status) == 0, slurp(err));
        fs::remove_all(out);

        // Another writer puts other bytes into the shard's tensors (same size, same inode)
        // just as convert starts reading it.
        test::wait_for_later_ctime(f);
        const auto other = test::flipped_bytes(f, data, 256);
        std::tie(status, acted) =
            run_acting_at_first_read(args, f, err, [&] { test::rewrite_in_place(f, data, other); });
        CHECK(acted);
        REQUIRE(WIFEXITED(status));
        const std::string msg = slurp(err);
        CAPTURE(msg);
        CHECK(WEXITSTATUS(status) == 3);
        CHECK(msg.find("changed while being read") != std::string::npos);
        CHECK(msg.find("model-00002-of-00003.safetensors") != std::string::npos);
        CHECK_FALSE(fs::exists(out));
        CHECK(listing(d.path()) == std::vector<std::string>{"in", "stderr"});
    }
}

namespace {

// Every file under `a` has a twin under `b` with the same bytes, and nothing else is there.
bool same_tree(const fs::path& a, const fs::path& b) {
    std::vector<fs::path> fa, fb;
    for (const auto& e : fs::recursive_directory_iterator(a)) fa.push_back(fs::relative(e, a));
    for (const auto& e : fs::recursive_directory_iterator(b)) fb.push_back(fs::relative(e, b));
    std::sort(fa.begin(), fa.end());
    std::sort(fb.begin(), fb.end());
    if (fa != fb) return false;
    for (const auto& p : fa)
        if (fs::is_regular_file(a / p) && slurp(a / p) != slurp(b / p)) return false;
    return true;
}

using tensor_bytes = std::map<std::string, std::vector<std::byte>>;

// What a load of rank 1 of 2 in F32 gives, copying out of the mappings (read_mode::mmap, or
// the default's conversions).
tensor_bytes load_rank(const fs::path& in, bool mmap_mode) {
    load_options o{.rank = 1, .world = 2};
    o.plan.dtype = dtype_policy::fixed(dtype::f32);
    if (mmap_mode) o.engine.mode = read_mode::mmap;
    const auto model = load<host_tensor>(in.string(), o);
    tensor_bytes out;
    for (const auto& n : model.names()) {
        const auto b = model.at(n).bytes();
        out[n].assign(b.begin(), b.end());
    }
    return out;
}

// The load in a child process, which exits as the tool would (0, 1 invalid input, 3 system
// failure), or 5 when it loaded other bytes than `want`.
pid_t spawn_load(const fs::path& in, bool mmap_mode, const tensor_bytes& want) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid != 0) return pid;
    int code = 6;
    try {
        code = load_rank(in, mmap_mode) == want ? 0 : 5;
    } catch (const error& e) {
        code = e.code() == errc::io_error ? 3 : 1;
    } catch (...) {
    }
    ::_exit(code);
}

}  // namespace

TEST_SUITE("stress") {
    TEST_CASE("load, convert, export with shards cut short at random moments: never a signal") {
        test::temp_folder d;
        // On a private tmpfs where we may mount one: fsync costs nothing there.
        const tmpfs_mount mnt(d.path() / "work", "size=256m");
        const fs::path work = d.path() / "work";
        MESSAGE("stress runs on " << (mnt.mounted() ? "tmpfs" : "disk (" + mnt.why() + ")"));
        test::model_spec m;
        m.hidden = 256;
        m.intermediate = 1024;
        m.heads = 8;
        m.kv_heads = 2;
        m.head_dim = 32;
        m.vocab = 4096;
        fs::create_directories(work / "in");
        test::write_checkpoint(work / "in", m, test::make_tensors(m));
        std::vector<fs::path> shards;
        std::vector<std::vector<std::byte>> originals;
        for (const auto& e : fs::directory_iterator(work / "in"))
            if (e.path().extension() == ".safetensors") shards.push_back(e.path());
        std::sort(shards.begin(), shards.end());
        REQUIRE(shards.size() == 3);
        for (const auto& s : shards) originals.push_back(test::read_bytes(s));

        const std::string in = (work / "in").string(), out = (work / "out").string();
        const std::vector<std::string> convert{"convert", in, "--out", out, "--dtype", "F32"};
        const std::vector<std::string> export_{"export", in,  "--tp",    "2",
                                               "--out",  out, "--dtype", "F32"};
        REQUIRE(
            WEXITSTATUS(wait_status(spawn({"convert", in, "--out", (work / "ref-convert").string(),
                                           "--dtype", "F32"}))) == 0);
        REQUIRE(WEXITSTATUS(
                    wait_status(spawn({"export", in, "--tp", "2", "--out",
                                       (work / "ref-export").string(), "--dtype", "F32"}))) == 0);
        const tensor_bytes want = load_rank(work / "in", false);
        REQUIRE(load_rank(work / "in", true) == want);
        const std::vector<std::string> base = listing(work);

        // Each kind's run time, untouched (the fastest of two): the cuts fall within it.
        const auto timed = [&](const std::function<pid_t()>& start) {
            auto best = std::chrono::microseconds::max();
            for (int k = 0; k < 2; ++k) {
                const auto t0 = std::chrono::steady_clock::now();
                const int status = wait_status(start());
                REQUIRE(WIFEXITED(status));
                REQUIRE(WEXITSTATUS(status) == 0);
                best = std::min(best, std::chrono::duration_cast<std::chrono::microseconds>(
                                          std::chrono::steady_clock::now() - t0));
                fs::remove_all(out);
            }
            return best;
        };
        std::function<pid_t()> starts[3] = {
            [&] { return spawn_load(work / "in", false, want); },
            [&] { return spawn(convert); },
            [&] { return spawn(export_); },
        };
        std::chrono::microseconds full[3];
        for (int k = 0; k < 3; ++k) full[k] = timed(starts[k]);
        MESSAGE("untouched runs: load " << full[0].count() << " us, convert " << full[1].count()
                                        << " us, export " << full[2].count() << " us");

        std::mt19937_64 rng(20170);
        int ends[3][4] = {};  // by kind: exit 0, 1, 3, anything else
        int signals = 0;
        for (int i = 0; i < 200; ++i) {
            const int kind = i % 3;
            const std::size_t victim = rng() % shards.size();
            const auto delay = std::chrono::microseconds(
                static_cast<long>(rng() % static_cast<std::uint64_t>(full[kind].count() + 1)));
            const auto cut_to = static_cast<off_t>(rng() % originals[victim].size());
            for (std::size_t s = 0; s < shards.size(); ++s)
                test::write_bytes(shards[s], originals[s]);
            if (kind == 0)  // the child may take the whole mmap-mode path too
                starts[0] = [&, mmap_mode = i % 2 == 0] {
                    return spawn_load(work / "in", mmap_mode, want);
                };
            const pid_t pid = starts[kind]();
            std::this_thread::sleep_for(delay);
            REQUIRE(::truncate(shards[victim].c_str(), cut_to) == 0);
            const int status = wait_status(pid);
            CAPTURE(i);
            CAPTURE(kind);
            CAPTURE(delay.count());
            CAPTURE(shards[victim].filename().string());
            CAPTURE(cut_to);
            if (WIFSIGNALED(status)) {
                ++signals;
                FAIL_CHECK("killed by signal " << WTERMSIG(status));
                continue;
            }
            const int rc = WEXITSTATUS(status);
            ++ends[kind][rc == 0 ? 0 : rc == 1 ? 1 : rc == 3 ? 2 : 3];
            CHECK((rc == 0 || rc == 1 || rc == 3));
            if (rc == 0 && kind > 0)
                CHECK(same_tree(work / (kind == 1 ? "ref-convert" : "ref-export"), out));
            fs::remove_all(out);
            CHECK(listing(work) == base);  // nothing left behind by a failed run
        }
        for (int k = 0; k < 3; ++k)
            MESSAGE(std::string(k == 0   ? "load"
                                : k == 1 ? "convert"
                                         : "export")
                    << ": " << ends[k][0] << " ok, " << ends[k][1] << " exit 1, " << ends[k][2]
                    << " exit 3, " << ends[k][3] << " other");
        CHECK(signals == 0);
        // A truncation inside the copies is what this is about: some runs must have failed.
        CHECK(ends[0][2] + ends[2][2] > 0);
        // What a killed run would have left, a later run cleans: none here, and none left.
        for (std::size_t s = 0; s < shards.size(); ++s) test::write_bytes(shards[s], originals[s]);
        REQUIRE(WEXITSTATUS(wait_status(spawn(export_))) == 0);
        fs::remove_all(out);
        CHECK(listing(work) == base);
    }
}
