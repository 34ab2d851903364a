// `safeshard convert` end to end: the built binary on generated checkpoints, re-read with the
// library; exit codes, out of space, SIGINT, and SIGKILL at random moments.
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/safetensors_writer.hpp"
#include "safeshard/load/convert.hpp"

using namespace safeshard;
namespace fs = std::filesystem;

namespace {

constexpr const char* config_json = R"({
  "model_type": "llama",
  "architectures": ["LlamaForCausalLM"],
  "hidden_size": 64,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "torch_dtype": "bfloat16",
  "vocab_size": 100
}
)";

class scratch {
public:
    scratch() {
        static int counter = 0;
        path_ =
            fs::temp_directory_path() / ("safeshard-convert-test-" + std::to_string(::getpid()) +
                                         "-" + std::to_string(counter++));
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    scratch(const scratch&) = delete;
    scratch& operator=(const scratch&) = delete;
    ~scratch() {
        if (mounted_) (void)::umount2(mounted_->c_str(), MNT_DETACH);
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    [[nodiscard]] fs::path operator/(const std::string& s) const { return path_ / s; }
    [[nodiscard]] const fs::path& path() const { return path_; }
    // A private tmpfs at `name`; false (with why) when mounting is not allowed.
    bool mount_tmpfs(const std::string& name, const std::string& options, std::string& why) {
        fs::create_directories(path_ / name);
        if (::mount("tmpfs", (path_ / name).c_str(), "tmpfs", 0, options.c_str()) != 0) {
            why = std::string("mount -t tmpfs failed: ") + std::strerror(errno);
            return false;
        }
        mounted_ = path_ / name;
        return true;
    }
    bool remount_read_only(const std::string& options) {
        return ::mount("tmpfs", mounted_->c_str(), "tmpfs", MS_REMOUNT | MS_RDONLY,
                       options.c_str()) == 0;
    }

private:
    fs::path path_;
    std::optional<fs::path> mounted_;
};

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_text(const fs::path& p, std::string_view s) {
    std::ofstream f(p, std::ios::binary);
    f << s;
}

// BF16 values of N(0, 1)-ish floats (finite, some negative), F32, and an I64 tensor.
std::vector<std::byte> values(dtype t, std::size_t n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.f, 1.f);
    std::vector<float> f(n);
    for (auto& v : f) v = dist(rng);
    std::vector<std::byte> out(n * byte_size(t));
    if (t == dtype::f32) {
        std::memcpy(out.data(), f.data(), out.size());
    } else if (t == dtype::i64) {
        for (std::size_t i = 0; i < n; ++i) {
            const std::int64_t v = static_cast<std::int64_t>(i) * 7 - 3;
            std::memcpy(out.data() + 8 * i, &v, 8);
        }
    } else {
        find_converter(dtype::f32, t)(reinterpret_cast<const std::byte*>(f.data()), out.data(), n);
    }
    return out;
}

// A two-file checkpoint with an index, config.json and a tokenizer file; `scale` multiplies the
// tensor sizes.
void make_checkpoint(const fs::path& dir, std::size_t scale = 1) {
    fs::create_directories(dir);
    struct spec {
        std::string name;
        dtype type;
        std::uint64_t rows, cols;
    };
    const std::vector<spec> files[2] = {
        {{"model.embed_tokens.weight", dtype::bf16, 100, 64 * scale},
         {"model.layers.0.mlp.weight", dtype::bf16, 64, 64 * scale},
         {"model.layers.0.norm.weight", dtype::f32, 1, 64 * scale}},
        {{"model.layers.1.mlp.weight", dtype::bf16, 64, 64 * scale},
         {"model.layers.1.norm.weight", dtype::f32, 1, 64 * scale},
         {"position_ids", dtype::i64, 1, 16}}};
    std::string weight_map;
    std::uint64_t total = 0;
    for (int f = 0; f < 2; ++f) {
        const std::string file = "model-0000" + std::to_string(f + 1) + "-of-00002.safetensors";
        std::vector<std::vector<std::byte>> storage;
        std::vector<tensor_data> tensors;
        std::uint32_t seed = 1;
        for (const auto& s : files[f]) {
            storage.push_back(values(s.type, s.rows * s.cols, seed++ + 10 * f));
            total += storage.back().size();
            weight_map += (weight_map.empty() ? "" : ",") + ("\"" + s.name + "\":\"" + file + "\"");
        }
        for (std::size_t i = 0; i < files[f].size(); ++i)
            tensors.push_back(tensor_data{files[f][i].name, files[f][i].type,
                                          shape{files[f][i].rows, files[f][i].cols}, storage[i]});
        save_file(dir / file, tensors, metadata_map{{"format", "pt"}});
    }
    write_text(dir / "model.safetensors.index.json",
               "{\"metadata\":{\"total_size\":" + std::to_string(total) + "},\"weight_map\":{" +
                   weight_map + "}}");
    write_text(dir / "config.json", config_json);
    write_text(dir / "tokenizer.json", "{\"version\": \"1.0\"}");
}

struct result {
    int rc = -1;
    std::string out;
    std::string err;
};

result run(const fs::path& scratch_dir, const std::string& args) {
    const auto o = scratch_dir / "stdout";
    const auto e = scratch_dir / "stderr";
    const std::string cmd =
        "'" SAFESHARD_EXE "' " + args + " >'" + o.string() + "' 2>'" + e.string() + "'";
    const int status = std::system(cmd.c_str());
    result r;
    REQUIRE(WIFEXITED(status));
    r.rc = WEXITSTATUS(status);
    r.out = slurp(o);
    r.err = slurp(e);
    return r;
}

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

// Every tensor of `b` has the name, shape and bytes of `a`'s (converted to `to` where given).
void check_same(const fs::path& a_path, const fs::path& b_path, std::optional<dtype> to = {}) {
    const auto a = checkpoint::open(a_path.string());
    const auto b = checkpoint::open(b_path.string());
    REQUIRE(a.tensor_count() == b.tensor_count());
    for (const auto& ta : a.tensors()) {
        CAPTURE(ta.tensor.name());
        const auto tb = b.tensor(ta.tensor.name()).tensor;
        CHECK(tb.shape() == ta.tensor.shape());
        const dtype from = ta.tensor.dtype();
        const bool converts = to && (from == dtype::bf16 || from == dtype::f32 ||
                                     from == dtype::f16 || from == dtype::f64);
        const dtype want = converts ? *to : from;
        REQUIRE(tb.dtype() == want);
        std::vector<std::byte> expect(tb.byte_size());
        (want == from ? converter(from) : find_converter(from, want))(
            ta.tensor.bytes().data(), expect.data(), ta.tensor.element_count());
        REQUIRE(tb.byte_size() == expect.size());
        CHECK(std::memcmp(tb.bytes().data(), expect.data(), expect.size()) == 0);
    }
}

std::size_t count_entries(const fs::path& dir) {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
    return n;
}

}  // namespace

TEST_SUITE("cli") {
    TEST_CASE(
        "convert: a plain re-shard re-reads bit-exact, passes verify, copies the small files") {
        scratch d;
        make_checkpoint(d / "in");
        auto r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "one"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("converted 6 tensors (dtypes kept) from 2 files into model.safetensors") !=
              std::string::npos);
        CHECK(fs::exists(d / "one" / "model.safetensors"));
        CHECK_FALSE(fs::exists(d / "one" / "model.safetensors.index.json"));
        CHECK(slurp(d / "one" / "config.json") == config_json);  // same dtype: copied as is
        CHECK(slurp(d / "one" / "tokenizer.json") == slurp(d / "in" / "tokenizer.json"));
        check_same(d / "in", d / "one");
        CHECK(run(d.path(), "verify " + q(d / "one")).rc == 0);

        r = run(d.path(),
                "convert " + q(d / "one") + " --out " + q(d / "many") + " --max-shard-size 10KB");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(fs::exists(d / "many" / "model.safetensors.index.json"));
        // The 12800-byte embedding is over 10KB: a shard of its own, first; the rest fill two.
        const auto many = checkpoint::open((d / "many").string());
        REQUIRE(many.files().size() == 3);
        CHECK(many.tensor("model.embed_tokens.weight").file->name ==
              "model-00001-of-00003.safetensors");
        CHECK(many.files()[0].view.size() == 1);
        check_same(d / "in", d / "many");
        r = run(d.path(), "verify " + q(d / "many"));
        CHECK_MESSAGE(r.rc == 0, r.err);
        CHECK(count_entries(d.path()) == 5);  // in one many stdout stderr: no temporaries
    }

    TEST_CASE("convert --dtype: values equal the conversion reference; config.json dtype updated") {
        scratch d;
        make_checkpoint(d / "in");
        for (const char* t : {"f16", "F32", "bf16"}) {
            CAPTURE(t);
            const auto out = d / (std::string("out-") + t);
            auto r = run(d.path(), "convert " + q(d / "in") + " --out " + q(out) + " --dtype " + t +
                                       " --max-shard-size 30KB");
            REQUIRE_MESSAGE(r.rc == 0, r.err);
            const dtype to = *parse_dtype_ignore_case(t);
            check_same(d / "in", out, to);
            const std::string cfg = slurp(out / "config.json");
            const std::string torch = to == dtype::f16   ? "float16"
                                      : to == dtype::f32 ? "float32"
                                                         : "bfloat16";
            CHECK(cfg.find("\"torch_dtype\": \"" + torch + "\"") != std::string::npos);
            CHECK(cfg.find("\"hidden_size\": 64") != std::string::npos);
            r = run(d.path(), "verify " + q(out));
            CHECK_MESSAGE(r.rc == 0, r.err);
        }
    }

    TEST_CASE("convert: a single file input; exit codes for bad arguments and outputs") {
        scratch d;
        make_checkpoint(d / "in");
        auto r = run(d.path(), "convert " + q(d / "in" / "model-00002-of-00002.safetensors") +
                                   " --out " + q(d / "in2"));
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK_FALSE(fs::exists(d / "in2" / "config.json"));  // a lone file brings nothing else
        CHECK(checkpoint::open((d / "in2").string()).tensor_count() == 3);

        r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "in2"));
        CHECK(r.rc == 3);
        CHECK(r.err.find("already exists") != std::string::npos);
        r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "in" / "sub"));
        CHECK(r.rc == 2);
        CHECK(r.err.find("inside") != std::string::npos);
        CHECK(run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "in")).rc == 2);
        CHECK(run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "x") + " --dtype i8").rc ==
              2);
        CHECK(
            run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "x") + " --dtype nope").rc ==
            2);
        CHECK(run(d.path(),
                  "convert " + q(d / "in") + " --out " + q(d / "x") + " --max-shard-size 5QB")
                  .rc == 2);
        CHECK(run(d.path(), "convert " + q(d / "in")).rc == 2);  // --out is required
        CHECK(run(d.path(), "convert " + q(d / "missing") + " --out " + q(d / "x")).rc == 1);
        CHECK_FALSE(fs::exists(d / "x"));

        // --force replaces the old folder by the new one.
        write_text(d / "in2" / "stale.txt", "old");
        r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "in2") + " --force");
        REQUIRE_MESSAGE(r.rc == 0, r.err);
        CHECK(r.out.find("old folder replaced") != std::string::npos);
        CHECK_FALSE(fs::exists(d / "in2" / "stale.txt"));
        check_same(d / "in", d / "in2");
        // --force never deletes the input: the input inside the output is refused.
        fs::create_directories(d / "outer");
        fs::rename(d / "in2", d / "outer" / "in2");
        r = run(d.path(),
                "convert " + q(d / "outer" / "in2") + " --out " + q(d / "outer") + " --force");
        CHECK(r.rc == 2);
        CHECK(fs::exists(d / "outer" / "in2" / "model.safetensors"));
    }

    TEST_CASE("convert: out of space and a read-only folder exit 3 and leave nothing") {
        scratch d;
        make_checkpoint(d / "in", 8);
        std::string why;
        if (!d.mount_tmpfs("small", "size=128k", why)) {
            MESSAGE("skipped: " << why);
            return;
        }
        auto r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "small" / "out"));
        CHECK(r.rc == 3);
        CHECK(r.err.find("No space left on device") != std::string::npos);
        CHECK(r.err.find("io_error") != std::string::npos);
        CHECK(count_entries(d / "small") == 0);
        REQUIRE(d.remount_read_only("size=128k"));
        r = run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "small" / "out"));
        CHECK(r.rc == 3);
        CHECK(r.err.find("Read-only file system") != std::string::npos);
    }

    TEST_CASE("convert: SIGINT stops with 130 and no partial output") {
        scratch d;
        make_checkpoint(d / "in", 256);  // about 10 MB: long enough to interrupt
        // The kill points are spread over one measured run, so a fast machine (where the
        // whole conversion takes a few milliseconds) is interrupted as surely as a slow one.
        const auto t0 = std::chrono::steady_clock::now();
        REQUIRE(
            run(d.path(), "convert " + q(d / "in") + " --out " + q(d / "timed") + " --dtype f32")
                .rc == 0);
        const auto full = std::chrono::duration_cast<std::chrono::microseconds>(
            std::chrono::steady_clock::now() - t0);
        fs::remove_all(d / "timed");
        MESSAGE("one conversion took " << full.count() << " us");
        int interrupted = 0;
        for (int attempt = 0; attempt < 20 && interrupted < 2; ++attempt) {
            const auto out = d / ("out" + std::to_string(attempt));
            const pid_t pid = ::fork();
            REQUIRE(pid >= 0);
            if (pid == 0) {
                const int null = ::open("/dev/null", O_WRONLY);
                ::dup2(null, 1);
                ::dup2(null, 2);
                ::execl(SAFESHARD_EXE, SAFESHARD_EXE, "convert", (d / "in").c_str(), "--out",
                        out.c_str(), "--dtype", "f32", static_cast<char*>(nullptr));
                ::_exit(127);
            }
            std::this_thread::sleep_for(full * (3 + attempt % 6) / 10);
            ::kill(pid, SIGINT);
            int status = 0;
            REQUIRE(::waitpid(pid, &status, 0) == pid);
            if (WIFSIGNALED(status)) {  // before main() installed its handler: nothing written yet
                CHECK(WTERMSIG(status) == SIGINT);
                CHECK_FALSE(fs::exists(out));
                continue;
            }
            REQUIRE(WIFEXITED(status));
            const int rc = WEXITSTATUS(status);
            CAPTURE(rc);
            CHECK((rc == 130 || rc == 0));
            if (rc == 130) {
                ++interrupted;
                CHECK_FALSE(fs::exists(out));
            } else {
                check_same(d / "in", out, dtype::f32);
            }
        }
        CHECK(interrupted > 0);
        for (const auto& e : fs::directory_iterator(d.path()))
            CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);
    }

    TEST_CASE("convert: SIGKILL at 100 random moments leaves OUT absent or complete") {
        scratch d;
        make_checkpoint(d / "in", 4);
        // On a private tmpfs when we may mount one (fsync costs nothing there, so 100 runs take
        // seconds); the kill points are spread over one measured run.
        std::string why;
        const bool tmpfs = d.mount_tmpfs("work", "size=64m", why);
        const fs::path work = tmpfs ? d / "work" : d / "disk";
        fs::create_directories(work);
        MESSAGE("crash runs on " << (tmpfs ? "tmpfs" : "disk (" + why + ")"));

        auto spawn = [&](const fs::path& out, bool force) {
            const pid_t pid = ::fork();
            REQUIRE(pid >= 0);
            if (pid == 0) {
                const int null = ::open("/dev/null", O_WRONLY);
                ::dup2(null, 1);
                ::dup2(null, 2);
                ::execl(SAFESHARD_EXE, SAFESHARD_EXE, "convert", (d / "in").c_str(), "--out",
                        out.c_str(), "--dtype", "f16", "--max-shard-size", "40KB",
                        force ? "--force" : static_cast<char*>(nullptr),
                        static_cast<char*>(nullptr));
                ::_exit(127);
            }
            return pid;
        };
        auto wait_rc = [](pid_t pid) {
            int status = 0;
            REQUIRE(::waitpid(pid, &status, 0) == pid);
            return status;
        };
        // Reference: one full run, timed.
        const auto t0 = std::chrono::steady_clock::now();
        const int s0 = wait_rc(spawn(work / "ref", false));
        const auto full_us = std::chrono::duration_cast<std::chrono::microseconds>(
                                 std::chrono::steady_clock::now() - t0)
                                 .count();
        REQUIRE(WIFEXITED(s0));
        REQUIRE(WEXITSTATUS(s0) == 0);
        const std::string ref_index = slurp(work / "ref" / "model.safetensors.index.json");

        std::mt19937 rng(12345);
        std::uniform_int_distribution<long> delay(0, std::max<long>(full_us, 1000));
        int killed_mid = 0;
        int absent = 0;
        for (int i = 0; i < 100; ++i) {
            // Odd runs replace an existing complete folder with --force.
            const bool force = i % 2 == 1;
            const auto out = work / "out";
            if (!force) {
                fs::remove_all(out);
            } else if (!fs::exists(out)) {
                fs::copy(work / "ref", out, fs::copy_options::recursive);
            }
            const pid_t pid = spawn(out, force);
            std::this_thread::sleep_for(std::chrono::microseconds(delay(rng)));
            ::kill(pid, SIGKILL);
            const int status = wait_rc(pid);
            if (WIFSIGNALED(status)) ++killed_mid;
            if (!fs::exists(out)) {
                ++absent;
                CHECK_FALSE(force);  // a forced run never loses the old folder
                continue;
            }
            // Present: complete and valid, the same as the reference run.
            CHECK(slurp(out / "model.safetensors.index.json") == ref_index);
            check_same(d / "in", out, dtype::f16);
        }
        MESSAGE(killed_mid << " of 100 runs killed before they ended, " << absent
                           << " left no OUT");
        CHECK(killed_mid > 10);
        // The next run cleans what killed runs left: nothing but the outputs remains.
        fs::remove_all(work / "out");
        REQUIRE(WEXITSTATUS(wait_rc(spawn(work / "out", false))) == 0);
        std::vector<std::string> names;
        for (const auto& e : fs::directory_iterator(work))
            names.push_back(e.path().filename().string());
        std::sort(names.begin(), names.end());
        std::string listing;
        for (const auto& n : names) listing += n + " ";
        CAPTURE(listing);
        CHECK(names == std::vector<std::string>{"out", "ref"});
    }
}
