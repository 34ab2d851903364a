// load/config_check.hpp: config.json against the tensors, before a schema is expanded from
// it (plan, export), and verify_config (what `safeshard verify` reports).
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>

#include "../checkpoint/test_util.hpp"
#include "model_gen.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/load/config_check.hpp"
#include "safeshard/load/plan.hpp"
#include "safeshard/save/export.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define SAFESHARD_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SAFESHARD_TEST_ASAN 1
#endif
#endif

using namespace safeshard;
using namespace safeshard::test;

namespace {

bool has(const std::string& s, std::string_view what) { return s.find(what) != std::string::npos; }

// A flat JSON object (config_json's) with one field's value replaced (or added).
std::string set_field(const std::string& c, const std::string& field, const std::string& value) {
    const std::string key = "\"" + field + "\":";
    const auto at = c.find(key);
    if (at == std::string::npos) return c.substr(0, c.size() - 1) + "," + key + value + "}";
    const auto end = c.find_first_of(",}", at + key.size());
    return c.substr(0, at + key.size()) + value + c.substr(end);
}
std::string config_with(const model_spec& m, const std::string& field, const std::string& value) {
    return set_field(config_json(m), field, value);
}

// The error `f` throws, run in a child process under a 2 GiB address-space limit (not under
// AddressSanitizer, whose shadow memory needs more) and a generous 10 s alarm: a memory or
// time bomb fails the test instead of the machine. Fails when the child throws nothing,
// throws something else, or dies.
struct child_error {
    errc code = errc::interrupted;
    std::string what;
    long peak_rss_kb = 0;
};
child_error bounded_error(const std::function<void()>& f) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(fds[0]);
#ifndef SAFESHARD_TEST_ASAN
        const rlimit as{2ull << 30, 2ull << 30};
        ::setrlimit(RLIMIT_AS, &as);
#endif
        ::alarm(10);
        std::string out;
        try {
            f();
            out = "none\n";
        } catch (const error& e) {
            out = std::to_string(static_cast<int>(e.code())) + "\n" + e.what();
        } catch (const std::exception& e) {
            out = std::string("other\n") + e.what();
        }
        rusage ru{};
        ::getrusage(RUSAGE_SELF, &ru);
        out = std::to_string(ru.ru_maxrss) + "\n" + out;
        const char* p = out.data();
        std::size_t left = out.size();
        while (left > 0) {
            const ssize_t n = ::write(fds[1], p, left);
            if (n <= 0) break;
            p += n;
            left -= static_cast<std::size_t>(n);
        }
        ::_exit(0);
    }
    ::close(fds[1]);
    std::string got;
    char buf[4096];
    ssize_t n = 0;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0) got.append(buf, static_cast<std::size_t>(n));
    ::close(fds[0]);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE_MESSAGE(WIFEXITED(status), "the child died of signal ", WTERMSIG(status));
    const auto l1 = got.find('\n');
    REQUIRE(l1 != std::string::npos);
    const auto l2 = got.find('\n', l1 + 1);
    REQUIRE(l2 != std::string::npos);
    child_error r;
    r.peak_rss_kb = std::stol(got.substr(0, l1));
    const std::string code = got.substr(l1 + 1, l2 - l1 - 1);
    r.what = got.substr(l2 + 1);
    REQUIRE_MESSAGE(code != "none", "no error thrown");
    REQUIRE_MESSAGE(code != "other", "not a safeshard::error: ", r.what);
    r.code = static_cast<errc>(std::stoi(code));
    return r;
}

// A checkpoint of `m` whose config.json sets `field` to `value`.
struct crafted {
    temp_folder dir;
    crafted(const model_spec& m, const std::string& field, const std::string& value) {
        write_checkpoint(dir.path(), m, make_tensors(m));
        write_text(dir.path() / "config.json", config_with(m, field, value));
    }
};

}  // namespace

TEST_CASE("layer_of: the first all-digit component of a name") {
    const auto a = detail::layer_of("model.layers.12.mlp.experts.3.w");
    REQUIRE(a);
    CHECK(a->container == "model.layers");
    CHECK(a->index == 12);
    const auto b = detail::layer_of("0.weight");
    REQUIRE(b);
    CHECK(b->container.empty());
    CHECK(b->index == 0);
    CHECK_FALSE(detail::layer_of("model.norm.weight"));
    CHECK_FALSE(detail::layer_of("model.layers.1x.w"));
    CHECK_FALSE(detail::layer_of(""));
    CHECK_FALSE(detail::layer_of("model.layers.99999999999999999999.w"));  // beyond 64 bits
}

TEST_CASE("check_config: the layers the checkpoint holds, under the name map's prefix") {
    model_spec m;
    m.layers = 3;
    m.prefix = "language_model.";
    temp_folder dir;
    auto t = make_tensors(m);
    std::mt19937_64 rng(3);
    // MoE experts inside a layer do not count as layers; a second, smaller numbered container
    // does not either.
    t["model.layers.0.mlp.experts.7.w"] = random_tensor({1}, rng);
    t["vision.blocks.0.w"] = random_tensor({1}, rng);
    write_checkpoint(dir.path(), m, t);
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const model_config c = parse_model_config(config_json(m));
    const name_map names{.checkpoint_prefix = "language_model.", .schema_prefix = ""};
    const config_check r = check_config(ckpt, c, names);
    CHECK_MESSAGE(r.ok(), r.summary());
    CHECK(r.layers.container == "language_model.model.layers");
    CHECK(r.layers.count == 3);
    CHECK(r.layers.to_string() ==
          "3 layers (language_model.model.layers.0 ... language_model.model.layers.2)");
    // Names outside the prefix are not this model's layers.
    const name_map other{.checkpoint_prefix = "language_model.vision.", .schema_prefix = ""};
    CHECK(check_config(ckpt, c, other).layers.count == 1);
}

TEST_CASE("plan and export: a layer count beyond the checkpoint's exits promptly, memory bounded") {
    model_spec m;  // 2 layers
    for (const std::string n :
         {"1000000", "100000000", "9223372036854775808", "18446744073709551615"}) {
        CAPTURE(n);
        crafted ck(m, "num_hidden_layers", n);
        auto expect = [&](const child_error& e) {
            CHECK(e.code == errc::invalid_config);
            CHECK(has(e.what, "num_hidden_layers"));
            CHECK(has(e.what, "config.json says " + n));
            CHECK(has(e.what, "2 layers (model.layers.0 ... model.layers.1)"));
            CHECK(e.peak_rss_kb < 512 * 1024);
        };
        expect(bounded_error([&] {
            const checkpoint ckpt = checkpoint::open(ck.dir.path().string());
            (void)load_plan::build(ckpt, {0, 2});
        }));
        expect(bounded_error([&] {
            export_options o;
            o.world = 2;
            (void)export_checkpoint(checkpoint::open(ck.dir.path().string()), ck.dir.path() / "out",
                                    o);
        }));
        CHECK_FALSE(std::filesystem::exists(ck.dir.path() / "out"));
        expect(bounded_error([&] {
            const auto r = verify_config(checkpoint::open(ck.dir.path().string()));
            REQUIRE(r);
            r->throw_if_mismatch();
        }));
    }
}

TEST_CASE("plan: huge sizes and head counts are refused against the tensors, naming the field") {
    model_spec m;  // hidden 64, heads 8, kv 2, head_dim 8, intermediate 128, vocab 100
    struct row {
        const char* field;
        const char* value;
        const char* named;  // in the message
    };
    const row rows[] = {
        {"num_attention_heads", "4611686018427387904", "num_attention_heads"},  // × 8 overflows
        {"num_attention_heads", "1000000000000", "num_attention_heads"},
        {"num_key_value_heads", "8", "num_key_value_heads"},
        {"head_dim", "1152921504606846976", "head_dim"},
        {"intermediate_size", "18446744073709551615", "intermediate_size"},
        {"vocab_size", "9223372036854775808", "vocab_size"},
        {"hidden_size", "1000000000000", "hidden_size"},
    };
    for (const auto& r : rows) {
        CAPTURE(std::string(r.field));
        CAPTURE(std::string(r.value));
        model_spec shaped = m;
        if (std::string(r.field) == "num_attention_heads")  // a multiple of the KV heads
            shaped.kv_heads = 1;
        crafted ck(shaped, r.field, r.value);
        const child_error e = bounded_error([&] {
            (void)load_plan::build(checkpoint::open(ck.dir.path().string()), {1, 2});
        });
        CHECK((e.code == errc::shape_mismatch || e.code == errc::invalid_config));
        CHECK(has(e.what, r.named));
        CHECK(has(e.what, r.value));
        CHECK(e.peak_rss_kb < 512 * 1024);
    }
}

TEST_CASE("check_config: layers beyond num_hidden_layers are a note, left to the schema") {
    model_spec m;
    m.layers = 3;
    crafted ck(m, "num_hidden_layers", "2");
    const checkpoint ckpt = checkpoint::open(ck.dir.path().string());
    const auto cfg = ckpt.load_config();
    REQUIRE(cfg);
    const config_check r = check_config(ckpt, cfg->config());
    CHECK(r.ok());
    REQUIRE(r.notes.size() == 1);
    CHECK(has(r.notes[0], "3 layers"));
    // The schema has 2 layers: layer 2's names are unexpected (strict), reported (lenient).
    CHECK(code_of([&] { (void)load_plan::build(ckpt, {0, 1}); }) == errc::unexpected_tensor);
    const load_plan p = load_plan::build(ckpt, {0, 1}, {.strict = false});
    CHECK(has(p.unexpected().front(), "model.layers.2."));
}

TEST_CASE("verify_config: what the plan refuses, named; the fields it could not check, said") {
    model_spec m;  // llama, hidden 64, vocab 100, 2 layers
    SUBCASE("agreeing") {
        temp_folder dir;
        write_checkpoint(dir.path(), m, make_tensors(m));
        const checkpoint ckpt = checkpoint::open(dir.path().string());
        const auto r = verify_config(ckpt);
        REQUIRE(r);
        CHECK_MESSAGE(r->ok(), r->summary());
        CHECK(r->architecture_checked);
        CHECK(r->model_type == "llama");
        CHECK(r->notes.empty());
        CHECK_NOTHROW((void)load_plan::build(ckpt, {0, 2}));
    }
    struct row {
        const char* field;
        const char* value;
        const char* says;  // in the summary
    };
    for (const row& x :
         {row{"hidden_size", "48", "hidden_size: "}, row{"vocab_size", "99", "vocab_size: "},
          row{"num_hidden_layers", "1", "num_hidden_layers: config.json says 1"},
          row{"num_hidden_layers", "3", "num_hidden_layers: config.json says 3"},
          row{"num_key_value_heads", "4", "num_key_value_heads × head_dim: "},
          row{"model_type", "\"qwen2\"", "self_attn.q_proj.bias"}}) {
        CAPTURE(std::string(x.field));
        CAPTURE(std::string(x.value));
        crafted ck(m, x.field, x.value);
        const checkpoint ckpt = checkpoint::open(ck.dir.path().string());
        const auto r = verify_config(ckpt);
        REQUIRE(r);
        REQUIRE_FALSE(r->ok());
        CHECK_MESSAGE(has(r->summary(), x.says), r->summary());
        // The plan refuses the same checkpoint, and verify's error is an input error.
        CHECK_THROWS_AS((void)load_plan::build(ckpt, {0, 1}), error);
        CHECK(code_of([&] { r->throw_if_mismatch(); }) != errc::invalid_argument);
    }
    SUBCASE("1 layer of 2, lenient: a note, as a lenient plan reports them") {
        crafted ck(m, "num_hidden_layers", "1");
        const auto r = verify_config(checkpoint::open(ck.dir.path().string()), {.strict = false});
        REQUIRE(r);
        CHECK(r->ok());
        REQUIRE_FALSE(r->notes.empty());
        CHECK(has(r->notes.back(), "num_hidden_layers: config.json says 1"));
    }
    SUBCASE("an unregistered model_type: the generic fields only, never refused for its type") {
        crafted ck(m, "model_type", "\"falcon_mamba\"");
        const auto r = verify_config(checkpoint::open(ck.dir.path().string()));
        REQUIRE(r);
        CHECK(r->ok());
        CHECK_FALSE(r->architecture_checked);
        REQUIRE(r->notes.size() == 1);
        CHECK(has(r->notes[0], "'falcon_mamba' is not registered"));
        // Its generic fields are still compared.
        const std::string other = config_with(m, "model_type", "\"falcon_mamba\"");
        write_text(ck.dir.path() / "config.json", set_field(other, "hidden_size", "96"));
        const auto bad = verify_config(checkpoint::open(ck.dir.path().string()));
        REQUIRE(bad);
        CHECK_MESSAGE(has(bad->summary(), "hidden_size: "), bad->summary());
        CHECK(has(bad->summary(), "[100, 64] but config.json implies [100, 96]"));
        // Layers beyond num_hidden_layers (DeepSeek's multi-token prediction layer): a note.
        write_text(ck.dir.path() / "config.json", set_field(other, "num_hidden_layers", "1"));
        const auto mtp = verify_config(checkpoint::open(ck.dir.path().string()));
        REQUIRE(mtp);
        CHECK(mtp->ok());
        CHECK(mtp->notes.size() == 2);
    }
    SUBCASE("no config.json: nothing to check") {
        temp_folder dir;
        write_checkpoint(dir.path(), m, make_tensors(m));
        std::filesystem::remove(dir.path() / "config.json");
        CHECK_FALSE(verify_config(checkpoint::open(dir.path().string())));
    }
    SUBCASE("a rank of an export: config.json describes the whole model, not compared") {
        temp_folder dir;
        std::filesystem::create_directories(dir.path() / "in");
        write_checkpoint(dir.path() / "in", m, make_tensors(m));
        export_options o;
        o.world = 2;
        (void)export_checkpoint(checkpoint::open((dir.path() / "in").string()), dir.path() / "ex",
                                o);
        const auto r =
            verify_config(checkpoint::open((dir.path() / "ex" / export_rank_folder(1)).string()));
        REQUIRE(r);
        CHECK(r->ok());
        REQUIRE(r->notes.size() == 1);
        CHECK(has(r->notes[0], "a rank of an export"));
    }
}
