"""DataLink: parsing CASDA's documents, batching, choosing tokens, reporting refusals."""
import pathlib
import re
import warnings
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlsplit

import astroquery
import numpy as np
import pytest
import requests
import responses
from astropy.io.votable.exceptions import W50
from astropy.table import MaskedColumn, Table

from astroquery_casda_ext.access import (AccessToken, DataLinkClient, parse_datalink,
                                         product_ids_from_table)
from astroquery_casda_ext.credentials import Credentials, ProxyAuth
from astroquery_casda_ext.endpoints import Endpoints
from astroquery_casda_ext.errors import (AccessDeniedWarning, CasdaLoginError, DataLinkError,
                                         InvalidInputError, InvalidTableError, NoAccessError,
                                         NotLoggedInError)

DATA = pathlib.Path(__file__).parent / "data"
RECORDED = pathlib.Path(astroquery.__file__).parent / "casda" / "tests" / "data"
DATALINK_URL = "https://data.csiro.au/casda_vo_proxy/vo/datalink/links"
SODA_ASYNC = "https://casda.csiro.au/casda_data_access/data/async"
NOW = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
NO_PERMISSION = "DefaultFault: Sorry, but you do not have permission to access this data product"


def fixture(name):
    return (DATA / name).read_bytes()


def token_of(document, product_id, description):
    """The token of the row with this description (what the test expects to be chosen)."""
    return next(row.token for row in document.rows_for(product_id) if row.description.startswith(description))


def ids_in(url):
    return [value for key, value in parse_qsl(urlsplit(url).query) if key == "ID"]


def requested_ids(call):
    return ids_in(call.request.url)


@pytest.fixture
def mocked():
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def client():
    return DataLinkClient(requests.Session(), DATALINK_URL, auth=None)


# --- parse_datalink on CASDA's documents ------------------------------------------------------

def test_parse_old_flavour_reads_rows_and_descriptors():
    document = parse_datalink(fixture("datalink_old.xml"))
    assert [row.service_def for row in document.rows] == [
        "", "", "async_service", "async_service", "cutout_service", "spectrum_generation_service"]
    assert document.rows[0].content_length == 1056024576
    assert document.rows[4].content_length is None
    assert set(document.services) == {"async_service", "cutout_service", "spectrum_generation_service"}
    assert document.services["cutout_service"].access_url == SODA_ASYNC
    assert document.services["cutout_service"].input_params.count("POS") == 3
    assert document.standard_id == ""


def test_parse_current_flavour_reads_standard_id_and_new_params():
    document = parse_datalink(fixture("datalink_current.xml"))
    assert document.standard_id == "ivo://ivoa.net/std/DataLink#links-1.1"
    assert "pawsey_async_service" in {row.service_def for row in document.rows}
    cutout = document.services["cutout_service"]
    assert cutout.name == "CASDA Image Generation Service"
    assert {"CIRCLE", "POLYGON", "BAND", "CHANNEL"} <= set(cutout.input_params)
    assert "POS" not in cutout.input_params


@pytest.mark.parametrize("name", ["datalink_old.xml", "datalink_current.xml"])
def test_parse_passes_casdas_unit_warning_to_the_caller(name):
    """CHANNEL's unit 'pixels'/'pixel' (W50) reaches the caller, as with astroquery.casda: the
    user's warning filters decide; with warnings as errors it is the W50 that is raised."""
    with pytest.warns(W50, match="Invalid unit string 'pixel"):
        assert parse_datalink(fixture(name)).rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(W50):
            parse_datalink(fixture(name))


@pytest.mark.parametrize("name", ["datalink.xml", "datalink_noaccess.xml"])
def test_parse_recorded_casda_responses(name):
    document = parse_datalink((RECORDED / name).read_bytes())
    assert document.rows and all(row.id for row in document.rows)


def test_parse_multi_id_takes_first_of_duplicate_descriptors():
    document = parse_datalink(fixture("datalink_multi.xml"))
    assert len(document.rows) == 16
    assert sorted(document.services) == ["async_service", "cutout_service", "pawsey_async_service",
                                         "spectrum_generation_service"]
    assert document.services["async_service"].name == "DownloadService"


def test_parse_reads_lower_case_access_url_param():
    content = fixture("datalink_current.xml").replace(b'name="accessURL"', b'name="accessUrl"')
    assert parse_datalink(content).services["async_service"].access_url == SODA_ASYNC


def test_parse_fault_document_raises_with_server_text():
    with pytest.raises(DataLinkError, match="TransientFault: Service is not currently able") as info:
        parse_datalink(fixture("datalink_fault.xml"))
    assert info.value.server_message == "TransientFault: Service is not currently able to function"


def test_parse_html_raises_datalink_error():
    with pytest.raises(DataLinkError, match="not a VOTable"):
        parse_datalink(b"<html><body><h1>502 Bad Gateway</h1></body></html>")


def test_rows_keep_tokens_out_of_repr():
    document = parse_datalink(fixture("datalink_current.xml"))
    web = token_of(document, "cube-1001", "Scripted file access via Web")
    assert web not in repr(document.rows)


# --- product ids from tables ------------------------------------------------------------------

def test_ids_from_obs_publisher_did():
    table = Table({"obs_publisher_did": ["cube-1", "cube-2"], "access_url": ["x", "y"]})
    assert product_ids_from_table(table) == ["cube-1", "cube-2"]


def test_ids_from_access_url_when_did_is_missing():
    table = Table({"access_url": [f"https://data.csiro.au/casda_vo_proxy/vo/datalink/links?ID=cube-{n}"
                                  for n in (5, 6)]})
    assert product_ids_from_table(table) == ["cube-5", "cube-6"]


def test_ids_from_recorded_sia2_result():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # astropy's notes on CASDA's VOTable are not under test here
        table = Table.read(RECORDED / "cone.xml", format="votable")
    ids = product_ids_from_table(table)
    assert len(ids) == len(table) and all(re.fullmatch(r"cube-\d+", pid) for pid in ids)


def test_ids_from_row_list_and_urls():
    table = Table({"obs_publisher_did": ["cube-1", "cube-2"]})
    assert product_ids_from_table(table[1]) == ["cube-2"]
    assert product_ids_from_table(["cube-3", b"cube-4"]) == ["cube-3", "cube-4"]
    assert product_ids_from_table("https://x/datalink/links?ID=cube-9") == ["cube-9"]


def test_masked_did_falls_back_to_access_url():
    table = Table({"obs_publisher_did": MaskedColumn(["cube-1", ""], mask=[False, True]),
                   "access_url": ["", "https://x/datalink/links?ID=cube-2"]})
    assert product_ids_from_table(table) == ["cube-1", "cube-2"]


def test_row_without_any_id_is_named():
    table = Table({"obs_publisher_did": MaskedColumn(["cube-1", ""], mask=[False, True])})
    with pytest.raises(InvalidTableError, match="row 1"):
        product_ids_from_table(table)


def test_empty_table_is_refused():
    with pytest.raises(InvalidTableError, match="empty"):
        product_ids_from_table(Table({"obs_publisher_did": np.array([], dtype=str)}))


def test_table_without_id_columns_names_what_is_needed():
    with pytest.raises(InvalidTableError, match="'obs_publisher_did' or an 'access_url'"):
        product_ids_from_table(Table({"s_ra": [1.0]}))


# --- tokens_for against recorded documents ---------------------------------------------------

def test_old_flavour_picks_web_token_not_pawsey(mocked, client):
    content = fixture("datalink_old.xml")
    mocked.get(DATALINK_URL, body=content)
    report = client.tokens_for(["cube-244"], "async_service")
    document = parse_datalink(content)
    web = token_of(document, "cube-244", "Scripted file access via Web")
    pawsey = token_of(document, "cube-244", "Scripted file access via Pawsey")
    assert [token.token for token in report.tokens] == [web]
    assert report.tokens[0].token != pawsey   # astroquery took the last async_service row: Pawsey's
    assert report.tokens[0].service_url == SODA_ASYNC
    assert report.tokens[0].content_length == 1056024576


@pytest.mark.parametrize("service, description", [
    ("async_service", "Scripted file access via Web"),
    ("cutout_service", "Scripted cut-out service"),
    ("spectrum_generation_service", "Scripted spectrum generation service")])
def test_current_flavour_tokens_per_service(mocked, client, service, description):
    content = fixture("datalink_current.xml")
    mocked.get(DATALINK_URL, body=content)
    (token,) = client.tokens_for(["cube-1001"], service).tokens
    assert token == AccessToken("cube-1001", service, SODA_ASYNC,
                                token_of(parse_datalink(content), "cube-1001", description),
                                token.content_length, "application/fits")


def test_size_limit_refuses_rather_than_using_pawsey_token(mocked, client):
    mocked.get(DATALINK_URL, body=fixture("datalink_size_limit.xml"))
    with pytest.raises(NoAccessError, match="exceeding 200 GB") as info:
        client.tokens_for(["cube-245"], "async_service")
    assert "exceeding 200 GB" in info.value.denied["cube-245"]


def test_one_request_for_several_products_tokens_in_requested_order(mocked, client):
    mocked.get(DATALINK_URL, body=fixture("datalink_multi.xml"))
    report = client.tokens_for(["visibility-77", "cube-1002", "cube-1001"], "async_service")
    assert [token.product_id for token in report.tokens] == ["visibility-77", "cube-1002", "cube-1001"]
    assert report.tokens[0].content_type == "application/tar"   # as CASDA labels visibilities
    assert len(mocked.calls) == 1
    assert requested_ids(mocked.calls[0]) == ["visibility-77", "cube-1002", "cube-1001"]


def test_duplicate_ids_are_sent_once(mocked, client):
    mocked.get(DATALINK_URL, body=fixture("datalink_current.xml"))
    report = client.tokens_for(["cube-1001", "cube-1001", "CUBE-1001"], "async_service")
    assert requested_ids(mocked.calls[0]) == ["cube-1001"]
    assert len(report.tokens) == 1


def _datalink_for(ids):
    """A current-flavour DataLink document for any ids (rows of cube-1001 repeated per id)."""
    text = fixture("datalink_current.xml").decode()
    head, rest = text.split("<TR>", 1)
    rows, tail = ("<TR>" + rest).rsplit("</TR>", 1)
    body = "".join(rows.replace("cube-1001", pid).replace("-SDgmf", f"-SDgmf{pid}") + "</TR>" for pid in ids)
    return head + body + tail


def test_batches_of_fifty_for_120_products(mocked):
    def answer(request):
        return 200, {}, _datalink_for(ids_in(request.url))
    mocked.add_callback(responses.GET, DATALINK_URL, callback=answer)
    ids = [f"cube-{n}" for n in range(120)]
    report = DataLinkClient(requests.Session(), DATALINK_URL, auth=None, batch_size=50).tokens_for(
        ids, "cutout_service")
    assert [len(requested_ids(call)) for call in mocked.calls] == [50, 50, 20]
    assert [pid for call in mocked.calls for pid in requested_ids(call)] == ids
    assert [token.product_id for token in report.tokens] == ids
    assert report.denied == {}


def test_refusal_with_user_id_is_attributed_to_the_right_product(mocked, client):
    mocked.get(DATALINK_URL, body=fixture("datalink_multi_denied.xml"))
    with pytest.warns(AccessDeniedWarning, match="cube-1002"):
        report = client.tokens_for(["cube-1001", "cube-1002", "cube-1003"], "async_service")
    assert [token.product_id for token in report.tokens] == ["cube-1001", "cube-1003"]
    assert report.denied == {"cube-1002": NO_PERMISSION}


def test_no_access_at_all_raises_with_messages(mocked, client):
    mocked.get(DATALINK_URL, body=fixture("datalink_noaccess.xml"))
    with pytest.raises(NoAccessError, match="cube-1005") as info:
        client.tokens_for(["cube-1005"], "async_service")
    assert info.value.denied == {"cube-1005": NO_PERMISSION}


def test_unknown_product_is_denied_with_not_found(mocked, client):
    mocked.get(DATALINK_URL, body=fixture("datalink_notfound.xml"))
    with pytest.warns(AccessDeniedWarning, match="cube-999999"):
        report = client.tokens_for(["cube-1001", "cube-999999"], "async_service")
    assert report.denied == {"cube-999999": "NotFoundFault: cube-999999 cannot be found"}


def test_service_not_offered_is_denied(mocked, client):
    mocked.get(DATALINK_URL, body=fixture("datalink_multi.xml"))
    with pytest.warns(AccessDeniedWarning, match="visibility-77"):
        report = client.tokens_for(["cube-1001", "visibility-77"], "cutout_service")
    assert report.denied == {"visibility-77": "CASDA offers no cutout_service for this product"}


def test_anonymous_answer_means_not_logged_in(mocked, client):
    mocked.get(DATALINK_URL, body=fixture("datalink_anonymous.xml"))
    with pytest.raises(NotLoggedInError, match="anonymous"):
        client.tokens_for(["cube-1001"], "async_service")


def test_401_raises_login_error_with_server_text(mocked, client):
    mocked.get(DATALINK_URL, status=401, body="Bad credentials for ATNF OPAL Login",
               headers={"WWW-Authenticate": 'Basic realm="ATNF OPAL Login"'})
    with pytest.raises(CasdaLoginError, match="Bad credentials for ATNF OPAL Login"):
        client.tokens_for(["cube-1001"], "async_service")


def test_http_error_raises_datalink_error_with_status_and_text(mocked, client):
    page = "<html><body><h1>Internal error</h1><p>database down</p></body></html>"
    mocked.get(DATALINK_URL, status=500, body=page)
    with pytest.raises(DataLinkError, match="HTTP 500.*Internal error database down") as info:
        client.tokens_for(["cube-1001"], "async_service")
    assert info.value.status == 500


def test_connection_failure_raises_datalink_error(mocked, client):
    mocked.get(DATALINK_URL, body=requests.ConnectionError("refused"))
    with pytest.raises(DataLinkError, match="ConnectionError"):
        client.tokens_for(["cube-1001"], "async_service")


def test_credentials_sent_through_proxy_auth(mocked):
    mocked.get(DATALINK_URL, body=fixture("datalink_current.xml"))
    auth = ProxyAuth(Credentials("opal-user", "s3cret"), Endpoints.for_environment("prod").vo_proxy)
    DataLinkClient(requests.Session(), DATALINK_URL, auth=auth).tokens_for(["cube-1001"], "async_service")
    assert mocked.calls[0].request.headers["Authorization"].startswith("Basic ")


def test_requests_auth_object_is_used_as_is(mocked):
    mocked.get(DATALINK_URL, body=fixture("datalink_current.xml"))
    auth = requests.auth.HTTPBasicAuth("opal-user", "s3cret")
    DataLinkClient(requests.Session(), DATALINK_URL, auth=auth).tokens_for(["cube-1001"], "async_service")
    assert "Authorization" in mocked.calls[0].request.headers


def test_unknown_service_is_rejected_before_sending(client):
    with pytest.raises(InvalidInputError, match="pawsey_async_service"):
        client.tokens_for(["cube-1001"], "pawsey_async_service")


def test_no_ids_sends_nothing(mocked, client):
    assert client.tokens_for([], "async_service").tokens == []
    assert len(mocked.calls) == 0


def test_tokens_never_in_reports_repr(mocked, client):
    mocked.get(DATALINK_URL, body=fixture("datalink_current.xml"))
    report = client.tokens_for(["cube-1001"], "async_service")
    assert report.tokens[0].token not in repr(report)
    assert report.tokens[0].token not in str(report.tokens)


# --- against the emulator over HTTP ----------------------------------------------------------

def _emulator_client(emulator, username=None, password=None):
    endpoints = Endpoints.for_server(emulator.url)
    credentials = Credentials(username or emulator.username, password or emulator.password)
    return DataLinkClient(requests.Session(), endpoints.datalink_url,
                          auth=ProxyAuth(credentials, endpoints.vo_proxy))


def _products(emulator, kind, count):
    return [product.product_id for product in emulator.holdings.products if product.kind == kind][:count]


def _released(emulator, count):
    embargoed = {project["project_code"] for project in emulator.holdings.projects if project["embargoed"]}
    return [product.product_id for product in emulator.holdings.products
            if product.project_code not in embargoed and product.release_date
            and product.release_date < NOW][:count]


def _embargoed(emulator):
    embargoed = {project["project_code"] for project in emulator.holdings.projects if project["embargoed"]}
    return next(product.product_id for product in emulator.holdings.products
                if product.project_code in embargoed)


def test_emulator_three_products_in_one_request(emulator):
    ids = _products(emulator, "spectral", 2) + _products(emulator, "continuum", 1)
    report = _emulator_client(emulator).tokens_for(ids, "cutout_service")
    assert [token.product_id for token in report.tokens] == ids
    assert all(token.service_url.startswith(emulator.url) for token in report.tokens)
    datalink_requests = [entry for entry in emulator.request_log if "datalink" in entry.path]
    assert len(datalink_requests) == 1 and datalink_requests[0].user == emulator.username


def test_emulator_old_flavour_picks_web_token(emulator):
    emulator.set_options(datalink_flavour="old")
    ids = _products(emulator, "spectral", 1)
    report = _emulator_client(emulator).tokens_for(ids, "async_service")
    assert [token.product_id for token in report.tokens] == ids


def test_emulator_embargoed_product_member_allowed_outsider_denied(emulator):
    product_id = _embargoed(emulator)
    member = _emulator_client(emulator).tokens_for([product_id], "async_service")
    assert [token.product_id for token in member.tokens] == [product_id]
    emulator.add_user("outsider", "outsider-password", projects=())
    released = _released(emulator, 1)
    with pytest.warns(AccessDeniedWarning, match=product_id):
        outsider = _emulator_client(emulator, "outsider", "outsider-password").tokens_for(
            released + [product_id], "async_service")
    assert "permission" in outsider.denied[product_id]
    assert [token.product_id for token in outsider.tokens] == released


def test_emulator_wrong_password_is_login_error(emulator):
    with pytest.raises(CasdaLoginError):
        _emulator_client(emulator, emulator.username, "wrong-password").tokens_for(
            _products(emulator, "continuum", 1), "async_service")
