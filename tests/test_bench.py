"""`implicitreg bench` (implicitreg/bench/) and the pytest-benchmark suite in benchmarks/.

The runs here are tiny (one case, samples of 10 ms, one repeat): they test the table, the
JSON and the judging of targets, not the machine."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import implicitreg as ir
from conftest import needs_source_tree
from implicitreg.bench import Peers, dmf_flops, fma_peak, measured_peak
from implicitreg.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["bench", "--quick", "--repeats", "1", "--sample-s", "0.01"]

# A peers.py without torch and with a "JAX" DMF step that does nothing: its check must fail.
STUB_PEERS = textwrap.dedent("""
    import numpy as np

    def load_torch():
        return None, "not installed"

    def load_jax():
        class Jax:
            __version__ = "stub"
        return Jax(), None

    class JaxDMF:
        name, granule = "jax", 1

        def __init__(self, targets, masks, start, dtype, device=None, jax=None):
            self.start = [np.array(W) for W in start]

        def reset(self):
            pass

        def run(self, steps, lr):
            pass

        def factors(self):
            return self.start
""")


def _bench(tmp_path, capsys, *args):
    out = tmp_path / "bench.json"
    code = main(TINY + list(args) + ["--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    return printed, json.loads(out.read_text())


def test_table_json_ratios_peak_and_missing_peers(tmp_path, capsys):
    printed, rep = _bench(
        tmp_path,
        capsys,
        "--only",
        "dmf_step-2x2-f64",
        "--peak-gflops",
        "100",
        "--peers",
        str(tmp_path / "nowhere"),
    )
    assert [c["id"] for c in rep["cases"]] == ["dmf_step-2x2-f64"]
    row = rep["cases"][0]
    cpu, numpy_ = row["sides"]["cpu"], row["sides"]["numpy"]
    assert cpu["rate"] > 0 and numpy_["rate"] > 0 and numpy_["match"]
    assert cpu["rate"] == pytest.approx(row["batch"] * cpu["units"] / cpu["median_s"])
    assert row["ratios"]["numpy"] == pytest.approx(cpu["rate"] / numpy_["rate"])
    assert row["flops_per_unit"] == dmf_flops(2, 3) == 132
    assert rep["peak"]["float64"] == 1e11 and rep["peak"]["float32"] == 2e11
    assert rep["peak"]["measured"]["float64"]["all_threads"] > 0  # measured all the same
    assert row["pct_peak"] == pytest.approx(100 * 132 * cpu["rate"] / 1e11)
    # no peers.py: both peer columns say so and the run goes on
    for p in ("torch", "jax"):
        assert "not found" in row["columns"][p]["skipped"]
    assert "not found" in printed and "pass --peers DIR" in printed
    peak, jax = row["targets"]
    assert peak["met"] == (row["pct_peak"] >= 50.0) and peak["value"] == row["pct_peak"]
    assert jax["met"] is None and "not found" in jax["why"]
    assert ("met" if peak["met"] else "MISSED") in printed and "dmf_step-2x2-f64" in printed
    assert rep["targets"] == row["targets"] and rep["errors"] == []


def test_uninstalled_and_mismatching_peers_are_flagged(tmp_path, capsys):
    (tmp_path / "peers.py").write_text(STUB_PEERS)
    printed, rep = _bench(tmp_path, capsys, "--only", "dmf_step-2x2-f64", "--peers", str(tmp_path))
    row = rep["cases"][0]
    assert row["columns"]["torch"]["skipped"] == "torch: not installed"
    assert "torch: not installed" in printed
    jax = row["sides"]["jax"]
    assert jax["rate"] > 0 and not jax["match"] and jax["check"] == 1.0
    assert "MISMATCH" in printed and "!" in printed
    target = row["targets"][1]
    assert target["met"] is None and target["why"] == "jax MISMATCH"


@needs_source_tree
def test_real_peers_match_the_cpu_backend(tmp_path):
    for name in ("torch", "jax"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")
    # in a child process: JAX's threads would make every later fork (Ray's workers) warn
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "implicitreg",
            *TINY,
            "--only",
            "svdvals-8x8-f64",
            "--peers",
            str(REPO / "benchmarks"),
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    row = json.loads(out.read_text())["cases"][0]
    for p in ("torch", "jax"):
        col = row["columns"][p]
        assert col["match"] and col["rate"] > 0
        assert row["ratios"][p] == pytest.approx(row["sides"]["cpu"]["rate"] / col["rate"])
    assert row["pct_peak"] is None  # Jacobi: no fixed flop count


@needs_source_tree
def test_peers_are_found_under_the_working_directory(monkeypatch):
    monkeypatch.chdir(REPO)
    assert Peers(None).path == REPO / "benchmarks" / "peers.py"


def test_fma_peak_states_its_formula():
    info = {"threads": 2, "simd_lanes_f64": 8}
    peak = fma_peak(info)
    if peak["float64"] is not None:  # a clock was found
        assert peak["float64"] == pytest.approx(2 * 8 * 2 * 2 * peak["clock_hz"])
        assert peak["float32"] == 2 * peak["float64"]
        assert "2 x 8 x 2 x 2" in peak["formula"]
    else:
        assert "--peak-gflops" in peak["text"]
    assert fma_peak(info, 150.0)["float64"] == 1.5e11


def test_the_measured_peak_is_the_reference_and_the_formula_its_cross_check():
    measured = {
        "threads": 2,
        "float64": {"all_threads": 9e10, "one_thread": 4.6e10},
        "float32": {"all_threads": 1.8e11, "one_thread": 9.1e10},
    }
    peak = fma_peak({"threads": 2, "simd_lanes_f64": 8}, None, measured)
    assert (peak["float64"], peak["float32"], peak["source"]) == (9e10, 1.8e11, "measured")
    assert "90 Gflop/s float64, 180 float32 (one thread: 46, 91)" in peak["text"]
    assert peak["formula"].startswith("formula: ")
    # a figure given by the user replaces the measurement, which stays in the report
    given = fma_peak({"threads": 2, "simd_lanes_f64": 8}, 150.0, measured)
    assert given["float64"] == 1.5e11 and given["measured"] is measured


def test_contention_runs_two_processes_and_reports_what_each_keeps(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["bench", "--contention", "--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rep["processes"] == 2 and len(rep["together"]) == 2
    for name in rep["alone"]:
        assert rep["alone"][name] > 0
        kept = [r[name] / rep["alone"][name] for r in rep["together"]]
        assert rep["kept"][name] == pytest.approx(kept)
        assert name in printed
    assert rep["met"] == all(k >= 0.4 for ks in rep["kept"].values() for k in ks)
    assert ("met" if rep["met"] else "MISSED") in printed


def test_fma_probe_measures_flops_per_second():
    """The probe's rate times its own duration is the work done: twice the rounds, twice the
    flops, whatever the machine's speed; float32 has twice the lanes of float64."""
    core = ir._backend._core
    elapsed, flops = {}, {}
    for rounds in (2_000_000, 4_000_000):
        core.fma_probe("float64", 1, rounds // 10)  # clock ramp
        t0 = time.perf_counter()
        rate = core.fma_probe("float64", 1, rounds)
        elapsed[rounds] = time.perf_counter() - t0
        flops[rounds] = rate * elapsed[rounds]
    assert flops[4_000_000] / flops[2_000_000] == pytest.approx(2.0, rel=0.35)
    m = measured_peak(core, 2, repeats=3, seconds=0.02)
    assert m["threads"] == 2
    for dtype in ("float64", "float32"):
        assert m[dtype]["one_thread"] > 1e8 and m[dtype]["all_threads"] > 1e8
    assert m["float32"]["one_thread"] > 1.3 * m["float64"]["one_thread"]


@pytest.mark.parametrize(
    "args, match",
    [
        (("int8", 1, 10), "dtype must be 'float32' or 'float64', got 'int8'"),
        (("float64", 0, 10), "threads must be >= 1, got 0"),
        (("float64", 1, 0), "rounds must be >= 1, got 0"),
    ],
)
def test_fma_probe_refuses_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        ir._backend._core.fma_probe(*args)


@pytest.mark.parametrize(
    "args, name",
    [
        (["--repeats", "0"], "--repeats"),
        (["--sample-s", "-1"], "--sample-s"),
        (["--peak-gflops", "nan"], "--peak-gflops"),
        (["--repeats", "two"], "--repeats"),
    ],
)
def test_bad_arguments_are_argparse_errors(capsys, args, name):
    with pytest.raises(SystemExit) as e:
        main(["bench"] + args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert name in err and "expected" in err


def test_unknown_case_names_the_argument(capsys):
    assert main(["bench", "--only", "dmf_step", "no_such_case"]) == 2
    err = capsys.readouterr().err
    assert "--only" in err and "no_such_case" in err and "svdvals-2x2-f64" in err


def test_unwritable_json_names_the_argument(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--only",
                "svdvals-2x2-f64",
                "--json",
                str(tmp_path / "no" / "dir" / "b.json"),
            ]
        )
        == 2
    )
    assert "--json" in capsys.readouterr().err


def test_the_package_imports_neither_torch_nor_jax():
    code = (
        "import sys, implicitreg, implicitreg.cli, implicitreg.bench; "
        "assert not {'torch', 'jax'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@needs_source_tree
def test_pytest_benchmark_suite_runs():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/test_suite.py",
            "--benchmark-disable",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed" in r.stdout and "skipped" not in r.stdout
