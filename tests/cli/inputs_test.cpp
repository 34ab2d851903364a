// Hostile and unlucky inputs end to end: FIFOs where files belong (never waited on), SIGINT in
// every phase of every command (exit 130 within a generous deadline), side files that link
// out of the folder or are private, control characters in names, an existing or parentless
// --out. Every run has a deadline: a hang fails the test instead of blocking the suite.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../load/model_gen.hpp"
#include "cli_support.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/safetensors_writer.hpp"

using namespace safeshard;
using namespace safeshard::test::cli;
namespace fs = std::filesystem;

namespace {

constexpr int deadline_s = 10;

struct timed_run {
    bool ended = false;            // within the deadline
    bool ended_on_sigint = false;  // not within it, but once SIGINT was sent
    int rc = -1;                   // exit status, or 128 + signal
    std::string err;
};

// Waits up to `seconds` for `pid`; its status, or nullopt.
std::optional<int> wait_within(pid_t pid, int seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    for (;;) {
        int status = 0;
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (std::chrono::steady_clock::now() > end) return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

// The tool with `args`, stderr captured, within the deadline; one that has not ended by then
// gets SIGINT and another deadline, then SIGKILL (the result says which ended it).
timed_run run_within(const fs::path& dir, const std::vector<std::string>& args) {
    const auto err_file = dir / "stderr";
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const int null = ::open("/dev/null", O_WRONLY);
        const int err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(null, 1);
        ::dup2(err, 2);
        std::vector<std::string> copy = args;
        std::vector<char*> argv{const_cast<char*>(SAFESHARD_EXE)};
        for (auto& s : copy) argv.push_back(s.data());
        argv.push_back(nullptr);
        ::execv(SAFESHARD_EXE, argv.data());
        ::_exit(127);
    }
    timed_run t;
    if (auto rc = wait_within(pid, deadline_s)) {
        t.ended = true;
        t.rc = *rc;
    } else {
        ::kill(pid, SIGINT);
        if (auto rc2 = wait_within(pid, deadline_s)) {
            t.ended_on_sigint = true;
            t.rc = *rc2;
        } else {
            ::kill(pid, SIGKILL);
            (void)wait_within(pid, deadline_s);
        }
    }
    t.err = slurp(err_file);
    fs::remove(err_file);
    return t;
}

// A small llama checkpoint (index, 3 shards, config.json) with `extra` more one-element
// tensors (they make the headers and the index large).
void make_model(const fs::path& dir, std::size_t extra = 0) {
    fs::create_directories(dir);
    test::model_spec m;
    auto tensors = test::make_tensors(m);
    std::mt19937_64 rng(3);
    for (std::size_t i = 0; i < extra; ++i)
        tensors["extra.padding_" + std::to_string(i) + ".scale_factor_for_a_long_name"] =
            test::random_tensor({1}, rng);
    test::write_checkpoint(dir, m, tensors);
}

bool has(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
}

void make_fifo(const fs::path& p) {
    fs::remove(p);
    REQUIRE(::mkfifo(p.c_str(), 0644) == 0);
}

// Every run ended within the deadline, with `rc`, and said `what` on stderr.
void check_prompt(const timed_run& t, int rc, const std::string& what) {
    CAPTURE(t.err);
    const std::string why =
        t.ended_on_sigint ? "hung; SIGINT ended it" : "hung, and SIGINT did not end it either";
    REQUIRE_MESSAGE(t.ended, why);
    CHECK(t.rc == rc);
    CHECK(has(t.err, what));
}

// Runs `args` and sends SIGINT at spread points of one measured run (the fastest of two);
// every run ends within the deadline after the signal, with 130 (and nothing at `out`, no
// temporary beside it, when it writes one) or with 0 when the signal came after the work.
void interrupt_within_deadline(const std::vector<std::string>& args,
                               const std::optional<fs::path>& out = std::nullopt) {
    auto clean = [&] {
        if (out) fs::remove_all(*out);
    };
    auto full = std::chrono::microseconds::max();
    for (int k = 0; k < 2; ++k) {
        const auto t0 = std::chrono::steady_clock::now();
        const auto rc = wait_within(spawn(args), 120);
        REQUIRE(rc == 0);
        full = std::min(full, std::chrono::duration_cast<std::chrono::microseconds>(
                                  std::chrono::steady_clock::now() - t0));
        clean();
    }
    MESSAGE(args[0] << ": one run took " << full.count() << " us");
    int interrupted = 0;
    for (int attempt = 0; attempt < 8; ++attempt) {
        const pid_t pid = spawn(args);
        std::this_thread::sleep_for(full * (1 + attempt) / 10);
        ::kill(pid, SIGINT);
        const auto rc = wait_within(pid, deadline_s);
        if (!rc) ::kill(pid, SIGKILL);
        REQUIRE_MESSAGE(rc, "SIGINT did not end '" << args[0] << "' within " << deadline_s << " s");
        CAPTURE(*rc);
        CHECK((*rc == 130 || *rc == 0 || *rc == 128 + SIGINT));  // the last: before main()
        if (*rc == 130) {
            ++interrupted;
            if (out) CHECK_FALSE(fs::exists(*out));
        }
        clean();
    }
    CHECK(interrupted > 0);
    if (out)
        for (const auto& n : listing(out->parent_path())) {
            CHECK(n.find(".tmp-") == std::string::npos);
            CHECK(n.find(".new-") == std::string::npos);
        }
}

}  // namespace

TEST_SUITE("cli") {
    TEST_CASE("a FIFO index: every command ends at once with exit 1 naming it") {
        test::temp_folder d;
        const auto ck = d.path() / "ck";
        make_model(ck);
        make_fifo(ck / "model.safetensors.index.json");
        const std::string c = ck.string(), o = (d.path() / "out").string();
        for (const auto& args :
             std::vector<std::vector<std::string>>{{"verify", c},
                                                   {"inspect", c},
                                                   {"plan", c, "--tp", "2"},
                                                   {"convert", c, "--out", o},
                                                   {"export", c, "--tp", "2", "--out", o}}) {
            CAPTURE(args[0]);
            check_prompt(run_within(d.path(), args), 1, "not a regular file: a FIFO");
            CHECK_FALSE(fs::exists(o));
        }
        const auto t = run_within(d.path(), {"verify", c});
        CHECK(has(t.err, "model.safetensors.index.json"));
    }

    TEST_CASE("a FIFO config.json or shard ends verify with exit 1 naming it") {
        test::temp_folder d;
        const auto ck = d.path() / "ck";
        make_model(ck);
        make_fifo(ck / "config.json");
        auto t = run_within(d.path(), {"verify", ck.string()});
        check_prompt(t, 1, "invalid_config: not a regular file: a FIFO");
        CHECK(has(t.err, "config.json"));
        fs::remove(ck / "config.json");
        make_model(ck);  // config.json back
        make_fifo(ck / "model-00002-of-00003.safetensors");
        t = run_within(d.path(), {"verify", ck.string()});
        check_prompt(t, 1,
                     "the index names shard 'model-00002-of-00003.safetensors', which is a FIFO");
    }

    TEST_CASE("a FIFO side file is left behind with a note; the copy ends") {
        test::temp_folder d;
        const auto ck = d.path() / "ck";
        make_model(ck);
        make_fifo(ck / "vocab.txt");
        const auto out = d.path() / "out";
        const auto t = run_within(d.path(), {"convert", ck.string(), "--out", out.string()});
        check_prompt(t, 0, "safeshard: note: not copying vocab.txt: a FIFO, not a file");
        CHECK(fs::exists(out / "config.json"));
        CHECK_FALSE(fs::exists(out / "vocab.txt"));
    }

    TEST_CASE("a FIFO in an export's rank folder ends merge with exit 1 naming it") {
        test::temp_folder d;
        const auto ck = d.path() / "ck", ex = d.path() / "ex", out = d.path() / "merged";
        make_model(ck);
        REQUIRE(run(d.path(), "export " + q(ck) + " --tp 2 --out " + q(ex)).rc == 0);
        make_fifo(ex / "rank-00001" / "model.safetensors.index.json");
        auto t = run_within(d.path(), {"merge", ex.string(), "--out", out.string()});
        check_prompt(t, 1, "not a regular file: a FIFO");
        CHECK(has(t.err, "rank-00001"));
        fs::remove_all(ex);
        REQUIRE(run(d.path(), "export " + q(ck) + " --tp 2 --out " + q(ex)).rc == 0);
        make_fifo(ex / "rank-00000" / "model.safetensors");
        t = run_within(d.path(), {"merge", ex.string(), "--out", out.string()});
        check_prompt(t, 1, "'model.safetensors' is a FIFO");
        CHECK_FALSE(fs::exists(out));
    }

    TEST_CASE("SIGINT ends inspect, verify and plan with 130 in every phase") {
        test::temp_folder d;
        const auto ck = d.path() / "ck";
        make_model(ck, 150000);  // headers and index of several MB: parsing takes a while
        const std::string c = ck.string();
        interrupt_within_deadline({"verify", c});
        interrupt_within_deadline({"inspect", c, "--json"});
        interrupt_within_deadline({"plan", c, "--tp", "2", "--lenient"});
    }

    TEST_CASE("SIGINT ends convert, export and merge with 130 in every phase, OUT never left") {
        test::temp_folder d;
        const auto ck = d.path() / "ck", ex = d.path() / "ex";
        make_model(ck, 8000);
        interrupt_within_deadline({"convert", ck.string(), "--out", (d.path() / "o").string()},
                                  d.path() / "o");
        interrupt_within_deadline({"export", ck.string(), "--tp", "2", "--out", ex.string()}, ex);
        REQUIRE(run(d.path(), "export " + q(ck) + " --tp 2 --out " + q(ex)).rc == 0);
        interrupt_within_deadline({"merge", ex.string(), "--out", (d.path() / "m").string()},
                                  d.path() / "m");
    }

    TEST_CASE("side files: links out of the folder are not copied; private files stay private") {
        test::temp_folder d;
        const auto ck = d.path() / "ck";
        make_model(ck);
        test::write_text(d.path() / "secret", "{\"s\": 1}");
        fs::permissions(d.path() / "secret", fs::perms::owner_read | fs::perms::owner_write);
        fs::create_symlink("/etc/passwd", ck / "vocab.txt");
        test::write_text(ck / "tokenizer.secret", "{}");
        fs::permissions(ck / "tokenizer.secret", fs::perms::owner_read | fs::perms::owner_write);
        fs::create_symlink("tokenizer.secret", ck / "tokenizer.json");
        fs::create_symlink("../secret", ck / "special_tokens_map.json");
        const auto owner_rw = fs::perms::owner_read | fs::perms::owner_write;
        auto check_folder = [&](const fs::path& out) {
            CHECK_FALSE(fs::exists(out / "vocab.txt"));
            CHECK_FALSE(fs::exists(out / "special_tokens_map.json"));
            REQUIRE(fs::exists(out / "tokenizer.json"));
            CHECK(fs::status(out / "tokenizer.json").permissions() == owner_rw);
        };
        auto r = run(d.path(), "convert " + q(ck) + " --out " + q(d.path() / "c"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        check_folder(d.path() / "c");
        CHECK(has(r.err,
                  "safeshard: note: not copying vocab.txt: a link to '/etc/passwd', "
                  "outside the checkpoint folder"));
        CHECK(has(r.err, "not copying special_tokens_map.json"));
        r = run(d.path(), "export " + q(ck) + " --tp 2 --out " + q(d.path() / "ex"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(has(r.err, "not copying vocab.txt"));
        check_folder(d.path() / "ex" / "rank-00001");
        r = run(d.path(), "merge " + q(d.path() / "ex") + " --out " + q(d.path() / "m"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        check_folder(d.path() / "m");
    }

    TEST_CASE("control characters in names are escaped in errors and warnings") {
        test::temp_folder d;
        const auto ck = d.path() / "ck";
        fs::create_directories(ck);
        const std::string evil = "w\x1b]0;owned\x07\x1b[2J";
        const std::vector<float> v{1, 2};
        const auto bytes = std::as_bytes(std::span(v.data(), v.size()));
        const tensor_data a{"a", dtype::f32, shape{2}, bytes};
        save_file(ck / "a.safetensors", std::span(&a, 1));
        const std::vector<tensor_data> b{{"b", dtype::f32, shape{2}, bytes},
                                         {evil, dtype::f32, shape{2}, bytes}};
        save_file(ck / "b.safetensors", b);
        // The index puts the evil name in the wrong shard; JSON escapes its control characters.
        test::write_text(ck / "model.safetensors.index.json",
                         R"({"weight_map": {"w\u001b]0;owned\u0007\u001b[2J": "a.safetensors",)"
                         R"( "a": "a.safetensors", "b": "b.safetensors"}})");
        auto r = run(d.path(), "verify " + q(ck));
        CHECK(r.rc == 1);
        CAPTURE(r.err);
        CHECK(has(r.err, "w\\x1b]0;owned\\x07\\x1b[2J"));
        for (const char c : r.err) CHECK((static_cast<unsigned char>(c) >= 0x20 || c == '\n'));
        // Lenient: an unindexed name is a warning, escaped too.
        test::write_text(ck / "model.safetensors.index.json",
                         R"({"weight_map": {"a": "a.safetensors", "b": "b.safetensors"}})");
        r = run(d.path(), "verify --lenient " + q(ck));
        CHECK(r.rc == 0);
        CHECK(has(r.err, "safeshard: warning:"));
        CHECK(has(r.err, "\\x1b[2J"));
        for (const char c : r.err) CHECK((static_cast<unsigned char>(c) >= 0x20 || c == '\n'));
    }

    TEST_CASE("--out: an existing one is a usage error; missing parents are created") {
        test::temp_folder d;
        const auto ck = d.path() / "ck", ex = d.path() / "a" / "b" / "ex";
        make_model(ck);
        // Parents made, as save_pretrained makes them.
        auto r = run(d.path(), "convert " + q(ck) + " --out " + q(d.path() / "x" / "y" / "c"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(fs::exists(d.path() / "x" / "y" / "c" / "config.json"));
        r = run(d.path(), "export " + q(ck) + " --tp 2 --out " + q(ex));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        r = run(d.path(), "merge " + q(ex) + " --out " + q(d.path() / "p" / "q" / "m"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        check_same(ck, d.path() / "p" / "q" / "m");
        // Existing: exit 2 (usage), suggesting --force, for each writing command.
        for (const auto& cmd : {"convert " + q(ck) + " --out " + q(d.path() / "x" / "y" / "c"),
                                "export " + q(ck) + " --tp 2 --out " + q(ex),
                                "merge " + q(ex) + " --out " + q(d.path() / "p" / "q" / "m")}) {
            CAPTURE(cmd);
            r = run(d.path(), cmd);
            CHECK(r.rc == 2);
            CHECK(has(r.err, "already exists; pass --force"));
        }
    }

    TEST_CASE("a folder without an index whose model.safetensors is not a file says what it is") {
        test::temp_folder d;
        fs::create_directories(d.path() / "ck" / "model.safetensors");
        auto r = run(d.path(), "verify " + q(d.path() / "ck"));
        CHECK(r.rc == 1);
        CHECK(has(r.err, "'model.safetensors' is a directory"));
        CHECK_FALSE(has(r.err, "the index names"));
        fs::remove(d.path() / "ck" / "model.safetensors");
        fs::create_symlink("nowhere.bin", d.path() / "ck" / "model.safetensors");
        r = run(d.path(), "verify " + q(d.path() / "ck"));
        CHECK(r.rc == 1);
        CHECK(has(r.err, "'model.safetensors' is a dangling link to 'nowhere.bin'"));
    }
}
