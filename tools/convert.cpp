// `safeshard convert`: rewrites a checkpoint with another dtype and/or another sharding
// (save/convert.hpp), streaming tensor by tensor into a folder that appears complete or not at
// all.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include "commands.hpp"
#include "progress_bar.hpp"
#include "safeshard/core/clock.hpp"
#include "safeshard/save/convert.hpp"

namespace safeshard::cli {

int run_convert(const convert_args& a, output& out) {
    const auto started = std::chrono::steady_clock::now();
    check_out_is_new(a.out, a.force);
    convert_options o;
    o.to = policy_dtype_arg(a.dtype);
    o.max_shard_size = parse_shard_size(a.max_shard_size);
    o.force = a.force;
    const checkpoint c = open_checkpoint(a.ckpt);
    progress_bar bar;
    o.progress = bar.callback();
    o.cancel_point = [] { check_interrupted(); };

    const convert_report r = convert_checkpoint(c, a.out, o);
    mark_output_complete();  // OUT is complete: a SIGINT from now on changes nothing
    bar.finish();
    if (r.kept_without_conversion > 0)
        fmt::print(stderr,
                   "safeshard: note: {} tensors kept in their dtype: no direct conversion to {} "
                   "(F64 converts only to F32; rounding twice through F32 could differ)\n",
                   r.kept_without_conversion, name(*o.to));
    if (r.metadata_differs)
        fmt::print(stderr,
                   "safeshard: note: the input files' __metadata__ differ; the output's is "
                   "{{\"format\": \"pt\"}}\n");
    if (r.dequantized > 0)
        fmt::print(stderr,
                   "safeshard: note: {} quantized weights written dequantized to {}; {} scale "
                   "tensors read for them or no longer needed, not written; config.json without "
                   "quantization_config\n",
                   r.dequantized, name(*o.to), r.companions_dropped);
    for (const auto& f : r.skipped_side_files) note_not_copied(f.path, f.reason);

    const double seconds = seconds_since(started);
    out.print("converted {} tensors ({}) from {} files into {} at {}\n", r.tensors,
              o.to ? fmt::format("{} to {}, {} unchanged", r.converted, name(*o.to),
                                 r.tensors - r.converted)
                   : std::string("dtypes kept"),
              r.input_files,
              r.shard_files == 1 ? std::string("model.safetensors")
                                 : fmt::format("{} shards + index", r.shard_files),
              a.out);
    out.print("{} written ({} bytes) in {:.2f} s ({}/s), {} other files copied{}\n",
              human_bytes(r.bytes_written), r.bytes_written, seconds,
              human_bytes(static_cast<std::uint64_t>(static_cast<double>(r.bytes_written) /
                                                     std::max(seconds, 1e-9))),
              r.side_files, r.replaced ? ", old folder replaced" : "");
    out.flush();
    return exit_ok;
}

}  // namespace safeshard::cli
