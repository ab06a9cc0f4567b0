"""Finding data: SIA2 payloads and results, TAP queries, ADQL helpers.

`Discovery` takes the façade's `requests.Session`, its `~astroquery_casda_ext.endpoints.Endpoints`
and an optional ``auth(url)`` callable (`~astroquery_casda_ext.credentials.ProxyAuth`).
Every argument is validated (by `~astroquery_casda_ext.regions`) before anything is sent;
CASDA's answers become astropy Tables, ``QUERY_STATUS=ERROR`` becomes
`~astroquery_casda_ext.errors.QueryError` with the server's words, and ``OVERFLOW``
becomes astroquery's `~astroquery.exceptions.MaxResultsWarning`.

SIA2 answers are fetched and parsed by `~astroquery_casda_ext.documents` (bounded in bytes and
time, parser failures mapped); `parse_sia2` is a pure function of bytes, testable on recorded
CASDA responses; TAP queries go through the TAP package's one entry point
(``tap.TapClient.query``).
"""
import re
import time as _time

import numpy as np
from astropy import units as u
from astropy.table import Row
from astropy.time import Time
from pyvo.dal.tap import escape

from .credentials import AuthSession
from .documents import fetch
from .errors import InvalidInputError, InvalidTableError, NotLoggedInError
from .tap import TapClient
from .tap.rows import answer_table
from .regions import (SIA2_POL_STATES, band_string, format_number, make_regions, parse_band,
                      parse_coordinates, parse_pol, parse_radius)

__all__ = ["Discovery", "parse_sia2", "SIA2_DATAPRODUCT_TYPES"]


#: The only values CASDA's SIA2 accepts for ``DPTYPE`` (2-D images are ``cube`` too).
SIA2_DATAPRODUCT_TYPES = ("image", "cube")
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


# --- small validators -------------------------------------------------------------------------

def _put(payload, key, values):
    """Store one value as a string and several as a list (repeated parameters, OR-ed by CASDA)."""
    if len(values) == 1:
        payload[key] = values[0]
    elif values:
        payload[key] = list(values)


def _strings(value, name):
    """A non-empty list of non-empty strings from a string or a sequence of them."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, np.ndarray)) or not len(items) \
            or not all(isinstance(item, str) and item.strip() for item in items):
        raise InvalidInputError(f"{name} {value!r} must be a non-empty string or a list of them")
    return [item.strip() for item in items]


def _positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} {value!r} must be a positive integer")
    return int(value)


def _sbid(value):
    """A scheduling block id: a positive integer, or a string of digits."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return _positive_int(value, "sbid")


def _dataproduct_types(value):
    types = [item.lower() for item in _strings(value, "dataproduct_type")]
    bad = [item for item in types if item not in SIA2_DATAPRODUCT_TYPES]
    if bad:
        raise InvalidInputError(f"dataproduct_type {bad[0]!r} is not accepted by CASDA's SIA2: choose "
                                "'image' or 'cube' (CASDA labels 2-D images 'cube' as well)")
    return types


def _mjd(value, name):
    """A time as MJD: an astropy Time, an ISO string or an MJD number."""
    try:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            mjd = float(value)
        elif isinstance(value, (str, Time)):
            mjd = float(Time(value).mjd)
        else:
            raise TypeError
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} {value!r} is not a time: give an astropy Time, an ISO string "
                                "('2023-01-31T12:00:00') or an MJD number") from None
    if not np.isfinite(mjd):
        raise InvalidInputError(f"{name} {value!r} is not a finite time")
    return mjd


def _time_string(value):
    """CASDA's ``TIME`` value: ``'mjd'`` or ``'mjd1 mjd2'`` (no ISO dates, no open ends)."""
    pair = isinstance(value, (list, tuple)) or (isinstance(value, (Time, np.ndarray)) and value.shape == (2,))
    if not pair:
        return format_number(_mjd(value, "time"))
    if len(value) != 2 or any(bound is None for bound in value):
        raise InvalidInputError(f"time {value!r} must be one time or a (start, end) pair; "
                                "CASDA's TIME has no open ends")
    start, end = _mjd(value[0], "time start"), _mjd(value[1], "time end")
    if start > end:
        raise InvalidInputError(f"time {value!r}: the start is after the end")
    return f"{format_number(start)} {format_number(end)}"


def _adql_string(value):
    return "'" + escape(str(value)) + "'"


def _adql_in(column, values, name):
    return f"{column} IN ({', '.join(_adql_string(item) for item in _strings(values, name))})"


def _flux_mjy(value):
    """A flux threshold in mJy (or mJy/beam): a number in mJy or a Quantity."""
    try:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            flux = float(value)
        else:
            quantity = u.Quantity(value)
            if quantity.unit.is_equivalent(u.mJy / u.beam):
                quantity = quantity * u.beam
            flux = float(quantity.to_value(u.mJy))
    except (TypeError, ValueError, u.UnitsError):
        raise InvalidInputError(f"flux_min {value!r} must be a number of mJy or a flux Quantity "
                                "(e.g. 0.5 * u.Jy)") from None
    if not np.isfinite(flux):
        raise InvalidInputError(f"flux_min {value!r} is not finite")
    return flux


def _adql_region(s_region):
    """An ADQL geometry from an ObsCore ``s_region`` ('POLYGON ICRS ra dec ...').

    Every number is re-written by `format_number`, so nothing from the string other than
    validated numbers reaches the query.
    """
    tokens = str(s_region).split()
    shape = tokens[0].upper() if tokens else ""
    numbers_ = tokens[2:] if len(tokens) > 1 and not _is_number(tokens[1]) else tokens[1:]
    if shape not in ("POLYGON", "CIRCLE") or not all(_is_number(t) for t in numbers_) \
            or (shape == "POLYGON" and (len(numbers_) < 6 or len(numbers_) % 2)) \
            or (shape == "CIRCLE" and len(numbers_) != 3):
        raise InvalidInputError(f"cannot use the image footprint {s_region!r}: expected "
                                "'POLYGON ICRS ra dec ...' or 'CIRCLE ICRS ra dec r'")
    return f"{shape}('ICRS', {', '.join(format_number(float(t)) for t in numbers_)})"


def _point(coordinates):
    """``'ra, dec'`` in ICRS degrees for an ADQL POINT or CIRCLE."""
    coord = parse_coordinates(coordinates)
    return f"{format_number(coord.ra.deg)}, {format_number(coord.dec.deg)}"


def _is_number(text):
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False


# --- documents --------------------------------------------------------------------------------

def _filter_subtypes(table, subtypes):
    wanted = {item.lower() for item in _strings(subtypes, "dataproduct_subtype")}
    if "dataproduct_subtype" not in table.colnames:
        raise InvalidTableError("the result has no dataproduct_subtype column to filter on")
    column = table["dataproduct_subtype"]
    values = column.filled("") if hasattr(column, "filled") else column
    return table[np.array([str(value).lower() in wanted for value in values], dtype=bool)]


def parse_sia2(content, *, dataproduct_subtype=None):
    """An astropy Table from a CASDA SIA2 response.

    Columns are CASDA's, selected by name: a leading ``distance`` column (degrees from
    the search position) is present for single-cone queries, ``filename`` and ObsCore 1.1
    columns on newer servers.  ``s_ra``/``s_dec`` are in degrees.

    Parameters
    ----------
    content : bytes or str
        The body of a ``sia2/query`` response.
    dataproduct_subtype : str or list of str, optional
        Keep only rows of these subtypes (e.g. ``'cont.restored.t0'``).  CASDA's SIA2 has
        no parameter for this, so the filter runs here, after the query.

    Raises
    ------
    QueryError
        ``QUERY_STATUS=ERROR`` (CASDA answers errors with HTTP 200); carries the server's text.
    ServiceError
        The body is not a VOTable, or has no result table.

    Warns
    -----
    MaxResultsWarning
        The result was truncated (``QUERY_STATUS=OVERFLOW``).
    """
    table = _votable_table(content, "SIA2")
    return table if dataproduct_subtype is None else _filter_subtypes(table, dataproduct_subtype)


def _votable_table(content, service):
    return answer_table(content.encode() if isinstance(content, str) else content, service,
                        what=f"CASDA's {service} answer")


class Discovery:
    """SIA2 and TAP searches of CASDA, and ADQL helpers for its common questions.

    Parameters
    ----------
    session : requests.Session
        Shared with the rest of the client; never given credentials.
    endpoints : Endpoints
        Where the anonymous VO tools and the OPAL proxy live.
    auth : callable, optional
        ``auth(url)`` -> requests auth object or None (`ProxyAuth`); needed for
        ``authenticated=True`` queries, which go to the proxy and also see embargoed rows
        of the user's projects.
    timeout : float
        Seconds to wait for CASDA to connect and answer each request.
    sleep, clock : callable
        Injected so that tests of the async wait run without waiting.
    """

    #: First pause in seconds before looking at an async TAP job again.
    tap_poll_first = 0.2
    #: Longest pause between two looks at an async TAP job.
    tap_poll_cap = 5.0
    #: Seconds to wait for an async TAP job (CASDA's own async limit is 10 hours).
    tap_async_timeout = 36000.0

    def __init__(self, session, endpoints, *, auth=None, timeout=30, sleep=_time.sleep,
                 clock=_time.monotonic):
        self._session = session
        self.endpoints = endpoints
        self._auth = auth
        self.timeout = timeout
        self._sleep = sleep
        self._clock = clock

    # --- SIA2 -----------------------------------------------------------------------------

    def sia2_payload(self, coordinates=None, *, radius=None, width=None, height=None, polygon=None,
                     band=None, rest_frequency=None, time=None, pol=None, collection=None,
                     dataproduct_type=None, maxrec=None):
        """The SIA2 request parameters, validated, as astroquery's ``get_query_payload=True`` returns them.

        Parameters
        ----------
        coordinates : optional
            One or many positions (`regions.parse_positions`); several give several ``POS``
            values, which CASDA ORs.
        radius : str, Quantity or number (degrees), optional
            Cone radius, default 1 arcmin, at most 10 degrees.
        width, height : optional
            Together: boxes instead of cones (`regions.Box`; one crossing RA 0 becomes two
            ``RANGE`` values).
        polygon : optional
            One polygon (>= 3 vertices) instead of coordinates.
        band : (low, high), optional
            Wavelengths, frequencies or velocities (`regions.parse_band`); None = open end.
        rest_frequency : Quantity, optional
            Needed when ``band`` is in velocities.
        time : Time, str or number, or a (start, end) pair of them, optional
            Sent as MJD (CASDA accepts nothing else).  A pair selects observations entirely
            inside it; one value those containing it.
        pol : str or list of str, optional
            ``I Q U V RR LL RL LR XX YY XY YX POLI POLA``.
        collection : str or list of str, optional
            Project short names, e.g. ``'The Rapid ASKAP Continuum Survey'`` (exact match).
        dataproduct_type : {'image', 'cube'} or a list, optional
            CASDA marks 2-D images as ``'cube'`` too.
        maxrec : int, optional
            Most rows to return.

        Returns
        -------
        dict
            ``{'POS': 'CIRCLE 333.9 -45.8 0.0166666667', ...}``; a parameter with several
            values holds a list.

        Raises
        ------
        InvalidInputError
            (or its subclasses InvalidRegionError, InvalidSpectralRangeError) for any bad value.
        """
        payload = {}
        regions = make_regions(coordinates, radius=radius, width=width, height=height, polygon=polygon)
        _put(payload, "POS", [value for region in regions for value in region.sia2_values()])
        if band is not None:
            payload["BAND"] = band_string(*parse_band(band, rest_frequency=rest_frequency))
        elif rest_frequency is not None:
            raise InvalidInputError("rest_frequency is only used with a band in velocities")
        if time is not None:
            payload["TIME"] = _time_string(time)
        if pol is not None:
            _put(payload, "POL", parse_pol(pol, allowed=SIA2_POL_STATES))
        if collection is not None:
            _put(payload, "COLLECTION", _strings(collection, "collection"))
        if dataproduct_type is not None:
            _put(payload, "DPTYPE", _dataproduct_types(dataproduct_type))
        if maxrec is not None:
            payload["MAXREC"] = str(_positive_int(maxrec, "maxrec"))
        return payload

    def parse_sia2(self, content, *, dataproduct_subtype=None):
        """See the module function `parse_sia2`."""
        return parse_sia2(content, dataproduct_subtype=dataproduct_subtype)

    def query_sia2(self, payload, *, authenticated=False, dataproduct_subtype=None):
        """Send a `sia2_payload` to CASDA and return the parsed Table.

        ``authenticated=True`` asks the OPAL proxy, which needs ``auth``.
        """
        url = self.endpoints.proxy_sia2_url if authenticated else self.endpoints.sia2_url
        document = fetch(self._session_for(authenticated), "GET", url, what="CASDA SIA2 query", table=True,
                         params=payload, timeout=self.timeout)
        table = answer_table(document.content, "SIA2", url=url)
        return table if dataproduct_subtype is None else _filter_subtypes(table, dataproduct_subtype)

    # --- TAP ------------------------------------------------------------------------------

    def _auth_for(self, authenticated):
        if not authenticated:
            return None
        if self._auth is None:
            raise NotLoggedInError("an authenticated query needs an OPAL login: call Casda.login() first")
        return self._auth

    def _session_for(self, authenticated):
        """The session (credentials only for the OPAL proxy, per URL) of anonymous or proxy requests."""
        return AuthSession(self._session, self._auth_for(authenticated))

    def tap_url(self, authenticated):
        """The TAP base URL: the anonymous VO tools' or the OPAL proxy's."""
        return self.endpoints.proxy_tap_url if authenticated else self.endpoints.tap_url

    def tap(self, query, *, async_job=False, maxrec=None, authenticated=False):
        """Run an ADQL query on CASDA's TAP service.

        Parameters
        ----------
        query : str
            ADQL (CASDA's TAP speaks ADQL 2.0).
        async_job : bool
            Run as a UWS job (for queries longer than the 20 s sync limit).
        maxrec : int, optional
            Most rows to return.
        authenticated : bool
            Ask through the OPAL proxy (needs ``auth``): embargoed rows of the user's
            projects become visible.

        Returns
        -------
        `~astropy.table.Table`

        Raises
        ------
        QueryError
            CASDA rejected or could not run the query (its message is kept).
        CasdaLoginError
            The proxy rejected the credentials.
        ServiceError
            Any other failure to talk to CASDA (its message and the URL are kept).
        JobTimeoutError
            An async job did not finish within ``tap_async_timeout``.

        Warns
        -----
        MaxResultsWarning
            The result was truncated.
        """
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError(f"query {query!r} must be a non-empty ADQL string")
        maxrec = None if maxrec is None else _positive_int(maxrec, "maxrec")
        return self.tap_client(bool(authenticated)).query(query, maxrec=maxrec, async_job=async_job)

    def tap_client(self, authenticated):
        """The `~astroquery_casda_ext.tap.TapClient` (the one TAP entry point) of the anonymous
        or the proxy TAP, with this object's timeout, async poll policy and clock."""
        return TapClient(self._session_for(authenticated), self.tap_url(authenticated), timeout=self.timeout,
                         poll_first=self.tap_poll_first, poll_cap=self.tap_poll_cap,
                         job_timeout=self.tap_async_timeout, sleep=self._sleep, clock=self._clock)

    # --- ADQL helpers ---------------------------------------------------------------------

    def _select(self, table, conditions, *, order_by=None, maxrec=None, authenticated=False):
        query = f"SELECT * FROM {table} WHERE " + " AND ".join(conditions)
        if order_by:
            query += f" ORDER BY {order_by}"
        return self.tap(query, maxrec=maxrec, authenticated=authenticated)

    def list_tables(self, *, authenticated=False):
        """Every table CASDA's TAP service offers (``TAP_SCHEMA.tables``)."""
        return self.tap("SELECT * FROM TAP_SCHEMA.tables ORDER BY table_name", authenticated=authenticated)

    def columns(self, table_name, *, authenticated=False):
        """The columns of one table (``TAP_SCHEMA.columns``): names, units, UCDs, descriptions.

        Raises
        ------
        InvalidInputError
            The name is not ``schema.table`` (checked before sending) or CASDA has no such table.
        """
        if not isinstance(table_name, str) or not _TABLE_NAME.fullmatch(table_name):
            raise InvalidInputError(f"table_name {table_name!r} must look like 'schema.table', "
                                    "e.g. 'casda.continuum_component'")
        table = self.tap(f"SELECT * FROM TAP_SCHEMA.columns WHERE table_name = {_adql_string(table_name)}",
                         authenticated=authenticated)
        if not len(table):
            raise InvalidInputError(f"CASDA has no table {table_name!r}; list_tables() shows those it has")
        return table

    def images_of_sbid(self, sbid, *, subtypes=None, dataproduct_types=("cube",), authenticated=False):
        """ObsCore rows of one scheduling block's images and cubes.

        Parameters
        ----------
        sbid : int or str of digits
            The scheduling block id (ObsCore ``obs_id``).
        subtypes : str or list of str, optional
            ``dataproduct_subtype`` values, e.g. ``'cont.restored.t0'``, ``'spectral.restored.3d'``.
        dataproduct_types : str or list of str or None
            Default ``('cube',)``: CASDA files 2-D images as cubes.  None = every type.
        """
        conditions = [f"obs_id = {_adql_string(_sbid(sbid))}"]
        if dataproduct_types is not None:
            conditions.append(_adql_in("dataproduct_type", dataproduct_types, "dataproduct_types"))
        if subtypes is not None:
            conditions.append(_adql_in("dataproduct_subtype", subtypes, "subtypes"))
        return self._select("ivoa.obscore", conditions, order_by="obs_publisher_did",
                            authenticated=authenticated)

    def components(self, *, sbid=None, image=None, flux_min=None, maxrec=None, authenticated=False):
        """Continuum components (``casda.continuum_component``), brightest first.

        Parameters
        ----------
        sbid : int, optional
            Components of this scheduling block (``first_sbid``).
        image : ObsCore Row or product id (e.g. ``'cube-1001'``), optional
            Components inside the image's footprint (its ``s_region``).
        flux_min : number (mJy) or Quantity, optional
            Keep components with ``flux_peak`` (mJy/beam) above this.
        maxrec : int, optional
            Most rows to return.

        Raises
        ------
        InvalidInputError
            Neither ``sbid`` nor ``image`` given (the whole catalogue is millions of rows),
            or an unknown image.
        """
        conditions = []
        if sbid is not None:
            conditions.append(f"first_sbid = {_sbid(sbid)}")
        if image is not None:
            region = _adql_region(self._footprint(image, authenticated))
            conditions.append(f"CONTAINS(POINT('ICRS', ra_deg_cont, dec_deg_cont), {region}) = 1")
        if not conditions:
            raise InvalidInputError("components() needs sbid= or image=: the whole catalogue is too big")
        if flux_min is not None:
            conditions.append(f"flux_peak > {format_number(_flux_mjy(flux_min))}")
        return self._select("casda.continuum_component", conditions, order_by="flux_peak DESC",
                            maxrec=maxrec, authenticated=authenticated)

    def _footprint(self, image, authenticated):
        if isinstance(image, Row) or (hasattr(image, "keys") and "s_region" in image.keys()):
            return image["s_region"]
        if not isinstance(image, str) or not image.strip():
            raise InvalidInputError(f"image {image!r} must be an ObsCore row or a product id "
                                    "like 'cube-1001'")
        rows = self.tap("SELECT s_region FROM ivoa.obscore WHERE obs_publisher_did = "
                        f"{_adql_string(image.strip())}", authenticated=authenticated)
        if not len(rows):
            raise InvalidInputError(f"CASDA has no product {image!r}")
        return rows["s_region"][0]

    def products_containing(self, coordinates, *, collection=None, dataproduct_type=None,
                            authenticated=False):
        """ObsCore rows whose footprint (``s_region``) contains a position.

        ``dataproduct_type`` may be any ObsCore value here (``'cube'``, ``'visibility'``,
        ``'spectrum'``...), unlike SIA2.
        """
        conditions = [f"CONTAINS(POINT('ICRS', {_point(coordinates)}), s_region) = 1"]
        if collection is not None:
            conditions.append(_adql_in("obs_collection", collection, "collection"))
        if dataproduct_type is not None:
            conditions.append(_adql_in("dataproduct_type", dataproduct_type, "dataproduct_type"))
        return self._select("ivoa.obscore", conditions, order_by="obs_publisher_did",
                            authenticated=authenticated)

    def images_in_interval(self, coordinates, start, end, *, radius=None, collection=None, subtypes=None,
                           authenticated=False):
        """Images and cubes at a position observed entirely between ``start`` and ``end``, by time.

        Parameters
        ----------
        coordinates
            One position.
        start, end : Time, ISO string or MJD number
            ``t_min >= start`` and ``t_max <= end``.
        radius : optional
            Footprints intersecting this cone; default: footprints containing the position.
        collection, subtypes : str or list of str, optional
            Exact ``obs_collection`` / ``dataproduct_subtype`` values.

        Returns
        -------
        `~astropy.table.Table`
            Sorted by ``t_min`` (a light curve's order).
        """
        point = _point(coordinates)
        t_start, t_end = _mjd(start, "start"), _mjd(end, "end")
        if t_start > t_end:
            raise InvalidInputError(f"start {start!r} is after end {end!r}")
        if radius is None:
            where = f"CONTAINS(POINT('ICRS', {point}), s_region) = 1"
        else:
            radius_deg = format_number(parse_radius(radius).value)
            where = f"INTERSECTS(CIRCLE('ICRS', {point}, {radius_deg}), s_region) = 1"
        conditions = [where, "dataproduct_type IN ('cube', 'image')",
                      f"t_min >= {format_number(t_start)}", f"t_max <= {format_number(t_end)}"]
        if collection is not None:
            conditions.append(_adql_in("obs_collection", collection, "collection"))
        if subtypes is not None:
            conditions.append(_adql_in("dataproduct_subtype", subtypes, "subtypes"))
        return self._select("ivoa.obscore", conditions, order_by="t_min", authenticated=authenticated)
