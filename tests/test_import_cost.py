"""What importing the package loads: start-up is part of every script's and command's time.

Each check runs in a fresh interpreter.  The façade needs astroquery.query (and with it
pyvo's registry and astropy's tables: the floor of any `CasdaClass` script), but nothing
beyond what it uses: no progress bars, no pyarrow, no emulator.  The modules below the
façade (checksums, downloads) load neither astroquery.query nor pyvo, so the emulator,
process-pool workers and the command line's help start without them.
"""
import json
import subprocess
import sys

import pytest

HEAVY = ["astropy", "numpy", "astroquery.query", "pyvo", "pyvo.registry", "astropy.table", "tqdm", "pyarrow", "werkzeug",
         "astroquery_casda_ext.emulator", "astroquery_casda_ext.core"]


def loaded_after(statement):
    code = (f"import json, sys\n{statement}\n"
            f"print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_facade_loads_astroquery_but_no_bars_arrow_or_emulator():
    assert loaded_after("from astroquery_casda_ext import CasdaClass") == {
        "astropy", "numpy", "astroquery.query", "pyvo", "pyvo.registry", "astropy.table", "astroquery_casda_ext.core"}


@pytest.mark.parametrize("statement, allowed", [
    ("import astroquery_casda_ext", set()),
    ("import astroquery_casda_ext.checksum", set()),
    # the command line's module, which `casda --help` loads: click alone, no astropy (0.2-0.4 s)
    ("import astroquery_casda_ext.cli", set()),
    ("from astroquery_casda_ext import conf", {"astropy", "numpy"}),
    ("import astroquery_casda_ext.download.transfer", {"astropy", "numpy", "astropy.table"}),  # manifest rows
])
def test_modules_below_the_facade_start_without_astroquery_or_pyvo(statement, allowed):
    assert loaded_after(statement) == allowed


def test_the_facade_is_still_an_attribute_of_the_package():
    code = ("import astroquery_casda_ext as package\n"
            "assert 'CasdaClass' in dir(package) and package.Casda.__class__ is package.CasdaClass\n"
            "from astroquery_casda_ext import *\n"
            "assert Casda is package.Casda and conf is package.conf\n"
            "try:\n    package.nothing_here\n"
            "except AttributeError:\n    pass\nelse:\n    raise SystemExit(1)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
