#include "safeshard/core/error.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <set>
#include <string>

using namespace safeshard;

TEST_CASE("every errc has a distinct name") {
    std::set<std::string_view> names;
    for (int i = 0; i <= static_cast<int>(errc::interrupted); ++i) {
        auto n = to_string(static_cast<errc>(i));
        CAPTURE(i);
        CHECK(n != "unknown");
        CHECK(names.insert(n).second);
    }
    CHECK(to_string(static_cast<errc>(250)) == "unknown");
}

TEST_CASE("error carries code, message and context, and what() shows them all") {
    error e(errc::invalid_offset, "expected data offset 0, found 16",
            {.file = "model.safetensors", .tensor = "w", .offset = 24, .sys_errno = 0});
    CHECK(e.code() == errc::invalid_offset);
    CHECK(e.message() == "expected data offset 0, found 16");
    CHECK(e.file() == "model.safetensors");
    CHECK(e.tensor() == "w");
    CHECK(e.offset() == 24u);
    CHECK(std::string(e.what()) ==
          "invalid_offset: expected data offset 0, found 16 (file 'model.safetensors', "
          "tensor 'w', byte offset 24)");
}

TEST_CASE("error without context prints no parentheses") {
    error e(errc::tensor_not_found, "no tensor named 'x'");
    CHECK(std::string(e.what()) == "tensor_not_found: no tensor named 'x'");
    CHECK_FALSE(e.offset().has_value());
}

TEST_CASE("error with only a tensor or only an offset") {
    CHECK(std::string(error(errc::duplicate_name, "twice", {.tensor = "a"}).what()) ==
          "duplicate_name: twice (tensor 'a')");
    CHECK(std::string(error(errc::invalid_header, "bad", {.offset = 0}).what()) ==
          "invalid_header: bad (byte offset 0)");
}

TEST_CASE("system_error carries errno's text and the path") {
    error e = system_error("open", ENOENT, "/nope/x.safetensors");
    CHECK(e.code() == errc::io_error);
    CHECK(e.sys_errno() == ENOENT);
    CHECK(e.file() == "/nope/x.safetensors");
    CHECK(std::string(e.what()).find("No such file or directory") != std::string::npos);
    CHECK(std::string(e.what()).find("open failed") != std::string::npos);
}

TEST_CASE("error is a std::exception") {
    try {
        throw error(errc::io_error, "x");
    } catch (const std::exception& e) {
        CHECK(std::string(e.what()) == "io_error: x");
    }
}

TEST_CASE("what() escapes control characters of message, file and tensor; the parts stay raw") {
    const std::string name = "w\x1b[31m\x07\r\nq";
    const error e(errc::invalid_index, "tensor '" + name + "' is lost",
                  error_context{.file = "f\x1b]0;title\x07", .tensor = name + "\xc2\x9b" + "x"});
    const std::string w = e.what();
    CHECK(w ==
          "invalid_index: tensor 'w\\x1b[31m\\x07\\x0d\\x0aq' is lost (file "
          "'f\\x1b]0;title\\x07', tensor 'w\\x1b[31m\\x07\\x0d\\x0aq\\u009bx')");
    for (const char c : w) CHECK(static_cast<unsigned char>(c) >= 0x20);
    CHECK(e.tensor() == name + "\xc2\x9b" + "x");  // the raw name, for callers that compare
    CHECK(e.message() == "tensor '" + name + "' is lost");
    // UTF-8 and DEL: UTF-8 kept, DEL escaped.
    CHECK(escape_controls("h\xc3\xa9\x7f") == "h\xc3\xa9\\x7f");
}
