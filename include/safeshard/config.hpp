// safeshard — compile-time configuration: version, host/device annotation, platform checks.
#pragma once

#include <bit>

#define SAFESHARD_VERSION_MAJOR 0
#define SAFESHARD_VERSION_MINOR 1
#define SAFESHARD_VERSION_PATCH 0
#define SAFESHARD_VERSION_STRING "0.1.0"

// Arithmetic that must run inside CUDA kernels too (layouts, slice maps, checked math).
#if defined(__CUDACC__)
#define SAFESHARD_HOST_DEVICE __host__ __device__
#else
#define SAFESHARD_HOST_DEVICE
#endif

namespace safeshard {

// safetensors stores every number little-endian; we read them in place.
static_assert(std::endian::native == std::endian::little,
              "safeshard supports little-endian hosts only (safetensors is little-endian)");

struct version_info {
    int major;
    int minor;
    int patch;
};

inline constexpr version_info version{SAFESHARD_VERSION_MAJOR, SAFESHARD_VERSION_MINOR,
                                      SAFESHARD_VERSION_PATCH};

}  // namespace safeshard
