// The second translation unit of the ODR test, and its main.
#include <safeshard/safeshard.hpp>

#include <cstdio>
#include <string>

#include "odr.hpp"

static const void* odr_dtype_table_b() { return &safeshard::detail::dtype_table; }

int main() {
    int failures = 0;
    if (odr_dtype_table_a() != odr_dtype_table_b()) {
        std::puts("FAIL: inline variable dtype_table has two addresses across translation units");
        ++failures;
    }
    const std::string got = odr_describe_a("BF16");
    if (got != "BF16:16") {
        std::printf("FAIL: expected BF16:16, got %s\n", got.c_str());
        ++failures;
    }
    const safeshard::shape s{4096, 14336};
    if (s.to_string() != "[4096, 14336]") {
        std::printf("FAIL: shape printed as %s\n", s.to_string().c_str());
        ++failures;
    }
    if (failures == 0) std::puts("odr: ok");
    return failures == 0 ? 0 : 1;
}
