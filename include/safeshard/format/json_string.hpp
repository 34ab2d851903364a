// JSON string literals, written byte for byte as the writer that a file's readers compare
// against writes them: serde_json (safetensors headers as the Rust crate writes them),
// Python's json.dumps with ensure_ascii (model.safetensors.index.json as transformers writes
// it), and a lossy form for text of unknown encoding (file names in the CLI's --json output).
//
// Every style escapes '"' and '\\' and writes the other control characters below 0x20 as
// \u00xx (lowercase hex); they differ in which controls get a short form and in what happens to
// bytes of 0x7f and above:
//   style            short forms           DEL and UTF-8                  invalid UTF-8
//   serde            \b \t \n \f \r        raw                            raw
//   python_ascii     \b \t \n \f \r        \uXXXX (surrogate pairs)       \ufffd
//   lossy            \b \t \n \f \r        raw                            \ufffd (per byte)
//   newline_tab      \t \n                 raw                            raw
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace safeshard {

// Which control characters have a two-character short form.
enum class json_control_escapes : std::uint8_t {
    short_forms,  // \b \t \n \f \r
    newline_tab,  // \t \n only; \b \f \r as \u00xx
};

// What happens to bytes 0x7f and above.
enum class json_non_ascii : std::uint8_t {
    raw,                   // copied as they are (the input is known to be UTF-8)
    escaped,               // DEL and every code point as \uXXXX, ASCII-only output
    replace_invalid_utf8,  // well-formed UTF-8 raw, each byte of anything else as \ufffd
};

struct json_string_style {
    json_control_escapes controls = json_control_escapes::short_forms;
    json_non_ascii non_ascii = json_non_ascii::raw;

    // serde_json, as the Rust safetensors crate writes headers.
    [[nodiscard]] static constexpr json_string_style serde() noexcept { return {}; }
    // Python's json.dumps(ensure_ascii=True), as transformers writes the index file.
    [[nodiscard]] static constexpr json_string_style python_ascii() noexcept {
        return {json_control_escapes::short_forms, json_non_ascii::escaped};
    }
    // Always valid JSON, whatever the bytes: invalid UTF-8 becomes U+FFFD.
    [[nodiscard]] static constexpr json_string_style lossy() noexcept {
        return {json_control_escapes::short_forms, json_non_ascii::replace_invalid_utf8};
    }
    // Short forms for \n and \t only (the export metadata's documents).
    [[nodiscard]] static constexpr json_string_style newline_tab() noexcept {
        return {json_control_escapes::newline_tab, json_non_ascii::raw};
    }

    friend constexpr bool operator==(json_string_style, json_string_style) noexcept = default;
};

namespace detail {

// The length of the well-formed UTF-8 sequence at s[i] (2 to 4 bytes) and its code point, or
// 0 where the bytes are not one (truncated, bad continuation, overlong, surrogate, > U+10FFFF).
struct utf8_sequence {
    std::size_t length = 0;
    std::uint32_t code_point = 0;
};

[[nodiscard]] constexpr utf8_sequence decode_utf8(std::string_view s, std::size_t i) noexcept {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = 0;
    std::uint32_t cp = 0;
    std::uint32_t min = 0;
    if ((c & 0xe0) == 0xc0) {
        len = 2, cp = c & 0x1fu, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3, cp = c & 0x0fu, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4, cp = c & 0x07u, min = 0x10000;
    }
    if (len == 0 || i + len > s.size()) return {};
    for (std::size_t k = 1; k < len; ++k) {
        const auto b = static_cast<unsigned char>(s[i + k]);
        if ((b & 0xc0) != 0x80) return {};
        cp = (cp << 6) | (b & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return {};
    return {len, cp};
}

}  // namespace detail

// Appends `s` as a JSON string literal, quotes included, to `out`: a std::string, or any
// buffer with push_back(char) and append(const char*, const char*) (fmt::memory_buffer).
template <class Out>
void append_json_string(Out& out, std::string_view s, json_string_style style) {
    static constexpr char hex[] = "0123456789abcdef";
    auto put = [&](std::string_view t) { out.append(t.data(), t.data() + t.size()); };
    auto u16 = [&](std::uint32_t v) {
        const char e[6] = {
            '\\',        'u', hex[(v >> 12) & 0xf], hex[(v >> 8) & 0xf], hex[(v >> 4) & 0xf],
            hex[v & 0xf]};
        out.append(e, e + 6);
    };
    const bool short_forms = style.controls == json_control_escapes::short_forms;
    out.push_back('"');
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x7f || (c == 0x7f && style.non_ascii != json_non_ascii::escaped)) {
            switch (c) {
                case '"': put("\\\""); break;
                case '\\': put("\\\\"); break;
                case '\n': put("\\n"); break;
                case '\t': put("\\t"); break;
                case '\b': short_forms ? put("\\b") : u16(c); break;
                case '\f': short_forms ? put("\\f") : u16(c); break;
                case '\r': short_forms ? put("\\r") : u16(c); break;
                default:
                    if (c < 0x20) {
                        u16(c);
                    } else {
                        out.push_back(static_cast<char>(c));
                    }
            }
            ++i;
            continue;
        }
        if (c == 0x7f) {  // escaped style: DEL is outside ' '..'~'
            u16(c);
            ++i;
            continue;
        }
        if (style.non_ascii == json_non_ascii::raw) {
            out.push_back(static_cast<char>(c));
            ++i;
            continue;
        }
        const detail::utf8_sequence seq = detail::decode_utf8(s, i);
        if (seq.length == 0) {
            put("\\ufffd");
            ++i;
        } else if (style.non_ascii == json_non_ascii::replace_invalid_utf8) {
            out.append(s.data() + i, s.data() + i + seq.length);
            i += seq.length;
        } else if (seq.code_point >= 0x10000) {
            const std::uint32_t v = seq.code_point - 0x10000;
            u16(0xd800 + (v >> 10));
            u16(0xdc00 + (v & 0x3ff));
            i += seq.length;
        } else {
            u16(seq.code_point);
            i += seq.length;
        }
    }
    out.push_back('"');
}

}  // namespace safeshard
