"""Verification: the checksum that decides COMPLETE is the checksum of the bytes on disk.

`Sink` writes each block to the ``.part`` file descriptor the transfer holds and only then
hashes that block, so the accumulator describes exactly the bytes written through that
descriptor; a resumed prefix is hashed by reading the same descriptor (`hash_prefix`).
Before the rename, `Sink`'s owner checks that the path still names the descriptor's file
and that its size is the size hashed (`naming.same_file`), so the file renamed is the
file verified.
"""
import os
import queue
import stat
import threading

from ..checksum import ChecksumAccumulator

__all__ = []

#: Bytes read per step when hashing a file on disk.
HASH_BLOCK = 4 << 20
#: Smallest receive buffer.
MIN_BLOCK = 64 << 10


def hash_prefix(fd, length):
    """A `ChecksumAccumulator` over the first ``length`` bytes of the open file ``fd``."""
    accumulator = ChecksumAccumulator()
    position = 0
    while position < length:
        block = _pread(fd, min(HASH_BLOCK, length - position), position)
        if not block:
            break
        accumulator.update(block)
        position += len(block)
    return accumulator


def _pread(fd, size, offset):
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)      # Windows has no pread; the Sink seeks before writing
    return os.read(fd, size)


def matches(path, expected):
    """Whether the regular file (not a link) at ``path`` has exactly the ``expected`` checksum."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != expected.size:
            return False
        return not expected.mismatches(hash_prefix(fd, info.st_size).result())
    finally:
        os.close(fd)


def block_size(chunk_size, expected_bytes):
    """Bytes per buffer: ``chunk_size``, or less for a body announced to be smaller.

    A buffer is zero-filled when it is made, so a 50 kB file in 8 MiB buffers would
    cost three 8 MiB allocations; one byte more than announced lets a longer body show.
    """
    if expected_bytes is None:
        return chunk_size
    return min(chunk_size, max(MIN_BLOCK, expected_bytes + 1))


class Sink:
    """Writes blocks to an open ``.part`` at ``offset`` and feeds them to a `ChecksumAccumulator`.

    Blocks come from a small ring of reused buffers (memory: ``depth`` chunks). With an
    idle core (``config.hash_in_thread``) the hashing runs on a helper thread: CRC-32 and
    SHA-1 release the GIL, so CRC-32 and SHA-1 of one block overlap receiving and
    writing the next. Each block is written before it is hashed, and leaving the
    ``with`` block waits for the hashing, so the accumulator then describes exactly the
    bytes in the file, whether the transfer ended well or not.
    """

    def __init__(self, fd, offset, accumulator, config, depth=3, expected_bytes=None):
        self._fd, self._offset, self._accumulator = fd, offset, accumulator
        threaded = config.hash_in_thread
        self._free = queue.SimpleQueue()
        for _ in range(depth if threaded else 1):
            self._free.put(memoryview(bytearray(block_size(config.chunk_size, expected_bytes))))
        self._work = queue.SimpleQueue() if threaded else None
        self._thread = (threading.Thread(target=self._run, name="casda-hash", daemon=True)
                        if threaded else None)
        self._failure = None

    def __enter__(self):
        if os.fstat(self._fd).st_size != self._offset:
            # Only when there is something to cut: on ext4 (auto_da_alloc) a file truncated to
            # zero is flushed when it is closed, which costs 0.25 s per GB of a fresh .part.
            os.ftruncate(self._fd, self._offset)
        os.lseek(self._fd, self._offset, os.SEEK_SET)
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info):
        if self._thread is not None:
            self._work.put(None)
            self._thread.join()
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

    def give_back(self, view):
        """Return an unused block to the ring."""
        self._free.put(memoryview(view.obj))

    def _run(self):
        while (view := self._work.get()) is not None:
            if self._failure is None:
                try:
                    self._accumulator.update(view)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the transfer's thread
                    self._failure = exc
            self._free.put(memoryview(view.obj))
