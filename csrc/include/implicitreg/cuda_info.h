// Facts about the CUDA build and the devices visible at run time.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace implicitreg {
namespace cuda {

struct Device {
  std::string name;
  int compute_capability;
  std::size_t total_memory;
};

struct DeviceInfo {
  std::string archs;             // compiled CUDA architectures, e.g. "80-real,90"
  std::string compiler_version;  // nvcc version used for the build
  int runtime_version = 0;       // CUDART_VERSION of the (static) runtime
  int driver_version = 0;        // 0 when no driver is installed
  int device_count = 0;
  std::string error;  // why there is no device; empty when there is one
  std::vector<Device> devices;
};

DeviceInfo device_info();

}  // namespace cuda
}  // namespace implicitreg
