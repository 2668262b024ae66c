// What every CUDA driver needs: error checks that throw, the stream from its opaque handle,
// launches, grid sizes, a block-wide sum, and device scratch that is freed on every exit path.
// With IR_CUDA_EMULATION the same code compiles as C++ and runs on the CPU (emulation.h).
#pragma once
#ifdef IR_CUDA_EMULATION
#include "cuda/emulation.h"
#else
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace implicitreg {
namespace cuda {

inline void check(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so that the next call starts clean
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err) + " (" + file +
                             ":" + std::to_string(line) + ")");
  }
}
#define IR_CUDA_CHECK(call) ::implicitreg::cuda::check((call), #call, __FILE__, __LINE__)
// After a launch: a bad configuration is reported here, a fault in the kernel at the next sync.
#define IR_CUDA_LAUNCHED(name) \
  ::implicitreg::cuda::check(cudaGetLastError(), name " launch", __FILE__, __LINE__)

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// kernel<<<grid, block, smem, stream>>>(args...), the one place that launches.
template <class... P, class... A>
void launch(void (*kernel)(P...), unsigned grid, unsigned block, std::size_t smem,
            cudaStream_t stream, A... args) {
#ifdef IR_CUDA_EMULATION
  (void)stream;
  emulation::launch(kernel, grid, block, smem, args...);
#else
  // clang-format off
  kernel<<<grid, block, smem, stream>>>(args...);
  // clang-format on
#endif
}

// The block's dynamic shared memory (16-byte aligned).
__device__ __forceinline__ unsigned char* dynamic_smem() {
#ifdef IR_CUDA_EMULATION
  return emulation::dynamic_smem();
#else
  extern __shared__ __align__(16) unsigned char smem[];
  return smem;
#endif
}

inline unsigned grid_for(std::int64_t n, int block) { return unsigned((n + block - 1) / block); }

// The current device's multiprocessors and its per-block shared memory limit (opt-in).
struct DeviceLimits {
  int sms = 0, smem_optin = 0, smem_per_sm = 0;
};
inline DeviceLimits device_limits() {
  int device = 0;
  DeviceLimits d;
  IR_CUDA_CHECK(cudaGetDevice(&device));
  IR_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
  IR_CUDA_CHECK(
      cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  IR_CUDA_CHECK(
      cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  return d;
}

// Blocks of `threads` threads and `smem` bytes of dynamic shared memory that one
// multiprocessor holds at once (each block also takes about 1 KiB for the system): the grid
// of a grid-stride kernel that keeps every multiprocessor full, and no larger.
inline std::int64_t resident_blocks(const DeviceLimits& limits, std::int64_t smem, int threads) {
  const std::int64_t by_smem = limits.smem_per_sm / (smem + 1024);
  const std::int64_t by_threads = 2048 / threads;
  return std::max<std::int64_t>(1, std::min(by_smem, by_threads));
}

// Whether `bytes` of dynamic shared memory fit in one block of `kernel` beside its static
// shared memory; when they do, the kernel is allowed that much. The per-block launchers
// (dmf_step, cp_step) put a problem's workspace there when this holds, else in global scratch.
template <class Kernel>
bool reserve_shared(Kernel kernel, std::int64_t bytes, const DeviceLimits& limits) {
  cudaFuncAttributes attr{};
  IR_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  if (bytes + std::int64_t(attr.sharedSizeBytes) > limits.smem_optin) return false;
  IR_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  return true;
}

// Device memory of `count` T, stream-ordered, released when the owner goes out of scope. A
// call takes all its scratch before its first kernel that writes the caller's arrays, so a
// call refused for memory ("out of device memory") changed nothing and can be made again.
template <class T>
class Scratch {
 public:
  Scratch(std::int64_t count, cudaStream_t stream) : stream_(stream) {
    if (count > 0) {
      const cudaError_t err =
          cudaMallocAsync(reinterpret_cast<void**>(&ptr_), std::size_t(count) * sizeof(T), stream);
      if (err != cudaSuccess) {
        cudaGetLastError();
        throw std::runtime_error(
            "out of device memory: " + std::to_string(double(count) * sizeof(T) / (1 << 20)) +
            " MiB of scratch could not be allocated (" + cudaGetErrorString(err) +
            "); run a smaller batch");
      }
    }
  }
  ~Scratch() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_;
};

// op-reduction of v over the block (op associative and commutative, `identity` its neutral
// value), returned to every thread. Every thread of the block must call it (it
// synchronizes); `red` is __shared__ storage of 32 values.
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, T* red, T identity, Op op) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = (blockDim.x + 31) >> 5;
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  T total = identity;
  for (int w = 0; w < warps; ++w) total = op(total, red[w]);  // the same order in every thread
  return total;
}

template <class T>
__device__ __forceinline__ T block_sum(T v, T* red) {
  return block_reduce(v, red, T(0), [](T x, T y) { return x + y; });
}

}  // namespace cuda
}  // namespace implicitreg
