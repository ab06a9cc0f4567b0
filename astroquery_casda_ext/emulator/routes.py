"""The emulator's URL table and the VO handlers (TAP, SIA2, VOSI).

Routes are data: ``ROUTES`` lists ``(methods, path regex, handler)``; `dispatch` calls the
first handler whose regex matches the request path, with the regex's named groups as
keyword arguments.  Handlers read the request through a `RequestContext`, call the
backend and ``render``, and return a werkzeug ``Response``.

The VO services (``VO_ROUTES`` here and ``datalink_routes.ROUTES``) are written relative to a VO
base and mounted twice: under ``/casda_vo_tools/`` (anonymous) and ``/casda_vo_proxy/vo/``
(the OPAL proxy; ``server.py`` has authenticated the user before dispatch).  SODA and
download routes (``soda_routes.ROUTES``) are absolute.
"""
import datetime as _dt
import re
from dataclasses import dataclass
from functools import partial

from werkzeug.wrappers import Request, Response

from . import render
from .adql import AdqlError
from .backend import TapJobFailed, User
from .datalink_routes import ROUTES as DATALINK_ROUTES
from .sia2 import DISTANCE_COLUMN, UsageFault, build_sia2_query
from .soda_routes import ROUTES as SODA_ROUTES

__all__ = ["RequestContext", "User", "ROUTES", "VO_ROUTES", "VO_BASES", "dispatch"]

#: Where the VO services are mounted: (path prefix, served through the OPAL proxy?).
VO_BASES = (("/casda_vo_tools/", False), ("/casda_vo_proxy/vo/", True))
PROXY_PREFIX = "casda_vo_proxy/vo/"
TOOLS_PREFIX = "casda_vo_tools/"

TAP_RESOURCE = "CASDA TAP Result"
SIA2_RESOURCE = "CASDA SIAPv2 Result"
#: vo_tools ``tap.max.records``: the row limit when MAXREC is not given.
TAP_MAX_RECORDS = 20_000_000
_INT32 = re.compile(r"^[+-]?\d{1,10}$")
#: vo_tools ``TapUWService``: ``uws.setDefaultSerializer("text/xml")`` types every TAP job document.
UWS_TYPE = "text/xml"


@dataclass
class RequestContext:
    """What a handler knows about the request it answers.

    Attributes
    ----------
    request : werkzeug.wrappers.Request
    backend : EmulatorBackend
    base_url : str
        ``scheme://host[:port]/`` from the request's ``Host`` header, so absolute URLs in
        documents work behind a port forward.
    user : User or None
        The OPAL user the proxy authenticated; None for anonymous requests.
    via_proxy : bool
        The request came in under ``/casda_vo_proxy/vo/``.
    """

    request: Request
    backend: object
    base_url: str
    user: User | None = None
    via_proxy: bool = False

    @property
    def options(self):
        """The emulator's current `EmulatorOptions`."""
        return self.backend.options

    def url(self, path=""):
        """Absolute URL of ``path`` (relative to the server root) on this request's host."""
        return self.base_url + path.lstrip("/")

    @property
    def vo_base(self):
        """The VO base this request came through (ends with ``/``)."""
        return self.url(PROXY_PREFIX if self.via_proxy else TOOLS_PREFIX)

    def params(self):
        """Query and form parameters as ``(name, value)`` pairs, names as sent, in order."""
        pairs = list(self.request.args.items(multi=True))
        if self.request.method == "POST":
            pairs += list(self.request.form.items(multi=True))
        return pairs

    def first_params(self):
        """Parameters with lower-case names, first value of each (vo_tools ``getParamsMap``)."""
        params = {}
        for name, value in self.params():
            params.setdefault(name.lower(), value)
        return params


def _now():
    return _dt.datetime.now(_dt.timezone.utc)


def _text(body, status=200, **headers):
    return Response(body, status=status, content_type="text/plain", headers=headers)


def _xml(body, status=200, content_type="application/xml"):
    return Response(body, status=status, content_type=content_type)


def _see_other(location):
    return Response(b"", status=303, headers={"Location": location})


def _user_scope(ctx):
    """(projects, admin) for the embargo rules of the TAP database."""
    if ctx.user is None:
        return frozenset(), False
    return frozenset(ctx.user.projects), bool(ctx.user.admin)


# --------------------------------------------------------------------------------------
# TAP: parameters, formats, running a query
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFormat:
    """vo_tools ``OutputFormat``: identifiers (first = default content type), file extension."""

    name: str
    extension: str
    identifiers: tuple

    @property
    def content_type(self):
        return self.identifiers[0]


OUTPUT_FORMATS = (
    OutputFormat("votable", "xml", ("application/x-votable+xml", "text/xml", "votable", "xml")),
    OutputFormat("csv", "csv", ("text/csv;header=present", "text/csv", "csv")),
    OutputFormat("tsv", "tsv", ("text/tab-separated-values", "tsv")),
)


def output_format(value):
    """The `OutputFormat` for a FORMAT value (case-insensitive; blank = VOTable), or None."""
    wanted = (value or "text/xml").strip().lower()
    for candidate in OUTPUT_FORMATS:
        if wanted in candidate.identifiers:
            return candidate
    return None


def tap_content_type(fmt, format_param):
    """Content-Type of a TAP result: a VOTable alias other than ``votable`` is echoed back."""
    if fmt.name == "votable" and format_param and format_param.strip().lower() != "votable":
        return format_param
    return fmt.content_type


def validate_tap(params):
    """CASDA's ``validateTapJob`` checks, in its order; returns (OutputFormat, maxrec).

    Raises
    ------
    TapJobFailed
        With CASDA's message for the first (or the MAXREC) problem.
    """
    version, lang, query = params.get("version"), params.get("lang"), params.get("query")
    fmt, maxrec_text, message = output_format(params.get("format")), params.get("maxrec"), None
    if version is not None and version != "1.0":
        message = f"Unsupported TAP version: {version}"
    elif lang not in ("ADQL", "ADQL-2.0"):
        message = f"Unknown query language: {'null' if lang is None else lang}"
    elif not (query or "").strip():
        message = "Missing QUERY parameter"
    elif fmt is None:
        message = f"Unsupported FORMAT requested: {params.get('format')}"
    maxrec = TAP_MAX_RECORDS
    if maxrec_text is not None and maxrec_text.strip():
        if _INT32.match(maxrec_text) and -2**31 <= int(maxrec_text) < 2**31:
            maxrec = max(0, int(maxrec_text))
        else:
            message = f"Invalid MAXREC parameter value: {maxrec_text}"
    if message is not None:
        raise TapJobFailed(message)
    return fmt, maxrec


@dataclass(frozen=True)
class _QueryPlace:
    """Base URLs a result document needs, captured from the request that asked for it."""

    tools_base: str
    proxy_base: str
    stylesheet_base: str


def _place(ctx):
    return _QueryPlace(ctx.url(TOOLS_PREFIX), ctx.url(PROXY_PREFIX), ctx.vo_base)


def _result_chunks(backend, result, fmt, *, place, query_name, query_text, started, resource):
    """Byte chunks of a query result in ``fmt``."""
    if fmt.name != "votable":
        separator = "," if fmt.name == "csv" else "\t"
        return render.separated_chunks(result, separator=separator, proxy_base=place.proxy_base)
    table = backend.table(result.table_name) if result.table_name else None
    infos = render.service_infos(vo_tools_base=place.tools_base, query_name=query_name,
                                 query_text=query_text, started=started, table=table)
    return render.votable_chunks(result, resource_name=resource, stylesheet_base=place.stylesheet_base,
                                 proxy_base=place.proxy_base, infos=infos)


def run_tap_query(backend, params, *, user, place, started):
    """Validate and run a TAP query; returns (OutputFormat, byte chunks).

    Raises
    ------
    TapJobFailed
        With the text CASDA puts in ``QUERY_STATUS=ERROR``.
    """
    fmt, maxrec = validate_tap(params)
    projects, admin = (frozenset(), False) if user is None else (frozenset(user.projects), bool(user.admin))
    try:
        result = backend.database.execute(params["query"], maxrec=maxrec, projects=projects, admin=admin,
                                          stream=True)
    except AdqlError as exc:
        raise TapJobFailed(exc.message) from exc
    return fmt, _result_chunks(backend, result, fmt, place=place, query_name="Query",
                               query_text=params["query"], started=started, resource=TAP_RESOURCE)


# --------------------------------------------------------------------------------------
# TAP handlers
# --------------------------------------------------------------------------------------


def tap_sync(ctx):
    """``tap/sync``: REQUEST=doQuery (exact case) and LANG are required; errors are HTTP 200 VOTables."""
    started, params = _now(), ctx.first_params()
    request_param = params.get("request")
    if request_param == "getCapabilities":
        return Response(b"", status=302, headers={"Location": ctx.vo_base + "tap/capabilities"})
    if request_param != "doQuery":
        # "paramater" is CASDA's spelling.
        message = ("Missing REQUEST paramater." if request_param is None
                   else f"Unsupported request: {request_param}")
        return _xml(render.votable_error(TAP_RESOURCE, message), content_type=render.VOTABLE_TYPE)
    headers, content_type = {}, render.VOTABLE_TYPE
    fmt = output_format(params.get("format"))
    if fmt is not None:
        content_type = tap_content_type(fmt, params.get("format"))
        headers["Content-Disposition"] = f'attachment; filename="result.{fmt.extension}"'
    try:
        fmt, chunks = run_tap_query(ctx.backend, params, user=ctx.user, place=_place(ctx), started=started)
    except TapJobFailed as exc:
        # vo_tools resets the type to VOTable but keeps the Content-Disposition already set.
        return Response(render.votable_error(TAP_RESOURCE, str(exc)), content_type=render.VOTABLE_TYPE,
                        headers=headers)
    return Response(chunks, content_type=content_type, headers=headers, direct_passthrough=True)


def _job_url(ctx, job_id):
    return ctx.vo_base + "tap/async/" + job_id


def _tap_job_or_404(ctx, job_id):
    job = ctx.backend.tap_jobs.get(job_id)
    if job is None:
        return None, _text(f"Incorrect job ID! The job \"{job_id}\" does not exist.", status=404)
    return job, None


def _execute_tap_job(job, *, backend, place):
    """Work of an async TAP job (runs in the job's thread): write the result to a file."""
    fmt, chunks = run_tap_query(backend, job.parameters, user=job.user, place=place, started=job.start_time)
    path = backend.tap_jobs.result_file(job.job_id, "." + fmt.extension)
    with open(path, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
    return path, tap_content_type(fmt, job.parameters.get("format"))


def _start_tap_job(ctx, job):
    work = partial(_execute_tap_job, backend=ctx.backend, place=_place(ctx))
    return ctx.backend.tap_jobs.run(job, work)


def _apply_phase(ctx, job, phase):
    """PHASE=RUN or PHASE=ABORT; returns an error response or None."""
    if phase == "RUN":
        _start_tap_job(ctx, job)
    elif phase == "ABORT":
        ctx.backend.tap_jobs.abort(job)
    else:
        return _text(f"Incorrect value for the parameter PHASE: \"{phase}\"! It should be RUN or ABORT.",
                     status=400)
    return None


def tap_job_list(ctx):
    """``GET tap/async``: CASDA shows an empty list to everyone but trusted administrators."""
    return _xml(render.tap_job_list(), content_type="text/xml")


def tap_create(ctx):
    """``POST tap/async``: a new PENDING job (RUN at once when PHASE=RUN), 303 to it."""
    params = ctx.first_params()
    phase = params.pop("phase", None)
    job = ctx.backend.tap_jobs.create(params, ctx.user, ctx.via_proxy)
    if phase is not None:
        error = _apply_phase(ctx, job, phase)
        if error is not None:
            return error
    return _see_other(_job_url(ctx, job.job_id))


def _wait_if_asked(ctx, job):
    """UWS 1.1 WAIT, only when ``options.uws_wait`` (CASDA ignores WAIT)."""
    wait = ctx.request.args.get("WAIT") or ctx.request.args.get("wait")
    if not ctx.options.uws_wait or wait is None or job.phase not in ("PENDING", "QUEUED", "EXECUTING"):
        return
    try:
        seconds = float(wait)
    except ValueError:
        return
    job.wait_for_change(job.phase, 60.0 if seconds < 0 else min(seconds, 60.0))


def tap_job(ctx, job_id):
    """``GET tap/async/<id>``: the UWS job document."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    _wait_if_asked(ctx, job)
    return _xml(render.tap_job(job, job_url=_job_url(ctx, job_id), href_style=ctx.options.tap_result_href),
                content_type=UWS_TYPE)


def tap_job_delete(ctx, job_id):
    """``DELETE tap/async/<id>``: gone, 303 to the job list."""
    if not ctx.backend.tap_jobs.delete(job_id):
        return _tap_job_or_404(ctx, job_id)[1]
    return _see_other(ctx.vo_base + "tap/async")


def tap_job_post(ctx, job_id):
    """``POST tap/async/<id>``: ACTION=DELETE, PHASE=RUN|ABORT, or more parameters."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    params = ctx.first_params()
    if params.get("action", "").upper() == "DELETE":
        return tap_job_delete(ctx, job_id)
    phase = params.pop("phase", None)
    if params and job.phase == "PENDING":
        job.parameters.update(params)
    if phase is not None:
        error = _apply_phase(ctx, job, phase)
        if error is not None:
            return error
    return _see_other(_job_url(ctx, job_id))


def tap_job_phase(ctx, job_id):
    """``GET|POST tap/async/<id>/phase``."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    if ctx.request.method != "POST":
        return _text(job.phase)
    phase = ctx.first_params().get("phase")
    error = _apply_phase(ctx, job, phase) if phase is not None else _text("Missing PHASE parameter", 400)
    return error or _see_other(_job_url(ctx, job_id))


def tap_job_parameters(ctx, job_id):
    """``GET|POST tap/async/<id>/parameters``: POST adds parameters while PENDING."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    if ctx.request.method == "POST":
        params = ctx.first_params()
        phase = params.pop("phase", None)
        if job.phase != "PENDING":
            return _text(f"Job \"{job_id}\" is not PENDING: its parameters can not be changed.", 403)
        job.parameters.update(params)
        if phase is not None:
            _apply_phase(ctx, job, phase)
        return _see_other(_job_url(ctx, job_id))
    return _xml(render.tap_parameters(job), content_type=UWS_TYPE)


def tap_job_results(ctx, job_id):
    """``GET tap/async/<id>/results``."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    document = render.tap_results(job, job_url=_job_url(ctx, job_id), href_style=ctx.options.tap_result_href)
    return _xml(document, content_type=UWS_TYPE)


def tap_job_result(ctx, job_id):
    """``GET tap/async/<id>/results/result``: the result document, streamed from its file."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    if job.phase != "COMPLETED" or job.result_path is None or not job.result_path.exists():
        return _text(f"No result identified with \"result\" in the job \"{job_id}\"!", status=404)
    size = job.result_path.stat().st_size
    response = Response(render.FileBody(job.result_path, 0, size), content_type=job.result_type,
                        direct_passthrough=True)
    response.headers["Content-Length"] = str(size)
    return response


def tap_job_error(ctx, job_id):
    """``GET tap/async/<id>/error``: the error VOTable of an ERROR job."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    if job.phase != "ERROR" or job.error is None:
        return _text(f"No error summary for the job \"{job_id}\"!", status=404)
    return _xml(render.votable_error(TAP_RESOURCE, job.error), content_type=render.VOTABLE_TYPE)


def _job_attribute(read, write=None):
    """A handler for a plain-text job attribute; ``write(job, value)`` handles POST."""
    def handler(ctx, job_id):
        job, missing = _tap_job_or_404(ctx, job_id)
        if missing:
            return missing
        if ctx.request.method == "POST" and write is not None:
            values = list(ctx.first_params().values())
            if values:
                write(job, values[0])
            return _see_other(_job_url(ctx, job_id))
        return _text(read(job))
    return handler


def _set_execution_duration(job, value):
    if value.strip().lstrip("-").isdigit():
        job.execution_duration = int(value)


def _set_destruction(job, value):
    try:
        moment = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return
    job.destruction = moment if moment.tzinfo else moment.replace(tzinfo=_dt.timezone.utc)


tap_job_quote = _job_attribute(lambda job: "")
tap_job_owner = _job_attribute(lambda job: "")
tap_job_execution_duration = _job_attribute(lambda job: str(job.execution_duration), _set_execution_duration)
tap_job_destruction = _job_attribute(lambda job: render.uws_time(job.destruction), _set_destruction)


def tap_tables(ctx):
    """``tap/tables``: the VOSI tableset."""
    return _xml(render.vosi_tables(ctx.backend.database.tables))


# --------------------------------------------------------------------------------------
# SIA2 and VOSI
# --------------------------------------------------------------------------------------


def _sia2_response(body, response_format):
    if response_format is None:
        return Response(body, content_type="text/xml", direct_passthrough=not isinstance(body, bytes))
    return Response(body, content_type=render.VOTABLE_TYPE, direct_passthrough=not isinstance(body, bytes),
                    headers={"Content-Disposition": 'attachment; filename="sia2_results.xml"'})


def sia2_query(ctx):
    """``sia2/query``: SIA2 parameters to ADQL on ivoa.obscore; errors are HTTP 200 VOTables."""
    started, params = _now(), ctx.params()
    response_format = next((value for name, value in params if name.lower() == "responseformat"), None)
    try:
        query = build_sia2_query(params)
        projects, admin = _user_scope(ctx)
        maxrec = TAP_MAX_RECORDS if query.maxrec is None else query.maxrec
        result = ctx.backend.database.execute(query.adql, maxrec=maxrec, projects=projects, admin=admin)
    except UsageFault as exc:
        # casda_text: the messages exactly as CASDA terminates them (with "\r\n").
        message = getattr(exc, "casda_text", str(exc))
        return _sia2_response(render.votable_error(SIA2_RESOURCE, message), response_format)
    except AdqlError as exc:
        return _sia2_response(render.votable_error(SIA2_RESOURCE, exc.message), response_format)
    if result.columns and result.columns[0].name == "distance":
        # CASDA's SIA2 writer describes the column from siap1-fields.properties, not as ADQL's DISTANCE.
        result.columns[0] = DISTANCE_COLUMN
    chunks = _result_chunks(ctx.backend, result, OUTPUT_FORMATS[0], place=_place(ctx),
                            query_name="SIAP  query", query_text=query.query_string, started=started,
                            resource=SIA2_RESOURCE)
    return _sia2_response(chunks, response_format)


_CAPABILITIES = {"tap": render.tap_capabilities, "sia2": render.sia2_capabilities,
                 "datalink": render.datalink_capabilities}


def capabilities(ctx, service):
    """``<service>/capabilities`` for TAP, SIA2 and DataLink."""
    return _xml(_CAPABILITIES[service](ctx.vo_base + service))


def availability(ctx, service):
    """``<service>/availability``: VOSI availability (also the proxy's login check)."""
    return _xml(render.availability(ctx.backend.up_since))


def votable_xsl(ctx):
    """The stylesheet the documents' ``xml-stylesheet`` instruction points at."""
    return Response(render.VOTABLE_XSL, content_type="text/xsl")


_JOB = r"tap/async/(?P<job_id>[^/]+)"

#: (methods, path regex relative to a VO base, handler).
VO_ROUTES = [
    (("GET", "POST"), r"tap/sync$", tap_sync),
    (("GET",), r"tap/async$", tap_job_list),
    (("POST",), r"tap/async$", tap_create),
    (("GET",), _JOB + r"$", tap_job),
    (("POST",), _JOB + r"$", tap_job_post),
    (("DELETE",), _JOB + r"$", tap_job_delete),
    (("GET", "POST"), _JOB + r"/phase$", tap_job_phase),
    (("GET", "POST"), _JOB + r"/parameters$", tap_job_parameters),
    (("GET",), _JOB + r"/results$", tap_job_results),
    (("GET",), _JOB + r"/results/result$", tap_job_result),
    (("GET",), _JOB + r"/error$", tap_job_error),
    (("GET",), _JOB + r"/quote$", tap_job_quote),
    (("GET",), _JOB + r"/owner$", tap_job_owner),
    (("GET", "POST"), _JOB + r"/executionduration$", tap_job_execution_duration),
    (("GET", "POST"), _JOB + r"/destruction$", tap_job_destruction),
    (("GET",), r"tap/tables$", tap_tables),
    (("GET",), r"(?P<service>tap|sia2|datalink)/capabilities$", capabilities),
    (("GET",), r"(?P<service>tap|sia2|datalink|scs|sia1|ssa)/availability$", availability),
    (("GET", "POST"), r"sia2/query$", sia2_query),
    (("GET",), r"votable\.xsl$", votable_xsl),
]


def _mounted(relative_routes):
    """Each relative VO route under both VO bases."""
    mounted = []
    for prefix, _via_proxy in VO_BASES:
        for methods, pattern, handler in relative_routes:
            mounted.append((methods, "^" + re.escape(prefix) + pattern.lstrip("^/"), handler))
    return mounted


#: The whole URL table: VO services under both bases, then SODA and downloads.
ROUTES = _mounted(VO_ROUTES + list(DATALINK_ROUTES)) + list(SODA_ROUTES)

_compiled = None


def _compiled_routes():
    global _compiled
    if _compiled is None:
        _compiled = [(frozenset(methods), re.compile(pattern), handler)
                     for methods, pattern, handler in ROUTES]
    return _compiled


def dispatch(ctx):
    """Answer ``ctx.request`` with the first matching route: 404 for no path, 405 for no method."""
    method, path = ctx.request.method, ctx.request.path
    allowed = set()
    for methods, pattern, handler in _compiled_routes():
        match = pattern.match(path)
        if match is None:
            continue
        if method in methods or (method == "HEAD" and "GET" in methods):
            return handler(ctx, **match.groupdict())
        allowed |= methods
    if allowed:
        return _text("Method Not Allowed", status=405, Allow=", ".join(sorted(allowed)))
    return _text("Not Found", status=404)
