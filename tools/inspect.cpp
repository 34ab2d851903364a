// `safeshard inspect`: every tensor with dtype, shape, file, offset and size; totals; metadata.
#include <algorithm>
#include <string>
#include <vector>

#include "commands.hpp"

namespace safeshard::cli {
namespace {

void print_json(const checkpoint& c, output& out) {
    out.write("{\"files\":[");
    bool first = true;
    for (const auto& f : c.files()) {
        out.write(first ? "\n" : ",\n");
        first = false;
        out.write("{\"path\":");
        out.json_string(f.name);
        out.print(",\"header_bytes\":{},\"metadata\":{{", f.view.header_size());
        bool first_key = true;
        for (const auto& [k, v] : f.view.metadata()) {
            if (!first_key) out.write(",");
            first_key = false;
            out.json_string(k);
            out.write(":");
            out.json_string(v);
        }
        out.print("}},\"tensors\":{}}}", f.view.size());
    }
    out.write("\n],\n\"tensors\":[");
    first = true;
    for (const auto& f : c.files()) {
        check_interrupted();
        for (const tensor_view t : f.view) {
            out.write(first ? "\n" : ",\n");
            first = false;
            out.write("{\"name\":");
            out.json_string(t.name());
            out.print(",\"dtype\":\"{}\",\"shape\":[", name(t.dtype()));
            for (std::size_t i = 0; i < t.shape().rank(); ++i) {
                if (i != 0) out.write(",");
                out.print("{}", t.shape()[i]);
            }
            out.write("],\"file\":");
            out.json_string(f.name);
            out.print(",\"offset\":{},\"nbytes\":{}}}", t.file_begin(), t.byte_size());
        }
    }
    out.print("\n],\n\"total_bytes\":{}}}\n", c.total_bytes());
}

void print_table(const checkpoint& c, output& out) {
    struct row {
        std::string name, dtype, shape, file;
        std::uint64_t offset, nbytes;
    };
    std::vector<row> rows;
    rows.reserve(c.tensor_count());
    std::size_t w_name = 4, w_dtype = 5, w_shape = 5, w_file = 4;
    for (const auto& f : c.files()) {
        for (const tensor_view t : f.view) {
            row r{escape_controls(t.name()),
                  std::string(name(t.dtype())),
                  t.shape().to_string(),
                  escape_controls(f.name),
                  t.file_begin(),
                  t.byte_size()};
            w_name = std::max(w_name, r.name.size());
            w_dtype = std::max(w_dtype, r.dtype.size());
            w_shape = std::max(w_shape, r.shape.size());
            w_file = std::max(w_file, r.file.size());
            rows.push_back(std::move(r));
        }
    }
    const char* kind = c.source_kind() == checkpoint::kind::indexed ? "indexed" : "single file";
    out.print("checkpoint {} ({}", escape_controls(c.root().string()), kind);
    if (c.index_path()) out.print(", {}", escape_controls(c.index_path()->filename().string()));
    if (c.snapshot()) out.print(", {}@{}", c.snapshot()->repo_id(), c.snapshot()->commit());
    out.print("): {} files, {} tensors, {} ({} bytes)\n\n", c.files().size(), c.tensor_count(),
              human_bytes(c.total_bytes()), c.total_bytes());
    out.print("{:<{}}  {:<{}}  {:<{}}  {:<{}}  {:>14}  {:>14}\n", "NAME", w_name, "DTYPE", w_dtype,
              "SHAPE", w_shape, "FILE", w_file, "OFFSET", "BYTES");
    for (std::size_t i = 0; i < rows.size(); ++i) {
        if (i % 4096 == 0) check_interrupted();
        const row& r = rows[i];
        out.print("{:<{}}  {:<{}}  {:<{}}  {:<{}}  {:>14}  {:>14}\n", r.name, w_name, r.dtype,
                  w_dtype, r.shape, w_shape, r.file, w_file, r.offset, r.nbytes);
    }
    out.write("\nTotals by dtype:\n");
    for (const auto& t : c.totals_by_dtype()) {
        out.print("  {:<8} {:>8} tensors  {:>16} elements  {:>12}  ({} bytes)\n", name(t.type),
                  t.tensors, t.elements, human_bytes(t.bytes), t.bytes);
    }
    out.write("\nTotals by file:\n");
    for (const auto& f : c.files()) {
        out.print("  {:<{}}  header {:>10} bytes  {:>8} tensors  {:>12}  ({} bytes)\n",
                  escape_controls(f.name), w_file, f.view.header_size(), f.view.size(),
                  human_bytes(f.tensor_bytes), f.tensor_bytes);
    }
    out.write("\nMetadata:\n");
    for (const auto& f : c.files()) {
        out.print("  {}:", escape_controls(f.name));
        if (f.view.metadata().empty()) out.write(" (none)");
        out.write("\n");
        for (const auto& [k, v] : f.view.metadata()) {
            out.print("    {} = {}\n", escape_controls(k), escape_controls(v));
        }
    }
    if (const auto* ix = c.index()) {
        out.print("\nIndex {}: {} entries", escape_controls(c.index_path()->filename().string()),
                  ix->size());
        if (ix->total_size()) out.print(", total_size {}", *ix->total_size());
        if (ix->total_parameters()) out.print(", total_parameters {}", *ix->total_parameters());
        out.write("\n");
        for (const auto& [k, v] : ix->extra_metadata()) {
            out.print("  {} = {}\n", escape_controls(k), escape_controls(v));
        }
    }
}

}  // namespace

int run_inspect(const inspect_args& a, output& out) {
    const checkpoint c = open_checkpoint(a.ckpt);
    if (a.json) {
        print_json(c, out);
    } else {
        print_table(c, out);
    }
    out.flush();
    return exit_ok;
}

}  // namespace safeshard::cli
