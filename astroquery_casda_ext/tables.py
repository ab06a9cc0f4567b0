"""Result tables at the data's own size.

CASDA declares most text columns with a fixed width (``arraysize="255"``; ``access_url``
2000), and astropy's VOTable reader allocates that width for every cell, four bytes a
character: 25 kB per ObsCore row whatever it holds.  Every Table this package returns
(``query_tap``, ``query_region``, the catalogue helpers) is instead built with each text
column at the width of its longest value, so it costs what its data costs; the dtype's
kind stays what pyvo and astroquery give (``U`` for a declared width, object for
``arraysize="*"``), with the same masks and units.  Parsing is bounded the same way: the
VOTable is read with its text columns relaxed to variable length
(`~astroquery_casda_ext.documents.parse_votable`), CASDA's CSV through pyarrow (``tap.py``).

`own_width_text` narrows the text columns of a Table read from a relaxed VOTable;
`numpy_text` turns one pyarrow text column into the same narrow numpy array, and
`numpy_values` one pyarrow column of numbers or booleans into numpy.
"""
import numpy as np
from astropy.table import MaskedColumn

__all__ = ["own_width_text", "numpy_text", "numpy_values", "narrow_text_column"]


def _width(values):
    return max((len(value) for value in values), default=0) or 1


def narrow_text_column(column):
    """``column`` (object dtype, text cells) as a ``U`` column at its longest value.

    The mask, unit, description, format and meta are kept; masked cells become "".
    """
    mask = np.ma.getmaskarray(column)
    data = ["" if hidden or value is None else value.decode("utf-8") if isinstance(value, bytes) else value
            for value, hidden in zip(np.ma.getdata(column), mask)]
    array = np.array(data, dtype=f"U{_width(data)}") if len(data) else np.zeros(0, "U1")
    return MaskedColumn(array, mask=mask, name=column.name, unit=column.unit, description=column.description,
                        format=column.format, meta=column.meta)


def own_width_text(table, fixed):
    """Narrow the text columns of ``table`` named in ``fixed`` (their FIELD declared a width
    that the relaxed reading dropped) to ``U`` at their longest value, in place.

    Parameters
    ----------
    table : `~astropy.table.Table`
    fixed : iterable of str
        Column names (``parse_votable(..., relaxed=True)`` lists them as the parsed
        document's ``fixed_width_text``).

    Returns
    -------
    `~astropy.table.Table`
        ``table``.
    """
    for name in fixed:
        if name in table.colnames and table[name].dtype.kind == "O":
            table.replace_column(name, narrow_text_column(table[name]))
    return table


def numpy_text(array, *, fixed=True):
    """A pyarrow text array as numpy: ``U`` at its longest value (``fixed``), else objects.

    ASCII text (nearly all of CASDA's) is padded to that width by pyarrow and reinterpreted
    in place, without a Python string per cell; other text goes through Python strings.
    """
    import pyarrow.compute as pc
    if not fixed:
        return np.array(array.to_pylist(), dtype=object)
    count = len(array)
    if count == 0:
        return np.zeros(0, "U1")
    if array.null_count:
        # Masked cells become "" (the mask is kept apart).  The blanks come from compute
        # functions because ``fill_null("")``, like any array or scalar made from Python
        # values, imports pandas when it is installed (see `numpy_values`).
        blanks = pc.utf8_slice_codeunits(pc.cast(array.is_valid(), "string"), 0, 0)
        array = pc.coalesce(array, blanks)
    width = max(1, pc.max(pc.utf8_length(array)).as_py() or 0)
    if not pc.all(pc.string_is_ascii(array)).as_py():
        return np.array(array.to_pylist(), dtype=f"U{width}")
    out = np.empty(count, dtype=f"U{width}")
    step = max(1, (16 << 20) // width)         # padded a slice at a time: 16 MB at most beside the result
    for first in range(0, count, step):
        piece = array.slice(first, step)
        padded = pc.utf8_rpad(piece, width=width, padding="\0")   # every cell now exactly `width` bytes
        start = int(np.frombuffer(padded.buffers()[1], np.int32, count=1, offset=4 * padded.offset)[0])
        out[first:first + len(piece)] = np.frombuffer(padded.buffers()[2], dtype=f"S{width}", count=len(piece),
                                                      offset=start)
    return out


def _bits(buffer, offset, count):
    """``count`` bits of an arrow bitmap from bit ``offset``, as a new numpy bool array."""
    bits = np.unpackbits(np.frombuffer(buffer, np.uint8), bitorder="little", count=offset + count)
    return bits[offset:].view(bool)


def numpy_values(array, fill=None):
    """A pyarrow array of numbers or booleans as a new, writable numpy array.

    Read from the array's buffers rather than through pyarrow's ``to_numpy`` or
    ``fill_null``, which import pandas whenever it is installed: half a second and some
    40 MB on a table's first use.

    Parameters
    ----------
    array : pyarrow array
        Boolean, integer or floating-point.
    fill : scalar, optional
        The value given to null cells; required when the array has any.

    Returns
    -------
    `numpy.ndarray`
    """
    import pyarrow as pa
    count, offset = len(array), array.offset
    validity, values = array.buffers()[:2]
    if pa.types.is_boolean(array.type):
        out = _bits(values, offset, count) if count else np.zeros(0, bool)
    else:
        dtype = np.dtype(array.type.to_pandas_dtype())     # numpy's dtype; pandas is not involved
        out = np.frombuffer(values, dtype, count=count, offset=offset * dtype.itemsize).copy() \
            if count else np.zeros(0, dtype)
    if array.null_count:
        if fill is None:
            raise ValueError("numpy_values: the array has nulls and no fill value was given")
        out[~_bits(validity, offset, count)] = fill
    return out
