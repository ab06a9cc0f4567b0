"""ADQL for the emulator's TAP service, executed for real over an embedded SQLite database.

`TapDatabase` loads `~.schema.TableDef` tables (plus the ``TAP_SCHEMA`` tables describing
them) into an in-memory SQLite database and runs ADQL queries on it:

1. sqlglot parses the ADQL (its T-SQL dialect reads ``SELECT TOP n``);
2. the syntax tree is checked against the subset below; anything else is an `AdqlError`
   with a message in CASDA's words (``Unable to interpret query '...'``);
3. tables and columns are resolved case-insensitively against the table definitions, so an
   unknown name is refused before SQLite sees it, and every identifier is rewritten to a
   quoted SQLite name;
4. embargoed tables are replaced by a filtered sub-query (CASDA's rule, protocol §8.2);
5. ADQL functions become SQLite user functions (geometry and maths below), and the tree is
   written out as SQLite SQL, with TOP and MAXREC as one ``LIMIT``.

Supported: ``SELECT [DISTINCT] [TOP n]`` with ``*``, ``t.*``, columns (bare, ``t.col``,
``schema.table.col``), expressions and aliases; ``FROM`` one or more tables (``schema.table``
or a unique bare name, with or without alias), ``[INNER|LEFT [OUTER]|CROSS] JOIN ... ON`` and
comma joins; ``WHERE``/``HAVING`` with ``AND``/``OR``/``NOT``, comparisons, ``LIKE``
(case-sensitive, as in PostgreSQL), ``ILIKE``, ``IN (list)``, ``BETWEEN``, ``IS [NOT] NULL``,
arithmetic and ``||``; ``GROUP BY``; ``ORDER BY`` name, alias or position, ``ASC``/``DESC``
(NULLs sort as in PostgreSQL: last ascending, first descending); ``COUNT``, ``MIN``, ``MAX``,
``AVG``, ``SUM``; ADQL maths (``ABS CEILING FLOOR SQRT EXP LOG LOG10 POWER SIN COS TAN ASIN
ACOS ATAN ATAN2 DEGREES RADIANS PI MOD ROUND TRUNCATE RAND``), ``LOWER``, ``UPPER``,
``COALESCE``; geometry ``POINT CIRCLE BOX POLYGON CONTAINS INTERSECTS DISTANCE COORD1 COORD2``.

Refused: more than one statement, anything but ``SELECT`` (``INSERT``, ``DROP``...),
sub-queries, ``UNION``/``INTERSECT``/``EXCEPT``, ``WITH``, ``JOIN ... USING``, ``NATURAL``,
``RIGHT``/``FULL`` joins, ``TOP ... PERCENT``, ``OFFSET``, ``CAST``, unknown tables, columns
and functions, and ``AREA``/``CENTROID``/``REGION``/``COORDSYS``.

Geometry values are strings in the form of CASDA's ``s_region`` column; the shapes and
their tests live in `~.geometry` (no SQL there), the SQL functions and the bounding-cap
pre-filter that use them are here.
"""
import dataclasses
import math
import random
import re
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from .geometry import (
    Box, Circle, Point, Polygon, bounding_cap, cap_values, contains, great_circle_distance, intersects,
    parse_region)
from .schema import Column, TableDef, adql_datatype, tap_schema_tables

__all__ = ["AdqlError", "QueryResult", "TapDatabase"]

#: Rows fetched from SQLite at a time by a streamed query.
_STREAM_BATCH = 5000


class AdqlError(Exception):
    """A query was refused or failed; ``message`` is the text for ``QUERY_STATUS=ERROR``."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


@dataclass
class QueryResult:
    """The rows of a query and the VOTable FIELD definitions of its columns.

    ``overflow`` is True only when MAXREC cut the result short; ``table_name`` is the full
    name of the table queried when there was exactly one (CASDA's ``Table Name`` INFO).
    """

    columns: list[Column]
    rows: list[tuple]
    overflow: bool
    table_name: str | None


# =============================================================================================
# Geometry in SQL (the shapes and their tests are in geometry.py)
# =============================================================================================

# --- bounding caps: a fast first test in SQL ----------------------------------------------
#
# Each REGION column gets hidden columns holding its value's bounding cap (centre vector,
# cos and sin of the radius, Dec range).  INTERSECTS/CONTAINS between such a column and a
# constant shape first compares caps in plain SQL arithmetic, so the Python test runs only
# for the rows that could match (a sky search of a 100 000-row ObsCore becomes milliseconds).

_CAP_SUFFIXES = ("$x", "$y", "$z", "$cos", "$sin", "$decmin", "$decmax")


def _cap_condition(alias, column, shape):
    """SQL that is false only when ``shape`` cannot meet the region in ``alias.column``."""
    def ref(suffix):
        return f'{alias}."{column}{suffix}"'

    if shape.kind == "BOX":
        low, high = shape.dec_min - 1e-9, shape.dec_max + 1e-9
        return f"({ref('$decmax')} >= {low!r} AND {ref('$decmin')} <= {high!r})"
    (x, y, z), radius = bounding_cap(shape)
    if radius > math.pi / 2:
        return None
    # angle(centres) <= r + rho  <=>  cos(angle) >= cos r cos rho - sin r sin rho  (r + rho < pi)
    return (f"({ref('$x')} * {x!r} + {ref('$y')} * {y!r} + {ref('$z')} * {z!r} >= "
            f"{math.cos(radius)!r} * {ref('$cos')} - {math.sin(radius)!r} * {ref('$sin')} - 1e-9)")


# --- the SQL functions ----------------------------------------------------------------------

def _frame_and_numbers(args, counts, name):
    """Split ADQL geometry arguments into numbers; a leading coordinate-system string is optional."""
    if len(args) not in counts and len(args) - 1 in counts and isinstance(args[0], str):
        args = args[1:]
    if len(args) not in counts:
        raise ValueError(f"wrong number of arguments for {name}")
    numbers = [float(value) for value in args]
    if not all(map(math.isfinite, numbers)):
        raise ValueError(f"{name} needs finite numbers")
    return numbers


def _sql_point(*args):
    return str(Point(*_frame_and_numbers(args, (2,), "POINT")))


def _sql_circle(*args):
    return str(Circle(*_frame_and_numbers(args, (3,), "CIRCLE")))


def _sql_box(*args):
    return str(Box(*_frame_and_numbers(args, (4,), "BOX")))


def _sql_polygon(*args):
    counts = range(6, len(args) + 1, 2)
    numbers = _frame_and_numbers(args, counts, "POLYGON")
    return str(Polygon(list(zip(numbers[0::2], numbers[1::2]))))


def _point_arg(value, name):
    shape = parse_region(value)
    if shape.kind != "POINT":
        raise ValueError(f"{name} needs a POINT, not a {shape.kind}")
    return shape


def _sql_distance(*args):
    if len(args) == 2:
        p1, p2 = (_point_arg(value, "DISTANCE") for value in args)
        return great_circle_distance(p1.ra, p1.dec, p2.ra, p2.dec)
    if len(args) == 4:
        return great_circle_distance(*(float(value) for value in args))
    raise ValueError("DISTANCE takes two POINTs or four numbers")


def _truncate(value, places=0):
    factor = 10.0 ** int(places)
    return math.trunc(float(value) * factor) / factor


def _mod(a, b):
    result = math.fmod(a, b)
    return int(result) if isinstance(a, int) and isinstance(b, int) else result


def _rand(seed=None):
    return random.Random(seed).random() if seed is not None else random.random()


_SQL_FUNCTIONS = {
    "adql_point": _sql_point, "adql_circle": _sql_circle, "adql_box": _sql_box, "adql_polygon": _sql_polygon,
    "adql_contains": lambda a, b: int(contains(parse_region(a), parse_region(b))),
    "adql_intersects": lambda a, b: int(intersects(parse_region(a), parse_region(b))),
    "adql_distance": _sql_distance,
    "adql_coord1": lambda p: _point_arg(p, "COORD1").ra,
    "adql_coord2": lambda p: _point_arg(p, "COORD2").dec,
    "adql_ceiling": lambda x: float(math.ceil(x)), "adql_floor": lambda x: float(math.floor(x)),
    "adql_sqrt": math.sqrt, "adql_exp": math.exp, "adql_log": math.log, "adql_log10": math.log10,
    "adql_power": lambda x, y: float(x) ** float(y), "adql_sin": math.sin, "adql_cos": math.cos,
    "adql_tan": math.tan, "adql_asin": math.asin, "adql_acos": math.acos, "adql_atan": math.atan,
    "adql_atan2": math.atan2, "adql_degrees": math.degrees, "adql_radians": math.radians,
    "adql_pi": lambda: math.pi, "adql_mod": _mod, "adql_truncate": _truncate, "adql_rand": _rand,
}

#: The last error a user function raised in this thread: SQLite only says "user-defined
#: function raised exception", so the message is kept here for the AdqlError.
_function_errors = threading.local()


def _sql_function(name, function):
    """Wrap ``function`` for SQLite: NULL in gives NULL out; errors are remembered."""
    def call(*args):
        if any(arg is None for arg in args):
            return None
        try:
            return function(*args)
        except (ValueError, TypeError, ArithmeticError) as exc:
            _function_errors.message = f"{name[5:].upper()}: {exc}"
            raise
    return call


# =============================================================================================
# ADQL -> SQLite
# =============================================================================================

#: ADQL function name -> (SQLite function, least and most arguments, result kind).
_FUNCTIONS = {
    "ABS": ("abs", 1, 1, "same"), "CEILING": ("adql_ceiling", 1, 1, "double"),
    "FLOOR": ("adql_floor", 1, 1, "double"), "SQRT": ("adql_sqrt", 1, 1, "double"),
    "EXP": ("adql_exp", 1, 1, "double"), "LOG": ("adql_log", 1, 1, "double"),
    "LOG10": ("adql_log10", 1, 1, "double"), "POWER": ("adql_power", 2, 2, "double"),
    "SIN": ("adql_sin", 1, 1, "double"), "COS": ("adql_cos", 1, 1, "double"),
    "TAN": ("adql_tan", 1, 1, "double"), "ASIN": ("adql_asin", 1, 1, "double"),
    "ACOS": ("adql_acos", 1, 1, "double"), "ATAN": ("adql_atan", 1, 1, "double"),
    "ATAN2": ("adql_atan2", 2, 2, "double"), "DEGREES": ("adql_degrees", 1, 1, "double"),
    "RADIANS": ("adql_radians", 1, 1, "double"), "PI": ("adql_pi", 0, 0, "double"),
    "MOD": ("adql_mod", 2, 2, "same"), "ROUND": ("round", 1, 2, "double"),
    "TRUNCATE": ("adql_truncate", 1, 2, "double"), "RAND": ("adql_rand", 0, 1, "double"),
    "LOWER": ("lower", 1, 1, "char"), "UPPER": ("upper", 1, 1, "char"),
    "COALESCE": ("coalesce", 2, 64, "same"),
    "POINT": ("adql_point", 2, 3, "region"), "CIRCLE": ("adql_circle", 3, 4, "region"),
    "BOX": ("adql_box", 4, 5, "region"), "POLYGON": ("adql_polygon", 6, 1000, "region"),
    "CONTAINS": ("adql_contains", 2, 2, "int"), "INTERSECTS": ("adql_intersects", 2, 2, "int"),
    "DISTANCE": ("adql_distance", 2, 4, "distance"),
    "COORD1": ("adql_coord1", 1, 1, "coord1"), "COORD2": ("adql_coord2", 1, 1, "coord2"),
}

#: sqlglot's typed function nodes -> ADQL names (everything else arrives as exp.Anonymous).
_FUNCTION_CLASSES = {
    exp.Abs: "ABS", exp.Ceil: "CEILING", exp.Floor: "FLOOR", exp.Sqrt: "SQRT", exp.Exp: "EXP",
    exp.Ln: "LOG", exp.Pow: "POWER", exp.Sin: "SIN", exp.Cos: "COS", exp.Tan: "TAN", exp.Asin: "ASIN",
    exp.Acos: "ACOS", exp.Atan: "ATAN", exp.Atan2: "ATAN2", exp.Degrees: "DEGREES",
    exp.Radians: "RADIANS", exp.Pi: "PI", exp.Mod: "MOD", exp.Round: "ROUND", exp.Trunc: "TRUNCATE",
    exp.Rand: "RAND", exp.Lower: "LOWER", exp.Upper: "UPPER", exp.Coalesce: "COALESCE",
    exp.Contains: "CONTAINS",
}

#: Aggregates, run by SQLite itself, and the datatype of their result.
_AGGREGATES = {exp.Count: "long", exp.Min: "same", exp.Max: "same", exp.Avg: "double", exp.Sum: "same"}

#: ADQL functions this service does not offer (CASDA's pgSphere has them; nobody here needs them).
_REFUSED_FUNCTIONS = {"AREA", "CENTROID", "REGION", "COORDSYS"}

_ALLOWED_NODES = {
    exp.Select, exp.From, exp.Join, exp.Table, exp.TableAlias, exp.Identifier, exp.Column, exp.Star,
    exp.Alias, exp.Where, exp.Group, exp.Having, exp.Order, exp.Ordered, exp.Limit, exp.Distinct,
    exp.And, exp.Or, exp.Not, exp.Paren, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE,
    exp.Like, exp.ILike, exp.Escape, exp.In, exp.Between, exp.Is, exp.Null, exp.Literal, exp.Neg,
    exp.Add, exp.Sub, exp.Mul, exp.Div, exp.DPipe,
}

_COMPOUND_MESSAGES = {
    exp.Subquery: "sub-queries are not supported by this service",
    exp.Union: "UNION is not supported by this service",
    exp.Intersect: "INTERSECT is not supported by this service",
    exp.Except: "EXCEPT is not supported by this service",
    exp.With: "WITH (common table expressions) is not supported by this service",
    exp.CTE: "WITH (common table expressions) is not supported by this service",
}

_INTEGER_TYPES = {"short", "int", "long"}
_SQLITE_AFFINITY = {"double": "REAL", "float": "REAL", "short": "INTEGER", "int": "INTEGER",
                    "long": "INTEGER", "boolean": "INTEGER"}


def _interpret_error(reason):
    return AdqlError(f"Unable to interpret query '{reason}'")


def _snippet(node):
    text = node.sql()
    return text if len(text) <= 60 else text[:57] + "..."


def _function_call(node):
    """The ADQL name and argument nodes of a function-call node."""
    if isinstance(node, exp.Anonymous):
        return node.name.upper(), list(node.expressions)
    if isinstance(node, exp.Log):
        # sqlglot reads LOG10(x) as Log(this=10, expression=x); ADQL's LOG takes one argument.
        base, value = node.this, node.expression
        if value is not None and isinstance(base, exp.Literal) and base.name == "10":
            return "LOG10", [value]
        raise _interpret_error("LOG takes one argument; use LOG10 for decimal logarithms")
    name = _FUNCTION_CLASSES.get(type(node))
    if name is None:
        raise _interpret_error(f'Unknown function "{node.sql_name()}"')
    args = []
    for key in node.arg_types:
        value = node.args.get(key)
        args.extend(item for item in (value if isinstance(value, list) else [value])
                    if isinstance(item, exp.Expression))
    return name, args


def _check_function(node):
    if type(node) in _AGGREGATES:
        return
    name, args = _function_call(node)
    if name in _REFUSED_FUNCTIONS:
        raise _interpret_error(f'Function "{name}" is not supported by this service')
    if name not in _FUNCTIONS:
        raise _interpret_error(f'Unknown function "{name}"')
    _, least, most, _ = _FUNCTIONS[name]
    if not least <= len(args) <= most or (name == "DISTANCE" and len(args) == 3):
        raise _interpret_error(f'Wrong number of arguments for function "{name}": {len(args)}')


def _is_function(node):
    # sqlglot makes some operators (AND, OR...) Func subclasses too: those are not calls.
    return isinstance(node, (exp.Func, exp.Mod)) and type(node) not in _ALLOWED_NODES


def _check_node(node):
    """Refuse any construct outside the supported ADQL subset."""
    if _is_function(node):
        return _check_function(node)
    for kind, message in _COMPOUND_MESSAGES.items():
        if isinstance(node, kind):
            raise _interpret_error(message)
    if type(node) not in _ALLOWED_NODES:
        raise _interpret_error(f'Unsupported construct "{_snippet(node)}"')
    if isinstance(node, exp.Select) and node.parent is not None:
        raise _interpret_error("sub-queries are not supported by this service")
    if isinstance(node, exp.Is) and not isinstance(node.expression, exp.Null):
        raise _interpret_error("IS may only be followed by NULL or NOT NULL")
    if isinstance(node, exp.Join):
        _check_join(node)
    if isinstance(node, exp.Limit) and any(value for key, value in node.args.items() if key != "expression"):
        raise _interpret_error("TOP takes a plain row count")
    if isinstance(node, exp.TableAlias) and node.args.get("columns"):
        raise _interpret_error("column aliases on tables are not supported by this service")
    if isinstance(node, exp.Distinct) and node.args.get("on"):
        raise _interpret_error("DISTINCT ON is not supported by this service")


def _check_join(join):
    if join.args.get("using") or join.args.get("method"):
        raise _interpret_error("JOIN ... USING and NATURAL JOIN are not supported; use JOIN ... ON")
    side = (join.args.get("side") or "").upper()
    if side not in ("", "LEFT"):
        raise _interpret_error(f"{side} JOIN is not supported by this service")
    if not isinstance(join.this, exp.Table):
        raise _interpret_error("sub-queries are not supported by this service")


def _parse(adql):
    """Parse ``adql`` into one SELECT tree, or raise AdqlError."""
    if not isinstance(adql, str) or not adql.strip():
        raise AdqlError("Missing QUERY parameter")
    if "\x00" in adql:
        raise _interpret_error("the query contains a NUL character")
    try:
        statements = [tree for tree in sqlglot.parse(adql, read="tsql") if tree is not None]
    except SqlglotError as exc:
        raise _interpret_error(_parse_message(exc)) from None
    if len(statements) != 1:
        raise _interpret_error("only one statement may be sent at a time")
    tree = statements[0]
    if not isinstance(tree, exp.Select):
        kind = "UNION" if isinstance(tree, exp.Union) else tree.key.upper()
        raise _interpret_error(f"only SELECT queries are allowed, not {kind}")
    if _from(tree) is None:
        raise _interpret_error("a FROM clause is required")
    return tree


def _from(select):
    # sqlglot names the FROM clause "from_" since version 26, "from" before.
    return select.args.get("from_") or select.args.get("from")


def _parse_message(exc):
    """sqlglot's complaint in ADQL terms (no Python class names)."""
    errors = getattr(exc, "errors", None) or []
    if not (errors and errors[0].get("description")):
        return str(exc).splitlines()[0] if str(exc) else "syntax error"
    first = errors[0]
    description = first["description"]
    missing = re.search(r"missing for <class '[\w.]*\.(\w+)'>", description)
    if missing:
        node_class = getattr(exp, missing.group(1), None)
        name = _FUNCTION_CLASSES.get(node_class, missing.group(1).upper())
        description = f'Wrong number of arguments for function "{name}"'
    return f"{description} at line {first.get('line')}, column {first.get('col')}"


@dataclass
class _Source:
    """One table of the FROM clause."""

    table: TableDef
    node: exp.Table
    alias: str                 # the SQLite alias: t0, t1...
    qualifiers: frozenset      # lower-case names ADQL may qualify its columns with
    columns: dict              # lower-case column name -> Column


class _Compiler:
    """Turns one ADQL SELECT into SQLite SQL plus the FIELD definitions of its columns."""

    def __init__(self, database, adql):
        self.database = database
        self.tree = _parse(adql)
        self.explicit_nulls = re.search(r"\bNULLS\s+(FIRST|LAST)\b", adql, re.IGNORECASE) is not None
        for node in self.tree.walk():
            _check_node(node)
        self.sources = self._sources()
        self.top = self._top()
        self.region_columns = set()     # (table, column) whose bounding caps the SQL reads

    # --- tables ---------------------------------------------------------------------------

    def _sources(self):
        nodes = [_from(self.tree).this] + [join.this for join in self.tree.args.get("joins") or []]
        sources = []
        for index, node in enumerate(nodes):
            if not isinstance(node, exp.Table):
                raise _interpret_error("sub-queries are not supported by this service")
            table = self.database.lookup_table(node)
            alias = node.alias
            qualifiers = {alias.lower()} if alias else {table.name.lower(), table.full_name.lower()}
            columns = {column.name.lower(): column for column in table.columns}
            sources.append(_Source(table, node, f"t{index}", frozenset(qualifiers), columns))
        return sources

    def _top(self):
        limit = self.tree.args.get("limit")
        if limit is None:
            return None
        value = limit.expression
        if not (isinstance(value, exp.Literal) and value.is_int and int(value.name) >= 0):
            raise _interpret_error("TOP takes a whole number of rows")
        self.tree.set("limit", None)
        return int(value.name)

    # --- columns --------------------------------------------------------------------------

    def resolve(self, column):
        """The source and definition of an ADQL column reference."""
        name = column.name
        parts = (column.args.get("catalog"), column.args.get("db"), column.args.get("table"))
        qualifier = ".".join(part.name for part in parts if part)
        written = f"{qualifier}.{name}" if qualifier else name
        candidates = [s for s in self.sources if not qualifier or qualifier.lower() in s.qualifiers]
        matches = [(s, s.columns[name.lower()]) for s in candidates if name.lower() in s.columns]
        if not matches:
            raise _interpret_error(f'Unknown column "{written}" !')
        if len(matches) > 1:
            raise _interpret_error(f'Column name "{written}" is ambiguous; qualify it with a table name')
        return matches[0]

    def output_columns(self):
        """FIELD definitions of the select list, in order (``*`` expanded)."""
        columns, names = [], set()
        for item in self.tree.expressions:
            if _is_star(item):
                columns.extend(c for source in self._star_sources(item) for c in source.table.columns)
                continue
            alias = item.alias if isinstance(item, exp.Alias) else None
            expression = item.this if isinstance(item, exp.Alias) else item
            column = _Describer(self).describe(expression, alias or _default_name(expression))
            if not alias and column.name in names and not isinstance(expression, exp.Column):
                column = dataclasses.replace(column, name=f"{column.name}_{len(columns) + 1}")
            names.add(column.name)
            columns.append(column)
        return columns

    def _star_sources(self, item):
        if isinstance(item, exp.Star):
            return self.sources
        qualifier = ".".join(part.name for part in (item.args.get("db"), item.args.get("table")) if part)
        matches = [source for source in self.sources if qualifier.lower() in source.qualifiers]
        if not matches:
            raise _interpret_error(f'Unknown table "{qualifier}" !')
        return matches

    # --- rewriting ------------------------------------------------------------------------

    def rewrite(self):
        """Rewrite the tree in place into SQLite terms (tables are done at execution)."""
        aliases = {item.alias.lower(): item.alias
                   for item in self.tree.expressions if isinstance(item, exp.Alias)}
        for item in self.tree.expressions:
            if isinstance(item, exp.Alias):
                item.set("alias", exp.to_identifier(item.alias, quoted=True))
        for column in list(self.tree.find_all(exp.Column)):
            if not isinstance(column.this, exp.Star):
                column.replace(self._sql_column(column, aliases))
        self._expand_stars()
        for node in reversed(list(self.tree.find_all(exp.Func, exp.Mod))):
            if _is_function(node) and type(node) not in _AGGREGATES:
                name, args = _function_call(node)
                call = exp.Anonymous(this=_FUNCTIONS[name][0], expressions=args)
                node.replace(self._with_cap_test(call) if name in ("INTERSECTS", "CONTAINS") else call)
        if not self.explicit_nulls:
            for ordered in self.tree.find_all(exp.Ordered):
                # CASDA runs PostgreSQL: NULLs sort last ascending and first descending.
                ordered.set("nulls_first", bool(ordered.args.get("desc")))

    def _with_cap_test(self, call):
        """``call`` behind the bounding-cap test when it sets a REGION column against a constant."""
        first, second = call.expressions
        for column, constant in ((first, second), (second, first)):
            region = self._region_column(column)
            if region is None or any(True for _ in constant.find_all(exp.Column)):
                continue
            shape = self.database.constant_shape(constant.sql(dialect="sqlite"))
            condition = shape and _cap_condition(column.table, region[1].name.lower(), shape)
            if not condition:
                return call
            self.region_columns.add((region[0].table.full_name, region[1].name))
            test = exp.Not(this=exp.Paren(this=sqlglot.parse_one(condition, read="sqlite")))
            return exp.Case(ifs=[exp.If(this=test, true=exp.Literal.number(0))], default=call)
        return call

    def _region_column(self, node):
        """(source, Column) when ``node`` is a rewritten reference to a REGION column."""
        if not isinstance(node, exp.Column):
            return None
        source = next((s for s in self.sources if s.alias == node.table), None)
        column = source and source.columns.get(node.name.lower())
        return (source, column) if column is not None and adql_datatype(column) == "REGION" else None

    def _sql_column(self, column, aliases):
        late = column.find_ancestor(exp.Order, exp.Group, exp.Having) is not None
        qualified = any(column.args.get(key) for key in ("table", "db", "catalog"))
        if late and not qualified and column.name.lower() in aliases:
            return exp.Column(this=exp.to_identifier(aliases[column.name.lower()], quoted=True))
        source, definition = self.resolve(column)
        return _column_node(source, definition)

    def _expand_stars(self):
        expanded = []
        for item in self.tree.expressions:
            if _is_star(item):
                expanded.extend(_column_node(source, column) for source in self._star_sources(item)
                                for column in source.table.columns)
            else:
                expanded.append(item)
        self.tree.set("expressions", expanded)

    def sql(self, *, projects, admin, limit):
        """SQLite SQL for this query as run for a user of ``projects``."""
        for source in self.sources:
            source.node.replace(self.database.table_reference(source, projects=projects, admin=admin))
        if limit is not None:
            self.tree.set("limit", exp.Limit(expression=exp.Literal.number(limit)))
        return self.tree.sql(dialect="sqlite")


def _is_star(item):
    """``*`` or ``t.*`` in a select list."""
    return isinstance(item, exp.Star) or (isinstance(item, exp.Column) and isinstance(item.this, exp.Star))


def _column_node(source, column):
    return exp.Column(this=exp.to_identifier(column.name.lower(), quoted=True),
                      table=exp.to_identifier(source.alias))


def _default_name(expression):
    if isinstance(expression, exp.Column):
        return expression.name
    if _is_function(expression):
        if type(expression) in _AGGREGATES:
            return expression.key.lower()
        return _function_call(expression)[0].lower()
    return "expr"


class _Describer:
    """Works out the VOTable FIELD of a select-list expression."""

    def __init__(self, compiler):
        self.compiler = compiler

    def describe(self, node, name):
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Column):
            return dataclasses.replace(self.compiler.resolve(node)[1], name=name)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return Column(name, "char", arraysize="*")
            return Column(name, "long" if node.is_int else "double")
        if type(node) in _AGGREGATES:
            return self._aggregate(node, name)
        if _is_function(node):
            return self._function(node, name)
        if isinstance(node, exp.Neg):
            return self._plain(self.describe(node.this, name))
        if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div)):
            kinds = {self.describe(side, name).datatype for side in (node.this, node.expression)}
            return Column(name, "long" if kinds <= _INTEGER_TYPES else "double")
        if isinstance(node, exp.DPipe):
            return Column(name, "char", arraysize="*")
        return Column(name, "int")      # comparisons and logic: SQLite gives 1 or 0

    @staticmethod
    def _plain(column):
        return Column(column.name, column.datatype, arraysize=column.arraysize, unit=column.unit)

    def _aggregate(self, node, name):
        kind = _AGGREGATES[type(node)]
        if kind == "long":
            return Column(name, "long", ucd="meta.number")
        argument = self.describe(node.this, name)
        if kind == "double":
            return Column(name, "double", unit=argument.unit)
        if isinstance(node, exp.Sum):
            datatype = "long" if argument.datatype in _INTEGER_TYPES else "double"
            return Column(name, datatype, unit=argument.unit)
        return self._plain(argument)

    def _function(self, node, name):
        function, args = _function_call(node)
        kind = _FUNCTIONS[function][3]
        if kind == "same":
            return self._plain(self.describe(args[0], name))
        if kind in ("char", "region"):
            return Column(name, "char", arraysize="*")
        if kind == "distance":
            return Column(name, "double", unit="deg", ucd="pos.angDistance",
                          description="Great-circle distance between two positions")
        if kind in ("coord1", "coord2"):
            return Column(name, "double", unit="deg", ucd="pos.eq.ra" if kind == "coord1" else "pos.eq.dec")
        return Column(name, kind)


# =============================================================================================
# The database
# =============================================================================================

def _sqlite_name(table):
    return re.sub(r"\W", "_", f"{table.schema}_{table.name}".lower())


def _sql_literal(value):
    return "'" + str(value).replace("'", "''") + "'"


def _now_iso():
    """Now in CASDA's timestamp format, which sorts as text: ``2019-06-21T00:49:11.123Z``."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _plain_value(value):
    """A value sqlite3 can bind (numpy scalars, booleans and dates arrive from generators)."""
    if value is None or isinstance(value, (str, float, int, bytes)):
        return int(value) if isinstance(value, bool) else value
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


class TapDatabase:
    """The emulator's TAP tables in SQLite, queried with ADQL.

    Parameters
    ----------
    tables : list of TableDef
        The data tables (``ivoa.obscore``, ``casda.*``).  ``TAP_SCHEMA.schemas``,
        ``.tables``, ``.columns``, ``.keys`` and ``.key_columns`` describing them are added.

    Attributes
    ----------
    tables : list of TableDef
        Every queryable table: the given ones, then the ``TAP_SCHEMA`` ones.

    Notes
    -----
    One SQLite connection serves all threads; a lock lets one query run at a time, while
    parsing and checking (the sqlglot part) runs outside the lock.
    """

    def __init__(self, tables):
        data_tables = list(tables)
        self.tables = data_tables + tap_schema_tables(data_tables)
        self._by_name = self._name_index()
        # re-entrant: a streamed result abandoned mid-way may be finalised by the garbage collector
        # in a thread that holds the lock, and its cursor is closed under the lock
        self._lock = threading.RLock()
        self._caps_ready = set()
        self._connection = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        # ADQL's LIKE is case-sensitive (PostgreSQL at CASDA); SQLite's is not by default.
        self._connection.execute("PRAGMA case_sensitive_like = ON")
        for name, function in _SQL_FUNCTIONS.items():
            self._connection.create_function(name, -1, _sql_function(name, function),
                                             deterministic=name != "adql_rand")
        for table in self.tables:
            self._load(table)

    def _name_index(self):
        index, bare = {}, {}
        for table in self.tables:
            index[table.full_name.lower()] = table
            bare.setdefault(table.name.lower(), []).append(table)
        for name, candidates in bare.items():
            if len(candidates) == 1 and name not in index:
                index[name] = candidates[0]     # an unambiguous bare name also works
        return index

    def _load(self, table):
        name = _sqlite_name(table)
        if table.sqlite_file:
            # a large table stays in its file: SQLite finds unqualified names in attached databases
            self._connection.execute("ATTACH DATABASE ? AS ?", (table.sqlite_file, name + "_file"))
            return
        columns = ", ".join(f'"{c.name.lower()}" {_SQLITE_AFFINITY.get(c.datatype, "TEXT")}'
                            for c in table.columns)
        hidden = [f'"{c.name.lower()}{suffix}" REAL' for c in table.columns if adql_datatype(c) == "REGION"
                  for suffix in _CAP_SUFFIXES]
        columns = ", ".join([columns] + hidden)
        keys = [column.name for column in table.columns]
        # An empty VOTable cell arrives as "": in a numeric column it means NULL.
        slots = ", ".join("?" if c.datatype == "char" else "NULLIF(?, '')" for c in table.columns)
        names = ", ".join(f'"{key.lower()}"' for key in keys)
        insert = f'INSERT INTO "{name}" ({names}) VALUES ({slots})'
        self._connection.execute(f'CREATE TABLE "{name}" ({columns})')
        try:
            self._connection.executemany(insert, ([row.get(key) for key in keys] for row in table.rows))
        except (sqlite3.InterfaceError, sqlite3.ProgrammingError):
            self._connection.execute(f'DELETE FROM "{name}"')
            self._connection.executemany(
                insert, ([_plain_value(row.get(key)) for key in keys] for row in table.rows))

    def _compute_caps(self, table_name, column_name):
        """Fill the hidden bounding-cap columns of one REGION column (once, on first use)."""
        name, column = _sqlite_name(self._by_name[table_name.lower()]), column_name.lower()
        values = self._connection.execute(f'SELECT rowid, "{column}" FROM "{name}" '
                                          f'WHERE "{column}" IS NOT NULL').fetchall()
        updates = [cap + (rowid,) for rowid, text in values if (cap := cap_values(text)) is not None]
        assignments = ", ".join(f'"{column}{suffix}" = ?' for suffix in _CAP_SUFFIXES)
        self._connection.executemany(f'UPDATE "{name}" SET {assignments} WHERE rowid = ?', updates)
        self._caps_ready.add((table_name, column_name))

    def constant_shape(self, sql):
        """The geometry a constant SQLite expression evaluates to (None if NULL or not one)."""
        value = self._run(f"SELECT {sql}")[0][0]
        try:
            return parse_region(value) if isinstance(value, str) else None
        except ValueError:
            return None

    def lookup_table(self, node):
        """The TableDef an ADQL table reference names; AdqlError if none."""
        parts = [part.name for part in (node.args.get("catalog"), node.args.get("db"), node.this) if part]
        written = ".".join(parts)
        table = self._by_name.get(written.lower())
        if table is None:
            raise _interpret_error(f'Unknown table "{written}" !')
        return table

    def table_reference(self, source, *, projects, admin):
        """The SQLite FROM item for ``source``: its table, or its rows visible to this user."""
        table, alias = source.table, exp.TableAlias(this=exp.to_identifier(source.alias))
        name = _sqlite_name(table)
        if admin or not table.release_column:
            return exp.Table(this=exp.to_identifier(name, quoted=True), alias=alias)
        release = f'"{table.release_column.lower()}"'
        visible = f"({release} IS NOT NULL AND {release} <> '' AND {release} <= {_sql_literal(_now_iso())})"
        if projects and table.project_column:
            members = ", ".join(_sql_literal(code) for code in sorted(projects))
            visible = f'(CAST("{table.project_column.lower()}" AS TEXT) IN ({members}) OR {visible})'
        inner = sqlglot.parse_one(f'SELECT * FROM "{name}" WHERE {visible}', read="sqlite")
        return exp.Subquery(this=inner, alias=alias)

    def execute(self, adql, *, maxrec=None, projects=frozenset(), admin=False, stream=False):
        """Run an ADQL query.

        Parameters
        ----------
        adql : str
            The query.
        maxrec : int or None
            Most rows to return; more rows make ``overflow`` True.  None: no limit but TOP.
        projects : frozenset of str
            OPAL codes of the user's projects: their embargoed catalogue rows are visible.
        admin : bool
            An administrator sees every row.
        stream : bool
            ``rows`` is an iterator read from SQLite as it is consumed (flat memory for
            millions of rows); ``overflow`` is known once it is exhausted.

        Returns
        -------
        QueryResult

        Raises
        ------
        AdqlError
            The query is outside the supported subset, names an unknown table, column or
            function, or failed while running (e.g. an invalid geometry).
        """
        if maxrec is not None:
            maxrec = max(0, int(maxrec))
        compiler = _Compiler(self, adql)
        columns = compiler.output_columns()
        compiler.rewrite()
        limit = compiler.top
        if maxrec is not None:
            limit = maxrec + 1 if limit is None else min(limit, maxrec + 1)
        sql = compiler.sql(projects=frozenset(projects or ()), admin=admin, limit=limit)
        table_name = compiler.sources[0].table.full_name if len(compiler.sources) == 1 else None
        if stream:
            result = QueryResult(columns, [], False, table_name)
            cursor, first = self._run(sql, compiler.region_columns, stream=True)
            result.rows = self._streamed(cursor, first, maxrec, result)
            return result
        rows = self._run(sql, compiler.region_columns)
        overflow = maxrec is not None and len(rows) > maxrec
        return QueryResult(columns, rows[:maxrec] if overflow else rows, overflow, table_name)

    def _streamed(self, cursor, batch, maxrec, result):
        """Rows of a streamed query, fetched a batch at a time under the lock (other
        queries run in between); sets ``result.overflow`` on meeting row ``maxrec + 1``."""
        sent = 0
        try:
            while batch:
                for row in batch:
                    if maxrec is not None and sent >= maxrec:
                        result.overflow = True
                        return
                    yield row
                    sent += 1
                with self._lock:
                    batch = cursor.fetchmany(_STREAM_BATCH)
        finally:
            with self._lock:
                cursor.close()

    def _run(self, sql, region_columns=(), stream=False):
        _function_errors.message = None
        with self._lock:
            try:
                for table_name, column_name in region_columns:
                    if (table_name, column_name) not in self._caps_ready:
                        self._compute_caps(table_name, column_name)
                if stream:   # the first rows now, so that errors come before the answer starts
                    cursor = self._connection.execute(sql)
                    return cursor, cursor.fetchmany(_STREAM_BATCH)
                return self._connection.execute(sql).fetchall()
            except sqlite3.Error as exc:
                reason = getattr(_function_errors, "message", None) or str(exc)
                raise AdqlError(f"Unable to run query '{reason}'") from None

