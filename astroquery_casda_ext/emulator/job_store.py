"""The one job store of the emulator: jobs by id, their directory, and the clock they run by.

TAP async jobs (``tap_state.TapJobStore``) and SODA data access jobs
(``soda_state.DataAccessJobStore``) keep their jobs here and add their service's verbs;
neither knows HTTP or XML.
"""
import shutil
import threading
from pathlib import Path

from .clock import Clock

__all__ = ["JobStore"]


class JobStore:
    """Jobs of one service, by id, with a directory for their files.

    Parameters
    ----------
    root : path-like
        Where the jobs' files go (created on first use, removed by `clear`).
    clock : clock.Clock, optional
        What the jobs' times are read from (default: real time).

    Attributes
    ----------
    clock : clock.Clock
    """

    def __init__(self, root, clock=None):
        self._root = Path(root)
        self._jobs = {}
        self._lock = threading.Lock()
        self.clock = clock or Clock()

    @property
    def root(self):
        """The directory holding the jobs' files."""
        return self._root

    def add(self, job):
        """Keep ``job`` (it has a ``job_id``); returns it."""
        with self._lock:
            self._jobs[job.job_id] = job
        return job

    def get(self, job_id):
        """The job, or None."""
        with self._lock:
            return self._jobs.get(job_id)

    def pop(self, job_id):
        """Forget the job and return it (None if unknown)."""
        with self._lock:
            return self._jobs.pop(job_id, None)

    def clear(self):
        """Forget every job, `retire` each, and remove the jobs' directory (emulator reset)."""
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            self.retire(job)
        shutil.rmtree(self._root, ignore_errors=True)

    def retire(self, job):
        """What a service does to a job that is being forgotten (stop its work)."""
