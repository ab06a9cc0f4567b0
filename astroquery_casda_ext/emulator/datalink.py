"""The emulated DataLink service (``datalink/links``) and its access tokens.

CASDA's DataLink (``casda_vo_tools`` ``DataLinkService``) answers, per requested ID, with
rows that point at the SODA services of ``casda_data_access``.  Through the OPAL proxy each
row carries an *authenticated id token* naming (product, user, download mode); SODA trusts
nothing else.  Anonymous callers get a single row pointing back at the proxy.

Two document flavours are served (``EmulatorOptions.datalink_flavour``):

``"current"`` (vo_tools v1.24+)
    a ``standardID`` INFO in the results RESOURCE; the Pawsey async row uses the service
    ``pawsey_async_service``; meta RESOURCEs carry a ``name`` and a DESCRIPTION; cutout and
    spectrum services advertise CIRCLE, POLYGON, BAND, CHANNEL (unit ``pixel``), POL, COORD.
``"old"`` (as recorded in astroquery's ``datalink.xml``)
    no INFO; both async rows say ``async_service``; three ``POS`` PARAMs, CHANNEL unit
    ``pixels``; meta RESOURCEs without name or DESCRIPTION.

Nothing here knows HTTP beyond reading the request parameters and building a `Response`.
"""
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape, quoteattr

from werkzeug.wrappers import Response

__all__ = ["TOKEN_MODES", "TokenGrant", "TokenStore", "ROUTES", "links"]

#: Download modes a token can grant (``RequestToken.downloadMode`` at CASDA).
TOKEN_MODES = ("WEB", "INTERNAL", "CUTOUT", "GENERATED_SPECTRUM")

#: RESPONSEFORMAT values that mean VOTable (vo_tools ``OutputFormat.VOTABLE``).
VOTABLE_FORMATS = frozenset({"votable", "xml", "text/xml", "application/x-votable+xml",
                             "application/x-votable+xml;content=datalink"})

#: IDs vo_tools recognises (lower-cased); anything else is a UsageFault.
ID_PATTERN = re.compile(r"^(?:(cube|catalogue|spectrum|moment_map|cubelet|evaluation|visibility)-\d+"
                        r"|(scan)-\d+-\d+)$")

FITS_TYPES = frozenset({"cube", "spectrum", "moment_map", "cubelet"})

SODA_ASYNC_STANDARD = "ivo://ivoa.net/std/SODA#async-1.0"

WEB_SYNC_DESCRIPTION = "Download data product via web"
PAWSEY_NOTE = ("Note: Only users from within PSC network can access the data through this link. "
               "Only use if you currently have access to Pawsey facilities.")
PAWSEY_SYNC_DESCRIPTION = "Download data at Pawsey Centre. " + PAWSEY_NOTE
WEB_ASYNC_DESCRIPTION = "Scripted file access via Web"
PAWSEY_ASYNC_DESCRIPTION = "Scripted file access via Pawsey Centre. " + PAWSEY_NOTE
NO_PERMISSION = "DefaultFault: Sorry, but you do not have permission to access this data product"

#: Meta RESOURCEs in the order vo_tools v1.24+ writes them: (ID, name, DESCRIPTION).
#: The download descriptions are vo_tools' ``datalink/service.authenticated.released.xml``.
SERVICES = (
    ("pawsey_async_service", "DownloadToPawseyService",
     "Asynchronous download of the file(s) to servers within the Pawsey Supercomputing Centre."),
    ("async_service", "DownloadService", "Asynchronous download of the file(s) to any server."),
    ("cutout_service", "CASDA Image Generation Service", "Generate a cutout image or cube"),
    ("spectrum_generation_service", "CASDA Spectrum Generation Service",
     "Generate a 1D spectrum for a specific region"),
)

GENERATED_FILE_SERVICES = frozenset({"cutout_service", "spectrum_generation_service"})

#: CIRCLE and POLYGON carry no ``unit`` at CASDA (``service.authenticated.released.xml``).
INPUT_PARAMS_CURRENT = (
    '<PARAM datatype="double" xtype="circle" name="CIRCLE" arraysize="3" value=""/>',
    '<PARAM datatype="double" xtype="polygon" name="POLYGON" arraysize="*" value=""/>',
    '<PARAM unit="m" datatype="double" xtype="interval" name="BAND" arraysize="2" value=""/>',
    '<PARAM unit="pixel" datatype="int" xtype="interval" name="CHANNEL" arraysize="2" value=""/>',
    '<PARAM datatype="char" name="POL" arraysize="*" value=""/>',
    '<PARAM datatype="char" name="COORD" arraysize="*" value=""/>',
)
INPUT_PARAMS_OLD = (
    '<PARAM datatype="char" xtype="circle" name="POS" arraysize="*"/>',
    '<PARAM datatype="char" xtype="range" name="POS" arraysize="*"/>',
    '<PARAM datatype="char" xtype="polygon" name="POS" arraysize="*"/>',
    '<PARAM unit="m" datatype="double" xtype="interval" name="BAND" arraysize="*"/>',
    '<PARAM unit="pixels" datatype="int" xtype="interval" name="CHANNEL" arraysize="*"/>',
    '<PARAM datatype="char" name="POL" arraysize="*"/>',
    '<PARAM datatype="char" name="COORD" arraysize="*"/>',
)

FIELDS = """\
            <FIELD datatype="char" name="ID" ucd="meta.id;meta.main" arraysize="*"/>
            <FIELD datatype="char" name="access_url" ucd="meta.ref.url" arraysize="*"/>
            <FIELD datatype="char" name="service_def" ucd="meta.ref" arraysize="*"/>
            <FIELD datatype="char" name="error_message" ucd="meta.code.error" arraysize="*"/>
            <FIELD datatype="char" name="description" ucd="meta.note" arraysize="*"/>
            <FIELD datatype="char" name="semantics" ucd="meta.code" arraysize="*"/>
            <FIELD datatype="char" name="content_type" ucd="meta.code.mime" arraysize="*"/>
            <FIELD unit="byte" datatype="long" name="content_length" ucd="phys.size;meta.file"/>
            <FIELD ID="authenticatedIdToken" datatype="char" name="authenticated_id_token" ucd="meta.id" \
arraysize="*"/>
"""


# --- tokens -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenGrant:
    """What an authenticated id token stands for."""

    product_id: str
    user_id: str
    mode: str
    issued: float


class TokenStore:
    """Mints and resolves opaque, URL-safe access tokens.

    CASDA encrypts ``product|user|login|mode|millis`` with AES; the emulator keeps the
    grant server-side and hands out 64 random URL-safe characters of the same look, so a
    client can neither read nor forge them.
    """

    def __init__(self):
        self._grants = {}
        self._lock = threading.Lock()

    def mint(self, product_id, user_id, mode):
        """A new token for ``product_id`` granted to ``user_id`` in download ``mode``."""
        if mode not in TOKEN_MODES:
            raise ValueError(f"unknown download mode {mode!r}")
        token = secrets.token_urlsafe(48)
        with self._lock:
            self._grants[token] = TokenGrant(product_id, str(user_id), mode, time.time())
        return token

    def resolve(self, token):
        """The `TokenGrant` of ``token``, or None when it was never minted here."""
        with self._lock:
            return self._grants.get(token)

    def clear(self):
        """Forget every token (emulator reset)."""
        with self._lock:
            self._grants.clear()


# --- rows ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One row of the 9-column DataLink table (empty string = empty cell)."""

    id: str
    access_url: str = ""
    service_def: str = ""
    error_message: str = ""
    description: str = ""
    semantics: str = ""
    content_type: str = ""
    content_length: str = ""
    token: str = ""

    def cells(self):
        return (self.id, self.access_url, self.service_def, self.error_message, self.description,
                self.semantics, self.content_type, self.content_length, self.token)


def error_row(row_id, message, description=""):
    return Row(row_id, error_message=message, description=description, semantics="#error")


def product_type(product_id):
    """The product type of a recognised ID (``cube``, ``scan``, ...) or None."""
    match = ID_PATTERN.match(product_id.lower())
    return (match.group(1) or match.group(2)) if match else None


def content_type_of(kind):
    if kind in FITS_TYPES:
        return "application/fits"
    return "application/xml" if kind == "catalogue" else "application/tar"


def size_kb(product):
    """The product's size in KB as CASDA's ``filesize`` column holds it."""
    estimate = product.obscore.get("access_estsize") if product.obscore else None
    try:
        return int(estimate)
    except (TypeError, ValueError):
        return math.ceil(product.size / 1024)


def is_released(release_date, now):
    """True when ``release_date`` ("YYYY-MM-DDTHH:MM:SS.sssZ", "" = never) is in the past."""
    if not release_date:
        return False
    try:
        when = datetime.fromisoformat(release_date.replace("Z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when < now


def access_allowed(user, product, now):
    """vo_tools ``isAccessAllowed``: admin, released, or a member of the product's project."""
    if user.admin:
        return True
    return is_released(product.release_date, now) or product.project_code in set(user.projects or ())


def offers_generated_files(kind, product):
    """Cutout and spectrum services are offered for image cubes only.

    The synthetic ``bulk`` products exist to time downloads and are not real image cubes.
    """
    return kind == "cube" and getattr(product, "kind", "") != "bulk"


class LinkBuilder:
    """Collects rows and the services they use for one DataLink response."""

    def __init__(self, ctx, flavour):
        self.ctx = ctx
        self.flavour = flavour
        self.rows = []
        self.services = set()
        self.tokens = ctx.backend.tokens
        self.now = datetime.now(timezone.utc)

    def add_id(self, requested):
        """Append the rows for one requested ID (``DataLinkService.buildDataAccessForId``)."""
        kind = product_type(requested) if requested.strip() else None
        if kind is None:
            self.rows.append(error_row(requested, f"UsageFault: Invalid id {requested}"))
            return
        try:
            product = self.ctx.backend.holdings.product(requested)
        except KeyError:
            self.rows.append(error_row(requested, f"NotFoundFault: {requested} cannot be found"))
            return
        user = self.ctx.user
        if user is None:
            self.rows.append(Row(requested, access_url=self.ctx.url(
                f"casda_vo_proxy/vo/datalink/links?ID={requested}"),
                description="Authenticated Data Link", semantics="#this",
                content_type="application/x-votable+xml;content=datalink"))
        elif access_allowed(user, product, self.now):
            self.add_access_rows(requested, kind, product, str(user.user_id))
        else:
            # CASDA puts the *user* id in the ID column of this row (recorded datalink_noaccess.xml).
            self.rows.append(error_row(str(user.user_id), NO_PERMISSION))

    def add_access_rows(self, requested, kind, product, user_id):
        mime = content_type_of(kind)
        kb = size_kb(product)
        length = str(kb * 1024)
        mint = partial(self.tokens.mint, product.product_id, user_id)
        too_big = self.size_limit_message(kb)
        web, internal = mint("WEB"), mint("INTERNAL")
        sync_url = self.ctx.url("casda_data_access/data/sync")
        if too_big:
            self.rows.append(error_row(requested, too_big, WEB_SYNC_DESCRIPTION))
        else:
            self.rows.append(Row(requested, access_url=f"{sync_url}?id={web}",
                                 description=WEB_SYNC_DESCRIPTION, semantics="#this", content_type=mime,
                                 content_length=length))
        self.rows.append(Row(requested, access_url=f"{sync_url}/pawsey?id={internal}",
                             description=PAWSEY_SYNC_DESCRIPTION, semantics="#this", content_type=mime,
                             content_length=length))
        if too_big:
            self.rows.append(error_row(requested, too_big, WEB_ASYNC_DESCRIPTION))
        else:
            self.service_row(requested, "async_service", WEB_ASYNC_DESCRIPTION, "#this", mime, length, web)
        pawsey_service = "pawsey_async_service" if self.flavour == "current" else "async_service"
        self.service_row(requested, pawsey_service, PAWSEY_ASYNC_DESCRIPTION, "#this", mime, length, internal)
        if offers_generated_files(kind, product):
            self.service_row(requested, "cutout_service", "Scripted cut-out service", "#cutout",
                             "application/fits", "", mint("CUTOUT"))
            self.service_row(requested, "spectrum_generation_service", "Scripted spectrum generation service",
                             "#proc", "application/fits", "", mint("GENERATED_SPECTRUM"))

    def service_row(self, requested, service, description, semantics, mime, length, token):
        self.services.add(service)
        self.rows.append(Row(requested, service_def=service, description=description, semantics=semantics,
                             content_type=mime, content_length=length, token=token))

    def size_limit_message(self, kb):
        limit_gb = getattr(self.ctx.options, "datalink_size_limit_gb", None)
        if limit_gb is None or kb <= limit_gb * 1024 * 1024:
            return ""
        return ("DefaultFault: This option is unavailable due to the file size exceeding "
                f"{limit_gb:g} GB in size")


# --- document -----------------------------------------------------------------------------------

def _td(value):
    return "<TD/>" if value == "" else f"<TD>{escape(value)}</TD>"


def render_table(rows, flavour):
    """The results RESOURCE (always present, possibly with no rows)."""
    out = ['    <RESOURCE name="CASDA Datalink Result" type="results">']
    if flavour == "current":
        out.append('        <INFO name="standardID" value="ivo://ivoa.net/std/DataLink#links-1.1"/>')
    out += ["        <TABLE>", FIELDS.rstrip("\n"), "            <DATA>", "                <TABLEDATA>"]
    for row in rows:
        out.append("                    <TR>")
        out += [f"                        {_td(cell)}" for cell in row.cells()]
        out.append("                    </TR>")
    out += ["                </TABLEDATA>", "            </DATA>", "        </TABLE>", "    </RESOURCE>"]
    return out


def render_services(services, flavour, async_url):
    """One meta RESOURCE per service used, each once.

    vo_tools appends the service RESOURCEs once per requested ID, so a multi-ID answer
    repeats ``<RESOURCE ID="async_service">``.  Repeated XML IDs make the document invalid
    (astropy warns, pyvo keeps one), so the emulator writes each service once, in the
    v1.24 order.  Clients must not depend on either behaviour.
    """
    out = []
    for service_id, name, description in SERVICES:
        if service_id not in services:
            continue
        if flavour == "current":
            out.append(f'    <RESOURCE ID="{service_id}" name={quoteattr(name)} utype="adhoc:service" '
                       f'type="meta">')
            out.append(f"        <DESCRIPTION>{escape(description)}</DESCRIPTION>")
        else:
            out.append(f'    <RESOURCE ID="{service_id}" utype="adhoc:service" type="meta">')
        out.append(f'        <PARAM value="{SODA_ASYNC_STANDARD}" datatype="char" name="standardID" '
                   f'arraysize="*"/>')
        out.append(f"        <PARAM value={quoteattr(async_url)} datatype=\"char\" name=\"accessURL\" "
                   'arraysize="*"/>')
        out.append('        <GROUP name="inputParams">')
        out.append('            <PARAM value="" datatype="char" ref="authenticatedIdToken" name="ID" '
                   'arraysize="*"/>')
        if service_id in GENERATED_FILE_SERVICES:
            params = INPUT_PARAMS_CURRENT if flavour == "current" else INPUT_PARAMS_OLD
            out += [f"            {param}" for param in params]
        out += ["        </GROUP>", "    </RESOURCE>"]
    return out


def render_self_description(links_url, flavour):
    """The ``name="this"`` meta RESOURCE written when no ID was given."""
    version = "1.1" if flavour == "current" else "1.0"
    return [
        '    <RESOURCE utype="adhoc:service" name="this" type="meta">',
        f'        <PARAM value="ivo://ivoa.net/std/DataLink#links-{version}" datatype="char" '
        'name="standardID" arraysize="*"/>',
        # "accessUrl" (sic) is how vo_tools spells it.
        f'        <PARAM value={quoteattr(links_url)} datatype="char" name="accessUrl" arraysize="*"/>',
        '        <GROUP name="inputParams">',
        '            <PARAM value="" datatype="char" name="ID" arraysize="*"/>',
        "        </GROUP>",
        "    </RESOURCE>",
    ]


def render_document(stylesheet, body_lines):
    head = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            f"<?xml-stylesheet href='{stylesheet}' type='text/xsl' ?>\n\n"
            '<VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3" version="1.3">\n')
    return head + "\n".join(body_lines) + "\n</VOTABLE>\n"


def render_error(message):
    """vo_tools ``VotableError.reportError``: a bare QUERY_STATUS=ERROR VOTable."""
    return ('<?xml version="1.0"?>\n<VOTABLE version="1.3" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xmlns="http://www.ivoa.net/xml/VOTable/v1.3" xmlns:stc="http://www.ivoa.net/xml/STC/v1.30" >\n'
            "<RESOURCE name=\"CASDA Data Link\" type='results'>\n"
            f'<INFO name="QUERY_STATUS" value="ERROR">{escape(message)}</INFO>\n</RESOURCE>\n</VOTABLE>')


# --- handler ------------------------------------------------------------------------------------

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
    builder = LinkBuilder(ctx, flavour)
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
