// `safeshard merge`: the rank folders of an export merged back into one checkpoint in the
// original layout, from the export metadata alone; OUT appears complete or not at all.
#include <algorithm>
#include <chrono>
#include <string>

#include <fmt/core.h>

#include "commands.hpp"
#include "progress_bar.hpp"
#include "safeshard/core/clock.hpp"
#include "safeshard/save/merge.hpp"

namespace safeshard::cli {

int run_merge(const merge_args& a, output& out) {
    const auto started = std::chrono::steady_clock::now();
    check_out_is_new(a.out, a.force);
    merge_options o;
    o.force = a.force;
    o.max_shard_size = parse_shard_size(a.max_shard_size);
    progress_bar bar;
    o.progress = bar.callback();
    o.cancel_point = [] { check_interrupted(); };

    const merge_report r = merge_export(a.dir, a.out, o);
    mark_output_complete();  // OUT is complete: a SIGINT from now on changes nothing
    bar.finish();
    for (const auto& f : r.skipped_side_files) note_not_copied(f.path, f.reason);
    const double seconds = seconds_since(started);
    out.print("merged {} rank folders into {} tensors at {} ({})\n", r.world, r.tensors, a.out,
              r.shard_files == 1 ? std::string("model.safetensors")
                                 : fmt::format("{} shards + index", r.shard_files));
    print_transfer_summary(out, r, seconds);
    out.flush();
    return exit_ok;
}

}  // namespace safeshard::cli
