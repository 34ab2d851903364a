// safeshard: look inside and check safetensors checkpoints.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <new>
#include <string>

#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "exit_code.hpp"
#include "safeshard/config.hpp"
#include "safeshard/io/atomic_directory.hpp"
#include "safeshard/shard/architectures/registry.hpp"

namespace {

void say(const char* text) noexcept {
    // write(2) only: async-signal-safe. A short or failed write leaves the line cut: no matter.
    const auto n = static_cast<std::size_t>(std::strlen(text));
    if (::write(STDERR_FILENO, text, n) < 0) return;
}

// Ends the process at once whatever phase it is in (opening, parsing, planning, printing),
// except while an output folder is being written: then the writer stops at its next cancel
// point and removes its temporary folder (see output.hpp).
extern "C" void on_sigint(int) {
    using namespace safeshard::cli;
    if (output_complete != 0) {
        say("safeshard: interrupted; the output was already complete\n");
        ::_exit(exit_ok);
    }
    if (safeshard::atomic_directory::begun_in_process() > 0) {
        interrupted_flag = 1;
        return;
    }
    say("safeshard: interrupted\n");
    ::_exit(exit_interrupted);
}

void install_signal_handlers() {
    // A closed pipe becomes EPIPE on write (handled), never a signal.
    ::signal(SIGPIPE, SIG_IGN);
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: a blocked read or write returns EINTR and we stop
    ::sigaction(SIGINT, &sa, nullptr);
}

// Checkpoints of thousands of shards: take every descriptor the hard limit allows (the library
// still bounds what it opens at once by the limit it finds).
void raise_open_file_limit() {
    rlimit l{};
    if (::getrlimit(RLIMIT_NOFILE, &l) != 0 || l.rlim_cur >= l.rlim_max) return;
    l.rlim_cur = l.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &l);
}

// --ep, --expert-placement, --include-mtp and --fuse-experts; `verb` is "Plan" or "Export".
void add_experts_options(CLI::App* cmd, safeshard::cli::experts_args& a, const std::string& verb) {
    cmd->add_option("--ep", a.ep,
                    "Expert-parallel size: expert groups of --tp/--ep ranks each hold their "
                    "own experts, cut --tp/--ep ways (default 1: every rank every expert)");
    cmd->add_option("--expert-placement", a.placement,
                    "How experts spread over the groups: linear (default, contiguous ranges, "
                    "the extra ones to the first groups) or round_robin");
    cmd->add_flag("--include-mtp", a.include_mtp,
                  verb +
                      " the multi-token prediction layers after num_hidden_layers too "
                      "(DeepSeek-V3; skipped by default)");
    cmd->add_flag("--fuse-experts", a.fuse_experts,
                  verb +
                      " each layer's experts as the engine's fused tensors: "
                      "<experts>.w13_weight [E, 2I, H] (each expert's gate rows, then up) and "
                      "<experts>.w2_weight [E, H, I]");
}

void add_checkpoint_options(CLI::App* cmd, safeshard::cli::checkpoint_args& a) {
    cmd->add_option("checkpoint", a.target,
                    "A .safetensors file, an index .json, a folder, or org/name in the Hugging "
                    "Face cache (an existing path wins)")
        ->required();
    cmd->add_option("--revision", a.revision,
                    "Branch, tag or 40-hex commit, for a repository id (default: main)");
    cmd->add_option("--cache-dir", a.cache_dir,
                    "Hugging Face hub cache (default: HF_HUB_CACHE, HF_HOME/hub, "
                    "$XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub)");
    cmd->add_flag("--lenient", a.lenient,
                  "Report unindexed tensors, tensors in two shards and a wrong total_size as "
                  "warnings instead of errors");
}

}  // namespace

int main(int argc, char** argv) {
    using namespace safeshard::cli;
    install_signal_handlers();
    raise_open_file_limit();
    // The architectures the registry knows, as it lists them.
    std::string arch_help = "Architecture (model_type) instead of config.json's:";
    for (const std::string& t : safeshard::known_architectures())
        arch_help += (arch_help.back() == ':' ? " " : ", ") + t;

    CLI::App app{
        "safeshard: look inside, check, convert, export per rank and merge safetensors "
        "checkpoints"};
    app.footer(exit_code_help);
    app.require_subcommand(1);
    app.set_version_flag("--version", SAFESHARD_VERSION_STRING);

    inspect_args inspect;
    auto* inspect_cmd = app.add_subcommand(
        "inspect",
        "List every tensor (dtype, shape, file, byte offset, size), totals per dtype "
        "and per file, and each file's metadata");
    add_checkpoint_options(inspect_cmd, inspect.ckpt);
    inspect_cmd->add_flag("--json", inspect.json,
                          "Print JSON: {\"files\":[{\"path\",\"header_bytes\",\"metadata\","
                          "\"tensors\"}],\"tensors\":[{\"name\",\"dtype\",\"shape\",\"file\","
                          "\"offset\",\"nbytes\"}],\"total_bytes\"}");
    inspect_cmd->footer(exit_code_help);

    verify_args verify;
    auto* verify_cmd = app.add_subcommand(
        "verify",
        "Validate every header, the index against the shards and config.json; print "
        "ok and a summary, or the error");
    add_checkpoint_options(verify_cmd, verify.ckpt);
    verify_cmd->add_flag("--skip-config", verify.skip_config, "Do not parse config.json");
    verify_cmd->footer(exit_code_help);

    convert_args convert;
    auto* convert_cmd = app.add_subcommand(
        "convert",
        "Write the checkpoint again with another dtype and/or sharding (names and "
        "shapes kept), with config.json and the folder's other small files");
    add_checkpoint_options(convert_cmd, convert.ckpt);
    convert_cmd
        ->add_option("--out", convert.out,
                     "The new checkpoint folder; it must not exist (see --force) and "
                     "must not lie inside the input")
        ->required();
    convert_cmd->add_option("--dtype", convert.dtype,
                            "F16, BF16, F32 or F64 (any case): the dtype of every F16/BF16/F32/"
                            "F64 tensor; others are copied unchanged, but a quantized "
                            "checkpoint's weights are written dequantized, without their scales "
                            "and quantization_config (default: keep)");
    convert_cmd->add_option("--max-shard-size", convert.max_shard_size,
                            "Shard size limit as huggingface_hub reads it: 5GB, 500MB (decimal), "
                            "2GiB (binary) or bytes (default: 5GB)");
    convert_cmd->add_flag("--force", convert.force,
                          "Replace an existing output folder, once the new one is complete");
    convert_cmd->footer(exit_code_help);

    plan_args plan;
    auto* plan_cmd = app.add_subcommand(
        "plan",
        "Show how a checkpoint is cut for tensor parallelism: each parameter's layout, "
        "global shape and every rank's local shape and bytes (headers and config.json "
        "only; no tensor data is read)");
    add_checkpoint_options(plan_cmd, plan.ckpt);
    plan_cmd->add_option("--tp", plan.world, "Tensor-parallel world size")->required();
    add_experts_options(plan_cmd, plan.experts, "Plan");
    plan_cmd->add_option("--rank", plan.rank, "Show this rank only");
    plan_cmd->add_option("--arch", plan.arch, arch_help);
    plan_cmd->add_option("--kv-convention", plan.kv_convention,
                         "How KV heads spread when world > KV: contiguous (vLLM, default) or "
                         "interleaved (optimum-neuron)");
    plan_cmd->add_option("--dtype", plan.dtype,
                         "Target dtype (BF16, F16, F32, ...; default: keep each tensor's); a "
                         "quantized checkpoint's weights are dequantized into it");
    plan_cmd->add_flag("--allow-quantized", plan.allow_quantized,
                       "Plan the raw tensors of a quantized checkpoint (scale tensors present)");
    plan_cmd->add_flag("--json", plan.json,
                       "Print JSON: {\"world\",\"parameters\":[{\"name\",\"layout\","
                       "\"global_shape\",\"dtype\",\"tied_to\",\"ranks\":[{\"rank\",\"shape\","
                       "\"nbytes\"}]}],\"rank_bytes\"}");
    plan_cmd->footer(exit_code_help);

    export_args exp;
    auto* export_cmd = app.add_subcommand(
        "export",
        "Write each rank's tensors of a tensor-parallel world, cut as the loader cuts them, "
        "as a checkpoint per rank (OUT/rank-00000, ...) whose metadata undoes the cut");
    add_checkpoint_options(export_cmd, exp.ckpt);
    export_cmd->add_option("--tp", exp.world, "Tensor-parallel world size")->required();
    add_experts_options(export_cmd, exp.experts, "Export");
    export_cmd
        ->add_option("--out", exp.out,
                     "The export folder; it must not exist (see --force) and must not lie "
                     "inside the input")
        ->required();
    export_cmd->add_option("--dtype", exp.dtype,
                           "F16, BF16, F32 or F64 (any case): the dtype of every floating-point "
                           "tensor; others keep theirs, but a quantized checkpoint's weights are "
                           "written dequantized, without their scales and quantization_config "
                           "(default: keep)");
    export_cmd->add_option("--arch", exp.arch, arch_help);
    export_cmd->add_option("--kv-convention", exp.kv_convention,
                           "How KV heads spread when world > KV: contiguous (vLLM, default) or "
                           "interleaved (optimum-neuron)");
    export_cmd->add_option("--max-shard-size", exp.max_shard_size,
                           "Shard size limit of each rank folder: 5GB, 500MB (decimal), 2GiB "
                           "(binary) or bytes (default: 5GB)");
    export_cmd->add_flag("--allow-quantized", exp.allow_quantized,
                         "Export the raw tensors of a quantized checkpoint");
    export_cmd->add_flag("--force", exp.force,
                         "Replace an existing output folder, once the new one is complete");
    export_cmd->footer(exit_code_help);

    merge_args merge;
    auto* merge_cmd = app.add_subcommand(
        "merge",
        "Merge the rank folders of an export back into one checkpoint in the original layout, "
        "from the export metadata alone (replicated copies checked identical)");
    merge_cmd->add_option("export", merge.dir, "The export folder (holding rank-00000, ...)")
        ->required();
    merge_cmd
        ->add_option("--out", merge.out,
                     "The merged checkpoint folder; it must not exist (see --force)")
        ->required();
    merge_cmd->add_option("--max-shard-size", merge.max_shard_size,
                          "Shard size limit as huggingface_hub reads it (default: 5GB)");
    merge_cmd->add_flag("--force", merge.force,
                        "Replace an existing output folder, once the new one is complete");
    merge_cmd->footer(exit_code_help);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) {  // --help, --version
            (void)app.exit(e);
            return exit_ok;
        }
        fmt::print(stderr, "safeshard: {}\nRun with --help for more information.\n",
                   safeshard::escape_controls(e.what()));
        return exit_usage;
    }

    output out;
    try {
        if (*inspect_cmd) return run_inspect(inspect, out);
        if (*verify_cmd) return run_verify(verify, out);
        if (*convert_cmd) return run_convert(convert, out);
        if (*plan_cmd) return run_plan(plan, out);
        if (*export_cmd) return run_export(exp, out);
        if (*merge_cmd) return run_merge(merge, out);
        return exit_usage;
    } catch (const broken_pipe&) {
        return exit_ok;  // the reader left (`| head`): stop quietly
    } catch (const safeshard::error& e) {
        if (e.code() == safeshard::errc::interrupted) {
            fmt::print(stderr, "safeshard: interrupted\n");
        } else {
            fmt::print(stderr, "safeshard: error: {}{}\n", e.what(), option_hint(e));
        }
        return exit_code_for(e.code());
    } catch (const std::filesystem::filesystem_error& e) {
        fmt::print(stderr, "safeshard: error: io_error: {}\n",
                   safeshard::escape_controls(e.what()));
        return exit_system;
    } catch (const std::bad_alloc&) {
        fmt::print(stderr, "safeshard: error: out of memory\n");
        return exit_system;
    } catch (const std::exception& e) {
        fmt::print(stderr, "safeshard: error: {}\n", safeshard::escape_controls(e.what()));
        return exit_invalid_input;
    }
}
