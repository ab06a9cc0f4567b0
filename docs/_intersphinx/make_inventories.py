"""Write the intersphinx inventories the docs build reads (``docs/_intersphinx/<project>/objects.inv``).

The build machines have no network, so Sphinx cannot fetch ``objects.inv`` from the
projects' sites, and the installed packages do not ship theirs.  This script builds a
subset of each project's inventory from the *installed* packages: every public name of
the modules our documentation refers to, at the address where that project's own
documentation puts it (the URL layouts below are those of the published docs).  Run it
again after upgrading a dependency::

    python docs/_intersphinx/make_inventories.py

The files are standard version-2 inventories (zlib-compressed), read back and checked
with ``sphinx.util.inventory`` before they are kept.
"""
import builtins
import importlib
import inspect
import io
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: project: (base URL, version, {module: URL pattern for its members}, module page pattern)
PROJECTS = {
    "python": ("https://docs.python.org/3/", "3", {
        m: "library/{module}.html#{name}" for m in (
            "os", "os.path", "pathlib", "concurrent.futures", "enum", "threading", "io", "json",
            "dataclasses", "urllib.parse", "getpass", "tempfile", "logging", "warnings", "functools",
            "collections", "datetime", "subprocess", "zlib", "hashlib", "socket", "typing")},
        "library/{module}.html#module-{module}"),
    "numpy": ("https://numpy.org/doc/stable/", "stable", {
        "numpy": "reference/generated/{name}.html#{name}"}, "reference/index.html#module-{module}"),
    "astropy": ("https://docs.astropy.org/en/stable/", "stable", {
        m: "api/{name}.html#{name}" for m in (
            "astropy.table", "astropy.units", "astropy.coordinates", "astropy.time", "astropy.io.fits",
            "astropy.io.votable", "astropy.wcs", "astropy.wcs.utils", "astropy.config",
            "astropy.utils.exceptions", "astropy.visualization", "astropy.stats")},
        "{package}/index.html#module-{module}"),
    "astroquery": ("https://astroquery.readthedocs.io/en/latest/", "latest", {
        m: "api/{name}.html#{name}" for m in (
            "astroquery.query", "astroquery.exceptions", "astroquery.casda", "astroquery.vizier",
            "astroquery.utils.commons")},
        "{package}/{package}.html#module-{module}"),
    "pyvo": ("https://pyvo.readthedocs.io/en/latest/", "latest", {
        m: "api/{name}.html#{name}" for m in ("pyvo.dal", "pyvo.auth", "pyvo.io.uws")},
        "{package}/index.html#module-{module}"),
    "requests": ("https://requests.readthedocs.io/en/latest/", "latest", {
        m: "api/#{name}" for m in ("requests", "requests.auth", "requests.adapters", "requests.exceptions")},
        "api/#module-{module}"),
    "urllib3": ("https://urllib3.readthedocs.io/en/stable/", "stable", {
        "urllib3.util": "reference/urllib3.util.html#{name}"}, "reference/index.html#module-{module}"),
}


def _role(value):
    if inspect.isclass(value):
        return "exception" if issubclass(value, BaseException) else "class"
    if inspect.isroutine(value):
        return "function"
    return "data"


def _public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
    for name in names:
        value = getattr(module, name, None)
        if value is None or inspect.ismodule(value):
            continue
        yield name, value


def _members(qualified, cls):
    """Public methods and attributes of a class, documented under the class's page."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            yield f"{qualified}.{name}", "attribute"
        elif inspect.isroutine(value) or isinstance(value, (classmethod, staticmethod)):
            yield f"{qualified}.{name}", "method"


def entries(project):
    base, version, modules, module_page = PROJECTS[project]
    for module_name, pattern in modules.items():
        module = importlib.import_module(module_name)
        package = module_name.split(".")[1] if "." in module_name else module_name
        yield module_name, "module", module_page.format(module=module_name, package=package)
        for name, value in _public_names(module):
            qualified = f"{module_name}.{name}"
            uri = pattern.format(module=module_name, name=qualified)
            yield qualified, _role(value), uri
            if inspect.isclass(value):
                page = uri.split("#", 1)[0]
                for member, role in _members(qualified, value):
                    yield member, role, f"{page}#{member}"
    if project == "python":
        for name in dir(builtins):
            value = getattr(builtins, name)
            if name.startswith("_"):
                continue
            if inspect.isclass(value) and issubclass(value, BaseException):
                yield name, "exception", f"library/exceptions.html#{name}"
            elif inspect.isclass(value):
                in_stdtypes = name in ("str", "list", "dict", "tuple", "set", "bytes", "range")
                page = "stdtypes" if in_stdtypes else "functions"
                yield name, "class", f"library/{page}.html#{name}"
            elif inspect.isroutine(value):
                yield name, "function", f"library/functions.html#{name}"
        yield "None", "data", "library/constants.html#None"
        yield "True", "data", "library/constants.html#True"
        yield "False", "data", "library/constants.html#False"


def write(project):
    seen, lines = set(), []
    for name, role, uri in entries(project):
        if (name, role) in seen:
            continue
        seen.add((name, role))
        # "$" abbreviates the object's own name at the end of the anchor, as Sphinx writes it
        short = uri[:-len(name)] + "$" if uri.endswith("#" + name) else uri
        lines.append(f"{name} py:{role} 1 {short} -\n")
    header = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: {PROJECTS[project][1]}\n"
              "# The remainder of this file is compressed using zlib.\n")
    path = HERE / project / "objects.inv"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(header.encode() + zlib.compress("".join(sorted(lines)).encode()))
    return path, len(lines)


def check(path, base):
    from sphinx.util.inventory import InventoryFile
    with open(path, "rb") as stream:
        inventory = InventoryFile.load(io.BytesIO(stream.read()), base, lambda *parts: "/".join(parts))
    return sum(len(items) for items in (inventory.data if hasattr(inventory, "data") else inventory).values())


if __name__ == "__main__":
    for project in PROJECTS:
        path, count = write(project)
        read_back = check(path, PROJECTS[project][0])
        print(f"{path.relative_to(HERE.parent)}: {count} names, {read_back} read back")
