// The Hugging Face hub cache, offline: `org/name` (+ revision) → a snapshot folder, resolved
// as huggingface_hub does. Never touches the network.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "safeshard/core/error.hpp"
#include "safeshard/format/index.hpp"
#include "safeshard/format/json_text.hpp"

namespace safeshard {

// The environment variables that place the cache; unset or empty fields are absent.
struct hf_environment {
    std::optional<std::string> hf_hub_cache;           // HF_HUB_CACHE
    std::optional<std::string> huggingface_hub_cache;  // HUGGINGFACE_HUB_CACHE (legacy)
    std::optional<std::string> hf_home;                // HF_HOME
    std::optional<std::string> xdg_cache_home;         // XDG_CACHE_HOME
    std::optional<std::string> home;                   // HOME

    [[nodiscard]] static hf_environment from_process() {
        auto get = [](const char* name) -> std::optional<std::string> {
            const char* v = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): read once
            if (v == nullptr || *v == '\0') return std::nullopt;
            return std::string(v);
        };
        return {get("HF_HUB_CACHE"), get("HUGGINGFACE_HUB_CACHE"), get("HF_HOME"),
                get("XDG_CACHE_HOME"), get("HOME")};
    }
};

namespace detail {
// `~` and `~/...` expanded against HOME, as os.path.expanduser does.
[[nodiscard]] inline std::filesystem::path expand_user(const std::string& p,
                                                       const hf_environment& env) {
    if (env.home && (p == "~" || p.starts_with("~/"))) return *env.home + p.substr(1);
    return p;
}
}  // namespace detail

// The hub cache folder: HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, else
// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
[[nodiscard]] inline std::filesystem::path hf_hub_cache_dir(
    const hf_environment& env = hf_environment::from_process()) {
    if (env.hf_hub_cache) return detail::expand_user(*env.hf_hub_cache, env);
    if (env.huggingface_hub_cache) return detail::expand_user(*env.huggingface_hub_cache, env);
    if (env.hf_home) return detail::expand_user(*env.hf_home, env) / "hub";
    if (env.xdg_cache_home) {
        return detail::expand_user(*env.xdg_cache_home, env) / "huggingface" / "hub";
    }
    return std::filesystem::path(env.home.value_or("")) / ".cache" / "huggingface" / "hub";
}

// `name` or `org/name` with huggingface_hub's rules: letters, digits, `-`, `_`, `.`; no `--`
// or `..`; not starting or ending with `-` or `.`; at most 96 characters per part.
[[nodiscard]] constexpr bool is_repo_id(std::string_view id) noexcept {
    const std::size_t slash = id.find('/');
    if (slash != std::string_view::npos && id.find('/', slash + 1) != std::string_view::npos) {
        return false;
    }
    auto part_ok = [](std::string_view p) {
        if (p.empty() || p.size() > 96) return false;
        if (p.front() == '-' || p.front() == '.' || p.back() == '-' || p.back() == '.') {
            return false;
        }
        for (std::size_t i = 0; i < p.size(); ++i) {
            const char c = p[i];
            const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                            (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
            if (!ok) return false;
            if (i > 0 && (c == '-' || c == '.') && p[i - 1] == c) return false;
        }
        return true;
    };
    if (slash == std::string_view::npos) return part_ok(id);
    return part_ok(id.substr(0, slash)) && part_ok(id.substr(slash + 1));
}

[[nodiscard]] constexpr bool is_commit_hash(std::string_view s) noexcept {
    if (s.size() != 40) return false;
    for (const char c : s) {
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return true;
}

struct hf_cache_options {
    std::string revision = "main";      // a ref (branch, tag) or a 40-hex commit
    std::filesystem::path cache_dir{};  // empty: hf_hub_cache_dir()
};

enum class hf_file_status { present, known_missing, not_cached };

// A resolved snapshot of one repository in the cache.
class hf_snapshot {
public:
    hf_snapshot(std::string repo_id, std::string revision, std::string commit,
                std::filesystem::path repo_dir)
        : repo_id_(std::move(repo_id)),
          revision_(std::move(revision)),
          commit_(std::move(commit)),
          repo_dir_(std::move(repo_dir)),
          snapshot_dir_(repo_dir_ / "snapshots" / commit_) {}

    [[nodiscard]] const std::string& repo_id() const noexcept { return repo_id_; }
    [[nodiscard]] const std::string& revision() const noexcept { return revision_; }
    [[nodiscard]] const std::string& commit() const noexcept { return commit_; }
    [[nodiscard]] const std::filesystem::path& repo_dir() const noexcept { return repo_dir_; }
    [[nodiscard]] const std::filesystem::path& snapshot_dir() const noexcept {
        return snapshot_dir_;
    }

    // Whether `file` (relative, e.g. "config.json") is in the snapshot, is known missing on
    // the Hub (a `.no_exist/<commit>/<file>` marker), or simply not downloaded. A snapshot
    // symlink whose blob is gone counts as not cached.
    [[nodiscard]] hf_file_status status(std::string_view file) const {
        if (!is_safe_relative_path(file)) return hf_file_status::not_cached;
        std::error_code ec;
        if (std::filesystem::is_regular_file(snapshot_dir_ / file, ec)) {
            return hf_file_status::present;
        }
        if (std::filesystem::is_regular_file(repo_dir_ / ".no_exist" / commit_ / file, ec)) {
            return hf_file_status::known_missing;
        }
        return hf_file_status::not_cached;
    }
    // The file's path in the snapshot; errc::checkpoint_not_found naming what was tried.
    [[nodiscard]] std::filesystem::path file(std::string_view file) const {
        const auto p = snapshot_dir_ / file;
        switch (status(file)) {
            case hf_file_status::present: return p;
            case hf_file_status::known_missing:
                throw error(errc::checkpoint_not_found,
                            "'" + std::string(file) + "' does not exist in " + repo_id_ + "@" +
                                commit_ + " (the cache has a .no_exist marker for it)",
                            error_context{.file = p.string()});
            case hf_file_status::not_cached: break;
        }
        throw error(errc::checkpoint_not_found,
                    "'" + std::string(file) + "' of " + repo_id_ + "@" + commit_ +
                        " is not in the cache (not downloaded, or its blob is missing)",
                    error_context{.file = p.string()});
    }

private:
    std::string repo_id_;
    std::string revision_;
    std::string commit_;
    std::filesystem::path repo_dir_;
    std::filesystem::path snapshot_dir_;
};

// The cache folder of a model repository: <cache>/models--org--name.
[[nodiscard]] inline std::filesystem::path hf_repo_dir(const std::filesystem::path& cache_dir,
                                                       std::string_view repo_id) {
    std::string folder = "models--";
    for (const char c : repo_id) {
        if (c == '/') {
            folder += "--";
        } else {
            folder += c;
        }
    }
    return cache_dir / folder;
}

// Resolves `repo_id` at `options.revision` to a snapshot folder that exists.
// errc::invalid_argument for a malformed repo id or revision; errc::checkpoint_not_found,
// naming every path tried, when the cache lacks the repository, the ref or the snapshot.
[[nodiscard]] inline hf_snapshot resolve_hf_snapshot(std::string_view repo_id,
                                                     const hf_cache_options& options = {}) {
    namespace fs = std::filesystem;
    if (!is_repo_id(repo_id)) {
        throw error(errc::invalid_argument,
                    "'" + std::string(repo_id) + "' is not a repository id (org/name)");
    }
    const std::string& revision = options.revision;
    if (!is_safe_relative_path(revision)) {
        throw error(errc::invalid_argument, "'" + revision + "' is not a revision name");
    }
    const fs::path cache = options.cache_dir.empty() ? hf_hub_cache_dir() : options.cache_dir;
    const fs::path repo = hf_repo_dir(cache, repo_id);
    std::error_code ec;
    if (!fs::is_directory(repo, ec)) {
        throw error(errc::checkpoint_not_found,
                    "'" + std::string(repo_id) + "' is not in the Hugging Face cache (looked for " +
                        repo.string() + "; no network access is attempted)",
                    error_context{.file = repo.string()});
    }
    const fs::path ref = repo / "refs" / revision;
    std::string commit;
    if (fs::exists(ref, ec)) {
        // Read as every input file is (a FIFO or a folder there is refused, never waited on).
        const auto text = detail::json_file(ref, 4096, errc::checkpoint_not_found).read();
        commit.assign(text.data(), text.size());
        const auto first = commit.find_first_not_of(" \t\r\n");
        const auto last = commit.find_last_not_of(" \t\r\n");
        commit =
            first == std::string::npos ? std::string{} : commit.substr(first, last - first + 1);
        if (!is_safe_relative_path(commit) || commit.find('/') != std::string::npos) {
            throw error(errc::checkpoint_not_found,
                        "ref '" + revision + "' holds '" + commit + "', not a commit",
                        error_context{.file = ref.string()});
        }
    } else if (is_commit_hash(revision)) {
        commit = revision;
    } else {
        throw error(errc::checkpoint_not_found,
                    "revision '" + revision + "' of " + std::string(repo_id) +
                        " is not in the cache (looked for " + ref.string() +
                        "; not a 40-hex commit either)",
                    error_context{.file = ref.string()});
    }
    hf_snapshot snap(std::string(repo_id), revision, commit, repo);
    if (!fs::is_directory(snap.snapshot_dir(), ec)) {
        throw error(errc::checkpoint_not_found,
                    "revision '" + revision + "' of " + std::string(repo_id) + " is commit " +
                        commit + ", whose snapshot is not in the cache (looked for " +
                        snap.snapshot_dir().string() + ")",
                    error_context{.file = snap.snapshot_dir().string()});
    }
    return snap;
}

}  // namespace safeshard
