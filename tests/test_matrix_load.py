"""Load matrix: eight client threads run query -> cutout -> download against one emulator,
while a second process keeps downloading into the folder of thread 0.

Each thread, for ``CASDA_LOAD_SECONDS`` seconds (default 120, as CI runs it; set it
lower while developing), picks a product, finds it with an SIA2 query around its centre,
cuts a region out of it with a SODA job and downloads the cutout and its ``.checksum``.
Nothing may be lost (every job gives its file, every file arrives), nothing may fail,
and every file must match its CASDA checksum.  The run is bounded: each thread stops
starting work at the deadline and the test fails if one does not finish soon after.
The second process takes turns with thread 0 on their shared folder (one downloader per
folder): neither may lose, mix or misplace a byte of the other's files.
"""
import os
import random
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import astropy.units as u
import pytest

from astroquery_casda_ext import CasdaClass, conf
from astroquery_casda_ext.checksum import checksum_of_file, parse_checksum
from astroquery_casda_ext.download import MANIFEST_NAME, Manifest

from test_download import stage

SECONDS = float(os.environ.get("CASDA_LOAD_SECONDS", "120"))
THREADS = 8
#: Time a thread may take to finish the iteration it is in when the deadline passes.
GRACE = 120.0

pytestmark = [pytest.mark.matrix("load"), pytest.mark.slow, pytest.mark.timeout(SECONDS + GRACE + 60)]


class Tally:
    """What the threads did, added up under a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.iterations = self.files = self.bytes = 0
        self.errors = []
        self.lost = []
        self.paths = set()

    def add(self, files, nbytes, paths=()):
        with self.lock:
            self.iterations += 1
            self.files += files
            self.bytes += nbytes
            self.paths.update(paths)

    def fail(self, where, text):
        with self.lock:
            self.errors.append(f"{where}: {text}")


def verified_files(paths):
    """The data files among ``paths``, each checked against its ``.checksum`` (AssertionError if not)."""
    data = [Path(path) for path in paths if not str(path).endswith(".checksum")]
    for path in data:
        expected = parse_checksum(Path(str(path) + ".checksum").read_text())
        assert checksum_of_file(path)[1] == expected, f"{path.name} does not match its .checksum"
    return data


def one_iteration(client, product, savedir):
    """query -> cutout -> download of one product; returns (data files, bytes)."""
    ra, dec = product.obscore["s_ra"], product.obscore["s_dec"]
    found = client.query_region(f"{ra} {dec}", radius=30 * u.arcsec, cache=False)
    rows = found[found["obs_publisher_did"] == product.product_id]
    assert len(rows) == 1, f"SIA2 lost {product.product_id}"
    urls = client.cutout(rows, coordinates=f"{ra} {dec}", radius=20 * u.arcsec)
    assert len(urls) == 2, f"the cutout of {product.product_id} gave {len(urls)} URLs, not file and checksum"
    paths = client.download_files(urls, savedir=savedir)
    assert len(paths) == 2 and all(os.path.isfile(path) for path in paths), "a downloaded file is missing"
    data = verified_files(paths)
    assert not [path for path in data if Path(str(path) + ".part").exists()], "a partial file was left behind"
    return len(data), sum(path.stat().st_size for path in data), data


def worker(number, client, products, deadline, savedir, tally):
    chooser = random.Random(number)
    iteration = 0
    while time.monotonic() < deadline:
        product = chooser.choice(products)
        target = savedir / SHARED if number == 0 else savedir / f"thread{number}" / f"{iteration:05d}"
        try:
            files, nbytes, paths = one_iteration(client, product, target)
        except Exception as exc:  # noqa: BLE001 - every failure is collected and reported
            tally.fail(f"thread {number}, iteration {iteration} ({product.product_id})",
                       "".join(traceback.format_exception_only(exc)).strip())
        else:
            tally.add(files, nbytes, paths)
        iteration += 1


#: The folder thread 0 and the second process both download into.
SHARED = "shared"

#: The second process: downloads its file into argv[1] until argv[2] (epoch seconds), removing it
#: after each verified run so that every run transfers again; prints the number of runs.
NEIGHBOUR = """
import os, sys, time
import requests
from astroquery_casda_ext.download import Downloader
savedir, deadline, urls = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
runs = 0
while time.time() < deadline:
    downloader = Downloader(requests.Session(), workers=2, progress=False)
    manifest = downloader.download(urls, savedir, save_manifest=True)
    manifest.raise_for_errors()
    for path in manifest.paths:
        os.unlink(path)
    runs += 1
    time.sleep(0.2)
print(runs)
"""


def test_eight_threads_query_cut_out_and_download_without_loss_or_error(emulator, tmp_path):
    client = CasdaClass(server=emulator.url)   # one client shared by every thread, like the Casda singleton
    client.login(emulator.username, password=emulator.password)
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    products = [product for product in emulator.holdings.products   # released images and cubes
                if product.kind in ("continuum", "spectral") and product.release_date
                and product.release_date < now]
    assert len(products) >= 3
    neighbour_product = products[0]
    neighbour_files, _ = stage(emulator, [neighbour_product.product_id])
    neighbour_urls = [url for item in neighbour_files for url in (item.url, item.checksum_url)]
    (tmp_path / SHARED).mkdir()
    tally = Tally()
    started = time.monotonic()
    deadline = started + SECONDS
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(tmp_path / SHARED),
                                  str(time.time() + SECONDS), *neighbour_urls],
                                 stdout=subprocess.PIPE, text=True)
    with conf.set_temp("poll_first", 0.1), conf.set_temp("poll_interval", 1):
        threads = [threading.Thread(target=worker, args=(number, client, products, deadline, tmp_path, tally),
                                    name=f"load-{number}", daemon=True) for number in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline + GRACE - time.monotonic()))
    neighbour_runs = int(neighbour.communicate(timeout=GRACE)[0].strip() or 0)
    elapsed = time.monotonic() - started
    assert neighbour.returncode == 0 and neighbour_runs >= 1, "the second process failed"
    assert not [thread.name for thread in threads if thread.is_alive()], "the load stops by itself"
    assert tally.errors == [], f"{len(tally.errors)} failures, first: {tally.errors[:3]}"
    assert tally.iterations >= THREADS and tally.files == tally.iterations
    assert SECONDS <= elapsed <= SECONDS + GRACE

    served = emulator.request_log
    jobs = [entry for entry in served if entry.method == "POST" and entry.path.endswith("/data/async")]
    assert len(jobs) == tally.iterations + 1, "one job per iteration (and the neighbour's), none lost or doubled"
    assert [entry for entry in served if entry.status >= 500] == [], "the server never failed"
    on_disk = [path for path in tmp_path.rglob("*") if path.is_file() and not path.name.endswith(".checksum")
               and path.name != MANIFEST_NAME]
    assert sorted(on_disk) == sorted(tally.paths), "every downloaded file is there, and nothing else"
    shared = Manifest.read(tmp_path / SHARED / MANIFEST_NAME).table
    assert len(set(shared["path"])) == len(shared), "one manifest row per path"
    assert set(shared["checksum_status"]) <= {"verified"}
    print(f"\nload: {THREADS} threads, {elapsed:.0f} s, {tally.iterations} query-cutout-download cycles, "
          f"{tally.files} files verified, {tally.bytes / 1e6:.1f} MB; the second process downloaded "
          f"into thread 0's folder {neighbour_runs} times")
