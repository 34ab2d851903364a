// llama and mistral: the plain decoder (untied by default).
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

[[nodiscard]] inline schema llama_schema(const model_config& c, const schema_options& o = {}) {
    return build_decoder(c, o, decoder_traits{});
}

[[nodiscard]] inline schema mistral_schema(const model_config& c, const schema_options& o = {}) {
    return build_decoder(c, o, decoder_traits{});
}

}  // namespace safeshard
