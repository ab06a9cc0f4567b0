"""W5 and W6: catalogue-scale TAP, ours against pyvo, each client in its own child process.

W5  a) ``SELECT * FROM ivoa.obscore``, 100 000 rows returned as an astropy Table by the
       default ``query_tap(query, maxrec=N)`` against pyvo's
       ``TAPService.run_sync(query, maxrec=N).to_table()``.  Targets: peak memory <= 600 MB,
       >= 3x faster than pyvo, the same table as pyvo's (values, masks, units, dtype kinds).
    b) 10 000 SIA2 rows (the emulator's ``HoldingsConfig.bulk_listed_rows``) through
       ``query_region`` over the four fields against pyvo's ``SIA2Query(...).execute().to_table()``:
       the same table as pyvo's; time and memory beside pyvo's (target >= 3x, like a)).
W6  ``SELECT * FROM casda.bulk_continuum_component`` (the emulator's ``catalogue_rows``):
    a) 1 000 000 rows to Parquet: ``query_tap(query, output="x.parquet")`` against pyvo's
       ``run_sync(query).to_table().write("x.parquet")``.  Targets: <= 300 MB, >= 5x faster.
    b) 10 000 000 rows with ``query_tap_partitioned(query, by="ra_deg_cont", parts=8)``: the
       child is killed (SIGKILL) once half the parts are written, then run again; it must
       finish from the written parts with the row count and column sums of a single
       aggregate query on the server.  Target: <= 400 MB.

How it is measured
    * every client run is a fresh child process (``python -m benchmarks.tap_scale child ...``),
      timed after its imports; its peak memory is VmHWM (`workloads.vmhwm_mb`, which says why
      not ru_maxrss);
    * >= 3 repeats, interleaved, the order rotating each repeat; the MEDIAN is the figure,
      best and worst are shown in the note;
    * W5 and W6a: the emulator renders results in Python (about 50 000 catalogue rows/s), slower
      than CASDA's server and than either client, so its answers are recorded once (during an
      untimed warm-up run of each client) by a small recording proxy and replayed, byte for
      byte, to the timed runs: both clients then wait on the same fast server.  W6b talks to
      the emulator itself (async jobs).

``python -m benchmarks.tap_scale [--quick | --medium]`` runs both and prints the rows.
`run_w5` and `run_w6` return `benchmarks.workloads.WorkloadResult`.
"""
import argparse
import contextlib
import dataclasses
import hashlib
import http.server
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl

from . import workloads
from .workloads import Row, WorkloadResult, say, vmhwm_mb

__all__ = ["run_w5", "run_w6", "SIZES", "RecordingProxy", "main"]

W5_QUERY = "SELECT * FROM ivoa.obscore"
W6_TABLE = "casda.bulk_continuum_component"
W6_QUERY = f"SELECT * FROM {W6_TABLE}"
W6_BY = "ra_deg_cont"
#: Sizes by run: "quick" (the smoke run), "medium" (one run on a busy machine), "full" (the targets').
SIZES = {
    "quick": {"w5_rows": 2_000, "w5_sia2_rows": 1_000, "w6_rows": 20_000, "w6_partitioned_rows": 40_000,
              "parts": 8, "repeat": 3},
    "medium": {"w5_rows": 20_000, "w5_sia2_rows": 5_000, "w6_rows": 100_000, "w6_partitioned_rows": 1_000_000,
               "parts": 8, "repeat": 3},
    "full": {"w5_rows": 100_000, "w5_sia2_rows": 10_000, "w6_rows": 1_000_000, "w6_partitioned_rows": 10_000_000,
             "parts": 8, "repeat": 3},
}


def _size(scale, size):
    return SIZES[size or ("quick" if scale.name == "quick" else "full")], size or scale.name


# --- a recording proxy: the emulator's answers, served again at disk speed ----------------------

class RecordingProxy:
    """An HTTP proxy in front of the emulator that stores each distinct answer and replays it.

    The key is the method, path, query string and form body.  Only ``tap/sync`` and
    ``sia2/query`` answers are recorded (they are what W5 and W6a time); anything else is
    passed through.
    """

    def __init__(self, target, directory):
        self.target, self.directory = target.rstrip("/"), Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.answer(self, "GET")

            def do_POST(self):
                proxy.answer(self, "POST")

            def do_DELETE(self):
                proxy.answer(self, "DELETE")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._locks, self._guard = {}, threading.Lock()

    def __enter__(self):
        # shutdown() waits for serve_forever's next poll: 0.5 s each time by default
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler, method):
        import requests
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = repr((method, handler.path, sorted(parse_qsl(body.decode()))))
        key = hashlib.sha256(request.encode()).hexdigest()
        recorded = handler.path.split("?")[0].endswith(("/tap/sync", "/sia2/query"))
        path = self.directory / key
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if not (recorded and path.exists()):
                upstream = requests.request(method, self.target + handler.path, data=body or None,
                                            stream=True, allow_redirects=False, timeout=3600,
                                            headers={"Content-Type": handler.headers.get("Content-Type", "")})
                headers = {name: value for name, value in upstream.headers.items()
                           if name.lower() in ("content-type", "content-disposition", "location")}
                temporary = path.with_suffix(".tmp")
                with open(temporary, "wb") as sink:
                    for chunk in upstream.iter_content(1 << 20):
                        sink.write(chunk)
                (path.with_suffix(".json")).write_text(json.dumps([upstream.status_code, headers]))
                os.replace(temporary, path)
        status, headers = json.loads(path.with_suffix(".json").read_text())
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(path.stat().st_size))
        handler.end_headers()
        with open(path, "rb") as source:
            while chunk := source.read(1 << 20):
                handler.wfile.write(chunk)
        if not recorded:
            path.unlink()


# --- child processes ------------------------------------------------------------------------------

def _child_env():
    path = os.pathsep.join(filter(None, [str(workloads.REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def run_child(*args, timeout=7200):
    """Run ``python -m benchmarks.tap_scale child ARGS``; its JSON line."""
    command = [sys.executable, "-m", "benchmarks.tap_scale", "child", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} {args[1]} failed: " + (done.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ours(url):
    from astroquery_casda_ext import CasdaClass
    from astroquery_casda_ext.tap.rows import _pyarrow
    _pyarrow()          # pyarrow is imported on first use: an import, kept out of the timing like pyvo's
    client = CasdaClass(server=url)
    # The warm-up goes through RecordingProxy, which answers only once the emulator (about
    # 50 000 rows/s) has rendered everything: longer than the default 30 s read timeout
    # at a million rows.  pyvo's side has no read timeout; this evens the two.
    client.TIMEOUT = 1800
    return client


def _pyvo(url):
    import pyvo
    return pyvo.dal.TAPService(url + "casda_vo_tools/tap")


#: The emulator's four fields: one SIA2 query over them lists every ObsCore row.
SIA2_FIELDS = ((60.0, -30.0), (187.5, -45.0), (320.0, -51.0), (333.9, -45.84))


def fingerprint(table):
    """Per column: dtype kind, unit, and digests of the mask and of the shown values (text
    compared as text, whatever its width), so two processes' tables can be compared."""
    import numpy as np
    columns = {}
    for name in table.colnames:
        column = table[name]
        mask = np.ma.getmaskarray(column)
        data = np.ma.getdata(column)[~mask]
        if column.dtype.kind in "UO":
            values = "\0".join(str(value) for value in data).encode()
        else:
            values = np.where(np.isnan(data), 0, data).tobytes() if column.dtype.kind == "f" else data.tobytes()
        columns[name] = [column.dtype.kind, str(column.unit), hashlib.sha256(mask.tobytes()).hexdigest()[:16],
                         hashlib.sha256(values).hexdigest()[:16]]
    return columns


def child_main(argv):
    """One client run: ``table CLIENT URL QUERY MAXREC``, ``sia2 CLIENT URL RADIUS``,
    ``parquet CLIENT URL QUERY PATH`` or ``partitioned ours URL QUERY BY PARTS DIR``; prints
    seconds, rows and peak memory (and for tables, their `fingerprint`, taken after timing)."""
    import warnings
    warnings.simplefilter("ignore")            # VOTable unit warnings: the same for every client
    import astropy.units.cds  # noqa: F401     (astropy loads CDS units lazily: a cost outside the timing)
    mode, client, url, query, *rest = argv
    made = {}
    if mode == "table":
        maxrec = int(rest[0])
        if client == "ours":
            casda = _ours(url)
            work = (lambda: len(made.setdefault("table", casda.query_tap(query, maxrec=maxrec))))
        else:
            service = _pyvo(url)
            work = (lambda: len(made.setdefault("table", service.run_sync(query, maxrec=maxrec).to_table())))
    elif mode == "sia2":
        radius = float(query)
        if client == "ours":
            casda = _ours(url)
            positions = [f"{ra} {dec}" for ra, dec in SIA2_FIELDS]
            work = (lambda: len(made.setdefault("table", casda.query_region(positions, radius=f"{radius} deg",
                                                                            cache=False))))
        else:
            import pyvo
            sia2 = url + "casda_vo_tools/sia2/query"
            circles = [(ra, dec, radius) for ra, dec in SIA2_FIELDS]
            work = (lambda: len(made.setdefault("table", pyvo.dal.sia2.SIA2Query(sia2, pos=circles)
                                                .execute().to_table())))
    elif mode == "parquet":
        path = rest[0]
        if client == "ours":
            casda = _ours(url)
            work = (lambda: casda.query_tap(query, output=path, overwrite=True, progress=False).rows)
        else:
            service = _pyvo(url)

            def work():
                table = service.run_sync(query).to_table()
                for column in table.itercols():   # astropy's Parquet writer refuses object columns
                    if column.dtype.kind == "O":
                        table[column.name] = column.astype(str)
                table.write(path, format="parquet", overwrite=True)
                return len(table)
    elif mode == "partitioned":
        by, parts, directory = rest[0], int(rest[1]), rest[2]
        casda = _ours(url)
        outcome = {}

        def work():
            result = casda.query_tap_partitioned(query, by=by, parts=parts, output=directory, progress=False)
            outcome["resumed"] = result.resumed
            return result.rows
    else:
        raise SystemExit(f"unknown child mode {mode!r}")
    before = vmhwm_mb()
    start = time.perf_counter()
    rows = work()
    seconds = time.perf_counter() - start
    figures = {"seconds": seconds, "rows": rows, "peak_rss_mb_before": before, "peak_rss_mb": vmhwm_mb()}
    if mode == "partitioned":
        figures["resumed"] = outcome["resumed"]
    if "table" in made:
        figures["fingerprint"] = fingerprint(made["table"])
    print(json.dumps(figures))
    return 0


# --- repeats ---------------------------------------------------------------------------------------

def interleaved(clients, run_one, repeat):
    """``run_one(client)`` for each client, ``repeat`` times, the order rotating each time."""
    runs = {client: [] for client in clients}
    for index in range(repeat):
        order = clients[index % len(clients):] + clients[:index % len(clients)]
        for client in order:
            runs[client].append(run_one(client))
            say(f"{client}: {runs[client][-1]['seconds']:.2f} s, {runs[client][-1]['peak_rss_mb']:.0f} MB")
    return runs


def summary(runs, key):
    values = [run[key] for run in runs]
    return {"median": statistics.median(values), "best": min(values), "worst": max(values), "all": values}


def _spread(stats, unit="s"):
    return f"best {stats['best']:.2f} {unit}, worst {stats['worst']:.2f} {unit}"


def comparison_rows(workload, label, runs, *, speedup, memory_limit):
    """Time (median, speed-up target) and memory rows of ours against pyvo."""
    ours_t, pyvo_t = summary(runs["ours"], "seconds"), summary(runs["pyvo"], "seconds")
    ours_m, pyvo_m = summary(runs["ours"], "peak_rss_mb"), summary(runs["pyvo"], "peak_rss_mb")
    ratio = pyvo_t["median"] / ours_t["median"]
    return [
        Row(workload, f"{label}: time (median)", "s", ours_t["median"], pyvo_t["median"], "pyvo", ratio,
            f">= {speedup:g}x", ratio >= speedup,
            f"ratio = pyvo / ours; {len(runs['ours'])} interleaved runs each; ours {_spread(ours_t)}; "
            f"pyvo {_spread(pyvo_t)}"),
        Row(workload, f"{label}: peak memory", "MB", ours_m["median"], pyvo_m["median"], "pyvo",
            ours_m["median"] / pyvo_m["median"], f"<= {memory_limit} MB", ours_m["worst"] <= memory_limit,
            f"VmHWM of each client process; met on the worst of ours ({ours_m['worst']:.0f} MB)"),
    ]


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


# --- W5 --------------------------------------------------------------------------------------------

def _same_table_row(label, warm):
    """Whether ours and pyvo's tables agree (values, masks, units, dtype kinds), from the warm-up."""
    ours, theirs = warm["ours"]["fingerprint"], warm["pyvo"]["fingerprint"]
    differing = sorted(name for name in set(ours) | set(theirs) if ours.get(name) != theirs.get(name))
    return Row("W5", f"{label}: the same table as pyvo's", "", None, None, "pyvo", None,
               "values, masks, units, dtype kinds equal", not differing and list(ours) == list(theirs),
               f"{len(ours)} columns compared" + (f"; differing: {', '.join(differing)}" if differing else ""))


def _measure(mode, argument, rows, proxy, repeat):
    """Warm-up runs (recording the answers; their tables are fingerprinted), then the timed runs."""
    warm = {client: run_child(mode, client, proxy.url, argument, rows) for client in ("ours", "pyvo")}
    runs = interleaved(["ours", "pyvo"], lambda client: run_child(mode, client, proxy.url, argument, rows),
                       repeat)
    for client, found in runs.items():
        assert all(run["rows"] == warm["pyvo"]["rows"] for run in found), f"W5 {client}: wrong row count"
        for run in found:
            run.pop("fingerprint", None)
    return warm, runs


def run_w5(scale, workdir, size=None):
    """W5: a) ObsCore rows through the default query_tap, b) SIA2 rows through query_region,
    each as a Table, against pyvo on the same (recorded) answers."""
    from astroquery_casda_ext.emulator import CasdaEmulator, EmulatorOptions, HoldingsConfig
    sizes, size_name = _size(scale, size)
    rows, sia2_rows, workdir = sizes["w5_rows"], sizes["w5_sia2_rows"], Path(workdir)
    emulator = CasdaEmulator(workdir / "emulator-w5")
    fill_obscore(emulator, rows)
    with emulator, RecordingProxy(emulator.url, workdir / "w5-recordings") as proxy:
        say(f"W5a: {rows:,} ObsCore rows; warm-up (records the answers)")
        warm, runs = _measure("table", W5_QUERY, rows, proxy, sizes["repeat"])
    listed = EmulatorOptions(holdings=HoldingsConfig(bulk_listed_rows=sia2_rows))
    with CasdaEmulator(workdir / "emulator-w5b", options=listed) as emulator, \
            RecordingProxy(emulator.url, workdir / "w5b-recordings") as proxy:
        say(f"W5b: {sia2_rows:,} listed products (and the emulator's own) through SIA2; warm-up")
        sia2_warm, sia2_runs = _measure("sia2", "1.0", 0, proxy, sizes["repeat"])
    found = sia2_warm["ours"]["rows"]
    parameters = {"size": size_name, "rows": rows, "query": W5_QUERY, "repeats": sizes["repeat"],
                  "ours": f"CasdaClass.query_tap(query, maxrec={rows})  (the default)",
                  "pyvo": f"TAPService(...).run_sync(query, maxrec={rows}).to_table()",
                  "sia2_rows": found,
                  "ours_sia2": "CasdaClass.query_region(the 4 fields, radius='1.0 deg', cache=False)",
                  "pyvo_sia2": "pyvo.dal.sia2.SIA2Query(url, pos=[4 circles of 1 deg]).execute().to_table()",
                  "server": "the emulator's answers recorded once, replayed to every timed run"}
    rows_out = comparison_rows("W5", f"{rows:,} ObsCore rows as a Table", runs, speedup=3, memory_limit=600)
    rows_out.append(_same_table_row(f"{rows:,} ObsCore rows", warm))
    sia2_rows_out = comparison_rows("W5", f"{found:,} SIA2 rows as a Table", sia2_runs, speedup=3,
                                    memory_limit=round(summary(sia2_runs["pyvo"], "peak_rss_mb")["median"]))
    sia2_rows_out[1].target = "<= pyvo's"
    rows_out += sia2_rows_out + [_same_table_row(f"{found:,} SIA2 rows", sia2_warm)]
    return WorkloadResult("W5", "large TAP and SIA2 results as Tables", parameters,
                          {"runs": runs, "sia2_runs": sia2_runs}, rows_out)


# --- W6 --------------------------------------------------------------------------------------------

def _aggregate_reference(url):
    """Row count and column sums of the catalogue from one aggregate query on the server."""
    casda = _ours(url)
    table = casda.query_tap(f"SELECT COUNT(*) AS n, SUM(first_sbid) AS s_sbid, SUM(has_siblings) AS s_sib, "
                            f"SUM({W6_BY}) AS s_ra FROM {W6_TABLE}")
    return {"rows": int(table["n"][0]), "sum_first_sbid": int(table["s_sbid"][0]),
            "sum_has_siblings": int(table["s_sib"][0]), "sum_ra": float(table["s_ra"][0])}


def _dataset_checksum(directory):
    """The same figures from the written dataset (exact sums: integers, and math.fsum)."""
    import pyarrow.dataset
    dataset = pyarrow.dataset.dataset(directory, format="parquet")
    figures = {"rows": 0, "sum_first_sbid": 0, "sum_has_siblings": 0, "ra": []}
    for batch in dataset.to_batches(columns=["first_sbid", "has_siblings", W6_BY]):
        figures["rows"] += batch.num_rows
        figures["sum_first_sbid"] += sum(batch.column(0).to_pylist())
        figures["sum_has_siblings"] += sum(batch.column(1).to_pylist())
        figures["ra"].append(math.fsum(batch.column(2).to_pylist()))
    figures["sum_ra"] = math.fsum(figures.pop("ra"))
    return figures


def _checksums_equal(ours, reference):
    """Counts and integer sums exactly; the sum of doubles to 1e-9: the server's SUM rounds at
    each of its n additions (error up to about n * 1e-16 of the total), ours is exact (fsum)."""
    return all(ours[key] == reference[key] for key in ("rows", "sum_first_sbid", "sum_has_siblings")) \
        and math.isclose(ours["sum_ra"], reference["sum_ra"], rel_tol=1e-9)


def _partitioned_with_kill(url, directory, parts):
    """The partitioned child, SIGKILLed once half its parts are written, then run again."""
    command = [sys.executable, "-m", "benchmarks.tap_scale", "child", "partitioned", "ours", url, W6_QUERY,
               W6_BY, str(parts), str(directory)]
    manifest = Path(directory) / "_casda_partitions.json"
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env())
    written_at_kill = killed_peak = None
    while process.poll() is None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            written = len(json.loads(manifest.read_text())["written"])
            if written >= parts // 2:
                killed_peak = _peak_of(process.pid)   # the child's VmHWM so far, read just before
                process.send_signal(signal.SIGKILL)
                written_at_kill = written
                break
        time.sleep(0.1)
    process.communicate()
    killed_after = time.perf_counter() - start
    if written_at_kill is None:
        raise RuntimeError("W6b: the partitioned run ended before half its parts were written")
    started = time.perf_counter()
    second = run_child("partitioned", "ours", url, W6_QUERY, W6_BY, parts, directory)
    second["wall_seconds"] = time.perf_counter() - started      # with the child's imports
    return {"killed_after_seconds": killed_after, "parts_written_at_kill": written_at_kill,
            "killed_run_peak_rss_mb": killed_peak, "rerun": second}


def _peak_of(pid):
    """VmHWM of process ``pid``, MB (None once it is gone)."""
    with contextlib.suppress(OSError, StopIteration):
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    return None


def run_w6(scale, workdir, size=None):
    """W6: the catalogue to Parquet (ours against pyvo) and partitioned with a kill half way."""
    from astroquery_casda_ext.emulator import CasdaEmulator
    sizes, size_name = _size(scale, size)
    workdir = Path(workdir)
    rows, big, parts = sizes["w6_rows"], sizes["w6_partitioned_rows"], sizes["parts"]
    measurements = {}
    say(f"W6a: {rows:,} catalogue rows to Parquet")
    started = time.perf_counter()
    with CasdaEmulator(workdir / "emulator-w6a", catalogue_rows=rows) as emulator, \
            RecordingProxy(emulator.url, workdir / "w6-recordings") as proxy:
        measurements["catalogue_generation_seconds"] = time.perf_counter() - started
        output = workdir / "w6a"
        output.mkdir(exist_ok=True)
        for client in ("ours", "pyvo"):
            run_child("parquet", client, proxy.url, W6_QUERY, output / f"warm-{client}.parquet")
        runs = interleaved(["ours", "pyvo"],
                           lambda client: run_child("parquet", client, proxy.url, W6_QUERY,
                                                    output / f"{client}.parquet"), sizes["repeat"])
    for client, found in runs.items():
        assert all(run["rows"] == rows for run in found), f"W6a {client}: wrong row count"
    measurements["to_parquet"] = runs
    table_rows = comparison_rows("W6", f"{rows:,} catalogue rows to Parquet", runs, speedup=5,
                                 memory_limit=300)

    say(f"W6b: {big:,} catalogue rows in {parts} parts, killed half way, run again")
    started = time.perf_counter()
    with CasdaEmulator(workdir / "emulator-w6b", catalogue_rows=big) as emulator:
        measurements["partitioned_catalogue_generation_seconds"] = time.perf_counter() - started
        reference = _aggregate_reference(emulator.url)
        outcome = _partitioned_with_kill(emulator.url, workdir / "w6b-dataset", parts)
    written = _dataset_checksum(workdir / "w6b-dataset")
    equal = _checksums_equal(written, reference)
    measurements.update(partitioned=outcome, reference=reference, dataset=written)
    rerun = outcome["rerun"]
    table_rows += [
        Row("W6", f"{big:,} rows in {parts} parts: peak memory", "MB", rerun["peak_rss_mb"], None, "-", None,
            "<= 400 MB", rerun["peak_rss_mb"] <= 400,
            f"VmHWM of the rerun child; the killed run's was {outcome['killed_run_peak_rss_mb'] or 0:.0f} MB "
            f"just before it; the rerun resumed {rerun['resumed']} of {parts} parts written before the "
            f"SIGKILL at {outcome['killed_after_seconds']:.1f} s"),
        Row("W6", f"{big:,} rows in {parts} parts: resumed run", "s", rerun["seconds"], None, "-", None,
            "rows and checksum = reference", equal and rerun["rows"] == reference["rows"],
            f"{written['rows']:,} rows in the dataset vs {reference['rows']:,} by COUNT(*); sums of "
            f"first_sbid, has_siblings and {W6_BY} vs one aggregate query: "
            f"{'equal' if equal else 'DIFFERENT'}"),
    ]
    parameters = {"size": size_name, "rows_to_parquet": rows, "rows_partitioned": big, "parts": parts,
                  "query": W6_QUERY, "by": W6_BY, "repeats": sizes["repeat"],
                  "ours": "CasdaClass.query_tap(query, output='x.parquet')",
                  "pyvo": "TAPService(...).run_sync(query).to_table().write('x.parquet') (its object "
                          "columns made str first: astropy's Parquet writer refuses them)",
                  "partitioned": f"CasdaClass.query_tap_partitioned(query, by={W6_BY!r}, parts={parts}, "
                                 "output=DIR)"}
    return WorkloadResult("W6", "a catalogue to Parquet, whole and in resumable parts", parameters,
                          measurements, table_rows)


@contextlib.contextmanager
def quiet_astroquery_log():
    """No INFO lines from astroquery's logger while the workloads run."""
    from astroquery import log
    level = log.level
    log.setLevel("WARNING")
    try:
        yield
    finally:
        log.setLevel(level)


# --- standalone ------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tap_scale",
                                     description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    group.add_argument("--medium", action="store_true", help="W5 20 000 rows, W6 100 000 and 1 000 000 rows")
    parser.add_argument("--only", choices=("W5", "W6"), help="one of the two")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--partitioned-rows", type=int, default=None, metavar="N",
                        help="rows of W6's partitioned run instead of the size's (the emulator renders "
                             "about 50 000 rows/s, so 10 000 000 rows take it 3 to 4 minutes)")
    parser.add_argument("--output", default=None, help="also save the JSON of every run to this file")
    args = parser.parse_args(argv)
    scale = workloads.QUICK if args.quick else workloads.FULL
    size = "quick" if args.quick else "medium" if args.medium else "full"
    if args.partitioned_rows:
        size = f"{size}+partitioned={args.partitioned_rows}"
        SIZES[size] = dict(SIZES[size.split("+")[0]], w6_partitioned_rows=args.partitioned_rows)
    results = {}
    with tempfile.TemporaryDirectory(prefix="casda-tap-bench-", dir=args.workdir) as scratch, \
            quiet_astroquery_log():
        if args.only in (None, "W5"):
            results["W5"] = run_w5(scale, Path(scratch), size)
        if args.only in (None, "W6"):
            results["W6"] = run_w6(scale, Path(scratch), size)
    from .__main__ import format_table
    print()
    print(format_table(results))
    document = json.dumps({name: result.as_json() for name, result in results.items()}, default=str)
    print(document)
    if args.output:
        Path(args.output).write_text(document + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(child_main(sys.argv[2:]))
    sys.exit(main())
