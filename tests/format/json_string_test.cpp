#include "safeshard/format/json_string.hpp"

#include <doctest/doctest.h>

#include <string>
#include <string_view>

using namespace safeshard;

namespace {

std::string quoted(std::string_view s, json_string_style style) {
    std::string out;
    append_json_string(out, s, style);
    return out;
}

// Every byte below 0x20, then DEL.
const std::string controls = [] {
    std::string s;
    for (int c = 0; c < 0x20; ++c) s += static_cast<char>(c);
    s += '\x7f';
    return s;
}();

}  // namespace

TEST_CASE("serde style: short forms, other controls as \\u00xx, DEL and UTF-8 raw") {
    const auto serde = json_string_style::serde();
    CHECK(quoted("", serde) == "\"\"");
    CHECK(quoted("a\"b\\c/", serde) == "\"a\\\"b\\\\c/\"");
    CHECK(quoted(controls, serde) ==
          "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r"
          "\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019"
          "\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f\x7f\"");
    CHECK(quoted("\xc3\xa9\xf0\x9f\x98\x80", serde) == "\"\xc3\xa9\xf0\x9f\x98\x80\"");
    CHECK(quoted("\xff", serde) == "\"\xff\"");  // the caller checks UTF-8
}

TEST_CASE("newline_tab style: only \\n and \\t short, as the export metadata writes") {
    const auto nt = json_string_style::newline_tab();
    CHECK(quoted("\b\t\n\f\r", nt) == "\"\\u0008\\t\\n\\u000c\\u000d\"");
    CHECK(quoted("q\"\\\x7f\xc3\xa9", nt) == "\"q\\\"\\\\\x7f\xc3\xa9\"");
    CHECK(quoted("\x01\x1f", nt) == "\"\\u0001\\u001f\"");
}

TEST_CASE("python_ascii style: json.dumps with ensure_ascii") {
    const auto py = json_string_style::python_ascii();
    CHECK(quoted("model.embed_tokens.weight", py) == "\"model.embed_tokens.weight\"");
    CHECK(quoted("\b\t\n\f\r\x01\x7f", py) == "\"\\b\\t\\n\\f\\r\\u0001\\u007f\"");
    CHECK(quoted("\xc3\xa9", py) == "\"\\u00e9\"");                 // U+00E9
    CHECK(quoted("\xe2\x82\xac", py) == "\"\\u20ac\"");             // U+20AC
    CHECK(quoted("\xf0\x9f\x98\x80", py) == "\"\\ud83d\\ude00\"");  // U+1F600: a surrogate pair
    CHECK(quoted("\xef\xbf\xbf", py) == "\"\\uffff\"");
    CHECK(quoted("a\"\\", py) == "\"a\\\"\\\\\"");
}

TEST_CASE("lossy style: valid UTF-8 raw, each invalid byte as U+FFFD") {
    const auto lossy = json_string_style::lossy();
    CHECK(quoted("\xc3\xa9", lossy) == "\"\xc3\xa9\"");
    CHECK(quoted("\xf0\x9f\x98\x80", lossy) == "\"\xf0\x9f\x98\x80\"");
    CHECK(quoted("a\xff"
                 "b",
                 lossy) == "\"a\\ufffdb\"");
    CHECK(quoted("\xc3", lossy) == "\"\\ufffd\"");                                   // truncated
    CHECK(quoted("\xc0\xaf", lossy) == "\"\\ufffd\\ufffd\"");                        // overlong
    CHECK(quoted("\xed\xa0\x80", lossy) == "\"\\ufffd\\ufffd\\ufffd\"");             // a surrogate
    CHECK(quoted("\xf4\x90\x80\x80", lossy) == "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");  // > U+10FFFF
    CHECK(quoted("\x7f\t\r", lossy) == "\"\x7f\\t\\r\"");
}

TEST_CASE("any buffer with push_back and append(first, last)") {
    struct buffer {
        std::string s;
        void push_back(char c) { s.push_back(c); }
        void append(const char* b, const char* e) { s.append(b, e); }
    } b;
    append_json_string(b, "x\ny", json_string_style::serde());
    CHECK(b.s == "\"x\\ny\"");
}
