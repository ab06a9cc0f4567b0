"""CASDA's ``.checksum`` sidecar files.

A ``.checksum`` file is one line, no trailing newline::

    <crc32: 8 lower-case hex> <sha1: 40 lower-case hex> <size in bytes: lower-case hex, no padding>

e.g. ``f412535a 135a1e01bae742c4a576b20fd41a683f6483ca43 9`` for the 9 bytes ``blah blah``.
CRC-32 is zlib's (IEEE; computed by zlib-ng where it is installed).  The client verifies
downloads with this module; the emulator writes its sidecars with its own writer
(``emulator/sidecars.py``), from the same documented format.
"""
import hashlib
from dataclasses import dataclass

try:
    # The same CRC-32 as zlib's, eight times as fast (carry-less multiply): a verified download is
    # CPU-bound on small machines, and zlib's CRC-32 was a third of its hashing.
    from zlib_ng.zlib_ng import crc32
except ImportError:    # a platform without zlib-ng's wheels
    from zlib import crc32

__all__ = ["Checksum", "ChecksumAccumulator", "parse_checksum", "checksum_of_file"]

#: Bytes read per step when checksumming a file on disk.
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class Checksum:
    """The three values CASDA records for a file."""

    crc32: str
    sha1: str
    size: int

    def __str__(self):
        return f"{self.crc32} {self.sha1} {self.size:x}"

    def mismatches(self, other):
        """Names of the fields that differ from ``other`` (empty when they agree)."""
        return [name for name in ("size", "crc32", "sha1") if getattr(self, name) != getattr(other, name)]


def parse_checksum(text):
    """Parse the content of a ``.checksum`` file.

    Parameters
    ----------
    text : str or bytes

    Returns
    -------
    Checksum

    Raises
    ------
    ValueError
        If the text is not three whitespace-separated hex fields of the right lengths.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    fields = text.strip().lower().split()
    if len(fields) != 3 or len(fields[0]) != 8 or len(fields[1]) != 40:
        raise ValueError(f"not a CASDA checksum: {text[:120]!r}")
    try:
        int(fields[0], 16), int(fields[1], 16)
        size = int(fields[2], 16)
    except ValueError:
        raise ValueError(f"not a CASDA checksum: {text[:120]!r}") from None
    return Checksum(fields[0], fields[1], size)


class ChecksumAccumulator:
    """Computes a `Checksum` incrementally while bytes stream past."""

    def __init__(self):
        self._crc = 0
        self._sha1 = hashlib.sha1()
        self.size = 0

    def update(self, data):
        self._crc = crc32(data, self._crc)
        self._sha1.update(data)
        self.size += len(data)

    def result(self):
        return Checksum(f"{self._crc & 0xFFFFFFFF:08x}", self._sha1.hexdigest(), self.size)


def checksum_of_file(path, *, limit=None):
    """Checksum of a file on disk (of its first ``limit`` bytes when given)."""
    accumulator = ChecksumAccumulator()
    remaining = limit
    with open(path, "rb") as stream:
        while remaining is None or remaining > 0:
            chunk = stream.read(CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining))
            if not chunk:
                break
            accumulator.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return accumulator, accumulator.result()
