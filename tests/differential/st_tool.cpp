// Command-line access to safeshard's safetensors reader and writer for the differential tests.
//   st_tool dump FILE        JSON: header size, metadata, tensors (name, dtype, shape, offsets,
//                            bytes in hex), or {"ok":false,"errc":...} when refused
//   st_tool verdict FILE...  one line per file: "ok" or the errc name
//   st_tool index FILE...    the same for index files (safetensors_index::load)
//   st_tool config FILE...   the same for config.json files (config_file::load)
//   st_tool write SPEC OUT   SPEC (JSON): {"metadata": {..} | null, "tensors": [{"name",
//                            "dtype", "shape", "hex"}]}; writes OUT with save_file
#include <simdjson.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "safeshard/format/config.hpp"
#include "safeshard/format/index.hpp"
#include "safeshard/format/safetensors.hpp"
#include "safeshard/format/safetensors_writer.hpp"

namespace {

using namespace safeshard;

std::string hex(std::span<const std::byte> b) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s;
    s.reserve(b.size() * 2);
    for (const std::byte x : b) {
        const auto u = static_cast<unsigned>(x);
        s += digits[u >> 4];
        s += digits[u & 15];
    }
    return s;
}

std::string json_string(std::string_view s) {
    std::string out;
    append_json_string(out, s, json_string_style::serde());
    return out;
}

int dump(const char* path) {
    try {
        const file_view v{std::filesystem::path(path)};
        std::string out =
            "{\"ok\":true,\"header_size\":" + std::to_string(v.header_size()) + ",\"metadata\":";
        if (v.has_metadata()) {
            out += '{';
            bool first = true;
            for (const auto& [k, val] : v.metadata()) {
                if (!first) out += ',';
                first = false;
                out += json_string(k) + ':' + json_string(val);
            }
            out += '}';
        } else {
            out += "null";
        }
        out += ",\"tensors\":[";
        bool first = true;
        for (const tensor_view t : v) {
            if (!first) out += ',';
            first = false;
            out += "{\"name\":" + json_string(t.name()) + ",\"dtype\":\"" +
                   std::string(name(t.dtype())) + "\",\"shape\":[";
            for (std::size_t i = 0; i < t.shape().rank(); ++i)
                out += (i ? "," : "") + std::to_string(t.shape()[i]);
            out += "],\"begin\":" + std::to_string(t.data_begin()) +
                   ",\"end\":" + std::to_string(t.data_end()) + ",\"hex\":\"" + hex(t.bytes()) +
                   "\"}";
        }
        out += "]}";
        std::cout << out << '\n';
    } catch (const error& e) {
        std::cout << "{\"ok\":false,\"errc\":\"" << to_string(e.code())
                  << "\",\"what\":" << json_string(e.what()) << "}\n";
    }
    return 0;
}

template <class Open>
int verdict(int argc, char** argv, Open open) {
    for (int i = 2; i < argc; ++i) {
        try {
            open(std::filesystem::path(argv[i]));
            std::cout << "ok\n";
        } catch (const error& e) {
            std::cout << to_string(e.code()) << '\n';
        }
    }
    return 0;
}

std::vector<std::byte> unhex(std::string_view s) {
    std::vector<std::byte> out(s.size() / 2);
    const auto nib = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = static_cast<std::byte>(nib(s[2 * i]) * 16 + nib(s[2 * i + 1]));
    return out;
}

int write(const char* spec_path, const char* out_path) {
    simdjson::dom::parser parser;
    const simdjson::dom::element spec = parser.load(spec_path);
    std::optional<metadata_map> md;
    if (!spec["metadata"].is_null()) {
        md.emplace();
        for (auto f : spec["metadata"].get_object())
            (*md)[std::string(f.key)] = std::string(std::string_view(f.value));
    }
    std::vector<std::string> names;
    std::vector<std::vector<std::byte>> store;
    std::vector<tensor_data> tensors;
    const auto list = spec["tensors"].get_array();
    names.reserve(list.size());
    store.reserve(list.size());
    for (auto t : list) {
        names.emplace_back(std::string_view(t["name"]));
        const auto dt = parse_dtype(std::string_view(t["dtype"]));
        if (!dt) throw std::runtime_error("unknown dtype in spec");
        shape s;
        for (auto d : t["shape"].get_array()) s.push_back(std::uint64_t(d));
        store.push_back(unhex(std::string_view(t["hex"])));
        tensors.push_back(tensor_data{names.back(), *dt, s, store.back()});
    }
    save_file(out_path, tensors, md);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const std::string cmd = argc > 1 ? argv[1] : "";
        if (cmd == "dump" && argc == 3) return dump(argv[2]);
        if (cmd == "verdict") return verdict(argc, argv, [](const auto& p) { (void)file_view{p}; });
        if (cmd == "index")
            return verdict(argc, argv, [](const auto& p) { (void)safetensors_index::load(p); });
        if (cmd == "config")
            return verdict(argc, argv, [](const auto& p) { (void)config_file::load(p); });
        if (cmd == "write" && argc == 4) return write(argv[2], argv[3]);
    } catch (const std::exception& e) {
        std::cerr << "st_tool: " << e.what() << '\n';
        return 2;
    }
    std::cerr << "usage: st_tool dump FILE | verdict FILE... | index FILE... | config FILE... | "
                 "write SPEC OUT\n";
    return 1;
}
