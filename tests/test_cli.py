"""The command line: `implicitreg info` and `implicitreg run`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import implicitreg as ir
from implicitreg.cli import main


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["build"]["version"] == ir.__version__
    assert set(out["backends"]) == {"numpy", "cpu", "cuda"}


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "implicitreg", "info"], capture_output=True,
                       text=True, check=True)
    assert "backends:" in r.stdout and "cpu" in r.stdout


def test_run_prints_w11_at_each_threshold_and_saves(tmp_path, capsys):
    code = main(["run", "--depths", "2", "3", "--seeds", "4", "--lrs", "3e-3", "6e-3",
                 "--scales", "1e-3", "--max-steps", "400000", "--quiet", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    for thr in ("loss < 0.1", "loss < 0.01", "loss < 0.001", "loss < 0.0001"):
        assert thr in out
    assert "depth 2: 8/8 converged" in out
    t = ir.load(tmp_path / "depth3.npz")
    assert t.batch == 8 and t.meta["depth"] == 3
    # the printed medians are those of the saved trajectory
    fb = np.abs(t.first_below("loss", 1e-2)["entry:0,0"][:4])
    assert f"{np.median(fb):8.3g}" in out


def test_run_bad_argument_is_a_clear_error(capsys):
    assert main(["run", "--depths", "0", "--seeds", "2", "--quiet"]) == 2
    assert "depth" in capsys.readouterr().err
    assert main(["run", "--lrs", "-1", "--seeds", "2", "--quiet"]) == 2
    assert "lr" in capsys.readouterr().err
