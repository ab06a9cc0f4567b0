"""``python -m benchmarks``: run the workloads, print the table, save the JSON.

Usage::

    python -m benchmarks                     # every workload at full scale (see README for the time)
    python -m benchmarks --quick             # small sizes (minutes on a busy machine)
    python -m benchmarks --only W1,W3        # some workloads (W4 counts the W1, W2, W7 runs of this run)
    python -m benchmarks --repeats 5         # runs of each side (default 3; W3: at least 5 at full scale)
    python -m benchmarks --output out.json   # JSON elsewhere than benchmarks/results/latest.json
    python -m benchmarks --only W3 --w3-size 512M --repeats 3   # W3 with a smaller file
"""
import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import workloads

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
ALL = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8")
#: Workloads of ``benchmarks/tap_scale.py`` (catalogue-scale TAP), imported only when selected.
TAP_SCALE = ("W5", "W6")
#: W4 reads the request counts of these workloads' runs.
COUNTED = ("W1", "W2", "W7")
COLUMNS = (("workload", 8), ("measure", 40), ("ours: median [best, worst]", 30),
           ("baseline: median [best, worst]", 30), ("baseline is", 46), ("ratio", 8), ("target", 24),
           ("met", 3))


def parse_only(text):
    """``"w1, W3"`` -> ``("W1", "W3")``; unknown names are an argparse error."""
    names = tuple(dict.fromkeys(part.strip().upper() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in ALL]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(ALL)}; got {text!r}")
    return names


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs at least 1, got {text}")
    return value


def binary_size(text):
    """``"512M"`` -> 536 870 912: bytes, with binary suffixes K, M, G (KiB, MiB, GiB)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(value[-1:], 1)
    try:
        size = int(float(value[:-1] if factor > 1 else value) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M or 2G)") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"needs at least 1 byte, got {text}")
    return size


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a few files of 100 kB, 3 positions, a 5 MB file, 2 000 rows")
    parser.add_argument("--only", type=parse_only, default=ALL, metavar="W1,W3",
                        help="comma-separated workloads to run (default: all)")
    parser.add_argument("--repeats", type=positive, default=None,
                        help="interleaved runs of each side (default 3; fewer than 3 decides nothing)")
    parser.add_argument("--w3-size", type=binary_size, default=None, metavar="SIZE",
                        help="W3's file (K/M/G are KiB/MiB/GiB; default 2G, 5M with --quick); below 2G "
                             "W3 runs --repeats times instead of at least 5")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file (default {RESULTS})")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    return parser


def tap_scale_module():
    """``benchmarks.tap_scale`` (W5, W6), or a `SystemExit` saying why it cannot be run."""
    try:
        return importlib.import_module("benchmarks.tap_scale")
    except ModuleNotFoundError as error:
        if error.name != "benchmarks.tap_scale":
            raise
        raise SystemExit("python -m benchmarks: W5 and W6 are in benchmarks/tap_scale.py (catalogue-scale "
                         "TAP, issue 11), which this tree does not have yet; run the others with "
                         "--only W1,W2,W3,W4,W7") from None


def failed(name, error):
    """The result of a workload that could not finish: its error, in the table and the JSON."""
    message = f"{type(error).__name__}: {error}"
    row = workloads.Row(name, "FAILED (see note)", "", None, None, "-", None, "-", None, message[:2000])
    return workloads.WorkloadResult(name, "failed", {}, {"error": message, "traceback":
                                                         traceback.format_exc()}, [row])


def run_workloads(selected, scale, workdir, progress=None):
    """Run the selected workloads; {name: WorkloadResult} in W1..W7 order.

    A workload that fails is reported as failed and the others still run; ``progress(results)``
    is called after each one (the JSON is saved there, so an interrupted run keeps what it has).
    """
    tap_scale = tap_scale_module() if set(TAP_SCALE) & set(selected) else None
    counted = COUNTED if selected == ("W4",) else tuple(name for name in COUNTED if name in selected)
    from .cli_startup import run_w8
    runners = {"W1": workloads.run_w1, "W2": workloads.run_w2, "W7": workloads.run_w7, "W3": workloads.run_w3,
               "W8": run_w8}
    for name in TAP_SCALE:
        runners[name] = (lambda scale_, workdir_, _name=name: getattr(tap_scale, f"run_{_name.lower()}")(
            scale_, workdir_))
    results = {}
    for name in ("W1", "W2", "W7", "W4", "W3", "W5", "W6", "W8"):
        if name not in selected and not (name in counted and "W4" in selected):
            continue
        try:
            if name == "W4":
                usable = {key: value for key, value in results.items() if value.title != "failed"}
                results[name] = workloads.run_w4(scale, usable)
            else:
                results[name] = runners[name](scale, workdir)
        except Exception as error:  # noqa: BLE001 - one broken workload must not lose the others
            print(f"  {name} failed: {type(error).__name__}: {error}", flush=True)
            results[name] = failed(name, error)
        if progress is not None:
            progress({key: results[key] for key in ALL if key in results})
    return {name: results[name] for name in ALL if name in results}


def environment():
    """What the figures were measured on (load average included: a busy machine shows there)."""
    import astropy
    import astroquery
    import pyvo
    import requests

    import astroquery_casda_ext
    curl = None
    if shutil.which("curl"):
        curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False).stdout
        curl = curl.split("\n")[0]
    return {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "astroquery_casda_ext": astroquery_casda_ext.__version__, "astroquery": astroquery.__version__,
            "pyvo": pyvo.__version__, "astropy": astropy.__version__, "requests": requests.__version__,
            "curl": curl}


def _number(value):
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 10):
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"


def _figure(value, spread, unit):
    if value is None:
        return "-"
    text = _number(value) + ("" if unit in ("requests", "jobs") else f" {unit}")
    if spread and None not in spread:
        text += f" [{_number(spread[0])}, {_number(spread[1])}]"
    return text


def format_table(results):
    """The results as a fixed-width text table (one line per row), with notes below."""
    lines = ["  ".join(name.ljust(width) for name, width in COLUMNS)]
    lines.append("  ".join("-" * width for _name, width in COLUMNS))
    notes = []
    for result in results.values():
        for row in result.rows:
            met = "-" if row.met is None else _number(row.met)
            cells = (row.workload, row.measure, _figure(row.ours, row.ours_range, row.unit),
                     _figure(row.baseline, row.baseline_range, row.unit), row.baseline_name,
                     "-" if row.ratio is None else f"{row.ratio:.2f}x", row.target, met)
            lines.append("  ".join(str(cell).ljust(width) for cell, (_n, width) in zip(cells, COLUMNS)))
            if row.note or getattr(row, "decided_by", "median") != "median":
                decided = getattr(row, "decided_by", "median")
                note = "; ".join(filter(None, [row.note, f"decided by the {decided}" if decided != "median"
                                               else ""]))
                notes.append(f"{row.workload} {row.measure} vs {row.baseline_name}: {note}")
    return "\n".join(lines + [""] + [f"  * {note}" for note in notes])


def save(results, args, scale, seconds, output):
    document = {"scale": scale.name, "selected": list(args.only), "repeats": scale.repeats,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "elapsed_seconds": seconds, "environment": environment(),
                "sizes": dataclasses.asdict(scale),
                "workloads": {name: result.as_json() for name, result in results.items()}}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return document


def main(argv=None):
    args = build_parser().parse_args(argv)
    scale = workloads.QUICK if args.quick else workloads.FULL
    if args.repeats is not None:
        scale = scale.with_repeats(args.repeats)
    if args.w3_size is not None:
        scale = scale.with_big_size(args.w3_size)
    if set(TAP_SCALE) & set(args.only):
        tap_scale_module()        # fail before anything runs, not after the other workloads
    print(f"benchmarks ({scale.name} scale, {scale.repeats} runs of each side): {', '.join(args.only)}",
          flush=True)
    if scale.repeats < 3:
        print("  fewer than 3 runs of each side: the verdicts below are not worth much", flush=True)
    started = time.perf_counter()

    def progress(results):
        save(results, args, scale, time.perf_counter() - started, args.output)

    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="casda-bench-", dir=args.workdir))
        results = run_workloads(args.only, scale, Path(scratch), progress)
    elapsed = time.perf_counter() - started
    print()
    print(format_table(results))
    save(results, args, scale, elapsed, args.output)
    print(f"\n{elapsed:.0f} s in all; saved {args.output}")
    broken = [name for name, result in results.items() if result.title == "failed"]
    if broken:
        print(f"FAILED: {', '.join(broken)} (the error is in the notes above and in the JSON)")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
