"""The ``casda`` command line: every command end to end against the emulator over real
HTTP, and its errors (one line on stderr, a documented exit code, never a traceback).

Each command runs at least once as ``python -m astroquery_casda_ext.cli`` in a subprocess
(`casda`); variations and error cases run `cli.main` in this process (`casda_here`), which
skips the interpreter start-up and keeps the module fast."""
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from astropy.io import fits
from astropy.table import Table

from astroquery_casda_ext import cli
from astroquery_casda_ext.checksum import checksum_of_file, parse_checksum
from astroquery_casda_ext.credentials import KEYRING_SERVICE
from astroquery_casda_ext.download import MANIFEST_NAME
from astroquery_casda_ext.emulator import FaultRule
from astroquery_casda_ext.emulator.holdings import spectral_line_source
from astroquery_casda_ext.errors import (ChecksumMismatchError, InvalidRegionError, JobFailedError,
                                         NoAccessError, NotLoggedInError, QueryError)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Jobs of the emulator take ~0.3 s; look at them often so the tests stay fast.
FAST_POLL = ("--poll-interval", "0.2")


def casda(emulator, *args, home, password=True, user=True, server=True, extra_env=None, stdin=None,
          timeout=120):
    """Run ``python -m astroquery_casda_ext.cli ARGS`` against the emulator; return the process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CASDA_")}
    # The child gets an empty astropy config and cache of its own, and no keyring.
    for kind in ("config", "cache"):
        (home / f"xdg-{kind}" / "astropy").mkdir(parents=True, exist_ok=True)
    env.update(XDG_CONFIG_HOME=str(home / "xdg-config"), XDG_CACHE_HOME=str(home / "xdg-cache"),
               PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    if user:
        env["CASDA_USER"] = emulator.username
    if password:
        env["CASDA_PASSWORD"] = emulator.password
    env.update(extra_env or {})
    command = [sys.executable, "-m", "astroquery_casda_ext.cli", *args]
    if server:
        command += ["--server", emulator.url]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL if stdin is None else stdin)


@pytest.fixture
def casda_here(casda_cli):
    """``casda ARGS`` in this process (conftest's ``casda_cli``)."""
    return casda_cli


def assert_ok(process):
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr


def assert_one_line_error(process, code, *fragments):
    """The process failed with ``code`` and said why in exactly one line (run with --quiet)."""
    lines = process.stderr.strip().splitlines()
    assert process.returncode == code, process.stderr
    assert "Traceback" not in process.stderr
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith("casda: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def verified_files(dest):
    """The data files in ``dest``, each checked against its CASDA ``.checksum``."""
    files = sorted(p for p in Path(dest).iterdir() if p.suffix in (".fits", ".txt"))
    for path in files:
        expected = parse_checksum(Path(f"{path}.checksum").read_text())
        assert checksum_of_file(path)[1] == expected, path
    return files


def manifest(dest):
    return Table.read(Path(dest) / MANIFEST_NAME, format="ascii.ecsv")


def source_file(tmp_path, lines, name="sources.txt"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def bright_components(emulator, sbid=609, flux_min=500.0):
    rows = [c for c in emulator.holdings.components if c["first_sbid"] == sbid and c["flux_peak"] > flux_min]
    return sorted(rows, key=lambda c: -c["flux_peak"])


# --- the demo ---------------------------------------------------------------------------------

def test_demo_writes_verified_cutouts_a_manifest_and_a_preview(tmp_path, emulator):
    dest = tmp_path / "demo"
    process = casda(emulator, "demo", str(dest), home=tmp_path, password=False, user=False, server=False)
    assert_ok(process)
    cutouts = [p for p in verified_files(dest) if p.name.startswith("cube-1001_J")]
    assert len(cutouts) == len(bright_components(emulator)) == 3
    rows = manifest(dest)
    assert set(rows["checksum_status"]) == {"verified"}
    assert (dest / cli.PREVIEW_NAME).read_bytes().startswith(PNG_SIGNATURE)
    for step in range(1, 6):
        assert f"Step {step}/5" in process.stderr
    assert "EXECUTING" in process.stderr or "COMPLETED" in process.stderr
    assert "Demo complete" in process.stdout and "3/3 verified" in process.stdout
    assert emulator.password not in process.stdout + process.stderr
    # CASDA's DataLink unit quirk (astropy's VOTable W50) is not a shell user's concern
    assert "W50" not in process.stderr


def test_demo_json_summary_is_machine_readable(tmp_path, emulator, casda_here):
    process = casda_here("demo", str(tmp_path / "d"), "--json", "--quiet", password=False,
                         user=False, server=False)
    assert_ok(process)
    assert process.stderr == ""
    summary = json.loads(process.stdout)
    assert summary["command"] == "demo" and summary["sbid"] == 609
    assert summary["files"] == summary["verified"] == 3 and summary["failed"] == 0
    assert Path(summary["preview"]).is_file() and Path(summary["manifest"]).is_file()


def test_demo_against_a_server_uses_the_usual_credentials(tmp_path, emulator, casda_here):
    dest = tmp_path / "remote-demo"
    process = casda_here("demo", str(dest), *FAST_POLL)
    assert_ok(process)
    assert "Starting a local CASDA emulator" not in process.stderr
    assert len([p for p in verified_files(dest) if p.name.startswith("cube-1001_J")]) == 3
    assert any(entry.user == emulator.username for entry in emulator.request_log)


# --- query and tap ----------------------------------------------------------------------------

def test_query_prints_the_products_at_a_position(tmp_path, emulator):
    process = casda(emulator, "query", "187.5", "-45.0", "--radius", "5arcmin", home=tmp_path)
    assert_ok(process)
    for product in ("cube-1001", "cube-1004", "cube-1005"):
        assert product in process.stdout
    assert "cube-1020" not in process.stdout     # another field


@pytest.mark.parametrize("suffix, fmt", [(".xml", "votable"), (".csv", "ascii.csv"), (".ecsv", "ascii.ecsv")])
def test_query_writes_the_table_in_the_format_of_the_file_name(tmp_path, emulator, casda_here, suffix, fmt):
    output = tmp_path / f"found{suffix}"
    process = casda_here("query", "--ra", "333.9", "--dec", "-45.84", "--collection", "RACS",
                         "--subtype", "cont.restored.t0", "-o", str(output))
    assert_ok(process)
    table = Table.read(output, format=fmt)
    assert list(table["obs_collection"]) == ["The Rapid ASKAP Continuum Survey"]
    assert list(table["dataproduct_subtype"]) == ["cont.restored.t0"]


def test_query_time_band_and_json(tmp_path, emulator, casda_here):
    process = casda_here("query", "320.0", "-51.0", "--time", "2019-10-01", "2020-01-01",
                         "--band", "300mm", "-", "--subtype", "cont.restored.t0", "--json")
    assert_ok(process)
    summary = json.loads(process.stdout)
    assert sorted(row["obs_id"] for row in summary["data"]) == ["9694", "9723"]


def test_tap_runs_adql_and_writes_csv(tmp_path, emulator, casda_here):
    output = tmp_path / "components.csv"
    adql = "SELECT component_name, flux_peak FROM casda.continuum_component WHERE first_sbid = 609"
    process = casda(emulator, "tap", adql, "--async", "-o", str(output), home=tmp_path)
    assert_ok(process)
    table = Table.read(output, format="ascii.csv")
    assert len(table) == len([c for c in emulator.holdings.components if c["first_sbid"] == 609])
    screen = casda_here("tap", adql + " AND flux_peak > 500")
    assert_ok(screen)
    assert all(c["component_name"] in screen.stdout for c in bright_components(emulator))


def test_tap_auth_sees_the_embargoed_catalogue(tmp_path, emulator, casda_here):
    adql = "SELECT COUNT(*) AS n FROM casda.continuum_component WHERE first_sbid = 11000"
    anonymous = casda_here("tap", adql, "--json")
    member = casda_here("tap", adql, "--json", "--auth")
    assert_ok(anonymous)
    assert_ok(member)
    assert json.loads(anonymous.stdout)["data"][0]["n"] == 0
    assert json.loads(member.stdout)["data"][0]["n"] > 0


# --- the survey workflows -----------------------------------------------------------------------

def test_cutouts_of_a_scheduling_block_with_preview(tmp_path, emulator):
    dest, preview = tmp_path / "sb609", tmp_path / "sheet.png"
    process = casda(emulator, "cutouts", "609", str(dest), "--radius", "1arcmin", "--preview", str(preview),
                    *FAST_POLL, home=tmp_path)
    assert_ok(process)
    cutouts = verified_files(dest)
    assert len(cutouts) == 3
    assert preview.read_bytes().startswith(PNG_SIGNATURE)
    soda_jobs = {entry.path for entry in emulator.request_log
                 if entry.method == "POST" and entry.path.endswith("/data/async")}
    assert len(soda_jobs) == 1                      # one job for every source


def test_cutouts_flux_limit_selects_the_sources(tmp_path, emulator, casda_here):
    dest = tmp_path / "brightest"
    process = casda_here("cutouts", "609", str(dest), "--flux-min", "1.2 Jy/beam", "--json", *FAST_POLL)
    assert_ok(process)
    assert json.loads(process.stdout)["sources"] == len(bright_components(emulator, flux_min=1200.0)) == 1


def test_cutouts_full_files_stages_the_whole_image(tmp_path, emulator, casda_here):
    dest = tmp_path / "whole"
    process = casda_here("cutouts", "609", str(dest), "--full-files", *FAST_POLL)
    assert_ok(process)
    [staged] = verified_files(dest)
    image = emulator.holdings.product("cube-1001")
    assert staged.name == image.staged_name
    assert staged.stat().st_size == image.size


def test_sources_cuts_a_source_list_and_reports_misses(tmp_path, emulator):
    first, second = bright_components(emulator)[:2]
    sources = source_file(tmp_path, ["# two sources in the image, one far away",
                                     f"{first['ra_deg_cont']} {first['dec_deg_cont']}",
                                     f"{second['ra_hms_cont']}, {second['dec_dms_cont']}",
                                     "10.0 10.0"])
    dest = tmp_path / "cutouts"
    process = casda(emulator, "sources", "cube-1001", str(sources), str(dest), *FAST_POLL, home=tmp_path)
    assert_ok(process)
    rows = manifest(dest)
    assert sum(rows["kind"] == "data") == 2
    assert sum(rows["kind"] == "error-file") == 0       # the far source was not sent
    assert "1 position(s) in no footprint, not asked for: J004000.0+100000" in process.stdout


def test_images_at_a_position_with_a_negative_declination(tmp_path, emulator):
    dest, preview = tmp_path / "at", tmp_path / "at.png"
    process = casda(emulator, "images", "187.5", "-45.0", str(dest), "--radius", "1arcmin", "--preview",
                    str(preview), "--json", *FAST_POLL, home=tmp_path)
    assert_ok(process)
    summary = json.loads(process.stdout)
    field_products = [p for p in emulator.holdings.products if p.sbid == 609]
    assert summary["images"] == summary["files"] == summary["verified"] == len(field_products)
    assert preview.read_bytes().startswith(PNG_SIGNATURE)


def test_images_full_files_of_one_collection_and_subtype(tmp_path, emulator, casda_here):
    dest = tmp_path / "racs"
    process = casda_here("images", "22:15:36", "-45:50:24", str(dest), "--collection", "racs",
                         "--subtype", "cont.noise.t0", "--full-files", *FAST_POLL)
    assert_ok(process)
    [staged] = verified_files(dest)
    assert "SB2338" in staged.name and "noiseMap" in staged.name


def test_spectra_of_a_source_list_with_plot(tmp_path, emulator):
    line = spectral_line_source(609, emulator.holdings.config)
    sources = source_file(tmp_path, [f"{line['ra']} {line['dec']}"])
    dest, plot = tmp_path / "spectra", tmp_path / "spectra.png"
    process = casda(emulator, "spectra", str(sources), "30arcsec", str(dest), "--plot", str(plot), *FAST_POLL,
                    home=tmp_path)
    assert_ok(process)
    [spectrum] = verified_files(dest)
    values = fits.getdata(spectrum)
    assert int(values.argmax()) + 1 == line["channel"]
    assert plot.read_bytes().startswith(PNG_SIGNATURE)


def test_slice_splits_each_cube_into_channel_windows(tmp_path, emulator):
    dest = tmp_path / "slices"
    channels = emulator.holdings.config.cube_channels
    process = casda(emulator, "slice", "609", "10", str(dest), *FAST_POLL, home=tmp_path)
    assert_ok(process)
    slices = verified_files(dest)
    depths = sorted(fits.getheader(path)["NAXIS3"] for path in slices)
    assert sum(depths) == channels
    assert depths == sorted([10] * (channels // 10) + ([channels % 10] if channels % 10 else []))


# --- staging, jobs, downloads ---------------------------------------------------------------------

def test_stage_prints_a_job_that_job_and_download_resume(tmp_path, emulator, casda_here):
    table = tmp_path / "products.ecsv"
    Table({"obs_publisher_did": ["cube-1002"]}).write(table, format="ascii.ecsv")
    staged = casda(emulator, "stage", "cube-1001", str(table), "--quiet", home=tmp_path)
    assert_ok(staged)
    job_url = staged.stdout.strip()
    assert "/casda_data_access/data/async/" in job_url

    waited = casda(emulator, "job", job_url, "--wait", "--dest", str(tmp_path / "waited"), *FAST_POLL,
                   home=tmp_path, password=False)
    assert_ok(waited)
    assert len(verified_files(tmp_path / "waited")) == 2

    status = casda_here("job", job_url, "--json", password=False)
    assert_ok(status)
    assert json.loads(status.stdout)["phase"] == "COMPLETED"
    assert json.loads(status.stdout)["results"] == 2

    again = casda(emulator, "download", job_url, str(tmp_path / "again"), home=tmp_path, password=False)
    assert_ok(again)
    assert len(verified_files(tmp_path / "again")) == 2


def test_stage_with_dest_waits_and_downloads(tmp_path, emulator, casda_here):
    dest = tmp_path / "staged"
    process = casda_here("stage", "cube-1002", "--dest", str(dest), *FAST_POLL)
    assert_ok(process)
    assert [p.name for p in verified_files(dest)] == [emulator.holdings.product("cube-1002").staged_name]


def test_download_plain_urls(tmp_path, emulator, casda_here):
    from astroquery_casda_ext import CasdaClass
    client = CasdaClass(server=emulator.url)
    client.login(emulator.username, password=emulator.password)
    urls = client.stage_data(client.query_sbid_images(609), poll_interval=0.2)
    dest = tmp_path / "by-url"
    process = casda_here("download", *urls, str(dest), password=False, user=False)
    assert_ok(process)
    assert len(verified_files(dest)) == 1


def test_job_abort(tmp_path, emulator, casda_here):
    emulator.set_options(job_phases=(("QUEUED", 60.0),))     # still queued when aborted
    staged = casda_here("stage", "cube-1003", "--quiet")
    assert_ok(staged)
    aborted = casda_here("job", staged.stdout.strip(), "--abort", "--json")
    assert_ok(aborted)
    assert json.loads(aborted.stdout)["phase"] == "ABORTED"


# --- credentials --------------------------------------------------------------------------------

def test_password_file_of_the_owner_only_is_accepted(tmp_path, emulator, casda_here):
    password_file = tmp_path / "opal"
    password_file.write_text(emulator.password + "\n")
    password_file.chmod(0o600)
    process = casda_here("cutouts", "609", str(tmp_path / "pf"), "--password-file", str(password_file),
                         *FAST_POLL, password=False)
    assert_ok(process)


class FakeTerminal:
    """Standard input that says it is a terminal (getpass is replaced, so nothing is read)."""

    def isatty(self):
        return True


def test_login_verifies_the_prompted_password_then_stores_it(emulator, memory_keyring, monkeypatch, capsys):
    import getpass
    monkeypatch.setattr(sys, "stdin", FakeTerminal())
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": emulator.password)
    code = cli.main(["login", "--user", emulator.username, "--server", emulator.url])
    assert code == cli.EXIT_OK, capsys.readouterr().err
    assert memory_keyring.passwords == {(KEYRING_SERVICE, emulator.username): emulator.password}
    assert emulator.password not in "".join(capsys.readouterr())


def test_login_stores_nothing_when_casda_refuses(emulator, memory_keyring, monkeypatch, capsys):
    import getpass
    monkeypatch.setattr(sys, "stdin", FakeTerminal())
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": "not the password")
    code = cli.main(["login", "--user", emulator.username, "--server", emulator.url, "--quiet"])
    assert code == cli.EXIT_LOGIN
    assert memory_keyring.passwords == {}
    assert capsys.readouterr().err.startswith("casda: error: CASDA rejected the login")


def test_commands_use_the_stored_password_and_logout_removes_it(emulator, memory_keyring, tmp_path, capsys):
    memory_keyring.set_password(KEYRING_SERVICE, emulator.username, emulator.password)
    code = cli.main(["stage", "cube-1001", "--user", emulator.username, "--server", emulator.url, "--quiet"])
    assert code == cli.EXIT_OK
    assert "/data/async/" in capsys.readouterr().out
    assert cli.main(["logout", "--user", emulator.username, "--quiet"]) == cli.EXIT_OK
    assert memory_keyring.passwords == {}


def test_no_command_takes_a_password_argument():
    for name, command in cli.cli.commands.items():
        options = {opt for param in command.params for opt in param.opts}
        assert not any(opt in ("--password", "-p", "--opal-password") for opt in options), name


# --- errors: one line, the documented exit code, no traceback --------------------------------------

def test_missing_argument_is_a_usage_error(tmp_path, emulator):
    process = casda(emulator, "cutouts", "609", "--quiet", home=tmp_path)
    assert_one_line_error(process, cli.EXIT_USAGE, "Missing argument 'DEST'")


def test_unreadable_source_file_is_a_usage_error(tmp_path, emulator, casda_here):
    process = casda_here("sources", "cube-1001", str(tmp_path / "missing.txt"), str(tmp_path / "d"),
                         "--quiet")
    assert_one_line_error(process, cli.EXIT_USAGE, "missing.txt")


def test_malformed_source_file_names_the_line(tmp_path, emulator, casda_here):
    sources = source_file(tmp_path, ["187.5 -45.0", "187.5 -45.0 extra"])
    process = casda_here("sources", "cube-1001", str(sources), str(tmp_path / "d"), "--quiet")
    assert_one_line_error(process, cli.EXIT_USAGE, "line 2")


@pytest.mark.parametrize("args, fragment", [
    (("images", "400", "-45", "DEST"), "RA"),
    (("query", "187.5", "-95"), "Dec"),
    (("query", "187.5", "-45", "--radius", "20deg"), "radius"),
    (("query", "--band", "1", "2"), "needs a unit"),
    (("images", "187.5", "-45", "DEST", "--radus", "1"), "--radus"),
])
def test_bad_coordinates_and_values_are_usage_errors(tmp_path, emulator, casda_here, args, fragment):
    args = [str(tmp_path / "d") if arg == "DEST" else arg for arg in args]
    process = casda_here(*args, "--quiet")
    assert_one_line_error(process, cli.EXIT_USAGE, fragment)


def test_wrong_password_is_a_login_failure(tmp_path, emulator):
    process = casda(emulator, "cutouts", "609", str(tmp_path / "d"), "--quiet", home=tmp_path,
                    extra_env={"CASDA_PASSWORD": "wrong"})
    assert_one_line_error(process, cli.EXIT_LOGIN, "rejected")
    assert "wrong" not in process.stderr


def test_password_file_readable_by_others_is_refused(tmp_path, emulator, casda_here):
    password_file = tmp_path / "opal"
    password_file.write_text(emulator.password)
    password_file.chmod(0o644)
    process = casda_here("cutouts", "609", str(tmp_path / "d"), "--password-file", str(password_file),
                         "--quiet", password=False)
    assert_one_line_error(process, cli.EXIT_LOGIN, "chmod 600")
    assert not any(entry.path.startswith("/casda_vo_proxy") for entry in emulator.request_log)


def test_no_password_anywhere_is_a_login_failure(tmp_path, emulator, casda_here):
    process = casda_here("stage", "cube-1001", "--quiet", password=False)
    assert_one_line_error(process, cli.EXIT_LOGIN, "no password")


def test_nothing_matched_exits_1(tmp_path, emulator, casda_here):
    process = casda_here("cutouts", "4242", str(tmp_path / "d"), "--quiet")
    assert_one_line_error(process, cli.EXIT_NOTHING_FOUND, "4242")


def test_a_failed_job_exits_4(tmp_path, emulator, casda_here):
    first = bright_components(emulator)[0]
    sources = source_file(tmp_path, [f"{first['ra_deg_cont']} {first['dec_deg_cont']}"])
    # channels the image does not have: nothing matches, CASDA fails the job
    process = casda_here("sources", "cube-1001", str(sources), str(tmp_path / "d"), "--channel", "500", "600",
                         "--quiet", *FAST_POLL)
    assert_one_line_error(process, cli.EXIT_JOB, "ERROR")
    assert not (tmp_path / "d").exists()        # a failed command leaves no empty folder


def test_positions_outside_every_footprint_match_nothing(tmp_path, emulator, casda_here):
    sources = source_file(tmp_path, ["10.0 10.0"])      # far from the image: not sent at all
    start = len(emulator.request_log)
    process = casda_here("sources", "cube-1001", str(sources), str(tmp_path / "d"), "--quiet", *FAST_POLL)
    assert_one_line_error(process, cli.EXIT_NOTHING_FOUND, "footprint")
    assert not any(e.method == "POST" and e.path.endswith("/data/async") for e in emulator.request_log[start:])
    assert not (tmp_path / "d").exists()


def test_an_unresolvable_name_offline_is_a_service_error(tmp_path, emulator, casda_here):
    # the test session has no internet: the name resolver cannot answer (not a usage error)
    process = casda_here("images", "abc", "def", str(tmp_path / "d"), "--quiet")
    assert_one_line_error(process, cli.EXIT_SERVICE, "name resolver")
    assert not (tmp_path / "d").exists()


def test_an_unknown_job_exits_4(tmp_path, emulator, casda_here):
    process = casda_here("job", f"{emulator.url}casda_data_access/data/async/no-such-job", "--quiet")
    assert_one_line_error(process, cli.EXIT_JOB, "404")


def test_a_corrupted_download_exits_5(tmp_path, emulator, casda_here):
    emulator.add_fault(FaultRule(path=r"^/download/.*\.fits$", kind="corrupt", after_bytes=3000))
    process = casda_here("cutouts", "609", str(tmp_path / "d"), "--quiet", *FAST_POLL)
    assert_one_line_error(process, cli.EXIT_DOWNLOAD)
    assert not list((tmp_path / "d").glob("*.fits"))


def test_a_bad_query_is_a_service_error(tmp_path, emulator, casda_here):
    process = casda_here("tap", "SELECT nothing FROM nowhere", "--quiet")
    assert_one_line_error(process, cli.EXIT_SERVICE)


def test_help_of_every_command_has_an_example_and_the_exit_codes(tmp_path, emulator):
    process = casda(emulator, "--help", home=tmp_path, server=False)
    assert_ok(process)
    assert "Exit codes (the same for every command):" in process.stdout
    for name in cli.cli.commands:
        text = cli.cli.commands[name].get_help(click.Context(cli.cli.commands[name], info_name=name))
        assert "Examples:" in text and f"casda {name}" in text, name
        assert "see 'casda --help'" in text and "--server" in text, name


# --- in-process: parsing and the exit-code table --------------------------------------------------

@pytest.mark.parametrize("error, code", [
    (click.UsageError("x"), cli.EXIT_USAGE),
    (InvalidRegionError("x"), cli.EXIT_USAGE),
    (NotLoggedInError("x"), cli.EXIT_LOGIN),
    (JobFailedError("x"), cli.EXIT_JOB),
    (ChecksumMismatchError("x"), cli.EXIT_DOWNLOAD),
    (QueryError("x"), cli.EXIT_SERVICE),
    (NoAccessError("x"), cli.EXIT_SERVICE),
    (cli.NothingFound("x"), cli.EXIT_NOTHING_FOUND),
    (KeyError("x"), cli.EXIT_INTERNAL),
])
def test_exit_code_for_each_kind_of_error(error, code):
    assert cli.exit_code_for(error) == code


def test_collection_aliases_expand_and_full_names_pass_through():
    assert cli.expand_collections(["racs"]) == ["The Rapid ASKAP Continuum Survey"]
    assert "EMU Pilot Survey" in cli.expand_collections(["EMU"])
    assert cli.expand_collections(["My Own Survey", "RACS", "RACS"]) == [
        "My Own Survey", "The Rapid ASKAP Continuum Survey"]
    assert cli.expand_collections([]) is None


@pytest.mark.parametrize("channels, width, windows", [
    (32, 8, [(1, 8), (9, 16), (17, 24), (25, 32)]),
    (10, 4, [(1, 4), (5, 8), (9, 10)]),
    (3, 8, [(1, 3)]),
])
def test_channel_windows_cover_the_cube_once(channels, width, windows):
    assert cli.channel_windows(channels, width) == windows


def test_an_internal_error_is_one_line_and_says_how_to_see_more(monkeypatch, capsys):
    def broken(options):
        raise KeyError("boom")
    monkeypatch.setattr(cli, "make_client", broken)
    assert cli.main(["tap", "SELECT 1", "--quiet"]) == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--debug" in err and "Traceback" not in err
