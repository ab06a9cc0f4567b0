"""Smoke test of the benchmark harness: ``python -m benchmarks --quick`` must keep working.

It runs every workload at tiny sizes (3 products of 100 kB, 5 positions, a 5 MB file,
2 000 rows) and checks the JSON it writes and the request-count invariants that do not
depend on timing.  Times are never asserted: they are noise at these sizes.
"""
import json
import math
import numbers

import pytest

from benchmarks.__main__ import main
from benchmarks.workloads import QUICK, W2_SBIDS


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The JSON document and printed table of one quick run of all workloads."""
    directory = tmp_path_factory.mktemp("bench")
    output = directory / "latest.json"
    capture = pytest.MonkeyPatch()
    printed = []
    capture.setattr("builtins.print", lambda *args, **kwargs: printed.append(" ".join(map(str, args))))
    try:
        status = main(["--quick", "--output", str(output), "--workdir", str(directory)])
    finally:
        capture.undo()
    return status, json.loads(output.read_text()), "\n".join(printed)


def is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_run_reports_all_five_workloads(quick_run):
    status, document, printed = quick_run
    assert status == 0
    assert document["scale"] == "quick"
    assert list(document["workloads"]) == ["W1", "W2", "W3", "W4", "W5"]
    for name in ("W1", "W2", "W3", "W4", "W5"):
        assert f"\n{name} " in printed, f"{name} missing from the printed table"


def test_every_row_has_numbers_and_a_verdict_where_there_is_a_target(quick_run):
    _status, document, _printed = quick_run
    for name, workload in document["workloads"].items():
        assert workload["rows"], f"{name} has no rows"
        for row in workload["rows"]:
            assert is_number(row["ours"]), (name, row)
            if row["baseline"] is not None:
                assert is_number(row["baseline"]) and is_number(row["ratio"]), (name, row)
            if row["target"] == "-":
                assert row["met"] is None, (name, row)
            else:
                assert isinstance(row["met"], bool), (name, row)


def test_timings_of_the_clients_are_recorded(quick_run):
    _status, document, _printed = quick_run
    workloads = document["workloads"]
    for name in ("W1", "W2"):
        runs = workloads[name]["measurements"]
        assert is_number(runs["ours"]["seconds"])
        baseline = runs[f"astroquery_poll_{QUICK.poll_interval:g}s"]
        assert is_number(baseline["seconds"]) and is_number(baseline["estimated_seconds_at_20s"])
    assert is_number(workloads["W3"]["measurements"]["ours_mb_per_s"])
    assert is_number(workloads["W3"]["measurements"]["peak_rss_mb"])
    assert set(workloads["W5"]["measurements"]["runs"]) >= {"ours", "pyvo"}


def test_our_cutouts_use_one_job_and_astroquery_one_per_position(quick_run):
    _status, document, _printed = quick_run
    runs = document["workloads"]["W2"]["measurements"]
    assert runs["ours"]["requests"]["jobs_created"] == 1
    baseline = runs[f"astroquery_poll_{QUICK.poll_interval:g}s"]
    assert baseline["requests"]["jobs_created"] == QUICK.positions


def test_datalink_requests_stay_within_one_per_fifty_products(quick_run):
    _status, document, _printed = quick_run
    counts = document["workloads"]["W4"]["measurements"]
    for name, products, astroquery_datalink in (("W1", QUICK.products, QUICK.products),
                                                ("W2", len(W2_SBIDS), QUICK.positions * len(W2_SBIDS))):
        assert counts[name]["products"] == products
        assert 1 <= counts[name]["ours"]["datalink"] <= math.ceil(products / 50)
        # astroquery.casda asks DataLink once per product per call: the log counts it that way.
        assert counts[name]["astroquery"]["datalink"] == astroquery_datalink
