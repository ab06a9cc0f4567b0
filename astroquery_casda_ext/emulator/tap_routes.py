"""Handlers and routes of the emulated TAP service (sync queries, async UWS jobs).

Each handler reads the request through a `~context.RequestContext`, calls the TAP state
(``tap_state``: validation, the query, the job store), renders with ``result_writers``
(results) or ``tap_render`` (job documents) and returns a werkzeug ``Response``.
``ROUTES`` is relative to a VO base; ``routes.py`` mounts it under both.
"""
from dataclasses import dataclass
from functools import partial

from werkzeug.wrappers import Response

from . import result_writers, tap_render
from .result_writers import VOTABLE_TYPE, votable_error
from .context import PROXY_PREFIX, TOOLS_PREFIX, see_other, text_response, xml_response
from .file_responses import file_response
from .tap_state import (
    TapJobFailed, output_format, set_destruction, set_execution_duration, run_query, tap_content_type)

__all__ = ["ROUTES", "QueryPlace", "place_of", "result_chunks"]

TAP_RESOURCE = "CASDA TAP Result"
#: vo_tools ``TapUWService``: ``uws.setDefaultSerializer("text/xml")`` types every TAP job document.
UWS_TYPE = "text/xml"


@dataclass(frozen=True)
class QueryPlace:
    """Base URLs a result document needs, captured from the request that asked for it."""

    tools_base: str
    proxy_base: str
    stylesheet_base: str


def place_of(ctx):
    """The `QueryPlace` of this request."""
    return QueryPlace(ctx.url(TOOLS_PREFIX), ctx.url(PROXY_PREFIX), ctx.vo_base)


def result_chunks(backend, result, fmt, *, place, query_name, query_text, started, resource):
    """Byte chunks of a query result in ``fmt`` (TAP's and SIA2's)."""
    if fmt.name != "votable":
        separator = "," if fmt.name == "csv" else "\t"
        return result_writers.separated_chunks(result, separator=separator, proxy_base=place.proxy_base)
    table = backend.table(result.table_name) if result.table_name else None
    infos = result_writers.service_infos(vo_tools_base=place.tools_base, query_name=query_name,
                                         query_text=query_text, started=started, now=backend.clock.now(),
                                         table=table)
    return result_writers.votable_chunks(result, resource_name=resource, proxy_base=place.proxy_base,
                                         stylesheet_base=place.stylesheet_base, infos=infos)


def run_tap_query(backend, params, *, user, place, started):
    """Validate and run a TAP query; returns (OutputFormat, byte chunks).

    Raises
    ------
    TapJobFailed
        With the text CASDA puts in ``QUERY_STATUS=ERROR``.
    """
    fmt, result = run_query(backend.database, params, user)
    return fmt, result_chunks(backend, result, fmt, place=place, query_name="Query",
                              query_text=params["query"], started=started, resource=TAP_RESOURCE)


# --------------------------------------------------------------------------------------
# TAP handlers
# --------------------------------------------------------------------------------------


def tap_sync(ctx):
    """``tap/sync``: REQUEST=doQuery (exact case) and LANG are required; errors are HTTP 200 VOTables."""
    started, params = ctx.backend.clock.now(), ctx.first_params()
    request_param = params.get("request")
    if request_param == "getCapabilities":
        return Response(b"", status=302, headers={"Location": ctx.vo_base + "tap/capabilities"})
    if request_param != "doQuery":
        # "paramater" is CASDA's spelling.
        message = ("Missing REQUEST paramater." if request_param is None
                   else f"Unsupported request: {request_param}")
        return xml_response(votable_error(TAP_RESOURCE, message), content_type=VOTABLE_TYPE)
    headers, content_type = {}, VOTABLE_TYPE
    fmt = output_format(params.get("format"))
    if fmt is not None:
        content_type = tap_content_type(fmt, params.get("format"))
        headers["Content-Disposition"] = f'attachment; filename="result.{fmt.extension}"'
    try:
        fmt, chunks = run_tap_query(ctx.backend, params, user=ctx.user, place=place_of(ctx), started=started)
    except TapJobFailed as exc:
        # vo_tools resets the type to VOTable but keeps the Content-Disposition already set.
        return Response(votable_error(TAP_RESOURCE, str(exc)),
                        content_type=VOTABLE_TYPE, headers=headers)
    return Response(chunks, content_type=content_type, headers=headers, direct_passthrough=True)


def _job_url(ctx, job_id):
    return ctx.vo_base + "tap/async/" + job_id


def _tap_job_or_404(ctx, job_id):
    job = ctx.backend.tap_jobs.get(job_id)
    if job is None:
        return None, text_response(f"Incorrect job ID! The job \"{job_id}\" does not exist.", status=404)
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
    work = partial(_execute_tap_job, backend=ctx.backend, place=place_of(ctx))
    return ctx.backend.tap_jobs.run(job, work)


def _apply_phase(ctx, job, phase):
    """PHASE=RUN or PHASE=ABORT; returns an error response or None."""
    if phase == "RUN":
        _start_tap_job(ctx, job)
    elif phase == "ABORT":
        ctx.backend.tap_jobs.abort(job)
    else:
        return text_response(
            f"Incorrect value for the parameter PHASE: \"{phase}\"! It should be RUN or ABORT.", status=400)
    return None


def tap_job_list(ctx):
    """``GET tap/async``: CASDA shows an empty list to everyone but trusted administrators."""
    return xml_response(tap_render.tap_job_list(), content_type="text/xml")


def tap_create(ctx):
    """``POST tap/async``: a new PENDING job (RUN at once when PHASE=RUN), 303 to it."""
    params = ctx.first_params()
    phase = params.pop("phase", None)
    job = ctx.backend.tap_jobs.create(params, ctx.user, ctx.via_proxy)
    if phase is not None:
        error = _apply_phase(ctx, job, phase)
        if error is not None:
            return error
    return see_other(_job_url(ctx, job.job_id))


def _wait_if_asked(ctx, job):
    """UWS 1.1 WAIT, only when ``options.uws_wait`` (CASDA ignores WAIT)."""
    wait = ctx.request.args.get("WAIT") or ctx.request.args.get("wait")
    if not ctx.options.uws_wait or wait is None or job.phase not in ("PENDING", "QUEUED", "EXECUTING"):
        return
    try:
        seconds = float(wait)
    except ValueError:
        return
    job.wait_for_change(job.phase, 60.0 if seconds < 0 else min(seconds, 60.0), ctx.backend.clock)


def tap_job(ctx, job_id):
    """``GET tap/async/<id>``: the UWS job document."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    _wait_if_asked(ctx, job)
    document = tap_render.tap_job(job, job_url=_job_url(ctx, job_id), href_style=ctx.options.tap_result_href)
    return xml_response(document, content_type=UWS_TYPE)


def tap_job_delete(ctx, job_id):
    """``DELETE tap/async/<id>``: gone, 303 to the job list."""
    if not ctx.backend.tap_jobs.delete(job_id):
        return _tap_job_or_404(ctx, job_id)[1]
    return see_other(ctx.vo_base + "tap/async")


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
    return see_other(_job_url(ctx, job_id))


def tap_job_phase(ctx, job_id):
    """``GET|POST tap/async/<id>/phase``."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    if ctx.request.method != "POST":
        return text_response(job.phase)
    phase = ctx.first_params().get("phase")
    if phase is None:
        return text_response("Missing PHASE parameter", 400)
    error = _apply_phase(ctx, job, phase)
    return error or see_other(_job_url(ctx, job_id))


def tap_job_parameters(ctx, job_id):
    """``GET|POST tap/async/<id>/parameters``: POST adds parameters while PENDING."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    if ctx.request.method == "POST":
        params = ctx.first_params()
        phase = params.pop("phase", None)
        if job.phase != "PENDING":
            return text_response(f"Job \"{job_id}\" is not PENDING: its parameters can not be changed.", 403)
        job.parameters.update(params)
        if phase is not None:
            _apply_phase(ctx, job, phase)
        return see_other(_job_url(ctx, job_id))
    return xml_response(tap_render.tap_parameters(job), content_type=UWS_TYPE)


def tap_job_results(ctx, job_id):
    """``GET tap/async/<id>/results``."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    document = tap_render.tap_results(job, job_url=_job_url(ctx, job_id),
                                      href_style=ctx.options.tap_result_href)
    return xml_response(document, content_type=UWS_TYPE)


def tap_job_result(ctx, job_id):
    """``GET tap/async/<id>/results/result``: the result document, streamed from its file."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    if job.phase != "COMPLETED" or job.result_path is None or not job.result_path.exists():
        return text_response(f"No result identified with \"result\" in the job \"{job_id}\"!", status=404)
    return file_response(job.result_path, content_type=job.result_type)


def tap_job_error(ctx, job_id):
    """``GET tap/async/<id>/error``: the error VOTable of an ERROR job."""
    job, missing = _tap_job_or_404(ctx, job_id)
    if missing:
        return missing
    if job.phase != "ERROR" or job.error is None:
        return text_response(f"No error summary for the job \"{job_id}\"!", status=404)
    return xml_response(votable_error(TAP_RESOURCE, job.error), content_type=VOTABLE_TYPE)


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
            return see_other(_job_url(ctx, job_id))
        return text_response(read(job))
    return handler


tap_job_quote = _job_attribute(lambda job: "")
tap_job_owner = _job_attribute(lambda job: "")
tap_job_execution_duration = _job_attribute(lambda job: str(job.execution_duration), set_execution_duration)
tap_job_destruction = _job_attribute(lambda job: tap_render.uws_time(job.destruction), set_destruction)


# --------------------------------------------------------------------------------------
# SIA2 and VOSI
_JOB = r"tap/async/(?P<job_id>[^/]+)"

#: (methods, path regex relative to a VO base, handler).
ROUTES = [
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
]


