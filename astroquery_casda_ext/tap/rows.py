"""CASDA's answers as typed rows: the body as a paced, bounded file, CASDA's CSV read with
pyarrow and typed by the query's FIELDs, arrow tables as astropy Tables.

CASDA's CSV (``casda_vo_tools`` ``CsvTsvResultsExtractor`` and ``ResultsExtractor``):

* header names are lower-cased (the FIELDs give the real names, matched by position);
* rows end in ``\\r\\n``; a cell holding the separator, ``"`` or a newline is wrapped in
  ``"..."`` with inner quotes **not** doubled, but every cell is XML-escaped first
  (``&quot;``, ``&amp;``, ``&#233;``...), so no raw quote is ever inside a value;
* there is **no** end marker, no OVERFLOW, no error text: a result cut at MAXREC or broken
  off looks complete.  We ask for ``MAXREC = limit + 1`` and count, and we require the
  body to end with ``\\r\\n``.
"""
import io
import re
import threading
import time as _time

import numpy as np
from astropy.table import MaskedColumn, Table

from ..errors import IncompleteResultError, MissingDependencyError, ServiceError
from ..tables import numpy_text, numpy_values, own_width_text
from ..transport import Pacing, failures_as, read_some

__all__ = ["read_casda_csv", "astropy_table", "votable_table", "answer_table", "VOTableRows",
           "SERVER_MAX_RECORDS", "MAX_RUNNING_JOBS"]

#: CASDA's ``tap.max.records``: the most rows any query returns (protocol section 8.1).
SERVER_MAX_RECORDS = 20_000_000
#: CASDA's ``tap.maxRunningJobs``: async jobs one may run at once.
MAX_RUNNING_JOBS = 4
#: Output formats by file suffix.
_CHUNK = 1 << 20

def _pyarrow():
    try:
        import pyarrow
        import pyarrow.csv  # noqa: F401
        import pyarrow.compute  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingDependencyError("this needs pyarrow, which is not installed: "
                                     "pip install 'astroquery_casda_ext[parquet]' (or pip install pyarrow)") \
            from None
    return pyarrow


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
    """A streamed HTTP body as a file: counts bytes, keeps to the streams' pacing rule
    (`~astroquery_casda_ext.transport.Pacing.for_streams`: a trickle ends), remembers how it
    ended, and turns a transfer that breaks off into `IncompleteResultError`."""

    def __init__(self, response, url, progress=None, pacing=None):
        self._raw = response.raw
        self._url = url
        self._buffer = b""
        self._offset = 0            # into _buffer: slicing a 1 MB chunk per small read would copy it
        self.bytes_read = 0
        self.tail = b""
        self.progress = progress
        self._pacing = pacing or Pacing.for_streams()
        self._started = _time.monotonic()

    def _elapsed(self):
        return _time.monotonic() - self._started

    def readable(self):
        return True

    def readinto(self, target):
        if self._offset >= len(self._buffer):
            self._buffer, self._offset = b"", 0
            with failures_as(IncompleteResultError, url=self._url,
                             what=f"CASDA's TAP answer broke off or stalled after {self.bytes_read:,} bytes; "
                                  "nothing was kept, run the query again"):
                self._buffer = read_some(self._raw, self._pacing, self.bytes_read, self._elapsed, size=_CHUNK,
                                         decode_content=True)
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
    """(astropy Table, list of FIELDs) of a parsed (relaxed) result VOTable; text columns
    declared with a width are ``U`` at their longest value, the others objects."""
    resources = [res for res in votable.resources if res.tables]
    if not resources:
        raise ServiceError("CASDA's TAP answer has no result table")
    table = resources[0].tables[0]
    fixed = getattr(votable, "fixed_width_text", ())
    return own_width_text(table.to_table(use_names_over_ids=True), fixed), list(table.fields)


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
                                              quoted_strings_can_be_null=False,
                                              # VOTable booleans (T/F, ? for none) as well as CASDA CSV's
                                              true_values=["true", "True", "TRUE", "T", "t", "1"],
                                              false_values=["false", "False", "FALSE", "F", "f", "0"]))
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
    VOTable path's empty table): same names, units, descriptions and masks, and the same
    dtypes but for text, at its longest value (`~astroquery_casda_ext.tables.numpy_text`).

    ``arrow_table`` may also be a list of record batches, which is then emptied and each
    column's arrow memory let go as soon as that column is converted (the peak is then
    about the Table, not the Table and the arrow data together).
    """
    if isinstance(arrow_table, list):
        chunks = [[batch.column(index) for batch in arrow_table] for index in range(len(template.colnames))]
        types = [arrow_table[0].schema.field(index).type for index in range(len(template.colnames))] \
            if arrow_table else None
        arrow_table.clear()
        if types is None:
            return Table(template[:0], copy=True)

        def column_at(index):
            pieces, chunks[index] = chunks[index], None
            return _pyarrow().chunked_array(pieces, type=types[index])
    else:
        def column_at(index):
            return arrow_table.column(index)
    columns = []
    for index, name in enumerate(template.colnames):
        like = template[name]
        column = column_at(index)
        array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
        mask = numpy_values(array.is_null())
        if like.dtype.kind == "f":
            data = numpy_values(array, fill=np.nan)
        elif like.dtype.kind in "iub":
            data = numpy_values(array, fill=False if like.dtype.kind == "b" else 0)
        else:
            data = numpy_text(array, fixed=like.dtype.kind == "U")
        del array, column
        # arrow's pool (mimalloc) keeps what it frees for its own reuse, but the numpy columns
        # come from malloc: given back now, the freed arrow memory holds the next column
        # (100 000 ObsCore rows: a peak of about 485 MB instead of 545)
        _pyarrow().default_memory_pool().release_unused()
        columns.append(MaskedColumn(data.astype(like.dtype, copy=False) if like.dtype.kind not in "UO" else data,
                                    mask=mask, name=name, unit=like.unit, description=like.description,
                                    format=like.format, meta=like.meta))
    return Table(columns, meta=dict(template.meta), copy=False)


# --- CASDA's VOTable rows through pyarrow ----------------------------------------------------------
#
# astropy's VOTable reader converts every TABLEDATA cell in Python (about pyvo's speed: 20 s
# for 100 000 ObsCore rows) and has no faster mode; pyarrow has no XML reader.  CASDA writes
# TABLEDATA in one plain shape (``<TR><TD>text</TD>...</TR>``, text XML-escaped, as its CSV),
# so the rows are rewritten, a block at a time, into the shape of CASDA's CSV (cells
# separated by U+001F, which XML forbids in text; rows by newlines) and read by the same
# pyarrow reader as the CSV.  The header (FIELDs) is read by astropy, the QUERY_STATUS INFOs
# by the one status rule: one request, the error and overflow markers kept.  Anything else
# (a TD with attributes, CDATA, BINARY serialisation) is read by astropy instead.

_CELL = "\x1f"
_BETWEEN_TAGS = re.compile(rb">[ \t\r\n]+<")


def _rows_as_lines(segment):
    """Whole ``<TR>...</TR>`` rows as lines of cells separated by U+001F."""
    segment = _BETWEEN_TAGS.sub(b"><", segment.strip(b" \t\r\n"))   # (a block starts and ends between rows)
    # a raw newline, carriage return or quote inside a cell is XML text: write it as an entity,
    # which the reader unescapes with the others
    segment = segment.replace(b"\n", b"&#10;").replace(b"\r", b"&#13;").replace(b'"', b"&quot;")
    segment = segment.replace(b"<TD/>", b"<TD></TD>")
    if segment.startswith(b"<TR><TD>") and segment.endswith(b"</TD></TR>"):
        # CASDA's shape: two passes over the block, one between cells and one between rows
        lines = segment.replace(b"</TD><TD>", b"\x1f").replace(b"</TD></TR><TR><TD>", b"\n")[8:-10] + b"\n"
    else:
        lines = segment.replace(b"</TD></TR>", b"\n").replace(b"</TD>", b"\x1f").replace(b"</TR>", b"\n") \
            .replace(b"<TR>", b"").replace(b"<TD>", b"")
    if b"<" in lines:
        raise ServiceError("a TABLEDATA row of CASDA's answer holds markup other than <TR>/<TD> "
                           "(attributes, CDATA): read it with result_format='votable'")
    return lines


class VOTableRows(io.RawIOBase):
    """The rows of a VOTable (read from ``source``, a binary file) as CASDA-CSV-like lines.

    ``head`` (the document up to ``<TABLEDATA>``) is available from `read_head`; the rows are
    what `read` gives; ``tail`` is what follows ``</TABLEDATA>``, once the rows are read.
    """

    def __init__(self, source, block=1 << 20):
        self._source, self._block = source, block
        self._pending, self._out, self._offset = b"", b"", 0
        self.head, self.tail, self.rows_done = None, b"", False

    def readable(self):
        return True

    def read_head(self):
        """The document up to and including ``<TABLEDATA>``; None if there is none."""
        while self.head is None:
            chunk = self._source.read(self._block)
            self._pending += chunk
            at = self._pending.find(b"<TABLEDATA>")
            if at >= 0:
                self.head, self._pending = self._pending[:at + len(b"<TABLEDATA>")], \
                    self._pending[at + len(b"<TABLEDATA>"):]
            elif not chunk:
                return None
        return self.head

    def rest(self):
        """Everything not yet read, raw (for the astropy path when the rows are not plain)."""
        return self._pending + self._source.read()

    def _refill(self):
        while self._offset >= len(self._out) and not self.rows_done:
            chunk = self._source.read(self._block)
            self._pending += chunk
            end = self._pending.find(b"</TABLEDATA>")
            if end >= 0:
                rows, self.tail = self._pending[:end], self._pending[end:] + self._source.read()
                self._pending, self.rows_done = b"", True
            elif not chunk:
                raise IncompleteResultError("CASDA's VOTable broke off inside its rows; nothing was kept")
            else:
                cut = self._pending.rfind(b"</TR>")
                if cut < 0 or len(self._pending) < self._block:
                    continue        # whole rows, a block of them at a time
                rows, self._pending = self._pending[:cut + 5], self._pending[cut + 5:]
            self._out, self._offset = _rows_as_lines(rows), 0

    def readinto(self, target):
        self._refill()
        size = min(len(target), len(self._out) - self._offset)
        target[:size] = memoryview(self._out)[self._offset:self._offset + size]
        self._offset += size
        return size


def _header_votable(head, parse):
    """The FIELDs of ``head`` (the document up to ``<TABLEDATA>``) parsed as a VOTable with no rows."""
    return parse(head + b"</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>")


def votable_table(source, parse, service, *, url=None, block_size=1 << 20):
    """The result Table of a VOTable answer read from ``source`` (a binary file), as
    `~astroquery_casda_ext.documents.table_of` gives it from astropy's parse.

    ``parse(bytes)`` parses a VOTable relaxed (`~astroquery_casda_ext.documents.parse_votable`).
    Rows go through pyarrow (`VOTableRows`) when the document is plain TABLEDATA and has no
    array cells; otherwise the whole document goes through ``parse``.  ``source`` is read to
    its end and closed.  ``QUERY_STATUS`` is
    read wherever it is (ERROR: `QueryError`; OVERFLOW: a `MaxResultsWarning`).  What bounds
    an answer that does not end is ``source`` (``conf.table_max_bytes``).

    Raises
    ------
    QueryError, ServiceError
    IncompleteResultError
        The document broke off (inside its rows, or before ``</VOTABLE>``).
    """
    from ..documents import StatusScanner, finish_table, table_of
    rows = VOTableRows(source, block_size)
    head = rows.read_head()
    if head is None:
        return table_of(parse(rows.rest()), service, url=url)
    votable = _header_votable(head, parse)
    template, fields = _fields_of(votable)
    if any(field.arraysize not in (None, "1") and field.datatype not in ("char", "unicodeChar")
           for field in fields):
        return table_of(parse(head + rows.rest()), service, url=url)     # array cells: astropy's
    pa = _pyarrow()
    schema = _arrow_schema(fields)
    # one thread: the blocks are rewritten here, one at a time, so parsing ahead in threads
    # buys little and holds more blocks in arrow's pool at once
    batches = [] if _empty_rows(rows) else list(read_casda_csv(rows, schema, separator=_CELL,
                                                               block_size=block_size, use_threads=False))
    if not rows.rows_done:
        rows.read()          # (an empty table: reach </TABLEDATA>)
    if not rows.tail.rstrip().endswith(b"</VOTABLE>"):
        raise IncompleteResultError(f"CASDA's {service} answer broke off after its rows; nothing was kept",
                                    url=url)
    source.close()           # an answer held in memory is let go before its Table is built
    scanner = StatusScanner()
    scanner.feed(head)
    scanner.feed(rows.tail)
    table = astropy_table(batches, template) if batches else \
        astropy_table(pa.Table.from_batches([], schema=schema), template)
    return finish_table(table, *scanner.status, service, url=url)


def answer_table(source, service, *, url=None, what=None):
    """The result Table of a VOTable answer (bytes or a binary file): through pyarrow when it
    is installed (`votable_table`), else through astropy (relaxed, then narrowed)."""
    import importlib.util
    from ..documents import parse_votable, table_of
    what = what or f"CASDA {service} query"
    block = 1 << 20
    if isinstance(source, (bytes, bytearray)):
        block = min(max(block, len(source)), 64 << 20)    # in memory already: fewer, larger batches
        source = io.BytesIO(source)
    if importlib.util.find_spec("pyarrow") is None:
        return table_of(parse_votable(source.read(), what=what, url=url, relaxed=True), service, url=url)
    return votable_table(source, lambda data: parse_votable(data, what=what, url=url, relaxed=True), service,
                         url=url, block_size=block)


def _empty_rows(rows):
    """Whether the TABLEDATA has no row (pyarrow refuses an empty CSV)."""
    probe = bytearray(1)
    if rows.readinto(probe) == 0:
        return True
    rows._offset -= 1          # put the byte back
    return False
