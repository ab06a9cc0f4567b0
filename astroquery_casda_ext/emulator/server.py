"""The emulator's HTTP server: a threaded werkzeug server, OPAL auth, fault injection, request log.

A request flows: werkzeug → `EmulatorApp` (fault rules taken, latencies slept, the proxy's
HTTP Basic check, injected statuses) → ``routes.dispatch`` → a handler → a ``Response``,
whose body `_Body` streams while counting the bytes written and applying byte-level
faults (reset, truncate, corrupt, slow, stall).  Plain file downloads go out with
``os.sendfile``, so a large download costs no Python time per byte.

`CasdaEmulator` is the object tests and scripts hold: it runs the server in a background
thread on ``127.0.0.1`` (a free port by default) and exposes the backend's controls.
"""
import dataclasses
import json
import logging
import os
import socket
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path

from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from . import routes
from .backend import BUILTIN_PASSWORD, BUILTIN_USERNAME, EmulatorBackend, LoggedRequest
from .options import EmulatorOptions, FaultRule
from .file_responses import FileBody

__all__ = ["CasdaEmulator", "EmulatorApp", "PROXY_REALM"]

logger = logging.getLogger(__name__)

#: The realm CASDA's OPAL proxy names in its 401 challenge.
PROXY_REALM = "ATNF OPAL Login"
_PROXY_PREFIX = "/casda_vo_proxy/vo/"
#: Where `EmulatorOptions.control_api` serves the request log to other processes.
_CONTROL_PREFIX = "/_emulator/"
_RESET_KEY = "casda_emulator.reset"
_BODY_FAULTS = ("reset", "truncate", "corrupt", "stall", "endless")
#: Bytes of filler per chunk an ``endless`` fault sends after the body.
_ENDLESS_CHUNK = b"\x00" * (64 << 10)
#: Bytes handed to one ``os.sendfile`` call.
_SENDFILE_BLOCK = 8 << 20
_INVERT = bytes(255 - value for value in range(256))
#: Query parameters whose values are credentials (tokens, signatures): never logged.
_SECRET_PARAMETERS = frozenset({"x-amz-signature", "x-amz-credential", "x-amz-security-token"})


def _loggable_query(request):
    """Query parameters for the log, with tokens and signatures redacted."""
    tokens_in_id = request.path.startswith("/casda_data_access/")
    query = {}
    for name, value in request.args.items(multi=True):
        lowered = name.lower()
        if lowered in _SECRET_PARAMETERS or (tokens_in_id and lowered == "id"):
            value = "<redacted>"
        if name in query:
            previous = query[name]
            query[name] = previous + [value] if isinstance(previous, list) else [previous, value]
        else:
            query[name] = value
    return query


class _Exchange:
    """What the log needs to know about one request while it is being answered."""

    def __init__(self, request, arrival):
        self.method, self.path, self.arrival = request.method, request.path, arrival
        self.query = _loggable_query(request)
        self.user = None
        self.status = 0

    def entry(self, bytes_sent):
        return LoggedRequest(self.method, self.path, self.query, self.user, self.status, bytes_sent)


class _Shaping:
    """The byte-level faults for one response body."""

    def __init__(self, rules):
        body_rules = [rule for rule in rules if rule.kind in _BODY_FAULTS]
        first = body_rules[0] if body_rules else None
        self.kind = first.kind if first else None
        self.after_bytes = first.after_bytes if first else 0
        self.stall = first.delay if first else 0.0
        rates = [rule.rate for rule in rules if rule.kind == "slow"]
        self.rate = min(rates) if rates else None


class _Pacer:
    """Splits output so that it leaves at no more than ``rate`` bytes per second."""

    def __init__(self, rate, stopping):
        self.rate, self.stopping = rate, stopping
        self.step = max(1, min(1 << 16, int(rate / 10)))
        self.started, self.total = time.monotonic(), 0

    def parts(self, data):
        for offset in range(0, len(data), self.step):
            part = data[offset:offset + self.step]
            self.total += len(part)
            delay = self.started + self.total / self.rate - time.monotonic()
            if delay > 0:
                self.stopping.wait(delay)
            yield part


class _Body:
    """A response body that counts what was written, applies body faults, and logs at the end."""

    def __init__(self, inner, shaping, environ, exchange, app):
        self._inner, self._shaping, self._environ = inner, shaping, environ
        self._exchange, self._app = exchange, app
        self._generator = None
        self._closed = self._logged = False
        self.sent = 0

    def __iter__(self):
        self._generator = self._generate()
        return self._generator

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            if self._generator is not None:
                self._generator.close()
            if hasattr(self._inner, "close"):
                self._inner.close()
        finally:
            self._record()

    def _record(self):
        if not self._logged:
            self._logged = True
            self._app.backend.request_log.finish(self._exchange.entry(self.sent), self._exchange.arrival)

    def _rate(self):
        rates = [rate for rate in (self._shaping.rate, getattr(self._inner, "rate", None)) if rate]
        return min(rates) if rates else None

    def _generate(self):
        rate = self._rate()
        sock = self._environ.get("werkzeug.socket")
        if (isinstance(self._inner, FileBody) and self._shaping.kind is None and rate is None
                and sock is not None and sock.gettimeout() is None and hasattr(os, "sendfile")):
            yield from self._send_file(self._inner, sock)
        else:
            yield from self._shaped(self._inner, rate)
        # Logged as soon as the last byte is written, before werkzeug's clean-up pause.
        self._record()

    def _send_file(self, body, sock):
        yield b""  # werkzeug sends the status line and headers on the first chunk, even empty
        with open(body.path, "rb") as handle:
            offset, remaining = body.start, body.length
            while remaining > 0:
                count = os.sendfile(sock.fileno(), handle.fileno(), offset, min(remaining, _SENDFILE_BLOCK))
                if count == 0:
                    return  # the file shrank under us: the client sees a short body
                offset += count
                remaining -= count
                self.sent += count

    def _out(self, data, pacer):
        for part in (pacer.parts(data) if pacer else (data,)):
            yield part
            self.sent += len(part)  # counted once the server asks for more: it was written

    def _shaped(self, chunks, rate):
        shaping = self._shaping
        pacer = _Pacer(rate, self._app.stopping) if rate else None
        if shaping.kind is not None:
            yield b""  # headers first, so every body fault happens after them
        position, fired = 0, False
        for chunk in chunks:
            if not chunk:
                continue
            end = position + len(chunk)
            if shaping.kind == "corrupt" and end > shaping.after_bytes:
                cut = max(0, shaping.after_bytes - position)
                chunk = chunk[:cut] + chunk[cut:].translate(_INVERT)
            elif shaping.kind == "endless" and shaping.after_bytes and end > shaping.after_bytes:
                yield from self._out(chunk[:max(0, shaping.after_bytes - position)], pacer)
                break
            elif shaping.kind in ("reset", "truncate", "stall") and not fired and end > shaping.after_bytes:
                cut = shaping.after_bytes - position
                yield from self._out(chunk[:cut], pacer)
                fired = True
                self._strike()
                chunk = chunk[cut:]
            yield from self._out(chunk, pacer)
            position = end
        while shaping.kind == "endless" and not self._app.stopping.is_set():
            yield from self._out(_ENDLESS_CHUNK, pacer)   # until the client hangs up

    def _strike(self):
        """The moment a reset, truncate or stall fault happens."""
        kind = self._shaping.kind
        if kind == "reset":
            # The handler's connection_dropped sees the flag and closes with SO_LINGER 0 (RST).
            self._environ[_RESET_KEY] = True
            raise ConnectionResetError("injected connection reset")
        if kind == "truncate":
            # Leaving through a connection error stops werkzeug from writing the final chunk
            # of a chunked body; the socket then closes normally (FIN).
            raise ConnectionAbortedError("injected truncation")
        self._app.stopping.wait(self._shaping.stall)


def _gzip_encoded(response, extra_zeros):
    """``response`` with its body gzip-encoded, as a server ignoring ``Accept-Encoding`` sends it.

    With ``extra_zeros``, that many zero bytes follow the body inside the encoding (a gzip
    bomb), streamed without a length; otherwise the encoded body is sent with its length.
    """
    def encoded():
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)     # 31: the gzip format
        try:
            for chunk in response.iter_encoded():
                yield compressor.compress(chunk)
        finally:
            response.close()
        zeros, left = bytes(1 << 20), extra_zeros
        while left > 0:
            yield compressor.compress(zeros[:min(left, len(zeros))])
            left -= len(zeros)
        yield compressor.flush()

    headers = [(key, value) for key, value in response.headers.items() if key.lower() != "content-length"]
    body = encoded() if extra_zeros else b"".join(encoded())
    encoded_response = Response(body, status=response.status_code, headers=headers)
    encoded_response.headers["Content-Encoding"] = "gzip"
    return encoded_response


def _status_fault(rule):
    reason = HTTP_STATUS_CODES.get(rule.status, "Error")
    headers = {}
    if rule.retry_after is not None:
        seconds = rule.retry_after
        headers["Retry-After"] = str(int(seconds)) if float(seconds).is_integer() else str(seconds)
    return Response(f"FAILURE: {reason}", status=rule.status, content_type="text/plain", headers=headers)


def _unauthorized():
    return Response("Unauthorized: this service needs an ATNF OPAL username and password (HTTP Basic).",
                    status=401, content_type="text/plain",
                    headers={"WWW-Authenticate": f'Basic realm="{PROXY_REALM}"'})


class EmulatorApp:
    """The WSGI application: faults, authentication, dispatch, logging.

    Parameters
    ----------
    backend : EmulatorBackend
    stopping : threading.Event
        Set when the emulator stops; ends injected sleeps early.
    """

    def __init__(self, backend, stopping):
        self.backend, self.stopping = backend, stopping

    def __call__(self, environ, start_response):
        request = Request(environ)
        if self.backend.options.control_api and request.path.startswith(_CONTROL_PREFIX):
            return self._control(request)(environ, start_response)  # not logged, no faults
        arrival = self.backend.request_log.begin()
        try:
            exchange = _Exchange(request, arrival)
            rules = self.backend.faults.take(request.method, request.path)
            response = self._respond(request, rules, exchange)

            def start(status, headers, exc_info=None):
                exchange.status = int(status.split(None, 1)[0])
                if any(rule.kind == "endless" for rule in rules):   # no length: the body may go on
                    headers = [(key, value) for key, value in headers if key.lower() != "content-length"]
                return start_response(status, headers, exc_info)

            for rule in rules:
                if rule.kind == "disposition":
                    response.headers["Content-Disposition"] = f"attachment; filename={rule.filename}"
                elif rule.kind == "gzip" and response.status_code in (200, 206):
                    response = _gzip_encoded(response, rule.after_bytes)

            inner = response(environ, start)
        except BaseException:
            self.backend.request_log.abandon()
            raise
        return _Body(inner, _Shaping(rules), environ, exchange, self)

    def _control(self, request):
        """``GET|DELETE /_emulator/log`` and ``POST /_emulator/reset``, for the benchmarks."""
        route = (request.method, request.path[len(_CONTROL_PREFIX):])
        if route == ("GET", "log"):
            entries = [dataclasses.asdict(entry) for entry in self.backend.request_log.snapshot()]
            return Response(json.dumps(entries), content_type="application/json")
        if route == ("DELETE", "log"):
            self.backend.request_log.clear()
        elif route == ("POST", "reset"):
            self.backend.reset()
        else:
            return Response("not an emulator control request", status=404, content_type="text/plain")
        return Response(status=204)

    def _respond(self, request, rules, exchange):
        if self.backend.options.request_latency:
            self.stopping.wait(self.backend.options.request_latency)
        for rule in rules:
            if rule.kind == "latency":
                self.stopping.wait(rule.delay)
        via_proxy = request.path.startswith(_PROXY_PREFIX) or request.path == _PROXY_PREFIX.rstrip("/")
        user = self._authenticate(request) if via_proxy else None
        exchange.user = user.username if user else None
        status_rule = next((rule for rule in rules if rule.kind == "status"), None)
        if status_rule is not None:
            return _status_fault(status_rule)
        if via_proxy and user is None:
            return _unauthorized()
        ctx = routes.RequestContext(request, self.backend, request.host_url, user=user, via_proxy=via_proxy)
        try:
            return routes.dispatch(ctx)
        except Exception:  # noqa: BLE001 - a bug in a handler must still answer (and be seen)
            logger.exception("emulator handler failed for %s %s", request.method, request.path)
            return Response("Internal Server Error", status=500, content_type="text/plain")

    def _authenticate(self, request):
        credentials = request.authorization
        if credentials is None or credentials.type != "basic":
            return None
        return self.backend.authenticate(credentials.username or "", credentials.password or "")


class _Handler(WSGIRequestHandler):
    """werkzeug's handler, quiet, tracking connections, able to reset one (RST) on demand."""

    def log_request(self, code="-", size="-"):
        """The emulator keeps its own request log; nothing is printed per request."""

    def setup(self):
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def connection_dropped(self, error, environ=None):
        if environ is not None and environ.get(_RESET_KEY):
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class CasdaEmulator:
    """A local CASDA: VO tools, the OPAL proxy, SODA and downloads on one HTTP server.

    Parameters
    ----------
    data_dir : path-like, optional
        Where holdings, staged files and TAP results live.  Default: a temporary
        directory removed by `stop`.
    port : int
        Port to listen on; 0 picks a free one.
    host : str
        Interface to bind (default loopback only).
    options : EmulatorOptions, optional
        The emulator's behaviour; ``option_overrides`` are applied on top.

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:PORT/`` once started (None before).
    username, password : str
        The built-in OPAL account (a local test account, member of the embargoed project).
    backend : EmulatorBackend
    """

    def __init__(self, data_dir=None, *, port=0, host="127.0.0.1", options=None, **option_overrides):
        options = options or EmulatorOptions()
        if option_overrides:
            options = options.replace(**option_overrides)
        self._tempdir = None
        if data_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="casda-emulator-", ignore_cleanup_errors=True)
            data_dir = self._tempdir.name
        self.data_dir = Path(data_dir)
        self.backend = EmulatorBackend(options, self.data_dir)
        self.host, self.port, self.url = host, port, None
        self.username, self.password = BUILTIN_USERNAME, BUILTIN_PASSWORD
        self._server = self._thread = None
        self._stopping = threading.Event()

    # ----- what tests look at
    @property
    def holdings(self):
        return self.backend.holdings

    @property
    def options(self):
        """The current `EmulatorOptions`."""
        return self.backend.options

    @property
    def clock(self):
        """The clock every service reads (`~astroquery_casda_ext.emulator.clock.Clock`, or the one
        given to `use_clock`)."""
        return self.backend.clock

    def use_clock(self, clock):
        """Run the services by ``clock`` (e.g. a `~astroquery_casda_ext.emulator.clock.ManualClock`)
        until `reset`; returns it."""
        self.backend.set_clock(clock)
        return clock

    @property
    def request_log(self):
        """Every request served so far (`LoggedRequest`), in the order the requests arrived."""
        return self.backend.request_log.snapshot()

    # ----- controls
    def add_fault(self, rule=None, **fields):
        """Inject a `FaultRule` (or build one from ``fields``); returns it."""
        rule = rule if rule is not None else FaultRule(**fields)
        self.backend.add_fault(rule)
        return rule

    def clear_faults(self):
        self.backend.faults.clear()

    def add_user(self, username, password, projects=(), *, admin=False):
        """Add an OPAL account (e.g. one outside the embargoed project); `reset` removes it."""
        return self.backend.add_user(username, password, projects, admin=admin)

    def set_options(self, **changes):
        """Change options while running (``holdings`` only counts at construction)."""
        return self.backend.set_options(**changes)

    def release_job(self, job_id):
        """Let a HELD SODA job continue."""
        return self.backend.release_job(job_id)

    def reset(self):
        """Options as constructed; no faults, added users, jobs, tokens or log entries."""
        self.backend.reset()

    # ----- lifecycle
    def start(self):
        """Listen and serve in a background thread; returns once connections are accepted."""
        if self._server is not None:
            return self
        if self._stopping.is_set():
            raise RuntimeError("a stopped CasdaEmulator cannot be restarted; create a new one")
        try:
            server = make_server(self.host, self.port, EmulatorApp(self.backend, self._stopping),
                                 threaded=True, request_handler=_Handler)
        except SystemExit:  # werkzeug exits when it cannot bind
            raise OSError(f"cannot listen on {self.host}:{self.port}") from None
        server.connections, server.connections_lock = set(), threading.Lock()
        self._server, self.port = server, server.server_port
        url_host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        url_host = f"[{url_host}]" if ":" in url_host else url_host
        self.url = f"http://{url_host}:{self.port}/"
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="casda-emulator", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def _serve(self, ready):
        ready.set()
        self._server.serve_forever(poll_interval=0.05)

    def stop(self):
        """Stop serving, drop open connections, join the thread, remove a temporary data dir."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            with server.connections_lock:
                connections = list(server.connections)
            for connection in connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.backend.tap_jobs.clear()
        self.backend.soda_jobs.clear()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def __repr__(self):
        state = f"serving {self.url}" if self._server is not None else "stopped"
        return f"<CasdaEmulator {state} data_dir={str(self.data_dir)!r}>"
