"""Local names: what each URL is called on disk and the claims that keep names apart.  The
file-system operations that never follow or replace a link, and the names reserved for the
package's own files, live in the package's one writer (``writer.py``).

Every path a download writes is *claimed* (`Claims`) before anything is written: a file's
final name, its ``.part``, the ``.part.validator`` fallback, its ``.checksum`` sidecar, and
later any name the server gives in ``Content-Disposition``.  Names are compared the way
a case-insensitive file system would on macOS and Windows.  A second claim of a taken name
is refused, so two files can never end up at one path: the later one becomes an error
row of the manifest, and nothing of it is written.
"""
import os
import re
import sys
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from ..checksum import Checksum
from ..errors import DownloadError, UnsafeFilenameError, redact_url
# The link-safe file operations live in the one writer; imported here for the transfer loop.
from ..writer import (is_regular_file, open_part, place, refuse_link, refuse_reserved,  # noqa: F401
                      same_file, write_bytes)

__all__ = []

CHECKSUM_SUFFIX = ".checksum"
#: The partial file a transfer writes into and resumes from.
PART_SUFFIX = ".part"
#: Where a resume validator is kept when the file system has no extended attributes.
VALIDATOR_SUFFIX = ".part.validator"

# Kinds of manifest rows.
DATA, ERROR_FILE, CHECKSUM_ONLY = "data", "error-file", "checksum"

_CASE_BLIND = sys.platform in ("darwin", "win32")


# --- names from the server ----------------------------------------------------------------------

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


def _breaks_text(name):
    """Whether ``name`` holds a character that breaks a line-based text format or a terminal:
    C0/C1 controls (NUL, newline, ESC...), DEL, U+2028/U+2029, surrogates, bidi overrides."""
    return bool(_CONTROL_CHARS.search(name)) or any(
        unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs") or char in _BIDI_CONTROLS for char in name)


_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def safe_filename(name, *, url=None):
    """Check that ``name`` is a plain file name, and return it.

    Raises
    ------
    UnsafeFilenameError
        If the name is empty, ``.`` or ``..``, contains a path separator (``/`` or ``\\``),
        a NUL or another control character (C0, C1, DEL), a line or paragraph separator
        (U+2028, U+2029: they break the manifest's text format), a lone surrogate or a
        bidirectional override, is absolute, or is longer than 255 bytes.
    """
    if name is None or not name.strip():
        raise UnsafeFilenameError(f"empty file name for {redact_url(url)}", url=url)
    if (name in (".", "..") or "/" in name or "\\" in name or _breaks_text(name)
            or os.path.isabs(name) or len(name.encode("utf-8", "surrogateescape")) > 255):
        raise UnsafeFilenameError(f"refusing unsafe file name {name!r} for {redact_url(url)}", url=url)
    if os.name == "nt":
        name = name.replace(":", "_")   # as astroquery.casda does: ':' is not allowed on Windows
    return name


def server_filename(name, *, url=None):
    """A name from ``Content-Disposition``: `safe_filename`, and not a name the package uses."""
    return refuse_reserved(safe_filename(name, url=url), url=url, source="the server's")


# --- claims -------------------------------------------------------------------------------------

def _key(name):
    """Two names that one file system could take for the same file have the same key."""
    name = unicodedata.normalize("NFC", name)
    return name.casefold() if _CASE_BLIND else name


class Claims:
    """The local names of one run, each owned by one file (thread-safe).

    Parameters
    ----------
    savedir : str
        The download directory.
    """

    def __init__(self, savedir):
        self.savedir = str(savedir)
        self._owners = {}
        self._lock = threading.Lock()

    def claim(self, names, owner, *, url=None):
        """Claim every name in ``names`` for ``owner``, or none of them.

        Raises
        ------
        DownloadError
            If one of the names (or a name differing only in case, where the file system
            ignores case) is already claimed by another owner.
        """
        names = [name for name in names if name]
        with self._lock:
            for name in names:
                holder = self._owners.get(_key(name))
                if holder is not None and holder[0] != owner:
                    raise DownloadError(
                        f"{name!r} is also a local name of {redact_url(holder[1])}; not overwritten "
                        "(download them into different directories)", url=url,
                        path=os.path.join(self.savedir, name))
            for name in names:
                self._owners[_key(name)] = (owner, url)

    def owned(self, name, owner):
        """Whether ``owner`` holds ``name``."""
        with self._lock:
            holder = self._owners.get(_key(name))
        return holder is not None and holder[0] == owner


def planned_names(task):
    """Every name a task may write before the server has answered."""
    names = [task.name, task.name + PART_SUFFIX, task.name + VALIDATOR_SUFFIX]
    return names + ([task.checksum_name] if task.checksum_name else [])


# --- file-system operations: the package's one safe writer (writer.py) -------------------------

def write_file(path, data, *, replace=True, package_file=False):
    """Write ``data`` to ``path`` atomically through the package's one writer (``writer.write_bytes``)."""
    return write_bytes(path, data, overwrite=replace, package_file=package_file)


# --- planning -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileTask:
    """One file to fetch: where from, where to, and what it must hash to (picklable)."""

    index: int                       #: row number in the manifest
    url: str                         #: the data URL (a credential when presigned: never print it)
    savedir: str                     #: absolute download directory
    name: str                        #: local file name, from the URL (or chosen by the caller)
    checksum_url: str | None = None  #: its ``.checksum`` sidecar, if any
    checksum_name: str | None = None
    product_id: str = ""
    result_id: str = ""
    kind: str = DATA                 #: "data", "error-file" or "checksum" (a sidecar alone)
    expected: Checksum | None = None  #: filled in once the sidecar has been read
    size: int | None = None          #: the size announced before the transfer (DataLink), if any
    named_by_caller: bool = False    #: the caller chose ``name``: the server's name is not used
    labels: tuple = ()               #: (column, value) pairs the manifest writes as extra columns

    @property
    def path(self):
        return os.path.join(self.savedir, self.name)

    @property
    def part_path(self):
        return self.path + PART_SUFFIX

    @property
    def checksum_path(self):
        return os.path.join(self.savedir, self.checksum_name) if self.checksum_name else ""


@dataclass(frozen=True)
class _Item:
    url: str
    checksum_url: str | None
    product_id: str = ""
    result_id: str = ""
    size: int | None = None


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
            size = getattr(item, "size", None)
            entry = _Item(item.url, checksum_url, getattr(item, "product_id", None) or "",
                          getattr(item, "result_id", None) or "", int(size) if size else None)
            roles = ("data", "checksum") if checksum_url else ("data",)
        else:
            raise TypeError(f"cannot download a {type(item).__name__}: give URLs or ResultFile objects")
        if entry.url not in numbers:
            numbers[entry.url] = len(found)
            found.append(entry)
        refs.extend((numbers[entry.url], role) for role in roles)
    return found, refs


def _local_path(savedir, name, *, url=None):
    """``savedir / name``, after checking it cannot resolve to anywhere outside ``savedir``."""
    base = Path(savedir).resolve()
    path = base / safe_filename(name, url=url)
    if path.resolve().parent != base or os.path.islink(path):   # e.g. a symlink planted under that name
        raise UnsafeFilenameError(f"{name!r} would be written outside {base}", url=url, path=str(path))
    return path


def _task_for(item, index, savedir, name=None, labels=()):
    chosen = name is not None
    source = "the given" if chosen else "the URL's"
    name = refuse_reserved(safe_filename(name if chosen else filename_from_url(item.url), url=item.url),
                           url=item.url, source=source)
    checksum_name = None
    if item.checksum_url:
        checksum_name = (name + CHECKSUM_SUFFIX if chosen
                         else refuse_reserved(safe_filename(filename_from_url(item.checksum_url),
                                                            url=item.checksum_url),
                                              url=item.checksum_url, source="the URL's"))
    if _is_checksum_url(item.url) and not item.checksum_url:
        kind = CHECKSUM_ONLY
    elif (item.result_id or name).lower().startswith("error-"):
        kind = ERROR_FILE    # CASDA reports a cutout region that missed a cube as an error-NN result
    else:
        kind = DATA
    task = FileTask(index, item.url, savedir, name, item.checksum_url, checksum_name, item.product_id,
                    item.result_id, kind, size=item.size, named_by_caller=chosen, labels=tuple(labels))
    for local_name in planned_names(task):
        _local_path(savedir, local_name, url=item.url)
    return task


def _lookup(mapping, item):
    return mapping.get(item.url) if mapping else None


def plan_downloads(items, savedir=".", *, names=None, labels=None, claims=None):
    """Decide what to fetch and where, without touching the network.

    Parameters
    ----------
    items : iterable of str or ResultFile-like
        Download URLs (data files and their ``.checksum`` URLs, in any order), and/or
        objects with ``url``, ``checksum_url``, ``product_id`` and ``result_id`` (and
        optionally ``size``, the size announced by DataLink).
    savedir : str or path-like
        The download directory.
    names : dict, optional
        ``{data URL: local file name}`` for files the caller names; their sidecar becomes
        ``<name>.checksum`` and the server's ``Content-Disposition`` is not used.
    labels : dict, optional
        ``{data URL: {column: value}}``: extra manifest columns for those files.
    claims : Claims, optional
        Where the names are claimed (a new `Claims` if None).

    Returns
    -------
    tasks : list of FileTask
        One per distinct data file (a ``.checksum`` URL given alone counts as one).
    failures : list of FileResult
        Items refused before any download (an unsafe or clashing local name).
    refs : list of (int, str)
        For each given URL in order, the task index and ``"data"`` or ``"checksum"``.
    """
    from .manifest import FileResult
    savedir = str(Path(savedir or ".").resolve())
    claims = claims if claims is not None else Claims(savedir)
    found, refs = _normalise_items(items)
    tasks, failures = [], []
    for index, item in enumerate(found):
        item_labels = tuple((str(key), value) for key, value in (_lookup(labels, item) or {}).items())
        try:
            task = _task_for(item, index, savedir, _lookup(names, item), item_labels)
            claims.claim(planned_names(task), index, url=item.url)
        except DownloadError as exc:
            failures.append(FileResult(index, item.url, "", product_id=item.product_id,
                                       result_id=item.result_id, message=str(exc),
                                       error_type=type(exc).__name__, labels=item_labels))
        else:
            tasks.append(task)
    return tasks, failures, refs
