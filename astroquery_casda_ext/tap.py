"""Catalogue-scale TAP: typed tables from CASDA's CSV, results streamed to files at flat
memory, and queries split into resumable parallel parts.

Why not the VOTable: astropy reads CASDA's fixed-width text columns (``arraysize="255"``,
``"2000"``) into 4-byte-per-character arrays of that width, so a 100 000-row ObsCore
result costs gigabytes; and its TABLEDATA parser is many times slower than a CSV parser.
So a result is read as CASDA's CSV with pyarrow, the columns typed from the service's
own metadata (the FIELDs of the same query run with ``MAXREC=0``).

CASDA's CSV (``casda_vo_tools`` ``CsvTsvResultsExtractor`` and ``ResultsExtractor``):

* header names are lower-cased (the FIELDs give the real names, matched by position);
* rows end in ``\\r\\n``; a cell holding the separator, ``"`` or a newline is wrapped in
  ``"..."`` with inner quotes **not** doubled, but every cell is XML-escaped first
  (``&quot;``, ``&amp;``, ``&#233;``...), so no raw quote is ever inside a value;
* there is **no** end marker, no OVERFLOW, no error text: a result cut at MAXREC or broken
  off looks complete.  We ask for ``MAXREC = limit + 1`` and count, and we require the
  body to end with ``\\r\\n``.

`TapClient` does the work; `~astroquery_casda_ext.CasdaClass.query_tap` (``output=``, ``result_format=``) and
`~astroquery_casda_ext.CasdaClass.query_tap_partitioned` are its façade.  pyarrow is an optional dependency
(``pip install astroquery_casda_ext[parquet]``).
"""
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import re
import sys
import threading
import time as _time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from astropy.io.votable import parse as parse_votable
from astropy.table import MaskedColumn, Table

from .credentials import AuthSession   # re-exported: the session TapClient is given
from .discovery import _query_status, _repair_units
from .errors import (IncompleteResultError, IncompleteResultWarning, InvalidInputError,
                     PartitionedQueryError, QueryError, ServiceError, redact_url)
from .discovery import _result_url, _tap_result_href
from .jobs import is_final, parse_job_document
from .writer import (PARTITION_MANIFEST_NAME, FolderLock, atomic_output, is_regular_file, refuse_link,
                     write_bytes)

__all__ = ["TapClient", "AuthSession", "StreamedResult", "PartitionedResult", "relaxed_votable",
           "read_casda_csv", "split_select", "SERVER_MAX_RECORDS", "MAX_RUNNING_JOBS", "OUTPUT_FORMATS"]

#: CASDA's ``tap.max.records``: the most rows any query returns (protocol section 8.1).
SERVER_MAX_RECORDS = 20_000_000
#: CASDA's ``tap.maxRunningJobs``: async jobs one may run at once.
MAX_RUNNING_JOBS = 4
#: Output formats by file suffix.
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".ecsv": "ecsv",
                  ".xml": "votable", ".vot": "votable", ".votable": "votable"}
MANIFEST_NAME = PARTITION_MANIFEST_NAME
_CHUNK = 1 << 20


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.csv  # noqa: F401
        import pyarrow.compute  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError("catalogue-scale TAP needs pyarrow: pip install 'astroquery_casda_ext[parquet]'") \
            from None
    return pyarrow


# --- the VOTable, with text columns as long as what they hold ------------------------------

_FIELD_TAG = re.compile(rb"<FIELD\b[^>]*>")
_CHAR_TYPE = re.compile(rb'\bdatatype\s*=\s*["\'](?:char|unicodeChar)["\']')
_FIXED_SIZE = re.compile(rb'(\barraysize\s*=\s*["\'])\d+(["\'])')


def _relax_field(match):
    tag = match.group()
    return _FIXED_SIZE.sub(rb"\g<1>*\g<2>", tag) if _CHAR_TYPE.search(tag) else tag


def relaxed_votable(source):
    """Parse a VOTable with its fixed-width text columns read as variable length.

    astropy stores ``char`` FIELDs of ``arraysize="255"`` as 255 four-byte characters per
    cell, whatever the cell holds; rewriting the arraysize to ``*`` before parsing (the
    parser has no option for it) keeps each cell as long as its text.

    Parameters
    ----------
    source : bytes or iterable of bytes
        The whole document, or its chunks (joined: astropy's parser needs a seekable file;
        the raw bytes are a small fraction of what fixed widths would cost).

    Returns
    -------
    ``astropy.io.votable.tree.VOTableFile``
    """
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else b"".join(source)
    head_end = data.find(b"<DATA")
    head_end = len(data) if head_end < 0 else head_end
    data = _FIELD_TAG.sub(_relax_field, data[:head_end]) + data[head_end:]
    with warnings.catch_warnings():
        from astropy.io.votable.exceptions import VOWarning
        warnings.simplefilter("ignore", VOWarning)
        return parse_votable(io.BytesIO(data))   # astropy needs a seekable file


# --- CASDA's CSV ---------------------------------------------------------------------------

_ARROW_TYPES = {"boolean": "bool_", "unsignedByte": "uint8", "short": "int16", "int": "int32",
                "long": "int64", "float": "float32", "double": "float64"}
_ENTITY = re.compile(r"&(?:#(\d+)|#[xX]([0-9a-fA-F]+)|(lt|gt|quot|apos|amp));")
_NAMED = {"lt": "<", "gt": ">", "quot": '"', "apos": "'", "amp": "&"}


def _entity(match):
    decimal, hexadecimal, name = match.groups()
    if name:
        return _NAMED[name]
    return chr(int(decimal) if decimal else int(hexadecimal, 16))


def _xml_unescape(text):
    return _ENTITY.sub(_entity, text) if text and "&" in text else text


def _unescape_strings(array):
    """CASDA XML-escapes every CSV cell (``ResultsExtractor.getFieldValue``): undo it."""
    pa = _pyarrow()
    pc = pa.compute
    if not pc.any(pc.match_substring(array, "&")).as_py():
        return array
    numeric = pc.match_substring(array, "&#")
    named = array
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&")):
        named = pc.replace_substring(named, entity, char)   # &amp; last: "&amp;lt;" stays "&lt;"
    if not pc.any(numeric).as_py():
        return named
    # &#N; needs chr(): those few cells go through Python, whole (one pass, no double unescaping)
    exact = pa.array([_xml_unescape(value) if flag else None
                      for value, flag in zip(array.to_pylist(), numeric.to_pylist())], pa.string())
    return pc.if_else(numeric, exact, named)


class _BodyReader(io.RawIOBase):
    """A streamed HTTP body as a file: counts bytes, remembers how it ended, and turns a
    transfer that breaks off into `IncompleteResultError`."""

    def __init__(self, response, url, progress=None):
        self._chunks = response.iter_content(_CHUNK)
        self._url = url
        self._buffer = b""
        self._offset = 0            # into _buffer: slicing a 1 MB chunk per small read would copy it
        self.bytes_read = 0
        self.tail = b""
        self.progress = progress

    def readable(self):
        return True

    def readinto(self, target):
        if self._offset >= len(self._buffer):
            self._buffer, self._offset = b"", 0
            try:
                self._buffer = next(self._chunks, b"")
            except (requests.RequestException, OSError) as exc:
                raise IncompleteResultError(
                    f"CASDA's TAP answer from {redact_url(self._url)} broke off after {self.bytes_read:,} "
                    f"bytes ({type(exc).__name__}); nothing was kept: run the query again",
                    url=self._url) from exc
            if self._buffer:
                self.bytes_read += len(self._buffer)
                self.tail = (self.tail + self._buffer[-2:])[-2:]
                if self.progress is not None:
                    self.progress.update(bytes_read=self.bytes_read)
        size = min(len(target), len(self._buffer) - self._offset)
        target[:size] = memoryview(self._buffer)[self._offset:self._offset + size]
        self._offset += size
        return size

    def at_end(self):
        """Whether the body has nothing more."""
        if self._offset >= len(self._buffer):
            self.readinto(bytearray(0))
        return self._offset >= len(self._buffer)

    def readline_bytes(self):
        """The first line (the header), read before the CSV parser takes over."""
        line = b""
        while b"\n" not in line and not self.at_end():
            cut = self._buffer.find(b"\n", self._offset)
            end = len(self._buffer) if cut < 0 else cut + 1
            line += self._buffer[self._offset:end]
            self._offset = end
        return line


class _PacedReader(io.BufferedReader):
    """The body as pyarrow's CSV reader reads it, at most ``ahead`` blocks beyond the batches
    it has handed back.

    Why: pyarrow's streaming CSV reader reads up to 32 blocks ahead on its I/O thread (a
    fixed queue, not an option), held as Python bytes outside its memory pool; when CASDA
    sends faster than rows are parsed and written, that queue fills, and several parts at
    once hold 32 blocks each.  pyarrow turns each block read into one batch, so a read
    waits while ``ahead`` blocks are still unparsed.  The wait is bounded (``patience``
    seconds): should a block ever give no batch, reading goes on, as without pacing.
    """

    def __init__(self, raw, buffer_size, ahead, patience=1.0):
        super().__init__(raw, buffer_size)
        self._ahead, self._patience = ahead, patience
        self._blocks = self._batches = 0
        self._flow = threading.Condition()
        self._released = False

    def read(self, size=-1):
        with self._flow:
            self._flow.wait_for(lambda: self._released or self._blocks - self._batches < self._ahead,
                                timeout=self._patience)
            self._blocks += 1
        return super().read(size)

    def batch_done(self):
        """One batch was handed back: one block less is waiting to be parsed."""
        with self._flow:
            self._batches += 1
            self._flow.notify_all()

    def release(self):
        """No more pacing (the reader is done with, or given up)."""
        with self._flow:
            self._released = True
            self._flow.notify_all()


def _fields_of(votable):
    """(astropy Table with no rows, list of FIELDs) of a parsed result VOTable."""
    resources = [res for res in votable.resources if res.tables]
    if not resources:
        raise ServiceError("CASDA's TAP answer has no result table")
    table = resources[0].tables[0]
    return table.to_table(use_names_over_ids=True), list(table.fields)


def _arrow_schema(fields):
    pa = _pyarrow()
    items = []
    for field in fields:
        kind = _ARROW_TYPES.get(field.datatype)
        arrow_type = getattr(pa, kind)() if kind and field.arraysize in (None, "1") else pa.string()
        meta = {key: str(value) for key, value in (("unit", field.unit), ("ucd", field.ucd),
                                                    ("description", field.description)) if value}
        items.append(pa.field(field.name, arrow_type, metadata=meta or None))
    return pa.schema(items)


def read_casda_csv(stream, schema, *, separator=",", block_size=1 << 20, use_threads=True):
    """Record batches of a CASDA CSV/TSV body (after its header line), typed by ``schema``.

    Empty cells of numeric and boolean columns are nulls, as are ``NaN`` floats (astropy's
    VOTable reader masks those too); text cells are never null (an empty VOTable cell is
    an empty string) and are XML-unescaped.  pyarrow reads up to 32 blocks of ``block_size``
    ahead of the parser unless ``stream`` paces it (see ``_PacedReader``).
    """
    pa = _pyarrow()
    reader = pa.csv.open_csv(
        stream,
        read_options=pa.csv.ReadOptions(column_names=schema.names, block_size=block_size,
                                        use_threads=use_threads),
        parse_options=pa.csv.ParseOptions(delimiter=separator, double_quote=False, newlines_in_values=True),
        convert_options=pa.csv.ConvertOptions(column_types={f.name: f.type for f in schema},
                                              null_values=["", "NaN"], strings_can_be_null=False,
                                              quoted_strings_can_be_null=False))
    strings = [index for index, field in enumerate(schema) if pa.types.is_string(field.type)]
    for batch in reader:
        if strings:
            columns = list(batch.columns)
            for index in strings:
                columns[index] = _unescape_strings(columns[index])
            batch = pa.RecordBatch.from_arrays(columns, schema=schema)
        yield batch.cast(schema) if batch.schema != schema else batch


def astropy_table(arrow_table, template):
    """An astropy Table from an arrow table, with the metadata of ``template`` (the
    VOTable path's empty table): same names, dtypes, units, descriptions and masks."""
    columns = []
    for name, column in zip(template.colnames, arrow_table.columns):
        like = template[name]
        array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
        mask = array.is_null().to_numpy(zero_copy_only=False)
        if like.dtype.kind == "f":
            data = array.fill_null(np.nan).to_numpy(zero_copy_only=False)
        elif like.dtype.kind in "iub":
            data = array.fill_null(False if like.dtype.kind == "b" else 0).to_numpy(zero_copy_only=False)
        else:
            data = array.to_numpy(zero_copy_only=False).astype(object)
        columns.append(MaskedColumn(data.astype(like.dtype, copy=False), mask=mask, name=name,
                                    unit=like.unit, description=like.description, format=like.format,
                                    meta=like.meta))
    return Table(columns, meta=dict(template.meta))


# --- progress --------------------------------------------------------------------------------

class _Progress:
    """``rows, bytes`` on one line of stderr, at most twice a second."""

    def __init__(self, label, stream=None):
        self.label, self.stream = label, stream or sys.stderr
        self.rows = self.bytes_read = 0
        self._shown = 0.0

    def update(self, rows=None, bytes_read=None):
        self.rows = self.rows if rows is None else rows
        self.bytes_read = self.bytes_read if bytes_read is None else bytes_read
        if _time.monotonic() - self._shown >= 0.5:
            self._show("\r")

    def _show(self, end):
        self._shown = _time.monotonic()
        self.stream.write(f"{end}{self.label}: {self.rows:,} rows, {self.bytes_read / 1e6:,.1f} MB")
        self.stream.flush()

    def close(self):
        self._show("\r")
        self.stream.write("\n")
        self.stream.flush()


# --- results ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamedResult:
    """What `TapClient.stream_to` wrote.

    Attributes
    ----------
    path : pathlib.Path
    rows : int
        Rows written.
    bytes_read : int
        Bytes of the answer received.
    complete : bool
        False when the result stopped at ``maxrec`` (an `IncompleteResultWarning` was issued).
    """

    path: Path
    rows: int
    bytes_read: int
    complete: bool


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


def _check_output(path):
    """The output's path and format; whether it may be written is the writer's to say."""
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"output {str(path)!r}: unknown format; use one of "
                                f"{', '.join(sorted(OUTPUT_FORMATS))}")
    if path.is_dir() and not path.is_symlink():
        raise InvalidInputError(f"output {str(path)!r} is a directory")
    return path, fmt


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


# --- the client ------------------------------------------------------------------------------

class TapClient:
    """Large TAP results from CASDA, typed, streamed, and in parallel parts.

    Parameters
    ----------
    session : AuthSession
        What the requests go through (the façade's session, credentials per URL).
    tap_url : str
        The TAP base (``.../casda_vo_tools/tap`` or the proxy's).
    timeout : float
        Seconds to wait for a connection and for each chunk of an answer.
    poll_first, poll_cap : float
        First and longest pause between looks at an async job.
    job_timeout : float
        Seconds an async job may take.
    sleep : callable
        Injected by tests.
    """

    #: Bytes of CSV parsed at a time (1 MiB parses as fast as larger blocks).
    block_size = 1 << 20
    #: The same for each part of a partitioned query (up to 4 run at once).
    part_block_size = 1 << 20
    #: Blocks read ahead of the parser (see ``_PacedReader``): memory per running stream is
    #: a small multiple of ``block_size`` (unpaced, pyarrow reads up to 32 blocks ahead).
    blocks_ahead = 3

    def __init__(self, session, tap_url, *, timeout=60.0, poll_first=0.2, poll_cap=5.0, job_timeout=36000.0,
                 sleep=_time.sleep):
        self.session = session
        self.tap_url = tap_url.rstrip("/")
        self.timeout = timeout
        self.poll_first, self.poll_cap, self.job_timeout = poll_first, poll_cap, job_timeout
        self._sleep = sleep

    # --- requests

    def _params(self, query, fmt, maxrec):
        params = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, "FORMAT": fmt}
        if maxrec is not None:
            params["MAXREC"] = str(maxrec)
        return params

    def _sync(self, query, fmt, maxrec):
        url = self.tap_url + "/sync"
        try:
            response = self.session.post(url, data=self._params(query, fmt, maxrec), stream=True,
                                         timeout=self.timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise ServiceError(f"CASDA TAP at {redact_url(url)} failed: {exc}", url=url) from exc
        return response, url

    def _async(self, query, fmt, maxrec):
        """Submit, run and wait for an async job; (result response, job URL)."""
        url = self.tap_url + "/async"
        try:
            created = self.session.post(url, data=self._params(query, fmt, maxrec), allow_redirects=False,
                                        timeout=self.timeout)
            created.raise_for_status()
            job_url = created.headers.get("Location")
            if created.status_code != 303 or not job_url:
                raise ServiceError(f"CASDA's TAP did not create a job (HTTP {created.status_code})", url=url,
                                   status=created.status_code)
            job_url = job_url.rstrip("/")
            self.session.post(job_url + "/phase", data={"PHASE": "RUN"}, allow_redirects=False,
                              timeout=self.timeout).raise_for_status()
            deadline, delay = _time.monotonic() + self.job_timeout, self.poll_first
            while True:
                answer = self.session.get(job_url, timeout=self.timeout)
                answer.raise_for_status()
                document = parse_job_document(answer.content)
                if is_final(document.phase):
                    break
                if _time.monotonic() + delay > deadline:
                    raise ServiceError(f"TAP job {redact_url(job_url)} still {document.phase} after "
                                       f"{self.job_timeout:g} s", url=job_url)
                self._sleep(delay)
                delay = min(self.poll_cap, delay * 1.5)
            if document.phase != "COMPLETED":
                message = (document.error_summary or f"the job ended {document.phase}").strip()
                message = message[len("Query Error: "):] if message.startswith("Query Error: ") else message
                raise QueryError(f"CASDA TAP query failed: {message}", url=job_url, server_message=message)
            result_url = _result_url(_tap_result_href(document), job_url)
            response = self.session.get(result_url, stream=True, timeout=self.timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise ServiceError(f"CASDA TAP at {redact_url(url)} failed: {exc}", url=url) from exc
        return response, job_url

    def _delete(self, job_url):
        with contextlib.suppress(requests.RequestException):   # good manners; failing is harmless
            self.session.delete(job_url, allow_redirects=False, timeout=self.timeout)

    # --- metadata

    def metadata(self, query, async_job=False):
        """(empty astropy Table, arrow schema) of ``query``, from its FIELDs (``MAXREC=0``).

        ``async_job``: ask through an async job (a query too slow for the sync limit may be
        slow even for no rows, e.g. when it sorts).

        Raises
        ------
        QueryError
            CASDA refused the query (its ``QUERY_STATUS=ERROR`` text is kept).
        """
        response, url = self._async(query, "votable", 0) if async_job else self._sync(query, "votable", 0)
        try:
            with response:
                votable = relaxed_votable(response.iter_content(_CHUNK))
        finally:
            if async_job:
                self._delete(url)
        status, message = _query_status(votable)
        if status == "ERROR":
            raise QueryError(f"CASDA TAP query failed: {message}", url=url, server_message=message)
        template, fields = _fields_of(votable)
        return template, _arrow_schema(fields)

    # --- reading a CSV answer

    def _batches(self, response, url, schema, limit, progress, tally, separator=",", lean=False):
        """Typed record batches of a CSV answer, at most ``limit`` rows; fills ``tally``
        (a dict: rows, bytes, truncated) when the answer has ended as it should.  ``lean``: small
        blocks parsed in this thread (several parts stream at once: their memory adds up)."""
        body = _BodyReader(response, url, progress)
        header = body.readline_bytes()
        if not header.endswith(b"\r\n"):
            raise IncompleteResultError(f"CASDA's TAP answer from {redact_url(url)} ended before its header",
                                        url=url)
        names = header.decode("utf-8", "replace").rstrip("\r\n").split(separator)
        if [name.strip('"') for name in names] != [name.lower() for name in schema.names]:
            raise ServiceError(f"CASDA's CSV columns {names} are not the query's {schema.names}", url=url)
        rows, truncated = 0, False
        paced = _PacedReader(body, _CHUNK, self.blocks_ahead)
        batches = () if body.at_end() else read_casda_csv(
            paced, schema, separator=separator, use_threads=not lean,
            block_size=self.part_block_size if lean else self.block_size)
        try:
            for batch in batches:       # (pyarrow refuses an empty CSV: a header alone is no rows)
                paced.batch_done()
                if rows + batch.num_rows > limit:
                    batch, truncated = batch.slice(0, limit - rows), True
                rows += batch.num_rows
                if progress is not None:
                    progress.update(rows=rows)
                if batch.num_rows:
                    yield batch
        except _pyarrow().ArrowInvalid as exc:
            if body.tail != b"\r\n":     # a last row cut short fails to parse before we see the end
                raise IncompleteResultError(
                    f"CASDA's TAP answer from {redact_url(url)} broke off mid-row after {body.bytes_read:,} "
                    "bytes; nothing was kept: run the query again", url=url) from exc
            raise ServiceError(f"CASDA's CSV from {redact_url(url)} could not be read: {exc}",
                               url=url) from exc
        finally:
            paced.release()
        if body.bytes_read > len(header) and body.tail != b"\r\n":
            raise IncompleteResultError(f"CASDA's TAP answer from {redact_url(url)} broke off mid-row after "
                                        f"{body.bytes_read:,} bytes; nothing was kept: run the query again",
                                        url=url)
        tally.update(rows=rows, bytes=body.bytes_read, truncated=truncated)

    def _answer(self, query, limit, async_job, fmt="csv"):
        """(response, url, job URL or None) of ``query`` asking one row beyond ``limit``."""
        if async_job:
            response, job_url = self._async(query, fmt, limit + 1)
            return response, job_url, job_url
        response, url = self._sync(query, fmt, limit + 1)
        return response, url, None

    @staticmethod
    def _limit(maxrec):
        return SERVER_MAX_RECORDS if maxrec is None else int(maxrec)

    def _warn_if_cut(self, rows, truncated, maxrec):
        if truncated or (maxrec is None and rows >= SERVER_MAX_RECORDS):
            warnings.warn(IncompleteResultWarning(
                f"CASDA's TAP stopped at {rows:,} rows (MAXREC or the server's limit): there are more. "
                "Narrow the query, raise maxrec, or use query_tap_partitioned."), stacklevel=4)
            return False
        return True

    def table(self, query, *, maxrec=None, async_job=False, progress=False):
        """The result of ``query`` as an astropy Table, read from CASDA's CSV.

        Columns have the types, units, UCDs and descriptions of CASDA's FIELDs; empty
        numeric cells are masked.  See `~astroquery_casda_ext.CasdaClass.query_tap`.
        """
        pa = _pyarrow()
        template, schema = self.metadata(query, async_job)
        limit = self._limit(maxrec)
        response, url, job_url = self._answer(query, limit, async_job)
        meter = _Progress("TAP") if progress else None
        try:
            with response:
                batches = list(self._batches(response, url, schema, limit, meter, tally := {}))
        finally:
            if job_url:
                self._delete(job_url)
            if meter:
                meter.close()
        rows, truncated = tally["rows"], tally["truncated"]
        table = _repair_units(astropy_table(pa.Table.from_batches(batches, schema=schema), template))
        table.meta["complete"] = self._warn_if_cut(rows, truncated, maxrec)
        return table

    def votable_table(self, query, *, maxrec=None, async_job=False):
        """The result through CASDA's VOTable, text columns relaxed to variable length."""
        if async_job:
            response, url = self._async(query, "votable", maxrec)
        else:
            response, url = self._sync(query, "votable", maxrec)
        try:
            with response:
                votable = relaxed_votable(response.iter_content(_CHUNK))
        except (requests.RequestException, OSError) as exc:
            raise IncompleteResultError(f"CASDA's VOTable from {redact_url(url)} broke off ({exc}): run the "
                                        "query again", url=url) from exc
        finally:
            if async_job:
                self._delete(url)
        status, message = _query_status(votable)
        if status == "ERROR":
            raise QueryError(f"CASDA TAP query failed: {message}", url=url, server_message=message)
        table = _repair_units(_fields_of(votable)[0])
        table.meta["complete"] = status != "OVERFLOW"
        if status == "OVERFLOW":
            warnings.warn(IncompleteResultWarning(
                f"CASDA's TAP stopped at {len(table):,} rows: there are more"), stacklevel=2)
        return table

    # --- streaming to a file

    def stream_to(self, query, output, *, maxrec=None, async_job=False, overwrite=False, progress=None):
        """Write the result of ``query`` to ``output`` without holding it in memory.

        Parameters
        ----------
        query : str
            ADQL.
        output : path-like
            ``.parquet`` (needs pyarrow), ``.csv``, ``.ecsv`` or ``.xml``/``.vot`` (CASDA's
            VOTable, as sent).  Written through the package's one safe writer
            (`~astroquery_casda_ext.writer.atomic_output`): claimed before the query is
            sent, into a temporary renamed when complete, never through a link.
        maxrec : int, optional
            Most rows (default: CASDA's limit, 20 000 000).
        async_job : bool
            Run as an async job (no 20 s limit).
        overwrite : bool
            Replace an existing file (never a link, nor a file another run is writing).
        progress : bool, optional
            Show rows and bytes on stderr (default: when stderr is a terminal).

        Returns
        -------
        StreamedResult

        Raises
        ------
        OutputExistsError
            ``output`` exists (without ``overwrite``) or another run is writing it.
        UnsafeFilenameError
            ``output`` is a symbolic link or not a regular file.
        IncompleteResultError
            The answer broke off; no file is left behind.
        QueryError
            CASDA refused the query.
        """
        path, fmt = _check_output(output)
        with atomic_output(path, overwrite=overwrite) as sink:     # claimed before anything is sent
            meter = _Progress(f"TAP -> {path.name}") if (sys.stderr.isatty() if progress is None
                                                          else progress) else None
            try:
                if fmt == "votable":
                    result = self._stream_votable(query, sink, maxrec, async_job, meter)
                else:
                    result = self._stream_rows(query, sink, fmt, maxrec, async_job, meter)
            finally:
                if meter:
                    meter.close()
        rows, bytes_read, complete = result
        return StreamedResult(path, rows, bytes_read, complete)

    def _stream_rows(self, query, sink, fmt, maxrec, async_job, meter):
        template, schema = self.metadata(query, async_job)
        limit = self._limit(maxrec)
        response, url, job_url = self._answer(query, limit, async_job)
        try:
            with response, _writer(fmt, sink, schema, template) as writer:
                for batch in self._batches(response, url, schema, limit, meter, tally := {}):
                    writer.write(batch)
        finally:
            if job_url:
                self._delete(job_url)
        rows, bytes_read, truncated = tally["rows"], tally["bytes"], tally["truncated"]
        return rows, bytes_read, self._warn_if_cut(rows, truncated, maxrec)

    def _stream_votable(self, query, sink, maxrec, async_job, meter):
        """CASDA's VOTable copied as it arrives; its QUERY_STATUS read from the head and tail."""
        if async_job:
            response, url = self._async(query, "votable", maxrec)
        else:
            response, url = self._sync(query, "votable", maxrec)
        head, tail, rows = b"", b"", 0
        try:
            with response:
                body = _BodyReader(response, url, meter)
                while True:
                    chunk = body.read(_CHUNK)
                    if not chunk:
                        break
                    sink.write(chunk)
                    rows += (tail[-2:] + chunk).count(b"<TR")    # a "<TR" may straddle two chunks
                    head = head if len(head) >= 65536 else (head + chunk)[:65536]
                    tail = (tail + chunk)[-4096:]
                    if meter is not None:
                        meter.update(rows=rows)
        finally:
            if async_job:
                self._delete(url)
        error = re.search(rb'QUERY_STATUS"\s+value="ERROR"\s*>([^<]*)<', head)
        if error:
            message = error.group(1).decode("utf-8", "replace").strip()
            raise QueryError(f"CASDA TAP query failed: {message}", url=url, server_message=message)
        if not tail.rstrip().endswith(b"</VOTABLE>"):
            raise IncompleteResultError(f"CASDA's VOTable from {redact_url(url)} broke off; nothing was kept",
                                        url=url)
        complete = b'value="OVERFLOW"' not in tail
        if not complete:
            warnings.warn(IncompleteResultWarning("CASDA's TAP stopped at MAXREC: there are more rows"),
                          stacklevel=4)
        return rows, body.bytes_read, complete

    # --- partitioned queries

    def count(self, query):
        """The number of rows of ``query``, by asking CASDA for its ``COUNT(*)``.

        ``query`` must be a plain SELECT (see `split_select`).
        """
        _, source, where, _ = split_select(query)
        adql = f"SELECT COUNT(*) AS n FROM {source}" + (f" WHERE {where}" if where else "")
        return int(self.table(adql)["n"][0])

    def partition_queries(self, query, by, parts, bounds=None):
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
        template, schema = self.metadata(f"SELECT {by} FROM {source}")
        column = template[template.colnames[0]]
        if column.dtype.kind not in "iuf":
            raise InvalidInputError(f"by={by!r} must be a numeric column (it is {column.dtype})")
        integer = column.dtype.kind in "iu"
        if bounds is None:
            if str(column.meta.get("ucd", "")).startswith("pos.eq.dec"):
                bounds = (-90.0, 90.0)
            else:
                found = self.table(f"SELECT MIN({by}) AS lo, MAX({by}) AS hi FROM {source}"
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

    def partitioned(self, query, *, by, parts, output, bounds=None, executor=None,
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
            return self._partitioned(query, by, parts, directory, bounds, executor, max_running, part_retries,
                                     verify_counts, progress)

    def _partitioned(self, query, by, parts, directory, bounds, executor, max_running, part_retries,
                     verify_counts, progress):
        manifest = _Manifest.open(directory, query, by, parts, bounds)
        if manifest.edges is None:
            queries, edges = self.partition_queries(query, by, parts, bounds)
            manifest.start(queries, edges)
        schema = self.metadata(manifest.queries[0], async_job=True)[1]
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
                    task = PartTask(self, index, manifest.queries[index], str(directory / _part_name(index)),
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
                failed=failed, url=self.tap_url) from first
        return PartitionedResult(directory, manifest.rows, len(manifest.queries), resumed)


def _part_name(index):
    return f"part-{index:05d}.parquet"


def _writer(fmt, sink, schema, template):
    pa = _pyarrow()
    if fmt == "parquet":
        return pa.parquet.ParquetWriter(sink, schema, compression="zstd")
    if fmt == "csv":
        return pa.csv.CSVWriter(sink, schema)
    return _EcsvWriter(sink, template)


class _EcsvWriter:
    """ECSV, one batch at a time: astropy writes each batch; its header is kept once."""

    def __init__(self, sink, template):
        self.sink, self.template, self.header_done = sink, template, False

    def _text(self, table):
        for name in table.colnames:
            if table[name].dtype.kind == "O":      # ECSV writes str columns as 'string'
                table[name] = table[name].astype(str)
        buffer = io.StringIO()
        table.write(buffer, format="ascii.ecsv")
        return buffer.getvalue()

    def write(self, batch):
        pa = _pyarrow()
        text = self._text(astropy_table(pa.Table.from_batches([batch]), self.template))
        if self.header_done:
            lines = text.splitlines(keepends=True)
            start = next(index for index, line in enumerate(lines) if not line.startswith("#")) + 1
            text = "".join(lines[start:])
        self.header_done = True
        self.sink.write(text.encode("utf-8"))

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.close()

    def close(self):
        if not self.header_done:
            empty = Table([MaskedColumn([], dtype=str if c.dtype.kind == "O" else c.dtype, name=c.name,
                                        unit=c.unit, description=c.description)
                           for c in self.template.itercols()])
            self.sink.write(self._text(empty).encode("utf-8"))


# --- one part (runs on any executor) ---------------------------------------------------------

@dataclass
class PartTask:
    """Everything one part needs (picklable with its client, for process executors)."""

    client: TapClient
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
