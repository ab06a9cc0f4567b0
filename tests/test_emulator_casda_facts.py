"""The emulator against CASDA's own server tests and source (protocol reference, section 10).

One test per fact, over real HTTP; each names the CASDA file the fact comes from
(``vo`` = ``csiro-rds/casda_vo_tools``, ``da`` = ``csiro-rds/casda_data_access``).  The
CSV/TSV fact is tested with the TAP output formats (tests/test_emulator_tap.py).
"""
import io
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests
from astropy.io.votable import parse
from pyvo.io.uws import parse_job

DATA = Path(__file__).parent / "data"
UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
VOT = "{http://www.ivoa.net/xml/VOTable/v1.3}"
VS = "{http://www.ivoa.net/xml/VODataService/v1.1}"
XSI = "{http://www.w3.org/2001/XMLSchema-instance}"
#: TAP_SCHEMA datatypes (TAP 1.0, section 2.5).
TAP_TYPES = {"SMALLINT", "INTEGER", "BIGINT", "REAL", "DOUBLE", "TIMESTAMP", "CHAR", "VARCHAR", "BINARY",
             "VARBINARY", "POINT", "REGION", "CLOB", "BLOB", "BOOLEAN"}
#: UWS 4.1 ``ISO8601Format`` with ``displayTimeZone = false``, ``displayMilliseconds = false``.
UWS_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
OBSCORE_TOP2 = "SELECT TOP 2 obs_publisher_did FROM ivoa.obscore ORDER BY obs_publisher_did"


@pytest.fixture(autouse=True)
def _quick_jobs(emulator):
    emulator.set_options(job_phases=(("QUEUED", 0.01), ("EXECUTING", 0.01)))


def cube(emulator):
    return next(p for p in emulator.holdings.products if p.kind == "spectral")


def datalink(emulator, product_id):
    response = requests.get(emulator.url + "casda_vo_proxy/vo/datalink/links", params={"ID": product_id},
                            auth=(emulator.username, emulator.password), timeout=30)
    assert response.status_code == 200
    return response


def token(emulator, service):
    response = datalink(emulator, cube(emulator).product_id)
    table = parse(io.BytesIO(response.content)).get_first_table().to_table(use_names_over_ids=True)
    return next(str(row["authenticated_id_token"]) for row in table if row["service_def"] == service)


def soda_job(emulator, service="cutout_service"):
    response = requests.post(emulator.url + "casda_data_access/data/async",
                             data={"ID": token(emulator, service)}, allow_redirects=False, timeout=30)
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def tap_job(emulator, **params):
    response = requests.post(emulator.url + "casda_vo_tools/tap/async",
                             data={"REQUEST": "doQuery", "LANG": "ADQL", **params}, allow_redirects=False,
                             timeout=30)
    assert response.status_code == 303
    return response.headers["Location"]


def final_tap_job(job_url, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.get(job_url, timeout=30)
        if ET.fromstring(response.content).find(f"{UWS}phase").text in ("COMPLETED", "ERROR", "ABORTED"):
            return response
        time.sleep(0.02)
    raise AssertionError(f"{job_url} did not finish")


# --- vo TablesController.getColumn, TablesControllerTest.testMVCGetTables ----------------------------

def test_vosi_tables_describe_columns_with_tap_types_and_sizes(emulator):
    response = requests.get(emulator.url + "casda_vo_tools/tap/tables", timeout=30)
    columns = {}
    for table in ET.fromstring(response.content).iter("table"):
        for column in table.iter("column"):
            columns[table.find("name").text, column.find("name").text] = column.find("dataType")
    assert {data_type.get(f"{XSI}type") for data_type in columns.values()} == {"vs:TAPType"}
    assert {data_type.text for data_type in columns.values()} <= TAP_TYPES
    assert not any(data_type.get("arraysize") for data_type in columns.values())
    described = {key: (data_type.text, data_type.get("size")) for key, data_type in columns.items()}
    assert described["ivoa.obscore", "dataproduct_type"] == ("VARCHAR", "255")
    assert described["ivoa.obscore", "s_region"] == ("REGION", "200")
    assert described["ivoa.obscore", "s_ra"] == ("DOUBLE", None)
    assert described["ivoa.obscore", "access_estsize"] == ("BIGINT", None)
    assert described["ivoa.obscore", "calib_level"] == ("INTEGER", None)


def test_pyvo_reads_tap_typed_tables(emulator):
    import pyvo
    service = pyvo.dal.TAPService(emulator.url + "casda_vo_tools/tap")
    column = next(c for c in service.tables["ivoa.obscore"].columns if c.name == "dataproduct_type")
    assert (column.datatype.content, column.datatype.size) == ("VARCHAR", "255")


# --- vo TapUWService (setDefaultSerializer "text/xml"), UWS 4.1 XMLSerializer.getJob, ISO8601Format ------

def test_tap_job_document_is_text_xml_in_uws_41_order(emulator):
    job_url = tap_job(emulator, QUERY=OBSCORE_TOP2, PHASE="RUN")
    response = final_tap_job(job_url)
    assert response.headers["Content-Type"].split(";")[0] == "text/xml"
    job = ET.fromstring(response.content)
    assert [child.tag[len(UWS):] for child in job] == [
        "jobId", "ownerId", "phase", "quote", "startTime", "endTime", "executionDuration", "destruction",
        "parameters", "results"]
    assert job.find(f"{UWS}quote").get(f"{XSI}nil") == "true" and job.find(f"{UWS}quote").text is None
    for name in ("startTime", "endTime", "destruction"):
        assert UWS_TIME.fullmatch(job.find(f"{UWS}{name}").text), name
    # pyvo's UWS parser (what the client uses) reads zone-less times.
    parsed = parse_job(io.BytesIO(response.content))
    assert parsed.phase == "COMPLETED" and parsed.starttime is not None and parsed.quote is None
    for sub_document in ("parameters", "results"):
        response = requests.get(f"{job_url}/{sub_document}", timeout=30)
        assert response.headers["Content-Type"].startswith("text/xml")


def test_failing_tap_query_is_an_error_phase_with_a_message(emulator):
    response = final_tap_job(tap_job(emulator, QUERY="SELECT nothing FROM casda.no_such_table", PHASE="RUN"))
    assert response.headers["Content-Type"].split(";")[0] == "text/xml"
    job = ET.fromstring(response.content)
    assert [child.tag[len(UWS):] for child in job][-1] == "errorSummary"
    assert job.find(f"{UWS}phase").text == "ERROR"
    assert "no_such_table" in job.find(f"{UWS}errorSummary/{UWS}message").text
    assert parse_job(io.BytesIO(response.content)).errorsummary.message.content


# --- vo TapUWService and the recorded CASDA job documents (tests/data/tap_async_*.xml) ---------------

def _root_start_tag(document):
    """The job element's start tag as written (attribute order and all)."""
    return re.search(rb"<job [^>]*>", document).group()


def test_tap_job_root_declares_what_casdas_does(emulator):
    """UWS 4.1's ``XMLSerializer`` declares ``xmlns:xs`` and three schema locations."""
    recorded = (DATA / "tap_async_completed.xml").read_bytes()
    job_url = tap_job(emulator, QUERY=OBSCORE_TOP2, PHASE="RUN")
    assert _root_start_tag(final_tap_job(job_url).content) == _root_start_tag(recorded)
    for sub_document in ("parameters", "results"):
        body = requests.get(f"{job_url}/{sub_document}", timeout=30).content
        assert b'xmlns:xs="http://www.w3.org/2001/XMLSchema"' in body


def test_failing_tap_job_error_type_is_upper_case_fatal(emulator):
    """CASDA writes ``<errorSummary type="FATAL" ...>`` (tests/data/tap_async_error.xml)."""
    recorded = ET.parse(DATA / "tap_async_error.xml").getroot().find(f"{UWS}errorSummary")
    response = final_tap_job(tap_job(emulator, QUERY="SELECT nothing FROM casda.no_such_table", PHASE="RUN"))
    summary = ET.fromstring(response.content).find(f"{UWS}errorSummary")
    assert (summary.get("type"), summary.get("hasDetail")) == \
        (recorded.get("type"), recorded.get("hasDetail"))
    assert summary.get("type") == "FATAL"


# --- vo result/ResultsExtractor.getFieldValue (ESCAPE_XML11 + NumericEntityEscaper.above(0x7f)) ---------

@pytest.mark.parametrize("fmt, separator", [("csv", ","), ("tsv", "\t")])
def test_every_tap_cell_is_xml_escaped_csv_and_tsv_included(emulator, fmt, separator):
    query = ("SELECT TOP 1 'a<b & \"c\" ''d'' \u00e9 x' AS t, obs_publisher_did FROM ivoa.obscore "
             "ORDER BY obs_publisher_did")
    response = requests.get(emulator.url + "casda_vo_tools/tap/sync", timeout=30, params={
        "REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": fmt, "QUERY": query})
    assert response.status_code == 200
    header, row, end = response.text.split("\r\n")
    assert (header, end) == (f"t{separator}obs_publisher_did", "")
    # No raw quote is left in the cell, so CASDA's quoting rule does not fire on it.
    assert row == f"a&lt;b &amp; &quot;c&quot; &apos;d&apos; &#233; x{separator}cube-1001"


# --- vo siap1-fields.properties and the SIA2 stream writer ------------------------------------------------

def test_sia2_distance_field_is_casdas(emulator):
    response = requests.get(emulator.url + "casda_vo_tools/sia2/query", params={"POS": "CIRCLE 187.5 -45 1"},
                            timeout=30)
    assert re.search(r'<FIELD name="distance" ID="distance" datatype="double" unit="deg" '
                     r'ucd="pos.angDistance" ?>\s*<DESCRIPTION>The angular distance of the centre of the '
                     r"parent image from the requested position</DESCRIPTION>\s*</FIELD>", response.text)


# --- vo datalink/service.authenticated.released.xml -------------------------------------------------------

def test_datalink_meta_resources_have_casdas_descriptions_and_no_units_on_regions(emulator):
    root = ET.fromstring(datalink(emulator, cube(emulator).product_id).content)
    metas = {resource.get("ID"): resource for resource in root.iter(f"{VOT}RESOURCE")
             if resource.get("type") == "meta"}
    assert metas["async_service"].find(f"{VOT}DESCRIPTION").text == \
        "Asynchronous download of the file(s) to any server."
    assert metas["pawsey_async_service"].find(f"{VOT}DESCRIPTION").text == \
        "Asynchronous download of the file(s) to servers within the Pawsey Supercomputing Centre."
    for service in ("cutout_service", "spectrum_generation_service"):
        params = {param.get("name"): param for param in metas[service].iter(f"{VOT}PARAM")}
        assert params["CIRCLE"].get("unit") is None and params["POLYGON"].get("unit") is None
        assert (params["BAND"].get("unit"), params["CHANNEL"].get("unit")) == ("m", "pixel")


# --- da AsyncFunctionalTest.testSingleParameterChanges ---------------------------------------------------

def test_soda_accepts_a_range_with_descending_dec_bounds(emulator):
    job_url = soda_job(emulator)
    response = requests.post(job_url + "/parameters/pos", allow_redirects=False, timeout=30,
                             data={"value": "RANGE 135 136.1 -45.56 -46.23"})
    assert (response.status_code, response.headers["Location"], response.content) == (303, job_url, b"")
    listed = ET.fromstring(requests.get(job_url + "/parameters", timeout=30).content)
    assert {p.get("id"): p.text for p in listed}["pos"] == "RANGE 135 136.1 -45.56 -46.23"


# --- da AsyncFunctionalTest.testScheduleJob*, testAbort*, testCancel* ----------------------------

@pytest.mark.parametrize("how", ["RUN", "ABORT", "DELETE", "ACTION=DELETE"])
def test_soda_303s_have_an_empty_body_and_no_content_type(emulator, how):
    job_url = soda_job(emulator, "async_service")
    if how in ("RUN", "ABORT"):
        response = requests.post(job_url + "/phase", data={"PHASE": how}, allow_redirects=False, timeout=30)
    elif how == "DELETE":
        response = requests.delete(job_url, allow_redirects=False, timeout=30)
    else:
        response = requests.post(job_url, data={"ACTION": "DELETE"}, allow_redirects=False, timeout=30)
    assert response.status_code == 303 and response.content == b""
    assert "Content-Type" not in response.headers


# --- the client reads all of the above -------------------------------------------------------------------

def test_client_runs_async_tap_queries_on_casda_shaped_job_documents(emulator):
    from astroquery_casda_ext import CasdaClass
    from astroquery_casda_ext.errors import QueryError
    casda = CasdaClass(server=emulator.url)
    table = casda.query_tap(OBSCORE_TOP2, async_job=True)
    assert list(table["obs_publisher_did"]) == ["cube-1001", "cube-1002"]
    with pytest.raises(QueryError, match="no_such_table"):
        casda.query_tap("SELECT nothing FROM casda.no_such_table", async_job=True)
