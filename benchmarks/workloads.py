"""The five benchmark workloads: ours against astroquery.casda, curl and pyvo, on the emulator.

Each ``run_wN(scale, workdir)`` returns a `WorkloadResult`: its parameters, the raw
measurements, and `Row` objects (what the table prints: ours, the baseline, their ratio,
the target and whether it is met).  Ours and the baseline always run in the same benchmark
run against the same emulator, one after the other (interleaved where runs repeat), so the
ratios compare like with like.

W1 stage and download  `CasdaClass(server=...)`: login, stage_data, download_files, against
                       ``astroquery.casda`` 0.4.11 with its default poll interval (20 s) and
                       with it lowered.
W2 cutouts             many positions x 3 images: our one ``cutout`` job against one
                       astroquery ``cutout`` call (one job) per position.
W3 one large file      our downloader against curl, and our peak memory (reuses
                       ``download_bench``: emulator and client each in their own process).
W4 request counts      DataLink requests, jobs created, job polls and all requests of W1 and
                       W2, from the emulator's request log.
W5 a large TAP query   ``query_tap`` against pyvo's ``TAPService`` (and astroquery's
                       ``TapPlus``), each client in a child process for its peak memory.

Child processes (W5's clients, W3's download) run this module: ``python -m benchmarks.workloads
tap-client ...`` or ``... fetch ...``.  Their peak memory is VmHWM, never ``ru_maxrss`` (see
`vmhwm_mb`).
"""
import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Scale", "FULL", "QUICK", "Row", "WorkloadResult", "request_counts",
           "run_w1", "run_w2", "run_w3", "run_w4", "run_w5"]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The ADQL of W5.
W5_QUERY = "SELECT * FROM ivoa.obscore"
#: Images of W2: the cont.restored.t0 image of three VAST epochs, one field (320, -51).
W2_SBIDS = ("9668", "9694", "9723")
W2_FIELD = (320.0, -51.0)
#: Half-width (deg) of the square the W2 positions are drawn from: inside all three footprints.
W2_SPREAD = 0.15


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark run.

    Attributes
    ----------
    name : str
        ``"full"`` or ``"quick"``.
    products, product_size : int
        W1: bulk products staged and downloaded, and bytes each.
    job_seconds : float
        How long the emulator's SODA jobs take (the sum of ``job_phases``), W1 and W2.
    poll_interval : float
        astroquery's lowered poll interval (its default is 20 s).
    run_default_baseline : bool
        Run astroquery with its 20 s poll interval in W1; otherwise only estimate it.
    positions : int
        W2: cutout positions (each cut from 3 images).
    big_size, big_repeat : int
        W3: bytes of the single file, and runs of each client (the best is kept).
    rows, tap_repeat : int
        W5: rows of ``ivoa.obscore`` returned by the query, and runs of each client.
    """

    name: str
    products: int
    product_size: int
    job_seconds: float
    poll_interval: float
    run_default_baseline: bool
    positions: int
    big_size: int
    big_repeat: int
    rows: int
    tap_repeat: int


FULL = Scale("full", products=20, product_size=5_000_000, job_seconds=2.0, poll_interval=1.0,
             run_default_baseline=True, positions=100, big_size=1_000_000_000, big_repeat=5, rows=100_000,
             tap_repeat=3)
QUICK = Scale("quick", products=3, product_size=100_000, job_seconds=0.2, poll_interval=0.25,
              run_default_baseline=False, positions=5, big_size=5_000_000, big_repeat=1, rows=2_000,
              tap_repeat=1)

#: astroquery.casda's default ``conf.poll_interval``.
ASTROQUERY_DEFAULT_POLL = 20.0


@dataclass
class Row:
    """One line of the results table.

    ``ratio`` is oriented so that bigger is better for speed-ups (baseline / ours) and
    throughput (ours / curl); for W5 it is ours / pyvo (smaller is better).  ``met`` is
    None when the line has no target.
    """

    workload: str
    measure: str
    unit: str
    ours: float | None
    baseline: float | None
    baseline_name: str
    ratio: float | None
    target: str
    met: bool | None
    note: str = ""


@dataclass
class WorkloadResult:
    """What one workload measured."""

    name: str
    title: str
    parameters: dict
    measurements: dict
    rows: list = field(default_factory=list)

    def as_json(self):
        return {"title": self.title, "parameters": self.parameters, "measurements": self.measurements,
                "rows": [dataclasses.asdict(row) for row in self.rows]}


def say(text):
    """Progress of a long run, as it happens."""
    print(f"  {text}", flush=True)


def timed(function, *args, **kwargs):
    """(seconds, value) of one call."""
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - start, value


def speedup_row(workload, measure, ours, baseline, baseline_name, minimum, note=""):
    """A time row whose ratio is baseline / ours, with target ``>= minimum`` x."""
    ratio = baseline / ours if ours else None
    met = None if minimum is None or ratio is None else ratio >= minimum
    target = f">= {minimum:g}x" if minimum is not None else "-"
    return Row(workload, measure, "s", ours, baseline, baseline_name, ratio, target, met, note)


# --- the emulator's request log -------------------------------------------------------------------

_JOB_LOOK = re.compile(r"^/casda_data_access/data/async/[^/]+(/phase)?$")


def request_counts(log):
    """DataLink requests, SODA jobs created, job polls, downloads and all requests in ``log``.

    A poll is a GET of a job's document or of its ``/phase`` (following the 303 after a
    job is created counts too, for every client alike).
    """
    return {
        "datalink": sum(1 for entry in log if entry.path.endswith("/datalink/links")),
        "jobs_created": sum(1 for entry in log if entry.method == "POST"
                            and entry.path.rstrip("/") == "/casda_data_access/data/async"),
        "job_polls": sum(1 for entry in log if entry.method == "GET" and _JOB_LOOK.match(entry.path)),
        "downloads": sum(1 for entry in log if entry.path.startswith("/download/")),
        "total": len(log),
        "bytes_sent": sum(entry.bytes_sent for entry in log),
    }


def datalink_limit(products):
    """The most DataLink requests the target allows for ``products`` products: ceil(N / 50)."""
    return math.ceil(products / 50)


# --- the emulator for W1, W2 (and W4) --------------------------------------------------------------

def job_phases(seconds):
    """A SODA job plan lasting ``seconds``: a quarter QUEUED, the rest EXECUTING."""
    return (("QUEUED", seconds / 4), ("EXECUTING", seconds * 3 / 4))


@contextlib.contextmanager
def access_emulator(scale, workdir):
    """An emulator with the W1 bulk products and the default holdings (W2's images)."""
    from astroquery_casda_ext.emulator import CasdaEmulator, EmulatorOptions, HoldingsConfig
    holdings = HoldingsConfig(bulk_count=scale.products, bulk_size=scale.product_size)
    options = EmulatorOptions(holdings=holdings, job_phases=job_phases(scale.job_seconds))
    with CasdaEmulator(workdir / "emulator-access", options=options) as emulator:
        yield emulator


def ours_client(emulator):
    """Our façade pointed at the emulator (a fresh one per run: no state carried over)."""
    from astroquery_casda_ext import CasdaClass
    return CasdaClass(server=emulator.url)


def tap_table(emulator, adql):
    """A query result both clients are given as input (not timed)."""
    client = ours_client(emulator)
    client.login(username=emulator.username, password=emulator.password)
    table = client.query_tap(adql)
    emulator.reset()
    return table


# --- astroquery.casda, pointed at the emulator -------------------------------------------------------

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


@contextlib.contextmanager
def quiet_log():
    """No INFO lines from astroquery's logger (both clients log logins there)."""
    from astroquery import log
    level = log.level
    log.setLevel("WARNING")
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def quiet_astroquery():
    """No INFO lines or VOTable warnings (astroquery parses DataLink with verify='warn')."""
    with quiet_log(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


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


@contextlib.contextmanager
def astroquery_casda(emulator, poll_interval):
    """A logged-in ``astroquery.casda.CasdaClass`` talking to the emulator.

    astroquery 0.4.11 froze ``conf.server``, ``soda_base_url``, ``login_url`` and
    ``poll_interval`` into class attributes at import, and its URL items are "option"
    items whose only allowed value is the production URL (``conf.set_temp`` refuses any
    other), so the URLs are set on the instance.  The DataLink URL comes from the table's
    ``access_url``, which the emulator fills with its own proxy URL.  The password is
    read from the keyring, as astroquery does: an in-memory one for the duration.
    """
    import keyring
    previous = keyring.get_keyring()
    keyring.set_keyring(memory_keyring("astroquery:casda.csiro.au", emulator.username, emulator.password))
    try:
        with quiet_astroquery():
            casda = _astroquery_class()()
            casda.URL = emulator.url + "casda_vo_tools/sia2/query"
            casda._soda_base_url = emulator.url + "casda_data_access/"
            casda._login_url = emulator.url + "casda_vo_proxy/vo/tap/availability"
            casda.POLL_INTERVAL = poll_interval
            yield casda
    finally:
        keyring.set_keyring(previous)


def estimated_at_default_poll(seconds, sleeps_per_job, poll_interval):
    """What a run of astroquery polling every ``poll_interval`` s would take at 20 s.

    Each job slept ``k`` times ``poll_interval`` in the measured run, so it finished within
    ``k * poll_interval`` s after RUN; at 20 s it sleeps ``ceil(k * poll_interval / 20)``
    times.  Everything else (requests, downloads) is kept as measured.
    """
    sleeps_now = sum(sleeps_per_job) * poll_interval
    sleeps_default = sum(math.ceil(k * poll_interval / ASTROQUERY_DEFAULT_POLL) for k in sleeps_per_job)
    return seconds - sleeps_now + sleeps_default * ASTROQUERY_DEFAULT_POLL


def bytes_in(directory, suffix=".fits"):
    return sum(path.stat().st_size for path in Path(directory).glob(f"*{suffix}"))


def measured_run(emulator, work, savedir=None):
    """Run ``work(savedir)`` on a freshly reset emulator: time, request counts, bytes saved.

    ``work`` returns a dict of extra figures (or None).  ``savedir`` is created before the
    clock starts (astroquery does not create it) and removed afterwards.
    """
    emulator.reset()
    if savedir is not None:
        savedir.mkdir(parents=True, exist_ok=True)
    try:
        seconds, extra = timed(work, savedir)
        figures = {"seconds": seconds, "requests": request_counts(emulator.request_log)}
        if savedir is not None:
            figures["bytes_downloaded"] = bytes_in(savedir)
    finally:
        if savedir is not None:
            shutil.rmtree(savedir, ignore_errors=True)
    return figures | (extra or {})


# --- W1: stage and download ---------------------------------------------------------------------

def _w1_ours(emulator, table):
    def work(savedir):
        client = ours_client(emulator)
        client.login(username=emulator.username, password=emulator.password)
        urls = client.stage_data(table)
        client.download_files(urls, savedir=str(savedir), progress=False)
        return {"urls": len(urls)}
    return work


def _w1_astroquery(emulator, table, poll_interval):
    def work(savedir):
        with astroquery_casda(emulator, poll_interval) as casda:
            casda.login(username=emulator.username)
            urls = casda.stage_data(table)
            casda.download_files(urls, savedir=str(savedir))
        return {"urls": len(urls), "poll_interval": poll_interval, "sleeps_per_job": casda.sleeps_per_job}
    return work


def run_w1(scale, workdir, emulator):
    """W1: login, stage ``products`` bulk files (a job of ``job_seconds``), download them."""
    table = tap_table(emulator, "SELECT * FROM ivoa.obscore WHERE obs_id = '9001' ORDER BY obs_publisher_did")
    assert len(table) == scale.products, f"expected {scale.products} bulk products, got {len(table)}"
    runs = {"ours": measured_run(emulator, _w1_ours(emulator, table), workdir / "w1-ours")}
    say(f"W1 ours: {runs['ours']['seconds']:.2f} s")
    fast = measured_run(emulator, _w1_astroquery(emulator, table, scale.poll_interval), workdir / "w1-aq")
    fast["estimated_seconds_at_20s"] = estimated_at_default_poll(fast["seconds"], fast["sleeps_per_job"],
                                                                 scale.poll_interval)
    runs[f"astroquery_poll_{scale.poll_interval:g}s"] = fast
    say(f"W1 astroquery.casda, poll {scale.poll_interval:g} s: {fast['seconds']:.2f} s")
    if scale.run_default_baseline:
        runs["astroquery_default"] = measured_run(
            emulator, _w1_astroquery(emulator, table, ASTROQUERY_DEFAULT_POLL), workdir / "w1-aq20")
        say(f"W1 astroquery.casda, default poll 20 s: {runs['astroquery_default']['seconds']:.2f} s")
    expected = scale.products * scale.product_size
    for name, run in runs.items():
        saved = run["bytes_downloaded"]
        assert saved == expected, f"W1 {name} saved {saved} of {expected} bytes"
    return WorkloadResult("W1", "stage and download", _w1_parameters(scale), runs, _w1_rows(scale, runs))


def _w1_parameters(scale):
    return {"products": scale.products, "product_size": scale.product_size, "job_seconds": scale.job_seconds,
            "astroquery_poll_interval": scale.poll_interval,
            "astroquery_default_poll": ASTROQUERY_DEFAULT_POLL,
            "steps": "login, stage_data, download_files (each client's defaults; ours: 4 parallel transfers, "
                     "checksums verified)"}


def _w1_rows(scale, runs):
    ours = runs["ours"]["seconds"]
    fast = runs[f"astroquery_poll_{scale.poll_interval:g}s"]
    measure = f"stage + download {scale.products} x {scale.product_size / 1e6:g} MB"
    if "astroquery_default" in runs:
        default, note = runs["astroquery_default"]["seconds"], "measured"
    else:
        default, note = fast["estimated_seconds_at_20s"], "estimated from the poll-interval run (quick mode)"
    return [speedup_row("W1", measure, ours, default, "astroquery.casda, poll 20 s (default)", 5.0, note),
            speedup_row("W1", measure, ours, fast["seconds"],
                        f"astroquery.casda, poll {scale.poll_interval:g} s", None, "measured; no target")]


# --- W2: cutouts ----------------------------------------------------------------------------------

def w2_positions(count, seed=609):
    """``count`` deterministic positions inside the footprint shared by the three W2 images."""
    from astropy.coordinates import SkyCoord
    rng = np.random.default_rng(seed)
    dec = W2_FIELD[1] + rng.uniform(-W2_SPREAD, W2_SPREAD, count)
    ra = W2_FIELD[0] + rng.uniform(-W2_SPREAD, W2_SPREAD, count) / np.cos(np.radians(W2_FIELD[1]))
    return SkyCoord(ra, dec, unit="deg")


def _w2_ours(emulator, table, positions, radius):
    def work(_savedir):
        client = ours_client(emulator)
        client.login(username=emulator.username, password=emulator.password)
        return {"urls": len(client.cutout(table, coordinates=positions, radius=radius))}
    return work


def _w2_astroquery(emulator, table, positions, radius, poll_interval):
    def work(_savedir):
        urls = []
        with astroquery_casda(emulator, poll_interval) as casda:
            casda.login(username=emulator.username)
            for position in positions:       # astroquery.casda cuts one position per job
                urls.extend(casda.cutout(table, coordinates=position, radius=radius))
        return {"urls": len(urls), "poll_interval": poll_interval, "sleeps_per_job": casda.sleeps_per_job}
    return work


def run_w2(scale, workdir, emulator):
    """W2: ``positions`` cutouts from each of 3 images; ours in one job, astroquery one per position."""
    import astropy.units as u
    sbids = ", ".join(f"'{sbid}'" for sbid in W2_SBIDS)
    table = tap_table(emulator, f"SELECT * FROM ivoa.obscore WHERE obs_id IN ({sbids}) "
                                "AND dataproduct_subtype = 'cont.restored.t0' ORDER BY obs_id")
    assert len(table) == len(W2_SBIDS), f"expected {len(W2_SBIDS)} images, got {len(table)}"
    positions, radius = w2_positions(scale.positions), 1 * u.arcmin
    runs = {"ours": measured_run(emulator, _w2_ours(emulator, table, positions, radius))}
    say(f"W2 ours: {runs['ours']['seconds']:.2f} s")
    fast = measured_run(emulator, _w2_astroquery(emulator, table, positions, radius, scale.poll_interval))
    fast["estimated_seconds_at_20s"] = estimated_at_default_poll(fast["seconds"], fast["sleeps_per_job"],
                                                                 scale.poll_interval)
    runs[f"astroquery_poll_{scale.poll_interval:g}s"] = fast
    say(f"W2 astroquery.casda, poll {scale.poll_interval:g} s: {fast['seconds']:.2f} s")
    expected = 2 * scale.positions * len(W2_SBIDS)       # every cutout and its .checksum
    for name, run in runs.items():
        assert run["urls"] == expected, f"W2 {name} returned {run['urls']} URLs, expected {expected}"
    parameters = {"positions": scale.positions, "images": len(W2_SBIDS), "radius_arcmin": 1.0,
                  "job_seconds": scale.job_seconds, "astroquery_poll_interval": scale.poll_interval,
                  "steps": "login, cutout (URLs of the cutouts; no download)"}
    return WorkloadResult("W2", "cutouts", parameters, runs, _w2_rows(scale, runs))


def _w2_rows(scale, runs):
    ours = runs["ours"]
    fast = runs[f"astroquery_poll_{scale.poll_interval:g}s"]
    measure = f"cutouts: {scale.positions} positions x {len(W2_SBIDS)} images"
    aq_name = f"astroquery.casda, poll {scale.poll_interval:g} s"
    jobs_ours, jobs_aq = ours["requests"]["jobs_created"], fast["requests"]["jobs_created"]
    return [
        speedup_row("W2", measure, ours["seconds"], fast["seconds"], aq_name, 20.0,
                    f"measured with astroquery's poll interval lowered from 20 s to "
                    f"{scale.poll_interval:g} s"),
        speedup_row("W2", measure, ours["seconds"], fast["estimated_seconds_at_20s"],
                    "astroquery.casda, poll 20 s (default)", None,
                    f"estimated from the {jobs_aq} jobs measured; no target"),
        Row("W2", "SODA jobs created", "jobs", jobs_ours, jobs_aq, aq_name,
            jobs_aq / jobs_ours if jobs_ours else None, "1 job (O(1))", jobs_ours == 1),
    ]


# --- W4: request counts -----------------------------------------------------------------------------

def run_w4(scale, w1, w2):
    """W4: requests of W1 and W2 (ours against astroquery polling every ``poll_interval``)."""
    baseline = f"astroquery_poll_{scale.poll_interval:g}s"
    aq_name = f"astroquery.casda, poll {scale.poll_interval:g} s"
    rows, counts = [], {}
    for result, products in ((w1, scale.products), (w2, len(W2_SBIDS))):
        ours, theirs = result.measurements["ours"]["requests"], result.measurements[baseline]["requests"]
        counts[result.name] = {"ours": ours, "astroquery": theirs, "products": products}
        limit = datalink_limit(products)
        rows.append(Row("W4", f"{result.name} DataLink requests ({products} products)", "requests",
                        ours["datalink"], theirs["datalink"], aq_name,
                        _ratio(theirs["datalink"], ours["datalink"]),
                        f"<= ceil(N/50) = {limit}", ours["datalink"] <= limit))
        for key, label in (("job_polls", "job polls"), ("total", "HTTP requests, all")):
            rows.append(Row("W4", f"{result.name} {label}", "requests", ours[key], theirs[key], aq_name,
                            _ratio(theirs[key], ours[key]), "-", None))
    parameters = {"source": "the emulator's request log of the W1 and W2 runs",
                  "poll": "GET of a SODA job's document or /phase"}
    return WorkloadResult("W4", "request counts", parameters, counts, rows)


def _ratio(baseline, ours):
    return baseline / ours if ours else None


# --- W3: one large file, against curl ------------------------------------------------------------------

def run_w3(scale, workdir):
    """W3: one ``big_size`` file: our downloader against curl, and our peak memory.

    This is ``download_bench``'s single-file test, run as it is: the emulator in its own
    process, our ``Downloader`` (what ``download_files`` runs) in a child process that
    reports its peak memory (``ru_maxrss``) and CPU, curl writing to disk too, runs of the
    two alternating so both see the same page cache, and the best of ``big_repeat`` kept.
    """
    from . import download_bench as bench
    args = bench.build_parser().parse_args(["--skip-parallel", "--big-size", str(scale.big_size),
                                            "--repeat", str(scale.big_repeat)])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), _replaced(bench, "run_ours_once", run_ours_once_vmhwm):
        figures = bench.bench_big(args, workdir)
    for line in printed.getvalue().strip().splitlines():
        say(f"W3 download_bench: {line.strip()}")
    parameters = {"size": scale.big_size, "runs_each": scale.big_repeat, "chunk_size": args.chunk_size,
                  "how": "download_bench.bench_big",
                  "ours": "Downloader (what download_files runs): the file and its .checksum, CRC-32 and "
                          "SHA-1 verified, in a child process",
                  "curl": "curl -sS --fail -o FILE URL (verifies nothing)" if shutil.which("curl")
                          else "curl not found"}
    return WorkloadResult("W3", "one large file", parameters, figures, _w3_rows(scale, figures))


@contextlib.contextmanager
def _replaced(module, name, value):
    previous = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, previous)


def vmhwm_mb():
    """This process's peak resident memory (VmHWM), MB.

    Not ``ru_maxrss``: Linux carries a process's ``maxrss`` across ``execve``, and with
    ``vfork`` it takes in the parent's resident size, so a child started by a large
    benchmark process would report the parent's memory.  VmHWM belongs to the new image.
    """
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def run_ours_once_vmhwm(urls, savedir, chunk_size):
    """``download_bench.run_ours_once``, with the child's peak memory read as VmHWM.

    The child is ``download_bench``'s own ``fetch``, run through `fetch_main` here.
    """
    command = [sys.executable, "-m", "benchmarks.workloads", "fetch", "--savedir", str(savedir),
               "--chunk-size", str(chunk_size), *urls]
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=_child_env())
    shutil.rmtree(savedir)
    return json.loads(done.stdout.strip().splitlines()[-1])


def fetch_main(argv):
    """Child: ``download_bench fetch``, then its figures with ``peak_rss_mb`` from VmHWM."""
    from . import download_bench as bench
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = bench.main(["fetch", *argv])
    figures = json.loads(printed.getvalue().strip().splitlines()[-1])
    figures["ru_maxrss_mb"] = figures.get("peak_rss_mb")
    figures["peak_rss_mb"] = vmhwm_mb()
    print(json.dumps(figures))
    return status


def _w3_rows(scale, figures):
    ours, curl = figures["ours_mb_per_s"], figures.get("curl_mb_per_s")
    ratio = ours / curl if curl else None
    size = f"{scale.big_size / 1e9:g} GB" if scale.big_size >= 1e9 else f"{scale.big_size / 1e6:g} MB"
    peak = figures["peak_rss_mb"]
    median = figures.get("median_ratio_to_curl")
    note = "best run of each; ours verifies CRC-32 and SHA-1"
    if median:
        note += f"; median runs: {median:.2f}x"
    return [
        Row("W3", f"one {size} file: throughput", "MB/s", ours, curl, "curl (same URL, to disk)", ratio,
            ">= 0.8x curl", None if ratio is None else ratio >= 0.8, note),
        Row("W3", "peak memory of our download process", "MB", peak, None, "-", None, "< 200 MB", peak < 200,
            f"VmHWM of the child; {figures.get('rss_before_download_mb', 0):.0f} MB resident "
            "after imports"),
    ]


# --- W5: a large TAP query -----------------------------------------------------------------------------

def synthetic_obscore_rows(rows, total):
    """``total`` ObsCore rows: the real ones, then copies of them under new product ids."""
    rows = list(rows)[:total]
    originals = list(rows)
    for index in range(total - len(rows)):
        row = dict(originals[index % len(originals)])
        product_id = f"cube-{200_000 + index}"
        row["obs_publisher_did"] = product_id
        row["access_url"] = f"#{{baseUrl}}datalink/links?ID={product_id}"
        rows.append(row)
    return rows


def fill_obscore(emulator, total):
    """Give the emulator's TAP database exactly ``total`` ObsCore rows (before it starts).

    The emulator has no option for extra rows, so its backend gets a new `TapDatabase`
    built from the same data tables, with the ObsCore table's rows extended.
    """
    from astroquery_casda_ext.emulator.adql import TapDatabase
    backend = emulator.backend
    data_tables = [table for table in backend.database.tables if table.schema.upper() != "TAP_SCHEMA"]
    obscore = next(table for table in data_tables if table.full_name.lower() == "ivoa.obscore")
    extended = dataclasses.replace(obscore, rows=synthetic_obscore_rows(obscore.rows, total))
    backend.database = TapDatabase([extended if table is obscore else table for table in data_tables])


def warm_up(url, rows):
    """Run the W5 query once, untimed: the server's first-query costs fall on no client."""
    import requests
    payload = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": W5_QUERY, "MAXREC": str(rows)}
    with requests.post(url + "casda_vo_tools/tap/sync", data=payload, stream=True, timeout=600) as response:
        response.raise_for_status()
        for _chunk in response.iter_content(1 << 20):
            pass


def _child_env():
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def run_tap_client(client, url, rows, cwd):
    """Run one W5 client in a child process; its time, row count and peak memory."""
    command = [sys.executable, "-m", "benchmarks.workloads", "tap-client", client, url, str(rows)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=_child_env(), timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{client} failed: " + (done.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _best_runs(clients, url, rows, cwd, repeat):
    """Each client ``repeat`` times, interleaved; the fastest run of each (or the error)."""
    runs = {client: [] for client in clients}
    errors = {}
    for _ in range(repeat):
        for client in clients:
            if client in errors:
                continue
            try:
                runs[client].append(run_tap_client(client, url, rows, cwd))
                say(f"W5 {client}: {runs[client][-1]['seconds']:.2f} s")
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                errors[client] = str(exc)
                say(f"W5 {client}: {exc}")
    best = {}
    for client, found in runs.items():
        if found:
            best[client] = min(found, key=lambda run: run["seconds"])
            best[client]["runs_seconds"] = [run["seconds"] for run in found]
    return best, errors


def run_w5(scale, workdir):
    """W5: ``SELECT * FROM ivoa.obscore`` returning ``rows`` rows: ours, pyvo, astroquery's TapPlus."""
    from astroquery_casda_ext.emulator import CasdaEmulator
    emulator = CasdaEmulator(workdir / "emulator-tap")
    fill_obscore(emulator, scale.rows)
    cwd = workdir / "w5-cwd"          # TapPlus may write files into its working directory
    cwd.mkdir(exist_ok=True)
    with emulator:
        warm_up(emulator.url, scale.rows)
        best, errors = _best_runs(("ours", "pyvo", "tapplus"), emulator.url, scale.rows, cwd,
                                  scale.tap_repeat)
    if "ours" in errors:
        raise RuntimeError(f"W5: our client failed: {errors['ours']}")
    for client, run in best.items():
        assert run["rows"] == scale.rows, f"W5 {client} got {run['rows']} rows, expected {scale.rows}"
    parameters = {"rows": scale.rows, "query": W5_QUERY, "runs_each": scale.tap_repeat,
                  "ours": f"CasdaClass.query_tap(query, maxrec={scale.rows})",
                  "pyvo": f"TAPService(.../casda_vo_tools/tap).run_sync(query, maxrec={scale.rows})"
                          ".to_table()",
                  "tapplus": f"TapPlus(...).launch_job_async(query, maxrec={scale.rows}).get_results() "
                             "(its sync launch_job caps results at TOP 2000)",
                  "process": "each client in its own child process, timed after its imports (and "
                             "astropy.units.cds'), after one untimed warm-up query on the server"}
    measurements = {"runs": best, "errors": errors}
    return WorkloadResult("W5", "a large TAP query", parameters, measurements, _w5_rows(scale, best, errors))


def _w5_rows(scale, best, errors):
    ours, pyvo, tapplus = (best.get(name) for name in ("ours", "pyvo", "tapplus"))
    measure = f"TAP query, {scale.rows:,} rows: time"
    seconds = (lambda run: run["seconds"] if run else None)
    ratio = ours["seconds"] / pyvo["seconds"] if ours and pyvo else None
    rows = [Row("W5", measure, "s", seconds(ours), seconds(pyvo), "pyvo TAPService alone", ratio,
                "<= 1.2x pyvo (ours/pyvo)", None if ratio is None else ratio <= 1.2, "ratio = ours / pyvo")]
    note = "ratio = ours / TapPlus; no target" if tapplus else f"TapPlus failed: {errors.get('tapplus', '?')}"
    rows.append(Row("W5", measure, "s", seconds(ours), seconds(tapplus), "astroquery TapPlus (async)",
                    ours["seconds"] / tapplus["seconds"] if ours and tapplus else None, "-", None, note))
    peak = (lambda run: run["peak_rss_mb"] if run else None)
    rows.append(Row("W5", f"TAP query, {scale.rows:,} rows: peak memory", "MB", peak(ours), peak(pyvo),
                    "pyvo TAPService alone", peak(ours) / peak(pyvo) if ours and pyvo else None, "-", None,
                    "VmHWM of the client process; ratio = ours / pyvo"))
    return rows


# --- the W5 child process ----------------------------------------------------------------------------

def _ours_tap(url, rows):
    from astroquery_casda_ext import CasdaClass
    casda = CasdaClass(server=url)
    return lambda: casda.query_tap(W5_QUERY, maxrec=rows)


def _pyvo_tap(url, rows):
    import pyvo
    service = pyvo.dal.TAPService(url + "casda_vo_tools/tap")
    return lambda: service.run_sync(W5_QUERY, maxrec=rows).to_table()


def _tapplus_tap(url, rows):
    from astroquery import log
    from astroquery.utils.tap.core import TapPlus
    log.setLevel("WARNING")
    tap = TapPlus(url=url + "casda_vo_tools/tap", verbose=False)
    return lambda: tap.launch_job_async(W5_QUERY, maxrec=rows, verbose=False).get_results()


_TAP_CLIENTS = {"ours": _ours_tap, "pyvo": _pyvo_tap, "tapplus": _tapplus_tap}


def tap_client_main(argv):
    """Child: import one client, run the W5 query once, print time, rows and memory as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workloads tap-client")
    parser.add_argument("client", choices=sorted(_TAP_CLIENTS))
    parser.add_argument("url")
    parser.add_argument("rows", type=int)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")           # VOTable unit warnings are the same for every client
    # astropy imports its CDS units lazily on the first VOTable unit it reads (~0.2 s, more
    # without bytecode caches): a one-off cost every client pays, kept out of the timing.
    import astropy.units.cds  # noqa: F401
    query = _TAP_CLIENTS[args.client](args.url, args.rows)
    before = vmhwm_mb()
    seconds, table = timed(query)
    print(json.dumps({"seconds": seconds, "rows": len(table), "columns": len(table.colnames),
                      "peak_rss_mb_before_query": before, "peak_rss_mb": vmhwm_mb()}))
    return 0


_CHILDREN = {"tap-client": tap_client_main, "fetch": fetch_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in _CHILDREN:
        sys.exit("usage: python -m benchmarks.workloads {tap-client,fetch} ... "
                 "(child processes of python -m benchmarks)")
    sys.exit(_CHILDREN[sys.argv[1]](sys.argv[2:]))
