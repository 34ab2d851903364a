// Buffered standard output that notices a closed pipe.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <string_view>

#include <fmt/core.h>
#include <fmt/format.h>

#include "safeshard/core/error.hpp"
#include "safeshard/format/json_string.hpp"

namespace safeshard::cli {

// Thrown when the reader of our standard output has gone away (EPIPE): the command stops
// quietly, like `head` expects.
struct broken_pipe {};

// SIGINT (see on_sigint in safeshard.cpp): while no output folder has been begun, the handler
// ends the process at once with 130. While one is being written it only sets
// interrupted_flag, and the writer stops at its next cancel point (check_interrupted()),
// which removes the temporary folder on the way out. Once the output is complete
// (mark_output_complete()), a SIGINT ends the process at once with 0: it changes nothing.
inline volatile std::sig_atomic_t interrupted_flag = 0;
inline volatile std::sig_atomic_t output_complete = 0;

inline void check_interrupted() {
    if (interrupted_flag != 0) throw error(errc::interrupted, "interrupted by SIGINT");
}

inline void mark_output_complete() noexcept {
    output_complete = 1;
    interrupted_flag = 0;
}

class output {
public:
    explicit output(int fd = STDOUT_FILENO) : fd_(fd) {}
    output(const output&) = delete;
    output& operator=(const output&) = delete;
    ~output() = default;  // flush() explicitly: a destructor must not throw

    template <class... Args>
    void print(fmt::format_string<Args...> f, Args&&... args) {
        fmt::format_to(std::back_inserter(buf_), f, std::forward<Args>(args)...);
        if (buf_.size() >= 1 << 16) flush();
    }
    void write(std::string_view s) {
        buf_.append(s.data(), s.data() + s.size());
        if (buf_.size() >= 1 << 16) flush();
    }
    // A JSON string literal, quotes included.
    void json_string(std::string_view s);

    void flush() {
        check_interrupted();
        const char* p = buf_.data();
        std::size_t left = buf_.size();
        while (left > 0) {
            const ssize_t n = ::write(fd_, p, left);
            if (n < 0) {
                if (errno == EINTR) {
                    check_interrupted();
                    continue;
                }
                if (errno == EPIPE) throw broken_pipe{};
                throw system_error("write", errno, fd_ == STDOUT_FILENO ? "<stdout>" : "<output>");
            }
            p += n;
            left -= static_cast<std::size_t>(n);
        }
        buf_.clear();
    }

private:
    int fd_;
    fmt::memory_buffer buf_;
};

inline void output::json_string(std::string_view s) {
    // Quotes, backslashes and control characters escaped; bytes that are not UTF-8 (file names
    // can hold anything) become U+FFFD, so the output is always valid JSON.
    append_json_string(buf_, s, json_string_style::lossy());
    if (buf_.size() >= 1 << 16) flush();
}

}  // namespace safeshard::cli
