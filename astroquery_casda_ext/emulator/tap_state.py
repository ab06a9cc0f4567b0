"""State of the emulated TAP service (``casda_vo_tools``): queries and async jobs.

No HTTP and no XML here: `validate_tap` applies CASDA's ``validateTapJob`` checks,
`run_query` runs a validated query on the TAP database, and `TapJobStore` keeps the
async jobs (UWS phases, the worker threads, at most `TAP_MAX_RUNNING` at once) on the
emulator's `~job_store.JobStore`.  Documents are in ``tap_render.py`` and
``result_writers.py``, handlers and routes in ``tap_routes.py``.
"""
import datetime as _dt
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .adql import AdqlError
from .job_store import JobStore

__all__ = ["TapJob", "TapJobStore", "TapJobFailed", "OutputFormat", "OUTPUT_FORMATS", "output_format",
           "tap_content_type", "validate_tap", "run_query", "user_scope", "set_execution_duration",
           "set_destruction", "TAP_MAX_RECORDS"]

#: vo_tools ``tap.max.records``: the row limit when MAXREC is not given.
TAP_MAX_RECORDS = 20_000_000
_INT32 = re.compile(r"^[+-]?\d{1,10}$")


#: TAP job defaults of CASDA's configuration (seconds).
TAP_EXECUTION_DURATION = 360_000
TAP_DESTRUCTION_SECONDS = 43_200
#: vo_tools runs at most this many async TAP queries at once (``tap.maxRunningJobs``).
TAP_MAX_RUNNING = 4

TAP_ACTIVE_PHASES = frozenset({"PENDING", "QUEUED", "EXECUTING"})


class TapJobFailed(Exception):
    """Raised by a TAP job's work function: the job ends in ERROR with this message."""


@dataclass
class TapJob:
    """One TAP async job (UWS).  ``parameters`` keys are lower-case, values the first given.

    ``user`` is the `~backend.User` the proxy authenticated (None when anonymous).
    """

    job_id: str
    parameters: dict
    user: object
    via_proxy: bool
    created: _dt.datetime
    destruction: _dt.datetime
    phase: str = "PENDING"
    start_time: _dt.datetime | None = None
    end_time: _dt.datetime | None = None
    execution_duration: int = TAP_EXECUTION_DURATION
    error: str | None = None
    result_path: Path | None = None
    result_type: str | None = None
    changed: threading.Condition = field(default_factory=threading.Condition, repr=False, compare=False)

    def set_phase(self, phase, **updates):
        with self.changed:
            for name, value in updates.items():
                setattr(self, name, value)
            self.phase = phase
            self.changed.notify_all()

    def wait_for_change(self, phase, timeout, clock):
        """Block up to ``timeout`` seconds of ``clock`` while the job is still in ``phase``
        (UWS 1.1 WAIT)."""
        deadline = clock.time() + timeout
        with self.changed:
            while self.phase == phase and (remaining := deadline - clock.time()) > 0:
                clock.wait(self.changed, remaining)


def set_execution_duration(job, value):
    """POST ``executionduration``: whole seconds; anything else is ignored."""
    if value.strip().lstrip("-").isdigit():
        job.execution_duration = int(value)


def set_destruction(job, value):
    """POST ``destruction``: an ISO 8601 time (UTC when it has no zone); anything else is ignored."""
    try:
        moment = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return
    job.destruction = moment if moment.tzinfo else moment.replace(tzinfo=_dt.timezone.utc)


class TapJobStore(JobStore):
    """TAP async jobs and the threads running them; results are files under ``root``."""

    def __init__(self, root, clock=None):
        super().__init__(root, clock)
        self._running = threading.BoundedSemaphore(TAP_MAX_RUNNING)

    def create(self, parameters, user, via_proxy):
        now = self.clock.now()
        return self.add(TapJob(str(uuid.uuid4()), dict(parameters), user, via_proxy, created=now,
                               destruction=now + _dt.timedelta(seconds=TAP_DESTRUCTION_SECONDS)))

    def delete(self, job_id):
        """Forget a job and its result; False if unknown."""
        job = self.pop(job_id)
        if job is None:
            return False
        if job.phase in TAP_ACTIVE_PHASES:
            job.set_phase("ABORTED", end_time=self.clock.now())
        if job.result_path is not None:
            job.result_path.unlink(missing_ok=True)
        return True

    def run(self, job, work):
        """PHASE=RUN: QUEUED now, then EXECUTING and ``work(job)`` in a thread.

        ``work`` returns ``(result_path, content_type)`` or raises `TapJobFailed`.
        Returns False when the job was not PENDING (nothing happens then).
        """
        with job.changed:
            if job.phase != "PENDING":
                return False
            job.phase = "QUEUED"
            job.changed.notify_all()
        threading.Thread(target=self._execute, args=(job, work), name=f"tap-{job.job_id[:8]}",
                         daemon=True).start()
        return True

    def abort(self, job):
        with job.changed:
            if job.phase in TAP_ACTIVE_PHASES:
                job.phase, job.end_time = "ABORTED", self.clock.now()
                job.changed.notify_all()

    retire = abort

    def _execute(self, job, work):
        now = self.clock.now
        with self._running:
            if job.phase != "QUEUED":
                return  # aborted while queued
            job.set_phase("EXECUTING", start_time=now())
            try:
                path, content_type = work(job)
            except TapJobFailed as exc:
                job.set_phase("ERROR", error=str(exc), end_time=now())
                return
            except Exception as exc:  # noqa: BLE001 - any failure is the job's error, as at CASDA
                job.set_phase("ERROR", error=f"Unexpected exception: {exc}", end_time=now())
                return
            if job.phase == "ABORTED":
                Path(path).unlink(missing_ok=True)
                return
            job.set_phase("COMPLETED", result_path=Path(path), result_type=content_type, end_time=now())

    def result_file(self, job_id, suffix):
        """Where a job's result goes."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f"{job_id}{suffix}"


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


def user_scope(user):
    """(projects, admin) of a user (None: anonymous) for the embargo rules of the TAP database."""
    if user is None:
        return frozenset(), False
    return frozenset(user.projects), bool(user.admin)


def run_query(database, params, user):
    """Validate and run a TAP query for ``user``; returns (OutputFormat, QueryResult).

    The result's rows stream from the database as they are read.

    Raises
    ------
    TapJobFailed
        With the text CASDA puts in ``QUERY_STATUS=ERROR``.
    """
    fmt, maxrec = validate_tap(params)
    projects, admin = user_scope(user)
    try:
        result = database.execute(params["query"], maxrec=maxrec, projects=projects, admin=admin, stream=True)
    except AdqlError as exc:
        raise TapJobFailed(exc.message) from exc
    return fmt, result
