// Forward declarations of safeshard's public types, for headers that only name them.
#pragma once

#include <cstdint>

namespace safeshard {

enum class dtype : std::uint8_t;
enum class errc : std::uint8_t;
struct error_context;
class error;
class shape;
struct model_config;
struct layout;
class slice_map;
struct slice_result;
struct parameter_meta;
struct parameter_spec;
class schema;
class architecture_registry;

}  // namespace safeshard
