// Your own tensor type: specialise safeshard::tensor_factory<T> with allocate, data and
// size_bytes, and safeshard::load<T> fills it. This one keeps its bytes in a std::vector.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "safeshard/safeshard.hpp"

struct my_tensor {
    std::vector<std::byte> storage;
    safeshard::dtype dtype{};
    std::vector<std::uint64_t> shape;
};

template <>
struct safeshard::tensor_factory<my_tensor> {
    static my_tensor allocate(const safeshard::tensor_request& r) {
        return my_tensor{std::vector<std::byte>(r.bytes), r.dtype,
                         std::vector<std::uint64_t>(r.shape.begin(), r.shape.end())};
    }
    static std::byte* data(my_tensor& t) { return t.storage.data(); }
    static std::size_t size_bytes(const my_tensor& t) { return t.storage.size(); }
};

int main() try {
    namespace fs = std::filesystem;
    const fs::path dir =
        fs::temp_directory_path() / ("safeshard-user-tensor-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    // A checkpoint of one F32 matrix [4, 6] holding 0..23, and no config.json.
    std::vector<float> values(24);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i);
    const safeshard::tensor_data t{"w", safeshard::dtype::f32, safeshard::shape{4, 6},
                                   std::as_bytes(std::span(values))};
    safeshard::save_file(dir / "model.safetensors", std::span(&t, 1));

    // Without config.json, name the cut yourself: `w` split on its columns over 2 ranks.
    safeshard::schema s;
    safeshard::parameter_meta p;
    p.name = "w";
    p.layout = safeshard::make_split(1);
    p.sources = {"w"};
    s.add(p);
    int status = 0;
    for (std::uint32_t rank = 0; rank < 2; ++rank) {
        auto model = safeshard::load<my_tensor>(dir.string(), s, {.rank = rank, .world = 2});
        const my_tensor& w = model.at("w");
        std::vector<float> got(w.storage.size() / 4);
        std::memcpy(got.data(), w.storage.data(), w.storage.size());
        std::printf("rank %u: w is [%llu, %llu]:", rank,
                    static_cast<unsigned long long>(w.shape[0]),
                    static_cast<unsigned long long>(w.shape[1]));
        for (std::size_t i = 0; i < got.size(); ++i) {
            std::printf(" %g", static_cast<double>(got[i]));
            // row i / 3, column rank * 3 + i % 3 of the 4 x 6 matrix
            if (got[i] != static_cast<float>((i / 3) * 6 + rank * 3 + i % 3)) status = 1;
        }
        std::printf("\n");
    }
    fs::remove_all(dir);
    std::printf(status ? "MISMATCH\n" : "ok\n");
    return status;
} catch (const safeshard::error& e) {
    std::fprintf(stderr, "user_tensor: %s\n", e.what());
    return 1;
}
