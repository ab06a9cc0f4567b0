"""Benchmarks of astroquery_casda_ext against astroquery.casda, pyvo and curl.

Run them with ``python -m benchmarks`` (``--quick`` for small sizes, ``--only W1,W3`` to
select workloads, ``--repeats N``); see ``benchmarks/README.md`` for how to read them.
Every workload runs against the local CASDA emulator in its own process, each client run
in a child process, ours and the baseline interleaved in the same run; medians decide.

Modules: `benchmarks.harness` (how everything is measured), `benchmarks.workloads` (W1-W4,
W7), ``benchmarks.tap_scale`` (W5, W6), ``benchmarks.__main__`` (command line, table, JSON).
"""
