// Prints the table of safetensors dtypes safeshard knows: name, bits, bytes, float?
// Usage: dtype_table [NAME...]  (with names: only those, looked up ignoring case; an unknown
// name is an error, exit 1)
#include <safeshard/safeshard.hpp>

#include <iomanip>
#include <iostream>
#include <string_view>
#include <vector>

namespace {

void print_row(safeshard::dtype t) {
    const auto bytes = safeshard::byte_size(t);
    std::cout << std::left << std::setw(13) << safeshard::name(t) << std::right << std::setw(5)
              << safeshard::bit_size(t) << std::setw(7)
              << (bytes == 0 ? std::string("-") : std::to_string(bytes)) << "  "
              << (safeshard::is_floating_point(t) ? "yes" : "no") << '\n';
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<safeshard::dtype> rows;
    for (int i = 1; i < argc; ++i) {
        const auto t = safeshard::parse_dtype_ignore_case(argv[i]);
        if (!t) {
            std::cerr << "dtype_table: unknown dtype '" << argv[i] << "'\n";
            return 1;
        }
        rows.push_back(*t);
    }
    if (rows.empty()) rows.assign(safeshard::all_dtypes.begin(), safeshard::all_dtypes.end());

    std::cout << std::left << std::setw(13) << "dtype" << std::right << std::setw(5) << "bits"
              << std::setw(7) << "bytes"
              << "  float\n";
    for (const auto t : rows) print_row(t);
    std::cout << "(bytes '-': sub-byte dtypes are packed; a tensor's size is bits x count / 8)\n";
    return 0;
}
