"""Pictures of what was downloaded: cutout contact sheets, light curves, spectra.

matplotlib is an optional dependency (``pip install 'astroquery_casda_ext[plot]'``).  It is
imported only when a picture is drawn, and only through its object-oriented API with the
Agg canvas: nothing here touches ``pyplot`` or the user's chosen backend, so drawing a
preview from a notebook or a headless batch job behaves the same.
"""
import math
import warnings

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

__all__ = ["require_matplotlib", "read_image_plane", "image_centre", "contact_sheet", "plot_light_curve",
           "plot_spectra", "MATPLOTLIB_HINT"]

#: What to tell a user who asked for a picture without matplotlib installed.
MATPLOTLIB_HINT = ("drawing pictures needs matplotlib, an optional extra: "
                   "pip install 'astroquery_casda_ext[plot]'")

#: Most panels on one contact sheet; more would make each too small to read.
MAX_PANELS = 64


def require_matplotlib():
    """Import matplotlib's Figure and Agg canvas, or explain how to install them.

    Returns
    -------
    tuple
        ``(Figure, FigureCanvasAgg)``.

    Raises
    ------
    ImportError
        With an installation hint, when matplotlib is missing.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(MATPLOTLIB_HINT) from exc
    return Figure, FigureCanvasAgg


def _new_figure(width, height):
    Figure, FigureCanvasAgg = require_matplotlib()
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def read_image_plane(path):
    """The first 2-D sky plane of a FITS image or cube, with its celestial WCS.

    ASKAP images are 4-D (RA, Dec, frequency, Stokes); the first frequency and Stokes plane
    is the one shown.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    data : `numpy.ndarray`
        2-D array, float.
    wcs : `~astropy.wcs.WCS`
        The celestial part of the header's WCS.
    header : `~astropy.io.fits.Header`

    Raises
    ------
    ValueError
        If the file has no image with at least two axes.
    """
    with fits.open(path, memmap=True) as hdul:
        hdu = next((h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2), None)
        if hdu is None:
            raise ValueError(f"{path}: no image data")
        # A section reads only the first plane's bytes, not the whole (possibly huge) cube.
        leading = (0,) * (hdu.header["NAXIS"] - 2)
        data = np.asarray(hdu.section[leading + (slice(None), slice(None))], dtype=float)
        header = hdu.header.copy()
    return data, celestial_wcs(header), header


def celestial_wcs(header):
    """The celestial WCS of a header; astropy's notes about fixed keywords are not errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header).celestial


def image_centre(path):
    """The sky position of an image's central pixel and the image's width, from its header alone.

    Returns
    -------
    centre : `~astropy.coordinates.SkyCoord`
    width : `~astropy.units.Quantity`
        The larger side, in degrees.
    """
    header = fits.getheader(path)
    wcs = celestial_wcs(header)
    nx, ny = header.get("NAXIS1", 1), header.get("NAXIS2", 1)
    centre = wcs.pixel_to_world((nx - 1) / 2, (ny - 1) / 2)
    scale = float(np.max(proj_plane_pixel_scales(wcs)))       # degrees per pixel (CUNIT deg)
    return centre, max(nx, ny) * scale * u.deg


def _normalisation(data):
    """An asinh stretch between robust limits: faint sources stay visible next to bright ones."""
    from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval
    finite = data[np.isfinite(data)]
    if finite.size == 0 or np.ptp(finite) == 0:
        return None
    return ImageNormalize(finite, interval=PercentileInterval(99.5), stretch=AsinhStretch(0.01))


def _positions_inside(positions, wcs, shape):
    """The positions that fall inside an image of ``shape`` (pixel coordinates are tested)."""
    if positions is None or len(positions) == 0:
        return None
    x, y = wcs.world_to_pixel(positions)
    inside = (x >= -0.5) & (x <= shape[1] - 0.5) & (y >= -0.5) & (y <= shape[0] - 0.5)
    return positions[np.atleast_1d(inside)]


def _draw_panel(figure, grid, index, path, title, positions):
    try:
        data, wcs, _ = read_image_plane(path)
    except (OSError, ValueError) as exc:
        ax = figure.add_subplot(*grid, index)
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"unreadable:\n{exc}"[:80], ha="center", va="center", fontsize=7,
                transform=ax.transAxes)
        return
    ax = figure.add_subplot(*grid, index, projection=wcs)
    ax.imshow(data, origin="lower", cmap="inferno", norm=_normalisation(data))
    inside = _positions_inside(positions, wcs, data.shape)
    if inside is not None and len(inside):
        ax.scatter(inside.ra.deg, inside.dec.deg, transform=ax.get_transform("world"), marker="+",
                   s=120, linewidths=1.2, color="cyan")
    ax.set_title(title, fontsize=8)
    for axis, label in zip(ax.coords, ("RA", "Dec")):
        axis.set_axislabel(label, fontsize=7)
        axis.set_ticklabel(size=6)
        axis.set_ticks(number=3)


def contact_sheet(paths, output, *, positions=None, titles=None, columns=None):
    """Draw a grid of cutout images with WCS axes and the requested positions marked.

    Parameters
    ----------
    paths : list of str or path-like
        FITS cutouts (or any images); at most `MAX_PANELS` are drawn.
    output : str or path-like
        The PNG file to write.
    positions : `~astropy.coordinates.SkyCoord`, optional
        Positions to mark (a cyan ``+``) wherever they fall inside a panel.
    titles : list of str, optional
        One title per panel (default: the file names).
    columns : int, optional
        Panels per row (default: about the square root of the count).

    Returns
    -------
    int
        The number of panels drawn.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If ``paths`` is empty.
    """
    paths = [str(p) for p in paths][:MAX_PANELS]
    if not paths:
        raise ValueError("no images to draw")
    titles = list(titles)[:len(paths)] if titles is not None else [_short_name(p) for p in paths]
    columns = columns or math.ceil(math.sqrt(len(paths)))
    rows = math.ceil(len(paths) / columns)
    figure = _new_figure(2.6 * columns + 0.4, 2.6 * rows + 0.3)
    for index, (path, title) in enumerate(zip(paths, titles), start=1):
        _draw_panel(figure, (rows, columns), index, path, title, positions)
    figure.savefig(output, dpi=100)
    return len(paths)


def _short_name(path):
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-5] if name.endswith(".fits") else name


def plot_light_curve(table, output, *, title=None):
    """Draw a light curve: peak flux against time, with the local rms as error bars.

    Parameters
    ----------
    table : `~astropy.table.Table`
        As returned by `astroquery_casda_ext.recipes.light_curve` (columns ``mjd``,
        ``peak_flux``, ``rms``).
    output : str or path-like
        The PNG file to write.
    title : str, optional
    """
    figure = _new_figure(6.0, 3.6)
    ax = figure.add_subplot(1, 1, 1)
    flux = u.Quantity(table["peak_flux"])
    rms = u.Quantity(table["rms"]).to(flux.unit)
    ax.errorbar(np.asarray(table["mjd"], dtype=float), flux.value, yerr=rms.value, fmt="o-",
                capsize=3)
    ax.set_xlabel("MJD")
    ax.set_ylabel(f"peak flux ({flux.unit.to_string()})")
    ax.set_title(title or table.meta.get("title", "light curve"), fontsize=9)
    figure.savefig(output, dpi=100)


def plot_spectra(spectra, output, *, titles=None):
    """Draw one panel per spectrum: flux of each Stokes parameter against frequency.

    Parameters
    ----------
    spectra : `~astropy.table.Table` or list of them
        As returned by `astroquery_casda_ext.recipes.spectrum_at` or
        `astroquery_casda_ext.recipes.read_spectrum`: a ``frequency`` column and one flux
        column per Stokes parameter (``I``, ``Q``, ``U``, ``V``).
    output : str or path-like
        The PNG file to write.
    titles : list of str, optional
        One title per spectrum (default: each table's ``meta['title']``).

    Returns
    -------
    int
        The number of panels drawn.
    """
    spectra = [spectra] if hasattr(spectra, "colnames") else list(spectra)[:MAX_PANELS]
    if not spectra:
        raise ValueError("no spectra to draw")
    columns = min(3, len(spectra))
    rows = math.ceil(len(spectra) / columns)
    figure = _new_figure(4.2 * columns, 3.0 * rows)
    for index, spectrum in enumerate(spectra):
        ax = figure.add_subplot(rows, columns, index + 1)
        frequency = u.Quantity(spectrum["frequency"]).to(u.MHz)
        for stokes in [c for c in spectrum.colnames if c in ("I", "Q", "U", "V")]:
            flux = u.Quantity(spectrum[stokes])
            ax.plot(frequency.value, flux.value, label=stokes, drawstyle="steps-mid")
        ax.set_xlabel("frequency (MHz)", fontsize=8)
        ax.set_ylabel(f"flux ({_flux_unit(spectrum)})", fontsize=8)
        ax.legend(fontsize=7)
        title = titles[index] if titles else spectrum.meta.get("title", "")
        ax.set_title(title, fontsize=8)
    figure.savefig(output, dpi=100)
    return len(spectra)


def _flux_unit(spectrum):
    for name in ("I", "Q", "U", "V"):
        if name in spectrum.colnames and spectrum[name].unit is not None:
            return spectrum[name].unit.to_string()
    return ""
