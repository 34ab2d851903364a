// Compile-only: the built-in architectures are constexpr tables; a layout and a rank's local
// shape follow from a constexpr config.
#include <cstdint>
#include <string_view>

#include "safeshard/shard/architectures/registry.hpp"
#include "safeshard/shard/architectures/table.hpp"
#include "safeshard/shard/expert_parallel.hpp"
#include "safeshard/shard/slice.hpp"

namespace {
using namespace safeshard;

// Llama-3-8B's sizes: H=32, KV=8, d=128, hidden 4096.
constexpr decoder_dims llama3_8b{.layers = 32,
                                 .hidden = 4096,
                                 .intermediate = 14336,
                                 .heads = 32,
                                 .kv_heads = 8,
                                 .head_dim = 128,
                                 .vocab = 128256};
constexpr layout_options defaults{};

constexpr const architecture_entry* q_proj =
    llama_table.find("model.layers.{i}.self_attn.q_proj.weight");
static_assert(q_proj->per_layer() && !q_proj->per_expert());
static_assert(llama_table.selects(*q_proj, defaults));
static_assert(!llama_table.selects(*q_proj, layout_options{.fuse_qkv = true}));
static_assert(!phi3_table.selects(*q_proj, defaults));  // phi3 stores qkv_proj fused

// q_proj's layout: gqa_qkv<kv_contiguous>, part q, the heads of config.json.
constexpr layout q_layout = layout_of(*q_proj, llama3_8b, defaults);
static_assert(q_layout == make_gqa_qkv(kv_contiguous, 32, 8, 128, gqa_part::q));
static_assert(q_layout.kind == layout_kind::gqa_qkv && q_layout.part == gqa_part::q);

// Its global shape from config.json, and rank 3 of 8's local shape: q heads 12..15.
constexpr auto q_global = global_shape(*q_proj, llama3_8b);
static_assert(q_global && *q_global == shape{4096, 4096});
constexpr slice_result q_rank3 = slice(q_layout, *q_global, 8, 3);
static_assert(q_rank3.ok());
static_assert(q_rank3.local == shape{512, 4096});
static_assert(q_rank3.map.size() == 1 && q_rank3.map[0].src_offset == 12 * 128 * 4096);

// k_proj at rank 3 of 8: the fourth of the 8 KV heads.
constexpr const architecture_entry* k_proj =
    llama_table.find("model.layers.{i}.self_attn.k_proj.weight");
constexpr slice_result k_rank3 =
    slice(layout_of(*k_proj, llama3_8b, defaults), *global_shape(*k_proj, llama3_8b), 8, 3);
static_assert(k_rank3.local == shape{128, 4096});

// The vocabulary pads to the options' multiple; the MLP's gate/up fuse under the option.
constexpr const architecture_entry* embed = llama_table.find("model.embed_tokens.weight");
static_assert(layout_of(*embed, llama3_8b, defaults) == make_padded_split(0, 64));
static_assert(slice(layout_of(*embed, llama3_8b, defaults), *global_shape(*embed, llama3_8b), 8, 3)
                  .local == shape{16032, 4096});
constexpr const architecture_entry* down =
    llama_table.find("model.layers.{i}.mlp.down_proj.weight");
static_assert(slice(layout_of(*down, llama3_8b, defaults), *global_shape(*down, llama3_8b), 8, 3)
                  .local == shape{4096, 1792});

// Features pick the variants: qwen2's biases, gemma's tied default.
constexpr const architecture_entry* q_bias =
    llama_table.find("model.layers.{i}.self_attn.q_proj.bias");
static_assert(!llama_table.selects(*q_bias, defaults) && qwen2_table.selects(*q_bias, defaults));
static_assert(gemma_table.tied_default && !llama_table.tied_default);
static_assert(builtin_architectures.size() == 16);
static_assert(builtin_architectures[0].model_type == "llama");

// Names: "{i}" and "{e}" stand for digits.
static_assert(matches("model.layers.{i}.self_attn.q_proj.weight",
                      "model.layers.17.self_attn.q_proj.weight"));
static_assert(!matches("model.layers.{i}.self_attn.q_proj.weight",
                       "model.layers.x.self_attn.q_proj.weight"));
static_assert(matches("model.layers.{i}.mlp.experts.{e}.down_proj.weight",
                      "model.layers.3.mlp.experts.60.down_proj.weight"));

// What the next issues fill: dense layers before first_k_dense_replace, mlp_only_layers, a
// sparse step, trailing layers; an expert entry with its second index.
constexpr std::uint64_t mlp_only[] = {5};
constexpr layer_plan moe{.layers = 8,
                         .experts = 64,
                         .first_k_dense_replace = 1,
                         .decoder_sparse_step = 2,
                         .mlp_only_layers = mlp_only,
                         .trailing_layers = 1};
static_assert(moe.applies(layer_rule::dense, 0));   // before first_k_dense_replace
static_assert(moe.applies(layer_rule::sparse, 1));  // (1 + 1) % 2 == 0
static_assert(moe.applies(layer_rule::dense, 2));   // off the step
static_assert(moe.applies(layer_rule::dense, 5));   // mlp_only_layers
static_assert(moe.applies(layer_rule::sparse, 7));
// A trailing (multi-token prediction) layer is a decoder layer with experts of its own.
static_assert(moe.applies(layer_rule::every, 8) && moe.applies(layer_rule::trailing, 8));
static_assert(moe.applies(layer_rule::sparse, 8) && !moe.applies(layer_rule::dense, 8));
static_assert(!moe.applies(layer_rule::trailing, 9) && !moe.applies(layer_rule::every, 9));
static_assert(!moe.applies(layer_rule::trailing, 7));
// DeepSeek's rule: experts from first_k_dense_replace on, every moe_layer_freq-th layer.
constexpr layer_plan every_other{
    .layers = 6, .experts = 4, .first_k_dense_replace = 1, .moe_layer_freq = 2};
static_assert(!every_other.sparse(0) && !every_other.sparse(1) && every_other.sparse(2) &&
              !every_other.sparse(3) && every_other.sparse(4));
constexpr architecture_entry expert_down{
    .name = "model.layers.{i}.mlp.experts.{e}.down_proj.weight",
    .layout = make_split(1),
    .shape = dims(config_dim::hidden, config_dim::intermediate),
    .layers = layer_rule::sparse};
static_assert(expert_down.per_layer() && expert_down.per_expert());

// DeepSeek-V3 (config.json of deepseek-ai/DeepSeek-V3, tests/data/moe): MLA's kv_b_proj in
// whole heads of qk_nope_head_dim + v_head_dim = 256 rows; rank 3 of 8 holds heads 48..63.
constexpr decoder_dims v3{.layers = 61,
                          .hidden = 7168,
                          .intermediate = 18432,
                          .heads = 128,
                          .kv_heads = 128,
                          .head_dim = 56,
                          .vocab = 129280,
                          .experts = 256,
                          .moe_intermediate = 2048,
                          .shared_intermediate = 2048,
                          .q_lora_rank = 1536,
                          .kv_lora_rank = 512,
                          .qk_nope_head_dim = 128,
                          .qk_rope_head_dim = 64,
                          .v_head_dim = 128};
// The table's entry of that name (the first the table's features select).
constexpr const architecture_entry& entry_of(const architecture_table& t, std::string_view name) {
    for (const auto& e : t.entries)
        if (e.name == name && t.selects(e, layout_options{}, feature_q_lora)) return e;
    throw "no such entry";  // not a constant expression: the static_assert fails to compile
}
constexpr const architecture_entry& kv_b_entry =
    entry_of(deepseek_v3_table, "model.layers.{i}.self_attn.kv_b_proj.weight");
constexpr const architecture_entry* kv_b = &kv_b_entry;
static_assert(layout_of(*kv_b, v3, defaults) == make_split(0, 256));
static_assert(*global_shape(*kv_b, v3) == shape{32768, 512});
constexpr slice_result kv_b_rank3 =
    slice(layout_of(*kv_b, v3, defaults), *global_shape(*kv_b, v3), 8, 3);
static_assert(kv_b_rank3.ok() && kv_b_rank3.local == shape{4096, 512});
static_assert(kv_b_rank3.map[0].src_offset == 3 * 4096 * 512);
// 128 heads do not divide among 6 ranks in whole heads, though 32768 rows would.
static_assert(!slice(make_split(0, 256), shape{32768, 512}, 6, 0).ok());
static_assert(slice(make_split(0), shape{32768, 512}, 8, 0).ok());

// Expert parallelism (shard/expert_parallel.hpp): 60 experts over 8 groups, linear: the
// first 60 % 8 = 4 groups hold 8, the others 7 (vLLM's determine_expert_map).
constexpr expert_parallel linear8{.ep = 8};
static_assert(expert_group_of(0, 60, linear8) == 0 && expert_group_of(7, 60, linear8) == 0);
static_assert(expert_group_of(8, 60, linear8) == 1 && expert_group_of(31, 60, linear8) == 3);
static_assert(expert_group_of(32, 60, linear8) == 4 && expert_group_of(59, 60, linear8) == 7);
constexpr expert_parallel rr4{.ep = 4, .placement = expert_placement::round_robin};
static_assert(expert_group_of(5, 60, rr4) == 1 && expert_group_of(59, 60, rr4) == 3);
// world 8, ep 2: groups of 4 ranks; rank 6 is in group 1 at place 2.
static_assert(expert_rank_of(6, 8, 2) == expert_rank{.group = 1, .ways = 4, .position = 2});
static_assert(expert_rank_of(6, 8, 1) == expert_rank{.group = 0, .ways = 8, .position = 6});
static_assert(expert_rank_of(6, 8, 8) == expert_rank{.group = 6, .ways = 1, .position = 0});
}  // namespace
