"""The Sphinx documentation builds without a single warning (``-W``), and every
cross-reference resolves (``-n``, nitpicky; inventories come from docs/_intersphinx)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: ~30 s: started first under pytest-xdist (see conftest.py).
pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_docs_build_without_warnings(tmp_path):
    # Built from a copy without the pages sphinx-automodapi generates (docs/api/): pages left
    # there by an earlier build name modules that may since have moved, and would fail it.
    source = tmp_path / "docs"
    shutil.copytree(DOCS, source, ignore=shutil.ignore_patterns("api", "_build", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(source), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reference target not found" not in result.stderr
    assert (tmp_path / "html" / "api.html").exists()
    # intersphinx links point at the projects' documentation, from the inventories in the repository
    page = (tmp_path / "html" / "api" / "astroquery_casda_ext.CasdaClass.html").read_text()
    for url in ("https://docs.astropy.org/en/stable/api/astropy.table.Table.html#astropy.table.Table",
                "https://requests.readthedocs.io/en/latest/api/#requests.Response",
                "https://astroquery.readthedocs.io/en/latest/api/astroquery.query.QueryWithLogin.html"):
        assert url in page, url
