// Permission-denied checks: the real thing as an unprivileged user where this process may
// drop root, and EACCES injected through the syscall seam where it may not, so they run
// everywhere.
#pragma once

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <functional>
#include <optional>
#include <system_error>
#include <utility>

#include <doctest/doctest.h>

#include "expect_error.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/io/syscalls.hpp"

namespace safeshard::test {

// Makes a folder r-x for everyone for a scope (so no one but root may add entries).
class read_only_folder {
public:
    explicit read_only_folder(std::filesystem::path dir) : dir_(std::move(dir)) {
        namespace fs = std::filesystem;
        fs::permissions(dir_, fs::perms::owner_read | fs::perms::owner_exec |
                                  fs::perms::group_read | fs::perms::group_exec |
                                  fs::perms::others_read | fs::perms::others_exec);
    }
    read_only_folder(const read_only_folder&) = delete;
    read_only_folder& operator=(const read_only_folder&) = delete;
    ~read_only_folder() {
        std::error_code ec;
        std::filesystem::permissions(dir_, std::filesystem::perms::owner_all,
                                     std::filesystem::perm_options::add, ec);
    }

private:
    std::filesystem::path dir_;
};

// Runs `f` in a child process that has dropped root (uid/gid 65534, so permission bits
// apply); returns the child's exit status, or nullopt when it cannot drop privileges.
[[nodiscard]] inline std::optional<int> run_as_nobody(const std::function<int()>& f) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(100);
        int code = 99;
        try {
            code = f();
        } catch (...) {
            code = 98;
        }
        ::_exit(code);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) == 100) return std::nullopt;
    return WEXITSTATUS(status);
}

// open(2) and mkdir(2) refused with EACCES, as for a user the permission bits keep out.
struct permission_denied_hooks : safeshard::detail::syscall_hooks {
    int open(const char*, int, mode_t) override { return deny(); }
    int mkdir(const char*, mode_t) override { return deny(); }

private:
    static int deny() {
        errno = EACCES;
        return -1;
    }
};

// `f` (which opens or creates something the permission bits forbid: the caller has set them)
// fails with io_error and EACCES: run as an unprivileged user where this process may drop
// root, else with EACCES injected through the syscall seam.
template <class F>
void expect_permission_denied(F&& f) {
    const auto code = run_as_nobody([&] {
        try {
            f();
            return 1;
        } catch (const safeshard::error& e) {
            return e.code() == errc::io_error && e.sys_errno() == EACCES ? 0 : 2;
        }
    });
    if (code) {
        CHECK_MESSAGE(*code == 0, (*code == 1 ? "nothing thrown" : "not io_error with EACCES"));
        return;
    }
    permission_denied_hooks hooks;
    const safeshard::detail::scoped_syscall_hooks scope(hooks);
    const auto e = expect_error(errc::io_error, f);
    CHECK(e.sys_errno() == EACCES);
}

}  // namespace safeshard::test
