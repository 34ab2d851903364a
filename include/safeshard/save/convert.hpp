// Checkpoint conversion: a checkpoint written again with another dtype and/or another sharding,
// streamed tensor by tensor (read in chunks, converted, written) into a folder that appears
// complete or not at all, with its __metadata__ and its folder's other small files carried over
// (config.json with the new dtype). A quantized checkpoint converted to a float dtype is
// written dequantized (its weights scaled in the copy, its scales gone, no
// quantization_config), through a load plan of world 1.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "safeshard/core/clock.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/engine.hpp"
#include "safeshard/load/file_cache.hpp"
#include "safeshard/load/plan.hpp"
#include "safeshard/save/export.hpp"
#include "safeshard/save/sharded_writer.hpp"
#include "safeshard/shard/quantization/schemes.hpp"
#include "safeshard/shard/schema.hpp"

namespace safeshard {

struct convert_options {
    // The dtype the floating-point tensors (converted_by_policy) are written in; one with no
    // direct conversion to it (F64 to a 16-bit dtype) keeps its own. Empty: every tensor keeps
    // its dtype (a re-shard).
    std::optional<dtype> to{};
    std::uint64_t max_shard_size = default_max_shard_size;
    bool force = false;  // replace an existing output folder once the new one is complete
    // Bytes read (and converted) at a time; a chunk is also a cancel point.
    std::size_t chunk_bytes = std::size_t{8} << 20;
    // Bytes written so far, and the total.
    progress_callback progress{};
    // Called between chunks; throw from it to stop (nothing is left at the output).
    std::function<void()> cancel_point{};
};

struct convert_report {
    std::uint64_t tensors = 0;
    std::uint64_t converted = 0;  // tensors written in options.to (the dequantized ones too)
    // A quantized checkpoint's weights written dequantized in options.to, and the tensors
    // their dequantization read (their scales) or no longer needs (activation scales), which
    // are not written.
    std::uint64_t dequantized = 0;
    std::uint64_t companions_dropped = 0;
    // Floating-point tensors kept in their dtype: no direct conversion to options.to.
    std::uint64_t kept_without_conversion = 0;
    std::uint64_t input_files = 0;
    std::uint64_t shard_files = 0;
    std::uint64_t bytes_written = 0;
    std::uint64_t side_files = 0;  // config.json and the folder's other small files
    std::vector<skipped_side_file> skipped_side_files{};
    // The input files' __metadata__ differ: the output's is {"format": "pt"}.
    bool metadata_differs = false;
    bool replaced = false;
    double seconds = 0;
};

namespace detail {

// The __metadata__ every input file shares, less each shard's own export document (`per_shard`);
// empty when they differ.
[[nodiscard]] inline std::optional<metadata_map> shared_metadata(const checkpoint& c,
                                                                 bool per_shard) {
    metadata_map first = c.files().front().view.metadata();
    if (per_shard) first.erase(std::string(export_metadata_key));
    for (const auto& f : c.files()) {
        const metadata_map& m = f.view.metadata();
        const std::size_t own = per_shard ? m.count(export_metadata_key) : 0;
        const bool same = m.size() - own == first.size() &&
                          std::all_of(first.begin(), first.end(), [&](const auto& kv) {
                              const auto it = m.find(kv.first);
                              return it != m.end() && it->second == kv.second;
                          });
        if (!same) return std::nullopt;
    }
    return first;
}

// A rank of an export (c) asked another dtype: its metadata names its dtypes.
[[noreturn]] inline void refuse_converting_rank(const checkpoint& c) {
    throw error(errc::invalid_export,
                "the input is a rank of an export, whose metadata names its dtypes: convert the "
                "merged checkpoint (merge_export), or export again with the wanted dtype "
                "(export_options::plan.dtype)",
                error_context{.file = c.root().string()});
}

// What a quantized checkpoint is, for a conversion: config.json's quantization_config (as a
// model_config of nothing else: the plan cuts no architecture) and its scheme.
struct quantized_input {
    model_config config;
    const quantization_scheme* scheme = nullptr;
};

// Checkpoint c's quantization, where its config.json (or hf_quant_config.json) says one;
// nullopt for a checkpoint that is not quantized, or a lone file (no config.json beside it)
// none of whose tensors is named as a scale.
[[nodiscard]] inline std::optional<quantized_input> quantization_of(const checkpoint& c) {
    const std::optional<config_file> cfg =
        c.opened_from_file() ? std::nullopt : c.load_config(config_fields::quantization_only);
    if (cfg && cfg->config().quantization) {
        const quantization_config& q = *cfg->config().quantization;
        const quantization_scheme* s = find_quantization_scheme(q);
        if (!s)
            throw error(errc::unsupported_conversion,
                        "the checkpoint is quantized (quant_method '" + q.quant_method + "'" +
                            scheme_details(q) +
                            "), which safeshard does not know: converting its scales would "
                            "change its weights; convert without a dtype (a re-shard)",
                        error_context{.file = c.root().string()});
        quantized_input in{.config = {}, .scheme = s};
        in.config.quantization = q;
        return in;
    }
    for (const located_tensor& t : c.tensors())
        if (is_quantization_scale(t.tensor.name()))
            throw error(
                errc::unsupported_conversion,
                "tensor '" + std::string(t.tensor.name()) +
                    "' is a quantization scale, but no config.json beside the checkpoint "
                    "says its quantization: converting it would change the weights it "
                    "scales; convert without a dtype, or the folder with its config.json",
                error_context{.file = c.root().string(), .tensor = std::string(t.tensor.name())});
    return std::nullopt;
}

// The names of the schemes whose weights dequantize: "FP8, ModelOpt FP8, ...".
[[nodiscard]] inline std::string dequantizing_schemes_text() {
    std::string out;
    for (const quantization_scheme* s : quantization_schemes)
        if (s->dequant.supported()) out += (out.empty() ? "" : ", ") + std::string(s->name);
    return out;
}

// The schema a quantized checkpoint is written dequantized through, at world 1: every tensor a
// replicated parameter of its own name, but a weight stored under its scheme's suffix named as
// its values ("X.weight_packed" -> "X.weight"), and the companions of the checkpoint's weights
// left to them (the plan reads them with their weight). Asked dtype `to`: the weights with
// scales, and the floating-point tensors with a direct conversion to it; the others keep
// theirs.
[[nodiscard]] inline schema dequantizing_schema(const checkpoint& c, const quantization_scheme& s,
                                                dtype to) {
    auto stored_as = [&](const std::string& weight) {  // "X.weight" as the checkpoint stores it
        return c.find(weight) ? weight : companion_name(weight, s.stored_weight);
    };
    auto has_scales = [&](const std::string& weight) {
        for (const std::string_view suffix : s.dequant.scales)
            if (!suffix.empty() && c.find(companion_name(weight, suffix))) return true;
        return false;
    };
    schema out;
    for (const located_tensor& t : c.tensors()) {
        const std::string_view n = t.tensor.name();
        parameter_meta p;
        p.layout = make_replicated();
        const std::optional<std::string> weight = companion_weight(s, n);
        if (weight && !is_stored_weight(s, n) && c.find(stored_as(*weight)))
            continue;  // a companion: planned with its weight
        p.name = weight ? *weight : std::string(n);
        p.sources = {p.name};
        const dtype from = t.tensor.dtype();
        if (has_scales(p.name) || (converted_by_policy(from) && can_convert(from, to)))
            p.dtype_override = to;
        out.add(std::move(p));
    }
    return out;
}

// The writer's options of a conversion of c: the sizes and force asked, and the input's
// __metadata__ where every file carries the same (less each shard's own export document:
// `per_shard`); the report hears whether they differ.
[[nodiscard]] inline sharded_save_options conversion_save_options(const checkpoint& c,
                                                                  const convert_options& o,
                                                                  bool per_shard,
                                                                  convert_report& rep) {
    sharded_save_options so;
    so.max_shard_size = o.max_shard_size;
    so.force = o.force;
    const std::optional<metadata_map> shared = shared_metadata(c, per_shard);
    rep.metadata_differs = !shared;
    if (shared && c.files().front().view.has_metadata()) so.shard_metadata = *shared;
    return so;
}

// The end of a conversion of c written by w (`total` bytes): the folder's other small files
// with config.json changed as `changes` says (a lone .safetensors file given by path: nothing
// else of its folder belongs to it), the output committed, the report completed.
inline void finish_conversion(const checkpoint& c, sharded_writer& w, const convert_options& o,
                              const config_changes& changes, std::uint64_t total,
                              std::chrono::steady_clock::time_point t0, convert_report& rep) {
    if (o.cancel_point) o.cancel_point();
    if (!c.opened_from_file())
        rep.side_files = copy_side_files(
            c.root(), w.staging_folder(), changes,
            [&](const skipped_side_file& f) { rep.skipped_side_files.push_back(f); });
    if (o.cancel_point) o.cancel_point();
    rep.replaced = w.replacing();
    w.commit();
    rep.shard_files = w.plan().shards.size();
    rep.bytes_written = total;
    rep.seconds = seconds_since(t0);
}

// Writes quantized checkpoint `c` (of `q`) dequantized into `out` (checked by
// convert_checkpoint), as convert_checkpoint does.
inline convert_report convert_dequantizing(const checkpoint& c, const detail::quantized_input& q,
                                           const std::filesystem::path& out,
                                           const convert_options& o) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!q.scheme->dequant.supported())
        throw error(errc::unsupported_conversion,
                    "the checkpoint is quantized by " + std::string(q.scheme->name) +
                        ", whose weights do not dequantize to " + std::string(name(*o.to)) +
                        " (those of " + detail::dequantizing_schemes_text() +
                        " do); convert without a dtype keeps it as stored",
                    error_context{.file = c.root().string()});
    if (read_export_metadata(c)) refuse_converting_rank(c);
    plan_options po;
    po.strict = false;
    const load_plan plan = load_plan::build(c, detail::dequantizing_schema(c, *q.scheme, *o.to),
                                            {0, 1}, po, &q.config);
    detail::check_dequantized_whole(plan);

    convert_report rep;
    rep.input_files = c.files().size();
    const auto dests = plan.destinations();
    std::vector<tensor_info> infos;
    std::vector<std::size_t> dest_of;
    std::uint64_t largest = 0;
    for (std::size_t i = 0; i < dests.size(); ++i) {
        const plan_destination& d = dests[i];
        if (d.consumed) {
            ++rep.companions_dropped;
            continue;
        }
        if (d.dequant) ++rep.dequantized;
        if (d.dtype != d.source_dtype) ++rep.converted;
        if (converted_by_policy(d.source_dtype) && d.dtype == d.source_dtype && d.dtype != *o.to)
            ++rep.kept_without_conversion;
        infos.push_back(tensor_info{d.name, d.dtype, d.local});
        dest_of.push_back(i);
        largest = std::max(largest, d.bytes);
    }
    rep.companions_dropped += plan.ignored().size();
    rep.tensors = infos.size();

    sharded_writer w(out, std::move(infos), detail::conversion_save_options(c, o, false, rep));
    std::uint64_t total = 0;
    for (const auto& s : w.plan().shards) total += s.bytes;
    if (o.progress) o.progress(0, total);

    // Each tensor read whole (its companions first) into a buffer of the largest, and written.
    file_cache files(cached_files(plan));
    host_engine engine;
    detail::plan_reader reader(files, engine);
    reader.begin(plan);
    aligned_buffer buffer(static_cast<std::size_t>(std::max<std::uint64_t>(largest, 4096)),
                          host_tensor::alignment);
    std::uint64_t done = 0;
    detail::write_plan_tensors(reader, w, dests, dest_of, std::span(&buffer, 1), o.cancel_point,
                               [&](std::uint64_t bytes) {
                                   done += bytes;
                                   if (o.progress) o.progress(done, total);
                               });
    files.finish();  // no bytes of two versions of a file in the output
    detail::finish_conversion(c, w, o, config_changes{o.to, true}, total, t0, rep);
    return rep;
}

}  // namespace detail

// Writes checkpoint `c` into the folder `out` (a single model.safetensors, or shards and an
// index), with options.to as the dtype of its floating-point tensors. The input's __metadata__
// goes with its tensors when every file carries the same (the format: "pt", "mlx"...). A rank
// of an export stays one: version 2's shards each describe their own tensors, so the new shards
// are described again (version 1's one description of the whole rank is kept as it is); a rank
// whose dtypes would change no longer matches its description: invalid_export. A quantized
// checkpoint (config.json's quantization_config) converted to a dtype is written dequantized
// (detail::convert_dequantizing); one whose scheme does not dequantize, or that is not known, is
// refused rather than its scales converted.
inline convert_report convert_checkpoint(const checkpoint& c, const std::filesystem::path& out,
                                         const convert_options& o = {}) {
    const auto t0 = std::chrono::steady_clock::now();
    check_output_location(out, c);
    if (o.to)
        if (const std::optional<detail::quantized_input> q = detail::quantization_of(c))
            return detail::convert_dequantizing(c, *q, out, o);
    convert_report rep;
    rep.input_files = c.files().size();

    // Tensors in the checkpoint's order: files by name, tensors by offset.
    const std::vector<located_tensor> sources = c.tensors();
    std::vector<tensor_info> infos;
    infos.reserve(sources.size());
    std::vector<converter> converters;
    converters.reserve(sources.size());
    for (const auto& s : sources) {
        const dtype from = s.tensor.dtype();
        const bool floating = o.to && converted_by_policy(from);
        const bool convertible = floating && can_convert(from, *o.to);
        if (floating && !convertible) ++rep.kept_without_conversion;
        const dtype target = convertible ? *o.to : from;
        converters.push_back(target == from ? converter(from) : find_converter(from, target));
        if (target != from) ++rep.converted;
        infos.push_back(tensor_info{std::string(s.tensor.name()), target, s.tensor.shape()});
    }
    rep.tensors = sources.size();

    const std::optional<export_metadata> rank = read_export_metadata(c);
    if (rank && rep.converted > 0) detail::refuse_converting_rank(c);
    const bool per_shard = rank && rank->version >= 2;
    sharded_save_options so = detail::conversion_save_options(c, o, per_shard, rep);
    std::vector<std::string> rank_docs;
    if (per_shard)
        so.shard_metadata_of = [&rank_docs, base = so.shard_metadata](std::size_t s) {
            metadata_map m = base;
            m[std::string(export_metadata_key)] = rank_docs[s];
            return m;
        };
    // The input's files, opened as their tensors come (a bounded number at once).
    file_cache files(cached_files(c), {.map = false});

    sharded_writer w(out, std::move(infos), so);
    if (per_shard) rank_docs = export_shard_documents(*rank, w.plan(), w.tensors());
    std::uint64_t total = 0;
    for (const auto& s : w.plan().shards) total += s.bytes;
    if (o.progress) o.progress(0, total);
    std::uint64_t done = 0;

    // Reads with pread in chunks (a fresh mmap faults per page, pread does not), converts when
    // asked, and writes.
    const std::size_t chunk_bytes = std::max<std::size_t>(o.chunk_bytes, 64);
    std::vector<std::byte> src_buf(chunk_bytes);
    std::vector<std::byte> dst_buf;
    w.write_shards([&](std::size_t i, safetensors_writer& sw) {
        const located_tensor& s = sources[i];
        const converter& conv = converters[i];
        const auto file_index = static_cast<std::size_t>(s.file - c.files().data());
        const file_reader& r = files.reader(file_index);
        const std::uint64_t begin = s.tensor.file_begin();
        const std::uint64_t size = s.tensor.byte_size();
        // Whole elements per chunk (sub-byte dtypes only copy, so bytes are fine there).
        const std::size_t elem = std::max<std::size_t>(byte_size(conv.from()), 1);
        const std::size_t step = chunk_bytes / elem * elem;
        for (std::uint64_t off = 0; off < size;) {
            if (o.cancel_point) o.cancel_point();
            const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(step, size - off));
            const auto src = std::span(src_buf).first(n);
            r.read_exact(src, begin + off);
            if (conv.is_copy()) {
                sw.write(src);
                done += n;
            } else {
                const std::size_t count = n / elem;
                dst_buf.resize(conv.dst_bytes(count));
                conv(src.data(), dst_buf.data(), count);
                sw.write(dst_buf);
                done += dst_buf.size();
            }
            off += n;
            if (o.progress) o.progress(done, total);
        }
    });
    files.finish();  // no bytes of two versions of a file in the output
    detail::finish_conversion(c, w, o, config_changes{o.to, false}, total, t0, rep);
    return rep;
}

}  // namespace safeshard
