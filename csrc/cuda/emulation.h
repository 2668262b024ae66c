// Runs this folder's CUDA code on the CPU, so that the kernels are tested where there is no
// GPU. Each block runs its threads as std::threads (a missing __syncthreads shows up as a
// race, and as a report under ThreadSanitizer), blocks run one after another, and device
// memory is host memory. The .cu files compile unchanged as C++ with this header in place of
// cuda_runtime.h (IR_CUDA_EMULATION), into the _cuda_emulated module.
#pragma once
#include <math.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static  // one block runs at a time

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 };
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor,
  cudaDevAttrMultiProcessorCount
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
enum cudaMemcpyKind { cudaMemcpyDeviceToHost = 2 };
struct cudaDeviceProp {
  char name[256];
  int major, minor;
  std::size_t totalGlobalMem;
};

namespace implicitreg {
namespace cuda {
namespace emulation {

// What the emulated device reports: an sm_90-like part with few multiprocessors, so that the
// global-memory paths (more work than blocks) are exercised too.
constexpr int kSharedOptin = 227 * 1024;
constexpr int kMultiprocessors = 2;

class Barrier {
 public:
  explicit Barrier(unsigned count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned gen = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen != generation_; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  unsigned count_, arrived_ = 0, generation_ = 0;
};

struct Block {
  explicit Block(unsigned threads, std::size_t smem_bytes)
      : barrier(threads), exchange(threads), smem((smem_bytes + 7) / 8) {
    for (unsigned w = 0; w * 32 < threads; ++w)
      warps.push_back(std::make_unique<Barrier>(std::min(32u, threads - w * 32)));
  }
  Barrier barrier;
  // Warp-scoped: a warp's lanes meet only each other, so that warps of one block may run
  // different numbers of shuffles (a warp per matrix, each converging at its own pace).
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<std::uint64_t> exchange;  // the shuffles' mailbox, one word per thread
  std::vector<std::uint64_t> smem;      // dynamic shared memory (malloc: 16-byte aligned)
};

inline Block* current = nullptr;
inline thread_local dim3 thread_idx;
inline dim3 block_idx, block_dim, grid_dim;

// kernel(args...) over grid x block threads; returns when every block has run.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem, A... args) {
  grid_dim = grid;
  block_dim = block;
  for (unsigned g = 0; g < grid.x; ++g) {
    Block blk(block.x, smem);
    current = &blk;
    block_idx = dim3(g);
    std::vector<std::thread> threads;
    threads.reserve(block.x);
    for (unsigned t = 0; t < block.x; ++t)
      threads.emplace_back([&, t] {
        thread_idx = dim3(t);
        kernel(args...);
      });
    for (auto& th : threads) th.join();
    current = nullptr;
  }
}

inline unsigned char* dynamic_smem() {
  return reinterpret_cast<unsigned char*>(current->smem.data());
}

}  // namespace emulation
}  // namespace cuda
}  // namespace implicitreg

#define threadIdx (::implicitreg::cuda::emulation::thread_idx)
#define blockIdx (::implicitreg::cuda::emulation::block_idx)
#define blockDim (::implicitreg::cuda::emulation::block_dim)
#define gridDim (::implicitreg::cuda::emulation::grid_dim)

inline void __syncthreads() { ::implicitreg::cuda::emulation::current->barrier.wait(); }

// Every lane of the warp calls it together, as on the device with a full mask: each posts its
// value, then reads its partner's.
template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  auto& blk = *::implicitreg::cuda::emulation::current;
  const unsigned me = threadIdx.x;
  auto& warp = *blk.warps[me / 32];
  static_assert(sizeof(T) <= sizeof(std::uint64_t), "one word per thread");
  std::memcpy(&blk.exchange[me], &v, sizeof(T));
  warp.wait();
  T out;
  std::memcpy(&out, &blk.exchange[me ^ unsigned(lane_mask)], sizeof(T));
  warp.wait();
  return out;
}

// Whether any lane of the warp has `pred`; every lane calls it.
inline bool __any_sync(unsigned, int pred) {
  auto& blk = *::implicitreg::cuda::emulation::current;
  const unsigned me = threadIdx.x, first = me / 32 * 32;
  auto& warp = *blk.warps[me / 32];
  blk.exchange[me] = pred != 0;
  warp.wait();
  bool any = false;
  for (unsigned t = first; t < std::min<unsigned>(first + 32, blk.exchange.size()); ++t)
    any = any || blk.exchange[t] != 0;
  warp.wait();
  return any;
}

inline void __syncwarp(unsigned = 0xffffffffu) {
  auto& blk = *::implicitreg::cuda::emulation::current;
  blk.warps[threadIdx.x / 32]->wait();
}

inline const char* cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
namespace implicitreg::cuda::emulation {
// The next this-many allocations fail, as a full device's would (tests of the retry).
inline int failing_allocations = 0;
}  // namespace implicitreg::cuda::emulation
inline cudaError_t cudaMallocAsync(void** p, std::size_t bytes, cudaStream_t) {
  if (implicitreg::cuda::emulation::failing_allocations > 0) {
    --implicitreg::cuda::emulation::failing_allocations;
    *p = nullptr;
    return cudaErrorMemoryAllocation;
  }
  *p = std::malloc(bytes == 0 ? 1 : bytes);
  return *p != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, std::size_t bytes, cudaStream_t) {
  std::memset(p, v, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind,
                                   cudaStream_t) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  *v = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? implicitreg::cuda::emulation::kSharedOptin
       : attr == cudaDevAttrMaxSharedMemoryPerMultiprocessor
           ? implicitreg::cuda::emulation::kSharedOptin + 1024
           : implicitreg::cuda::emulation::kMultiprocessors;
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
  return cudaSuccess;
}
struct cudaFuncAttributes {
  std::size_t sharedSizeBytes;
};
template <class F>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, F) {
  attr->sharedSizeBytes = 0;  // emulated __shared__ variables are static host memory
  return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::strcpy(p->name, "emulated on the CPU");
  p->major = 9;
  p->minor = 0;
  p->totalGlobalMem = std::size_t(1) << 34;
  return cudaSuccess;
}
