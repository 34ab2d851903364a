// replicated: every rank holds the whole tensor.
#pragma once

#include "safeshard/shard/layout.hpp"

namespace safeshard {

// The tag: names the layout at compile time (`replicated::value` is the layout value).
struct replicated {
    static constexpr layout value = make_replicated();
};

}  // namespace safeshard
