"""The emulator's HTTP core: lifecycle, OPAL proxy auth, Host-based URLs, the request log,
concurrency, and file streaming (HEAD, Range, rate cap) over real HTTP on 127.0.0.1."""
import http.client
import re
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from astroquery_casda_ext.emulator import CasdaEmulator, EmulatorOptions, FaultRule
from astroquery_casda_ext.emulator.__main__ import build_parser, options_from
from astroquery_casda_ext.emulator.file_responses import FileBody, content_type_for

AVAILABILITY = "casda_vo_tools/tap/availability"
PROXY_AVAILABILITY = "casda_vo_proxy/vo/tap/availability"


def download_url(emulator, product_id="cube-1001"):
    """A SODA sync URL for a whole product (a WEB token minted for the built-in user)."""
    backend = emulator.backend
    token = backend.tokens.mint(product_id, backend.builtin_user.user_id, "WEB")
    return emulator.url + "casda_data_access/data/sync?id=" + token


def raw_get(emulator, path, headers):
    """GET with exactly these headers (http.client lets a test choose the Host header)."""
    address = urlsplit(emulator.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request("GET", "/" + path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


# --- lifecycle ---------------------------------------------------------------------------


def test_emulator_listens_on_a_free_loopback_port(emulator):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", emulator.url)
    assert emulator.port == int(emulator.url.rsplit(":", 1)[1].strip("/")) > 0
    response = requests.get(emulator.url + AVAILABILITY, timeout=10)
    assert response.status_code == 200
    assert "<available>true</available>" in response.text


def test_stop_closes_the_port_and_removes_the_temporary_data_dir():
    emulator = CasdaEmulator()
    with emulator:
        assert requests.get(emulator.url + AVAILABILITY, timeout=10).status_code == 200
        data_dir = emulator.data_dir
        assert data_dir.is_dir()
    assert not data_dir.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(emulator.url + AVAILABILITY, timeout=2)
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        emulator.start()


def test_given_data_dir_is_kept_and_option_overrides_apply(tmp_path):
    with CasdaEmulator(tmp_path, range_support=False, href_style="encoded") as emulator:
        assert emulator.options.range_support is False
        assert emulator.options.href_style == "encoded"
        assert emulator.holdings.products[0].path.is_relative_to(tmp_path)
    assert tmp_path.is_dir()


def test_unknown_option_is_refused():
    with pytest.raises(TypeError, match="no_such_option"):
        EmulatorOptions().replace(no_such_option=1)
    with pytest.raises(ValueError, match="href_style"):
        EmulatorOptions(href_style="weird")


# --- the OPAL proxy ---------------------------------------------------------------------------


def test_proxy_without_credentials_gets_401_with_the_opal_realm(emulator):
    response = requests.get(emulator.url + PROXY_AVAILABILITY, timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="ATNF OPAL Login"'
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "OPAL" in response.text


def test_proxy_with_a_wrong_password_gets_401(emulator):
    response = requests.get(emulator.url + PROXY_AVAILABILITY, auth=(emulator.username, "wrong"), timeout=10)
    assert response.status_code == 401
    unknown = requests.get(emulator.url + PROXY_AVAILABILITY, auth=("nobody", "x"), timeout=10)
    assert unknown.status_code == 401


def test_proxy_with_the_builtin_login_answers_like_vo_tools(emulator):
    response = requests.get(emulator.url + PROXY_AVAILABILITY, auth=(emulator.username, emulator.password),
                            timeout=10)
    assert response.status_code == 200
    assert "<available>true</available>" in response.text
    assert emulator.username == "casda-user"


def test_vo_tools_stay_anonymous_even_when_credentials_are_sent(emulator):
    query = {"REQUEST": "doQuery", "LANG": "ADQL",
             "QUERY": "SELECT COUNT(*) AS n FROM casda.continuum_component WHERE project_id = 'AS199'"}
    response = requests.get(emulator.url + "casda_vo_tools/tap/sync", params=query,
                            auth=(emulator.username, emulator.password), timeout=10)
    assert "<TD>0</TD>" in response.text  # the embargoed rows stay hidden
    assert emulator.request_log[-1].user is None


def test_added_user_can_log_in_until_reset(emulator):
    emulator.add_user("outsider", "outsider-pw", projects=("AS101",))
    auth = ("outsider", "outsider-pw")
    assert requests.get(emulator.url + PROXY_AVAILABILITY, auth=auth, timeout=10).status_code == 200
    emulator.reset()
    assert requests.get(emulator.url + PROXY_AVAILABILITY, auth=auth, timeout=10).status_code == 401


def test_builtin_user_belongs_to_the_embargoed_project(emulator):
    user = emulator.backend.builtin_user
    embargoed = {project["project_code"] for project in emulator.holdings.projects if project["embargoed"]}
    assert embargoed and embargoed <= set(user.projects)
    assert user.user_id == "3242"


# --- absolute URLs follow the Host header ---------------------------------------------------------------


def test_documents_use_the_host_the_client_asked_for(emulator):
    status, _headers, body = raw_get(emulator, "casda_vo_tools/tap/capabilities",
                                     {"Host": "example.org:1234"})
    assert status == 200
    assert b"http://example.org:1234/casda_vo_tools/tap/availability" in body
    assert b"127.0.0.1" not in body


def test_tap_results_point_datalink_at_the_proxy_on_the_requested_host(emulator):
    query = "REQUEST=doQuery&LANG=ADQL&QUERY=SELECT%20TOP%201%20access_url%20FROM%20ivoa.obscore"
    status, _headers, body = raw_get(emulator, "casda_vo_tools/tap/sync?" + query,
                                     {"Host": "example.org:1234"})
    assert status == 200
    assert b"<?xml-stylesheet href='http://example.org:1234/casda_vo_tools/votable.xsl'" in body
    datalink = rb"<TD>http://example\.org:1234/casda_vo_proxy/vo/datalink/links\?ID=cube-\d+</TD>"
    assert re.search(datalink, body)


# --- request log ---------------------------------------------------------------------------------------


def test_request_log_records_method_path_query_user_status_and_bytes(emulator):
    anonymous = requests.get(emulator.url + AVAILABILITY, params={"a": "1", "b": ["2", "3"]}, timeout=10)
    proxied = requests.get(emulator.url + PROXY_AVAILABILITY, auth=(emulator.username, emulator.password),
                           timeout=10)
    refused = requests.get(emulator.url + PROXY_AVAILABILITY, timeout=10)
    first, second, third = emulator.request_log
    assert (first.method, first.path, first.user, first.status) == ("GET", "/" + AVAILABILITY, None, 200)
    assert first.query == {"a": "1", "b": ["2", "3"]}
    assert first.bytes_sent == len(anonymous.content)
    assert (second.user, second.status, second.bytes_sent) == ("casda-user", 200, len(proxied.content))
    assert (third.user, third.status, third.bytes_sent) == (None, 401, len(refused.content))


def test_request_log_never_holds_passwords_or_tokens(emulator):
    requests.get(emulator.url + PROXY_AVAILABILITY, auth=(emulator.username, emulator.password), timeout=10)
    url = download_url(emulator)
    token = url.rsplit("=", 1)[1]
    requests.get(url, timeout=10)
    logged = repr(emulator.request_log)
    assert emulator.password not in logged
    assert token not in logged
    assert emulator.request_log[-1].query == {"id": "<redacted>"}


def test_request_log_counts_only_bytes_actually_sent(emulator):
    url = download_url(emulator)
    size = emulator.holdings.product("cube-1001").size
    emulator.add_fault(FaultRule(r"/data/sync", "truncate", after_bytes=1000))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=10).content
    assert emulator.request_log[-1].bytes_sent == 1000 < size


def test_reset_clears_the_log_faults_and_options(emulator):
    emulator.set_options(range_support=False)
    emulator.add_fault(FaultRule(AVAILABILITY, "status", status=503))
    assert requests.get(emulator.url + AVAILABILITY, timeout=10).status_code == 503
    emulator.reset()
    assert emulator.request_log == []
    assert emulator.options.range_support is True
    assert requests.get(emulator.url + AVAILABILITY, timeout=10).status_code == 200


# --- routing -----------------------------------------------------------------------------------------


def test_unknown_path_is_404_and_wrong_method_is_405(emulator):
    missing = requests.get(emulator.url + "casda_vo_tools/no/such/service", timeout=10)
    assert missing.status_code == 404
    wrong = requests.delete(emulator.url + "casda_vo_tools/tap/sync", timeout=10)
    assert wrong.status_code == 405
    assert "GET" in wrong.headers["Allow"]


def test_votable_stylesheet_is_served_under_both_bases(emulator):
    anonymous = requests.get(emulator.url + "casda_vo_tools/votable.xsl", timeout=10)
    proxied = requests.get(emulator.url + "casda_vo_proxy/vo/votable.xsl",
                           auth=(emulator.username, emulator.password), timeout=10)
    assert anonymous.status_code == proxied.status_code == 200
    assert b"xsl:stylesheet" in anonymous.content


def test_requests_are_served_in_parallel(emulator):
    emulator.add_fault(FaultRule(AVAILABILITY, "latency", delay=0.5))
    statuses = []

    def fetch():
        statuses.append(requests.get(emulator.url + AVAILABILITY, timeout=10).status_code)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert statuses == [200] * 4
    assert 0.5 <= elapsed < 1.5  # one latency, not four in a row


# --- file streaming ----------------------------------------------------------------------------------


def test_download_headers_and_body_match_the_file(emulator):
    product = emulator.holdings.product("cube-1001")
    response = requests.get(download_url(emulator), timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == f"attachment; filename={product.staged_name}"
    assert response.headers["Content-Length"] == str(product.size)
    assert response.headers["Content-Type"] == "image/x-fits"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.content == product.path.read_bytes()


def test_head_gives_the_headers_without_a_body(emulator):
    product = emulator.holdings.product("cube-1001")
    response = requests.head(download_url(emulator), timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(product.size)
    assert response.content == b""


@pytest.mark.parametrize("header, start, stop", [
    ("bytes=100-199", 100, 200),
    ("bytes=1000-", 1000, None),
    ("bytes=-500", -500, None),
])
def test_single_range_gets_206_and_the_slice(emulator, header, start, stop):
    data = emulator.holdings.product("cube-1001").path.read_bytes()
    expected = data[start:stop]
    response = requests.get(download_url(emulator), headers={"Range": header}, timeout=10)
    assert response.status_code == 206
    assert response.content == expected
    first = start if start >= 0 else len(data) + start
    assert response.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert response.headers["Content-Length"] == str(len(expected))


def test_unsatisfiable_range_gets_416(emulator):
    size = emulator.holdings.product("cube-1001").size
    response = requests.get(download_url(emulator), headers={"Range": f"bytes={size + 10}-"}, timeout=10)
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{size}"


def test_without_range_support_range_is_ignored_and_not_advertised(emulator):
    emulator.set_options(range_support=False)
    product = emulator.holdings.product("cube-1001")
    response = requests.get(download_url(emulator), headers={"Range": "bytes=100-199"}, timeout=10)
    assert response.status_code == 200
    assert "Accept-Ranges" not in response.headers
    assert len(response.content) == product.size


def test_transfer_rate_caps_download_speed(emulator):
    size = emulator.holdings.product("cube-1001").size
    emulator.set_options(transfer_rate=size / 0.4)  # the whole file in about 0.4 s
    started = time.monotonic()
    response = requests.get(download_url(emulator), timeout=10)
    elapsed = time.monotonic() - started
    assert len(response.content) == size
    assert elapsed >= 0.35


@pytest.mark.parametrize("name, expected", [
    ("observations-609-image_cubes-x.fits", "image/x-fits"),
    ("cutout-1-imagecube-1001.fits.checksum", "text/plain"),
    ("error-01.txt", "text/plain"),
    ("visibility.tar", "application/octet-stream"),
])
def test_download_content_type_follows_the_extension(name, expected):
    assert content_type_for(name) == expected


def test_file_body_reads_in_bounded_chunks(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 20)
    body = FileBody(path, 10, 3000)
    body.chunk_size = 1024
    chunks = list(body)
    assert [len(chunk) for chunk in chunks] == [1024, 1024, 952]
    assert b"".join(chunks) == path.read_bytes()[10:3010]


# --- what the benchmarks drive from another process: latency, the request log over HTTP ----------


def test_request_latency_holds_back_every_request(emulator):
    emulator.set_options(request_latency=0.3)
    started = time.monotonic()
    assert requests.get(emulator.url + AVAILABILITY, timeout=10).status_code == 200
    assert time.monotonic() - started >= 0.3  # a lower bound: the latency was slept
    with pytest.raises(ValueError, match="request_latency"):
        EmulatorOptions(request_latency=-1)


def test_control_path_serves_clears_and_resets_the_request_log(emulator):
    control = emulator.url + "_emulator/"
    assert requests.get(control + "log", timeout=10).status_code == 404  # off by default: CASDA has none
    emulator.set_options(control_api=True)
    requests.get(emulator.url + AVAILABILITY, timeout=10)
    requests.get(emulator.url + PROXY_AVAILABILITY, auth=(emulator.username, emulator.password), timeout=10)
    entries = requests.get(control + "log", timeout=10).json()
    # the log as LoggedRequest fields; control requests are not in it (only the one made while off)
    assert [(e["method"], e["path"], e["user"], e["status"]) for e in entries] == [
        ("GET", "/_emulator/log", None, 404), ("GET", "/" + AVAILABILITY, None, 200),
        ("GET", "/" + PROXY_AVAILABILITY, emulator.username, 200)]
    assert requests.delete(control + "log", timeout=10).status_code == 204
    assert requests.get(control + "log", timeout=10).json() == []
    requests.get(emulator.url + AVAILABILITY, timeout=10)
    assert requests.post(control + "reset", timeout=10).status_code == 204
    assert emulator.request_log == [] and emulator.options.control_api is False  # options as constructed
    assert requests.get(control + "log", timeout=10).status_code == 404


# --- command line -----------------------------------------------------------------------------------


def test_command_line_options_map_to_emulator_options():
    args = build_parser().parse_args(["--port", "0", "--datalink-flavour", "old", "--href-style", "presigned",
                                      "--no-range", "--bulk-count", "2", "--bulk-size", "1000"])
    options = options_from(args)
    assert options.datalink_flavour == "old"
    assert (options.href_style, options.range_support) == ("presigned", False)
    assert (options.holdings.bulk_count, options.holdings.bulk_size) == (2, 1000)
    args = build_parser().parse_args(["--job-phases", "queued=0.5,EXECUTING=1.5", "--latency", "0.05",
                                      "--rate", "1e6", "--control"])
    options = options_from(args)
    assert options.job_phases == (("QUEUED", 0.5), ("EXECUTING", 1.5))
    assert (options.request_latency, options.transfer_rate, options.control_api) == (0.05, 1e6, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--job-phases", "QUEUED"])


def test_command_line_serves_and_prints_url_and_login(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "astroquery_casda_ext.emulator", "--port", "0",
                                "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline() for _ in range(4)]
        url = re.search(r"serving (http://\S+)", lines[0]).group(1)
        assert "casda-user" in lines[3]
        assert requests.get(url + AVAILABILITY, timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0


def test_the_request_log_is_in_the_order_requests_arrived_not_the_order_they_finished():
    """A response is logged once sent; on a busy machine the next request (sent as soon as the
    client had the last byte) can be logged first.  The log keeps the order of arrival."""
    from astroquery_casda_ext.emulator.backend import LoggedRequest, RequestLog
    log = RequestLog()
    first, second = log.begin(), log.begin()
    log.finish(LoggedRequest("GET", "/second", {}, None, 200, 1), second)
    assert log.in_flight == 1
    log.finish(LoggedRequest("GET", "/first", {}, None, 200, 1), first)
    assert [entry.path for entry in log.snapshot()] == ["/first", "/second"] and log.in_flight == 0
