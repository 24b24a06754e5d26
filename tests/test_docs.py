"""The documentation: every example is a gallery page, and the site builds offline.

The build runs every ``examples/plot_*.py`` (sphinx-gallery), so it doubles as the
test that the examples work; it takes a few minutes and is marked slow.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))
DOC_PACKAGES = ("sphinx", "numpydoc", "sphinx_gallery", "myst_parser")


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 6, [p.name for p in EXAMPLES]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_has_a_gallery_title(path: Path) -> None:
    """sphinx-gallery needs a module docstring whose first line is an RST title."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring, f"{path.name} has no module docstring"
    lines = docstring.strip().splitlines()
    assert len(lines) >= 3, f"{path.name}: a title line, an underline and a description are needed"
    title, underline = lines[0], lines[1]
    assert re.fullmatch(r"=+", underline), f"{path.name}: the title must be underlined with '='"
    assert len(underline) >= len(title), f"{path.name}: the title underline is shorter than the title"
    assert lines[2].strip() == "" and any(line.strip() for line in lines[3:]), (
        f"{path.name}: the title must be followed by a blank line and a description")


@pytest.mark.slow
def test_docs_build_with_warnings_as_errors(tmp_path: Path) -> None:
    missing = [name for name in DOC_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"building the docs needs {', '.join(missing)}: pip install -e '.[docs]'")
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
           "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    result = subprocess.run(cmd, cwd=DOCS, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"

    gallery = (out / "auto_examples" / "index.html").read_text(encoding="utf-8")
    for path in EXAMPLES:
        page = out / "auto_examples" / f"{path.stem}.html"
        assert page.is_file(), f"no gallery page for {path.name}"
        assert f"{path.stem}.html" in gallery, f"{path.name} is missing from the gallery index"
        figures = list((out / "_images").glob(f"sphx_glr_{path.stem}_*.png"))
        # thumbnails are named sphx_glr_<stem>_thumb.png; real figures are numbered
        assert any(re.search(r"_\d{3}\.png$", f.name) for f in figures), f"{path.name} drew no figure"
    api = (out / "api.html").read_text(encoding="utf-8")
    for name in ("skbilrp.Explainer", "skbilrp.bilrp", "skbilrp.kernel.DeepKernel"):
        assert name in api, f"{name} is missing from the API reference"


def test_operator_table_page_lists_exactly_the_table() -> None:
    """docs/operators.rst names every entry of skbilrp.engine.OPS and nothing else."""
    from skbilrp.engine import OPS

    text = (DOCS / "operators.rst").read_text(encoding="utf-8")
    table = text.split("Registering an operator")[0]
    listed = set(re.findall(r"``(aten\.[\w.]+|getitem)``", table))
    names = {"getitem" if "getitem" in str(op) else str(op) for op in OPS}
    assert listed == names, {"undocumented": sorted(names - listed), "not in OPS": sorted(listed - names)}
