// Runs a piece of a test in a child process with a deadline, so that a call that would hang
// (an open(2) of a FIFO waiting for a writer) fails the test instead of blocking the suite.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <exception>
#include <functional>
#include <optional>
#include <string>

#include "safeshard/core/error.hpp"

namespace safeshard::test {

// What `f` gave in a child process: its return value, or "error: " + what() of the exception
// it threw; nullopt when it had not ended after `seconds` (the child is killed then).
inline std::optional<std::string> outcome_within(int seconds,
                                                 const std::function<std::string()>& f) {
    int fds[2];
    if (::pipe(fds) != 0) return std::string("pipe failed");
    const pid_t pid = ::fork();
    if (pid < 0) return std::string("fork failed");
    if (pid == 0) {
        ::close(fds[0]);
        std::string r;
        try {
            r = f();
        } catch (const std::exception& e) {
            r = std::string("error: ") + e.what();
        }
        for (std::size_t done = 0; done < r.size();) {
            const ssize_t n = ::write(fds[1], r.data() + done, r.size() - done);
            if (n <= 0) break;
            done += static_cast<std::size_t>(n);
        }
        ::_exit(0);
    }
    ::close(fds[1]);
    std::string out;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    bool ended = false;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                              deadline - std::chrono::steady_clock::now())
                              .count();
        if (left <= 0) break;
        pollfd p{fds[0], POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
        char buf[4096];
        const ssize_t n = ::read(fds[0], buf, sizeof buf);
        if (n <= 0) {  // end of file: the child is done
            ended = true;
            break;
        }
        out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fds[0]);
    if (!ended) ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!ended) return std::nullopt;
    return out;
}

}  // namespace safeshard::test
