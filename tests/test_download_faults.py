"""Downloads through a misbehaving network and server: resets, truncation, corruption,
503 bursts, 429 with Retry-After, stalls; with and without Range.

Every case must end with each file verified (or a clear `ChecksumMismatchError`) and
no unverified file under its final name.  The emulator here has its own bulk products
(4 MB files), so faults can strike mid-file.
"""
import errno
import os
import time

import pytest
import requests

from astroquery_casda_ext.download import Downloader
from astroquery_casda_ext.transport import RetryPolicy
from astroquery_casda_ext.emulator import CasdaEmulator, EmulatorOptions, FaultRule
from astroquery_casda_ext.emulator.holdings import HoldingsConfig
from astroquery_casda_ext.errors import ChecksumMismatchError, DownloadError

from test_download import stage

SIZE = 4_000_000
#: The bulk data files (not their .checksum sidecars).
DATA = r"^/download/.*\.fits$"


@pytest.fixture(scope="module")
def bulk_emulator(tmp_path_factory):
    options = EmulatorOptions(holdings=HoldingsConfig(bulk_count=2, bulk_size=SIZE))
    with CasdaEmulator(data_dir=tmp_path_factory.mktemp("bulk-holdings"), options=options) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def bulk_files(bulk_emulator):
    products = [product for product in bulk_emulator.holdings.products if product.kind == "bulk"]
    files, _ = stage(bulk_emulator, [product.product_id for product in products])
    assert len(files) == 2
    return files


@pytest.fixture(autouse=True)
def _clean(bulk_emulator):
    bulk_emulator.clear_faults()
    bulk_emulator.set_options(range_support=True, transfer_rate=None)
    yield
    bulk_emulator.clear_faults()


class Waits(list):
    """Records the retry waits instead of sleeping them."""

    def __call__(self, seconds):
        self.append(seconds)


def download(files, savedir, *, retry=RetryPolicy(jitter=0.0), **options):
    waits = Waits()
    downloader = Downloader(requests.Session(), progress=False, retry=retry, sleep=waits, **options)
    return downloader.download(files, savedir), waits


def assert_all_verified(emulator, manifest, savedir):
    """Every file complete, verified, identical to the archive's; nothing half-done left over."""
    assert list(manifest.table["status"]) == ["COMPLETE"] * len(manifest)
    assert list(manifest.table["checksum_status"]) == ["verified"] * len(manifest)
    for row in manifest.table:
        product = emulator.holdings.product(row["product_id"])
        assert open(row["path"], "rb").read() == product.path.read_bytes()
    assert not list(savedir.glob("*.part"))


def bytes_sent_per_file(emulator, since):
    """Body bytes the server wrote for each data file (all attempts), from its request log."""
    sent = {}
    for entry in emulator.request_log[since:]:
        if entry.path.endswith(".fits"):
            name = entry.path.rsplit("/", 1)[-1]
            sent[name] = sent.get(name, 0) + entry.bytes_sent
    return sent


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_broken_transfers_resume_with_range(bulk_emulator, bulk_files, tmp_path, kind):
    since = len(bulk_emulator.request_log)
    bulk_emulator.add_fault(FaultRule(DATA, kind, after_bytes=1_500_000, times=2))   # each file once
    manifest, waits = download(bulk_files, tmp_path)
    assert_all_verified(bulk_emulator, manifest, tmp_path)
    assert list(manifest.table["attempts"]) == [2, 2] and len(waits) == 2
    transfers = [entry for entry in bulk_emulator.request_log[since:] if entry.path.endswith(".fits")]
    assert sorted(entry.status for entry in transfers) == [200, 200, 206, 206]   # continued, not restarted
    sent = bytes_sent_per_file(bulk_emulator, since)
    # less than a restart would cost (bytes in the socket buffer at a reset are asked again)
    assert len(sent) == 2 and all(total < SIZE + 1_500_000 for total in sent.values())
    assert list(manifest.table["bytes_transferred"]) == [SIZE, SIZE]     # nothing fetched twice


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_broken_transfers_restart_when_the_server_has_no_range(bulk_emulator, bulk_files, tmp_path, kind):
    bulk_emulator.set_options(range_support=False)
    since = len(bulk_emulator.request_log)
    bulk_emulator.add_fault(FaultRule(DATA, kind, after_bytes=1_500_000, times=2))
    manifest, _ = download(bulk_files, tmp_path)
    assert_all_verified(bulk_emulator, manifest, tmp_path)
    transfers = [entry for entry in bulk_emulator.request_log[since:] if entry.path.endswith(".fits")]
    # Each file: a broken 200, then a whole new 200 (no Range to continue with).
    assert sorted((entry.status, entry.bytes_sent) for entry in transfers) == [
        (200, 1_500_000), (200, 1_500_000), (200, SIZE), (200, SIZE)]
    assert all(size > SIZE for size in manifest.table["bytes_transferred"])


def test_repeated_resets_in_one_file_all_resume(bulk_emulator, bulk_files, tmp_path):
    since = len(bulk_emulator.request_log)
    bulk_emulator.add_fault(FaultRule(DATA, "reset", after_bytes=700_000, times=4))
    manifest, _ = download(bulk_files[:1], tmp_path)
    assert_all_verified(bulk_emulator, manifest, tmp_path)
    assert manifest.table["attempts"][0] == 5
    transfers = [entry for entry in bulk_emulator.request_log[since:] if entry.path.endswith(".fits")]
    # every attempt after the first continued with Range (206), none started over (200) ...
    assert [entry.status for entry in transfers] == [200, 206, 206, 206, 206]
    # ... so the server sent less than restarting would have cost.  (Not exactly SIZE: the
    # bytes still in the client's socket buffer when a reset arrives are lost and asked again.)
    assert sum(bytes_sent_per_file(bulk_emulator, since).values()) < SIZE + 4 * 700_000


def test_corrupted_bytes_are_fetched_again_from_scratch(bulk_emulator, bulk_files, tmp_path):
    bulk_emulator.add_fault(FaultRule(DATA, "corrupt", after_bytes=2_000_000, times=1))
    manifest, _ = download(bulk_files, tmp_path, workers=1)
    assert_all_verified(bulk_emulator, manifest, tmp_path)
    assert sorted(manifest.table["attempts"]) == [1, 2]


def test_a_file_corrupted_twice_is_deleted_and_named_in_the_error(bulk_emulator, bulk_files, tmp_path):
    victim, healthy = bulk_files
    bulk_emulator.add_fault(FaultRule(r"/" + victim.filename.replace(".", r"\.") + "$", "corrupt",
                                      after_bytes=3_000_000))
    manifest, _ = download(bulk_files, tmp_path)
    failed = manifest.failed
    assert len(failed) == 1 and failed["checksum_status"][0] == "mismatch"
    assert not (tmp_path / victim.filename).exists() and not list(tmp_path.glob("*.part"))
    assert (tmp_path / healthy.filename).is_file()
    with pytest.raises(ChecksumMismatchError, match=victim.filename.replace(".", r"\.")):
        manifest.raise_for_errors()


def test_a_burst_of_503_is_retried_with_exponential_backoff(bulk_emulator, bulk_files, tmp_path):
    bulk_emulator.add_fault(FaultRule(DATA, "status", status=503, times=3))
    manifest, waits = download(bulk_files[:1], tmp_path)
    assert_all_verified(bulk_emulator, manifest, tmp_path)
    assert waits == [0.5, 1.0, 2.0] and manifest.table["attempts"][0] == 4


def test_429_waits_as_long_as_retry_after_says(bulk_emulator, bulk_files, tmp_path):
    bulk_emulator.add_fault(FaultRule(DATA, "status", status=429, retry_after=7, times=1))
    manifest, waits = download(bulk_files[:1], tmp_path)
    assert_all_verified(bulk_emulator, manifest, tmp_path)
    assert waits == [7.0]


def test_retry_after_is_capped(bulk_emulator, bulk_files, tmp_path):
    bulk_emulator.add_fault(FaultRule(DATA, "status", status=503, retry_after=3600, times=1))
    manifest, waits = download(bulk_files[:1], tmp_path, retry=RetryPolicy(retry_after_max=5.0))
    assert_all_verified(bulk_emulator, manifest, tmp_path)
    assert waits == [5.0]


def test_a_stalled_stream_times_out_and_resumes(bulk_emulator, bulk_files, tmp_path):
    since = len(bulk_emulator.request_log)
    bulk_emulator.add_fault(FaultRule(DATA, "stall", after_bytes=1_000_000, delay=5.0, times=1))
    manifest, _ = download(bulk_files[:1], tmp_path, timeout=1.0)
    assert_all_verified(bulk_emulator, manifest, tmp_path)
    assert manifest.table["attempts"][0] == 2
    assert sum(bytes_sent_per_file(bulk_emulator, since).values()) < 1.2 * SIZE


def test_giving_up_leaves_no_file_under_its_final_name(bulk_emulator, bulk_files, tmp_path):
    bulk_emulator.add_fault(FaultRule(DATA, "status", status=503))
    manifest, waits = download(bulk_files, tmp_path, retry=RetryPolicy(total=2, jitter=0.0))
    assert list(manifest.table["status"]) == ["ERROR", "ERROR"]
    assert all("gave up after 3 attempts" in message for message in manifest.table["message"])
    assert not (tmp_path / bulk_files[0].filename).exists()
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == sorted(item.filename + ".checksum" for item in bulk_files)      # only the sidecars
    with pytest.raises(DownloadError, match="2 of 2 files"):
        manifest.raise_for_errors()


def test_an_interrupted_call_is_resumed_by_the_next_one(bulk_emulator, bulk_files, tmp_path):
    """A call that gave up mid-file keeps the .part; the next call continues it with Range."""
    bulk_emulator.add_fault(FaultRule(DATA, "truncate", after_bytes=2_500_000, times=1))
    first, _ = download(bulk_files[:1], tmp_path, retry=RetryPolicy(total=0))
    assert first.table["status"][0] == "ERROR" and "gave up after 1 attempt:" in first.table["message"][0]
    part = tmp_path / (bulk_files[0].filename + ".part")
    assert part.stat().st_size == 2_500_000                        # every byte received was kept
    assert not (tmp_path / bulk_files[0].filename).exists()
    second, _ = download(bulk_files[:1], tmp_path)
    assert_all_verified(bulk_emulator, second, tmp_path)
    assert second.table["bytes_transferred"][0] == SIZE - 2_500_000


@pytest.mark.parametrize("helpers", [True, False], ids=["write and hash threads", "one thread"])
def test_a_full_disk_fails_the_file_at_once_and_keeps_what_was_written(bulk_emulator, bulk_files, tmp_path,
                                                                       monkeypatch, helpers):
    """The third block's write fails (ENOSPC): the error names it, in seconds; the .part holds
    exactly the two blocks written, and the next call continues from there."""
    block = 256 << 10
    real_write, blocks = os.write, []

    def full_after_two_blocks(fd, data):
        if len(data) >= block:
            blocks.append(len(data))
            if len(blocks) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    # one transfer on 4 cores: the write and hash threads; on 1 core: all in the transfer's thread
    monkeypatch.setattr(os, "cpu_count", lambda: 4 if helpers else 1)
    monkeypatch.setattr(os, "write", full_after_two_blocks)
    started = time.monotonic()
    manifest, _ = download(bulk_files[:1], tmp_path, chunk_size=block, workers=1)
    assert time.monotonic() - started < 20
    monkeypatch.setattr(os, "write", real_write)
    row = manifest.table[0]
    assert row["status"] == "ERROR" and "No space left on device" in row["message"]
    assert (tmp_path / (bulk_files[0].filename + ".part")).stat().st_size == 2 * block
    assert not (tmp_path / bulk_files[0].filename).exists()
    second, _ = download(bulk_files[:1], tmp_path)
    assert_all_verified(bulk_emulator, second, tmp_path)
    assert second.table["bytes_transferred"][0] == SIZE - 2 * block
