// Writes a whole folder so that readers (and a crash) see it complete or not at all.
#pragma once

#include "safeshard/core/error.hpp"
#include "safeshard/io/atomic_file.hpp"
#include "safeshard/io/syscalls.hpp"

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <stdio.h>  // RENAME_NOREPLACE
#include <sys/stat.h>
#include <unistd.h>

namespace safeshard {

// The caller fills path(), a hidden sibling folder `.NAME.safeshard.tmp-<pid>` (missing parent
// folders are made first, as os.makedirs makes them); commit() fsyncs every file and folder in
// it, renames it to NAME (never over an existing one) and fsyncs the parent. On any error, and
// in the destructor when not committed, the temporary folder is removed. The constructor first
// removes temporaries that dead processes left (remove_stale): only folders under that name,
// which no person picks for a folder of their own.
class atomic_directory {
public:
    explicit atomic_directory(std::filesystem::path target) : target_(std::move(target)) {
        if (!target_.has_filename())
            target_ = target_.parent_path();  // "out/model/" -> "out/model"
        const auto name = target_.filename();
        if (name.empty() || name == "." || name == "..")
            throw error(errc::invalid_argument,
                        "atomic_directory needs a folder name, got '" + target_.string() + "'",
                        {.file = target_.string()});
        parent_ = detail::parent_folder(target_);
        throw_if_target_exists();
        make_folders(parent_);
        (void)remove_stale(target_);
        temp_ = parent_ / (temp_prefix(name) + std::to_string(::getpid()));
        temp_name_ = temp_.filename().string();
        detail::live_temporaries::add(temp_name_);
        begun().fetch_add(1);  // before the folder exists: see begun_in_process()
        try {
            make_temp_folder();
        } catch (...) {
            detail::live_temporaries::remove(temp_name_);
            begun().fetch_sub(1);
            throw;
        }
        state_ = state::open;
    }

    atomic_directory(atomic_directory&& o) noexcept
        : target_(std::move(o.target_)),
          parent_(std::move(o.parent_)),
          temp_(std::move(o.temp_)),
          temp_name_(std::move(o.temp_name_)),
          state_(std::exchange(o.state_, state::failed)) {}
    atomic_directory& operator=(atomic_directory&& o) noexcept {
        if (this != &o) {
            discard();
            target_ = std::move(o.target_);
            parent_ = std::move(o.parent_);
            temp_ = std::move(o.temp_);
            temp_name_ = std::move(o.temp_name_);
            state_ = std::exchange(o.state_, state::failed);
        }
        return *this;
    }
    atomic_directory(const atomic_directory&) = delete;
    atomic_directory& operator=(const atomic_directory&) = delete;
    ~atomic_directory() { discard(); }

    // The temporary folder to fill.
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return temp_; }
    [[nodiscard]] const std::filesystem::path& target() const noexcept { return target_; }
    [[nodiscard]] bool committed() const noexcept { return state_ == state::committed; }

    // Fsyncs everything inside, renames to the target, fsyncs the parent. If only the final
    // parent fsync fails, the folder is already in place and the error says so.
    void commit() {
        if (state_ != state::open)
            throw error(
                errc::invalid_argument,
                std::string("commit on an atomic_directory that is ") +
                    (state_ == state::committed ? "already committed"
                                                : "spent (an earlier call failed, or discarded)"),
                {.file = target_.string()});
        try {
            sync_tree();
            rename_into_place();
        } catch (...) {
            discard();
            throw;
        }
        state_ = state::committed;
        detail::live_temporaries::remove(temp_name_);
        if (const int e = detail::fsync_directory(parent_.c_str()); e != 0)
            throw system_error(
                "fsync of the parent folder (the new folder is in place but may not survive a "
                "power loss)",
                e, parent_.string());
    }

    // Removes the temporary folder now (what the destructor does); the object is spent.
    void discard() noexcept {
        if (state_ != state::open) return;
        std::error_code ec;
        std::filesystem::remove_all(temp_, ec);
        detail::live_temporaries::remove(temp_name_);
        state_ = state::failed;
        begun().fetch_sub(1);  // after the folder is gone
    }

    // How many folders this process has begun (temporary made) and not discarded: those being
    // written and those committed. While it is 0, nothing written through atomic_directory can
    // be left half-done or has been completed, so a SIGINT handler may end the process at once
    // (_exit) and report it interrupted; otherwise the writer should stop at a cancel point,
    // which removes its temporary. Lock-free: safe to read in a signal handler.
    [[nodiscard]] static int begun_in_process() noexcept { return begun().load(); }

    // The name of NAME's temporaries without the pid: `.NAME.safeshard.tmp-` (one dot for a
    // hidden NAME).
    [[nodiscard]] static std::string temp_prefix(const std::filesystem::path& name) {
        const std::string n = name.string();
        return (n.starts_with('.') ? n : "." + n) + ".safeshard.tmp-";
    }

    // Removes `.NAME.safeshard.tmp-<pid>` folders beside `target` whose writer is gone (or
    // that carry this process's pid but belong to no live atomic_directory); returns how many.
    // Never throws: what it cannot read or remove it leaves.
    static std::size_t remove_stale(const std::filesystem::path& target) noexcept {
        try {
            auto t = target;
            if (!t.has_filename()) t = t.parent_path();
            if (t.filename().empty()) return 0;
            const std::string prefix = temp_prefix(t.filename());
            std::size_t removed = 0;
            std::error_code ec;
            std::filesystem::directory_iterator it(detail::parent_folder(t), ec), end;
            for (; !ec && it != end; it.increment(ec)) {
                const std::string name = it->path().filename().string();
                if (!std::string_view(name).starts_with(prefix)) continue;
                const auto pid = detail::parse_pid(std::string_view(name).substr(prefix.size()));
                if (!pid || !detail::temporary_is_stale(*pid, name)) continue;
                std::error_code type_ec;
                if (it->is_symlink(type_ec) || !it->is_directory(type_ec)) continue;
                std::error_code rm_ec;
                std::filesystem::remove_all(it->path(), rm_ec);
                if (!rm_ec) ++removed;
            }
            return removed;
        } catch (...) {
            return 0;
        }
    }

private:
    enum class state : std::uint8_t { open, committed, failed };

    static std::atomic<int>& begun() noexcept {
        static_assert(std::atomic<int>::is_always_lock_free);
        static std::atomic<int> n{0};
        return n;
    }

    void throw_if_target_exists() const {
        struct stat st {};
        if (::lstat(target_.c_str(), &st) == 0)
            throw error(errc::io_error,
                        "target already exists; atomic_directory creates a new folder and never "
                        "replaces one (remove it first)",
                        {.file = target_.string(), .sys_errno = EEXIST});
        if (errno != ENOENT) throw detail::errno_error("stat", target_);
    }

    // Creates `folder` and its missing ancestors (as os.makedirs does), each entry fsynced
    // into its parent; an ancestor that is not a folder is an error naming it.
    static void make_folders(const std::filesystem::path& folder) {
        struct stat st {};
        if (::stat(folder.c_str(), &st) == 0) {
            if (S_ISDIR(st.st_mode)) return;
            throw error(errc::io_error,
                        "cannot create the folder: a parent is " +
                            std::string(detail::file_type_name(st.st_mode)) + ", not a folder",
                        {.file = folder.string(), .sys_errno = ENOTDIR});
        }
        if (errno != ENOENT) throw detail::errno_error("stat", folder);
        const auto up = detail::parent_folder(folder);
        if (up != folder) make_folders(up);
        if (detail::sys::mkdir(folder.c_str(), 0777) != 0) {
            const int e = errno;
            if (e == EEXIST) return;  // made meanwhile by someone else
            throw system_error("create the missing parent folder", e, folder.string());
        }
        if (const int e = detail::fsync_directory(up.c_str()); e != 0)
            throw system_error("fsync", e, up.string());
    }

    void make_temp_folder() {
        for (int attempt = 0;; ++attempt) {
            if (detail::sys::mkdir(temp_.c_str(), 0777) == 0) return;
            const int e = errno;
            if (e != EEXIST || attempt > 0)
                throw system_error("create temporary folder for '" + target_.string() + "'", e,
                                   temp_.string());
            if (detail::live_temporaries::count(temp_name_) > 1)
                throw error(errc::io_error,
                            "another atomic_directory of this process is writing the same "
                            "target",
                            {.file = target_.string(), .sys_errno = EEXIST});
            // Left by a previous process with our pid, or appeared since remove_stale ran.
            std::error_code ec;
            std::filesystem::remove_all(temp_, ec);
        }
    }

    // fsync every regular file and folder inside the temporary folder, then the folder.
    void sync_tree() const {
        std::error_code ec;
        std::filesystem::recursive_directory_iterator it(temp_, ec), end;
        for (; !ec && it != end; it.increment(ec)) {
            std::error_code type_ec;
            const auto st = it->symlink_status(type_ec);
            if (type_ec) throw system_error("stat", type_ec.value(), it->path().string());
            if (std::filesystem::is_regular_file(st))
                sync_one(it->path(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            else if (std::filesystem::is_directory(st))
                sync_one(it->path(), O_RDONLY | O_CLOEXEC | O_DIRECTORY | O_NOFOLLOW);
            // Symlinks and others live in their folder's entries, synced with the folder.
        }
        if (ec) throw system_error("list", ec.value(), temp_.string());
        sync_one(temp_, O_RDONLY | O_CLOEXEC | O_DIRECTORY);
    }

    // Folders by fsync_open_directory (EINVAL: the file system cannot sync one), files by
    // fsync.
    static void sync_one(const std::filesystem::path& p, int flags) {
        detail::unique_fd fd(detail::open_retry(p.c_str(), flags));
        if (!fd) throw detail::errno_error("open for fsync", p);
        const int rc = (flags & O_DIRECTORY) != 0 ? detail::fsync_open_directory(fd.get())
                                                  : detail::fsync_retry(fd.get());
        if (rc != 0) throw detail::errno_error("fsync", p);
    }

    void rename_into_place() const {
        if (detail::sys::rename(temp_.c_str(), target_.c_str(), RENAME_NOREPLACE) == 0) return;
        int e = errno;
        if (e == EINVAL) {
            // The file system lacks RENAME_NOREPLACE: check, then a plain rename (which would
            // silently replace an empty folder created in between).
            throw_if_target_exists();
            if (detail::sys::rename(temp_.c_str(), target_.c_str()) == 0) return;
            e = errno;
        }
        if (e == EEXIST || e == ENOTEMPTY)
            throw error(errc::io_error,
                        "target appeared while the folder was being written; nothing was replaced",
                        {.file = target_.string(), .sys_errno = EEXIST});
        throw system_error("rename of '" + temp_.string() + "' to the target", e, target_.string());
    }

    std::filesystem::path target_;
    std::filesystem::path parent_{};
    std::filesystem::path temp_{};
    std::string temp_name_{};
    state state_ = state::failed;
};

}  // namespace safeshard
