"""File downloads as a route answers them: CASDA's headers, Range and If-Range, rate caps.

The routes layer's one way to send a file (``soda_routes`` for ``data/sync`` and the
``/download/...`` paths, ``tap_routes`` for a TAP job's result).  Range, If-Range and the
conditional GETs are werkzeug's (``Response.make_conditional``) when the emulator plays a
front end that honours them (``EmulatorOptions.range_support``); the body is a
`FileBody` for exactly the bytes answered, which the server sends with ``os.sendfile``.
"""
import datetime as _dt

from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.wrappers import Response

__all__ = ["FileBody", "stream_file", "file_response", "content_type_for"]


_CONTENT_TYPES = {".fits": "image/x-fits", ".checksum": "text/plain", ".txt": "text/plain"}


def content_type_for(name):
    """CASDA's download Content-Type for a file name (``DataAccessService.downloadFile``)."""
    lowered = name.lower()
    for suffix, content_type in _CONTENT_TYPES.items():
        if lowered.endswith(suffix):
            return content_type
    return "application/octet-stream"


class FileBody:
    """A response body reading ``length`` bytes of ``path`` from ``start``, in chunks.

    The server recognises this type: with no fault and no rate limit it sends the bytes
    with ``os.sendfile`` instead of iterating.  Nothing is read before iteration starts,
    and never more than one chunk at a time.

    Attributes
    ----------
    path : pathlib.Path
    start, length : int
        Byte range of the file to send.
    rate : float or None
        Bytes per second this body may go at (``EmulatorOptions.transfer_rate``).
    """

    #: Bytes read per chunk when iterating.
    chunk_size = 1 << 20

    def __init__(self, path, start, length, *, rate=None):
        self.path, self.start, self.length, self.rate = path, start, length, rate

    def __iter__(self):
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            remaining = self.length
            while remaining > 0:
                chunk = handle.read(min(self.chunk_size, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk


def file_response(path, *, content_type, rate=None):
    """The whole of ``path`` with its ``Content-Length`` (a TAP result; no Range, as at CASDA)."""
    size = path.stat().st_size
    response = Response(FileBody(path, 0, size, rate=rate), content_type=content_type,
                        direct_passthrough=True)
    response.headers["Content-Length"] = str(size)
    return response


def _single_byte_range(request):
    """True when the request asks for one byte range: werkzeug would refuse several (416),
    where a server may (and the emulator does) answer them with the whole file."""
    requested = request.range
    return requested is not None and requested.units == "bytes" and len(requested.ranges) == 1


def stream_file(ctx, path, *, download_name, content_type=None):
    """Answer a download of ``path`` the way CASDA's download servlet does.

    ``Content-Disposition: attachment; filename=<name>`` (unquoted), ``Content-Length``,
    ``Content-Type`` by extension; HEAD; the per-connection ``options.transfer_rate``.
    With ``options.range_support`` (a proxy or S3 in front, as the emulator assumes by
    default) also ``ETag``, ``Last-Modified``, ``Accept-Ranges: bytes`` and werkzeug's
    conditional handling: a single ``Range`` gets 206 (416 when it cannot be satisfied),
    an ``If-Range`` that no longer matches gets the whole file (RFC 9110 13.1.5), and
    ``If-None-Match`` / ``If-Modified-Since`` a 304.  Without it, no ``Accept-Ranges``
    and ``Range`` is ignored, as by CASDA's own servlet.

    Parameters
    ----------
    ctx : RequestContext
    path : pathlib.Path
        The file on disk (streamed, never read whole).
    download_name : str
        File name for ``Content-Disposition``.
    content_type : str, optional
        Overrides the type chosen from the extension.
    """
    rate = ctx.options.transfer_rate
    response = file_response(path, content_type=content_type or content_type_for(download_name), rate=rate)
    response.headers["Content-Disposition"] = f"attachment; filename={download_name}"
    if not ctx.options.range_support:
        return response
    info = path.stat()
    response.set_etag(f"{info.st_ino:x}-{info.st_mtime_ns:x}-{info.st_size:x}")
    response.last_modified = _dt.datetime.fromtimestamp(int(info.st_mtime), _dt.timezone.utc)
    environ = ctx.request.environ
    if "HTTP_RANGE" in environ and not _single_byte_range(ctx.request):
        environ = {key: value for key, value in environ.items() if key != "HTTP_RANGE"}
    try:
        response.make_conditional(environ, accept_ranges=True, complete_length=info.st_size)
    except RequestedRangeNotSatisfiable:
        refused = Response(b"", status=416, content_type="text/plain", headers={
            "Content-Range": f"bytes */{info.st_size}", "Accept-Ranges": "bytes"})
        for name in ("Content-Disposition", "ETag", "Last-Modified"):
            refused.headers[name] = response.headers[name]
        return refused
    if response.status_code == 206:
        # werkzeug would skip to the range by reading; a FileBody starts there (and can be sent
        # with os.sendfile).
        span = response.content_range
        response.response = FileBody(path, span.start, span.stop - span.start, rate=rate)
    return response
