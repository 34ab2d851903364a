// bitsandbytes (quant_method "bitsandbytes"; transformers' bnb integration, bitsandbytes'
// nn/modules.py; vLLM's bitsandbytes_loader.py), in its two forms:
//  - 8-bit (load_in_8bit, LLM.int8()): `weight` I8 [N, K] as it is, `SCB` F32 [N] (one absmax a
//    row: grid<1,*>) and `weight_format` U8 scalar (the layout of the I8 values:
//    LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING, 0 = "row"; 1-3 = col32, col_turing, col_ampere, tiled
//    layouts of older releases). A row-major weight is cut as its architecture says, SCB with
//    its rows; a tiled one is held whole only (its rows are not contiguous). Dequantized
//    (bitsandbytes' int8_vectorwise_dequant): w = weight x SCB[n] x 7.874015718698502e-3 (1/127
//    in F32), the products in that order; a tiled one is not;
//  - 4-bit (load_in_4bit, NF4 / FP4): `weight` U8 [N·K/2, 1] (the values flattened, two a
//    byte), and beside it `weight.absmax`, `weight.quant_map`, `weight.nested_absmax`,
//    `weight.nested_quant_map` and `weight.quant_state.bitsandbytes__nf4` (or `__fp4`: the
//    state as JSON bytes), one state over the whole flattened weight. No part of a weight has a
//    state of its own: the checkpoint loads at world 1 only, every tensor whole and as stored
//    (vLLM refuses pre-quantized bitsandbytes with tensor parallelism for the same reason).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "safeshard/shard/quantization/scheme.hpp"

namespace safeshard {

// Why an 8-bit weight of this weight_format may not be cut: empty for row-major (0).
[[nodiscard]] inline std::string bitsandbytes_format_refuses_cut(std::span<const std::byte> stored,
                                                                 dtype t) {
    if (stored.size() != 1 || (t != dtype::u8 && t != dtype::i8))
        return "its weight_format is no one-byte scalar (bitsandbytes writes torch.uint8)";
    const auto v = std::to_integer<unsigned>(stored[0]);
    if (v == 0) return {};
    constexpr std::array<std::string_view, 4> names = {"row", "col32", "col_turing", "col_ampere"};
    return "its weight_format is " + std::to_string(v) + " (" +
           std::string(v < names.size() ? names[v] : "unknown") +
           "), a tiled layout whose rows are not contiguous; only row-major (0) 8-bit weights "
           "are cut or dequantized: load it as stored at world 1, or save it again with a "
           "current bitsandbytes";
}

inline constexpr std::array<companion_spec, 2> bitsandbytes_8bit_companions = {
    {{.suffix = "SCB"},
     {.suffix = "weight_format",
      .grid = held_whole,
      .refuses_cut = bitsandbytes_format_refuses_cut}}};

inline constexpr quantization_scheme bitsandbytes_8bit_scheme{
    .name = "bitsandbytes 8-bit",
    .matches =
        [](const quantization_config& q) {
            return q.quant_method == "bitsandbytes" && q.bits == 8;
        },
    .companions = bitsandbytes_8bit_companions,
    .dequant = {.scales = {"SCB"},
                .integer = true,
                .zero_without = [](const quantization_config&) -> std::int32_t { return 0; },
                .post_scale = 7.874015718698502e-3f}};

inline constexpr std::array<companion_spec, 6> bitsandbytes_4bit_companions = {
    {{.suffix = "weight.absmax", .grid = held_whole},
     {.suffix = "weight.quant_map", .grid = held_whole},
     {.suffix = "weight.nested_absmax", .grid = held_whole},
     {.suffix = "weight.nested_quant_map", .grid = held_whole},
     {.suffix = "weight.quant_state.bitsandbytes__nf4", .grid = held_whole},
     {.suffix = "weight.quant_state.bitsandbytes__fp4", .grid = held_whole}}};

inline constexpr quantization_scheme bitsandbytes_4bit_scheme{
    .name = "bitsandbytes 4-bit",
    .matches =
        [](const quantization_config& q) {
            return q.quant_method == "bitsandbytes" && q.bits == 4;
        },
    .companions = bitsandbytes_4bit_companions,
    .packed_dtype = dtype::u8,
    .flattened = true};

}  // namespace safeshard
