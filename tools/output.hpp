// Buffered standard output that notices a closed pipe, and a JSON string escaper.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <string_view>

#include <fmt/core.h>
#include <fmt/format.h>

#include "safeshard/core/error.hpp"

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

// Escapes for JSON: quotes, backslashes and control characters; bytes that are not UTF-8
// (file names can hold anything) become U+FFFD, so the output is always valid JSON.
inline void append_json_string(fmt::memory_buffer& out, std::string_view s) {
    auto put = [&](std::string_view t) { out.append(t.data(), t.data() + t.size()); };
    put("\"");
    const auto* u = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    for (std::size_t i = 0; i < n;) {
        const unsigned char c = u[i];
        if (c < 0x80) {
            switch (c) {
                case '"': put("\\\""); break;
                case '\\': put("\\\\"); break;
                case '\n': put("\\n"); break;
                case '\r': put("\\r"); break;
                case '\t': put("\\t"); break;
                case '\b': put("\\b"); break;
                case '\f': put("\\f"); break;
                default:
                    if (c < 0x20) {
                        fmt::format_to(std::back_inserter(out), "\\u{:04x}", c);
                    } else {
                        out.push_back(static_cast<char>(c));
                    }
            }
            ++i;
            continue;
        }
        // Length and minimum code point of a well-formed sequence starting with c.
        std::size_t len = 0;
        std::uint32_t cp = 0;
        std::uint32_t min = 0;
        if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1fu, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0fu, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07u, min = 0x10000;
        }
        bool ok = len != 0 && i + len <= n;
        for (std::size_t k = 1; ok && k < len; ++k) {
            if ((u[i + k] & 0xc0) != 0x80) {
                ok = false;
            } else {
                cp = (cp << 6) | (u[i + k] & 0x3fu);
            }
        }
        ok = ok && cp >= min && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff);
        if (ok) {
            out.append(s.data() + i, s.data() + i + len);
            i += len;
        } else {
            put("\\ufffd");
            ++i;
        }
    }
    put("\"");
}

inline void output::json_string(std::string_view s) {
    append_json_string(buf_, s);
    if (buf_.size() >= 1 << 16) flush();
}

}  // namespace safeshard::cli
