"""The one safe writer: every file the package writes goes through this module.

Downloads (their ``.part``, final name and ``.checksum``), the download manifest, TAP
outputs (``query_tap(output=...)``), partition parts and the partition manifest, the
command line's ``-o FILE`` and plots are all written here, under one set of rules:

- **Claim, then write.**  An output ``NAME`` is written into a temporary
  ``.NAME.casda.tmp`` in the same folder, created with ``O_EXCL | O_NOFOLLOW`` and held
  under an exclusive ``flock`` for as long as it is written.  That temporary *is* the
  claim: a second writer of the same output (another thread, process or host) finds it
  held and is refused at once (`~astroquery_casda_ext.errors.OutputExistsError`); a
  temporary left by a killed run holds no lock and is taken over.
- **Rename that never follows a link.**  A symbolic link (or anything but a regular file)
  at the output is refused, never followed or replaced
  (`~astroquery_casda_ext.errors.UnsafeFilenameError`).  The finished temporary is
  renamed onto the output atomically: with ``overwrite`` by ``rename``, without it by
  ``link`` then ``unlink``, which cannot replace a file that appeared meanwhile.
- **No silent overwrite.**  An output that exists is refused unless the caller passed
  ``overwrite=True``.
- **Reserved names.**  The names the package itself uses (``RESERVED_NAMES``: the
  download manifest, the folder lock, the partition manifest; and every name ending in
  ``RESERVED_SUFFIXES`` or starting with ``.casda`` or ``casda_manifest``) are refused
  wherever a name comes from a server or a caller (`refuse_reserved`): the URL path,
  ``Content-Disposition``, an explicit name.
- **Locks that cannot be taken are errors.**  Where the file system refuses ``flock``
  (NFS without lockd, Lustre mounted ``noflock``: ``ENOLCK``, ``EOPNOTSUPP``,
  ``ENOSYS``), `~astroquery_casda_ext.errors.LockUnavailableError` names the folder at
  once; nothing waits for a lock that can never be granted.

API
---
``atomic_output(path, *, overwrite=False, package_file=False)``
    Context manager yielding a binary file object; the output appears, complete, when the
    block ends without an exception, and nothing appears otherwise.  Only the package's
    own files (``package_file=True``) may have reserved names.
``write_bytes(path, data, *, overwrite=False, package_file=False)``
    The same for bytes in memory.
``FolderLock(folder, *, wait=True)``
    One writer per folder (downloads, partitioned TAP outputs), across processes and hosts.
``refuse_reserved(name, *, url=None, source=...)``, ``is_reserved(name)``
    The reserved-name check.
``open_part``, ``same_file``, ``place``, ``refuse_link``, ``is_regular_file``
    The link-safe primitives downloads use for their resumable ``.part`` files (whose
    claim is the folder lock and the run's `~astroquery_casda_ext.download.Claims`).
``plain_text(text)`` (from ``astroquery_casda_ext.errors``)
    Server text made safe for a line-based file or a terminal (control characters escaped).
"""
import contextlib
import errno
import hashlib
import os
import re
import socket
import stat
import threading
import time
import unicodedata
from datetime import datetime, timezone
from pathlib import Path

from .errors import (FolderBusyError, LockUnavailableError, OutputExistsError, UnsafeFilenameError,
                     package_logger, plain_text, redact_url)

try:
    import fcntl
except ImportError:   # Windows: filelock's msvcrt locking for folders; O_EXCL alone for claims
    fcntl = None

__all__ = ["atomic_output", "write_bytes", "FolderLock", "refuse_reserved", "is_reserved",
           "RESERVED_NAMES", "RESERVED_SUFFIXES", "MANIFEST_NAME", "LOCK_NAME", "PARTITION_MANIFEST_NAME"]

log = package_logger(__name__.rsplit(".", 1)[0])

#: The download manifest `~astroquery_casda_ext.download.Manifest` saves into a download folder.
MANIFEST_NAME = "casda_manifest.ecsv"
#: The folder lock (downloads and partitioned TAP outputs).
LOCK_NAME = ".casda-download.lock"
#: The manifest of a partitioned TAP output.
PARTITION_MANIFEST_NAME = "_casda_partitions.json"
#: Names the package writes for itself; no server or caller may choose them.
RESERVED_NAMES = (MANIFEST_NAME, LOCK_NAME, PARTITION_MANIFEST_NAME)
#: Endings of the package's temporaries (``.part``, its validator, claims, locks).
RESERVED_SUFFIXES = (".part", ".part.validator", ".tmp", ".lock")
#: The ending of the claimed temporary `atomic_output` writes into.
CLAIM_SUFFIX = ".casda.tmp"

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
#: errno values of a file system that does not do ``flock`` at all (as opposed to "held").
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_HELD = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}


# --- reserved names -----------------------------------------------------------------------------

def _fold(name):
    return unicodedata.normalize("NFC", name).casefold()


_RESERVED_KEYS = {_fold(name) for name in RESERVED_NAMES}


def is_reserved(name):
    """Whether ``name`` is one the package uses for itself (compared ignoring case)."""
    key = _fold(name)
    return (key in _RESERVED_KEYS or key.endswith(RESERVED_SUFFIXES) or key.startswith(".casda")
            or key.startswith("casda_manifest"))


def refuse_reserved(name, *, url=None, source="the server's"):
    """Return ``name``, or raise `~astroquery_casda_ext.errors.UnsafeFilenameError` if it is reserved.

    Parameters
    ----------
    name : str
        A plain file name (already checked by `~astroquery_casda_ext.download.safe_filename`).
    url : str, optional
        Where the name came from (named, redacted, in the message).
    source : str
        Whose name it is, for the message: ``"the server's"``, ``"the URL's"``, ``"the given"``.
    """
    if is_reserved(name):
        raise UnsafeFilenameError(
            f"refusing {source} file name {name!r} for {redact_url(url)}: it is a name the package uses for "
            f"itself (its manifests, folder lock and temporaries: {', '.join(RESERVED_NAMES)}, "
            f"*{', *'.join(RESERVED_SUFFIXES)}, .casda*)", url=url)
    return name


# --- link-safe primitives -----------------------------------------------------------------------

def is_regular_file(path):
    """True for a regular file that is not a symbolic link."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def refuse_link(path):
    """Raise `~astroquery_casda_ext.errors.UnsafeFilenameError` if ``path`` is a link or not a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise UnsafeFilenameError(f"{str(path)!r} is {kind}; it is neither followed nor replaced",
                                  path=str(path))


def _own_plain_file(fd, path):
    """Close ``fd`` and raise unless it is a regular file with no second hard link."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or (not _NOFOLLOW and os.path.islink(path)):
        os.close(fd)
        raise UnsafeFilenameError(f"{Path(path).name!r} is not a plain file of its own; it is not written",
                                  path=str(path))


def _open_existing(path, flags):
    try:
        return os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise UnsafeFilenameError(f"{str(path)!r} is a symbolic link; it is not followed",
                                      path=str(path)) from None
        raise


def open_part(path):
    """Open (creating exclusively if absent) a ``.part`` for reading and writing; ``(fd, created)``.

    Never through a symbolic link (``O_NOFOLLOW``, then a check of what was opened), and
    never a file with a second hard link (writing it would change the other name too).
    """
    flags = os.O_RDWR | _NOFOLLOW | _CLOEXEC | _BINARY
    try:
        fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        fd, created = _open_existing(path, flags), False
    _own_plain_file(fd, path)
    return fd, created


def same_file(fd, path):
    """Whether ``path`` (not followed) still names the open file ``fd``."""
    try:
        named, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino) and stat.S_ISREG(named.st_mode)


def place(source, target, *, replace):
    """Rename ``source`` to ``target`` in one directory, never through or over a link.

    With ``replace`` an existing regular file at ``target`` is replaced; without it an
    existing ``target`` raises ``FileExistsError`` (``os.link`` then unlink: an atomic
    no-replace rename on POSIX).
    """
    refuse_link(target)
    if replace:
        os.replace(source, target)
        return
    try:
        os.link(source, target)           # source is our own temporary, never a link
    except FileExistsError:
        raise
    except OSError:                       # no hard links here (FAT, some network file systems)
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.replace(source, target)
        return
    os.unlink(source)


# --- flock, with a clear error where the file system has none -------------------------------------

_held_here = set()          # (device, inode) of files this process holds a flock on
_held_lock = threading.Lock()


def _flock(fd, path, what):
    """Try an exclusive, non-blocking flock on ``fd``: True if taken, False if another holds it.

    Linux NFS clients emulate flock with POSIX locks, which are per process, so a lock
    this process already holds is also recorded in a process-wide table.

    Raises
    ------
    LockUnavailableError
        The file system refuses locks (``ENOLCK``, ``EOPNOTSUPP``, ``ENOSYS``).
    """
    if fcntl is None:
        return True
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    with _held_lock:
        if key in _held_here:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _HELD:
                return False
            folder = Path(path).parent
            if exc.errno in _NO_LOCKS:
                raise LockUnavailableError(
                    f"cannot lock {what} in {folder}: the file system refuses locks ({os.strerror(exc.errno)}; "
                    "NFS without lockd, or Lustre mounted noflock?). Use a folder on a file system with "
                    "locking (local disk, NFS with lockd, Lustre with flock)", path=str(folder)) from None
            raise LockUnavailableError(f"cannot lock {what} in {folder}: {exc}", path=str(folder)) from None
        _held_here.add(key)
    return True


def _unflock(fd):
    if fcntl is None:
        return
    with contextlib.suppress(OSError):
        info = os.fstat(fd)
        with _held_lock:
            _held_here.discard((info.st_dev, info.st_ino))


# --- claims and atomic outputs ------------------------------------------------------------------

def claim_path(path):
    """The claimed temporary `atomic_output` writes ``path`` into (same folder, hidden)."""
    path = Path(path)
    name = f".{path.name}{CLAIM_SUFFIX}"
    if len(name.encode("utf-8", "surrogateescape")) > 255:    # a long name: a short, stable stand-in
        name = f".{hashlib.sha1(path.name.encode('utf-8', 'surrogateescape')).hexdigest()}{CLAIM_SUFFIX}"
    return path.with_name(name)


def _claim(path):
    """Create (or take over from a killed run) and lock the temporary of ``path``; its fd."""
    temporary = claim_path(path)
    flags = os.O_RDWR | _NOFOLLOW | _CLOEXEC | _BINARY
    for _ in range(5):      # only a claim renamed away under us, again and again, repeats
        try:
            fd, created = os.open(temporary, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            try:
                fd, created = _open_existing(temporary, flags), False
            except FileNotFoundError:
                continue          # the holder just finished: claim again
        _own_plain_file(fd, temporary)
        if fcntl is None and not created:     # no flock to tell a live claim from a dead one
            os.close(fd)
            raise OutputExistsError(f"{str(path)!r} is being written by another run (it holds "
                                    f"{temporary.name}; remove that file if no run is writing)",
                                    path=str(path))
        try:
            taken = _flock(fd, temporary, f"{path.name!r}")
        except BaseException:
            if created and same_file(fd, temporary):
                os.unlink(temporary)      # no lock to be had here: leave nothing behind
            os.close(fd)
            raise
        if not taken:
            os.close(fd)
            raise OutputExistsError(f"{str(path)!r} is being written by another run (it holds "
                                    f"{temporary.name}); not written twice", path=str(path))
        if not same_file(fd, temporary):      # renamed into place by its holder as we locked it
            _unflock(fd)
            os.close(fd)
            continue
        if os.fstat(fd).st_size:  # ours now: a killed run's leftovers start again from nothing
            os.ftruncate(fd, 0)     # (only then: ext4 flushes a file truncated to zero when closed)
        return fd, temporary
    raise OutputExistsError(f"{str(path)!r} is being written by other runs; not written", path=str(path))


@contextlib.contextmanager
def atomic_output(path, *, overwrite=False, package_file=False):
    """Write ``path`` safely: yield a binary file object; the output appears when the block ends.

    Parameters
    ----------
    path : str or path-like
        The output.  Its folder must exist.
    overwrite : bool
        Replace an existing (regular) file.  A link is never replaced.
    package_file : bool
        ``path`` is one of the package's own files (a manifest, a ``.part`` validator); any
        other output may not take a reserved name (`is_reserved`).

    Yields
    ------
    file object
        Binary, writable, readable and seekable: the claimed temporary.

    Raises
    ------
    OutputExistsError
        ``path`` exists (and not ``overwrite``), or another run is writing it.
    UnsafeFilenameError
        ``path`` or its temporary is a symbolic link, a directory or another special file,
        or ``path`` has a reserved name (and is not ``package_file``).
    LockUnavailableError
        The file system refuses ``flock``.
    """
    path = Path(path)
    if not package_file:
        refuse_reserved(path.name, source="the output's")
    refuse_link(path)
    fd, temporary = _claim(path)
    try:
        # checked under the claim: no other run of ours can create it until we are done
        if os.path.lexists(path) and not overwrite:
            raise OutputExistsError(f"{str(path)!r} already exists: pass overwrite=True (--overwrite) to "
                                    "replace it", path=str(path))
        with os.fdopen(os.dup(fd), "w+b") as stream:   # a second fd: the claim's flock stays with `fd`
            yield stream
        if not same_file(fd, temporary):
            raise OutputExistsError(f"{temporary.name} was replaced by someone else while {path.name!r} "
                                    "was written; not kept", path=str(path))
        try:
            place(temporary, path, replace=overwrite)
        except FileExistsError:
            raise OutputExistsError(f"{str(path)!r} appeared while it was written; not overwritten (pass "
                                    "overwrite=True to replace it)", path=str(path)) from None
    finally:
        if same_file(fd, temporary):
            os.unlink(temporary)
        _unflock(fd)
        os.close(fd)


def write_bytes(path, data, *, overwrite=False, package_file=False):
    """Write ``data`` to ``path`` through `atomic_output`; returns ``path`` as a str."""
    with atomic_output(path, overwrite=overwrite, package_file=package_file) as stream:
        stream.write(data)
    return str(path)


# --- one writer per folder ----------------------------------------------------------------------

class FolderLock:
    """An exclusive, advisory lock on a folder (``.casda-download.lock``), held for a run.

    On POSIX it is ``fcntl.flock`` on a descriptor opened without following links (a link
    planted at the lock's name is refused, never truncated through).  Linux NFS clients
    turn ``flock`` into POSIX byte-range locks the server arbitrates, so nodes of a cluster
    sharing the folder exclude each other too.  Where ``fcntl`` does not exist (Windows),
    ``filelock.FileLock`` does the locking.  Where the file system refuses locks,
    `~astroquery_casda_ext.errors.LockUnavailableError` names the folder at once.

    The lock file is removed on release.  A waiter that then wins the lock on the removed
    file sees that the name no longer leads to it and tries again, so two runs never both
    believe they hold the folder.

    Parameters
    ----------
    folder : str or path-like
    wait : bool
        Wait for another run to finish (True), or raise
        `~astroquery_casda_ext.errors.FolderBusyError` at once.
    poll : float
        Seconds between two tries while waiting.
    sleep : callable
        Waits between tries (injected by tests).
    what : str
        What holds the folder, for messages (``"download"``).
    """

    def __init__(self, folder, *, wait=True, poll=0.5, sleep=time.sleep, what="download"):
        self.path = Path(folder) / LOCK_NAME
        self.wait, self.poll, self._sleep, self.what = wait, poll, sleep, what
        self._fd = self._key = self._fallback = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc_info):
        self.release()

    def acquire(self):
        """Take the lock, waiting (with one message saying who holds it) unless ``wait`` is False."""
        told = False
        while True:
            if self._try():
                return
            holder = self._holder()
            if not self.wait:
                raise FolderBusyError(f"another {self.what} is writing into {self.path.parent} ({holder}); "
                                      "run again when it has finished, or without --no-wait / no_wait=True "
                                      "to wait for it", path=str(self.path.parent))
            if not told:
                log.warning("another %s is writing into %s (%s); waiting for it to finish "
                            "(no_wait=True or --no-wait fails at once instead)", self.what, self.path.parent,
                            holder)
                told = True
            self._sleep(self.poll)

    def _try(self):
        if fcntl is None:
            return self._try_filelock()
        flags = os.O_RDWR | _NOFOLLOW | _CLOEXEC
        try:
            try:
                fd, created = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                fd, created = os.open(self.path, flags), False
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeFilenameError(f"{self.path} is a symbolic link; the folder cannot be locked",
                                          path=str(self.path)) from None
            if isinstance(exc, FileNotFoundError) and os.path.isdir(self.path.parent):
                return False      # removed by its holder between our two opens: try again
            raise LockUnavailableError(f"cannot lock the folder {self.path.parent}: {exc}",
                                       path=str(self.path.parent)) from None
        try:
            taken = _flock(fd, self.path, "the folder")
        except BaseException:
            if created and same_file(fd, self.path):
                os.unlink(self.path)      # no lock to be had here: leave nothing behind
            os.close(fd)
            raise
        if not taken:
            os.close(fd)
            return False
        if not same_file(fd, self.path):
            _unflock(fd)
            os.close(fd)      # the holder removed the file as we waited: try the new one
            return False
        info = os.fstat(fd)
        self._fd, self._key = fd, (info.st_dev, info.st_ino)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if info.st_size:      # (only then: ext4 flushes a file truncated to zero when closed, 40 ms)
            os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        return True

    def _try_filelock(self):
        from filelock import FileLock, Timeout
        lock = FileLock(str(self.path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        self._fallback = lock
        return True

    def _holder(self):
        try:
            with open(self.path, "rb") as stream:     # reading only: a link here changes nothing
                text = stream.read(200).decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        return plain_text(text) or "holder unknown"

    def release(self):
        """Let the next run in; removes the lock file (see the class docstring)."""
        if self._fallback is not None:
            self._fallback.release()
            self._fallback = None
            return
        if self._fd is None:
            return
        fd, key = self._fd, self._key
        self._fd = self._key = None
        try:
            named = os.lstat(self.path)
            if (named.st_dev, named.st_ino) == key:
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            _unflock(fd)
            os.close(fd)   # closing releases the flock
