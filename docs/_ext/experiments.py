"""The named experiments in the docs, read from the package's own registry, so that the pages
show what `implicitreg reproduce` runs:

- ``.. experiment-settings:: NAME`` is the table of an experiment's settings, full and quick;
- ``.. experiment-gallery::`` runs every experiment's quick variant while the docs build
  (``implicitreg reproduce NAME --quick``, results under the build's doctree directory) and
  shows its figure, the time it took and its report.

Config value ``gallery_experiments``: the names to run (a list, or a comma-separated string
from ``-D``); None, the default, runs them all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

from implicitreg.experiments import EXPERIMENTS, get

logger = logging.getLogger(__name__)


def _value(v) -> str:
    """A setting as one short cell: long threshold lists by their count and range."""
    if isinstance(v, list | tuple):
        if len(v) > 12:
            return f"{len(v)} values, {v[0]:g} to {v[-1]:g}"
        return "(" + ", ".join(_value(x) for x in v) + ")" if v else "()"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _grid(grid) -> list[str]:
    """A grid (a dict of axes or a list of them): one line per block of axes."""
    blocks = grid if isinstance(grid, list) else [grid]
    return [", ".join(f"{k} {_value(v)}" for k, v in block.items()) for block in blocks]


def _cell(text: str) -> str:
    return "``" + text + "``" if text else ""


def _blocks(blocks: list[str]) -> str:
    """Lines as a bullet list of code, one table cell."""
    return "\n".join(f"- {_cell(b)}" for b in blocks)


def _text(s: str) -> str:
    """Plain text as reStructuredText: an experiment's title may hold |x| or *."""
    return "".join("\\" + c if c in "\\*`|_" else c for c in s)


class ExperimentSettings(SphinxDirective):
    """The settings of one named experiment: every base key, the grid and the seeds, with the
    quick variant's value where it differs."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        exp = get(self.arguments[0])
        base, grid, seeds = exp.spec()
        qbase, qgrid, qseeds = exp.spec(quick=True)
        rows = [("setting", "full run", "``--quick``")]
        for key in base:
            full, quick = _value(base[key]), _value(qbase[key])
            rows.append((key, _cell(full), "same" if quick == full else _cell(quick)))
        full, quick = _grid(grid), _grid(qgrid)
        rows.append(("grid", _blocks(full), "same" if quick == full else _blocks(quick)))
        rows.append(("seeds per config", str(seeds), str(qseeds)))
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 20 45 35", ""]
        for row in rows:
            lines.append(f"   * - {row[0]}")
            for cell in row[1:]:
                cell_lines = cell.splitlines()
                lines.append(f"     - {cell_lines[0]}")
                lines += [f"       {line}" for line in cell_lines[1:]]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, self.get_source_info()[0]), 0, container)
        return container.children


class ExperimentGallery(SphinxDirective):
    """Runs each experiment's quick variant and shows its figure and report."""

    def run(self) -> list[nodes.Node]:
        names = self.config.gallery_experiments
        if names is None:
            names = list(EXPERIMENTS)
        elif isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        root = Path(self.env.doctreedir) / "gallery"
        docdir = Path(self.env.doc2path(self.env.docname)).parent
        lines: list[str] = []
        for name in names:
            lines += self._one(get(name), root / name, docdir)
        container = nodes.container()
        nested_parse_with_titles(
            self.state, StringList(lines, self.get_source_info()[0]), container
        )
        return container.children

    def _one(self, exp, out: Path, docdir: Path) -> list[str]:
        shutil.rmtree(out, ignore_errors=True)  # reproduce refuses a directory with results
        cmd = ["implicitreg", "reproduce", exp.name, "--quick", "--quiet", "--out", str(out)]
        t0 = time.perf_counter()
        # The interpreter that builds the docs, so that the gallery shows the package autodoc
        # documents.
        done = subprocess.run(
            [sys.executable, "-m", *cmd], capture_output=True, text=True, check=False
        )
        took = time.perf_counter() - t0
        logger.info("gallery: %s --quick took %.1f s", exp.name, took)
        title = [exp.name, "-" * len(exp.name), "", _text(exp.title), ""]
        png = out / "figures" / f"{exp.name}.png"
        if done.returncode != 0 or not png.exists():
            logger.warning(
                "gallery: `%s` failed (exit code %d), no figure:\n%s",
                " ".join(cmd),
                done.returncode,
                done.stderr[-2000:],
                location=self.get_location(),
            )
            return title
        _, _, seeds = exp.spec(quick=True)
        figure = os.path.relpath(png, docdir).replace(os.sep, "/")
        report = (out / "report.txt").read_text().rstrip().splitlines()
        return [
            *title,
            f".. image:: {figure}",
            f"   :alt: {exp.title}",
            "",
            f"``implicitreg reproduce {exp.name} --quick``: {seeds} seeds per config, "
            f"{took:.1f} s on the machine that built these pages. Its report:",
            "",
            ".. code-block:: text",
            "",
            *(f"   {line}" for line in report),
            "",
        ]


def setup(app):
    app.add_config_value("gallery_experiments", None, "env")
    app.add_directive("experiment-settings", ExperimentSettings)
    app.add_directive("experiment-gallery", ExperimentGallery)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
