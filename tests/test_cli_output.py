"""stdout is data only, the request log, one exit-code table, checks before the first request
(issue 19).  Real HTTP against the emulator; `cli.main` in this process unless a fresh
interpreter is the point (configuration files)."""
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.table import Table

from astroquery_casda_ext import cli
from astroquery_casda_ext.emulator import FaultRule

FAST_POLL = ("--poll-interval", "0.2")
ADQL = "SELECT TOP 3 obs_publisher_did, s_ra FROM ivoa.obscore"


@pytest.fixture
def run(casda_cli):
    """``casda ARGS`` in this process (conftest's ``casda_cli``)."""
    return casda_cli


def _secrets(emulator):
    basic = base64.b64encode(f"{emulator.username}:{emulator.password}".encode()).decode()
    return (emulator.password, basic)


# --- stdout is data only; -v and --debug log on stderr -------------------------------------------------

def test_verbose_json_parses_and_logs_each_request_on_stderr(tmp_path, emulator, run):
    process = run("cutouts", "609", tmp_path / "o", "-v", "--json", *FAST_POLL)
    assert process.returncode == 0, process.stderr
    summary = json.loads(process.stdout)                      # nothing but the JSON document
    assert summary["files"] == 3
    lines = [line for line in process.stderr.splitlines() if "astroquery_casda_ext.http" in line]
    assert any(" POST " in line and "/data/async -> 303 in " in line for line in lines)    # a job made
    assert any(line.rstrip().endswith(" s") and "GET " in line and "-> 200 in " in line for line in lines)
    assert any("/casda_vo_proxy/" in line for line in lines)
    assert not any(secret in process.stderr for secret in _secrets(emulator))
    requested = "".join(line.split(" -> ")[0] for line in lines)
    assert "?" not in requested.replace("?...", "")                 # no query strings, only their mark


def test_debug_csv_on_stdout_parses_and_headers_are_masked(emulator, run):
    process = run("tap", ADQL, "--auth", "--debug", "-o", "-", "--format", "csv")
    assert process.returncode == 0, process.stderr
    table = Table.read(process.stdout, format="ascii.csv")
    assert len(table) == 3 and table.colnames == ["obs_publisher_did", "s_ra"]
    assert "Authorization: ***" in process.stderr
    assert not any(secret in process.stderr for secret in _secrets(emulator))


def test_default_verbosity_keeps_astroquery_info_off_stdout(emulator, run):
    process = run("tap", ADQL, "--auth", "-o", "-", "--format", "json")
    assert process.returncode == 0, process.stderr
    assert len(json.loads(process.stdout)) == 3


# --- the exit-code table: every code from a command ----------------------------------------------------

def _scenario(code, tmp_path, emulator, run, monkeypatch):
    if code == cli.EXIT_OK:
        return run("query", "187.5", "-45.0", "--radius", "0.05", "--quiet")
    if code == cli.EXIT_NOTHING_FOUND:
        return run("stage", "cube-9999", "--quiet")
    if code == cli.EXIT_USAGE:
        return run("query", "--quiet")                         # no constraint
    if code == cli.EXIT_LOGIN:
        return run("stage", "cube-1001", "--quiet", user=False)
    if code == cli.EXIT_JOB:
        return run("job", f"{emulator.url}casda_data_access/data/async/no-such-job", "--quiet")
    if code == cli.EXIT_DOWNLOAD:
        emulator.add_fault(FaultRule(path=r"^/download/.*\.fits$", kind="corrupt", after_bytes=3000))
        return run("stage", "cube-1002", "--dest", tmp_path / "d", "--quiet", *FAST_POLL)
    if code == cli.EXIT_SERVICE:
        return run("tap", "SELECT nothing FROM nowhere", "--quiet")
    if code == cli.EXIT_INTERNAL:
        monkeypatch.setattr(cli, "make_client", lambda options: 1 / 0)
        return run("tap", ADQL, "--quiet")
    if code == cli.EXIT_INTERRUPTED:
        from astroquery_casda_ext import recipes

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(recipes, "wait_for_jobs", interrupted)
        return run("stage", "cube-1003", "--dest", tmp_path / "i", "--quiet")
    raise AssertionError(f"exit code {code} of the table has no scenario here")


@pytest.mark.parametrize("code", [code for code, _ in cli.EXIT_CODES])
def test_every_exit_code_of_the_table_comes_from_a_command(code, tmp_path, emulator, run, monkeypatch):
    process = _scenario(code, tmp_path, emulator, run, monkeypatch)
    assert process.returncode == code, process.stderr
    assert "Traceback" not in process.stderr
    if code not in (cli.EXIT_OK, cli.EXIT_INTERRUPTED):
        assert process.stderr.startswith("casda: error: ") and process.stdout == ""


def test_the_table_is_documented_once_in_the_help_and_in_the_docs():
    help_text = cli.cli.get_help(cli.click.Context(cli.cli, info_name="casda"))
    docs = (Path(__file__).parents[1] / "docs" / "cli.rst").read_text()
    for code, _ in cli.EXIT_CODES:
        assert f"\n    {code:<4} " in help_text, code
        assert f"``{code}``" in docs, code


# --- messages in the shell's words; checks before the first request -------------------------------------

def test_no_user_name_is_said_in_the_shells_words(run):
    process = run("stage", "cube-1001", "--quiet", user=False)
    assert "--user" in process.stderr and "CASDA_USER" in process.stderr and "username=" not in process.stderr


def test_a_bad_value_is_said_in_the_shells_words(tmp_path, run):
    process = run("query", "187.5", "-45", "--radius", "fast", "--quiet")
    assert process.returncode == cli.EXIT_USAGE
    assert "* u." not in process.stderr and "0.5deg" in process.stderr


def test_plain_degrees_are_angles_everywhere(tmp_path, emulator, run):
    assert run("query", "187.5", "-45", "--radius", "0.5", "--quiet").returncode == 0
    process = run("sources", "cube-1001", _one_source(tmp_path), tmp_path / "o", "--cutout-radius", "0.02",
                  "--json", *FAST_POLL)
    assert process.returncode == 0, process.stderr
    assert Path(json.loads(process.stdout)["paths"][0]).name.endswith("_r72arcsec.fits")


def _one_source(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("187.66611477 -45.06210196\n")
    return path


def test_a_query_without_constraints_is_refused_before_sending(emulator, run):
    start = len(emulator.request_log)
    process = run("query", "--maxrec", "5", "--quiet")
    assert process.returncode == cli.EXIT_USAGE and "no constraint" in process.stderr
    assert len(emulator.request_log) == start


@pytest.mark.parametrize("where", ["missing-folder", "under-a-file", "symlink"])
def test_an_unwritable_output_fails_before_any_request_and_creates_nothing(tmp_path, emulator, run, where):
    if where == "missing-folder":
        output = tmp_path / "no" / "such" / "found.csv"
    elif where == "under-a-file":
        (tmp_path / "a-file").write_text("x")
        output = tmp_path / "a-file" / "found.csv"
    else:
        (tmp_path / "elsewhere.csv").write_text("keep me")
        output = tmp_path / "found.csv"
        output.symlink_to(tmp_path / "elsewhere.csv")
    before = sorted(p.name for p in tmp_path.iterdir())
    start = len(emulator.request_log)
    process = run("query", "187.5", "-45", "-o", output, "--overwrite", "--quiet")
    assert process.returncode == cli.EXIT_USAGE, process.stderr
    assert process.stderr.startswith("casda: error: ") and "--output" in process.stderr
    assert len(emulator.request_log) == start
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if where == "symlink":
        assert (tmp_path / "elsewhere.csv").read_text() == "keep me"


def test_an_existing_output_needs_overwrite_before_any_request(tmp_path, emulator, run):
    output = tmp_path / "found.csv"
    output.write_text("old")
    start = len(emulator.request_log)
    process = run("tap", ADQL, "-o", output, "--quiet")
    assert process.returncode == cli.EXIT_USAGE and "--overwrite" in process.stderr
    assert len(emulator.request_log) == start and output.read_text() == "old"
    assert run("tap", ADQL, "-o", output, "--overwrite", "--quiet").returncode == 0
    assert len(Table.read(output, format="ascii.csv")) == 3


def test_a_failed_command_leaves_no_destination_folder(tmp_path, run):
    dest = tmp_path / "new" / "dest"
    process = run("cutouts", "4242", dest, "--quiet")
    assert process.returncode == cli.EXIT_NOTHING_FOUND
    assert not (tmp_path / "new").exists()


def test_logout_without_a_keyring_is_not_a_login_failure(run):
    # the test session's keyring is keyring.backends.fail, as on a headless machine
    process = run("logout")
    assert process.returncode == cli.EXIT_OK, process.stderr
    assert "No password was stored" in process.stdout and "keyring" in process.stderr


def test_sources_help_shows_no_deprecated_option():
    command = cli.cli.commands["sources"]
    text = command.get_help(cli.click.Context(command, info_name="sources"))
    assert "--cutout-radius" in text
    assert "--radius" not in text.replace("--cutout-radius", "") and "eprecated" not in text


def test_a_server_of_ones_own_in_astroquery_cfg_is_used_not_a_crash(tmp_path, emulator):
    """astroquery.casda declares ``server`` as a choice: any other value used to fail its import."""
    config = tmp_path / "home" / ".astropy" / "config"
    config.mkdir(parents=True)
    (config / "astroquery.cfg").write_text(f"[casda]\nserver = {emulator.url}casda_vo_tools/sia2/query\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CASDA_", "XDG_"))}
    env.update(HOME=str(tmp_path / "home"), PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    process = subprocess.run([sys.executable, "-m", "astroquery_casda_ext.cli", "query", "187.5", "-45",
                              "--radius", "0.05", "-o", "-", "--format", "csv"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    assert "cube-1001" in process.stdout
    assert any(entry.path.endswith("/sia2/query") for entry in emulator.request_log)


def test_the_command_line_imports_nothing_heavy_for_its_help(tmp_path):
    """``casda --help`` and a command's help cost click alone: cli.py imports astropy, numpy,
    requests or astroquery only inside the commands that use them.

    cli.py runs here in a package holding nothing else, so what it imports is all that is
    measured (the package's own lazy ``__init__`` is issue 20's; benchmark W8 times the whole).
    """
    package = tmp_path / "astroquery_casda_ext"
    package.mkdir()
    (package / "__init__.py").write_text(f"__version__ = {cli.__version__!r}\n")
    (package / "cli.py").write_text(Path(cli.__file__).read_text())
    probe = ("import sys, runpy\n"
             "sys.argv = ['casda'] + sys.argv[1:]\n"
             "try:\n"
             "    runpy.run_module('astroquery_casda_ext.cli', run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "heavy = ('astropy', 'numpy', 'requests', 'astroquery', 'pyvo', 'matplotlib', 'urllib3',\n"
             "         'keyring')\n"
             "print('heavy:', sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path)
    for args in (["--help"], ["cutouts", "--help"], ["spectra", "--help"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                              timeout=120, env=env, cwd=tmp_path)
        assert "Usage: casda" in done.stdout, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "heavy: []", args


@pytest.mark.parametrize("args", [
    ("cutouts", "609", "DEST", "--full-files", "--cutout-radius", "2arcmin"),
    ("images", "187.5", "-45", "DEST", "--full-files", "--channel", "1", "8"),
])
def test_cutting_options_beside_full_files_are_refused_before_sending(tmp_path, emulator, run, args):
    start = len(emulator.request_log)
    process = run(*[tmp_path / "d" if arg == "DEST" else arg for arg in args], "--quiet")
    assert process.returncode == cli.EXIT_USAGE and "--full-files" in process.stderr
    assert len(emulator.request_log) == start and not (tmp_path / "d").exists()
