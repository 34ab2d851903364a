// save/export.hpp and save/merge.hpp: original -> per-rank export -> merge is bit-exact for
// every built-in architecture, world and KV convention; rank folders load back as their rank;
// tampered exports fail with invalid_export naming what is wrong.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../checkpoint/test_util.hpp"
#include "../io/file_change.hpp"
#include "../load/model_gen.hpp"
#include "../support/expect_error.hpp"
#include "export_support.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/export_metadata_reader.hpp"
#include "safeshard/format/export_metadata_writer.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/save/export.hpp"
#include "safeshard/save/merge.hpp"

using namespace safeshard;
using safeshard::test::code_of;
using safeshard::test::expect_error;
using safeshard::test::model_spec;
using safeshard::test::temp_folder;
using namespace safeshard::test::exports;

namespace fs = std::filesystem;

TEST_SUITE("export") {
    TEST_CASE("round trip: export for world 1, 2, 4, 8 then merge is bit-exact, every arch") {
        struct arch {
            const char* type;
            bool bias, fused, tied;
        };
        for (const arch a : {arch{"llama", false, false, false}, arch{"qwen2", true, false, false},
                             arch{"phi3", false, true, false}, arch{"gemma", false, false, true}}) {
            temp_folder dir;
            model_spec m;
            m.type = a.type;
            m.bias = a.bias;
            m.fused = a.fused;
            m.tied = a.tied;
            make_model(dir.path() / "in", m, true);
            const auto in = checkpoint::open((dir.path() / "in").string());
            for (const kv_convention kv : {kv_contiguous, kv_interleaved})
                for (const std::uint32_t world : {1u, 2u, 4u, 8u}) {
                    CAPTURE(a.type);
                    CAPTURE(kv);
                    CAPTURE(world);
                    const auto ex = dir.path() / "ex";
                    const auto merged = dir.path() / "merged";
                    const export_report er = export_checkpoint(in, ex, options_for(world, kv));
                    CHECK(er.world == world);
                    CHECK(er.side_files == world);  // config.json in each rank folder
                    for (std::uint32_t r = 0; r < world; ++r)
                        CHECK(slurp(ex / export_rank_folder(r) / "config.json") ==
                              slurp(dir.path() / "in" / "config.json"));
                    const merge_report mr = merge_export(ex, merged);
                    CHECK(mr.world == world);
                    check_same(dir.path() / "in", merged);
                    CHECK(slurp(merged / "config.json") ==
                          slurp(dir.path() / "in" / "config.json"));
                    fs::remove_all(ex);
                    fs::remove_all(merged);
                }
        }
    }

    TEST_CASE("round trip with schema-fused q/k/v and gate/up (several sources per tensor)") {
        temp_folder dir;
        model_spec m;
        m.bias = true;
        m.type = "qwen2";
        make_model(dir.path() / "in", m);
        const auto in = checkpoint::open((dir.path() / "in").string());
        for (const kv_convention kv : {kv_contiguous, kv_interleaved})
            for (const std::uint32_t world : {2u, 4u, 8u}) {
                CAPTURE(kv);
                CAPTURE(world);
                auto o = options_for(world, kv);
                o.overlap_io = world != 4;  // both the overlapped and the plain write loop
                o.plan.schema.fuse_qkv = true;
                o.plan.schema.fuse_gate_up = true;
                export_checkpoint(in, dir.path() / "ex", o);
                const auto r0 = checkpoint::open((dir.path() / "ex" / "rank-00000").string());
                CHECK(r0.contains("model.layers.0.self_attn.qkv_proj.weight"));
                CHECK(r0.contains("model.layers.0.mlp.gate_up_proj.weight"));
                CHECK_FALSE(r0.contains("model.layers.0.self_attn.q_proj.weight"));
                (void)merge_export(dir.path() / "ex", dir.path() / "merged");
                check_same(dir.path() / "in", dir.path() / "merged");
                fs::remove_all(dir.path() / "ex");
                fs::remove_all(dir.path() / "merged");
            }
    }

    TEST_CASE("an exported rank loads back as exactly what the loader cuts, as its rank only") {
        temp_folder dir;
        model_spec m;
        m.tied = true;
        m.type = "gemma";
        make_model(dir.path() / "in", m);
        const std::string in = (dir.path() / "in").string();
        const std::uint32_t world = 4;
        for (const kv_convention kv : {kv_contiguous, kv_interleaved}) {
            CAPTURE(kv);
            const auto ex = dir.path() / "ex";
            (void)export_checkpoint(checkpoint::open(in), ex, options_for(world, kv));
            for (std::uint32_t r = 0; r < world; ++r) {
                CAPTURE(r);
                load_options lo{.rank = r, .world = world};
                lo.plan.schema.kv = kv;
                const auto want = load<host_tensor>(in, lo);
                const auto got = load<host_tensor>((ex / export_rank_folder(r)).string(),
                                                   {.rank = r, .world = world});
                REQUIRE(got.size() == want.size());
                for (const auto& name : want.names()) {
                    CAPTURE(name);
                    REQUIRE(got.contains(name));
                    const host_tensor& a = want.at(name);
                    const host_tensor& b = got.at(name);
                    CHECK(a.shape() == b.shape());
                    CHECK(a.dtype() == b.dtype());
                    REQUIRE(a.size_bytes() == b.size_bytes());
                    CHECK(std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
                }
                // The tied lm_head aliases the embedding again.
                CHECK(&got.at("lm_head.weight") == &got.at("model.embed_tokens.weight"));
            }
            std::string what;
            CHECK(code_of(
                      [&] {
                          (void)load<host_tensor>((ex / "rank-00001").string(),
                                                  {.rank = 0, .world = world});
                      },
                      &what) == errc::invalid_export);
            CHECK(what.find("rank 1 of a world of 4") != std::string::npos);
            CHECK(code_of([&] {
                      (void)load<host_tensor>((ex / "rank-00001").string(),
                                              {.rank = 1, .world = 2});
                  }) == errc::invalid_export);
            // With a schema of one's own: the same check; replicate_all loads the rank as is.
            CHECK(code_of([&] {
                      (void)load<host_tensor>((ex / "rank-00002").string(), schema::replicate_all(),
                                              {.rank = 0, .world = 4});
                  }) == errc::invalid_export);
            const auto as_is = load<host_tensor>((ex / "rank-00002").string(),
                                                 schema::replicate_all(), {.rank = 2, .world = 4});
            CHECK(as_is.contains("model.layers.1.mlp.down_proj.weight"));
            fs::remove_all(ex);
        }
    }

    TEST_CASE("export --dtype: ranks hold converted tensors, merge gives them, config updated") {
        temp_folder dir;
        model_spec m;
        make_model(dir.path() / "in", m);
        auto o = options_for(2, kv_contiguous);
        o.plan.dtype = dtype_policy::fixed(dtype::f32);
        (void)export_checkpoint(checkpoint::open((dir.path() / "in").string()), dir.path() / "ex",
                                o);
        const auto r1 = checkpoint::open((dir.path() / "ex" / "rank-00001").string());
        CHECK(r1.tensor("model.norm.weight").tensor.dtype() == dtype::f32);
        const std::string cfg = slurp(dir.path() / "ex" / "rank-00001" / "config.json");
        CHECK(cfg.find("\"torch_dtype\":\"float32\"") != std::string::npos);
        CHECK(cfg.find("bfloat16") == std::string::npos);
        (void)merge_export(dir.path() / "ex", dir.path() / "merged");
        check_same(dir.path() / "in", dir.path() / "merged", dtype::f32);
    }

    TEST_CASE("the metadata: every shard describes its own tensors, the rank is read whole") {
        temp_folder dir;
        model_spec m;
        m.type = "phi3";
        m.fused = true;
        make_model(dir.path() / "in", m);
        auto o = options_for(4, kv_interleaved);
        o.max_shard_size = 4000;  // several shards per rank
        o.overlap_io = true;
        (void)export_checkpoint(checkpoint::open((dir.path() / "in").string()), dir.path() / "ex",
                                o);
        const auto r2 = checkpoint::open((dir.path() / "ex" / "rank-00002").string());
        REQUIRE(r2.files().size() > 1);
        std::size_t described = 0;
        for (const auto& f : r2.files()) {
            CAPTURE(f.name);
            CHECK(f.view.metadata("format") == std::optional<std::string_view>("pt"));
            const auto doc = f.view.metadata("safeshard");
            REQUIRE(doc.has_value());
            // Read alone, the shard describes exactly the tensors it stores (one record each,
            // no names: the header says them), but not the rank's other tensors.
            const export_shard_file alone{f.path.string(), doc, stored_tensors(f.view)};
            CHECK(code_of([&] { (void)read_export_metadata(std::span(&alone, 1)); }) ==
                  errc::invalid_export);  // its rank record counts the whole rank's tensors
            CHECK(document_records(*doc) == f.view.size());
            for (const tensor_view t : f.view)
                CHECK(doc->find(std::string(t.name())) == std::string_view::npos);
            described += document_records(*doc);
        }
        CHECK(described == r2.tensor_count());
        const auto meta = read_export_metadata(r2);
        REQUIRE(meta.has_value());
        CHECK(meta->version == 2);
        CHECK(meta->world == 4);
        CHECK(meta->rank == 2);
        CHECK(meta->kv == kv_interleaved);
        CHECK(meta->kv_multiplier == 2);  // world 4 / KV 2
        CHECK(meta->tensors.size() == r2.tensor_count());
        const export_tensor* qkv = meta->find("model.layers.1.self_attn.qkv_proj.weight");
        REQUIRE(qkv != nullptr);
        CHECK(qkv->layout.kind == layout_kind::gqa_qkv);
        CHECK(qkv->layout.heads == 8);
        CHECK(qkv->layout.kv_heads == 2);
        CHECK(qkv->layout.head_dim == 8);
        const export_tensor* gu = meta->find("model.layers.0.mlp.gate_up_proj.weight");
        REQUIRE(gu != nullptr);
        CHECK(gu->layout.part_count == 2);
        CHECK(gu->layout.parts[0] == 128);
        const export_tensor* emb = meta->find("model.embed_tokens.weight");
        REQUIRE(emb != nullptr);
        CHECK(emb->layout.multiple == 64);
        CHECK(emb->local == shape{32, 64});  // 100 padded to 128, / 4
        CHECK(emb->global == shape{100, 64});
        CHECK(emb->valid_begin == 64);
        CHECK(emb->valid_end == 96);
        REQUIRE(emb->sources.size() == 1);
        CHECK(emb->sources[0] ==
              export_source{"model.embed_tokens.weight", shape{100, 64}, dtype::bf16});
    }

    TEST_CASE("merge refuses tampered exports, naming what is wrong") {
        temp_folder dir;
        model_spec m;  // 8 heads, 2 KV heads: world 4 replicates each KV head on two ranks
        make_model(dir.path() / "in", m);
        const auto in = checkpoint::open((dir.path() / "in").string());
        const auto ex = dir.path() / "ex";
        const auto out = dir.path() / "out";
        (void)export_checkpoint(in, ex, options_for(4, kv_contiguous));
        const auto pristine = dir.path() / "pristine";
        fs::copy(ex, pristine, fs::copy_options::recursive);
        auto restore = [&] {
            fs::remove_all(ex);
            fs::copy(pristine, ex, fs::copy_options::recursive);
        };
        std::string what;
        auto merge_code = [&] { return code_of([&] { (void)merge_export(ex, out); }, &what); };

        // One rank's replica of a replicated tensor changed.
        flip_byte(ex / "rank-00002", "model.norm.weight", 10);
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("model.norm.weight") != std::string::npos);
        CHECK(what.find("differ between ranks") != std::string::npos);
        CHECK_FALSE(fs::exists(out));
        restore();

        // A replicated KV head changed on one of the two ranks holding it.
        flip_byte(ex / "rank-00001", "model.layers.1.self_attn.k_proj.weight", 4);
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("model.layers.1.self_attn.k_proj.weight") != std::string::npos);
        restore();

        // A split tensor's bytes are nobody else's: a change passes through (only its rank
        // holds them), so the merge succeeds and differs from the input there.
        flip_byte(ex / "rank-00003", "model.layers.0.mlp.up_proj.weight");
        (void)merge_export(ex, out);
        fs::remove_all(out);
        restore();

        // A rank missing, an extra rank, a badly named folder.
        fs::remove_all(ex / "rank-00002");
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("rank-00002 is missing") != std::string::npos);
        restore();
        fs::copy(ex / "rank-00003", ex / "rank-00004", fs::copy_options::recursive);
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("beyond the world of 4") != std::string::npos);
        restore();
        fs::create_directories(ex / "rank-7");
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("not a rank folder name") != std::string::npos);
        restore();
        fs::remove_all(ex / "rank-00000");
        fs::remove_all(ex / "rank-00001");
        fs::remove_all(ex / "rank-00002");
        fs::remove_all(ex / "rank-00003");
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("not a per-rank export") != std::string::npos);
        restore();

        // Metadata edited: an unknown version, a mixed world, a changed layout, a wrong rank.
        const auto file1 = ex / "rank-00001" / "model.safetensors";
        edit_metadata(file1,
                      [](std::string& d) { replace_in(d, "\"version\":2", "\"version\":7"); });
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("unknown export metadata version 7") != std::string::npos);
        restore();
        edit_metadata(file1, [](std::string& d) { replace_in(d, "\"world\":4", "\"world\":2"); });
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("mixed worlds") != std::string::npos);
        restore();
        edit_metadata(file1, [](std::string& d) { replace_in(d, "\"rank\":1", "\"rank\":2"); });
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("holds the metadata of rank 2") != std::string::npos);
        restore();
        // down_proj is split<1>: claim split<0> on one rank only.
        edit_metadata(file1, [](std::string& d) {
            replace_in(d, "{\"kind\":\"split\",\"dim\":1}", "{\"kind\":\"split\",\"dim\":0}");
        });
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("inconsistent metadata") != std::string::npos);
        CHECK(what.find("down_proj") != std::string::npos);
        restore();
        // Every rank claims split<0> for a split<1> tensor: the recorded local shape disagrees.
        for (int r = 0; r < 4; ++r)
            edit_metadata(
                ex / export_rank_folder(static_cast<std::uint32_t>(r)) / "model.safetensors",
                [](std::string& d) {
                    replace_in(d, "{\"kind\":\"split\",\"dim\":1}",
                               "{\"kind\":\"split\",\"dim\":0}");
                });
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("inconsistent metadata") != std::string::npos);
        restore();
        // Metadata removed from one rank.
        edit_metadata(file1, [](std::string& d) { d = "{}"; });
        CHECK(merge_code() == errc::invalid_export);
        restore();
        // One rank records another global extent for a split tensor (its own cut agrees).
        edit_record(file1, "model.layers.0.mlp.down_proj.weight", [](const std::string& v) {
            CHECK(v.ends_with(",128]"));  // [cut, global extent along dim 1]
            return v.substr(0, v.size() - 4) + "96]";
        });
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("inconsistent metadata") != std::string::npos);
        CHECK(what.find("model.layers.0.mlp.down_proj.weight") != std::string::npos);
        restore();
        // A record dropped, one too many, the rank's count, a document of another shard.
        edit_record(file1, "model.norm.weight", [](const std::string&) { return std::string(); });
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("has 20 records") != std::string::npos);
        CHECK(what.find("rank-00001") != std::string::npos);
        restore();
        edit_metadata(file1,
                      [](std::string& d) { replace_in(d, "\"tensors\":[", "\"tensors\":[0,"); });
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("more records than the 21 tensors") != std::string::npos);
        restore();
        edit_metadata(file1, [](std::string& d) {
            replace_in(d, "\"rank_tensors\":", "\"rank_tensors\":1");
        });
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("rank record says") != std::string::npos);
        restore();
        edit_metadata(file1, [](std::string& d) {
            replace_in(d, "\"names_hash\":\"", "\"names_hash\":\"0");
            d.erase(d.size() - 3, 1);  // still 16 digits
        });
        CHECK(merge_code() == errc::invalid_export);
        CHECK(what.find("written for another shard?") != std::string::npos);
        restore();

        CHECK_FALSE(fs::exists(out));
        (void)merge_export(ex, out);  // the restored export still merges
        check_same(dir.path() / "in", out);
    }

    TEST_CASE("export: bad arguments, existing output, --force, nothing left on error") {
        temp_folder dir;
        model_spec m;
        make_model(dir.path() / "in", m);
        const auto in = checkpoint::open((dir.path() / "in").string());
        const auto ex = dir.path() / "ex";
        CHECK(code_of([&] { (void)export_checkpoint(in, ex, options_for(0, kv_contiguous)); }) ==
              errc::invalid_argument);
        // A world past the cap is refused at once (not a plan per rank, nor a folder each).
        CHECK(code_of([&] {
                  (void)export_checkpoint(in, ex, options_for(max_export_world + 1, kv_contiguous));
              }) == errc::invalid_argument);
        // 8 heads cannot be cut for 3 ranks: refused before anything is written.
        CHECK(code_of([&] { (void)export_checkpoint(in, ex, options_for(3, kv_contiguous)); }) ==
              errc::invalid_layout);
        CHECK_FALSE(fs::exists(ex));
        CHECK(code_of([&] {
                  (void)export_checkpoint(in, dir.path() / "in" / "sub",
                                          options_for(2, kv_contiguous));
              }) == errc::invalid_argument);

        // Stopped half-way (the last rank's first tensor): no OUT, no temporaries.
        auto o = options_for(4, kv_contiguous);
        int calls = 0;
        o.cancel_point = [&] {
            if (++calls == 40) throw error(errc::interrupted, "stop");
        };
        CHECK(code_of([&] { (void)export_checkpoint(in, ex, o); }) == errc::interrupted);
        CHECK(calls == 40);
        CHECK_FALSE(fs::exists(ex));
        std::size_t entries = 0;
        for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) ++entries;
        CHECK(entries == 1);  // in

        (void)export_checkpoint(in, ex, options_for(2, kv_contiguous));
        CHECK(code_of([&] { (void)export_checkpoint(in, ex, options_for(4, kv_contiguous)); }) ==
              errc::io_error);
        auto forced = options_for(4, kv_contiguous);
        forced.force = true;
        const auto rep = export_checkpoint(in, ex, forced);
        CHECK(rep.replaced);
        CHECK(fs::exists(ex / "rank-00003"));

        // An export is not exported again; a rank folder is refused as input too.
        CHECK(code_of([&] {
                  (void)export_checkpoint(checkpoint::open((ex / "rank-00000").string()),
                                          dir.path() / "again", options_for(2, kv_contiguous));
              }) == errc::invalid_export);

        // A shard renamed over after the checkpoint was opened: refused, nothing written.
        {
            const auto shard = dir.path() / "in" / "model-00001-of-00003.safetensors";
            const auto opened = checkpoint::open((dir.path() / "in").string());
            fs::copy_file(shard, dir.path() / "new.tmp");
            fs::rename(dir.path() / "new.tmp", shard);
            {
                const auto e = expect_error(errc::io_error, [&] {
                    (void)export_checkpoint(opened, dir.path() / "ex2",
                                            options_for(2, kv_contiguous));
                });
                CHECK(std::string(e.what()).find("replaced") != std::string::npos);
            }
            CHECK_FALSE(fs::exists(dir.path() / "ex2"));
        }

        // A lone file given by path: nothing else of its folder is copied, and an output inside
        // that folder is fine (the folder is not the input).
        {
            model_spec m1;
            m1.shards = 1;
            make_model(dir.path() / "lone", m1);
            std::ofstream(dir.path() / "lone" / "notes.md") << "not the model's";
            const auto lone = checkpoint::open(
                (dir.path() / "lone" / "model-00001-of-00001.safetensors").string());
            CHECK(lone.opened_from_file());
            CHECK_FALSE(in.opened_from_file());
            const auto rep =
                export_checkpoint(lone, dir.path() / "lone" / "ex", options_for(2, kv_contiguous));
            CHECK(rep.side_files == 0);
            CHECK(fs::exists(dir.path() / "lone" / "ex" / "rank-00001"));
            CHECK_FALSE(fs::exists(dir.path() / "lone" / "ex" / "rank-00000" / "notes.md"));
            CHECK_FALSE(fs::exists(dir.path() / "lone" / "ex" / "rank-00000" / "config.json"));
        }

        // Merge output beside, existing, and forced.
        (void)merge_export(ex, dir.path() / "merged");
        CHECK(code_of([&] { (void)merge_export(ex, dir.path() / "merged"); }) == errc::io_error);
        merge_options mo;
        mo.force = true;
        CHECK(merge_export(ex, dir.path() / "merged", mo).replaced);
        check_same(dir.path() / "in", dir.path() / "merged");
        CHECK(code_of([&] { (void)merge_export(dir.path() / "nothing", dir.path() / "x"); }) ==
              errc::checkpoint_not_found);
    }

    TEST_CASE("quantization scales pass through, replicated, when raw tensors are asked for") {
        temp_folder dir;
        model_spec m;
        auto tensors = test::make_tensors(m);
        std::mt19937_64 rng(3);
        tensors["model.layers.0.mlp.down_proj.weight_scale"] = test::random_tensor({64}, rng);
        fs::create_directories(dir.path() / "in");
        test::write_checkpoint(dir.path() / "in", m, tensors);
        const auto in = checkpoint::open((dir.path() / "in").string());
        auto o = options_for(2, kv_contiguous);
        CHECK(code_of([&] { (void)export_checkpoint(in, dir.path() / "ex", o); }) ==
              errc::quantized_checkpoint);
        o.plan.allow_quantized = true;
        (void)export_checkpoint(in, dir.path() / "ex", o);
        const auto meta =
            read_export_metadata(checkpoint::open((dir.path() / "ex" / "rank-00001").string()));
        REQUIRE(meta.has_value());
        const export_tensor* scale = meta->find("model.layers.0.mlp.down_proj.weight_scale");
        REQUIRE(scale != nullptr);
        CHECK(scale->layout.kind == layout_kind::replicated);
        (void)merge_export(dir.path() / "ex", dir.path() / "merged");
        check_same(dir.path() / "in", dir.path() / "merged");
    }

    TEST_CASE("config_with_dtype rewrites float dtypes only, keeping every other byte") {
        const std::string in =
            "{\"torch_dtype\" : \"bfloat16\", \"note\": \"\\\"torch_dtype\\\": \\\"float16\\\"\","
            " \"text_config\": {\"dtype\":\"float32\", \"x\": [1, 2]}, \"q\": {\"dtype\": "
            "\"int8\"}}";
        const std::string out = detail::config_with_dtype(in, dtype::f16);
        CHECK(out ==
              "{\"torch_dtype\" : \"float16\", \"note\": \"\\\"torch_dtype\\\": \\\"float16\\\"\","
              " \"text_config\": {\"dtype\":\"float16\", \"x\": [1, 2]}, \"q\": {\"dtype\": "
              "\"int8\"}}");
        CHECK(detail::config_with_dtype(in, dtype::i8) == in);  // no torch name: unchanged
    }

    TEST_CASE("config_without_quantization drops the top-level member only, keeping the rest") {
        const std::string first =
            "{\"quantization_config\": {\"a\": [1, {\"b\": \"}\"}], \"c\": \"x,y\"},\n"
            "  \"model_type\": \"llama\"}";
        CHECK(detail::config_without_quantization(first) == "{\"model_type\": \"llama\"}");
        const std::string last = "{\"model_type\": \"llama\" ,\n \"quantization_config\" : null\n}";
        CHECK(detail::config_without_quantization(last) == "{\"model_type\": \"llama\" \n}");
        const std::string middle =
            "{\"a\": 1, \"quantization_config\": {\"quant_method\": \"fp8\"}, \"b\": 2}";
        CHECK(detail::config_without_quantization(middle) == "{\"a\": 1, \"b\": 2}");
        const std::string only = "{\"quantization_config\": {}}";
        CHECK(detail::config_without_quantization(only) == "{}");
        // In text_config too (Kimi-K2.5's place); deeper, or only inside a string: kept.
        const std::string text_config =
            "{\"text_config\": {\"a\": 1, \"quantization_config\": {\"x\": 2}}, \"b\": 3}";
        CHECK(detail::config_without_quantization(text_config) ==
              "{\"text_config\": {\"a\": 1}, \"b\": 3}");
        const std::string nested =
            "{\"vision_config\": {\"quantization_config\": {}}, \"note\": "
            "\"\\\"quantization_config\\\": 1\"}";
        CHECK(detail::config_without_quantization(nested) == nested);
    }

    TEST_CASE("copy_side_files: a dequantized copy leaves hf_quant_config.json behind, and says") {
        temp_folder dir;
        const auto from = dir.path() / "from", to = dir.path() / "to";
        fs::create_directories(from);
        fs::create_directories(to);
        std::ofstream(from / "config.json")
            << "{\"torch_dtype\": \"bfloat16\", \"quantization_config\": {\"quant_method\": "
               "\"fp8\"}}";
        std::ofstream(from / "hf_quant_config.json") << "{}";
        std::vector<std::string> skipped;
        const auto n = copy_side_files(
            from, to, config_changes{dtype::f32, true}, [&](const skipped_side_file& f) {
                skipped.push_back(f.path.filename().string() + ": " + f.reason);
            });
        CHECK(n == 1);
        CHECK_FALSE(fs::exists(to / "hf_quant_config.json"));
        REQUIRE(skipped.size() == 1);
        CHECK(skipped[0] ==
              "hf_quant_config.json: the quantization of weights written dequantized");
        std::ifstream f(to / "config.json");
        const std::string text{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
        CHECK(text == "{\"torch_dtype\": \"float32\"}");
    }

    TEST_CASE("copy_side_files: weights, hidden and oversized files stay behind, and are said") {
        temp_folder dir;
        const auto from = dir.path() / "from", to = dir.path() / "to";
        fs::create_directories(from);
        fs::create_directories(to);
        auto put = [&](const char* name, const std::string& text) {
            std::ofstream(from / name, std::ios::binary) << text;
        };
        put("config.json", "{\"torch_dtype\": \"bfloat16\"}");
        put("tokenizer.json", "{}");
        put("model.safetensors", "x");
        put(".hidden", "x");
        put("huge.bin.txt", "");
        fs::resize_file(from / "huge.bin.txt", max_side_file + 1);  // sparse
        std::vector<std::pair<std::string, std::string>> skipped;
        const auto n =
            copy_side_files(from, to, config_changes{dtype::f32}, [&](const skipped_side_file& f) {
                skipped.emplace_back(f.path.filename().string(), f.reason);
            });
        CHECK(n == 2);
        CHECK(fs::exists(to / "tokenizer.json"));
        CHECK_FALSE(fs::exists(to / "model.safetensors"));
        CHECK_FALSE(fs::exists(to / ".hidden"));
        CHECK_FALSE(fs::exists(to / "huge.bin.txt"));
        REQUIRE(skipped.size() == 1);
        CHECK(skipped[0].first == "huge.bin.txt");
        CHECK(skipped[0].second.find(std::to_string(max_side_file + 1) + " bytes") == 0);
        std::ifstream cfg(to / "config.json");
        std::string text((std::istreambuf_iterator<char>(cfg)), std::istreambuf_iterator<char>());
        CHECK(text == "{\"torch_dtype\": \"float32\"}");
    }
}

namespace {
std::vector<std::string> listing(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}
}  // namespace

TEST_SUITE("export") {
    TEST_CASE("export --dtype F32 with a shard cut short under the conversion: io_error, no OUT") {
        temp_folder dir;
        model_spec m;
        make_model(dir.path() / "in", m);
        const auto f = dir.path() / "in" / "model-00002-of-00003.safetensors";
        const checkpoint in = checkpoint::open((dir.path() / "in").string());
        export_options o = options_for(2, kv_contiguous);
        o.plan.dtype = dtype_policy::fixed(dtype::f32);  // BF16 -> F32 out of the mapping
        o.engine.threads = 1;
        test::cut_after_size_check cut(f, in.files()[1].view.bytes());
        const detail::scoped_syscall_hooks scope(cut);
        {
            const auto e = expect_error([&] { (void)export_checkpoint(in, dir.path() / "ex", o); });
            CHECK(cut.done.load());
            CHECK(e.code() == errc::io_error);
            CHECK(e.file() == f.string());
            CHECK(std::string(e.what()).find("cut short while it was being read") !=
                  std::string::npos);
        }
        CHECK(listing(dir.path()) == std::vector<std::string>{"in"});
    }

    TEST_CASE("export and merge: a shard rewritten in place while read: no OUT, changed") {
        temp_folder dir;
        model_spec m;
        make_model(dir.path() / "in", m);
        const auto f = dir.path() / "in" / "model-00002-of-00003.safetensors";
        const checkpoint in = checkpoint::open((dir.path() / "in").string());
        const std::uint64_t data = in.files()[1].view.data_offset();
        test::wait_for_later_ctime(f);
        {
            test::rewrite_before_first_read rewrite(f, data, test::flipped_bytes(f, data, 128));
            const detail::scoped_syscall_hooks scope(rewrite);
            {
                const auto e = expect_error([&] {
                    (void)export_checkpoint(in, dir.path() / "ex", options_for(2, kv_contiguous));
                });
                CHECK(rewrite.done.load());
                CHECK(e.code() == errc::io_error);
                CHECK(e.file() == f.string());
                CHECK(std::string(e.what()).find("changed while being read") != std::string::npos);
            }
        }
        CHECK(listing(dir.path()) == std::vector<std::string>{"in"});

        // merge: a rank's shard rewritten while merge reads it.
        (void)export_checkpoint(checkpoint::open((dir.path() / "in").string()), dir.path() / "ex",
                                options_for(2, kv_contiguous));
        const auto rank1 = checkpoint::open((dir.path() / "ex" / export_rank_folder(1)).string());
        // A split tensor's part (only this rank has those bytes: no comparison between ranks
        // can notice them).
        const auto q = rank1.tensor("model.layers.0.self_attn.q_proj.weight");
        const auto g = q.file->path;
        test::wait_for_later_ctime(g);
        test::rewrite_before_first_read rewrite(g, q.tensor.file_begin(),
                                                test::flipped_bytes(g, q.tensor.file_begin(), 64));
        const detail::scoped_syscall_hooks scope(rewrite);
        {
            const auto e =
                expect_error([&] { (void)merge_export(dir.path() / "ex", dir.path() / "merged"); });
            CHECK(rewrite.done.load());
            CHECK(e.code() == errc::io_error);
            CHECK(e.file() == g.string());
            CHECK(std::string(e.what()).find("changed while being read") != std::string::npos);
        }
        CHECK(listing(dir.path()) == std::vector<std::string>{"ex", "in"});
    }
}
