// Sparse replicas of published checkpoints: their config.json, their tensor names with the
// shapes config.json implies, written as shards of real headers and holes (no data), with the
// index. The tests plan them; the benchmarks time opening and planning them.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "safeshard/format/config.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/shard/architectures/registry.hpp"

namespace safeshard::test {

inline void write_text_file(const std::filesystem::path& p, const std::string& s) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << s;
}

// "model-00001-of-000163.safetensors"
inline std::string replica_shard_name(std::size_t i, std::size_t n) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%06zu.safetensors", i + 1, n);
    return buf;
}

// `all` in `shards` files of header and holes under `dir`, with the index and `config` copied.
inline void write_sparse_replica(const std::filesystem::path& dir,
                                 const std::filesystem::path& config,
                                 const std::vector<tensor_info>& all, std::size_t shards) {
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(config, dir / "config.json",
                               std::filesystem::copy_options::overwrite_existing);
    std::string weight_map;
    for (std::size_t s = 0; s < shards; ++s) {
        std::vector<tensor_info> part(
            all.begin() + static_cast<std::ptrdiff_t>(s * all.size() / shards),
            all.begin() + static_cast<std::ptrdiff_t>((s + 1) * all.size() / shards));
        const std::string file = replica_shard_name(s, shards);
        for (const auto& t : part)
            weight_map +=
                (weight_map.empty() ? "\n    \"" : ",\n    \"") + t.name + "\": \"" + file + "\"";
        const auto plan = plan_tensors(part);
        const std::string head = serialize_prefix_and_header(plan, std::nullopt);
        const std::uint64_t data = plan.empty() ? 0 : plan.back().end;
        write_text_file(dir / file, head);
        if (::truncate((dir / file).c_str(), static_cast<off_t>(head.size() + data)) != 0)
            throw std::runtime_error("truncate failed");
    }
    write_text_file(dir / "model.safetensors.index.json",
                    "{\n  \"metadata\": {},\n  \"weight_map\": {" + weight_map + "\n  }\n}\n");
}

// Whether a tensor of the published FP8 checkpoint is an FP8 weight with a weight_scale_inv,
// from its listing (a tensors.txt of tests/data/moe: names one per line, '#' comments, every
// layer between the first with experts and the last two listed as that first one).
class fp8_listing {
public:
    fp8_listing(const std::filesystem::path& listing, const model_config& c)
        : first_(c.first_k_dense_replace), last_(c.num_hidden_layers - 1) {
        std::ifstream in(listing);
        for (std::string line; std::getline(in, line);)
            if (!line.empty() && line.front() != '#') names_.insert(line);
    }
    [[nodiscard]] bool operator()(const std::string& weight) const {
        return names_.contains(as_listed(weight) + "_scale_inv");
    }

private:
    [[nodiscard]] std::string as_listed(const std::string& name) const {
        constexpr std::string_view p = "model.layers.";
        if (!std::string_view(name).starts_with(p)) return name;
        const std::size_t dot = name.find('.', p.size());
        const std::uint64_t l = std::stoull(name.substr(p.size(), dot - p.size()));
        if (l <= first_ || l >= last_) return name;
        return std::string(p) + std::to_string(first_) + name.substr(dot);
    }
    std::uint64_t first_, last_;
    std::set<std::string> names_;
};

// The tensors of a model's schema (the multi-token prediction layers too) with the shapes
// config.json implies, in BF16; the weights `fp8` names are F8_E4M3 with their F32
// weight_scale_inv [ceil(N/b0), ceil(K/b1)] beside them, in the blocks of config.json's
// quantization_config.
template <class Fp8 = bool (*)(const std::string&)>
std::vector<tensor_info> replica_tensors(
    const model_config& c, Fp8 fp8 = [](const std::string&) { return false; }) {
    schema_options o;
    o.multi_token_prediction = true;
    o.experts_stored = schema_options::expert_storage::per_expert;
    const schema s = make_schema(c, o);
    const architecture_table& t = architecture_shapes(c.model_type);
    const std::uint64_t b0 = c.quantization ? c.quantization->block_rows : 0;
    const std::uint64_t b1 = c.quantization ? c.quantization->block_cols : 0;
    std::vector<tensor_info> v;
    for (const auto& p : s.parameters())
        for (const auto& name : p.sources) {
            shape sh;
            for (const auto& d : t.implied_shape(name, sizes_of(c))) sh.push_back(d.size);
            if (sh.rank() == 0) sh = shape{c.hidden_size, 2 * c.hidden_size};  // eh_proj
            const bool quantized = b0 != 0 && sh.rank() == 2 && fp8(name);
            v.push_back({name, quantized ? dtype::f8_e4m3 : dtype::bf16, sh});
            if (quantized)
                v.push_back({name + "_scale_inv", dtype::f32,
                             shape{(sh[0] + b0 - 1) / b0, (sh[1] + b1 - 1) / b1}});
        }
    return v;
}

}  // namespace safeshard::test
