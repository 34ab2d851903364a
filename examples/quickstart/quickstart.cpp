// The quickstart: write a small llama-shaped checkpoint (config.json, 3 shards and an index;
// GQA with 8 query and 2 KV heads; random BF16 from a fixed seed), load it for tensor
// parallelism over 2 ranks on the host, check both ranks against the source, print a table.
//
//   quickstart [FOLDER]     (default: a fresh folder under the system's temp directory)
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "safeshard/safeshard.hpp"

namespace fs = std::filesystem;

namespace {

// The model: 4 layers, hidden 512, 8 query heads and 2 KV heads of 64, vocabulary 1000.
constexpr std::uint64_t layers = 4, hidden = 512, inter = 1408, heads = 8, kv_heads = 2,
                        head_dim = 64, vocab = 1000;

struct tensor {
    std::vector<std::uint64_t> dims;
    std::vector<std::uint16_t> bf16;
};

std::map<std::string, tensor> make_model(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    auto make = [&](std::vector<std::uint64_t> dims) {
        tensor t{std::move(dims), {}};
        std::uint64_t n = 1;
        for (auto d : t.dims) n *= d;
        t.bf16.resize(n);
        for (auto& v : t.bf16) {
            const float f = normal(rng);
            std::uint32_t bits;
            std::memcpy(&bits, &f, 4);
            v = static_cast<std::uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);  // RNE
        }
        return t;
    };
    std::map<std::string, tensor> m;
    const std::uint64_t q = heads * head_dim, kv = kv_heads * head_dim;
    m["model.embed_tokens.weight"] = make({vocab, hidden});
    for (std::uint64_t i = 0; i < layers; ++i) {
        const std::string p = "model.layers." + std::to_string(i) + ".";
        m[p + "input_layernorm.weight"] = make({hidden});
        m[p + "self_attn.q_proj.weight"] = make({q, hidden});
        m[p + "self_attn.k_proj.weight"] = make({kv, hidden});
        m[p + "self_attn.v_proj.weight"] = make({kv, hidden});
        m[p + "self_attn.o_proj.weight"] = make({hidden, q});
        m[p + "post_attention_layernorm.weight"] = make({hidden});
        m[p + "mlp.gate_proj.weight"] = make({inter, hidden});
        m[p + "mlp.up_proj.weight"] = make({inter, hidden});
        m[p + "mlp.down_proj.weight"] = make({hidden, inter});
    }
    m["model.norm.weight"] = make({hidden});
    m["lm_head.weight"] = make({vocab, hidden});
    return m;
}

void write_checkpoint(const fs::path& dir, const std::map<std::string, tensor>& model) {
    fs::create_directories(dir);
    std::ofstream(dir / "config.json")
        << "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], "
           "\"hidden_size\": "
        << hidden << ", \"intermediate_size\": " << inter << ", \"num_hidden_layers\": " << layers
        << ", \"num_attention_heads\": " << heads << ", \"num_key_value_heads\": " << kv_heads
        << ", \"head_dim\": " << head_dim << ", \"vocab_size\": " << vocab
        << ", \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\"}\n";
    constexpr int shards = 3;
    std::vector<std::vector<safeshard::tensor_data>> per(shards);
    std::string weight_map;
    int i = 0;
    for (const auto& [name, t] : model) {
        const int s = i++ * shards / static_cast<int>(model.size());  // in name order
        const std::string file = "model-0000" + std::to_string(s + 1) + "-of-00003.safetensors";
        per[s].push_back({name, safeshard::dtype::bf16, safeshard::shape::from(t.dims),
                          std::as_bytes(std::span(t.bf16))});
        weight_map +=
            (weight_map.empty() ? "" : ",\n    ") + ("\"" + name + "\": \"" + file + "\"");
    }
    for (int s = 0; s < shards; ++s)
        safeshard::save_file(dir / ("model-0000" + std::to_string(s + 1) + "-of-00003.safetensors"),
                             per[s]);
    std::ofstream(dir / "model.safetensors.index.json")
        << "{\"metadata\": {}, \"weight_map\": {\n    " << weight_map << "}}\n";
}

// The rows (or columns) of a rank, from the definitions: an even split, or whole heads.
std::vector<std::uint64_t> span_of(std::uint64_t begin, std::uint64_t end) {
    std::vector<std::uint64_t> v;
    for (auto i = begin; i < end; ++i) v.push_back(i);
    return v;
}

// What rank r of 2 must hold of `name`, picked out of the full source tensor.
std::vector<std::uint16_t> expected(const std::string& name, const tensor& t, std::uint64_t r) {
    const std::uint64_t rows = t.dims[0], cols = t.dims.size() > 1 ? t.dims[1] : 1, w = 2;
    std::vector<std::uint64_t> rs = span_of(0, rows), cs = span_of(0, cols);
    if (name.ends_with("embed_tokens.weight") || name == "lm_head.weight") {
        const std::uint64_t per = (rows + 63) / 64 * 64 / w;  // vocabulary padded to 64
        rs = span_of(r * per, (r + 1) * per);
    } else if (name.ends_with("q_proj.weight")) {
        rs = span_of(r * heads / w * head_dim, (r + 1) * heads / w * head_dim);
    } else if (name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight")) {
        rs = span_of(r * kv_heads / w * head_dim, (r + 1) * kv_heads / w * head_dim);
    } else if (name.ends_with("o_proj.weight")) {
        cs = span_of(r * heads / w * head_dim, (r + 1) * heads / w * head_dim);
    } else if (name.ends_with("gate_proj.weight") || name.ends_with("up_proj.weight")) {
        rs = span_of(r * rows / w, (r + 1) * rows / w);
    } else if (name.ends_with("down_proj.weight")) {
        cs = span_of(r * cols / w, (r + 1) * cols / w);
    }
    std::vector<std::uint16_t> out;
    for (auto row : rs)
        for (auto col : cs) out.push_back(row < rows ? t.bf16[row * cols + col] : 0);
    return out;
}

}  // namespace

int main(int argc, char** argv) try {
    const bool own_folder = argc < 2;
    const fs::path dir = own_folder ? fs::temp_directory_path() /
                                          ("safeshard-quickstart-" + std::to_string(::getpid()))
                                    : fs::path(argv[1]);
    const auto source = make_model(42);
    write_checkpoint(dir, source);
    std::printf("wrote a llama-shaped checkpoint (%zu tensors, 3 shards) to %s\n", source.size(),
                dir.c_str());

    constexpr std::uint32_t world = 2;
    std::printf("\n%-5s %-8s %-11s %-11s %-8s %-8s %-9s %s\n", "rank", "tensors", "bytes", "read",
                "plan s", "copy s", "copy GB/s", "check");
    int failures = 0;
    for (std::uint32_t rank = 0; rank < world; ++rank) {
        // The one call: a path (or org/name in the Hugging Face cache), a rank, a world size.
        auto model = safeshard::load(dir.string(), {.rank = rank, .world = world});

        std::size_t bad = 0;
        for (const auto& name : model.names()) {
            const safeshard::host_tensor& t = model.at(name);
            const auto want = expected(name, source.at(name), rank);
            if (t.size_bytes() != want.size() * 2 ||
                std::memcmp(t.data(), want.data(), t.size_bytes()) != 0) {
                std::printf("  rank %u: %s differs from the source\n", rank, name.c_str());
                ++bad;
            }
        }
        failures += bad != 0;
        const auto& r = model.report;
        std::printf("%-5u %-8zu %-11llu %-11llu %-8.4f %-8.4f %-9.2f %s\n", rank,
                    model.names().size(), static_cast<unsigned long long>(r.rank_bytes),
                    static_cast<unsigned long long>(r.bytes_read), r.plan_seconds, r.copy_seconds,
                    r.copy_gbps(), bad ? "MISMATCH" : "ok (bit-exact)");
    }
    const auto q = safeshard::load(dir.string(), {.rank = 1, .world = world});
    std::printf(
        "\nrank 1's model.layers.0.self_attn.q_proj.weight: %s of [512, 512] "
        "(query heads 4..7); k_proj: %s (KV head 1)\n",
        q.at("model.layers.0.self_attn.q_proj.weight").shape().to_string().c_str(),
        q.at("model.layers.0.self_attn.k_proj.weight").shape().to_string().c_str());
    if (own_folder) fs::remove_all(dir);
    return failures ? 1 : 0;
} catch (const safeshard::error& e) {
    std::fprintf(stderr, "quickstart: %s\n", e.what());
    return 1;
}
