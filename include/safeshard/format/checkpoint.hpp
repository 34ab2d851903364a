// A checkpoint: one safetensors file, or shards named by model.safetensors.index.json, found
// from a path or a repository id in the Hugging Face cache. Every header is validated and
// every index entry checked against its shard at open; tensors are then found by name in O(1).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/name_hash.hpp"
#include "safeshard/format/config.hpp"
#include "safeshard/format/hf_cache.hpp"
#include "safeshard/format/index.hpp"
#include "safeshard/format/safetensors.hpp"
#include "safeshard/io/file_reader.hpp"

namespace safeshard {

struct checkpoint_options {
    // Strict (the default): a tensor present in a shard but absent from the index, a tensor
    // present in two shards, and a wrong metadata.total_size are errors (errc::invalid_index).
    // Lenient: they become warnings(), and the index decides which copy a name finds.
    bool strict = true;
    parse_options parse{};  // caps for every shard's header
    hf_cache_options hf{};  // revision and cache folder, for repository ids
    // Threads that map and validate the shards' headers (0: the hardware's, at most 8).
    // Opening is bound by page faults and system calls, which run in parallel.
    unsigned threads = 0;
};

// Something a lenient open let through.
struct checkpoint_warning {
    errc code = errc::invalid_index;
    std::string message;
    std::string file;  // relative to the checkpoint folder
    std::string tensor;
};

// One safetensors file of the checkpoint.
struct checkpoint_file {
    std::string name;            // relative to checkpoint::root(), as the index writes it
    std::filesystem::path path;  // root() / name
    file_view view;
    std::uint64_t tensor_bytes = 0;  // sum of its tensors' byte sizes

    // A reader of the file the view mapped: io_error where its path names another file now.
    [[nodiscard]] file_reader open_reader() const {
        return file_reader(path, read_options{.expect = view.version()});
    }
};

struct dtype_total {
    safeshard::dtype type;
    std::uint64_t tensors = 0;
    std::uint64_t elements = 0;
    std::uint64_t bytes = 0;
};

// A tensor and the file that holds it.
struct located_tensor {
    const checkpoint_file* file;
    tensor_view tensor;
};

class checkpoint {
public:
    // What was opened: a safetensors file (given, or the only one in a folder), or an index.
    enum class kind { single_file, indexed };

    // Opens a path (file or folder); when no such path exists and `path_or_repo` is a
    // repository id (`org/name`), the snapshot in the Hugging Face cache. An existing path
    // always wins. errc::checkpoint_not_found says what was looked for and what was found.
    [[nodiscard]] static checkpoint open(std::string_view path_or_repo,
                                         const checkpoint_options& options = {}) {
        namespace fs = std::filesystem;
        const fs::path p(path_or_repo);
        std::error_code ec;
        if (!path_or_repo.empty() && fs::exists(p, ec)) return open_path(p, options);
        if (is_repo_id(path_or_repo)) {
            hf_snapshot snap = [&] {
                try {
                    return resolve_hf_snapshot(path_or_repo, options.hf);
                } catch (const error& e) {
                    if (e.code() != errc::checkpoint_not_found) throw;
                    throw error(errc::checkpoint_not_found,
                                "no file or folder '" + std::string(path_or_repo) +
                                    "', and as a repository id: " + e.message(),
                                e.context());
                }
            }();
            checkpoint c = open_path(snap.snapshot_dir(), options, &snap);
            c.snapshot_ = std::move(snap);
            return c;
        }
        throw error(errc::checkpoint_not_found,
                    "no file or folder '" + std::string(path_or_repo) +
                        "' (and it is not a repository id of the form org/name)",
                    error_context{.file = std::string(path_or_repo)});
    }
    // Opens a path only (no cache lookup).
    [[nodiscard]] static checkpoint open_path(const std::filesystem::path& p,
                                              const checkpoint_options& options = {}) {
        return open_path(p, options, nullptr);
    }

    checkpoint(checkpoint&&) noexcept = default;
    checkpoint& operator=(checkpoint&&) noexcept = default;
    checkpoint(const checkpoint&) = delete;
    checkpoint& operator=(const checkpoint&) = delete;
    ~checkpoint() = default;

    [[nodiscard]] kind source_kind() const noexcept { return kind_; }
    // The folder file names are relative to.
    [[nodiscard]] const std::filesystem::path& root() const noexcept { return root_; }
    // Whether the path opened named one .safetensors file rather than a folder or an index:
    // then nothing else in its folder belongs to the checkpoint (writers copy no side files).
    [[nodiscard]] bool opened_from_file() const noexcept { return from_file_; }
    // The index, for an indexed checkpoint.
    [[nodiscard]] const safetensors_index* index() const noexcept {
        return index_ ? &*index_ : nullptr;
    }
    [[nodiscard]] const std::optional<std::filesystem::path>& index_path() const noexcept {
        return index_path_;
    }
    // The cache snapshot, when opened from a repository id.
    [[nodiscard]] const std::optional<hf_snapshot>& snapshot() const noexcept { return snapshot_; }

    // The files, sorted by name; each file's view iterates its tensors by offset.
    [[nodiscard]] std::span<const checkpoint_file> files() const noexcept { return files_; }
    // Tensors in all files (a lenient open may count a name twice).
    [[nodiscard]] std::size_t tensor_count() const noexcept { return tensor_count_; }
    // Sum of the byte sizes of every tensor in every file.
    [[nodiscard]] std::uint64_t total_bytes() const noexcept { return total_bytes_; }
    [[nodiscard]] std::span<const checkpoint_warning> warnings() const noexcept {
        return warnings_;
    }

    [[nodiscard]] std::optional<located_tensor> find(std::string_view name) const {
        // The index (or the only file) finds a name; the few names a lenient open let
        // through unindexed are in extras_.
        if (index_) {
            if (const auto shard = index_->shard_index_of(name)) {
                const checkpoint_file& f = files_[*shard];
                if (auto t = f.view.find(name)) return located_tensor{&f, *t};
            }
        } else if (!files_.empty()) {
            if (auto t = files_.front().view.find(name)) return located_tensor{&files_.front(), *t};
        }
        auto it = extras_.find(name);
        if (it == extras_.end()) return std::nullopt;
        const checkpoint_file& f = files_[it->second.first];
        return located_tensor{&f, f.view.at(it->second.second)};
    }
    [[nodiscard]] bool contains(std::string_view name) const { return find(name).has_value(); }
    // errc::tensor_not_found when absent.
    [[nodiscard]] located_tensor tensor(std::string_view name) const {
        if (auto t = find(name)) return *t;
        throw error(errc::tensor_not_found, "no tensor named '" + std::string(name) + "'",
                    error_context{.file = root_.string(), .tensor = std::string(name)});
    }

    // Every tensor, files sorted by name, tensors by offset within a file.
    [[nodiscard]] std::vector<located_tensor> tensors() const {
        std::vector<located_tensor> out;
        out.reserve(tensor_count());
        for (const auto& f : files_) {
            for (const tensor_view t : f.view) out.push_back(located_tensor{&f, t});
        }
        return out;
    }
    // Tensor count, elements and bytes per dtype, in dtype order.
    [[nodiscard]] std::vector<dtype_total> totals_by_dtype() const {
        std::vector<dtype_total> all;
        for (const dtype t : all_dtypes) all.push_back(dtype_total{t});
        for (const auto& f : files_) {
            for (const tensor_view t : f.view) {
                auto& row = all[static_cast<std::size_t>(t.dtype())];
                ++row.tensors;
                row.elements += t.element_count();
                row.bytes += t.byte_size();
            }
        }
        std::erase_if(all, [](const dtype_total& r) { return r.tensors == 0; });
        return all;
    }

    // config.json beside the shards, when there is one (anything there but a dangling link:
    // a FIFO or a folder named config.json is for load_config to refuse, not to skip).
    [[nodiscard]] std::optional<std::filesystem::path> config_path() const {
        std::error_code ec;
        auto p = root_ / "config.json";
        if (std::filesystem::exists(p, ec)) return p;
        return std::nullopt;
    }
    // config.json (its `fields`), with ModelOpt's hf_quant_config.json beside it where
    // config.json says no quantization_config (config_file::adopt_hf_quant_config).
    [[nodiscard]] std::optional<config_file> load_config(
        config_fields fields = config_fields::model) const {
        auto p = config_path();
        if (!p) return std::nullopt;
        config_file c = config_file::load(*p, fields);
        std::error_code ec;
        const auto side = root_ / hf_quant_config_file;
        if (!c.config().quantization && std::filesystem::exists(side, ec)) {
            const auto text =
                detail::read_json_file(side, config_file::max_file_size, errc::invalid_config);
            c.adopt_hf_quant_config(std::string_view(text.data(), text.size()), side.string());
        }
        return c;
    }

private:
    checkpoint() = default;

    [[noreturn]] static void not_found(const std::filesystem::path& where, std::string msg) {
        throw error(errc::checkpoint_not_found, msg, error_context{.file = where.string()});
    }

    static bool ends_with(std::string_view s, std::string_view suffix) noexcept {
        return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
    }

    static checkpoint open_path(const std::filesystem::path& p, const checkpoint_options& options,
                                const hf_snapshot* snap) {
        namespace fs = std::filesystem;
        std::error_code ec;
        const auto st = fs::status(p, ec);
        if (ec && ec != std::errc::no_such_file_or_directory) {
            throw system_error("stat", ec.value(), p.string());
        }
        if (fs::is_directory(st)) return open_folder(p, options, snap);
        if (!fs::exists(st)) not_found(p, "no file or folder '" + p.string() + "'");
        if (!fs::is_regular_file(st))
            not_found(p, "'" + p.string() + "' is " + detail::describe_path(p) +
                             ", not a safetensors file or an index");
        const std::string name = p.filename().string();
        if (ends_with(name, ".json")) return open_index(p, options, snap);
        checkpoint c;
        c.kind_ = kind::single_file;
        c.from_file_ = true;
        c.root_ = p.parent_path();
        c.add_files({name}, options, snap);
        return c;
    }

    static checkpoint open_folder(const std::filesystem::path& dir,
                                  const checkpoint_options& options, const hf_snapshot* snap) {
        namespace fs = std::filesystem;
        std::vector<std::string> indexes;
        std::vector<std::string> shards;
        std::error_code ec;
        fs::directory_iterator it(dir, ec);
        if (ec) throw system_error("opendir", ec.value(), dir.string());
        for (; it != fs::directory_iterator(); it.increment(ec)) {
            const std::string name = it->path().filename().string();
            if (ends_with(name, ".safetensors.index.json")) indexes.push_back(name);
            if (ends_with(name, ".safetensors")) shards.push_back(name);
        }
        if (ec) throw system_error("readdir", ec.value(), dir.string());
        std::sort(indexes.begin(), indexes.end());
        std::sort(shards.begin(), shards.end());

        if (std::find(indexes.begin(), indexes.end(), "model.safetensors.index.json") !=
            indexes.end()) {
            return open_index(dir / "model.safetensors.index.json", options, snap);
        }
        if (indexes.size() == 1) return open_index(dir / indexes[0], options, snap);
        auto list = [](const std::vector<std::string>& v) {
            std::string s;
            for (std::size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? ", " : "") + v[i];
            if (v.size() > 8) s += ", ... (" + std::to_string(v.size()) + " in all)";
            return s;
        };
        if (indexes.size() > 1) {
            not_found(dir, "folder '" + dir.string() +
                               "' has several indexes and no model.safetensors.index.json: " +
                               list(indexes) + "; open one of them");
        }
        std::string chosen;
        if (std::find(shards.begin(), shards.end(), "model.safetensors") != shards.end()) {
            chosen = "model.safetensors";
        } else if (shards.size() == 1) {
            chosen = shards[0];
        } else {
            std::string msg = "folder '" + dir.string() +
                              "' holds no checkpoint: looked for model.safetensors.index.json, "
                              "model.safetensors or a single *.safetensors file; found ";
            msg += shards.empty() ? std::string("no .safetensors file")
                                  : std::to_string(shards.size()) +
                                        " .safetensors files and no index (" + list(shards) + ")";
            if (snap != nullptr &&
                snap->status("model.safetensors.index.json") == hf_file_status::known_missing &&
                snap->status("model.safetensors") == hf_file_status::known_missing) {
                msg +=
                    "; the cache records that the repository has neither "
                    "model.safetensors.index.json nor model.safetensors";
            }
            not_found(dir, std::move(msg));
        }
        checkpoint c;
        c.kind_ = kind::single_file;
        c.root_ = dir;
        c.add_files({chosen}, options, snap);
        return c;
    }

    static checkpoint open_index(const std::filesystem::path& index_path,
                                 const checkpoint_options& options, const hf_snapshot* snap) {
        checkpoint c;
        c.kind_ = kind::indexed;
        c.root_ = index_path.parent_path();
        c.index_path_ = index_path;
        c.index_ = safetensors_index::load(index_path);
        const auto shards = c.index_->shards();
        c.add_files(std::vector<std::string>(shards.begin(), shards.end()), options, snap);
        c.check_against_index(options);
        return c;
    }

    // Maps and validates each file; `names` sorted. A missing file is the index's fault.
    void add_files(const std::vector<std::string>& names, const checkpoint_options& options,
                   const hf_snapshot* snap) {
        namespace fs = std::filesystem;
        files_.reserve(names.size());
        std::vector<fs::path> paths;
        paths.reserve(names.size());
        for (const auto& name : names) {
            fs::path path = root_ / name;
            std::error_code ec;
            if (!fs::is_regular_file(path, ec)) not_a_shard(name, path, snap);
            paths.push_back(std::move(path));
        }
        std::vector<file_view> views = open_views(paths, options);
        for (std::size_t i = 0; i < names.size(); ++i) {
            files_.push_back(checkpoint_file{names[i], paths[i], std::move(views[i]), 0});
            auto& f = files_.back();
            for (const tensor_view t : f.view) f.tensor_bytes += t.byte_size();
            total_bytes_ += f.tensor_bytes;
            tensor_count_ += f.view.size();
        }
    }

    // The error for a file to open that is not a regular file: the index's fault when it names
    // the file (invalid_index), else no checkpoint there (checkpoint_not_found); the message
    // says what the file is.
    [[noreturn]] void not_a_shard(const std::string& name, const std::filesystem::path& path,
                                  const hf_snapshot* snap) const {
        std::string what;
        if (snap != nullptr && !std::filesystem::exists(path)) {
            what = snap->status(name) == hf_file_status::known_missing
                       ? "recorded as missing from the repository (.no_exist marker)"
                       : "not in the cache snapshot (not downloaded, or its blob is gone)";
        } else {
            what = detail::describe_path(path);
            if (what == "nothing") what = "not there";
        }
        if (index_path_)
            throw error(errc::invalid_index,
                        "the index names shard '" + name + "', which is " + what,
                        error_context{.file = index_path_->string()});
        not_found(path, "'" + name + "' is " + what + ", not a safetensors file");
    }

    // Maps and validates the files on a few threads (each has its own reused parser). The
    // error reported is the first file's in name order, as a serial open would report it.
    static std::vector<file_view> open_views(const std::vector<std::filesystem::path>& paths,
                                             const checkpoint_options& options) {
        const std::size_t n = paths.size();
        unsigned threads = options.threads != 0
                               ? options.threads
                               : std::min(8u, std::max(1u, std::thread::hardware_concurrency()));
        threads = static_cast<unsigned>(std::min<std::size_t>(threads, (n + 3) / 4));
        std::vector<std::optional<file_view>> slots(n);
        std::vector<std::exception_ptr> errors(n);
        std::atomic<std::size_t> next{0};
        std::atomic<std::size_t> first_error{n};
        auto work = [&] {
            for (;;) {
                const std::size_t i = next.fetch_add(1, std::memory_order_relaxed);
                if (i >= n || i > first_error.load(std::memory_order_relaxed)) return;
                try {
                    slots[i].emplace(paths[i], options.parse);
                } catch (...) {
                    errors[i] = std::current_exception();
                    std::size_t cur = first_error.load();
                    while (i < cur && !first_error.compare_exchange_weak(cur, i)) {
                    }
                }
            }
        };
        if (threads <= 1) {
            work();
        } else {
            std::vector<std::jthread> pool;
            pool.reserve(threads - 1);
            try {
                for (unsigned k = 1; k < threads; ++k) pool.emplace_back(work);
            } catch (const std::system_error&) {
                // No more threads to be had: the ones started and this one do the work.
            }
            work();
        }  // joins
        if (const std::size_t e = first_error.load(); e < n) std::rethrow_exception(errors[e]);
        std::vector<file_view> views;
        views.reserve(n);
        for (auto& s : slots) views.push_back(std::move(*s));
        return views;
    }

    void warn_or_fail(const checkpoint_options& options, std::string msg, const std::string& file,
                      std::string_view tensor) {
        if (options.strict) {
            throw error(
                errc::invalid_index, msg,
                error_context{.file = (root_ / file).string(), .tensor = std::string(tensor)});
        }
        warnings_.push_back(
            checkpoint_warning{errc::invalid_index, std::move(msg), file, std::string(tensor)});
    }

    void check_against_index(const checkpoint_options& options) {
        const safetensors_index& ix = *index_;
        const std::string ix_name = index_path_->filename().string();
        // Every entry of the index is in the shard it names.
        std::uint64_t indexed_bytes = 0;
        for (const index_entry& e : ix.entries()) {
            const checkpoint_file& f = files_[e.shard];
            const auto t = f.view.find(e.name);
            if (!t) {
                std::string msg = ix_name + " puts tensor '" + std::string(e.name) + "' in '" +
                                  f.name + "', which does not hold it";
                for (const auto& other : files_) {
                    if (&other != &f && other.view.contains(e.name)) {
                        msg += " (it is in '" + other.name + "')";
                        break;
                    }
                }
                throw error(errc::invalid_index, msg,
                            error_context{.file = f.path.string(), .tensor = std::string(e.name)});
            }
            indexed_bytes += t->byte_size();
        }
        // Every tensor of every shard is in the index, and in that shard only. The entries
        // are distinct names, each found in its shard: when the counts agree there is nothing
        // else in the shards, and the per-tensor pass is skipped.
        if (tensor_count_ != ix.size()) {
            for (std::uint32_t fi = 0; fi < files_.size(); ++fi) {
                const checkpoint_file& f = files_[fi];
                for (std::uint32_t ti = 0; ti < f.view.size(); ++ti) {
                    const std::string_view name = f.view.at(ti).name();
                    const auto shard = ix.shard_index_of(name);
                    if (shard == fi) continue;
                    if (shard) {
                        warn_or_fail(options,
                                     "tensor '" + std::string(name) + "' is in two shards: '" +
                                         f.name + "' and '" + files_[*shard].name +
                                         "' (the index names the latter)",
                                     f.name, name);
                    } else {
                        warn_or_fail(options,
                                     "tensor '" + std::string(name) + "' is in shard '" + f.name +
                                         "' but not in " + ix_name,
                                     f.name, name);
                        extras_.emplace(name, std::pair{fi, ti});  // the first file wins
                    }
                }
            }
        }
        if (ix.total_size() && *ix.total_size() != indexed_bytes) {
            std::string msg = ix_name +
                              " says metadata.total_size = " + std::to_string(*ix.total_size()) +
                              ", but its tensors hold " + std::to_string(indexed_bytes) + " bytes";
            if (options.strict) {
                throw error(errc::invalid_index, msg, error_context{.file = index_path_->string()});
            }
            warnings_.push_back(
                checkpoint_warning{errc::invalid_index, std::move(msg), ix_name, {}});
        }
    }

    kind kind_ = kind::single_file;
    bool from_file_ = false;
    std::filesystem::path root_;
    std::optional<std::filesystem::path> index_path_;
    std::optional<safetensors_index> index_;
    std::optional<hf_snapshot> snapshot_;
    std::vector<checkpoint_file> files_;
    // Unindexed names a lenient open let through → (file, tensor position in file order).
    // Keys borrow the file_views' names.
    std::unordered_map<std::string_view, std::pair<std::uint32_t, std::uint32_t>, detail::name_hash>
        extras_;
    std::uint64_t total_bytes_ = 0;
    std::size_t tensor_count_ = 0;
    std::vector<checkpoint_warning> warnings_;
};

}  // namespace safeshard
