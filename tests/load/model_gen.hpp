// Small generated decoder checkpoints (config.json, shards, index) for the loader tests, and
// the expected slices computed here from first principles (row and head index lists), not
// with shard/'s slice().
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "../support/temp_dir.hpp"
#include "safeshard/format/safetensors_writer.hpp"

namespace safeshard::test {

// A fresh folder under the system temp folder (tests/support/temp_dir.hpp).
using temp_folder = temp_dir;

// A BF16 tensor of the source checkpoint, held as 16-bit codes; 1-D tensors are [n] (one column).
struct source_tensor {
    std::vector<std::uint64_t> dims;
    std::vector<std::uint16_t> codes;
    [[nodiscard]] std::uint64_t rows() const { return dims[0]; }
    [[nodiscard]] std::uint64_t cols() const { return dims.size() > 1 ? dims[1] : 1; }
};

struct model_spec {
    std::string type = "llama";
    std::uint64_t layers = 2, hidden = 64, intermediate = 128, heads = 8, kv_heads = 2,
                  head_dim = 8, vocab = 100;
    bool tied = false;
    bool bias = false;     // qwen2
    bool fused = false;    // phi3: qkv_proj, gate_up_proj on disk
    std::string prefix{};  // on every checkpoint name
    std::uint32_t shards = 3;
    std::uint64_t seed = 1;
};

// Finite BF16 codes of moderate magnitude: conversions are exact and comparable bitwise.
inline source_tensor random_tensor(std::vector<std::uint64_t> dims, std::mt19937_64& rng) {
    source_tensor t{std::move(dims), {}};
    std::uint64_t n = 1;
    for (auto d : t.dims) n *= d;
    t.codes.resize(n);
    for (auto& c : t.codes) {
        const auto r = rng();
        c = static_cast<std::uint16_t>(((r & 1) << 15) | ((100 + (r >> 1) % 40) << 7) |
                                       ((r >> 8) & 0x7f));
    }
    return t;
}

inline std::map<std::string, source_tensor> make_tensors(const model_spec& m) {
    std::mt19937_64 rng(m.seed);
    std::map<std::string, source_tensor> t;
    const auto h = m.hidden, q = m.heads * m.head_dim, kv = m.kv_heads * m.head_dim;
    t["model.embed_tokens.weight"] = random_tensor({m.vocab, h}, rng);
    for (std::uint64_t i = 0; i < m.layers; ++i) {
        const std::string p = "model.layers." + std::to_string(i) + ".";
        t[p + "input_layernorm.weight"] = random_tensor({h}, rng);
        t[p + "post_attention_layernorm.weight"] = random_tensor({h}, rng);
        if (m.fused) {
            t[p + "self_attn.qkv_proj.weight"] = random_tensor({q + 2 * kv, h}, rng);
            t[p + "mlp.gate_up_proj.weight"] = random_tensor({2 * m.intermediate, h}, rng);
        } else {
            t[p + "self_attn.q_proj.weight"] = random_tensor({q, h}, rng);
            t[p + "self_attn.k_proj.weight"] = random_tensor({kv, h}, rng);
            t[p + "self_attn.v_proj.weight"] = random_tensor({kv, h}, rng);
            if (m.bias) {
                t[p + "self_attn.q_proj.bias"] = random_tensor({q}, rng);
                t[p + "self_attn.k_proj.bias"] = random_tensor({kv}, rng);
                t[p + "self_attn.v_proj.bias"] = random_tensor({kv}, rng);
            }
            t[p + "mlp.gate_proj.weight"] = random_tensor({m.intermediate, h}, rng);
            t[p + "mlp.up_proj.weight"] = random_tensor({m.intermediate, h}, rng);
        }
        t[p + "self_attn.o_proj.weight"] = random_tensor({h, q}, rng);
        t[p + "mlp.down_proj.weight"] = random_tensor({h, m.intermediate}, rng);
    }
    t["model.norm.weight"] = random_tensor({h}, rng);
    if (!m.tied) t["lm_head.weight"] = random_tensor({m.vocab, h}, rng);
    return t;
}

inline void write_text(const std::filesystem::path& p, const std::string& s) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << s;
}

inline std::string config_json(const model_spec& m) {
    return "{\"model_type\":\"" + m.type + "\",\"hidden_size\":" + std::to_string(m.hidden) +
           ",\"intermediate_size\":" + std::to_string(m.intermediate) +
           ",\"num_hidden_layers\":" + std::to_string(m.layers) +
           ",\"num_attention_heads\":" + std::to_string(m.heads) +
           ",\"num_key_value_heads\":" + std::to_string(m.kv_heads) +
           ",\"head_dim\":" + std::to_string(m.head_dim) +
           ",\"vocab_size\":" + std::to_string(m.vocab) +
           ",\"tie_word_embeddings\":" + (m.tied ? "true" : "false") +
           ",\"torch_dtype\":\"bfloat16\"}";
}

// Writes `config` as config.json, `shards` shards (names spread round-robin, each with
// `prefix`) and the index.
inline void write_checkpoint(const std::filesystem::path& dir, const std::string& config,
                             std::uint32_t shards, const std::string& prefix,
                             const std::map<std::string, source_tensor>& tensors) {
    write_text(dir / "config.json", config);
    std::vector<std::vector<const std::pair<const std::string, source_tensor>*>> per(shards);
    std::size_t i = 0;
    for (const auto& kv : tensors) per[i++ % shards].push_back(&kv);
    std::string weight_map;
    for (std::uint32_t s = 0; s < shards; ++s) {
        char file[64];
        std::snprintf(file, sizeof file, "model-%05u-of-%05u.safetensors", s + 1, shards);
        std::vector<std::string> full;
        for (const auto* kv : per[s]) full.push_back(prefix + kv->first);
        std::vector<tensor_data> data;
        for (std::size_t k = 0; k < per[s].size(); ++k) {
            const source_tensor& t = per[s][k]->second;
            data.push_back(tensor_data{full[k], dtype::bf16, shape::from(std::span(t.dims)),
                                       std::as_bytes(std::span(t.codes))});
            weight_map +=
                std::string(weight_map.empty() ? "" : ",") + "\"" + full[k] + "\":\"" + file + "\"";
        }
        save_file(dir / file, data);
    }
    write_text(dir / "model.safetensors.index.json",
               "{\"metadata\":{},\"weight_map\":{" + weight_map + "}}");
}

// Writes config.json, `m.shards` shards (names spread round-robin) and the index.
inline void write_checkpoint(const std::filesystem::path& dir, const model_spec& m,
                             const std::map<std::string, source_tensor>& tensors) {
    write_checkpoint(dir, config_json(m), m.shards, m.prefix, tensors);
}

// ---- expected slices, from the definitions ----

// Global row (or column) indices of a rank's part; nullopt = a zero (padding) row.
using index_list = std::vector<std::optional<std::uint64_t>>;

inline index_list range(std::uint64_t a, std::uint64_t b) {
    index_list v;
    for (auto i = a; i < b; ++i) v.push_back(i);
    return v;
}
inline index_list operator+(index_list a, const index_list& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}
inline index_list shifted(index_list a, std::uint64_t by) {
    for (auto& i : a)
        if (i) *i += by;
    return a;
}

inline index_list even_split(std::uint64_t n, std::uint32_t w, std::uint32_t r) {
    return range(r * n / w, (r + 1) * n / w);
}

inline index_list padded_split(std::uint64_t n, std::uint64_t multiple, std::uint32_t w,
                               std::uint32_t r) {
    const std::uint64_t padded = (n + multiple - 1) / multiple * multiple, per = padded / w;
    index_list v;
    for (auto i = r * per; i < (r + 1) * per; ++i)
        v.push_back(i < n ? std::optional<std::uint64_t>(i) : std::nullopt);
    return v;
}

struct heads {
    std::vector<std::uint64_t> q, kv;
};

// vLLM/Megatron: contiguous query heads; KV heads split, or one replicated per w/KV ranks.
// optimum-neuron: the KV heads repeated m = max(1, w/KV) times (position p is KV head p % KV,
// the (p / KV)-th replica), KV*m/w positions per rank; each position brings its KV head's
// query group's matching share.
inline heads select_heads(const model_spec& m, bool interleaved, std::uint32_t w, std::uint32_t r) {
    heads s;
    const std::uint64_t H = m.heads, KV = m.kv_heads, hr = H / w;
    if (!interleaved) {
        for (auto h = r * hr; h < (r + 1) * hr; ++h) s.q.push_back(h);
        if (w >= KV)
            s.kv.push_back(r / (w / KV));
        else
            for (auto k = r * (KV / w); k < (r + 1) * (KV / w); ++k) s.kv.push_back(k);
        return s;
    }
    const std::uint64_t mult = std::max<std::uint64_t>(1, w / KV), per_rank = KV * mult / w;
    const std::uint64_t group = H / KV, share = hr / per_rank;
    for (std::uint64_t j = 0; j < per_rank; ++j) {
        const std::uint64_t p = r * per_rank + j, k = p % KV, replica = p / KV;
        s.kv.push_back(k);
        for (std::uint64_t x = 0; x < share; ++x) s.q.push_back(k * group + replica * share + x);
    }
    return s;
}

inline index_list head_rows(const std::vector<std::uint64_t>& hs, std::uint64_t d) {
    index_list v;
    for (auto h : hs) v = v + range(h * d, (h + 1) * d);
    return v;
}

// The local tensor's bytes: rows x cols picked from the source (nullopt rows are zeros).
inline std::vector<std::uint16_t> take(const source_tensor& t, const index_list& rows,
                                       const index_list& cols) {
    std::vector<std::uint16_t> out;
    out.reserve(rows.size() * cols.size());
    for (const auto& r : rows)
        for (const auto& c : cols) out.push_back(r && c ? t.codes[*r * t.cols() + *c] : 0);
    return out;
}

// Rows and columns of a parameter (schema name) for rank r of w.
struct expected_cut {
    index_list rows, cols;
};

inline expected_cut expected_for(const std::string& name, const model_spec& m,
                                 const source_tensor& t, bool interleaved, std::uint32_t w,
                                 std::uint32_t r) {
    const heads hs = select_heads(m, interleaved, w, r);
    const std::uint64_t d = m.head_dim, q = m.heads * d, kv = m.kv_heads * d;
    const index_list all_rows = range(0, t.rows()), all_cols = range(0, t.cols());
    auto ends = [&](const char* s) { return name.ends_with(s); };
    if (ends("embed_tokens.weight") || name == "lm_head.weight")
        return {padded_split(t.rows(), 64, w, r), all_cols};
    // fused names first: "qkv_proj" ends like "v_proj", "gate_up_proj" like "up_proj"
    if (ends("qkv_proj.weight"))
        return {head_rows(hs.q, d) + shifted(head_rows(hs.kv, d), q) +
                    shifted(head_rows(hs.kv, d), q + kv),
                all_cols};
    if (ends("gate_up_proj.weight"))
        return {even_split(m.intermediate, w, r) +
                    shifted(even_split(m.intermediate, w, r), m.intermediate),
                all_cols};
    if (ends("q_proj.weight") || ends("q_proj.bias")) return {head_rows(hs.q, d), all_cols};
    if (ends("k_proj.weight") || ends("v_proj.weight") || ends("k_proj.bias") ||
        ends("v_proj.bias"))
        return {head_rows(hs.kv, d), all_cols};
    if (ends("o_proj.weight")) return {all_rows, head_rows(hs.q, d)};
    if (ends("gate_proj.weight") || ends("up_proj.weight"))
        return {even_split(t.rows(), w, r), all_cols};
    if (ends("down_proj.weight")) return {all_rows, even_split(t.cols(), w, r)};
    return {all_rows, all_cols};  // norms: replicated
}

}  // namespace safeshard::test
