"""Sphinx configuration for astroquery_casda_ext."""
import astroquery_casda_ext

project = "astroquery_casda_ext"
author = "astroquery_casda_ext developers"
copyright = "2026, " + author
version = release = astroquery_casda_ext.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_automodapi.automodapi",
]
numpydoc_show_class_members = False
automodapi_toctreedirnm = "api"
automodsumm_inherited_members = False
autodoc_typehints = "none"
nitpicky = False
exclude_patterns = ["_build", "conftest.py"]
html_theme = "alabaster"
# No network in CI: intersphinx inventories are not fetched.
intersphinx_mapping = {}
suppress_warnings = ["ref.citation"]
