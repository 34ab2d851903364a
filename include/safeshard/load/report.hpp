// load_report: what a load read, wrote and decided, and how long each phase took.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace safeshard {

// A checkpoint tensor the load left alone, and why (a tied copy, a rotary buffer, ...).
struct ignored_tensor {
    std::string name;
    std::string note;
    // Left out on request (ignore_rule::left_out: the multi-token prediction layers unless
    // schema_options::multi_token_prediction), not a tensor the model has no use for.
    bool left_out = false;
};

struct load_report {
    std::uint64_t bytes_read = 0;           // from the files, as counted by the engine
    std::uint64_t bytes_written = 0;        // into the destinations (copies, padding, initialised)
    std::uint64_t rank_bytes = 0;           // the destinations' sizes (tied ones once)
    double plan_seconds = 0;                // checkpoint headers, schema, slice maps, checks
    double allocate_seconds = 0;            // the tensor factory
    double copy_seconds = 0;                // the engine
    double init_seconds = 0;                // created parameters
    std::vector<std::string> missing{};     // the schema's names the checkpoint lacks
    std::vector<std::string> unexpected{};  // checkpoint names no parameter reads
    std::vector<std::string> initialised{};
    std::vector<ignored_tensor> ignored{};
    std::vector<std::string> notes{};

    [[nodiscard]] double total_seconds() const noexcept {
        return plan_seconds + allocate_seconds + copy_seconds + init_seconds;
    }
    // Destination bytes per second of the copy phase, in GB/s (10^9).
    [[nodiscard]] double copy_gbps() const noexcept {
        return copy_seconds > 0 ? static_cast<double>(bytes_written) / copy_seconds / 1e9 : 0;
    }
    // The same over the whole load.
    [[nodiscard]] double gbps() const noexcept {
        const double s = total_seconds();
        return s > 0 ? static_cast<double>(bytes_written) / s / 1e9 : 0;
    }
};

// Several lines: bytes, phases, names.
[[nodiscard]] inline std::string to_string(const load_report& r) {
    auto list = [](const std::vector<std::string>& v) {
        std::string s;
        for (const auto& n : v) s += (s.empty() ? "" : ", ") + n;
        return s;
    };
    std::string s = "read " + std::to_string(r.bytes_read) + " B, wrote " +
                    std::to_string(r.bytes_written) + " B in " + std::to_string(r.total_seconds()) +
                    " s (plan " + std::to_string(r.plan_seconds) + ", allocate " +
                    std::to_string(r.allocate_seconds) + ", copy " +
                    std::to_string(r.copy_seconds) + ", init " + std::to_string(r.init_seconds) +
                    "), copy " + std::to_string(r.copy_gbps()) + " GB/s\n";
    if (!r.missing.empty()) s += "missing: " + list(r.missing) + "\n";
    if (!r.unexpected.empty()) s += "unexpected: " + list(r.unexpected) + "\n";
    if (!r.initialised.empty()) s += "initialised: " + list(r.initialised) + "\n";
    for (const auto& i : r.ignored) s += "ignored: " + i.name + " (" + i.note + ")\n";
    for (const auto& n : r.notes) s += "note: " + n + "\n";
    return s;
}

inline std::ostream& operator<<(std::ostream& os, const load_report& r) {
    return os << to_string(r);
}

}  // namespace safeshard
