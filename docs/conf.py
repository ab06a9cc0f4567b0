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
# an override without a docstring is not documented with its base class's text (requests'
# HTTPAdapter.send refers to names of requests' own docs)
autodoc_inherit_docstrings = False
# `single backquotes` are Python cross-references, and every one must resolve: with
# nitpicky on, ``sphinx -W`` fails on a broken reference instead of rendering plain text.
default_role = "py:obj"
nitpicky = True
exclude_patterns = ["_build", "conftest.py", "_intersphinx"]
html_theme = "alabaster"

# The build machines have no network: the inventories are files kept in the repository
# (docs/_intersphinx/<project>/objects.inv, written by make_inventories.py from the
# installed packages); nothing is fetched while building.
_INVENTORIES = {
    "python": "https://docs.python.org/3/",
    "numpy": "https://numpy.org/doc/stable/",
    "astropy": "https://docs.astropy.org/en/stable/",
    "astroquery": "https://astroquery.readthedocs.io/en/latest/",
    "pyvo": "https://pyvo.readthedocs.io/en/latest/",
    "requests": "https://requests.readthedocs.io/en/latest/",
    "urllib3": "https://urllib3.readthedocs.io/en/stable/",
}
intersphinx_mapping = {name: (url, f"_intersphinx/{name}/objects.inv") for name, url in _INVENTORIES.items()}
intersphinx_disabled_reftypes = []
intersphinx_timeout = 1


def _resolve_within_package(app, env, node, contnode):
    """Link a bare name (`JobFailedError` written in jobs.py) to the one object of this package
    with that name, as Sphinx's ``.name`` search would; several candidates or none stay an
    error, so nitpicky mode still reports every reference that cannot be resolved."""
    from sphinx.util.nodes import make_refnode
    if node.get("refdomain") != "py" or "." in node["reftarget"].lstrip("~."):
        return None
    domain = env.get_domain("py")
    name = node["reftarget"].lstrip("~.")
    matches = [full for full in domain.objects
               if full.startswith("astroquery_casda_ext.") and full.endswith("." + name)]
    if len({domain.objects[full].node_id for full in matches}) != 1:
        return None
    found = domain.objects[matches[0]]
    return make_refnode(app.builder, node["refdoc"], found.docname, found.node_id, contnode, matches[0])


def setup(app):
    app.connect("missing-reference", _resolve_within_package)
