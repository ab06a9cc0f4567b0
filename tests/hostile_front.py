"""A hostile front for the emulator: real HTTP on 127.0.0.1 that forwards every request to the
emulator, except those a rule answers with an attack the emulator cannot make itself (gzip
bombs, XML entity bombs, HTML pages, an ERROR after the table, rows without end).

``HostileFront(emulator.url)`` is a context manager; ``front.url`` is a server base for
``CasdaClass(server=...)`` (the emulator writes its absolute URLs from the Host header, so
every link in its documents leads back through the front).  ``front.attack(method, path
regex, responder, times=None)`` adds a rule; a responder is ``responder(handler, upstream)``
where ``upstream()`` returns the emulator's own answer ``(status, headers, body)``.
"""
import http.client
import http.server
import re
import threading
import time
import zlib
from urllib.parse import urlsplit


class HostileFront:
    def __init__(self, upstream_url):
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname, parts.port)
        self.rules = []
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                rule = front._take(self.command, self.path)
                if rule is None:
                    return self.relay(*self.upstream_answer())
                self.close_connection = True   # an attack ends its connection (a responder may keep it)
                try:
                    rule(self, self.upstream_answer)
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                    self.close_connection = True

            def upstream_answer(self):
                connection = http.client.HTTPConnection(*front.upstream, timeout=30)
                headers = {key: value for key, value in self.headers.items()
                           if key.lower() not in ("accept-encoding", "connection")}
                connection.request(self.command, self.path, body=self.body or None, headers=headers)
                answer = connection.getresponse()
                body = answer.read()
                connection.close()
                kept = [(key, value) for key, value in answer.getheaders()
                        if key.lower() not in ("transfer-encoding", "connection", "content-length")]
                return answer.status, kept, body

            def relay(self, status, headers, body):
                """Send the emulator's answer as it is."""
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        host, port = self.server.server_address
        self.url = f"http://{host}:{port}/"

    def attack(self, method, path, responder, times=None):
        self.rules.append([method.upper(), re.compile(path), responder, times])

    def _take(self, method, path):
        for rule in self.rules:
            if rule[0] == method and rule[1].search(path.split("?")[0]) and rule[3] != 0:
                if rule[3] is not None:
                    rule[3] -= 1
                return rule[2]
        return None

    def __enter__(self):
        # shutdown() waits for serve_forever's next poll: 0.5 s each time by default
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# --- responders ---------------------------------------------------------------------------------

def _head(handler, status=200, content_type="application/xml", length=None, headers=()):
    """The status line and headers of an attack (its connection is closed after it)."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    if not any(key.lower() == "connection" for key, _ in headers):
        handler.send_header("Connection", "close")
    for key, value in headers:
        handler.send_header(key, value)
    if length is not None:
        handler.send_header("Content-Length", str(length))
    handler.end_headers()


_BOMBS = {}


def gzip_bomb_bytes(decoded):
    """A gzip body of ``decoded`` zero bytes (3 GB -> about 3 MB), built in milliseconds: one
    1 MiB segment compressed after a full flush is byte-aligned and the same every time, so it
    is repeated.  (Its trailer's CRC is not computed: a client that decodes it all has lost.)"""
    if decoded not in _BOMBS:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        chunk = bytes(1 << 20)
        first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
        segment = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
        end = compressor.flush()
        _BOMBS[decoded] = first + segment * (decoded // (1 << 20) - 1) + end
    return _BOMBS[decoded]


def gzip_bomb(decoded=3 << 30, status=200, content_type="application/x-votable+xml"):
    def respond(handler, upstream):
        body = gzip_bomb_bytes(decoded)
        _head(handler, status, content_type, len(body), [("Content-Encoding", "gzip")])
        handler.wfile.write(body)
    return respond


def trickle(interval=0.2, body=None, content_type=None):
    """The emulator's own answer (or ``body``), one byte every ``interval`` seconds."""
    def respond(handler, upstream):
        status, headers, real = upstream() if body is None else (200, [], body)
        kind = content_type or dict((k.lower(), v) for k, v in headers).get("content-type", "application/xml")
        _head(handler, status, kind, len(real))
        for index in range(len(real)):
            handler.wfile.write(real[index:index + 1])
            handler.wfile.flush()
            time.sleep(interval)
    return respond


def endless(prefix=b"", filler=b"<!-- more -->\n", content_type="application/xml"):
    """``prefix``, then ``filler`` without end (no length, the connection never closes)."""
    def respond(handler, upstream):
        _head(handler, 200, content_type)
        handler.wfile.write(prefix)
        block = filler * max(1, 65536 // len(filler))
        while True:
            handler.wfile.write(block)
    return respond


def html_page(text="<html><head><title>Sign in</title></head><body><h1>Please sign in to continue"
                   "</h1></body></html>", status=200):
    def respond(handler, upstream):
        body = text.encode()
        _head(handler, status, "text/html; charset=utf-8", len(body))
        handler.wfile.write(body)
    return respond


XML_BOMB = (b'<?xml version="1.0"?>\n<!DOCTYPE VOTABLE [\n <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">\n'
            + b"".join(b' <!ENTITY %s "%s">\n' % (bytes([ord("b") + i]), (b"&%s;" % bytes([ord("a") + i])) * 16)
                       for i in range(8))
            + b']>\n<VOTABLE version="1.3"><RESOURCE type="results"><INFO name="QUERY_STATUS" value="OK">'
              b'&i;</INFO></RESOURCE></VOTABLE>\n')


def xml_bomb(content_type="application/x-votable+xml"):
    def respond(handler, upstream):
        _head(handler, 200, content_type, len(XML_BOMB))
        handler.wfile.write(XML_BOMB)
    return respond


def error_after_table(message="Query timeout after 1200 rows"):
    """The emulator's VOTable with a ``QUERY_STATUS=ERROR`` INFO after ``</TABLE>``, as CASDA
    writes it when a query fails while its rows are being written."""
    def respond(handler, upstream):
        status, headers, body = upstream()
        info = f'<INFO name="QUERY_STATUS" value="ERROR">{message}</INFO>'.encode()
        body = body.replace(b"</TABLE>", b"</TABLE>" + info, 1)
        _head(handler, status, "application/x-votable+xml", len(body))
        handler.wfile.write(body)
    return respond
