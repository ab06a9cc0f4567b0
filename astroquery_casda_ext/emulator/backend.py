"""All state of one emulated CASDA, and the verbs that change it: no HTTP, no XML.

`EmulatorBackend` owns the synthetic holdings, the TAP database built from them, the
OPAL users, DataLink tokens, SODA jobs (``soda_state.DataAccessJobStore``), TAP async jobs
(``tap_state.TapJobStore``), the injected faults (`FaultList`), the log of served requests
(`RequestLog`) and the clock every service reads (``clock.Clock``, replaceable by a
``clock.ManualClock``).  ``reset()`` puts it back the way it started, for the next test.
"""
import bisect
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import schema
from .adql import TapDatabase
from .catalogue import bulk_catalogue_table
from .clock import Clock
from .datalink_state import TokenStore
from .holdings import build_holdings
from .options import EmulatorOptions, FaultRule
from .soda_state import DataAccessJobStore
from .tap_state import TapJobStore

__all__ = ["User", "LoggedRequest", "RequestLog", "FaultList", "EmulatorBackend", "BUILTIN_USERNAME",
           "BUILTIN_PASSWORD", "BUILTIN_USER_ID"]

#: The built-in OPAL account (a local test account; the password is not a secret).
BUILTIN_USERNAME = "casda-user"
BUILTIN_PASSWORD = "emulator-opal-password"
#: CASDA's recorded no-access DataLink row shows user id 3242.
BUILTIN_USER_ID = "3242"


@dataclass(frozen=True)
class User:
    """An OPAL account as the services see it after the proxy authenticated it.

    Attributes
    ----------
    user_id : str
        OPAL user id (CASDA writes it into the ID column of a no-access DataLink row).
    username : str
    projects : frozenset of str
        OPAL project codes the user belongs to (see embargoed data of those projects).
    admin : bool
        CASDA administrator: sees everything.
    """

    user_id: str
    username: str
    projects: frozenset = frozenset()
    admin: bool = False


@dataclass(frozen=True)
class LoggedRequest:
    """One served request.  Credentials are never recorded; token-like values are redacted.

    Attributes
    ----------
    method, path : str
    query : dict
        Query-string parameters: name -> value, or a list of values when repeated.
    user : str or None
        Username authenticated by the proxy, None for anonymous requests.
    status : int
        HTTP status sent (0 if the connection broke before any).
    bytes_sent : int
        Body bytes actually written to the socket.
    """

    method: str
    path: str
    query: dict
    user: str | None
    status: int
    bytes_sent: int


class RequestLog:
    """Thread-safe list of `LoggedRequest` in the order the requests arrived, plus a count of
    requests still being served.

    An entry is written once its response is sent, which on a busy machine can come after a
    later request's (the client already had the last byte and sent the next one); the order
    is the order of arrival all the same, so a test can read the client's sequence of calls.
    """

    def __init__(self):
        self._entries = []          # (arrival number, entry), kept in arrival order
        self._arrivals = 0
        self._in_flight = 0
        self._changed = threading.Condition()

    def begin(self):
        """Count a request that has just arrived; its arrival number, for `finish`."""
        with self._changed:
            self._in_flight += 1
            self._arrivals += 1
            return self._arrivals

    def finish(self, entry, arrival):
        """Log ``entry``, the request that `begin` numbered ``arrival``."""
        with self._changed:
            bisect.insort(self._entries, (arrival, entry), key=lambda item: item[0])
            self._in_flight -= 1
            self._changed.notify_all()

    def abandon(self):
        """A request that ends without a log entry (it failed before a response existed)."""
        with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    @property
    def in_flight(self):
        """How many requests are being answered right now."""
        with self._changed:
            return self._in_flight

    def snapshot(self, settle=1.0):
        """The entries so far, after waiting up to ``settle`` seconds for requests in flight.

        A client has the last byte of a response slightly before the server thread records
        it; waiting here keeps tests that read the log right after a request exact.
        """
        deadline = time.monotonic() + settle
        with self._changed:
            while self._in_flight > 0 and (remaining := deadline - time.monotonic()) > 0:
                self._changed.wait(remaining)
            return [entry for _, entry in self._entries]

    def clear(self, settle=1.0):
        """Forget every entry, after letting requests in flight (up to ``settle`` s) finish."""
        deadline = time.monotonic() + settle
        with self._changed:
            while self._in_flight > 0 and (remaining := deadline - time.monotonic()) > 0:
                self._changed.wait(remaining)
            self._entries.clear()


class FaultList:
    """The injected `FaultRule` objects, consumed thread-safely as requests arrive."""

    def __init__(self):
        self._rules = []
        self._remaining = {}
        self._lock = threading.Lock()

    def add(self, rule):
        with self._lock:
            self._rules.append(rule)
            self._remaining[id(rule)] = rule.times

    def clear(self):
        with self._lock:
            self._rules.clear()
            self._remaining.clear()

    def take(self, method, path):
        """The rules that apply to this request, in the order added; uses up their ``times``."""
        taken = []
        with self._lock:
            for rule in list(self._rules):
                if not rule.matches(method, path):
                    continue
                taken.append(rule)
                left = self._remaining[id(rule)]
                if left is not None:
                    left -= 1
                    self._remaining[id(rule)] = left
                    if left <= 0:
                        self._rules.remove(rule)
                        del self._remaining[id(rule)]
        return taken

    @property
    def rules(self):
        with self._lock:
            return list(self._rules)


# --------------------------------------------------------------------------------------
# TAP async jobs
# --------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------


def _password_digest(password):
    return hashlib.sha256(password.encode("utf-8")).digest()


class EmulatorBackend:
    """The state of one emulated CASDA.

    Parameters
    ----------
    options : EmulatorOptions
        Options at construction; ``reset()`` returns to them.
    data_dir : path-like
        Where holdings, staged SODA files and TAP results live.

    Attributes
    ----------
    options : EmulatorOptions
        Current options (replaced whole by `set_options`, so readers see a consistent set).
    holdings : Holdings
    database : TapDatabase
    tokens : datalink_state.TokenStore
    soda_jobs : soda_state.DataAccessJobStore
    tap_jobs : tap_state.TapJobStore
    clock : clock.Clock
        The time of every service (`set_clock`).
    faults : FaultList
    request_log : RequestLog
    up_since : datetime.datetime
    """

    def __init__(self, options=None, data_dir="."):
        self.initial_options = options or EmulatorOptions()
        self.options = self.initial_options
        self.data_dir = Path(data_dir)
        self.holdings = build_holdings(self.data_dir / "holdings", self.options.holdings)
        self.database = TapDatabase(self._tables())
        self.clock = Clock()
        self.tokens = TokenStore()
        self.soda_jobs = DataAccessJobStore(self, self.data_dir / "soda-jobs")
        self.tap_jobs = TapJobStore(self.data_dir / "tap-results")
        self.faults = FaultList()
        self.request_log = RequestLog()
        self.up_since = self.clock.now()
        self._users = {}
        self._builtin = User(BUILTIN_USER_ID, BUILTIN_USERNAME, frozenset(self.holdings.member_projects))
        self._add_account(self._builtin, BUILTIN_PASSWORD)
        self._next_user_id = int(BUILTIN_USER_ID) + 1
        self._users_lock = threading.Lock()

    def _tables(self):
        holdings = self.holdings
        tables = [schema.obscore_table(holdings.obscore_rows()),
                  schema.continuum_component_table(holdings.components),
                  schema.observation_table(holdings.observations)]
        if self.options.catalogue_rows:
            tables.append(bulk_catalogue_table(self.data_dir, self.options.catalogue_rows))
        return tables

    # ----- users
    def _add_account(self, user, password):
        self._users[user.username] = (_password_digest(password), user)

    @property
    def builtin_user(self):
        """The built-in account (member of every project of the holdings' member set)."""
        return self._builtin

    def add_user(self, username, password, projects=(), *, admin=False):
        """Add (or replace) an OPAL account; returns its `User`.  Removed again by `reset`."""
        if username == BUILTIN_USERNAME:
            raise ValueError(f"{username!r} is the built-in account")
        with self._users_lock:
            user = User(str(self._next_user_id), username, frozenset(projects), admin)
            self._next_user_id += 1
            self._add_account(user, password)
        return user

    def authenticate(self, username, password):
        """The `User` for these credentials, or None (constant-time password check)."""
        entry = self._users.get(username)
        if entry is None:
            hmac.compare_digest(_password_digest(password), _password_digest(""))
            return None
        digest, user = entry
        return user if hmac.compare_digest(digest, _password_digest(password)) else None

    # ----- options, jobs, faults
    def set_options(self, **changes):
        """Replace some options (``holdings`` changes only take effect on a new emulator)."""
        self.options = self.options.replace(**changes)
        return self.options

    def add_fault(self, rule):
        if not isinstance(rule, FaultRule):
            raise TypeError(f"expected a FaultRule, got {type(rule).__name__}")
        self.faults.add(rule)

    def release_job(self, job_id):
        """Let a HELD SODA job continue (``EmulatorOptions.hold_jobs``)."""
        return self.soda_jobs.release_job(job_id)

    def set_clock(self, clock):
        """Make ``clock`` the time of every service (jobs, expiry, WAIT, signed URLs)."""
        self.clock = self.soda_jobs.clock = self.tap_jobs.clock = clock

    def reset(self):
        """Back to the state after construction: options, users, faults, log, jobs, tokens, clock."""
        self.options = self.initial_options
        with self._users_lock:
            self._users = {BUILTIN_USERNAME: self._users[BUILTIN_USERNAME]}
        self.faults.clear()
        self.soda_jobs.clear()
        self.tap_jobs.clear()
        self.tokens.clear()
        self.request_log.clear()
        self.set_clock(Clock())

    def table(self, full_name):
        """The TableDef called ``full_name`` (``schema.table``, case-insensitive), or None."""
        wanted = full_name.lower()
        for table in self.database.tables:
            if table.full_name.lower() == wanted:
                return table
        return None
