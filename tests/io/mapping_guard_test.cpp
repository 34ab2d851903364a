// The SIGBUS guard of io/mapping_guard.hpp on real mappings of files really cut short: before
// and while a guarded read runs, on several threads, and its chaining to the handler that was
// there before (a program's own, the default action, ASan's) in fresh processes.
#include "safeshard/io/mapping_guard.hpp"

#include "io_test_support.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MAPPING_GUARD_CHILD
#error "MAPPING_GUARD_CHILD (the helper's path) must be defined"
#endif

using namespace safeshard;
using namespace io_test;

namespace {

constexpr std::size_t page = 4096;

// A file of `n` pattern bytes, open read-write, and a read-only shared mapping of it.
class mapped_scratch {
public:
    mapped_scratch(const fs::path& p, std::size_t n, std::uint32_t seed = 1)
        : path_(p), bytes_(pattern(n, seed)) {
        write_file(p, bytes_);
        fd_ = ::open(p.c_str(), O_RDWR | O_CLOEXEC);
        REQUIRE(fd_ >= 0);
        void* m = ::mmap(nullptr, n, PROT_READ, MAP_SHARED, fd_, 0);
        REQUIRE(m != MAP_FAILED);
        map_ = static_cast<const std::byte*>(m);
    }
    mapped_scratch(const mapped_scratch&) = delete;
    mapped_scratch& operator=(const mapped_scratch&) = delete;
    ~mapped_scratch() {
        ::munmap(const_cast<std::byte*>(map_), bytes_.size());
        ::close(fd_);
    }
    [[nodiscard]] std::span<const std::byte> mapped() const { return {map_, bytes_.size()}; }
    [[nodiscard]] const std::vector<std::byte>& bytes() const { return bytes_; }
    [[nodiscard]] std::string name() const { return path_.string(); }
    [[nodiscard]] int fd() const { return fd_; }
    void cut(std::size_t to) const { REQUIRE(::ftruncate(fd_, static_cast<off_t>(to)) == 0); }

private:
    fs::path path_;
    std::vector<std::byte> bytes_;
    int fd_ = -1;
    const std::byte* map_ = nullptr;
};

// The helper in `mode` on a fresh file; its wait status and what it wrote to stderr.
std::pair<int, std::string> run_child(const scratch_dir& dir, const char* mode) {
    write_file(dir / "child.bin", pattern(4 * page, 9));
    const auto err = dir / "child.err";
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(e, 2);
        ::execl(MAPPING_GUARD_CHILD, MAPPING_GUARD_CHILD, mode, (dir / "child.bin").c_str(),
                static_cast<char*>(nullptr));
        ::_exit(127);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    const auto text = read_file(err);
    return {status, std::string(reinterpret_cast<const char*>(text.data()), text.size())};
}

}  // namespace

TEST_SUITE("io") {
    TEST_CASE("mapping guard: guarded reads of a whole file read it all") {
        scratch_dir dir;
        const mapped_scratch f(dir / "a.bin", 5 * page + 123);
        std::vector<std::byte> out(f.bytes().size());
        copy_from_mapping(out.data(), f.mapped(), f.name(), 0);
        CHECK(out == f.bytes());
        touch_mapping(f.mapped(), f.name(), 0);
        touch_mapping(f.mapped().subspan(page - 1, 2), f.name(), page - 1);
        touch_mapping({}, f.name(), 0);
        int calls = 0;
        guard_mapped_read(f.mapped(), f.name(), 0, [&]() noexcept { ++calls; });
        CHECK(calls == 1);
    }

    TEST_CASE("mapping guard: a file cut short before the read is io_error naming file and byte") {
        scratch_dir dir;
        const mapped_scratch f(dir / "cut.bin", 8 * page);
        f.cut(3 * page + 10);  // pages 0-3 stay (the last one in part), 4-7 are gone
        std::vector<std::byte> out(f.bytes().size());
        for (int round = 0; round < 3; ++round) {  // SIGBUS is not left blocked: again and again
            CAPTURE(round);
            const auto e =
                expect_error([&] { copy_from_mapping(out.data(), f.mapped(), f.name(), 0); });
            CHECK(e.code() == errc::io_error);
            CHECK(e.file() == f.name());
            // memcpy may read the end first: the fault is on some page that is gone
            CHECK(e.offset() >= 4 * page);
            CHECK(e.offset() < 8 * page);
            CHECK(e.message().find("cut short while it was being read") != std::string::npos);
        }
        // Offsets are the file's; touch_mapping reads in order: the first page gone.
        auto e = expect_error([&] { touch_mapping(f.mapped(), f.name(), 0); });
        CHECK(e.offset() == 4 * page);
        e = expect_error([&] { touch_mapping(f.mapped().subspan(2 * page), f.name(), 2 * page); });
        CHECK(e.offset() == 4 * page);
        // The part still in the file reads as before.
        copy_from_mapping(out.data(), f.mapped().first(3 * page), f.name(), 0);
        // A thread of its own has a guard of its own.
        std::string from_thread;
        std::thread([&] {
            try {
                touch_mapping(f.mapped(), f.name(), 0);
            } catch (const error& x) {
                from_thread = x.what();
            }
        }).join();
        CHECK(from_thread.find("cut short") != std::string::npos);
    }

    TEST_CASE("mapping guard: a file cut short while the read runs stops it at the fault") {
        scratch_dir dir;
        const mapped_scratch f(dir / "during.bin", 16 * page);
        std::vector<std::byte> out(f.bytes().size(), std::byte{0});
        const std::byte* src = f.mapped().data();
        const int fd = f.fd();
        const auto e = expect_error([&] {
            guard_mapped_read(f.mapped(), f.name(), 0, [&]() noexcept {
                std::memcpy(out.data(), src, 8 * page);
                (void)::ftruncate(fd, 6 * page);  // another writer, between two copies
                std::memcpy(out.data() + 8 * page, src + 8 * page, 8 * page);
            });
        });
        CHECK(e.code() == errc::io_error);
        CHECK(e.offset() >= 8 * page);
        CHECK(e.offset() < 16 * page);
        CHECK(std::memcmp(out.data(), f.bytes().data(), 8 * page) == 0);  // copied before the cut
    }

    TEST_CASE("mapping guard: threads reading at once fail or succeed each on their own") {
        scratch_dir dir;
        const mapped_scratch kept(dir / "kept.bin", 64 * page, 2);
        const mapped_scratch cut(dir / "cut.bin", 64 * page, 3);
        cut.cut(0);
        std::vector<std::vector<std::byte>> outs(4, std::vector<std::byte>(64 * page));
        std::vector<int> failed(4, 0);
        std::vector<std::thread> threads;
        for (int t = 0; t < 4; ++t)
            threads.emplace_back([&, t] {
                const mapped_scratch& f = t % 2 ? cut : kept;
                for (int i = 0; i < 50; ++i) try {
                        copy_from_mapping(outs[t].data(), f.mapped(), f.name(), 0);
                    } catch (const error&) {
                        ++failed[t];
                    }
            });
        for (auto& th : threads) th.join();
        CHECK(failed == std::vector<int>{0, 50, 0, 50});
        CHECK(outs[0] == kept.bytes());
        CHECK(outs[2] == kept.bytes());
    }

    TEST_CASE("mapping guard: any other SIGBUS goes where it went before") {
        scratch_dir dir;
        SUBCASE("the program's own handler: faults outside a guard, outside its range, sent") {
            for (const char* mode : {"own-then-unguarded", "own-then-elsewhere", "own-then-sent"}) {
                CAPTURE(mode);
                const auto [status, err] = run_child(dir, mode);
                CAPTURE(err);
                REQUIRE(WIFEXITED(status));
                CHECK(WEXITSTATUS(status) == 42);
            }
        }
        SUBCASE("no handler: the process dies of it (under ASan: ASan's report)") {
            const auto [status, err] = run_child(dir, "default-unguarded");
            CAPTURE(err);
#if defined(__SANITIZE_ADDRESS__)
            REQUIRE(WIFEXITED(status));
            CHECK(WEXITSTATUS(status) != 0);
            CHECK(WEXITSTATUS(status) != 10);
            CHECK(err.find("AddressSanitizer: BUS") != std::string::npos);
#else
            REQUIRE(WIFSIGNALED(status));
            CHECK(WTERMSIG(status) == SIGBUS);
#endif
        }
    }
}
