// A safetensors file read in place: file_view (validated header, read with pread from a path or
// out of a borrowed byte span) and tensor_view (one tensor's dtype, shape and bytes, zero-copy
// out of a mapping made on the first access to the bytes).
//
// Validation follows the reference reader (safetensors 0.8) check by check and in its order,
// and is stricter in a few places, each documented where it happens (duplicate names, rank
// above shape::capacity, a tensor written as a JSON array).
#pragma once

#include <simdjson.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <cmath>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
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
#include "safeshard/core/name_hash.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/format/json_document.hpp"
#include "safeshard/io/file_identity.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/mapped_file.hpp"
#include "safeshard/io/syscalls.hpp"

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

// The bytes of a file_view: a borrowed span, or the file mapped on the first access (from any
// thread), so that opening thousands of files to read their headers holds no mapping and no
// descriptor. The file mapped must be the one whose header was validated (a download or an
// atomic save may have renamed another over its path since) and at least as long.
class view_bytes {
public:
    explicit view_bytes(std::span<const std::byte> borrowed) noexcept
        : size_(borrowed.size()), data_(borrowed.data()) {}
    view_bytes(std::filesystem::path path, file_identity identity, std::uint64_t size)
        : path_(std::move(path)), identity_(identity), size_(size), lazy_(true) {}
    view_bytes(const view_bytes&) = delete;
    view_bytes& operator=(const view_bytes&) = delete;
    ~view_bytes() = default;

    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
    // The first byte; maps the file on the first call. io_error where the path names another
    // file now or the file is shorter than it was.
    [[nodiscard]] const std::byte* data() const {
        if (const std::byte* p = data_.load(std::memory_order_acquire); p != nullptr || !lazy_)
            return p;
        return map();
    }
    // Whether the mapping exists (a borrowed span counts as mapped).
    [[nodiscard]] bool mapped() const noexcept {
        return !lazy_ || data_.load(std::memory_order_acquire) != nullptr;
    }

private:
    const std::byte* map() const {
        const std::lock_guard lock(mutex_);
        if (const std::byte* p = data_.load(std::memory_order_relaxed)) return p;
        mapped_file m(path_);
        if (m.identity() != identity_)
            throw error(errc::io_error,
                        "the file was replaced after it was opened (its path names another file "
                        "now); open it again",
                        {.file = path_.string()});
        if (m.size() < size_)
            throw error(errc::io_error,
                        "the file is shorter (" + std::to_string(m.size()) +
                            " bytes) than when it was opened (" + std::to_string(size_) + " bytes)",
                        {.file = path_.string()});
        mapping_ = std::move(m);
        data_.store(mapping_.data(), std::memory_order_release);
        return mapping_.data();
    }

    std::filesystem::path path_{};
    file_identity identity_{};
    std::uint64_t size_ = 0;
    bool lazy_ = false;
    mutable std::mutex mutex_{};
    mutable mapped_file mapping_{};
    mutable std::atomic<const std::byte*> data_{nullptr};
};

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
    tensor_view(const detail::tensor_entry& e, const char* names, const detail::view_bytes& file,
                std::uint64_t data_start) noexcept
        : e_(&e), names_(names), file_(&file), data_start_(data_start) {}

    [[nodiscard]] std::string_view name() const noexcept {
        return {names_ + e_->name_offset, e_->name_size};
    }
    [[nodiscard]] safeshard::dtype dtype() const noexcept { return e_->type; }
    [[nodiscard]] const safeshard::shape& shape() const noexcept { return e_->extents; }
    [[nodiscard]] std::uint64_t element_count() const noexcept { return e_->elements; }
    [[nodiscard]] std::uint64_t byte_size() const noexcept { return e_->end - e_->begin; }
    // The tensor's bytes inside the mapping (or the borrowed span). The first access to a
    // file's bytes maps it: io_error where its path names another file by then (see
    // file_view::bytes()).
    [[nodiscard]] std::span<const std::byte> bytes() const {
        return {data(), static_cast<std::size_t>(e_->end - e_->begin)};
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
        return typed_elements<T>(data(), static_cast<std::size_t>(e_->elements));
    }

private:
    [[nodiscard]] const std::byte* data() const { return file_->data() + file_begin(); }

    const detail::tensor_entry* e_;
    const char* names_;
    const detail::view_bytes* file_;
    std::uint64_t data_start_;
};

// A validated safetensors file. Move-only. Opened from a path, it reads and validates the
// header with pread and keeps no descriptor; the file is mapped on the first access to tensor
// bytes (and owned from then on). Otherwise it borrows the bytes. Tensor views and spans stay
// valid while the file_view lives (also across moves: the mapping does not move).
class file_view {
public:
    // Reads the header and validates it against the file's size; maps nothing yet (call
    // bytes() to map the file now, e.g. before a save may rename another file over the path:
    // a view that maps later refuses a replaced file with io_error).
    explicit file_view(const std::filesystem::path& path, parse_options options = {})
        : file_name_(path.string()) {
        const file_reader r(path);
        version_ = r.opened_version();
        read_header(r, options);
        bytes_ = std::make_unique<detail::view_bytes>(path, version_->id, r.size());
        parse_header(r.size(), true);
    }

    // Validates borrowed bytes (the whole file); `file_name` only labels errors.
    explicit file_view(std::span<const std::byte> bytes, parse_options options = {},
                       std::string file_name = {})
        : file_name_(std::move(file_name)), bytes_(std::make_unique<detail::view_bytes>(bytes)) {
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

    // The file whose header was read, when the view was opened from a path.
    [[nodiscard]] std::optional<file_identity> identity() const noexcept {
        if (!version_) return std::nullopt;
        return version_->id;
    }
    // That file as it was when its header was read (size, times): what a reader opened later
    // must find (read_options::expect).
    [[nodiscard]] const std::optional<file_version>& version() const noexcept { return version_; }
    // The header length N (JSON bytes after the 8-byte prefix, padding included).
    [[nodiscard]] std::uint64_t header_size() const noexcept { return header_size_; }
    // Where the data buffer starts in the file: 8 + N.
    [[nodiscard]] std::uint64_t data_offset() const noexcept { return 8 + header_size_; }
    [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
    [[nodiscard]] bool empty() const noexcept { return entries_.empty(); }
    // The whole file (mapping or borrowed span). Opened from a path, the first call maps the
    // file: io_error where its path names another file now (renamed over since the view was
    // opened) or the file is shorter than it was.
    [[nodiscard]] std::span<const std::byte> bytes() const& {
        return {bytes_->data(), static_cast<std::size_t>(bytes_->size())};
    }
    [[nodiscard]] std::span<const std::byte> bytes() const&& = delete;
    // Whether bytes() has mapped the file (a view of borrowed bytes always has them).
    [[nodiscard]] bool mapped() const noexcept { return bytes_->mapped(); }
    // The header's JSON text (padding included).
    [[nodiscard]] std::string_view header_json() const& noexcept {
        return {header_text_, static_cast<std::size_t>(header_size_)};
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
        return tensor_view(entries_.at(i), names_.data(), *bytes_, data_offset());
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

    // A number with its value, anything else by its type. An integer wider than 64 bits is
    // read as a float (as the reference reads it), and said so.
    static std::string describe_number(simdjson::dom::element v) {
        double d = 0;
        std::int64_t i = 0;
        char buf[32];
        if (v.type() == simdjson::dom::element_type::DOUBLE &&
            v.get_double().get(d) == simdjson::SUCCESS) {
            const std::string value(buf, std::to_chars(buf, buf + sizeof buf, d).ptr);
            if (std::fabs(d) >= 0x1p63 && d == std::trunc(d))
                return "an integer wider than 64 bits (" + value + ")";
            return "the number " + value;
        }
        if (v.get_int64().get(i) == simdjson::SUCCESS) return "the integer " + std::to_string(i);
        return std::string(describe(v.type()));
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
                            describe_number(v),
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

    // A field the reference ignores still has its numbers read by serde_json: one simdjson
    // rounded to a finite f64 at the edge of the range may be out of range there. Cold and
    // out of line: real headers rarely have such fields, and the field loop stays tight.
    [[gnu::cold, gnu::noinline]] void check_ignored_field(simdjson::dom::element v,
                                                          const detail::json_document& doc,
                                                          std::string_view tensor) const {
        if (detail::holds_f64_near_limit(v) && doc.reader_refuses_a_number())
            fail(errc::invalid_header_deserialization,
                 "header is not valid JSON: a number is beyond the range of a 64-bit float",
                 std::string(tensor), 8);
    }

    void parse_tensor(std::string_view name, simdjson::dom::element v, std::uint32_t order,
                      const detail::json_document& doc) {
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
            else {
                check_ignored_field(field.value, doc, name);
                continue;  // other fields are ignored, as the reference does
            }
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

    // The header length N from the file's first 8 bytes, checked against the cap and the size.
    [[nodiscard]] std::uint64_t header_length(std::span<const std::byte> prefix,
                                              std::uint64_t file_size,
                                              const parse_options& options) const {
        if (file_size < 8)
            fail(errc::header_too_small, "expected at least 8 bytes (the header length), found " +
                                             std::to_string(file_size));
        std::uint64_t n = 0;
        std::memcpy(&n, prefix.data(), 8);  // little-endian (config.hpp asserts the host is)
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
        return n;
    }

    // The length and the header read with pread (one call for headers under 4 KiB) into an
    // owned buffer with simdjson's padding; N is checked before anything is allocated.
    void read_header(const file_reader& r, const parse_options& options) {
        std::array<std::byte, 4096> first;
        const auto got = static_cast<std::size_t>(std::min<std::uint64_t>(r.size(), first.size()));
        if (got >= 8) r.read_exact(std::span(first).first(got), 0);
        header_size_ = header_length(first, r.size(), options);
        const auto len = static_cast<std::size_t>(header_size_);
        header_ = std::make_unique_for_overwrite<char[]>(len + simdjson::SIMDJSON_PADDING);
        const std::size_t have = std::min(len, got - 8);
        std::memcpy(header_.get(), first.data() + 8, have);
        if (have < len)
            r.read_exact(std::as_writable_bytes(std::span(header_.get() + have, len - have)),
                         8 + have);
        std::memset(header_.get() + len, 0, simdjson::SIMDJSON_PADDING);
        header_text_ = header_.get();
    }

    // Borrowed bytes: the header parsed in place where enough bytes follow it to serve as
    // simdjson's padding (it reads up to SIMDJSON_PADDING bytes past its input), else copied.
    void parse(std::span<const std::byte> bytes, const parse_options& options) {
        header_size_ = header_length(bytes, bytes.size(), options);
        header_text_ = reinterpret_cast<const char*>(bytes.data()) + 8;
        parse_header(bytes.size(), bytes.size() - 8 - header_size_ >= simdjson::SIMDJSON_PADDING);
    }

    // The header at header_text_, parsed and validated against the file's size; `in_place`:
    // simdjson's padding is readable after it.
    void parse_header(std::uint64_t file_size, bool in_place) {
        const char* json = header_text_;
        const auto len = static_cast<std::size_t>(header_size_);
        if (!simdjson::validate_utf8(json, len))
            fail(errc::invalid_header, "header is not valid UTF-8", {}, 8);

        detail::json_document doc;
        const auto err =
            doc.parse(std::string_view(json, len), in_place, detail::json_reader::serde);
        if (err != simdjson::SUCCESS)
            fail(errc::invalid_header_deserialization,
                 "header is not valid JSON: " + doc.message(err), {}, 8);
        const simdjson::dom::element root = doc.root();
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
                parse_tensor(field.key, field.value, order++, doc);
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

    std::string file_name_;
    std::unique_ptr<detail::view_bytes> bytes_;
    std::optional<file_version> version_{};
    std::unique_ptr<char[]> header_{};  // the header read from a path (padded)
    const char* header_text_ = nullptr;
    std::uint64_t header_size_ = 0;
    std::vector<char> names_;
    std::vector<detail::tensor_entry> entries_;
    detail::name_index index_;
    metadata_map metadata_;
    bool has_metadata_ = false;
};

}  // namespace safeshard
