"""How fast does the emulator serve a large file, and does its memory stay flat?

Starts ``python -m astroquery_casda_ext.emulator`` in a subprocess with one bulk product
(1 GiB by default), finds the product with TAP, gets a web download URL from DataLink
(with the emulator's built-in test account), then downloads it

* with ``curl -s -o /dev/null`` (the reference), and
* with a ``requests`` streaming client (1 MiB chunks, what the package's downloader does),

and reports both throughputs, their ratio, and the server's resident memory before and
after (``VmRSS``) and at its peak (``VmHWM``) from ``/proc/<pid>/status``.

Usage::

    python benchmarks/emulator_download.py [--size BYTES] [--data-dir DIR] [--repeat N]

The data directory defaults to a temporary one; pass ``--data-dir`` to keep the generated
file between runs.
"""
import argparse
import io
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from astropy.io.votable import parse_single_table

BULK_SBID = "9001"
WEB_DOWNLOAD = "Download data product via web"


def start_emulator(data_dir, size):
    """The emulator subprocess and its base URL (waits until it prints the URL)."""
    command = [sys.executable, "-u", "-m", "astroquery_casda_ext.emulator", "--port", "0",
               "--data-dir", str(data_dir), "--bulk-count", "1", "--bulk-size", str(size)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        match = re.search(r"serving (http://\S+)", line)
        if match:
            return process, match.group(1)
    raise RuntimeError(f"the emulator exited ({process.wait()}) without printing its URL")


def memory_kib(pid):
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def bulk_download_url(base, username, password):
    """A ``data/sync`` URL for the bulk product, through TAP and DataLink."""
    tap = requests.get(base + "casda_vo_tools/tap/sync", timeout=60, params={
        "REQUEST": "doQuery", "LANG": "ADQL",
        "QUERY": f"SELECT obs_publisher_did FROM ivoa.obscore WHERE obs_id = '{BULK_SBID}'"})
    product_id = str(parse_single_table(io.BytesIO(tap.content)).array["obs_publisher_did"][0])
    links = requests.get(base + "casda_vo_proxy/vo/datalink/links", params={"ID": product_id},
                         auth=(username, password), timeout=60)
    table = parse_single_table(io.BytesIO(links.content)).array
    for row in table:
        if str(row["description"]) == WEB_DOWNLOAD and str(row["access_url"]):
            return product_id, str(row["access_url"])
    raise RuntimeError(f"DataLink offered no web download for {product_id}")


def curl_speed(url):
    """curl's average download speed in bytes per second."""
    command = ["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}", url]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
    return float(output[0]), int(float(output[1]))


def requests_speed(url, chunk_size=1 << 20):
    """A streaming ``requests`` client's speed in bytes per second (bytes are discarded)."""
    received = 0
    started = time.perf_counter()
    with requests.get(url, stream=True, timeout=60) as response:
        response.raise_for_status()
        for chunk in response.iter_content(chunk_size=chunk_size):
            received += len(chunk)
    return received / (time.perf_counter() - started), received


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1 << 30, help="bytes of the bulk product (default 1 GiB)")
    parser.add_argument("--data-dir", default=None, help="keep the generated holdings here")
    parser.add_argument("--repeat", type=int, default=3, help="downloads per client (best is reported)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="casda-bench-") as scratch:
        data_dir = Path(args.data_dir or scratch)
        started = time.perf_counter()
        process, base = start_emulator(data_dir, args.size)
        try:
            report(process, base, args, time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return 0


def report(process, base, args, startup_seconds):
    username, password = "casda-user", "emulator-opal-password"  # the emulator's built-in test account
    product_id, url = bulk_download_url(base, username, password)
    rss_before, _ = memory_kib(process.pid)
    curl_runs = [curl_speed(url) for _ in range(args.repeat)]
    rss_after_curl, _ = memory_kib(process.pid)
    requests_runs = [requests_speed(url) for _ in range(args.repeat)]
    rss_after, peak = memory_kib(process.pid)
    for name, runs in (("curl", curl_runs), ("requests", requests_runs)):
        if any(size != args.size for _speed, size in runs):
            raise RuntimeError(f"{name} received {[size for _s, size in runs]} bytes, expected {args.size}")
    best_curl = max(speed for speed, _ in curl_runs)
    best_requests = max(speed for speed, _ in requests_runs)
    mib = 1 << 20
    print(f"emulator start (holdings with a {args.size / mib:.0f} MiB product): {startup_seconds:.1f} s")
    print(f"product {product_id}, {args.size} bytes, {args.repeat} downloads per client")
    print(f"curl      best {best_curl / mib:8.1f} MiB/s   runs: "
          + ", ".join(f"{speed / mib:.0f}" for speed, _ in curl_runs))
    print(f"requests  best {best_requests / mib:8.1f} MiB/s   runs: "
          + ", ".join(f"{speed / mib:.0f}" for speed, _ in requests_runs))
    print(f"ratio requests/curl: {best_requests / best_curl:.2f}")
    print(f"server RSS: before {rss_before / 1024:.1f} MiB, after curl {rss_after_curl / 1024:.1f} MiB, "
          f"after all {rss_after / 1024:.1f} MiB, peak (VmHWM) {peak / 1024:.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
