#include "safeshard/io/mapped_file.hpp"

#include "io_test_support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <type_traits>

using namespace safeshard;
using namespace io_test;

static_assert(!std::is_copy_constructible_v<mapped_file>);
static_assert(!std::is_copy_assignable_v<mapped_file>);
static_assert(std::is_nothrow_move_constructible_v<mapped_file>);
static_assert(std::is_nothrow_move_assignable_v<mapped_file>);

namespace {
bool same(std::span<const std::byte> a, const std::vector<std::byte>& b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}
}  // namespace

TEST_SUITE("io") {
    TEST_CASE("mapped_file maps a whole file read-only") {
        scratch_dir dir;
        const auto content = pattern(3 * 4096 + 17);
        write_file(dir / "a.bin", content);
        mapped_file m(dir / "a.bin");
        CHECK(m.size() == content.size());
        CHECK_FALSE(m.empty());
        CHECK(m.data() != nullptr);
        CHECK(m.data() == m.bytes().data());
        CHECK(m.path() == dir / "a.bin");
        CHECK(same(m.bytes(), content));
    }

    TEST_CASE("mapped_file stays valid after the file is unlinked") {
        scratch_dir dir;
        const auto content = pattern(10000, 7);
        write_file(dir / "gone.bin", content);
        mapped_file m(dir / "gone.bin");
        fs::remove(dir / "gone.bin");
        CHECK(same(m.bytes(), content));
    }

    TEST_CASE("mapped_file of an empty file is an empty span and calls no mmap") {
        scratch_dir dir;
        write_file(dir / "empty.bin", {});
        fault_hooks hooks;
        hooks.mmap_errno = ENOMEM;  // would throw if mmap were called
        hooks.madvise_errno = EINVAL;
        safeshard::detail::scoped_syscall_hooks scope(hooks);
        mapped_file m(dir / "empty.bin", access_advice::willneed);
        CHECK(m.size() == 0);
        CHECK(m.empty());
        CHECK(m.bytes().empty());
        CHECK(m.data() == nullptr);
        m.advise(access_advice::sequential);  // nothing to advise: no call, no error
        CHECK_THROWS_AS(m.advise(access_advice::random, 1), error);
    }

    TEST_CASE("default-constructed mapped_file is empty") {
        mapped_file m;
        CHECK(m.empty());
        CHECK(m.data() == nullptr);
        CHECK(m.path().empty());
    }

    TEST_CASE("mapped_file errors name the path and carry errno") {
        scratch_dir dir;
        SUBCASE("missing file") {
            auto e = expect_error([&] { mapped_file m(dir / "missing.bin"); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == ENOENT);
            CHECK(e.file() == (dir / "missing.bin").string());
            CHECK(std::string(e.what()).find("No such file or directory") != std::string::npos);
        }
        SUBCASE("missing folder") {
            auto e = expect_error([&] { mapped_file m(dir / "no-such-folder" / "x.bin"); });
            CHECK(e.sys_errno() == ENOENT);
        }
        SUBCASE("a folder") {
            auto e = expect_error([&] { mapped_file m(dir.path()); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == EISDIR);
        }
        SUBCASE("not a regular file") {
            auto e = expect_error([&] { mapped_file m("/dev/null"); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.message().find("not a regular file") != std::string::npos);
            CHECK(e.file() == "/dev/null");
        }
        SUBCASE("mmap fails") {
            write_file(dir / "a.bin", pattern(100));
            fault_hooks hooks;
            hooks.mmap_errno = ENOMEM;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            auto e = expect_error([&] { mapped_file m(dir / "a.bin"); });
            CHECK(e.sys_errno() == ENOMEM);
            CHECK(e.message().find("mmap") != std::string::npos);
        }
        SUBCASE("permission denied (as an unprivileged user, or injected)") {
            write_file(dir / "secret.bin", pattern(100));
            fs::permissions(dir / "secret.bin", fs::perms::none);  // unreadable even to its owner
            const auto path = dir / "secret.bin";
            expect_permission_denied([&] { mapped_file m(path); });
        }
    }

    TEST_CASE("mapped_file moves") {
        scratch_dir dir;
        const auto a = pattern(5000, 1);
        const auto b = pattern(7000, 2);
        write_file(dir / "a.bin", a);
        write_file(dir / "b.bin", b);
        mapped_file ma(dir / "a.bin");
        const std::byte* pa = ma.data();

        mapped_file moved(std::move(ma));
        CHECK(moved.data() == pa);
        CHECK(moved.path() == dir / "a.bin");
        CHECK(same(moved.bytes(), a));
        CHECK(ma.empty());  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
        CHECK(ma.data() == nullptr);
        CHECK(ma.path().empty());

        mapped_file mb(dir / "b.bin");
        moved = std::move(mb);  // unmaps a, takes b
        CHECK(same(moved.bytes(), b));
        CHECK(mb.empty());  // NOLINT(bugprone-use-after-move)

        auto& self = moved;
        moved = std::move(self);
        CHECK(same(moved.bytes(), b));
    }

    TEST_CASE("mapped_file advise: every hint, ranges, and bad offsets") {
        scratch_dir dir;
        const auto content = pattern(5 * 4096 + 123, 3);
        write_file(dir / "a.bin", content);
        for (auto a : {access_advice::normal, access_advice::sequential, access_advice::random,
                       access_advice::willneed, access_advice::dontneed}) {
            CAPTURE(to_string(a));
            mapped_file m(dir / "a.bin", a);  // in the constructor
            m.advise(a);                      // whole file
            m.advise(a, 4096 + 1, 100);       // unaligned offset: rounded down to the page
            m.advise(a, 3, SIZE_MAX - 1);     // length clipped to the end
            m.advise(a, m.size(), 10);        // empty range at the end: nothing to do
            m.advise(a, 100, 0);              // empty range
            CHECK(same(m.bytes(), content));  // dontneed drops pages, never data
            auto e = expect_error([&] { m.advise(a, m.size() + 1); });
            CHECK(e.code() == errc::invalid_argument);
            CHECK(e.offset() == m.size() + 1);
        }
        CHECK(to_string(access_advice::willneed) == "willneed");
        CHECK(to_string(static_cast<access_advice>(42)) == "unknown");
    }

    TEST_CASE("mapped_file advise reports a refused madvise") {
        scratch_dir dir;
        write_file(dir / "a.bin", pattern(9000));
        fault_hooks hooks;
        hooks.madvise_errno = EINVAL;
        {
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            mapped_file m(dir / "a.bin");  // normal advice: no madvise call
            auto e = expect_error([&] { m.advise(access_advice::willneed, 4096); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == EINVAL);
            CHECK(e.message().find("madvise(willneed)") != std::string::npos);
            CHECK(e.offset() == 4096u);
            // Advice given at construction that fails: the constructor throws (and unmaps).
            auto e2 = expect_error([&] { mapped_file m2(dir / "a.bin", access_advice::random); });
            CHECK(e2.message().find("madvise(random)") != std::string::npos);
        }
        CHECK(safeshard::detail::active_syscall_hooks.load() == nullptr);
    }

}  // TEST_SUITE
