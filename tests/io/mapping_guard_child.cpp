// A fresh process for the SIGBUS guard's chaining tests (the guard installs its handler once
// per process, so each case needs one of its own): maps FILE, cuts it to nothing, and reads it
// the way MODE says. Exit codes: 42 the program's own handler got the SIGBUS, 0 the guard
// turned it into io_error, 10 the read went through (no signal at all), 11 io_error where a
// signal was due; the default action kills it with SIGBUS (under ASan: ASan's report, exit 1).
//   own-then-unguarded  the program's handler first, then a guarded read, then an unguarded one
//   own-then-elsewhere  the program's handler first, then a fault outside the guarded range
//   own-then-sent       the program's handler first, then raise(SIGBUS) inside a guarded read
//   default-unguarded   no handler of the program's: a guarded read, then an unguarded one
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string_view>

#include "safeshard/io/mapping_guard.hpp"

namespace {

extern "C" void own_handler(int) { ::_exit(42); }

void install_own() {
    struct sigaction sa {};
    sa.sa_handler = own_handler;
    ::sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, nullptr);
}

// One guarded read that must fail with io_error (the guard installed by now).
bool guarded_read_fails(const std::byte* m, std::size_t n) {
    std::byte out[64];
    try {
        safeshard::copy_from_mapping(out, {m, std::min<std::size_t>(n, sizeof out)}, "f", 0);
    } catch (const safeshard::error&) {
        return true;
    }
    return false;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) return 2;
    const std::string_view mode = argv[1];
    const int fd = ::open(argv[2], O_RDWR);
    if (fd < 0) return 3;
    const std::size_t n = 4 * 4096;
    auto* m = static_cast<const std::byte*>(::mmap(nullptr, n, PROT_READ, MAP_SHARED, fd, 0));
    if (m == MAP_FAILED || ::ftruncate(fd, 0) != 0) return 4;
    const volatile std::byte* v = m;

    if (mode.starts_with("own-")) install_own();
    if (mode == "own-then-unguarded" || mode == "default-unguarded") {
        if (!guarded_read_fails(m, n)) return 10;
        (void)v[2 * 4096];  // no guard: the previous disposition decides
        return 10;
    }
    if (mode == "own-then-elsewhere") {
        try {  // a guard over the first page; the fault is on the third
            safeshard::guard_mapped_read({m, 16}, "f", 0, [&]() noexcept { (void)v[2 * 4096]; });
        } catch (const safeshard::error&) {
            return 11;
        }
        return 10;
    }
    if (mode == "own-then-sent") {
        try {
            safeshard::guard_mapped_read({m, n}, "f", 0, []() noexcept { ::raise(SIGBUS); });
        } catch (const safeshard::error&) {
            return 11;
        }
        return 10;
    }
    return 2;
}
