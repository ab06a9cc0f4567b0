"""Run astroquery's own offline CASDA tests, from the installed astroquery, against this package.

A pytest plugin (named in ``conftest.py``).  ``tests/test_astroquery_casda.py`` is a
placeholder: its collection is replaced by astroquery's ``astroquery/casda/tests/test_casda.py``
as installed, read from where it is installed, with its imports of ``astroquery.casda``
rewritten to ``astroquery_casda_ext`` and nothing else changed.  Nothing of astroquery's is
copied into this repository.

Imports are matched on the syntax tree, not on text, so a newer release of the file still
runs: any ``from astroquery.casda[.core] import <names>`` (absolute or relative, names
aliased or not) takes the same names from ``astroquery_casda_ext``; other relative imports
become absolute.  A name this package does not provide stops the collection with a clear
error instead of running the test against astroquery.casda.

Tests that check a deliberate difference (``docs/migration.rst``, "Deliberate
differences") are listed in `DIFFERENCES`.  Each such test is run twice: as it is, where it
must fail with the documented error at the documented statement; and with astroquery's
behaviour put back for that one point, where it must pass.  So a listed test still catches
every other regression, and a difference that disappears or changes fails the run.
"""
import ast
import importlib.util
import math
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The placeholder whose collection is replaced (relative to this folder).
PLACEHOLDER = "test_astroquery_casda.py"

#: Modules whose names are taken from astroquery_casda_ext instead.
REWRITTEN_MODULES = ("astroquery.casda", "astroquery.casda.core")
REPLACEMENT = "astroquery_casda_ext"


def installed_test_file():
    """astroquery's ``casda/tests/test_casda.py`` as installed (None if astroquery ships none)."""
    spec = importlib.util.find_spec("astroquery.casda")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tests" / "test_casda.py"
    return path if path.is_file() else None


def _absolute(module, level, package):
    """The absolute module name of ``from <level dots><module> import ...`` inside ``package``."""
    if not level:
        return module
    base = package.rsplit(".", level - 1)[0] if level > 1 else package
    return f"{base}.{module}" if module else base


class CasdaImports(ast.NodeTransformer):
    """Point ``from astroquery.casda import ...`` (and ``from astroquery import casda``) at
    astroquery_casda_ext; make relative imports absolute."""

    def __init__(self, package, provided):
        self.package = package
        self.provided = provided
        self.rewritten = []

    def visit_ImportFrom(self, node):
        module = _absolute(node.module, node.level, self.package)
        if module in REWRITTEN_MODULES:
            missing = [alias.name for alias in node.names if alias.name == "*" or alias.name not in self.provided]
            if missing:
                raise ImportError(f"astroquery's CASDA tests import {', '.join(missing)} from {module}, "
                                  f"which {REPLACEMENT} does not provide (line {node.lineno})")
            self.rewritten.extend(alias.name for alias in node.names)
            module = REPLACEMENT
        names = node.names
        statements = []
        if module == "astroquery" and any(alias.name == "casda" for alias in names):   # the module itself
            statements.append(ast.Import(names=[ast.alias(name=REPLACEMENT, asname=alias.asname or "casda")
                                                for alias in names if alias.name == "casda"]))
            self.rewritten.append("casda")
            names = [alias for alias in names if alias.name != "casda"]
        if names:
            statements.append(ast.ImportFrom(module=module, names=names, level=0))
        return [ast.copy_location(statement, node) for statement in statements]


def rewritten_module(path, config=None):
    """astroquery's test file at ``path`` as a module, its CASDA imports rewritten (see `CasdaImports`)."""
    import astroquery_casda_ext
    source = path.read_bytes()
    tree = ast.parse(source, filename=str(path))
    imports = CasdaImports("astroquery.casda.tests", set(dir(astroquery_casda_ext)))
    tree = ast.fix_missing_locations(imports.visit(tree))
    if not imports.rewritten:
        raise ImportError(f"{path} no longer imports anything from astroquery.casda: nothing to rewrite")
    try:   # pytest's assertion messages (its own hook rewrites only modules it imports itself)
        from _pytest.assertion.rewrite import rewrite_asserts
        rewrite_asserts(tree, source, str(path), config)
    except ImportError:
        pass
    name = "astroquery_casda_ext_tests.astroquery_test_casda"
    module = types.ModuleType(name)
    module.__file__ = str(path)        # its data_path() finds the installed data/ folder
    module.rewritten_imports = tuple(imports.rewritten)
    sys.modules[name] = module
    exec(compile(tree, str(path), "exec"), module.__dict__)
    return module


class InstalledAstroqueryTests(pytest.Module):
    """The placeholder module, collected as astroquery's installed test file."""

    def _getobj(self):
        path = installed_test_file()
        if path is None:
            pytest.skip("this astroquery installs no casda/tests/test_casda.py", allow_module_level=True)
        return rewritten_module(path, self.config)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    if module_path.name == PLACEHOLDER and module_path.parent == Path(__file__).parent:
        return InstalledAstroqueryTests.from_parent(parent, path=module_path)
    return None


# --- deliberate differences -----------------------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    """A deliberate difference from astroquery.casda that some of its tests check.

    Attributes
    ----------
    reason : str
        Why (as in docs/migration.rst).
    tests : tuple of str
        The tests of astroquery's file that check it.
    raises : type
        What such a test fails with here.
    match : str
        A regular expression the failure's text (or the exception it arose from) matches.
    statement : dict
        Per test, a piece of the test's statement where it must fail.
    as_astroquery : callable
        ``as_astroquery(monkeypatch)`` puts astroquery's behaviour back for this one point.
    """

    reason: str
    tests: tuple
    raises: type
    match: str
    statement: dict
    as_astroquery: object


def _unwrapped_box(payload):
    """A payload with each RANGE's RA width as astroquery sends it (degrees of RA, no 1/cos(dec))."""
    def astroquerys(match):
        ra_low, ra_high, dec_low, dec_high = (float(x) for x in match.group(1).split())
        centre, half = (ra_low + ra_high) / 2, (ra_high - ra_low) / 2
        half *= math.cos(math.radians((dec_low + dec_high) / 2))
        return f"RANGE {centre - half} {centre + half} {dec_low} {dec_high}"
    return {key: re.sub(r"RANGE ([-+0-9.eE ]+)", astroquerys, value) if isinstance(value, str) else value
            for key, value in payload.items()}


def _boxes_as_astroquery(monkeypatch):
    from astroquery_casda_ext import CasdaClass
    ours = CasdaClass._args_to_payload
    monkeypatch.setattr(CasdaClass, "_args_to_payload",
                        lambda self, **kwargs: _unwrapped_box(ours(self, **kwargs)))


def _channels_from_zero(monkeypatch):
    from astroquery_casda_ext import regions
    monkeypatch.setattr(regions, "FIRST_CHANNEL", 0)


def _band_or_channel(monkeypatch):
    from astroquery_casda_ext import CasdaClass
    ours = CasdaClass._args_to_payload

    def astroquerys(self, **kwargs):
        if kwargs.get("band") is not None and kwargs.get("channel") is not None:
            raise ValueError("Either 'channel' or 'band' values may be provided but not both.")
        return ours(self, **kwargs)
    monkeypatch.setattr(CasdaClass, "_args_to_payload", astroquerys)


def _check_region_after_asking(monkeypatch):
    """astroquery's order: ask DataLink for the cutout tokens first, then find no region."""
    from astroquery_casda_ext import CasdaClass
    from astroquery_casda_ext.access import product_ids_from_table
    from astroquery_casda_ext.core import CUTOUT_SERVICE
    ours = CasdaClass.cutout

    def astroquerys(self, table, **kwargs):
        if not any(kwargs.get(name) is not None for name in ("coordinates", "polygon", "band", "channel", "pol")):
            self._datalink().tokens_for(product_ids_from_table(table), CUTOUT_SERVICE)
        return ours(self, table, **kwargs)
    monkeypatch.setattr(CasdaClass, "cutout", astroquerys)


DIFFERENCES = (
    Difference(
        reason="a box's RA width is divided by cos(dec), so the box has the asked on-sky size",
        tests=("test_query_region_box", "test_query_region_async_box", "test_args_to_payload_coordinates"),
        raises=AssertionError, match=r"isclose",
        statement={"test_query_region_box": "ra - width / 2", "test_query_region_async_box": "ra - width / 2",
                   "test_args_to_payload_coordinates": "187.5-1/60"},
        as_astroquery=_boxes_as_astroquery),
    Difference(
        reason="a cutout without a region or window is refused before anything is sent (astroquery "
               "asks DataLink and creates a SODA job first, and leaves that job behind)",
        tests=("test_cutout_no_args",),
        raises=pytest.fail.Exception,
        match=r"DID NOT WARN.*InvalidInputError: Please provide cutout parameters such as coordinates",
        statement={"test_cutout_no_args": "casda.cutout(table)"},
        as_astroquery=_check_region_after_asking),
    Difference(
        reason="CASDA counts channels from 1 (a CHANNEL of 0 makes the job fail), so 0 is refused at once",
        tests=("test_args_to_payload_channel",),
        raises=ValueError, match=r"CASDA counts channels from 1",
        statement={"test_args_to_payload_channel": "channel=(0, 30)"},
        as_astroquery=_channels_from_zero),
    Difference(
        reason="band and channel windows may be combined (CASDA cuts one file per window)",
        tests=("test_args_to_payload_band_invalid",),
        raises=pytest.fail.Exception, match=r"DID NOT RAISE",
        statement={"test_args_to_payload_band_invalid": "channel=(5, 10)"},
        as_astroquery=_band_or_channel),
)

_BY_TEST = {test: difference for difference in DIFFERENCES for test in difference.tests}


def _failing_statement(excinfo, function):
    """The test's own line where ``excinfo`` was raised, and the line after it (the body of a
    ``with pytest.raises(...)``, whose exit is where such a check fails)."""
    entries = [entry for entry in excinfo.traceback if entry.frame.code.raw is function.__code__]
    if not entries:
        return ""
    lines = entries[-1].frame.code.fullsource.lines
    return "\n".join(lines[entries[-1].lineno:entries[-1].lineno + 2])


def _failure_text(error):
    texts = [str(error)]
    if error.__context__ is not None:    # pytest.warns reports the exception it saw as its context
        texts.append(f"{type(error.__context__).__name__}: {error.__context__}")
    return "\n".join(texts)


def check_difference(difference, name, function, arguments):
    """Run test ``name`` (``function(**arguments)``) as `DIFFERENCES` says: it must fail with the
    documented error at the documented statement, then pass with astroquery's behaviour put
    back for that one point.  Any other outcome fails, naming the difference."""
    with pytest.raises(difference.raises) as excinfo:
        function(**arguments)
    text, statement = _failure_text(excinfo.value), _failing_statement(excinfo, function)
    if not re.search(difference.match, text, re.DOTALL) or difference.statement[name] not in statement:
        pytest.fail(f"{name} no longer fails only for the documented difference "
                    f"({difference.reason}): it failed at {statement.strip()!r} with {text!r}")
    with pytest.MonkeyPatch.context() as monkeypatch:
        difference.as_astroquery(monkeypatch)
        function(**arguments)          # with astroquery's behaviour on this one point, it passes


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    difference = _BY_TEST.get(pyfuncitem.originalname)
    if difference is None or not isinstance(pyfuncitem.getparent(pytest.Module), InstalledAstroqueryTests):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    check_difference(difference, pyfuncitem.originalname, pyfuncitem.obj, arguments)
    return True
