"""The command line: `implicitreg info | run | list | reproduce | plot` (`bench`:
test_bench.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import implicitreg as ir
from implicitreg.cli import main
from implicitreg.experiments import EXPERIMENTS
from implicitreg.sweep import load_sweep


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["build"]["version"] == ir.__version__
    assert set(out["backends"]) == {"numpy", "cpu", "cuda"}


def test_module_entry_point_runs():
    r = subprocess.run(
        [sys.executable, "-m", "implicitreg", "info"], capture_output=True, text=True, check=True
    )
    assert "backends:" in r.stdout and "cpu" in r.stdout


def test_run_prints_w11_at_each_threshold_and_saves(tmp_path, capsys):
    code = main(
        [
            "run",
            "--depths",
            "2",
            "3",
            "--seeds",
            "4",
            "--lrs",
            "3e-3",
            "6e-3",
            "--scales",
            "1e-3",
            "--max-steps",
            "400000",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for thr in ("loss < 0.1", "loss < 0.01", "loss < 0.001", "loss < 0.0001"):
        assert thr in out
    assert "depth 2: 8/8 converged" in out
    res = load_sweep(tmp_path)
    idx = res.rows(depth=3, lr=6e-3)
    assert idx.size == 4 and res.meta["name"] == "run"
    # the printed medians are those of the saved table, read at the exact crossings
    w = np.abs(res.columns["entry:0,0@1e-2"][idx])
    assert f"{np.median(w):8.3g}" in out
    assert (res.columns["loss@1e-2"][idx] < 1e-2).all()


def test_list_names_every_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert name in out


def test_reproduce_quick_writes_report_figures_and_resumes(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="figures need matplotlib (extra 'plot')")
    out = tmp_path / "res"
    args = ["reproduce", "family-dxd", "--quick", "--seeds", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ours: median [IQR]" in printed and "d 5, depth 3, balanced" in printed
    assert (out / "report.txt").exists() and (out / "figures" / "family-dxd.png").exists()
    assert main(args) == 2  # the directory holds results: not overwritten without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # every batch is done: read back, same report
    again = capsys.readouterr().out
    assert again.split("\n")[:-4] == printed.split("\n")[:-4]  # all but the timings
    (out / "figures" / "family-dxd.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "figures" / "family-dxd.png").exists()


def test_reproduce_unknown_name_lists_the_choices(capsys):
    assert main(["reproduce", "paper-3x3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "paper-3x3" in err and "paper-2x2" in err and "random-completion" in err


def test_run_bad_argument_is_a_clear_error(capsys):
    assert main(["run", "--depths", "0", "--seeds", "2", "--quiet"]) == 2
    assert "depth" in capsys.readouterr().err
    assert main(["run", "--lrs", "-1", "--seeds", "2", "--quiet"]) == 2
    assert "lr" in capsys.readouterr().err


def test_a_refused_reproduce_leaves_the_directory_to_the_corrected_one(tmp_path, capsys):
    out = tmp_path / "rep"
    args = [
        "reproduce",
        "paper-2x2",
        "--quick",
        "--seeds",
        "2",
        "--no-plot",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args + ["--checkpoint-every", "-1"]) == 2
    assert "checkpoint_every: expected seconds >= 0, got -1.0" in capsys.readouterr().err
    assert not out.exists()
    assert main(args) == 0


def _one_error_line(capsys, *needles) -> None:
    err = capsys.readouterr().err
    assert err.startswith("implicitreg: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and all(n in err for n in needles), err


def test_plot_fails_like_a_tool(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    _one_error_line(capsys, "is not a directory")
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--depths",
                "2",
                "--seeds",
                "2",
                "--max-steps",
                "50",
                "--quiet",
                "--out",
                str(run_dir),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["plot", str(run_dir)]) == 2
    _one_error_line(capsys, "`implicitreg run`", "not of a named experiment")
    (run_dir / "results.npz").write_text("not an archive")
    assert main(["plot", str(run_dir)]) == 2
    _one_error_line(capsys, "results.npz is not")


def test_reproduce_ctrl_c_says_how_to_continue(tmp_path, capsys, monkeypatch):
    import implicitreg.experiments as experiments

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "reproduce", interrupted)
    out = tmp_path / "rep"
    assert (
        main(["reproduce", "paper-2x2", "--quick", "--quiet", "--no-plot", "--out", str(out)])
        == 130
    )
    err = capsys.readouterr().err.strip()
    assert err == (
        f"implicitreg: interrupted; finished batches are kept in {out}: rerun with "
        "--resume to continue"
    )


def test_reproduce_without_matplotlib_says_so_first_and_writes_no_figures(
    tmp_path, capsys, monkeypatch
):
    import implicitreg.cli as cli

    monkeypatch.setattr(cli, "_has_matplotlib", lambda: False)
    out = tmp_path / "rep"
    assert (
        main(["reproduce", "paper-2x2", "--quick", "--seeds", "2", "--quiet", "--out", str(out)])
        == 0
    )
    captured = capsys.readouterr()
    assert "matplotlib is not installed" in captured.err
    assert captured.out.rstrip().endswith(f"results and report in {out} (no figures)")
    assert (out / "report.txt").exists() and not (out / "figures").exists()


def test_no_plot_claims_no_figures(tmp_path, capsys):
    out = tmp_path / "rep"
    assert (
        main(
            [
                "reproduce",
                "paper-2x2",
                "--quick",
                "--seeds",
                "2",
                "--quiet",
                "--no-plot",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.rstrip().endswith("(no figures)")


def test_list_into_a_closed_pipe_is_quiet():
    p = subprocess.Popen(
        [sys.executable, "-m", "implicitreg", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    p.stdout.close()  # the reader is gone before the first line (as `| head -0` would)
    with p.stderr:
        err = p.stderr.read().decode()
    assert p.wait() == 0 and "Error" not in err and "Traceback" not in err, err


def test_run_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for default in (
        "(default: 2 3 4)",
        "(default: 3e-3)",
        "(default: 16)",
        "(default: 1e-4)",
        "(default: product)",
        "(default: cpu)",
    ):
        assert default in text
