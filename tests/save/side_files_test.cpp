// copy_side_files copies only regular files that resolve inside the checkpoint folder (or a
// cache snapshot's blobs/), with their permission bits never widened; every other entry is
// left behind and said. Export and merge report what they left.
#include <sys/stat.h>

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "../checkpoint/test_util.hpp"
#include "../child_outcome.hpp"
#include "../load/model_gen.hpp"
#include "safeshard/save/export.hpp"
#include "safeshard/save/merge.hpp"

using namespace safeshard;
using safeshard::test::temp_folder;
namespace fs = std::filesystem;

namespace {

void put(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
}

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

fs::perms perms_of(const fs::path& p) { return fs::status(p).permissions(); }

// The skipped entries by file name -> reason.
std::map<std::string, std::string> copy_all(const fs::path& from, const fs::path& to,
                                            std::uint64_t* copied = nullptr) {
    std::map<std::string, std::string> skipped;
    fs::create_directories(to);
    const auto n = copy_side_files(from, to, {}, [&](const skipped_side_file& f) {
        skipped[f.path.filename().string()] = f.reason;
    });
    if (copied != nullptr) *copied = n;
    return skipped;
}

}  // namespace

TEST_SUITE("save") {
    TEST_CASE("copy_side_files: links out of the folder are not followed, and are said") {
        temp_folder dir;
        const auto ck = dir.path() / "ck", out = dir.path() / "out";
        put(dir.path() / "outside-secret.txt", "secret");
        put(ck / "config.json", "{}");
        fs::create_symlink("/etc/passwd", ck / "vocab.txt");
        fs::create_symlink("../outside-secret.txt", ck / "merges.txt");
        fs::create_symlink(dir.path() / "outside-secret.txt", ck / "special_tokens_map.json");
        std::uint64_t copied = 0;
        const auto skipped = copy_all(ck, out, &copied);
        CHECK(copied == 1);  // config.json
        CHECK_FALSE(fs::exists(out / "vocab.txt"));
        CHECK_FALSE(fs::exists(out / "merges.txt"));
        CHECK_FALSE(fs::exists(out / "special_tokens_map.json"));
        REQUIRE(skipped.size() == 3);
        CHECK(skipped.at("vocab.txt") == "a link to '/etc/passwd', outside the checkpoint folder");
        CHECK(skipped.at("merges.txt").find("outside the checkpoint folder") != std::string::npos);
        CHECK(skipped.at("special_tokens_map.json").find("outside-secret.txt") !=
              std::string::npos);
    }

    TEST_CASE("copy_side_files: permission bits are kept, never widened") {
        temp_folder dir;
        const auto ck = dir.path() / "ck", out = dir.path() / "out";
        put(ck / "secret", "{\"k\": 1}");
        fs::permissions(ck / "secret", fs::perms::owner_read | fs::perms::owner_write);
        fs::create_symlink("secret", ck / "tokenizer.json");  // a link inside the folder: fine
        put(ck / "private.txt", "p");
        fs::permissions(ck / "private.txt", fs::perms::owner_read);
        put(ck / "public.txt", "q");
        fs::permissions(ck / "public.txt", fs::perms::owner_read | fs::perms::owner_write |
                                               fs::perms::group_read | fs::perms::others_read);
        const auto skipped = copy_all(ck, out);
        CHECK(skipped.empty());
        CHECK(slurp(out / "tokenizer.json") == "{\"k\": 1}");
        CHECK(fs::is_regular_file(fs::symlink_status(out / "tokenizer.json")));  // a copy
        CHECK(perms_of(out / "tokenizer.json") == (fs::perms::owner_read | fs::perms::owner_write));
        CHECK(perms_of(out / "secret") == (fs::perms::owner_read | fs::perms::owner_write));
        CHECK(perms_of(out / "private.txt") == fs::perms::owner_read);
        // Never wider than the source nor than the umask allows.
        const mode_t mask = ::umask(022);
        ::umask(mask);
        CHECK(static_cast<mode_t>(perms_of(out / "public.txt")) == (0644 & ~mask));
    }

    TEST_CASE("copy_side_files: a cache snapshot's links into its repository's blobs/ are copied") {
        temp_folder dir;
        const auto repo = dir.path() / "models--org--tiny";
        const auto snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567";
        put(repo / "blobs" / "b1", "{\"model_type\": \"llama\"}");
        put(repo / "blobs" / "b2", "tok");
        put(dir.path() / "elsewhere", "x");
        fs::create_directories(snap);
        fs::create_symlink("../../blobs/b1", snap / "config.json");
        fs::create_symlink("../../blobs/b2", snap / "tokenizer.json");
        fs::create_symlink("../../../elsewhere", snap / "notes.txt");  // out of the repository
        const auto out = dir.path() / "out";
        std::uint64_t copied = 0;
        const auto skipped = copy_all(snap, out, &copied);
        CHECK(copied == 2);
        CHECK(slurp(out / "config.json") == "{\"model_type\": \"llama\"}");
        CHECK(slurp(out / "tokenizer.json") == "tok");
        REQUIRE(skipped.size() == 1);
        CHECK(skipped.count("notes.txt") == 1);
    }

    TEST_CASE("copy_side_files: a FIFO, a dangling link and a folder are left behind, not waited") {
        temp_folder dir;
        const auto ck = dir.path() / "ck", out = dir.path() / "out";
        put(ck / "config.json", "{}");
        REQUIRE(::mkfifo((ck / "vocab.txt").c_str(), 0644) == 0);
        fs::create_symlink("gone.json", ck / "tokenizer.json");
        fs::create_directories(ck / "subfolder");
        const auto o = test::outcome_within(10, [&] {
            std::string r;
            for (const auto& [name, why] : copy_all(ck, out)) r += name + ": " + why + "\n";
            return r;
        });
        REQUIRE_MESSAGE(o, "copy_side_files waited on a FIFO");
        CHECK(*o ==
              "tokenizer.json: a dangling link to 'gone.json'\n"
              "vocab.txt: a FIFO, not a file\n");
    }

    TEST_CASE("export and merge report the side files they left behind") {
        temp_folder d;
        test::model_spec m;
        const auto in = d.path() / "in";
        fs::create_directories(in);
        test::write_checkpoint(in, m, test::make_tensors(m));
        fs::create_symlink("/etc/passwd", in / "vocab.txt");
        put(in / "tokenizer.json", "{}");
        export_options o;
        o.world = 2;
        const auto ckpt = checkpoint::open((in).string());
        const export_report er = export_checkpoint(ckpt, d.path() / "ex", o);
        CHECK(er.side_files == 4);  // config.json and tokenizer.json, in each rank folder
        REQUIRE(er.skipped_side_files.size() == 1);  // said once, not once per rank
        CHECK(er.skipped_side_files[0].path.filename() == "vocab.txt");
        CHECK_FALSE(fs::exists(d.path() / "ex" / "rank-00000" / "vocab.txt"));
        // A link out of rank 0's folder, added after the export, is left out of the merge.
        fs::create_symlink("/etc/passwd", d.path() / "ex" / "rank-00000" / "merges.txt");
        const merge_report mr = merge_export(d.path() / "ex", d.path() / "merged");
        REQUIRE(mr.skipped_side_files.size() == 1);
        CHECK(mr.skipped_side_files[0].path.filename() == "merges.txt");
        CHECK(fs::exists(d.path() / "merged" / "tokenizer.json"));
        CHECK_FALSE(fs::exists(d.path() / "merged" / "merges.txt"));
    }
}
