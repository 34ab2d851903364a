// mixtral: llama's attention, and on every layer a mixture of experts under
// block_sparse_moe: the router `gate` [num_local_experts, hidden] and experts.{e}.w1 (gate),
// w3 (up), w2 (down), each of intermediate_size (transformers' modeling_mixtral.py; vLLM's
// mixtral.py maps w1/w3 to the column-parallel pair and w2 to the row-parallel one).
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

inline constexpr architecture_table mixtral_table =
    decoder_table("mixtral", {.mixtral_experts = true});

}  // namespace safeshard
