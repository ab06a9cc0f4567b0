"""Reruns keyed on the whole request, per command (issue 19).

Twice the same request is once: the same files, the same manifest rows and no new job in
the emulator's request log.  A changed size, window or request gives the new data under
other names, and the manifest holds no row of the earlier request.  Real HTTP against the
emulator; `cli.main` runs in this process.
"""
import json
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.table import Table

from astroquery_casda_ext import cli
from astroquery_casda_ext.download import MANIFEST_NAME
from astroquery_casda_ext.emulator.holdings import spectral_line_source

FAST_POLL = ("--poll-interval", "0.2")


@pytest.fixture
def run(casda_cli):
    """``casda ARGS`` in this process (conftest's ``casda_cli``)."""
    return casda_cli


def jobs_created(emulator):
    """SODA jobs created so far (POSTs to .../data/async)."""
    return sum(1 for entry in emulator.request_log
               if entry.method == "POST" and entry.path.endswith("/data/async"))


def files(dest):
    """name -> bytes of every file in ``dest`` but the manifest."""
    return {p.name: p.read_bytes() for p in sorted(Path(dest).iterdir()) if p.name != MANIFEST_NAME}


def rows(dest):
    table = Table.read(Path(dest) / MANIFEST_NAME, format="ascii.ecsv")
    keep = [name for name in ("product_id", "kind", "path", "size", "checksum_status", "service", "source",
                              "region", "window", "pol") if name in table.colnames]
    return [tuple(str(row[name]) for name in keep) for row in table]


def twice(run, emulator, dest, *args):
    """Run a command twice into ``dest``; assert the second changed nothing and started no job."""
    first = run(*args, *FAST_POLL)
    assert first.returncode == 0, first.stderr
    before, manifest_rows, jobs = files(dest), rows(dest), jobs_created(emulator)
    second = run(*args, *FAST_POLL)
    assert second.returncode == 0, second.stderr
    assert files(dest) == before and rows(dest) == manifest_rows
    assert jobs_created(emulator) == jobs, "a rerun of the same request started a job"
    return first, second


def line_sources(tmp_path, emulator, *extra):
    line = spectral_line_source(609, emulator.holdings.config)
    path = tmp_path / "sources.txt"
    path.write_text("\n".join([f"{line['ra']} {line['dec']}", *extra]) + "\n")
    return path, line


# --- twice the same request = once ------------------------------------------------------------------

def test_sources_twice_is_once(tmp_path, emulator, run):
    path = tmp_path / "list.txt"
    path.write_text("187.66611477 -45.06210196\n187.5 -45.0\n")
    twice(run, emulator, tmp_path / "o", "sources", "cube-1001", path, tmp_path / "o",
          "--cutout-radius", "0.02")


def test_images_twice_is_once(tmp_path, emulator, run):
    twice(run, emulator, tmp_path / "o", "images", "187.5", "-45.0", tmp_path / "o", "--radius", "0.05",
          "--cutout-radius", "0.02")


def test_slice_twice_is_once_with_names_from_the_request(tmp_path, emulator, run):
    dest = tmp_path / "o"
    twice(run, emulator, dest, "slice", "609", "8", dest)
    names = sorted(n for n in files(dest) if n.endswith(".fits"))
    assert names == sorted(["cube-1004_CHANNEL_1_8.fits", "cube-1004_CHANNEL_9_16.fits",
                            "cube-1004_CHANNEL_17_24.fits", "cube-1004_CHANNEL_25_32.fits"])
    assert [fits.getheader(dest / name)["NAXIS3"] for name in names] == [8, 8, 8, 8]


@pytest.mark.parametrize("command", [
    ("stage", "cube-1002", "--dest", "DEST"),
    ("images", "22:15:36", "-45:50:24", "DEST", "--collection", "racs", "--subtype", "cont.noise.t0",
     "--full-files"),
    ("cutouts", "609", "DEST", "--full-files"),
])
def test_whole_files_twice_stage_once(tmp_path, emulator, run, command):
    dest = tmp_path / "whole"
    first, second = twice(run, emulator, dest, *[dest if arg == "DEST" else arg for arg in command])
    assert "nothing to ask CASDA" in second.stderr
    assert [row[5] for row in rows(dest)] == ["stage"] * len(rows(dest))


def test_spectra_twice_is_once_and_exits_0(tmp_path, emulator, run):
    path, _ = line_sources(tmp_path, emulator)
    first, second = twice(run, emulator, tmp_path / "s", "spectra", path, "30arcsec", tmp_path / "s")
    assert "nothing to ask CASDA" in second.stderr


# --- a changed request: new data, no stale row ------------------------------------------------------

def test_a_changed_cutout_size_fetches_new_files_and_leaves_no_stale_row(tmp_path, emulator, run):
    dest = tmp_path / "o"
    assert run("cutouts", "609", dest, "--cutout-radius", "1arcmin", *FAST_POLL).returncode == 0
    small = {name for name in files(dest) if name.endswith(".fits")}
    jobs = jobs_created(emulator)
    bigger = run("cutouts", "609", dest, "--cutout-radius", "2arcmin", "--json", *FAST_POLL)
    assert bigger.returncode == 0, bigger.stderr
    assert jobs_created(emulator) == jobs + 1
    summary = json.loads(bigger.stdout)
    assert summary["files"] == 3 and summary["earlier_files"] == 3
    new = {Path(p).name for p in summary["paths"]}
    assert new.isdisjoint(small) and all(name.endswith("_r2arcmin.fits") for name in new)
    table = Table.read(dest / MANIFEST_NAME, format="ascii.ecsv")
    assert {Path(str(p)).name for p in table["path"]} == new               # no row of the 1' request
    assert all(str(region).endswith(" 0.0333333333") for region in table["region"])
    for name in new:                                                       # the data are 2' cutouts
        assert fits.getheader(dest / name)["NAXIS1"] > fits.getheader(dest / sorted(small)[0])["NAXIS1"]
    assert "earlier, different request" in bigger.stderr
    back = run("cutouts", "609", dest, "--cutout-radius", "1arcmin", *FAST_POLL)   # and back again: fetched
    assert back.returncode == 0 and jobs_created(emulator) == jobs + 2


def test_a_changed_spectral_window_fetches_it_and_leaves_no_stale_row(tmp_path, emulator, run):
    path, line = line_sources(tmp_path, emulator)
    dest = tmp_path / "s"
    assert run("spectra", path, "30arcsec", dest, "--channel", "1", "8", *FAST_POLL).returncode == 0
    first = files(dest)
    changed = run("spectra", path, "30arcsec", dest, "--channel", "9", "16", "--json", *FAST_POLL)
    assert changed.returncode == 0, changed.stderr
    [name] = [Path(p).name for p in json.loads(changed.stdout)["paths"]]
    assert "CHANNEL_9_16" in name and name not in first
    assert fits.getdata(dest / name).shape[-1] == 8        # the 8 channels asked for
    table = Table.read(dest / MANIFEST_NAME, format="ascii.ecsv")
    assert list(table["window"]) == ["CHANNEL 9 16"]


def test_a_changed_slice_width_leaves_no_stale_row(tmp_path, emulator, run):
    dest = tmp_path / "o"
    assert run("slice", "609", "16", dest, *FAST_POLL).returncode == 0
    assert run("slice", "609", "8", dest, *FAST_POLL).returncode == 0
    table = Table.read(dest / MANIFEST_NAME, format="ascii.ecsv")
    assert sorted(table["window"]) == ["CHANNEL 1 8", "CHANNEL 17 24", "CHANNEL 25 32", "CHANNEL 9 16"]


def test_a_changed_product_list_stages_only_the_new_product(tmp_path, emulator, run):
    dest = tmp_path / "whole"
    assert run("stage", "cube-1002", "--dest", dest, *FAST_POLL).returncode == 0
    jobs = jobs_created(emulator)
    both = run("stage", "cube-1002", "cube-1003", "--dest", dest, "--json", *FAST_POLL)
    assert both.returncode == 0, both.stderr
    assert jobs_created(emulator) == jobs + 1
    assert "1 of 2 file(s) of this request are already in" in both.stderr
    assert sorted(str(p) for p in Table.read(dest / MANIFEST_NAME, format="ascii.ecsv")["product_id"]) == [
        "cube-1002", "cube-1003"]


# --- spectra: each position only to the cubes that cover it -----------------------------------------

def test_spectra_send_each_position_only_to_the_cubes_covering_it(tmp_path, emulator, run):
    # one position in the SB609 field, one in the SB2338 field, one in neither
    path, line = line_sources(tmp_path, emulator, "333.90 -45.84", "10.0 10.0")
    dest = tmp_path / "s"
    process = run("spectra", path, "30arcsec", dest, "--json", *FAST_POLL)
    assert process.returncode == 0, process.stderr
    summary = json.loads(process.stdout)
    assert summary["uncovered"] == ["J004000.0+100000"] and "J004000.0+100000" in process.stderr
    table = Table.read(dest / MANIFEST_NAME, format="ascii.ecsv")
    pairs = sorted((str(r["product_id"]), round(float(r["source_ra"]), 2)) for r in table)
    assert pairs == [("cube-1004", round(line["ra"], 2)), ("cube-1009", 333.9)]
    assert summary["error_files"] == 0                     # no position went to a cube missing it
    again = run("spectra", path, "30arcsec", dest, *FAST_POLL)
    assert again.returncode == 0, again.stderr


def test_spectra_with_no_covered_position_match_nothing(tmp_path, emulator, run):
    path = tmp_path / "far.txt"
    path.write_text("187.5 -45.0\n")
    process = run("spectra", path, "30arcsec", tmp_path / "s", "--subtype", "spectral.restored.3d",
                  "--collection", "no such survey", "--quiet")
    assert process.returncode == cli.EXIT_NOTHING_FOUND
    assert not (tmp_path / "s").exists()
