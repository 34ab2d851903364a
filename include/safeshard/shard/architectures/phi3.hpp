// phi3: qkv_proj and gate_up_proj are stored fused and keep those names: qkv_proj's local
// tensor is [q_r; k_r; v_r] cut from one tensor, gate_up_proj's [gate_r; up_r].
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

inline constexpr architecture_table phi3_table = decoder_table("phi3", {.fused_on_disk = true});

[[nodiscard]] inline schema phi3_schema(const model_config& c, const schema_options& o = {}) {
    return schema_of(phi3_table, c, o);
}

}  // namespace safeshard
