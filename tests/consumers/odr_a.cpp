// One of two translation units that include everything: the program links only if no
// header defines a non-inline entity, and the inline ones must be one entity.
#include <safeshard/safeshard.hpp>

#include "odr.hpp"

const void* odr_dtype_table_a() { return &safeshard::detail::dtype_table; }

std::string odr_describe_a(std::string_view dtype_name) {
    const auto t = safeshard::parse_dtype(dtype_name);
    if (!t) return "unknown";
    return std::string(safeshard::name(*t)) + ":" + std::to_string(safeshard::bit_size(*t));
}
