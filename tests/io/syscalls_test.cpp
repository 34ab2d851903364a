#include "safeshard/io/syscalls.hpp"

#include "safeshard/io/atomic_directory.hpp"
#include "safeshard/io/atomic_file.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/mapped_file.hpp"

#include "io_test_support.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <filesystem>

#include <fcntl.h>
#include <sys/vfs.h>
#include <unistd.h>

using namespace safeshard;
using namespace io_test;

namespace {

std::size_t open_fd_count() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
    return n;
}

}  // namespace

TEST_SUITE("io") {
    TEST_CASE("scoped_syscall_hooks install, nest and restore") {
        namespace d = safeshard::detail;
        CHECK(d::active_syscall_hooks.load() == nullptr);
        fault_hooks outer, inner;
        {
            d::scoped_syscall_hooks a(outer);
            CHECK(d::active_syscall_hooks.load() == &outer);
            {
                d::scoped_syscall_hooks b(inner);
                CHECK(d::active_syscall_hooks.load() == &inner);
                inner.fsync_errno = EIO;
                CHECK(d::sys::fsync(-1) == -1);
                CHECK(errno == EIO);
                CHECK(inner.fsync_calls == 1);
                CHECK(outer.fsync_calls == 0);
            }
            CHECK(d::active_syscall_hooks.load() == &outer);
            CHECK(d::sys::fsync(-1) == -1);
            CHECK(errno == EBADF);  // the base hook does the real call
            CHECK(outer.fsync_calls == 1);
        }
        CHECK(d::active_syscall_hooks.load() == nullptr);
        CHECK(d::sys::fsync(-1) == -1);
        CHECK(errno == EBADF);
    }

    TEST_CASE("fstatfs goes through the seam: hooks see it and may say another file system") {
        scratch_dir dir;
        write_file(dir / "a.bin", pattern(10));
        const safeshard::detail::unique_fd fd(::open((dir / "a.bin").c_str(), O_RDONLY));
        REQUIRE(fd);
        struct statfs real {};
        REQUIRE(safeshard::detail::sys::fstatfs(fd.get(), &real) == 0);
        fault_hooks hooks;
        hooks.fstatfs_type = safeshard::test::tmpfs_magic;
        {
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            struct statfs st {};
            CHECK(safeshard::detail::sys::fstatfs(fd.get(), &st) == 0);
            CHECK(static_cast<long>(st.f_type) == safeshard::test::tmpfs_magic);
            CHECK(st.f_bsize == real.f_bsize);  // the rest is the real answer
            CHECK(safeshard::detail::sys::fstatfs(-1, &st) == -1);
            CHECK(errno == EBADF);
        }
        CHECK(hooks.fstatfs_calls == 2);
        struct statfs after {};
        REQUIRE(safeshard::detail::sys::fstatfs(fd.get(), &after) == 0);
        CHECK(after.f_type == real.f_type);
    }

    TEST_CASE("errno_error reads errno first and names the path") {
        const fs::path p = "/some/where/file.bin";
        errno = ENOSPC;
        const auto e = safeshard::detail::errno_error("write", p, 42);
        CHECK(e.code() == errc::io_error);
        CHECK(e.sys_errno() == ENOSPC);
        CHECK(e.offset() == 42u);
        CHECK(std::string(e.what()) ==
              "io_error: write failed: No space left on device (file '/some/where/file.bin', byte "
              "offset 42)");
    }

    TEST_CASE("no file descriptor leaks on success or error paths") {
        scratch_dir dir;
        write_file(dir / "a.bin", pattern(10000));
        const std::size_t before = open_fd_count();
        {
            mapped_file m(dir / "a.bin");
            file_reader r(dir / "a.bin", {.direct = true});
            atomic_file f(dir / "b.bin");
            atomic_directory d(dir / "model");
            CHECK(open_fd_count() ==
                  before + 2);  // the reader's and the writer's; a map keeps none
        }
        CHECK(open_fd_count() == before);
        auto swallow = [](auto&& f) {
            try {
                f();
            } catch (const error&) {
            }
        };
        fault_hooks hooks;
        {
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            hooks.mmap_errno = ENOMEM;
            swallow([&] { mapped_file m(dir / "a.bin"); });
            hooks.madvise_errno = EINVAL;
            swallow([&] { mapped_file m(dir / "a.bin", access_advice::random); });
            hooks.read_errno = EIO;
            swallow([&] {
                file_reader r(dir / "a.bin");
                std::vector<std::byte> buf(10);
                r.read_exact(buf, 0);
            });
            hooks.enospc_after = 100;
            swallow([&] {
                atomic_file f(dir / "c.bin");
                f.write(pattern(1000));
            });
            hooks.enospc_after.reset();
            hooks.fsync_errno = EIO;
            swallow([&] {
                atomic_file f(dir / "c.bin");
                f.commit();
            });
            swallow([&] {
                atomic_directory d(dir / "model2");
                write_file(d.path() / "x", pattern(3));
                d.commit();
            });
        }
        swallow([&] { file_reader r(dir / "missing"); });
        swallow([&] { mapped_file m(dir.path()); });
        swallow([&] { file_reader r(dir.path()); });
        CHECK(open_fd_count() == before);
        CHECK(list_names(dir.path()) == std::vector<std::string>{"a.bin"});
    }

}  // TEST_SUITE
