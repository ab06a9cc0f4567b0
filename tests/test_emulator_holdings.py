"""The emulator's synthetic ASKAP holdings: files, sidecars, sky model and table rows."""
import json
import math
import tracemalloc
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astroquery_casda_ext.checksum import checksum_of_file, parse_checksum
from astroquery_casda_ext.emulator.sidecars import write_file
from astroquery_casda_ext.emulator.holdings import (
    EMBARGO_DATE, MANIFEST_NAME, SPEED_OF_LIGHT, HoldingsConfig, build_holdings, polarised_source,
    spectral_line_source, variable_source_fluxes)

OBSCORE_KEYS = {
    "dataproduct_type", "calib_level", "obs_collection", "obs_id", "obs_publisher_did", "access_url",
    "access_format", "access_estsize", "target_name", "s_ra", "s_dec", "s_fov", "s_region", "s_resolution",
    "t_min", "t_max", "t_exptime", "t_resolution", "em_min", "em_max", "em_res_power", "o_ucd", "pol_states",
    "facility_name", "instrument_name", "dataproduct_subtype", "em_ucd", "em_unit", "em_resolution",
    "s_resolution_min", "s_resolution_max", "s_ucd", "s_unit", "obs_release_date", "quality_level",
    "thumbnail_id", "filename", "em_xel", "s_xel1", "s_xel2", "t_xel", "pol_xel",
}
COMPONENT_KEYS = {
    "catalogue_id", "first_sbid", "other_sbids", "project_id", "island_id", "component_id", "component_name",
    "ra_hms_cont", "dec_dms_cont", "ra_deg_cont", "dec_deg_cont", "ra_err", "dec_err", "freq", "flux_peak",
    "flux_peak_err", "flux_int", "flux_int_err", "maj_axis", "min_axis", "pos_ang", "spectral_index",
    "rms_image", "has_siblings", "released_date", "sbid",
}
OBSERVATION_KEYS = {"sbid", "obs_start", "obs_end", "obs_start_mjd", "obs_end_mjd", "telescope",
                    "obs_program", "project_code", "released_date"}


def test_sidecars_are_written_as_other_programs_write_them(tmp_path):
    """The emulator's own ``.checksum`` writer against CASDA's example and a sidecar written by
    ``crc32`` and ``sha1sum`` (tests/data/README.md)."""
    sample = Path(__file__).parent / "data" / "checksum_sample.bin"
    data = sample.read_bytes()
    stored = write_file(tmp_path / "copy.bin", [data[:1000], data[1000:]])
    assert (tmp_path / "copy.bin.checksum").read_bytes() == Path(f"{sample}.checksum").read_bytes()
    assert (stored.size, stored.checksum) == (len(data), Path(f"{sample}.checksum").read_text())
    write_file(tmp_path / "blah", [b"blah ", b"blah"])
    assert (tmp_path / "blah.checksum").read_text() == "f412535a 135a1e01bae742c4a576b20fd41a683f6483ca43 9"
    write_file(tmp_path / "empty", [])
    assert (tmp_path / "empty.checksum").read_text() == "00000000 da39a3ee5e6b4b0d3255bfef95601890afd80709 0"


@pytest.fixture(scope="module")
def holdings(tmp_path_factory):
    return build_holdings(tmp_path_factory.mktemp("holdings"))


def products_of(holdings, *, sbid=None, subtype=None):
    return [p for p in holdings.products if (sbid is None or p.sbid == sbid)
            and (subtype is None or p.obscore["dataproduct_subtype"] == subtype)]


def restored_image(holdings, sbid):
    (product,) = products_of(holdings, sbid=sbid, subtype="cont.restored.t0")
    return product


def pixel_value(path, ra, dec, stokes=0, channel=0):
    with fits.open(path) as hdul:
        x, y = WCS(hdul[0].header).celestial.world_to_pixel_values(ra, dec)
        return float(hdul[0].data[stokes, channel, round(float(y)), round(float(x))]), float(x), float(y)


# --- files ---------------------------------------------------------------------------------------

def test_two_builds_are_identical(holdings, tmp_path):
    """A fresh build in another directory writes byte-identical files and identical rows."""
    again = build_holdings(tmp_path)
    assert [p.checksum for p in again.products] == [p.checksum for p in holdings.products]
    assert [p.obscore for p in again.products] == [p.obscore for p in holdings.products]
    assert again.components == holdings.components
    assert again.observations == holdings.observations


def test_every_file_matches_its_sidecar(holdings):
    for product in holdings.products:
        sidecar = product.path.with_name(product.path.name + ".checksum").read_bytes()
        assert not sidecar.endswith(b"\n")
        _, actual = checksum_of_file(product.path)
        assert str(actual) == sidecar.decode() == product.checksum
        assert actual.size == product.size == product.path.stat().st_size


def test_default_holdings_are_small(holdings):
    assert sum(p.size for p in holdings.products) < 30_000_000


def test_rebuild_reuses_files_recorded_in_the_manifest(tmp_path):
    first = build_holdings(tmp_path)
    stamps = {p.product_id: p.path.stat().st_mtime_ns for p in first.products}
    second = build_holdings(tmp_path)
    assert {p.product_id: p.path.stat().st_mtime_ns for p in second.products} == stamps
    assert [p.checksum for p in second.products] == [p.checksum for p in first.products]
    assert [p.obscore for p in second.products] == [p.obscore for p in first.products]
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["config"]["seed"] == 609


def test_damaged_or_differently_configured_files_are_regenerated(tmp_path):
    first = build_holdings(tmp_path)
    victim = first.product("cube-1001")
    victim.path.write_bytes(victim.path.read_bytes()[:1000])
    again = build_holdings(tmp_path)
    assert str(checksum_of_file(victim.path)[1]) == again.product("cube-1001").checksum == victim.checksum

    changed = build_holdings(tmp_path, HoldingsConfig(cube_channels=16))
    cube = changed.product("cube-1004")
    assert fits.getheader(cube.path)["NAXIS3"] == 16
    assert str(checksum_of_file(cube.path)[1]) == cube.checksum != first.product("cube-1004").checksum


def test_staged_names_follow_casda(holdings):
    product = restored_image(holdings, 609)
    assert product.filename == "image.i.SB609.cont.taylor.0.restored.fits"
    assert product.staged_name == "observations-609-image_cubes-image.i.SB609.cont.taylor.0.restored.fits"
    assert product.path.name == product.filename


def test_product_lookup_is_case_insensitive(holdings):
    assert holdings.product("CUBE-1001") is holdings.product("cube-1001")
    with pytest.raises(KeyError):
        holdings.product("cube-999999")


@pytest.mark.parametrize("config", [HoldingsConfig(image_pixels=16), HoldingsConfig(cube_channels=1),
                                    HoldingsConfig(bulk_count=1, bulk_size=100)])
def test_impossible_configurations_are_refused(tmp_path, config):
    with pytest.raises(ValueError):
        build_holdings(tmp_path, config)


# --- the FITS files ---------------------------------------------------------------------------------

def test_continuum_images_are_4d_askap_images(holdings):
    for product in holdings.products:
        if product.kind != "continuum":
            continue
        with fits.open(product.path) as hdul:
            header, data = hdul[0].header, hdul[0].data
            wcs = WCS(header)
        assert data.shape == (1, 1, 192, 192) and data.dtype.kind == "f"
        assert list(wcs.wcs.ctype) == ["RA---SIN", "DEC--SIN", "FREQ", "STOKES"]
        assert header["CRVAL4"] == 1
        coverage = 192 * abs(header["CDELT1"])
        assert 0.3 <= coverage <= 1.0 and 2.0 <= abs(header["CDELT1"]) * 3600 <= 12.0
        assert header["BMAJ"] >= header["BMIN"] > 2 * abs(header["CDELT1"])
        if product.obscore["dataproduct_subtype"] != "cont.weight.t0":
            assert header["BUNIT"] == "Jy/beam"
        ra, dec = wcs.celestial.pixel_to_world_values(header["CRPIX1"] - 1, header["CRPIX2"] - 1)
        assert (float(ra), float(dec)) == pytest.approx((product.obscore["s_ra"], product.obscore["s_dec"]))


def test_sources_peak_at_their_catalogue_positions(holdings):
    rows = defaultdict(list)
    for row in holdings.components:
        rows[row["sbid"]].append(row)
    assert len(rows) >= 7
    for sbid, components in rows.items():
        assert 15 <= len(components) <= 30
        assert any(c["flux_peak"] > 500 for c in components)
        assert np.median([c["flux_peak"] for c in components]) < 200
        path = restored_image(holdings, sbid).path
        for component in components:
            value, x, y = pixel_value(path, component["ra_deg_cont"], component["dec_deg_cont"])
            assert abs(x - round(x)) < 1e-6 and abs(y - round(y)) < 1e-6
            assert value * 1000 == pytest.approx(component["flux_peak"], abs=5 * component["rms_image"])


def test_component_rows(holdings):
    for row in holdings.components:
        assert set(row) == COMPONENT_KEYS
        assert row["first_sbid"] == row["sbid"]
        assert row["component_name"].startswith("J") and len(row["component_name"]) == 14
        sign = row["component_name"][7]
        assert sign == ("-" if row["dec_deg_cont"] < 0 else "+")
        hours, minutes, seconds = (float(v) for v in row["ra_hms_cont"].split(":"))
        assert (hours + minutes / 60 + seconds / 3600) * 15 == pytest.approx(row["ra_deg_cont"], abs=1e-4)
    names = [(r["sbid"], r["component_name"]) for r in holdings.components]
    assert len(names) == len(set(names))


def test_spectral_line_cube(holdings):
    for product in products_of(holdings, subtype="spectral.restored.3d"):
        line = spectral_line_source(product.sbid)
        with fits.open(product.path) as hdul:
            header, data = hdul[0].header, hdul[0].data
        assert data.shape == (1, 32, 48, 48)
        assert header["CTYPE3"] == "FREQ" and header["CUNIT3"] == "Hz"
        freqs = header["CRVAL3"] + (np.arange(32) + 1 - header["CRPIX3"]) * header["CDELT3"]
        assert 1.3e9 < freqs.min() < freqs.max() < 1.5e9
        value, x, y = pixel_value(product.path, line["ra"], line["dec"], channel=line["channel"] - 1)
        spectrum = data[0, :, round(y), round(x)]
        assert int(np.argmax(spectrum)) + 1 == line["channel"]
        assert freqs[line["channel"] - 1] == pytest.approx(line["frequency"])
        assert spectrum.max() == pytest.approx(line["peak"], abs=0.01)


def test_polarisation_cube_rotates_with_wavelength_squared(holdings):
    for product in products_of(holdings, subtype="cont.restored.4d"):
        source = polarised_source(product.sbid)
        with fits.open(product.path) as hdul:
            header, data = hdul[0].header, hdul[0].data
            x, y = WCS(header).celestial.world_to_pixel_values(source["ra"], source["dec"])
        assert data.shape == (4, 8, 48, 48)
        assert header["CTYPE4"] == "STOKES" and header["CRVAL4"] == 1 and header["CDELT4"] == 1
        assert product.obscore["pol_states"] == "/I/Q/U/V/" and product.obscore["pol_xel"] == 4
        i, q, u, v = (data[s, :, round(float(y)), round(float(x))].astype(float) for s in range(4))
        freqs = header["CRVAL3"] + np.arange(8) * header["CDELT3"]
        expected = 2 * (source["angle0"] + source["rotation_measure"] * (SPEED_OF_LIGHT / freqs) ** 2)
        measured = np.arctan2(u, q)
        assert np.allclose(np.angle(np.exp(1j * (measured - expected))), 0, atol=0.05)
        assert np.hypot(q, u) / i == pytest.approx(np.full(8, source["fraction"]), abs=0.01)
        assert np.ptp(expected) > 1.0          # the angle really turns across the band
        assert np.all(np.abs(v) < 0.01 * i)


# --- table rows ---------------------------------------------------------------------------------------

def test_obscore_rows(holdings):
    for product in holdings.products:
        row = product.obscore
        assert set(row) == OBSCORE_KEYS
        json.dumps(row)       # plain Python values only
        assert row["obs_publisher_did"] == product.product_id == f"cube-{product.numeric_id}"
        assert row["access_url"] == f"#{{baseUrl}}datalink/links?ID={product.product_id}"
        assert row["access_format"] == "application/x-votable+xml;content=datalink"
        assert row["access_estsize"] == math.ceil(product.size / 1024)
        assert row["dataproduct_type"] == "cube" and row["calib_level"] == 2
        assert row["obs_id"] == str(product.sbid) and row["filename"] == product.filename
        assert row["facility_name"] == "ASKAP" and row["em_unit"] == "m" and row["s_unit"] == "deg"
        assert 0.1 < row["em_min"] < row["em_max"] < 0.5
        assert row["t_min"] < row["t_max"] and row["t_exptime"] == pytest.approx(
            (row["t_max"] - row["t_min"]) * 86400)
        assert row["quality_level"] in ("GOOD", "UNCERTAIN")
        assert row["obs_release_date"] == (product.release_date or None)


def test_s_region_is_the_image_footprint(holdings):
    product = restored_image(holdings, 609)
    words = product.obscore["s_region"].split()
    assert words[:2] == ["POLYGON", "ICRS"] and len(words) == 10
    corners = np.array(words[2:], dtype=float).reshape(4, 2)
    with fits.open(product.path) as hdul:
        wcs = WCS(hdul[0].header).celestial
    pixels = np.array(wcs.world_to_pixel_values(corners[:, 0], corners[:, 1])).T
    assert pixels == pytest.approx(np.array([[-0.5, -0.5], [191.5, -0.5], [191.5, 191.5], [-0.5, 191.5]]))
    assert corners[:, 0].min() < product.obscore["s_ra"] < corners[:, 0].max()


def test_observation_rows(holdings):
    assert {row["sbid"] for row in holdings.observations} >= {609, 2338, 11000}
    for row in holdings.observations:
        assert set(row) == OBSERVATION_KEYS and row["telescope"] == "ASKAP"
        assert row["obs_start"].endswith("Z") and row["obs_start_mjd"] < row["obs_end_mjd"]


def test_three_scheduling_blocks_have_every_kind_of_product(holdings):
    full = [sbid for sbid in {p.sbid for p in holdings.products}
            if {"cont.restored.t0", "spectral.restored.3d", "cont.restored.4d"}
            <= {p.obscore["dataproduct_subtype"] for p in products_of(holdings, sbid=sbid)}
            and {"cont.noise.t0", "cont.weight.t0"}
            & {p.obscore["dataproduct_subtype"] for p in products_of(holdings, sbid=sbid)}]
    assert 609 in full and len(full) >= 3


def test_projects(holdings):
    projects = {p["project_code"]: p for p in holdings.projects}
    assert projects["AS110"]["short_name"] == "The Rapid ASKAP Continuum Survey"
    assert "AS101" in projects and any("VAST" in p["short_name"] for p in projects.values())
    embargoed = [code for code, p in projects.items() if p["embargoed"]]
    assert len(embargoed) == 1 and embargoed[0] in holdings.member_projects
    collections = {p.obscore["obs_collection"] for p in holdings.products}
    assert collections <= {p["short_name"] for p in holdings.projects}


def test_embargoed_and_unreleased_products(holdings):
    embargoed_project = next(p["project_code"] for p in holdings.projects if p["embargoed"])
    embargoed = [p for p in holdings.products if p.project_code == embargoed_project]
    assert embargoed and all(p.release_date == EMBARGO_DATE for p in embargoed)
    assert all(row["released_date"] == EMBARGO_DATE for row in holdings.components
               if row["project_id"] == embargoed_project)
    unreleased = [p for p in holdings.products if p.release_date == ""]
    assert len(unreleased) == 1 and unreleased[0].obscore["obs_release_date"] is None
    assert unreleased[0].project_code not in holdings.member_projects


# --- time series -----------------------------------------------------------------------------------------

def test_time_series_epochs(holdings):
    ra, dec, fluxes = variable_source_fluxes()
    assert len(fluxes) >= 4
    epochs = [restored_image(holdings, sbid) for sbid in fluxes]
    assert len({p.obscore["t_min"] for p in epochs}) == len(epochs)
    assert len({p.obscore["target_name"] for p in epochs}) == 1
    assert max(fluxes.values()) / min(fluxes.values()) >= 3

    by_name = defaultdict(dict)
    for row in holdings.components:
        if row["sbid"] in fluxes:
            by_name[row["component_name"]][row["sbid"]] = row["flux_peak"]
    variable = [name for name, series in by_name.items() if len(set(series.values())) > 1]
    assert len(variable) == 1 and by_name[variable[0]] == fluxes
    assert all(len(series) == len(fluxes) for series in by_name.values())

    measured = [pixel_value(p.path, ra, dec)[0] * 1000 for p in epochs]
    assert measured == pytest.approx(list(fluxes.values()), abs=1.0)
    steady = next(name for name in by_name if name not in variable)
    row = next(r for r in holdings.components if r["component_name"] == steady)
    values = [pixel_value(p.path, row["ra_deg_cont"], row["dec_deg_cont"])[0] * 1000 for p in epochs]
    assert np.ptp(values) < 6 * row["rms_image"]


# --- bulk products ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [2880 * 700, 2_000_003])
def test_bulk_products_have_exactly_the_requested_size(tmp_path, size):
    result = build_holdings(tmp_path, HoldingsConfig(bulk_count=2, bulk_size=size))
    bulk = [p for p in result.products if p.kind == "bulk"]
    assert len(bulk) == 2 and len({p.checksum for p in bulk}) == 2
    for product in bulk:
        assert product.path.stat().st_size == product.size == size
        assert str(checksum_of_file(product.path)[1]) == product.checksum
        sidecar = product.path.with_name(product.path.name + ".checksum").read_text()
        assert parse_checksum(sidecar).size == size
        assert product.obscore["obs_collection"] == "bulk" and product.release_date < "2030"
        assert fits.getheader(product.path)["SIMPLE"] is True
    assert {p["project_code"] for p in result.projects} >= {bulk[0].project_code}


def test_bulk_file_is_valid_fits_when_its_size_is_whole_blocks(tmp_path):
    result = build_holdings(tmp_path, HoldingsConfig(bulk_count=1, bulk_size=2880 * 50))
    product = next(p for p in result.products if p.kind == "bulk")
    with fits.open(product.path) as hdul:
        hdul.verify("exception")
        assert hdul[0].data.nbytes == 2880 * 49


def test_bulk_files_are_streamed_not_held_in_memory(tmp_path):
    size = 40 * 1024 * 1024
    build_holdings(tmp_path)            # the small files exist: the next build only adds the bulk file
    tracemalloc.start()
    try:
        result = build_holdings(tmp_path, HoldingsConfig(bulk_count=1, bulk_size=size))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.products[-1].path.stat().st_size == size
    assert peak < size / 4
