// host_engine's read modes: every mode gives the default's bytes (world 1, 2, 4, 8, with and
// without conversion); read_mode::direct reads with O_DIRECT (emulated through the syscall seam
// with its alignment rules, and the real one where the temp folder takes it) and falls back,
// saying so in the load_report, where the file system refuses it or is tmpfs (injected);
// strided_read::automatic's mapping path falls back where the kernel or the file says no.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "../io/file_change.hpp"
#include "../support/expect_error.hpp"
#include "../support/fault_hooks.hpp"
#include "model_gen.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/io/syscalls.hpp"
#include "safeshard/load/host_engine.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/load/plan.hpp"

using namespace safeshard;
using safeshard::test::expect_error;
using namespace safeshard::test;
namespace fs = std::filesystem;

namespace {

// Larger than model_gen's default so that direct reads span many blocks and pieces.
model_spec wide_model() {
    model_spec m;
    m.layers = 1;
    m.hidden = 512;
    m.intermediate = 1536;
    m.heads = 8;
    m.kv_heads = 2;
    m.head_dim = 64;
    m.vocab = 1000;
    return m;
}

struct named_bytes {
    std::vector<std::string> names;
    std::vector<std::vector<std::byte>> bytes;
    load_report report;
};

named_bytes load_all(const fs::path& dir, std::uint32_t rank, std::uint32_t world, dtype_policy d,
                     host_engine_options eo) {
    load_options o{.rank = rank, .world = world};
    o.plan.dtype = d;
    o.engine = eo;
    auto model = load<host_tensor>(dir.string(), o);
    named_bytes out;
    for (const auto& n : model.names()) {
        out.names.push_back(n);
        const auto b = model.at(n).bytes();
        out.bytes.emplace_back(b.begin(), b.end());
    }
    out.report = model.report;
    return out;
}

bool has_note(const load_report& r, const std::string& part) {
    for (const auto& n : r.notes)
        if (n.find(part) != std::string::npos) return true;
    return false;
}

bool on_tmpfs(const fs::path& p) {
    struct statfs s {};
    return ::statfs(p.c_str(), &s) == 0 && static_cast<long>(s.f_type) == tmpfs_magic;
}

// Where O_DIRECT really bypasses the page cache: the temp folder if it is on a disk-backed
// file system that accepts O_DIRECT, else none (the tests that need one say so and skip).
bool direct_capable(const fs::path& dir) {
    if (on_tmpfs(dir)) return false;
    const fs::path probe = dir / "probe";
    { write_text(probe, std::string(8192, 'x')); }
    const int fd = ::open(probe.c_str(), O_RDONLY | O_DIRECT);
    if (fd >= 0) ::close(fd);
    fs::remove(probe);
    return fd >= 0;
}

// Pages of the file in the page cache.
std::size_t resident_pages(const fs::path& p) {
    const int fd = ::open(p.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    const auto size = static_cast<std::size_t>(fs::file_size(p));
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    REQUIRE(m != MAP_FAILED);
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    std::vector<unsigned char> v((size + page - 1) / page);
    REQUIRE(::mincore(m, size, v.data()) == 0);
    ::munmap(m, size);
    std::size_t n = 0;
    for (auto c : v) n += c & 1;
    return n;
}

// Drops the file's clean pages from the page cache.
void evict(const fs::path& p) {
    const int fd = ::open(p.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    (void)::fdatasync(fd);
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
}

std::vector<fs::path> shard_files(const fs::path& dir) {
    std::vector<fs::path> v;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.path().extension() == ".safetensors") v.push_back(e.path());
    return v;
}

// A kernel before 5.14: MADV_POPULATE_READ unknown.
struct no_populate : detail::syscall_hooks {
    int populate_calls = 0;
    int willneed_calls = 0;
    int madvise(void* a, std::size_t n, int advice) override {
        if (advice == detail::madv_populate_read) {
            ++populate_calls;
            errno = EINVAL;
            return -1;
        }
        if (advice == MADV_WILLNEED) ++willneed_calls;
        return detail::syscall_hooks::madvise(a, n, advice);
    }
};

// AnonHugePages of the mapping that holds `p` (/proc/self/smaps), in KiB.
// The rest of the line starting with `field` (e.g. "VmFlags:") in /proc/self/smaps, for the
// mapping holding p; empty when there is none.
std::string smaps_field(const void* p, std::string_view field) {
    std::ifstream smaps("/proc/self/smaps");
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    std::string line;
    bool inside = false;
    while (std::getline(smaps, line)) {
        unsigned long lo = 0, hi = 0;
        if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 &&
            line.find(':') > line.find(' ')) {
            inside = a >= lo && a < hi;
            continue;
        }
        if (inside && line.starts_with(field)) return line.substr(field.size());
    }
    return {};
}

std::uint64_t anon_huge_kib(const void* p) {
    return std::strtoull(smaps_field(p, "AnonHugePages:").c_str(), nullptr, 10);
}

// The VmFlags of the mapping holding p ("hg": madvise(MADV_HUGEPAGE) was applied to it).
std::string vm_flags(const void* p) { return smaps_field(p, "VmFlags:") + " "; }

}  // namespace

TEST_CASE("every read mode gives the default's bytes: world 1, 2, 4, 8, with conversions") {
    const model_spec m = wide_model();
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const bool direct_here = direct_capable(dir.path());
    if (!direct_here) MESSAGE("the temp folder takes no O_DIRECT: direct mode falls back here");
    struct mode {
        const char* name;
        host_engine_options o;
    };
    const std::vector<mode> modes = {
        {"per_row", {.threads = 2, .strided = strided_read::per_row}},
        {"whole_rows", {.threads = 2, .strided = strided_read::whole_rows}},
        {"batched", {.threads = 2, .strided = strided_read::batched}},
        {"mmap", {.threads = 2, .mode = read_mode::mmap}},
        {"populate", {.threads = 2, .populate = true}},
        {"huge_pages", {.threads = 2, .huge_pages = true}},
        {"direct", {.threads = 2, .mode = read_mode::direct}},
        {"direct, small pieces",
         {.threads = 3, .mode = read_mode::direct, .chunk_bytes = 4096, .staging_bytes = 4096}},
        {"direct, default threads", {.mode = read_mode::direct}},
        {"automatic, one thread, small pieces",
         {.threads = 1, .chunk_bytes = 4096, .staging_bytes = 4096}},
    };
    for (const dtype_policy d :
         {dtype_policy::keep(), dtype_policy::fixed(dtype::f32), dtype_policy::fixed(dtype::f16)}) {
        for (std::uint32_t w : {1u, 2u, 4u, 8u}) {
            for (std::uint32_t r = 0; r < w; ++r) {
                CAPTURE(w);
                CAPTURE(r);
                CAPTURE(name(d.resolve(dtype::bf16, false)));
                const named_bytes want = load_all(dir.path(), r, w, d, {});
                CHECK(want.report.notes.empty());
                for (const auto& md : modes) {
                    CAPTURE(md.name);
                    const named_bytes got = load_all(dir.path(), r, w, d, md.o);
                    REQUIRE(got.names == want.names);
                    for (std::size_t i = 0; i < got.names.size(); ++i) {
                        CAPTURE(got.names[i]);
                        CHECK(got.bytes[i] == want.bytes[i]);
                    }
                    CHECK(got.report.bytes_written == want.report.bytes_written);
                    if (md.o.mode == read_mode::direct && direct_here) {
                        CHECK(got.report.notes.empty());
                        // aligned blocks around the rank's bytes: at least those, never less
                        CHECK(got.report.bytes_read >= want.report.bytes_read);
                    } else if (md.o.strided != strided_read::whole_rows) {
                        CHECK(got.report.bytes_read == want.report.bytes_read);
                    }
                }
            }
        }
    }
}

TEST_CASE("the default reads only the rank's bytes of a column split") {
    const model_spec m = wide_model();
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const load_plan plan = load_plan::build(ckpt, {3, 8});
    host_engine engine;  // strided_read::automatic
    CHECK(engine.options().strided == strided_read::automatic);
    auto model = load_tensors<host_tensor>(plan, engine);
    std::uint64_t padding = 0;  // rank 3's share of the padded vocabulary rows: zeros
    const auto e = expected_for("model.embed_tokens.weight", m,
                                make_tensors(m).at("model.embed_tokens.weight"), false, 8, 3);
    for (const auto& row : e.rows) padding += row ? 0 : m.hidden * 2 * 2;
    CHECK(model.report.bytes_read + padding == model.report.rank_bytes);
    CHECK(engine.direct_bytes_read() == 0);
}

TEST_CASE("direct mode on a disk-backed folder reads with O_DIRECT, past the page cache") {
    const model_spec m = wide_model();
    temp_folder dir;
    const auto src = make_tensors(m);
    write_checkpoint(dir.path(), m, src);
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const load_plan plan = load_plan::build(ckpt, {1, 4});
    // A direct load of rank 1 of 4: every byte read with O_DIRECT, and the right ones.
    const auto direct_load = [&] {
        host_engine engine({.threads = 2, .mode = read_mode::direct});
        CHECK(engine.reader_options().direct);
        // A piece is copied out while the next one is read: progress counts finished pieces.
        std::uint64_t most = 0, of = 0, calls = 0;
        engine.set_progress([&](std::uint64_t done, std::uint64_t total) {
            most = std::max(most, done);
            of = total;
            ++calls;
        });
        load_report r;
        auto model = load_tensors<host_tensor>(plan, engine, &r);
        CHECK(r.notes.empty());
        CHECK(calls > 2);
        CHECK(of == plan.total_bytes());
        CHECK(most == of);
        CHECK(engine.direct_bytes_read() > 0);
        CHECK(engine.direct_bytes_read() == r.bytes_read);
        CHECK(r.bytes_read >= r.rank_bytes / 2);  // rank 1 of 4 holds some zero padding
        const auto& down = src.at("model.layers.0.mlp.down_proj.weight");
        const auto cut = expected_for("model.layers.0.mlp.down_proj.weight", m, down, false, 4, 1);
        const host_tensor& t = model.at("model.layers.0.mlp.down_proj.weight");
        std::vector<std::uint16_t> codes(t.size_bytes() / 2);
        std::memcpy(codes.data(), t.data(), t.size_bytes());
        CHECK(codes == take(down, cut.rows, cut.cols));
        return r;
    };

    SUBCASE("O_DIRECT emulated on a disk-backed file system: nothing read past it") {
        fault_hooks hooks;
        hooks.emulate_direct = file_reader::direct_alignment;
        hooks.fstatfs_type = ext4_magic;
        const detail::scoped_syscall_hooks scope(hooks);
        const load_report r = direct_load();
        CHECK(hooks.direct_opens == 3);   // each shard file, opened with O_DIRECT
        CHECK(hooks.fstatfs_calls == 3);  // and asked once what file system holds it
        // Nothing read past O_DIRECT (through the page cache)...
        CHECK(hooks.buffered_read_bytes == 0);
#if !defined(SAFESHARD_HAVE_LIBURING)
        // ...every read kept to its rules. (Built with liburing, the direct reads go through
        // io_uring, which the seam does not see: there the real O_DIRECT below checks them.)
        CHECK(hooks.misaligned_reads == 0);
        CHECK(hooks.direct_read_bytes == r.bytes_read);
#endif
        // ...while a buffered load of the same plan reads through it.
        host_engine buffered({.threads = 2, .strided = strided_read::per_row});
        (void)load_tensors<host_tensor>(plan, buffered);
        CHECK(hooks.buffered_read_bytes >= r.rank_bytes / 2);
    }

    SUBCASE("real O_DIRECT, where the temp folder takes it: the page cache is left alone") {
        if (!direct_capable(dir.path())) {
            MESSAGE("real O_DIRECT variant not run: " << dir.path()
                                                      << " is tmpfs or refuses O_DIRECT");
            return;
        }
        for (const auto& f : shard_files(dir.path())) evict(f);
        std::size_t cached_before = 0;
        for (const auto& f : shard_files(dir.path())) cached_before += resident_pages(f);
        (void)direct_load();
        // The pages the checkpoint's own mapping holds (headers) stay cached; the rest went.
        std::size_t cached_after = 0, pages = 0;
        for (const auto& f : shard_files(dir.path())) {
            cached_after += resident_pages(f);
            pages += (fs::file_size(f) + 4095) / 4096;
        }
        // Whether the kernel dropped the pages is its business (dirty or shared pages stay):
        // without a cold cache there is nothing to compare.
        if (cached_before * 2 > pages) {
            MESSAGE("posix_fadvise(DONTNEED) left " << cached_before << " of " << pages
                                                    << " pages cached: page-cache check skipped");
            return;
        }
        CHECK(cached_after == cached_before);  // O_DIRECT left the page cache alone
        host_engine buffered({.threads = 2, .strided = strided_read::per_row});
        (void)load_tensors<host_tensor>(plan, buffered);
        std::size_t cached_buffered = 0;
        for (const auto& f : shard_files(dir.path())) cached_buffered += resident_pages(f);
        CHECK(cached_buffered > cached_before + pages / 4);  // and pread fills it
    }
}

TEST_CASE("direct mode where the file system refuses O_DIRECT: buffered reads and a note") {
    const model_spec m = wide_model();
    temp_folder dir;
    const auto src = make_tensors(m);
    write_checkpoint(dir.path(), m, src);
    const named_bytes want = load_all(dir.path(), 2, 4, dtype_policy::fixed(dtype::f32), {});
    fault_hooks hooks;
    hooks.open_direct_errno = EINVAL;  // as tmpfs before Linux 6.6 and some FUSE file systems say
    const detail::scoped_syscall_hooks scope(hooks);
    for (const auto& eo :
         {host_engine_options{.threads = 2, .mode = read_mode::direct},
          host_engine_options{
              .threads = 1, .mode = read_mode::direct, .strided = strided_read::per_row}}) {
        const named_bytes got = load_all(dir.path(), 2, 4, dtype_policy::fixed(dtype::f32), eo);
        CHECK(got.bytes == want.bytes);
        REQUIRE(got.report.notes.size() == 3);  // one per shard file
        CHECK(has_note(got.report, "O_DIRECT refused by the file system"));
        CHECK(has_note(got.report, "model-00001-of-00003.safetensors"));
        CHECK(to_string(got.report).find("note: ") != std::string::npos);
        CHECK(got.report.bytes_read == want.report.bytes_read);
    }
}

TEST_CASE("direct mode on tmpfs or ramfs: read through the page cache, and said") {
    const model_spec m = wide_model();
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const named_bytes want = load_all(dir.path(), 1, 8, dtype_policy::fixed(dtype::f32), {});
    // The load of rank 1 of 8 in direct mode from `at`, which the engine finds on tmpfs.
    const auto tmpfs_load = [&](const fs::path& at) {
        const checkpoint ckpt = checkpoint::open(at.string());
        const load_plan plan =
            load_plan::build(ckpt, {1, 8}, {.dtype = dtype_policy::fixed(dtype::f32)});
        host_engine engine({.threads = 2, .mode = read_mode::direct});
        load_report r;
        auto model = load_tensors<host_tensor>(plan, engine, &r);
        CHECK(engine.direct_bytes_read() == 0);
        CHECK(r.bytes_read == want.report.bytes_read);
        std::size_t i = 0;
        for (const auto& n : model.names()) {
            CAPTURE(n);
            const auto b = model.at(n).bytes();
            CHECK(std::vector<std::byte>(b.begin(), b.end()) == want.bytes[i++]);
        }
        return r;
    };
    // Linux 6.6 and later take O_DIRECT on tmpfs: the engine asks the file system and reads
    // the page cache through the mapping instead (older kernels refuse O_DIRECT at open: the
    // refusal's test above).
    for (const long type : {tmpfs_magic, ramfs_magic}) {
        CAPTURE(type);
        fault_hooks hooks;
        hooks.emulate_direct = file_reader::direct_alignment;
        hooks.fstatfs_type = type;
        const detail::scoped_syscall_hooks scope(hooks);
        const load_report r = tmpfs_load(dir.path());
        CHECK(hooks.direct_opens == 3);
        CHECK(hooks.fstatfs_calls == 3);
        CHECK(hooks.direct_read_bytes == 0);
        REQUIRE(r.notes.size() == 3);  // one per shard file
        for (const auto& f : shard_files(dir.path()))
            CHECK(has_note(r, f.string() +
                                  ": on tmpfs (files in memory, O_DIRECT bypasses nothing); read "
                                  "through the page cache instead"));
        CHECK(to_string(r).find("note: ") != std::string::npos);
    }

    // The same on a real tmpfs, where the machine has one at /dev/shm: either note.
    const fs::path shm = "/dev/shm";
    if (!fs::is_directory(shm) || !on_tmpfs(shm)) return;
    const fs::path at = shm / ("safeshard-read-modes-" + std::to_string(::getpid()));
    fs::remove_all(at);
    fs::create_directories(at);
    struct cleanup {
        fs::path p;
        ~cleanup() {
            std::error_code ec;
            fs::remove_all(p, ec);
        }
    } c{at};
    write_checkpoint(at, m, make_tensors(m));
    const load_report r = tmpfs_load(at);
    REQUIRE(r.notes.size() == 3);
    CHECK((has_note(r, "on tmpfs") || has_note(r, "O_DIRECT refused")));
}

TEST_CASE("automatic without MADV_POPULATE_READ (before Linux 5.14): WILLNEED, and a note") {
    const model_spec m = wide_model();
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const named_bytes want = load_all(dir.path(), 5, 8, dtype_policy::fixed(dtype::f32), {});
    no_populate hooks;
    {
        const detail::scoped_syscall_hooks scope(hooks);
        const named_bytes got = load_all(dir.path(), 5, 8, dtype_policy::fixed(dtype::f32),
                                         {.threads = 1, .populate = true});
        CHECK(got.bytes == want.bytes);
        CHECK(has_note(got.report, "MADV_POPULATE_READ"));
        CHECK(got.report.bytes_read == want.report.bytes_read);
    }
    CHECK(hooks.populate_calls == 1);  // asked once, then remembered
    CHECK(hooks.willneed_calls > 0);
    // Without the option the mapping is not advised at all.
    no_populate quiet;
    const detail::scoped_syscall_hooks scope(quiet);
    const named_bytes got = load_all(dir.path(), 5, 8, dtype_policy::fixed(dtype::f32), {});
    CHECK(got.bytes == want.bytes);
    CHECK(got.report.notes.empty());
    CHECK(quiet.populate_calls == 0);
    CHECK(quiet.willneed_calls == 0);
}

TEST_CASE(
    "a shard truncated after planning: direct, populate, mmap and automatic modes say I/O error") {
    const model_spec m = wide_model();
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const checkpoint ckpt = checkpoint::open(dir.path().string());
    const load_plan plan =
        load_plan::build(ckpt, {3, 8}, {.dtype = dtype_policy::fixed(dtype::f32)});
    const auto f = dir.path() / "model-00002-of-00003.safetensors";
    fs::resize_file(f, fs::file_size(f) / 2);
    for (const auto& eo :
         {host_engine_options{.threads = 2, .mode = read_mode::direct},
          host_engine_options{.threads = 2, .populate = true}, host_engine_options{.threads = 1},
          host_engine_options{.threads = 2, .mode = read_mode::mmap}}) {
        host_engine engine(eo);
        {
            const auto e = expect_error(errc::io_error,
                                        [&] { (void)load_tensors<host_tensor>(plan, engine); });
            CHECK(std::string(e.what()).find("model-00002-of-00003") != std::string::npos);
        }
    }
}

TEST_CASE("huge_pages: each destination is advised MADV_HUGEPAGE on the whole pages inside it") {
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    // A fresh 64 MiB tensor (mmap-ed by malloc), a destination that starts and ends inside a
    // page, and one of less than two whole pages (nothing to gain: not advised).
    host_tensor big(dtype::u8, shape{std::uint64_t{64} << 20}, std::size_t{64} << 20);
    std::vector<std::byte> odd(9 * page), small(3 * page);
    const auto in_page = [&](std::vector<std::byte>& v, std::uintptr_t at) {
        const auto a = reinterpret_cast<std::uintptr_t>(v.data());
        return v.data() + ((a + page - 1) / page * page - a) + at;
    };
    std::byte* const addrs[] = {big.data(), in_page(odd, 100), in_page(small, 5)};
    const std::uint64_t sizes[] = {big.size_bytes(), 6 * page + 50, page + page / 2};
    std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string modes;
    std::getline(thp, modes);
    for (const bool huge : {false, true}) {
        CAPTURE(huge);
        fault_hooks hooks;
        const detail::scoped_syscall_hooks scope(hooks);
        host_engine e({.threads = 1, .huge_pages = huge});
        e.bind(copy_targets{{}, addrs, sizes});
        copy_op op;
        op.kind = copy_kind::zero;
        op.box.rows = 1;
        op.box.dst_row_bytes = sizes[0];
        op.box.dst_pitch = sizes[0];
        e.submit(std::span(&op, 1));
        e.wait();
        CHECK(addrs[0][sizes[0] - 1] == std::byte{0});
        const auto advised = hooks.advised(MADV_HUGEPAGE);
        if (!huge) {
            CHECK(advised.empty());
            continue;
        }
        REQUIRE(advised.size() == 2);  // the small destination is left out
        for (std::size_t i = 0; i < advised.size(); ++i) {
            CAPTURE(i);
            const auto lo = reinterpret_cast<std::uintptr_t>(addrs[i]);
            const std::uintptr_t hi = lo + sizes[i];
            const auto& a = advised[i];
            CHECK(a.addr % page == 0);
            CHECK(a.length % page == 0);
            CHECK(a.addr >= lo);  // nothing outside the destination...
            CHECK(a.addr + a.length <= hi);
            CHECK(a.addr < lo + page);  // ...and every whole page inside it
            CHECK(a.addr + a.length + page > hi);
        }
        CHECK(advised[1].addr == reinterpret_cast<std::uintptr_t>(addrs[1]) - 100 + page);
        CHECK(advised[1].length == 5 * page);
        // Where transparent huge pages are in madvise mode, the kernel took the advice (whether
        // it found free 2 MiB pages to honour it depends on the machine's fragmentation, so that
        // is reported, not asserted).
        if (modes.find("[madvise]") == std::string::npos) continue;
        const std::byte* middle = addrs[0] + sizes[0] / 2;
        CHECK(vm_flags(middle).find(" hg ") != std::string::npos);
        MESSAGE("huge_pages: " << anon_huge_kib(middle) << " KiB in huge pages");
    }
}

namespace {

// Records the ranges given to madvise(MADV_POPULATE_WRITE); with `refuse`, says EINVAL (a
// kernel before Linux 5.14) instead.
struct watch_prefault : detail::syscall_hooks {
    bool refuse = false;
    std::mutex m;
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
    int madvise(void* a, std::size_t n, int advice) override {
        if (advice == detail::madv_populate_write) {
            const auto lo = reinterpret_cast<std::uintptr_t>(a);
            {
                const std::lock_guard lock(m);
                ranges.emplace_back(lo, lo + n);
            }
            if (refuse) {
                errno = EINVAL;
                return -1;
            }
        }
        return detail::syscall_hooks::madvise(a, n, advice);
    }
    // The longest stretch of [lo, hi) that no recorded range covers.
    [[nodiscard]] std::uintptr_t longest_gap(std::uintptr_t lo, std::uintptr_t hi) {
        std::sort(ranges.begin(), ranges.end());
        std::uintptr_t gap = 0;
        for (const auto& [b, e] : ranges) {
            if (e <= lo || b >= hi) continue;
            if (b > lo) gap = std::max(gap, b - lo);
            lo = std::max(lo, e);
        }
        return hi > lo ? std::max(gap, hi - lo) : gap;
    }
};

}  // namespace

TEST_CASE("prefault: each piece of 64 KiB or more is populated before it is written") {
    const model_spec m = wide_model();
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    for (const dtype_policy d : {dtype_policy::keep(), dtype_policy::fixed(dtype::f32)}) {
        named_bytes want;
        {
            watch_prefault off;
            const detail::scoped_syscall_hooks scope(off);
            want = load_all(dir.path(), 1, 2, d, {.threads = 2, .prefault = false});
            CHECK(off.ranges.empty());
        }
        watch_prefault on;
        const detail::scoped_syscall_hooks scope(on);
        load_options o{.rank = 1, .world = 2};
        o.plan.dtype = d;
        o.engine = {.threads = 2};
        CHECK(o.engine.prefault);  // the default
        const auto model = load<host_tensor>(dir.path().string(), o);
        REQUIRE(!on.ranges.empty());
        for (const auto& [lo, hi] : on.ranges) CHECK(hi - lo >= host_engine::prefault_min_bytes);
        std::size_t i = 0, large = 0;
        for (const auto& n : model.names()) {
            CAPTURE(n);
            const auto b = model.at(n).bytes();
            CHECK(std::vector<std::byte>(b.begin(), b.end()) == want.bytes[i++]);
            if (b.size() < host_engine::prefault_min_bytes) continue;
            ++large;
            // Pieces under 64 KiB (here the padded vocabulary rows' zeros) are left to fault.
            const auto lo = reinterpret_cast<std::uintptr_t>(b.data());
            CHECK(on.longest_gap(lo, lo + b.size()) < host_engine::prefault_min_bytes);
        }
        CHECK(large > 3);
    }
}

TEST_CASE("prefault refused (a kernel before Linux 5.14): asked once, the same bytes") {
    const model_spec m = wide_model();
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const named_bytes want = load_all(dir.path(), 3, 8, dtype_policy::keep(), {.prefault = false});
    watch_prefault refused;
    refused.refuse = true;
    const detail::scoped_syscall_hooks scope(refused);
    const named_bytes got = load_all(dir.path(), 3, 8, dtype_policy::keep(), {.threads = 1});
    CHECK(got.bytes == want.bytes);
    CHECK(refused.ranges.size() == 1);  // the one worker remembers the refusal
    CHECK(got.report.bytes_read == want.report.bytes_read);
}

TEST_CASE("direct mode reads a rank's strided rows at the file system's O_DIRECT alignment") {
    const model_spec m = wide_model();
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    const auto shards = shard_files(dir.path());
    const named_bytes want = load_all(dir.path(), 3, 8, dtype_policy::keep(), {});
    const host_engine_options direct{.threads = 2, .mode = read_mode::direct};
    // The reads at the alignment statx gives, against those at 4096 where statx says nothing;
    // `emulated`: O_DIRECT emulated at that alignment on a disk-backed file system, 0: real.
    const auto check_at = [&](std::size_t emulated) {
        const auto setup = [&](fault_hooks& h) {
            h.emulate_direct = emulated;
            if (emulated != 0) h.fstatfs_type = ext4_magic;
        };
        std::size_t align = 0;
        named_bytes got, blocks;
        {
            fault_hooks hooks;
            setup(hooks);
            const detail::scoped_syscall_hooks scope(hooks);
            align = file_reader(shards.front(), {.direct = true}).direct_io_align();
            CHECK(file_reader(shards.front()).direct_io_align() == file_reader::direct_alignment);
            got = load_all(dir.path(), 3, 8, dtype_policy::keep(), direct);
            CHECK(hooks.misaligned_reads == 0);  // those the seam sees (not io_uring's)
        }
        MESSAGE("O_DIRECT alignment " << (emulated != 0 ? "emulated" : "of " + dir.path().string())
                                      << ": " << align);
        if (emulated != 0) CHECK(align == emulated);
        CHECK(align >= 1);
        CHECK(align <= file_reader::direct_alignment);
        CHECK((align & (align - 1)) == 0);
        // statx refused (ENOSYS: before Linux 4.11, or a seccomp filter): alignment unknown.
        fault_hooks no_statx;
        setup(no_statx);
        no_statx.fstatx_errno = ENOSYS;
        {
            const detail::scoped_syscall_hooks scope(no_statx);
            blocks = load_all(dir.path(), 3, 8, dtype_policy::keep(), direct);
        }
        CHECK(no_statx.fstatx_calls > 0);
        CHECK(no_statx.misaligned_reads == 0);
        CHECK(got.bytes == want.bytes);
        CHECK(blocks.bytes == want.bytes);
        CHECK(got.report.notes.empty());
        CHECK(blocks.report.notes.empty());
        // Rows of 128-384 bytes every 1-3 KiB: 4 KiB blocks read several times the rank's bytes.
        MESSAGE("bytes read / rank bytes: "
                << double(got.report.bytes_read) / got.report.rank_bytes << " at " << align << ", "
                << double(blocks.report.bytes_read) / blocks.report.rank_bytes << " at 4096");
        CHECK(got.report.bytes_read <= blocks.report.bytes_read);
        if (align < file_reader::direct_alignment)
            CHECK(got.report.bytes_read * 3 < blocks.report.bytes_read * 2);
    };
    SUBCASE("O_DIRECT emulated at 512 bytes, a disk's logical block") { check_at(512); }
    SUBCASE("real O_DIRECT, where the temp folder takes it") {
        if (!direct_capable(dir.path())) {
            MESSAGE("real O_DIRECT variant not run: " << dir.path()
                                                      << " is tmpfs or refuses O_DIRECT");
            return;
        }
        check_at(0);
    }
}

TEST_CASE("a shard cut short between the size check and the copy out of its mapping: io_error") {
    const model_spec m = wide_model();
    temp_folder dir;
    write_checkpoint(dir.path(), m, make_tensors(m));
    // The shard of a column-split tensor: its rank's rows are strided, short, from the mapping.
    const std::string down = "model.layers.0.mlp.down_proj.weight";
    const fs::path f = checkpoint::open(dir.path().string()).tensor(down).file->path;
    const std::vector<std::byte> whole = read_bytes(f);
    struct mode_case {
        const char* what;
        dtype_policy dtype;
        host_engine_options eo;
    };
    std::vector<mode_case> cases = {
        {"mmap", dtype_policy::keep(), {.threads = 1, .mode = read_mode::mmap}},
        {"mmap, converting",
         dtype_policy::fixed(dtype::f32),
         {.threads = 1, .mode = read_mode::mmap}},
        {"automatic, converting", dtype_policy::fixed(dtype::f32), {.threads = 1}},
        {"automatic, strided rows", dtype_policy::keep(), {.threads = 1}},
        {"automatic, populate", dtype_policy::fixed(dtype::f32), {.threads = 1, .populate = true}},
    };
    if (on_tmpfs(dir.path()))  // direct mode copies out of the mapping there
        cases.push_back(
            {"direct on tmpfs", dtype_policy::keep(), {.threads = 1, .mode = read_mode::direct}});
    // One thread: the copy that faults is the first error (another thread's size check, after
    // the cut, would say so without any copy).
    for (const mode_case& c : cases) {
        CAPTURE(std::string(c.what));
        write_bytes(f, whole);
        const checkpoint ckpt = checkpoint::open(dir.path().string());
        const load_plan plan = load_plan::build(ckpt, {3, 8}, {.dtype = c.dtype});
        host_engine engine(c.eo);
        cut_after_size_check cut(f, ckpt.tensor(down).file->view.bytes());
        const detail::scoped_syscall_hooks scope(cut);
        {
            INFO("the file was cut: " << cut.done.load());
            const auto e = expect_error([&] { (void)load_tensors<host_tensor>(plan, engine); });
            CHECK(cut.done.load());
            CHECK(e.code() == errc::io_error);
            CHECK(e.file() == f.string());
            CHECK(std::string(e.what()).find("cut short while it was being read") !=
                  std::string::npos);
        }
    }
}
