// `safeshard convert` end to end: the built binary on generated checkpoints, re-read with the
// library; exit codes, out of space (injected in the library's convert_checkpoint, and real where
// a tmpfs may be mounted), SIGINT, and SIGKILL at random moments.
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "../../tools/exit_code.hpp"
#include "../support/expect_error.hpp"
#include "../support/fault_hooks.hpp"
#include "../support/quantized_llama.hpp"
#include "../support/temp_dir.hpp"
#include "cli_support.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/save/convert.hpp"

using namespace safeshard;
using namespace safeshard::test::cli;
namespace fs = std::filesystem;

namespace {

// The fixture's config.json. Its tensors are no llama's, so its model_type is one the registry
// does not know: verify compares the generic fields only.
constexpr const char* config_json = R"({
  "model_type": "convert_fixture",
  "architectures": ["ConvertFixtureForCausalLM"],
  "hidden_size": 64,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "torch_dtype": "bfloat16",
  "vocab_size": 100
}
)";

using scratch = safeshard::test::temp_dir;

void write_text(const fs::path& p, std::string_view s) {
    std::ofstream f(p, std::ios::binary);
    f << s;
}

// BF16 values of N(0, 1)-ish floats (finite, some negative), F32, and an I64 tensor.
std::vector<std::byte> values(dtype t, std::size_t n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.f, 1.f);
    std::vector<float> f(n);
    for (auto& v : f) v = dist(rng);
    std::vector<std::byte> out(n * byte_size(t));
    if (t == dtype::f32) {
        std::memcpy(out.data(), f.data(), out.size());
    } else if (t == dtype::i64) {
        for (std::size_t i = 0; i < n; ++i) {
            const std::int64_t v = static_cast<std::int64_t>(i) * 7 - 3;
            std::memcpy(out.data() + 8 * i, &v, 8);
        }
    } else {
        find_converter(dtype::f32, t)(reinterpret_cast<const std::byte*>(f.data()), out.data(), n);
    }
    return out;
}

// Every input shard's __metadata__: the format and a note a converted copy keeps.
metadata_map input_metadata() { return {{"format", "pt"}, {"origin", "a \"quoted\" note"}}; }

// A two-file checkpoint with an index, config.json and a tokenizer file; `scale` multiplies the
// tensor sizes.
void make_checkpoint(const fs::path& dir, std::size_t scale = 1) {
    fs::create_directories(dir);
    struct spec {
        std::string name;
        dtype type;
        std::uint64_t rows, cols;
    };
    const std::vector<spec> files[2] = {
        {{"model.embed_tokens.weight", dtype::bf16, 100, 64 * scale},
         {"model.layers.0.mlp.weight", dtype::bf16, 64, 64 * scale},
         {"model.layers.0.norm.weight", dtype::f32, 1, 64 * scale}},
        {{"model.layers.1.mlp.weight", dtype::bf16, 64, 64 * scale},
         {"model.layers.1.norm.weight", dtype::f32, 1, 64 * scale},
         {"position_ids", dtype::i64, 1, 16}}};
    std::string weight_map;
    std::uint64_t total = 0;
    for (int f = 0; f < 2; ++f) {
        const std::string file = "model-0000" + std::to_string(f + 1) + "-of-00002.safetensors";
        std::vector<std::vector<std::byte>> storage;
        std::vector<tensor_data> tensors;
        std::uint32_t seed = 1;
        for (const auto& s : files[f]) {
            storage.push_back(values(s.type, s.rows * s.cols, seed++ + 10 * f));
            total += storage.back().size();
            weight_map += (weight_map.empty() ? "" : ",") + ("\"" + s.name + "\":\"" + file + "\"");
        }
        for (std::size_t i = 0; i < files[f].size(); ++i)
            tensors.push_back(tensor_data{files[f][i].name, files[f][i].type,
                                          shape{files[f][i].rows, files[f][i].cols}, storage[i]});
        save_file(dir / file, tensors, input_metadata());
    }
    write_text(dir / "model.safetensors.index.json",
               "{\"metadata\":{\"total_size\":" + std::to_string(total) + "},\"weight_map\":{" +
                   weight_map + "}}");
    write_text(dir / "config.json", config_json);
    write_text(dir / "tokenizer.json", "{\"version\": \"1.0\"}");
}

}  // namespace

TEST_SUITE("cli") {
    TEST_CASE(
        "convert: a plain re-shard re-reads bit-exact, passes verify, copies the small files") {
        scratch d;
        make_checkpoint(d / "in");
        auto r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "one"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("converted 6 tensors (dtypes kept) from 2 files into model.safetensors") !=
              std::string::npos);
        CHECK(fs::exists(d / "one" / "model.safetensors"));
        CHECK_FALSE(fs::exists(d / "one" / "model.safetensors.index.json"));
        CHECK(slurp(d / "one" / "config.json") == config_json);  // same dtype: copied as is
        CHECK(slurp(d / "one" / "tokenizer.json") == slurp(d / "in" / "tokenizer.json"));
        check_same(d / "in", d / "one");
        CHECK(run(d.path(), "verify " + q(d / "one")).rc == 0);
        CHECK(checkpoint::open((d / "one").string()).files()[0].view.metadata() ==
              input_metadata());  // the input's __metadata__ kept

        r = run(d.path(),
                "convert " + q(d / "one") + " --out " + q(d / "many") + " --max-shard-size 10KB");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(fs::exists(d / "many" / "model.safetensors.index.json"));
        // The 12800-byte embedding is over 10KB: a shard of its own, first; the rest fill two.
        const auto many = checkpoint::open((d / "many").string());
        REQUIRE(many.files().size() == 3);
        CHECK(many.tensor("model.embed_tokens.weight").file->name ==
              "model-00001-of-00003.safetensors");
        CHECK(many.files()[0].view.size() == 1);
        for (const auto& f : many.files()) CHECK(f.view.metadata() == input_metadata());
        check_same(d / "in", d / "many");
        r = run(d.path(), "verify " + q(d / "many"));
        CHECK_MESSAGE(r.rc == 0, r.err);
        CHECK(count_entries(d.path()) == 3);  // in one many: no temporaries
    }

    TEST_CASE("convert --dtype: values equal the conversion reference; config.json dtype updated") {
        scratch d;
        make_checkpoint(d / "in");
        for (const char* t : {"f16", "F32", "bf16"}) {
            CAPTURE(t);
            const auto out = d / (std::string("out-") + t);
            auto r = run(d.path(), "convert " + q(d / "in") + " --out " + q(out) + " --dtype " + t +
                                       " --max-shard-size 30KB");
            REQUIRE_MESSAGE(r.rc == 0, r.err);
            const dtype to = *parse_dtype_ignore_case(t);
            check_same(d / "in", out, to);
            const std::string cfg = slurp(out / "config.json");
            const std::string torch = to == dtype::f16   ? "float16"
                                      : to == dtype::f32 ? "float32"
                                                         : "bfloat16";
            CHECK(cfg.find("\"torch_dtype\": \"" + torch + "\"") != std::string::npos);
            CHECK(cfg.find("\"hidden_size\": 64") != std::string::npos);
            r = run(d.path(), "verify " + q(out));
            CHECK_MESSAGE(r.rc == 0, r.err);
        }
    }

    TEST_CASE("convert --dtype of a quantized checkpoint: written dequantized, or refused") {
        scratch d;
        fs::create_directories(d / "fp8");
        fs::create_directories(d / "awq");
        test::write(d / "fp8", test::llama_config(R"({"quant_method": "fp8", "fmt": "e4m3",
                        "activation_scheme": "dynamic", "weight_block_size": [4, 4]})"),
                    test::fp8_llama(test::block_scaled(4)));
        auto r = run(d.path(), "convert " + q(d / "fp8") + " --out " + q(d / "bf16") +
                                   " --dtype BF16 --max-shard-size 10KB");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(
            r.err.find("note: 7 quantized weights written dequantized to BF16; 7 scale tensors") !=
            std::string::npos);
        test::check_same_tensors(d / "bf16", 0, 1,
                                 test::load_dequantized(d / "fp8", 0, 1, dtype::bf16));
        CHECK(checkpoint::open((d / "bf16").string()).files().size() > 1);
        r = run(d.path(), "verify " + q(d / "bf16"));
        CHECK_MESSAGE(r.rc == 0, r.err);

        // A config.json saying AWQ, which does not dequantize yet: refused (exit 1) before a
        // tensor is read, rather than its scales rounded to BF16 as if weights.
        test::write(d / "awq", test::llama_config(R"({"quant_method": "awq", "bits": 4,
                        "group_size": 16, "zero_point": true, "version": "gemm"})"),
                    test::fp8_llama(test::block_scaled(4)));
        r = run(d.path(), "convert " + q(d / "awq") + " --out " + q(d / "x") + " --dtype BF16");
        CHECK(r.rc == 1);
        CHECK(r.err.find("quantized by awq, whose weights do not dequantize to BF16") !=
              std::string::npos);
        CHECK_FALSE(fs::exists(d / "x"));
        // Without --dtype it is re-sharded as stored.
        r = run(d.path(), "convert " + q(d / "awq") + " --out " + q(d / "x"));
        CHECK_MESSAGE(r.rc == 0, r.err);
    }

    TEST_CASE("convert: a single file input; exit codes for bad arguments and outputs") {
        scratch d;
        make_checkpoint(d / "in");
        auto r = run(d.path(), "convert " + q(d / "in" / "model-00002-of-00002.safetensors") +
                                   " --out " + q(d / "in2"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK_FALSE(fs::exists(d / "in2" / "config.json"));  // a lone file brings nothing else
        CHECK(checkpoint::open((d / "in2").string()).tensor_count() == 3);

        r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "in2"));
        CHECK(r.rc == 2);
        CHECK(r.err.find("already exists; pass --force") != std::string::npos);
        r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "in" / "sub"));
        CHECK(r.rc == 2);
        CHECK(r.err.find("inside") != std::string::npos);
        CHECK(run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "in")).rc == 2);
        CHECK(run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "x") + " --dtype i8").rc ==
              2);
        CHECK(
            run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "x") + " --dtype nope").rc ==
            2);
        CHECK(run(d.path(),
                  "convert " + q(d / "in") + " --out " + q(d / "x") + " --max-shard-size 5QB")
                  .rc == 2);
        CHECK(run(d.path(), "convert " + q(d / "in")).rc == 2);  // --out is required
        CHECK(run(d.path(), "convert " + q(d / "missing") + " --out " + q(d / "x")).rc == 1);
        CHECK_FALSE(fs::exists(d / "x"));

        // --force replaces the old folder by the new one.
        write_text(d / "in2" / "stale.txt", "old");
        r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "in2") + " --force");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("old folder replaced") != std::string::npos);
        CHECK_FALSE(fs::exists(d / "in2" / "stale.txt"));
        check_same(d / "in", d / "in2");
        // --force never deletes the input: the input inside the output is refused.
        fs::create_directories(d / "outer");
        fs::rename(d / "in2", d / "outer" / "in2");
        r = run(d.path(),
                "convert " + q(d / "outer" / "in2") + " --out " + q(d / "outer") + " --force");
        CHECK(r.rc == 2);
        CHECK(fs::exists(d / "outer" / "in2" / "model.safetensors"));
        // ... nor when the input's files are links into the output (a cache snapshot).
        fs::create_directories(d / "snap");
        for (const auto& e : fs::directory_iterator(d / "in"))
            fs::create_symlink(e.path(), d / "snap" / e.path().filename());
        r = run(d.path(), "convert " + q(d / "snap") + " --out " + q(d / "in") + " --force");
        CHECK(r.rc == 2);
        CHECK(r.err.find("inside the output folder") != std::string::npos);
        check_same(d / "snap", d / "in");
    }

    TEST_CASE("convert: out of space and a read-only folder exit 3 and leave nothing") {
        scratch d;
        make_checkpoint(d / "in", 8);
        fs::create_directory(d / "disk");
        // The library path the command runs, with the faults injected (the seam is in-process):
        // io_error with the system's words, which the tool turns into exit 3.
        const checkpoint c = checkpoint::open((d / "in").string());
        const convert_options o{.to = dtype::f32, .max_shard_size = 200000};
        for (const std::uint64_t room : {0u, 4096u, 300000u}) {
            for (const int full : {ENOSPC, EDQUOT}) {
                CAPTURE(room);
                CAPTURE(full);
                safeshard::test::fault_hooks hooks;
                hooks.enospc_after = room;
                hooks.full_errno = full;
                {
                    const detail::scoped_syscall_hooks scope(hooks);
                    const auto e = safeshard::test::expect_error(errc::io_error, [&] {
                        (void)convert_checkpoint(c, d / "disk" / "out", o);
                    });
                    CHECK(e.sys_errno() == full);
                    CHECK(std::string(e.what()).find(std::strerror(full)) != std::string::npos);
                    CHECK(std::string(e.what()).find("io_error") == 0);
                    CHECK(cli::exit_code_for(e.code()) == cli::exit_system);
                }
                CHECK(hooks.bytes_in == room);
                CHECK(count_entries(d / "disk") == 0);
            }
        }
        {
            safeshard::test::fault_hooks hooks;
            hooks.read_only = true;
            const detail::scoped_syscall_hooks scope(hooks);
            const auto e = safeshard::test::expect_error(
                errc::io_error, [&] { (void)convert_checkpoint(c, d / "disk" / "out", o); });
            CHECK(e.sys_errno() == EROFS);
            CHECK(std::string(e.what()).find("Read-only file system") != std::string::npos);
            CHECK(cli::exit_code_for(e.code()) == cli::exit_system);
        }
        CHECK(count_entries(d / "disk") == 0);
        // The tool itself: an output folder the system refuses to make is exit 3, in its words.
        write_text(d / "file", "x");
        auto r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "file" / "out"));
        CHECK(r.rc == 3);
        CHECK(r.err.find("io_error") != std::string::npos);
        CHECK(r.err.find("Not a directory") != std::string::npos);
        CHECK(slurp(d / "file") == "x");
        // And on a real full and read-only tmpfs, where this process may mount one.
        tmpfs_mount small(d / "small", "size=128k");
        if (!small.mounted()) return;
        r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "small" / "out"));
        CHECK(r.rc == 3);
        CHECK(r.err.find("No space left on device") != std::string::npos);
        CHECK(r.err.find("io_error") != std::string::npos);
        CHECK(count_entries(d / "small") == 0);
        REQUIRE(small.remount_read_only());
        r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "small" / "out"));
        CHECK(r.rc == 3);
        CHECK(r.err.find("Read-only file system") != std::string::npos);
    }

    TEST_CASE("convert: SIGINT stops with 130 and no partial output") {
        scratch d;
        make_checkpoint(d / "in", 256);  // about 10 MB: long enough to interrupt
        const auto out = d / "out";
        interrupt_at_spread_points(
            {"convert", (d / "in").string(), "--out", out.string(), "--dtype", "f32"}, out,
            [&] { check_same(d / "in", out, dtype::f32); });
    }

    TEST_CASE("convert: SIGKILL at 100 random moments leaves OUT absent or complete") {
        scratch d;
        make_checkpoint(d / "in", 4);
        // On a private tmpfs when we may mount one (fsync costs nothing there, so 100 runs take
        // seconds).
        const tmpfs_mount mnt(d / "work", "size=64m");
        const fs::path work = d / "work";
        MESSAGE("crash runs on " << (mnt.mounted() ? "tmpfs" : "disk (" + mnt.why() + ")"));
        const auto args = [&](const fs::path& out, bool force) {
            std::vector<std::string> a{
                "convert", (d / "in").string(), "--out", out.string(), "--dtype",
                "f16",     "--max-shard-size",  "40KB"};
            if (force) a.emplace_back("--force");
            return a;
        };
        std::string ref_index;
        const crash_tally t =
            kill_at_random_moments(work, 100, 12345, args, [&](const fs::path& out) {
                if (ref_index.empty())
                    ref_index = slurp(work / "ref" / "model.safetensors.index.json");
                CHECK(slurp(out / "model.safetensors.index.json") == ref_index);
                check_same(d / "in", out, dtype::f16);
            });
        CHECK(t.killed_mid > 10);
        // The next run cleans what killed runs left: nothing but the outputs remains.
        fs::remove_all(work / "out");
        REQUIRE(WEXITSTATUS(wait_status(spawn(args(work / "out", false)))) == 0);
        CAPTURE(listing_with_owners(work));
        CHECK(listing(work) == std::vector<std::string>{"out", "ref"});
    }
}
