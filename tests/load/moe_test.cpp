// Mixtures of experts: plan and load of small random checkpoints with the real names of each
// family (mixtral, qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3), every rank of worlds 1-8
// under ep 1, 2 and world, both placements, compared with slices computed here from the
// definitions (issue text and vLLM's determine_expert_map), not with the library's algebra.
#include <doctest/doctest.h>
#include <simdjson.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "../support/expect_error.hpp"
#include "../support/run_tool.hpp"
#include "model_gen.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"
#include "safeshard/save/export.hpp"
#include "safeshard/save/merge.hpp"

using namespace safeshard;
using namespace safeshard::test;

namespace {

// The sizes of a small mixture; every split below divides among 8 ranks.
struct moe_model {
    std::string type;
    std::uint64_t layers = 3, hidden = 16, heads = 8, kv_heads = 2, head_dim = 4, vocab = 40;
    std::uint64_t intermediate = 32;      // dense layers
    std::uint64_t experts = 6;            // not a multiple of 4: linear placement is uneven
    std::uint64_t moe_intermediate = 16;  // per expert
    std::uint64_t shared = 16;            // the shared expert(s)
    // deepseek: MLA and the layer rules
    std::uint64_t q_lora = 12, kv_lora = 8, nope = 4, rope = 2, v = 4;
    std::uint64_t first_k_dense = 1, mtp = 1;
    bool q_lora_given = true;
    std::vector<std::uint64_t> mlp_only{};  // qwen: dense layers

    [[nodiscard]] bool deepseek() const { return type.starts_with("deepseek"); }
    [[nodiscard]] bool qwen() const { return type.starts_with("qwen"); }
    [[nodiscard]] bool sparse(std::uint64_t l) const {
        if (l >= layers) return true;  // a multi-token prediction layer
        if (deepseek()) return l >= first_k_dense;
        return std::find(mlp_only.begin(), mlp_only.end(), l) == mlp_only.end();
    }
};

std::string config_of(const moe_model& m) {
    std::string c = "{\"model_type\":\"" + m.type +
                    "\",\"hidden_size\":" + std::to_string(m.hidden) +
                    ",\"intermediate_size\":" + std::to_string(m.intermediate) +
                    ",\"num_hidden_layers\":" + std::to_string(m.layers) +
                    ",\"num_attention_heads\":" + std::to_string(m.heads) +
                    ",\"vocab_size\":" + std::to_string(m.vocab) +
                    ",\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\"";
    if (m.type == "mixtral") {
        c += ",\"num_key_value_heads\":" + std::to_string(m.kv_heads) +
             ",\"head_dim\":" + std::to_string(m.head_dim) +
             ",\"num_local_experts\":" + std::to_string(m.experts);
        // Mixtral's experts are intermediate_size wide.
        c.replace(c.find("\"intermediate_size\":" + std::to_string(m.intermediate)),
                  std::string("\"intermediate_size\":" + std::to_string(m.intermediate)).size(),
                  "\"intermediate_size\":" + std::to_string(m.moe_intermediate));
    } else if (m.qwen()) {
        c += ",\"num_key_value_heads\":" + std::to_string(m.kv_heads) +
             ",\"head_dim\":" + std::to_string(m.head_dim) +
             ",\"num_experts\":" + std::to_string(m.experts) +
             ",\"moe_intermediate_size\":" + std::to_string(m.moe_intermediate) +
             ",\"decoder_sparse_step\":1,\"mlp_only_layers\":[";
        for (std::size_t i = 0; i < m.mlp_only.size(); ++i)
            c += (i ? "," : "") + std::to_string(m.mlp_only[i]);
        c += "]";
        if (m.type == "qwen2_moe")
            c += ",\"shared_expert_intermediate_size\":" + std::to_string(m.shared);
    } else {
        c += ",\"num_key_value_heads\":" + std::to_string(m.heads) +
             ",\"n_routed_experts\":" + std::to_string(m.experts) +
             ",\"moe_intermediate_size\":" + std::to_string(m.moe_intermediate) +
             ",\"n_shared_experts\":" + std::to_string(m.shared / m.moe_intermediate) +
             ",\"first_k_dense_replace\":" + std::to_string(m.first_k_dense) +
             ",\"moe_layer_freq\":1,\"q_lora_rank\":" +
             (m.q_lora_given ? std::to_string(m.q_lora) : std::string("null")) +
             ",\"kv_lora_rank\":" + std::to_string(m.kv_lora) +
             ",\"qk_nope_head_dim\":" + std::to_string(m.nope) +
             ",\"qk_rope_head_dim\":" + std::to_string(m.rope) +
             ",\"v_head_dim\":" + std::to_string(m.v) +
             ",\"num_nextn_predict_layers\":" + std::to_string(m.type == "deepseek_v3" ? m.mtp : 0);
    }
    return c + "}";
}

// The tensors by the names of the published checkpoints (tests/data/moe/README.md).
std::map<std::string, source_tensor> tensors_of(const moe_model& m) {
    std::mt19937_64 rng(7);
    std::map<std::string, source_tensor> t;
    const std::uint64_t h = m.hidden, E = m.experts, I = m.moe_intermediate;
    t["model.embed_tokens.weight"] = random_tensor({m.vocab, h}, rng);
    t["model.norm.weight"] = random_tensor({h}, rng);
    t["lm_head.weight"] = random_tensor({m.vocab, h}, rng);
    const std::uint64_t total = m.layers + (m.type == "deepseek_v3" ? m.mtp : 0);
    for (std::uint64_t l = 0; l < total; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        t[p + "input_layernorm.weight"] = random_tensor({h}, rng);
        t[p + "post_attention_layernorm.weight"] = random_tensor({h}, rng);
        if (m.deepseek()) {
            const std::uint64_t H = m.heads;
            if (m.q_lora_given) {
                t[p + "self_attn.q_a_proj.weight"] = random_tensor({m.q_lora, h}, rng);
                t[p + "self_attn.q_a_layernorm.weight"] = random_tensor({m.q_lora}, rng);
                t[p + "self_attn.q_b_proj.weight"] =
                    random_tensor({H * (m.nope + m.rope), m.q_lora}, rng);
            } else {
                t[p + "self_attn.q_proj.weight"] = random_tensor({H * (m.nope + m.rope), h}, rng);
            }
            t[p + "self_attn.kv_a_proj_with_mqa.weight"] =
                random_tensor({m.kv_lora + m.rope, h}, rng);
            t[p + "self_attn.kv_a_layernorm.weight"] = random_tensor({m.kv_lora}, rng);
            t[p + "self_attn.kv_b_proj.weight"] =
                random_tensor({H * (m.nope + m.v), m.kv_lora}, rng);
            t[p + "self_attn.o_proj.weight"] = random_tensor({h, H * m.v}, rng);
        } else {
            const std::uint64_t q = m.heads * m.head_dim, kv = m.kv_heads * m.head_dim;
            t[p + "self_attn.q_proj.weight"] = random_tensor({q, h}, rng);
            t[p + "self_attn.k_proj.weight"] = random_tensor({kv, h}, rng);
            t[p + "self_attn.v_proj.weight"] = random_tensor({kv, h}, rng);
            t[p + "self_attn.o_proj.weight"] = random_tensor({h, q}, rng);
            if (m.type == "qwen2_moe") {
                t[p + "self_attn.q_proj.bias"] = random_tensor({q}, rng);
                t[p + "self_attn.k_proj.bias"] = random_tensor({kv}, rng);
                t[p + "self_attn.v_proj.bias"] = random_tensor({kv}, rng);
            }
            if (m.type == "qwen3_moe") {
                t[p + "self_attn.q_norm.weight"] = random_tensor({m.head_dim}, rng);
                t[p + "self_attn.k_norm.weight"] = random_tensor({m.head_dim}, rng);
            }
        }
        if (!m.sparse(l)) {
            t[p + "mlp.gate_proj.weight"] = random_tensor({m.intermediate, h}, rng);
            t[p + "mlp.up_proj.weight"] = random_tensor({m.intermediate, h}, rng);
            t[p + "mlp.down_proj.weight"] = random_tensor({h, m.intermediate}, rng);
        } else if (m.type == "mixtral") {
            t[p + "block_sparse_moe.gate.weight"] = random_tensor({E, h}, rng);
            for (std::uint64_t e = 0; e < E; ++e) {
                const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
                t[x + "w1.weight"] = random_tensor({I, h}, rng);
                t[x + "w3.weight"] = random_tensor({I, h}, rng);
                t[x + "w2.weight"] = random_tensor({h, I}, rng);
            }
        } else {
            t[p + "mlp.gate.weight"] = random_tensor({E, h}, rng);
            if (m.type == "deepseek_v3")
                t[p + "mlp.gate.e_score_correction_bias"] = random_tensor({E}, rng);
            for (std::uint64_t e = 0; e < E; ++e) {
                const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
                t[x + "gate_proj.weight"] = random_tensor({I, h}, rng);
                t[x + "up_proj.weight"] = random_tensor({I, h}, rng);
                t[x + "down_proj.weight"] = random_tensor({h, I}, rng);
            }
            const std::string shared = m.deepseek() ? "mlp.shared_experts." : "mlp.shared_expert.";
            if (m.deepseek() || m.type == "qwen2_moe") {
                t[p + shared + "gate_proj.weight"] = random_tensor({m.shared, h}, rng);
                t[p + shared + "up_proj.weight"] = random_tensor({m.shared, h}, rng);
                t[p + shared + "down_proj.weight"] = random_tensor({h, m.shared}, rng);
            }
            if (m.type == "qwen2_moe")
                t[p + "mlp.shared_expert_gate.weight"] = random_tensor({1, h}, rng);
        }
        if (l >= m.layers) {  // DeepSeek-V3's multi-token prediction layer
            t[p + "enorm.weight"] = random_tensor({h}, rng);
            t[p + "hnorm.weight"] = random_tensor({h}, rng);
            t[p + "eh_proj.weight"] = random_tensor({h, 2 * h}, rng);
            t[p + "embed_tokens.weight"] = random_tensor({m.vocab, h}, rng);
            t[p + "shared_head.norm.weight"] = random_tensor({h}, rng);
            t[p + "shared_head.head.weight"] = random_tensor({m.vocab, h}, rng);
        }
    }
    return t;
}

// The expert group that holds expert e: linear gives base + 1 experts to each of the first
// E % ep groups, then base each (vLLM's determine_expert_map); round robin e % ep.
std::uint32_t owner(std::uint64_t e, std::uint64_t E, std::uint32_t ep, bool round_robin) {
    if (round_robin) return static_cast<std::uint32_t>(e % ep);
    std::uint64_t start = 0;
    for (std::uint32_t g = 0; g < ep; ++g) {
        const std::uint64_t count = E / ep + (g < E % ep ? 1 : 0);
        if (e < start + count) return g;
        start += count;
    }
    FAIL("expert beyond the count");
    return 0;
}

// The expert index in a name ("...experts.5.w1.weight" -> 5), if any.
std::optional<std::uint64_t> expert_in(const std::string& name) {
    const auto at = name.find(".experts.");
    if (at == std::string::npos) return std::nullopt;
    return std::stoull(name.substr(at + 9));
}

// ep expert groups, placed linearly or round robin.
expert_parallel spread(std::uint32_t ep, bool round_robin) {
    return {.ep = ep,
            .placement = round_robin ? expert_placement::round_robin : expert_placement::linear};
}

// The export of a world of 4 under `ep` into dir/ex<ep>[rr].
std::filesystem::path export_for_4(const checkpoint& in, const std::filesystem::path& dir,
                                   std::uint32_t ep, bool rr, export_report* rep = nullptr) {
    export_options o;
    o.world = 4;
    o.experts = spread(ep, rr);
    const auto ex = dir / ("ex" + std::to_string(ep) + (rr ? "rr" : ""));
    const export_report r = export_checkpoint(in, ex, o);
    if (rep) *rep = r;
    return ex;
}

struct rank_of {
    std::uint32_t r, w, ep;
    bool round_robin;
    [[nodiscard]] std::uint32_t ways() const { return w / ep; }
    [[nodiscard]] std::uint32_t group() const { return r / ways(); }
    [[nodiscard]] std::uint32_t position() const { return r % ways(); }
};

// Rows and columns of `name` on the rank, from the definitions.
expected_cut cut_of(const std::string& name, const moe_model& m, const source_tensor& t,
                    const rank_of& k) {
    const index_list rows = range(0, t.rows()), cols = range(0, t.cols());
    auto ends = [&](const char* s) { return name.ends_with(s); };
    if (expert_in(name)) {  // within the expert group
        if (ends("w2.weight") || ends("down_proj.weight"))
            return {rows, even_split(t.cols(), k.ways(), k.position())};
        return {even_split(t.rows(), k.ways(), k.position()), cols};
    }
    if (ends("embed_tokens.weight") || ends("lm_head.weight") || ends("shared_head.head.weight"))
        return {test::padded_split(t.rows(), 64, k.w, k.r), cols};
    if (m.deepseek()) {  // whole heads: heads / w per rank
        const std::uint64_t hr = m.heads / k.w;
        std::vector<std::uint64_t> hs;
        for (auto hh = k.r * hr; hh < (k.r + 1) * hr; ++hh) hs.push_back(hh);
        if (ends("q_b_proj.weight") || ends("self_attn.q_proj.weight"))
            return {head_rows(hs, m.nope + m.rope), cols};
        if (ends("kv_b_proj.weight")) return {head_rows(hs, m.nope + m.v), cols};
        if (ends("o_proj.weight")) return {rows, head_rows(hs, m.v)};
    } else {
        model_spec s;
        s.heads = m.heads;
        s.kv_heads = m.kv_heads;
        s.head_dim = m.head_dim;
        s.hidden = m.hidden;
        if (ends("q_proj.weight") || ends("k_proj.weight") || ends("v_proj.weight") ||
            ends("o_proj.weight") || ends("proj.bias"))
            return expected_for(name, s, t, false, k.w, k.r);
    }
    if (ends("gate_proj.weight") || ends("up_proj.weight"))  // dense and shared MLPs
        return {even_split(t.rows(), k.w, k.r), cols};
    if (ends("down_proj.weight")) return {rows, even_split(t.cols(), k.w, k.r)};
    return {rows, cols};  // norms, routers, the score bias, eh_proj, shared_expert_gate
}

std::vector<std::uint16_t> codes_of(const host_tensor& t) {
    std::vector<std::uint16_t> v(t.size_bytes() / 2);
    std::memcpy(v.data(), t.data(), t.size_bytes());
    return v;
}

// Every rank of `w` under `ep`: the names it holds (its experts only), their bytes, and what
// it reads. With `exported`, `dir` is an export for that world and each rank loads its own
// rank folder (whose padding rows are stored, and read).
void check_world(const std::filesystem::path& dir, const moe_model& m,
                 const std::map<std::string, source_tensor>& src, std::uint32_t w, std::uint32_t ep,
                 bool round_robin, bool mtp = false, bool exported = false) {
    std::set<std::uint64_t> held_by_someone;
    for (std::uint32_t r = 0; r < w; ++r) {
        const rank_of k{r, w, ep, round_robin};
        CAPTURE(m.type);
        CAPTURE(w);
        CAPTURE(ep);
        CAPTURE(round_robin);
        CAPTURE(r);
        load_options o{.rank = r, .world = w, .experts = spread(ep, round_robin)};
        o.plan.schema.multi_token_prediction = mtp;
        auto model = load<host_tensor>((exported ? dir / export_rank_folder(r) : dir).string(), o);
        std::set<std::string> want;
        for (const auto& [name, t] : src) {
            const auto e = expert_in(name);
            if (e && owner(*e, m.experts, ep, round_robin) != k.group()) continue;
            if (!mtp && name.starts_with("model.layers." + std::to_string(m.layers) + "."))
                continue;
            want.insert(name);
        }
        const std::set<std::string> got(model.names().begin(), model.names().end());
        CHECK(got == want);
        std::vector<std::uint64_t> held;
        for (std::uint64_t e = 0; e < m.experts; ++e)
            if (owner(e, m.experts, ep, round_robin) == k.group()) held.push_back(e);
        CHECK(std::vector<std::uint64_t>(model.held_experts().begin(),
                                         model.held_experts().end()) == held);
        CHECK(model.experts() == m.experts);
        held_by_someone.insert(held.begin(), held.end());
        std::uint64_t padding = 0;
        for (const auto& name : model.names()) {
            CAPTURE(name);
            const source_tensor& t = src.at(name);
            const expected_cut cut = cut_of(name, m, t, k);
            const host_tensor& x = model.at(name);
            REQUIRE(x.size_bytes() == cut.rows.size() * cut.cols.size() * 2);
            CHECK(codes_of(x) == take(t, cut.rows, cut.cols));
            for (const auto& row : cut.rows) padding += row ? 0 : cut.cols.size() * 2;
        }
        // The rank reads its own bytes only: no other group's expert is touched.
        CHECK(model.report.bytes_read + (exported ? 0 : padding) == model.report.rank_bytes);
    }
    CHECK(held_by_someone.size() == m.experts);
}

std::vector<moe_model> families() {
    std::vector<moe_model> v;
    v.push_back({.type = "mixtral"});
    v.push_back({.type = "qwen2_moe", .mlp_only = {1}});
    v.push_back({.type = "qwen3_moe", .mlp_only = {0}});
    v.push_back({.type = "deepseek_v2", .q_lora_given = false});
    v.push_back({.type = "deepseek_v3"});
    return v;
}

// The names of expert e's gate, up and down projections in layer l (one tensor per expert).
std::array<std::string, 3> expert_names(const moe_model& m, std::uint64_t l, std::uint64_t e) {
    const std::string p = "model.layers." + std::to_string(l) +
                          (m.type == "mixtral" ? ".block_sparse_moe.experts." : ".mlp.experts.") +
                          std::to_string(e) + ".";
    if (m.type == "mixtral") return {p + "w1.weight", p + "w3.weight", p + "w2.weight"};
    return {p + "gate_proj.weight", p + "up_proj.weight", p + "down_proj.weight"};
}

// The same model with each layer's experts stacked as transformers v5 saves them
// (transformers' MoE "fused experts" conversion, vLLM #36997): mlp.experts.gate_up_proj
// [E, 2I, H] (each expert's gate rows, then its up rows) and mlp.experts.down_proj [E, H, I];
// Mixtral's router moves to mlp.gate.
std::map<std::string, source_tensor> stacked_form(const moe_model& m,
                                                  const std::map<std::string, source_tensor>& src) {
    std::map<std::string, source_tensor> out;
    for (const auto& [name, t] : src) {
        if (expert_in(name)) continue;
        std::string n = name;
        if (const auto at = n.find(".block_sparse_moe.gate."); at != std::string::npos)
            n.replace(at, std::string_view(".block_sparse_moe.gate").size(), ".mlp.gate");
        out[n] = t;
    }
    for (std::uint64_t l = 0; l <= m.layers; ++l) {
        if (!src.contains(expert_names(m, l, 0)[0])) continue;
        const std::string p = "model.layers." + std::to_string(l) + ".mlp.experts.";
        source_tensor gate_up{{m.experts, 2 * m.moe_intermediate, m.hidden}, {}};
        source_tensor down{{m.experts, m.hidden, m.moe_intermediate}, {}};
        for (std::uint64_t e = 0; e < m.experts; ++e) {
            const auto n = expert_names(m, l, e);
            for (int k : {0, 1})
                gate_up.codes.insert(gate_up.codes.end(), src.at(n[k]).codes.begin(),
                                     src.at(n[k]).codes.end());
            down.codes.insert(down.codes.end(), src.at(n[2]).codes.begin(),
                              src.at(n[2]).codes.end());
        }
        out[p + "gate_up_proj"] = gate_up;
        out[p + "down_proj"] = down;
    }
    return out;
}

// A merge of an export of `form` gives back every tensor of it, bit for bit, but the
// multi-token prediction layer (left out by default), and nothing else.
void check_merged(const std::string& merged, const moe_model& m,
                  const std::map<std::string, source_tensor>& form) {
    const checkpoint back = checkpoint::open(merged);
    std::size_t kept = 0;
    for (const auto& [name, t] : form) {
        if (name.starts_with("model.layers." + std::to_string(m.layers) + ".")) continue;
        CAPTURE(name);
        ++kept;
        const located_tensor l = back.tensor(name);
        CHECK(l.tensor.shape() == shape::from(std::span(t.dims)));
        std::vector<std::uint16_t> got(l.tensor.byte_size() / 2);
        std::memcpy(got.data(), l.tensor.bytes().data(), l.tensor.byte_size());
        CHECK(got == t.codes);
    }
    CHECK(back.tensor_count() == kept);
}

// Every rank of `w` under `ep` loading the stacked form: each stacked tensor holds the rank's
// experts in order, each expert's slab the rows and columns the per-expert rules give its
// tensors (gate's then up's for gate_up_proj); everything else as in the per-expert form.
void check_stacked_world(const std::filesystem::path& dir, const moe_model& m,
                         const std::map<std::string, source_tensor>& src, std::uint32_t w,
                         std::uint32_t ep, bool round_robin, bool exported = false) {
    const auto stacked = stacked_form(m, src);
    for (std::uint32_t r = 0; r < w; ++r) {
        const rank_of k{r, w, ep, round_robin};
        CAPTURE(m.type);
        CAPTURE(w);
        CAPTURE(ep);
        CAPTURE(round_robin);
        CAPTURE(r);
        const load_options o{.rank = r, .world = w, .experts = spread(ep, round_robin)};
        auto model = load<host_tensor>((exported ? dir / export_rank_folder(r) : dir).string(), o);
        std::vector<std::uint64_t> held;
        for (std::uint64_t e = 0; e < m.experts; ++e)
            if (owner(e, m.experts, ep, round_robin) == k.group()) held.push_back(e);
        std::set<std::string> want;
        for (const auto& [name, t] : stacked)
            if (!name.starts_with("model.layers." + std::to_string(m.layers) + "."))
                want.insert(name);
        CHECK(std::set<std::string>(model.names().begin(), model.names().end()) == want);
        std::uint64_t padding = 0;
        for (const auto& name : model.names()) {
            CAPTURE(name);
            const host_tensor& x = model.at(name);
            std::vector<std::uint16_t> expect;
            auto piece = [&](const std::string& n) {
                const source_tensor& t = src.at(n);
                const expected_cut cut = cut_of(n, m, t, k);
                const auto v = take(t, cut.rows, cut.cols);
                expect.insert(expect.end(), v.begin(), v.end());
            };
            const bool gate_up = name.ends_with(".experts.gate_up_proj");
            if (gate_up || name.ends_with(".experts.down_proj")) {
                const std::uint64_t l = std::stoull(name.substr(13));
                for (const std::uint64_t e : held) {
                    const auto n = expert_names(m, l, e);
                    if (gate_up) {
                        piece(n[0]);
                        piece(n[1]);
                    } else {
                        piece(n[2]);
                    }
                }
                CHECK(x.shape()[0] == held.size());
            } else {
                std::string n = name;
                if (m.type == "mixtral" && n.ends_with(".mlp.gate.weight"))
                    n.replace(n.find(".mlp.gate."), 10, ".block_sparse_moe.gate.");
                const source_tensor& t = src.at(n);
                const expected_cut cut = cut_of(n, m, t, k);
                expect = take(t, cut.rows, cut.cols);
                for (const auto& row : cut.rows) padding += row ? 0 : cut.cols.size() * 2;
            }
            CHECK(codes_of(x) == expect);
        }
        // Only the rank's experts are read.
        CHECK(model.report.bytes_read + (exported ? 0 : padding) == model.report.rank_bytes);
        CHECK(std::vector<std::uint64_t>(model.held_experts().begin(),
                                         model.held_experts().end()) == held);
    }
}

}  // namespace

TEST_CASE("mixtures of experts: every rank of worlds 1-8, ep 1, 2 and world, both placements") {
    for (const moe_model& m : families()) {
        temp_folder dir;
        const auto src = tensors_of(m);
        write_checkpoint(dir.path(), config_of(m), 3, "", src);
        for (std::uint32_t w : {1u, 2u, 4u, 6u, 8u})
            for (std::uint32_t ep : {1u, 2u, w}) {
                if (w % ep != 0 || ep > m.experts) continue;
                if (m.deepseek() && m.heads % w != 0) continue;  // whole heads
                if (!m.deepseek() && (w == 6)) continue;         // 8 query heads over 6 ranks
                if (m.moe_intermediate % (w / ep) != 0 || m.intermediate % w != 0 ||
                    m.shared % w != 0)
                    continue;
                for (bool rr : {false, true}) check_world(dir.path(), m, src, w, ep, rr);
            }
    }
}

TEST_CASE("stacked experts (transformers v5): every rank of worlds 1-8, ep 1, 2 and world") {
    for (const moe_model& m : families()) {
        temp_folder dir;
        const auto src = tensors_of(m);
        write_checkpoint(dir.path(), config_of(m), 3, "", stacked_form(m, src));
        for (std::uint32_t w : {1u, 2u, 4u, 6u, 8u})
            for (std::uint32_t ep : {1u, 2u, w}) {
                if (w % ep != 0 || ep > m.experts) continue;
                if (m.deepseek() && m.heads % w != 0) continue;
                if (!m.deepseek() && (w == 6)) continue;
                if (m.moe_intermediate % (w / ep) != 0 || m.intermediate % w != 0 ||
                    m.shared % w != 0)
                    continue;
                for (bool rr : {false, true}) check_stacked_world(dir.path(), m, src, w, ep, rr);
            }
    }
}

TEST_CASE("stacked experts: a stack of other than the layer's experts is refused, naming it") {
    const moe_model m{.type = "qwen3_moe", .mlp_only = {0}};
    auto st = stacked_form(m, tensors_of(m));
    auto& down = st.at("model.layers.1.mlp.experts.down_proj");
    down.dims[0] = m.experts - 1;
    down.codes.resize(down.codes.size() / m.experts * (m.experts - 1));
    temp_folder dir;
    write_checkpoint(dir.path(), config_of(m), 2, "", st);
    const checkpoint c = checkpoint::open(dir.path().string());
    const error e = expect_error([&] { (void)load_plan::build(c, {0, 1}); });
    CHECK(e.message().find("model.layers.1.mlp.experts.down_proj") != std::string::npos);
    // config.json's shapes say it first; the plan's own check says it for a given schema.
    schema_options so;
    so.experts_stored = schema_options::expert_storage::stacked;
    model_config cfg = checkpoint::open(dir.path().string()).load_config()->config();
    const auto e2 = expect_error(errc::shape_mismatch, [&] {
        (void)load_plan::build(c, make_schema(cfg, so), {0, 1});
    });
    CHECK(e2.message().find("stacks the layer's 6 experts on dim 0") != std::string::npos);
}

TEST_CASE("stacked experts: exported per rank under ep, loaded per rank, merged bit-exact") {
    for (const moe_model& m : families()) {
        temp_folder dir;
        const auto src = tensors_of(m);
        const auto stacked = stacked_form(m, src);
        std::filesystem::create_directories(dir.path() / "in");
        write_checkpoint(dir.path() / "in", config_of(m), 3, "", stacked);
        const checkpoint in = checkpoint::open((dir.path() / "in").string());
        for (std::uint32_t ep : {1u, 2u, 4u})
            for (bool rr : {false, true}) {
                if (ep == 1 && rr) continue;
                CAPTURE(m.type);
                CAPTURE(ep);
                CAPTURE(rr);
                const auto ex = export_for_4(in, dir.path(), ep, rr);
                check_stacked_world(ex, m, src, 4, ep, rr, true);
                const auto merged = ex.string() + "-merged";
                (void)merge_export(ex, merged);
                check_merged(merged, m, stacked);
            }
    }
}

namespace {

// The engine's fused experts (vLLM's FusedMoE): per layer with experts, <module>.w13_weight
// [E_local, 2·I_local, H] with each held expert's gate rows, then its up rows (fused_moe/layer.py
// loads gate as w1 into the first half, up as w3 into the second), and <module>.w2_weight
// [E_local, H, I_local] with its down columns. The module is mlp.experts, Mixtral's per-expert
// block_sparse_moe.experts. `from_stacked`: the checkpoint is the stacked form. Everything else
// is cut as that form's own tensors.
void check_fused_world(const std::filesystem::path& dir, const moe_model& m,
                       const std::map<std::string, source_tensor>& src, std::uint32_t w,
                       std::uint32_t ep, bool round_robin, bool from_stacked,
                       bool exported = false) {
    const auto form = from_stacked ? stacked_form(m, src) : src;
    const std::string module =
        m.type == "mixtral" && !from_stacked ? ".block_sparse_moe.experts." : ".mlp.experts.";
    for (std::uint32_t r = 0; r < w; ++r) {
        const rank_of k{r, w, ep, round_robin};
        CAPTURE(m.type);
        CAPTURE(from_stacked);
        CAPTURE(w);
        CAPTURE(ep);
        CAPTURE(round_robin);
        CAPTURE(r);
        load_options o{.rank = r, .world = w, .experts = spread(ep, round_robin)};
        o.plan.schema.fuse_experts = !exported;
        auto model = load<host_tensor>((exported ? dir / export_rank_folder(r) : dir).string(), o);
        std::vector<std::uint64_t> held;
        for (std::uint64_t e = 0; e < m.experts; ++e)
            if (owner(e, m.experts, ep, round_robin) == k.group()) held.push_back(e);
        std::set<std::string> want;
        for (const auto& [name, t] : form) {
            if (name.starts_with("model.layers." + std::to_string(m.layers) + ".")) continue;
            if (name.ends_with(".experts.gate_up_proj") || name.ends_with(".experts.down_proj") ||
                expert_in(name))
                continue;
            want.insert(name);
        }
        for (std::uint64_t l = 0; l < m.layers; ++l)
            if (m.sparse(l))
                for (const char* f : {"w13_weight", "w2_weight"})
                    want.insert("model.layers." + std::to_string(l) + module + f);
        CHECK(std::set<std::string>(model.names().begin(), model.names().end()) == want);
        std::uint64_t padding = 0;
        for (const auto& name : model.names()) {
            CAPTURE(name);
            const host_tensor& x = model.at(name);
            std::vector<std::uint16_t> expect;
            auto piece = [&](const std::string& n) {
                const source_tensor& t = src.at(n);
                const expected_cut cut = cut_of(n, m, t, k);
                const auto v = take(t, cut.rows, cut.cols);
                expect.insert(expect.end(), v.begin(), v.end());
            };
            const bool w13 = name.ends_with(module + "w13_weight");
            if (w13 || name.ends_with(module + "w2_weight")) {
                const std::uint64_t l = std::stoull(name.substr(13));
                const std::uint64_t I = m.moe_intermediate / k.ways();
                for (const std::uint64_t e : held) {
                    const auto n = expert_names(m, l, e);
                    if (w13) {
                        piece(n[0]);
                        piece(n[1]);
                    } else {
                        piece(n[2]);
                    }
                }
                CHECK(x.shape() == (w13 ? shape{held.size(), 2 * I, m.hidden}
                                        : shape{held.size(), m.hidden, I}));
            } else {
                std::string n = name;
                if (m.type == "mixtral" && n.ends_with(".mlp.gate.weight"))
                    n.replace(n.find(".mlp.gate."), 10, ".block_sparse_moe.gate.");
                const source_tensor& t = src.at(n);
                const expected_cut cut = cut_of(n, m, t, k);
                expect = take(t, cut.rows, cut.cols);
                for (const auto& row : cut.rows) padding += row ? 0 : cut.cols.size() * 2;
            }
            CHECK(codes_of(x) == expect);
        }
        // Only the rank's experts are read, once: the copy fills the fused tensors itself.
        CHECK(model.report.bytes_read + (exported ? 0 : padding) == model.report.rank_bytes);
    }
}

// Worlds 1-8 under ep 1, 2 and world that every cut divides.
template <class F>
void each_world(const moe_model& m, F&& f) {
    for (std::uint32_t w : {1u, 2u, 4u, 6u, 8u})
        for (std::uint32_t ep : {1u, 2u, w}) {
            if (w % ep != 0 || ep > m.experts) continue;
            if (m.deepseek() && m.heads % w != 0) continue;
            if (!m.deepseek() && (w == 6)) continue;
            if (m.moe_intermediate % (w / ep) != 0 || m.intermediate % w != 0 || m.shared % w != 0)
                continue;
            for (bool rr : {false, true}) f(w, ep, rr);
        }
}

}  // namespace

TEST_CASE("fused experts from one tensor per expert: every rank of worlds 1-8, ep 1, 2, world") {
    for (const moe_model& m : families()) {
        temp_folder dir;
        const auto src = tensors_of(m);
        write_checkpoint(dir.path(), config_of(m), 3, "", src);
        each_world(m, [&](std::uint32_t w, std::uint32_t ep, bool rr) {
            check_fused_world(dir.path(), m, src, w, ep, rr, false);
        });
    }
}

TEST_CASE("fused experts from stacked experts: every rank of worlds 1-8, ep 1, 2, world") {
    for (const moe_model& m : families()) {
        temp_folder dir;
        const auto src = tensors_of(m);
        write_checkpoint(dir.path(), config_of(m), 3, "", stacked_form(m, src));
        each_world(m, [&](std::uint32_t w, std::uint32_t ep, bool rr) {
            check_fused_world(dir.path(), m, src, w, ep, rr, true);
        });
    }
}

TEST_CASE("fused experts: exported per rank, loaded per rank, merged back to the original form") {
    for (const moe_model& m : families())
        for (bool from_stacked : {false, true}) {
            temp_folder dir;
            const auto src = tensors_of(m);
            const auto form = from_stacked ? stacked_form(m, src) : src;
            std::filesystem::create_directories(dir.path() / "in");
            write_checkpoint(dir.path() / "in", config_of(m), 3, "", form);
            const checkpoint in = checkpoint::open((dir.path() / "in").string());
            for (std::uint32_t ep : {1u, 2u, 4u})
                for (bool rr : {false, true}) {
                    if (ep == 1 && rr) continue;
                    CAPTURE(m.type);
                    CAPTURE(from_stacked);
                    CAPTURE(ep);
                    CAPTURE(rr);
                    export_options o;
                    o.world = 4;
                    o.experts = spread(ep, rr);
                    o.plan.schema.fuse_experts = true;
                    const auto ex = dir.path() / ("ex" + std::to_string(ep) + (rr ? "rr" : ""));
                    (void)export_checkpoint(in, ex, o);
                    check_fused_world(ex, m, src, 4, ep, rr, from_stacked, true);
                    const auto merged = ex.string() + "-merged";
                    const merge_report rep = merge_export(ex, merged);
                    check_merged(merged, m, form);
                    // Each expert's tensors are read from its slab alone: no rank tensor is
                    // read once per expert (w13 twice: once for gate, once for up).
                    std::uint64_t stored = 0;
                    for (std::uint32_t r = 0; r < 4; ++r) {
                        const checkpoint rank = checkpoint::open_path(ex / export_rank_folder(r));
                        for (const auto& f : rank.files())
                            for (const tensor_view t : f.view) stored += t.byte_size();
                    }
                    CHECK(rep.bytes_read <= 2 * stored);
                }
        }
}

TEST_CASE("fused experts: refused where a transpose or no experts, or experts that disagree") {
    // gpt-oss and Llama-4 store [E, H, 2I]: w13_weight [E, 2I, H] needs a transpose.
    for (const char* type : {"gpt_oss", "llama4_text"}) {
        CAPTURE(type);
        model_config c;
        c.model_type = type;
        c.hidden_size = 16;
        c.intermediate_size = 16;
        c.num_hidden_layers = 2;
        c.num_attention_heads = 4;
        c.num_key_value_heads = 2;
        c.vocab_size = 64;
        c.num_experts = 4;
        schema_options so;
        so.fuse_experts = true;
        const auto e = expect_error(errc::invalid_argument, [&] { (void)make_schema(c, so); });
        CHECK(e.message().find("fuse_experts: " + std::string(type)) != std::string::npos);
        CHECK(e.message().find("transpose") != std::string::npos);
        so.fuse_experts = false;
        CHECK(make_schema(c, so).size() > 0);
    }
    // A dense model has no experts to fuse.
    {
        model_config c;
        c.model_type = "llama";
        c.hidden_size = 16;
        c.intermediate_size = 16;
        c.num_hidden_layers = 2;
        c.num_attention_heads = 4;
        c.num_key_value_heads = 2;
        c.vocab_size = 64;
        schema_options so;
        so.fuse_experts = true;
        const auto e = expect_error(errc::invalid_argument, [&] { (void)make_schema(c, so); });
        CHECK(e.message().find("llama has no experts to fuse") != std::string::npos);
    }
    // The experts of a layer must agree in shape to stack (config.json's check is bypassed
    // with a schema given).
    const moe_model m{.type = "qwen3_moe", .mlp_only = {0}};
    auto src = tensors_of(m);
    auto& odd = src.at("model.layers.1.mlp.experts.3.up_proj.weight");
    odd.dims[0] = m.moe_intermediate * 2;
    odd.codes.resize(odd.codes.size() * 2);
    temp_folder dir;
    write_checkpoint(dir.path(), config_of(m), 2, "", src);
    const checkpoint c = checkpoint::open(dir.path().string());
    model_config cfg = c.load_config()->config();
    schema_options so;
    so.fuse_experts = true;
    so.experts_stored = schema_options::expert_storage::per_expert;
    const auto e = expect_error(errc::shape_mismatch, [&] {
        (void)load_plan::build(c, make_schema(cfg, so), {0, 1});
    });
    CHECK(e.message().find("model.layers.1.mlp.experts.w13_weight") != std::string::npos);
    CHECK(e.message().find("'model.layers.1.mlp.experts.3.up_proj.weight' is [32, 16]") !=
          std::string::npos);
    // A rank that does not hold expert 3 does not read it, and does not mind it (ep 2, linear:
    // experts 0-2 and 3-5).
    const load_plan p = load_plan::build(c, make_schema(cfg, so), {0, 2, {.ep = 2}});
    CHECK(p.find("model.layers.1.mlp.experts.w13_weight") != nullptr);
}

TEST_CASE(
    "fused experts: a pipeline stage leaves the other layers' experts unread, not unexpected") {
    const moe_model m{.type = "qwen3_moe", .mlp_only = {0}};
    temp_folder dir;
    write_checkpoint(dir.path(), config_of(m), 2, "", tensors_of(m));
    const checkpoint c = checkpoint::open(dir.path().string());
    plan_options o;
    o.schema.fuse_experts = true;
    o.schema.layer_begin = 2;  // the last layer only
    const load_plan p = load_plan::build(c, {0, 1}, o);
    CHECK(p.unexpected().empty());
    CHECK(p.find("model.layers.2.mlp.experts.w13_weight") != nullptr);
    CHECK(p.find("model.layers.1.mlp.experts.w13_weight") == nullptr);
    std::size_t skipped = 0;
    for (const auto& ig : p.ignored())
        if (ig.name.starts_with("model.layers.1.mlp.experts.")) {
            ++skipped;
            CHECK(ig.note == "outside this pipeline stage");
        }
    CHECK(skipped == 3 * m.experts);
}

TEST_CASE("fused experts: a missing expert's tensor is named") {
    const moe_model m{.type = "mixtral"};
    auto src = tensors_of(m);
    src.erase("model.layers.2.block_sparse_moe.experts.4.w3.weight");
    temp_folder dir;
    write_checkpoint(dir.path(), config_of(m), 2, "", src);
    const checkpoint c = checkpoint::open(dir.path().string());
    model_config cfg = c.load_config()->config();
    schema_options so;
    so.fuse_experts = true;
    so.experts_stored = schema_options::expert_storage::per_expert;
    const auto e = expect_error(errc::missing_tensor, [&] {
        (void)load_plan::build(c, make_schema(cfg, so), {0, 1});
    });
    CHECK(e.message().find("model.layers.2.block_sparse_moe.experts.4.w3.weight") !=
          std::string::npos);
}

TEST_CASE("mixtures of experts: the multi-token prediction layer, skipped or loaded") {
    const moe_model m{.type = "deepseek_v3"};
    temp_folder dir;
    const auto src = tensors_of(m);
    write_checkpoint(dir.path(), config_of(m), 2, "", src);
    // Skipped by default: reported as ignored, not unexpected.
    const checkpoint c = checkpoint::open(dir.path().string());
    const load_plan p = load_plan::build(c, {0, 2});
    CHECK(p.unexpected().empty());
    std::size_t mtp_ignored = 0;
    for (const auto& ig : p.ignored())
        if (ig.name.starts_with("model.layers.3.")) {
            ++mtp_ignored;
            CHECK(ig.note.find("multi-token prediction") != std::string::npos);
            CHECK(ig.left_out);
        }
    std::size_t mtp_tensors = 0;
    for (const auto& [name, t] : src) mtp_tensors += name.starts_with("model.layers.3.") ? 1 : 0;
    CHECK(mtp_ignored == mtp_tensors);
    CHECK(p.find("model.layers.3.enorm.weight") == nullptr);
    // Loaded with the option, cut like the rest (ep 2 of world 2).
    check_world(dir.path(), m, src, 2, 2, false, true);
}

TEST_CASE("mixtures of experts: exported per rank under ep, loaded per rank, merged bit-exact") {
    for (const moe_model& m : families()) {
        temp_folder dir;
        const auto src = tensors_of(m);
        std::filesystem::create_directories(dir.path() / "in");
        write_checkpoint(dir.path() / "in", config_of(m), 3, "", src);
        const checkpoint in = checkpoint::open((dir.path() / "in").string());
        for (std::uint32_t ep : {2u, 4u})
            for (bool rr : {false, true}) {
                CAPTURE(m.type);
                CAPTURE(ep);
                CAPTURE(rr);
                export_report rep;
                const auto ex = export_for_4(in, dir.path(), ep, rr, &rep);
                // The multi-token prediction layer is left out, as a load leaves it out.
                std::size_t mtp = 0;
                for (const auto& [name, t] : src)
                    mtp += name.starts_with("model.layers." + std::to_string(m.layers) + ".");
                CHECK(rep.left_out == mtp);
                // Each rank folder holds its rank's tensors: its own experts, cut in its group.
                check_world(ex, m, src, 4, ep, rr, false, true);
                // And loads only as the export's rank, experts spread the export's way.
                const auto e = expect_error(errc::invalid_export, [&] {
                    (void)load<host_tensor>((ex / export_rank_folder(1)).string(),
                                            {.rank = 1, .world = 4});
                });
                CHECK(e.message().find("expert parallel size of " + std::to_string(ep)) !=
                      std::string::npos);
                // Merged: every tensor but the left-out layer, bit for bit.
                const auto merged = ex.string() + "-merged";
                (void)merge_export(ex, merged);
                const checkpoint back = checkpoint::open(merged);
                CHECK(back.tensor_count() == src.size() - mtp);
                for (const auto& [name, t] : src) {
                    if (name.starts_with("model.layers." + std::to_string(m.layers) + "."))
                        continue;
                    CAPTURE(name);
                    const located_tensor l = back.tensor(name);
                    std::vector<std::uint16_t> got(l.tensor.byte_size() / 2);
                    std::memcpy(got.data(), l.tensor.bytes().data(), l.tensor.byte_size());
                    CHECK(got == take(t, range(0, t.rows()), range(0, t.cols())));
                }
            }
    }
}

TEST_CASE("mixtures of experts: an export's expert parallel size must divide its world") {
    const moe_model m{.type = "mixtral"};
    temp_folder dir;
    std::filesystem::create_directories(dir.path() / "in");
    write_checkpoint(dir.path() / "in", config_of(m), 2, "", tensors_of(m));
    const checkpoint in = checkpoint::open((dir.path() / "in").string());
    export_options o;
    o.world = 4;
    o.experts.ep = 3;
    const auto e = expect_error(errc::invalid_argument,
                                [&] { (void)export_checkpoint(in, dir.path() / "ex", o); });
    CHECK(e.message().find("expert parallel size 3 does not divide the world of 4") !=
          std::string::npos);
    CHECK(!std::filesystem::exists(dir.path() / "ex"));
}

TEST_CASE("mixtures of experts: bad expert parallel sizes and counts are refused, naming them") {
    // Six heads (attention cuts 6 ways), a vocabulary padded to 384 (6 × 64), no dense layer:
    // the experts are what fails at world 6.
    const moe_model m{.type = "qwen3_moe", .heads = 6, .kv_heads = 6, .vocab = 384};
    temp_folder dir;
    write_checkpoint(dir.path(), config_of(m), 2, "", tensors_of(m));
    const checkpoint c = checkpoint::open(dir.path().string());
    auto build = [&](std::uint32_t world, std::uint32_t ep) {
        return load_plan::build(c, {0, world, {.ep = ep}});
    };
    // ep must divide the world.
    for (auto [w, ep] : {std::pair{4u, 3u}, std::pair{4u, 0u}, std::pair{2u, 4u}}) {
        const auto e = expect_error(errc::invalid_argument, [&] { (void)build(w, ep); });
        CHECK(e.message().find("expert parallel size " + std::to_string(ep)) != std::string::npos);
        CHECK(e.message().find(std::to_string(w) + " ranks") != std::string::npos);
    }
    // More expert groups than experts (6 experts, 8 groups).
    {
        const auto e = expect_error(errc::invalid_config, [&] { (void)build(8, 8); });
        CHECK(e.message().find("8 expert groups for 6 experts") != std::string::npos);
    }
    // An expert's intermediate size not divisible by its group's ways (16 over 3 of world 6).
    {
        const auto e = expect_error(errc::invalid_layout, [&] { (void)build(6, 2); });
        CHECK(e.message().find("mlp.experts.") != std::string::npos);
        CHECK(e.message().find("extent 16") != std::string::npos);
        CHECK(e.message().find("3 tensor-parallel ways of its expert group") != std::string::npos);
    }
}

TEST_CASE("mixtures of experts: config.json's expert count must match the tensors") {
    moe_model m{.type = "mixtral"};
    const auto src = tensors_of(m);
    for (std::uint64_t claimed : {4u, 8u}) {
        CAPTURE(claimed);
        moe_model said = m;
        said.experts = claimed;
        temp_folder dir;
        write_checkpoint(dir.path(), config_of(said), 2, "", src);
        const checkpoint c = checkpoint::open(dir.path().string());
        const auto e = expect_error(errc::invalid_config, [&] {
            (void)load_plan::build(c, {0, 1});
        });
        CHECK(e.message().find("config.json says " + std::to_string(claimed) + " experts") !=
              std::string::npos);
        CHECK(e.message().find("expert 5") != std::string::npos);
    }
}

namespace {

std::vector<std::uint64_t> ints(simdjson::dom::array a) {
    std::vector<std::uint64_t> v;
    for (auto x : a) v.push_back(x.get_uint64().value());
    return v;
}

// `safeshard plan --json` of every rank (or one): a parameter lists the ranks that hold it,
// in rank order, with their shapes and bytes; rank_bytes add them up.
void check_plan_json(const std::filesystem::path& dir, const moe_model& m,
                     const std::map<std::string, source_tensor>& src, std::uint32_t w,
                     std::uint32_t ep, bool rr, std::optional<std::uint32_t> only) {
    CAPTURE(m.type);
    CAPTURE(w);
    CAPTURE(ep);
    CAPTURE(rr);
    const auto r =
        run_tool("plan " + dir.string() + " --tp " + std::to_string(w) + " --ep " +
                 std::to_string(ep) + (rr ? " --expert-placement round_robin" : std::string()) +
                 (only ? " --rank " + std::to_string(*only) : std::string()) + " --json");
    REQUIRE_MESSAGE(r.code == 0, r.out);
    simdjson::dom::parser parser;
    const simdjson::dom::element doc = parser.parse(r.out);
    std::vector<std::uint64_t> totals(w, 0);
    std::set<std::string> seen;
    for (auto p : doc["parameters"].get_array()) {
        const std::string name(p["name"].get_string().value());
        CAPTURE(name);
        seen.insert(name);
        const source_tensor& t = src.at(name);
        CHECK(ints(p["global_shape"].get_array()) == t.dims);
        const auto e = expert_in(name);
        if (e)  // the within-group layout, spelled as today
            CHECK(std::string(p["layout"].get_string().value()) ==
                  (name.ends_with("down_proj.weight") || name.ends_with("w2.weight") ? "split<1>"
                                                                                     : "split<0>"));
        std::vector<std::uint64_t> ranks, want_ranks;
        for (std::uint32_t k = 0; k < w; ++k)
            if ((!only || k == *only) && (!e || owner(*e, m.experts, ep, rr) == k / (w / ep)))
                want_ranks.push_back(k);
        for (auto rk : p["ranks"].get_array()) {
            const auto k = static_cast<std::uint32_t>(rk["rank"].get_uint64().value());
            ranks.push_back(k);
            const expected_cut cut = cut_of(name, m, t, rank_of{k, w, ep, rr});
            std::vector<std::uint64_t> shape{cut.rows.size()};
            if (t.dims.size() > 1) shape.push_back(cut.cols.size());
            CHECK(ints(rk["shape"].get_array()) == shape);
            const std::uint64_t nbytes = rk["nbytes"].get_uint64().value();
            CHECK(nbytes == cut.rows.size() * cut.cols.size() * 2);
            totals[k] += nbytes;
        }
        CHECK(ranks == want_ranks);
    }
    // Every tensor some shown rank holds, and no other (the MTP layer is skipped).
    std::set<std::string> want;
    for (const auto& [name, t] : src) {
        if (name.starts_with("model.layers." + std::to_string(m.layers) + ".")) continue;
        const auto e = expert_in(name);
        if (only && e && owner(*e, m.experts, ep, rr) != *only / (w / ep)) continue;
        want.insert(name);
    }
    CHECK(seen == want);
    const auto rank_bytes = ints(doc["rank_bytes"].get_array());
    if (only) {
        REQUIRE(rank_bytes.size() == 1);
        CHECK(rank_bytes[0] == totals[*only]);
    } else {
        CHECK(rank_bytes == totals);
    }
}

}  // namespace

TEST_CASE("safeshard plan --json: mixtures of experts under --ep and --expert-placement" *
          doctest::skip(!have_tool())) {
    for (const moe_model& m : families()) {
        temp_folder dir;
        const auto src = tensors_of(m);
        write_checkpoint(dir.path(), config_of(m), 2, "", src);
        for (std::uint32_t w : {2u, 4u})
            for (std::uint32_t ep : {1u, 2u, w})
                for (bool rr : {false, true}) check_plan_json(dir.path(), m, src, w, ep, rr, {});
        check_plan_json(dir.path(), m, src, 4, 4, false, 3u);
        check_plan_json(dir.path(), m, src, 4, 2, true, 1u);
    }
}

TEST_CASE("safeshard plan: mixtures of experts' errors, exit codes and the MTP layer" *
          doctest::skip(!have_tool())) {
    const moe_model m{.type = "deepseek_v3"};
    temp_folder dir;
    write_checkpoint(dir.path(), config_of(m), 2, "", tensors_of(m));
    const std::string d = dir.path().string();
    auto r = run_tool("plan " + d + " --tp 4 --ep 3");
    CHECK(r.code == 2);
    CHECK(r.out.find("--ep 3 does not divide --tp 4") != std::string::npos);
    r = run_tool("plan " + d + " --tp 2 --ep 4");
    CHECK(r.code == 2);
    r = run_tool("plan " + d + " --tp 2 --ep 0");
    CHECK(r.code == 2);
    r = run_tool("plan " + d + " --tp 2 --expert-placement sideways");
    CHECK(r.code == 2);
    CHECK(r.out.find("linear or round_robin") != std::string::npos);
    r = run_tool("plan " + d + " --tp 8 --ep 8");  // 6 experts, 8 groups
    CHECK(r.code == 1);
    CHECK(r.out.find("8 expert groups for 6 experts") != std::string::npos);
    // The multi-token prediction layer (layer 3 here): ignored, or planned with --include-mtp.
    r = run_tool("plan " + d + " --tp 2");
    CHECK(r.code == 0);
    CHECK(r.out.find("tensors of the multi-token prediction layers left out: --include-mtp "
                     "plans them") != std::string::npos);
    CHECK(r.out.find("ignored: model.layers.3.enorm.weight (a multi-token prediction layer") !=
          std::string::npos);
    r = run_tool("plan " + d + " --tp 2 --include-mtp");
    CHECK(r.code == 0);
    CHECK(r.out.find("left out") == std::string::npos);
    r = run_tool("plan " + d + " --tp 2 --include-mtp --json");
    CHECK(r.code == 0);
    CHECK(r.out.find("\"model.layers.3.eh_proj.weight\"") != std::string::npos);
    CHECK(r.out.find("\"model.layers.3.mlp.experts.5.down_proj.weight\"") != std::string::npos);
}

TEST_CASE("safeshard plan and export --fuse-experts: the fused layouts, named in --json" *
          doctest::skip(!have_tool())) {
    const moe_model m{.type = "mixtral"};
    const auto src = tensors_of(m);
    temp_folder dir;
    std::filesystem::create_directories(dir.path() / "per");
    std::filesystem::create_directories(dir.path() / "stacked");
    write_checkpoint(dir.path() / "per", config_of(m), 2, "", src);
    write_checkpoint(dir.path() / "stacked", config_of(m), 2, "", stacked_form(m, src));
    simdjson::dom::parser parser;
    // The layout of each fused tensor, and rank 1's shape of it (world 4, ep 2: 3 experts a
    // group, each cut 2 ways).
    auto layouts = [&](const std::string& in) {
        const auto r = run_tool("plan " + in + " --tp 4 --ep 2 --fuse-experts --json");
        REQUIRE_MESSAGE(r.code == 0, r.out);
        std::map<std::string, std::pair<std::string, std::vector<std::uint64_t>>> v;
        const simdjson::dom::element doc = parser.parse(r.out);
        for (auto p : doc["parameters"].get_array()) {
            const std::string name(p["name"].get_string().value());
            if (name.find("_weight") == std::string::npos) continue;
            simdjson::dom::array ranks = p["ranks"].get_array();
            v[name] = {std::string(p["layout"].get_string().value()),
                       ints(ranks.at(1)["shape"].get_array())};
        }
        return v;
    };
    const auto per = layouts((dir.path() / "per").string());
    CHECK(per.size() == 2 * m.layers);
    const std::string x = "model.layers.1.block_sparse_moe.experts.";
    REQUIRE(per.contains(x + "w13_weight"));
    CHECK(per.at(x + "w13_weight").first == "gathered_experts<fused<0>>");
    CHECK(per.at(x + "w13_weight").second == std::vector<std::uint64_t>{3, 16, 16});
    CHECK(per.at(x + "w2_weight").first == "gathered_experts<split<1>>");
    CHECK(per.at(x + "w2_weight").second == std::vector<std::uint64_t>{3, 16, 8});
    const auto st = layouts((dir.path() / "stacked").string());
    const std::string y = "model.layers.1.mlp.experts.";
    REQUIRE(st.contains(y + "w13_weight"));
    CHECK(st.at(y + "w13_weight").first == "stacked_experts<fused<0>>");
    CHECK(st.at(y + "w2_weight").first == "stacked_experts<split<1>>");
    CHECK(st.at(y + "w2_weight").second == std::vector<std::uint64_t>{3, 16, 8});
    // export --fuse-experts writes them; without the flag, the experts as stored.
    const auto ex = dir.path() / "ex";
    auto r = run_tool("export " + (dir.path() / "per").string() + " --tp 2 --fuse-experts --out " +
                      ex.string());
    REQUIRE_MESSAGE(r.code == 0, r.out);
    const checkpoint rank0 = checkpoint::open_path(ex / export_rank_folder(0));
    CHECK(rank0.find(x + "w13_weight").has_value());
    CHECK(!rank0.find(x + "0.w1.weight").has_value());
}
