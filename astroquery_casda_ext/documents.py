"""The one reader of network documents: every XML/VOTable answer the package reads whole.

UWS job documents (TAP and SODA), DataLink, SIA2 and TAP answers read into a Table,
TAP metadata (``MAXREC=0``, ``TAP_SCHEMA``), the availability check and error bodies are
all fetched by `fetch` and parsed here, so every one of them gets the same guarantees:

* a total deadline: ``conf.request_budget`` covers the body too, not just the headers
  (`~astroquery_casda_ext.transport.Pacing.for_documents`); answers read into a Table
  keep the streams' minimum rate instead (`~astroquery_casda_ext.transport.Pacing.for_streams`);
* a bound on the decoded bytes: ``conf.document_max_bytes`` (``conf.table_max_bytes`` for
  tables), counted after gzip/deflate decoding, so a small compressed body that would
  inflate to gigabytes stops at the bound (`~astroquery_casda_ext.transport.read_body`);
* a content-type check: an HTML page where XML was asked for (a login page, a proxy's
  error) is a clear package error quoting the page's text;
* parser failures (expat, astropy's VOTable errors, pyvo's UWS reader) and documents that
  declare their own entities (the "billion laughs" XML bomb: no VOTable or UWS document
  needs a DTD) become the caller's public exception, naming the URL.

The bytes are read inside the transport adapter's retry loop (`~astroquery_casda_ext.transport.bounded`),
so a body cut short is asked for again like any transient failure.  Parsing uses astropy
(VOTable) and pyvo (UWS); `relaxed_votable` and `parse_job_document` wrap them thinly
where CASDA's documents need it (fixed-width text columns, ``+0800`` timestamps).
"""
import io
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone

from astropy import units as u
from astropy.io.votable import parse as _astropy_parse
from astropy.io.votable.exceptions import VOWarning
from astroquery.exceptions import MaxResultsWarning
from pyvo.io.uws import parse_job
from requests.structures import CaseInsensitiveDict

from . import conf
from .tables import own_width_text
from .errors import JobError, QueryError, ServiceError, redact_url
from .transport import DOCUMENT_CODINGS, Pacing, bounded, failure, failures_as, read_body, squeeze

__all__ = ["Document", "fetch", "parse_votable", "relaxed_votable", "query_status", "status_of",
           "StatusScanner", "table_of", "finish_table", "repair_units", "JobDocument", "parse_job_document", "XML_TYPES"]

#: What an XML document is asked for with.
XML_TYPES = "application/x-votable+xml, text/xml, application/xml;q=0.9, text/plain;q=0.5"
#: The beginning of a document quoted in an error message.
_QUOTED = 200


@dataclass(frozen=True)
class Document:
    """An answer read whole within its bounds.

    Attributes
    ----------
    url : str
        The URL asked (an error names it, redacted).
    status : int
    content_type : str
        The media type, lower case, without parameters ("" when the server sent none).
    content : bytes
        The decoded body.
    headers : dict
    """

    url: str
    status: int
    content_type: str
    content: bytes = field(repr=False)
    headers: dict = field(default_factory=dict, repr=False)

    @property
    def text(self):
        return self.content.decode("utf-8", "replace")


def fetch(session, method, url, *, what, kind=ServiceError, table=False, statuses=None, scrub=None,
          details=None, accept=XML_TYPES, expect_xml=True, budget=None, **kwargs):
    """Send one request and read its answer whole, within the document bounds.

    Parameters
    ----------
    session : `requests.Session`
        Any session; with the package's `~astroquery_casda_ext.transport.ApiRetryAdapter`
        mounted, transient failures (a body cut short included) are retried there.
    method, url : str
    what : str
        What is being done, for messages (``"reading the job"``).
    kind : type
        The public exception every failure becomes.
    table : bool
        An answer read into a Table: ``conf.table_max_bytes`` and the streams' minimum
        rate instead of ``conf.document_max_bytes`` and the ``request_budget`` deadline.
    statuses, scrub, details
        As `~astroquery_casda_ext.transport.failure`.
    accept : str
        The ``Accept`` header.
    expect_xml : bool
        Refuse an HTML page (or any non-XML media type) in a successful answer.
    budget : float, optional
        Seconds, if shorter than ``conf.request_budget`` (e.g. what is left of a job's wait).
    **kwargs
        Passed to ``session.request`` (``params``, ``data``, ``auth``, ``timeout``...).

    Returns
    -------
    Document
        For a successful (< 400) answer; redirects not followed are returned too.

    Raises
    ------
    kind
        No answer, an HTTP error (with the server's text), a body past its bounds, or HTML.
    """
    details = dict(details or {})
    headers = {"Accept": accept, "Accept-Encoding": DOCUMENT_CODINGS, **(kwargs.pop("headers", None) or {})}
    limit = int(conf.table_max_bytes if table else conf.document_max_bytes)
    pacing = Pacing.for_streams() if table else Pacing.for_documents()
    if budget is not None and not table:
        pacing = Pacing(deadline=min(budget, pacing.deadline) if pacing.deadline else budget)
    with failures_as(kind, url=url, what=what, **details), \
            bounded(limit, pacing, setting=f"conf.{'table' if table else 'document'}_max_bytes") as bounds:
        response = session.request(method, url, headers=headers, stream=True, **kwargs)
        try:
            if response.status_code >= 400:
                raise failure(url=url, what=what, kind=kind, response=response, statuses=statuses,
                              scrub=scrub, **details)
            read_body(response, bounds)   # already read when the adapter is mounted
        finally:
            _close(response)
    # Only status_code, headers and content are read: a minimal response object (astroquery's
    # test mocks, a user's hook on requests.Session.request) has no more.
    answer_headers = CaseInsensitiveDict(getattr(response, "headers", None) or {})
    content = getattr(response, "content", b"")
    content = content if isinstance(content, bytes) else b""
    media = answer_headers.get("Content-Type", "").split(";")[0].strip().lower()
    document = Document(url, response.status_code, media, content, answer_headers)
    if expect_xml and response.status_code < 300 and document.content:
        _require_xml(document, what, kind, details)
    return document


def _close(response):
    close = getattr(response, "close", None)
    if callable(close):
        close()


def _require_xml(document, what, kind, details):
    head = document.content[:512].lstrip().lower()
    html = "html" in document.content_type or head.startswith((b"<!doctype html", b"<html"))
    if html or document.content_type.endswith("json"):
        shown = document.content_type or "an HTML page"
        said = squeeze(re.sub(r"<[^>]+>", " ", document.text[:4000]), 300)
        raise _make(kind, f"{what}: {redact_url(document.url)} answered with {shown}, not an XML document: "
                           f"{said!r}", document.url, said, details)


def _make(kind, message, url, said, details):
    if issubclass(kind, ServiceError):
        return kind(message, url=url, server_message=said, **details)
    if issubclass(kind, JobError):
        return kind(message, server_message=said, **details)
    return kind(message)


# --- XML safety -----------------------------------------------------------------------------

_INTERNAL_SUBSET = re.compile(rb"<!DOCTYPE[^>\[]*\[", re.IGNORECASE)


def _refuse_entities(content, what, kind, url, details):
    """No VOTable or UWS document has a DTD of its own: one that declares entities is refused
    before expat expands them (the "billion laughs" bomb)."""
    if _INTERNAL_SUBSET.search(content[:65536]) or b"<!ENTITY" in content[:65536]:
        source = f" from {redact_url(url)}" if url else ""
        raise _make(kind, f"{what}: the answer{source} declares XML entities (a DTD of its own); refused unread",
                    url, None, details)


def _snippet(content):
    return squeeze(bytes(content[:_QUOTED * 2]).decode("utf-8", "replace"), _QUOTED)


# --- VOTables -------------------------------------------------------------------------------

_FIELD_TAG = re.compile(rb"<FIELD\b[^>]*>")
_CHAR_TYPE = re.compile(rb'\bdatatype\s*=\s*["\'](?:char|unicodeChar)["\']')
_FIXED_SIZE = re.compile(rb'(\barraysize\s*=\s*["\'])\d+(["\'])')


_NAME = re.compile(rb'\bname\s*=\s*["\']([^"\']*)["\']')


def _relaxed(data):
    """``data`` with its fixed-width text FIELDs made variable length, and their names."""
    head_end = data.find(b"<DATA")
    head_end = len(data) if head_end < 0 else head_end
    fixed = []

    def relax(match):
        tag = match.group()
        if not (_CHAR_TYPE.search(tag) and _FIXED_SIZE.search(tag)):
            return tag
        name = _NAME.search(tag)
        if name:
            fixed.append(name.group(1).decode("utf-8", "replace"))
        return _FIXED_SIZE.sub(rb"\g<1>*\g<2>", tag)
    return _FIELD_TAG.sub(relax, data[:head_end]) + data[head_end:], tuple(fixed)


def parse_votable(source, *, what="reading CASDA's answer", kind=ServiceError, relaxed=False, url=None,
                  details=None, warn=False):
    """Parse a VOTable (a `Document` or bytes) with astropy, its failures as ``kind``.

    Parameters
    ----------
    source : Document or bytes
    relaxed : bool
        Read fixed-width text columns (``arraysize="255"``) as variable length, so each
        cell costs what it holds (astropy has no option for it: the FIELDs are rewritten).
        Their names are kept as the result's ``fixed_width_text`` attribute, for
        `~astroquery_casda_ext.tables.own_width_text`.
    warn : bool
        Let astropy's VOTable warnings reach the caller (as astroquery.casda does for DataLink
        documents) instead of silencing them; a warning the caller's filters turn into an
        error is raised as it is.

    Returns
    -------
    ``astropy.io.votable.tree.VOTableFile``
    """
    details = dict(details or {})
    content = source.content if isinstance(source, Document) else \
        source.encode() if isinstance(source, str) else bytes(source)
    url = source.url if isinstance(source, Document) else url
    _refuse_entities(content, what, kind, url, details)
    data, fixed = _relaxed(content) if relaxed else (content, ())
    with warnings.catch_warnings():
        if not warn:
            warnings.simplefilter("ignore", VOWarning)
        try:
            votable = _astropy_parse(io.BytesIO(data), verify="warn")
        except Exception as exc:   # expat, astropy and numpy raise unrelated types for bad input
            if isinstance(exc, Warning) and not isinstance(exc, ValueError):
                raise   # a warning (W50...) the caller's filters made an error stays what it is
            snippet = _snippet(content)
            where = f" from {redact_url(url)}" if url else ""
            raise _make(kind, f"{what}: the answer{where} is not a VOTable ({type(exc).__name__}: "
                              f"{squeeze(str(exc), 200)}): {snippet!r}", url, snippet, details) from None
    votable.fixed_width_text = fixed
    return votable


def relaxed_votable(source):
    """Parse a VOTable with its fixed-width text columns read as variable length.

    astropy stores ``char`` FIELDs of ``arraysize="255"`` as 255 four-byte characters per
    cell, whatever the cell holds; rewriting the arraysize to ``*`` before parsing keeps
    each cell as long as its text.

    Parameters
    ----------
    source : bytes or iterable of bytes
        The whole document, or its chunks.

    Returns
    -------
    ``astropy.io.votable.tree.VOTableFile``
    """
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else b"".join(source)
    return parse_votable(data, relaxed=True)


def status_of(infos):
    """``(status, message)`` from ``(name, value, content)`` triples of a document's INFOs.

    The one ``QUERY_STATUS`` rule: the *last* QUERY_STATUS counts (CASDA writes OVERFLOW, or
    an ERROR met while writing rows, after ``</TABLE>``); none means OK.
    """
    status = ("OK", "")
    for name, value, content in infos:
        if str(name or "").upper() == "QUERY_STATUS":
            status = (str(value or "").upper(), (content or "").strip())
    return status


def query_status(votable):
    """``(status, message)`` of a parsed VOTable: its INFOs at every level, in document order."""
    infos = list(votable.infos)
    for resource in votable.resources:
        infos += list(resource.infos)
        for inner in getattr(resource, "resources", ()):
            infos += list(inner.infos)
    return status_of((info.name, info.value, info.content) for info in infos)


_INFO = re.compile(rb"<INFO\b([^>]*?)(/>|>(.*?)</INFO\s*>)", re.DOTALL)
_ATTRIBUTE = re.compile(rb"""\b(name|value)\s*=\s*(?:"([^"]*)"|'([^']*)')""")


class StatusScanner:
    """The ``QUERY_STATUS`` of a VOTable streamed to a file, wherever the server put it.

    Fed every chunk as it passes; INFO elements (never inside a cell: CASDA XML-escapes
    cells) are collected across chunk boundaries, and `status` applies `status_of`.
    """

    _KEEP = 8192

    def __init__(self):
        self._carry = b""
        self._infos = []

    def feed(self, chunk):
        data = self._carry + chunk
        end = 0
        for match in _INFO.finditer(data):
            attributes = {name.decode(): (one or two).decode("utf-8", "replace")
                          for name, one, two in _ATTRIBUTE.findall(match.group(1))}
            if attributes.get("name", "").upper() == "QUERY_STATUS":
                text = (match.group(3) or b"").decode("utf-8", "replace")
                self._infos.append((attributes["name"], attributes.get("value", ""), _unescape(text)))
            end = match.end()
        rest = data[end:]
        start = rest.rfind(b"<INFO")
        self._carry = rest[start:][-self._KEEP:] if start >= 0 else rest[-5:]

    @property
    def status(self):
        return status_of(self._infos)


def _unescape(text):
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&")):
        text = text.replace(entity, char)
    return text.strip()


# --- VOTable answers as Tables -------------------------------------------------------------------

# Columns that hold ICRS degrees; given a unit if the server left it out, so that
# SkyCoord(t['s_ra'], t['s_dec']) works on every table the package returns.
_DEGREE_COLUMNS = ("s_ra", "s_dec", "ra_deg_cont", "dec_deg_cont")
#: CASDA's TAP prefixes some error messages with this.
_QUERY_ERROR_PREFIX = "Query Error: "


def repair_units(table):
    """Units astropy's VOTable reader could not read (CDS syntax has no ``beam``, so
    ``flux_peak`` in ``mJy/beam`` arrives unrecognised) are read again in astropy's own
    syntax; degree columns without a unit get one, so SkyCoord can use them."""
    for column in table.itercols():
        if isinstance(column.unit, u.UnrecognizedUnit):
            try:
                column.unit = u.Unit(column.unit.name, parse_strict="raise")
            except ValueError:
                pass               # e.g. CASDA's 'h:m:s' on text columns: keep it as written
    for name in _DEGREE_COLUMNS:
        if name in table.colnames and table[name].unit is None:
            table[name].unit = u.deg
    return table


def _warn_overflow(table, service):
    warnings.warn(MaxResultsWarning(
        f"CASDA's {service} stopped at {len(table)} rows (MAXREC or the server's limit): there are more. "
        "Narrow the query or raise maxrec."), stacklevel=3)


def table_of(votable, service, *, url=None):
    """The result Table of a parsed VOTable answer: ``QUERY_STATUS=ERROR`` (wherever it is)
    becomes `~astroquery_casda_ext.errors.QueryError` with the server's words, OVERFLOW a
    `~astroquery.exceptions.MaxResultsWarning`.

    Raises
    ------
    QueryError, ServiceError
    """
    status, message = query_status(votable)
    _raise_if_error(status, message, service, url)
    resources = [res for res in votable.resources if res.tables]
    if not resources:
        raise ServiceError(f"CASDA's {service} answer has no result table", url=url)
    # read relaxed (parse_votable(relaxed=True)): text declared with a width gets its longest value's
    table = own_width_text(resources[0].tables[0].to_table(use_names_over_ids=True),
                           getattr(votable, "fixed_width_text", ()))
    return finish_table(table, status, message, service, url=url)


def _raise_if_error(status, message, service, url):
    if status == "ERROR":
        message = message[len(_QUERY_ERROR_PREFIX):] if message.startswith(_QUERY_ERROR_PREFIX) else message
        raise QueryError(f"CASDA {service} query failed: {message}", url=url, server_message=message)


def finish_table(table, status, message, service, *, url=None):
    """``table`` as an answer whose ``QUERY_STATUS`` was ``status``: ERROR is
    `~astroquery_casda_ext.errors.QueryError` with the server's words, OVERFLOW a
    `~astroquery.exceptions.MaxResultsWarning`; units repaired (`repair_units`)."""
    _raise_if_error(status, message, service, url)
    table.meta["complete"] = status != "OVERFLOW"
    if status == "OVERFLOW":
        _warn_overflow(table, service)
    return repair_units(table)


# --- UWS job documents ------------------------------------------------------------------------

@dataclass(frozen=True)
class JobDocument:
    """The parts of a UWS job document this client uses.

    ``results`` are ``(result id, href)`` pairs exactly as the server sent them;
    ``parameters`` are ``(name, value)`` pairs (they contain access tokens, so neither is
    shown by ``repr``).
    """

    job_id: str
    phase: str
    results: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    error_summary: str | None = None
    version: str = "1.0"
    start_time: datetime | None = None
    end_time: datetime | None = None
    destruction: datetime | None = None
    parameters: tuple[tuple[str, str], ...] = field(default=(), repr=False)


_TIME_ELEMENT = re.compile(rb"(<(?:[\w.-]+:)?(?:quote|creationTime|startTime|endTime|destruction)\b[^>/]*>)"
                           rb"([^<]*)(</)")


def _normalise_times(content):
    # pyvo hands UWS timestamps to astropy Time, which accepts no numeric UTC offset at
    # all (neither CASDA's "+0800" nor "+08:00"), so offsets are converted to UTC "Z" here.
    def to_utc(match):
        text = match.group(2).decode("utf-8", "replace").strip()
        return match.group(1) + _utc_text(text).encode() + match.group(3)
    return _TIME_ELEMENT.sub(to_utc, content)


def _utc_text(text):
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return ""   # not a timestamp (some UWS servers write e.g. -1 for an unknown quote)
    if moment.tzinfo is None:
        return text
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_job_document(content):
    """Parse a UWS job document (CASDA SODA's ``uws:`` prefixed or TAP's default namespace).

    Parameters
    ----------
    content : bytes or Document
        The body of ``GET <job URL>``.

    Returns
    -------
    JobDocument

    Raises
    ------
    JobError
        The content is not a UWS job document.
    """
    content = content.content if isinstance(content, Document) else content
    _refuse_entities(content, "reading the job", JobError, None, {})
    try:
        job = parse_job(io.BytesIO(_normalise_times(content)))
    except Exception as exc:   # expat, astropy and pyvo raise unrelated types for bad input
        raise JobError(f"not a UWS job document ({type(exc).__name__}): {_snippet(content)!r}") from exc
    phase = (job.phase or "").strip().upper()
    if not phase:
        raise JobError("the UWS job document has no phase")
    summary = job.errorsummary
    message = getattr(getattr(summary, "message", None), "content", None) if summary is not None else None
    return JobDocument(
        job_id=(job.jobid or "").strip(), phase=phase,
        results=tuple(((result.id_ or "").strip(), (result.href or "").strip()) for result in job.results),
        error_summary=(message or "").strip() or None, version=str(job.version or "1.0"),
        start_time=_datetime(job.starttime), end_time=_datetime(job.endtime),
        destruction=_datetime(job.destruction),
        parameters=tuple(((param.id_ or "").strip(), (param.content or "").strip())
                         for param in job.parameters))


def _datetime(value):
    return None if value is None else value.to_datetime(timezone=timezone.utc)
