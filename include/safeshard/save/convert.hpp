// Checkpoint conversion: a checkpoint written again with another dtype and/or another sharding,
// streamed tensor by tensor (read in chunks, converted, written) into a folder that appears
// complete or not at all, with its __metadata__ and its folder's other small files carried over
// (config.json with the new dtype).
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
#include <vector>

#include "safeshard/core/clock.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/engine.hpp"
#include "safeshard/load/file_cache.hpp"
#include "safeshard/save/export.hpp"
#include "safeshard/save/sharded_writer.hpp"

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
    std::uint64_t converted = 0;  // tensors written in options.to
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

}  // namespace detail

// Writes checkpoint `c` into the folder `out` (a single model.safetensors, or shards and an
// index), with options.to as the dtype of its floating-point tensors. The input's __metadata__
// goes with its tensors when every file carries the same (the format: "pt", "mlx"...). A rank
// of an export stays one: version 2's shards each describe their own tensors, so the new shards
// are described again (version 1's one description of the whole rank is kept as it is); a rank
// whose dtypes would change no longer matches its description: invalid_export.
inline convert_report convert_checkpoint(const checkpoint& c, const std::filesystem::path& out,
                                         const convert_options& o = {}) {
    const auto t0 = std::chrono::steady_clock::now();
    check_output_location(out, c);
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
    if (rank && rep.converted > 0)
        throw error(errc::invalid_export,
                    "the input is a rank of an export, whose metadata names its dtypes: convert "
                    "the merged checkpoint (merge_export), or export again with the wanted "
                    "dtype (export_options::plan.dtype)",
                    error_context{.file = c.root().string()});
    const bool per_shard = rank && rank->version >= 2;
    sharded_save_options so;
    so.max_shard_size = o.max_shard_size;
    so.force = o.force;
    const std::optional<metadata_map> shared = detail::shared_metadata(c, per_shard);
    rep.metadata_differs = !shared;
    if (shared && c.files().front().view.has_metadata()) so.shard_metadata = *shared;
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
    rep.replaced = w.replacing();
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
    if (o.cancel_point) o.cancel_point();

    // The folder's other small files; config.json with the new dtype. (A lone .safetensors
    // file given by path: nothing else of its folder belongs to it.)
    if (!c.opened_from_file())
        rep.side_files = copy_side_files(
            c.root(), w.staging_folder(), o.to,
            [&](const skipped_side_file& f) { rep.skipped_side_files.push_back(f); });
    if (o.cancel_point) o.cancel_point();
    w.commit();
    rep.shard_files = w.plan().shards.size();
    rep.bytes_written = total;
    rep.seconds = seconds_since(t0);
    return rep;
}

}  // namespace safeshard
