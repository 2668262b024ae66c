#!/usr/bin/env bash
# Build the CUDA kernels' CPU emulation (_cuda_emulated, csrc/cuda/emulation.h) with
# ThreadSanitizer and run the emulated CUDA tests against it. Each emulated block runs its
# threads as host threads synchronized by the emulated __syncthreads, so a read of shared
# memory that no barrier orders after its write (a missing __syncthreads) is a data race that
# ThreadSanitizer reports.
#
#   scripts/race_check.sh [pytest args...]      (default: tests/test_cuda.py -k emulated)
#
# Built in IMPLICITREG_RACE_DIR (default build/race) and staged beside a copy of
# python/implicitreg with the installed _core, so the installed package is never touched.
# Any report ends the run with a non-zero exit status. Needs: the environment's python
# (PYTHON, default python3) with the package installed, its test extra, pybind11, cmake and
# ninja; gcc or clang with libtsan.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=$(command -v "${PYTHON:-python3}")
dir=${IMPLICITREG_RACE_DIR:-$root/build/race}
version=$("$py" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

cmake -S "$root" -B "$dir/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSKBUILD_PROJECT_NAME=implicitreg -DSKBUILD_PROJECT_VERSION="$version" \
  -DSKBUILD_PROJECT_VERSION_FULL="$version" \
  -DIMPLICITREG_CUDA=OFF -DIMPLICITREG_NATIVE=OFF -DIMPLICITREG_CUDA_EMULATION=ON \
  -DPython_EXECUTABLE="$py" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread -g1" >"$dir.configure.log"
cmake --build "$dir/build" --target _cuda_emulated

# The package from the sources, its _core from the installed build, _cuda_emulated from here.
installed=$("$py" -c 'import implicitreg, os; print(os.path.dirname(implicitreg.__file__))')
rm -rf "$dir/stage"
mkdir -p "$dir/stage"
cp -r "$root/python/implicitreg" "$dir/stage/"
find "$dir/stage" -name '__pycache__' -prune -exec rm -rf {} +
cp "$installed"/_core.*.so "$dir/stage/implicitreg/"
cp "$dir/build"/_cuda_emulated.*.so "$dir/stage/implicitreg/"

args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(tests/test_cuda.py -q -k emulated -p no:cacheprovider)
log="$dir/tsan"
rm -f "$log".*
status=0
# The staged module must be there: without it every emulated test would skip and the check pass.
IMPLICITREG_EXPECT_CUDA_EMULATION=1 PYTHONPATH="$dir/stage" \
  TSAN_OPTIONS="log_path=$log report_signal_unsafe=0" \
  LD_PRELOAD="$("${CXX:-g++}" -print-file-name=libtsan.so)" \
  "$py" -m pytest "${args[@]}" || status=$?
if compgen -G "$log.*" >/dev/null; then
  cat "$log".*
  echo "race_check: ThreadSanitizer reported races (above, and in $log.*)" >&2
  exit 1
fi
echo "race_check: no race reported (pytest exit $status)"
exit "$status"
