// Compile-only check that load/convert.hpp builds under nvcc (the CUDA engine's staging pass
// includes it), that the element conversions run in device code, and that device code can ask
// can_convert at run time (it reads a kernel-free copy of the conversion table). Built by
// tests/load/meson.build where nvcc is found; nothing runs.
#include "safeshard/load/convert.hpp"

namespace {

__global__ void widen_bf16(const std::uint16_t* src, std::uint32_t* dst, int n) {
    const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) dst[i] = safeshard::detail::elem::bf16_to_f32(src[i]);
}

__global__ void narrow_f16(const std::uint32_t* src, std::uint16_t* dst, int n) {
    using safeshard::detail::elem::nan_rule;
    const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) dst[i] = safeshard::detail::elem::f32_to_f16<nan_rule::keep_payload>(src[i]);
}

__global__ void ask_pairs(const safeshard::dtype* from, const safeshard::dtype* to, bool* ok,
                          int n) {
    const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n)
        ok[i] = safeshard::can_convert(from[i], to[i]) && safeshard::converted_by_policy(to[i]);
}

static_assert(safeshard::can_convert(safeshard::dtype::f8_e4m3, safeshard::dtype::bf16));
static_assert(!safeshard::can_convert(safeshard::dtype::i32, safeshard::dtype::f32));

}  // namespace

// Host side: the staging pass looks a converter up and runs it on pinned host memory.
void convert_device_compile_host(const std::byte* src, std::byte* dst, std::size_t n) {
    const auto conv = safeshard::find_converter(safeshard::dtype::f32, safeshard::dtype::bf16);
    conv(src, dst, n);
    conv(src, dst, 2, n / 2, n / 2 * 4, n / 2 * 2);
    widen_bf16<<<1, 32>>>(nullptr, nullptr, 0);
    narrow_f16<<<1, 32>>>(nullptr, nullptr, 0);
    ask_pairs<<<1, 32>>>(nullptr, nullptr, nullptr, 0);
}
