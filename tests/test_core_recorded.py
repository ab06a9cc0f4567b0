"""The `Casda` façade as a user sees it, replayed from recorded CASDA responses.

Every public method of `CasdaClass` runs against CASDA's production URLs, answered by
`responses` with the documents in ``tests/data/`` (CASDA's own formats, and astroquery's
recordings copied there, see ``tests/data/README.md``).  The point is what a user gets
back (types and values as ``astroquery.casda`` gives them) and what reaches which host;
the parsers themselves are tested in test_access.py, test_jobs.py and test_discovery.py.
"""
import base64
import pathlib
import re
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape as xml_escape

import astropy.units as u
import pytest
import requests
import responses
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astroquery.exceptions import LoginError, MaxResultsWarning

from astroquery_casda_ext import CasdaClass, conf
from astroquery_casda_ext.access import AccessReport, parse_datalink
from astroquery_casda_ext.checksum import ChecksumAccumulator, checksum_of_file, parse_checksum
from astroquery_casda_ext.discovery import Discovery
from astroquery_casda_ext.download import MANIFEST_NAME, Manifest
from astroquery_casda_ext.errors import (AccessDeniedWarning, CasdaLoginError, ChecksumMismatchError,
                                         InvalidInputError, JobFailedError, NoAccessError,
                                         NotLoggedInError, QueryError, ServiceError)
from astroquery_casda_ext.jobs import PollPolicy, SodaJob

DATA = pathlib.Path(__file__).parent / "data"

SIA2 = "https://casda.csiro.au/casda_vo_tools/sia2/query"
TAP = "https://casda.csiro.au/casda_vo_tools/tap"
PROXY_TAP = "https://data.csiro.au/casda_vo_proxy/vo/tap"
LOGIN = "https://data.csiro.au/casda_vo_proxy/vo/tap/availability"
DATALINK = "https://data.csiro.au/casda_vo_proxy/vo/datalink/links"
ASYNC = "https://casda.csiro.au/casda_data_access/data/async"
JOB_ID = "a7b53da7-1201-46ee-8718-0bf5b64dd5b8"
JOB = f"{ASYNC}/{JOB_ID}"
WEB = f"https://casda.csiro.au/download/web/{JOB_ID}/"
F1 = "observations-609-image_cubes-image.i.SB609.cont.taylor.0.restored.fits"
F2 = "observations-609-image_cubes-weights.i.SB609.cont.taylor.0.fits"

#: For jobs the test waits on itself: SodaJob.wait() without a policy does not read conf.
QUICK = PollPolicy(first=0.001, cap=0.001)

USER = "opal-user@example.org"
PASSWORD = "not-a-real-password"
NO_PERMISSION = "DefaultFault: Sorry, but you do not have permission to access this data product"
MISSED = ("UsageError: No data is available for the parameter combination: "
          "POS=CIRCLE 10.0 10.0 0.01,ID=cube-1002")


def fixture(name):
    return (DATA / name).read_bytes()


def checksum_text(body):
    accumulator = ChecksumAccumulator()
    accumulator.update(body)
    return str(accumulator.result())


def query_of(call):
    return dict(parse_qsl(urlsplit(call.request.url).query))


def form_pairs(call):
    body = call.request.body
    return parse_qsl(body if isinstance(body, str) else body.decode())


def ids_sent(call):
    """The product ids of a DataLink request, in order (repeated ID parameters)."""
    return [value for key, value in parse_qsl(urlsplit(call.request.url).query) if key == "ID"]


def sent_query(call):
    return dict(form_pairs(call))["QUERY"]


def recorded_info(name, info):
    """The value of a recorded document's INFO (what CASDA says it was asked)."""
    found = re.search(rf'<INFO name="{info}" value="([^"]*)"', fixture(name).decode())
    return found.group(1).replace("&amp;", "&").replace("&gt;", ">").replace("&lt;", "<")


def tokens_in(name, product_id, description):
    """The token of the recorded DataLink row with this description (what must be chosen)."""
    document = parse_datalink(fixture(name))
    return next(row.token for row in document.rows_for(product_id) if row.description.startswith(description))


def tap_answer(query, fields, rows):
    """A CASDA TAP answer: the recorded envelope of tap_continuum_component.xml (CASDA's
    service INFOs) around ``rows``; used where no TAP_SCHEMA answer was recorded."""
    head = fixture("tap_continuum_component.xml").decode().split('<INFO name="Query"')[0]
    arraysize = {"char": ' arraysize="*"'}
    declared = "".join(f'<FIELD name="{name}" ID="{name}" datatype="{datatype}"'
                       f'{arraysize.get(datatype, "")} />\n' for name, datatype in fields)
    data = "".join("<TR>" + "".join(f"<TD>{xml_escape(str(cell))}</TD>" for cell in row) + "</TR>\n"
                   for row in rows)
    return (f'{head}<INFO name="Query" value="{xml_escape(query, {chr(34): "&quot;"})}">Query submitted by '
            f'the user</INFO>\n<TABLE name="results">\n{declared}<DATA>\n<TABLEDATA>\n{data}</TABLEDATA>\n'
            "</DATA>\n</TABLE>\n</RESOURCE>\n</VOTABLE>\n")


def products(*ids):
    """A table of products as query_region returns them (ids and DataLink access URLs)."""
    return Table({"obs_publisher_did": list(ids), "access_url": [f"{DATALINK}?ID={pid}" for pid in ids]})


@pytest.fixture(autouse=True)
def instant_waits(monkeypatch):
    """Job waits and TAP async polls take milliseconds, not seconds.

    ``poll_interval`` is an integer item (as in astroquery.casda), so it cannot be 0.001; with
    ``poll_first`` at 1 ms the backoff (x1.5 per look) stays far below 1 s for these few looks.
    """
    monkeypatch.setattr(Discovery, "tap_poll_first", 0.001)
    with conf.set_temp("poll_first", 0.001), conf.set_temp("poll_interval", 1):
        yield


@pytest.fixture
def mocked():
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def casda():
    """A production client (default configuration), not logged in."""
    client = CasdaClass()
    assert client.endpoints.sia2_url == SIA2
    return client


@pytest.fixture
def logged_in(casda):
    """The production client after a successful (replayed) login."""
    with responses.RequestsMock() as mock:
        mock.get(LOGIN, body=fixture("availability.xml"), content_type="application/xml")
        casda.login(USER, password=PASSWORD)
    return casda


def serve_job(mocked, *documents, created=True, parameters=False):
    """CASDA's SODA exchange: create (303 to the job), read, [post the cutout's parameters (303)],
    RUN (303), then each read gets the next document (the last one repeats)."""
    if created:
        mocked.post(ASYNC, status=303, headers={"Location": JOB})
        if parameters:
            mocked.post(JOB + "/parameters", status=303, headers={"Location": JOB})
        mocked.post(JOB + "/phase", status=303, headers={"Location": JOB})
    for name in documents:
        mocked.get(JOB, body=fixture(name), content_type="application/xml")


def serve_file(mocked, url, body, checksum_url=None):
    mocked.get(url, body=body, headers={"Content-Length": str(len(body))})
    mocked.get(checksum_url or url + ".checksum", body=checksum_text(body))


# --- query_region / query_region_async ----------------------------------------------------------

def test_query_region_sends_what_casda_recorded_and_returns_its_rows(casda, mocked):
    mocked.get(SIA2, body=fixture("sia2_cone_distance.xml"))
    table = casda.query_region(SkyCoord(333.9092, -45.8418, unit="deg"), radius=0.5 * u.deg, cache=False)
    recorded = recorded_info("sia2_cone_distance.xml", "SIAP  query")
    assert query_of(mocked.calls[0]) == dict(parse_qsl(recorded))
    assert isinstance(table, Table)
    assert list(table["obs_publisher_did"]) == ["cube-502", "cube-503", "cube-504"]
    assert table["distance"].unit == u.deg
    assert SkyCoord(table["s_ra"], table["s_dec"])[0].ra.deg == pytest.approx(333.16767306594)


def test_query_region_dptype_and_maxrec_match_the_recorded_queries(casda, mocked):
    mocked.get(SIA2, body=fixture("sia2_obscore11.xml"))
    mocked.get(SIA2, body=fixture("sia2_overflow.xml"))
    centre = "22h15m38.208s -45d50m30.48s"
    cubes = casda.query_region(centre, radius=0.5 * u.deg, dataproduct_type="cube", cache=False)
    with pytest.warns(MaxResultsWarning, match="2 rows"):
        first_two = casda.query_region(centre, radius=0.5 * u.deg, maxrec=2, cache=False)
    for call, name in zip(mocked.calls, ("sia2_obscore11.xml", "sia2_overflow.xml")):
        assert query_of(call) == dict(parse_qsl(recorded_info(name, "SIAP  query")))
    assert "filename" in cubes.colnames and len(cubes) == 4
    assert len(first_two) == 2


def test_query_region_box_and_subtype_filter(casda, mocked):
    mocked.get(SIA2, body=fixture("sia2_box.xml"))
    mocked.get(SIA2, body=fixture("sia2_cone_distance.xml"))
    boxed = casda.query_region("333.9 -45.8", radius=None, width=0.6972 * u.deg, height=1 * u.deg,
                               cache=False)
    shape, *numbers = query_of(mocked.calls[0])["POS"].split()
    assert shape == "RANGE"
    assert [float(x) for x in numbers] == pytest.approx([333.4, 334.4, -46.3, -45.3], abs=1e-3)
    assert "distance" not in boxed.colnames and list(boxed["obs_publisher_did"]) == ["cube-502", "cube-504"]
    restored = casda.query_region("333.9092 -45.8418", radius=0.5 * u.deg,
                                  dataproduct_subtype="cont.restored.t0", cache=False)
    assert list(restored["obs_publisher_did"]) == ["cube-502"]


def test_query_region_error_document_raises_with_casdas_words(casda, mocked):
    mocked.get(SIA2, body=fixture("sia2_error.xml"))
    with pytest.raises(QueryError, match="UsageFault: Invalid POS value") as info:
        casda.query_region("333.9 0", radius=0.5 * u.deg, cache=False)
    assert "Invalid parameter name FOO" in info.value.server_message


def test_query_region_async_returns_the_raw_response(casda, mocked):
    mocked.get(SIA2, body=fixture("sia2_cone_distance.xml"))
    response = casda.query_region_async("333.9092 -45.8418", radius=0.5 * u.deg, cache=False)
    assert isinstance(response, requests.Response)
    assert response.status_code == 200 and response.content == fixture("sia2_cone_distance.xml")


def test_get_query_payload_sends_nothing(casda, mocked):
    payload = casda.query_region_async("333.9092 -45.8418", radius=0.5 * u.deg, get_query_payload=True)
    assert payload == {"POS": "CIRCLE 333.9092 -45.8418 0.5"}
    assert casda.query_region("333.9092 -45.8418", radius=0.5 * u.deg, get_query_payload=True) == payload
    assert len(mocked.calls) == 0


def test_cached_answer_is_reused_but_a_503_is_not(casda, mocked, tmp_path):
    casda.cache_location = tmp_path
    mocked.get(SIA2, status=503, body="Service Unavailable")
    mocked.get(SIA2, body=fixture("sia2_cone_distance.xml"))
    with conf.set_temp("request_retries", 0), pytest.raises(ServiceError, match="HTTP 503"):
        casda.query_region("333.9092 -45.8418", radius=0.5 * u.deg)
    first = casda.query_region("333.9092 -45.8418", radius=0.5 * u.deg)
    again = casda.query_region("333.9092 -45.8418", radius=0.5 * u.deg)
    assert len(mocked.calls) == 2        # the 503, then one real answer; the third came from the cache
    expected = ["cube-502", "cube-503", "cube-504"]
    assert list(again["obs_publisher_did"]) == list(first["obs_publisher_did"]) == expected


def test_sia2_never_gets_credentials(logged_in, mocked):
    mocked.get(SIA2, body=fixture("sia2_cone_distance.xml"))
    logged_in.query_region("333.9092 -45.8418", radius=0.5 * u.deg, cache=False)
    assert "Authorization" not in mocked.calls[0].request.headers


# --- query_tap and the ADQL helpers -------------------------------------------------------------
# CASDA's recorded VOTable answers: query_tap reads them with result_format="votable" (its default,
# when pyarrow is installed, asks for the FIELDs and then CASDA's CSV: see test_tap_scale.py).

def test_query_tap_returns_a_table_with_usable_units(casda, mocked):
    mocked.post(TAP + "/sync", body=fixture("tap_continuum_component.xml"))
    query = recorded_info("tap_continuum_component.xml", "Query")
    table = casda.query_tap(query, maxrec=10, result_format="votable")
    form = dict(form_pairs(mocked.calls[0]))
    assert (form["QUERY"], form["LANG"], form["REQUEST"], form["MAXREC"]) == (query, "ADQL", "doQuery", "10")
    assert isinstance(table, Table) and len(table) == 4
    assert table["flux_peak"].unit == u.mJy / u.beam and table["ra_deg_cont"].unit == u.deg
    assert list(table["component_id"][:2]) == ["SB609_component_1a", "SB609_component_2a"]


def test_query_tap_payload_error_and_overflow(casda, mocked):
    assert casda.query_tap("SELECT 1", maxrec=5, get_query_payload=True) == {
        "REQUEST": "doQuery", "LANG": "ADQL", "QUERY": "SELECT 1", "MAXREC": "5"}
    mocked.post(TAP + "/sync", body=fixture("tap_error.xml"))
    mocked.post(TAP + "/sync", body=fixture("tap_continuum_component_overflow.xml"))
    with pytest.raises(QueryError, match='Unknown table "casda.continuum_componet"'):
        casda.query_tap("SELECT * FROM casda.continuum_componet", result_format="votable")
    with pytest.warns(MaxResultsWarning):
        assert len(casda.query_tap("SELECT * FROM casda.continuum_component", maxrec=2,
                                   result_format="votable")) == 2


def test_query_tap_async_waits_and_reads_the_encoded_result_href(casda, mocked):
    job = TAP + "/async/1678760469118A"
    mocked.post(TAP + "/async", status=303, headers={"Location": job})
    mocked.get(job, body=fixture("tap_async_pending.xml"))
    mocked.post(job + "/phase", status=303, headers={"Location": job})
    mocked.get(job, body=fixture("tap_async_executing.xml"))
    mocked.get(job, body=fixture("tap_async_completed.xml"))
    mocked.get(job + "/results/result", body=fixture("tap_continuum_component.xml"))
    mocked.delete(job, status=303, headers={"Location": TAP + "/async"})
    table = casda.query_tap(recorded_info("tap_continuum_component.xml", "Query"), async_job=True,
                            result_format="votable")
    assert len(table) == 4 and table["flux_peak"].unit == u.mJy / u.beam
    assert mocked.calls[-1].request.method == "DELETE"   # CASDA keeps finished jobs otherwise


def test_query_tap_async_error_raises_the_jobs_message(casda, mocked):
    job = TAP + "/async/1678760469118A"
    mocked.post(TAP + "/async", status=303, headers={"Location": job})
    mocked.get(job, body=fixture("tap_async_pending.xml"))
    mocked.post(job + "/phase", status=303, headers={"Location": job})
    mocked.get(job, body=fixture("tap_async_error.xml"))
    mocked.delete(job, status=303, headers={"Location": TAP + "/async"})
    with pytest.raises(QueryError, match="Could not finish query due to timeout"):
        casda.query_tap("SELECT * FROM casda.continuum_component", async_job=True)


def test_logged_in_tap_goes_through_the_proxy_with_basic_auth(logged_in, mocked):
    mocked.post(PROXY_TAP + "/sync", body=fixture("tap_continuum_component.xml"))
    assert len(logged_in.query_tap("SELECT * FROM casda.continuum_component", result_format="votable")) == 4
    assert mocked.calls[0].request.headers["Authorization"].startswith("Basic ")


def test_list_tables_returns_tap_schema_rows(casda, mocked):
    query = "SELECT * FROM TAP_SCHEMA.tables ORDER BY table_name"
    rows = [("casda", "casda.continuum_component", "table", "Continuum component catalogue"),
            ("ivoa", "ivoa.obscore", "view", "ObsCore 1.1 view of CASDA's data products")]
    fields = [("schema_name", "char"), ("table_name", "char"), ("table_type", "char"),
              ("description", "char")]
    mocked.post(TAP + "/sync", body=tap_answer(query, fields, rows))
    tables = casda.list_tables()
    assert sent_query(mocked.calls[0]) == query
    assert isinstance(tables, Table)
    assert list(tables["table_name"]) == ["casda.continuum_component", "ivoa.obscore"]


def test_list_columns_returns_units_and_ucds_and_names_unknown_tables(casda, mocked):
    query = "SELECT * FROM TAP_SCHEMA.columns WHERE table_name = 'casda.continuum_component'"
    fields = [("table_name", "char"), ("column_name", "char"), ("unit", "char"), ("ucd", "char")]
    rows = [("casda.continuum_component", "flux_peak", "mJy/beam", "phot.flux.density;stat.max"),
            ("casda.continuum_component", "ra_deg_cont", "deg", "pos.eq.ra;meta.main")]
    mocked.post(TAP + "/sync", body=tap_answer(query, fields, rows))
    mocked.post(TAP + "/sync", body=tap_answer("no rows", fields, []))
    columns = casda.list_columns("casda.continuum_component")
    assert sent_query(mocked.calls[0]) == query
    assert dict(zip(columns["column_name"], columns["unit"])) == {"flux_peak": "mJy/beam",
                                                                  "ra_deg_cont": "deg"}
    with pytest.raises(InvalidInputError, match="list_tables"):
        casda.list_columns("casda.continuum_componet")


def test_query_sbid_images(casda, mocked):
    mocked.post(TAP + "/sync", body=fixture("sia2_obscore11.xml"))   # ObsCore rows, as CASDA's TAP has them
    images = casda.query_sbid_images(609)
    assert sent_query(mocked.calls[0]) == (
        "SELECT * FROM ivoa.obscore WHERE obs_id = '609' AND dataproduct_type IN ('cube') "
        "AND dataproduct_subtype IN ('cont.restored.t0') ORDER BY obs_publisher_did")
    assert isinstance(images, Table) and "cube-1170" in list(images["obs_publisher_did"])


def test_query_components_sends_the_recorded_query(casda, mocked):
    mocked.post(TAP + "/sync", body=fixture("tap_continuum_component.xml"))
    mocked.post(TAP + "/sync", body=fixture("tap_continuum_component.xml"))
    bright = casda.query_components(sbid=609, flux_min=500)
    assert sent_query(mocked.calls[0]) == recorded_info("tap_continuum_component.xml", "Query")
    assert (bright["flux_peak"] > 500).all()
    footprint = casda.query_components(image={"s_region": "POLYGON ICRS 186 -46 189 -46 189 -44 186 -44"},
                                       flux_min=1 * u.Jy, maxrec=3)
    assert sent_query(mocked.calls[1]) == (
        "SELECT * FROM casda.continuum_component WHERE CONTAINS(POINT('ICRS', ra_deg_cont, dec_deg_cont), "
        "POLYGON('ICRS', 186, -46, 189, -46, 189, -44, 186, -44)) = 1 AND flux_peak > 1000 "
        "ORDER BY flux_peak DESC")
    assert dict(form_pairs(mocked.calls[1]))["MAXREC"] == "3" and len(footprint) == 4


def test_query_products_at_and_images_in_interval(casda, mocked):
    mocked.post(TAP + "/sync", body=fixture("sia2_obscore11.xml"))
    mocked.post(TAP + "/sync", body=fixture("sia2_cone_distance.xml"))
    found = casda.query_products_at("22h15m38.208s -45d50m30.48s", collection="RACS")
    assert sent_query(mocked.calls[0]) == (
        "SELECT * FROM ivoa.obscore WHERE CONTAINS(POINT('ICRS', 333.9092, -45.8418), s_region) = 1 "
        "AND obs_collection IN ('RACS') ORDER BY obs_publisher_did")
    assert len(found) == 4
    epochs = casda.query_images_in_interval("333.9092 -45.8418", "2017-01-01", 58000)
    assert sent_query(mocked.calls[1]) == (
        "SELECT * FROM ivoa.obscore WHERE CONTAINS(POINT('ICRS', 333.9092, -45.8418), s_region) = 1 "
        "AND dataproduct_type IN ('cube', 'image') AND t_min >= 57754 AND t_max <= 58000 "
        "AND dataproduct_subtype IN ('cont.restored.t0') ORDER BY t_min")
    assert list(epochs["obs_publisher_did"]) == ["cube-502", "cube-503", "cube-504"]


def test_filter_out_unreleased_on_astroquerys_recording(casda, mocked):
    mocked.get(SIA2, body=fixture("astroquery_partial_unreleased.xml"))
    every = casda.query_region("333.9092 -45.8418", radius=0.5 * u.deg, cache=False)
    assert list(every["obs_release_date"]) == ["2017-08-02T03:51:19.728Z", "2218-01-02T16:51:00.728Z", ""]
    released = casda.filter_out_unreleased(every)
    assert isinstance(released, Table)
    assert list(released["obs_publisher_did"]) == ["cube-502"]   # as astroquery's own test expects


# --- login, logout ------------------------------------------------------------------------------

def test_login_sends_basic_auth_to_the_proxy_availability(casda, mocked):
    mocked.get(LOGIN, body=fixture("availability.xml"), content_type="application/xml")
    casda.login(USER, password=PASSWORD)
    assert casda.authenticated() is True and casda.USERNAME == USER
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert mocked.calls[0].request.headers["Authorization"] == expected
    assert PASSWORD not in repr(casda)


def test_login_rejected_with_401(casda, mocked):
    mocked.get(LOGIN, status=401, body="Bad credentials for ATNF OPAL Login",
               headers={"WWW-Authenticate": 'Basic realm="ATNF OPAL Login"'})
    with pytest.raises(CasdaLoginError, match="HTTP 401 Bad credentials for ATNF OPAL Login") as info:
        casda.login(USER, password=PASSWORD)
    assert isinstance(info.value, LoginError)        # what astroquery.casda users catch
    assert PASSWORD not in str(info.value)
    assert not casda.authenticated()
    with pytest.raises(NotLoggedInError):
        casda.stage_data(products("cube-1001"))
    assert len(mocked.calls) == 1


def test_logout_forgets_the_credentials(logged_in, mocked):
    logged_in.logout()
    assert not logged_in.authenticated()
    with pytest.raises(NotLoggedInError):
        logged_in.get_access_tokens(products("cube-1001"))
    mocked.post(TAP + "/sync", body=fixture("tap_continuum_component.xml"))
    logged_in.query_tap("SELECT * FROM casda.continuum_component", result_format="votable")
    assert mocked.calls[0].request.url.startswith(TAP + "/")      # the anonymous service again
    assert "Authorization" not in mocked.calls[0].request.headers


# --- get_access_tokens --------------------------------------------------------------------------

def test_get_access_tokens_takes_the_web_token_not_pawseys(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_old.xml"))
    report = logged_in.get_access_tokens(products("cube-244"))
    assert isinstance(report, AccessReport) and report.denied == {}
    (token,) = report.tokens
    assert token.token == tokens_in("datalink_old.xml", "cube-244", "Scripted file access via Web")
    assert token.token != tokens_in("datalink_old.xml", "cube-244", "Scripted file access via Pawsey")
    assert (token.product_id, token.service_url) == ("cube-244", ASYNC)
    assert query_of(mocked.calls[0]) == {"ID": "cube-244"}
    assert mocked.calls[0].request.headers["Authorization"].startswith("Basic ")


def test_get_access_tokens_reports_refusals(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_multi_denied.xml"))
    with pytest.warns(AccessDeniedWarning, match="cube-1002"):
        report = logged_in.get_access_tokens(products("cube-1001", "cube-1002", "cube-1003"),
                                             service="cutout_service")
    assert [token.product_id for token in report.tokens] == ["cube-1001", "cube-1003"]
    assert report.denied == {"cube-1002": NO_PERMISSION}


def test_get_access_tokens_needs_a_login(casda, mocked):
    with pytest.raises(NotLoggedInError):
        casda.get_access_tokens(products("cube-1001"))
    assert len(mocked.calls) == 0


# --- stage_data ---------------------------------------------------------------------------------

def test_stage_data_waits_through_every_phase_and_returns_astroquerys_list(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_multi.xml"))
    serve_job(mocked, "job_pending.xml", "job_queued.xml", "job_suspended.xml", "job_held.xml",
              "job_executing.xml", "job_completed_plain.xml")
    urls = logged_in.stage_data(products("cube-1001", "cube-1002"))
    assert urls == [WEB + F1, WEB + F1 + ".checksum", WEB + F2, WEB + F2 + ".checksum"]
    assert len([c for c in mocked.calls if c.request.method == "GET" and c.request.url == JOB]) == 6
    assert ids_sent(mocked.calls[0]) == ["cube-1001", "cube-1002"]      # one DataLink request
    create = next(c for c in mocked.calls if c.request.method == "POST" and c.request.url == ASYNC)
    web = [tokens_in("datalink_multi.xml", pid, "Scripted file access via Web")
           for pid in ("cube-1001", "cube-1002")]
    assert form_pairs(create) == [("ID", web[0]), ("ID", web[1])]   # Web tokens, never Pawsey's
    run = next(c for c in mocked.calls if c.request.url == JOB + "/phase")
    assert form_pairs(run) == [("PHASE", "RUN")]


def test_stage_data_on_astroquerys_recordings(logged_in, mocked):
    """astroquery.casda's own staging test flow (EXECUTING, SUSPENDED, COMPLETED): the same URLs."""
    mocked.get(DATALINK, body=fixture("astroquery_datalink.xml"))
    serve_job(mocked, "astroquery_run_job.xml", "astroquery_suspended_job.xml",
              "astroquery_completed_job.xml")
    urls = logged_in.stage_data(products("cube-244"), verbose=True)
    astroquerys = ["http://casda.csiro.au/download/web/111-000-111-000/askap_img.fits.checksum",
                   "http://casda.csiro.au/download/web/111-000-111-000/askap_img.fits"]
    assert urls == astroquerys        # in the job's order, as astroquery.casda lists them


def test_stage_data_uses_the_web_token_of_an_old_datalink(logged_in, mocked):
    """Old servers call the Web and the Pawsey rows both async_service (astroquery took Pawsey's)."""
    mocked.get(DATALINK, body=fixture("datalink_old.xml"))
    serve_job(mocked, "astroquery_run_job.xml", "astroquery_completed_job.xml")
    urls = logged_in.stage_data(products("cube-244"))
    create = next(c for c in mocked.calls if c.request.method == "POST" and c.request.url == ASYNC)
    web = tokens_in("datalink_old.xml", "cube-244", "Scripted file access via Web")
    assert form_pairs(create) == [("ID", web)]
    assert urls == ["http://casda.csiro.au/download/web/111-000-111-000/askap_img.fits.checksum",
                    "http://casda.csiro.au/download/web/111-000-111-000/askap_img.fits"]


def test_stage_data_decodes_percent_encoded_hrefs(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_multi.xml"))
    serve_job(mocked, "job_pending.xml", "job_completed_encoded.xml")
    urls = logged_in.stage_data(products("cube-1001", "cube-1002"))
    web = f"http://casda.csiro.au/download/web/{JOB_ID}/"
    assert urls == [web + F1 + ".checksum", web + F1, web + F2, web + F2 + ".checksum"]   # the job's order


def test_stage_data_keeps_presigned_urls_untouched(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_current.xml"))
    serve_job(mocked, "job_pending.xml", "job_completed_presigned.xml")
    urls = logged_in.stage_data(products("cube-1001"))
    hrefs = re.findall(r'xlink:href="([^"]+)"', fixture("job_completed_presigned.xml").decode())
    recorded = [href.replace("&amp;", "&") for href in hrefs]
    assert urls == recorded
    assert "%3B%20filename%3D%22" in urls[0]
    assert "X-Amz-Credential=c3fc3d2ab0b94ea7a3bd04fdbd5b8a52%2F" in urls[0]


def test_stage_data_error_raises_job_failed_error_with_the_summary(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_multi.xml"))
    serve_job(mocked, "job_pending.xml", "job_executing.xml", "job_error.xml")
    with pytest.raises(JobFailedError, match="None of the selected image cubes had data") as info:
        logged_in.stage_data(products("cube-1001", "cube-1002"))
    assert info.value.phase == "ERROR" and info.value.job_url == JOB


def test_stage_data_without_access_raises_and_creates_no_job(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_noaccess.xml"))
    with pytest.raises(NoAccessError, match="cube-1005") as info:
        logged_in.stage_data(products("cube-1005"))
    assert info.value.denied == {"cube-1005": NO_PERMISSION}
    assert [c.request.url.split("?")[0] for c in mocked.calls] == [DATALINK]


def test_stage_data_without_waiting_returns_the_job_to_resume_elsewhere(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_multi.xml"))
    serve_job(mocked, "job_pending.xml")
    jobs = logged_in.stage_data(products("cube-1001", "cube-1002"), wait=False)
    assert len(jobs) == 1 and isinstance(jobs[0], SodaJob)
    assert (jobs[0].url, jobs[0].phase) == (JOB, "PENDING")
    assert mocked.calls[-1].request.url == JOB + "/phase"       # started, not waited for
    serve_job(mocked, "job_suspended.xml", "job_completed_plain.xml", created=False)
    resumed = CasdaClass().load_job(jobs[0].url)              # a new session, no login
    assert resumed.phase == "SUSPENDED"
    assert resumed.wait(QUICK) == "COMPLETED"
    assert resumed.result_urls() == [WEB + F1, WEB + F1 + ".checksum", WEB + F2, WEB + F2 + ".checksum"]


def test_stage_data_of_nothing_sends_nothing(logged_in, mocked):
    assert logged_in.stage_data(Table(names=["obs_publisher_did"], dtype=[str])) == []
    assert len(mocked.calls) == 0


# --- cutout, spectra, cutout_table --------------------------------------------------------------

def test_cutout_is_one_job_with_every_position_as_repeated_circles(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_multi.xml"))
    serve_job(mocked, "job_pending_cutout.xml", "job_executing.xml", "job_completed_shuffled.xml",
              parameters=True)
    positions = SkyCoord([187.5, 187.7, 10.0], [-45.0, -45.2, 10.0], unit="deg")
    urls = logged_in.cutout(products("cube-1001", "cube-1002"), coordinates=positions, radius=36 * u.arcsec,
                            band=(0.2 * u.m, 0.21 * u.m))
    datalink_calls = [c for c in mocked.calls if c.request.url.startswith(DATALINK)]
    assert len(datalink_calls) == 1
    assert ids_sent(datalink_calls[0]) == ["cube-1001", "cube-1002"]
    (create,) = [c for c in mocked.calls if c.request.method == "POST" and c.request.url == ASYNC]
    cutout = [tokens_in("datalink_multi.xml", pid, "Scripted cut-out") for pid in ("cube-1001", "cube-1002")]
    assert form_pairs(create) == [("ID", token) for token in cutout]
    # as astroquery.casda: the regions and windows are posted to the new job's parameters
    (parameters,) = [c for c in mocked.calls if c.request.url == JOB + "/parameters"]
    sent = form_pairs(parameters)
    circles = [value for key, value in sent if key == "POS"]
    assert circles == ["CIRCLE 187.5 -45 0.01", "CIRCLE 187.7 -45.2 0.01", "CIRCLE 10 10 0.01"]
    assert [value for key, value in sent if key == "BAND"] == ["0.2 0.21"]
    assert len(urls) == 8 and not any("error-01" in url for url in urls)   # error files are no data
    assert urls[:3] == [WEB + "cutout-8-imagecube-1002.fits.checksum",      # the job's order
                        WEB + "cutout-7-imagecube-1001.fits.checksum", WEB + "cutout-7-imagecube-1001.fits"]
    assert sorted(urls[i] for i in range(8) if not urls[i].endswith(".checksum")) == sorted(
        urls[i].removesuffix(".checksum") for i in range(8) if urls[i].endswith(".checksum"))


def test_cutout_on_astroquerys_recordings(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("astroquery_datalink.xml"))
    serve_job(mocked, "astroquery_run_job.xml", "astroquery_suspended_job.xml", "astroquery_cutout_job.xml",
              parameters=True)
    urls = logged_in.cutout(products("cube-244"), coordinates=SkyCoord(333.9092, -45.8418, unit="deg"),
                            radius=30 * u.arcmin)
    create = next(c for c in mocked.calls if c.request.method == "POST" and c.request.url == ASYNC)
    assert form_pairs(create) == [("ID", "cube-244")]
    parameters = next(c for c in mocked.calls if c.request.url == JOB + "/parameters")
    assert form_pairs(parameters) == [("POS", "CIRCLE 333.9092 -45.8418 0.5")]   # what astroquery sends
    assert urls == ["http://casda.csiro.au/download/web/111-000-111-000/cutout.fits.checksum",
                    "http://casda.csiro.au/download/web/111-000-111-000/cutout.fits"]


def test_cutout_error_raises_job_failed_error(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_multi.xml"))
    serve_job(mocked, "job_pending_cutout.xml", "job_error.xml", parameters=True)
    with pytest.raises(JobFailedError, match="UsageError: None of the selected image cubes"):
        logged_in.cutout(products("cube-1001", "cube-1002"), coordinates="10 10", radius=36 * u.arcsec)


def test_cutout_table_labels_files_with_product_and_region(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_multi.xml"))
    serve_job(mocked, "job_pending_cutout.xml", "job_completed_shuffled.xml", parameters=True)
    mocked.get(WEB + "error-01.txt", body=MISSED)
    [job] = logged_in.cutout(products("cube-1001", "cube-1002"), coordinates=["187.5 -45.0", "10.0 10.0"],
                             radius=0.01 * u.deg, wait=False)
    assert job.wait(QUICK) == "COMPLETED"
    labels = logged_in.cutout_table(job)
    assert isinstance(labels, Table)
    by_result = {row["result_id"]: row for row in labels}
    assert "error-01" not in by_result
    # cube-1002's second region missed (the error file says so): its one file is the first region's
    assert (by_result["cutout-8-imagecube-1002"]["product_id"],
            by_result["cutout-8-imagecube-1002"]["region"]) == ("cube-1002", "CIRCLE 187.5 -45 0.01")
    assert by_result["cutout-8-imagecube-1002"]["url"] == WEB + "cutout-8-imagecube-1002.fits"
    assert "Authorization" not in mocked.calls[-1].request.headers   # the error file, fetched without it


def test_spectra_uses_the_spectrum_generation_token(logged_in, mocked):
    mocked.get(DATALINK, body=fixture("datalink_current.xml"))
    serve_job(mocked, "job_pending.xml", "job_executing.xml", "job_completed_shuffled.xml", parameters=True)
    urls = logged_in.spectra(products("cube-1001"), "187.5 -45.0", 18 * u.arcsec)
    create = next(c for c in mocked.calls if c.request.method == "POST" and c.request.url == ASYNC)
    token = tokens_in("datalink_current.xml", "cube-1001", "Scripted spectrum generation")
    assert form_pairs(create) == [("ID", token)]
    parameters = next(c for c in mocked.calls if c.request.url == JOB + "/parameters")
    assert form_pairs(parameters) == [("POS", "CIRCLE 187.5 -45 0.005")]
    assert WEB + "spectrum-3-imagecube-12.fits" in urls


def test_credentials_go_only_to_data_csiro_au(casda, mocked, tmp_path):
    """Login, DataLink: Basic auth (data.csiro.au); SODA and downloads (casda.csiro.au): none."""
    mocked.get(LOGIN, body=fixture("availability.xml"))
    mocked.get(DATALINK, body=fixture("datalink_multi.xml"))
    serve_job(mocked, "job_pending.xml", "job_completed_plain.xml")
    for name in (F1, F2):
        serve_file(mocked, WEB + name, name.encode() * 3)
    casda.login(USER, password=PASSWORD)
    casda.download_files(casda.stage_data(products("cube-1001", "cube-1002")), savedir=str(tmp_path))
    sent = {}
    for call in mocked.calls:
        host = urlsplit(call.request.url).hostname
        sent.setdefault(host, set()).add("Authorization" in call.request.headers)
    assert sent == {"data.csiro.au": {True}, "casda.csiro.au": {False}}


# --- download_files, download -------------------------------------------------------------------

def test_download_files_lands_verified_files(logged_in, mocked, tmp_path):
    mocked.get(DATALINK, body=fixture("datalink_multi.xml"))
    serve_job(mocked, "job_pending.xml", "job_completed_plain.xml")
    bodies = {F1: b"SIMPLE  = T / restored image" * 40, F2: b"SIMPLE  = T / weights" * 25}
    for name, body in bodies.items():
        serve_file(mocked, WEB + name, body)
    urls = logged_in.stage_data(products("cube-1001", "cube-1002"))
    paths = logged_in.download_files(urls, savedir=str(tmp_path))
    assert paths == [str(tmp_path / F1), str(tmp_path / (F1 + ".checksum")),
                     str(tmp_path / F2), str(tmp_path / (F2 + ".checksum"))]
    for name, body in bodies.items():
        assert (tmp_path / name).read_bytes() == body
        sidecar = (tmp_path / (name + ".checksum")).read_bytes()
        assert checksum_of_file(tmp_path / name)[1] == parse_checksum(sidecar)
    assert not list(tmp_path.glob("*.part"))
    downloads = [c for c in mocked.calls if "/download/" in c.request.url]
    assert len(downloads) == 4 and not any("Authorization" in c.request.headers for c in downloads)


def test_download_files_from_presigned_urls(logged_in, mocked, tmp_path):
    mocked.get(DATALINK, body=fixture("datalink_current.xml"))
    serve_job(mocked, "job_pending.xml", "job_completed_presigned.xml")
    urls = logged_in.stage_data(products("cube-1001"))
    body = b"presigned bytes " * 64
    serve_file(mocked, urls[0], body, checksum_url=urls[1])
    paths = logged_in.download_files(urls, savedir=str(tmp_path))
    assert paths == [str(tmp_path / F1), str(tmp_path / (F1 + ".checksum"))]
    assert (tmp_path / F1).read_bytes() == body
    served = [c.request.url for c in mocked.calls if "ingest.pawsey.org.au" in c.request.url]
    assert sorted(served) == sorted(urls)          # signatures sent exactly as CASDA gave them


def test_download_files_refuses_a_file_that_does_not_match_its_checksum(casda, mocked, tmp_path):
    mocked.get(WEB + F1, body=b"corrupted")
    mocked.get(WEB + F1 + ".checksum", body=checksum_text(b"the real bytes"))
    with pytest.raises(ChecksumMismatchError, match=F1):
        casda.download_files([WEB + F1, WEB + F1 + ".checksum"], savedir=str(tmp_path))
    assert not (tmp_path / F1).exists() and not (tmp_path / (F1 + ".part")).exists()


def test_download_a_job_returns_a_manifest_with_its_error_file(casda, mocked, tmp_path):
    serve_job(mocked, "job_completed_shuffled.xml", created=False)
    job = casda.load_job(JOB)
    names = ["cutout-7-imagecube-1001.fits", "cutout-8-imagecube-1002.fits", "spectrum-3-imagecube-12.fits",
             "observations-609-visibilities-scienceData.SB609.beam00.ms.tar"]
    for name in names:
        serve_file(mocked, WEB + name, name.encode() * 10)
    serve_file(mocked, WEB + "error-01.txt", MISSED.encode())
    manifest = casda.download(job, str(tmp_path))
    assert isinstance(manifest, Manifest) and manifest.ok
    assert sorted(manifest.paths) == sorted(str(tmp_path / name) for name in names)
    data = manifest.table[manifest.table["kind"] == "data"]
    assert set(data["checksum_status"]) == {"verified"}
    assert dict(zip(data["result_id"], data["product_id"]))["cutout-8-imagecube-1002"] == "cube-1002"
    (error,) = manifest.error_files
    assert error["result_id"] == "error-01" and error["message"] == MISSED
    assert (tmp_path / MANIFEST_NAME).exists()
    assert len(Manifest.read(tmp_path / MANIFEST_NAME)) == 5


def test_load_job_refuses_what_is_not_a_job_url(casda, mocked):
    with pytest.raises(InvalidInputError, match="not a CASDA SODA job URL"):
        casda.load_job("https://casda.csiro.au/casda_vo_tools/tap")
    assert len(mocked.calls) == 0
