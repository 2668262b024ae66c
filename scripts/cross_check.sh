#!/usr/bin/env bash
# Compile the CPU kernels for aarch64 with a cross compiler: the portable C++ path (no x86
# intrinsics, no x86-64 levels) must build there. Compile only; nothing runs.
#
#   scripts/cross_check.sh            (needs g++-aarch64-linux-gnu)
#
# The kernels at -O1: whether the code compiles does not depend on the optimization level,
# and -O1 compiles in a fraction of -O3's time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cxx=${CROSS_CXX:-aarch64-linux-gnu-g++}
if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "cross_check.sh: $cxx not found (Debian: apt-get install g++-aarch64-linux-gnu)" >&2
  exit 1
fi
dir=${IMPLICITREG_CROSS_DIR:-$root/build/cross-aarch64}
mkdir -p "$dir"
# The sources and flags of CMakeLists.txt's kernels library, without its Python and pybind11
# parts (CMake's FindPython cannot look for an interpreter while cross-compiling).
printf '%s\n' csrc/cpu/*.cpp | xargs -P 2 -I{} sh -c \
  '"$0" -std=c++17 -O1 -fno-math-errno -fopenmp -Wall -Werror -Wno-psabi -Icsrc/include -Icsrc \
     -c "$1" -o "$2/$(basename "$1" .cpp).o"' "$cxx" {} "$dir"
for obj in "$dir"/*.o; do  # made for aarch64, not for the host
  file "$obj" | grep -q 'ARM aarch64' || { echo "cross_check.sh: $obj is not aarch64" >&2; exit 1; }
done
echo "cross_check.sh: the CPU kernels compile for aarch64 ($cxx $("$cxx" -dumpversion), $dir)"
