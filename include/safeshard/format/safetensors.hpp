// A safetensors file read in place: file_view (validated header over a mapping or a borrowed
// byte span) and tensor_view (one tensor's dtype, shape and bytes, zero-copy).
//
// Validation follows the reference reader (safetensors 0.8) check by check and in its order,
// and is stricter in a few places, each documented where it happens (duplicate names, rank
// above shape::capacity, a tensor written as a JSON array).
#pragma once

#include <simdjson.h>

#include <algorithm>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/format/json_text.hpp"
#include "safeshard/io/mapped_file.hpp"

namespace safeshard {

// The reference reader's cap on the header length N.
inline constexpr std::uint64_t default_max_header_size = 100'000'000;

struct parse_options {
    std::uint64_t max_header_size = default_max_header_size;
};

// Metadata of the file (`__metadata__`), string to string, ordered by key.
using metadata_map = std::map<std::string, std::string, std::less<>>;

namespace detail {

struct tensor_entry {
    std::uint32_t name_offset;  // into the file_view's name arena
    std::uint32_t name_size;
    safeshard::dtype type;
    safeshard::shape extents;
    std::uint64_t begin;  // relative to the data buffer
    std::uint64_t end;
    std::uint64_t elements;
};

// The element types `tensor_view::as<T>()` accepts for a dtype: its natural C++ type, or the
// unsigned integer of the same width (raw bits: BF16 as std::uint16_t, F8_* as std::uint8_t).
template <class T>
[[nodiscard]] constexpr bool element_type_matches(safeshard::dtype t) noexcept {
    using safeshard::dtype;
    if constexpr (std::is_same_v<T, std::uint8_t>)
        return bit_size(t) == 8;
    else if constexpr (std::is_same_v<T, std::uint16_t>)
        return bit_size(t) == 16;
    else if constexpr (std::is_same_v<T, std::uint32_t>)
        return bit_size(t) == 32;
    else if constexpr (std::is_same_v<T, std::uint64_t>)
        return bit_size(t) == 64;
    else if constexpr (std::is_same_v<T, std::int8_t>)
        return t == dtype::i8;
    else if constexpr (std::is_same_v<T, std::int16_t>)
        return t == dtype::i16;
    else if constexpr (std::is_same_v<T, std::int32_t>)
        return t == dtype::i32;
    else if constexpr (std::is_same_v<T, std::int64_t>)
        return t == dtype::i64;
    else if constexpr (std::is_same_v<T, float>)
        return t == dtype::f32;
    else if constexpr (std::is_same_v<T, double>)
        return t == dtype::f64;
    else if constexpr (std::is_same_v<T, std::complex<float>>)
        return t == dtype::c64;
    else
        return false;
}

template <class T>
inline constexpr bool is_element_type_v =
    std::is_same_v<T, std::uint8_t> || std::is_same_v<T, std::uint16_t> ||
    std::is_same_v<T, std::uint32_t> || std::is_same_v<T, std::uint64_t> ||
    std::is_same_v<T, std::int8_t> || std::is_same_v<T, std::int16_t> ||
    std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::int64_t> ||
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::complex<float>>;

// Open addressing over indices into the entry table; keys are the names in the arena, so a
// lookup allocates nothing.
class name_index {
public:
    void reset(std::size_t count) {
        std::size_t cap = 16;
        while (cap < count * 2) cap *= 2;
        slots_.assign(cap, 0);
    }

    // Returns the index already holding `name`, or nullopt after inserting `idx`.
    template <class NameOf>
    std::optional<std::uint32_t> insert(std::string_view name, std::uint32_t idx,
                                        const NameOf& name_of) {
        const std::size_t mask = slots_.size() - 1;
        for (std::size_t i = std::hash<std::string_view>{}(name)&mask;; i = (i + 1) & mask) {
            const std::uint32_t s = slots_[i];
            if (s == 0) {
                slots_[i] = idx + 1;
                return std::nullopt;
            }
            if (name_of(s - 1) == name) return s - 1;
        }
    }

    template <class NameOf>
    [[nodiscard]] std::optional<std::uint32_t> find(std::string_view name,
                                                    const NameOf& name_of) const {
        if (slots_.empty()) return std::nullopt;
        const std::size_t mask = slots_.size() - 1;
        for (std::size_t i = std::hash<std::string_view>{}(name)&mask;; i = (i + 1) & mask) {
            const std::uint32_t s = slots_[i];
            if (s == 0) return std::nullopt;
            if (name_of(s - 1) == name) return s - 1;
        }
    }

private:
    std::vector<std::uint32_t> slots_;  // 0 = empty, else entry index + 1
};

// Whether valid JSON holds the number token -0 outside strings. simdjson reads it as the
// integer 0, serde_json (the reference) as the float -0.0, which no size or offset accepts.
[[nodiscard]] inline bool has_negative_zero(std::string_view json) noexcept {
    if (json.find('-') == std::string_view::npos) return false;  // the common case, fast
    bool in_string = false;
    for (std::size_t i = 0; i < json.size(); ++i) {
        const char c = json[i];
        if (in_string) {
            if (c == '\\')
                ++i;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '-' && i + 1 < json.size() && json[i + 1] == '0') {
            const char next = i + 2 < json.size() ? json[i + 2] : ' ';
            if (next != '.' && next != 'e' && next != 'E') return true;
        }
    }
    return false;
}

}  // namespace detail

// Elements of one tensor as T, read without assuming alignment: offsets in a safetensors file
// need not be multiples of the element size (old writers did not pad), so operator[] copies
// the element out (memcpy), and span() is offered only when the bytes happen to be aligned.
template <class T>
class typed_elements {
public:
    typed_elements(const std::byte* data, std::size_t count) noexcept : data_(data), n_(count) {}

    [[nodiscard]] std::size_t size() const noexcept { return n_; }
    [[nodiscard]] bool empty() const noexcept { return n_ == 0; }

    // Element i (unchecked, like std::span).
    [[nodiscard]] T operator[](std::size_t i) const noexcept {
        T v;
        std::memcpy(&v, data_ + i * sizeof(T), sizeof(T));
        return v;
    }
    // Element i; invalid_argument past the end.
    [[nodiscard]] T at(std::size_t i) const {
        if (i >= n_)
            throw error(errc::invalid_argument, "element " + std::to_string(i) +
                                                    " is out of range (the tensor has " +
                                                    std::to_string(n_) + " elements)");
        return (*this)[i];
    }
    [[nodiscard]] bool is_aligned() const noexcept {
        return reinterpret_cast<std::uintptr_t>(data_) % alignof(T) == 0;
    }
    // The elements in place; invalid_argument when the bytes are not aligned for T.
    [[nodiscard]] std::span<const T> span() const {
        if (!is_aligned())
            throw error(errc::invalid_argument, "tensor bytes are not aligned to " +
                                                    std::to_string(alignof(T)) +
                                                    " bytes: use operator[] or copy_to");
        return {reinterpret_cast<const T*>(data_), n_};
    }
    // Copies every element into `out`, which must have size() elements.
    void copy_to(std::span<T> out) const {
        if (out.size() != n_)
            throw error(errc::invalid_argument, "copy_to expected a destination of " +
                                                    std::to_string(n_) + " elements, got " +
                                                    std::to_string(out.size()));
        if (n_ != 0) std::memcpy(out.data(), data_, n_ * sizeof(T));
    }
    [[nodiscard]] std::vector<T> to_vector() const {
        std::vector<T> v(n_);
        copy_to(v);
        return v;
    }

private:
    const std::byte* data_;
    std::size_t n_;
};

// One tensor of a file_view: borrows the view's names and bytes (valid while the view lives).
class tensor_view {
public:
    tensor_view(const detail::tensor_entry& e, const char* names, const std::byte* data_buffer,
                std::uint64_t data_start) noexcept
        : e_(&e), names_(names), data_(data_buffer), data_start_(data_start) {}

    [[nodiscard]] std::string_view name() const noexcept {
        return {names_ + e_->name_offset, e_->name_size};
    }
    [[nodiscard]] safeshard::dtype dtype() const noexcept { return e_->type; }
    [[nodiscard]] const safeshard::shape& shape() const noexcept { return e_->extents; }
    [[nodiscard]] std::uint64_t element_count() const noexcept { return e_->elements; }
    [[nodiscard]] std::uint64_t byte_size() const noexcept { return e_->end - e_->begin; }
    // The tensor's bytes inside the mapping (or the borrowed span).
    [[nodiscard]] std::span<const std::byte> bytes() const noexcept {
        return {data_ + e_->begin, static_cast<std::size_t>(e_->end - e_->begin)};
    }
    // Offsets relative to the data buffer, as written in the header's data_offsets.
    [[nodiscard]] std::uint64_t data_begin() const noexcept { return e_->begin; }
    [[nodiscard]] std::uint64_t data_end() const noexcept { return e_->end; }
    // Offsets in the file (8 + N + data offset).
    [[nodiscard]] std::uint64_t file_begin() const noexcept { return data_start_ + e_->begin; }
    [[nodiscard]] std::uint64_t file_end() const noexcept { return data_start_ + e_->end; }

    // Typed access: T must be the dtype's natural type (float for F32, std::int32_t for I32,
    // std::complex<float> for C64...) or the unsigned integer of its width (raw bits: BF16 as
    // std::uint16_t). Sub-byte dtypes have no element type. Otherwise invalid_dtype.
    template <class T>
    [[nodiscard]] typed_elements<T> as() const {
        static_assert(detail::is_element_type_v<T>,
                      "tensor_view::as<T>: T must be a fixed-width integer, float, double or "
                      "std::complex<float>");
        if (!detail::element_type_matches<T>(e_->type))
            throw error(errc::invalid_dtype,
                        "typed access of " + std::to_string(sizeof(T) * 8) +
                            "-bit elements does not match the tensor's dtype " +
                            std::string(safeshard::name(e_->type)),
                        error_context{.file = {},
                                      .tensor = std::string(name()),
                                      .offset = file_begin(),
                                      .sys_errno = 0});
        return typed_elements<T>(data_ + e_->begin, static_cast<std::size_t>(e_->elements));
    }

private:
    const detail::tensor_entry* e_;
    const char* names_;
    const std::byte* data_;
    std::uint64_t data_start_;
};

// A validated safetensors file. Move-only; owns the mapping when opened from a path, borrows
// the bytes otherwise. Tensor views and spans stay valid while the file_view lives (also
// across moves: the mapping does not move).
class file_view {
public:
    // Maps the file and validates it.
    explicit file_view(const std::filesystem::path& path, parse_options options = {})
        : mapping_(std::make_unique<mapped_file>(path)), file_name_(path.string()) {
        parse(mapping_->bytes(), options);
    }

    // Validates borrowed bytes (the whole file); `file_name` only labels errors.
    explicit file_view(std::span<const std::byte> bytes, parse_options options = {},
                       std::string file_name = {})
        : file_name_(std::move(file_name)) {
        parse(bytes, options);
    }

    // A view must not outlive its bytes: no file_view from a temporary buffer.
    explicit file_view(std::vector<std::byte>&&, parse_options = {}, std::string = {}) = delete;
    explicit file_view(std::string&&, parse_options = {}, std::string = {}) = delete;

    file_view(file_view&&) noexcept = default;
    file_view& operator=(file_view&&) noexcept = default;
    file_view(const file_view&) = delete;
    file_view& operator=(const file_view&) = delete;
    ~file_view() = default;

    // The file mapped, when the view was opened from a path.
    [[nodiscard]] std::optional<file_identity> identity() const noexcept {
        if (!mapping_) return std::nullopt;
        return mapping_->identity();
    }
    // The header length N (JSON bytes after the 8-byte prefix, padding included).
    [[nodiscard]] std::uint64_t header_size() const noexcept { return header_size_; }
    // Where the data buffer starts in the file: 8 + N.
    [[nodiscard]] std::uint64_t data_offset() const noexcept { return 8 + header_size_; }
    [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
    [[nodiscard]] bool empty() const noexcept { return entries_.empty(); }
    // The whole file (mapping or borrowed span).
    [[nodiscard]] std::span<const std::byte> bytes() const& noexcept { return bytes_; }
    [[nodiscard]] std::span<const std::byte> bytes() const&& = delete;
    // The header's JSON text (padding included).
    [[nodiscard]] std::string_view header_json() const& noexcept {
        return {reinterpret_cast<const char*>(bytes_.data()) + 8,
                static_cast<std::size_t>(header_size_)};
    }
    [[nodiscard]] std::string_view header_json() const&& = delete;
    // The path given to the constructor, or the label given with borrowed bytes.
    [[nodiscard]] const std::string& file_name() const noexcept { return file_name_; }

    // `__metadata__`; empty when absent (has_metadata() tells absent from `{}`).
    [[nodiscard]] const metadata_map& metadata() const noexcept { return metadata_; }
    [[nodiscard]] bool has_metadata() const noexcept { return has_metadata_; }
    [[nodiscard]] std::optional<std::string_view> metadata(std::string_view key) const {
        auto it = metadata_.find(key);
        if (it == metadata_.end()) return std::nullopt;
        return std::string_view(it->second);
    }

    [[nodiscard]] bool contains(std::string_view name) const noexcept {
        return find_index(name).has_value();
    }
    // The tensor of that name; tensor_not_found otherwise. O(1).
    [[nodiscard]] tensor_view tensor(std::string_view name) const& {
        const auto i = find_index(name);
        if (!i)
            throw error(errc::tensor_not_found, "no tensor named '" + std::string(name) + "'",
                        error_context{.file = file_name_,
                                      .tensor = std::string(name),
                                      .offset = std::nullopt,
                                      .sys_errno = 0});
        return at(*i);
    }
    [[nodiscard]] tensor_view tensor(std::string_view) const&& = delete;
    [[nodiscard]] std::optional<tensor_view> find(std::string_view name) const& {
        const auto i = find_index(name);
        if (!i) return std::nullopt;
        return at(*i);
    }
    [[nodiscard]] std::optional<tensor_view> find(std::string_view) const&& = delete;
    // The i-th tensor in file order (sorted by data offset).
    [[nodiscard]] tensor_view at(std::size_t i) const& {
        return tensor_view(entries_.at(i), names_.data(), bytes_.data() + data_offset(),
                           data_offset());
    }
    [[nodiscard]] tensor_view at(std::size_t) const&& = delete;
    [[nodiscard]] tensor_view operator[](std::size_t i) const& { return at(i); }
    [[nodiscard]] tensor_view operator[](std::size_t) const&& = delete;

    // Iteration in file order yields tensor_view values.
    class iterator {
    public:
        using value_type = tensor_view;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        iterator(const file_view* v, std::size_t i) noexcept : v_(v), i_(i) {}
        [[nodiscard]] tensor_view operator*() const { return v_->at(i_); }
        iterator& operator++() noexcept {
            ++i_;
            return *this;
        }
        iterator operator++(int) noexcept {
            auto t = *this;
            ++i_;
            return t;
        }
        friend bool operator==(const iterator& a, const iterator& b) noexcept {
            return a.i_ == b.i_;
        }

    private:
        const file_view* v_ = nullptr;
        std::size_t i_ = 0;
    };
    [[nodiscard]] iterator begin() const& noexcept { return {this, 0}; }
    [[nodiscard]] iterator end() const& noexcept { return {this, entries_.size()}; }
    iterator begin() const&& = delete;
    iterator end() const&& = delete;

    // The names in file order.
    [[nodiscard]] std::vector<std::string_view> names() const& {
        std::vector<std::string_view> out;
        out.reserve(entries_.size());
        for (const auto& e : entries_) out.push_back(name_of(e));
        return out;
    }
    [[nodiscard]] std::vector<std::string_view> names() const&& = delete;

private:
    [[nodiscard]] std::string_view name_of(const detail::tensor_entry& e) const noexcept {
        return {names_.data() + e.name_offset, e.name_size};
    }
    [[nodiscard]] std::optional<std::uint32_t> find_index(std::string_view name) const {
        return index_.find(name, [this](std::uint32_t i) { return name_of(entries_[i]); });
    }

    [[noreturn]] void fail(errc code, std::string message, std::string tensor = {},
                           std::optional<std::uint64_t> offset = std::nullopt) const {
        throw error(
            code, message,
            error_context{
                .file = file_name_, .tensor = std::move(tensor), .offset = offset, .sys_errno = 0});
    }
    [[noreturn]] void fail_schema(std::string message, std::string_view tensor = {}) const {
        fail(errc::invalid_header_deserialization, std::move(message), std::string(tensor));
    }

    static std::string_view describe(simdjson::dom::element_type t) noexcept {
        using simdjson::dom::element_type;
        switch (t) {
            case element_type::ARRAY: return "an array";
            case element_type::OBJECT: return "an object";
            case element_type::INT64:
            case element_type::UINT64: return "an integer";
            case element_type::DOUBLE: return "a floating-point number";
            case element_type::STRING: return "a string";
            case element_type::BOOL: return "a boolean";
            case element_type::NULL_VALUE: return "null";
        }
        return "something else";
    }

    // Appends a name to the arena (whose capacity was reserved: views into it stay valid).
    std::pair<std::uint32_t, std::uint32_t> store_name(std::string_view s) {
        const auto off = static_cast<std::uint32_t>(names_.size());
        names_.insert(names_.end(), s.begin(), s.end());
        return {off, static_cast<std::uint32_t>(s.size())};
    }

    std::uint64_t read_u64(simdjson::dom::element v, std::string_view what,
                           std::string_view tensor) const {
        std::uint64_t x = 0;
        if (v.get_uint64().get(x) != simdjson::SUCCESS)
            fail_schema(std::string(what) + ": expected a non-negative integer, found " +
                            std::string(describe(v.type())),
                        tensor);
        return x;
    }

    void parse_metadata(simdjson::dom::element v) {
        if (v.is_null()) return;  // the reference reads `"__metadata__": null` as absent
        simdjson::dom::object obj;
        if (v.get_object().get(obj) != simdjson::SUCCESS)
            fail_schema("__metadata__: expected an object of strings, found " +
                        std::string(describe(v.type())));
        has_metadata_ = true;
        for (auto field : obj) {
            std::string_view value;
            if (field.value.get_string().get(value) != simdjson::SUCCESS)
                fail_schema("__metadata__ value of '" + std::string(field.key) +
                            "': expected a string, found " +
                            std::string(describe(field.value.type())));
            // Stricter than the reference, which keeps the last of duplicate keys silently.
            if (!metadata_.emplace(std::string(field.key), std::string(value)).second)
                fail(errc::duplicate_name,
                     "__metadata__ has the key '" + std::string(field.key) + "' twice");
        }
    }

    void parse_tensor(std::string_view name, simdjson::dom::element v, std::uint32_t order) {
        simdjson::dom::object obj;
        // The reference (serde) also takes a tensor written as a 3-element array; we do not.
        if (v.get_object().get(obj) != simdjson::SUCCESS)
            fail_schema("expected an object with dtype, shape and data_offsets, found " +
                            std::string(describe(v.type())),
                        name);
        std::optional<simdjson::dom::element> dt, sh, off;
        for (auto field : obj) {
            std::optional<simdjson::dom::element>* slot = nullptr;
            if (field.key == "dtype")
                slot = &dt;
            else if (field.key == "shape")
                slot = &sh;
            else if (field.key == "data_offsets")
                slot = &off;
            else
                continue;  // other fields are ignored, as the reference does
            if (*slot) fail_schema("duplicate field '" + std::string(field.key) + "'", name);
            *slot = field.value;
        }
        if (!dt) fail_schema("missing field 'dtype'", name);
        if (!sh) fail_schema("missing field 'shape'", name);
        if (!off) fail_schema("missing field 'data_offsets'", name);

        std::string_view dts;
        if (dt->get_string().get(dts) != simdjson::SUCCESS)
            fail_schema("dtype: expected a string, found " + std::string(describe(dt->type())),
                        name);
        const auto type = parse_dtype(dts);
        if (!type) fail_schema("unknown dtype '" + std::string(dts) + "'", name);

        detail::tensor_entry e{};
        e.type = *type;
        simdjson::dom::array dims;
        if (sh->get_array().get(dims) != simdjson::SUCCESS)
            fail_schema("shape: expected an array, found " + std::string(describe(sh->type())),
                        name);
        for (auto d : dims) {
            const auto x = read_u64(d, "shape", name);
            if (!e.extents.try_push_back(x))
                fail(errc::rank_too_large,
                     "shape has more than " + std::to_string(shape::capacity) +
                         " dimensions, safeshard's limit",
                     std::string(name));
        }
        simdjson::dom::array offs;
        if (off->get_array().get(offs) != simdjson::SUCCESS)
            fail_schema("data_offsets: expected an array of 2 integers, found " +
                            std::string(describe(off->type())),
                        name);
        if (offs.size() != 2)
            fail_schema("data_offsets: expected 2 integers, found " + std::to_string(offs.size()),
                        name);
        auto it = offs.begin();
        e.begin = read_u64(*it, "data_offsets", name);
        ++it;
        e.end = read_u64(*it, "data_offsets", name);
        const auto [no, ns] = store_name(name);
        e.name_offset = no;
        e.name_size = ns;
        e.elements = order;  // the header position, until validate() stores the count
        entries_.push_back(e);
    }

    void parse(std::span<const std::byte> bytes, const parse_options& options) {
        bytes_ = bytes;
        const std::uint64_t file_size = bytes.size();
        if (file_size < 8)
            fail(errc::header_too_small, "expected at least 8 bytes (the header length), found " +
                                             std::to_string(file_size));
        std::uint64_t n = 0;
        std::memcpy(&n, bytes.data(), 8);  // little-endian (config.hpp asserts the host is)
        if (n > options.max_header_size)
            fail(errc::header_too_large,
                 "header length " + std::to_string(n) + " exceeds the limit of " +
                     std::to_string(options.max_header_size),
                 {}, 0);
        std::uint64_t stop = 0;
        if (add_overflows(n, std::uint64_t{8}, stop) || stop > file_size)
            fail(errc::invalid_header_length,
                 "header of " + std::to_string(n) + " bytes ends past the end of the file (" +
                     std::to_string(file_size) + " bytes)",
                 {}, 0);
        header_size_ = n;
        const char* json = reinterpret_cast<const char*>(bytes.data()) + 8;
        const auto len = static_cast<std::size_t>(n);
        if (!simdjson::validate_utf8(json, len))
            fail(errc::invalid_header, "header is not valid UTF-8", {}, 8);

        // simdjson reads up to SIMDJSON_PADDING bytes past its input: parse in place only
        // when the file has that many bytes after the header, else it copies.
        const bool in_place = file_size - stop >= simdjson::SIMDJSON_PADDING;
        std::unique_ptr<simdjson::dom::parser> own;
        simdjson::dom::parser* parser = &detail::thread_parser();
        if (len > detail::shared_parser_limit) {
            own = std::make_unique<simdjson::dom::parser>();
            detail::prepare_parser(*own, len);
            parser = own.get();
        }
        simdjson::dom::element root;
        const auto err =
            parser->parse(reinterpret_cast<const std::uint8_t*>(json), len, !in_place).get(root);
        if (err != simdjson::SUCCESS)
            fail(errc::invalid_header_deserialization,
                 std::string("header is not valid JSON: ") + simdjson::error_message(err), {}, 8);
        // Stricter than the reference only for a -0 inside a field it ignores.
        if (detail::has_negative_zero(std::string_view(json, len)))
            fail_schema("header: -0 is not a non-negative integer");
        simdjson::dom::object top;
        if (root.get_object().get(top) != simdjson::SUCCESS)
            fail_schema("header: expected a JSON object, found " +
                        std::string(describe(root.type())));

        names_.reserve(len);  // unescaped names are never longer than the header
        const std::size_t fields = top.size();
        entries_.reserve(fields);
        bool seen_metadata = false;
        std::uint32_t order = 0;
        for (auto field : top) {
            if (field.key == "__metadata__") {
                // serde rejects a second `__metadata__` too; we say why.
                if (seen_metadata)
                    fail(errc::duplicate_name, "the header has '__metadata__' twice");
                seen_metadata = true;
                parse_metadata(field.value);
            } else {
                if (entries_.size() >= UINT32_MAX - 1) fail_schema("too many tensors");
                parse_tensor(field.key, field.value, order++);
            }
        }
        // File order; ties (zero-size tensors) keep header order.
        std::sort(entries_.begin(), entries_.end(), [](const auto& a, const auto& b) {
            if (a.begin != b.begin) return a.begin < b.begin;
            if (a.end != b.end) return a.end < b.end;
            return a.elements < b.elements;
        });
        // Stricter than the reference, which keeps the last of duplicate names silently.
        index_.reset(entries_.size());
        for (std::uint32_t i = 0; i < entries_.size(); ++i)
            if (index_.insert(name_of(entries_[i]), i,
                              [this](std::uint32_t j) { return name_of(entries_[j]); }))
                fail(errc::duplicate_name, "the header names this tensor twice",
                     std::string(name_of(entries_[i])));
        validate(file_size);
    }

    // The reference's Metadata::validate, in its order, then the buffer end check.
    void validate(std::uint64_t file_size) {
        const std::uint64_t data_start = 8 + header_size_;
        std::uint64_t cursor = 0;
        for (auto& e : entries_) {
            const auto name = [&] { return std::string(name_of(e)); };
            if (e.begin != cursor || e.end < e.begin)
                fail(errc::invalid_offset,
                     "expected data_offsets to start at " + std::to_string(cursor) +
                         " (the end of the previous tensor) with end >= begin, found [" +
                         std::to_string(e.begin) + ", " + std::to_string(e.end) + "]",
                     name(),
                     e.begin <= UINT64_MAX - data_start ? std::optional(data_start + e.begin)
                                                        : std::nullopt);
            cursor = e.end;
            const auto elements = e.extents.element_count();
            if (!elements)
                fail(errc::validation_overflow,
                     "element count of shape " + e.extents.to_string() + " overflows 64 bits",
                     name());
            std::uint64_t bits = 0;
            if (mul_overflows(*elements, std::uint64_t{bit_size(e.type)}, bits))
                fail(errc::validation_overflow,
                     "size in bits of " + std::to_string(*elements) + " " +
                         std::string(safeshard::name(e.type)) + " elements overflows 64 bits",
                     name());
            if (bits % 8 != 0)
                fail(errc::misaligned_slice,
                     std::to_string(*elements) + " " + std::string(safeshard::name(e.type)) +
                         " elements take " + std::to_string(bits) +
                         " bits, which does not end on a byte boundary",
                     name());
            if (e.end - e.begin != bits / 8)
                fail(errc::tensor_invalid_info,
                     "dtype " + std::string(safeshard::name(e.type)) + " and shape " +
                         e.extents.to_string() + " need " + std::to_string(bits / 8) +
                         " bytes, data_offsets give " + std::to_string(e.end - e.begin),
                     name(), data_start + e.begin);
            e.elements = *elements;
        }
        std::uint64_t expected = 0;
        const bool overflow = add_overflows(cursor, data_start, expected);
        if (overflow || expected != file_size)
            fail(errc::metadata_incomplete_buffer,
                 "expected the file to end where the tensors end (" +
                     (overflow ? std::string("past 2^64") : "byte " + std::to_string(expected)) +
                     "), found " + std::to_string(file_size) + " bytes",
                 {}, overflow ? file_size : std::min(expected, file_size));
    }

    std::unique_ptr<mapped_file> mapping_;
    std::string file_name_;
    std::span<const std::byte> bytes_{};
    std::uint64_t header_size_ = 0;
    std::vector<char> names_;
    std::vector<detail::tensor_entry> entries_;
    detail::name_index index_;
    metadata_map metadata_;
    bool has_metadata_ = false;
};

}  // namespace safeshard
