// Writes a set of tensors as a Hugging Face checkpoint folder, sharded as huggingface_hub
// shards it, streaming each tensor's bytes from a producer, the folder appearing complete or
// not at all.
#pragma once

#include <cerrno>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include <stdio.h>  // RENAME_EXCHANGE
#include <sys/stat.h>

#include "safeshard/core/error.hpp"
#include "safeshard/core/name_hash.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/io/atomic_directory.hpp"
#include "safeshard/io/atomic_file.hpp"
#include "safeshard/save/shard_plan.hpp"

namespace safeshard {

struct sharded_save_options {
    std::uint64_t max_shard_size = default_max_shard_size;
    // Replace an existing output folder, once the new one is complete.
    bool force = false;
    // Each shard's __metadata__ (huggingface_hub writes {"format": "pt"}).
    metadata_map shard_metadata{{"format", "pt"}};
    // When set, shard s's __metadata__ instead (s indexes the writer's plan().shards).
    std::function<metadata_map(std::size_t shard)> shard_metadata_of{};
};

namespace detail {

// Prefixes of the hidden siblings a forced replacement uses: `.NAME.new-<pid>` (the complete
// new folder, before the swap; the old one after it) and `.NAME.old-<pid>` (the old folder,
// where the file system cannot swap).
inline std::string replace_prefix(const std::filesystem::path& target, std::string_view kind) {
    return "." + target.filename().string() + "." + std::string(kind) + "-";
}

// Whether `.NAME.<kind>-<pid>` exists beside `target` (lstat: a link counts).
[[nodiscard]] inline bool replacement_exists(const std::filesystem::path& target,
                                             std::string_view kind, std::string_view pid) {
    struct stat st {};
    const auto p = parent_folder(target) / (replace_prefix(target, kind) + std::string(pid));
    return ::lstat(p.c_str(), &st) == 0;
}

// Removes what killed forced replacements of `target` left: unfinished staging folders
// always, finished ones and old folders moved aside too, except a `.NAME.new-<pid>` and
// `.NAME.old-<pid>` pair while `target` is absent: a swap without RENAME_EXCHANGE cut between
// its two renames, whose folders are the only copies (kept for a person to look at). A lone
// one without `target` was left just before or after a swap, and `target` deleted since.
inline void remove_stale_replacements(const std::filesystem::path& target) noexcept {
    try {
        struct stat st {};
        const bool target_exists = ::lstat(target.c_str(), &st) == 0;
        const std::string_view kinds[] = {"new", "old"};
        const std::string prefixes[] = {replace_prefix(target, kinds[0]),
                                        replace_prefix(target, kinds[1])};
        std::error_code ec;
        std::filesystem::directory_iterator it(parent_folder(target), ec), end;
        std::vector<std::filesystem::path> doomed;
        for (; !ec && it != end; it.increment(ec)) {
            const std::string name = it->path().filename().string();
            for (std::size_t k = 0; k < 2; ++k) {
                const std::string& prefix = prefixes[k];
                if (!std::string_view(name).starts_with(prefix)) continue;
                // ".NAME.new-<pid>" or its atomic_directory temp
                // ".NAME.new-<pid>.safeshard.tmp-<pid2>"
                std::string_view rest = std::string_view(name).substr(prefix.size());
                const auto cut = rest.find('.');
                const auto pid = parse_pid(rest.substr(0, cut));
                if (!pid || *pid == ::getpid() || !process_is_gone(*pid)) continue;
                if (!target_exists && cut == std::string_view::npos &&
                    replacement_exists(target, kinds[1 - k], rest))
                    continue;
                doomed.push_back(it->path());
            }
        }
        for (const auto& p : doomed) std::filesystem::remove_all(p, ec);
    } catch (...) {
    }
}

}  // namespace detail

// A folder that appears complete or not at all: fill staging_folder(), then commit(). The
// target must not exist, unless `force` (then it must be a folder, and it is replaced by the
// new one only after the new one is complete: swapped with renameat2(RENAME_EXCHANGE), or where
// the file system cannot, moved aside, the new one renamed in, the old one removed). Destroyed
// uncommitted, it removes what was written.
class staged_folder {
public:
    staged_folder(std::filesystem::path target, bool force)
        : target_(normalize(std::move(target))), force_(force), folder_(staging_target()) {}

    staged_folder(const staged_folder&) = delete;
    staged_folder& operator=(const staged_folder&) = delete;

    [[nodiscard]] const std::filesystem::path& target() const noexcept { return target_; }
    // The temporary folder being filled.
    [[nodiscard]] const std::filesystem::path& staging_folder() const noexcept {
        return folder_.path();
    }
    // Whether commit() replaces an existing folder.
    [[nodiscard]] bool replacing() const noexcept { return replacing_; }

    // Makes the complete folder appear at target() (fsyncing every file first).
    void commit() {
        folder_.commit();
        if (!replacing_) return;
        const auto staged = folder_.target();
        if (detail::sys::rename(staged.c_str(), target_.c_str(), RENAME_EXCHANGE) == 0) {
            // `staged` now holds the old folder.
            std::error_code ec;
            (void)detail::fsync_directory(detail::parent_folder(target_).c_str());
            std::filesystem::remove_all(staged, ec);
            return;
        }
        const int e = errno;
        if (e != EINVAL && e != ENOSYS && e != EOPNOTSUPP) {
            std::error_code ec;
            std::filesystem::remove_all(staged, ec);
            throw system_error("swap of the new folder with the old one", e, target_.string());
        }
        // No RENAME_EXCHANGE here: move the old folder aside, the new one in, drop the old.
        const auto aside = detail::parent_folder(target_) /
                           (detail::replace_prefix(target_, "old") + std::to_string(::getpid()));
        if (detail::sys::rename(target_.c_str(), aside.c_str()) != 0) {
            const int e2 = errno;
            std::error_code ec;
            std::filesystem::remove_all(staged, ec);
            throw system_error("move of the old folder aside", e2, target_.string());
        }
        if (detail::sys::rename(staged.c_str(), target_.c_str()) != 0) {
            const int e3 = errno;
            (void)detail::sys::rename(aside.c_str(), target_.c_str());  // put the old one back
            std::error_code ec;
            std::filesystem::remove_all(staged, ec);
            throw system_error("rename of the new folder into place", e3, target_.string());
        }
        (void)detail::fsync_directory(detail::parent_folder(target_).c_str());
        std::error_code ec;
        std::filesystem::remove_all(aside, ec);
    }

private:
    static std::filesystem::path normalize(std::filesystem::path p) {
        if (!p.has_filename()) p = p.parent_path();
        return p;
    }

    // Where atomic_directory builds the folder: the target itself, or for a forced replacement
    // of an existing folder the hidden sibling `.NAME.new-<pid>`, swapped in by commit().
    std::filesystem::path staging_target() {
        (void)atomic_directory::remove_stale(target_);
        detail::remove_stale_replacements(target_);
        struct stat st {};
        if (::lstat(target_.c_str(), &st) != 0) {
            if (errno != ENOENT) throw detail::errno_error("stat", target_);
            return target_;
        }
        if (!force_)
            throw error(errc::io_error,
                        "the output folder already exists (the options' force = true replaces it)",
                        {.file = target_.string(), .sys_errno = EEXIST});
        if (!S_ISDIR(st.st_mode))
            throw error(errc::io_error, "the output exists and is not a folder; not replaced",
                        {.file = target_.string(), .sys_errno = ENOTDIR});
        replacing_ = true;
        return detail::parent_folder(target_) /
               (detail::replace_prefix(target_, "new") + std::to_string(::getpid()));
    }

    std::filesystem::path target_;
    bool force_ = false;
    bool replacing_ = false;
    atomic_directory folder_;
};

// The output folder of a save: shards and index go in through write_shards(), other files
// (config.json...) may be added to staging_folder(), and commit() makes the folder appear.
// Until commit() nothing is visible at `target`; the destructor of an uncommitted writer
// removes everything it wrote. The target must not exist, unless `force` (then it must be a
// folder, and it is replaced by the new one only after the new one is complete: swapped with
// renameat2(RENAME_EXCHANGE), or where the file system cannot, moved aside, the new one
// renamed in, the old one removed).
class sharded_writer {
public:
    sharded_writer(std::filesystem::path target, std::vector<tensor_info> tensors,
                   sharded_save_options options = {})
        : target_(normalize(std::move(target))),
          tensors_(std::move(tensors)),
          options_(std::move(options)),
          plan_(plan_shards(tensors_, options_.max_shard_size)),
          folder_(target_, options_.force) {}

    sharded_writer(const sharded_writer&) = delete;
    sharded_writer& operator=(const sharded_writer&) = delete;

    [[nodiscard]] const std::filesystem::path& target() const noexcept { return target_; }
    [[nodiscard]] std::span<const tensor_info> tensors() const noexcept { return tensors_; }
    [[nodiscard]] const shard_plan& plan() const noexcept { return plan_; }
    // The temporary folder being filled; add other files here before commit().
    [[nodiscard]] const std::filesystem::path& staging_folder() const noexcept {
        return folder_.staging_folder();
    }
    // Whether commit() replaces an existing folder.
    [[nodiscard]] bool replacing() const noexcept { return folder_.replacing(); }

    // Writes every shard, then the index when there are several. For each tensor, in each
    // shard's file order (safetensors' order: dtype, then name), calls
    // `produce(std::size_t tensor_index, safetensors_writer& w)`, which must write exactly the
    // tensor's bytes with w.write(...) (invalid_argument otherwise).
    template <class Producer>
    void write_shards(Producer&& produce) {
        if (written_)
            throw error(errc::invalid_argument, "write_shards was already called",
                        {.file = target_.string()});
        written_ = true;
        std::unordered_map<std::string_view, std::size_t, detail::name_hash> index_of;
        index_of.reserve(tensors_.size());
        for (std::size_t i = 0; i < tensors_.size(); ++i) index_of.emplace(tensors_[i].name, i);
        for (std::size_t s = 0; s < plan_.shards.size(); ++s) {
            const shard_file& shard = plan_.shards[s];
            std::vector<tensor_info> infos;
            infos.reserve(shard.tensors.size());
            for (const std::size_t i : shard.tensors) infos.push_back(tensors_[i]);
            const auto file = staging_folder() / shard.file_name;
            safetensors_writer w(file, std::move(infos),
                                 options_.shard_metadata_of ? options_.shard_metadata_of(s)
                                                            : options_.shard_metadata);
            for (const auto& t : w.plan()) {
                const std::uint64_t before = w.data_written();
                produce(index_of.at(t.name), w);
                if (w.data_written() - before != t.byte_size())
                    throw error(errc::invalid_argument,
                                "the producer wrote " + std::to_string(w.data_written() - before) +
                                    " bytes, expected " + std::to_string(t.byte_size()),
                                error_context{.file = file.string(),
                                              .tensor = t.name,
                                              .offset = std::nullopt,
                                              .sys_errno = 0});
            }
            w.commit();
        }
        if (plan_.is_sharded()) {
            atomic_file index(staging_folder() / "model.safetensors.index.json");
            const std::string json = serialize_index_json(plan_, tensors_);
            index.write(std::as_bytes(std::span(json)));
            index.commit();
        }
    }

    // Makes the complete folder appear at target() (fsyncing every file first).
    void commit() {
        if (!written_)
            throw error(errc::invalid_argument, "commit before write_shards",
                        {.file = target_.string()});
        folder_.commit();
    }

private:
    static std::filesystem::path normalize(std::filesystem::path p) {
        if (!p.has_filename()) p = p.parent_path();
        return p;
    }

    std::filesystem::path target_;
    std::vector<tensor_info> tensors_;
    sharded_save_options options_;
    shard_plan plan_;
    staged_folder folder_;
    bool written_ = false;
};

namespace detail {
// Whether `child` is `parent` or lies inside it, component by component (both absolute and
// resolved: no links, no `..`).
[[nodiscard]] inline bool path_within(const std::filesystem::path& child,
                                      const std::filesystem::path& parent) {
    auto c = child.begin();
    for (auto p = parent.begin(); p != parent.end(); ++p, ++c) {
        if (p->empty()) continue;  // trailing separator
        if (c == child.end() || *c != *p) return false;
    }
    return true;
}
}  // namespace detail

// Refuses (invalid_argument) an output folder that is the input folder or lies inside it, and
// an input inside the output (a forced replacement would delete it), also an input file that
// is a link into the output (Hugging Face cache snapshots link into blobs/). Paths are compared
// after resolving symlinks and `..` of the parts that exist.
inline void check_output_location(const std::filesystem::path& output,
                                  const std::filesystem::path& input,
                                  std::span<const std::filesystem::path> input_files = {}) {
    if (output.empty())
        throw error(errc::invalid_argument, "no output folder given (an empty path)");
    std::error_code ec;
    const auto out = std::filesystem::weakly_canonical(std::filesystem::absolute(output, ec), ec);
    if (ec) throw system_error("resolve output path", ec.value(), output.string());
    const auto in = std::filesystem::weakly_canonical(std::filesystem::absolute(input, ec), ec);
    if (ec) throw system_error("resolve input path", ec.value(), input.string());
    const auto inside = detail::path_within;
    if (inside(out, in))
        throw error(errc::invalid_argument,
                    "the output folder '" + out.string() + "' is the input folder or inside it",
                    {.file = output.string()});
    // A folder cannot be renamed away while it is this process's working folder's path ("."),
    // and replacing an ancestor would pull the folder out from under the caller: refused
    // before anything is written.
    if (const auto cwd = std::filesystem::current_path(ec); !ec && inside(cwd, out))
        throw error(errc::invalid_argument,
                    "the output folder '" + out.string() +
                        "' is the current folder or holds it; name a new folder",
                    {.file = output.string()});
    if (inside(in, out))
        throw error(errc::invalid_argument,
                    "the input '" + in.string() + "' lies inside the output folder",
                    {.file = output.string()});
    for (const auto& f : input_files) {
        const auto real = std::filesystem::weakly_canonical(std::filesystem::absolute(f, ec), ec);
        if (ec) throw system_error("resolve input path", ec.value(), f.string());
        if (inside(real, out))
            throw error(errc::invalid_argument,
                        "the input file '" + f.string() + "' is '" + real.string() +
                            "', inside the output folder (replacing the folder would delete it)",
                        {.file = output.string()});
    }
}

// Writes `tensors` as a checkpoint folder at `target` in one call (see sharded_writer).
template <class Producer>
void save_sharded(const std::filesystem::path& target, std::vector<tensor_info> tensors,
                  Producer&& produce, const sharded_save_options& options = {}) {
    sharded_writer w(target, std::move(tensors), options);
    w.write_shards(std::forward<Producer>(produce));
    w.commit();
}

}  // namespace safeshard
