"""SODA async jobs at CASDA: create, add parameters, run, wait, read the results.

CASDA's SODA service (``casda_data_access/data/async``) is a UWS 1.0 job service: a job
is created from DataLink tokens, may get cutout parameters while PENDING, is started
with ``PHASE=RUN``, and while files come off tape it passes through QUEUED, EXECUTING
and SUSPENDED (and HELD when an operator pauses it) before COMPLETED, ERROR or
ABORTED.  `SodaJob` is a handle on one job: it asks the server only when told to
(`SodaJob.refresh`, `SodaJob.wait`), and `SodaJob.phase` is the phase last seen.

A job is identified by its URL alone, so a wait interrupted in one process can be
resumed in another with ``SodaJob.load(session, url)``; every `JobError` names the URL
and the ``load_job(...)`` call that does it.  `wait_all` follows several jobs in one loop.

No request is retried here: the session's transport adapter
(`~astroquery_casda_ext.transport.ApiRetryAdapter`) is the one retry layer.
"""
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from io import BytesIO
from urllib.parse import unquote, urljoin, urlsplit

import requests
from pyvo.io.uws import parse_job

from . import conf
from .access import AccessToken, server_message
from .errors import (InvalidInputError, InvalidURLError, JobError, JobExpiredError, JobFailedError,
                     JobNotFoundError, JobTimeoutError, redact_url)
from .errors import package_logger
from .soda_params import SodaRequest
from .transport import describe_failure

__all__ = ["ACTIVE_PHASES", "FINAL_PHASES", "is_final", "JobDocument", "parse_job_document",
           "PollPolicy", "ResultFile", "SodaJob", "product_id_of", "wait_all", "request_from_parameters"]

log = package_logger(__name__)

#: Phases in which a job is still going somewhere.  SUSPENDED (CASDA: staging from tape)
#: and HELD (paused by an operator) are *not* final.  Any other phase (UWS's UNKNOWN, or
#: one a newer CASDA invents) is logged once and waited through for
#: ``PollPolicy.unknown_phase_polls`` looks, then reported as a `JobError`.
#: (pyvo's parser keeps any phase, but ``AsyncTAPJob.wait`` gives up on SUSPENDED and
#: HELD, which is why `SodaJob.wait` follows these sets instead.)
ACTIVE_PHASES = frozenset({"PENDING", "QUEUED", "EXECUTING", "SUSPENDED", "HELD"})

#: Phases after which nothing more will happen.
FINAL_PHASES = frozenset({"COMPLETED", "ERROR", "ABORTED"})

#: UWS 1.1's ARCHIVED (results deleted, job kept) also ends the wait.
_ALSO_FINAL = frozenset({"ARCHIVED"})

#: CASDA negotiates the body of error responses: with ``text/plain`` first it answers
#: ``FAILURE: <message>`` instead of an HTML page; job documents are XML, hence the second type.
_ACCEPT = "text/plain, application/xml;q=0.9"

_JOB_PATH = re.compile(r"^/(?:.*/)?data/async/([^/]+)/?$")


def is_final(phase):
    """True when nothing more will happen to a job in ``phase``."""
    return phase in FINAL_PHASES or phase in _ALSO_FINAL


# --- the job document -----------------------------------------------------------------------

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
    content : bytes
        The body of ``GET <job URL>``.

    Returns
    -------
    JobDocument

    Raises
    ------
    JobError
        The content is not a UWS job document.
    """
    try:
        job = parse_job(BytesIO(_normalise_times(content)))
    except Exception as exc:   # expat, astropy and pyvo raise unrelated types for bad input
        snippet = " ".join(content[:200].decode("utf-8", "replace").split())
        raise JobError(f"not a UWS job document ({type(exc).__name__}): {snippet!r}") from exc
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


# --- polling policy -------------------------------------------------------------------------

@dataclass(frozen=True)
class PollPolicy:
    """When to look at a running job again, and when to give up.

    Each wait is ``(factor - 1)`` times the time the job has been waited for so far, at
    least ``first`` and at most ``cap`` seconds: the looks are ``first`` apart at the
    start, then each ``factor`` times later than the one before, then ``cap`` apart.  So a
    job is seen finished within ``max(first, (factor - 1) * its run time)`` of finishing
    (and within ``cap``), with few looks at a long job.  The policy only computes delays;
    `wait_all` does the sleeping, so one policy can be shared by many jobs and threads.

    Parameters
    ----------
    first : float
        Seconds before the first look, and the shortest wait (> 0).
    factor : float
        Growth of the wait per look (>= 1; 1 means a fixed interval of ``first``).
    cap : float
        Longest wait in seconds (> 0); astroquery's ``POLL_INTERVAL``.  Also the longest
        ``WAIT`` asked of a UWS 1.1 server.
    timeout : float or None
        Seconds after which `wait_all` gives up with `JobTimeoutError` (the job keeps
        running on the server).  ``None`` or ``0`` means no limit.
    unknown_phase_polls : int
        Looks at a job in a phase this client does not know before `wait_all` gives up
        with a `JobError` naming it; ``0`` gives up at once.
    """

    #: Seconds before the first look at a job that was just started (the shortest wait).
    first: float = 0.5
    #: Growth of the wait per look: a job is seen finished within 20 % of its run time.
    factor: float = 1.2
    #: Longest wait between two looks.
    cap: float = 10.0
    #: Give up after this many seconds (None or 0: never).
    timeout: float | None = 86400.0
    #: Looks at a job in an unknown phase before giving up.
    unknown_phase_polls: int = 20

    def __post_init__(self):
        if not self.first > 0 or not self.cap > 0:
            raise InvalidInputError("PollPolicy first and cap must be > 0, "
                                    f"got first={self.first}, cap={self.cap}")
        if not self.factor >= 1:
            raise InvalidInputError(f"PollPolicy factor must be >= 1, got {self.factor}")
        if self.timeout is not None and self.timeout < 0:
            raise InvalidInputError(f"PollPolicy timeout must be None, 0 or positive, got {self.timeout}")
        if self.unknown_phase_polls < 0:
            raise InvalidInputError("PollPolicy unknown_phase_polls must be >= 0, "
                                    f"got {self.unknown_phase_polls}")

    @classmethod
    def from_conf(cls, poll_interval=None):
        """The policy the configuration asks for, with ``poll_interval`` as the cap if given.

        The one place the façade, the command line and astroquery's ``POLL_INTERVAL`` turn
        into a policy: ``cap`` is ``poll_interval`` or else ``conf.poll_interval``; ``first``
        is ``conf.poll_first`` (no more than the cap); ``timeout`` is ``conf.job_timeout``.
        """
        cap = float(poll_interval if poll_interval is not None else conf.poll_interval)
        return cls(first=min(float(conf.poll_first), cap), cap=cap, timeout=float(conf.job_timeout) or None,
                   unknown_phase_polls=int(conf.unknown_phase_polls))

    def delay(self, elapsed):
        """Seconds to wait before the next look, ``elapsed`` seconds into the wait."""
        return min(self.cap, max(self.first, (self.factor - 1.0) * max(0.0, float(elapsed))))

    def remaining(self, elapsed):
        """Seconds left before the timeout (None when there is no limit)."""
        return None if not self.timeout else max(0.0, self.timeout - elapsed)


# --- results --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResultFile:
    """One file delivered by a job, with the URL of its ``.checksum`` (if the job listed one)."""

    result_id: str              #: e.g. "cube-244", "cutout-7-imagecube-1001", "error-01"
    url: str                    #: the download URL, exactly as usable (may be a presigned URL)
    checksum_url: str | None    #: URL of the matching ``.checksum`` result
    product_id: str | None      #: the product it came from ("cube-1001"); None for error files
    message: str | None = None  #: text of an error file, once fetched

    def __repr__(self):
        # presigned URLs carry their signature in the query string: show them redacted
        return (f"ResultFile(result_id={self.result_id!r}, url={redact_url(self.url)!r}, "
                f"checksum_url={redact_url(self.checksum_url)!r}, product_id={self.product_id!r})")

    @property
    def filename(self):
        """The file's name: the last path segment of the URL, percent-decoded."""
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])


_GENERATED_ID = re.compile(r"^(?:cutout|spectrum)-\d+-image_?cube-?(\d+)$")
_MOCK_GENERATED_ID = re.compile(r"^(?:cutout|spectrum)-\d+-(cube-\d+)$")
_ERROR_ID = re.compile(r"^error-\d+")


def product_id_of(result_id):
    """The product a result came from: ``cutout-7-imagecube-1001`` -> ``cube-1001``.

    Whole files keep their id (``cube-244``, ``visibility-77``, ``moment_map-3``);
    error files (``error-01``) have none.
    """
    if _ERROR_ID.match(result_id):
        return None
    generated = _GENERATED_ID.match(result_id)
    if generated:
        return f"cube-{generated.group(1)}"
    mock = _MOCK_GENERATED_ID.match(result_id)
    return mock.group(1) if mock else result_id


def _usable_href(href):
    # Old CASDA servers percent-encoded the whole href ("http%3A%2F%2F..."); newer ones send
    # plain URLs, including S3 presigned ones whose escapes are part of the signature.
    if href.lower().startswith(("http%3a", "https%3a")):
        return unquote(href)
    return href


def _pair_results(results):
    """ResultFiles for the data files and for the error files, each with its checksum URL."""
    suffix = ".checksum"
    checksums = {rid[:-len(suffix)]: _usable_href(href) for rid, href in results if rid.endswith(suffix)}
    files = [ResultFile(rid, _usable_href(href), checksums.get(rid), product_id_of(rid))
             for rid, href in results if not rid.endswith(suffix)]
    return ([item for item in files if not _ERROR_ID.match(item.result_id)],
            [item for item in files if _ERROR_ID.match(item.result_id)])


# --- the job --------------------------------------------------------------------------------

def _form(params):
    """Form fields from ``{name: value or [values]}``: list values become repeated keys."""
    if not params:
        return []
    items = params.items() if hasattr(params, "items") else params
    fields = []
    for name, value in items:
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        fields += [(str(name), str(item)) for item in values]
    return fields


def _token_strings(tokens):
    values = [item.token if isinstance(item, AccessToken) else item for item in tokens]
    if not values or not all(isinstance(value, str) and value.strip() for value in values):
        raise InvalidInputError("a SODA job needs at least one access token (non-empty strings)")
    return values


def _validate_job_url(job_url):
    parts = urlsplit(str(job_url).strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment \
            or not _JOB_PATH.match(parts.path):
        raise InvalidURLError(f"not a CASDA SODA job URL: {redact_url(job_url)!r}; expected "
                              "https://<host>/casda_data_access/data/async/<job id>")
    return str(job_url).strip().rstrip("/")


class SodaJob:
    """A CASDA SODA (UWS 1.0) job.

    Build one with `SodaJob.create` (new job) or `SodaJob.load` (existing job by URL).

    Parameters
    ----------
    session : `requests.Session`
        Session used for every request (SODA needs no credentials: tokens authorise).
    url : str
        The job URL, ``.../data/async/<job id>``.
    timeout : float
        Seconds to wait for the server to connect and answer one request.
    delete_on_exit : bool
        Delete the job on the server when a ``with`` block around it ends.
    request : `~astroquery_casda_ext.soda_params.SodaRequest`, optional
        The regions and windows the job cuts (what labels its files); for a job loaded by
        URL it is read back from the job's parameters.
    """

    def __init__(self, session, url, *, timeout=30, delete_on_exit=False, request=None, _secrets=()):
        self.session = session
        #: The job URL; all that is needed to find the job again (`SodaJob.load`).
        self.url = str(url).rstrip("/")
        self.timeout = timeout
        self.delete_on_exit = delete_on_exit
        #: The regions and spectral windows of a cutout or spectrum job (None: whole files).
        self.request = request
        self._document = None
        self._secrets = {value for value in _secrets if value}

    # construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, session, async_url, tokens, params=None, *, timeout=30, delete_on_exit=False,
               request=None):
        """Create a PENDING job for ``tokens`` (and optional SODA ``params``).

        Parameters
        ----------
        session : `requests.Session`
        async_url : str
            The SODA async endpoint (the DataLink descriptor's accessURL).
        tokens : list of str or `~astroquery_casda_ext.access.AccessToken`
            Access tokens, all for the same service and user.
        params : dict, optional
            SODA parameters, ``{name: value or [values]}`` (e.g. ``{"CIRCLE": [...]}``).
        request : `~astroquery_casda_ext.soda_params.SodaRequest`, optional
            What ``params`` came from; kept as the job's ``request`` attribute to label the results.

        Raises
        ------
        JobError
            The server refused (its message is quoted, tokens removed) or gave no job URL.
        """
        secrets = _token_strings(tokens)
        form = [("ID", token) for token in secrets] + _form(params)
        job = cls(session, async_url, timeout=timeout, delete_on_exit=delete_on_exit, request=request,
                  _secrets=secrets)
        job.url = None   # no job yet: errors must not name the async endpoint as one
        response = job._call("POST", async_url, "creating the SODA job", data=form, job_statuses=False)
        job.url = job._job_url_from(async_url, response)
        log.info("Created SODA job %s", job.url)
        return job.refresh()

    @classmethod
    def load(cls, session, job_url, *, timeout=30, delete_on_exit=False):
        """The existing job at ``job_url``, refreshed.

        Raises
        ------
        InvalidURLError
            ``job_url`` is not ``http(s)://<host>/.../data/async/<job id>``.
        JobNotFoundError, JobExpiredError
            The server does not know the job (404) or it has expired (410).
        """
        job = cls(session, _validate_job_url(job_url), timeout=timeout, delete_on_exit=delete_on_exit)
        job.refresh()
        job.request = request_from_parameters(job.document.parameters)
        return job

    @classmethod
    def from_json(cls, session, text, *, timeout=30):
        """The job saved by `to_json` (only its URL matters), refreshed."""
        try:
            url = json.loads(text)["url"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"not a saved SODA job: {exc}") from None
        return cls.load(session, url, timeout=timeout)

    def to_json(self):
        """A JSON record of the job (its URL, id and last phase) to resume it elsewhere."""
        return json.dumps({"url": self.url, "job_id": self.job_id, "phase": self.phase})

    def _job_url_from(self, async_url, response):
        location = response.headers.get("Location")
        if location:
            return urljoin(async_url, location).rstrip("/")
        body = response.text.strip()
        if body.startswith("<"):
            body = parse_job_document(response.content).job_id
        if re.fullmatch(r"[A-Za-z0-9._~-]+", body or ""):
            return async_url.rstrip("/") + "/" + body
        raise JobError(f"SODA created no job: HTTP {response.status_code} without a Location or a job id "
                       f"from {redact_url(async_url)}: {self._redact(server_message(response))}")

    # state -------------------------------------------------------------------------------

    @property
    def document(self):
        """The `JobDocument` last read from the server (None before the first refresh)."""
        return self._document

    @property
    def job_id(self):
        if self._document and self._document.job_id:
            return self._document.job_id
        return self.url.rsplit("/", 1)[-1]

    @property
    def phase(self):
        """The phase last seen (`refresh` asks the server)."""
        return self._document.phase if self._document else None

    @property
    def error_summary(self):
        """The server's errorSummary message, if any."""
        return self._document.error_summary if self._document else None

    @property
    def destruction(self):
        """When the server will delete the job and its files (UTC), if it said."""
        return self._document.destruction if self._document else None

    def __repr__(self):
        return f"<SodaJob {self.url} phase={self.phase}>"

    __str__ = __repr__

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if self.delete_on_exit:
            try:
                self.delete()
            except JobError:
                pass   # the job expires on its own; a failed clean-up must not hide the real outcome

    # requests ----------------------------------------------------------------------------

    def _redact(self, text):
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "<token>")
        return text

    def _call(self, method, url, what, *, job_statuses=True, params=None, data=None, timeout=None):
        """Send one SODA request; translate every failure into a public JobError subclass.

        Nothing is retried here: the session's transport adapter already did, within its budget.
        """
        try:
            response = self.session.request(method, url, params=params, data=data,
                                            headers={"Accept": _ACCEPT}, allow_redirects=False,
                                            timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            raise JobError(f"{what}: no answer from {redact_url(url)} ({describe_failure(exc)})",
                           job_url=self.url, phase=self.phase) from exc
        status = response.status_code
        if status < 400:
            return response
        message = self._redact(server_message(response))
        text = f"{what} failed: HTTP {status} from {redact_url(url)}: {message}"
        kind = JobError
        if job_statuses and status == 404:
            kind, text = JobNotFoundError, f"{what} failed: CASDA does not know job {self.url} (HTTP 404)"
        elif job_statuses and status == 410:
            kind, text = JobExpiredError, (f"{what} failed: job {self.url} has expired (HTTP 410); "
                                           "stage the data again")
        raise kind(text, job_url=self.url, phase=self.phase, server_message=message)

    def _read(self, response):
        try:
            document = parse_job_document(response.content)
        except JobError as exc:   # a garbled answer: the job itself may be fine, keep its URL
            raise JobError(f"reading job {self.url}: {self._redact(str(exc))}", job_url=self.url,
                           phase=self.phase, server_message=exc.server_message) from exc
        for name, value in document.parameters:
            if name.lower() == "id":   # the job's tokens: keep them out of messages
                self._secrets.update(piece for piece in re.split(r"[{},\s]+", value) if piece)
        self._document = document
        return self

    def refresh(self):
        """Read the job document from the server; returns ``self``."""
        return self._read(self._call("GET", self.url, "reading the job"))

    def add_parameters(self, params):
        """Add SODA parameters (``{name: value or [values]}``); CASDA allows this only while PENDING.

        Raises
        ------
        JobError
            The server refused (e.g. "Job with id '...' is not pending.").
        """
        fields = _form(params)
        if fields:
            self._call("POST", self.url + "/parameters", "adding parameters", data=fields)
        return self

    def run(self):
        """Start the job (``PHASE=RUN``); `wait` follows it."""
        self._call("POST", self.url + "/phase", "starting the job", data={"PHASE": "RUN"})
        return self

    def abort(self):
        """Ask the server to abort the job (``PHASE=ABORT``)."""
        self._call("POST", self.url + "/phase", "aborting the job", data={"PHASE": "ABORT"})
        return self

    def delete(self):
        """Delete the job and its files on the server (a job already gone is not an error)."""
        try:
            self._call("DELETE", self.url, "deleting the job")
        except (JobNotFoundError, JobExpiredError):
            pass

    # waiting -----------------------------------------------------------------------------

    def wait(self, policy=None, *, sleep=time.sleep, clock=time.monotonic, on_phase=None):
        """Follow the job until it reaches a final phase, and return that phase.

        UWS 1.1 servers are asked to block (``WAIT``); others (CASDA) are polled with the
        policy's growing delays.  A request that fails (after the transport's retries)
        raises at once, naming the job and how to resume it.

        Parameters
        ----------
        policy : PollPolicy, optional
            Delays and timeout; default `PollPolicy.from_conf` (``conf.poll_first``,
            ``poll_interval``, ``job_timeout``).
        sleep, clock : callable
            ``time.sleep`` and ``time.monotonic`` unless injected (tests).
        on_phase : callable, optional
            ``on_phase(phase, elapsed_seconds)``, called whenever a new phase is seen.

        Returns
        -------
        str
            COMPLETED, ERROR, ABORTED (or ARCHIVED); see `raise_if_error`.

        Raises
        ------
        JobTimeoutError
            Still active after ``policy.timeout`` seconds; the job keeps running on the server.
        JobNotFoundError, JobExpiredError
            The job is gone (404, 410).
        JobError
            No usable answer, or a phase this client does not know for too long.
        """
        report = None if on_phase is None else (lambda job, phase, elapsed: on_phase(phase, elapsed))
        return wait_all([self], policy, sleep=sleep, clock=clock, on_phase=report)[0]

    def _blocking_refresh(self, policy, elapsed, remaining, sleep, clock):
        """UWS 1.1: the server holds the request until the phase changes or WAIT seconds pass."""
        wait_seconds = max(1, math.ceil(_bounded(policy.cap, remaining)))
        phase, before = self.phase, clock()
        response = self._call("GET", self.url, "waiting for the job",
                              params={"WAIT": wait_seconds, "PHASE": phase},
                              timeout=(self.timeout, self.timeout + wait_seconds))
        self._read(response)
        if self.phase == phase and clock() - before < wait_seconds / 2:
            sleep(_bounded(policy.delay(elapsed), remaining))   # WAIT was ignored: back off as for UWS 1.0

    def _timeout(self, elapsed, policy, job_urls=None):
        return JobTimeoutError(
            f"job {self.url} is still {self.phase} after {elapsed:.0f} s (timeout {policy.timeout:g} s). "
            f"It keeps running on the server: resume with Casda.load_job('{self.url}') "
            f"(or SodaJob.load(session, '{self.url}')).", job_url=self.url, phase=self.phase,
            job_urls=job_urls)

    # outcome -----------------------------------------------------------------------------

    def raise_if_error(self):
        """Raise `JobFailedError` (with the errorSummary) if the job ended in ERROR or ABORTED."""
        if self.phase in ("ERROR", "ABORTED"):
            summary = self.error_summary or "the server gave no error summary"
            raise JobFailedError(f"job {self.url} ended {self.phase}: {summary}", job_url=self.url,
                                 phase=self.phase, server_message=self.error_summary)
        if self.phase in _ALSO_FINAL:
            raise JobExpiredError(f"job {self.url} is {self.phase}: its results were deleted; "
                                  "stage the data again",
                                  job_url=self.url, phase=self.phase)

    def result_files(self):
        """The delivered data files, each with its checksum URL (error files excluded)."""
        return _pair_results(self._document.results)[0] if self._document else []

    def error_files(self, *, fetch_messages=False):
        """The ``error-NN`` results (no data where a cutout region missed a cube).

        With ``fetch_messages=True`` each file is downloaded (no credentials needed) and
        its text is put in `ResultFile.message`.
        """
        files = _pair_results(self._document.results)[1] if self._document else []
        if not fetch_messages:
            return files
        return [ResultFile(item.result_id, item.url, item.checksum_url, None, self._fetch_text(item.url))
                for item in files]

    def _fetch_text(self, url):
        try:
            response = self.session.get(url, timeout=self.timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise JobError(f"could not read error file {redact_url(url)}: {type(exc).__name__}",
                           job_url=self.url, phase=self.phase) from exc
        return self._redact(response.text.strip())

    def result_urls(self):
        """astroquery's list: every data file URL followed by its checksum URL."""
        return [url for item in self.result_files() for url in (item.url, item.checksum_url) if url]


@dataclass(frozen=True)
class _RegionLabel:
    """A region read back from a job document: only its label (what `label_results` shows)."""

    label: str

    def sia2_pos(self):
        return self.label


#: SODA parameter (lower-case, as CASDA lists them) -> the label's prefix ("" = the value says it).
_REGION_PARAMETERS = {"circle": "CIRCLE ", "polygon": "POLYGON ", "pos": ""}


def _values(text):
    """CASDA's multi-values: ``{a,b}`` (Commons ``ArrayUtils.toString``) or one value."""
    text = text.strip()
    return [item.strip() for item in text[1:-1].split(",")] if text.startswith("{") else [text]


def _bound(text):
    value = float(text)
    return None if math.isinf(value) else value


def request_from_parameters(parameters):
    """The `SodaRequest` a job was made with, read back from its document's parameters.

    So that a job loaded by URL (another process, `SodaJob.load`) labels its cutouts as the
    job that made it did.  None for a job without regions or windows (whole files).
    """
    regions, bands, channels, pols = [], [], [], []
    try:
        for name, value in parameters:
            key = name.strip().lower()
            if key in _REGION_PARAMETERS:
                regions += [_RegionLabel(_REGION_PARAMETERS[key] + item) for item in _values(value)]
            elif key == "band":
                bands += [tuple(_bound(bound) for bound in item.split()) for item in _values(value)]
            elif key == "channel":
                channels += [tuple(int(bound) for bound in item.split()) for item in _values(value)]
            elif key == "pol":
                pols += _values(value)
    except ValueError:
        return None   # not what this client writes: the files are listed unlabelled
    request = SodaRequest(tuple(regions), tuple(bands), tuple(channels), tuple(pols))
    return request if request else None


def wait_all(jobs, policy=None, *, sleep=time.sleep, clock=time.monotonic, on_phase=None):
    """Follow several jobs in one loop until each reaches a final phase; their phases, in order.

    Every round waits once (`PollPolicy.delay`) and then reads each job still active, so
    ``n`` jobs cost one wait per round, not ``n``.  A single UWS 1.1 job is asked to block
    (``WAIT``) instead.

    Parameters
    ----------
    jobs : list of `SodaJob`
    policy : PollPolicy, optional
        Default `PollPolicy.from_conf`.
    sleep, clock : callable
        ``time.sleep`` and ``time.monotonic`` unless injected (tests).
    on_phase : callable, optional
        ``on_phase(job, phase, elapsed_seconds)``, called whenever a job shows a new phase.

    Raises
    ------
    JobTimeoutError, JobNotFoundError, JobExpiredError, JobError
        As `SodaJob.wait`; ``job_urls`` lists every job still active.
    """
    jobs = list(jobs)
    policy = policy or PollPolicy.from_conf()
    start, seen, unknown = clock(), {}, {}
    for job in jobs:
        if job.document is None:
            job.refresh()
    pending = jobs
    while True:
        elapsed = clock() - start
        pending = [job for job in pending if not _settled(job, policy, seen, unknown, on_phase, elapsed)]
        if not pending:
            return [job.phase for job in jobs]
        urls = [job.url for job in pending]
        remaining = policy.remaining(elapsed)
        if remaining is not None and remaining <= 0:
            raise pending[0]._timeout(elapsed, policy, urls)
        try:
            if len(pending) == 1 and pending[0].document.version == "1.1":
                pending[0]._blocking_refresh(policy, elapsed, remaining, sleep, clock)
                continue
            sleep(_bounded(policy.delay(elapsed), remaining))
            for job in pending:
                job.refresh()
        except JobError as exc:
            exc.job_urls = [url for url in dict.fromkeys([exc.job_url, *urls]) if url]
            raise


def _settled(job, policy, seen, unknown, on_phase, elapsed):
    """Whether ``job`` needs no more looks; reports new phases, bounds unknown ones."""
    phase = job.phase
    if seen.get(id(job)) != phase:
        seen[id(job)] = phase
        if on_phase is not None:
            on_phase(job, phase, elapsed)
    if is_final(phase):
        return True
    if phase not in ACTIVE_PHASES:
        looks = unknown[id(job)] = unknown.get(id(job), 0) + 1
        if looks == 1:
            log.warning("job %s is in phase %s, which this client does not know; taking it as not "
                        "finished for up to %d looks", job.url, phase, policy.unknown_phase_polls)
        if looks > policy.unknown_phase_polls:
            raise JobError(f"job {job.url} stayed in phase {phase}, which this client does not know, "
                           f"for {looks - 1} looks", job_url=job.url, phase=phase)
    return False


def _bounded(seconds, remaining):
    return seconds if remaining is None else max(0.0, min(seconds, remaining))
