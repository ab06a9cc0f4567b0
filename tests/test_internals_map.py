"""docs/internals.rst is the module map: it names every module of the client package and of
the emulator, names nothing that is not there, and says which client modules import the
emulator."""
import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "astroquery_casda_ext"
MAP = (ROOT / "docs" / "internals.rst").read_text(encoding="utf-8")
CLIENT_SECTION, _, EMULATOR_SECTION = MAP.partition("The emulator\n------------")


def modules(package):
    """The package's modules (``name.py``) and sub-packages (``name/``)."""
    found = {path.name for path in package.glob("*.py")}
    found |= {path.name + "/" for path in package.iterdir() if (path / "__init__.py").is_file()}
    return found


def table_entries(section):
    """First-column entries of the section's module tables (rows starting with a literal)."""
    return {match.group(1) for match in re.finditer(r"^``([^`]+)``  +\S", section, re.MULTILINE)}


def named_files(section):
    """Every ``something.py`` or ``something/`` literal in the section, but its package heading."""
    return set(re.findall(r"``([A-Za-z_][A-Za-z0-9_]*(?:\.py|/))``", section)) - {PACKAGE.name + "/"}


SECTIONS = [(CLIENT_SECTION, PACKAGE), (EMULATOR_SECTION, PACKAGE / "emulator")]


@pytest.mark.parametrize("section, package", SECTIONS, ids=["client", "emulator"])
def test_every_module_is_in_the_map_and_every_module_in_the_map_exists(section, package):
    existing = modules(package)
    assert table_entries(section) == existing
    assert named_files(section) <= existing


def _imports_emulator(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "emulator" or node.module.startswith("emulator.")
                or node.module.startswith("astroquery_casda_ext.emulator")):
            return True
        if isinstance(node, ast.Import) and any(alias.name.startswith("astroquery_casda_ext.emulator")
                                                for alias in node.names):
            return True
    return False


def _imported_modules(path):
    """Every module name an emulator file imports, made absolute (``..x`` -> ``astroquery_casda_ext.x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module
            elif node.level == 1:
                yield "astroquery_casda_ext.emulator." + (node.module or "")
            else:
                yield "astroquery_casda_ext." + (node.module or "") + \
                    "".join("." + alias.name for alias in node.names if not node.module)


@pytest.mark.parametrize("path", sorted((PACKAGE / "emulator").rglob("*.py")), ids=lambda path: path.name)
def test_no_emulator_module_imports_the_client(path):
    """The emulator is an oracle for the client: sharing its code would hide the client's mistakes."""
    for name in _imported_modules(path):
        parts = name.split(".")
        if parts[0] == "astroquery_casda_ext":
            assert parts[1:2] == ["emulator"], f"{path.name} imports {name} from the client"


def test_the_map_names_the_client_modules_that_import_the_emulator():
    importers = {path.name for path in PACKAGE.rglob("*.py")
                 if "emulator" not in path.relative_to(PACKAGE).parts and _imports_emulator(path)}
    statement = re.search(r"The client imports the emulator.*?\n\n", CLIENT_SECTION, re.DOTALL)
    assert statement is not None, "the map must say where the client imports the emulator"
    assert importers == set(re.findall(r"``(\w+\.py)``", statement.group()))


def _service_table_column(title):
    """The ``x.py`` names in one column of the emulator's per-service table."""
    lines = EMULATOR_SECTION[EMULATOR_SECTION.index("service       state"):].splitlines()
    rule = next(line for line in lines if line.startswith("===="))
    spans, position = [], 0
    for run in rule.split("  "):
        if run:
            start = rule.index(run, position)
            spans.append((start, start + len(run)))
            position = start + len(run)
    header = lines[0]
    column = next(index for index, (start, stop) in enumerate(spans) if header[start:stop + 2].strip() == title)
    start = spans[column][0]
    stop = spans[column + 1][0] if column + 1 < len(spans) else None
    body = lines[lines.index(rule, 1) + 1:]
    body = body[:body.index(rule)]
    return set(re.findall(r"``(\w+\.py)``", "\n".join(line[start:stop] for line in body)))


def _imports_werkzeug(path):
    return any(name.split(".")[0] == "werkzeug" for name in _imported_modules(path))


def test_only_the_routes_layer_the_map_names_imports_werkzeug():
    statement = re.search(r"Only the routes layer \((.*?)\) imports werkzeug", EMULATOR_SECTION, re.DOTALL)
    assert statement is not None, "the map must say which emulator modules speak HTTP"
    allowed = re.findall(r"``([\w*]+\.py)``", statement.group(1))
    importers = {path.name for path in (PACKAGE / "emulator").glob("*.py") if _imports_werkzeug(path)}
    assert importers and all(any(fnmatch.fnmatch(name, pattern) for pattern in allowed) for name in importers)


def test_state_and_documents_never_see_a_request():
    """The map's state and documents columns: no werkzeug, no function taking a request."""
    documents = _service_table_column("documents")
    state = _service_table_column("state")
    assert {"tap_render.py", "result_writers.py", "soda_render.py"} <= documents
    assert {"tap_state.py", "soda_state.py", "datalink_state.py"} <= state
    for name in documents | state:
        path = PACKAGE / "emulator" / name
        assert not _imports_werkzeug(path), name
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.Lambda)):
                arguments = {argument.arg for argument in node.args.args + node.args.kwonlyargs}
                assert not arguments & {"request", "ctx"}, f"{name}: {getattr(node, 'name', 'lambda')}"
