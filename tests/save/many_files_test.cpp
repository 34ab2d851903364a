// Checkpoints of more files than the process may open at once: load, export and merge read
// through a bounded file_cache, so 300 shards go through under RLIMIT_NOFILE 128.
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "../load/model_gen.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/load/loader.hpp"
#include "safeshard/save/export.hpp"
#include "safeshard/save/merge.hpp"

using namespace safeshard;
using safeshard::test::model_spec;
using safeshard::test::temp_folder;
namespace fs = std::filesystem;

namespace {

using rank_bytes = std::map<std::string, std::vector<std::byte>>;

rank_bytes load_rank(const fs::path& dir, std::uint32_t rank, std::uint32_t world) {
    const auto model = load<host_tensor>(dir.string(), {.rank = rank, .world = world});
    rank_bytes out;
    for (const auto& name : model.names()) {
        const auto b = model.at(name).bytes();
        out[name].assign(b.begin(), b.end());
    }
    return out;
}

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::size_t count_files(const fs::path& dir, std::string_view suffix) {
    std::size_t n = 0;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.path().string().ends_with(suffix)) ++n;
    return n;
}

// Runs `work` in a child whose RLIMIT_NOFILE is `limit` (soft and hard); its exit status.
template <class F>
int with_fd_limit(rlim_t limit, F&& work) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const rlimit l{limit, limit};
        if (::setrlimit(RLIMIT_NOFILE, &l) != 0) ::_exit(90);
        const int rc = work();
        std::fflush(nullptr);
        ::_exit(rc);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    return WEXITSTATUS(status);
}

// Runs one step, printing what it threw; false when it failed.
template <class F>
bool step(const char* what, F&& f) {
    try {
        return f();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s under RLIMIT_NOFILE 128: %s\n", what, e.what());
        return false;
    }
}

}  // namespace

TEST_CASE("300 shards under RLIMIT_NOFILE 128: load, export and merge go through, bit-exact") {
    temp_folder dir;
    model_spec m;
    m.layers = 33;  // 300 tensors, one per shard
    m.shards = 300;
    const fs::path in = dir.path() / "in", ex = dir.path() / "ex", ex_ref = dir.path() / "ex_ref",
                   merged = dir.path() / "merged";
    fs::create_directories(in);
    test::write_checkpoint(in, m, test::make_tensors(m));
    REQUIRE(count_files(in, ".safetensors") == 300);

    // Without the limit: each rank as the loader cuts it, and an export of a file per tensor
    // (600 rank files) for the merge to read.
    const rank_bytes ref[2] = {load_rank(in, 0, 2), load_rank(in, 1, 2)};
    export_options eo;
    eo.world = 2;
    eo.max_shard_size = 1;
    (void)export_checkpoint(checkpoint::open(in.string()), ex_ref, eo);
    REQUIRE(count_files(ex_ref / export_rank_folder(0), ".safetensors") >= 128);

    const int failed = with_fd_limit(128, [&] {
        int mask = 0;
        if (!step("load",
                  [&] { return load_rank(in, 0, 2) == ref[0] && load_rank(in, 1, 2) == ref[1]; }))
            mask |= 1;
        if (!step("export", [&] {
                export_options o;
                o.world = 2;
                (void)export_checkpoint(checkpoint::open(in.string()), ex, o);
                return true;
            }))
            mask |= 2;
        if (!step("merge", [&] {
                (void)merge_export(ex_ref, merged);
                return true;
            }))
            mask |= 4;
        return mask;
    });
    CHECK_MESSAGE((failed & 1) == 0, "load");
    CHECK_MESSAGE((failed & 2) == 0, "export");
    CHECK_MESSAGE((failed & 4) == 0, "merge");
    REQUIRE(failed == 0);

    // What the limited run wrote: each rank loads back as the loader cuts it, and the merge
    // is the input, byte for byte.
    for (std::uint32_t r = 0; r < 2; ++r)
        CHECK(load_rank(ex / export_rank_folder(r), r, 2) == ref[r]);
    const auto a = checkpoint::open(in.string());
    const auto b = checkpoint::open(merged.string());
    REQUIRE(a.tensor_count() == b.tensor_count());
    for (const auto& ta : a.tensors()) {
        CAPTURE(ta.tensor.name());
        const auto tb = b.tensor(ta.tensor.name()).tensor;
        CHECK(tb.dtype() == ta.tensor.dtype());
        CHECK(tb.shape() == ta.tensor.shape());
        const auto x = ta.tensor.bytes();
        const auto y = tb.bytes();
        CHECK(std::equal(x.begin(), x.end(), y.begin(), y.end()));
    }
    CHECK(slurp(merged / "config.json") == slurp(in / "config.json"));
}
