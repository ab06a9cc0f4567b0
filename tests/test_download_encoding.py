"""Downloads from a server that encodes the body anyway (``Content-Encoding: gzip``).

Files are asked for with ``Accept-Encoding: identity``; a server that gzips them all the
same must not leave the compressed bytes on disk as the file.  Over real HTTP against the
emulator (its ``gzip`` fault): the body is decoded as it is read and verified on the
decoded bytes, with or without a ``.checksum``; a gzip bomb is cut at the size announced
for the file (by its ``.checksum``, else ``max_unannounced``) in seconds, without the
bytes piling up in memory; a damaged or cut encoding is fetched again.
"""
import time
import tracemalloc

import pytest
import requests
import responses

from astroquery_casda_ext.download import Downloader
from astroquery_casda_ext.emulator import FaultRule
from astroquery_casda_ext.transport import RetryPolicy

# the emulator with two bulk files of SIZE bytes, staged, and its faults cleared around each test
from test_download_faults import DATA, SIZE, _clean, bulk_emulator, bulk_files  # noqa: F401

pytestmark = pytest.mark.matrix("data-safety")

#: Zero bytes a gzip bomb adds after the file: 20 GB decoded, about 20 MB encoded.
BOMB = 20_000_000_000


@pytest.fixture
def bulk_file(bulk_files):
    return bulk_files[0]


def download(items, savedir, *, retry=RetryPolicy(jitter=0.0), **options):
    downloader = Downloader(requests.Session(), progress=False, retry=retry, sleep=lambda seconds: None,
                            **options)
    return downloader.download(items, savedir)


def original(emulator, item):
    return emulator.holdings.product(item.product_id).path.read_bytes()


def test_a_gzip_encoded_file_is_decoded_and_verified_against_its_checksum(bulk_emulator, bulk_file, tmp_path):
    bulk_emulator.add_fault(FaultRule(path=DATA, kind="gzip"))
    manifest = download([bulk_file], tmp_path)
    row = manifest.table[0]
    assert (row["status"], row["checksum_status"], row["attempts"]) == ("COMPLETE", "verified", 1)
    assert open(row["path"], "rb").read() == original(bulk_emulator, bulk_file)
    assert not list(tmp_path.glob("*.part"))


def test_a_gzip_encoded_file_without_checksum_is_saved_decoded_not_compressed(bulk_emulator, bulk_file,
                                                                              tmp_path):
    bulk_emulator.add_fault(FaultRule(path=DATA, kind="gzip"))
    manifest = download([bulk_file.url], tmp_path)      # the data URL alone: no .checksum
    row = manifest.table[0]
    saved = open(row["path"], "rb").read()
    assert not saved.startswith(b"\x1f\x8b")            # not the gzip stream
    assert saved == original(bulk_emulator, bulk_file)
    assert (row["status"], row["checksum_status"]) == ("COMPLETE", "not-checked")
    assert row["size"] == SIZE


def test_a_gzip_bomb_is_cut_at_the_size_its_checksum_announces(bulk_emulator, bulk_file, tmp_path):
    bulk_emulator.add_fault(FaultRule(path=DATA, kind="gzip", after_bytes=BOMB))
    started = time.monotonic()
    tracemalloc.start()
    try:
        manifest = download([bulk_file], tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started
    assert peak < 64 << 20         # a few buffers of the file's size, not the decoded bomb
    row = manifest.table[0]
    assert (row["status"], row["error_type"]) == ("ERROR", "DownloadError")
    assert f"more than the {SIZE} bytes announced by its .checksum" in row["message"]
    assert elapsed < 30          # cut after SIZE + 1 decoded bytes, not 20 GB later
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith(".")) == [
        tmp_path.joinpath(row["checksum_path"]).name]          # only the .checksum: no file, no .part
    sent = [entry.bytes_sent for entry in bulk_emulator.request_log if entry.path.endswith(".fits")]
    assert sum(sent) < 50_000_000      # the server stopped when the client hung up


def test_a_gzip_bomb_without_checksum_is_cut_at_max_unannounced(bulk_emulator, bulk_file, tmp_path):
    bulk_emulator.add_fault(FaultRule(path=DATA, kind="gzip", after_bytes=BOMB))
    limit = 2 * SIZE
    manifest = download([bulk_file.url], tmp_path, max_unannounced=limit)
    row = manifest.table[0]
    assert row["status"] == "ERROR"
    assert f"more than the {limit} bytes announced by max_unannounced" in row["message"]
    assert [path for path in tmp_path.iterdir() if not path.name.startswith(".")] == []


@pytest.mark.parametrize("damage", [dict(kind="corrupt", after_bytes=1000),
                                    dict(kind="truncate", after_bytes=5000)],
                         ids=["damaged encoding", "encoding cut short"])
def test_an_encoding_that_does_not_decode_is_fetched_again_from_zero(bulk_emulator, bulk_file, tmp_path,
                                                                      damage):
    bulk_emulator.add_fault(FaultRule(path=DATA, kind="gzip", times=1))
    bulk_emulator.add_fault(FaultRule(path=DATA, times=1, **damage))
    manifest = download([bulk_file], tmp_path)
    row = manifest.table[0]
    assert (row["status"], row["checksum_status"], row["attempts"]) == ("COMPLETE", "verified", 2)
    assert open(row["path"], "rb").read() == original(bulk_emulator, bulk_file)


def test_files_are_asked_for_unencoded_and_other_codings_are_refused(tmp_path):
    url = "https://casda.example/download/web/job/file.fits"
    with responses.RequestsMock() as mock:
        mock.add(responses.GET, url, body=b"\x00" * 100, headers={"Content-Encoding": "br"})
        manifest = download([url], tmp_path)
        assert mock.calls[0].request.headers["Accept-Encoding"] == "identity"
    row = manifest.table[0]
    assert row["status"] == "ERROR"
    assert "Content-Encoding: br, which this client does not decode" in row["message"]
    assert list(tmp_path.iterdir()) == []



def test_an_encoded_answer_to_a_range_request_starts_the_file_again(bulk_emulator, bulk_file, tmp_path):
    """A resumed file answered with a gzip-encoded 206: its offsets are not the file's, so the
    .part is not continued from it; the file is fetched again from zero and verified."""
    since = len(bulk_emulator.request_log)
    bulk_emulator.add_fault(FaultRule(path=DATA, kind="truncate", after_bytes=1_000_000, times=1))
    first = download([bulk_file], tmp_path, retry=RetryPolicy(total=0, jitter=0.0))
    assert first.table["status"][0] == "ERROR"
    assert (tmp_path / (bulk_file.filename + ".part")).stat().st_size == 1_000_000
    bulk_emulator.add_fault(FaultRule(path=DATA, kind="gzip", times=2))
    row = download([bulk_file], tmp_path).table[0]
    assert (row["status"], row["checksum_status"]) == ("COMPLETE", "verified")
    assert open(row["path"], "rb").read() == original(bulk_emulator, bulk_file)
    statuses = [entry.status for entry in bulk_emulator.request_log[since:] if entry.path.endswith(".fits")]
    assert statuses == [200, 206, 200]     # cut; the rest, encoded: not continued; the whole file, encoded
