"""Data safety: downloads never lose, mix or misplace a byte, whatever the server or a
neighbour does.  One test per attack class, over real HTTP against the emulator:

- a symbolic link planted at every name the downloader writes (``.part``, the validator,
  the ``.checksum``, the lock, the manifest), before the run and during it;
- name clashes through server-chosen names (``Content-Disposition``) and through
  temporary names (``x.fits`` and ``x.fits.part`` in one job);
- two processes downloading into one folder from a paced server;
- a file changed on the server between a partial download and its resume, with and
  without a ``.checksum``;
- a 416 loop, a body that never ends, a trickle.

Each asserts the files on disk byte for byte, the manifest rows, and that nothing was
written outside the download folder.
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from astroquery_casda_ext.checksum import ChecksumAccumulator
from astroquery_casda_ext.download import LOCK_NAME, MANIFEST_NAME, Downloader, Manifest, TransferConfig
from astroquery_casda_ext.download import plan_downloads, read_checksum, transfer_file
from astroquery_casda_ext.emulator import CasdaEmulator, EmulatorOptions, FaultRule
from astroquery_casda_ext.emulator.holdings import HoldingsConfig
from astroquery_casda_ext.errors import FolderBusyError, UnsafeFilenameError
from astroquery_casda_ext.transport import RetryPolicy

from test_download import stage

pytestmark = pytest.mark.matrix("data-safety")

SIZE = 1_500_000
#: The bulk data files (not their .checksum sidecars).
DATA = r"^/download/.*\.fits$"
VICTIM = b"precious bytes outside the download folder\n"


@pytest.fixture(scope="module")
def safety_emulator(tmp_path_factory):
    options = EmulatorOptions(holdings=HoldingsConfig(bulk_count=2, bulk_size=SIZE))
    with CasdaEmulator(data_dir=tmp_path_factory.mktemp("safety-holdings"), options=options) as emulator:
        yield emulator


@pytest.fixture
def files(safety_emulator):
    """A fresh job's two files (each test may change what the server holds)."""
    safety_emulator.clear_faults()
    safety_emulator.set_options(range_support=True, transfer_rate=None)
    products = [product for product in safety_emulator.holdings.products if product.kind == "bulk"]
    staged, _ = stage(safety_emulator, [product.product_id for product in products])
    yield sorted(staged, key=lambda item: item.filename)
    safety_emulator.clear_faults()
    safety_emulator.set_options(transfer_rate=None)


@pytest.fixture
def world(tmp_path):
    """``savedir`` inside ``tmp_path``, and a file outside it that nothing may touch."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.bin").write_bytes(VICTIM)
    savedir = tmp_path / "dl"
    savedir.mkdir()
    return World(tmp_path, savedir, outside / "victim.bin")


class World:
    def __init__(self, root, savedir, victim):
        self.root, self.savedir, self.victim = root, savedir, victim
        self.before = self.outside_files()

    def outside_files(self):
        return sorted(str(path.relative_to(self.root)) for path in self.root.rglob("*")
                      if self.savedir not in path.parents and path != self.savedir)

    def assert_nothing_written_outside(self):
        assert self.victim.read_bytes() == VICTIM
        assert self.outside_files() == self.before


def product_bytes(emulator, item):
    return emulator.holdings.product(item.product_id).path.read_bytes()


def downloader(**options):
    options.setdefault("retry", RetryPolicy(total=3, jitter=0.0))
    return Downloader(requests.Session(), progress=False, sleep=lambda seconds: None, **options)


def served_path(emulator, url):
    """Where the emulator keeps a staged file (``.../<job id>/<name>``)."""
    job_id, name = url.split("?", 1)[0].rsplit("/", 2)[-2:]
    return next(path for path in emulator.data_dir.rglob(name) if path.parent.name == job_id)


def checksum_text(data):
    accumulator = ChecksumAccumulator()
    accumulator.update(data)
    return str(accumulator.result())


# --- symbolic links -------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".part", ".part.validator", ".checksum"])
def test_a_link_planted_at_a_temporary_name_is_never_followed(safety_emulator, files, world, suffix):
    victim_item, healthy = files
    (world.savedir / (victim_item.filename + suffix)).symlink_to(world.victim)
    manifest = downloader().download(files, world.savedir)
    rows = {row["product_id"]: row for row in manifest.table}
    refused, ok = rows[victim_item.product_id], rows[healthy.product_id]
    assert (refused["status"], refused["error_type"]) == ("ERROR", "UnsafeFilenameError")
    assert (ok["status"], ok["checksum_status"]) == ("COMPLETE", "verified")
    assert (world.savedir / healthy.filename).read_bytes() == product_bytes(safety_emulator, healthy)
    assert not os.path.lexists(world.savedir / victim_item.filename)
    assert (world.savedir / (victim_item.filename + suffix)).is_symlink()     # left as found
    world.assert_nothing_written_outside()


def test_a_link_planted_during_the_run_is_never_followed(safety_emulator, files, world):
    """After planning (a race): the .part is opened with O_NOFOLLOW, the sidecar placed without following."""
    item = files[0]
    session, config = requests.Session(), TransferConfig()
    [task, _], _, _ = plan_downloads(files, world.savedir)
    (world.savedir / (item.filename + ".checksum")).symlink_to(world.victim)
    with pytest.raises(UnsafeFilenameError):
        read_checksum(task, config, session)
    (world.savedir / (item.filename + ".part")).symlink_to(world.victim)
    result = transfer_file(task, config, session)
    assert (result.status.value, result.error_type) == ("ERROR", "UnsafeFilenameError")
    assert not os.path.lexists(world.savedir / item.filename)
    world.assert_nothing_written_outside()


def test_a_link_planted_at_the_final_name_is_neither_followed_nor_replaced(safety_emulator, files, world):
    (world.savedir / files[0].filename).symlink_to(world.victim)
    manifest = downloader().download(files, world.savedir)
    assert list(manifest.table["status"]) == ["ERROR", "COMPLETE"]
    assert manifest.table["error_type"][0] == "UnsafeFilenameError"
    assert (world.savedir / files[0].filename).is_symlink()
    world.assert_nothing_written_outside()


@pytest.mark.parametrize("name", [LOCK_NAME, MANIFEST_NAME])
def test_a_link_at_the_lock_or_the_manifest_is_refused(safety_emulator, files, world, name):
    (world.savedir / name).symlink_to(world.victim)
    with pytest.raises(UnsafeFilenameError, match="link"):
        downloader().download(files, world.savedir, save_manifest=True)
    assert (world.savedir / name).is_symlink()
    world.assert_nothing_written_outside()


# --- name clashes ---------------------------------------------------------------------------------

def test_a_server_name_equal_to_another_files_name_is_an_error_not_an_overwrite(safety_emulator, files,
                                                                                world):
    first, second = files
    safety_emulator.add_fault(FaultRule(r"/" + second.filename.replace(".", r"\.") + "$", "disposition",
                                        filename=first.filename))
    manifest = downloader().download(files, world.savedir)
    rows = {row["product_id"]: row for row in manifest.table}
    assert rows[first.product_id]["status"] == "COMPLETE"
    clash = rows[second.product_id]
    assert clash["status"] == "ERROR" and f"{first.filename!r}" in clash["message"]
    assert (world.savedir / first.filename).read_bytes() == product_bytes(safety_emulator, first)
    assert not (world.savedir / second.filename).exists()
    assert len({row["path"] for row in manifest.table}) == 2                   # never two rows, one path
    world.assert_nothing_written_outside()


@pytest.mark.parametrize("server_name", ["{first}.part", "{first}.part.validator", ".casda-download.lock"])
def test_a_server_name_equal_to_a_temporary_name_is_refused(safety_emulator, files, world, server_name):
    first, second = files
    server_name = server_name.format(first=first.filename)
    safety_emulator.add_fault(FaultRule(r"/" + second.filename.replace(".", r"\.") + "$", "disposition",
                                        filename=server_name))
    manifest = downloader().download(files, world.savedir)
    rows = {row["product_id"]: row for row in manifest.table}
    assert (rows[first.product_id]["status"], rows[first.product_id]["checksum_status"]) == ("COMPLETE",
                                                                                           "verified")
    assert (rows[second.product_id]["status"], rows[second.product_id]["error_type"]) == (
        "ERROR", "UnsafeFilenameError")
    assert (world.savedir / first.filename).read_bytes() == product_bytes(safety_emulator, first)
    assert not (world.savedir / server_name).exists()
    world.assert_nothing_written_outside()


def test_a_file_named_like_another_files_temporary_is_an_error(safety_emulator, files, world):
    """``x.fits`` and ``x.fits.part`` in one job: the second may not become the first's .part."""
    first, second = files
    names = {first.url: "x.fits", second.url: "x.fits.part"}
    manifest = downloader().download(files, world.savedir, names=names)
    rows = {row["product_id"]: row for row in manifest.table}
    assert (rows[first.product_id]["status"], rows[first.product_id]["checksum_status"]) == ("COMPLETE",
                                                                                           "verified")
    refused = rows[second.product_id]
    assert refused["status"] == "ERROR" and "'x.fits.part'" in refused["message"]
    assert (world.savedir / "x.fits").read_bytes() == product_bytes(safety_emulator, first)
    assert sorted(os.listdir(world.savedir)) == ["x.fits", "x.fits.checksum"]
    world.assert_nothing_written_outside()


# --- two processes, one folder --------------------------------------------------------------------

CHILD = """
import sys
import requests
from astroquery_casda_ext.download import Downloader
downloader = Downloader(requests.Session(), workers=2, progress=False)
downloader.download(sys.argv[2:], sys.argv[1], save_manifest=True)
"""


def test_two_processes_on_one_folder_take_turns_and_the_second_skips_what_is_verified(
        safety_emulator, files, world):
    urls = [url for item in files for url in (item.url, item.checksum_url)]
    safety_emulator.set_options(transfer_rate=1_000_000)                 # ~1.5 s per file
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(world.savedir), *urls])
    try:
        deadline = time.monotonic() + 60
        while not list(world.savedir.glob("*.part")):
            assert child.poll() is None and time.monotonic() < deadline, "the first download never started"
            time.sleep(0.02)
        # A second run with no_wait fails at once and touches nothing.
        before = sorted(os.listdir(world.savedir))
        with pytest.raises(FolderBusyError, match="pid"):
            downloader().download(files, world.savedir, no_wait=True)
        assert sorted(os.listdir(world.savedir)) == before
        # A second run that waits starts when the first is done.
        second = {}
        waiter = threading.Thread(target=lambda: second.update(
            manifest=downloader().download(files, world.savedir, save_manifest=True)))
        waiter.start()
        assert child.wait(timeout=120) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    waiter.join(timeout=120)
    assert not waiter.is_alive()
    safety_emulator.set_options(transfer_rate=None)
    manifest = second["manifest"]
    assert list(manifest.table["status"]) == ["SKIPPED", "SKIPPED"]
    assert list(manifest.table["checksum_status"]) == ["verified", "verified"]
    assert list(manifest.table["attempts"]) == [0, 0]                  # nothing fetched again
    for item in files:
        assert (world.savedir / item.filename).read_bytes() == product_bytes(safety_emulator, item)
    saved = Manifest.read(world.savedir / MANIFEST_NAME).table
    assert sorted(saved["path"]) == sorted(str(world.savedir / item.filename) for item in files)  # a row each
    assert sorted(os.listdir(world.savedir)) == sorted(
        [MANIFEST_NAME] + [name for item in files for name in (item.filename, item.filename + ".checksum")])
    world.assert_nothing_written_outside()


# --- a file changed between two runs --------------------------------------------------------------

@pytest.mark.parametrize("with_checksum", [True, False])
def test_a_file_changed_on_the_server_is_fetched_again_never_spliced(safety_emulator, files, world,
                                                                     with_checksum):
    item = files[0]
    items = [item] if with_checksum else [item.url]
    safety_emulator.add_fault(FaultRule(DATA, "truncate", after_bytes=600_000, times=1))
    first = downloader(retry=RetryPolicy(total=0)).download(items, world.savedir)
    assert first.table["status"][0] == "ERROR"
    part = world.savedir / (item.filename + ".part")
    assert part.read_bytes() == product_bytes(safety_emulator, item)[:600_000]
    assert "ETag" in stored_validator(part)            # what the resume will send in If-Range

    new = bytes(range(256)) * (SIZE // 256) + b"new version"                 # another file, another size
    served = served_path(safety_emulator, item.url)
    replacement = served.with_name(served.name + ".new")
    replacement.write_bytes(new)
    os.replace(replacement, served)
    sidecar = served.with_name(served.name + ".checksum")
    sidecar.with_name("tmp.checksum").write_text(checksum_text(new))
    os.replace(sidecar.with_name("tmp.checksum"), sidecar)

    since = len(safety_emulator.request_log)
    row = downloader().download(items, world.savedir).table[0]
    assert (world.savedir / item.filename).read_bytes() == new               # byte for byte: no splice
    assert row["status"] == "COMPLETE" and row["size"] == len(new)
    assert row["checksum_status"] == ("verified" if with_checksum else "size-only")
    assert row["bytes_transferred"] == len(new) and row["attempts"] == 1
    transfers = [entry for entry in safety_emulator.request_log[since:] if entry.path.endswith(".fits")]
    assert [(entry.status, entry.bytes_sent) for entry in transfers] == [(200, len(new))]
    assert not list(world.savedir.glob("*.part*"))
    world.assert_nothing_written_outside()


def stored_validator(part):
    try:
        return json.loads(os.getxattr(part, "user.casda.validator"))
    except OSError:
        return json.loads(Path(str(part) + ".validator").read_text())


def test_an_unchanged_file_without_checksum_is_continued_thanks_to_its_validator(safety_emulator, files,
                                                                                  world):
    item = files[0]
    safety_emulator.add_fault(FaultRule(DATA, "truncate", after_bytes=600_000, times=1))
    first = downloader(retry=RetryPolicy(total=0)).download([item.url], world.savedir)
    assert first.table["status"][0] == "ERROR"
    since = len(safety_emulator.request_log)
    row = downloader().download([item.url], world.savedir).table[0]
    assert (row["status"], row["checksum_status"], row["bytes_transferred"]) == (
        "COMPLETE", "size-only", SIZE - 600_000)
    assert (world.savedir / item.filename).read_bytes() == product_bytes(safety_emulator, item)
    transfers = [entry for entry in safety_emulator.request_log[since:] if entry.path.endswith(".fits")]
    assert [(entry.status, entry.bytes_sent) for entry in transfers] == [(206, SIZE - 600_000)]
    assert sorted(os.listdir(world.savedir)) == [item.filename]          # validator gone with the .part
    world.assert_nothing_written_outside()


def test_without_validator_or_checksum_a_partial_file_is_not_continued(safety_emulator, files, world):
    item = files[0]
    part = world.savedir / (item.filename + ".part")
    part.write_bytes(b"\xff" * 500_000)                           # no validator: whose bytes are these?
    since = len(safety_emulator.request_log)
    row = downloader().download([item.url], world.savedir).table[0]
    assert (row["status"], row["checksum_status"]) == ("COMPLETE", "size-only")
    assert (world.savedir / item.filename).read_bytes() == product_bytes(safety_emulator, item)
    transfers = [entry for entry in safety_emulator.request_log[since:] if entry.path.endswith(".fits")]
    assert [entry.status for entry in transfers] == [200]
    world.assert_nothing_written_outside()


# --- bounds ---------------------------------------------------------------------------------------

def test_a_416_loop_is_bounded_with_backoff(safety_emulator, files, world, fake_time):
    item = files[0]
    (world.savedir / (item.filename + ".part")).write_bytes(product_bytes(safety_emulator, item)[:1000])
    safety_emulator.add_fault(FaultRule(DATA, "status", status=416))
    since = len(safety_emulator.request_log)
    manifest = Downloader(requests.Session(), progress=False, retry=RetryPolicy(total=3, jitter=0.0),
                          sleep=fake_time.sleep, clock=fake_time.clock).download([item], world.savedir)
    row = manifest.table[0]
    assert row["status"] == "ERROR" and "416" in row["message"] and row["attempts"] == 4
    assert fake_time.sleeps == [0.5, 1.0, 2.0]
    requests_sent = [entry for entry in safety_emulator.request_log[since:] if entry.path.endswith(".fits")]
    assert len(requests_sent) == 4
    assert sorted(os.listdir(world.savedir)) == [item.filename + ".checksum"]
    world.assert_nothing_written_outside()


@pytest.mark.parametrize("with_checksum", [True, False])
def test_an_endless_body_is_cut_and_the_file_failed(safety_emulator, files, world, with_checksum):
    item = files[0]
    safety_emulator.add_fault(FaultRule(DATA, "endless"))
    items = [item] if with_checksum else [item.url]
    limit = SIZE if with_checksum else 2_000_000
    manifest = downloader(max_unannounced=limit).download(items, world.savedir)
    row = manifest.table[0]
    assert row["status"] == "ERROR" and "more than the" in row["message"] and "cut" in row["message"]
    assert row["bytes_transferred"] <= limit
    assert not os.path.lexists(world.savedir / item.filename)
    assert not list(world.savedir.glob("*.part"))
    world.assert_nothing_written_outside()


def test_a_trickle_ends_with_an_error_naming_the_file_and_the_rate(safety_emulator, files, world):
    item = files[0]
    safety_emulator.add_fault(FaultRule(DATA, "slow", rate=50_000))

    def fast_clock():       # twenty seconds pass per real second: the grace ends in 50 ms
        return time.monotonic() * 20

    manifest = downloader(min_rate=100_000, grace=1.0, clock=fast_clock).download([item], world.savedir)
    row = manifest.table[0]
    assert row["status"] == "ERROR" and item.filename in row["message"]
    assert "below the minimum rate of 100.0 kB/s" in row["message"] and "/s)" in row["message"]
    assert not os.path.lexists(world.savedir / item.filename)
    part = world.savedir / (item.filename + ".part")
    if part.exists():                                 # kept for a later call: a prefix of the file
        assert product_bytes(safety_emulator, item).startswith(part.read_bytes())
    world.assert_nothing_written_outside()


# --- reruns: caller names and labels --------------------------------------------------------------

def test_a_rerun_keeps_verified_rows_labels_and_one_row_per_path(safety_emulator, files, world):
    first, second = files
    names = {first.url: "src-A.fits", second.url: "src-B.fits"}
    labels = {first.url: {"source": "A", "ra": 10.5}, second.url: {"source": "B", "ra": 11.25}}
    downloader().download([first], world.savedir, names=names, labels=labels, save_manifest=True)
    since = len(safety_emulator.request_log)
    again = downloader().download(files, world.savedir, names=names, labels=labels, save_manifest=True)
    rows = {Path(row["path"]).name: row for row in again.table}
    assert (rows["src-A.fits"]["status"], rows["src-A.fits"]["attempts"]) == ("SKIPPED", 0)
    assert rows["src-B.fits"]["status"] == "COMPLETE"
    fetched = [entry.path for entry in safety_emulator.request_log[since:]]
    assert all(second.filename in path for path in fetched)        # nothing asked about A
    saved = Manifest.read(world.savedir / MANIFEST_NAME).table
    assert sorted(saved["path"]) == [str(world.savedir / "src-A.fits"), str(world.savedir / "src-B.fits")]
    assert sorted(zip(saved["source"], saved["ra"])) == [("A", 10.5), ("B", 11.25)]
    for item, name in ((first, "src-A.fits"), (second, "src-B.fits")):
        assert (world.savedir / name).read_bytes() == product_bytes(safety_emulator, item)
    world.assert_nothing_written_outside()


# --- the command line -----------------------------------------------------------------------------

def test_the_command_line_says_when_only_sizes_were_checked(safety_emulator, files, world, capsys):
    from astroquery_casda_ext import cli
    code = cli.main(["download", files[0].url, str(world.savedir), "--server", safety_emulator.url])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_OK, err
    assert "1 file(s) had no CASDA .checksum: only their size was checked" in out + err
    saved = Manifest.read(world.savedir / MANIFEST_NAME).table
    assert list(saved["checksum_status"]) == ["size-only"]
    assert (world.savedir / files[0].filename).read_bytes() == product_bytes(safety_emulator, files[0])
    world.assert_nothing_written_outside()


def test_the_command_line_no_wait_fails_at_once_on_a_busy_folder(safety_emulator, files, world, capsys):
    from astroquery_casda_ext import cli
    from astroquery_casda_ext.download import FolderLock
    with FolderLock(world.savedir):
        code = cli.main(["download", "--no-wait", "--quiet", files[0].url, files[0].checksum_url,
                         str(world.savedir), "--server", safety_emulator.url])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_DOWNLOAD and "another download is writing into" in err
    assert os.listdir(world.savedir) == []
    world.assert_nothing_written_outside()
