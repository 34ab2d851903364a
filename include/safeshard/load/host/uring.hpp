// A worker's io_uring, created on first use: batches of reads submitted with one system call
// (strided_read::batched rows, read_mode::direct spans), and the ring itself for the direct
// pipeline. Compiled in where SAFESHARD_HAVE_LIBURING is defined and liburing linked (Debian:
// liburing-dev; meson: dependency('liburing')); without it, where the kernel refuses a ring, or
// where the system-call seam's hooks refuse it (they must see every read), ready() is false and
// the strategies read with pread.
#pragma once

#if defined(SAFESHARD_HAVE_LIBURING)
#include <liburing.h>
#endif

#include <algorithm>
#include <cerrno>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "safeshard/core/error.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/syscalls.hpp"

namespace safeshard::host {

// One read of a batch: `len` bytes at file offset `off` into `into`.
struct ring_read {
    std::uint64_t off;
    std::uint64_t len;
    std::byte* into;
};

// What a caller does with a read that came back short (the end of the file, a signal): the
// rest of `r` from `got` on, its own way.
template <class F>
concept short_read_handler = std::invocable<F&, const ring_read&, std::uint64_t>;

class uring {
public:
    // Reads in flight at most.
    static constexpr unsigned depth = 64;

    uring() = default;
    uring(const uring&) = delete;
    uring& operator=(const uring&) = delete;

#if defined(SAFESHARD_HAVE_LIBURING)
    ~uring() {
        if (state_ == 1) io_uring_queue_exit(&ring_);
    }

    // Whether the ring is there (created on the first call; false where the kernel refuses).
    [[nodiscard]] bool ready() {
        if (state_ == 0)
            state_ = detail::sys::io_uring_allowed() && io_uring_queue_init(depth, &ring_, 0) == 0
                         ? 1
                         : -1;
        return state_ == 1;
    }
    [[nodiscard]] io_uring& ring() noexcept { return ring_; }

    // Reads every request of `reads` from `f`, `depth` at a time. Every completion of a batch
    // is reaped before anything throws (the kernel must not write into memory after it is
    // gone); then the first failure is thrown as system_error(what, errno, file, offset) and
    // each short read is handed to `rest`.
    void read_all(const file_reader& f, std::span<const ring_read> reads, const char* what,
                  short_read_handler auto&& rest) {
        for (std::size_t i0 = 0; i0 < reads.size(); i0 += depth) {
            const auto batch = reads.subspan(i0, std::min<std::size_t>(depth, reads.size() - i0));
            submit_batch(f, batch);
            reap_batch(f, batch, what);
            for (const auto& [i, got] : shorts_) rest(batch[i], got);
        }
    }

private:
    void submit_batch(const file_reader& f, std::span<const ring_read> batch) {
        for (std::size_t i = 0; i < batch.size(); ++i) {
            io_uring_sqe* sqe = io_uring_get_sqe(&ring_);  // free: at most depth out
            io_uring_prep_read(sqe, f.fd(), batch[i].into, static_cast<unsigned>(batch[i].len),
                               batch[i].off);
            io_uring_sqe_set_data64(sqe, i);
        }
        int rc = io_uring_submit_and_wait(&ring_, static_cast<unsigned>(batch.size()));
        while (rc == -EINTR) rc = io_uring_submit_and_wait(&ring_, 0);
        if (rc < 0) throw system_error("io_uring_submit", -rc, f.path().string());
    }

    // Reaps the batch's completions; throws the first failure after all are in, and leaves the
    // short reads in shorts_.
    void reap_batch(const file_reader& f, std::span<const ring_read> batch, const char* what) {
        std::size_t done = 0;
        int first_errno = 0;
        std::uint64_t errno_at = 0;
        shorts_.clear();
        while (done < batch.size()) {
            io_uring_cqe* cqe = nullptr;
            const int w = io_uring_wait_cqe(&ring_, &cqe);
            if (w == -EINTR) continue;
            if (w < 0) throw system_error("io_uring_wait_cqe", -w, f.path().string());
            const std::uint64_t i = io_uring_cqe_get_data64(cqe);
            const int res = cqe->res;
            io_uring_cqe_seen(&ring_, cqe);
            ++done;
            if (res < 0) {
                if (first_errno == 0) {
                    first_errno = -res;
                    errno_at = batch[i].off;
                }
            } else if (static_cast<std::uint64_t>(res) < batch[i].len) {
                shorts_.emplace_back(i, static_cast<std::uint64_t>(res));
            }
        }
        if (first_errno != 0) throw system_error(what, first_errno, f.path().string(), errno_at);
    }

    io_uring ring_{};
    int state_ = 0;                                                // 0 untried, 1 ready, -1 refused
    std::vector<std::pair<std::size_t, std::uint64_t>> shorts_{};  // batch index, bytes got
#else
    [[nodiscard]] static constexpr bool ready() noexcept { return false; }
    // Never called: ready() is false.
    void read_all(const file_reader& f, std::span<const ring_read>, const char* what,
                  short_read_handler auto&&) {
        throw error(errc::io_error, std::string(what) + ": io_uring is not compiled in",
                    error_context{.file = f.path().string()});
    }
#endif
};

}  // namespace safeshard::host
