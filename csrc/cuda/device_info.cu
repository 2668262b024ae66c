// Device facts for implicitreg.build_info(). Static cudart loads the driver lazily, so this
// works on a machine with no driver: every error there simply means "no device".
#include <string>

#include "cuda/common.cuh"
#include "implicitreg/cuda_info.h"

namespace implicitreg {
namespace cuda {

DeviceInfo device_info() {
  DeviceInfo info;
  info.archs = IMPLICITREG_CUDA_ARCHS;
  info.compiler_version = IMPLICITREG_CUDA_COMPILER_VERSION;
  cudaRuntimeGetVersion(&info.runtime_version);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    info.device_count = 0;
    info.error = std::string("no device: ") + cudaGetErrorString(err);
    return info;
  }
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess) cudaGetLastError();
  info.device_count = count;
  if (count == 0) info.error = "no device: cudaGetDeviceCount returned 0";
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, d) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    info.devices.push_back({p.name, p.major * 10 + p.minor, p.totalGlobalMem});
  }
  return info;
}

}  // namespace cuda
}  // namespace implicitreg
