// llama and mistral: the plain decoder (untied by default).
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

inline constexpr architecture_table llama_table = decoder_table("llama", {});
inline constexpr architecture_table mistral_table = decoder_table("mistral", {});

[[nodiscard]] inline schema llama_schema(const model_config& c, const schema_options& o = {}) {
    return schema_of(llama_table, c, o);
}

[[nodiscard]] inline schema mistral_schema(const model_config& c, const schema_options& o = {}) {
    return schema_of(mistral_table, c, o);
}

}  // namespace safeshard
