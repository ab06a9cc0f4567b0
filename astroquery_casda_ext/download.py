"""Parallel, resumable, verified downloads of CASDA files, with a manifest.

A download runs in three steps (see `Downloader.download`):

1. **Plan** (`plan_downloads`, no network): each data URL is paired with its ``.checksum``
   sidecar (by the ``.checksum`` suffix of the URL path, whatever the order they come in),
   and given a safe local name inside ``savedir``.
2. **Read the checksums**: every sidecar is fetched first (they are tiny), kept on disk
   next to its data file as ``astroquery.casda`` does, and parsed. It gives the expected
   size, CRC-32 and SHA-1 of the data file.
3. **Transfer** (`transfer_file`, one call per file, in parallel): the data file is
   streamed into ``<name>.part`` while its checksum is computed (on a helper thread when a
   core is idle, so hashing overlaps receiving), so nothing is read twice and memory stays
   a few chunks.
   An interrupted ``.part`` (a dropped connection, or a killed process) is continued with
   an HTTP ``Range`` request when the server supports it, after hashing the bytes already
   on disk once. Only a file whose size, CRC-32 and SHA-1 all match is renamed to its
   final name (`os.replace`). A file that does not match is fetched once more from
   scratch; if it still does not match the ``.part`` is deleted and the manifest reports
   `~astroquery_casda_ext.errors.ChecksumMismatchError`. A file already present and
   verified is not fetched again (``SKIPPED``).

A file's local name is the last segment of its URL path, percent-decoded (as in
``astroquery.casda``), or the name the server gives in ``Content-Disposition``; a name
that could reach outside ``savedir`` is refused (`~astroquery_casda_ext.errors.UnsafeFilenameError`).
The returned `Manifest` has one row per file and can be saved as ECSV next to the files.

Connection errors, timeouts, HTTP 429 and 5xx responses are retried with exponential
backoff and jitter (`RetryPolicy`), honouring ``Retry-After``. Downloads never carry
credentials: CASDA's download URLs are capabilities in themselves, so the session's
``auth`` and any ``Authorization`` header are stripped, and no message shows the query
string of a presigned URL.

Executors
---------
By default the transfers run on a thread pool of ``workers`` threads sharing the session
you pass in (an `~requests.adapters.HTTPAdapter` with a connection pool of at least
``workers`` connections is mounted on it). Any `concurrent.futures.Executor` can run them
instead, for example a dask.distributed cluster::

    from dask.distributed import Client
    client = Client()                          # or Client("tcp://scheduler:8786")
    downloader = Downloader(session, executor=client.get_executor())
    manifest = downloader.download(job.result_files(), savedir="/shared/casda")

With a foreign executor each task is ``transfer_file(task, config)``: a top-level function
whose arguments and result (`FileTask`, `TransferConfig`, `FileResult`) are plain,
picklable dataclasses, so process-based workers on other machines can run it. The
session itself is not shipped to them (it may hold credentials, and a copy per task would
defeat connection pooling); each worker thread lazily builds its own session from a
`SessionSpec` (headers without ``Authorization``, proxies, TLS settings). ``savedir`` must
then be a directory the workers can write to (a shared file system). The checksums are
still read by the calling process, and the progress bar advances per finished file rather
than per chunk.
"""
import logging
import os
import queue
import re
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urljoin, urlsplit

import requests
import urllib3
from astropy.table import Table
from requests.adapters import HTTPAdapter

from . import conf
from .checksum import Checksum, ChecksumAccumulator, checksum_of_file, parse_checksum
from .errors import ChecksumMismatchError, DownloadError, UnsafeFilenameError, redact_url
from .transport import RetryPolicy, parse_retry_after

__all__ = [
    "RetryPolicy", "FileStatus", "ChecksumStatus", "FileTask", "FileResult", "TransferConfig",
    "SessionSpec", "Downloader", "Manifest", "download_files", "plan_downloads", "transfer_file",
    "read_checksum", "parse_retry_after", "parse_content_disposition", "filename_from_url", "safe_filename",
    "MANIFEST_NAME",
]

log = logging.getLogger(__name__)

#: File name of the manifest `Manifest.save` writes into the download directory.
MANIFEST_NAME = "casda_manifest.ecsv"
CHECKSUM_SUFFIX = ".checksum"
PART_SUFFIX = ".part"
#: A ``.checksum`` file is one line of about 60 bytes; anything much longer is not one.
MAX_CHECKSUM_BYTES = 4096
#: Error files carry one message; the manifest quotes at most this many characters of it.
MAX_ERROR_TEXT = 2000
#: Redirects followed per request (CASDA redirects expired downloads to the job page).
MAX_REDIRECTS = 5

# Kinds of manifest rows.
DATA, ERROR_FILE, CHECKSUM_ONLY = "data", "error-file", "checksum"

# Transfer-level errors requests and urllib3 raise while a body is being read.
_TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError)


# --- statuses -----------------------------------------------------------------------------------

class FileStatus(str, Enum):
    """Outcome of one file."""

    COMPLETE = "COMPLETE"   #: downloaded (and verified as far as ``checksum_status`` says)
    SKIPPED = "SKIPPED"     #: already present and verified; not fetched again
    ERROR = "ERROR"         #: failed; ``message`` says why, and no file has its final name


class ChecksumStatus(str, Enum):
    """How far a file was verified."""

    VERIFIED = "verified"        #: size, CRC-32 and SHA-1 match CASDA's ``.checksum``
    SIZE_ONLY = "size-only"      #: no ``.checksum`` to compare with: only the size was checked
    MISMATCH = "mismatch"        #: did not match its ``.checksum``, twice; deleted
    NOT_CHECKED = "not-checked"  #: not verified (``verify=False``, no size known, or failed first)


# --- file names ---------------------------------------------------------------------------------

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_CD_PARAM = re.compile(r';\s*(?P<key>[^\s;=]+)\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^;]*))')


def parse_content_disposition(value):
    """The file name a ``Content-Disposition`` header gives, or None.

    Handles CASDA's unquoted ``attachment; filename=name.fits``, quoted names (with
    backslash escapes and ``;`` inside quotes) and RFC 5987/6266 ``filename*=UTF-8''...``,
    which wins over ``filename``. The name is returned as sent: pass it through
    `safe_filename` before use.
    """
    if not value:
        return None
    params = {}
    for match in _CD_PARAM.finditer(str(value)):
        if match["quoted"] is not None:
            text = re.sub(r"\\(.)", r"\1", match["quoted"])
        else:
            text = match["token"].strip()
        params.setdefault(match["key"].lower(), text)
    extended = _decode_rfc5987(params.get("filename*"))
    return extended or params.get("filename") or None


def _decode_rfc5987(value):
    """Decode ``charset'language'percent-encoded`` (RFC 5987), or None if malformed."""
    if not value or value.count("'") < 2:
        return None
    charset, _language, encoded = value.split("'", 2)
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="strict")
    except (LookupError, UnicodeDecodeError):
        return None


def filename_from_url(url):
    """The local file name a download URL implies (not yet checked for safety).

    The last segment of the URL path, percent-decoded (as ``astroquery.casda`` does). For
    an S3 presigned URL whose query asks for a ``response-content-disposition``, the name
    in it is used, since that is the name the server will send.
    """
    parts = urlsplit(url)
    for key, value in parse_qsl(parts.query):
        if key.lower() == "response-content-disposition":
            name = parse_content_disposition(value)
            if name:
                return name
    return unquote(parts.path.rsplit("/", 1)[-1])


def safe_filename(name, *, url=None):
    """Check that ``name`` is a plain file name, and return it.

    Raises
    ------
    UnsafeFilenameError
        If the name is empty, ``.`` or ``..``, contains a path separator (``/`` or ``\\``),
        a NUL or another control character, is absolute, or is longer than 255 bytes.
    """
    if name is None or not name.strip():
        raise UnsafeFilenameError(f"empty file name for {redact_url(url)}", url=url)
    if (name in (".", "..") or "/" in name or "\\" in name or _CONTROL_CHARS.search(name)
            or os.path.isabs(name) or len(name.encode("utf-8", "surrogateescape")) > 255):
        raise UnsafeFilenameError(f"refusing unsafe file name {name!r} for {redact_url(url)}", url=url)
    if os.name == "nt":
        name = name.replace(":", "_")   # as astroquery.casda does: ':' is not allowed on Windows
    return name


def _local_path(savedir, name, *, url=None):
    """``savedir / name``, after checking it cannot resolve to anywhere outside ``savedir``."""
    base = Path(savedir).resolve()
    path = base / safe_filename(name, url=url)
    if path.resolve().parent != base:   # e.g. a symlink planted under that name
        raise UnsafeFilenameError(f"{name!r} would be written outside {base}", url=url, path=str(path))
    return path


# --- planning -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileTask:
    """One file to fetch: where from, where to, and what it must hash to (picklable)."""

    index: int                       #: row number in the manifest
    url: str                         #: the data URL (a credential when presigned: never print it)
    savedir: str                     #: absolute download directory
    name: str                        #: local file name, from the URL
    checksum_url: str | None = None  #: its ``.checksum`` sidecar, if any
    checksum_name: str | None = None
    product_id: str = ""
    result_id: str = ""
    kind: str = DATA                 #: "data", "error-file" or "checksum" (a sidecar alone)
    expected: Checksum | None = None  #: filled in once the sidecar has been read

    @property
    def path(self):
        return os.path.join(self.savedir, self.name)

    @property
    def checksum_path(self):
        return os.path.join(self.savedir, self.checksum_name) if self.checksum_name else ""


@dataclass
class FileResult:
    """What happened to one file: a row of the `Manifest` (picklable)."""

    index: int
    url: str
    path: str
    checksum_path: str = ""
    product_id: str = ""
    result_id: str = ""
    kind: str = DATA
    size: int = 0
    checksum_status: ChecksumStatus = ChecksumStatus.NOT_CHECKED
    status: FileStatus = FileStatus.ERROR
    message: str = ""
    error_type: str = ""             #: name of the errors.py class describing the failure
    attempts: int = 0                #: HTTP requests made for the data file
    bytes_transferred: int = 0       #: body bytes received for the data file in this call


@dataclass(frozen=True)
class _Item:
    url: str
    checksum_url: str | None
    product_id: str = ""
    result_id: str = ""


def _path_key(url):
    parts = urlsplit(url)
    path = parts.path[:-len(CHECKSUM_SUFFIX)] if parts.path.endswith(CHECKSUM_SUFFIX) else parts.path
    return parts.scheme.lower(), parts.netloc.lower(), path


def _is_checksum_url(url):
    return urlsplit(url).path.endswith(CHECKSUM_SUFFIX)


def _pair_urls(urls):
    """For each URL string: the `_Item` it belongs to, and its role (data or checksum).

    URLs pair with their ``.checksum`` by URL path, ignoring the query string (each
    presigned URL has its own signature). A ``.checksum`` URL with no data URL beside it
    is a file of its own.
    """
    data_urls, sidecars = {}, {}          # path key -> first data / .checksum URL with that path
    for url in urls:
        (sidecars if _is_checksum_url(url) else data_urls).setdefault(_path_key(url), url)
    paired = []
    for url in urls:
        key = _path_key(url)
        if _is_checksum_url(url) and key in data_urls:
            paired.append((_Item(data_urls[key], sidecars[key]), "checksum"))
        elif _is_checksum_url(url):
            paired.append((_Item(url, None), "data"))
        else:
            paired.append((_Item(url, sidecars.get(key)), "data"))
    return paired


def _normalise_items(items):
    """Items as `_Item` objects, and for each input URL (in order) ``(item number, role)``.

    URL strings are paired by `_pair_urls`; ResultFile-like objects (anything with
    ``.url``) are taken as they are. A URL given twice is fetched once.
    """
    if isinstance(items, str) or hasattr(items, "url"):
        items = [items]
    items = list(items)
    paired = iter(_pair_urls([item for item in items if isinstance(item, str)]))
    found, refs, numbers = [], [], {}
    for item in items:
        if isinstance(item, str):
            entry, roles = next(paired)
            roles = (roles,)
        elif getattr(item, "url", None):
            checksum_url = getattr(item, "checksum_url", None)
            entry = _Item(item.url, checksum_url, getattr(item, "product_id", None) or "",
                          getattr(item, "result_id", None) or "")
            roles = ("data", "checksum") if checksum_url else ("data",)
        else:
            raise TypeError(f"cannot download a {type(item).__name__}: give URLs or ResultFile objects")
        if entry.url not in numbers:
            numbers[entry.url] = len(found)
            found.append(entry)
        refs.extend((numbers[entry.url], role) for role in roles)
    return found, refs


def _error_file_kind(item, name):
    """CASDA reports a cutout region that missed a cube as an ``error-NN`` result: not data."""
    return (item.result_id or name).lower().startswith("error-")


def _task_for(item, index, savedir):
    name = safe_filename(filename_from_url(item.url), url=item.url)
    checksum_name = None
    if item.checksum_url:
        checksum_name = safe_filename(filename_from_url(item.checksum_url), url=item.checksum_url)
    if _is_checksum_url(item.url) and not item.checksum_url:
        kind = CHECKSUM_ONLY
    elif _error_file_kind(item, name):
        kind = ERROR_FILE
    else:
        kind = DATA
    task = FileTask(index, item.url, savedir, name, item.checksum_url, checksum_name,
                    item.product_id, item.result_id, kind)
    for local_name in filter(None, (name, checksum_name)):
        _local_path(savedir, local_name, url=item.url)
    return task


def _claim_names(claimed, task):
    """Refuse two different files that would land on the same local name."""
    for name in filter(None, (task.name, task.checksum_name)):
        if name in claimed:
            raise DownloadError(f"{name!r} is also the local name of {redact_url(claimed[name])}; "
                                "download them into different directories", url=task.url)
    for name in filter(None, (task.name, task.checksum_name)):
        claimed[name] = task.url


def plan_downloads(items, savedir="."):
    """Decide what to fetch and where, without touching the network.

    Parameters
    ----------
    items : iterable of str or ResultFile-like
        Download URLs (data files and their ``.checksum`` URLs, in any order), and/or
        objects with ``url``, ``checksum_url``, ``product_id`` and ``result_id``.
    savedir : str or path-like
        The download directory.

    Returns
    -------
    tasks : list of FileTask
        One per distinct data file (a ``.checksum`` URL given alone counts as one).
    failures : list of FileResult
        Items refused before any download (an unsafe or clashing local name).
    refs : list of (int, str)
        For each given URL in order, the task index and ``"data"`` or ``"checksum"``.
    """
    savedir = str(Path(savedir or ".").resolve())
    found, refs = _normalise_items(items)
    tasks, failures, claimed = [], [], {}
    for index, item in enumerate(found):
        try:
            task = _task_for(item, index, savedir)
            _claim_names(claimed, task)
        except DownloadError as exc:
            failures.append(FileResult(index, item.url, "", product_id=item.product_id,
                                       result_id=item.result_id, message=str(exc),
                                       error_type=type(exc).__name__))
        else:
            tasks.append(task)
    return tasks, failures, refs


def _failed_result(task, exc, *, checksum_status=ChecksumStatus.NOT_CHECKED):
    return FileResult(task.index, task.url, task.path, task.checksum_path, task.product_id,
                      task.result_id, task.kind, task.expected.size if task.expected else 0,
                      checksum_status, FileStatus.ERROR, str(exc), type(exc).__name__)


# --- sessions -----------------------------------------------------------------------------------

def _mount_pool(session, size):
    """Make ``session`` keep at least ``size`` connections per host, for http and https.

    An `~requests.adapters.HTTPAdapter` already mounted (e.g. the façade's API retry
    adapter) keeps its class and settings; only its connection pool is enlarged. Other
    adapter types are the caller's business and are left alone.
    """
    for prefix in ("http://", "https://"):
        adapter = session.adapters.get(prefix)
        if adapter is None:
            # max_retries stays 0: RetryPolicy retries, with resume, above urllib3.
            session.mount(prefix, HTTPAdapter(pool_maxsize=size))
        elif isinstance(adapter, HTTPAdapter) and adapter._pool_maxsize < size:
            adapter.poolmanager.clear()
            adapter.init_poolmanager(adapter._pool_connections, size, block=adapter._pool_block)


@dataclass(frozen=True)
class SessionSpec:
    """What a worker needs to build its own `requests.Session`: everything but credentials."""

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
        _mount_pool(session, self.pool_size)
        return session


_worker_state = threading.local()


def _worker_session(spec):
    """One session per worker thread and spec, built on first use (sessions are not shipped)."""
    sessions = getattr(_worker_state, "sessions", None)
    if sessions is None:
        sessions = _worker_state.sessions = {}
    if spec not in sessions:
        sessions[spec] = spec.build()
    return sessions[spec]


@dataclass(frozen=True)
class TransferConfig:
    """Settings of a transfer, shipped with every task (picklable)."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | tuple = 30.0        #: seconds to connect and between bytes read
    chunk_size: int = 1 << 20            #: bytes read and written per step (bounds memory)
    session: SessionSpec = field(default_factory=SessionSpec)   #: for workers without our session
    #: Hash on a helper thread, overlapping the transfer: worth it only with an idle core.
    hash_in_thread: bool = True


# --- the HTTP boundary --------------------------------------------------------------------------

class _Transient(Exception):
    """Worth another attempt (after a backoff, or ``retry_after`` seconds)."""

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    """Ends the file's download: an ERROR row whose ``error_type`` is ``error.__name__``."""

    def __init__(self, message, error=DownloadError, checksum_status=ChecksumStatus.NOT_CHECKED):
        super().__init__(message)
        self.error, self.checksum_status = error, checksum_status


class _Restart(Exception):
    """The partial file cannot be continued: fetch again from the start, now."""


class _AlreadyHere(Exception):
    """The file is already on disk under its final name and checks out."""

    def __init__(self, checksum_status):
        super().__init__(checksum_status.value)
        self.checksum_status = checksum_status


def _strip_authorization(request):
    """``auth=`` for downloads: overrides the session's auth (and .netrc), sends none."""
    request.headers.pop("Authorization", None)
    return request


# Session-level Authorization is removed (None deletes a merged header); identity encoding
# keeps byte offsets, Content-Length and the checksum about the same bytes.
_DOWNLOAD_HEADERS = {"Authorization": None, "Accept-Encoding": "identity"}


def _describe(exc):
    """A transport error as text, without URL query strings (they may be signatures)."""
    return re.sub(r"\?[^\s'\")]*", "?...", f"{type(exc).__name__}: {exc}")[:400]


def _attempts(count):
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _content_length(response):
    value = response.headers.get("Content-Length", "")
    return int(value) if value.strip().isdigit() else None


def _parse_content_range(value):
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
    except _TRANSPORT_ERRORS:
        return ""


def _check_status(response, url, retry):
    status = response.status_code
    if status < 400 or status == 416:
        return response
    with closing(response):
        if retry.is_retryable_status(status):
            raise _Transient(f"HTTP {status} {response.reason}",
                             parse_retry_after(response.headers.get("Retry-After")))
        text = _error_text(response)
    if status == 410:
        text = text or "the staged files have expired; stage the data again"
    raise _Fatal(f"HTTP {status} {response.reason} from {redact_url(url)}" + (f": {text}" if text else ""))


def _unusable(exc):
    """A URL requests cannot use (``ftp://``, no host), or a server certificate TLS refused."""
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                        requests.exceptions.MissingSchema)):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.exceptions.SSLError) and \
        any(isinstance(arg, ssl.SSLCertVerificationError) for arg in getattr(reason, "args", ()))


def _open(session, url, config, headers=None):
    """GET ``url`` as a stream, without credentials, following redirects.

    This is the transport boundary: requests' exceptions and retryable statuses become
    `_Transient`, other HTTP errors `_Fatal`. 416 is returned for the caller to handle.
    """
    request_headers = {**_DOWNLOAD_HEADERS, **(headers or {})}
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = session.get(url, headers=request_headers, auth=_strip_authorization,
                                   timeout=config.timeout, stream=True, allow_redirects=False)
        except _TRANSPORT_ERRORS as exc:
            if _unusable(exc):   # every further attempt would fail the same way
                raise _Fatal(_describe(exc)) from None
            raise _Transient(_describe(exc)) from None
        if not (response.is_redirect and response.headers.get("Location")):
            return _check_status(response, url, config.retry)
        response.close()
        # Followed here rather than by requests, whose redirect handling may add .netrc auth.
        url = urljoin(url, response.headers["Location"])
    raise _Fatal(f"more than {MAX_REDIRECTS} redirects from {redact_url(url)}")


class _Hooks:
    """A local worker's callbacks: progress, cancellation and sleeping (not picklable)."""

    def __init__(self, report=None, cancel=None, sleep=None):
        self._report, self._cancel, self._sleep = report, cancel, sleep

    def report(self, event, index, value):
        if self._report is not None:
            self._report(event, index, value)

    def cancelled(self):
        return self._cancel is not None and self._cancel.is_set()

    def cancel(self):
        if self._cancel is not None:
            self._cancel.set()

    def wait(self, seconds):
        if self._sleep is not None:
            self._sleep(seconds)
        elif self._cancel is not None:
            self._cancel.wait(seconds)   # returns early when the download is cancelled
        else:
            time.sleep(seconds)


# --- checksum sidecars --------------------------------------------------------------------------

def _read_limited(response, url, limit):
    body = bytearray()
    try:
        for chunk in response.iter_content(8192):
            body += chunk
            if len(body) > limit:
                raise _Fatal(f"{redact_url(url)} is over {limit} bytes: not a CASDA .checksum file")
    except _TRANSPORT_ERRORS as exc:
        raise _Transient(f"connection lost: {_describe(exc)}") from None
    length = _content_length(response)
    if length is not None and len(body) < length:
        raise _Transient(f"body ended after {len(body)} of {length} bytes")
    return bytes(body)


def _fetch_small(session, url, config, hooks):
    """Body and Content-Disposition name of a small file, with retries."""
    retries = 0
    while True:
        if hooks.cancelled():
            raise _Fatal("cancelled")
        try:
            with closing(_open(session, url, config)) as response:
                if response.status_code != 200:
                    raise _Fatal(f"unexpected HTTP {response.status_code} from {redact_url(url)}")
                body = _read_limited(response, url, MAX_CHECKSUM_BYTES)
                return body, parse_content_disposition(response.headers.get("Content-Disposition"))
        except _Transient as exc:
            retries += 1
            if retries > config.retry.total:
                raise _Fatal(f"{redact_url(url)}: gave up after {_attempts(retries)}: {exc}") from None
            hooks.wait(config.retry.delay(retries, exc.retry_after))


def _write_atomically(path, data):
    part = Path(str(path) + PART_SUFFIX)
    part.write_bytes(data)
    os.replace(part, path)


def read_checksum(task, config, session, hooks=None):
    """Fetch a task's ``.checksum``, keep it on disk, and return the task with ``expected``.

    Raises
    ------
    DownloadError
        If the sidecar cannot be fetched, is not a CASDA checksum, or names an unsafe file.
    """
    hooks = hooks or _Hooks()
    try:
        body, server_name = _fetch_small(session, task.checksum_url, config, hooks)
    except _Fatal as exc:
        raise exc.error(f"{task.name}: .checksum: {exc}", url=task.checksum_url, path=task.path) from None
    try:
        expected = parse_checksum(body)
    except ValueError as exc:    # not three hex fields
        raise DownloadError(f"{task.name}: {exc}", url=task.checksum_url, path=task.path) from None
    if server_name and server_name != task.checksum_name:
        task = replace(task, checksum_name=_local_path(task.savedir, server_name, url=task.checksum_url).name)
    try:
        _write_atomically(Path(task.checksum_path), body)
    except OSError as exc:        # the local disk: full, read-only, no permission
        raise DownloadError(f"{task.name}: cannot write {task.checksum_name}: {exc}", url=task.checksum_url,
                            path=task.checksum_path) from None
    return replace(task, expected=expected)


# --- one file -----------------------------------------------------------------------------------

class _Transfer:
    """Fetches one file into ``<name>.part`` (resuming, retrying) and verifies it."""

    def __init__(self, task, config, session, hooks):
        self.task, self.config, self.session, self.hooks = task, config, session, hooks
        self.final = Path(task.path)               # may change to the server's Content-Disposition name
        self.part = Path(task.path + PART_SUFFIX)  # never changes, so a later call finds it
        self.accumulator = None    # checksum of the bytes in .part, while it is known
        self.range_ok = None       # does the server continue with Range? None until it answered
        self.total = None          # size of the whole file as the server announced it
        self.attempts = self.retries = self.transferred = self.fresh_starts = 0

    def run(self):
        try:
            done = self._already_done()
            return done if done is not None else self._loop()
        except _Fatal as exc:
            if self.part.is_file() and self.part.stat().st_size == 0:
                self.part.unlink()   # an empty .part resumes nothing: leave no litter
            return self._result(FileStatus.ERROR, exc.checksum_status, str(exc), exc.error.__name__)
        except OSError as exc:      # the local disk (full, read-only...): no retry helps
            return self._result(FileStatus.ERROR, ChecksumStatus.NOT_CHECKED,
                                f"{self.final.name}: {exc}", DownloadError.__name__)

    def _already_done(self):
        """A verified final file (SKIPPED) or a complete .part from a killed run (COMPLETE)."""
        expected = self.task.expected
        if expected is None:
            return None
        if _matches(self.final, expected):
            self._discard()
            return self._result(FileStatus.SKIPPED, ChecksumStatus.VERIFIED)
        size = self.part.stat().st_size if self.part.is_file() else -1
        if size == expected.size and _matches(self.part, expected):
            return self._finish(ChecksumStatus.VERIFIED)
        if size >= expected.size:
            self._discard()
        return None

    def _loop(self):
        policy = self.config.retry
        while True:
            if self.hooks.cancelled():
                raise _Fatal(f"{self.final.name}: cancelled; the partial file is kept for next time")
            try:
                self._attempt()
            except _Restart as exc:
                log.debug("%s: %s; starting again from the beginning", self.final.name, exc)
                continue
            except _Transient as exc:
                self.retries += 1
                if self.retries > policy.total:
                    message = f"{self.final.name}: gave up after {_attempts(self.attempts)}: {exc}"
                    raise _Fatal(message) from None
                delay = policy.delay(self.retries, exc.retry_after)
                log.info("%s: %s; retry %d in %.1f s", self.final.name, exc, self.retries, delay)
                self.hooks.wait(delay)
                continue
            except _AlreadyHere as exc:
                self._discard()
                return self._result(FileStatus.SKIPPED, exc.checksum_status)
            result = self._verify()
            if result is not None:
                return result

    def _attempt(self):
        offset = self._resume_offset()
        self.attempts += 1
        headers = {"Range": f"bytes={offset}-"} if offset else None
        with closing(_open(self.session, self.task.url, self.config, headers)) as response:
            offset = self._accept(response, offset)
            self._stream(response, offset)

    def _resume_offset(self):
        """Bytes already in .part worth continuing from (0, and no .part, when not)."""
        size = self.part.stat().st_size if self.part.is_file() else 0
        if size == 0 or self.range_ok is False:
            self._discard()
            return 0
        if self.accumulator is not None and self.accumulator.size != size:
            self.accumulator = None      # out of step with the disk: hash the prefix again
        return size

    def _accept(self, response, offset):
        """Check the response continues (206) or replaces (200) the .part; returns the offset."""
        status = response.status_code
        if status == 416:               # the .part is not a prefix of what the server has
            self._discard()
            raise _Restart("the server refused the range")
        if status not in (200, 206):
            raise _Fatal(f"unexpected HTTP {status} from {redact_url(self.task.url)}")
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            expected = self.task.expected
            if start != offset or (expected is not None and total not in (None, expected.size)):
                self.range_ok = False
                self._discard()
                raise _Restart(f"the server sent Content-Range {response.headers.get('Content-Range')!r}"
                               f" for bytes={offset}-")
            self.range_ok = True
        else:
            self.range_ok = "bytes" in response.headers.get("Accept-Ranges", "").lower()
            offset, total = 0, _content_length(response)
        if response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
            # A compressed body (despite Accept-Encoding: identity) has no byte offsets to resume
            # from, and its Content-Length counts compressed bytes.
            self.range_ok, total = False, None
        self.total = total
        self._use_server_name(response)
        self._skip_if_present(total)
        self._prepare_accumulator(offset)
        size = self.task.expected.size if self.task.expected else total
        self.hooks.report("start", self.task.index, (offset, size, self.final.name))
        return offset

    def _use_server_name(self, response):
        name = parse_content_disposition(response.headers.get("Content-Disposition"))
        if not name or name == self.task.name:
            return
        try:
            self.final = _local_path(self.task.savedir, name, url=self.task.url)
        except UnsafeFilenameError as exc:
            raise _Fatal(str(exc), UnsafeFilenameError) from None

    def _skip_if_present(self, total):
        """A file already under the server's name, or of the announced size when no checksum."""
        expected = self.task.expected
        if expected is not None:
            if self.final != Path(self.task.path) and _matches(self.final, expected):
                raise _AlreadyHere(ChecksumStatus.VERIFIED)
        elif total is not None and self.final.is_file() and self.final.stat().st_size == total:
            raise _AlreadyHere(ChecksumStatus.SIZE_ONLY)

    def _prepare_accumulator(self, offset):
        if offset == 0:
            self.accumulator = ChecksumAccumulator()
        elif self.accumulator is None:
            # Resuming a .part from an earlier attempt or run: hash what is there, once.
            self.accumulator, _ = checksum_of_file(self.part, limit=offset)

    def _stream(self, response, offset):
        """Append the body to .part, hashing as it goes; memory is a few chunks."""
        announced = _content_length(response)
        reader = _body_reader(response)
        received = 0
        with _Sink(self.part, offset, self.accumulator, self.config) as sink:
            while True:
                if self.hooks.cancelled():
                    raise _Fatal(f"{self.final.name}: cancelled; the partial file is kept for next time")
                block = sink.free_block()
                count, broken = _fill(reader, block)
                if count:
                    sink.put(block[:count])   # written, then hashed: only bytes on disk are hashed
                    received += count
                    self.transferred += count
                    self.hooks.report("bytes", self.task.index, count)
                if broken is not None:
                    message = f"connection lost at byte {offset + received}: {_describe(broken)}"
                    raise _Transient(message) from None
                if count < len(block):
                    break
        if announced is not None and received < announced:
            raise _Transient(f"body ended after {received} of {announced} bytes")

    def _verify(self):
        """COMPLETE, or None to fetch again from scratch once after a mismatch."""
        got = self.accumulator.result()
        expected = self.task.expected
        if expected is not None:
            differing = expected.mismatches(got)
            if not differing:
                return self._finish(ChecksumStatus.VERIFIED)
            self._discard()
            if self.fresh_starts == 0:
                self.fresh_starts += 1
                log.info("%s: %s differ from the .checksum; downloading it again",
                         self.final.name, ", ".join(differing))
                return None
            raise _Fatal(f"{self.final.name}: {', '.join(differing)} did not match the .checksum, "
                         "twice; the file was deleted", ChecksumMismatchError, ChecksumStatus.MISMATCH)
        if self.total is not None and got.size != self.total:
            self._discard()
            raise _Fatal(f"{self.final.name}: got {got.size} bytes, the server announced {self.total}")
        size_known = self.total is not None
        return self._finish(ChecksumStatus.SIZE_ONLY if size_known else ChecksumStatus.NOT_CHECKED)

    def _finish(self, checksum_status):
        os.replace(self.part, self.final)
        return self._result(FileStatus.COMPLETE, checksum_status)

    def _discard(self):
        self.part.unlink(missing_ok=True)
        self.accumulator = None

    def _result(self, status, checksum_status, message="", error_type=""):
        task = self.task
        if status is not FileStatus.ERROR:
            size = self.final.stat().st_size
            if task.kind == ERROR_FILE:
                message = _error_file_text(self.final)
        else:
            size = task.expected.size if task.expected else (self.total or 0)
        return FileResult(task.index, task.url, str(self.final), task.checksum_path, task.product_id,
                          task.result_id, task.kind, size, checksum_status, status, message, error_type,
                          self.attempts, self.transferred)


class _SocketBody:
    """Reads a plain (not chunked) HTTP body straight from the connection into our buffers.

    ``http.client``'s ``read1`` allocates a new ``bytes`` object per call; ``readinto1`` on
    the connection's buffered reader fills one of a few buffers we reuse (no allocation,
    and the bytes are still in the CPU cache when they are written and hashed).
    Like ``read1`` it returns what has arrived, so bytes received before the connection
    breaks are kept. The response is closed after the transfer (never reused), so
    ``http.client``'s own count of the bytes left need not be kept up to date.
    """

    def __init__(self, stream, length):
        self._stream, self._left = stream, length

    def readinto1(self, view):
        if self._left is not None:
            if self._left <= 0:
                return 0
            view = view[:self._left]
        count = self._stream.readinto1(view)
        if self._left is not None:
            self._left -= count
        return count


class _Read1Body:
    """The general case (e.g. a chunked body): urllib3's ``read1``, copied into our buffer."""

    def __init__(self, raw):
        self._read1 = raw.read1

    def readinto1(self, view):
        chunk = self._read1(len(view))
        view[:len(chunk)] = chunk
        return len(chunk)


def _body_reader(response):
    """The fastest reader of ``response``'s body that keeps every byte that arrived."""
    raw = response.raw
    message = getattr(raw, "_fp", None)            # the http.client.HTTPResponse
    stream = getattr(message, "fp", None)          # its buffered reader of the socket
    plain = (getattr(message, "chunked", True) is False and not getattr(raw, "_decoded_buffer", None)
             and getattr(raw, "_fp_bytes_read", 1) == 0 and hasattr(stream, "readinto1"))
    if plain:
        return _SocketBody(stream, message.length)
    return _Read1Body(raw)


def _fill(reader, block):
    """Fill ``block`` from ``reader``: ``(bytes read, None)``, fewer at the end of the body,
    or ``(bytes read before the break, exception)`` when the connection broke."""
    filled, size = 0, len(block)
    try:
        while filled < size:
            count = reader.readinto1(block[filled:])
            if not count:
                break
            filled += count
    except (*_TRANSPORT_ERRORS, OSError) as exc:   # reads only: a socket error, not the disk
        return filled, exc
    return filled, None


class _Sink:
    """Writes blocks to the ``.part`` and feeds them to a `ChecksumAccumulator`.

    Blocks come from a small ring of reused buffers (memory: ``depth`` chunks). With an
    idle core (``config.hash_in_thread``) the hashing runs on a helper thread: zlib and
    hashlib release the GIL, so CRC-32 and SHA-1 of one block overlap receiving and
    writing the next. Each block is written before it is hashed, and leaving the
    ``with`` block waits for the hashing, so the accumulator then describes exactly the
    bytes in the ``.part``, whether the transfer ended well or not.
    """

    def __init__(self, part, offset, accumulator, config, depth=3):
        self._part, self._offset, self._accumulator = part, offset, accumulator
        threaded = config.hash_in_thread
        self._free = queue.SimpleQueue()
        for _ in range(depth if threaded else 1):
            self._free.put(memoryview(bytearray(config.chunk_size)))
        self._work = queue.SimpleQueue() if threaded else None
        self._thread = threading.Thread(target=self._run, name="casda-hash", daemon=True) if threaded else None
        self._failure = None
        self._fd = None

    def __enter__(self):
        fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        try:
            os.ftruncate(fd, self._offset)
            os.lseek(fd, self._offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info):
        try:
            if self._thread is not None:
                self._work.put(None)
                self._thread.join()
        finally:
            os.close(self._fd)
        if self._failure is not None and exc_info[0] is None:
            raise self._failure

    def free_block(self):
        """A buffer to read into (waits while every buffer is still being hashed)."""
        return self._free.get()

    def put(self, view):
        """Write ``view`` (a prefix of a block from `free_block`) and hash it."""
        written = 0
        while written < len(view):
            written += os.write(self._fd, view[written:])
        if self._work is None:
            self._accumulator.update(view)
            self._free.put(memoryview(view.obj))
        else:
            self._work.put(view)

    def _run(self):
        while (view := self._work.get()) is not None:
            if self._failure is None:
                try:
                    self._accumulator.update(view)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the transfer's thread
                    self._failure = exc
            self._free.put(memoryview(view.obj))


def _matches(path, expected):
    """Whether the file at ``path`` has exactly the ``expected`` size, CRC-32 and SHA-1."""
    if not path.is_file() or path.stat().st_size != expected.size:
        return False
    return not expected.mismatches(checksum_of_file(path)[1])


def _error_file_text(path):
    with open(path, "rb") as stream:
        return stream.read(MAX_ERROR_TEXT).decode("utf-8", "replace").strip()


def transfer_file(task, config, session=None, hooks=None):
    """Download and verify one file; never raises for a download problem.

    This is the unit of work handed to the executor: a top-level function whose
    arguments and result are picklable (except ``session`` and ``hooks``, which only
    the built-in thread pool passes).

    Parameters
    ----------
    task : FileTask
        What to fetch and what it must hash to (``task.expected``).
    config : TransferConfig
    session : requests.Session, optional
        Defaults to a session of this worker thread built from ``config.session``.
    hooks : optional
        Progress, cancellation and sleep callbacks of the local thread pool.

    Returns
    -------
    FileResult
    """
    session = session if session is not None else _worker_session(config.session)
    return _Transfer(task, config, session, hooks or _Hooks()).run()


# --- progress -----------------------------------------------------------------------------------

def _progress_mode(progress):
    """(overall bar?, per-file bars?) for ``progress`` None (auto), bool or ``"files"``."""
    if progress is None:
        interactive = getattr(sys.stderr, "isatty", None)
        return bool(interactive and interactive()), False
    if progress == "files":
        return True, True
    return bool(progress), False


class _Progress:
    """The overall bar (bytes, rate, ETA, files done) and optional per-file bars; thread-safe."""

    def __init__(self, progress, n_files):
        from tqdm.auto import tqdm
        self._tqdm = tqdm
        enabled, self._per_file = _progress_mode(progress)
        self._lock = threading.Lock()
        self._bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc="CASDA download",
                         disable=not enabled, dynamic_ncols=True, postfix=f"0/{n_files} files")
        self._file_bars, self._counted, self._planned = {}, {}, {}
        self._total, self._files, self._done = 0, n_files, 0

    def _show_files(self):
        self._bar.set_postfix_str(f"{self._done}/{self._files} files", refresh=False)

    def _grow(self, index, nbytes):
        self._planned[index] = self._planned.get(index, 0) + nbytes
        self._total += nbytes
        self._bar.total = self._total
        self._bar.refresh()

    def plan(self, task):
        """Count a file's remaining bytes into the total before it starts."""
        if task.expected is not None:
            part = Path(task.path + PART_SUFFIX)
            done = part.stat().st_size if part.is_file() else 0
            with self._lock:
                self._grow(task.index, max(task.expected.size - done, 0))

    def report(self, event, index, value):
        """Called by the workers: ``("start", i, (offset, size, name))`` and ``("bytes", i, n)``."""
        with self._lock:
            if event == "bytes":
                self._counted[index] = self._counted.get(index, 0) + value
                self._bar.update(value)
                if index in self._file_bars:
                    self._file_bars[index].update(value)
            elif event == "start":
                self._start_file(index, *value)

    def _start_file(self, index, offset, size, name):
        if size is not None and index not in self._planned:
            self._grow(index, max(size - offset, 0))
        if self._per_file and not self._bar.disable and index not in self._file_bars:
            label = name if len(name) <= 40 else "..." + name[-37:]
            self._file_bars[index] = self._tqdm(total=size, initial=offset, unit="B", unit_scale=True,
                                                unit_divisor=1024, desc=label, leave=False)

    def finish(self, result):
        """A file is done: settle its bytes (foreign executors report nothing before)."""
        with self._lock:
            missing = result.bytes_transferred - self._counted.get(result.index, 0)
            self._total += result.bytes_transferred - self._planned.get(result.index, 0)
            self._bar.total = max(self._total, self._bar.n + missing)
            if missing > 0:
                self._bar.update(missing)
            self._done += 1
            self._show_files()
            self._bar.refresh()
            bar = self._file_bars.pop(result.index, None)
            if bar is not None:
                bar.close()

    def close(self):
        with self._lock:
            for bar in self._file_bars.values():
                bar.close()
            self._bar.close()


# --- the downloader -----------------------------------------------------------------------------

class Downloader:
    """Parallel, resumable, verified downloads of CASDA files (see the module docstring).

    Parameters
    ----------
    session : requests.Session, optional
        Session to download with (a new one if None). A connection pool of at least
        ``workers`` connections per host is mounted on it. Its ``auth`` is never used.
    workers : int, optional
        Files transferred at once (default ``conf.download_workers``).
    retry : RetryPolicy, optional
        Default `RetryPolicy.from_conf`.
    executor : concurrent.futures.Executor, optional
        Runs the transfers instead of the built-in thread pool, e.g.
        ``dask.distributed.Client.get_executor()`` (see the module docstring).
    progress : bool, "files" or None
        None (default): an overall progress bar when stderr is a terminal; True: always;
        ``"files"``: also one bar per file; False: never.
    timeout : float or (float, float), optional
        Seconds to connect and between bytes received (default ``conf.timeout``).
    chunk_size : int
        Bytes read and written per step; memory use is a few chunks per worker.
    sleep : callable, optional
        Replaces the interruptible wait between retries (for tests).
    """

    def __init__(self, session=None, *, workers=None, retry=None, executor=None, progress=None,
                 timeout=None, chunk_size=1 << 20, sleep=None):
        #: The session transfers go through (the built-in pool shares it between threads).
        self.session = session if session is not None else requests.Session()
        #: Files transferred at once.
        self.workers = int(workers if workers is not None else conf.download_workers)
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        #: When and how long to wait before retrying a file.
        self.retry = retry if retry is not None else RetryPolicy.from_conf()
        #: A concurrent.futures.Executor for the transfers, or None for the built-in threads.
        self.executor = executor
        #: None (auto), True, "files" or False; see the class docstring.
        self.progress = progress
        #: Seconds to connect and between bytes received.
        self.timeout = timeout if timeout is not None else float(conf.timeout)
        #: Bytes per read and write.
        self.chunk_size = int(chunk_size)
        self._sleep = sleep
        _mount_pool(self.session, self.workers)

    def __repr__(self):
        return (f"{type(self).__name__}(workers={self.workers}, retry={self.retry!r}, "
                f"executor={self.executor!r}, timeout={self.timeout!r})")

    def _config(self, transfers):
        # A helper hashing thread pays off only while there are fewer transfers than cores.
        spare_cores = min(self.workers, transfers) < (os.cpu_count() or 1)
        return TransferConfig(self.retry, self.timeout, self.chunk_size,
                              SessionSpec.from_session(self.session, self.workers), spare_cores)

    def download(self, items, savedir=".", *, verify=True):
        """Download files and their ``.checksum`` sidecars into ``savedir``; never raises per file.

        Parameters
        ----------
        items : iterable of str or ResultFile-like
            URLs as a staging job lists them (each file and its ``.checksum``, any order),
            or objects with ``url``, ``checksum_url``, ``product_id`` and ``result_id``
            (``SodaJob.result_files()``). A job's ``error-NN`` files are fetched and
            reported as ``kind == "error-file"`` rows carrying their message.
        savedir : str or path-like
            Download directory (created if missing); default the current directory.
        verify : bool
            Compare each file with its ``.checksum`` (size, CRC-32, SHA-1). When False only
            sizes are checked.

        Returns
        -------
        Manifest
            One row per file. Call ``raise_for_errors()`` to turn failures into an exception.

        Raises
        ------
        TypeError
            If an item is neither a URL nor ResultFile-like.
        DownloadError
            If ``savedir`` cannot be created. Problems with single files do not raise: they
            are rows of the manifest.
        """
        savedir = Path(savedir or ".").resolve()
        try:
            savedir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot create the download directory {savedir}: {exc}",
                                path=str(savedir)) from None
        tasks, results, refs = plan_downloads(items, savedir)
        progress = _Progress(self.progress, len(tasks) + len(results))
        hooks = _Hooks(progress.report, threading.Event(), self._sleep)
        try:
            for result in results:
                progress.finish(result)
            config = self._config(len(tasks))
            tasks, failures = self._read_checksums(tasks, config, hooks, verify)
            results += failures + self._transfer(tasks, config, hooks, progress)
        finally:
            progress.close()
        return Manifest.from_results(results, savedir=savedir, refs=refs)

    def download_files(self, urls, *, savedir="."):
        """``astroquery.casda``'s contract: the local paths of all ``urls``, in order.

        Raises
        ------
        DownloadError
            After every other file is done, if any file failed (`Manifest.raise_for_errors`).
        """
        manifest = self.download(urls, savedir)
        manifest.raise_for_errors()
        return manifest.all_paths

    def _read_checksums(self, tasks, config, hooks, verify):
        """Fetch every sidecar first (tiny, in parallel): tasks with ``expected``, and failures."""
        ready, failures = [task for task in tasks if not task.checksum_url], []
        with ThreadPoolExecutor(self.workers, thread_name_prefix="casda-checksum") as pool:
            futures = {pool.submit(read_checksum, task, config, self.session, hooks): task
                       for task in tasks if task.checksum_url}
            for future, task in _completed(futures, hooks):
                try:
                    checked = future.result()
                except DownloadError as exc:
                    failures.append(_failed_result(task, exc))
                    continue
                ready.append(checked if verify else replace(checked, expected=None))
        return sorted(ready, key=lambda task: task.index), failures

    def _transfer(self, tasks, config, hooks, progress):
        for task in tasks:
            progress.plan(task)
        if self.executor is not None:
            futures = {self.executor.submit(transfer_file, task, config): task for task in tasks}
            return self._collect(futures, hooks, progress)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="casda-download") as pool:
            futures = {pool.submit(transfer_file, task, config, self.session, hooks): task for task in tasks}
            return self._collect(futures, hooks, progress)

    @staticmethod
    def _collect(futures, hooks, progress):
        results = []
        for future, task in _completed(futures, hooks):
            try:
                result = future.result()
            except Exception as exc:   # a foreign executor could not run the task at all
                failure = DownloadError(f"{task.name}: the executor failed: {type(exc).__name__}: {exc}",
                                        url=task.url, path=task.path)
                result = _failed_result(task, failure)
            progress.finish(result)
            results.append(result)
        return results


def _completed(futures, hooks):
    """``(future, task)`` as they finish; on Ctrl-C, stop the workers (keeping .part files)."""
    try:
        for future in as_completed(futures):
            yield future, futures[future]
    except BaseException:
        hooks.cancel()
        for future in futures:
            future.cancel()
        raise


def download_files(urls, *, savedir=".", session=None, **options):
    """Download ``urls`` like ``astroquery.casda.Casda.download_files``, fast and verified.

    Parameters
    ----------
    urls : list of str
        Data and ``.checksum`` URLs (any order), as ``Casda.stage_data`` returns them.
    savedir : str or path-like
        Download directory; default the current directory.
    session : requests.Session, optional
    **options
        `Downloader` keywords (``workers``, ``retry``, ``executor``, ``progress``, ``timeout``).

    Returns
    -------
    list of str
        The local path of every URL given (``.checksum`` files included), in order.
    """
    return Downloader(session, **options).download_files(urls, savedir=savedir)


# --- the manifest -------------------------------------------------------------------------------

_ERROR_CLASSES = {cls.__name__: cls for cls in (DownloadError, ChecksumMismatchError, UnsafeFilenameError)}


class Manifest:
    """What a download did, one row per file, as an astropy `~astropy.table.Table`.

    Columns: ``product_id``, ``result_id``, ``kind`` (``data``, ``error-file`` for a job's
    error results, ``checksum`` for a sidecar given alone), ``url`` (redacted: no query
    string), ``path``, ``checksum_path``, ``size``, ``checksum_status`` (`ChecksumStatus`
    values), ``status`` (`FileStatus` values), ``message``, ``error_type``, ``attempts``
    and ``bytes_transferred``.
    """

    COLUMNS = ("product_id", "result_id", "kind", "url", "path", "checksum_path", "size",
               "checksum_status", "status", "message", "error_type", "attempts", "bytes_transferred")
    _DTYPES = (str, str, str, str, str, str, "i8", str, str, str, str, "i8", "i8")

    def __init__(self, table, *, savedir=".", item_paths=()):
        #: The rows (an astropy Table).
        self.table = table
        #: The download directory.
        self.savedir = str(savedir)
        self._item_paths = list(item_paths)

    @classmethod
    def from_results(cls, results, *, savedir=".", refs=()):
        results = sorted(results, key=lambda result: result.index)
        rows = [(r.product_id, r.result_id, r.kind, redact_url(r.url), r.path, r.checksum_path, r.size,
                 ChecksumStatus(r.checksum_status).value, FileStatus(r.status).value, r.message,
                 r.error_type, r.attempts, r.bytes_transferred) for r in results]
        table = Table(rows=rows or None, names=cls.COLUMNS, dtype=cls._DTYPES)
        table.meta["savedir"] = str(savedir)
        by_index = {result.index: result for result in results}
        item_paths = [by_index[index].path if role == "data" else by_index[index].checksum_path
                      for index, role in refs if index in by_index]
        return cls(table, savedir=savedir, item_paths=item_paths)

    @classmethod
    def read(cls, path):
        """A manifest saved by `save`."""
        table = Table.read(path, format="ascii.ecsv")
        return cls(table, savedir=table.meta.get("savedir", os.path.dirname(os.path.abspath(path))))

    def __len__(self):
        return len(self.table)

    def __repr__(self):
        counts = {status.value: int((self.table["status"] == status.value).sum()) for status in FileStatus}
        return f"<Manifest of {len(self)} files in {self.savedir}: {counts}>"

    def _rows(self, mask):
        return self.table[mask]

    @property
    def paths(self):
        """Local paths of the data files that are there and checked (COMPLETE or SKIPPED)."""
        ok = (self.table["kind"] != ERROR_FILE) & (self.table["status"] != FileStatus.ERROR.value)
        return [str(path) for path in self.table["path"][ok]]

    @property
    def all_paths(self):
        """Local path of every URL given, in order, ``.checksum`` and error files included."""
        return [path for path in self._item_paths if path]

    @property
    def failed(self):
        """The rows of the files that failed (a Table)."""
        return self._rows(self.table["status"] == FileStatus.ERROR.value)

    @property
    def error_files(self):
        """The rows of the job's error files; ``message`` holds what each one says."""
        return self._rows(self.table["kind"] == ERROR_FILE)

    @property
    def ok(self):
        return len(self.failed) == 0

    def save(self, path=None):
        """Write the manifest as ECSV, atomically; default ``<savedir>/casda_manifest.ecsv``.

        Returns
        -------
        str
            The path written.
        """
        path = Path(path) if path is not None else Path(self.savedir, MANIFEST_NAME)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.table.write(temporary, format="ascii.ecsv", overwrite=True)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return str(path)

    def raise_for_errors(self):
        """Raise if any file failed; the exception lists every failure.

        Raises
        ------
        DownloadError
            Or its subclass `ChecksumMismatchError` / `UnsafeFilenameError` when every
            failure is of that kind. ``exc.manifest`` is this manifest.
        """
        failed = self.failed
        if len(failed) == 0:
            return
        kinds = set(failed["error_type"])
        error_class = _ERROR_CLASSES.get(kinds.pop(), DownloadError) if len(kinds) == 1 else DownloadError
        lines = "\n".join(f"  {row['message']}" for row in failed)
        single = failed[0] if len(failed) == 1 else None
        error = error_class(f"{len(failed)} of {len(self)} files could not be downloaded:\n{lines}",
                            url=single["url"] if single else None, path=single["path"] if single else None)
        error.manifest = self
        raise error
