"""``python -m benchmarks``: run the workloads, print the table, save the JSON.

Usage::

    python -m benchmarks                     # every workload at full scale (several minutes)
    python -m benchmarks --quick             # small sizes, seconds (what the smoke test runs)
    python -m benchmarks --only W1,W3        # some workloads (W4 needs W1 and W2: they run too)
    python -m benchmarks --output out.json   # JSON elsewhere than benchmarks/results/latest.json
"""
import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import workloads

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
ALL = ("W1", "W2", "W3", "W4", "W5")
COLUMNS = (("workload", 8), ("measure", 38), ("ours", 12), ("baseline", 12), ("baseline is", 37),
           ("ratio", 8), ("target", 24), ("met", 3))


def parse_only(text):
    """``"w1, W3"`` -> ``("W1", "W3")``; unknown names are an argparse error."""
    names = tuple(dict.fromkeys(part.strip().upper() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in ALL]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(ALL)}; got {text!r}")
    return names


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: 3 products of 100 kB, 5 positions, a 5 MB file, 2 000 rows")
    parser.add_argument("--only", type=parse_only, default=ALL, metavar="W1,W3",
                        help="comma-separated workloads to run (default: all)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file (default {RESULTS})")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    return parser


def run_workloads(selected, scale, workdir):
    """Run the selected workloads; {name: WorkloadResult} in W1..W5 order."""
    results = {}
    needs_access = {"W1", "W2", "W4"} & set(selected)
    if needs_access:
        with workloads.access_emulator(scale, workdir) as emulator:
            if {"W1", "W4"} & set(selected):
                results["W1"] = workloads.run_w1(scale, workdir, emulator)
            if {"W2", "W4"} & set(selected):
                results["W2"] = workloads.run_w2(scale, workdir, emulator)
        if "W4" in selected:
            results["W4"] = workloads.run_w4(scale, results["W1"], results["W2"])
    if "W3" in selected:
        results["W3"] = workloads.run_w3(scale, workdir)
    if "W5" in selected:
        results["W5"] = workloads.run_w5(scale, workdir)
    return {name: results[name] for name in ALL if name in results}


def environment():
    """What the figures were measured on."""
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
            "astroquery_casda_ext": astroquery_casda_ext.__version__, "astroquery": astroquery.__version__,
            "pyvo": pyvo.__version__, "astropy": astropy.__version__, "requests": requests.__version__,
            "curl": curl}


def _cell(value, unit=""):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if unit in ("requests", "jobs") or (isinstance(value, int)):
        return f"{value:,}"
    return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"


def format_table(results):
    """The results as a fixed-width text table (one line per row), with notes below."""
    lines = ["  ".join(name.ljust(width) for name, width in COLUMNS)]
    lines.append("  ".join("-" * width for _name, width in COLUMNS))
    notes = []
    for result in results.values():
        for row in result.rows:
            unit = f" {row.unit}" if row.unit not in ("requests", "jobs") else ""
            cells = (row.workload, row.measure, _cell(row.ours, row.unit) + unit,
                     _cell(row.baseline, row.unit) + (unit if row.baseline is not None else ""),
                     row.baseline_name, _cell(row.ratio) + ("x" if row.ratio is not None else ""),
                     row.target, _cell(row.met))
            lines.append("  ".join(str(cell).ljust(width) for cell, (_n, width) in zip(cells, COLUMNS)))
            if row.note:
                notes.append(f"{row.workload} {row.measure} vs {row.baseline_name}: {row.note}")
    return "\n".join(lines + [""] + [f"  * {note}" for note in notes])


def save(results, args, scale, seconds, output):
    document = {"scale": scale.name, "selected": list(args.only),
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
    print(f"benchmarks ({scale.name} scale): {', '.join(args.only)}", flush=True)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="casda-bench-", dir=args.workdir))
        stack.enter_context(workloads.quiet_log())
        results = run_workloads(args.only, scale, Path(scratch))
    elapsed = time.perf_counter() - started
    print()
    print(format_table(results))
    save(results, args, scale, elapsed, args.output)
    print(f"\n{elapsed:.0f} s in all; saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
