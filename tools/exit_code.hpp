// The exit codes of every safeshard command, decided here and nowhere else.
#pragma once

#include <cerrno>

#include "safeshard/core/error.hpp"

namespace safeshard::cli {

enum exit_code : int {
    exit_ok = 0,             // success
    exit_invalid_input = 1,  // the input is wrong (bad file, index, config, missing shard...)
    exit_usage = 2,          // bad command line
    exit_system = 3,         // the system failed an operation (permission, ENOSPC, EIO...)
    exit_interrupted = 130   // SIGINT
};

[[nodiscard]] constexpr int exit_code_for(errc e) noexcept {
    switch (e) {
        case errc::io_error: return exit_system;
        case errc::interrupted: return exit_interrupted;
        case errc::invalid_argument: return exit_usage;
        default: return exit_invalid_input;
    }
}

// What the tool's options can do about an error the library reports in its own words: appended
// to the message.
[[nodiscard]] constexpr const char* option_hint(errc e) noexcept {
    switch (e) {
        case errc::quantized_checkpoint: return " (--allow-quantized loads the raw tensors)";
        case errc::unexpected_tensor: return " (--lenient reports them instead)";
        default: return "";
    }
}

// The same for an error with its context: an output folder that exists (EEXIST) is what
// --force is for.
[[nodiscard]] inline const char* option_hint(const error& e) noexcept {
    if (e.code() == errc::io_error && e.sys_errno() == EEXIST) return " (--force replaces it)";
    return option_hint(e.code());
}

// The text of `--help` and the README.
inline constexpr const char* exit_code_help =
    "Exit codes:\n"
    "  0    success\n"
    "  1    invalid input: a bad safetensors file, index, config.json or cache entry, a\n"
    "       checkpoint that is not there, an index naming a missing shard, or an input file\n"
    "       that is not a regular file (a FIFO, a folder, a device); the message names the\n"
    "       error code, the file and the tensor\n"
    "  2    usage: a bad command line (unknown option, bad dtype or revision, an --out that\n"
    "       exists without --force)\n"
    "  3    the system failed an operation: permission denied, no space left, I/O error\n"
    "  130  interrupted (SIGINT), in any phase; nothing is left at OUT\n"
    "A closed output pipe (`safeshard inspect --json | head`) ends the command quietly with 0,\n"
    "and so does a SIGINT once OUT is complete.\n";

}  // namespace safeshard::cli
