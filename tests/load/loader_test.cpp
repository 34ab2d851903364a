// load/: plan, host_engine, tensor_factory and the facade against generated checkpoints,
// every rank compared with slices computed in model_gen.hpp from the full tensors.
#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "../io/file_change.hpp"
#include "../support/expect_error.hpp"
#include "model_gen.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"
#include "safeshard/load/tensor_factory.hpp"

using namespace safeshard;
using safeshard::test::expect_error;
using namespace safeshard::test;

namespace {

std::vector<std::uint16_t> codes_of(const host_tensor& t) {
    std::vector<std::uint16_t> v(t.size_bytes() / 2);
    std::memcpy(v.data(), t.data(), t.size_bytes());
    return v;
}

// Loads every rank of `w` and compares each parameter with the expected cut.
void check_all_ranks(const model_spec& m, bool interleaved, std::uint32_t w,
                     host_engine_options eo = {}) {
    temp_folder dir;
    const auto src = make_tensors(m);
    write_checkpoint(dir.path(), m, src);
    for (std::uint32_t r = 0; r < w; ++r) {
        CAPTURE(m.type);
        CAPTURE(interleaved);
        CAPTURE(w);
        CAPTURE(r);
        load_options o{.rank = r, .world = w};
        o.plan.schema.kv = interleaved ? kv_interleaved : kv_contiguous;
        o.engine = eo;
        auto model = load<host_tensor>(dir.path().string(), o);
        std::size_t compared = 0;
        for (const auto& name : model.names()) {
            CAPTURE(name);
            const std::string source = (m.tied && name == "lm_head.weight")
                                           ? std::string("model.embed_tokens.weight")
                                           : name;
            const auto it = src.find(source);
            REQUIRE(it != src.end());
            const expected_cut cut = expected_for(name, m, it->second, interleaved, w, r);
            const host_tensor& t = model.at(name);
            CHECK(t.dtype() == dtype::bf16);
            REQUIRE(t.size_bytes() == cut.rows.size() * cut.cols.size() * 2);
            CHECK(codes_of(t) == take(it->second, cut.rows, cut.cols));
            ++compared;
        }
        CHECK(compared == src.size() + (m.tied ? 1 : 0));
        // Only the rank's own bytes were read, each once.
        std::uint64_t padding = 0;
        if (model.contains("model.embed_tokens.weight")) {
            const auto e = expected_for("model.embed_tokens.weight", m,
                                        src.at("model.embed_tokens.weight"), interleaved, w, r);
            for (const auto& row : e.rows) padding += row ? 0 : m.hidden * 2 * (m.tied ? 1 : 2);
        }
        CHECK(model.report.bytes_read + padding == model.report.rank_bytes);
        CHECK(model.report.bytes_written == model.report.rank_bytes);
    }
}

}  // namespace

TEST_CASE("llama, GQA contiguous: every rank of world 1, 2, 4, 8 is bit-exact") {
    model_spec m;
    for (std::uint32_t w : {1u, 2u, 4u, 8u}) check_all_ranks(m, false, w);
}

TEST_CASE("llama, GQA interleaved (world > KV): every rank bit-exact") {
    model_spec m;
    for (std::uint32_t w : {1u, 2u, 4u, 8u}) check_all_ranks(m, true, w);
}

TEST_CASE("qwen2 with q/k/v biases, world 1, 2, 4, 8") {
    model_spec m;
    m.type = "qwen2";
    m.bias = true;
    for (std::uint32_t w : {1u, 2u, 4u, 8u}) check_all_ranks(m, false, w);
}

TEST_CASE("phi3 fused qkv_proj and gate_up_proj, world 1, 2, 4, 8") {
    model_spec m;
    m.type = "phi3";
    m.fused = true;
    for (std::uint32_t w : {1u, 2u, 4u, 8u}) check_all_ranks(m, false, w);
    check_all_ranks(m, true, 4);
}

TEST_CASE("gemma: lm_head tied to the embedding aliases one tensor, read once") {
    model_spec m;
    m.type = "gemma";
    m.tied = true;
    for (std::uint32_t w : {1u, 2u, 8u}) check_all_ranks(m, false, w);
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    auto model = load(dir.path().string(), {.rank = 1, .world = 2});
    CHECK(&model.at("lm_head.weight") == &model.at("model.embed_tokens.weight"));
    CHECK(model.tensors().size() + 1 == model.names().size());
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const load_plan plan = load_plan::build(ckpt, {1, 2});
    const auto* head = plan.find("lm_head.weight");
    REQUIRE(head != nullptr);
    CHECK(head->tied());
    std::uint64_t sum = 0;
    for (const auto& d : plan.destinations())
        if (!d.tied()) sum += d.bytes;
    REQUIRE(plan.bytes_per_device().size() == 1);
    CHECK(plan.bytes_per_device()[0].bytes == sum);
    CHECK(plan.bytes_per_device()[0].device.kind == device_kind::host);
}

TEST_CASE("read modes and thread counts give the same bytes") {
    model_spec m;
    host_engine_options one{.threads = 1};
    host_engine_options many{.threads = 3, .chunk_bytes = 4096, .staging_bytes = 4096};
    host_engine_options rows{.threads = 2, .strided = strided_read::whole_rows};
    host_engine_options mapped{.threads = 2, .mode = read_mode::mmap};
    host_engine_options batched{.threads = 2, .strided = strided_read::batched};
    check_all_ranks(m, false, 8, batched);
    check_all_ranks(m, true, 4,
                    {.threads = 1, .strided = strided_read::batched, .chunk_bytes = 4096});
    check_all_ranks(m, false, 4, one);
    check_all_ranks(m, false, 8, many);
    check_all_ranks(m, true, 8, mapped);
    // whole rows read the other ranks' columns too: counted, so only the values are checked
    temp_folder dir;
    const auto src = make_tensors(m);
    write_checkpoint(dir.path(), m, src);
    load_options o{.rank = 3, .world = 8};
    o.engine = rows;
    auto model = load(dir.path().string(), o);
    const auto& down = src.at("model.layers.1.mlp.down_proj.weight");
    const auto cut = expected_for("model.layers.1.mlp.down_proj.weight", m, down, false, 8, 3);
    CHECK(codes_of(model.at("model.layers.1.mlp.down_proj.weight")) ==
          take(down, cut.rows, cut.cols));
    CHECK(model.report.bytes_read > model.report.rank_bytes);
}

TEST_CASE("a target dtype converts while copying (BF16 -> F32), also per parameter") {
    model_spec m;
    temp_folder dir;
    const auto src = make_tensors(m);
    write_checkpoint(dir.path(), m, src);
    for (auto eo : {host_engine_options{.threads = 1},
                    host_engine_options{.threads = 2, .chunk_bytes = 4096, .staging_bytes = 4096},
                    host_engine_options{.threads = 2, .strided = strided_read::whole_rows},
                    host_engine_options{.threads = 2, .mode = read_mode::mmap},
                    host_engine_options{.threads = 2, .strided = strided_read::batched}}) {
        load_options o{.rank = 1, .world = 4};
        o.plan.dtype = dtype_policy::fixed(dtype::f32);
        o.plan.dtype_per_parameter = {{"model.norm.weight", dtype::bf16}};
        o.engine = eo;
        auto model = load(dir.path().string(), o);
        for (const auto& name : model.names()) {
            CAPTURE(name);
            const auto& s = src.at(name);
            const auto cut = expected_for(name, m, s, false, 4, 1);
            const auto want = take(s, cut.rows, cut.cols);
            const host_tensor& t = model.at(name);
            if (name == "model.norm.weight") {
                CHECK(t.dtype() == dtype::bf16);
                CHECK(codes_of(t) == want);
                continue;
            }
            CHECK(t.dtype() == dtype::f32);
            REQUIRE(t.size_bytes() == want.size() * 4);
            std::vector<std::uint32_t> got(want.size());
            std::memcpy(got.data(), t.data(), t.size_bytes());
            bool same = true;
            for (std::size_t i = 0; i < want.size(); ++i)
                same = same && got[i] == std::uint32_t{want[i]} << 16;
            CHECK(same);
        }
        CHECK(model.report.bytes_written == model.report.rank_bytes);
    }
}

TEST_CASE(
    "fixed and by-device policies convert floats only: integers and 8-bit floats keep theirs") {
    temp_folder dir;
    std::vector<std::uint16_t> w(16, 0x3f80);  // BF16 1.0
    std::vector<std::int64_t> ids{0, 1, 2, 3};
    std::vector<std::uint8_t> q(16, 0x38);
    const tensor_data data[] = {
        {"w", dtype::bf16, shape{4, 4}, std::as_bytes(std::span(w))},
        {"position_ids", dtype::i64, shape{4}, std::as_bytes(std::span(ids))},
        {"q", dtype::f8_e4m3, shape{4, 4}, std::as_bytes(std::span(q))}};
    save_file(dir.path() / "model.safetensors", data);
    for (const auto policy : {dtype_policy::fixed(dtype::f32), dtype_policy::by_device()}) {
        load_options o;
        o.plan.dtype = policy;
        auto model = load(dir.path().string(), schema::replicate_all(), o);
        CHECK(model.at("w").dtype() == dtype::f32);
        const host_tensor& p = model.at("position_ids");
        REQUIRE(p.dtype() == dtype::i64);
        CHECK(std::memcmp(p.data(), ids.data(), 32) == 0);
        CHECK(model.at("q").dtype() == dtype::f8_e4m3);
    }
    // Named explicitly, an integer tensor is not kept quietly: there is no conversion, refused.
    load_options o;
    o.plan.dtype_per_parameter = {{"position_ids", dtype::bf16}};
    CHECK_THROWS_AS((void)load(dir.path().string(), schema::replicate_all(), o), error);
}

TEST_CASE("a tensor stored in two shards (a lenient open): one destination, the indexed copy") {
    temp_folder dir;
    const std::vector<std::uint16_t> one(2, 0x3f80), two(2, 0x4000);
    const tensor_data s1[] = {{"a", dtype::bf16, shape{2}, std::as_bytes(std::span(one))},
                              {"extra.x", dtype::bf16, shape{2}, std::as_bytes(std::span(one))}};
    const tensor_data s2[] = {{"b", dtype::bf16, shape{2}, std::as_bytes(std::span(two))},
                              {"extra.x", dtype::bf16, shape{2}, std::as_bytes(std::span(two))}};
    save_file(dir.path() / "model-00001-of-00002.safetensors", s1);
    save_file(dir.path() / "model-00002-of-00002.safetensors", s2);
    write_text(dir.path() / "model.safetensors.index.json",
               R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
               R"("b":"model-00002-of-00002.safetensors",)"
               R"("extra.x":"model-00002-of-00002.safetensors"}})");
    CHECK_THROWS_AS((void)checkpoint::open(dir.path().string()), error);  // strict: refused
    const checkpoint ckpt = checkpoint::open(dir.path().string(), {.strict = false});
    const load_plan plan = load_plan::build(ckpt, schema::replicate_all(), {0, 1});
    CHECK(plan.destinations().size() == 3);
    host_engine engine({.threads = 1});
    const auto model = load_tensors<host_tensor>(plan, engine);
    CHECK(codes_of(model.at("extra.x")) == two);  // the copy the index names
    bool said = false;
    for (const auto& i : plan.ignored())
        said = said || (i.name == "extra.x" && i.note.find("stored twice") != std::string::npos);
    CHECK(said);
}

TEST_CASE("the host engine refuses a plan for a device; submit errors name the tensor") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    plan_options po;
    po.device = {device_kind::cuda, 1};
    const load_plan plan = load_plan::build(ckpt, {0, 2}, po);
    host_engine engine({.threads = 1});
    CHECK(engine.target_device() == device{});
    CHECK_THROWS_WITH_AS((void)load_tensors<host_tensor>(plan, engine),
                         doctest::Contains("planned for a cuda device (cuda:1); the host engine "
                                           "fills host memory only"),
                         error);
    // load<host_tensor>() with the options naming a device: the same check
    load_options o{.rank = 0, .world = 2};
    o.plan.device = {device_kind::cuda, 0};
    CHECK_THROWS_WITH_AS((void)load<host_tensor>(dir.path().string(), o),
                         doctest::Contains("host memory only"), error);

    std::vector<std::byte> out(16);
    std::byte* const dests[] = {out.data()};
    const std::uint64_t sizes[] = {16};
    const std::string names[] = {"model.norm.weight"};
    engine.bind(copy_targets{{}, dests, sizes});
    engine.set_names(names);
    copy_op zero;
    zero.kind = copy_kind::zero;
    zero.box = byte_box{.dst_offset = 8, .dst_row_bytes = 16, .dst_pitch = 16, .rows = 1};
    try {
        engine.submit(std::span(&zero, 1));
        FAIL("an op beyond its destination was queued");
    } catch (const error& e) {
        CHECK(e.code() == errc::invalid_argument);
        CHECK(e.tensor() == "model.norm.weight");
        CHECK(std::string(e.message()).find("beyond its destination") != std::string::npos);
    }
}

TEST_CASE("an unsupported conversion is refused while planning") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    load_options o;
    o.plan.dtype = dtype_policy::fixed(dtype::i32);
    {
        const auto e =
            expect_error(errc::unsupported_conversion, [&] { (void)load(dir.path().string(), o); });
        CHECK(std::string(e.what()).find("BF16") != std::string::npos);
    }
}

TEST_CASE("pipeline stage (layer range) and name maps") {
    model_spec m;
    m.layers = 3;
    temp_folder dir;
    const auto src = make_tensors(m);
    write_checkpoint(dir.path(), m, src);
    load_options o{.rank = 0, .world = 2};
    o.plan.schema.layer_begin = 1;
    o.plan.schema.layer_end = 2;
    o.plan.schema.embeddings = false;
    auto model = load(dir.path().string(), o);
    CHECK(model.contains("model.layers.1.mlp.down_proj.weight"));
    CHECK_FALSE(model.contains("model.layers.0.mlp.down_proj.weight"));
    CHECK_FALSE(model.contains("model.layers.2.mlp.down_proj.weight"));
    CHECK_FALSE(model.contains("model.embed_tokens.weight"));
    CHECK(model.contains("lm_head.weight"));
    bool noted = false;
    for (const auto& i : model.report.ignored)
        noted = noted || (i.name == "model.layers.0.mlp.down_proj.weight" &&
                          i.note == "outside this pipeline stage");
    CHECK(noted);
    const auto& s = src.at("model.layers.1.self_attn.o_proj.weight");
    const auto cut = expected_for("model.layers.1.self_attn.o_proj.weight", m, s, false, 2, 0);
    CHECK(codes_of(model.at("model.layers.1.self_attn.o_proj.weight")) ==
          take(s, cut.rows, cut.cols));

    // A tied model that also stores lm_head.weight (as some exporters do): a stage without the
    // embedding reads the embedding for lm_head and leaves the stored copy, in strict mode too.
    model_spec tm;
    tm.layers = 3;
    tm.tied = true;
    temp_folder tdir;
    auto tsrc = make_tensors(tm);
    tsrc["lm_head.weight"] = tsrc.at("model.embed_tokens.weight");
    write_checkpoint(tdir.path(), tm, tsrc);
    auto tmodel = load(tdir.path().string(), o);
    CHECK_FALSE(tmodel.contains("model.embed_tokens.weight"));
    const auto& emb = tsrc.at("model.embed_tokens.weight");
    const auto ecut = expected_for("lm_head.weight", tm, emb, false, 2, 0);
    CHECK(codes_of(tmodel.at("lm_head.weight")) == take(emb, ecut.rows, ecut.cols));
    bool copy_ignored = false;
    for (const auto& i : tmodel.report.ignored)
        copy_ignored = copy_ignored || (i.name == "lm_head.weight" &&
                                        i.note.find("stored copy") != std::string::npos);
    CHECK(copy_ignored);

    // A multimodal-style prefix on the checkpoint's names: found by the names (no name starts
    // with "model.", the text model's start with "language_model.model."), or given by a
    // name map.
    model_spec pm;
    pm.prefix = "language_model.";
    temp_folder pdir;
    const auto psrc = make_tensors(pm);
    write_checkpoint(pdir.path(), pm, psrc);
    load_options po{.rank = 1, .world = 2};
    CHECK(load(pdir.path().string(), po).contains("model.layers.0.self_attn.q_proj.weight"));
    po.plan.schema.names.checkpoint_prefix = "language_model.";
    auto pmodel = load(pdir.path().string(), po);
    const auto& q = psrc.at("model.layers.0.self_attn.q_proj.weight");
    const auto qcut = expected_for("model.layers.0.self_attn.q_proj.weight", pm, q, false, 2, 1);
    CHECK(codes_of(pmodel.at("model.layers.0.self_attn.q_proj.weight")) ==
          take(q, qcut.rows, qcut.cols));
}

TEST_CASE("quantized checkpoints are refused unless raw tensors are asked for") {
    for (const char* scale :
         {"model.layers.0.mlp.down_proj.weight_scale",
          "model.layers.0.mlp.down_proj.weight_scale_inv", "model.layers.0.mlp.down_proj.SCB"}) {
        CAPTURE(scale);
        model_spec m;
        auto t = make_tensors(m);
        std::mt19937_64 rng(7);
        t[scale] = random_tensor({1}, rng);
        temp_folder dir;
        write_checkpoint(dir.path(), m, t);
        {
            const auto e =
                expect_error(errc::quantized_checkpoint, [&] { (void)load(dir.path().string()); });
            CHECK(std::string(e.what()).find(scale) != std::string::npos);
        }
        load_options o;
        o.plan.allow_quantized = true;
        auto model = load(dir.path().string(), o);
        CHECK(model.contains("model.layers.0.mlp.down_proj.weight"));
        CHECK_FALSE(model.contains(scale));
    }
}

TEST_CASE("missing and unexpected names, shape disagreements: errors before any read") {
    model_spec m;
    SUBCASE("missing") {
        auto t = make_tensors(m);
        t.erase("model.layers.1.mlp.up_proj.weight");
        t.erase("model.norm.weight");
        temp_folder dir;
        write_checkpoint(dir.path(), m, t);
        {
            const auto e =
                expect_error(errc::missing_tensor, [&] { (void)load(dir.path().string()); });
            const std::string w = e.what();
            CHECK(w.find("model.layers.1.mlp.up_proj.weight") != std::string::npos);
            CHECK(w.find("model.norm.weight") != std::string::npos);
        }
    }
    SUBCASE("unexpected: strict fails, lenient reports") {
        auto t = make_tensors(m);
        std::mt19937_64 rng(3);
        t["model.extra.weight"] = random_tensor({4}, rng);
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = random_tensor({4}, rng);
        temp_folder dir;
        write_checkpoint(dir.path(), m, t);
        {
            const auto e =
                expect_error(errc::unexpected_tensor, [&] { (void)load(dir.path().string()); });
            CHECK(std::string(e.what()).find("model.extra.weight") != std::string::npos);
            CHECK(std::string(e.what()).find("inv_freq") == std::string::npos);
        }
        load_options o;
        o.plan.strict = false;
        auto model = load(dir.path().string(), o);
        REQUIRE(model.report.unexpected.size() == 1);
        CHECK(model.report.unexpected[0] == "model.extra.weight");
        REQUIRE(model.report.ignored.size() == 1);
        CHECK(model.report.ignored[0].name == "model.layers.0.self_attn.rotary_emb.inv_freq");
    }
    SUBCASE("a source shape that disagrees with config.json") {
        auto t = make_tensors(m);
        std::mt19937_64 rng(5);
        t["model.layers.0.mlp.gate_proj.weight"] = random_tensor({120, m.hidden}, rng);
        temp_folder dir;
        write_checkpoint(dir.path(), m, t);
        {
            const auto e = expect_error(errc::shape_mismatch, [&] {
                (void)load(dir.path().string(), {.rank = 0, .world = 2});
            });
            CHECK(std::string(e.what()).find("[120, 64]") != std::string::npos);
            CHECK(std::string(e.what()).find("[128, 64]") != std::string::npos);
        }
    }
    SUBCASE("a source shape that disagrees with the heads") {
        auto t = make_tensors(m);
        std::mt19937_64 rng(5);
        t["model.layers.0.self_attn.k_proj.weight"] = random_tensor({24, m.hidden}, rng);
        temp_folder dir;
        write_checkpoint(dir.path(), m, t);
        {
            const auto e = expect_error(errc::shape_mismatch, [&] {
                (void)load(dir.path().string(), {.rank = 0, .world = 2});
            });
            CHECK(std::string(e.what()).find("k_proj") != std::string::npos);
            CHECK(std::string(e.what()).find("[24, 64]") != std::string::npos);
            CHECK(std::string(e.what()).find("num_key_value_heads 2") != std::string::npos);
        }
    }
    SUBCASE("rank out of range") {
        temp_folder dir;
        write_checkpoint(dir.path(), m, make_tensors(m));
        CHECK_THROWS_AS((void)load(dir.path().string(), {.rank = 2, .world = 2}), error);
    }
}

TEST_CASE("a plan reads headers only and allocates no tensor") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const load_plan plan = load_plan::build(ckpt, {1, 4});
    // ops are in file order
    for (std::size_t i = 1; i < plan.ops().size(); ++i) {
        const auto& a = plan.ops()[i - 1];
        const auto& b = plan.ops()[i];
        CHECK((a.file < b.file || (a.file == b.file && a.file_begin() <= b.file_begin())));
    }
    const auto* q = plan.find("model.layers.0.self_attn.q_proj.weight");
    REQUIRE(q != nullptr);
    CHECK(q->local == shape{16, 64});
    CHECK(q->global == shape{64, 64});
    CHECK(q->bytes == 16 * 64 * 2);
    const auto* e = plan.find("model.embed_tokens.weight");
    REQUIRE(e != nullptr);
    CHECK(e->local == shape{32, 64});  // 100 padded to 128, over 4
    CHECK(e->global == shape{100, 64});
}

// ---- user init ----

TEST_CASE("parameters with an init are initialised, not read") {
    model_spec m;
    temp_folder dir;
    auto t = make_tensors(m);
    write_checkpoint(dir.path(), m, t);
    schema s = schema::replicate_all();
    parameter_meta p;
    p.name = "adapter.scale";
    p.layout = make_split(0);
    p.init = init_ones();
    s.add(p);
    load_options o{.rank = 1, .world = 2};
    o.plan.created_shapes = {{"adapter.scale", shape{8}}};
    o.plan.dtype_per_parameter = {{"adapter.*", dtype::bf16}};
    auto model = load(dir.path().string(), s, o);
    const host_tensor& a = model.at("adapter.scale");
    CHECK(a.shape() == shape{4});
    CHECK(codes_of(a) == std::vector<std::uint16_t>(4, 0x3f80));
    REQUIRE(model.report.initialised.size() == 1);
    // replicate_all: every checkpoint tensor whole
    const auto& down = t.at("model.layers.0.mlp.down_proj.weight");
    CHECK(codes_of(model.at("model.layers.0.mlp.down_proj.weight")) == down.codes);
    o.plan.created_shapes.clear();
    CHECK_THROWS_AS((void)load(dir.path().string(), s, o), error);  // no shape
}

TEST_CASE("a parameter without sources, tie or init: an error naming it, before any read") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    schema s = schema::replicate_all();
    parameter_meta p;
    p.name = "adapter.weight";
    p.layout = make_split(1);
    s.add(p);  // no sources
    {
        const auto e = expect_error(errc::invalid_argument, [&] {
            (void)load(dir.path().string(), s, load_options{.rank = 0, .world = 2});
        });
        CHECK(std::string(e.what()).find("adapter.weight") != std::string::npos);
    }
}

TEST_CASE("progress reaches the total") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    std::uint64_t last = 0, total = 0, calls = 0;
    load_options o{.rank = 0, .world = 2};
    o.engine.threads = 2;
    o.progress = [&](std::uint64_t d, std::uint64_t t) {
        CHECK(d >= last);
        last = d;
        total = t;
        ++calls;
    };
    auto model = load(dir.path().string(), o);
    CHECK(calls > 0);
    CHECK(last == total);
    CHECK(total == model.report.rank_bytes);
}

// ---- failure paths: nothing leaks ----

namespace {
std::atomic<int> live_tensors{0};
std::atomic<int> fail_at{-1};   // the allocation that throws
std::atomic<int> short_at{-1};  // the allocation that returns one byte too few
std::atomic<int> allocations{0};

struct counted_tensor {
    std::vector<std::byte> bytes;
    bool owns = false;
    counted_tensor() = default;
    explicit counted_tensor(std::size_t n) : bytes(n), owns(true) { ++live_tensors; }
    counted_tensor(counted_tensor&& o) noexcept : bytes(std::move(o.bytes)), owns(o.owns) {
        o.owns = false;
    }
    counted_tensor& operator=(counted_tensor&&) = delete;
    ~counted_tensor() {
        if (owns) --live_tensors;
    }
};
}  // namespace

template <>
struct safeshard::tensor_factory<counted_tensor> {
    static counted_tensor allocate(const tensor_request& r) {
        const int i = allocations++;
        if (i == fail_at) throw std::runtime_error("device out of memory");
        return counted_tensor(static_cast<std::size_t>(r.bytes) - (i == short_at ? 1 : 0));
    }
    static std::byte* data(counted_tensor& t) { return t.bytes.data(); }
    static std::size_t size_bytes(const counted_tensor& t) { return t.bytes.size(); }
};

static_assert(loadable_tensor<counted_tensor>);
static_assert(loadable_tensor<host_tensor>);
static_assert(!loadable_tensor<int>);

TEST_CASE(
    "a factory that throws or returns the wrong size at any position: a clear error, no leak") {
    model_spec m;
    m.layers = 1;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const int n = [&] {
        allocations = 0;
        auto model = load<counted_tensor>(dir.path().string(), {.rank = 0, .world = 2});
        return allocations.load();
    }();
    CHECK(live_tensors == 0);
    REQUIRE(n > 5);
    for (int k = 0; k < n; ++k) {
        CAPTURE(k);
        allocations = 0;
        fail_at = k;
        {
            const auto e = expect_error(errc::tensor_factory_failed, [&] {
                (void)load<counted_tensor>(dir.path().string(), {.rank = 0, .world = 2});
            });
            CHECK(std::string(e.what()).find("device out of memory") != std::string::npos);
            CHECK_FALSE(e.tensor().empty());
        }
        CHECK(live_tensors == 0);
        fail_at = -1;
        allocations = 0;
        short_at = k;
        {
            const auto e = expect_error(errc::tensor_factory_failed, [&] {
                (void)load<counted_tensor>(dir.path().string(), {.rank = 0, .world = 2});
            });
            CHECK(std::string(e.what()).find("bytes for") != std::string::npos);
        }
        short_at = -1;
        CHECK(live_tensors == 0);
    }
}

TEST_CASE("a shard truncated after planning: an I/O error at load, no leak") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const load_plan plan = load_plan::build(ckpt, {0, 2});
    const auto f = dir.path() / "model-00002-of-00003.safetensors";
    std::filesystem::resize_file(f, std::filesystem::file_size(f) / 2);
    for (unsigned threads : {1u, 2u}) {
        host_engine engine({.threads = threads});
        {
            const auto e = expect_error(errc::io_error,
                                        [&] { (void)load_tensors<counted_tensor>(plan, engine); });
            CHECK(std::string(e.what()).find("model-00002-of-00003") != std::string::npos);
        }
        CHECK(live_tensors == 0);
    }
}

TEST_CASE("a shard replaced by rename after planning: an I/O error, not the new file's bytes") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const load_plan plan = load_plan::build(ckpt, {0, 2});
    REQUIRE(plan.versions().size() == plan.files().size());
    // What a download or an atomic save does: a new file renamed over the old name (here with
    // the same bytes, so only its identity tells it apart).
    const auto f = dir.path() / "model-00002-of-00003.safetensors";
    std::filesystem::copy_file(f, dir.path() / "new.tmp");
    std::filesystem::rename(dir.path() / "new.tmp", f);
    for (const auto& eo : {host_engine_options{.threads = 2},
                           host_engine_options{.threads = 1, .mode = read_mode::direct}}) {
        host_engine engine(eo);
        {
            const auto e = expect_error(errc::io_error,
                                        [&] { (void)load_tensors<counted_tensor>(plan, engine); });
            CHECK(std::string(e.what()).find("replaced") != std::string::npos);
            CHECK(e.file().find("model-00002-of-00003") != std::string::npos);
        }
        CHECK(live_tensors == 0);
    }
    // Opened again, the checkpoint is the new file: the load goes through.
    const checkpoint again = checkpoint::open(dir.path().string());
    host_engine engine({.threads = 2});
    CHECK(load_tensors<counted_tensor>(load_plan::build(again, {0, 2}), engine).size() > 0);
}

TEST_CASE("the engine refuses an op outside its destination") {
    std::vector<std::byte> dst(16);
    std::byte* addr = dst.data();
    std::uint64_t size = 16;
    host_engine e;
    e.bind(copy_targets{{}, std::span<std::byte* const>(&addr, 1), std::span(&size, 1)});
    copy_op op;
    op.kind = copy_kind::zero;
    op.box.rows = 2;
    op.box.dst_row_bytes = 8;
    op.box.dst_pitch = 12;
    CHECK_THROWS_AS(e.submit(std::span(&op, 1)), error);
    op.box.dst_pitch = 8;
    dst.assign(16, std::byte{1});
    e.submit(std::span(&op, 1));
    e.wait();
    CHECK(dst == std::vector<std::byte>(16, std::byte{0}));
    CHECK(e.stats().bytes_written == 16);
    op.kind = copy_kind::copy;
    op.file = 0;
    CHECK_THROWS_AS(e.submit(std::span(&op, 1)), error);  // no such file
}

TEST_CASE("a shard rewritten in place (same size) while it is loaded: changed while being read") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const auto f = dir.path() / "model-00002-of-00003.safetensors";
    const checkpoint before = checkpoint::open(dir.path().string());
    const load_plan old_plan = load_plan::build(before, {0, 2});
    for (unsigned threads : {1u, 2u}) {
        CAPTURE(threads);
        const checkpoint ckpt = checkpoint::open(dir.path().string());
        const load_plan plan = load_plan::build(ckpt, {0, 2});
        const std::uint64_t data = ckpt.files()[1].view.data_offset();
        wait_for_later_ctime(f);
        // Another writer puts other bytes into the tensors just as the first one is read.
        rewrite_before_first_read rewrite(f, data, flipped_bytes(f, data, 256));
        const detail::scoped_syscall_hooks scope(rewrite);
        host_engine engine({.threads = threads});
        {
            const auto e = expect_error([&] { (void)load_tensors<counted_tensor>(plan, engine); });
            CHECK(rewrite.done.load());
            CHECK(e.code() == errc::io_error);
            CHECK(e.file() == f.string());
            CHECK(std::string(e.what()).find("changed while being read: it was modified") !=
                  std::string::npos);
        }
        CHECK(live_tensors == 0);
    }
    // Nobody writing now, but the shard is not the version the first plan's headers were read
    // from: that plan is refused before a byte is copied; the checkpoint opened again loads.
    host_engine engine({.threads = 2});
    {
        const auto e = expect_error(errc::io_error,
                                    [&] { (void)load_tensors<counted_tensor>(old_plan, engine); });
        CHECK(e.file() == f.string());
        CHECK(std::string(e.what()).find("since the checkpoint was opened") != std::string::npos);
    }
    CHECK(live_tensors == 0);
    const checkpoint again = checkpoint::open(dir.path().string());
    CHECK(load_tensors<counted_tensor>(load_plan::build(again, {0, 2}), engine).size() > 0);
}
