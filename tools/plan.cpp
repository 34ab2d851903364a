// safeshard plan: each parameter's layout, global shape, and every rank's local shape and
// bytes, from the headers and config.json alone (no tensor data read, nothing allocated).
#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/core.h>

#include "commands.hpp"
#include "safeshard/load/plan.hpp"

namespace safeshard::cli {

namespace {

void shape_json(output& out, const shape& s) {
    out.write("[");
    for (std::size_t i = 0; i < s.rank(); ++i) out.print("{}{}", i ? "," : "", s[i]);
    out.write("]");
}

// One parameter across the ranks shown: each rank that holds it (an expert's tensor is held
// by its expert group only), in rank order.
struct parameter_row {
    struct held {
        std::uint32_t rank;
        const load_plan* plan;
        const plan_destination* local;
    };
    std::vector<held> holders;
    std::vector<parameter_row> companions;  // a quantized weight's scales, each across the ranks

    [[nodiscard]] const plan_destination& first() const { return *holders.front().local; }
    // The name of the parameter this one is tied to (on the first rank holding it).
    [[nodiscard]] std::string_view tied_to() const {
        const held& h = holders.front();
        return h.plan->destinations()[*h.local->tied_to].name;
    }
};

// The plans of the ranks shown (one rank, or every rank of the world) and their parameters
// in the schema's order.
struct rank_plans {
    std::vector<std::uint32_t> ranks;
    std::vector<load_plan> plans;

    [[nodiscard]] std::vector<parameter_row> parameters() const {
        std::map<std::size_t, parameter_row> by_place;
        for (std::size_t k = 0; k < plans.size(); ++k)
            for (const plan_destination& d : plans[k].destinations())
                if (!d.companion_of)
                    by_place[d.schema_index].holders.push_back({ranks[k], &plans[k], &d});
        for (std::size_t k = 0; k < plans.size(); ++k)
            for (const plan_destination& d : plans[k].destinations()) {
                if (!d.companion_of || d.consumed) continue;  // consumed: no tensor
                auto& of = by_place[d.schema_index].companions;
                auto it = std::find_if(of.begin(), of.end(), [&](const parameter_row& c) {
                    return c.first().name == d.name;
                });
                if (it == of.end()) it = of.insert(of.end(), parameter_row{});
                it->holders.push_back({ranks[k], &plans[k], &d});
            }
        std::vector<parameter_row> rows;
        rows.reserve(by_place.size());
        for (auto& [place, row] : by_place) rows.push_back(std::move(row));
        return rows;
    }
};

[[nodiscard]] std::uint64_t bytes_of(const plan_destination& d) { return d.tied() ? 0 : d.bytes; }

[[nodiscard]] plan_options options_of(const plan_args& a) {
    plan_options o;
    o.strict = !a.ckpt.lenient;
    o.allow_quantized = a.allow_quantized;
    o.architecture = a.arch;
    o.schema.multi_token_prediction = a.experts.include_mtp;
    o.schema.fuse_experts = a.experts.fuse_experts;
    if (!a.kv_convention.empty()) o.schema.kv = kv_convention_arg(a.kv_convention);
    if (!a.dtype.empty()) {
        const auto p = parse_dtype_policy(a.dtype);
        if (!p)
            throw error(errc::invalid_argument,
                        "--dtype: '" + a.dtype +
                            "' is neither a dtype (BF16, F32, ...), keep nor by-device");
        o.dtype = *p;
    }
    return o;
}

// "name", "layout", "global_shape", "dtype" of a row's tensor.
void tensor_json(output& out, const plan_destination& d) {
    out.write("{\"name\":");
    out.json_string(d.name);
    out.write(",\"layout\":");
    out.json_string(layout_name(d));
    out.write(",\"global_shape\":");
    shape_json(out, d.global);
    out.write(",\"dtype\":");
    out.json_string(safeshard::name(d.dtype));
}

// "ranks": each rank that holds the row's tensor, its shape and bytes.
void ranks_json(output& out, const parameter_row& row) {
    out.write(",\"ranks\":[");
    for (std::size_t k = 0; k < row.holders.size(); ++k) {
        const auto& h = row.holders[k];
        out.print("{}{{\"rank\":{},\"shape\":", k ? "," : "", h.rank);
        shape_json(out, h.local->local);
        out.print(",\"nbytes\":{}}}", bytes_of(*h.local));
    }
    out.write("]");
}

void print_json(output& out, std::uint32_t world, const rank_plans& rp) {
    const std::vector<parameter_row> params = rp.parameters();
    out.print("{{\"world\":{},\"parameters\":[", world);
    for (std::size_t i = 0; i < params.size(); ++i) {
        const plan_destination& d = params[i].first();
        if (i) out.write(",");
        tensor_json(out, d);
        out.write(",\"tied_to\":");
        if (d.tied())
            out.json_string(params[i].tied_to());
        else
            out.write("null");
        ranks_json(out, params[i]);
        out.write(",\"companions\":[");
        for (std::size_t c = 0; c < params[i].companions.size(); ++c) {
            if (c) out.write(",");
            tensor_json(out, params[i].companions[c].first());
            ranks_json(out, params[i].companions[c]);
            out.write("}");
        }
        out.write("]}");
    }
    out.write("],\"rank_bytes\":[");
    for (std::size_t k = 0; k < rp.plans.size(); ++k)
        out.print("{}{}", k ? "," : "", rp.plans[k].total_bytes());
    out.write("]}\n");
}

void print_text(output& out, const plan_args& a, const rank_plans& rp) {
    const std::vector<parameter_row> params = rp.parameters();
    out.print("{} parameters, tensor parallel over {} rank(s){}{}\n\n", params.size(), a.world,
              a.experts.ep > 1
                  ? fmt::format(", experts over {} groups ({})", a.experts.ep, a.experts.placement)
                  : std::string(),
              a.rank ? fmt::format(", rank {} shown", *a.rank) : std::string());
    for (const parameter_row& row : params) {
        const plan_destination& d = row.first();
        out.print("{}  {}  {}  {}", escape_controls(d.name), layout_name(d), d.global.to_string(),
                  safeshard::name(d.dtype));
        if (d.tied()) out.print("  tied to {}", row.tied_to());
        if (d.created()) out.print("  initialised ({})", to_string(d.init.kind));
        out.write("\n");
        for (const auto& h : row.holders)
            out.print("    rank {}: {}  {}\n", h.rank, h.local->local.to_string(),
                      human_bytes(bytes_of(*h.local)));
        for (const parameter_row& c : row.companions) {
            const plan_destination& cd = c.first();
            out.print("  + {}  {}  {}  {}\n", escape_controls(cd.name), layout_name(cd),
                      cd.global.to_string(), safeshard::name(cd.dtype));
            for (const auto& h : c.holders)
                out.print("    rank {}: {}  {}\n", h.rank, h.local->local.to_string(),
                          human_bytes(bytes_of(*h.local)));
        }
    }
    out.write("\nbytes per rank:\n");
    for (std::size_t k = 0; k < rp.plans.size(); ++k)
        out.print("  rank {}: {} ({} bytes){}\n", rp.ranks[k],
                  human_bytes(rp.plans[k].total_bytes()), rp.plans[k].total_bytes(),
                  rp.plans[k].experts() == 0 || a.experts.ep <= 1
                      ? std::string()
                      : fmt::format(", {} of {} experts", rp.plans[k].held_experts().size(),
                                    rp.plans[k].experts()));
    for (const auto& n : rp.plans.front().unexpected())
        out.print("unexpected (not loaded): {}\n", escape_controls(n));
    std::size_t left_out = 0;
    for (const auto& ig : rp.plans.front().ignored()) {
        out.print("ignored: {} ({})\n", escape_controls(ig.name), ig.note);
        left_out += ig.left_out ? 1 : 0;
    }
    if (left_out != 0)
        out.print(
            "({} tensors of the multi-token prediction layers left out: --include-mtp plans "
            "them)\n",
            left_out);
}

}  // namespace

int run_plan(const plan_args& a, output& out) {
    if (a.world == 0) throw error(errc::invalid_argument, "--tp must be at least 1");
    if (a.rank && *a.rank >= a.world)
        throw error(errc::invalid_argument,
                    fmt::format("--rank {} is not below --tp {}", *a.rank, a.world));
    const parallel_context base{.world = a.world,
                                .experts = expert_parallel_arg(a.experts, a.world)};
    const plan_options o = options_of(a);
    const checkpoint ckpt = open_checkpoint(a.ckpt);
    rank_plans rp;
    for (std::uint32_t r = a.rank.value_or(0); r < (a.rank ? *a.rank + 1 : a.world); ++r) {
        check_interrupted();
        parallel_context ctx = base;
        ctx.rank = r;
        rp.ranks.push_back(r);
        rp.plans.push_back(load_plan::build(ckpt, ctx, o));
    }
    if (a.json)
        print_json(out, a.world, rp);
    else
        print_text(out, a, rp);
    out.flush();
    return exit_ok;
}

}  // namespace safeshard::cli
