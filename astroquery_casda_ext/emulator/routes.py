"""The emulator's URL table and `dispatch`.

Routes are data: each service's routes module (``tap_routes``, ``sia2_routes``,
``vosi_routes``, ``datalink_routes``, ``soda_routes``) lists ``(methods, path regex,
handler)``; `dispatch` calls the first handler whose regex matches the request path,
with the regex's named groups as keyword arguments.

The VO services are written relative to a VO base and mounted twice: under
``/casda_vo_tools/`` (anonymous) and ``/casda_vo_proxy/vo/`` (the OPAL proxy; ``server.py``
has authenticated the user before dispatch).  SODA and download routes are absolute.
"""
import re

from .context import RequestContext, text_response
from .datalink_routes import ROUTES as DATALINK_ROUTES
from .sia2_routes import ROUTES as SIA2_ROUTES
from .soda_routes import ROUTES as SODA_ROUTES
from .tap_routes import ROUTES as TAP_ROUTES
from .vosi_routes import ROUTES as VOSI_ROUTES

__all__ = ["RequestContext", "ROUTES", "VO_ROUTES", "VO_BASES", "dispatch"]

#: Where the VO services are mounted: (path prefix, served through the OPAL proxy?).
VO_BASES = (("/casda_vo_tools/", False), ("/casda_vo_proxy/vo/", True))


def _mounted(relative_routes):
    """Each relative VO route under both VO bases."""
    mounted = []
    for prefix, _via_proxy in VO_BASES:
        for methods, pattern, handler in relative_routes:
            mounted.append((methods, "^" + re.escape(prefix) + pattern.lstrip("^/"), handler))
    return mounted


#: The VO services, each relative to a VO base.
VO_ROUTES = TAP_ROUTES + SIA2_ROUTES + VOSI_ROUTES + DATALINK_ROUTES

#: The whole URL table: VO services under both bases, then SODA and downloads.
ROUTES = _mounted(VO_ROUTES) + list(SODA_ROUTES)


_compiled = None


def _compiled_routes():
    global _compiled
    if _compiled is None:
        _compiled = [(frozenset(methods), re.compile(pattern), handler)
                     for methods, pattern, handler in ROUTES]
    return _compiled


def dispatch(ctx):
    """Answer ``ctx.request`` with the first matching route: 404 for no path, 405 for no method."""
    method, path = ctx.request.method, ctx.request.path
    allowed = set()
    for methods, pattern, handler in _compiled_routes():
        match = pattern.match(path)
        if match is None:
            continue
        if method in methods or (method == "HEAD" and "GET" in methods):
            return handler(ctx, **match.groupdict())
        allowed |= methods
    if allowed:
        return text_response("Method Not Allowed", status=405, Allow=", ".join(sorted(allowed)))
    return text_response("Not Found", status=404)
