"""Sphinx configuration of the skbilrp documentation (builds offline, warnings as errors)."""

from __future__ import annotations

import os

import skbilrp

project = "skbilrp"
author = "skbilrp developers"
copyright = "skbilrp developers"
release = skbilrp.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",  # faithfulness.md is Markdown
    "sphinx_gallery.gen_gallery",
]
# no intersphinx: the build machines have no network

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
templates_path = ["_templates"]

# autosummary writes one page per object into gen_modules/ (ignored by git)
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": True}
autodoc_typehints = "none"  # numpydoc's parameter sections already give the types
# class pages list their members through autodoc; numpydoc's own member tables would
# duplicate them and warn about attributes without docstrings
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

html_theme = "alabaster"
html_title = f"skbilrp {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Verifiable deep-feature kernels for scikit-learn, explained with BiLRP.",
    "fixed_sidebar": True,
}

# Examples: every plot_*.py runs during the build; a failing example fails the build.
sphinx_gallery_conf = {
    "examples_dirs": os.path.join("..", "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "write_computation_times": False,
    "matplotlib_animations": False,
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    # "Examples using ..." at the end of every API page
    "backreferences_dir": os.path.join("gen_modules", "backreferences"),
    "doc_module": ("skbilrp",),
    "reference_url": {"skbilrp": None},
}
