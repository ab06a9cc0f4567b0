"""astroquery.casda users keep their habits: class attributes, astroquery.cfg, names, payloads.

Driven against the emulator over real HTTP; the name resolver is replaced by a fake
(these tests must not reach the internet).
"""
import astropy.units as u
import pytest
from astropy.coordinates import SkyCoord
from astroquery.casda import conf as astroquery_conf
from astroquery.exceptions import MaxResultsWarning

from astroquery_casda_ext import CasdaClass, conf
from astroquery_casda_ext.credentials import PasswordNotStoredWarning
from astroquery_casda_ext.errors import InvalidInputError, InvalidRegionError

M31 = SkyCoord(10.684708 * u.deg, 41.26875 * u.deg)


@pytest.fixture
def clean_class_settings():
    """Class-level settings assigned by a test are removed afterwards."""
    yield
    for name in ("URL", "TIMEOUT", "POLL_INTERVAL"):
        delattr(CasdaClass, name)


@pytest.fixture
def sent_timeouts(monkeypatch):
    """The ``timeout`` of every request the session sends (recorded at `requests.Session.send`)."""
    import requests
    seen = []
    original = requests.Session.send

    def send(self, request, **kwargs):
        seen.append(kwargs.get("timeout"))
        return original(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", send)
    return seen


def test_poll_interval_on_the_class_caps_the_poll_schedule(clean_class_settings):
    client = CasdaClass()
    assert client._poll_policy().cap == conf.poll_interval
    CasdaClass.POLL_INTERVAL = 1
    assert CasdaClass.POLL_INTERVAL == 1.0 and client.POLL_INTERVAL == 1.0
    policy = client._poll_policy()
    assert policy.cap == 1.0 and policy.first <= 1.0 and policy.delay(50) == 1.0
    client.POLL_INTERVAL = 0.5          # an instance's own value beats the class's
    assert client._poll_policy().cap == 0.5 and CasdaClass().POLL_INTERVAL == 1.0
    del client.POLL_INTERVAL
    assert client._poll_policy().cap == 1.0


def test_bad_class_settings_are_refused(clean_class_settings):
    with pytest.raises(InvalidInputError, match="POLL_INTERVAL"):
        CasdaClass.POLL_INTERVAL = 0
    with pytest.raises(InvalidInputError, match="TIMEOUT"):
        CasdaClass().TIMEOUT = "soon"
    with pytest.raises(InvalidInputError, match="URL"):
        CasdaClass().URL = "ftp://example.org/sia2/query"


def test_astroquery_cfg_timeout_reaches_the_sessions_requests(emulator, sent_timeouts):
    client = CasdaClass(server=emulator.url)
    # set_temp writes the value where astroquery.cfg's [casda] section lands
    with astroquery_conf.set_temp("timeout", 7):
        assert client.TIMEOUT == 7
        client.query_region("187.5 -45.0", radius=1 * u.arcmin, cache=False)
        client.query_tap("SELECT TOP 1 obs_id FROM ivoa.obscore")
    assert sent_timeouts and set(sent_timeouts) == {7}
    # our own configuration, once set, overrides astroquery's
    with astroquery_conf.set_temp("timeout", 7), conf.set_temp("timeout", 11):
        assert client.TIMEOUT == 11


def test_astroquery_cfg_poll_interval_and_username():
    # (astroquery.casda's server items are option lists: its cfg cannot name another server)
    with astroquery_conf.set_temp("poll_interval", 3), \
            astroquery_conf.set_temp("username", "cfg@example.org"):
        client = CasdaClass()
        assert client._poll_policy().cap == 3 and client.USERNAME == "cfg@example.org"


def test_url_assigned_like_astroquery_moves_the_queries(emulator, clean_class_settings):
    CasdaClass.URL = emulator.url.rstrip("/") + "/casda_vo_tools/sia2/query"
    client = CasdaClass()
    start = len(emulator.request_log)
    assert len(client.query_region("187.5 -45.0", radius=1 * u.deg, cache=False)) > 0
    assert any(r.path.endswith("sia2/query") for r in emulator.request_log[start:])
    assert client.endpoints.tap_url.startswith(emulator.url.rstrip("/"))


def test_object_names_resolve_as_in_astroquery(emulator, monkeypatch):
    asked = []

    def from_name(name, *args, **kwargs):
        asked.append(name)
        if name != "M31":
            from astropy.coordinates.name_resolve import NameResolveError
            raise NameResolveError(f"unknown object {name}")
        return M31

    monkeypatch.setattr(SkyCoord, "from_name", from_name)
    client = CasdaClass(server=emulator.url)
    payload = client.query_region("M31", radius=2 * u.arcmin, get_query_payload=True)
    ra, dec = (float(x) for x in payload["POS"].split()[1:3])
    assert asked == ["M31"]
    assert ra == pytest.approx(10.6847, abs=1e-3) and dec == pytest.approx(41.2688, abs=1e-3)
    assert len(client.query_region("M31", radius=2 * u.arcmin, cache=False)) == 0   # sent and answered
    with pytest.raises(InvalidRegionError, match="nowhere"):
        client.query_region("nowhere")


def test_get_query_payload_on_tap_helpers_sends_nothing(emulator):
    client = CasdaClass(server=emulator.url)
    start = len(emulator.request_log)
    payload = client.query_sbid_images(609, get_query_payload=True)
    assert payload["LANG"] == "ADQL" and "obs_id = '609'" in payload["QUERY"]
    assert "TAP_SCHEMA.tables" in client.list_tables(get_query_payload=True)["QUERY"]
    assert "flux_peak" in client.query_components(sbid=609, flux_min=500, get_query_payload=True)["QUERY"]
    assert len(emulator.request_log) == start


def test_cached_tap_answers_come_from_astroquerys_cache(emulator, tmp_path):
    client = CasdaClass(server=emulator.url)
    client.cache_location = tmp_path
    query = "SELECT TOP 3 obs_publisher_did FROM ivoa.obscore ORDER BY obs_publisher_did"
    first = client.query_tap(query, cache=True)
    start = len(emulator.request_log)
    second = client.query_tap(query, cache=True)
    assert list(second["obs_publisher_did"]) == list(first["obs_publisher_did"]) and len(first) == 3
    assert len(emulator.request_log) == start            # answered from the cache
    client.query_tap(query)                               # cache=False (the default) asks CASDA
    assert len(emulator.request_log) > start


def test_login_without_a_keyring_backend_succeeds_and_warns(emulator):
    # conftest installs keyring.backends.fail: the state of headless machines
    client = CasdaClass(server=emulator.url)
    with pytest.warns(PasswordNotStoredWarning, match="CASDA_PASSWORD.*password-file.*keyrings.alt"):
        client.login(emulator.username, password=emulator.password, store_password=True)
    assert client.authenticated()
    assert len(client.query_sbid_images(609)) > 0 and client._credentials is not None


# --- astroquery's QueryWithLogin conventions as extension points ---------------------------------

def test_a_replaced_download_file_is_used_for_every_url_in_parallel(tmp_path):
    """astroquery's per-file hook: replacing ``_download_file`` (on an instance or in a subclass)
    changes how each file is fetched; ``download_files`` maps it over the URLs in parallel."""
    import threading
    seen, threads, gate = [], set(), threading.Barrier(3, timeout=10)

    def fetch(url, local_filepath, timeout=None, cache=False, **kwargs):
        threads.add(threading.get_ident())
        gate.wait()                      # all three at once: they run in parallel
        seen.append((url, local_filepath, timeout))
        return local_filepath
    client = CasdaClass()
    client._download_file = fetch
    urls = [f"https://example.org/web/{name}" for name in ("a.fits", "a.fits.checksum", "RACS%2B1.fits")]
    paths = client.download_files(urls, savedir=str(tmp_path), workers=3)
    assert paths == [str(tmp_path / name) for name in ("a.fits", "a.fits.checksum", "RACS+1.fits")]
    assert sorted(seen) == sorted(zip(urls, paths, [client.TIMEOUT] * 3)) and len(threads) == 3


def test_a_subclass_download_file_is_used_and_unsafe_names_are_refused(tmp_path):
    from astroquery_casda_ext.errors import UnsafeFilenameError

    class Mine(CasdaClass):
        def _download_file(self, url, local_filepath, **kwargs):
            open(local_filepath, "w").write(url)
            return local_filepath
    [path] = Mine().download_files(["https://example.org/x/file.txt"], savedir=str(tmp_path))
    assert open(path).read() == "https://example.org/x/file.txt"
    with pytest.raises(UnsafeFilenameError):
        Mine().download_files(["https://example.org/x/..%2F..%2Fescape"], savedir=str(tmp_path))


def test_login_state_is_astroquerys_auth_and_authenticated(emulator):
    client = CasdaClass(server=emulator.url)
    assert client._authenticated is False and not hasattr(client, "_auth")
    client.login(emulator.username, password=emulator.password)
    assert client._authenticated is True and client._auth == (emulator.username, emulator.password)
    assert emulator.password not in repr(client._auth)
    client.logout()
    assert client._authenticated is False and not hasattr(client, "_auth")
    other = CasdaClass(server=emulator.url)     # set as astroquery's own tests do: that is a login
    other._auth, other._authenticated = (emulator.username, emulator.password), True
    assert len(other.query_sbid_images(609)) > 0 and other._credentials.username == emulator.username


def test_args_to_payload_is_the_payload_query_region_sends(emulator, monkeypatch):
    client = CasdaClass(server=emulator.url)
    payload = client._args_to_payload(service="sia2", coordinates="187.5 -45.0", radius=0.1 * u.deg)
    assert payload == client.query_region("187.5 -45.0", radius=0.1 * u.deg, get_query_payload=True)
    monkeypatch.setattr(CasdaClass, "_args_to_payload",
                        lambda self, **kwargs: {"POS": "CIRCLE 187.5 -45 0.2", "MAXREC": "1"})
    with pytest.warns(MaxResultsWarning):
        assert len(client.query_region("anything", cache=False)) == 1    # an override is what is sent
