// A quantization scheme, as far as a cut needs it: which config.json quantization_config it
// is, the companion tensors each quantized weight may carry ("X.weight" ->
// "X.weight_scale_inv"), whose grid over the weight (shard/companion.hpp) the stored shapes
// and the scheme's block say, and how its weights are stored (packed values, their name). Each
// scheme is one header of this folder and one line of `quantization_schemes` (schemes.hpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/model_config.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/companion.hpp"

namespace safeshard {

// A scale grid's block over its weight, in the weight's values (not its stored elements);
// 0: none declared (the grid is then per tensor or per channel, read from the shapes).
struct scale_block {
    std::uint64_t rows = 0;
    std::uint64_t cols = 0;
};

// A companion a quantized weight "X.weight" may carry: "X.<suffix>", its grid over the
// weight's values either fixed by the scheme (`grid`: GPTQ's and AWQ's transposed tensors;
// grid<*,*>: a tensor of any shape every rank holds as stored, compressed-tensors'
// weight_shape) or read from the stored shapes against `block` (nullptr: the scheme's).
// `refuses_cut`: why a weight whose companion holds these stored bytes may not be cut (empty:
// it may; bitsandbytes' weight_format other than row-major); nullptr: any may.
struct companion_spec {
    std::string_view suffix{};
    scale_block (*block)(const quantization_config&) = nullptr;
    companion_grid (*grid)(const quantization_config&) = nullptr;
    std::string (*refuses_cut)(std::span<const std::byte> stored, dtype t) = nullptr;
};

// How a weight of a scheme dequantizes (load/convert.hpp's dequantizing conversions): the
// companion (by suffix, the first of `scales` the checkpoint has for it) that scales each block
// of its values, the one (`global`, where the checkpoint has it) that scales the whole tensor,
// each fused part, multiplying the block scales or (`global_divides`) dividing them; a weight
// stored packed in the scheme's packed_dtype holds `packed_values` (F4: two E2M1 a byte, low
// nibble first). U8 scales are E8M0 (the microscaling formats'). Its other companions (the
// activations' input_scale) are not needed once dequantized. No scales: the scheme's weights
// load as stored only.
//
// An `integer` scheme's weights are w = (q - z) x s x `post_scale`: q a value's stored code
// (packed: unsigned, of config.json's bits, U4 or U8; as stored: I8 signed), z its group's
// zero point, read from the `zeros` companion (packed along N as the values are along K) plus
// `zero_adjust`, or `zero_without` where the checkpoint has none (nullptr: it must have them);
// under act order the group of each value's column is read from `group_index` (without act
// order the groups are by place, as vLLM reads them, and the group index is not needed).
struct dequantization {
    std::array<std::string_view, 2> scales{};
    std::string_view global{};
    bool global_divides = false;
    dtype packed_values = dtype::u8;
    bool integer = false;
    std::string_view zeros{};
    std::string_view group_index{};
    std::int32_t (*zero_adjust)(const quantization_config&) = nullptr;
    std::int32_t (*zero_without)(const quantization_config&) = nullptr;
    float post_scale = 1.0f;

    [[nodiscard]] constexpr bool supported() const noexcept { return !scales[0].empty(); }
};

struct quantization_scheme {
    std::string_view name{};  // as errors and README say it
    bool (*matches)(const quantization_config&) = nullptr;
    // The companions its weights carry where the checkpoint has them.
    std::span<const companion_spec> companions{};
    // The block of its scales' grid; nullptr: config.json's weight_block_size.
    scale_block (*block)(const quantization_config&) = nullptr;
    // Other blocks a weight's scales may have, tried in order where `block`'s grid does not
    // fit the stored shapes (ModelOpt MIXED_PRECISION's MXFP8 layers, {1, 32}, beside its
    // NVFP4 ones, {1, 16}).
    std::span<const scale_block> other_blocks{};
    // Packed weights: a weight stored in `packed_dtype` covers its values [N, K] as `storage`'s
    // grid says (grid<1,8>: eight values a stored element along K, low bits first; ^T: stored
    // [K-grid, N-grid]); nullptr: stored as its values.
    dtype packed_dtype = dtype::u8;
    companion_grid (*storage)(const quantization_config&) = nullptr;
    // The weight's own suffix in the checkpoint where it is not "weight" (compressed-tensors'
    // packed forms: "X.weight_packed"; GPTQ's and AWQ's "X.qweight"); the plan names it so too.
    std::string_view stored_weight = "weight";
    // Tensors the scheme adds beside its weights that no weight carries, each held whole by
    // every rank as stored: "X.<suffix>" (the KV cache's scales).
    std::span<const std::string_view> whole_tensors{};
    // Weights stored flattened in `packed_dtype`, each with a quantization state of its own
    // over the whole weight (bitsandbytes 4-bit: [N·K/2, 1]): no part of one has a state, so
    // they are held whole, as stored, and the checkpoint loads at world 1 only.
    bool flattened = false;
    // How its weights dequantize in the copy, where they do.
    dequantization dequant{};
};

// Whether checkpoint name n is "X.<suffix>" (some X).
[[nodiscard]] constexpr bool has_name_suffix(std::string_view n, std::string_view suffix) noexcept {
    return n.size() > suffix.size() + 1 && n.ends_with(suffix) &&
           n[n.size() - suffix.size() - 1] == '.';
}

// Whether checkpoint name n is a weight scheme s stores under its own suffix
// ("X.weight_packed", "X.qweight").
[[nodiscard]] constexpr bool is_stored_weight(const quantization_scheme& s,
                                              std::string_view n) noexcept {
    return s.stored_weight != "weight" && has_name_suffix(n, s.stored_weight);
}

// Whether scheme s stores the weight of checkpoint name n, in dtype t, flattened.
[[nodiscard]] inline bool is_flattened_weight(const quantization_scheme& s, std::string_view n,
                                              dtype t) noexcept {
    return s.flattened && t == s.packed_dtype && n.ends_with(".weight");
}

// Whether q is ModelOpt's (quant_method "modelopt", or vLLM's "modelopt_fp4" spelling) of
// quant_algo `algo` (parsed upper case).
[[nodiscard]] inline bool is_modelopt(const quantization_config& q, std::string_view algo) {
    return q.quant_method.starts_with("modelopt") && q.quant_algo == algo;
}

// The grid of a companion every rank holds as stored, whatever its shape (grid<*,*>).
[[nodiscard]] constexpr companion_grid held_whole(const quantization_config&) noexcept {
    return {companion_dim{0}, companion_dim{0}};
}

// The KV cache's scales, one scalar each, beside the attention's weights: ModelOpt's
// "X.k_proj.k_scale" and "X.v_proj.v_scale", compressed-tensors' "X.self_attn.k_scale" and
// "X.self_attn.v_scale" (vLLM's maybe_remap_kv_scale_name reads both); every rank holds them.
inline constexpr std::array<std::string_view, 2> kv_cache_scales = {"k_scale", "v_scale"};

// Whether checkpoint name n is one of scheme s's whole tensors ("X.<suffix>").
[[nodiscard]] inline bool is_whole_tensor(const quantization_scheme& s, std::string_view n) {
    for (const std::string_view suffix : s.whole_tensors)
        if (has_name_suffix(n, suffix)) return true;
    return false;
}

// The values an I32 word of a `bits`-bit integer weight holds (0 where bits does not divide
// 32; config.json's 4 where it says none).
[[nodiscard]] constexpr std::uint64_t values_per_word(const quantization_config& q) noexcept {
    const std::uint64_t bits = q.bits ? q.bits : 4;
    return 32 % bits == 0 ? 32 / bits : 0;
}

// The K dim of an integer scheme's scales and zero points (GPTQ, AWQ, compressed-tensors
// pack-quantized): blocks of `group_size` values, held all on every rank under act order (the
// groups numbered by a g_idx, not by place), or one entry for the whole of K (per channel: 0).
[[nodiscard]] constexpr companion_dim group_dim(std::uint64_t group_size,
                                                bool act_order = false) noexcept {
    return group_size ? companion_dim{group_size, act_order} : companion_dim{0};
}

// The block of companion c's grid (of scheme s) for a checkpoint of quantization_config q.
[[nodiscard]] inline scale_block scale_block_of(const quantization_scheme& s,
                                                const companion_spec& c,
                                                const quantization_config& q) {
    if (c.block) return c.block(q);
    return s.block ? s.block(q) : scale_block{q.block_rows, q.block_cols};
}

// How a weight stored in dtype t covers its values: as scheme s's storage grid where s packs
// them in t, one value an element otherwise (grid<1,1>).
[[nodiscard]] inline companion_grid weight_storage_of(const quantization_scheme& s,
                                                      const quantization_config& q, dtype t) {
    return s.storage && t == s.packed_dtype ? s.storage(q) : companion_grid{};
}

// Whether a storage grid is the values as they are.
[[nodiscard]] constexpr bool stored_as_values(const companion_grid& g) noexcept {
    return g == companion_grid{};
}

// Whether q's values fill s's packed elements (num_bits divides the element's bits).
[[nodiscard]] inline bool packs_whole(const quantization_scheme& s,
                                      const quantization_config& q) noexcept {
    if (!s.storage) return true;
    const companion_grid g = s.storage(q);
    return !g.rows.whole() && !g.cols.whole();
}

// A checkpoint tensor of scheme s as its weight's values, for the shapes config.json implies:
// a weight stored under the scheme's own suffix ("X.weight_packed") named "X.weight", a packed
// one's shape in values ([N, K / p] -> [N, K], GPTQ's [K / p, N] -> [N, K]); nullopt for a
// tensor that is as it is.
[[nodiscard]] inline std::optional<std::pair<std::string, shape>> weight_values(
    const quantization_scheme& s, const quantization_config& q, std::string_view name, dtype t,
    const shape& stored) {
    const companion_grid storage = weight_storage_of(s, q, t);
    const bool renamed = is_stored_weight(s, name);
    if (stored_as_values(storage) && !renamed) return std::nullopt;
    std::string n(renamed ? name.substr(0, name.size() - s.stored_weight.size()) : name);
    if (renamed) n += "weight";
    shape values = stored;
    if (!stored_as_values(storage) && n.ends_with(".weight"))
        if (const auto v = weight_values_shape(storage, stored)) values = *v;
    return std::pair{std::move(n), values};
}

// A weight's companion of suffix `suffix`: "X.weight" -> "X.<suffix>"; the engine's fused
// experts' "X.w13_weight" -> "X.w13_<suffix>" (vLLM's names: w13_weight_scale_inv,
// w13_weight_packed, w13_qweight); a name ending in neither (transformers v5's stacked experts,
// "X.gate_up_proj") -> "X.gate_up_proj_<suffix without its leading weight_>"
// ("gate_up_proj_scale_inv", as its FP8 experts name their scales).
[[nodiscard]] inline std::string companion_name(std::string_view weight, std::string_view suffix) {
    constexpr std::string_view w = "weight";
    if (weight.ends_with(".weight") || weight.ends_with("_weight"))
        return std::string(weight.substr(0, weight.size() - w.size())) + std::string(suffix);
    if (weight.empty()) return {};
    if (suffix.starts_with("weight_")) suffix.remove_prefix(w.size() + 1);
    return std::string(weight) + "_" + std::string(suffix);
}

// The weight a companion name of scheme `s` belongs to ("X.weight_scale_inv" -> "X.weight"),
// the weight itself where s stores it under another suffix ("X.weight_packed" -> "X.weight"),
// or nullopt for a name of none of its suffixes.
[[nodiscard]] inline std::optional<std::string> companion_weight(const quantization_scheme& s,
                                                                 std::string_view n) {
    if (is_stored_weight(s, n))  // the weight itself, stored under its own suffix
        return std::string(n.substr(0, n.size() - s.stored_weight.size())) + "weight";
    for (const companion_spec& c : s.companions)
        if (has_name_suffix(n, c.suffix))
            return std::string(n.substr(0, n.size() - c.suffix.size())) + "weight";
    return std::nullopt;
}
}  // namespace safeshard
