"""The one retry layer: every API request CASDA gets (queries, DataLink, SODA job documents,
the login check) is retried here, and nowhere above.

`ApiRetryAdapter`, mounted on the façade's session, sends a request again when the failure
is transient, under one `RetryPolicy` and one total-time budget per call
(``conf.request_budget``), so a failure reaches the user in seconds, not minutes.  Callers
(the document reader, DataLink, jobs, astroquery's ``_request``) never loop: a body read
whole is read inside the adapter's loop (`read_body`), so one cut short is asked for again
here too.  The one place that must send a request again after its answer has started to
be written (a download resumed with ``Range``) asks a `RetryState` of the same policy; a
TAP result streamed to a file that breaks off is an error (nothing kept: run it again).

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

This module also owns the two other guarantees every request shares:

* **bounded bodies**: `Pacing`, the one rule for how long a body may take (a total
  deadline, or a minimum average rate after a grace; downloads and TAP streams use the
  rate, documents the deadline), and `read_body`, which reads a body within a byte bound
  counted on the *decoded* bytes (gzip and deflate are decoded here, ``max_length`` at a
  time, so a small body that inflates to gigabytes stops at the bound).  Inside a
  `bounded` block the adapter reads every body this way, within its retry loop.
* **one failure mapper**: `failure` turns a requests/urllib3 failure, a body that broke a
  bound, or an HTTP error status into the package's public exception, naming the URL
  (redacted) and the server's own message.  Nothing else in the package catches
  ``requests.RequestException`` to build an error.
"""
import contextlib
import contextvars
import email.utils
import logging
import random
import re
import ssl
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
import urllib3
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NameResolutionError, NewConnectionError

from . import conf
from .errors import CasdaError, CasdaLoginError, DownloadError, JobError, ServiceError, redact_url
from .errors import package_logger

__all__ = ["RetryPolicy", "RetryState", "parse_retry_after", "ApiRetryAdapter", "mount_api_retries",
           "describe_failure", "TRANSIENT_STATUSES", "Pacing", "BodyBounds",
           "BodyLimitError", "bounded", "read_body", "failure", "failures_as", "server_message", "rate_text"]

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
    """A synchronous query whose answer is streamed to a file (``tap.TapClient.stream_to``).

    It is retried here until its headers arrive; a body that breaks off later is an error.
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
    `RetryState` (retries and time budget).

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
        policy = self.policy if self.policy is not None else RetryPolicy.for_api()
        return policy.start(sleep=self._sleep, clock=self._clock, rand=self._rand)

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        bounds = _BOUNDS.get()
        if stream and bounds is None and not _streamed_query(request):
            # a download: the downloader resumes it with Range under its own RetryState
            return super().send(request, stream, timeout, verify, cert, proxies)
        state = self._state()
        if bounds is None and not stream:
            # a body read whole (astroquery's _request, pyvo): the largest bounds, never none
            bounds = BodyBounds(int(conf.table_max_bytes), Pacing.for_streams(), self._clock(), self._clock)
        if bounds is not None and "Accept-Encoding" in request.headers:
            request.headers["Accept-Encoding"] = DOCUMENT_CODINGS   # the codings read_body decodes
        reads_only = _reads_only(request)
        while True:
            try:
                response = super().send(request, stream, timeout, verify, cert, proxies)
                if bounds is not None:
                    # read here, within the bounds, so that a body cut short can be asked for again
                    read_body(response, bounds, error_page=response.status_code >= 400)
            except requests.RequestException as exc:
                if not _worth_resending(exc, reads_only) or \
                        not state.wait(within=state.policy.refused_budget if _refused(exc) else None):
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


# --- bounded bodies -------------------------------------------------------------------------------

def rate_text(rate):
    """A rate in bytes per second, for messages: ``"512 B/s"``, ``"1.5 kB/s"``, ``"12.0 MB/s"``."""
    for unit in ("B/s", "kB/s", "MB/s"):
        if rate < 1000 or unit == "MB/s":
            return f"{rate:.0f} {unit}" if unit == "B/s" else f"{rate:.1f} {unit}"
        rate /= 1000.0


@dataclass(frozen=True)
class Pacing:
    """How long a body may take: the one pacing rule of every body the package reads.

    A body breaks the rule when it is still arriving ``deadline`` seconds after its call
    began, or when, after ``grace`` seconds, it has averaged less than ``min_rate`` bytes
    per second.  Documents (job, DataLink, metadata) are judged by the deadline
    (``conf.request_budget``); large bodies whose size is not known in advance (downloads,
    TAP streams and tables) by the rate (``conf.download_min_rate`` after
    ``conf.download_grace``), so a trickle ends and a large answer at a healthy rate does not.
    """

    #: Seconds from the call's start after which the body is given up (None: no deadline).
    deadline: float | None = None
    #: Slowest average bytes per second after ``grace`` seconds (0: no minimum).
    min_rate: float = 0.0
    #: Seconds before ``min_rate`` applies.
    grace: float = 0.0

    @classmethod
    def for_documents(cls):
        """A deadline of ``conf.request_budget`` seconds (read now; 0 means none)."""
        budget = float(conf.request_budget)
        return cls(deadline=budget if budget > 0 else None)

    @classmethod
    def for_streams(cls):
        """``conf.download_min_rate`` bytes per second after ``conf.download_grace`` seconds (read now)."""
        return cls(min_rate=float(conf.download_min_rate), grace=float(conf.download_grace))

    def breach(self, done, elapsed):
        """None while a body of ``done`` bytes after ``elapsed`` seconds keeps to the rule, else
        why it does not, in words for an error message."""
        if self.deadline is not None and elapsed > self.deadline:
            return f"{done:,} bytes after {elapsed:.1f} s, past the budget of {self.deadline:g} s"
        if self.min_rate and elapsed > self.grace + done / self.min_rate:
            return (f"{done} bytes in {elapsed:.0f} s ({rate_text(done / elapsed)}), below the minimum "
                    f"rate of {rate_text(self.min_rate)}")
        return None

    def time_left(self, done, elapsed):
        """Seconds the next read may wait before the rule is broken (None: no limit)."""
        limits = []
        if self.deadline is not None:
            limits.append(self.deadline - elapsed)
        if self.min_rate:
            limits.append(self.grace + done / self.min_rate - elapsed)
        return max(0.0, min(limits)) if limits else None


class BodyLimitError(Exception):
    """A body broke its byte bound or its `Pacing` (``why`` says how); `failure` maps it to
    the caller's public exception.  Never retried: the server would do it again."""

    def __init__(self, why):
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class BodyBounds:
    """The bounds of the bodies read inside one `bounded` block."""

    max_bytes: int
    pacing: Pacing
    started: float
    clock: object = time.monotonic
    #: The setting that gave ``max_bytes`` (named in the error).
    setting: str = "conf.table_max_bytes"

    def elapsed(self):
        return self.clock() - self.started


_BOUNDS = contextvars.ContextVar("astroquery_casda_ext_body_bounds", default=None)


@contextlib.contextmanager
def bounded(max_bytes, pacing=None, *, clock=time.monotonic, setting="conf.document_max_bytes"):
    """Read every body of the requests sent inside the block with `read_body`, within
    ``max_bytes`` decoded bytes and ``pacing`` (default `Pacing.for_documents`), counted
    from the start of the block (so retries share the time).  Yields the `BodyBounds`."""
    bounds = BodyBounds(int(max_bytes), pacing or Pacing.for_documents(), clock(), clock, setting)
    token = _BOUNDS.set(bounds)
    try:
        yield bounds
    finally:
        _BOUNDS.reset(token)


#: Content codings `read_body` decodes itself (what documents are asked for).
DOCUMENT_CODINGS = "gzip, deflate"
_DECODERS = {"gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), "x-gzip": lambda: zlib.decompressobj(
    16 + zlib.MAX_WBITS), "deflate": lambda: zlib.decompressobj()}
_READ_SIZE = 1 << 16
#: Most decoded bytes made from one step of decompression.
_DECODED_STEP = 1 << 20
#: The most of an error page that is read (an error message quotes its beginning only).
_ERROR_TEXT_BYTES = 64 << 10


def _socket_of(raw):
    connection = getattr(raw, "_connection", None)
    return getattr(connection, "sock", None)


def read_some(raw, pacing, done, elapsed, *, size=_READ_SIZE, decode_content=False):
    """The next bytes of a body that have arrived (b"" at its end), never waiting past ``pacing``.

    The socket's timeout is shortened to the time the rule leaves (``done`` bytes so far,
    ``elapsed()`` seconds since the call began), so neither a trickle nor a stall outlives it.

    Raises
    ------
    BodyLimitError
        The body broke the rule.
    requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError
        The body broke off or timed out (the read timeout).
    """
    sock = _socket_of(raw)
    read_timeout = sock.gettimeout() if sock is not None else None
    left = pacing.time_left(done, elapsed())
    if sock is not None and left is not None:
        sock.settimeout(max(0.01, min(left + 0.01, read_timeout or left + 0.01)))
    try:
        chunk = raw.read1(size, decode_content=decode_content)
    except urllib3.exceptions.ReadTimeoutError as exc:
        why = pacing.breach(done, elapsed())
        if why:
            raise BodyLimitError(why) from None
        raise requests.exceptions.ConnectionError(exc) from exc
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError, OSError) as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    finally:
        if sock is not None and read_timeout is not None and left is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(read_timeout)
    why = pacing.breach(done + len(chunk), elapsed())
    if why:
        raise BodyLimitError(why)
    return chunk


def read_body(response, bounds, *, error_page=False):
    """Read ``response``'s whole body within ``bounds``; sets ``response.content``.

    An ``error_page`` (an answer with an error status) is read only up to its first 64 KiB,
    all an error message quotes; the rest is never read.

    Reads what has arrived (``read1``), never waiting past the pacing rule (the socket's
    timeout is shortened to the time left), and decodes gzip/deflate here with
    ``max_length``, so no more than ``bounds.max_bytes + 1`` decoded bytes are ever held.

    Raises
    ------
    BodyLimitError
        Too many bytes, too slow, or a content coding this client does not decode.
    requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError
        The body broke off (the adapter may send the request again).
    """
    if getattr(response, "_content", None) is not False:   # requests' marker of a body not yet read;
        return response.content    # a minimal response (a user's hook, a test's mock) holds its content
    raw = response.raw
    coding = response.headers.get("Content-Encoding", "").strip().lower()
    try:
        if coding not in ("", "identity") and coding not in _DECODERS:
            raise BodyLimitError(f"is encoded as {coding!r}, which this client does not decode")
        decoder = _DECODERS[coding]() if coding in _DECODERS else None
        parts, size, room = [], 0, min(bounds.max_bytes, _ERROR_TEXT_BYTES) if error_page else bounds.max_bytes
        while True:
            chunk = read_some(raw, bounds.pacing, size, bounds.elapsed)
            if not chunk:
                if decoder is not None:
                    tail = decoder.flush()
                    size += len(tail)
                    parts.append(tail)
                break
            data = chunk
            while data:
                # at most one read's worth of output at a time: zlib holds a second copy of each piece
                piece = decoder.decompress(data, min(room - size + 1, _DECODED_STEP)) if decoder is not None \
                    else data
                data = decoder.unconsumed_tail if decoder is not None else b""
                size += len(piece)
                if size > room and error_page:
                    parts.append(piece[:len(piece) - (size - room)])
                    response._content = b"".join(parts)
                    response._content_consumed = True
                    response.close()   # the rest is not read: the connection cannot be used again
                    return response._content
                if size > room:
                    raise BodyLimitError(f"is longer than {room:,} bytes{' once decoded' if decoder else ''} "
                                         f"({bounds.setting})")
                parts.append(piece)
    except zlib.error as exc:
        response.close()
        raise BodyLimitError(f"is not valid {coding} ({exc})") from None
    except BaseException:
        response.close()   # never hand a half-read connection back to the pool
        raise
    response._content = b"".join(parts)
    response._content_consumed = True
    raw.release_conn()
    return response._content


# --- the one failure mapper --------------------------------------------------------------------

def server_message(response, limit=500):
    """The server's own words from an error response, readable and bounded.

    CASDA answers errors as plain text (``FAILURE: ...``) when asked with
    ``Accept: text/plain``, and otherwise as an HTML page; tags are dropped here.  A body not
    yet read (a streamed answer) is read only up to 64 KiB.
    """
    if getattr(response, "_content", None) is False:   # streamed and not read: take its beginning only
        with contextlib.suppress(Exception):
            with bounded(_ERROR_TEXT_BYTES, Pacing(deadline=5.0)) as bounds:
                read_body(response, bounds, error_page=True)
        if response._content is False:
            response._content = b""
    text = getattr(response, "text", "")
    text = text if isinstance(text, str) else ""   # a minimal or mocked response may have none
    if "<" in text and re.search(r"<(html|body|h1|p|div|title)\b", text, re.IGNORECASE):
        text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.IGNORECASE | re.DOTALL)
        text = re.sub(r"<[^>]+>", " ", text)
    return squeeze(text, limit) or f"HTTP {response.status_code} {getattr(response, 'reason', '') or ''}".strip()


def squeeze(text, limit):
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _build(kind, message, url, status, said, details, cause=None, response=None):
    # status / cause make the error also the requests exception astroquery.casda raised there
    # (HTTPError from raise_for_status, ConnectionError, ReadTimeout...): see errors.CasdaError
    origin = {"status": status, "cause": cause, "response": response}
    if issubclass(kind, ServiceError):
        return kind(message, url=url, server_message=said, **origin, **details)
    if issubclass(kind, JobError):
        return kind(message, server_message=said, **origin, **details)
    if issubclass(kind, DownloadError):
        return kind(message, url=url, **origin, **details)
    return kind(message, **origin) if issubclass(kind, CasdaError) else kind(message)


def failure(exc=None, *, url, what, kind=ServiceError, response=None, statuses=None, scrub=None, **details):
    """The package's public exception for a request that failed; the caller raises it.

    The one place a transport failure becomes a package error.  The message says what was
    being done, names the URL (redacted: no query string, no user info) and gives the
    server's own words or the reason no answer came.

    Parameters
    ----------
    exc : Exception, optional
        A `requests.RequestException` (no usable answer: timeouts, resets, TLS, DNS), a
        `BodyLimitError`, or None when ``response`` carries an HTTP error status.
    url : str
        The request's URL.
    what : str
        What was being done, e.g. ``"reading the job"``, ``"CASDA TAP query"``.
    kind : type
        The exception to raise (a `~astroquery_casda_ext.errors.CasdaError` subclass).
    response : `requests.Response`, optional
        An answer with an error status (>= 400).
    statuses : dict, optional
        ``{status: (kind, message or None)}`` for statuses with their own meaning (e.g.
        404/410 for a job); by default 401 and 403 are a
        `~astroquery_casda_ext.errors.CasdaLoginError`.
    scrub : callable, optional
        Applied to the server's text (e.g. removes access tokens it echoed).
    **details
        Passed to ``kind`` (e.g. ``job_url``, ``phase`` of a `JobError`).

    Returns
    -------
    CasdaError
    """
    shown = redact_url(url)
    scrub = scrub or (lambda text: text)
    if isinstance(exc, BodyLimitError):
        return _build(kind, f"{what}: the answer from {shown} {exc.why}; stopped", url, None, None, details)
    if exc is not None:
        return _build(kind, f"{what}: no answer from {shown} ({describe_failure(exc)})", url, None, None,
                      details, cause=exc)
    status = response.status_code
    said = scrub(server_message(response))
    special = dict(statuses or {})
    special.setdefault(401, (CasdaLoginError, None))
    special.setdefault(403, (CasdaLoginError, None))
    special_kind, special_text = special.get(status, (kind, None))
    message = special_text or f"{what} failed: HTTP {status} from {shown}: {said}"
    if special_kind is CasdaLoginError:
        return CasdaLoginError(f"{what}: CASDA rejected the login (HTTP {status} from {shown}): {said}",
                               status=status, response=response)
    return _build(special_kind, message, url, status, said, details, response=response)


@contextlib.contextmanager
def failures_as(kind=ServiceError, *, url, what, **details):
    """Raise `failure` (as ``kind``) for any transport failure or broken bound inside the block."""
    try:
        yield
    except (requests.RequestException, BodyLimitError) as exc:
        if isinstance(exc, CasdaError):
            raise       # already one of ours (errors.CasdaError may also be a requests exception)
        raise failure(exc, url=url, what=what, kind=kind, **details) from exc
