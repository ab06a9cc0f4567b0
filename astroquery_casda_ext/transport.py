"""The one retry layer: every API request CASDA gets (queries, DataLink, SODA job documents,
the login check) is retried here, and nowhere above.

`ApiRetryAdapter`, mounted on the façade's session, sends a request again when the failure
is transient, under one `RetryPolicy` and one total-time budget per call
(``conf.request_budget``), so a failure reaches the user in seconds, not minutes.  Callers
(pyvo, DataLink, SODA jobs, astroquery's ``_request``) never loop; the two places that must
send a request again after its answer has started to arrive (a streamed TAP result that
breaks off, a download resumed with ``Range``) ask a `RetryState` of the same policy, and
a streamed query shares the adapter's state through `one_call`, so its retries and time
are counted once.

Which failures are retried depends on the failure and on whether sending the request
twice is harmless:

=========================================  ===========================  ======================
failure                                    GET, HEAD, DELETE; POSTs     other POSTs (create a
                                           that only read (TAP          job, RUN, ABORT)
                                           ``sync``, SIA2, SODA sync)
=========================================  ===========================  ======================
HTTP 429 (``Retry-After`` honoured), 503   retried                      retried
(the server did not act)
HTTP 502, 504 (a gateway's trouble)        retried                      returned as is
other HTTP errors (400, 401, 404, 500...)  returned as is               returned as is
connect timeout                            retried                      retried
connection refused                         retried for ``refused_       same
                                           budget`` seconds only
reset, read timeout, body cut short        retried                      raised
TLS certificate refused, host name not     raised at once               raised at once
found, bad URL
=========================================  ===========================  ======================

Streamed downloads pass through untouched.  When the retries or the budget are spent the
last response is returned, or the last exception raised, exactly as without this adapter,
and the caller turns it into the package's public exception with the server's message.

urllib3's `~urllib3.util.Retry` is not used for the loop itself: it has no total-time
budget, no injectable clock, cannot re-read a body cut short, and counts a refused
connection, an unknown host name and a connect timeout as the same "connect" error.
"""
import contextlib
import contextvars
import email.utils
import logging
import random
import re
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NameResolutionError, NewConnectionError

from . import conf
from .errors import redact_url
from .errors import package_logger

__all__ = ["RetryPolicy", "RetryState", "parse_retry_after", "ApiRetryAdapter", "mount_api_retries",
           "describe_failure", "one_call", "gave_up", "TRANSIENT_STATUSES"]

log = package_logger(__name__)

# --- retry policy -------------------------------------------------------------------------------

#: HTTP statuses worth sending an API request again for: rate limiting (429) and a busy
#: server or gateway (502, 503, 504).  A 500 is CASDA's own error: sent again it fails again.
TRANSIENT_STATUSES = (429, 502, 503, 504)

def parse_retry_after(value, *, now=None):
    """Seconds to wait according to a ``Retry-After`` header value.

    Parameters
    ----------
    value : str or None
        Either delay-seconds (``"120"``) or an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``).
    now : datetime, optional
        The current time (for tests); defaults to now, UTC.

    Returns
    -------
    float or None
        The delay (0 for a date in the past), or None when the value is missing or unparsable.
    """
    if value is None:
        return None
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and after how long, a failed transfer is tried again.

    Modelled on `urllib3.util.Retry`: the delay is a pure function of the retry number
    (`delay`), the sleeping is done by the caller, and the object is immutable so one
    policy is safely shared by all worker threads.

    Connection errors, timeouts, a body cut short, and responses whose status is in
    ``status_forcelist`` are retried. Other HTTP errors (403, 404, 410...) are not.
    """

    #: Retries per file after its first attempt; 0 means a single attempt, never retried.
    total: int = 5
    #: The n-th retry waits ``backoff_factor * 2 ** (n - 1)`` seconds (0 means no wait).
    backoff_factor: float = 0.5
    #: Longest backoff in seconds, whatever the retry number.
    backoff_max: float = 30.0
    #: Random spread of a backoff: it is multiplied by a factor drawn uniformly from
    #: ``[1 - jitter, 1 + jitter]``, so parallel workers do not retry in lock step. 0 = none.
    jitter: float = 0.25
    #: Longest wait in seconds a server's ``Retry-After`` is honoured with.
    retry_after_max: float = 120.0
    #: HTTP statuses that are retried (rate limiting and transient server trouble).
    status_forcelist: tuple = (429, 500, 502, 503, 504)
    #: Longest time in seconds one call may spend, waits included, before its failure is
    #: raised; None means no limit beyond ``total``.  A wait that would end past it is not
    #: started.
    budget: float = None
    #: Seconds (since the call began) within which a refused connection is tried again: a
    #: service restarting comes back within them, a wrong or closed port never does.
    refused_budget: float = 2.0

    def __post_init__(self):
        if self.total < 0 or self.backoff_factor < 0 or self.backoff_max < 0 or self.retry_after_max < 0:
            raise ValueError(f"RetryPolicy values must not be negative: {self!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RetryPolicy jitter must be within [0, 1], not {self.jitter}")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"RetryPolicy budget must not be negative: {self!r}")
        if self.refused_budget < 0:
            raise ValueError(f"RetryPolicy refused_budget must not be negative: {self!r}")

    @classmethod
    def from_conf(cls):
        """The default policy with ``conf.download_retries`` retries (read now)."""
        return cls(total=int(conf.download_retries))

    @classmethod
    def for_api(cls):
        """The API requests' policy: ``conf.request_retries`` retries of `TRANSIENT_STATUSES`
        and transient connection failures, within ``conf.request_budget`` seconds (read now)."""
        budget = float(conf.request_budget)
        return cls(total=int(conf.request_retries), status_forcelist=TRANSIENT_STATUSES,
                   budget=budget if budget > 0 else None)

    def is_retryable_status(self, status):
        """Whether an HTTP status is worth another try."""
        return status in self.status_forcelist

    def delay(self, attempt, retry_after=None, *, rand=random.random):
        """Seconds to wait before retry number ``attempt`` (1 for the first retry).

        A server's ``retry_after`` (seconds, see `parse_retry_after`) wins over the backoff,
        capped at ``retry_after_max``. ``rand`` returns a float in [0, 1) (for tests).
        """
        if retry_after is not None:
            return min(max(float(retry_after), 0.0), self.retry_after_max)
        backoff = min(self.backoff_max, self.backoff_factor * 2 ** max(attempt - 1, 0))
        spread = 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return min(self.backoff_max, backoff * spread)


    def start(self, *, sleep=time.sleep, clock=time.monotonic, rand=random.random):
        """Begin one call: a `RetryState` that counts its retries and time against this policy.

        For loops that cannot live in the transport adapter (a download resumed with
        ``Range`` after its body broke off): they ask the state whether to try again,
        so every retry in the package obeys one policy and one budget.
        """
        return RetryState(self, sleep=sleep, clock=clock, rand=rand)


class RetryState:
    """The retries one call has used, under a `RetryPolicy`.

    Parameters
    ----------
    policy : `RetryPolicy`
    sleep, clock, rand : callable
        Injected for tests (``time.sleep``, ``time.monotonic``, ``random.random``).
    """

    def __init__(self, policy, *, sleep=time.sleep, clock=time.monotonic, rand=random.random):
        self.policy = policy
        self.retries = 0
        self._sleep, self._clock, self._rand = sleep, clock, rand
        self._started = clock()

    @property
    def elapsed(self):
        """Seconds since the call began."""
        return self._clock() - self._started

    def next_delay(self, retry_after=None, *, within=None):
        """The wait before the next retry, or None when the retries or the budget are spent.

        ``within`` (seconds since the call began) tightens the policy's budget for this
        retry, e.g. ``policy.refused_budget`` for a refused connection.
        """
        if self.retries >= self.policy.total:
            return None
        delay = self.policy.delay(self.retries + 1, retry_after, rand=self._rand)
        limits = [limit for limit in (self.policy.budget, within) if limit is not None]
        if limits and self.elapsed + delay > min(limits):
            return None
        return delay

    def wait(self, retry_after=None, *, within=None):
        """Sleep before the next retry and count it; False (no sleep) when none is left."""
        delay = self.next_delay(retry_after, within=within)
        if delay is None:
            return False
        self.retries += 1
        self._sleep(delay)
        return True

    def __repr__(self):
        return f"<RetryState retries={self.retries}/{self.policy.total} elapsed={self.elapsed:.1f}s>"


_CALL = contextvars.ContextVar("astroquery_casda_ext_retry_call", default=None)


class _Call:
    """The `RetryState` shared by every request sent inside one `one_call` block."""

    def __init__(self):
        self.state = None

    def retry(self, retry_after=None):
        """Wait before sending the call again; False when its retries or budget are spent."""
        return self.state is not None and self.state.wait(retry_after)


@contextlib.contextmanager
def one_call():
    """Count every request sent inside the block as one call: one `RetryState`, one budget.

    For the few callers that must send a request again after its answer began to arrive
    (a streamed TAP result that broke off): ``with one_call() as call: ... if call.retry():``
    so that the adapter's retries and theirs share one count and one time budget.
    """
    call = _Call()
    token = _CALL.set(call)
    try:
        yield call
    finally:
        _CALL.reset(token)


#: Methods that may be sent twice (RFC 9110 idempotent methods).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT", "TRACE"})

#: POSTs that only read: TAP and SODA synchronous queries, SIA2.
_READING_POST = re.compile(r"/(?:sync|sia2/query)/?$")

#: Statuses by which a server says it did not act on the request (safe to send again).
_NOT_ACTED_ON = frozenset({429, 503})

#: Connections kept per host: above the downloader's default workers, so that
#: ``download._mount_pool`` keeps this adapter instead of replacing it.
POOL_SIZE = 32


def _reads_only(request):
    if request.method in _IDEMPOTENT:
        return True
    path = urlsplit(request.url).path
    return request.method == "POST" and bool(_READING_POST.search(path))


def _streamed_query(request):
    """A synchronous query whose answer is parsed as it streams in (pyvo's TAP ``sync``).

    It is retried here until its headers arrive; a body that breaks off later is sent for
    again by its caller (`~astroquery_casda_ext.discovery.Discovery`), inside `one_call`.
    """
    return request.method == "POST" and bool(_READING_POST.search(urlsplit(request.url).path))


def _reason(exc):
    return exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else None


def _never_sent(exc):
    """True when the request cannot have reached the server (no connection was made)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    return isinstance(_reason(exc), (NewConnectionError, ConnectTimeoutError))


def _certificate_refused(exc):
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.exceptions.SSLError) and \
        any(isinstance(arg, ssl.SSLCertVerificationError) for arg in getattr(reason, "args", ()))


def _host_unknown(exc):
    text = str(exc).lower()
    return isinstance(_reason(exc), NameResolutionError) or "failed to resolve" in text \
        or "name or service not known" in text


def _refused(exc):
    return isinstance(exc, requests.exceptions.ConnectionError) and "refused" in str(exc).lower()


_FAILURES = (   # (words in requests' message, what to tell the user)
    ("read timed out", "read timed out"),
    ("connect timed out", "connection timed out"),
    ("reset by peer", "connection reset by the server"),
    ("incompleteread", "connection closed before the answer was complete"),
    ("connection broken", "connection broken"),
    ("connection refused", "connection refused"),
    ("failed to resolve", "host name not found"),
    ("name or service not known", "host name not found"),
)


def describe_failure(exc):
    """Why a request got no usable answer, in words, for error messages.

    E.g. ``"read timed out (ConnectionError)"``.  Never the request's URL, whose query
    string may hold tokens or signatures.
    """
    if _certificate_refused(exc):
        return f"the server's TLS certificate was refused ({type(exc).__name__})"
    text = str(exc).lower()
    words = next((said for found, said in _FAILURES if found in text), None)
    if words is None and isinstance(exc, requests.exceptions.Timeout):
        words = "timed out"
    return f"{words} ({type(exc).__name__})" if words else type(exc).__name__


def _worth_resending(exc, reads_only):
    if isinstance(exc, (requests.exceptions.SSLError, requests.exceptions.InvalidURL,
                        requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema)) \
            or _host_unknown(exc):
        return False   # a refused certificate, an unknown host or a bad URL fails the same way every time
    if not isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            requests.exceptions.ChunkedEncodingError)):
        return False
    return reads_only or _never_sent(exc)


class ApiRetryAdapter(HTTPAdapter):
    """An `~requests.adapters.HTTPAdapter` that sends API requests again when CASDA is busy.

    See the module docstring for what is retried.  Each request is one call with its own
    `RetryState` (retries and time budget), unless it is sent inside `one_call`.

    Parameters
    ----------
    policy : `RetryPolicy`, optional
        Retries, delays and budget; by default `RetryPolicy.for_api` (``conf.request_retries``,
        ``conf.request_budget``), read at each request (so ``conf.set_temp`` works).
    sleep, clock, rand : callable, optional
        ``time.sleep``, ``time.monotonic``, ``random.random``; replaceable in tests, which
        then wait for no backoff.
    **kwargs
        Passed to `~requests.adapters.HTTPAdapter` (``pool_maxsize`` defaults to `POOL_SIZE`).
    """

    def __init__(self, policy=None, *, sleep=time.sleep, clock=time.monotonic, rand=random.random, **kwargs):
        kwargs.setdefault("pool_maxsize", POOL_SIZE)
        super().__init__(**kwargs)
        self.policy = policy
        self._sleep, self._clock, self._rand = sleep, clock, rand

    def __getstate__(self):
        state = super().__getstate__()
        state.update(policy=self.policy, _sleep=self._sleep, _clock=self._clock, _rand=self._rand)
        return state

    def _state(self):
        call = _CALL.get()
        if call is not None and call.state is not None:
            return call.state
        policy = self.policy if self.policy is not None else RetryPolicy.for_api()
        state = policy.start(sleep=self._sleep, clock=self._clock, rand=self._rand)
        if call is not None:
            call.state = state
        return state

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        if stream and not _streamed_query(request):
            # a download: the downloader resumes it with Range under its own RetryState
            return super().send(request, stream, timeout, verify, cert, proxies)
        state = self._state()
        reads_only = _reads_only(request)
        while True:
            try:
                response = super().send(request, stream, timeout, verify, cert, proxies)
                if not stream:
                    response.content   # read here, so that a body cut short can be asked for again
            except requests.RequestException as exc:
                if not _worth_resending(exc, reads_only) or \
                        not state.wait(within=state.policy.refused_budget if _refused(exc) else None):
                    exc.casda_retries_spent = True   # see gave_up(): no caller sends it again
                    raise
                why = describe_failure(exc)
            else:
                status = response.status_code
                if status not in state.policy.status_forcelist or not (reads_only or status in _NOT_ACTED_ON):
                    return response
                if not state.wait(parse_retry_after(response.headers.get("Retry-After"))):
                    return response
                why = f"HTTP {status}"
                response.close()
            log.info("%s %s: %s; sent again (retry %d of at most %d, %.1f s into the call)", request.method,
                     redact_url(request.url), why, state.retries, state.policy.total, state.elapsed)


def gave_up(exc):
    """True when ``exc`` (or its cause) was raised by `ApiRetryAdapter` after deciding not to
    retry: a caller that sends again after a broken-off body must not retry it a second time."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if getattr(exc, "casda_retries_spent", False):
            return True
        seen.add(id(exc))
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return False


def mount_api_retries(session, policy=None, **kwargs):
    """Mount an `ApiRetryAdapter` on ``session`` for ``http://`` and ``https://``; returns it.

    ``kwargs`` (``sleep``, ``clock``, ``rand``) go to the adapter.
    """
    adapter = ApiRetryAdapter(policy, **kwargs)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return adapter


class RedactQueryStrings(logging.Filter):
    """Cut query strings out of urllib3's DEBUG request lines.

    urllib3 logs every request line with its query string, and CASDA's query strings can be
    credentials: an S3 presigned URL's ``X-Amz-Signature``, a SODA ``id=`` token.
    """

    def filter(self, record):
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_without_query(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def _without_query(text):
    path, separator, _ = text.partition("?")
    return path + "?..." if separator else text


def install_log_redaction():
    """Attach `RedactQueryStrings` to urllib3's connection-pool logger (once)."""
    logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, RedactQueryStrings) for f in logger.filters):
        logger.addFilter(RedactQueryStrings())
