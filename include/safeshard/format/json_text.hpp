// Small JSON side files (index.json, config.json): read whole, with a size cap, into a buffer
// simdjson can parse in place.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include <simdjson.h>

#include "safeshard/core/error.hpp"

namespace safeshard::detail {

// Reads a regular file of at most `cap` bytes; errc::io_error (with errno) when the system
// fails, `too_big` when the file is over the cap or not a regular file.
[[nodiscard]] inline simdjson::padded_string read_json_file(const std::filesystem::path& p,
                                                            std::uint64_t cap, errc too_big) {
    const std::string name = p.string();
    int fd = -1;
    do {
        fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) throw system_error("open", errno, name);
    struct fd_guard {
        int fd;
        ~fd_guard() { ::close(fd); }
    } guard{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw system_error("fstat", errno, name);
    if (!S_ISREG(st.st_mode)) {
        throw error(too_big, "not a regular file", error_context{.file = name});
    }
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (size > cap) {
        throw error(
            too_big,
            "file is " + std::to_string(size) + " bytes, over the cap of " + std::to_string(cap),
            error_context{.file = name});
    }
    simdjson::padded_string buf(static_cast<std::size_t>(size));
    std::size_t done = 0;
    while (done < size) {
        const ssize_t n = ::read(fd, buf.data() + done, static_cast<std::size_t>(size) - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw system_error("read", errno, name, done);
        }
        if (n == 0) {
            throw error(too_big, "file shrank while being read", error_context{.file = name});
        }
        done += static_cast<std::size_t>(n);
    }
    return buf;
}

[[nodiscard]] inline std::string_view json_type_name(simdjson::dom::element_type t) noexcept {
    using simdjson::dom::element_type;
    switch (t) {
        case element_type::ARRAY: return "an array";
        case element_type::OBJECT: return "an object";
        case element_type::INT64:
        case element_type::UINT64: return "an integer";
        case element_type::DOUBLE: return "a number";
        case element_type::STRING: return "a string";
        case element_type::BOOL: return "a boolean";
        case element_type::NULL_VALUE: return "null";
    }
    return "unknown";
}

// A non-negative integer; an integral double (some writers emit `123.0`) is accepted too.
[[nodiscard]] inline bool json_to_uint64(simdjson::dom::element e, std::uint64_t& out) noexcept {
    if (e.get_uint64().get(out) == simdjson::SUCCESS) return true;
    double d = 0;
    if (e.is_double() && e.get_double().get(d) == simdjson::SUCCESS && d >= 0 &&
        d <= 9007199254740992.0 && static_cast<double>(static_cast<std::uint64_t>(d)) == d) {
        out = static_cast<std::uint64_t>(d);
        return true;
    }
    return false;
}

}  // namespace safeshard::detail
