// Compile-only: layouts, slice maps and a small schema are constant expressions.
#include "safeshard/shard/schema.hpp"
#include "safeshard/shard/slice.hpp"

namespace {
using namespace safeshard;

// Tags build layout values at compile time.
static_assert(split<1>::value.kind == layout_kind::split && split<1>::value.dim == 1);
static_assert(padded_split<0>::value.multiple == 64);
static_assert(fused<0, 14336, 14336>::value.part_count == 2);
static_assert(gqa_qkv<kv_interleaved>::make(32, 8, 128).convention == kv_interleaved);
static_assert(parse_kv_convention("interleaved") == kv_interleaved);

// split<0> 4096x4096 @ rank 1/4 -> rows [1024,2048): one box, in elements.
constexpr slice_result s01 = slice(split<0>::value, shape{4096, 4096}, 4, 1);
static_assert(s01.ok());
static_assert(s01.local == shape{1024, 4096});
static_assert(s01.map.size() == 1);
static_assert(s01.map[0] == copy_box{0, 1024 * 4096, 1, 1024 * 4096, 1024 * 4096, 0, 1024 * 4096});

// Row-parallel: a 2-D box.
constexpr slice_result s1 = slice(split<1>::value, shape{4096, 11008}, 4, 3);
static_assert(s1.map[0] == copy_box{0, 3 * 2752, 4096, 2752, 11008, 0, 2752});

// Failures are statuses in constant expressions too.
static_assert(slice(split<0>::value, shape{4097, 8}, 4, 0).status == layout_status::indivisible);
static_assert(slice(padded_split<0>::value, shape{100, 8}, 3, 0).status ==
              layout_status::padded_indivisible);

// Vocabulary padding: 32001 rows -> 8016 per rank at world 4, the last 63 rows zero.
constexpr slice_result pad = slice(padded_split<0>::value, shape{32001, 4096}, 4, 3);
static_assert(pad.local == shape{8016, 4096});
static_assert(pad.map.zero_count() == 1 && pad.map.zero(0).row_elems == 63 * 4096);

// optimum-neuron: H=32, KV=4, world=8, rank 4 -> q heads 4..7 and kv head 0.
constexpr auto neuron = [] {
    gqa_selection sel;
    (void)select_gqa_heads(gqa_qkv<kv_interleaved>::make(32, 4, 128), 8, 4, sel);
    return sel;
}();
static_assert(neuron.q.size() == 1 && neuron.q[0] == segment{0, 4, 4});
static_assert(neuron.kv.size() == 1 && neuron.kv[0] == segment{0, 0, 1});
// vLLM's contiguous convention on the same case: q heads 16..19, kv head 2.
constexpr auto vllm = [] {
    gqa_selection sel;
    (void)select_gqa_heads(gqa_qkv<kv_contiguous>::make(32, 4, 128), 8, 4, sel);
    return sel;
}();
static_assert(vllm.q[0] == segment{0, 16, 4} && vllm.kv[0] == segment{0, 2, 1});

// phi3-like fused qkv from one tensor: [q_r; k_r; v_r].
constexpr slice_result qkv = slice(gqa_qkv<>::make(4, 2, 3), shape{24, 5}, 2, 1);
static_assert(qkv.local == shape{12, 5} && qkv.map.size() == 3);
static_assert(qkv.map[1].src_offset == (12 + 3) * 5);

// Sub-byte: F4 rows of 3 elements are not byte-granular.
static_assert(!is_byte_granular(slice(split<1>::value, shape{4, 6}, 2, 1).map, 4));
static_assert(is_byte_granular(slice(split<1>::value, shape{4, 8}, 2, 1).map, 4));

// A small fully static schema.
constexpr auto tiny = make_static_schema(
    2,
    parameter_spec{.name = "model.embed_tokens.weight",
                   .layout = padded_split<0>::value,
                   .role = parameter_role::embedding},
    parameter_spec{.name = "model.layers.{i}.self_attn.q_proj.weight",
                   .layout = gqa_qkv<>::make(8, 2, 16, gqa_part::q)},
    parameter_spec{.name = "model.layers.{i}.self_attn.o_proj.weight",
                   .layout = gqa_o<>::make(8, 2, 16)},
    parameter_spec{.name = "model.layers.{i}.mlp.gate_up_proj.weight",
                   .layout = fused<0, 96, 96>::value,
                   .sources = {"model.layers.{i}.mlp.gate_proj.weight",
                               "model.layers.{i}.mlp.up_proj.weight"}},
    parameter_spec{.name = "model.layers.{i}.mlp.down_proj.weight", .layout = split<1>::value},
    parameter_spec{.name = "model.norm.weight",
                   .layout = replicated::value,
                   .role = parameter_role::final_norm},
    parameter_spec{.name = "lm_head.weight",
                   .layout = padded_split<0>::value,
                   .tied_to = "model.embed_tokens.weight",
                   .role = parameter_role::lm_head});
static_assert(tiny.expanded_size() == 1 + 2 * 4 + 2);
static_assert(tiny.find("model.layers.{i}.mlp.gate_up_proj.weight")->source_count() == 2);
static_assert(tiny.find("lm_head.weight")->tied_to == "model.embed_tokens.weight");
static_assert(tiny.find("nope") == nullptr);
constexpr std::array<shape, 2> gate_up{shape{96, 64}, shape{96, 64}};
static_assert(slice(tiny.find("model.layers.{i}.mlp.gate_up_proj.weight")->layout, gate_up, 4, 2)
                  .local == shape{48, 64});
static_assert(slice(tiny.find("model.layers.{i}.self_attn.o_proj.weight")->layout, shape{64, 128},
                    2, 1)
                  .map[0] == copy_box{0, 64, 64, 64, 128, 0, 64});
}  // namespace
