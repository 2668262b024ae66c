#!/usr/bin/env bash
# Build the CPU core (_core) with AddressSanitizer and UndefinedBehaviorSanitizer and run the
# test suite against it.
#
#   scripts/sanitize.sh [pytest args...]        (default: the whole suite, quietly)
#
# The sanitized module is built in its own directory (IMPLICITREG_SANITIZE_DIR, default
# build/sanitize) and staged there beside a copy of python/implicitreg; the tests import that
# copy through PYTHONPATH, so the installed package is never touched. The interpreter is not
# sanitized, so libasan is preloaded; leak detection is off because CPython's arena allocator
# and interned objects look like leaks to it. Any sanitizer report ends the run with a
# non-zero exit status (UBSan halts on its first error instead of printing and going on).
# Needs: the environment's python (PYTHON, default python3) with numpy, pytest, hypothesis,
# pybind11, cmake and ninja (`pip install ".[test]" pybind11 cmake ninja`), and gcc or clang.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=$(command -v "${PYTHON:-python3}")
dir=${IMPLICITREG_SANITIZE_DIR:-$root/build/sanitize}
# -g1: line tables for the reports' stack traces, without the variable tracking of -g that
# triples the build time of the batch kernels (RelWithDebInfo's own flags drop their -g below,
# which would come after this one and win)
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g1"
version=$("$py" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

# CUDA off: the sanitizers check host code, and nvcc is not needed for that. One build, for
# this machine (-march=native): the widest SIMD packs and their remainders. The kernels at
# -O2, not -O3: instrumented, dmf_step.cpp alone takes over 10 minutes to compile at -O3 on
# 2 cores, 2.5 at -O2, with the same vectorized loops.
cmake -S "$root" -B "$dir/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSKBUILD_PROJECT_NAME=implicitreg -DSKBUILD_PROJECT_VERSION="$version" \
  -DSKBUILD_PROJECT_VERSION_FULL="$version" \
  -DIMPLICITREG_CUDA=OFF -DIMPLICITREG_NATIVE=ON -DIMPLICITREG_CPU_OPT=-O2 \
  -DPython_EXECUTABLE="$py" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -DNDEBUG" \
  -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" >"$dir.configure.log"
cmake --build "$dir/build" --target _core

rm -rf "$dir/stage"
mkdir -p "$dir/stage"
cp -r "$root/python/implicitreg" "$dir/stage/"
find "$dir/stage" -name '__pycache__' -prune -exec rm -rf {} +
cp "$dir"/build/_core*.so "$dir/stage/implicitreg/"

cxx=$(grep -m1 '^CMAKE_CXX_COMPILER:' "$dir/build/CMakeCache.txt" | cut -d= -f2)
libasan=$("$cxx" -print-file-name=libasan.so)
libstdcxx=$("$cxx" -print-file-name=libstdc++.so)
for lib in "$libasan" "$libstdcxx"; do
  if [ ! -e "$lib" ]; then
    echo "sanitize.sh: $lib not found beside $cxx" >&2
    exit 1
  fi
done

# libstdc++ too: ASan finds the C++ runtime's __cxa_throw when it starts, and the interpreter
# does not load that runtime (only _core does, later), so without it the first C++ exception
# (every input the core refuses) aborts.
export LD_PRELOAD="$libasan $libstdcxx"
# Reports go to files: pytest captures stderr, and a process the sanitizer stops takes its
# captured output with it.
rm -rf "$dir/reports" && mkdir -p "$dir/reports"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:log_path=$dir/reports/asan
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$dir/reports/ubsan
export PYTHONPATH="$dir/stage"
# The staged copy, never the installed package: checked before the suite runs.
"$py" -c '
import sys, implicitreg, implicitreg._core as c
assert implicitreg.__file__.startswith(sys.argv[1]), implicitreg.__file__
assert c.__file__.startswith(sys.argv[1]), c.__file__
print("sanitized core:", c.__file__)' "$dir/stage"

# Ray's own processes (raylet, GCS) must not run under the preloaded ASan, so its tests are
# left to the ordinary run; neither _cuda nor _cuda_emulated is built here, so no test may
# expect them.
unset IMPLICITREG_EXPECT_CUDA_COMPILED IMPLICITREG_EXPECT_CUDA_EMULATION
if [ $# -eq 0 ]; then set -- -q -m "not ray"; fi
status=0
"$py" -m pytest -p no:cacheprovider "$@" || status=$?
for report in "$dir"/reports/*; do
  [ -e "$report" ] || continue
  echo "sanitize.sh: sanitizer report $report:" >&2
  cat "$report" >&2
  status=${status/#0/1}
done
exit "$status"
