// The umbrella header: everything but cuda/ (which has its own dependency, safeshard_cuda).
#pragma once

#include "safeshard/config.hpp"
#include "safeshard/fwd.hpp"

#include "safeshard/core/checked.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/model_config.hpp"
#include "safeshard/core/shape.hpp"

#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/io/atomic_directory.hpp"
#include "safeshard/io/atomic_file.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/mapped_file.hpp"

#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/config.hpp"
#include "safeshard/format/hf_cache.hpp"
#include "safeshard/format/index.hpp"
#include "safeshard/format/safetensors.hpp"
#include "safeshard/format/safetensors_writer.hpp"

#include "safeshard/load/convert.hpp"

#include "safeshard/shard/apply.hpp"
#include "safeshard/shard/architectures/registry.hpp"
#include "safeshard/shard/init.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/parameter.hpp"
#include "safeshard/shard/schema.hpp"
#include "safeshard/shard/segment.hpp"
#include "safeshard/shard/slice.hpp"
#include "safeshard/shard/slice_map.hpp"
