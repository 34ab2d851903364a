// The CUDA engine's transport on the CUDA runtime API: host code, compiled by g++ (linked with
// cudart) or nvcc. Status codes are cudaError_t values.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

#include "safeshard/cuda/transport.hpp"

namespace safeshard {

struct cudart_transport {
    static constexpr int success = cudaSuccess;
    static constexpr int not_ready = cudaErrorNotReady;

    // "cudaErrorMemoryAllocation (out of memory)"
    [[nodiscard]] std::string error_name(int code) const {
        const auto e = static_cast<cudaError_t>(code);
        return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
    }

    [[nodiscard]] int set_device(int device) { return cudaSetDevice(device); }
    [[nodiscard]] int host_alloc(void** p, std::size_t n) {
        return cudaHostAlloc(p, n, cudaHostAllocPortable);
    }
    [[nodiscard]] int host_free(void* p) { return cudaFreeHost(p); }
    [[nodiscard]] int device_alloc(void** p, std::size_t n) { return cudaMalloc(p, n); }
    [[nodiscard]] int device_free(void* p) { return cudaFree(p); }

    [[nodiscard]] int stream_create(transport_stream* s) {
        cudaStream_t st = nullptr;
        const cudaError_t e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
        *s = st;
        return e;
    }
    [[nodiscard]] int stream_destroy(transport_stream s) {
        return cudaStreamDestroy(static_cast<cudaStream_t>(s));
    }
    [[nodiscard]] int stream_synchronize(transport_stream s) {
        return cudaStreamSynchronize(static_cast<cudaStream_t>(s));
    }

    [[nodiscard]] int event_create(transport_event* e) {
        cudaEvent_t ev = nullptr;
        const cudaError_t rc = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
        *e = ev;
        return rc;
    }
    [[nodiscard]] int event_destroy(transport_event e) {
        return cudaEventDestroy(static_cast<cudaEvent_t>(e));
    }
    [[nodiscard]] int event_record(transport_event e, transport_stream s) {
        return cudaEventRecord(static_cast<cudaEvent_t>(e), static_cast<cudaStream_t>(s));
    }
    [[nodiscard]] int event_query(transport_event e) {
        return cudaEventQuery(static_cast<cudaEvent_t>(e));
    }
    [[nodiscard]] int event_synchronize(transport_event e) {
        return cudaEventSynchronize(static_cast<cudaEvent_t>(e));
    }

    [[nodiscard]] int memcpy_async(void* dst, const void* src, std::size_t n, transport_stream s) {
        return cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(s));
    }
    [[nodiscard]] int memcpy_2d_async(void* dst, std::size_t dpitch, const void* src,
                                      std::size_t spitch, std::size_t width, std::size_t height,
                                      transport_stream s) {
        return cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, cudaMemcpyHostToDevice,
                                 static_cast<cudaStream_t>(s));
    }
    [[nodiscard]] int memcpy_2d(void* dst, std::size_t dpitch, const void* src, std::size_t spitch,
                                std::size_t width, std::size_t height) {
        return cudaMemcpy2D(dst, dpitch, src, spitch, width, height, cudaMemcpyHostToDevice);
    }
    [[nodiscard]] int device_synchronize() { return cudaDeviceSynchronize(); }
    [[nodiscard]] int memset_2d_async(void* dst, std::size_t dpitch, std::size_t width,
                                      std::size_t height, transport_stream s) {
        return cudaMemset2DAsync(dst, dpitch, 0, width, height, static_cast<cudaStream_t>(s));
    }

    // Read-only registration lets the GPU read a PROT_READ file mapping (CUDA 11.1+).
    [[nodiscard]] int host_register_read_only(void* p, std::size_t n) {
        return cudaHostRegister(p, n, cudaHostRegisterPortable | cudaHostRegisterReadOnly);
    }
    [[nodiscard]] int host_unregister(void* p) { return cudaHostUnregister(p); }
};

static_assert(cuda_transport<cudart_transport>);

}  // namespace safeshard
