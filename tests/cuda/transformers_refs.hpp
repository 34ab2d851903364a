// What a rank of a checkpoint written by tools/gpu/hf_reference.py must load: torch's slices
// (DIR/refs/<arch>/<layout>-r<R>.safetensors), as they are for DIR/<arch> (gpt_oss and llama4,
// which stack their experts themselves, included), with the experts stacked for
// DIR/<arch>-stacked (its ref_of.txt names <arch>).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "safeshard/core/shape.hpp"
#include "safeshard/format/safetensors.hpp"

namespace safeshard::test {

struct expected_tensor {
    shape dims;
    std::vector<std::byte> bytes;
};
using expected_tensors = std::map<std::string, expected_tensor>;

// The architecture whose references a model folder uses: its ref_of.txt (a stacked
// checkpoint), else the folder's own name.
inline std::string references_of(const std::filesystem::path& model) {
    std::ifstream in(model / "ref_of.txt");
    std::string arch;
    if (in >> arch) return arch;
    return model.filename().string();
}

// The reference's tensors as they are.
inline expected_tensors reference_as_is(const file_view& ref) {
    expected_tensors out;
    for (const auto& t : ref) {
        const auto b = t.bytes();
        out[std::string(t.name())] = {t.shape(), std::vector<std::byte>(b.begin(), b.end())};
    }
    return out;
}

// The reference of the per-expert model as a rank of the stacked checkpoint holds it: per
// layer mlp.experts.gate_up_proj [E_local, 2I/W', H], for each expert in `held` (ascending)
// its gate_proj (w1) rows then its up_proj (w3) rows, and mlp.experts.down_proj
// [E_local, H, I/W'], its down_proj (w2) slices; Mixtral's router under mlp.gate.weight;
// every other tensor as it is. The reference must hold exactly the `held` experts.
inline expected_tensors reference_stacked(const file_view& ref,
                                          std::span<const std::uint64_t> held) {
    static const std::regex expert(
        R"(^(model\.layers\.\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.)"
        R"((gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$)");
    struct piece {
        shape dims;
        std::span<const std::byte> bytes;
    };
    // layer -> expert -> gate, up, down
    std::map<std::string, std::map<std::uint64_t, std::map<int, piece>>> experts;
    expected_tensors out;
    for (const auto& t : ref) {
        const std::string name(t.name());
        std::smatch m;
        if (!std::regex_match(name, m, expert)) {
            std::string n = name;
            const std::string mixtral_router = ".block_sparse_moe.gate.";
            if (const auto at = n.find(mixtral_router); at != std::string::npos)
                n.replace(at, mixtral_router.size(), ".mlp.gate.");
            const auto b = t.bytes();
            out[n] = {t.shape(), std::vector<std::byte>(b.begin(), b.end())};
            continue;
        }
        const std::string kind = m[3].str();
        const int k = kind == "gate_proj" || kind == "w1" ? 0
                      : kind == "up_proj" || kind == "w3" ? 1
                                                          : 2;
        experts[m[1].str()][std::stoull(m[2].str())][k] = {t.shape(), t.bytes()};
    }
    for (const auto& [layer, by_expert] : experts) {
        if (by_expert.size() != held.size())
            throw std::runtime_error(layer + ": the reference has " +
                                     std::to_string(by_expert.size()) + " experts, the rank " +
                                     std::to_string(held.size()));
        expected_tensor gate_up, down;
        for (const std::uint64_t e : held) {
            const auto it = by_expert.find(e);
            if (it == by_expert.end() || it->second.size() != 3)
                throw std::runtime_error(layer + ": the reference lacks expert " +
                                         std::to_string(e) + " (or one of its tensors)");
            const piece& g = it->second.at(0);
            const piece& u = it->second.at(1);
            const piece& d = it->second.at(2);
            if (gate_up.dims.empty()) {
                gate_up.dims = shape{held.size(), g.dims[0] + u.dims[0], g.dims[1]};
                down.dims = shape{held.size(), d.dims[0], d.dims[1]};
            }
            gate_up.bytes.insert(gate_up.bytes.end(), g.bytes.begin(), g.bytes.end());
            gate_up.bytes.insert(gate_up.bytes.end(), u.bytes.begin(), u.bytes.end());
            down.bytes.insert(down.bytes.end(), d.bytes.begin(), d.bytes.end());
        }
        out[layer + ".mlp.experts.gate_up_proj"] = std::move(gate_up);
        out[layer + ".mlp.experts.down_proj"] = std::move(down);
    }
    return out;
}

}  // namespace safeshard::test
