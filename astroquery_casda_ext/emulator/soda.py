"""The emulated SODA service of ``casda_data_access``: UWS 1.0 async jobs, sync downloads,
VOSI documents and the staged-file downloads.

Shaped after ``soda/AccessDataController.java`` (2017) and the recorded job documents in
astroquery's test data.  A job is created PENDING from DataLink tokens (the tokens are the
only credential), takes parameters while PENDING, and on ``PHASE=RUN`` walks the phases
of ``EmulatorOptions.job_phases`` (by elapsed time or one per poll) while a worker thread
stages the files for real: whole products are hard-linked into the job directory,
cutouts and spectra come from `cutouts.process_job`.  The job reaches COMPLETED only once
both the phase plan and the work are done.

Module layout: job state (`SodaJob`, `SodaJobStore`, no HTTP), documents (UWS, VOSI,
error bodies), hrefs and S3-style signatures, then the handlers and `ROUTES`.
"""
import functools
import hashlib
import hmac
import json
import os
import random
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from werkzeug.wrappers import Response

from . import render
from .cutouts import NothingMatched, process_job, validate_soda_params
from .datalink import request_params

__all__ = ["SodaJob", "SodaJobStore", "SodaError", "ROUTES", "ACTIVE_PHASES", "FINAL_PHASES"]

#: CASDA's recorded timestamps carry the Perth offset (AWST, no daylight saving).
AWST = timezone(timedelta(hours=8))

ACTIVE_PHASES = frozenset({"PENDING", "QUEUED", "EXECUTING", "SUSPENDED", "HELD"})
FINAL_PHASES = frozenset({"COMPLETED", "ERROR", "ABORTED"})
ABORTABLE_PHASES = ("PENDING", "QUEUED", "EXECUTING")

#: Parameter keys ``validateParams`` accepts (``ParamMap.ParamKeyWhitelist`` plus CHANNEL).
PARAM_WHITELIST = frozenset({"id", "pos", "circle", "polygon", "band", "channel", "pol", "coord", "time",
                             "format"})
SPATIAL_KEYS = ("pos", "circle", "polygon")

#: Product types a SODA async job may stage (``AccessDataController.validateIdParams``).
STAGEABLE_TYPES = frozenset({"cube", "encap", "cubelet", "visibility", "moment_map", "spectrum",
                             "evaluation"})

GENERIC_FAILURE = "Error: A problem occured obtaining access to the requested item(s)"
NO_PRODUCTS = "UsageError: No data products were selected for retrieval."
NO_RESULTS = "UsageError: the given combination of parameters returned no results."

#: Longest a blocking ``WAIT`` may hold a request; longest a poll waits for real work.
MAX_WAIT_SECONDS = 120.0
PROCESSING_WAIT_SECONDS = 60.0

UWS_NAMESPACES = ('xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" xmlns:xlink="http://www.w3.org/1999/xlink" '
                  'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
                  'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"')
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'

ASYNC_PATH = "casda_data_access/data/async"
S3_BUCKET = "casda-cache"
S3_EXPIRES = 604800


class SodaError(Exception):
    """A request refused with an HTTP status (rendered per the caller's ``Accept``)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


# --- job state ----------------------------------------------------------------------------

@dataclass(frozen=True)
class JobResult:
    """One ``<uws:result>``: its id and the file it names in the job directory."""

    result_id: str
    file_name: str


class SodaJob:
    """One data access job: its parameters, phase plan and outcome (no HTTP here).

    The phase is derived when observed: after RUN, the plan's phases follow one another
    by elapsed time (``"time"``) or one per poll (``"polls"``); once the plan is used up
    the job shows EXECUTING until the worker is done, then COMPLETED or ERROR.
    """

    def __init__(self, job_id, owner, params, created):
        self.job_id = job_id
        self.owner = owner
        self.params = params                  # {lower-case key: [values]}, insertion order
        self.created = created
        self.phase = "PENDING"
        self.lock = threading.Condition(threading.RLock())
        self.plan = ()
        self.progression = "time"
        self.held = False
        self.clock_start = None
        self.polls = 0
        self.shuffle = False
        self.expiry_seconds = 72 * 3600.0
        self.outcome = None                   # (results, error message or None) from the worker
        self.done_at = None
        self.cancelled = False
        self.results = []
        self.error = None
        self.end_time = None
        self.expires_at = None
        self.pawsey = False

    # Every method takes the job's own re-entrant lock, so they may call one another.
    def observe(self, now, *, poll=False):
        """The phase now; a poll moves a ``"polls"`` job one phase on."""
        with self.lock:
            if self.phase == "PENDING" or self.phase in FINAL_PHASES:
                return self.phase
            if self.held:
                self.phase = "HELD"
                return self.phase
            if self.progression == "polls":
                self._observe_polls(now, poll)
            else:
                self._observe_time(now)
            return self.phase

    def _observe_time(self, now):
        elapsed = now - self.clock_start
        boundary = 0.0
        for phase, seconds in self.plan:
            boundary += seconds
            if elapsed < boundary:
                self.phase = phase
                return
        if self.outcome is None:
            self.phase = "EXECUTING"
        else:
            self._finish(max(self.clock_start + boundary, self.done_at))

    def _observe_polls(self, now, poll):
        if poll:
            self.polls += 1
        index = max(self.polls - 1, 0)     # a look that is not a poll sees the last polled phase
        if index < len(self.plan):
            self.phase = self.plan[index][0]
            return
        # The plan is used up: give the (real) work a moment so that polls stay deterministic.
        self.lock.wait_for(lambda: self.outcome is not None or self.cancelled,
                           timeout=PROCESSING_WAIT_SECONDS)
        if self.outcome is None:
            self.phase = "EXECUTING"
        else:
            self._finish(max(now, self.done_at))

    def _finish(self, end_time):
        results, error = self.outcome
        self.phase = "ERROR" if error else "COMPLETED"
        self.error = error
        self.results = [] if error else list(results)
        if self.shuffle:
            random.shuffle(self.results)
        self.end_time = end_time
        self.expires_at = end_time + self.expiry_seconds
        self.lock.notify_all()

    def start(self, now, *, plan, progression, hold, shuffle, expiry_seconds):
        """PENDING -> the first phase of ``plan`` (or HELD); False when the job was not PENDING."""
        with self.lock:
            if self.phase != "PENDING":
                return False
            self.plan = tuple((str(phase), float(seconds)) for phase, seconds in plan)
            self.progression = progression
            self.held = bool(hold)
            self.shuffle = bool(shuffle)
            self.expiry_seconds = float(expiry_seconds)
            self.clock_start = now
            self.phase = "QUEUED"   # placeholder until the first observation
            self.lock.notify_all()
            return True

    def complete_work(self, results, error, now):
        """Called by the worker thread when the files are ready (or failed)."""
        with self.lock:
            if self.cancelled or self.phase in FINAL_PHASES:
                return
            self.outcome = (results, error)
            self.done_at = now
            self.lock.notify_all()

    def release(self, now):
        """HELD -> the phase plan restarts now."""
        with self.lock:
            if not self.held:
                return False
            self.held = False
            self.clock_start = now
            self.polls = 0
            self.lock.notify_all()
            return True

    def abort(self, now, expiry_seconds, *, only_from=None):
        """Cancel the job; with ``only_from``, only when it is in one of those phases (else False)."""
        with self.lock:
            if only_from is not None and self.observe(now) not in only_from:
                return False
            self.cancelled = True
            self.phase = "ABORTED"
            self.results = []
            self.end_time = now
            self.expires_at = now + expiry_seconds
            self.lock.notify_all()
            return True

    def expire(self, now):
        """DELETE: unfinished jobs are aborted; every job is gone at once."""
        with self.lock:
            if self.phase not in FINAL_PHASES:
                self.abort(now, 0.0)
            self.expires_at = now

    def is_expired(self, now):
        with self.lock:
            return self.expires_at is not None and now >= self.expires_at

    def wait_for_change(self, phase, deadline):
        """Block until the phase differs from ``phase`` or ``deadline`` (UWS 1.1 WAIT)."""
        with self.lock:
            while True:
                now = time.time()
                if self.observe(now) != phase or now >= deadline:
                    return self.phase
                self.lock.wait(timeout=min(0.05, deadline - now))

    def files(self):
        """File names of the published results (only once COMPLETED)."""
        with self.lock:
            return {result.file_name for result in self.results}


class SodaJobStore:
    """Every SODA job of one emulator, the worker threads, and the download signing key.

    Parameters
    ----------
    backend : EmulatorBackend
        Supplies ``holdings`` (products and ``data_dir``) and ``tokens`` (`TokenStore`).
    """

    def __init__(self, backend):
        self.backend = backend
        self._jobs = {}
        self._lock = threading.Lock()
        self._next_number = 1
        self._root = None
        self.secret = os.urandom(32)

    # ----- bookkeeping
    @property
    def root(self):
        """The cache directory holding one sub-directory per job."""
        if self._root is None:
            base = getattr(self.backend, "jobs_dir", None)
            self._root = Path(base) if base else Path(self.backend.holdings.data_dir) / "soda-jobs"
        return self._root

    def job_dir(self, job_id):
        return self.root / job_id

    def clear(self):
        """Forget every job and remove its files (emulator reset)."""
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        now = time.time()
        for job in jobs:
            job.expire(now)     # a worker still running then cleans up after itself
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def create(self, params, owner, now):
        job = SodaJob(str(uuid.uuid4()), owner, params, now)
        with self._lock:
            self._jobs[job.job_id] = job
        return job

    def find(self, job_id):
        """The job, expired or not, or None."""
        with self._lock:
            return self._jobs.get(job_id)

    def lookup(self, job_id, now):
        """The live job; `SodaError` 404 when unknown, 410 when expired."""
        job = self.find(job_id)
        if job is None:
            raise SodaError(404, f"No job with id '{job_id}'")
        job.observe(now)
        if job.is_expired(now):
            raise SodaError(410, f"Job with id '{job_id}' has expired")
        return job

    def release_job(self, job_id):
        """Let a HELD job continue; returns False when it was not held. KeyError if unknown."""
        job = self.find(job_id)
        if job is None:
            raise KeyError(job_id)
        return job.release(time.time())

    def reserve_numbers(self, count):
        """A block of ``count`` generated-file numbers unique within this emulator."""
        with self._lock:
            first = self._next_number
            self._next_number += max(1, count)
            return first

    # ----- tokens
    def validate_tokens(self, tokens, owner):
        """CASDA's ``validateIdParams``: messages for bad, foreign or unsupported tokens."""
        errors = []
        for index, token in enumerate(tokens):
            grant = self.backend.tokens.resolve(token)
            if grant is not None and index == 0 and owner is None:
                owner = grant.user_id
            if grant is None or grant.user_id != owner:
                errors.append(f"id '{token}' is not valid")
                continue
            kind = grant.product_id.lower().rsplit("-", 1)[0].split("-")[0]
            if kind not in STAGEABLE_TYPES:
                errors.append(f"Unsupported data access product type {kind}")
                continue
            try:
                self.backend.holdings.product(grant.product_id)
            except KeyError:
                errors.append(f"No resource found matching id '{token}'")
        return errors

    def validate(self, params, owner, *, id_required):
        """All messages for a parameter set (``validateParams``); empty when valid."""
        errors = []
        if id_required and "id" not in params:
            errors.append("id is a required parameter")
        for key, values in params.items():
            if key == "id":
                errors += self.validate_tokens(values, owner)
            elif key not in PARAM_WHITELIST:
                errors.append(f"UsageFault: {key} is an invalid parameter")
        filters = {key: values for key, values in params.items() if key != "id" and key in PARAM_WHITELIST}
        if filters:
            errors += validate_soda_params(filters)
        return errors

    def owner_of(self, tokens):
        grant = self.backend.tokens.resolve(tokens[0]) if tokens else None
        return grant.user_id if grant else None

    # ----- running
    def run(self, job, options, now):
        """PHASE=RUN: fix the phase plan and start the worker thread; False unless PENDING."""
        started = job.start(now, plan=getattr(options, "job_phases", ()),
                            progression=getattr(options, "job_progression", "time"),
                            hold=getattr(options, "hold_jobs", False),
                            shuffle=getattr(options, "shuffle_results", False),
                            expiry_seconds=getattr(options, "job_expiry_seconds", 72 * 3600.0))
        if not started:
            return False
        grants = [self.backend.tokens.resolve(token) for token in job.params.get("id", [])]
        grants = [grant for grant in grants if grant is not None]
        job.pawsey = any(grant.mode == "INTERNAL" for grant in grants)
        worker = threading.Thread(target=self._work, args=(job, grants), name=f"soda-{job.job_id[:8]}",
                                  daemon=True)
        worker.start()
        return True

    def delete(self, job, now):
        """DELETE: the job expires at once and its staged files go."""
        job.expire(now)
        shutil.rmtree(self.job_dir(job.job_id), ignore_errors=True)

    def _work(self, job, grants):
        try:
            results = self._produce(job, grants)
            error = None
        except NothingMatched as exc:
            results, error = [], str(exc)
        except _NoProducts:
            results, error = [], NO_PRODUCTS
        except Exception:  # noqa: BLE001 - CASDA reports any failure with one generic message
            results, error = [], GENERIC_FAILURE
        job.complete_work(results, error, time.time())
        if job.cancelled and job.is_expired(time.time()):
            # Deleted (or reset) while working: nothing may be left behind.
            shutil.rmtree(self.job_dir(job.job_id), ignore_errors=True)

    def _produce(self, job, grants):
        products = []
        for grant in grants:
            product = self.backend.holdings.product(grant.product_id)
            if product not in products:
                products.append(product)
        if not products:
            raise _NoProducts()
        out_dir = self.job_dir(job.job_id)
        out_dir.mkdir(parents=True, exist_ok=True)
        filters = {key: list(values) for key, values in job.params.items() if key != "id"}
        # The first token's mode decides (DataAccessUtil.imageCutoutsShouldBeCreated), and only
        # when some parameter besides ID was given; otherwise whole files are staged.
        mode = {"CUTOUT": "cutout", "GENERATED_SPECTRUM": "spectrum"}.get(grants[0].mode)
        if mode and filters:
            first = self.reserve_numbers(_upper_bound(products, filters))
            generated = process_job(products, filters, out_dir, mode=mode, first_number=first)
            return _paired((item.result_id, item.path.name) for item in generated)
        return stage_whole_files(products, out_dir)


class _NoProducts(Exception):
    """RUN with no usable ID left in the parameters."""


def _upper_bound(products, filters):
    """At most how many numbered files a generated-file job can produce.

    Regions x spectral selections x Stokes ranges per product; a spectrum job makes one
    spectrum per Stokes plane, so the Stokes factor is the four planes at most.
    """
    count = len(products) * max(1, sum(len(filters.get(key, ())) for key in SPATIAL_KEYS)) * 4
    for key in ("band", "channel", "coord"):
        count *= max(1, len(filters.get(key, ())))
    return count


def _paired(items):
    """Each file followed by its ``.checksum`` sidecar."""
    results = []
    for result_id, file_name in items:
        results += [JobResult(result_id, file_name),
                    JobResult(result_id + ".checksum", file_name + ".checksum")]
    return results


def stage_whole_files(products, out_dir):
    """Put each product in ``out_dir`` under its staged name, with its ``.checksum``."""
    for product in products:
        target = out_dir / product.staged_name
        if not target.exists():
            try:
                os.link(product.path, target)
            except OSError:
                shutil.copyfile(product.path, target)
        (out_dir / (product.staged_name + ".checksum")).write_text(str(product.checksum))
    return _paired((product.product_id, product.staged_name) for product in products)


# --- documents ----------------------------------------------------------------------------------

def format_time(epoch):
    """``yyyy-MM-dd'T'HH:mm:ss.SSS+0800`` as CASDA writes it."""
    moment = datetime.fromtimestamp(epoch, AWST)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0800"


def cdata(value):
    return "<![CDATA[" + str(value).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def param_value(values):
    """One value as is; several as Commons ``ArrayUtils.toString``: ``{a,b}``."""
    return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"


def nil_or(tag, value):
    if value is None:
        return f'    <uws:{tag} xsi:nil="true" />'
    return f"    <uws:{tag}>{value}</uws:{tag}>"


def render_parameter_lines(params, indent="        "):
    return [f'{indent}<uws:parameter id={quoteattr(key)}>{cdata(param_value(values))}</uws:parameter>'
            for key, values in params.items() if values]


def render_result_lines(results, href, indent="        "):
    return [f'{indent}<uws:result id={quoteattr(result.result_id)} xlink:type="simple" '
            f'xlink:href={quoteattr(href(result))} />' for result in results]


def render_job(job, href, *, version=None):
    """The job document, UWS 1.0 with the ``uws:`` prefix (UWS 1.1 ``version`` when asked)."""
    with job.lock:
        version_attribute = f' version="{version}"' if version else ""
        lines = [f"<uws:job {UWS_NAMESPACES}{version_attribute}>",
                 f"    <uws:jobId>{cdata(job.job_id)}</uws:jobId>",
                 '    <uws:runId xsi:nil="true" />', '    <uws:ownerId xsi:nil="true" />',
                 f"    <uws:phase>{job.phase}</uws:phase>", '    <uws:quote xsi:nil="true" />',
                 nil_or("startTime", format_time(job.created)),
                 nil_or("endTime", format_time(job.end_time) if job.end_time else None),
                 "    <uws:executionDuration>0</uws:executionDuration>",
                 nil_or("destruction", format_time(job.expires_at) if job.expires_at else None),
                 "    <uws:parameters>", *render_parameter_lines(job.params), "    </uws:parameters>",
                 "    <uws:results>", *render_result_lines(job.results, href), "    </uws:results>"]
        if job.error:
            lines += ['    <uws:errorSummary type="FATAL" hasDetail="false">',
                      f"        <uws:message>{cdata(job.error)}</uws:message>", "    </uws:errorSummary>"]
        else:
            lines.append('    <uws:errorSummary xsi:nil="true" />')
    return XML_DECLARATION + "\n".join(lines) + "\n</uws:job>"


def error_summary_text(message):
    """The UWS library's ``ErrorSummary.toString()``."""
    return f'ERROR_SUMMARY {{type: FATAL; message: "{message}"; details: none}}'


def exception_file_text(job):
    """``DataAccessService.returnErrorFile`` with the parameters listed."""
    message = error_summary_text(job.error) if job.error else NO_RESULTS
    lines = [message, f"Request ID: {job.job_id}", "Parameters: "]
    lines += [f"{key} : " + "".join(" " + value for value in values) for key, values in job.params.items()]
    return "\n".join(lines) + "\n"


ERROR_PAGE = """<html>
<head>
\t<title>CSIRO Data Access Portal - CASDA Access Error</title>
</head>

<body>
\t<div id="wrapper">
\t\t<div id="content">
\t\t    <fieldset>
\t\t        <legend>Error</legend>
\t\t        <p>
\t\t            Your request could not be completed. Please contact the CASDA Support team.
\t\t        </p>
\t\t    </fieldset>
\t    </div>
    </div>
</body>
</html>
"""


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


# --- hrefs and signatures ----------------------------------------------------------------------

def sign(secret, path, query):
    """HMAC-SHA256 over the path and the exact query string (as sent, still encoded)."""
    return hmac.new(secret, f"{path}\n{query}".encode(), hashlib.sha256).hexdigest()


def s3_path(job_id, file_name):
    return f"/download/s3/{S3_BUCKET}/{job_id}/{file_name}"


def presigned_url(ctx, store, job_id, file_name, now):
    """An S3-style presigned URL whose query string carries significant percent-escapes."""
    disposition = quote(f'attachment; filename="{file_name}"', safe="")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    credential = quote(f"casda-emulator/{stamp[:8]}/ap-southeast-2/s3/aws4_request", safe="")
    query = (f"response-content-disposition={disposition}&X-Amz-Algorithm=AWS4-HMAC-SHA256"
             f"&X-Amz-Credential={credential}&X-Amz-Date={stamp}&X-Amz-Expires={S3_EXPIRES}"
             f"&X-Amz-SignedHeaders=host")
    signature = sign(store.secret, s3_path(job_id, file_name), query)
    return ctx.url(s3_path(job_id, quote(file_name)).lstrip("/")) + f"?{query}&X-Amz-Signature={signature}"


def href_maker(ctx, store, job):
    """A function giving each `JobResult` its href in the configured style.

    ``plain`` ``<host>/download/web/<job>/<file>`` (``/pawsey/`` for Pawsey jobs); ``encoded``
    the same URL percent-encoded whole; ``presigned`` an S3-style signed URL.
    """
    style = getattr(ctx.options, "href_style", "plain")
    area = "pawsey" if job.pawsey else "web"
    now = time.time()

    def href(result):
        if style == "presigned":
            return presigned_url(ctx, store, job.job_id, result.file_name, now)
        url = ctx.url(f"download/{area}/{job.job_id}/{quote(result.file_name)}")
        # Older CASDA ran every href through URLEncoder (the recorded completed_job.xml).
        return quote(url, safe="") if style == "encoded" else url
    return href


# --- handlers: jobs -------------------------------------------------------------------------

def _store(ctx):
    return ctx.backend.soda_jobs


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
    job = store.create(params, store.owner_of(params["id"]), time.time())
    return redirect(job_url(ctx, job.job_id), job.job_id)


def job_list(ctx):
    """``GET data/async``: always empty, CASDA lists no owners' jobs."""
    return xml_response(f'{XML_DECLARATION}<uws:jobList {UWS_NAMESPACES} name="CASDA SODA ASYNC">\n'
                        "</uws:jobList>\n")


@handles_errors
def get_job(ctx, job_id):
    """``GET data/async/<id>``: the job document (a poll; blocks on WAIT when enabled)."""
    store = _store(ctx)
    job = store.lookup(job_id, time.time())
    phase = job.observe(time.time(), poll=True)
    uws_wait = getattr(ctx.options, "uws_wait", False)
    if uws_wait:
        wait = _wait_seconds(ctx.request.args)
        wanted = ctx.request.args.get("PHASE") or ctx.request.args.get("phase")
        if wait and phase in ACTIVE_PHASES and (wanted is None or wanted == phase):
            job.wait_for_change(phase, time.time() + wait)
        store.lookup(job_id, time.time())
    return xml_response(render_job(job, href_maker(ctx, store, job), version="1.1" if uws_wait else None))


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
    now = time.time()
    store = _store(ctx)
    store.delete(store.lookup(job_id, now), now)
    return redirect(ctx.url(ASYNC_PATH))


@handles_errors
def post_job(ctx, job_id):
    """``POST data/async/<id>`` with ``ACTION=DELETE``."""
    store = _store(ctx)
    store.lookup(job_id, time.time())
    action = _single(_param_map(request_params(ctx.request)), "action")
    if action != "DELETE":
        raise SodaError(400, "action parameter must have value DELETE")
    return delete_job(ctx, job_id=job_id)


@handles_errors
def get_phase(ctx, job_id):
    job = _store(ctx).lookup(job_id, time.time())
    return text_response(job.observe(time.time(), poll=True))


@handles_errors
def post_phase(ctx, job_id):
    """``POST .../phase``: ``PHASE=RUN`` (from PENDING) or ``PHASE=ABORT``; 303 to the job."""
    store = _store(ctx)
    now = time.time()
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
    job = _store(ctx).lookup(job_id, time.time())
    if job.observe(time.time()) != "PENDING":
        raise SodaError(400, f"Job with id '{job_id}' is not pending.")
    return job


@handles_errors
def get_parameters(ctx, job_id):
    job = _pending_job(ctx, job_id)
    lines = render_parameter_lines(job.params, indent="    ")
    return xml_response(XML_DECLARATION + f"<uws:parameters {UWS_NAMESPACES}>\n" + "\n".join(lines)
                        + ("\n" if lines else "") + "</uws:parameters>")


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
    values = job.params.get(name.lower())
    if not values:
        return xml_response("")
    return xml_response('<uws:parameter xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" '
                        f"id={quoteattr(name.upper())}>{cdata(param_value(values))}</uws:parameter>")


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
    job = store.lookup(job_id, time.time())
    with job.lock:
        results = list(job.results)
        if not results:
            return Response(exception_file_text(job), status=200, content_type="text/plain", headers={
                "Content-Disposition": "attachment; filename=casda_data_access_exception.txt"})
    lines = render_result_lines(results, href_maker(ctx, store, job), indent="    ")
    return xml_response(XML_DECLARATION + f"<uws:results {UWS_NAMESPACES}>\n" + "\n".join(lines)
                        + "\n</uws:results>")


@handles_errors
def get_error(ctx, job_id):
    job = _store(ctx).lookup(job_id, time.time())
    return text_response(error_summary_text(job.error) if job.error else "")


@handles_errors
def get_quote(ctx, job_id):
    _store(ctx).lookup(job_id, time.time())
    return text_response("-1")    # UWS library: QUOTE_NOT_KNOWN


@handles_errors
def get_execution_duration(ctx, job_id):
    _store(ctx).lookup(job_id, time.time())
    return text_response("0")


@handles_errors
def get_destruction(ctx, job_id):
    job = _store(ctx).lookup(job_id, time.time())
    return text_response(format_time(job.expires_at) if job.expires_at else "")


@handles_errors
def get_owner(ctx, job_id):
    """CASDA jobs have no owner: Spring writes an empty JSON body."""
    _store(ctx).lookup(job_id, time.time())
    return Response("", status=200, content_type="application/json")


@handles_errors
def post_no_op(ctx, job_id):
    """``POST .../destruction`` and ``.../executionduration`` change nothing and 303 back."""
    _store(ctx).lookup(job_id, time.time())
    return redirect(job_url(ctx, job_id))


# --- handlers: sync, VOSI -------------------------------------------------------------------

SERVICE_DESCRIPTOR = """<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
\txmlns="http://www.ivoa.net/xml/VOTable/v1.3" >
\t<RESOURCE type="meta" utype="adhoc:service" name="this">
\t\t<PARAM name="standardID" datatype="char" arraysize="*"
\t\t\tvalue="ivo://ivoa.net/std/SODA#sync-1.0" />
\t\t<PARAM name="accessURL" datatype="char" arraysize="*"
\t\t\tvalue={sync_url} />
\t\t<GROUP name="inputParams">
\t\t\t<PARAM name="ID" ucd="meta.ref.url;meta.curation" datatype="char"
\t\t\t\tarraysize="*" value="" />
\t\t\t<PARAM name="POS" ucd="phys.angArea;obs" datatype="char"
\t\t\t\tarraysize="*" xtype="region" value="" />
\t\t\t<PARAM name="CIRCLE" ucd="phys.angArea;obs" unit="deg" datatype="double"
\t\t\t\tarraysize="3" xtype="circle" value="" />
\t\t\t<PARAM name="POLYGON" ucd="phys.angArea;obs" unit="deg" datatype="double"
\t\t\t\tarraysize="*" xtype="polygon" value="" />
\t\t\t<PARAM name="BAND" ucd="em.wl" unit="m" datatype="double"
\t\t\t\tarraysize="2" xtype="interval" value="" />
\t\t\t<PARAM name="TIME" ucd="time.interval;obs.exposure" unit="d"
\t\t\t\tdatatype="double" arraysize="2" xtype="interval" value="" />
\t\t\t<PARAM name="POL" ucd="meta.code;phys.polarization" datatype="char"
\t\t\t\tarraysize="*" value="" />
\t\t</GROUP>
\t</RESOURCE>
</VOTABLE>"""


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
    return render.stream_file(ctx, product.path, download_name=product.staged_name)


def availability(ctx):
    return xml_response(render.availability(ctx.backend.up_since))


JOB_ID_PARAM = ("jobId", "the data access job id", "required")
NAME_PARAM = ("name", "the parameter name", "required")


def _interface(url, query_types, result_type, params):
    """One ``<interface>`` of the async capability (``capabilities.xml.jsp``)."""
    lines = ['        <interface xsi:type="vod:ParamHTTP" role="std" version="1.0">',
             f'            <accessURL use="full">{escape(url)}</accessURL>']
    lines += [f"            <queryType>{query_type}</queryType>" for query_type in query_types]
    if result_type:
        lines.append(f"            <resultType>{result_type}</resultType>")
    for name, description, use in params:
        lines += [f'            <param use="{use}" std="true">', f"                <name>{name}</name>",
                  f"                <description>{description}</description>",
                  "                <ucd>meta.id;meta.main</ucd>",
                  "                <dataType>string</dataType>", "            </param>"]
    return lines + ["        </interface>"]


ASYNC_INTERFACES = (
    ("phase", ("GET",), "text/plain", (JOB_ID_PARAM,)),
    ("phase", ("POST",), None, (JOB_ID_PARAM, ("phase", "the phase", "required"))),
    ("owner", ("GET",), "application/json", (JOB_ID_PARAM,)),
    ("executionduration", ("GET",), "text/plain", (JOB_ID_PARAM,)),
    ("quote", ("GET",), "text/plain", (JOB_ID_PARAM,)),
    ("destruction", ("GET",), "text/plain", (JOB_ID_PARAM,)),
    ("error", ("GET",), "text/plain", (JOB_ID_PARAM,)),
    ("results", ("GET",), "application/xml", (JOB_ID_PARAM,)),
    ("parameters", ("GET", "POST"), "application/xml", (JOB_ID_PARAM, NAME_PARAM)),
    ("parameters/{name}", ("GET",), "application/xml", (JOB_ID_PARAM, NAME_PARAM)),
)


def capabilities(ctx):
    """VOSI capabilities: SODA sync and async (with each UWS sub-resource)."""
    base = ctx.url("casda_data_access/data/")
    async_url = base + "async"
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0" '
             'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
             'xmlns:vod="http://www.ivoa.net/xml/VODataService/v1.1">']
    for name in ("capabilities", "availability"):
        lines += [f'    <capability standardID="ivo://ivoa.net/std/VOSI#{name}">',
                  '        <interface xsi:type="vod:ParamHTTP" version="1.0">',
                  f'            <accessURL use="full">{escape(base + name)}</accessURL>',
                  "        </interface>", "    </capability>"]
    lines += ['    <capability standardID="ivo://ivoa.net/std/SODA#sync-1.0">',
              '        <interface xsi:type="vod:ParamHTTP" role="std" version="1.0">',
              f'            <accessURL use="full">{escape(base + "sync")}</accessURL>',
              "            <queryType>GET</queryType>", "            <queryType>POST</queryType>",
              '            <param use="required" std="true">', "                <name>ID</name>",
              "                <description>publisher dataset identifier</description>",
              "                <ucd>meta.id;meta.main</ucd>", "                <dataType>string</dataType>",
              "            </param>", "        </interface>", "    </capability>",
              '    <capability standardID="ivo://ivoa.net/std/SODA#async-1.0">']
    lines += _interface(async_url, ("GET",), "application/xml", ((*JOB_ID_PARAM[:2], "optional"),))
    for suffix, query_types, result_type, params in ASYNC_INTERFACES:
        lines += _interface(f"{async_url}/{{jobId}}/{suffix}", query_types, result_type, params)
    lines += ["    </capability>", "</vosi:capabilities>"]
    return xml_response("\n".join(lines) + "\n")


# --- handlers: downloads ------------------------------------------------------------------------

def _published_file(store, job_id, file_name):
    """(job, path) of a result file; None when the job or file is unknown."""
    job = store.find(job_id)
    if job is None:
        return None, None
    job.observe(time.time())
    if file_name not in job.files():
        return job, None
    return job, store.job_dir(job_id) / file_name


@handles_errors
def download(ctx, job_id, file_name):
    """``/download/web|pawsey/<job>/<file>``: no auth; expired jobs redirect to the job."""
    store = _store(ctx)
    job, path = _published_file(store, job_id, file_name)
    if job is not None and job.is_expired(time.time()):
        return Response("", status=302, headers={"Location": job_url(ctx, job_id)})
    if path is None or not path.is_file():
        raise SodaError(404, f"File {file_name} could not be found for request {job_id}")
    return render.stream_file(ctx, path, download_name=file_name)


def s3_error(status, code, message, key):
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message><Key>{escape(key)}</Key>"
            f"<BucketName>{S3_BUCKET}</BucketName><Resource>/{S3_BUCKET}/{escape(key)}</Resource>"
            f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>")
    return Response(body, status=status, content_type="application/xml")


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
    if time.time() > signed_at.timestamp() + lifetime:
        return s3_error(403, "AccessDenied", "Request has expired", key)
    return None


def download_s3(ctx, job_id, file_name):
    """``/download/s3/casda-cache/<job>/<file>?X-Amz-...``: the signature is the capability."""
    store = _store(ctx)
    refused = check_signature(ctx, store, job_id, file_name)
    if refused is not None:
        return refused
    job, path = _published_file(store, job_id, file_name)
    if path is None or not path.is_file() or job.is_expired(time.time()):
        return s3_error(404, "NoSuchKey", "The specified key does not exist.", f"{job_id}/{file_name}")
    response = render.stream_file(ctx, path, download_name=file_name)
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
