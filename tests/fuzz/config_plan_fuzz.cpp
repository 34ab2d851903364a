// libFuzzer target: config.json text against small fixed checkpoints (llama, qwen2 tied with
// biases, phi3 fused, qwen3 with q/k norms), through what plan, export and verify do with it: the
// config checked against the tensors, the schema built, and the plan of a few (rank, world) pairs.
// Any input either plans, with every copy inside its file and its destination, or throws a
// safeshard::error of an input kind; no crash, no UB, and no allocation beyond libFuzzer's
// -rss_limit_mb (a number in config.json never sizes memory).
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/config.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/load/config_check.hpp"
#include "safeshard/load/plan.hpp"

namespace {

using namespace safeshard;

struct spec {
    const char* folder;
    bool bias = false;   // qwen2: q/k/v biases
    bool fused = false;  // phi3: qkv_proj, gate_up_proj
    bool tied = false;   // no lm_head.weight
    std::uint64_t layers = 2;
    bool qk_norm = false;  // qwen3: q_norm, k_norm
};

// hidden 16, 4 heads of 4, 2 KV heads, intermediate 32, vocab 60 (padded by the plan).
void write_model(const std::filesystem::path& dir, const spec& s) {
    constexpr std::uint64_t h = 16, q = 16, kv = 8, inter = 32, vocab = 60;
    std::vector<std::pair<std::string, shape>> t;
    t.emplace_back("model.embed_tokens.weight", shape{vocab, h});
    for (std::uint64_t i = 0; i < s.layers; ++i) {
        const std::string p = "model.layers." + std::to_string(i) + ".";
        t.emplace_back(p + "input_layernorm.weight", shape{h});
        t.emplace_back(p + "post_attention_layernorm.weight", shape{h});
        if (s.fused) {
            t.emplace_back(p + "self_attn.qkv_proj.weight", shape{q + 2 * kv, h});
            t.emplace_back(p + "mlp.gate_up_proj.weight", shape{2 * inter, h});
        } else {
            t.emplace_back(p + "self_attn.q_proj.weight", shape{q, h});
            t.emplace_back(p + "self_attn.k_proj.weight", shape{kv, h});
            t.emplace_back(p + "self_attn.v_proj.weight", shape{kv, h});
            if (s.bias) {
                t.emplace_back(p + "self_attn.q_proj.bias", shape{q});
                t.emplace_back(p + "self_attn.k_proj.bias", shape{kv});
                t.emplace_back(p + "self_attn.v_proj.bias", shape{kv});
            }
            t.emplace_back(p + "mlp.gate_proj.weight", shape{inter, h});
            t.emplace_back(p + "mlp.up_proj.weight", shape{inter, h});
        }
        if (s.qk_norm) {
            t.emplace_back(p + "self_attn.q_norm.weight", shape{q / 4});
            t.emplace_back(p + "self_attn.k_norm.weight", shape{q / 4});
        }
        t.emplace_back(p + "self_attn.o_proj.weight", shape{h, q});
        t.emplace_back(p + "mlp.down_proj.weight", shape{h, inter});
    }
    t.emplace_back("model.norm.weight", shape{h});
    if (!s.tied) t.emplace_back("lm_head.weight", shape{vocab, h});
    std::vector<std::vector<std::byte>> bytes;
    bytes.reserve(t.size());
    std::vector<tensor_data> data;
    for (const auto& [name, sh] : t) {
        bytes.emplace_back(static_cast<std::size_t>(*sh.element_count() * 2), std::byte{0});
        data.push_back(tensor_data{name, dtype::bf16, sh, bytes.back()});
    }
    std::filesystem::create_directories(dir);
    save_file(dir / "model.safetensors", data);
}

struct fixture {
    std::filesystem::path root;
    std::vector<checkpoint> checkpoints;

    fixture() {
        std::string templ = (std::filesystem::temp_directory_path() / "safeshard-cfgfuzz-XXXXXX");
        if (::mkdtemp(templ.data()) == nullptr) std::abort();
        root = templ;
        for (const spec& s :
             {spec{"llama"}, spec{"qwen2", true, false, true, 1},
              spec{"phi3", false, true, false, 3}, spec{"qwen3", false, false, false, 2, true}}) {
            write_model(root / s.folder, s);
            checkpoints.push_back(checkpoint::open((root / s.folder).string()));
        }
    }
    ~fixture() {
        std::error_code ec;
        std::filesystem::remove_all(root, ec);
    }
};

fixture& the_fixture() {
    static fixture f;
    return f;
}

bool input_error(errc e) {
    switch (e) {
        case errc::invalid_config:
        case errc::shape_mismatch:
        case errc::missing_tensor:
        case errc::unexpected_tensor:
        case errc::invalid_layout:
        case errc::invalid_argument:
        case errc::quantized_checkpoint:  // quantization_config names a scheme no plan cuts
        case errc::validation_overflow: return true;
        default: return false;
    }
}

// a + b <= limit, without overflow.
bool fits(std::uint64_t a, std::uint64_t b, std::uint64_t limit) {
    return a <= limit && b <= limit - a;
}

// Every copy reads inside its file and writes inside its destination.
void check_plan(const load_plan& p, const checkpoint& ckpt) {
    const std::size_t tensors = ckpt.tensor_count();
    const auto dests = p.destinations();
    if (dests.size() > 4 * tensors + 8) std::abort();  // memory follows the tensors
    for (const copy_op& op : p.ops()) {
        if (op.destination >= dests.size()) std::abort();
        const plan_destination& d = dests[op.destination];
        const byte_box& b = op.box;
        if (b.rows == 0) continue;
        std::uint64_t last = 0;
        if (__builtin_mul_overflow(b.rows - 1, b.dst_pitch, &last)) std::abort();
        if (!fits(b.dst_offset, last, d.bytes) ||
            !fits(b.dst_offset + last, b.dst_row_bytes, d.bytes))
            std::abort();
        if (op.kind != copy_kind::copy) continue;
        if (op.file >= p.files().size() || op.file >= ckpt.files().size()) std::abort();
        const std::uint64_t size = ckpt.files()[op.file].view.bytes().size();
        if (__builtin_mul_overflow(b.rows - 1, b.src_pitch, &last)) std::abort();
        if (!fits(op.file_begin(), last, size) ||
            !fits(op.file_begin() + last, b.src_row_bytes, size))
            std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view json(reinterpret_cast<const char*>(data), size);
    std::optional<model_config> parsed;
    try {
        parsed = config_file::parse(json, "config.json").config();
    } catch (const error& e) {
        if (e.code() != errc::invalid_config) std::abort();
        return 0;
    }
    const model_config& c = *parsed;
    // The schema options follow the input's size, so that every corpus entry tries one.
    plan_options o;
    o.schema.kv = size % 2 ? kv_interleaved : kv_contiguous;
    o.schema.fuse_qkv = size / 2 % 2 != 0;
    o.schema.fuse_gate_up = size / 4 % 2 != 0;
    o.strict = size / 8 % 2 != 0;
    constexpr parallel_context contexts[] = {{0, 1}, {1, 2}, {3, 4}, {2, 3}, {7, 8}};
    for (const checkpoint& ckpt : the_fixture().checkpoints) {
        try {  // what `safeshard verify` reports
            const config_check r = verify_config(ckpt, c, o);
            if (!r.ok() && r.summary().empty()) std::abort();
        } catch (const error&) {
            std::abort();  // verify reports mismatches; it throws only for the system
        }
        try {  // what plan and export build
            const schema s = checked_schema(ckpt, c, o.schema);
            for (const parallel_context ctx : contexts) {
                try {
                    check_plan(load_plan::build(ckpt, s, ctx, o, &c), ckpt);
                } catch (const error& e) {
                    if (!input_error(e.code())) std::abort();
                }
            }
        } catch (const error& e) {
            if (!input_error(e.code())) std::abort();
        }
    }
    return 0;
}
