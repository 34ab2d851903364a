// Checkpoints and plans shared by the CUDA engine tests (the fake transport's and the GPU's):
// the loader tests' decoder models (BF16, and the same values in F32), one tensor of each
// dtype for every conversion pair, and the comparison with host_engine for the same plan.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../load/model_gen.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"
#include "safeshard/load/tensor_factory.hpp"
#include "safeshard/shard/schema.hpp"

namespace safeshard::test {

// The model's tensors widened to F32 (code << 16), in one file beside config.json.
inline void write_f32_checkpoint(const std::filesystem::path& dir, const model_spec& m,
                                 const std::map<std::string, source_tensor>& tensors) {
    write_text(dir / "config.json", config_json(m));
    std::vector<std::vector<std::uint32_t>> values;
    values.reserve(tensors.size());
    std::vector<tensor_data> data;
    for (const auto& [name, t] : tensors) {
        auto& v = values.emplace_back(t.codes.size());
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::uint32_t{t.codes[i]} << 16;
        data.push_back(tensor_data{name, dtype::f32, shape::from(std::span(t.dims)),
                                   std::as_bytes(std::span(v))});
    }
    save_file(dir / "model.safetensors", data);
}

// One [rows, cols] tensor "w" of dtype `t` with random bytes (any bit pattern: NaNs,
// subnormals, infinities), loaded with a column split so each rank's box is strided.
inline void write_one_tensor(const std::filesystem::path& file, dtype t, std::uint64_t rows,
                             std::uint64_t cols, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::byte> bytes(rows * cols * bit_size(t) / 8);
    for (auto& b : bytes) b = static_cast<std::byte>(rng());
    const tensor_data d{"w", t, shape{rows, cols}, bytes};
    save_file(file, std::span(&d, 1));
}

inline schema column_split_schema() {
    schema s;
    parameter_meta p;
    p.name = "w";
    p.layout = make_split(1);
    p.sources = {"w"};
    s.add(p);
    return s;
}

// Every (from, to) the loader converts, same-dtype copies included.
inline std::vector<std::pair<dtype, dtype>> conversion_pairs() {
    std::vector<std::pair<dtype, dtype>> out;
    for (dtype a : all_dtypes)
        for (dtype b : all_dtypes)
            if (can_convert(a, b)) out.emplace_back(a, b);
    return out;
}

// Plans of one rank for the host and for CUDA device `device`; their ops must agree.
struct plan_pair {
    load_plan host;
    load_plan cuda;
};

inline plan_pair make_plans(const checkpoint& ckpt, const schema* s, std::uint32_t rank,
                            std::uint32_t world, plan_options o, int device = 0) {
    o.device = {};
    plan_options oc = o;
    oc.device = {device_kind::cuda, device};
    if (s)
        return {load_plan::build(ckpt, *s, {rank, world}, o),
                load_plan::build(ckpt, *s, {rank, world}, oc)};
    return {load_plan::build(ckpt, {rank, world}, o), load_plan::build(ckpt, {rank, world}, oc)};
}

// Bytes of each loaded tensor, by name.
using tensor_bytes = std::map<std::string, std::vector<std::byte>>;

inline tensor_bytes host_reference(const load_plan& plan, load_report* report = nullptr) {
    host_engine e({.threads = 1});
    auto m = load_tensors<host_tensor>(plan, e, report);
    tensor_bytes out;
    for (const auto& name : m.names()) {
        const auto b = m.at(name).bytes();
        out[name].assign(b.begin(), b.end());
    }
    return out;
}

}  // namespace safeshard::test
