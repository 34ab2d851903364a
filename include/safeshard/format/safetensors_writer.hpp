// Writing safetensors files: the header exactly as the reference (safetensors 0.8) writes it,
// whole files in memory or on disk, and a streaming writer for checkpoints that never sit in
// memory. Files go through a temp file and a rename, so a failed save leaves nothing behind
// and a file_view that mapped the old file keeps its bytes.
#pragma once

#include <simdjson.h>

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/name_hash.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/format/json_string.hpp"
#include "safeshard/format/safetensors.hpp"
#include "safeshard/io/atomic_file.hpp"

namespace safeshard {

// What the header says of a tensor before its bytes exist.
struct tensor_info {
    std::string name;
    safeshard::dtype dtype = safeshard::dtype::u8;
    safeshard::shape shape{};
};

// A tensor placed in the file: header order, data offsets relative to the data buffer.
struct planned_tensor {
    std::string name;
    safeshard::dtype dtype = safeshard::dtype::u8;
    safeshard::shape shape{};
    std::uint64_t begin = 0;
    std::uint64_t end = 0;
    [[nodiscard]] std::uint64_t byte_size() const noexcept { return end - begin; }
};

// A tensor with its bytes, for the whole-file writers (the bytes are borrowed).
struct tensor_data {
    std::string_view name;
    safeshard::dtype dtype = safeshard::dtype::u8;
    safeshard::shape shape{};
    std::span<const std::byte> bytes{};
};

namespace detail {

inline void append_u64(std::string& out, std::uint64_t v) {
    char buf[24];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
}

inline void require_utf8(std::string_view s, std::string_view what) {
    if (!simdjson::validate_utf8(s.data(), s.size()))
        throw error(errc::invalid_argument, std::string(what) + " is not valid UTF-8");
}

}  // namespace detail

// Orders tensors as the reference writer does (dtype descending in the crate's enum order,
// then name, bytewise) and lays their bytes end to end from offset 0. Refuses duplicate names
// (duplicate_name), a tensor named `__metadata__` or a name that is not UTF-8
// (invalid_argument), sizes that overflow (validation_overflow) and sub-byte tensors that do
// not end on a byte boundary (misaligned_slice).
[[nodiscard]] inline std::vector<planned_tensor> plan_tensors(std::vector<tensor_info> tensors) {
    std::sort(tensors.begin(), tensors.end(), [](const tensor_info& a, const tensor_info& b) {
        if (a.dtype != b.dtype) return a.dtype > b.dtype;
        return a.name < b.name;
    });
    std::vector<planned_tensor> plan;
    plan.reserve(tensors.size());
    std::uint64_t offset = 0;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        auto& t = tensors[i];
        const error_context ctx{
            .file = {}, .tensor = t.name, .offset = std::nullopt, .sys_errno = 0};
        if (i > 0 && tensors[i - 1].name == t.name && tensors[i - 1].dtype == t.dtype)
            throw error(errc::duplicate_name, "two tensors share this name", ctx);
        if (t.name == "__metadata__")
            throw error(errc::invalid_argument,
                        "a tensor cannot be named __metadata__ (the header's metadata key)", ctx);
        detail::require_utf8(t.name, "tensor name");
        if (!is_file_dtype(t.dtype))
            throw error(errc::invalid_argument,
                        std::string(name(t.dtype)) +
                            " is no safetensors dtype (a load reads it; no file holds it)",
                        ctx);
        const auto elements = t.shape.element_count();
        if (!elements)
            throw error(errc::validation_overflow,
                        "element count of shape " + t.shape.to_string() + " overflows 64 bits",
                        ctx);
        const std::uint64_t bits = mul_or_throw(*elements, bit_size(t.dtype), "tensor size", ctx);
        if (bits % 8 != 0)
            throw error(errc::misaligned_slice,
                        std::to_string(*elements) + " " + std::string(name(t.dtype)) +
                            " elements do not end on a byte boundary",
                        ctx);
        const std::uint64_t end = add_or_throw(offset, bits / 8, "data offset", ctx);
        plan.push_back(planned_tensor{std::move(t.name), t.dtype, t.shape, offset, end});
        offset = end;
    }
    // Same name, different dtypes: not adjacent after the sort, so check once more.
    if (plan.size() > 1) {
        std::vector<std::string_view> names;
        names.reserve(plan.size());
        for (const auto& p : plan) names.push_back(p.name);
        std::sort(names.begin(), names.end());
        const auto dup = std::adjacent_find(names.begin(), names.end());
        if (dup != names.end())
            throw error(errc::duplicate_name, "two tensors share this name",
                        error_context{.file = {},
                                      .tensor = std::string(*dup),
                                      .offset = std::nullopt,
                                      .sys_errno = 0});
    }
    return plan;
}

// The header JSON, as the reference writes it: compact, `__metadata__` first when given
// (keys in order), tensors in plan order, padded with spaces to a multiple of 8 bytes.
// One exception: for no tensors and empty metadata, safetensors 0.8 writes the invalid
// `{},"__metadata__":{}}`; we write `{"__metadata__":{}}`.
[[nodiscard]] inline std::string serialize_header(std::span<const planned_tensor> plan,
                                                  const std::optional<metadata_map>& metadata) {
    std::string out;
    out.reserve(64 + plan.size() * 96);
    out += '{';
    bool first = true;
    if (metadata) {
        out += "\"__metadata__\":{";
        bool first_key = true;
        for (const auto& [k, v] : *metadata) {
            detail::require_utf8(k, "metadata key");
            detail::require_utf8(v, "metadata value");
            if (!first_key) out += ',';
            first_key = false;
            append_json_string(out, k, json_string_style::serde());
            out += ':';
            append_json_string(out, v, json_string_style::serde());
        }
        out += '}';
        first = false;
    }
    for (const auto& t : plan) {
        if (!first) out += ',';
        first = false;
        append_json_string(out, t.name, json_string_style::serde());
        out += ":{\"dtype\":\"";
        out += name(t.dtype);
        out += "\",\"shape\":[";
        for (std::size_t i = 0; i < t.shape.rank(); ++i) {
            if (i) out += ',';
            detail::append_u64(out, t.shape[i]);
        }
        out += "],\"data_offsets\":[";
        detail::append_u64(out, t.begin);
        out += ',';
        detail::append_u64(out, t.end);
        out += "]}";
    }
    out += '}';
    out.append((8 - out.size() % 8) % 8, ' ');
    if (out.size() > default_max_header_size)
        throw error(errc::header_too_large, "the header would take " + std::to_string(out.size()) +
                                                " bytes, over the readers' limit of " +
                                                std::to_string(default_max_header_size));
    return out;
}

// The 8-byte little-endian length followed by the header.
[[nodiscard]] inline std::string serialize_prefix_and_header(
    std::span<const planned_tensor> plan, const std::optional<metadata_map>& metadata) {
    const std::string header = serialize_header(plan, metadata);
    std::string out(8, '\0');
    const std::uint64_t n = header.size();
    std::memcpy(out.data(), &n, 8);
    return out + header;
}

namespace detail {

inline std::vector<tensor_info> infos_of(std::span<const tensor_data> tensors) {
    std::vector<tensor_info> infos;
    infos.reserve(tensors.size());
    for (const auto& t : tensors)
        infos.push_back(tensor_info{std::string(t.name), t.dtype, t.shape});
    return infos;
}

// The caller's tensors in plan order (plan_tensors refused duplicate names).
inline std::vector<const tensor_data*> in_plan_order(std::span<const tensor_data> tensors,
                                                     std::span<const planned_tensor> plan) {
    std::unordered_map<std::string_view, const tensor_data*, detail::name_hash> by_name;
    by_name.reserve(tensors.size());
    for (const auto& t : tensors) by_name.emplace(t.name, &t);
    std::vector<const tensor_data*> out;
    out.reserve(plan.size());
    for (const auto& p : plan) {
        const tensor_data* t = by_name.at(p.name);
        if (t->bytes.size() != p.byte_size())
            throw error(errc::invalid_argument,
                        "expected " + std::to_string(p.byte_size()) + " bytes for " +
                            std::string(name(p.dtype)) + " " + p.shape.to_string() + ", got " +
                            std::to_string(t->bytes.size()),
                        error_context{
                            .file = {}, .tensor = p.name, .offset = std::nullopt, .sys_errno = 0});
        out.push_back(t);
    }
    return out;
}

}  // namespace detail

// Writes a safetensors file with a header computed up front; the tensors' bytes follow in
// plan() order, supplied by write() (chunks of any size, crossing tensors freely) or
// write_tensor() (one whole tensor). Nothing appears at the target until commit(); a writer
// destroyed before commit() leaves the target as it was.
class safetensors_writer {
public:
    safetensors_writer(std::filesystem::path target, std::vector<tensor_info> tensors,
                       std::optional<metadata_map> metadata = std::nullopt)
        : plan_(plan_tensors(std::move(tensors))), file_(std::move(target)) {
        const std::string head = serialize_prefix_and_header(plan_, metadata);
        header_size_ = head.size() - 8;
        data_size_ = plan_.empty() ? 0 : plan_.back().end;
        file_.write(std::as_bytes(std::span(head)));
        skip_finished();
    }

    [[nodiscard]] std::span<const planned_tensor> plan() const noexcept { return plan_; }
    [[nodiscard]] std::uint64_t header_size() const noexcept { return header_size_; }
    [[nodiscard]] std::uint64_t data_size() const noexcept { return data_size_; }
    [[nodiscard]] std::uint64_t file_size() const noexcept { return 8 + header_size_ + data_size_; }
    [[nodiscard]] std::uint64_t data_written() const noexcept { return written_; }
    // The tensor the next data byte belongs to, or nullptr when every byte was supplied.
    [[nodiscard]] const planned_tensor* current() const noexcept {
        return next_ < plan_.size() ? &plan_[next_] : nullptr;
    }

    // Appends data bytes; invalid_argument (and nothing written) past the planned data size.
    void write(std::span<const std::byte> chunk) {
        if (chunk.size() > data_size_ - written_)
            throw error(errc::invalid_argument,
                        "expected at most " + std::to_string(data_size_ - written_) +
                            " more data bytes, got " + std::to_string(chunk.size()),
                        context());
        file_.write(chunk);
        written_ += chunk.size();
        skip_finished();
    }

    // Writes one whole tensor, which must be the next in plan() order and of its exact size.
    void write_tensor(std::string_view name, std::span<const std::byte> bytes) {
        const planned_tensor* t = next_tensor_start();
        if (!t || t->name != name)
            throw error(errc::invalid_argument,
                        "expected tensor '" + (t ? t->name : std::string("(none left)")) +
                            "' next, got '" + std::string(name) + "'",
                        context());
        if (bytes.size() != t->byte_size())
            throw error(errc::invalid_argument,
                        "expected " + std::to_string(t->byte_size()) + " bytes for " +
                            std::string(safeshard::name(t->dtype)) + " " + t->shape.to_string() +
                            ", got " + std::to_string(bytes.size()),
                        context());
        file_.write(bytes);
        written_ += bytes.size();
        ++pending_;
        skip_finished();
    }

    // invalid_argument when data bytes are missing (the target is left untouched); else makes
    // the file appear at the target, complete.
    void commit() {
        if (written_ != data_size_)
            throw error(errc::invalid_argument,
                        "expected " + std::to_string(data_size_) + " data bytes, got " +
                            std::to_string(written_),
                        context());
        file_.commit();
    }

    [[nodiscard]] const std::filesystem::path& target() const noexcept { return file_.target(); }

private:
    [[nodiscard]] error_context context() const {
        return error_context{.file = file_.target().string(),
                             .tensor = current() ? current()->name : std::string(),
                             .offset = 8 + header_size_ + written_,
                             .sys_errno = 0};
    }
    // The tensor starting at the current position that write_tensor() may write next: the
    // first not yet written whole (zero-size tensors included, in plan order).
    [[nodiscard]] const planned_tensor* next_tensor_start() const noexcept {
        return pending_ < plan_.size() && plan_[pending_].begin == written_ ? &plan_[pending_]
                                                                            : nullptr;
    }
    void skip_finished() noexcept {
        while (next_ < plan_.size() && plan_[next_].end <= written_) ++next_;
        // write() may cross tensors: those now behind the cursor count as written; a zero-size
        // tensor exactly at the cursor stays next for write_tensor().
        while (pending_ < plan_.size() &&
               (plan_[pending_].end < written_ ||
                (plan_[pending_].end == written_ && plan_[pending_].byte_size() != 0)))
            ++pending_;
    }

    std::vector<planned_tensor> plan_;
    atomic_file file_;
    std::uint64_t header_size_ = 0;
    std::uint64_t data_size_ = 0;
    std::uint64_t written_ = 0;
    std::size_t next_ = 0;     // first tensor whose end is past the cursor
    std::size_t pending_ = 0;  // first tensor write_tensor() has not covered
};

// Streams a file: `produce(const planned_tensor&, safetensors_writer&)` is called for each
// tensor in plan order and must write exactly its bytes (invalid_argument otherwise, and the
// target is left untouched).
template <class Producer>
void save_file_streaming(const std::filesystem::path& target, std::vector<tensor_info> tensors,
                         const std::optional<metadata_map>& metadata, Producer&& produce) {
    safetensors_writer w(target, std::move(tensors), metadata);
    for (const auto& t : w.plan()) {
        const std::uint64_t before = w.data_written();
        produce(t, w);
        if (w.data_written() - before != t.byte_size())
            throw error(errc::invalid_argument,
                        "the producer wrote " + std::to_string(w.data_written() - before) +
                            " bytes, expected " + std::to_string(t.byte_size()),
                        error_context{.file = target.string(),
                                      .tensor = t.name,
                                      .offset = std::nullopt,
                                      .sys_errno = 0});
    }
    w.commit();
}

// Writes tensors (bytes borrowed) to `target` atomically.
inline void save_file(const std::filesystem::path& target, std::span<const tensor_data> tensors,
                      const std::optional<metadata_map>& metadata = std::nullopt) {
    safetensors_writer w(target, detail::infos_of(tensors), metadata);
    const auto ordered = detail::in_plan_order(tensors, w.plan());
    for (const tensor_data* t : ordered) w.write_tensor(t->name, t->bytes);
    w.commit();
}

// The whole file in memory.
[[nodiscard]] inline std::vector<std::byte> serialize(
    std::span<const tensor_data> tensors,
    const std::optional<metadata_map>& metadata = std::nullopt) {
    const auto plan = plan_tensors(detail::infos_of(tensors));
    const auto ordered = detail::in_plan_order(tensors, plan);
    const std::string head = serialize_prefix_and_header(plan, metadata);
    std::vector<std::byte> out;
    out.reserve(head.size() + (plan.empty() ? 0 : plan.back().end));
    const auto hb = std::as_bytes(std::span(head));
    out.insert(out.end(), hb.begin(), hb.end());
    for (const tensor_data* t : ordered) out.insert(out.end(), t->bytes.begin(), t->bytes.end());
    return out;
}

}  // namespace safeshard
