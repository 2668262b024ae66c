"""The harness shared by `implicitreg bench` and benchmarks/bench_gpu.py: pluggable timers,
sizing and timing driven by them, loading peers.py, and bench_gpu.py built on it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from conftest import needs_source_tree
from implicitreg.bench import cases, fma_peak, run_case, select
from implicitreg.bench.harness import (
    CudaEvents,
    Peers,
    Side,
    WallClock,
    median_time,
    time_alone,
    time_sides,
)

REPO = Path(__file__).resolve().parents[1]


class UnitClock:
    """A timer that reads no clock: a side made by side(cost) takes cost seconds per unit,
    and time(fn) is the cost of the units run inside fn()."""

    def __init__(self):
        self.elapsed, self.calls = 0.0, 0

    def side(self, cost: float, granule: int = 1) -> Side:
        def run(n):
            assert n % granule == 0, (n, granule)
            self.elapsed += cost * n

        return Side(run=run, granule=granule)

    def time(self, fn) -> float:
        self.calls += 1
        before = self.elapsed
        fn()
        return self.elapsed - before


def test_a_timer_object_drives_the_interleaved_timing():
    clock = UnitClock()
    sides = {"fast": clock.side(1e-3), "slow": clock.side(4e-3), "coarse": clock.side(1e-3, 7)}
    timed = time_sides(sides, batch=10, repeats=3, sample_s=0.5, timer=clock)
    fast, slow, coarse = timed["fast"], timed["slow"], timed["coarse"]
    # sized to the sample by the timer's seconds: 0.5 s is 500 units at 1 ms, 125 at 4 ms
    assert fast["units"] == 500 and slow["units"] == 125
    assert coarse["units"] % 7 == 0 and abs(coarse["units"] - 500) <= 7
    assert fast["times_s"] == pytest.approx([0.5] * 3) and fast["median_s"] == pytest.approx(0.5)
    assert fast["rate"] == pytest.approx(10 / 1e-3) and slow["rate"] == pytest.approx(10 / 4e-3)
    assert coarse["rate"] == pytest.approx(10 / 1e-3)
    # every sample went through the timer; 3 rounds of 3 sides after the sizing
    assert clock.calls > 9 and all(len(t["times_s"]) == 3 for t in timed.values())


def test_a_timer_object_drives_the_timing_of_one_side_and_median_time():
    clock = UnitClock()
    r = time_alone(
        clock.side(2e-3, granule=5), batch=4, repeats=5, sample_s=1.0, timer=clock, max_units=100
    )
    assert r["units"] == 100  # capped: 500 units would make the sample
    assert r["median_s"] == pytest.approx(0.2) and r["rate"] == pytest.approx(4 / 2e-3)
    side = clock.side(0.25)
    assert median_time(lambda: side.run(2), repeats=3, timer=clock) == pytest.approx(0.5)


def test_the_rates_of_a_bench_case_follow_the_timer(tmp_path):
    class OneSecond:
        def time(self, fn):
            fn()
            return 1.0

    case = select(["svdvals-2x2-f64"], cases())[0]
    peak = fma_peak({}, 100.0)
    row = run_case(case, Peers(tmp_path), 2, 1.0, peak, timer=OneSecond())
    # a first sample of one call takes "1 s", so every sample is one call of the batch
    for side in ("cpu", "numpy"):
        s = row["sides"][side]
        assert s["units"] == 1 and s["times_s"] == [1.0, 1.0] and s["rate"] == case.batch
    assert row["ratios"]["numpy"] == 1.0
    assert row["pct_peak"] == pytest.approx(100 * 30 * case.batch / 1e11)


def test_the_wall_clock_times_one_call():
    calls = []
    seconds = WallClock().time(lambda: (calls.append(1), time.sleep(0.05)))
    assert calls == [1] and 0.05 <= seconds < 5.0


def test_cuda_events_time_on_the_null_stream_and_convert_to_seconds():
    log = []

    class Event:
        def __init__(self):
            self.at = None

        def record(self, stream=None):
            log.append(("record", stream))
            self.at = len(log)

        def synchronize(self):
            log.append(("synchronize", self))

    def get_elapsed_time(start, end):
        assert ("synchronize", end) in log, "read before the end event completed"
        assert start.at < end.at
        return 250.0  # milliseconds

    null = object()
    cupy = types.SimpleNamespace(
        cuda=types.SimpleNamespace(
            Event=Event, Stream=types.SimpleNamespace(null=null), get_elapsed_time=get_elapsed_time
        )
    )
    timer = CudaEvents(cupy)
    assert timer.time(lambda: log.append(("fn", None))) == 0.25
    assert [k for k, _ in log] == ["record", "fn", "record", "synchronize"]
    assert log[0][1] is null and log[2][1] is null


STUB = textwrap.dedent("""
    def load_torch():
        return None, "not installed"

    def load_jax():
        raise ImportError("no jaxlib")
""")


def test_peers_load_from_a_given_directory(tmp_path):
    (tmp_path / "peers.py").write_text(STUB)
    peers = Peers(tmp_path)
    assert peers.path == tmp_path / "peers.py" and peers.missing is None
    assert peers.load("torch") == (None, "not installed")
    assert peers.lib("torch") is None and peers.reason("torch") == "torch: not installed"
    assert peers.reason("jax") == "jax: failed to import (ImportError: no jaxlib)"
    assert peers.versions() == {}


def test_peers_missing_or_broken_say_why(tmp_path):
    peers = Peers(tmp_path / "nowhere")
    assert peers.module is None and peers.lib("torch") is None
    want = f"peers: not found in {tmp_path / 'nowhere'}, pass --peers DIR"
    assert peers.missing == want and peers.reason("torch") == peers.reason("jax") == want
    (tmp_path / "peers.py").write_text("raise RuntimeError('half written')\n")
    broken = Peers(tmp_path)
    assert broken.module is None and broken.lib("jax") is None
    assert broken.reason("jax") == (
        f"peers: {tmp_path / 'peers.py'} failed to load (RuntimeError: half written)"
    )


def _bench_gpu():
    """benchmarks/bench_gpu.py as a module: importing it needs no GPU."""
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_source_tree
def test_bench_gpu_times_and_loads_peers_through_the_harness(monkeypatch):
    from implicitreg.bench import harness

    gpu = _bench_gpu()
    assert gpu.time_alone is harness.time_alone and gpu.rel_change_diff is harness.rel_change_diff
    cpu = gpu.cpu_device()
    assert isinstance(cpu.timer, harness.WallClock)
    # JAX hidden: its threads, once started here, would make every later fork (Ray's) warn
    monkeypatch.setitem(sys.modules, "jax", None)
    peers = gpu.Peers(cpu, compile_torch=False)
    assert Path(peers.module.__file__) == REPO / "benchmarks" / "peers.py"
    if peers.torch is None:
        assert peers.torch_reason.startswith("torch ")
    # on a GPU the sides are timed by CUDA events (CuPy stands in here: no device is touched)
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    dev = gpu.cuda_device()
    assert isinstance(dev.timer, harness.CudaEvents) and dev.timer._cuda is cupy.cuda


@needs_source_tree
def test_bench_gpu_runs_on_the_cpu_with_its_keys(tmp_path):
    out = tmp_path / "gpu.json"
    # in a child process: the JAX peer's threads would make every later fork (Ray's workers) warn
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_gpu.py"),
            "--device",
            "cpu",
            "--only",
            "svdvals",
            "--repeats",
            "1",
            "--target-s",
            "0.01",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    printed = run.stdout
    assert run.returncode == 0, printed + run.stderr
    assert "svdvals (matrices/s)" in printed and "best peer" in printed
    rep = json.loads(out.read_text())
    assert [r["case"] for r in rep["svdvals"]][:2] == ["2x2 B=1024 float32", "2x2 B=1024 float64"]
    own = rep["svdvals"][0]["sides"]["implicitreg"]
    assert set(own) == {
        "calls",
        "median_s",
        "times_s",
        "warmup_s",
        "batch",
        "rate",
        "check_rel_err",
        "match",
    }
    assert own["match"] and own["rate"] == pytest.approx(own["batch"] / own["median_s"])
    assert set(rep["machine"]) == {"python", "machine", "processor", "cpus"}
