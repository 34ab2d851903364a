// libFuzzer target: model.safetensors.index.json parsing. Any input either parses into an
// index whose invariants hold, or throws safeshard::error(invalid_index).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "safeshard/format/index.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view json(reinterpret_cast<const char*>(data), size);
    try {
        const auto ix = safeshard::safetensors_index::parse(json, "fuzz.json");
        if (ix.size() == 0 || ix.shards().empty()) std::abort();
        for (std::size_t i = 0; i < ix.shards().size(); ++i) {
            if (!safeshard::is_safe_relative_path(ix.shards()[i])) std::abort();
            if (i > 0 && !(ix.shards()[i - 1] < ix.shards()[i])) std::abort();
        }
        for (const auto& e : ix.entries()) {
            if (e.shard >= ix.shards().size()) std::abort();
            if (ix.shard_index_of(e.name) != e.shard) std::abort();
        }
    } catch (const safeshard::error& e) {
        if (e.code() != safeshard::errc::invalid_index) std::abort();
    }
    return 0;
}
