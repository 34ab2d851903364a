// Compile check: the layout arithmetic and slice maps are usable in device code (built by nvcc
// with the shard tests when it is found; nothing to run).
// nvcc -std=c++20 --expt-relaxed-constexpr -I include -c tests/shard/shard_device_compile.cu
#include <span>

#include "safeshard/shard/init.hpp"
#include "safeshard/shard/slice.hpp"

namespace {

// Each thread cuts one rank's share of a [rows, cols] tensor and reports its first box.
__global__ void slice_kernel(safeshard::layout l, std::uint64_t rows, std::uint64_t cols,
                             std::uint32_t world, safeshard::copy_box* out,
                             safeshard::layout_status* status) {
    const auto rank = static_cast<std::uint32_t>(threadIdx.x);
    if (rank >= world) return;
    safeshard::shape s;
    (void)s.try_push_back(rows);
    (void)s.try_push_back(cols);
    const safeshard::slice_result r = safeshard::slice(l, s, world, rank);
    status[rank] = r.status;
    out[rank] = r.map.size() ? r.map[0] : safeshard::copy_box{};
    safeshard::byte_box b;
    (void)safeshard::to_bytes(out[rank], 16, 16, b);
}

// Every kind of the list, through shape's constructor and slice(span).
__global__ void kinds_kernel(std::uint32_t world, safeshard::layout_status* status) {
    const auto rank = static_cast<std::uint32_t>(threadIdx.x);
    if (rank >= world) return;
    const safeshard::shape sources[] = {safeshard::shape{96, 64}, safeshard::shape{32, 64},
                                        safeshard::shape{32, 64}};
    const std::uint64_t dims[] = {100, 64};
    const safeshard::shape vocab = safeshard::shape::from(std::span<const std::uint64_t>(dims));
    const safeshard::layout layouts[] = {
        safeshard::replicated::value,
        safeshard::split<1>::value,
        safeshard::padded_split<0>::value,
        safeshard::strided_split<0, 2>::value,
        safeshard::fused<0>::value,
        safeshard::gqa_qkv<>::make(12, 4, 8),
        safeshard::gqa_o<safeshard::kv_interleaved>::make(12, 4, 8)};
    for (std::size_t i = 0; i < sizeof layouts / sizeof layouts[0]; ++i) {
        const bool three = layouts[i].kind == safeshard::layout_kind::fused ||
                           layouts[i].kind == safeshard::layout_kind::gqa_qkv;
        const auto r = safeshard::slice(layouts[i],
                                        three ? std::span<const safeshard::shape>(sources)
                                              : std::span<const safeshard::shape>(&vocab, 1),
                                        world, rank);
        if (!r.ok()) status[rank] = r.status;
    }
}

__global__ void heads_kernel(std::uint32_t world, std::uint64_t* first_q) {
    const auto rank = static_cast<std::uint32_t>(threadIdx.x);
    safeshard::gqa_selection sel;
    const auto l = safeshard::gqa_qkv<safeshard::kv_interleaved>::make(32, 8, 128);
    if (safeshard::select_gqa_heads(l, world, rank, sel) == safeshard::layout_status::ok)
        first_q[rank] = sel.q[0].start;
}

__global__ void init_kernel(float* out, std::uint64_t n) {
    const std::uint64_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = safeshard::init_value(safeshard::init_normal(0.0f, 0.02f, 42), i);
}

}  // namespace

void launch_shard_kernels(safeshard::copy_box* boxes, safeshard::layout_status* status,
                          std::uint64_t* first_q, float* values) {
    slice_kernel<<<1, 8>>>(safeshard::split<0>::value, 4096, 4096, 8, boxes, status);
    kinds_kernel<<<1, 4>>>(4, status);
    heads_kernel<<<1, 32>>>(32, first_q);
    init_kernel<<<1, 256>>>(values, 256);
}
