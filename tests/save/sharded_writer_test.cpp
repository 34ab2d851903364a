#include "safeshard/save/sharded_writer.hpp"

#include "safeshard/format/checkpoint.hpp"

#include "../io/io_test_support.hpp"
#include "../support/expect_error.hpp"

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

using namespace safeshard;
using io_test::scratch_dir;
using io_test::tmpfs_mount;
using safeshard::test::expect_error;
namespace fs = std::filesystem;

namespace {

struct tensor_set {
    std::vector<tensor_info> infos;
    std::vector<std::vector<std::byte>> bytes;
};

// Tensors of a few dtypes with distinct bytes, in a deliberately unsorted order.
tensor_set sample(std::size_t n = 7) {
    tensor_set s;
    const dtype types[] = {dtype::bf16, dtype::f32, dtype::u8, dtype::f16};
    for (std::size_t i = 0; i < n; ++i) {
        tensor_info t{"layer." + std::to_string((i * 5) % n) + ".w", types[i % 4], shape{i + 1, 3}};
        s.bytes.push_back(io_test::pattern(tensor_byte_size(t), static_cast<std::uint32_t>(i + 1)));
        s.infos.push_back(std::move(t));
    }
    return s;
}

auto producer_of(const tensor_set& s) {
    return [&s](std::size_t i, safetensors_writer& w) { w.write(s.bytes[i]); };
}

std::string slurp(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void check_equal(const checkpoint& c, const tensor_set& s) {
    CHECK(c.tensor_count() == s.infos.size());
    for (std::size_t i = 0; i < s.infos.size(); ++i) {
        const auto t = c.tensor(s.infos[i].name);
        CHECK(t.tensor.dtype() == s.infos[i].dtype);
        CHECK(t.tensor.shape() == s.infos[i].shape);
        REQUIRE(t.tensor.byte_size() == s.bytes[i].size());
        CHECK(std::memcmp(t.tensor.bytes().data(), s.bytes[i].data(), s.bytes[i].size()) == 0);
    }
}

std::size_t entries(const fs::path& dir) {
    return static_cast<std::size_t>(
        std::distance(fs::directory_iterator(dir), fs::directory_iterator{}));
}

errc code_of(auto&& f) {
    try {
        f();
    } catch (const error& e) {
        return e.code();
    }
    FAIL("no error thrown");
    return errc::io_error;
}

// The names in `dir`, sorted, joined by spaces.
std::string names_in(const fs::path& dir) {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    std::string s;
    for (const auto& n : v) s += (s.empty() ? "" : " ") + n;
    return s;
}

// Kills this process with SIGKILL (as `kill -9` or the OOM killer would) at one rename of a
// forced save of `target`: just before or just after the rename that puts the new folder at
// `target`, or just after the one that moves the old folder aside. Without `exchange`,
// RENAME_EXCHANGE fails with EINVAL, as on a file system that cannot swap.
class kill_at_rename : public detail::syscall_hooks {
public:
    enum class moment { before_swap_in, after_swap_in, after_move_aside };
    kill_at_rename(fs::path target, moment when, bool exchange)
        : target_(std::move(target)), when_(when), exchange_(exchange) {}

    int rename(const char* from, const char* to, unsigned flags) override {
        if (flags == RENAME_EXCHANGE && !exchange_) {
            errno = EINVAL;
            return -1;
        }
        const bool swap_in = target_ == to;
        if (swap_in && when_ == moment::before_swap_in) ::raise(SIGKILL);
        const int rc = syscall_hooks::rename(from, to, flags);
        if ((swap_in && when_ == moment::after_swap_in) ||
            (target_ == from && when_ == moment::after_move_aside))
            ::raise(SIGKILL);
        return rc;
    }

private:
    fs::path target_;
    moment when_;
    bool exchange_;
};

// A forced save of `s` over `target` in a child process, killed by kill_at_rename.
void killed_forced_save(const fs::path& target, const tensor_set& s, kill_at_rename::moment when,
                        bool exchange) {
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        try {
            kill_at_rename hooks(target, when, exchange);
            const detail::scoped_syscall_hooks installed(hooks);
            sharded_save_options o;
            o.force = true;
            o.max_shard_size = 64;
            save_sharded(target, s.infos, producer_of(s), o);
        } catch (...) {
        }
        ::_exit(1);  // not killed: the moment never came
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
}

}  // namespace

TEST_SUITE("save") {
    TEST_CASE("save_sharded: one shard is model.safetensors, no index, format pt") {
        scratch_dir d;
        const auto s = sample();
        save_sharded(d / "out", s.infos, producer_of(s));
        CHECK(fs::exists(d / "out" / "model.safetensors"));
        CHECK_FALSE(fs::exists(d / "out" / "model.safetensors.index.json"));
        CHECK(entries(d / "out") == 1);
        CHECK(entries(d.path()) == 1);  // no temporaries beside it
        const auto c = checkpoint::open((d / "out").string());
        CHECK(c.source_kind() == checkpoint::kind::single_file);
        check_equal(c, s);
        CHECK(c.files()[0].view.metadata("format") == std::optional<std::string_view>("pt"));
    }

    TEST_CASE("save_sharded: several shards, index with total_size and weight_map") {
        scratch_dir d;
        const auto s = sample(9);
        sharded_save_options o;
        o.max_shard_size = 60;
        sharded_writer w(d / "out", s.infos, o);
        REQUIRE(w.plan().shards.size() > 2);
        CHECK_FALSE(fs::exists(d / "out"));
        w.write_shards(producer_of(s));
        CHECK_FALSE(fs::exists(d / "out"));  // nothing visible before commit
        w.commit();
        const auto c = checkpoint::open((d / "out").string());
        CHECK(c.source_kind() == checkpoint::kind::indexed);
        check_equal(c, s);
        CHECK(c.files().size() == w.plan().shards.size());
        CHECK(c.index()->total_size() == std::optional<std::uint64_t>(w.plan().total_size));
        for (const auto& f : c.files())
            CHECK(f.view.metadata("format") == std::optional<std::string_view>("pt"));
        CHECK(slurp(d / "out" / "model.safetensors.index.json") ==
              serialize_index_json(w.plan(), s.infos));
        for (std::size_t k = 0; k < w.plan().shards.size(); ++k) {
            for (const std::size_t i : w.plan().shards[k].tensors)
                CHECK(c.tensor(s.infos[i].name).file->name == w.plan().shards[k].file_name);
        }
    }

    TEST_CASE(
        "sharded_writer: staging folder takes other files; an uncommitted writer leaves nothing") {
        scratch_dir d;
        const auto s = sample();
        {
            sharded_writer w(d / "out", s.infos);
            w.write_shards(producer_of(s));
            io_test::write_file(w.staging_folder() / "config.json", io_test::pattern(10));
            CHECK(fs::exists(w.staging_folder() / "config.json"));
        }
        CHECK(entries(d.path()) == 0);
        {
            sharded_writer w(d / "out", s.infos);
            w.write_shards(producer_of(s));
            io_test::write_file(w.staging_folder() / "config.json", io_test::pattern(10));
            w.commit();
        }
        CHECK(fs::file_size(d / "out" / "config.json") == 10);
    }

    TEST_CASE("sharded_writer: producer errors and misuse leave nothing behind") {
        scratch_dir d;
        const auto s = sample();
        CHECK(code_of([&] {
                  save_sharded(d / "out", s.infos, [&](std::size_t i, safetensors_writer& w) {
                      w.write(std::span(s.bytes[i]).first(s.bytes[i].size() - 1));
                  });
              }) == errc::invalid_argument);
        CHECK(code_of([&] {
                  save_sharded(d / "out", s.infos, [&](std::size_t i, safetensors_writer& w) {
                      if (i == 3) throw error(errc::interrupted, "stop");
                      w.write(s.bytes[i]);
                  });
              }) == errc::interrupted);
        CHECK(entries(d.path()) == 0);
        sharded_writer w(d / "out", s.infos);
        CHECK(code_of([&] { w.commit(); }) == errc::invalid_argument);
        w.write_shards(producer_of(s));
        CHECK(code_of([&] { w.write_shards(producer_of(s)); }) == errc::invalid_argument);
    }

    TEST_CASE("sharded_writer: an existing output is refused without force, replaced with it") {
        scratch_dir d;
        const auto s = sample();
        fs::create_directories(d / "out");
        io_test::write_file(d / "out" / "old.txt", io_test::pattern(3));
        CHECK(code_of([&] { save_sharded(d / "out", s.infos, producer_of(s)); }) == errc::io_error);
        CHECK(fs::exists(d / "out" / "old.txt"));
        try {
            save_sharded(d / "out", s.infos, producer_of(s));
            FAIL_CHECK("an existing output folder was not refused");
        } catch (const error& e) {
            // The library's own words: the option, not a command-line flag.
            CHECK(e.message() ==
                  "the output folder already exists (the options' force = true replaces it)");
            CHECK(e.sys_errno() == EEXIST);
        }

        sharded_save_options o;
        o.force = true;
        {
            // A failing forced save keeps the old folder whole.
            CHECK(code_of([&] {
                      save_sharded(
                          d / "out", s.infos,
                          [&](std::size_t, safetensors_writer&) {
                              throw error(errc::io_error, "disk gone");
                          },
                          o);
                  }) == errc::io_error);
            CHECK(fs::exists(d / "out" / "old.txt"));
            CHECK(entries(d.path()) == 1);
        }
        {
            sharded_writer w(d / "out", s.infos, o);
            CHECK(w.replacing());
            w.write_shards(producer_of(s));
            CHECK(fs::exists(d / "out" / "old.txt"));  // still the old one until commit
            w.commit();
        }
        CHECK_FALSE(fs::exists(d / "out" / "old.txt"));
        check_equal(checkpoint::open((d / "out").string()), s);
        CHECK(entries(d.path()) == 1);

        io_test::write_file(d / "file", io_test::pattern(3));
        CHECK(code_of([&] { save_sharded(d / "file", s.infos, producer_of(s), o); }) ==
              errc::io_error);
    }

    TEST_CASE("sharded_writer: leftovers of killed writers are removed by the next one") {
        scratch_dir d;
        const auto s = sample();
        // A pid that is certainly gone: a child that has exited and been reaped.
        const pid_t child = ::fork();
        if (child == 0) ::_exit(0);
        int status = 0;
        REQUIRE(::waitpid(child, &status, 0) == child);
        const std::string dead = std::to_string(child);
        fs::create_directories(d / (".out.safeshard.tmp-" + dead));
        fs::create_directories(d / "out");
        fs::create_directories(d / (".out.new-" + dead));
        fs::create_directories(d / (".out.new-" + dead + ".safeshard.tmp-" + dead));
        fs::create_directories(d / (".out.old-" + dead));
        fs::create_directories(d / ".out.old-1x");  // not ours: not a pid
        sharded_save_options o;
        o.force = true;
        save_sharded(d / "out", s.infos, producer_of(s), o);
        CHECK_FALSE(fs::exists(d / (".out.safeshard.tmp-" + dead)));
        CHECK_FALSE(fs::exists(d / (".out.new-" + dead)));
        CHECK_FALSE(fs::exists(d / (".out.new-" + dead + ".safeshard.tmp-" + dead)));
        CHECK_FALSE(fs::exists(d / (".out.old-" + dead)));
        CHECK(fs::exists(d / ".out.old-1x"));
        // Without the target, leftovers of a half-done swap are the only copies: kept.
        fs::remove_all(d / "out");
        fs::create_directories(d / (".out.old-" + dead));
        fs::create_directories(d / (".out.new-" + dead));
        fs::create_directories(
            d / (".out.new-" + dead + ".safeshard.tmp-" + dead));  // unfinished: removed
        save_sharded(d / "out", s.infos, producer_of(s));
        CHECK(fs::exists(d / (".out.old-" + dead)));
        CHECK(fs::exists(d / (".out.new-" + dead)));
        CHECK_FALSE(fs::exists(d / (".out.new-" + dead + ".safeshard.tmp-" + dead)));
    }

    TEST_CASE("sharded_writer: a killed swap's folder is removed once its target is deleted") {
        scratch_dir d;
        const auto s = sample();
        const auto out = d / "out";
        using moment = kill_at_rename::moment;
        const std::pair<moment, bool> kills[] = {
            {moment::before_swap_in, true},  // the new folder complete, never swapped in
            {moment::after_swap_in, true},   // the old folder swapped out, not yet removed
            {moment::after_swap_in, false},  // the old folder moved aside, not yet removed
        };
        for (const auto& [when, exchange] : kills) {
            CAPTURE(static_cast<int>(when));
            CAPTURE(exchange);
            save_sharded(out, s.infos, producer_of(s));
            killed_forced_save(out, s, when, exchange);
            CHECK(entries(d.path()) == 2);  // OUT and one hidden folder beside it
            // A person deletes OUT; the next plain save leaves nothing but its output.
            fs::remove_all(out);
            save_sharded(out, s.infos, producer_of(s));
            CHECK(names_in(d.path()) == "out");
            check_equal(checkpoint::open(out.string()), s);
            fs::remove_all(out);
        }
        // Killed between the two renames of a swap without RENAME_EXCHANGE: no OUT, and the
        // old and new folders are the only copies; the next plain save keeps both.
        save_sharded(out, s.infos, producer_of(s));
        killed_forced_save(out, s, moment::after_move_aside, false);
        CHECK_FALSE(fs::exists(out));
        CHECK(entries(d.path()) == 2);
        save_sharded(out, s.infos, producer_of(s));
        CHECK(entries(d.path()) == 3);
    }

    TEST_CASE("check_output_location refuses the input, a folder inside it, and the reverse") {
        scratch_dir d;
        fs::create_directories(d / "in" / "sub");
        CHECK(code_of([&] { check_output_location(d / "in", d / "in"); }) ==
              errc::invalid_argument);
        CHECK(code_of([&] { check_output_location(d / "in" / "new", d / "in"); }) ==
              errc::invalid_argument);
        CHECK(code_of([&] { check_output_location(d / "in/sub/../x", d / "in"); }) ==
              errc::invalid_argument);
        CHECK(code_of([&] { check_output_location(d.path(), d / "in" / "model.safetensors"); }) ==
              errc::invalid_argument);
        fs::create_directory_symlink(d / "in", d / "link");
        CHECK(code_of([&] { check_output_location(d / "link" / "x", d / "in"); }) ==
              errc::invalid_argument);
        check_output_location(d / "in2", d / "in");  // a sibling with a common prefix is fine
        check_output_location(d / "out", d / "in" / "model.safetensors");
        // Input files that are links into the output (a cache snapshot linking into blobs/):
        // a forced replacement of the output would delete them.
        fs::create_directories(d / "blobs");
        fs::create_directories(d / "snap");
        std::ofstream(d / "blobs" / "abc") << "x";
        fs::create_symlink(d / "blobs" / "abc", d / "snap" / "model.safetensors");
        const std::vector<fs::path> files{d / "snap" / "model.safetensors"};
        CHECK(code_of([&] { check_output_location(d / "blobs", d / "snap", files); }) ==
              errc::invalid_argument);
        check_output_location(d / "out", d / "snap", files);
        // No path, and the current folder (or one holding it): refused before any write.
        CHECK(code_of([&] { check_output_location("", d / "in"); }) == errc::invalid_argument);
        CHECK(code_of([&] { check_output_location(".", d / "in"); }) == errc::invalid_argument);
        CHECK(code_of([&] { check_output_location(fs::current_path().parent_path(), d / "in"); }) ==
              errc::invalid_argument);
    }

    TEST_CASE("sharded_writer: a disk full midway leaves nothing behind; a read-only one too") {
        scratch_dir d;
        fs::create_directory(d / "disk");
        tensor_set s;
        for (int i = 0; i < 4; ++i) {
            s.infos.push_back(tensor_info{"t" + std::to_string(i), dtype::u8, shape{40000}});
            s.bytes.push_back(io_test::pattern(40000, static_cast<std::uint32_t>(i)));
        }
        sharded_save_options o;
        o.max_shard_size = 50000;  // four shards and an index
        // Full at once, in the first shard, between shards' files, in the last one.
        for (const std::uint64_t room : {0u, 1000u, 40100u, 100000u, 150000u}) {
            for (const int full : {ENOSPC, EDQUOT}) {
                CAPTURE(room);
                CAPTURE(full);
                io_test::fault_hooks hooks;
                hooks.enospc_after = room;
                hooks.full_errno = full;
                {
                    const detail::scoped_syscall_hooks scope(hooks);
                    const auto e = expect_error(errc::io_error, [&] {
                        save_sharded(d / "disk" / "out", s.infos, producer_of(s), o);
                    });
                    CHECK(e.sys_errno() == full);
                    CHECK(std::string(e.what()).find(std::strerror(full)) != std::string::npos);
                    CHECK(e.file().find((d / "disk").string()) == 0);
                }
                CHECK(hooks.bytes_in == room);  // it wrote until the disk was full
                CHECK(entries(d / "disk") == 0);
            }
        }
        // Read-only file system: the folder cannot even be made.
        {
            io_test::fault_hooks hooks;
            hooks.read_only = true;
            const detail::scoped_syscall_hooks scope(hooks);
            const auto e = expect_error(errc::io_error, [&] {
                save_sharded(d / "disk" / "out", s.infos, producer_of(s), o);
            });
            CHECK(e.sys_errno() == EROFS);
            CHECK(std::string(e.what()).find("Read-only file system") != std::string::npos);
        }
        CHECK(entries(d / "disk") == 0);
        save_sharded(d / "disk" / "out", s.infos, producer_of(s), o);  // and once there is room
        check_equal(checkpoint::open((d / "disk" / "out").string()), s);
        // The same on a real 64 KiB tmpfs, where this process may mount one.
        const tmpfs_mount mnt(d / "mnt", "size=64k");
        if (!mnt.mounted()) return;
        {
            const auto e = expect_error(
                errc::io_error, [&] { save_sharded(d / "mnt" / "out", s.infos, producer_of(s)); });
            CHECK(e.sys_errno() == ENOSPC);
        }
        CHECK(entries(d / "mnt") == 0);
        REQUIRE(mnt.remount_read_only());
        CHECK(code_of([&] { save_sharded(d / "mnt" / "out", s.infos, producer_of(s)); }) ==
              errc::io_error);
    }
}
