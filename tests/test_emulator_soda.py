"""The emulator's SODA service over real HTTP: job creation from DataLink tokens, UWS
documents shaped like CASDA's, phases, results in every href style, downloads,
cutouts and spectra, and the sync and VOSI endpoints."""
import io
import re
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import astroquery.casda
import pytest
import requests
from astropy.io import fits
from astropy.io.votable import parse
from pyvo.io.uws import parse_job

from astroquery_casda_ext.checksum import checksum_of_file, parse_checksum
from astroquery_casda_ext.emulator import ManualClock, soda_state
from astroquery_casda_ext.emulator.cutouts import NOTHING_MATCHED_MESSAGE

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
XLINK = "{http://www.w3.org/1999/xlink}"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
RECORDED = Path(astroquery.casda.__file__).parent / "tests" / "data"
TEXT = {"Accept": "text/plain"}
QUICK_PLAN = (("QUEUED", 0.01), ("SUSPENDED", 0.01), ("EXECUTING", 0.01))
GENERIC_FAILURE = "Error: A problem occured obtaining access to the requested item(s)"


#: The emulator's clock in the current test (a `ManualClock`: timed phases pass when it is moved).
_CLOCK = []


@pytest.fixture(autouse=True)
def _quick_jobs(emulator):
    """Jobs pass through their phases in a few hundredths of a second of the emulator's clock,
    which stands still until a test moves it (``wait_final`` does)."""
    emulator.set_options(job_phases=QUICK_PLAN)
    _CLOCK[:] = [emulator.use_clock(ManualClock())]


@pytest.fixture
def clock(emulator):
    return _CLOCK[0]


def wait_until_in_flight(emulator, count=1, timeout=10):
    """Until the emulator is answering ``count`` requests (a blocked WAIT, say)."""
    deadline = time.monotonic() + timeout
    while emulator.backend.request_log.in_flight < count:
        assert time.monotonic() < deadline, "the request did not arrive"
        time.sleep(0.001)


# --- helpers ------------------------------------------------------------------------------

def released(product):
    return bool(product.release_date) and datetime.fromisoformat(
        product.release_date.replace("Z", "+00:00")) < datetime.now(timezone.utc)


def cubes(emulator, count):
    """``count`` spectral-line cubes, each from a different field, released ones first."""
    found = [p for p in emulator.holdings.products if p.kind == "spectral"]
    found.sort(key=lambda p: not released(p))
    assert len(found) >= count
    return found[:count]


def async_url(emulator):
    return emulator.url + "casda_data_access/data/async"


def tokens(emulator, products, service="async_service", auth=None):
    """The DataLink token of ``service`` for each product, in order."""
    credentials = auth or (emulator.username, emulator.password)
    response = requests.get(emulator.url + "casda_vo_proxy/vo/datalink/links",
                            params=[("ID", p.product_id) for p in products], auth=credentials, timeout=30)
    table = parse(io.BytesIO(response.content)).get_first_table().to_table(use_names_over_ids=True)
    found = [str(row["authenticated_id_token"]) for row in table if row["service_def"] == service]
    assert len(found) == len(products), response.text
    return found


def create(emulator, id_tokens, extra=(), headers=None):
    params = [("ID", token) for token in id_tokens] + list(extra)
    return requests.post(async_url(emulator), params=params, headers=headers, allow_redirects=False,
                         timeout=30)


def new_job(emulator, id_tokens, extra=()):
    response = create(emulator, id_tokens, extra)
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def run(job_url):
    response = requests.post(job_url + "/phase", data={"PHASE": "RUN"}, allow_redirects=False, timeout=30)
    assert response.status_code == 303, response.text
    return response


def job_doc(job_url, **params):
    response = requests.get(job_url, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return ET.fromstring(response.content)


def phase(root):
    return root.find(f"{UWS}phase").text


def wait_final(job_url, timeout=30):
    """The job's document once it is final: its timed phases pass on the emulator's clock,
    moved here; staging or cutting its files is real work, polled for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        root = job_doc(job_url)
        if phase(root) in ("COMPLETED", "ERROR", "ABORTED"):
            return root
        _CLOCK[0].advance(0.01)
        time.sleep(0.002)       # a breath for the worker thread's real work
    raise AssertionError(f"job did not finish: {phase(root)}")


def results(root):
    return [(r.get("id"), r.get(f"{XLINK}href")) for r in root.find(f"{UWS}results").findall(f"{UWS}result")]


def staged(emulator, products, service="async_service", extra=()):
    job_url = new_job(emulator, tokens(emulator, products, service), extra)
    run(job_url)
    return job_url, wait_final(job_url)


def error_text(response):
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.text


def centre(product):
    return float(product.obscore["s_ra"]), float(product.obscore["s_dec"])


def circle(ra, dec, radius=0.01):
    return f"{ra:.5f} {dec:.5f} {radius:.5f}"


def utc_times(text):
    """pyvo's date parser takes no UTC offset: rewrite CASDA's ``+0800`` times as UTC."""
    def to_utc(match):
        moment = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "<"
    return re.sub(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4})<", to_utc, text)


def skeleton(root):
    """Tags and attributes of every element, no text: the shape of a document."""
    return [(element.tag, dict(element.attrib)) for element in root.iter()]


# --- creating a job ---------------------------------------------------------------------------

def test_create_answers_303_with_the_job_id(emulator):
    (cube,) = cubes(emulator, 1)
    response = create(emulator, tokens(emulator, [cube]))
    assert response.status_code == 303
    assert response.headers["Content-Type"].startswith("text/plain")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", response.text)
    assert response.headers["Location"] == f"{async_url(emulator)}/{response.text}"
    followed = requests.post(async_url(emulator), params={"id": tokens(emulator, [cube])[0]}, timeout=30)
    assert followed.status_code == 200 and phase(ET.fromstring(followed.content)) == "PENDING"


def test_pending_job_has_the_recorded_shape(emulator):
    (cube,) = cubes(emulator, 1)
    (token,) = tokens(emulator, [cube])
    job_url = new_job(emulator, [token])
    response = requests.get(job_url, timeout=30)
    assert response.headers["Content-Type"].startswith("application/xml")
    text = response.text
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n'
                           '<uws:job xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0"')
    job_id = job_url.rsplit("/", 1)[1]
    assert f"<uws:jobId><![CDATA[{job_id}]]></uws:jobId>" in text
    assert f'<uws:parameter id="id"><![CDATA[{token}]]></uws:parameter>' in text
    root = ET.fromstring(response.content)
    recorded = ET.parse(RECORDED / "run_job.xml").getroot()
    assert skeleton(root) == skeleton(recorded)
    assert [child.tag for child in root] == [child.tag for child in recorded]
    assert phase(root) == "PENDING"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0800", root.find(f"{UWS}startTime").text)
    assert root.find(f"{UWS}executionDuration").text == "0"
    nil = [child.tag.replace(UWS, "") for child in root if child.get(XSI_NIL) == "true"]
    assert nil == ["runId", "ownerId", "quote", "endTime", "destruction", "errorSummary"]


def test_ids_may_come_in_the_form_body_with_any_key_case(emulator):
    first, second = cubes(emulator, 2)
    response = requests.post(async_url(emulator), data=[("iD", tokens(emulator, [first])[0])],
                             params=[("Id", tokens(emulator, [second])[0])], allow_redirects=False,
                             timeout=30)
    assert response.status_code == 303
    job_url = response.headers["Location"]
    value = job_doc(job_url).find(f"{UWS}parameters/{UWS}parameter").text
    assert value.startswith("{") and value.endswith("}") and value.count(",") == 1


@pytest.mark.parametrize("params, message", [
    ([], "id is a required parameter"),
    ([("ID", "junk")], "id 'junk' is not valid"),
    ([("ID", "junk"), ("foo", "1")], "id 'junk' is not valid;UsageFault: foo is an invalid parameter"),
])
def test_create_rejects_bad_requests(emulator, params, message):
    response = requests.post(async_url(emulator), params=params, headers=TEXT, allow_redirects=False,
                             timeout=30)
    assert response.status_code == 400
    assert error_text(response) == f"FAILURE: {message}"


def test_create_validates_filter_values(emulator):
    (cube,) = cubes(emulator, 1)
    response = create(emulator, tokens(emulator, [cube], "cutout_service"), [("CIRCLE", "1 2")], headers=TEXT)
    assert response.status_code == 400
    assert error_text(response) == "FAILURE: UsageFault: Invalid CIRCLE value 1 2"


def test_tokens_of_two_users_are_rejected(emulator):
    emulator.add_user("outsider", "pw", projects=())
    (cube,) = cubes(emulator, 1)
    mine = tokens(emulator, [cube])[0]
    theirs = tokens(emulator, [cube], auth=("outsider", "pw"))[0]
    response = create(emulator, [mine, theirs], headers=TEXT)
    assert response.status_code == 400
    assert error_text(response) == f"FAILURE: id '{theirs}' is not valid"
    assert create(emulator, [theirs]).status_code == 303


def test_unsupported_product_type_is_rejected(emulator):
    token = emulator.backend.tokens.mint("catalogue-3", emulator.backend.builtin_user.user_id, "WEB")
    response = create(emulator, [token], headers=TEXT)
    assert (response.status_code, error_text(response)) == (
        400, "FAILURE: Unsupported data access product type catalogue")


def test_error_bodies_follow_the_accept_header(emulator):
    url = async_url(emulator) + "/no-such-job"
    assert requests.get(url, headers=TEXT, timeout=30).text == "FAILURE: No job with id 'no-such-job'"
    as_json = requests.get(url, headers={"Accept": "application/json"}, timeout=30)
    assert as_json.status_code == 404
    assert as_json.json() == {"messageCode": "FAILURE", "message": "No job with id 'no-such-job'"}
    as_xml = ET.fromstring(requests.get(url, headers={"Accept": "application/xml"}, timeout=30).content)
    assert as_xml.findtext("message") == "No job with id 'no-such-job'"
    # python-requests sends */*: CASDA answers with its HTML error page.
    page = requests.get(url, timeout=30)
    assert page.status_code == 404 and page.headers["Content-Type"].startswith("text/html")
    assert "CASDA Access Error" in page.text


def test_job_list_is_always_empty(emulator):
    (cube,) = cubes(emulator, 1)
    new_job(emulator, tokens(emulator, [cube]))
    root = ET.fromstring(requests.get(async_url(emulator), timeout=30).content)
    assert (root.tag, root.get("name"), list(root)) == (f"{UWS}jobList", "CASDA SODA ASYNC", [])


@pytest.mark.parametrize("suffix", ["", "/phase", "/parameters", "/results", "/error", "/quote",
                                    "/executionduration", "/destruction", "/owner"])
def test_unknown_job_is_404_everywhere(emulator, suffix):
    response = requests.get(async_url(emulator) + "/5f0c6a4e-0000-0000-0000-000000000000" + suffix,
                            headers=TEXT, timeout=30)
    assert response.status_code == 404


# --- parameters -------------------------------------------------------------------------------

def test_parameters_accumulate_while_pending(emulator):
    (cube,) = cubes(emulator, 1)
    (token,) = tokens(emulator, [cube], "cutout_service")
    ra, dec = centre(cube)
    first, second = circle(ra, dec), circle(ra, dec, 0.02)
    job_url = new_job(emulator, [token], [("CIRCLE", first)])
    assert requests.post(job_url + "/parameters", data=[("circle", second), ("BAND", "0.21 0.22")],
                         allow_redirects=False, timeout=30).headers["Location"] == job_url
    listed = ET.fromstring(requests.get(job_url + "/parameters", timeout=30).content)
    assert [(p.get("id"), p.text) for p in listed] == [
        ("id", token), ("circle", "{" + f"{first},{second}" + "}"), ("band", "0.21 0.22")]
    named = requests.get(job_url + "/parameters/circle", timeout=30)
    assert ET.fromstring(named.content).get("id") == "CIRCLE"
    assert requests.post(job_url + "/parameters/Band", data={"value": "0.2 0.23"}, allow_redirects=False,
                         timeout=30).status_code == 303
    params = {p.get("id"): p.text for p in job_doc(job_url).find(f"{UWS}parameters")}
    assert params["band"] == "{0.21 0.22,0.2 0.23}"
    requests.delete(job_url + "/parameters/band/0.21 0.22", timeout=30)
    requests.delete(job_url + "/parameters/circle", timeout=30)
    params = {p.get("id"): p.text for p in job_doc(job_url).find(f"{UWS}parameters")}
    assert params == {"id": token, "band": "0.2 0.23"}
    requests.delete(job_url + "/parameters", timeout=30)
    assert list(job_doc(job_url).find(f"{UWS}parameters")) == []


def test_added_parameters_are_validated(emulator):
    emulator.add_user("outsider", "pw", projects=())
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube], "cutout_service"))
    bad = requests.post(job_url + "/parameters", data={"CIRCLE": "400 0 1"}, headers=TEXT, timeout=30)
    assert (bad.status_code, bad.text) == (
        400, "FAILURE: UsageFault: Invalid longitude value. Valid range is [0,360]")
    theirs = tokens(emulator, [cube], auth=("outsider", "pw"))[0]
    foreign = requests.post(job_url + "/parameters", data={"ID": theirs}, headers=TEXT, timeout=30)
    assert (foreign.status_code, foreign.text) == (400, f"FAILURE: id '{theirs}' is not valid")
    missing = requests.post(job_url + "/parameters/pos", headers=TEXT, timeout=30)
    assert missing.status_code == 400


def test_parameters_are_refused_once_running(emulator):
    emulator.set_options(job_progression="polls")
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    run(job_url)
    job_id = job_url.rsplit("/", 1)[1]
    refused = [requests.get(job_url + "/parameters", headers=TEXT, timeout=30),
               requests.post(job_url + "/parameters", data={"BAND": "0.2 0.21"}, headers=TEXT, timeout=30),
               requests.delete(job_url + "/parameters", headers=TEXT, timeout=30),
               requests.get(job_url + "/parameters/id", headers=TEXT, timeout=30),
               requests.delete(job_url + "/parameters/id", headers=TEXT, timeout=30)]
    expected = (400, f"FAILURE: Job with id '{job_id}' is not pending.")
    assert {(r.status_code, r.text) for r in refused} == {expected}


# --- phases -----------------------------------------------------------------------------------

def test_polls_walk_the_phase_plan(emulator):
    emulator.set_options(job_progression="polls")
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    run(job_url)
    seen = [phase(job_doc(job_url)) for _ in range(3)]
    seen.append(requests.get(job_url + "/phase", timeout=30).text)
    seen.append(phase(job_doc(job_url)))
    assert seen == ["QUEUED", "SUSPENDED", "EXECUTING", "COMPLETED", "COMPLETED"]


def test_phases_follow_the_clock(emulator, clock):
    emulator.set_options(job_phases=(("QUEUED", 0.15), ("SUSPENDED", 0.15), ("EXECUTING", 0.15)))
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    started = clock.time()
    run(job_url)
    seen = []
    while not seen or seen[-1] != "COMPLETED":
        current = requests.get(job_url + "/phase", timeout=30).text
        if not seen or seen[-1] != current:
            seen.append(current)
            moved = clock.time() - started
        clock.advance(0.01)
    assert seen == ["QUEUED", "SUSPENDED", "EXECUTING", "COMPLETED"]
    assert moved >= 0.45


def test_held_job_waits_for_release(emulator):
    emulator.set_options(hold_jobs=True)
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    run(job_url)
    for _ in range(5):
        assert phase(job_doc(job_url)) == "HELD"
        _CLOCK[0].advance(60.0)
    assert emulator.backend.release_job(job_url.rsplit("/", 1)[1]) is True
    assert phase(wait_final(job_url)) == "COMPLETED"


@pytest.mark.parametrize("data, message", [
    ({"PHASE": "run"}, "phase parameter must have value RUN or ABORT"),
    ({}, "phase is a required parameter"),
    ([("PHASE", "RUN"), ("phase", "RUN")], "only a single phase parameter is allowed"),
])
def test_bad_phase_requests(emulator, data, message):
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    response = requests.post(job_url + "/phase", data=data, headers=TEXT, timeout=30)
    assert (response.status_code, response.text) == (400, f"FAILURE: {message}")
    assert phase(job_doc(job_url)) == "PENDING"


def test_run_only_from_pending(emulator):
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    run(job_url)
    again = requests.post(job_url + "/phase", data={"phase": "RUN"}, headers=TEXT, timeout=30)
    assert (again.status_code, again.text) == (400, "FAILURE: Only Jobs which are PENDING can be run")


def test_abort_pending_and_queued_jobs(emulator):
    emulator.set_options(job_progression="polls")
    (cube,) = cubes(emulator, 1)
    pending = new_job(emulator, tokens(emulator, [cube]))
    queued = new_job(emulator, tokens(emulator, [cube]))
    run(queued)
    assert phase(job_doc(queued)) == "QUEUED"
    for job_url in (pending, queued):
        response = requests.post(job_url + "/phase", data={"PHASE": "ABORT"}, allow_redirects=False,
                                 timeout=30)
        assert (response.status_code, response.headers["Location"]) == (303, job_url)
        root = job_doc(job_url)
        assert phase(root) == "ABORTED"
        assert root.find(f"{UWS}endTime").text and root.find(f"{UWS}destruction").text
        assert results(root) == []


def test_abort_refused_once_finished_or_suspended(emulator):
    emulator.set_options(job_progression="polls")
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    run(job_url)
    assert [phase(job_doc(job_url)) for _ in range(2)] == ["QUEUED", "SUSPENDED"]
    message = "FAILURE: Only Jobs which are PENDING, QUEUED or EXECUTING can be aborted"
    refused = requests.post(job_url + "/phase", data={"PHASE": "ABORT"}, headers=TEXT, timeout=30)
    assert (refused.status_code, refused.text) == (400, message)
    assert phase(wait_final(job_url)) == "COMPLETED"
    refused = requests.post(job_url + "/phase", data={"PHASE": "ABORT"}, headers=TEXT, timeout=30)
    assert (refused.status_code, refused.text) == (400, message)


@pytest.mark.parametrize("how", ["DELETE", "ACTION=DELETE"])
def test_deleted_job_is_gone_at_once(emulator, how):
    (cube,) = cubes(emulator, 1)
    job_url, _root = staged(emulator, [cube])
    if how == "DELETE":
        response = requests.delete(job_url, allow_redirects=False, timeout=30)
    else:
        response = requests.post(job_url, data={"ACTION": "DELETE"}, allow_redirects=False, timeout=30)
    assert (response.status_code, response.headers["Location"]) == (303, async_url(emulator))
    job_id = job_url.rsplit("/", 1)[1]
    gone = requests.get(job_url, headers=TEXT, timeout=30)
    assert (gone.status_code, gone.text) == (410, f"FAILURE: Job with id '{job_id}' has expired")
    assert not emulator.backend.soda_jobs.job_dir(job_id).exists()


def test_reset_forgets_jobs_and_their_files(emulator):
    (cube,) = cubes(emulator, 1)
    job_url, _root = staged(emulator, [cube])
    job_dir = emulator.backend.soda_jobs.job_dir(job_url.rsplit("/", 1)[1])
    assert job_dir.is_dir()
    emulator.reset()
    assert requests.get(job_url, timeout=30).status_code == 404
    assert not job_dir.exists()


def test_post_to_job_needs_action_delete(emulator):
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    response = requests.post(job_url, data={"ACTION": "REMOVE"}, headers=TEXT, timeout=30)
    assert (response.status_code, response.text) == (400, "FAILURE: action parameter must have value DELETE")


def test_expired_job_answers_410_and_its_files_redirect(emulator, clock):
    emulator.set_options(job_expiry_seconds=0.5)
    (cube,) = cubes(emulator, 1)
    job_url, root = staged(emulator, [cube])
    href = results(root)[0][1]
    assert requests.get(href, timeout=30).status_code == 200
    clock.advance(0.6)
    for suffix in ("", "/phase", "/results"):
        assert requests.get(job_url + suffix, headers=TEXT, timeout=30).status_code == 410
    moved = requests.get(href, allow_redirects=False, timeout=30)
    assert (moved.status_code, moved.headers["Location"]) == (302, job_url)


def test_uws_sub_resources(emulator):
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    get = lambda suffix: requests.get(job_url + suffix, timeout=30)  # noqa: E731
    assert (get("/quote").text, get("/executionduration").text, get("/destruction").text,
            get("/error").text) == ("-1", "0", "", "")
    assert get("/owner").status_code == 200
    for suffix in ("/destruction", "/executionduration"):
        response = requests.post(job_url + suffix, data={"DESTRUCTION": "2030-01-01T00:00:00"},
                                 allow_redirects=False, timeout=30)
        assert (response.status_code, response.headers["Location"]) == (303, job_url)
    run(job_url)
    root = wait_final(job_url)
    assert get("/destruction").text == root.find(f"{UWS}destruction").text
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0800", get("/destruction").text)


def test_wait_blocks_until_the_phase_changes(emulator, clock):
    emulator.set_options(uws_wait=True, job_phases=(("QUEUED", 0.4), ("EXECUTING", 0.2)))
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    run(job_url)
    started = clock.time()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(requests.get, job_url, params={"WAIT": 10}, timeout=30)
        wait_until_in_flight(emulator)
        clock.advance(0.2)
        assert not waiting.done()           # still QUEUED: the request is held
        clock.advance(0.25)
        response = waiting.result()
    waited = clock.time() - started
    root = ET.fromstring(response.content)
    assert root.get("version") == "1.1"
    assert phase(root) == "EXECUTING"
    assert 0.2 < waited < 5
    final = wait_final(job_url)
    started = time.monotonic()
    requests.get(job_url, params={"WAIT": 10}, timeout=30)
    assert time.monotonic() - started < 1 and phase(final) == "COMPLETED"


def test_wait_is_ignored_without_uws_1_1(emulator):
    emulator.set_options(job_phases=(("QUEUED", 2.0), ("EXECUTING", 0.01)))
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    run(job_url)
    started = time.monotonic()
    root = job_doc(job_url, WAIT=10)
    assert time.monotonic() - started < 1
    assert phase(root) == "QUEUED" and root.get("version") is None


# --- results and downloads --------------------------------------------------------------------

def test_whole_files_are_staged_with_their_checksums(emulator, tmp_path):
    products = cubes(emulator, 2)
    job_url, root = staged(emulator, products)
    assert phase(root) == "COMPLETED"
    assert root.find(f"{UWS}endTime").text and root.find(f"{UWS}destruction").text
    found = results(root)
    assert [result_id for result_id, _ in found] == [
        products[0].product_id, products[0].product_id + ".checksum",
        products[1].product_id, products[1].product_id + ".checksum"]
    for product in products:
        href = dict(found)[product.product_id]
        assert href == f"{emulator.url}download/web/{job_url.rsplit('/', 1)[1]}/{product.staged_name}"
        data = requests.get(href, timeout=30)   # no credentials: the job id is the capability
        assert data.headers["Content-Disposition"] == f"attachment; filename={product.staged_name}"
        assert data.headers["Content-Type"] == "image/x-fits"
        assert data.content == product.path.read_bytes()
        sidecar = requests.get(dict(found)[product.product_id + ".checksum"], timeout=30)
        assert sidecar.text == str(product.checksum)
        local = tmp_path / product.staged_name
        local.write_bytes(data.content)
        assert parse_checksum(sidecar.text) == checksum_of_file(local)[1]


def test_results_endpoint(emulator):
    (cube,) = cubes(emulator, 1)
    (token,) = tokens(emulator, [cube])
    job_url = new_job(emulator, [token])
    empty = requests.get(job_url + "/results", timeout=30)
    assert empty.status_code == 200
    assert empty.headers["Content-Disposition"] == "attachment; filename=casda_data_access_exception.txt"
    assert empty.text == ("UsageError: the given combination of parameters returned no results.\n"
                          f"Request ID: {job_url.rsplit('/', 1)[1]}\nParameters: \nid :  {token}\n")
    run(job_url)
    root = wait_final(job_url)
    listed = ET.fromstring(requests.get(job_url + "/results", timeout=30).content)
    assert listed.tag == f"{UWS}results"
    assert [(r.get("id"), r.get(f"{XLINK}href")) for r in listed] == results(root)


@pytest.mark.parametrize("style", ["plain", "encoded", "presigned"])
def test_every_file_is_paired_with_its_checksum_in_every_href_style(emulator, style):
    emulator.set_options(href_style=style)
    products = cubes(emulator, 2)
    _job_url, root = staged(emulator, products)
    found = dict(results(root))
    assert len(found) == 4
    for product in products:
        data_url, sidecar_url = found[product.product_id], found[product.product_id + ".checksum"]
        if style == "encoded":
            data_url, sidecar_url = unquote(data_url), unquote(sidecar_url)
        assert urlsplit(sidecar_url).path == urlsplit(data_url).path + ".checksum"
        sidecar = requests.get(sidecar_url, timeout=30)
        assert sidecar.status_code == 200 and sidecar.text == str(product.checksum)


def test_encoded_hrefs_are_whole_urls_percent_encoded(emulator):
    emulator.set_options(href_style="encoded")
    (cube,) = cubes(emulator, 1)
    _job_url, root = staged(emulator, [cube])
    for _result_id, href in results(root):
        assert href.startswith(quote(emulator.url, safe=""))
        assert "/" not in href
        assert requests.get(unquote(href), timeout=30).status_code == 200


def test_presigned_hrefs_download_and_keep_their_escapes(emulator):
    emulator.set_options(href_style="presigned")
    (cube,) = cubes(emulator, 1)
    job_url, root = staged(emulator, [cube])
    href = dict(results(root))[cube.product_id]
    parts = urlsplit(href)
    assert parts.path == f"/download/s3/casda-cache/{job_url.rsplit('/', 1)[1]}/{cube.staged_name}"
    assert parts.query.startswith("response-content-disposition=attachment%3B%20filename%3D%22"
                                  f"{cube.staged_name}%22&X-Amz-Algorithm=AWS4-HMAC-SHA256&")
    assert re.search(r"&X-Amz-Expires=604800&X-Amz-SignedHeaders=host&X-Amz-Signature=[0-9a-f]{64}$",
                     parts.query)
    data = requests.get(href, timeout=30)
    assert data.status_code == 200 and data.content == cube.path.read_bytes()
    assert data.headers["Content-Disposition"] == f'attachment; filename="{cube.staged_name}"'


def test_presigned_signature_is_checked(emulator):
    emulator.set_options(href_style="presigned")
    (cube,) = cubes(emulator, 1)
    _job_url, root = staged(emulator, [cube])
    hrefs = dict(results(root))
    href = hrefs[cube.product_id]
    decoded = requests.get(unquote(href), timeout=30)    # what a client that unquotes every href sends
    assert decoded.status_code == 403
    assert ET.fromstring(decoded.content).findtext("Code") == "SignatureDoesNotMatch"
    base, query = href.split("?", 1)
    other_file = hrefs[cube.product_id + ".checksum"].split("?", 1)[0]
    assert requests.get(f"{other_file}?{query}", timeout=30).status_code == 403
    unsigned = requests.get(base + "?" + query.rsplit("&X-Amz-Signature=", 1)[0], timeout=30)
    assert (unsigned.status_code, ET.fromstring(unsigned.content).findtext("Code")) == (403, "AccessDenied")


def test_shuffled_results_keep_files_and_checksums(emulator):
    emulator.set_options(shuffle_results=True)
    products = cubes(emulator, 3)
    canonical = [name for p in products for name in (p.product_id, p.product_id + ".checksum")]
    orders = [[result_id for result_id, _ in results(staged(emulator, products)[1])] for _ in range(3)]
    assert all(sorted(order) == sorted(canonical) for order in orders)
    assert any(order != canonical for order in orders)


def test_pawsey_tokens_make_a_pawsey_job(emulator):
    (cube,) = cubes(emulator, 1)
    job_url, root = staged(emulator, [cube], "pawsey_async_service")
    href = dict(results(root))[cube.product_id]
    assert href.startswith(f"{emulator.url}download/pawsey/{job_url.rsplit('/', 1)[1]}/")
    assert requests.get(href, timeout=30).content == cube.path.read_bytes()


def test_unknown_download_is_404(emulator):
    (cube,) = cubes(emulator, 1)
    job_url, _root = staged(emulator, [cube])
    job_id = job_url.rsplit("/", 1)[1]
    assert requests.get(f"{emulator.url}download/web/{job_id}/nothing.fits", timeout=30).status_code == 404
    no_job = f"{emulator.url}download/web/no-job/{cube.staged_name}"
    assert requests.get(no_job, timeout=30).status_code == 404


def test_pyvo_parses_our_job_documents(emulator):
    (cube,) = cubes(emulator, 1)
    job_url, root = staged(emulator, [cube])
    text = requests.get(job_url, timeout=30).text
    job = parse_job(io.BytesIO(utc_times(text).encode()))
    assert job.jobid == job_url.rsplit("/", 1)[1]
    assert job.phase == "COMPLETED"
    assert [(r.id_, r.href) for r in job.results] == results(root)
    assert job.endtime is not None and job.destruction is not None
    far = new_job(emulator, tokens(emulator, [cube], "cutout_service"), [("CIRCLE", circle(10, 10))])
    run(far)
    wait_final(far)
    failed = parse_job(io.BytesIO(utc_times(requests.get(far, timeout=30).text).encode()))
    assert failed.phase == "ERROR"
    assert failed.errorsummary.message.content == NOTHING_MATCHED_MESSAGE


# --- generated files --------------------------------------------------------------------------

def test_cutouts_are_the_cross_product_with_error_files(emulator):
    products = cubes(emulator, 3)
    first, second = centre(products[0]), centre(products[1])
    regions = [circle(*first), circle(*second), circle(10.0, 10.0)]
    job_url, root = staged(emulator, products, "cutout_service", [("CIRCLE", region) for region in regions])
    assert phase(root) == "COMPLETED"
    found = results(root)
    files = [(result_id, href) for result_id, href in found if not result_id.endswith(".checksum")]
    assert sorted(result_id + ".checksum" for result_id, _ in files) == \
        sorted(result_id for result_id, _ in found if result_id.endswith(".checksum"))
    cutouts = [result_id for result_id, _ in files if result_id.startswith("cutout-")]
    errors = [result_id for result_id, _ in files if result_id.startswith("error-")]
    assert len(cutouts) == 2 and errors == [f"error-{n:02d}" for n in range(1, 8)]
    numbers = [int(re.fullmatch(r"cutout-(\d+)-imagecube-\d+", result_id).group(1)) for result_id in cutouts]
    assert numbers[1] == numbers[0] + 1
    assert [result_id.rsplit("-", 1)[1] for result_id in cutouts] == [
        str(products[0].numeric_id), str(products[1].numeric_id)]
    hrefs = dict(found)
    with fits.open(io.BytesIO(requests.get(hrefs[cutouts[0]], timeout=30).content)) as hdus:
        assert hdus[0].data.size < fits.getdata(products[0].path).size
    message = requests.get(hrefs["error-01"], timeout=30)
    assert message.text.startswith("UsageError: No data is available for the parameter combination: ")
    assert message.text.endswith(f",ID={products[0].product_id}")
    sidecar = requests.get(hrefs["error-01.checksum"], timeout=30).text
    assert parse_checksum(sidecar).size == len(message.content)


def test_cutout_numbers_are_not_reused(emulator):
    (cube,) = cubes(emulator, 1)
    region = [("CIRCLE", circle(*centre(cube)))]
    ids = [results(staged(emulator, [cube], "cutout_service", region)[1])[0][0] for _ in range(2)]
    assert ids[0] != ids[1]


def test_spectrum_job_makes_spectra(emulator):
    (cube,) = cubes(emulator, 1)
    _job_url, root = staged(emulator, [cube], "spectrum_generation_service",
                            [("CIRCLE", circle(*centre(cube), 0.005))])
    found = [result_id for result_id, _ in results(root)]
    assert len(found) == 2
    assert re.fullmatch(rf"spectrum-\d+-imagecube-{cube.numeric_id}", found[0])
    assert found[1] == found[0] + ".checksum"


def test_first_token_decides_the_service(emulator):
    (cube,) = cubes(emulator, 1)
    region = [("CIRCLE", circle(*centre(cube)))]
    web, cut = tokens(emulator, [cube])[0], tokens(emulator, [cube], "cutout_service")[0]
    whole = new_job(emulator, [web, cut], region)
    cutout = new_job(emulator, [cut, web], region)
    for job_url in (whole, cutout):
        run(job_url)
    assert [r for r, _ in results(wait_final(whole))] == [cube.product_id, cube.product_id + ".checksum"]
    assert results(wait_final(cutout))[0][0].startswith("cutout-")


def test_cutout_token_without_filters_stages_the_whole_file(emulator):
    (cube,) = cubes(emulator, 1)
    _job_url, root = staged(emulator, [cube], "cutout_service")
    assert [result_id for result_id, _ in results(root)] == [cube.product_id, cube.product_id + ".checksum"]


def test_nothing_matched_puts_the_job_in_error(emulator):
    (cube,) = cubes(emulator, 1)
    job_url, root = staged(emulator, [cube], "cutout_service", [("CIRCLE", circle(10.0, 10.0))])
    assert phase(root) == "ERROR"
    summary = root.find(f"{UWS}errorSummary")
    assert (summary.get("type"), summary.get("hasDetail")) == ("FATAL", "false")
    assert summary.findtext(f"{UWS}message") == NOTHING_MATCHED_MESSAGE
    assert results(root) == []
    expected = f'ERROR_SUMMARY {{type: FATAL; message: "{NOTHING_MATCHED_MESSAGE}"; details: none}}'
    assert requests.get(job_url + "/error", timeout=30).text == expected
    assert requests.get(job_url + "/results", timeout=30).text.startswith(expected + "\nRequest ID: ")


def test_other_failures_get_casdas_generic_message(emulator, monkeypatch):
    def broken(products, out_dir):
        raise OSError("disk full")
    monkeypatch.setattr(soda_state, "stage_whole_files", broken)
    (cube,) = cubes(emulator, 1)
    _job_url, root = staged(emulator, [cube])
    message = root.find(f"{UWS}errorSummary").findtext(f"{UWS}message")
    assert (phase(root), message) == ("ERROR", GENERIC_FAILURE)


def test_run_without_ids_fails(emulator):
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    requests.delete(job_url + "/parameters/id", timeout=30)
    run(job_url)
    message = wait_final(job_url).find(f"{UWS}errorSummary").findtext(f"{UWS}message")
    assert message == "UsageError: No data products were selected for retrieval."


# --- sync and VOSI ------------------------------------------------------------------------------

def test_sync_streams_the_whole_file(emulator):
    (cube,) = cubes(emulator, 1)
    (token,) = tokens(emulator, [cube])
    url = f"{emulator.url}casda_data_access/data/sync?id={token}"
    data = requests.get(url, timeout=30)
    assert data.content == cube.path.read_bytes()
    assert data.headers["Content-Disposition"] == f"attachment; filename={cube.staged_name}"
    head = requests.head(url, timeout=30)
    assert (head.status_code, head.content, int(head.headers["Content-Length"])) == (200, b"", cube.size)
    internal = tokens(emulator, [cube], "pawsey_async_service")[0]
    pawsey = requests.get(f"{emulator.url}casda_data_access/data/sync/pawsey?id={internal}", timeout=30)
    assert pawsey.content == cube.path.read_bytes()


@pytest.mark.parametrize("query, message", [
    ("id=junk", "Request 'id' parameter is invalid"),
    ("id=a&id=b", "Request requires a single 'id' parameter"),
    ("pos=x", "Request requires a single 'id' parameter"),
])
def test_sync_refuses_bad_ids(emulator, query, message):
    response = requests.get(f"{emulator.url}casda_data_access/data/sync?{query}", headers=TEXT, timeout=30)
    assert (response.status_code, response.text) == (400, f"FAILURE: {message}")


def test_sync_without_parameters_describes_itself(emulator):
    response = requests.get(emulator.url + "casda_data_access/data/sync", timeout=30)
    resource = parse(io.BytesIO(response.content)).resources[0]
    params = {param.name: param.value for param in resource.params}
    assert (resource.type, params["standardID"]) == ("meta", "ivo://ivoa.net/std/SODA#sync-1.0")
    assert params["accessURL"] == emulator.url + "casda_data_access/data/sync"


def test_vosi_documents(emulator):
    availability = ET.fromstring(requests.get(emulator.url + "casda_data_access/data/availability",
                                              timeout=30).content)
    assert availability.findtext("{http://www.ivoa.net/xml/VOSIAvailability/v1.0}available") == "true"
    capabilities = ET.fromstring(requests.get(emulator.url + "casda_data_access/data/capabilities",
                                              timeout=30).content)
    standards = {cap.get("standardID"): cap for cap in capabilities.findall("capability")}
    assert {"ivo://ivoa.net/std/SODA#sync-1.0", "ivo://ivoa.net/std/SODA#async-1.0",
            "ivo://ivoa.net/std/VOSI#availability", "ivo://ivoa.net/std/VOSI#capabilities"} == set(standards)
    urls = [url.text for url in standards["ivo://ivoa.net/std/SODA#async-1.0"].iter("accessURL")]
    assert urls[0] == async_url(emulator)
    assert f"{async_url(emulator)}/{{jobId}}/phase" in urls


def test_owner_is_empty_json(emulator):
    (cube,) = cubes(emulator, 1)
    job_url = new_job(emulator, tokens(emulator, [cube]))
    response = requests.get(job_url + "/owner", timeout=30)
    # Spring writes a null owner as an empty body.
    assert response.headers["Content-Type"].startswith("application/json") and response.content == b""
