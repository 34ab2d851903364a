// Small JSON side files (index.json, config.json): read whole, with a size cap, into a buffer
// simdjson can parse in place.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <simdjson.h>

#include "safeshard/core/error.hpp"
#include "safeshard/io/mapped_file.hpp"
#include "safeshard/io/syscalls.hpp"

namespace safeshard::detail {

// The depth simdjson's parsers are prepared for. simdjson counts the document as a level and
// not an empty innermost array or object, so it takes every text at most 126 arrays and
// objects deep; a deeper one is measured again against its reader's own limit
// (json_document.hpp).
inline constexpr std::size_t json_max_depth = 127;

inline void prepare_parser(simdjson::dom::parser& p, std::size_t capacity) {
    if (p.allocate(std::max<std::size_t>(capacity, 4096), json_max_depth) != simdjson::SUCCESS)
        throw std::bad_alloc();
}

// One simdjson parser per thread, reused: its buffers are the costly part of a parse.
inline simdjson::dom::parser& thread_parser() {
    thread_local simdjson::dom::parser parser = [] {
        simdjson::dom::parser p;
        prepare_parser(p, 4096);
        return p;
    }();
    return parser;
}

// Above this header size a parse uses its own parser, so a thread keeps no huge buffers.
inline constexpr std::size_t shared_parser_limit = 16u << 20;

// An open JSON side file: a regular file of at most `cap` bytes, opened and read through io/'s
// system-call seam and mapped by io/mapped_file. errc::io_error (with errno) when the system fails,
// `too_big` when the file is over the cap or not a regular file (a FIFO or a device is never waited
// on).
class json_file {
public:
    json_file(const std::filesystem::path& p, std::uint64_t cap, errc too_big)
        : name_(p.string()), too_big_(too_big) {
        file_ = open_regular_file(p, too_big);
        size_ = static_cast<std::uint64_t>(file_.status.st_size);
        if (size_ > cap)
            throw error(too_big,
                        "file is " + std::to_string(size_) + " bytes, over the cap of " +
                            std::to_string(cap),
                        error_context{.file = name_});
    }
    json_file(const json_file&) = delete;
    json_file& operator=(const json_file&) = delete;
    ~json_file() = default;

    // The whole file read into a padded buffer.
    [[nodiscard]] simdjson::padded_string read() const {
        simdjson::padded_string buf(static_cast<std::size_t>(size_));
        std::size_t done = 0;
        while (done < size_) {
            const ssize_t n =
                sys::pread(file_.fd.get(), buf.data() + done,
                           static_cast<std::size_t>(size_) - done, static_cast<off_t>(done));
            if (n < 0) {
                if (errno == EINTR) continue;
                throw errno_error("read", name_, done);
            }
            if (n == 0) {
                throw error(too_big_, "file shrank while being read", error_context{.file = name_});
            }
            done += static_cast<std::size_t>(n);
        }
        return buf;
    }

    // The file's bytes as simdjson's padded input without a copy, when its last page has room
    // for simdjson's padding (the kernel zero-fills a mapping past the end of the file). For
    // multi-megabyte indexes this saves a copy into fresh memory, which costs more than the
    // parse. Empty when the file does not qualify: read() it instead.
    [[nodiscard]] std::optional<simdjson::padded_string_view> map() {
        const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
        const std::uint64_t tail = size_ % page;
        if (size_ == 0 || tail == 0 || page - tail < simdjson::SIMDJSON_PADDING) return {};
        try {
            map_ = mapped_file(file_, name_);
        } catch (const error&) {
            return {};  // reading still works
        }
        return simdjson::padded_string_view(reinterpret_cast<const char*>(map_.data()), map_.size(),
                                            static_cast<std::size_t>(size_ + (page - tail)));
    }

    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }

private:
    std::string name_;
    errc too_big_;
    opened_file file_{};
    std::uint64_t size_ = 0;
    mapped_file map_{};
};

// Reads a regular file of at most `cap` bytes (see json_file for the errors).
[[nodiscard]] inline simdjson::padded_string read_json_file(const std::filesystem::path& p,
                                                            std::uint64_t cap, errc too_big) {
    return json_file(p, cap, too_big).read();
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
