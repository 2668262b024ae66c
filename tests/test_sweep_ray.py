"""implicitreg.sweep(executor="ray"): one local Ray cluster for the whole module (2 CPUs),
results equal to the local executor's bit for bit, batches written as they arrive, a batch
whose worker is killed rerun, resume across executors, and the command line's --executor and
--address (a cluster started by `ray start --head`, as on a multi-host cluster)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import implicitreg as ir
from implicitreg.cli import main
from implicitreg.sweep import load_sweep, sweep

pytestmark = pytest.mark.ray

# CI installs Ray (extra "test") and sets this: there the tests must run, never skip.
if os.environ.get("IMPLICITREG_EXPECT_RAY", "") in ("", "0"):
    ray = pytest.importorskip("ray", reason="the Ray executor needs Ray (extra 'ray')")
else:
    import ray

FAST = {
    "problem": "paper_2x2",
    "depth": 2,
    "scale": 0.3,
    "scale_by": "factor",
    "lr": 0.05,
    "max_steps": 200,
    "log": "every:20",
    "thresholds": (0.5, 0.1),
    "metrics": ("loss", "entry:0,0", "det"),
}
CP = {
    "model": "cp",
    "problem": "random_cp_completion",
    "order": 3,
    "dim": 4,
    "target_rank": 1,
    "optimizer": "group_rmsprop",
    "lr": 1e-2,
    "tol": 1e-6,
    "patience": 1,
    "check_every": 20,
    "max_steps": 200,
    "log": 20,
    "metrics": ("loss", "recon_error"),
    "thresholds": (),
    "rank_restarts": 1,
    "baseline": True,
}


def _package_env() -> dict:
    """The environment of a child process (and of Ray's workers) that imports this very
    implicitreg, however it was installed."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(ir.__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local cluster of 2 CPUs for the module (its workers inherit this environment, so
    they import this very implicitreg)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _assert_same(a, b):
    assert list(a.columns) == list(b.columns)
    for k in a.columns:
        assert a.columns[k].dtype == b.columns[k].dtype, k
        np.testing.assert_array_equal(a.columns[k], b.columns[k], err_msg=k)
    assert len(a.trajectories) == len(b.trajectories)
    for ta, tb in zip(a.trajectories, b.trajectories, strict=True):
        np.testing.assert_array_equal(ta.steps, tb.steps)
        for name in ta.metrics:
            np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)
        np.testing.assert_array_equal(ta.status, tb.status)
        np.testing.assert_array_equal(ta.frozen_at, tb.frozen_at)
        if ta.crossings is not None:
            for k in ta.crossings:
                np.testing.assert_array_equal(ta.crossings[k], tb.crossings[k], err_msg=k)
    # the same configs (one side read back from JSON, whose lists are the other's tuples)
    assert json.loads(json.dumps(a.configs)) == json.loads(json.dumps(b.configs))


@pytest.mark.parametrize(
    "base,grid",
    [
        (FAST, {"depth": [2, 3, 4], "lr": [0.05, 0.02], "init_det": [None, "positive"]}),
        (
            {
                **FAST,
                "problem": "random_low_rank_completion",
                "m": 5,
                "n": 4,
                "target_rank": 1,
                "metrics": ("loss", "recon_error", "svals"),
                "tol": 1e-3,
            },
            {"depth": [1, 2], "n_obs": [10, 14]},
        ),
        (CP, {"n_obs": [20, 27], "dim": [3, 4]}),
    ],
    ids=["paper_2x2", "random_completion", "cp"],
)
def test_ray_equals_local_bit_for_bit(tmp_path, base, grid):
    local = sweep(base, grid, seeds=3, progress=False, out=tmp_path / "local")
    steps = []
    remote = sweep(base, grid, seeds=3, progress=steps.append, out=tmp_path / "ray", executor="ray")
    assert len(remote.trajectories) >= 2
    _assert_same(remote, local)
    _assert_same(load_sweep(tmp_path / "ray"), local)
    assert remote.meta["executor"] == "ray"
    assert sum(steps) == sum(base["max_steps"] for _ in remote.trajectories)
    assert sorted(os.listdir(tmp_path / "ray" / "batches")) == sorted(
        os.listdir(tmp_path / "local" / "batches")
    )


@pytest.mark.parametrize("cpus", [1, 2])
def test_ray_tasks_run_with_the_threads_of_the_cpus_they_reserve(cpus):
    @ray.remote(num_cpus=cpus)
    def threads() -> tuple[int, int]:
        from implicitreg import get_num_threads
        from implicitreg.sweep.run import use_reserved_cpus

        return use_reserved_cpus(ray), get_num_threads()

    assert ray.get(threads.remote()) == (cpus, cpus)


def test_batches_are_written_as_they_arrive(tmp_path):
    """A short batch that finishes first is on disk while a long one still runs."""
    out = tmp_path / "run"
    grid = [{"depth": 2, "max_steps": 2_000_000, "lr": 1e-4, "log": "every:200000"}, {"depth": 3}]
    seen = []

    def progress(n):
        seen.append(sorted(os.listdir(out / "batches")))

    sweep(FAST, grid, seeds=64, progress=progress, out=out, executor="ray")
    assert seen[0] == ["001.npz", "001.trajectory.npz"]  # the short batch, alone
    assert seen[-1] == ["000.npz", "000.trajectory.npz", "001.npz", "001.trajectory.npz"]


def _pids_running(needle: bytes) -> list[int]:
    """The processes (this one aside) whose command line contains needle."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if needle in fh.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def _kill_a_running_batch(killed: list, stop: threading.Event):
    """SIGKILL the first Ray worker seen running a sweep batch (its process title names the
    task), as a machine failure would."""
    while not stop.is_set() and not killed:
        for pid in _pids_running(b"ray::implicitreg_sweep_batch"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.01)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker through /proc")
def test_a_batch_whose_worker_is_killed_is_rerun(tmp_path):
    base = {**FAST, "max_steps": 100_000, "lr": 1e-4, "log": "every:10000"}
    grid = {"depth": [2, 3]}
    ref = sweep(base, grid, seeds=64, progress=False)
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_a_running_batch, args=(killed, stop))
    killer.start()
    try:
        res = sweep(
            base,
            grid,
            seeds=64,
            progress=False,
            out=tmp_path / "run",
            executor="ray",
            max_retries=2,
        )
    finally:
        stop.set()
        killer.join()
    assert killed, "no running batch was seen to kill"
    _assert_same(res, ref)


def test_a_worker_killed_with_no_retries_left_is_a_clear_error(tmp_path):
    base = {**FAST, "max_steps": 300_000, "lr": 1e-4, "log": "every:30000"}
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_a_running_batch, args=(killed, stop))
    killer.start()
    try:
        with pytest.raises(RuntimeError, match="batch 0 failed on Ray after 0 retries"):
            sweep(base, seeds=64, progress=False, executor="ray", max_retries=0)
    finally:
        stop.set()
        killer.join()
    assert killed


def test_resume_across_executors(tmp_path):
    """A directory half-filled by the local executor is finished by Ray, and vice versa."""
    grid = {"depth": [2, 3, 4]}
    ref = sweep(FAST, grid, seeds=3, progress=False, out=tmp_path / "ref")
    for first, then in (("local", "ray"), ("ray", "local")):
        out = tmp_path / f"{first}-{then}"
        sweep(FAST, grid, seeds=3, progress=False, out=out, executor=first)
        for s in ("npz", "trajectory.npz"):  # as if killed before batch 1 was written
            (out / "batches" / f"001.{s}").unlink()
        (out / "results.npz").unlink()
        res = sweep(FAST, grid, seeds=3, progress=False, out=out, resume=True, executor=then)
        _assert_same(res, ref)


def test_bad_executor_arguments(tmp_path):
    with pytest.raises(ValueError, match="address"):
        sweep(FAST, seeds=1, progress=False, address="127.0.0.1:6379")  # local executor
    with pytest.raises(TypeError, match="max_retries"):
        sweep(FAST, seeds=1, progress=False, executor="ray", max_retries=1.5)
    with pytest.raises(ValueError, match="max_retries"):
        sweep(FAST, seeds=1, progress=False, executor="ray", max_retries=-1)


def test_cli_reproduce_with_ray_equals_local(tmp_path, capsys):
    args = ["reproduce", "perturbed-2x2", "--quick", "--seeds", "2", "--quiet", "--no-plot"]
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    local = capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    remote = capsys.readouterr().out
    assert remote.split("\n")[:-4] == local.split("\n")[:-4]  # all but the timings
    _assert_same(load_sweep(tmp_path / "ray"), load_sweep(tmp_path / "local"))
    assert (tmp_path / "ray" / "report.txt").read_text().split("\n")[:-4] == (
        tmp_path / "local" / "report.txt"
    ).read_text().split("\n")[:-4]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_processes_of(temp_dir: str) -> None:
    """Stop the Ray processes of the cluster whose files are in temp_dir, and only those
    (`ray stop` would stop every cluster of this user, the module's one included)."""
    for pid in _pids_running(temp_dir.encode()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="stops the cluster through /proc")
def test_cli_run_on_a_cluster_started_by_ray_start(tmp_path):
    """What README's multi-host section does, on one machine: `ray start --head`, then
    `implicitreg run --executor ray --address HEAD:PORT` in another process."""
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray_cli is None:
        pytest.skip("no `ray` command beside this Python")
    port, env = _free_port(), _package_env()
    # a short path of its own: Ray's sockets live there, and a socket path has ~100 bytes
    temp_dir = tempfile.mkdtemp(prefix="ir-ray-")
    start = subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=1",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    args = ["run", "--depths", "2", "3", "--seeds", "4", "--max-steps", "2000", "--quiet"]
    try:
        assert start.returncode == 0, start.stderr
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "implicitreg",
                *args,
                "--out",
                str(tmp_path / "cluster"),
                "--executor",
                "ray",
                "--address",
                f"127.0.0.1:{port}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
    finally:
        _stop_processes_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    _assert_same(load_sweep(tmp_path / "cluster"), load_sweep(tmp_path / "local"))
    assert load_sweep(tmp_path / "cluster").meta["executor"] == "ray"


def test_cli_unreachable_address_is_a_quick_clear_error():
    """In a process of its own: this one is connected to the module's cluster already."""
    t0 = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "implicitreg",
            "run",
            "--depths",
            "2",
            "--seeds",
            "2",
            "--quiet",
            "--executor",
            "ray",
            "--address",
            f"127.0.0.1:{_free_port()}",
        ],
        env=_package_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and time.monotonic() - t0 < 60
    assert "no Ray cluster answers" in r.stderr
