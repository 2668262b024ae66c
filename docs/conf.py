"""Sphinx configuration of the implicitreg documentation.

    sphinx-build -W --keep-going -b html docs build/docs

autodoc documents the implicitreg that Python imports here: the installed package (as CI
builds it), or a source tree whose compiled modules are built in place, with PYTHONPATH=python.
The gallery runs each named experiment's quick variant while the pages are built (about a
minute on 2 cores), so the figures are those of this version of the package.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This site's own Sphinx extension (the experiments' settings and the gallery).
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

try:
    import implicitreg
except ImportError as exc:  # said here, not as one autodoc warning per page
    raise ImportError(
        "the documentation needs implicitreg importable: install it (pip install '.[docs]') "
        "or, in a source tree with its compiled modules built in place, set PYTHONPATH=python"
    ) from exc

project = "implicitreg"
release = version = implicitreg.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinxarg.ext",
    "experiments",
]

# The docstrings are prose that quotes code in single backticks: render those as code.
default_role = "code"
# Every cross-reference must resolve: a name missing from the reference is an error.
nitpicky = True

# Members in the order the source gives them (a model's init, then step and fit, ...).
autodoc_member_order = "bysource"
# Signatures with names and defaults only: the docstrings say what each argument takes, and
# the annotations (NumPy's array-like unions spelled out) would bury them. The package ships
# its annotations (py.typed) for type checkers and editors.
autodoc_typehints = "none"
# Defaults as the source writes them (xp=np, not the repr of the numpy module and its path).
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_title = f"implicitreg {release}"
html_theme_options = {"description": "Many small factorizations trained at once"}
