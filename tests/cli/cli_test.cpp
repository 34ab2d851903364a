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
#include "../load/model_gen.hpp"

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

    // A config.json that claims a layer the tensors (a, b, c) do not have.
    write_file(d / "m" / "config.json", R"({"model_type": "llama", "hidden_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2})");
    r = run(d, "verify " + (d / "m").string());
    CHECK(r.rc == 1);
    CHECK(has(r.err,
              "num_hidden_layers: config.json says 1, but the checkpoint holds no "
              "numbered layers"));
    CHECK(run(d, "verify --skip-config " + (d / "m").string()).rc == 0);
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

namespace {

// A flat JSON object (config_json's) with one field's value replaced.
std::string set_field(const std::string& c, const std::string& field, const std::string& value) {
    const std::string key = "\"" + field + "\":";
    const auto at = c.find(key);
    REQUIRE(at != std::string::npos);
    const auto end = c.find_first_of(",}", at + key.size());
    return c.substr(0, at + key.size()) + value + c.substr(end);
}

// A llama checkpoint at d/m (hidden 64, vocab 100, 2 layers, 8 heads of 8, 2 KV heads unless
// `kv_heads`) whose config.json sets `field` to `value`; its config.json text.
std::string write_model(const temp_dir& d, const std::string& field, const std::string& value,
                        std::uint64_t kv_heads = 2) {
    safeshard::test::model_spec m;
    m.kv_heads = kv_heads;
    fs::create_directories(d / "m");
    safeshard::test::write_checkpoint(d / "m", m, safeshard::test::make_tensors(m));
    const std::string c = set_field(safeshard::test::config_json(m), field, value);
    write_file(d / "m" / "config.json", c);
    return c;
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool asan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool asan = true;
#else
constexpr bool asan = false;
#endif
#else
constexpr bool asan = false;
#endif

// A generous 10 s limit, and a 2 GiB address space where AddressSanitizer (whose shadow
// memory needs more) is not in the binary.
std::string bounded() { return std::string(asan ? "" : "ulimit -v 2097152; ") + "exec timeout 10"; }

}  // namespace

TEST_CASE("cli: verify checks config.json against the tensors as plan does, naming the field") {
    temp_dir d;
    struct row {
        const char* field;
        const char* value;
        const char* says;
    };
    for (const row& x :
         {row{"hidden_size", "96", "hidden_size: "}, row{"vocab_size", "999", "vocab_size: "},
          row{"num_hidden_layers", "1", "num_hidden_layers: config.json says 1"},
          row{"num_attention_heads", "4", "num_attention_heads × head_dim: "}}) {
        CAPTURE(std::string(x.field));
        write_model(d, x.field, x.value);
        const auto v = run(d, "verify " + (d / "m").string());
        CHECK(v.rc == 1);
        CHECK(v.out.empty());
        CHECK(has(v.err, x.says));
        CHECK(has(v.err, "config.json"));
        CHECK(run(d, "plan " + (d / "m").string() + " --tp 1").rc == 1);  // refused there too
        fs::remove_all(d / "m");
    }
    // Agreeing: ok, and plan agrees.
    write_model(d, "num_hidden_layers", "2");
    auto v = run(d, "verify " + (d / "m").string());
    CHECK(v.rc == 0);
    CHECK(has(v.out, "config.json llama\n"));
    CHECK(run(d, "plan " + (d / "m").string() + " --tp 2").rc == 0);
    // A layer of 2 left out, lenient: a note, as plan --lenient reports the names.
    write_model(d, "num_hidden_layers", "1");
    v = run(d, "verify --lenient " + (d / "m").string());
    CHECK(v.rc == 0);
    CHECK(has(v.out, "note: num_hidden_layers: config.json says 1"));
    // A model_type the registry does not know: the generic fields, and a note; never exit 1
    // for the type itself.
    write_model(d, "model_type", "\"falcon_mamba\"");
    v = run(d, "verify " + (d / "m").string());
    CHECK(v.rc == 0);
    CHECK(has(v.out, "config.json falcon_mamba (generic fields only)"));
    CHECK(has(v.out, "note: model_type 'falcon_mamba' is not registered"));
    write_file(d / "m" / "config.json",
               R"({"model_type": "falcon_mamba", "hidden_size": 96, "num_hidden_layers": 2,
                   "num_attention_heads": 8, "vocab_size": 100})");
    v = run(d, "verify " + (d / "m").string());
    CHECK(v.rc == 1);
    CHECK(has(v.err, "hidden_size: "));
    CHECK(has(v.err, "the checkpoint holds [100, 64] but config.json implies [100, 96]"));
}

TEST_CASE("cli: a layer or head count beyond the tensors exits 1 promptly, memory bounded") {
    temp_dir d;
    struct row {
        const char* field;
        const char* value;
        const char* says;
    };
    const row rows[] = {
        {"num_hidden_layers", "1000000", "2 layers (model.layers.0 ... model.layers.1)"},
        {"num_hidden_layers", "100000000", "2 layers (model.layers.0 ... model.layers.1)"},
        {"num_hidden_layers", "9223372036854775808", "2 layers (model.layers.0 ..."},
        {"num_attention_heads", "4611686018427387904", "overflows"},
        {"num_key_value_heads", "1000000000000", "num_key_value_heads 1000000000000"},
    };
    for (const row& x : rows) {
        CAPTURE(std::string(x.field));
        CAPTURE(std::string(x.value));
        const std::string field = x.field;
        if (field == "num_key_value_heads")  // the heads stay a multiple of the KV heads
            write_file(d / "m" / "config.json",
                       set_field(write_model(d, "num_attention_heads", x.value), field, x.value));
        else
            write_model(d, field, x.value, field == "num_attention_heads" ? 1 : 2);
        for (const std::string& cmd :
             {"plan " + (d / "m").string() + " --tp 2",
              "export " + (d / "m").string() + " --tp 2 --out " + (d / "exported").string(),
              "verify " + (d / "m").string()}) {
            CAPTURE(cmd);
            const auto r = run(d, cmd, bounded());
            CHECK(r.rc == 1);
            CHECK(has(r.err, x.field));
            CHECK(has(r.err, x.says));
            CHECK_FALSE(fs::exists(d / "exported"));
        }
        fs::remove_all(d / "m");
    }
}
