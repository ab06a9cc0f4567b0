"""ADQL to SQLite: parsing, the checks of the supported subset, name resolution, and the
description of the result's columns.

sqlglot parses the ADQL (its T-SQL dialect reads ``SELECT TOP n``); the tree is checked
against the subset ``adql.py`` documents, anything else is an `AdqlError` in CASDA's
words; tables and columns are resolved case-insensitively and rewritten to quoted SQLite
names; embargoed tables become filtered sub-queries (through the database's
``table_reference``); the `Compiler` writes SQLite SQL and says what each output
column is.  Running it is ``adql.TapDatabase``'s.
"""
import dataclasses
import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from .adql_functions import ADQL_FUNCTIONS, AGGREGATES, FUNCTION_CLASSES, REFUSED_FUNCTIONS, cap_condition
from .schema import Column, TableDef, adql_datatype

__all__ = ["AdqlError", "Compiler", "SQLITE_AFFINITY", "interpret_error"]


class AdqlError(Exception):
    """A query was refused or failed; ``message`` is the text for ``QUERY_STATUS=ERROR``."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


#: ADQL function name -> (SQLite function, least and most arguments, result kind).
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
SQLITE_AFFINITY = {"double": "REAL", "float": "REAL", "short": "INTEGER", "int": "INTEGER",
                    "long": "INTEGER", "boolean": "INTEGER"}


def interpret_error(reason):
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
        raise interpret_error("LOG takes one argument; use LOG10 for decimal logarithms")
    name = FUNCTION_CLASSES.get(type(node))
    if name is None:
        raise interpret_error(f'Unknown function "{node.sql_name()}"')
    args = []
    for key in node.arg_types:
        value = node.args.get(key)
        args.extend(item for item in (value if isinstance(value, list) else [value])
                    if isinstance(item, exp.Expression))
    return name, args


def _check_function(node):
    if type(node) in AGGREGATES:
        return
    name, args = _function_call(node)
    if name in REFUSED_FUNCTIONS:
        raise interpret_error(f'Function "{name}" is not supported by this service')
    if name not in ADQL_FUNCTIONS:
        raise interpret_error(f'Unknown function "{name}"')
    _, least, most, _ = ADQL_FUNCTIONS[name]
    if not least <= len(args) <= most or (name == "DISTANCE" and len(args) == 3):
        raise interpret_error(f'Wrong number of arguments for function "{name}": {len(args)}')


def _is_function(node):
    # sqlglot makes some operators (AND, OR...) Func subclasses too: those are not calls.
    return isinstance(node, (exp.Func, exp.Mod)) and type(node) not in _ALLOWED_NODES


def _check_node(node):
    """Refuse any construct outside the supported ADQL subset."""
    if _is_function(node):
        return _check_function(node)
    for kind, message in _COMPOUND_MESSAGES.items():
        if isinstance(node, kind):
            raise interpret_error(message)
    if type(node) not in _ALLOWED_NODES:
        raise interpret_error(f'Unsupported construct "{_snippet(node)}"')
    if isinstance(node, exp.Select) and node.parent is not None:
        raise interpret_error("sub-queries are not supported by this service")
    if isinstance(node, exp.Is) and not isinstance(node.expression, exp.Null):
        raise interpret_error("IS may only be followed by NULL or NOT NULL")
    if isinstance(node, exp.Join):
        _check_join(node)
    if isinstance(node, exp.Limit) and any(value for key, value in node.args.items() if key != "expression"):
        raise interpret_error("TOP takes a plain row count")
    if isinstance(node, exp.TableAlias) and node.args.get("columns"):
        raise interpret_error("column aliases on tables are not supported by this service")
    if isinstance(node, exp.Distinct) and node.args.get("on"):
        raise interpret_error("DISTINCT ON is not supported by this service")


def _check_join(join):
    if join.args.get("using") or join.args.get("method"):
        raise interpret_error("JOIN ... USING and NATURAL JOIN are not supported; use JOIN ... ON")
    side = (join.args.get("side") or "").upper()
    if side not in ("", "LEFT"):
        raise interpret_error(f"{side} JOIN is not supported by this service")
    if not isinstance(join.this, exp.Table):
        raise interpret_error("sub-queries are not supported by this service")


def _parse(adql):
    """Parse ``adql`` into one SELECT tree, or raise AdqlError."""
    if not isinstance(adql, str) or not adql.strip():
        raise AdqlError("Missing QUERY parameter")
    if "\x00" in adql:
        raise interpret_error("the query contains a NUL character")
    try:
        statements = [tree for tree in sqlglot.parse(adql, read="tsql") if tree is not None]
    except SqlglotError as exc:
        raise interpret_error(_parse_message(exc)) from None
    if len(statements) != 1:
        raise interpret_error("only one statement may be sent at a time")
    tree = statements[0]
    if not isinstance(tree, exp.Select):
        kind = "UNION" if isinstance(tree, exp.Union) else tree.key.upper()
        raise interpret_error(f"only SELECT queries are allowed, not {kind}")
    if _from(tree) is None:
        raise interpret_error("a FROM clause is required")
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
        name = FUNCTION_CLASSES.get(node_class, missing.group(1).upper())
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


class Compiler:
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
                raise interpret_error("sub-queries are not supported by this service")
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
            raise interpret_error("TOP takes a whole number of rows")
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
            raise interpret_error(f'Unknown column "{written}" !')
        if len(matches) > 1:
            raise interpret_error(f'Column name "{written}" is ambiguous; qualify it with a table name')
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
            raise interpret_error(f'Unknown table "{qualifier}" !')
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
            if _is_function(node) and type(node) not in AGGREGATES:
                name, args = _function_call(node)
                call = exp.Anonymous(this=ADQL_FUNCTIONS[name][0], expressions=args)
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
            condition = shape and cap_condition(column.table, region[1].name.lower(), shape)
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
        if type(expression) in AGGREGATES:
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
        if type(node) in AGGREGATES:
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
        kind = AGGREGATES[type(node)]
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
        kind = ADQL_FUNCTIONS[function][3]
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
