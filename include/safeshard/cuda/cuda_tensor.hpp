// cuda_tensor: an owned tensor in CUDA device memory, and its tensor_factory. Memory comes
// from cudaMalloc on the requested device, or from the allocator set with
// set_cuda_allocator (a memory pool, a caching allocator). load<cuda_tensor>() plans for
// CUDA device 0 unless the options name a CUDA device, and copies with a cuda_engine on it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/cuda/cuda_engine.hpp"
#include "safeshard/load/tensor_factory.hpp"

namespace safeshard {

// The user's device memory: allocate returns `bytes` bytes on `device` (or throws / returns
// nullptr), deallocate gives them back. Both are called with that device current.
struct cuda_allocator {
    std::function<void*(std::size_t bytes, int device)> allocate{};
    std::function<void(void* p, std::size_t bytes, int device)> deallocate{};
};

namespace detail {
struct cuda_allocator_slot {
    std::mutex m;
    std::shared_ptr<const cuda_allocator> current;
};
inline cuda_allocator_slot& cuda_allocator_state() {
    static cuda_allocator_slot s;
    return s;
}
inline std::string cuda_error_text(cudaError_t e) {
    return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
}
}  // namespace detail

// Sets the allocator later cuda_tensors come from (process-wide); an empty one (both
// functions unset) goes back to cudaMalloc. A tensor frees its memory with the allocator it
// came from.
inline void set_cuda_allocator(cuda_allocator a) {
    auto& s = detail::cuda_allocator_state();
    const std::lock_guard lock(s.m);
    if (!a.allocate && !a.deallocate) {
        s.current.reset();
        return;
    }
    if (!a.allocate || !a.deallocate)
        throw error(errc::invalid_argument, "a cuda_allocator needs both allocate and deallocate");
    s.current = std::make_shared<const cuda_allocator>(std::move(a));
}

class cuda_tensor {
public:
    cuda_tensor() = default;

    // `bytes` bytes on CUDA device `device` (cudaMalloc or the allocator set).
    cuda_tensor(safeshard::dtype t, const safeshard::shape& s, std::size_t bytes, int device)
        : dtype_(t), shape_(s), bytes_(bytes), device_(device) {
        if (bytes == 0) return;
        {
            auto& st = detail::cuda_allocator_state();
            const std::lock_guard lock(st.m);
            alloc_ = st.current;
        }
        int previous = 0;
        (void)cudaGetDevice(&previous);
        const cudaError_t e = cudaSetDevice(device);
        if (e != cudaSuccess)
            throw error(errc::cuda_error, "cudaSetDevice(" + std::to_string(device) +
                                              ") failed: " + detail::cuda_error_text(e));
        struct restore {
            int d;
            ~restore() { (void)cudaSetDevice(d); }
        } back{previous};
        if (alloc_) {
            data_ = static_cast<std::byte*>(alloc_->allocate(bytes, device));
            if (data_ == nullptr)
                throw error(errc::cuda_error, "the cuda_allocator returned no memory for " +
                                                  std::to_string(bytes) + " bytes on device " +
                                                  std::to_string(device));
        } else {
            void* p = nullptr;
            const cudaError_t rc = cudaMalloc(&p, bytes);
            if (rc != cudaSuccess)
                throw error(errc::cuda_error, "cudaMalloc of " + std::to_string(bytes) +
                                                  " bytes on device " + std::to_string(device) +
                                                  " failed: " + detail::cuda_error_text(rc));
            data_ = static_cast<std::byte*>(p);
        }
    }

    cuda_tensor(cuda_tensor&& o) noexcept
        : dtype_(o.dtype_),
          shape_(o.shape_),
          bytes_(std::exchange(o.bytes_, 0)),
          device_(o.device_),
          data_(std::exchange(o.data_, nullptr)),
          alloc_(std::move(o.alloc_)) {}
    cuda_tensor& operator=(cuda_tensor&& o) noexcept {
        if (this != &o) {
            reset();
            dtype_ = o.dtype_;
            shape_ = o.shape_;
            bytes_ = std::exchange(o.bytes_, 0);
            device_ = o.device_;
            data_ = std::exchange(o.data_, nullptr);
            alloc_ = std::move(o.alloc_);
        }
        return *this;
    }
    cuda_tensor(const cuda_tensor&) = delete;
    cuda_tensor& operator=(const cuda_tensor&) = delete;
    ~cuda_tensor() { reset(); }

    [[nodiscard]] safeshard::dtype dtype() const noexcept { return dtype_; }
    [[nodiscard]] const safeshard::shape& shape() const noexcept { return shape_; }
    [[nodiscard]] int device() const noexcept { return device_; }
    // Device memory: not to be dereferenced on the host.
    [[nodiscard]] std::byte* data() noexcept { return data_; }
    [[nodiscard]] const std::byte* data() const noexcept { return data_; }
    [[nodiscard]] std::size_t size_bytes() const noexcept { return bytes_; }

    // Copies the tensor's bytes to host memory (out.size() must be size_bytes()).
    void copy_to_host(std::span<std::byte> out) const {
        if (out.size() != bytes_)
            throw error(errc::invalid_argument, "copy_to_host: " + std::to_string(out.size()) +
                                                    " bytes for a tensor of " +
                                                    std::to_string(bytes_));
        if (bytes_ == 0) return;
        const cudaError_t e = cudaMemcpy(out.data(), data_, bytes_, cudaMemcpyDeviceToHost);
        if (e != cudaSuccess)
            throw error(errc::cuda_error,
                        "cudaMemcpy (device to host) failed: " + detail::cuda_error_text(e));
    }

private:
    void reset() noexcept {
        if (data_ == nullptr) return;
        if (alloc_) {
            int previous = 0;
            (void)cudaGetDevice(&previous);
            (void)cudaSetDevice(device_);
            alloc_->deallocate(data_, bytes_, device_);
            (void)cudaSetDevice(previous);
        } else {
            (void)cudaFree(data_);
        }
        data_ = nullptr;
        alloc_.reset();
    }

    safeshard::dtype dtype_ = safeshard::dtype::u8;
    safeshard::shape shape_{};
    std::size_t bytes_ = 0;
    int device_ = 0;
    std::byte* data_ = nullptr;
    std::shared_ptr<const cuda_allocator> alloc_{};
};

template <>
struct tensor_factory<cuda_tensor> {
    [[nodiscard]] static cuda_tensor allocate(const tensor_request& r) {
        if (r.device.kind != device_kind::cuda)
            throw error(errc::invalid_argument,
                        "a cuda_tensor lives on a CUDA device; the plan names the host "
                        "(plan_options::device = {device_kind::cuda, index})");
        return cuda_tensor(r.dtype, r.shape, static_cast<std::size_t>(r.bytes), r.device.index);
    }
    [[nodiscard]] static std::byte* data(cuda_tensor& t) noexcept { return t.data(); }
    [[nodiscard]] static std::size_t size_bytes(const cuda_tensor& t) noexcept {
        return t.size_bytes();
    }
    // What load<cuda_tensor>() plans for when the options name the host, and its engine.
    [[nodiscard]] static constexpr device default_device() noexcept {
        return device{device_kind::cuda, 0};
    }
    [[nodiscard]] static cuda_engine make_engine(const device& d) {
        cuda_engine_options o;
        o.device = d.index;
        return cuda_engine(o);
    }
};

static_assert(loadable_tensor<cuda_tensor>);

}  // namespace safeshard
