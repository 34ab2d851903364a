// Differential-test helper: dequantizes raw arrays with safeshard's dequantizing conversions.
//   dequantize_table --list
// prints each dequantizing entry of the conversion table, "VALUES SCALES GLOBAL TO" a line
// (GLOBAL: none, times or divide: the role of an F32 global scale).
//   dequantize_table VALUES SCALES GLOBAL TO ROWS COLS BLOCK IN_VALUES IN_SCALES IN_GLOBAL OUT
//                    [best|portable|avx2]
// VALUES [ROWS, COLS] (F4: two a byte, low nibble first), SCALES [ROWS, COLS / BLOCK] (one
// for each BLOCK values of a row), IN_GLOBAL one F32 (ignored for GLOBAL none); OUT gets
// [ROWS, COLS] of TO. The rows are converted one call each, through a view as the loader
// makes one (load/detail/dequantize.hpp).
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "safeshard/load/convert.hpp"

namespace {

using namespace safeshard;

dtype dtype_arg(std::string_view s) {
    if (auto t = parse_dtype(s)) return *t;
    throw error(errc::invalid_dtype, "unknown dtype '" + std::string(s) + "'");
}

std::vector<char> read_all(const char* path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw system_error("open", errno, path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::uint64_t number(const char* s) { return std::strtoull(s, nullptr, 10); }

const char* global_name(convert_role r) {
    return r == convert_role::global_scales     ? "times"
           : r == convert_role::global_divisors ? "divide"
                                                : "none";
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && std::string_view(argv[1]) == "--list") {
        for (const conversion& c : conversions)
            if (!c.is_elementwise())
                std::printf("%s %s %s %s\n", std::string(name(c.from())).c_str(),
                            std::string(name(c.inputs[1].type)).c_str(),
                            global_name(c.inputs[2].role), std::string(name(c.to)).c_str());
        return 0;
    }
    if (argc != 12 && argc != 13) {
        std::fprintf(stderr,
                     "usage: %s VALUES SCALES GLOBAL TO ROWS COLS BLOCK IN_VALUES IN_SCALES "
                     "IN_GLOBAL OUT [best|portable|avx2]\n",
                     argv[0]);
        return 2;
    }
    try {
        const dtype values = dtype_arg(argv[1]), scales = dtype_arg(argv[2]),
                    to = dtype_arg(argv[4]);
        const std::string_view global = argv[3];
        const std::uint64_t rows = number(argv[5]), cols = number(argv[6]), block = number(argv[7]);
        const std::string_view isa = argc == 13 ? argv[12] : "best";
        std::vector<convert_input> inputs{{convert_role::values, values},
                                          {convert_role::scales, scales}};
        if (global == "times") inputs.push_back({convert_role::global_scales, dtype::f32});
        if (global == "divide") inputs.push_back({convert_role::global_divisors, dtype::f32});
        const std::vector<char> v = read_all(argv[8]), s = read_all(argv[9]),
                                g = read_all(argv[10]);
        dequant_view view;
        view.rows = rows;
        view.cols = cols;
        view.scales = {.data = reinterpret_cast<const std::byte*>(s.data()),
                       .type = scales,
                       .block_rows = 1,
                       .block_cols = block,
                       .grid_cols = cols / block,
                       .per_expert = rows * (cols / block)};
        view.global = {
            .data = inputs.size() == 3 ? reinterpret_cast<const std::byte*>(g.data()) : nullptr,
            .type = dtype::f32,
            .per_part = true};
        detail::convert_isa chosen = detail::best_convert_isa();
        if (isa == "portable") {
            chosen = detail::convert_isa::portable;
        } else if (isa == "avx2") {
            if (!detail::cpu_has_avx2()) {
                std::fprintf(stderr, "this CPU has no AVX2\n");
                return 77;
            }
            chosen = detail::convert_isa::avx2;
        } else if (isa != "best") {
            std::fprintf(stderr, "unknown loop choice '%s'\n", argv[12]);
            return 2;
        }
        const converter conv = detail::find_dequantizer_for(inputs, to, &view, chosen);
        if (v.size() != conv.src_bytes(rows * cols) ||
            s.size() != rows * (cols / block) * bit_size(scales) / 8)
            throw error(errc::invalid_argument, "inputs of the wrong size");
        std::vector<char> out(conv.dst_bytes(rows * cols));
        const std::size_t dst_row = conv.dst_bytes(cols);
        const converter placed = conv.placed(0, dst_row);
        for (std::uint64_t r = 0; r < rows; ++r)  // a call a row, as an engine's pieces come
            placed.row(r)(reinterpret_cast<const std::byte*>(v.data()) + conv.src_bytes(r * cols),
                          reinterpret_cast<std::byte*>(out.data()) + r * dst_row, cols);
        std::ofstream o(argv[11], std::ios::binary);
        o.write(out.data(), static_cast<std::streamsize>(out.size()));
        if (!o.flush()) throw system_error("write", errno, argv[11]);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
