#include "safeshard/core/model_config.hpp"

#include <doctest/doctest.h>

using namespace safeshard;

TEST_CASE("model_config is a plain value: defaults, copies, comparison") {
    model_config a;
    CHECK(a.hidden_size == 0u);
    CHECK_FALSE(a.tie_word_embeddings.has_value());
    CHECK_FALSE(a.checkpoint_dtype.has_value());
    a.model_type = "llama";
    a.architectures = {"LlamaForCausalLM"};
    a.hidden_size = 4096;
    a.num_attention_heads = 32;
    a.num_key_value_heads = 8;
    a.head_dim = 128;
    a.tie_word_embeddings = false;
    a.checkpoint_dtype = dtype::bf16;
    model_config b = a;
    CHECK(a == b);
    b.tie_word_embeddings.reset();  // "not set" differs from "set to false"
    CHECK_FALSE(a == b);
}
