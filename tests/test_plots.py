"""What the pictures say: units, beam, scale bar, frames, velocity axes, V and eta (issue 12).

The figures are inspected through matplotlib's objects (the Agg canvas is kept on the
figure), not by comparing pixels.
"""
import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from astroquery_casda_ext import plots, recipes

pytest.importorskip("matplotlib")


@pytest.fixture
def captured(monkeypatch):
    """The figures the plot functions draw (savefig still writes the PNG)."""
    figures = []
    original = plots._new_figure

    def new_figure(*args):
        figures.append(original(*args))
        return figures[-1]

    monkeypatch.setattr(plots, "_new_figure", new_figure)
    return figures


def _texts(figure):
    return [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]


def test_contact_sheet_panels_have_colour_bar_in_bunit_beam_and_scale_bar(emulator, tmp_path, captured):
    image = emulator.holdings.product("cube-1001").path
    header = fits.getheader(image)
    assert "BMAJ" in header and "BUNIT" in header
    target = SkyCoord(187.5, -45.0, unit="deg")
    plots.contact_sheet([image], tmp_path / "sheet.png",
                        titles=["cont.restored.t0  cube-1001\nJ123000-450000"],
                        targets=[target], positions=target.reshape((1,)))
    [figure] = captured
    texts = _texts(figure)
    assert "mJy/beam" in texts                                         # the colour bar's label
    assert any(t.endswith(("\N{PRIME}", "\N{DOUBLE PRIME}", "\N{DEGREE SIGN}")) for t in texts)   # scale bar
    from matplotlib.patches import Ellipse
    [beam] = [p for p in figure.findobj(Ellipse)]
    scale = float(np.mean(np.abs([header.get("CDELT1", 0), header.get("CDELT2", 0)])) or 1)
    assert beam.width == pytest.approx(header["BMAJ"] / scale, rel=0.05)
    assert beam.angle == pytest.approx(90 + header.get("BPA", 0))
    assert any("J123000-450000" in t for t in texts)


def test_spectra_state_the_frame_and_give_a_velocity_axis(emulator, tmp_path, captured):
    spectrum = recipes.read_spectrum(emulator.holdings.product("cube-1005").path, "187.5 -45.0")
    assert spectrum.meta["specsys"]
    plots.plot_spectra([spectrum], tmp_path / "s.png", rest_frequency=plots.HI_REST_FREQUENCY)
    texts = _texts(captured[0])
    assert f"frequency, {spectrum.meta['specsys']} (MHz)" in texts
    assert any(t.startswith("radio velocity") and "1420.4058 MHz" in t for t in texts)


def test_light_curve_is_points_with_error_bars_dates_and_the_variability_indices(tmp_path, captured):
    table = Table({"mjd": [58700.0, 58760.0, 58810.0, 58850.0], "peak_flux": [0.03, 0.1, 0.025, 0.08],
                   "rms": [0.001] * 4})
    table["peak_flux"].unit = table["rms"].unit = u.Jy / u.beam
    table.meta.update(ra=320.042, dec=-50.97921)
    plots.plot_light_curve(table, tmp_path / "c.png")
    figure = captured[0]
    ax = figure.axes[0]
    [errorbars] = ax.containers
    line = errorbars.lines[0]
    assert line.get_linestyle() == "None" and line.get_marker() == "o"    # points, not joined
    assert errorbars.has_yerr
    legend = ax.get_legend().get_texts()[0].get_text()
    metrics = recipes.variability(table)
    assert f"V = {metrics.V:.2f}" in legend and "\N{GREEK SMALL LETTER ETA} = " in legend
    assert "mJy / beam" in ax.get_ylabel()
    texts = _texts(figure)
    assert "date (UTC)" in texts and any(t.startswith("Light curve of J2120") for t in texts)


# --- issue 19: clipping shown, the frame from the header, the plane named, readable ticks ------------

def _panel(figure):
    """The image axes and the colour bar of a one-panel sheet."""
    image_axes = [ax for ax in figure.axes if hasattr(ax, "coords")]
    [ax] = image_axes
    [image] = ax.get_images()
    return ax, image.colorbar


def test_a_clipped_peak_is_marked_on_the_colour_bar_and_given_in_the_title(emulator, tmp_path, captured):
    image = emulator.holdings.product("cube-1001").path
    peak_mjy = float(np.nanmax(fits.getdata(image))) * 1000
    plots.contact_sheet([image], tmp_path / "sheet.png", titles=["cube-1001"])
    ax, colorbar = _panel(captured[0])
    assert colorbar.extend in ("max", "both")                          # a triangle beyond the last colour
    assert colorbar.norm.vmax < peak_mjy                                # the colours really are clipped
    assert f"peak {peak_mjy:.4g} mJy/beam, colours clipped at" in ax.get_title()


def test_the_colour_bar_has_few_round_ticks_spread_along_it(emulator, tmp_path, captured):
    plots.contact_sheet([emulator.holdings.product("cube-1001").path], tmp_path / "sheet.png")
    _, colorbar = _panel(captured[0])
    ticks = [float(t) for t in colorbar.get_ticks()]
    assert 3 <= len(ticks) <= 5
    assert all(float(f"{t:.2g}") == t for t in ticks)                  # two significant digits at most
    positions = np.asarray(colorbar.norm(ticks), dtype=float)
    assert np.min(np.diff(np.sort(positions))) > 0.12                  # not crowded at one end


@pytest.mark.parametrize("radesys, expected", [("FK5", "FK5 J2000"), ("ICRS", "ICRS")])
def test_the_axes_name_the_frame_of_the_header(emulator, tmp_path, captured, radesys, expected):
    path = tmp_path / "image.fits"
    with fits.open(emulator.holdings.product("cube-1001").path) as hdul:
        hdul[0].header["RADESYS"] = radesys
        hdul.writeto(path)
    plots.contact_sheet([path], tmp_path / "sheet.png")
    ax, _ = _panel(captured[0])
    assert ax.coords[0].get_axislabel() == f"RA ({expected})"
    assert ax.coords[1].get_axislabel() == f"Dec ({expected})"


def test_a_cube_panel_names_the_plane_shown(emulator, tmp_path, captured):
    cube = emulator.holdings.product("cube-1005").path
    header = fits.getheader(cube)
    plots.contact_sheet([cube], tmp_path / "sheet.png", titles=["cube-1005"])
    ax, _ = _panel(captured[0])
    first = header["CRVAL3"] + (1 - header["CRPIX3"]) * header["CDELT3"]
    assert f"plane 1 of {header['NAXIS3']}: {first / 1e6:.6g} MHz, Stokes I (1 of 4)" in ax.get_title()
    assert plots.plane_label(fits.getheader(emulator.holdings.product("cube-1001").path)) == ""


def test_pictures_are_written_through_the_safe_writer(emulator, tmp_path):
    target = tmp_path / "elsewhere.png"
    target.write_bytes(b"keep")
    link = tmp_path / "sheet.png"
    link.symlink_to(target)
    with pytest.raises(Exception) as info:
        plots.contact_sheet([emulator.holdings.product("cube-1001").path], link)
    assert "link" in str(info.value).lower()
    assert target.read_bytes() == b"keep"


def _synthetic_image(path, blob=None, size=60, seed=3):
    """A noise image (1 mJy/beam rms, 2 arcsec pixels) with an optional bright source at ``blob``."""
    data = np.random.default_rng(seed).normal(0.0, 0.001, (size, size))
    if blob is not None:
        y, x = np.mgrid[:size, :size]
        data += 0.5 * np.exp(-((x - blob[0]) ** 2 + (y - blob[1]) ** 2) / (2 * 2.0 ** 2))
    header = fits.Header({"CTYPE1": "RA---SIN", "CTYPE2": "DEC--SIN", "CRVAL1": 187.5, "CRVAL2": -45.0,
                          "CRPIX1": size / 2, "CRPIX2": size / 2, "CDELT1": -2 / 3600, "CDELT2": 2 / 3600,
                          "CUNIT1": "deg", "CUNIT2": "deg", "BUNIT": "Jy/beam", "BMAJ": 8 / 3600,
                          "BMIN": 6 / 3600, "BPA": 30.0})
    fits.PrimaryHDU(data.astype("float32"), header).writeto(path)
    return data


def _scale_bar(figure):
    from matplotlib.lines import Line2D
    [bar] = [line for line in figure.findobj(Line2D)
             if line.get_color() == "white" and len(line.get_xdata()) == 2]
    return bar.get_xdata(), bar.get_ydata()[0]


@pytest.mark.parametrize("blob, where", [(None, "lower right"), ((50, 6), "elsewhere")])
def test_the_scale_bar_stays_off_a_source_in_its_corner(tmp_path, captured, blob, where):
    data = _synthetic_image(tmp_path / "image.fits", blob)
    plots.contact_sheet([tmp_path / "image.fits"], tmp_path / "sheet.png")
    (left, right), bottom = _scale_bar(captured[0])
    assert left < right
    if where == "lower right":
        assert right > 0.8 * data.shape[1] and bottom < 0.2 * data.shape[0]
    else:
        under = data[max(0, int(bottom) - 1):int(bottom) + 10, int(left):int(right) + 1]
        assert under.max() < 0.01            # noise only: the 0.5 Jy/beam source is left visible
