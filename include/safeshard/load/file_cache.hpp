// The checkpoint files a copy reads, opened when needed and closed after: a checkpoint of
// thousands of shards is read with a bounded number of descriptors and mappings, while a
// typical one (a few hundred shards) is opened whole, once, as before.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "safeshard/core/error.hpp"
#include "safeshard/io/file_identity.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/mapped_file.hpp"
#include "safeshard/io/syscalls.hpp"
#include "safeshard/load/copy_op.hpp"
#include "safeshard/load/engine.hpp"

namespace safeshard {

// A file to read: its path and, where known, the file it must still be (read_options::expect).
struct cached_file {
    std::filesystem::path path;
    std::optional<file_version> expect{};
};

struct file_cache_options {
    read_options read{};       // O_DIRECT and the like; `expect` comes from each cached_file
    bool map = true;           // map each open file too (read_source::mapping, for the engines)
    std::size_t capacity = 0;  // files open at once; 0: default_file_capacity(map)
};

namespace detail {
// Lines of a /proc file, entries of a /proc folder, a number in a /proc file; nullopt where
// /proc cannot say.
[[nodiscard]] inline std::optional<std::uint64_t> count_lines(const char* path) {
    unique_fd fd(open_retry(path, O_RDONLY | O_CLOEXEC));
    if (!fd) return std::nullopt;
    std::uint64_t lines = 0;
    char buf[16384];
    for (;;) {
        const ssize_t n = ::read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return std::nullopt;
        if (n == 0) return lines;
        lines += static_cast<std::uint64_t>(std::count(buf, buf + n, '\n'));
    }
}
[[nodiscard]] inline std::optional<std::uint64_t> count_entries(const char* path) {
    std::error_code ec;
    std::uint64_t n = 0;
    for (std::filesystem::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec))
        ++n;
    if (ec) return std::nullopt;
    return n;
}
[[nodiscard]] inline std::optional<std::uint64_t> read_number(const char* path) {
    unique_fd fd(open_retry(path, O_RDONLY | O_CLOEXEC));
    if (!fd) return std::nullopt;
    char buf[32] = {};
    const ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
    if (n <= 0) return std::nullopt;
    std::uint64_t v = 0;
    for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; ++i)
        v = v * 10 + static_cast<std::uint64_t>(buf[i] - '0');
    return v;
}
}  // namespace detail

// How many files a file_cache opens at once: half the descriptors the process has left under
// its RLIMIT_NOFILE (the other half stays for the output being written, the engines' rings
// and the caller's own files) and, with mappings, half the mappings left under
// vm.max_map_count. At least 1.
[[nodiscard]] inline std::size_t default_file_capacity(bool map) {
    std::uint64_t fds = 1024;
    if (rlimit l{}; ::getrlimit(RLIMIT_NOFILE, &l) == 0)
        fds = l.rlim_cur == RLIM_INFINITY ? std::uint64_t{1} << 20 : l.rlim_cur;
    // The folder listing's own descriptor is among the entries; 16 where /proc says nothing.
    const std::uint64_t used = detail::count_entries("/proc/self/fd").value_or(16);
    std::uint64_t cap = fds > used ? (fds - used) / 2 : 0;
    if (map) {
        const std::uint64_t limit =
            detail::read_number("/proc/sys/vm/max_map_count").value_or(65530);
        const std::uint64_t maps = detail::count_lines("/proc/self/maps").value_or(limit / 2);
        cap = std::min(cap, limit > maps ? (limit - maps) / 2 : 0);
    }
    return static_cast<std::size_t>(
        std::clamp<std::uint64_t>(cap, 1, std::numeric_limits<std::uint32_t>::max()));
}

// Readers (and mappings) of a list of files, at most capacity() open at once; the least
// recently used is closed to open another. Not thread-safe: one owner opens and closes, and
// engines read the open ones between binds.
class file_cache {
public:
    explicit file_cache(std::vector<cached_file> files, file_cache_options o = {})
        : files_(std::move(files)),
          read_(o.read),
          map_(o.map),
          capacity_(o.capacity != 0 ? o.capacity : default_file_capacity(o.map)),
          readers_(files_.size()),
          mappings_(files_.size()),
          sources_(files_.size()),
          prev_(files_.size(), none),
          next_(files_.size(), none),
          batch_(files_.size(), 0) {}

    // Moves keep the readers where they are (sources() stays valid).
    file_cache(file_cache&&) noexcept = default;
    file_cache& operator=(file_cache&&) noexcept = default;
    file_cache(const file_cache&) = delete;
    file_cache& operator=(const file_cache&) = delete;
    ~file_cache() = default;

    // Files known (the index every other call takes).
    [[nodiscard]] std::size_t size() const noexcept { return files_.size(); }
    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
    [[nodiscard]] std::size_t open_count() const noexcept { return open_; }
    [[nodiscard]] const cached_file& file(std::size_t i) const { return files_.at(i); }

    // File i's reader, opened now if it is closed. Valid until the next call that opens a file.
    [[nodiscard]] const file_reader& reader(std::size_t i) {
        ++batch_id_;
        use(check_index(i));
        return *readers_[i];
    }

    // Opens the files the leading ops read: as many ops as their files fit in the cache at
    // once (at least one op; ops that read no file cost nothing). Returns how many ops that is;
    // sources() then holds those files' readers and mappings until the next call.
    [[nodiscard]] std::size_t open_for(std::span<const copy_op> ops) {
        ++batch_id_;
        std::size_t in_batch = 0;
        for (std::size_t k = 0; k < ops.size(); ++k) {
            const copy_op& op = ops[k];
            if (op.kind == copy_kind::zero || op.file >= files_.size()) continue;  // the engine
            if (batch_[op.file] == batch_id_) continue;  // says what is wrong with a bad op
            if (in_batch == capacity_) return k;
            ++in_batch;
            use(op.file);
        }
        return ops.size();
    }

    // By file index: the open files' readers and mappings; a null reader where closed.
    [[nodiscard]] std::span<const read_source> sources() const noexcept { return sources_; }

    // Closes every open file after checking that none changed while it was read
    // (file_reader::check_unchanged: io_error naming the first that did). Call it when the
    // copy is done and before anything is committed; the files of a window the cache evicted
    // earlier were checked then.
    void finish() {
        while (oldest_ != none) retire(oldest_);
    }
    // Closes every open file, unchecked (cleanup after an error).
    void close_all() noexcept {
        while (oldest_ != none) close(oldest_);
    }

private:
    static constexpr std::size_t none = std::numeric_limits<std::size_t>::max();

    std::size_t check_index(std::size_t i) const {
        if (i >= files_.size())
            throw error(errc::invalid_argument, "file " + std::to_string(i) + " of a cache of " +
                                                    std::to_string(files_.size()) + " files");
        return i;
    }

    // Marks file i used by the current batch and most recent, opening it (and closing the
    // least recently used beyond capacity) when it is closed.
    void use(std::size_t i) {
        batch_[i] = batch_id_;
        if (readers_[i]) {
            unlink(i);
            push_newest(i);
            return;
        }
        // Never the current batch's files: they are the newest, and a batch holds at most
        // capacity_ files.
        while (open_ >= capacity_ && oldest_ != none && batch_[oldest_] != batch_id_)
            retire(oldest_);
        read_options ro = read_;
        ro.expect = files_[i].expect;
        readers_[i].emplace(files_[i].path, ro);
        if (map_) {
            try {
                mappings_[i] = mapped_file(*readers_[i]);
            } catch (...) {
                readers_[i].reset();
                throw;
            }
        }
        sources_[i] = read_source{&*readers_[i], mappings_[i].bytes()};
        ++open_;
        push_newest(i);
    }

    // Closes file i once it is known not to have changed since it was opened: the bytes read
    // from it are of one version of it.
    void retire(std::size_t i) {
        readers_[i]->check_unchanged();
        close(i);
    }

    void close(std::size_t i) noexcept {
        unlink(i);
        sources_[i] = read_source{};
        mappings_[i] = mapped_file();
        readers_[i].reset();
        --open_;
    }

    void unlink(std::size_t i) noexcept {
        if (prev_[i] != none) next_[prev_[i]] = next_[i];
        if (next_[i] != none) prev_[next_[i]] = prev_[i];
        if (oldest_ == i) oldest_ = next_[i];
        if (newest_ == i) newest_ = prev_[i];
        prev_[i] = next_[i] = none;
    }
    void push_newest(std::size_t i) noexcept {
        prev_[i] = newest_;
        next_[i] = none;
        if (newest_ != none) next_[newest_] = i;
        newest_ = i;
        if (oldest_ == none) oldest_ = i;
    }

    std::vector<cached_file> files_;
    read_options read_;
    bool map_;
    std::size_t capacity_;
    std::vector<std::optional<file_reader>> readers_;
    std::vector<mapped_file> mappings_;
    std::vector<read_source> sources_;
    // The open files, least recently used first (a doubly linked list by file index).
    std::vector<std::size_t> prev_, next_;
    std::size_t oldest_ = none, newest_ = none;
    std::size_t open_ = 0;
    std::vector<std::uint64_t> batch_;  // the batch that last used each file
    std::uint64_t batch_id_ = 0;
};

// Runs `ops` on `engine` a window of files at a time: the files the next ops read are opened
// (as many as the cache holds), bound with the destinations, submitted and waited for, so a
// checkpoint of any number of files is read with a bounded number of them open. With
// `progress`, the engine's progress is reported over all the ops (and left set to it).
template <class Engine>
void run_windows(Engine& engine, file_cache& files, std::span<const copy_op> ops,
                 std::span<std::byte* const> destinations,
                 std::span<const std::uint64_t> destination_bytes,
                 const progress_callback& progress = {},
                 std::span<const converter> converters = {}) {
    std::uint64_t total = 0, offset = 0;
    if (progress)
        for (const copy_op& op : ops) total += op.bytes_written();
    do {
        const std::size_t n = files.open_for(ops);
        if (progress) {
            const bool whole = n == ops.size() && offset == 0;
            engine.set_progress(whole ? progress
                                      : progress_callback([progress, offset, total](std::uint64_t d,
                                                                                    std::uint64_t) {
                                            progress(offset + d, total);
                                        }));
            for (const copy_op& op : ops.first(n)) offset += op.bytes_written();
        }
        engine.bind(copy_targets{files.sources(), destinations, destination_bytes, converters});
        engine.submit(ops.first(n));
        engine.wait();
        ops = ops.subspan(n);
    } while (!ops.empty());
    if (progress) engine.set_progress(progress);
}

}  // namespace safeshard
