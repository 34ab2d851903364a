#include "safeshard/format/checkpoint.hpp"

#include <atomic>
#include <string>

#include <doctest/doctest.h>

#include "safeshard/io/syscalls.hpp"

#include "../checkpoint/test_util.hpp"

using namespace safeshard;
using safeshard::test::code_of;
using safeshard::test::fake_tensor;
using safeshard::test::make_safetensors;
using safeshard::test::temp_dir;
using safeshard::test::write_file;
namespace fs = std::filesystem;

namespace {

// Two shards and an index: a (F32 2x2) and b (BF16 4) in shard 1, c (F32 3) in shard 2.
void write_sharded(const fs::path& dir, std::string_view index_json = {}) {
    write_file(dir / "model-00001-of-00002.safetensors",
               make_safetensors({{"b", "BF16", {4}, 8, 1}, {"a", "F32", {2, 2}, 16, 2}},
                                R"({"format":"pt"})"));
    write_file(dir / "model-00002-of-00002.safetensors",
               make_safetensors({{"c", "F32", {3}, 12, 3}}));
    write_file(dir / "model.safetensors.index.json",
               index_json.empty() ? std::string_view(R"({"metadata": {"total_size": 36},
                 "weight_map": {"c": "model-00002-of-00002.safetensors",
                                "a": "model-00001-of-00002.safetensors",
                                "b": "model-00001-of-00002.safetensors"}})")
                                  : index_json);
}

}  // namespace

TEST_CASE("checkpoint: a sharded folder") {
    temp_dir d;
    write_sharded(d.path());
    write_file(d / "config.json", R"({"model_type": "llama", "hidden_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2})");
    const auto c = checkpoint::open(d.path().string());
    CHECK(c.source_kind() == checkpoint::kind::indexed);
    CHECK(c.root() == d.path());
    REQUIRE(c.index() != nullptr);
    CHECK(c.index_path() == d / "model.safetensors.index.json");
    REQUIRE(c.files().size() == 2);
    CHECK(c.files()[0].name == "model-00001-of-00002.safetensors");
    CHECK(c.files()[0].tensor_bytes == 24);
    CHECK(c.files()[1].tensor_bytes == 12);
    CHECK(c.tensor_count() == 3);
    CHECK(c.total_bytes() == 36);
    CHECK(c.warnings().empty());

    const auto a = c.tensor("a");
    CHECK(a.file == &c.files()[0]);
    CHECK(a.tensor.dtype() == dtype::f32);
    CHECK(a.tensor.shape() == shape{2, 2});
    CHECK(static_cast<char>(a.tensor.bytes()[0]) == 2);
    CHECK(c.tensor("c").file->name == "model-00002-of-00002.safetensors");
    CHECK_FALSE(c.find("zzz"));
    CHECK(code_of([&] { (void)c.tensor("zzz"); }) == errc::tensor_not_found);

    // Files by name, tensors by offset within a file.
    const auto all = c.tensors();
    REQUIRE(all.size() == 3);
    CHECK(all[0].tensor.name() == "b");
    CHECK(all[1].tensor.name() == "a");
    CHECK(all[2].tensor.name() == "c");
    CHECK(all[1].tensor.file_begin() == all[0].tensor.file_end());

    const auto totals = c.totals_by_dtype();
    REQUIRE(totals.size() == 2);
    CHECK(totals[0].type == dtype::bf16);  // dtype order
    CHECK(totals[0].bytes == 8);
    CHECK(totals[1].type == dtype::f32);
    CHECK(totals[1].tensors == 2);
    CHECK(totals[1].elements == 7);
    CHECK(totals[1].bytes == 28);

    REQUIRE(c.load_config());
    CHECK(c.load_config()->config().hidden_size == 8);

    // The same through the index path itself, and after a move.
    auto c2 = checkpoint::open((d / "model.safetensors.index.json").string());
    const auto c3 = std::move(c2);
    CHECK(c3.tensor("b").tensor.byte_size() == 8);
    CHECK(c3.files()[0].view.metadata("format") == "pt");
}

TEST_CASE("checkpoint: single files and folders without an index") {
    temp_dir d;
    write_file(d / "one" / "weights.safetensors", make_safetensors({{"x", "F16", {2}, 4, 7}}));
    write_file(d / "one" / "notes.txt", "hi");
    const auto a = checkpoint::open((d / "one").string());
    CHECK(a.source_kind() == checkpoint::kind::single_file);
    CHECK(a.files()[0].name == "weights.safetensors");
    CHECK(a.tensor("x").tensor.dtype() == dtype::f16);
    CHECK_FALSE(a.load_config());

    const auto b = checkpoint::open((d / "one" / "weights.safetensors").string());
    CHECK(b.root() == d / "one");
    CHECK(b.tensor_count() == 1);

    // model.safetensors is preferred over other files.
    write_file(d / "two" / "model.safetensors", make_safetensors({{"y", "F32", {1}, 4, 0}}));
    write_file(d / "two" / "other.safetensors", make_safetensors({{"z", "F32", {1}, 4, 0}}));
    CHECK(checkpoint::open((d / "two").string()).contains("y"));

    // An index other than model.safetensors.index.json, when it is the only one.
    write_sharded(d / "three");
    fs::rename(d / "three" / "model.safetensors.index.json",
               d / "three" / "diffusion_pytorch_model.safetensors.index.json");
    CHECK(checkpoint::open((d / "three").string()).index() != nullptr);
}

TEST_CASE("checkpoint: nothing to open says what was looked for and found") {
    temp_dir d;
    std::string what;
    fs::create_directories(d / "empty");
    CHECK(code_of([&] { (void)checkpoint::open((d / "empty").string()); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(what.find("model.safetensors.index.json") != std::string::npos);
    CHECK(what.find("no .safetensors file") != std::string::npos);

    write_file(d / "many" / "a.safetensors", make_safetensors({{"x", "F32", {1}, 4, 0}}));
    write_file(d / "many" / "b.safetensors", make_safetensors({{"y", "F32", {1}, 4, 0}}));
    CHECK(code_of([&] { (void)checkpoint::open((d / "many").string()); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(what.find("2 .safetensors files and no index (a.safetensors, b.safetensors)") !=
          std::string::npos);

    write_file(d / "idx" / "a.safetensors.index.json", "{}");
    write_file(d / "idx" / "b.safetensors.index.json", "{}");
    CHECK(code_of([&] { (void)checkpoint::open((d / "idx").string()); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(what.find("several indexes") != std::string::npos);

    CHECK(code_of([&] { (void)checkpoint::open((d / "nope").string()); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(code_of([&] { (void)checkpoint::open(""); }) == errc::checkpoint_not_found);
    CHECK(code_of([&] { (void)checkpoint::open("not a/repo/id"); }) == errc::checkpoint_not_found);
}

TEST_CASE("checkpoint: index against shards") {
    temp_dir d;
    std::string what;
    auto open = [&](const fs::path& p, bool strict = true) {
        checkpoint_options o;
        o.strict = strict;
        return checkpoint::open(p.string(), o);
    };

    SUBCASE("a missing shard") {
        write_sharded(d.path());
        fs::remove(d / "model-00002-of-00002.safetensors");
        CHECK(code_of([&] { (void)open(d.path()); }, &what) == errc::invalid_index);
        CHECK(what.find(
                  "the index names shard 'model-00002-of-00002.safetensors', which is not there") !=
              std::string::npos);
    }
    SUBCASE("an unknown shard (a name no file has)") {
        write_sharded(d.path(), R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors", "c": "model-0002-of-0002.safetensors"}})");
        CHECK(code_of([&] { (void)open(d.path()); }, &what) == errc::invalid_index);
        CHECK(what.find("model-0002-of-0002.safetensors") != std::string::npos);
    }
    SUBCASE("a dangling shard link") {
        write_sharded(d.path());
        fs::remove(d / "model-00002-of-00002.safetensors");
        fs::create_symlink("gone", d / "model-00002-of-00002.safetensors");
        CHECK(code_of([&] { (void)open(d.path()); }, &what) == errc::invalid_index);
        CHECK(what.find("dangling") != std::string::npos);
    }
    SUBCASE("path traversal and absolute paths") {
        write_file(d / "outside.safetensors", make_safetensors({{"c", "F32", {3}, 12, 3}}));
        write_sharded(d / "m", R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors", "c": "../outside.safetensors"}})");
        CHECK(code_of([&] { (void)open(d / "m"); }, &what) == errc::invalid_index);
        CHECK(what.find("'..' are refused") != std::string::npos);
        write_sharded(d / "m", R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors", "c": ")" +
                                   (d / "outside.safetensors").string() + R"("}})");
        CHECK(code_of([&] { (void)open(d / "m"); }, &what) == errc::invalid_index);
    }
    SUBCASE("a tensor missing from its shard") {
        write_sharded(d.path(), R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors",
            "d": "model-00002-of-00002.safetensors"}})");
        CHECK(code_of([&] { (void)open(d.path(), false); }, &what) == errc::invalid_index);
        CHECK(
            what.find(
                "puts tensor 'd' in 'model-00002-of-00002.safetensors', which does not hold it") !=
            std::string::npos);
        CHECK(what.find("tensor 'd'") != std::string::npos);
    }
    SUBCASE("a tensor the index places in the wrong shard") {
        write_sharded(d.path(), R"({"weight_map": {"a": "model-00002-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})");
        CHECK(code_of([&] { (void)open(d.path(), false); }, &what) == errc::invalid_index);
        CHECK(what.find("(it is in 'model-00001-of-00002.safetensors')") != std::string::npos);
    }
    SUBCASE("a tensor in two shards") {
        write_sharded(d.path());
        write_file(d / "model-00002-of-00002.safetensors",
                   make_safetensors({{"c", "F32", {3}, 12, 3}, {"a", "F32", {2, 2}, 16, 9}}));
        CHECK(code_of([&] { (void)open(d.path()); }, &what) == errc::invalid_index);
        CHECK(what.find("is in two shards") != std::string::npos);
        const auto c = open(d.path(), false);
        REQUIRE(c.warnings().size() == 1);
        CHECK(c.warnings()[0].tensor == "a");
        CHECK(c.warnings()[0].file == "model-00002-of-00002.safetensors");
        // The index decides which copy the name finds.
        CHECK(c.tensor("a").file->name == "model-00001-of-00002.safetensors");
        CHECK(c.tensor_count() == 4);
    }
    SUBCASE("an unindexed tensor") {
        write_sharded(d.path());
        write_file(d / "model-00002-of-00002.safetensors",
                   make_safetensors({{"c", "F32", {3}, 12, 3}, {"extra", "U8", {2}, 2, 0}}));
        CHECK(code_of([&] { (void)open(d.path()); }, &what) == errc::invalid_index);
        CHECK(what.find("tensor 'extra' is in shard 'model-00002-of-00002.safetensors' but not in "
                        "model.safetensors.index.json") != std::string::npos);
        const auto c = open(d.path(), false);
        REQUIRE(c.warnings().size() == 1);
        CHECK(c.contains("extra"));
    }
    SUBCASE("a wrong total_size") {
        write_sharded(d.path(), R"({"metadata": {"total_size": 37},
            "weight_map": {"a": "model-00001-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})");
        CHECK(code_of([&] { (void)open(d.path()); }, &what) == errc::invalid_index);
        CHECK(what.find("total_size = 37, but its tensors hold 36 bytes") != std::string::npos);
        CHECK(open(d.path(), false).warnings().size() == 1);
    }
    SUBCASE("a duplicate weight_map key and malformed JSON") {
        write_sharded(d.path(), R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
            "a": "model-00001-of-00002.safetensors"}})");
        CHECK(code_of([&] { (void)open(d.path()); }) == errc::invalid_index);
        write_sharded(d.path(), R"({"weight_map": {)");
        CHECK(code_of([&] { (void)open(d.path()); }) == errc::invalid_index);
    }
    SUBCASE("a corrupt shard keeps the format's errc") {
        write_sharded(d.path());
        write_file(d / "model-00002-of-00002.safetensors", std::string("\x04\0\0\0\0\0\0\0{}", 10));
        const auto code = code_of([&] { (void)open(d.path()); }, &what);
        CHECK(code != errc::invalid_index);
        CHECK(code != errc::io_error);
        CHECK(what.find("model-00002-of-00002.safetensors") != std::string::npos);
    }
}

TEST_CASE("checkpoint: a repository id in the Hugging Face cache") {
    temp_dir cache;
    constexpr std::string_view commit = "0123456789abcdef0123456789abcdef01234567";
    const fs::path repo = cache / "models--org--tiny";
    const fs::path snap = repo / "snapshots" / commit;
    // Blobs named by hash, snapshot entries are relative symlinks, as huggingface_hub makes.
    write_sharded(repo / "blobs-tmp");
    fs::create_directories(repo / "blobs");
    fs::create_directories(snap);
    int n = 0;
    for (const auto& e : fs::directory_iterator(repo / "blobs-tmp")) {
        const std::string blob = "blob" + std::to_string(n++);
        fs::rename(e.path(), repo / "blobs" / blob);
        fs::create_symlink("../../blobs/" + blob, snap / e.path().filename());
    }
    fs::remove(repo / "blobs-tmp");
    write_file(repo / "refs" / "main", std::string(commit));

    checkpoint_options o;
    o.hf.cache_dir = cache.path();
    const auto c = checkpoint::open("org/tiny", o);
    REQUIRE(c.snapshot());
    CHECK(c.snapshot()->commit() == commit);
    CHECK(c.root() == snap);
    CHECK(c.tensor("c").tensor.byte_size() == 12);

    std::string what;
    o.hf.revision = "v9";
    CHECK(code_of([&] { (void)checkpoint::open("org/tiny", o); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(what.find("no file or folder 'org/tiny'") != std::string::npos);
    CHECK(what.find("refs") != std::string::npos);
    o.hf.revision = "main";

    // A shard the snapshot lacks, recorded as known missing.
    fs::remove(snap / "model-00002-of-00002.safetensors");
    write_file(repo / ".no_exist" / commit / "model-00002-of-00002.safetensors", "");
    CHECK(code_of([&] { (void)checkpoint::open("org/tiny", o); }, &what) == errc::invalid_index);
    CHECK(what.find(".no_exist") != std::string::npos);

    // An existing path wins over a repository id.
    temp_dir work;
    write_file(work / "org" / "tiny" / "model.safetensors",
               make_safetensors({{"local", "F32", {1}, 4, 0}}));
    const auto old = fs::current_path();
    fs::current_path(work.path());
    const auto local = checkpoint::open("org/tiny", o);
    fs::current_path(old);
    CHECK(local.contains("local"));
    CHECK_FALSE(local.snapshot());
}

TEST_CASE("checkpoint: shards opened in parallel report the first bad shard, as in order") {
    // 24 shards, one F32 tensor each; shards 7 and 15 are damaged in different ways. Any number
    // of threads reports shard 7 (the first by name), with the same error a serial open gives.
    temp_dir d;
    constexpr int n = 24;
    std::string index = R"({"weight_map": {)";
    auto shard = [](int i) {
        return "model-" + std::string(i < 9 ? "0000" : "000") + std::to_string(i + 1) +
               "-of-00024.safetensors";
    };
    for (int i = 0; i < n; ++i) {
        const std::string name = "t" + std::to_string(i);
        write_file(d / shard(i), make_safetensors({{name, "F32", {2}, 8, static_cast<char>(i)}}));
        index += (i ? ",\"" : "\"") + name + "\": \"" + shard(i) + "\"";
    }
    index += "}}";
    write_file(d / "model.safetensors.index.json", index);
    for (const unsigned threads : {0u, 1u, 3u, 8u}) {
        checkpoint_options o;
        o.threads = threads;
        const auto c = checkpoint::open(d.path().string(), o);
        REQUIRE(c.files().size() == n);
        for (int i = 0; i < n; i += 5) {
            const auto t = c.tensor("t" + std::to_string(i));
            CHECK(t.file->name == shard(i));
            CHECK(static_cast<char>(t.tensor.bytes()[0]) == static_cast<char>(i));
        }
    }
    write_file(d / shard(7), "short");  // header length missing
    write_file(d / shard(15), make_safetensors({{"t15", "F32", {3}, 8, 0}}));  // size mismatch
    std::string serial;
    checkpoint_options one;
    one.threads = 1;
    CHECK(code_of([&] { (void)checkpoint::open(d.path().string(), one); }, &serial) ==
          errc::header_too_small);
    CHECK(serial.find(shard(7)) != std::string::npos);
    for (const unsigned threads : {0u, 2u, 4u, 8u}) {
        CAPTURE(threads);
        checkpoint_options o;
        o.threads = threads;
        std::string what;
        CHECK(code_of([&] { (void)checkpoint::open(d.path().string(), o); }, &what) ==
              errc::header_too_small);
        CHECK(what == serial);
    }
}

namespace {
struct count_mmap : detail::syscall_hooks {
    std::atomic<int> calls{0};
    void* mmap(std::size_t n, int prot, int flags, int fd) override {
        ++calls;
        return detail::syscall_hooks::mmap(n, prot, flags, fd);
    }
};
std::size_t open_descriptors() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
    return n;
}
}  // namespace

TEST_CASE("checkpoint: opening and listing many shards maps none and keeps no descriptor") {
    // What verify and inspect do: tens of thousands of shards would otherwise take a mapping
    // each (vm.max_map_count is 65530 by default) and 65530 is also within reach of fds.
    temp_dir d;
    constexpr int n = 300;
    std::string index = R"({"weight_map":{)";
    for (int i = 0; i < n; ++i) {
        const std::string file = "s" + std::to_string(i) + ".safetensors";
        write_file(d / file, make_safetensors(
                                 {{"t" + std::to_string(i), "U8", {3}, 3, static_cast<char>(i)}}));
        index += (i ? ",\"t" : "\"t") + std::to_string(i) + "\":\"" + file + "\"";
    }
    write_file(d / "model.safetensors.index.json", index + "}}");
    count_mmap hooks;
    const detail::scoped_syscall_hooks scope(hooks);
    const std::size_t fds = open_descriptors();
    const auto c = checkpoint::open(d.path().string());
    CHECK(c.tensor_count() == n);
    CHECK(c.totals_by_dtype().front().bytes == 3 * n);
    for (const auto& l : c.tensors()) CHECK(l.tensor.file_end() == l.file->view.data_offset() + 3);
    CHECK(hooks.calls == 0);
    CHECK(open_descriptors() == fds);
    for (const auto& f : c.files()) CHECK_FALSE(f.view.mapped());
    // Tensor bytes map their file when asked for, that file only.
    CHECK(static_cast<char>(c.tensor("t7").tensor.bytes()[2]) == 7);
    CHECK(hooks.calls == 1);
    CHECK(open_descriptors() == fds);
}
