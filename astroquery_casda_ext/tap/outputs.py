"""Where a streamed TAP result goes: the output formats and their writers, progress, the result."""
import io
import sys
import time as _time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import MaskedColumn, Table

from ..documents import repair_units as _repair_units
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
        return _AstropyParquetWriter(sink, schema, template)
    if fmt == "csv":
        return pa.csv.CSVWriter(sink, schema)
    return _EcsvWriter(sink, template)


class _AstropyParquetWriter:
    """Parquet in astropy's own convention, one batch at a time: ``Table.read(path)`` gives back
    the Table `TapClient.table` returns, with its units, descriptions, formats and masks.

    What ``Table.write(format="parquet")`` stores: each column that may be masked (numbers,
    booleans) is followed by a ``<name>.mask`` column and its nulls are filled (NaN, 0,
    False), the columns are described by the ``table_meta_yaml`` key, and each text
    column's width (its longest value, known once every batch is written) by
    ``table::len::<name>``; UCDs are in each column's ``meta``.
    """

    def __init__(self, sink, schema, template):
        pa = _pyarrow()
        self._text = [field.name for field in schema if pa.types.is_string(field.type)]
        fields = []
        for field in schema:
            fields.append(field)
            if field.name not in self._text:
                fields.append(pa.field(f"{field.name}.mask", pa.bool_()))
        self._schema = pa.schema(fields)
        self._template = template
        self._widths = dict.fromkeys(self._text, 1)
        # store_schema=False: the file's key-value metadata, completed at close (text widths are
        # known only then), is what readers take as the schema's; pyarrow's serialized copy of
        # the schema would be the one written now, without them
        self._writer = pa.parquet.ParquetWriter(sink, self._schema, compression="zstd", store_schema=False)

    def write(self, batch):
        pa = _pyarrow()
        pc = pa.compute
        arrays = []
        for field, column in zip(batch.schema, batch.columns):
            if field.name in self._widths:
                longest = pc.max(pc.utf8_length(column)).as_py() if len(column) else 0
                self._widths[field.name] = max(self._widths[field.name], longest or 0)
                arrays.append(column)
                continue
            fill = float("nan") if pa.types.is_floating(field.type) else \
                False if pa.types.is_boolean(field.type) else 0
            arrays.append(pc.fill_null(column, pa.scalar(fill, field.type)))
            arrays.append(column.is_null())
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self._schema))

    def _yaml(self):
        """astropy's header for this file's layout (from a one-row Table with every
        maskable column masked, so that its mask column is part of the layout)."""
        from astropy.table import Column, meta, serialize
        from astropy.utils.data_info import serialize_context_as
        columns = []
        for name in self._template.colnames:
            like = self._template[name]
            info = {"name": name, "unit": like.unit, "description": like.description, "format": like.format,
                    "meta": like.meta}
            columns.append(Column(np.array([""]), **info) if name in self._widths else
                           MaskedColumn(np.zeros(1, like.dtype), mask=[True], **info))
        table = _repair_units(Table(columns, meta=dict(self._template.meta)))
        with serialize_context_as("parquet"):
            encoded = serialize.represent_mixins_as_columns(table)
        return "\n".join(meta.get_yaml_from_table(encoded))

    def close(self):
        header = {"table_meta_yaml": self._yaml(),
                  **{f"table::len::{name}": str(width) for name, width in self._widths.items()}}
        self._writer.add_key_value_metadata(header)
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        self.close()


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
