// Expert parallelism: which experts of a mixture a rank holds, and how it cuts them.
//
// A rank is (rank, world) of tensor parallelism; `ep` expert groups (1 <= ep <= world, ep
// divides world) of world/ep consecutive ranks each share the experts: group g = rank /
// (world/ep) holds its experts, each cut world/ep ways (gate and up on dim 0, down on dim 1)
// at the rank's place in the group, rank % (world/ep). ep = 1: every rank holds every expert,
// cut world ways; ep = world: whole experts, each rank its own set.
//
// Placement of E experts over the ep groups: `linear` (base = E / ep, rem = E % ep; group g
// holds [g·base + min(g, rem), that + base + (g < rem)): the extra experts go to the first
// groups) or `round_robin` (group g holds the experts e with e % ep == g).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "safeshard/config.hpp"
#include "safeshard/core/error.hpp"

namespace safeshard {

enum class expert_placement : std::uint8_t { linear, round_robin };

[[nodiscard]] constexpr std::string_view to_string(expert_placement p) noexcept {
    return p == expert_placement::linear ? "linear" : "round_robin";
}

// "linear" / "round_robin"; nullopt otherwise.
[[nodiscard]] constexpr std::optional<expert_placement> parse_expert_placement(
    std::string_view s) noexcept {
    if (s == "linear") return expert_placement::linear;
    if (s == "round_robin") return expert_placement::round_robin;
    return std::nullopt;
}

// How the experts spread over the ranks.
struct expert_parallel {
    std::uint32_t ep = 1;  // expert groups
    expert_placement placement = expert_placement::linear;

    friend constexpr bool operator==(const expert_parallel&, const expert_parallel&) = default;
};

// A rank's place among the experts (for a valid world and ep).
struct expert_rank {
    std::uint32_t group = 0;     // its expert group
    std::uint32_t ways = 1;      // ranks per group: the ways each of its experts is cut
    std::uint32_t position = 0;  // its place in the group

    friend constexpr bool operator==(const expert_rank&, const expert_rank&) = default;
};

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr expert_rank expert_rank_of(
    std::uint32_t rank, std::uint32_t world, std::uint32_t ep) noexcept {
    const std::uint32_t ways = ep == 0 ? world : world / ep;
    if (ways == 0) return {};
    return {rank / ways, ways, rank % ways};
}

// The group that holds expert e of `experts` (for e < experts and 1 <= ep <= experts).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t expert_group_of(
    std::uint64_t e, std::uint64_t experts, expert_parallel p) noexcept {
    if (p.ep <= 1) return 0;
    if (p.placement == expert_placement::round_robin) return static_cast<std::uint32_t>(e % p.ep);
    const std::uint64_t base = experts / p.ep, rem = experts % p.ep;
    const std::uint64_t wide = rem * (base + 1);  // the first rem groups hold base + 1 each
    if (e < wide) return static_cast<std::uint32_t>(e / (base + 1));
    return static_cast<std::uint32_t>(rem + (e - wide) / base);
}

// Whether the rank's group holds expert e.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool holds_expert(const expert_rank& r,
                                                                std::uint64_t e,
                                                                std::uint64_t experts,
                                                                expert_parallel p) noexcept {
    return expert_group_of(e, experts, p) == r.group;
}

// The most experts a layer may have (the largest published models have 512): a bound that keeps
// the per-expert walks of a plan and a merge short whatever a file says.
inline constexpr std::uint64_t max_experts = std::uint64_t{1} << 16;

// The experts group g holds, ascending.
[[nodiscard]] inline std::vector<std::uint64_t> experts_of_group(std::uint32_t g,
                                                                 std::uint64_t experts,
                                                                 expert_parallel p) {
    std::vector<std::uint64_t> v;
    for (std::uint64_t e = 0; e < experts; ++e)
        if (expert_group_of(e, experts, p) == g) v.push_back(e);
    return v;
}

// invalid_argument unless 1 <= ep <= world and ep divides world.
inline void check_expert_parallel(std::uint32_t world, expert_parallel p) {
    if (p.ep == 0 || p.ep > world || world % p.ep != 0)
        throw error(errc::invalid_argument,
                    "expert parallel size " + std::to_string(p.ep) +
                        " does not divide the world of " + std::to_string(world) +
                        " ranks (it must be between 1 and the world, and divide it)");
}

// invalid_config when the model has fewer experts than expert groups (a group would hold
// none).
inline void check_expert_count(std::uint64_t experts, expert_parallel p) {
    if (experts > max_experts)
        throw error(errc::invalid_config, std::to_string(experts) +
                                              " experts a layer: more than the " +
                                              std::to_string(max_experts) + " safeshard plans");
    if (experts > 0 && experts < p.ep)
        throw error(errc::invalid_config,
                    std::to_string(p.ep) + " expert groups for " + std::to_string(experts) +
                        " experts: a group would hold none (the expert parallel size must be "
                        "at most the expert count)");
}

}  // namespace safeshard
