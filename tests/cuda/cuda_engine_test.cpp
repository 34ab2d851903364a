// cuda/basic_cuda_engine.hpp on the fake transport (no GPU): the bytes it would move equal
// host_engine's for the same plans, buffers are reused only after their event, every failed
// CUDA call becomes an error naming the call and leaves nothing allocated, progress and
// stats add up. Also the loader's hooks (load<T> with a device factory, created parameters).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "../io/file_change.hpp"
#include "../support/expect_error.hpp"
#include "cuda_test_support.hpp"
#include "fake_transport.hpp"
#include "safeshard/cuda/basic_cuda_engine.hpp"
#include "safeshard/cuda/cuda_engine.hpp"
#include "safeshard/cuda/cuda_tensor.hpp"

using namespace safeshard;
using safeshard::test::expect_error;
using namespace safeshard::test;

using fake_engine = basic_cuda_engine<fake_transport>;
static_assert(copy_engine<fake_engine>);

namespace {

std::string violations_of(const fake_device& d) {
    std::string s;
    for (const auto& v : d.violations) s += v + "; ";
    return s;
}

fake_device* current_fake = nullptr;  // where fake_tensor allocates

struct fake_tensor {
    fake_device* dev = nullptr;
    std::byte* p = nullptr;
    std::size_t n = 0;
    fake_tensor() = default;
    fake_tensor(fake_device* d, std::size_t bytes) : dev(d), n(bytes) {
        if (bytes) p = d->alloc_for_test(bytes);
    }
    fake_tensor(fake_tensor&& o) noexcept
        : dev(o.dev), p(std::exchange(o.p, nullptr)), n(std::exchange(o.n, 0)) {}
    fake_tensor& operator=(fake_tensor&&) = delete;
    ~fake_tensor() {
        if (p) dev->free_for_test(p);
    }
    [[nodiscard]] std::vector<std::byte> bytes() const {
        std::vector<std::byte> v(n);
        if (n) dev->read(p, v.data(), n);
        return v;
    }
};

}  // namespace

template <>
struct safeshard::tensor_factory<fake_tensor> {
    static fake_tensor allocate(const tensor_request& r) {
        if (r.device.kind != device_kind::cuda) throw std::runtime_error("not a CUDA device");
        return fake_tensor(current_fake, static_cast<std::size_t>(r.bytes));
    }
    static std::byte* data(fake_tensor& t) { return t.p; }
    static std::size_t size_bytes(const fake_tensor& t) { return t.n; }
    static constexpr device default_device() { return {device_kind::cuda, 0}; }
    static fake_engine make_engine(const device& d) {
        return fake_engine({.device = d.index, .buffer_bytes = 4096}, fake_transport{current_fake});
    }
};

namespace {

tensor_bytes bytes_of(const loaded_model<fake_tensor>& m) {
    tensor_bytes out;
    for (const auto& name : m.names()) out[name] = m.at(name).bytes();
    return out;
}

// The plan's rank through the fake engine with options `o`: equal to host_engine's bytes,
// the same bytes read and written, no violation, nothing left behind.
void check_same(const plan_pair& p, cuda_engine_options o, const char* what) {
    CAPTURE(what);
    CAPTURE(to_string(o.policy));
    CAPTURE(o.buffers);
    CAPTURE(o.buffer_bytes);
    CAPTURE(o.threads);
    REQUIRE(std::ranges::equal(p.host.ops(), p.cuda.ops()));
    load_report hr;
    const tensor_bytes want = host_reference(p.host, &hr);
    fake_device dev;
    dev.expected_device = p.cuda.destinations().empty() ? 0 : p.cuda.destinations()[0].device.index;
    o.device = dev.expected_device;
    current_fake = &dev;
    {
        fake_engine e(o, fake_transport{&dev});
        load_report r;
        const auto m = load_tensors<fake_tensor>(p.cuda, e, &r);
        CHECK(bytes_of(m) == want);
        CHECK(r.bytes_read == hr.bytes_read);
        CHECK(r.bytes_written == hr.bytes_written);
        CHECK(dev.pending() == 0);
    }
    CHECK(violations_of(dev) == "");
    CHECK(dev.clean());
    CHECK(dev.live_device() == 0);
    current_fake = nullptr;
}

const cuda_engine_options option_sets[] = {
    {},
    {.strided = read_mode::mmap, .buffers = 2, .buffer_bytes = 4096, .streams = 3, .threads = 3},
    {.mode = read_mode::mmap,
     .strided = read_mode::mmap,
     .buffers = 1,
     .buffer_bytes = 4096,
     .threads = 2},
    {.policy = cuda_policy::pageable, .buffer_bytes = 4096, .threads = 2},
    {.policy = cuda_policy::registered, .buffers = 3, .buffer_bytes = 4096, .threads = 2},
};

}  // namespace

TEST_CASE("the fake transport catches a staging buffer overwritten before its copy ran") {
    fake_device dev;
    fake_transport t{&dev};
    REQUIRE(t.set_device(0) == 0);
    transport_stream s = nullptr;
    void* pinned = nullptr;
    REQUIRE(t.stream_create(&s) == 0);
    REQUIRE(t.host_alloc(&pinned, 64) == 0);
    std::byte* dst = dev.alloc_for_test(64);
    std::memset(pinned, 1, 64);
    REQUIRE(t.memcpy_async(dst, pinned, 64, s) == 0);
    std::memset(pinned, 2, 64);  // too early: the copy has not run
    REQUIRE(t.stream_synchronize(s) == 0);
    REQUIRE(dev.violations.size() == 1);
    CHECK(dev.violations[0].find("overwritten") != std::string::npos);
    // and an async copy from pageable memory, a copy outside device memory
    std::vector<std::byte> pageable(64);
    REQUIRE(t.memcpy_async(dst, pageable.data(), 64, s) == 0);
    REQUIRE(t.memcpy_async(dst + 32, pinned, 64, s) == 0);
    CHECK(dev.violations.size() == 3);
    REQUIRE(t.stream_synchronize(s) == 0);
    // a pageable copy lands only with cudaDeviceSynchronize
    std::vector<std::byte> ones(64, std::byte{1}), back(64);
    REQUIRE(t.memcpy_2d(dst, 64, ones.data(), 64, 64, 1) == 0);
    dev.read(dst, back.data(), 64);
    CHECK(back != ones);
    REQUIRE(t.device_synchronize() == 0);
    dev.read(dst, back.data(), 64);
    CHECK(back == ones);
    REQUIRE(t.stream_destroy(s) == 0);
    REQUIRE(t.host_free(pinned) == 0);
    dev.free_for_test(dst);
    CHECK(dev.clean());
}

TEST_CASE("bit-exact against host_engine: world 1, 2, 4, 8, both GQA conventions, padded vocab") {
    // A deterministic sample of the full matrix (2 sizes x 2 conventions x 15 ranks x 3 dtype
    // policies x 5 engine option sets = 900 passes): every world with its first, middle and last
    // rank, every policy for each of them, and the option sets taken in turn, so that each
    // (policy, option set) pair runs for both sizes (108 passes).
    const dtype_policy policies[] = {dtype_policy::keep(), dtype_policy::fixed(dtype::f32),
                                     dtype_policy::fixed(dtype::f16)};
    std::size_t pass = 0;
    for (const bool big : {false, true}) {
        model_spec m;
        if (big) {  // rows longer than a 4 KiB buffer: cut by elements
            m.layers = 1;
            m.intermediate = 4096;
        }
        temp_folder dir;
        write_checkpoint(dir.path(), m, make_tensors(m));
        const checkpoint ckpt = checkpoint::open(dir.path().string());
        for (const auto kv : {kv_contiguous, kv_interleaved})
            for (std::uint32_t w : {1u, 2u, 4u, 8u})
                for (std::uint32_t r = 0; r < w; ++r) {
                    if (r != 0 && r != w / 2 && r != w - 1) continue;
                    for (const auto& policy : policies) {
                        const auto& eo = option_sets[pass++ % std::size(option_sets)];
                        CAPTURE(big);
                        CAPTURE(w);
                        CAPTURE(r);
                        CAPTURE(kv == kv_interleaved);
                        CAPTURE(name(policy.fixed_dtype));
                        CAPTURE(&eo - option_sets);
                        plan_options o;
                        o.schema.kv = kv;
                        o.dtype = policy;
                        const plan_pair p = make_plans(ckpt, nullptr, r, w, o);
                        check_same(p, eo, "bf16 model");
                    }
                }
    }
    CHECK(pass == 108);
}

TEST_CASE("narrowing conversions in the staging pass (F32 checkpoint to BF16, F16)") {
    model_spec m;
    temp_folder dir;
    write_f32_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    for (std::uint32_t w : {1u, 2u, 4u, 8u})
        for (std::uint32_t r = 0; r < w; ++r)
            for (dtype to : {dtype::bf16, dtype::f16, dtype::f32}) {
                CAPTURE(w);
                CAPTURE(r);
                CAPTURE(name(to));
                plan_options o;
                o.dtype = dtype_policy::fixed(to);
                const plan_pair p = make_plans(ckpt, nullptr, r, w, o);
                for (const auto& eo : option_sets) check_same(p, eo, "f32 model");
            }
}

TEST_CASE("every conversion pair, column slices of world 1, 2, 4, 8") {
    const schema s = column_split_schema();
    for (const auto& [from, to] : conversion_pairs()) {
        CAPTURE(name(from));
        CAPTURE(name(to));
        temp_folder dir;
        write_one_tensor(dir.path() / "model.safetensors", from, 24, 64,
                         static_cast<std::uint64_t>(from) * 31 + static_cast<std::uint64_t>(to));
        const checkpoint ckpt = checkpoint::open(dir.path().string());
        for (std::uint32_t w : {1u, 2u, 4u, 8u}) {
            plan_options o;
            o.dtype = dtype_policy::fixed(to);
            const plan_pair p = make_plans(ckpt, &s, w - 1, w, o);
            check_same(p, option_sets[0], "pair");
            check_same(p, option_sets[1], "pair");
            check_same(p, option_sets[4], "pair");
        }
    }
}

TEST_CASE("buffers are reused only after their event; reads in file order") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const plan_pair p = make_plans(ckpt, nullptr, 1, 4, {});
    for (unsigned buffers : {1u, 2u}) {
        fake_device dev;
        current_fake = &dev;
        const tensor_bytes want = host_reference(p.host);
        {
            fake_engine e({.buffers = buffers, .buffer_bytes = 4096, .streams = 2, .threads = 4},
                          fake_transport{&dev});
            const auto model = load_tensors<fake_tensor>(p.cuda, e);
            CHECK(bytes_of(model) == want);
            // a ring of `buffers`, allocated once, each buffer filled many times
            CHECK(dev.count("cudaHostAlloc") == buffers);
            CHECK(dev.count("cudaEventRecord") > 4 * static_cast<long>(buffers));
            CHECK(dev.count("cudaEventSynchronize") >=
                  dev.count("cudaEventRecord") - static_cast<long>(buffers));
            // a second load reuses the ring
            const auto again = load_tensors<fake_tensor>(p.cuda, e);
            CHECK(bytes_of(again) == want);
            CHECK(dev.count("cudaHostAlloc") == buffers);
            CHECK(e.ring_allocated());
        }
        CHECK(violations_of(dev) == "");
        CHECK(dev.clean());
        current_fake = nullptr;
    }
}

TEST_CASE("a rank reads only its own bytes; stats count them") {
    model_spec m;
    temp_folder dir;
    const auto src = make_tensors(m);
    write_checkpoint(dir.path(), m, src);
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    std::uint64_t full = 0;
    for (const auto& [n, t] : src) full += t.codes.size() * 2;
    for (std::uint32_t w : {1u, 8u}) {
        const plan_pair p = make_plans(ckpt, nullptr, 3 % w, w, {});
        fake_device dev;
        current_fake = &dev;
        {
            fake_engine e({.buffer_bytes = 4096}, fake_transport{&dev});
            load_report r;
            const auto model = load_tensors<fake_tensor>(p.cuda, e, &r);
            const engine_stats st = e.stats();
            CHECK(st.bytes_read == r.bytes_read);
            CHECK(st.bytes_written == r.rank_bytes);
            std::uint64_t op_bytes = 0;
            for (const auto& op : p.cuda.ops()) op_bytes += op.bytes_read();
            CHECK(st.bytes_read == op_bytes);
            // bytes that crossed the bus: staged copies and zero fill, each destination byte once
            CHECK(dev.async_bytes + dev.memset_bytes == r.rank_bytes);
            if (w == 1)
                CHECK(st.bytes_read == full);
            else
                CHECK(st.bytes_read < full / 4);
        }
        current_fake = nullptr;
    }
}

TEST_CASE("progress is monotonic and reaches the total") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const plan_pair p = make_plans(ckpt, nullptr, 0, 2, {});
    for (const auto& eo : option_sets) {
        fake_device dev;
        current_fake = &dev;
        std::uint64_t last = 0, total = 0, calls = 0;
        bool monotonic = true;
        {
            fake_engine e(eo, fake_transport{&dev});
            e.set_progress([&](std::uint64_t d, std::uint64_t t) {
                monotonic = monotonic && d >= last;
                last = d;
                total = t;
                ++calls;
            });
            load_report r;
            const auto model = load_tensors<fake_tensor>(p.cuda, e, &r);
            CHECK(monotonic);
            CHECK(calls > 1);
            CHECK(last == total);
            CHECK(total == r.rank_bytes);
        }
        current_fake = nullptr;
    }
}

TEST_CASE("a shard cut short after planning: an I/O error naming it, no SIGBUS, every policy") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const auto f = dir.path() / "model-00002-of-00003.safetensors";
    for (const std::uint32_t world : {1u, 4u}) {  // whole tensors, and strided column boxes
        const plan_pair p = make_plans(ckpt, nullptr, 1 % world, world, {});
        const auto size = std::filesystem::file_size(f);
        std::filesystem::resize_file(f, size / 2);
        for (const auto& eo : option_sets) {
            CAPTURE(world);
            CAPTURE(to_string(eo.policy));
            CAPTURE(static_cast<int>(eo.mode));
            fake_device dev;
            current_fake = &dev;
            {
                fake_engine e(eo, fake_transport{&dev});
                {
                    const auto x = expect_error(
                        errc::io_error, [&] { (void)load_tensors<fake_tensor>(p.cuda, e); });
                    CHECK(std::string(x.what()).find("model-00002-of-00003") != std::string::npos);
                }
                CHECK_FALSE(e.ring_allocated());
            }
            CHECK(violations_of(dev).empty());
            current_fake = nullptr;
        }
        std::filesystem::resize_file(f, size);  // zeros past the cut: the next plan opens it
    }
}

TEST_CASE("a shard cut short between the size check and a copy out of its mapping: io_error") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    // The shard of a column-split tensor: its rank's rows are strided, from the mapping.
    const std::string down = "model.layers.0.mlp.down_proj.weight";
    const std::filesystem::path f = checkpoint::open(dir.path().string()).tensor(down).file->path;
    const std::vector<std::byte> whole = read_bytes(f);
    struct policy_case {
        const char* what;
        std::uint32_t world;
        cuda_engine_options eo;
    };
    // One thread each: the copy that faults is the first error.
    const policy_case cases[] = {
        {"staged, strided rows from the mapping", 4, {.buffer_bytes = 4096, .threads = 1}},
        {"staged, mmap", 1, {.mode = read_mode::mmap, .buffer_bytes = 4096, .threads = 1}},
        {"pageable (pages touched before the driver's copy)",
         1,
         {.policy = cuda_policy::pageable, .buffer_bytes = 4096, .threads = 1}},
    };
    for (const policy_case& c : cases) {
        CAPTURE(std::string(c.what));
        write_bytes(f, whole);
        const checkpoint ckpt = checkpoint::open(dir.path().string());
        const plan_pair p = make_plans(ckpt, nullptr, 1 % c.world, c.world, {});
        fake_device dev;
        current_fake = &dev;
        {
            fake_engine e(c.eo, fake_transport{&dev});
            cut_after_size_check cut(f, ckpt.tensor(down).file->view.bytes());
            const detail::scoped_syscall_hooks scope(cut);
            {
                const auto x = expect_error([&] { (void)load_tensors<fake_tensor>(p.cuda, e); });
                CHECK(cut.done.load());
                CHECK(x.code() == errc::io_error);
                CHECK(x.file() == f.string());
                CHECK(std::string(x.what()).find("cut short while it was being read") !=
                      std::string::npos);
            }
            CHECK_FALSE(e.ring_allocated());
        }
        CHECK(violations_of(dev).empty());
        current_fake = nullptr;
    }
}

TEST_CASE("registered: a file cut short as its mapping is registered is io_error naming it") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const auto f = dir.path() / "model-00002-of-00003.safetensors";
    const plan_pair p = make_plans(ckpt, nullptr, 0, 1, {});
    fake_device dev;
    current_fake = &dev;
    {
        // The driver pins the pages (it never faults on them): pages past the end of a cut
        // file make cudaHostRegister fail, as the fake does here for the file it cuts.
        safeshard::test::mappings_of_file maps(safeshard::test::inode_of(f));
        const detail::scoped_syscall_hooks scope(maps);
        dev.on_register = [&](const void* at, std::size_t) {
            if (!maps.mapped_here(at)) return false;
            REQUIRE(::truncate(f.c_str(), 0) == 0);
            return true;
        };
        fake_engine e({.policy = cuda_policy::registered, .threads = 1}, fake_transport{&dev});
        {
            const auto x =
                expect_error(errc::io_error, [&] { (void)load_tensors<fake_tensor>(p.cuda, e); });
            CHECK(x.file() == f.string());
            CHECK(std::string(x.what()).find("cut short while its mapping was being registered") !=
                  std::string::npos);
        }
    }
    CHECK(dev.clean());
    current_fake = nullptr;
}

TEST_CASE("a failure at every CUDA call: an error naming the call, nothing left behind") {
    model_spec m;
    m.layers = 1;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    plan_options po;
    po.dtype = dtype_policy::fixed(dtype::f32);
    po.dtype_per_parameter = {{"model.norm.weight", dtype::bf16}};  // one op copies unconverted
    const plan_pair p = make_plans(ckpt, nullptr, 1, 2, po);
    const tensor_bytes want = host_reference(p.host);
    const std::set<std::string> cleanup = {"cudaSetDevice",        "cudaStreamSynchronize",
                                           "cudaEventSynchronize", "cudaEventDestroy",
                                           "cudaFreeHost",         "cudaStreamDestroy"};
    const std::set<std::string> copies = {"cudaMemcpyAsync", "cudaMemcpy2DAsync", "cudaMemcpy2D",
                                          "cudaMemset2DAsync", "cudaEventRecord"};
    for (const auto& eo :
         {cuda_engine_options{.buffers = 2, .buffer_bytes = 4096, .streams = 2, .threads = 1},
          cuda_engine_options{
              .policy = cuda_policy::registered, .buffer_bytes = 4096, .threads = 1},
          cuda_engine_options{.policy = cuda_policy::pageable, .buffer_bytes = 4096, .threads = 1},
          cuda_engine_options{.buffers = 2, .buffer_bytes = 4096, .streams = 2, .threads = 3}}) {
        CAPTURE(to_string(eo.policy));
        CAPTURE(eo.threads);
        // calls made by a load, and by the engine's destruction after it
        long load_calls = 0, all_calls = 0;
        {
            fake_device dev;
            current_fake = &dev;
            {
                fake_engine e(eo, fake_transport{&dev});
                const auto model = load_tensors<fake_tensor>(p.cuda, e);
                load_calls = dev.calls;
            }
            all_calls = dev.calls;
            current_fake = nullptr;
        }
        REQUIRE(load_calls > 10);
        long thrown = 0;
        for (long n = 1; n <= all_calls + 1; ++n) {
            CAPTURE(n);
            fake_device dev;
            dev.fail_at = n;
            current_fake = &dev;
            {
                fake_engine e(eo, fake_transport{&dev});
                try {
                    const auto model = load_tensors<fake_tensor>(p.cuda, e);
                    // the call that failed, if any, was one of the engine's destruction
                    CHECK(bytes_of(model) == want);
                    if (eo.threads == 1 && n <= load_calls) FAIL("no error for call " << n);
                } catch (const error& x) {
                    ++thrown;
                    CAPTURE(x.what());
                    CHECK(x.code() == errc::cuda_error);
                    REQUIRE(!dev.failed_call.empty());
                    const std::string what = x.what();
                    CHECK(what.find("fakeErrorInjected") != std::string::npos);
                    CHECK(what.find(dev.failed_call) != std::string::npos);
                    if (copies.count(dev.failed_call)) {
                        CHECK(what.find("while copying") != std::string::npos);
                        CHECK(!x.tensor().empty());
                    }
                    // released at once, before the tensors are freed
                    CHECK(dev.clean());
                    CHECK(!e.ring_allocated());
                }
            }
            if (!dev.failed_call.empty() && n > load_calls && eo.threads == 1)
                CHECK(cleanup.count(dev.failed_call) == 1);
            CHECK(violations_of(dev) == "");
            CHECK(dev.clean());
            CHECK(dev.live_device() == 0);
            current_fake = nullptr;
        }
        if (eo.threads == 1) CHECK(thrown == load_calls);
        CHECK(thrown > 0);
    }
}

TEST_CASE("the engine checks its ops: out of bounds, unsupported conversion") {
    fake_device dev;
    current_fake = &dev;
    fake_engine e({}, fake_transport{&dev});
    std::vector<std::byte> file_bytes(64);
    std::byte* d = dev.alloc_for_test(16);
    std::byte* const dests[] = {d};
    const std::uint64_t sizes[] = {16};
    e.bind(copy_targets{{}, dests, sizes});
    copy_op zero;
    zero.kind = copy_kind::zero;
    zero.box = byte_box{.dst_row_bytes = 8, .dst_pitch = 8, .rows = 2};
    e.submit(std::span(&zero, 1));  // fits
    zero.box.dst_offset = 8;
    CHECK_THROWS_WITH_AS(e.submit(std::span(&zero, 1)), doctest::Contains("beyond"), error);
    copy_op bad;
    bad.file = 0;
    bad.box = byte_box{.src_row_bytes = 8, .dst_row_bytes = 8, .rows = 1};
    CHECK_THROWS_WITH_AS(e.submit(std::span(&bad, 1)), doctest::Contains("no such file"), error);
    e.wait();  // the queued zero op
    std::vector<std::byte> back(16);
    dev.read(d, back.data(), 16);
    CHECK(back == std::vector<std::byte>(16, std::byte{0}));
    dev.free_for_test(d);
    current_fake = nullptr;
}

TEST_CASE("an unsupported conversion op is refused by submit") {
    fake_device dev;
    fake_engine e({}, fake_transport{&dev});
    temp_folder dir;
    write_one_tensor(dir.path() / "x.safetensors", dtype::i32, 2, 8, 1);
    const file_reader f(dir.path() / "x.safetensors");
    const read_source src[] = {read_source{&f, {}}};
    std::vector<std::byte> host(64);
    std::byte* const dests[] = {host.data()};
    const std::uint64_t sizes[] = {64};
    e.bind(copy_targets{src, dests, sizes});
    copy_op op;
    op.file = 0;
    op.box = byte_box{.src_row_bytes = 8, .dst_row_bytes = 8, .rows = 1};
    op.src_dtype = dtype::i32;
    op.dst_dtype = dtype::f32;
    (void)expect_error(errc::unsupported_conversion, [&] { e.submit(std::span(&op, 1)); });
}

TEST_CASE("load<T>() with a device factory plans for its device and runs its engine") {
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    fake_device dev;
    current_fake = &dev;
    {
        const auto host = load<host_tensor>(dir.path().string(), {.rank = 1, .world = 4});
        const auto dv = load<fake_tensor>(dir.path().string(), {.rank = 1, .world = 4});
        for (const auto& name : host.names()) {
            CAPTURE(name);
            const auto b = host.at(name).bytes();
            CHECK(dv.at(name).bytes() == std::vector<std::byte>(b.begin(), b.end()));
        }
        CHECK(dev.count("cudaMemcpyAsync") + dev.count("cudaMemcpy2DAsync") > 0);
        // with an engine of the caller's
        fake_engine e({.policy = cuda_policy::registered}, fake_transport{&dev});
        const auto dv2 = load<fake_tensor>(dir.path().string(), {.rank = 1, .world = 4}, e);
        CHECK(dv2.at("model.layers.0.mlp.down_proj.weight").bytes() ==
              dv.at("model.layers.0.mlp.down_proj.weight").bytes());
        CHECK(dev.count("cudaHostRegister") > 0);
        // created parameters are initialised on the host and uploaded
        schema s = schema::replicate_all();
        parameter_meta p;
        p.name = "adapter.scale";
        p.layout = make_split(0);
        p.init = init_ones();
        s.add(p);
        load_options o{.rank = 1, .world = 2};
        o.plan.created_shapes = {{"adapter.scale", shape{8}}};
        o.plan.dtype_per_parameter = {{"adapter.*", dtype::bf16}};
        const auto a = load<fake_tensor>(dir.path().string(), s, o);
        std::vector<std::byte> ones(8);
        for (std::size_t i = 0; i < 8; i += 2) {
            ones[i] = std::byte{0x80};
            ones[i + 1] = std::byte{0x3f};
        }
        CHECK(a.at("adapter.scale").bytes() == ones);
        CHECK(dev.count("cudaMemcpy2D") == 1);
    }
    CHECK(violations_of(dev) == "");
    CHECK(dev.clean());
    current_fake = nullptr;
}

TEST_CASE("an engine fills the device its plan names, or the load is refused") {
    static_assert(device_copy_engine<fake_engine> && !host_copy_engine<fake_engine>);
    static_assert(device_tensor<fake_tensor> && device_tensor<cuda_tensor>);
    model_spec m;
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    fake_device dev;
    current_fake = &dev;
    {
        fake_engine e({.device = 0}, fake_transport{&dev});
        CHECK(e.target_device() == device{device_kind::cuda, 0});
        CHECK_FALSE(e.reader_options().direct);
        CHECK(e.take_notes().empty());
        // the options name device 1, the engine fills device 0: refused before any allocation
        load_options o{.rank = 1, .world = 4};
        o.plan.device = {device_kind::cuda, 1};
        CHECK_THROWS_WITH_AS((void)load<fake_tensor>(dir.path().string(), o, e),
                             doctest::Contains("planned for a cuda device (cuda:1); the engine "
                                               "fills cuda:0 (one engine per device"),
                             error);
        CHECK(dev.live_device() == 0);
        // a plan built for device 1 run by hand with the same engine: the same check
        const checkpoint ckpt = checkpoint::open(dir.path().string());
        const load_plan plan = load_plan::build(ckpt, {1, 4}, o.plan);
        CHECK_THROWS_WITH_AS((void)load_tensors<fake_tensor>(plan, e),
                             doctest::Contains("one engine per device"), error);
        // the options name no device: the plan is for the engine's
        fake_engine e1({.device = 1, .buffer_bytes = 4096}, fake_transport{&dev});
        dev.expected_device = 1;
        const auto on1 = load<fake_tensor>(dir.path().string(), {.rank = 1, .world = 4}, e1);
        CHECK(on1.size() > 0);
    }
    CHECK(violations_of(dev) == "");
    CHECK(dev.clean());
    current_fake = nullptr;
}

TEST_CASE("cuda_tensor and the allocator refuse bad input without touching a GPU") {
    CHECK_THROWS_WITH_AS(
        set_cuda_allocator({.allocate = [](std::size_t, int) -> void* { return nullptr; }}),
        doctest::Contains("both"), error);
    set_cuda_allocator({});  // back to cudaMalloc: accepted
    tensor_request r;
    r.bytes = 16;
    CHECK_THROWS_WITH_AS((void)tensor_factory<cuda_tensor>::allocate(r),
                         doctest::Contains("CUDA device"), error);
    cuda_tensor empty;
    std::vector<std::byte> out(4);
    CHECK_THROWS_AS(empty.copy_to_host(out), error);
    CHECK(tensor_factory<cuda_tensor>::default_device() == device{device_kind::cuda, 0});
    const cudart_transport t;
    CHECK(t.error_name(2).find("cudaErrorMemoryAllocation") == 0);
}
