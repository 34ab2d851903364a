// Reads of a file's mapping that survive the file being cut short meanwhile: a page past the
// file's new end raises SIGBUS, which a guarded read turns into io_error naming the file.
//
// The SIGBUS handler is installed once per process, the first time a guarded read runs, and
// remembers the handler it replaced (the program's own, or a sanitizer's). It acts only on a
// fault of the calling thread inside the range that thread is reading under a guard (a
// thread_local record, set only while the read runs); every other SIGBUS goes to the previous
// handler, or gets the default action (the process dies of it) as if safeshard were not there.
// A handler installed after the first guarded read replaces this one: guarded reads then fault
// as unguarded ones do.
#pragma once

#include "safeshard/core/error.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include <setjmp.h>
#include <signal.h>
#include <unistd.h>

namespace safeshard {

namespace detail {

// The guarded read a thread is running: its pages, and where a fault jumps back to.
struct sigbus_frame {
    sigjmp_buf jump;
    std::uintptr_t begin = 0;  // page-aligned
    std::uintptr_t end = 0;
    std::uintptr_t fault = 0;  // the faulting address, once jumped back
    sigbus_frame* outer = nullptr;
};

inline thread_local sigbus_frame* sigbus_frame_now = nullptr;
// The disposition of SIGBUS before ours (written once, before ours is installed).
inline struct sigaction sigbus_previous {};

// Gives a SIGBUS that is not ours to whoever had it before, as they asked for it.
inline void chain_sigbus(int sig, siginfo_t* info, void* context) noexcept {
    const struct sigaction& p = sigbus_previous;
    const bool sent = info == nullptr || info->si_code <= 0;  // kill(2), raise(3): not a fault
    const bool own = (p.sa_flags & SA_SIGINFO) ? p.sa_sigaction != nullptr
                                               : p.sa_handler != SIG_DFL && p.sa_handler != SIG_IGN;
    if (own) {
        // Their mask while their handler runs (ours may differ: SA_NODEFER).
        sigset_t mask = p.sa_mask;
        if (!(p.sa_flags & SA_NODEFER)) ::sigaddset(&mask, sig);
        ::pthread_sigmask(SIG_BLOCK, &mask, nullptr);  // undone when this handler returns
        if (p.sa_flags & SA_SIGINFO)
            p.sa_sigaction(sig, info, context);
        else
            p.sa_handler(sig);
        return;
    }
    if (p.sa_handler == SIG_IGN && sent) return;  // ignored, as before (a fault cannot be)
    // The default action: the process dies of SIGBUS. A fault does again when the access is
    // retried on return; a sent signal is raised again.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigemptyset(&dfl.sa_mask);
    ::sigaction(sig, &dfl, nullptr);
    if (sent) ::raise(sig);
}

inline void on_sigbus(int sig, siginfo_t* info, void* context) noexcept {
    sigbus_frame* f = sigbus_frame_now;
    if (f != nullptr && info != nullptr && info->si_code > 0) {
        const auto a = reinterpret_cast<std::uintptr_t>(info->si_addr);
        if (a >= f->begin && a < f->end) {
            f->fault = a;
            sigbus_frame_now = f->outer;
            ::siglongjmp(f->jump, 1);
        }
    }
    chain_sigbus(sig, info, context);
}

// Installs on_sigbus once; false where sigaction(2) refused it (reads then go unguarded).
// SA_NODEFER: the jump back leaves the handler without restoring the signal mask (a
// mask-saving sigsetjmp would cost a system call per read), so SIGBUS must not be blocked in it.
[[nodiscard]] inline bool install_sigbus_handler() noexcept {
    static const bool installed = [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
        ::sigemptyset(&sa.sa_mask);
        return ::sigaction(SIGBUS, &sa, &sigbus_previous) == 0;
    }();
    return installed;
}

// Runs fn(arg), which reads [begin, begin + n); returns the faulting address where a page of
// that range vanished before fn finished (fn is abandoned there), 0 otherwise. Nothing that fn
// or what it calls holds may need a destructor, a lock or an allocation released: the jump
// back skips them all (keep fn a loop over raw pointers).
[[nodiscard]] inline std::uintptr_t run_sigbus_guarded(const void* begin, std::size_t n,
                                                       void (*fn)(void*) noexcept,
                                                       void* arg) noexcept {
    static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    if (n == 0 || !install_sigbus_handler()) {
        fn(arg);
        return 0;
    }
    const auto a = reinterpret_cast<std::uintptr_t>(begin);
    sigbus_frame frame;
    frame.begin = a / page * page;
    frame.end = (a + n + page - 1) / page * page;
    frame.outer = sigbus_frame_now;
    if (sigsetjmp(frame.jump, 0) != 0) return frame.fault;  // the handler restored `outer`
    sigbus_frame_now = &frame;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    fn(arg);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    sigbus_frame_now = frame.outer;
    return 0;
}

}  // namespace detail

// Runs `read()`, which reads `mapped` (bytes of `file`'s mapping starting at `file_offset`):
// where the file is cut short under it and a page of that range vanishes, `read` is abandoned
// at the fault and io_error naming the file and the offset is thrown instead of the process
// dying of SIGBUS. What `read` wrote before the fault stays written.
// `read` must be noexcept and hold nothing with a destructor, no lock and no allocation (it is
// left by a jump): a loop or a kernel over raw pointers, such as a converter call.
template <class Read>
void guard_mapped_read(std::span<const std::byte> mapped, std::string_view file,
                       std::uint64_t file_offset, Read&& read) {
    static_assert(std::is_nothrow_invocable_v<Read&>, "a guarded read must be noexcept");
    using R = std::remove_reference_t<Read>;
    const std::uintptr_t fault = detail::run_sigbus_guarded(
        mapped.data(), mapped.size(), [](void* r) noexcept { (*static_cast<R*>(r))(); },
        const_cast<void*>(static_cast<const void*>(std::addressof(read))));
    if (fault == 0) return;
    const auto base = reinterpret_cast<std::uintptr_t>(mapped.data());
    const std::uint64_t at = file_offset + (fault > base ? fault - base : 0);
    throw error(errc::io_error,
                "the file was cut short while it was being read: byte " + std::to_string(at) +
                    " is past its end now (its mapping lost that page)",
                error_context{.file = std::string(file), .offset = at});
}

// memcpy out of a mapping under guard_mapped_read.
inline void copy_from_mapping(std::byte* dst, std::span<const std::byte> mapped,
                              std::string_view file, std::uint64_t file_offset) {
    guard_mapped_read(mapped, file, file_offset,
                      [&]() noexcept { std::memcpy(dst, mapped.data(), mapped.size()); });
}

// Reads one byte of every page of `mapped` under guard_mapped_read, so that the pages are
// there (mapped, read from disk) when something that cannot be guarded reads them next (the
// CUDA driver). They can still vanish after this returns: it narrows the window, nothing more.
inline void touch_mapping(std::span<const std::byte> mapped, std::string_view file,
                          std::uint64_t file_offset) {
    if (mapped.empty()) return;
    static const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    guard_mapped_read(mapped, file, file_offset, [&]() noexcept {
        const volatile std::byte* p = mapped.data();
        const auto a = reinterpret_cast<std::uintptr_t>(mapped.data());
        std::size_t i = 0;
        for (; i < mapped.size(); i = (a + i) / page * page + page - a) (void)p[i];
        (void)p[mapped.size() - 1];
    });
}

}  // namespace safeshard
