"""Data safety of the one writer (``writer.py``) on every path that writes a file, over real
HTTP on 127.0.0.1: the emulator (TAP, partitioned TAP) and a small file server whose names we
choose (downloads).  One test per attack class:

- reserved names (the manifest, the folder lock, the partition manifest, temporaries) given
  through the URL path, ``Content-Disposition`` and explicit names;
- a symbolic link planted at every output: download, ``.part``, ``.checksum``, manifest,
  lock, TAP output, the writer's claim, partition part and manifest, ``-o``, plot;
- two writers on one output or one partitioned folder (threads and processes);
- changed, corrupted and foreign parts, damaged partition manifests;
- a file system that refuses ``flock`` (in-process and in a subprocess);
- server names and texts that break the manifest's text format.

Each asserts what is on disk, what the call returned or raised, how long it took, and that
nothing outside the destination changed.
"""
import errno
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

import pyarrow.dataset
import pyarrow.parquet
import pytest
import requests
from astropy.table import Table

from astroquery_casda_ext import CasdaClass, writer
from astroquery_casda_ext.download import LOCK_NAME, MANIFEST_NAME, Downloader, Manifest
from astroquery_casda_ext.emulator import CasdaEmulator, FaultRule
from astroquery_casda_ext.errors import (FolderBusyError, InvalidInputError, LockUnavailableError,
                                         OutputExistsError, PartitionedQueryError, UnsafeFilenameError)
from astroquery_casda_ext.tap import MANIFEST_NAME as PARTITION_MANIFEST
from astroquery_casda_ext.transport import RetryPolicy

pytestmark = pytest.mark.matrix("data-safety")

VICTIM = b"precious bytes outside the destination\n"
ROWS = 300
CATALOGUE = "casda.bulk_continuum_component"
ALL_ROWS = f"SELECT * FROM {CATALOGUE}"
SMALL = f"SELECT TOP 20 component_id, ra_deg_cont, dec_deg_cont FROM {CATALOGUE}"


# --- the worlds --------------------------------------------------------------------------------------

@pytest.fixture
def world(tmp_path):
    """``dest`` inside ``tmp_path``, and a file outside it that nothing may touch."""
    return World(tmp_path)


class World:
    def __init__(self, root):
        self.root = root
        (root / "outside").mkdir()
        self.victim = root / "outside" / "victim.bin"
        self.victim.write_bytes(VICTIM)
        self.dest = root / "dest"
        self.dest.mkdir()
        self.before = self.outside_files()

    def outside_files(self):
        return sorted(str(path.relative_to(self.root)) for path in self.root.rglob("*")
                      if self.dest not in path.parents and path != self.dest)

    def link(self, name):
        (self.dest / name).symlink_to(self.victim)
        return self.dest / name

    def assert_nothing_written_outside(self):
        assert self.victim.read_bytes() == VICTIM
        assert self.outside_files() == self.before

    def names(self, folder=None):
        return sorted(path.name for path in (folder or self.dest).iterdir())


class FileServer:
    """Serves ``files`` ({URL path: bytes}) with optional ``Content-Disposition`` names."""

    def __init__(self, files, dispositions=None):
        self.files, self.dispositions, self.seen = files, dict(dispositions or {}), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = unquote(self.path.split("?", 1)[0])
                server.seen.append(path)
                body = server.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if path in server.dispositions:
                    name = server.dispositions[path]
                    self.send_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(name)}")
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # shutdown() waits for serve_forever's next poll: 0.5 s each time by default
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def __call__(self, path):
        return self.url + quote(path)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def files():
    server = FileServer({"/d/a.fits": b"A" * 5000, "/d/b.fits": b"B" * 7000})
    yield server
    server.close()


def downloader():
    return Downloader(requests.Session(), progress=False, retry=RetryPolicy(total=2, jitter=0.0),
                      sleep=lambda seconds: None)


@pytest.fixture(scope="module")
def catalogue_emulator(tmp_path_factory):
    with CasdaEmulator(tmp_path_factory.mktemp("writer-casda"), catalogue_rows=ROWS) as emulator:
        yield emulator


@pytest.fixture
def casda(catalogue_emulator):
    catalogue_emulator.reset()
    yield CasdaClass(server=catalogue_emulator.url)
    catalogue_emulator.clear_faults()


def _jobs_created(emulator):
    return sum(1 for entry in emulator.request_log
               if entry.method == "POST" and entry.path.rstrip("/").endswith("/tap/async"))


def _readable_manifest(path):
    return Table.read(path, format="ascii.ecsv")


# --- reserved names -------------------------------------------------------------------------------------

RESERVED = [MANIFEST_NAME, LOCK_NAME, PARTITION_MANIFEST, "a.fits.part", "x.casda.tmp", "CASDA_MANIFEST.ECSV"]


@pytest.mark.parametrize("name", RESERVED)
def test_a_reserved_name_in_the_url_path_is_an_error_row_never_an_overwrite(files, world, name):
    files.files["/d/" + name] = b"server bytes\n"
    first = downloader().download([files("/d/a.fits")], world.dest, save_manifest=True)
    assert list(first.table["status"]) == ["COMPLETE"]
    saved = (world.dest / MANIFEST_NAME).read_bytes()
    started = time.monotonic()
    manifest = downloader().download([files("/d/" + name), files("/d/b.fits")], world.dest, save_manifest=True)
    assert time.monotonic() - started < 10
    rows = {Path(str(row["url"])).name: row for row in manifest.table}
    assert rows[name]["status"] == "ERROR" and rows[name]["error_type"] == "UnsafeFilenameError"
    assert "name the package uses" in rows[name]["message"]
    assert rows["b.fits"]["status"] == "COMPLETE"
    assert "/d/" + name not in files.seen                               # refused before any request
    table = _readable_manifest(world.dest / MANIFEST_NAME)               # still our manifest
    assert saved.splitlines()[0] == (world.dest / MANIFEST_NAME).read_bytes().splitlines()[0]
    assert {Path(str(path)).name for path in table["path"] if path} >= {"a.fits", "b.fits"}
    assert world.names() == sorted([MANIFEST_NAME, "a.fits", "b.fits"])
    world.assert_nothing_written_outside()


@pytest.mark.parametrize("name", RESERVED)
def test_a_reserved_name_in_content_disposition_is_an_error_row(files, world, name):
    files.dispositions["/d/b.fits"] = name
    downloader().download([files("/d/a.fits")], world.dest, save_manifest=True)
    manifest = downloader().download([files("/d/b.fits")], world.dest, save_manifest=True)
    row = manifest.table[0]
    assert (row["status"], row["error_type"]) == ("ERROR", "UnsafeFilenameError")
    assert repr(name) in row["message"]
    table = _readable_manifest(world.dest / MANIFEST_NAME)
    assert list(table["status"]) == ["COMPLETE", "ERROR"]               # the first run's row is kept
    assert world.names() == sorted([MANIFEST_NAME, "a.fits"])
    world.assert_nothing_written_outside()


@pytest.mark.parametrize("name", RESERVED)
def test_a_reserved_explicit_name_is_an_error_row(files, world, name):
    manifest = downloader().download([files("/d/a.fits"), files("/d/b.fits")], world.dest,
                                     names={files("/d/b.fits"): name}, save_manifest=True)
    rows = list(manifest.table)
    assert (rows[0]["status"], rows[1]["status"], rows[1]["error_type"]) == ("COMPLETE", "ERROR",
                                                                             "UnsafeFilenameError")
    assert "given file name" in rows[1]["message"]
    assert len(_readable_manifest(world.dest / MANIFEST_NAME)) == 2
    assert world.names() == sorted([MANIFEST_NAME, "a.fits"])
    world.assert_nothing_written_outside()


def test_a_tap_output_or_cli_output_may_not_take_a_reserved_name(casda, catalogue_emulator, world, files,
                                                                  capsys):
    from astroquery_casda_ext import cli
    downloader().download([files("/d/a.fits")], world.dest, save_manifest=True)
    saved = (world.dest / MANIFEST_NAME).read_bytes()
    before = len(catalogue_emulator.request_log)
    with pytest.raises(UnsafeFilenameError, match="name the package uses"):
        casda.query_tap(SMALL, output=world.dest / MANIFEST_NAME, overwrite=True)
    code = cli.main(["tap", SMALL, "-o", str(world.dest / MANIFEST_NAME), "--overwrite", "--server",
                     catalogue_emulator.url])
    assert code != 0 and "name the package uses" in capsys.readouterr().err
    assert len(catalogue_emulator.request_log) == before                     # refused before sending
    assert (world.dest / MANIFEST_NAME).read_bytes() == saved
    assert world.names() == sorted([MANIFEST_NAME, "a.fits"])


# --- links planted at every output ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.fits", "a.fits.part", MANIFEST_NAME, LOCK_NAME])
def test_a_link_at_a_download_output_is_neither_followed_nor_replaced(files, world, name):
    link = world.link(name)
    try:
        manifest = downloader().download([files("/d/a.fits"), files("/d/b.fits")], world.dest,
                                         save_manifest=True)
    except UnsafeFilenameError as exc:          # the lock and the manifest: the whole run refuses
        assert name in (MANIFEST_NAME, LOCK_NAME) and "link" in str(exc)
    else:
        rows = {Path(str(row["url"])).name: row for row in manifest.table}
        assert rows["a.fits"]["status"] == "ERROR" and rows["b.fits"]["status"] == "COMPLETE"
    assert link.is_symlink() and os.readlink(link) == str(world.victim)
    world.assert_nothing_written_outside()


def test_a_link_at_a_checksum_sidecar_is_refused(world):
    server = FileServer({"/d/c.fits": b"C" * 100, "/d/c.fits.checksum": b"junk"})
    try:
        link = world.link("c.fits.checksum")
        manifest = downloader().download([server("/d/c.fits"), server("/d/c.fits.checksum")], world.dest)
    finally:
        server.close()
    assert manifest.table["status"][0] == "ERROR"
    assert link.is_symlink()
    world.assert_nothing_written_outside()


@pytest.mark.parametrize("planted", ["output", "claim"])
def test_a_link_at_a_tap_output_or_its_claim_is_refused_before_any_query(casda, catalogue_emulator, world,
                                                                         planted):
    output = world.dest / "result.csv"
    link = world.link(output.name if planted == "output" else writer.claim_path(output).name)
    before = len(catalogue_emulator.request_log)
    started = time.monotonic()
    with pytest.raises(UnsafeFilenameError, match="link"):
        casda.query_tap(SMALL, output=output, overwrite=True)
    assert time.monotonic() - started < 5
    assert len(catalogue_emulator.request_log) == before                  # nothing was sent
    assert link.is_symlink() and not output.exists() or output.is_symlink()
    world.assert_nothing_written_outside()


@pytest.mark.parametrize("name", ["part-00001.parquet", PARTITION_MANIFEST])
def test_a_link_in_a_partitioned_folder_is_refused(casda, world, name):
    folder = world.dest / "parts"
    casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=3, output=folder)
    (folder / name).unlink()
    (folder / name).symlink_to(world.victim)
    with pytest.raises((UnsafeFilenameError, PartitionedQueryError)) as failure:
        casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=3, output=folder)
    assert "symbolic link" in str(failure.value)
    if name != PARTITION_MANIFEST:            # the part alone failed (not retried); the others are kept
        assert list(failure.value.failed) == [1] and "2 finished parts" in str(failure.value)
    assert (folder / name).is_symlink()
    world.assert_nothing_written_outside()


@pytest.mark.parametrize("command", ["tap", "query"])
def test_cli_output_through_a_link_is_refused_even_with_overwrite(catalogue_emulator, world, capsys, command):
    from astroquery_casda_ext import cli
    link = world.link("found.csv")
    arguments = [SMALL] if command == "tap" else ["22h15m38s", "-45d50m30s"]
    for extra in ([], ["--overwrite"]):
        code = cli.main([command, *arguments, "-o", str(link), *extra, "--server", catalogue_emulator.url])
        assert code != 0
    assert "link" in capsys.readouterr().err
    assert link.is_symlink()
    world.assert_nothing_written_outside()


def test_cli_output_is_written_through_the_writer(catalogue_emulator, world, capsys):
    from astroquery_casda_ext import cli
    output = world.dest / "found.ecsv"
    assert cli.main(["tap", SMALL, "-o", str(output), "--server", catalogue_emulator.url]) == 0
    assert len(Table.read(output, format="ascii.ecsv")) == 20
    assert cli.main(["tap", SMALL, "-o", str(output), "--server", catalogue_emulator.url]) != 0   # exists
    assert cli.main(["tap", SMALL, "-o", str(output), "--overwrite", "--server", catalogue_emulator.url]) == 0
    assert world.names() == sorted(["found.ecsv"])                                   # no temporary left


def test_a_plot_through_a_link_is_refused(world):
    pytest.importorskip("matplotlib")
    from astroquery_casda_ext import plots
    link = world.link("curve.png")
    table = Table({"mjd": [58700.0, 58760.0, 58810.0], "peak_flux": [0.03, 0.1, 0.025], "rms": [0.001] * 3})
    with pytest.raises(UnsafeFilenameError, match="link"):
        plots.plot_light_curve(table, link)
    assert link.is_symlink()
    plots.plot_light_curve(table, world.dest / "real.png")
    assert (world.dest / "real.png").read_bytes().startswith(b"\x89PNG")
    assert world.names() == sorted(["curve.png", "real.png"])
    world.assert_nothing_written_outside()


# --- two writers ----------------------------------------------------------------------------------------

def test_a_second_query_tap_to_the_same_output_is_refused(casda, world):
    output = world.dest / "r.parquet"
    first = casda.query_tap(SMALL, output=output)
    written = output.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        casda.query_tap(SMALL, output=output)
    assert output.read_bytes() == written and first.rows == 20
    casda.query_tap(SMALL, output=output, overwrite=True)
    assert pyarrow.parquet.read_metadata(output).num_rows == 20
    assert world.names() == sorted(["r.parquet"])


def test_two_concurrent_writers_of_one_output_one_refused_at_once(casda, catalogue_emulator, world):
    latency = catalogue_emulator.add_fault(FaultRule(path="/tap/", kind="latency", delay=1.5, times=1))
    output = world.dest / "r.csv"
    outcomes = {}

    def run(label):
        started = time.monotonic()
        try:
            outcomes[label] = (casda.query_tap(SMALL, output=output, overwrite=True), time.monotonic() - started)
        except Exception as exc:    # noqa: BLE001 - the outcome is what the test compares
            outcomes[label] = (exc, time.monotonic() - started)
    first = threading.Thread(target=run, args=("first",))
    first.start()
    # The first run holds its claim once its query has reached the server (the claim's file exists
    # a moment before it is locked: on a busy machine the second run could take it in between).
    deadline = time.monotonic() + 30
    while (latency in catalogue_emulator.backend.faults.rules and first.is_alive()
           and time.monotonic() < deadline):
        time.sleep(0.01)
    assert writer.claim_path(output).exists(), "the first run's query never reached the server"
    run("second")
    first.join(30)
    refused, elapsed = outcomes["second"]
    assert isinstance(refused, OutputExistsError) and "another run" in str(refused)
    assert elapsed < 1.0                                           # refused, not queued behind the first
    assert outcomes["first"][0].rows == 20
    assert len(Table.read(output, format="ascii.csv")) == 20
    assert world.names() == sorted(["r.csv"])


def test_an_output_claimed_by_another_process_is_refused(casda, world):
    output = world.dest / "r.ecsv"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom astroquery_casda_ext.writer import atomic_output\n"
         "with atomic_output(sys.argv[1]) as out:\n    print('claimed', flush=True)\n    out.write(b'x')\n"
         "    time.sleep(30)\n", str(output)],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path(writer.__file__).parent.parent)})
    try:
        assert holder.stdout.readline().strip() == b"claimed"
        started = time.monotonic()
        with pytest.raises(OutputExistsError, match="another run"):
            casda.query_tap(SMALL, output=output, overwrite=True)
        assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.wait()
    casda.query_tap(SMALL, output=output)                  # a killed run's claim is taken over
    assert len(Table.read(output, format="ascii.ecsv")) == 20
    assert world.names() == sorted(["r.ecsv"])


def test_two_partitioned_runs_into_one_folder_the_second_refused_at_once(casda, catalogue_emulator, world):
    folder = world.dest / "parts"
    catalogue_emulator.add_fault(FaultRule(path="/results/result$", kind="latency", delay=0.5, times=2))
    outcome = {}
    first = threading.Thread(target=lambda: outcome.setdefault(
        "first", casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=2, output=folder)))
    first.start()
    # The first run holds the lock once it has sent anything (its lock file exists a moment
    # before it is locked: on a busy machine the second run could take the lock in between).
    deadline = time.monotonic() + 30
    while not catalogue_emulator.request_log and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert catalogue_emulator.request_log, "the first run sent nothing"
    started = time.monotonic()
    with pytest.raises(FolderBusyError, match="partitioned query"):
        casda.query_tap_partitioned(f"{ALL_ROWS} WHERE first_sbid > 0", by="dec_deg_cont", parts=2,
                                    output=folder)
    assert time.monotonic() - started < 1.0
    first.join(60)
    assert outcome["first"].rows == ROWS
    assert world.names(folder) == sorted([PARTITION_MANIFEST, "part-00000.parquet", "part-00001.parquet"])


# --- partitions: fingerprint, content verification, damaged manifests ------------------------------------

@pytest.mark.parametrize("change, differs", [
    ({"query": f"{ALL_ROWS} WHERE first_sbid > 0"}, "query"),
    ({"by": "dec_deg_cont"}, "by"),
    ({"parts": 4}, "parts"),
    ({"bounds": (0.0, 100.0)}, "bounds"),
])
def test_a_different_query_into_a_partitioned_folder_is_refused_naming_what_differs(casda, world, change,
                                                                                    differs):
    folder = world.dest / "parts"
    request = {"query": ALL_ROWS, "by": "ra_deg_cont", "parts": 3}
    casda.query_tap_partitioned(**request, output=folder)
    before = {name: (folder / name).read_bytes() for name in world.names(folder)}
    with pytest.raises(InvalidInputError, match=f"another partitioned query.*{differs}:") as failure:
        casda.query_tap_partitioned(**{**request, **change}, output=folder)
    assert str(folder) in str(failure.value)
    assert {name: (folder / name).read_bytes() for name in world.names(folder)} == before


def test_the_manifest_holds_a_fingerprint_and_each_parts_hash(casda, world):
    folder = world.dest / "parts"
    casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=2, output=folder)
    data = json.loads((folder / PARTITION_MANIFEST).read_text())
    assert len(data["fingerprint"]) == 64 and ["ra_deg_cont", "double"] in data["columns"]
    import hashlib
    for index in range(2):
        part = (folder / f"part-{index:05d}.parquet").read_bytes()
        assert data["written"][str(index)]["sha256"] == hashlib.sha256(part).hexdigest()


def test_a_part_corrupted_in_place_with_the_same_size_is_fetched_again(casda, catalogue_emulator, world):
    folder = world.dest / "parts"
    casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=3, output=folder)
    part = folder / "part-00001.parquet"
    good = part.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF                          # one byte flipped, same size
    part.write_bytes(bytes(damaged))
    before = _jobs_created(catalogue_emulator)
    result = casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=3, output=folder)
    assert (result.rows, result.resumed) == (ROWS, 2)
    assert _jobs_created(catalogue_emulator) - before == 1 + 1        # the FIELDs, the damaged part
    assert part.read_bytes() == good
    assert pyarrow.dataset.dataset(folder).count_rows() == ROWS


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],                                # cut short
    lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "written"}),
    lambda text: json.dumps({**json.loads(text), "written": {"0": {"rows": "many"}}}),
    lambda text: json.dumps({**json.loads(text), "queries": ["only one"]}),
    lambda text: "[1, 2, 3]",
    lambda text: "\udcff",
], ids=["cut", "no-written", "bad-entry", "bad-queries", "not-an-object", "not-utf8"])
def test_a_damaged_partition_manifest_is_a_clear_error_naming_it(casda, world, damage):
    folder = world.dest / "parts"
    casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=2, output=folder)
    manifest = folder / PARTITION_MANIFEST
    manifest.write_bytes(damage(manifest.read_text()).encode("utf-8", "surrogateescape"))
    with pytest.raises(InvalidInputError, match="damaged") as failure:
        casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=2, output=folder)
    assert str(manifest) in str(failure.value)
    assert not isinstance(failure.value, KeyError)


# --- file systems that refuse flock ---------------------------------------------------------------------

@pytest.fixture(params=[errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS], ids=["ENOLCK", "EOPNOTSUPP", "ENOSYS"])
def no_flock(monkeypatch, request):
    """NFS without lockd answers ENOLCK; Lustre mounted noflock, EOPNOTSUPP or ENOSYS."""
    import fcntl

    def refuse(fd, operation):
        raise OSError(request.param, os.strerror(request.param))
    monkeypatch.setattr(fcntl, "flock", refuse)


def test_downloads_into_a_folder_without_locks_fail_at_once_naming_it(files, world, no_flock):
    started = time.monotonic()
    with pytest.raises(LockUnavailableError, match="refuses locks") as failure:
        downloader().download([files("/d/a.fits")], world.dest)
    assert time.monotonic() - started < 2
    assert str(world.dest) in str(failure.value) and failure.value.path == str(world.dest)
    assert files.seen == []


def test_tap_outputs_and_partitions_without_locks_fail_at_once(casda, catalogue_emulator, world, no_flock):
    before = len(catalogue_emulator.request_log)
    started = time.monotonic()
    with pytest.raises(LockUnavailableError, match=str(world.dest)):
        casda.query_tap(SMALL, output=world.dest / "r.parquet")
    with pytest.raises(LockUnavailableError, match="refuses locks"):
        casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=2, output=world.dest / "parts")
    assert time.monotonic() - started < 3
    assert len(catalogue_emulator.request_log) == before
    assert world.names() == sorted(["parts"]) and world.names(world.dest / "parts") == sorted([])


def test_a_subprocess_on_a_lockless_file_system_exits_with_the_folder_named(world):
    script = ("import errno, fcntl, os, sys\n"
              "def refuse(fd, op): raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))\n"
              "fcntl.flock = refuse\n"
              "from astroquery_casda_ext import cli\n"
              "sys.exit(cli.main(['download', 'http://127.0.0.1:9/d/a.fits', sys.argv[1]]))\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script, str(world.dest)], capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(writer.__file__).parent.parent)})
    assert time.monotonic() - started < 60
    assert done.returncode != 0
    assert "refuses locks" in done.stderr.decode() and str(world.dest) in done.stderr.decode()


# --- names and texts that break the manifest's format ---------------------------------------------------

BREAKING = ["a\u2028b.fits", "a\u2029b.fits", "a\nb.fits", "a\rb.fits", "a\x00b.fits", "a\x85b.fits",
            "a\x1b[31mb.fits", "a\u202eb.fits"]


@pytest.mark.parametrize("name", BREAKING, ids=[repr(name) for name in BREAKING])
@pytest.mark.parametrize("source", ["disposition", "url", "explicit"])
def test_a_name_that_breaks_text_formats_is_refused_and_the_manifest_keeps_every_row(files, world, name,
                                                                                     source):
    downloader().download([files("/d/a.fits")], world.dest, save_manifest=True)
    names = None
    if source == "disposition":
        files.dispositions["/d/b.fits"] = name
        url = files("/d/b.fits")
    elif source == "url":
        files.files["/d/" + name] = b"bytes"
        url = files("/d/" + name)
    else:
        url, names = files("/d/b.fits"), {files("/d/b.fits"): name}
    manifest = downloader().download([url], world.dest, names=names, save_manifest=True)
    assert (manifest.table["status"][0], manifest.table["error_type"][0]) == ("ERROR", "UnsafeFilenameError")
    table = Manifest.read(world.dest / MANIFEST_NAME).table
    assert list(table["status"]) == ["COMPLETE", "ERROR"]
    downloader().download([files("/d/a.fits")], world.dest, save_manifest=True)      # the next run
    assert len(Manifest.read(world.dest / MANIFEST_NAME).table) == 2
    assert world.names() == sorted([MANIFEST_NAME, "a.fits"])
    world.assert_nothing_written_outside()


def test_server_text_that_breaks_text_formats_keeps_the_manifest_readable(world):
    """An error file's text (the manifest's ``message``) with every line-breaking character."""
    text = "region missed\u2028the cube\r\x00\x0c\x1c\x85\u2029 \x1b[2J end".encode("utf-8")
    server = FileServer({"/d/error-01.txt": text, "/d/a.fits": b"A" * 10})
    try:
        first = downloader().download([server("/d/a.fits")], world.dest, save_manifest=True)
        manifest = downloader().download([server("/d/error-01.txt")], world.dest, save_manifest=True)
    finally:
        server.close()
    assert first.table["status"][0] == "COMPLETE"
    assert manifest.table["kind"][0] == "error-file"
    saved = Manifest.read(world.dest / MANIFEST_NAME).table
    assert len(saved) == 2
    message = str(saved["message"][1])
    assert message.startswith("region missed\\u2028the cube\\r\\x00") and message.endswith("\\x1b[2J end")


def test_an_unreadable_manifest_is_kept_aside_not_dropped(files, world, caplog):
    garbage = b"# %ECSV 1.0\nnot: [a manifest\n\x00\x00"
    (world.dest / MANIFEST_NAME).write_bytes(garbage)
    manifest = downloader().download([files("/d/a.fits")], world.dest, save_manifest=True)
    assert manifest.table["status"][0] == "COMPLETE"
    aside = [name for name in world.names() if name.startswith("casda_manifest.unreadable-")]
    assert len(aside) == 1 and (world.dest / aside[0]).read_bytes() == garbage
    assert len(Manifest.read(world.dest / MANIFEST_NAME).table) == 1
    assert "could not be read" in caplog.text


# --- the writer's own rules ------------------------------------------------------------------------------

def test_a_claim_hard_linked_to_a_victim_is_refused_and_the_victim_untouched(world):
    output = world.dest / "out.csv"
    os.link(world.victim, writer.claim_path(output))
    with pytest.raises(UnsafeFilenameError, match="plain file of its own"):
        writer.write_bytes(output, b"new")
    assert not output.exists()
    world.assert_nothing_written_outside()


def test_a_file_appearing_while_the_output_is_written_is_not_replaced(world):
    output = world.dest / "out.csv"
    with pytest.raises(OutputExistsError, match="appeared while it was written"):
        with writer.atomic_output(output) as stream:
            stream.write(b"ours")
            output.write_bytes(b"theirs")      # someone else's file, made meanwhile
    assert output.read_bytes() == b"theirs"
    assert world.names() == ["out.csv"]


def test_a_failed_write_leaves_nothing_and_a_dead_claim_is_taken_over(world):
    output = world.dest / "out.csv"
    writer.claim_path(output).write_bytes(b"left by a killed run")
    with pytest.raises(RuntimeError):
        with writer.atomic_output(output) as stream:
            stream.write(b"half")
            raise RuntimeError("the answer broke off")
    assert world.names() == []
    assert writer.write_bytes(output, b"whole") == str(output) and output.read_bytes() == b"whole"
    assert world.names() == ["out.csv"]
