// model.safetensors.index.json: which shard file holds each tensor, plus the index metadata.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <simdjson.h>

#include "safeshard/core/error.hpp"
#include "safeshard/core/name_hash.hpp"
#include "safeshard/format/json_document.hpp"
#include "safeshard/format/json_text.hpp"

namespace safeshard {

// True for a plain relative path that stays inside its folder: not empty, not absolute, no
// `..` or `.` or empty component, no backslash or NUL. A lexical check only: Hugging Face
// cache snapshots are symlinks into blobs/, so the resolved target may lie elsewhere.
[[nodiscard]] constexpr bool is_safe_relative_path(std::string_view p) noexcept {
    if (p.empty() || p.front() == '/') return false;
    std::size_t start = 0;
    while (true) {
        const std::size_t end = std::min(p.find('/', start), p.size());
        const std::string_view part = p.substr(start, end - start);
        if (part.empty() || part == "." || part == "..") return false;
        for (const char c : part) {
            if (c == '\\' || c == '\0') return false;
        }
        if (end == p.size()) return true;
        start = end + 1;
    }
}

// One weight_map entry: a tensor name and the position of its shard in shards().
struct index_entry {
    std::string_view name;
    std::uint32_t shard = 0;
};

// A parsed, self-consistent index. Checks against the shard files themselves (they exist,
// hold the named tensors, total_size) are the checkpoint's job.
class safetensors_index {
public:
    static constexpr std::uint64_t max_file_size = 256ull << 20;  // DeepSeek-R1's is ~9 MB

    // Parses index JSON. `source` names the file in error messages.
    [[nodiscard]] static safetensors_index parse(std::string_view json, std::string source = {}) {
        simdjson::padded_string buf(json);
        return parse_view(buf, std::move(source));
    }
    // Parses JSON already in a padded buffer, without a copy (a simdjson::padded_string, or
    // a padded_string_view over a buffer with SIMDJSON_PADDING spare bytes).
    [[nodiscard]] static safetensors_index parse_padded(simdjson::padded_string_view json,
                                                        std::string source = {}) {
        return parse_view(json, std::move(source));
    }
    // Reads and parses an index file (errc::io_error when the system fails the read).
    [[nodiscard]] static safetensors_index load(const std::filesystem::path& p) {
        detail::json_file f(p, max_file_size, errc::invalid_index);
        if (f.size() >= (std::uint64_t{1} << 20)) {
            if (const auto mapped = f.map()) return parse_view(*mapped, p.string());
        }
        const simdjson::padded_string buf = f.read();
        return parse_view(buf, p.string());
    }

    // Tensors in the order of the file's weight_map.
    [[nodiscard]] std::span<const index_entry> entries() const noexcept { return entries_; }
    [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
    // The distinct shard paths (relative to the index's folder), sorted by name.
    [[nodiscard]] std::span<const std::string> shards() const noexcept { return shards_; }

    // The position in shards() of the shard holding `tensor`, in O(1).
    [[nodiscard]] std::optional<std::uint32_t> shard_index_of(
        std::string_view tensor) const noexcept {
        const index_entry* e = lookup(tensor);
        if (e == nullptr) return std::nullopt;
        return e->shard;
    }
    [[nodiscard]] std::optional<std::string_view> shard_of(std::string_view tensor) const noexcept {
        const index_entry* e = lookup(tensor);
        if (e == nullptr) return std::nullopt;
        return std::string_view(shards_[e->shard]);
    }
    [[nodiscard]] bool contains(std::string_view tensor) const noexcept {
        return lookup(tensor) != nullptr;
    }

    // metadata.total_size and metadata.total_parameters, when present.
    [[nodiscard]] std::optional<std::uint64_t> total_size() const noexcept { return total_size_; }
    [[nodiscard]] std::optional<std::uint64_t> total_parameters() const noexcept {
        return total_parameters_;
    }
    // Every other metadata key, in file order, with its value as minified JSON text
    // (mergekit and others add their own keys).
    [[nodiscard]] std::span<const std::pair<std::string, std::string>> extra_metadata()
        const noexcept {
        return extra_metadata_;
    }
    [[nodiscard]] const std::string& source() const noexcept { return source_; }

private:
    safetensors_index() = default;

    [[noreturn]] static void fail(std::string_view msg, const std::string& source,
                                  std::string tensor = {}) {
        throw error(errc::invalid_index, msg,
                    error_context{.file = source, .tensor = std::move(tensor)});
    }

    [[nodiscard]] const index_entry* lookup(std::string_view name) const noexcept {
        const auto i = table_.find(name, [this](std::uint32_t e) { return entries_[e].name; });
        return i ? &entries_[*i] : nullptr;
    }

    static safetensors_index parse_view(simdjson::padded_string_view buf, std::string source) {
        using simdjson::dom::element;
        using simdjson::dom::element_type;
        using simdjson::dom::object;

        safetensors_index ix;
        ix.source_ = std::move(source);
        if (buf.size() >= UINT32_MAX) fail("index is too large", ix.source_);
        // Python's json module (which transformers and huggingface_hub read indexes with)
        // decides what is valid: deep nesting and wide integers in metadata are taken.
        detail::json_document doc;
        const bool padded = buf.padding() >= simdjson::SIMDJSON_PADDING;
        if (auto err = doc.parse(std::string_view(buf.data(), buf.size()), padded,
                                 detail::json_reader::python);
            err) {
            fail("not valid JSON: " + doc.message(err), ix.source_);
        }
        const element root = doc.root();
        object top;
        if (root.get_object().get(top)) {
            fail(std::string("expected a JSON object at the top level, found ") +
                     std::string(detail::json_type_name(root.type())),
                 ix.source_);
        }
        std::optional<element> weight_map;
        std::optional<element> metadata;
        for (auto field : top) {
            if (field.key == "weight_map") {
                if (weight_map) fail("duplicate key 'weight_map'", ix.source_);
                weight_map = field.value;
            } else if (field.key == "metadata") {
                if (metadata) fail("duplicate key 'metadata'", ix.source_);
                metadata = field.value;
            }
        }
        if (!weight_map) fail("no 'weight_map' object", ix.source_);
        object wm;
        if (weight_map->get_object().get(wm)) {
            fail(std::string("'weight_map' must be an object, found ") +
                     std::string(detail::json_type_name(weight_map->type())),
                 ix.source_);
        }
        if (metadata) ix.read_metadata(*metadata);

        const std::size_t n = wm.size();
        if (n == 0) fail("'weight_map' is empty", ix.source_);
        // Unescaped names are never longer than their JSON text, so one arena holds them all.
        ix.arena_ = std::make_unique_for_overwrite<char[]>(buf.size() + 1);
        char* cursor = ix.arena_.get();
        ix.entries_.reserve(n);  // simdjson's size() saturates at 2^24 - 1: a hint only

        std::unordered_map<std::string_view, std::uint32_t, detail::name_hash> shard_ids;
        std::string_view last_shard;
        std::uint32_t last_id = 0;
        std::vector<std::string> shards;
        for (auto field : wm) {
            std::memcpy(cursor, field.key.data(), field.key.size());
            const std::string_view name(cursor, field.key.size());
            cursor += field.key.size();
            std::string_view file;
            if (field.value.get_string().get(file)) {
                fail(std::string("weight_map value must be a string (a shard file name), found ") +
                         std::string(detail::json_type_name(field.value.type())),
                     ix.source_, std::string(name));
            }
            std::uint32_t id = last_id;
            if (shards.empty() || file != last_shard) {
                auto it = shard_ids.find(file);
                if (it == shard_ids.end()) {
                    if (!is_safe_relative_path(file)) {
                        fail("shard path '" + std::string(file) +
                                 "' is not a plain relative path inside the checkpoint folder "
                                 "(absolute paths and '..' are refused)",
                             ix.source_, std::string(name));
                    }
                    id = static_cast<std::uint32_t>(shards.size());
                    shards.emplace_back(file);
                    it = shard_ids.emplace(file, id).first;
                }
                id = it->second;
                last_shard = it->first;
                last_id = id;
            }
            ix.entries_.push_back(index_entry{name, id});
        }
        // The table from the real count: sized from the saturated hint, an index of more than
        // 2^25 names would fill it and the inserts never end.
        ix.build_table();
        // Shards sorted by name; entries renumbered to match.
        std::vector<std::uint32_t> order(shards.size());
        for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
        std::sort(order.begin(), order.end(),
                  [&](std::uint32_t a, std::uint32_t b) { return shards[a] < shards[b]; });
        std::vector<std::uint32_t> renumber(shards.size());
        ix.shards_.reserve(shards.size());
        for (std::uint32_t i = 0; i < order.size(); ++i) {
            renumber[order[i]] = i;
            ix.shards_.push_back(std::move(shards[order[i]]));
        }
        for (auto& e : ix.entries_) e.shard = renumber[e.shard];
        return ix;
    }

    // Hashes first, then inserts with the slot prefetched a few entries ahead: the table is
    // bigger than the cache and each insert would otherwise wait on memory.
    void build_table() {
        table_.reset(entries_.size());
        std::vector<std::uint64_t> hashes(entries_.size());
        for (std::size_t i = 0; i < hashes.size(); ++i) hashes[i] = table_.hash(entries_[i].name);
        constexpr std::size_t ahead = 16;
        const auto name_of = [this](std::uint32_t e) { return entries_[e].name; };
        for (std::size_t i = 0; i < hashes.size(); ++i) {
            if (i + ahead < hashes.size()) table_.prefetch(hashes[i + ahead]);
            const auto pos = static_cast<std::uint32_t>(i);
            if (table_.insert(entries_[i].name, hashes[i], pos, name_of))
                fail("duplicate key in weight_map", source_, std::string(entries_[i].name));
        }
    }

    void read_metadata(simdjson::dom::element md) {
        if (md.is_null()) return;
        simdjson::dom::object obj;
        if (md.get_object().get(obj)) {
            fail(std::string("'metadata' must be an object, found ") +
                     std::string(detail::json_type_name(md.type())),
                 source_);
        }
        for (auto field : obj) {
            const bool is_size = field.key == "total_size";
            if (is_size || field.key == "total_parameters") {
                if (field.value.is_null()) continue;
                std::uint64_t v = 0;
                if (!detail::json_to_uint64(field.value, v)) {
                    fail("metadata." + std::string(field.key) +
                             " must be a non-negative integer, found " +
                             std::string(detail::json_type_name(field.value.type())),
                         source_);
                }
                auto& slot = is_size ? total_size_ : total_parameters_;
                if (slot) fail("duplicate key 'metadata." + std::string(field.key) + "'", source_);
                slot = v;
            } else {
                extra_metadata_.emplace_back(std::string(field.key), simdjson::minify(field.value));
            }
        }
    }

    std::string source_;
    std::unique_ptr<char[]> arena_;  // names; stable across moves
    std::vector<index_entry> entries_;
    detail::name_index table_;  // names → positions in entries_
    std::vector<std::string> shards_;
    std::optional<std::uint64_t> total_size_;
    std::optional<std::uint64_t> total_parameters_;
    std::vector<std::pair<std::string, std::string>> extra_metadata_;
};

}  // namespace safeshard
