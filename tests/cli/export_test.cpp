// `safeshard export` and `safeshard merge` end to end: the built binary on generated
// checkpoints; verify passes on exported and merged folders, the merge is bit-exact, exit
// codes, and no partial output on error or SIGINT.
#include <random>
#include <string>
#include <vector>

#include "../load/model_gen.hpp"
#include "cli_support.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/export_metadata_reader.hpp"
#include "safeshard/format/export_metadata_writer.hpp"

using namespace safeshard;
using namespace safeshard::test::cli;
namespace fs = std::filesystem;

namespace {

void make_model(const fs::path& dir, const test::model_spec& m) {
    fs::create_directories(dir);
    auto tensors = test::make_tensors(m);
    std::mt19937_64 rng(7);
    tensors["extra.position_bias"] = test::random_tensor({2, 3}, rng);  // outside the schema
    test::write_checkpoint(dir, m, tensors);
}

}  // namespace

TEST_SUITE("cli") {
    TEST_CASE("convert sharding a rank folder again keeps it a rank of its export, v1 or v2") {
        test::temp_folder d;
        test::model_spec m;
        make_model(d.path() / "in", m);
        auto r =
            run(d.path(), "export " + q(d.path() / "in") + " --tp 2 --out " + q(d.path() / "ex"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        const auto v1 = fs::path(SAFESHARD_FIXTURES) / "export-v1" / "ex";
        fs::copy(v1, d.path() / "ex1", fs::copy_options::recursive);
        // Version 2: each new shard describes its own tensors; version 1 keeps its one document.
        for (const auto& [ex, version] : {std::pair{d.path() / "ex", 2}, {d.path() / "ex1", 1}}) {
            CAPTURE(version);
            const auto rank1 = ex / "rank-00001";
            const auto before = read_export_metadata(checkpoint::open(rank1.string()));
            REQUIRE(before.has_value());
            r = run(d.path(), "convert " + q(rank1) + " --out " + q(d.path() / "r1") +
                                  " --max-shard-size 1KB");
            REQUIRE_MESSAGE(r.rc == 0, r.err);
            const auto c = checkpoint::open((d.path() / "r1").string());
            CHECK(c.files().size() > 2);
            const auto after = read_export_metadata(c);
            REQUIRE(after.has_value());
            CHECK(after->version == version);
            CHECK(after->tensors.size() == before->tensors.size());
            for (const auto& t : before->tensors) {
                CAPTURE(t.name);
                const export_tensor* a = after->find(t.name);
                REQUIRE(a != nullptr);
                CHECK(*a == t);
            }
            // The re-sharded rank takes its place: the export still merges.
            fs::remove_all(rank1);
            fs::rename(d.path() / "r1", rank1);
            r = run(d.path(), "merge " + q(ex) + " --out " + q(d.path() / "merged"));
            REQUIRE_MESSAGE(r.rc == 0, r.err);
            if (version == 2)
                check_same(d.path() / "in", d.path() / "merged");
            else
                check_same(v1.parent_path() / "in", d.path() / "merged", dtype::f32);
            fs::remove_all(d.path() / "merged");
        }
    }

    TEST_CASE("export then merge: verify passes on every rank and on the merge, bit-exact") {
        test::temp_folder d;
        test::model_spec m;
        m.type = "qwen2";
        m.bias = true;
        make_model(d.path() / "in", m);
        auto r = run(d.path(), "export " + q(d.path() / "in") + " --tp 4 --kv-convention " +
                                   "interleaved --out " + q(d.path() / "ex"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("for a world of 4 (dtypes kept)") != std::string::npos);
        CHECK(r.out.find("4 rank folders") != std::string::npos);
        CHECK(count_entries(d.path() / "ex") == 4);
        for (int k = 0; k < 4; ++k) {
            const auto rank = d.path() / "ex" / ("rank-0000" + std::to_string(k));
            CHECK(fs::exists(rank / "config.json"));
            const auto v = run(d.path(), "verify " + q(rank));
            CHECK_MESSAGE(v.rc == 0, v.err);
        }
        r = run(d.path(), "merge " + q(d.path() / "ex") + " --out " + q(d.path() / "merged") +
                              " --max-shard-size 20KB");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("merged 4 rank folders") != std::string::npos);
        CHECK(r.out.find("shards + index") != std::string::npos);
        check_same(d.path() / "in", d.path() / "merged");
        const auto v = run(d.path(), "verify " + q(d.path() / "merged"));
        CHECK_MESSAGE(v.rc == 0, v.err);
        CHECK(count_entries(d.path()) == 3);  // in ex merged: no temporaries
    }

    TEST_CASE("export --dtype: converted ranks, config.json torch_dtype updated, merge converted") {
        test::temp_folder d;
        test::model_spec m;
        m.type = "phi3";
        m.fused = true;
        make_model(d.path() / "in", m);
        auto r = run(d.path(), "export " + q(d.path() / "in") + " --tp 2 --dtype f16 --out " +
                                   q(d.path() / "ex") + " --max-shard-size 10KB");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("floating-point tensors as F16") != std::string::npos);
        const std::string cfg = slurp(d.path() / "ex" / "rank-00001" / "config.json");
        CHECK(cfg.find("\"torch_dtype\":\"float16\"") != std::string::npos);
        CHECK(fs::exists(d.path() / "ex" / "rank-00001" / "model.safetensors.index.json"));
        CHECK(run(d.path(), "verify " + q(d.path() / "ex" / "rank-00001")).rc == 0);
        r = run(d.path(), "merge " + q(d.path() / "ex") + " --out " + q(d.path() / "merged"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        check_same(d.path() / "in", d.path() / "merged", dtype::f16);
        CHECK(run(d.path(), "verify " + q(d.path() / "merged")).rc == 0);
    }

    TEST_CASE("export and merge: exit codes, and nothing written on error") {
        test::temp_folder d;
        test::model_spec m;
        make_model(d.path() / "in", m);
        const std::string in = q(d.path() / "in");
        const std::string ex = q(d.path() / "ex");
        CHECK(run(d.path(), "export " + in + " --tp 0 --out " + ex).rc == 2);
        CHECK(run(d.path(), "export " + in + " --out " + ex).rc == 2);  // --tp required
        CHECK(run(d.path(), "export " + in + " --tp 2").rc == 2);       // --out required
        CHECK(run(d.path(), "export " + in + " --tp 2 --out " + ex + " --dtype i8").rc == 2);
        CHECK(run(d.path(), "export " + in + " --tp 2 --out " + ex + " --kv-convention x").rc == 2);
        CHECK(run(d.path(), "export " + in + " --tp 2 --out " + ex + " --max-shard-size 1QB").rc ==
              2);
        CHECK(run(d.path(), "export " + in + " --tp 2 --out " + q(d.path() / "in" / "x")).rc == 2);
        CHECK(run(d.path(), "export " + q(d.path() / "nope") + " --tp 2 --out " + ex).rc == 1);
        CHECK(run(d.path(), "export " + in + " --tp 4000000000 --out " + ex).rc == 2);
        {  // "--out ." from an empty folder of the test's own (were it replaced, nothing is lost)
            fs::create_directories(d.path() / "here");
            const auto cwd = fs::current_path();
            fs::current_path(d.path() / "here");
            const auto r = run(d.path(), "export " + in + " --tp 2 --out . --force");
            fs::current_path(cwd);
            CHECK(r.rc == 2);
            CHECK(r.err.find("current folder") != std::string::npos);
            CHECK(fs::is_empty(d.path() / "here"));
            fs::remove(d.path() / "here");
        }
        auto r = run(d.path(), "export " + in + " --tp 3 --out " + ex);  // 8 heads, 3 ranks
        CHECK(r.rc == 1);
        CHECK(r.err.find("invalid_layout") != std::string::npos);
        r = run(d.path(), "export " + in + " --tp 2 --arch nosuch --out " + ex);
        CHECK(r.rc == 1);
        CHECK(r.err.find("nosuch") != std::string::npos);
        CHECK_FALSE(fs::exists(d.path() / "ex"));

        REQUIRE(run(d.path(), "export " + in + " --tp 2 --out " + ex).rc == 0);
        r = run(d.path(), "export " + in + " --tp 2 --out " + ex);
        CHECK(r.rc == 2);
        CHECK(r.err.find("already exists; pass --force") != std::string::npos);
        r = run(d.path(), "export " + in + " --tp 4 --out " + ex + " --force");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("old folder replaced") != std::string::npos);
        CHECK(fs::exists(d.path() / "ex" / "rank-00003"));
        // convert keeps a rank's metadata (it stays a rank), and refuses to change its dtypes.
        r = run(d.path(), "convert " + q(d.path() / "ex" / "rank-00000") + " --out " +
                              q(d.path() / "r0") + " --max-shard-size 5KB");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(read_export_metadata(checkpoint::open((d.path() / "r0").string())).has_value());
        fs::remove_all(d.path() / "r0");
        r = run(d.path(), "convert " + q(d.path() / "ex" / "rank-00000") + " --out " +
                              q(d.path() / "r0") + " --dtype f32");
        CHECK(r.rc == 1);
        CHECK(r.err.find("rank of an export") != std::string::npos);
        CHECK_FALSE(fs::exists(d.path() / "r0"));
        r = run(d.path(), "export " + q(d.path() / "ex" / "rank-00000") + " --tp 2 --out " +
                              q(d.path() / "again"));
        CHECK(r.rc == 1);
        CHECK(r.err.find("invalid_export") != std::string::npos);

        // merge: a folder that is no export, a missing rank, an existing output.
        const std::string out = q(d.path() / "merged");
        r = run(d.path(), "merge " + in + " --out " + out);
        CHECK(r.rc == 1);
        CHECK(r.err.find("not a per-rank export") != std::string::npos);
        CHECK(run(d.path(), "merge " + q(d.path() / "nope") + " --out " + out).rc == 1);
        CHECK(run(d.path(), "merge " + ex).rc == 2);
        fs::rename(d.path() / "ex" / "rank-00003", d.path() / "r3");
        r = run(d.path(), "merge " + ex + " --out " + out);
        CHECK(r.rc == 1);
        CHECK(r.err.find("rank-00003 is missing") != std::string::npos);
        CHECK_FALSE(fs::exists(d.path() / "merged"));
        fs::rename(d.path() / "r3", d.path() / "ex" / "rank-00003");
        REQUIRE(run(d.path(), "merge " + ex + " --out " + out).rc == 0);
        CHECK(run(d.path(), "merge " + ex + " --out " + out).rc == 2);
        CHECK(run(d.path(), "merge " + ex + " --out " + out + " --force").rc == 0);
        check_same(d.path() / "in", d.path() / "merged");
    }

    TEST_CASE("export and merge: SIGINT stops with 130 and no partial output") {
        test::temp_folder d;
        test::model_spec m;
        m.layers = 8;
        m.hidden = 256;
        m.intermediate = 1024;
        m.head_dim = 32;
        m.vocab = 1000;
        make_model(d.path() / "in", m);  // about 17 MB
        const auto ex = d.path() / "ex";
        interrupt_at_spread_points(
            {"export", (d.path() / "in").string(), "--tp", "4", "--out", ex.string()}, ex,
            [&] { CHECK(count_entries(ex) == 4); });
        REQUIRE(run(d.path(), "export " + q(d.path() / "in") + " --tp 4 --out " + q(ex)).rc == 0);
        const auto merged = d.path() / "merged";
        interrupt_at_spread_points({"merge", ex.string(), "--out", merged.string()}, merged,
                                   [&] { check_same(d.path() / "in", merged); });
    }
    TEST_CASE("export: SIGKILL at 60 random moments leaves OUT absent or complete") {
        test::temp_folder d;
        test::model_spec m;
        make_model(d.path() / "in", m);
        // On a private tmpfs when we may mount one (fsync costs nothing there).
        const fs::path work = d.path() / "work";
        const tmpfs_mount mnt(work, "size=64m");
        MESSAGE("crash runs on " << (mnt.mounted() ? "tmpfs" : "disk (" + mnt.why() + ")"));
        const auto args = [&](const fs::path& out, bool force) {
            std::vector<std::string> a{
                "export",     (d.path() / "in").string(), "--tp", "4", "--out",
                out.string(), "--max-shard-size",         "10KB"};
            if (force) a.emplace_back("--force");
            return a;
        };
        std::string ref_meta;
        const crash_tally t =
            kill_at_random_moments(work, 60, 2024, args, [&](const fs::path& out) {
                if (ref_meta.empty())
                    ref_meta = slurp(work / "ref" / "rank-00003" / "model.safetensors.index.json");
                // Present: every rank folder, complete.
                CHECK(count_entries(out) == 4);
                CHECK(slurp(out / "rank-00003" / "model.safetensors.index.json") == ref_meta);
            });
        CHECK(t.killed_mid > 5);
        // The last run replaces an existing export (--force): it also removes what killed
        // forced runs left beside OUT (the convert test ends with a plain run after deleting
        // OUT, which removes them too).
        if (!fs::exists(work / "out"))
            fs::copy(work / "ref", work / "out", fs::copy_options::recursive);
        REQUIRE(WEXITSTATUS(wait_status(spawn(args(work / "out", true)))) == 0);
        const auto r = run(d.path(), "merge " + q(work / "out") + " --out " + q(work / "merged"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        check_same(d.path() / "in", work / "merged");
        // The last run cleaned what killed runs left: nothing but the outputs remains.
        CAPTURE(listing_with_owners(work));
        CHECK(listing(work) == std::vector<std::string>{"merged", "out", "ref"});
    }
}
