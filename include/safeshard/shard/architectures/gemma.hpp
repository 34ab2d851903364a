// gemma and gemma2: tied embeddings by default; gemma2 adds feed-forward sandwich norms.
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

inline constexpr architecture_table gemma_table = decoder_table("gemma", {.tied_default = true});
inline constexpr architecture_table gemma2_table =
    decoder_table("gemma2", {.sandwich_norms = true, .tied_default = true});

[[nodiscard]] inline schema gemma_schema(const model_config& c, const schema_options& o = {}) {
    return schema_of(gemma_table, c, o);
}

[[nodiscard]] inline schema gemma2_schema(const model_config& c, const schema_options& o = {}) {
    return schema_of(gemma2_table, c, o);
}

}  // namespace safeshard
