"""The HTTP boundary of downloads: per-thread sessions, one GET without credentials, statuses.

requests' exceptions and the statuses worth another try become `Transient`; other HTTP
errors `Fatal`.  How often and after how long a `Transient` is tried again is the
transport's `~astroquery_casda_ext.transport.RetryPolicy`, asked through a
`~astroquery_casda_ext.transport.RetryState` per file: there is no second retry policy.
"""
import re
import threading
from contextlib import closing
from dataclasses import dataclass, field
from urllib.parse import urljoin

import requests
import urllib3

from ..checksum import parse_checksum
from ..errors import DownloadError, redact_url
from ..transport import ApiRetryAdapter, RetryPolicy, describe_failure, parse_retry_after
from .manifest import ChecksumStatus

__all__ = []

#: A ``.checksum`` file is one line of about 60 bytes; anything much longer is not one.
MAX_CHECKSUM_BYTES = 4096
#: Redirects followed per request (CASDA redirects expired downloads to the job page).
MAX_REDIRECTS = 5

# Transfer-level errors requests and urllib3 raise while a body is being read.
TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError)


# --- sessions -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionSpec:
    """What a worker needs to build its own `requests.Session`: everything but credentials.

    A `requests.Session` is not promised to be thread-safe, so each worker thread builds
    its own from this, with the transport's `~astroquery_casda_ext.transport.ApiRetryAdapter`
    (which passes streamed downloads through untouched) and a pool of ``pool_size``
    connections per host.
    """

    headers: tuple = ()           #: (name, value) pairs of the session headers, no Authorization
    proxies: tuple = field(default=(), repr=False)   #: (scheme, proxy URL) pairs (may hold a login)
    verify: bool | str = True     #: TLS verification (bool or CA bundle path)
    cert: str | tuple | None = None
    trust_env: bool = True
    pool_size: int = 10           #: connections per host

    @classmethod
    def from_session(cls, session, pool_size=10):
        headers = tuple((key, value) for key, value in session.headers.items()
                        if key.lower() != "authorization")
        cert = tuple(session.cert) if isinstance(session.cert, list) else session.cert
        return cls(headers, tuple(sorted((session.proxies or {}).items())), session.verify, cert,
                   session.trust_env, pool_size)

    def build(self):
        session = requests.Session()
        session.headers.update(dict(self.headers))
        session.proxies.update(dict(self.proxies))
        session.verify, session.cert, session.trust_env = self.verify, self.cert, self.trust_env
        adapter = ApiRetryAdapter(RetryPolicy(total=0), pool_maxsize=self.pool_size)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session


class SessionPool:
    """One session per thread, built from a `SessionSpec` on first use; `close` ends them all."""

    def __init__(self, spec):
        self.spec = spec
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()

    def get(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self.spec.build()
            with self._lock:
                self._all.append(session)
        return session

    def close(self):
        with self._lock:
            sessions, self._all = self._all, []
        for session in sessions:
            session.close()


_worker_state = threading.local()


def worker_session(spec):
    """A foreign executor's worker thread: one session per spec, built on first use."""
    sessions = getattr(_worker_state, "sessions", None)
    if sessions is None:
        sessions = _worker_state.sessions = {}
    if spec not in sessions:
        sessions[spec] = spec.build()
    return sessions[spec]


# --- outcomes -----------------------------------------------------------------------------------

class Transient(Exception):
    """Worth another attempt (after a backoff, or ``retry_after`` seconds)."""

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


class Fatal(Exception):
    """Ends the file's download: an ERROR row whose ``error_type`` is ``error.__name__``."""

    def __init__(self, message, error=DownloadError, checksum_status=ChecksumStatus.NOT_CHECKED):
        super().__init__(message)
        self.error, self.checksum_status = error, checksum_status


class Restart(Exception):
    """The partial file cannot be continued: fetch again from the start (a counted retry)."""


# --- one GET ------------------------------------------------------------------------------------

def _strip_authorization(request):
    """``auth=`` for downloads: overrides the session's auth (and .netrc), sends none."""
    request.headers.pop("Authorization", None)
    return request


# Session-level Authorization is removed (None deletes a merged header); identity encoding
# keeps byte offsets, Content-Length and the checksum about the same bytes.
_DOWNLOAD_HEADERS = {"Authorization": None, "Accept-Encoding": "identity"}


def describe(exc):
    """A transport error as text, without URL query strings (they may be signatures)."""
    return re.sub(r"\?[^\s'\")]*", "?...", f"{type(exc).__name__}: {exc}")[:400]


def attempts_text(count):
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def content_length(response):
    value = response.headers.get("Content-Length", "")
    return int(value) if value.strip().isdigit() else None


def parse_content_range(value):
    """``(start, total)`` of ``bytes start-end/total`` (total None for ``*``), or (None, None)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    return int(match[1]), None if match[3] == "*" else int(match[3])


def _error_text(response, limit=300):
    """The start of a plain-text error body (CASDA's ``FAILURE: ...``), else ''."""
    if "text/plain" not in response.headers.get("Content-Type", ""):
        return ""
    try:
        return next(response.iter_content(limit), b"").decode("utf-8", "replace").strip()
    except TRANSPORT_ERRORS:
        return ""


def _check_status(response, url, retry):
    status = response.status_code
    if status < 400 or status == 416:
        return response
    with closing(response):
        if retry.is_retryable_status(status):
            raise Transient(f"HTTP {status} {response.reason}",
                            parse_retry_after(response.headers.get("Retry-After")))
        text = _error_text(response)
    if status == 410:
        text = text or "the staged files have expired; stage the data again"
    raise Fatal(f"HTTP {status} {response.reason} from {redact_url(url)}" + (f": {text}" if text else ""))


def _unusable(exc):
    """A URL requests cannot use (``ftp://``, no host), or a server certificate TLS refused."""
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                        requests.exceptions.MissingSchema)):
        return True
    return describe_failure(exc).startswith("the server's TLS certificate was refused")


def open_stream(session, url, config, headers=None):
    """GET ``url`` as a stream, without credentials, following redirects.

    requests' exceptions and retryable statuses become `Transient`, other HTTP errors
    `Fatal`. 416 is returned for the caller to handle.
    """
    request_headers = {**_DOWNLOAD_HEADERS, **(headers or {})}
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = session.get(url, headers=request_headers, auth=_strip_authorization,
                                   timeout=config.timeout, stream=True, allow_redirects=False)
        except TRANSPORT_ERRORS as exc:
            if _unusable(exc):   # every further attempt would fail the same way
                raise Fatal(describe(exc)) from None
            raise Transient(describe(exc)) from None
        if not (response.is_redirect and response.headers.get("Location")):
            return _check_status(response, url, config.retry)
        response.close()
        # Followed here rather than by requests, whose redirect handling may add .netrc auth.
        url = urljoin(url, response.headers["Location"])
    raise Fatal(f"more than {MAX_REDIRECTS} redirects from {redact_url(url)}")


# --- checksum sidecars --------------------------------------------------------------------------

def _read_limited(response, url, limit):
    body = bytearray()
    try:
        for chunk in response.iter_content(8192):
            body += chunk
            if len(body) > limit:
                raise Fatal(f"{redact_url(url)} is over {limit} bytes: not a CASDA .checksum file")
    except TRANSPORT_ERRORS as exc:
        raise Transient(f"connection lost: {describe(exc)}") from None
    length = content_length(response)
    if length is not None and len(body) < length:
        raise Transient(f"body ended after {len(body)} of {length} bytes")
    return bytes(body)


def fetch_small(session, url, config, hooks):
    """Body and Content-Disposition of a small file, retried under the transport's policy."""
    retry = config.retry.start(sleep=hooks.wait, clock=hooks.clock)
    attempts = 0
    while True:
        if hooks.cancelled():
            raise Fatal("cancelled")
        attempts += 1
        try:
            with closing(open_stream(session, url, config)) as response:
                if response.status_code != 200:
                    raise Fatal(f"unexpected HTTP {response.status_code} from {redact_url(url)}")
                body = _read_limited(response, url, MAX_CHECKSUM_BYTES)
                return body, response.headers.get("Content-Disposition")
        except Transient as exc:
            if not retry.wait(exc.retry_after):
                raise Fatal(f"{redact_url(url)}: gave up after {attempts_text(attempts)}: {exc}") from None


def read_expected(body, task):
    """The `~astroquery_casda_ext.checksum.Checksum` in a sidecar's body (DownloadError if none)."""
    try:
        return parse_checksum(body)
    except ValueError as exc:    # not three hex fields
        raise DownloadError(f"{task.name}: {exc}", url=task.checksum_url, path=task.path) from None
