"""Documents shaped like CASDA's: VOTables, CSV/TSV, VOSI, TAP UWS jobs, and file streaming.

Renderers take plain values (base URLs, query results, job records) and return bytes
or generators of byte chunks; they never look at a request, except `stream_file`,
which answers one.  The shapes follow CASDA's own writers (``casda_vo_tools``
``VoTableResultsExtractor``, ``CsvTsvResultsExtractor``, ``VotableError``, the VOSI
JSP templates) and the recorded responses in ``astroquery/casda/tests/data``.
"""
import datetime as _dt
import math
import re
from functools import partial
from itertools import islice
from urllib.parse import quote

import numpy as np
from werkzeug.http import http_date
from werkzeug.wrappers import Response

from .schema import adql_datatype

__all__ = [
    "java_double", "java_float", "xml_escape", "service_infos", "votable_chunks",
    "votable_error", "separated_chunks", "availability", "tap_capabilities",
    "sia2_capabilities", "datalink_capabilities", "vosi_tables", "tap_job", "tap_job_list",
    "tap_parameters", "tap_results", "uws_time", "FileBody", "stream_file", "content_type_for",
    "VOTABLE_XSL",
]

VOTABLE_TYPE = "application/x-votable+xml"
_VOTABLE_OPEN = ('<VOTABLE version="1.3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                 'xmlns="http://www.ivoa.net/xml/VOTable/v1.3" '
                 'xmlns:stc="http://www.ivoa.net/xml/STC/v1.30" >')
_CRLF = "\r\n"
_CHUNK_CHARS = 1 << 16
_BASE_URL_PLACEHOLDER = "#{baseUrl}"

# --------------------------------------------------------------------------------------
# Values as CASDA's Java writes them
# --------------------------------------------------------------------------------------


def _java_from_digits(text, magnitude):
    """Java's ``Double.toString`` layout for the shortest digits in ``text`` (no sign)."""
    if 1e-3 <= magnitude < 1e7:
        if "e" not in text:
            return text if "." in text else text + ".0"
        text = np.format_float_positional(float(text), unique=True, trim="0")
        return text if "." in text else text + ".0"
    if "e" in text:
        mantissa, exponent = text.split("e")
        digits, exponent = mantissa.replace(".", ""), int(exponent) + (len(mantissa.split(".")[0]) - 1)
    else:
        whole, _, fraction = text.partition(".")
        if whole.strip("0"):
            digits, exponent = whole.lstrip("0") + fraction, len(whole.lstrip("0")) - 1
        else:
            digits, exponent = fraction.lstrip("0"), -(len(fraction) - len(fraction.lstrip("0")) + 1)
    digits = digits.strip("0") or "0"
    return f"{digits[0]}.{digits[1:] or '0'}E{exponent}"


def _java_special(value):
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    return None


def java_double(value):
    """``value`` as Java's ``String.valueOf(double)``: ``1.40049E9``, ``0.0``, ``333.16767306594``.

    The digits are Python's shortest round-trip digits, so the text parses back to the
    same double.
    """
    value = float(value)
    special = _java_special(value)
    if special is not None:
        return special
    sign = "-" if value < 0 else ""
    return sign + _java_from_digits(repr(abs(value)), abs(value))


def java_float(value):
    """``value`` as Java's ``String.valueOf(float)`` (shortest digits of the float32)."""
    with np.errstate(over="ignore"):
        single = np.float32(value)  # beyond float32 becomes Infinity, as in Java
    special = _java_special(float(single))
    if special is not None:
        return special
    sign = "-" if single < 0 else ""
    digits = np.format_float_scientific(abs(single), unique=True)
    return sign + _java_from_digits(digits, abs(float(single)))


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


def service_infos(*, vo_tools_base, query_name, query_text, started, table=None):
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
    table : TableDef or None
        The table of a single-table query: adds the Table Name/Description INFOs.
    """
    infos = [(name, value if value is not None else vo_tools_base + "/tap", text)
             for name, value, text in _SERVICE_INFOS]
    description = "SIAP Query submitted by the user" if query_name.startswith("SIAP") else \
        "Query submitted by the user"
    infos.append((query_name, query_text, description))
    elapsed_ms = int((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds() * 1000)
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


# --------------------------------------------------------------------------------------
# VOSI
# --------------------------------------------------------------------------------------


def availability(up_since, *, available=True, note=""):
    """The VOSI availability document (as the recorded ``availability.xml``)."""
    stamp = up_since.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{up_since.microsecond // 1000:03d}Z"
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<availability xmlns="http://www.ivoa.net/xml/VOSIAvailability/v1.0">\n'
        f"    <available>{'true' if available else 'false'}</available>\n"
        f"    <upSince>{stamp}</upSince>\n"
        f"    <note>{xml_escape(note)}</note>\n"
        "</availability>"
    ).encode("utf-8")


_CAPABILITIES_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<vosi:capabilities\n'
    '    xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0"\n{extra_ns}'
    '    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"\n'
    '    xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1">\n'
)


def _vosi_capability(standard_id, url):
    return (
        f'    <capability standardID="{standard_id}">\n'
        '        <interface xsi:type="vs:ParamHTTP" version="1.0" role="std">\n'
        f'            <accessURL use="full">\n                {url}\n            </accessURL>\n'
        "            <queryType>GET</queryType>\n            <resultType>application/xml</resultType>\n"
        "        </interface>\n    </capability>\n"
    )


def tap_capabilities(service_base):
    """VOSI capabilities of TAP at ``service_base`` (``.../tap``, no trailing slash)."""
    return (
        _CAPABILITIES_HEAD.format(extra_ns='    xmlns:tap="http://www.ivoa.net/xml/TAPRegExt/v1.0"\n')
        + _vosi_capability("ivo://ivoa.net/std/VOSI#capabilities", service_base + "/capabilities")
        + _vosi_capability("ivo://ivoa.net/std/VOSI#availability", service_base + "/availability")
        + _vosi_capability("ivo://ivoa.net/std/VOSI#tables", service_base + "/tables")
        + '    <capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tap:TableAccess">\n'
        '        <interface xsi:type="vs:ParamHTTP" version="1.0" role="std">\n'
        f'            <accessURL use="base">{service_base}</accessURL>\n'
        "            <queryType>GET</queryType>\n            <resultType>application/xml</resultType>\n"
        "        </interface>\n"
        '        <dataModel ivo-id="ivo://ivoa.net/std/ObsCore/v1.0">ObsCore 1.0</dataModel>\n'
        "        <language>\n            <name>ADQL</name>\n"
        '            <version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0</version>\n'
        "            <description>ADQL 2.0</description>\n        </language>\n"
        "        <outputFormat>\n            <mime>application/x-votable+xml</mime>\n"
        "            <alias>votable</alias>\n        </outputFormat>\n"
        "        <outputFormat>\n            <mime>text/csv;header=present</mime>\n"
        "            <alias>csv</alias>\n        </outputFormat>\n"
        "        <outputFormat>\n            <mime>text/tab-separated-values</mime>\n"
        "            <alias>tsv</alias>\n        </outputFormat>\n"
        "        <retentionPeriod>\n            <default>43200</default>\n            <hard>432000</hard>\n"
        "        </retentionPeriod>\n"
        "        <executionDuration>\n            <default>360000</default>\n"
        "            <hard>360000</hard>\n"
        "        </executionDuration>\n"
        '        <outputLimit>\n            <hard unit="row">20000000</hard>\n        </outputLimit>\n'
        "    </capability>\n</vosi:capabilities>\n"
    ).encode("utf-8")


def sia2_capabilities(service_base):
    """VOSI capabilities of SIA2 at ``service_base`` (``.../sia2``).

    CASDA's template reads a model key its service never fills, so its SIA2 accessURL is
    empty; the emulator writes the query URL, which pyvo's ``SIA2Service`` needs.
    """
    return (
        _CAPABILITIES_HEAD.format(extra_ns='    xmlns:sia="http://www.ivoa.net/xml/SIA/v1.1"\n')
        + _vosi_capability("ivo://ivoa.net/std/VOSI#capabilities", service_base + "/capabilities")
        + _vosi_capability("ivo://ivoa.net/std/VOSI#availability", service_base + "/availability")
        + '    <capability standardID="ivo://ivoa.net/std/SIA#query-2.0" xsi:type="sia:SimpleImageAccess">\n'
        '        <interface xsi:type="vs:ParamHTTP" version="2.0" role="std">\n'
        f'            <accessURL use="base">{service_base}/query</accessURL>\n'
        "            <queryType>GET</queryType>\n            <resultType>application/xml</resultType>\n"
        "        </interface>\n        <imageServiceType>Pointed</imageServiceType>\n"
        "        <maxImageExtent>\n            <long>10</long>\n            <lat>10</lat>\n"
        "        </maxImageExtent>\n    </capability>\n</vosi:capabilities>\n"
    ).encode("utf-8")


def datalink_capabilities(service_base):
    """VOSI capabilities of DataLink at ``service_base`` (``.../datalink``)."""
    return (
        _CAPABILITIES_HEAD.format(extra_ns="")
        + _vosi_capability("ivo://ivoa.net/std/VOSI#capabilities", service_base + "/capabilities")
        + _vosi_capability("ivo://ivoa.net/std/VOSI#availability", service_base + "/availability")
        + '    <capability standardID="ivo://ivoa.net/std/DataLink#links-1.1">\n'
        '        <interface version="1.0" xsi:type="vs:ParamHTTP" role="std">\n'
        f'            <accessURL use="base">{service_base}/links</accessURL>\n'
        "            <queryType>GET</queryType>\n            <queryType>POST</queryType>\n"
        "            <resultType>application/x-votable+xml;content=datalink</resultType>\n"
        '            <param use="required" std="true">\n                <name>ID</name>\n'
        "                <description>publisher dataset identifier</description>\n"
        "                <ucd>meta.id;meta.main</ucd>\n                <dataType>string</dataType>\n"
        "            </param>\n        </interface>\n    </capability>\n</vosi:capabilities>\n"
    ).encode("utf-8")


def _vosi_column(column):
    parts = [f"        <column>\n          <name>{xml_escape(column.name)}</name>\n"]
    if getattr(column, "description", ""):
        parts.append(f"          <description>{xml_escape(column.description)}</description>\n")
    for attribute in ("unit", "ucd", "utype"):
        value = getattr(column, attribute, None)
        if value:
            parts.append(f"          <{attribute}>{xml_escape(value)}</{attribute}>\n")
    # vo_tools TablesController.getColumn: a vs:TAPType holding the TAP_SCHEMA datatype,
    # with TAP_SCHEMA's size (fixed lengths only) as the ``size`` attribute.
    size = column.arraysize if column.arraysize and column.arraysize.isdigit() else None
    size_attribute = f' size="{size}"' if size else ""
    parts.append(f'          <dataType xsi:type="vs:TAPType"{size_attribute}>'
                 f"{adql_datatype(column)}</dataType>\n        </column>\n")
    return "".join(parts)


def vosi_tables(tables):
    """The VOSI tableset of ``tables`` (TableDef objects), grouped by schema in order."""
    schemas = {}
    for table in tables:
        schemas.setdefault(table.schema, []).append(table)
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n'
           '<vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" '
           'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" '
           'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n']
    for schema, members in schemas.items():
        out.append(f"  <schema>\n    <name>{xml_escape(schema)}</name>\n")
        for table in members:
            full_name = table.name if "." in table.name else f"{table.schema}.{table.name}"
            out.append(f'    <table type="output">\n      <name>{xml_escape(full_name)}</name>\n')
            if table.description:
                out.append(f"      <description>{xml_escape(table.description)}</description>\n")
            out.extend(_vosi_column(column) for column in table.columns)
            out.append("    </table>\n")
        out.append("  </schema>\n")
    out.append("</vosi:tableset>\n")
    return "".join(out).encode("utf-8")


# --------------------------------------------------------------------------------------
# TAP async jobs (UWS 1.0, default namespace, as CASDA's UWS 4.1 library writes them)
# --------------------------------------------------------------------------------------

#: The root attributes of CASDA's TAP job documents, as recorded (tests/data/tap_async_*.xml):
#: UWS 4.1's ``XMLSerializer`` declares ``xs`` too and gives three schema locations.
_UWS_NAMESPACES = ('xmlns="http://www.ivoa.net/xml/UWS/v1.0" xmlns:xlink="http://www.w3.org/1999/xlink" '
                   'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
                   'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                   'xsi:schemaLocation="http://www.ivoa.net/xml/UWS/v1.0 http://www.ivoa.net/xml/UWS/v1.0 '
                   'http://www.w3.org/1999/xlink http://www.w3.org/1999/xlink.xsd '
                   'http://www.w3.org/2001/XMLSchema http://www.w3.org/2001/XMLSchema.xsd"')


def uws_time(moment):
    """A TAP job timestamp as CASDA's UWS 4.1 library writes it: ``yyyy-MM-ddTHH:mm:ss``.

    ``ISO8601Format`` with ``displayTimeZone = false`` and ``displayMilliseconds = false``:
    no milliseconds and no zone (the emulator writes UTC).
    """
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _uws_element(name, value):
    if value is None:
        return f'\t<{name} xsi:nil="true" />\n'
    return f"\t<{name}>{value}</{name}>\n"


def _result_href(result_url, style):
    # CASDA's UWS library passes every href through java.net.URLEncoder.
    if style == "encoded":
        return quote(result_url, safe="*-._").replace("%20", "+")
    return xml_escape(result_url)


def _parameters_xml(parameters, indent="\t"):
    lines = [f'{indent}\t<parameter id="{xml_escape(name)}">{_cdata(value)}</parameter>\n'
             for name, value in parameters.items()]
    return "".join(lines)


def _result_xml(job, job_url, href_style, indent):
    if job.phase != "COMPLETED" or job.result_path is None:
        return ""
    href = _result_href(job_url + "/results/result", href_style)
    return f'{indent}<result id="result" xlink:type="simple" xlink:href="{href}" />\n'


def tap_job(job, *, job_url, href_style):
    """The UWS document of a TAP async job (``job`` is a ``backend.TapJob``).

    Written as CASDA's UWS 4.1 library does (``XMLSerializer.getJob``): UWS 1.0 as the
    default namespace; jobId, ownerId, phase, ``quote xsi:nil``, startTime, endTime,
    executionDuration, destruction, parameters, results, in that order (no runId: it is
    null); ``<errorSummary>`` only on error; times by `uws_time`; and
    (``href_style="encoded"``) the result href percent-encoded whole.
    """
    body = [
        '<?xml version="1.0" encoding="UTF-8"?>\n', f"<job {_UWS_NAMESPACES}>\n",
        f"\t<jobId>{_cdata(job.job_id)}</jobId>\n",
        _uws_element("ownerId", None), _uws_element("phase", job.phase), _uws_element("quote", None),
        _uws_element("startTime", uws_time(job.start_time) if job.start_time else None),
        _uws_element("endTime", uws_time(job.end_time) if job.end_time else None),
        _uws_element("executionDuration", job.execution_duration),
        _uws_element("destruction", uws_time(job.destruction)),
        "\t<parameters>\n", _parameters_xml(job.parameters), "\t</parameters>\n",
        "\t<results>\n", _result_xml(job, job_url, href_style, "\t\t"), "\t</results>\n",
    ]
    if job.error is not None:
        body.append(f'\t<errorSummary type="FATAL" hasDetail="false">\n'
                    f"\t\t<message>{_cdata(job.error)}</message>\n\t</errorSummary>\n")
    body.append("</job>")
    return "".join(body).encode("utf-8")


def tap_job_list():
    """The job list CASDA shows everyone but its administrators: always empty."""
    return ('<uws:jobList xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:schemaLocation="http://www.ivoa.net/xml/UWS/v1.0 http://www.ivoa.net/xml/UWS/v1.0"> '
            "</uws:jobList>").encode("utf-8")


def tap_parameters(job):
    """``<parameters>`` of a TAP job on its own."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<parameters {_UWS_NAMESPACES}>\n{_parameters_xml(job.parameters, indent='')}</parameters>"
            ).encode("utf-8")


def tap_results(job, *, job_url, href_style):
    """``<results>`` of a TAP job on its own."""
    inner = _result_xml(job, job_url, href_style, "\t")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<results {_UWS_NAMESPACES}>\n{inner}</results>").encode("utf-8")


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------

_CONTENT_TYPES = {".fits": "image/x-fits", ".checksum": "text/plain", ".txt": "text/plain"}


def content_type_for(name):
    """CASDA's download Content-Type for a file name (``DataAccessService.downloadFile``)."""
    lowered = name.lower()
    for suffix, content_type in _CONTENT_TYPES.items():
        if lowered.endswith(suffix):
            return content_type
    return "application/octet-stream"


class FileBody:
    """A response body reading ``length`` bytes of ``path`` from ``start``, in chunks.

    The server recognises this type: with no fault and no rate limit it sends the bytes
    with ``os.sendfile`` instead of iterating.  Nothing is read before iteration starts,
    and never more than one chunk at a time.

    Attributes
    ----------
    path : pathlib.Path
    start, length : int
        Byte range of the file to send.
    rate : float or None
        Bytes per second this body may go at (``EmulatorOptions.transfer_rate``).
    """

    #: Bytes read per chunk when iterating.
    chunk_size = 1 << 20

    def __init__(self, path, start, length, *, rate=None):
        self.path, self.start, self.length, self.rate = path, start, length, rate

    def __iter__(self):
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            remaining = self.length
            while remaining > 0:
                chunk = handle.read(min(self.chunk_size, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk


def _validators(path):
    """``ETag`` and ``Last-Modified`` of a file, as a static file server or S3 sends them."""
    info = path.stat()
    return {"ETag": f'"{info.st_ino:x}-{info.st_mtime_ns:x}-{info.st_size:x}"',
            "Last-Modified": http_date(info.st_mtime)}


def _byte_range(ctx, size, validators):
    """(status, start, length, extra headers) for the request's Range against ``size`` bytes.

    An ``If-Range`` that no longer matches the file's ETag (or Last-Modified) gets the
    whole file (RFC 9110 13.1.5): the file changed since the client's partial copy.
    """
    if not ctx.options.range_support or ctx.request.range is None:
        return 200, 0, size, {}
    if_range = ctx.request.headers.get("If-Range")
    if if_range is not None and if_range.strip() not in (validators["ETag"], validators["Last-Modified"]):
        return 200, 0, size, {}
    requested = ctx.request.range
    if requested.units != "bytes" or len(requested.ranges) != 1:
        return 200, 0, size, {}  # several ranges: allowed to answer with the whole file
    span = requested.range_for_length(size)
    if span is None:
        return 416, 0, 0, {"Content-Range": f"bytes */{size}"}
    start, stop = span
    return 206, start, stop - start, {"Content-Range": f"bytes {start}-{stop - 1}/{size}"}


def stream_file(ctx, path, *, download_name, content_type=None):
    """Answer a download of ``path`` the way CASDA's download servlet does.

    ``Content-Disposition: attachment; filename=<name>`` (unquoted), ``Content-Length``,
    ``Content-Type`` by extension; HEAD; a single ``Range`` (206, or 416 when it cannot be
    satisfied) when ``options.range_support``, else no ``Accept-Ranges`` and ``Range``
    ignored; the per-connection ``options.transfer_rate``.

    Parameters
    ----------
    ctx : RequestContext
    path : pathlib.Path
        The file on disk (streamed, never read whole).
    download_name : str
        File name for ``Content-Disposition``.
    content_type : str, optional
        Overrides the type chosen from the extension.
    """
    size = path.stat().st_size
    validators = _validators(path)
    status, start, length, extra = _byte_range(ctx, size, validators)
    headers = {"Content-Disposition": f"attachment; filename={download_name}", **validators, **extra}
    if ctx.options.range_support:
        headers["Accept-Ranges"] = "bytes"
    if status == 416:
        return Response(b"", status=416, headers=headers, content_type="text/plain")
    body = FileBody(path, start, length, rate=ctx.options.transfer_rate)
    response = Response(body, status=status, headers=headers,
                        content_type=content_type or content_type_for(download_name), direct_passthrough=True)
    response.headers["Content-Length"] = str(length)
    return response


#: A small stylesheet served as ``votable.xsl`` (the documents' ``xml-stylesheet`` target).
VOTABLE_XSL = b"""<?xml version="1.0" encoding="UTF-8"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:vo="http://www.ivoa.net/xml/VOTable/v1.3">
  <xsl:output method="html"/>
  <xsl:template match="/">
    <html><body>
      <xsl:for-each select="//vo:TABLE">
        <table border="1">
          <tr><xsl:for-each select="vo:FIELD"><th><xsl:value-of select="@name"/></th></xsl:for-each></tr>
          <xsl:for-each select="vo:DATA/vo:TABLEDATA/vo:TR">
            <tr><xsl:for-each select="vo:TD"><td><xsl:value-of select="."/></td></xsl:for-each></tr>
          </xsl:for-each>
        </table>
      </xsl:for-each>
    </body></html>
  </xsl:template>
</xsl:stylesheet>
"""
