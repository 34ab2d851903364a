#include "safeshard/save/convert.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../io/io_test_support.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/safetensors_writer.hpp"

using namespace safeshard;
using io_test::scratch_dir;
namespace fs = std::filesystem;

namespace {

template <class T>
std::vector<std::byte> bytes_of(const std::vector<T>& v) {
    std::vector<std::byte> b(v.size() * sizeof(T));
    std::memcpy(b.data(), v.data(), b.size());
    return b;
}

// BF16 1.0, 2.0, -0.5, 3.0; F64 1.5, 2.5; I32 7, 8, 9: one tensor each, in one file.
void write_input(const fs::path& dir, const metadata_map& meta = {{"format", "pt"}}) {
    fs::create_directories(dir);
    const auto bf16 = bytes_of(std::vector<std::uint16_t>{0x3f80, 0x4000, 0xbf00, 0x4040});
    const auto f64 = bytes_of(std::vector<double>{1.5, 2.5});
    const auto i32 = bytes_of(std::vector<std::int32_t>{7, 8, 9});
    const tensor_data tensors[] = {{"a.weight", dtype::bf16, shape{2, 2}, bf16},
                                   {"b.weight", dtype::f64, shape{2}, f64},
                                   {"c.ids", dtype::i32, shape{3}, i32}};
    save_file(dir / "model.safetensors", tensors, meta);
    std::ofstream(dir / "config.json") << R"({"model_type": "llama", "torch_dtype": "bfloat16"})";
}

std::vector<std::byte> read_tensor(const checkpoint& c, std::string_view name) {
    const auto t = c.tensor(name);
    const auto b = t.tensor.bytes();
    return {b.begin(), b.end()};
}

}  // namespace

TEST_CASE("convert_checkpoint: floating tensors to the dtype asked, the others kept") {
    scratch_dir d;
    write_input(d.path() / "in");
    const checkpoint in = checkpoint::open((d.path() / "in").string());
    convert_options o;
    o.to = dtype::f32;
    std::uint64_t last_done = 0, last_total = 0;
    o.progress = [&](std::uint64_t done, std::uint64_t total) {
        last_done = done;
        last_total = total;
    };
    int cancel_points = 0;
    o.cancel_point = [&] { ++cancel_points; };
    const convert_report r = convert_checkpoint(in, d.path() / "out", o);
    CHECK(r.tensors == 3);
    CHECK(r.converted == 2);  // BF16 and F64 to F32; I32 kept
    CHECK(r.kept_without_conversion == 0);
    CHECK(r.input_files == 1);
    CHECK(r.shard_files == 1);
    CHECK(r.bytes_written == 4 * 4 + 2 * 4 + 3 * 4);
    CHECK(last_done == r.bytes_written);
    CHECK(last_total == r.bytes_written);
    CHECK(cancel_points > 0);
    CHECK(r.side_files == 1);
    CHECK_FALSE(r.metadata_differs);
    CHECK_FALSE(r.replaced);

    const checkpoint out = checkpoint::open((d.path() / "out").string());
    CHECK(out.tensor("a.weight").tensor.dtype() == dtype::f32);
    CHECK(read_tensor(out, "a.weight") == bytes_of(std::vector<float>{1.0f, 2.0f, -0.5f, 3.0f}));
    CHECK(read_tensor(out, "b.weight") == bytes_of(std::vector<float>{1.5f, 2.5f}));
    CHECK(out.tensor("c.ids").tensor.dtype() == dtype::i32);
    CHECK(out.files().front().view.metadata() == metadata_map{{"format", "pt"}});
    std::ifstream cfg(d.path() / "out" / "config.json");
    const std::string text((std::istreambuf_iterator<char>(cfg)), std::istreambuf_iterator<char>());
    CHECK(text.find("float32") != std::string::npos);
}

TEST_CASE("convert_checkpoint: no direct conversion keeps the dtype; small chunks; force") {
    scratch_dir d;
    write_input(d.path() / "in", {{"format", "mlx"}});
    const checkpoint in = checkpoint::open((d.path() / "in").string());
    convert_options o;
    o.to = dtype::f16;
    o.chunk_bytes = 2;  // at least one element per chunk
    const convert_report r = convert_checkpoint(in, d.path() / "out", o);
    CHECK(r.converted == 1);                // BF16 -> F16
    CHECK(r.kept_without_conversion == 1);  // F64 converts only to F32
    const checkpoint out = checkpoint::open((d.path() / "out").string());
    CHECK(read_tensor(out, "a.weight") ==
          bytes_of(std::vector<std::uint16_t>{0x3c00, 0x4000, 0xb800, 0x4200}));
    CHECK(out.tensor("b.weight").tensor.dtype() == dtype::f64);
    CHECK(out.files().front().view.metadata() == metadata_map{{"format", "mlx"}});

    // The output exists: refused in the library's words, replaced with force.
    try {
        (void)convert_checkpoint(in, d.path() / "out", {});
        FAIL_CHECK("an existing output was not refused");
    } catch (const error& e) {
        CHECK(e.code() == errc::io_error);
        CHECK(e.message().find("force") != std::string::npos);
        CHECK(e.message().find("--force") == std::string::npos);
    }
    convert_options again;
    again.force = true;
    const convert_report r2 = convert_checkpoint(in, d.path() / "out", again);
    CHECK(r2.replaced);
    CHECK(r2.converted == 0);
    CHECK(checkpoint::open((d.path() / "out").string()).tensor("a.weight").tensor.dtype() ==
          dtype::bf16);
}

TEST_CASE("convert_checkpoint: a cancel point that throws leaves nothing") {
    scratch_dir d;
    write_input(d.path() / "in");
    const checkpoint in = checkpoint::open((d.path() / "in").string());
    convert_options o;
    o.cancel_point = [] { throw error(errc::interrupted, "stop"); };
    CHECK_THROWS_AS((void)convert_checkpoint(in, d.path() / "out", o), error);
    CHECK_FALSE(fs::exists(d.path() / "out"));
}
