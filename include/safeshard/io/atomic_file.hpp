// Writes a file so that readers (and a crash) see either the old target or the new one whole.
#pragma once

#include "safeshard/core/error.hpp"
#include "safeshard/io/syscalls.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

namespace safeshard {

namespace detail {

// Linux moves at most 0x7ffff000 bytes per read or write call; ask for whole GiBs.
inline constexpr std::size_t max_io_chunk = std::size_t{1} << 30;

// "<digits>" -> pid, for the pid field of a temporary name; nullopt if not a plain number.
[[nodiscard]] inline std::optional<pid_t> parse_pid(std::string_view s) noexcept {
    if (s.empty() || s.size() > 10) return std::nullopt;
    pid_t pid = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), pid);
    if (ec != std::errc{} || end != s.data() + s.size() || pid <= 0) return std::nullopt;
    return pid;
}

[[nodiscard]] inline bool all_digits(std::string_view s) noexcept {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Names of the temporaries this process has open, so remove_stale can tell its own live
// temporaries from those a previous process with the same pid left (pids repeat, e.g. in
// containers). Keyed by file name: a same-named temporary elsewhere is kept, never lost.
class live_temporaries {
public:
    static void add(const std::string& name) {
        std::lock_guard lock(mutex());
        names().insert(name);
    }
    static void remove(const std::string& name) noexcept {
        std::lock_guard lock(mutex());
        if (auto it = names().find(name); it != names().end()) names().erase(it);
    }
    [[nodiscard]] static std::size_t count(const std::string& name) {
        std::lock_guard lock(mutex());
        return names().count(name);
    }

private:
    static std::mutex& mutex() noexcept {
        static std::mutex m;
        return m;
    }
    static std::multiset<std::string>& names() noexcept {
        static std::multiset<std::string> s;
        return s;
    }
};

// Whether a temporary named `name` with writer `pid` is abandoned: its process is gone, or it
// carries our pid but no object of ours owns it.
[[nodiscard]] inline bool temporary_is_stale(pid_t pid, const std::string& name) {
    if (pid == ::getpid()) return live_temporaries::count(name) == 0;
    return process_is_gone(pid);
}

// The folder holding `p` ("." for a bare name).
[[nodiscard]] inline std::filesystem::path parent_folder(const std::filesystem::path& p) {
    auto parent = p.parent_path();
    return parent.empty() ? std::filesystem::path(".") : parent;
}

}  // namespace detail

// A temporary `.NAME.tmp-<pid>-<n>` beside the target receives the bytes; commit() fsyncs it,
// renames it over the target and fsyncs the folder. Until commit() the target is untouched;
// on any error, and in the destructor when not committed, the temporary is removed. Temporaries
// left by killed processes are removed by remove_stale(), which the constructor calls.
// A replaced target keeps its permission bits; a symlink target is replaced, not followed.
class atomic_file {
public:
    // `mode`: the new file's permission bits, less the umask (a replaced target keeps its own).
    explicit atomic_file(std::filesystem::path target, mode_t mode = 0666)
        : target_(std::move(target)) {
        const auto name = target_.filename();
        if (name.empty() || name == "." || name == "..")
            throw error(errc::invalid_argument,
                        "atomic_file needs a file name, got '" + target_.string() + "'",
                        {.file = target_.string()});
        folder_ = detail::parent_folder(target_);
        (void)remove_stale(target_);
        static std::atomic<std::uint64_t> counter{0};
        temp_ = folder_ / ("." + name.string() + ".tmp-" + std::to_string(::getpid()) + "-" +
                           std::to_string(counter.fetch_add(1, std::memory_order_relaxed)));
        temp_name_ = temp_.filename().string();
        // Registered before it exists, so a concurrent remove_stale never takes it for stale.
        detail::live_temporaries::add(temp_name_);
        fd_.reset(detail::open_retry(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
        if (!fd_) {
            const int e = errno;
            detail::live_temporaries::remove(temp_name_);
            throw system_error("create temporary file for '" + target_.string() + "'", e,
                               temp_.string());
        }
        state_ = state::open;
        // Replacing a file must not widen (or narrow) who may read it.
        struct stat st {};
        if (::stat(target_.c_str(), &st) == 0 && S_ISREG(st.st_mode))
            (void)::fchmod(fd_.get(), st.st_mode & 07777);
    }

    atomic_file(atomic_file&& o) noexcept
        : target_(std::move(o.target_)),
          folder_(std::move(o.folder_)),
          temp_(std::move(o.temp_)),
          temp_name_(std::move(o.temp_name_)),
          fd_(std::move(o.fd_)),
          bytes_written_(std::exchange(o.bytes_written_, 0)),
          state_(std::exchange(o.state_, state::failed)) {}
    atomic_file& operator=(atomic_file&& o) noexcept {
        if (this != &o) {
            discard();
            target_ = std::move(o.target_);
            folder_ = std::move(o.folder_);
            temp_ = std::move(o.temp_);
            temp_name_ = std::move(o.temp_name_);
            fd_ = std::move(o.fd_);
            bytes_written_ = std::exchange(o.bytes_written_, 0);
            state_ = std::exchange(o.state_, state::failed);
        }
        return *this;
    }
    atomic_file(const atomic_file&) = delete;
    atomic_file& operator=(const atomic_file&) = delete;
    ~atomic_file() { discard(); }

    // Appends; retries EINTR and short writes. On error the temporary is removed and the
    // object is spent (the target is untouched).
    void write(std::span<const std::byte> bytes) {
        require_open("write");
        const std::byte* p = bytes.data();
        std::size_t left = bytes.size();
        while (left > 0) {
            const ssize_t r =
                detail::sys::write(fd_.get(), p, std::min(left, detail::max_io_chunk));
            if (r < 0) {
                const int e = errno;
                if (e == EINTR) continue;
                fail_and_throw("write", e, temp_, bytes_written_);
            }
            if (r == 0) fail_and_throw("write (no progress)", EIO, temp_, bytes_written_);
            p += r;
            left -= static_cast<std::size_t>(r);
            bytes_written_ += static_cast<std::uint64_t>(r);
        }
    }

    // fsync, rename over the target, fsync the folder. After it returns the target is complete
    // and durable. If only the final folder fsync fails, the target is already replaced and
    // the error says so.
    void commit() {
        require_open("commit");
        if (detail::fsync_retry(fd_.get()) != 0) {
            const int e = errno;
            fail_and_throw("fsync", e, temp_);
        }
        // close(2) can report a delayed write error (NFS); EINTR still closes on Linux.
        if (detail::sys::close(fd_.release()) != 0) {
            const int e = errno;
            if (e != EINTR) fail_and_throw("close", e, temp_);
        }
        if (detail::sys::rename(temp_.c_str(), target_.c_str()) != 0) {
            const int e = errno;
            fail_and_throw("rename of '" + temp_.string() + "' over the target", e, target_);
        }
        state_ = state::committed;
        detail::live_temporaries::remove(temp_name_);
        if (const int e = detail::fsync_directory(folder_.c_str()); e != 0)
            throw system_error(
                "fsync of the folder (the new file is in place but may not survive a power loss)",
                e, folder_.string());
    }

    // Drops the temporary now (what the destructor does); the object is spent afterwards.
    void discard() noexcept {
        if (state_ != state::open) return;
        fd_.reset();
        (void)::unlink(temp_.c_str());
        detail::live_temporaries::remove(temp_name_);
        state_ = state::failed;
    }

    [[nodiscard]] const std::filesystem::path& target() const noexcept { return target_; }
    [[nodiscard]] const std::filesystem::path& temp_path() const noexcept { return temp_; }
    [[nodiscard]] std::uint64_t bytes_written() const noexcept { return bytes_written_; }
    [[nodiscard]] bool committed() const noexcept { return state_ == state::committed; }

    // Removes the temporaries of `target` whose writer process is gone (or that carry this
    // process's pid but belong to no live atomic_file: a previous process with the same pid
    // left them); returns how many.
    // Never throws: a folder it cannot read has nothing it could clean.
    static std::size_t remove_stale(const std::filesystem::path& target) noexcept {
        try {
            const std::string prefix = "." + target.filename().string() + ".tmp-";
            if (prefix.size() == 6) return 0;
            std::size_t removed = 0;
            std::error_code ec;
            std::filesystem::directory_iterator it(detail::parent_folder(target), ec), end;
            for (; !ec && it != end; it.increment(ec)) {
                const std::string name = it->path().filename().string();
                if (!std::string_view(name).starts_with(prefix)) continue;
                // "<pid>-<counter>"
                const std::string_view rest = std::string_view(name).substr(prefix.size());
                const auto dash = rest.find('-');
                if (dash == std::string_view::npos || !detail::all_digits(rest.substr(dash + 1)))
                    continue;
                const auto pid = detail::parse_pid(rest.substr(0, dash));
                if (!pid || !detail::temporary_is_stale(*pid, name)) continue;
                std::error_code type_ec;
                if (!it->is_regular_file(type_ec) || it->is_symlink(type_ec)) continue;
                if (::unlink(it->path().c_str()) == 0) ++removed;
            }
            return removed;
        } catch (...) {
            return 0;
        }
    }

private:
    enum class state : std::uint8_t { open, committed, failed };

    void require_open(const char* what) const {
        if (state_ == state::open) return;
        throw error(
            errc::invalid_argument,
            std::string(what) + " on an atomic_file that is " +
                (state_ == state::committed ? "already committed"
                                            : "spent (an earlier call failed, or discarded)"),
            {.file = target_.string()});
    }

    [[noreturn]] void fail_and_throw(const std::string& op, int err, const std::filesystem::path& p,
                                     std::optional<std::uint64_t> offset = std::nullopt) {
        discard();
        throw system_error(op, err, p.string(), offset);
    }

    std::filesystem::path target_;
    std::filesystem::path folder_{};
    std::filesystem::path temp_{};
    std::string temp_name_{};
    detail::unique_fd fd_{};
    std::uint64_t bytes_written_ = 0;
    state state_ = state::failed;
};

}  // namespace safeshard
