// What a merge writes, decided from the rank folders' export metadata alone: the ranks checked
// against each other (one version, one world, every rank once, the same tensors described the
// same way), each tensor's cut checked for every rank, and the tensors of the merged
// checkpoint. Every field comes from files: each is checked before it sizes or indexes
// anything, and each refusal is errc::invalid_export naming the rank folder and the tensor.
// Reads no file (save/merge.hpp does; tests/fuzz/export_metadata_fuzz.cpp feeds this).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/format/export_metadata.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/shard/slice.hpp"

namespace safeshard {

// One rank folder of an export, as found.
struct merge_rank_metadata {
    std::uint32_t number = 0;        // N of the folder's name, rank-0000N
    std::filesystem::path folder{};  // named in errors
    const export_metadata* meta = nullptr;
};

// A tensor of the merged checkpoint: source `source` of the rank tensor `tensor` (an index
// into rank 0's metadata).
struct merge_output {
    std::size_t tensor = 0;
    std::uint8_t source = 0;
};

struct merge_plan {
    std::uint32_t world = 0;
    std::vector<merge_output> outputs{};
    std::vector<tensor_info> infos{};  // one per output: the source's name, dtype, shape
};

namespace detail {

[[noreturn]] inline void export_error(const std::string& why, const std::filesystem::path& file,
                                      const std::string& tensor = {}) {
    throw error(errc::invalid_export, why, error_context{.file = file.string(), .tensor = tensor});
}

// Rank r's cut of t, computed again from the recorded layout and source shapes.
[[nodiscard]] inline slice_result merge_slice(const export_tensor& t, std::uint32_t world,
                                              std::uint32_t r) {
    shape shapes[max_sources];
    const std::size_t n = std::min(t.sources.size(), max_sources);
    for (std::size_t s = 0; s < n; ++s) shapes[s] = t.sources[s].global;
    return slice(t.layout, shapes, t.sources.size() > max_sources ? max_sources + 1 : n, world, r);
}

// One version, one world, each rank 0..world-1 exactly once, in its own folder.
inline void check_merge_ranks(std::span<const merge_rank_metadata> ranks) {
    const merge_rank_metadata& first = ranks.front();
    for (const auto& r : ranks)
        if (r.meta->version != first.meta->version)
            export_error(
                r.folder.filename().string() + " holds version-" + std::to_string(r.meta->version) +
                    " export metadata, " + first.folder.filename().string() + " version " +
                    std::to_string(first.meta->version) + ": the ranks are not from one export",
                r.folder);
    const std::uint32_t world = first.meta->world;
    for (const auto& r : ranks)
        if (r.meta->world != world)
            export_error("mixed worlds: " + first.folder.filename().string() +
                             " was exported for a world of " + std::to_string(world) + ", " +
                             r.folder.filename().string() + " for " + std::to_string(r.meta->world),
                         r.folder);
    const std::filesystem::path dir = first.folder.parent_path();
    for (std::uint32_t k = 0; k < world; ++k)
        if (k >= ranks.size() || ranks[k].number != k)
            export_error(export_rank_folder(k) + " is missing (the export is for a world of " +
                             std::to_string(world) + ")",
                         dir / export_rank_folder(k));
    if (ranks.size() != world)
        export_error("rank folders beyond the world of " + std::to_string(world) + ": " +
                         ranks.back().folder.filename().string(),
                     ranks.back().folder);
    for (std::uint32_t k = 0; k < world; ++k)
        if (ranks[k].meta->rank != k)
            export_error("the folder " + export_rank_folder(k) + " holds the metadata of rank " +
                             std::to_string(ranks[k].meta->rank),
                         ranks[k].folder);
}

// Every rank describes the same tensors the same way as rank 0 (only local shapes and valid
// ranges differ), in any order.
inline void check_merge_tensors(std::span<const merge_rank_metadata> ranks) {
    const export_metadata& m0 = *ranks.front().meta;
    for (const auto& r : ranks) {
        const export_metadata& m = *r.meta;
        if (m.kv != m0.kv || m.kv_multiplier != m0.kv_multiplier ||
            m.tensors.size() != m0.tensors.size())
            export_error(
                "inconsistent metadata: this rank lists other tensors or another KV "
                "convention than rank 0",
                r.folder);
        const auto order = export_name_order(m);
        for (const export_tensor& a : m0.tensors) {
            const export_tensor* b = export_find(m, order, a.name);
            if (!b)
                export_error("inconsistent metadata: tensor '" + a.name +
                                 "' of rank 0 is not described by this rank",
                             r.folder, a.name);
            if (a.dtype != b->dtype || a.global != b->global || !(a.layout == b->layout) ||
                a.sources != b->sources || a.tied_to != b->tied_to || a.created != b->created)
                export_error("inconsistent metadata: tensor '" + b->name +
                                 "' is described differently than in rank 0",
                             r.folder, b->name);
        }
    }
}

// Rank r's recorded local shape and valid range of t agree with its layout's cut.
inline void check_merge_cut(const export_tensor& t, const export_tensor& tr,
                            const merge_rank_metadata& rank, std::uint32_t world) {
    const std::uint32_t r = rank.number;
    const slice_result sl = merge_slice(t, world, r);
    if (!sl.ok()) {
        std::vector<shape> shapes;
        for (const auto& s : t.sources) shapes.push_back(s.global);
        export_error("inconsistent metadata: tensor '" + t.name +
                         "': " + describe(t.layout, shapes, world, r),
                     rank.folder, t.name);
    }
    if (sl.local != tr.local || sl.global != t.global)
        export_error("inconsistent metadata: tensor '" + t.name + "' is " + tr.local.to_string() +
                         " of " + t.global.to_string() + " but its layout " + to_string(t.layout) +
                         " gives " + sl.local.to_string() + " of " + sl.global.to_string() +
                         " for rank " + std::to_string(r),
                     rank.folder, t.name);
    if (records_valid_rows(t.layout.kind)) {
        const auto [lo, hi] =
            valid_rows(t.layout, t.global, tr.local, r).value_or(valid_rows_range{0, 0});
        if (tr.valid_begin != lo || tr.valid_end != hi)
            export_error("inconsistent metadata: tensor '" + t.name +
                             "' records the valid range [" + std::to_string(tr.valid_begin) + ", " +
                             std::to_string(tr.valid_end) + ") for rank " + std::to_string(r) +
                             ", its layout gives [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + ")",
                         rank.folder, t.name);
    }
    if (bit_size(t.dtype) % 8 != 0 && cuts_along_dim(t.layout.kind))
        export_error("tensor '" + t.name + "' is " + std::string(name(t.dtype)) +
                         ": sub-byte tensors merge only when replicated",
                     rank.folder, t.name);
}

// The bytes of `s` in dtype t, counted as the writer counts them (tensor_byte_size: the bit
// count within 64 bits, whole bytes).
[[nodiscard]] inline std::uint64_t merge_bytes(const shape& s, dtype t, const std::string& what,
                                               const merge_rank_metadata& rank,
                                               const std::string& tensor) {
    const auto elements = s.element_count();
    std::uint64_t bits = 0;
    if (!elements || mul_overflows(*elements, std::uint64_t{bit_size(t)}, bits) || bits % 8 != 0)
        export_error("inconsistent metadata: " + what + " of shape " + s.to_string() + " in " +
                         std::string(name(t)) + " has no whole byte size in 64 bits",
                     rank.folder, tensor);
    return bits / 8;
}

}  // namespace detail

// The merge of the ranks `ranks` (in folder order, each with its metadata), or
// errc::invalid_export naming what is wrong: mixed versions or worlds, a missing, extra or
// misplaced rank, tensors described differently, a cut that does not give the recorded local
// shape, a source claimed twice, sizes beyond 64 bits.
[[nodiscard]] inline merge_plan plan_merge(std::span<const merge_rank_metadata> ranks) {
    if (ranks.empty()) throw error(errc::invalid_export, "no rank folders");
    detail::check_merge_ranks(ranks);
    detail::check_merge_tensors(ranks);
    merge_plan plan;
    plan.world = static_cast<std::uint32_t>(ranks.size());
    const export_metadata& m0 = *ranks.front().meta;
    std::vector<std::vector<std::size_t>> orders;
    for (const auto& r : ranks) orders.push_back(detail::export_name_order(*r.meta));
    std::set<std::string, std::less<>> names;
    std::uint64_t total = 0;
    for (std::size_t ti = 0; ti < m0.tensors.size(); ++ti) {
        const export_tensor& t = m0.tensors[ti];
        if (t.tied()) continue;
        for (std::uint32_t r = 0; r < plan.world; ++r) {
            const export_tensor& tr = *detail::export_find(*ranks[r].meta, orders[r], t.name);
            detail::check_merge_cut(t, tr, ranks[r], plan.world);
        }
        // Each rank's cut gave its stored shape: the tensor is no larger than the ranks' pieces
        // of it together (which is what bounds the merge's buffer).
        for (std::size_t s = 0; s < t.sources.size(); ++s) {
            const export_source& src = t.sources[s];
            if (!names.insert(src.name).second)
                detail::export_error("inconsistent metadata: the source '" + src.name +
                                         "' is claimed by two tensors",
                                     ranks.front().folder, t.name);
            const std::uint64_t b = detail::merge_bytes(
                src.global, t.dtype, "its source '" + src.name + "'", ranks.front(), t.name);
            if (add_overflows(total, b, total))
                detail::export_error("the merged checkpoint would be over 2^64 bytes",
                                     ranks.front().folder, t.name);
            plan.outputs.push_back(merge_output{ti, static_cast<std::uint8_t>(s)});
            plan.infos.push_back(tensor_info{src.name, t.dtype, src.global});
        }
    }
    return plan;
}

}  // namespace safeshard
