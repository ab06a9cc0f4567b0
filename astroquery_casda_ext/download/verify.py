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

    Blocks come from a small ring of reused buffers (memory: ``depth`` chunks), so nothing
    is allocated per read. With an idle core (``config.hash_in_thread``) a block goes
    through two helper threads in turn: one writes it (``os.write``), the next hashes it
    (CRC-32 and SHA-1), while the transfer's thread receives the next blocks. Receiving,
    writing and hashing each release the GIL, so the three overlap; on two cores receiving
    and writing one after the other in one thread, as a bare loop does, is what limits
    the rate. Each block is hashed only after it was written in full, and leaving the
    ``with`` block waits for every block handed over, so the accumulator then describes
    exactly the bytes in the file, whether the transfer ended well or not.

    A failure of a helper (the disk is full) is raised in the transfer's thread at its
    next `free_block` or `put`, or when the ``with`` block is left: the same exception
    the write raised.
    """

    def __init__(self, fd, offset, accumulator, config, depth=4, expected_bytes=None):
        self._fd, self._offset, self._accumulator = fd, offset, accumulator
        threaded = config.hash_in_thread
        self._free = queue.SimpleQueue()
        for _ in range(depth if threaded else 1):
            self._free.put(memoryview(bytearray(block_size(config.chunk_size, expected_bytes))))
        self._writes = queue.SimpleQueue() if threaded else None
        self._hashes = queue.SimpleQueue() if threaded else None
        self._threads = [threading.Thread(target=self._write_blocks, name="casda-write", daemon=True),
                         threading.Thread(target=self._hash_blocks, name="casda-hash", daemon=True)
                         ] if threaded else []
        self._failure = None

    def __enter__(self):
        if os.fstat(self._fd).st_size != self._offset:
            # Only when there is something to cut: on ext4 (auto_da_alloc) a file truncated to
            # zero is flushed when it is closed, which costs 0.25 s per GB of a fresh .part.
            os.ftruncate(self._fd, self._offset)
        os.lseek(self._fd, self._offset, os.SEEK_SET)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        if self._threads:
            self._writes.put(None)
            for thread in self._threads:
                thread.join()
        if self._failure is not None and exc_info[0] is None:
            raise self._failure

    def free_block(self):
        """A buffer to read into (waits while every buffer is being written or hashed)."""
        block = self._free.get()
        if self._failure is not None:
            self._free.put(block)
            raise self._failure
        return block

    def put(self, view):
        """Write ``view`` (a prefix of a block from `free_block`), then hash it."""
        if self._writes is not None:
            self._writes.put(view)
            return
        self._write(view)
        self._accumulator.update(view)
        self._free.put(memoryview(view.obj))

    def give_back(self, view):
        """Return an unused block to the ring."""
        self._free.put(memoryview(view.obj))

    def _write(self, view):
        written = 0
        while written < len(view):
            written += os.write(self._fd, view[written:])

    def _write_blocks(self):
        while (view := self._writes.get()) is not None:
            if self._failure is None:
                try:
                    self._write(view)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the transfer's thread
                    self._failure = exc
                else:
                    self._hashes.put(view)
                    continue
            self._free.put(memoryview(view.obj))     # not written: not hashed either
        self._hashes.put(None)

    def _hash_blocks(self):
        while (view := self._hashes.get()) is not None:
            if self._failure is None:
                try:
                    self._accumulator.update(view)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the transfer's thread
                    self._failure = exc
            self._free.put(memoryview(view.obj))
