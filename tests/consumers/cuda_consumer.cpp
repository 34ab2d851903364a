// Built with g++ against the installed safeshard-cuda.pc: the CUDA runtime's headers and
// cudart come from the .pc file, and the cuda/ headers are installed. Runs without a GPU (it
// only asks how many there are).
#include <safeshard/cuda/cuda_tensor.hpp>
#include <safeshard/safeshard.hpp>

#include <cuda_runtime.h>

#include <iostream>

int main() {
    int devices = 0;
    const cudaError_t e = cudaGetDeviceCount(&devices);
    if (!safeshard::parse_dtype("F16")) return 1;
    static_assert(safeshard::loadable_tensor<safeshard::cuda_tensor>);
    const safeshard::cuda_engine engine({.buffers = 2});  // touches no GPU until a load
    if (engine.options().buffers != 2 || engine.ring_allocated()) return 1;
    std::cout << "cuda consumer: " << (e == cudaSuccess ? devices : 0) << " device(s) ("
              << cudaGetErrorString(e) << ")\n";
    return 0;
}
