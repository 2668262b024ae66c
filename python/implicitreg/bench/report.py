"""The report of `implicitreg bench`: the FMA peak, each case's row (rates, ratios, % peak,
targets judged), the table and its notes."""

from __future__ import annotations

import time
from pathlib import Path

from .harness import PEERS, WALL_CLOCK, Case, Peers, Side, note_lines, time_sides

FMA_UNITS = 2  # FMA pipes per core: 2 on every AVX2 / AVX-512 server core we run on


# ----------------------------------------------------------------------------- the peak


def _clock_hz() -> tuple[float | None, str]:
    """The core clock and where it was read: the cpufreq maximum, else /proc/cpuinfo."""
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return float(khz) * 1e3, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    try:
        mhz = [
            float(line.split(":")[1])
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("cpu MHz")
        ]
        if mhz:
            return max(mhz) * 1e6, "/proc/cpuinfo cpu MHz"
    except (OSError, ValueError, IndexError):
        pass
    return None, "unknown"


def measured_peak(core, threads: int, repeats: int = 5, seconds: float = 0.05) -> dict:
    """The FMA throughput (flop/s) the compiled probe measures on the kernels' SIMD vectors at
    the loaded level: float64 and float32, on `threads` threads and on one; each the best of
    `repeats` runs of about `seconds` (a first short run sizes them)."""
    out: dict = {"threads": threads, "runs": f"best of {repeats} runs of about {seconds:g} s"}
    for dtype in ("float64", "float32"):
        rates = {}
        for key, n in (("all_threads", threads), ("one_thread", 1)):
            calibrate = 100_000
            core.fma_probe(dtype, n, calibrate)  # starts the threads and the clock ramp
            t0 = time.perf_counter()
            core.fma_probe(dtype, n, calibrate)
            rounds = max(calibrate, int(calibrate * seconds / (time.perf_counter() - t0)))
            rates[key] = max(core.fma_probe(dtype, n, rounds) for _ in range(repeats))
        out[dtype] = rates
    return out


def fma_peak(info: dict, peak_gflops: float | None = None, measured: dict | None = None) -> dict:
    """The FMA peak (flop/s per dtype) that % peak divides by: the user's float64 figure
    (--peak-gflops; float32 twice), else the probe's measurement on all threads
    (`measured_peak`), else the formula threads x SIMD lanes x FMA units x 2 flops x clock.
    The formula is always given beside it, as a cross-check ("formula")."""
    cores, lanes = int(info.get("threads", 1)), int(info.get("simd_lanes_f64", 1))
    hz, where = _clock_hz() if info else (None, "unknown")
    out: dict = {"measured": measured}
    if hz is None:
        out["formula"] = "formula: unknown (no clock found)"
    else:
        f64 = cores * lanes * FMA_UNITS * 2 * hz
        out.update(cores=cores, simd_lanes_f64=lanes, fma_units=FMA_UNITS, clock_hz=hz)
        out["formula_float64"] = f64
        out["formula"] = (
            f"formula: cores x SIMD f64 lanes x FMA units x 2 flops x clock = {cores} x "
            f"{lanes} x {FMA_UNITS} x 2 x {hz / 1e9:.2f} GHz ({where}) = "
            f"{f64 / 1e9:.0f} Gflop/s float64, {2 * f64 / 1e9:.0f} float32 ({2 * lanes} lanes)"
        )
    if peak_gflops is not None:
        f64 = float(peak_gflops) * 1e9
        out.update({"float64": f64, "float32": 2 * f64, "source": "--peak-gflops"})
        out["text"] = f"peak: {peak_gflops:g} Gflop/s float64 (--peak-gflops); float32 twice that"
    elif measured is not None:
        m64, m32 = measured["float64"], measured["float32"]
        out.update(
            {"float64": m64["all_threads"], "float32": m32["all_threads"], "source": "measured"}
        )
        out["text"] = (
            f"peak: measured by the FMA probe on {measured['threads']} threads: "
            f"{m64['all_threads'] / 1e9:.0f} Gflop/s float64, "
            f"{m32['all_threads'] / 1e9:.0f} float32 (one thread: "
            f"{m64['one_thread'] / 1e9:.0f}, {m32['one_thread'] / 1e9:.0f})"
        )
    elif hz is not None:
        f64 = out["formula_float64"]
        out.update({"float64": f64, "float32": 2 * f64, "source": where})
        out["text"] = "peak: from the " + out["formula"]
    else:
        out.update({"float64": None, "float32": None, "source": "unknown"})
        out["text"] = "peak unknown (no clock found): pass --peak-gflops"
    return out


# ----------------------------------------------------------------------------- one case


def run_case(
    case: Case, peers: Peers, repeats: int, sample_s: float, peak: dict, timer=WALL_CLOCK
) -> dict:
    """The case's row: every side's rate (or why it has none), ratios, % peak, targets."""
    built = case.build(peers)
    ready = {k: v for k, v in built.items() if isinstance(v, Side)}
    timed = time_sides(ready, case.batch, repeats, sample_s, timer)
    sides = {}
    for name, v in built.items():
        if isinstance(v, Side):
            sides[name] = {**timed[name], "check": v.check, "match": v.match}
        else:
            sides[name] = {"skipped": v}
    row = {
        "id": case.id,
        "kernel": case.kernel,
        "title": case.title,
        "unit": case.unit,
        "batch": case.batch,
        "dtype": case.dtype,
        "flops_per_unit": case.flops,
        "sides": sides,
    }
    # a peer's column: its fastest variant that matched (else its fastest, flagged)
    columns = {"cpu": sides["cpu"], "numpy": sides["numpy"]}
    for p in case.peers:
        variants = {k: s for k, s in sides.items() if k == p or k.startswith(p + "-")}
        timed_v = {k: s for k, s in variants.items() if "rate" in s}
        good = {k: s for k, s in timed_v.items() if s["match"]} or timed_v
        if good:
            best = max(good, key=lambda k: good[k]["rate"])
            columns[p] = {**good[best], "variant": best}
        else:
            columns[p] = {"skipped": next(iter(variants.values()))["skipped"]}
    row["columns"] = columns
    cpu_rate = sides["cpu"]["rate"]
    row["ratios"] = {
        k: cpu_rate / c["rate"] for k, c in columns.items() if k != "cpu" and "rate" in c
    }
    pk = peak.get(case.dtype)
    row["pct_peak"] = (100.0 * case.flops * cpu_rate / pk) if case.flops and pk else None
    row["targets"] = [_judge(case, row, kind, thr) for kind, thr in case.targets]
    return row


def _judge(case: Case, row: dict, kind: str, threshold: float) -> dict:
    """met (True / False) or None with the reason there is nothing to judge."""
    why = None
    if kind == "rate":
        text = f">= {threshold:.0e} {case.unit}"
        value = row["sides"]["cpu"]["rate"]
    elif kind == "peak":
        text = f">= {threshold:.0f}% of the {case.dtype} FMA peak"
        value = row["pct_peak"]
        why = None if value is not None else "peak unknown: pass --peak-gflops"
    else:
        text = f">= {threshold:g}x {kind}"
        col = row["columns"][kind]
        value = row["ratios"].get(kind)
        if "skipped" in col:
            why = col["skipped"]
        elif not col["match"]:
            why, value = f"{kind} MISMATCH", None
    met = None if value is None else bool(value >= threshold)
    return {
        "case": case.id,
        "target": text,
        "kind": kind,
        "threshold": threshold,
        "value": value,
        "met": met,
        "why": why,
    }


# ----------------------------------------------------------------------------- report


def _rate(col: dict) -> str:
    if "rate" not in col:
        return _short(col["skipped"])
    return f"{col['rate']:.2e}" + ("!" if not col["match"] else "")


def _short(reason: str) -> str:
    """A reason cut to fit a column ("torch: not installed" -> "not installed")."""
    if reason.startswith("peers: not found"):
        return "not found"
    return reason.split(": ", 1)[-1][:13]


def _status(t: dict) -> str:
    if t["met"] is None:
        return f"n/a ({t['why']})"
    return "met" if t["met"] else "MISSED"


def _value(t: dict) -> str:
    v = t["value"]
    if v is None:
        return "-"
    return {"rate": f"{v:.3g}", "peak": f"{v:.1f}%"}.get(t["kind"], f"{v:.1f}x")


def table(report: dict) -> str:
    rows = report["cases"]
    w_id = max([len(r["id"]) for r in rows] + [4])
    w_title = max([len(r["title"]) for r in rows] + [7])
    head = (
        f"{'case':{w_id}s}  {'problem':{w_title}s} {'dtype':7s} {'unit':16s}"
        f"{'cpu':>10s} {'%peak':>6s}"
    )
    for k in ("numpy",) + PEERS:
        head += f" {k:>13s} {'cpu/' + k:>9s}"
    lines = [head + "  targets"]
    for r in rows:
        pct = "-" if r["pct_peak"] is None else f"{r['pct_peak']:.1f}"
        line = (
            f"{r['id']:{w_id}s}  {r['title']:{w_title}s} {r['dtype']:7s} {r['unit']:16s}"
            f"{_rate(r['columns']['cpu']):>10s} {pct:>6s}"
        )
        for k in ("numpy",) + PEERS:
            col = r["columns"].get(k, {"skipped": "n/a"})
            ratio = r["ratios"].get(k)
            line += f" {_rate(col):>13s} {'-' if ratio is None else f'{ratio:.1f}x':>9s}"
        marks = [f"{t['target']}: {_status(t).split(' ')[0]}" for t in r["targets"]]
        lines.append(line + ("  " + "; ".join(marks) if marks else ""))
    return "\n".join(lines)


def notes(report: dict) -> list[str]:
    """What the table's short cells stand for: skipped sides, mismatches, variants."""
    out: dict[str, list[str]] = {}
    for r in report["cases"]:
        for name, s in r["sides"].items():
            if "skipped" in s:
                out.setdefault(f"{name}: {s['skipped']}", []).append(r["id"])
            elif not s["match"]:
                out.setdefault(
                    f"{name}: MISMATCH with the cpu backend (marked !; nothing judged against it)",
                    [],
                ).append(r["id"])
    return note_lines(out, len(report["cases"]))


def print_report(report: dict) -> None:
    """Everything after the progress lines: the table, its legend and notes, the targets,
    the errors and the versions."""
    if report["cases"]:
        print("\n" + table(report))
    print(
        "\nrate: batch x steps (or calls) / median seconds; cpu/X: cpu rate / X rate; "
        "%peak: flops per unit (the documentation's Performance page) x rate / peak; torch: "
        "the faster of torch-closed and torch-autograd for dmf_step; ! = result differs from "
        "the cpu backend's"
    )
    for line in notes(report):
        print(f"  note: {line}")
    if report["targets"]:
        print("\ntargets")
        for t in report["targets"]:
            print(f"  {_status(t):8s} {t['case']}: {t['target']} (got {_value(t)})")
    for e in report["errors"]:
        print(f"ERROR: {e}")
    print(
        f"total {report['elapsed_s']:.0f} s; versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    )
