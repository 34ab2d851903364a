// libFuzzer target: random tensors of random dtypes and shapes -> serialize -> file_view;
// the view must give back the same names, dtypes, shapes, bytes and metadata.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "safeshard/format/safetensors.hpp"
#include "safeshard/format/safetensors_writer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace safeshard;
    FuzzedDataProvider in(data, size);
    const std::size_t count = in.ConsumeIntegralInRange<std::size_t>(0, 8);
    std::vector<std::string> names;
    std::vector<std::vector<std::byte>> store;
    std::vector<tensor_data> tensors;
    names.reserve(count);
    store.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
        const dtype t = all_dtypes[in.ConsumeIntegralInRange<std::size_t>(0, dtype_count - 1)];
        shape s;
        const std::size_t rank = in.ConsumeIntegralInRange<std::size_t>(0, 4);
        for (std::size_t r = 0; r < rank; ++r)
            s.push_back(in.ConsumeIntegralInRange<std::uint64_t>(0, 6));
        if (is_sub_byte(t) && (*s.element_count() * bit_size(t)) % 8 != 0) s.push_back(0);
        names.push_back(in.ConsumeRandomLengthString(12));
        const std::size_t nbytes = static_cast<std::size_t>(*s.element_count() * bit_size(t) / 8);
        std::vector<std::byte> b(nbytes);
        for (auto& x : b) x = static_cast<std::byte>(in.ConsumeIntegral<std::uint8_t>());
        store.push_back(std::move(b));
        tensors.push_back(tensor_data{names.back(), t, s, store.back()});
    }
    std::optional<metadata_map> md;
    if (in.ConsumeBool()) {
        md.emplace();
        const std::size_t keys = in.ConsumeIntegralInRange<std::size_t>(0, 3);
        for (std::size_t k = 0; k < keys; ++k)
            (*md)[in.ConsumeRandomLengthString(8)] = in.ConsumeRandomLengthString(8);
    }
    std::vector<std::byte> file;
    try {
        file = serialize(tensors, md);
    } catch (const error& e) {
        // Only refusals a reader would also refuse: duplicate or reserved or non-UTF-8 names.
        if (e.code() != errc::duplicate_name && e.code() != errc::invalid_argument) std::abort();
        return 0;
    }
    const file_view v{std::span<const std::byte>(file)};
    if (v.size() != tensors.size() || v.has_metadata() != md.has_value()) std::abort();
    if (md && v.metadata() != *md) std::abort();
    if (v.header_size() % 8 != 0) std::abort();
    for (const auto& t : tensors) {
        const auto tv = v.tensor(t.name);
        if (tv.dtype() != t.dtype || !(tv.shape() == t.shape)) std::abort();
        if (tv.bytes().size() != t.bytes.size()) std::abort();
        if (!std::equal(tv.bytes().begin(), tv.bytes().end(), t.bytes.begin())) std::abort();
    }
    return 0;
}
