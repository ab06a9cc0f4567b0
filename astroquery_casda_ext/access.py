"""DataLink: from product ids to SODA access tokens.

CASDA hands out access through its OPAL-authenticated DataLink service: for every
product id it returns a table of links, some of which carry an opaque
``authenticated_id_token`` for one SODA service (whole-file staging, cutouts or
spectrum generation).  The token, not a password, is what SODA later accepts.

`parse_datalink` reads one DataLink document (pure, testable on recorded files);
`DataLinkClient` sends the ids in batches and turns the rows into `AccessToken`
objects, reporting per product what the server refused and why.

CASDA's DataLink comes in two flavours that a client must both read:

* old servers: no ``standardID`` INFO, both the Web and the Pawsey staging rows are
  called ``async_service``, three ``POS`` input params, ``CHANNEL`` in "pixels";
* v1.24 and later: a ``standardID`` INFO, the Pawsey row is ``pawsey_async_service``,
  ``CIRCLE``/``POLYGON`` input params.
"""
import re
import warnings
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np
import requests
from astropy.table import Row, Table

from .documents import fetch, parse_votable, query_status
from .errors import (AccessDeniedWarning, DataLinkError, InvalidInputError, InvalidTableError, NoAccessError,
                     NotLoggedInError, redact_url)
from .transport import server_message   # re-exported: the server's words from an error answer

__all__ = ["AccessToken", "AccessReport", "DataLinkRow", "ServiceDescriptor", "DataLinkDocument",
           "DataLinkClient", "parse_datalink", "product_ids_from_table", "server_message",
           "DATALINK_BATCH_SIZE", "SERVICES"]

#: Product ids sent in one DataLink request.  CASDA's DataLink loops over repeated ``ID``
#: parameters, so batching saves one round trip per product; batches keep the request
#: URL short and one slow answer small (pyvo batches DataLink calls by 50 for the same reason).
DATALINK_BATCH_SIZE = 50

#: The SODA services a token can be asked for (DataLink ``service_def`` values).
SERVICES = ("async_service", "cutout_service", "spectrum_generation_service")

#: Description of the Web staging row.  Old servers call the Web and the Pawsey staging
#: rows both ``async_service``; only the description tells them apart.
WEB_ASYNC_DESCRIPTION = "Scripted file access via Web"

#: Description of the link an anonymous DataLink call returns instead of tokens.
AUTHENTICATED_LINK_DESCRIPTION = "Authenticated Data Link"

_COLUMNS = ("ID", "access_url", "service_def", "error_message", "description", "semantics",
            "content_type", "content_length", "authenticated_id_token")


@dataclass(frozen=True)
class AccessToken:
    """What SODA needs to serve one product through one service."""

    product_id: str      #: obs_publisher_did the token was issued for
    service: str         #: "async_service" | "cutout_service" | "spectrum_generation_service"
    service_url: str     #: accessURL of the service descriptor (the SODA async endpoint)
    token: str = field(repr=False)   #: authenticated_id_token: a credential, never printed
    content_length: int | None = None   #: bytes of the whole file, when DataLink says
    content_type: str | None = None     #: MIME type of the product, when DataLink says


@dataclass
class AccessReport:
    """Result of `DataLinkClient.tokens_for`.

    ``tokens`` are in the order of the requested ids; ``denied`` maps each refused
    product id to the server's message.
    """

    tokens: list[AccessToken]
    denied: dict[str, str]


@dataclass(frozen=True)
class DataLinkRow:
    """One row of a DataLink results table (empty cells are ``""``, or None for numbers)."""

    id: str
    access_url: str = ""
    service_def: str = ""
    error_message: str = ""
    description: str = ""
    semantics: str = ""
    content_type: str = ""
    content_length: int | None = None
    token: str = field(default="", repr=False)

    @property
    def is_error(self):
        return bool(self.error_message)

    def __repr__(self):
        # the sync download links carry the token in their query string: show them redacted
        return (f"DataLinkRow(id={self.id!r}, access_url={redact_url(self.access_url)!r}, "
                f"service_def={self.service_def!r}, error_message={self.error_message!r}, "
                f"description={self.description!r})")


@dataclass(frozen=True)
class ServiceDescriptor:
    """A ``<RESOURCE type="meta" utype="adhoc:service">`` of a DataLink document."""

    service_id: str
    access_url: str
    standard_id: str = ""
    name: str = ""
    input_params: tuple[str, ...] = ()


@dataclass
class DataLinkDocument:
    """A parsed DataLink response: the rows, and the first descriptor of each service id."""

    rows: list[DataLinkRow]
    services: dict[str, ServiceDescriptor]
    standard_id: str = ""   #: the v1.24+ ``standardID`` INFO ("" on older servers)

    def rows_for(self, product_id):
        """Rows whose ID cell is ``product_id`` (CASDA compares ids case-insensitively)."""
        key = product_id.casefold()
        return [row for row in self.rows if row.id.casefold() == key]


# --- parsing --------------------------------------------------------------------------------

def parse_datalink(content):
    """Parse a CASDA DataLink response.

    Parameters
    ----------
    content : bytes or `~astroquery_casda_ext.documents.Document`
        The body of a ``datalink/links`` response.

    Returns
    -------
    DataLinkDocument
        Every row in document order, and one `ServiceDescriptor` per service id: the
        first meta RESOURCE with that id (CASDA repeats them once per requested id).

    Raises
    ------
    DataLinkError
        The body is not a VOTable, or is CASDA's fault document
        (``QUERY_STATUS=ERROR``, e.g. ``TransientFault: ...``).
    """
    # astropy's warnings (old servers' CHANNEL unit "pixels" is W50) reach the caller, as with
    # astroquery.casda: the user's warning filters decide what is shown
    votable = parse_votable(content, what="reading CASDA's DataLink answer", kind=DataLinkError, warn=True)
    results = next((res for res in votable.resources if res.type == "results" and res.tables), None)
    if results is None:
        message = _query_error(votable) or "the DataLink response has no results table"
        raise DataLinkError(f"DataLink failed: {message}", server_message=message)
    rows = _rows(results.tables[0])
    services = {}
    for resource in votable.resources:
        if resource.type == "meta" and resource.ID and resource.ID not in services:
            services[resource.ID] = _descriptor(resource)
    standard_id = next((info.value for info in results.infos if info.name == "standardID"), "")
    return DataLinkDocument(rows, services, standard_id or "")


def _query_error(votable):
    status, message = query_status(votable)
    return (message or "QUERY_STATUS=ERROR") if status == "ERROR" else None


def _rows(table):
    """DataLinkRows of a parsed VOTable table, by column name (missing columns read as empty)."""
    names = {votable_field.name for votable_field in table.fields}
    columns = {name: table.array[name] if name in names else None for name in _COLUMNS}
    rows = []
    for index in range(len(table.array)):
        cells = {name: _value(column, index) for name, column in columns.items()}
        text = {name: str(value if value is not None else "").strip() for name, value in cells.items()}
        length = cells["content_length"]
        rows.append(DataLinkRow(
            id=text["ID"], access_url=text["access_url"], service_def=text["service_def"],
            error_message=text["error_message"], description=text["description"],
            semantics=text["semantics"], content_type=text["content_type"],
            content_length=None if length is None else int(length), token=text["authenticated_id_token"]))
    return rows


def _value(column, index):
    if column is None or (np.ma.isMaskedArray(column) and np.ma.getmaskarray(column)[index]):
        return None
    value = column[index]
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _descriptor(resource):
    params = {param.name.casefold(): param.value for param in resource.params}
    access_url = params.get("accessurl") or ""   # "accessURL"; the links service says "accessUrl"
    if isinstance(access_url, bytes):
        access_url = access_url.decode()
    inputs = tuple(param.name for group in resource.groups if group.name == "inputParams"
                   for param in group.entries if hasattr(param, "datatype"))
    return ServiceDescriptor(resource.ID, str(access_url).strip(), str(params.get("standardid") or ""),
                             resource.name or "", inputs)


# --- product ids from tables ----------------------------------------------------------------

def product_ids_from_table(table):
    """The CASDA product ids (``obs_publisher_did``) of a table of products.

    Parameters
    ----------
    table : `~astropy.table.Table`, `~astropy.table.Row`, str or list of str
        A table as returned by ``query_region``/SIA2/ObsCore, one row of it, or ids
        (``access_url`` values are accepted in place of ids).

    Returns
    -------
    list of str
        One id per row, in table order: ``obs_publisher_did``, or else the ``ID=`` value
        of ``access_url``.

    Raises
    ------
    InvalidTableError
        The table is empty, has neither column, or a row has no usable value.
    """
    if isinstance(table, str):
        return [_id_from_value(table, 0)]
    if isinstance(table, Row):
        return [_id_from_row(table, 0)]
    if isinstance(table, Table):
        if len(table) == 0:
            raise InvalidTableError("the table of products is empty: nothing to access")
        _require_id_column(table.colnames)
        return [_id_from_row(row, index) for index, row in enumerate(table)]
    try:
        values = list(table)
    except TypeError:
        raise InvalidTableError(f"expected a table of products, a row or product ids, "
                                f"got {type(table).__name__}") from None
    if not values:
        raise InvalidTableError("the list of products is empty: nothing to access")
    return [_id_from_row(value, index) if isinstance(value, Row) else _id_from_value(value, index)
            for index, value in enumerate(values)]


def _require_id_column(colnames):
    if "obs_publisher_did" not in colnames and "access_url" not in colnames:
        raise InvalidTableError(
            "the table needs an 'obs_publisher_did' or an 'access_url' column (as returned by "
            f"query_region or an ObsCore query); it has: {', '.join(colnames) or 'no columns'}")


def _id_from_row(row, index):
    _require_id_column(row.colnames)
    for name in ("obs_publisher_did", "access_url"):
        value = _text(row[name]) if name in row.colnames else ""
        if name == "access_url" and value:
            value = _id_from_access_url(value)
        if value:
            return value
    raise InvalidTableError(f"row {index} has an empty 'obs_publisher_did' and no 'access_url' with "
                            "an ID=: every row needs one of them")


def _id_from_value(value, index):
    text = _text(value)
    if text.lower().startswith(("http://", "https://")):
        text = _id_from_access_url(text)
    if not text:
        raise InvalidTableError(f"product {index} is empty: give an obs_publisher_did such as 'cube-1001'")
    return text


def _id_from_access_url(url):
    query = urlsplit(url).query
    found = next((value.strip() for key, value in parse_qsl(query) if key.upper() == "ID"), "")
    # a link whose query is the bare id (``links?cube-244``) names the product too
    return found or (query.strip() if re.fullmatch(r"[\w.~:-]+", query.strip()) else "")


def _text(value):
    if value is None or value is np.ma.masked or (np.ma.isMaskedArray(value) and np.all(value.mask)):
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return str(value).strip()


# --- HTTP -----------------------------------------------------------------------------------

class DataLinkClient:
    """Get SODA access tokens for CASDA products through the authenticated DataLink.

    Parameters
    ----------
    session : `requests.Session`
        The session to send requests with (shared with the rest of the client).
    datalink_url : str
        The proxy DataLink endpoint, e.g. ``https://data.csiro.au/casda_vo_proxy/vo/datalink/links``.
    auth : callable or `requests.auth.AuthBase` or None
        Either ``auth(url) -> requests auth or None`` (e.g. `~astroquery_casda_ext.credentials.ProxyAuth`)
        or a requests auth object used as is.
    batch_size : int
        Product ids per request (default `DATALINK_BATCH_SIZE`).
    timeout : float
        Seconds to wait for the server to connect and answer.
    """

    def __init__(self, session, datalink_url, *, auth, batch_size=DATALINK_BATCH_SIZE, timeout=30):
        if int(batch_size) < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size!r}")
        self.session = session
        self.datalink_url = datalink_url
        self.auth = auth
        self.batch_size = int(batch_size)
        self.timeout = timeout

    def __repr__(self):
        return f"<DataLinkClient {self.datalink_url} batch_size={self.batch_size}>"

    def tokens_for(self, product_ids, service):
        """Access tokens of ``service`` for each product the user may access.

        Parameters
        ----------
        product_ids : iterable of str
            Product ids (``obs_publisher_did``); duplicates are sent once.
        service : str
            One of `SERVICES`.  For ``async_service`` the Web staging token is used,
            never the Pawsey-internal one.

        Returns
        -------
        AccessReport
            Tokens in the order of ``product_ids``; refused products with the server's message.

        Warns
        -----
        AccessDeniedWarning
            When some (not all) products were refused.

        Raises
        ------
        NoAccessError
            None of the products can be accessed; ``denied`` has the server's reasons.
        NotLoggedInError
            DataLink answered as to an anonymous user (no tokens at all).
        CasdaLoginError
            The proxy rejected the credentials (HTTP 401).
        DataLinkError
            Any other HTTP error, a fault document, or no connection.
        """
        if service not in SERVICES:
            raise InvalidInputError(f"unknown DataLink service {service!r}; use one of {', '.join(SERVICES)}")
        ids = _unique(product_ids)
        tokens, denied, anonymous = [], {}, set()
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start:start + self.batch_size]
            document = parse_datalink(self._fetch(batch))
            batch_tokens, batch_denied = _select(document, batch, service)
            tokens += batch_tokens
            denied.update(batch_denied)
            anonymous.update(pid for pid in batch_denied if _offers_only_login(document, pid))
        return self._report(ids, tokens, denied, anonymous)

    def _report(self, ids, tokens, denied, anonymous):
        if ids and not tokens:
            if anonymous and anonymous == set(denied):
                raise NotLoggedInError("DataLink answered as to an anonymous user (only 'Authenticated "
                                       "Data Link' rows, no tokens): log in to CASDA first")
            raise NoAccessError(f"You do not have access to any of the requested data files. None of the "
                                f"{len(ids)} requested products can be accessed: {_describe(denied)}", denied)
        if denied:
            warnings.warn(f"skipping {len(denied)} of {len(ids)} products: {_describe(denied)}",
                          AccessDeniedWarning, stacklevel=3)
        return AccessReport(tokens, denied)

    def _fetch(self, batch):
        # the ids go in the URL itself, as in the access_url links astroquery.casda GETs
        url = f"{self.datalink_url}?{urlencode([('ID', pid) for pid in batch])}"
        return fetch(self.session, "GET", url, what="DataLink request", kind=DataLinkError,
                     auth=self._auth_for(url), timeout=self.timeout)

    def _auth_for(self, url):
        if self.auth is None or isinstance(self.auth, requests.auth.AuthBase):
            return self.auth
        return self.auth(url)


def _unique(product_ids):
    if isinstance(product_ids, str):
        product_ids = [product_ids]
    seen, ids = set(), []
    for value in product_ids:
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(f"product ids must be non-empty strings, got {value!r}")
        key = value.strip().casefold()
        if key not in seen:
            seen.add(key)
            ids.append(value.strip())
    return ids


def _describe(denied, most=5):
    parts = [f"{pid} ({message})" for pid, message in list(denied.items())[:most]]
    more = f" and {len(denied) - most} more" if len(denied) > most else ""
    return "; ".join(parts) + more


# --- choosing rows --------------------------------------------------------------------------

def _select(document, batch, service):
    """Tokens and refusals for one batch (see `DataLinkClient.tokens_for`)."""
    tokens, denied, without_rows = [], {}, []
    for pid in batch:
        rows = document.rows_for(pid)
        if not rows:
            without_rows.append(pid)
            continue
        row, refusal = _pick(rows, service)
        if row is None:
            denied[pid] = refusal
        else:
            tokens.append(_token(document, pid, service, row))
    # CASDA's "no permission" row carries the *user* id, not the product id, so refusals
    # that name no requested product belong, in order, to the products that got no rows.
    requested = {pid.casefold() for pid in batch}
    orphans = [row.error_message for row in document.rows
               if row.is_error and row.id.casefold() not in requested]
    for index, pid in enumerate(without_rows):
        denied[pid] = orphans[index] if index < len(orphans) else "DataLink returned nothing for this product"
    return tokens, denied


def _pick(rows, service):
    """The row holding the token for ``service`` or, failing that, why there is none."""
    if service == "async_service":
        web = [row for row in rows if row.description == WEB_ASYNC_DESCRIPTION]
        candidates = web or [row for row in rows if row.service_def == service and "pawsey" not in
                             row.description.lower()]
    else:
        candidates = [row for row in rows if row.service_def == service or
                      (row.is_error and _service_of_description(row.description) == service)]
    for row in candidates:
        if row.is_error:
            return None, row.error_message
        if row.service_def == service and row.token:
            return row, None
    errors = [row.error_message for row in rows if row.is_error]
    if errors:
        return None, errors[0]
    if any(row.description == AUTHENTICATED_LINK_DESCRIPTION for row in rows):
        return None, "not authenticated: DataLink offered only its 'Authenticated Data Link'"
    return None, f"CASDA offers no {service} for this product"


def _service_of_description(description):
    text = description.lower()
    if "cut-out" in text or "cutout" in text:
        return "cutout_service"
    if "spectrum generation" in text:
        return "spectrum_generation_service"
    return None


def _offers_only_login(document, pid):
    rows = document.rows_for(pid)
    return bool(rows) and all(row.description == AUTHENTICATED_LINK_DESCRIPTION for row in rows)


def _token(document, pid, service, row):
    descriptor = document.services.get(service)
    if descriptor is None or not descriptor.access_url:
        raise DataLinkError(f"DataLink offered a {service} token for {pid} but no {service} "
                            "descriptor with an accessURL")
    return AccessToken(product_id=pid, service=service, service_url=descriptor.access_url, token=row.token,
                       content_length=row.content_length, content_type=row.content_type or None)
