// Forward declarations of safeshard's public types, for headers that only name them.
#pragma once

#include <cstdint>

namespace safeshard {

// core/
enum class dtype : std::uint8_t;
enum class errc : std::uint8_t;
struct error_context;
class error;
class shape;
struct model_config;

// io/
enum class access_advice;
class mapped_file;
struct read_options;
class file_reader;
struct file_identity;
class aligned_buffer;
class atomic_file;
class atomic_directory;

// format/
struct parse_options;
class tensor_view;
class file_view;
struct tensor_info;
struct planned_tensor;
struct tensor_data;
class safetensors_writer;

// shard/
struct layout;
class slice_map;
struct slice_result;
struct parameter_meta;
struct parameter_spec;
class schema;
class architecture_registry;
struct architecture_entry;
struct architecture_table;

// load/
class converter;
struct dtype_policy;
struct copy_op;
enum class device_kind : std::uint8_t;
struct device;
enum class read_mode : std::uint8_t;
struct tensor_request;
template <class T>
struct tensor_factory;
class host_tensor;
struct parallel_context;
struct plan_options;
struct config_check;
class load_plan;
struct host_engine_options;
class host_engine;
struct cached_file;
class file_cache;
struct load_report;
template <class T>
class loaded_model;
struct load_options;

// save/
struct shard_file;
struct shard_plan;
struct sharded_save_options;
class sharded_writer;

}  // namespace safeshard
