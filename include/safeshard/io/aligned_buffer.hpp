// Owned, uninitialised host memory aligned for O_DIRECT transfers.
#pragma once

#include "safeshard/core/checked.hpp"
#include "safeshard/core/error.hpp"

#include <bit>
#include <cstddef>
#include <new>
#include <span>
#include <string>
#include <utility>

namespace safeshard {

// O_DIRECT needs buffer address, file offset and length aligned to the logical block size;
// 4096 covers every common device (512-byte and 4 KiB sectors).
inline constexpr std::size_t direct_io_alignment = 4096;

// Move-only. The allocation is rounded up to whole alignment units (capacity()), so a direct
// read of the aligned superset of size() bytes fits. Contents start uninitialised.
class aligned_buffer {
public:
    aligned_buffer() noexcept = default;

    explicit aligned_buffer(std::size_t size, std::size_t alignment = direct_io_alignment)
        : alignment_(alignment) {
        if (alignment == 0 || !std::has_single_bit(alignment))
            throw error(errc::invalid_argument,
                        "aligned_buffer alignment must be a power of two, got " +
                            std::to_string(alignment));
        if (size == 0) return;
        const auto cap = checked_align_up(size, alignment);
        if (!cap)
            throw error(errc::invalid_argument,
                        "aligned_buffer of " + std::to_string(size) + " bytes overflows");
        data_ = static_cast<std::byte*>(::operator new (*cap, std::align_val_t{alignment}));
        size_ = size;
        capacity_ = *cap;
    }

    aligned_buffer(aligned_buffer&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)),
          size_(std::exchange(o.size_, 0)),
          capacity_(std::exchange(o.capacity_, 0)),
          alignment_(o.alignment_) {}
    aligned_buffer& operator=(aligned_buffer&& o) noexcept {
        if (this != &o) {
            release();
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
            capacity_ = std::exchange(o.capacity_, 0);
            alignment_ = o.alignment_;
        }
        return *this;
    }
    aligned_buffer(const aligned_buffer&) = delete;
    aligned_buffer& operator=(const aligned_buffer&) = delete;
    ~aligned_buffer() { release(); }

    [[nodiscard]] std::byte* data() noexcept { return data_; }
    [[nodiscard]] const std::byte* data() const noexcept { return data_; }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
    [[nodiscard]] std::size_t alignment() const noexcept { return alignment_; }
    [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
    [[nodiscard]] std::span<std::byte> bytes() noexcept { return {data_, size_}; }
    [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }

private:
    void release() noexcept {
        if (data_ != nullptr) ::operator delete (data_, std::align_val_t{alignment_});
        data_ = nullptr;
        size_ = 0;
        capacity_ = 0;
    }

    std::byte* data_ = nullptr;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
    std::size_t alignment_ = direct_io_alignment;
};

}  // namespace safeshard
