// What a merge writes, decided from the rank folders' export metadata alone: the ranks checked
// against each other (one version, one world, every rank once, each tensor held by the ranks
// that should hold it — every rank, or an expert's group — and described the same way by
// each), each tensor's cut checked for every rank that holds it, and the tensors of the merged
// checkpoint. Every field comes from files: each is checked before it sizes or indexes
// anything, and each refusal is errc::invalid_export naming the rank folder and the tensor.
// Reads no file (save/merge.hpp does; tests/fuzz/export_metadata_fuzz.cpp feeds this).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/name_hash.hpp"
#include "safeshard/format/export_metadata.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/shard/companion.hpp"
#include "safeshard/shard/parameter.hpp"
#include "safeshard/shard/slice.hpp"

namespace safeshard {

// One rank folder of an export, as found.
struct merge_rank_metadata {
    std::uint32_t number = 0;        // N of the folder's name, rank-0000N
    std::filesystem::path folder{};  // named in errors
    const export_metadata* meta = nullptr;
};

// A tensor of the merged checkpoint: source `source` of the rank tensor `tensor` (an index
// into the metadata of `rank`, the first rank that holds it); of gathered experts, that
// source's tensor of expert `expert`; of a quantization companion, `weight` is the index of
// the weight it follows (in the same rank's metadata).
struct merge_output {
    std::uint32_t rank = 0;
    std::size_t tensor = 0;
    std::uint8_t source = 0;
    std::uint64_t expert = 0;
    std::optional<std::size_t> weight{};
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

// The shapes t's layout cuts: its sources', of stacked experts each expert's slab (the
// sources without dim 0 where they stack the experts; gathered, the sources).
[[nodiscard]] inline std::vector<shape> merge_slab_shapes(const export_tensor& t) {
    const std::size_t skip = t.stacked_experts != 0 && !t.gathered_experts ? 1 : 0;
    std::vector<shape> out;
    for (const auto& s : t.sources)
        out.push_back(shape::from(s.global.dims().subspan(std::min(skip, s.global.rank()))));
    return out;
}

// A packed weight's sources (their slabs) in values (weight_values_shape of t.storage);
// nullopt where one is not 2-D or passes 64 bits.
[[nodiscard]] inline std::optional<std::vector<shape>> merge_value_shapes(const export_tensor& t) {
    std::vector<shape> out;
    for (const auto& s : merge_slab_shapes(t)) {
        const auto v = weight_values_shape(t.storage, s);
        if (!v) return std::nullopt;
        out.push_back(*v);
    }
    return out;
}

// A packed weight's cut of its values (`values`, over `shapes`) in whole stored elements.
[[nodiscard]] inline slice_result merge_packed(const export_tensor& t, const slice_result& values,
                                               std::span<const shape> shapes, std::uint32_t ways) {
    const std::vector<shape> stored = merge_slab_shapes(t);
    return companion_slice({.parameter = t.name,
                            .weight = &values,
                            .weight_sources = shapes,
                            .companion_sources = stored,
                            .grid = t.storage,
                            .ways = ways,
                            .follower = "packed storage"});
}

// A rank's cut of t's values (of a packed weight, in values: merge_value_shapes),
// computed again from the recorded layout and source shapes; for stacked experts, the cut of
// each expert's slab (the sources without dim 0, or gathered, the sources).
[[nodiscard]] inline slice_result merge_value_slice(const export_tensor& t, export_cut_place at) {
    if (t.packed()) {
        const auto shapes = merge_value_shapes(t);
        if (!shapes) {
            slice_result bad;
            bad.status = layout_status::shape_mismatch;
            return bad;
        }
        return slice(t.layout, std::span<const shape>(*shapes), at.ways, at.position);
    }
    const std::vector<shape> shapes = merge_slab_shapes(t);
    const std::size_t n = std::min(shapes.size(), max_sources);
    return slice(t.layout, shapes.data(), shapes.size() > max_sources ? max_sources + 1 : n,
                 at.ways, at.position);
}

// A rank's cut of t's stored elements: its values' cut, a packed weight's in whole elements.
[[nodiscard]] inline slice_result merge_slice(const export_tensor& t, export_cut_place at) {
    slice_result v = merge_value_slice(t, at);
    if (!t.packed() || !v.ok()) return v;
    return merge_packed(t, v, *merge_value_shapes(t), at.ways);
}

}  // namespace detail

// How a rank holds tensor t of an export: the cut of the whole tensor, or for stacked experts
// the cut of each expert's slab (the same for all) repeated for the experts the rank holds.
struct merge_cut {
    export_cut_place at{};                        // the ways the slab is cut, the rank's piece
    slice_result slab{};                          // the whole tensor's, when not stacked
    shape local{};                                // the rank's tensor
    shape global{};                               // the tensor's, the experts' dim included
    bool stacked = false;                         // stacked experts
    std::vector<std::uint64_t> experts{};         // stacked: the rank's, in order
    std::uint64_t source_slab[max_sources] = {};  // stacked in the sources: an expert's elements
    std::uint64_t local_slab = 0;

    [[nodiscard]] bool ok() const noexcept { return slab.ok(); }
    // Calls f(source_offsets, local_offset, expert) for each piece of the rank's tensor: the
    // element offsets the slab map's boxes are shifted by (once, by nothing, when not stacked;
    // gathered experts' sources are each one expert's, unshifted), and the piece's expert.
    template <class F>
    void for_each_piece(F&& f) const {
        if (!stacked) {
            const std::uint64_t none[max_sources] = {};
            f(none, std::uint64_t{0}, std::uint64_t{0});
            return;
        }
        std::uint64_t at[max_sources] = {};
        for (std::size_t j = 0; j < experts.size(); ++j) {
            for (std::size_t s = 0; s < max_sources; ++s) at[s] = experts[j] * source_slab[s];
            f(at, j * local_slab, experts[j]);
        }
    }
};

namespace detail {
// A companion's cut: its weight's (`w`, the record t.companion_of names) followed in the grid's
// units (companion_slice); errors as companion_slice's, source_count without the weight.
[[nodiscard]] inline slice_result merge_companion_slice(const export_tensor& t,
                                                        const export_tensor* w,
                                                        export_cut_place at) {
    slice_result c;
    if (!w) {
        c.status = layout_status::source_count;
        return c;
    }
    const slice_result ws = merge_value_slice(*w, at);
    if (!ws.ok()) return ws;
    const std::vector<shape> weights =
        w->packed() ? *merge_value_shapes(*w) : merge_slab_shapes(*w);
    const std::vector<shape> companions = merge_slab_shapes(t);
    return companion_slice({.parameter = w->name,
                            .weight = &ws,
                            .weight_sources = weights,
                            .companion_sources = companions,
                            .grid = t.grid,
                            .ways = at.ways});
}
}  // namespace detail

// The cut of t for `rank` of the export m; of a quantization companion, its weight's cut
// (`weight`, the record t.companion_of names) in its grid's units, errc::invalid_layout or
// shape_mismatch where the weight's pieces do not fall on the grid.
[[nodiscard]] inline merge_cut merge_cut_of(const export_metadata& m, const export_tensor& t,
                                            std::uint32_t rank,
                                            const export_tensor* weight = nullptr) {
    merge_cut c;
    c.at = cut_place(m, t, rank);
    c.slab = t.companion() ? detail::merge_companion_slice(t, weight, c.at)
                           : detail::merge_slice(t, c.at);
    if (t.stacked_experts == 0 || !c.slab.ok()) {
        c.local = c.slab.local;
        c.global = c.slab.global;
        return c;
    }
    c.stacked = true;
    c.experts = experts_of_group(expert_rank_of(rank, m.world, m.expert_groups.ep).group,
                                 t.stacked_experts, m.expert_groups);
    for (std::size_t s = 0; s < t.sources.size() && s < max_sources && !t.gathered_experts; ++s)
        c.source_slab[s] = t.sources[s].global.inner_count(0).value_or(0);
    c.local_slab = c.slab.local.element_count().value_or(0);
    c.local = shape{c.experts.size()};
    c.global = shape{t.stacked_experts};
    for (const auto d : c.slab.local.dims()) c.local.push_back(d);
    for (const auto d : c.slab.global.dims()) c.global.push_back(d);
    return c;
}

namespace detail {

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

// A tensor of the export: the first rank that holds it, and its index in that rank's metadata.
struct merge_tensor_ref {
    std::uint32_t rank = 0;
    std::size_t index = 0;
};

// Every rank has rank 0's KV convention and spread of experts.
inline void check_merge_conventions(std::span<const merge_rank_metadata> ranks) {
    const export_metadata& m0 = *ranks.front().meta;
    for (const auto& r : ranks) {
        const export_metadata& m = *r.meta;
        if (m.kv != m0.kv || m.kv_multiplier != m0.kv_multiplier)
            export_error("inconsistent metadata: this rank has another KV convention than rank 0",
                         r.folder);
        if (m.experts != m0.experts || !(m.expert_groups == m0.expert_groups))
            export_error(
                "inconsistent metadata: this rank spreads the experts otherwise than rank 0 (" +
                    std::to_string(m.experts) + " experts over " +
                    std::to_string(m.expert_groups.ep) + " groups, rank 0 " +
                    std::to_string(m0.experts) + " over " + std::to_string(m0.expert_groups.ep) +
                    ")",
                r.folder);
    }
}

[[nodiscard]] inline bool described_alike(const export_tensor& a, const export_tensor& b) {
    return a.dtype == b.dtype && a.global == b.global && a.layout == b.layout &&
           a.sources == b.sources && a.tied_to == b.tied_to && a.created == b.created &&
           a.expert == b.expert && a.stacked_experts == b.stacked_experts &&
           a.gathered_experts == b.gathered_experts && a.companion_of == b.companion_of &&
           a.grid == b.grid && a.storage == b.storage;
}

// The rank that should hold `t` (every rank, or the ranks of its expert group) but does not
// describe it, or nullopt.
[[nodiscard]] inline std::optional<std::uint32_t> rank_lacking(
    std::span<const merge_rank_metadata> ranks, std::span<const std::vector<std::size_t>> orders,
    const export_tensor& t) {
    const export_metadata& m0 = *ranks.front().meta;
    for (std::uint32_t r = 0; r < ranks.size(); ++r)
        if (holds_tensor(m0, t, r) && !export_find(*ranks[r].meta, orders[r], t.name)) return r;
    return std::nullopt;
}

// The export's tensors, each once, in the order first met rank by rank; each held by exactly
// the ranks that should hold it (a tensor of no expert by every rank, an expert's by the
// ranks of its expert group) and described by each as by the first (only local shapes and
// valid ranges differ).
[[nodiscard]] inline std::vector<merge_tensor_ref> merge_tensors(
    std::span<const merge_rank_metadata> ranks, std::span<const std::vector<std::size_t>> orders) {
    check_merge_conventions(ranks);
    const export_metadata& m0 = *ranks.front().meta;
    std::vector<merge_tensor_ref> refs;
    std::vector<std::uint32_t> holders;  // of refs[k]
    std::unordered_map<std::string_view, std::size_t, name_hash, std::equal_to<>> index;
    for (std::uint32_t r = 0; r < ranks.size(); ++r) {
        const export_metadata& m = *ranks[r].meta;
        for (std::size_t i = 0; i < m.tensors.size(); ++i) {
            const export_tensor& b = m.tensors[i];
            if (!holds_tensor(m0, b, r))
                export_error("inconsistent metadata: tensor '" + b.name + "' of expert " +
                                 std::to_string(*b.expert) + " is not one of this rank's experts",
                             ranks[r].folder, b.name);
            const auto [it, added] = index.emplace(b.name, refs.size());
            if (added) {
                refs.push_back(merge_tensor_ref{r, i});
                holders.push_back(1);
                continue;
            }
            const merge_tensor_ref& ref = refs[it->second];
            if (!described_alike(ranks[ref.rank].meta->tensors[ref.index], b))
                export_error("inconsistent metadata: tensor '" + b.name +
                                 "' is described differently than in " +
                                 export_rank_folder(ref.rank),
                             ranks[r].folder, b.name);
            ++holders[it->second];
        }
    }
    for (std::size_t k = 0; k < refs.size(); ++k) {
        const export_tensor& t = ranks[refs[k].rank].meta->tensors[refs[k].index];
        std::uint32_t should = 0;
        for (std::uint32_t r = 0; r < ranks.size(); ++r) should += holds_tensor(m0, t, r) ? 1 : 0;
        if (holders[k] == should) continue;
        if (const auto r = rank_lacking(ranks, orders, t))
            export_error("inconsistent metadata: tensor '" + t.name + "' of " +
                             export_rank_folder(refs[k].rank) + " is not described by this rank",
                         ranks[*r].folder, t.name);
        export_error("inconsistent metadata: tensor '" + t.name + "' is described twice",
                     ranks[refs[k].rank].folder, t.name);
    }
    return refs;
}

// Rank r's recorded local shape and valid range of t agree with its layout's cut (of a
// companion, its weight's `w` in its grid's units).
inline void check_merge_cut(const export_tensor& t, const export_tensor& tr,
                            const merge_rank_metadata& rank, const export_tensor* w = nullptr) {
    const std::uint32_t r = rank.number;
    const merge_cut c = [&] {
        try {
            return merge_cut_of(*rank.meta, t, r, w);
        } catch (const error& e) {
            if (e.code() == errc::invalid_export) throw;
            export_error("inconsistent metadata: tensor '" + t.name + "': " + e.message(),
                         rank.folder, t.name);
        }
    }();
    if (!c.ok() && t.companion()) {
        export_error("inconsistent metadata: tensor '" + t.name + "' follows '" + t.companion_of +
                         "', whose cut is " + std::string(to_string(c.slab.status)),
                     rank.folder, t.name);
    } else if (!c.ok()) {
        std::vector<shape> shapes;
        for (const auto& s : t.sources) shapes.push_back(s.global);
        export_error("inconsistent metadata: tensor '" + t.name +
                         "': " + describe(t.layout, shapes, c.at.ways, c.at.position),
                     rank.folder, t.name);
    }
    const shape& global = c.global;
    if (c.local != tr.local || global != t.global)
        export_error("inconsistent metadata: tensor '" + t.name + "' is " + tr.local.to_string() +
                         " of " + t.global.to_string() + " but its layout " + to_string(t.layout) +
                         (t.stacked_experts != 0 ? " (each expert's slab)" : "") + " gives " +
                         c.local.to_string() + " of " + global.to_string() + " for rank " +
                         std::to_string(r),
                     rank.folder, t.name);
    if (records_valid_rows(t.layout.kind) && !t.companion()) {
        const auto [lo, hi] =
            slab_valid_rows(t.layout, t.global, tr.local, c.at.position, t.stacked_experts != 0)
                .value_or(valid_rows_range{0, 0});
        if (tr.valid_begin != lo || tr.valid_end != hi)
            export_error("inconsistent metadata: tensor '" + t.name +
                             "' records the valid range [" + std::to_string(tr.valid_begin) + ", " +
                             std::to_string(tr.valid_end) + ") for rank " + std::to_string(r) +
                             ", its layout gives [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + ")",
                         rank.folder, t.name);
    }
    if (bit_size(t.dtype) % 8 != 0 && (cuts_along_dim(t.layout.kind) || t.stacked_experts != 0))
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
// misplaced rank, a tensor missing from a rank that should hold it (or held by one that
// should not), tensors described differently, a cut that does not give the recorded local
// shape, a source claimed twice, sizes beyond 64 bits.
[[nodiscard]] inline merge_plan plan_merge(std::span<const merge_rank_metadata> ranks) {
    if (ranks.empty()) throw error(errc::invalid_export, "no rank folders");
    detail::check_merge_ranks(ranks);
    std::vector<std::vector<std::size_t>> orders;
    for (const auto& r : ranks) orders.push_back(detail::export_name_order(*r.meta));
    const std::vector<detail::merge_tensor_ref> refs = detail::merge_tensors(ranks, orders);
    merge_plan plan;
    plan.world = static_cast<std::uint32_t>(ranks.size());
    const export_metadata& m0 = *ranks.front().meta;
    std::set<std::string, std::less<>> names;
    std::uint64_t total = 0;
    for (const detail::merge_tensor_ref& ref : refs) {
        const export_tensor& t = ranks[ref.rank].meta->tensors[ref.index];
        if (t.tied()) continue;
        for (std::uint32_t r = 0; r < plan.world; ++r) {
            if (!holds_tensor(m0, t, r)) continue;
            const export_tensor& tr = *detail::export_find(*ranks[r].meta, orders[r], t.name);
            detail::check_merge_cut(
                t, tr, ranks[r],
                t.companion() ? detail::export_find(*ranks[r].meta, orders[r], t.companion_of)
                              : nullptr);
        }
        // Each rank's cut gave its stored shape: the tensor is no larger than the ranks' pieces
        // of it together (which is what bounds the merge's buffer).
        const merge_rank_metadata& holder = ranks[ref.rank];
        std::optional<std::size_t> weight;  // of a companion: read_export_metadata found it
        if (t.companion())
            weight = static_cast<std::size_t>(
                detail::export_find(*holder.meta, orders[ref.rank], t.companion_of) -
                holder.meta->tensors.data());
        // Gathered experts: each source once per expert, expert-major (each expert's tensors
        // together, as a per-expert checkpoint lists them).
        const std::uint64_t experts = t.gathered_experts ? t.stacked_experts : 1;
        for (std::uint64_t e = 0; e < experts; ++e)
            for (std::size_t s = 0; s < t.sources.size(); ++s) {
                const export_source& src = t.sources[s];
                std::string name = t.gathered_experts ? expert_source_name(src.name, e) : src.name;
                const std::uint64_t b = detail::merge_bytes(
                    src.global, t.dtype, "its source '" + name + "'", holder, t.name);
                if (!names.insert(name).second)
                    detail::export_error("inconsistent metadata: the source '" + name +
                                             "' is claimed by two tensors",
                                         holder.folder, t.name);
                if (add_overflows(total, b, total))
                    detail::export_error("the merged checkpoint would be over 2^64 bytes",
                                         holder.folder, t.name);
                plan.outputs.push_back(
                    merge_output{ref.rank, ref.index, static_cast<std::uint8_t>(s), e, weight});
                plan.infos.push_back(tensor_info{std::move(name), t.dtype, src.global});
            }
    }
    return plan;
}

}  // namespace safeshard
