"""The emulator's TAP service (protocol §8): sync rules and errors, formats, MAXREC, embargo,
async UWS jobs, VOSI documents, and pyvo driving it over real HTTP."""
import io
import re
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

import pytest
import pyvo
import requests
from astropy.io.votable import parse_single_table

from astroquery_casda_ext.emulator import ManualClock
from astroquery_casda_ext.emulator.java_formats import java_double, java_float
from astroquery_casda_ext.emulator.result_writers import xml_escape

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
VOT = "{http://www.ivoa.net/xml/VOTable/v1.3}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
OBSCORE_TOP2 = "SELECT TOP 2 obs_publisher_did, s_ra, access_url FROM ivoa.obscore"
EMBARGOED_COUNT = "SELECT COUNT(*) AS n FROM casda.continuum_component WHERE project_id = 'AS199'"


def tap_url(emulator, path="sync", proxy=False):
    base = "casda_vo_proxy/vo/" if proxy else "casda_vo_tools/"
    return emulator.url + base + "tap/" + path


def sync(emulator, method="GET", auth=None, proxy=False, **params):
    params = {"REQUEST": "doQuery", "LANG": "ADQL", **params}
    params = {name: value for name, value in params.items() if value is not None}
    send = requests.get if method == "GET" else requests.post
    key = "params" if method == "GET" else "data"
    return send(tap_url(emulator, proxy=proxy), timeout=30, auth=auth, **{key: params})


def error_text(response):
    """The QUERY_STATUS=ERROR text of a CASDA error VOTable (and checks its shape)."""
    root = ET.fromstring(response.content)
    resource = root.find(f"{VOT}RESOURCE")
    assert resource.get("name") == "CASDA TAP Result"
    info = resource.find(f"{VOT}INFO")
    assert (info.get("name"), info.get("value")) == ("QUERY_STATUS", "ERROR")
    assert resource.find(f"{VOT}TABLE") is None
    return info.text


def votable(response):
    return parse_single_table(io.BytesIO(response.content)).to_table()


# --- sync: the rules of REQUEST, LANG, VERSION, QUERY ---------------------------------------------


def test_sync_query_returns_casda_shaped_votable(emulator):
    response = sync(emulator, QUERY=OBSCORE_TOP2)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-votable+xml"
    assert response.headers["Content-Disposition"] == 'attachment; filename="result.xml"'
    text = response.text
    stylesheet = f"<?xml-stylesheet href='{emulator.url}casda_vo_tools/votable.xsl' type='text/xsl'?>"
    assert text.startswith('<?xml version="1.0" encoding="utf-8"?>\r\n' + stylesheet)
    root = ET.fromstring(response.content)
    resource = root.find(f"{VOT}RESOURCE")
    assert resource.get("name") == "CASDA TAP Result"
    names = [info.get("name") for info in resource.findall(f"{VOT}INFO")]
    assert names == ["QUERY_STATUS", "Instrument", "Server", "Service Short Name", "Service Title",
                     "Identifier", "Service Publisher", "Further Information", "Contact Person", "Copyright",
                     "Query", "Execution Time", "Datetime Requested", "Table Name", "Table Description",
                     "Table Long Description"]
    assert resource.find(f"{VOT}INFO[@name='Query']").get("value") == OBSCORE_TOP2
    assert resource.find(f"{VOT}INFO[@name='Table Name']").get("value") == "ivoa.obscore"
    assert re.search(r'<INFO name="Datetime Requested" value="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">', text)
    assert list(votable(response)["obs_publisher_did"]) == ["cube-1001", "cube-1002"]


def test_post_works_like_get(emulator):
    assert votable(sync(emulator, method="POST", QUERY=OBSCORE_TOP2))["obs_publisher_did"][0] == "cube-1001"


@pytest.mark.parametrize("request_value, message", [
    (None, "Missing REQUEST paramater."),
    ("doquery", "Unsupported request: doquery"),
    ("DOQUERY", "Unsupported request: DOQUERY"),
])
def test_request_must_be_doquery_exactly(emulator, request_value, message):
    response = sync(emulator, REQUEST=request_value, QUERY=OBSCORE_TOP2)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-votable+xml"
    assert error_text(response) == message


def test_get_capabilities_request_redirects_to_capabilities(emulator):
    response = requests.get(tap_url(emulator), params={"REQUEST": "getCapabilities"}, allow_redirects=False,
                            timeout=10)
    assert response.status_code == 302
    assert response.headers["Location"] == tap_url(emulator, "capabilities")


@pytest.mark.parametrize("lang, message", [
    (None, "Unknown query language: null"),
    ("SQL", "Unknown query language: SQL"),
    ("adql", "Unknown query language: adql"),
])
def test_lang_must_be_adql(emulator, lang, message):
    assert error_text(sync(emulator, LANG=lang, QUERY=OBSCORE_TOP2)) == message


def test_adql_2_0_and_lower_case_parameter_names_are_accepted(emulator):
    response = requests.get(tap_url(emulator), timeout=10,
                            params={"request": "doQuery", "lang": "ADQL-2.0", "query": OBSCORE_TOP2})
    assert len(votable(response)) == 2


def test_version_must_be_1_0(emulator):
    assert len(votable(sync(emulator, VERSION="1.0", QUERY=OBSCORE_TOP2))) == 2
    assert error_text(sync(emulator, VERSION="1.1", QUERY=OBSCORE_TOP2)) == "Unsupported TAP version: 1.1"


def test_missing_query_is_reported(emulator):
    assert error_text(sync(emulator)) == "Missing QUERY parameter"


def test_adql_errors_come_back_as_http_200_votables(emulator):
    response = sync(emulator, QUERY="SELECT nothing FROM casda.no_such_table")
    assert response.status_code == 200
    assert "no_such_table" in error_text(response)


# --- sync: formats and MAXREC ------------------------------------------------------------------


@pytest.mark.parametrize("fmt, content_type, filename", [
    (None, "application/x-votable+xml", "result.xml"),
    ("votable", "application/x-votable+xml", "result.xml"),
    ("VOTable", "application/x-votable+xml", "result.xml"),
    ("application/x-votable+xml", "application/x-votable+xml", "result.xml"),
    ("text/xml", "text/xml", "result.xml"),
    ("csv", "text/csv;header=present", "result.csv"),
    ("text/csv", "text/csv;header=present", "result.csv"),
    ("tsv", "text/tab-separated-values", "result.tsv"),
    ("text/tab-separated-values", "text/tab-separated-values", "result.tsv"),
])
def test_format_aliases_set_type_and_file_name(emulator, fmt, content_type, filename):
    response = sync(emulator, FORMAT=fmt, QUERY=OBSCORE_TOP2)
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Content-Disposition"] == f'attachment; filename="{filename}"'


def test_unknown_format_is_an_error_without_a_file_name(emulator):
    response = sync(emulator, FORMAT="fits", QUERY=OBSCORE_TOP2)
    assert error_text(response) == "Unsupported FORMAT requested: fits"
    assert "Content-Disposition" not in response.headers


def test_csv_and_tsv_bodies(emulator):
    csv = sync(emulator, FORMAT="csv", QUERY="SELECT TOP 2 obs_publisher_did, s_ra, s_dec FROM ivoa.obscore")
    lines = csv.text.split("\r\n")
    assert lines[0] == "obs_publisher_did,s_ra,s_dec"
    assert lines[1] == "cube-1001,187.5,-45.0"
    assert lines[3] == ""
    tsv = sync(emulator, FORMAT="tsv", QUERY="SELECT TOP 1 obs_publisher_did, s_ra FROM ivoa.obscore")
    assert tsv.text == "obs_publisher_did\ts_ra\r\ncube-1001\t187.5\r\n"


def test_maxrec_truncates_and_adds_overflow_after_the_table(emulator):
    response = sync(emulator, MAXREC="3", QUERY="SELECT obs_publisher_did FROM ivoa.obscore")
    assert len(votable(response)) == 3
    assert response.text.endswith('</TABLE>\r\n<INFO name="QUERY_STATUS" value="OVERFLOW" />\r\n'
                                  "</RESOURCE>\r\n</VOTABLE>\r\n")


def test_no_overflow_when_everything_fits(emulator):
    response = sync(emulator, MAXREC="1000", QUERY="SELECT obs_publisher_did FROM ivoa.obscore")
    assert len(votable(response)) == len(emulator.holdings.products)
    assert 'value="OVERFLOW"' not in response.text


def test_maxrec_zero_gives_only_the_header(emulator):
    response = sync(emulator, MAXREC="0", QUERY="SELECT obs_publisher_did FROM ivoa.obscore")
    assert len(votable(response)) == 0
    assert 'value="OVERFLOW"' in response.text


def test_invalid_maxrec_is_reported(emulator):
    response = sync(emulator, MAXREC="ten", QUERY=OBSCORE_TOP2)
    assert error_text(response) == "Invalid MAXREC parameter value: ten"


# --- cells ------------------------------------------------------------------------------------------


def test_access_url_placeholder_becomes_the_proxy_datalink(emulator):
    table = votable(sync(emulator, QUERY=OBSCORE_TOP2))
    assert table["access_url"][0] == emulator.url + "casda_vo_proxy/vo/datalink/links?ID=cube-1001"


def test_empty_values_are_empty_cells(emulator):
    response = sync(emulator, QUERY="SELECT TOP 1 obs_publisher_did, t_resolution FROM ivoa.obscore")
    assert "<TR><TD>cube-1001</TD><TD></TD></TR>" in response.text


@pytest.mark.parametrize("value, text", [
    (1.40049e9, "1.40049E9"), (0.0, "0.0"), (-0.0, "-0.0"), (333.16767306594, "333.16767306594"),
    (1.528483173363071e-10, "1.528483173363071E-10"), (1e7, "1.0E7"), (9999999.0, "9999999.0"),
    (0.001, "0.001"), (0.000999, "9.99E-4"), (float("nan"), "NaN"), (float("-inf"), "-Infinity"),
])
def test_doubles_are_written_as_java_does_and_round_trip(value, text):
    assert java_double(value) == text
    if value == value:
        assert float(text.replace("E", "e").replace("Infinity", "inf")) == value


def test_floats_use_single_precision_digits():
    assert java_float(0.1) == "0.1"
    assert java_float(1.40049e9) == "1.40049E9"
    assert java_float(1e39) == "Infinity"


def test_cells_are_xml_escaped_with_numeric_entities_beyond_ascii():
    assert xml_escape("a<b & 'c' \"d\" é") == "a&lt;b &amp; &apos;c&apos; &quot;d&quot; &#233;"


# Per column: values of the column's own types (the whole-column fast paths take them), then
# values of other types (a batch holding one is rendered cell by cell).
AWKWARD = {
    "double": ([1.5, 0.0, -0.0, 1e7, 9999999.0, 0.000999, -0.001, 1.528483173363071e-10, float("nan"),
                float("inf"), None, 3], [True, "text"]),
    "float": ([0.1, 1.40049e9, 1e39, 1234567.0, 2282914.0, 0.001, 0.000999, -2.5, 16777217.0, None, 7],
              [False, "x"]),
    "int": ([1, -5, None, 0], [2.0, 2.5, True, "7"]),
    "boolean": ([True, False, 0, 1, None], ["t"]),
    "char": (["plain", "a,b", "tab\there", "line\nbreak", 'say "hi"', "é", "<&>", "", None,
              "#{baseUrl}datalink/links?ID=cube-1", "\x00nul"], [42, 1.5]),
}


def awkward_rows(count, odd, run=1):
    """Rows cycling through the values, each value for ``run`` rows in a row (a run longer than
    a batch gives batches in which that one value is the only awkward one)."""
    return [tuple(values[(index // run + shift) % len(values)] for shift, values in
                  enumerate(typed + (extra if odd else []) for typed, extra in AWKWARD.values()))
            for index in range(count)]


@pytest.mark.parametrize("separator", [",", "\t"])
def test_large_results_render_exactly_as_cell_by_cell(separator, monkeypatch):
    """Whole-column rendering (for millions of rows) gives the bytes of one cell at a time."""
    from astroquery_casda_ext.emulator import result_writers as render
    monkeypatch.setattr(render, "_BATCH_CHARS", 4096)      # batches of about 100 rows: many kinds
    from astroquery_casda_ext.emulator.adql import QueryResult
    from astroquery_casda_ext.emulator.schema import Column
    columns = [Column(f"{kind}_{n}", kind) for n, kind in enumerate(AWKWARD)]
    # batches of awkward values of the right types, of mixed types, and of plain values
    rows = awkward_rows(1000, odd=False) + awkward_rows(12 * 600, odd=False, run=600) + \
        awkward_rows(1000, odd=True) + \
        [(1.25, 0.5, 3, True, "only plain text")] * 3000
    proxy = "https://proxy/"
    cells = render._cell_formatters(columns, proxy)
    expected_lines = [separator.join(render._separated_value(cell(value), separator)
                                     for cell, value in zip(cells, row)) for row in rows]
    body = b"".join(render.separated_chunks(QueryResult(columns, iter(rows), False, None),
                                            separator=separator, proxy_base=proxy))
    header = separator.join(column.name for column in columns)
    assert body.decode("utf-8") == "\r\n".join([header] + expected_lines) + "\r\n"
    votable_rows = b"".join(render._votable_rows(iter(rows), columns, proxy)).decode("utf-8")
    assert votable_rows == "".join("           <TR><TD>" + "</TD><TD>".join(cell(value) for cell, value in
                                                                          zip(cells, row)) + "</TD></TR>\n"
                                   for row in rows)


# --- embargo through the proxy ----------------------------------------------------------------------


def count(response):
    return int(votable(response)["n"][0])


def test_embargoed_rows_need_a_member_of_their_project(emulator):
    anonymous = count(sync(emulator, QUERY=EMBARGOED_COUNT))
    login = (emulator.username, emulator.password)
    member = count(sync(emulator, proxy=True, auth=login, QUERY=EMBARGOED_COUNT))
    emulator.add_user("outsider", "outsider-pw", projects=("AS101",))
    outsider = count(sync(emulator, proxy=True, auth=("outsider", "outsider-pw"), QUERY=EMBARGOED_COUNT))
    assert anonymous == outsider == 0
    assert member > 0


def test_proxied_results_point_their_stylesheet_at_the_proxy(emulator):
    response = sync(emulator, proxy=True, auth=(emulator.username, emulator.password), QUERY=OBSCORE_TOP2)
    assert f"<?xml-stylesheet href='{emulator.url}casda_vo_proxy/vo/votable.xsl'" in response.text


# --- async (UWS) ------------------------------------------------------------------------------------


def create_job(emulator, proxy=False, auth=None, **params):
    params = {"REQUEST": "doQuery", "LANG": "ADQL", **params}
    response = requests.post(tap_url(emulator, "async", proxy), data=params, auth=auth, allow_redirects=False,
                             timeout=10)
    assert response.status_code == 303
    return response.headers["Location"]


def job_document(job_url, auth=None):
    return ET.fromstring(requests.get(job_url, auth=auth, timeout=10).content)


def wait_for_final(job_url, auth=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_document(job_url, auth)
        if job.find(f"{UWS}phase").text in ("COMPLETED", "ERROR", "ABORTED"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_url} did not finish")


def test_created_job_is_pending_in_the_default_uws_namespace(emulator):
    job_url = create_job(emulator, QUERY=OBSCORE_TOP2)
    assert re.fullmatch(re.escape(tap_url(emulator, "async/")) + r"[0-9a-f-]{36}", job_url)
    response = requests.get(job_url, timeout=10)
    assert response.headers["Content-Type"].startswith("text/xml")
    assert re.search(r'<job xmlns="http://www\.ivoa\.net/xml/UWS/v1\.0"', response.text)
    job = ET.fromstring(response.content)
    assert job.find(f"{UWS}phase").text == "PENDING"
    parameters = {p.get("id"): p.text for p in job.find(f"{UWS}parameters")}
    assert parameters == {"request": "doQuery", "lang": "ADQL", "query": OBSCORE_TOP2}
    assert list(job.find(f"{UWS}results")) == []
    assert requests.get(job_url + "/phase", timeout=10).text == "PENDING"


def test_job_list_is_always_empty(emulator):
    create_job(emulator, QUERY=OBSCORE_TOP2)
    response = requests.get(tap_url(emulator, "async"), timeout=10)
    assert response.status_code == 200
    assert list(ET.fromstring(response.content)) == []


def test_run_goes_to_completed_with_a_percent_encoded_result_href(emulator):
    job_url = create_job(emulator, QUERY=OBSCORE_TOP2)
    run = requests.post(job_url + "/phase", data={"PHASE": "RUN"}, allow_redirects=False, timeout=10)
    assert (run.status_code, run.headers["Location"]) == (303, job_url)
    assert job_document(job_url).find(f"{UWS}phase").text in ("QUEUED", "EXECUTING", "COMPLETED")
    job = wait_for_final(job_url)
    assert job.find(f"{UWS}phase").text == "COMPLETED"
    result = job.find(f"{UWS}results/{UWS}result")
    assert result.get("id") == "result"
    href = result.get(XLINK_HREF)
    assert href.startswith("http%3A%2F%2F127.0.0.1%3A")
    assert unquote(href) == job_url + "/results/result"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", job.find(f"{UWS}startTime").text)
    assert job.find(f"{UWS}endTime").text
    table = votable(requests.get(unquote(href), timeout=10))
    assert list(table["obs_publisher_did"]) == ["cube-1001", "cube-1002"]


def test_plain_href_option(emulator):
    emulator.set_options(tap_result_href="plain")
    job_url = create_job(emulator, QUERY=OBSCORE_TOP2, PHASE="RUN")
    href = wait_for_final(job_url).find(f"{UWS}results/{UWS}result").get(XLINK_HREF)
    assert href == job_url + "/results/result"


def test_job_resources_answer_in_plain_text_and_xml(emulator):
    job_url = create_job(emulator, QUERY=OBSCORE_TOP2, FORMAT="csv", PHASE="RUN")
    wait_for_final(job_url)
    assert requests.get(job_url + "/phase", timeout=10).text == "COMPLETED"
    assert requests.get(job_url + "/executionduration", timeout=10).text == "360000"
    destruction = requests.get(job_url + "/destruction", timeout=10).text
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", destruction)
    assert requests.get(job_url + "/quote", timeout=10).status_code == 200
    assert requests.get(job_url + "/owner", timeout=10).status_code == 200
    parameters = ET.fromstring(requests.get(job_url + "/parameters", timeout=10).content)
    assert {p.get("id"): p.text for p in parameters}["format"] == "csv"
    results = ET.fromstring(requests.get(job_url + "/results", timeout=10).content)
    assert [r.get("id") for r in results] == ["result"]
    result = requests.get(job_url + "/results/result", timeout=10)
    assert result.headers["Content-Type"] == "text/csv;header=present"
    assert result.text.startswith("obs_publisher_did,s_ra,access_url\r\ncube-1001,187.5,")


def test_parameters_can_be_added_while_pending_only(emulator):
    job_url = create_job(emulator, QUERY="SELECT TOP 1 obs_publisher_did FROM ivoa.obscore")
    added = requests.post(job_url + "/parameters", data={"MAXREC": "1"}, allow_redirects=False, timeout=10)
    assert added.status_code == 303
    requests.post(job_url + "/phase", data={"PHASE": "RUN"}, timeout=10)
    wait_for_final(job_url)
    late = requests.post(job_url + "/parameters", data={"MAXREC": "5"}, allow_redirects=False, timeout=10)
    assert late.status_code == 403
    parameters = {p.get("id"): p.text for p in job_document(job_url).find(f"{UWS}parameters")}
    assert parameters["maxrec"] == "1"


def test_failing_query_ends_in_error_with_casda_message(emulator):
    job_url = create_job(emulator, LANG="SQL", QUERY=OBSCORE_TOP2, PHASE="RUN")
    job = wait_for_final(job_url)
    assert job.find(f"{UWS}phase").text == "ERROR"
    summary = job.find(f"{UWS}errorSummary")
    assert summary.find(f"{UWS}message").text == "Unknown query language: SQL"
    assert list(job.find(f"{UWS}results")) == []
    assert error_text(requests.get(job_url + "/error", timeout=10)) == "Unknown query language: SQL"
    assert requests.get(job_url + "/results/result", timeout=10).status_code == 404


def test_abort_and_delete(emulator):
    job_url = create_job(emulator, QUERY=OBSCORE_TOP2)
    requests.post(job_url + "/phase", data={"PHASE": "ABORT"}, timeout=10)
    assert requests.get(job_url + "/phase", timeout=10).text == "ABORTED"
    deleted = requests.delete(job_url, allow_redirects=False, timeout=10)
    assert (deleted.status_code, deleted.headers["Location"]) == (303, tap_url(emulator, "async"))
    assert requests.get(job_url, timeout=10).status_code == 404
    other = create_job(emulator, QUERY=OBSCORE_TOP2)
    via_post = requests.post(other, data={"ACTION": "DELETE"}, allow_redirects=False, timeout=10)
    assert via_post.status_code == 303
    assert requests.get(other, timeout=10).status_code == 404


def test_bad_phase_and_unknown_job_are_client_errors(emulator):
    job_url = create_job(emulator, QUERY=OBSCORE_TOP2)
    assert requests.post(job_url + "/phase", data={"PHASE": "run"}, timeout=10).status_code == 400
    assert requests.get(tap_url(emulator, "async/no-such-job"), timeout=10).status_code == 404


def test_async_through_the_proxy_applies_the_users_projects(emulator):
    auth = (emulator.username, emulator.password)
    job_url = create_job(emulator, proxy=True, auth=auth, QUERY=EMBARGOED_COUNT, PHASE="RUN")
    assert job_url.startswith(emulator.url + "casda_vo_proxy/vo/tap/async/")
    href = wait_for_final(job_url, auth).find(f"{UWS}results/{UWS}result").get(XLINK_HREF)
    assert count(requests.get(unquote(href), auth=auth, timeout=10)) > 0


def test_uws_wait_blocks_only_when_enabled(emulator):
    clock = emulator.use_clock(ManualClock())
    emulator.set_options(uws_wait=True)
    job_url = create_job(emulator, QUERY=OBSCORE_TOP2)
    started = clock.time()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(requests.get, job_url, params={"WAIT": "0.3"}, timeout=10)
        deadline = time.monotonic() + 10
        while emulator.backend.request_log.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        clock.advance(0.2)
        assert not waiting.done()           # held for the WAIT's 0.3 s of the emulator's clock
        clock.advance(0.15)
        job = ET.fromstring(waiting.result().content)
    assert job.find(f"{UWS}phase").text == "PENDING"
    assert clock.time() - started >= 0.3


# --- VOSI and pyvo ----------------------------------------------------------------------------------


def test_capabilities_and_tables_documents(emulator):
    capabilities = requests.get(tap_url(emulator, "capabilities"), timeout=10)
    assert capabilities.headers["Content-Type"].startswith("application/xml")
    assert f'<accessURL use="base">{tap_url(emulator, "")[:-1]}</accessURL>' in capabilities.text
    tables = ET.fromstring(requests.get(tap_url(emulator, "tables"), timeout=10).content)
    names = [name.text for name in tables.iter("name") if name.text and "." in name.text]
    assert {"ivoa.obscore", "casda.continuum_component", "casda.observation"} <= set(names)


@pytest.mark.parametrize("service", ["tap", "sia2", "datalink"])
def test_availability_of_each_service(emulator, service):
    for base in ("casda_vo_tools/", "casda_vo_proxy/vo/"):
        response = requests.get(emulator.url + base + service + "/availability",
                                auth=(emulator.username, emulator.password), timeout=10)
        assert "<available>true</available>" in response.text
        assert re.search(r"<upSince>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z</upSince>", response.text)


def test_pyvo_runs_sync_queries_and_reads_errors(emulator):
    service = pyvo.dal.TAPService(tap_url(emulator, "")[:-1])
    result = service.run_sync(OBSCORE_TOP2)
    assert list(result["obs_publisher_did"]) == ["cube-1001", "cube-1002"]
    with pytest.raises(pyvo.dal.DALQueryError, match="no_such_table"):
        service.run_sync("SELECT * FROM casda.no_such_table")
    assert result.query_status == "OK"


def test_pyvo_runs_async_queries_with_plain_hrefs(emulator):
    emulator.set_options(tap_result_href="plain")
    service = pyvo.dal.TAPService(tap_url(emulator, "")[:-1])
    result = service.run_async(OBSCORE_TOP2)
    assert list(result.to_table()["obs_publisher_did"]) == ["cube-1001", "cube-1002"]


class UnquotingJob(pyvo.dal.AsyncTAPJob):
    """What a client must do for CASDA: percent-decode a result href that is encoded whole."""

    @property
    def result_uri(self):
        href = self.result.href
        return unquote(href) if href.startswith(("http%3A", "https%3A")) else href


def test_pyvo_reads_casda_job_documents_and_needs_to_unquote_the_href(emulator):
    service = pyvo.dal.TAPService(tap_url(emulator, "")[:-1])
    naive = service.submit_job(OBSCORE_TOP2)
    naive.run().wait(timeout=10)
    assert naive.phase == "COMPLETED"
    with pytest.raises(pyvo.dal.DALServiceError):
        naive.fetch_result()  # pyvo joins the encoded href onto the job URL
    job = UnquotingJob(naive.url)
    assert list(job.fetch_result().to_table()["obs_publisher_did"]) == ["cube-1001", "cube-1002"]
    job.delete()


def test_pyvo_lists_tables(emulator):
    service = pyvo.dal.TAPService(tap_url(emulator, "")[:-1])
    assert "ivoa.obscore" in service.tables
    assert "obs_publisher_did" in [column.name for column in service.tables["ivoa.obscore"].columns]
