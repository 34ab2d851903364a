// The commands of the safeshard tool; each lives in its own file.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <optional>
#include <string>

#include <fmt/core.h>

#include "exit_code.hpp"
#include "output.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/shard/expert_parallel.hpp"
#include "safeshard/shard/layout.hpp"

namespace safeshard::cli {

// What every command that reads a checkpoint takes.
struct checkpoint_args {
    std::string target;  // a path, or org/name in the Hugging Face cache
    std::string revision = "main";
    std::string cache_dir;  // empty: from the environment
    bool lenient = false;
};

[[nodiscard]] inline checkpoint open_checkpoint(const checkpoint_args& a) {
    checkpoint_options o;
    o.strict = !a.lenient;
    o.hf.revision = a.revision;
    o.hf.cache_dir = a.cache_dir;
    auto c = checkpoint::open(a.target, o);
    check_interrupted();
    for (const auto& w : c.warnings()) {
        fmt::print(stderr, "safeshard: warning: {} (file '{}'{}{})\n", escape_controls(w.message),
                   escape_controls(w.file), w.tensor.empty() ? "" : ", tensor '",
                   w.tensor.empty() ? "" : escape_controls(w.tensor) + "'");
    }
    return c;
}

// An --out that exists is a usage error (exit 2) without --force, found before the input is
// read. (The writer checks again when it makes the folder: one may appear in between.)
inline void check_out_is_new(const std::string& out, bool force) {
    struct stat st {};
    if (force || out.empty() || ::lstat(out.c_str(), &st) != 0) return;
    throw error(errc::invalid_argument,
                "--out '" + out + "' already exists; pass --force to replace it (the old " +
                    "folder is replaced once the new one is complete)",
                error_context{.file = out});
}

// The note for a file of the input folder that a writing command did not copy.
inline void note_not_copied(const std::filesystem::path& file, std::string_view reason) {
    fmt::print(stderr, "safeshard: note: not copying {}: {}\n",
               escape_controls(file.filename().string()), escape_controls(reason));
}

// The value of --kv-convention; an error naming the option for anything else.
[[nodiscard]] inline kv_convention kv_convention_arg(const std::string& s) {
    const auto kv = parse_kv_convention(s);
    if (!kv)
        throw error(errc::invalid_argument,
                    "--kv-convention must be contiguous or interleaved, not '" + s + "'");
    return *kv;
}

// The value of --dtype for convert and export: a dtype a policy converts to (empty: keep each
// tensor's); an error naming the option for anything else.
[[nodiscard]] inline std::optional<dtype> policy_dtype_arg(const std::string& s) {
    if (s.empty()) return std::nullopt;
    const std::optional<dtype> to = parse_dtype_ignore_case(s);
    if (!to || !converted_by_policy(*to))
        throw error(errc::invalid_argument,
                    "--dtype must be one of " + policy_dtypes_text() + "; got '" + s + "'");
    return to;
}

// The options of a mixture of experts that plan and export share.
struct experts_args {
    std::uint32_t ep = 1;              // expert groups
    std::string placement = "linear";  // or round_robin
    bool include_mtp = false;          // the multi-token prediction layers
    bool fuse_experts = false;         // w13_weight / w2_weight per layer
};

// --ep and --expert-placement for a world of --tp ranks; usage errors naming the options (the
// library checks the world again, in its own words).
[[nodiscard]] inline expert_parallel expert_parallel_arg(const experts_args& a,
                                                         std::uint32_t world) {
    const auto placement = parse_expert_placement(a.placement);
    if (!placement)
        throw error(errc::invalid_argument,
                    "--expert-placement must be linear or round_robin, not '" + a.placement + "'");
    if (a.ep == 0 || a.ep > world || world % a.ep != 0)
        throw error(errc::invalid_argument, "--ep " + std::to_string(a.ep) +
                                                " does not divide --tp " + std::to_string(world) +
                                                " (it must be between 1 and --tp, and divide it)");
    return {.ep = a.ep, .placement = *placement};
}

// "1.50 GiB"
[[nodiscard]] inline std::string human_bytes(std::uint64_t n) {
    constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    if (n < 1024) return fmt::format("{} B", n);
    double v = static_cast<double>(n);
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        ++u;
    }
    return fmt::format("{:.2f} {}", v, units[u]);
}

struct inspect_args {
    checkpoint_args ckpt;
    bool json = false;
};
int run_inspect(const inspect_args& a, output& out);

struct verify_args {
    checkpoint_args ckpt;
    bool skip_config = false;
};
int run_verify(const verify_args& a, output& out);

struct convert_args {
    checkpoint_args ckpt;
    std::string out;
    std::string dtype;  // empty: keep each tensor's
    std::string max_shard_size = "5GB";
    bool force = false;
};
int run_convert(const convert_args& a, output& out);
struct plan_args {
    checkpoint_args ckpt;
    std::uint32_t world = 0;
    experts_args experts{};
    std::optional<std::uint32_t> rank{};
    std::string arch{};           // empty: config.json's model_type
    std::string kv_convention{};  // empty: contiguous
    std::string dtype{};          // empty: keep each tensor's dtype
    bool allow_quantized = false;
    bool json = false;
};
int run_plan(const plan_args& a, output& out);

struct export_args {
    checkpoint_args ckpt;
    std::uint32_t world = 0;
    experts_args experts{};
    std::string out;
    std::string dtype{};          // empty: keep each tensor's
    std::string arch{};           // empty: config.json's model_type
    std::string kv_convention{};  // empty: contiguous
    std::string max_shard_size = "5GB";
    bool allow_quantized = false;
    bool force = false;
};
int run_export(const export_args& a, output& out);

struct merge_args {
    std::string dir;
    std::string out;
    std::string max_shard_size = "5GB";
    bool force = false;
};
int run_merge(const merge_args& a, output& out);

}  // namespace safeshard::cli
