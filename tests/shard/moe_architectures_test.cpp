// The mixture-of-experts tables against published checkpoints (tests/data/moe/README.md says
// where each config.json and name list comes from): every name the schema expands from the
// real config.json is one the checkpoint stores and the other way round, and the shapes
// config.json implies are the published ones.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "../support/temp_dir.hpp"
#include "safeshard/format/config.hpp"
#include "safeshard/load/config_check.hpp"
#include "safeshard/shard/architectures/registry.hpp"

using namespace safeshard;

namespace {

const std::filesystem::path data = std::filesystem::path(SAFESHARD_TEST_DATA) / "moe";

// The names of tensors.txt ('#' lines are comments), and the layers it keeps (all when it
// keeps all).
std::set<std::string> stored_names(const std::string& folder) {
    std::ifstream in(data / folder / "tensors.txt");
    REQUIRE(in.good());
    std::set<std::string> v;
    for (std::string line; std::getline(in, line);)
        if (!line.empty() && line[0] != '#') v.insert(line);
    return v;
}

std::optional<std::uint64_t> layer_in(const std::string& name) {
    const std::string key = "model.layers.";
    if (!name.starts_with(key)) return std::nullopt;
    return std::stoull(name.substr(key.size()));
}

// The schema's checkpoint names, the MTP layers included.
std::set<std::string> schema_names(const model_config& c) {
    schema_options o;
    o.multi_token_prediction = true;
    const schema s = make_schema(c, o);
    std::set<std::string> v;
    for (const auto& p : s.parameters())
        for (const auto& src : p.sources) v.insert(src);
    return v;
}

// Every name of `want` is in `got` and the other way round.
void same_names(const std::set<std::string>& want, const std::set<std::string>& got) {
    std::vector<std::string> missing, extra;
    std::set_difference(want.begin(), want.end(), got.begin(), got.end(),
                        std::back_inserter(missing));
    std::set_difference(got.begin(), got.end(), want.begin(), want.end(),
                        std::back_inserter(extra));
    CHECK_MESSAGE(missing.empty(), "stored, not in the schema: " << missing.front());
    CHECK_MESSAGE(extra.empty(), "in the schema, not stored: " << extra.front());
}

void check_names(const std::string& folder, std::size_t parameters) {
    CAPTURE(folder);
    const model_config c = load_model_config(data / folder / "config.json");
    const std::set<std::string> stored = stored_names(folder);
    std::set<std::uint64_t> kept_layers;
    std::set<std::string> want;  // FP8 scales are the quantization issue's
    for (const auto& n : stored) {
        if (const auto l = layer_in(n)) kept_layers.insert(*l);
        if (!n.ends_with(".weight_scale_inv")) want.insert(n);
    }
    std::set<std::string> got;
    std::size_t all = 0;
    for (const auto& n : schema_names(c)) {
        ++all;
        const auto l = layer_in(n);
        if (!l || kept_layers.contains(*l)) got.insert(n);
    }
    CHECK(all == parameters);
    same_names(want, got);
}

std::vector<std::uint64_t> implied(const model_config& c, std::string_view name) {
    std::vector<std::uint64_t> v;
    for (const auto& d : architecture_shapes(c.model_type).implied_shape(name, sizes_of(c)))
        v.push_back(d.size);
    return v;
}

}  // namespace

TEST_CASE("mixture-of-experts schemas name exactly the tensors of the published checkpoints") {
    // Counts: every tensor of the checkpoint but its FP8 scales (DeepSeek-V3: 91991 published
    // names, 45808 of them weight_scale_inv; Kimi-K2: 139583, 69608 scales); the lists keep
    // some layers whole (each left-out layer has the names of a kept one of its kind).
    check_names("mistralai__Mixtral-8x7B-Instruct-v0.1", 995);
    check_names("Qwen__Qwen1.5-MoE-A2.7B", 4659);
    check_names("Qwen__Qwen3-30B-A3B", 18867);
    check_names("deepseek-ai__DeepSeek-V2-Lite", 5291);
    check_names("deepseek-ai__DeepSeek-V3", 91991 - 45808);
    check_names("moonshotai__Kimi-K2-Instruct", 139583 - 69608);
}

TEST_CASE("mixture-of-experts shapes config.json implies are the published ones") {
    // DeepSeek-V3 (shapes of the published DeepSeek-R1 listing, the same architecture).
    const model_config v3 = load_model_config(data / "deepseek-ai__DeepSeek-V3" / "config.json");
    CHECK(v3.num_experts == 256);
    CHECK(implied(v3, "model.layers.5.self_attn.q_a_proj.weight") ==
          std::vector<std::uint64_t>{1536, 7168});
    CHECK(implied(v3, "model.layers.5.self_attn.q_b_proj.weight") ==
          std::vector<std::uint64_t>{24576, 1536});
    CHECK(implied(v3, "model.layers.5.self_attn.kv_a_proj_with_mqa.weight") ==
          std::vector<std::uint64_t>{576, 7168});
    CHECK(implied(v3, "model.layers.5.self_attn.kv_b_proj.weight") ==
          std::vector<std::uint64_t>{32768, 512});
    CHECK(implied(v3, "model.layers.5.self_attn.o_proj.weight") ==
          std::vector<std::uint64_t>{7168, 16384});
    CHECK(implied(v3, "model.layers.5.mlp.experts.17.gate_proj.weight") ==
          std::vector<std::uint64_t>{2048, 7168});
    CHECK(implied(v3, "model.layers.5.mlp.shared_experts.down_proj.weight") ==
          std::vector<std::uint64_t>{7168, 2048});
    CHECK(implied(v3, "model.layers.0.mlp.gate_proj.weight") ==
          std::vector<std::uint64_t>{18432, 7168});
    CHECK(implied(v3, "model.layers.5.mlp.gate.e_score_correction_bias") ==
          std::vector<std::uint64_t>{256});
    // Qwen3-30B-A3B: head_dim 128 × 32 heads = 4096 query rows for a hidden size of 2048.
    const model_config q3 = load_model_config(data / "Qwen__Qwen3-30B-A3B" / "config.json");
    CHECK(implied(q3, "model.layers.0.self_attn.q_proj.weight") ==
          std::vector<std::uint64_t>{4096, 2048});
    CHECK(implied(q3, "model.layers.0.mlp.experts.127.down_proj.weight") ==
          std::vector<std::uint64_t>{2048, 768});
    CHECK(implied(q3, "model.layers.0.mlp.gate.weight") == std::vector<std::uint64_t>{128, 2048});
    // DeepSeek-V2-Lite: no q_lora_rank, q_proj of 16 heads × (128 + 64).
    const model_config v2 =
        load_model_config(data / "deepseek-ai__DeepSeek-V2-Lite" / "config.json");
    CHECK_FALSE(v2.q_lora_rank.has_value());
    CHECK(implied(v2, "model.layers.1.self_attn.q_proj.weight") ==
          std::vector<std::uint64_t>{3072, 2048});
    CHECK(implied(v2, "model.layers.1.mlp.shared_experts.up_proj.weight") ==
          std::vector<std::uint64_t>{2816, 2048});
    // Qwen1.5-MoE-A2.7B: a shared expert of 5632 and its one-output gate.
    const model_config q2 = load_model_config(data / "Qwen__Qwen1.5-MoE-A2.7B" / "config.json");
    CHECK(implied(q2, "model.layers.3.mlp.shared_expert.gate_proj.weight") ==
          std::vector<std::uint64_t>{5632, 2048});
    CHECK(implied(q2, "model.layers.3.mlp.shared_expert_gate.weight") ==
          std::vector<std::uint64_t>{1, 2048});
    // Mixtral-8x7B: 8 experts of intermediate_size 14336.
    const model_config mx =
        load_model_config(data / "mistralai__Mixtral-8x7B-Instruct-v0.1" / "config.json");
    CHECK(implied(mx, "model.layers.31.block_sparse_moe.experts.7.w2.weight") ==
          std::vector<std::uint64_t>{4096, 14336});
}

TEST_CASE("gpt-oss-20b: the schema names the published tensors, MXFP4 experts as stored") {
    // The published checkpoint stores the experts in MXFP4 (tests/data/moe/README.md,
    // "gpt_oss"): gate_up_proj_blocks / _scales, down_proj_blocks / _scales, and config.json
    // says quant_method mxfp4, which switches the table to them.
    const std::string folder = "openai__gpt-oss-20b";
    const model_config c = load_model_config(data / folder / "config.json");
    CHECK(c.model_type == "gpt_oss");
    CHECK(c.num_experts == 32);
    REQUIRE(c.quantization);
    CHECK(c.quantization->quant_method == "mxfp4");
    const std::set<std::string> stored = stored_names(folder);
    CHECK(stored.size() == 24 * 19 + 3);
    same_names(stored, schema_names(c));
    // MXFP4 shapes: output-major, K in blocks of 32 values of 16 bytes, one scale a block.
    CHECK(implied(c, "model.layers.3.mlp.experts.gate_up_proj_blocks") ==
          std::vector<std::uint64_t>{32, 5760, 90, 16});
    CHECK(implied(c, "model.layers.3.mlp.experts.gate_up_proj_scales") ==
          std::vector<std::uint64_t>{32, 5760, 90});
    CHECK(implied(c, "model.layers.3.mlp.experts.down_proj_blocks") ==
          std::vector<std::uint64_t>{32, 2880, 90, 16});
    CHECK(implied(c, "model.layers.3.mlp.experts.down_proj_scales") ==
          std::vector<std::uint64_t>{32, 2880, 90});
    CHECK(implied(c, "model.layers.3.mlp.experts.gate_up_proj_bias") ==
          std::vector<std::uint64_t>{32, 5760});

    // The same model in BF16 (no quantization_config): the parameters transformers'
    // GptOssExperts declares, gate_up_proj [E, H, 2I] and down_proj [E, I, H].
    model_config bf16 = c;
    bf16.quantization.reset();
    std::set<std::string> want;
    for (std::string n : stored) {
        if (n.ends_with("_scales")) continue;
        if (n.ends_with("_blocks")) n.resize(n.size() - 7);
        want.insert(n);
    }
    const std::set<std::string> got = schema_names(bf16);
    CHECK(got.size() == 24 * 17 + 3);  // 19 published a layer, less the two MXFP4 scales
    same_names(want, got);
    CHECK(implied(bf16, "model.layers.3.mlp.experts.gate_up_proj") ==
          std::vector<std::uint64_t>{32, 2880, 5760});
    CHECK(implied(bf16, "model.layers.3.mlp.experts.gate_up_proj_bias") ==
          std::vector<std::uint64_t>{32, 5760});
    CHECK(implied(bf16, "model.layers.3.mlp.experts.down_proj") ==
          std::vector<std::uint64_t>{32, 2880, 2880});
    CHECK(implied(bf16, "model.layers.3.mlp.experts.down_proj_bias") ==
          std::vector<std::uint64_t>{32, 2880});
    CHECK(implied(bf16, "model.layers.3.self_attn.sinks") == std::vector<std::uint64_t>{64});
    CHECK(implied(bf16, "model.layers.3.self_attn.q_proj.weight") ==
          std::vector<std::uint64_t>{4096, 2880});
    CHECK(implied(bf16, "model.layers.3.mlp.router.bias") == std::vector<std::uint64_t>{32});
}

TEST_CASE("Llama-4-Scout: the schema names the published text model under language_model.") {
    // No config.json of Llama-4 was reachable (gated): the text_config values quoted in
    // tests/data/moe/README.md ("llama4"), nested as the published file nests them.
    const test::temp_dir dir("llama4");
    std::ofstream(dir.path() / "config.json")
        << R"({"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
        "text_config": {"model_type": "llama4_text", "attention_bias": false,
        "head_dim": 128, "hidden_size": 5120, "interleave_moe_layer_step": 1,
        "intermediate_size": 8192, "intermediate_size_mlp": 16384, "num_attention_heads": 40,
        "num_experts_per_tok": 1, "num_hidden_layers": 48, "num_key_value_heads": 8,
        "num_local_experts": 16, "vocab_size": 202048, "tie_word_embeddings": false},
        "vision_config": {"model_type": "llama4_vision_model"}})";
    const model_config c = load_model_config(dir.path() / "config.json");
    CHECK(c.model_type == "llama4_text");
    std::set<std::string> got;
    for (const auto& n : schema_names(c)) got.insert("language_model." + n);
    CHECK(got == stored_names("meta-llama__Llama-4-Scout-17B-16E"));
    CHECK(got.size() == 579);
    CHECK(implied(c, "model.layers.7.feed_forward.experts.gate_up_proj") ==
          std::vector<std::uint64_t>{16, 5120, 16384});
    CHECK(implied(c, "model.layers.7.feed_forward.experts.down_proj") ==
          std::vector<std::uint64_t>{16, 8192, 5120});
    CHECK(implied(c, "model.layers.7.feed_forward.shared_expert.down_proj.weight") ==
          std::vector<std::uint64_t>{5120, 8192});
    // Maverick: every second layer dense, of intermediate_size_mlp.
    model_config mav = c;
    mav.decoder_sparse_step = 2;
    mav.num_experts = 128;
    const std::set<std::string> m = schema_names(mav);
    CHECK(m.contains("model.layers.0.feed_forward.gate_proj.weight"));
    CHECK(m.contains("model.layers.1.feed_forward.experts.gate_up_proj"));
    CHECK_FALSE(m.contains("model.layers.0.feed_forward.router.weight"));
    CHECK(implied(mav, "model.layers.0.feed_forward.down_proj.weight") ==
          std::vector<std::uint64_t>{5120, 16384});
}
