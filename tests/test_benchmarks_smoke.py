"""Smoke test of the benchmark harness: what ``python -m benchmarks`` reports must be what it measured.

One quick W1 run (3 products of 100 kB, 3 interleaved runs of each side, each in its own
process, the emulator in another) is checked for its table and its JSON: every run is
there, each file was checked by checksum, the medians are what the rows show and the
verdicts follow from them.  The harness's rules (rotation, median, worst-run ceilings,
checksums rather than sizes) are checked on figures given to it.  Times are never
asserted: they are noise at these sizes.
"""
import json
import math
import statistics
import sys

import pytest

from benchmarks import harness
from benchmarks.__main__ import main
from benchmarks.workloads import QUICK

#: ~70 s of benchmark runs: started first under pytest-xdist (see conftest.py).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_w1(tmp_path_factory):
    """The status, JSON document and printed text of one quick run of W1."""
    directory = tmp_path_factory.mktemp("bench")
    output = directory / "latest.json"
    capture = pytest.MonkeyPatch()
    printed = []
    capture.setattr("builtins.print", lambda *args, **kwargs: printed.append(" ".join(map(str, args))))
    try:
        status = main(["--quick", "--only", "W1", "--repeats", "3", "--output", str(output),
                       "--workdir", str(directory)])
    finally:
        capture.undo()
    return status, json.loads(output.read_text()), "\n".join(printed)


def test_the_table_prints_the_medians_of_the_runs_in_the_json(quick_w1):
    status, document, printed = quick_w1
    assert status == 0 and document["scale"] == "quick" and document["repeats"] == 3
    w1 = document["workloads"]["W1"]
    runs = w1["measurements"][f"N={QUICK.w1_files[0]}"]
    astroquery = f"astroquery_poll_{QUICK.poll_interval:g}s"
    assert set(runs) == {"ours", astroquery}
    time_row = w1["rows"][0]
    for side, median, spread in (("ours", time_row["ours"], time_row["ours_range"]),
                                 (astroquery, time_row["baseline"], time_row["baseline_range"])):
        seconds = [run["seconds"] for run in runs[side]]
        assert len(seconds) == 3
        assert median == statistics.median(seconds)
        assert spread == [min(seconds), max(seconds)]
        assert f"{median:,.2f} s [{min(seconds):,.2f}, {max(seconds):,.2f}]" in printed
    assert time_row["ratio"] == pytest.approx(time_row["baseline"] / time_row["ours"])
    assert time_row["met"] == (time_row["ratio"] >= 1.0)
    by_round = [theirs["seconds"] / ours["seconds"] for ours, theirs in zip(runs["ours"], runs[astroquery])]
    assert time_row["ratio_by_round"] == pytest.approx(by_round)
    assert "\nW1 " in printed and "astroquery.casda, POLL_INTERVAL=" in printed


def test_every_run_is_recorded_in_rotating_order_with_its_files_checked(quick_w1):
    _status, document, _printed = quick_w1
    runs = document["workloads"]["W1"]["measurements"][f"N={QUICK.w1_files[0]}"]
    products = QUICK.w1_files[0]
    for side, side_runs in runs.items():
        assert [run["round"] for run in side_runs] == [0, 1, 2]
        for run in side_runs:
            assert run["files_verified"] == products, side
            assert run["bytes_verified"] == products * QUICK.product_size, side
            assert run["sidecars_verified"] == products, side
            assert run["peak_rss_mb"] > 0 and math.isfinite(run["seconds"])
    # two sides: ours first, then astroquery first, then ours first
    assert [run["position"] for run in runs["ours"]] == [0, 1, 0]


def test_request_counts_come_from_the_emulator_log(quick_w1):
    _status, document, _printed = quick_w1
    w1 = document["workloads"]["W1"]
    runs = w1["measurements"][f"N={QUICK.w1_files[0]}"]
    products = QUICK.w1_files[0]
    for run in runs["ours"]:
        assert run["requests"]["datalink"] <= math.ceil(products / 50)
        assert run["requests"]["jobs_created"] == 1
        assert run["requests"]["downloads"] == 2 * products      # each file and its .checksum
    for run in runs[f"astroquery_poll_{QUICK.poll_interval:g}s"]:
        assert run["requests"]["datalink"] == products             # astroquery asks once per product
    polls_row = w1["rows"][1]
    assert polls_row["measure"].startswith("job polls")
    assert polls_row["met"] == (polls_row["ours"] < polls_row["baseline"])


def test_a_target_is_decided_by_the_median_not_the_best_run():
    # ours: one lucky run at 1 s, the median at 4 s; the baseline 3 s every time
    row = harness.time_row("Wx", "m", [1.0, 4.0, 5.0], [3.0, 3.0, 3.0], "base", 1.0)
    assert (row.ours, row.ours_range, row.ratio, row.met) == (4.0, (1.0, 5.0), 0.75, False)
    row = harness.time_row("Wx", "m", [2.0, 2.5, 9.0], [3.0, 3.0, 3.0], "base", 1.0)  # one bad run
    assert (row.ours, row.met) == (2.5, True)
    rate = harness.rate_row("Wx", "m", "MB/s", [100.0, 500.0, 90.0], [200.0, 210.0, 190.0], "curl", 0.8)
    assert (rate.ours, rate.ours_range, rate.met) == (100.0, (500.0, 90.0), False)
    # a ceiling must hold in every run
    memory = harness.ceiling_row("Wx", "peak", "MB", [150.0, 160.0, 230.0], 200)
    assert (memory.ours, memory.met, memory.decided_by) == (160.0, False, "worst run")


def test_sides_take_turns_at_going_first():
    assert harness.rotations(["a", "b", "c"], 4) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                    ["a", "b", "c"]]
    order = []
    runs = harness.interleave({name: (lambda n=name: order.append(n) or {"seconds": 0.0}) for name in "ab"},
                              3, "test")
    assert order == ["a", "b", "b", "a", "a", "b"] and [len(found) for found in runs.values()] == [3, 3]


def test_downloads_are_checked_by_checksum_not_by_size(tmp_path):
    holdings, saved = tmp_path / "holdings" / "9001", tmp_path / "saved"
    holdings.mkdir(parents=True)
    saved.mkdir()
    # CASDA's own example (astroquery_casda_ext/checksum.py): the 9 bytes "blah blah"
    record = "f412535a 135a1e01bae742c4a576b20fd41a683f6483ca43 9"
    (holdings / "x.fits.checksum").write_text(record)
    (saved / "observations-9001-x.fits").write_bytes(b"blah blah")
    (saved / "observations-9001-x.fits.checksum").write_text(record)
    assert harness.verify_files(saved, tmp_path, ["x.fits"]) == {
        "files_verified": 1, "bytes_verified": 9, "sidecars_verified": 1, "other_files": []}
    (saved / "observations-9001-x.fits.checksum").write_text(record.replace("f412", "0412"))
    with pytest.raises(harness.BenchmarkError, match="x.fits.checksum differs"):
        harness.verify_files(saved, tmp_path, ["x.fits"])
    (saved / "observations-9001-x.fits.checksum").write_text(record)
    (saved / "observations-9001-x.fits").write_bytes(b"blah blaH")      # same size, other bytes
    with pytest.raises(harness.BenchmarkError, match="checksum"):
        harness.verify_files(saved, tmp_path, ["x.fits"])
    (saved / "observations-9001-x.fits").unlink()
    with pytest.raises(harness.BenchmarkError, match="missing"):
        harness.verify_files(saved, tmp_path, ["x.fits"])


def test_w5_and_w6_say_where_they_live_when_tap_scale_is_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "benchmarks.tap_scale", None)   # as if the file were not there
    with pytest.raises(SystemExit, match="tap_scale.py"):
        main(["--quick", "--only", "W5", "--output", str(tmp_path / "x.json")])


def test_a_failing_workload_is_reported_and_fails_the_run(monkeypatch, tmp_path):
    def broken(scale, workdir):
        raise harness.BenchmarkError("downloads in x are wrong: y.fits: checksum a != the emulator's b")

    monkeypatch.setattr("benchmarks.workloads.run_w3", broken)
    printed = []
    monkeypatch.setattr("builtins.print", lambda *args, **kwargs: printed.append(" ".join(map(str, args))))
    status = main(["--quick", "--only", "W3", "--output", str(tmp_path / "x.json"),
                   "--workdir", str(tmp_path)])
    document = json.loads((tmp_path / "x.json").read_text())
    assert status == 1
    assert "checksum a != the emulator's b" in document["workloads"]["W3"]["measurements"]["error"]
    assert any(line.startswith("FAILED: W3") for line in printed)


def test_w5_and_w6_run_through_python_m_benchmarks(tmp_path):
    """The catalogue-scale workloads (tap_scale.py) run end to end at quick sizes: every row is
    decided, the partitioned run resumed after its SIGKILL and matched the reference."""
    output = tmp_path / "tap.json"
    status = main(["--quick", "--only", "W5,W6", "--output", str(output), "--workdir", str(tmp_path)])
    document = json.loads(output.read_text())
    assert status in (0, 1)     # 1 = a target missed (times at these sizes are noise), never a crash
    for name in ("W5", "W6"):
        workload = document["workloads"][name]
        assert workload["title"] != "failed", workload["measurements"].get("traceback")
        assert all(row["met"] is not None for row in workload["rows"] if row["target"] != "-"), name
    resumed = [row for row in document["workloads"]["W6"]["rows"] if row["measure"].endswith("resumed run")]
    assert resumed and resumed[0]["met"] is True     # rows and column checksums equal the reference


def test_w3_times_four_sides_as_fresh_processes_and_checks_every_file(tmp_path):
    """Quick W3: ours, the bare verifying loop, curl, curl then sha1sum, each run checked by
    checksum; the rows' medians and ratios are the runs'; our peak memory is every run's."""
    output = tmp_path / "w3.json"
    status = main(["--quick", "--only", "W3", "--output", str(output), "--workdir", str(tmp_path)])
    assert status in (0, 1)     # 1 = a target missed (at 5 MB start-up decides), never a crash
    w3 = json.loads(output.read_text())["workloads"]["W3"]
    assert w3["title"] != "failed", w3["measurements"].get("traceback")
    runs = w3["measurements"]
    assert {"ours", "floor"} <= set(runs) and set(runs) <= {"ours", "floor", "curl", "curl_sha1sum"}
    for side, side_runs in runs.items():
        assert len(side_runs) == QUICK.big_repeats
        for run in side_runs:
            assert (run["files_verified"], run["bytes_verified"]) == (1, QUICK.big_size), side
            assert run["seconds"] > 0
            assert run["mb_per_s"] == pytest.approx(QUICK.big_size / 1e6 / run["seconds"])
    assert all(run["sidecars_verified"] == 1 and run["peak_rss_mb"] > 0 for run in runs["ours"])
    versus_loop, versus_shell = w3["rows"][:2]
    assert versus_loop["target"] == ">= 0.8x bare loop"
    medians = {side: statistics.median(run["mb_per_s"] for run in runs[side]) for side in ("ours", "floor")}
    assert versus_loop["ratio"] == pytest.approx(medians["ours"] / medians["floor"])
    if "curl_sha1sum" in runs:
        assert versus_shell["target"] == ">= 1.2x curl then sha1sum"
    memory = w3["rows"][-1]
    assert memory["ours_range"][1] == max(run["peak_rss_mb"] for run in runs["ours"])


@pytest.mark.parametrize("text, size", [("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29),
                                        ("4096", 4096)])
def test_w3_sizes_are_binary(text, size):
    from benchmarks.__main__ import binary_size
    assert binary_size(text) == size


def test_a_smaller_w3_file_runs_the_repeats_asked_for():
    from benchmarks.workloads import FULL, W3_FULL_SIZE
    assert FULL.big_size == W3_FULL_SIZE == 2 << 30
    assert FULL.with_repeats(3).big_repeats == 5                   # 2 GiB: at least 5 runs
    assert FULL.with_repeats(3).with_big_size(512 << 20).big_repeats == 3
