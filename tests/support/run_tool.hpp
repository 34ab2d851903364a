// Runs the `safeshard` tool named by SAFESHARD_EXE (tests that need it skip without it:
// doctest::skip(!safeshard::test::have_tool())) and collects its exit code and output.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <doctest/doctest.h>

namespace safeshard::test {

[[nodiscard]] inline bool have_tool() { return std::getenv("SAFESHARD_EXE") != nullptr; }

struct tool_result {
    int code = -1;
    std::string out;  // standard output and error together
};

inline tool_result run_tool(const std::string& args) {
    const char* exe = std::getenv("SAFESHARD_EXE");
    REQUIRE(exe != nullptr);
    tool_result r;
    FILE* p = ::popen((std::string(exe) + " " + args + " 2>&1").c_str(), "r");
    REQUIRE(p != nullptr);
    char buf[4096];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    const int st = ::pclose(p);
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

}  // namespace safeshard::test
