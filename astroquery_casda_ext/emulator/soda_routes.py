"""Handlers and URL table of the emulated SODA service and the staged-file downloads.

Shaped after ``soda/AccessDataController.java`` (2017): each handler reads the request,
calls the job store (``soda_state``) and answers with a document of ``soda_render``.
Refusals are `SodaError` and go out as CASDA's content-negotiated error bodies
(`error_response`).  ``ROUTES`` is absolute (``/casda_data_access/...``, ``/download/...``).
"""
import functools
import hmac
import json
from datetime import datetime, timezone
from xml.sax.saxutils import escape, quoteattr

from werkzeug.wrappers import Response

from . import vosi_render
from .file_responses import stream_file
from .context import request_params
from .soda_render import (
    ERROR_PAGE, SERVICE_DESCRIPTOR, capabilities_document, error_summary_text, exception_file_text,
    format_time, href_maker, render_job, render_job_list, render_named_parameter, render_parameters,
    render_results, s3_error_body)
from .soda_state import ABORTABLE_PHASES, ACTIVE_PHASES, S3_BUCKET, SodaError, s3_path, sign

__all__ = ["ROUTES", "error_response"]

#: Longest a blocking ``WAIT`` may hold a request.
MAX_WAIT_SECONDS = 120.0
ASYNC_PATH = "casda_data_access/data/async"


def error_response(ctx, status, message):
    """An error body chosen like ``ExceptionHandlers``: the first accepted type decides.

    ``text/plain`` -> ``FAILURE: <message>``; JSON or XML -> a MessageDTO; anything else,
    ``*/*`` included (python-requests' default), -> CASDA's HTML error page, which does
    not show the message.
    """
    accepted = [mime.split(";")[0].strip().lower() for mime, _quality in ctx.request.accept_mimetypes]
    first = accepted[0] if accepted else "*/*"
    if first == "text/plain":
        return Response("FAILURE: " + message, status=status, content_type="text/plain;charset=UTF-8")
    if first == "application/json":
        return Response(json.dumps({"messageCode": "FAILURE", "message": message}), status=status,
                        content_type="application/json;charset=UTF-8")
    if first == "application/xml":
        body = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><messageDTO>'
                f"<messageCode>FAILURE</messageCode><message>{escape(message)}</message></messageDTO>")
        return Response(body, status=status, content_type="application/xml;charset=UTF-8")
    return Response(ERROR_PAGE, status=status, content_type="text/html;charset=UTF-8")


def xml_response(body, status=200):
    return Response(body, status=status, content_type="application/xml;charset=UTF-8")


def text_response(body, status=200):
    return Response(body, status=status, content_type="text/plain;charset=UTF-8")


def redirect(location, body=""):
    """A 303 to ``location``.  With a body (a new job's id) it is ``text/plain``; without one
    it has no Content-Type at all, as CASDA's 303s to RUN, ABORT and DELETE
    (``AsyncFunctionalTest.testScheduleJob*``, ``testAbort*``, ``testCancel*``)."""
    if body:
        return Response(body, status=303, headers={"Location": location},
                        content_type="text/plain;charset=UTF-8")
    response = Response(b"", status=303, headers={"Location": location})
    del response.headers["Content-Type"]
    return response


def job_url(ctx, job_id):
    return ctx.url(f"{ASYNC_PATH}/{job_id}")


def _store(ctx):
    return ctx.backend.soda_jobs


def _now(ctx):
    """The emulator's time (``clock.Clock``; a test may have stopped it)."""
    return ctx.backend.clock.time()


def _hrefs(ctx, store, job):
    """The href of each result of ``job``, in the configured ``href_style``, on this request's host."""
    return href_maker(ctx.url, getattr(ctx.options, "href_style", "plain"), store.secret, job, _now(ctx))


def _param_map(pairs):
    params = {}
    for key, value in pairs:
        params.setdefault(key, []).append(value)
    return params


def _single(params, name):
    values = params.get(name, [])
    if not values:
        raise SodaError(400, f"{name} is a required parameter")
    if len(values) > 1:
        raise SodaError(400, f"only a single {name} parameter is allowed")
    return values[0]


def handles_errors(handler):
    """Turn `SodaError` into CASDA's negotiated error body."""
    @functools.wraps(handler)
    def wrapped(ctx, **groups):
        try:
            return handler(ctx, **groups)
        except SodaError as exc:
            return error_response(ctx, exc.status, exc.message)
    return wrapped


@handles_errors
def create_job(ctx):
    """``POST data/async``: 303 to the new job, its id as the body."""
    store = _store(ctx)
    params = _param_map(request_params(ctx.request))
    errors = store.validate(params, None, id_required=True)
    if errors:
        raise SodaError(400, ";".join(errors))
    job = store.create(params, store.owner_of(params["id"]), _now(ctx))
    return redirect(job_url(ctx, job.job_id), job.job_id)


def job_list(ctx):
    """``GET data/async``: always empty, CASDA lists no owners' jobs."""
    return xml_response(render_job_list())


@handles_errors
def get_job(ctx, job_id):
    """``GET data/async/<id>``: the job document (a poll; blocks on WAIT when enabled)."""
    store = _store(ctx)
    job = store.lookup(job_id, _now(ctx))
    phase = job.observe(_now(ctx), poll=True)
    uws_wait = getattr(ctx.options, "uws_wait", False)
    if uws_wait:
        wait = _wait_seconds(ctx.request.args)
        wanted = ctx.request.args.get("PHASE") or ctx.request.args.get("phase")
        if wait and phase in ACTIVE_PHASES and (wanted is None or wanted == phase):
            job.wait_for_change(phase, _now(ctx) + wait, ctx.backend.clock)
        store.lookup(job_id, _now(ctx))
    return xml_response(render_job(job, _hrefs(ctx, store, job), version="1.1" if uws_wait else None))


def _wait_seconds(args):
    raw = args.get("WAIT", args.get("wait"))
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        return 0.0
    return MAX_WAIT_SECONDS if value < 0 else min(value, MAX_WAIT_SECONDS)


@handles_errors
def delete_job(ctx, job_id):
    """``DELETE data/async/<id>``: 303 to the job list; the job is gone at once."""
    now = _now(ctx)
    store = _store(ctx)
    store.delete(store.lookup(job_id, now), now)
    return redirect(ctx.url(ASYNC_PATH))


@handles_errors
def post_job(ctx, job_id):
    """``POST data/async/<id>`` with ``ACTION=DELETE``."""
    store = _store(ctx)
    store.lookup(job_id, _now(ctx))
    action = _single(_param_map(request_params(ctx.request)), "action")
    if action != "DELETE":
        raise SodaError(400, "action parameter must have value DELETE")
    return delete_job(ctx, job_id=job_id)


@handles_errors
def get_phase(ctx, job_id):
    job = _store(ctx).lookup(job_id, _now(ctx))
    return text_response(job.observe(_now(ctx), poll=True))


@handles_errors
def post_phase(ctx, job_id):
    """``POST .../phase``: ``PHASE=RUN`` (from PENDING) or ``PHASE=ABORT``; 303 to the job."""
    store = _store(ctx)
    now = _now(ctx)
    job = store.lookup(job_id, now)
    action = _single(_param_map(request_params(ctx.request)), "phase")
    if action not in ("RUN", "ABORT"):
        raise SodaError(400, "phase parameter must have value RUN or ABORT")
    if action == "RUN" and not store.run(job, ctx.options, now):
        raise SodaError(400, "Only Jobs which are PENDING can be run")
    expiry = getattr(ctx.options, "job_expiry_seconds", 72 * 3600.0)
    if action == "ABORT" and not job.abort(now, expiry, only_from=ABORTABLE_PHASES):
        raise SodaError(400, "Only Jobs which are PENDING, QUEUED or EXECUTING can be aborted")
    return redirect(job_url(ctx, job_id))


def _pending_job(ctx, job_id):
    job = _store(ctx).lookup(job_id, _now(ctx))
    if job.observe(_now(ctx)) != "PENDING":
        raise SodaError(400, f"Job with id '{job_id}' is not pending.")
    return job


@handles_errors
def get_parameters(ctx, job_id):
    job = _pending_job(ctx, job_id)
    return xml_response(render_parameters(job.params))


def _add_parameters(ctx, job, params):
    store = _store(ctx)
    errors = store.validate(params, job.owner, id_required=False)
    if errors:
        raise SodaError(400, ";".join(errors))
    with job.lock:
        for key, values in params.items():
            job.params.setdefault(key, []).extend(values)
    return redirect(job_url(ctx, job.job_id))


@handles_errors
def post_parameters(ctx, job_id):
    """``POST .../parameters``: values are appended (keys lower-cased), PENDING only."""
    job = _pending_job(ctx, job_id)
    return _add_parameters(ctx, job, _param_map(request_params(ctx.request)))


@handles_errors
def delete_parameters(ctx, job_id):
    job = _pending_job(ctx, job_id)
    with job.lock:
        job.params.clear()
    return redirect(job_url(ctx, job_id))


@handles_errors
def get_named_parameter(ctx, job_id, name):
    job = _pending_job(ctx, job_id)
    return xml_response(render_named_parameter(name, job.params.get(name.lower())))


@handles_errors
def post_named_parameter(ctx, job_id, name):
    """``POST .../parameters/<name>`` with ``value=`` (repeatable)."""
    job = _pending_job(ctx, job_id)
    values = [value for key, value in request_params(ctx.request) if key == "value"]
    if not values:
        raise SodaError(400, "Required String[] parameter 'value' is not present")
    return _add_parameters(ctx, job, {name.lower(): values})


@handles_errors
def delete_named_parameter(ctx, job_id, name, value=None):
    job = _pending_job(ctx, job_id)
    with job.lock:
        if value is None:
            job.params.pop(name.lower(), None)
        elif value in job.params.get(name.lower(), []):
            job.params[name.lower()].remove(value)
            if not job.params[name.lower()]:
                del job.params[name.lower()]
    return redirect(job_url(ctx, job_id))


@handles_errors
def get_results(ctx, job_id):
    """``GET .../results``; with no results CASDA streams its exception text file (HTTP 200)."""
    store = _store(ctx)
    job = store.lookup(job_id, _now(ctx))
    with job.lock:
        results = list(job.results)
        if not results:
            return Response(exception_file_text(job), status=200, content_type="text/plain", headers={
                "Content-Disposition": "attachment; filename=casda_data_access_exception.txt"})
    return xml_response(render_results(results, _hrefs(ctx, store, job)))


@handles_errors
def get_error(ctx, job_id):
    job = _store(ctx).lookup(job_id, _now(ctx))
    return text_response(error_summary_text(job.error) if job.error else "")


@handles_errors
def get_quote(ctx, job_id):
    _store(ctx).lookup(job_id, _now(ctx))
    return text_response("-1")    # UWS library: QUOTE_NOT_KNOWN


@handles_errors
def get_execution_duration(ctx, job_id):
    _store(ctx).lookup(job_id, _now(ctx))
    return text_response("0")


@handles_errors
def get_destruction(ctx, job_id):
    job = _store(ctx).lookup(job_id, _now(ctx))
    return text_response(format_time(job.expires_at) if job.expires_at else "")


@handles_errors
def get_owner(ctx, job_id):
    """CASDA jobs have no owner: Spring writes an empty JSON body."""
    _store(ctx).lookup(job_id, _now(ctx))
    return Response("", status=200, content_type="application/json")


@handles_errors
def post_no_op(ctx, job_id):
    """``POST .../destruction`` and ``.../executionduration`` change nothing and 303 back."""
    _store(ctx).lookup(job_id, _now(ctx))
    return redirect(job_url(ctx, job_id))


# --- handlers: sync, VOSI -------------------------------------------------------------------

@handles_errors
def sync(ctx):
    """``data/sync[/pawsey]``: the service descriptor, or the whole product for ``id=<token>``."""
    store = _store(ctx)
    params = _param_map(request_params(ctx.request))
    if not params:
        return xml_response(SERVICE_DESCRIPTOR.replace(
            "{sync_url}", quoteattr(ctx.url("casda_data_access/data/sync"))))
    tokens = params.get("id", [])
    if len(tokens) != 1:
        raise SodaError(400, "Request requires a single 'id' parameter")
    grant = ctx.backend.tokens.resolve(tokens[0])
    if grant is None:
        raise SodaError(400, "Request 'id' parameter is invalid")
    errors = store.validate({key: values for key, values in params.items() if key != "id"}, grant.user_id,
                            id_required=False)
    if errors:
        raise SodaError(400, ";".join(errors))
    try:
        product = ctx.backend.holdings.product(grant.product_id)
    except KeyError:
        raise SodaError(404, "File is not available") from None
    return stream_file(ctx, product.path, download_name=product.staged_name)


def availability(ctx):
    return xml_response(vosi_render.availability(ctx.backend.up_since))


def capabilities(ctx):
    """VOSI capabilities: SODA sync and async (with each UWS sub-resource)."""
    return xml_response(capabilities_document(ctx.url("casda_data_access/data/")))


# --- handlers: downloads ------------------------------------------------------------------------

def _published_file(store, job_id, file_name):
    """(job, path) of a result file; None when the job or file is unknown."""
    job = store.find(job_id)
    if job is None:
        return None, None
    job.observe(store.clock.time())
    if file_name not in job.files():
        return job, None
    return job, store.job_dir(job_id) / file_name


@handles_errors
def download(ctx, job_id, file_name):
    """``/download/web|pawsey/<job>/<file>``: no auth; expired jobs redirect to the job."""
    store = _store(ctx)
    job, path = _published_file(store, job_id, file_name)
    if job is not None and job.is_expired(_now(ctx)):
        return Response("", status=302, headers={"Location": job_url(ctx, job_id)})
    if path is None or not path.is_file():
        raise SodaError(404, f"File {file_name} could not be found for request {job_id}")
    return stream_file(ctx, path, download_name=file_name)


def s3_error(status, code, message, key):
    return Response(s3_error_body(code, message, key), status=status, content_type="application/xml")


def check_signature(ctx, store, job_id, file_name):
    """None when the presigned query string is intact and current, else the S3 error response."""
    key = f"{job_id}/{file_name}"
    raw = ctx.request.query_string.decode("latin-1")
    parts = raw.split("&") if raw else []
    signatures = [part.split("=", 1)[1] for part in parts if part.startswith("X-Amz-Signature=")]
    unsigned = "&".join(part for part in parts if not part.startswith("X-Amz-Signature="))
    if len(signatures) != 1:
        return s3_error(403, "AccessDenied", "Query-string authentication requires the Signature, "
                        "Expires and AWSAccessKeyId parameters", key)
    expected = sign(store.secret, s3_path(job_id, file_name), unsigned)
    if not hmac.compare_digest(expected, signatures[0]):
        return s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match "
                        "the signature you provided. Check your key and signing method.", key)
    try:
        signed_at = datetime.strptime(ctx.request.args["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        signed_at = signed_at.replace(tzinfo=timezone.utc)
        lifetime = float(ctx.request.args["X-Amz-Expires"])
    except (KeyError, ValueError):
        return s3_error(403, "AccessDenied", "Invalid date or expiry", key)
    if _now(ctx) > signed_at.timestamp() + lifetime:
        return s3_error(403, "AccessDenied", "Request has expired", key)
    return None


def download_s3(ctx, job_id, file_name):
    """``/download/s3/casda-cache/<job>/<file>?X-Amz-...``: the signature is the capability."""
    store = _store(ctx)
    refused = check_signature(ctx, store, job_id, file_name)
    if refused is not None:
        return refused
    job, path = _published_file(store, job_id, file_name)
    if path is None or not path.is_file() or job.is_expired(_now(ctx)):
        return s3_error(404, "NoSuchKey", "The specified key does not exist.", f"{job_id}/{file_name}")
    response = stream_file(ctx, path, download_name=file_name)
    disposition = ctx.request.args.get("response-content-disposition")
    if disposition:
        response.headers["Content-Disposition"] = disposition
    return response


# --- routes -----------------------------------------------------------------------------------

_JOB = r"^/casda_data_access/data/async/(?P<job_id>[^/]+)"
_FILE = r"(?P<job_id>[^/]+)/(?P<file_name>[^/]+)$"

#: (methods, absolute path regex, handler); handlers take (ctx, **named groups).
ROUTES = [
    (("POST",), r"^/casda_data_access/data/async$", create_job),
    (("GET",), r"^/casda_data_access/data/async$", job_list),
    (("GET",), _JOB + r"$", get_job),
    (("DELETE",), _JOB + r"$", delete_job),
    (("POST",), _JOB + r"$", post_job),
    (("GET",), _JOB + r"/phase$", get_phase),
    (("POST",), _JOB + r"/phase$", post_phase),
    (("GET",), _JOB + r"/parameters$", get_parameters),
    (("POST",), _JOB + r"/parameters$", post_parameters),
    (("DELETE",), _JOB + r"/parameters$", delete_parameters),
    (("GET",), _JOB + r"/parameters/(?P<name>[^/]+)$", get_named_parameter),
    (("POST",), _JOB + r"/parameters/(?P<name>[^/]+)$", post_named_parameter),
    (("DELETE",), _JOB + r"/parameters/(?P<name>[^/]+)$", delete_named_parameter),
    (("DELETE",), _JOB + r"/parameters/(?P<name>[^/]+)/(?P<value>[^/]+)$", delete_named_parameter),
    (("GET",), _JOB + r"/results$", get_results),
    (("GET",), _JOB + r"/error$", get_error),
    (("GET",), _JOB + r"/quote$", get_quote),
    (("GET",), _JOB + r"/executionduration$", get_execution_duration),
    (("POST",), _JOB + r"/executionduration$", post_no_op),
    (("GET",), _JOB + r"/destruction$", get_destruction),
    (("POST",), _JOB + r"/destruction$", post_no_op),
    (("GET",), _JOB + r"/owner$", get_owner),
    (("GET", "POST", "HEAD"), r"^/casda_data_access/data/sync$", sync),
    (("GET", "POST", "HEAD"), r"^/casda_data_access/data/sync/pawsey$", sync),
    (("GET",), r"^/casda_data_access/data/availability$", availability),
    (("GET",), r"^/casda_data_access/data/capabilities$", capabilities),
    (("GET", "HEAD"), r"^/download/(?:web|pawsey)/" + _FILE, download),
    (("GET", "HEAD"), rf"^/download/s3/{S3_BUCKET}/" + _FILE, download_s3),
]
