"""The package's UWS module: one job type for TAP async queries and SODA jobs, one poll loop.

CASDA's TAP async (``casda_vo_tools/tap/async``) and SODA (``casda_data_access/data/async``)
services are UWS job services: a job is created, may get parameters while PENDING, is
started with ``PHASE=RUN``, and (SODA: while files come off tape) passes through QUEUED,
EXECUTING and SUSPENDED (and HELD when an operator pauses it) before COMPLETED, ERROR or
ABORTED.  `UwsJob` is a handle on one job (create, run, refresh, wait, abort, delete, the
error summary, resume by URL); `TapJob` and `SodaJob` add what each service's results
are.  A job asks the server only when told to (`UwsJob.refresh`, `UwsJob.wait`), and
`UwsJob.phase` is the phase last seen.

`wait_all` is the package's one poll loop (`PollPolicy`: growing delays, a timeout,
unknown phases bounded); `JobBatch` runs a call's several SODA jobs: submit, abort or
keep them when one fails, wait, and collect the files.

A job is identified by its URL alone, so a wait interrupted in one process can be
resumed in another with ``SodaJob.load(session, url)``; every `JobError` names the URL
and the ``load_job(...)`` call that does it.  Job documents are read by
`~astroquery_casda_ext.documents` (bounded in bytes and time), failures mapped by
`~astroquery_casda_ext.transport.failure`.  No request is retried here: the session's
transport adapter (`~astroquery_casda_ext.transport.ApiRetryAdapter`) is the one retry layer.
"""
import json
import math
import re
import time
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from . import conf
from .access import AccessToken
from .documents import JobDocument, fetch, parse_job_document
from .errors import (CasdaError, InvalidInputError, InvalidURLError, JobError, JobExpiredError, JobFailedError,
                     JobNotFoundError, JobSubmissionError, JobTimeoutError, QueryError, ServiceError, redact_url)
from .errors import package_logger
from .soda_params import SodaRequest

__all__ = ["ACTIVE_PHASES", "FINAL_PHASES", "is_final", "JobDocument", "parse_job_document",
           "PollPolicy", "ResultFile", "UwsJob", "SodaJob", "TapJob", "JobBatch", "product_id_of", "wait_all",
           "request_from_parameters"]

log = package_logger(__name__)

#: Phases in which a job is still going somewhere.  SUSPENDED (CASDA: staging from tape)
#: and HELD (paused by an operator) are *not* final.  Any other phase (UWS's UNKNOWN, or
#: one a newer CASDA invents) is logged once and waited through for
#: ``PollPolicy.unknown_phase_polls`` looks, then reported as a `JobError`.
#: (pyvo's parser keeps any phase, but ``AsyncTAPJob.wait`` gives up on SUSPENDED and
#: HELD, which is why `UwsJob.wait` follows these sets instead.)
ACTIVE_PHASES = frozenset({"PENDING", "QUEUED", "EXECUTING", "SUSPENDED", "HELD"})

#: Phases after which nothing more will happen.
FINAL_PHASES = frozenset({"COMPLETED", "ERROR", "ABORTED"})

#: UWS 1.1's ARCHIVED (results deleted, job kept) also ends the wait.
_ALSO_FINAL = frozenset({"ARCHIVED"})

#: CASDA negotiates the body of error responses: with ``text/plain`` first it answers
#: ``FAILURE: <message>`` instead of an HTML page; job documents are XML, hence the second type.
_ACCEPT = "text/plain, application/xml;q=0.9"

#: CASDA's TAP prefixes an async job's error summary with this.
_QUERY_ERROR = "Query Error: "

_JOB_PATH = re.compile(r"^/(?:.*/)?data/async/([^/]+)/?$")


def is_final(phase):
    """True when nothing more will happen to a job in ``phase``."""
    return phase in FINAL_PHASES or phase in _ALSO_FINAL


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
    """Form fields from ``{name: value or [values]}`` (a list value is a repeated key).

    A dict, as astroquery.casda posts its cutout parameters: one value is a string, several
    a list (requests sends those as repeated keys).
    """
    if not params:
        return {}
    items = params.items() if hasattr(params, "items") else params
    fields = {}
    for name, value in items:
        if value is None:
            continue
        values = [str(item) for item in (value if isinstance(value, (list, tuple)) else [value])]
        known = fields.get(str(name), [])
        merged = (known if isinstance(known, list) else [known]) + values
        fields[str(name)] = merged[0] if len(merged) == 1 else merged
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


class UwsJob:
    """A UWS job (1.0 or 1.1) of any CASDA service: the one job type of the package.

    Build one with the subclasses' ``create`` (new job) or `load` (existing job by URL).

    Parameters
    ----------
    session : `requests.Session`
        Session used for every request.
    url : str
        The job URL.
    timeout : float
        Seconds to wait for the server to connect and answer one request.
    delete_on_exit : bool
        Delete the job on the server when a ``with`` block around it ends.
    """

    #: The service's name in messages.
    service = "UWS"
    #: The public exception of this service's failures (statuses 404 and 410 have their own).
    error_kind = JobError

    def __init__(self, session, url, *, timeout=30, delete_on_exit=False, _secrets=()):
        self.session = session
        #: The job URL; all that is needed to find the job again (`load`).
        self.url = str(url).rstrip("/") if url else None
        self.timeout = timeout
        self.delete_on_exit = delete_on_exit
        self._document = None
        self._secrets = {value for value in _secrets if value}

    @classmethod
    def load(cls, session, job_url, *, timeout=30, delete_on_exit=False):
        """The existing job at ``job_url``, refreshed.

        Raises
        ------
        JobNotFoundError, JobExpiredError
            The server does not know the job (404) or it has expired (410).
        """
        job = cls(session, job_url, timeout=timeout, delete_on_exit=delete_on_exit)
        return job.refresh()

    def _job_url_from(self, endpoint, document):
        """The new job's URL: CASDA's ``Location`` (a 303), or a job id or document in the body."""
        location = document.headers.get("Location")
        if location:
            return urljoin(endpoint, location).rstrip("/")
        body = document.text.strip()
        if body.startswith("<"):
            try:
                body = parse_job_document(document).job_id
            except JobError:
                body = ""   # not a job document (e.g. a maintenance page): said below
        if re.fullmatch(r"[A-Za-z0-9._~-]+", body or ""):
            return endpoint.rstrip("/") + "/" + body
        said = self._redact(" ".join(document.text.split())[:300])
        raise self._kind_error(f"{self.service} did not create a job: HTTP {document.status} without a Location "
                               f"or a job id from {redact_url(endpoint)}: {said}", endpoint)

    def _kind_error(self, message, url):
        if issubclass(self.error_kind, JobError):
            return self.error_kind(message, job_url=self.url, phase=self.phase)
        return self.error_kind(message, url=url)

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
        return f"<{type(self).__name__} {self.url} phase={self.phase}>"

    __str__ = __repr__

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if self.delete_on_exit:
            self.discard()

    # requests ----------------------------------------------------------------------------

    def _redact(self, text):
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "<token>")
        return text

    def _call(self, method, url, what, *, job_statuses=True, document=False, budget=None, timeout=None,
              accept=_ACCEPT, allow_redirects=False, **kwargs):
        """Send one request (read within the document bounds); every failure becomes a public
        exception through `~astroquery_casda_ext.transport.failure`.  Nothing is retried here."""
        statuses = {}
        if job_statuses:
            statuses = {404: (JobNotFoundError, f"{what} failed: CASDA does not know job {self.url} (HTTP 404)"),
                        410: (JobExpiredError, f"{what} failed: job {self.url} has expired (HTTP 410); "
                                               "stage the data again")}
        details = {"job_url": self.url, "phase": self.phase} if issubclass(self.error_kind, JobError) else {}
        return fetch(self.session, method, url, what=what, kind=self.error_kind, statuses=statuses,
                     scrub=self._redact, details=details, accept=accept, expect_xml=document, budget=budget,
                     allow_redirects=allow_redirects, timeout=timeout or self.timeout, **kwargs)

    def _read(self, document):
        try:
            parsed = parse_job_document(document)
        except JobError as exc:   # a garbled answer: the job itself may be fine, keep its URL
            raise self._kind_error(f"reading job {self.url}: {self._redact(str(exc))}", self.url) from exc
        self._document = parsed
        return self

    def refresh(self, *, budget=None):
        """Read the job document from the server; returns ``self``.

        ``budget`` (seconds) shortens ``conf.request_budget`` for this read (a wait's time left);
        by default no read of a job document outlives ``conf.job_timeout`` either.
        """
        if budget is None:
            budget = float(conf.job_timeout) or None
        return self._read(self._call("GET", self.url, "reading the job", document=True, budget=budget))

    def add_parameters(self, params):
        """Add parameters (``{name: value or [values]}``); UWS allows this only while PENDING.

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

    def discard(self):
        """`delete`, as good manners: a failure is logged, never raised (the job expires on its own)."""
        if not self.url:
            return
        try:
            self.delete()
        except CasdaError as exc:
            log.info("could not delete job %s: %s", self.url, exc)

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
        document = self._call("GET", self.url, "waiting for the job", document=True,
                              params={"WAIT": wait_seconds, "PHASE": phase},
                              budget=None if remaining is None else remaining + self.timeout,
                              timeout=(self.timeout, self.timeout + wait_seconds))
        self._read(document)
        if self.phase == phase and clock() - before < wait_seconds / 2:
            sleep(_bounded(policy.delay(elapsed), remaining))   # WAIT was ignored: back off as for UWS 1.0

    def _resume_hint(self):
        return ""

    def _timeout(self, elapsed, policy, job_urls=None):
        return JobTimeoutError(
            f"{self.service} job {self.url} is still {self.phase} after {elapsed:.0f} s (timeout "
            f"{policy.timeout:g} s).{self._resume_hint()}", job_url=self.url, phase=self.phase,
            job_urls=job_urls)

    # outcome -----------------------------------------------------------------------------

    def raise_if_error(self):
        """Raise `JobFailedError` (with the errorSummary) if the job ended in ERROR or ABORTED."""
        if self.phase in ("ERROR", "ABORTED"):
            summary = self.error_summary or "the server gave no error summary"
            # astroquery.casda's words first (code written for it matches on them)
            raise JobFailedError(f"Data staging job did not complete successfully. Status was {self.phase}. "
                                 f"Job {self.url} ended {self.phase}: {summary}", job_url=self.url,
                                 phase=self.phase, server_message=self.error_summary)
        if self.phase in _ALSO_FINAL:
            raise JobExpiredError(f"job {self.url} is {self.phase}: its results were deleted; "
                                  "stage the data again",
                                  job_url=self.url, phase=self.phase)


class TapJob(UwsJob):
    """A CASDA TAP async query (UWS 1.0): created from the query's parameters, one result.

    Failures to reach the service are `~astroquery_casda_ext.errors.ServiceError`; a job
    that ends in ERROR is a `~astroquery_casda_ext.errors.QueryError` with the server's
    words (`raise_if_error`).
    """

    service = "TAP"
    error_kind = ServiceError

    @classmethod
    def create(cls, session, tap_url, params, *, timeout=30):
        """Create a PENDING job at ``<tap_url>/async`` for ``params`` (``QUERY``, ``MAXREC``...)."""
        endpoint = tap_url.rstrip("/") + "/async"
        job = cls(session, None, timeout=timeout)
        created = job._call("POST", endpoint, "creating the TAP job", data=params, job_statuses=False)
        job.url = job._job_url_from(endpoint, created)
        log.info("Created TAP job %s", job.url)
        return job

    def raise_if_error(self):
        if self.phase in ("ERROR", "ABORTED"):
            message = (self.error_summary or f"the job ended {self.phase}").strip()
            message = message[len(_QUERY_ERROR):] if message.startswith(_QUERY_ERROR) else message
            raise QueryError(f"CASDA TAP query failed: {message}", url=self.url, server_message=message)
        super().raise_if_error()

    def result_url(self):
        """The URL of the job's result (id ``result``, else the first); CASDA percent-encodes
        whole hrefs (``https%3A%2F%2F...``)."""
        hrefs = dict(self._document.results) if self._document else {}
        href = hrefs.get("result") or next(iter(hrefs.values()), None)
        if href and "://" not in href and re.match(r"[A-Za-z][A-Za-z0-9+.-]*%3A", href, re.IGNORECASE):
            href = unquote(href)
        return urljoin(self.url + "/", href) if href else self.url + "/results/result"


class SodaJob(UwsJob):
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

    service = "SODA"

    def __init__(self, session, url, *, timeout=30, delete_on_exit=False, request=None, _secrets=()):
        super().__init__(session, url, timeout=timeout, delete_on_exit=delete_on_exit, _secrets=_secrets)
        #: The regions and spectral windows of a cutout or spectrum job (None: whole files).
        self.request = request

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
        form = [("ID", token) for token in secrets] + [
            (name, value) for name, values in _form(params).items()
            for value in (values if isinstance(values, list) else [values])]
        # no job yet: errors must not name the async endpoint as one
        job = cls(session, None, timeout=timeout, delete_on_exit=delete_on_exit, request=request,
                  _secrets=secrets)
        created = job._call("POST", async_url, "creating the SODA job", data=form, job_statuses=False)
        job.url = job._job_url_from(async_url, created)
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

    def _read(self, document):
        super()._read(document)
        for name, value in self._document.parameters:
            if name.lower() == "id":   # the job's tokens: keep them out of messages
                self._secrets.update(piece for piece in re.split(r"[{},\s]+", value) if piece)
        return self

    def _resume_hint(self):
        return (f" It keeps running on the server: resume with Casda.load_job('{self.url}') "
                f"(or SodaJob.load(session, '{self.url}')).")

    # outcome -----------------------------------------------------------------------------

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
        document = self._call("GET", url, f"reading error file {redact_url(url)}", job_statuses=False,
                              accept="text/plain, */*;q=0.5", allow_redirects=True)
        return self._redact(document.text.strip())

    def result_urls(self):
        """astroquery's list: the URLs of the data files and their checksums, in the job's order.

        CASDA lists each ``.checksum`` before its file; error files are left out.
        """
        if not self._document:
            return []
        kept = {item.result_id for item in self.result_files()}
        return [_usable_href(href) for rid, href in self._document.results
                if href and rid.removesuffix(".checksum") in kept]


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

    The package's one poll loop (TAP async queries and SODA jobs alike).  Every round waits
    once (`PollPolicy.delay`) and then reads each job still active, so ``n`` jobs cost one
    wait per round, not ``n``.  A single UWS 1.1 job is asked to block (``WAIT``) instead.
    Each read is bounded by the time left before the policy's timeout, so a job document
    that trickles in cannot keep the wait alive past it.

    Parameters
    ----------
    jobs : list of `UwsJob`
    policy : PollPolicy, optional
        Default `PollPolicy.from_conf`.
    sleep, clock : callable
        ``time.sleep`` and ``time.monotonic`` unless injected (tests).
    on_phase : callable, optional
        ``on_phase(job, phase, elapsed_seconds)``, called whenever a job shows a new phase.

    Raises
    ------
    JobTimeoutError, JobNotFoundError, JobExpiredError, JobError
        As `UwsJob.wait`; ``job_urls`` lists every job still active.
    """
    jobs = list(jobs)
    policy = policy or PollPolicy.from_conf()
    start, seen, unknown = clock(), {}, {}
    try:
        for job in jobs:
            if job.document is None:
                job.refresh(budget=_read_budget(policy, 0.0))
    except JobError as exc:
        exc.job_urls = [url for url in dict.fromkeys([exc.job_url, *(job.url for job in jobs)]) if url]
        raise
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
                job.refresh(budget=_read_budget(policy, clock() - start))
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


#: Seconds a last look at a job may take when its wait's time is up (then the timeout is raised).
_LAST_LOOK = 1.0


def _read_budget(policy, elapsed):
    """Seconds one read of a job document may take: what is left of the wait, so a document
    that trickles in cannot keep the wait alive past ``policy.timeout`` (by more than a last look)."""
    remaining = policy.remaining(elapsed)
    return None if remaining is None else max(remaining, _LAST_LOOK)


def _bounded(seconds, remaining):
    return seconds if remaining is None else max(0.0, min(seconds, remaining))


# --- a call's several SODA jobs -------------------------------------------------------------

class JobBatch:
    """The SODA jobs of one call (``stage_data``, ``cutout``, ``spectra``): submit, abort or
    keep them when one fails, wait for them all, and collect their files.

    Parameters
    ----------
    jobs : list of `SodaJob`
    """

    def __init__(self, jobs):
        self.jobs = list(jobs)

    @classmethod
    def submit(cls, session, tokens, params=None, *, request=None, batch_size=None, timeout=30,
               on_error="abort", service=""):
        """Create and run as few jobs as possible (``batch_size`` tokens each, default
        ``conf.job_batch_size``).

        Each job URL is logged (INFO) the moment the job exists.  If job k of n cannot be
        created or started, the jobs before it are aborted (``on_error="abort"``) or handed
        back in the `JobSubmissionError` (``"keep"``), never left running unknown.

        Parameters
        ----------
        session : `requests.Session`
        tokens : list of `~astroquery_casda_ext.access.AccessToken`
            All for one service (their ``service_url`` is the SODA async endpoint).
        params : dict, optional
            SODA parameters of every job.
        request : `~astroquery_casda_ext.soda_params.SodaRequest`, optional
            What the parameters came from (labels the results).
        on_error : {'abort', 'keep'}
        service : str
            For the log lines.

        Raises
        ------
        JobSubmissionError
        """
        if on_error not in ("abort", "keep"):
            raise InvalidInputError(f"on_error must be 'abort' or 'keep', not {on_error!r}")
        size = max(1, int(batch_size or conf.job_batch_size))
        tokens = list(tokens)
        batches = [tokens[start:start + size] for start in range(0, len(tokens), size)]
        jobs = []
        for number, batch in enumerate(batches, 1):
            try:
                # as astroquery.casda: create the job, post the cutout's parameters to it, run it
                job = SodaJob.create(session, batch[0].service_url, [t.token for t in batch],
                                     timeout=timeout, request=request)
                jobs.append(job)
                job.add_parameters(params)
                job.run()
            except JobError as exc:
                if exc.job_url and all(made.url != exc.job_url for made in jobs):
                    # made, but its first document was unusable: it is aborted or kept with the others
                    jobs.append(SodaJob(session, exc.job_url, timeout=timeout, request=request))
                raise cls(jobs)._submission_failed(number, len(batches), exc, on_error) from exc
            log.info("Started %s job %s (%d of %d, %d product(s))", service, job.url, number, len(batches),
                     len(batch))
        return cls(jobs)

    def _submission_failed(self, number, total, exc, on_error):
        """The `JobSubmissionError` for job ``number`` of ``total``, after aborting or keeping the rest."""
        jobs = self.jobs
        what = f"job {number} of {total} could not be {'started' if exc.job_url else 'created'}: {exc.reason}"
        if on_error == "keep" or not jobs:
            kept = f"; {len(jobs)} job(s) keep running: {', '.join(job.url for job in jobs)}" if jobs else ""
            return JobSubmissionError(what + kept, jobs=jobs, job_urls=[job.url for job in jobs],
                                      server_message=exc.server_message, cause=exc)
        left = []
        for job in jobs:
            try:
                job.abort()
            except JobError:
                left.append(job)
        log.info("Aborted %d job(s) of this call after the failure", len(jobs) - len(left))
        tail = (f"; could not abort {len(left)} job(s), abort them yourself: {', '.join(j.url for j in left)}"
                if left else f"; the {len(jobs)} job(s) already made were aborted")
        return JobSubmissionError(what + tail, jobs=jobs, job_urls=[job.url for job in jobs],
                                  server_message=exc.server_message, cause=exc)

    def finish(self, policy=None, *, verbose=False, sleep=time.sleep, clock=time.monotonic):
        """Wait for every job (`wait_all`), raise the first failure naming every job of the
        call, report regions that missed products, and return astroquery's list of URLs."""
        on_phase = (lambda job, phase, elapsed: log.info("%s: %s after %.0f s", job.url, phase, elapsed)) \
            if verbose else None
        try:
            wait_all(self.jobs, policy, on_phase=on_phase, sleep=sleep, clock=clock)
            for job in self.jobs:
                job.raise_if_error()
        except JobError as exc:   # name every job of the call: none is lost with the error
            exc.job_urls = list(dict.fromkeys([*exc.job_urls, *(job.url for job in self.jobs)]))
            raise
        urls = []
        for job in self.jobs:
            _report_misses(job)
            urls.extend(job.result_urls())
        return urls


def _report_misses(job):
    """Say (in the log) when regions missed products: CASDA answers those with error files."""
    misses = job.error_files()
    if misses:
        log.warning("%d region/product combination(s) had no data (CASDA error files); they are not "
                    "returned as data: see job.error_files() for %s", len(misses), job.url)
