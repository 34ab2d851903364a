// Index parsing against nlohmann::json on a DeepSeek-R1-sized index, and opening a checkpoint
// of 163 shards with every header validated. Plain timing loops (median of repeated runs,
// warm page cache), both sides measured in the same run.
//
//   checkpoint_bench [entries=92000] [shards=163] [repeats=15]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/index.hpp"

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

namespace {

struct timing {
    double median;
    double best;  // the least disturbed run on a shared machine
};

template <class F>
timing time_ms(int repeats, F&& f) {
    std::vector<double> t;
    for (int i = 0; i < repeats; ++i) {
        const auto a = clock_type::now();
        f();
        t.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - a).count());
    }
    std::sort(t.begin(), t.end());
    return {t[t.size() / 2], t.front()};
}

std::string shard_name(int i, int n) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05d-of-%06d.safetensors", i + 1, n);
    return buf;
}

// DeepSeek-R1-like names: 61 layers of attention, norms, 256 experts x 3 projections, each
// FP8 weight with its weight_scale_inv.
std::vector<std::string> tensor_names(std::size_t n) {
    std::vector<std::string> names;
    names.reserve(n);
    names.emplace_back("model.embed_tokens.weight");
    for (int layer = 0; names.size() < n; ++layer) {
        const std::string p = "model.layers." + std::to_string(layer) + ".";
        for (const char* s : {"input_layernorm.weight", "post_attention_layernorm.weight",
                              "self_attn.kv_a_layernorm.weight", "self_attn.q_a_proj.weight",
                              "self_attn.q_a_proj.weight_scale_inv", "self_attn.kv_b_proj.weight",
                              "mlp.gate.weight", "mlp.gate.e_score_correction_bias"}) {
            names.push_back(p + s);
        }
        for (int e = 0; e < 256 && names.size() < n; ++e) {
            for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
                const std::string q = p + "mlp.experts." + std::to_string(e) + "." + proj;
                names.push_back(q + ".weight");
                names.push_back(q + ".weight_scale_inv");
            }
        }
    }
    names.resize(n);
    return names;
}

std::string index_json(const std::vector<std::string>& names, int shards, std::uint64_t total) {
    std::string s = "{\n  \"metadata\": {\n    \"total_size\": " + std::to_string(total) +
                    "\n  },\n  \"weight_map\": {\n";
    for (std::size_t i = 0; i < names.size(); ++i) {
        const int shard = static_cast<int>(i * static_cast<std::size_t>(shards) / names.size());
        s += "    \"" + names[i] + "\": \"" + shard_name(shard, shards) + "\"";
        s += i + 1 < names.size() ? ",\n" : "\n";
    }
    s += "  }\n}\n";
    return s;
}

void write_file(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file of `names`, each an F8_E4M3 [4, 4] tensor (16 bytes).
std::string shard_bytes(const std::vector<std::string>& names, std::size_t first,
                        std::size_t last) {
    std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
    std::uint64_t off = 0;
    for (std::size_t i = first; i < last; ++i) {
        header += ",\"" + names[i] +
                  "\":{\"dtype\":\"F8_E4M3\",\"shape\":[4,4],\"data_offsets\":[" +
                  std::to_string(off) + "," + std::to_string(off + 16) + "]}";
        off += 16;
    }
    header += "}";
    while (header.size() % 8 != 0) header += ' ';
    std::string out(8, '\0');
    const std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
    out += header;
    out.append(static_cast<std::size_t>(off), '\x11');
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    const std::size_t entries = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 92000;
    const int shards = argc > 2 ? std::atoi(argv[2]) : 163;
    const int repeats = argc > 3 ? std::atoi(argv[3]) : 15;
    const auto names = tensor_names(entries);
    const std::string json = index_json(names, shards, entries * 16);
    std::printf("index: %zu entries, %d shards, %.2f MB of JSON\n", entries, shards,
                static_cast<double>(json.size()) / 1e6);

    std::size_t sink = 0;
    const timing ours = time_ms(repeats, [&] {
        const auto ix = safeshard::safetensors_index::parse(json);
        sink += ix.size();
    });
    const timing nl_parse = time_ms(repeats, [&] {
        const auto j = nlohmann::json::parse(json);
        sink += j.size();
    });
    const timing nl_map = time_ms(repeats, [&] {
        const auto j = nlohmann::json::parse(json);
        std::unordered_map<std::string, std::string> wm;
        for (const auto& [k, v] : j.at("weight_map").items()) wm.emplace(k, v.get<std::string>());
        sink += wm.size();
    });
    std::printf("  (median / best of %d runs, ms)\n", repeats);
    std::printf("  safeshard parse + weight_map:    %8.2f / %8.2f  (%.0f MB/s best)\n", ours.median,
                ours.best, static_cast<double>(json.size()) / 1e3 / ours.best);
    std::printf("  nlohmann::json::parse only:      %8.2f / %8.2f  -> %.1fx / %.1fx faster\n",
                nl_parse.median, nl_parse.best, nl_parse.median / ours.median,
                nl_parse.best / ours.best);
    std::printf("  nlohmann parse + unordered_map:  %8.2f / %8.2f  -> %.1fx / %.1fx faster\n",
                nl_map.median, nl_map.best, nl_map.median / ours.median, nl_map.best / ours.best);

    // A checkpoint: the same names over `shards` files, small tensors.
    const fs::path dir =
        fs::temp_directory_path() / ("safeshard-bench-ckpt-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::size_t first = 0;
    for (int s = 0; s < shards; ++s) {
        std::size_t last = first;
        while (last < names.size() &&
               static_cast<int>(last * static_cast<std::size_t>(shards) / names.size()) == s) {
            ++last;
        }
        write_file(dir / shard_name(s, shards), shard_bytes(names, first, last));
        first = last;
    }
    write_file(dir / "model.safetensors.index.json", json);
    (void)safeshard::checkpoint::open(dir.string());  // warm the page cache
    const timing open_ms = time_ms(repeats, [&] {
        const auto c = safeshard::checkpoint::open(dir.string());
        sink += c.tensor_count();
    });
    const timing headers_ms = time_ms(repeats, [&] {
        for (int s = 0; s < shards; ++s) {
            const safeshard::file_view v(dir / shard_name(s, shards));
            sink += v.size();
        }
    });
    std::printf("checkpoint: %d shards, %zu tensors, index and every header validated\n", shards,
                entries);
    std::printf("  checkpoint::open:                %8.2f / %8.2f  (%.0f / %.0f us per shard)\n",
                open_ms.median, open_ms.best, open_ms.median * 1e3 / shards,
                open_ms.best * 1e3 / shards);
    std::printf("  of which file_view opens alone:  %8.2f / %8.2f  (%.0f / %.0f us per shard)\n",
                headers_ms.median, headers_ms.best, headers_ms.median * 1e3 / shards,
                headers_ms.best * 1e3 / shards);
    fs::remove_all(dir);
    return sink == 0 ? 1 : 0;
}
