// cuda_engine: basic_cuda_engine on the CUDA runtime. One engine feeds one device
// (cuda_engine_options::device); a process loading onto several GPUs makes one per device.
//
//   safeshard::cuda_engine engine({.device = 1, .buffers = 8, .streams = 4});
//   auto model = safeshard::load<safeshard::cuda_tensor>(path, options, engine);
#pragma once

#include "safeshard/cuda/basic_cuda_engine.hpp"
#include "safeshard/cuda/cudart_transport.hpp"
#include "safeshard/load/engine.hpp"

namespace safeshard {

using cuda_engine = basic_cuda_engine<cudart_transport>;

static_assert(device_copy_engine<cuda_engine>);

}  // namespace safeshard
