"""How every benchmark measures: processes, interleaved repeats, medians, checksums, request counts.

The pieces a workload is built from (``workloads.py`` and ``tap_scale.py`` use them alike):

- `EmulatorProcess`: ``python -m astroquery_casda_ext.emulator --control`` in its own process,
  so the server never shares an interpreter (or its lock) with a client; the harness reads and
  resets its request log over HTTP (``/_emulator/log``, ``/_emulator/reset``).
- `run_child`: one client run in a fresh child process (``python -m benchmarks.harness child
  MODULE:FUNCTION``, the parameters as JSON on stdin).  ``FUNCTION(params)`` does the imports
  and the set-up and returns the work; only the work is timed, and the child reports its time,
  CPU and peak memory (VmHWM, see `vmhwm_mb`) beside whatever the work returned.
- `run_process`: one run of a command (curl, or a script run by path), timed from the outside,
  start-up included.
- `interleave`: every side ``repeats`` times, the order rotated each round (A B C, B C A,
  C A B, ...), so no side always runs first, last or after the same neighbour.
- `spread`, `time_row`, `rate_row`, `count_row`, `ceiling_row`: the **median** of the runs
  decides a target; the best and the worst run are shown beside it.
- `verify_files`: every downloaded file against the emulator's own checksum of it (CRC-32,
  SHA-1 and size), computed here with zlib and hashlib, not with the client's code.
- `request_counts`: DataLink requests, jobs, polls, downloads from the emulator's log.
"""
import contextlib
import dataclasses
import hashlib
import importlib
import json
import math
import os
import queue
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import requests

__all__ = ["Row", "WorkloadResult", "EmulatorProcess", "BenchmarkError", "run_child", "run_process",
           "interleave",
           "spread", "time_row", "rate_row", "count_row", "ceiling_row", "verify_files", "request_counts",
           "datalink_limit", "vmhwm_mb", "say", "child_env"]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The line a child prints its figures on (anything else it prints is ignored).
RESULT_MARK = "BENCHMARK-RESULT "


class BenchmarkError(RuntimeError):
    """A run that cannot be counted: a client failed, or a file came out wrong."""


def say(text):
    """Progress of a long run, as it happens."""
    print(f"  {text}", flush=True)


# --- rows and results ------------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the results table.

    ``ours`` and ``baseline`` are the medians of the runs (counts: medians too); ``ratio`` is
    oriented so that bigger is better for speed-ups (baseline / ours) and throughput (ours /
    baseline); ``met`` is None when the line has no target.  ``ours_range`` and
    ``baseline_range`` are (best, worst) of the runs, shown beside the medians;
    ``ratio_by_round`` the ratio within each round of the interleaved runs (JSON only).
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
    ours_range: tuple | None = None
    baseline_range: tuple | None = None
    decided_by: str = "median"
    ratio_by_round: list | None = None


@dataclass
class WorkloadResult:
    """What one workload measured: its parameters, every run's figures, and its rows."""

    name: str
    title: str
    parameters: dict
    measurements: dict
    rows: list = field(default_factory=list)

    def as_json(self):
        return {"title": self.title, "parameters": self.parameters, "measurements": self.measurements,
                "rows": [dataclasses.asdict(row) for row in self.rows]}


def spread(values, better="lower"):
    """``(median, best, worst)`` of a list of figures (``better`` says which end is best)."""
    values = [value for value in values if value is not None]
    if not values:
        return None, None, None
    low, high = min(values), max(values)
    best, worst = (low, high) if better == "lower" else (high, low)
    return statistics.median(values), best, worst


def _by_round(numerators, denominators):
    if len(numerators) != len(denominators) or not all(denominators):
        return None
    return [top / bottom for top, bottom in zip(numerators, denominators)]


def _verdict(ratio, minimum):
    return None if minimum is None or ratio is None else ratio >= minimum


def time_row(workload, measure, ours_runs, baseline_runs, baseline_name, minimum, note=""):
    """Seconds of each run of both sides; ratio = median(baseline) / median(ours), target >= ``minimum``x."""
    ours, ours_best, ours_worst = spread(ours_runs)
    base, base_best, base_worst = spread(baseline_runs)
    ratio = base / ours if ours and base is not None else None
    target = f">= {minimum:g}x" if minimum is not None else "-"
    return Row(workload, measure, "s", ours, base, baseline_name, ratio, target, _verdict(ratio, minimum),
               note, (ours_best, ours_worst), (base_best, base_worst) if base is not None else None,
               ratio_by_round=_by_round(baseline_runs, ours_runs) if base is not None else None)


def rate_row(workload, measure, unit, ours_runs, baseline_runs, baseline_name, minimum, note="", short=None):
    """Throughput of each run (bigger is better); ratio = median(ours) / median(baseline).

    ``short`` names the baseline in the target column (default: its name's first word).
    """
    ours, ours_best, ours_worst = spread(ours_runs, "higher")
    base, base_best, base_worst = spread(baseline_runs, "higher")
    ratio = ours / base if base else None
    short = short or baseline_name.split()[0]
    target = f">= {minimum:g}x {short}" if minimum is not None else "-"
    return Row(workload, measure, unit, ours, base, baseline_name, ratio, target, _verdict(ratio, minimum),
               note, (ours_best, ours_worst), (base_best, base_worst) if base is not None else None,
               ratio_by_round=_by_round(ours_runs, baseline_runs) if base is not None else None)


def count_row(workload, measure, ours_runs, baseline_runs, baseline_name, target="-", met_if=None, note=""):
    """Request counts of each run; ``met_if(ours_median, baseline_median)`` decides the target."""
    ours, ours_best, ours_worst = spread(ours_runs)
    base, base_best, base_worst = spread(baseline_runs)
    ratio = base / ours if ours and base is not None else None
    met = None if met_if is None else bool(met_if(ours, base))
    return Row(workload, measure, "requests", ours, base, baseline_name, ratio, target, met, note,
               (ours_best, ours_worst), (base_best, base_worst) if base is not None else None)


def ceiling_row(workload, measure, unit, runs, limit, note=""):
    """A ceiling (peak memory < ``limit``) that must hold in every run: decided by the worst."""
    median, best, worst = spread(runs)
    return Row(workload, measure, unit, median, None, "-", None, f"< {limit:g} {unit}", worst < limit, note,
               (best, worst), None, decided_by="worst run")


# --- the emulator in its own process -----------------------------------------------------------------

def child_env():
    """The environment of child processes: this tree first on PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


class EmulatorProcess:
    """``python -m astroquery_casda_ext.emulator --control`` serving ``data_dir``, in a child process.

    Parameters
    ----------
    data_dir : path-like
        Holdings and staged files (bulk products are generated there before it serves).
    bulk_count, bulk_size : int
        Extra products of ``bulk_size`` bytes (SBID 9001, ``obs_id = '9001'`` in ObsCore).
    job_phases : tuple of (str, float), optional
        Phases of every SODA job after RUN.
    latency : float
        Seconds added to every request (a client far from the archive).
    extra_args : sequence of str
        More options of ``python -m astroquery_casda_ext.emulator`` (e.g. for tap_scale.py).
    """

    def __init__(self, data_dir, *, bulk_count=0, bulk_size=5_000_000, job_phases=None, latency=0.0,
                 extra_args=(), startup_timeout=1800):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-u", "-m", "astroquery_casda_ext.emulator", "--port", "0", "--control",
                   "--data-dir", str(self.data_dir), "--bulk-count", str(bulk_count),
                   "--bulk-size", str(bulk_size), "--latency", str(latency)]
        if job_phases:
            command += ["--job-phases", ",".join(f"{name}={seconds:g}" for name, seconds in job_phases)]
        command += list(extra_args)
        self.stderr_path = self.data_dir.parent / f"{self.data_dir.name}.stderr"
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                        env=child_env())
        self.url = self.username = self.password = None
        lines = queue.Queue()
        # a thread reads the emulator's output, so the wait is bounded even if it hangs
        self._reader = threading.Thread(target=self._read, args=(lines,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + startup_timeout
        try:
            while not (self.url and self.username):
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise BenchmarkError(f"the emulator did not start within {startup_timeout} s") from None
                if not line:
                    raise BenchmarkError("the emulator exited: " + self.stderr_path.read_text()[-2000:])
                if match := re.search(r"serving (http://\S+)", line):
                    self.url = match.group(1)
                if match := re.search(r"username '([^']+)', password '([^']+)'", line):
                    self.username, self.password = match.groups()
        except BaseException:
            self.stop()
            raise

    def _read(self, lines):
        for line in self.process.stdout:
            lines.put(line)
        lines.put("")                        # its output ended: it exited

    @property
    def pid(self):
        return self.process.pid

    def log(self):
        """The request log (a list of dicts: method, path, query, user, status, bytes_sent)."""
        response = requests.get(self.url + "_emulator/log", timeout=60)
        response.raise_for_status()
        return response.json()

    def clear_log(self):
        """Forget the logged requests (jobs and tokens stay)."""
        requests.delete(self.url + "_emulator/log", timeout=60).raise_for_status()

    def reset(self):
        """No jobs, tokens or log entries: the state a run starts from."""
        requests.post(self.url + "_emulator/reset", timeout=60).raise_for_status()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the emulator stops cleanly on SIGTERM
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._reader.join(timeout=10)      # it ends at the emulator's end of output
        if self.process.stdout and not self._reader.is_alive():
            self.process.stdout.close()
        self._stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


_JOB_LOOK = re.compile(r"^/casda_data_access/data/async/[^/]+(/phase)?$")


def request_counts(log):
    """DataLink requests, SODA jobs created, job polls, downloads and all requests in ``log``.

    A poll is a GET of a job's document or of its ``/phase`` (following the 303 after a
    job is created counts too, for every client alike).
    """
    return {
        "datalink": sum(1 for entry in log if entry["path"].endswith("/datalink/links")),
        "jobs_created": sum(1 for entry in log if entry["method"] == "POST"
                            and entry["path"].rstrip("/") == "/casda_data_access/data/async"),
        "job_polls": sum(1 for entry in log if entry["method"] == "GET" and _JOB_LOOK.match(entry["path"])),
        "downloads": sum(1 for entry in log if entry["path"].startswith("/download/")),
        "errors": sum(1 for entry in log if entry["status"] >= 400 or entry["status"] == 0),
        "total": len(log),
        "bytes_sent": sum(entry["bytes_sent"] for entry in log),
    }


def datalink_limit(products):
    """The most DataLink requests the target allows for ``products`` products: ceil(N / 50)."""
    return math.ceil(products / 50)


# --- checksums -------------------------------------------------------------------------------------

def file_checksum(path, block=8 << 20):
    """CASDA's checksum line of a file (``crc32 sha1 size-in-hex``), computed with zlib and hashlib."""
    crc, sha1, size = 0, hashlib.sha1(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            crc = zlib.crc32(chunk, crc)
            sha1.update(chunk)
            size += len(chunk)
    return f"{crc:08x} {sha1.hexdigest()} {size:x}"


def verify_files(savedir, holdings_dir, names, *, renamed=None):
    """Check every downloaded file against the emulator's checksum of its source.

    Parameters
    ----------
    savedir : path-like
        Where the client saved the files.
    holdings_dir : path-like
        The emulator's data directory: ``NAME.checksum`` under it is the emulator's own record.
    names : iterable of str
        The product files the client had to download.  A ``.checksum`` sidecar saved next to
        one must equal the emulator's record too.
    renamed : dict, optional
        ``{saved name: product name}`` for a client that saved under another name (curl).

    Returns
    -------
    dict
        ``files_verified``, ``bytes_verified``, ``sidecars_verified`` and ``other_files``
        (anything else the client left in ``savedir``: a manifest, a lock file);
        raises `BenchmarkError` on any missing or wrong file.
    """
    savedir, holdings_dir = Path(savedir), Path(holdings_dir)
    saved = {path.name for path in savedir.iterdir() if path.is_file()}
    if renamed is None:
        # CASDA names staged files after their path in the archive (observations-SBID-kind-NAME)
        renamed = {}
        for name in names:
            found = sorted(item for item in saved if item == name or item.endswith("-" + name))
            renamed[found[0] if len(found) == 1 else name] = name
    records = {path.name: path for path in holdings_dir.rglob("*.checksum")}
    problems, total, sidecars = [], 0, 0
    for saved_name, product in sorted(renamed.items()):
        if saved_name not in saved:
            problems.append(f"missing {saved_name}")
            continue
        record = records[f"{product}.checksum"].read_text(encoding="ascii").strip()
        actual = file_checksum(savedir / saved_name)
        total += (savedir / saved_name).stat().st_size
        if actual != record:
            problems.append(f"{saved_name}: checksum {actual} != the emulator's {record}")
        if f"{saved_name}.checksum" in saved:
            sidecars += 1
            if (savedir / f"{saved_name}.checksum").read_text(encoding="ascii").strip() != record:
                problems.append(f"{saved_name}.checksum differs from the emulator's")
    if problems:
        raise BenchmarkError(f"downloads in {savedir} are wrong: " + "; ".join(problems[:10]))
    others = sorted(saved - set(renamed) - {f"{name}.checksum" for name in renamed})
    return {"files_verified": len(renamed), "bytes_verified": total, "sidecars_verified": sidecars,
            "other_files": others}


# --- client runs in child processes --------------------------------------------------------------------

def vmhwm_mb():
    """This process's peak resident memory (VmHWM), MB.

    Not ``ru_maxrss``: Linux carries a process's ``maxrss`` across ``execve``, and with
    ``vfork`` it takes in the parent's resident size, so a child started by a large
    benchmark process would report the parent's memory.  VmHWM belongs to the new image.
    """
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(target, params, *, cwd=None, timeout=3600):
    """Run ``target`` (``"module:function"``) once in a fresh interpreter; its figures as a dict."""
    command = [sys.executable, "-m", "benchmarks.harness", "child", target]
    try:  # the parameters (the emulator's test login among them) go by stdin, not the command line
        done = subprocess.run(command, input=json.dumps(params), capture_output=True, text=True, cwd=cwd,
                              env=child_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{target} took longer than {timeout} s") from None
    for line in reversed(done.stdout.splitlines()):
        if done.returncode == 0 and line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
    raise BenchmarkError(f"{target} failed (exit {done.returncode}): {tail}")


def run_process(command, *, cwd=None, timeout=3600):
    """Run ``command`` once, timed from the outside: start-up and exit count.

    Returns ``{"seconds": wall time, "cpu_seconds": the process's user + system CPU,
    "stdout": its output}``; a failure (or a run longer than ``timeout``) is a `BenchmarkError`.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=child_env(),
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{command[0]} took longer than {timeout} s") from None
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise BenchmarkError(f"{' '.join(map(str, command[:2]))} failed (exit {done.returncode}): {tail}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"seconds": seconds, "cpu_seconds": cpu, "stdout": done.stdout}


def child_main(target, params_json):
    """In the child: set up (untimed), run the work (timed), print the figures on one line."""
    module_name, function_name = target.split(":")
    prepare = getattr(importlib.import_module(module_name), function_name)
    params = json.loads(params_json)
    warnings.simplefilter("ignore")  # VOTable unit warnings and the like: the same for every side
    work = prepare(params)
    peak_before, cpu_before = vmhwm_mb(), _cpu_seconds()
    started = time.perf_counter()
    extra = work() or {}
    seconds = time.perf_counter() - started
    figures = {"seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu_before,
               "peak_rss_mb_before": peak_before, "peak_rss_mb": vmhwm_mb()}
    print(RESULT_MARK + json.dumps(figures | extra), flush=True)
    return 0


# --- repeats ---------------------------------------------------------------------------------------

def rotations(names, repeats):
    """The order of each round: ``names`` rotated by one more each round."""
    names = list(names)
    return [names[index % len(names):] + names[:index % len(names)] for index in range(repeats)]


def interleave(sides, repeats, label):
    """Run every side ``repeats`` times, interleaved, the order rotating each round.

    Parameters
    ----------
    sides : dict
        ``{name: run}``, where ``run()`` returns one run's figures (a dict with ``seconds``).
    repeats : int
    label : str
        Prefix of the progress lines.

    Returns
    -------
    dict
        ``{name: [figures of each run]}``; each run also records its round and position.
    """
    runs = {name: [] for name in sides}
    for round_index, order in enumerate(rotations(sides, repeats)):
        for position, name in enumerate(order):
            figures = sides[name]()
            # the load when the run ended: a busy machine shows here (see README, machine noise)
            figures.update(round=round_index, position=position, load_average_1min=os.getloadavg()[0])
            runs[name].append(figures)
            say(f"{label} {name}, run {round_index + 1}/{repeats}: {figures['seconds']:.2f} s")
    return runs


def figures_of(runs, key):
    """``[run[key] for run in runs]`` for a key that may be nested with dots (``requests.datalink``)."""
    values = []
    for run in runs:
        value = run
        for part in key.split("."):
            value = value[part]
        values.append(value)
    return values


@contextlib.contextmanager
def scratch(path):
    """A fresh directory at ``path``, removed afterwards."""
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "child":
        sys.exit("usage: python -m benchmarks.harness child MODULE:FUNCTION < PARAMS_JSON "
                 "(a child process of python -m benchmarks)")
    sys.exit(child_main(sys.argv[2], sys.stdin.read()))
