"""The documentation: gallery scripts are well formed, every public module is in the API
reference, every page is reachable, and (slow) the whole site builds with warnings as errors.

The fast tests read files only. The slow one runs ``sphinx-build -W`` with the gallery, so a
broken example, docstring or cross-reference fails it; it needs the ``docs`` extra.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
# source folder -> the package it is installed as (pyproject's package-dir)
PACKAGES = {
    "physforecast": "physforecast",
    "backbones": "physforecast.backbones",
    "datasets": "physforecast.datasets",
}
GENERATED = ("_build", "auto_examples", "gen_modules", "examples")


def public_modules() -> list[str]:
    """Every public module and package of the installed package, from the source tree."""
    names = []
    for folder, package in PACKAGES.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            parts = list(rel.with_suffix("").parts)
            if any(p.startswith("_") and p != "__init__" for p in parts):
                continue
            # a module only counts if every folder on its way is a package
            folders = [base.joinpath(*rel.parts[:i]) for i in range(len(rel.parts))]
            if not all((f / "__init__.py").exists() for f in folders):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join([package, *parts]))
    return names


def documented_modules() -> set[str]:
    found = set()
    for page in (DOCS / "api").glob("*.rst"):
        found.update(re.findall(r"^\.\. automodule:: (\S+)", page.read_text(), flags=re.M))
    return found


def test_public_module_discovery_sees_the_package():
    names = public_modules()
    for expected in (
        "physforecast",
        "physforecast.metrics.pointwise",
        "physforecast.backbones.fno",
        "physforecast.datasets.ns2d",
    ):
        assert expected in names
    assert not any(part.startswith("_") for n in names for part in n.split("."))


def test_every_public_module_is_in_the_api_reference():
    missing = sorted(set(public_modules()) - documented_modules())
    assert not missing, (
        "public modules missing from the API reference; add a section with "
        "'.. automodule:: <name>' to the matching docs/api/*.rst page: " + ", ".join(missing)
    )


def test_api_reference_names_only_existing_modules():
    stale = sorted(documented_modules() - set(public_modules()))
    assert not stale, f"docs/api/*.rst documents modules that do not exist: {stale}"


def _docstring_and_cells(path: Path) -> tuple[str | None, int]:
    source = path.read_text()
    docstring = ast.get_docstring(ast.parse(source), clean=False)
    cells = len(re.findall(r"^# %%", source, flags=re.M))
    return docstring, cells


EXAMPLE_FILES = sorted(EXAMPLES.glob("plot_*.py"))


def test_the_gallery_has_the_promised_examples():
    names = " ".join(p.stem for p in EXAMPLE_FILES)
    for topic in ("ns2d", "scorecard", "accessor", "compare_backbones"):
        assert topic in names, f"no gallery example about {topic!r} in {EXAMPLES}"
    assert (EXAMPLES / "README.rst").exists() or (EXAMPLES / "GALLERY_HEADER.rst").exists()


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_gallery_example_is_well_formed(path):
    docstring, cells = _docstring_and_cells(path)
    assert docstring, f"{path.name}: needs a module docstring with an RST title"
    lines = docstring.strip("\n").splitlines()
    assert len(lines) >= 2, f"{path.name}: the docstring must start with a title and its underline"
    title, underline = lines[0].rstrip(), lines[1].rstrip()
    assert re.fullmatch(r"=+", underline), f"{path.name}: the title needs an '=' underline"
    assert len(underline) >= len(title), (
        f"{path.name}: the title underline is shorter than the title"
    )
    assert len(lines) > 3 and any(line.strip() for line in lines[2:]), (
        f"{path.name}: say what the example shows below the title"
    )
    assert cells >= 2, f"{path.name}: split the script into '# %%' cells"
    compile(path.read_text(), str(path), "exec")


def _toctree_entries() -> list[str]:
    """Every entry of every toctree in the hand-written pages (docnames, maybe globs)."""
    entries = []
    pages = [p for p in DOCS.rglob("*") if p.suffix in (".rst", ".md")]
    for page in pages:
        if any(part in GENERATED for part in page.relative_to(DOCS).parts):
            continue
        text = page.read_text()
        base = page.parent.relative_to(DOCS)
        blocks = re.findall(r"```\{toctree\}\n(.*?)```", text, flags=re.S)
        blocks += re.findall(r"^\.\. toctree::\n((?:[ \t]+.*\n|\n)+)", text, flags=re.M)
        for block in blocks:
            for line in block.splitlines():
                line = line.strip()
                if not line or line.startswith(":"):
                    continue
                target = re.sub(r"^.*<(.+)>$", r"\1", line)
                entries.append(str(base / target) if str(base) != "." else target)
    return entries


def test_every_page_is_in_a_toctree():
    from fnmatch import fnmatch

    entries = _toctree_entries()
    # benchmarks.md lists the benchmarks_*.md reports itself (see conf.py)
    entries.append("benchmarks_*")
    orphans = []
    for page in sorted(DOCS.rglob("*")):
        rel = page.relative_to(DOCS)
        if page.suffix not in (".rst", ".md") or any(p in GENERATED for p in rel.parts):
            continue
        name = str(rel.with_suffix(""))
        if name == "index" or page.read_text().lstrip().startswith(":orphan:"):
            continue
        if not any(fnmatch(name, entry) for entry in entries):
            orphans.append(str(rel))
    assert not orphans, f"pages in no toctree (add them to index.rst, methods.md...): {orphans}"


# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sphinx_build_with_the_gallery_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("sphinx_gallery")
    pytest.importorskip("numpydoc")
    pytest.importorskip("myst_parser")
    pytest.importorskip("pydata_sphinx_theme")
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="agg")
    env.setdefault("PHYSFORECAST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q"]
    # rerun every example, even one unchanged since a previous build in this checkout
    # (sphinx-gallery skips those by MD5), so library changes that break it are caught
    cmd += ["-D", "sphinx_gallery_conf.run_stale_examples=1"]
    cmd += ["-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, (
        f"sphinx-build failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    )
    for page in (
        "index",
        "getting_started",
        "metrics",
        "backbones",
        "api/index",
        "auto_examples/index",
    ):
        assert (out / f"{page}.html").exists(), page
    for example in EXAMPLE_FILES:  # each example ran and its page exists
        assert (out / "auto_examples" / f"{example.stem}.html").exists(), example.name
    backbones = (out / "backbones.html").read_text()
    assert "FNOBackbone" in backbones and "physforecast-registry" in backbones
