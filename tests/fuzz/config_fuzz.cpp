// libFuzzer target: config.json parsing. Any input either parses into a model_config whose
// invariants hold, or throws safeshard::error(invalid_config).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "safeshard/format/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view json(reinterpret_cast<const char*>(data), size);
    try {
        const auto f = safeshard::config_file::parse(json, "config.json");
        const auto& c = f.config();
        if (c.model_type.empty() || c.hidden_size == 0 || c.num_attention_heads == 0 ||
            c.num_key_value_heads == 0 || c.head_dim == 0 || c.num_hidden_layers == 0) {
            std::abort();
        }
        if (c.num_attention_heads % c.num_key_value_heads != 0) std::abort();
        if (f.raw_json() != json) std::abort();
    } catch (const safeshard::error& e) {
        if (e.code() != safeshard::errc::invalid_config) std::abort();
    }
    return 0;
}
