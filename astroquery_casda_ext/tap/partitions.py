"""Partitioned TAP queries: split a SELECT into disjoint ranges, run each part as an async
job on any executor, write it as Parquet, and resume from the verified parts (manifest)."""
import concurrent.futures
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IncompleteResultError, InvalidInputError, PartitionedQueryError, QueryError
from ..writer import (PARTITION_MANIFEST_NAME, FolderLock, atomic_output, is_regular_file, refuse_link,
                      write_bytes)
from .rows import _CHUNK, MAX_RUNNING_JOBS, SERVER_MAX_RECORDS, _pyarrow

__all__ = ["PartitionedResult", "PartTask", "run_part", "split_select", "count", "partition_queries", "partitioned",
           "MANIFEST_NAME"]

MANIFEST_NAME = PARTITION_MANIFEST_NAME

@dataclass(frozen=True)
class PartitionedResult:
    """A Parquet dataset written by `TapClient.partitioned`.

    Attributes
    ----------
    path : pathlib.Path
        The directory: ``part-NNNNN.parquet`` files and the manifest ``_casda_partitions.json``
        (``pyarrow.dataset.dataset(path)`` and ``dask.dataframe.read_parquet(path)`` read it).
    rows : int
    parts : int
    resumed : int
        Parts found written and verified from an earlier run (not asked again).
    """

    path: Path
    rows: int
    parts: int
    resumed: int


# --- ADQL pieces -----------------------------------------------------------------------------

def _masked(adql):
    """``adql`` with string literals, quoted names and parenthesised parts blanked out,
    so that top-level keywords can be found with a regular expression."""
    out, depth, quote = [], 0, None
    for char in adql:
        if quote:
            out.append(" ")
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
            out.append(" ")
        elif char == "(":
            depth += 1
            out.append(" ")
        elif char == ")":
            depth -= 1
            out.append(" ")
        else:
            out.append(char if depth == 0 else " ")
    return "".join(out)


_CLAUSES = re.compile(r"\b(FROM|WHERE|GROUP\s+BY|HAVING|ORDER\s+BY)\b", re.IGNORECASE)


def split_select(adql):
    """(select list, FROM part, WHERE condition or None, ORDER BY tail) of a plain SELECT.

    Raises
    ------
    InvalidInputError
        Not ``SELECT ... FROM ... [WHERE ...] [ORDER BY ...]``, or has TOP, GROUP BY or HAVING
        (a part of such a query is not a part of its result).
    """
    text = adql.strip().rstrip(";")
    masked = _masked(text)
    head = re.match(r"\s*SELECT\s+", masked, re.IGNORECASE)
    marks = {m.group(1).split()[0].upper(): m for m in _CLAUSES.finditer(masked)}
    limited = head and re.match(r"\s*(TOP|DISTINCT)\b", masked[head.end():], re.IGNORECASE)
    if not head or "FROM" not in marks or limited or "GROUP" in marks or "HAVING" in marks:
        raise InvalidInputError("a partitioned or counted query must be 'SELECT ... FROM ... [WHERE ...]' "
                                "without TOP, DISTINCT, GROUP BY or HAVING")
    ends = sorted(m.start() for m in marks.values()) + [len(text)]

    def part(name):
        match = marks.get(name)
        if match is None:
            return None
        return text[match.end():min(end for end in ends if end > match.start())].strip()
    return text[head.end():marks["FROM"].start()].strip(), part("FROM"), part("WHERE"), part("ORDER")


def _and(*conditions):
    return " AND ".join(f"({c})" for c in conditions if c)


def _adql_number(value, integer):
    return str(int(value)) if integer else repr(float(value))


# --- partitioned queries (the functions behind TapClient.count, partition_queries, partitioned) --

def count(client, query):
    """The number of rows of ``query``, by asking CASDA for its ``COUNT(*)``.

    ``query`` must be a plain SELECT (see `split_select`).
    """
    _, source, where, _ = split_select(query)
    adql = f"SELECT COUNT(*) AS n FROM {source}" + (f" WHERE {where}" if where else "")
    return int(client.table(adql)["n"][0])

def partition_queries(client, query, by, parts, bounds=None):
    """The ``parts`` disjoint ADQL queries covering ``query``, split on column ``by``.

    Ranges are equal steps between ``bounds`` (default: the column's MIN and MAX, or
    -90..90 for a declination, ``ucd`` ``pos.eq.dec``); the first part also takes
    values below and NULLs, the last values above, so no row is lost.

    Returns
    -------
    list of str, list of float
        The queries and the edges between them.
    """
    select, source, where, order = split_select(query)
    if not isinstance(by, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", by):
        raise InvalidInputError(f"by={by!r} must be a column name")
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise InvalidInputError(f"parts={parts!r} must be a positive integer")
    template, schema = client.metadata(f"SELECT {by} FROM {source}")
    column = template[template.colnames[0]]
    if column.dtype.kind not in "iuf":
        raise InvalidInputError(f"by={by!r} must be a numeric column (it is {column.dtype})")
    integer = column.dtype.kind in "iu"
    if bounds is None:
        if str(column.meta.get("ucd", "")).startswith("pos.eq.dec"):
            bounds = (-90.0, 90.0)
        else:
            found = client.table(f"SELECT MIN({by}) AS lo, MAX({by}) AS hi FROM {source}"
                               + (f" WHERE {where}" if where else ""), async_job=True)   # a full scan
            if np.ma.is_masked(found["lo"][0]):
                bounds = (0, 0)      # no rows: one range, anything goes
            else:
                bounds = (float(found["lo"][0]), float(found["hi"][0]))
    low, high = (float(value) for value in bounds)
    edges = np.linspace(low, high, parts + 1)[1:-1]
    edges = sorted(set(np.ceil(edges).astype(np.int64).tolist())) if integer else \
        [float(edge) for edge in edges]
    ranges = [None] + list(edges) + [None]
    queries = []
    for start, stop in zip(ranges[:-1], ranges[1:]):
        conditions = []
        if start is not None:
            conditions.append(f"{by} >= {_adql_number(start, integer)}")
        if stop is not None:
            conditions.append(f"{by} < {_adql_number(stop, integer)}")
        condition = " AND ".join(conditions) or None
        if start is None and condition:
            condition = f"{condition} OR {by} IS NULL"
        queries.append(f"SELECT {select} FROM {source} WHERE " + (_and(where, condition) or "1=1")
                       + (f" ORDER BY {order}" if order else ""))
    return queries, edges

def partitioned(client, query, *, by, parts, output, bounds=None, executor=None,
                max_running=MAX_RUNNING_JOBS, part_retries=2, verify_counts=False, progress=None):
    """See `~astroquery_casda_ext.CasdaClass.query_tap_partitioned`."""
    _pyarrow()     # the clear "install pyarrow" error before anything else
    directory = Path(output)
    if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
        raise InvalidInputError(f"max_running={max_running!r} must be a positive integer")
    max_running = min(max_running, MAX_RUNNING_JOBS)
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise InvalidInputError(f"output {str(directory)!r} must be a directory (not a file or a link)")
    directory.mkdir(parents=True, exist_ok=True)
    # one run per folder (two runs would write the same parts and manifest); no waiting
    with FolderLock(directory, wait=False, what="partitioned query"):
        return _partitioned(client, query, by, parts, directory, bounds, executor, max_running, part_retries,
                            verify_counts, progress)


def _partitioned(client, query, by, parts, directory, bounds, executor, max_running, part_retries,
                 verify_counts, progress):
    manifest = _Manifest.open(directory, query, by, parts, bounds)
    if manifest.edges is None:
        queries, edges = client.partition_queries(query, by, parts, bounds)
        manifest.start(queries, edges)
    schema = client.metadata(manifest.queries[0], async_job=True)[1]
    manifest.check_columns(schema)
    todo = [index for index in range(len(manifest.queries)) if not manifest.verified(index)]
    manifest.forget(todo)      # a part not verified is not finished, whatever an earlier run wrote
    resumed = len(manifest.queries) - len(todo)
    show = sys.stderr.isatty() if progress is None else progress
    own = executor is None
    executor = executor or concurrent.futures.ThreadPoolExecutor(max_workers=max_running)
    attempts = {index: 0 for index in todo}
    failed, running = {}, {}
    schema_bytes = schema.serialize().to_pybytes()
    try:
        pending = list(todo)
        while pending or running:
            while pending and len(running) < max_running:
                index = pending.pop(0)
                attempts[index] += 1
                task = PartTask(client, index, manifest.queries[index], str(directory / _part_name(index)),
                                schema_bytes, verify_counts)
                running[executor.submit(run_part, task)] = index
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                index = running.pop(future)
                try:
                    written = future.result()
                except Exception as exc:          # one part's failure must not stop the others
                    final = isinstance(exc, (QueryError, InvalidInputError))   # trying again won't help
                    if attempts[index] <= part_retries and not final:
                        pending.insert(0, index)  # at once, alone; bounded by part_retries
                    else:
                        failed[index] = exc
                    continue
                manifest.done(index, written)
                if show:
                    print(f"part {index + 1}/{len(manifest.queries)}: {written.rows:,} rows "
                          f"({manifest.finished} of {len(manifest.queries)} done)", file=sys.stderr)
    finally:
        if own:
            executor.shutdown(wait=True, cancel_futures=True)
    if failed:
        first = next(iter(failed.values()))
        raise PartitionedQueryError(
            f"{len(failed)} of {len(manifest.queries)} parts failed (first: {first}); the "
            f"{manifest.finished} finished parts are kept in {directory}: call again to resume",
            failed=failed, url=client.tap_url) from first
    return PartitionedResult(directory, manifest.rows, len(manifest.queries), resumed)


def _part_name(index):
    return f"part-{index:05d}.parquet"


# --- one part (runs on any executor) ---------------------------------------------------------

@dataclass
class PartTask:
    """Everything one part needs (picklable with its client, for process executors)."""

    client: object   #: the `~astroquery_casda_ext.tap.TapClient` that runs the part
    index: int
    query: str
    path: str
    schema: bytes
    verify_count: bool


@dataclass(frozen=True)
class PartWritten:
    """What `run_part` wrote: its rows, bytes and SHA-256 (recorded in the partition manifest)."""

    rows: int
    size: int
    sha256: str


def _sha256(stream):
    """SHA-256 and size of everything in a seekable binary file, read from the start."""
    digest, size = hashlib.sha256(), 0
    stream.seek(0)
    while block := stream.read(_CHUNK):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def run_part(task):
    """Run one part as an async TAP job and write it as Parquet through the one safe writer.

    Returns
    -------
    PartWritten
        Rows, size and SHA-256 of the part as written (read back from the claimed temporary
        before it is renamed, so the hash is of the bytes that became the part).

    Raises
    ------
    IncompleteResultError
        The part stopped at CASDA's row limit (split into more parts) or broke off.
    UnsafeFilenameError
        A link (or anything but a regular file) is where the part goes.
    """
    pa = _pyarrow()
    client = task.client
    schema = pa.ipc.read_schema(pa.py_buffer(task.schema))
    # a part found unverified (damaged, changed) is replaced; a link there is refused by the writer
    with atomic_output(Path(task.path), overwrite=True) as sink:
        response, url, job_url = client._answer(task.query, SERVER_MAX_RECORDS, async_job=True)
        try:
            with response, pa.parquet.ParquetWriter(sink, schema, compression="zstd") as writer:
                for batch in client._batches(response, url, schema, SERVER_MAX_RECORDS, None, tally := {},
                                             lean=True):
                    writer.write(batch)
            rows, truncated = tally["rows"], tally["truncated"]
            if truncated:
                raise IncompleteResultError(f"part {task.index} reached CASDA's {SERVER_MAX_RECORDS:,}-row "
                                            "limit: use more parts", url=url)
            if task.verify_count and client.count(task.query) != rows:
                raise IncompleteResultError(f"part {task.index}: {rows:,} rows received but COUNT(*) "
                                            "differs", url=url)
        finally:
            client._delete(job_url)
        sink.flush()
        digest, size = _sha256(sink)
    return PartWritten(rows, size, digest)


def _columns(schema):
    """The columns of a part schema as ``[[name, type], ...]`` (for the fingerprint)."""
    return [[field.name, str(field.type)] for field in schema]


class _Manifest:
    """``_casda_partitions.json``: what the folder holds and how far it got.

    The query, the partitioning (``by``, ``parts``, ``bounds``) and, once known, the
    columns, with a SHA-256 ``fingerprint`` of them all: a run asking anything else of
    the folder is refused, naming what differs.  Each written part's rows, size and
    SHA-256; a rerun trusts a part only when its bytes hash to what was recorded.  Saved
    through the one safe writer after each part.
    """

    VERSION = 2

    def __init__(self, directory, data):
        self.directory, self.data = directory, data
        self.path = directory / MANIFEST_NAME

    @staticmethod
    def _identity(query, by, parts, bounds):
        return {"query": query, "by": by, "parts": parts,
                "bounds": None if bounds is None else [float(value) for value in bounds]}

    @classmethod
    def open(cls, directory, query, by, parts, bounds=None):
        """The folder's manifest, checked against this request, or a new one for an empty folder.

        Raises
        ------
        InvalidInputError
            The folder holds another query (the message names what differs), its manifest is
            damaged (the message names the file), or it is not empty and holds no manifest.
        UnsafeFilenameError
            The manifest is a symbolic link.
        """
        path = directory / MANIFEST_NAME
        identity = cls._identity(query, by, parts, bounds)
        refuse_link(path)
        if path.exists():
            data = cls._read(path)
            differing = [key for key in identity if key in data and data[key] != identity[key]]
            if data.get("bounds") is None and identity["bounds"] is None:
                differing = [key for key in differing if key != "bounds"]
            if differing:
                what = "; ".join(f"{key}: {data[key]!r} there, {identity[key]!r} now" for key in differing)
                raise InvalidInputError(f"{directory} holds another partitioned query ({what}): use another "
                                        "directory, or remove this one to start again")
            data.update(identity)
            return cls(directory, data)
        if any(not entry.name.startswith(".") for entry in directory.iterdir()):
            raise InvalidInputError(f"{directory} is not empty and holds no partitioned query: use an empty "
                                    "or new directory")
        return cls(directory, dict(identity, version=cls.VERSION, edges=None, queries=None, columns=None,
                                   fingerprint=None, written={}))

    @staticmethod
    def _read(path):
        """The manifest's content, checked entry by entry; a damaged one names the file."""
        def damaged(why):
            return InvalidInputError(f"the partition manifest {path} is damaged ({why}): remove the "
                                     "directory (or that file and the parts) to start again")
        try:
            with open(path, "rb") as stream:       # refuse_link checked it is no link
                data = json.loads(stream.read(64 << 20))
        except (OSError, ValueError) as exc:
            raise damaged(f"not JSON: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise damaged("not a JSON object")
        for key, kinds in (("query", str), ("by", str), ("parts", int), ("written", dict),
                           ("edges", (list, type(None))), ("queries", (list, type(None)))):
            if not isinstance(data.get(key), kinds):
                raise damaged(f"{key!r} is missing or of the wrong type")
        queries = data["queries"]
        if queries is not None and (not all(isinstance(text, str) for text in queries)
                                    or len(queries) != data["parts"]):
            raise damaged("'queries' is not one query per part")
        for index, entry in data["written"].items():
            if (not str(index).isdigit() or not isinstance(entry, dict)
                    or not isinstance(entry.get("rows"), int) or not isinstance(entry.get("bytes"), int)):
                raise damaged(f"the entry of part {index!r} is not rows and bytes")
        if not isinstance(data.get("columns"), (list, type(None))):
            raise damaged("'columns' is not a list")
        data.setdefault("columns", None)
        data.setdefault("bounds", None)
        return data

    @property
    def edges(self):
        return self.data["edges"]

    @property
    def queries(self):
        return self.data["queries"]

    def start(self, queries, edges):
        self.data.update(queries=queries, edges=edges)
        self._save()

    def check_columns(self, schema):
        """Record the columns (and the fingerprint), or refuse if the folder's parts have others."""
        columns = _columns(schema)
        if self.data.get("columns") is not None and self.data["columns"] != columns:
            raise InvalidInputError(f"{self.directory} holds parts with other columns "
                                    f"({self.data['columns']!r} there, {columns!r} now): use another directory")
        if self.data.get("columns") is None or self.data.get("fingerprint") is None:
            self.data["columns"] = columns
            self._save()

    def _fingerprint(self):
        keys = ("query", "by", "parts", "bounds", "columns")
        text = json.dumps({key: self.data.get(key) for key in keys}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def verified(self, index):
        """Whether part ``index`` was written and still is: its bytes hash to what was recorded."""
        entry = self.data["written"].get(str(index))
        path = self.directory / _part_name(index)
        if entry is None or not entry.get("sha256") or not is_regular_file(path):
            return False
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        except OSError:
            return False
        with os.fdopen(fd, "rb") as stream:
            digest, size = _sha256(stream)
        return (digest, size) == (entry["sha256"], entry["bytes"])

    def forget(self, indices):
        """Drop the entries of parts about to be written again (saved with the next part)."""
        for index in indices:
            self.data["written"].pop(str(index), None)

    def done(self, index, written):
        self.data["written"][str(index)] = {"rows": written.rows, "bytes": written.size,
                                            "sha256": written.sha256}
        self._save()

    @property
    def finished(self):
        return len(self.data["written"])

    @property
    def rows(self):
        return sum(entry["rows"] for entry in self.data["written"].values())

    def _save(self):
        self.data["version"] = self.VERSION
        self.data["fingerprint"] = self._fingerprint()
        write_bytes(self.path, json.dumps(self.data, indent=1).encode("utf-8"), overwrite=True,
                    package_file=True)
