"""Handler and route of the emulated SIA2 query service (``sia2/query``).

The state is ``sia2_state`` (SIA2 parameters to ADQL on ``ivoa.obscore`` with CASDA's
rules), run on the TAP database; the document is a VOTable result of
``result_writers`` (through ``tap_routes.result_chunks``), errors are HTTP 200 VOTables.
``ROUTES`` is relative to a VO base; ``routes.py`` mounts it under both.
"""
from werkzeug.wrappers import Response

from . import result_writers
from .adql import AdqlError
from .sia2_state import DISTANCE_COLUMN, UsageFault, build_sia2_query
from .tap_routes import place_of, result_chunks
from .tap_state import OUTPUT_FORMATS, TAP_MAX_RECORDS, user_scope

__all__ = ["ROUTES"]

SIA2_RESOURCE = "CASDA SIAPv2 Result"


def _sia2_response(body, response_format):
    if response_format is None:
        return Response(body, content_type="text/xml", direct_passthrough=not isinstance(body, bytes))
    return Response(body, content_type=result_writers.VOTABLE_TYPE,
                    direct_passthrough=not isinstance(body, bytes),
                    headers={"Content-Disposition": 'attachment; filename="sia2_results.xml"'})


def sia2_query(ctx):
    """``sia2/query``: SIA2 parameters to ADQL on ivoa.obscore; errors are HTTP 200 VOTables."""
    started, params = ctx.backend.clock.now(), ctx.params()
    response_format = next((value for name, value in params if name.lower() == "responseformat"), None)
    try:
        query = build_sia2_query(params)
        projects, admin = user_scope(ctx.user)
        maxrec = TAP_MAX_RECORDS if query.maxrec is None else query.maxrec
        result = ctx.backend.database.execute(query.adql, maxrec=maxrec, projects=projects, admin=admin)
    except UsageFault as exc:
        # casda_text: the messages exactly as CASDA terminates them (with "\r\n").
        message = getattr(exc, "casda_text", str(exc))
        return _sia2_response(result_writers.votable_error(SIA2_RESOURCE, message), response_format)
    except AdqlError as exc:
        return _sia2_response(result_writers.votable_error(SIA2_RESOURCE, exc.message), response_format)
    if result.columns and result.columns[0].name == "distance":
        # CASDA's SIA2 writer describes the column from siap1-fields.properties, not as ADQL's DISTANCE.
        result.columns[0] = DISTANCE_COLUMN
    chunks = result_chunks(ctx.backend, result, OUTPUT_FORMATS[0], place=place_of(ctx),
                           query_name="SIAP  query", query_text=query.query_string, started=started,
                           resource=SIA2_RESOURCE)
    return _sia2_response(chunks, response_format)


#: (methods, path regex relative to a VO base, handler).
ROUTES = [
    (("GET", "POST"), r"sia2/query$", sia2_query),
]
