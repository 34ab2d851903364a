// The export metadata's writer: the version-2 documents of a rank, one a shard
// (format/export_metadata.hpp has the format and its types).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/format/export_metadata.hpp"
#include "safeshard/format/json_string.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/layouts/kind.hpp"
#include "safeshard/shard/layouts/kinds.hpp"

namespace safeshard {

namespace detail {

// The global extent of `global` that differs from `local`, when it is only along `dim`.
[[nodiscard]] inline std::optional<std::uint64_t> extent_along(const shape& local,
                                                               const shape& global,
                                                               std::size_t dim) noexcept {
    if (local.rank() != global.rank() || dim >= local.rank()) return std::nullopt;
    for (std::size_t i = 0; i < local.rank(); ++i)
        if (i != dim && local[i] != global[i]) return std::nullopt;
    return global[dim];
}

// The export metadata's strings: short forms for \n and \t only, UTF-8 as it is (names are
// checked UTF-8).
inline void json_escape_into(std::string& out, std::string_view s) {
    append_json_string(out, s, json_string_style::newline_tab());
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

// Writes a kind's fields of a cut (layout_kind_fields): `,"key":value`.
class cut_fields_json_writer {
public:
    explicit cut_fields_json_writer(std::string& out) : out_(out) {}
    void number(std::string_view key, std::uint64_t v) {
        this->key(key);
        out_ += std::to_string(v);
    }
    void text(std::string_view key, std::string_view v) {
        this->key(key);
        json_escape_into(out_, v);
    }
    void numbers(std::string_view key, const std::uint64_t* v, std::size_t n) {
        this->key(key);
        json_u64s_into(out_, v, n);
    }

private:
    void key(std::string_view k) {
        out_ += ",\"";
        out_ += k;
        out_ += "\":";
    }
    std::string& out_;
};
static_assert(cut_fields_writer<cut_fields_json_writer>);

// A cut of the "cuts" table: the layout's kind, its dim when it cuts along one, the fields its
// kind uses, and the dtype the sources had when it differs from the stored one.
inline void json_cut_into(std::string& out, const layout& l, std::optional<dtype> source_dtype) {
    cut_fields_json_writer w(out);
    out += "{\"kind\":";
    json_escape_into(out, to_string(l.kind));
    if (cuts_along_dim(l.kind)) w.number("dim", l.dim);
    visit_layout_kind(l.kind, [&]<class K>(K) { K::write_fields(l, w); });
    if (source_dtype) w.text("source_dtype", name(*source_dtype));
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
        out += ",\"kv_multiplier\":" + std::to_string(m_.kv_multiplier);
        if (m_.experts != 0) {
            out += ",\"experts\":" + std::to_string(m_.experts) +
                   ",\"ep\":" + std::to_string(m_.expert_groups.ep) + ",\"expert_placement\":";
            json_escape_into(out, to_string(m_.expert_groups.placement));
        }
        out += ",\"rank_tensors\":" + std::to_string(m_.tensors.size()) + ",\"cuts\":";
        cuts.json_into(out);
        out += ",\"tensors\":[" + records + ']';
        if (!ties.empty()) out += ",\"tied\":{" + ties + '}';
        out += ",\"names_hash\":\"" + export_names_hash(names) + "\"}";
        return out;
    }

private:
    // One stored tensor's record, in the shortest form that says it: the cut's index (one
    // source of the tensor's own name, global shape = local shape), [cut, extent] (the same
    // with the global extent along the cut's dim), or an object (always for an expert's
    // tensor, which names its expert, and for stacked experts and companions, which list their
    // sources).
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
        const bool stacked = t.stacked_experts != 0;
        const bool listed = stacked || t.companion();  // records that list their sources
        if (own && !t.created && !t.expert && !listed && !t.packed() && (whole || extent)) {
            out += whole ? c : '[' + c + ',' + std::to_string(*extent) + ']';
            return;
        }
        out += "{\"cut\":" + c;
        if (!own || listed || (!whole && !extent)) {
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
        if (t.expert) out += ",\"expert\":" + std::to_string(*t.expert);
        if (stacked) out += ",\"stacked_experts\":" + std::to_string(t.stacked_experts);
        if (t.gathered_experts) out += ",\"gathered_experts\":true";
        if (t.packed()) {
            const std::uint64_t storage[2] = {t.storage.rows.block, t.storage.cols.block};
            out += ",\"storage\":";
            json_u64s_into(out, storage, 2);
            if (t.storage.transposed) out += ",\"transposed\":true";
        }
        if (t.companion()) {
            out += ",\"companion_of\":";
            json_escape_into(out, t.companion_of);
            const std::uint64_t grid[2] = {t.grid.rows.block, t.grid.cols.block};
            out += ",\"grid\":";
            json_u64s_into(out, grid, 2);
            if (t.grid.rows.all || t.grid.cols.all)
                out += std::string(",\"grid_all\":[") + (t.grid.rows.all ? "true" : "false") + ',' +
                       (t.grid.cols.all ? "true" : "false") + ']';
            if (t.grid.transposed) out += ",\"transposed\":true";
        }
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

}  // namespace safeshard
