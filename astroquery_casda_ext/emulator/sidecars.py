"""Files as CASDA stores them: the bytes, written atomically, and a ``.checksum`` sidecar.

The sidecar is written here from CASDA's own description (the protocol reference,
section 6.2; CASDA's ``calc_checksum.py``), not with the client's verifier, so that the
emulator is an independent oracle for it::

    <crc32: 8 lower-case hex, zero-padded> <sha1: 40 lower-case hex> <size: lower-case hex, no padding>

one line, no trailing newline; CRC-32 is zlib's (IEEE), unsigned.  For the 9 bytes
``blah blah``: ``f412535a 135a1e01bae742c4a576b20fd41a683f6483ca43 9``.
"""
import hashlib
import os
import pathlib
import threading
import zlib
from dataclasses import dataclass

__all__ = ["StoredFile", "checksum_line", "write_file", "write_sidecar", "sidecar_size"]


@dataclass(frozen=True)
class StoredFile:
    """What the archive knows of a stored file: its size and its ``.checksum`` line."""

    size: int
    checksum: str


def checksum_line(crc32, sha1_hex, size):
    """The ``.checksum`` line of a file with these digests (CASDA's ``calc_checksum.py``)."""
    return f"{crc32 & 0xFFFFFFFF:08x} {sha1_hex.lower()} {size:x}"


def sidecar_size(line):
    """The file size a ``.checksum`` line records; ValueError when it is not one."""
    fields = line.split(" ")
    if len(fields) != 3 or len(fields[0]) != 8 or len(fields[1]) != 40:
        raise ValueError(f"not a checksum line: {line[:120]!r}")
    return int(fields[2], 16)


def write_sidecar(path, line):
    """Write ``<path>.checksum`` holding ``line``."""
    pathlib.Path(f"{path}.checksum").write_text(line, encoding="ascii")


def write_file(path, chunks):
    """Write ``chunks`` (bytes) to ``path`` and its CASDA ``.checksum`` sidecar.

    The bytes go to a temporary name first and are digested as they pass, so no file is
    held in memory and a reader never sees a half-written file.

    Returns
    -------
    StoredFile
    """
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    crc, sha1, size = 0, hashlib.sha1(), 0
    try:
        with open(temporary, "wb") as stream:
            for chunk in chunks:
                crc = zlib.crc32(chunk, crc)
                sha1.update(chunk)
                size += len(chunk)
                stream.write(chunk)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    stored = StoredFile(size, checksum_line(crc, sha1.hexdigest(), size))
    write_sidecar(path, stored.checksum)
    return stored
