#!/usr/bin/env bash
# The GPU check of implicitreg, in one go on a machine with an NVIDIA GPU (no package registry
# needed): build with CUDA, print the build, run the gpu-marked tests, run every kernel under
# compute-sanitizer (memcheck, racecheck), benchmark the DMF step, the CP step and svdvals
# against PyTorch, JAX and CuPy on the same device, and time `implicitreg reproduce paper-2x2`
# with 4096 seeds on the GPU against 32 on the CPU. Every step after the build has a timeout,
# so that the whole check takes under 8 minutes, the build excluded, whatever happens:
# nvidia-smi 2 x 10 s, implicitreg info 2 x 15 s, tests 90 s, sanitizer 2 x 40 s, benchmark
# 170 s (its own budget is 140 s), reproduce 70 s (the GPU run stopped after 50 s): 460 s.
#
#     bash benchmarks/gpu_check.sh [--no-build]
#
# Run from the repository root. --no-build skips step 2 (implicitreg already installed with
# CUDA). PYTHON picks the interpreter (default python3). When OUT is set, everything printed
# goes to $OUT/gpu_check.log too, the build's output to $OUT/gpu_check_build.log, the
# benchmark's report to $OUT/gpu_check.json and the reproduce timing's to
# $OUT/gpu_check_reproduce.json (else both in the current directory).
#
# Exit codes: 0 tests passed (or skipped: no pytest/hypothesis), the sanitizer found nothing,
# the benchmark's checks passed and both reproduce runs finished (targets may be missed: see
# the summary); 1 any of these failed or timed out; 2 no GPU
# (nvidia-smi missing or failing, or no device listed); 3 the build failed or implicitreg's
# cuda backend is not usable after it.
set -euo pipefail

PY="${PYTHON:-python3}"
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$arg' (see --help)" >&2; exit 64 ;;
  esac
done

say() { printf '\n=== gpu_check [%3ds] %s\n' "$SECONDS" "$*"; }

fail() {  # fail CODE MESSAGE: stop here, with a summary line
  local code="$1"; shift
  echo "gpu_check: FAILED: $*" >&2
  echo "gpu_check: SUMMARY: failed after ${SECONDS}s (exit $code): $*"
  exit "$code"
}

main() {
  local out="${OUT:-.}"
  echo "gpu_check: implicitreg GPU check in $(pwd), $(date -u '+%Y-%m-%d %H:%M:%S UTC'), python: $PY"

  say "1/7 GPU visible? (nvidia-smi)"
  command -v nvidia-smi >/dev/null 2>&1 \
    || fail 2 "nvidia-smi not found: no NVIDIA driver on this machine, so no GPU to check"
  local gpus
  gpus="$(timeout 10 nvidia-smi -L 2>&1)" \
    || fail 2 "nvidia-smi failed (exit $?): ${gpus:-no output}"
  grep -q '^GPU [0-9]' <<<"$gpus" || fail 2 "nvidia-smi lists no GPU: ${gpus:-no output}"
  echo "$gpus"
  timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    || true

  if [[ "$BUILD" == 1 ]]; then
    say "2/7 build: IMPLICITREG_CUDA=ON $PY -m pip install --no-build-isolation --no-deps ."
    local build_log
    if [[ -n "${OUT:-}" ]]; then build_log="$OUT/gpu_check_build.log"; else
      build_log="$(mktemp -t gpu_check_build.XXXXXX.log)"; fi
    # --no-index and no version check: nothing is fetched, nothing waits on a network
    if ! IMPLICITREG_CUDA=ON PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$PY" -m pip install --no-index --no-build-isolation --no-deps . >"$build_log" 2>&1; then
      echo "--- last 80 lines of the build ($build_log) ---"
      tail -n 80 "$build_log"
      fail 3 "build with IMPLICITREG_CUDA=ON failed (whole output in $build_log)"
    fi
    tail -n 2 "$build_log"
    echo "build done (whole output in $build_log)"
  else
    say "2/7 build skipped (--no-build)"
  fi

  say "3/7 $PY -m implicitreg info"
  timeout 15 "$PY" -m implicitreg info || fail 3 "'$PY -m implicitreg info' failed"
  local reason
  reason="$(timeout 15 "$PY" -c 'import implicitreg as ir; print(ir.backends()["cuda"]["reason"] or "")')" \
    || fail 3 "could not ask implicitreg for its backends"
  [[ -z "$reason" ]] || fail 3 "implicitreg's cuda backend is not usable: $reason"
  echo "cuda backend available"

  say "4/7 gpu tests: timeout 90 $PY -m pytest -m gpu -q -p no:cacheprovider tests"
  local tests="skipped (pytest or hypothesis not importable)" rc=0
  if "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
    timeout 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests || rc=$?
    case "$rc" in
      0) tests="passed" ;;
      124) tests="TIMED OUT after 90 s" ;;
      *) tests="FAILED (pytest exit $rc)" ;;
    esac
  else
    echo "tests skipped: $PY cannot import pytest and hypothesis (the suite needs both)"
  fi

  say "5/7 compute-sanitizer memcheck and racecheck on a few small calls of every kernel"
  local sanitize="skipped (no compute-sanitizer)"
  if command -v compute-sanitizer >/dev/null 2>&1; then
    sanitize="clean"
    for tool in memcheck racecheck; do
      rc=0
      timeout 40 compute-sanitizer --tool "$tool" --error-exitcode 9 \
        "$PY" benchmarks/gpu_sanitize.py || rc=$?
      case "$rc" in
        0) ;;
        124) sanitize="$tool TIMED OUT after 40 s" ;;
        *) sanitize="$tool FAILED (exit $rc)" ;;
      esac
    done
  fi

  say "6/7 benchmark (DMF step, CP step, svdvals): timeout 170 $PY benchmarks/bench_gpu.py" \
    "--json $out/gpu_check.json"
  local bench targets="" brc=0
  rm -f "$out/gpu_check.json" "$out/gpu_check_reproduce.json"  # no figures of an earlier run
  PYTHONUNBUFFERED=1 timeout 170 "$PY" benchmarks/bench_gpu.py --json "$out/gpu_check.json" \
    || brc=$?
  case "$brc" in
    0) bench="checks passed" ;;
    124) bench="TIMED OUT after 170 s" ;;
    *) bench="FAILED (exit $brc)" ;;
  esac
  if [[ -f "$out/gpu_check.json" ]]; then
    targets="$("$PY" - "$out/gpu_check.json" <<'EOF' || true
import json, sys
t = json.load(open(sys.argv[1])).get("targets", [])
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

  say "7/7 reproduce paper-2x2, 4096 seeds on the GPU, 32 on the CPU: timeout 70 $PY" \
    "benchmarks/bench_reproduce.py --gpu --gpu-timeout 50"
  local reproduce rrc=0
  PYTHONUNBUFFERED=1 timeout 70 "$PY" benchmarks/bench_reproduce.py --gpu --gpu-timeout 50 \
    --json "$out/gpu_check_reproduce.json" || rrc=$?
  case "$rrc" in
    0) reproduce="ran" ;;
    124) reproduce="TIMED OUT after 70 s" ;;
    *) reproduce="FAILED (exit $rrc)" ;;
  esac
  if [[ -f "$out/gpu_check_reproduce.json" ]]; then
    reproduce="$("$PY" - "$out/gpu_check_reproduce.json" <<'EOF' || echo "$reproduce"
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

  local status=0
  [[ "$tests" == passed || "$tests" == skipped* ]] || status=1
  [[ "$sanitize" == clean || "$sanitize" == skipped* ]] || status=1
  [[ "$brc" == 0 && "$rrc" == 0 ]] || status=1
  echo
  echo "gpu_check: SUMMARY: $( ((status)) && echo FAILED || echo ok ) in ${SECONDS}s;" \
       "gpu: $(head -n 1 <<<"$gpus"); tests: $tests; compute-sanitizer: $sanitize;" \
       "benchmark: $bench${targets:+; $targets}; reproduce paper-2x2: $reproduce"
  return "$status"
}

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  main 2>&1 | tee "$OUT/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi
main
