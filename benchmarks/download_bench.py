"""Benchmark of astroquery_casda_ext.download against astroquery.casda and curl.

Two measurements, each against a CASDA emulator running in its own process (so the
server does not compete with the client for the interpreter):

1. **Parallel vs sequential**: ``--files`` files of ``--file-size`` bytes, with the
   emulator's per-connection transfer rate capped at ``--rate`` bytes/s (a real archive
   limits each connection; parallel connections add up). Wall time of our
   ``Downloader`` (``--workers`` transfers at once) against the installed
   ``astroquery.casda.Casda.download_files`` (one file after the other) on the same URLs.
   Target: at least 3x faster.
2. **Single-stream throughput and memory**: one ``--big-size`` file, uncapped. Throughput
   of our downloader (which also computes CRC-32 and SHA-1 and verifies them) against
   ``curl`` on the same URL (which verifies nothing), and the peak resident memory
   (``ru_maxrss``) of the process running our download. Targets: at least 0.8x curl's
   throughput, and under 200 MB.

Sizes accept ``k``/``M``/``G`` suffixes (decimal: ``50M`` is 50 000 000 bytes). A quick run::

    python benchmarks/download_bench.py --files 4 --file-size 5M --rate 5M --big-size 200M

The figures are printed and saved as JSON (``--output``). There are no pass/fail
assertions here: the targets are printed next to the figures.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

RESULTS = Path(__file__).resolve().parent / "results" / "download_bench.json"
_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def size(text):
    """``"50M"`` -> 50_000_000 (decimal suffixes k, M, G; optional trailing B or B/s)."""
    value = text.strip().lower().removesuffix("/s").removesuffix("b")
    suffix = value[-1] if value and value[-1] in _SUFFIXES else ""
    try:
        return int(float(value[:len(value) - len(suffix)]) * _SUFFIXES[suffix])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def megabytes(nbytes):
    return nbytes / 1e6


# --- the emulator, in a child process --------------------------------------------------------------

def serve(args):
    """Child: run an emulator with bulk products until stdin closes; print its URL first."""
    from astroquery_casda_ext.emulator import CasdaEmulator, EmulatorOptions
    from astroquery_casda_ext.emulator.holdings import HoldingsConfig
    options = EmulatorOptions(holdings=HoldingsConfig(bulk_count=args.bulk_count, bulk_size=args.bulk_size),
                              transfer_rate=args.rate or None, job_phases=(("EXECUTING", 0.05),))
    with CasdaEmulator(args.data_dir, options=options) as emulator:
        print(json.dumps({"url": emulator.url, "username": emulator.username,
                          "password": emulator.password}), flush=True)
        sys.stdin.read()
    return 0


class EmulatorProcess:
    """An emulator serving ``count`` bulk files of ``nbytes`` in a child process."""

    def __init__(self, data_dir, count, nbytes, rate=None):
        command = [sys.executable, __file__, "serve", "--data-dir", str(data_dir), "--bulk-count", str(count),
                   "--bulk-size", str(nbytes), "--rate", str(rate or 0)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the emulator process did not start")
        self.info = json.loads(line)

    def stop(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


def stage_bulk(info, count):
    """Stage the emulator's bulk products (DataLink tokens, one SODA job); the job's files."""
    from astroquery_casda_ext.access import DataLinkClient
    from astroquery_casda_ext.credentials import Credentials, ProxyAuth
    from astroquery_casda_ext.endpoints import Endpoints
    from astroquery_casda_ext.jobs import PollPolicy, SodaJob
    endpoints = Endpoints.for_server(info["url"])
    session = requests.Session()
    auth = ProxyAuth(Credentials(info["username"], info["password"]), endpoints.vo_proxy)
    ids = [f"cube-{5001 + index}" for index in range(count)]      # the emulator's bulk product ids
    report = DataLinkClient(session, endpoints.datalink_url, auth=auth).tokens_for(ids, "async_service")
    job = SodaJob.create(session, report.tokens[0].service_url, [token.token for token in report.tokens])
    job.run()
    job.wait(PollPolicy(first=0.1, factor=1.0, cap=0.1, timeout=600))
    job.raise_if_error()
    return job.result_files()


# --- 1. parallel vs sequential ---------------------------------------------------------------------

def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - start, value


def ours(urls, savedir, workers):
    from astroquery_casda_ext.download import Downloader
    manifest = Downloader(requests.Session(), workers=workers, progress=False).download(urls, savedir)
    manifest.raise_for_errors()
    assert set(manifest.table["checksum_status"]) == {"verified"}, manifest.table
    return manifest


def astroquery_sequential(urls, savedir):
    from astroquery import log
    from astroquery.casda import Casda
    log.setLevel("WARNING")           # no progress bars from astroquery either
    Path(savedir).mkdir(parents=True, exist_ok=True)    # astroquery does not create it
    return Casda.download_files(urls, savedir=str(savedir))


def bench_parallel(args, workdir):
    nbytes = args.files * args.file_size
    print(f"\n1. {args.files} files x {megabytes(args.file_size):.0f} MB, "
          f"{megabytes(args.rate):.0f} MB/s per connection")
    with EmulatorProcess(workdir / "holdings-parallel", args.files, args.file_size, args.rate) as emulator:
        files = stage_bulk(emulator.info, args.files)
        urls = [url for item in files for url in (item.url, item.checksum_url)]
        ours_seconds, _ = timed(ours, urls, workdir / "ours", args.workers)
        print(f"   ours ({args.workers} workers):          {ours_seconds:7.2f} s  "
              f"{megabytes(nbytes) / ours_seconds:7.1f} MB/s")
        astroquery_seconds, _ = timed(astroquery_sequential, urls, workdir / "astroquery")
        print(f"   astroquery.casda (sequential):  {astroquery_seconds:7.2f} s  "
              f"{megabytes(nbytes) / astroquery_seconds:7.1f} MB/s")
    for name in ("ours", "astroquery"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    speedup = astroquery_seconds / ours_seconds
    print(f"   speed-up: {speedup:.2f}x (target >= 3x)")
    return {"files": args.files, "file_size": args.file_size, "rate_per_connection": args.rate,
            "workers": args.workers, "ours_seconds": ours_seconds, "astroquery_seconds": astroquery_seconds,
            "speedup": speedup, "target_speedup": 3.0}


# --- 2. one big file: throughput and memory --------------------------------------------------------

def _current_rss_mb():
    """Resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def _cpu_seconds(who=resource.RUSAGE_SELF):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def fetch(args):
    """Child: download ``args.urls`` with our downloader; print time, CPU and memory as JSON."""
    from astroquery_casda_ext.download import Downloader
    downloader = Downloader(requests.Session(), workers=1, progress=False, chunk_size=args.chunk_size)
    rss_before, cpu_before = _current_rss_mb(), _cpu_seconds()
    seconds, manifest = timed(downloader.download, args.urls, args.savedir)
    manifest.raise_for_errors()
    print(json.dumps({"seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu_before,
                      "checksum_status": list(manifest.table["checksum_status"]),
                      "bytes": int(manifest.table["bytes_transferred"].sum()), "rss_mb_before": rss_before,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


def run_ours_once(urls, savedir, chunk_size):
    command = [sys.executable, __file__, "fetch", "--savedir", str(savedir), "--chunk-size", str(chunk_size),
               *urls]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    shutil.rmtree(savedir)
    return result


def run_curl_once(url, savedir):
    """Wall and CPU seconds of ``curl`` fetching ``url`` (it verifies nothing)."""
    savedir.mkdir(parents=True, exist_ok=True)
    command = ["curl", "-sS", "--fail", "-o", str(savedir / "curl.out"), url]
    cpu_before = _cpu_seconds(resource.RUSAGE_CHILDREN)
    seconds, _ = timed(subprocess.run, command, check=True)
    cpu = _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_before
    shutil.rmtree(savedir)
    return seconds, cpu


def bench_big(args, workdir):
    print(f"\n2. one {megabytes(args.big_size):.0f} MB file, uncapped, best of {args.repeat}")
    with EmulatorProcess(workdir / "holdings-big", 1, args.big_size) as emulator:
        item = stage_bulk(emulator.info, 1)[0]
        ours_runs, curl_runs = [], []
        urls = [item.url, item.checksum_url]
        for index in range(args.repeat):  # interleaved, so both see the same page cache and load
            curl_first = index % 2 == 1    # and in turn first, so neither always follows the other
            if curl_first and shutil.which("curl"):
                curl_runs.append(run_curl_once(item.url, workdir / "curl-big"))
            ours_runs.append(run_ours_once(urls, workdir / "ours-big", args.chunk_size))
            if not curl_first and shutil.which("curl"):
                curl_runs.append(run_curl_once(item.url, workdir / "curl-big"))
    assert all(run["checksum_status"] == ["verified"] and run["bytes"] == args.big_size for run in ours_runs)
    gigabytes = args.big_size / 1e9
    best = min(ours_runs, key=lambda run: run["seconds"])
    ours_rate = megabytes(args.big_size) / best["seconds"]
    ours_median = statistics.median(megabytes(args.big_size) / run["seconds"] for run in ours_runs)
    ours_cpu = min(run["cpu_seconds"] for run in ours_runs) / gigabytes
    peak_mb = max(run["peak_rss_mb"] for run in ours_runs)
    base_mb = max(run["rss_mb_before"] for run in ours_runs)
    print(f"   ours (verified):  {best['seconds']:6.2f} s  {ours_rate:8.1f} MB/s (median {ours_median:.1f}), "
          f"CPU {ours_cpu:.2f} s/GB")
    figures = {"size": args.big_size, "chunk_size": args.chunk_size, "ours_seconds": best["seconds"],
               "ours_mb_per_s": ours_rate, "ours_median_mb_per_s": ours_median,
               "ours_runs_seconds": [run["seconds"] for run in ours_runs], "ours_cpu_s_per_gb": ours_cpu,
               "peak_rss_mb": peak_mb, "rss_before_download_mb": base_mb, "target_peak_rss_mb": 200}
    if curl_runs:
        curl_seconds = min(seconds for seconds, _ in curl_runs)
        curl_rate = megabytes(args.big_size) / curl_seconds
        curl_median = statistics.median(megabytes(args.big_size) / seconds for seconds, _ in curl_runs)
        curl_cpu = min(cpu for _, cpu in curl_runs) / gigabytes
        print(f"   curl (no checks): {curl_seconds:6.2f} s  {curl_rate:8.1f} MB/s "
              f"(median {curl_median:.1f}), CPU {curl_cpu:.2f} s/GB")
        print(f"   ours / curl: {ours_rate / curl_rate:.2f} best, {ours_median / curl_median:.2f} median "
              "(target >= 0.8)")
        figures.update(curl_seconds=curl_seconds, curl_runs_seconds=[seconds for seconds, _ in curl_runs],
                       curl_mb_per_s=curl_rate, curl_median_mb_per_s=curl_median, curl_cpu_s_per_gb=curl_cpu,
                       ratio_to_curl=ours_rate / curl_rate, median_ratio_to_curl=ours_median / curl_median,
                       target_ratio_to_curl=0.8)
    print(f"   peak memory of our process: {peak_mb:.0f} MB (resident before the download, after imports: "
          f"{base_mb:.0f} MB; target < 200 MB)")
    return figures


# --- command line ------------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run the benchmark (the default)")
    add_run_arguments(run)
    add_run_arguments(parser)
    child = commands.add_parser("serve", help=argparse.SUPPRESS)
    child.add_argument("--data-dir", required=True)
    child.add_argument("--bulk-count", type=int, required=True)
    child.add_argument("--bulk-size", type=int, required=True)
    child.add_argument("--rate", type=float, default=0)
    child = commands.add_parser("fetch", help=argparse.SUPPRESS)
    child.add_argument("--savedir", required=True)
    child.add_argument("--chunk-size", type=int, default=1 << 20)
    child.add_argument("urls", nargs="+")
    return parser


def add_run_arguments(parser):
    parser.add_argument("--files", type=int, default=20, help="files in the parallel test (default 20)")
    parser.add_argument("--file-size", type=size, default=size("50M"), help="size of each (default 50M)")
    parser.add_argument("--rate", type=size, default=size("20M"), help="per-connection cap (default 20M/s)")
    parser.add_argument("--workers", type=int, default=4, help="our parallel transfers (default 4)")
    parser.add_argument("--big-size", type=size, default=size("1G"),
                        help="single-file test size (default 1G)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="interleaved runs of each in the single-file test (best and median reported)")
    parser.add_argument("--chunk-size", type=size, default=1 << 20, help="our read size (default 1 MiB)")
    parser.add_argument("--skip-parallel", action="store_true")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--output", default=str(RESULTS), help=f"JSON results file (default {RESULTS})")


def run(args):
    results = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="casda-bench-", dir=args.workdir) as scratch:
        workdir = Path(scratch)
        if not args.skip_parallel:
            results["parallel"] = bench_parallel(args, workdir)
        if not args.skip_big:
            results["single_file"] = bench_big(args, workdir)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nsaved {output}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "fetch":
        return fetch(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
