"""Sphinx configuration of the physforecast documentation.

Build with ``make -C docs html`` (warnings are errors) or
``sphinx-build -W -b html docs docs/_build/html``. The gallery in ``docs/examples``
(``plot_*.py``) is executed on every build; ``make -C docs html-noplot`` skips it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import tempfile
import warnings
from pathlib import Path

# Gallery examples simulate small datasets; keep their cache out of the user's home.
os.environ.setdefault(
    "PHYSFORECAST_CACHE", str(Path(tempfile.gettempdir()) / "physforecast-docs-cache")
)

import torch
from docutils import nodes
from sphinx import addnodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

import physforecast

# The examples are tiny: one thread is the fastest and keeps the timings stable.
torch.set_num_threads(1)
logger = logging.getLogger(__name__)

# -- project ---------------------------------------------------------------------------
project = "physforecast"
author = "the physforecast developers"
copyright = "the physforecast developers"
release = physforecast.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# ``examples/`` is the gallery's source; sphinx-gallery renders it into ``auto_examples/``.
exclude_patterns = ["_build", "examples", "**.ipynb_checkpoints", "auto_examples/*.ipynb"]
templates_path: list[str] = []

# -- API reference ---------------------------------------------------------------------
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # types are in the numpydoc "Parameters" sections
autodoc_class_signature = "separated"
autoclass_content = "class"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False
# A code block that does not lex (e.g. JSON with "...") is shown unhighlighted, not an error.
suppress_warnings = ["misc.highlighting_failure"]
add_module_names = False
python_display_short_literal_types = True

# -- Markdown pages --------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- gallery ---------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("physforecast",),
    "reference_url": {"physforecast": None},
    "backreferences_dir": "gen_modules/backreferences",
    "capture_repr": ("_repr_html_", "__repr__"),
    "remove_config_comments": True,
    "min_reported_time": 1,
    "show_memory": False,
    "matplotlib_animations": False,
    "download_all_examples": False,
}

# -- HTML ------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"physforecast {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 7,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
}
html_sidebars = {"index": []}
html_show_sourcelink = True


# -- registry tables -------------------------------------------------------------------
def _summary(obj: object) -> str:
    """First paragraph of a docstring, on one line."""
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _xref(kind: str, target: str) -> nodes.Node:
    """A link to an object of the API reference, shown as its short name in code font."""
    ref = addnodes.pending_xref(
        "", refdomain="py", reftype=kind, reftarget=target, refexplicit=False
    )
    ref += nodes.literal(text=target.rsplit(".", 1)[-1] + ("()" if kind == "func" else ""))
    return ref


def _table(header: list[str], rows: list[list[object]], widths: list[int]) -> nodes.table:
    table = nodes.table(classes=["physforecast-registry"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)

    def row(cells: list[object]) -> nodes.row:
        out = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            para = nodes.paragraph()
            para += cell if isinstance(cell, nodes.Node) else nodes.Text(str(cell))
            entry += para
            out += entry
        return out

    head = nodes.thead()
    head += row(header)
    body = nodes.tbody()
    for cells in rows:
        body += row(cells)
    group += head
    group += body
    return table


def _backbone_rows() -> tuple[list[str], list[list[object]], list[int]]:
    from physforecast.backbone_table import backbone_table
    from physforecast.registry import BACKBONES

    def human(n: float | None) -> str:
        if n is None:
            return "n/a"
        for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if n >= scale:
                return f"{n / scale:.3g} {unit}"
        return f"{n:.0f}"

    rows = []
    for row in backbone_table():  # T_in = T_out = 10, one variable, a 64 x 64 grid
        cls = type(BACKBONES.create(row["name"], in_steps=10, out_steps=10, in_channels=1))
        rows.append(
            [
                nodes.literal(text=row["name"]),
                _xref("class", f"{cls.__module__}.{cls.__qualname__}"),
                row["paper"],
                row["source"],
                human(row["params"]),
                human(row["flops"]),
            ]
        )
    header = ["name", "class", "paper", "implementation", "parameters", "FLOPs / sample"]
    return header, rows, [8, 16, 40, 14, 10, 12]


def _dataset_rows() -> tuple[list[str], list[list[object]], list[int]]:
    from physforecast.registry import DATASETS

    rows = []
    for name in DATASETS.names():
        entry = DATASETS.entry(name)
        fn = entry.factory
        rows.append(
            [
                nodes.literal(text=name),
                entry.meta.get("kind", ""),
                _xref("func", f"{fn.__module__}.{fn.__qualname__}"),
                entry.meta.get("description", "") or _summary(fn),
            ]
        )
    return ["name", "kind", "function", "description"], rows, [14, 10, 20, 56]


def _metric_rows() -> tuple[list[str], list[list[object]], list[int]]:
    import functools

    from physforecast.registry import METRICS

    better = {True: "higher", False: "lower", None: "neither"}
    rows = []
    for name in METRICS.names():
        entry = METRICS.entry(name)
        fn, fixed = entry.factory, ""
        if isinstance(fn, functools.partial):  # a registered specialisation
            fixed = ", ".join(f"{k}={v!r}" for k, v in fn.keywords.items())
            fn = fn.func
        link = nodes.inline()
        link += _xref("func", f"{fn.__module__}.{fn.__qualname__}")
        if fixed:
            link += nodes.Text(f" with {fixed}")
        meta = entry.meta
        variants = ", ".join(f"{name}_{v}" for v in meta.get("variants", {}))
        rows.append(
            [
                nodes.literal(text=name),
                link,
                meta.get("kind", ""),
                better.get(meta.get("higher_is_better"), "?"),
                "own" if meta.get("reduces_samples") else "mean",
                _summary(fn) + (f" Rows: {variants}." if variants else ""),
            ]
        )
    header = ["name", "function", "kind", "better", "over samples", "definition"]
    return header, rows, [14, 16, 9, 7, 8, 46]


class RegistryTable(SphinxDirective):
    """``.. registry-table:: backbones|datasets|metrics``: a table built from the registry.

    The table is computed at build time, so a newly registered backbone, dataset or
    metric appears in the documentation without anyone editing a page.
    """

    required_arguments = 1
    builders = {"backbones": _backbone_rows, "datasets": _dataset_rows, "metrics": _metric_rows}

    def run(self) -> list[nodes.Node]:
        what = self.arguments[0]
        if what not in self.builders:
            raise self.error(
                f"registry-table: unknown {what!r}; choose from {sorted(self.builders)}"
            )
        header, rows, widths = self.builders[what]()
        return [_table(header, rows, widths)]


# -- links to re-exported names --------------------------------------------------------
def _canonical_name(target: str) -> str | None:
    """``physforecast.load`` -> ``physforecast.forecast.forecaster.load``: where the object is defined."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if not module or not qualname or inspect.ismodule(obj):
            return None
        name = f"{module}.{qualname}"
        return name if name != target else None
    return None


def _resolve_reexport(app, env, node, contnode):
    """Resolve ``physforecast.*`` references to re-exported names (``physforecast.load``,
    ``physforecast.metrics.score``) to where the API reference documents them.

    A ``physforecast.*`` reference that still does not resolve is a warning (so an error
    under ``-W``) on the guide and gallery pages; docstrings in the API reference are
    left lenient.
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("physforecast"):
        return None
    canonical = _canonical_name(target)
    if canonical is not None:
        domain = env.get_domain("py")
        resolved = domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
        )
        if resolved is not None:
            return resolved
    if not node["refdoc"].startswith("api/"):
        logger.warning("unresolved reference %r (not in the API reference)", target, location=node)
    return None


# -- benchmark reports -----------------------------------------------------------------
_BENCHMARK_MARKER = "<!-- benchmark pages: conf.py lists every docs/benchmarks_*.md here -->"


def _list_benchmark_pages(app, docname, source):
    """Fill the marker in ``benchmarks.md`` with a toctree of the ``benchmarks_*.md`` pages
    (a toctree glob would warn, so fail under ``-W``, while there are none)."""
    if docname != "benchmarks" or _BENCHMARK_MARKER not in source[0]:
        return
    pages = sorted(p.stem for p in Path(app.srcdir).glob("benchmarks_*.md"))
    listing = (
        "```{toctree}\n:maxdepth: 1\n\n" + "\n".join(pages) + "\n```\n"
        if pages
        else "No benchmark report is in the documentation yet.\n"
    )
    source[0] = source[0].replace(_BENCHMARK_MARKER, listing)


def _quiet_third_party_docstrings(app) -> None:
    """numpydoc parses third-party docstrings (neuraloperator's) while autodoc inspects
    imported names it then skips; their formatting is not ours to fix. (Installed once the
    extensions are loaded: an imported library puts its own UserWarning filter first.)"""
    warnings.filterwarnings("ignore", message=r"(?s).*site-packages", category=UserWarning)


def setup(app):  # noqa: D103
    app.connect("builder-inited", _quiet_third_party_docstrings)
    app.add_directive("registry-table", RegistryTable)
    app.connect("source-read", _list_benchmark_pages)
    # re-read benchmarks.md on every build, so a new report is listed by incremental builds too
    app.connect("env-get-outdated", lambda app, env, added, changed, removed: ["benchmarks"])
    app.connect("missing-reference", _resolve_reexport)
    return {"parallel_read_safe": True}
