// The export metadata, a file format: the metadata of a per-rank export, a versioned JSON document
// stored under the "safeshard" key of each shard's __metadata__, saying what each tensor of the
// rank is and every parameter needed to undo its cut (the format is in README.md, "The export
// metadata"). A rank folder loads back through identity layouts; consolidation reads nothing else.
//
// Version 2 (written): each shard's document describes the tensors that shard stores (and the
// tied aliases of those) and carries a small rank-level record (version, world, rank, KV
// convention, the rank's tensor count); what the shard's header already says (dtype, local
// shape) is not repeated, and each distinct cut is written once per shard ("cuts"), so a
// rank's headers grow with its tensors, not with tensors x shards. Version 1 (read only): every
// shard carries the same description of the whole rank.
//
// Later records are optional fields of version 2, not a version 3 (a version-2 reader
// refuses a field it does not know, naming it, rather than merging wrongly):
//  - expert parallelism (written when the model has experts): rank-level "experts" (the
//    experts of each layer with experts), "ep" and "expert_placement" (how they spread over
//    the ranks, shard/expert_parallel.hpp), and per expert's tensor its record's "expert"
//    (which expert of its layer): the tensor is held by the ranks of that expert's group
//    only, cut world/ep ways at the rank's place in its group; a tensor stacking the layer's
//    experts on dim 0 says so in its record's "stacked_experts" (the count): the rank holds
//    its group's experts' slabs, in expert order, each cut as the cut says; with
//    "gathered_experts": true the slabs came from one tensor per expert, each source's name
//    holding "{e}" for the expert's number and its shape being one expert's;
//  - quantization companions (scales of a quantized weight, shard/companion.hpp): per tensor
//    "companion_of" (the rank tensor of the weight whose cut it follows; its cut is the
//    weight's) and "grid" [rows, cols] (weight elements per companion element along each dim,
//    0 for one entry over the whole dim), with its "sources" listed (per tensor scales of a
//    weight joining k tensors: k sources, the rank tensor [k]); "grid_all" [rows, cols]
//    (true where every rank holds all the dim's blocks: GPTQ's act-order scales), written
//    where one is true;
//  - packed weights (NVFP4's two values a byte, GPTQ's eight a word): per tensor "storage"
//    [rows, cols] (the weight's values [N, K] a stored element covers along each dim; its cut
//    cuts the values, in whole stored elements);
//  - "transposed": true on a companion or packed weight stored transposed ([K-grid, N-grid]:
//    GPTQ's and AWQ's tensors);
//  - a packed weight of stacked experts and its companions say "stacked_experts" (and
//    "gathered_experts") alike: each expert's slab is cut as one unstacked tensor would be,
//    and a companion stacked in its sources holds the experts on dim 0 as its weight does.
//
// This header holds its types; format/export_metadata_writer.hpp writes its documents and
// format/export_metadata_reader.hpp reads them back. The fields of a cut come from the layout
// kinds (shard/layouts/kinds.hpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/companion.hpp"
#include "safeshard/shard/expert_parallel.hpp"
#include "safeshard/shard/layout.hpp"

namespace safeshard {

// The __metadata__ key; the version this library writes, and the oldest it reads.
inline constexpr std::string_view export_metadata_key = "safeshard";
inline constexpr std::uint64_t export_metadata_version = 2;
inline constexpr std::uint64_t export_metadata_oldest_version = 1;

// A checkpoint tensor a rank tensor was cut from (global shape, dtype as stored there).
struct export_source {
    std::string name;
    shape global{};
    safeshard::dtype dtype = safeshard::dtype::u8;
    friend bool operator==(const export_source&, const export_source&) = default;
};

// One tensor of a rank: as stored in the rank's files, and how to undo its cut.
struct export_tensor {
    std::string name;
    safeshard::dtype dtype = safeshard::dtype::u8;  // as stored (after any conversion)
    shape local{};                                  // this rank's shape, padding included
    shape global{};                                 // the sources concatenated along dim
    safeshard::layout layout{};
    std::vector<export_source> sources{};   // in the layout's order; empty when tied
    std::string tied_to{};                  // non-empty: no bytes of its own, aliases that tensor
    bool created = false;                   // initialised by the loader, not read
    std::optional<std::uint64_t> expert{};  // an expert's tensor: which expert of its layer
    // The layer's experts stacked on dim 0 (how many; 0: not stacked): the layout cuts each
    // expert's slab (the sources without dim 0), the rank holds its group's experts' slabs.
    std::uint64_t stacked_experts = 0;
    // Stacked experts gathered from one tensor per expert (the engine's fused experts): each
    // source's name holds "{e}" for the expert (once), its shape is one expert's.
    bool gathered_experts = false;
    // A quantization companion (a scale grid): the rank tensor of the weight whose cut it
    // follows in the units of `grid` (shard/companion.hpp); its layout is the weight's.
    std::string companion_of{};
    companion_grid grid{};
    // A packed weight: how its stored elements cover its values [N, K] (its layout cuts the
    // values, the stored elements follow whole: grid<1,2> for stored [N, K / 2]); grid<1,1>:
    // not packed.
    companion_grid storage{};
    // padded_split: the global indices along dim this rank holds real rows of, [begin, end).
    std::uint64_t valid_begin = 0;
    std::uint64_t valid_end = 0;

    [[nodiscard]] bool tied() const noexcept { return !tied_to.empty(); }
    [[nodiscard]] bool companion() const noexcept { return !companion_of.empty(); }
    [[nodiscard]] bool packed() const noexcept { return storage != companion_grid{}; }
    friend bool operator==(const export_tensor&, const export_tensor&) = default;
};

// A rank's description, all its shards together (tensors in the order the shards list them:
// version 2, each shard's by name, then the tensors tied to them).
struct export_metadata {
    std::uint64_t version = export_metadata_version;  // as read (1 or 2)
    std::uint32_t world = 1;
    std::uint32_t rank = 0;
    kv_convention kv = kv_contiguous;
    std::uint64_t kv_multiplier = 0;  // resolved (max(1, world / KV) unless given); 0 = no GQA
    // A mixture of experts: the experts of each layer with experts (0: none recorded), and how
    // they spread over the ranks.
    std::uint64_t experts = 0;
    expert_parallel expert_groups{};
    std::vector<export_tensor> tensors{};

    // A linear search (for a few look-ups; readers of many build an index).
    [[nodiscard]] const export_tensor* find(std::string_view name) const noexcept {
        for (const auto& t : tensors)
            if (t.name == name) return &t;
        return nullptr;
    }
    friend bool operator==(const export_metadata&, const export_metadata&) = default;
};

// A tensor as a shard's header stores it.
struct export_stored_tensor {
    std::string_view name;
    safeshard::dtype dtype = safeshard::dtype::u8;
    shape local{};
};

// One shard file of a rank folder, as the metadata reader sees it.
struct export_shard_file {
    std::string path;                          // named in errors
    std::optional<std::string_view> document;  // its __metadata__["safeshard"], if any
    std::vector<export_stored_tensor> stored;  // every tensor its header holds
};

// A rank's folder inside an export: "rank-00003" (five digits at least).
[[nodiscard]] inline std::string export_rank_folder(std::uint32_t rank) {
    std::string n = std::to_string(rank);
    if (n.size() < 5) n.insert(0, 5 - n.size(), '0');
    return "rank-" + n;
}

namespace detail {

// "names_hash" of a version-2 document: FNV-1a (64 bits) over the names of the tensors the
// shard stores, in byte order, each followed by a NUL byte; 16 lowercase hex digits. It ties the
// positional records to the shard they were written for.
template <class Names>
[[nodiscard]] std::string export_names_hash(const Names& sorted_names) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    auto mix = [&](unsigned char c) {
        h ^= c;
        h *= 0x100000001b3ull;
    };
    for (const std::string_view n : sorted_names) {
        for (const char c : n) mix(static_cast<unsigned char>(c));
        mix(0);
    }
    static constexpr char hex[] = "0123456789abcdef";
    std::string out(16, '0');
    for (int i = 15; i >= 0; --i, h >>= 4) out[static_cast<std::size_t>(i)] = hex[h & 0xf];
    return out;
}

// Indices of m.tensors sorted by name.
[[nodiscard]] inline std::vector<std::size_t> export_name_order(const export_metadata& m) {
    std::vector<std::size_t> order(m.tensors.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](std::size_t a, std::size_t b) { return m.tensors[a].name < m.tensors[b].name; });
    return order;
}

// The tensor of m named `name`, through `order` (export_name_order), or nullptr.
[[nodiscard]] inline const export_tensor* export_find(const export_metadata& m,
                                                      std::span<const std::size_t> order,
                                                      std::string_view name) {
    const auto it =
        std::lower_bound(order.begin(), order.end(), name,
                         [&](std::size_t i, std::string_view n) { return m.tensors[i].name < n; });
    return it != order.end() && m.tensors[*it].name == name ? &m.tensors[*it] : nullptr;
}

}  // namespace detail

// How a tensor of an export is cut for one rank: `ways` ways, the rank's piece being
// `position`. An expert's tensor (and each expert's slab of stacked experts) is cut within its
// expert group (world/ep ways, the rank's place in its group), any other over the world.
struct export_cut_place {
    std::uint32_t ways = 1;
    std::uint32_t position = 0;
};

[[nodiscard]] inline export_cut_place cut_place(const export_metadata& m, const export_tensor& t,
                                                std::uint32_t rank) noexcept {
    if (!t.expert && t.stacked_experts == 0) return {m.world, rank};
    const expert_rank r = expert_rank_of(rank, m.world, m.expert_groups.ep);
    return {r.ways, r.position};
}

// Whether `rank` holds t: an expert's tensor is held by the ranks of its expert group only.
[[nodiscard]] inline bool holds_tensor(const export_metadata& m, const export_tensor& t,
                                       std::uint32_t rank) noexcept {
    return !t.expert || holds_expert(expert_rank_of(rank, m.world, m.expert_groups.ep), *t.expert,
                                     m.experts, m.expert_groups);
}

// Throws invalid_export unless (rank, world) is the one the export was cut for, and, when it
// records experts, `experts` the way they spread over the ranks.
inline void check_export_rank(const export_metadata& m, std::uint32_t rank, std::uint32_t world,
                              const std::string& file = {}, expert_parallel experts = {}) {
    if (m.rank != rank || m.world != world)
        throw error(errc::invalid_export,
                    "this folder is rank " + std::to_string(m.rank) + " of a world of " +
                        std::to_string(m.world) + " exported by safeshard; it loads only as that " +
                        "rank (asked for rank " + std::to_string(rank) + " of " +
                        std::to_string(world) + "): load " + export_rank_folder(rank) +
                        " of an export for that world, or the original checkpoint",
                    error_context{.file = file});
    if (m.experts != 0 && !(m.expert_groups == experts))
        throw error(errc::invalid_export,
                    "this folder holds the experts of rank " + std::to_string(m.rank) +
                        " with an expert parallel size of " + std::to_string(m.expert_groups.ep) +
                        " (" + std::string(to_string(m.expert_groups.placement)) +
                        " placement); it loads only with those (asked for " +
                        std::to_string(experts.ep) + ", " +
                        std::string(to_string(experts.placement)) + ")",
                    error_context{.file = file});
}

}  // namespace safeshard
