#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/mapped_file.hpp"

#include "file_change.hpp"
#include "io_test_support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <sys/uio.h>
#include <unistd.h>

using namespace safeshard;
using namespace io_test;

static_assert(!std::is_copy_constructible_v<file_reader>);
static_assert(std::is_nothrow_move_constructible_v<file_reader>);
static_assert(std::is_nothrow_move_assignable_v<file_reader>);
static_assert(!std::is_copy_constructible_v<aligned_buffer>);
static_assert(std::is_nothrow_move_constructible_v<aligned_buffer>);
static_assert(file_reader::direct_alignment == 4096);

namespace {

bool same(std::span<const std::byte> got, const std::vector<std::byte>& all, std::size_t offset) {
    return std::equal(got.begin(), got.end(), all.begin() + static_cast<std::ptrdiff_t>(offset));
}

// A buffer of n bytes starting `misalign` bytes past a 4096 boundary.
struct placed_buffer {
    aligned_buffer storage;
    std::span<std::byte> span;
    placed_buffer(std::size_t n, std::size_t misalign)
        : storage(n + misalign + 1), span(storage.data() + misalign, n) {}
};

}  // namespace

TEST_SUITE("io") {
    TEST_CASE("aligned_buffer owns aligned memory") {
        aligned_buffer b(10000);
        CHECK(b.size() == 10000);
        CHECK(b.capacity() == 3 * 4096);
        CHECK(b.alignment() == 4096);
        CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % 4096 == 0);
        CHECK(b.bytes().size() == 10000);
        CHECK(b.bytes().data() == b.data());
        std::fill(b.data(), b.data() + b.capacity(), std::byte{7});  // the whole capacity is usable

        aligned_buffer c(100, 64);
        CHECK(reinterpret_cast<std::uintptr_t>(c.data()) % 64 == 0);
        CHECK(c.capacity() == 128);

        aligned_buffer empty(0);
        CHECK(empty.empty());
        CHECK(empty.data() == nullptr);
        CHECK(aligned_buffer{}.capacity() == 0);

        for (std::size_t bad : {std::size_t{0}, std::size_t{3}, std::size_t{4095}}) {
            CAPTURE(bad);
            auto e = expect_error([&] { aligned_buffer x(10, bad); });
            CHECK(e.code() == errc::invalid_argument);
        }
        auto e = expect_error([&] { aligned_buffer x(SIZE_MAX - 10); });
        CHECK(e.code() == errc::invalid_argument);

        std::byte* p = b.data();
        aligned_buffer moved(std::move(b));
        CHECK(moved.data() == p);
        CHECK(moved.size() == 10000);
        CHECK(b.data() == nullptr);  // NOLINT(bugprone-use-after-move)
        CHECK(b.size() == 0);        // NOLINT(bugprone-use-after-move)
        c = std::move(moved);
        CHECK(c.data() == p);
        CHECK(c.alignment() == 4096);
        auto& self = c;
        c = std::move(self);
        CHECK(c.data() == p);
    }

    TEST_CASE("file_reader reads exact ranges") {
        scratch_dir dir;
        const auto content = pattern(100000, 11);
        write_file(dir / "a.bin", content);
        file_reader r(dir / "a.bin");
        CHECK(r.size() == content.size());
        CHECK(r.path() == dir / "a.bin");
        CHECK(r.fd() >= 0);
        CHECK(r.is_open());
        CHECK_FALSE(r.direct());
        CHECK(r.fallback_note().empty());

        for (const auto& range : std::vector<std::pair<std::size_t, std::size_t>>{
                 {0, 100000}, {0, 1}, {99999, 1}, {12345, 54321}, {100000, 0}, {5, 0}}) {
            const std::size_t off = range.first;
            const std::size_t len = range.second;
            CAPTURE(off);
            CAPTURE(len);
            std::vector<std::byte> buf(len);
            r.read_exact(buf, off);
            CHECK(same(buf, content, off));
        }
    }

    TEST_CASE("file_reader: reading past the end names path, offset and sizes") {
        scratch_dir dir;
        write_file(dir / "a.bin", pattern(100));
        for (bool direct : {false, true}) {
            CAPTURE(direct);
            file_reader r(dir / "a.bin", {.direct = direct});
            std::vector<std::byte> buf(10);
            auto e = expect_error([&] { r.read_exact(buf, 95); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.message() == "expected 10 bytes at offset 95, file has 100");
            CHECK(e.file() == (dir / "a.bin").string());
            CHECK(e.offset() == 95u);
            auto e2 =
                expect_error([&] { r.read_exact(buf, UINT64_MAX - 3); });  // offset + n overflows
            CHECK(e2.code() == errc::io_error);
            auto e3 = expect_error([&] { r.read_exact({}, 101); });
            CHECK(e3.message() == "expected 0 bytes at offset 101, file has 100");
            iovec v[2] = {{buf.data(), 5}, {buf.data(), 5}};
            auto e4 = expect_error([&] { r.read_exact_v(v, 91); });
            CHECK(e4.message() == "expected 10 bytes at offset 91, file has 100");
        }
    }

    TEST_CASE("file_reader open errors") {
        scratch_dir dir;
        SUBCASE("missing file") {
            auto e = expect_error([&] { file_reader r(dir / "missing.bin"); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == ENOENT);
            CHECK(e.file() == (dir / "missing.bin").string());
            CHECK(std::string(e.what()).find("No such file or directory") != std::string::npos);
        }
        SUBCASE("the path names another file than the one expected") {
            write_file(dir / "a.bin", pattern(10));
            const file_version seen = file_reader(dir / "a.bin").opened_version();
            CHECK(file_reader(dir / "a.bin", {.expect = seen}).size() == 10);
            write_file(dir / "b.bin", pattern(10));
            fs::rename(dir / "b.bin", dir / "a.bin");  // a new file under the old name
            for (const bool direct : {false, true}) {
                auto e = expect_error(
                    [&] { file_reader r(dir / "a.bin", {.direct = direct, .expect = seen}); });
                CHECK(e.code() == errc::io_error);
                CHECK(e.message().find("replaced") != std::string::npos);
                CHECK(e.file() == (dir / "a.bin").string());
            }
        }
        SUBCASE("missing folder, direct") {
            auto e = expect_error([&] { file_reader r(dir / "nope" / "a.bin", {.direct = true}); });
            CHECK(e.sys_errno() == ENOENT);
        }
        SUBCASE("a folder") {
            auto e = expect_error([&] { file_reader r(dir.path()); });
            CHECK(e.sys_errno() == EISDIR);
        }
        SUBCASE("not a regular file") {
            auto e = expect_error([&] { file_reader r("/dev/null"); });
            CHECK(e.message().find("not a regular file") != std::string::npos);
        }
        SUBCASE("O_DIRECT open fails for another reason than EINVAL") {
            write_file(dir / "a.bin", pattern(10));
            fault_hooks hooks;
            hooks.open_direct_errno = EACCES;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            auto e = expect_error([&] { file_reader r(dir / "a.bin", {.direct = true}); });
            CHECK(e.sys_errno() == EACCES);
            CHECK(e.message().find("O_DIRECT") != std::string::npos);
        }
        SUBCASE("permission denied (as an unprivileged user, or injected)") {
            write_file(dir / "secret.bin", pattern(100));
            fs::permissions(dir / "secret.bin", fs::perms::none);  // unreadable even to its owner
            const auto path = dir / "secret.bin";
            expect_permission_denied([&] { file_reader r(path); });
        }
    }

    TEST_CASE("file_reader retries EINTR and short reads (pread and preadv)") {
        scratch_dir dir;
        const auto content = pattern(50000, 12);
        write_file(dir / "a.bin", content);
        fault_hooks hooks;
        hooks.read_cap = 777;
        hooks.read_eintr_every = 2;
        safeshard::detail::scoped_syscall_hooks scope(hooks);
        file_reader r(dir / "a.bin");

        std::vector<std::byte> buf(40000);
        r.read_exact(buf, 3);
        CHECK(same(buf, content, 3));
        CHECK(hooks.read_calls > 50);
        CHECK(hooks.eintr_count > 25);

        std::vector<std::byte> a(1000), b(0), c(2500), d(7);
        iovec v[4] = {
            {a.data(), a.size()}, {b.data(), 0}, {c.data(), c.size()}, {d.data(), d.size()}};
        hooks.read_calls = 0;
        r.read_exact_v(v, 100);
        CHECK(hooks.read_calls > 4);
        CHECK(same(a, content, 100));
        CHECK(same(c, content, 1100));
        CHECK(same(d, content, 3600));
    }

    TEST_CASE("file_reader read errors and a file that shrank") {
        scratch_dir dir;
        const auto content = pattern(20000, 13);
        write_file(dir / "a.bin", content);
        std::vector<std::byte> buf(1000);
        SUBCASE("EIO") {
            file_reader r(dir / "a.bin");
            fault_hooks hooks;
            hooks.read_errno = EIO;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            auto e = expect_error([&] { r.read_exact(buf, 4000); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == EIO);
            CHECK(e.offset() == 4000u);
            CHECK(e.message().find("pread") == 0);
            iovec v{buf.data(), buf.size()};
            auto e2 = expect_error([&] { r.read_exact_v({&v, 1}, 10); });
            CHECK(e2.message().find("preadv") == 0);
        }
        SUBCASE("end of file before the size seen at open (injected)") {
            file_reader r(dir / "a.bin");
            fault_hooks hooks;
            hooks.read_eof = true;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            auto e = expect_error([&] { r.read_exact(buf, 0); });
            CHECK(e.message().find("the file ended after 0") != std::string::npos);
            iovec v{buf.data(), buf.size()};
            auto e2 = expect_error([&] { r.read_exact_v({&v, 1}, 0); });
            CHECK(e2.message().find("the file ended after 0") != std::string::npos);
        }
        SUBCASE("truncated for real after open") {
            for (bool direct : {false, true}) {
                CAPTURE(direct);
                write_file(dir / "a.bin", content);
                file_reader r(dir / "a.bin", {.direct = direct});
                fs::resize_file(dir / "a.bin", 10500);
                std::vector<std::byte> big(8192);
                auto e = expect_error([&] { r.read_exact(big, 8192); });
                CHECK(e.code() == errc::io_error);
                CHECK(e.message().find("shorter than when it was opened: 20000") !=
                      std::string::npos);
                CHECK(e.offset() == 8192u);
            }
        }
    }

    TEST_CASE("file_reader: scatter reads over many buffers, and overflowing lengths") {
        scratch_dir dir;
        const auto content = pattern(3000 * 7 + 11, 14);
        write_file(dir / "a.bin", content);
        file_reader r(dir / "a.bin");
        std::vector<std::vector<std::byte>> parts(3000, std::vector<std::byte>(7));  // > IOV_MAX
        std::vector<iovec> v;
        for (auto& p : parts) v.push_back({p.data(), p.size()});
        r.read_exact_v(v, 11);
        for (std::size_t i = 0; i < parts.size(); ++i) {
            CAPTURE(i);
            REQUIRE(same(parts[i], content, 11 + i * 7));
        }
        r.read_exact_v({}, 0);

        iovec huge[2] = {{nullptr, SIZE_MAX}, {nullptr, 2}};
        auto e = expect_error([&] { r.read_exact_v(huge, 0); });
        CHECK(e.code() == errc::validation_overflow);
    }

    TEST_CASE("file_reader direct: unaligned offsets, lengths and buffers read the right bytes") {
        scratch_dir dir;
        // Over the 1 MiB bounce buffer, and not a whole number of blocks.
        const std::size_t size = 3 * 1024 * 1024 + 1234;
        const auto content = pattern(size, 15);
        write_file(dir / "a.bin", content);
        // O_DIRECT emulated (its alignment rules enforced on every read), then the real one
        // where the temp folder takes it (else buffered reads).
        for (const bool emulated : {true, false}) {
            CAPTURE(emulated);
            fault_hooks hooks;
            hooks.emulate_direct = emulated ? file_reader::direct_alignment : 0;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            file_reader r(dir / "a.bin", {.direct = true});
            if (emulated) REQUIRE(r.direct());
            if (!r.direct()) {
                MESSAGE("O_DIRECT not available here (" << r.fallback_note()
                                                        << "): buffered reads checked");
                CHECK_FALSE(r.fallback_note().empty());
            } else {
                CHECK(r.fallback_note().empty());
            }
            const std::vector<std::size_t> offsets = {
                0,           1,           511,      4095, 4096, 4097, 1 << 20, (1 << 20) + 3,
                size - 4096, size - 1234, size - 5, size};
            const std::vector<std::size_t> lengths = {0,
                                                      1,
                                                      5,
                                                      4095,
                                                      4096,
                                                      4097,
                                                      8192,
                                                      3 * 4096 + 17,
                                                      (1 << 20) + 4096,
                                                      2 * (1 << 20) + 99};
            int reads = 0;
            for (std::size_t misalign : {std::size_t{0}, std::size_t{1}, std::size_t{512}}) {
                for (auto off : offsets) {
                    for (auto len : lengths) {
                        if (off + len > size) continue;
                        CAPTURE(misalign);
                        CAPTURE(off);
                        CAPTURE(len);
                        placed_buffer buf(len, misalign);
                        r.read_exact(buf.span, off);
                        REQUIRE(same(buf.span, content, off));
                        ++reads;
                    }
                }
            }
            // To the end of the file, from an aligned offset with an aligned buffer.
            placed_buffer tail(size - 2 * 4096, 0);
            r.read_exact(tail.span, 2 * 4096);
            CHECK(same(tail.span, content, 2 * 4096));
            CHECK(reads > 200);
            CHECK(hooks.misaligned_reads == 0);
            if (emulated) CHECK(hooks.buffered_read_bytes == 0);
        }
    }

    TEST_CASE("file_reader direct scatter reads, aligned and not") {
        scratch_dir dir;
        const std::size_t size = 64 * 4096 + 100;
        const auto content = pattern(size, 16);
        write_file(dir / "a.bin", content);
        // O_DIRECT emulated (its alignment rules enforced), then the real one where taken.
        for (const bool emulated : {true, false}) {
            CAPTURE(emulated);
            fault_hooks hooks;
            hooks.emulate_direct = emulated ? file_reader::direct_alignment : 0;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            file_reader r(dir / "a.bin", {.direct = true});
            if (emulated) REQUIRE(r.direct());
            // All aligned: one preadv.
            aligned_buffer a(4096 * 3), b(4096);
            iovec v[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
            r.read_exact_v(v, 4096 * 5);
            CHECK(same(a.bytes(), content, 4096 * 5));
            CHECK(same(b.bytes(), content, 4096 * 8));
            // Unaligned lengths and offset: piece by piece through the bounce buffer.
            placed_buffer c(1000, 3), d(5000, 0);
            iovec w[2] = {{c.span.data(), c.span.size()}, {d.span.data(), d.span.size()}};
            r.read_exact_v(w, 77);
            CHECK(same(c.span, content, 77));
            CHECK(same(d.span, content, 1077));
            // Up to the unaligned end of the file.
            placed_buffer e(size - 4096 * 60, 0);
            iovec x{e.span.data(), e.span.size()};
            r.read_exact_v({&x, 1}, 4096 * 60);
            CHECK(same(e.span, content, 4096 * 60));
            CHECK(hooks.misaligned_reads == 0);
            if (emulated) CHECK(hooks.buffered_read_bytes == 0);
        }
    }

    TEST_CASE("file_reader direct: short reads and EINTR keep offsets aligned") {
        scratch_dir dir;
        const std::size_t size = 40 * 4096 + 555;
        const auto content = pattern(size, 17);
        write_file(dir / "a.bin", content);
        // The checks, on `r` (opened with O_DIRECT) with `hooks` installed.
        const auto check_reads = [&](fault_hooks& hooks, const file_reader& r) {
            hooks.read_eintr_every = 3;
            SUBCASE("short by a partial block") {
                hooks.read_cap = 5000;  // 1 block + 904 bytes: must re-read from the block boundary
                placed_buffer a(30000, 7);
                r.read_exact(a.span, 4090);
                CHECK(same(a.span, content, 4090));
                placed_buffer b(8 * 4096, 0);
                r.read_exact(b.span, 4096);  // aligned fast path, continued through the bounce
                CHECK(same(b.span, content, 4096));
                aligned_buffer c(4096 * 4), d(4096 * 4);
                iovec v[2] = {{c.data(), c.size()}, {d.data(), d.size()}};
                r.read_exact_v(v, 4096);  // preadv short by a partial block: piece by piece
                CHECK(same(c.bytes(), content, 4096));
                CHECK(same(d.bytes(), content, 4096 * 5));
                CHECK(hooks.eintr_count > 0);
            }
            SUBCASE("less than a block before the end is an error, not a loop") {
                hooks.read_cap = 100;
                placed_buffer a(300, 1);
                auto e = expect_error([&] { r.read_exact(a.span, 10); });
                CHECK(e.code() == errc::io_error);
                CHECK(e.message().find("less than one block") != std::string::npos);
            }
            SUBCASE("EINVAL from a direct read explains the alignment") {
                hooks.read_errno = EINVAL;
                placed_buffer a(300, 1);
                auto e = expect_error([&] { r.read_exact(a.span, 10); });
                CHECK(e.sys_errno() == EINVAL);
                CHECK(e.message().find("O_DIRECT") != std::string::npos);
            }
        };
        SUBCASE("O_DIRECT emulated, its alignment enforced on every read") {
            fault_hooks hooks;
            hooks.emulate_direct = 4096;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            file_reader r(dir / "a.bin", {.direct = true});
            REQUIRE(r.direct());
            CHECK(r.fallback_note().empty());
            CHECK(hooks.direct_opens == 1);
            check_reads(hooks, r);
            CHECK(hooks.misaligned_reads == 0);  // every read kept to O_DIRECT's rules
            CHECK(hooks.buffered_read_bytes == 0);
        }
        SUBCASE("real O_DIRECT, where the file system takes it") {
            file_reader r(dir / "a.bin", {.direct = true});
            if (!r.direct()) {
                MESSAGE("real O_DIRECT variant not run: " << r.fallback_note());
                return;
            }
            fault_hooks hooks;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            check_reads(hooks, r);
        }
    }

    TEST_CASE("file_reader: O_DIRECT refused at open falls back to buffered reads") {
        scratch_dir dir;
        const auto content = pattern(10000, 18);
        write_file(dir / "a.bin", content);
        fault_hooks hooks;
        hooks.open_direct_errno = EINVAL;  // what tmpfs (before Linux 6.6) and some FUSE say
        safeshard::detail::scoped_syscall_hooks scope(hooks);
        file_reader r(dir / "a.bin", {.direct = true});
        CHECK_FALSE(r.direct());
        CHECK(r.fallback_note().find("O_DIRECT refused") != std::string::npos);
        std::vector<std::byte> buf(333);
        r.read_exact(buf, 4097);
        CHECK(same(buf, content, 4097));
        file_reader plain(dir / "a.bin");
        CHECK(plain.fallback_note().empty());
    }

    TEST_CASE("file_reader where O_DIRECT is taken or refused (tmpfs since or before Linux 6.6)") {
        scratch_dir dir;
        const auto content = pattern(20000, 19);
        write_file(dir / "a.bin", content);
        for (const bool taken : {true, false}) {
            CAPTURE(taken);
            fault_hooks hooks;
            if (taken)
                hooks.emulate_direct = 4096;
            else
                hooks.open_direct_errno = EINVAL;  // tmpfs before Linux 6.6, some FUSE
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            file_reader r(dir / "a.bin", {.direct = true});
            CHECK(r.direct() == taken);
            CHECK(r.fallback_note() ==
                  (taken ? ""
                         : "O_DIRECT refused by the file system (open: Invalid argument); using "
                           "buffered reads"));
            placed_buffer buf(9000, 5);
            r.read_exact(buf.span, 1001);
            CHECK(same(buf.span, content, 1001));
            CHECK((taken ? hooks.direct_read_bytes : hooks.buffered_read_bytes) > 0);
            CHECK((taken ? hooks.buffered_read_bytes : hooks.direct_read_bytes) == 0);
            CHECK(hooks.misaligned_reads == 0);
        }
        // Any other refusal of the O_DIRECT open is an error, not a fallback.
        {
            fault_hooks hooks;
            hooks.open_direct_errno = EACCES;
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            auto e = expect_error([&] { file_reader r(dir / "a.bin", {.direct = true}); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.sys_errno() == EACCES);
            CHECK(e.message().find("O_DIRECT") != std::string::npos);
            CHECK(e.file() == (dir / "a.bin").string());
        }
        // A real tmpfs, where this process may mount one: either, and the same bytes.
        const tmpfs_mount mnt(dir / "t", "size=1m");
        if (!mnt.mounted()) return;
        write_file(mnt.path() / "a.bin", content);
        file_reader r(mnt.path() / "a.bin", {.direct = true});
        CHECK(r.direct() == r.fallback_note().empty());
        placed_buffer buf(9000, 5);
        r.read_exact(buf.span, 1001);
        CHECK(same(buf.span, content, 1001));
    }

    TEST_CASE("file_reader moves; an empty reader refuses reads") {
        scratch_dir dir;
        const auto content = pattern(5000, 20);
        write_file(dir / "a.bin", content);
        file_reader a(dir / "a.bin");
        const int fd = a.fd();
        file_reader b(std::move(a));
        CHECK(b.fd() == fd);
        CHECK(b.size() == 5000);
        CHECK(b.path() == dir / "a.bin");
        CHECK(a.fd() == -1);       // NOLINT(bugprone-use-after-move)
        CHECK_FALSE(a.is_open());  // NOLINT(bugprone-use-after-move)
        std::vector<std::byte> buf(10);
        auto e = expect_error([&] { a.read_exact(buf, 0); });  // NOLINT(bugprone-use-after-move)
        CHECK(e.code() == errc::invalid_argument);

        file_reader c;
        CHECK_FALSE(c.is_open());
        CHECK(c.size() == 0);
        CHECK_THROWS_AS(c.read_exact({}, 0), error);
        c = std::move(b);
        c.read_exact(buf, 4990);
        CHECK(same(buf, content, 4990));
        auto& self = c;
        c = std::move(self);
        CHECK(c.fd() == fd);
    }

    TEST_CASE("file_reader: concurrent reads from one reader") {
        scratch_dir dir;
        const auto content = pattern(1 << 20, 21);
        write_file(dir / "a.bin", content);
        for (bool direct : {false, true}) {
            file_reader r(dir / "a.bin", {.direct = direct});
            std::vector<int> ok(4, 0);
            std::vector<std::thread> threads;
            for (int t = 0; t < 4; ++t) {
                threads.emplace_back([&, t] {
                    std::vector<std::byte> buf(10007);
                    bool good = true;
                    for (std::size_t off = static_cast<std::size_t>(t) * 13;
                         off + buf.size() <= content.size(); off += 50021) {
                        r.read_exact(buf, off);
                        good = good && same(buf, content, off);
                    }
                    ok[static_cast<std::size_t>(t)] = good ? 1 : 0;
                });
            }
            for (auto& th : threads) th.join();
            CHECK(std::count(ok.begin(), ok.end(), 1) == 4);
        }
    }

    TEST_CASE("file_reader: check_unchanged says when the file changed while it was read") {
        scratch_dir dir;
        const auto content = pattern(20000, 31);
        const auto f = dir / "a.bin";
        write_file(f, content);
        std::vector<std::byte> buf(1000);
        SUBCASE("nobody writing: it passes, also after the reads") {
            file_reader r(f);
            r.check_unchanged();
            r.read_exact(buf, 500);
            r.check_unchanged();
            CHECK(r.opened_version().size == 20000u);
        }
        SUBCASE("rewritten in place, same size: changed while being read") {
            file_reader r(f);
            safeshard::test::wait_for_later_ctime(f);
            auto other = content;
            other[700] = ~other[700];
            safeshard::test::write_bytes(f, other);  // O_TRUNC then the bytes: one inode
            r.read_exact(buf, 500);
            CHECK(buf[200] == other[700]);  // the new bytes were read...
            const auto e = expect_error([&] { r.check_unchanged(); });  // ...and it says so
            CHECK(e.code() == errc::io_error);
            CHECK(e.file() == f.string());
            CHECK(e.message() == "the file changed while being read: it was modified (same size)");
        }
        SUBCASE("rewritten in place before a reader expecting the version seen opens it") {
            // A checkpoint read the header of one version; the reader opened later finds another.
            const file_version seen = file_reader(f).opened_version();
            safeshard::test::wait_for_later_ctime(f);
            auto other = content;
            other[700] = ~other[700];
            safeshard::test::write_bytes(f, other);
            for (const bool direct : {false, true}) {
                const auto e =
                    expect_error([&] { file_reader r(f, {.direct = direct, .expect = seen}); });
                CHECK(e.code() == errc::io_error);
                CHECK(e.file() == f.string());
                CHECK(e.message().find("changed while being read: it was modified (same size) "
                                       "since the checkpoint was opened") != std::string::npos);
            }
        }
        SUBCASE("written with its modification time set back: the change time tells") {
            file_reader r(f);
            safeshard::test::wait_for_later_ctime(f);
            const int w = ::open(f.c_str(), O_WRONLY);
            REQUIRE(w >= 0);
            REQUIRE(::pwrite(w, "zz", 2, 100) == 2);
            const timespec times[2] = {
                {0, UTIME_OMIT},
                {r.opened_version().mtime_sec, static_cast<long>(r.opened_version().mtime_nsec)}};
            REQUIRE(::futimens(w, times) == 0);
            ::close(w);
            const auto e = expect_error([&] { r.check_unchanged(); });
            CHECK(e.message().find("its status changed") != std::string::npos);
        }
        SUBCASE("cut short: the sizes") {
            file_reader r(f);
            fs::resize_file(f, 100);
            const auto e = expect_error([&] { r.check_unchanged(); });
            CHECK(e.message() ==
                  "the file changed while being read: its size went from 20000 to 100 bytes");
        }
        SUBCASE("statx fails: io_error naming the call; no statx at all: fstat instead") {
            file_reader r(f);
            struct failing_statx : safeshard::detail::syscall_hooks {
                int err = EIO;
                int fstatx(int, unsigned, struct statx*) override {
                    errno = err;
                    return -1;
                }
            } hooks;
            const safeshard::detail::scoped_syscall_hooks scope(hooks);
            const auto e = expect_error([&] { r.check_unchanged(); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.message().find("statx") == 0);
            hooks.err = ENOSYS;  // a kernel before Linux 4.11
            r.check_unchanged();
            fs::resize_file(f, 100);
            CHECK(expect_error([&] { r.check_unchanged(); }).message().find("size went") !=
                  std::string::npos);
        }
        SUBCASE("a reader of nothing has nothing to check") { file_reader().check_unchanged(); }
    }
}  // TEST_SUITE
