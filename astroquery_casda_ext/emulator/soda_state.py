"""State of the emulated SODA service (``casda_data_access``): data access jobs and staging.

No HTTP and no XML here.  A `DataAccessJob` (CASDA's own name for it; the client's UWS
handle is ``jobs.DataAccessJob``) is created PENDING from DataLink tokens, takes parameters
while PENDING, and on ``PHASE=RUN`` walks the phases of ``EmulatorOptions.job_phases`` (by
elapsed time or one per poll) while a worker thread stages the files for real: whole
products are hard-linked into the job directory, cutouts and spectra come from
`cutouts.process_job`.  The job reaches COMPLETED only once both the phase plan and the
work are done.  `DataAccessJobStore` holds every job, the worker threads and the key that
signs S3-style download URLs.  Documents are in ``soda_render.py``, handlers and the URL
table in ``soda_routes.py``.
"""
import hashlib
import hmac
import os
import random
import shutil
import threading
import uuid
from dataclasses import dataclass

from .cutouts import NothingMatched, process_job, validate_soda_params
from .job_store import JobStore

__all__ = ["DataAccessJob", "DataAccessJobStore", "JobResult", "SodaError", "ACTIVE_PHASES", "FINAL_PHASES",
           "ABORTABLE_PHASES", "stage_whole_files", "sign", "s3_path"]

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

#: Longest a poll waits for real work once the phase plan is used up.
PROCESSING_WAIT_SECONDS = 60.0

#: Where S3-style presigned download URLs point (``/download/s3/<bucket>/...``).
S3_BUCKET = "casda-cache"


class SodaError(Exception):
    """A request refused with an HTTP status (rendered per the caller's ``Accept``)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class JobResult:
    """One ``<uws:result>``: its id and the file it names in the job directory."""

    result_id: str
    file_name: str


class DataAccessJob:
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

    def wait_for_change(self, phase, deadline, clock):
        """Block until the phase differs from ``phase`` or ``clock`` reaches ``deadline``
        (UWS 1.1 WAIT).  Timed phases change without a notification, so look every 50 ms."""
        with self.lock:
            while True:
                now = clock.time()
                if self.observe(now) != phase or now >= deadline:
                    return self.phase
                clock.wait(self.lock, min(0.05, deadline - now))

    def files(self):
        """File names of the published results (only once COMPLETED)."""
        with self.lock:
            return {result.file_name for result in self.results}


class DataAccessJobStore(JobStore):
    """Every SODA job of one emulator, the worker threads, and the download signing key.

    Parameters
    ----------
    backend : EmulatorBackend
        Supplies ``holdings`` (products and ``data_dir``) and ``tokens`` (`TokenStore`).
    root : path-like
        The cache directory: one sub-directory per job.
    clock : clock.Clock, optional
    """

    def __init__(self, backend, root, clock=None):
        super().__init__(root, clock)
        self.backend = backend
        self._next_number = 1
        self.secret = os.urandom(32)

    # ----- bookkeeping
    def job_dir(self, job_id):
        return self.root / job_id

    def retire(self, job):
        job.expire(self.clock.time())     # a worker still running then cleans up after itself

    def create(self, params, owner, now):
        return self.add(DataAccessJob(str(uuid.uuid4()), owner, params, now))

    def find(self, job_id):
        """The job, expired or not, or None."""
        return self.get(job_id)

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
        return job.release(self.clock.time())

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
        job.complete_work(results, error, self.clock.time())
        if job.cancelled and job.is_expired(self.clock.time()):
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


def sign(secret, path, query):
    """HMAC-SHA256 over the path and the exact query string (as sent, still encoded)."""
    return hmac.new(secret, f"{path}\n{query}".encode(), hashlib.sha256).hexdigest()


def s3_path(job_id, file_name):
    return f"/download/s3/{S3_BUCKET}/{job_id}/{file_name}"
