#include "../support/expect_error.hpp"
#include "safeshard/shard/architectures/registry.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <vector>

using namespace safeshard;
using safeshard::test::expect_error;

namespace {

// A generated config: GQA (H=8, KV=2) with head_dim 16 != hidden / H = 8.
model_config config(std::string type, std::optional<bool> tied = std::nullopt) {
    model_config c;
    c.model_type = std::move(type);
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.num_hidden_layers = 3;
    c.num_attention_heads = 8;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.vocab_size = 1000;
    c.tie_word_embeddings = tied;
    return c;
}

bool ends_with(std::string_view s, std::string_view suffix) { return s.ends_with(suffix); }

// The checkpoint shape Hugging Face stores for a tensor of this config.
shape hf_shape(const model_config& c, std::string_view n) {
    const std::uint64_t hd = c.num_attention_heads * c.head_dim,
                        kvd = c.num_key_value_heads * c.head_dim, h = c.hidden_size,
                        i = c.intermediate_size;
    if (ends_with(n, "embed_tokens.weight") || ends_with(n, "lm_head.weight"))
        return shape{c.vocab_size, h};
    // Fused names first: "qkv_proj" ends like "v_proj", "gate_up_proj" like "up_proj".
    if (ends_with(n, "qkv_proj.weight")) return shape{hd + 2 * kvd, h};
    if (ends_with(n, "gate_up_proj.weight")) return shape{2 * i, h};
    if (ends_with(n, "q_proj.weight")) return shape{hd, h};
    if (ends_with(n, "k_proj.weight") || ends_with(n, "v_proj.weight")) return shape{kvd, h};
    if (ends_with(n, "q_proj.bias")) return shape{hd};
    if (ends_with(n, "k_proj.bias") || ends_with(n, "v_proj.bias")) return shape{kvd};
    if (ends_with(n, "o_proj.weight")) return shape{h, hd};
    if (ends_with(n, "q_norm.weight") || ends_with(n, "k_norm.weight")) return shape{c.head_dim};
    if (ends_with(n, "gate_proj.weight") || ends_with(n, "up_proj.weight")) return shape{i, h};
    if (ends_with(n, "down_proj.weight")) return shape{h, i};
    if (ends_with(n, "norm.weight")) return shape{h};
    FAIL("no shape for " << n);
    return shape{};
}

// Every loaded parameter of the schema cut for every rank; returns rank 1's local shapes.
std::vector<std::pair<std::string, shape>> cut(const schema& s, const model_config& c,
                                               std::uint32_t world) {
    std::vector<std::pair<std::string, shape>> out;
    for (const auto& p : s.parameters()) {
        if (!p.loaded()) continue;
        std::vector<shape> shapes;
        for (const auto& src : p.sources) shapes.push_back(hf_shape(c, src));
        for (std::uint32_t r = 0; r < world; ++r) {
            const auto res = slice_parameter(p, shapes, world, r);
            if (r == (world > 1 ? 1u : 0u)) out.emplace_back(p.name, res.local);
        }
    }
    return out;
}

shape local_of(const std::vector<std::pair<std::string, shape>>& v, std::string_view name) {
    for (const auto& [n, s] : v)
        if (n == name) return s;
    FAIL("no parameter " << name);
    return {};
}

std::vector<std::string> names(const schema& s) {
    std::vector<std::string> v;
    for (const auto& p : s.parameters()) v.push_back(p.name);
    return v;
}

bool has(const schema& s, std::string_view n) { return s.find(n) != nullptr; }

}  // namespace

TEST_CASE("llama and mistral: HF names, GQA layouts, untied by default") {
    for (const char* type : {"llama", "mistral"}) {
        const model_config c = config(type);
        const schema s = make_schema(c);
        CHECK(s.size() == 1 + 3 * 9 + 2);
        CHECK(names(s).front() == "model.embed_tokens.weight");
        CHECK(names(s).back() == "lm_head.weight");
        CHECK_FALSE(s.at("lm_head.weight").tied());
        CHECK(s.at("lm_head.weight").sources == std::vector<std::string>{"lm_head.weight"});
        CHECK(name(s.at("model.embed_tokens.weight").layout) == "padded_split<0,64>");
        CHECK(name(s.at("model.layers.0.self_attn.q_proj.weight").layout) ==
              "gqa_qkv<kv_contiguous>");
        CHECK(name(s.at("model.layers.0.self_attn.o_proj.weight").layout) ==
              "gqa_o<kv_contiguous>");
        CHECK(name(s.at("model.layers.2.mlp.gate_proj.weight").layout) == "split<0>");
        CHECK(name(s.at("model.layers.2.mlp.down_proj.weight").layout) == "split<1>");
        CHECK(name(s.at("model.norm.weight").layout) == "replicated");

        const auto w2 = cut(s, c, 2);
        CHECK(local_of(w2, "model.embed_tokens.weight") == shape{512, 64});  // 1024 / 2
        CHECK(local_of(w2, "model.layers.0.self_attn.q_proj.weight") == shape{64, 64});
        CHECK(local_of(w2, "model.layers.0.self_attn.k_proj.weight") == shape{16, 64});
        CHECK(local_of(w2, "model.layers.0.self_attn.o_proj.weight") == shape{64, 64});
        CHECK(local_of(w2, "model.layers.0.mlp.down_proj.weight") == shape{64, 48});
        // world 4 > KV 2: each KV head held by two ranks.
        const auto w4 = cut(s, c, 4);
        CHECK(local_of(w4, "model.layers.1.self_attn.v_proj.weight") == shape{16, 64});
        CHECK(local_of(w4, "model.layers.1.self_attn.q_proj.weight") == shape{32, 64});
    }
    // config.json says tied: lm_head shares the embedding.
    const schema t = make_schema(config("llama", true));
    CHECK(t.at("lm_head.weight").tied_to == "model.embed_tokens.weight");
}

TEST_CASE("qwen2 biases follow their heads; qwen3 norms are replicated") {
    const model_config c = config("qwen2");
    const schema s = make_schema(c);
    CHECK(has(s, "model.layers.0.self_attn.q_proj.bias"));
    CHECK(has(s, "model.layers.0.self_attn.v_proj.bias"));
    CHECK_FALSE(has(s, "model.layers.0.self_attn.o_proj.bias"));
    CHECK_FALSE(s.at("lm_head.weight").tied());
    const auto w2 = cut(s, c, 2);
    CHECK(local_of(w2, "model.layers.0.self_attn.q_proj.bias") == shape{64});
    CHECK(local_of(w2, "model.layers.0.self_attn.k_proj.bias") == shape{16});
    // The bias rows are the weight rows' heads.
    const auto& qb = s.at("model.layers.0.self_attn.q_proj.bias");
    const auto bias = slice_parameter(qb, std::array{shape{128}}, 2, 1);
    CHECK(bias.runs[0] == segment{0, 64, 64});

    schema_options fuse;
    fuse.fuse_qkv = true;
    const schema f = make_schema(c, fuse);
    CHECK(has(f, "model.layers.0.self_attn.qkv_proj.bias"));
    CHECK(f.at("model.layers.0.self_attn.qkv_proj.bias").sources.size() == 3);
    const auto fw = cut(f, c, 2);
    CHECK(local_of(fw, "model.layers.0.self_attn.qkv_proj.bias") == shape{64 + 16 + 16});
    CHECK(local_of(fw, "model.layers.0.self_attn.qkv_proj.weight") == shape{96, 64});

    const model_config c3 = config("qwen3");
    const schema q3 = make_schema(c3);
    CHECK(name(q3.at("model.layers.2.self_attn.q_norm.weight").layout) == "replicated");
    CHECK(has(q3, "model.layers.2.self_attn.k_norm.weight"));
    CHECK_FALSE(has(q3, "model.layers.0.self_attn.q_proj.bias"));
    CHECK(local_of(cut(q3, c3, 4), "model.layers.0.self_attn.q_norm.weight") == shape{16});
}

TEST_CASE("gemma and gemma2 tie lm_head by default") {
    for (const char* type : {"gemma", "gemma2"}) {
        const model_config c = config(type);
        const schema s = make_schema(c);
        const auto& head = s.at("lm_head.weight");
        CHECK(head.tied_to == "model.embed_tokens.weight");
        CHECK(head.sources.empty());
        // A stored lm_head.weight is accepted and ignored, with a note.
        REQUIRE(s.ignored("lm_head.weight").has_value());
        CHECK(s.ignored("lm_head.weight")->find("tied") != std::string_view::npos);
        (void)cut(s, c, 2);
    }
    CHECK(has(make_schema(config("gemma2")), "model.layers.0.pre_feedforward_layernorm.weight"));
    CHECK(has(make_schema(config("gemma2")), "model.layers.0.post_feedforward_layernorm.weight"));
    CHECK_FALSE(
        has(make_schema(config("gemma")), "model.layers.0.pre_feedforward_layernorm.weight"));
    // config.json may untie.
    CHECK_FALSE(make_schema(config("gemma", false)).at("lm_head.weight").tied());
}

TEST_CASE("phi3 keeps its fused qkv_proj and gate_up_proj") {
    const model_config c = config("phi3");
    const schema s = make_schema(c);
    CHECK_FALSE(has(s, "model.layers.0.self_attn.q_proj.weight"));
    const auto& qkv = s.at("model.layers.0.self_attn.qkv_proj.weight");
    CHECK(qkv.sources == std::vector<std::string>{"model.layers.0.self_attn.qkv_proj.weight"});
    const auto r = slice_parameter(qkv, std::array{hf_shape(c, qkv.name)}, 2, 1);
    // [q_r; k_r; v_r]: q heads 4-7 (rows 64..128), kv head 1 of k (128 + 16..32) and of v.
    REQUIRE(r.runs.size() == 3);
    CHECK(r.runs[0] == segment{0, 64, 64});
    CHECK(r.runs[1] == segment{0, 128 + 16, 16});
    CHECK(r.runs[2] == segment{0, 128 + 32 + 16, 16});
    CHECK(r.local == shape{96, 64});
    const auto& gu = s.at("model.layers.0.mlp.gate_up_proj.weight");
    const auto g = slice_parameter(gu, std::array{hf_shape(c, gu.name)}, 2, 1);
    REQUIRE(g.runs.size() == 2);
    CHECK(g.runs[0] == segment{0, 48, 48});       // gate rows of rank 1
    CHECK(g.runs[1] == segment{0, 96 + 48, 48});  // up rows of rank 1
    (void)cut(s, c, 2);
    // World 3 does not divide the heads: the error names the parameter.
    {
        const auto e = expect_error(
            [&] { (void)slice_parameter(qkv, std::array{hf_shape(c, qkv.name)}, 3, 0); });
        CHECK(e.tensor() == "model.layers.0.self_attn.qkv_proj.weight");
    }
}

TEST_CASE("options: fused gate_up, interleaved KV, vocab multiple, stages") {
    const model_config c = config("llama");
    schema_options o;
    o.fuse_gate_up = true;
    o.kv = kv_interleaved;
    o.vocab_multiple = 128;
    const schema s = make_schema(c, o);
    CHECK(s.at("model.layers.0.mlp.gate_up_proj.weight").sources ==
          std::vector<std::string>{"model.layers.0.mlp.gate_proj.weight",
                                   "model.layers.0.mlp.up_proj.weight"});
    CHECK(name(s.at("model.layers.0.self_attn.k_proj.weight").layout) == "gqa_qkv<kv_interleaved>");
    CHECK(name(s.at("lm_head.weight").layout) == "padded_split<0,128>");
    const auto w4 = cut(s, c, 4);
    CHECK(local_of(w4, "model.layers.0.mlp.gate_up_proj.weight") == shape{48, 64});

    schema_options stage;
    stage.layer_begin = 2;
    stage.embeddings = false;
    const schema last = make_schema(c, stage);
    CHECK(last.size() == 9 + 2);
    CHECK(last.ignored("model.layers.0.mlp.up_proj.weight").has_value());
    CHECK(last.ignored("model.embed_tokens.weight").has_value());
}

TEST_CASE("the registry: unknown types, bad configs, user architectures") {
    model_config c = config("falcon");
    {
        const auto e = expect_error(errc::invalid_config, [&] { (void)make_schema(c); });
        CHECK(e.message().find("falcon") != std::string::npos);
        CHECK(e.message().find("llama, llama4, llama4_text, mistral, mixtral, phi3, qwen2, "
                               "qwen2_moe, qwen3, qwen3_moe") != std::string::npos);
        CHECK(e.message().find("deepseek_v2, deepseek_v3, gemma, gemma2, gpt_oss, kimi_k2") !=
              std::string::npos);
        CHECK(e.message().find("gemma, gemma2") != std::string::npos);
    }
    const auto known = known_architectures();
    CHECK(std::is_sorted(known.begin(), known.end()));
    CHECK(known.size() >= 7);

    register_architecture("tiny_test_model", [](const model_config& mc, const schema_options& o) {
        return build_decoder(mc, o, decoder_traits{.qk_norm = true, .tied_default = true});
    });
    const schema t = make_schema(config("tiny_test_model"));
    CHECK(t.at("lm_head.weight").tied());
    CHECK_THROWS_AS(register_architecture("tiny_test_model", llama_schema), error);
    CHECK_NOTHROW(register_architecture("tiny_test_model", llama_schema, true));
    CHECK_FALSE(make_schema(config("tiny_test_model")).at("lm_head.weight").tied());
    CHECK_THROWS_AS(register_architecture("", llama_schema), error);

    architecture_registry local = architecture_registry::with_builtins();
    CHECK(local.contains("qwen3"));
    CHECK_FALSE(local.contains("tiny_test_model"));
    CHECK_THROWS_AS((void)local.builder("nope"), error);

    model_config bad = config("llama");
    bad.vocab_size = 0;
    CHECK_THROWS_AS((void)make_schema(bad), error);
    bad = config("llama");
    bad.num_key_value_heads = 3;
    CHECK_THROWS_AS((void)make_schema(bad), error);
    bad = config("llama");
    bad.head_dim = 0;
    bad.hidden_size = 60;  // not a multiple of 8 heads
    CHECK_THROWS_AS((void)make_schema(bad), error);
    // Defaults: KV = H, head_dim = hidden / H.
    model_config mha = config("llama");
    mha.num_key_value_heads = 0;
    mha.head_dim = 0;
    const decoder_dims d = resolve_dims(mha, false);
    CHECK(d.kv_heads == 8);
    CHECK(d.head_dim == 8);
    bad = config("llama");
    bad.num_hidden_layers = 0;
    try {
        (void)make_schema(bad);
    } catch (const error& e) {
        CHECK(e.message().find("num_hidden_layers") != std::string::npos);
    }
}
