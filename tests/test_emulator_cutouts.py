"""The emulator's SODA engine: CASDA's parameter checks, cutouts, spectra and error files."""
import os
import sys
import time
import tracemalloc

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astroquery_casda_ext.checksum import checksum_of_file
from astroquery_casda_ext.emulator.cutouts import NOTHING_MATCHED_MESSAGE, NothingMatched, process_job
from astroquery_casda_ext.emulator.soda_validation import (
    LATITUDE_FAULT, LONGITUDE_FAULT, RADIUS_FAULT, validate_soda_params)
from astroquery_casda_ext.emulator.holdings import (
    SPEED_OF_LIGHT, Product, build_holdings, fits_header_bytes, polarised_source, spectral_line_source)

MISS = "UsageError: No data is available for the parameter combination: "


@pytest.fixture(scope="module")
def holdings(tmp_path_factory):
    return build_holdings(tmp_path_factory.mktemp("holdings"))


@pytest.fixture(scope="module")
def image(holdings):
    return holdings.product("cube-1001")          # SB609 cont.restored.t0


@pytest.fixture(scope="module")
def line_cube(holdings):
    return holdings.product("cube-1004")          # SB609 spectral.restored.3d


@pytest.fixture(scope="module")
def pol_cube(holdings):
    return holdings.product("cube-1005")          # SB609 I/Q/U/V cube


@pytest.fixture(scope="module")
def bright(holdings):
    """The brightest catalogued source of SB609."""
    return max((c for c in holdings.components if c["sbid"] == 609), key=lambda c: c["flux_peak"])


def circle(ra, dec, radius):
    return f"{ra} {dec} {radius}"


def frequencies(header, axis=3):
    return header[f"CRVAL{axis}"] + (np.arange(header[f"NAXIS{axis}"]) + 1 - header[f"CRPIX{axis}"]) \
        * header[f"CDELT{axis}"]


def assert_sidecar_matches(path):
    _, actual = checksum_of_file(path)
    assert path.with_name(path.name + ".checksum").read_text() == str(actual)


# --- validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("params", [
    {"id": ["token"], "pos": ["CIRCLE 187.5 -45 0.1", " CIRCLE 10 10 1 "]},       # CASDA trims values first
    {"pos": ["RANGE 187 188 -45.5 -44.5", "RANGE -Inf +Inf -Inf +Inf", "POLYGON 1 2 3 4 5 6"]},
    {"circle": ["1.5e-05 -2e-06 0.001"], "polygon": ["10 -10 11 -10 11 -9 10 -9"]},
    {"band": ["0.21 0.22", "-Inf 0.2", "2.1e-01 +Inf"], "channel": ["1 1", "3 30"]},
    {"pol": ["I", "Q", "U", "V", "XX", "POLI"], "format": ["png"], "time": ["58000 59000.5"]},
    {"coord": ["FREQ 1.4E9 1.5E9", "FREQ 1420000000"], "format": ["application/fits"]},
])
def test_valid_parameters_pass(params):
    assert validate_soda_params(params) == []


@pytest.mark.parametrize("params, message", [
    ({"foo": ["1"]}, "UsageFault: FOO is an invalid parameter"),
    ({"responseformat": ["votable"]}, "UsageFault: RESPONSEFORMAT is an invalid parameter"),
    ({"pos": ["CIRCLE 1 2"]}, "UsageFault: Invalid POS value CIRCLE 1 2"),
    ({"pos": ["CIRCLE 400 0 1"]}, LONGITUDE_FAULT),
    ({"pos": ["CIRCLE 10 -91 1"]}, LATITUDE_FAULT),
    ({"pos": ["CIRCLE 10 10 11"]}, RADIUS_FAULT),
    ({"pos": ["CIRCLE 400 -91 11"]}, LONGITUDE_FAULT),            # validateCircle: the first problem only
    ({"pos": ["CIRCLE 10 1E-5 1"]}, "UsageFault: Invalid POS value CIRCLE 10 1E-5 1"),
    ({"pos": ["CIRCLE  10 10 1"]}, LONGITUDE_FAULT),              # split on single spaces: "" is no number
    ({"pos": ["RANGE 400 500 0 1"]}, [LONGITUDE_FAULT] * 2),
    ({"pos": ["POLYGON 0 0 1 91 400 95"]}, [LATITUDE_FAULT, LONGITUDE_FAULT]),
    ({"circle": ["400 0 1"]}, LONGITUDE_FAULT),
    ({"circle": ["1 2 3e-1"]}, "UsageFault: Invalid CIRCLE value 1 2 3e-1"),  # no exponent on the radius
    ({"polygon": ["1 2 3 4 5 -95"]}, LATITUDE_FAULT),
    ({"pos": ["BOX 10 10 1 1"]}, "UsageFault: Invalid POS value BOX 10 10 1 1"),
    ({"pos": ["RANGE 10 11 -5"]}, "UsageFault: Invalid POS value RANGE 10 11 -5"),
    ({"pos": ["RANGE +Inf 11 5 6"]}, "UsageFault: Invalid POS value RANGE +Inf 11 5 6"),
    ({"pos": ["RANGE 10 -Inf 5 6"]}, "UsageFault: Invalid POS value RANGE 10 -Inf 5 6"),
    ({"circle": ["CIRCLE 10 10 1"]}, "UsageFault: Invalid CIRCLE value CIRCLE 10 10 1"),
    ({"polygon": ["1 2 3 4"]}, "UsageFault: Invalid POLYGON value 1 2 3 4"),
    ({"polygon": ["1 2 3 4 5 6e1"]}, "UsageFault: Invalid POLYGON value 1 2 3 4 5 6e1"),
    ({"band": ["0.21"]}, "UsageFault: Invalid BAND value 0.21"),
    ({"band": ["0.22 0.21"]}, "UsageFault: Invalid BAND value 0.22 0.21"),
    ({"band": ["-0.1 0.21"]}, "UsageFault: Invalid BAND value -0.1 0.21"),
    ({"channel": ["0 5"]}, "UsageFault: Invalid CHANNEL value 0 5"),
    ({"channel": ["5 3"]}, "UsageFault: Invalid CHANNEL value 5 3"),
    ({"channel": ["1.5 3"]}, "UsageFault: Invalid CHANNEL value 1.5 3"),
    ({"pol": ["Z"]}, "UsageFault: Invalid POL value Z"),
    ({"format": ["jpeg"]}, "UsageFault: Invalid FORMAT value jpeg"),
    ({"time": ["59000"]}, "UsageFault: Invalid TIME value 59000"),
    ({"coord": ["1.4E9 1.5E9"]}, "UsageFault: Invalid COORD value 1.4E9 1.5E9"),
])
def test_invalid_parameters_get_casda_messages(params, message):
    """Messages of casda_data_access ``PositionParamProcessor``, ``CircleParamProcessor``,
    ``PolygonParamProcessor`` and the other ``*ParamProcessor`` classes."""
    expected = message if isinstance(message, list) else [message]
    assert validate_soda_params(params) == expected


def test_every_problem_is_reported():
    params = {"pos": ["CIRCLE 1 2 3", "CIRCLE 1 2"], "band": ["1 0"], "bogus": ["x"]}
    assert validate_soda_params(params) == [
        "UsageFault: Invalid POS value CIRCLE 1 2", "UsageFault: Invalid BAND value 1 0",
        "UsageFault: BOGUS is an invalid parameter"]


def test_process_job_refuses_invalid_parameters_and_modes(image, tmp_path):
    with pytest.raises(ValueError, match="Invalid POS value"):
        process_job([image], {"pos": ["CIRCLE 1 2"]}, tmp_path, mode="cutout", first_number=1)
    with pytest.raises(ValueError, match="mode"):
        process_job([image], {}, tmp_path, mode="moment", first_number=1)


# --- cutouts ------------------------------------------------------------------------------------------

def test_cutout_centred_on_a_source(image, bright, tmp_path):
    ra, dec = bright["ra_deg_cont"], bright["dec_deg_cont"]
    (result,) = process_job([image], {"circle": [circle(ra, dec, 0.01)]}, tmp_path, mode="cutout",
                            first_number=7)
    assert result.result_id == "cutout-7-imagecube-1001" and result.message is None
    assert result.path == tmp_path / "cutout-7-imagecube-1001.fits"
    assert result.product_id == "cube-1001" and result.region == f"CIRCLE {ra} {dec} 0.01"
    assert_sidecar_matches(result.path)
    with fits.open(result.path) as cut, fits.open(image.path) as full:
        data, header = cut[0].data, cut[0].header
        assert data.ndim == 4 and data.shape[:2] == (1, 1)
        ny, nx = data.shape[2:]
        assert nx % 2 == 1 and ny % 2 == 1
        assert np.unravel_index(np.argmax(data[0, 0]), (ny, nx)) == (ny // 2, nx // 2)
        assert data[0, 0].max() * 1000 == pytest.approx(bright["flux_peak"], rel=0.01)
        centre = WCS(header).celestial.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
        assert np.hypot((float(centre[0]) - ra) * np.cos(np.radians(dec)), float(centre[1]) - dec) \
            < abs(header["CDELT2"])
        # The cutout is the same pixels, with CRPIX moved by the offset of its corner.
        x0 = int(round(full[0].header["CRPIX1"] - header["CRPIX1"]))
        y0 = int(round(full[0].header["CRPIX2"] - header["CRPIX2"]))
        assert np.array_equal(data, full[0].data[:, :, y0:y0 + ny, x0:x0 + nx])
        assert list(WCS(header).wcs.ctype) == ["RA---SIN", "DEC--SIN", "FREQ", "STOKES"]
        assert header["CRVAL1"] == full[0].header["CRVAL1"] and header["BUNIT"] == "Jy/beam"
    radius_pixels = 0.01 / abs(header["CDELT2"])
    assert nx == pytest.approx(2 * radius_pixels + 1, abs=2)


def test_range_and_polygon_regions_select_a_box(image, bright, tmp_path):
    ra, dec = bright["ra_deg_cont"], bright["dec_deg_cont"]
    d = 0.01
    corners = f"{ra - d} {dec - d} {ra + d} {dec - d} {ra + d} {dec + d} {ra - d} {dec + d}"
    params = {"pos": [f"RANGE {ra - d} {ra + d} {dec - d} {dec + d}", "RANGE -Inf +Inf -Inf +Inf"],
              "polygon": [corners]}
    box, whole, polygon = process_job([image], params, tmp_path, mode="cutout", first_number=1)
    assert [f.result_id for f in (box, whole, polygon)] == [
        "cutout-1-imagecube-1001", "cutout-2-imagecube-1001", "cutout-3-imagecube-1001"]
    assert polygon.region == f"POLYGON {corners}"
    with fits.open(box.path) as a, fits.open(polygon.path) as b, fits.open(whole.path) as c:
        assert a[0].data.shape == b[0].data.shape and np.array_equal(a[0].data, b[0].data)
        assert 0 < a[0].data.shape[-1] < 20
        assert a[0].data.max() * 1000 == pytest.approx(bright["flux_peak"], rel=0.01)
        assert c[0].data.shape == (1, 1, 192, 192)


def test_range_with_descending_dec_bounds_is_valid():
    """casda_data_access ``AsyncFunctionalTest.testSingleParameterChanges`` posts
    ``pos=RANGE 135 136.1 -45.56 -46.23`` and expects 303: ``PositionParamProcessor`` checks
    each bound's range, not their order."""
    assert validate_soda_params({"pos": ["RANGE 135 136.1 -45.56 -46.23", "RANGE 10 11 5 -5"]}) == []


def test_descending_dec_bounds_cut_out_the_band_between_them(image, bright, tmp_path):
    ra, dec = bright["ra_deg_cont"], bright["dec_deg_cont"]
    d = 0.01
    params = {"pos": [f"RANGE {ra - d} {ra + d} {dec - d} {dec + d}",
                      f"RANGE {ra - d} {ra + d} {dec + d} {dec - d}"]}
    ascending, descending = process_job([image], params, tmp_path, mode="cutout", first_number=1)
    assert descending.message is None and descending.region == params["pos"][1]
    with fits.open(ascending.path) as a, fits.open(descending.path) as b:
        assert np.array_equal(a[0].data, b[0].data) and a[0].data.shape[-1] > 1


def test_band_selects_channels(line_cube, tmp_path):
    header = fits.getheader(line_cube.path)
    freqs, width = frequencies(header), header["CDELT3"]
    # Channels 5..12 (1-based): a band from a quarter channel inside 5 to a quarter inside 12.
    low_hz, high_hz = freqs[4] - width / 4, freqs[11] + width / 4
    band = f"{SPEED_OF_LIGHT / high_hz:.12f} {SPEED_OF_LIGHT / low_hz:.12f}"
    (result,) = process_job([line_cube], {"band": [band]}, tmp_path, mode="cutout", first_number=1)
    with fits.open(result.path) as cut, fits.open(line_cube.path) as full:
        assert cut[0].data.shape == (1, 8, 48, 48)
        assert frequencies(cut[0].header) == pytest.approx(freqs[4:12])
        assert np.array_equal(cut[0].data, full[0].data[:, 4:12])


@pytest.mark.parametrize("channel, planes", [("3 7", (2, 7)), ("30 40", (29, 32)), ("1 1", (0, 1))])
def test_channel_selects_one_based_planes(line_cube, tmp_path, channel, planes):
    (result,) = process_job([line_cube], {"channel": [channel]}, tmp_path, mode="cutout", first_number=1)
    with fits.open(result.path) as cut, fits.open(line_cube.path) as full:
        assert cut[0].data.shape[1] == planes[1] - planes[0]
        assert np.array_equal(cut[0].data, full[0].data[:, planes[0]:planes[1]])
        assert frequencies(cut[0].header) == pytest.approx(frequencies(full[0].header)[planes[0]:planes[1]])


def test_each_spectral_value_and_region_makes_its_own_file(line_cube, tmp_path):
    params = {"pos": ["CIRCLE 187.5 -45 0.005", "CIRCLE 187.51 -45.01 0.005"],
              "channel": ["1 4", "10 12"], "band": ["0.2112 0.2114"]}
    results = process_job([line_cube], params, tmp_path, mode="cutout", first_number=3)
    assert [r.result_id for r in results] == [f"cutout-{n}-imagecube-1004" for n in range(3, 9)]
    channel_counts = [fits.getheader(r.path)["NAXIS3"] for r in results]
    band_planes = channel_counts[2]
    assert channel_counts == [4, 3, band_planes, 4, 3, band_planes] and band_planes >= 1
    assert [r.region for r in results] == ["CIRCLE 187.5 -45 0.005"] * 3 + ["CIRCLE 187.51 -45.01 0.005"] * 3


def test_coord_freq_selects_planes_and_time_is_accepted(line_cube, tmp_path):
    freqs = frequencies(fits.getheader(line_cube.path))
    params = {"coord": [f"FREQ {freqs[2]:.1f} {freqs[5]:.1f}", f"FREQ {freqs[9]:.1f}", "VRAD 1 2"],
              "time": ["58000 +Inf"]}
    first, single, miss = process_job([line_cube], params, tmp_path, mode="cutout", first_number=1)
    assert fits.getheader(first.path)["NAXIS3"] == 4
    assert frequencies(fits.getheader(single.path)) == pytest.approx(freqs[9:10])
    assert miss.message == MISS + "COORD=VRAD 1 2,ID=cube-1004"


@pytest.mark.parametrize("pols, expected", [
    (["Q", "U"], [(2, 2)]),
    (["U", "I", "Q"], [(1, 3)]),
    (["I", "V"], [(1, 1), (4, 1)]),
    ([], [(1, 4)]),
])
def test_pol_selects_stokes_planes(pol_cube, tmp_path, pols, expected):
    results = process_job([pol_cube], {"pol": pols} if pols else {}, tmp_path, mode="cutout", first_number=1)
    headers = [fits.getheader(r.path) for r in results]
    # (Stokes number of the first plane, number of planes) per file
    assert [(round(frequencies(h, 4)[0]), h["NAXIS4"]) for h in headers] == expected
    with fits.open(results[0].path) as cut, fits.open(pol_cube.path) as full:
        first, count = expected[0]
        assert np.array_equal(cut[0].data, full[0].data[first - 1:first - 1 + count])


def test_every_missing_value_gets_one_error_file_in_loop_order(image, line_cube, pol_cube, tmp_path):
    params = {"pos": ["CIRCLE 187.5 -45 0.01", "CIRCLE 10 10 0.1"], "pol": ["Q", "I"], "channel": ["30 40"]}
    results = process_job([image, pol_cube, line_cube], params, tmp_path, mode="cutout", first_number=11)
    assert [(r.result_id, r.message) for r in results] == [
        ("error-01", MISS + "POS=CIRCLE 10 10 0.1,ID=cube-1001"),
        ("error-02", MISS + "CHANNEL=30 40,ID=cube-1001"),           # one plane only
        ("error-03", MISS + "POL=Q,ID=cube-1001"),                   # Stokes I only
        ("error-04", MISS + "POS=CIRCLE 10 10 0.1,ID=cube-1005"),
        ("error-05", MISS + "CHANNEL=30 40,ID=cube-1005"),           # eight channels
        ("cutout-11-imagecube-1004", None),
        ("error-06", MISS + "POS=CIRCLE 10 10 0.1,ID=cube-1004"),
        ("error-07", MISS + "POL=Q,ID=cube-1004"),
    ]
    header = fits.getheader(results[5].path)
    assert (header["NAXIS3"], header["NAXIS4"]) == (3, 1)


def test_error_files_hold_the_casda_message(image, line_cube, tmp_path):
    # 0.30-0.31 m is inside the 943.5 MHz continuum band and far from the 1.42 GHz line cube.
    params = {"pos": ["CIRCLE 187.5 -45 0.01", "CIRCLE 10 10 0.1"], "band": ["0.30 0.31"]}
    results = process_job([image, line_cube], params, tmp_path, mode="cutout", first_number=11)
    summary = [(r.result_id, r.path.name, r.product_id, r.message) for r in results]
    assert summary == [
        ("cutout-11-imagecube-1001", "cutout-11-imagecube-1001.fits", "cube-1001", None),
        ("error-01", "error-01.txt", "cube-1001", MISS + "POS=CIRCLE 10 10 0.1,ID=cube-1001"),
        ("error-02", "error-02.txt", "cube-1004", MISS + "POS=CIRCLE 10 10 0.1,ID=cube-1004"),
        ("error-03", "error-03.txt", "cube-1004", MISS + "BAND=0.30 0.31,ID=cube-1004"),
    ]
    assert results[1].region == "CIRCLE 10 10 0.1" and results[3].region is None
    for result in results[1:]:
        assert result.path.read_text() == result.message
        assert_sidecar_matches(result.path)


def test_nothing_matched(image, tmp_path):
    with pytest.raises(NothingMatched) as caught:
        process_job([image], {"circle": ["10 10 0.1"], "pol": ["V"]}, tmp_path, mode="cutout", first_number=1)
    assert str(caught.value) == NOTHING_MATCHED_MESSAGE == (
        "UsageError: None of the selected image cubes had data matching the supplied cutout parameters.")
    assert [f.message for f in caught.value.files] == [
        MISS + "CIRCLE=10 10 0.1,ID=cube-1001", MISS + "POL=V,ID=cube-1001"]


def test_a_job_without_products_matches_nothing(tmp_path):
    with pytest.raises(NothingMatched, match="None of the selected image cubes"):
        process_job([], {"circle": ["10 10 0.1"]}, tmp_path, mode="spectrum", first_number=1)


def test_files_that_are_not_images_never_match(holdings, tmp_path):
    path = tmp_path / "bulk.fits"
    path.write_bytes(fits_header_bytes(fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0)])))
    bulk = Product("cube-5001", 5001, "bulk", path, path.name, path.name, 2880, "", "AS900", 9001, "", {})
    with pytest.raises(NothingMatched) as caught:
        process_job([bulk], {"pos": ["CIRCLE 150 -30 0.1"]}, tmp_path / "out", mode="cutout", first_number=1)
    assert caught.value.files[0].message == MISS + f"POS=CIRCLE 150 -30 0.1,ID={bulk.product_id}"


def test_png_previews(image, bright, tmp_path, monkeypatch):
    params = {"circle": [circle(bright["ra_deg_cont"], bright["dec_deg_cont"], 0.02)],
              "format": ["image/png"]}
    (result,) = process_job([image], params, tmp_path / "mpl", mode="cutout", first_number=1)
    assert result.path.name == "cutout-1-imagecube-1001.png"
    assert result.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_sidecar_matches(result.path)
    monkeypatch.setitem(sys.modules, "matplotlib.image", None)     # matplotlib is optional
    (plain,) = process_job([image], params, tmp_path / "plain", mode="cutout", first_number=1)
    from PIL import Image
    with Image.open(plain.path) as png:
        pixels = np.asarray(png)
    assert pixels.ndim == 2 and pixels.shape[0] == pixels.shape[1] > 5
    assert pixels[pixels.shape[0] // 2, pixels.shape[1] // 2] == pixels.max() == 255     # the source
    assert np.median(pixels) < 128


# --- spectra ------------------------------------------------------------------------------------------

def test_spectrum_peaks_at_the_injected_line(line_cube, tmp_path):
    line = spectral_line_source(609)
    (result,) = process_job([line_cube], {"circle": [circle(line["ra"], line["dec"], 0.01)]}, tmp_path,
                            mode="spectrum", first_number=5)
    assert result.result_id == "spectrum-5-imagecube-1004"
    assert result.path.name == "spectrum-5-imagecube-1004.fits"
    assert_sidecar_matches(result.path)
    with fits.open(result.path) as hdul:
        spectrum, header = hdul[0].data, hdul[0].header
    assert spectrum.shape == (32,)
    assert int(np.argmax(spectrum)) + 1 == line["channel"]
    assert header["CTYPE1"] == "FREQ" and header["BUNIT"] == "Jy" and header["FLUXTYPE"] == "SUM/BEAM"
    assert frequencies(header, 1)[line["channel"] - 1] == pytest.approx(line["frequency"])
    assert float(WCS(header).pixel_to_world_values(line["channel"] - 1)) == pytest.approx(line["frequency"])
    # Summing Jy/beam pixels over a 2-beam-wide aperture and dividing by the beam area gives
    # close to the point source's flux density.
    assert spectrum.max() == pytest.approx(line["peak"], rel=0.2)


def test_spectra_per_stokes_follow_the_rotation_measure(pol_cube, tmp_path):
    source = polarised_source(609)
    params = {"circle": [circle(source["ra"], source["dec"], 0.01)], "pol": ["Q", "U", "I"]}
    stokes_i, stokes_q, stokes_u = process_job([pol_cube], params, tmp_path, mode="spectrum", first_number=1)
    spectra = {}
    for result in (stokes_i, stokes_q, stokes_u):
        with fits.open(result.path) as hdul:
            spectra[hdul[0].header["STOKES"]] = hdul[0].data
            freqs = frequencies(hdul[0].header, 1)
    assert [r.result_id for r in (stokes_i, stokes_q, stokes_u)] == [
        "spectrum-1-imagecube-1005", "spectrum-2-imagecube-1005", "spectrum-3-imagecube-1005"]
    assert set(spectra) == {"I", "Q", "U"} and spectra["I"].shape == (8,)
    expected = 2 * (source["angle0"] + source["rotation_measure"] * (SPEED_OF_LIGHT / freqs) ** 2)
    measured = np.arctan2(spectra["U"], spectra["Q"])
    assert np.allclose(np.angle(np.exp(1j * (measured - expected))), 0, atol=0.05)


def test_spectrum_band_limits_the_channels(line_cube, tmp_path):
    line = spectral_line_source(609)
    params = {"circle": [circle(line["ra"], line["dec"], 0.01)], "channel": ["11 20"]}
    (result,) = process_job([line_cube], params, tmp_path, mode="spectrum", first_number=1)
    with fits.open(result.path) as hdul:
        assert hdul[0].data.shape == (10,) and int(np.argmax(hdul[0].data)) == 9


# --- large files ------------------------------------------------------------------------------------

def sparse_cube(path, nx=4096, ny=4096, channels=64):
    """A 4 GiB float32 cube that occupies no disk space: the header, then a hole."""
    header = fits.Header([
        ("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 4), ("NAXIS1", nx), ("NAXIS2", ny),
        ("NAXIS3", channels), ("NAXIS4", 1), ("BUNIT", "Jy/beam"), ("BMAJ", 0.003), ("BMIN", 0.003),
        ("BPA", 0.0), ("RADESYS", "FK5"), ("EQUINOX", 2000.0),
        ("CTYPE1", "RA---SIN"), ("CRVAL1", 30.0), ("CDELT1", -0.0005), ("CRPIX1", nx / 2 + 1),
        ("CUNIT1", "deg"),
        ("CTYPE2", "DEC--SIN"), ("CRVAL2", -60.0), ("CDELT2", 0.0005), ("CRPIX2", ny / 2 + 1),
        ("CUNIT2", "deg"),
        ("CTYPE3", "FREQ"), ("CRVAL3", 1.4e9), ("CDELT3", 1e6), ("CRPIX3", 1.0), ("CUNIT3", "Hz"),
        ("CTYPE4", "STOKES"), ("CRVAL4", 1.0), ("CDELT4", 1.0), ("CRPIX4", 1.0), ("CUNIT4", "")])
    size = len(fits_header_bytes(header)) + nx * ny * channels * 4
    with open(path, "wb") as stream:
        stream.write(fits_header_bytes(header))
        stream.truncate(size + (-size) % 2880)
    return Product("cube-77", 77, "spectral", path, path.name, path.name, os.path.getsize(path), "",
                   "AS101", 1, "", {})


def test_small_cutout_of_a_large_cube_reads_only_what_it_needs(tmp_path):
    product = sparse_cube(tmp_path / "big.fits")
    assert product.size > 4 * 1024 ** 3
    tracemalloc.start()
    start = time.perf_counter()
    try:
        (cutout,) = process_job([product], {"circle": ["30 -60 0.01"]}, tmp_path / "out", mode="cutout",
                                first_number=1)
        (spectrum,) = process_job([product], {"circle": ["30 -60 0.01"]}, tmp_path / "out", mode="spectrum",
                                  first_number=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 10
    assert peak < 50 * 1024 ** 2
    # 0.01 deg = 20 pixels; pixels exactly 20 pixels away are just outside the circle on the sky.
    assert fits.getdata(cutout.path).shape == (1, 64, 39, 39)
    assert fits.getdata(spectrum.path).shape == (64,)
