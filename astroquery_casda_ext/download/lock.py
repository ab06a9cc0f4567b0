"""One downloader per destination folder, across threads, processes and hosts.

`FolderLock` holds an advisory lock on ``<savedir>/.casda-download.lock`` for a whole run.
On POSIX it is ``fcntl.flock`` on a descriptor opened without following links (a link
planted at the lock's name is refused, never truncated through).  Linux NFS clients turn
``flock`` into POSIX byte-range locks the server arbitrates, so nodes of a cluster
sharing the folder exclude each other too; since those are per process, a lock already
held in this process is also recorded in a process-wide table.  Where ``fcntl`` does not
exist (Windows), `filelock.FileLock` does the locking.

The lock file is removed on release.  A waiter that then wins the lock on the removed
file sees that the name no longer leads to it and tries again, so two runs never both
believe they hold the folder.
"""
import errno
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ..errors import DownloadError, FolderBusyError, UnsafeFilenameError

try:
    import fcntl
except ImportError:   # Windows: filelock's msvcrt locking instead
    fcntl = None

__all__ = []

log = logging.getLogger(__name__.rsplit(".", 1)[0])

#: Name of the lock file in the download directory.
LOCK_NAME = ".casda-download.lock"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

_held_here = set()          # lock files (device, inode) this process holds
_held_lock = threading.Lock()


class FolderLock:
    """An exclusive, advisory lock on a download directory, held for a run.

    Parameters
    ----------
    savedir : str or path-like
    wait : bool
        Wait for another run to finish (True), or raise `FolderBusyError` at once.
    poll : float
        Seconds between two tries while waiting.
    sleep : callable
        Waits between tries (injected by tests).
    """

    def __init__(self, savedir, *, wait=True, poll=0.5, sleep=time.sleep):
        self.path = Path(savedir) / LOCK_NAME
        self.wait, self.poll, self._sleep = wait, poll, sleep
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
                raise FolderBusyError(f"another download is writing into {self.path.parent} ({holder}); "
                                      "run again when it has finished, or without --no-wait / no_wait=True "
                                      "to wait for it", path=str(self.path.parent))
            if not told:
                log.warning("another download is writing into %s (%s); waiting for it to finish "
                            "(no_wait=True or --no-wait fails at once instead)", self.path.parent, holder)
                told = True
            self._sleep(self.poll)

    def _try(self):
        if fcntl is None:
            return self._try_filelock()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeFilenameError(f"{self.path} is a symbolic link; the download directory cannot "
                                          "be locked", path=str(self.path)) from None
            raise DownloadError(f"cannot lock the download directory {self.path.parent}: {exc}",
                                path=str(self.path.parent)) from None
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        with _held_lock:
            if key in _held_here:
                os.close(fd)
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            try:
                named = os.lstat(self.path)
            except FileNotFoundError:
                named = None
            if named is None or (named.st_dev, named.st_ino) != key:
                os.close(fd)      # the holder removed the file as we waited: try the new one
                return False
            _held_here.add(key)
        self._fd, self._key = fd, key
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if os.fstat(fd).st_size:     # (a file truncated to zero is flushed on close by ext4: 40 ms)
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
        return text or "holder unknown"

    def release(self):
        """Let the next run in; removes the lock file (see the module docstring)."""
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
            with _held_lock:
                _held_here.discard(key)
            os.close(fd)   # closing releases the flock
