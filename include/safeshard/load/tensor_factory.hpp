// tensor_factory<T>: how the user's tensor type is allocated and where its bytes are.
// Specialise it for your type (as fmt's formatter<T>); the loader checks it with the concepts
// below, whose static_assert messages name what is missing.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>
#include <utility>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/load/device.hpp"
#include "safeshard/load/engine.hpp"

namespace safeshard {

// What the loader asks a factory for: a tensor of `bytes` bytes (the dtype's size times the
// shape's elements). `name` is the parameter's name, for the factory's own messages.
struct tensor_request {
    std::string_view name{};
    safeshard::dtype dtype = safeshard::dtype::u8;
    safeshard::shape shape{};
    safeshard::device device{};
    std::uint64_t bytes = 0;
};

// The primary template is declared and never defined: tensor_factory<T> exists only where a
// user (or the library, for host_tensor) specialised it.
//   template <> struct safeshard::tensor_factory<my_tensor> {
//       static my_tensor allocate(const safeshard::tensor_request& r);
//       static std::byte* data(my_tensor& t);           // the first byte
//       static std::size_t size_bytes(const my_tensor& t);  // bytes behind data()
//   };
template <class T>
struct tensor_factory;

template <class T>
concept has_tensor_factory = requires {
    sizeof(tensor_factory<T>);
};

template <class T>
concept tensor_factory_allocates = requires(const tensor_request& r) {
    { tensor_factory<T>::allocate(r) } -> std::same_as<T>;
};

template <class T>
concept tensor_factory_exposes_bytes = requires(T& t, const T& ct) {
    { tensor_factory<T>::data(t) } -> std::convertible_to<std::byte*>;
    { tensor_factory<T>::size_bytes(ct) } -> std::convertible_to<std::size_t>;
};

// A tensor type the loader can fill: a specialised factory that allocates and exposes bytes,
// and a type that moves (the loader keeps them in a vector).
template <class T>
concept loadable_tensor = has_tensor_factory<T> && tensor_factory_allocates<T> &&
    tensor_factory_exposes_bytes<T> && std::is_nothrow_move_constructible_v<T>;

// Readable messages, one per missing piece (use in a function templated on T).
template <class T>
consteval bool check_tensor_factory() {
    static_assert(has_tensor_factory<T>,
                  "safeshard::tensor_factory<T> is not specialised for this tensor type: "
                  "specialise it (see load/tensor_factory.hpp)");
    static_assert(!has_tensor_factory<T> || tensor_factory_allocates<T>,
                  "safeshard::tensor_factory<T> needs `static T allocate(const "
                  "safeshard::tensor_request&)`");
    static_assert(!has_tensor_factory<T> || tensor_factory_exposes_bytes<T>,
                  "safeshard::tensor_factory<T> needs `static std::byte* data(T&)` and `static "
                  "std::size_t size_bytes(const T&)`");
    static_assert(std::is_nothrow_move_constructible_v<T>,
                  "the tensor type must be nothrow move constructible");
    return true;
}

// A tensor that lives on a device: its factory names the device load<T>() plans for when the
// options name the host (`static device default_device()`) and makes the engine that fills a
// given device (`static Engine make_engine(const device&)`, a device_copy_engine), as
// cuda_tensor's does. Other tensors are host memory, filled by a host_engine.
template <class T>
concept tensor_factory_names_device = requires {
    { tensor_factory<T>::default_device() } -> std::same_as<device>;
};

template <class T>
concept tensor_factory_makes_engine = requires(const device& d) {
    tensor_factory<T>::make_engine(d);
};

template <class T>
concept device_tensor = loadable_tensor<T> && tensor_factory_names_device<T> &&
    tensor_factory_makes_engine<T> && requires(const device& d) {
    { tensor_factory<T>::make_engine(d) } -> device_copy_engine;
};

// Readable messages for a factory that names half of what a device tensor needs.
template <class T>
consteval bool check_device_factory() {
    static_assert(tensor_factory_names_device<T> == tensor_factory_makes_engine<T>,
                  "a tensor_factory for device memory needs both `static device "
                  "default_device()` and `static Engine make_engine(const device&)`");
    static_assert(!tensor_factory_makes_engine<T> || device_tensor<T>,
                  "tensor_factory<T>::make_engine(const device&) must return an engine that "
                  "models device_copy_engine (load/engine.hpp)");
    return true;
}

// An owned host tensor: an aligned buffer with its dtype and shape.
class host_tensor {
public:
    static constexpr std::size_t alignment = 4096;  // page aligned: O_DIRECT reads land in it

    host_tensor() = default;
    host_tensor(safeshard::dtype t, const safeshard::shape& s, std::size_t bytes)
        : buffer_(bytes, alignment), dtype_(t), shape_(s) {}

    [[nodiscard]] safeshard::dtype dtype() const noexcept { return dtype_; }
    [[nodiscard]] const safeshard::shape& shape() const noexcept { return shape_; }
    [[nodiscard]] std::byte* data() noexcept { return buffer_.data(); }
    [[nodiscard]] const std::byte* data() const noexcept { return buffer_.data(); }
    [[nodiscard]] std::size_t size_bytes() const noexcept { return buffer_.size(); }
    [[nodiscard]] std::span<std::byte> bytes() noexcept { return buffer_.bytes(); }
    [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return buffer_.bytes(); }

private:
    aligned_buffer buffer_{};
    safeshard::dtype dtype_ = safeshard::dtype::u8;
    safeshard::shape shape_{};
};

template <>
struct tensor_factory<host_tensor> {
    [[nodiscard]] static host_tensor allocate(const tensor_request& r) {
        return host_tensor(r.dtype, r.shape, static_cast<std::size_t>(r.bytes));
    }
    [[nodiscard]] static std::byte* data(host_tensor& t) noexcept { return t.data(); }
    [[nodiscard]] static std::size_t size_bytes(const host_tensor& t) noexcept {
        return t.size_bytes();
    }
};

}  // namespace safeshard
