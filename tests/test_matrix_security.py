"""Security matrix: where the OPAL password and the access tokens may go, and where not.

* Credentials never appear in logs (DEBUG, astroquery's, urllib3's and ours), reprs,
  exception texts or the manifest, and reach no server but the OPAL proxy: a spy on the
  emulator's WSGI application sees every ``Authorization`` header, not just what the
  proxy accepted.
* A redirect from the proxy to another host drops the credentials.
* TLS certificates are checked: a server with a self-signed certificate is refused.
* Plain HTTP with credentials is refused, except to loopback (the emulator).
* A server-supplied file name that would leave the download directory is refused.
* A password file that others can read is refused.
"""
import base64
import datetime
import ipaddress
import logging
import os
import ssl
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import astropy.units as u
import pytest
import urllib3.util.connection

from astroquery_casda_ext import CasdaClass, conf
from astroquery_casda_ext.cli import main
from astroquery_casda_ext.credentials import Credentials, ProxyAuth
from astroquery_casda_ext.emulator.datalink_state import TokenStore
from astroquery_casda_ext.emulator.server import EmulatorApp
from astroquery_casda_ext.errors import (CasdaError, CasdaLoginError, DownloadError, InsecureTransportError,
                                         ServiceError, UnsafeFilenameError)
from astroquery_casda_ext.jobs import PollPolicy

pytestmark = pytest.mark.matrix("security")

PROXY = "/casda_vo_proxy/"
LOOPBACK = "127.0.0.1"
USER = "leak-test@example.org"
PASSWORD = "Zq9-unusual-Pa55word-x7Kp"
FAST_POLL = PollPolicy(first=0.05, factor=1.0, cap=0.05)
LOGGERS = ("", "astroquery", "astroquery_casda_ext", "urllib3", "pyvo", "requests")


# --- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _no_netrc_no_ca_overrides(monkeypatch, tmp_path):
    """requests reads ~/.netrc on redirects and CA bundles from the environment: not here."""
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def user(emulator):
    """A user with a distinctive password, member of every project (embargoed ones too)."""
    emulator.add_user(USER, PASSWORD, projects=tuple(emulator.holdings.member_projects))
    return USER


@pytest.fixture
def tokens(monkeypatch):
    """Every access token the emulator mints during the test."""
    minted = []
    mint = TokenStore.mint

    def recording_mint(self, product_id, user_id, mode):
        token = mint(self, product_id, user_id, mode)
        minted.append(token)
        return token
    monkeypatch.setattr(TokenStore, "mint", recording_mint)
    return minted


@pytest.fixture
def authorization_seen(monkeypatch):
    """(method, path, query string, Authorization header) of every request the emulator receives."""
    seen = []
    call = EmulatorApp.__call__

    def spy(self, environ, start_response):
        seen.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""),
                     environ.get("HTTP_AUTHORIZATION")))
        return call(self, environ, start_response)
    monkeypatch.setattr(EmulatorApp, "__call__", spy)
    return seen


@pytest.fixture
def debug_logs(caplog):
    """Every log record at DEBUG, from the root logger down (levels restored afterwards)."""
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield caplog
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


@pytest.fixture
def no_remote_connections(monkeypatch):
    """Connections to anything but loopback fail the test (and are never attempted)."""
    attempts = []
    connect = urllib3.util.connection.create_connection

    def guarded(address, *args, **kwargs):
        host = address[0]
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            attempts.append(host)
            raise OSError(f"test guard: no connection to {host}")
        return connect(address, *args, **kwargs)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded)
    return attempts


def secrets_of(tokens):
    return [PASSWORD, basic_header(PASSWORD).split()[1], *tokens]


def assert_no_secret(text, tokens, where):
    for secret in secrets_of(tokens):
        assert secret not in text, f"a credential appears in {where}"


# --- a whole session, watched -----------------------------------------------------------------------

def whole_session(emulator, tmp_path):
    """Everything a user does, logged in: returns the client, the objects seen, the errors raised."""
    emulator.set_options(job_phases=(("QUEUED", 0.05), ("EXECUTING", 0.05)))
    client = CasdaClass(server=emulator.url)
    client.login(USER, password=PASSWORD)
    with conf.set_temp("poll_first", 0.05):
        return _whole_session(emulator, client, tmp_path)


def _whole_session(emulator, client, tmp_path):
    images = client.query_sbid_images(609)[:2]
    cubes = client.query_sbid_images(609, subtypes=("spectral.restored.3d",))[:1]
    objects = [client, images, client.query_tap("SELECT TOP 3 * FROM ivoa.obscore", async_job=True),
               client.query_region("187.5 -45.0", radius=1 * u.deg, cache=False)]
    report = client.get_access_tokens(images, service="cutout_service")
    objects += [report, *report.tokens, client._datalink(), client._discovery]
    [job] = client.stage_data(images, wait=False)
    job.wait(FAST_POLL)
    objects += [job, *job.result_files(), client.load_job(job.url)]
    centre = f"{cubes[0]['s_ra']} {cubes[0]['s_dec']}"
    urls = client.cutout(cubes, coordinates=[centre, "10.0 10.0"], radius=20 * u.arcsec, poll_interval=1)
    urls += client.spectra(cubes, centre, 20 * u.arcsec, poll_interval=1)
    manifest = client.download([job], tmp_path / "staged")
    objects += [manifest, client.download_files(urls, savedir=tmp_path / "cutouts")]
    errors = []
    for failing in (lambda: CasdaClass(server=emulator.url).login(USER, password=PASSWORD + "-wrong"),
                    lambda: client.query_tap("SELECT nosuchcolumn FROM ivoa.obscore"),
                    lambda: client.load_job(job.url + "-gone")):
        with pytest.raises(CasdaError) as info:
            failing()
        errors.append(info.value)
    return client, objects, errors, [tmp_path / "staged" / "casda_manifest.ecsv"]


def test_credentials_stay_out_of_logs_reprs_errors_and_the_manifest(emulator, user, tokens, debug_logs,
                                                                    tmp_path):
    emulator.set_options(href_style="presigned")
    client, objects, errors, manifests = whole_session(emulator, tmp_path)
    assert tokens, "tokens were handed out (and are looked for)"
    logged = debug_logs.text + "".join(f"{record.msg} {record.args}" for record in debug_logs.records)
    assert "urllib3" in {record.name.split(".")[0] for record in debug_logs.records}, "urllib3 was heard"
    assert_no_secret(logged, tokens, "the DEBUG log")
    for item in objects:
        assert_no_secret(repr(item) + str(item), tokens, f"the repr of {type(item).__name__}")
    for error in errors:
        chain = "".join(traceback.format_exception(error))
        assert_no_secret(chain + repr(error) + str(vars(error)), tokens, f"{type(error).__name__}")
    for manifest in manifests:
        text = manifest.read_text()
        assert_no_secret(text, tokens, "the manifest")
        assert "X-Amz-Signature" not in text
    assert_no_secret(repr(vars(client)), tokens, "the client's attributes")


def test_credentials_reach_the_proxy_and_nothing_else(emulator, user, tokens, authorization_seen, tmp_path):
    whole_session(emulator, tmp_path)
    to_proxy = [seen for seen in authorization_seen if seen[1].startswith(PROXY)]
    elsewhere = [seen for seen in authorization_seen if not seen[1].startswith(PROXY)]
    assert to_proxy and len(elsewhere) > 10   # SIA2, TAP jobs, SODA, downloads
    assert [seen[:2] for seen in elsewhere if seen[3] is not None] == [], "no Authorization outside the proxy"
    assert {seen[3] for seen in to_proxy} <= {basic_header(PASSWORD), basic_header(PASSWORD + "-wrong")}
    assert not any(PASSWORD in query for _, _, query, _ in authorization_seen)
    logged = emulator.request_log
    assert all(entry.user is None for entry in logged if not entry.path.startswith(PROXY))
    assert USER in {entry.user for entry in logged if entry.path.startswith(PROXY)}


def basic_header(password):
    return "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()


# --- redirects --------------------------------------------------------------------------------------

class Recorder(BaseHTTPRequestHandler):
    """Records (method, path, Authorization); ``answer(handler)`` writes the response."""

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        self.server.answer(self)

    do_GET = do_POST = do_HEAD = _handle

    def log_message(self, *args):
        pass


class LocalServer:
    """A tiny HTTP(S) server on 127.0.0.1 for the cases the emulator cannot play."""

    def __init__(self, answer, *, tls=None):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        self.httpd.seen, self.httpd.answer = [], answer
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def port(self):
        return self.httpd.server_address[1]

    @property
    def seen(self):
        return self.httpd.seen

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def send(handler, status, body=b"", headers=()):
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


AVAILABLE = (b'<availability xmlns="http://www.ivoa.net/xml/VOSIAvailability/v1.0">'
             b'<available>true</available></availability>')


@pytest.mark.parametrize("target_host", ["localhost", "127.0.0.1"], ids=["other host name", "other port"])
def test_a_redirect_from_the_proxy_to_another_host_drops_the_credentials(target_host):
    with LocalServer(lambda h: send(h, 200, AVAILABLE, [("Content-Type", "text/xml")])) as target:
        elsewhere = f"http://{target_host}:{target.port}"
        with LocalServer(lambda h: send(h, 307, headers=[("Location", elsewhere + h.path)])) as proxy:
            client = CasdaClass(server=f"http://127.0.0.1:{proxy.port}/")
            client.login(USER, password=PASSWORD)    # the login check follows the redirect
            with pytest.raises(CasdaError):
                client.get_access_tokens(["cube-1001"])   # and so does DataLink
    assert len(proxy.seen) >= 2 and all(seen[2] and seen[2].startswith("Basic ") for seen in proxy.seen)
    assert len(target.seen) == len(proxy.seen)
    assert [authorization for _, _, authorization in target.seen] == [None] * len(target.seen)


def test_a_redirect_from_the_proxy_to_another_path_on_the_same_host_drops_the_credentials():
    """requests keeps Authorization on a same-host redirect; the client must not: only the proxy
    prefix may see the password, checked again at every hop."""
    def answer(handler):
        if handler.path.startswith(PROXY):
            send(handler, 307, headers=[("Location", "/elsewhere" + handler.path)])
        else:
            send(handler, 200, AVAILABLE, [("Content-Type", "text/xml")])
    with LocalServer(answer) as server:
        client = CasdaClass(server=f"http://127.0.0.1:{server.port}/")
        client.login(USER, password=PASSWORD)
        with pytest.raises(CasdaError):
            client.get_access_tokens(["cube-1001"])
    on_proxy = [seen for seen in server.seen if seen[1].startswith(PROXY)]
    off_proxy = [seen for seen in server.seen if not seen[1].startswith(PROXY)]
    assert len(on_proxy) >= 2 and all(seen[2] == basic_header(PASSWORD) for seen in on_proxy)
    assert len(off_proxy) == len(on_proxy)
    assert [authorization for _, _, authorization in off_proxy] == [None] * len(off_proxy)


def echo(status):
    """A server that answers with everything it was sent, the Authorization header decoded too."""
    def answer(handler):
        header = handler.headers.get("Authorization") or ""
        decoded = base64.b64decode(header.split()[-1]).decode() if header.startswith("Basic ") else ""
        body = f"FAILURE: you sent Authorization: {header} ({decoded}) to {handler.path}".encode()
        send(handler, status, body, [("Content-Type", "text/plain")])
    return answer


ECHOED_CALLS = {
    "login, 401": (401, lambda client: client.login(USER, password=PASSWORD)),
    "login, 500": (500, lambda client: client.login(USER, password=PASSWORD)),
    "DataLink, 500": (500, lambda client: client.get_access_tokens(["cube-1001"])),
    "authenticated TAP, 400": (400, lambda client: client.query_tap("SELECT 1", authenticated=True)),
}


@pytest.mark.parametrize("call", ECHOED_CALLS)
def test_credentials_a_server_echoes_never_reach_an_exception(call, debug_logs):
    status, make_call = ECHOED_CALLS[call]
    with LocalServer(echo(status)) as server:
        client = CasdaClass(server=f"http://127.0.0.1:{server.port}/")
        client._credentials = Credentials(USER, PASSWORD)     # logged in (the login check is a call here)
        with pytest.raises(CasdaError) as info:
            make_call(client)
    assert server.seen and all(seen[2] == basic_header(PASSWORD) for seen in server.seen), "it was sent"
    error = info.value
    text = "".join(traceback.format_exception(error)) + repr(error) + str(vars(error))
    assert "you sent Authorization" in text, "the server's message is kept"
    assert_no_secret(text, [], "the exception")
    assert_no_secret(debug_logs.text, [], "the log")


# --- TLS ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A certificate for 127.0.0.1 that no CA signed, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)])
    now = datetime.datetime.now(datetime.timezone.utc)
    alternative_name = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))])
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(alternative_name, critical=False)
                   .sign(key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def https_server(self_signed):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed)
    with LocalServer(lambda h: send(h, 404, b"FAILURE: nothing here", [("Content-Type", "text/plain")]),
                     tls=context) as server:
        yield server


CERTIFICATE = r"(?i)certificate"

HTTPS_CALLS = {
    "SIA2 query": (lambda c, base, d: c.query_region("187.5 -45", cache=False), ServiceError),
    "TAP query": (lambda c, base, d: c.query_tap("SELECT TOP 1 * FROM ivoa.obscore"), ServiceError),
    "login": (lambda c, base, d: c.login(USER, password=PASSWORD), CasdaError),
    "download": (lambda c, base, d: c.download_files([base + "download/web/job/file.fits"], savedir=d),
                 DownloadError),
}


@pytest.mark.parametrize("call", HTTPS_CALLS)
def test_a_server_whose_certificate_does_not_verify_is_refused(https_server, tmp_path, call):
    """Nothing is exchanged with a server that cannot prove who it is; the error says why."""
    base = f"https://127.0.0.1:{https_server.port}/"
    make_call, error = HTTPS_CALLS[call]
    with pytest.raises(error, match=CERTIFICATE):
        make_call(CasdaClass(server=base), base, tmp_path / "out")
    assert https_server.seen == [], "no HTTP request went over the unverified connection"
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("call", ["SIA2 query", "TAP query", "login"])
def test_a_certificate_failure_is_attempted_once(https_server, call, monkeypatch):
    """A refused certificate fails the same way every time: no retry, at once."""
    attempts = []
    connect = urllib3.util.connection.create_connection

    def counting(address, *args, **kwargs):
        attempts.append(address)
        return connect(address, *args, **kwargs)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", counting)
    base = f"https://127.0.0.1:{https_server.port}/"
    make_call, error = HTTPS_CALLS[call]
    with pytest.raises(error, match=CERTIFICATE):
        make_call(CasdaClass(server=base), base, None)
    assert len(attempts) == 1


def test_the_same_server_is_used_once_its_certificate_is_trusted(https_server, self_signed, monkeypatch):
    """The refusal above is the certificate check, not a broken server: trust it and it answers."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(self_signed[0]))   # how a private CA is trusted
    client = CasdaClass(server=f"https://127.0.0.1:{https_server.port}/")
    with pytest.raises(ServiceError, match="404"):
        client.query_region("187.5 -45", cache=False)
    assert https_server.seen and https_server.seen[0][0] == "GET"


# --- plain HTTP ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("server", ["http://192.0.2.10/", "http://10.1.2.3:8080/",
                                    "http://casda.example.org/"])
def test_credentials_are_never_sent_over_plain_http_to_another_host(server, no_remote_connections):
    client = CasdaClass(server=server)
    with pytest.raises(InsecureTransportError, match="https") as info:
        client.login(USER, password=PASSWORD)
    assert PASSWORD not in str(info.value)
    assert no_remote_connections == [], "nothing was sent"
    assert not client.authenticated()


def test_plain_http_to_loopback_is_allowed_for_the_emulator(emulator, user, no_remote_connections):
    client = CasdaClass(server=emulator.url.replace("127.0.0.1", "localhost"))
    client.login(USER, password=PASSWORD)
    assert client.get_access_tokens(client.query_sbid_images(609)[:1]).tokens
    assert no_remote_connections == []


def test_a_plain_http_proxy_url_is_refused_even_if_the_rest_is_local(emulator, no_remote_connections):
    """Only the proxy sees credentials, so only its scheme and host matter."""
    auth = ProxyAuth(Credentials(USER, PASSWORD), "http://data.example.org/casda_vo_proxy/vo/")
    with pytest.raises(InsecureTransportError):
        auth("http://data.example.org/casda_vo_proxy/vo/tap/availability")
    assert auth(emulator.url + "casda_vo_proxy/vo/tap/availability") is None


# --- file names from the server -----------------------------------------------------------------------

ESCAPING_NAMES = {
    "parent directories": 'attachment; filename="../../evil.fits"',
    "RFC 5987 encoded": "attachment; filename*=UTF-8''..%2F..%2Fevil.fits",
    "absolute path": 'attachment; filename="/tmp/evil.fits"',
    "backslashes": 'attachment; filename="..\\\\..\\\\evil.fits"',
}


@pytest.mark.parametrize("disposition", ESCAPING_NAMES)
def test_a_server_supplied_name_that_leaves_the_directory_is_refused(tmp_path, disposition):
    body = b"SIMPLE  =                    T" + b" " * 50
    header = ESCAPING_NAMES[disposition]
    savedir = tmp_path / "a" / "b" / "savedir"
    existed_before = os.path.exists("/tmp/evil.fits")
    with LocalServer(lambda h: send(h, 200, body, [("Content-Disposition", header),
                                                   ("Content-Type", "application/fits")])) as server:
        client = CasdaClass(server=f"http://127.0.0.1:{server.port}/")
        with pytest.raises(UnsafeFilenameError, match="evil.fits"):
            client.download_files([f"http://127.0.0.1:{server.port}/download/web/job/file.fits"],
                                  savedir=savedir)
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == [], "nothing was written anywhere"
    assert os.path.exists("/tmp/evil.fits") == existed_before


def test_a_url_whose_path_climbs_out_of_the_directory_is_refused_before_it_is_fetched(tmp_path):
    with LocalServer(lambda h: send(h, 200, b"data")) as server:
        client = CasdaClass(server=f"http://127.0.0.1:{server.port}/")
        with pytest.raises(UnsafeFilenameError):
            client.download_files([f"http://127.0.0.1:{server.port}/download/web/job/..%2F..%2Fevil.fits"],
                                  savedir=tmp_path / "savedir")
    assert server.seen == []
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []


# --- password files -----------------------------------------------------------------------------------

@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "casda-password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=oct)
def test_a_password_file_others_can_read_is_refused(emulator, user, password_file, mode):
    os.chmod(password_file, mode)
    sent = len(emulator.request_log)
    client = CasdaClass(server=emulator.url)
    with pytest.raises(CasdaLoginError, match="chmod 600") as info:
        client.login(USER, password_file=password_file)
    assert PASSWORD not in str(info.value)
    assert len(emulator.request_log) == sent and not client.authenticated()


def test_a_password_file_only_its_owner_can_read_is_used(emulator, user, password_file):
    os.chmod(password_file, 0o600)
    client = CasdaClass(server=emulator.url)
    client.login(USER, password_file=password_file)
    assert client.authenticated()


def test_the_command_line_refuses_a_readable_password_file_in_one_line(emulator, user, password_file, capsys):
    os.chmod(password_file, 0o644)
    sent = len(emulator.request_log)
    code = main(["stage", "cube-1001", "--user", USER, "--password-file", str(password_file),
                 "--server", emulator.url])
    captured = capsys.readouterr()
    assert code == 3
    errors = [line for line in captured.err.splitlines() if line.startswith("casda: error:")]
    assert len(errors) == 1 and "chmod 600" in errors[0] and "Traceback" not in captured.err
    assert PASSWORD not in captured.out + captured.err
    assert len(emulator.request_log) == sent
