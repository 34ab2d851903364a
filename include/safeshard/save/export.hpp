// Per-rank export: for a world of N, each rank's tensors, exactly as the loader cuts them and
// under the same names, written as a checkpoint of its own in OUT/rank-00000, OUT/rank-00001,
// ... (sharded as a sharded save, config.json beside), each shard carrying the export metadata
// that undoes the cut. OUT appears complete or not at all. A load_plan run against files.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <sys/stat.h>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/clock.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/name_hash.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/export_metadata_reader.hpp"
#include "safeshard/format/export_metadata_writer.hpp"
#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/io/atomic_file.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/load/engine.hpp"
#include "safeshard/load/file_cache.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"
#include "safeshard/save/sharded_writer.hpp"
#include "safeshard/shard/architectures/registry.hpp"
#include "safeshard/shard/schema.hpp"

namespace safeshard {

struct export_options {
    std::uint32_t world = 1;
    // A mixture of experts: each rank folder holds its expert group's experts only, cut
    // within the group (shard/expert_parallel.hpp); merge puts each back whole.
    expert_parallel experts{};
    // The plan of every rank: dtype (policy, per parameter), KV convention and other schema
    // options (plan.schema), architecture. strict does not apply: checkpoint tensors outside
    // the schema pass through, replicated.
    plan_options plan{};
    std::uint64_t max_shard_size = default_max_shard_size;
    bool force = false;  // replace an existing OUT once the new one is complete
    host_engine_options engine{};
    // Read the next tensor while this one is written (two buffers of the largest tensor).
    // Off by default: on our 2-core machines it gained nothing (BENCHMARKS.md); measure it on
    // yours.
    bool overlap_io = false;
    // Bytes written so far of all ranks, and the total.
    progress_callback progress{};
    // Called between tensors; throw from it to stop (nothing is left at OUT).
    std::function<void()> cancel_point{};
};

// A file of a checkpoint folder that copy_side_files left out, and why.
struct skipped_side_file {
    std::filesystem::path path;  // as listed in the folder
    std::string reason;          // "a link to '/etc/passwd', outside the checkpoint folder"
};

struct export_report {
    std::uint32_t world = 1;
    std::uint64_t tensors = 0;  // written, all ranks together (tied aliases are not written)
    // Of them, quantized weights written dequantized (a float dtype asked of them), their
    // scales not written.
    std::uint64_t dequantized = 0;
    std::uint64_t shard_files = 0;
    std::uint64_t side_files = 0;  // config.json and the folder's other small files, per rank
    std::vector<skipped_side_file> skipped_side_files{};  // the folder's files not copied
    // Checkpoint tensors left out on request (ignore_rule::left_out: the multi-token
    // prediction layers unless schema_options::multi_token_prediction), in no rank folder.
    std::uint64_t left_out = 0;
    std::uint64_t bytes_read = 0;
    std::uint64_t bytes_written = 0;
    bool replaced = false;
    double seconds = 0;
};

// How a written checkpoint's config.json differs from its input's: the dtype its
// floating-point tensors now have, and, once its quantized weights are written dequantized,
// no quantization_config.
struct config_changes {
    std::optional<safeshard::dtype> dtype{};
    bool dequantized = false;

    [[nodiscard]] bool changed() const noexcept { return dtype || dequantized; }
};

namespace detail {

[[nodiscard]] inline bool is_weights_file(std::string_view name) noexcept {
    for (const std::string_view ext :
         {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth",
          ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx"})
        if (name.ends_with(ext)) return true;
    return false;
}

[[nodiscard]] inline std::optional<std::string_view> torch_dtype_name(dtype t) noexcept {
    switch (t) {
        case dtype::f16: return "float16";
        case dtype::bf16: return "bfloat16";
        case dtype::f32: return "float32";
        case dtype::f64: return "float64";
        default: return std::nullopt;
    }
}

[[nodiscard]] constexpr bool json_space(char c) noexcept {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

// One past the JSON string token beginning at text[begin] (a '"'), escapes skipped; the text's
// end where it is not closed.
[[nodiscard]] constexpr std::size_t json_string_end(std::string_view text,
                                                    std::size_t begin) noexcept {
    std::size_t j = begin + 1;
    while (j < text.size() && text[j] != '"') j += text[j] == '\\' ? 2 : 1;
    return std::min(j + 1, text.size());
}

// The first byte at or after j that is no JSON white space.
[[nodiscard]] constexpr std::size_t json_skip_space(std::string_view text, std::size_t j) noexcept {
    while (j < text.size() && json_space(text[j])) ++j;
    return j;
}

// config.json's text with the value of every "torch_dtype" / "dtype" key that names a float
// dtype replaced by `to`'s name; every other byte kept. The text is walked as JSON tokens, so
// a key-like text inside a string value is not touched.
[[nodiscard]] inline std::string config_with_dtype(std::string_view text, dtype to) {
    const auto target = torch_dtype_name(to);
    if (!target) return std::string(text);
    std::string out;
    out.reserve(text.size() + 16);
    std::size_t i = 0;
    auto read_string = [&](std::size_t begin) { return json_string_end(text, begin); };
    auto skip_space = [&](std::size_t j) { return json_skip_space(text, j); };
    while (i < text.size()) {
        if (text[i] != '"') {
            out += text[i++];
            continue;
        }
        const std::size_t end = read_string(i);
        const std::string_view token = text.substr(i, end - i);
        out += token;
        i = end;
        if (token != "\"torch_dtype\"" && token != "\"dtype\"") continue;
        std::size_t j = skip_space(i);
        if (j >= text.size() || text[j] != ':') continue;
        j = skip_space(j + 1);
        if (j >= text.size() || text[j] != '"') continue;
        const std::size_t vend = read_string(j);
        const std::string_view value = text.substr(j + 1, vend - j - 2);
        static constexpr std::string_view floats[] = {"float16", "bfloat16", "float32", "float64",
                                                      "half",    "float",    "double"};
        if (std::find(std::begin(floats), std::end(floats), value) == std::end(floats)) continue;
        out += text.substr(i, j - i);
        out += '"';
        out += *target;
        out += '"';
        i = vend;
    }
    return out;
}

// Where a member of a JSON object's text lies: its key's first byte, its value's first byte
// and one past its value's last.
struct json_member {
    std::size_t key = 0;
    std::size_t value = 0;
    std::size_t end = 0;
};

// The member `key` of the object `text` (its own members, not nested ones'), walked as JSON
// tokens: a key-like text inside a string is none. nullopt where it has none.
[[nodiscard]] inline std::optional<json_member> find_json_member(std::string_view text,
                                                                 std::string_view key) {
    auto read_string = [&](std::size_t begin) { return json_string_end(text, begin); };
    auto skip_space = [&](std::size_t j) { return json_skip_space(text, j); };
    auto skip_value = [&](std::size_t j) {  // one past the value beginning at text[j]
        int depth = 0;
        while (j < text.size()) {
            const char c = text[j];
            if (c == '"') {
                j = read_string(j);
                if (depth == 0) return j;
                continue;
            }
            if (c == '{' || c == '[') ++depth;
            if (c == '}' || c == ']') {
                if (depth == 0) return j;  // the end of the enclosing object
                if (--depth == 0) return j + 1;
            }
            if (depth == 0 && (c == ',' || json_space(c))) return j;
            ++j;
        }
        return j;
    };
    int depth = 0;
    for (std::size_t i = 0; i < text.size();) {
        const char c = text[i];
        if (c == '{' || c == '[') ++depth;
        if (c == '}' || c == ']') --depth;
        if (c != '"') {
            ++i;
            continue;
        }
        const std::size_t k = i;
        i = read_string(i);
        if (depth != 1 || i - k < 2 || text.substr(k + 1, i - k - 2) != key) continue;
        const std::size_t colon = skip_space(i);
        if (colon >= text.size() || text[colon] != ':') continue;
        const std::size_t value = skip_space(colon + 1);
        return json_member{k, value, skip_value(value)};
    }
    return std::nullopt;
}

// The object `text` without its member `key` (and the comma that joined it); every other byte
// kept.
[[nodiscard]] inline std::string without_json_member(std::string_view text, std::string_view key) {
    const std::optional<json_member> m = find_json_member(text, key);
    if (!m) return std::string(text);
    // The member and the comma after it; the last member: the comma before it.
    std::size_t begin = m->key;
    std::size_t after = json_skip_space(text, m->end);
    if (after < text.size() && text[after] == ',') {
        after = json_skip_space(text, after + 1);
    } else {
        after = m->end;
        std::size_t k = m->key;
        while (k > 0 && json_space(text[k - 1])) --k;
        if (k > 0 && text[k - 1] == ',') begin = k - 1;
    }
    return std::string(text.substr(0, begin)) + std::string(text.substr(after));
}

// config.json's text without its "quantization_config" member, at the top level and in
// text_config (where Kimi-K2.5 writes it; config_file reads both); every other byte kept.
[[nodiscard]] inline std::string config_without_quantization(std::string_view text) {
    std::string out = without_json_member(text, "quantization_config");
    if (const auto tc = find_json_member(out, "text_config");
        tc && tc->value < out.size() && out[tc->value] == '{') {
        const std::string inner = without_json_member(
            std::string_view(out).substr(tc->value, tc->end - tc->value), "quantization_config");
        out = out.substr(0, tc->value) + inner + out.substr(tc->end);
    }
    return out;
}

// The folders a side file may lie in, links resolved: the checkpoint folder, and for a
// Hugging Face cache snapshot (REPO/snapshots/COMMIT) the repository's blobs/, where the
// snapshot's links point.
[[nodiscard]] inline std::vector<std::filesystem::path> side_file_roots(
    const std::filesystem::path& folder) {
    std::error_code ec;
    const auto root = std::filesystem::canonical(folder, ec);
    if (ec) throw system_error("resolve", ec.value(), folder.string());
    std::vector<std::filesystem::path> roots{root};
    if (root.parent_path().filename() == "snapshots")
        roots.push_back(root.parent_path().parent_path() / "blobs");
    return roots;
}

}  // namespace detail

// The files of a checkpoint folder that export, merge and convert copy beside the new shards:
// every regular file at its top level but weights (ours and other formats'), hidden files
// and files over this size.
inline constexpr std::uint64_t max_side_file = 256ull << 20;

namespace detail {

// Why the folder entry `entry` is not a side file to copy (nullopt: it is): it must resolve
// to a regular file inside one of `roots`, of at most max_side_file bytes. `real` and `st`
// receive the resolved path and its status.
[[nodiscard]] inline std::optional<std::string> side_file_refusal(
    const std::filesystem::path& entry, std::span<const std::filesystem::path> roots,
    std::filesystem::path& real, struct stat& st) {
    std::error_code ec;
    real = std::filesystem::canonical(entry, ec);
    if (ec) return describe_path(entry);
    if (std::none_of(roots.begin(), roots.end(),
                     [&](const std::filesystem::path& r) { return path_within(real, r); }))
        return "a link to '" + real.string() + "', outside the checkpoint folder";
    if (::stat(real.c_str(), &st) != 0) return describe_path(real);
    if (!S_ISREG(st.st_mode)) return std::string(file_type_name(st.st_mode)) + ", not a file";
    if (static_cast<std::uint64_t>(st.st_size) > max_side_file)
        return std::to_string(st.st_size) + " bytes, over the " + std::to_string(max_side_file) +
               "-byte limit of a side file";
    return std::nullopt;
}

// Copies the regular file `from` whose status was `st` to `to`, with at most its permission
// bits (the umask applies too); config.json as `changes` says.
inline void copy_side_file(const std::filesystem::path& from, const struct stat& st,
                           const std::filesystem::path& to, const config_changes& changes) {
    // The file checked, not one swapped in since; never a FIFO waited on.
    const file_reader r(from, read_options{.direct = false, .expect = file_version::of(st)});
    if (r.size() > max_side_file)
        throw error(errc::io_error, "the side file grew past the size limit while being copied",
                    error_context{.file = from.string()});
    atomic_file f(to, st.st_mode & 0777);
    if (changes.changed() && to.filename() == "config.json") {
        std::string text(static_cast<std::size_t>(r.size()), '\0');
        r.read_exact(std::as_writable_bytes(std::span(text)), 0);
        if (changes.dtype) text = config_with_dtype(text, *changes.dtype);
        if (changes.dequantized) text = config_without_quantization(text);
        f.write(std::as_bytes(std::span(text)));
    } else {
        std::vector<std::byte> buf(static_cast<std::size_t>(
            std::min<std::uint64_t>(std::max<std::uint64_t>(r.size(), 1), std::uint64_t{4} << 20)));
        for (std::uint64_t off = 0; off < r.size();) {
            const auto n =
                static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), r.size() - off));
            r.read_exact(std::span(buf).first(n), off);
            f.write(std::span(buf).first(n));
            off += n;
        }
    }
    f.commit();
}

}  // namespace detail

// Copies `from`'s side files into `to`, each with its source's permission bits (never wider);
// config.json changed as `changes` says (every other byte kept); a dequantized checkpoint's
// hf_quant_config.json (ModelOpt's description of its quantization) is left behind. Only
// regular files that resolve inside `from` (or, for a Hugging Face cache snapshot, inside its
// repository's blobs/) are copied: `skipped` hears of every other entry (a link out of the
// folder, a FIFO, a dangling link, a file over max_side_file). Returns how many were copied.
inline std::uint64_t copy_side_files(
    const std::filesystem::path& from, const std::filesystem::path& to,
    const config_changes& changes = {},
    const std::function<void(const skipped_side_file&)>& skipped = {}) {
    namespace fs = std::filesystem;
    const std::vector<fs::path> roots = detail::side_file_roots(from);
    std::uint64_t copied = 0;
    std::error_code ec;
    for (fs::directory_iterator it(from, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (detail::is_weights_file(name) || name.starts_with(".")) continue;
        if (changes.dequantized && name == hf_quant_config_file) {
            if (skipped)
                skipped(skipped_side_file{it->path(),
                                          "the quantization of weights written dequantized"});
            continue;
        }
        std::error_code type_ec;
        if (it->is_directory(type_ec)) continue;  // a folder is no side file (a link to one too)
        fs::path real;
        struct stat st {};
        if (auto why = detail::side_file_refusal(it->path(), roots, real, st)) {
            if (skipped) skipped(skipped_side_file{it->path(), std::move(*why)});
            continue;
        }
        detail::copy_side_file(real, st, to / name, changes);
        ++copied;
    }
    if (ec) throw system_error("list", ec.value(), from.string());
    return copied;
}

namespace detail {

// The schema an export cuts by: checkpoint tensors no parameter reads become replicated
// parameters of their own (so nothing is lost: ignored buffers, quantization scales, and the
// tensors outside the name map's prefix, a multimodal checkpoint's vision tower, under their
// own names), except stored copies of tied tensors, tensors left out on request (the
// multi-token prediction layers unless asked for: `left_out` counts them) and the companions
// of a known quantization `scheme`'s weights (the plan cuts them with their weight).
inline void pass_through_unread(schema& s, const checkpoint& ckpt, std::uint64_t& left_out,
                                const quantization_scheme* scheme = nullptr) {
    if (!s.fallback()) s.set_fallback(make_replicated());
    for (const auto& f : ckpt.files())
        for (const tensor_view t : f.view) {
            const std::string_view n = t.name();
            if (s.find_by_source(n)) continue;
            if (const auto w = scheme ? companion_weight(*scheme, n) : std::nullopt;
                w && s.find_by_source(*w))
                continue;  // a quantized weight's companion: the plan cuts it with its weight
            const auto as_schema = s.names().from_checkpoint(n);
            const std::string name = as_schema ? *as_schema : std::string(n);
            if (s.find(name)) continue;
            const auto why = s.ignore_reason_of(n);
            if (as_schema && !why && !is_quantization_scale(n)) continue;  // the fallback's
            if (why && why->left_out) {
                ++left_out;
                continue;
            }
            parameter_meta p;
            p.name = name;
            p.sources = {std::string(n)};
            s.add(std::move(p));
        }
}

// A source of a tensor the export writes: as stored, or, of a weight dequantized by scheme s
// (of quantization_config q), as its values are named and shaped ("X.weight_packed" [N, K/2]
// -> "X.weight" [N, K]), in the dtype written.
[[nodiscard]] inline export_source written_source(const plan_destination& d, std::string name,
                                                  const tensor_view& stored,
                                                  const quantization_scheme* s,
                                                  const quantization_config* q) {
    if (d.dequant && s && q)
        if (auto v = weight_values(*s, *q, name, stored.dtype(), stored.shape()))
            return export_source{std::move(v->first), v->second, d.dtype};
    return export_source{std::move(name), stored.shape(), d.dequant ? d.dtype : stored.dtype()};
}

// The export metadata of one rank's plan, whose quantized weights a dequantization writes as
// `config`'s scheme stores them.
[[nodiscard]] inline export_metadata make_export_metadata(const load_plan& p,
                                                          const checkpoint& ckpt, kv_convention kv,
                                                          const model_config* config) {
    const quantization_scheme* scheme = plan_quantization_scheme(config, false);
    const quantization_config* q = scheme ? &*config->quantization : nullptr;
    export_metadata m;
    m.world = p.context().world;
    m.rank = p.context().rank;
    m.kv = kv;
    m.experts = p.experts();
    m.expert_groups = p.context().experts;
    const auto dests = p.destinations();
    for (const plan_destination& d : dests) {
        if (d.consumed) continue;  // read for a dequantization, not written
        export_tensor t;
        t.name = d.name;
        if (d.tied()) {
            t.tied_to = dests[*d.tied_to].name;
            m.tensors.push_back(std::move(t));
            continue;
        }
        t.dtype = d.dtype;
        t.local = d.local;
        t.global = d.global;
        t.layout = d.layout;
        t.expert = d.expert;
        t.stacked_experts = d.stacked_experts;
        t.gathered_experts = d.gathered_experts;
        t.storage = d.storage;
        if (d.companion_of) {
            t.companion_of = dests[*d.companion_of].name;
            t.grid = d.grid;
        }
        if (d.created()) {
            t.created = true;
            t.sources.push_back(export_source{d.name, d.global, d.dtype});
        } else if (d.gathered_experts) {  // one expert's shapes: the first held expert's
            for (const auto& src : d.sources) {
                const located_tensor l =
                    ckpt.tensor(expert_source_name(src, p.held_experts().front()));
                t.sources.push_back(written_source(d, src, l.tensor, scheme, q));
            }
        } else {
            for (const auto& src : d.sources)
                t.sources.push_back(written_source(d, src, ckpt.tensor(src).tensor, scheme, q));
        }
        if (const auto v =
                slab_valid_rows(d.layout, d.global, d.local, cut_place(m, t, m.rank).position,
                                d.stacked_experts != 0);
            v && !t.companion())
            std::tie(t.valid_begin, t.valid_end) = *v;
        if (!m.kv_multiplier) m.kv_multiplier = rank_kv_multiplier(d.layout, m.world);
        m.tensors.push_back(std::move(t));
    }
    return m;
}

}  // namespace detail

// The export metadata documents (version 2) of the shards of `plan` (over `tensors`), one a
// shard, for rank `m`; also for a rank folder sharded again (convert).
[[nodiscard]] inline std::vector<std::string> export_shard_documents(
    const export_metadata& m, const shard_plan& plan, std::span<const tensor_info> tensors) {
    std::vector<std::vector<std::string_view>> names(plan.shards.size());
    for (std::size_t s = 0; s < plan.shards.size(); ++s)
        for (const std::size_t i : plan.shards[s].tensors) names[s].push_back(tensors[i].name);
    return to_json(m, names);
}

// check_output_location for a checkpoint being written again: its folder (its one file, when
// opened from a file: the folder is not the input then) and every file it reads.
inline void check_output_location(const std::filesystem::path& output, const checkpoint& input) {
    std::vector<std::filesystem::path> files;
    for (const auto& f : input.files()) files.push_back(f.path);
    check_output_location(output, input.opened_from_file() ? files.front() : input.root(), files);
}

// The most ranks an export writes (a folder each); far beyond any tensor-parallel world.
inline constexpr std::uint32_t max_export_world = 65536;

namespace detail {

// The world is one an export can write, the input is no rank of an export already, and OUT is
// no folder the input lives in.
inline void check_export_request(const checkpoint& ckpt, const std::filesystem::path& out,
                                 const export_options& o) {
    if (o.world == 0)
        throw error(errc::invalid_argument, "the world size of an export must be at least 1");
    if (o.world > max_export_world)
        throw error(errc::invalid_argument, "an export for " + std::to_string(o.world) +
                                                " ranks writes as many folders: at most " +
                                                std::to_string(max_export_world) + " are written");
    check_expert_parallel(o.world, o.experts);
    if (read_export_metadata(ckpt))
        throw error(errc::invalid_export,
                    "the input is already a rank of an export: merge the export first "
                    "(safeshard merge), then export that",
                    error_context{.file = ckpt.root().string()});
    check_output_location(out, ckpt);
}

// Every rank's plan, made before a byte is written (an impossible cut fails first), with the
// bytes all ranks write, the largest tensor (which sizes the buffers), and whether the
// quantized weights are written dequantized (a dtype asked of them).
struct export_plans {
    std::vector<load_plan> ranks;
    std::uint64_t total = 0;
    std::uint64_t largest = 0;
    bool dequantized = false;
};

// Whether destination d is written as a quantization stores it: a companion kept, or a
// weight's packed elements.
[[nodiscard]] inline bool written_quantized(const plan_destination& d) noexcept {
    return !d.consumed && !d.tied() && (d.companion_of || !stored_as_values(d.storage));
}

// A plan that dequantizes writes no weight quantized beside them: the checkpoint it writes
// has no quantization_config, which such a weight would still need.
inline void check_dequantized_whole(const load_plan& p) {
    const auto dests = p.destinations();
    const auto deq = std::find_if(dests.begin(), dests.end(),
                                  [](const plan_destination& d) { return d.dequant.has_value(); });
    if (deq == dests.end()) return;
    for (const plan_destination& d : dests)
        if (written_quantized(d))
            throw error(errc::unsupported_conversion,
                        "'" + d.name + "' would be written quantized (" +
                            std::string(name(d.dtype)) + ", as stored) beside '" + deq->name +
                            "' dequantized to " + std::string(name(deq->dtype)) +
                            ": a checkpoint is written dequantized whole (its "
                            "quantization_config goes), so every quantized weight needs the "
                            "dtype asked of it and its scales",
                        error_context{.file = {}, .tensor = d.name});
}

[[nodiscard]] inline export_plans plan_export(const checkpoint& ckpt, const schema& cut,
                                              const export_options& o, const model_config* config) {
    export_plans p;
    for (std::uint32_t r = 0; r < o.world; ++r) {
        p.ranks.push_back(load_plan::build(ckpt, cut, {r, o.world, o.experts}, o.plan, config));
        check_dequantized_whole(p.ranks.back());
        for (const auto& d : p.ranks.back().destinations()) {
            p.dequantized = p.dequantized || d.dequant.has_value();
            if (d.tied() || d.consumed) continue;  // an alias; read for a conversion only
            p.total += d.bytes;
            p.largest = std::max(p.largest, d.bytes);
        }
    }
    return p;
}

// The tensors a rank's writer stores (the untied destinations a dequantization does not
// consume), each with its destination.
struct export_rank_tensors {
    std::vector<tensor_info> infos;
    std::vector<std::size_t> destination;  // of infos[i]
};

[[nodiscard]] inline export_rank_tensors rank_tensors(std::span<const plan_destination> dests) {
    export_rank_tensors t;
    for (std::size_t i = 0; i < dests.size(); ++i) {
        if (dests[i].tied() || dests[i].consumed) continue;
        t.infos.push_back(tensor_info{dests[i].name, dests[i].dtype, dests[i].local});
        t.destination.push_back(i);
    }
    return t;
}

// The order write_shards asks for the writer's tensors in (shard by shard, each in file
// order), and each tensor's position in it.
struct export_write_order {
    std::vector<std::size_t> order;
    std::vector<std::size_t> position;
};

[[nodiscard]] inline export_write_order write_order(const sharded_writer& w) {
    export_write_order o;
    o.position.resize(w.tensors().size());
    std::unordered_map<std::string_view, std::size_t, name_hash> index_of;
    for (std::size_t i = 0; i < w.tensors().size(); ++i) index_of.emplace(w.tensors()[i].name, i);
    for (const auto& shard : w.plan().shards) {
        std::vector<tensor_info> in_shard;
        for (const std::size_t k : shard.tensors) in_shard.push_back(w.tensors()[k]);
        for (const auto& t : plan_tensors(std::move(in_shard)))
            o.order.push_back(index_of.at(t.name));
    }
    for (std::size_t k = 0; k < o.order.size(); ++k) o.position[o.order[k]] = k;
    return o;
}

// One plan's destinations read one at a time into buffers the caller gives: the companions
// its dequantizations consume first (into host memory of its own, for the converters that
// read them), then each destination read (converted, dequantized) or initialised.
class plan_reader {
public:
    plan_reader(file_cache& files, host_engine& engine) : files_(files), engine_(engine) {}

    // Makes p (which must outlive the reads) the plan read, and reads its consumed companions.
    void begin(const load_plan& p) {
        const auto dests = p.destinations();
        dests_ = dests;
        addresses_.assign(dests.size(), nullptr);
        sizes_.assign(dests.size(), 0);
        consumed_ = {};
        std::vector<std::string> names(dests.size());
        for (std::size_t i = 0; i < dests.size(); ++i) {
            names[i] = dests[i].name;
            if (!dests[i].consumed) continue;
            addresses_[i] = consumed_.hold(dests[i].bytes);
            sizes_[i] = dests[i].bytes;
        }
        consumed_bytes_ += consumed_.read(p, addresses_, sizes_, names).bytes_read;
        ops_of_.assign(dests.size(), {});
        for (const copy_op& op : consumed_.ops_after(p)) ops_of_[op.destination].push_back(op);
    }

    // Reads destination `di` of the plan into `out` (its bytes), or initialises it when it is
    // created.
    void fill(std::size_t di, std::byte* out) {
        const plan_destination& d = dests_[di];
        if (d.created()) {
            initialise(d, out);
            return;
        }
        addresses_[di] = out;
        sizes_[di] = d.bytes;
        run_windows(engine_, files_, ops_of_[di], addresses_, sizes_, {}, consumed_.converters());
        addresses_[di] = nullptr;
        sizes_[di] = 0;
    }

    // The bytes read so far, of all plans.
    [[nodiscard]] std::uint64_t bytes_read() const noexcept {
        return engine_.stats().bytes_read + consumed_bytes_;
    }

private:
    file_cache& files_;
    host_engine& engine_;
    std::span<const plan_destination> dests_{};
    std::vector<std::vector<copy_op>> ops_of_;  // per destination
    std::vector<std::byte*> addresses_;         // the buffer being filled, the consumed ones
    std::vector<std::uint64_t> sizes_;
    consumed_companions consumed_;
    std::uint64_t consumed_bytes_ = 0;
};

// A plan's tensors written by `w` (the writer's tensor i is destination dest_of[i]), in the
// writer's order, through `buffers` (each of the largest tensor's bytes); with two buffers
// the next tensor is read while this one is written. `written(bytes)` after each tensor.
inline void write_plan_tensors(plan_reader& reader, sharded_writer& w,
                               std::span<const plan_destination> dests,
                               std::span<const std::size_t> dest_of,
                               std::span<aligned_buffer> buffers,
                               const std::function<void()>& cancel_point,
                               const std::function<void(std::uint64_t)>& written) {
    const export_write_order wo = write_order(w);
    const bool overlap = buffers.size() > 1 && buffers[1].size() > 0;
    auto fill_tensor = [&](std::size_t i, std::byte* out) { reader.fill(dest_of[i], out); };
    // Declared last: destroyed (waited for) before what the read uses.
    std::future<void> next;
    std::size_t next_index = 0;
    std::size_t next_slot = 0;
    w.write_shards([&](std::size_t i, safetensors_writer& sw) {
        if (cancel_point) cancel_point();
        std::size_t slot = 0;
        if (next.valid() && next_index == i) {
            next.get();
            slot = next_slot;
        } else {
            if (next.valid()) next.get();
            fill_tensor(i, buffers[0].data());
        }
        if (overlap && wo.position[i] + 1 < wo.order.size()) {
            next_index = wo.order[wo.position[i] + 1];
            next_slot = 1 - slot;
            next =
                std::async(std::launch::async, fill_tensor, next_index, buffers[next_slot].data());
        }
        const plan_destination& d = dests[dest_of[i]];
        sw.write(
            std::span<const std::byte>(buffers[slot].data(), static_cast<std::size_t>(d.bytes)));
        if (written) written(d.bytes);
    });
}

// One export being written: what every rank shares (the input's files, the engine, the
// buffers, the report), and the writing of one rank folder.
class export_run {
public:
    export_run(const checkpoint& ckpt, const export_options& o, const export_plans& plans,
               staged_folder& folder, export_report& rep, const model_config* config)
        : ckpt_(ckpt),
          o_(o),
          config_(config),
          plans_(plans),
          folder_(folder),
          rep_(rep),
          files_(cached_files(ckpt)),
          engine_(o.engine),
          reader_(files_, engine_) {
        // Two buffers of the largest tensor when the next tensor is read while this one is
        // written.
        const auto bytes = static_cast<std::size_t>(std::max<std::uint64_t>(plans.largest, 4096));
        buffers_[0] = aligned_buffer(bytes, host_tensor::alignment);
        if (o.overlap_io) buffers_[1] = aligned_buffer(bytes, host_tensor::alignment);
        if (o.plan.dtype.how == dtype_policy::kind::fixed)
            changes_.dtype = o.plan.dtype.fixed_dtype;
        changes_.dequantized = plans.dequantized;
    }

    // Writes rank r's folder in the staging folder: its shards (each with its own export
    // metadata document) and the input's side files.
    void write_rank(std::uint32_t r) {
        const load_plan& p = plans_.ranks[r];
        const auto dests = p.destinations();
        export_rank_tensors tensors = rank_tensors(dests);
        rep_.dequantized += static_cast<std::uint64_t>(
            std::count_if(dests.begin(), dests.end(),
                          [](const plan_destination& d) { return d.dequant.has_value(); }));
        // Each shard describes its own tensors (export metadata version 2).
        std::vector<std::string> docs;
        sharded_save_options so;
        so.max_shard_size = o_.max_shard_size;
        so.shard_metadata_of = [&](std::size_t shard) {
            return metadata_map{{"format", "pt"}, {std::string(export_metadata_key), docs[shard]}};
        };
        sharded_writer w(folder_.staging_folder() / export_rank_folder(r), std::move(tensors.infos),
                         so);
        docs = export_shard_documents(make_export_metadata(p, ckpt_, o_.plan.schema.kv, config_),
                                      w.plan(), w.tensors());
        reader_.begin(p);
        write_plan_tensors(reader_, w, dests, tensors.destination, buffers_, o_.cancel_point,
                           [&](std::uint64_t bytes) {
                               done_ += bytes;
                               ++rep_.tensors;
                               if (o_.progress) o_.progress(done_, plans_.total);
                           });
        if (!ckpt_.opened_from_file())  // a lone file brings nothing else of its folder
            rep_.side_files += copy_side_files(ckpt_.root(), w.staging_folder(), changes_,
                                               [&](const skipped_side_file& f) {
                                                   if (r == 0) rep_.skipped_side_files.push_back(f);
                                               });
        rep_.shard_files += w.plan().shards.size();
        if (o_.cancel_point) o_.cancel_point();
        w.commit();
    }

    // After the last rank: no bytes of two versions of a file were read.
    void finish() {
        files_.finish();
        rep_.bytes_read = reader_.bytes_read();
        rep_.bytes_written = done_;
    }

private:
    const checkpoint& ckpt_;
    const export_options& o_;
    const model_config* config_;
    const export_plans& plans_;
    staged_folder& folder_;
    export_report& rep_;
    file_cache files_;  // the input's files, opened as the tensors need them
    aligned_buffer buffers_[2];
    host_engine engine_;
    plan_reader reader_;
    config_changes changes_;
    std::uint64_t done_ = 0;
};

}  // namespace detail

// Exports `ckpt` cut by schema `s` for every rank of options.world into `out`.
// `config` (optional) adds config.json's shape checks, as load_plan::build does.
inline export_report export_checkpoint(const checkpoint& ckpt, const schema& s,
                                       const std::filesystem::path& out,
                                       const export_options& o = {},
                                       const model_config* config = nullptr) {
    const auto t0 = std::chrono::steady_clock::now();
    detail::check_export_request(ckpt, out, o);
    schema cut = s;
    export_report rep;
    detail::pass_through_unread(cut, ckpt, rep.left_out,
                                plan_quantization_scheme(config, o.plan.allow_quantized));
    const detail::export_plans plans = detail::plan_export(ckpt, cut, o, config);

    rep.world = o.world;
    staged_folder folder(out, o.force);
    rep.replaced = folder.replacing();
    detail::export_run run(ckpt, o, plans, folder, rep, config);
    for (std::uint32_t r = 0; r < o.world; ++r) run.write_rank(r);
    if (o.cancel_point) o.cancel_point();
    run.finish();
    folder.commit();
    rep.seconds = seconds_since(t0);
    return rep;
}

// The architecture named by options.plan.architecture or config.json's model_type.
inline export_report export_checkpoint(const checkpoint& ckpt, const std::filesystem::path& out,
                                       const export_options& o = {}) {
    const configured_schema cs =
        schema_from_config(ckpt, o.plan.architecture, o.plan.schema, "export");
    return export_checkpoint(ckpt, cs.schema, out, o, &cs.config);
}

}  // namespace safeshard
