#!/usr/bin/env bash
# The GPU check of implicitreg, in one go on a machine with an NVIDIA GPU (no package registry
# needed): check the toolchain, build with CUDA, print the build, run the gpu-marked tests, run
# every kernel under compute-sanitizer (memcheck, racecheck), benchmark the DMF step, the CP
# step and svdvals against PyTorch, JAX and CuPy on the same device, time `implicitreg
# reproduce paper-2x2` with 4096 seeds on the GPU against 32 on the CPU and, with --profile,
# read each benchmarked kernel's hardware counters with Nsight Compute.
#
#     bash benchmarks/gpu_check.sh [--quick] [--no-build] [--profile] [--deadline S]
#
# Run from the repository root. PYTHON picks the interpreter (default python3).
#   --quick     the whole check, build included, in about 6 minutes on a 16-core machine:
#               the build for this GPU's architecture only, without the emulation module,
#               the tests in parallel (pytest-xdist, when installed) with compute-sanitizer
#               beside them, the benchmark's --quick
#   --no-build  skip the build (implicitreg already installed with CUDA)
#   --profile   after everything else, `ncu` on benchmarks/gpu_profile.py (one call of each
#               benchmarked kernel): throughput, occupancy and launch figures per kernel
#   --deadline  S seconds from the start: each later step's time limit is cut to what is left,
#               and a step with under 20 s left is skipped (said in the summary), so that a
#               slot of fixed length ends with the summary written
#
# Time limits (full / --quick), sized from what each step needs on a fresh machine (CuPy
# compiles its kernels on first use): build 600 / 180 s, tests 300 / 150 s, sanitizer 90 /
# 60 s per tool, benchmark 240 / 110 s (its budget for peers 200 / 80 s; torch.compile stops
# after 60 s of compiling), reproduce 330 / 70 s (the GPU run stopped after 300 / 50 s),
# profile 120 / 70 s.
#
# With OUT set, everything printed goes to $OUT/gpu_check.log too; $OUT (else the current
# directory) also gets gpu_check_build.log, gpu_check_tests.xml (junit), gpu_check.json (the
# benchmark, rewritten after each case), gpu_check_reproduce.json, gpu_check_ncu.txt and
# gpu_check_steps.jsonl, one line per step as it ends: nothing is lost to a time limit.
#
# Exit codes: 0 tests passed (or skipped: no pytest/hypothesis), the sanitizer found nothing,
# the benchmark's checks passed and both reproduce runs finished (targets may be missed: see
# the summary); 1 any of these failed, timed out or was skipped for lack of time; 2 no GPU
# (nvidia-smi missing or failing, or no device listed); 3 the toolchain cannot build, the
# build failed or implicitreg's cuda backend is not usable after it.
set -euo pipefail

PY="${PYTHON:-python3}"
BUILD=1 QUICK=0 PROFILE=0 DEADLINE=0
while (($#)); do
  case "$1" in
    --no-build) BUILD=0 ;;
    --quick) QUICK=1 ;;
    --profile) PROFILE=1 ;;
    --deadline)
      [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "gpu_check: --deadline takes whole seconds, got '${2:-}'" >&2; exit 64; }
      DEADLINE="$2"; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 64 ;;
  esac
  shift
done

# Time limits in seconds: full check, then --quick.
declare -A LIMIT=([build]=600 [tests]=300 [sanitizer]=90 [bench]=240 [bench_budget]=200
                  [reproduce]=330 [gpu_timeout]=300 [profile]=120)
if ((QUICK)); then
  LIMIT=([build]=180 [tests]=150 [sanitizer]=60 [bench]=110 [bench_budget]=80
         [reproduce]=70 [gpu_timeout]=50 [profile]=70)
fi

say() { printf '\n=== gpu_check [%3ds] %s\n' "$SECONDS" "$*"; }

fail() {  # fail CODE MESSAGE: stop here, with a summary line
  local code="$1"; shift
  record stop "failed: $*"
  echo "gpu_check: FAILED: $*" >&2
  echo "gpu_check: SUMMARY: failed after ${SECONDS}s (exit $code): $*"
  exit "$code"
}

record() {  # record STEP RESULT: one JSON line in gpu_check_steps.jsonl, as the step ends
  "$PY" -c 'import json, sys; print(json.dumps({"step": sys.argv[1], "result": sys.argv[2],
    "at_s": int(sys.argv[3])}))' "$1" "$2" "$SECONDS" >>"$STEPS" 2>/dev/null || true
}

limit() {  # limit NAME: NAME's time limit, cut to what the deadline leaves (0: skip the step)
  local want="${LIMIT[$1]}"
  if ((DEADLINE)); then
    local left=$((DEADLINE - SECONDS - 5))
    ((left >= 20)) || { echo 0; return; }
    ((want <= left)) || want="$left"
  fi
  echo "$want"
}

timed() {  # timed RC_VAR SECONDS CMD...: run CMD under timeout; RC_VAR gets its exit code
  local -n _rc="$1"; local s="$2"; shift 2
  _rc=0
  timeout --kill-after=5 "$s" "$@" || _rc=$?
}

outcome() {  # outcome RC SECONDS: a step's result in words
  case "$1" in
    0) echo "passed" ;;
    124|137) echo "TIMED OUT after $2 s" ;;
    *) echo "FAILED (exit $1)" ;;
  esac
}

find_tool() {  # find_tool NAME: NAME on PATH, else in the CUDA toolkit's usual places
  command -v "$1" 2>/dev/null && return
  local c
  for c in /usr/local/cuda/bin/"$1" /opt/nvidia/nsight-compute/*/"$1"; do
    [[ -x "$c" ]] && { echo "$c"; return; }
  done
  return 1
}

preflight() {  # the toolchain a build needs, each with its version; one clear line if not
  local nvcc
  if [[ -n "${CUDACXX:-}" ]]; then nvcc="$CUDACXX"; else nvcc="$(find_tool nvcc)" || nvcc=""; fi
  [[ -n "$nvcc" && -x "$nvcc" ]] || fail 3 "no CUDA compiler: nvcc is not on PATH nor in /usr/local/cuda/bin (set CUDACXX)"
  # check_language(CUDA) looks on PATH only: name the compiler found elsewhere
  export CUDACXX="$nvcc"
  echo "nvcc:              $nvcc ($("$nvcc" --version | grep -o 'release [0-9.]*' || echo '?'))"
  local cxx="${CXX:-g++}"
  command -v "$cxx" >/dev/null || fail 3 "no host C++ compiler: '$cxx' not found (set CXX)"
  echo "host compiler:     $cxx ($("$cxx" -dumpfullversion 2>/dev/null || echo '?'))"
  local report
  report="$("$PY" - <<'EOF'
import importlib, os, sysconfig
inc = sysconfig.get_paths()["include"]
ok = os.path.exists(os.path.join(inc, "Python.h"))
print(f"Python.h:          {inc if ok else 'MISSING in ' + inc}")
need = {"pybind11": True, "scikit_build_core": True, "numpy": True, "cupy": False,
        "torch": False, "jax": False, "pytest": False, "xdist": False}
missing = [] if ok else ["Python.h"]
for name, needed in need.items():
    try:
        v = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as exc:
        v = f"not importable ({type(exc).__name__})"
        if needed:
            missing.append(name)
    print(f"{name + ':':19s}{v}")
if missing:
    print("MISSING: " + ", ".join(missing))
EOF
)" || fail 3 "$PY cannot run"
  echo "$report"
  if ((BUILD)) && grep -q '^MISSING: ' <<<"$report"; then
    fail 3 "cannot build or run the check: $(grep '^MISSING: ' <<<"$report" | cut -c10-) not found for $PY"
  fi
}

run_sanitizer() {  # run_sanitizer TOOL RESULT_FILE: memcheck, then racecheck, on every kernel
  local result="clean" tool s rc
  for tool in memcheck racecheck; do
    s="$(limit sanitizer)"
    say "6/8 compute-sanitizer --tool $tool on benchmarks/gpu_sanitize.py (limit ${s}s)"
    if ((s == 0)); then result="$tool SKIPPED (deadline)"; break; fi
    timed rc "$s" "$1" --tool "$tool" --error-exitcode 9 "$PY" benchmarks/gpu_sanitize.py
    ((rc == 0)) || { result="$tool $(outcome "$rc" "$s")"; break; }
  done
  echo "$result" >"$2"
}

main() {
  local out="${OUT:-.}"
  STEPS="$out/gpu_check_steps.jsonl"
  rm -f "$STEPS" "$out/gpu_check.json" "$out/gpu_check_reproduce.json" \
    "$out/gpu_check_ncu.txt" "$out/gpu_check_tests.xml"  # no figures of an earlier run
  echo "gpu_check: implicitreg GPU check in $(pwd), $(date -u '+%Y-%m-%d %H:%M:%S UTC')," \
       "python: $PY, $( ((QUICK)) && echo quick || echo full)" \
       "$( ((DEADLINE)) && echo "deadline ${DEADLINE}s")"

  say "1/8 GPU visible? (nvidia-smi)"
  command -v nvidia-smi >/dev/null 2>&1 \
    || fail 2 "nvidia-smi not found: no NVIDIA driver on this machine, so no GPU to check"
  local gpus
  gpus="$(timeout 10 nvidia-smi -L 2>&1)" \
    || fail 2 "nvidia-smi failed (exit $?): ${gpus:-no output}"
  grep -q '^GPU [0-9]' <<<"$gpus" || fail 2 "nvidia-smi lists no GPU: ${gpus:-no output}"
  echo "$gpus"
  timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm \
    --format=csv,noheader || true
  record gpu "$(head -n 1 <<<"$gpus")"

  say "2/8 toolchain"
  preflight
  record preflight ok

  if ((BUILD)); then
    local -a env=(IMPLICITREG_CUDA=ON PIP_DISABLE_PIP_VERSION_CHECK=1)
    if ((QUICK)); then
      # this GPU's architecture only, no emulation module, every core: a third of the time
      local cc
      cc="$(timeout 10 nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')"
      [[ "$cc" =~ ^[0-9]+$ ]] && env+=("CUDAARCHS=${CUDAARCHS:-$cc}")
      env+=(IMPLICITREG_CUDA_EMULATION=OFF "CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)")
    fi
    local s; s="$(limit build)"
    say "3/8 build: ${env[*]} $PY -m pip install --no-index --no-build-isolation --no-deps . (limit ${s}s)"
    local build_log="$out/gpu_check_build.log" rc
    # --no-index and no version check: nothing is fetched, nothing waits on a network
    timed rc "$s" env "${env[@]}" "$PY" -m pip install --no-index --no-build-isolation \
      --no-deps -v . >"$build_log" 2>&1
    if ((rc)); then
      echo "--- last 80 lines of the build ($build_log) ---"
      tail -n 80 "$build_log"
      fail 3 "build with IMPLICITREG_CUDA=ON $(outcome "$rc" "$s") (whole output in $build_log)"
    fi
    tail -n 2 "$build_log"
    record build "passed"
  else
    say "3/8 build skipped (--no-build)"
  fi

  say "4/8 $PY -m implicitreg info"
  timeout 30 "$PY" -m implicitreg info || fail 3 "'$PY -m implicitreg info' failed"
  local reason
  reason="$(timeout 30 "$PY" -c 'import implicitreg as ir; print(ir.backends()["cuda"]["reason"] or "")')" \
    || fail 3 "could not ask implicitreg for its backends"
  [[ -z "$reason" ]] || fail 3 "implicitreg's cuda backend is not usable: $reason"
  echo "cuda backend available"

  # compute-sanitizer (step 6) runs beside the tests with --quick: neither is timed
  local sanitize="skipped (no compute-sanitizer)" sanitizer="" san_result san_log san_pid=""
  san_result="$(mktemp)"; san_log="$(mktemp)"
  if sanitizer="$(find_tool compute-sanitizer)"; then
    if ((QUICK)); then
      echo "(compute-sanitizer runs beside the tests; its output follows theirs)"
      run_sanitizer "$sanitizer" "$san_result" >"$san_log" 2>&1 &
      san_pid=$!
    fi
  fi

  local tests="skipped (pytest or hypothesis not importable)" rc s
  s="$(limit tests)"
  local -a pytest_args=(-m gpu -q -p no:cacheprovider --junitxml "$out/gpu_check_tests.xml")
  if ((QUICK)) && "$PY" -c "import xdist" 2>/dev/null; then
    # pytest-benchmark warns (an error under this suite's filterwarnings) beside xdist
    pytest_args+=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))" -p no:benchmark)
  fi
  say "5/8 gpu tests: $PY -m pytest ${pytest_args[*]} tests (limit ${s}s)"
  if ((s == 0)); then
    tests="SKIPPED (deadline)"
  elif "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
    # two OpenMP threads per test process: the cpu side of each test is small
    timed rc "$s" env OMP_NUM_THREADS=2 "$PY" -m pytest "${pytest_args[@]}" tests
    tests="$(outcome "$rc" "$s")"
  else
    echo "tests skipped: $PY cannot import pytest and hypothesis (the suite needs both)"
  fi
  record tests "$tests"

  if [[ -n "$sanitizer" ]]; then
    if [[ -n "$san_pid" ]]; then
      wait "$san_pid" || true
      cat "$san_log"
    else
      run_sanitizer "$sanitizer" "$san_result"
    fi
    sanitize="$(cat "$san_result")"
  fi
  rm -f "$san_result" "$san_log"
  record sanitizer "$sanitize"

  local bench targets="" brc=0
  s="$(limit bench)"
  local budget=$(( s - 30 < LIMIT[bench_budget] ? s - 30 : LIMIT[bench_budget] ))
  local -a bench_args=(--json "$out/gpu_check.json" --budget "$budget")
  ((QUICK)) && bench_args+=(--quick)
  say "7/8 benchmark: $PY benchmarks/bench_gpu.py ${bench_args[*]} (limit ${s}s)"
  if ((s == 0)); then
    bench="SKIPPED (deadline)"; brc=1
  else
    timed brc "$s" env PYTHONUNBUFFERED=1 "$PY" benchmarks/bench_gpu.py "${bench_args[@]}"
    case "$brc" in
      0) bench="checks passed" ;;
      *) bench="$(outcome "$brc" "$s")" ;;
    esac
  fi
  if [[ -f "$out/gpu_check.json" ]]; then
    targets="$("$PY" - "$out/gpu_check.json" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
if r.get("partial"):
    print(f"partial: {len(r['dmf'])} DMF, {len(r['cp'])} CP, {len(r['svdvals'])} svdvals rows")
    sys.exit()
t = r.get("targets", [])
met = sum(x["met"] is True for x in t)
missed = [x.get("name", x["target"]) for x in t if x["met"] is False]
nopeer = sum(x["met"] is None for x in t)
cp = [x["name"].removeprefix("cp_step ").removesuffix(" vs torch") + " "
      + ("-" if x["value"] is None else f"{x['value']:.1f}x")
      for x in t if x["name"].startswith("cp_step")]
print(f"targets met {met}/{len(t)}" + (f", {nopeer} without a peer" if nopeer else "")
      + (" (missed: " + ", ".join(missed) + ")" if missed else "")
      + ("; cp_step / torch: " + ", ".join(cp) if cp else ""))
EOF
)"
  fi
  record bench "$bench${targets:+; $targets}"

  local reproduce rrc=0
  s="$(limit reproduce)"
  local gpu_timeout=$(( s - 20 < LIMIT[gpu_timeout] ? s - 20 : LIMIT[gpu_timeout] ))
  say "8/8 reproduce paper-2x2, 4096 seeds on the GPU, 32 on the CPU: $PY" \
    "benchmarks/bench_reproduce.py --gpu --gpu-timeout $gpu_timeout (limit ${s}s)"
  if ((s == 0)); then
    reproduce="SKIPPED (deadline)"; rrc=1
  else
    timed rrc "$s" env PYTHONUNBUFFERED=1 "$PY" benchmarks/bench_reproduce.py --gpu \
      --gpu-timeout "$gpu_timeout" --json "$out/gpu_check_reproduce.json"
    reproduce="$(outcome "$rrc" "$s")"
  fi
  if [[ -f "$out/gpu_check_reproduce.json" ]]; then
    reproduce="$("$PY" - "$out/gpu_check_reproduce.json" 2>/dev/null <<'EOF' || echo "$reproduce"
import json, sys
r = json.load(open(sys.argv[1]))["gpu_reproduce"]
def run(x):
    if "seconds" in x:
        return f"{x['seconds']:.1f} s, {x['problem_steps_per_s']:.3g} problem-steps/s"
    if "timed_out_after_s" in x:
        return f"stopped after {x['timed_out_after_s']:.0f} s"
    return "failed"
g, c = r["runs"]["gpu"], r["runs"]["cpu"]
met = {True: "met", False: "MISSED", None: "not judged"}[r["met"]]
print(f"gpu {g['seeds']} seeds {run(g)}; cpu {c['seeds']} seeds {run(c)}"
      + ("" if r["rate_ratio"] is None else f"; gpu/cpu {r['rate_ratio']:.3g}x the rate")
      + f"; target under {r['target_s']:.0f} s {met}")
EOF
)"
    [[ "$rrc" == 0 ]] || reproduce="FAILED (exit $rrc): $reproduce"
  fi
  record reproduce "$reproduce"

  local profile="not asked (--profile)"
  if ((PROFILE)); then
    local ncu
    s="$(limit profile)"
    say "profile: ncu on benchmarks/gpu_profile.py > $out/gpu_check_ncu.txt (limit ${s}s)"
    if ((s == 0)); then
      profile="SKIPPED (deadline)"
    elif ncu="$(find_tool ncu)"; then
      # the clocks as they are (METHOD: leave them alone); one launch of each kernel
      timed rc "$s" "$ncu" --clock-control none --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
        --section WarpStateStats -k 'regex:dmf_step|cp_step_kernel|svd' \
        "$PY" benchmarks/gpu_profile.py >"$out/gpu_check_ncu.txt" 2>&1
      profile="$(outcome "$rc" "$s") (in $out/gpu_check_ncu.txt)"
      grep -E '^  [a-z_].*\)x\(|^ +(Duration|Memory Throughput|Compute \(SM\) Throughput|Registers Per Thread|Theoretical Occupancy|Achieved Occupancy) ' \
        "$out/gpu_check_ncu.txt" | head -n 100 || true
    else
      profile="skipped (no ncu)"
    fi
    record profile "$profile"
  fi

  local status=0
  [[ "$tests" == passed || "$tests" == skipped* ]] || status=1
  [[ "$sanitize" == clean || "$sanitize" == skipped* ]] || status=1
  [[ "$brc" == 0 && "$rrc" == 0 ]] || status=1
  echo
  echo "gpu_check: SUMMARY: $( ((status)) && echo FAILED || echo ok ) in ${SECONDS}s;" \
       "gpu: $(head -n 1 <<<"$gpus"); tests: $tests; compute-sanitizer: $sanitize;" \
       "benchmark: $bench${targets:+; $targets}; reproduce paper-2x2: $reproduce;" \
       "profile: $profile"
  return "$status"
}

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  main 2>&1 | tee "$OUT/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi
main
