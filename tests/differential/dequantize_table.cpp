// Differential-test helper: dequantizes raw arrays with safeshard's dequantizing conversions.
//   dequantize_table --list
// prints each dequantizing entry of the conversion table of float values, "VALUES SCALES GLOBAL
// TO" a line (GLOBAL: none, times or divide: the role of an F32 global scale).
//   dequantize_table --list-integer
// prints each dequantizing entry of integer codes, "VALUES SCALES ZEROS GROUP_INDEX TO" a line
// (ZEROS, GROUP_INDEX: I32 or none).
//   dequantize_table VALUES SCALES GLOBAL TO ROWS COLS BLOCK IN_VALUES IN_SCALES IN_GLOBAL OUT
//                    [best|portable|avx2]
// VALUES [ROWS, COLS] (F4: two a byte, low nibble first), SCALES [ROWS, COLS / BLOCK] (one
// for each BLOCK values of a row), IN_GLOBAL one F32 (ignored for GLOBAL none); OUT gets
// [ROWS, COLS] of TO. The rows are converted one call each, through a view as the loader
// makes one (load/detail/dequantize.hpp).
//   dequantize_table integer VALUES SCALES ZEROS GROUP_INDEX TO ROWS COLS BLOCK POST
//                    IN_VALUES IN_SCALES IN_ZEROS IN_GROUP_INDEX OUT [best|portable|avx2]
// VALUES [ROWS, COLS] codes (U4: two a byte, low nibble first), SCALES [ROWS, COLS / BLOCK],
// ZEROS (I32) [ROWS / p, COLS / BLOCK] words of p = 32 / bits zero points along the rows (low
// bits first), GROUP_INDEX (I32) [COLS]; POST the factor of every value; w = (q - z) x s x
// POST, z = 2^(bits - 1) without zeros. Converted a box of all rows and one block's columns at a
// time, as a load's copy of GPTQ's transposed words comes.
#include <algorithm>
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
    if (s == name(dtype::u4)) return dtype::u4;  // a load's dtype, no file's
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

// A view of [rows, cols] values, `scales` [rows, cols / block] scaling each block of a row.
dequant_view view_of(std::uint64_t rows, std::uint64_t cols, std::uint64_t block, dtype scales,
                     const std::vector<char>& s) {
    dequant_view view;
    view.rows = rows;
    view.cols = cols;
    view.scales = {.data = reinterpret_cast<const std::byte*>(s.data()),
                   .type = scales,
                   .block_rows = 1,
                   .block_cols = block,
                   .row_step = cols / block,
                   .per_expert = rows * (cols / block)};
    return view;
}

detail::convert_isa isa_arg(std::string_view isa) {
    if (isa == "portable") return detail::convert_isa::portable;
    if (isa == "avx2") {
        if (!detail::cpu_has_avx2()) {
            std::fprintf(stderr, "this CPU has no AVX2\n");
            std::exit(77);
        }
        return detail::convert_isa::avx2;
    }
    if (isa != "best") throw error(errc::invalid_argument, "unknown loop choice");
    return detail::best_convert_isa();
}

// The integer mode: argv[2..] as the usage says.
int integer_main(int argc, char** argv) {
    if (argc != 16 && argc != 17) {
        std::fprintf(stderr,
                     "usage: %s integer VALUES SCALES ZEROS GROUP_INDEX TO ROWS COLS BLOCK POST "
                     "IN_VALUES IN_SCALES IN_ZEROS IN_GROUP_INDEX OUT [best|portable|avx2]\n",
                     argv[0]);
        return 2;
    }
    const dtype values = dtype_arg(argv[2]), scales = dtype_arg(argv[3]), to = dtype_arg(argv[6]);
    const bool zeros = std::string_view(argv[4]) != "none";
    const bool by_index = std::string_view(argv[5]) != "none";
    const std::uint64_t rows = number(argv[7]), cols = number(argv[8]), block = number(argv[9]);
    const float post = std::strtof(argv[10], nullptr);
    const std::uint32_t bits = bit_size(values);
    const std::uint64_t p = 32 / bits;
    std::vector<convert_input> inputs{{convert_role::values, values},
                                      {convert_role::scales, scales}};
    if (zeros) inputs.push_back({convert_role::zeros, dtype::i32});
    if (by_index) inputs.push_back({convert_role::group_index, dtype::i32});
    const std::vector<char> v = read_all(argv[11]), s = read_all(argv[12]), z = read_all(argv[13]),
                            g = read_all(argv[14]);
    dequant_view view = view_of(rows, cols, block, scales, s);
    if (zeros)
        view.zeros = {.data = reinterpret_cast<const std::byte*>(z.data()),
                      .type = dtype::i32,
                      .block_rows = p,
                      .block_cols = block,
                      .row_step = cols / block,
                      .per_expert = rows / p * (cols / block),
                      .bits = bits};
    if (by_index)
        view.group_index = {.data = reinterpret_cast<const std::byte*>(g.data()),
                            .type = dtype::i32,
                            .block_rows = 0,
                            .per_expert = cols};
    view.zero = values == dtype::i8 ? 0 : std::int32_t{1} << (bits - 1);
    view.post = post;
    const converter conv =
        detail::find_dequantizer_for(inputs, to, &view, isa_arg(argc == 17 ? argv[16] : "best"));
    if (v.size() != rows * cols * bits / 8 ||
        s.size() != rows * (cols / block) * bit_size(scales) / 8 ||
        (zeros && z.size() != rows / p * (cols / block) * 4) || (by_index && g.size() != cols * 4))
        throw error(errc::invalid_argument, "inputs of the wrong size");
    std::vector<char> out(conv.dst_bytes(rows * cols));
    const std::size_t dst_row = conv.dst_bytes(cols), src_row = cols * bits / 8;
    for (std::uint64_t c = 0; c < cols; c += block) {  // all rows, one block's columns
        const std::size_t n = static_cast<std::size_t>(std::min(block, cols - c));
        conv.placed(conv.dst_bytes(c), dst_row)(
            reinterpret_cast<const std::byte*>(v.data()) + c * bits / 8,
            reinterpret_cast<std::byte*>(out.data()) + conv.dst_bytes(c), rows, n, src_row,
            dst_row);
    }
    std::ofstream o(argv[15], std::ios::binary);
    o.write(out.data(), static_cast<std::streamsize>(out.size()));
    if (!o.flush()) throw system_error("write", errno, argv[15]);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && std::string_view(argv[1]) == "--list-integer") {
        for (const conversion& c : conversions) {
            if (c.is_elementwise() || is_floating_point(c.from())) continue;
            std::string zeros = "none", index = "none";
            for (const convert_input& in : c.inputs) {
                if (in.role == convert_role::zeros) zeros = name(in.type);
                if (in.role == convert_role::group_index) index = name(in.type);
            }
            std::printf("%s %s %s %s %s\n", std::string(name(c.from())).c_str(),
                        std::string(name(c.inputs[1].type)).c_str(), zeros.c_str(), index.c_str(),
                        std::string(name(c.to)).c_str());
        }
        return 0;
    }
    if (argc >= 2 && std::string_view(argv[1]) == "integer") {
        try {
            return integer_main(argc, argv);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%s\n", e.what());
            return 1;
        }
    }
    if (argc == 2 && std::string_view(argv[1]) == "--list") {
        for (const conversion& c : conversions)  // the float formats' (integer codes: below)
            if (!c.is_elementwise() && is_floating_point(c.from()))
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
        dequant_view view = view_of(rows, cols, block, scales, s);
        view.global = {
            .data = inputs.size() == 3 ? reinterpret_cast<const std::byte*>(g.data()) : nullptr,
            .type = dtype::f32,
            .per_part = true};
        const detail::convert_isa chosen = isa_arg(isa);
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
