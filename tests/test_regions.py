"""Input handling: positions, sizes, regions in CASDA's syntax, spectral ranges, source lists."""
import math
import re

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import QTable, Table

from astroquery_casda_ext.errors import (InvalidRegionError, InvalidSourceListError,
                                         InvalidSpectralRangeError)
from astroquery_casda_ext.regions import (SIA2_POL_STATES, Box, Circle, Polygon, band_string, format_number,
                                          make_regions, parse_band, parse_channel, parse_coordinates,
                                          parse_pol, parse_positions, parse_radius, read_source_list)

# CASDA's POS number syntax (siap2/PositionParamProcessor): fixed point, no exponent.
CASDA_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
HI_REST = 1420.405751768 * u.MHz


def assert_casda_numbers(text, keyword):
    parts = text.split(" ")
    assert parts[0] == keyword
    assert all(CASDA_NUMBER.fullmatch(p) for p in parts[1:]), text


# --- format_number ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (0.0, "0"), (-0.0, "0"), (-2.3e-6, "-0.0000023"), (2.3e-6, "0.0000023"), (12.5, "12.5"),
    (100, "100"), (333.90916666666664, "333.9091666667"), (1e-12, "0"), (np.float32(0.5), "0.5"),
    (-45.84180555555556, "-45.8418055556"), (1e20, "100000000000000000000"),
])
def test_format_number_is_fixed_point(value, text):
    assert format_number(value) == text


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -math.inf])
def test_format_number_refuses_non_finite(value):
    with pytest.raises(ValueError, match="finite"):
        format_number(value)


# --- parse_coordinates -----------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "22h15m38.2s -45d50m30.5s", "22:15:38.2 -45:50:30.5", "22 15 38.2 -45 50 30.5",
    "333.9091666667 -45.8418055556", "333.9091666667, -45.8418055556",
    ("22h15m38.2s", "-45d50m30.5s"), (333.9091666667, -45.8418055556),
    (333.9091666667 * u.deg, -45.8418055556 * u.deg), np.array([333.9091666667, -45.8418055556]),
    SkyCoord("22h15m38.2s -45d50m30.5s"),
])
def test_parse_coordinates_forms_agree(value):
    coord = parse_coordinates(value)
    assert coord.frame.name == "icrs" and coord.isscalar
    assert coord.ra.deg == pytest.approx(333.9091666667, abs=1e-8)
    assert coord.dec.deg == pytest.approx(-45.8418055556, abs=1e-8)


def test_parse_coordinates_converts_other_frames_to_icrs():
    galactic = SkyCoord(l=0 * u.deg, b=0 * u.deg, frame="galactic")
    coord = parse_coordinates(galactic)
    assert coord.frame.name == "icrs"
    assert coord.separation(galactic).arcsec < 1e-6
    assert coord.ra.deg == pytest.approx(266.40499, abs=1e-4)


def test_an_unresolvable_name_says_what_was_tried(monkeypatch):
    from astropy.coordinates.name_resolve import NameResolveError

    def from_name(name, *args, **kwargs):
        raise NameResolveError(f"Unable to find coordinates for name '{name}'")

    monkeypatch.setattr(SkyCoord, "from_name", from_name)
    with pytest.raises(InvalidRegionError) as err:
        parse_coordinates("M31")
    message = str(err.value)
    assert "'M31'" in message and "object name Sesame knows" in message and "22h15m38.2s" in message


def test_object_names_are_resolved_as_astroquery_does(monkeypatch):
    monkeypatch.setattr(SkyCoord, "from_name",
                        lambda name, *a, **k: SkyCoord(10.6847 * u.deg, 41.2688 * u.deg))
    assert parse_coordinates("NGC 224").ra.deg == pytest.approx(10.6847)
    assert parse_coordinates("M31").dec.deg == pytest.approx(41.2688)


def test_an_unreachable_name_resolver_is_a_service_error_not_bad_input(monkeypatch):
    """Offline, a name is not wrong: the resolver did not answer (the command line exits 6, not 2)."""
    from astropy.coordinates.name_resolve import NameResolveError
    from astroquery_casda_ext.errors import ServiceError

    def from_name(name, *args, **kwargs):
        raise NameResolveError("All Sesame queries failed. Unable to retrieve coordinates.")

    monkeypatch.setattr(SkyCoord, "from_name", from_name)
    with pytest.raises(ServiceError, match="'foo bar baz'.*did not answer") as info:
        parse_coordinates("foo bar baz")
    assert isinstance(info.value, InvalidRegionError)      # nothing was sent: still bad input to Python


@pytest.mark.parametrize("value, fragment", [
    ("400 -45", "RA 400.0"), ((10, 100), "Dec 100"), ((-1, 0), "RA -1"),
    (5, "5"), (None, "None"), ((1 * u.m, 2 * u.m), "angles"), ((float("nan"), 0), "finite"),
    ("", "''"),
])
def test_parse_coordinates_rejects_bad_values_naming_them(value, fragment):
    with pytest.raises(InvalidRegionError, match=re.escape(fragment)):
        parse_coordinates(value)


def test_parse_coordinates_wants_exactly_one_position():
    with pytest.raises(InvalidRegionError, match="parse_positions"):
        parse_coordinates(SkyCoord([1, 2] * u.deg, [3, 4] * u.deg))


# --- parse_positions -------------------------------------------------------------------------

def radec(coords):
    return [(round(float(c.ra.deg), 6), round(float(c.dec.deg), 6)) for c in coords]


@pytest.mark.parametrize("value", [
    [(10, -45), (20, -46)], ["10 -45", "20 -46"], [SkyCoord(10, -45, unit="deg"), "20 -46"],
    SkyCoord([10, 20] * u.deg, [-45, -46] * u.deg), np.array([[10, -45], [20, -46]]),
    [[10, -45], [20, -46]] * u.deg, Table({"RA": [10, 20], "Dec": [-45, -46]}),
    Table({"s_ra": [10, 20] * u.deg, "s_dec": [-45, -46] * u.deg}),
    QTable({"ra_deg_cont": [10, 20] * u.deg, "dec_deg_cont": [-45, -46] * u.deg}),
    Table({"RAJ2000": [10, 20], "DEJ2000": [-45, -46], "name": ["a", "b"]}),
    [SkyCoord([10] * u.deg, [-45] * u.deg), SkyCoord(20, -46, unit="deg")],
])
def test_parse_positions_many_forms(value):
    coords = parse_positions(value)
    assert coords.frame.name == "icrs" and coords.shape == (2,)
    assert radec(coords) == [(10, -45), (20, -46)]


@pytest.mark.parametrize("value", [(10, -45), "10 -45", SkyCoord(10, -45, unit="deg"),
                                   [10 * u.deg, -45 * u.deg]])
def test_parse_positions_single_position_is_an_array_of_one(value):
    coords = parse_positions(value)
    assert coords.shape == (1,) and radec(coords) == [(10, -45)]


def test_parse_positions_table_row_and_units():
    table = Table({"ra": [600, 1200] * u.arcmin, "dec": [-45, -46] * u.deg})
    assert radec(parse_positions(table[1])) == [(20, -46)]


@pytest.mark.parametrize("value, fragment", [
    ([], "no positions"), (Table({"x": [1], "y": [2]}), "no position columns"),
    (Table({"ra": [1.0], "dec": [2.0]}, masked=True), None), (np.array([[1, 2, 3]]), "shape"),
    ([(10, -45), (20, 95)], re.escape("Dec 95.0 in (20, 95)")),
    (Table({"ra": ["12:00:00"], "dec": ["-45:00:00"]}), "text"),
    (Table({"ra": [1.0] * u.m, "dec": [2.0] * u.deg}), "not an angle"), (object(), "cannot read"),
])
def test_parse_positions_rejects(value, fragment):
    if fragment is None:        # a masked (empty) cell
        value["ra"].mask[0] = True
        fragment = "masked"
    with pytest.raises(InvalidRegionError, match=fragment):
        parse_positions(value)


def test_parse_positions_names_the_bad_entry_of_an_array():
    with pytest.raises(InvalidRegionError, match=re.escape("position 1 (ra=20.0, dec=95.0)")):
        parse_positions(np.array([[10, -45], [20, 95]]))


def test_parse_positions_reads_a_source_list_file(tmp_path):
    path = tmp_path / "sources.txt"
    path.write_text("10 -45\n20 -46\n")
    assert radec(parse_positions(path)) == [(10, -45), (20, -46)]
    assert radec(parse_positions(str(path))) == [(10, -45), (20, -46)]


def test_parse_positions_missing_path_object_is_a_source_list_error(tmp_path):
    with pytest.raises(InvalidSourceListError, match="missing.txt"):
        parse_positions(tmp_path / "missing.txt")


# --- read_source_list ------------------------------------------------------------------------

# casda-samples/source_list.txt (three formats, comments, blank lines), plus a header and trailing comments.
SAMPLE_LIST = """RA,Dec
# Selection of larger islands
22:27:53.6\t    -60:22:23
22:57:58.5\t    -62:10:17   # trailing comment

# Format can also be decimal degrees
347.412945\t-57.052741
346.187705, -60.121096

# Or with type separators
22h34m32.4s\t    -60d12m32s
22 33 18.3 -62 49 12
"""


def test_read_source_list_in_the_casda_sample_scripts_format(tmp_path):
    path = tmp_path / "source_list.txt"
    path.write_text(SAMPLE_LIST)
    coords = read_source_list(path)
    assert coords.shape == (6,) and coords.frame.name == "icrs"
    expected = SkyCoord(["22h27m53.6s -60d22m23s", "22h57m58.5s -62d10m17s", "22h34m32.4s -60d12m32s",
                         "22h33m18.3s -62d49m12s"])
    assert coords[0].separation(expected[0]).arcsec < 1e-6
    assert coords[1].separation(expected[1]).arcsec < 1e-6
    assert (coords[2].ra.deg, coords[2].dec.deg) == (347.412945, -57.052741)
    assert (coords[3].ra.deg, coords[3].dec.deg) == (346.187705, -60.121096)
    assert coords[4].separation(expected[2]).arcsec < 1e-6
    assert coords[5].separation(expected[3]).arcsec < 1e-6


@pytest.mark.parametrize("text, line, fragment", [
    ("10 -45\nRA Dec\n", 2, "cannot read"),     # a header is only allowed first
    ("10 -45\n20 -95\n", 2, "Dec -95"),
    ("10 -45\n10 -45 7\n", 2, "got 3 fields"),
    ("# c\n\n10\n", 3, "got 1 fields"),
    ("abc 12\n", 1, "cannot read"),
])
def test_read_source_list_names_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(InvalidSourceListError) as err:
        read_source_list(path)
    assert str(path) in str(err.value) and f"line {line}:" in str(err.value)
    assert fragment in str(err.value)


def test_read_source_list_unreadable_or_empty(tmp_path):
    with pytest.raises(InvalidSourceListError, match="cannot read source list .*nope.txt"):
        read_source_list(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only comments\n\nRA Dec\n")
    with pytest.raises(InvalidSourceListError, match="holds no positions"):
        read_source_list(empty)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(InvalidSourceListError, match="cannot read source list"):
        read_source_list(binary)


# --- parse_radius ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, degrees", [
    ("1 arcmin", 1 / 60), (0.5 * u.deg, 0.5), (30 * u.arcsec, 30 / 3600), (2, 2.0), (np.float64(10), 10.0),
])
def test_parse_radius_accepts_angles_and_plain_degrees(value, degrees):
    radius = parse_radius(value)
    assert radius.unit == u.deg and radius.value == pytest.approx(degrees)


@pytest.mark.parametrize("value, fragment", [
    (-1, "-1"), (0, "greater than 0"), (float("nan"), "nan"), (10.5, "at most 10"), (11 * u.deg, "11"),
    ("5 m", "not an angle"), ("wide", "not an angle"), (True, "not an angle"), (None, "not an angle"),
])
def test_parse_radius_rejects_with_the_value(value, fragment):
    with pytest.raises(InvalidRegionError, match=fragment):
        parse_radius(value)


def test_parse_radius_other_limits_and_names():
    assert parse_radius(40, name="width", max_deg=360).value == 40
    with pytest.raises(InvalidRegionError, match="^height 200 .* at most 180 degrees"):
        parse_radius(200, name="height", max_deg=180)


# --- regions ---------------------------------------------------------------------------------

def test_default_circle_is_one_arcmin_in_fixed_point():
    (circle,) = make_regions("333.9 -45.8")
    assert circle == Circle(333.9, -45.8, 1 / 60)
    assert circle.sia2_pos() == "CIRCLE 333.9 -45.8 0.0166666667"
    assert circle.soda_params() == {"POS": "CIRCLE 333.9 -45.8 0.0166666667"}
    assert circle.center.separation(SkyCoord(333.9, -45.8, unit="deg")).arcsec < 1e-9


@pytest.mark.parametrize("position", ["0 0", (1e-7, -2.3e-6), (359.9999999, 1e-9), "0 -90"])
def test_positions_at_zero_give_fixed_point_numbers(position):
    (circle,) = make_regions(position, radius=1e-5)
    assert_casda_numbers(circle.sia2_pos(), "CIRCLE")
    assert "e" not in circle.soda_params()["POS"].removeprefix("CIRCLE")


def test_dec_zero_and_ra_zero_exactly():
    assert make_regions((0, 0), radius=0.5)[0].sia2_pos() == "CIRCLE 0 0 0.5"
    assert make_regions((12.5, -2.3e-6), radius=0.5)[0].sia2_pos() == "CIRCLE 12.5 -0.0000023 0.5"


def test_box_width_is_an_on_sky_angle():
    (box,) = make_regions("10 -60", width=1, height=2)
    (low, high), = box.ra_ranges
    assert high - low == pytest.approx(2.0)          # 1 degree / cos(60 deg)
    assert box.dec_range == (-61.0, -59.0)
    assert box.sia2_pos() == "RANGE 9 11 -61 -59"
    assert box.soda_params() == {"POS": "RANGE 9 11 -61 -59"}
    (equator,) = make_regions("10 0", width="30 arcmin", height="30 arcmin")
    assert equator.sia2_pos() == "RANGE 9.75 10.25 -0.25 0.25"


@pytest.mark.parametrize("center, expected", [
    ("359.9 0", ["RANGE 359.4 360 -0.5 0.5", "RANGE 0 0.4 -0.5 0.5"]),
    ("0.2 0", ["RANGE 359.7 360 -0.5 0.5", "RANGE 0 0.7 -0.5 0.5"]),
])
def test_box_across_ra_zero_is_split_in_two_ranges(center, expected):
    (box,) = make_regions(center, width=1, height=1)
    assert box.sia2_values() == expected
    for value in expected:
        assert_casda_numbers(value, "RANGE")
    with pytest.raises(InvalidRegionError, match="sia2_values"):
        box.sia2_pos()


def test_box_across_ra_zero_is_one_polygon_for_soda():
    (box,) = make_regions("359.9 0", width=1, height=1)
    polygon = box.soda_params()["POLYGON"]
    assert_casda_numbers("POLYGON " + polygon, "POLYGON")
    assert polygon == "359.4 -0.5 359.9 -0.5 0.4 -0.5 0.4 0.5 359.9 0.5 359.4 0.5"


def test_box_reaching_a_pole_spans_every_ra_and_is_clipped():
    (box,) = make_regions("10 89.5", width=1, height=2)
    assert box.sia2_pos() == "RANGE 0 360 88.5 90"
    (wide,) = make_regions("10 80", width=120, height=2)      # 120 / cos(80) > 360
    assert wide.ra_ranges == ((0.0, 360.0),)


def test_polygon_from_many_forms():
    expected = Polygon(((10.0, -45.0), (11.0, -45.0), (11.0, -44.0)))
    for vertices in ([(10, -45), (11, -45), (11, -44)], [10, -45, 11, -45, 11, -44],
                     ["10 -45", "11 -45", "11 -44"], SkyCoord([10, 11, 11], [-45, -45, -44], unit="deg")):
        assert make_regions(polygon=vertices) == [expected]
    assert expected.sia2_pos() == "POLYGON 10 -45 11 -45 11 -44"
    assert expected.soda_params() == {"POLYGON": "10 -45 11 -45 11 -44"}
    assert expected.center.separation(SkyCoord(10.667, -44.667, unit="deg")).deg < 0.01


@pytest.mark.parametrize("vertices, fragment", [
    ([(10, -45), (11, -45)], "3 distinct"), ([(10, -45), (10, -45), (11, -44)], "3 distinct"),
    ([(10, -45), (11, -95), (11, -44)], re.escape("Dec -95.0 in (11, -95)")),
])
def test_polygon_rejects(vertices, fragment):
    with pytest.raises(InvalidRegionError, match=fragment):
        make_regions(polygon=vertices)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(coordinates="1 2", width=1), "both width and height"),
    (dict(coordinates="1 2", radius=1, width=1, height=1), "either radius"),
    (dict(radius=1), "need coordinates"),
    (dict(coordinates="1 2", polygon=[(1, 2), (2, 2), (2, 3)]), "cannot be combined"),
    (dict(coordinates="1 2", radius=-1), "radius -1"),
    (dict(coordinates="1 2", radius=20), "at most 10"),
    (dict(coordinates="1 2", width=400, height=1), "width 400"),
])
def test_make_regions_rejects_conflicts(kwargs, fragment):
    with pytest.raises(InvalidRegionError, match=fragment):
        make_regions(**kwargs)


def test_make_regions_one_per_position_and_nothing_for_nothing():
    assert make_regions() == []
    circles = make_regions(["10 -45", "20 -46"], radius="6 arcmin")
    assert [c.sia2_pos() for c in circles] == ["CIRCLE 10 -45 0.1", "CIRCLE 20 -46 0.1"]


@pytest.mark.parametrize("cls, args", [
    (Circle, (400, 0, 1)), (Circle, (0, 0, 11)), (Circle, (0, 0, "1 arcmin")), (Box, (0, 91, 1, 1)),
    (Box, (0, 0, 1, 0)), (Polygon, ((1, 2, 3),)),
])
def test_region_constructors_validate(cls, args):
    with pytest.raises(InvalidRegionError):
        cls(*args)


def test_regions_are_hashable_values():
    assert len({Circle(1, 2, 0.1), Circle(1, 2, 0.1), Box(1, 2, 1, 1)}) == 2


# --- band ------------------------------------------------------------------------------------

def test_band_wavelengths_frequencies_and_order():
    assert parse_band((21 * u.cm, 22 * u.cm)) == (pytest.approx(0.21), pytest.approx(0.22))
    assert parse_band((22 * u.cm, 21 * u.cm)) == (pytest.approx(0.21), pytest.approx(0.22))
    low, high = parse_band((1.3 * u.GHz, 1400 * u.MHz))
    assert low == pytest.approx(0.2141374, rel=1e-6) and high == pytest.approx(0.2306096, rel=1e-6)
    assert parse_band(["1.3 GHz", "1.4 GHz"]) == (pytest.approx(low), pytest.approx(high))


def test_band_open_ends_swap_with_frequency():
    assert parse_band((None, 1.4 * u.GHz)) == (pytest.approx(0.2141375, rel=1e-6), None)
    assert parse_band((1.4 * u.GHz, None)) == (None, pytest.approx(0.2141375, rel=1e-6))
    assert parse_band((21 * u.cm, None)) == (pytest.approx(0.21), None)


def test_band_velocities_need_a_rest_frequency():
    low, high = parse_band((-100 * u.km / u.s, 100 * u.km / u.s), rest_frequency=HI_REST)
    rest_wavelength = HI_REST.to_value(u.m, equivalencies=u.spectral())
    assert low < rest_wavelength < high
    assert (high - low) / rest_wavelength == pytest.approx(200 / 299792.458, rel=1e-3)
    with pytest.raises(InvalidSpectralRangeError, match="rest_frequency"):
        parse_band((-100 * u.km / u.s, 100 * u.km / u.s))
    with pytest.raises(InvalidSpectralRangeError, match="not a frequency"):
        parse_band((0 * u.km / u.s, 1 * u.km / u.s), rest_frequency=3 * u.s)


@pytest.mark.parametrize("band, fragment", [
    ((1.3 * u.GHz, 22 * u.cm), "mixes frequency and wavelength"),
    ((1 * u.s, 2 * u.s), "not a wavelength, frequency or velocity"),
    ((1.3, 1.4), "with units"), ((None, None), "constrains nothing"), ((1 * u.GHz,), "2 values"),
    ((1, 2, 3) * u.GHz, "2 values"), ("1.4 GHz", "2 values"), ((0 * u.GHz, 1 * u.GHz), "no positive"),
    ((-1 * u.m, 1 * u.m), "no positive"), ((np.inf * u.GHz, None), "not finite"),
    (("banana", None), "with units"), ((5e5 * u.km / u.s, None), "no positive"),
])
def test_band_rejects(band, fragment):
    with pytest.raises(InvalidSpectralRangeError, match=fragment):
        parse_band(band, rest_frequency=HI_REST)


def test_band_string_is_casdas_syntax():
    assert band_string(0.21, 0.22) == "0.21 0.22"
    assert band_string(None, 0.22) == "-Inf 0.22"
    assert band_string(0.21, None) == "0.21 +Inf"
    assert band_string(2.3e-6, 1) == "0.0000023 1.0"
    assert band_string(0.19986163866666667, 0.21112144929577467) == \
        "0.19986163866666667 0.21112144929577467"   # as astroquery.casda writes them: exactly


# --- channel and pol -------------------------------------------------------------------------

@pytest.mark.parametrize("channel, expected", [
    ((1, 10), (1, 10)), ([10, 3], (3, 10)), (np.array([5, 5]), (5, 5)), ((np.int32(2), np.int64(7)), (2, 7)),
])
def test_channel_two_integers_sorted(channel, expected):
    assert parse_channel(channel) == expected


@pytest.mark.parametrize("channel, fragment", [
    ((1.0, 2.0), "not an integer"), ((True, 2), "not an integer"), (("1", "2"), "not an integer"),
    ((1, 2, 3), "2 integers"),
    (5, "2 integers"), ("12", "2 integers"), ((0, 5), "from 1"), ((-3, 5), "from 1"),
])
def test_channel_rejects(channel, fragment):
    with pytest.raises(InvalidSpectralRangeError, match=fragment):
        parse_channel(channel)


@pytest.mark.parametrize("pol, expected", [
    ("I", ["I"]), (["Q", "U"], ["Q", "U"]), ("IQUV", ["I", "Q", "U", "V"]), ("q u", ["Q", "U"]),
    (["I", "I", "V"], ["I", "V"]),
])
def test_pol_stokes(pol, expected):
    assert parse_pol(pol) == expected


def test_pol_sia2_states():
    assert parse_pol("RR LL", allowed=SIA2_POL_STATES) == ["RR", "LL"]
    assert parse_pol(["XX", "POLI"], allowed=SIA2_POL_STATES) == ["XX", "POLI"]


@pytest.mark.parametrize("pol, fragment", [("RR", "RR"), ("X", "X"), ("", "nothing"), (5, "string"),
                                           ([1, 2], "string")])
def test_pol_rejects(pol, fragment):
    with pytest.raises(InvalidSpectralRangeError, match=fragment):
        parse_pol(pol)


@pytest.mark.parametrize("path", ["/no/such/sources.txt", "sources.csv", "./dir/list"])
def test_a_missing_source_list_given_as_a_string_says_so(path):
    with pytest.raises(InvalidSourceListError, match="does not exist"):
        parse_positions(path)


def test_a_number_written_as_text_is_degrees_as_a_number_is():
    """The command line passes '0.5'; Python passes 0.5: both are half a degree."""
    assert parse_radius("0.5") == parse_radius(0.5) == 0.5 * u.deg
    assert parse_radius(" 0.02 ").to_value(u.arcsec) == pytest.approx(72)
