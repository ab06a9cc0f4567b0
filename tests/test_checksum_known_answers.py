"""Known answers for the client's ``.checksum`` verifier (``checksum.py``, ``download/verify.py``).

The expected lines are computed here from zlib and hashlib directly, as CASDA's format says
(protocol reference 6.2: ``<crc32 8 hex> <sha1 40 hex> <size hex, no padding>``), and one
file's ``.checksum`` was written by other programs (``crc32``, ``sha1sum``, ``printf``; see
tests/data/README.md), so the verifier is never judged by its own code.
"""
import hashlib
import random
import zlib
from pathlib import Path

import pytest

from astroquery_casda_ext.checksum import ChecksumAccumulator, checksum_of_file, parse_checksum
from astroquery_casda_ext.download.verify import matches

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "checksum_sample.bin"


def expected_line(data):
    """The ``.checksum`` line of ``data``, from zlib and hashlib with nothing of ours."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x} {hashlib.sha1(data).hexdigest()} {len(data):x}"


VECTORS = {
    "empty": b"",
    "casda example": b"blah blah",
    "one byte": b"\x00",
    "high crc bit": b"\xff" * 3,
    "crosses a chunk": random.Random(21).randbytes((1 << 20) + 17),
}


def test_casdas_documented_example():
    assert expected_line(b"blah blah") == "f412535a 135a1e01bae742c4a576b20fd41a683f6483ca43 9"
    assert str(parse_checksum("f412535a 135a1e01bae742c4a576b20fd41a683f6483ca43 9")) == \
        expected_line(b"blah blah")


@pytest.mark.parametrize("data", VECTORS.values(), ids=VECTORS.keys())
def test_accumulator_gives_the_independent_answer_in_any_chunking(data):
    whole = ChecksumAccumulator()
    whole.update(data)
    assert str(whole.result()) == expected_line(data)
    pieces = ChecksumAccumulator()
    for start in range(0, len(data), 65_521):       # a prime: chunks never align with anything
        pieces.update(data[start:start + 65_521])
    assert pieces.result() == whole.result()


@pytest.mark.parametrize("data", VECTORS.values(), ids=VECTORS.keys())
def test_file_verifier_accepts_the_right_line_and_refuses_a_changed_file(tmp_path, data):
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    expected = parse_checksum(expected_line(data))
    assert checksum_of_file(path)[1] == expected
    assert matches(path, expected)
    if data:
        path.write_bytes(bytes([data[0] ^ 1]) + data[1:])        # same size, one bit changed
        assert not matches(path, expected)
        assert parse_checksum(expected_line(path.read_bytes())).mismatches(expected) == ["crc32", "sha1"]
        path.write_bytes(data[:-1])                                # truncated
        assert not matches(path, expected)


def test_a_checksum_written_by_other_programs_is_the_verifiers():
    line = (DATA / "checksum_sample.bin.checksum").read_text(encoding="ascii")
    data = SAMPLE.read_bytes()
    assert line == expected_line(data)                   # the tools and zlib/hashlib agree
    assert not line.endswith("\n") and line.split()[2] == f"{len(data):x}"
    assert checksum_of_file(SAMPLE)[1] == parse_checksum(line)
    assert matches(SAMPLE, parse_checksum(line))


@pytest.mark.parametrize("text", [
    "f412535a 135a1e01bae742c4a576b20fd41a683f6483ca43",          # no size
    "f412535 135a1e01bae742c4a576b20fd41a683f6483ca43 9",         # short CRC
    "f412535a 135a1e01bae742c4a576b20fd41a683f6483ca4 9",         # short SHA-1
    "f412535a 135a1e01bae742c4a576b20fd41a683f6483ca43 nine",     # size not hex
    "<html>Not Found</html>",
])
def test_what_is_not_a_checksum_is_refused(text):
    with pytest.raises(ValueError, match="not a CASDA checksum"):
        parse_checksum(text)


def test_without_zlib_ng_the_crc32_is_zlibs_own():
    """Where zlib-ng has no wheel, the verifier falls back to zlib's CRC-32 (a child process
    that cannot import zlib_ng)."""
    import subprocess
    import sys
    code = ("import sys, zlib; sys.modules['zlib_ng'] = None\n"
            "from astroquery_casda_ext import checksum\n"
            "assert checksum.crc32 is zlib.crc32, checksum.crc32\n"
            "accumulator = checksum.ChecksumAccumulator(); accumulator.update(b'blah blah')\n"
            "print(accumulator.result())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected_line(b"blah blah")
