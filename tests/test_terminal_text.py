"""Server text on the terminal: control characters escaped, never obeyed.

A server (or a neighbour's lock file) can put ESC sequences (clear screen, window title,
OSC 8 links), C1 controls (CSI ``\\x9b``), carriage returns and bidirectional overrides into
text the command line prints.  Every path prints it through ``errors.plain_text``: error
lines, warnings, narration and log lines.  Over real HTTP on 127.0.0.1.
"""
import logging
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from astroquery_casda_ext import cli, writer
from astroquery_casda_ext.download import MANIFEST_NAME, Manifest
from astroquery_casda_ext.errors import plain_text

pytestmark = pytest.mark.matrix("security")

HOSTILE = "bad \x1b[2J\x1b]0;pwned\x07 query \x9b31m \r\u202eevil\u2028 \x00end"
#: What no line printed may hold: C0 but tab and newline, DEL, C1, bidi overrides, separators.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


@pytest.fixture
def hostile_server():
    """Answers every GET with 403 and ``HOSTILE`` as its text/plain body."""
    body = HOSTILE.encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(403)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for serve_forever's next poll: 0.5 s each time by default
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_plain_text_escapes_every_control_and_keeps_the_words():
    shown = plain_text(HOSTILE)
    assert not RAW_CONTROL.search(shown)
    assert shown == ("bad \\x1b[2J\\x1b]0;pwned\\x07 query \\x9b31m \\r\\u202eevil\\u2028 \\x00end")
    assert plain_text("tab\tand\nnewline, café, 東京") == "tab\tand\nnewline, café, 東京"
    assert plain_text(None) is None


def test_a_servers_error_text_reaches_the_error_line_escaped(hostile_server, tmp_path, capsys):
    started = time.monotonic()
    code = cli.main(["download", hostile_server + "/d/a.fits", str(tmp_path / "dest")])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == cli.EXIT_DOWNLOAD and elapsed < 30
    line = next(line for line in err.splitlines() if line.startswith("casda: error:"))
    assert "HTTP 403" in line and "pwned" in line and "\\x1b[2J" in line and "\\x9b31m" in line
    assert not RAW_CONTROL.search(err)
    assert sorted(path.name for path in (tmp_path / "dest").iterdir()) == [MANIFEST_NAME]
    row = Manifest.read(tmp_path / "dest" / MANIFEST_NAME).table[0]     # readable, the text kept escaped
    assert row["status"] == "ERROR" and "pwned" in row["message"] and not RAW_CONTROL.search(row["message"])


def test_a_lock_holders_text_is_escaped_in_the_busy_error(tmp_path):
    """The folder lock's text is written by whoever holds it: shown, but not obeyed."""
    dest = tmp_path / "dest"
    dest.mkdir()
    root = str(Path(writer.__file__).parent.parent)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\nfrom astroquery_casda_ext.writer import FolderLock\n"
         "lock = FolderLock(sys.argv[1]); lock.acquire()\n"
         "os.write(lock._fd, sys.argv[2].encode())\nprint('held', flush=True)\ntime.sleep(30)\n",
         str(dest), "\x1b[2J\x1b]0;owned\x07 holder"], stdout=subprocess.PIPE, env={"PYTHONPATH": root})
    try:
        assert holder.stdout.readline().strip() == b"held"
        done = subprocess.run([sys.executable, "-m", "astroquery_casda_ext.cli", "download",
                               "http://127.0.0.1:9/d/a.fits", str(dest), "--no-wait"],
                              capture_output=True, timeout=60, env={"PYTHONPATH": root})
    finally:
        holder.kill()
        holder.wait()
    err = done.stderr.decode("utf-8")
    assert done.returncode == cli.EXIT_DOWNLOAD
    assert "another download is writing into" in err and "\\x1b]0;owned\\x07 holder" in err
    assert not RAW_CONTROL.search(err)


def test_log_lines_and_warnings_of_the_command_line_are_escaped(capsys):
    options = cli.Options(None, None, None, quiet=False, json_mode=False, verbose=True, debug=False)
    with cli._logging_for(options):
        logging.getLogger("astroquery_casda_ext.download").warning("server said %s", HOSTILE)
    cli._show_warning(UserWarning(f"CASDA says: {HOSTILE}"), UserWarning, "x.py", 1)
    err = capsys.readouterr().err
    assert "server said bad \\x1b[2J" in err and "casda: warning: CASDA says: bad \\x1b[2J" in err
    assert not RAW_CONTROL.search(err)


def test_the_packages_log_records_are_escaped_for_any_handler(caplog):
    """Outside the command line too (a notebook, a user's handler): every module logs through
    ``errors.package_logger``, whose filter escapes the message before any handler sees it."""
    from astroquery_casda_ext import jobs
    caplog.set_level(logging.INFO)
    jobs.log.warning("job %s is in phase %s", "https://x/1", HOSTILE)
    assert caplog.records[-1].getMessage() == f"job https://x/1 is in phase {plain_text(HOSTILE)}"
    assert not RAW_CONTROL.search(caplog.text)


def test_every_module_logs_through_the_escaping_logger():
    package = Path(writer.__file__).parent
    own = re.compile(r"^\w*log\w* = logging\.getLogger\(", re.MULTILINE)     # a module's own logger
    bare = [str(path.relative_to(package)) for path in package.rglob("*.py")
            if "emulator" not in path.parts and own.search(path.read_text(encoding="utf-8"))]
    assert bare == []
    uses = [path for path in package.rglob("*.py") if "package_logger(" in path.read_text(encoding="utf-8")]
    assert len(uses) >= 7
