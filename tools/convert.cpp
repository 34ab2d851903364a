// `safeshard convert`: rewrites a checkpoint with another dtype and/or another sharding,
// streaming tensor by tensor into a folder that appears complete or not at all.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "commands.hpp"
#include "progress_bar.hpp"
#include "safeshard/core/clock.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/file_cache.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/save/export.hpp"
#include "safeshard/save/sharded_writer.hpp"

namespace safeshard::cli {
namespace {

namespace fs = std::filesystem;

}  // namespace

int run_convert(const convert_args& a, output& out) {
    const auto started = std::chrono::steady_clock::now();
    check_out_is_new(a.out, a.force);
    std::optional<dtype> to;
    if (!a.dtype.empty()) {
        to = parse_dtype_ignore_case(a.dtype);
        if (!to || !converted_by_policy(*to))
            throw error(errc::invalid_argument,
                        "--dtype must be one of F16, BF16, F32, F64; got '" + a.dtype + "'");
    }
    sharded_save_options options;
    options.max_shard_size = parse_shard_size(a.max_shard_size);
    options.force = a.force;

    const checkpoint c = open_checkpoint(a.ckpt);
    check_output_location(a.out, c);

    // Tensors in the checkpoint's order: files by name, tensors by offset.
    const std::vector<located_tensor> sources = c.tensors();
    std::vector<tensor_info> infos;
    infos.reserve(sources.size());
    std::vector<converter> converters;
    converters.reserve(sources.size());
    std::size_t n_converted = 0;
    std::size_t n_no_path = 0;  // floating tensors with no exact conversion to `to` (F64->16 bit)
    for (const auto& s : sources) {
        const dtype from = s.tensor.dtype();
        const bool convertible = to && converted_by_policy(from) && can_convert(from, *to);
        if (to && converted_by_policy(from) && !convertible) ++n_no_path;
        const dtype target = convertible ? *to : from;
        converters.push_back(target == from ? converter(from) : find_converter(from, target));
        if (target != from) ++n_converted;
        infos.push_back(tensor_info{std::string(s.tensor.name()), target, s.tensor.shape()});
    }
    if (n_no_path > 0)
        fmt::print(stderr,
                   "safeshard: note: {} tensors kept in their dtype: no direct conversion to {} "
                   "(F64 converts only to F32; rounding twice through F32 could differ)\n",
                   n_no_path, name(*to));

    // The input's __metadata__ goes with its tensors when every file carries the same (the
    // format: "pt", "mlx"...). A rank of an export stays one: version 2's shards each describe
    // their own tensors, so the new shards are described again (version 1's one description of
    // the whole rank is kept as it is). A rank whose dtypes change would no longer match its
    // description: refused.
    const std::optional<export_metadata> rank = read_export_metadata(c);
    if (rank && n_converted > 0)
        throw error(errc::invalid_export,
                    "the input is a rank of an export, whose metadata names its dtypes: convert "
                    "the merged checkpoint (safeshard merge), or export again with --dtype",
                    error_context{.file = c.root().string()});
    const bool per_shard = rank && rank->version >= 2;
    metadata_map first_meta = c.files().front().view.metadata();
    if (per_shard) first_meta.erase(std::string(export_metadata_key));
    bool same_meta = true;
    for (const auto& f : c.files()) {
        const metadata_map& m = f.view.metadata();
        const std::size_t own = per_shard ? m.count(export_metadata_key) : 0;
        same_meta = same_meta && m.size() - own == first_meta.size() &&
                    std::all_of(first_meta.begin(), first_meta.end(), [&](const auto& kv) {
                        const auto it = m.find(kv.first);
                        return it != m.end() && it->second == kv.second;
                    });
    }
    if (same_meta && c.files().front().view.has_metadata())
        options.shard_metadata = first_meta;
    else if (!same_meta)
        fmt::print(stderr,
                   "safeshard: note: the input files' __metadata__ differ; the output's is "
                   "{{\"format\": \"pt\"}}\n");
    std::vector<std::string> rank_docs;
    if (per_shard)
        options.shard_metadata_of = [&rank_docs, base = options.shard_metadata](std::size_t s) {
            metadata_map m = base;
            m[std::string(export_metadata_key)] = rank_docs[s];
            return m;
        };
    // The input's files, opened as their tensors come (a bounded number at once).
    file_cache files(cached_files(c), {.map = false});

    sharded_writer w(a.out, std::move(infos), options);
    if (per_shard) rank_docs = export_shard_documents(*rank, w.plan(), w.tensors());
    std::uint64_t total_out = 0;
    for (const auto& s : w.plan().shards) total_out += s.bytes;
    progress_bar bar(total_out);
    std::uint64_t done = 0;

    // Reads with pread in chunks (a fresh mmap faults per page, pread does not), converts when
    // asked, and writes; each chunk is a point where SIGINT stops the command.
    constexpr std::size_t chunk_bytes = 8u << 20;
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
            check_interrupted();
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
            bar.update(done);
        }
    });
    files.finish();  // no bytes of two versions of a file in OUT
    check_interrupted();

    // The folder's other small files; config.json with the new dtype. (A lone .safetensors
    // file given by path: nothing else of its folder belongs to it.)
    std::size_t copied = 0;
    if (!c.opened_from_file())
        copied = copy_side_files(c.root(), w.staging_folder(), to, [](const skipped_side_file& f) {
            note_not_copied(f.path, f.reason);
        });
    check_interrupted();
    w.commit();
    mark_output_complete();  // OUT is complete: a SIGINT from now on changes nothing
    bar.finish();

    const double seconds = seconds_since(started);
    out.print("converted {} tensors ({}) from {} files into {} at {}\n", sources.size(),
              to ? fmt::format("{} to {}, {} unchanged", n_converted, name(*to),
                               sources.size() - n_converted)
                 : std::string("dtypes kept"),
              c.files().size(),
              w.plan().shards.size() == 1
                  ? std::string("model.safetensors")
                  : fmt::format("{} shards + index", w.plan().shards.size()),
              a.out);
    out.print("{} written ({} bytes) in {:.2f} s ({}/s), {} other files copied{}\n",
              human_bytes(total_out), total_out, seconds,
              human_bytes(static_cast<std::uint64_t>(static_cast<double>(total_out) /
                                                     std::max(seconds, 1e-9))),
              copied, w.replacing() ? ", old folder replaced" : "");
    out.flush();
    return exit_ok;
}

}  // namespace safeshard::cli
