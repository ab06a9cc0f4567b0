"""The command line is safe to rerun and speaks one grammar (issue 12).

Real HTTP against the emulator; `cli.main` runs in this process.
"""
import io
import json
import os
from pathlib import Path

import pytest
from astropy.table import Table

from astroquery_casda_ext import cli
from astroquery_casda_ext.download import MANIFEST_NAME

FAST_POLL = ("--poll-interval", "0.2")


@pytest.fixture
def run(casda_cli):
    """``casda ARGS`` in this process (conftest's ``casda_cli``)."""
    return casda_cli


def _files(dest):
    """name -> bytes of every file in ``dest`` (the manifest aside)."""
    return {p.name: p.read_bytes() for p in sorted(Path(dest).iterdir()) if p.name != MANIFEST_NAME}


def _rows(dest):
    table = Table.read(Path(dest) / MANIFEST_NAME, format="ascii.ecsv")
    keep = ["product_id", "kind", "path", "checksum_path", "size", "checksum_status", "status", "source",
            "source_ra", "source_dec", "region", "window"]
    return [tuple(row[name] for name in keep) for row in table]


def test_cutouts_twice_into_one_folder_is_the_same_as_once(tmp_path, emulator, run):
    dest = tmp_path / "out"
    first = run("cutouts", "609", dest, "--cutout-radius", "1arcmin", *FAST_POLL)
    assert first.returncode == 0, first.stderr
    files, rows = _files(dest), _rows(dest)
    jobs_before = sum(r.path.endswith("/data/async") for r in emulator.request_log)
    second = run("cutouts", "609", dest, "--cutout-radius", "1arcmin", *FAST_POLL)
    assert second.returncode == 0, second.stderr
    assert _files(dest) == files and _rows(dest) == rows
    assert sum(r.path.endswith("/data/async") for r in emulator.request_log) == jobs_before   # no new job
    assert "already in" in second.stderr
    # names and rows say which source each file shows
    data = [row for row in rows if row[1] == "data"]
    assert len(data) == 3 and all(row[7].startswith("J") and Path(row[2]).name.startswith("cube-1001_J")
                                  for row in data)
    assert all(-90 <= row[9] <= 90 and row[10].startswith("CIRCLE") for row in data)


def test_a_rerun_refetches_only_what_is_missing_or_damaged(tmp_path, run):
    dest = tmp_path / "out"
    assert run("cutouts", "609", dest, *FAST_POLL).returncode == 0
    files, rows = _files(dest), _rows(dest)
    fits = sorted(name for name in files if name.endswith(".fits"))
    (dest / fits[0]).unlink()
    with open(dest / fits[1], "ab") as handle:
        handle.write(b"damaged")
    again = run("cutouts", "609", dest, "--json", *FAST_POLL)
    assert again.returncode == 0, again.stderr
    assert "1 of 3 file(s) of this request are already in" in again.stderr
    assert _files(dest) == files
    assert [row[:3] + row[4:] for row in _rows(dest)] == [row[:3] + row[4:] for row in rows]
    assert json.loads(again.stdout)["files"] == 3


def test_an_unwritable_destination_fails_before_the_first_request(tmp_path, emulator, run):
    if os.geteuid() == 0:
        blocker = tmp_path / "a-file"        # root writes anywhere: use a path under a regular file
        blocker.write_text("x")
        dest = blocker / "out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        dest = locked / "out"
    start = len(emulator.request_log)
    process = run("cutouts", "609", dest, "--quiet")
    assert process.returncode == cli.EXIT_USAGE, process.stderr
    assert str(dest.parent) in process.stderr and process.stderr.startswith("casda: error: ")
    assert len(emulator.request_log) == start       # not even the login check was sent


def test_a_read_only_destination_fails_before_the_first_request(tmp_path, emulator, run, monkeypatch):
    dest = tmp_path / "ro"
    dest.mkdir()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):   # a read-only mount, as root would meet it
        if str(path).startswith(str(dest)) and flags & os.O_CREAT:
            raise PermissionError(30, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    start = len(emulator.request_log)
    process = run("images", "187.5", "-45.0", dest, "--quiet")
    assert process.returncode == cli.EXIT_USAGE and "Read-only" in process.stderr
    assert len(emulator.request_log) == start


def test_nothing_matched_is_exit_1_for_every_command(tmp_path, run):
    query = run("query", "10.0", "10.0", "--radius", "1arcmin", "--quiet")
    tap = run("tap", "SELECT * FROM ivoa.obscore WHERE obs_id = 'none'", "--quiet")
    images = run("images", "10.0", "10.0", tmp_path / "i", "--quiet")
    for process in (query, tap, images):
        assert process.returncode == cli.EXIT_NOTHING_FOUND, process.stderr
        assert process.stderr.startswith("casda: error: ") and process.stdout == ""


@pytest.mark.parametrize("fmt, check", [
    ("csv", lambda text: Table.read(text, format="ascii.csv")),
    ("ecsv", lambda text: Table.read(text, format="ascii.ecsv")),
    ("votable", lambda text: Table.read(io.BytesIO(text.encode()), format="votable")),
    ("json", lambda text: Table(rows=[list(r.values()) for r in json.loads(text)],
                                names=list(json.loads(text)[0]))),
    ("table", lambda text: [line for line in text.splitlines() if "cube-" in line]),
])
def test_tables_go_to_stdout(run, fmt, check):
    process = run("tap", "SELECT TOP 4 obs_publisher_did, s_ra FROM ivoa.obscore", "-o", "-", "--format", fmt)
    assert process.returncode == 0, process.stderr
    table = check(process.stdout)
    assert len(table) == 4


def test_radius_is_the_search_cone_and_the_old_cutout_radius_warns(tmp_path, run):
    dest = tmp_path / "old"
    process = run("sources", "cube-1001", _source_list(tmp_path), dest, "--radius", "1arcmin", *FAST_POLL)
    assert process.returncode == 0, process.stderr
    assert "--radius for a cutout size is deprecated" in process.stderr
    help_text = cli.cli.commands["images"].get_help(cli.click.Context(cli.cli.commands["images"]))
    assert "--radius ANGLE" in help_text and "cone" in help_text and "--cutout-radius" in help_text


def _source_list(tmp_path):
    path = tmp_path / "sources.txt"
    path.write_text("187.66611477 -45.06210196\n")
    return path


def test_help_has_no_control_characters_and_the_exit_codes_once():
    text = cli.cli.get_help(cli.click.Context(cli.cli, info_name="casda"))
    assert not any(ord(c) < 32 and c not in "\n\t" for c in text)
    assert "Exit codes" in text and "130" in text and "casda job URL --wait" in text
    for name, command in cli.cli.commands.items():
        sub = command.get_help(cli.click.Context(command, info_name=name))
        assert "Exit codes (" not in sub and not any(ord(c) < 32 and c not in "\n\t" for c in sub), name


def test_ctrl_c_while_waiting_names_the_job_to_resume(tmp_path, run, monkeypatch):
    from astroquery_casda_ext import recipes

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "wait_for_jobs", interrupted)
    process = run("cutouts", "609", tmp_path / "c")
    assert process.returncode == cli.EXIT_INTERRUPTED
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith("casda: interrupted; ") and "casda job http" in last and "--wait --dest" in last


def test_login_without_a_keyring_says_the_password_was_accepted(run):
    # the test session's keyring is keyring.backends.fail, as on a headless machine
    process = run("login")
    assert process.returncode == 0, process.stderr
    assert "accepted the password" in process.stdout
    assert "CASDA_PASSWORD" in process.stderr and "--password-file" in process.stderr
    assert "keyrings.alt" in process.stderr


def test_password_file_beats_the_environment(tmp_path, run, monkeypatch, emulator):
    secret = tmp_path / "pw"
    secret.write_text(emulator.password + "\n")
    secret.chmod(0o600)
    monkeypatch.setenv("CASDA_PASSWORD", "wrong")
    monkeypatch.setenv("CASDA_USER", emulator.username)
    code = cli.main(["stage", "cube-1001", "--password-file", str(secret), "--server", emulator.url,
                     "--quiet"])
    assert code == cli.EXIT_OK


def test_a_job_timeout_names_the_job_to_resume(tmp_path, run, emulator):
    from astroquery_casda_ext import conf
    emulator.set_options(hold_jobs=True)            # the job never finishes on its own
    with conf.set_temp("job_timeout", 0.5):
        process = run("stage", "cube-1001", "--dest", tmp_path / "s", "--poll-interval", "0.1", "--quiet")
    assert process.returncode == cli.EXIT_JOB, process.stderr
    line = process.stderr.strip().splitlines()[-1]
    assert line.startswith("casda: error: ") and "casda job http" in line and "--wait" in line


def test_source_names_never_share_a_file_name():
    from astropy.coordinates import SkyCoord
    from astroquery_casda_ext.reruns import sources_from, stable_name
    positions = SkyCoord([187.5, 187.6, 187.7, 187.8], [-45.0, -45.1, -45.2, -45.3], unit="deg")
    sources = sources_from(positions, ["a/b", "a_b", "A_B", None])
    names = {stable_name("cube-1001", s.name) for s in sources}
    assert len(names) == 4 and all("/" not in n for n in names)
    assert sources[3].name == "J123112.0-451800"


def test_spectra_are_named_after_their_source_and_not_fetched_twice(tmp_path, run, emulator):
    from astroquery_casda_ext.emulator.holdings import spectral_line_source
    line = spectral_line_source(609, emulator.holdings.config)
    sources = tmp_path / "line.txt"
    sources.write_text(f"{line['ra']} {line['dec']}\n")
    dest = tmp_path / "spectra"
    assert run("spectra", sources, "30arcsec", dest, *FAST_POLL).returncode == 0
    files, rows = _files(dest), _rows(dest)
    [name] = [n for n in files if n.endswith(".fits")]
    assert name.startswith("cube-") and name.endswith("_spectrum.fits") and "_J" in name
    again = run("spectra", sources, "30arcsec", dest, *FAST_POLL)
    assert again.returncode == 0 and "nothing to ask CASDA" in again.stderr
    assert _files(dest) == files and _rows(dest) == rows
