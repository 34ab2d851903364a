// Tables keyed by names read from files: a keyed hash (SipHash-1-3 under a per-process random
// key) and the open-addressing index built on it.
//
// Names in a header or an index are chosen by whoever wrote the file. Under an unkeyed hash
// (std::hash) names can be found offline that fall into one probe cluster, and building the
// table becomes quadratic; under a secret key they cannot. Nothing printed or written may
// depend on the key: these tables are only looked up, never iterated for output.
#pragma once

#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "safeshard/config.hpp"

namespace safeshard::detail {

// A 128-bit SipHash key.
struct sip_key {
    std::uint64_t k0 = 0;
    std::uint64_t k1 = 0;
};

// SipHash-c-d of `s` (Aumasson and Bernstein). 2-4 is the PRF of the paper; 1-3 is the
// variant hash tables use, strong enough that a key kept secret defeats crafted collisions.
template <int C, int D>
[[nodiscard]] constexpr std::uint64_t siphash(const sip_key& key, std::string_view s) noexcept {
    std::uint64_t v0 = key.k0 ^ 0x736f6d6570736575ull;
    std::uint64_t v1 = key.k1 ^ 0x646f72616e646f6dull;
    std::uint64_t v2 = key.k0 ^ 0x6c7967656e657261ull;
    std::uint64_t v3 = key.k1 ^ 0x7465646279746573ull;
    const auto rounds = [&](int n) {
        for (int i = 0; i < n; ++i) {
            v0 += v1;
            v1 = std::rotl(v1, 13) ^ v0;
            v0 = std::rotl(v0, 32);
            v2 += v3;
            v3 = std::rotl(v3, 16) ^ v2;
            v0 += v3;
            v3 = std::rotl(v3, 21) ^ v0;
            v2 += v1;
            v1 = std::rotl(v1, 17) ^ v2;
            v2 = std::rotl(v2, 32);
        }
    };
    const auto absorb = [&](std::uint64_t m) {
        v3 ^= m;
        rounds(C);
        v0 ^= m;
    };
    // Words are little-endian: loaded whole at run time (config.hpp: the host is), byte by
    // byte in constant expressions. The last n < 8 bytes come from the last whole word.
    const auto word = [&](std::size_t at, std::size_t n) {
        std::uint64_t m = 0;
        if (n == 0) return m;
        if (std::is_constant_evaluated()) {
            for (std::size_t j = 0; j < n; ++j)
                m |= std::uint64_t{static_cast<unsigned char>(s[at + j])} << (8 * j);
        } else if (n < 8 && s.size() >= 8) {
            std::memcpy(&m, s.data() + s.size() - 8, 8);
            m >>= 64 - 8 * n;
        } else {
            std::memcpy(&m, s.data() + at, n);
        }
        return m;
    };
    const std::size_t full = s.size() & ~std::size_t{7};
    for (std::size_t i = 0; i < full; i += 8) absorb(word(i, 8));
    absorb((static_cast<std::uint64_t>(s.size() & 0xff) << 56) | word(full, s.size() - full));
    v2 ^= 0xff;
    rounds(D);
    return v0 ^ v1 ^ v2 ^ v3;
}

// This process's key, drawn once from the system's random source. Where that source fails
// (no /dev/urandom in a bare chroot), the clock, the thread and an address stand in: still
// unknown to whoever wrote the file in advance.
[[nodiscard]] inline const sip_key& process_name_key() noexcept {
    static const sip_key key = [] {
        sip_key k;
        try {
            std::random_device rd;
            k.k0 = (std::uint64_t{rd()} << 32) ^ rd();
            k.k1 = (std::uint64_t{rd()} << 32) ^ rd();
        } catch (...) {
            const auto now = static_cast<std::uint64_t>(
                std::chrono::high_resolution_clock::now().time_since_epoch().count());
            const auto thread = std::hash<std::thread::id>{}(std::this_thread::get_id());
            const auto where = reinterpret_cast<std::uintptr_t>(&k);
            k.k0 = siphash<2, 4>({now, where}, "safeshard");
            k.k1 = siphash<2, 4>({thread, now}, "safeshard");
        }
        return k;
    }();
    return key;
}

// A hash of names under the process key, for unordered containers keyed by names from files.
struct name_hash {
    using is_transparent = void;
    sip_key key = process_name_key();
    [[nodiscard]] std::size_t operator()(std::string_view s) const noexcept {
        return static_cast<std::size_t>(siphash<1, 3>(key, s));
    }
};

// Open addressing over positions in an outside table of names (a lookup allocates nothing).
// A slot holds the position + 1 (0 = empty) and the hash's high half, so that a probe past
// another name rarely touches the names. At most half the slots are used.
class name_index {
public:
    // Empties the table and sizes it for `count` names (a power of two, at least 2 × count).
    void reset(std::size_t count) {
        std::size_t cap = 16;
        while (cap < count * 2) cap *= 2;
        slots_.assign(cap, 0);
        hash_ = name_hash{};
        probes_ = 0;
    }

    [[nodiscard]] std::uint64_t hash(std::string_view name) const noexcept {
        return siphash<1, 3>(hash_.key, name);
    }

    // Returns the position already holding `name`, or nullopt after inserting `pos`.
    // `name_of(p)` gives the name at position p.
    template <class NameOf>
    std::optional<std::uint32_t> insert(std::string_view name, std::uint32_t pos,
                                        const NameOf& name_of) {
        return insert(name, hash(name), pos, name_of);
    }
    // The same with the hash already computed (see prefetch()).
    template <class NameOf>
    std::optional<std::uint32_t> insert(std::string_view name, std::uint64_t h, std::uint32_t pos,
                                        const NameOf& name_of) {
        const std::size_t mask = slots_.size() - 1;
        for (std::size_t i = h & mask;; i = (i + 1) & mask) {
            ++probes_;
            const std::uint64_t s = slots_[i];
            if (s == 0) {
                slots_[i] = (h & high_half) | (std::uint64_t{pos} + 1);
                return std::nullopt;
            }
            if ((s & high_half) == (h & high_half)) {
                const auto other = static_cast<std::uint32_t>(s - 1);
                if (name_of(other) == name) return other;
            }
        }
    }

    template <class NameOf>
    [[nodiscard]] std::optional<std::uint32_t> find(std::string_view name,
                                                    const NameOf& name_of) const {
        if (slots_.empty()) return std::nullopt;
        const std::uint64_t h = hash(name);
        const std::size_t mask = slots_.size() - 1;
        for (std::size_t i = h & mask;; i = (i + 1) & mask) {
            const std::uint64_t s = slots_[i];
            if (s == 0) return std::nullopt;
            if ((s & high_half) == (h & high_half)) {
                const auto other = static_cast<std::uint32_t>(s - 1);
                if (name_of(other) == name) return other;
            }
        }
    }

    // Starts loading the slot where `h` lands: a table bigger than the cache makes each insert
    // wait on memory otherwise.
    void prefetch(std::uint64_t h) const noexcept {
        __builtin_prefetch(slots_.data() + (h & (slots_.size() - 1)));
    }

    // Slots visited by insert() since reset(): about 1.5 per name at this load, whatever the
    // names (a measure for tests).
    [[nodiscard]] std::uint64_t probes() const noexcept { return probes_; }

private:
    static constexpr std::uint64_t high_half = 0xffff'ffff'0000'0000ull;

    std::vector<std::uint64_t> slots_;
    name_hash hash_{};
    std::uint64_t probes_ = 0;
};

}  // namespace safeshard::detail
