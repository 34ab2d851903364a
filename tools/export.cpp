// `safeshard export`: each rank's tensors of a tensor-parallel world, cut as the loader cuts
// them, written as a checkpoint per rank (OUT/rank-00000, ...) with the metadata that undoes
// the cut; OUT appears complete or not at all.
#include <algorithm>
#include <chrono>
#include <optional>
#include <string>

#include <fmt/core.h>

#include "commands.hpp"
#include "progress_bar.hpp"
#include "safeshard/core/clock.hpp"
#include "safeshard/save/export.hpp"

namespace safeshard::cli {

int run_export(const export_args& a, output& out) {
    const auto started = std::chrono::steady_clock::now();
    if (a.world == 0) throw error(errc::invalid_argument, "--tp must be at least 1");
    check_out_is_new(a.out, a.force);
    export_options o;
    o.world = a.world;
    o.experts = expert_parallel_arg(a.experts, a.world);
    o.plan.schema.multi_token_prediction = a.experts.include_mtp;
    o.plan.schema.fuse_experts = a.experts.fuse_experts;
    o.force = a.force;
    o.max_shard_size = parse_shard_size(a.max_shard_size);
    o.plan.architecture = a.arch;
    o.plan.allow_quantized = a.allow_quantized;
    if (!a.kv_convention.empty()) o.plan.schema.kv = kv_convention_arg(a.kv_convention);
    const std::optional<dtype> to = policy_dtype_arg(a.dtype);
    if (to) o.plan.dtype = dtype_policy::fixed(*to);
    // The policy converts floating-point tensors only; integer and 8-bit ones keep their dtype.
    const checkpoint c = open_checkpoint(a.ckpt);
    progress_bar bar;
    o.progress = bar.callback();
    o.cancel_point = [] { check_interrupted(); };

    const export_report r = export_checkpoint(c, a.out, o);
    mark_output_complete();  // OUT is complete: a SIGINT from now on changes nothing
    bar.finish();
    if (r.dequantized != 0)
        fmt::print(stderr,
                   "safeshard: note: {} quantized weights written dequantized to {} (all ranks); "
                   "their scales not written; config.json without quantization_config\n",
                   r.dequantized, name(*to));
    for (const auto& f : r.skipped_side_files) note_not_copied(f.path, f.reason);
    const double seconds = seconds_since(started);
    out.print(
        "exported {} tensors for a world of {}{} ({}) into {}: {} rank folders, {} shard files\n",
        r.tensors, r.world,
        a.experts.ep > 1
            ? fmt::format(", experts over {} groups ({})", a.experts.ep, a.experts.placement)
            : "",
        to ? fmt::format("floating-point tensors as {}", name(*to)) : "dtypes kept", a.out, r.world,
        r.shard_files);
    if (r.left_out != 0)
        out.print(
            "left out {} tensors of the multi-token prediction layers (--include-mtp exports "
            "them)\n",
            r.left_out);
    print_transfer_summary(out, r, seconds);
    out.flush();
    return exit_ok;
}

}  // namespace safeshard::cli
