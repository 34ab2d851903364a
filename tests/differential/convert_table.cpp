// Differential-test helper: converts a raw little-endian array with safeshard's converter.
//   convert_table FROM TO INPUT OUTPUT [best|portable|avx2]
// FROM/TO are safetensors dtype names (BF16); INPUT holds whole elements of FROM.
//   convert_table --list
// prints the element-wise entries of the conversion table, "FROM TO" a line: the pairs the
// test checks.
#include "safeshard/load/convert.hpp"

#include <cerrno>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace {

safeshard::dtype dtype_arg(std::string_view s) {
    if (auto t = safeshard::parse_dtype(s)) return *t;
    throw safeshard::error(safeshard::errc::invalid_dtype,
                           "unknown dtype '" + std::string(s) + "'");
}

}  // namespace

int main(int argc, char** argv) {
    using namespace safeshard;
    if (argc == 2 && std::string_view(argv[1]) == "--list") {
        for (const conversion& c : conversions)
            if (c.is_elementwise())
                std::printf("%s %s\n", std::string(name(c.from())).c_str(),
                            std::string(name(c.to)).c_str());
        return 0;
    }
    if (argc != 5 && argc != 6) {
        std::fprintf(stderr, "usage: %s FROM TO INPUT OUTPUT [best|portable|avx2]\n", argv[0]);
        return 2;
    }
    try {
        const dtype from = dtype_arg(argv[1]);
        const dtype to = dtype_arg(argv[2]);
        const std::string_view isa = argc == 6 ? argv[5] : "best";
        converter conv = find_converter(from, to);
        if (isa == "portable") {
            conv = detail::find_converter_for(from, to, detail::convert_isa::portable);
        } else if (isa == "avx2") {
            if (!detail::cpu_has_avx2()) {
                std::fprintf(stderr, "this CPU has no AVX2\n");
                return 77;
            }
            conv = detail::find_converter_for(from, to, detail::convert_isa::avx2);
        } else if (isa != "best") {
            std::fprintf(stderr, "unknown loop choice '%s'\n", argv[5]);
            return 2;
        }
        std::ifstream in(argv[3], std::ios::binary);
        if (!in) throw system_error("open", errno, argv[3]);
        const std::vector<char> src((std::istreambuf_iterator<char>(in)),
                                    std::istreambuf_iterator<char>());
        const std::size_t n = src.size() / byte_size(from);
        if (n * byte_size(from) != src.size())
            throw error(errc::invalid_argument, "input is not a whole number of elements");
        std::vector<char> dst(conv.dst_bytes(n));
        conv(reinterpret_cast<const std::byte*>(src.data()),
             reinterpret_cast<std::byte*>(dst.data()), n);
        std::ofstream out(argv[4], std::ios::binary);
        out.write(dst.data(), static_cast<std::streamsize>(dst.size()));
        if (!out.flush()) throw system_error("write", errno, argv[4]);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
