// Consolidation: the rank folders of a per-rank export merged back into one checkpoint in the
// original layout, from the stored export metadata alone (no schema, no config.json). Each
// rank's slice map, computed again from the recorded layout, is run backwards: splits are
// concatenated, strides undone, fused tensors split into their sources, padding dropped, the
// interleaved GQA permutation inverted; bytes that several ranks hold (replicated tensors,
// replicated KV heads) are kept once, after checking the copies are identical.
#pragma once

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <system_error>
#include <unordered_map>
#include <vector>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/clock.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/export_metadata_reader.hpp"
#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/load/engine.hpp"
#include "safeshard/load/file_cache.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/save/export.hpp"
#include "safeshard/save/merge_plan.hpp"
#include "safeshard/save/sharded_writer.hpp"
#include "safeshard/shard/apply.hpp"
#include "safeshard/shard/slice.hpp"

namespace safeshard {

struct merge_options {
    std::uint64_t max_shard_size = default_max_shard_size;
    bool force = false;  // replace an existing OUT once the new one is complete
    // Bytes written so far and the total.
    progress_callback progress{};
    // Called between tensors; throw from it to stop (nothing is left at OUT).
    std::function<void()> cancel_point{};
};

struct merge_report {
    std::uint32_t world = 0;
    std::uint64_t tensors = 0;  // written
    std::uint64_t shard_files = 0;
    std::uint64_t side_files = 0;
    std::vector<skipped_side_file> skipped_side_files{};  // rank 0's files not copied
    std::uint64_t bytes_read = 0;
    std::uint64_t bytes_written = 0;
    bool replaced = false;
    double seconds = 0;
};

namespace detail {

// Which bytes of a merged tensor are filled: a copy landing on filled bytes is compared.
class coverage {
public:
    explicit coverage(std::uint64_t bytes) : bytes_(bytes), bits_((bytes + 63) / 64, 0) {}

    // Places `n` bytes at `off`: copied where empty, compared where filled. False on a
    // difference.
    bool place(std::byte* out, std::uint64_t off, const std::byte* src, std::uint64_t n) {
        const std::uint64_t end = off + n;
        for (std::uint64_t i = off; i < end;) {
            const bool filled = test(i);
            const std::uint64_t j = next_change(i, end, filled);
            if (filled) {
                if (std::memcmp(out + i, src + (i - off), j - i) != 0) return false;
            } else {
                std::memcpy(out + i, src + (i - off), j - i);
                fill(i, j);
            }
            i = j;
        }
        return true;
    }

    // The first byte not filled, or nullopt when all are.
    [[nodiscard]] std::optional<std::uint64_t> first_gap() const {
        const std::uint64_t g = next_change(0, bytes_, true);
        return g < bytes_ ? std::optional(g) : std::nullopt;
    }

private:
    [[nodiscard]] bool test(std::uint64_t i) const { return (bits_[i / 64] >> (i % 64)) & 1u; }

    // The first index in [i, end) whose state is not `filled` (end if none).
    [[nodiscard]] std::uint64_t next_change(std::uint64_t i, std::uint64_t end, bool filled) const {
        while (i < end) {
            std::uint64_t w = bits_[i / 64];
            if (filled) w = ~w;
            w &= ~std::uint64_t{0} << (i % 64);
            if (w != 0) return std::min(end, i / 64 * 64 + std::countr_zero(w));
            i = (i / 64 + 1) * 64;
        }
        return end;
    }

    void fill(std::uint64_t a, std::uint64_t b) {
        while (a < b) {
            const std::uint64_t word = a / 64, lo = a % 64;
            const std::uint64_t hi = std::min<std::uint64_t>(64, lo + (b - a));
            const std::uint64_t mask =
                (hi == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << hi) - 1)) &
                (~std::uint64_t{0} << lo);
            bits_[word] |= mask;
            a += hi - lo;
        }
    }

    std::uint64_t bytes_;
    std::vector<std::uint64_t> bits_;
};

struct merge_rank {
    std::uint32_t number;  // N of the folder's name, rank-0000N
    std::filesystem::path folder;
    checkpoint ckpt;
    export_metadata meta;
};

// The rank folders of an export, in folder order, each with its metadata (checked against its
// files; plan_merge checks the ranks against each other).
inline std::vector<merge_rank> open_export(const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        throw error(errc::checkpoint_not_found, "no export folder here",
                    error_context{.file = dir.string()});
    std::map<std::uint32_t, fs::path> folders;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (!name.starts_with("rank-")) continue;
        const std::string digits = name.substr(5);
        std::uint64_t n = 0;
        bool ok = !digits.empty() && digits.size() <= 9 &&
                  digits.find_first_not_of("0123456789") == std::string::npos;
        if (ok) n = std::stoull(digits);
        if (!ok || export_rank_folder(static_cast<std::uint32_t>(n)) != name)
            export_error("'" + name + "' is not a rank folder name (rank-00000, rank-00001, ...)",
                         it->path());
        std::error_code st;
        if (!it->is_directory(st)) export_error("'" + name + "' is not a folder", it->path());
        folders.emplace(static_cast<std::uint32_t>(n), it->path());
    }
    if (ec) throw system_error("list", ec.value(), dir.string());
    if (folders.empty())
        export_error("no rank folders (rank-00000, ...) here: not a per-rank export", dir);

    std::vector<merge_rank> ranks;
    for (const auto& [n, folder] : folders) {
        checkpoint c = checkpoint::open_path(folder);
        auto m = read_export_metadata(c);
        if (!m) export_error("this rank folder holds no export metadata", folder);
        ranks.push_back(merge_rank{n, folder, std::move(c), std::move(*m)});
    }
    return ranks;
}

}  // namespace detail

namespace detail {

// The output may be written: not inside the export, nor over a file the merge reads.
inline void check_merge_output(const std::vector<merge_rank>& ranks,
                               const std::filesystem::path& dir, const std::filesystem::path& out) {
    std::vector<std::filesystem::path> files;
    for (const auto& r : ranks)
        for (const auto& f : r.ckpt.files()) files.push_back(f.path);
    check_output_location(out, dir, files);
}

// Every rank's files in one cache (a bounded number open at once): rank r's file i is
// first[r] + i.
struct merge_files {
    file_cache cache;
    std::vector<std::size_t> first;
};

[[nodiscard]] inline merge_files open_merge_files(const std::vector<merge_rank>& ranks) {
    std::vector<cached_file> all;
    std::vector<std::size_t> first;
    for (const auto& rk : ranks) {
        first.push_back(all.size());
        for (auto& f : cached_files(rk.ckpt)) all.push_back(std::move(f));
    }
    return merge_files{file_cache(std::move(all), {.map = false}), std::move(first)};
}

// Output `out_t` of the merge (one source of a rank tensor) rebuilt into `merged` (at least
// `bytes`): the piece of each rank that holds it (every rank, or an expert's group) read into
// `local` and copied back through its slice map run backwards; bytes several ranks hold are
// compared, and every byte must be filled once.
inline void merge_tensor(const std::vector<merge_rank>& ranks, merge_files& files,
                         const merge_output& out_t, std::uint64_t bytes, std::byte* merged,
                         std::vector<std::byte>& local, merge_report& rep) {
    const std::uint32_t world = static_cast<std::uint32_t>(ranks.size());
    const export_metadata& m0 = ranks.front().meta;
    const export_tensor& t = ranks[out_t.rank].meta.tensors[out_t.tensor];
    const export_source& src = t.sources[out_t.source];
    const export_tensor* weight =
        out_t.weight ? &ranks[out_t.rank].meta.tensors[*out_t.weight] : nullptr;
    const std::string source_name =
        t.gathered_experts ? expert_source_name(src.name, out_t.expert) : src.name;
    coverage cov(bytes);
    const std::uint64_t bits = bit_size(t.dtype);
    for (std::uint32_t r = 0; r < world; ++r) {
        if (!holds_tensor(m0, t, r)) continue;
        const merge_cut cut = merge_cut_of(m0, t, r, weight);  // checked by plan_merge
        const located_tensor l = ranks[r].ckpt.tensor(t.name);
        const auto file = static_cast<std::size_t>(l.file - ranks[r].ckpt.files().data());
        const file_reader& reader = files.cache.reader(files.first[r] + file);
        // The bytes of the rank's tensor from `first` on, `size` of them.
        auto read = [&](std::uint64_t first, std::uint64_t size) {
            local.resize(static_cast<std::size_t>(size));
            reader.read_exact(local, l.tensor.file_begin() + first);
            rep.bytes_read += size;
        };
        // Gathered experts: an output is one expert's tensor, from its slab of the rank's tensor
        // alone (read when the rank holds that expert); otherwise the whole tensor at once.
        if (!t.gathered_experts) read(0, l.tensor.byte_size());
        // Element offsets to bytes (whole bytes: checked by plan_merge for sub-byte dtypes,
        // which are replicated, one box of the whole tensor); each piece (an expert's slab of
        // stacked experts) shifted to where it lies.
        cut.for_each_piece([&](const std::uint64_t* source_at, std::uint64_t local_at,
                               std::uint64_t expert) {
            std::uint64_t local_first = 0;
            if (t.gathered_experts) {
                if (expert != out_t.expert) return;
                local_first = local_at * bits / 8;
                read(local_first, cut.local_slab * bits / 8);
            }
            for_each_inverse_row(
                cut.slab.map, bits,
                [&](const copy_box& box, std::uint64_t at, std::uint64_t from, std::uint64_t n) {
                    if (box.source != out_t.source) return;
                    at += source_at[box.source] * bits / 8;
                    from += local_at * bits / 8 - local_first;
                    if (at + n > bytes || from + n > local.size())
                        export_error("inconsistent metadata: tensor '" + t.name +
                                         "' reaches outside its source '" + source_name + "'",
                                     ranks[r].folder, t.name);
                    if (!cov.place(merged, at, local.data() + from, n))
                        export_error("the copies of tensor '" + t.name + "' (source '" +
                                         source_name + "') differ between ranks: rank " +
                                         std::to_string(r) + " holds other bytes at byte " +
                                         std::to_string(at) + " than a rank before it",
                                     ranks[r].folder, t.name);
                });
        });
    }
    if (const auto gap = cov.first_gap())
        export_error("inconsistent metadata: the ranks' slices of tensor '" + t.name +
                         "' leave byte " + std::to_string(*gap) + " of source '" + source_name +
                         "' unfilled",
                     ranks.front().folder, t.name);
}

}  // namespace detail

// Merges the export at `dir` (rank-00000, ... of one world) into a checkpoint at `out` in the
// original layout, config.json and rank 0's other small files beside it. errc::invalid_export
// for missing or extra rank folders, mixed worlds, an unknown metadata version, inconsistent
// metadata, and copies of one tensor that differ between ranks (naming it).
inline merge_report merge_export(const std::filesystem::path& dir, const std::filesystem::path& out,
                                 const merge_options& o = {}) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<detail::merge_rank> ranks = detail::open_export(dir);
    std::vector<merge_rank_metadata> found;
    for (const auto& r : ranks) found.push_back(merge_rank_metadata{r.number, r.folder, &r.meta});
    const merge_plan plan = plan_merge(found);
    detail::check_merge_output(ranks, dir, out);

    merge_report rep;
    rep.world = plan.world;
    sharded_save_options so;
    so.max_shard_size = o.max_shard_size;
    so.force = o.force;
    sharded_writer w(out, plan.infos, so);
    rep.replaced = w.replacing();
    std::uint64_t total = 0;
    for (const auto& s : w.plan().shards) total += s.bytes;

    detail::merge_files files = detail::open_merge_files(ranks);
    std::vector<std::byte> local;
    aligned_buffer merged;
    std::uint64_t done = 0;
    w.write_shards([&](std::size_t i, safetensors_writer& sw) {
        if (o.cancel_point) o.cancel_point();
        const std::uint64_t bytes = tensor_byte_size(plan.infos[i]);
        if (merged.size() < bytes) merged = aligned_buffer(static_cast<std::size_t>(bytes));
        detail::merge_tensor(ranks, files, plan.outputs[i], bytes, merged.data(), local, rep);
        sw.write(std::span<const std::byte>(merged.data(), static_cast<std::size_t>(bytes)));
        done += bytes;
        ++rep.tensors;
        if (o.progress) o.progress(done, total);
    });
    rep.side_files =
        copy_side_files(ranks.front().folder, w.staging_folder(), {},
                        [&](const skipped_side_file& f) { rep.skipped_side_files.push_back(f); });
    rep.shard_files = w.plan().shards.size();
    if (o.cancel_point) o.cancel_point();
    files.cache.finish();  // no bytes of two versions of a file
    w.commit();
    rep.bytes_written = done;
    rep.seconds = seconds_since(t0);
    return rep;
}

}  // namespace safeshard
