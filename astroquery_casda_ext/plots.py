"""Pictures of what was downloaded: cutout contact sheets, light curves, spectra.

matplotlib is an optional dependency (``pip install 'astroquery_casda_ext[plot]'``).  It is
imported only when a picture is drawn, and only through its object-oriented API with the
Agg canvas: nothing here touches ``pyplot`` or the user's chosen backend, so drawing a
preview from a notebook or a headless batch job behaves the same.
"""
import math
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from .writer import atomic_output

__all__ = ["require_matplotlib", "read_image_plane", "image_centre", "contact_sheet", "plot_light_curve",
           "plot_spectra", "celestial_frame", "plane_label", "MATPLOTLIB_HINT", "MAX_PANELS",
           "FONT", "HI_REST_FREQUENCY"]

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
    from astropy.stats import mad_std
    from astropy.visualization import AsinhStretch, ImageNormalize, LinearStretch, PercentileInterval
    finite = data[np.isfinite(data)]
    if finite.size == 0 or np.ptp(finite) == 0:
        return None
    # a plane of noise alone (a line cube's empty channel) reads best linearly; asinh is for sources
    sources = np.percentile(finite, 99.5) - np.median(finite) > 20 * mad_std(finite)
    return ImageNormalize(finite, interval=PercentileInterval(99.5),
                          stretch=AsinhStretch(0.01) if sources else LinearStretch())


def _clipping(data, norm, unit):
    """``(extend, note)``: how the colour bar shows values beyond the colour limits, and the
    true peak in words, so a clipped peak is never read off the colour bar as the peak."""
    finite = data[np.isfinite(data)]
    if norm is None or finite.size == 0:
        return "neither", ""
    low, high = float(finite.min()), float(finite.max())
    above, below = high > norm.vmax, low < norm.vmin
    extend = {(True, True): "both", (True, False): "max", (False, True): "min"}.get((above, below), "neither")
    if not above:
        return extend, ""
    return extend, f"peak {high:.4g} {unit}, colours clipped at {norm.vmax:.3g}"


def _colour_bar_ticks(norm, count=5):
    """Ticks evenly spaced along the stretched bar, at round values (an asinh stretch crowds
    evenly spaced data values at one end)."""
    if norm is None:
        return None
    values = np.asarray(norm.inverse(np.linspace(0.0, 1.0, count)), dtype=float).ravel()
    ticks = []
    for value in values:
        if value != 0 and np.isfinite(value):
            scale = 10.0 ** (int(math.floor(math.log10(abs(value)))) - 1)     # two significant digits,
            value = math.floor(value / scale) * scale if value > 0 else math.ceil(value / scale) * scale
            value = float(f"{value:.2g}")                                    # towards zero: inside the bar
        if np.isfinite(value) and norm.vmin <= value <= norm.vmax and value not in ticks:
            ticks.append(value)
    return ticks if len(ticks) >= 2 else None


def celestial_frame(header):
    """The sky frame of a header's coordinates: ``'FK5 J2000'``, ``'ICRS'``... (RADESYS, EQUINOX).

    FITS says a header without ``RADESYS`` is FK5 when it gives an ``EQUINOX`` (from 1984 on),
    else ICRS.
    """
    system = str(header.get("RADESYS", header.get("RADECSYS", ""))).strip().upper()
    equinox = header.get("EQUINOX", header.get("EPOCH"))
    if not system:
        system = "FK5" if equinox is not None and float(equinox) >= 1984 else "ICRS"
    if system in ("FK5", "FK4") and equinox is not None:
        return f"{system} {'J' if system == 'FK5' else 'B'}{float(equinox):g}"
    return system


_STOKES_NAMES = {1: "I", 2: "Q", 3: "U", 4: "V", -1: "RR", -2: "LL", -3: "RL", -4: "LR", -5: "XX", -6: "YY",
                 -7: "XY", -8: "YX"}


def plane_label(header):
    """Which plane of a cube `read_image_plane` shows: ``'plane 1 of 32: 1415.625 MHz, Stokes I'``.

    Empty for a plain image (no axis beyond the sky with more than one pixel).
    """
    naxis = int(header.get("NAXIS", 0))
    lengths = [int(header.get(f"NAXIS{i}", 1)) for i in range(3, naxis + 1)]
    if not any(length > 1 for length in lengths):
        return ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        world = WCS(header).all_pix2world([[0.0] * naxis], 0)[0]
    parts = []
    for index, length in enumerate(lengths, start=3):
        kind = str(header.get(f"CTYPE{index}", "")).upper()
        value = float(world[index - 1])
        if kind.startswith("STOKES"):
            parts.append(f"Stokes {_STOKES_NAMES.get(int(round(value)), int(round(value)))}"
                         + (f" (1 of {length})" if length > 1 else ""))
        elif length > 1 or kind.startswith(("FREQ", "VRAD", "VOPT", "WAVE")):
            unit = header.get(f"CUNIT{index}", "")
            shown = f"{value / 1e6:.6g} MHz" if kind.startswith("FREQ") else f"{value:.6g} {unit}"
            parts.append(f"plane 1 of {length}: {shown.strip()}" if length > 1 else shown.strip())
    return ", ".join(parts)


def _positions_inside(positions, wcs, shape):
    """The positions that fall inside an image of ``shape`` (pixel coordinates are tested)."""
    if positions is None or len(positions) == 0:
        return None
    x, y = wcs.world_to_pixel(positions)
    inside = (x >= -0.5) & (x <= shape[1] - 0.5) & (y >= -0.5) & (y <= shape[0] - 0.5)
    return positions[np.atleast_1d(inside)]


#: Font sizes (points) of every picture: legible on screen and when printed two to a page.
FONT = {"title": 10, "label": 9, "ticks": 8, "legend": 8, "note": 8}

_MJD_UNIX_EPOCH = 40587.0      # MJD of 1970-01-01, matplotlib's date epoch


def _display_unit(header, data):
    """(scale, unit label) for the colour bar: BUNIT; Jy/beam images in mJy/beam, as radio
    astronomers quote them (and the same on every panel of a sheet)."""
    text = str(header.get("BUNIT", "")).strip()
    try:
        unit = u.Unit(text.replace("JY", "Jy").replace("BEAM", "beam"), parse_strict="silent") \
            if text else None
    except ValueError:
        unit = None
    if unit is None or isinstance(unit, u.UnrecognizedUnit):
        return 1.0, text or "(no BUNIT)"
    if unit.is_equivalent(u.Jy / u.beam):
        return float(unit.to(u.mJy / u.beam)), "mJy/beam"
    return 1.0, unit.to_string()


def _pixel_scale_arcsec(wcs):
    return float(np.mean(proj_plane_pixel_scales(wcs))) * 3600.0


def _draw_beam(ax, header, wcs, shape):
    """The restoring beam (BMAJ, BMIN, BPA) as a hatched ellipse in the lower-left corner."""
    from matplotlib.patches import Ellipse
    if "BMAJ" not in header or "BMIN" not in header:
        return False
    scale = _pixel_scale_arcsec(wcs)
    major, minor = float(header["BMAJ"]) * 3600.0 / scale, float(header["BMIN"]) * 3600.0 / scale
    if not (0 < major < 0.8 * min(shape)):
        return False
    margin = 0.6 * major + 1.0
    # BPA is east of north; with north up and east left it is 90 deg past matplotlib's +x
    ax.add_patch(Ellipse((margin - 0.5, margin - 0.5), width=major, height=minor,
                         angle=90.0 + float(header.get("BPA", 0.0)), facecolor="none", edgecolor="white",
                         hatch="////", linewidth=1.0, path_effects=_outlined(2.0)))
    return True


def _nice_length(arcsec):
    """A round angle (arcsec) no longer than ``arcsec``: 1, 2, 5, 10, 15, 30 arcsec, 1, 2, 5... arcmin."""
    steps = [1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200]
    fitting = [step for step in steps if step <= arcsec]
    return fitting[-1] if fitting else arcsec


def _angle_text(arcsec):
    if arcsec >= 3600:
        return f"{arcsec / 3600:g}\N{DEGREE SIGN}"
    return f"{arcsec / 60:g}\N{PRIME}" if arcsec >= 60 else f"{arcsec:g}\N{DOUBLE PRIME}"


def _outlined(linewidth):
    """A thin dark outline, so white marks stay readable over a bright source."""
    from matplotlib import patheffects
    return [patheffects.withStroke(linewidth=linewidth, foreground="black")]


def _scale_bar_place(data, pixels):
    """``(right, bottom)`` of the scale bar: lower right, unless a source (a pixel 5 robust
    sigma above the noise) lies under the bar or its label there; then the corner (but the
    beam's, lower left) where they cover the faintest pixels."""
    ny, nx = data.shape
    height = int(np.ceil(0.16 * ny))
    left_x, right_x = 0.06 * nx - 0.5, nx - 0.5 - 0.06 * nx      # the bar's two possible right ends
    low, high = -0.5 + 0.07 * ny, ny - 0.5 - 0.16 * ny                 # the bar's two possible heights
    corners = [(right_x, low), (right_x, high), (left_x + pixels, high)]

    def brightest(right, bottom):
        columns = slice(max(0, int(np.floor(right - pixels + 0.5))), max(1, int(np.ceil(right + 0.5))))
        rows = slice(max(0, int(np.floor(bottom + 0.5)) - 1), int(np.floor(bottom + 0.5)) + height)
        covered = data[rows, columns]
        return np.nanmax(covered) if covered.size and np.isfinite(covered).any() else -np.inf

    covered = [brightest(*corner) for corner in corners]
    finite = data[np.isfinite(data)]
    if not finite.size:
        return corners[0]
    middle = np.median(finite)
    source = middle + 5.0 * 1.4826 * np.median(np.abs(finite - middle))   # 5 sigma (robust) above the noise
    return corners[0] if covered[0] <= source else corners[int(np.argmin(covered))]


def _draw_scale_bar(ax, wcs, data):
    """A white bar of a round angle (about a quarter of the width), in the lower-right corner
    unless a source lies there (`_scale_bar_place`)."""
    shape = data.shape
    scale = _pixel_scale_arcsec(wcs)
    length = _nice_length(0.3 * shape[1] * scale)
    pixels = length / scale
    right, bottom = _scale_bar_place(data, pixels)
    ax.plot([right - pixels, right], [bottom, bottom], color="white", linewidth=2.0, solid_capstyle="butt",
            path_effects=_outlined(3.5))
    ax.text(right - pixels / 2, bottom + 0.03 * shape[0], _angle_text(length), color="white", ha="center",
            va="bottom", fontsize=FONT["note"], path_effects=_outlined(2.5))


def _draw_panel(figure, grid, index, path, title, positions, target=None):
    try:
        data, wcs, header = read_image_plane(path)
    except (OSError, ValueError) as exc:
        ax = figure.add_subplot(*grid, index)
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"unreadable:\n{exc}"[:80], ha="center", va="center", fontsize=FONT["note"],
                transform=ax.transAxes)
        return
    scale, unit_label = _display_unit(header, data)
    shown = data * scale
    norm = _normalisation(shown)
    extend, clipped = _clipping(shown, norm, unit_label)
    ax = figure.add_subplot(*grid, index, projection=wcs)
    image = ax.imshow(shown, origin="lower", cmap="inferno", norm=norm)
    # the triangle at the end of the bar says "brighter than the last colour"; the title gives the peak
    colorbar = figure.colorbar(image, ax=ax, shrink=0.85, pad=0.02, extend=extend)
    colorbar.set_label(unit_label, fontsize=FONT["label"])
    ticks = _colour_bar_ticks(norm)
    if ticks:
        colorbar.set_ticks(ticks, labels=[f"{tick:g}" for tick in ticks])
    colorbar.ax.tick_params(labelsize=FONT["ticks"])
    inside = _positions_inside(positions, wcs, data.shape)
    if target is not None and inside is not None and len(inside):
        # the panel's own source is ringed; other requested positions get a small grey cross
        inside = inside[inside.separation(target).arcsec > 1.0]
    if inside is not None and len(inside):
        ax.scatter(inside.ra.deg, inside.dec.deg, transform=ax.get_transform("icrs"),
                   marker="+", s=60 if target is not None else 120, linewidths=1.0,
                   color="0.75" if target is not None else "cyan")
    if target is not None:
        ax.scatter([target.ra.deg], [target.dec.deg], transform=ax.get_transform("icrs"), marker="o",
                   s=260, facecolors="none", edgecolors="cyan", linewidths=1.3)
    _draw_beam(ax, header, wcs, data.shape)
    _draw_scale_bar(ax, wcs, shown)
    ax.set_xlim(-0.5, data.shape[1] - 0.5)
    ax.set_ylim(-0.5, data.shape[0] - 0.5)
    notes = [note for note in (plane_label(header), clipped) if note]
    ax.set_title("\n".join([title, *notes]), fontsize=FONT["title"])
    frame = celestial_frame(header)
    for axis, label in zip(ax.coords, (f"RA ({frame})", f"Dec ({frame})")):
        axis.set_axislabel(label, fontsize=FONT["label"])
        axis.set_ticklabel(size=FONT["ticks"])
        axis.set_ticks(number=3)


def contact_sheet(paths, output, *, positions=None, titles=None, columns=None, targets=None, overwrite=True):
    """Draw a grid of cutout images with WCS axes and the requested positions marked.

    Each panel has a colour bar in the file's ``BUNIT`` (mJy/beam for faint Jy/beam
    images), the restoring beam (``BMAJ``, ``BMIN``, ``BPA``) as a hatched ellipse at the
    lower left, and a scale bar at the lower right (or in another corner, when a source
    lies under the lower right one and the other corner is fainter).

    Parameters
    ----------
    paths : list of str or path-like
        FITS cutouts (or any images); at most `MAX_PANELS` are drawn.
    output : str or path-like
        The PNG file to write (through the package's one safe writer: never through a link).
    overwrite : bool, optional
        Replace an existing picture (default: plots are redrawn on every run); a file
        another run is still writing is never replaced.
    positions : `~astropy.coordinates.SkyCoord`, optional
        Positions to mark (a cyan ``+``) wherever they fall inside a panel.
    titles : list of str, optional
        One title per panel (default: the file names); say what the panel shows, e.g.
        the subtype, product and source.
    columns : int, optional
        Panels per row (default: about the square root of the count, at most 4).
    targets : list of `~astropy.coordinates.SkyCoord` or None, optional
        The source each panel is centred on (ringed in cyan; the other ``positions``
        then get a small grey cross).

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
    columns = columns or min(4, math.ceil(math.sqrt(len(paths))))
    rows = math.ceil(len(paths) / columns)
    figure = _new_figure(4.6 * columns + 0.3, 3.7 * rows + 0.3)
    figure.get_layout_engine().set(w_pad=0.12, wspace=0.08)
    targets = list(targets)[:len(paths)] if targets is not None else [None] * len(paths)
    for index, (path, title, target) in enumerate(zip(paths, titles, targets), start=1):
        _draw_panel(figure, (rows, columns), index, path, title, positions, target)
    _save(figure, output, overwrite)
    return len(paths)


def _save(figure, output, overwrite):
    """Save ``figure`` through `~astroquery_casda_ext.writer.atomic_output` (a link is refused)."""
    fmt = Path(output).suffix.lstrip(".").lower() or "png"
    with atomic_output(output, overwrite=overwrite) as stream:
        figure.savefig(stream, format=fmt, dpi=110)


def _short_name(path):
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-5] if name.endswith(".fits") else name


def _flux_scale(flux):
    """Fluxes in mJy/beam (or mJy) when they are below 1 Jy: the numbers radio astronomers quote."""
    for big, small in ((u.Jy / u.beam, u.mJy / u.beam), (u.Jy, u.mJy)):
        if flux.unit.is_equivalent(big) and np.nanmax(np.abs(flux.to_value(big))) < 1.0:
            return flux.to(small)
    return flux


def plot_light_curve(table, output, *, title=None, overwrite=True):
    """Draw a light curve: peak flux against time, each epoch a point with its rms as error bar.

    The bottom axis is MJD, the top one calendar dates; the legend gives the variability
    indices V and η (`astroquery_casda_ext.recipes.variability`) when there are two or
    more epochs.

    Parameters
    ----------
    table : `~astropy.table.Table`
        As returned by `astroquery_casda_ext.recipes.light_curve` (columns ``mjd``,
        ``peak_flux``, ``rms``).
    output : str or path-like
        The PNG file to write (through the package's one safe writer: never through a link).
    overwrite : bool, optional
        Replace an existing picture (default: plots are redrawn on every run); a file
        another run is still writing is never replaced.
    title : str, optional
    """
    import matplotlib.dates as mdates
    from .errors import InvalidTableError
    from .recipes import variability       # late: recipes imports this module
    figure = _new_figure(7.0, 4.2)
    ax = figure.add_subplot(1, 1, 1)
    flux = _flux_scale(u.Quantity(table["peak_flux"]))
    rms = u.Quantity(table["rms"]).to(flux.unit)
    mjd = np.asarray(table["mjd"], dtype=float)
    label = "peak flux"
    try:
        metrics = variability(table)
        label += f"  (V = {metrics.V:.2f}, \N{GREEK SMALL LETTER ETA} = {metrics.eta:.4g}" + \
            (", variable)" if metrics.variable else ")")
    except InvalidTableError:
        pass
    ax.errorbar(mjd, flux.value, yerr=rms.value, fmt="o", markersize=5, capsize=3, elinewidth=1, label=label)
    ax.set_xlabel("MJD", fontsize=FONT["label"])
    ax.set_ylabel(f"peak flux density ({flux.unit.to_string()})", fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["ticks"])
    if len(mjd):
        span = max(np.ptp(mjd), 1.0)
        ax.set_xlim(mjd.min() - 0.08 * span, mjd.max() + 0.08 * span)
    dates = ax.secondary_xaxis("top", functions=(lambda m: m - _MJD_UNIX_EPOCH,
                                                 lambda d: d + _MJD_UNIX_EPOCH))
    dates.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=5))
    dates.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    dates.tick_params(labelsize=FONT["ticks"])
    dates.set_xlabel("date (UTC)", fontsize=FONT["label"])
    ax.legend(fontsize=FONT["legend"], loc="best")
    ax.set_title(title or _light_curve_title(table), fontsize=FONT["title"])
    _save(figure, output, overwrite)


def _light_curve_title(table):
    """"Light curve of J211410.1-505845 (320.04200, -50.97921)" from the table's position."""
    if "ra" not in table.meta or "dec" not in table.meta:
        return table.meta.get("title", "light curve")
    from astropy.coordinates import SkyCoord
    from .reruns import _iau_name
    ra, dec = float(table.meta["ra"]), float(table.meta["dec"])
    return f"Light curve of {_iau_name(SkyCoord(ra, dec, unit='deg'))} ({ra:.5f}, {dec:+.5f})"


#: The 21-cm line of neutral hydrogen, for velocity axes.
HI_REST_FREQUENCY = 1420.405751786 * u.MHz


def plot_spectra(spectra, output, *, titles=None, rest_frequency=None, overwrite=True):
    """Draw one panel per spectrum: flux of each Stokes parameter against frequency.

    The frequency axis names its reference frame (the file's ``SPECSYS``, e.g. TOPOCENT or
    BARYCENT).  With a rest frequency (``rest_frequency``, else the file's ``RESTFREQ``) a
    top axis gives the radio velocity in that frame.

    Parameters
    ----------
    spectra : `~astropy.table.Table` or list of them
        As returned by `astroquery_casda_ext.recipes.spectrum_at` or
        `astroquery_casda_ext.recipes.read_spectrum`: a ``frequency`` column and one flux
        column per Stokes parameter (``I``, ``Q``, ``U``, ``V``).
    output : str or path-like
        The PNG file to write (through the package's one safe writer: never through a link).
    overwrite : bool, optional
        Replace an existing picture (default: plots are redrawn on every run); a file
        another run is still writing is never replaced.
    titles : list of str, optional
        One title per spectrum (default: each table's ``meta['title']``).
    rest_frequency : `~astropy.units.Quantity`, optional
        E.g. `HI_REST_FREQUENCY` for HI work.

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
    figure = _new_figure(5.0 * columns, 3.8 * rows)
    for index, spectrum in enumerate(spectra):
        ax = figure.add_subplot(rows, columns, index + 1)
        frequency = u.Quantity(spectrum["frequency"]).to(u.MHz, equivalencies=u.spectral())
        fluxes = [(s, u.Quantity(spectrum[s])) for s in spectrum.colnames if s in ("I", "Q", "U", "V")]
        unit = fluxes[0][1].unit if fluxes else u.dimensionless_unscaled
        if fluxes and unit != u.dimensionless_unscaled:
            peaks = [np.nanmax(np.abs(f.to_value(unit))) for _, f in fluxes]
            unit = _flux_scale(u.Quantity(peaks, unit)).unit
        for stokes, flux in fluxes:
            ax.plot(frequency.value, flux.to_value(unit), label=f"Stokes {stokes}", drawstyle="steps-mid",
                    linewidth=1.0)
        frame = str(spectrum.meta.get("specsys") or "frame not given")
        ax.set_xlabel(f"frequency, {frame} (MHz)", fontsize=FONT["label"])
        ax.set_ylabel(f"flux density ({unit.to_string() or _flux_unit(spectrum) or 'arbitrary'})",
                      fontsize=FONT["label"])
        ax.tick_params(labelsize=FONT["ticks"])
        ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)
        rest = rest_frequency if rest_frequency is not None else spectrum.meta.get("restfreq")
        if rest is not None and float(u.Quantity(rest, u.Hz).value) > 0:
            _velocity_axis(ax, u.Quantity(rest, u.Hz), frame)
        if fluxes:
            ax.legend(fontsize=FONT["legend"])
        title = titles[index] if titles else spectrum.meta.get("title", "")
        ax.set_title(title, fontsize=FONT["title"])
    _save(figure, output, overwrite)
    return len(spectra)


def _velocity_axis(ax, rest, frame):
    """A top axis of radio velocity (km/s) for the rest frequency ``rest``."""
    nu0 = rest.to_value(u.MHz)
    c_kms = 299792.458

    def to_velocity(nu):
        return c_kms * (1.0 - np.asarray(nu, dtype=float) / nu0)

    def to_frequency(v):
        return nu0 * (1.0 - np.asarray(v, dtype=float) / c_kms)

    top = ax.secondary_xaxis("top", functions=(to_velocity, to_frequency))
    top.set_xlabel(f"radio velocity, {frame} (km/s; rest {nu0:.4f} MHz)", fontsize=FONT["label"])
    top.tick_params(labelsize=FONT["ticks"])


def _flux_unit(spectrum):
    for name in ("I", "Q", "U", "V"):
        if name in spectrum.colnames and spectrum[name].unit is not None:
            return spectrum[name].unit.to_string()
    return ""
