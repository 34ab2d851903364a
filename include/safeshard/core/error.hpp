// One exception type for every failure: safeshard::error, with an errc and its context.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace safeshard {

// The first group mirrors the reference reader's errors (safetensors ≥ 0.8), so a
// differential test can compare verdicts; the rest are safeshard's own.
enum class errc : std::uint8_t {
    // safetensors file format (the reference's SafeTensorError variants)
    header_too_small,                // fewer than 8 bytes
    header_too_large,                // header length over the cap
    invalid_header_length,           // 8 + N past the end of the file
    invalid_header,                  // not UTF-8, or otherwise unusable
    invalid_header_start,            // header does not start with '{'
    invalid_header_deserialization,  // not JSON, or JSON of the wrong schema
    invalid_offset,                  // tensors do not tile the data buffer
    tensor_invalid_info,             // byte size disagrees with dtype × shape
    validation_overflow,             // a size or offset overflows 64 bits
    misaligned_slice,                // a sub-byte tensor does not end on a byte boundary
    metadata_incomplete_buffer,      // data buffer shorter or longer than the tensors
    tensor_not_found,                // no tensor of that name
    io_error,                        // the system failed a call (errno in the context)
    duplicate_name,                  // a name appears twice
    // safeshard's own
    invalid_argument,      // a caller passed something out of range
    rank_too_large,        // a shape beyond shape::capacity dimensions
    invalid_dtype,         // unknown or unusable dtype
    invalid_index,         // model.safetensors.index.json is wrong
    invalid_config,        // config.json is wrong
    checkpoint_not_found,  // nothing loadable where the user pointed
    invalid_layout,        // a layout cannot cut this tensor for this world
    shape_mismatch,        // a source shape disagrees with the schema
    missing_tensor,        // the schema expects a name the checkpoint lacks
    unexpected_tensor,     // the checkpoint has a name the schema lacks (strict mode)
    quantized_checkpoint,  // scale tensors present and raw loading not asked for
    unsupported_conversion,
    tensor_factory_failed,
    cuda_error,
    invalid_export,  // per-rank export metadata is missing or inconsistent
    interrupted,
};

[[nodiscard]] constexpr std::string_view to_string(errc e) noexcept {
    switch (e) {
        case errc::header_too_small: return "header_too_small";
        case errc::header_too_large: return "header_too_large";
        case errc::invalid_header_length: return "invalid_header_length";
        case errc::invalid_header: return "invalid_header";
        case errc::invalid_header_start: return "invalid_header_start";
        case errc::invalid_header_deserialization: return "invalid_header_deserialization";
        case errc::invalid_offset: return "invalid_offset";
        case errc::tensor_invalid_info: return "tensor_invalid_info";
        case errc::validation_overflow: return "validation_overflow";
        case errc::misaligned_slice: return "misaligned_slice";
        case errc::metadata_incomplete_buffer: return "metadata_incomplete_buffer";
        case errc::tensor_not_found: return "tensor_not_found";
        case errc::io_error: return "io_error";
        case errc::duplicate_name: return "duplicate_name";
        case errc::invalid_argument: return "invalid_argument";
        case errc::rank_too_large: return "rank_too_large";
        case errc::invalid_dtype: return "invalid_dtype";
        case errc::invalid_index: return "invalid_index";
        case errc::invalid_config: return "invalid_config";
        case errc::checkpoint_not_found: return "checkpoint_not_found";
        case errc::invalid_layout: return "invalid_layout";
        case errc::shape_mismatch: return "shape_mismatch";
        case errc::missing_tensor: return "missing_tensor";
        case errc::unexpected_tensor: return "unexpected_tensor";
        case errc::quantized_checkpoint: return "quantized_checkpoint";
        case errc::unsupported_conversion: return "unsupported_conversion";
        case errc::tensor_factory_failed: return "tensor_factory_failed";
        case errc::cuda_error: return "cuda_error";
        case errc::invalid_export: return "invalid_export";
        case errc::interrupted: return "interrupted";
    }
    return "unknown";
}

// `s` with its control characters shown escaped: bytes below 0x20 and DEL as \x1b, and the C1
// controls (U+0080..U+009F, two bytes in UTF-8) as \u009b; every other byte kept. Names and
// paths come from files: escaped, they cannot move the cursor or retitle the terminal of
// whoever reads a message. Every error message goes through it, and the tool's other lines too.
[[nodiscard]] inline std::string escape_controls(std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string r;
    r.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        const auto next = i + 1 < s.size() ? static_cast<unsigned char>(s[i + 1]) : 0u;
        if (c < 0x20 || c == 0x7f) {
            r += "\\x";
            r += hex[c >> 4];
            r += hex[c & 0xf];
        } else if (c == 0xc2 && next >= 0x80 && next <= 0x9f) {
            r += "\\u00";
            r += hex[next >> 4];
            r += hex[next & 0xf];
            ++i;
        } else {
            r += static_cast<char>(c);
        }
    }
    return r;
}

// Where an error happened. Every field is optional; what() prints those that are set.
struct error_context {
    std::string file{};
    std::string tensor{};
    std::optional<std::uint64_t> offset{};  // byte offset in `file`
    int sys_errno = 0;                      // errno of a failed system call, else 0
};

class error : public std::runtime_error {
public:
    error(errc code, std::string_view message, error_context ctx = {})
        : std::runtime_error(compose(code, message, ctx)),
          code_(code),
          message_(message),
          ctx_(std::move(ctx)) {}

    [[nodiscard]] errc code() const noexcept { return code_; }
    // what() is "code: message (file 'f', tensor 't', byte offset n)", control characters
    // escaped (escape_controls); message(), file() and tensor() are the raw texts.
    // The message without code and context.
    [[nodiscard]] const std::string& message() const noexcept { return message_; }
    [[nodiscard]] const error_context& context() const noexcept { return ctx_; }
    [[nodiscard]] const std::string& file() const noexcept { return ctx_.file; }
    [[nodiscard]] const std::string& tensor() const noexcept { return ctx_.tensor; }
    [[nodiscard]] std::optional<std::uint64_t> offset() const noexcept { return ctx_.offset; }
    [[nodiscard]] int sys_errno() const noexcept { return ctx_.sys_errno; }

private:
    static std::string compose(errc code, std::string_view message, const error_context& ctx) {
        std::string s;
        s.reserve(message.size() + 64);
        s += to_string(code);
        s += ": ";
        s += escape_controls(message);
        if (!ctx.file.empty() || !ctx.tensor.empty() || ctx.offset) {
            s += " (";
            const char* sep = "";
            if (!ctx.file.empty()) {
                s += "file '";
                s += escape_controls(ctx.file);
                s += '\'';
                sep = ", ";
            }
            if (!ctx.tensor.empty()) {
                s += sep;
                s += "tensor '";
                s += escape_controls(ctx.tensor);
                s += '\'';
                sep = ", ";
            }
            if (ctx.offset) {
                s += sep;
                s += "byte offset ";
                s += std::to_string(*ctx.offset);
            }
            s += ')';
        }
        return s;
    }

    errc code_;
    std::string message_;
    error_context ctx_;
};

// An io_error for a failed system call: "open: No such file or directory" plus the path.
[[nodiscard]] inline error system_error(std::string_view operation, int err, std::string path,
                                        std::optional<std::uint64_t> offset = std::nullopt) {
    std::string msg(operation);
    msg += " failed: ";
    msg += std::strerror(err);
    return error(
        errc::io_error, msg,
        error_context{.file = std::move(path), .tensor = {}, .offset = offset, .sys_errno = err});
}

}  // namespace safeshard
