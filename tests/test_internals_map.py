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


# --- each guarantee in one layer -----------------------------------------------------------------

CLIENT_FILES = sorted(path for path in PACKAGE.rglob("*.py") if "emulator" not in path.relative_to(PACKAGE).parts)


def _name(path):
    return str(path.relative_to(PACKAGE))


def _dotted(node):
    """``a.b.c`` of a Name/Attribute chain ('' for anything else)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


#: Parsers of XML/VOTable documents: only the document reader may use them on network answers.
_PARSERS = ("astropy.io.votable", "pyvo.io.uws", "pyvo.dal", "xml.etree", "xml.dom", "xml.sax", "pyexpat",
            "lxml", "defusedxml")


def _absolute_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_only_the_document_reader_parses_network_documents():
    """XML and VOTable parsers are imported by ``documents.py`` alone (pyvo's ADQL ``escape``
    is no parser)."""
    users = {_name(path) for path in CLIENT_FILES
             for module in _absolute_imports(ast.parse(path.read_text(encoding="utf-8")))
             if module.startswith(_PARSERS) and module != "pyvo.dal.tap"}
    assert users == {"documents.py"}


def _except_types(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            kinds = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            yield from (_dotted(kind) for kind in kinds)


#: Where requests' and urllib3's exceptions may be caught: the failure mapper, and the download
#: transfer loop, which classifies failures for its resume logic (wording them with
#: ``transport.describe_failure``).
FAILURE_LAYERS = {"transport.py", "download/http.py", "download/transfer.py", "download/executors.py"}


def test_only_transport_maps_transport_failures():
    catching = {_name(path) for path in CLIENT_FILES
                for kind in _except_types(ast.parse(path.read_text(encoding="utf-8")))
                if kind.startswith(("requests.", "urllib3.")) or kind in ("RequestException", "TRANSPORT_ERRORS")}
    assert catching <= FAILURE_LAYERS and "transport.py" in catching


def _loops_calling(tree, attribute):
    for loop in (node for node in ast.walk(tree) if isinstance(node, (ast.While, ast.For))):
        for node in ast.walk(loop):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute:
                yield loop


def test_one_poll_loop():
    """Only ``jobs.py`` looks at a job again in a loop (``refresh`` or ``_blocking_refresh``),
    and only in ``wait_all``."""
    pollers = {}
    for path in CLIENT_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
        for function in functions:
            if any(True for attribute in ("refresh", "_blocking_refresh") for _ in _loops_calling(function, attribute)):
                pollers.setdefault(_name(path), set()).add(function.name)
    assert pollers == {"jobs.py": {"wait_all"}}


def test_one_query_status_rule_one_document_reader_one_failure_mapper():
    """``QUERY_STATUS`` is compared, and documents fetched and parsed, in ``documents.py`` only;
    bodies are read within bounds and failures mapped in ``transport.py`` only."""
    for path in CLIENT_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        compares = [node for node in ast.walk(tree) if isinstance(node, ast.Constant)
                    and node.value == "QUERY_STATUS"]
        defines = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        if _name(path) != "documents.py":
            assert not compares, f"{_name(path)} reads QUERY_STATUS itself"
            assert not defines & {"parse_job_document", "status_of", "query_status", "fetch"}, _name(path)
        if _name(path) != "transport.py":
            assert not defines & {"read_body", "failure", "read_some"}, _name(path)


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
