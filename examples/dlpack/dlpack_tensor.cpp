// A DLPack adapter: safeshard loads into DLManagedTensor, the exchange format of PyTorch,
// JAX, CuPy and TVM. The tensor owns its DLManagedTensor and calls its deleter once.
#include <dlpack/dlpack.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "safeshard/safeshard.hpp"

// Owns a DLManagedTensor (move-only); the consumer may take it with release().
class dl_tensor {
public:
    dl_tensor() = default;
    explicit dl_tensor(DLManagedTensor* t) noexcept : t_(t) {}
    dl_tensor(dl_tensor&& o) noexcept : t_(std::exchange(o.t_, nullptr)) {}
    dl_tensor& operator=(dl_tensor&& o) noexcept {
        if (this != &o) {
            reset();
            t_ = std::exchange(o.t_, nullptr);
        }
        return *this;
    }
    ~dl_tensor() { reset(); }
    [[nodiscard]] DLManagedTensor* get() const noexcept { return t_; }
    [[nodiscard]] DLManagedTensor* release() noexcept { return std::exchange(t_, nullptr); }

private:
    void reset() noexcept {
        if (t_ && t_->deleter) t_->deleter(t_);
        t_ = nullptr;
    }
    DLManagedTensor* t_ = nullptr;
};

namespace {

// What the deleter frees: the bytes and the shape array live beside the DLManagedTensor.
struct dl_block {
    DLManagedTensor managed{};
    std::vector<std::int64_t> shape;
    void* data = nullptr;
};

void dl_delete(DLManagedTensor* t) {
    auto* b = static_cast<dl_block*>(t->manager_ctx);
    std::free(b->data);
    delete b;
}

DLDataType dl_dtype(safeshard::dtype t) {
    using safeshard::dtype;
    const auto bits = static_cast<std::uint8_t>(safeshard::bit_size(t));
    switch (t) {
        case dtype::bf16: return {kDLBfloat, bits, 1};
        case dtype::f16:
        case dtype::f32:
        case dtype::f64: return {kDLFloat, bits, 1};
        case dtype::i8:
        case dtype::i16:
        case dtype::i32:
        case dtype::i64: return {kDLInt, bits, 1};
        case dtype::u8:
        case dtype::u16:
        case dtype::u32:
        case dtype::u64: return {kDLUInt, bits, 1};
        default:
            throw safeshard::error(safeshard::errc::invalid_argument,
                                   "DLPack 0.6 has no code for " + std::string(safeshard::name(t)));
    }
}

}  // namespace

template <>
struct safeshard::tensor_factory<dl_tensor> {
    static dl_tensor allocate(const safeshard::tensor_request& r) {
        const DLDataType type = dl_dtype(r.dtype);
        auto* b = new dl_block;
        b->shape.assign(r.shape.begin(), r.shape.end());
        b->data = std::aligned_alloc(256, (r.bytes + 255) / 256 * 256 + 256);
        if (!b->data) {
            delete b;
            throw std::bad_alloc();
        }
        DLTensor& t = b->managed.dl_tensor;
        t.data = b->data;
        t.device = {kDLCPU, 0};
        t.ndim = static_cast<int>(b->shape.size());
        t.dtype = type;
        t.shape = b->shape.data();
        t.strides = nullptr;  // compact row-major
        t.byte_offset = 0;
        b->managed.manager_ctx = b;
        b->managed.deleter = dl_delete;
        return dl_tensor(&b->managed);
    }
    static std::byte* data(dl_tensor& t) {
        return static_cast<std::byte*>(t.get()->dl_tensor.data);
    }
    static std::size_t size_bytes(const dl_tensor& t) {
        const DLTensor& d = t.get()->dl_tensor;
        std::size_t n = (d.dtype.bits * d.dtype.lanes + 7u) / 8u;
        for (int i = 0; i < d.ndim; ++i) n *= static_cast<std::size_t>(d.shape[i]);
        return n;
    }
};

int main() try {
    namespace fs = std::filesystem;
    const fs::path dir =
        fs::temp_directory_path() / ("safeshard-dlpack-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::vector<std::uint16_t> bf16(8 * 4);
    for (std::size_t i = 0; i < bf16.size(); ++i) bf16[i] = static_cast<std::uint16_t>(0x3f80 + i);
    const safeshard::tensor_data t{"embed", safeshard::dtype::bf16, safeshard::shape{8, 4},
                                   std::as_bytes(std::span(bf16))};
    safeshard::save_file(dir / "model.safetensors", std::span(&t, 1));

    safeshard::schema s;
    safeshard::parameter_meta p;
    p.name = "embed";
    p.layout = safeshard::make_split(0);
    p.sources = {"embed"};
    s.add(p);
    auto model = safeshard::load<dl_tensor>(dir.string(), s, {.rank = 1, .world = 2});
    const DLTensor& d = model.at("embed").get()->dl_tensor;
    std::printf(
        "rank 1 of 2: DLTensor ndim=%d shape=[%lld, %lld] dtype code=%u bits=%u device=%d\n",
        d.ndim, static_cast<long long>(d.shape[0]), static_cast<long long>(d.shape[1]),
        unsigned{d.dtype.code}, unsigned{d.dtype.bits}, static_cast<int>(d.device.device_type));
    // Rows 4..7 of the source.
    const int ok = d.ndim == 2 && d.shape[0] == 4 && d.dtype.code == kDLBfloat &&
                   std::memcmp(d.data, bf16.data() + 16, 32) == 0;
    // Hand one tensor to a consumer: it now owns it and calls the deleter.
    DLManagedTensor* handed = model.at("embed").release();
    handed->deleter(handed);
    fs::remove_all(dir);
    std::printf(ok ? "ok\n" : "MISMATCH\n");
    return ok ? 0 : 1;
} catch (const safeshard::error& e) {
    std::fprintf(stderr, "dlpack: %s\n", e.what());
    return 1;
}
