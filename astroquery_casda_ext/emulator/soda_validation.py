"""SODA parameters as CASDA checks and reads them (no HTTP, no pixels).

`validate_soda_params` gives CASDA's ``UsageFault`` texts for bad values
(``PositionParamProcessor``, ``CircleParamProcessor``, ``PolygonParamProcessor`` and the
band, channel, polarisation, coordinate and format checks); `SodaRequest` reduces a
valid parameter set to the regions, spectral selections and Stokes planes the cube
engine (``cube_engine.py``) works with.
"""
import math
import re
from dataclasses import dataclass

from .java_formats import java_trim

__all__ = ["validate_soda_params", "SodaRequest", "SODA_PARAMETERS", "STOKES_NUMBERS", "STOKES_NAMES",
           "FORMATS"]

#: Parameter names CASDA's SODA service accepts (lower-case).
SODA_PARAMETERS = ("id", "pos", "circle", "polygon", "band", "channel", "pol", "coord", "time", "format")
SPATIAL_PARAMETERS = ("pos", "circle", "polygon")
SPECTRAL_PARAMETERS = ("band", "channel", "coord")
#: POL values validation accepts (the SIA list); only I, Q, U, V map onto Stokes planes.
POLARISATIONS = ("I", "Q", "U", "V", "RR", "LL", "RL", "LR", "XX", "YY", "XY", "YX", "POLI", "POLA")
STOKES_NUMBERS = {"I": 1, "Q": 2, "U": 3, "V": 4}
STOKES_NAMES = {number: name for name, number in STOKES_NUMBERS.items()}
FORMATS = {"fits": "fits", "application/fits": "fits", "image/fits": "fits", "png": "png", "image/png": "png"}
#: numpy dtype of each FITS BITPIX.
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?(e[+-]?\d+)?\Z")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?\Z")
_BAND_NUMBER = re.compile(r"\d+(\.\d+)?(e[+-]?\d+)?\Z")
_COORD_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?([eE][+-]?\d+)?\Z")
_INFINITY = re.compile(r"[+-]?Inf\Z")
_INTEGER = re.compile(r"\d+\Z")
_AXIS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")


# --- parsing and validation -------------------------------------------------------------------

@dataclass(frozen=True)
class _Region:
    param: str          # "POS" | "CIRCLE" | "POLYGON": the name as CASDA echoes it
    value: str          # the value as sent
    shape: str          # "CIRCLE" | "RANGE" | "POLYGON"
    numbers: tuple

    @property
    def label(self):
        return self.value if self.param == "POS" else f"{self.shape} {self.value}"

    @property
    def given(self):
        return f"{self.param}={self.value}"


def _number(text, pattern, *, infinite=False):
    """float(text) if it matches ``pattern`` (or is +-Inf when allowed), else None."""
    if infinite and _INFINITY.match(text):
        return -math.inf if text.startswith("-") else math.inf
    return float(text) if pattern.match(text) else None


def _numbers(parts, pattern, *, infinite=False):
    values = [_number(part, pattern, infinite=infinite) for part in parts]
    return None if any(v is None for v in values) else tuple(values)


def _valid_position(ra, dec):
    return (math.isinf(ra) or 0.0 <= ra <= 360.0) and (math.isinf(dec) or -90.0 <= dec <= 90.0)


def _parse_circle(parts):
    values = _numbers(parts, _NUMBER)
    if values is None or len(values) != 3:
        return None
    ra, dec, radius = values
    return values if _valid_position(ra, dec) and 0.0 <= radius <= 10.0 else None


def _parse_polygon(parts, pattern):
    values = _numbers(parts, pattern)
    if values is None or len(values) < 6 or len(values) % 2:
        return None
    points = zip(values[0::2], values[1::2])
    return values if all(_valid_position(ra, dec) for ra, dec in points) else None


def _range_bound(text, infinity):
    """A RANGE bound: a number, or ``infinity`` (``-Inf`` for a lower bound, ``+Inf`` for an upper)."""
    if text == infinity:
        return -math.inf if infinity.startswith("-") else math.inf
    return float(text) if _NUMBER.match(text) else None


def _parse_range(parts):
    """``ra1 ra2 dec1 dec2`` as CASDA's ``PositionParamProcessor.RANGE_PATTERN`` reads it.

    Each pair is (``-Inf`` or a number, ``+Inf`` or a number) and only the ranges of the
    numbers are checked, not their order: ``RANGE 135 136.1 -45.56 -46.23`` is valid at
    CASDA (``AsyncFunctionalTest.testSingleParameterChanges``).  `_bounds` reads a
    descending Dec pair as the band between the two values.
    """
    if len(parts) != 4:
        return None
    values = tuple(_range_bound(text, infinity) for text, infinity in zip(parts, ("-Inf", "+Inf") * 2))
    if any(value is None for value in values):
        return None
    ra1, ra2, dec1, dec2 = values
    return values if _valid_position(ra1, dec1) and _valid_position(ra2, dec2) else None


def _parse_region(name, value):
    """The `_Region` for a POS/CIRCLE/POLYGON value, or None if it cannot be read.

    Accepts at least what `_region_faults` finds valid (CASDA trims the value first).
    """
    parts = java_trim(str(value)).split(" ")
    key = name.lower()
    if key == "circle":
        shape, numbers = "CIRCLE", _parse_circle(parts)
    elif key == "polygon":
        shape, numbers = "POLYGON", _parse_polygon(parts, _PLAIN_NUMBER)
    else:
        shape = parts[0].upper()
        parsers = {"CIRCLE": _parse_circle, "RANGE": _parse_range,
                   "POLYGON": lambda p: _parse_polygon(p, _NUMBER)}
        numbers = parsers[shape](parts[1:]) if shape in parsers else None
    return None if numbers is None else _Region(key.upper(), str(value), shape, numbers)


def _parse_interval(value, pattern, *, count=2):
    values = _numbers(str(value).split(" "), pattern, infinite=True)
    if values is None or len(values) != count or values[0] > values[-1]:
        return None
    return values


def _parse_channel(value):
    parts = str(value).split(" ")
    if len(parts) != 2 or not all(_INTEGER.match(p) for p in parts):
        return None
    low, high = int(parts[0]), int(parts[1])
    return (low, high) if 1 <= low <= high else None


def _parse_coord(value):
    """('FREQ', low, high) for ``COORD=FREQ 1.4E9 1.5E9`` (one value gives low == high)."""
    parts = str(value).split(" ")
    if len(parts) not in (2, 3) or not _AXIS_NAME.match(parts[0]):
        return None
    values = _numbers(parts[1:], _COORD_NUMBER, infinite=True)
    if values is None or values[0] > values[-1]:
        return None
    return parts[0].upper(), values[0], values[-1]


# --- CASDA's position checks (PositionParamProcessor, CircleParamProcessor, PolygonParamProcessor):
# the value (Java-trimmed) must match the shape's pattern, else "Invalid <NAME> value <value>";
# then each coordinate is range-checked, with a message naming the coordinate.
_SIGNED = r"[+-]?\d+(\.\d+)?(e[+-]?\d+)?"
_POS_SHAPES = {
    "CIRCLE": re.compile(rf"CIRCLE( +{_SIGNED}){{3}}", re.ASCII),
    "RANGE": re.compile(rf"RANGE( +((-Inf)|({_SIGNED})) +((\+Inf)|({_SIGNED}))){{2}}", re.ASCII),
    "POLYGON": re.compile(rf"POLYGON( +{_SIGNED} +{_SIGNED}){{3,}}", re.ASCII),
}
_CIRCLE_VALUE = re.compile(r"([+-]?[0-9]+([.][0-9]+)?(e[+-]?\d+)? ){2}[+-]?[0-9]+([.][0-9]+)?", re.ASCII)
_POLYGON_VALUE = re.compile(r"([+-]?[0-9]+([.][0-9]+)? [+-]?[0-9]+([.][0-9]+)? ){2,}[+-]?[0-9]+([.][0-9]+)? "
                            r"[+-]?[0-9]+([.][0-9]+)?", re.ASCII)
LONGITUDE_FAULT = "UsageFault: Invalid longitude value. Valid range is [0,360]"
LATITUDE_FAULT = "UsageFault: Invalid latitude value. Valid range is [-90,90]"
RADIUS_FAULT = "UsageFault: Invalid radius value. Valid range is [0,10]"


def _out_of_range(text, low, high, *, optional=False):
    """Whether a coordinate fails CASDA's ``verify*`` (optional ones may be -Inf/+Inf)."""
    if optional and text in ("-Inf", "+Inf"):
        return False
    try:
        value = float(text)   # the pattern already matched: only "" (doubled spaces) fails here
    except ValueError:
        return True
    return not low <= value <= high


def _circle_faults(parts):
    """``validateCircle``: the first problem only."""
    parts = list(parts) + [""] * 3
    if _out_of_range(parts[0], 0.0, 360.0):
        return [LONGITUDE_FAULT]
    if _out_of_range(parts[1], -90.0, 90.0):
        return [LATITUDE_FAULT]
    return [RADIUS_FAULT] if _out_of_range(parts[2], 0.0, 10.0) else []


def _polygon_faults(parts):
    """``validatePolygon``: per vertex, the longitude or else the latitude problem."""
    faults = []
    for index in range(0, len(parts), 2):
        if _out_of_range(parts[index], 0.0, 360.0):
            faults.append(LONGITUDE_FAULT)
        elif _out_of_range(parts[index + 1] if index + 1 < len(parts) else "", -90.0, 90.0):
            faults.append(LATITUDE_FAULT)
    return faults


def _region_faults(name, value):
    """CASDA's messages for one POS, CIRCLE or POLYGON value (empty when it is valid).

    Like CASDA, the numbers are split on single spaces, so doubled spaces give an empty
    (out of range) coordinate rather than a pattern error.
    """
    text = java_trim(str(value))
    key = name.lower()
    if key == "circle":
        return _circle_faults(text.split(" ")) if _CIRCLE_VALUE.fullmatch(text) else [
            f"UsageFault: Invalid CIRCLE value {text}"]
    if key == "polygon":
        return _polygon_faults(text.split(" ")) if _POLYGON_VALUE.fullmatch(text) else [
            f"UsageFault: Invalid POLYGON value {text}"]
    shape = text.split(" ", 1)[0]
    if shape not in _POS_SHAPES or not _POS_SHAPES[shape].fullmatch(text):
        return [f"UsageFault: Invalid POS value {text}"]
    parts = text.split(" ")[1:] if shape == "RANGE" else text[len(shape) + 1:].split(" ")
    if shape == "CIRCLE":
        return _circle_faults(parts)
    if shape == "POLYGON":
        return _polygon_faults(parts)
    return ([LONGITUDE_FAULT for bound in parts[0:2] if _out_of_range(bound, 0.0, 360.0, optional=True)]
            + [LATITUDE_FAULT for bound in parts[2:4] if _out_of_range(bound, -90.0, 90.0, optional=True)])


_VALIDATORS = {
    "band": lambda v: _parse_interval(v, _BAND_NUMBER),
    "channel": _parse_channel,
    "pol": lambda v: v if str(v) in POLARISATIONS else None,
    "coord": _parse_coord,
    "time": lambda v: _parse_interval(v, _NUMBER),
    "format": lambda v: FORMATS.get(str(v).lower()),
}


def _values(values):
    return [values] if isinstance(values, str) else list(values)


def validate_soda_params(params):
    """CASDA's checks of SODA parameters.

    Parameters
    ----------
    params : dict of str to list of str
        Parameter name (any case) to the values sent, in order.

    Returns
    -------
    list of str
        One ``UsageFault: ...`` message per problem; empty when everything is valid.
    """
    messages = []
    for name, values in params.items():
        key = name.lower()
        if key not in SODA_PARAMETERS:
            messages.append(f"UsageFault: {name.upper()} is an invalid parameter")
            continue
        if key in SPATIAL_PARAMETERS:
            for value in _values(values):
                messages += _region_faults(key, value)
            continue
        check = _VALIDATORS.get(key)
        for value in _values(values) if check else ():
            if check(value) is None:
                messages.append(f"UsageFault: Invalid {key.upper()} value {value}")
    return messages


# --- the request, reduced to what the engine needs --------------------------------------------------

@dataclass(frozen=True)
class _Spectral:
    param: str          # "BAND" | "CHANNEL" | "COORD"
    value: str
    bounds: tuple       # BAND: metres; CHANNEL: 1-based planes; COORD: (axis, low, high)

    @property
    def given(self):
        return f"{self.param}={self.value}"


@dataclass(frozen=True)
class SodaRequest:
    regions: list
    spectral: list
    pols: list
    image_format: str

    @classmethod
    def from_params(cls, params):
        regions, spectral, pols, image_format = [], [], [], "fits"
        for name, values in params.items():
            key = name.lower()
            for value in _values(values):
                if key in SPATIAL_PARAMETERS:
                    regions.append(_parse_region(key, value))
                elif key in SPECTRAL_PARAMETERS:
                    spectral.append(_Spectral(key.upper(), str(value), _VALIDATORS[key](value)))
                elif key == "pol" and value not in pols:
                    pols.append(str(value))
                elif key == "format":
                    image_format = FORMATS[str(value).lower()]
        return cls(regions, spectral, pols, image_format)
