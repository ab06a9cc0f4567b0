"""Handlers and routes of the VOSI resources: ``tables``, ``capabilities``, ``availability``.

The state is what the backend already holds (the TAP database's tables, ``up_since``);
the documents are ``vosi_render``'s.  Also the ``votable.xsl`` stylesheet the result
documents point at.  ``ROUTES`` is relative to a VO base; ``routes.py`` mounts it under both.
"""
from werkzeug.wrappers import Response

from . import vosi_render
from .context import xml_response

__all__ = ["ROUTES"]

def tap_tables(ctx):
    """``tap/tables``: the VOSI tableset."""
    return xml_response(vosi_render.vosi_tables(ctx.backend.database.tables))


_CAPABILITIES = {"tap": vosi_render.tap_capabilities, "sia2": vosi_render.sia2_capabilities,
                 "datalink": vosi_render.datalink_capabilities}


def capabilities(ctx, service):
    """``<service>/capabilities`` for TAP, SIA2 and DataLink."""
    return xml_response(_CAPABILITIES[service](ctx.vo_base + service))


def availability(ctx, service):
    """``<service>/availability``: VOSI availability (also the proxy's login check)."""
    return xml_response(vosi_render.availability(ctx.backend.up_since))


def votable_xsl(ctx):
    """The stylesheet the documents' ``xml-stylesheet`` instruction points at."""
    return Response(vosi_render.VOTABLE_XSL, content_type="text/xsl")


#: (methods, path regex relative to a VO base, handler).
ROUTES = [
    (("GET",), r"tap/tables$", tap_tables),
    (("GET",), r"(?P<service>tap|sia2|datalink)/capabilities$", capabilities),
    (("GET",), r"(?P<service>tap|sia2|datalink|scs|sia1|ssa)/availability$", availability),
    (("GET",), r"votable\.xsl$", votable_xsl),
]
