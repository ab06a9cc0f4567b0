"""CASDA's SIA2 service (``sia2/query``) as parameters -> ADQL on ``ivoa.obscore`` (no HTTP).

This follows ``casda_vo_tools`` (``siap2/Siapv2Controller``, ``Siapv2Service``, the
``*ParamProcessor`` classes and ``AdqlQueryBuilder``) rule for rule, quirks included:

- parameter names are case-insensitive; a name outside the list below is refused alone,
  with ``UsageFault: Invalid parameter name <NAME>``;
- values are validated in CASDA's parameter order and every message is reported, each
  ``UsageFault: ...`` (CASDA ends each with ``\\r\\n``);
- ``POS`` numbers must be fixed-point (``[+-]?\\d+(\\.\\d+)?``, no exponent) and are split on
  single spaces, so ``2.3e-06`` or a double space is an ``Invalid POS value``/range error;
- ``RANGE ra1 ra2 dec1 dec2`` becomes a ``BOX`` centred on the midpoints (``-Inf``/``+Inf``
  become 0, 360, 90, -90), so ``RANGE 350 10 ...`` covers RA 10..350, as at CASDA;
- numeric parameters (``BAND``, ``FOV``...) accept unsigned numbers with a lower-case ``e``
  exponent, one value (contains) or a range (overlap), ``-Inf``/``+Inf`` open ends;
- ``TIME`` takes one MJD (contains) or two (the product lies within them);
- text parameters match ``lower(column) = 'value'``, exactly; CASDA writes a quote in the
  value as four quotes, so a value with an apostrophe matches nothing, here too;
- repeated values of one parameter are OR-ed, different parameters AND-ed, and the query is
  always limited to ``dataproduct_type IN ('cube', 'image', 'visibility')``;
- with exactly one ``POS`` and it a ``CIRCLE``, a ``distance`` column (degrees from the
  circle's centre to ``s_ra``/``s_dec``) comes first and rows are sorted on it.
"""
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from .java_formats import java_trim
from .schema import Column

__all__ = ["UsageFault", "Sia2Query", "build_sia2_query", "SIA2_PARAMETERS", "DISTANCE_COLUMN"]

#: CASDA's SIA2 parameters, in the order it validates them and echoes them (``Siap2Param``).
SIA2_PARAMETERS = ("POS", "BAND", "FOV", "TIME", "POL", "SPATRES", "EXPTIME", "ID", "COLLECTION",
                   "FACILITY", "INSTRUMENT", "DPTYPE", "CALIB", "TARGET", "TIMERES", "SPECRP", "FORMAT",
                   "REQUEST")
#: Accepted too, but not query constraints (``Siap2OutputParamType``).
_OUTPUT_PARAMETERS = ("MAXREC", "RESPONSEFORMAT")

#: The FIELD CASDA gives the ``distance`` column (``siap1-fields.properties``).
DISTANCE_COLUMN = Column("distance", "double", unit="deg", ucd="pos.angDistance",
                         description="The angular distance of the centre of the parent image "
                                     "from the requested position")

_NUMERIC_COLUMNS = {"BAND": ("em_min", "em_max"), "FOV": ("s_fov", "s_fov"),
                    "SPATRES": ("s_resolution", "s_resolution"), "EXPTIME": ("t_exptime", "t_exptime"),
                    "CALIB": ("calib_level", "calib_level"), "TIMERES": ("t_resolution", "t_resolution"),
                    "SPECRP": ("em_res_power", "em_res_power")}
_TEXT_COLUMNS = {"ID": "obs_publisher_did", "COLLECTION": "obs_collection", "FACILITY": "facility_name",
                 "INSTRUMENT": "instrument_name", "DPTYPE": "dataproduct_type", "TARGET": "target_name",
                 "FORMAT": "access_format"}
_POL_STATES = ("I", "Q", "U", "V", "RR", "LL", "RL", "LR", "XX", "YY", "XY", "YX", "POLI", "POLA")
_DPTYPES = ("image", "cube")

# Java's patterns (String.matches: whole string; \d is ASCII there).
_SIGNED = r"[+\-]?[0-9]+(\.[0-9]+)?"
_CIRCLE = re.compile(rf"CIRCLE( +{_SIGNED}){{3}}")
_RANGE_PAIR = rf"((-Inf)|({_SIGNED})) +((\+Inf)|({_SIGNED}))"
_RANGE = re.compile(rf"RANGE( +({_RANGE_PAIR})){{2}}")
_POLYGON = re.compile(rf"POLYGON( +{_SIGNED} +{_SIGNED}){{3,}}")
_UNSIGNED = r"[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?"
_NUMERIC_SINGLE = re.compile(_UNSIGNED)
_NUMERIC_RANGE = re.compile(rf"((-Inf)|({_UNSIGNED})) +((\+Inf)|({_UNSIGNED}))")
_MJD = re.compile(r"[0-9]+(\.[0-9]+)?")

_DATE_INVALID = ("Your query contained an invalid date format. This query accepts the MJD format, "
                 "e.g.\t55678.123456")
_DATE_EMPTY = ("Your query contained no dates. This query must contain either a single date or a minimum "
               "and a maximum date in the MJD format, e.g.\t55678.123456")
_DATE_TOO_MANY = ("You have entered too many dates please no more than two dates (a starting date and an "
                  "ending date for the range in question)")
_DATE_ORDER = "The first date in your query must be earlier (chronoligically) than the second"


class UsageFault(Exception):
    """SIA2 parameters CASDA would refuse.

    ``messages`` are the ``UsageFault: ...`` texts; ``str()`` joins them with ``\\r\\n``.
    ``casda_text`` is the exact text CASDA puts in its error VOTable: each validation
    message followed by ``\\r\\n``, but an unknown parameter name alone and bare.
    """

    def __init__(self, messages, *, terminated=True):
        self.messages = list(messages)
        super().__init__("\r\n".join(self.messages))
        if terminated:
            self.casda_text = "".join(message + "\r\n" for message in self.messages)
        else:
            self.casda_text = "\r\n".join(self.messages)


@dataclass
class Sia2Query:
    """What a SIA2 request becomes: the ADQL to run, MAXREC and CASDA's echo of the request."""

    adql: str
    maxrec: int | None
    query_string: str     # the ``SIAP  query`` INFO value, e.g. "POS=CIRCLE 1 2 3&BAND=0.2"


def _fault(text):
    return f"UsageFault: {text}"


def _is_numeric(value):
    """Commons-lang ``StringUtils.isNumeric``: non-empty, digits only (any script)."""
    return value.isdecimal()


def _parse_double(text):
    """Java's Double.parseDouble for the strings that reach it here (already pattern-checked)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# --- POS --------------------------------------------------------------------------------------

def _check_ra(text, optional=False):
    if optional and text in ("-Inf", "+Inf"):
        return None
    value = _parse_double(text)
    if value is None or not 0.0 <= value <= 360.0:
        return _fault("Invalid longitude value. Valid range is [0,360]")
    return None


def _check_dec(text, optional=False):
    if optional and text in ("-Inf", "+Inf"):
        return None
    value = _parse_double(text)
    if value is None or not -90.0 <= value <= 90.0:
        return _fault("Invalid latitude value. Valid range is [-90,90]")
    return None


def _check_radius(text):
    value = _parse_double(text)
    if value is None or not 0.0 <= value <= 10.0:
        return _fault("Invalid radius value. Valid range is [0,10]")
    return None


def _validate_pos(value):
    text = java_trim(value)
    # CASDA splits on single spaces here, so doubled spaces give empty (invalid) numbers.
    parts = text.split(" ")
    if _CIRCLE.fullmatch(text):
        error = _check_ra(parts[1]) or _check_dec(parts[2]) or _check_radius(parts[3])
        return [error] if error else []
    if _RANGE.fullmatch(text):
        checks = [_check_ra(parts[1], True), _check_ra(parts[2], True),
                  _check_dec(parts[3], True), _check_dec(parts[4], True)]
        return [error for error in checks if error]
    if _POLYGON.fullmatch(text):
        errors = []
        for i in range(1, len(parts), 2):
            error = _check_ra(parts[i]) or _check_dec(parts[i + 1] if i + 1 < len(parts) else "")
            errors.extend([error] if error else [])
        return errors
    return [_fault(f"Invalid POS value {text}")]


def _pos_clause(value):
    text = java_trim(value)
    parts = re.split(" +", text)
    if _CIRCLE.fullmatch(text):
        return f"INTERSECTS(CIRCLE('ICRS GEOCENTER', {parts[1]}, {parts[2]}, {parts[3]}),s_region)=1"
    if _RANGE.fullmatch(text):
        return _range_clause(parts[1:5])
    return f"INTERSECTS(POLYGON('ICRS GEOCENTER', {', '.join(parts[1:])}),s_region)=1"


def _range_clause(bounds):
    """RANGE ra1 ra2 dec1 dec2 as CASDA's BOX: centre = midpoints (6 decimals), size = differences."""
    defaults = ("0", "360", "90", "-90")
    ra1, ra2, dec1, dec2 = (Decimal(default if bound in ("-Inf", "+Inf") else bound)
                            for default, bound in zip(defaults, bounds))
    six = Decimal("0.000001")
    centre_ra = ((ra1 + ra2) / 2).quantize(six, rounding=ROUND_HALF_UP)
    centre_dec = ((dec1 + dec2) / 2).quantize(six, rounding=ROUND_HALF_UP)
    width, height = abs(ra1 - ra2), abs(dec1 - dec2)
    numbers = ", ".join(format(number, "f") for number in (centre_ra, centre_dec, width, height))
    return f"INTERSECTS(BOX('ICRS GEOCENTER', {numbers}),s_region)=1"


# --- numeric, time, polarisation, text --------------------------------------------------------

def _validate_numeric(name, value):
    text = java_trim(value)
    if text and not _NUMERIC_SINGLE.fullmatch(text) and not _NUMERIC_RANGE.fullmatch(text):
        return [_fault(f"Invalid {name} value {text}")]
    bounds = re.split(" +", text)
    if len(bounds) == 2:
        low, high = (None if b in ("-Inf", "+Inf") else float(b) for b in bounds)
        if low is not None and high is not None and low > high:
            return [_fault(f"Invalid {name} value {text}")]
    return []


def _numeric_clause(name, value):
    low_column, high_column = _NUMERIC_COLUMNS[name]
    text = java_trim(value)
    if re.fullmatch(r"-Inf +\+Inf", text):
        return f"{low_column} IS NOT NULL AND {high_column} IS NOT NULL"
    if _NUMERIC_SINGLE.fullmatch(text):
        return f"{low_column} <= {text} AND {high_column} >= {text}"
    if text.endswith(" +Inf"):
        return f"{high_column} >= {java_trim(text[:-5])}"
    if text.startswith("-Inf "):
        return f"{low_column} <= {java_trim(text[5:])}"
    low, high = re.split(" +", text)
    return f"{low_column} <= {high} AND {high_column} >= {low}"


def _validate_time(values):
    errors = []
    for value in values:
        if not java_trim(value):
            errors.append(_fault(_DATE_EMPTY))
            continue
        dates = re.split(" +", java_trim(value))
        errors.extend(_fault(_DATE_INVALID) for date in dates if not _MJD.fullmatch(date))
        if not errors:      # CASDA checks count and order only while nothing else is wrong
            if len(dates) > 2:
                errors.append(_fault(_DATE_TOO_MANY))
            elif len(dates) == 2 and float(dates[1]) < float(dates[0]):
                errors.append(_fault(_DATE_ORDER))
    return errors


def _time_clause(value):
    dates = re.split(" +", java_trim(value))
    if len(dates) == 2:
        return f"t_min >= {dates[0]} AND t_max <= {dates[1]}"
    return f"t_min <= {dates[0]} AND t_max >= {dates[0]}"


def _validate_pol(value):
    state = java_trim(value).upper()
    if state and state not in _POL_STATES:
        return [_fault(f"Invalid POL value {value}")]
    return []


def _pol_clause(value):
    state = java_trim(value).upper()
    return f"pol_states LIKE '%/{state}/%'" if state in _POL_STATES else ""


def _validate_dptype(value):
    if value.lower() not in _DPTYPES:
        return [_fault(f"The value '{value}' is not valid for the DPTYPE. "
                       f"The value must be one of the following: image or cube")]
    return []


def _text_clause(name, value):
    # CASDA's Java writes each quote as four (replaceAll("'", "''''")): kept for fidelity.
    literal = java_trim(value).lower().replace("'", "''''")
    return f"lower({_TEXT_COLUMNS[name]}) = '{literal}'"


# --- the request ------------------------------------------------------------------------------

def _group(params):
    """Values per lower-cased name, in request order; UsageFault on an unknown name."""
    grouped = {}
    for name, value in params:
        key = java_trim(str(name)).lower()
        if key.upper() not in SIA2_PARAMETERS + _OUTPUT_PARAMETERS:
            raise UsageFault([_fault(f"Invalid parameter name {key.upper()}")], terminated=False)
        grouped.setdefault(key, []).append("" if value is None else str(value))
    return grouped


def _validate(grouped):
    """Every validation message, in CASDA's parameter order, then MAXREC's."""
    errors = []
    for name in SIA2_PARAMETERS:
        values = grouped.get(name.lower())
        if not values:
            continue
        if name == "TIME":
            errors.extend(_validate_time(values))
        else:
            errors.extend(error for value in values for error in _validate_value(name, value))
    errors.extend(_validate_maxrec(grouped.get("maxrec")))
    return errors


def _validate_value(name, value):
    if name == "POS":
        return _validate_pos(value)
    if name in _NUMERIC_COLUMNS:
        return _validate_numeric(name, value)
    if name == "POL":
        return _validate_pol(value)
    if name == "DPTYPE":
        return _validate_dptype(value)
    return []


def _validate_maxrec(values):
    if not values:
        return []
    if len(values) > 1 or len(java_trim(values[0]).split(" ")) > 1:
        return [_fault("Query can only contain a single MAXREC value")]
    if not _is_numeric(java_trim(values[0])):
        return [_fault("The maximum amount of records is invalid. MAXREC must be a valid whole number")]
    return []


def _clause(name, value):
    if name == "POS":
        return _pos_clause(value)
    if name in _NUMERIC_COLUMNS:
        return "" if not java_trim(value) else _numeric_clause(name, value)
    if name == "TIME":
        return _time_clause(value)
    if name == "POL":
        return _pol_clause(value)
    if name in _TEXT_COLUMNS:
        return _text_clause(name, value)
    return ""       # REQUEST: accepted and ignored


def _adql(grouped):
    clauses = []
    for name in SIA2_PARAMETERS:
        fragments = [f"({c})" for value in grouped.get(name.lower(), ()) if (c := _clause(name, value))]
        if fragments:
            clauses.append(" OR ".join(fragments))
    clauses.append("dataproduct_type IN ('cube', 'image', 'visibility')")
    columns, order = "*", ""
    positions = grouped.get("pos", [])
    if len(positions) == 1 and _CIRCLE.fullmatch(positions[0]):
        # CASDA tests the raw value here (no trim): only then is there a distance column.
        parts = re.split(" +", java_trim(positions[0]))
        target = f"POINT('ICRS GEOCENTER',{parts[1]}, {parts[2]})"
        distance = f"DISTANCE(POINT('ICRS GEOCENTER',s_ra,s_dec),{target})"
        columns = f'{distance} as "distance", *'
        order = " ORDER BY 1 ASC"
    where = " AND ".join(f"({clause})" for clause in clauses)
    return f"SELECT {columns} FROM ivoa.obscore WHERE {where}{order}"


def _query_string(grouped):
    return "&".join(f"{name}={value}" for name in SIA2_PARAMETERS
                    for value in grouped.get(name.lower(), ()) if value)


def build_sia2_query(params):
    """Turn SIA2 request parameters into the ADQL CASDA would run.

    Parameters
    ----------
    params : list of (str, str)
        The request's parameters, in order, repeats allowed (query string and form body).

    Returns
    -------
    Sia2Query

    Raises
    ------
    UsageFault
        A parameter name is not SIA2's, or values are malformed or out of range.
    """
    grouped = _group(params)
    errors = _validate(grouped)
    if errors:
        raise UsageFault(errors)
    maxrec_values = grouped.get("maxrec")
    # CASDA validates MAXREC trimmed but passes it on only when the raw value is all digits.
    maxrec = int(maxrec_values[0]) if maxrec_values and _is_numeric(maxrec_values[0]) else None
    return Sia2Query(_adql(grouped), maxrec, _query_string(grouped))
