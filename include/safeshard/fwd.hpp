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
class converter;
struct dtype_policy;

enum class access_advice;
class mapped_file;
struct read_options;
class file_reader;
class aligned_buffer;
class atomic_file;
class atomic_directory;
struct layout;
class slice_map;
struct slice_result;
struct parameter_meta;
struct parameter_spec;
class schema;
class architecture_registry;

}  // namespace safeshard

namespace safeshard {
struct parse_options;
class tensor_view;
class file_view;
struct tensor_info;
struct planned_tensor;
struct tensor_data;
class safetensors_writer;
}  // namespace safeshard
