"""A download killed with SIGKILL half-way resumes where it stopped on the next call."""
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from astroquery_casda_ext.download import Downloader
from astroquery_casda_ext.emulator import CasdaEmulator, EmulatorOptions
from astroquery_casda_ext.emulator.holdings import HoldingsConfig

from test_download import stage

SIZE = 2_000_000

#: A separate process downloading the URLs given on its command line into argv[1].
CHILD = """
import sys
import requests
from astroquery_casda_ext.download import Downloader
Downloader(requests.Session(), workers=1, progress=False).download(sys.argv[2:], sys.argv[1])
"""


@pytest.fixture(scope="module")
def slow_emulator(tmp_path_factory):
    options = EmulatorOptions(holdings=HoldingsConfig(bulk_count=1, bulk_size=SIZE))
    with CasdaEmulator(data_dir=tmp_path_factory.mktemp("crash-holdings"), options=options) as emulator:
        yield emulator


def wait_for_growth(part, child, minimum, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if part.is_file() and part.stat().st_size >= minimum:
            return
        assert child.poll() is None, "the child finished (or died) before it could be killed"
        time.sleep(0.02)
    pytest.fail(f"{part.name} did not reach {minimum} bytes")


def test_a_killed_download_resumes_with_range(slow_emulator, tmp_path):
    product = next(product for product in slow_emulator.holdings.products if product.kind == "bulk")
    files, _ = stage(slow_emulator, [product.product_id])
    urls = [files[0].url, files[0].checksum_url]
    slow_emulator.set_options(transfer_rate=500_000)            # ~4 s for the file
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), *urls])
    part = tmp_path / (product.staged_name + ".part")
    try:
        wait_for_growth(part, child, SIZE // 3)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    kept = part.stat().st_size
    assert 0 < kept < SIZE and not (tmp_path / product.staged_name).exists()

    slow_emulator.set_options(transfer_rate=None)
    since = len(slow_emulator.request_log)
    manifest = Downloader(requests.Session(), progress=False).download(urls, tmp_path)
    row = manifest.table[0]
    assert (row["status"], row["checksum_status"]) == ("COMPLETE", "verified")
    assert (tmp_path / product.staged_name).read_bytes() == product.path.read_bytes()
    assert row["bytes_transferred"] == SIZE - kept
    # The second run asked for the rest only (206), and nothing fetched the whole file again.
    # (The killed run's own transfer may be logged late, as the server notices the dead socket.)
    transfers = [entry for entry in slow_emulator.request_log[since:] if entry.path.endswith(".fits")]
    resumed = [(entry.status, entry.bytes_sent) for entry in transfers if entry.status == 206]
    assert resumed == [(206, SIZE - kept)]
    assert all(entry.bytes_sent < SIZE for entry in transfers)
