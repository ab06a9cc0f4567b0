"""CASDA's SIA2 rules (parameter whitelist, validation messages, OR/AND semantics, the
distance column) and the ADQL they produce, run on the emulator's TAP database."""
import pytest

from astroquery_casda_ext.emulator import schema
from astroquery_casda_ext.emulator.adql import TapDatabase
from astroquery_casda_ext.emulator.sia2_state import (
    DISTANCE_COLUMN, SIA2_PARAMETERS, UsageFault, build_sia2_query)

DATALINK_FORMAT = "application/x-votable+xml;content=datalink"


def square(ra, dec, half):
    return (f"POLYGON ICRS {ra - half} {dec - half} {ra + half} {dec - half} "
            f"{ra + half} {dec + half} {ra - half} {dec + half}")


def row(did, ra, dec, region, **extra):
    values = {"obs_publisher_did": did, "dataproduct_type": "cube", "calib_level": 2,
              "obs_collection": "RACS",
              "s_ra": ra, "s_dec": dec, "s_region": region, "s_fov": 2.0, "s_resolution": 0.003,
              "em_min": 0.2, "em_max": 0.21, "em_res_power": 1000.0, "t_min": 58001.0, "t_max": 58001.5,
              "t_exptime": 36000.0, "t_resolution": 10.0, "pol_states": "/I/", "facility_name": "ASKAP",
              "access_format": DATALINK_FORMAT, "target_name": "field A"}
    values.update(extra)
    return values


ROWS = [
    row("cube-1", 10.0, -45.0, square(10.0, -45.0, 1.0)),
    row("cube-10", 10.5, -45.0, square(10.5, -45.0, 1.0), em_min=0.25, em_max=0.26),
    row("cube-2", 0.0, 0.0, "POLYGON ICRS 359 -1 1 -1 1 1 359 1", obs_collection="VAST", em_min=0.19,
        em_max=0.2, pol_states="/I/Q/U/V/", t_min=58003.0, t_max=58004.0, s_fov=4.0),
    row("image-3", 100.0, 20.0, square(100.0, 20.0, 0.5), dataproduct_type="image", obs_collection="RACS-low",
        dataproduct_subtype="spectral.restored.mom0", target_name="Fornax's A"),
    row("visibility-4", 10.0, -45.0, square(10.0, -45.0, 3.0), dataproduct_type="visibility", calib_level=1,
        pol_states="/XX/YY/XY/YX/", em_min=0.19, em_max=0.22),
    row("catalogue-5", 10.0, -45.0, square(10.0, -45.0, 1.0), dataproduct_type=None,
        em_min=None, em_max=None),
    row("spectrum-6", 10.0, -45.0, square(10.0, -45.0, 0.01), dataproduct_type="spectrum"),
    row("cube-7", 50.0, 0.0, square(50.0, 0.0, 0.1), t_min=58010.0, t_max=58020.0),
]
IMAGING = ["cube-1", "cube-10", "cube-2", "cube-7", "image-3", "visibility-4"]


@pytest.fixture(scope="module")
def db():
    return TapDatabase([schema.obscore_table(ROWS)])


def search(db, params, **kwargs):
    """The obs_publisher_did of every row SIA2 returns for ``params``, sorted."""
    query = build_sia2_query(params)
    result = db.execute(query.adql, maxrec=query.maxrec, **kwargs)
    column = [c.name for c in result.columns].index("obs_publisher_did")
    return sorted(r[column] for r in result.rows)


def faults(params):
    with pytest.raises(UsageFault) as info:
        build_sia2_query(params)
    return info.value.messages


def fault(text):
    return f"UsageFault: {text}"


# --- parameter names --------------------------------------------------------------------------

def test_parameter_names_are_case_insensitive(db):
    query = build_sia2_query([("pos", "CIRCLE 10 -45 0.1"), ("Pos", "CIRCLE 0 0 0.1"), ("bAnD", "0.2")])
    assert query.query_string == "POS=CIRCLE 10 -45 0.1&POS=CIRCLE 0 0 0.1&BAND=0.2"
    assert search(db, [("pos", "CIRCLE 10 -45 0.1"), ("Pos", "CIRCLE 0 0 0.1")]) == [
        "cube-1", "cube-10", "cube-2", "visibility-4"]


@pytest.mark.parametrize("name", ["RUNID", "upload", "Lang", "QUERY", "POSITION", "dataproduct_type"])
def test_an_unknown_parameter_is_refused_alone(name):
    with pytest.raises(UsageFault) as info:
        build_sia2_query([("POS", "not a position"), (name, "x")])
    assert info.value.messages == [fault(f"Invalid parameter name {name.upper()}")]
    assert str(info.value) == info.value.casda_text == fault(f"Invalid parameter name {name.upper()}")


@pytest.mark.parametrize(("name", "value"), [
    ("POS", "CIRCLE 10 -45 1"), ("BAND", "0.2"), ("TIME", "58001.2"), ("POL", "I"), ("FOV", "1 3"),
    ("SPATRES", "0 0.01"), ("EXPTIME", "36000"), ("TIMERES", "10"), ("SPECRP", "1000"), ("CALIB", "2"),
    ("ID", "cube-1"), ("COLLECTION", "RACS"), ("FACILITY", "ASKAP"), ("INSTRUMENT", "x"), ("DPTYPE", "cube"),
    ("TARGET", "field A"), ("FORMAT", DATALINK_FORMAT), ("MAXREC", "10"), ("RESPONSEFORMAT", "votable"),
    ("REQUEST", "queryData"),
])
def test_every_casda_parameter_is_accepted_and_its_adql_runs(db, name, value):
    assert isinstance(search(db, [(name, value)]), list)


def test_sia2_parameter_order_is_casdas():
    assert SIA2_PARAMETERS[:4] == ("POS", "BAND", "FOV", "TIME") and SIA2_PARAMETERS[-1] == "REQUEST"


# --- POS --------------------------------------------------------------------------------------

def test_an_exponent_in_pos_is_invalid():
    """Python prints small floats with an exponent; CASDA refuses them (astroquery #3376)."""
    assert faults([("POS", "CIRCLE 50 2.3e-06 0.1")]) == [fault("Invalid POS value CIRCLE 50 2.3e-06 0.1")]


@pytest.mark.parametrize("pos", ["CIRCLE 50 0 0.1", "CIRCLE 50 0.000002 0.1", "CIRCLE 50.0 -0.0 0.1",
                                 "CIRCLE +50 +0.05 0.1"])
def test_fixed_point_positions_at_dec_zero_are_accepted(db, pos):
    assert search(db, [("POS", pos)]) == ["cube-7"]


@pytest.mark.parametrize(("pos", "messages"), [
    ("CIRCLE 361 0 1", ["Invalid longitude value. Valid range is [0,360]"]),
    ("CIRCLE -1 0 1", ["Invalid longitude value. Valid range is [0,360]"]),
    ("CIRCLE 10 -91 1", ["Invalid latitude value. Valid range is [-90,90]"]),
    ("CIRCLE 10 0 10.5", ["Invalid radius value. Valid range is [0,10]"]),
    ("CIRCLE 10 0 -1", ["Invalid radius value. Valid range is [0,10]"]),
    ("CIRCLE 400 100 20", ["Invalid longitude value. Valid range is [0,360]"]),   # first problem only
    ("CIRCLE  10 0 1", ["Invalid longitude value. Valid range is [0,360]"]),      # split on single spaces
    ("RANGE 400 500 0 1", ["Invalid longitude value. Valid range is [0,360]"] * 2),
    ("RANGE 0 10 -95 +Inf", ["Invalid latitude value. Valid range is [-90,90]"]),
    ("POLYGON 0 0 1 1 400 0", ["Invalid longitude value. Valid range is [0,360]"]),
    ("POLYGON 0 0 1 91 2 -91", ["Invalid latitude value. Valid range is [-90,90]"] * 2),
    ("CIRCLE 10 0", ["Invalid POS value CIRCLE 10 0"]),
    ("POLYGON 0 0 1 1", ["Invalid POS value POLYGON 0 0 1 1"]),
    ("circle 10 0 1", ["Invalid POS value circle 10 0 1"]),
    ("BOX 10 0 1 1", ["Invalid POS value BOX 10 0 1 1"]),
    ("RANGE 10 20 -Inf", ["Invalid POS value RANGE 10 20 -Inf"]),
    ("RANGE +Inf 20 0 1", ["Invalid POS value RANGE +Inf 20 0 1"]),
    ("CIRCLE 10,0,1", ["Invalid POS value CIRCLE 10,0,1"]),
    ("", ["Invalid POS value "]),
])
def test_pos_validation_messages(pos, messages):
    assert faults([("POS", pos)]) == [fault(m) for m in messages]


def test_range_becomes_a_box_centred_on_the_midpoints(db):
    query = build_sia2_query([("POS", "RANGE 5 15.5 -50 -40")])
    assert "INTERSECTS(BOX('ICRS GEOCENTER', 10.250000, -45.000000, 10.5, 10),s_region)=1" in query.adql
    assert search(db, [("POS", "RANGE 5 15.5 -50 -40")]) == ["cube-1", "cube-10", "visibility-4"]


@pytest.mark.parametrize("pos", ["RANGE 0 360 -Inf +Inf", "RANGE -Inf +Inf -Inf +Inf", "RANGE 0 +Inf -90 90"])
def test_open_ranges_cover_the_whole_sky(db, pos):
    query = build_sia2_query([("POS", pos)])
    assert "BOX('ICRS GEOCENTER', 180.000000, 0.000000, 360, 180)" in query.adql
    assert search(db, [("POS", pos)]) == IMAGING


def test_a_range_across_ra_zero_covers_the_other_side_as_at_casda(db):
    """CASDA centres the box on (350 + 10) / 2 = 180: RANGE 350 10 means RA 10..350."""
    assert search(db, [("POS", "RANGE 350 10 -5 5")]) == ["cube-7"]
    assert search(db, [("POS", "RANGE 0 10 -5 5")]) == ["cube-2"]


def test_polygon_search(db):
    assert search(db, [("POS", "POLYGON 358 -2 2 -2 2 2 358 2")]) == ["cube-2"]
    assert search(db, [("POS", "POLYGON 9.1 -45.2 9.2 -45.2 9.2 -45.1")]) == ["cube-1", "visibility-4"]


# --- the distance column ----------------------------------------------------------------------

def test_one_circle_puts_distance_first_and_sorts_on_it(db):
    query = build_sia2_query([("POS", "CIRCLE 10.6 -45 2")])
    assert query.adql.startswith("SELECT DISTANCE(POINT('ICRS GEOCENTER',s_ra,s_dec),"
                                 "POINT('ICRS GEOCENTER',10.6, -45)) as \"distance\", * FROM ivoa.obscore")
    assert query.adql.endswith(" ORDER BY 1 ASC")
    result = db.execute(query.adql)
    first = result.columns[0]
    assert (first.name, first.datatype, first.unit, first.ucd) == (
        "distance", "double", "deg", "pos.angDistance")
    assert [c.name for c in result.columns[1:]] == [c.name for c in schema.OBSCORE_COLUMNS]
    distances = [r[0] for r in result.rows]
    assert distances == sorted(distances)
    did = [c.name for c in result.columns].index("obs_publisher_did")
    assert [r[did] for r in result.rows] == ["cube-10", "cube-1", "visibility-4"]
    assert distances[0] == pytest.approx(0.1 * 0.7071, rel=1e-3)   # 0.1 deg of RA at Dec -45


def test_distance_column_definition_is_casdas():
    column = DISTANCE_COLUMN
    assert (column.name, column.unit, column.ucd) == ("distance", "deg", "pos.angDistance")
    assert DISTANCE_COLUMN.description.startswith("The angular distance of the centre of the parent image")


@pytest.mark.parametrize("positions", [
    ["RANGE 5 15 -50 -40"], ["POLYGON 9 -46 11 -46 11 -44"], ["CIRCLE 10 -45 1", "CIRCLE 0 0 1"],
    ["CIRCLE 10 -45 1", "POLYGON 9 -46 11 -46 11 -44"],
])
def test_no_distance_unless_exactly_one_circle(db, positions):
    query = build_sia2_query([("POS", pos) for pos in positions])
    assert query.adql.startswith("SELECT * FROM ivoa.obscore WHERE ") and "ORDER BY" not in query.adql
    assert db.execute(query.adql).columns == schema.OBSCORE_COLUMNS


# --- OR within a parameter, AND across parameters ---------------------------------------------

def test_repeated_values_are_ored_and_parameters_anded(db):
    both = [("POS", "CIRCLE 10 -45 0.1"), ("POS", "CIRCLE 0 0 0.1")]
    assert search(db, both) == ["cube-1", "cube-10", "cube-2", "visibility-4"]
    assert search(db, both + [("BAND", "0.205")]) == ["cube-1", "visibility-4"]
    assert search(db, both + [("BAND", "0.205"), ("BAND", "0.255")]) == ["cube-1", "cube-10", "visibility-4"]
    assert search(db, both + [("BAND", "0.205"), ("CALIB", "1")]) == ["visibility-4"]
    query = build_sia2_query(both + [("BAND", "0.205")])
    assert query.adql == (
        "SELECT * FROM ivoa.obscore WHERE "
        "((INTERSECTS(CIRCLE('ICRS GEOCENTER', 10, -45, 0.1),s_region)=1) OR "
        "(INTERSECTS(CIRCLE('ICRS GEOCENTER', 0, 0, 0.1),s_region)=1)) AND "
        "((em_min <= 0.205 AND em_max >= 0.205)) AND "
        "(dataproduct_type IN ('cube', 'image', 'visibility'))")


def test_only_images_cubes_and_visibilities_are_returned(db):
    assert search(db, []) == IMAGING
    assert search(db, [("ID", "catalogue-5")]) == [] and search(db, [("ID", "spectrum-6")]) == []


# --- numeric parameters -------------------------------------------------------------------------

@pytest.mark.parametrize(("band", "expected"), [
    ("0.205", ["cube-1", "cube-7", "image-3", "visibility-4"]),                  # contains the value
    ("0.15 0.195", ["cube-2", "visibility-4"]),                                  # overlaps the range
    ("-Inf 0.195", ["cube-2", "visibility-4"]),
    ("0.255 +Inf", ["cube-10"]),
    ("-Inf +Inf", IMAGING),
    ("2.05e-1", ["cube-1", "cube-7", "image-3", "visibility-4"]),
    ("0.15  0.195", ["cube-2", "visibility-4"]),
])
def test_band(db, band, expected):
    assert search(db, [("BAND", band)]) == expected


@pytest.mark.parametrize("band", ["2.05E-1", "-0.2", "+0.2", "0.3 0.2", "0.2 0.3 0.4", "0.2 -Inf", "abc",
                                  "1e"])
def test_invalid_band(band):
    assert faults([("BAND", band)]) == [fault(f"Invalid BAND value {band}")]


@pytest.mark.parametrize(("params", "expected"), [
    ([("FOV", "3 5")], ["cube-2"]),
    ([("FOV", "-Inf 2")], ["cube-1", "cube-10", "cube-7", "image-3", "visibility-4"]),
    ([("SPATRES", "0.003")], IMAGING),
    ([("EXPTIME", "40000 +Inf")], []),
    ([("CALIB", "1")], ["visibility-4"]),
    ([("TIMERES", "5 20")], IMAGING),
    ([("SPECRP", "999.5 1000.5")], IMAGING),
    ([("FOV", "")], IMAGING),     # an empty numeric value adds no constraint
])
def test_other_numeric_parameters(db, params, expected):
    assert search(db, params) == expected


def test_numeric_messages_name_the_parameter():
    assert faults([("FOV", "x"), ("calib", "2 1")]) == [
        fault("Invalid FOV value x"), fault("Invalid CALIB value 2 1")]


# --- TIME, POL, DPTYPE ------------------------------------------------------------------------

@pytest.mark.parametrize(("time", "expected"), [
    ("58001.2", ["cube-1", "cube-10", "image-3", "visibility-4"]),
    ("58000 58005", ["cube-1", "cube-10", "cube-2", "image-3", "visibility-4"]),
    ("58001.2 58001.3", []),            # two values: the product must lie within them
    ("58003.5 58030", ["cube-7"]),
])
def test_time_is_mjd_and_two_values_mean_containment(db, time, expected):
    assert search(db, [("TIME", time)]) == expected


@pytest.mark.parametrize(("times", "messages"), [
    (["2020-01-01"], ["Your query contained an invalid date format. This query accepts the MJD format, "
                      "e.g.\t55678.123456"]),
    (["x y"], ["Your query contained an invalid date format. This query accepts the MJD format, "
               "e.g.\t55678.123456"] * 2),
    (["1 2 3"], ["You have entered too many dates please no more than two dates (a starting date and an "
                 "ending date for the range in question)"]),
    (["5 4"], ["The first date in your query must be earlier (chronoligically) than the second"]),
    (["-Inf 5"], ["Your query contained an invalid date format. This query accepts the MJD format, "
                  "e.g.\t55678.123456"]),
    ([" "], ["Your query contained no dates. This query must contain either a single date or a minimum and a "
             "maximum date in the MJD format, e.g.\t55678.123456"]),
])
def test_time_validation_messages(times, messages):
    assert faults([("TIME", t) for t in times]) == [fault(m) for m in messages]


@pytest.mark.parametrize(("pols", "expected"), [
    (["I"], ["cube-1", "cube-10", "cube-2", "cube-7", "image-3"]),
    (["q"], ["cube-2"]),
    (["XX"], ["visibility-4"]),
    (["V", "YX"], ["cube-2", "visibility-4"]),
    (["RR"], []),
])
def test_pol(db, pols, expected):
    assert search(db, [("POL", p) for p in pols]) == expected


def test_invalid_pol():
    assert faults([("POL", "Z"), ("POL", "I")]) == [fault("Invalid POL value Z")]


@pytest.mark.parametrize(("dptype", "expected"), [
    ("cube", ["cube-1", "cube-10", "cube-2", "cube-7"]), ("image", ["image-3"]), ("IMAGE", ["image-3"]),
])
def test_dptype(db, dptype, expected):
    assert search(db, [("DPTYPE", dptype)]) == expected


@pytest.mark.parametrize("dptype", ["visibility", "spectrum", "", " cube"])
def test_dptype_is_only_image_or_cube(dptype):
    assert faults([("DPTYPE", dptype)]) == [fault(f"The value '{dptype}' is not valid for the DPTYPE. "
                                                  "The value must be one of the following: image or cube")]


# --- text parameters --------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "expected"), [
    ([("COLLECTION", "racs")], ["cube-1", "cube-10", "cube-7", "visibility-4"]),    # exact, any case
    ([("COLLECTION", "RAC")], []),                                                  # not a substring
    ([("COLLECTION", "racs-low"), ("COLLECTION", " VAST ")], ["cube-2", "image-3"]),
    ([("ID", "CUBE-1")], ["cube-1"]),                                               # not cube-10
    ([("ID", "cube-1"), ("ID", "cube-7")], ["cube-1", "cube-7"]),
    ([("FACILITY", "askap")], IMAGING),
    ([("INSTRUMENT", "ASKAP")], []),
    ([("TARGET", "Field A")], ["cube-1", "cube-10", "cube-2", "cube-7", "visibility-4"]),
    ([("FORMAT", "image/fits")], []),
    ([("FORMAT", DATALINK_FORMAT)], IMAGING),
])
def test_text_parameters_match_exactly_ignoring_case(db, params, expected):
    assert search(db, params) == expected


def test_a_quote_in_a_text_value_matches_nothing_as_at_casda(db):
    """CASDA writes each quote as four, so "Fornax's A" cannot match; the query still runs."""
    query = build_sia2_query([("TARGET", "Fornax's A")])
    assert "lower(target_name) = 'fornax''''s a'" in query.adql
    assert search(db, [("TARGET", "Fornax's A")]) == []
    assert search(db, [("TARGET", "x') OR ('1'='1")]) == []


# --- MAXREC -----------------------------------------------------------------------------------

def test_maxrec_limits_the_rows(db):
    query = build_sia2_query([("MAXREC", "2")])
    assert query.maxrec == 2
    result = db.execute(query.adql, maxrec=query.maxrec)
    assert len(result.rows) == 2 and result.overflow is True
    assert build_sia2_query([("maxrec", "0")]).maxrec == 0


@pytest.mark.parametrize(("values", "message"), [
    (["ten"], "The maximum amount of records is invalid. MAXREC must be a valid whole number"),
    (["-1"], "The maximum amount of records is invalid. MAXREC must be a valid whole number"),
    (["1.5"], "The maximum amount of records is invalid. MAXREC must be a valid whole number"),
    ([""], "The maximum amount of records is invalid. MAXREC must be a valid whole number"),
    (["1 2"], "Query can only contain a single MAXREC value"),
    (["1", "2"], "Query can only contain a single MAXREC value"),
])
def test_maxrec_must_be_one_whole_number(values, message):
    assert faults([("MAXREC", v) for v in values]) == [fault(message)]


def test_a_padded_maxrec_passes_validation_but_is_ignored_as_at_casda():
    assert build_sia2_query([("MAXREC", " 5")]).maxrec is None


# --- the echo and the error text ----------------------------------------------------------------

def test_query_string_echoes_the_request_in_casda_order():
    query = build_sia2_query([("MAXREC", "5"), ("band", "0.2 0.3"), ("RESPONSEFORMAT", "votable"),
                              ("request", "queryData"), ("POS", "CIRCLE 1 2 3"), ("POL", ""), ("pol", "I")])
    assert query.query_string == "POS=CIRCLE 1 2 3&BAND=0.2 0.3&POL=I&REQUEST=queryData"


def test_every_error_is_reported_in_parameter_order():
    with pytest.raises(UsageFault) as info:
        build_sia2_query([("MAXREC", "x"), ("DPTYPE", "spectrum"), ("BAND", "1E9"),
                          ("POS", "CIRCLE 10 2.3e-06 0.1")])
    messages = [fault("Invalid POS value CIRCLE 10 2.3e-06 0.1"), fault("Invalid BAND value 1E9"),
                fault("The value 'spectrum' is not valid for the DPTYPE. "
                      "The value must be one of the following: image or cube"),
                fault("The maximum amount of records is invalid. MAXREC must be a valid whole number")]
    assert info.value.messages == messages
    assert str(info.value) == "\r\n".join(messages)
    assert info.value.casda_text == "".join(m + "\r\n" for m in messages)
