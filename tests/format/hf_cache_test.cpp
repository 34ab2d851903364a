#include "safeshard/format/hf_cache.hpp"

#include <string>

#include <doctest/doctest.h>

#include "../checkpoint/test_util.hpp"

using namespace safeshard;
using safeshard::test::code_of;
using safeshard::test::temp_dir;
using safeshard::test::write_file;
namespace fs = std::filesystem;

TEST_CASE("hf_hub_cache_dir: the environment in huggingface_hub's order") {
    hf_environment env;
    env.home = "/home/u";
    CHECK(hf_hub_cache_dir(env) == fs::path("/home/u/.cache/huggingface/hub"));
    env.xdg_cache_home = "/xdg";
    CHECK(hf_hub_cache_dir(env) == fs::path("/xdg/huggingface/hub"));
    env.hf_home = "~/hf";
    CHECK(hf_hub_cache_dir(env) == fs::path("/home/u/hf/hub"));
    env.huggingface_hub_cache = "/legacy";
    CHECK(hf_hub_cache_dir(env) == fs::path("/legacy"));
    env.hf_hub_cache = "/hc";
    CHECK(hf_hub_cache_dir(env) == fs::path("/hc"));
}

TEST_CASE("is_repo_id and is_commit_hash") {
    CHECK(is_repo_id("meta-llama/Llama-3.1-8B"));
    CHECK(is_repo_id("gpt2"));
    CHECK(is_repo_id("Qwen/Qwen2.5-0.5B-Instruct"));
    CHECK_FALSE(is_repo_id("a/b/c"));
    CHECK_FALSE(is_repo_id("../x"));
    CHECK_FALSE(is_repo_id("a--b/c"));
    CHECK_FALSE(is_repo_id("/abs"));
    CHECK_FALSE(is_repo_id(""));
    CHECK_FALSE(is_repo_id("org/"));
    CHECK_FALSE(is_repo_id("org/na me"));
    CHECK(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
    CHECK_FALSE(is_commit_hash("0123456789ABCDEF0123456789abcdef01234567"));
    CHECK_FALSE(is_commit_hash("main"));
}

namespace {
constexpr std::string_view commit = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";

// A cache tree like huggingface_hub's: blobs, a ref, a snapshot of symlinks, a .no_exist.
fs::path make_repo(const temp_dir& cache) {
    const fs::path repo = cache / "models--org--tiny";
    write_file(repo / "blobs" / "abc123", "{\"model_type\": \"llama\"}");
    write_file(repo / "refs" / "main", std::string(commit) + "\n");
    fs::create_directories(repo / "snapshots" / commit);
    fs::create_symlink("../../blobs/abc123", repo / "snapshots" / commit / "config.json");
    fs::create_symlink("../../blobs/gone", repo / "snapshots" / commit / "dangling.json");
    write_file(repo / ".no_exist" / commit / "model.safetensors.index.json", "");
    return repo;
}
}  // namespace

TEST_CASE("resolve_hf_snapshot: ref, commit, files") {
    temp_dir cache;
    const fs::path repo = make_repo(cache);
    hf_cache_options o;
    o.cache_dir = cache.path();
    const auto snap = resolve_hf_snapshot("org/tiny", o);
    CHECK(snap.commit() == commit);  // whitespace stripped
    CHECK(snap.revision() == "main");
    CHECK(snap.repo_dir() == repo);
    CHECK(snap.snapshot_dir() == repo / "snapshots" / commit);
    CHECK(snap.status("config.json") == hf_file_status::present);
    CHECK(snap.file("config.json") == snap.snapshot_dir() / "config.json");
    CHECK(snap.status("model.safetensors.index.json") == hf_file_status::known_missing);
    CHECK(snap.status("model.safetensors") == hf_file_status::not_cached);
    CHECK(snap.status("dangling.json") == hf_file_status::not_cached);
    CHECK(snap.status("../refs/main") == hf_file_status::not_cached);
    std::string what;
    CHECK(code_of([&] { (void)snap.file("model.safetensors.index.json"); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(what.find(".no_exist") != std::string::npos);
    CHECK(code_of([&] { (void)snap.file("model.safetensors"); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(what.find("not in the cache") != std::string::npos);

    o.revision = std::string(commit);  // a commit given directly
    CHECK(resolve_hf_snapshot("org/tiny", o).commit() == commit);

    // The environment decides when no cache_dir is given.
    ::setenv("HF_HUB_CACHE", cache.path().c_str(), 1);
    CHECK(resolve_hf_snapshot("org/tiny").snapshot_dir() == snap.snapshot_dir());
    ::unsetenv("HF_HUB_CACHE");
}

TEST_CASE("resolve_hf_snapshot: errors name the paths tried") {
    temp_dir cache;
    const fs::path repo = make_repo(cache);
    hf_cache_options o;
    o.cache_dir = cache.path();
    std::string what;
    CHECK(code_of([&] { (void)resolve_hf_snapshot("org/absent", o); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(what.find("models--org--absent") != std::string::npos);
    o.revision = "v2";  // a missing ref
    CHECK(code_of([&] { (void)resolve_hf_snapshot("org/tiny", o); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(what.find((repo / "refs" / "v2").string()) != std::string::npos);
    o.revision = "0000000000000000000000000000000000000000";  // a commit not in snapshots/
    CHECK(code_of([&] { (void)resolve_hf_snapshot("org/tiny", o); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(what.find("snapshots") != std::string::npos);
    write_file(repo / "refs" / "stale", "ffffffffffffffffffffffffffffffffffffffff");
    o.revision = "stale";  // a ref to a missing snapshot
    CHECK(code_of([&] { (void)resolve_hf_snapshot("org/tiny", o); }, &what) ==
          errc::checkpoint_not_found);
    CHECK(what.find("ffffffffffffffffffffffffffffffffffffffff") != std::string::npos);
    write_file(repo / "refs" / "evil", "../../x");
    o.revision = "evil";
    CHECK(code_of([&] { (void)resolve_hf_snapshot("org/tiny", o); }) == errc::checkpoint_not_found);
    o.revision = "../main";
    CHECK(code_of([&] { (void)resolve_hf_snapshot("org/tiny", o); }) == errc::invalid_argument);
    o.revision = "main";
    CHECK(code_of([&] { (void)resolve_hf_snapshot("not a repo", o); }) == errc::invalid_argument);
}
