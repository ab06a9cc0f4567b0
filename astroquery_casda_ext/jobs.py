"""SODA async jobs at CASDA: create, add parameters, run, wait, read the results.

CASDA's SODA service (``casda_data_access/data/async``) is a UWS 1.0 job service: a job
is created from DataLink tokens, may get cutout parameters while PENDING, is started
with ``PHASE=RUN``, and while files come off tape it passes through QUEUED, EXECUTING
and SUSPENDED (and HELD when an operator pauses it) before COMPLETED, ERROR or
ABORTED.  `SodaJob` is a handle on one job: it asks the server only when told to
(`SodaJob.refresh`, `SodaJob.wait`), and `SodaJob.phase` is the phase last seen.

A job is identified by its URL alone, so a wait interrupted in one process can be
resumed in another with ``SodaJob.load(session, url)``.
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
from .transport import describe_failure

__all__ = ["ACTIVE_PHASES", "FINAL_PHASES", "is_final", "JobDocument", "parse_job_document",
           "PollPolicy", "ResultFile", "SodaJob", "product_id_of"]

#: Phases in which a job is still going somewhere.  SUSPENDED (CASDA: staging from tape)
#: and HELD (paused by an operator) are *not* final; UNKNOWN counts as active too.
#: (pyvo's parser keeps any phase, but ``AsyncTAPJob.wait`` gives up on SUSPENDED and
#: HELD, which is why `SodaJob.wait` follows these sets instead.)
ACTIVE_PHASES = frozenset({"PENDING", "QUEUED", "EXECUTING", "SUSPENDED", "HELD"})

#: Phases after which nothing more will happen.
FINAL_PHASES = frozenset({"COMPLETED", "ERROR", "ABORTED"})

#: UWS 1.1's ARCHIVED (results deleted, job kept) also ends the wait.
_ALSO_FINAL = frozenset({"ARCHIVED"})

#: HTTP statuses worth retrying while polling: the job is fine, the server is busy.
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})

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

    The n-th wait (counting from 0) is ``first * factor**n`` seconds, capped at ``cap``.
    The policy only computes delays; `SodaJob.wait` does the sleeping, so one policy can
    be shared by many jobs and threads.

    Parameters
    ----------
    first : float
        Seconds before the first look (> 0).
    factor : float
        Growth of the delay per look (>= 1; 1 means a fixed interval of ``first``).
    cap : float
        Longest delay in seconds (> 0).  Also the longest ``WAIT`` asked of a UWS 1.1 server.
    timeout : float or None
        Seconds after which `SodaJob.wait` gives up with `JobTimeoutError` (the job keeps
        running on the server).  ``None`` or ``0`` means no limit.
    retries : int
        Consecutive transient failures (HTTP 429/5xx, connection errors) tolerated while
        polling; ``0`` makes the first one fatal.
    """

    #: Seconds before the first look at a job that was just started.
    first: float = 1.0
    #: Growth of the delay per look.
    factor: float = 1.5
    #: Longest delay between two looks.
    cap: float = 20.0
    #: Give up after this many seconds (None or 0: never).
    timeout: float | None = 86400.0
    #: Consecutive transient polling failures tolerated.
    retries: int = 5

    def __post_init__(self):
        if not self.first > 0 or not self.cap > 0:
            raise InvalidInputError("PollPolicy first and cap must be > 0, "
                                    f"got first={self.first}, cap={self.cap}")
        if not self.factor >= 1:
            raise InvalidInputError(f"PollPolicy factor must be >= 1, got {self.factor}")
        if self.timeout is not None and self.timeout < 0:
            raise InvalidInputError(f"PollPolicy timeout must be None, 0 or positive, got {self.timeout}")
        if self.retries < 0:
            raise InvalidInputError(f"PollPolicy retries must be >= 0, got {self.retries}")

    @classmethod
    def from_conf(cls):
        """The policy the configuration asks for (``poll_first``, ``poll_interval``, ``job_timeout``)."""
        return cls(first=float(conf.poll_first), cap=float(conf.poll_interval),
                   timeout=float(conf.job_timeout) or None)

    def delay(self, polls_so_far):
        """Seconds to wait before the next look, after ``polls_so_far`` looks."""
        n = max(0, int(polls_so_far))
        # past the cap, skip the power: factor ** n overflows a float for large n
        if self.factor > 1 and n * math.log(self.factor) >= math.log(max(self.cap / self.first, 1.0)):
            return self.cap
        return min(self.cap, self.first * self.factor ** n)

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

class _ServiceUnavailable(JobError):
    """A failure worth retrying (HTTP 429/5xx, no connection): the job itself is fine."""


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
    """

    def __init__(self, session, url, *, timeout=30, delete_on_exit=False, _secrets=()):
        self.session = session
        #: The job URL; all that is needed to find the job again (`SodaJob.load`).
        self.url = str(url).rstrip("/")
        self.timeout = timeout
        self.delete_on_exit = delete_on_exit
        self._document = None
        self._secrets = {value for value in _secrets if value}

    # construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, session, async_url, tokens, params=None, *, timeout=30, delete_on_exit=False):
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

        Raises
        ------
        JobError
            The server refused (its message is quoted, tokens removed) or gave no job URL.
        """
        secrets = _token_strings(tokens)
        form = [("ID", token) for token in secrets] + _form(params)
        job = cls(session, async_url, timeout=timeout, delete_on_exit=delete_on_exit, _secrets=secrets)
        response = job._call("POST", async_url, "creating the SODA job", data=form, job_statuses=False)
        job.url = job._job_url_from(async_url, response)
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
        return job.refresh()

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
                       f"from {redact_url(async_url)}")

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
        """Send one SODA request; translate every failure into a JobError subclass."""
        try:
            response = self.session.request(method, url, params=params, data=data,
                                            headers={"Accept": _ACCEPT}, allow_redirects=False,
                                            timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            raise _ServiceUnavailable(f"{what}: no answer from {redact_url(url)} ({describe_failure(exc)})",
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
        elif status in _TRANSIENT_STATUSES:
            kind = _ServiceUnavailable
        raise kind(text, job_url=self.url, phase=self.phase, server_message=message)

    def _read(self, response):
        document = parse_job_document(response.content)
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
        policy's growing delays.  Transient failures (HTTP 429/5xx, no connection) are
        retried up to ``policy.retries`` times in a row.

        Parameters
        ----------
        policy : PollPolicy, optional
            Default: `PollPolicy.from_conf` (``conf.poll_first``, ``poll_interval``, ``job_timeout``).
            Delays and timeout (default ``PollPolicy()``).
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
            Too many transient failures in a row, or an unusable answer.
        """
        policy = policy or PollPolicy.from_conf()
        start, seen, looks, failures = clock(), None, 0, 0
        while True:
            if self._document is not None:
                if self.phase != seen:
                    seen = self.phase
                    if on_phase is not None:
                        on_phase(seen, clock() - start)
                if is_final(self.phase):
                    return self.phase
            remaining = policy.remaining(clock() - start)
            if remaining is not None and remaining <= 0:
                raise self._timeout(clock() - start, policy)
            try:
                looks += self._look(policy, looks, remaining, sleep, clock)
                failures = 0
            except _ServiceUnavailable:
                failures += 1
                if failures > policy.retries:
                    raise
                sleep(_bounded(policy.delay(failures - 1), remaining))

    def _look(self, policy, looks, remaining, sleep, clock):
        """Read the job once (after the policy's delay); returns 1 if that counted as a poll."""
        if self._document is None:
            self.refresh()
            return 0
        if self._document.version == "1.1":
            self._blocking_refresh(policy, looks, remaining, sleep, clock)
        else:
            sleep(_bounded(policy.delay(looks), remaining))
            self.refresh()
        return 1

    def _blocking_refresh(self, policy, looks, remaining, sleep, clock):
        """UWS 1.1: the server holds the request until the phase changes or WAIT seconds pass."""
        wait_seconds = max(1, math.ceil(_bounded(policy.cap, remaining)))
        phase, before = self.phase, clock()
        response = self._call("GET", self.url, "waiting for the job",
                              params={"WAIT": wait_seconds, "PHASE": phase},
                              timeout=(self.timeout, self.timeout + wait_seconds))
        self._read(response)
        if self.phase == phase and clock() - before < wait_seconds / 2:
            sleep(_bounded(policy.delay(looks), remaining))   # WAIT was ignored: back off as for UWS 1.0

    def _timeout(self, elapsed, policy):
        return JobTimeoutError(
            f"job {self.url} is still {self.phase} after {elapsed:.0f} s (timeout {policy.timeout:g} s). "
            f"It keeps running on the server: resume with load_job('{self.url}') "
            f"(or SodaJob.load(session, '{self.url}')).", job_url=self.url, phase=self.phase)

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


def _bounded(seconds, remaining):
    return seconds if remaining is None else max(0.0, min(seconds, remaining))
