"""Where a streamed TAP result goes: the output formats and their writers, progress, the result."""
import io
import sys
import time as _time
from dataclasses import dataclass
from pathlib import Path

from astropy.table import MaskedColumn, Table

from ..errors import InvalidInputError
from .rows import _pyarrow, astropy_table

__all__ = ["StreamedResult", "OUTPUT_FORMATS"]

#: Output formats by file suffix.
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".ecsv": "ecsv",
                  ".xml": "votable", ".vot": "votable", ".votable": "votable"}

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
