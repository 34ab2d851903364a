#include "safeshard/io/atomic_file.hpp"

#include "io_test_support.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <type_traits>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace safeshard;
using namespace io_test;

static_assert(!std::is_copy_constructible_v<atomic_file>);
static_assert(std::is_nothrow_move_constructible_v<atomic_file>);
static_assert(std::is_nothrow_move_assignable_v<atomic_file>);

namespace {

// A pid that certainly belonged to a process that has exited (and been reaped).
pid_t dead_pid() {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) ::_exit(0);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    return pid;
}

void write_all(atomic_file& f, const std::vector<std::byte>& bytes) { f.write(bytes); }

}  // namespace

TEST_SUITE("io") {
    TEST_CASE("atomic_file writes a temporary beside the target and renames it on commit") {
        scratch_dir dir;
        const auto target = dir / "model.safetensors";
        const auto content = pattern(100000, 5);
        atomic_file f(target);
        CHECK(f.target() == target);
        CHECK(f.temp_path().parent_path() == dir.path());
        const std::string temp_name = f.temp_path().filename().string();
        const std::string prefix = ".model.safetensors.tmp-" + std::to_string(::getpid()) + "-";
        CHECK(temp_name.starts_with(prefix));
        CHECK(fs::exists(f.temp_path()));
        CHECK_FALSE(fs::exists(target));

        f.write(std::span(content).first(1000));
        f.write({});  // nothing to write: fine
        f.write(std::span(content).subspan(1000));
        CHECK(f.bytes_written() == content.size());
        CHECK_FALSE(fs::exists(target));  // untouched until commit
        CHECK_FALSE(f.committed());
        f.commit();
        CHECK(f.committed());
        CHECK(read_file(target) == content);
        CHECK_FALSE(fs::exists(f.temp_path()));
        CHECK(list_names(dir.path()) == std::vector<std::string>{"model.safetensors"});
    }

    TEST_CASE("atomic_file replaces an existing file only on commit, keeping its permissions") {
        scratch_dir dir;
        const auto target = dir / "x.bin";
        const auto old_content = pattern(5000, 1);
        const auto new_content = pattern(7000, 2);
        write_file(target, old_content);
        fs::permissions(target, fs::perms::owner_read | fs::perms::owner_write);
        {
            atomic_file f(target);
            write_all(f, new_content);
            CHECK(read_file(target) == old_content);
            f.commit();
        }
        CHECK(read_file(target) == new_content);
        CHECK(fs::status(target).permissions() == (fs::perms::owner_read | fs::perms::owner_write));
    }

    TEST_CASE("atomic_file creates a new file with at most the permission bits asked for") {
        scratch_dir dir;
        atomic_file f(dir / "secret.json", 0600);
        f.write(pattern(4));
        f.commit();
        CHECK(fs::status(dir / "secret.json").permissions() ==
              (fs::perms::owner_read | fs::perms::owner_write));
    }

    TEST_CASE("atomic_file commits an empty file, and a bare name lands in the current folder") {
        scratch_dir dir;
        {
            atomic_file f(dir / "empty.bin");
            f.commit();
        }
        CHECK(fs::exists(dir / "empty.bin"));
        CHECK(fs::file_size(dir / "empty.bin") == 0);

        const auto cwd = fs::current_path();
        fs::current_path(dir.path());
        try {
            atomic_file f("bare.bin");
            CHECK(f.temp_path().parent_path() == ".");
            f.write(pattern(10));
            f.commit();
        } catch (...) {
            fs::current_path(cwd);
            throw;
        }
        fs::current_path(cwd);
        CHECK(read_file(dir / "bare.bin") == pattern(10));
    }

    TEST_CASE("atomic_file not committed removes its temporary and leaves the target alone") {
        scratch_dir dir;
        const auto target = dir / "x.bin";
        write_file(target, pattern(10, 1));
        fs::path temp;
        {
            atomic_file f(target);
            temp = f.temp_path();
            f.write(pattern(5000, 2));
            CHECK(fs::exists(temp));
        }
        CHECK_FALSE(fs::exists(temp));
        CHECK(read_file(target) == pattern(10, 1));

        atomic_file g(dir / "y.bin");
        g.write(pattern(10));
        g.discard();
        CHECK_FALSE(fs::exists(g.temp_path()));
        CHECK_FALSE(fs::exists(dir / "y.bin"));
        auto e = expect_error([&] { g.write(pattern(1)); });
        CHECK(e.code() == errc::invalid_argument);
        CHECK(list_names(dir.path()) == std::vector<std::string>{"x.bin"});
    }

    TEST_CASE("atomic_file rejects targets that name no file") {
        for (const char* bad : {"", "some/folder/", ".", "a/.."}) {
            CAPTURE(bad);
            auto e = expect_error([&] { atomic_file f(bad); });
            CHECK(e.code() == errc::invalid_argument);
        }
    }

    TEST_CASE("atomic_file refuses calls after commit or failure") {
        scratch_dir dir;
        atomic_file f(dir / "a.bin");
        f.commit();
        auto e1 = expect_error([&] { f.write(pattern(1)); });
        CHECK(e1.code() == errc::invalid_argument);
        CHECK(e1.message().find("already committed") != std::string::npos);
        auto e2 = expect_error([&] { f.commit(); });
        CHECK(e2.code() == errc::invalid_argument);
    }

    TEST_CASE("atomic_file system errors carry errno text and the path") {
        scratch_dir dir;
        SUBCASE("missing folder") {
            auto e = expect_error([&] { atomic_file f(dir / "no-such" / "x.bin"); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == ENOENT);
            CHECK(e.file().find((dir / "no-such").string()) == 0);
            CHECK(std::string(e.what()).find("No such file or directory") != std::string::npos);
            CHECK(std::string(e.what()).find("x.bin") != std::string::npos);
        }
        SUBCASE("target is a folder: rename fails, temporary removed") {
            fs::create_directory(dir / "sub");
            fs::create_directory(dir / "sub" / "inner");  // non-empty, so rename cannot replace it
            atomic_file f(dir / "sub");
            f.write(pattern(10));
            auto e = expect_error([&] { f.commit(); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == EISDIR);
            CHECK(e.file() == (dir / "sub").string());
            CHECK_FALSE(fs::exists(f.temp_path()));
            CHECK(fs::is_directory(dir / "sub" / "inner"));
        }
        SUBCASE("permission denied (as an unprivileged user, or injected)") {
            const auto target = dir / "x.bin";
            read_only_folder guard(dir.path());
            expect_permission_denied([&] { atomic_file f(target); });
            CHECK(list_names(dir.path()).empty());
        }
    }

    TEST_CASE("atomic_file injected faults: the target is untouched and the temporary removed") {
        scratch_dir dir;
        const auto target = dir / "x.bin";
        const auto old_content = pattern(300, 9);
        write_file(target, old_content);
        const auto content = pattern(50000, 4);
        fault_hooks hooks;
        fs::path temp;
        auto attempt = [&] {
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            atomic_file f(target);
            temp = f.temp_path();
            f.write(std::span(content).first(30000));
            f.write(std::span(content).subspan(30000));
            f.commit();
        };

        SUBCASE("ENOSPC after N bytes") {
            hooks.enospc_after = 40000;
            auto e = expect_error(attempt);
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == ENOSPC);
            CHECK(e.offset() == 40000u);
            CHECK(e.file() == temp.string());
            CHECK(std::string(e.what()).find("No space left on device") != std::string::npos);
        }
        SUBCASE("EIO from write") {
            hooks.write_errno = EIO;
            auto e = expect_error(attempt);
            CHECK(e.sys_errno() == EIO);
            CHECK(e.offset() == 0u);
        }
        SUBCASE("write makes no progress") {
            hooks.write_returns_zero = 1;
            auto e = expect_error(attempt);
            CHECK(e.sys_errno() == EIO);
            CHECK(e.message().find("no progress") != std::string::npos);
        }
        SUBCASE("fsync of the file fails") {
            hooks.fsync_errno = EIO;
            hooks.fsync_fail_on_call = 1;
            auto e = expect_error(attempt);
            CHECK(e.sys_errno() == EIO);
            CHECK(e.message().find("fsync") == 0);
        }
        SUBCASE("close reports a delayed error") {
            hooks.close_errno = EDQUOT;
            auto e = expect_error(attempt);
            CHECK(e.sys_errno() == EDQUOT);
            CHECK(e.message().find("close") == 0);
        }
        SUBCASE("rename fails") {
            hooks.rename_errno = EXDEV;
            auto e = expect_error(attempt);
            CHECK(e.sys_errno() == EXDEV);
            CHECK(e.file() == target.string());
            CHECK(e.message().find("rename") == 0);
        }
        SUBCASE("open of the temporary fails") {
            hooks.open_errno = EMFILE;
            auto e = expect_error(attempt);
            CHECK(e.sys_errno() == EMFILE);
            CHECK(temp.empty());
        }
        CHECK(read_file(target) == old_content);
        CHECK(list_names(dir.path()) == std::vector<std::string>{"x.bin"});
    }

    TEST_CASE("atomic_file: a failed folder fsync after the rename says the file is in place") {
        scratch_dir dir;
        fault_hooks hooks;
        hooks.fsync_errno = EIO;
        hooks.fsync_fail_on_call = 2;  // the first fsync is the file's, the second the folder's
        safeshard::detail::scoped_syscall_hooks scope(hooks);
        atomic_file f(dir / "x.bin");
        f.write(pattern(100));
        auto e = expect_error([&] { f.commit(); });
        CHECK(e.sys_errno() == EIO);
        CHECK(e.message().find("in place") != std::string::npos);
        CHECK(e.file() == dir.path().string());
        CHECK(f.committed());
        CHECK(read_file(dir / "x.bin") == pattern(100));
    }

    TEST_CASE("atomic_file retries EINTR and short writes") {
        scratch_dir dir;
        const auto content = pattern(123457, 6);
        fault_hooks hooks;
        hooks.write_cap = 1000;
        hooks.write_eintr_every = 3;
        {
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            atomic_file f(dir / "x.bin");
            f.write(content);
            CHECK(f.bytes_written() == content.size());
            f.commit();
        }
        CHECK(hooks.eintr_count > 10);
        CHECK(hooks.write_calls > 123);
        CHECK(read_file(dir / "x.bin") == content);
    }

    TEST_CASE("atomic_file moves") {
        scratch_dir dir;
        atomic_file a(dir / "a.bin");
        a.write(pattern(10, 1));
        const auto temp_a = a.temp_path();
        atomic_file b(std::move(a));
        CHECK(b.temp_path() == temp_a);
        CHECK(b.bytes_written() == 10);
        CHECK(a.bytes_written() == 0);                // NOLINT(bugprone-use-after-move)
        CHECK_THROWS_AS(a.write(pattern(1)), error);  // NOLINT(bugprone-use-after-move)

        atomic_file c(dir / "c.bin");
        const auto temp_c = c.temp_path();
        c = std::move(b);  // c's own temporary is dropped
        CHECK_FALSE(fs::exists(temp_c));
        c.write(pattern(5, 2));
        c.commit();
        auto expected = pattern(10, 1);
        const auto more = pattern(5, 2);
        expected.insert(expected.end(), more.begin(), more.end());
        CHECK(read_file(dir / "a.bin") == expected);
        CHECK(list_names(dir.path()) == std::vector<std::string>{"a.bin"});
    }

    TEST_CASE("atomic_file: a disk full midway (ENOSPC, EDQUOT) leaves no partial file") {
        scratch_dir dir;
        const auto target = dir / "big.bin";
        for (const int full : {ENOSPC, EDQUOT}) {
            CAPTURE(full);
            fault_hooks hooks;
            hooks.enospc_after = 64 * 1024;
            hooks.full_errno = full;
            fs::path temp;
            {
                safeshard::detail::scoped_syscall_hooks scope(hooks);
                atomic_file f(target);
                temp = f.temp_path();
                auto e = expect_error([&] { f.write(pattern(256 * 1024)); });
                CHECK(e.code() == errc::io_error);
                CHECK(e.sys_errno() == full);
                CHECK(e.offset() == 64u * 1024);  // the write that crossed the limit got in
                CHECK(e.file() == temp.string());
                CHECK(std::string(e.what()).find(std::strerror(full)) != std::string::npos);
                CHECK_FALSE(fs::exists(temp));  // the partial temporary went at once
            }
            CHECK(hooks.bytes_in == 64u * 1024);
            CHECK(list_names(dir.path()).empty());
        }
        atomic_file g(target);
        g.write(pattern(8 * 1024));
        g.commit();
        CHECK(read_file(target) == pattern(8 * 1024));
        // The same on a real full disk, where this process may mount a 64 KiB tmpfs.
        const tmpfs_mount mnt(dir / "small", "size=64k");
        if (!mnt.mounted()) return;
        {
            atomic_file f(mnt.path() / "big.bin");
            auto e = expect_error([&] { f.write(pattern(256 * 1024)); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == ENOSPC);
            CHECK(e.offset().value_or(0) <= 64 * 1024);
        }
        CHECK(list_names(mnt.path()).empty());
    }

    TEST_CASE("atomic_file: a read-only file system (EROFS) leaves the old file as it was") {
        scratch_dir dir;
        const auto target = dir / "x.bin";
        write_file(target, pattern(10));
        fault_hooks hooks;
        hooks.read_only = true;
        {
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            auto e = expect_error([&] { atomic_file f(target); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == EROFS);
            CHECK(std::string(e.what()).find("Read-only file system") != std::string::npos);
            CHECK(e.file().find(dir.path().string()) == 0);
        }
        CHECK(read_file(target) == pattern(10));
        CHECK(list_names(dir.path()) == std::vector<std::string>{"x.bin"});
        // Made read-only after the temporary was written: the rename says EROFS, the
        // temporary is removed and the old file stays.
        {
            atomic_file f(target);
            f.write(pattern(20, 2));
            fault_hooks late;
            late.read_only = true;
            safeshard::detail::scoped_syscall_hooks scope(late);
            auto e = expect_error([&] { f.commit(); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == EROFS);
            CHECK(e.message().find("rename") == 0);
            CHECK(late.rename_calls == 1);
        }
        CHECK(read_file(target) == pattern(10));
        CHECK(list_names(dir.path()) == std::vector<std::string>{"x.bin"});
        // The same on a real read-only mount, where this process may mount and remount.
        const tmpfs_mount mnt(dir / "ro", "size=64k");
        if (!mnt.mounted()) return;
        write_file(mnt.path() / "x.bin", pattern(10));
        if (!mnt.remount_read_only()) return;
        auto e = expect_error([&] { atomic_file f(mnt.path() / "x.bin"); });
        CHECK(e.code() == errc::io_error);
        CHECK(e.sys_errno() == EROFS);
        CHECK(read_file(mnt.path() / "x.bin") == pattern(10));
    }

    TEST_CASE("atomic_file::remove_stale removes only dead writers' temporaries") {
        scratch_dir dir;
        const auto target = dir / "t.bin";
        const std::string dead = std::to_string(dead_pid());
        const std::string me = std::to_string(::getpid());
        atomic_file live(target);  // ours and open: alive
        const std::vector<std::string> kept = {
            live.temp_path().filename().string(),
            ".t.bin.tmp-1-0",             // init: alive
            ".t.bin.tmp-abc-0",           // not a pid
            ".t.bin.tmp-" + dead,         // no counter
            ".t.bin.tmp-" + dead + "-x",  // counter not a number
            ".t.bin.tmp-99999999999-0",   // pid out of range
            ".u.bin.tmp-" + dead + "-0",  // another target's
            "t.bin.tmp-" + dead + "-0",   // no leading dot
        };
        for (const auto& n : kept) write_file(dir / n, pattern(3));
        fs::create_directory(dir / (".t.bin.tmp-" + dead + "-7"));  // not a file: left alone
        write_file(dir / (".t.bin.tmp-" + dead + "-0"), pattern(3));
        write_file(dir / (".t.bin.tmp-" + dead + "-12"), pattern(3));
        // Our pid but no live atomic_file: left by an earlier process that had our pid.
        write_file(dir / (".t.bin.tmp-" + me + "-999999"), pattern(3));

        CHECK(atomic_file::remove_stale(target) == 3);
        CHECK_FALSE(fs::exists(dir / (".t.bin.tmp-" + dead + "-0")));
        CHECK_FALSE(fs::exists(dir / (".t.bin.tmp-" + me + "-999999")));
        for (const auto& n : kept) {
            CAPTURE(n);
            CHECK(fs::exists(dir / n));
        }
        CHECK(fs::is_directory(dir / (".t.bin.tmp-" + dead + "-7")));
        CHECK(atomic_file::remove_stale(target) == 0);

        // The constructor cleans up too.
        write_file(dir / (".t.bin.tmp-" + dead + "-5"), pattern(3));
        { atomic_file f(target); }
        CHECK_FALSE(fs::exists(dir / (".t.bin.tmp-" + dead + "-5")));
        CHECK(atomic_file::remove_stale(dir / "no-such-folder" / "t.bin") == 0);
        CHECK(atomic_file::remove_stale("") == 0);
    }

}  // TEST_SUITE
