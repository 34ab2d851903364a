// Every reader opens through open_regular_file: never blocking on a FIFO or a device, and
// refusing anything but a regular file with a message that names it and says what it is.
// Cases that would hang run in a child process with a deadline.
#include "safeshard/io/syscalls.hpp"

#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/mapped_file.hpp"

#include "../child_outcome.hpp"
#include "io_test_support.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>

#include <string>

using namespace safeshard;
using namespace io_test;
using safeshard::test::outcome_within;

namespace {

bool has(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
}

// Records the flags of every open(2).
struct open_flags_hooks : safeshard::detail::syscall_hooks {
    std::vector<int> flags;
    int open(const char* path, int f, mode_t mode) override {
        flags.push_back(f);
        return syscall_hooks::open(path, f, mode);
    }
};

}  // namespace

TEST_SUITE("io") {
    TEST_CASE("readers refuse a FIFO at once, naming it") {
        scratch_dir dir;
        const auto fifo = dir / "pipe.bin";
        REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
        const auto mapped = outcome_within(10, [&] {
            const mapped_file m(fifo);
            return std::string("mapped");
        });
        REQUIRE_MESSAGE(mapped, "mapped_file waited on a FIFO");
        CHECK(has(*mapped, "io_error: not a regular file: a FIFO (file '" + fifo.string() + "')"));
        for (const bool direct : {false, true}) {
            CAPTURE(direct);
            const auto read = outcome_within(10, [&] {
                const file_reader r(fifo, {.direct = direct});
                return std::string("opened");
            });
            REQUIRE_MESSAGE(read, "file_reader waited on a FIFO");
            CHECK(has(*read, "io_error: not a regular file: a FIFO"));
        }
    }

    TEST_CASE("readers say what a non-regular file is") {
        scratch_dir dir;
        auto e = expect_error([&] { mapped_file m("/dev/null"); });
        CHECK(e.message() == "not a regular file: a character device");
        e = expect_error([&] { file_reader r(dir.path()); });
        CHECK(e.message() == "not a regular file: a directory");
        CHECK(e.sys_errno() == EISDIR);
        CHECK(e.file() == dir.path().string());
        e = expect_error(
            [&] { (void)safeshard::detail::open_regular_file("/dev/null", errc::invalid_config); });
        CHECK(e.code() == errc::invalid_config);
    }

    TEST_CASE("readers open without blocking, then read a regular file blocking again") {
        scratch_dir dir;
        write_file(dir / "a.bin", pattern(64));
        fs::create_symlink("a.bin", dir / "link.bin");  // links are followed
        open_flags_hooks hooks;
        {
            safeshard::detail::scoped_syscall_hooks scope(hooks);
            const file_reader r(dir / "link.bin");
            CHECK((::fcntl(r.fd(), F_GETFL) & O_NONBLOCK) == 0);
            const mapped_file m(dir / "link.bin");
            CHECK(m.size() == 64);
        }
        REQUIRE(hooks.flags.size() == 2);
        for (const int f : hooks.flags) CHECK((f & O_NONBLOCK) != 0);
    }

    TEST_CASE("describe_path: what is at a path, for messages") {
        scratch_dir dir;
        namespace d = safeshard::detail;
        write_file(dir / "f", pattern(1));
        REQUIRE(::mkfifo((dir / "p").c_str(), 0644) == 0);
        fs::create_symlink("nowhere", dir / "dangling");
        fs::create_symlink("p", dir / "to-fifo");
        CHECK(d::describe_path(dir / "f") == "a regular file");
        CHECK(d::describe_path(dir.path()) == "a directory");
        CHECK(d::describe_path(dir / "p") == "a FIFO");
        CHECK(d::describe_path(dir / "to-fifo") == "a FIFO");
        CHECK(d::describe_path(dir / "dangling") == "a dangling link to 'nowhere'");
        CHECK(d::describe_path(dir / "missing") == "nothing");
        CHECK(d::describe_path("/dev/null") == "a character device");
    }
}
