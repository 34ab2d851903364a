// `safeshard verify`: opens the checkpoint with every check (headers, index against shards,
// config.json) and prints `ok` and a one-line summary; an error otherwise.
#include <string>

#include "commands.hpp"

namespace safeshard::cli {

int run_verify(const verify_args& a, output& out) {
    const checkpoint c = open_checkpoint(a.ckpt);
    std::string config_note;
    if (!a.skip_config) {
        if (auto cfg = c.load_config()) {
            config_note = ", config.json " + cfg->config().model_type;
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
    out.flush();
    return exit_ok;
}

}  // namespace safeshard::cli
