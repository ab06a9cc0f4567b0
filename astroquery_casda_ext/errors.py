"""Exceptions and warnings raised by astroquery_casda_ext.

Every exception also derives from what ``astroquery.casda`` raises in the same situation,
so ``except`` clauses written for it keep catching what they caught before:

* input errors: astroquery's `~astroquery.exceptions.InvalidQueryError` and `ValueError`;
* login: `~astroquery.exceptions.LoginError`; the service failed: `~astroquery.exceptions.RemoteServiceError`;
  a job ran out of time: `~astroquery.exceptions.TimeoutError` (and the builtin one);
* transport: an error made from an HTTP error status is also a `requests.HTTPError` (astroquery
  calls ``raise_for_status``), one made from a failed connection or a timeout is also that
  `requests` exception (``ConnectionError``, ``ReadTimeout``...), with its ``response``.

No exception text ever contains a password, an access token or the query string of a
signed URL: messages name URLs through `redact_url`.
"""
import logging
import re
from urllib.parse import urlsplit, urlunsplit

import requests
from astropy.utils.exceptions import AstropyWarning
from astroquery.exceptions import (InvalidQueryError, LoginError, MaxResultsWarning, RemoteServiceError,
                                   TimeoutError as AstroqueryTimeoutError)

__all__ = [
    "CasdaError", "InvalidInputError", "InvalidRegionError", "InvalidSpectralRangeError",
    "InvalidTableError", "InvalidSourceListError", "InvalidURLError",
    "NotLoggedInError", "CasdaLoginError", "InsecureTransportError",
    "ServiceError", "NameResolverUnavailableError", "QueryError", "DataLinkError", "NoAccessError",
    "JobError", "JobFailedError", "JobExpiredError", "JobNotFoundError", "JobTimeoutError",
    "JobSubmissionError", "scrub_secrets", "plain_text", "package_logger", "PlainTextFilter",
    "DownloadError", "ChecksumMismatchError", "UnsafeFilenameError", "FolderBusyError",
    "OutputExistsError", "LockUnavailableError",
    "AccessDeniedWarning", "ServiceWarning", "redact_url",
    "IncompleteResultError", "IncompleteResultWarning", "PartitionedQueryError", "MissingDependencyError",
]


# C0 and C1 controls, DEL, and the line/paragraph separators; tab and newline are kept as text.
_TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f"                 # C0 but tab, newline; DEL; C1
                              "\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")  # separators, bidi


def plain_text(text):
    """Server text made safe to print: control characters shown as escapes, never obeyed.

    ESC sequences (colours, cursor moves, window titles, OSC 8 links), other C0/C1
    controls, DEL, bidirectional overrides and Unicode line separators become ``\\x1b``,
    ``\\u202e``... so a server's message can neither rewrite the terminal nor hide part of
    itself.  Tab and newline are kept.  ``None`` stays ``None``.
    """
    if text is None:
        return None
    text = str(text)
    return _TERMINAL_UNSAFE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


class PlainTextFilter(logging.Filter):
    """A log record's message with control characters escaped (`plain_text`): records carry
    server text (job phases, error answers), and handlers print them to terminals."""

    def filter(self, record):
        message = record.getMessage()
        shown = plain_text(message)
        if shown != message:
            record.msg, record.args = shown, None
        return True


def package_logger(name):
    """``logging.getLogger(name)`` with a `PlainTextFilter`: how every module of the package logs.

    A logger's filters apply only to the records it creates itself, so each module's logger
    carries one.
    """
    logger = logging.getLogger(name)
    if not any(isinstance(existing, PlainTextFilter) for existing in logger.filters):
        logger.addFilter(PlainTextFilter())
    return logger


def redact_url(url):
    """Return ``url`` safe to print: no user info, no query string, no fragment.

    The query string of an S3 presigned URL is its signature and a DataLink ``id=``
    value is an access token; both are credentials.
    """
    if not url:
        return url
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "..." if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


_SODA_JOB = re.compile(r"/data/async/[^/?#]+/?$")


def _transport_bases(status, cause):
    """The `requests` (and astroquery) classes an error made from ``status`` / ``cause`` also is."""
    if isinstance(cause, CasdaError):
        return cause._added_bases    # one of ours made from a requests failure: the same bases
    if isinstance(cause, requests.RequestException):
        bases = (type(cause),)
        if isinstance(cause, requests.Timeout):
            bases += (AstroqueryTimeoutError,)
        return bases
    if isinstance(status, int) and status >= 400:
        return (requests.HTTPError,)
    return ()


_VARIANTS = {}


def _variant(origin, bases):
    """``origin`` also deriving from ``bases``, made once; it keeps ``origin``'s name."""
    bases = tuple(base for base in bases if not issubclass(origin, base))
    if not bases:
        return origin
    key = (origin, bases)
    if key not in _VARIANTS:
        _VARIANTS[key] = type(origin.__name__, (origin, *bases),
                              {"__module__": origin.__module__, "__qualname__": origin.__qualname__,
                               "__doc__": origin.__doc__, "_origin": origin, "_added_bases": bases})
    return _VARIANTS[key]


def _allocate(cls, args):
    # OSError (the base of requests' exceptions) has its own constructor, which Python
    # insists on for every class deriving from it
    return (OSError if issubclass(cls, OSError) else Exception).__new__(cls, *args)


def _rebuild(origin, bases, args):
    """Unpickle a variant made by `_variant` (pickle finds classes by name: the name is ``origin``'s)."""
    error = _allocate(_variant(origin, bases), args)
    error.args = args
    return error


class CasdaError(Exception):
    """Base class for errors raised by astroquery_casda_ext.

    An error given ``status=`` (an HTTP error status) or ``cause=`` (a `requests` exception)
    is made as a subclass that also derives from the matching `requests` exception, the way
    a caller of ``astroquery.casda`` saw it (see the module docstring).
    """

    _origin = None
    _added_bases = ()

    def __new__(cls, *args, status=None, cause=None, **kwargs):
        return _allocate(_variant(cls, _transport_bases(status, cause)), args)

    def __init__(self, *args, status=None, cause=None, response=None):
        super().__init__(*args)
        if status is not None:
            self.status = status
        if response is not None or cause is not None:
            self.response = response if response is not None else getattr(cause, "response", None)

    def __reduce__(self):
        if self._origin is None or type(self)._origin is None:
            return super().__reduce__()
        return _rebuild, (self._origin, self._added_bases, self.args), self.__dict__


# --- bad input: raised before anything is sent --------------------------------------------

class InvalidInputError(CasdaError, InvalidQueryError, ValueError):
    """An argument was rejected before any request was sent."""


class InvalidRegionError(InvalidInputError):
    """Coordinates, a radius, a box or a polygon is malformed or out of range."""


class InvalidSpectralRangeError(InvalidInputError):
    """A band, channel range or polarisation is malformed."""


class InvalidTableError(InvalidInputError):
    """A table of products is empty or lacks a column the call needs."""


class InvalidSourceListError(InvalidInputError):
    """A source-list file could not be read or has a malformed line."""


class InvalidURLError(InvalidInputError):
    """A URL (e.g. a job URL) is not one this client can use."""


# --- credentials ------------------------------------------------------------------------------

class NotLoggedInError(CasdaError, LoginError, ValueError):
    """The call needs an OPAL login; call ``Casda.login()`` first."""


class CasdaLoginError(CasdaError, LoginError):
    """CASDA rejected the credentials; the message carries the server's answer."""


class InsecureTransportError(CasdaError):
    """Credentials would have been sent over plain HTTP to a host that is not loopback."""


# --- the service said no ----------------------------------------------------------------------

class ServiceError(CasdaError, RemoteServiceError):
    """CASDA answered with an error, or could not be reached.

    Attributes
    ----------
    url : str
        The redacted URL of the request.
    status : int or None
        The HTTP status, if the error came as one.
    server_message : str
        The server's own words.
    response : `requests.Response` or None
        The answer, when there was one (as on `requests.HTTPError`).
    """

    def __init__(self, message, *, url=None, status=None, server_message=None, cause=None, response=None):
        super().__init__(message)
        self.url = redact_url(url)
        self.status = status
        self.server_message = server_message if server_message is not None else message
        self.response = response if response is not None else getattr(cause, "response", None)


class NameResolverUnavailableError(InvalidRegionError, ServiceError):
    """An object name could not be resolved because the name resolver (Sesame) did not answer.

    Still an `InvalidRegionError` (the position could not be read, and nothing was sent to
    CASDA), but also a `ServiceError`: the name may be right, and the network is what failed
    (the command line exits with its "service error" code, not "usage error").
    """


class QueryError(ServiceError, InvalidQueryError):
    """A TAP or SIA2 query came back with ``QUERY_STATUS=ERROR``."""


# --- catalogue-scale TAP (tap/) -------------------------------------------------------------

class MissingDependencyError(CasdaError, ImportError):
    """An optional package the call needs is not installed; the message says how to install it.

    Raised before anything is sent (the command line answers it as a usage error, exit 2).
    """


class IncompleteResultError(ServiceError):
    """A TAP result broke off before its end (CASDA's CSV has no end marker: we check).

    Nothing partial is kept: the output file is not created.  Run the query again; a
    partitioned query resumes from its finished parts.
    """


class PartitionedQueryError(ServiceError):
    """Some parts of a partitioned TAP query failed; ``failed`` maps part number -> error.

    The finished parts are kept and recorded: the same call again resumes from them.
    """

    def __init__(self, message, *, failed=None, **kwargs):
        super().__init__(message, **kwargs)
        self.failed = dict(failed or {})


class IncompleteResultWarning(MaxResultsWarning):
    """A TAP result stopped at MAXREC (or the server's limit): there are more rows."""


class DataLinkError(ServiceError):
    """A DataLink request failed as a whole (fault document or HTTP error)."""


class NoAccessError(CasdaError, ValueError):
    """None of the requested products can be accessed by this user.

    ``denied`` maps each product id to the server's message.
    """

    def __init__(self, message, denied=None):
        super().__init__(message)
        self.denied = dict(denied or {})


# --- jobs -------------------------------------------------------------------------------------

class JobError(CasdaError, ValueError):
    """A SODA/UWS job could not be used.

    Attributes
    ----------
    job_url : str or None
        The job's URL: all that is needed to find it again.
    resume : str or None
        The call that picks the job up again, e.g. ``Casda.load_job('https://.../data/async/1a2b')``;
        the message says it too while the job may still be running.
    job_urls : list of str
        Every job of the call that failed (several for a large ``stage_data``).
    phase, server_message : str or None
        The job's last phase and the server's own words.
    """

    #: Whether the job can still be waited for (not once it failed, expired or is gone).
    resumable = True

    def __init__(self, message, *, job_url=None, phase=None, server_message=None, job_urls=None,
                 status=None, cause=None, response=None):
        #: What went wrong, without the hint on resuming.
        self.reason = message
        self.job_url = job_url
        # only SODA jobs are picked up by load_job (a TAP job is the query's own business)
        self.resume = f"Casda.load_job({job_url!r})" if job_url and _SODA_JOB.search(str(job_url)) else None
        if self.resume and self.resumable and "load_job(" not in message:
            message = f"{message.rstrip('. ')}; the job is kept on CASDA: resume it with {self.resume}"
        super().__init__(message)
        self.phase = phase
        self.server_message = server_message
        self.job_urls = list(job_urls) if job_urls else ([job_url] if job_url else [])
        self.status = status
        self.response = response if response is not None else getattr(cause, "response", None)


class JobFailedError(JobError, RemoteServiceError):
    """The job ended in ERROR or ABORTED; ``server_message`` is its errorSummary."""

    resumable = False


class JobExpiredError(JobError):
    """The job has expired on the server (HTTP 410): stage the data again."""

    resumable = False


class JobNotFoundError(JobError):
    """The server does not know this job (HTTP 404)."""

    resumable = False


class JobTimeoutError(JobError, AstroqueryTimeoutError, TimeoutError):
    """The job did not finish within the allowed time. It is still running; resume it by URL."""


class JobSubmissionError(JobError):
    """Creating or starting one of a call's jobs failed.

    ``jobs`` (and ``job_urls``) are the jobs made before the failure: aborted with
    ``on_error="abort"`` (the default; the message names any that could not be), still
    running with ``on_error="keep"``.
    """

    resumable = False

    def __init__(self, message, *, jobs=(), **kwargs):
        super().__init__(message, **kwargs)
        self.jobs = list(jobs)


def scrub_secrets(text, secrets):
    """``text`` with every one of ``secrets`` (passwords, Basic values, tokens) replaced by ``***``.

    For server text that reaches an exception or a log: a server may echo what it was sent.
    """
    if not text:
        return text
    for secret in sorted((value for value in secrets if value and len(value) >= 3), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


# --- downloads --------------------------------------------------------------------------------

class DownloadError(CasdaError, OSError):
    """A file could not be downloaded and verified. Retrying the call resumes it."""

    def __init__(self, message, *, url=None, path=None, status=None, cause=None, response=None):
        super().__init__(message, status=status, cause=cause, response=response)
        self.url = redact_url(url)
        self.path = path


class ChecksumMismatchError(DownloadError):
    """A downloaded file did not match CASDA's ``.checksum``, twice. It was not kept."""


class UnsafeFilenameError(DownloadError, InvalidInputError):
    """A server-supplied file name would have escaped the download directory."""


class FolderBusyError(DownloadError):
    """Another download is writing into the same folder (raised at once with ``no_wait``)."""


class OutputExistsError(DownloadError, InvalidInputError, FileExistsError):
    """An output file exists, or another run is writing it: not overwritten.

    Raised by every writer of the package (``writer.atomic_output``): TAP outputs, the
    command line's ``-o FILE``, plots, downloads.  Pass ``overwrite=True`` (``--overwrite``)
    to replace a finished file; a file another run is still writing is never replaced.
    """


class LockUnavailableError(DownloadError):
    """The file system refuses locks (``flock``: NFS without lockd, Lustre ``noflock``).

    ``path`` is the folder.  Raised at once instead of waiting for a lock that can never be
    granted; use a folder on a file system with locking.
    """


# --- warnings ---------------------------------------------------------------------------------

class AccessDeniedWarning(AstropyWarning):
    """Some products were skipped because the user may not access them."""


class ServiceWarning(AstropyWarning):
    """The service reported something worth knowing that is not an error (e.g. an error file)."""
