// Compiled by nvcc: every header listed in cuda_headers.txt must compile in a .cu file, and the
// SAFESHARD_HOST_DEVICE core functions must run in a kernel. Exits 77 (skip) without a GPU.
#include "cuda_headers.inc"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace {

struct kernel_results {
    std::uint32_t bits[safeshard::dtype_count];
    std::uint32_t bytes[safeshard::dtype_count];
    int small_product_overflowed;  // 3 x 5 must not overflow
    std::uint64_t small_product;
    int large_product_overflowed;  // 2^63 x 2 must overflow
};

__global__ void core_kernel(kernel_results* out) {
    for (unsigned i = 0; i < safeshard::dtype_count; ++i) {
        const auto t = static_cast<safeshard::dtype>(i);
        out->bits[i] = safeshard::bit_size(t);
        out->bytes[i] = safeshard::byte_size(t);
    }
    std::uint64_t r = 0;
    out->small_product_overflowed = safeshard::mul_overflows<std::uint64_t>(3, 5, r) ? 1 : 0;
    out->small_product = r;
    out->large_product_overflowed =
        safeshard::mul_overflows<std::uint64_t>(std::uint64_t{1} << 63, 2, r) ? 1 : 0;
}

bool check(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return true;
    std::printf("FAIL: %s: %s\n", what, cudaGetErrorString(e));
    return false;
}

}  // namespace

int main() {
    int devices = 0;
    const cudaError_t e = cudaGetDeviceCount(&devices);
    if (e != cudaSuccess || devices == 0) {
        std::printf("skip: no CUDA device (%s)\n",
                    e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 77;
    }
    kernel_results* d = nullptr;
    if (!check(cudaMalloc(&d, sizeof(kernel_results)), "cudaMalloc")) return 1;
    core_kernel<<<1, 1>>>(d);
    kernel_results h{};
    const bool ok = check(cudaGetLastError(), "kernel launch") &&
                    check(cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost), "cudaMemcpy");
    (void)cudaFree(d);
    if (!ok) return 1;

    int failures = 0;
    for (unsigned i = 0; i < safeshard::dtype_count; ++i) {
        const auto t = static_cast<safeshard::dtype>(i);
        if (h.bits[i] != safeshard::bit_size(t) || h.bytes[i] != safeshard::byte_size(t)) {
            std::printf("FAIL: %s: device says %u bits %u bytes, host %u bits %u bytes\n",
                        std::string(safeshard::name(t)).c_str(), h.bits[i], h.bytes[i],
                        safeshard::bit_size(t), safeshard::byte_size(t));
            ++failures;
        }
    }
    if (h.small_product_overflowed != 0 || h.small_product != 15) {
        std::printf("FAIL: 3 x 5 on the device: overflow=%d result=%llu\n",
                    h.small_product_overflowed, static_cast<unsigned long long>(h.small_product));
        ++failures;
    }
    if (h.large_product_overflowed != 1) {
        std::puts("FAIL: 2^63 x 2 on the device did not report overflow");
        ++failures;
    }
    if (failures == 0) std::puts("cuda: core functions agree on host and device");
    return failures == 0 ? 0 : 1;
}
