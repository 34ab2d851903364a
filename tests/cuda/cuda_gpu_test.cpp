// cuda_engine on a real GPU: every rank's cuda_tensors equal host_engine's tensors for the same
// plan, for world 1, 2, 4, 8, both GQA conventions, padded vocabulary, every conversion pair
// and all three policies; errors name the CUDA call. Exits 77 (SKIP) where no GPU is found.
// SAFESHARD_HF_DIR=DIR: also the checkpoints tools/gpu/hf_reference.py wrote with transformers,
// compared with the torch slices it saved (DIR/refs/<model>/ref-w<W>-r<R>.safetensors; for the
// mixtures of experts also ref-w<W>-ep<M>-<placement>-r<R>.safetensors), loaded on the host and
// by the GPU; the mixtures saved with their experts stacked (DIR/<arch>-stacked) against the
// same slices of <arch>, stacked over each rank's experts; gpt_oss and llama4, whose checkpoints
// stack their experts themselves, against their own slices of the stacked tensors.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "../support/expect_error.hpp"
#include "cuda_test_support.hpp"
#include "safeshard/cuda/cuda_engine.hpp"
#include "safeshard/cuda/cuda_tensor.hpp"
#include "safeshard/format/safetensors.hpp"
#include "transformers_refs.hpp"

using namespace safeshard;
using safeshard::test::expect_error;
using namespace safeshard::test;

namespace {

int device_count = 0;

std::vector<std::byte> host_copy(const cuda_tensor& t) {
    std::vector<std::byte> v(t.size_bytes());
    t.copy_to_host(v);
    return v;
}

const cuda_engine_options option_sets[] = {
    {},
    {.strided = read_mode::mmap, .buffers = 2, .buffer_bytes = 4096, .streams = 3, .threads = 3},
    {.mode = read_mode::mmap,
     .strided = read_mode::mmap,
     .buffers = 3,
     .buffer_bytes = 1 << 16,
     .threads = 2},
    {.policy = cuda_policy::pageable},
    {.policy = cuda_policy::registered},
};

// One engine per option set, kept across loads (its ring is allocated once), freed by main().
std::unique_ptr<cuda_engine> engines[std::size(option_sets)];

cuda_engine& engine_for(const cuda_engine_options& o) {
    const auto i = static_cast<std::size_t>(&o - option_sets);
    if (!engines[i]) engines[i] = std::make_unique<cuda_engine>(o);
    return *engines[i];
}

void check_same(const plan_pair& p, const cuda_engine_options& o, const char* what) {
    CAPTURE(what);
    CAPTURE(to_string(o.policy));
    CAPTURE(o.buffers);
    CAPTURE(o.buffer_bytes);
    CAPTURE(o.threads);
    load_report hr;
    const tensor_bytes want = host_reference(p.host, &hr);
    cuda_engine& e = engine_for(o);
    load_report r;
    const auto m = load_tensors<cuda_tensor>(p.cuda, e, &r);
    std::size_t compared = 0;
    for (const auto& name : m.names()) {
        CAPTURE(name);
        CHECK(host_copy(m.at(name)) == want.at(name));
        ++compared;
    }
    CHECK(compared == want.size());
    CHECK(r.bytes_read == hr.bytes_read);
    CHECK(r.bytes_written == hr.bytes_written);
}

}  // namespace

TEST_CASE("bit-exact against host_engine: world 1, 2, 4, 8, GQA both ways, padded vocab") {
    for (const bool big : {false, true}) {
        model_spec m;
        if (big) {
            m.layers = 1;
            m.intermediate = 4096;
        }
        temp_folder dir;
        write_checkpoint(dir.path(), m, make_tensors(m));
        const checkpoint ckpt = checkpoint::open(dir.path().string());
        for (const auto kv : {kv_contiguous, kv_interleaved})
            for (std::uint32_t w : {1u, 2u, 4u, 8u})
                for (std::uint32_t r = 0; r < w; ++r)
                    for (const auto policy : {dtype_policy::keep(), dtype_policy::fixed(dtype::f32),
                                              dtype_policy::fixed(dtype::f16)}) {
                        CAPTURE(big);
                        CAPTURE(w);
                        CAPTURE(r);
                        CAPTURE(kv == kv_interleaved);
                        plan_options o;
                        o.schema.kv = kv;
                        o.dtype = policy;
                        const plan_pair p = make_plans(ckpt, nullptr, r, w, o);
                        for (const auto& eo : option_sets) check_same(p, eo, "bf16 model");
                    }
    }
}

TEST_CASE("narrowing in the staging pass: F32 checkpoint to BF16 and F16") {
    model_spec m;
    temp_folder dir;
    write_f32_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    for (std::uint32_t w : {1u, 2u, 4u, 8u})
        for (std::uint32_t r = 0; r < w; ++r)
            for (dtype to : {dtype::bf16, dtype::f16, dtype::f32}) {
                plan_options o;
                o.dtype = dtype_policy::fixed(to);
                const plan_pair p = make_plans(ckpt, nullptr, r, w, o);
                for (const auto& eo : option_sets) check_same(p, eo, "f32 model");
            }
}

TEST_CASE("every conversion pair, column slices of world 1, 2, 4, 8, all policies") {
    const schema s = column_split_schema();
    for (const auto& [from, to] : conversion_pairs()) {
        CAPTURE(name(from));
        CAPTURE(name(to));
        temp_folder dir;
        write_one_tensor(dir.path() / "model.safetensors", from, 24, 64,
                         static_cast<std::uint64_t>(from) * 31 + static_cast<std::uint64_t>(to));
        const checkpoint ckpt = checkpoint::open(dir.path().string());
        for (std::uint32_t w : {1u, 2u, 4u, 8u})
            for (std::uint32_t r = 0; r < w; ++r) {
                plan_options o;
                o.dtype = dtype_policy::fixed(to);
                const plan_pair p = make_plans(ckpt, &s, r, w, o);
                for (const auto& eo : option_sets) check_same(p, eo, "pair");
            }
    }
}

TEST_CASE("load<cuda_tensor>() and several devices, one engine each") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const auto host = load<host_tensor>(dir.path().string(), {.rank = 2, .world = 4});
    for (int d = 0; d < std::min(device_count, 2); ++d) {
        CAPTURE(d);
        load_options o{.rank = 2, .world = 4};
        o.plan.device = {device_kind::cuda, d};
        const auto gpu = load<cuda_tensor>(dir.path().string(), o);
        for (const auto& name : host.names()) {
            CAPTURE(name);
            CHECK(gpu.at(name).device() == d);
            const auto b = host.at(name).bytes();
            CHECK(host_copy(gpu.at(name)) == std::vector<std::byte>(b.begin(), b.end()));
        }
    }
}

TEST_CASE("a user allocator: every tensor from it, every one given back") {
    static std::atomic<int> live{0}, made{0};
    set_cuda_allocator({.allocate = [](std::size_t n, int) -> void* {
                            void* p = nullptr;
                            if (cudaMalloc(&p, n) != cudaSuccess) return nullptr;
                            ++live;
                            ++made;
                            return p;
                        },
                        .deallocate =
                            [](void* p, std::size_t, int) {
                                (void)cudaFree(p);
                                --live;
                            }});
    {
        model_spec m;
        temp_folder dir;
        write_checkpoint(dir.path(), m, make_tensors(m));
        const auto gpu = load<cuda_tensor>(dir.path().string(), {.rank = 0, .world = 2});
        CHECK(made == static_cast<int>(gpu.tensors().size()));
        CHECK(live == made);
    }
    set_cuda_allocator({});
    CHECK(live == 0);
}

TEST_CASE("CUDA errors name the call and the error") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const plan_pair p = make_plans(ckpt, nullptr, 0, 2, {});
    cuda_engine e({.device = device_count + 7});
    // the loader refuses a plan for another device than the engine's before any allocation
    CHECK_THROWS_WITH_AS((void)load_tensors<cuda_tensor>(p.cuda, e),
                         doctest::Contains("one engine per device"), error);
    // the engine on a device that does not exist: its first CUDA call fails
    std::vector<std::byte> host(16);
    std::byte* const dests[] = {host.data()};
    const std::uint64_t sizes[] = {16};
    e.bind(copy_targets{{}, dests, sizes});
    copy_op zero;
    zero.kind = copy_kind::zero;
    zero.box = byte_box{.dst_row_bytes = 16, .dst_pitch = 16, .rows = 1};
    e.submit(std::span(&zero, 1));
    {
        const auto x = expect_error(errc::cuda_error, [&] { e.wait(); });
        CHECK(std::string(x.what()).find("cudaSetDevice") != std::string::npos);
        CHECK(std::string(x.what()).find("cudaErrorInvalidDevice") != std::string::npos);
    }
    CHECK(!e.ring_allocated());
    CHECK_THROWS_WITH_AS((void)cuda_tensor(dtype::f32, shape{4}, std::size_t{1} << 62, 0),
                         doctest::Contains("cudaMalloc"), error);
}

// Checkpoints written by transformers (save_pretrained, small shards), each rank compared with
// the slices torch took of the same tensors: the dense models for world 1, 2, 4, the mixtures
// of experts also with expert parallelism (ep 2 and the world, linear and round_robin), and
// saved a second time with their experts stacked (transformers v5's save_original_format=False,
// DIR/<arch>-stacked): each stacked tensor of a rank is the stack of the per-expert slices of
// the experts it holds (loaded_model::held_experts()), gate rows then up rows. gpt_oss and
// llama4 store their experts stacked (gate and up interleaved, concatenated): torch sliced the
// stacked tensors themselves, so their references are compared as they are.
TEST_CASE("transformers checkpoints against torch slices (SAFESHARD_HF_DIR)") {
    const char* env = std::getenv("SAFESHARD_HF_DIR");
    if (env == nullptr || *env == 0) {
        MESSAGE("SAFESHARD_HF_DIR not set: transformers checkpoints not compared");
        return;
    }
    namespace fs = std::filesystem;
    struct layout {
        std::uint32_t world;
        expert_parallel experts;
        std::string prefix;  // of the reference files, "-r<R>.safetensors" follows
    };
    std::vector<layout> layouts;
    for (std::uint32_t w : {1u, 2u, 4u}) {
        layouts.push_back({w, {}, "ref-w" + std::to_string(w)});
        for (const std::uint32_t ep : {2u, 4u})  // 2, and the world of 4
            if (ep <= w && w % ep == 0)
                for (const auto p : {expert_placement::linear, expert_placement::round_robin})
                    layouts.push_back({w,
                                       {ep, p},
                                       "ref-w" + std::to_string(w) + "-ep" + std::to_string(ep) +
                                           "-" + std::string(to_string(p))});
    }
    // one engine per policy, kept across the loads
    cuda_engine gpu_engines[] = {cuda_engine({.policy = cuda_policy::staged}),
                                 cuda_engine({.policy = cuda_policy::registered})};
    int models = 0;
    for (const auto& entry : fs::directory_iterator(env)) {
        if (!entry.is_directory() || !fs::exists(entry.path() / "config.json")) continue;
        ++models;
        const fs::path model = entry.path();
        CAPTURE(model.string());
        const std::string arch = references_of(model);
        const bool stacked = arch != model.filename().string();
        int refs = 0;
        for (const auto& l : layouts)
            for (std::uint32_t r = 0; r < l.world; ++r) {
                const fs::path ref = fs::path(env) / "refs" / arch /
                                     (l.prefix + "-r" + std::to_string(r) + ".safetensors");
                if (!fs::exists(ref)) continue;
                ++refs;
                CAPTURE(l.prefix);
                CAPTURE(r);
                const file_view torch_slices(ref);
                // every tensor of the reference (stacked over the rank's experts for a stacked
                // checkpoint), and no other, with torch's shape and bytes
                auto compare = [&](const auto& got, auto bytes_of, std::string_view path) {
                    const expected_tensors want =
                        stacked ? reference_stacked(torch_slices, got.held_experts())
                                : reference_as_is(torch_slices);
                    std::size_t compared = 0;
                    for (const auto& item : want) {
                        const std::string& name = item.first;
                        const expected_tensor& t = item.second;
                        CAPTURE(name);
                        REQUIRE(got.contains(name));
                        CHECK(got.at(name).shape() == t.dims);
                        CHECK(bytes_of(got.at(name)) == t.bytes);
                        ++compared;
                    }
                    CHECK(compared > 0);
                    CHECK(compared == got.tensors().size());
                    MESSAGE(model.filename().string()
                            << " " << l.prefix << " rank " << r << " " << path << ": " << compared
                            << " tensors equal torch's slices");
                };
                const load_options o{.rank = r, .world = l.world, .experts = l.experts};
                compare(
                    load<host_tensor>(model.string(), o),
                    [](const host_tensor& t) {
                        const auto b = t.bytes();
                        return std::vector<std::byte>(b.begin(), b.end());
                    },
                    "host");
                for (cuda_engine& e : gpu_engines) {
                    load_options go = o;
                    go.plan.device = {device_kind::cuda, 0};
                    compare(load<cuda_tensor>(model.string(), go, e), host_copy,
                            to_string(e.options().policy));
                }
            }
        CHECK(refs > 0);
    }
    CHECK(models > 0);
}

int main(int argc, char** argv) {
    const cudaError_t e = cudaGetDeviceCount(&device_count);
    if (e != cudaSuccess || device_count == 0) {
        std::printf("skip: no CUDA device (%s)\n",
                    e != cudaSuccess ? cudaGetErrorName(e) : "0 devices");
        return 77;
    }
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
        std::printf("device 0: %s, %d device(s)\n", prop.name, device_count);
    doctest::Context ctx(argc, argv);
    const int rc = ctx.run();
    for (auto& e : engines) e.reset();  // before the CUDA runtime goes
    return rc;
}
