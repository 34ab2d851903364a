#include "safeshard/format/config.hpp"

#include <string>

#include <doctest/doctest.h>

#include "../checkpoint/test_util.hpp"

using namespace safeshard;
using safeshard::test::code_of;

namespace {
constexpr std::string_view llama = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "rope_theta": 500000.0})";
}

TEST_CASE("config: a llama config") {
    const auto f = config_file::parse(llama, "config.json");
    const model_config& c = f.config();
    CHECK(c.model_type == "llama");
    REQUIRE(c.architectures.size() == 1);
    CHECK(c.architectures[0] == "LlamaForCausalLM");
    CHECK(c.hidden_size == 4096);
    CHECK(c.intermediate_size == 14336);
    CHECK(c.num_hidden_layers == 32);
    CHECK(c.num_attention_heads == 32);
    CHECK(c.num_key_value_heads == 8);
    CHECK(c.head_dim == 128);
    CHECK(c.vocab_size == 128256);
    CHECK(c.tie_word_embeddings == false);
    CHECK(c.checkpoint_dtype == dtype::bf16);
    CHECK_FALSE(f.has_text_config());
    // The raw JSON stays reachable.
    CHECK(f.raw_json() == llama);
    double theta = 0;
    CHECK(f.document()["rope_theta"].get_double().get(theta) == simdjson::SUCCESS);
    CHECK(theta == 500000.0);
    CHECK(parse_model_config(llama) == c);
}

TEST_CASE("config: defaults") {
    const auto c = parse_model_config(R"({"model_type": "qwen2", "hidden_size": 896,
        "num_hidden_layers": 24, "num_attention_heads": 14, "dtype": "float16"})");
    CHECK(c.num_key_value_heads == 14);  // defaults to num_attention_heads
    CHECK(c.head_dim == 64);             // hidden / heads
    CHECK_FALSE(c.tie_word_embeddings);  // not set: the architecture decides
    CHECK(c.intermediate_size == 0);
    CHECK(c.vocab_size == 0);
    CHECK(c.checkpoint_dtype == dtype::f16);
}

TEST_CASE("config: head_dim honoured, and null counts as absent") {
    const auto mistral = parse_model_config(R"({"model_type": "mistral", "hidden_size": 5120,
        "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128})");
    CHECK(mistral.head_dim == 128);  // != 5120 / 32
    const auto nulled = parse_model_config(R"({"model_type": "mistral", "hidden_size": 4096,
        "num_hidden_layers": 2, "num_attention_heads": 32, "head_dim": null,
        "num_key_value_heads": null, "tie_word_embeddings": null})");
    CHECK(nulled.head_dim == 128);
    CHECK(nulled.num_key_value_heads == 32);
    CHECK_FALSE(nulled.tie_word_embeddings);
}

TEST_CASE("config: tie_word_embeddings recorded, architecture defaults") {
    CHECK(parse_model_config(R"({"model_type": "gemma", "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "tie_word_embeddings": true})")
              .tie_word_embeddings == true);
    CHECK(default_tie_word_embeddings("llama") == false);
    CHECK(default_tie_word_embeddings("qwen2") == false);
    CHECK(default_tie_word_embeddings("mistral") == false);
    CHECK(default_tie_word_embeddings("phi3") == false);
    CHECK(default_tie_word_embeddings("gemma") == true);
    CHECK_FALSE(default_tie_word_embeddings("mystery"));
}

TEST_CASE("config: nested text_config (multimodal)") {
    const auto f = config_file::parse(R"({"model_type": "llava", "architectures":
        ["LlavaForConditionalGeneration"], "tie_word_embeddings": false,
        "vision_config": {"hidden_size": 1024},
        "text_config": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 8,
                        "torch_dtype": "float16"}})");
    CHECK(f.has_text_config());
    CHECK(f.outer_model_type() == "llava");
    const auto& c = f.config();
    CHECK(c.model_type == "llama");
    CHECK(c.hidden_size == 4096);
    CHECK(c.num_key_value_heads == 8);
    CHECK(c.tie_word_embeddings == false);  // from the top level
    CHECK(c.checkpoint_dtype == dtype::f16);
    CHECK(c.architectures.at(0) == "LlavaForConditionalGeneration");
}

TEST_CASE("dtype_from_torch_name") {
    CHECK(dtype_from_torch_name("bfloat16") == dtype::bf16);
    CHECK(dtype_from_torch_name("torch.float32") == dtype::f32);
    CHECK(dtype_from_torch_name("float8_e4m3fn") == dtype::f8_e4m3);
    CHECK_FALSE(dtype_from_torch_name("auto"));
}

TEST_CASE("config: missing fields and wrong types are invalid_config") {
    std::string what;
    auto bad = [&](std::string_view json) {
        return code_of([&] { (void)config_file::parse(json, "config.json"); }, &what);
    };
    constexpr std::string_view base = R"("model_type": "llama", "num_hidden_layers": 2)";
    CHECK(bad("{") == errc::invalid_config);
    CHECK(what.find("not valid JSON") != std::string::npos);
    CHECK(bad("[]") == errc::invalid_config);
    CHECK(bad(R"({"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2})") ==
          errc::invalid_config);
    CHECK(what.find("model_type") != std::string::npos);
    CHECK(bad("{" + std::string(base) + R"(, "num_attention_heads": 2})") == errc::invalid_config);
    CHECK(what.find("missing required field 'hidden_size'") != std::string::npos);
    CHECK(what.find("config.json") != std::string::npos);
    CHECK(bad("{" + std::string(base) + R"(, "hidden_size": "8", "num_attention_heads": 2})") ==
          errc::invalid_config);
    CHECK(what.find("'hidden_size' must be a non-negative integer, found a string") !=
          std::string::npos);
    CHECK(bad("{" + std::string(base) + R"(, "hidden_size": -8, "num_attention_heads": 2})") ==
          errc::invalid_config);
    CHECK(bad("{" + std::string(base) + R"(, "hidden_size": 8.5, "num_attention_heads": 2})") ==
          errc::invalid_config);
    CHECK(bad("{" + std::string(base) + R"(, "hidden_size": 0, "num_attention_heads": 2})") ==
          errc::invalid_config);
    CHECK(bad("{" + std::string(base) + R"(, "hidden_size": 8, "num_attention_heads": 3})") ==
          errc::invalid_config);  // no head_dim and 8 % 3 != 0
    CHECK(bad("{" + std::string(base) +
              R"(, "hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 3})") ==
          errc::invalid_config);
    CHECK(bad("{" + std::string(base) +
              R"(, "hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 0})") ==
          errc::invalid_config);
    CHECK(bad("{" + std::string(base) +
              R"(, "hidden_size": 8, "num_attention_heads": 4, "head_dim": 0})") ==
          errc::invalid_config);
    CHECK(bad("{" + std::string(base) +
              R"(, "hidden_size": 8, "num_attention_heads": 4, "tie_word_embeddings": 1})") ==
          errc::invalid_config);
    CHECK(bad("{" + std::string(base) +
              R"(, "hidden_size": 8, "num_attention_heads": 4, "torch_dtype": 16})") ==
          errc::invalid_config);
    CHECK(bad("{" + std::string(base) +
              R"(, "hidden_size": 8, "num_attention_heads": 4, "architectures": "X"})") ==
          errc::invalid_config);
    CHECK(bad("{" + std::string(base) +
              R"(, "hidden_size": 8, "num_attention_heads": 4, "architectures": [1]})") ==
          errc::invalid_config);
    CHECK(bad(R"({"model_type": 7, "hidden_size": 8, "num_hidden_layers": 1,
                  "num_attention_heads": 2})") == errc::invalid_config);
    CHECK(bad(R"({"model_type": "llava", "text_config": 3})") == errc::invalid_config);
    // The layers with experts, listed.
    const std::string moe =
        "{" + std::string(base) + R"(, "hidden_size": 8, "num_attention_heads": 4, )";
    CHECK(bad(moe + R"("mlp_only_layers": 1})") == errc::invalid_config);
    CHECK(what.find("'mlp_only_layers' must be an array of layer indices, found an integer") !=
          std::string::npos);
    CHECK(bad(moe + R"("mlp_only_layers": [0, "1"]})") == errc::invalid_config);
    CHECK(what.find("'mlp_only_layers' must be an array of layer indices, found an item that "
                    "is a string") != std::string::npos);
    CHECK(bad(moe + R"("moe_layers": {}})") == errc::invalid_config);
    CHECK(what.find("'moe_layers' must be an array of layer indices") != std::string::npos);
    CHECK(bad(moe + R"("moe_layers": [-1]})") == errc::invalid_config);
    CHECK(bad(moe + R"("moe_layers": [2]})") == errc::invalid_config);
    CHECK(what.find("'moe_layers' names layer 2 of 2 (num_hidden_layers)") != std::string::npos);
    CHECK(bad(R"({"model_type": "llama4_text", "num_hidden_layers": 2000000, "hidden_size": 8,
                  "num_attention_heads": 4, "moe_layers": [1]})") == errc::invalid_config);
    CHECK(what.find("at most 1048576") != std::string::npos);
}

TEST_CASE("config: llama4's moe_layers, listed or every interleave_moe_layer_step-th") {
    const std::string head = R"({"model_type": "llama4_text", "num_hidden_layers": 4,
        "hidden_size": 8, "num_attention_heads": 4, "num_local_experts": 2, )";
    // Listed: the others are dense, whatever the step says.
    auto c = config_file::parse(head + R"("interleave_moe_layer_step": 2, "moe_layers": [0, 3]})",
                                "config.json")
                 .config();
    CHECK(c.decoder_sparse_step == 1);
    CHECK(c.mlp_only_layers == std::vector<std::uint64_t>{1, 2});
    // Absent or null: every step-th ((l + 1) % step == 0).
    for (const char* tail : {R"("interleave_moe_layer_step": 2})",
                             R"("interleave_moe_layer_step": 2, "moe_layers": null})"}) {
        c = config_file::parse(head + tail, "config.json").config();
        CHECK(c.decoder_sparse_step == 2);
        CHECK(c.mlp_only_layers.empty());
    }
}

TEST_CASE("config: load from a file") {
    safeshard::test::temp_dir d;
    safeshard::test::write_file(d / "config.json", llama);
    CHECK(load_model_config(d / "config.json").hidden_size == 4096);
    CHECK(config_file::load(d / "config.json").source() == (d / "config.json").string());
    CHECK(code_of([&] { (void)load_model_config(d / "nope.json"); }) == errc::io_error);
}

TEST_CASE("config: what Python's json module reads is read (wide integers, huge floats, depth)") {
    // transformers reads config.json with json.load.
    std::string deep;
    for (int i = 0; i < 500; ++i) deep += "[";
    for (int i = 0; i < 500; ++i) deep += "]";
    const auto f = config_file::parse(R"({"model_type": "llama", "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "seed": 123456789012345678901234567890,
        "initializer_range": 1e-400, "max_value": 1e400, "layout": )" +
                                      deep + "}");
    CHECK(f.config().hidden_size == 64);
    double v = 0;
    CHECK(f.document()["seed"].get_double().get(v) == simdjson::SUCCESS);
    CHECK(v == 1.2345678901234568e29);
    // Sizes stay integers of 64 bits.
    CHECK(code_of([] {
              (void)parse_model_config(R"({"model_type": "llama", "hidden_size": 1e400,
                  "num_hidden_layers": 2, "num_attention_heads": 4})");
          }) == errc::invalid_config);
    CHECK(code_of([] {
              (void)parse_model_config(R"({"model_type": "llama",
                  "hidden_size": 123456789012345678901234567890, "num_hidden_layers": 2,
                  "num_attention_heads": 4})");
          }) == errc::invalid_config);
    std::string deeper = "{\"model_type\": \"llama\", \"x\": ";
    for (int i = 0; i < 1000; ++i) deeper += "[";
    for (int i = 0; i < 1000; ++i) deeper += "]";
    CHECK(code_of([&] { (void)parse_model_config(deeper + "}"); }) == errc::invalid_config);
}
