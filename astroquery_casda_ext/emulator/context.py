"""What every handler gets: the request's `RequestContext`, and small response helpers.

Shared by the per-service routes (``tap_routes``, ``sia2_routes``, ``vosi_routes``,
``datalink_routes``, ``soda_routes``); the URL table and `~routes.dispatch` are in
``routes.py``.
"""
from dataclasses import dataclass
from urllib.parse import parse_qsl

from werkzeug.wrappers import Request, Response

__all__ = ["RequestContext", "PROXY_PREFIX", "TOOLS_PREFIX", "request_params", "text_response",
           "xml_response", "see_other"]

PROXY_PREFIX = "casda_vo_proxy/vo/"
TOOLS_PREFIX = "casda_vo_tools/"


def text_response(body, status=200, **headers):
    return Response(body, status=status, content_type="text/plain", headers=headers)


def xml_response(body, status=200, content_type="application/xml"):
    return Response(body, status=status, content_type=content_type)


def see_other(location):
    return Response(b"", status=303, headers={"Location": location})


@dataclass
class RequestContext:
    """What a handler knows about the request it answers.

    Attributes
    ----------
    request : werkzeug.wrappers.Request
    backend : EmulatorBackend
    base_url : str
        ``scheme://host[:port]/`` from the request's ``Host`` header, so absolute URLs in
        documents work behind a port forward.
    user : User or None
        The OPAL user the proxy authenticated; None for anonymous requests.
    via_proxy : bool
        The request came in under ``/casda_vo_proxy/vo/``.
    """

    request: Request
    backend: object
    base_url: str
    user: object = None
    via_proxy: bool = False

    @property
    def options(self):
        """The emulator's current `EmulatorOptions`."""
        return self.backend.options

    def url(self, path=""):
        """Absolute URL of ``path`` (relative to the server root) on this request's host."""
        return self.base_url + path.lstrip("/")

    @property
    def vo_base(self):
        """The VO base this request came through (ends with ``/``)."""
        return self.url(PROXY_PREFIX if self.via_proxy else TOOLS_PREFIX)

    def params(self):
        """Query and form parameters as ``(name, value)`` pairs, names as sent, in order."""
        pairs = list(self.request.args.items(multi=True))
        if self.request.method == "POST":
            pairs += list(self.request.form.items(multi=True))
        return pairs

    def first_params(self):
        """Parameters with lower-case names, first value of each (vo_tools ``getParamsMap``)."""
        params = {}
        for name, value in self.params():
            params.setdefault(name.lower(), value)
        return params


def request_params(request):
    """Query and form parameters as (lower-case key, value) pairs, in the order sent.

    Parsed from the raw query string and body because werkzeug's ``MultiDict`` groups
    values by key, which would reorder ``ID=a&id=b&ID=c``.
    """
    pairs = parse_qsl(request.query_string.decode("utf-8", "replace"), keep_blank_values=True)
    if request.method == "POST":
        if request.mimetype == "application/x-www-form-urlencoded":
            body = request.get_data(cache=True, as_text=True)
            pairs += parse_qsl(body, keep_blank_values=True) if body else list(request.form.items(multi=True))
        else:
            pairs += list(request.form.items(multi=True))
    return [(key.lower(), value) for key, value in pairs]
