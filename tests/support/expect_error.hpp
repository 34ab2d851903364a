// Expecting a safeshard::error: FAILs the test case when nothing throws (or something else
// does), checks the code and, given one, a substring of the message; returns the error for
// further checks.
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <string_view>
#include <utility>

#include "safeshard/core/error.hpp"

namespace safeshard::test {

// Any code.
template <class F>
safeshard::error expect_error(F&& f) {
    try {
        std::forward<F>(f)();
    } catch (const safeshard::error& e) {
        return e;
    }
    FAIL("expected a safeshard::error, nothing was thrown");
    return safeshard::error(safeshard::errc::invalid_argument, "unreachable");
}

// `code`, and `part` somewhere in the message when not empty.
template <class F>
safeshard::error expect_error(safeshard::errc code, F&& f, std::string_view part = {}) {
    safeshard::error e = expect_error(std::forward<F>(f));
    CHECK_MESSAGE(e.code() == code, std::string(to_string(e.code()))
                                        << " instead of " << std::string(to_string(code)) << ": "
                                        << std::string(e.what()));
    if (!part.empty())
        CHECK_MESSAGE(std::string_view(e.what()).find(part) != std::string_view::npos,
                      "\"" << std::string(part) << "\" not in: " << std::string(e.what()));
    return e;
}

}  // namespace safeshard::test
