#include "safeshard/io/atomic_directory.hpp"

#include "io_test_support.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <string>
#include <type_traits>

#include <sys/wait.h>
#include <unistd.h>

using namespace safeshard;
using namespace io_test;

static_assert(!std::is_copy_constructible_v<atomic_directory>);
static_assert(std::is_nothrow_move_constructible_v<atomic_directory>);
static_assert(std::is_nothrow_move_assignable_v<atomic_directory>);

namespace {

pid_t dead_pid() {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) ::_exit(0);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    return pid;
}

// Two files, one of them in a subfolder, and a symlink.
void fill(const fs::path& dir) {
    write_file(dir / "a.bin", pattern(5000, 1));
    fs::create_directory(dir / "sub");
    write_file(dir / "sub" / "b.bin", pattern(300, 2));
    fs::create_symlink("a.bin", dir / "link");
}

void check_filled(const fs::path& dir) {
    CHECK(read_file(dir / "a.bin") == pattern(5000, 1));
    CHECK(read_file(dir / "sub" / "b.bin") == pattern(300, 2));
    CHECK(fs::read_symlink(dir / "link") == "a.bin");
    CHECK(list_names(dir) == std::vector<std::string>{"a.bin", "link", "sub"});
}

}  // namespace

TEST_SUITE("io") {
    TEST_CASE("atomic_directory fills a sibling temporary folder and renames it on commit") {
        scratch_dir dir;
        const auto target = dir / "model";
        atomic_directory d(target);
        CHECK(d.target() == target);
        CHECK(d.path() == dir / (".model.safeshard.tmp-" + std::to_string(::getpid())));
        CHECK(fs::is_directory(d.path()));
        CHECK_FALSE(fs::exists(target));
        fill(d.path());
        {
            atomic_file f(d.path() / "c.bin");  // atomic files inside work too
            f.write(pattern(10, 3));
            f.commit();
        }
        CHECK_FALSE(d.committed());
        d.commit();
        CHECK(d.committed());
        CHECK_FALSE(fs::exists(d.path()));
        CHECK(read_file(target / "c.bin") == pattern(10, 3));
        fs::remove(target / "c.bin");
        check_filled(target);
        CHECK(list_names(dir.path()) == std::vector<std::string>{"model"});

        auto e = expect_error([&] { d.commit(); });
        CHECK(e.code() == errc::invalid_argument);
        CHECK(e.message().find("already committed") != std::string::npos);
    }

    TEST_CASE("atomic_directory: a trailing slash names the same folder; an empty one commits") {
        scratch_dir dir;
        atomic_directory d((dir / "out").string() + "/");
        CHECK(d.target() == dir / "out");
        d.commit();
        CHECK(fs::is_directory(dir / "out"));
        CHECK(fs::is_empty(dir / "out"));
    }

    TEST_CASE("atomic_directory rejects names that are no folder name") {
        for (const char* bad : {"", ".", "a/..", "/", "x/./"}) {
            CAPTURE(bad);
            auto e = expect_error([&] { atomic_directory d(bad); });
            CHECK(e.code() == errc::invalid_argument);
        }
    }

    TEST_CASE("atomic_directory refuses an existing target") {
        scratch_dir dir;
        SUBCASE("a folder") { fs::create_directory(dir / "model"); }
        SUBCASE("a file") { write_file(dir / "model", pattern(3)); }
        SUBCASE("a dangling symlink") { fs::create_symlink("nowhere", dir / "model"); }
        auto e = expect_error([&] { atomic_directory d(dir / "model"); });
        CHECK(e.code() == errc::io_error);
        CHECK(e.sys_errno() == EEXIST);
        CHECK(e.file() == (dir / "model").string());
        CHECK(e.message().find("already exists") != std::string::npos);
        CHECK(list_names(dir.path()) == std::vector<std::string>{"model"});
    }

    TEST_CASE("atomic_directory not committed removes the temporary folder and its content") {
        scratch_dir dir;
        fs::path temp;
        {
            atomic_directory d(dir / "model");
            temp = d.path();
            fill(temp);
        }
        CHECK_FALSE(fs::exists(temp));
        CHECK(list_names(dir.path()).empty());

        atomic_directory d(dir / "model");
        fill(d.path());
        d.discard();
        CHECK_FALSE(fs::exists(d.path()));
        auto e = expect_error([&] { d.commit(); });
        CHECK(e.code() == errc::invalid_argument);
        CHECK(e.message().find("spent") != std::string::npos);
    }

    TEST_CASE("atomic_directory::begun_in_process counts folders begun and not discarded") {
        scratch_dir dir;
        const int before = atomic_directory::begun_in_process();
        {
            atomic_directory d(dir / "a");
            CHECK(atomic_directory::begun_in_process() == before + 1);
        }  // discarded
        CHECK(atomic_directory::begun_in_process() == before);
        {
            atomic_directory d(dir / "b");
            atomic_directory moved(std::move(d));
            CHECK(atomic_directory::begun_in_process() == before + 1);
            moved.commit();
        }
        // A committed folder still counts: a process that wrote one has something to report.
        CHECK(atomic_directory::begun_in_process() == before + 1);
        (void)expect_error([&] { atomic_directory d(dir / "b"); });  // exists: nothing begun
        CHECK(atomic_directory::begun_in_process() == before + 1);
    }

    TEST_CASE("atomic_directory system errors") {
        scratch_dir dir;
        SUBCASE("missing parent folders are created, as os.makedirs does") {
            atomic_directory d(dir / "no" / "such" / "model");
            CHECK(fs::is_directory(dir / "no" / "such"));
            d.commit();
            CHECK(fs::is_directory(dir / "no" / "such" / "model"));
        }
        SUBCASE("parent is a file") {
            write_file(dir / "file", pattern(1));
            auto e = expect_error([&] { atomic_directory d(dir / "file" / "model"); });
            CHECK(e.sys_errno() == ENOTDIR);
            e = expect_error([&] { atomic_directory d(dir / "file" / "sub" / "model"); });
            CHECK(e.sys_errno() == ENOTDIR);
        }
        SUBCASE("a missing parent that cannot be made says which") {
            fault_hooks hooks;
            hooks.mkdir_errno = EACCES;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            auto e = expect_error([&] { atomic_directory d(dir / "no" / "model"); });
            CHECK(e.sys_errno() == EACCES);
            CHECK(e.file() == (dir / "no").string());
            CHECK(e.message().find("missing parent folder") != std::string::npos);
        }
        SUBCASE("mkdir fails (injected), and the name is free again afterwards") {
            fault_hooks hooks;
            hooks.mkdir_errno = ENOSPC;
            {
                safeshard::detail::scoped_syscall_hooks scope(hooks);
                auto e = expect_error([&] { atomic_directory d(dir / "model"); });
                CHECK(e.sys_errno() == ENOSPC);
            }
            atomic_directory d(dir / "model");
            d.commit();
            CHECK(fs::is_directory(dir / "model"));
        }
        SUBCASE("permission denied (as an unprivileged user, or injected)") {
            const auto target = dir / "model";
            read_only_folder guard(dir.path());
            expect_permission_denied([&] { atomic_directory d(target); });
            CHECK(list_names(dir.path()).empty());
        }
    }

    TEST_CASE("atomic_directory commit failures remove the temporary and leave no target") {
        scratch_dir dir;
        const auto target = dir / "model";
        fault_hooks hooks;
        fs::path temp;
        auto attempt = [&] {
            atomic_directory d(target);
            temp = d.path();
            fill(d.path());
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            d.commit();
        };
        SUBCASE("fsync of a file inside fails") {
            hooks.fsync_errno = EIO;
            hooks.fsync_fail_on_call = 1;
            auto e = expect_error(attempt);
            CHECK(e.sys_errno() == EIO);
            CHECK(e.message().find("fsync") == 0);
            CHECK(e.file().find(temp.string()) == 0);
        }
        SUBCASE("rename fails") {
            hooks.rename_errno = EXDEV;
            auto e = expect_error(attempt);
            CHECK(e.sys_errno() == EXDEV);
            CHECK(e.file() == target.string());
            CHECK(hooks.rename_flags_seen == static_cast<int>(RENAME_NOREPLACE));
        }
        CHECK_FALSE(fs::exists(target));
        CHECK(list_names(dir.path()).empty());
    }

    TEST_CASE("atomic_directory: a target that appears meanwhile is never replaced") {
        scratch_dir dir;
        const auto target = dir / "model";
        fault_hooks hooks;
        SUBCASE("RENAME_NOREPLACE") {}
        SUBCASE("file system without RENAME_NOREPLACE") { hooks.rename_noreplace_einval = 1; }
        atomic_directory d(target);
        fill(d.path());
        fs::create_directory(target);  // empty: a plain rename(2) would replace it
        safeshard::detail::scoped_syscall_hooks scope(hooks);
        auto e = expect_error([&] { d.commit(); });
        CHECK(e.code() == errc::io_error);
        CHECK(e.sys_errno() == EEXIST);
        CHECK(fs::is_empty(target));
        CHECK(list_names(dir.path()) == std::vector<std::string>{"model"});
    }

    TEST_CASE("atomic_directory: without RENAME_NOREPLACE a plain rename is used") {
        scratch_dir dir;
        fault_hooks hooks;
        hooks.rename_noreplace_einval = 1;
        safeshard::detail::scoped_syscall_hooks scope(hooks);
        atomic_directory d(dir / "model");
        fill(d.path());
        d.commit();
        CHECK(hooks.rename_calls == 2);
        check_filled(dir / "model");
    }

    TEST_CASE(
        "atomic_directory: a failed parent fsync after the rename says the folder is in place") {
        scratch_dir dir;
        atomic_directory d(dir / "model");
        fill(d.path());  // fsyncs: a.bin, sub, sub/b.bin, the folder itself, then the parent
        fault_hooks hooks;
        hooks.fsync_errno = EIO;
        hooks.fsync_fail_on_call = 5;
        safeshard::detail::scoped_syscall_hooks scope(hooks);
        auto e = expect_error([&] { d.commit(); });
        CHECK(hooks.fsync_calls == 5);
        CHECK(e.message().find("in place") != std::string::npos);
        CHECK(e.file() == dir.path().string());
        CHECK(d.committed());
        check_filled(dir / "model");
    }

    TEST_CASE(
        "atomic_directory: a folder fsync that says EINVAL counts as done; a file's does not") {
        // five fsyncs: a.bin, sub and sub/b.bin (in the order the folder lists them), the
        // folder itself, then the parent
        int failed = 0;
        for (const int call : {1, 2, 3, 4, 5}) {
            CAPTURE(call);
            scratch_dir dir;
            atomic_directory d(dir / "model");
            fill(d.path());
            fault_hooks hooks;
            hooks.fsync_errno = EINVAL;
            hooks.fsync_fail_on_call = call;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            try {
                d.commit();
                CHECK(hooks.fsync_calls == 5);
                check_filled(dir / "model");
            } catch (const error& e) {
                ++failed;
                CHECK(e.sys_errno() == EINVAL);
                CHECK(e.file().ends_with(".bin"));  // a file, not a folder
                CHECK_FALSE(fs::exists(dir / "model"));
            }
        }
        CHECK(failed == 2);
    }

    TEST_CASE("atomic_directory: a disk full midway leaves nothing; a read-only one says EROFS") {
        scratch_dir dir;
        for (const int full : {ENOSPC, EDQUOT}) {
            CAPTURE(full);
            fault_hooks hooks;
            hooks.enospc_after = 64 * 1024;
            hooks.full_errno = full;
            {
                safeshard::detail::scoped_syscall_hooks scope(hooks);
                atomic_directory d(dir / "model");
                write_file(d.path() / "small.bin", pattern(100));  // not through the seam
                atomic_file f(d.path() / "big.bin");
                auto e = expect_error([&] { f.write(pattern(256 * 1024)); });
                CHECK(e.code() == errc::io_error);
                CHECK(e.sys_errno() == full);
                CHECK(e.offset() == 64u * 1024);
                CHECK(e.file().find(d.path().string()) == 0);
            }
            CHECK(hooks.bytes_in == 64u * 1024);
            CHECK(list_names(dir.path()).empty());  // the folder and all in it are gone
        }
        {
            fault_hooks hooks;
            hooks.read_only = true;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            auto e = expect_error([&] { atomic_directory d(dir / "model"); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == EROFS);
            CHECK(std::string(e.what()).find("Read-only file system") != std::string::npos);
        }
        CHECK(list_names(dir.path()).empty());
        // Made read-only after the folder was filled: the commit's rename says EROFS and the
        // folder is removed.
        {
            atomic_directory d(dir / "model");
            fill(d.path());
            fault_hooks late;
            late.read_only = true;
            safeshard::detail::scoped_syscall_hooks scope(late);
            auto e = expect_error([&] { d.commit(); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == EROFS);
            CHECK(late.rename_calls >= 1);
        }
        CHECK(list_names(dir.path()).empty());
        // The same on a real tmpfs of 64 KiB, where this process may mount and remount one.
        const tmpfs_mount mnt(dir / "small", "size=64k");
        if (!mnt.mounted()) return;
        {
            atomic_directory d(mnt.path() / "model");
            atomic_file f(d.path() / "big.bin");
            auto e = expect_error([&] { f.write(pattern(256 * 1024)); });
            CHECK(e.sys_errno() == ENOSPC);
        }
        CHECK(list_names(mnt.path()).empty());
        if (!mnt.remount_read_only()) return;
        auto e = expect_error([&] { atomic_directory d(mnt.path() / "model"); });
        CHECK(e.sys_errno() == EROFS);
    }

    TEST_CASE("atomic_directory: one writer per target in a process") {
        scratch_dir dir;
        std::optional<atomic_directory> first(std::in_place, dir / "model");
        auto e = expect_error([&] { atomic_directory second(dir / "model"); });
        CHECK(e.code() == errc::io_error);
        CHECK(e.sys_errno() == EEXIST);
        CHECK(e.message().find("another atomic_directory") != std::string::npos);
        CHECK(fs::is_directory(first->path()));  // the failed second one did not remove it
        first.reset();
        atomic_directory third(dir / "model");
        third.commit();
        CHECK(fs::is_directory(dir / "model"));
    }

    TEST_CASE("atomic_directory: a leftover temporary with our own pid is replaced") {
        scratch_dir dir;
        const auto leftover = dir / (".model.safeshard.tmp-" + std::to_string(::getpid()));
        fs::create_directory(leftover);
        write_file(leftover / "old.bin", pattern(10));
        atomic_directory d(dir / "model");
        CHECK(d.path() == leftover);
        CHECK(fs::is_empty(d.path()));
    }

    TEST_CASE("atomic_directory::remove_stale removes only dead writers' folders") {
        scratch_dir dir;
        const auto target = dir / "model";
        const std::string dead = std::to_string(dead_pid());
        atomic_directory live(dir / "other");                  // alive: kept
        fs::create_directory(dir / ".model.safeshard.tmp-1");  // init: alive
        fs::create_directory(dir / ".model.safeshard.tmp-abc");
        fs::create_directory(dir / (".model.safeshard.tmp-" + dead + "-1"));
        fs::create_directory(dir / (".xmodel.safeshard.tmp-" + dead));
        fs::create_directory(dir / (".other.safeshard.tmp-" + dead));
        write_file(dir / (".model.safeshard.tmp-" + dead + "0"),
                   pattern(1));  // a file, and another pid
        fs::create_directory(dir / "real");
        fs::create_directory_symlink("real",
                                     dir / (".model.safeshard.tmp-" + std::to_string(dead_pid())));
        fs::create_directory(dir / (".model.safeshard.tmp-" + dead));
        fill(dir / (".model.safeshard.tmp-" + dead));
        // A person's folders that only look like temporaries (a dated backup): never touched.
        fs::create_directory(dir / ("model.tmp-" + dead));
        write_file(dir / ("model.tmp-" + dead) / "notes.txt", pattern(5));
        fs::create_directory(dir / ("model.tmp-" + dead + "0"));
        const auto before = list_names(dir.path());

        CHECK(atomic_directory::remove_stale(target) == 1);
        CHECK_FALSE(fs::exists(dir / (".model.safeshard.tmp-" + dead)));
        CHECK(list_names(dir.path()).size() == before.size() - 1);
        CHECK(fs::is_directory(live.path()));
        CHECK(atomic_directory::remove_stale(dir / "other") == 1);  // .other.safeshard.tmp-<dead>
        CHECK(fs::is_directory(live.path()));
        CHECK(atomic_directory::remove_stale(target) == 0);
        CHECK(atomic_directory::remove_stale(dir / "missing" / "model") == 0);
        CHECK(atomic_directory::remove_stale("") == 0);

        // The constructor cleans up too.
        fs::create_directory(dir / (".model.safeshard.tmp-" + dead));
        atomic_directory d(target);
        CHECK_FALSE(fs::exists(dir / (".model.safeshard.tmp-" + dead)));
    }

    TEST_CASE("atomic_directory moves") {
        scratch_dir dir;
        atomic_directory a(dir / "a");
        const auto temp_a = a.path();
        write_file(temp_a / "x.bin", pattern(4));
        atomic_directory b(std::move(a));
        CHECK(b.path() == temp_a);
        CHECK(b.target() == dir / "a");
        CHECK_THROWS_AS(a.commit(), error);  // NOLINT(bugprone-use-after-move)
        atomic_directory c(dir / "c");
        const auto temp_c = c.path();
        c = std::move(b);  // c's own temporary is removed
        CHECK_FALSE(fs::exists(temp_c));
        c.commit();
        CHECK(read_file(dir / "a" / "x.bin") == pattern(4));
        CHECK(list_names(dir.path()) == std::vector<std::string>{"a"});
    }

}  // TEST_SUITE
