"""Benchmarks of astroquery_casda_ext against astroquery.casda, pyvo and curl.

Run them all with ``python -m benchmarks`` (``--quick`` for small sizes, ``--only W1,W3``
to select workloads); see ``benchmarks/README.md``.  Every workload runs against the
local CASDA emulator, with our client and the baseline side by side in the same run, and
reports ratios, since absolute times depend on the machine.

Modules: `benchmarks.workloads` (the five workloads and what they measure),
``benchmarks.__main__`` (command line, table, JSON), and the download helpers'
``download_bench`` and ``emulator_download`` scripts, which W3 reuses.
"""
