// A program outside the project that uses installed safeshard: pkg-config, CMake and meson
// subproject consumers all build this file. It exits non-zero when the library misbehaves.
#include <safeshard/safeshard.hpp>

#include <cstdint>
#include <iostream>
#include <sstream>

int main() {
    const auto t = safeshard::parse_dtype("F8_E4M3");
    if (!t || safeshard::bit_size(*t) != 8 || !safeshard::is_floating_point(*t)) {
        std::cerr << "consumer: F8_E4M3 parsed wrong\n";
        return 1;
    }
    if (safeshard::parse_dtype("bf16")) {
        std::cerr << "consumer: parse_dtype accepted lower-case bf16\n";
        return 1;
    }
    std::ostringstream os;
    os << *t << ' ' << safeshard::shape{2, 3};
    if (os.str() != "F8_E4M3 [2, 3]") {
        std::cerr << "consumer: printed '" << os.str() << "'\n";
        return 1;
    }
    try {
        (void)safeshard::mul_or_throw(UINT64_MAX, 2, "test product");
        std::cerr << "consumer: overflow not detected\n";
        return 1;
    } catch (const safeshard::error& e) {
        if (e.code() != safeshard::errc::validation_overflow) return 1;
    }
    std::cout << "consumer: safeshard " << SAFESHARD_VERSION_STRING << " ok: " << os.str() << '\n';
    return 0;
}
