// `safeshard convert`: rewrites a checkpoint with another dtype and/or another sharding,
// streaming tensor by tensor into a folder that appears complete or not at all.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#if SAFESHARD_HAVE_NLOHMANN_JSON
#include <nlohmann/json.hpp>
#endif

#include "commands.hpp"
#include "progress_bar.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/save/sharded_writer.hpp"

namespace safeshard::cli {
namespace {

namespace fs = std::filesystem;

// The dtypes convert rewrites: the floating-point ones every engine computes in (F64 only to
// F32, the one direct conversion). Integer, bool, complex and 8-bit and narrower float tensors
// (often quantized, with scales beside them) are copied unchanged.
[[nodiscard]] bool is_rewritable(dtype t) noexcept {
    return t == dtype::f16 || t == dtype::bf16 || t == dtype::f32 || t == dtype::f64;
}

[[nodiscard]] const char* torch_name(dtype t) noexcept {
    switch (t) {
        case dtype::f16: return "float16";
        case dtype::bf16: return "bfloat16";
        case dtype::f32: return "float32";
        default: return "float64";
    }
}

// Files of the folder copied beside the new shards: everything regular at its top level but the
// weights (ours and other formats') and files over this size.
constexpr std::uint64_t max_copied_file = 256ull << 20;

[[nodiscard]] bool is_weights_file(const std::string& name) {
    for (const char* ext : {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json",
                            ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx"}) {
        if (name.size() >= std::strlen(ext) && name.ends_with(ext)) return true;
    }
    return false;
}

[[nodiscard]] std::string read_text(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    if (!f) throw system_error("open", errno, p.string());
    std::stringstream ss;
    ss << f.rdbuf();
    if (f.bad()) throw system_error("read", errno, p.string());
    return ss.str();
}

void write_new_file(const fs::path& p, std::string_view text) {
    atomic_file f(p);
    f.write(std::as_bytes(std::span(text.data(), text.size())));
    f.commit();
}

void copy_file_bytes(const fs::path& from, const fs::path& to) {
    const file_reader r(from);
    atomic_file f(to);
    std::vector<std::byte> buf(std::min<std::uint64_t>(r.size(), 4u << 20));
    for (std::uint64_t off = 0; off < r.size();) {
        const auto n =
            static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), r.size() - off));
        r.read_exact(std::span(buf).first(n), off);
        f.write(std::span(buf).first(n));
        off += n;
    }
    f.commit();
}

// config.json with every "torch_dtype"/"dtype" naming a float dtype set to the new one
// (nested configs of multimodal models included); other keys, their order and values kept.
[[nodiscard]] std::optional<std::string> updated_config(const std::string& text, dtype to) {
#if SAFESHARD_HAVE_NLOHMANN_JSON
    auto j = nlohmann::ordered_json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return std::nullopt;
    auto fix = [&](auto& self, nlohmann::ordered_json& node) -> void {
        if (node.is_object()) {
            for (auto it = node.begin(); it != node.end(); ++it) {
                if ((it.key() == "torch_dtype" || it.key() == "dtype") && it->is_string()) {
                    const auto v = it->template get<std::string>();
                    if (v == "float16" || v == "bfloat16" || v == "float32" || v == "float64" ||
                        v == "half" || v == "float" || v == "double")
                        *it = torch_name(to);
                } else {
                    self(self, *it);
                }
            }
        } else if (node.is_array()) {
            for (auto& e : node) self(self, e);
        }
    };
    fix(fix, j);
    return j.dump(2) + "\n";
#else
    (void)text;
    (void)to;
    return std::nullopt;
#endif
}

}  // namespace

int run_convert(const convert_args& a, output& out) {
    const auto started = std::chrono::steady_clock::now();
    std::optional<dtype> to;
    if (!a.dtype.empty()) {
        to = parse_dtype_ignore_case(a.dtype);
        if (!to || !is_rewritable(*to))
            throw error(errc::invalid_argument,
                        "--dtype must be one of F16, BF16, F32, F64; got '" + a.dtype + "'");
    }
    sharded_save_options options;
    options.max_shard_size = parse_shard_size(a.max_shard_size);
    options.force = a.force;

    const checkpoint c = open_checkpoint(a.ckpt);
    // A lone .safetensors file given by path: nothing else of its folder belongs to it.
    std::error_code ec;
    const bool from_file =
        c.source_kind() == checkpoint::kind::single_file && fs::is_regular_file(a.ckpt.target, ec);
    check_output_location(a.out, from_file ? fs::path(a.ckpt.target) : c.root());

    // Tensors in the checkpoint's order: files by name, tensors by offset.
    const std::vector<located_tensor> sources = c.tensors();
    std::vector<tensor_info> infos;
    infos.reserve(sources.size());
    std::vector<converter> converters;
    converters.reserve(sources.size());
    std::size_t n_converted = 0;
    std::size_t n_no_path = 0;  // floating tensors with no exact conversion to `to` (F64->16 bit)
    for (const auto& s : sources) {
        const dtype from = s.tensor.dtype();
        const bool convertible = to && is_rewritable(from) && can_convert(from, *to);
        if (to && is_rewritable(from) && !convertible) ++n_no_path;
        const dtype target = convertible ? *to : from;
        converters.push_back(target == from ? converter(from) : find_converter(from, target));
        if (target != from) ++n_converted;
        infos.push_back(tensor_info{std::string(s.tensor.name()), target, s.tensor.shape()});
    }
    if (n_no_path > 0)
        fmt::print(stderr,
                   "safeshard: note: {} tensors kept in their dtype: no direct conversion to {} "
                   "(F64 converts only to F32; rounding twice through F32 could differ)\n",
                   n_no_path, name(*to));
    std::vector<std::optional<file_reader>> readers(c.files().size());

    sharded_writer w(a.out, std::move(infos), options);
    std::uint64_t total_out = 0;
    for (const auto& s : w.plan().shards) total_out += s.bytes;
    progress_bar bar(total_out);
    std::uint64_t done = 0;

    // Reads with pread in chunks (a fresh mmap faults per page, pread does not), converts when
    // asked, and writes; each chunk is a point where SIGINT stops the command.
    constexpr std::size_t chunk_bytes = 8u << 20;
    std::vector<std::byte> src_buf(chunk_bytes);
    std::vector<std::byte> dst_buf;
    w.write_shards([&](std::size_t i, safetensors_writer& sw) {
        const located_tensor& s = sources[i];
        const converter& conv = converters[i];
        const auto file_index = static_cast<std::size_t>(s.file - c.files().data());
        if (!readers[file_index]) readers[file_index].emplace(s.file->path);
        const file_reader& r = *readers[file_index];
        const std::uint64_t begin = s.tensor.file_begin();
        const std::uint64_t size = s.tensor.byte_size();
        // Whole elements per chunk (sub-byte dtypes only copy, so bytes are fine there).
        const std::size_t elem = std::max<std::size_t>(byte_size(conv.from()), 1);
        const std::size_t step = chunk_bytes / elem * elem;
        for (std::uint64_t off = 0; off < size;) {
            check_interrupted();
            const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(step, size - off));
            const auto src = std::span(src_buf).first(n);
            r.read_exact(src, begin + off);
            if (conv.is_copy()) {
                sw.write(src);
                done += n;
            } else {
                const std::size_t count = n / elem;
                dst_buf.resize(conv.dst_bytes(count));
                conv(src.data(), dst_buf.data(), count);
                sw.write(dst_buf);
                done += dst_buf.size();
            }
            off += n;
            bar.update(done);
        }
    });
    check_interrupted();

    // The folder's other small files; config.json with the new dtype.
    std::size_t copied = 0;
    if (!from_file) {
        for (const auto& e : fs::directory_iterator(c.root())) {
            check_interrupted();
            const std::string name = e.path().filename().string();
            if (!e.is_regular_file() || is_weights_file(name) || name.starts_with(".")) continue;
            if (e.file_size() > max_copied_file) {
                fmt::print(stderr, "safeshard: note: not copying {} ({}, over {})\n", name,
                           human_bytes(e.file_size()), human_bytes(max_copied_file));
                continue;
            }
            const auto dest = w.staging_folder() / name;
            if (name == "config.json" && to) {
                if (auto text = updated_config(read_text(e.path()), *to)) {
                    write_new_file(dest, *text);
                    ++copied;
                    continue;
                }
                fmt::print(stderr,
                           "safeshard: warning: config.json copied unchanged (its dtype could not "
                           "be updated)\n");
            }
            copy_file_bytes(e.path(), dest);
            ++copied;
        }
    }
    check_interrupted();
    w.commit();
    interrupted_flag = 0;  // OUT is complete: a SIGINT from now on changes nothing
    bar.finish();

    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    out.print("converted {} tensors ({}) from {} files into {} at {}\n", sources.size(),
              to ? fmt::format("{} to {}, {} unchanged", n_converted, name(*to),
                               sources.size() - n_converted)
                 : std::string("dtypes kept"),
              c.files().size(),
              w.plan().shards.size() == 1
                  ? std::string("model.safetensors")
                  : fmt::format("{} shards + index", w.plan().shards.size()),
              a.out);
    out.print("{} written ({} bytes) in {:.2f} s ({}/s), {} other files copied{}\n",
              human_bytes(total_out), total_out, seconds,
              human_bytes(static_cast<std::uint64_t>(static_cast<double>(total_out) /
                                                     std::max(seconds, 1e-9))),
              copied, w.replacing() ? ", old folder replaced" : "");
    out.flush();
    return exit_ok;
}

}  // namespace safeshard::cli
