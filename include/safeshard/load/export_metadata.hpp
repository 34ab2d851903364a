// The metadata of a per-rank export: a versioned JSON document stored under the "safeshard" key
// of every shard's __metadata__, saying what each tensor of the rank is and every parameter
// needed to undo its cut (the schema is in README.md). A rank folder loads back through
// identity layouts; consolidation reads nothing else.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <simdjson.h>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/json_text.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/parameter.hpp"
#include "safeshard/shard/schema.hpp"

namespace safeshard {

// The __metadata__ key, and the schema version this library writes and reads.
inline constexpr std::string_view export_metadata_key = "safeshard";
inline constexpr std::uint64_t export_metadata_version = 1;

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

struct export_metadata {
    std::uint64_t version = export_metadata_version;
    std::uint32_t world = 1;
    std::uint32_t rank = 0;
    kv_convention kv = kv_contiguous;
    std::uint64_t kv_multiplier = 0;  // resolved (max(1, world / KV) unless given); 0 = no GQA
    std::vector<export_tensor> tensors{};

    [[nodiscard]] const export_tensor* find(std::string_view name) const noexcept {
        for (const auto& t : tensors)
            if (t.name == name) return &t;
        return nullptr;
    }
    friend bool operator==(const export_metadata&, const export_metadata&) = default;
};

namespace detail {

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

inline void json_shape_into(std::string& out, const shape& s) {
    out += '[';
    for (std::size_t i = 0; i < s.rank(); ++i) {
        if (i) out += ',';
        out += std::to_string(s[i]);
    }
    out += ']';
}

inline void json_u64s_into(std::string& out, const std::uint64_t* v, std::size_t n) {
    out += '[';
    for (std::size_t i = 0; i < n; ++i) {
        if (i) out += ',';
        out += std::to_string(v[i]);
    }
    out += ']';
}

// The layout's fields that its kind uses (the others are zero).
inline void json_layout_into(std::string& out, const layout& l) {
    auto field = [&](std::string_view k, std::uint64_t v) {
        out += ",\"";
        out += k;
        out += "\":";
        out += std::to_string(v);
    };
    out += "{\"name\":";
    json_escape_into(out, name(l));
    out += ",\"kind\":";
    json_escape_into(out, to_string(l.kind));
    field("dim", l.dim);
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
    out += '}';
}

}  // namespace detail

// The document, compact JSON (one line).
[[nodiscard]] inline std::string to_json(const export_metadata& m) {
    std::string out = "{\"version\":" + std::to_string(m.version) +
                      ",\"world\":" + std::to_string(m.world) +
                      ",\"rank\":" + std::to_string(m.rank) + ",\"kv_convention\":";
    detail::json_escape_into(out, to_string(m.kv));
    out += ",\"kv_multiplier\":" + std::to_string(m.kv_multiplier) + ",\"tensors\":[";
    for (std::size_t i = 0; i < m.tensors.size(); ++i) {
        const export_tensor& t = m.tensors[i];
        if (i) out += ',';
        out += "{\"name\":";
        detail::json_escape_into(out, t.name);
        if (t.tied()) {
            out += ",\"tied_to\":";
            detail::json_escape_into(out, t.tied_to);
            out += '}';
            continue;
        }
        out += ",\"dtype\":";
        detail::json_escape_into(out, name(t.dtype));
        out += ",\"shape\":";
        detail::json_shape_into(out, t.local);
        out += ",\"global_shape\":";
        detail::json_shape_into(out, t.global);
        out += ",\"layout\":";
        detail::json_layout_into(out, t.layout);
        if (t.layout.kind == layout_kind::padded_split)
            out += ",\"valid\":[" + std::to_string(t.valid_begin) + "," +
                   std::to_string(t.valid_end) + "]";
        if (t.created) out += ",\"created\":true";
        out += ",\"sources\":[";
        for (std::size_t k = 0; k < t.sources.size(); ++k) {
            if (k) out += ',';
            out += "{\"name\":";
            detail::json_escape_into(out, t.sources[k].name);
            out += ",\"shape\":";
            detail::json_shape_into(out, t.sources[k].global);
            out += ",\"dtype\":";
            detail::json_escape_into(out, name(t.sources[k].dtype));
            out += '}';
        }
        out += "]}";
    }
    out += "]}";
    return out;
}

namespace detail {

class export_parser {
public:
    explicit export_parser(std::string file) : file_(std::move(file)) {}

    export_metadata parse(std::string_view json) {
        simdjson::dom::parser parser;
        const simdjson::padded_string text(json);
        simdjson::dom::element root;
        if (auto e = parser.parse(text).get(root); e != simdjson::SUCCESS)
            fail(std::string("the \"safeshard\" metadata is not JSON: ") +
                 simdjson::error_message(e));
        const auto doc = object(root, "the document");
        export_metadata m;
        m.version = u64(doc, "version", "the document");
        if (m.version != export_metadata_version)
            fail("unknown export metadata version " + std::to_string(m.version) +
                 " (this safeshard reads version " + std::to_string(export_metadata_version) + ")");
        m.world = u32(doc, "world", "the document");
        m.rank = u32(doc, "rank", "the document");
        if (m.world == 0 || m.rank >= m.world)
            fail("rank " + std::to_string(m.rank) + " of world " + std::to_string(m.world) +
                 " is not a rank of that world");
        const auto kv = parse_kv_convention(str(doc, "kv_convention", "the document"));
        if (!kv) fail("unknown kv_convention");
        m.kv = *kv;
        m.kv_multiplier = u64(doc, "kv_multiplier", "the document");
        simdjson::dom::array tensors;
        if (doc["tensors"].get_array().get(tensors) != simdjson::SUCCESS)
            fail("the document has no \"tensors\" array");
        for (const simdjson::dom::element te : tensors) {
            const auto to = object(te, "a tensor");
            export_tensor t;
            t.name = std::string(str(to, "name", "a tensor"));
            const std::string where = "tensor '" + t.name + "'";
            for (const auto& other : m.tensors)
                if (other.name == t.name) fail(where + " is listed twice");
            std::string_view tied;
            if (to["tied_to"].get_string().get(tied) == simdjson::SUCCESS) {
                t.tied_to = std::string(tied);
                if (t.tied_to.empty()) fail(where + ": tied_to is empty");
                m.tensors.push_back(std::move(t));
                continue;
            }
            t.dtype = dtype_of(str(to, "dtype", where), where);
            t.local = shape_of(to, "shape", where);
            t.global = shape_of(to, "global_shape", where);
            t.layout = layout_of(to, where);
            bool created = false;
            if (to["created"].get_bool().get(created) == simdjson::SUCCESS) t.created = created;
            if (t.layout.kind == layout_kind::padded_split) {
                simdjson::dom::array v;
                std::uint64_t range[2] = {0, 0};
                std::size_t n = 0;
                if (to["valid"].get_array().get(v) != simdjson::SUCCESS)
                    fail(where + ": a padded_split tensor needs \"valid\"");
                for (const simdjson::dom::element e : v) {
                    if (n == 2 || !json_to_uint64(e, range[n]))
                        fail(where + ": \"valid\" must be [begin, end]");
                    ++n;
                }
                if (n != 2 || range[0] > range[1]) fail(where + ": \"valid\" must be [begin, end]");
                t.valid_begin = range[0];
                t.valid_end = range[1];
            }
            simdjson::dom::array sources;
            if (to["sources"].get_array().get(sources) != simdjson::SUCCESS)
                fail(where + " has no \"sources\" array");
            for (const simdjson::dom::element se : sources) {
                const auto so = object(se, where + "'s source");
                export_source s;
                s.name = std::string(str(so, "name", where + "'s source"));
                s.global = shape_of(so, "shape", where + "'s source '" + s.name + "'");
                s.dtype = dtype_of(str(so, "dtype", where), where);
                t.sources.push_back(std::move(s));
            }
            if (t.sources.empty() || t.sources.size() > max_sources)
                fail(where + " has " + std::to_string(t.sources.size()) + " sources (1 to " +
                     std::to_string(max_sources) + " expected)");
            m.tensors.push_back(std::move(t));
        }
        for (const auto& t : m.tensors) {
            if (!t.tied()) continue;
            const export_tensor* target = m.find(t.tied_to);
            if (!target || target->tied())
                fail("tensor '" + t.name + "' is tied to '" + t.tied_to +
                     "', which is not an untied tensor of the export");
        }
        return m;
    }

private:
    [[noreturn]] void fail(const std::string& why) const {
        throw error(errc::invalid_export, why, error_context{.file = file_});
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
    layout layout_of(simdjson::dom::object to, const std::string& where) const {
        simdjson::dom::object o;
        if (to["layout"].get_object().get(o) != simdjson::SUCCESS)
            fail(where + ": \"layout\" must be an object");
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
        const std::uint64_t dim = u64(o, "dim", where + "'s layout");
        if (dim >= shape::capacity) fail(where + ": layout dim " + std::to_string(dim));
        l.dim = static_cast<std::uint8_t>(dim);
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

    std::string file_;
};

}  // namespace detail

// Parses a document; errc::invalid_export (naming `file`) when it is not version 1 or is
// malformed.
[[nodiscard]] inline export_metadata parse_export_metadata(std::string_view json,
                                                           std::string file = {}) {
    return detail::export_parser(std::move(file)).parse(json);
}

// A rank's folder inside an export: "rank-00003" (five digits at least).
[[nodiscard]] inline std::string export_rank_folder(std::uint32_t rank) {
    std::string n = std::to_string(rank);
    if (n.size() < 5) n.insert(0, 5 - n.size(), '0');
    return "rank-" + n;
}

// The export metadata of a checkpoint (one rank folder), or nullopt when it is not an export.
// Every shard must carry the same document (invalid_export otherwise).
[[nodiscard]] inline std::optional<export_metadata> read_export_metadata(const checkpoint& ckpt) {
    const auto files = ckpt.files();
    if (files.empty()) return std::nullopt;
    const auto first = files.front().view.metadata(export_metadata_key);
    for (const auto& f : files.subspan(1)) {
        const auto doc = f.view.metadata(export_metadata_key);
        if (doc.has_value() != first.has_value() || (doc && *doc != *first))
            throw error(errc::invalid_export,
                        "the shards of this folder carry different export metadata ('" +
                            files.front().path.filename().string() + "' and '" +
                            f.path.filename().string() + "')",
                        error_context{.file = f.path.string()});
    }
    if (!first) return std::nullopt;
    return parse_export_metadata(*first, files.front().path.string());
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
