"""Credentials: where the password comes from, and which URLs may see it."""
import http.server
import io
import os
import threading

import pytest
import requests

from astroquery_casda_ext import credentials as credentials_module
from astroquery_casda_ext.credentials import (KEYRING_SERVICE, Credentials, ProxyAuth, find_password,
                                              read_password_file, store_password)
from astroquery_casda_ext.errors import CasdaLoginError, InsecureTransportError, NotLoggedInError

USER = "opal-user"
SECRET = "pa55-w0rd!"
PROXY = "https://data.csiro.au/casda_vo_proxy/vo/"


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "casda-password"
    path.write_text("from-file\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def no_prompt(monkeypatch):
    def refuse(prompt=""):
        raise AssertionError("prompted although another source had a password")
    monkeypatch.setattr(credentials_module.getpass, "getpass", refuse)


# --- precedence -------------------------------------------------------------------------------

def test_argument_beats_everything(monkeypatch, password_file, memory_keyring, no_prompt):
    monkeypatch.setenv("CASDA_PASSWORD", "from-env")
    memory_keyring.set_password(KEYRING_SERVICE, USER, "from-keyring")
    found = find_password(USER, password=SECRET, password_file=password_file)
    assert (found.password, found.source) == (SECRET, "argument")


def test_explicit_file_beats_environment(monkeypatch, password_file, memory_keyring, no_prompt):
    monkeypatch.setenv("CASDA_PASSWORD", "from-env")
    memory_keyring.set_password(KEYRING_SERVICE, USER, "from-keyring")
    found = find_password(USER, password_file=password_file)
    assert (found.password, found.source) == ("from-file", "password file")


def test_environment_beats_keyring(monkeypatch, memory_keyring, no_prompt):
    monkeypatch.setenv("CASDA_PASSWORD", "from-env")
    memory_keyring.set_password(KEYRING_SERVICE, USER, "from-keyring")
    assert find_password(USER).password == "from-env"


def test_alternative_variable_and_user_from_environment(monkeypatch, no_prompt):
    monkeypatch.setenv("CASDA_PASSWD", "from-passwd")
    monkeypatch.setenv("CASDA_USER", "env-user")
    found = find_password()
    assert (found.username, found.password, found.source) == ("env-user", "from-passwd", "environment")


def test_file_beats_keyring(password_file, memory_keyring, no_prompt):
    memory_keyring.set_password(KEYRING_SERVICE, USER, "from-keyring")
    found = find_password(USER, password_file=password_file)
    assert (found.password, found.source) == ("from-file", "password file")


def test_keyring_beats_prompt(memory_keyring, no_prompt):
    memory_keyring.set_password(KEYRING_SERVICE, USER, "from-keyring")
    found = find_password(USER, interactive=True)
    assert (found.password, found.source) == ("from-keyring", "keyring")


def test_reenter_skips_the_keyring(monkeypatch, memory_keyring):
    memory_keyring.set_password(KEYRING_SERVICE, USER, "stale")
    monkeypatch.setattr(credentials_module.getpass, "getpass", lambda prompt="": "typed")
    assert find_password(USER, reenter=True, interactive=True).password == "typed"


def test_prompt_when_stdin_is_a_terminal(monkeypatch):
    """interactive=None detects a terminal; the default test keyring fails and is tolerated."""
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    prompts = []
    monkeypatch.setattr(credentials_module.sys, "stdin", Terminal())
    monkeypatch.setattr(credentials_module.getpass, "getpass",
                        lambda prompt="": prompts.append(prompt) or "typed")
    found = find_password(USER)
    assert (found.password, found.source) == ("typed", "prompt")
    assert USER in prompts[0]


def test_no_source_explains_every_option(monkeypatch):
    monkeypatch.setattr(credentials_module.sys, "stdin", io.StringIO())
    with pytest.raises(NotLoggedInError) as info:
        find_password(USER)
    assert str(info.value) == (f"no password for {USER}: set CASDA_PASSWORD, use a password file "
                               "(--password-file), store one in the keyring ('casda login'; on headless "
                               "machines: pip install keyrings.alt), or run interactively")


def test_no_username_is_an_error():
    with pytest.raises(NotLoggedInError, match="CASDA_USER"):
        find_password(password=SECRET)


# --- password file ----------------------------------------------------------------------------

def test_password_file_first_line_only(tmp_path):
    path = tmp_path / "pw"
    path.write_text(" spaced secret \r\nsecond line\n")
    path.chmod(0o600)
    assert read_password_file(path) == " spaced secret "


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_password_file_readable_by_others_is_refused(password_file, mode):
    password_file.chmod(mode)
    with pytest.raises(CasdaLoginError, match=f"chmod 600 {password_file}") as info:
        read_password_file(password_file)
    assert "from-file" not in str(info.value)


def test_missing_or_empty_password_file(tmp_path):
    with pytest.raises(CasdaLoginError, match="cannot read"):
        read_password_file(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_text("")
    empty.chmod(0o600)
    with pytest.raises(CasdaLoginError, match="empty"):
        read_password_file(empty)


# --- keyring ----------------------------------------------------------------------------------

def test_store_password_in_astroquerys_keyring_entry(memory_keyring):
    store_password(Credentials(USER, SECRET))
    assert memory_keyring.passwords == {("astroquery:casda.csiro.au", USER): SECRET}
    assert find_password(USER, interactive=False).source == "keyring"


def test_store_password_without_keyring_backend_is_a_clear_error():
    with pytest.raises(CasdaLoginError, match="keyring") as info:
        store_password(Credentials(USER, SECRET))   # conftest installs the failing backend
    assert SECRET not in str(info.value)


# --- secrecy ----------------------------------------------------------------------------------

def test_credentials_never_show_the_password():
    found = Credentials(USER, SECRET, "environment")
    assert SECRET not in repr(found) and SECRET not in str(found) and USER in repr(found)
    auth = ProxyAuth(found, PROXY)
    assert SECRET not in repr(auth)


# --- ProxyAuth --------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "https://data.csiro.au/casda_vo_proxy/vo/datalink/links?ID=cube-1",
    "https://DATA.csiro.au:443/casda_vo_proxy/vo/tap/availability",
    "https://data.csiro.au/casda_vo_proxy/vo"])
def test_proxy_urls_get_credentials(url):
    auth = ProxyAuth(Credentials(USER, SECRET), PROXY)(url)
    assert auth == (USER, SECRET)          # a Basic pair, as astroquery's _auth
    assert SECRET not in repr(auth) and SECRET not in str(auth)


@pytest.mark.parametrize("url", [
    "https://casda.csiro.au/casda_data_access/data/async",            # SODA: tokens, no password
    "https://casda.csiro.au/casda_vo_tools/tap/sync",                 # anonymous VO tools
    "https://data.csiro.au.evil.example/casda_vo_proxy/vo/tap",       # look-alike host
    "https://data.csiro.au:8443/casda_vo_proxy/vo/tap",               # other port
    "http://data.csiro.au/casda_vo_proxy/vo/tap",                     # other scheme
    "https://data.csiro.au/casda_vo_proxy/vox/tap",                   # sibling path
    "https://data.csiro.au/casda_vo_proxy/vo/../../download/web/x",   # escapes the base
    "https://ingest.pawsey.org.au/bucket/file.fits?X-Amz-Signature=abc"])
def test_other_urls_get_nothing(url):
    assert ProxyAuth(Credentials(USER, SECRET), PROXY)(url) is None


def test_plain_http_to_remote_proxy_is_refused():
    auth = ProxyAuth(Credentials(USER, SECRET), "http://data.csiro.au/casda_vo_proxy/vo/")
    with pytest.raises(InsecureTransportError, match="https"):
        auth("http://data.csiro.au/casda_vo_proxy/vo/datalink/links")
    assert auth("http://casda.csiro.au/casda_data_access/data/async") is None


@pytest.mark.parametrize("base", ["http://127.0.0.1:8080/casda_vo_proxy/vo/",
                                  "http://localhost:8080/casda_vo_proxy/vo/",
                                  "http://[::1]:8080/casda_vo_proxy/vo/"])
def test_plain_http_to_loopback_is_allowed(base):
    assert ProxyAuth(Credentials(USER, SECRET), base)(base + "tap/sync") is not None


# --- redirects drop the credentials -----------------------------------------------------------

class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records the Authorization header; redirects when told to."""

    redirect_to = None
    seen = None

    def do_GET(self):
        type(self).seen.append(self.headers.get("Authorization"))
        if self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.send_header("Content-Length", "0")
        else:
            self.send_response(200)
            self.send_header("Content-Length", "2")
        self.end_headers()
        if not self.redirect_to:
            self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def _serve(handler):
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    # shutdown() waits for serve_forever's next poll: 0.5 s each time by default
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


def test_redirect_to_another_host_drops_authorization():
    """requests strips per-request auth when a redirect changes the host (localhost vs 127.0.0.1)."""
    target = type("Target", (_Recorder,), {"seen": [], "redirect_to": None})
    target_server, target_thread = _serve(target)
    other_host = f"http://localhost:{target_server.server_address[1]}/download/web/job/file.fits"
    proxy = type("Proxy", (_Recorder,), {"seen": [], "redirect_to": other_host})
    proxy_server, proxy_thread = _serve(proxy)
    try:
        base = f"http://127.0.0.1:{proxy_server.server_address[1]}/casda_vo_proxy/vo/"
        url = base + "datalink/links?ID=cube-1"
        session = requests.Session()
        session.trust_env = False   # no proxies or .netrc from the developer's environment
        response = session.get(url, auth=ProxyAuth(Credentials(USER, SECRET), base)(url), timeout=10)
        assert response.status_code == 200 and response.history[0].status_code == 302
        assert proxy.seen[0].startswith("Basic ")
        assert target.seen == [None]
    finally:
        for server, thread in ((proxy_server, proxy_thread), (target_server, target_thread)):
            server.shutdown()
            server.server_close()
            thread.join()
