"""Spherical geometry for the emulator's ADQL: points, circles, boxes and polygons on the sky.

Values are strings in the form of CASDA's ``s_region`` column (`parse_region` reads them):
``POINT ICRS ra dec``, ``CIRCLE ICRS ra dec r``, ``BOX ICRS ra dec width height``,
``POLYGON ICRS ra1 dec1 ...`` (degrees; the frame is read and ignored, as CASDA's pgSphere
translation ignores it).  A `Box` is a range of RA and Dec (pgSphere's ``sbox``), which is
what CASDA's SIA2 ``RANGE`` means; a `Polygon` has great-circle edges and must fit in a
hemisphere.  `intersects` and `contains` are ADQL's INTERSECTS and CONTAINS;
`great_circle_distance` is DISTANCE; `bounding_cap` and `cap_values` give the cheap first
test ``adql.py`` runs in SQL before the exact one.  No SQL here.
"""
import functools
import math

__all__ = ["Point", "Circle", "Box", "Polygon", "parse_region", "intersects", "contains",
           "great_circle_distance", "bounding_cap", "cap_values"]


_RAD = math.pi / 180.0
#: Slack for comparisons of unit-vector products (1e-12 is ~0.2 micro-arcsec).
_EPS = 1e-12


def _unit(ra, dec):
    a, d = ra * _RAD, dec * _RAD
    cos_dec = math.cos(d)
    return (cos_dec * math.cos(a), cos_dec * math.sin(a), math.sin(d))


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _normalised(v):
    norm = math.sqrt(_dot(v, v))
    if norm < 1e-15:
        return None
    return (v[0] / norm, v[1] / norm, v[2] / norm)


def _angle(a, b):
    """Angle between unit vectors in radians; atan2 keeps small angles exact."""
    c = _cross(a, b)
    return math.atan2(math.sqrt(_dot(c, c)), _dot(a, b))


def _dec_of(v):
    return math.degrees(math.asin(max(-1.0, min(1.0, v[2]))))


def _on_arc(x, edge):
    """Whether ``x`` (on the edge's great circle) lies on the minor arc p1 -> p2."""
    p1, p2, normal = edge
    return _dot(_cross(p1, x), normal) >= -_EPS and _dot(_cross(x, p2), normal) >= -_EPS


def _arc_distance(v, edge):
    """Angular distance (radians) from ``v`` to a great-circle arc."""
    p1, p2, normal = edge
    s = _dot(v, normal)
    foot = _normalised((v[0] - s * normal[0], v[1] - s * normal[1], v[2] - s * normal[2]))
    if foot is not None and _on_arc(foot, edge):
        return math.asin(min(1.0, abs(s)))
    return min(_angle(v, p1), _angle(v, p2))


def _arcs_cross(edge_a, edge_b):
    line = _normalised(_cross(edge_a[2], edge_b[2]))
    if line is None:        # same great circle: overlaps show up as vertices inside
        return False
    minus = (-line[0], -line[1], -line[2])
    return any(_on_arc(x, edge_a) and _on_arc(x, edge_b) for x in (line, minus))


def _validate_dec(dec):
    if not -90.0 - 1e-9 <= dec <= 90.0 + 1e-9:
        raise ValueError(f"declination {dec!r} is outside [-90, 90]")


def _number(text):
    return f"{float(text)!r}"


class Point:
    kind = "POINT"

    def __init__(self, ra, dec):
        _validate_dec(dec)
        self.ra, self.dec = ra % 360.0, max(-90.0, min(90.0, dec))
        self.vec = _unit(self.ra, self.dec)

    def contains_point(self, point):
        return _angle(self.vec, point.vec) <= 1e-12

    def __str__(self):
        return f"POINT ICRS {_number(self.ra)} {_number(self.dec)}"


class Circle:
    kind = "CIRCLE"

    def __init__(self, ra, dec, radius):
        if radius < 0:
            raise ValueError(f"circle radius {radius!r} is negative")
        self.centre = Point(ra, dec)
        self.radius_deg = radius
        self.radius = radius * _RAD
        self.cos_radius = math.cos(min(self.radius, math.pi))

    def contains_vec(self, vec):
        d = _dot(vec, self.centre.vec)
        if abs(d - self.cos_radius) > 1e-9:     # clear-cut: the fast dot product decides
            return d > self.cos_radius
        return _angle(vec, self.centre.vec) <= self.radius + _EPS

    def contains_point(self, point):
        return self.contains_vec(point.vec)

    def __str__(self):
        c = self.centre
        return f"CIRCLE ICRS {_number(c.ra)} {_number(c.dec)} {_number(self.radius_deg)}"


class Box:
    """A range of RA (wrapping at 0/360) and Dec, as pgSphere's ``sbox`` (CASDA's BOX)."""

    kind = "BOX"

    def __init__(self, ra, dec, width, height):
        if width < 0 or height < 0:
            raise ValueError("box width and height must not be negative")
        _validate_dec(dec)
        self.args = (ra % 360.0, dec, width, height)
        self.dec_min, self.dec_max = max(-90.0, dec - height / 2), min(90.0, dec + height / 2)
        self.full_ra = width >= 360.0
        self.span = min(width, 360.0)
        self.ra_min = (ra - width / 2) % 360.0
        self.ra_max = (self.ra_min + self.span) % 360.0

    def ra_in_range(self, ra):
        return self.full_ra or (ra - self.ra_min) % 360.0 <= self.span + 1e-9

    def contains_radec(self, ra, dec):
        if not self.dec_min - 1e-9 <= dec <= self.dec_max + 1e-9:
            return False
        return abs(dec) >= 90.0 - 1e-9 or self.ra_in_range(ra)

    def contains_point(self, point):
        return self.contains_radec(point.ra, point.dec)

    def corners(self):
        if self.full_ra:
            return []
        return [Point(ra, dec) for ra in (self.ra_min, self.ra_max) for dec in (self.dec_min, self.dec_max)]

    def boundary_points(self):
        """Points along the boundary, at most half a degree apart (for containment tests)."""
        ra_steps = max(2, math.ceil(self.span / 0.5)) + 1
        dec_steps = max(2, math.ceil((self.dec_max - self.dec_min) / 0.5)) + 1
        ras = [self.ra_min + self.span * i / (ra_steps - 1) for i in range(ra_steps)]
        decs = [self.dec_min + (self.dec_max - self.dec_min) * i / (dec_steps - 1) for i in range(dec_steps)]
        points = [(ra, dec) for ra in ras for dec in (self.dec_min, self.dec_max)]
        if not self.full_ra:
            points += [(ra, dec) for ra in (self.ra_min, self.ra_max) for dec in decs]
        return [Point(ra, dec) for ra, dec in points]

    def __str__(self):
        return "BOX ICRS " + " ".join(_number(value) for value in self.args)


class Polygon:
    """A spherical polygon with great-circle edges, smaller than a hemisphere.

    Points are tested in the gnomonic projection about the polygon's centre, where
    great circles are straight lines, so the planar even-odd rule is exact.  Only the
    bounding cap is computed up front: most rows of a sky search are rejected with it,
    and the projection and edges are built for the few that are not.
    """

    kind = "POLYGON"

    def __init__(self, coords):
        if len(coords) > 3 and coords[0] == coords[-1]:
            coords = coords[:-1]        # a closed ring repeats its first vertex
        if len(coords) < 3:
            raise ValueError("a polygon needs at least 3 vertices")
        for _, dec in coords:
            _validate_dec(dec)
        self.coords = coords
        self.vecs = [_unit(ra, dec) for ra, dec in coords]
        self.centre = _normalised(tuple(sum(v[i] for v in self.vecs) for i in range(3)))
        dots = [_dot(v, self.centre) for v in self.vecs] if self.centre else [0.0]
        if min(dots) <= 1e-9:
            raise ValueError("polygons larger than a hemisphere are not supported")
        self.cos_radius = min(dots)
        self.radius = _angle(self.centre, self.vecs[dots.index(self.cos_radius)])

    @functools.cached_property
    def points(self):
        return [Point(ra, dec) for ra, dec in self.coords]

    @functools.cached_property
    def _frame(self):
        east = _normalised(_cross((0.0, 0.0, 1.0), self.centre)) or (0.0, 1.0, 0.0)
        return east, _cross(self.centre, east)

    @functools.cached_property
    def plane(self):
        return [self._project(v) for v in self.vecs]

    @functools.cached_property
    def edges(self):
        pairs = zip(self.vecs, self.vecs[1:] + self.vecs[:1])
        return [(a, b, n) for a, b in pairs if (n := _normalised(_cross(a, b))) is not None]

    def _project(self, v):
        depth = _dot(v, self.centre)
        east, north = self._frame
        return (_dot(v, east) / depth, _dot(v, north) / depth)

    def contains_vec(self, vec):
        if _dot(vec, self.centre) < self.cos_radius - 1e-9:   # outside the bounding cap
            return False
        x, y = self._project(vec)
        plane = self.plane
        inside = False
        for (x1, y1), (x2, y2) in zip(plane, plane[1:] + plane[:1]):
            if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
                inside = not inside
        return inside

    def contains_point(self, point):
        return self.contains_vec(point.vec)

    def dec_range(self):
        centre_dec, radius = _dec_of(self.centre), math.degrees(self.radius)
        return centre_dec - radius, centre_dec + radius

    def __str__(self):
        return "POLYGON ICRS " + " ".join(f"{_number(ra % 360.0)} {_number(dec)}" for ra, dec in self.coords)


_SHAPES = {"POINT": (Point, 2), "POSITION": (Point, 2), "CIRCLE": (Circle, 3), "BOX": (Box, 4)}


def _is_number(token):
    try:
        float(token)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=65536)
def parse_region(text):
    """Parse a geometry string (``s_region`` style); cached, since columns repeat values."""
    tokens = str(text).split()
    shape = tokens[0].upper() if tokens else ""
    start = 1
    while start < len(tokens) and not _is_number(tokens[start]):
        start += 1          # frame words: ICRS, GEOCENTER...
    try:
        numbers = [float(token) for token in tokens[start:]]
    except ValueError:
        numbers = []
    if numbers and all(map(math.isfinite, numbers)):
        if shape == "POLYGON" and len(numbers) >= 6 and len(numbers) % 2 == 0:
            return Polygon(list(zip(numbers[0::2], numbers[1::2])))
        if shape in _SHAPES and len(numbers) == _SHAPES[shape][1]:
            return _SHAPES[shape][0](*numbers)
    raise ValueError(f"invalid geometry {text!r}")


# --- intersections --------------------------------------------------------------------------

def _circle_circle(a, b):
    return _angle(a.centre.vec, b.centre.vec) <= a.radius + b.radius + _EPS


def _circle_polygon(circle, polygon):
    centre = circle.centre.vec
    if _angle(centre, polygon.centre) > circle.radius + polygon.radius + 1e-9:
        return False
    if polygon.contains_vec(centre) or any(circle.contains_vec(v) for v in polygon.vecs):
        return True
    return any(_arc_distance(centre, edge) <= circle.radius + _EPS for edge in polygon.edges)


def _circle_box(circle, box):
    c, r = circle.centre, circle.radius_deg
    if box.contains_point(c):
        return True
    if box.full_ra:
        return c.dec + r >= box.dec_min and c.dec - r <= box.dec_max
    if any(circle.contains_point(corner) for corner in box.corners()):
        return True
    if box.ra_in_range(c.ra) and min(abs(c.dec - box.dec_min), abs(c.dec - box.dec_max)) <= r:
        return True
    return any(_meridian_distance(c.vec, ra, box) <= circle.radius + _EPS for ra in (box.ra_min, box.ra_max))


def _meridian_distance(vec, ra, box):
    """Distance from ``vec`` to the box edge along meridian ``ra`` (inf when the nearest
    point of that meridian lies beyond the edge's ends: the corners cover that case)."""
    a = ra * _RAD
    normal, direction = (-math.sin(a), math.cos(a), 0.0), (math.cos(a), math.sin(a), 0.0)
    s = _dot(vec, normal)
    foot = _normalised((vec[0] - s * normal[0], vec[1] - s * normal[1], vec[2] - s * normal[2]))
    if foot is None or _dot(foot, direction) < -_EPS or not box.dec_min <= _dec_of(foot) <= box.dec_max:
        return math.inf
    return math.asin(min(1.0, abs(s)))


def _arc_crosses_parallel(edge, dec, box):
    normal = edge[2]
    sin_dec, cos_dec = math.sin(dec * _RAD), math.cos(dec * _RAD)
    a, b, c = normal[0] * cos_dec, normal[1] * cos_dec, -normal[2] * sin_dec
    r = math.hypot(a, b)
    if r < 1e-15 or abs(c) > r:
        return False
    base, half = math.atan2(b, a), math.acos(max(-1.0, min(1.0, c / r)))
    for alpha in (base + half, base - half):
        x = (cos_dec * math.cos(alpha), cos_dec * math.sin(alpha), sin_dec)
        if _on_arc(x, edge) and box.ra_in_range(math.degrees(alpha) % 360.0):
            return True
    return False


def _arc_crosses_meridian(edge, ra, box):
    a = ra * _RAD
    line = _normalised(_cross(edge[2], (-math.sin(a), math.cos(a), 0.0)))
    if line is None:
        return False
    direction = (math.cos(a), math.sin(a), 0.0)
    for x in (line, (-line[0], -line[1], -line[2])):
        if _dot(x, direction) >= -_EPS and box.dec_min <= _dec_of(x) <= box.dec_max and _on_arc(x, edge):
            return True
    return False


def _edges_cross_box(polygon, box):
    for edge in polygon.edges:
        parallels = [dec for dec in (box.dec_min, box.dec_max) if abs(dec) < 90.0]
        if any(_arc_crosses_parallel(edge, dec, box) for dec in parallels):
            return True
        if not box.full_ra and any(_arc_crosses_meridian(edge, ra, box) for ra in (box.ra_min, box.ra_max)):
            return True
    return False


def _box_polygon(box, polygon):
    low, high = polygon.dec_range()
    if high < box.dec_min - 1e-9 or low > box.dec_max + 1e-9:
        return False
    if any(box.contains_point(p) for p in polygon.points):
        return True
    if any(polygon.contains_point(corner) for corner in box.corners()):
        return True
    poles = [Point(0.0, pole) for pole in (90.0, -90.0) if box.contains_radec(0.0, pole)]
    if any(polygon.contains_point(pole) for pole in poles):
        return True
    return _edges_cross_box(polygon, box)


def _box_box(a, b):
    low, high = max(a.dec_min, b.dec_min), min(a.dec_max, b.dec_max)
    if low > high + 1e-9:
        return False
    if high >= 90.0 - 1e-9 or low <= -90.0 + 1e-9:
        return True     # both reach the same pole
    return a.ra_in_range(b.ra_min) or b.ra_in_range(a.ra_min)


def _polygon_polygon(a, b):
    if _angle(a.centre, b.centre) > a.radius + b.radius + 1e-9:
        return False
    if any(b.contains_vec(v) for v in a.vecs) or any(a.contains_vec(v) for v in b.vecs):
        return True
    return any(_arcs_cross(ea, eb) for ea in a.edges for eb in b.edges)


_INTERSECTS = {
    ("CIRCLE", "CIRCLE"): _circle_circle, ("CIRCLE", "POLYGON"): _circle_polygon,
    ("CIRCLE", "BOX"): _circle_box, ("BOX", "POLYGON"): _box_polygon, ("BOX", "BOX"): _box_box,
    ("POLYGON", "POLYGON"): _polygon_polygon,
}


def intersects(a, b):
    if a.kind == "POINT":
        return b.contains_point(a)
    if b.kind == "POINT":
        return a.contains_point(b)
    if (a.kind, b.kind) in _INTERSECTS:
        return _INTERSECTS[a.kind, b.kind](a, b)
    return _INTERSECTS[b.kind, a.kind](b, a)


# --- containment (a inside b) ---------------------------------------------------------------

def _circle_in_box(circle, box):
    c, r = circle.centre, circle.radius_deg
    if c.dec - r < box.dec_min - 1e-9 or c.dec + r > box.dec_max + 1e-9:
        return False
    if box.full_ra:
        return True
    if abs(c.dec) + r >= 90.0:
        return False        # the circle holds a pole, hence every RA
    half_width = math.degrees(math.asin(min(1.0, math.sin(circle.radius) / math.cos(c.dec * _RAD))))
    offset = (c.ra - box.ra_min) % 360.0
    return half_width - 1e-9 <= offset <= box.span - half_width + 1e-9


_CONTAINS = {
    ("CIRCLE", "CIRCLE"): lambda a, b: _angle(a.centre.vec, b.centre.vec) + a.radius <= b.radius + _EPS,
    ("CIRCLE", "POLYGON"): lambda a, b: b.contains_point(a.centre) and all(
        _arc_distance(a.centre.vec, edge) >= a.radius - _EPS for edge in b.edges),
    ("CIRCLE", "BOX"): _circle_in_box,
    ("POLYGON", "CIRCLE"): lambda a, b: all(b.contains_vec(v) for v in a.vecs),
    ("POLYGON", "POLYGON"): lambda a, b: all(b.contains_vec(v) for v in a.vecs) and not any(
        _arcs_cross(ea, eb) for ea in a.edges for eb in b.edges),
    ("POLYGON", "BOX"): lambda a, b: (all(b.contains_point(p) for p in a.points)
                                      and not _edges_cross_box(a, b)),
    ("BOX", "BOX"): lambda a, b: (b.dec_min - 1e-9 <= a.dec_min and a.dec_max <= b.dec_max + 1e-9 and (
        b.full_ra or (not a.full_ra and b.ra_in_range(a.ra_min) and
                      (a.ra_min - b.ra_min) % 360.0 + a.span <= b.span + 1e-9))),
}


def contains(a, b):
    """Whether ``a`` lies inside ``b`` (ADQL ``CONTAINS(a, b)``)."""
    if a.kind == "POINT":
        return b.contains_point(a)
    if b.kind == "POINT":
        return a.kind == "CIRCLE" and a.radius == 0 and b.contains_point(a.centre)
    if (a.kind, b.kind) in _CONTAINS:
        return _CONTAINS[a.kind, b.kind](a, b)
    # A box inside a circle or polygon: its boundary, sampled every half degree.
    return all(b.contains_point(p) for p in a.boundary_points())


def great_circle_distance(ra1, dec1, ra2, dec2):
    """Great-circle distance in degrees (Vincenty's formula: exact at all separations)."""
    d1, d2, dra = dec1 * _RAD, dec2 * _RAD, (ra2 - ra1) * _RAD
    x = math.cos(d2) * math.sin(dra)
    y = math.cos(d1) * math.sin(d2) - math.sin(d1) * math.cos(d2) * math.cos(dra)
    z = math.sin(d1) * math.sin(d2) + math.cos(d1) * math.cos(d2) * math.cos(dra)
    return math.degrees(math.atan2(math.hypot(x, y), z))


# --- bounding caps ------------------------------------------------------------------------------



def bounding_cap(shape):
    """(centre unit vector, radius in radians) of a shape, or None for boxes."""
    if shape.kind == "POINT":
        return shape.vec, 0.0
    if shape.kind == "CIRCLE":
        return shape.centre.vec, shape.radius
    if shape.kind == "POLYGON":
        return shape.centre, shape.radius
    return None


def cap_values(text):
    """The hidden cap columns for one region value (None when it has no cap)."""
    try:
        shape = parse_region.__wrapped__(text)      # uncached: a full scan would only flush the cache
    except ValueError:
        return None
    cap = bounding_cap(shape)
    if cap is None or cap[1] > math.pi / 2:
        return None         # NULL caps: such rows always get the exact test
    (x, y, z), radius = cap
    dec, radius_deg = _dec_of((x, y, z)), math.degrees(radius)
    return (x, y, z, math.cos(radius), math.sin(radius), dec - radius_deg, dec + radius_deg)
