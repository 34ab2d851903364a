// Small JSON side files (index.json, config.json): read whole, with a size cap, into a buffer
// simdjson can parse in place.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

#include <simdjson.h>

#include "safeshard/core/error.hpp"

namespace safeshard::detail {

// serde_json (the reference's parser) refuses JSON nested deeper than this, counting the
// top-level object; simdjson is told the same limit so both give the same verdict.
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

// An open JSON side file: a regular file of at most `cap` bytes. errc::io_error (with errno)
// when the system fails, `too_big` when the file is over the cap or not a regular file.
class json_file {
public:
    json_file(const std::filesystem::path& p, std::uint64_t cap, errc too_big)
        : name_(p.string()), too_big_(too_big) {
        do {
            fd_ = ::open(name_.c_str(), O_RDONLY | O_CLOEXEC);
        } while (fd_ < 0 && errno == EINTR);
        if (fd_ < 0) throw system_error("open", errno, name_);
        struct stat st {};
        if (::fstat(fd_, &st) != 0) {
            const int e = errno;
            ::close(fd_);
            throw system_error("fstat", e, name_);
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd_);
            throw error(too_big, "not a regular file", error_context{.file = name_});
        }
        size_ = static_cast<std::uint64_t>(st.st_size);
        if (size_ > cap) {
            ::close(fd_);
            throw error(too_big,
                        "file is " + std::to_string(size_) + " bytes, over the cap of " +
                            std::to_string(cap),
                        error_context{.file = name_});
        }
    }
    json_file(const json_file&) = delete;
    json_file& operator=(const json_file&) = delete;
    ~json_file() {
        if (map_ != nullptr) ::munmap(map_, map_bytes_);
        ::close(fd_);
    }

    // The whole file read into a padded buffer.
    [[nodiscard]] simdjson::padded_string read() const {
        simdjson::padded_string buf(static_cast<std::size_t>(size_));
        std::size_t done = 0;
        while (done < size_) {
            const ssize_t n =
                ::read(fd_, buf.data() + done, static_cast<std::size_t>(size_) - done);
            if (n < 0) {
                if (errno == EINTR) continue;
                throw system_error("read", errno, name_, done);
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
        map_bytes_ = static_cast<std::size_t>(size_ + (page - tail));
        void* m = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd_, 0);
        if (m == MAP_FAILED) {
            map_ = nullptr;
            return {};  // reading still works
        }
        map_ = m;
        return simdjson::padded_string_view(static_cast<const char*>(m),
                                            static_cast<std::size_t>(size_), map_bytes_);
    }

    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }

private:
    std::string name_;
    errc too_big_;
    int fd_ = -1;
    std::uint64_t size_ = 0;
    void* map_ = nullptr;
    std::size_t map_bytes_ = 0;
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
