"""ADQL's functions in the emulator's SQLite: geometry, maths, and the tables that name them.

The geometry functions (``POINT CIRCLE BOX POLYGON CONTAINS INTERSECTS DISTANCE COORD1
COORD2``) work on strings in the form of CASDA's ``s_region`` column, with the shapes and
tests of ``geometry.py`` (no SQL there); a REGION column's hidden bounding-cap columns let
``INTERSECTS``/``CONTAINS`` against a constant shape be pre-filtered in plain SQL
(`cap_condition`).  The maths functions are ADQL's where SQLite differs.  ``ADQL_FUNCTIONS``,
``FUNCTION_CLASSES``, ``AGGREGATES`` and ``REFUSED_FUNCTIONS`` tell ``adql_compiler.py``
what may be called and what type it returns.
"""
import math
import random
import threading

from sqlglot import exp

from .geometry import (
    Box, Circle, Point, Polygon, bounding_cap, contains, great_circle_distance, intersects, parse_region)

__all__ = ["SQL_FUNCTIONS", "ADQL_FUNCTIONS", "FUNCTION_CLASSES", "AGGREGATES", "REFUSED_FUNCTIONS",
           "CAP_SUFFIXES", "cap_condition", "sql_function", "function_errors"]


# --- bounding caps: a fast first test in SQL ----------------------------------------------
#
# Each REGION column gets hidden columns holding its value's bounding cap (centre vector,
# cos and sin of the radius, Dec range).  INTERSECTS/CONTAINS between such a column and a
# constant shape first compares caps in plain SQL arithmetic, so the Python test runs only
# for the rows that could match (a sky search of a 100 000-row ObsCore becomes milliseconds).

CAP_SUFFIXES = ("$x", "$y", "$z", "$cos", "$sin", "$decmin", "$decmax")


def cap_condition(alias, column, shape):
    """SQL that is false only when ``shape`` cannot meet the region in ``alias.column``."""
    def ref(suffix):
        return f'{alias}."{column}{suffix}"'

    if shape.kind == "BOX":
        low, high = shape.dec_min - 1e-9, shape.dec_max + 1e-9
        return f"({ref('$decmax')} >= {low!r} AND {ref('$decmin')} <= {high!r})"
    (x, y, z), radius = bounding_cap(shape)
    if radius > math.pi / 2:
        return None
    # angle(centres) <= r + rho  <=>  cos(angle) >= cos r cos rho - sin r sin rho  (r + rho < pi)
    return (f"({ref('$x')} * {x!r} + {ref('$y')} * {y!r} + {ref('$z')} * {z!r} >= "
            f"{math.cos(radius)!r} * {ref('$cos')} - {math.sin(radius)!r} * {ref('$sin')} - 1e-9)")


# --- the SQL functions ----------------------------------------------------------------------

def _frame_and_numbers(args, counts, name):
    """Split ADQL geometry arguments into numbers; a leading coordinate-system string is optional."""
    if len(args) not in counts and len(args) - 1 in counts and isinstance(args[0], str):
        args = args[1:]
    if len(args) not in counts:
        raise ValueError(f"wrong number of arguments for {name}")
    numbers = [float(value) for value in args]
    if not all(map(math.isfinite, numbers)):
        raise ValueError(f"{name} needs finite numbers")
    return numbers


def _sql_point(*args):
    return str(Point(*_frame_and_numbers(args, (2,), "POINT")))


def _sql_circle(*args):
    return str(Circle(*_frame_and_numbers(args, (3,), "CIRCLE")))


def _sql_box(*args):
    return str(Box(*_frame_and_numbers(args, (4,), "BOX")))


def _sql_polygon(*args):
    counts = range(6, len(args) + 1, 2)
    numbers = _frame_and_numbers(args, counts, "POLYGON")
    return str(Polygon(list(zip(numbers[0::2], numbers[1::2]))))


def _point_arg(value, name):
    shape = parse_region(value)
    if shape.kind != "POINT":
        raise ValueError(f"{name} needs a POINT, not a {shape.kind}")
    return shape


def _sql_distance(*args):
    if len(args) == 2:
        p1, p2 = (_point_arg(value, "DISTANCE") for value in args)
        return great_circle_distance(p1.ra, p1.dec, p2.ra, p2.dec)
    if len(args) == 4:
        return great_circle_distance(*(float(value) for value in args))
    raise ValueError("DISTANCE takes two POINTs or four numbers")


def _truncate(value, places=0):
    factor = 10.0 ** int(places)
    return math.trunc(float(value) * factor) / factor


def _mod(a, b):
    result = math.fmod(a, b)
    return int(result) if isinstance(a, int) and isinstance(b, int) else result


def _rand(seed=None):
    return random.Random(seed).random() if seed is not None else random.random()


SQL_FUNCTIONS = {
    "adql_point": _sql_point, "adql_circle": _sql_circle, "adql_box": _sql_box, "adql_polygon": _sql_polygon,
    "adql_contains": lambda a, b: int(contains(parse_region(a), parse_region(b))),
    "adql_intersects": lambda a, b: int(intersects(parse_region(a), parse_region(b))),
    "adql_distance": _sql_distance,
    "adql_coord1": lambda p: _point_arg(p, "COORD1").ra,
    "adql_coord2": lambda p: _point_arg(p, "COORD2").dec,
    "adql_ceiling": lambda x: float(math.ceil(x)), "adql_floor": lambda x: float(math.floor(x)),
    "adql_sqrt": math.sqrt, "adql_exp": math.exp, "adql_log": math.log, "adql_log10": math.log10,
    "adql_power": lambda x, y: float(x) ** float(y), "adql_sin": math.sin, "adql_cos": math.cos,
    "adql_tan": math.tan, "adql_asin": math.asin, "adql_acos": math.acos, "adql_atan": math.atan,
    "adql_atan2": math.atan2, "adql_degrees": math.degrees, "adql_radians": math.radians,
    "adql_pi": lambda: math.pi, "adql_mod": _mod, "adql_truncate": _truncate, "adql_rand": _rand,
}

#: The last error a user function raised in this thread: SQLite only says "user-defined
#: function raised exception", so the message is kept here for the AdqlError.
function_errors = threading.local()


def sql_function(name, function):
    """Wrap ``function`` for SQLite: NULL in gives NULL out; errors are remembered."""
    def call(*args):
        if any(arg is None for arg in args):
            return None
        try:
            return function(*args)
        except (ValueError, TypeError, ArithmeticError) as exc:
            function_errors.message = f"{name[5:].upper()}: {exc}"
            raise
    return call


ADQL_FUNCTIONS = {
    "ABS": ("abs", 1, 1, "same"), "CEILING": ("adql_ceiling", 1, 1, "double"),
    "FLOOR": ("adql_floor", 1, 1, "double"), "SQRT": ("adql_sqrt", 1, 1, "double"),
    "EXP": ("adql_exp", 1, 1, "double"), "LOG": ("adql_log", 1, 1, "double"),
    "LOG10": ("adql_log10", 1, 1, "double"), "POWER": ("adql_power", 2, 2, "double"),
    "SIN": ("adql_sin", 1, 1, "double"), "COS": ("adql_cos", 1, 1, "double"),
    "TAN": ("adql_tan", 1, 1, "double"), "ASIN": ("adql_asin", 1, 1, "double"),
    "ACOS": ("adql_acos", 1, 1, "double"), "ATAN": ("adql_atan", 1, 1, "double"),
    "ATAN2": ("adql_atan2", 2, 2, "double"), "DEGREES": ("adql_degrees", 1, 1, "double"),
    "RADIANS": ("adql_radians", 1, 1, "double"), "PI": ("adql_pi", 0, 0, "double"),
    "MOD": ("adql_mod", 2, 2, "same"), "ROUND": ("round", 1, 2, "double"),
    "TRUNCATE": ("adql_truncate", 1, 2, "double"), "RAND": ("adql_rand", 0, 1, "double"),
    "LOWER": ("lower", 1, 1, "char"), "UPPER": ("upper", 1, 1, "char"),
    "COALESCE": ("coalesce", 2, 64, "same"),
    "POINT": ("adql_point", 2, 3, "region"), "CIRCLE": ("adql_circle", 3, 4, "region"),
    "BOX": ("adql_box", 4, 5, "region"), "POLYGON": ("adql_polygon", 6, 1000, "region"),
    "CONTAINS": ("adql_contains", 2, 2, "int"), "INTERSECTS": ("adql_intersects", 2, 2, "int"),
    "DISTANCE": ("adql_distance", 2, 4, "distance"),
    "COORD1": ("adql_coord1", 1, 1, "coord1"), "COORD2": ("adql_coord2", 1, 1, "coord2"),
}

#: sqlglot's typed function nodes -> ADQL names (everything else arrives as exp.Anonymous).
FUNCTION_CLASSES = {
    exp.Abs: "ABS", exp.Ceil: "CEILING", exp.Floor: "FLOOR", exp.Sqrt: "SQRT", exp.Exp: "EXP",
    exp.Ln: "LOG", exp.Pow: "POWER", exp.Sin: "SIN", exp.Cos: "COS", exp.Tan: "TAN", exp.Asin: "ASIN",
    exp.Acos: "ACOS", exp.Atan: "ATAN", exp.Atan2: "ATAN2", exp.Degrees: "DEGREES",
    exp.Radians: "RADIANS", exp.Pi: "PI", exp.Mod: "MOD", exp.Round: "ROUND", exp.Trunc: "TRUNCATE",
    exp.Rand: "RAND", exp.Lower: "LOWER", exp.Upper: "UPPER", exp.Coalesce: "COALESCE",
    exp.Contains: "CONTAINS",
}

#: Aggregates, run by SQLite itself, and the datatype of their result.
AGGREGATES = {exp.Count: "long", exp.Min: "same", exp.Max: "same", exp.Avg: "double", exp.Sum: "same"}

#: ADQL functions this service does not offer (CASDA's pgSphere has them; nobody here needs them).
REFUSED_FUNCTIONS = {"AREA", "CENTROID", "REGION", "COORDSYS"}
