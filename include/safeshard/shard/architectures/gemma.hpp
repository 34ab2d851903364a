// gemma and gemma2: tied embeddings by default; gemma2 adds feed-forward sandwich norms.
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

[[nodiscard]] inline schema gemma_schema(const model_config& c, const schema_options& o = {}) {
    return build_decoder(c, o, decoder_traits{.tied_default = true});
}

[[nodiscard]] inline schema gemma2_schema(const model_config& c, const schema_options& o = {}) {
    return build_decoder(c, o, decoder_traits{.sandwich_norms = true, .tied_default = true});
}

}  // namespace safeshard
