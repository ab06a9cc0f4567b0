"""User input -> validated positions, regions and spectral ranges, in CASDA's own syntax.

Everything here is pure: no HTTP, no name resolution.  Every function raises one of
`~astroquery_casda_ext.errors.InvalidRegionError`,
`~astroquery_casda_ext.errors.InvalidSpectralRangeError` or
`~astroquery_casda_ext.errors.InvalidSourceListError` (all ``ValueError`` subclasses) with
the offending value in the message, so nothing malformed ever reaches CASDA.

CASDA's SIA2 validator accepts numbers only in fixed-point form (``[+-]?\\d+(\\.\\d+)?``,
single spaces), so a position at Dec 0 written by ``str()`` (``2.3e-06``) is rejected
with a UsageFault.  `format_number` is the one place numbers are written.
"""
import math
import numbers
import os
import pathlib
import re
import warnings
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord, UnitSphericalRepresentation
from astropy.table import Row, Table

from .errors import (InvalidRegionError, InvalidSourceListError, InvalidSpectralRangeError,
                     NameResolverUnavailableError)

__all__ = [
    "MAX_RADIUS_DEG", "DEFAULT_RADIUS", "STOKES", "SIA2_POL_STATES",
    "format_number", "parse_coordinates", "parse_positions", "read_source_list", "parse_radius",
    "Region", "Circle", "Box", "Polygon", "make_regions",
    "parse_band", "band_string", "parse_channel", "parse_pol", "footprint_contains",
]

#: CASDA's largest radius, in degrees, for SIA2 ``POS`` circles and SODA cutouts.
MAX_RADIUS_DEG = 10.0
#: The radius used when only coordinates are given (as ``astroquery.casda``).
DEFAULT_RADIUS = 1 * u.arcmin
#: Polarisations SODA cutouts can select (CASDA's cubes carry Stokes axes).
STOKES = ("I", "Q", "U", "V")
#: Polarisation states CASDA's SIA2 ``POL`` accepts.
SIA2_POL_STATES = STOKES + ("RR", "LL", "RL", "LR", "XX", "YY", "XY", "YX", "POLI", "POLA")

_COORDINATE_FORMS = (
    "a string such as '22h15m38.2s -45d50m30.5s', '22:15:38.2 -45:50:30.5' (RA in hours) or "
    "'333.9 -45.8' (degrees), a SkyCoord, or an (ra, dec) pair of numbers (degrees) or angles")
# Column pairs read from a table of positions, matched case-insensitively, first match wins.
_RA_DEC_COLUMNS = (("ra", "dec"), ("s_ra", "s_dec"), ("ra_deg_cont", "dec_deg_cont"),
                   ("raj2000", "dej2000"))
_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def format_number(x, *, decimals=10):
    """Write ``x`` the way CASDA's parameter validators accept it.

    Fixed point, at most ``decimals`` decimal places, trailing zeros stripped, never an
    exponent: ``0.0`` -> ``'0'``, ``-2.3e-6`` -> ``'-0.0000023'``, ``12.5`` -> ``'12.5'``.

    Raises
    ------
    ValueError
        If ``x`` is not a finite number.
    """
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"cannot send {x!r} to CASDA: it needs a finite number")
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# --- positions --------------------------------------------------------------------------------

def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _degrees(ra, dec, original):
    """An ICRS SkyCoord from ra/dec in degrees, after CASDA's range checks."""
    if not (math.isfinite(ra) and math.isfinite(dec)):
        raise InvalidRegionError(f"coordinates {original!r} are not finite numbers")
    if not 0.0 <= ra <= 360.0:
        raise InvalidRegionError(f"RA {ra!r} in {original!r} is outside [0, 360] degrees")
    if not -90.0 <= dec <= 90.0:
        raise InvalidRegionError(f"Dec {dec!r} in {original!r} is outside [-90, 90] degrees")
    return SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")


def _icrs(coord, original):
    """``coord`` as a plain ICRS SkyCoord (no distance, no other frame attributes)."""
    try:
        icrs = coord.transform_to("icrs")
    except Exception as exc:  # astropy raises many types for frames it cannot convert
        raise InvalidRegionError(f"cannot convert {original!r} to ICRS: {exc}") from None
    return SkyCoord(icrs.ra, icrs.dec, frame="icrs")


def _cannot_parse(value):
    hint = ""
    return f"cannot read coordinates from {value!r}; give {_COORDINATE_FORMS}.{hint}"


def _coord_from_tokens(ra_text, dec_text, original):
    """One position from an RA and a Dec written as text (CASDA sample scripts' rules)."""
    if _FLOAT.fullmatch(ra_text) and _FLOAT.fullmatch(dec_text):
        return _degrees(float(ra_text), float(dec_text), original)
    # Sexagesimal RA with ':' or 'h' (or space-separated fields) is in hours, as in casda-samples.
    hours = ":" in ra_text or "h" in ra_text.lower() or " " in ra_text.strip()
    try:
        return SkyCoord(ra_text, dec_text, unit=(u.hourangle if hours else u.deg, u.deg), frame="icrs")
    except (ValueError, TypeError, u.UnitsError):
        raise InvalidRegionError(_cannot_parse(original)) from None


def _coord_from_string(text):
    tokens = text.replace(",", " ").split()
    try:
        if len(tokens) == 2:
            return _coord_from_tokens(tokens[0], tokens[1], text)
        if len(tokens) == 6:       # "hh mm ss dd mm ss"
            return _coord_from_tokens(" ".join(tokens[:3]), " ".join(tokens[3:]), text)
    except InvalidRegionError:
        if not _looks_like_name(text):
            raise
        return _resolve_name(text)
    try:                       # anything else astropy understands with units written in it
        return _icrs(SkyCoord(" ".join(tokens)), text)
    except (ValueError, TypeError, u.UnitsError, IndexError):
        pass
    return _resolve_name(text)


def _resolve_name(text):
    """An object name ("M31", "NGC 253"), resolved as astroquery does (`commons.parse_coordinates`)."""
    if not _looks_like_name(text):
        raise InvalidRegionError(_cannot_parse(text))    # numbers that did not parse: not a name
    from astropy.coordinates.name_resolve import NameResolveError
    from astroquery.exceptions import InputWarning
    from astroquery.utils import commons
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)   # "interpreted as ICRS": we say so ourselves
        try:
            coord = commons.parse_coordinates(text)
        except (NameResolveError, ValueError, TypeError, u.UnitsError, OSError) as exc:
            if _resolver_unreachable(exc):
                raise NameResolverUnavailableError(
                    f"cannot resolve {text!r}: the name resolver (Sesame) did not answer "
                    f"({_first_line(exc)}); "
                    f"give the position as coordinates ({_COORDINATE_FORMS}), or an object name Sesame "
                    "knows once it can be reached") from None
            raise InvalidRegionError(f"{_cannot_parse(text)[:-1]}, or an object name Sesame knows "
                                     f"(resolving {text!r} failed: {_first_line(exc)})") from None
    return _icrs(coord, text)


def _resolver_unreachable(exc):
    """Whether a name lookup failed for want of a network, not because the name is unknown."""
    return isinstance(exc, OSError) or "queries failed" in str(exc) or "Unable to retrieve" in str(exc)


def _looks_like_name(text):
    """Letters other than those of sexagesimal units (h m s d): worth asking the resolver."""
    return bool(re.search(r"[A-Za-z]", text)) and not re.fullmatch(r"[\d\s.:,+\-hdms°'\"]+", text)


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _coord_from_pair(ra, dec, original):
    if _is_real(ra) and _is_real(dec):
        return _degrees(float(ra), float(dec), original)
    if isinstance(ra, u.Quantity) and isinstance(dec, u.Quantity):
        try:
            return _degrees(ra.to_value(u.deg), dec.to_value(u.deg), original)
        except (u.UnitsError, TypeError):
            raise InvalidRegionError(f"{original!r}: RA and Dec must be angles") from None
    if isinstance(ra, str) and isinstance(dec, str):
        return _coord_from_tokens(ra.strip(), dec.strip(), original)
    raise InvalidRegionError(_cannot_parse(original))


def _is_number_or_angle(value):
    return _is_real(value) or (isinstance(value, u.Quantity) and value.isscalar)


def _is_pair(value, *, text=True):
    """Whether ``value`` is one (ra, dec) pair: two numbers or angles (or, if ``text``, strings)."""
    if not isinstance(value, (tuple, list, np.ndarray)) or len(value) != 2:
        return False
    return all(_is_number_or_angle(x) or (text and isinstance(x, str)) for x in value)


def parse_coordinates(value):
    """One position, as an ICRS `~astropy.coordinates.SkyCoord`.

    Parameters
    ----------
    value : str, `~astropy.coordinates.SkyCoord` or (ra, dec)
        A string astropy can parse: units written in it (``'22h15m38.2s -45d50m30.5s'``),
        colon or space separated sexagesimal with RA in hours (``'22:15:38.2 -45:50:30.5'``),
        or decimal degrees (``'333.9 -45.8'``, ``'333.9, -45.8'``); a scalar SkyCoord in any
        frame (converted to ICRS); or an ``(ra, dec)`` pair of numbers (degrees), angle
        Quantities or strings.  Any other string is taken for an object name and resolved as
        astroquery does (``commons.parse_coordinates``: Sesame, which needs the network).

    Raises
    ------
    InvalidRegionError
        If the value cannot be read, or RA/Dec are outside [0, 360] / [-90, 90] degrees.
    """
    if isinstance(value, SkyCoord):
        if not value.isscalar:
            raise InvalidRegionError(f"expected one position, got a SkyCoord of {value.size}; "
                                     "pass positions one by one or use parse_positions()")
        return _icrs(value, value)
    if isinstance(value, str):
        return _coord_from_string(value)
    if _is_pair(value):
        return _coord_from_pair(value[0], value[1], value)
    raise InvalidRegionError(_cannot_parse(value))


def _validated_arrays(ra, dec, what):
    """An ICRS SkyCoord array from degree arrays, naming the first bad entry."""
    ra, dec = np.asarray(ra, dtype=float).ravel(), np.asarray(dec, dtype=float).ravel()
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra <= 360) & (dec >= -90) & (dec <= 90))
    if bad.any():
        index = int(np.argmax(bad))
        shown = f"ra={float(ra[index])!r}, dec={float(dec[index])!r}"
        raise InvalidRegionError(f"{what}: position {index} ({shown}) is not in RA [0, 360], "
                                 "Dec [-90, 90] degrees")
    return SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")


def _column_degrees(column, name):
    """Degrees from a table column: its unit if it has one, else degrees."""
    if getattr(column, "mask", None) is not None and np.any(column.mask):
        raise InvalidRegionError(f"column {name!r} has empty (masked) values")
    if column.dtype.kind in "US":
        raise InvalidRegionError(f"column {name!r} holds text; give decimal degrees")
    if column.unit is None:
        return np.asarray(column, dtype=float)
    try:
        return u.Quantity(column).to_value(u.deg)
    except u.UnitsError:
        raise InvalidRegionError(f"column {name!r} has unit {column.unit}, not an angle") from None


def _positions_from_table(table):
    if isinstance(table, Row):
        table = table.table[table.index:table.index + 1]
    by_lower = {name.lower(): name for name in table.colnames}
    for ra_name, dec_name in _RA_DEC_COLUMNS:
        if ra_name in by_lower and dec_name in by_lower:
            ra_key, dec_key = by_lower[ra_name], by_lower[dec_name]
            return _validated_arrays(_column_degrees(table[ra_key], ra_key),
                                     _column_degrees(table[dec_key], dec_key), "table")
    choices = ", ".join(f"{ra}/{dec}" for ra, dec in _RA_DEC_COLUMNS)
    raise InvalidRegionError(f"the table has no position columns (looked for {choices}, "
                             f"any case); its columns are {table.colnames}")


def _positions_from_array(array):
    degrees = array.to_value(u.deg) if isinstance(array, u.Quantity) else np.asarray(array, dtype=float)
    if degrees.ndim == 1 and degrees.size == 2:
        degrees = degrees.reshape(1, 2)
    if degrees.ndim != 2 or degrees.shape[1] != 2:
        raise InvalidRegionError(f"an array of positions must have shape (N, 2), got {degrees.shape}")
    return _validated_arrays(degrees[:, 0], degrees[:, 1], "array")


def _positions_from_sequence(items):
    if _is_pair(items, text=False):
        return _coord_from_pair(items[0], items[1], items).reshape((1,))
    ra, dec = [], []
    for item in items:
        if isinstance(item, SkyCoord) and not item.isscalar:
            coord = _icrs(item.ravel(), item)
        else:
            coord = parse_coordinates(item)
        ra.extend(np.atleast_1d(coord.ra.deg))
        dec.extend(np.atleast_1d(coord.dec.deg))
    return _validated_arrays(ra, dec, "list")


def parse_positions(value):
    """One or many positions, as a 1-D ICRS `~astropy.coordinates.SkyCoord`.

    Parameters
    ----------
    value
        Anything `parse_coordinates` accepts (one position); a SkyCoord array; a list of
        strings, SkyCoords or (ra, dec) pairs (a list of two *numbers or angles* is one
        pair); an (N, 2) array of degrees or angles; an astropy `~astropy.table.Table` or
        `~astropy.table.Row` with ``ra``/``dec``, ``s_ra``/``s_dec``,
        ``ra_deg_cont``/``dec_deg_cont`` or ``RAJ2000``/``DEJ2000`` columns (any case; the
        column unit is used, degrees if it has none); or the path (`str` or
        `pathlib.Path`) of a source-list file (see `read_source_list`).

    Raises
    ------
    InvalidRegionError
        If nothing is given or any position cannot be read.
    InvalidSourceListError
        If a source-list file cannot be read.
    """
    if isinstance(value, pathlib.PurePath) or (isinstance(value, str) and os.path.isfile(value)):
        return read_source_list(value)
    if isinstance(value, str) and _looks_like_a_path(value):
        raise InvalidSourceListError(f"source list {value!r} does not exist")
    if isinstance(value, SkyCoord):
        coords = _icrs(value.ravel() if not value.isscalar else value.reshape((1,)), value)
    elif isinstance(value, str):
        coords = parse_coordinates(value).reshape((1,))
    elif isinstance(value, (Table, Row)):
        coords = _positions_from_table(value)
    elif isinstance(value, np.ndarray):
        coords = _positions_from_array(value)
    elif isinstance(value, (list, tuple)):
        coords = _positions_from_sequence(value)
    else:
        raise InvalidRegionError(_cannot_parse(value))
    if coords.size == 0:
        raise InvalidRegionError("no positions were given")
    return coords


# --- source lists -----------------------------------------------------------------------------

#: Endings of source-list files; no coordinate string ends like this.
_SOURCE_LIST_SUFFIXES = (".txt", ".csv", ".dat", ".lst", ".list", ".cat", ".reg", ".tsv")


def _looks_like_a_path(text):
    """Whether a string that is not an existing file was meant as one (a typo'd path)."""
    text = text.strip()
    return "/" in text or os.sep in text or text.lower().endswith(_SOURCE_LIST_SUFFIXES)


def _source_fields(line):
    content = line.split("#", 1)[0]
    return [field for field in re.split(r"[\s,;]+", content.strip()) if field]


def read_source_list(path):
    """Positions from a source-list file in the format of CASDA's sample scripts.

    One position per line: ``ra dec`` separated by spaces, tabs or a comma, in decimal
    degrees (``347.412945 -57.052741``) or sexagesimal with RA in hours
    (``22:27:53.6 -60:22:23``, ``22h34m32.4s -60d12m32s``, ``22 27 53.6 -60 22 23``).
    ``#`` starts a comment (whole line or trailing); blank lines are skipped; the first
    content line is skipped as a header if every field starts with a letter (``RA,Dec``).

    Returns
    -------
    `~astropy.coordinates.SkyCoord`
        A 1-D ICRS array, in file order.

    Raises
    ------
    InvalidSourceListError
        If the file cannot be read, has no positions, or a line is malformed (the message
        names the file and the line number).
    """
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSourceListError(f"cannot read source list {name}: {exc}") from None
    ra, dec, seen_content = [], [], False
    for number, line in enumerate(lines, start=1):
        fields = _source_fields(line)
        if not fields:
            continue
        if not seen_content and all(re.match(r"[A-Za-z_]", field) for field in fields):
            seen_content = True           # a header such as "RA,Dec"
            continue
        seen_content = True
        coord = _source_line(fields, line, name, number)
        ra.append(coord.ra.deg)
        dec.append(coord.dec.deg)
    if not ra:
        raise InvalidSourceListError(f"source list {name} holds no positions")
    return SkyCoord(np.array(ra) * u.deg, np.array(dec) * u.deg, frame="icrs")


def _source_line(fields, line, name, number):
    try:
        if len(fields) == 2:
            return _coord_from_tokens(fields[0], fields[1], line.strip())
        if len(fields) == 6:
            return _coord_from_tokens(" ".join(fields[:3]), " ".join(fields[3:]), line.strip())
    except InvalidRegionError as exc:
        raise InvalidSourceListError(f"{name}, line {number}: {exc}") from None
    raise InvalidSourceListError(f"{name}, line {number}: expected 'ra dec' (2 fields), "
                                 f"got {len(fields)} fields in {line.strip()!r}")


# --- sizes ------------------------------------------------------------------------------------

def parse_radius(value, *, name="radius", max_deg=MAX_RADIUS_DEG):
    """An angular size in degrees, checked against CASDA's limits.

    Parameters
    ----------
    value : str, `~astropy.units.Quantity` or number
        ``'1 arcmin'``, ``0.5 * u.deg``; a plain number (or a string holding one, ``'0.5'``)
        is in **degrees** (as astroquery).
    name : str
        What the value is, for messages (``'radius'``, ``'width'``...).
    max_deg : float
        Largest allowed value; CASDA accepts radii up to 10 degrees.

    Returns
    -------
    `~astropy.units.Quantity`
        The size in degrees, ``0 < size <= max_deg``.

    Raises
    ------
    InvalidRegionError
        Not an angle, not finite, zero or negative, or larger than ``max_deg``.
    """
    try:
        if _is_real(value):
            quantity = float(value) * u.deg
        elif isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            quantity = float(value) * u.deg       # '0.5' as 0.5: the command line passes text
        elif isinstance(value, (str, u.Quantity)):
            quantity = u.Quantity(value).to(u.deg)
        else:
            raise TypeError
        degrees = float(quantity.value)
    except (TypeError, ValueError, u.UnitsError):
        raise InvalidRegionError(f"{name} {value!r} is not an angle; give e.g. '1 arcmin', "
                                 "0.5 * u.deg or a number of degrees") from None
    if not (math.isfinite(degrees) and 0 < degrees <= max_deg):
        shown = str(value) if isinstance(value, u.Quantity) else repr(value)
        raise InvalidRegionError(f"{name} {shown} must be greater than 0 and at most "
                                 f"{max_deg:g} degrees")
    return degrees * u.deg


# --- regions ----------------------------------------------------------------------------------

def _check_center(ra, dec):
    for label, number, low, high in (("ra", ra, 0.0, 360.0), ("dec", dec, -90.0, 90.0)):
        if not (_is_real(number) and low <= number <= high):
            raise InvalidRegionError(f"{label} {number!r} must be a number of degrees in [{low:g}, {high:g}]")


def _check_size(value, name, max_deg):
    if not _is_real(value):
        raise InvalidRegionError(f"{name} {value!r} must be a number of degrees")
    parse_radius(value, name=name, max_deg=max_deg)


class Region:
    """A spatial constraint: `Circle`, `Box` or `Polygon` (ICRS degrees).

    ``sia2_values()`` gives the SIA2 ``POS`` value(s) (use it to build payloads: a box
    crossing RA 0 needs two), ``soda_params()`` the SODA cutout parameter, ``center`` the
    centre as a SkyCoord.
    """

    def sia2_values(self):
        return [self.sia2_pos()]


@dataclass(frozen=True)
class Circle(Region):
    """A cone: centre ``ra``, ``dec`` and ``radius``, all in degrees (radius <= 10)."""

    ra: float
    dec: float
    radius: float

    def __post_init__(self):
        _check_center(self.ra, self.dec)
        _check_size(self.radius, "radius", MAX_RADIUS_DEG)

    @property
    def center(self):
        return SkyCoord(self.ra * u.deg, self.dec * u.deg, frame="icrs")

    def _numbers(self):
        return " ".join(format_number(x) for x in (self.ra, self.dec, self.radius))

    def sia2_pos(self):
        """``'CIRCLE ra dec radius'``."""
        return f"CIRCLE {self._numbers()}"

    def soda_params(self):
        """``{'POS': 'CIRCLE ra dec radius'}``: SODA's POS, which every CASDA release takes and
        astroquery.casda sends (v1.24 servers also take ``CIRCLE=ra dec radius``)."""
        return {"POS": self.sia2_pos()}


@dataclass(frozen=True)
class Box(Region):
    """A box centred on ``ra``, ``dec`` (degrees), ``width`` x ``height`` degrees on the sky.

    ``width`` is an on-sky angle, so the RA range is ``width / cos(dec)`` wide (measured at
    the centre's Dec).  The Dec range is clipped to [-90, 90]; a box reaching a pole, or
    wider than the whole circle at its Dec, spans every RA.  CASDA's ``RANGE`` needs RAs in
    [0, 360] and turns the range into a box around its midpoints, so a box crossing RA 0 is
    sent to SIA2 as two ``RANGE`` values (CASDA ORs repeated ``POS`` values) and to SODA
    as one ``POLYGON`` (two ``POS`` values there would make two cutouts).
    """

    ra: float
    dec: float
    width: float
    height: float

    def __post_init__(self):
        _check_center(self.ra, self.dec)
        _check_size(self.width, "width", 360.0)
        _check_size(self.height, "height", 180.0)

    @property
    def center(self):
        return SkyCoord(self.ra * u.deg, self.dec * u.deg, frame="icrs")

    @property
    def dec_range(self):
        """(low, high) Dec in degrees, clipped to [-90, 90]."""
        return max(-90.0, self.dec - self.height / 2), min(90.0, self.dec + self.height / 2)

    def _ra_half_width(self):
        """Half the RA extent in degrees, or None when the box spans every RA."""
        low, high = self.dec_range
        cos_dec = math.cos(math.radians(self.dec))
        if low <= -90.0 or high >= 90.0 or cos_dec < 1e-9:
            return None
        half = self.width / 2 / cos_dec
        return half if half < 180.0 else None

    @property
    def ra_ranges(self):
        """RA (low, high) pairs in [0, 360]: one, or two when the box crosses RA 0."""
        half = self._ra_half_width()
        if half is None:
            return ((0.0, 360.0),)
        low, high = self.ra - half, self.ra + half
        if low < 0:
            return ((low + 360.0, 360.0), (0.0, high))
        if high > 360:
            return ((low, 360.0), (0.0, high - 360.0))
        return ((low, high),)

    def sia2_values(self):
        """``['RANGE ra1 ra2 dec1 dec2']``, or two such values when the box crosses RA 0."""
        dec_low, dec_high = self.dec_range
        return [" ".join(["RANGE"] + [format_number(x) for x in (ra1, ra2, dec_low, dec_high)])
                for ra1, ra2 in self.ra_ranges]

    def sia2_pos(self):
        """The single ``'RANGE ...'`` value; a box crossing RA 0 needs `sia2_values`."""
        values = self.sia2_values()
        if len(values) != 1:
            raise InvalidRegionError(f"{self} crosses RA 0 and needs two RANGE values: use sia2_values()")
        return values[0]

    def soda_params(self):
        """``{'POS': 'RANGE ...'}``; ``{'POLYGON': ...}`` for a box crossing RA 0."""
        if len(self.ra_ranges) == 1:
            return {"POS": self.sia2_values()[0]}
        half, (low, high) = self._ra_half_width(), self.dec_range
        west, east = (self.ra - half) % 360.0, (self.ra + half) % 360.0
        # Extra vertices at the centre RA keep every edge shorter than 180 degrees, so the
        # great-circle edges follow the box instead of going round the other way.
        corners = [(west, low), (self.ra, low), (east, low), (east, high), (self.ra, high), (west, high)]
        return {"POLYGON": " ".join(format_number(x) for corner in corners for x in corner)}


@dataclass(frozen=True)
class Polygon(Region):
    """A polygon with ``vertices`` ((ra, dec), ...) in degrees, at least 3 distinct."""

    vertices: tuple

    def __post_init__(self):
        try:
            vertices = tuple((float(ra), float(dec)) for ra, dec in self.vertices)
        except (TypeError, ValueError):
            raise InvalidRegionError(f"polygon vertices {self.vertices!r} must be (ra, dec) pairs "
                                     "of degrees; use Polygon.from_vertices for other forms") from None
        for ra, dec in vertices:
            _check_center(ra, dec)
        if len(set(vertices)) < 3:
            raise InvalidRegionError(f"a polygon needs at least 3 distinct vertices, got {vertices}")
        object.__setattr__(self, "vertices", vertices)

    @classmethod
    def from_vertices(cls, vertices):
        """A polygon from anything `parse_positions` accepts, or a flat list ra1, dec1, ra2, ..."""
        flat = isinstance(vertices, (list, tuple)) and len(vertices) >= 6 and len(vertices) % 2 == 0 \
            and all(_is_real(x) for x in vertices)
        if flat:
            coords = _validated_arrays(vertices[0::2], vertices[1::2], "polygon")
        else:
            coords = parse_positions(vertices)
        return cls(tuple(zip(coords.ra.deg.tolist(), coords.dec.deg.tolist())))

    @property
    def center(self):
        """The mean direction of the vertices."""
        points = SkyCoord([ra for ra, _ in self.vertices] * u.deg,
                          [dec for _, dec in self.vertices] * u.deg, frame="icrs").cartesian
        mean = points.mean().represent_as(UnitSphericalRepresentation)
        return SkyCoord(mean.lon, mean.lat, frame="icrs")

    def _numbers(self):
        return " ".join(format_number(x) for vertex in self.vertices for x in vertex)

    def sia2_pos(self):
        """``'POLYGON ra1 dec1 ra2 dec2 ...'``."""
        return f"POLYGON {self._numbers()}"

    def soda_params(self):
        """``{'POLYGON': 'ra1 dec1 ...'}``."""
        return {"POLYGON": self._numbers()}


def make_regions(coordinates=None, *, radius=None, width=None, height=None, polygon=None):
    """The regions a query or cutout asks for.

    Parameters
    ----------
    coordinates
        One or many positions (anything `parse_positions` accepts); one region each.
    radius : str, Quantity or number (degrees), optional
        Cone radius, default 1 arcmin (as astroquery), at most 10 degrees.
    width, height : str, Quantity or number (degrees), optional
        Both together make boxes instead of cones (see `Box`).
    polygon : `Polygon` or sequence of vertices, optional
        One polygon; excludes all the other arguments.

    Returns
    -------
    list of `Region`
        Empty when neither coordinates nor a polygon are given.

    Raises
    ------
    InvalidRegionError
        For conflicting or malformed arguments.
    """
    if polygon is not None:
        if any(x is not None for x in (coordinates, radius, width, height)):
            raise InvalidRegionError("polygon= cannot be combined with coordinates, radius, width or height")
        return [polygon if isinstance(polygon, Polygon) else Polygon.from_vertices(polygon)]
    if (width is None) != (height is None):
        raise InvalidRegionError("a box needs both width and height")
    if width is not None and radius is not None:
        raise InvalidRegionError("give either radius (a cone) or width and height (a box), not both")
    if coordinates is None:
        if radius is not None or width is not None:
            raise InvalidRegionError("radius, width and height need coordinates")
        return []
    positions = parse_positions(coordinates)
    if width is not None:
        w = parse_radius(width, name="width", max_deg=360.0).value
        h = parse_radius(height, name="height", max_deg=180.0).value
        return [Box(float(c.ra.deg), float(c.dec.deg), w, h) for c in positions]
    r = parse_radius(DEFAULT_RADIUS if radius is None else radius).value
    return [Circle(float(c.ra.deg), float(c.dec.deg), r) for c in positions]


# --- spectral ---------------------------------------------------------------------------------

# astroquery.casda's messages, kept as the first sentence of ours
_BAND_SHAPE = "The 'band' value must be a list of 2 wavelength or frequency values."
_BAND_KIND = "The 'band' values must be wavelengths or frequencies."
_CHANNEL_SHAPE = "The 'channel' value must be a list of 2 integer values."

#: CASDA's first channel (plane) number: it answers ``CHANNEL=0 ...`` with a job in ERROR
#: (astroquery issue #3132), so a 0 is refused before anything is sent.
FIRST_CHANNEL = 1


def _spectral_kind(bound, band):
    for kind, unit in (("wavelength", u.m), ("frequency", u.Hz), ("velocity", u.km / u.s)):
        if bound.unit.is_equivalent(unit):
            return kind
    raise InvalidSpectralRangeError(f"{_BAND_KIND} band {band!r}: {bound} is not a wavelength, frequency or "
                                    "velocity")


def _band_bounds(band):
    if isinstance(band, (str, bytes)) or not isinstance(band, (list, tuple, np.ndarray)) or len(band) != 2:
        raise InvalidSpectralRangeError(f"{_BAND_SHAPE} band {band!r} must be 2 values (low, high); "
                                        "use None for an open end")
    bounds = []
    for bound in band:
        if bound is not None:
            try:
                bound = u.Quantity(bound) if isinstance(bound, (str, u.Quantity)) else None
            except (TypeError, ValueError):
                bound = None
            if bound is None or bound.unit == u.dimensionless_unscaled or not np.isscalar(bound.value):
                raise InvalidSpectralRangeError(f"{_BAND_SHAPE} band {band!r}: each end must be a Quantity "
                                                "with units (e.g. 1.4 * u.GHz, 21 * u.cm) or None")
        bounds.append(bound)
    if bounds[0] is None and bounds[1] is None:
        raise InvalidSpectralRangeError("band (None, None) constrains nothing; give at least one end")
    return bounds


def _rest_frequency(rest_frequency, band):
    if rest_frequency is None:
        raise InvalidSpectralRangeError(f"band {band!r} is in velocities: give rest_frequency "
                                        "(e.g. 1420.405751768 * u.MHz for HI)")
    try:
        rest = u.Quantity(rest_frequency).to(u.Hz, equivalencies=u.spectral())
    except (TypeError, ValueError, u.UnitsError):
        raise InvalidSpectralRangeError(f"rest_frequency {rest_frequency!r} is not a frequency") from None
    if not (np.isfinite(rest.value) and rest.value > 0):
        raise InvalidSpectralRangeError(f"rest_frequency {rest_frequency!r} must be positive")
    return rest


def _to_metres(bound, kind, rest, band):
    if not np.isfinite(bound.value):
        raise InvalidSpectralRangeError(f"band {band!r}: {bound} is not finite; use None for an open end")
    spectral = bound.to(u.Hz, equivalencies=u.doppler_radio(rest)) if kind == "velocity" else bound
    if not spectral.value > 0:       # checked first: converting 0 Hz would divide by zero
        raise InvalidSpectralRangeError(f"band {band!r}: {bound} gives no positive wavelength")
    return float(spectral.to_value(u.m, equivalencies=u.spectral()))


def parse_band(band, *, rest_frequency=None):
    """A spectral range as wavelengths in metres (CASDA's ``BAND`` unit).

    Parameters
    ----------
    band : (low, high)
        Two `~astropy.units.Quantity` (or strings like ``'1.4 GHz'``), either may be None
        for an open end: wavelengths (any length unit), frequencies (any frequency unit;
        the order flips when converted) or velocities (radio convention, needs
        ``rest_frequency``).  Both ends must be the same kind; the order does not matter.
    rest_frequency : Quantity, optional
        Rest frequency (or wavelength) for velocities.

    Returns
    -------
    (float or None, float or None)
        (shortest, longest) wavelength in metres; None for an open end.

    Raises
    ------
    InvalidSpectralRangeError
        Wrong number of values, no units, mixed or wrong kinds of unit, velocities without
        a rest frequency, non-positive wavelengths.
    """
    bounds = _band_bounds(band)
    kinds = {_spectral_kind(bound, band) for bound in bounds if bound is not None}
    if len(kinds) > 1:
        raise InvalidSpectralRangeError(f"The 'band' values must have the same kind of units. band {band!r} "
                                        f"mixes {' and '.join(sorted(kinds))}")
    kind = kinds.pop()
    rest = _rest_frequency(rest_frequency, band) if kind == "velocity" else None
    metres = [None if bound is None else _to_metres(bound, kind, rest, band) for bound in bounds]
    if kind == "frequency":
        metres.reverse()      # the lowest frequency is the longest wavelength
    low, high = metres
    if low is not None and high is not None and low > high:
        low, high = high, low
    return low, high


def band_string(low, high):
    """CASDA's ``BAND`` value from metres: ``'0.21 0.22'``, ``'-Inf 0.22'``, ``'0.21 +Inf'``.

    Each number is written as astroquery.casda writes it (Python's shortest exact form,
    ``0.21112144929577467``), in fixed point where that form would have an exponent.
    """
    return f"{'-Inf' if low is None else _exact(low)} {'+Inf' if high is None else _exact(high)}"


def _exact(x):
    text = repr(float(x))
    return format_number(x, decimals=20) if "e" in text or "inf" in text or "nan" in text else text


def parse_channel(channel):
    """A channel range: two integers, 1-based (CASDA counts channels from 1), sorted.

    Raises
    ------
    InvalidSpectralRangeError
        Not two integers (floats, bools and strings are refused), or a value below 1.
    """
    if isinstance(channel, (str, bytes)) or not isinstance(channel, (list, tuple, np.ndarray)) \
            or len(channel) != 2:
        raise InvalidSpectralRangeError(f"{_CHANNEL_SHAPE} channel {channel!r} must be 2 integers (first, last)")
    for value in channel:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise InvalidSpectralRangeError(f"{_CHANNEL_SHAPE} channel {channel!r}: {value!r} is not an integer")
        if value < FIRST_CHANNEL:
            raise InvalidSpectralRangeError(f"channel {channel!r}: CASDA counts channels from {FIRST_CHANNEL}")
    return tuple(sorted(int(value) for value in channel))


def _pol_tokens(text, allowed):
    tokens = []
    for token in re.split(r"[\s,/]+", text.strip().upper()):
        if token not in allowed and token and set(token) <= set(STOKES):
            tokens.extend(token)             # 'IQUV' -> I, Q, U, V
        elif token:
            tokens.append(token)
    return tokens


def parse_pol(pol, *, allowed=STOKES):
    """Polarisations as a list of upper-case names, in order, without repeats.

    Parameters
    ----------
    pol : str or sequence of str
        ``'I'``, ``['Q', 'U']``, ``'IQUV'``, ``'Q U'``.
    allowed : sequence of str
        `STOKES` (SODA cutouts) or `SIA2_POL_STATES` (SIA2 queries).

    Raises
    ------
    InvalidSpectralRangeError
        Empty, not text, or a name outside ``allowed``.
    """
    if isinstance(pol, str):
        names = _pol_tokens(pol, allowed)
    elif isinstance(pol, (list, tuple, np.ndarray)) and all(isinstance(p, str) for p in pol):
        names = [name for p in pol for name in _pol_tokens(p, allowed)]
    else:
        raise InvalidSpectralRangeError(f"pol {pol!r} must be a string or a list of strings")
    bad = [name for name in names if name not in allowed]
    if bad or not names:
        raise InvalidSpectralRangeError(f"pol {pol!r}: {bad or 'nothing'} not in {', '.join(allowed)}")
    return list(dict.fromkeys(names))


# --- footprints -------------------------------------------------------------------------------

def footprint_contains(s_region, positions):
    """Which positions lie inside an ObsCore footprint (``s_region``).

    CASDA cuts a region from a product only when the region's centre is inside the
    product's footprint; asking for the others costs a job error file each (and a whole
    failed job when none is inside).  ``POLYGON`` and ``CIRCLE`` footprints are tested;
    vertices are projected onto the plane tangent at their mean position (footprints are
    a few degrees across, where that projection keeps the edges straight enough).

    Parameters
    ----------
    s_region : str
        ``'POLYGON ICRS ra1 dec1 ra2 dec2 ...'`` or ``'CIRCLE ICRS ra dec r'`` (frame optional).
    positions : `~astropy.coordinates.SkyCoord`
        One or many positions.

    Returns
    -------
    `numpy.ndarray` of bool
        One value per position; all True for a footprint this function cannot read (CASDA
        then decides, as before).
    """
    positions = positions.reshape((-1,))
    tokens = str(s_region or "").replace(",", " ").split()
    shape = tokens[0].upper() if tokens else ""
    try:
        numbers_ = [float(t) for t in tokens[1:] if not t.isalpha()]
    except ValueError:
        return np.ones(len(positions), dtype=bool)
    if shape == "CIRCLE" and len(numbers_) == 3:
        centre = SkyCoord(numbers_[0], numbers_[1], unit="deg", frame="icrs")
        return np.asarray(positions.separation(centre).deg <= numbers_[2])
    if shape != "POLYGON" or len(numbers_) < 6 or len(numbers_) % 2:
        return np.ones(len(positions), dtype=bool)
    vertices = SkyCoord(numbers_[0::2], numbers_[1::2], unit="deg", frame="icrs")
    frame = vertices[0].skyoffset_frame()
    mean = SkyCoord(vertices.transform_to(frame).lon.mean(), vertices.transform_to(frame).lat.mean(),
                    frame=frame).icrs
    plane = mean.skyoffset_frame()
    vx, vy = (np.asarray(a.deg) for a in (vertices.transform_to(plane).lon, vertices.transform_to(plane).lat))
    projected = positions.transform_to(plane)
    px, py = np.asarray(projected.lon.deg), np.asarray(projected.lat.deg)
    near = positions.separation(mean).deg < 90      # the far side would project onto the footprint
    # even-odd rule: a ray from each point crosses the polygon's edges an odd number of times
    inside = np.zeros(len(positions), dtype=bool)
    for (x1, y1), (x2, y2) in zip(zip(vx, vy), zip(np.roll(vx, -1), np.roll(vy, -1))):
        crosses = (y1 > py) != (y2 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (px < x_at)
    return inside & near
