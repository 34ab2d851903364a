// `safeshard plan` against the expectations of model_gen.hpp (run when SAFESHARD_EXE names
// the tool: the `plan_cli` test sets it).
#include <doctest/doctest.h>
#include <simdjson.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "../support/run_tool.hpp"
#include "model_gen.hpp"

using namespace safeshard;
using namespace safeshard::test;

namespace {

tool_result run(const std::string& args) { return run_tool(args); }

std::vector<std::uint64_t> ints(simdjson::dom::array a) {
    std::vector<std::uint64_t> v;
    for (auto x : a) v.push_back(x.get_uint64().value());
    return v;
}

void check_plan_json(const model_spec& m, std::uint32_t world, std::optional<std::uint32_t> rank) {
    temp_folder dir;
    const auto src = make_tensors(m);
    write_checkpoint(dir.path(), m, src);
    const auto r = run("plan " + dir.path().string() + " --tp " + std::to_string(world) +
                       (rank ? " --rank " + std::to_string(*rank) : std::string()) + " --json");
    REQUIRE(r.code == 0);
    simdjson::dom::parser parser;
    const simdjson::dom::element doc = parser.parse(r.out);
    CHECK(doc["world"].get_uint64().value() == world);
    std::vector<std::uint64_t> totals(world, 0);
    std::size_t count = 0;
    for (auto p : doc["parameters"].get_array()) {
        const std::string name(p["name"].get_string().value());
        CAPTURE(name);
        const bool tied = !p["tied_to"].is_null();
        const std::string source = tied ? std::string(p["tied_to"].get_string().value()) : name;
        const source_tensor& t = src.at(source);
        CHECK(ints(p["global_shape"].get_array()) == t.dims);
        CHECK(std::string(p["dtype"].get_string().value()) == "BF16");
        const std::string layout(p["layout"].get_string().value());
        if (name.ends_with("norm.weight")) CHECK(layout == "replicated");
        if (name.ends_with("down_proj.weight")) CHECK(layout == "split<1>");
        if (name.ends_with("embed_tokens.weight")) CHECK(layout == "padded_split<0,64>");
        if (name.ends_with("k_proj.weight")) CHECK(layout == "gqa_qkv<kv_contiguous>");
        std::size_t ranks = 0;
        for (auto rk : p["ranks"].get_array()) {
            const auto rr = static_cast<std::uint32_t>(rk["rank"].get_uint64().value());
            if (rank) CHECK(rr == *rank);
            const auto cut = expected_for(name, m, t, false, world, rr);
            std::vector<std::uint64_t> want{cut.rows.size()};
            if (t.dims.size() > 1) want.push_back(cut.cols.size());
            CHECK(ints(rk["shape"].get_array()) == want);
            const std::uint64_t nbytes = rk["nbytes"].get_uint64().value();
            CHECK(nbytes == (tied ? 0 : cut.rows.size() * cut.cols.size() * 2));
            totals[rr] += nbytes;
            ++ranks;
        }
        CHECK(ranks == (rank ? 1u : world));
        ++count;
    }
    CHECK(count == src.size() + (m.tied ? 1 : 0));
    const auto rank_bytes = ints(doc["rank_bytes"].get_array());
    if (rank) {
        REQUIRE(rank_bytes.size() == 1);
        CHECK(rank_bytes[0] == totals[*rank]);
    } else {
        CHECK(rank_bytes == totals);
    }
}

}  // namespace

TEST_CASE("safeshard plan --json: layouts, shapes and bytes of every rank" *
          doctest::skip(!have_tool())) {
    model_spec llama;
    for (std::uint32_t w : {1u, 2u, 4u, 8u}) check_plan_json(llama, w, std::nullopt);
    check_plan_json(llama, 8, 5u);
    model_spec gemma;
    gemma.type = "gemma";
    gemma.tied = true;
    check_plan_json(gemma, 2, std::nullopt);
}

TEST_CASE("safeshard plan: errors and exit codes" * doctest::skip(!have_tool())) {
    model_spec m;
    temp_folder dir;
    auto t = make_tensors(m);
    write_checkpoint(dir.path(), m, t);
    const std::string d = dir.path().string();
    auto r = run("plan " + d +
                 " --tp 3");  // 8 heads (and 128 padded vocabulary rows) do not split over 3
    CHECK(r.code == 1);
    CHECK(r.out.find("parameter '") != std::string::npos);
    r = run("plan " + d + " --tp 2 --rank 2");
    CHECK(r.code == 2);
    r = run("plan " + d + " --tp 2 --kv-convention sideways");
    CHECK(r.code == 2);
    r = run("plan " + d + " --tp 2 --dtype F9");
    CHECK(r.code == 2);
    r = run("plan " + d);
    CHECK(r.code == 2);  // --tp is required
    r = run("plan " + d + " --tp 8 --kv-convention interleaved");
    CHECK(r.code == 0);
    CHECK(r.out.find("gqa_qkv<kv_interleaved>") != std::string::npos);
    r = run("plan " + d + " --tp 2 --dtype f32 --json");
    CHECK(r.code == 0);
    CHECK(r.out.find("\"dtype\":\"F32\"") != std::string::npos);
    r = run("plan " + (dir.path() / "nothing").string() + " --tp 2");
    CHECK(r.code == 1);

    std::mt19937_64 rng(1);
    t["model.layers.0.mlp.down_proj.weight_scale"] = random_tensor({1}, rng);
    t["model.extra.weight"] = random_tensor({1}, rng);
    temp_folder q;
    write_checkpoint(q.path(), m, t);
    r = run("plan " + q.path().string() + " --tp 2");
    CHECK(r.code == 1);
    CHECK(r.out.find("quantized") != std::string::npos);
    // The library names its option; the tool adds its own flag.
    CHECK(r.out.find("plan_options::allow_quantized") != std::string::npos);
    CHECK(r.out.find("(--allow-quantized loads the raw tensors)") != std::string::npos);
    r = run("plan " + q.path().string() + " --tp 2 --allow-quantized");
    CHECK(r.code == 1);
    CHECK(r.out.find("model.extra.weight") != std::string::npos);
    CHECK(r.out.find("(--lenient reports them instead)") != std::string::npos);
    r = run("plan " + q.path().string() + " --tp 2 --allow-quantized --lenient");
    CHECK(r.code == 0);
    CHECK(r.out.find("unexpected (not loaded): model.extra.weight") != std::string::npos);
}
