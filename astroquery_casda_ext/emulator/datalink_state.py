"""State and rules of the emulated DataLink service (``datalink/links``): tokens and rows.

CASDA's DataLink (``casda_vo_tools`` ``DataLinkService``) answers, per requested ID, with
rows that point at the SODA services of ``casda_data_access``.  Through the OPAL proxy each
row carries an *authenticated id token* naming (product, user, download mode); SODA trusts
nothing else (`TokenStore`).  Anonymous callers get a single row pointing back at the proxy.
`LinkBuilder` applies CASDA's rules (``buildDataAccessForId``, ``isAccessAllowed``, the size
limit) to produce the `Row` objects; no HTTP and no XML here (``datalink_render.py`` writes
the document, ``datalink_routes.py`` answers the request).
"""
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial

__all__ = ["TOKEN_MODES", "TokenGrant", "TokenStore", "Row", "LinkBuilder", "product_type", "access_allowed"]

#: Download modes a token can grant (``RequestToken.downloadMode`` at CASDA).
TOKEN_MODES = ("WEB", "INTERNAL", "CUTOUT", "GENERATED_SPECTRUM")

#: IDs vo_tools recognises (lower-cased); anything else is a UsageFault.
ID_PATTERN = re.compile(r"^(?:(cube|catalogue|spectrum|moment_map|cubelet|evaluation|visibility)-\d+"
                        r"|(scan)-\d+-\d+)$")

FITS_TYPES = frozenset({"cube", "spectrum", "moment_map", "cubelet"})

WEB_SYNC_DESCRIPTION = "Download data product via web"
PAWSEY_NOTE = ("Note: Only users from within PSC network can access the data through this link. "
               "Only use if you currently have access to Pawsey facilities.")
PAWSEY_SYNC_DESCRIPTION = "Download data at Pawsey Centre. " + PAWSEY_NOTE
WEB_ASYNC_DESCRIPTION = "Scripted file access via Web"
PAWSEY_ASYNC_DESCRIPTION = "Scripted file access via Pawsey Centre. " + PAWSEY_NOTE
NO_PERMISSION = "DefaultFault: Sorry, but you do not have permission to access this data product"


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
    """Collects rows and the services they use for one DataLink response.

    Parameters
    ----------
    backend : EmulatorBackend
        Supplies ``holdings`` and ``tokens``.
    user : User or None
        The OPAL user the proxy authenticated (None: anonymous).
    url : callable
        ``url(path)``: the absolute URL of a server path on the requesting host.
    flavour : str
        ``"current"`` or ``"old"`` (which service names the Pawsey row uses).
    size_limit_gb : float or None
        ``datalink.download.limit.http``: larger files lose their web download rows.
    """

    def __init__(self, backend, user, url, flavour, size_limit_gb=None):
        self.backend, self.user, self.url = backend, user, url
        self.flavour = flavour
        self.size_limit_gb = size_limit_gb
        self.rows = []
        self.services = set()
        self.tokens = backend.tokens
        self.now = backend.clock.now()     # embargo ends by the emulator's clock

    def add_id(self, requested):
        """Append the rows for one requested ID (``DataLinkService.buildDataAccessForId``)."""
        kind = product_type(requested) if requested.strip() else None
        if kind is None:
            self.rows.append(error_row(requested, f"UsageFault: Invalid id {requested}"))
            return
        try:
            product = self.backend.holdings.product(requested)
        except KeyError:
            self.rows.append(error_row(requested, f"NotFoundFault: {requested} cannot be found"))
            return
        user = self.user
        if user is None:
            self.rows.append(Row(requested, access_url=self.url(
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
        sync_url = self.url("casda_data_access/data/sync")
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
        limit_gb = self.size_limit_gb
        if limit_gb is None or kb <= limit_gb * 1024 * 1024:
            return ""
        return ("DefaultFault: This option is unavailable due to the file size exceeding "
                f"{limit_gb:g} GB in size")
