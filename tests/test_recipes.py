"""Science recipes (light curves, variability, spectra, cross-archive matching) and the
plots, against the emulator's synthetic sky, whose signals are known exactly."""
import builtins

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time

from astroquery_casda_ext import CasdaClass, conf, plots, recipes
from astroquery_casda_ext.emulator.holdings import (VARIABLE_FACTORS, polarised_source, spectral_line_source,
                                                    variable_source_fluxes)
from astroquery_casda_ext.errors import InvalidInputError, InvalidTableError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VAST_SBIDS = (9668, 9694, 9723, 9760)
SPEED_OF_LIGHT = 299792458.0


@pytest.fixture
def casda(emulator):
    """A logged-in client of the emulator that looks at its (fast) jobs often."""
    client = CasdaClass(server=emulator.url)
    client.login(emulator.username, password=emulator.password)
    with conf.set_temp("poll_first", 0.1), conf.set_temp("poll_interval", 1):
        yield client


def vast_components(emulator):
    return [c for c in emulator.holdings.components if c["first_sbid"] == VAST_SBIDS[0]]


# --- light curves ----------------------------------------------------------------------------------

def test_light_curve_recovers_and_flags_the_variable_source(casda, emulator, tmp_path):
    ra, dec, fluxes = variable_source_fluxes(emulator.holdings.config)
    curve = recipes.light_curve(casda, SkyCoord(ra, dec, unit="deg"), "2019-01-01", "2021-01-01",
                                savedir=tmp_path)
    assert list(curve["sbid"]) == list(VAST_SBIDS)                  # one epoch each, oldest first
    assert isinstance(curve["time"], Time) and np.all(np.diff(curve["mjd"]) > 0)
    assert curve["peak_flux"].unit == u.Jy / u.beam
    expected = np.array([fluxes[sbid] for sbid in VAST_SBIDS]) / 1000.0
    assert np.allclose(curve["peak_flux"], expected, rtol=0.02)
    assert np.all(curve["rms"] > 0) and np.all(curve["rms"] < 0.001)
    metrics = recipes.variability(curve)
    assert metrics.variable
    assert metrics.V > 0.5 and metrics.eta > 100
    assert metrics.max_ratio == pytest.approx(max(VARIABLE_FACTORS) / min(VARIABLE_FACTORS), rel=0.05)


@pytest.mark.parametrize("pick", ["brightest", "faintest"])
def test_light_curve_leaves_a_steady_source_unflagged(casda, emulator, tmp_path, pick):
    components = sorted(vast_components(emulator), key=lambda c: c["flux_peak"])
    source = components[-1] if pick == "brightest" else components[0]
    curve = recipes.light_curve(casda, (source["ra_deg_cont"], source["dec_deg_cont"]), 58700, 58900,
                                savedir=tmp_path)
    assert len(curve) == len(VAST_SBIDS)
    assert np.allclose(curve["peak_flux"], source["flux_peak"] / 1000.0, rtol=0.1)
    metrics = recipes.variability(curve)
    assert not metrics.variable
    assert metrics.V < recipes.V_THRESHOLD


def test_light_curve_of_an_empty_interval_says_so(casda, tmp_path):
    ra, dec, _ = variable_source_fluxes()
    with pytest.raises(InvalidTableError, match="no images"):
        recipes.light_curve(casda, (ra, dec), "2010-01-01", "2011-01-01", savedir=tmp_path)


def test_measure_peak_reads_the_catalogue_flux_at_its_position(emulator):
    image = next(p for p in emulator.holdings.products if p.sbid == 609 and p.obscore["dataproduct_subtype"]
                 == "cont.restored.t0")
    component = max((c for c in emulator.holdings.components if c["first_sbid"] == 609),
                    key=lambda c: c["flux_peak"])
    peak, rms = recipes.measure_peak(image.path, (component["ra_deg_cont"], component["dec_deg_cont"]))
    assert peak.to_value(u.mJy / u.beam) == pytest.approx(component["flux_peak"], rel=0.01)
    assert 0 < rms.to_value(u.mJy / u.beam) < 1.0


def test_measure_peak_refuses_a_position_outside_the_image(emulator):
    image = emulator.holdings.product("cube-1001")
    with pytest.raises(ValueError, match="outside"):
        recipes.measure_peak(image.path, "10.0 10.0")


# --- variability metrics (pure) ------------------------------------------------------------------

def curve(fluxes, rms):
    table = Table({"peak_flux": np.asarray(fluxes, float), "rms": np.full(len(fluxes), rms)})
    table["peak_flux"].unit = table["rms"].unit = u.Jy / u.beam
    return table


@pytest.mark.parametrize("fluxes, rms, variable, why", [
    ([1.0, 1.001, 0.999, 1.0], 0.001, False, "steady: V tiny, eta about 1"),
    ([0.03, 0.10, 0.025, 0.08], 0.0002, True, "large, significant changes"),
    ([0.001, 0.0014, 0.0007, 0.0012], 0.0004, False, "faint: V large but within the noise"),
    ([1.0, 1.01, 0.99, 1.0], 0.0001, False, "bright: significant but only 1 per cent"),
])
def test_variable_needs_both_a_large_and_a_significant_change(fluxes, rms, variable, why):
    assert recipes.variability(curve(fluxes, rms)).variable is variable, why


def test_variability_metrics_match_their_definitions():
    fluxes = np.array([0.03, 0.10, 0.025, 0.08])
    metrics = recipes.variability(curve(fluxes, 0.001))
    assert metrics.V == pytest.approx(np.std(fluxes, ddof=1) / np.mean(fluxes))
    assert metrics.chi2 == pytest.approx(np.sum((fluxes - fluxes.mean()) ** 2) / 0.001 ** 2)
    assert metrics.eta == pytest.approx(metrics.chi2 / 3)
    assert metrics.n_epochs == 4 and metrics.dof == 3


def test_variability_needs_two_epochs():
    with pytest.raises(InvalidTableError, match="at least 2"):
        recipes.variability(curve([1.0], 0.001))


# --- spectra --------------------------------------------------------------------------------------

def rotation_measure(spectrum):
    """RM from the slope of the polarisation angle against wavelength squared."""
    wavelength2 = (SPEED_OF_LIGHT / u.Quantity(spectrum["frequency"]).to_value(u.Hz)) ** 2
    angle = 0.5 * np.unwrap(np.arctan2(np.asarray(spectrum["U"]), np.asarray(spectrum["Q"])))
    return np.polyfit(wavelength2, angle, 1)[0]


@pytest.mark.parametrize("method", ["service", "cutout"])
def test_spectrum_at_gives_the_stokes_q_u_of_the_polarised_source(casda, emulator, tmp_path, method):
    source = polarised_source(609, emulator.holdings.config)
    spectrum = recipes.spectrum_at(casda, (source["ra"], source["dec"]), pol=["Q", "U"], method=method,
                                   savedir=tmp_path)
    assert spectrum.colnames == ["frequency", "Q", "U"]
    assert spectrum["frequency"].unit == u.Hz
    assert len(spectrum) == emulator.holdings.config.pol_channels
    assert spectrum.meta["product_id"] == "cube-1005"
    assert rotation_measure(spectrum) == pytest.approx(source["rotation_measure"], rel=0.02)


def test_spectrum_at_finds_the_line_in_the_spectral_cube(casda, emulator, tmp_path):
    line = spectral_line_source(609, emulator.holdings.config)
    spectrum = recipes.spectrum_at(casda, (line["ra"], line["dec"]), savedir=tmp_path)
    assert spectrum.meta["product_id"] == "cube-1004"
    assert spectrum.colnames == ["frequency", "I"]
    peak = int(np.argmax(spectrum["I"]))
    assert peak + 1 == line["channel"]
    assert spectrum["frequency"][peak] == pytest.approx(line["frequency"])


def test_spectrum_at_a_given_cube_with_the_cutout_method(casda, emulator, tmp_path):
    line = spectral_line_source(609, emulator.holdings.config)
    spectrum = recipes.spectrum_at(casda, (line["ra"], line["dec"]), cube="cube-1004", method="cutout",
                                   savedir=tmp_path)
    assert spectrum["I"].unit == u.Jy / u.beam
    assert float(np.max(spectrum["I"])) == pytest.approx(line["peak"], rel=0.1)


def test_spectrum_at_refuses_an_unknown_method_and_a_position_without_cubes(casda):
    with pytest.raises(InvalidInputError, match="method"):
        recipes.spectrum_at(casda, "187.5 -45.0", method="magic")
    with pytest.raises(InvalidInputError, match="no spectral cube"):
        recipes.spectrum_at(casda, "10.0 10.0")


def test_read_spectrum_of_a_cube_gives_every_stokes_plane(emulator):
    cube = emulator.holdings.product("cube-1005")
    source = polarised_source(609, emulator.holdings.config)
    spectrum = recipes.read_spectrum(cube.path, (source["ra"], source["dec"]))
    assert spectrum.colnames == ["frequency", "I", "Q", "U", "V"]
    polarised = np.hypot(spectrum["Q"], spectrum["U"]) / spectrum["I"]
    assert np.allclose(polarised, source["fraction"], rtol=0.05)


def test_combine_spectra_refuses_different_frequency_axes():
    first = Table({"frequency": [1.0, 2.0] * u.Hz, "I": [1.0, 2.0]})
    second = Table({"frequency": [1.0, 3.0] * u.Hz, "Q": [1.0, 2.0]})
    with pytest.raises(ValueError, match="different frequency"):
        recipes.combine_spectra([first, second])


# --- cross-archive ----------------------------------------------------------------------------------

class StubVizier:
    """Answers like astroquery.vizier: a list of tables with VizieR's computed J2000 columns."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def query_region(self, coordinates, radius, catalog):
        self.calls.append((coordinates, radius, catalog))
        return [self.table]


def test_compare_with_vizier_matches_nearby_counterparts(casda, emulator):
    bright = sorted((c for c in emulator.holdings.components if c["first_sbid"] == 609),
                    key=lambda c: -c["flux_peak"])[:2]
    other = Table({"_RAJ2000": [bright[0]["ra_deg_cont"] + 5 / 3600, 187.0],
                   "_DEJ2000": [bright[0]["dec_deg_cont"], -45.2],
                   "S1.4": [2 * bright[0]["flux_int"], 50.0]})
    other["S1.4"].unit = u.mJy
    vizier = StubVizier(other)
    result = recipes.compare_with_vizier(casda, "187.5 -45.0", "10 arcmin", vizier=vizier)
    assert vizier.calls[0][2] == "VIII/65/nvss"
    row = result[list(result["component_name"]).index(bright[0]["component_name"])]
    assert row["matched"]
    assert row["separation"] == pytest.approx(5 * np.cos(np.radians(bright[0]["dec_deg_cont"])), rel=0.01)
    assert row["flux_ratio"] == pytest.approx(0.5)
    unmatched = result[list(result["component_name"]).index(bright[1]["component_name"])]
    assert not unmatched["matched"] and np.isnan(unmatched["flux_ratio"])


@pytest.mark.remote_data
def test_compare_with_nvss_on_the_real_archives():
    """RACS components near a bright NVSS source have NVSS counterparts (needs the network)."""
    from astroquery_casda_ext import Casda
    result = recipes.compare_with_vizier(Casda, "22h15m38.2s -45d50m30.5s", "10 arcmin")
    assert len(result) > 0
    assert result["matched"].sum() > 0
    assert np.all(result["separation"][result["matched"]] <= 20 * u.arcsec)


# --- plots ----------------------------------------------------------------------------------------

def test_plots_write_png_files(emulator, tmp_path):
    images = [emulator.holdings.product(pid).path for pid in ("cube-1001", "cube-1004", "cube-1005")]
    positions = SkyCoord([187.5, 187.6], [-45.0, -45.05], unit="deg")
    assert plots.contact_sheet(images, tmp_path / "sheet.png", positions=positions) == 3
    curve_table = curve([0.03, 0.1, 0.025, 0.08], 0.001)
    curve_table["mjd"] = [58700.0, 58760.0, 58810.0, 58850.0]
    plots.plot_light_curve(curve_table, tmp_path / "curve.png")
    spectrum = recipes.read_spectrum(images[2], "187.5 -45.0")
    assert plots.plot_spectra([spectrum, spectrum], tmp_path / "spectra.png", titles=["a", "b"]) == 2
    for name in ("sheet.png", "curve.png", "spectra.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name


def test_contact_sheet_refuses_nothing_to_draw(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        plots.contact_sheet([], tmp_path / "empty.png")


def test_missing_matplotlib_is_explained(monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install 'astroquery_casda_ext\[plot\]'"):
        plots.require_matplotlib()
