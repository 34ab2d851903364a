#include "safeshard/load/convert.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>  // MXCSR, to run the conversions under FTZ/DAZ
#define SAFESHARD_TEST_MXCSR 1
#endif

using namespace safeshard;

// ---- compile-time facts -----------------------------------------------------------------------

static_assert(can_convert(dtype::bf16, dtype::f32) && can_convert(dtype::f32, dtype::bf16));
static_assert(can_convert(dtype::f16, dtype::f32) && can_convert(dtype::f32, dtype::f16));
static_assert(can_convert(dtype::bf16, dtype::f16) && can_convert(dtype::f16, dtype::bf16));
static_assert(can_convert(dtype::f64, dtype::f32) && can_convert(dtype::f32, dtype::f64));
static_assert(can_convert(dtype::f8_e4m3, dtype::bf16) && can_convert(dtype::f8_e5m2, dtype::f16));
static_assert(can_convert(dtype::i32, dtype::i32) && can_convert(dtype::f4, dtype::f4));
static_assert(!can_convert(dtype::i32, dtype::f32) && !can_convert(dtype::f32, dtype::i32));
static_assert(!can_convert(dtype::i8, dtype::u8) && !can_convert(dtype::bf16, dtype::f8_e4m3));
static_assert(!can_convert(dtype::f64, dtype::bf16) && !can_convert(dtype::f8_e8m0, dtype::f32));
static_assert(!can_convert(dtype::f8_e4m3fnuz, dtype::f32) && !can_convert(dtype::c64, dtype::f64));
// The table: 14 element-wise entries (their values alone, between two different dtypes), then
// the dequantizing ones, each reading its values and their scales (and a global scale, or zero
// points and a group index) into BF16, F16 or F32: 7 float forms, 24 of U4 and U8 codes, 1 of
// I8; the dtypes a policy converts are the ones the element-wise ones write.
static_assert(conversions.size() == 14 + (7 + 24 + 1) * 3);
static_assert(std::count_if(conversions.begin(), conversions.end(),
                            [](const conversion& c) { return c.is_elementwise(); }) == 14);
static_assert(std::all_of(conversions.begin(), conversions.end(), [](const conversion& c) {
    return c.inputs[0].role == convert_role::values && c.from() != c.to &&
           (c.is_elementwise() || (c.inputs[1].role == convert_role::scales &&
                                   converted_by_policy(c.to) && c.to != dtype::f64));
}));
static_assert(converted_by_policy(dtype::f16) && converted_by_policy(dtype::bf16));
static_assert(converted_by_policy(dtype::f32) && converted_by_policy(dtype::f64));
static_assert(!converted_by_policy(dtype::f8_e4m3) && !converted_by_policy(dtype::i32));
static_assert(by_device_dtype(true) == dtype::bf16 && by_device_dtype(false) == dtype::f32);
static_assert(parse_dtype_policy("by_device") == dtype_policy::by_device());
static_assert(parse_dtype_policy("bf16") == dtype_policy::fixed(dtype::bf16));
static_assert(!parse_dtype_policy("auto").has_value());
static_assert(detail::elem::f16_to_f32(0x3c00) == 0x3f800000u);   // the kernels are constexpr
static_assert(detail::elem::f32_to_bf16(0x3f808000u) == 0x3f80);  // tie to even: down

namespace {

using detail::convert_isa;

// ---- an independent scalar reference: decode to double, encode with explicit RNE ------------

struct float_format {
    int exp_bits;
    int man_bits;
    [[nodiscard]] int bias() const { return (1 << (exp_bits - 1)) - 1; }
    [[nodiscard]] int emin() const { return 1 - bias(); }
    [[nodiscard]] int emax() const { return bias(); }  // IEEE formats; E4M3 is decoded separately
};

constexpr float_format fmt_f16{5, 10};
constexpr float_format fmt_bf16{8, 7};
constexpr float_format fmt_f32{8, 23};

// Value of a finite IEEE-style encoding (exponent field below all-ones).
double decode_finite(std::uint64_t bits, float_format f) {
    const std::uint64_t man = bits & ((std::uint64_t{1} << f.man_bits) - 1);
    const int e = static_cast<int>((bits >> f.man_bits) & ((1u << f.exp_bits) - 1));
    const bool neg = ((bits >> (f.man_bits + f.exp_bits)) & 1) != 0;
    const double m = static_cast<double>(man);
    const double mag = e == 0
                           ? std::ldexp(m, f.emin() - f.man_bits)
                           : std::ldexp(m + std::ldexp(1.0, f.man_bits), e - f.bias() - f.man_bits);
    return neg ? -mag : mag;
}

// Encodes a non-NaN double into an IEEE-style format, rounding to nearest, ties to even.
std::uint64_t encode_rne(double v, float_format f) {
    const std::uint64_t sign = std::signbit(v) ? std::uint64_t{1} << (f.exp_bits + f.man_bits) : 0;
    const double a = std::fabs(v);
    const std::uint64_t inf = ((std::uint64_t{1} << f.exp_bits) - 1) << f.man_bits;
    if (std::isinf(a)) return sign | inf;
    if (a == 0) return sign;
    int x = 0;
    (void)std::frexp(a, &x);
    int e = x - 1;  // a in [2^e, 2^(e+1))
    if (e < f.emin()) {
        // Subnormal range: count units of 2^(emin - man_bits); may round up into the first normal.
        const double q = std::nearbyint(std::ldexp(a, f.man_bits - f.emin()));
        return sign | static_cast<std::uint64_t>(q);
    }
    double q = std::nearbyint(std::ldexp(a, f.man_bits - e));  // in [2^m, 2^(m+1)]
    if (q == std::ldexp(1.0, f.man_bits + 1)) {
        q /= 2;
        ++e;
    }
    if (e > f.emax()) return sign | inf;
    const auto man = static_cast<std::uint64_t>(q) - (std::uint64_t{1} << f.man_bits);
    return sign | (static_cast<std::uint64_t>(e + f.bias()) << f.man_bits) | man;
}

// Value of an IEEE-style encoding that is not NaN (Inf included).
double decode(std::uint64_t bits, float_format f) {
    const std::uint64_t exp_all = (std::uint64_t{1} << f.exp_bits) - 1;
    if (((bits >> f.man_bits) & exp_all) == exp_all) {
        const bool neg = ((bits >> (f.man_bits + f.exp_bits)) & 1) != 0;
        return neg ? -INFINITY : INFINITY;
    }
    return decode_finite(bits, f);
}

// F8_E4M3 (ml_dtypes float8_e4m3fn): bias 7, the all-ones exponent is finite, S.1111.111 is NaN.
double decode_e4m3(std::uint8_t x) {
    const int e = (x >> 3) & 0xf;
    const int m = x & 7;
    const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 7 - 3);
    return (x & 0x80) != 0 ? -mag : mag;
}

bool f16_is_nan(std::uint64_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }
bool bf16_is_nan(std::uint64_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0; }
bool f32_is_nan(std::uint64_t f) { return (f & 0x7fffffffu) > 0x7f800000u; }
bool f64_is_nan(std::uint64_t d) { return (d & 0x7fffffffffffffffu) > 0x7ff0000000000000u; }
bool e4m3_is_nan(std::uint64_t x) { return (x & 0x7fu) == 0x7fu; }
bool e5m2_is_nan(std::uint64_t x) { return (x & 0x7fu) > 0x7cu; }

// Quiet NaNs with the sign of `neg` (what ml_dtypes produces).
std::uint64_t qnan16(bool neg) { return neg ? 0xfe00u : 0x7e00u; }
std::uint64_t qnan_bf16(bool neg) { return neg ? 0xffc0u : 0x7fc0u; }
std::uint64_t qnan32(bool neg) { return neg ? 0xffc00000u : 0x7fc00000u; }

// The reference for one pair: bits in, bits out. NaN rules as the oracles have them.
std::uint64_t reference(dtype from, dtype to, std::uint64_t x) {
    auto encode_to = [&](double v) -> std::uint64_t {
        switch (to) {
            case dtype::f16: return encode_rne(v, fmt_f16);
            case dtype::bf16: return encode_rne(v, fmt_bf16);
            case dtype::f32: return encode_rne(v, fmt_f32);
            case dtype::f64: {
                std::uint64_t d = 0;
                std::memcpy(&d, &v, 8);
                return d;
            }
            default: FAIL("no reference encoder"); return 0;
        }
    };
    switch (from) {
        case dtype::f16: {
            const bool neg = (x & 0x8000u) != 0;
            if (f16_is_nan(x)) {
                if (to == dtype::f32)  // numpy: the payload moves up unchanged
                    return (neg ? 0x80000000u : 0u) | 0x7f800000u | (x & 0x3ffu) << 13;
                return qnan_bf16(neg);  // ml_dtypes
            }
            return encode_to(decode(x, fmt_f16));
        }
        case dtype::bf16: {
            const bool neg = (x & 0x8000u) != 0;
            if (bf16_is_nan(x)) {
                if (to == dtype::f32)
                    return (neg ? 0x80000000u : 0u) | 0x7f800000u | (x & 0x7fu) << 16;
                return qnan16(neg);
            }
            return encode_to(decode(x, fmt_bf16));
        }
        case dtype::f32: {
            const bool neg = (x & 0x80000000u) != 0;
            if (f32_is_nan(x)) {
                if (to == dtype::f16) {  // numpy: top ten payload bits, never zero
                    std::uint64_t p = (x >> 13) & 0x3ffu;
                    if (p == 0) p = 1;
                    return (neg ? 0x8000u : 0u) | 0x7c00u | p;
                }
                if (to == dtype::bf16) return qnan_bf16(neg);
                // f64: the C cast quiets and keeps the payload
                return (neg ? 0x8000000000000000u : 0u) | 0x7ff8000000000000u |
                       (x & 0x7fffffu) << 29;
            }
            return encode_to(decode(x, fmt_f32));
        }
        case dtype::f64: {
            const bool neg = (x >> 63) != 0;
            if (f64_is_nan(x))
                return (neg ? 0x80000000u : 0u) | 0x7fc00000u | ((x >> 29) & 0x7fffffu);
            double v = 0;
            std::memcpy(&v, &x, 8);
            return encode_to(v);
        }
        case dtype::f8_e4m3:
        case dtype::f8_e5m2: {
            const bool neg = (x & 0x80u) != 0;
            const bool nan = from == dtype::f8_e4m3 ? e4m3_is_nan(x) : e5m2_is_nan(x);
            if (nan)
                return to == dtype::f16    ? qnan16(neg)
                       : to == dtype::bf16 ? qnan_bf16(neg)
                                           : qnan32(neg);
            return encode_to(from == dtype::f8_e4m3 ? decode_e4m3(static_cast<std::uint8_t>(x))
                                                    : decode(x, float_format{5, 2}));
        }
        default: FAIL("no reference decoder"); return 0;
    }
}

std::uint64_t load_bits(const std::byte* p, std::size_t size) {
    std::uint64_t v = 0;
    std::memcpy(&v, p, size);  // little-endian host (config.hpp checks)
    return v;
}

void store_bits(std::byte* p, std::uint64_t v, std::size_t size) { std::memcpy(p, &v, size); }

std::vector<convert_isa> isas() {
    std::vector<convert_isa> v{convert_isa::portable};
    if (detail::cpu_has_avx2()) v.push_back(convert_isa::avx2);
    return v;
}

const char* isa_name(convert_isa i) { return i == convert_isa::avx2 ? "avx2" : "portable"; }

// Converts every input bit pattern in one call and compares each with the reference.
void check_against_reference(dtype from, dtype to, const std::vector<std::uint64_t>& inputs) {
    const std::size_t fs = byte_size(from);
    const std::size_t ts = byte_size(to);
    std::vector<std::byte> src(inputs.size() * fs);
    for (std::size_t i = 0; i < inputs.size(); ++i) store_bits(&src[i * fs], inputs[i], fs);
    for (const convert_isa isa : isas()) {
        CAPTURE(isa_name(isa));
        const converter conv = detail::find_converter_for(from, to, isa);
        REQUIRE_FALSE(conv.is_copy());
        std::vector<std::byte> dst(inputs.size() * ts);
        conv(src.data(), dst.data(), inputs.size());
        std::size_t mismatches = 0;
        for (std::size_t i = 0; i < inputs.size(); ++i) {
            const std::uint64_t got = load_bits(&dst[i * ts], ts);
            const std::uint64_t want = reference(from, to, inputs[i]);
            if (got != want && ++mismatches <= 5)
                FAIL_CHECK(name(from) << " -> " << name(to) << " of 0x" << std::hex << inputs[i]
                                      << ": got 0x" << got << ", want 0x" << want);
        }
        CHECK(mismatches == 0);
    }
}

std::vector<std::uint64_t> all_patterns(unsigned bits) {
    std::vector<std::uint64_t> v(std::size_t{1} << bits);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = i;
    return v;
}

// f32 patterns: every exponent with both signs, mantissas at the rounding edges of bf16 and f16
// (ties, one below, one above, both parities of the kept bit), every subnormal shift, random.
std::vector<std::uint64_t> f32_sample() {
    std::vector<std::uint64_t> v;
    std::mt19937_64 rng(12345);
    std::vector<std::uint32_t> mans = {0, 1, 2, 0x7fffff, 0x7ffffe, 0x400000, 0x3fffff, 0x400001};
    for (int k = 0; k < 23; ++k) {
        const std::uint32_t half = 1u << k;  // the half unit if the kept bits end above bit k
        for (const std::uint32_t low : {half, half - 1, half + 1}) {
            mans.push_back(low & 0x7fffff);
            mans.push_back((low | (half << 1)) & 0x7fffff);  // kept lsb odd
            mans.push_back((low | 0x400000u) & 0x7fffff);
        }
    }
    for (std::uint32_t sign = 0; sign < 2; ++sign)
        for (std::uint32_t e = 0; e < 256; ++e) {
            for (const std::uint32_t m : mans) v.push_back(sign << 31 | e << 23 | m);
            for (int r = 0; r < 32; ++r)
                v.push_back(sign << 31 | e << 23 | static_cast<std::uint32_t>(rng() & 0x7fffff));
        }
    for (int r = 0; r < 100000; ++r) v.push_back(rng() & 0xffffffffu);
    return v;
}

std::vector<std::uint64_t> f64_sample() {
    std::vector<std::uint64_t> v;
    std::mt19937_64 rng(54321);
    const std::uint64_t m52 = (std::uint64_t{1} << 52) - 1;
    const std::uint64_t half = std::uint64_t{1} << 28;  // half an f32 unit for normal results
    std::vector<std::uint64_t> mans = {0,
                                       1,
                                       m52,
                                       half,
                                       half - 1,
                                       half + 1,
                                       half | half << 1,
                                       (half - 1) | half << 1,
                                       std::uint64_t{1} << 51};
    for (std::uint64_t sign = 0; sign < 2; ++sign)
        for (std::uint64_t e = 0; e < 2048; ++e) {
            for (const std::uint64_t m : mans) v.push_back(sign << 63 | e << 52 | m);
            for (int r = 0; r < 8; ++r) v.push_back(sign << 63 | e << 52 | (rng() & m52));
        }
    // Around the f32 subnormal range every rounding position matters.
    for (std::uint64_t e = 1023 - 150; e <= 1023 - 120; ++e)
        for (int k = 0; k < 52; ++k) {
            const std::uint64_t b = std::uint64_t{1} << k;
            for (const std::uint64_t m : {b, b - 1, b + 1, b | b << 1})
                v.push_back(e << 52 | (m & m52));
        }
    for (int r = 0; r < 50000; ++r) v.push_back(rng());
    return v;
}

}  // namespace

// Function addresses are not constant expressions under the sanitizers: checked at run time.
TEST_CASE("every entry of the conversion table has its loops") {
    for (const conversion& c : conversions) {
        CAPTURE(name(c.from()));
        CAPTURE(name(c.to));
        const bool has_portable =
            c.is_elementwise() ? c.kernel.portable != nullptr : c.dequant.portable != nullptr;
        CHECK(has_portable);
        const bool has_avx2 =
            c.is_elementwise() ? c.kernel.avx2 != nullptr : c.dequant.avx2 != nullptr;
        CHECK(has_avx2);
    }
}

TEST_CASE("16-bit sources: all 65,536 patterns against the reference") {
    const auto all16 = all_patterns(16);
    SUBCASE("F16 -> F32") { check_against_reference(dtype::f16, dtype::f32, all16); }
    SUBCASE("F16 -> BF16") { check_against_reference(dtype::f16, dtype::bf16, all16); }
    SUBCASE("BF16 -> F32") { check_against_reference(dtype::bf16, dtype::f32, all16); }
    SUBCASE("BF16 -> F16") { check_against_reference(dtype::bf16, dtype::f16, all16); }
}

TEST_CASE("8-bit sources: all 256 patterns against the reference") {
    const auto all8 = all_patterns(8);
    for (const dtype from : {dtype::f8_e4m3, dtype::f8_e5m2})
        for (const dtype to : {dtype::f16, dtype::bf16, dtype::f32}) {
            CAPTURE(from);
            CAPTURE(to);
            check_against_reference(from, to, all8);
        }
}

TEST_CASE("F32 -> F16 / BF16 / F64: every exponent, rounding edges, NaN payloads, random") {
    const auto sample = f32_sample();
    SUBCASE("F32 -> F16") { check_against_reference(dtype::f32, dtype::f16, sample); }
    SUBCASE("F32 -> BF16") { check_against_reference(dtype::f32, dtype::bf16, sample); }
    SUBCASE("F32 -> F64") { check_against_reference(dtype::f32, dtype::f64, sample); }
}

TEST_CASE("F64 -> F32: every exponent, rounding edges, subnormal results, random") {
    check_against_reference(dtype::f64, dtype::f32, f64_sample());
}

#if SAFESHARD_TEST_MXCSR
TEST_CASE("flush-to-zero and denormals-are-zero do not change the results") {
    // Engines often run with FTZ/DAZ set; only F64 <-> F32 (the C casts) follow those modes.
    const unsigned saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040u);  // FTZ (bit 15) and DAZ (bit 6)
    const auto all16 = all_patterns(16);
    const auto sample = f32_sample();
    check_against_reference(dtype::f16, dtype::f32, all16);
    check_against_reference(dtype::f16, dtype::bf16, all16);
    check_against_reference(dtype::bf16, dtype::f16, all16);
    check_against_reference(dtype::f32, dtype::f16, sample);
    check_against_reference(dtype::f32, dtype::bf16, sample);
    for (const dtype to : {dtype::f16, dtype::bf16, dtype::f32}) {
        check_against_reference(dtype::f8_e4m3, to, all_patterns(8));
        check_against_reference(dtype::f8_e5m2, to, all_patterns(8));
    }
    _mm_setcsr(saved);
}
#endif

TEST_CASE("hand-checked values (from ml_dtypes / numpy)") {
    using namespace detail::elem;
    constexpr auto np = nan_rule::keep_payload;
    CHECK(f32_to_f16<np>(0x3f800000u) == 0x3c00);  // 1
    CHECK(f32_to_f16<np>(0x477fe000u) == 0x7bff);  // 65504, the largest f16
    CHECK(f32_to_f16<np>(0x477fefffu) == 0x7bff);  // just below the halfway point to 65536
    CHECK(f32_to_f16<np>(0x477ff000u) == 0x7c00);  // 65520 ties to even: Inf
    CHECK(f32_to_f16<np>(0x33800000u) == 0x0001);  // 2^-24, the smallest subnormal
    CHECK(f32_to_f16<np>(0x33000000u) == 0x0000);  // 2^-25 ties to even: 0
    CHECK(f32_to_f16<np>(0x33000001u) == 0x0001);  // just above: rounds up
    CHECK(f32_to_f16<np>(0x387fc000u) == 0x03ff);  // largest subnormal
    CHECK(f32_to_f16<np>(0x387fe000u) == 0x0400);  // halfway, ties to even: the smallest normal
    CHECK(f32_to_f16<np>(0x80000000u) == 0x8000);  // -0
    CHECK(f32_to_f16<np>(0xff800000u) == 0xfc00);  // -Inf
    CHECK(f32_to_f16<np>(0x7f800001u) == 0x7c01);  // payload vanishes: stays a NaN
    CHECK(f32_to_f16<np>(0xffa00000u) == 0xfd00);  // signalling NaN stays signalling (numpy)
    CHECK(f32_to_f16<nan_rule::canonical>(0xffa00000u) == 0xfe00);
    CHECK(f32_to_bf16(0x3f818000u) == 0x3f82);  // tie, odd kept bit: up
    CHECK(f32_to_bf16(0x7f7fffffu) == 0x7f80);  // FLT_MAX rounds to Inf
    CHECK(f32_to_bf16(0x00018000u) == 0x0002);  // subnormal tie: to even
    CHECK(f32_to_bf16(0x7f800001u) == 0x7fc0);
    CHECK(f32_to_bf16(0xff800001u) == 0xffc0);
    CHECK(f16_to_f32(0x7c01) == 0x7f802000u);  // payload kept, not quieted (numpy)
    CHECK(f16_to_f32(0x0001) == 0x33800000u);
    CHECK(f16_to_f32(0x8000) == 0x80000000u);
    CHECK(bf16_to_f16(0x7f81) == 0x7e00);
    CHECK(bf16_to_f16(0x7f80) == 0x7c00);
    CHECK(f16_to_bf16(0xfe01) == 0xffc0);
    CHECK(f8_e4m3_to_f32(0x7e) == 0x43e00000u);  // 448
    CHECK(f8_e4m3_to_f32(0x01) == 0x3b000000u);  // 2^-9
    CHECK(f8_e4m3_to_f32(0xff) == 0xffc00000u);
    CHECK(f8_e4m3_to_f16(0x7e) == 0x5f00);
    CHECK(f8_e4m3_to_bf16(0x80) == 0x8000);      // -0
    CHECK(f8_e5m2_to_f32(0x7c) == 0x7f800000u);  // Inf
    CHECK(f8_e5m2_to_f32(0xfd) == 0xffc00000u);
    CHECK(f8_e5m2_to_f16(0x01) == 0x0100);  // 2^-16, an f16 subnormal
    CHECK(f8_e5m2_to_bf16(0xfc) == 0xff80);
}

TEST_CASE("unaligned source and destination, every length class") {
    std::mt19937_64 rng(7);
    for (const dtype from : all_dtypes)
        for (const dtype to : all_dtypes) {
            if (from == to || !can_convert(from, to)) continue;
            CAPTURE(from);
            CAPTURE(to);
            const std::size_t fs = byte_size(from);
            const std::size_t ts = byte_size(to);
            for (const convert_isa isa : isas()) {
                CAPTURE(isa_name(isa));
                const converter conv = detail::find_converter_for(from, to, isa);
                for (const std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{255},
                                            std::size_t{256}, std::size_t{257}, std::size_t{600}}) {
                    std::vector<std::byte> src(n * fs + 8);
                    for (auto& b : src) b = static_cast<std::byte>(rng());
                    std::vector<std::byte> want(n * ts);
                    for (std::size_t i = 0; i < n; ++i)
                        store_bits(&want[i * ts], reference(from, to, load_bits(&src[i * fs], fs)),
                                   ts);
                    for (std::size_t so = 0; so < 4; ++so)
                        for (std::size_t dof = 1; dof < 8; dof += 3) {
                            std::vector<std::byte> moved(n * fs + 8);
                            std::memcpy(moved.data() + so, src.data(), n * fs);
                            std::vector<std::byte> dst(n * ts + 16, std::byte{0xab});
                            conv(moved.data() + so, dst.data() + dof, n);
                            CHECK(std::memcmp(dst.data() + dof, want.data(), n * ts) == 0);
                            bool guards = true;
                            for (std::size_t i = 0; i < dof; ++i)
                                guards &= dst[i] == std::byte{0xab};
                            for (std::size_t i = dof + n * ts; i < dst.size(); ++i)
                                guards &= dst[i] == std::byte{0xab};
                            CHECK(guards);
                        }
                }
            }
        }
}

TEST_CASE("strided 2-D boxes convert row by row and leave the gaps alone") {
    std::mt19937_64 rng(11);
    const std::size_t rows = 5;
    const std::size_t row_elems = 37;
    for (const auto& pair :
         {std::pair{dtype::bf16, dtype::f32}, std::pair{dtype::f32, dtype::f16},
          std::pair{dtype::f8_e4m3, dtype::bf16}, std::pair{dtype::f64, dtype::f32},
          std::pair{dtype::bf16, dtype::bf16}, std::pair{dtype::i32, dtype::i32}}) {
        const dtype from = pair.first;  // not a structured binding: clang cannot capture those
        const dtype to = pair.second;
        CAPTURE(from);
        CAPTURE(to);
        const converter conv = find_converter(from, to);
        CHECK(conv.is_copy() == (from == to));
        const std::size_t fs = byte_size(from);
        const std::size_t ts = byte_size(to);
        for (const std::size_t pad : {std::size_t{0}, std::size_t{3}}) {
            const std::size_t ss = row_elems * fs + pad * 2 + 1 * (pad != 0);  // odd when padded
            const std::size_t ds = row_elems * ts + pad;
            std::vector<std::byte> src(rows * ss + 1);
            for (auto& b : src) b = static_cast<std::byte>(rng());
            std::vector<std::byte> dst(rows * ds + 2, std::byte{0xab});
            conv(src.data() + 1, dst.data() + 1, rows, row_elems, ss, ds);
            for (std::size_t r = 0; r < rows; ++r) {
                CAPTURE(r);
                std::vector<std::byte> want(row_elems * ts);
                conv(src.data() + 1 + r * ss, want.data(), row_elems);
                CHECK(std::memcmp(dst.data() + 1 + r * ds, want.data(), want.size()) == 0);
                bool gap = true;
                for (std::size_t i = row_elems * ts; i < ds; ++i)
                    gap &= dst[1 + r * ds + i] == std::byte{0xab};
                CHECK(gap);
            }
            CHECK(dst.front() == std::byte{0xab});
            CHECK(dst.back() == std::byte{0xab});
        }
        // Zero rows or zero-length rows touch nothing.
        std::vector<std::byte> dst(16, std::byte{0xab});
        conv(nullptr, dst.data(), 0, 4, 0, 0);
        conv(nullptr, dst.data(), 4, 0, 0, 0);
        conv(nullptr, dst.data(), 0);
        CHECK(dst == std::vector<std::byte>(16, std::byte{0xab}));
    }
}

TEST_CASE("a same-dtype converter copies bytes, sub-byte dtypes included") {
    for (const dtype t : all_dtypes) {
        CAPTURE(t);
        const converter conv = find_converter(t, t);
        CHECK(conv.is_copy());
        CHECK((conv.kernel() == nullptr));
        CHECK(conv.from() == t);
        CHECK(conv.to() == t);
        const std::size_t n = 16;  // whole bytes for F4 (8) and F6 (12) too
        const std::size_t bytes = n * bit_size(t) / 8;
        CHECK(conv.src_bytes(n) == bytes);
        CHECK(conv.dst_bytes(n) == bytes);
        std::vector<std::byte> src(bytes);
        for (std::size_t i = 0; i < bytes; ++i) src[i] = static_cast<std::byte>(i * 7 + 1);
        std::vector<std::byte> dst(bytes + 1, std::byte{0xab});
        conv(src.data(), dst.data(), n);
        CHECK(std::memcmp(dst.data(), src.data(), bytes) == 0);
        CHECK(dst.back() == std::byte{0xab});
    }
}

TEST_CASE("every pair: can_convert agrees with find_converter; refusals name both dtypes") {
    int supported = 0;
    for (const dtype from : all_dtypes)
        for (const dtype to : all_dtypes) {
            CAPTURE(from);
            CAPTURE(to);
            if (can_convert(from, to)) {
                ++supported;
                const converter conv = find_converter(from, to);
                CHECK(conv.from() == from);
                CHECK(conv.to() == to);
                if (!is_sub_byte(from)) CHECK(conv.src_bytes(3) == 3 * byte_size(from));
                continue;
            }
            try {
                (void)find_converter(from, to);
                FAIL_CHECK("no error for an unsupported pair");
            } catch (const error& e) {
                CHECK(e.code() == errc::unsupported_conversion);
                const std::string head = "cannot convert " + std::string(name(from)) + " to " +
                                         std::string(name(to)) + " (";
                CHECK(e.message().rfind(head, 0) == 0);
                CHECK(std::string(e.what()).find(head) != std::string::npos);
            }
        }
    // 22 same-dtype copies + 8 between f16/bf16/f32/f64 + 6 from f8.
    CHECK(supported == 22 + 8 + 6);
}

TEST_CASE("the refusal lists the table as it always read") {
    CHECK(detail::supported_conversions_text() ==
          "BF16<->F32, F16<->F32, BF16<->F16, F64<->F32, F8_E4M3/F8_E5M2->F16/BF16/F32");
    CHECK(detail::unsupported_conversion_message(dtype::i32, dtype::f32) ==
          "cannot convert I32 to F32 (supported: BF16<->F32, F16<->F32, BF16<->F16, F64<->F32, "
          "F8_E4M3/F8_E5M2->F16/BF16/F32; other dtypes copy only to themselves)");
    CHECK(policy_dtypes_text() == "F16, BF16, F32, F64");
}

TEST_CASE("every table entry is what find_converter returns for its pair") {
    for (const conversion& c : conversions) {
        if (!c.is_elementwise()) continue;  // read through find_dequantizer: below
        CAPTURE(c.from());
        CAPTURE(c.to);
        CHECK(can_convert(c.from(), c.to));
        const bool portable =
            detail::find_converter_for(c.from(), c.to, detail::convert_isa::portable).kernel() ==
            c.kernel.portable;
        const bool avx2 =
            detail::find_converter_for(c.from(), c.to, detail::convert_isa::avx2).kernel() ==
            c.kernel.avx2;
        CHECK(portable);
        CHECK(avx2);
    }
}

TEST_CASE("find_converter picks the loops this CPU runs best") {
    const converter best = find_converter(dtype::bf16, dtype::f32);
    const converter portable =
        detail::find_converter_for(dtype::bf16, dtype::f32, convert_isa::portable);
    if (detail::cpu_has_avx2()) {
        CHECK((best.kernel() != portable.kernel()));
        CHECK(best == detail::find_converter_for(dtype::bf16, dtype::f32, convert_isa::avx2));
    } else {
        CHECK(best == portable);
    }
}

TEST_CASE("dtype policy: keep, fixed, by_device; parsing") {
    CHECK(dtype_policy::keep().resolve(dtype::f16, true) == dtype::f16);
    CHECK(dtype_policy::fixed(dtype::f32).resolve(dtype::bf16, true) == dtype::f32);
    CHECK(dtype_policy::by_device().resolve(dtype::f16, true) == dtype::bf16);
    CHECK(dtype_policy::by_device().resolve(dtype::bf16, false) == dtype::f32);
    CHECK(parse_dtype_policy("keep") == dtype_policy::keep());
    CHECK(parse_dtype_policy("by-device") == dtype_policy::by_device());
    CHECK(parse_dtype_policy("F8_e4m3") == dtype_policy::fixed(dtype::f8_e4m3));
    CHECK_FALSE(parse_dtype_policy("").has_value());
    CHECK_FALSE(parse_dtype_policy("bydevice").has_value());
    CHECK_FALSE(parse_dtype_policy("float32").has_value());
}

TEST_CASE("every dequantizing entry is what find_dequantizer returns for its inputs") {
    const dequant_view view;
    for (const conversion& c : conversions) {
        if (c.is_elementwise()) continue;
        const std::span<const convert_input> inputs(c.inputs.data(), c.input_count());
        CAPTURE(detail::inputs_text(inputs));
        CAPTURE(name(c.to));
        for (const auto isa : {detail::convert_isa::portable, detail::convert_isa::avx2}) {
            const converter conv = detail::find_dequantizer_for(inputs, c.to, &view, isa);
            CHECK(conv.dequantizes());
            CHECK_FALSE(conv.is_copy());
            CHECK(conv.from() == c.from());
            CHECK(conv.to() == c.to);
        }
    }
}

TEST_CASE("a dequantization no entry reads is refused, naming it and what is supported") {
    const std::string supported = detail::dequantizing_conversions_text();
    CHECK(supported.starts_with(
        "F8_E4M3 x F32 scales, F8_E4M3 x BF16 scales, F8_E4M3 x F16 scales, F8_E4M3 x F8_E8M0 "
        "scales, F4 x F8_E8M0 scales, F4 x F8_E4M3 scales x F32 global scale, F4 x F8_E4M3 "
        "scales / F32 global scale, U4 x F16 scales, U4 x F16 scales by I32 group index, "
        "(U4 - I32 zeros) x F16 scales, (U4 - I32 zeros) x F16 scales by I32 group index, "));
    CHECK(supported.ends_with(
        "(U8 - I32 zeros) x F32 scales by I32 group index, I8 x F32 scales -> BF16/F16/F32"));
    const dequant_view view;
    const std::array<convert_input, 2> fp8{
        {{convert_role::values, dtype::f8_e4m3}, {convert_role::scales, dtype::f32}}};
    const std::array<convert_input, 2> e5m2{
        {{convert_role::values, dtype::f8_e5m2}, {convert_role::scales, dtype::f32}}};
    for (const auto& [inputs, to, text] :
         {std::tuple{std::span<const convert_input>(fp8), dtype::f64,
                     "cannot dequantize F8_E4M3 x F32 scales to F64 (supported: F8_E4M3 x F32"},
          std::tuple{std::span<const convert_input>(e5m2), dtype::bf16,
                     "cannot dequantize F8_E5M2 x F32 scales to BF16"},
          std::tuple{std::span<const convert_input>(fp8).first(1), dtype::bf16,
                     "cannot dequantize F8_E4M3 to BF16"}}) {
        CAPTURE(text);
        try {
            (void)find_dequantizer(inputs, to, &view);
            FAIL("not refused");
        } catch (const error& e) {
            CHECK(e.code() == errc::unsupported_conversion);
            CHECK(std::string(e.what()).find(text) != std::string::npos);
        }
    }
}

TEST_CASE("a dequantizing converter finds each value's scale by its place in the destination") {
    // Two rows of 64 values, blocks of 32: scales [[1, 2], [4, 8]]; every value E4M3 1.0.
    const std::array<float, 4> scales{1.0f, 2.0f, 4.0f, 8.0f};
    dequant_view view;
    view.rows = 2;
    view.cols = 64;
    view.scales = {.data = reinterpret_cast<const std::byte*>(scales.data()),
                   .type = dtype::f32,
                   .block_rows = 1,
                   .block_cols = 32,
                   .row_step = 2,
                   .per_expert = 4};
    const std::array<convert_input, 2> inputs{
        {{convert_role::values, dtype::f8_e4m3}, {convert_role::scales, dtype::f32}}};
    const converter conv = find_dequantizer(inputs, dtype::bf16, &view);
    std::vector<std::byte> ones(128, std::byte{0x38});  // E4M3 1.0
    auto bf16_at = [](const std::vector<std::uint16_t>& v, std::size_t i) { return v[i]; };
    // A box of both rows from column 16: 16 values of block 0 then 16 of block 1 each row.
    std::vector<std::uint16_t> out(64, 0);
    conv.placed(16 * 2, 128)(ones.data(), reinterpret_cast<std::byte*>(out.data()), 2, 32, 64, 64);
    CHECK(bf16_at(out, 0) == 0x3f80);   // 1.0
    CHECK(bf16_at(out, 16) == 0x4000);  // 2.0
    CHECK(bf16_at(out, 32) == 0x4080);  // 4.0
    CHECK(bf16_at(out, 63) == 0x4100);  // 8.0
    // Row 1 of that box alone, as a one-row call.
    std::vector<std::uint16_t> row(32, 0);
    conv.placed(16 * 2, 128).row(1)(ones.data(), reinterpret_cast<std::byte*>(row.data()), 32);
    CHECK(row.front() == 0x4080);
    CHECK(row.back() == 0x4100);
    // Placing an element-wise converter changes nothing.
    const converter plain = find_converter(dtype::bf16, dtype::f32);
    CHECK(plain.placed(64, 128) == plain);
}
