// load_plan: where format/ (a checkpoint) and shard/ (a schema) meet. The "empty weights"
// view of a rank's model: destinations and copy_ops, decided before a byte is read; building
// one reads headers only and allocates no tensor.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/model_config.hpp"
#include "safeshard/core/name_hash.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/export_metadata_reader.hpp"
#include "safeshard/load/config_check.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/copy_op.hpp"
#include "safeshard/load/report.hpp"
#include "safeshard/load/tensor_factory.hpp"
#include "safeshard/shard/architectures/registry.hpp"
#include "safeshard/shard/companion.hpp"
#include "safeshard/shard/expert_parallel.hpp"
#include "safeshard/shard/parameter.hpp"
#include "safeshard/shard/quantization/schemes.hpp"
#include "safeshard/shard/schema.hpp"
#include "safeshard/shard/slice.hpp"

namespace safeshard {

// Which rank of how many this process loads, and how the experts of a mixture spread over
// the ranks (shard/expert_parallel.hpp; a dense model ignores it).
struct parallel_context {
    std::uint32_t rank = 0;
    std::uint32_t world = 1;
    expert_parallel experts{};
};

struct plan_options {
    // The target dtype: by default each tensor keeps its checkpoint dtype.
    dtype_policy dtype = dtype_policy::keep();
    // Per parameter (schema names; '*' globs allowed), before the schema's own override and
    // the policy; the first matching entry wins.
    std::vector<std::pair<std::string, safeshard::dtype>> dtype_per_parameter{};
    safeshard::device device{};
    // Unexpected checkpoint names are an error (strict) or only reported.
    bool strict = true;
    // A quantized checkpoint (scale tensors present) is refused unless raw tensors are asked for.
    bool allow_quantized = false;
    // The schema built from config.json (when no schema is given), and its architecture:
    // empty = config.json's model_type.
    schema_options schema{};
    std::string architecture{};
    // Global shapes of created (initialised) parameters; otherwise the checkpoint's tensor
    // of the same name gives the shape (without being read).
    std::vector<std::pair<std::string, shape>> created_shapes{};
};

// What a weight dequantized in the copy reads beside its values: its block scales' destination,
// its global scales' (NVFP4), which multiply or divide the block scales, and, for per-tensor
// scales kept one per fused part, the parts' rows: part_rows[i].second's rows of a slab begin
// at part_rows[i].first (ascending).
// An integer weight's (GPTQ's, compressed-tensors', bitsandbytes'): its zero points' and group
// index's destinations where it reads them, the zero point where it has none, what it adds to
// each zero point read, and the factor of every value (detail/dequantize.hpp's dequant_view).
struct dequant_inputs {
    std::optional<std::uint32_t> scales{};
    std::optional<std::uint32_t> global{};
    bool global_divides = false;
    std::vector<std::pair<std::uint64_t, std::uint32_t>> part_rows{{0, 0}};
    std::optional<std::uint32_t> zeros{};
    std::optional<std::uint32_t> group_index{};
    std::int32_t zero = 0;
    std::int32_t zero_adjust = 0;
    float post = 1.0f;
};

// One tensor of the rank's model.
struct plan_destination {
    std::string name;
    safeshard::dtype dtype = safeshard::dtype::u8;
    safeshard::dtype source_dtype = safeshard::dtype::u8;
    shape local{};
    shape global{};  // the sources concatenated along the split dim, unpadded
    std::uint64_t bytes = 0;
    safeshard::device device{};
    safeshard::layout layout{};
    std::vector<std::string> sources{};
    std::optional<std::uint32_t> tied_to{};  // aliases that destination; no bytes of its own
    std::optional<std::uint64_t> expert{};   // an expert's tensor: which expert of its layer
    // The layer's experts stacked on dim 0 (parameter_meta::stacked_experts): how many the
    // sources stack (global dim 0; the rank's local dim 0 holds its own, in expert order),
    // `layout` cutting each expert's slab. 0: not stacked.
    std::uint64_t stacked_experts = 0;
    // Stacked experts gathered from one tensor per expert (the engine's fused experts):
    // `sources` name them with "{e}" for the expert, each of one expert's slab.
    bool gathered_experts = false;
    // A quantization companion (a scale grid) of the weight destination `companion_of`, cut as
    // that weight in the units of `grid` (shard/companion.hpp); its dtype is the stored one.
    std::optional<std::uint32_t> companion_of{};
    companion_grid grid{};
    // A packed weight: how its stored elements cover its values (the layout cuts the values,
    // the stored elements follow in whole elements; grid<1,2>: two values a byte along K,
    // ^T: stored transposed); grid<1,1>: stored as its values.
    companion_grid storage{};
    // A quantized weight dequantized in the copy (plan_options::dtype asks a float dtype of a
    // quantized checkpoint): its values are read as `source_dtype` (F8_E4M3; F4, two a byte)
    // and scaled by the companions `dequant` names, which are `consumed`: read into host
    // memory before the weights, for the conversion only, and not tensors of the rank.
    std::optional<dequant_inputs> dequant{};
    bool consumed = false;
    // The parameter's place in the schema: orders the destinations of one rank's plan against
    // another's (a rank holds its own experts only).
    std::size_t schema_index = 0;
    init_spec init{};  // kind != none: created by `init_map`, not read
    slice_map init_map{};

    [[nodiscard]] bool tied() const noexcept { return tied_to.has_value(); }
    [[nodiscard]] bool created() const noexcept { return init.kind != init_kind::none; }
};

// A packed weight's storage grid as its layout names it: "2" for grid<1,2> (values packed
// along K, as stored), the grid otherwise ("grid<1,8>^T").
[[nodiscard]] inline std::string storage_name(const companion_grid& g) {
    if (!g.transposed && g.rows == companion_dim{} && !g.cols.whole() && !g.cols.all)
        return std::to_string(g.cols.block);
    return to_string(g);
}

// The layout as plan --json spells it: "split<1>"; a companion's "grid<128,128>(split<1>)", a
// packed weight's "packed<8>(split<1>)"; for stacked experts "stacked_experts<split<1>>" (the
// experts on dim 0, each expert's slab cut as the inner one says),
// "gathered_experts<fused<0>>" when the slabs come from one tensor per expert.
[[nodiscard]] inline std::string layout_name(const plan_destination& d) {
    std::string inner(name(d.layout));
    if (d.companion_of)
        inner = to_string(d.grid) + "(" + inner + ")";
    else if (d.storage != companion_grid{})
        inner = "packed<" + storage_name(d.storage) + ">(" + inner + ")";
    if (d.stacked_experts == 0) return inner;
    return (d.gathered_experts ? "gathered_experts<" : "stacked_experts<") + inner + ">";
}

struct device_bytes {
    safeshard::device device{};
    std::uint64_t bytes = 0;
};

namespace detail {
// What names a quantization_config's scheme beside its quant_method: " (format
// 'pack-quantized')", " (quant_algo 'MIXED_PRECISION' of layers FP8, FP8_PB_WO)"; empty for none.
[[nodiscard]] inline std::string scheme_details(const quantization_config& q) {
    std::string s;
    if (!q.format.empty()) s += "format '" + q.format + "'";
    if (!q.quant_algo.empty()) s += (s.empty() ? "" : ", ") + ("quant_algo '" + q.quant_algo + "'");
    for (std::size_t i = 0; i < q.layer_algos.size(); ++i)
        s += (i ? ", " : " of layers ") + q.layer_algos[i];
    return s.empty() ? s : " (" + s + ")";
}

inline bool is_quantization_scale(std::string_view n) noexcept {
    return n.ends_with(".weight_scale") || n.ends_with(".weight_scale_inv") ||
           n.ends_with(".weight_scale_2") || n.ends_with(".weight_global_scale") ||
           n.ends_with(".SCB") ||
           n.ends_with("_proj_scales");  // gpt-oss's MXFP4 experts (*_blocks, *_scales)
}

inline std::string name_list(const std::vector<std::string>& v, std::size_t max = 20) {
    std::string s;
    for (std::size_t i = 0; i < v.size() && i < max; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > max) s += ", ... (" + std::to_string(v.size() - max) + " more)";
    return s;
}

}  // namespace detail

// The dtype a dequantizing conversion reads a scale companion as: its own, U8 as E8M0 (the
// microscaling formats store their scales so).
[[nodiscard]] inline dtype dequant_scale_dtype(const plan_destination& c) noexcept {
    return c.dtype == dtype::u8 ? dtype::f8_e8m0 : c.dtype;
}

// What weight w's dequantizing conversion reads, among the plan's destinations `all`: its
// values, its block scales, its global scales where it has them.
[[nodiscard]] inline std::vector<convert_input> dequant_conversion_inputs(
    std::span<const plan_destination> all, const plan_destination& w) {
    const dequant_inputs& in = *w.dequant;
    std::vector<convert_input> inputs{{convert_role::values, w.source_dtype},
                                      {convert_role::scales, dequant_scale_dtype(all[*in.scales])}};
    if (in.global)
        inputs.push_back(
            {in.global_divides ? convert_role::global_divisors : convert_role::global_scales,
             all[*in.global].dtype});
    if (in.zeros) inputs.push_back({convert_role::zeros, all[*in.zeros].dtype});
    if (in.group_index) inputs.push_back({convert_role::group_index, all[*in.group_index].dtype});
    return inputs;
}

// The view weight w's conversion reads its companions through, their bytes at `addresses`
// (by destination index, host memory).
[[nodiscard]] inline dequant_view dequant_view_of(std::span<const plan_destination> all,
                                                  const plan_destination& w,
                                                  std::span<std::byte* const> addresses) {
    const dequant_inputs& in = *w.dequant;
    const std::size_t r = w.local.rank();
    const std::uint64_t experts = w.stacked_experts ? w.local[0] : 1;
    dequant_view v;
    v.rows = r >= 2 ? w.local[r - 2] : 1;
    v.cols = r >= 1 ? w.local[r - 1] : 1;
    v.part_rows = in.part_rows;
    auto operand = [&](std::uint32_t at) {
        const plan_destination& c = all[at];
        const std::size_t cr = c.local.rank();
        const std::uint64_t last = cr >= 2 ? c.local[cr - 1] : 1;  // the stored grid's columns
        dequant_operand o;
        o.data = addresses[at];
        o.type = dequant_scale_dtype(c);
        o.block_rows = c.grid.rows.block;
        o.block_cols = c.grid.cols.block;
        o.per_part = c.grid.rows.whole() && c.grid.cols.whole();
        o.row_step = c.grid.transposed ? 1 : last;
        o.col_step = c.grid.transposed ? last : 1;
        o.per_expert = experts ? c.local.element_count().value_or(0) / experts : 0;
        return o;
    };
    v.scales = operand(*in.scales);
    if (in.global) v.global = operand(*in.global);
    if (in.zeros) {
        v.zeros = operand(*in.zeros);
        v.zeros.bits = static_cast<std::uint32_t>(
            v.zeros.block_rows ? bit_size(all[*in.zeros].dtype) / v.zeros.block_rows : 0);
    }
    if (in.group_index) {
        v.group_index = operand(*in.group_index);
        v.group_index.col_step = 1;  // one entry a column
    }
    v.zero = in.zero;
    v.zero_adjust = in.zero_adjust;
    v.post = in.post;
    return v;
}

// The groups of column blocks a dequantized weight's scales hold (the extent of their grid's
// column dim: GPTQ's [G, N] rows, compressed-tensors' [N, G] columns; stacked experts' last
// two dims), for each expert slab.
[[nodiscard]] inline std::uint64_t dequant_groups(const plan_destination& scales) noexcept {
    const shape& l = scales.local;
    const std::size_t r = l.rank();
    if (r == 0) return 1;
    return l[scales.grid.transposed && r >= 2 ? r - 2 : r - 1];
}

// Checks an act-order weight's group index, read, against the groups its scales hold: an
// entry beyond them (or negative) would read another weight's scales.
inline void check_group_index(const plan_destination& w, const plan_destination& scales,
                              const dequant_view& v) {
    if (!v.group_index.present()) return;
    const std::uint64_t experts = w.stacked_experts ? w.local[0] : 1;
    const std::uint64_t groups = dequant_groups(scales);
    for (std::uint64_t e = 0; e < experts; ++e)
        for (std::uint64_t c = 0; c < v.cols; ++c) {
            std::int32_t g = 0;
            std::memcpy(&g, v.group_index.data + (e * v.group_index.per_expert + c) * 4, 4);
            if (g < 0 || static_cast<std::uint64_t>(g) >= groups)
                throw error(errc::quantized_checkpoint,
                            "parameter '" + w.name + "': its group index gives column " +
                                std::to_string(c) + " group " + std::to_string(g) +
                                ", but its scales hold " + std::to_string(groups) + " groups",
                            error_context{.file = {}, .tensor = w.name});
        }
}

class load_plan {
public:
    // The architecture named by options.architecture or config.json's model_type. A rank
    // folder of a per-rank export loads through identity layouts, as its recorded rank only.
    [[nodiscard]] static load_plan build(const checkpoint& ckpt, parallel_context ctx,
                                         const plan_options& o = {}) {
        if (const auto exported = read_export_metadata(ckpt)) {
            check_export_rank(*exported, ctx.rank, ctx.world, ckpt.root().string(), ctx.experts);
            return build_from(ckpt, identity_schema(exported->tensors, exported->experts), ctx, o,
                              nullptr, {.config = true, .export_rank = true});
        }
        const configured_schema cs = schema_from_config(ckpt, o.architecture, o.schema, "load");
        return build_from(ckpt, cs.schema, ctx, o, &cs.config, {.config = true});
    }

    // A given schema; `config` (optional) adds config.json's checks against the tensors
    // (check_config). (A rank folder of an export is already cut: give it
    // schema::replicate_all() or use the overload above.)
    [[nodiscard]] static load_plan build(const checkpoint& ckpt, const schema& s,
                                         parallel_context ctx, const plan_options& o = {},
                                         const model_config* config = nullptr);

    [[nodiscard]] parallel_context context() const noexcept { return ctx_; }
    // The experts of each layer with experts (0: a dense model), and those this rank holds
    // (ascending; a rank reads and allocates no other expert's tensors).
    [[nodiscard]] std::uint64_t experts() const noexcept { return experts_; }
    [[nodiscard]] std::span<const std::uint64_t> held_experts() const noexcept {
        return held_experts_;
    }
    [[nodiscard]] std::span<const plan_destination> destinations() const noexcept {
        return destinations_;
    }
    // Sorted by (file, file offset); zero fills last.
    [[nodiscard]] std::span<const copy_op> ops() const noexcept { return ops_; }
    // The checkpoint's files, by the ops' file index.
    [[nodiscard]] std::span<const std::filesystem::path> files() const noexcept { return files_; }
    // The files whose headers the checkpoint read, as they were then: what a reader opened
    // later must find at each path (read_options::expect; load_tensors opens them through a
    // file_cache).
    [[nodiscard]] std::span<const std::optional<file_version>> versions() const noexcept {
        return versions_;
    }
    [[nodiscard]] const plan_destination* find(std::string_view name) const noexcept {
        for (const auto& d : destinations_)
            if (d.name == name) return &d;
        return nullptr;
    }

    // Bytes the rank's tensors take on each device (tied aliases count once; companions
    // consumed by a dequantization are no tensors of the rank).
    [[nodiscard]] std::vector<device_bytes> bytes_per_device() const {
        std::vector<device_bytes> out;
        for (const auto& d : destinations_) {
            if (d.tied() || d.consumed) continue;
            auto it = std::find_if(out.begin(), out.end(),
                                   [&](const device_bytes& b) { return b.device == d.device; });
            if (it == out.end()) {
                out.push_back({d.device, 0});
                it = out.end() - 1;
            }
            it->bytes += d.bytes;
        }
        return out;
    }
    [[nodiscard]] std::uint64_t total_bytes() const {
        std::uint64_t n = 0;
        for (const auto& b : bytes_per_device()) n += b.bytes;
        return n;
    }
    // What the ops read from the files.
    [[nodiscard]] std::uint64_t bytes_to_read() const noexcept {
        std::uint64_t n = 0;
        for (const auto& op : ops_) n += op.bytes_read();
        return n;
    }

    [[nodiscard]] std::span<const std::string> unexpected() const noexcept { return unexpected_; }
    [[nodiscard]] std::span<const std::string> initialised() const noexcept { return initialised_; }
    [[nodiscard]] std::span<const ignored_tensor> ignored() const noexcept { return ignored_; }
    [[nodiscard]] std::span<const std::string> notes() const noexcept { return notes_; }

    // The names of the report (bytes and seconds are the engine's and the loader's).
    void fill_report(load_report& r) const {
        r.unexpected.assign(unexpected_.begin(), unexpected_.end());
        r.initialised.assign(initialised_.begin(), initialised_.end());
        r.ignored.assign(ignored_.begin(), ignored_.end());
        r.notes.assign(notes_.begin(), notes_.end());
        r.rank_bytes = total_bytes();
    }

private:
    class builder;
    load_plan() = default;

    // What build() has checked already: config.json against the checkpoint, and that the
    // checkpoint is no rank of an export other than ctx.
    struct checked {
        bool config = false;
        bool export_rank = false;
    };
    [[nodiscard]] static load_plan build_from(const checkpoint& ckpt, const schema& s,
                                              parallel_context ctx, const plan_options& o,
                                              const model_config* config, checked done);

    std::uint64_t tensor_bytes(dtype t, const shape& s, const std::string& n) const {
        const auto elems = s.element_count();
        std::uint64_t bits = 0;
        if (!elems || mul_overflows(*elems, std::uint64_t{bit_size(t)}, bits))
            throw error(errc::validation_overflow,
                        "parameter '" + n + "': " + s.to_string() + " overflows",
                        error_context{.file = {}, .tensor = n});
        return (bits + 7) / 8;
    }

    parallel_context ctx_{};
    std::uint64_t experts_ = 0;
    std::vector<std::uint64_t> held_experts_{};
    safeshard::device device_{};
    std::vector<plan_destination> destinations_{};
    std::vector<copy_op> ops_{};
    std::vector<std::filesystem::path> files_{};
    std::vector<std::optional<file_version>> versions_{};
    std::vector<std::string> unexpected_{};
    std::vector<std::string> initialised_{};
    std::vector<ignored_tensor> ignored_{};
    std::vector<std::string> notes_{};
};

namespace detail {
// Where one piece of a destination lies, in elements: added to the slice map's source offsets
// (per source) and destination offsets (an expert's slab of stacked experts).
struct piece_offsets {
    std::uint64_t source[max_sources] = {};
    std::uint64_t destination = 0;
};

// How a rank's stacked experts lie: its experts (`held`, in expert order) of the layer's
// `experts`, each one slab of its tensor; the slabs in dim 0 of the sources, or (`gathered`)
// each held expert's own tensors.
struct expert_stack {
    std::span<const std::uint64_t> held;
    std::uint64_t experts = 0;
    bool gathered = false;
};
}  // namespace detail

// The steps of load_plan::build, over one plan under construction.
class load_plan::builder {
public:
    builder(load_plan& p, const checkpoint& ckpt, const schema& s, parallel_context ctx,
            const plan_options& o, const model_config* config)
        : p_(p),
          ckpt_(ckpt),
          s_(s),
          ctx_(ctx),
          o_(o),
          config_(config),
          expert_rank_(expert_rank_of(ctx.rank, ctx.world, ctx.experts.ep)),
          scheme_(plan_quantization_scheme(config, o.allow_quantized)) {}

    // A quantized checkpoint of no known scheme is refused before anything else is decided
    // (one of a known scheme once its companions are planned: refuse_unclaimed_scales).
    void refuse_quantized(bool export_rank) const {
        if (o_.allow_quantized || scheme_) return;
        if (config_ && config_->quantization)
            throw error(errc::quantized_checkpoint,
                        "config.json's quantization_config says quant_method '" +
                            config_->quantization->quant_method + "'" +
                            detail::scheme_details(*config_->quantization) +
                            ", which no plan cuts yet; load the raw tensors explicitly "
                            "(plan_options::allow_quantized) or dequantize it first",
                        error_context{.file = ckpt_.root().string(), .tensor = {}});
        // A rank folder of an export records what each of its tensors is, scales included.
        if (!export_rank) refuse_scales([](std::string_view) { return true; });
    }
    // A scheme that stores its weights flattened (bitsandbytes 4-bit) loads at world 1 only.
    void refuse_flattened_cut() const {
        if (!scheme_ || !scheme_->flattened || ctx_.world == 1) return;
        throw error(errc::quantized_checkpoint,
                    "the checkpoint is " + std::string(scheme_->name) +
                        ", which stores each weight flattened with one quantization state over "
                        "all of it: no part of a weight has a state of its own, so it is not cut "
                        "for " +
                        std::to_string(ctx_.world) +
                        " ranks; load it at world 1 (every tensor whole, as stored), or "
                        "dequantize it and quantize each rank's part again",
                    error_context{.file = ckpt_.root().string(), .tensor = {}});
    }
    // After planning: the scale tensors no weight claimed, of no weight the schema knows (another
    // rank's expert, another stage's layer: their scales are left with them), and no parameter
    // of the schema's own (gpt-oss's MXFP4 *_scales) or left out by it.
    void refuse_unclaimed_scales() const {
        if (o_.allow_quantized || !scheme_) return;
        refuse_scales([&](std::string_view n) {
            if (claimed_.contains(n) || s_.find_by_source(n) || s_.ignore_reason_of(n))
                return false;
            const auto w = scale_weight(n);
            return !w || (!s_.find_by_source(*w) && !s_.ignore_reason_of(*w));
        });
    }
    // The weight a name of the scheme's companions belongs to ("X.weight_scale_inv" ->
    // "X.weight").
    [[nodiscard]] std::optional<std::string> scale_weight(std::string_view n) const {
        return scheme_ ? companion_weight(*scheme_, n) : std::nullopt;
    }

    template <class Keep>
    void refuse_scales(Keep&& keep) const {
        std::vector<std::string> scales;
        for (const auto& f : ckpt_.files())
            for (const tensor_view t : f.view)
                if (detail::is_quantization_scale(t.name()) && keep(t.name()))
                    scales.emplace_back(t.name());
        if (scales.empty()) return;
        throw error(errc::quantized_checkpoint,
                    "the checkpoint is quantized (scale tensors" +
                        std::string(scheme_ ? " no weight of the " + std::string(scheme_->name) +
                                                  " scheme claims"
                                            : std::string()) +
                        ": " + detail::name_list(scales, 5) +
                        "); load the raw tensors explicitly (plan_options::allow_quantized) or "
                        "dequantize it first",
                    error_context{.file = ckpt_.root().string(), .tensor = scales.front()});
    }

    // The schema's parameters: loaded and created ones now, tied ones once their targets are.
    void add_parameters() {
        for (const parameter_meta& m : s_.parameters()) {
            if (m.expert && !holds_expert(expert_rank_, *m.expert, s_.experts(), ctx_.experts))
                continue;  // another expert group's: not read, not allocated
            if (m.tied())
                tied_.push_back(&m);
            else if (m.created())
                add_created(m);
            else if (m.stacked_experts)
                add_stacked(m);
            else
                add_loaded(m);
        }
    }

    // Checkpoint names no parameter reads: ignored, a fallback parameter, or unexpected.
    void add_unread_names() {
        const bool lenient = !ckpt_.warnings().empty();
        for (const auto& f : ckpt_.files())
            for (const tensor_view t : f.view) {
                const std::string_view n = t.name();
                // A name a lenient open let through twice (it warned): the copy the checkpoint
                // finds is the one read (once); this one is said.
                if (const auto found = lenient ? ckpt_.find(n) : std::nullopt;
                    found && found->file != &f) {
                    p_.ignored_.push_back({std::string(n), "stored twice: the copy in " +
                                                               found->file->name + " is read"});
                    continue;
                }
                if (s_.find_by_source(n) || claimed_.contains(n)) continue;
                if (const auto w = scale_weight(n); w && s_.find_by_source(*w))
                    continue;  // its weight is another rank's: so is it
                if (auto fm = unread_name(n)) fallback_.push_back(std::move(*fm));
            }
        for (const auto& fm : fallback_) add_loaded(fm);
    }

    // Tied parameters alias their target's destination.
    void add_ties() {
        for (const parameter_meta* m : tied_) {
            const auto it = index_.find(m->tied_to);
            if (it == index_.end())  // its target is missing (reported below) or not in the schema
                continue;
            plan_destination d = p_.destinations_[it->second];
            d.name = m->name;
            d.tied_to = it->second;
            d.schema_index = schema_index_of(*m);
            d.sources.clear();
            d.init = {};
            p_.destinations_.push_back(std::move(d));
        }
    }

    // Missing tensors always, unexpected ones when strict: one error listing them.
    void throw_if_incomplete() {
        std::sort(missing_.begin(), missing_.end());
        if (!missing_.empty())
            throw error(errc::missing_tensor,
                        std::to_string(missing_.size()) +
                            " tensor(s) the schema expects are not in the checkpoint: " +
                            detail::name_list(missing_),
                        error_context{.file = ckpt_.root().string(), .tensor = missing_.front()});
        std::sort(p_.unexpected_.begin(), p_.unexpected_.end());
        if (!p_.unexpected_.empty() && o_.strict)
            throw error(
                errc::unexpected_tensor,
                std::to_string(p_.unexpected_.size()) +
                    " checkpoint tensor(s) no parameter of the schema reads: " +
                    detail::name_list(p_.unexpected_) +
                    " (a lenient plan, plan_options::strict = false, reports them instead)",
                error_context{.file = ckpt_.root().string(), .tensor = p_.unexpected_.front()});
    }

private:
    // The parameter's place in the schema; replicate_all's fallback parameters follow the
    // schema's own, in checkpoint order.
    [[nodiscard]] std::size_t schema_index_of(const parameter_meta& m) const noexcept {
        // std::less: a total order over pointers into different arrays
        auto within = [&](std::span<const parameter_meta> v) {
            const std::less<const parameter_meta*> before;
            return !v.empty() && !before(&m, v.data()) && before(&m, v.data() + v.size());
        };
        const auto params = s_.parameters();
        if (within(params)) return static_cast<std::size_t>(&m - params.data());
        if (within(fallback_))
            return params.size() + static_cast<std::size_t>(&m - fallback_.data());
        return params.size() + fallback_.size();
    }

    // A checkpoint name no parameter reads: said ignored, made a fallback parameter (returned),
    // or unexpected.
    std::optional<parameter_meta> unread_name(std::string_view n) {
        const auto as_schema = s_.names().from_checkpoint(n);
        if (!as_schema) {
            p_.ignored_.push_back({std::string(n), "outside the name map's prefix"});
        } else if (const auto* cm = s_.find(*as_schema); cm && cm->created()) {
            p_.ignored_.push_back({std::string(n), "initialised, not read"});
        } else if (const auto why = s_.ignore_reason_of(n)) {
            p_.ignored_.push_back({std::string(n), std::string(why->note), why->left_out});
        } else if (const auto w = scale_weight(n); w && s_.ignore_reason_of(*w)) {
            const auto why = s_.ignore_reason_of(*w);
            p_.ignored_.push_back({std::string(n), std::string(why->note), why->left_out});
        } else if (scheme_ && is_whole_tensor(*scheme_, n) && outside_stage(n)) {
            p_.ignored_.push_back({std::string(n), "outside this pipeline stage"});
        } else if (scheme_ && is_whole_tensor(*scheme_, n)) {  // a KV cache scale
            parameter_meta fm;
            fm.name = *as_schema;
            fm.layout = make_replicated();
            fm.sources = {std::string(n)};
            return fm;
        } else if (detail::is_quantization_scale(n)) {
            p_.ignored_.push_back({std::string(n), "a quantization scale (raw load)"});
        } else if (s_.fallback()) {
            parameter_meta fm;
            fm.name = *as_schema;
            fm.layout = *s_.fallback();
            fm.sources = {std::string(n)};
            return fm;
        } else {
            p_.unexpected_.emplace_back(n);
        }
        return std::nullopt;
    }

    // Whether checkpoint name n is of a layer ("model.layers.3.") whose parameters are outside
    // this pipeline stage (the layers of the schema's skipped names, gathered once).
    bool outside_stage(std::string_view n) {
        if (!skipped_layers_) {
            skipped_layers_.emplace();
            for (const auto& s : s_.skipped())
                if (const auto l = detail::layer_of(s))
                    skipped_layers_->insert(std::string(l->container) + "." +
                                            std::to_string(l->index));
        }
        const auto l = detail::layer_of(n);
        return l && skipped_layers_->contains(std::string(l->container) + "." +
                                              std::to_string(l->index));
    }

    // The dtype a per-parameter entry or the schema's override asks of parameter `name`.
    [[nodiscard]] std::optional<dtype> named_dtype(
        const std::string& name, const std::optional<dtype>& meta_override) const {
        for (const auto& [pattern, t] : o_.dtype_per_parameter)
            if (glob_match(pattern, name)) return t;
        return meta_override;
    }

    [[nodiscard]] dtype target_dtype(const std::string& name,
                                     const std::optional<dtype>& meta_override,
                                     dtype source) const {
        if (const auto t = named_dtype(name, meta_override)) return *t;
        return o_.dtype.resolve(source, o_.device.kind == device_kind::cuda);
    }

    // Source lookup: the parameter's tensors, or nullopt with the absent ones noted missing.
    std::optional<std::vector<located_tensor>> locate_sources(const parameter_meta& m) {
        if (m.sources.empty())
            throw error(errc::invalid_argument,
                        "parameter '" + m.name + "' is neither loaded, tied nor created",
                        error_context{.file = {}, .tensor = m.name});
        return locate(m.sources);
    }
    template <class Names>
    std::optional<std::vector<located_tensor>> locate(const Names& names) {
        std::vector<located_tensor> located;
        bool absent = false;
        for (const auto& src : names) {
            if (auto t = ckpt_.find(src))
                located.push_back(*t);
            else {
                missing_.emplace_back(src);
                absent = true;
            }
        }
        if (absent) return std::nullopt;
        return located;
    }

    // Shape checks: the sources agree on a dtype, and the layout accepts their shapes.
    // (`shapes`, when given, replace the sources' own: stacked experts' slabs.)
    [[nodiscard]] slice_result slice_sources(const parameter_meta& m,
                                             std::span<const located_tensor> located,
                                             std::span<const shape> shapes = {}) const {
        const dtype src_dtype = located.front().tensor.dtype();
        std::vector<shape> own;
        for (const auto& l : located) {
            if (l.tensor.dtype() != src_dtype)
                throw error(errc::invalid_argument,
                            "parameter '" + m.name + "': its sources have different dtypes (" +
                                std::string(name(src_dtype)) + " and " +
                                std::string(name(l.tensor.dtype())) + ")",
                            error_context{.file = {}, .tensor = m.name});
            own.push_back(l.tensor.shape());
        }
        return slice_parameter_at(m, shapes.empty() ? std::span<const shape>(own) : shapes);
    }

    // An expert's parameter (and each expert's slab of stacked experts) is cut by its expert
    // group's ways at the rank's place in the group; every other parameter by the world at
    // the rank.
    [[nodiscard]] slice_result slice_parameter_at(const parameter_meta& m,
                                                  std::span<const shape> shapes) const {
        if (!m.expert && !m.stacked_experts)
            return slice_parameter(m, shapes, ctx_.world, ctx_.rank);
        try {
            return slice_parameter(m, shapes, expert_rank_.ways, expert_rank_.position);
        } catch (const error& e) {
            const std::string which =
                m.expert ? "expert " + std::to_string(*m.expert) : std::string("each expert");
            throw error(e.code(),
                        e.message() + " (" + which + " is cut the " +
                            std::to_string(expert_rank_.ways) +
                            " tensor-parallel ways of its expert group: world " +
                            std::to_string(ctx_.world) + " over " +
                            std::to_string(ctx_.experts.ep) + " expert groups)",
                        error_context{.file = {}, .tensor = m.name});
        }
    }

    // The destination a parameter's slice fills (dtype chosen and checked, bytes counted).
    // (A dequantized weight's conversion is checked once its companions are known.)
    [[nodiscard]] plan_destination destination(const parameter_meta& m, const slice_result& r,
                                               dtype source, dtype target,
                                               std::string_view source_note,
                                               bool dequantized = false) const {
        if (!dequantized && !can_convert(source, target))
            throw error(errc::unsupported_conversion,
                        "parameter '" + m.name + "'" + std::string(source_note) + ": " +
                            detail::unsupported_conversion_message(source, target),
                        error_context{.file = {}, .tensor = m.name});
        plan_destination d;
        d.name = m.name;
        d.expert = m.expert;
        d.source_dtype = source;
        d.dtype = target;
        d.local = r.local;
        d.global = r.global;
        d.layout = m.layout;
        d.device = o_.device;
        d.bytes = p_.tensor_bytes(d.dtype, d.local, m.name);
        return d;
    }

    // Op emission: a copy op per box of the slice map, a zero op per padding region.
    void emit_ops(const parameter_meta& m, const slice_result& r,
                  std::span<const located_tensor> located, const plan_destination& d,
                  std::uint32_t di, const detail::piece_offsets& at = {}) {
        const error_context ctx_m{.file = {}, .tensor = m.name};
        const std::uint64_t dbits = bit_size(d.dtype);
        for (copy_box b : r.map) {
            b.src_offset += at.source[b.source];
            b.dst_offset += at.destination;
            emit_copy(m, b, located, d, di);
        }
        for (std::size_t z = 0; z < r.map.zero_count(); ++z) {
            const zero_box& zb = r.map.zero(z);
            copy_op op;
            op.kind = copy_kind::zero;
            op.src_dtype = op.dst_dtype = d.dtype;
            op.destination = di;
            const copy_box as_box{0,
                                  0,
                                  zb.rows,
                                  zb.row_elems,
                                  zb.row_elems,
                                  zb.dst_offset + at.destination,
                                  zb.dst_row_stride};
            if (!to_bytes(as_box, dbits, dbits, op.box))
                throw error(errc::invalid_layout,
                            "parameter '" + m.name + "': its padding does not fall on bytes",
                            ctx_m);
            p_.ops_.push_back(op);
        }
    }

    // The copy op of one box (in elements) from located[b.source] into destination di.
    void emit_copy(const parameter_meta& m, const copy_box& b,
                   std::span<const located_tensor> located, const plan_destination& d,
                   std::uint32_t di) {
        copy_op op;
        op.kind = copy_kind::copy;
        const located_tensor& l = located[b.source];
        op.file = static_cast<std::uint32_t>(l.file - ckpt_.files().data());
        op.file_offset = l.tensor.file_begin();
        op.src_dtype = d.source_dtype;
        op.dst_dtype = d.dtype;
        op.destination = di;
        if (!to_bytes(b, bit_size(d.source_dtype), bit_size(d.dtype), op.box))
            throw error(errc::invalid_layout,
                        "parameter '" + m.name + "': the slice " + to_string(b) +
                            " does not fall on byte boundaries for " +
                            std::string(name(d.source_dtype)),
                        error_context{.file = {}, .tensor = m.name});
        p_.ops_.push_back(op);
    }

    void add_loaded(const parameter_meta& meta) {
        const std::optional<parameter_meta> renamed = stored_weight_form(meta);
        const auto located = locate_sources(renamed ? *renamed : meta);
        if (!located) return;
        const std::optional<parameter_meta> whole = flattened_form(meta, *located);
        const parameter_meta& m = whole ? *whole : meta;
        const parameter_meta& as_stored = renamed ? *renamed : m;
        const weight_cut cut = cut_weight(as_stored, *located);
        const dtype stored = located->front().tensor.dtype();
        const std::optional<dtype> deq = whole ? std::nullopt : dequant_target(m, m.sources);
        // Dequantized: the values, under the schema's name; else the stored elements.
        const slice_result& read = deq ? cut.values : cut.stored;
        const parameter_meta& as_read = deq ? m : as_stored;
        plan_destination d =
            deq ? destination(m, cut.values, values_dtype(m, stored, cut.storage), *deq, "", true)
                : destination(as_stored, cut.stored, stored,
                              target_dtype(m.name, m.dtype_override, stored), "");
        d.sources = as_stored.sources;
        if (deq)
            d.dequant.emplace();
        else
            d.storage = cut.storage;
        d.schema_index = schema_index_of(meta);
        const auto di = static_cast<std::uint32_t>(p_.destinations_.size());
        if (deq && cut.storage.transposed)
            emit_transposed(m, cut, *located, d, di);
        else
            emit_ops(as_read, read, *located, d, di);
        index_.emplace(meta.name, di);  // a view: of the schema's name, not of a copy's
        p_.destinations_.push_back(std::move(d));
        if (renamed)
            for (const auto& l : *located) claimed_.emplace(l.tensor.name());
        add_companions(m, cut.values, cut.value_shapes, di);
    }

    // The float dtype a quantized weight is dequantized into in the copy, or nullopt where it
    // loads as stored: its scheme dequantizes, the checkpoint has its scales (of its sources
    // `names`), and the dtype asked of it (per parameter, else the policy's) is another than
    // its own.
    template <class Names>
    [[nodiscard]] std::optional<dtype> dequant_target(const parameter_meta& m,
                                                      const Names& names) const {
        if (!scheme_ || !scheme_->dequant.supported()) return std::nullopt;
        std::optional<dtype> asked = named_dtype(m.name, m.dtype_override);
        if (!asked) asked = o_.dtype.asked(o_.device.kind == device_kind::cuda);
        if (!asked || !converted_by_policy(*asked)) return std::nullopt;
        for (const std::string_view suffix : scheme_->dequant.scales)
            if (!suffix.empty() && companions_of(m, names, suffix)) return asked;
        return std::nullopt;
    }

    // The dtype of a dequantized weight's values: as stored, or, packed, the scheme's.
    // (An integer scheme's packed codes: U4 or U8, of config.json's bits.)
    [[nodiscard]] dtype values_dtype(const parameter_meta& m, dtype stored,
                                     const companion_grid& storage) const {
        if (stored_as_values(storage)) return stored;
        const std::uint64_t bits = config_->quantization->bits ? config_->quantization->bits : 4;
        if (scheme_->dequant.integer && (bits == 4 || bits == 8))
            return bits == 4 ? dtype::u4 : dtype::u8;
        if (scheme_->dequant.integer)
            throw error(errc::unsupported_conversion,
                        "parameter '" + m.name + "' is stored in " + std::to_string(bits) +
                            "-bit codes by " + std::string(scheme_->name) +
                            ", which dequantize from 4 or 8 bits only; load it as stored",
                        error_context{.file = {}, .tensor = m.name});
        if (scheme_->dequant.packed_values != dtype::u8) return scheme_->dequant.packed_values;
        throw error(errc::unsupported_conversion,
                    "parameter '" + m.name + "' is stored packed (" + to_string(storage) + ") by " +
                        std::string(scheme_->name) + ", whose values no conversion reads",
                    error_context{.file = {}, .tensor = m.name});
    }

    // A weight the scheme stores flattened (bitsandbytes 4-bit; the plan is of world 1): the
    // parameter held whole, as stored; nullopt for any other. One that joins several tensors
    // (fused q/k/v, gate/up) is refused: each has its own quantization state.
    [[nodiscard]] std::optional<parameter_meta> flattened_form(
        const parameter_meta& m, std::span<const located_tensor> located) const {
        if (!scheme_ || !is_flattened_weight(*scheme_, located.front().tensor.name(),
                                             located.front().tensor.dtype()))
            return std::nullopt;
        if (located.size() > 1 || m.stacked_experts)
            throw error(errc::quantized_checkpoint,
                        "parameter '" + m.name + "' joins " + std::to_string(located.size()) +
                            " tensors stored flattened by " + std::string(scheme_->name) +
                            ", each with a quantization state of its own: they load as stored, "
                            "unfused (without fuse_qkv, fuse_gate_up, fuse_experts)",
                        error_context{.file = {}, .tensor = m.name});
        parameter_meta whole = m;
        whole.layout = make_replicated();
        return whole;
    }

    // A weight the scheme stores under another suffix ("X.weight_packed"): the parameter
    // renamed so ("X.weight" -> "X.weight_packed"), its sources too, where the checkpoint
    // holds them so and not under their own names; nullopt otherwise.
    [[nodiscard]] std::optional<parameter_meta> stored_weight_form(const parameter_meta& m) const {
        if (!scheme_ || scheme_->stored_weight == "weight" || m.sources.empty())
            return std::nullopt;
        parameter_meta r = m;
        for (auto& src : r.sources) {
            std::string n = companion_name(src, scheme_->stored_weight);
            if (n.empty() || ckpt_.find(src) || !ckpt_.find(n)) return std::nullopt;
            src = std::move(n);
        }
        for (auto& src : r.expert_sources) src = companion_name(src, scheme_->stored_weight);
        if (std::string n = companion_name(m.name, scheme_->stored_weight); !n.empty())
            r.name = std::move(n);
        return r;
    }

    // A weight's cut: of its stored elements, and of its values (the same unless the scheme
    // packs several values in a stored element: then the layout cuts the values, and the
    // stored elements follow in whole elements as the storage grid says), with its sources'
    // shapes in values.
    struct weight_cut {
        companion_grid storage{};
        slice_result stored;
        slice_result values;
        std::vector<shape> value_shapes;
    };
    // (`slabs`, when given, replace the sources' own shapes: stacked experts' slabs.)
    [[nodiscard]] weight_cut cut_weight(const parameter_meta& m,
                                        std::span<const located_tensor> located,
                                        std::span<const shape> slabs = {}) const {
        weight_cut c;
        const dtype t = located.front().tensor.dtype();
        if (scheme_) c.storage = weight_storage_of(*scheme_, *config_->quantization, t);
        if (!slabs.empty())
            c.value_shapes.assign(slabs.begin(), slabs.end());
        else
            for (const auto& l : located) c.value_shapes.push_back(l.tensor.shape());
        if (stored_as_values(c.storage)) {
            c.stored = c.values = slice_sources(m, located, slabs);
            return c;
        }
        const std::vector<shape> stored = c.value_shapes;
        for (auto& s : c.value_shapes) {
            const auto v = weight_values_shape(c.storage, s);
            if (!v)
                throw error(errc::shape_mismatch,
                            "parameter '" + m.name + "' is stored packed (" + to_string(c.storage) +
                                " over its values [N, K]), but is " + s.to_string() +
                                " (a packed weight is 2-D)",
                            error_context{.file = {}, .tensor = m.name});
            s = *v;
        }
        c.values = slice_sources(m, located, c.value_shapes);
        const std::string follower = "packed storage of " + std::string(name(t));
        c.stored = companion_slice({.parameter = m.name,
                                    .weight = &c.values,
                                    .weight_sources = c.value_shapes,
                                    .companion_sources = stored,
                                    .grid = c.storage,
                                    .ways = ways_of(m),
                                    .follower = follower});
        return c;
    }

    // A packed weight stored transposed (GPTQ's qweight [K/p, N], p codes a word along K) read
    // as its values [N, K]: each row of each stored box (a word row: its run of N words) is a
    // box of the run's rows of the rank's values, one word (p values) a row, down the word's
    // p columns.
    void emit_transposed(const parameter_meta& m, const weight_cut& cut,
                         std::span<const located_tensor> located, const plan_destination& d,
                         std::uint32_t di) {
        const std::uint64_t p = cut.storage.cols.block;
        const std::uint64_t words = cut.stored.local.rank() == 2 ? cut.stored.local[1] : 0;
        const std::uint64_t k = d.local.rank() == 2 ? d.local[1] : 0;
        if (words == 0 || cut.stored.map.zero_count() != 0)
            throw error(errc::invalid_layout,
                        "parameter '" + m.name + "' is stored transposed, packed (" +
                            to_string(cut.storage) + "), and cut to " +
                            cut.stored.local.to_string() + ", which no dequantized copy reads",
                        error_context{.file = {}, .tensor = m.name});
        for (const copy_box& b : cut.stored.map)
            for (std::uint64_t i = 0; i < b.rows; ++i) {
                std::uint64_t src = b.src_offset + i * b.src_row_stride;
                std::uint64_t dst = b.dst_offset + i * b.dst_row_stride;
                // A run may span word rows where whole rows were merged into one.
                for (std::uint64_t left = b.row_elems; left != 0;) {
                    const std::uint64_t run = std::min(left, words - dst % words);
                    const copy_box v{.source = b.source,
                                     .src_offset = src * p,
                                     .rows = run,
                                     .row_elems = p,
                                     .src_row_stride = p,
                                     .dst_offset = (dst % words) * k + (dst / words) * p,
                                     .dst_row_stride = k};
                    emit_copy(m, v, located, d, di);
                    src += run;
                    dst += run;
                    left -= run;
                }
            }
    }

    // The ways m is cut: its expert group's for an expert's parameter (and each expert's slab
    // of stacked experts), else the world.
    [[nodiscard]] std::uint32_t ways_of(const parameter_meta& m) const noexcept {
        return m.expert || m.stacked_experts ? expert_rank_.ways : ctx_.world;
    }

    // The located companions of suffix `suffix` of the weight's sources `sources` (one each),
    // or nullopt where it has none; shape_mismatch where some sources have one and others not.
    template <class Names>
    [[nodiscard]] std::optional<std::vector<located_tensor>> companions_of(
        const parameter_meta& m, const Names& sources, std::string_view suffix) const {
        std::vector<located_tensor> found;
        std::vector<std::string> absent;
        for (const auto& src : sources) {
            const std::string n = companion_name(src, suffix);
            const auto t = n.empty() ? std::nullopt : ckpt_.find(n);
            if (t)
                found.push_back(*t);
            else
                absent.push_back(n.empty() ? std::string(src) + "'s " + std::string(suffix) : n);
        }
        if (found.empty()) return std::nullopt;
        if (!absent.empty())
            throw error(errc::missing_tensor,
                        "parameter '" + m.name + "' joins tensors of which some carry a " +
                            std::string(suffix) +
                            " and others not: " + detail::name_list(absent, 4) + " missing",
                        error_context{.file = {}, .tensor = m.name});
        return found;
    }

    // The grid the companions `spec` have over the weight's sources: one for all, the one the
    // scheme fixes or read from the stored shapes against its block (a whole companion: every
    // rank holds it as stored); shape_mismatch for a companion off it. `cshapes`: the
    // companions' shapes (of stacked experts, their slabs), one a weight source.
    [[nodiscard]] companion_grid grid_of(const parameter_meta& m, const companion_spec& spec,
                                         std::span<const shape> weights,
                                         std::span<const located_tensor> companions,
                                         std::span<const shape> cshapes) const {
        const quantization_config& q = *config_->quantization;
        const std::optional<companion_grid> fixed =
            spec.grid ? std::optional<companion_grid>(spec.grid(q)) : std::nullopt;
        const scale_block b = scale_block_of(*scheme_, spec, q);
        std::optional<companion_grid> grid;
        for (std::size_t k = 0; k < weights.size(); ++k) {
            const shape& w = weights[k];
            const shape& c = cshapes[k];
            std::optional<companion_grid> g;
            if (fixed) {
                if (companion_sources_fit(*fixed, {&w, 1}, {&c, 1})) g = fixed;
            } else {
                g = infer_companion_grid(w, c, b.rows, b.cols);
                for (const scale_block other :
                     spec.block ? std::span<const scale_block>{} : scheme_->other_blocks)
                    if (!g) g = infer_companion_grid(w, c, other.rows, other.cols);
            }
            if (!g || (grid && *grid != *g))
                throw error(errc::shape_mismatch,
                            "parameter '" + m.name + "': the quantization companion '" +
                                std::string(companions[k].tensor.name()) + "' of shape " +
                                c.to_string() + " is no " + std::string(scheme_->name) + " " +
                                (fixed ? to_string(*fixed) : std::string("grid")) +
                                " over its weight of " + w.to_string() + " values" +
                                (!fixed && b.rows ? " (blocks of " + std::to_string(b.rows) +
                                                        " x " + std::to_string(b.cols) + ")"
                                                  : std::string()) +
                                (grid ? ", or not the grid of its other sources" : ""),
                            error_context{.file = {}, .tensor = m.name});
            grid = g;
        }
        return *grid;
    }

    // A quantized weight's companions (its scheme's scales where the checkpoint has them),
    // each a destination of its own cut as the weight in its grid's units, kept in its dtype.
    // `r` and `weights` are the weight's cut and its sources' shapes in values (of stacked
    // experts, `st`: each expert's slab's, the companions stacked as the weight is).
    void add_companions(const parameter_meta& m, const slice_result& r,
                        std::span<const shape> weights, std::uint32_t weight_at,
                        const detail::expert_stack* st = nullptr) {
        if (!scheme_) return;
        for (const companion_spec& spec : scheme_->companions) {
            const std::string_view suffix = spec.suffix;
            const auto found = st && st->gathered
                                   ? companions_of(m, held_sources(m, st->held), suffix)
                                   : companions_of(m, m.sources, suffix);
            if (!found) continue;
            const plan_destination& w = p_.destinations_[weight_at];
            const std::optional<convert_role> role = dequant_role(w, suffix);
            if (spec.refuses_cut && w.dequant) refuse_cut(m, spec, *found, "dequantized");
            if (w.dequant && !role) {  // not read by the conversion: left with the checkpoint
                for (const auto& l : *found) {
                    claimed_.emplace(l.tensor.name());
                    p_.ignored_.push_back({std::string(l.tensor.name()),
                                           "not needed once '" + w.name + "' is dequantized"});
                }
                continue;
            }
            if (!w.dequant && w.dtype != w.source_dtype)
                throw error(errc::unsupported_conversion,
                            "parameter '" + m.name + "' is quantized (" +
                                std::string(found->front().tensor.name()) + "): converting its " +
                                std::string(name(w.source_dtype)) + " values to " +
                                std::string(name(w.dtype)) +
                                " without its scales would be wrong; load it as stored",
                            error_context{.file = {}, .tensor = m.name});
            const std::vector<shape> cshapes =
                st ? slabs_of(m.name, *found, weights.size(), *st) : shapes_of(*found);
            const companion_grid g = grid_of(m, spec, weights, *found, cshapes);
            if (spec.refuses_cut && r.local != r.global)
                refuse_cut(m, spec, *found, "cut for " + std::to_string(ctx_.world) + " ranks");
            const slice_result rc = companion_slice({.parameter = w.name,
                                                     .weight = &r,
                                                     .weight_sources = weights,
                                                     .companion_sources = cshapes,
                                                     .grid = g,
                                                     .ways = ways_of(m),
                                                     .follower = suffix});
            const dtype stored = found->front().tensor.dtype();
            plan_destination d;
            d.name = companion_name(m.name, suffix);
            d.expert = m.expert;
            d.source_dtype = d.dtype = stored;
            d.local = rc.local;
            d.global = rc.global;
            d.layout = m.layout;
            d.device = o_.device;
            d.companion_of = weight_at;
            d.grid = g;
            d.consumed = role.has_value();
            d.schema_index = w.schema_index;
            for (const auto& l : *found) claimed_.emplace(l.tensor.name());
            if (st && st->gathered)
                for (const auto& t : m.expert_sources)
                    d.sources.push_back(companion_name(t, suffix));
            else
                for (const auto& l : *found) d.sources.emplace_back(l.tensor.name());
            if (st) stack(d, *st);
            d.bytes = p_.tensor_bytes(d.dtype, d.local, d.name);
            const auto di = static_cast<std::uint32_t>(p_.destinations_.size());
            if (st)
                emit_stacked(m, rc, *found, cshapes, d, di, *st);
            else
                emit_ops(m, rc, *found, d, di);
            p_.destinations_.push_back(std::move(d));
            if (role) take_dequant_input(m, weight_at, di, *role);
        }
        if (p_.destinations_[weight_at].dequant) finish_dequant(m, r, weight_at);
    }

    // The role companion `suffix` of a dequantized weight w plays in its conversion: its
    // block scales (the first of the scheme's scales the checkpoint has), its global scales;
    // nullopt for one the conversion does not read (and for a weight loaded as stored).
    [[nodiscard]] std::optional<convert_role> dequant_role(const plan_destination& w,
                                                           std::string_view suffix) const {
        if (!w.dequant) return std::nullopt;
        const dequantization& q = scheme_->dequant;
        if (suffix == q.global)
            return q.global_divides ? convert_role::global_divisors : convert_role::global_scales;
        if (!q.zeros.empty() && suffix == q.zeros) return convert_role::zeros;
        if (!q.group_index.empty() && suffix == q.group_index && config_->quantization->act_order)
            return convert_role::group_index;
        for (const std::string_view s : q.scales)
            if (!s.empty() && s == suffix && !w.dequant->scales) return convert_role::scales;
        return std::nullopt;
    }

    void take_dequant_input(const parameter_meta& m, std::uint32_t weight_at, std::uint32_t at,
                            convert_role role) {
        dequant_inputs& in = *p_.destinations_[weight_at].dequant;
        const plan_destination& c = p_.destinations_[at];
        // Every rank's whole grid along a dim is read through a group index only.
        if ((c.grid.rows.all || c.grid.cols.all) && !config_->quantization->act_order)
            throw error(errc::unsupported_conversion,
                        "parameter '" + m.name + "': its companion '" + c.name + "' is a " +
                            to_string(c.grid) + ", which no dequantizing conversion reads",
                        error_context{.file = {}, .tensor = m.name});
        switch (role) {
            case convert_role::scales: in.scales = at; break;
            case convert_role::zeros: in.zeros = at; break;
            case convert_role::group_index: in.group_index = at; break;
            default:
                in.global = at;
                in.global_divides = role == convert_role::global_divisors;
                break;
        }
    }

    // A dequantized weight once its companions are planned: its conversion looked up (or
    // refused, naming what it reads), the rows of its fused parts from its cut `r`.
    void finish_dequant(const parameter_meta& m, const slice_result& r, std::uint32_t weight_at) {
        plan_destination& w = p_.destinations_[weight_at];
        dequant_inputs& in = *w.dequant;
        if (!in.scales)
            throw error(errc::quantized_checkpoint,
                        "parameter '" + m.name + "' is dequantized, but no scale of it was planned",
                        error_context{.file = {}, .tensor = m.name});
        finish_integer(m, in);
        const std::vector<convert_input> inputs = dequant_conversion_inputs(p_.destinations_, w);
        if (!detail::find_dequantizing(inputs, w.dtype))
            throw error(errc::unsupported_conversion,
                        "parameter '" + m.name + "': cannot dequantize " +
                            detail::inputs_text(inputs) + " to " + std::string(name(w.dtype)) +
                            " (supported: " + detail::dequantizing_conversions_text() + ")",
                        error_context{.file = {}, .tensor = m.name});
        const std::uint64_t cols = r.local.rank() == 2 ? r.local[1] : 0;
        std::vector<std::pair<std::uint64_t, std::uint32_t>> rows;
        for (const copy_box& b : r.map)
            if (cols != 0) rows.emplace_back(b.dst_offset / cols, b.source);
        std::sort(rows.begin(), rows.end());
        in.part_rows.clear();
        for (const auto& pr : rows)
            if (in.part_rows.empty() || in.part_rows.back().second != pr.second)
                in.part_rows.push_back(pr);
        if (in.part_rows.empty()) in.part_rows.push_back({0, 0});
    }

    // An integer weight's zero point where it has none, its zero points' adjustment, the factor
    // of its values; its group index where act order needs one.
    void finish_integer(const parameter_meta& m, dequant_inputs& in) const {
        const dequantization& q = scheme_->dequant;
        if (!q.integer) return;
        const quantization_config& c = *config_->quantization;
        auto refuse = [&](const std::string& why) {
            throw error(errc::quantized_checkpoint,
                        "parameter '" + m.name + "' is dequantized, but " + why,
                        error_context{.file = {}, .tensor = m.name});
        };
        if (!in.zeros && !q.zero_without)
            refuse("the checkpoint has no '" + std::string(q.zeros) + "' for it (" +
                   std::string(scheme_->name) + " stores zero points beside every weight)");
        if (!in.group_index && c.act_order && !q.group_index.empty())
            refuse("the checkpoint has no '" + std::string(q.group_index) +
                   "' for it, which act order numbers its groups by");
        if (!in.zeros) in.zero = q.zero_without(c);
        in.zero_adjust = q.zero_adjust ? q.zero_adjust(c) : 0;
        in.post = q.post_scale;
    }

    // A weight whose companions say it may not be cut (bitsandbytes' tiled weight_format), cut.
    // (`what`: "cut for 2 ranks", "dequantized".)
    void refuse_cut(const parameter_meta& m, const companion_spec& spec,
                    std::span<const located_tensor> found, const std::string& what) const {
        for (const auto& l : found)
            if (const std::string why = spec.refuses_cut(l.tensor.bytes(), l.tensor.dtype());
                !why.empty())
                throw error(errc::quantized_checkpoint,
                            "parameter '" + m.name + "' is " + what + ", but " + why + " ('" +
                                std::string(l.tensor.name()) + "')",
                            error_context{.file = {}, .tensor = m.name});
    }

    // The shapes of located tensors.
    [[nodiscard]] static std::vector<shape> shapes_of(std::span<const located_tensor> located) {
        std::vector<shape> out;
        for (const auto& l : located) out.push_back(l.tensor.shape());
        return out;
    }

    // Gathered experts: the sources of the experts the rank holds (in its order), k an expert.
    [[nodiscard]] static std::vector<std::string_view> held_sources(
        const parameter_meta& m, std::span<const std::uint64_t> held) {
        const std::size_t k = m.expert_sources.size();
        std::vector<std::string_view> names;
        for (const std::uint64_t e : held)
            for (std::size_t i = 0; i < k; ++i) names.push_back(m.sources[e * k + i]);
        return names;
    }

    // The slabs of stacked tensors (`located`, k a piece; a weight's or its companions'):
    // stacked in the sources, dim 0 must hold the layer's experts and the slab is the rest;
    // gathered, every held expert's k tensors must have the first's shapes, the slabs.
    [[nodiscard]] std::vector<shape> slabs_of(const std::string& name,
                                              std::span<const located_tensor> located,
                                              std::size_t k, const detail::expert_stack& st) const {
        const error_context ctx{.file = {}, .tensor = name};
        std::vector<shape> slabs;
        for (std::size_t i = 0; i < k && i < located.size(); ++i) {
            const shape& s = located[i].tensor.shape();
            if (!st.gathered && (s.rank() == 0 || s[0] != st.experts))
                throw error(errc::shape_mismatch,
                            "parameter '" + name + "' stacks the layer's " +
                                std::to_string(st.experts) + " experts on dim 0, but its source '" +
                                std::string(located[i].tensor.name()) + "' is " + s.to_string(),
                            ctx);
            slabs.push_back(st.gathered ? s : shape::from(s.dims().subspan(1)));
        }
        for (std::size_t j = k; st.gathered && j < located.size(); ++j) {
            const shape& s = located[j].tensor.shape();
            if (s != slabs[j % k])
                throw error(errc::shape_mismatch,
                            "parameter '" + name +
                                "' stacks the layer's experts, which must agree in shape: '" +
                                std::string(located[j].tensor.name()) + "' is " + s.to_string() +
                                ", '" + std::string(located[j % k].tensor.name()) + "' " +
                                slabs[j % k].to_string(),
                            ctx);
        }
        return slabs;
    }

    // A destination of one expert's slab (its local and global shapes) as the stack of the
    // rank's experts: [held, slab...] of [experts, slab...].
    static void stack(plan_destination& d, const detail::expert_stack& st) {
        auto stacked = [](std::uint64_t n, const shape& s) {
            shape out{n};
            for (const auto x : s.dims()) out.push_back(x);
            return out;
        };
        d.local = stacked(st.held.size(), d.local);
        d.global = stacked(st.experts, d.global);
        d.stacked_experts = st.experts;
        d.gathered_experts = st.gathered;
    }

    // The ops of stacked experts: the slab's cut `r` once per held expert, at its slab of the
    // destination, from its slab of the sources (`slabs`, their stored shapes: expert e's at e
    // slabs into dim 0) or, gathered, from its own tensors (located j·k .. j·k + k - 1).
    void emit_stacked(const parameter_meta& m, const slice_result& r,
                      std::span<const located_tensor> located, std::span<const shape> slabs,
                      const plan_destination& d, std::uint32_t di, const detail::expert_stack& st) {
        const std::uint64_t local_slab = r.local.element_count().value_or(0);
        const std::size_t k = slabs.size();
        for (std::size_t j = 0; j < st.held.size(); ++j) {
            detail::piece_offsets at;
            at.destination = j * local_slab;
            if (st.gathered) {
                emit_ops(m, r, located.subspan(j * k, k), d, di, at);
                continue;
            }
            for (std::size_t i = 0; i < k; ++i)
                at.source[i] = st.held[j] * slabs[i].element_count().value_or(0);
            emit_ops(m, r, located, d, di, at);
        }
    }

    // Stacked experts: the rank's experts (its group's, in expert order) stacked on dim 0, each
    // expert's slab cut within the group as the layout says; the other experts are not read.
    // The slabs lie in the sources' dim 0, or (gathered) are the held experts' own tensors. A
    // quantized weight is stacked as stored (packed, under its scheme's name), and its
    // companions are stacked the same way.
    void add_stacked(const parameter_meta& meta) {
        const auto held = p_.held_experts();
        if (held.empty())
            throw error(errc::invalid_argument,
                        "parameter '" + meta.name +
                            "' stacks the layer's experts, but the schema has none "
                            "(schema::set_experts)",
                        error_context{.file = {}, .tensor = meta.name});
        const detail::expert_stack st{held, s_.experts(), meta.gathers_experts()};
        const std::optional<parameter_meta> renamed = stored_weight_form(meta);
        const parameter_meta& m = renamed ? *renamed : meta;
        const auto located = st.gathered ? locate(held_sources(m, held)) : locate_sources(m);
        if (!located) return;
        (void)flattened_form(meta, *located);  // refuses stacking flattened weights
        const std::vector<shape> slabs = slabs_of(m.name, *located, m.layout_source_count(), st);
        const weight_cut cut = cut_weight(m, *located, slabs);
        const dtype stored = located->front().tensor.dtype();
        const std::optional<dtype> deq = st.gathered
                                             ? dequant_target(meta, held_sources(meta, held))
                                             : dequant_target(meta, meta.sources);
        if (deq && cut.storage.transposed)
            throw error(errc::unsupported_conversion,
                        "parameter '" + meta.name + "' stacks experts stored transposed (" +
                            to_string(cut.storage) + ", by " + std::string(scheme_->name) +
                            "), which are not dequantized stacked: load them one tensor an "
                            "expert (without fuse_experts), or as stored",
                        error_context{.file = {}, .tensor = meta.name});
        plan_destination d =
            deq ? destination(meta, cut.values, values_dtype(meta, stored, cut.storage), *deq, "",
                              true)
                : destination(m, cut.stored, stored,
                              target_dtype(meta.name, meta.dtype_override, stored), "");
        stack(d, st);
        d.bytes = p_.tensor_bytes(d.dtype, d.local, d.name);
        d.sources = st.gathered ? m.expert_sources : m.sources;
        if (deq)
            d.dequant.emplace();
        else
            d.storage = cut.storage;
        d.schema_index = schema_index_of(meta);
        const auto di = static_cast<std::uint32_t>(p_.destinations_.size());
        if (deq)  // the values, each expert's slab of value_shapes
            emit_stacked(meta, cut.values, *located, cut.value_shapes, d, di, st);
        else
            emit_stacked(m, cut.stored, *located, slabs, d, di, st);
        index_.emplace(meta.name, di);
        p_.destinations_.push_back(std::move(d));
        if (renamed)
            for (const auto& l : *located) claimed_.emplace(l.tensor.name());
        add_companions(meta, cut.values, cut.value_shapes, di, &st);
    }

    // The global shape of a created parameter: given, or its checkpoint tensor's (unread).
    [[nodiscard]] shape created_shape(const parameter_meta& m) const {
        for (const auto& [n, sh] : o_.created_shapes)
            if (n == m.name) return sh;
        if (auto t = ckpt_.find(s_.names().to_checkpoint(m.name))) return t->tensor.shape();
        throw error(errc::invalid_argument,
                    "parameter '" + m.name + "' is created (init " +
                        std::string(to_string(m.init.kind)) +
                        ") but has no shape: give it in plan_options::created_shapes",
                    error_context{.file = {}, .tensor = m.name});
    }

    void add_created(const parameter_meta& m) {
        const shape global = created_shape(m);
        const slice_result r = slice_parameter_at(m, std::span<const shape>(&global, 1));
        const dtype as =
            config_ && config_->checkpoint_dtype ? *config_->checkpoint_dtype : dtype::f32;
        // init values are computed in f32
        plan_destination d = destination(
            m, r, dtype::f32, target_dtype(m.name, m.dtype_override, as), " (initialised in F32)");
        d.init = m.init;
        d.init_map = r.map;
        d.schema_index = schema_index_of(m);
        index_.emplace(m.name, static_cast<std::uint32_t>(p_.destinations_.size()));
        p_.destinations_.push_back(std::move(d));
        p_.initialised_.push_back(m.name);
    }

    load_plan& p_;
    const checkpoint& ckpt_;
    const schema& s_;
    parallel_context ctx_;
    const plan_options& o_;
    const model_config* config_;
    expert_rank expert_rank_;
    const quantization_scheme* scheme_;  // of config.json's quantization_config, if any
    std::unordered_map<std::string_view, std::uint32_t, detail::name_hash> index_{};
    std::vector<const parameter_meta*> tied_{};
    std::vector<std::string> missing_{};
    // The layers outside this pipeline stage ("model.layers.3"), once asked.
    std::optional<std::unordered_set<std::string>> skipped_layers_{};
    // The companions planned (checkpoint names): read, not unexpected.
    std::unordered_set<std::string, detail::name_hash, std::equal_to<>> claimed_{};
    // replicate_all's parameters own their meta here (index_ holds views of their names).
    std::vector<parameter_meta> fallback_{};
};

inline load_plan load_plan::build(const checkpoint& ckpt, const schema& s, parallel_context ctx,
                                  const plan_options& o, const model_config* config) {
    return build_from(ckpt, s, ctx, o, config, {});
}

inline load_plan load_plan::build_from(const checkpoint& ckpt, const schema& s,
                                       parallel_context ctx, const plan_options& o,
                                       const model_config* config, checked done) {
    if (ctx.world == 0 || ctx.rank >= ctx.world)
        throw error(errc::invalid_argument, "rank " + std::to_string(ctx.rank) + " of world " +
                                                std::to_string(ctx.world) +
                                                ": the rank must be below the world size");
    // A rank of an export holds that rank's cut already: any other rank is refused.
    if (!done.export_rank)
        if (const auto exported = read_export_metadata(ckpt))
            check_export_rank(*exported, ctx.rank, ctx.world, ckpt.root().string(), ctx.experts);
    check_expert_parallel(ctx.world, ctx.experts);
    check_expert_count(s.experts(), ctx.experts);
    if (config && !done.config) check_config(ckpt, *config, s.names()).throw_if_mismatch();
    load_plan p;
    p.ctx_ = ctx;
    p.experts_ = s.experts();
    p.held_experts_ = experts_of_group(expert_rank_of(ctx.rank, ctx.world, ctx.experts.ep).group,
                                       s.experts(), ctx.experts);
    p.device_ = o.device;
    for (const auto& f : ckpt.files()) {
        p.files_.push_back(f.path);
        p.versions_.push_back(f.view.version());
    }
    builder b(p, ckpt, s, ctx, o, config);
    b.refuse_quantized(done.export_rank);
    b.refuse_flattened_cut();
    b.add_parameters();
    b.add_unread_names();
    b.refuse_unclaimed_scales();
    b.add_ties();
    b.throw_if_incomplete();
    for (const auto& n : s.notes()) p.notes_.push_back(n);
    std::stable_sort(p.ops_.begin(), p.ops_.end(), [](const copy_op& a, const copy_op& b) {
        if (a.file != b.file) return a.file < b.file;  // zero ops (no_file) last
        return a.file_begin() < b.file_begin();
    });
    return p;
}

namespace detail {
// A plan's unexpected names: those of layers at or beyond num_hidden_layers say config.json's
// layer count is wrong (a mismatch when strict); the others are the schema's, not config.json's
// (a note).
inline void unexpected_as_mismatches(config_check& r, const load_plan& p, const model_config& c,
                                     const name_map& names, bool strict) {
    std::vector<std::string> beyond, other;
    for (const auto& n : p.unexpected()) {
        const auto l = std::string_view(n).starts_with(names.checkpoint_prefix)
                           ? layer_of(n)
                           : std::optional<layer_ref>();
        const bool past =
            l && l->container == r.layers.container && l->index >= c.num_hidden_layers;
        (past ? beyond : other).push_back(n);
    }
    if (!beyond.empty()) {
        std::string message =
            "config.json says " + std::to_string(c.num_hidden_layers) +
            ", but the checkpoint holds " + r.layers.to_string() +
            "; no parameter of the schema reads the layers beyond: " + name_list(beyond, 5);
        if (strict)
            r.add(
                {"num_hidden_layers", std::move(message), beyond.front(), errc::unexpected_tensor});
        else
            r.notes.push_back("num_hidden_layers: " + message);
    }
    if (!other.empty())
        r.notes.push_back(
            std::to_string(other.size()) + " checkpoint tensor(s) no parameter of the '" +
            c.model_type +
            "' schema reads (a plan refuses them unless lenient): " + name_list(other, 5));
}
}  // namespace detail

// config.json's model_config against the checkpoint, as `safeshard verify` reports it:
// check_config (the checks every plan makes first), then, for a registered model_type, the
// plan of world 1 under `o` (the names the schema expects, the shapes its layouts accept;
// layers beyond num_hidden_layers are mismatches when o.strict, other names the schema lacks
// a note: they are not config.json's to explain). For an unregistered model_type only the
// generic fields are compared, and a note says the rest was not (the model_type itself is no
// mismatch). A rank of an export is cut already: its config.json describes the whole model,
// and a note says it is not compared. o.architecture, when set, replaces c.model_type.
[[nodiscard]] inline config_check verify_config(const checkpoint& ckpt, model_config c,
                                                plan_options o = {}) {
    if (!o.architecture.empty()) c.model_type = o.architecture;
    if (read_export_metadata(ckpt)) {
        config_check r;
        r.model_type = c.model_type;
        r.file = ckpt.config_path().value_or(ckpt.root() / "config.json").string();
        r.notes.push_back(
            "a rank of an export: config.json describes the whole model, the "
            "tensors one rank's cut; they are not compared");
        return r;
    }
    const bool known = architecture_registered(c.model_type);
    o.schema = resolved_options(ckpt, o.schema);
    config_check r = check_config(ckpt, c, o.schema.names,
                                  known ? config_scope::architecture : config_scope::generic);
    if (!known) {
        r.notes.push_back("model_type '" + c.model_type +
                          "' is not registered: only num_hidden_layers, hidden_size and "
                          "vocab_size were compared with the tensors, not the rest");
        return r;
    }
    if (!r.ok()) return r;  // the schema is expanded only from a layer count the tensors hold
    const bool strict = o.strict;
    o.strict = false;  // unexpected names are reported below
    o.allow_quantized = true;
    try {
        const load_plan p = load_plan::build(ckpt, make_schema(c, o.schema), {0, 1}, o, &c);
        detail::unexpected_as_mismatches(r, p, c, o.schema.names, strict);
    } catch (const error& e) {
        if (e.code() == errc::io_error || e.code() == errc::interrupted) throw;
        r.add({{},
               e.message(),
               e.tensor(),
               e.code() == errc::invalid_argument ? errc::invalid_config : e.code()});
    }
    return r;
}

// The checkpoint's own config.json (nullopt without one).
[[nodiscard]] inline std::optional<config_check> verify_config(const checkpoint& ckpt,
                                                               const plan_options& o = {}) {
    const auto cfg = ckpt.load_config();
    if (!cfg) return std::nullopt;
    return verify_config(ckpt, cfg->config(), o);
}

}  // namespace safeshard
