// Helpers of the export and merge tests: generated models, byte-exact comparison, edits of a
// rank file's metadata and bytes.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <simdjson.h>

#include "../load/model_gen.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/export_metadata_reader.hpp"
#include "safeshard/format/export_metadata_writer.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/save/export.hpp"

namespace safeshard::test::exports {

namespace fs = std::filesystem;

inline std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Writes a generated model (and `extra` tensors) into `dir`.
inline void make_model(const fs::path& dir, const model_spec& m, bool extras = false) {
    fs::create_directories(dir);
    auto tensors = test::make_tensors(m);
    if (extras) {
        std::mt19937_64 rng(99);
        tensors["extra.scale"] = test::random_tensor({3, 5}, rng);  // outside the schema
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = test::random_tensor({4}, rng);
    }
    test::write_checkpoint(dir, m, tensors);
}

// Every tensor of `b` equals `a`'s (converted to `to` where given), and the names agree.
inline void check_same(const fs::path& a_path, const fs::path& b_path,
                       std::optional<dtype> to = std::nullopt) {
    const auto a = checkpoint::open(a_path.string());
    const auto b = checkpoint::open(b_path.string());
    REQUIRE(a.tensor_count() == b.tensor_count());
    for (const auto& ta : a.tensors()) {
        CAPTURE(ta.tensor.name());
        const auto lb = b.find(ta.tensor.name());
        REQUIRE(lb.has_value());
        const auto tb = lb->tensor;
        CHECK(tb.shape() == ta.tensor.shape());
        const dtype from = ta.tensor.dtype();
        const dtype want = to ? *to : from;
        REQUIRE(tb.dtype() == want);
        std::vector<std::byte> expect(tb.byte_size());
        (want == from ? converter(from) : find_converter(from, want))(
            ta.tensor.bytes().data(), expect.data(), ta.tensor.element_count());
        REQUIRE(tb.byte_size() == expect.size());
        CHECK(std::memcmp(tb.bytes().data(), expect.data(), expect.size()) == 0);
    }
}

inline export_options options_for(std::uint32_t world, kv_convention kv) {
    export_options o;
    o.world = world;
    o.plan.schema.kv = kv;
    return o;
}

// Rewrites one rank file with `edit` applied to its export metadata document.
inline void edit_metadata(const fs::path& file, const std::function<void(std::string&)>& edit) {
    std::vector<std::string> names;
    std::vector<std::vector<std::byte>> storage;
    std::vector<tensor_info> infos;
    metadata_map meta;
    {
        const auto c = checkpoint::open_path(file);
        meta = c.files().front().view.metadata();
        for (const auto& l : c.tensors()) {
            names.emplace_back(l.tensor.name());
            infos.push_back(tensor_info{names.back(), l.tensor.dtype(), l.tensor.shape()});
            storage.emplace_back(l.tensor.bytes().begin(), l.tensor.bytes().end());
        }
    }
    edit(meta.at("safeshard"));
    std::vector<tensor_data> data;
    for (std::size_t i = 0; i < names.size(); ++i)
        data.push_back(tensor_data{names[i], infos[i].dtype, infos[i].shape, storage[i]});
    save_file(file, data, meta);
}

// Flips a byte of tensor `name` in the rank folder `folder` (at byte `at` of its data).
inline void flip_byte(const fs::path& folder, const std::string& name, std::uint64_t at = 0) {
    std::uint64_t offset = 0;
    fs::path file;
    {
        const auto c = checkpoint::open_path(folder);
        const auto l = c.tensor(name);
        offset = l.tensor.file_begin() + at;
        file = l.file->path;
    }
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    char ch = 0;
    f.read(&ch, 1);
    ch = static_cast<char>(ch ^ 0x5a);
    f.seekp(static_cast<std::streamoff>(offset));
    f.write(&ch, 1);
    REQUIRE(f.good());
}

inline void replace_in(std::string& s, const std::string& from, const std::string& to) {
    const auto at = s.find(from);
    REQUIRE_MESSAGE(at != std::string::npos, from);
    s.replace(at, from.size(), to);
}

// The tensors a shard's header holds, as the export metadata reader takes them.
inline std::vector<export_stored_tensor> stored_tensors(const file_view& v) {
    std::vector<export_stored_tensor> out;
    for (const tensor_view t : v)
        out.push_back(export_stored_tensor{t.name(), t.dtype(), t.shape()});
    return out;
}

// The number of records of a version-2 document's "tensors" array.
inline std::size_t document_records(std::string_view doc) {
    simdjson::dom::parser parser;
    const simdjson::padded_string text(doc);
    simdjson::dom::object root;
    simdjson::dom::array records;
    REQUIRE(parser.parse(text).get(root) == simdjson::SUCCESS);
    REQUIRE(root["tensors"].get_array().get(records) == simdjson::SUCCESS);
    return records.size();
}

// Where the k-th record of a version-2 document's "tensors" array lies: [begin, end).
inline std::pair<std::size_t, std::size_t> record_span(const std::string& doc, std::size_t k) {
    std::size_t i = doc.find("\"tensors\":[");
    REQUIRE(i != std::string::npos);
    i += 11;
    for (std::size_t n = 0;; ++n) {
        const std::size_t begin = i;
        int depth = 0;
        bool in_string = false;
        for (; i < doc.size(); ++i) {
            const char c = doc[i];
            if (in_string) {
                if (c == '\\')
                    ++i;
                else if (c == '"')
                    in_string = false;
            } else if (c == '"') {
                in_string = true;
            } else if (c == '[' || c == '{') {
                ++depth;
            } else if (c == ']' || c == '}') {
                if (depth == 0) break;
                --depth;
            } else if (c == ',' && depth == 0) {
                break;
            }
        }
        REQUIRE(i < doc.size());
        if (n == k) return {begin, i};
        REQUIRE(doc[i] == ',');
        ++i;
    }
}

// The record of tensor `name` in the version-2 document of the shard `file`, replaced by what
// `edit` makes of it (removed, with its comma, when that is empty).
inline void edit_record(const fs::path& file, const std::string& name,
                        const std::function<std::string(const std::string&)>& edit) {
    std::vector<std::string> names;
    {
        const auto c = checkpoint::open_path(file);
        for (const tensor_view t : c.files().front().view) names.emplace_back(t.name());
    }
    std::sort(names.begin(), names.end());
    const auto k =
        static_cast<std::size_t>(std::find(names.begin(), names.end(), name) - names.begin());
    REQUIRE_MESSAGE(k < names.size(), name);
    edit_metadata(file, [&](std::string& doc) {
        const auto [begin, end] = record_span(doc, k);
        const std::string value = edit(doc.substr(begin, end - begin));
        if (!value.empty())
            doc.replace(begin, end - begin, value);
        else if (doc[end] == ',')
            doc.erase(begin, end - begin + 1);
        else
            doc.erase(begin - (k > 0 ? 1 : 0), end - begin + (k > 0 ? 1 : 0));
    });
}

}  // namespace safeshard::test::exports
