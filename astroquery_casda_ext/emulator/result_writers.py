"""Query results as CASDA writes them: VOTable, CSV and TSV, and the error VOTable.

Writers take plain values (a query result, base URLs, the INFOs to announce) and return
bytes or generators of byte chunks; they never look at a request.  The shapes follow
CASDA's own writers (``casda_vo_tools`` ``VoTableResultsExtractor``,
``CsvTsvResultsExtractor``, ``VotableError``) and the recorded responses in
``astroquery/casda/tests/data``; every cell goes through `xml_escape`, as CASDA's
``ResultsExtractor.getFieldValue`` does, CSV/TSV included.  Numbers are Java's
(``java_formats.py``).
"""
import datetime as _dt
import re
from functools import partial
from itertools import islice

import numpy as np

from .java_formats import java_double, java_float

__all__ = ["xml_escape", "service_infos", "votable_chunks", "votable_error", "separated_chunks",
           "VOTABLE_TYPE"]

VOTABLE_TYPE = "application/x-votable+xml"
_VOTABLE_OPEN = ('<VOTABLE version="1.3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                 'xmlns="http://www.ivoa.net/xml/VOTable/v1.3" '
                 'xmlns:stc="http://www.ivoa.net/xml/STC/v1.30" >')
_CRLF = "\r\n"
_CHUNK_CHARS = 1 << 16
_BASE_URL_PLACEHOLDER = "#{baseUrl}"

_XML_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"})
_NUMERIC_ESCAPE = re.compile(r"[^\t\n\r\x20-\x7e]")


#: Characters commons-text's ``ESCAPE_XML11`` drops: NUL, U+FFFE, U+FFFF and lone surrogates.
_DROPPED = frozenset({0, 0xFFFE, 0xFFFF}) | frozenset(range(0xD800, 0xE000))


def _numeric_entity(match):
    code = ord(match.group())
    return "" if code in _DROPPED else f"&#{code};"


def xml_escape(text):
    """Escape like CASDA's cells (``ResultsExtractor.getFieldValue``: ``ESCAPE_XML11`` plus
    numeric entities from U+007F): the five XML entities, ``&#N;`` for other C0 controls and
    anything beyond ASCII; tab, newline and carriage return stay raw."""
    text = text.translate(_XML_ENTITIES)
    if not (text.isascii() and text.isprintable()):
        text = _NUMERIC_ESCAPE.sub(_numeric_entity, text)
    return text


def _text_escape(text):
    """Element text: only ``&``, ``<`` and ``>`` (CASDA writes descriptions unescaped)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cdata(text):
    return "<![CDATA[" + str(text).replace("]]>", "]]]]><![CDATA[>") + "]]>"


# --------------------------------------------------------------------------------------
# Cell formatting: one function per column, chosen once per result
# --------------------------------------------------------------------------------------


def _format_other(value):
    if isinstance(value, float):
        return java_double(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return xml_escape(str(value))


def _double_cell(value):
    if type(value) is float:
        if 1e-3 <= value < 1e7 or -1e7 < value <= -1e-3:
            return repr(value)  # Java and Python agree in this range: shortest digits, ".0" kept
        return java_double(value)
    if value is None:
        return ""
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return java_double(value)
    return _format_other(value)


def _float_cell(value):
    if value is None:
        return ""
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return java_float(value)
    return _format_other(value)


def _integer_cell(value):
    if type(value) is int:
        return str(value)
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _format_other(value)


def _boolean_cell(value):
    if value is None:
        return ""
    if isinstance(value, (bool, int)):
        return "true" if value else "false"
    return _format_other(value)


_MEMO_LIMIT = 4096


def _char_cell_for(proxy_base):
    # Text columns repeat a lot (types, collections, formats): remember recent cells.
    memo = {}

    def char_cell(value):
        if value is None:
            return ""
        cell = memo.get(value)
        if cell is not None:
            return cell
        if isinstance(value, str):
            text = value
            if text.startswith(_BASE_URL_PLACEHOLDER):
                # CASDA's DB holds "#{baseUrl}datalink/links?ID=..."; the writer puts in the
                # DataLink base (the authenticated proxy), whoever asked.
                text = proxy_base + text[len(_BASE_URL_PLACEHOLDER):]
            cell = xml_escape(text)
        else:
            cell = _format_other(value)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[value] = cell
        return cell
    return char_cell


_FORMATTERS = {
    "double": _double_cell, "float": _float_cell, "int": _integer_cell, "long": _integer_cell,
    "short": _integer_cell, "unsignedbyte": _integer_cell, "boolean": _boolean_cell,
}


def _cell_formatters(columns, proxy_base):
    char_cell = _char_cell_for(proxy_base)
    return [_FORMATTERS.get((column.datatype or "char").lower(), char_cell) for column in columns]


# Whole columns at a time: a large result (millions of catalogue rows) is rendered a batch of
# rows at a time, each column formatted by one loop (numpy's float32 digits, ``repr`` for
# doubles) and the rows joined by ``str.join``: the same text as the cell formatters above,
# many times faster than one function call per cell.

_BATCH_CHARS = 1 << 18      # rendered text per chunk, roughly


def _float_column(values, cell):
    """``_float_cell`` of each value.  numpy's shortest float32 digits (Dragon4) are
    `java_float`'s wherever numpy writes them positionally and Java does (1e-3 <= |v| < 1e7,
    no exponent in numpy's text); other values, NULLs and odd types go through ``cell``."""
    if not set(map(type, values)) <= {float, int, type(None)}:
        return list(map(cell, values))
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            singles = np.array(values, dtype=np.float32)        # None becomes NaN
    except (OverflowError, ValueError, TypeError):
        return list(map(cell, values))
    magnitudes = np.abs(singles.astype(np.float64))
    plain = ((magnitudes >= 1e-3) & (magnitudes < 1e7)).tolist()
    return [text if fast and "e" not in text else cell(value)
            for text, fast, value in zip(singles.astype(str).tolist(), plain, values)]


def _double_column(values, cell):
    return [repr(value) if type(value) is float and (1e-3 <= value < 1e7 or -1e7 < value <= -1e-3)
            else cell(value) for value in values]


def _integer_column(values, cell):
    return [str(value) if type(value) is int else cell(value) for value in values]


_NEEDS_ESCAPE = re.compile(r"[&<>\"']|[^\t\n\r\x20-\x7e]")


def _char_column(values, cell):
    """``char_cell`` of each value; a batch of plain ASCII text without markup characters or
    ``#{baseUrl}`` (most of a catalogue) is its own text, found by one look at the whole batch."""
    kinds = set(map(type, values))
    if kinds <= {str, type(None)}:
        if type(None) in kinds:
            values = ["" if value is None else value for value in values]
        joined = "\n".join(values)
        if _BASE_URL_PLACEHOLDER not in joined and not _NEEDS_ESCAPE.search(joined):
            return values
    return list(map(cell, values))


def _column_formatters(columns, proxy_base):
    """Per column: a function from a list of values to the list of their cell texts."""
    special = {_float_cell: _float_column, _double_cell: _double_column, _integer_cell: _integer_column,
               _boolean_cell: lambda values, cell: list(map(cell, values))}
    return [partial(special.get(cell, _char_column), cell=cell)
            for cell in _cell_formatters(columns, proxy_base)]


def _text_batches(rows, columns, proxy_base):
    """(rows, lists of the rows' cell texts, one list per column), a batch of rows at a time:
    as many rows as make about ``_BATCH_CHARS`` of text, judged from the last batch."""
    formatters = _column_formatters(columns, proxy_base)
    rows, size = iter(rows), 256
    while True:
        batch = list(islice(rows, size))
        if not batch:
            return
        texts = [list(formatter(list(values))) for formatter, values in zip(formatters, zip(*batch))]
        yield len(batch), texts
        sample = min(len(batch), 64)
        chars = sum(len(text) for column in texts for text in column[:sample]) + len(texts) * sample
        size = max(16, min(8192, _BATCH_CHARS * sample // max(chars, 1)))


def _rows_of(count, texts):
    """The rows of a batch of column texts (``count`` empty rows when there are no columns)."""
    return zip(*texts) if texts else [()] * count


# --------------------------------------------------------------------------------------
# VOTable results (TAP and SIA2)
# --------------------------------------------------------------------------------------

#: (INFO name, value, description) of CASDA's service metadata block, before the query.
_SERVICE_INFOS = (
    ("Instrument", "ASKAP", "Instrument from which data originated "),
    ("Server", None, "URL of the CASDA VO endpoint used "),
    ("Service Short Name", "CASDA TAP", "Short name for the TAP service "),
    ("Service Title", "CSIRO ASKAP Science Data Archive TAP service", "TAP service title "),
    ("Identifier", "ivo://casda.csiro.au/casda/TAP", "Unique resource registry identifier"),
    ("Service Publisher", "The CASDA team", "Publisher for the TAP service"),
    ("Further Information", "http://www.atnf.csiro.au/projects/askap/index.html",
     "Link to further information on the data and usage of the service"),
    ("Contact Person", "CASDA Support <atnf-datasup@csiro.au>", "Who to contact about this service "),
    ("Copyright", "Creative Commons Attribution 4.0 International Licence", "CASDA's Data license"),
)


def service_infos(*, vo_tools_base, query_name, query_text, started, now, table=None):
    """The INFO rows CASDA writes after QUERY_STATUS, as (name, value, description).

    Parameters
    ----------
    vo_tools_base : str
        The anonymous VO base URL (ends with ``/``); CASDA's "Server" INFO appends ``/tap``
        to it, hence the recorded double slash.
    query_name : str
        ``"Query"`` (TAP) or ``"SIAP  query"`` (SIA2; two spaces, as CASDA converts the
        camel-case key ``SIAP query``).
    query_text : str
        The ADQL, or the SIA2 ``PARAM=value&...`` string.
    started : datetime.datetime
        When the request arrived (UTC, aware).
    now : datetime.datetime
        When the query had run (the emulator's clock): the execution time is the difference.
    table : TableDef or None
        The table of a single-table query: adds the Table Name/Description INFOs.
    """
    infos = [(name, value if value is not None else vo_tools_base + "/tap", text)
             for name, value, text in _SERVICE_INFOS]
    description = "SIAP Query submitted by the user" if query_name.startswith("SIAP") else \
        "Query submitted by the user"
    infos.append((query_name, query_text, description))
    elapsed_ms = max(0, int((now - started).total_seconds() * 1000))
    infos.append(("Execution Time", f"{elapsed_ms}ms", "Time taken to execute query"))
    requested = started.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    infos.append(("Datetime Requested", requested, "Date and time that the request was received"))
    if table is not None:
        full_name = f"{table.schema}.{table.name}" if "." not in table.name else table.name
        infos.append(("Table Name", full_name, "Name of the table queried"))
        # Java prints a null description as "null" (seen in the recordings).
        infos.append(("Table Description", table.description or "null", "Description of the table queried"))
        infos.append(("Table Long Description", " ", "Long description of the table queried"))
    return infos


def _field(column):
    parts = [f'<FIELD name="{column.name}" ID="{column.name}"']
    datatype = column.datatype or "char"
    parts.append(f' datatype="{datatype}"')
    if datatype == "char":
        parts.append(f' arraysize="{column.arraysize or "*"}"')
    elif column.arraysize:
        parts.append(f' arraysize="{column.arraysize}"')
    for attribute in ("unit", "ucd", "utype"):
        value = getattr(column, attribute, None)
        if value:
            parts.append(f' {attribute}="{xml_escape(value)}"')
    description = getattr(column, "description", "")
    if description:
        parts.append(f" >{_CRLF} <DESCRIPTION>{_text_escape(description)}</DESCRIPTION>{_CRLF}"
                     f"</FIELD>{_CRLF}")
    else:
        parts.append(f" />{_CRLF}")
    return "".join(parts)


def _votable_head(resource_name, stylesheet_base, infos, columns):
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>' + _CRLF,
        f"<?xml-stylesheet href='{stylesheet_base}votable.xsl' type='text/xsl'?>" + _CRLF,
        _VOTABLE_OPEN + _CRLF,
        f"<RESOURCE name=\"{resource_name}\" type='results'>" + _CRLF,
        '<INFO name="QUERY_STATUS" value="OK">Successful query</INFO>' + _CRLF,
    ]
    for name, value, description in infos:
        value_text = xml_escape(str(value))
        lines.append(f'<INFO name="{name}" value="{value_text}">{_text_escape(description)}</INFO>{_CRLF}')
    lines.append('<TABLE name="results">' + _CRLF)
    lines.extend(_field(column) for column in columns)
    lines.append("<DATA>" + _CRLF + "<TABLEDATA>" + _CRLF)
    return "".join(lines)


def _votable_rows(rows, columns, proxy_base):
    for count, texts in _text_batches(rows, columns, proxy_base):
        yield "".join(["           <TR><TD>" + "</TD><TD>".join(row) + "</TD></TR>\n"
                       for row in _rows_of(count, texts)]).encode("utf-8")


def votable_chunks(result, *, resource_name, stylesheet_base, proxy_base, infos):
    """A VOTable 1.3 result document, as a generator of byte chunks.

    Parameters
    ----------
    result : QueryResult
        Columns, rows and the overflow flag from ``TapDatabase.execute``.
    resource_name : str
        ``"CASDA TAP Result"`` or ``"CASDA SIAPv2 Result"``.
    stylesheet_base : str
        Base URL of ``votable.xsl`` (the VO base the request came through).
    proxy_base : str
        Replaces the ``#{baseUrl}`` placeholder at the start of char cells.
    infos : list of (name, value, description)
        INFO rows after QUERY_STATUS (see `service_infos`).
    """
    yield _votable_head(resource_name, stylesheet_base, infos, result.columns).encode("utf-8")
    yield from _votable_rows(result.rows, result.columns, proxy_base)
    tail = "</TABLEDATA>" + _CRLF + "</DATA>" + _CRLF + "</TABLE>" + _CRLF
    if result.overflow:
        tail += '<INFO name="QUERY_STATUS" value="OVERFLOW" />' + _CRLF
    yield (tail + "</RESOURCE>" + _CRLF + "</VOTABLE>" + _CRLF).encode("utf-8")


def votable_error(resource_name, message):
    """CASDA's minimal error VOTable (``VotableError.reportError``), as bytes."""
    return (
        '<?xml version="1.0"?>' + _CRLF + _VOTABLE_OPEN + _CRLF
        + f"<RESOURCE name=\"{resource_name}\" type='results'>" + _CRLF
        + f'<INFO name="QUERY_STATUS" value="ERROR">{xml_escape(message)}</INFO>' + _CRLF
        + "</RESOURCE>" + _CRLF + "</VOTABLE>" + _CRLF
    ).encode("utf-8")


def _separated_value(value, separator):
    # CASDA quotes a value holding the separator, a quote or a newline, without doubling
    # inner quotes; its cells are XML-escaped even in CSV (both are CASDA quirks).
    if separator in value or '"' in value or "\n" in value:
        return '"' + value + '"'
    return value


def separated_chunks(result, *, separator, proxy_base):
    """A CSV (``separator=","``) or TSV (``"\\t"``) result as CASDA writes it: byte chunks."""
    header = separator.join(_separated_value(column.name.lower(), separator) for column in result.columns)
    yield (header + _CRLF).encode("utf-8")
    for count, texts in _text_batches(result.rows, result.columns, proxy_base):
        for index, column in enumerate(texts):
            joined = "".join(column)        # one C-speed look for cells that need quotes
            if separator in joined or '"' in joined or "\n" in joined:
                texts[index] = [_separated_value(text, separator) for text in column]
        yield (_CRLF.join(map(separator.join, _rows_of(count, texts))) + _CRLF).encode("utf-8")
