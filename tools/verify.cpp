// `safeshard verify`: opens the checkpoint with every check (headers, index against shards,
// config.json against the tensors as a plan checks it) and prints `ok` and a one-line
// summary, then any notes; an error otherwise.
#include <string>
#include <vector>

#include "commands.hpp"
#include "safeshard/load/plan.hpp"

namespace safeshard::cli {

int run_verify(const verify_args& a, output& out) {
    const checkpoint c = open_checkpoint(a.ckpt);
    std::string config_note;
    std::vector<std::string> notes;
    if (!a.skip_config) {
        plan_options o;
        o.strict = !a.ckpt.lenient;
        if (const auto r = verify_config(c, o)) {
            r->throw_if_mismatch();
            config_note = ", config.json " + r->model_type +
                          (r->architecture_checked ? "" : " (generic fields only)");
            notes = r->notes;
        }
    }
    check_interrupted();
    std::string dtypes;
    for (const auto& t : c.totals_by_dtype()) {
        dtypes += fmt::format("{}{} {}", dtypes.empty() ? "" : ", ", name(t.type), t.tensors);
    }
    std::string index_note;
    if (const auto* ix = c.index()) {
        index_note =
            fmt::format(", index {} entries{}", ix->size(),
                        ix->total_size() && !a.ckpt.lenient ? " (total_size matches)" : "");
    }
    out.write("ok\n");
    out.print("{} tensors in {} files, {} ({} bytes) [{}]{}{}{}\n", c.tensor_count(),
              c.files().size(), human_bytes(c.total_bytes()), c.total_bytes(), dtypes, index_note,
              config_note,
              c.warnings().empty() ? "" : fmt::format(", {} warnings", c.warnings().size()));
    for (const auto& n : notes) out.print("note: {}\n", n);
    out.flush();
    return exit_ok;
}

}  // namespace safeshard::cli
