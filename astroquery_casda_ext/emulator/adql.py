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
pre-filter that use them in ``adql_functions.py``, the parsing, checks and translation in
``adql_compiler.py``; this module is the database that runs them.
"""
import re
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlglot
from sqlglot import exp

from .adql_compiler import SQLITE_AFFINITY, AdqlError, Compiler, interpret_error
from .adql_functions import CAP_SUFFIXES, SQL_FUNCTIONS, function_errors, sql_function
from .geometry import cap_values, parse_region
from .schema import Column, adql_datatype, tap_schema_tables

__all__ = ["AdqlError", "QueryResult", "TapDatabase"]

#: Rows fetched from SQLite at a time by a streamed query.
_STREAM_BATCH = 5000


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
        for name, function in SQL_FUNCTIONS.items():
            self._connection.create_function(name, -1, sql_function(name, function),
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
        columns = ", ".join(f'"{c.name.lower()}" {SQLITE_AFFINITY.get(c.datatype, "TEXT")}'
                            for c in table.columns)
        hidden = [f'"{c.name.lower()}{suffix}" REAL' for c in table.columns if adql_datatype(c) == "REGION"
                  for suffix in CAP_SUFFIXES]
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
        assignments = ", ".join(f'"{column}{suffix}" = ?' for suffix in CAP_SUFFIXES)
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
            raise interpret_error(f'Unknown table "{written}" !')
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
        compiler = Compiler(self, adql)
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
        function_errors.message = None
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
                reason = getattr(function_errors, "message", None) or str(exc)
                raise AdqlError(f"Unable to run query '{reason}'") from None

