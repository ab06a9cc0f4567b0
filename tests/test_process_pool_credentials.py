"""Credentials on a process pool: a real multi-process dask cluster runs an authenticated,
partitioned TAP query and downloads, and no credential reaches a redirect target.

The work is pickled to the worker processes, and requests pickles a `requests.Session`
without the redirect guard ``credentials.guard_session`` installs (an instance attribute),
so the guard must come back with the credentials.  A small forwarding server in front of
the emulator (real HTTP on 127.0.0.1) answers every request the way the emulator does, except
that a result on the OPAL proxy is redirected (307) to another path on the same host.
requests keeps ``Authorization`` on a same-host redirect; the client must not.
"""
import dataclasses
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.dataset
import pytest
import requests

from astroquery_casda_ext import CasdaClass
from astroquery_casda_ext.credentials import AuthSession, Credentials, ProxyAuth, guard_session
from astroquery_casda_ext.emulator import CasdaEmulator

from test_download import stage

pytestmark = pytest.mark.matrix("security")

PROXY = "/casda_vo_proxy/"
ELSEWHERE = "/elsewhere"
ROWS = 300
CATALOGUE = "casda.bulk_continuum_component"


class Front:
    """A forwarding server: records (method, path, Authorization) of every request; sends a
    proxy result (or a data file) elsewhere on the same host with a 307, then serves that
    path from the emulator with the credentials last seen on the proxy (never sent by the
    client there)."""

    def __init__(self, upstream):
        self.upstream = upstream.rstrip("/")
        self.seen, self.proxy_authorization = [], None
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                authorization = self.headers.get("Authorization")
                front.seen.append((self.command, self.path, authorization))
                path = self.path
                if path.startswith(PROXY) and authorization:
                    front.proxy_authorization = authorization
                redirect = (self.command == "GET" and (
                    (path.startswith(PROXY) and path.rstrip("/").endswith("/results/result"))
                    or path.startswith("/download/")))
                if redirect:
                    self.send_response(307)
                    self.send_header("Location", ELSEWHERE + path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {"Host": self.headers["Host"]}
                if path.startswith(ELSEWHERE):
                    path = path[len(ELSEWHERE):]
                    if path.startswith(PROXY):
                        headers["Authorization"] = front.proxy_authorization
                elif authorization:
                    headers["Authorization"] = authorization
                if self.headers.get("Content-Type"):
                    headers["Content-Type"] = self.headers["Content-Type"]
                if self.headers.get("Range"):
                    headers["Range"] = self.headers["Range"]
                answer = requests.request(self.command, front.upstream + path, data=body, headers=headers,
                                          allow_redirects=False, timeout=30)
                content = answer.content
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection",
                                           "content-encoding", "keep-alive"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        # shutdown() waits for serve_forever's next poll: 0.5 s each time by default
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()

    def credentials_off_the_proxy(self):
        return [(method, path) for method, path, authorization in self.seen
                if authorization and not path.startswith(PROXY)]


@pytest.fixture(scope="module")
def pool_emulator(tmp_path_factory):
    with CasdaEmulator(tmp_path_factory.mktemp("pool-casda"), catalogue_rows=ROWS) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def cluster():
    import distributed        # a test dependency (setup.cfg)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as local, distributed.Client(local) as client:
        yield client


@pytest.fixture
def front(pool_emulator):
    pool_emulator.reset()
    with Front(pool_emulator.url) as front:
        yield front


def test_the_redirect_guard_survives_pickling():
    """The unit of the fault: an AuthSession pickled and unpickled keeps its redirect guard."""
    session = guard_session(requests.Session(), lambda url: False)
    auth = ProxyAuth(Credentials("user@example.org", "secret-pw-123"), "http://127.0.0.1:9/casda_vo_proxy/vo/")
    copy = pickle.loads(pickle.dumps(AuthSession(session, auth)))
    assert copy.auth.applies_to("http://127.0.0.1:9/casda_vo_proxy/vo/tap")
    assert type(copy.session.rebuild_auth).__name__ == "_RedirectGuard"
    prepared = requests.Request("GET", "http://127.0.0.1:9/elsewhere/x",
                                headers={"Authorization": "Basic abc"}).prepare()
    response = requests.Response()
    response.request = requests.Request("GET", "http://127.0.0.1:9/casda_vo_proxy/vo/x").prepare()
    copy.session.rebuild_auth(prepared, response)
    assert "Authorization" not in prepared.headers


def test_a_partitioned_authenticated_query_on_dask_processes_sends_no_credential_to_a_redirect(
        pool_emulator, front, cluster, tmp_path):
    casda = CasdaClass(server=front.url)
    casda.login(username=pool_emulator.username, password=pool_emulator.password)
    started = time.monotonic()
    result = casda.query_tap_partitioned(f"SELECT * FROM {CATALOGUE}", by="ra_deg_cont", parts=3,
                                         output=tmp_path / "parts", executor=cluster.get_executor())
    elapsed = time.monotonic() - started
    assert result.rows == ROWS and pyarrow.dataset.dataset(tmp_path / "parts").count_rows() == ROWS
    redirected = [path for method, path, _ in front.seen if path.startswith(ELSEWHERE + PROXY)]
    assert len(redirected) >= 3                       # every part's result went through a redirect
    assert front.credentials_off_the_proxy() == []
    assert all(authorization for method, path, authorization in front.seen if path.startswith(PROXY))
    assert sorted(path.name for path in (tmp_path / "parts").iterdir()) == [
        "_casda_partitions.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert elapsed < 120


def test_downloads_on_dask_processes_send_no_credential_anywhere(pool_emulator, front, cluster, tmp_path):
    products = [product for product in pool_emulator.holdings.products if product.kind == "continuum"][:2]
    files, _ = stage(pool_emulator, [product.product_id for product in products])
    base = pool_emulator.url.rstrip("/")
    moved = [dataclasses.replace(item, url=item.url.replace(base, front.url.rstrip("/")),
                                 checksum_url=item.checksum_url.replace(base, front.url.rstrip("/")))
             for item in files]
    casda = CasdaClass(server=front.url)
    casda.login(username=pool_emulator.username, password=pool_emulator.password)
    manifest = casda.download(moved, tmp_path / "data", executor=cluster.get_executor(), progress=False)
    assert list(manifest.table["status"]) == ["COMPLETE", "COMPLETE"]
    assert list(manifest.table["checksum_status"]) == ["verified", "verified"]
    assert [path for method, path, _ in front.seen if path.startswith(ELSEWHERE + "/download/")]
    downloads = [seen for seen in front.seen if "/download/" in seen[1]]
    assert downloads and all(authorization is None for _, _, authorization in downloads)
    assert front.credentials_off_the_proxy() == []
