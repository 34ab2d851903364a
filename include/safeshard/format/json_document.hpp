// JSON parsed with the verdicts of the reference readers. simdjson refuses integers wider than
// 64 bits and counts nesting its own way; the reference readers accept such integers (as
// floats) and count every array and object. Where simdjson alone would refuse, the text is
// scanned once, the numbers simdjson cannot take are rewritten as the floats the reference
// reads, and the rewritten copy is parsed again: the common case costs nothing more.
#pragma once

#include <simdjson.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "safeshard/format/json_text.hpp"

namespace safeshard::detail {

// Whose verdicts a parse follows.
enum class json_reader {
    // serde_json as safetensors 0.8 uses it (safetensors headers): at most 127 nested arrays
    // and objects, the top level included; an integer beyond u64/i64 read as an f64 (so taken
    // in a field the header ignores, refused as a size or offset); -0 read as the f64 -0.0; a
    // number beyond the f64 range refused, by serde's own arithmetic (see serde_f64).
    serde,
    // Python's json module (index.json and config.json, read by transformers and
    // huggingface_hub with json.load): integers of any width; floats beyond the f64 range
    // read as infinity; nesting refused only past its recursion limit (1000 by default).
    python,
};

[[nodiscard]] constexpr std::size_t json_depth_limit(json_reader r) noexcept {
    return r == json_reader::serde ? 127 : 1000;
}

// A number token as JSON writes it: -? int (. frac)? ([eE] [+-]? exp)?
struct json_number {
    std::string_view text;  // the whole token
    bool negative = false;
    std::string_view integer;
    std::string_view fraction;  // digits after '.'
    std::string_view exponent;  // digits after e/E and its sign
    bool has_fraction = false;
    bool has_exponent = false;
    bool exponent_negative = false;

    [[nodiscard]] bool is_integer() const noexcept { return !has_fraction && !has_exponent; }
};

// Reads the token starting at text[i] (a '-' or a digit) and moves i past it; nullopt when it
// breaks JSON's grammar (simdjson then refuses it, as the reference does).
[[nodiscard]] inline std::optional<json_number> read_json_number(std::string_view text,
                                                                 std::size_t& i) noexcept {
    const auto digits = [&] {
        const std::size_t b = i;
        while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
        return text.substr(b, i - b);
    };
    json_number n;
    const std::size_t begin = i;
    if (text[i] == '-') {
        n.negative = true;
        ++i;
    }
    n.integer = digits();
    bool ok = !n.integer.empty() && !(n.integer.size() > 1 && n.integer[0] == '0');
    if (i < text.size() && text[i] == '.') {
        ++i;
        n.has_fraction = true;
        n.fraction = digits();
        ok = ok && !n.fraction.empty();
    }
    if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
        ++i;
        n.has_exponent = true;
        if (i < text.size() && (text[i] == '+' || text[i] == '-'))
            n.exponent_negative = text[i++] == '-';
        n.exponent = digits();
        ok = ok && !n.exponent.empty();
    }
    n.text = text.substr(begin, i - begin);
    if (!ok) return std::nullopt;
    return n;
}

// Whether an integer token fits simdjson's integers (u64, or i64 when negative).
[[nodiscard]] inline bool fits_64_bits(const json_number& n) noexcept {
    const std::string_view limit = n.negative ? "9223372036854775808" : "18446744073709551615";
    return n.integer.size() < limit.size() ||
           (n.integer.size() == limit.size() && n.integer <= limit);
}

// The f64 powers of ten 1e0 ... 1e308, each correctly rounded (as literals are).
[[nodiscard]] inline const std::array<double, 309>& powers_of_ten() {
    static const std::array<double, 309> table = [] {
        std::array<double, 309> t{};
        for (std::size_t k = 0; k < t.size(); ++k) {
            const std::string s = "1e" + std::to_string(k);
            std::from_chars(s.data(), s.data() + s.size(), t[k]);
        }
        return t;
    }();
    return table;
}

// The f64 serde_json makes of a number (built without its float_roundtrip feature, as the
// reference is), or nullopt where it refuses the number as out of range. Its steps: digits
// gather into a u64 significand until the next would overflow it; further integer digits
// raise the decimal exponent, further fraction digits are dropped; an exponent too large for
// an i32 is out of range unless the significand is 0 or the exponent negative (then ±0);
// then the significand, as an f64, is multiplied or divided once by a tabled power of ten
// (dividing in steps of 1e308 beyond the table), which is not always correctly rounded:
// near the f64 limit serde refuses some numbers that round to a finite value, and takes
// some that do not.
[[nodiscard]] inline std::optional<double> serde_f64(const json_number& n) {
    constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
    const auto overflows = [](std::uint64_t s, unsigned d) {
        return s > max / 10 || (s == max / 10 && d > max % 10);
    };
    std::uint64_t significand = 0;
    std::int64_t exponent = 0;  // an i32 in serde; headers are far too short to overflow it
    bool full = false;
    for (const char c : n.integer) {
        const auto d = static_cast<unsigned>(c - '0');
        full = full || overflows(significand, d);
        if (full)
            ++exponent;
        else
            significand = significand * 10 + d;
    }
    for (const char c : n.fraction) {
        const auto d = static_cast<unsigned>(c - '0');
        if (overflows(significand, d)) break;
        significand = significand * 10 + d;
        --exponent;
    }
    const double sign = n.negative ? -1.0 : 1.0;
    if (n.has_exponent) {
        constexpr std::int64_t i32_max = std::numeric_limits<std::int32_t>::max();
        std::int64_t e = 0;
        for (const char c : n.exponent) {
            e = e * 10 + (c - '0');
            if (e > i32_max) {
                if (significand != 0 && !n.exponent_negative) return std::nullopt;
                return sign * 0.0;
            }
        }
        exponent = std::clamp<std::int64_t>(n.exponent_negative ? exponent - e : exponent + e,
                                            std::numeric_limits<std::int32_t>::min(), i32_max);
    }
    const auto& pow10 = powers_of_ten();
    double f = static_cast<double>(significand);
    while (true) {
        const std::uint64_t index = static_cast<std::uint64_t>(exponent < 0 ? -exponent : exponent);
        if (index < pow10.size()) {
            if (exponent >= 0) {
                f *= pow10[index];
                if (std::isinf(f)) return std::nullopt;
            } else {
                f /= pow10[index];
            }
            break;
        }
        if (f == 0.0) break;
        if (exponent >= 0) return std::nullopt;
        f /= 1e308;
        exponent += 308;
    }
    return sign * f;
}

// The f64 nearest to the number (Python's float()), clamped to the largest finite one where
// Python reads infinity (or keeps an integer too wide for any f64).
[[nodiscard]] inline double nearest_finite_f64(const json_number& n) {
    double v = 0;
    const auto [end, ec] = std::from_chars(n.text.data(), n.text.data() + n.text.size(), v);
    if (ec != std::errc::result_out_of_range) return v;
    // Out of range: beyond the largest f64, or below the smallest (then ±0).
    std::int64_t magnitude = 0;  // the decimal exponent of the leading digit
    for (const char c : n.exponent)
        magnitude = std::min<std::int64_t>(magnitude * 10 + (c - '0'), std::int64_t{1} << 40);
    if (n.exponent_negative) magnitude = -magnitude;
    if (const auto lead = n.integer.find_first_not_of('0'); lead != std::string_view::npos)
        magnitude += static_cast<std::int64_t>(n.integer.size() - lead - 1);
    else
        magnitude -= static_cast<std::int64_t>(n.fraction.find_first_not_of('0') + 1);
    const bool large = magnitude > 0;
    const double sign = n.negative ? -1.0 : 1.0;
    return sign * (large ? std::numeric_limits<double>::max() : 0.0);
}

// What a scan of the text found.
struct json_scan {
    std::size_t depth = 0;      // the deepest nesting of arrays and objects
    bool out_of_range = false;  // a number the reader refuses
    std::string rewritten;      // the text with its numbers made simdjson's; empty if unchanged
};

// The text for simdjson of a number the reader takes but simdjson reads otherwise or refuses,
// as the f64 the reader makes of it (scientific notation: simdjson reads it as a double);
// nullopt when the token can stay as it is. Sets `out_of_range` where the reader refuses it.
[[nodiscard]] inline std::optional<std::string> simdjson_number(const json_number& n,
                                                                json_reader reader,
                                                                bool& out_of_range) {
    std::optional<double> value;
    if (n.is_integer() && fits_64_bits(n)) {
        // serde reads -0 as the float -0.0 (no size or offset); simdjson as the integer 0.
        if (reader != json_reader::serde || !n.negative || n.integer != "0") return std::nullopt;
        value = -0.0;
    } else if (reader == json_reader::serde) {
        value = serde_f64(n);
        if (!value) {
            out_of_range = true;
            return std::nullopt;
        }
        // simdjson rounds correctly and may find beyond the f64 range what serde does not.
        if (!n.is_integer() && std::fabs(*value) <= 1e308) return std::nullopt;
    } else {
        value = nearest_finite_f64(n);
        if (!n.is_integer() && std::fabs(*value) < std::numeric_limits<double>::max())
            return std::nullopt;
    }
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, *value, std::chars_format::scientific);
    return std::string(buf, r.ptr);
}

// Scans the text once: nesting depth, and the numbers simdjson cannot read as the reader
// does. Text that is not JSON passes through; simdjson's parse refuses it afterwards.
[[nodiscard]] inline json_scan scan_json(std::string_view text, json_reader reader) {
    json_scan s;
    std::size_t depth = 0;
    std::size_t copied = 0;
    bool edited = false;
    std::size_t i = 0;
    while (i < text.size()) {
        const char c = text[i];
        if (c == '"') {
            // Past the closing quote, skipping escaped characters.
            for (i = text.find_first_of("\"\\", i + 1); i < text.size() && text[i] == '\\';
                 i = text.find_first_of("\"\\", i + 2)) {
            }
            i = i < text.size() ? i + 1 : text.size();
        } else if (c == '[' || c == '{') {
            s.depth = std::max(s.depth, ++depth);
            ++i;
        } else if (c == ']' || c == '}') {
            if (depth > 0) --depth;
            ++i;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            const std::size_t begin = i;
            const auto n = read_json_number(text, i);
            if (!n) continue;
            if (auto replacement = simdjson_number(*n, reader, s.out_of_range)) {
                s.rewritten.append(text.substr(copied, begin - copied));
                s.rewritten += *replacement;
                copied = i;
                edited = true;
            }
        } else {
            ++i;
        }
    }
    if (edited) s.rewritten.append(text.substr(copied));
    return s;
}

// Whether the element holds, at any depth, a double at the edge of the f64 range, where serde
// refuses some numbers simdjson rounds to a finite value.
[[nodiscard]] inline bool holds_f64_near_limit(simdjson::dom::element e) {
    double d = 0;
    switch (e.type()) {
        case simdjson::dom::element_type::DOUBLE:
            return e.get_double().get(d) == simdjson::SUCCESS && std::fabs(d) > 1.79e308;
        case simdjson::dom::element_type::ARRAY:
            for (const auto x : simdjson::dom::array(e))
                if (holds_f64_near_limit(x)) return true;
            return false;
        case simdjson::dom::element_type::OBJECT:
            for (const auto f : simdjson::dom::object(e))
                if (holds_f64_near_limit(f.value)) return true;
            return false;
        default: return false;
    }
}

// A parsed JSON text with `reader`'s verdicts on depth and numbers.
class json_document {
public:
    // Parses `text`, which must outlive the document. `padded`: SIMDJSON_PADDING readable
    // bytes follow the text (then it is parsed in place). `keep`: the document owns its parser
    // (the thread's parser is reused by the next parse on this thread, so a document that
    // lives on must keep its own).
    [[nodiscard]] simdjson::error_code parse(std::string_view text, bool padded, json_reader reader,
                                             bool keep = false) {
        text_ = text;
        padded_ = padded;
        reader_ = reader;
        message_.clear();
        simdjson::dom::parser* p = &thread_parser();
        if (keep || text.size() > shared_parser_limit) {
            own_ = std::make_unique<simdjson::dom::parser>();
            prepare_parser(*own_, text.size());
            p = own_.get();
        }
        auto err = p->parse(text.data(), text.size(), !padded).get(root_);
        // simdjson reads -0 as the integer 0; serde as a float, which no size or offset takes.
        const bool minus_zero = reader == json_reader::serde && contains_minus_zero(text);
        if (err == simdjson::SUCCESS && !minus_zero) return err;
        if (err != simdjson::SUCCESS && err != simdjson::NUMBER_ERROR &&
            err != simdjson::DEPTH_ERROR)
            return err;
        return parse_again(err);
    }

    [[nodiscard]] simdjson::dom::element root() const noexcept { return root_; }

    // Why parse() failed, in words.
    [[nodiscard]] std::string message(simdjson::error_code err) const {
        return message_.empty() ? std::string(simdjson::error_message(err)) : message_;
    }

    // Whether the reader refuses one of the text's numbers as out of range. simdjson takes
    // some numbers that round to the largest f64 which serde refuses: a caller that finds a
    // double that large where the reader reads any number asks this.
    [[nodiscard]] bool reader_refuses_a_number() const {
        if (!refuses_number_) refuses_number_ = scan_json(text_, reader_).out_of_range;
        return *refuses_number_;
    }

private:
    // Whether "-0" occurs anywhere (strings included), searching with memchr.
    static bool contains_minus_zero(std::string_view text) noexcept {
        const char* p = text.data();
        const char* const end = p + text.size();
        while (p < end && (p = static_cast<const char*>(std::memchr(p, '-', end - p))) != nullptr) {
            if (++p < end && *p == '0') return true;
        }
        return false;
    }

    // The slow path: the text scanned, its numbers rewritten where needed, and parsed again by
    // a parser as deep as the reader allows.
    simdjson::error_code parse_again(simdjson::error_code first) {
        json_scan s = scan_json(text_, reader_);
        refuses_number_ = s.out_of_range;
        if (s.depth > json_depth_limit(reader_)) {
            message_ = "arrays and objects nested " + std::to_string(s.depth) +
                       " deep, over the limit of " + std::to_string(json_depth_limit(reader_));
            return simdjson::DEPTH_ERROR;
        }
        if (s.out_of_range) {
            message_ = "a number is beyond the range of a 64-bit float";
            return simdjson::NUMBER_ERROR;
        }
        if (first == simdjson::SUCCESS && s.rewritten.empty()) return first;  // -0 in strings
        if (first == simdjson::NUMBER_ERROR && s.rewritten.empty()) return first;
        std::string_view source = text_;
        bool padded = padded_;
        if (!s.rewritten.empty()) {
            copy_ = simdjson::padded_string(s.rewritten);
            source = std::string_view(copy_.data(), copy_.size());
            padded = true;
        }
        // simdjson accepts every text with at most depth + 1 levels (its count includes the
        // document, and stops short of an empty innermost array or object).
        own_ = std::make_unique<simdjson::dom::parser>();
        if (own_->allocate(std::max<std::size_t>(source.size(), 4096),
                           std::max(s.depth + 1, json_max_depth)) != simdjson::SUCCESS)
            throw std::bad_alloc();
        return own_->parse(source.data(), source.size(), !padded).get(root_);
    }

    std::string_view text_;
    bool padded_ = false;
    json_reader reader_ = json_reader::serde;
    std::unique_ptr<simdjson::dom::parser> own_;
    simdjson::padded_string copy_;
    simdjson::dom::element root_;
    std::string message_;
    mutable std::optional<bool> refuses_number_;
};

}  // namespace safeshard::detail
