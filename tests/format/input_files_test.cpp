// Input files that are not regular files, in every role a checkpoint gives a file (index,
// config.json, shard, the one file of a folder without an index, a cache ref): each is refused
// at once with an error naming the file and what it is. A FIFO is never waited on: each case
// runs in a child process with a deadline, so a hang fails the test instead of the suite.
#include <sys/stat.h>

#include <string>

#include <doctest/doctest.h>

#include "../checkpoint/test_util.hpp"
#include "../child_outcome.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/io/syscalls.hpp"

using namespace safeshard;
using safeshard::test::fake_tensor;
using safeshard::test::make_safetensors;
using safeshard::test::outcome_within;
using safeshard::test::temp_dir;
using safeshard::test::write_file;
namespace fs = std::filesystem;

namespace {

constexpr const char* shard1 = "model-00001-of-00002.safetensors";
constexpr const char* shard2 = "model-00002-of-00002.safetensors";

void write_sharded(const fs::path& dir) {
    write_file(dir / shard1, make_safetensors({{"a", "F32", {2}, 8, 1}}));
    write_file(dir / shard2, make_safetensors({{"b", "F32", {3}, 12, 2}}));
    write_file(
        dir / "model.safetensors.index.json",
        std::string(R"({"weight_map": {"a": ")") + shard1 + R"(", "b": ")" + shard2 + R"("}})");
    write_file(dir / "config.json", R"({"model_type": "llama"})");
}

void make_fifo(const fs::path& p) {
    fs::remove(p);
    REQUIRE(::mkfifo(p.c_str(), 0644) == 0);
}

// What opening `dir` (and loading its config.json) gives, within 10 s.
std::optional<std::string> open_outcome(const fs::path& dir) {
    return outcome_within(10, [&] {
        const auto c = checkpoint::open(dir.string());
        return c.load_config() ? std::string("opened, with a config") : std::string("opened");
    });
}

bool has(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("input files: a FIFO index, config.json or shard is refused at once, named") {
    temp_dir d;
    write_sharded(d.path());
    SUBCASE("the index") {
        make_fifo(d / "model.safetensors.index.json");
        const auto o = open_outcome(d.path());
        REQUIRE_MESSAGE(o, "checkpoint::open waited on a FIFO index");
        CHECK(has(*o, "invalid_index: not a regular file: a FIFO"));
        CHECK(has(*o, "model.safetensors.index.json"));
        const auto direct = outcome_within(10, [&] {
            (void)safetensors_index::load(d / "model.safetensors.index.json");
            return std::string("loaded");
        });
        REQUIRE(direct);
        CHECK(has(*direct, "invalid_index: not a regular file: a FIFO"));
    }
    SUBCASE("config.json: an error, not a checkpoint without one") {
        make_fifo(d / "config.json");
        const auto o = open_outcome(d.path());
        REQUIRE_MESSAGE(o, "waited on a FIFO config.json");
        CHECK(has(*o, "invalid_config: not a regular file: a FIFO"));
        CHECK(has(*o, "config.json"));
    }
    SUBCASE("config.json as a folder") {
        fs::remove(d / "config.json");
        fs::create_directory(d / "config.json");
        const auto o = open_outcome(d.path());
        REQUIRE(o);
        CHECK(has(*o, "invalid_config: not a regular file: a directory"));
    }
    SUBCASE("a shard the index names") {
        make_fifo(d / shard2);
        const auto o = open_outcome(d.path());
        REQUIRE_MESSAGE(o, "waited on a FIFO shard");
        CHECK(has(*o, "invalid_index: the index names shard '" + std::string(shard2) +
                          "', which is a FIFO"));
    }
    SUBCASE("a shard opened directly (as when one is swapped in after the checks)") {
        make_fifo(d / shard2);
        const auto o = outcome_within(10, [&] {
            const file_view v(d / shard2);
            return std::string("opened");
        });
        REQUIRE_MESSAGE(o, "file_view waited on a FIFO");
        CHECK(has(*o, "io_error: not a regular file: a FIFO"));
        CHECK(has(*o, shard2));
    }
}

TEST_CASE("input files: a folder without an index says what its model.safetensors is") {
    temp_dir d;
    std::string what;
    auto open = [&] { (void)checkpoint::open(d.path().string()); };
    SUBCASE("a directory") {
        fs::create_directory(d / "model.safetensors");
        CHECK(test::code_of(open, &what) == errc::checkpoint_not_found);
        CHECK(has(what, "'model.safetensors' is a directory, not a safetensors file"));
    }
    SUBCASE("a FIFO") {
        make_fifo(d / "model.safetensors");
        const auto o = open_outcome(d.path());
        REQUIRE(o);
        CHECK(has(*o,
                  "checkpoint_not_found: 'model.safetensors' is a FIFO, not a safetensors "
                  "file"));
    }
    SUBCASE("a dangling link") {
        fs::create_symlink("gone.bin", d / "model.safetensors");
        CHECK(test::code_of(open, &what) == errc::checkpoint_not_found);
        CHECK(has(what, "'model.safetensors' is a dangling link to 'gone.bin'"));
    }
    CHECK_FALSE(has(what, "the index names"));
}

TEST_CASE("input files: a path naming a FIFO says what it is") {
    temp_dir d;
    make_fifo(d / "x.safetensors");
    std::string what;
    CHECK(test::code_of([&] { (void)checkpoint::open((d / "x.safetensors").string()); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(has(what, "is a FIFO, not a safetensors file or an index"));
}

TEST_CASE("input files: a cache ref that is a FIFO is refused, not waited on or skipped") {
    temp_dir cache;
    constexpr std::string_view commit = "0123456789abcdef0123456789abcdef01234567";
    const fs::path repo = cache / "models--org--tiny";
    write_sharded(repo / "snapshots" / std::string(commit));
    fs::create_directories(repo / "refs");
    make_fifo(repo / "refs" / "main");
    hf_cache_options o;
    o.cache_dir = cache.path();
    const auto r = outcome_within(10, [&] { return resolve_hf_snapshot("org/tiny", o).commit(); });
    REQUIRE_MESSAGE(r, "waited on a FIFO ref");
    CHECK(has(*r, "checkpoint_not_found: not a regular file: a FIFO"));
    CHECK(has(*r, "refs"));
    // A regular ref still resolves.
    fs::remove(repo / "refs" / "main");
    write_file(repo / "refs" / "main", std::string(commit) + "\n");
    CHECK(resolve_hf_snapshot("org/tiny", o).commit() == commit);
}

namespace {
struct refuse_open : detail::syscall_hooks {
    int open(const char* path, int flags, mode_t mode) override {
        if (std::string_view(path).ends_with(".json")) {
            errno = EACCES;
            return -1;
        }
        return detail::syscall_hooks::open(path, flags, mode);
    }
};
}  // namespace

TEST_CASE("input files: index.json and config.json are opened through the system-call seam") {
    temp_dir d;
    write_sharded(d.path());
    refuse_open hooks;
    detail::scoped_syscall_hooks scope(hooks);
    std::string what;
    CHECK(test::code_of([&] { (void)config_file::load(d / "config.json"); }, &what) ==
          errc::io_error);
    CHECK(has(what, "Permission denied"));
    CHECK(test::code_of([&] { (void)safetensors_index::load(d / "model.safetensors.index.json"); },
                        &what) == errc::io_error);
}
