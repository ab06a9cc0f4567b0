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

from ..errors import IncompleteResultError, ServiceError
from ..transport import Pacing, failures_as, read_some

__all__ = ["read_casda_csv", "astropy_table", "SERVER_MAX_RECORDS", "MAX_RUNNING_JOBS"]

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
        raise ImportError("catalogue-scale TAP needs pyarrow: pip install 'astroquery_casda_ext[parquet]'") \
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
