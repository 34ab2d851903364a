#include "safeshard/shard/slice.hpp"
#include "../support/expect_error.hpp"

#include <doctest/doctest.h>

#include <array>
#include <sstream>
#include <vector>

using namespace safeshard;
using safeshard::test::expect_error;

namespace {
// The q heads and KV heads a rank holds, flattened.
struct heads {
    std::vector<std::uint64_t> q, kv;
};
heads heads_of(const layout& l, std::uint32_t world, std::uint32_t rank) {
    gqa_selection sel;
    REQUIRE(select_gqa_heads(l, world, rank, sel) == layout_status::ok);
    heads h;
    for (const auto& s : sel.q)
        for (std::uint64_t i = 0; i < s.length; ++i) h.q.push_back(s.start + i);
    for (const auto& s : sel.kv)
        for (std::uint64_t i = 0; i < s.length; ++i) h.kv.push_back(s.start + i);
    return h;
}
using v64 = std::vector<std::uint64_t>;
}  // namespace

TEST_CASE("split<0> prints its geometry in one line") {
    CHECK(describe(split<0>::value, shape{4096, 4096}, 4, 1) ==
          "split<0> 4096x4096 @ rank 1/4 -> rows [1024,2048)");
    CHECK(describe(split<1>::value, shape{8, 16}, 2, 1) ==
          "split<1> 8x16 @ rank 1/2 -> cols [8,16)");
    CHECK(describe(replicated::value, shape{8}, 2, 1) == "replicated 8 @ rank 1/2 -> whole");
    CHECK(describe(split<0>::value, shape{5, 4}, 2, 1) == "split<0> 5x4 @ rank 1/2 -> indivisible");
    CHECK(describe(padded_split<0>::value, shape{100, 4}, 2, 1) ==
          "padded_split<0,64> 100x4 @ rank 1/2 -> rows [64,100) + zero rows 28");
    const std::array<shape, 2> gu{shape{8, 4}, shape{8, 4}};
    CHECK(describe(fused<0>::value, gu, 2, 1) ==
          "fused<0> 8x4+8x4 @ rank 1/2 -> src0 rows [4,8) + src1 rows [4,8)");
}

TEST_CASE("results and statuses print") {
    std::ostringstream os;
    os << slice(split<0>::value, shape{4, 2}, 2, 1) << " | "
       << slice(split<0>::value, shape{3}, 2, 1) << " | " << layout_status::kv_heads_mismatch;
    CHECK(os.str() ==
          "ok [2, 2] of [4, 2] {src0+4 1x4 -> dst+0} | indivisible | kv_heads_mismatch");
    CHECK(to_string(layout_status::too_many_pieces) == "too_many_pieces");
}

TEST_CASE("split collapses to one box per source, in elements") {
    const auto r0 = slice(split<0>::value, shape{4096, 4096}, 4, 1);
    REQUIRE(r0.ok());
    CHECK(r0.local == shape{1024, 4096});
    CHECK(r0.global == shape{4096, 4096});
    REQUIRE(r0.map.size() == 1);
    CHECK(r0.map[0] == copy_box{0, 1024 * 4096, 1, 1024 * 4096, 1024 * 4096, 0, 1024 * 4096});

    const auto r1 = slice(split<1>::value, shape{6, 8}, 4, 3);
    REQUIRE(r1.ok());
    CHECK(r1.local == shape{6, 2});
    REQUIRE(r1.map.size() == 1);
    CHECK(r1.map[0] == copy_box{0, 6, 6, 2, 8, 0, 2});

    // N-d: split<1> of [2, 6, 5] at world 3 -> rows of 2*5 elements.
    const auto r2 = slice(split<1>::value, shape{2, 6, 5}, 3, 2);
    REQUIRE(r2.ok());
    CHECK(r2.local == shape{2, 2, 5});
    CHECK(r2.map[0] == copy_box{0, 20, 2, 10, 30, 0, 10});

    // A bias (1-D) follows its weight's rows.
    const auto b = slice(split<0>::value, shape{12}, 3, 1);
    CHECK(b.map[0] == copy_box{0, 4, 1, 4, 4, 0, 4});
}

TEST_CASE("failures are statuses, and errors naming parameter, dim and world on the host") {
    CHECK(slice(split<0>::value, shape{5, 4}, 2, 0).status == layout_status::indivisible);
    CHECK(slice(split<0>::value, shape{4}, 0, 0).status == layout_status::invalid_world);
    CHECK(slice(split<0>::value, shape{4}, 2, 2).status == layout_status::rank_out_of_range);
    CHECK(slice(split<1>::value, shape{4}, 2, 0).status == layout_status::dim_out_of_range);
    CHECK(slice(padded_split<0>::value, shape{100}, 3, 0).status ==
          layout_status::padded_indivisible);
    CHECK(slice(make_padded_split(0, 0), shape{100}, 1, 0).status ==
          layout_status::invalid_parameters);
    CHECK(slice(strided_split<0, 2>::value, shape{12}, 4, 0).status == layout_status::indivisible);
    CHECK(slice(make_strided_split(0, 0), shape{12}, 4, 0).status ==
          layout_status::invalid_parameters);
    CHECK(slice(make_strided_split(0, 17), shape{17 * 2}, 2, 0).status ==
          layout_status::too_many_pieces);
    CHECK(slice(split<0>::value, shape{1ull << 40, 1ull << 40}, 1, 0).status ==
          layout_status::overflow);
    CHECK(slice(replicated::value, shape{1ull << 40, 1ull << 40}, 1, 0).status ==
          layout_status::overflow);
    const std::array<shape, 2> two{shape{4}, shape{4}};
    CHECK(slice(split<0>::value, two, 2, 0).status == layout_status::source_count);
    CHECK(slice(replicated::value, two, 2, 0).status == layout_status::source_count);
    const std::array<shape, 2> mixed{shape{4, 2}, shape{4, 3}};
    CHECK(slice(fused<0>::value, mixed, 2, 0).status == layout_status::shape_mismatch);
    const std::array<shape, 2> ranks{shape{4, 2}, shape{4}};
    CHECK(slice(fused<0>::value, ranks, 2, 0).status == layout_status::shape_mismatch);
    CHECK(slice(split<0>::value, nullptr, 0, 1, 0).status == layout_status::source_count);

    {
        const auto e = expect_error(errc::invalid_layout, [&] {
            (void)slice_or_throw("model.layers.0.mlp.gate_proj.weight", split<0>::value,
                                 shape{11008, 4096}, 3, 0);
        });
        CHECK(e.tensor() == "model.layers.0.mlp.gate_proj.weight");
        const std::string m = e.message();
        CHECK(m.find("model.layers.0.mlp.gate_proj.weight") != std::string::npos);
        CHECK(m.find("dim 0") != std::string::npos);
        CHECK(m.find("world 3") != std::string::npos);
        CHECK(m.find("11008") != std::string::npos);
    }
    CHECK_THROWS_AS((void)slice_or_throw("x", split<0>::value, shape{4}, 2, 5), error);
    try {
        (void)slice_or_throw("x", split<0>::value, shape{4}, 2, 5);
    } catch (const error& e) {
        CHECK(e.code() == errc::invalid_argument);
    }
    try {
        (void)slice_or_throw("embed", padded_split<0>::value, shape{100, 8}, 3, 0);
    } catch (const error& e) {
        CHECK(e.code() == errc::invalid_layout);
        CHECK(e.message().find("padded to a multiple of 64 (128)") != std::string::npos);
    }
    const auto ok = slice_or_throw("w", split<1>::value, shape{4, 4}, 2, 1);
    CHECK(ok.local == shape{4, 2});
}

TEST_CASE("padded_split pads the vocabulary like vLLM and zero-fills beyond it") {
    // vocab 32001 -> padded 32064, world 4 -> 8016 rows per rank; the last has 7953 real.
    const auto r3 = slice(padded_split<0>::value, shape{32001, 8}, 4, 3);
    REQUIRE(r3.ok());
    CHECK(r3.global == shape{32001, 8});
    CHECK(r3.local == shape{8016, 8});
    CHECK(r3.map[0] == copy_box{0, 3 * 8016 * 8, 1, 7953 * 8, 7953 * 8, 0, 7953 * 8});
    REQUIRE(r3.map.zero_count() == 1);
    CHECK(r3.map.zero(0) == zero_box{7953 * 8, 1, 63 * 8, 63 * 8});
    // A rank entirely in the padding: only zeros.
    const auto r = slice(padded_split<0, 64>::value, shape{10}, 2, 1);
    REQUIRE(r.ok());
    CHECK(r.local == shape{32});
    CHECK(r.map.size() == 0);
    CHECK(r.map.zero(0) == zero_box{0, 1, 32, 32});
    // On dim 1 the zero region is 2-D.
    const auto c = slice(padded_split<1, 4>::value, shape{3, 6}, 2, 1);
    REQUIRE(c.ok());
    CHECK(c.local == shape{3, 4});
    CHECK(c.map[0] == copy_box{0, 4, 3, 2, 6, 0, 4});
    CHECK(c.map.zero(0) == zero_box{2, 3, 2, 4});
}

TEST_CASE("strided_split takes pieces r, r + world, ...") {
    const auto r = slice(strided_split<0, 2>::value, shape{8, 3}, 2, 1);
    REQUIRE(r.ok());
    CHECK(r.local == shape{4, 3});
    REQUIRE(r.map.size() == 2);
    CHECK(r.map[0] == copy_box{0, 2 * 3, 1, 6, 6, 0, 6});
    CHECK(r.map[1] == copy_box{0, 6 * 3, 1, 6, 6, 6, 6});
    // World 1: the pieces are adjacent and merge into one box.
    CHECK(slice(strided_split<0, 4>::value, shape{8, 3}, 1, 0).map.size() == 1);
    // A huge stride (an export's metadata may say anything) answers at once: an empty dim,
    // world 1 (one run), or more pieces than a slice map holds.
    constexpr std::uint64_t huge = std::uint64_t{1} << 62;
    const auto empty = slice(make_strided_split(0, huge), shape{0, 4}, 1, 0);
    REQUIRE(empty.ok());
    CHECK(empty.local == shape{0, 4});
    const auto one = slice(make_strided_split(0, huge), shape{huge, 1}, 1, 0);
    REQUIRE(one.ok());
    CHECK(one.map.size() == 1);
    CHECK(slice(make_strided_split(0, std::uint64_t{1} << 40), shape{0, 4}, 4, 1).ok());
    CHECK(
        slice(make_strided_split(0, std::uint64_t{1} << 40), shape{std::uint64_t{1} << 42, 1}, 4, 1)
            .status == layout_status::too_many_pieces);
}

TEST_CASE("fused: gate|up from two tensors, or phi3's gate_up_proj cut by part sizes") {
    const std::array<shape, 2> gu{shape{16, 4}, shape{16, 4}};
    const auto a = slice(fused<0>::value, gu, 4, 2);
    REQUIRE(a.ok());
    CHECK(a.global == shape{32, 4});
    CHECK(a.local == shape{8, 4});
    REQUIRE(a.map.size() == 2);
    CHECK(a.map[0] == copy_box{0, 8 * 4, 1, 16, 16, 0, 16});
    CHECK(a.map[1] == copy_box{1, 8 * 4, 1, 16, 16, 16, 16});

    const auto b = slice(fused<0, 16, 16>::value, shape{32, 4}, 4, 2);
    REQUIRE(b.ok());
    CHECK(b.local == shape{8, 4});
    CHECK(b.map[0] == copy_box{0, 8 * 4, 1, 16, 16, 0, 16});
    CHECK(b.map[1] == copy_box{0, (16 + 8) * 4, 1, 16, 16, 16, 16});
    // World 1: one box for the whole fused tensor.
    CHECK(slice(fused<0, 16, 16>::value, shape{32, 4}, 1, 0).map.size() == 1);

    // Fused along dim 1: 2-D boxes.
    const std::array<shape, 2> cols{shape{3, 4}, shape{3, 2}};
    const auto c = slice(fused<1>::value, cols, 2, 1);
    REQUIRE(c.ok());
    CHECK(c.local == shape{3, 3});
    CHECK(c.map[0] == copy_box{0, 2, 3, 2, 4, 0, 3});
    CHECK(c.map[1] == copy_box{1, 1, 3, 1, 2, 2, 3});

    CHECK(slice(fused<0, 16, 8>::value, shape{32, 4}, 2, 0).status ==
          layout_status::shape_mismatch);
    CHECK(slice(fused<0, 16, 16>::value, gu, 2, 0).ok());
    const std::array<shape, 2> wrong{shape{16, 4}, shape{8, 4}};
    CHECK(slice(fused<0, 16, 16>::value, wrong, 2, 0).status == layout_status::shape_mismatch);
    const std::array<shape, 3> three{shape{16, 4}, shape{16, 4}, shape{16, 4}};
    CHECK(slice(fused<0, 16, 16>::value, three, 2, 0).status == layout_status::source_count);
    CHECK(slice(fused<0, 16, 16>::value, shape{32, 4}, 3, 0).status == layout_status::indivisible);
    // Head-aligned parts: 6 heads of 4 rows split over 4 ranks is 1.5 heads -> refused.
    const std::uint64_t sizes[] = {24, 8};
    const std::uint64_t units[] = {4, 4};
    const layout heads = make_fused(0, sizes, 2, units);
    CHECK(slice(heads, shape{32, 2}, 4, 0).status == layout_status::part_misaligned);
    CHECK(slice(heads, shape{32, 2}, 2, 0).ok());
    const std::uint64_t many[] = {1, 1, 1, 1, 1};
    CHECK(slice(make_fused(0, many, 5), shape{5}, 1, 0).status ==
          layout_status::invalid_parameters);
    try {
        (void)slice_or_throw("w", heads, shape{32, 2}, 4, 0);
    } catch (const error& e) {
        CHECK(e.message().find("whole head") != std::string::npos);
    }
}

TEST_CASE("kv_interleaved matches optimum-neuron's documented examples") {
    SUBCASE("H=32, KV=8, world=32: rank r has q head 4(r mod 8) + r div 8, kv head r mod 8") {
        const layout l = gqa_qkv<kv_interleaved>::make(32, 8, 64);
        for (std::uint32_t r = 0; r < 32; ++r) {
            const heads h = heads_of(l, 32, r);
            CHECK(h.q == v64{4 * (r % 8) + r / 8});
            CHECK(h.kv == v64{r % 8});
        }
    }
    SUBCASE("H=32, KV=4, world=8: rank 1 has q 8-11 and kv 1; rank 4 has q 4-7 and kv 0") {
        const layout l = gqa_qkv<kv_interleaved>::make(32, 4, 64);
        CHECK(heads_of(l, 8, 1).q == v64{8, 9, 10, 11});
        CHECK(heads_of(l, 8, 1).kv == v64{1});
        CHECK(heads_of(l, 8, 4).q == v64{4, 5, 6, 7});
        CHECK(heads_of(l, 8, 4).kv == v64{0});
    }
}

TEST_CASE("kv_contiguous matches vLLM: contiguous q heads, KV head rank / (world / KV)") {
    const layout l = gqa_qkv<kv_contiguous>::make(32, 4, 64);
    CHECK(heads_of(l, 8, 1).q == v64{4, 5, 6, 7});
    CHECK(heads_of(l, 8, 1).kv == v64{0});
    CHECK(heads_of(l, 8, 4).q == v64{16, 17, 18, 19});
    CHECK(heads_of(l, 8, 4).kv == v64{2});
    CHECK(heads_of(l, 2, 1).kv == v64{2, 3});
    CHECK(heads_of(l, 2, 1).q ==
          v64{16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31});
}

TEST_CASE("the conventions agree when no KV head is replicated, differ when one is") {
    for (std::uint32_t world : {1u, 2u, 4u, 8u}) {
        const layout c = gqa_qkv<kv_contiguous>::make(32, 8, 16);
        const layout i = gqa_qkv<kv_interleaved>::make(32, 8, 16);
        for (std::uint32_t r = 0; r < world; ++r) {
            CHECK(slice(c, shape{32 * 16 + 2 * 8 * 16, 8}, world, r).map ==
                  slice(i, shape{32 * 16 + 2 * 8 * 16, 8}, world, r).map);
            CHECK(slice(make_gqa_o(kv_contiguous, 32, 8, 16), shape{8, 512}, world, r).map ==
                  slice(make_gqa_o(kv_interleaved, 32, 8, 16), shape{8, 512}, world, r).map);
        }
    }
    // world 16 > KV 8: both replicate each KV head twice, but pick different q heads.
    const auto c =
        slice(gqa_qkv<kv_contiguous>::make(32, 8, 16, gqa_part::q), shape{512, 8}, 16, 1);
    const auto i =
        slice(gqa_qkv<kv_interleaved>::make(32, 8, 16, gqa_part::q), shape{512, 8}, 16, 1);
    REQUIRE(c.ok());
    REQUIRE(i.ok());
    CHECK(c.runs[0] == segment{0, 2 * 16, 2 * 16});  // q heads 2, 3
    CHECK(i.runs[0] == segment{0, 4 * 16, 2 * 16});  // q heads 4, 5
    CHECK_FALSE(c.map == i.map);
}

TEST_CASE("gqa_qkv: three sources or one fused (phi3), weights and biases") {
    // H=4, KV=2, d=3, hidden 5, world 2 (contiguous): q heads {r*2, r*2+1}, kv head r.
    const layout l = gqa_qkv<>::make(4, 2, 3);
    const std::array<shape, 3> qkv{shape{12, 5}, shape{6, 5}, shape{6, 5}};
    const auto r = slice(l, qkv, 2, 1);
    REQUIRE(r.ok());
    CHECK(r.global == shape{24, 5});
    CHECK(r.local == shape{12, 5});
    REQUIRE(r.map.size() == 3);
    CHECK(r.map[0] == copy_box{0, 6 * 5, 1, 6 * 5, 30, 0, 30});
    CHECK(r.map[1] == copy_box{1, 3 * 5, 1, 3 * 5, 15, 6 * 5, 15});
    CHECK(r.map[2] == copy_box{2, 3 * 5, 1, 3 * 5, 15, 9 * 5, 15});

    const auto f = slice(l, shape{24, 5}, 2, 1);
    REQUIRE(f.ok());
    CHECK(f.local == shape{12, 5});
    CHECK(f.map[0] == copy_box{0, 6 * 5, 1, 30, 30, 0, 30});
    CHECK(f.map[1] == copy_box{0, (12 + 3) * 5, 1, 15, 15, 30, 15});
    CHECK(f.map[2] == copy_box{0, (18 + 3) * 5, 1, 15, 15, 45, 15});

    // qwen2's biases: 1-D, the same heads.
    const std::array<shape, 3> bias{shape{12}, shape{6}, shape{6}};
    const auto b = slice(l, bias, 2, 1);
    REQUIRE(b.ok());
    CHECK(b.local == shape{12});
    CHECK(b.map[0] == copy_box{0, 6, 1, 6, 6, 0, 6});
    CHECK(b.map[1] == copy_box{1, 3, 1, 3, 3, 6, 3});
    CHECK(slice(make_gqa_qkv(kv_contiguous, 4, 2, 3, gqa_part::k), shape{6}, 2, 1).map[0] ==
          copy_box{0, 3, 1, 3, 3, 0, 3});

    // o_proj: the input dim (1), the same q heads as d-wide column blocks.
    const auto o = slice(gqa_o<>::make(4, 2, 3), shape{5, 12}, 2, 1);
    REQUIRE(o.ok());
    CHECK(o.local == shape{5, 6});
    CHECK(o.map[0] == copy_box{0, 6, 5, 6, 12, 0, 6});
}

TEST_CASE("gqa errors: head alignment, KV mismatch, wrong extents") {
    CHECK(slice(gqa_qkv<>::make(6, 2, 4, gqa_part::q), shape{24, 8}, 4, 0).status ==
          layout_status::heads_indivisible);
    CHECK(slice(gqa_qkv<>::make(6, 3, 4, gqa_part::k), shape{12, 8}, 2, 0).status ==
          layout_status::kv_heads_mismatch);  // KV 3 at world 2
    CHECK(slice(gqa_qkv<>::make(12, 3, 4, gqa_part::k), shape{12, 8}, 2, 0).status ==
          layout_status::kv_heads_mismatch);
    CHECK(slice(gqa_qkv<>::make(12, 4, 4, gqa_part::k), shape{16, 8}, 6, 0).status ==
          layout_status::kv_heads_mismatch);
    CHECK(slice(gqa_qkv<kv_interleaved>::make(12, 4, 4, gqa_part::k), shape{16, 8}, 6, 0).status ==
          layout_status::kv_heads_mismatch);
    CHECK(slice(gqa_qkv<>::make(12, 5, 4), shape{12, 8}, 2, 0).status ==
          layout_status::heads_indivisible);  // H % KV
    CHECK(slice(gqa_qkv<>::make(0, 1, 4), shape{12, 8}, 1, 0).status ==
          layout_status::invalid_parameters);
    CHECK(slice(gqa_qkv<>::make(4, 2, 3, gqa_part::q), shape{13, 5}, 2, 0).status ==
          layout_status::shape_mismatch);
    CHECK(slice(gqa_qkv<>::make(4, 2, 3), shape{25, 5}, 2, 0).status ==
          layout_status::shape_mismatch);
    const std::array<shape, 2> two{shape{12, 5}, shape{6, 5}};
    CHECK(slice(gqa_qkv<>::make(4, 2, 3), two, 2, 0).status == layout_status::source_count);
    // head_dim different from hidden / H: extents follow d, not hidden.
    CHECK(slice(gqa_qkv<>::make(8, 2, 256, gqa_part::q), shape{2048, 1024}, 4, 3).local ==
          shape{512, 1024});
    try {
        (void)slice_or_throw("model.layers.3.self_attn.q_proj.weight",
                             gqa_qkv<>::make(4, 2, 3, gqa_part::q), shape{13, 5}, 2, 0);
    } catch (const error& e) {
        CHECK(e.code() == errc::shape_mismatch);
        CHECK(e.message().find("expected 12 (H*d)") != std::string::npos);
    }
    try {
        (void)slice_or_throw("k", gqa_qkv<>::make(12, 4, 4, gqa_part::k), shape{16, 8}, 6, 0);
    } catch (const error& e) {
        CHECK(e.message().find("world 6 must be a multiple of KV=4") != std::string::npos);
    }
    // An interleaved multiplier that makes one rank need more than 16 boxes.
    CHECK(slice(gqa_qkv<kv_interleaved>::make(64, 32, 1, gqa_part::q, 2), shape{64, 1}, 2, 0)
              .status == layout_status::too_many_pieces);
}
