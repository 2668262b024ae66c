"""Every Python block of README.md runs as written, in order, in one namespace, so the README
cannot drift from the package (the GPU block runs only where the cuda backend is usable)."""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path

import pytest

import implicitreg as ir
from conftest import needs_source_tree

README = Path(__file__).resolve().parent.parent / "README.md"
DOCS = README.parent / "docs"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


@needs_source_tree
def test_every_readme_python_block_runs_in_seconds(tmp_path, monkeypatch):
    pytest.importorskip("pandas", reason="the README's tables need pandas (extra 'pandas')")
    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, block in enumerate(blocks):
        if "cupy" in block and ir.backends()["cuda"]["reason"] is not None:
            continue
        t0 = time.perf_counter()
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        assert time.perf_counter() - t0 < 60, f"block {i + 1} is not an example of seconds"
    assert not (tmp_path / "run.ckpt.npz").exists()  # a completed fit removes its checkpoint
    assert (tmp_path / "run.npz").stat().st_size < 4 * 2**20


@needs_source_tree
def test_the_experiment_table_says_what_quick_runs():
    """Each named experiment's row: its default seeds, and --quick's seeds first."""
    from implicitreg.experiments import EXPERIMENTS

    rows = {
        m.group(1): [c.strip() for c in m.group(2).split(" | ")]
        for m in re.finditer(r"^\| `([a-z0-9-]+)` \| (.*) \|$", README.read_text(), re.M)
    }
    for name, exp in EXPERIMENTS.items():
        cells = rows[name]
        _, _, seeds = exp.spec()
        assert cells[1] == str(seeds), name
        assert cells[-1].startswith(f"{exp.quick.get('seeds', seeds)} seeds"), name


def test_a_report_states_the_dtype(tmp_path):
    from implicitreg.experiments import get, report_text, reproduce

    res, rows = reproduce(
        "paper-2x2",
        seeds=2,
        quick=True,
        progress=False,
        plot=False,
        out=tmp_path / "rep",
        dtype="float32",
    )
    head = report_text(get("paper-2x2"), res, rows).splitlines()[1]
    assert head == "2 seeds per config, backend cpu, float32, quick variant"


# Files of the project's design notes, which a user of the package does not have.
_UNSHIPPED = ("PAPER.md", "DESIGN.md", "HOUSE_STYLE.md", "../shared")


def _docs_sources() -> list[Path]:
    """The documentation's sources: its pages, its conf.py and its extensions."""
    return [p for p in sorted(DOCS.rglob("*")) if p.suffix in (".rst", ".md", ".py")]


def test_user_facing_text_cites_no_file_the_user_lacks():
    """The package (docstrings, CLI help, reports, error messages, stubs), the README and the
    documentation (where the source tree is here)."""
    package = Path(ir.__file__).parent
    files = [p for p in sorted(package.rglob("*.py*")) if p.suffix in (".py", ".pyi")]
    texts = {p: p.read_text() for p in files}
    if README.exists():
        texts[README] = README.read_text()
    if DOCS.is_dir():
        docs = _docs_sources()
        assert sum(p.suffix == ".rst" for p in docs) >= 7 and DOCS / "conf.py" in docs
        texts.update({p: p.read_text() for p in docs})
    assert len(texts) > 20
    cited = [
        f"{path}:{n}: {name}"
        for path, text in texts.items()
        for n, line in enumerate(text.splitlines(), 1)
        for name in _UNSHIPPED
        if name in line
    ]
    assert not cited, "\n".join(cited)


# The documentation's pages, in the order of its table of contents.
PAGES = ("getting-started", "science", "api", "cli", "performance", "gpu", "gallery")


@needs_source_tree
def test_the_docs_have_their_seven_pages():
    toctree = re.search(
        r"^\.\. toctree::\n((?:   .*\n|\n)*)", (DOCS / "index.rst").read_text(), re.M
    )
    assert toctree, "docs/index.rst has no toctree"
    entries = [e.strip() for e in toctree.group(1).splitlines() if e.strip()[:1] not in ("", ":")]
    assert entries == list(PAGES)
    for page in PAGES:
        title = (DOCS / f"{page}.rst").read_text().splitlines()[:2]
        assert len(title) == 2 and set(title[1]) == {"="}, f"{page}.rst starts with no title"


@needs_source_tree
def test_the_docs_list_every_public_name_and_quote_the_readme():
    """The API page names all of implicitreg.__all__; the getting-started page quotes the
    README's two commands word for word."""
    api = (DOCS / "api.rst").read_text()
    assert [n for n in ir.__all__ if not re.search(rf"\b{n}\b", api)] == []
    fresh = README.read_text().split("## On a fresh machine")[1].split("\n## ")[0]
    commands = re.findall(r"^```bash\n(.*?)^```", fresh, re.S | re.M)
    assert len(commands) == 2
    page = (DOCS / "getting-started.rst").read_text()
    for command in commands:
        assert textwrap.indent(command, "   ") in page, command
