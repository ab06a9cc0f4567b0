"""The access workloads: ours against astroquery.casda and curl, on the emulator.

Each ``run_wN(scale, workdir)`` returns a `WorkloadResult`: its parameters, every run's
figures, and the `Row` objects the table prints.  They are built from `benchmarks.harness`:
the emulator runs in its own process, each client run in a fresh child process, the sides
interleaved with a rotating order, the median deciding each target, every downloaded file
checked against the emulator's checksum of it, request counts from the emulator's log.

W1 stage and download   `CasdaClass`: login, stage_data, download_files of N bulk products
                        (N = 5, 20, 80), against ``astroquery.casda`` with ``POLL_INTERVAL=1``
                        (and its 20 s default at N = 20); job polls of each side.
W2 cutouts              positions x 3 images: our one ``cutout`` job against one astroquery
                        ``cutout`` call (one job) per position.
W3 one large file       our ``download_files`` against the bare verifying loop, curl then
                        sha1sum, and curl; our peak memory.
W4 request counts       DataLink requests, job polls and all requests of W1, W2 and W7.
W7 many small files     500 files of 50 kB, 50 ms added to every request (a client far from
                        the archive): stage and download, ours against astroquery.casda.

W5 and W6 (catalogue-scale TAP) live in ``benchmarks/tap_scale.py``.  The functions a child
process runs (``ours_stage_download`` ...) take a dict of parameters, do their imports and
set-up, and return the work to time (see `harness.child_main`).
"""
import compileall
import contextlib
import dataclasses
import math
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import harness
# Row, WorkloadResult, say, vmhwm_mb and timed stay importable from here (tap_scale.py uses them).
from .harness import REPO_ROOT, Row, WorkloadResult, say, vmhwm_mb  # noqa: F401
from .harness import child_env as _child_env  # noqa: F401

__all__ = ["Scale", "FULL", "QUICK", "Row", "WorkloadResult", "request_counts",
           "run_w1", "run_w2", "run_w3", "run_w4", "run_w7"]

request_counts = harness.request_counts
#: Images of W2: the cont.restored.t0 image of three VAST epochs, one field (320, -51).
W2_SBIDS = ("9668", "9694", "9723")
W2_FIELD = (320.0, -51.0)
#: Half-width (deg) of the square the W2 positions are drawn from: inside all three footprints.
W2_SPREAD = 0.15
#: The emulator's bulk products (``HoldingsConfig.bulk_count``): SBID 9001, files bulk.SB9001.NNNN.fits.
BULK_QUERY = "SELECT * FROM ivoa.obscore WHERE obs_id = '9001' ORDER BY obs_publisher_did"
#: astroquery.casda's default ``conf.poll_interval``.
ASTROQUERY_DEFAULT_POLL = 20.0
CHILD = "benchmarks.workloads"
#: W3's file at full scale: 2 GiB (issue 20's acceptance size).
W3_FULL_SIZE = 2 << 30


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark run.

    Attributes
    ----------
    name : str
        ``"full"`` or ``"quick"``.
    repeats : int
        Runs of each side of a workload (interleaved; the median decides).
    w1_files : tuple of int
        W1: numbers of bulk products staged and downloaded, one measurement each.
    product_size : int
        W1: bytes of each product.
    job_seconds : float
        How long the emulator's SODA jobs take (a quarter QUEUED, the rest EXECUTING).
    poll_interval : float
        astroquery's lowered ``POLL_INTERVAL`` (its default is 20 s).
    default_poll_files : int or None
        The W1 size at which astroquery also runs with its 20 s default (None: not run).
    positions : int
        W2: cutout positions (each cut from 3 images).
    big_size, big_repeats : int
        W3: bytes of the single file, and runs of each side (at least ``repeats``).
    big_settle : float
        W3: seconds every run waits after the previous run's file was deleted.
    many_files, many_size : int
        W7: products and bytes of each.
    many_latency : float
        W7: seconds the emulator adds to every request.
    rows, tap_repeat : int
        W5/W6 (``tap_scale.py``): rows of the query, runs of each side.
    """

    name: str
    repeats: int
    w1_files: tuple
    product_size: int
    job_seconds: float
    poll_interval: float
    default_poll_files: int | None
    positions: int
    big_size: int
    big_repeats: int
    big_settle: float
    many_files: int
    many_size: int
    many_latency: float
    rows: int
    tap_repeat: int

    def with_repeats(self, repeats):
        """This scale with ``repeats`` runs of each side everywhere (W3 keeps at least 5 at full scale)."""
        big = max(repeats, 5) if self.name == "full" and self.big_size >= W3_FULL_SIZE else repeats
        return dataclasses.replace(self, repeats=repeats, big_repeats=big, tap_repeat=repeats)

    def with_big_size(self, size):
        """This scale with W3's file of ``size`` bytes (below full size, ``repeats`` runs suffice)."""
        big = self.big_repeats if size >= W3_FULL_SIZE else self.repeats
        return dataclasses.replace(self, big_size=size, big_repeats=big)


FULL = Scale("full", repeats=3, w1_files=(5, 20, 80), product_size=5_000_000, job_seconds=2.0,
             poll_interval=1.0, default_poll_files=20, positions=100, big_size=W3_FULL_SIZE, big_repeats=5,
             big_settle=4.0,
             many_files=500, many_size=50_000, many_latency=0.05, rows=100_000, tap_repeat=3)
QUICK = Scale("quick", repeats=3, w1_files=(3,), product_size=100_000, job_seconds=0.2, poll_interval=0.25,
              default_poll_files=None, positions=3, big_size=5_000_000, big_repeats=3, big_settle=0.0,
              many_files=6,
              many_size=20_000, many_latency=0.01, rows=2_000, tap_repeat=3)


def timed(function, *args, **kwargs):
    """(seconds, value) of one call."""
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - start, value


def job_phases(seconds):
    """A SODA job plan lasting ``seconds``: a quarter QUEUED, the rest EXECUTING."""
    return (("QUEUED", seconds / 4), ("EXECUTING", seconds * 3 / 4))


def bulk_names(count):
    """File names of the first ``count`` bulk products."""
    return [f"bulk.SB9001.{index:04d}.fits" for index in range(count)]


def write_table(emulator, adql, path):
    """The input both clients are given: a TAP result (pyvo, untimed), saved as a VOTable."""
    import pyvo
    table = pyvo.dal.TAPService(emulator.url + "casda_vo_tools/tap").run_sync(adql).to_table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table.write(path, format="votable", overwrite=True)
    return len(table)


def measured_run(emulator, target, params, workdir, savedir=None, verify=None):
    """One child run on a freshly reset emulator: its figures, request counts and checks.

    ``savedir`` (created before the child starts: astroquery does not create it) is checked
    with ``verify(savedir)`` after the run and removed.
    """
    emulator.reset()
    cwd = Path(workdir) / "cwd"       # astroquery may write into its working directory
    cwd.mkdir(exist_ok=True)
    with harness.scratch(savedir) if savedir else contextlib.nullcontext():
        params = dict(params, url=emulator.url, username=emulator.username, password=emulator.password)
        if savedir:
            params["savedir"] = str(savedir)
        figures = harness.run_child(f"{CHILD}:{target}", params, cwd=cwd)
        figures["requests"] = harness.request_counts(emulator.log())
        if verify:
            figures.update(verify(savedir))
    return figures


def estimated_at_default_poll(seconds, sleeps_per_job, poll_interval):
    """What a run of astroquery polling every ``poll_interval`` s would take at 20 s.

    Each job slept ``k`` times ``poll_interval`` in the measured run, so it finished within
    ``k * poll_interval`` s after RUN; at 20 s it sleeps ``ceil(k * poll_interval / 20)``
    times.  Everything else (requests, downloads) is kept as measured.
    """
    sleeps_now = sum(sleeps_per_job) * poll_interval
    sleeps_default = sum(math.ceil(k * poll_interval / ASTROQUERY_DEFAULT_POLL) for k in sleeps_per_job)
    return seconds - sleeps_now + sleeps_default * ASTROQUERY_DEFAULT_POLL


def _aq_name(poll):
    if poll == ASTROQUERY_DEFAULT_POLL:
        return f"astroquery.casda, default poll {poll:g} s"
    return f"astroquery.casda, POLL_INTERVAL={poll:g}"


def _side_key(poll):
    return f"astroquery_poll_{poll:g}s"


# --- W1: stage and download ---------------------------------------------------------------------

def run_w1(scale, workdir):
    """W1: login, stage N bulk products (a job of ``job_seconds``), download them; N in ``w1_files``."""
    most = max(scale.w1_files)
    emulator_dir = workdir / "emulator-w1"
    measurements, rows = {}, []
    with harness.EmulatorProcess(emulator_dir, bulk_count=most, bulk_size=scale.product_size,
                                 job_phases=job_phases(scale.job_seconds)) as emulator:
        for count in scale.w1_files:
            table = workdir / f"w1-{count}.vot"
            found = write_table(emulator, BULK_QUERY.replace("SELECT", f"SELECT TOP {count}"), table)
            assert found == count, f"expected {count} bulk products, got {found}"
            names = bulk_names(count)

            def side(target, poll=None, _table=table, _names=names):
                params = {"table": str(_table)} | ({"poll_interval": poll} if poll else {})
                verify = (lambda savedir: harness.verify_files(savedir, emulator_dir, _names))
                return lambda: measured_run(emulator, target, params, workdir, workdir / "w1-save", verify)

            sides = {"ours": side("ours_stage_download"),
                     _side_key(scale.poll_interval): side("astroquery_stage_download", scale.poll_interval)}
            if count == scale.default_poll_files:
                sides[_side_key(ASTROQUERY_DEFAULT_POLL)] = side("astroquery_stage_download",
                                                                 ASTROQUERY_DEFAULT_POLL)
            runs = harness.interleave(sides, scale.repeats, f"W1 N={count}")
            measurements[f"N={count}"] = runs
            rows += _w1_rows(scale, count, runs)
    parameters = {"files": list(scale.w1_files), "product_size": scale.product_size,
                  "job_seconds": scale.job_seconds, "astroquery_poll_interval": scale.poll_interval,
                  "repeats": scale.repeats,
                  "steps": "login, stage_data, download_files (each client's defaults; ours verifies "
                           "checksums); every saved file then checked against the emulator's checksum"}
    return WorkloadResult("W1", "stage and download", parameters, measurements, rows)


def _w1_rows(scale, count, runs):
    seconds = (lambda name: harness.figures_of(runs[name], "seconds"))
    polls = (lambda name: harness.figures_of(runs[name], "requests.job_polls"))
    measure = f"stage + download {count} x {scale.product_size / 1e6:g} MB"
    fast = _side_key(scale.poll_interval)
    on_grid = (scale.job_seconds / scale.poll_interval).is_integer()
    note = (f"a job of {scale.job_seconds:g} s ends on astroquery's {scale.poll_interval:g} s grid: "
            "its best case" if on_grid else f"a job of {scale.job_seconds:g} s")
    rows = [harness.time_row("W1", measure, seconds("ours"), seconds(fast), _aq_name(scale.poll_interval),
                             1.0, note),
            harness.count_row("W1", f"job polls, N={count}", polls("ours"), polls(fast),
                              _aq_name(scale.poll_interval), "fewer than astroquery",
                              lambda ours, theirs: ours < theirs,
                              "GETs of the job document or /phase, from the emulator's log")]
    slow = _side_key(ASTROQUERY_DEFAULT_POLL)
    if slow in runs:
        rows.append(harness.time_row("W1", measure, seconds("ours"), seconds(slow),
                                     _aq_name(ASTROQUERY_DEFAULT_POLL), 5.0))
    return rows


def _read_table(path):
    from astropy.table import Table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Table.read(path, format="votable")


def ours_stage_download(params):
    """Child, W1 and W7: our façade's login, stage_data and download_files."""
    from astroquery_casda_ext import CasdaClass
    table = _read_table(params["table"])

    def work():
        client = CasdaClass(server=params["url"])
        client.login(username=params["username"], password=params["password"])
        urls = client.stage_data(table)
        client.download_files(urls, savedir=params["savedir"], progress=False)
        return {"urls": len(urls)}
    return work


# --- astroquery.casda, pointed at the emulator (in the child) -----------------------------------------

def memory_keyring(service, username, password):
    """A keyring backend holding one password in memory (astroquery's login reads it there)."""
    from keyring.backend import KeyringBackend

    class MemoryKeyring(KeyringBackend):
        priority = 1

        def __init__(self):
            super().__init__()
            self.passwords = {(service, username): password}

        def get_password(self, service_name, user):
            return self.passwords.get((service_name, user))

        def set_password(self, service_name, user, secret):
            self.passwords[(service_name, user)] = secret

        def delete_password(self, service_name, user):
            self.passwords.pop((service_name, user), None)

    return MemoryKeyring()


def _astroquery_class():
    """astroquery.casda.CasdaClass, unchanged, counting the sleeps of its polling loop."""
    from astroquery.casda import CasdaClass as AstroqueryCasda

    class CountingCasda(AstroqueryCasda):
        def __init__(self):
            super().__init__()
            self.sleeps_per_job = []
            self._looks = 0

        def _run_job(self, job_location, verbose, *, poll_interval=20):
            self._looks = 0
            status = super()._run_job(job_location, verbose, poll_interval=poll_interval)
            # It looks once right after RUN, then once after each sleep.
            self.sleeps_per_job.append(self._looks - 1)
            return status

        def _get_job_details_xml(self, async_job_url):
            self._looks += 1
            return super()._get_job_details_xml(async_job_url)

    return CountingCasda


def astroquery_casda(params):
    """A ``astroquery.casda.CasdaClass`` talking to the emulator (not yet logged in).

    astroquery 0.4.11 froze ``conf.server``, ``soda_base_url``, ``login_url`` and
    ``poll_interval`` into class attributes at import, and its URL items are "option"
    items whose only allowed value is the production URL (``conf.set_temp`` refuses any
    other), so the URLs are set on the instance.  The DataLink URL comes from the table's
    ``access_url``, which the emulator fills with its own proxy URL.  The password is read
    from the keyring, as astroquery does: an in-memory one in this child process.
    """
    import keyring
    from astroquery import log
    log.setLevel("WARNING")          # no INFO lines or progress bars
    keyring.set_keyring(memory_keyring("astroquery:casda.csiro.au", params["username"], params["password"]))
    url = params["url"]
    casda = _astroquery_class()()
    casda.URL = url + "casda_vo_tools/sia2/query"
    casda._soda_base_url = url + "casda_data_access/"
    casda._login_url = url + "casda_vo_proxy/vo/tap/availability"
    casda.POLL_INTERVAL = params["poll_interval"]
    return casda


def astroquery_stage_download(params):
    """Child, W1 and W7: astroquery.casda's login, stage_data and download_files."""
    table = _read_table(params["table"])

    def work():
        casda = astroquery_casda(params)
        casda.login(username=params["username"])
        urls = casda.stage_data(table)
        casda.download_files(urls, savedir=params["savedir"])
        return {"urls": len(urls), "poll_interval": params["poll_interval"],
                "sleeps_per_job": casda.sleeps_per_job}
    return work


# --- W2: cutouts ----------------------------------------------------------------------------------

def w2_positions(count, seed=609):
    """``count`` deterministic positions (ra, dec in deg) inside the footprint of the three W2 images."""
    rng = np.random.default_rng(seed)
    dec = W2_FIELD[1] + rng.uniform(-W2_SPREAD, W2_SPREAD, count)
    ra = W2_FIELD[0] + rng.uniform(-W2_SPREAD, W2_SPREAD, count) / np.cos(np.radians(W2_FIELD[1]))
    return [[float(a), float(d)] for a, d in zip(ra, dec)]


def _w2_inputs(params):
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    positions = np.array(params["positions"])
    coordinates = SkyCoord(positions[:, 0], positions[:, 1], unit="deg")
    return _read_table(params["table"]), coordinates, params["radius_arcmin"] * u.arcmin


def ours_cutout(params):
    """Child, W2: one ``cutout`` call for every position (one SODA job)."""
    from astroquery_casda_ext import CasdaClass
    table, coordinates, radius = _w2_inputs(params)

    def work():
        client = CasdaClass(server=params["url"])
        client.login(username=params["username"], password=params["password"])
        return {"urls": len(client.cutout(table, coordinates=coordinates, radius=radius))}
    return work


def astroquery_cutout(params):
    """Child, W2: astroquery's ``cutout``, one call (one job) per position."""
    table, coordinates, radius = _w2_inputs(params)

    def work():
        casda = astroquery_casda(params)
        casda.login(username=params["username"])
        urls = []
        for position in coordinates:
            urls.extend(casda.cutout(table, coordinates=position, radius=radius))
        return {"urls": len(urls), "poll_interval": params["poll_interval"],
                "sleeps_per_job": casda.sleeps_per_job}
    return work


def run_w2(scale, workdir):
    """W2: ``positions`` cutouts from each of 3 images; ours in one job, astroquery one per position."""
    sbids = ", ".join(f"'{sbid}'" for sbid in W2_SBIDS)
    adql = (f"SELECT * FROM ivoa.obscore WHERE obs_id IN ({sbids}) "
            "AND dataproduct_subtype = 'cont.restored.t0' ORDER BY obs_id")
    phases = job_phases(scale.job_seconds)
    with harness.EmulatorProcess(workdir / "emulator-w2", job_phases=phases) as emulator:
        table = workdir / "w2.vot"
        found = write_table(emulator, adql, table)
        assert found == len(W2_SBIDS), f"expected {len(W2_SBIDS)} images, got {found}"
        params = {"table": str(table), "positions": w2_positions(scale.positions), "radius_arcmin": 1.0}
        fast = _side_key(scale.poll_interval)
        sides = {"ours": lambda: measured_run(emulator, "ours_cutout", params, workdir),
                 fast: lambda: measured_run(emulator, "astroquery_cutout",
                                            params | {"poll_interval": scale.poll_interval}, workdir)}
        runs = harness.interleave(sides, scale.repeats, "W2")
    expected = 2 * scale.positions * len(W2_SBIDS)       # every cutout and its .checksum
    for name, found_runs in runs.items():
        for run in found_runs:
            assert run["urls"] == expected, f"W2 {name} returned {run['urls']} URLs, expected {expected}"
    for run in runs[fast]:
        run["estimated_seconds_at_20s"] = estimated_at_default_poll(run["seconds"], run["sleeps_per_job"],
                                                                    scale.poll_interval)
    parameters = {"positions": scale.positions, "images": len(W2_SBIDS), "radius_arcmin": 1.0,
                  "job_seconds": scale.job_seconds, "astroquery_poll_interval": scale.poll_interval,
                  "repeats": scale.repeats, "steps": "login, cutout (URLs of the cutouts; no download)"}
    return WorkloadResult("W2", "cutouts", parameters, runs, _w2_rows(scale, runs))


def _w2_rows(scale, runs):
    fast = _side_key(scale.poll_interval)
    seconds = (lambda name, key="seconds": harness.figures_of(runs[name], key))
    jobs = (lambda name: harness.figures_of(runs[name], "requests.jobs_created"))
    measure = f"cutouts: {scale.positions} positions x {len(W2_SBIDS)} images"
    return [
        harness.time_row("W2", measure, seconds("ours"), seconds(fast), _aq_name(scale.poll_interval), 20.0),
        harness.time_row("W2", measure, seconds("ours"), seconds(fast, "estimated_seconds_at_20s"),
                         _aq_name(ASTROQUERY_DEFAULT_POLL) + ", estimated", None,
                         "estimated from the measured runs' sleeps (see README); no target"),
        harness.count_row("W2", "SODA jobs created", jobs("ours"), jobs(fast), _aq_name(scale.poll_interval),
                          "1 job (O(1))", lambda ours, _theirs: ours == 1),
    ]


# --- W3: one large file, against curl ------------------------------------------------------------------

def stage_urls(emulator, table):
    """The URLs of a staged job for the products in ``table`` (set-up, with our client; untimed)."""
    from astroquery import log
    from astroquery_casda_ext import CasdaClass
    level = log.level
    log.setLevel("WARNING")      # no login lines in the progress
    try:
        client = CasdaClass(server=emulator.url)
        client.login(username=emulator.username, password=emulator.password)
        return client.stage_data(_read_table(table))
    finally:
        log.setLevel(level)


def _script(name):
    """A W3 client script run by path (``python benchmarks/NAME``): no benchmark imports in the child."""
    return str(Path(__file__).resolve().parent / name)


def run_w3(scale, workdir):
    """W3: one ``big_size`` file; ours, the bare verifying loop, curl, curl then sha1sum; our peak memory.

    Every run of every side is one fresh process (two for curl then sha1sum) timed from the
    outside, start-up and exit included; the sides are interleaved in rotating order, each
    run begins ``big_settle`` s after the previous run's file was deleted, and the bytes on
    disk are checked against the emulator's checksum after each run.
    """
    emulator_dir = workdir / "emulator-w3"
    name = bulk_names(1)[0]
    # Start-up counts here, so our package is byte-compiled first, as pip does when it installs it
    # (astroquery and astropy are); an environment with PYTHONDONTWRITEBYTECODE would otherwise
    # compile it from source in every run (0.1 s).
    compileall.compile_dir(REPO_ROOT / "astroquery_casda_ext", quiet=1)
    with harness.EmulatorProcess(emulator_dir, bulk_count=1, bulk_size=scale.big_size,
                                 job_phases=(("EXECUTING", 0.05),)) as emulator:
        table = workdir / "w3.vot"
        write_table(emulator, BULK_QUERY, table)
        urls = stage_urls(emulator, table)
        data_url = next(url for url in urls if not url.endswith(".checksum"))
        checksum_url = next(url for url in urls if url.endswith(".checksum"))
        savedir = workdir / "w3-save"
        record = next(emulator_dir.rglob(f"{name}.checksum")).read_text(encoding="ascii").split()
        python = [sys.executable]

        def ours():              # no emulator reset between runs: the staged job's URLs must keep working
            emulator.clear_log()
            figures = harness.run_process(python + [_script("w3_ours.py"), emulator.url, str(savedir), *urls],
                                          cwd=workdir)
            figures["peak_rss_mb"] = float(figures.pop("stdout").split()[-1])
            figures["requests"] = harness.request_counts(emulator.log())
            return figures | harness.verify_files(savedir, emulator_dir, [name])

        def floor():
            figures = harness.run_process(python + [_script("bare_loop.py"), data_url, checksum_url,
                                                    str(savedir / name)], cwd=workdir)
            del figures["stdout"]
            return figures | harness.verify_files(savedir, emulator_dir, [name])

        def curl():
            figures = harness.run_process(_curl(data_url, savedir / "curl.out"), cwd=workdir)
            del figures["stdout"]
            return figures | harness.verify_files(savedir, emulator_dir, [name], renamed={"curl.out": name})

        def curl_sha1sum():
            fetched = harness.run_process(_curl(data_url, savedir / "curl.out"), cwd=workdir)
            summed = harness.run_process(["sha1sum", str(savedir / "curl.out")], cwd=workdir)
            if summed["stdout"].split()[0] != record[1]:
                raise harness.BenchmarkError(f"sha1sum says {summed['stdout'].split()[0]}, the .checksum "
                                             f"{record[1]}")
            figures = {key: fetched[key] + summed[key] for key in ("seconds", "cpu_seconds")}
            return figures | harness.verify_files(savedir, emulator_dir, [name], renamed={"curl.out": name})

        sides = {"ours": ours, "floor": floor}
        if shutil.which("curl") and shutil.which("sha1sum"):
            sides |= {"curl": curl, "curl_sha1sum": curl_sha1sum}

        def fresh(run):
            def wrapped():
                with harness.scratch(savedir):
                    # The previous run's file was just deleted. This VM hands freed pages back to
                    # its host about 2 s later (virtio-balloon free page reporting), and a file
                    # written into still-backed pages fills the page cache up to 2x faster; a side
                    # that starts in milliseconds would always get them. So every run, of every
                    # side, starts from the settled state.
                    time.sleep(scale.big_settle)
                    return run()
            return wrapped

        runs = harness.interleave({key: fresh(run) for key, run in sides.items()}, scale.big_repeats, "W3")
    for figures in (run for side_runs in runs.values() for run in side_runs):
        figures["mb_per_s"] = scale.big_size / 1e6 / figures["seconds"]
    parameters = {"size": scale.big_size, "repeats": scale.big_repeats,
                  "settle": f"{scale.big_settle:g} s between deleting the previous file and each run",
                  "timing": "wall time of fresh processes, from start to exit (start-up and imports "
                            "included)",
                  "ours": "python benchmarks/w3_ours.py: CasdaClass.download_files([file, file.checksum]), "
                          "CRC-32 and SHA-1 verified",
                  "floor": "python benchmarks/bare_loop.py: the bare verifying loop (http.client readinto "
                           "into 8 MiB buffers, os.write, CRC-32 and SHA-1 on a second thread)",
                  "curl": "curl -sS --fail -o FILE URL (verifies nothing)",
                  "curl_sha1sum": "curl as above, then sha1sum FILE (compared with the .checksum)"}
    return WorkloadResult("W3", "one large file", parameters, runs, _w3_rows(scale, runs))


def _curl(url, target):
    return ["curl", "-sS", "--fail", "-H", "Accept-Encoding: identity", "-o", str(target), url]


def _w3_rows(scale, runs):
    size = (f"{scale.big_size >> 30} GiB" if scale.big_size % (1 << 30) == 0 else
            f"{scale.big_size >> 20} MiB" if scale.big_size % (1 << 20) == 0 else
            f"{scale.big_size / 1e6:g} MB")
    rate = (lambda name: harness.figures_of(runs.get(name, []), "mb_per_s"))
    peaks = harness.figures_of(runs["ours"], "peak_rss_mb")
    measure = f"one {size} file: throughput"
    return [harness.rate_row("W3", measure, "MB/s", rate("ours"), rate("floor"),
                             "bare verifying loop", 0.8,
                             "both verify CRC-32 and SHA-1; the loop pays no import, ours pays astroquery's",
                             short="bare loop"),
            harness.rate_row("W3", measure, "MB/s", rate("ours"), rate("curl_sha1sum") or None,
                             "curl then sha1sum", 1.2, "the shell way to fetch and check a file",
                             short="curl then sha1sum"),
            harness.rate_row("W3", measure, "MB/s", rate("ours"), rate("curl") or None,
                             "curl (verifies nothing)", None, "for information"),
            harness.rate_row("W3", measure + " of the bare loop", "MB/s", rate("floor"), rate("curl") or None,
                             "curl (verifies nothing)", None, "in the ours column: the bare verifying loop"),
            harness.ceiling_row("W3", "peak memory of our download process", "MB", peaks, 200,
                                "VmHWM of the process")]


# --- W7: many small files, far from the archive ---------------------------------------------------------

def run_w7(scale, workdir):
    """W7: ``many_files`` products of ``many_size`` bytes, ``many_latency`` s added to every request."""
    emulator_dir = workdir / "emulator-w7"
    with harness.EmulatorProcess(emulator_dir, bulk_count=scale.many_files, bulk_size=scale.many_size,
                                 job_phases=job_phases(scale.job_seconds),
                                 latency=scale.many_latency) as emulator:
        table = workdir / "w7.vot"
        found = write_table(emulator, BULK_QUERY, table)
        assert found == scale.many_files, f"expected {scale.many_files} products, got {found}"
        names = bulk_names(scale.many_files)
        verify = (lambda savedir: harness.verify_files(savedir, emulator_dir, names))
        fast = _side_key(scale.poll_interval)
        params = {"table": str(table)}
        sides = {"ours": lambda: measured_run(emulator, "ours_stage_download", params, workdir,
                                              workdir / "w7-save", verify),
                 fast: lambda: measured_run(emulator, "astroquery_stage_download",
                                            params | {"poll_interval": scale.poll_interval}, workdir,
                                            workdir / "w7-save", verify)}
        runs = harness.interleave(sides, scale.repeats, "W7")
    parameters = {"files": scale.many_files, "size": scale.many_size,
                  "latency_per_request": scale.many_latency,
                  "job_seconds": scale.job_seconds, "astroquery_poll_interval": scale.poll_interval,
                  "repeats": scale.repeats,
                  "steps": "login, stage_data, download_files; every saved file checked by checksum"}
    measure = (f"{scale.many_files} x {scale.many_size / 1e3:g} kB, +{scale.many_latency * 1e3:g} ms "
               "per request")
    rows = [harness.time_row("W7", measure, harness.figures_of(runs["ours"], "seconds"),
                             harness.figures_of(runs[fast], "seconds"), _aq_name(scale.poll_interval), 5.0)]
    return WorkloadResult("W7", "many small files, far from the archive", parameters, runs, rows)


# --- W4: request counts -----------------------------------------------------------------------------

def run_w4(scale, results):
    """W4: DataLink requests, job polls and all requests of W1, W2 and W7, from the emulator's log."""
    fast = _side_key(scale.poll_interval)
    aq_name = _aq_name(scale.poll_interval)
    groups = []
    if "W1" in results:
        groups += [(f"W1 N={count}", results["W1"].measurements[f"N={count}"], count)
                   for count in scale.w1_files]
    if "W2" in results:
        groups.append(("W2", results["W2"].measurements, len(W2_SBIDS)))
    if "W7" in results:
        groups.append(("W7", results["W7"].measurements, scale.many_files))
    rows, counts = [], {}
    for label, runs, products in groups:
        counts[label] = {"products": products, "ours": [run["requests"] for run in runs["ours"]],
                         "astroquery": [run["requests"] for run in runs[fast]]}
        of = (lambda side, key, _runs=runs: harness.figures_of(_runs[side], f"requests.{key}"))
        limit = harness.datalink_limit(products)
        rows.append(harness.count_row("W4", f"{label} DataLink requests ({products} products)",
                                      of("ours", "datalink"), of(fast, "datalink"), aq_name,
                                      f"<= ceil(N/50) = {limit}", lambda ours, _theirs, _l=limit: ours <= _l))
        for key, text in (("job_polls", "job polls"), ("total", "HTTP requests, all")):
            rows.append(harness.count_row("W4", f"{label} {text}", of("ours", key), of(fast, key), aq_name))
    parameters = {"source": "the emulator's request log of every W1, W2 and W7 run (medians shown)",
                  "poll": "GET of a SODA job's document or /phase"}
    return WorkloadResult("W4", "request counts", parameters, counts, rows)
