"""W8: start-up of the ``casda`` command line (issue 19): ``casda --help`` within 0.3 s.

Each run is a fresh interpreter (``python -m astroquery_casda_ext.cli ...``), as a shell user
starts it; the baseline, interleaved with it, is the bare interpreter (``python -c pass``), so
the figures show what the package adds on this machine.  The target is the median of ours.
"""
import subprocess
import sys
import time

from . import harness
from .harness import Row, WorkloadResult

#: What is timed: the top-level help, and one subcommand's.
COMMANDS = {"casda --help": ["--help"], "casda cutouts --help": ["cutouts", "--help"]}
#: The longest median start-up allowed for a help text, seconds.
LIMIT = 0.3


def _timed(argv):
    started = time.perf_counter()
    done = subprocess.run(argv, env=harness.child_env(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise harness.BenchmarkError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-300:]}")
    return {"seconds": seconds}


def run_w8(scale, workdir):
    """W8: median start-up of ``casda --help`` and ``casda cutouts --help``, and of ``python -c pass``."""
    repeats = max(5, scale.repeats * 3)
    sides = {"python": lambda: _timed([sys.executable, "-c", "pass"])}
    for name, args in COMMANDS.items():
        sides[name] = (lambda _args=args: _timed([sys.executable, "-m", "astroquery_casda_ext.cli", *_args]))
    runs = harness.interleave(sides, repeats, "W8")
    rows = []
    bare = harness.figures_of(runs["python"], "seconds")
    for name in COMMANDS:
        ours = harness.figures_of(runs[name], "seconds")
        median, best, worst = harness.spread(ours)
        base, base_best, base_worst = harness.spread(bare)
        rows.append(Row("W8", f"{name}: start-up", "s", median, base,
                        "python -c pass (the interpreter alone)",
                        base / median if median else None, f"<= {LIMIT:g} s", median <= LIMIT,
                        "a fresh interpreter each run; the load average of each run is in the JSON",
                        (best, worst), (base_best, base_worst)))
    parameters = {"repeats": repeats, "commands": {name: ["python", "-m", "astroquery_casda_ext.cli", *args]
                                                   for name, args in COMMANDS.items()}}
    return WorkloadResult("W8", "command-line start-up", parameters, runs, rows)
