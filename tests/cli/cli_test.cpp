// Runs the built safeshard binary on generated good and bad checkpoints.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <doctest/doctest.h>
#include <simdjson.h>

#include "../checkpoint/test_util.hpp"

using safeshard::test::fake_tensor;
using safeshard::test::make_safetensors;
using safeshard::test::temp_dir;
using safeshard::test::write_file;
namespace fs = std::filesystem;

namespace {

struct result {
    int rc = -1;
    std::string out;
    std::string err;
};

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Runs `prefix safeshard args` through sh, capturing stdout, stderr and the exit code.
result run(const temp_dir& d, const std::string& args, const std::string& prefix = {}) {
    const std::string cmd = prefix + " '" SAFESHARD_EXE "' " + args + " >'" + (d / "out").string() +
                            "' 2>'" + (d / "err").string() + "'";
    const int status = std::system(cmd.c_str());
    result r;
    REQUIRE(WIFEXITED(status));
    r.rc = WEXITSTATUS(status);
    r.out = slurp(d / "out");
    r.err = slurp(d / "err");
    return r;
}

void write_sharded(const fs::path& dir) {
    write_file(dir / "model-00001-of-00002.safetensors",
               make_safetensors({{"b", "BF16", {4}, 8, 1}, {"a", "F32", {2, 2}, 16, 2}},
                                R"({"format":"pt","q\"uote":"x\\y"})"));
    write_file(dir / "model-00002-of-00002.safetensors",
               make_safetensors({{"c", "F32", {3}, 12, 3}}));
    write_file(dir / "model.safetensors.index.json", R"({"metadata": {"total_size": 36},
        "weight_map": {"c": "model-00002-of-00002.safetensors",
                       "a": "model-00001-of-00002.safetensors",
                       "b": "model-00001-of-00002.safetensors"}})");
}

bool has(const std::string& s, std::string_view what) { return s.find(what) != std::string::npos; }

}  // namespace

TEST_CASE("cli: inspect prints a table") {
    temp_dir d;
    write_sharded(d / "m");
    const auto r = run(d, "inspect " + (d / "m").string());
    CHECK(r.rc == 0);
    CHECK(r.err.empty());
    CHECK(has(r.out, "2 files, 3 tensors"));
    CHECK(has(r.out, "NAME"));
    CHECK(has(r.out, "model-00002-of-00002.safetensors"));
    CHECK(has(r.out, "Totals by dtype:"));
    CHECK(has(r.out, "Totals by file:"));
    CHECK(has(r.out, "format = pt"));
    CHECK(has(r.out, "total_size 36"));
    // Tensors by offset within a file: b before a.
    CHECK(r.out.find("\nb ") < r.out.find("\na "));
}

TEST_CASE("cli: inspect --json is the documented interface") {
    temp_dir d;
    write_sharded(d / "m");
    const auto r = run(d, "inspect --json " + (d / "m").string());
    REQUIRE(r.rc == 0);
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    REQUIRE(parser.parse(r.out).get(doc) == simdjson::SUCCESS);
    simdjson::dom::array files = doc["files"].get_array();
    REQUIRE(files.size() == 2);
    simdjson::dom::element f0 = files.at(0);
    CHECK(std::string_view(f0["path"]) == "model-00001-of-00002.safetensors");
    const std::uint64_t n0 = f0["header_bytes"];
    CHECK(n0 % 8 == 0);
    CHECK(std::string_view(f0["metadata"]["format"]) == "pt");
    CHECK(std::string_view(f0["metadata"]["q\"uote"]) == "x\\y");  // escaped both ways
    CHECK(std::uint64_t(f0["tensors"]) == 2);
    simdjson::dom::array tensors = doc["tensors"].get_array();
    REQUIRE(tensors.size() == 3);
    simdjson::dom::element b = tensors.at(0);
    CHECK(std::string_view(b["name"]) == "b");
    CHECK(std::string_view(b["dtype"]) == "BF16");
    CHECK(std::string_view(b["file"]) == "model-00001-of-00002.safetensors");
    CHECK(std::uint64_t(b["offset"]) == 8 + n0);  // 8 + N + data offset 0
    CHECK(std::uint64_t(b["nbytes"]) == 8);
    simdjson::dom::element a = tensors.at(1);
    CHECK(std::uint64_t(a["offset"]) == 8 + n0 + 8);
    simdjson::dom::array shape = a["shape"].get_array();
    CHECK(shape.size() == 2);
    CHECK(std::uint64_t(shape.at(0)) == 2);
    CHECK(std::uint64_t(doc["total_bytes"]) == 36);
}

TEST_CASE("cli: JSON strings are escaped") {
    temp_dir d;
    const std::string odd = std::string("we\"ird\\name\x01\ttab\xc3\xa9");
    write_file(d / "x.safetensors",
               make_safetensors({{"we\\\"ird\\\\name\\u0001\\ttab\xc3\xa9", "U8", {1}, 1, 0}}));
    const auto r = run(d, "inspect --json " + (d / "x.safetensors").string());
    REQUIRE(r.rc == 0);
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    REQUIRE(parser.parse(r.out).get(doc) == simdjson::SUCCESS);
    CHECK(std::string_view(doc["tensors"].at(0)["name"]) == odd);
    // The table shows control characters escaped.
    const auto t = run(d, "inspect " + (d / "x.safetensors").string());
    CHECK(t.rc == 0);
    CHECK(has(t.out, "\\x01"));
}

TEST_CASE("cli: verify") {
    temp_dir d;
    write_sharded(d / "m");
    auto r = run(d, "verify " + (d / "m").string());
    CHECK(r.rc == 0);
    CHECK(r.out.starts_with("ok\n3 tensors in 2 files"));
    CHECK(has(r.out, "total_size matches"));

    write_file(d / "m" / "config.json", R"({"model_type": "llama", "hidden_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2})");
    r = run(d, "verify " + (d / "m").string());
    CHECK(r.rc == 0);
    CHECK(has(r.out, "config.json llama"));
    write_file(d / "m" / "config.json", R"({"model_type": "llama"})");
    r = run(d, "verify " + (d / "m").string());
    CHECK(r.rc == 1);
    CHECK(has(r.err, "invalid_config"));
    CHECK(has(r.err, "config.json"));
    CHECK(run(d, "verify --skip-config " + (d / "m").string()).rc == 0);
}

TEST_CASE("cli: bad checkpoints exit 1 naming the errc, file and tensor") {
    temp_dir d;
    SUBCASE("missing shard") {
        write_sharded(d / "m");
        fs::remove(d / "m" / "model-00002-of-00002.safetensors");
        const auto r = run(d, "verify " + (d / "m").string());
        CHECK(r.rc == 1);
        CHECK(has(r.err, "invalid_index"));
        CHECK(has(r.err, "model-00002-of-00002.safetensors"));
        CHECK(r.out.empty());
    }
    SUBCASE("traversal") {
        write_sharded(d / "m");
        write_file(d / "m" / "model.safetensors.index.json",
                   R"({"weight_map": {"a": "../../etc/passwd"}})");
        const auto r = run(d, "inspect " + (d / "m").string());
        CHECK(r.rc == 1);
        CHECK(has(r.err, "invalid_index"));
        CHECK(has(r.err, "tensor 'a'"));
    }
    SUBCASE("unindexed tensor: strict fails, --lenient warns") {
        write_sharded(d / "m");
        write_file(d / "m" / "model-00002-of-00002.safetensors",
                   make_safetensors({{"c", "F32", {3}, 12, 3}, {"extra", "U8", {1}, 1, 0}}));
        auto r = run(d, "verify " + (d / "m").string());
        CHECK(r.rc == 1);
        CHECK(has(r.err, "tensor 'extra'"));
        r = run(d, "verify --lenient " + (d / "m").string());
        CHECK(r.rc == 0);
        CHECK(has(r.err, "warning"));
        CHECK(has(r.out, "1 warnings"));
    }
    SUBCASE("corrupt header") {
        write_file(d / "bad.safetensors", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10));
        const auto r = run(d, "verify " + (d / "bad.safetensors").string());
        CHECK(r.rc == 1);
        CHECK(has(r.err, "header_too_large"));
        CHECK(has(r.err, "bad.safetensors"));
    }
    SUBCASE("nothing there") {
        const auto r = run(d, "inspect " + (d / "nope").string());
        CHECK(r.rc == 1);
        CHECK(has(r.err, "checkpoint_not_found"));
    }
    SUBCASE("an empty file") {
        write_file(d / "empty.safetensors", "");
        CHECK(run(d, "verify " + (d / "empty.safetensors").string()).rc == 1);
    }
}

TEST_CASE("cli: usage errors exit 2, help 0") {
    temp_dir d;
    CHECK(run(d, "").rc == 2);
    CHECK(run(d, "inspect").rc == 2);
    CHECK(run(d, "inspect --bogus x").rc == 2);
    CHECK(run(d, "frobnicate").rc == 2);
    CHECK(run(d, "verify org/name --revision ../x").rc == 2);
    const auto h = run(d, "--help");
    CHECK(h.rc == 0);
    CHECK(has(h.out, "Exit codes:"));
    CHECK(has(h.out, "130"));
    CHECK(run(d, "inspect --help").rc == 0);
}

TEST_CASE("cli: a failing write exits 3; a closed pipe exits 0 quietly") {
    temp_dir d;
    std::vector<fake_tensor> many;
    for (int i = 0; i < 3000; ++i)
        many.push_back({"model.layers." + std::to_string(i) + ".weight", "F32", {1}, 4, 0});
    write_file(d / "big.safetensors", make_safetensors(many));
    const std::string target = (d / "big.safetensors").string();
    const auto full = run(d, "inspect --json " + target + " >/dev/full; exit $? #");
    CHECK(full.rc == 3);
    const std::string rc_file = (d / "rc").string();
    const std::string cmd = "('" SAFESHARD_EXE "' inspect --json '" + target + "' 2>'" +
                            (d / "pipe_err").string() + "'; echo $? >'" + rc_file +
                            "') | head -c 100 >/dev/null";
    REQUIRE(std::system(cmd.c_str()) == 0);
    CHECK(slurp(rc_file) == "0\n");
    CHECK(slurp(d / "pipe_err").empty());
}

TEST_CASE("cli: a repository id in the cache") {
    temp_dir d;
    const std::string commit = "0123456789abcdef0123456789abcdef01234567";
    const fs::path repo = d / "hub" / "models--org--tiny";
    write_sharded(repo / "snapshots" / commit);
    write_file(repo / "refs" / "main", commit + "\n");
    auto r = run(d, "verify org/tiny", "HF_HUB_CACHE='" + (d / "hub").string() + "'");
    CHECK(r.rc == 0);
    r = run(d, "inspect --json org/tiny --cache-dir '" + (d / "hub").string() + "'",
            "HF_HUB_CACHE=/nonexistent");
    CHECK(r.rc == 0);
    CHECK(has(r.out, "\"path\":\"model-00001-of-00002.safetensors\""));
    r = run(d, "verify org/tiny --revision v2 --cache-dir '" + (d / "hub").string() + "'");
    CHECK(r.rc == 1);
    CHECK(has(r.err, "checkpoint_not_found"));
    CHECK(has(r.err, "refs/v2"));
}
