// The metadata of a per-rank export: a versioned JSON document stored under the "safeshard" key
// of each shard's __metadata__, saying what each tensor of the rank is and every parameter
// needed to undo its cut (the format is in README.md, "The export metadata"). A rank folder
// loads back through identity layouts; consolidation reads nothing else.
//
// Version 2 (written): each shard's document describes the tensors that shard stores (and the
// tied aliases of those) and carries a small rank-level record (version, world, rank, KV
// convention, the rank's tensor count); what the shard's header already says (dtype, local
// shape) is not repeated, and each distinct cut is written once per shard ("cuts"), so a
// rank's headers grow with its tensors, not with tensors x shards. Version 1 (read only): every
// shard carries the same description of the whole rank.
//
// What the next records add are optional fields of version 2, not a version 3 (a version-2
// reader refuses a field it does not know, naming it, rather than merging wrongly):
//  - expert parallelism: rank-level "ep", "expert_placement" and "experts" (count); per cut
//    the expert group whose ranks hold the tensor and its TP ways within the group;
//  - quantization companions (scales, zeros, group indices): per tensor "companion_of" (the
//    weight whose cut it follows), per cut the companion's "unit" (weight elements per
//    companion element along dim) and any padding.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <simdjson.h>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/json_text.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/parameter.hpp"
#include "safeshard/shard/schema.hpp"
#include "safeshard/shard/slice.hpp"

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
    std::vector<export_source> sources{};  // in the layout's order; empty when tied
    std::string tied_to{};                 // non-empty: no bytes of its own, aliases that tensor
    bool created = false;                  // initialised by the loader, not read
    // padded_split: the global indices along dim this rank holds real rows of, [begin, end).
    std::uint64_t valid_begin = 0;
    std::uint64_t valid_end = 0;

    [[nodiscard]] bool tied() const noexcept { return !tied_to.empty(); }
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

// The rows [begin, end) along dim of a padded_split tensor of global extent n that rank
// `rank` holds real data for, `per` rows a rank (saturating: no overflow on hostile input).
[[nodiscard]] inline std::pair<std::uint64_t, std::uint64_t> padded_valid_range(
    std::uint64_t n, std::uint64_t per, std::uint32_t rank) noexcept {
    std::uint64_t lo = 0, hi = 0;
    if (mul_overflows(per, std::uint64_t{rank}, lo) || lo > n) lo = n;
    if (add_overflows(lo, per, hi) || hi > n) hi = n;
    return {lo, hi};
}

// The global extent of `global` that differs from `local`, when it is only along `dim`.
[[nodiscard]] inline std::optional<std::uint64_t> extent_along(const shape& local,
                                                               const shape& global,
                                                               std::size_t dim) noexcept {
    if (local.rank() != global.rank() || dim >= local.rank()) return std::nullopt;
    for (std::size_t i = 0; i < local.rank(); ++i)
        if (i != dim && local[i] != global[i]) return std::nullopt;
    return global[dim];
}

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

inline void json_escape_into(std::string& out, std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    out += '"';
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    out += "\\u00";
                    out += hex[c >> 4];
                    out += hex[c & 0xf];
                } else {
                    out += ch;  // UTF-8 passes through (names are checked UTF-8)
                }
        }
    }
    out += '"';
}

inline void json_u64s_into(std::string& out, const std::uint64_t* v, std::size_t n) {
    out += '[';
    for (std::size_t i = 0; i < n; ++i) {
        if (i) out += ',';
        out += std::to_string(v[i]);
    }
    out += ']';
}

inline void json_shape_into(std::string& out, const shape& s) {
    json_u64s_into(out, s.begin(), s.rank());
}

// A cut of the "cuts" table: the layout's kind and the fields its kind uses, and the dtype the
// sources had when it differs from the stored one.
inline void json_cut_into(std::string& out, const layout& l, std::optional<dtype> source_dtype) {
    auto field = [&](std::string_view k, std::uint64_t v) {
        out += ",\"";
        out += k;
        out += "\":";
        out += std::to_string(v);
    };
    out += "{\"kind\":";
    json_escape_into(out, to_string(l.kind));
    if (l.kind != layout_kind::replicated) field("dim", l.dim);
    switch (l.kind) {
        case layout_kind::replicated:
        case layout_kind::split: break;
        case layout_kind::padded_split: field("multiple", l.multiple); break;
        case layout_kind::strided_split: field("stride", l.stride); break;
        case layout_kind::fused:
            if (l.part_count != 0 && l.part_count <= layout::max_parts) {
                out += ",\"parts\":";
                json_u64s_into(out, l.parts, l.part_count);
                out += ",\"units\":";
                json_u64s_into(out, l.units, l.part_count);
            }
            break;
        case layout_kind::gqa_qkv:
        case layout_kind::gqa_o:
            out += ",\"convention\":";
            json_escape_into(out, to_string(l.convention));
            out += ",\"part\":";
            json_escape_into(out, to_string(l.part));
            field("heads", l.heads);
            field("kv_heads", l.kv_heads);
            field("head_dim", l.head_dim);
            field("kv_multiplier", l.kv_multiplier);
            break;
    }
    if (source_dtype) {
        out += ",\"source_dtype\":";
        json_escape_into(out, name(*source_dtype));
    }
    out += '}';
}

// A shard's "cuts": each distinct cut once, in order of first use.
class cut_table {
public:
    [[nodiscard]] std::size_t index_of(std::string cut) {
        const auto [it, added] = index_.emplace(std::move(cut), order_.size());
        if (added) order_.push_back(&it->first);
        return it->second;
    }
    void json_into(std::string& out) const {
        out += '[';
        for (std::size_t c = 0; c < order_.size(); ++c) {
            if (c) out += ',';
            out += *order_[c];
        }
        out += ']';
    }

private:
    std::map<std::string, std::size_t> index_;
    std::vector<const std::string*> order_;
};

// Writes the version-2 documents of one rank, a shard at a time.
class export_writer {
public:
    explicit export_writer(const export_metadata& m) : m_(m), ties_(m.tensors.size()) {
        for (std::size_t i = 0; i < m.tensors.size(); ++i)
            if (!m.tensors[i].tied()) untied_.push_back(i);
        std::sort(untied_.begin(), untied_.end(), [&](std::size_t a, std::size_t b) {
            return m.tensors[a].name < m.tensors[b].name;
        });
        for (std::size_t i = 0; i < m.tensors.size(); ++i)
            if (m.tensors[i].tied()) ties_[untied_index(m.tensors[i].tied_to, true)].push_back(i);
    }

    // The untied tensor named `n` (invalid_argument when there is none).
    [[nodiscard]] std::size_t untied_index(std::string_view n, bool tie = false) const {
        const auto it = std::lower_bound(
            untied_.begin(), untied_.end(), n,
            [&](std::size_t i, std::string_view key) { return m_.tensors[i].name < key; });
        if (it == untied_.end() || m_.tensors[*it].name != n)
            throw error(errc::invalid_argument,
                        std::string(tie ? "a tensor is tied to '" : "a shard stores '") +
                            std::string(n) + "', which is not an untied tensor of the rank",
                        error_context{.tensor = std::string(n)});
        return *it;
    }

    // The document of a shard storing the tensors `stored` (by index into m.tensors).
    [[nodiscard]] std::string shard(std::vector<std::size_t> stored) const {
        std::sort(stored.begin(), stored.end(), [&](std::size_t a, std::size_t b) {
            return m_.tensors[a].name < m_.tensors[b].name;
        });
        cut_table cuts;
        std::vector<std::string_view> names;
        std::string records, ties;
        for (const std::size_t i : stored) {
            names.push_back(m_.tensors[i].name);
            if (!records.empty()) records += ',';
            record_into(records, m_.tensors[i], cuts);
            for (const std::size_t k : ties_[i]) {
                ties += ties.empty() ? "" : ",";
                json_escape_into(ties, m_.tensors[k].name);
                ties += ':';
                json_escape_into(ties, m_.tensors[i].name);
            }
        }
        std::string out = "{\"version\":" + std::to_string(export_metadata_version) +
                          ",\"world\":" + std::to_string(m_.world) +
                          ",\"rank\":" + std::to_string(m_.rank) + ",\"kv_convention\":";
        json_escape_into(out, to_string(m_.kv));
        out += ",\"kv_multiplier\":" + std::to_string(m_.kv_multiplier) +
               ",\"rank_tensors\":" + std::to_string(m_.tensors.size()) + ",\"cuts\":";
        cuts.json_into(out);
        out += ",\"tensors\":[" + records + ']';
        if (!ties.empty()) out += ",\"tied\":{" + ties + '}';
        out += ",\"names_hash\":\"" + export_names_hash(names) + "\"}";
        return out;
    }

private:
    // One stored tensor's record, in the shortest form that says it: the cut's index (one
    // source of the tensor's own name, global shape = local shape), [cut, extent] (the same
    // with the global extent along the cut's dim), or an object.
    static void record_into(std::string& out, const export_tensor& t, cut_table& cuts) {
        const dtype source_dtype = t.sources.empty() ? t.dtype : t.sources.front().dtype;
        std::string cut;
        json_cut_into(cut, t.layout,
                      source_dtype != t.dtype ? std::optional(source_dtype) : std::nullopt);
        const auto c = std::to_string(cuts.index_of(std::move(cut)));
        const bool own = t.sources.size() == 1 && t.sources[0].name == t.name &&
                         t.sources[0].global == t.global && t.sources[0].dtype == source_dtype;
        const auto extent = extent_along(t.local, t.global, t.layout.dim);
        const bool whole = t.global == t.local;
        if (own && !t.created && (whole || extent)) {
            out += whole ? c : '[' + c + ',' + std::to_string(*extent) + ']';
            return;
        }
        out += "{\"cut\":" + c;
        if (!own || (!whole && !extent)) {
            out += ",\"sources\":[";
            for (std::size_t k = 0; k < t.sources.size(); ++k) {
                if (k) out += ',';
                out += "{\"name\":";
                json_escape_into(out, t.sources[k].name);
                out += ",\"shape\":";
                json_shape_into(out, t.sources[k].global);
                if (t.sources[k].dtype != source_dtype) {
                    out += ",\"dtype\":";
                    json_escape_into(out, name(t.sources[k].dtype));
                }
                out += '}';
            }
            out += ']';
        } else if (!whole) {
            out += ",\"extent\":" + std::to_string(*extent);
        }
        if (t.created) out += ",\"created\":true";
        out += '}';
    }

    const export_metadata& m_;
    std::vector<std::size_t> untied_;             // untied tensors, by name
    std::vector<std::vector<std::size_t>> ties_;  // per tensor: the tensors tied to it
};

}  // namespace detail

// The version-2 documents of a rank whose untied tensors are stored in several shards:
// `shards[s]` names the tensors shard s stores. Each document describes its shard's tensors
// and the tensors tied to them. invalid_argument when a name is not an untied tensor of `m`,
// or an untied tensor is in no shard or in two.
[[nodiscard]] inline std::vector<std::string> to_json(
    const export_metadata& m, std::span<const std::vector<std::string_view>> shards) {
    const detail::export_writer w(m);
    std::vector<std::uint8_t> placed(m.tensors.size(), 0);
    std::vector<std::vector<std::size_t>> indices(shards.size());
    for (std::size_t s = 0; s < shards.size(); ++s)
        for (const std::string_view n : shards[s]) {
            const std::size_t i = w.untied_index(n);
            if (placed[i]++)
                throw error(errc::invalid_argument, "a tensor is in two shards",
                            error_context{.tensor = std::string(n)});
            indices[s].push_back(i);
        }
    for (std::size_t i = 0; i < m.tensors.size(); ++i)
        if (!m.tensors[i].tied() && !placed[i])
            throw error(errc::invalid_argument, "a tensor of the rank is in no shard",
                        error_context{.tensor = m.tensors[i].name});
    std::vector<std::string> docs;
    docs.reserve(shards.size());
    for (auto& s : indices) docs.push_back(w.shard(std::move(s)));
    return docs;
}

// The document of a rank stored in one shard.
[[nodiscard]] inline std::string to_json(const export_metadata& m) {
    std::vector<std::string_view> names;
    for (const auto& t : m.tensors)
        if (!t.tied()) names.push_back(t.name);
    return to_json(m, std::span(&names, 1)).front();
}

namespace detail {

// What a document says of its rank beside its tensors.
struct export_rank_record {
    std::uint64_t version = 0;
    std::uint32_t world = 0;
    std::uint32_t rank = 0;
    kv_convention kv = kv_contiguous;
    std::uint64_t kv_multiplier = 0;
    std::uint64_t rank_tensors = 0;  // version 2: records in all the rank's shards
    friend bool operator==(const export_rank_record&, const export_rank_record&) = default;
};

// One entry of a version-2 document's "cuts".
struct export_cut {
    layout l{};
    std::optional<dtype> source_dtype{};
};

// Parses one document at a time (errors name `file`, and the tensor where there is one).
class export_parser {
public:
    explicit export_parser(std::string file) : file_(std::move(file)) {}

    // The document's rank record; its tensors are read by tensors_v1 / tensors_v2 next.
    export_rank_record open(simdjson::dom::parser& parser, std::string_view json) {
        text_ = simdjson::padded_string(json);
        simdjson::dom::element root;
        if (auto e = parser.parse(text_).get(root); e != simdjson::SUCCESS)
            fail(std::string("the \"safeshard\" metadata is not JSON: ") +
                 simdjson::error_message(e));
        doc_ = object(root, "the document");
        export_rank_record r;
        r.version = u64(doc_, "version", "the document");
        if (r.version < export_metadata_oldest_version || r.version > export_metadata_version)
            fail("unknown export metadata version " + std::to_string(r.version) +
                 " (this safeshard reads versions " +
                 std::to_string(export_metadata_oldest_version) + " to " +
                 std::to_string(export_metadata_version) + ")");
        r.world = u32(doc_, "world", "the document");
        r.rank = u32(doc_, "rank", "the document");
        if (r.world == 0 || r.rank >= r.world)
            fail("rank " + std::to_string(r.rank) + " of world " + std::to_string(r.world) +
                 " is not a rank of that world");
        const std::string_view kv = str(doc_, "kv_convention", "the document");
        const auto c = parse_kv_convention(kv);
        if (!c) fail("unknown kv_convention '" + std::string(kv) + "'");
        r.kv = *c;
        r.kv_multiplier = u64(doc_, "kv_multiplier", "the document");
        if (r.version >= 2) r.rank_tensors = u64(doc_, "rank_tensors", "the document");
        rank_ = r.rank;
        return r;
    }

    // Version 1: the whole rank, each tensor with its dtype and local shape.
    void tensors_v1(export_metadata& m) const {
        simdjson::dom::array tensors;
        if (doc_["tensors"].get_array().get(tensors) != simdjson::SUCCESS)
            fail("the document has no \"tensors\" array");
        for (const simdjson::dom::element te : tensors) {
            const auto to = object(te, "a tensor");
            export_tensor t;
            t.name = tensor_name(str(to, "name", "a tensor"), "a tensor's name");
            const std::string where = "tensor '" + t.name + "'";
            std::string_view tied;
            if (to["tied_to"].get_string().get(tied) == simdjson::SUCCESS) {
                t.tied_to = tensor_name(tied, where + "'s tied_to");
                m.tensors.push_back(std::move(t));
                continue;
            }
            t.dtype = dtype_of(str(to, "dtype", where), where);
            t.local = shape_of(to, "shape", where);
            t.global = shape_of(to, "global_shape", where);
            simdjson::dom::object lo;
            if (to["layout"].get_object().get(lo) != simdjson::SUCCESS)
                fail(where + ": \"layout\" must be an object", t.name);
            t.layout = layout_of(lo, where, false);
            bool created = false;
            if (to["created"].get_bool().get(created) == simdjson::SUCCESS) t.created = created;
            if (t.layout.kind == layout_kind::padded_split) {
                simdjson::dom::array v;
                std::uint64_t range[2] = {0, 0};
                std::size_t n = 0;
                if (to["valid"].get_array().get(v) != simdjson::SUCCESS)
                    fail(where + ": a padded_split tensor needs \"valid\"", t.name);
                for (const simdjson::dom::element e : v) {
                    if (n == 2 || !json_to_uint64(e, range[n]))
                        fail(where + ": \"valid\" must be [begin, end]", t.name);
                    ++n;
                }
                if (n != 2 || range[0] > range[1])
                    fail(where + ": \"valid\" must be [begin, end]", t.name);
                t.valid_begin = range[0];
                t.valid_end = range[1];
            }
            simdjson::dom::array sources;
            if (to["sources"].get_array().get(sources) != simdjson::SUCCESS)
                fail(where + " has no \"sources\" array", t.name);
            t.sources = sources_of(sources, where, t.name, std::nullopt);
            m.tensors.push_back(std::move(t));
        }
    }

    // Version 2: the tensors of this shard, whose header holds `stored` (sorted by name, each
    // name once), one record each in that order, and the tensors tied to them; appended to m.
    void tensors_v2(export_metadata& m, std::span<const export_stored_tensor> stored) const {
        known_keys(doc_, "the document",
                   {"version", "world", "rank", "kv_convention", "kv_multiplier", "rank_tensors",
                    "cuts", "tensors", "tied", "names_hash"});
        const std::string_view hash = str(doc_, "names_hash", "the document");
        std::vector<std::string_view> names;
        for (const auto& st : stored) names.push_back(st.name);
        if (hash != export_names_hash(names))
            fail("the metadata describes other tensors than the shard stores (its names_hash is " +
                 std::string(hash) + ", the shard's tensors give " + export_names_hash(names) +
                 "): written for another shard?");
        simdjson::dom::array cut_list, records;
        if (doc_["cuts"].get_array().get(cut_list) != simdjson::SUCCESS)
            fail("the document has no \"cuts\" array");
        std::vector<export_cut> cuts;
        for (const simdjson::dom::element ce : cut_list) cuts.push_back(cut_of(ce));
        if (doc_["tensors"].get_array().get(records) != simdjson::SUCCESS)
            fail("the document has no \"tensors\" array");
        std::size_t k = 0;
        for (const simdjson::dom::element v : records) {
            if (k == stored.size())
                fail("the metadata has more records than the " + std::to_string(stored.size()) +
                     " tensors the shard stores");
            export_tensor t;
            t.name = std::string(stored[k].name);
            t.dtype = stored[k].dtype;
            t.local = stored[k++].local;
            tensor_v2(t, v, cuts);
            m.tensors.push_back(std::move(t));
        }
        if (k != stored.size())
            fail("the shard stores " + std::to_string(stored.size()) +
                 " tensors but its metadata has " + std::to_string(k) + " records");
        ties_v2(m, stored);
    }

private:
    [[noreturn]] void fail(const std::string& why, const std::string& tensor = {}) const {
        throw error(errc::invalid_export, why, error_context{.file = file_, .tensor = tensor});
    }

    // "tied": {alias: target} for targets this shard stores.
    void ties_v2(export_metadata& m, std::span<const export_stored_tensor> stored) const {
        simdjson::dom::element e;
        if (doc_["tied"].get(e) != simdjson::SUCCESS) return;
        const auto ties = object(e, "\"tied\"");
        for (const auto field : ties) {
            export_tensor t;
            t.name = tensor_name(field.key, "a tied tensor's name");
            std::string_view target;
            if (field.value.get_string().get(target) != simdjson::SUCCESS)
                fail("tensor '" + t.name + "': a tie must name a tensor", t.name);
            if (!find_stored(stored, target))
                fail("tensor '" + t.name + "' is tied to '" + std::string(target) +
                         "', which this shard does not store",
                     t.name);
            t.tied_to = std::string(target);
            m.tensors.push_back(std::move(t));
        }
    }

    // Fills t (named, with its stored dtype and local shape) from its version-2 record.
    void tensor_v2(export_tensor& t, simdjson::dom::element v,
                   std::span<const export_cut> cuts) const {
        const std::string where = "tensor '" + t.name + "'";
        std::uint64_t cut = 0;
        std::optional<std::uint64_t> extent;
        simdjson::dom::object o;
        simdjson::dom::array sources;
        bool listed_sources = false;
        if (json_to_uint64(v, cut)) {
        } else if (simdjson::dom::array a; v.get_array().get(a) == simdjson::SUCCESS) {
            std::uint64_t pair[2] = {0, 0};
            std::size_t n = 0;
            for (const simdjson::dom::element e : a) {
                if (n == 2 || !json_to_uint64(e, pair[n]))
                    fail(where + ": an array record must be [cut, extent]", t.name);
                ++n;
            }
            if (n != 2) fail(where + ": an array record must be [cut, extent]", t.name);
            cut = pair[0];
            extent = pair[1];
        } else if (v.get_object().get(o) == simdjson::SUCCESS) {
            known_keys(o, where, {"cut", "extent", "sources", "created"});
            simdjson::dom::element field;
            cut = u64(o, "cut", where);
            if (o["extent"].get(field) == simdjson::SUCCESS) extent = u64(o, "extent", where);
            if (o["sources"].get(field) == simdjson::SUCCESS) {
                if (field.get_array().get(sources) != simdjson::SUCCESS)
                    fail(where + ": \"sources\" must be an array", t.name);
                if (extent) fail(where + ": give \"extent\" or \"sources\", not both", t.name);
                listed_sources = true;
            }
            if (o["created"].get(field) == simdjson::SUCCESS &&
                field.get_bool().get(t.created) != simdjson::SUCCESS)
                fail(where + ": \"created\" must be true or false", t.name);
        } else {
            fail(where + ": a record must be a cut index, [cut, extent] or an object, found " +
                     std::string(json_type_name(v.type())),
                 t.name);
        }
        if (cut >= cuts.size())
            fail(where + ": cut " + std::to_string(cut) + " of " + std::to_string(cuts.size()),
                 t.name);
        t.layout = cuts[cut].l;
        const dtype source_dtype = cuts[cut].source_dtype.value_or(t.dtype);
        const std::size_t dim = t.layout.dim;
        if (listed_sources) {
            t.sources = sources_of(sources, where, t.name, source_dtype);
            t.global = concatenated(t.sources, t.layout, where, t.name);
        } else {
            t.global = t.local;
            if (extent) {
                if (dim >= t.global.rank())
                    fail(where + ": an extent along dim " + std::to_string(dim) +
                             " of a tensor of " + std::to_string(t.global.rank()) + " dimensions",
                         t.name);
                t.global[dim] = *extent;
            }
            t.sources = {export_source{t.name, t.global, source_dtype}};
        }
        if (t.layout.kind == layout_kind::padded_split && dim < t.global.rank())
            std::tie(t.valid_begin, t.valid_end) =
                padded_valid_range(t.global[dim], t.local[dim], rank_);
    }

    // The sources concatenated along the layout's dim (the first source when replicated).
    shape concatenated(const std::vector<export_source>& sources, const layout& l,
                       const std::string& where, const std::string& tensor) const {
        shape g = sources.front().global;
        if (l.kind == layout_kind::replicated) return g;
        if (l.dim >= g.rank())
            fail(where + ": layout dim " + std::to_string(l.dim) + " of sources of " +
                     std::to_string(g.rank()) + " dimensions",
                 tensor);
        for (std::size_t k = 1; k < sources.size(); ++k) {
            const shape& s = sources[k].global;
            if (s.rank() != g.rank() || add_overflows(g[l.dim], s[l.dim], g[l.dim]))
                fail(where + ": its sources cannot be concatenated along dim " +
                         std::to_string(l.dim),
                     tensor);
        }
        return g;
    }

    std::vector<export_source> sources_of(simdjson::dom::array a, const std::string& where,
                                          const std::string& tensor,
                                          std::optional<dtype> default_dtype) const {
        std::vector<export_source> out;
        for (const simdjson::dom::element se : a) {
            if (out.size() == max_sources)
                fail(where + " has more than " + std::to_string(max_sources) + " sources", tensor);
            const auto so = object(se, where + "'s source");
            if (default_dtype) known_keys(so, where + "'s source", {"name", "shape", "dtype"});
            export_source s;
            s.name = tensor_name(str(so, "name", where + "'s source"), where + "'s source name");
            s.global = shape_of(so, "shape", where + "'s source '" + s.name + "'");
            std::string_view dt;
            if (so["dtype"].get_string().get(dt) == simdjson::SUCCESS)
                s.dtype = dtype_of(dt, where);
            else if (default_dtype)
                s.dtype = *default_dtype;
            else
                fail(where + "'s source '" + s.name + "': \"dtype\" must be a string", tensor);
            out.push_back(std::move(s));
        }
        if (out.empty()) fail(where + " has no sources", tensor);
        return out;
    }

    export_cut cut_of(simdjson::dom::element ce) const {
        const auto o = object(ce, "a cut");
        export_cut c;
        c.l = layout_of(o, "a cut", true);
        std::string_view dt;
        if (o["source_dtype"].get(ce) == simdjson::SUCCESS) {
            if (ce.get_string().get(dt) != simdjson::SUCCESS)
                fail("a cut's \"source_dtype\" must be a string");
            c.source_dtype = dtype_of(dt, "a cut");
        }
        return c;
    }

    static const export_stored_tensor* find_stored(std::span<const export_stored_tensor> stored,
                                                   std::string_view name) {
        const auto it = std::lower_bound(
            stored.begin(), stored.end(), name,
            [](const export_stored_tensor& s, std::string_view n) { return s.name < n; });
        return it != stored.end() && it->name == name ? &*it : nullptr;
    }

    // A name as a tensor name: not empty, not the header's metadata key.
    std::string tensor_name(std::string_view n, const std::string& what) const {
        if (n.empty() || n == "__metadata__")
            fail(what + " is '" + std::string(n) + "', which cannot name a tensor");
        return std::string(n);
    }

    // Every field of `o` is one of `keys`, once.
    void known_keys(simdjson::dom::object o, const std::string& where,
                    std::span<const std::string_view> keys) const {
        std::uint32_t seen = 0;  // bit k: keys[k] (at most 32 keys)
        for (const auto field : o) {
            const auto k = static_cast<std::size_t>(std::find(keys.begin(), keys.end(), field.key) -
                                                    keys.begin());
            if (k == keys.size())
                fail(where + " has the field \"" + std::string(field.key) +
                     "\", which this safeshard does not know (written by a newer one?)");
            if (seen & (1u << k))
                fail(where + " has the field \"" + std::string(field.key) + "\" twice");
            seen |= 1u << k;
        }
    }
    void known_keys(simdjson::dom::object o, const std::string& where,
                    std::initializer_list<std::string_view> keys) const {
        known_keys(o, where, std::span(keys.begin(), keys.size()));
    }

    simdjson::dom::object object(simdjson::dom::element e, const std::string& what) const {
        simdjson::dom::object o;
        if (e.get_object().get(o) != simdjson::SUCCESS)
            fail(what + " must be a JSON object, found " + std::string(json_type_name(e.type())));
        return o;
    }
    std::uint64_t u64(simdjson::dom::object o, std::string_view key,
                      const std::string& where) const {
        simdjson::dom::element e;
        std::uint64_t v = 0;
        if (o[key].get(e) != simdjson::SUCCESS || !json_to_uint64(e, v))
            fail(where + ": \"" + std::string(key) + "\" must be a non-negative integer");
        return v;
    }
    std::uint32_t u32(simdjson::dom::object o, std::string_view key,
                      const std::string& where) const {
        const std::uint64_t v = u64(o, key, where);
        if (v > 0xffffffffu) fail(where + ": \"" + std::string(key) + "\" is too large");
        return static_cast<std::uint32_t>(v);
    }
    std::uint64_t u64_or_zero(simdjson::dom::object o, std::string_view key,
                              const std::string& where) const {
        simdjson::dom::element e;
        if (o[key].get(e) != simdjson::SUCCESS) return 0;
        std::uint64_t v = 0;
        if (!json_to_uint64(e, v))
            fail(where + ": \"" + std::string(key) + "\" must be a non-negative integer");
        return v;
    }
    std::string_view str(simdjson::dom::object o, std::string_view key,
                         const std::string& where) const {
        std::string_view s;
        if (o[key].get_string().get(s) != simdjson::SUCCESS)
            fail(where + ": \"" + std::string(key) + "\" must be a string");
        return s;
    }
    dtype dtype_of(std::string_view s, const std::string& where) const {
        const auto t = parse_dtype(s);
        if (!t) fail(where + ": unknown dtype '" + std::string(s) + "'");
        return *t;
    }
    shape shape_of(simdjson::dom::object o, std::string_view key, const std::string& where) const {
        simdjson::dom::array a;
        if (o[key].get_array().get(a) != simdjson::SUCCESS)
            fail(where + ": \"" + std::string(key) + "\" must be an array of extents");
        shape s;
        for (const simdjson::dom::element e : a) {
            std::uint64_t v = 0;
            if (!json_to_uint64(e, v) || !s.try_push_back(v))
                fail(where + ": \"" + std::string(key) + "\" is not a shape");
        }
        return s;
    }

    // A layout object (version 1's "layout", or a version-2 cut, which names only the fields
    // its kind uses: `strict`).
    layout layout_of(simdjson::dom::object o, const std::string& where, bool strict) const {
        const std::string_view kind = str(o, "kind", where + "'s layout");
        layout l;
        bool known = false;
        for (const layout_kind k : {layout_kind::replicated, layout_kind::split,
                                    layout_kind::padded_split, layout_kind::strided_split,
                                    layout_kind::fused, layout_kind::gqa_qkv, layout_kind::gqa_o})
            if (to_string(k) == kind) {
                l.kind = k;
                known = true;
            }
        if (!known) fail(where + ": unknown layout kind '" + std::string(kind) + "'");
        if (strict) known_keys(o, where + " (" + std::string(kind) + ")", cut_keys(l.kind));
        if (!strict || l.kind != layout_kind::replicated) {
            const std::uint64_t dim = u64(o, "dim", where + "'s layout");
            if (dim >= shape::capacity) fail(where + ": layout dim " + std::to_string(dim));
            l.dim = static_cast<std::uint8_t>(dim);
        }
        l.multiple = u64_or_zero(o, "multiple", where);
        l.stride = u64_or_zero(o, "stride", where);
        l.heads = u64_or_zero(o, "heads", where);
        l.kv_heads = u64_or_zero(o, "kv_heads", where);
        l.head_dim = u64_or_zero(o, "head_dim", where);
        l.kv_multiplier = u64_or_zero(o, "kv_multiplier", where);
        std::string_view text;
        if (o["convention"].get_string().get(text) == simdjson::SUCCESS) {
            const auto c = parse_kv_convention(text);
            if (!c) fail(where + ": unknown convention '" + std::string(text) + "'");
            l.convention = *c;
        }
        if (o["part"].get_string().get(text) == simdjson::SUCCESS) {
            bool found = false;
            for (const gqa_part p : {gqa_part::qkv, gqa_part::q, gqa_part::k, gqa_part::v})
                if (to_string(p) == text) {
                    l.part = p;
                    found = true;
                }
            if (!found) fail(where + ": unknown part '" + std::string(text) + "'");
        }
        simdjson::dom::array parts, units;
        if (o["parts"].get_array().get(parts) == simdjson::SUCCESS) {
            std::size_t n = 0;
            for (const simdjson::dom::element e : parts) {
                if (n == layout::max_parts || !json_to_uint64(e, l.parts[n]))
                    fail(where + ": bad fused \"parts\"");
                ++n;
            }
            std::size_t u = 0;
            if (o["units"].get_array().get(units) == simdjson::SUCCESS)
                for (const simdjson::dom::element e : units) {
                    if (u == layout::max_parts || !json_to_uint64(e, l.units[u]))
                        fail(where + ": bad fused \"units\"");
                    ++u;
                }
            if (u != n) fail(where + ": fused \"parts\" and \"units\" differ in length");
            l.part_count = static_cast<std::uint8_t>(n);
        }
        return l;
    }

    // The fields a version-2 cut of `kind` may have.
    static std::span<const std::string_view> cut_keys(layout_kind kind) noexcept {
        static constexpr std::string_view replicated[] = {"kind", "source_dtype"};
        static constexpr std::string_view split[] = {"kind", "dim", "source_dtype"};
        static constexpr std::string_view padded[] = {"kind", "dim", "multiple", "source_dtype"};
        static constexpr std::string_view strided[] = {"kind", "dim", "stride", "source_dtype"};
        static constexpr std::string_view fused[] = {"kind", "dim", "parts", "units",
                                                     "source_dtype"};
        static constexpr std::string_view gqa[] = {"kind",     "dim",           "convention",
                                                   "part",     "heads",         "kv_heads",
                                                   "head_dim", "kv_multiplier", "source_dtype"};
        switch (kind) {
            case layout_kind::replicated: return replicated;
            case layout_kind::split: return split;
            case layout_kind::padded_split: return padded;
            case layout_kind::strided_split: return strided;
            case layout_kind::fused: return fused;
            case layout_kind::gqa_qkv:
            case layout_kind::gqa_o: return gqa;
        }
        return {};
    }

    std::string file_;
    std::uint32_t rank_ = 0;  // the document's rank (padded_split valid ranges)
    simdjson::padded_string text_;
    simdjson::dom::object doc_;
};

}  // namespace detail

namespace detail {

[[noreturn]] inline void export_file_error(const std::string& why, const std::string& file,
                                           const std::string& tensor = {}) {
    throw error(errc::invalid_export, why, error_context{.file = file, .tensor = tensor});
}

[[nodiscard]] inline std::string file_name_of(const std::string& path) {
    return std::filesystem::path(path).filename().string();
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

// Each name once; every tie aims at an untied tensor of the rank.
inline void check_export_names(const export_metadata& m, const std::string& file) {
    const auto order = export_name_order(m);
    for (std::size_t k = 1; k < order.size(); ++k)
        if (m.tensors[order[k]].name == m.tensors[order[k - 1]].name)
            export_file_error("tensor '" + m.tensors[order[k]].name +
                                  "' is described twice in the rank's export metadata",
                              file, m.tensors[order[k]].name);
    for (const auto& t : m.tensors) {
        if (!t.tied()) continue;
        const export_tensor* target = export_find(m, order, t.tied_to);
        if (!target || target->tied())
            export_file_error("tensor '" + t.name + "' is tied to '" + t.tied_to +
                                  "', which is not an untied tensor of the export",
                              file, t.name);
    }
}

// Version 1: the files hold exactly the untied tensors listed, with their dtypes and shapes.
inline void check_stored_v1(const export_metadata& m, std::span<const export_shard_file> files) {
    std::vector<std::pair<const export_stored_tensor*, const export_shard_file*>> stored;
    for (const auto& f : files)
        for (const auto& s : f.stored) stored.emplace_back(&s, &f);
    std::sort(stored.begin(), stored.end(),
              [](const auto& a, const auto& b) { return a.first->name < b.first->name; });
    std::size_t listed = 0;
    for (const export_tensor& t : m.tensors) {
        if (t.tied()) continue;
        ++listed;
        const auto it =
            std::lower_bound(stored.begin(), stored.end(), std::string_view(t.name),
                             [](const auto& s, std::string_view n) { return s.first->name < n; });
        if (it == stored.end() || it->first->name != t.name)
            export_file_error("tensor '" + t.name + "' is listed but not stored",
                              files.front().path, t.name);
        if (it->first->dtype != t.dtype || it->first->local != t.local)
            export_file_error("tensor '" + t.name + "' is stored as " +
                                  std::string(name(it->first->dtype)) + " " +
                                  it->first->local.to_string() + " but the metadata says " +
                                  std::string(name(t.dtype)) + " " + t.local.to_string(),
                              it->second->path, t.name);
    }
    if (stored.size() != listed)
        export_file_error("the folder stores " + std::to_string(stored.size()) +
                              " tensors but its metadata lists " + std::to_string(listed),
                          files.front().path);
}

inline void read_export_v1(export_metadata& m, detail::export_parser& p,
                           std::span<const export_shard_file> files) {
    for (const auto& f : files)
        if (*f.document != *files.front().document)
            export_file_error(
                "the shards of this folder carry different version-1 export "
                "metadata ('" +
                    file_name_of(files.front().path) + "' and '" + file_name_of(f.path) + "')",
                f.path);
    p.tensors_v1(m);
    check_stored_v1(m, files);
}

inline void read_export_v2(export_metadata& m, const export_rank_record& first,
                           simdjson::dom::parser& parser,
                           std::span<const export_shard_file> files) {
    for (const auto& f : files) {
        export_parser p(f.path);
        const export_rank_record r = p.open(parser, *f.document);
        if (r.version != first.version)
            export_file_error("mixed export metadata versions in one rank folder: '" +
                                  file_name_of(files.front().path) + "' has version " +
                                  std::to_string(first.version) + ", this shard version " +
                                  std::to_string(r.version),
                              f.path);
        if (!(r == first))
            export_file_error(
                "this shard's rank record (world, rank, kv_convention, "
                "kv_multiplier, rank_tensors) differs from '" +
                    file_name_of(files.front().path) + "''s",
                f.path);
        std::vector<export_stored_tensor> stored = f.stored;
        std::sort(stored.begin(), stored.end(),
                  [](const auto& a, const auto& b) { return a.name < b.name; });
        p.tensors_v2(m, stored);
    }
}

}  // namespace detail

// The export metadata of one rank folder's shard files (version 1 or 2), checked against what
// the files store; nullopt when no file carries any. errc::invalid_export (naming the file,
// and the tensor where there is one) when some files carry it and others not, for an unknown
// version, a malformed document, shards that disagree about their rank, and a tensor
// described but not stored, stored but not described, or described twice.
[[nodiscard]] inline std::optional<export_metadata> read_export_metadata(
    std::span<const export_shard_file> files) {
    const auto with = std::find_if(files.begin(), files.end(),
                                   [](const export_shard_file& f) { return f.document; });
    if (with == files.end()) return std::nullopt;
    for (const auto& f : files)
        if (!f.document)
            detail::export_file_error("this shard carries no export metadata, unlike '" +
                                          detail::file_name_of(with->path) + "'",
                                      f.path);
    simdjson::dom::parser parser;
    detail::export_parser first(files.front().path);
    const detail::export_rank_record r = first.open(parser, *files.front().document);
    export_metadata m;
    m.version = r.version;
    m.world = r.world;
    m.rank = r.rank;
    m.kv = r.kv;
    m.kv_multiplier = r.kv_multiplier;
    if (r.version == 1)
        detail::read_export_v1(m, first, files);
    else
        detail::read_export_v2(m, r, parser, files);
    detail::check_export_names(m, files.front().path);
    if (r.version >= 2 && m.tensors.size() != r.rank_tensors)
        detail::export_file_error("the rank's shards describe " + std::to_string(m.tensors.size()) +
                                      " tensors but their rank record says " +
                                      std::to_string(r.rank_tensors),
                                  files.front().path);
    return m;
}

// The export metadata of a checkpoint (one rank folder), or nullopt when it is not an export.
[[nodiscard]] inline std::optional<export_metadata> read_export_metadata(const checkpoint& ckpt) {
    const auto files = ckpt.files();
    std::vector<export_shard_file> in(files.size());
    bool any = false;
    for (std::size_t i = 0; i < files.size(); ++i) {
        in[i].path = files[i].path.string();
        in[i].document = files[i].view.metadata(export_metadata_key);
        any = any || in[i].document;
    }
    if (!any) return std::nullopt;
    for (std::size_t i = 0; i < files.size(); ++i) {
        in[i].stored.reserve(files[i].view.size());
        for (const tensor_view t : files[i].view)
            in[i].stored.push_back(export_stored_tensor{t.name(), t.dtype(), t.shape()});
    }
    return read_export_metadata(in);
}

// The schema a rank folder loads through: each stored tensor replicated under its own name
// (an identity cut), tied tensors aliased again.
[[nodiscard]] inline schema identity_schema(const export_metadata& m) {
    schema s;
    s.reserve(m.tensors.size());
    for (const auto& t : m.tensors) {
        parameter_meta p;
        p.name = t.name;
        if (t.tied())
            p.tied_to = t.tied_to;
        else
            p.sources = {t.name};
        s.add(std::move(p));
    }
    s.validate();
    return s;
}

// Throws invalid_export unless (rank, world) is the one the export was cut for.
inline void check_export_rank(const export_metadata& m, std::uint32_t rank, std::uint32_t world,
                              const std::string& file = {}) {
    if (m.rank == rank && m.world == world) return;
    throw error(
        errc::invalid_export,
        "this folder is rank " + std::to_string(m.rank) + " of a world of " +
            std::to_string(m.world) + " exported by safeshard; it loads only as that rank (" +
            "asked for rank " + std::to_string(rank) + " of " + std::to_string(world) + "): load " +
            export_rank_folder(rank) + " of an export for that world, or the original checkpoint",
        error_context{.file = file});
}

}  // namespace safeshard
