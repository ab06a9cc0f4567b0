"""The emulator is an extra: without werkzeug and sqlglot the client still imports and queries,
and ``casda demo`` and ``python -m astroquery_casda_ext.emulator`` stop with one line naming
the install command.

The packages are hidden in a child process (``sys.modules[name] = None`` makes their import
fail as if they were not installed); the emulator it queries runs in this one.  The same
was checked by hand in a fresh venv with ``pip install -e .`` and no extras.
"""
import json
import subprocess
import sys
import textwrap

HIDDEN = ("werkzeug", "sqlglot")

CHILD = textwrap.dedent("""
    import contextlib, io, json, runpy, sys
    for name in {hidden!r}:
        sys.modules[name] = None          # as if not installed
    url, dest = sys.argv[1], sys.argv[2]
    from astroquery_casda_ext import CasdaClass
    rows = CasdaClass(server=url).query_tap(
        "SELECT TOP 3 obs_publisher_did FROM ivoa.obscore ORDER BY obs_publisher_did")
    report = {{"rows": [str(value) for value in rows["obs_publisher_did"]],
               "emulator_loaded": sorted(name for name in sys.modules
                                         if name.startswith("astroquery_casda_ext.emulator."))}}
    from astroquery_casda_ext.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        report["demo"] = [main(["demo", dest]), err.getvalue()]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_module("astroquery_casda_ext.emulator", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            report["module"] = [exc.code, err.getvalue()]
    print(json.dumps(report))
""").format(hidden=HIDDEN)


def test_client_without_the_emulator_extra(emulator, tmp_path):
    child = subprocess.run([sys.executable, "-c", CHILD, emulator.url, str(tmp_path / "demo")],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.splitlines()[-1])
    assert report["rows"] == ["cube-1001", "cube-1002", "cube-1003"]
    assert report["emulator_loaded"] == []
    install = "pip install 'astroquery_casda_ext[emulator]'"
    code, message = report["demo"]
    assert code == 2 and message.count("\n") == 1 and install in message
    assert message.startswith("casda: error: the CASDA emulator needs werkzeug and sqlglot")
    code, message = report["module"]
    assert code == 2 and message.count("\n") == 1 and install in message
