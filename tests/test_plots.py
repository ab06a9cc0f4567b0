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
