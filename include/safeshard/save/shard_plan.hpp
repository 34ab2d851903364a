// How a set of tensors is cut into shard files, exactly as huggingface_hub 2.4's
// split_state_dict_into_shards_factory cuts it, the shard file names and the index JSON.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "safeshard/core/error.hpp"
#include "safeshard/format/json_string.hpp"
#include "safeshard/format/safetensors_writer.hpp"

namespace safeshard {

// huggingface_hub's MAX_SHARD_SIZE, "5GB" (decimal).
inline constexpr std::uint64_t default_max_shard_size = 5'000'000'000;

// A size as huggingface_hub reads it: "5GB", "1.5 mb" (KB/MB/GB/TB decimal, any case, a
// decimal value truncated like Python's int(float * unit)); also a bare integer (bytes) and
// KiB/MiB/GiB/TiB (binary). invalid_argument names what was wrong.
[[nodiscard]] inline std::uint64_t parse_shard_size(std::string_view text) {
    auto fail = [&](std::string_view why) -> std::uint64_t {
        throw error(errc::invalid_argument,
                    "bad shard size '" + std::string(text) + "': " + std::string(why) +
                        " (expected bytes, or a number with KB/MB/GB/TB or KiB/MiB/GiB/TiB)");
    };
    auto trim = [](std::string_view s) {
        while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
        while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
        return s;
    };
    const std::string_view s = trim(text);
    if (s.empty()) return fail("empty");
    if (s.find_first_not_of("0123456789") == std::string_view::npos) {
        std::uint64_t v = 0;
        for (const char c : s) {
            if (mul_overflows(v, std::uint64_t{10}, v) ||
                add_overflows(v, static_cast<std::uint64_t>(c - '0'), v))
                return fail("does not fit in 64 bits");
        }
        return v;
    }
    std::string lower(s);
    for (char& c : lower) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    struct unit {
        std::string_view suffix;
        double factor;
    };
    static constexpr unit units[] = {
        {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0}, {"tib", 1099511627776.0},
        {"kb", 1e3},     {"mb", 1e6},        {"gb", 1e9},           {"tb", 1e12},
    };
    for (const unit& u : units) {
        if (!std::string_view(lower).ends_with(u.suffix)) continue;
        const std::string number(
            trim(std::string_view(lower).substr(0, lower.size() - u.suffix.size())));
        if (number.empty() || number.find_first_not_of("0123456789.") != std::string::npos ||
            number.find('.') != number.rfind('.') || number == ".")
            return fail("the value is not a non-negative decimal number");
        errno = 0;
        const double v = std::strtod(number.c_str(), nullptr) * u.factor;
        if (errno != 0 || !std::isfinite(v) || v >= 18446744073709551616.0)
            return fail("does not fit in 64 bits");
        return static_cast<std::uint64_t>(v);
    }
    return fail("unknown unit");
}

// One shard: its file name and the indices (into the caller's tensor list, in the caller's
// order) of the tensors it holds.
struct shard_file {
    std::string file_name;
    std::vector<std::size_t> tensors;
    std::uint64_t bytes = 0;  // sum of its tensors' byte sizes
};

struct shard_plan {
    std::vector<shard_file> shards;
    std::uint64_t total_size = 0;  // sum of every tensor's byte size (the index's total_size)
    [[nodiscard]] bool is_sharded() const noexcept { return shards.size() > 1; }
};

// The byte size of a tensor (its nbytes); validation_overflow / misaligned_slice as plan_tensors.
[[nodiscard]] inline std::uint64_t tensor_byte_size(const tensor_info& t) {
    const error_context ctx{.file = {}, .tensor = t.name, .offset = std::nullopt, .sys_errno = 0};
    const auto elements = t.shape.element_count();
    if (!elements)
        throw error(errc::validation_overflow,
                    "element count of shape " + t.shape.to_string() + " overflows 64 bits", ctx);
    const std::uint64_t bits = mul_or_throw(*elements, bit_size(t.dtype), "tensor size", ctx);
    if (bits % 8 != 0)
        throw error(errc::misaligned_slice,
                    std::to_string(*elements) + " " + std::string(name(t.dtype)) +
                        " elements do not end on a byte boundary",
                    ctx);
    return bits / 8;
}

// The shard file name for shard `index` (0-based) of `count`: `model.safetensors` when there is
// one shard, else `model-00001-of-00004.safetensors` (5 digits at least, like Python's :05d).
[[nodiscard]] inline std::string shard_file_name(std::size_t index, std::size_t count) {
    if (count <= 1) return "model.safetensors";
    auto pad = [](std::size_t v) {
        std::string s = std::to_string(v);
        if (s.size() < 5) s.insert(0, 5 - s.size(), '0');
        return s;
    };
    return "model-" + pad(index + 1) + "-of-" + pad(count) + ".safetensors";
}

// Cuts `tensors`, in their order, as huggingface_hub does: a tensor larger than
// `max_shard_size` gets a shard of its own at once (the current shard stays open); otherwise a
// tensor that would overflow the current shard closes it. No tensors: one empty
// `model.safetensors` (huggingface_hub would list no file). Duplicate names: duplicate_name.
[[nodiscard]] inline shard_plan plan_shards(std::span<const tensor_info> tensors,
                                            std::uint64_t max_shard_size) {
    {
        std::vector<std::string_view> names;
        names.reserve(tensors.size());
        for (const auto& t : tensors) names.push_back(t.name);
        std::sort(names.begin(), names.end());
        if (const auto dup = std::adjacent_find(names.begin(), names.end()); dup != names.end())
            throw error(errc::duplicate_name, "two tensors share this name",
                        error_context{.file = {},
                                      .tensor = std::string(*dup),
                                      .offset = std::nullopt,
                                      .sys_errno = 0});
    }
    shard_plan plan;
    shard_file current;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        const std::uint64_t size = tensor_byte_size(tensors[i]);
        plan.total_size = add_or_throw(
            plan.total_size, size, "total size",
            error_context{
                .file = {}, .tensor = tensors[i].name, .offset = std::nullopt, .sys_errno = 0});
        if (size > max_shard_size) {
            plan.shards.push_back(shard_file{{}, {i}, size});
            continue;
        }
        if (current.bytes + size > max_shard_size) {  // current.bytes <= max: no overflow
            plan.shards.push_back(std::move(current));
            current = shard_file{};
        }
        current.tensors.push_back(i);
        current.bytes += size;
    }
    if (!current.tensors.empty() || plan.shards.empty()) plan.shards.push_back(std::move(current));
    for (std::size_t s = 0; s < plan.shards.size(); ++s)
        plan.shards[s].file_name = shard_file_name(s, plan.shards.size());
    return plan;
}

// model.safetensors.index.json as transformers writes it (json.dumps(indent=2, sort_keys=True)
// plus a newline): {"metadata": {"total_size": N}, "weight_map": {name: file, ...}} with the
// names sorted (bytewise on UTF-8, which is code point order like Python's sort).
[[nodiscard]] inline std::string serialize_index_json(const shard_plan& plan,
                                                      std::span<const tensor_info> tensors) {
    std::vector<std::pair<std::string_view, const std::string*>> entries;
    entries.reserve(tensors.size());
    for (const auto& s : plan.shards) {
        for (const std::size_t i : s.tensors) {
            detail::require_utf8(tensors[i].name, "tensor name");
            entries.emplace_back(tensors[i].name, &s.file_name);
        }
    }
    std::sort(entries.begin(), entries.end());
    std::string out = "{\n  \"metadata\": {\n    \"total_size\": ";
    detail::append_u64(out, plan.total_size);
    out += "\n  },\n  \"weight_map\": {";
    for (std::size_t i = 0; i < entries.size(); ++i) {
        out += i ? ",\n    " : "\n    ";
        append_json_string(out, entries[i].first, json_string_style::python_ascii());
        out += ": ";
        append_json_string(out, *entries[i].second, json_string_style::python_ascii());
    }
    out += entries.empty() ? "}\n}\n" : "\n  }\n}\n";
    return out;
}

}  // namespace safeshard
