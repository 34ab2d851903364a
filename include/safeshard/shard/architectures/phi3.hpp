// phi3: qkv_proj and gate_up_proj are stored fused and keep those names: qkv_proj's local
// tensor is [q_r; k_r; v_r] cut from one tensor, gate_up_proj's [gate_r; up_r].
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

[[nodiscard]] inline schema phi3_schema(const model_config& c, const schema_options& o = {}) {
    return build_decoder(c, o, decoder_traits{.fused_on_disk = true});
}

}  // namespace safeshard
