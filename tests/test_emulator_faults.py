"""Injected faults, each observed by a raw client: latency, status, reset, truncate, corrupt,
slow, stall; path and method selection, ``times``, and faults on streamed bodies."""
import http.client
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

from astroquery_casda_ext.emulator import FaultRule

AVAILABILITY = "casda_vo_tools/tap/availability"
TAP_SYNC = ("casda_vo_tools/tap/sync?REQUEST=doQuery&LANG=ADQL&QUERY=SELECT%20*%20FROM%20ivoa.obscore")


def download_path(emulator, product_id="cube-1001"):
    """Path and query of a SODA sync download of a whole product (token minted directly)."""
    token = emulator.backend.tokens.mint(product_id, emulator.backend.builtin_user.user_id, "WEB")
    return "casda_data_access/data/sync?id=" + token


def product_bytes(emulator, product_id="cube-1001"):
    return emulator.holdings.product(product_id).path.read_bytes()


def raw_exchange(emulator, path, *, timeout=10.0):
    """Send a GET on a bare socket; return (head, body bytes received, exception that ended it)."""
    address = urlsplit(emulator.url)
    received, ended_by = b"", None
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as sock:
        sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: {address.netloc}\r\nConnection: close\r\n\r\n".encode())
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError as exc:  # ConnectionResetError, socket.timeout...
            ended_by = exc
    head, _, body = received.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body, ended_by


def header(head, name):
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


# --- faults before the response ----------------------------------------------------------------------


def test_latency_delays_then_answers_normally(emulator):
    emulator.add_fault(FaultRule(AVAILABILITY, "latency", delay=0.3))
    started = time.monotonic()
    response = requests.get(emulator.url + AVAILABILITY, timeout=10)
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200


@pytest.mark.parametrize("status, retry_after, reason", [
    (503, 2, "Service Unavailable"), (429, 1.5, "Too Many Requests"), (500, None, "Internal Server Error"),
])
def test_status_fault_answers_with_a_casda_style_text_body(emulator, status, retry_after, reason):
    emulator.add_fault(FaultRule(AVAILABILITY, "status", status=status, retry_after=retry_after))
    response = requests.get(emulator.url + AVAILABILITY, timeout=10)
    assert response.status_code == status
    assert response.text == f"FAILURE: {reason}"
    assert response.headers["Content-Type"].startswith("text/plain")
    expected = None if retry_after is None else ("2" if retry_after == 2 else "1.5")
    assert response.headers.get("Retry-After") == expected


def test_times_limits_how_often_a_rule_strikes(emulator):
    emulator.add_fault(FaultRule(AVAILABILITY, "status", status=503, times=2))
    statuses = [requests.get(emulator.url + AVAILABILITY, timeout=10).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_rules_select_by_path_regex_and_method(emulator):
    emulator.add_fault(FaultRule(r"/tap/avail", "status", status=500, methods=("POST",)))
    emulator.add_fault(FaultRule(r"^/download/", "status", status=503))
    assert requests.get(emulator.url + AVAILABILITY, timeout=10).status_code == 200
    assert requests.post(emulator.url + AVAILABILITY, timeout=10).status_code == 500
    assert requests.get(emulator.url + "download/web/x/y.fits", timeout=10).status_code == 503


def test_status_fault_applies_before_authentication_and_routing(emulator):
    emulator.add_fault(FaultRule(r"/casda_vo_proxy/", "status", status=503))
    emulator.add_fault(FaultRule(r"/no/such/path", "status", status=429))
    assert requests.get(emulator.url + "casda_vo_proxy/vo/tap/availability", timeout=10).status_code == 503
    assert requests.get(emulator.url + "casda_vo_tools/no/such/path", timeout=10).status_code == 429


def test_clear_faults_removes_every_rule(emulator):
    emulator.add_fault(path=AVAILABILITY, kind="status", status=503)
    emulator.clear_faults()
    assert requests.get(emulator.url + AVAILABILITY, timeout=10).status_code == 200


def test_invalid_rules_are_refused():
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultRule(AVAILABILITY, "explode")
    with pytest.raises(ValueError, match="rate"):
        FaultRule(AVAILABILITY, "slow")


# --- faults in the body --------------------------------------------------------------------------------


def test_reset_sends_some_bytes_then_resets_the_connection(emulator):
    data = product_bytes(emulator)
    emulator.add_fault(FaultRule(r"/data/sync", "reset", after_bytes=5000))
    head, body, ended_by = raw_exchange(emulator, download_path(emulator))
    assert head.startswith("HTTP/1.1 200")
    assert header(head, "Content-Length") == str(len(data))
    assert body == data[:5000]
    assert isinstance(ended_by, ConnectionResetError)
    assert emulator.request_log[-1].bytes_sent == 5000


def test_requests_sees_a_reset_as_connection_reset_and_a_truncation_as_incomplete(emulator):
    emulator.add_fault(FaultRule(r"/data/sync", "reset", after_bytes=1000, times=1))
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="Connection reset by peer"):
        requests.get(emulator.url + download_path(emulator), timeout=10).content
    emulator.add_fault(FaultRule(r"/data/sync", "truncate", after_bytes=1000, times=1))
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        requests.get(emulator.url + download_path(emulator), timeout=10).content


def test_truncate_closes_cleanly_short_of_content_length(emulator):
    data = product_bytes(emulator)
    emulator.add_fault(FaultRule(r"/data/sync", "truncate", after_bytes=7000))
    head, body, ended_by = raw_exchange(emulator, download_path(emulator))
    assert ended_by is None  # a clean end of stream, not a reset
    assert header(head, "Content-Length") == str(len(data))
    assert body == data[:7000]


def test_truncated_streamed_body_lacks_its_last_chunk(emulator):
    emulator.add_fault(FaultRule(r"/tap/sync", "truncate", after_bytes=3000))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(emulator.url + TAP_SYNC, timeout=10).content


def test_reset_composes_with_a_streamed_tap_result(emulator):
    emulator.add_fault(FaultRule(r"/tap/sync", "reset", after_bytes=2000))
    head, body, ended_by = raw_exchange(emulator, TAP_SYNC)
    assert header(head, "Transfer-Encoding") == "chunked"
    assert isinstance(ended_by, ConnectionResetError)
    assert emulator.request_log[-1].bytes_sent == 2000


def test_corrupt_keeps_the_length_and_flips_bytes_after_the_offset(emulator):
    data = product_bytes(emulator)
    emulator.add_fault(FaultRule(r"/data/sync", "corrupt", after_bytes=4096))
    response = requests.get(emulator.url + download_path(emulator), timeout=10)
    assert response.status_code == 200
    body = response.content
    assert len(body) == len(data)
    assert body[:4096] == data[:4096]
    assert body[4096:] == bytes(255 - value for value in data[4096:])


def test_slow_caps_the_rate(emulator):
    data = product_bytes(emulator)
    emulator.add_fault(FaultRule(r"/data/sync", "slow", rate=len(data) / 0.4))
    started = time.monotonic()
    response = requests.get(emulator.url + download_path(emulator), timeout=10)
    assert time.monotonic() - started >= 0.35
    assert response.content == data


def test_stall_trips_a_client_read_timeout(emulator):
    data = product_bytes(emulator)
    emulator.add_fault(FaultRule(r"/data/sync", "stall", after_bytes=100, delay=2.0))
    head, body, ended_by = raw_exchange(emulator, download_path(emulator), timeout=0.4)
    assert head.startswith("HTTP/1.1 200")
    assert body == data[:100]
    assert isinstance(ended_by, socket.timeout)


def test_stall_then_sends_the_rest(emulator):
    data = product_bytes(emulator)
    emulator.add_fault(FaultRule(r"/data/sync", "stall", after_bytes=100, delay=0.3))
    address = urlsplit(emulator.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=5)
    started = time.monotonic()
    connection.request("GET", "/" + download_path(emulator))
    body = connection.getresponse().read()
    connection.close()
    assert time.monotonic() - started >= 0.3
    assert body == data


def test_body_faults_leave_empty_bodies_alone(emulator):
    emulator.add_fault(FaultRule(r"/data/sync", "reset", after_bytes=0))
    response = requests.head(emulator.url + download_path(emulator), timeout=10)
    assert response.status_code == 200
