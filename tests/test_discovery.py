"""Discovery: SIA2 payloads and results, TAP (sync and async) and the ADQL helpers.

Three layers: payloads (no server), CASDA's recorded documents (`tests/data/sia2_*.xml`,
`tap_*.xml` and astroquery's recordings) replayed through `responses`, and the emulator
over real HTTP.
"""
import pathlib
import re
import warnings
from urllib.parse import parse_qsl

import astroquery
import numpy as np
import pytest
import requests
import responses
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time
from astroquery.exceptions import MaxResultsWarning

from astroquery_casda_ext.credentials import Credentials, ProxyAuth
from astroquery_casda_ext.discovery import Discovery, parse_sia2
from astroquery_casda_ext.jobs import parse_job_document
from astroquery_casda_ext.endpoints import Endpoints
from astroquery_casda_ext.errors import (CasdaLoginError, InvalidInputError, InvalidRegionError,
                                         InvalidSpectralRangeError, InvalidTableError, JobTimeoutError,
                                         NotLoggedInError, QueryError, ServiceError)

DATA = pathlib.Path(__file__).parent / "data"
RECORDED = pathlib.Path(astroquery.__file__).parent / "casda" / "tests" / "data"
PROD = Endpoints.for_environment("prod")
TAP = PROD.tap_url
PROXY_TAP = PROD.proxy_tap_url
JOB = TAP + "/async/1678760469118A"
CASDA_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
OBSCORE_COLUMNS = ["dataproduct_type", "calib_level", "obs_collection", "obs_id", "obs_publisher_did",
                   "access_url", "access_format", "access_estsize", "target_name", "s_ra", "s_dec", "s_fov",
                   "s_region", "s_resolution", "t_min", "t_max", "t_exptime", "t_resolution", "em_min",
                   "em_max", "em_res_power", "o_ucd", "pol_states", "facility_name", "instrument_name",
                   "dataproduct_subtype", "em_ucd", "em_unit", "em_resolution", "s_resolution_min",
                   "s_resolution_max", "s_ucd", "s_unit", "obs_release_date", "quality_level", "thumbnail_id"]


def fixture(name):
    return (DATA / name).read_bytes()


@pytest.fixture
def discovery(fake_time):
    auth = ProxyAuth(Credentials("someone@example.org", "not-a-real-password"), PROD.vo_proxy)
    return Discovery(requests.Session(), PROD, auth=auth, sleep=fake_time.sleep, clock=fake_time.clock)


@pytest.fixture
def anonymous():
    return Discovery(requests.Session(), PROD)


@pytest.fixture
def mocked():
    with responses.RequestsMock() as mock:
        yield mock


def sent_form(call):
    body = call.request.body
    return dict(parse_qsl(body if isinstance(body, str) else body.decode()))


def sent_query(call):
    return sent_form(call)["QUERY"]


# --- SIA2 payloads ---------------------------------------------------------------------------

def test_payload_default_is_astroquerys_one_arcmin_cone(anonymous):
    assert anonymous.sia2_payload("22h15m38.2s -45d50m30.5s") == {
        "POS": "CIRCLE 333.9091666667 -45.8418055556 0.0166666667"}


def test_payload_every_parameter(anonymous):
    payload = anonymous.sia2_payload(
        ["333.9 -45.8", (10, 0)], radius=30 * u.arcsec, band=(1.3 * u.GHz, 1.4 * u.GHz),
        time=(Time("2020-01-01T00:00:00", scale="utc"), 59000.5), pol=["I", "V"],
        collection=["RACS", "The Rapid ASKAP Continuum Survey"], dataproduct_type="CUBE", maxrec=25)
    assert payload == {
        "POS": ["CIRCLE 333.9 -45.8 0.0083333333", "CIRCLE 10 0 0.0083333333"],
        "BAND": "0.21413747000000002 0.23060958307692309",
        "TIME": "58849 59000.5",
        "POL": ["I", "V"],
        "COLLECTION": ["RACS", "The Rapid ASKAP Continuum Survey"],
        "DPTYPE": "cube",
        "MAXREC": "25",
    }


def test_payload_box_polygon_and_open_band(anonymous):
    assert anonymous.sia2_payload("10 -60", width=1, height=2) == {"POS": "RANGE 9 11 -61 -59"}
    assert anonymous.sia2_payload("359.9 0", width=1, height=1) == {
        "POS": ["RANGE 359.4 360 -0.5 0.5", "RANGE 0 0.4 -0.5 0.5"]}
    assert anonymous.sia2_payload(polygon=[(10, -45), (11, -45), (11, -44)], band=(None, 21 * u.cm)) == {
        "POS": "POLYGON 10 -45 11 -45 11 -44", "BAND": "-Inf 0.21"}


def test_payload_velocity_band_and_single_time(anonymous):
    payload = anonymous.sia2_payload(band=(-50 * u.km / u.s, 50 * u.km / u.s),
                                     rest_frequency=1420.405751768 * u.MHz, time="2021-06-01T12:00:00")
    low, high = (float(x) for x in payload["BAND"].split())
    assert low < 0.21106114 < high
    assert payload["TIME"] == "59366.5"


@pytest.mark.parametrize("position", ["0 0", (0, 1e-9), (1e-8, -2.3e-6), "0 -90", (360, 0)])
def test_payload_numbers_are_never_exponents(anonymous, position):
    for key, value in anonymous.sia2_payload(position, radius=1e-6).items():
        parts = value.split(" ")
        assert all(CASDA_NUMBER.fullmatch(part) for part in parts[1:]), value


def test_payload_several_positions_are_several_pos_values(anonymous, tmp_path):
    sources = tmp_path / "sources.txt"
    sources.write_text("# ra dec\n10 -45\n20 -46\n30 -47\n")
    payload = anonymous.sia2_payload(sources, radius=0.1)
    assert payload["POS"] == ["CIRCLE 10 -45 0.1", "CIRCLE 20 -46 0.1", "CIRCLE 30 -47 0.1"]
    table = Table({"ra_deg_cont": [10.0], "dec_deg_cont": [-45.0]})
    assert anonymous.sia2_payload(table, radius=0.1) == {"POS": "CIRCLE 10 -45 0.1"}


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(coordinates="M31"), InvalidRegionError, "object name Sesame knows"),
    (dict(coordinates="not a place"), InvalidRegionError, "'not a place'"),
    (dict(coordinates="1 2", radius=-1 * u.deg), InvalidRegionError, "radius -1.0 deg must"),
    (dict(coordinates="1 2", radius=11 * u.deg), InvalidRegionError, "at most 10"),
    (dict(coordinates="1 2", radius=0), InvalidRegionError, "greater than 0"),
    (dict(coordinates="1 2", width=1), InvalidRegionError, "both width and height"),
    (dict(band=(1.3 * u.GHz, 22 * u.cm)), InvalidSpectralRangeError, "mixes"),
    (dict(band=(1 * u.kg, 2 * u.kg)), InvalidSpectralRangeError, "not a wavelength"),
    (dict(band=(-5 * u.km / u.s, 5 * u.km / u.s)), InvalidSpectralRangeError, "rest_frequency"),
    (dict(rest_frequency=1.4 * u.GHz), InvalidInputError, "rest_frequency"),
    (dict(time=("2020-01-01", None)), InvalidInputError, "no open ends"),
    (dict(time=(59001, 59000)), InvalidInputError, "start is after the end"),
    (dict(time="yesterday"), InvalidInputError, "'yesterday'"),
    (dict(time=[1, 2, 3]), InvalidInputError, "pair"),
    (dict(pol="RX"), InvalidSpectralRangeError, "RX"),
    (dict(collection=""), InvalidInputError, "collection"),
    (dict(collection=["RACS", 3]), InvalidInputError, "collection"),
    (dict(dataproduct_type="spectrum"), InvalidInputError, "'image' or 'cube'"),
    (dict(dataproduct_type="visibility"), InvalidInputError, "'visibility'"),
    (dict(maxrec=0), InvalidInputError, "maxrec 0"),
    (dict(maxrec=2.5), InvalidInputError, "maxrec 2.5"),
    (dict(maxrec=True), InvalidInputError, "maxrec True"),
])
def test_payload_bad_input_is_refused_before_sending(anonymous, kwargs, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        anonymous.sia2_payload(**kwargs)


def test_payload_errors_are_astroquery_and_builtin_errors(anonymous):
    from astroquery.exceptions import InvalidQueryError
    with pytest.raises(InvalidQueryError):
        anonymous.sia2_payload("1 2", radius=20)
    with pytest.raises(ValueError):
        anonymous.sia2_payload(dataproduct_type="catalogue")


# --- parse_sia2 on recorded documents --------------------------------------------------------

@pytest.mark.parametrize("path, rows", [
    (RECORDED / "cone.xml", 3), (RECORDED / "box.xml", 2), (RECORDED / "partial_unreleased.xml", 3),
    (DATA / "sia2_box.xml", 2),
])
def test_parse_sia2_astroquerys_recordings_keep_astroquerys_columns(path, rows):
    table = parse_sia2(path.read_bytes())
    assert isinstance(table, Table) and len(table) == rows
    assert table.colnames == OBSCORE_COLUMNS
    assert table["s_ra"].unit == u.deg and table["access_estsize"].unit == u.kbyte
    coords = SkyCoord(table["s_ra"], table["s_dec"])
    assert coords[0].separation(SkyCoord(333.16767306594, -45.302084636451, unit="deg")).arcsec < 1e-6


def test_parse_sia2_with_the_leading_distance_column():
    table = parse_sia2(fixture("sia2_cone_distance.xml"))
    assert table.colnames[0] == "distance" and table.colnames[1:] == OBSCORE_COLUMNS
    assert table["distance"].unit == u.deg
    assert list(table["obs_publisher_did"]) == ["cube-502", "cube-503", "cube-504"]
    expected = SkyCoord(333.9092, -45.8418, unit="deg").separation(SkyCoord(table["s_ra"], table["s_dec"]))
    assert np.allclose(table["distance"], expected.deg)


def test_parse_sia2_with_filename_and_obscore_11_columns():
    table = parse_sia2(fixture("sia2_obscore11.xml"))
    assert {"filename", "em_xel", "s_xel1", "s_xel2", "t_xel", "pol_xel"} <= set(table.colnames)
    assert table["filename"][3] == "image.restored.i.SB1934.cube.fits" and table["em_xel"][3] == 16416
    assert table["obs_release_date"][3] in ("", np.ma.masked)


@pytest.mark.parametrize("subtypes, expected", [
    ("spectral.restored.3d", ["cube-1170"]),
    (["cont.restored.t0", "CONT.NOISE.T0"], ["cube-502", "cube-504"]),
    ("cont.psfnat.t0", []),
])
def test_parse_sia2_filters_subtypes_client_side(subtypes, expected):
    table = parse_sia2(fixture("sia2_obscore11.xml"), dataproduct_subtype=subtypes)
    assert list(table["obs_publisher_did"]) == expected
    assert table.colnames[0] == "distance"


def test_parse_sia2_error_votable_raises_with_the_servers_text():
    with pytest.raises(QueryError) as err:
        parse_sia2(fixture("sia2_error.xml"))
    assert err.value.server_message == ("UsageFault: Invalid POS value CIRCLE 333.9 2.3e-06 0.5\n"
                                        "UsageFault: Invalid parameter name FOO")
    assert "Invalid POS value CIRCLE 333.9 2.3e-06 0.5" in str(err.value)


def test_parse_sia2_overflow_warns_astroquerys_max_results_warning():
    with pytest.warns(MaxResultsWarning, match="stopped at 2 rows"):
        table = parse_sia2(fixture("sia2_overflow.xml"))
    assert len(table) == 2


def test_parse_sia2_accepts_text_and_emits_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = parse_sia2(fixture("sia2_cone_distance.xml").decode())
    assert len(table) == 3


@pytest.mark.parametrize("content", [b"<html><body>Bad gateway</body></html>", b"", b"not xml"])
def test_parse_sia2_non_votable_is_a_service_error(content):
    with pytest.raises(ServiceError, match="not a VOTable"):
        parse_sia2(content)


def test_parse_sia2_subtype_filter_needs_the_column():
    with pytest.raises(InvalidTableError, match="dataproduct_subtype"):
        parse_sia2(fixture("tap_continuum_component.xml"), dataproduct_subtype="cont.restored.t0")


# --- UWS job documents ------------------------------------------------------------------------

def test_casdas_tap_job_documents_are_read_by_the_jobs_module():
    """TAP async jobs (UWS 1.0 as the default namespace) parse like SODA's prefixed ones."""
    completed = parse_job_document(fixture("tap_async_completed.xml"))
    assert completed.phase == "COMPLETED" and completed.error_summary is None
    assert dict(completed.results)["result"].startswith("https%3A%2F%2Fcasda.csiro.au%2F")
    error = parse_job_document(fixture("tap_async_error.xml"))
    assert error.phase == "ERROR" and "Could not finish query due to timeout." in error.error_summary
    assert parse_job_document(fixture("tap_async_pending.xml")).phase == "PENDING"


# --- TAP replayed through responses -----------------------------------------------------------

def test_tap_sync_sends_casdas_required_parameters(anonymous, mocked):
    mocked.add(responses.POST, TAP + "/sync", body=fixture("tap_continuum_component.xml"),
               content_type="application/x-votable+xml")
    table = anonymous.tap("SELECT * FROM casda.continuum_component WHERE first_sbid = 609", maxrec=100)
    form = sent_form(mocked.calls[0])
    assert form["REQUEST"] == "doQuery" and form["LANG"] == "ADQL" and form["MAXREC"] == "100"
    assert form["QUERY"] == "SELECT * FROM casda.continuum_component WHERE first_sbid = 609"
    assert "Authorization" not in mocked.calls[0].request.headers
    assert len(table) == 4 and table["flux_peak"].unit == u.mJy / u.beam
    assert list(table["component_id"][:2]) == ["SB609_component_1a", "SB609_component_2a"]
    coords = SkyCoord(table["ra_deg_cont"], table["dec_deg_cont"])
    assert coords[0].separation(SkyCoord("12:29:48.22 -45:14:32.5", unit=(u.hourangle, u.deg))).arcsec < 0.1


def test_tap_error_votable_becomes_query_error_with_the_servers_text(anonymous, mocked):
    mocked.add(responses.POST, TAP + "/sync", body=fixture("tap_error.xml"),
               content_type="application/x-votable+xml")
    with pytest.raises(QueryError) as err:
        anonymous.tap("SELECT * FROM casda.continuum_componet")
    assert err.value.server_message == (
        "Unable to interpret query 'Unknown table \"casda.continuum_componet\" ! [l.1 c.15 - l.1 c.39]'")
    assert err.value.url == TAP + "/sync"   # the request that was refused


def test_tap_overflow_warns_even_when_maxrec_was_reached(anonymous, mocked):
    mocked.add(responses.POST, TAP + "/sync", body=fixture("tap_continuum_component_overflow.xml"))
    with pytest.warns(MaxResultsWarning, match="stopped at 2 rows") as record:
        table = anonymous.tap("SELECT * FROM casda.continuum_component", maxrec=2)
    assert len(table) == 2
    assert [w.category for w in record] == [MaxResultsWarning]    # pyvo's own warning is replaced


@pytest.mark.parametrize("status, body, error, fragment", [
    (500, "<html>Internal error</html>", ServiceError, "HTTP 500"),
    (503, "down for maintenance", ServiceError, "HTTP 503.*down for maintenance"),
])
def test_tap_http_errors(anonymous, mocked, status, body, error, fragment):
    mocked.add(responses.POST, TAP + "/sync", status=status, body=body, content_type="text/plain")
    with pytest.raises(error, match=fragment) as err:
        anonymous.tap("SELECT TOP 1 * FROM ivoa.obscore")
    assert err.value.status == status


def test_tap_connection_failure_is_a_service_error(anonymous, mocked):
    mocked.add(responses.POST, TAP + "/sync", body=requests.ConnectionError("refused"))
    with pytest.raises(ServiceError, match="no answer from .*/tap/sync"):
        anonymous.tap("SELECT TOP 1 * FROM ivoa.obscore")


def test_authenticated_tap_sends_basic_auth_only_to_the_proxy(discovery, mocked):
    mocked.add(responses.POST, PROXY_TAP + "/sync", body=fixture("tap_continuum_component.xml"))
    mocked.add(responses.POST, TAP + "/sync", body=fixture("tap_continuum_component.xml"))
    discovery.tap("SELECT * FROM casda.continuum_component", authenticated=True)
    discovery.tap("SELECT * FROM casda.continuum_component")
    proxy_call, anonymous_call = mocked.calls
    assert proxy_call.request.url.startswith(PROXY_TAP)
    assert proxy_call.request.headers["Authorization"].startswith("Basic ")
    assert anonymous_call.request.url.startswith(TAP + "/")
    assert "Authorization" not in anonymous_call.request.headers


def test_authenticated_tap_rejected_credentials(discovery, mocked):
    mocked.add(responses.POST, PROXY_TAP + "/sync", status=401,
               headers={"WWW-Authenticate": 'Basic realm="ATNF OPAL Login"'})
    with pytest.raises(CasdaLoginError, match="401"):
        discovery.tap("SELECT TOP 1 * FROM ivoa.obscore", authenticated=True)


def test_authenticated_tap_needs_a_login(anonymous):
    with pytest.raises(NotLoggedInError, match="login"):
        anonymous.tap("SELECT TOP 1 * FROM ivoa.obscore", authenticated=True)


@pytest.mark.parametrize("query, maxrec", [("", None), ("   ", None), (None, None), ("SELECT 1", 0),
                                           ("SELECT 1", -5)])
def test_tap_rejects_bad_arguments_before_sending(anonymous, mocked, query, maxrec):
    with pytest.raises(InvalidInputError):
        anonymous.tap(query, maxrec=maxrec)
    assert not mocked.calls


def add_async_job(mocked, phases, final="tap_async_completed.xml"):
    """CASDA's async TAP: POST tap/async -> 303 to the job; phase; job GETs; result; DELETE."""
    mocked.add(responses.POST, TAP + "/async", status=303, headers={"Location": JOB})
    mocked.add(responses.GET, JOB, body=fixture("tap_async_pending.xml"))       # the redirect
    mocked.add(responses.POST, JOB + "/phase", status=303, headers={"Location": JOB})
    mocked.add(responses.GET, JOB, body=fixture("tap_async_pending.xml"))       # after RUN
    for name in phases:
        mocked.add(responses.GET, JOB, body=fixture(name))
    mocked.add(responses.GET, JOB, body=fixture(final))
    mocked.add(responses.DELETE, JOB, status=303, headers={"Location": TAP + "/async"})


def test_tap_async_waits_through_casdas_phases_and_reads_the_encoded_href(discovery, mocked, fake_time):
    add_async_job(mocked, ["tap_async_executing.xml", "tap_async_executing.xml"])
    mocked.add(responses.GET, JOB + "/results/result", body=fixture("tap_continuum_component.xml"))
    table = discovery.tap("SELECT * FROM casda.continuum_component WHERE first_sbid = 609", async_job=True,
                          maxrec=10)
    assert len(table) == 4 and table["flux_peak"].unit == u.mJy / u.beam
    create = mocked.calls[0]
    assert sent_form(create)["QUERY"].endswith("first_sbid = 609") and sent_form(create)["MAXREC"] == "10"
    run = next(c for c in mocked.calls if c.request.url.endswith("/phase"))
    assert sent_form(run) == {"PHASE": "RUN"}
    assert mocked.calls[-1].request.method == "DELETE"
    # followed by the one poll loop (PollPolicy: 0.2 s at first, growing with the wait); never sleeps for real
    assert fake_time.sleeps and all(0.2 <= pause <= discovery.tap_poll_cap for pause in fake_time.sleeps)


def test_tap_async_error_phase_raises_the_jobs_message(discovery, mocked):
    add_async_job(mocked, ["tap_async_executing.xml"], final="tap_async_error.xml")
    with pytest.raises(QueryError) as err:
        discovery.tap("SELECT * FROM casda.continuum_component", async_job=True)
    assert err.value.server_message == "Unable to run query 'Could not finish query due to timeout.'"
    assert mocked.calls[-1].request.method == "DELETE"


def test_tap_async_gives_up_after_the_timeout_and_deletes_the_job(discovery, mocked, fake_time):
    discovery.tap_async_timeout = 1.0
    mocked.add(responses.POST, TAP + "/async", status=303, headers={"Location": JOB})
    mocked.add(responses.GET, JOB, body=fixture("tap_async_executing.xml"))
    mocked.add(responses.POST, JOB + "/phase", status=303, headers={"Location": JOB})
    mocked.add(responses.DELETE, JOB, status=303, headers={"Location": TAP + "/async"})
    with pytest.raises(JobTimeoutError) as err:
        discovery.tap("SELECT * FROM casda.continuum_component", async_job=True)
    assert err.value.job_url == JOB and err.value.phase == "EXECUTING"
    assert sum(fake_time.sleeps) <= 1.0
    assert mocked.calls[-1].request.method == "DELETE"


def test_tap_async_without_a_job_redirect_is_a_service_error(discovery, mocked):
    mocked.add(responses.POST, TAP + "/async", body="<html>maintenance</html>", content_type="text/html")
    with pytest.raises(ServiceError, match="did not create a job"):
        discovery.tap("SELECT * FROM casda.continuum_component", async_job=True)


# --- ADQL helpers (query text, replayed) ------------------------------------------------------

@pytest.fixture
def tap_answers(mocked):
    mocked.add(responses.POST, TAP + "/sync", body=fixture("tap_continuum_component.xml"))
    return mocked


def test_images_of_sbid_query(anonymous, tap_answers):
    anonymous.images_of_sbid(609, subtypes=["cont.restored.t0", "spectral.restored.3d"])
    assert sent_query(tap_answers.calls[0]) == (
        "SELECT * FROM ivoa.obscore WHERE obs_id = '609' AND dataproduct_type IN ('cube') "
        "AND dataproduct_subtype IN ('cont.restored.t0', 'spectral.restored.3d') ORDER BY obs_publisher_did")
    anonymous.images_of_sbid("609", dataproduct_types=None)
    assert sent_query(tap_answers.calls[1]) == (
        "SELECT * FROM ivoa.obscore WHERE obs_id = '609' ORDER BY obs_publisher_did")


@pytest.mark.parametrize("sbid", ["609' OR '1'='1", -1, 0, 6.09, True, None, "six"])
def test_images_of_sbid_refuses_anything_but_an_sbid(anonymous, mocked, sbid):
    with pytest.raises(InvalidInputError, match="sbid"):
        anonymous.images_of_sbid(sbid)
    assert not mocked.calls


def test_helper_strings_are_quoted(anonymous, tap_answers):
    anonymous.images_of_sbid(609, subtypes="it's")
    assert "dataproduct_subtype IN ('it''s')" in sent_query(tap_answers.calls[0])


def test_components_by_sbid_with_a_flux_threshold(anonymous, tap_answers):
    table = anonymous.components(sbid=609, flux_min=500)
    assert sent_query(tap_answers.calls[0]) == (
        "SELECT * FROM casda.continuum_component WHERE first_sbid = 609 AND flux_peak > 500 "
        "ORDER BY flux_peak DESC")
    assert (table["flux_peak"] > 500).all() and table["flux_peak"].unit == u.mJy / u.beam


@pytest.mark.parametrize("flux, text", [(0.5 * u.Jy, "500"), (250 * u.mJy / u.beam, "250"),
                                        (1e-5, "0.00001")])
def test_components_flux_units(anonymous, tap_answers, flux, text):
    anonymous.components(sbid=609, flux_min=flux)
    assert f"flux_peak > {text} " in sent_query(tap_answers.calls[0])


def test_components_inside_an_image_footprint(anonymous, tap_answers):
    obscore = parse_sia2((RECORDED / "cone.xml").read_bytes())
    anonymous.components(image=obscore[0], maxrec=50)
    call = tap_answers.calls[0]
    assert sent_query(call) == (
        "SELECT * FROM casda.continuum_component WHERE CONTAINS(POINT('ICRS', ra_deg_cont, dec_deg_cont), "
        "POLYGON('ICRS', 339.7682058054, -49.4435800299, 326.6523378951, -49.5028673292, "
        "327.503836135, -40.8390370464, 338.7583703836, -40.7881987324)) = 1 ORDER BY flux_peak DESC")
    assert sent_form(call)["MAXREC"] == "50"


def test_components_inside_an_image_given_by_id(anonymous, mocked):
    mocked.add(responses.POST, TAP + "/sync", body=fixture("sia2_cone_distance.xml"))
    mocked.add(responses.POST, TAP + "/sync", body=fixture("tap_continuum_component.xml"))
    anonymous.components(image="cube-502", flux_min=1 * u.Jy)
    first, second = (sent_query(call) for call in mocked.calls)
    assert first == "SELECT s_region FROM ivoa.obscore WHERE obs_publisher_did = 'cube-502'"
    assert "POLYGON('ICRS', 339.7682058054, -49.4435800299, 326.6523378951" in second
    assert "flux_peak > 1000 " in second


@pytest.mark.parametrize("kwargs, fragment", [
    ({}, "sbid= or image="), (dict(flux_min=5), "sbid= or image="),
    (dict(sbid=609, flux_min="bright"), "flux_min"),
    (dict(sbid=609, flux_min=3 * u.s), "flux_min"), (dict(sbid=609, flux_min=float("nan")), "flux_min"),
    (dict(image={"s_region": "POLYGON ICRS 1 2 3 4); DROP TABLE x; --"}), "footprint"),
    (dict(image={"s_region": "BOX ICRS 1 2 3 4"}), "footprint"), (dict(image=42), "product id"),
])
def test_components_bad_input(anonymous, mocked, kwargs, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        anonymous.components(**kwargs)
    assert not mocked.calls


def test_products_containing_and_images_in_interval(anonymous, tap_answers):
    anonymous.products_containing("12h30m00s -45d00m00s", collection="RACS",
                                  dataproduct_type=["cube", "visibility"])
    assert sent_query(tap_answers.calls[0]) == (
        "SELECT * FROM ivoa.obscore WHERE CONTAINS(POINT('ICRS', 187.5, -45), s_region) = 1 "
        "AND obs_collection IN ('RACS') AND dataproduct_type IN ('cube', 'visibility') "
        "ORDER BY obs_publisher_did")
    anonymous.images_in_interval((187.5, -45.0), Time("2019-04-01"), "2019-05-01", radius="6 arcmin",
                                 subtypes="cont.restored.t0")
    assert sent_query(tap_answers.calls[1]) == (
        "SELECT * FROM ivoa.obscore WHERE INTERSECTS(CIRCLE('ICRS', 187.5, -45, 0.1), s_region) = 1 "
        "AND dataproduct_type IN ('cube', 'image') AND t_min >= 58574 AND t_max <= 58604 "
        "AND dataproduct_subtype IN ('cont.restored.t0') ORDER BY t_min")


def test_images_in_interval_bad_times(anonymous, mocked):
    with pytest.raises(InvalidInputError, match="after end"):
        anonymous.images_in_interval("1 2", 59000, 58000)
    with pytest.raises(InvalidInputError, match="'soon'"):
        anonymous.images_in_interval("1 2", "soon", 58000)
    assert not mocked.calls


def test_list_tables_and_columns_queries(anonymous, tap_answers):
    anonymous.list_tables()
    anonymous.columns("casda.continuum_component")
    assert [sent_query(c) for c in tap_answers.calls] == [
        "SELECT * FROM TAP_SCHEMA.tables ORDER BY table_name",
        "SELECT * FROM TAP_SCHEMA.columns WHERE table_name = 'casda.continuum_component'"]


@pytest.mark.parametrize("name", ["casda.continuum_component'; --", "ivoa.obscore x", "", 7, "a.b.c"])
def test_columns_validates_the_table_name_first(anonymous, mocked, name):
    with pytest.raises(InvalidInputError, match="schema.table"):
        anonymous.columns(name)
    assert not mocked.calls


# --- against the emulator, over HTTP ----------------------------------------------------------

@pytest.fixture
def emulated(emulator):
    session = requests.Session()
    endpoints = Endpoints.for_server(emulator.url)
    auth = ProxyAuth(Credentials(emulator.username, emulator.password), endpoints.vo_proxy)
    found = Discovery(session, endpoints, auth=auth)
    found.tap_poll_first = 0.02
    yield found
    session.close()


def test_emulator_images_of_sbid_609(emulated):
    images = emulated.images_of_sbid(609)
    assert len(images) >= 1
    assert set(images["obs_id"]) == {"609"} and set(images["dataproduct_type"]) == {"cube"}
    restored = emulated.images_of_sbid(609, subtypes="cont.restored.t0")
    assert 1 <= len(restored) < len(images) and set(restored["dataproduct_subtype"]) == {"cont.restored.t0"}
    coords = SkyCoord(images["s_ra"], images["s_dec"])
    assert coords.frame.name == "icrs"


def test_emulator_components_of_sbid_609_brighter_than_500_mjy(emulated):
    bright = emulated.components(sbid=609, flux_min=500)
    everything = emulated.components(sbid=609)
    assert 0 < len(bright) < len(everything)
    assert (bright["flux_peak"] > 500).all() and bright["flux_peak"].unit == u.mJy / u.beam
    assert list(bright["flux_peak"]) == sorted(bright["flux_peak"], reverse=True)
    SkyCoord(bright["ra_deg_cont"], bright["dec_deg_cont"])


def test_emulator_components_inside_an_image(emulated):
    image = emulated.images_of_sbid(609, subtypes="cont.restored.t0")[0]
    inside_row = emulated.components(image=image)
    inside_id = emulated.components(image=image["obs_publisher_did"])
    assert len(inside_row) == len(inside_id) > 0
    footprint = [float(x) for x in image["s_region"].split()[2:]]
    ras, decs = footprint[0::2], footprint[1::2]
    assert (inside_row["ra_deg_cont"] >= min(ras)).all() and (inside_row["ra_deg_cont"] <= max(ras)).all()
    assert (inside_row["dec_deg_cont"] >= min(decs)).all() and (inside_row["dec_deg_cont"] <= max(decs)).all()


def test_emulator_products_containing_and_images_in_interval(emulated):
    image = emulated.images_of_sbid(609, subtypes="cont.restored.t0")[0]
    centre = SkyCoord(image["s_ra"], image["s_dec"], unit="deg")
    containing = emulated.products_containing(centre)
    assert image["obs_publisher_did"] in list(containing["obs_publisher_did"])
    in_time = emulated.images_in_interval(centre, image["t_min"] - 1, image["t_max"] + 1)
    assert image["obs_publisher_did"] in list(in_time["obs_publisher_did"])
    assert list(in_time["t_min"]) == sorted(in_time["t_min"])
    assert len(emulated.images_in_interval(centre, image["t_max"] + 1, image["t_max"] + 2)) == 0


def test_emulator_sia2_cone_has_distance_box_does_not(emulated):
    image = emulated.images_of_sbid(609, subtypes="cont.restored.t0")[0]
    centre = (float(image["s_ra"]), float(image["s_dec"]))
    cone = emulated.query_sia2(emulated.sia2_payload(centre, radius=0.05))
    assert cone.colnames[0] == "distance" and image["obs_publisher_did"] in list(cone["obs_publisher_did"])
    assert list(cone["distance"]) == sorted(cone["distance"])
    box = emulated.query_sia2(emulated.sia2_payload(centre, width=0.1, height=0.1))
    assert "distance" not in box.colnames and len(box) == len(cone)
    two = emulated.query_sia2(emulated.sia2_payload([centre, (10.0, 10.0)], radius=0.05))
    assert "distance" not in two.colnames and len(two) == len(cone)
    restored = emulated.query_sia2(emulated.sia2_payload(centre, radius=0.05),
                                   dataproduct_subtype="cont.restored.t0")
    assert set(restored["dataproduct_subtype"]) == {"cont.restored.t0"}


def test_emulator_sia2_at_dec_zero_is_accepted(emulated):
    table = emulated.query_sia2(emulated.sia2_payload((1e-7, -2.3e-6), radius=0.01))
    assert len(table) == 0


def test_emulator_sia2_rejects_what_casda_rejects(emulated):
    with pytest.raises(QueryError, match="UsageFault"):
        emulated.query_sia2({"POS": "CIRCLE 333.9 2.3e-06 0.5"})


def test_emulator_sia2_overflow(emulated):
    with pytest.warns(MaxResultsWarning):
        table = emulated.query_sia2(emulated.sia2_payload(maxrec=1))
    assert len(table) == 1


@pytest.mark.parametrize("href_style", ["encoded", "plain"])
def test_emulator_tap_sync_and_async_agree(emulated, emulator, href_style):
    emulator.set_options(tap_result_href=href_style)
    query = "SELECT * FROM ivoa.obscore WHERE obs_id = '609' ORDER BY obs_publisher_did"
    sync = emulated.tap(query)
    later = emulated.tap(query, async_job=True)
    assert len(sync) > 0 and list(sync["obs_publisher_did"]) == list(later["obs_publisher_did"])
    assert later["s_ra"].unit == u.deg


def test_emulator_tap_errors_and_overflow(emulated):
    with pytest.raises(QueryError) as err:
        emulated.tap("SELECT * FROM casda.no_such_table")
    assert err.value.server_message
    with pytest.raises(QueryError):
        emulated.tap("SELECT * FROM casda.no_such_table", async_job=True)
    with pytest.warns(MaxResultsWarning):
        assert len(emulated.tap("SELECT * FROM ivoa.obscore", maxrec=2)) == 2


def test_emulator_tap_schema(emulated):
    tables = emulated.list_tables()
    assert {"ivoa.obscore", "casda.continuum_component"} <= set(tables["table_name"])
    columns = emulated.columns("casda.continuum_component")
    assert {"ra_deg_cont", "dec_deg_cont", "flux_peak", "first_sbid"} <= set(columns["column_name"])
    with pytest.raises(InvalidInputError, match="list_tables"):
        emulated.columns("casda.no_such_table")


def test_emulator_authenticated_tap_credentials_go_only_to_the_proxy(emulated, emulator):
    emulated.tap("SELECT TOP 1 * FROM ivoa.obscore", authenticated=True)
    emulated.tap("SELECT TOP 1 * FROM ivoa.obscore", async_job=True, authenticated=True)
    emulated.tap("SELECT TOP 1 * FROM ivoa.obscore")
    assert emulator.request_log
    for logged in emulator.request_log:
        on_proxy = logged.path.startswith("/casda_vo_proxy/")
        assert (logged.user == emulator.username) == on_proxy, (logged.method, logged.path, logged.user)


def test_emulator_authenticated_tap_bad_password(emulator):
    endpoints = Endpoints.for_server(emulator.url)
    auth = ProxyAuth(Credentials(emulator.username, "wrong-password"), endpoints.vo_proxy)
    with requests.Session() as session:
        with pytest.raises(CasdaLoginError):
            Discovery(session, endpoints, auth=auth).tap("SELECT TOP 1 * FROM ivoa.obscore",
                                                         authenticated=True)


def test_emulator_embargoed_components_need_a_login(emulated):
    anonymous = emulated.tap("SELECT COUNT(*) AS n FROM casda.continuum_component")
    member = emulated.tap("SELECT COUNT(*) AS n FROM casda.continuum_component", authenticated=True)
    assert member["n"][0] > anonymous["n"][0] > 0      # the built-in user is in the embargoed project


def test_emulator_query_string_is_what_the_payload_says(emulated, emulator):
    emulated.query_sia2(emulated.sia2_payload(["10 -45", "20 -46"], radius=0.1, band=(None, 0.3 * u.m)))
    (logged,) = [r for r in emulator.request_log if r.path.endswith("sia2/query")]
    assert logged.query["POS"] == ["CIRCLE 10 -45 0.1", "CIRCLE 20 -46 0.1"]
    assert logged.query["BAND"] == "-Inf 0.3"
