// The export metadata's reader: the documents of a rank folder's shards (versions 1 and 2),
// checked against what the shards store (format/export_metadata.hpp has the format).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
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
#include "safeshard/format/export_metadata.hpp"
#include "safeshard/format/json_text.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/layouts/kind.hpp"
#include "safeshard/shard/layouts/kinds.hpp"
#include "safeshard/shard/slice_result.hpp"

namespace safeshard {

namespace detail {

// What a document says of its rank beside its tensors.
struct export_rank_record {
    std::uint64_t version = 0;
    std::uint32_t world = 0;
    std::uint32_t rank = 0;
    kv_convention kv = kv_contiguous;
    std::uint64_t kv_multiplier = 0;
    std::uint64_t rank_tensors = 0;  // version 2: records in all the rank's shards
    std::uint64_t experts = 0;       // version 2, a mixture of experts: its expert count
    expert_parallel expert_groups{};
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
        if (r.version >= 2) {
            r.rank_tensors = u64(doc_, "rank_tensors", "the document");
            experts_of(r);
        }
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
            if (records_valid_rows(t.layout.kind)) {
                simdjson::dom::array v;
                std::uint64_t range[2] = {0, 0};
                std::size_t n = 0;
                if (to["valid"].get_array().get(v) != simdjson::SUCCESS)
                    fail(where + ": a " + std::string(to_string(t.layout.kind)) +
                             " tensor needs \"valid\"",
                         t.name);
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
                    "experts", "ep", "expert_placement", "cuts", "tensors", "tied", "names_hash"});
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
            tensor_v2(m, t, v, cuts);
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

    // The rank record's experts (all three fields, or none): a count, an expert parallel size
    // that divides the world and leaves no group empty, a known placement.
    void experts_of(export_rank_record& r) const {
        simdjson::dom::element e;
        const bool any = doc_["experts"].get(e) == simdjson::SUCCESS ||
                         doc_["ep"].get(e) == simdjson::SUCCESS ||
                         doc_["expert_placement"].get(e) == simdjson::SUCCESS;
        if (!any) return;
        r.experts = u64(doc_, "experts", "the document");
        r.expert_groups.ep = u32(doc_, "ep", "the document");
        const std::string_view p = str(doc_, "expert_placement", "the document");
        const auto placement = parse_expert_placement(p);
        if (!placement) fail("unknown expert_placement '" + std::string(p) + "'");
        r.expert_groups.placement = *placement;
        const std::uint32_t ep = r.expert_groups.ep;
        if (r.experts == 0) fail("\"experts\" must be at least 1");
        if (r.experts > max_experts)
            fail("\"experts\": " + std::to_string(r.experts) + " a layer, more than the " +
                 std::to_string(max_experts) + " safeshard plans");
        if (ep == 0 || ep > r.world || r.world % ep != 0)
            fail("an expert parallel size of " + std::to_string(ep) +
                 " does not divide the world of " + std::to_string(r.world));
        if (ep > r.experts)
            fail(std::to_string(ep) + " expert groups for " + std::to_string(r.experts) +
                 " experts: a group would hold none");
    }

    // A record's "expert": one of the rank record's experts, held by this rank's group.
    void expert_of(const export_metadata& m, export_tensor& t, simdjson::dom::object o,
                   const std::string& where) const {
        const std::uint64_t e = u64(o, "expert", where);
        if (m.experts == 0)
            fail(where + " names expert " + std::to_string(e) +
                     " but the rank record has no \"experts\"",
                 t.name);
        if (e >= m.experts)
            fail(where + ": expert " + std::to_string(e) + " of " + std::to_string(m.experts),
                 t.name);
        t.expert = e;
        if (!holds_tensor(m, t, m.rank))
            fail(where + ": expert " + std::to_string(e) + " is not one of rank " +
                     std::to_string(m.rank) + "'s (its expert group holds others)",
                 t.name);
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
    void tensor_v2(const export_metadata& m, export_tensor& t, simdjson::dom::element v,
                   std::span<const export_cut> cuts) const {
        const std::string where = "tensor '" + t.name + "'";
        std::uint64_t cut = 0;
        std::optional<std::uint64_t> extent;
        simdjson::dom::object o;
        simdjson::dom::array sources;
        bool listed_sources = false;
        if (json_to_uint64(v, cut)) {
        } else if (v.is_array()) {
            std::uint64_t pair[2] = {0, 0};
            if (!number_pair(v, pair))
                fail(where + ": an array record must be [cut, extent]", t.name);
            cut = pair[0];
            extent = pair[1];
        } else if (v.get_object().get(o) == simdjson::SUCCESS) {
            known_keys(
                o, where,
                {"cut", "extent", "sources", "created", "expert", "stacked_experts",
                 "gathered_experts", "companion_of", "grid", "grid_all", "storage", "transposed"});
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
            if (o["expert"].get(field) == simdjson::SUCCESS) expert_of(m, t, o, where);
            if (o["stacked_experts"].get(field) == simdjson::SUCCESS)
                stacked_of(m, t, o, where, listed_sources);
            if (o["gathered_experts"].get(field) == simdjson::SUCCESS) gathered_of(t, field, where);
            if (o["storage"].get(field) == simdjson::SUCCESS) storage_of(t, o, field, where);
            if (o["companion_of"].get(field) == simdjson::SUCCESS)
                companion_of(t, o, where, listed_sources);
            else if (o["grid"].get(field) == simdjson::SUCCESS ||
                     o["grid_all"].get(field) == simdjson::SUCCESS)
                fail(where + ": \"grid\" without \"companion_of\"", t.name);
            if (o["transposed"].get(field) == simdjson::SUCCESS && (!t.companion() && !t.packed()))
                fail(where + ": \"transposed\" without \"companion_of\" or \"storage\"", t.name);
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
        if (listed_sources && (t.companion() || t.packed())) {
            t.sources = sources_of(sources, where, t.name, source_dtype);
            if (t.stacked_experts != 0) check_stacked(t, where);
            t.global = companion_global_of(t, where);
            if (t.stacked_experts != 0) t.global = experts_stacked(t, where);
            return;
        }
        if (listed_sources) {
            t.sources = sources_of(sources, where, t.name, source_dtype);
            const bool in_sources = t.stacked_experts != 0 && !t.gathered_experts;
            t.global = concatenated(t.sources, t.layout, where, t.name, in_sources ? 1 : 0);
            if (t.gathered_experts) t.global = experts_stacked(t, where);
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
        if (t.stacked_experts != 0) check_stacked(t, where);
        if (const auto v =
                slab_valid_rows(t.layout, t.global, t.local, cut_place(m, t, m.rank).position,
                                t.stacked_experts != 0))
            std::tie(t.valid_begin, t.valid_end) = *v;
    }

    // A record's "stacked_experts": the rank record's expert count, given with the sources,
    // not with "expert".
    void stacked_of(const export_metadata& m, export_tensor& t, simdjson::dom::object o,
                    const std::string& where, bool listed_sources) const {
        const std::uint64_t n = u64(o, "stacked_experts", where);
        if (n == 0 || n != m.experts)
            fail(where + " stacks " + std::to_string(n) +
                     " experts but the rank record says the layers have " +
                     std::to_string(m.experts),
                 t.name);
        if (t.expert) fail(where + ": an expert's tensor does not stack experts", t.name);
        if (!listed_sources) fail(where + ": stacked experts list their \"sources\"", t.name);
        t.stacked_experts = n;
    }

    // A record's "companion_of" (a tensor name) and "grid" ([rows, cols], 0 for a whole dim),
    // given with the sources, of no stacked or created tensor.
    void companion_of(export_tensor& t, simdjson::dom::object o, const std::string& where,
                      bool listed_sources) const {
        t.companion_of = tensor_name(str(o, "companion_of", where), where + "'s \"companion_of\"");
        if (t.companion_of == t.name) fail(where + " is a companion of itself", t.name);
        if (t.packed()) fail(where + ": a companion is no packed weight", t.name);
        std::uint64_t grid[2] = {0, 0};
        if (simdjson::dom::element e;
            o["grid"].get(e) != simdjson::SUCCESS || !number_pair(e, grid))
            fail(where + ": a companion's \"grid\" must be [rows, cols]", t.name);
        t.grid = companion_grid{{grid[0]}, {grid[1]}, transposed(o, where, t.name)};
        if (simdjson::dom::element e; o["grid_all"].get(e) == simdjson::SUCCESS) {
            bool all[2] = {false, false};
            if (!bool_pair(e, all) || (all[0] && grid[0] == 0) || (all[1] && grid[1] == 0))
                fail(where +
                         ": \"grid_all\" must be [rows, cols] of true or false, true only "
                         "for a dim in blocks",
                     t.name);
            t.grid.rows.all = all[0];
            t.grid.cols.all = all[1];
        }
        if (!listed_sources) fail(where + ": a companion lists its \"sources\"", t.name);
        if (t.created) fail(where + ": a companion is no created tensor", t.name);
    }

    // A packed weight's "storage" ([rows, cols]: the values a stored element covers along
    // each dim, 1 to 64, more than one in all unless "transposed"), of no created tensor.
    void storage_of(export_tensor& t, simdjson::dom::object o, simdjson::dom::element field,
                    const std::string& where) const {
        std::uint64_t covers[2] = {0, 0};
        const bool is_transposed = transposed(o, where, t.name);
        if (!number_pair(field, covers) || covers[0] == 0 || covers[1] == 0 || covers[0] > 64 ||
            covers[1] > 64 || (covers[0] * covers[1] < 2 && !is_transposed))
            fail(where +
                     ": \"storage\" must be [rows, cols] of 1 to 64 values each, more "
                     "than one in all",
                 t.name);
        if (t.created) fail(where + ": a packed weight is no created tensor", t.name);
        t.storage = companion_grid{{covers[0]}, {covers[1]}, is_transposed};
    }

    // A record's "transposed": true, or absent (false is not written).
    bool transposed(simdjson::dom::object o, const std::string& where,
                    const std::string& name) const {
        simdjson::dom::element e;
        if (o["transposed"].get(e) != simdjson::SUCCESS) return false;
        bool v = false;
        if (e.get_bool().get(v) != simdjson::SUCCESS || !v)
            fail(where + ": \"transposed\" is written only as true", name);
        return true;
    }

    // Whether e is an array of exactly two unsigned integers (into out).
    static bool number_pair(simdjson::dom::element e, std::uint64_t (&out)[2]) {
        simdjson::dom::array a;
        if (e.get_array().get(a) != simdjson::SUCCESS) return false;
        std::size_t n = 0;
        for (const simdjson::dom::element x : a)
            if (n == 2 || !json_to_uint64(x, out[n++])) return false;
        return n == 2;
    }

    // Whether e is an array of exactly two booleans (into out).
    static bool bool_pair(simdjson::dom::element e, bool (&out)[2]) {
        simdjson::dom::array a;
        if (e.get_array().get(a) != simdjson::SUCCESS) return false;
        std::size_t n = 0;
        for (const simdjson::dom::element x : a)
            if (n == 2 || x.get_bool().get(out[n++]) != simdjson::SUCCESS) return false;
        return n == 2;
    }

    // A companion's (a packed weight's) global shape: its sources joined as its grid (its
    // storage grid) says along its cut's dim, in the weight's orientation; of stacked experts,
    // one expert's slab (the sources without dim 0 where they stack the experts).
    shape companion_global_of(const export_tensor& t, const std::string& where) const {
        const std::size_t skip = t.stacked_experts != 0 && !t.gathered_experts ? 1 : 0;
        std::vector<shape> shapes;
        for (const auto& s : t.sources)
            shapes.push_back(shape::from(s.global.dims().subspan(skip)));
        const companion_grid& grid = t.companion() ? t.grid : t.storage;
        const auto g = companion_global(grid, t.layout.dim, shapes);
        if (!g)
            fail(where + ": its sources cannot be joined as a " + to_string(grid) +
                     (t.companion() ? " companion" : " packed weight") + " along dim " +
                     std::to_string(t.layout.dim),
                 t.name);
        return *g;
    }

    // A record's "gathered_experts": true, of stacked experts only (false is not written).
    void gathered_of(export_tensor& t, simdjson::dom::element field,
                     const std::string& where) const {
        bool gathered = false;
        if (field.get_bool().get(gathered) != simdjson::SUCCESS || !gathered)
            fail(where + ": \"gathered_experts\" is written only as true", t.name);
        if (t.stacked_experts == 0)
            fail(where + ": \"gathered_experts\" without \"stacked_experts\"", t.name);
        t.gathered_experts = true;
    }

    // Gathered experts' global shape: the experts, then one expert's slab (t.global).
    shape experts_stacked(const export_tensor& t, const std::string& where) const {
        shape s{t.stacked_experts};
        for (const auto d : t.global.dims())
            if (!s.try_push_back(d))
                fail(where + ": an expert's slab of " + std::to_string(t.global.rank()) +
                         " dimensions leaves no room for the experts' dim",
                     t.name);
        return s;
    }

    // Stacked experts: every source stacks them on dim 0, a weight's slab of one dim at least
    // (gathered: each names its expert by "{e}", once).
    void check_stacked(const export_tensor& t, const std::string& where) const {
        for (const auto& s : t.sources)
            if (t.gathered_experts) {
                const std::size_t at = s.name.find("{e}");
                if (at == std::string::npos || s.name.find("{e}", at + 1) != std::string::npos)
                    fail(where + ": its source '" + s.name +
                             "' of gathered experts must name the expert by \"{e}\", once",
                         t.name);
            } else if (s.global.rank() < (t.companion() ? 1 : 2) ||
                       s.global[0] != t.stacked_experts)
                fail(where + ": its source '" + s.name + "' of shape " + s.global.to_string() +
                         " does not stack " + std::to_string(t.stacked_experts) +
                         " experts on dim 0",
                     t.name);
    }

    // The sources concatenated along the layout's dim (the first source when replicated);
    // `offset` 1 for stacked experts, whose layout cuts the slabs after dim 0.
    shape concatenated(const std::vector<export_source>& sources, const layout& l,
                       const std::string& where, const std::string& tensor,
                       std::size_t offset = 0) const {
        shape g = sources.front().global;
        if (!cuts_along_dim(l.kind)) return g;
        const std::size_t dim = l.dim + offset;
        if (dim >= g.rank())
            fail(where + ": layout dim " + std::to_string(l.dim) + " of sources of " +
                     std::to_string(g.rank()) + " dimensions",
                 tensor);
        for (std::size_t k = 1; k < sources.size(); ++k) {
            const shape& s = sources[k].global;
            if (s.rank() != g.rank() || add_overflows(g[dim], s[dim], g[dim]))
                fail(
                    where + ": its sources cannot be concatenated along dim " + std::to_string(dim),
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
    // its kind uses: `strict`). Version 1 reads every kind's fields, as it always did.
    layout layout_of(simdjson::dom::object o, const std::string& where, bool strict) const {
        const std::string_view kind = str(o, "kind", where + "'s layout");
        layout l;
        bool known = false;
        std::array<std::string_view, 32> keys{};
        std::size_t key_count = 0;
        for_each_layout_kind([&]<class K>(K) {
            if (K::name != kind) return;
            l.kind = K::id;
            known = true;
            keys[key_count++] = "kind";
            if (K::cuts_along_dim) keys[key_count++] = "dim";
            for (const std::string_view k : K::json_fields) keys[key_count++] = k;
            keys[key_count++] = "source_dtype";
        });
        if (!known) fail(where + ": unknown layout kind '" + std::string(kind) + "'");
        if (strict)
            known_keys(o, where + " (" + std::string(kind) + ")",
                       std::span<const std::string_view>(keys.data(), key_count));
        if (!strict || cuts_along_dim(l.kind)) {
            const std::uint64_t dim = u64(o, "dim", where + "'s layout");
            if (dim >= shape::capacity) fail(where + ": layout dim " + std::to_string(dim));
            l.dim = static_cast<std::uint8_t>(dim);
        }
        cut_fields_json_reader r(*this, o, where);
        if (!strict) for_each_layout_kind([&]<class K>(K) { K::read_fields(r, l); });
        // The kind's own fields last: where kinds share a field ("unit": split's and
        // ceil_split's units[0], fused's units), the value is the named kind's.
        visit_layout_kind(l.kind, [&]<class K>(K) { K::read_fields(r, l); });
        return l;
    }

    // Reads a kind's fields of a cut (layout_kind_fields); errors name `where`.
    class cut_fields_json_reader {
    public:
        cut_fields_json_reader(const export_parser& p, simdjson::dom::object o,
                               const std::string& where)
            : p_(p), o_(o), where_(where) {}
        std::uint64_t number_or_zero(std::string_view key) {
            return p_.u64_or_zero(o_, key, where_);
        }
        std::optional<std::string_view> text(std::string_view key) {
            std::string_view s;
            if (o_[key].get_string().get(s) != simdjson::SUCCESS) return std::nullopt;
            return s;
        }
        std::optional<std::size_t> numbers(std::string_view key, std::uint64_t* out,
                                           std::size_t capacity, std::string_view bad) {
            simdjson::dom::array a;
            if (o_[key].get_array().get(a) != simdjson::SUCCESS) return std::nullopt;
            std::size_t n = 0;
            for (const simdjson::dom::element e : a) {
                if (n == capacity || !json_to_uint64(e, out[n])) fail(std::string(bad));
                ++n;
            }
            return n;
        }
        [[noreturn]] void fail(const std::string& why) { p_.fail(where_ + ": " + why); }

    private:
        const export_parser& p_;
        simdjson::dom::object o_;
        const std::string& where_;
    };
    static_assert(cut_fields_reader<cut_fields_json_reader>);

    std::string file_;
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

// A companion follows a weight of the rank: untied, no companion itself, of the same expert,
// cut by the same layout, its experts stacked as the weight's are.
inline void check_companion(const export_metadata& m, std::span<const std::size_t> order,
                            const export_tensor& t, const std::string& file) {
    const export_tensor* w = export_find(m, order, t.companion_of);
    if (!w || w->tied() || w->companion() || w->created)
        export_file_error("tensor '" + t.name + "' is a companion of '" + t.companion_of +
                              "', which is no weight of the export it could follow",
                          file, t.name);
    if (w->expert != t.expert || !(w->layout == t.layout) ||
        w->stacked_experts != t.stacked_experts || w->gathered_experts != t.gathered_experts)
        export_file_error("tensor '" + t.name + "' is a companion of '" + t.companion_of +
                              "' but is not cut as it (another layout or expert, or its "
                              "experts stacked otherwise)",
                          file, t.name);
}

// Each name once; every tie aims at an untied tensor of the rank; every companion at a weight.
inline void check_export_names(const export_metadata& m, const std::string& file) {
    const auto order = export_name_order(m);
    for (std::size_t k = 1; k < order.size(); ++k)
        if (m.tensors[order[k]].name == m.tensors[order[k - 1]].name)
            export_file_error("tensor '" + m.tensors[order[k]].name +
                                  "' is described twice in the rank's export metadata",
                              file, m.tensors[order[k]].name);
    for (const auto& t : m.tensors) {
        if (t.companion()) check_companion(m, order, t, file);
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
    m.experts = r.experts;
    m.expert_groups = r.expert_groups;
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

}  // namespace safeshard
