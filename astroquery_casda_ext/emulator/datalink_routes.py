"""The DataLink handler (``datalink/links``) and its route, mounted under both VO bases.

Reads the request (IDs in order, RESPONSEFORMAT), lets ``datalink_state.LinkBuilder`` make
the rows and ``datalink_render`` write the document.
"""
from werkzeug.wrappers import Response

from .context import request_params

from .datalink_render import (
    render_document, render_error, render_self_description, render_services, render_table)
from .datalink_state import LinkBuilder

__all__ = ["ROUTES", "links"]

#: RESPONSEFORMAT values that mean VOTable (vo_tools ``OutputFormat.VOTABLE``).
VOTABLE_FORMATS = frozenset({"votable", "xml", "text/xml", "application/x-votable+xml",
                             "application/x-votable+xml;content=datalink"})


def _response(body, response_format):
    if response_format is None:
        return Response(body, status=200, content_type="text/xml")
    return Response(body, status=200, content_type="application/x-votable+xml", headers={
        "Content-Disposition": 'attachment; filename="datalink_results.xml"'})


def links(ctx):
    """``GET|POST datalink/links``: DataLink rows for every ``ID`` given."""
    params = request_params(ctx.request)
    formats = [value for key, value in params if key == "responseformat"]
    response_format = formats[0] if formats else None
    for value in formats:
        if value.strip() and value.strip().lower() not in VOTABLE_FORMATS:
            return _response(render_error(f"Unsupported RESPONSEFORMAT of '{value}'."), response_format)
    flavour = "old" if getattr(ctx.options, "datalink_flavour", "current") == "old" else "current"
    authenticated = ctx.user is not None
    base = "casda_vo_proxy/vo/" if authenticated or ctx.via_proxy else "casda_vo_tools/"
    builder = LinkBuilder(ctx.backend, ctx.user, ctx.url, flavour,
                          getattr(ctx.options, "datalink_size_limit_gb", None))
    ids = [value for key, value in params if key == "id"]
    for requested in ids:
        builder.add_id(requested)
    body = render_table(builder.rows, flavour)
    if not ids:
        body += render_self_description(ctx.url(base + "datalink/links"), flavour)
    body += render_services(builder.services, flavour, ctx.url("casda_data_access/data/async"))
    return _response(render_document(ctx.url(base + "votable.xsl"), body), response_format)


#: (methods, path pattern relative to a VO base, handler); mounted under both
#: ``/casda_vo_tools/`` and ``/casda_vo_proxy/vo/``.
ROUTES = [
    (("GET", "POST"), r"datalink/links$", links),
]
