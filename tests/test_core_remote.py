"""The façade against the real CASDA (production).

Run with ``pytest --remote-data=any tests/test_core_remote.py``.  Discovery needs no account;
data access reads an OPAL login from ``CASDA_USER`` and ``CASDA_PASSWORD``.  The product ids
are public ones astroquery's own remote tests use.
"""
import os

import astropy.units as u
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table

from astroquery_casda_ext import CasdaClass
from astroquery_casda_ext.checksum import checksum_of_file, parse_checksum

pytestmark = pytest.mark.remote_data

RACS_FIELD = SkyCoord("22h15m38.2s -45d50m30.5s")


@pytest.fixture
def logged_in():
    """A production client logged in from CASDA_USER / CASDA_PASSWORD (fails clearly without)."""
    password = os.environ.get("CASDA_PASSWORD") or os.environ.get("CASDA_PASSWD")
    if not os.environ.get("CASDA_USER") or not password:
        pytest.fail("set CASDA_USER and CASDA_PASSWORD to an OPAL account to run the data tests")
    casda = CasdaClass()
    casda.login()
    return casda


def test_query_region_finds_products():
    table = CasdaClass().query_region(RACS_FIELD, radius=0.5 * u.arcmin, cache=False)
    assert len(table) > 1
    for name in ("dataproduct_type", "obs_id", "access_url", "access_format", "obs_release_date"):
        assert name in table.colnames


def test_query_region_at_zero_declination():
    """astroquery issue #3376: Dec = 0 must be sent in fixed point."""
    table = CasdaClass().query_region(SkyCoord(10.0, 0.0, unit="deg"), radius=1 * u.deg, cache=False)
    assert isinstance(table, Table)


def test_tap_catalogue_query():
    table = CasdaClass().query_tap("SELECT TOP 5 component_name, flux_peak FROM casda.continuum_component")
    assert len(table) == 5


def test_stage_and_download_verified(logged_in, tmp_path):
    table = Table({"obs_publisher_did": ["cube-1262"]})
    urls = logged_in.stage_data(table, poll_interval=5)
    assert len(urls) == 2 and urls[1].endswith(".checksum")
    paths = logged_in.download_files(urls, savedir=tmp_path)
    data = [p for p in paths if not p.endswith(".checksum")][0]
    assert checksum_of_file(data)[1] == parse_checksum(open(data + ".checksum").read())


def test_cutout_of_two_positions_is_one_job(logged_in):
    table = Table({"obs_publisher_did": ["cube-44705"]})
    positions = SkyCoord([196.49583333, 196.6], [-62.7, -62.75], unit="deg")
    [job] = logged_in.cutout(table, coordinates=positions, radius=5 * u.arcmin, wait=False)
    job.wait()
    names = [f.url.rsplit("/", 1)[-1].split("?")[0] for f in job.result_files()]
    assert len(names) == 2 and all("imagecube-44705" in name for name in names)
