// A progress bar on standard output when it is a terminal (nothing otherwise).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>

#include <fmt/core.h>

#include "commands.hpp"

namespace safeshard::cli {

// A progress bar on a terminal, redrawn at most ten times a second.
class progress_bar {
public:
    progress_bar() : on_(::isatty(STDOUT_FILENO) == 1) {}
    progress_bar(const progress_bar&) = delete;
    progress_bar& operator=(const progress_bar&) = delete;
    // Stopped by an error: end the bar's line so the message starts on its own.
    ~progress_bar() {
        if (drawn_) std::fputc('\n', stdout);
    }
    // The library's progress callback (done and total bytes) drawing this bar.
    [[nodiscard]] auto callback() {
        return [this](std::uint64_t done, std::uint64_t total) { update(done, total); };
    }
    void update(std::uint64_t done, std::uint64_t total) {
        if (!on_) return;
        total_ = total;
        const auto now = std::chrono::steady_clock::now();
        if (done < total_ && now - last_ < std::chrono::milliseconds(100)) return;
        last_ = now;
        constexpr int width = 30;
        const double f =
            total_ == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total_);
        const int fill = static_cast<int>(f * width);
        fmt::print(stdout, "\r[{:=<{}}{:<{}}] {:3.0f}% {} / {}", "", fill, "", width - fill,
                   f * 100, human_bytes(done), human_bytes(total_));
        std::fflush(stdout);
        drawn_ = true;
    }
    void finish() {
        if (drawn_) {
            fmt::print(stdout, "\r\033[K");
            std::fflush(stdout);
            drawn_ = false;
        }
    }

private:
    std::uint64_t total_ = 0;
    bool on_;
    bool drawn_ = false;
    std::chrono::steady_clock::time_point last_{};
};

// The closing line of export and merge: "W written (N bytes), R read, in S s (X/s), K other
// files copied[, old folder replaced]".
template <class Out, class Report>
void print_transfer_summary(Out& out, const Report& r, double seconds) {
    out.print("{} written ({} bytes), {} read, in {:.2f} s ({}/s), {} other files copied{}\n",
              human_bytes(r.bytes_written), r.bytes_written, human_bytes(r.bytes_read), seconds,
              human_bytes(static_cast<std::uint64_t>(static_cast<double>(r.bytes_written) /
                                                     std::max(seconds, 1e-9))),
              r.side_files, r.replaced ? ", old folder replaced" : "");
}

}  // namespace safeshard::cli
