"""Science recipes: whole workflows on top of the `~astroquery_casda_ext.CasdaClass` façade.

Each recipe finds products, runs *one* SODA job for all of them, downloads and verifies
the files, and measures something in them:

* `light_curve` — the peak flux at a position in every epoch of a field, and
  `variability` — whether that light curve is consistent with a constant source;
* `spectrum_at` — a spectrum (every Stokes parameter) at a position from a cube, through
  CASDA's spectrum generation service or a cutout along the spectral axis;
* `compare_with_vizier` — CASDA catalogue components matched against another archive's
  catalogue (NVSS by default) with ``astroquery.vizier``.

`wait_for_jobs` and `download_jobs` are the shared plumbing (the ``casda`` command line
uses them too).  Pictures: `plot_light_curve`, `plot_spectra` (matplotlib, optional).
"""
import math
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import FITSFixedWarning, WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from .errors import InvalidInputError, InvalidTableError
from .jobs import PollPolicy, wait_all
from .plots import celestial_wcs, plot_light_curve, plot_spectra, read_image_plane
from .regions import format_number, parse_coordinates, parse_pol, parse_radius

__all__ = ["light_curve", "measure_peak", "variability", "VariabilityResult", "spectrum_at",
           "read_spectrum", "combine_spectra", "compare_with_vizier", "wait_for_jobs",
           "download_jobs", "plot_light_curve", "plot_spectra",
           "V_THRESHOLD", "ETA_THRESHOLD"]

#: Fractional variability ``V = std / mean`` above which a source may be variable.
V_THRESHOLD = 0.1
#: Reduced chi-square against a constant (``eta``) above which the variation is significant.
ETA_THRESHOLD = 5.0
#: Radius of the cutouts a light curve is measured in.
LIGHT_CURVE_CUTOUT_RADIUS = 2 * u.arcmin
#: Aperture of `spectrum_at`: about twice an ASKAP beam, so a point source's flux is all in it.
SPECTRUM_RADIUS = 30 * u.arcsec
#: Stokes parameter of each FITS ``STOKES`` axis value.
STOKES_NAMES = {1: "I", 2: "Q", 3: "U", 4: "V"}


# --- jobs and downloads -------------------------------------------------------------------------

def wait_for_jobs(jobs, *, policy=None, on_phase=None, sleep=None):
    """Wait for every job to finish and raise if one failed.

    Parameters
    ----------
    jobs : list of `~astroquery_casda_ext.jobs.SodaJob`
    policy : `~astroquery_casda_ext.jobs.PollPolicy`, optional
        Default `~astroquery_casda_ext.jobs.PollPolicy.from_conf`.
    on_phase : callable, optional
        ``on_phase(job, phase, elapsed_seconds)``, whenever a job's phase changes.
    sleep : callable, optional
        Replaces ``time.sleep`` between looks at a job (e.g. to refresh a progress display).

    Raises
    ------
    astroquery_casda_ext.errors.JobFailedError
        A job ended in ERROR or ABORTED.
    astroquery_casda_ext.errors.JobTimeoutError
        A job was still running at the policy's timeout.
    """
    policy = policy or PollPolicy.from_conf()
    extra = {} if sleep is None else {"sleep": sleep}
    jobs = list(jobs)
    wait_all(jobs, policy, on_phase=on_phase, **extra)   # one loop over every pending job
    for job in jobs:
        job.raise_if_error()


def download_jobs(casda, jobs, savedir, *, progress=None, no_wait=False):
    """Download and verify what finished jobs produced; write the manifest into ``savedir``.

    Parameters
    ----------
    casda : `~astroquery_casda_ext.CasdaClass`
    jobs : list of `~astroquery_casda_ext.jobs.SodaJob` or of URLs
        Finished jobs (their files and error files), or file URLs.
    savedir : str or path-like
        Created if needed.
    progress : bool, optional
        Progress bars (default: when standard error is a terminal).
    no_wait : bool, optional
        Fail at once if another download is writing into ``savedir`` (default: wait).

    Returns
    -------
    `~astroquery_casda_ext.download.Manifest`

    Raises
    ------
    astroquery_casda_ext.errors.DownloadError
        If any file could not be downloaded and verified (the others are kept).
    """
    Path(savedir).mkdir(parents=True, exist_ok=True)
    manifest = casda.download(jobs, savedir, progress=progress, no_wait=no_wait)
    manifest.raise_for_errors()
    return manifest


def _data_rows(manifest):
    """(product_id, path) of every verified data file of a manifest (error files excluded)."""
    table = manifest.table
    keep = (table["kind"] == "data") & (table["status"] != "ERROR")
    return [(str(row["product_id"]), str(row["path"])) for row in table[keep]]


def _run(casda, jobs, savedir, policy, on_phase, progress):
    wait_for_jobs(jobs, policy=policy, on_phase=on_phase)
    return download_jobs(casda, jobs, savedir, progress=progress)


# --- light curves --------------------------------------------------------------------------------

def light_curve(casda, coordinates, start, end, *, radius=LIGHT_CURVE_CUTOUT_RADIUS, collection=None,
                savedir=".", policy=None, on_phase=None, progress=False):
    """The light curve of a position: its peak flux in every image of the field over a time interval.

    Finds the continuum images covering the position observed between ``start`` and ``end``
    (`~astroquery_casda_ext.CasdaClass.query_images_in_interval`), cuts a circle around the
    position out of all of them in one SODA job, downloads and verifies the cutouts, and
    measures each (`measure_peak`).  Needs a login.

    Parameters
    ----------
    casda : `~astroquery_casda_ext.CasdaClass`
        A logged-in client.
    coordinates : str or `~astropy.coordinates.SkyCoord`
        The source position.
    start, end : `~astropy.time.Time`, ISO string or MJD
        The time interval.
    radius : `~astropy.units.Quantity` or str, optional
        Cutout radius (default 2 arcmin: room for a local rms around the source).
    collection : str, optional
        Only images of this project (``obs_collection``).
    savedir : str or path-like, optional
        Where the cutouts and their manifest go.
    policy : `~astroquery_casda_ext.jobs.PollPolicy`, optional
    on_phase : callable, optional
        ``on_phase(job, phase, elapsed)`` as in `wait_for_jobs`.
    progress : bool, optional
        Show download progress bars.

    Returns
    -------
    `~astropy.table.Table`
        One row per epoch, oldest first: ``time`` (`~astropy.time.Time`, mid-observation),
        ``mjd``, ``product_id``, ``sbid``, ``peak_flux`` and ``rms`` (Jy/beam), ``snr`` and
        ``path`` (the cutout).  ``meta`` holds the position (``ra``, ``dec`` in degrees).

    Raises
    ------
    astroquery_casda_ext.errors.InvalidTableError
        No image covers the position in the interval.
    """
    position = parse_coordinates(coordinates)
    radius = parse_radius(radius)
    images = casda.query_images_in_interval(position, start, end, collection=collection)
    if images is None or len(images) == 0:
        raise InvalidTableError(f"no images cover {position.to_string('decimal')} between {start} and {end}")
    jobs = casda.cutout(images, coordinates=position, radius=radius, wait=False)
    manifest = _run(casda, jobs, savedir, policy, on_phase, progress)
    rows = _epoch_rows(images, _data_rows(manifest), position)
    return _light_curve_table(rows, position)


def _epoch_rows(images, files, position):
    by_product = {str(row["obs_publisher_did"]): row for row in images}
    rows = []
    for product_id, path in files:
        image = by_product.get(product_id)
        if image is None or not path.endswith(".fits"):
            continue
        peak, rms = measure_peak(path, position)
        mjd = _mid_mjd(image)
        rows.append((mjd, product_id, _sbid(image), peak.to_value(u.Jy / u.beam),
                     rms.to_value(u.Jy / u.beam), path))
    return sorted(rows)


def _light_curve_table(rows, position):
    names = ("mjd", "product_id", "sbid", "peak_flux", "rms", "path")
    table = Table(rows=rows or None, names=names, dtype=(float, str, int, float, float, str))
    table["peak_flux"].unit = table["rms"].unit = u.Jy / u.beam
    table["snr"] = np.divide(table["peak_flux"], table["rms"], out=np.zeros(len(table)),
                             where=np.asarray(table["rms"]) > 0)
    times = Time(np.asarray(table["mjd"], dtype=float), format="mjd", scale="utc")
    table.add_column(times, name="time", index=0)
    table.meta.update(ra=float(position.ra.deg), dec=float(position.dec.deg),
                      title=f"light curve at {position.to_string('decimal', precision=5)}")
    return table


def _mid_mjd(image):
    values = [float(image[name]) for name in ("t_min", "t_max")
              if name in image.colnames and not np.ma.is_masked(image[name])]
    if not values:
        raise InvalidTableError(f"image {image['obs_publisher_did']} has no t_min/t_max: cannot date it")
    return sum(values) / len(values)


def _sbid(image):
    try:
        return int(str(image["obs_id"]).strip())
    except (KeyError, ValueError):
        return -1


def measure_peak(path, coordinates, *, search_radius=None):
    """Peak flux near a position in an image, and the local rms around it.

    The peak is the brightest pixel within ``search_radius`` of the position; the rms is a
    sigma-clipped, MAD-based standard deviation of the pixels farther than twice the beam
    from it (so the source does not inflate it).

    Parameters
    ----------
    path : str or path-like
        A FITS image or cutout (the first sky plane is used).
    coordinates : `~astropy.coordinates.SkyCoord` or str
    search_radius : `~astropy.units.Quantity`, optional
        Default: half the restoring beam's major axis (``BMAJ``), at least 1.5 pixels.

    Returns
    -------
    peak, rms : `~astropy.units.Quantity`
        In the image's ``BUNIT`` (Jy/beam for ASKAP images).

    Raises
    ------
    ValueError
        The position is not inside the image.
    """
    position = parse_coordinates(coordinates)
    data, wcs, header = read_image_plane(path)
    x, y = (float(v) for v in wcs.world_to_pixel(position))
    if not (-0.5 <= x <= data.shape[1] - 0.5 and -0.5 <= y <= data.shape[0] - 0.5):
        raise ValueError(f"{path}: {position.to_string('decimal')} is outside the image")
    pixel_deg = float(np.mean(proj_plane_pixel_scales(wcs)))
    beam_deg = float(header.get("BMAJ", 3 * pixel_deg))
    search_deg = search_radius.to_value(u.deg) if search_radius is not None else beam_deg / 2
    yy, xx = np.indices(data.shape)
    distance = np.hypot(xx - x, yy - y) * pixel_deg
    finite = np.isfinite(data)
    inner = finite & (distance <= max(search_deg, 1.5 * pixel_deg))
    outer = finite & (distance > 2 * beam_deg)
    if outer.sum() < 20:          # a tiny cutout: use everything but the inner region
        outer = finite & ~inner
    unit = _image_unit(header)
    peak = float(np.max(data[inner])) if inner.any() else math.nan
    rms = math.nan
    if outer.any():
        _, _, rms = sigma_clipped_stats(data[outer], sigma=3.0, stdfunc="mad_std")
    return peak * unit, float(rms) * unit


def _image_unit(header):
    text = str(header.get("BUNIT", "Jy/beam")).strip() or "Jy/beam"
    try:
        return u.Unit(text.replace("JY", "Jy").replace("BEAM", "beam"))
    except ValueError:
        return u.Jy / u.beam


class VariabilityResult(dict):
    """Variability metrics of a light curve (a dict; keys also readable as attributes).

    Keys: ``n_epochs``, ``mean_flux``, ``weighted_mean_flux`` (Jy/beam), ``V``
    (std/mean), ``eta`` (reduced chi-square against a constant), ``chi2``, ``dof``,
    ``max_ratio`` (brightest/faintest epoch), ``variable`` (bool), and the thresholds used
    (``v_threshold``, ``eta_threshold``).
    """

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def variability(table, *, v_threshold=V_THRESHOLD, eta_threshold=ETA_THRESHOLD):
    """Variability metrics of a light curve, and whether it is variable.

    With fluxes :math:`f_i` and errors :math:`\\sigma_i` (the local rms) over :math:`N` epochs:

    * :math:`V = s / \\bar f`, the fractional variability (sample standard deviation over
      mean; the modulation index of VAST);
    * :math:`\\chi^2 = \\sum_i (f_i - \\bar f_w)^2 / \\sigma_i^2` against a constant source at
      the weighted mean :math:`\\bar f_w`, and :math:`\\eta = \\chi^2 / (N - 1)`, the
      reduced chi-square (VAST's :math:`\\eta` statistic).

    A source is flagged ``variable`` when **both** ``V > v_threshold`` (it changes by a
    meaningful fraction) and ``eta > eta_threshold`` (the change is much larger than the
    noise).  Needing both keeps faint steady sources (large V from noise, eta near 1) and
    bright steady sources (eta inflated by tiny calibration differences, V near 0) unflagged.

    Parameters
    ----------
    table : `~astropy.table.Table`
        With ``peak_flux`` and ``rms`` columns, as from `light_curve`.
    v_threshold : float, optional
        Default `V_THRESHOLD` (0.1).
    eta_threshold : float, optional
        Default `ETA_THRESHOLD` (5).

    Returns
    -------
    VariabilityResult

    Raises
    ------
    astroquery_casda_ext.errors.InvalidTableError
        Fewer than two epochs, or missing columns.
    """
    for name in ("peak_flux", "rms"):
        if name not in table.colnames:
            raise InvalidTableError(f"variability needs a {name!r} column (as from light_curve)")
    flux = u.Quantity(table["peak_flux"], u.Jy / u.beam).value
    sigma = u.Quantity(table["rms"], u.Jy / u.beam).value
    good = np.isfinite(flux) & np.isfinite(sigma) & (sigma > 0)
    flux, sigma = flux[good], sigma[good]
    if flux.size < 2:
        raise InvalidTableError(f"variability needs at least 2 measured epochs, got {flux.size}")
    weights = 1.0 / sigma ** 2
    weighted_mean = float(np.sum(weights * flux) / np.sum(weights))
    chi2 = float(np.sum(weights * (flux - weighted_mean) ** 2))
    mean = float(np.mean(flux))
    v_index = float(np.std(flux, ddof=1) / mean) if mean != 0 else math.inf
    eta = chi2 / (flux.size - 1)
    return VariabilityResult(
        n_epochs=int(flux.size), mean_flux=mean * u.Jy / u.beam,
        weighted_mean_flux=weighted_mean * u.Jy / u.beam, V=v_index, eta=eta, chi2=chi2,
        dof=int(flux.size - 1), max_ratio=float(flux.max() / flux.min()) if flux.min() > 0 else math.inf,
        variable=bool(v_index > v_threshold and eta > eta_threshold),
        v_threshold=v_threshold, eta_threshold=eta_threshold)


# --- spectra --------------------------------------------------------------------------------------

def spectrum_at(casda, coordinates, *, cube=None, radius=SPECTRUM_RADIUS, pol=None, method="service",
                savedir=".", policy=None, on_phase=None, progress=False):
    """A spectrum at a position from a spectral or polarisation cube, every Stokes parameter.

    Parameters
    ----------
    casda : `~astroquery_casda_ext.CasdaClass`
        A logged-in client.
    coordinates : str or `~astropy.coordinates.SkyCoord`
    cube : `~astropy.table.Table`, `~astropy.table.Row` or str, optional
        The cube (an ObsCore row or a product id such as ``'cube-1005'``).  Default: the
        first cube whose footprint contains the position, has more than one channel and
        (when ``pol`` is given) all the requested Stokes parameters.
    radius : `~astropy.units.Quantity` or str, optional
        Aperture radius for the spectrum generation service, or the cutout radius.
    pol : str or list of str, optional
        Stokes parameters, e.g. ``['Q', 'U']`` for a rotation-measure analysis (default: all
        in the cube).
    method : {"service", "cutout"}
        ``"service"``: CASDA's spectrum generation service sums the aperture (the flux
        comes back in Jy); ``"cutout"``: a cutout along the whole spectral axis, read at
        the pixel of the position (Jy/beam).
    savedir : str or path-like, optional
        Where the downloaded files and the manifest go.

    Returns
    -------
    `~astropy.table.Table`
        ``frequency`` (Hz) and one flux column per Stokes parameter (``I``, ``Q``, ``U``,
        ``V``); ``meta`` holds ``product_id``, ``method``, ``ra``, ``dec`` and ``title``.

    Raises
    ------
    astroquery_casda_ext.errors.InvalidInputError
        Unknown ``method``, or no suitable cube covers the position.
    """
    if method not in ("service", "cutout"):
        raise InvalidInputError(f"method must be 'service' or 'cutout', not {method!r}")
    position = parse_coordinates(coordinates)
    pols = parse_pol(pol) if pol is not None else None
    product_id = _cube_id(casda, position, cube, pols)
    if method == "service":
        jobs = casda.spectra([product_id], position, radius=parse_radius(radius), pol=pols, wait=False)
    else:
        jobs = casda.cutout([product_id], coordinates=position, radius=parse_radius(radius), pol=pols,
                            wait=False)
    manifest = _run(casda, jobs, savedir, policy, on_phase, progress)
    spectra = [read_spectrum(path, position) for pid, path in _data_rows(manifest) if path.endswith(".fits")]
    if not spectra:
        raise InvalidInputError(f"the job produced no spectrum of {product_id} at "
                                f"{position.to_string('decimal')}")
    spectrum = combine_spectra(spectra)
    spectrum.meta.update(product_id=product_id, method=method, ra=float(position.ra.deg),
                         dec=float(position.dec.deg),
                         title=f"{product_id} at {position.to_string('decimal', precision=4)}")
    return spectrum


def _cube_id(casda, position, cube, pols):
    """The product id of the cube to use: the given one, or the best cube covering the position."""
    if isinstance(cube, str):
        return cube.strip()
    if cube is not None:
        row = cube if not isinstance(cube, Table) else (cube[0] if len(cube) else None)
        if row is None:
            raise InvalidTableError("the cube table is empty")
        return str(row["obs_publisher_did"])
    candidates = casda.query_products_at(position, dataproduct_type="cube")
    for row in candidates if candidates is not None else []:
        if _channels(row) > 1 and _has_pols(row, pols):
            return str(row["obs_publisher_did"])
    wanted = f" with Stokes {'/'.join(pols)}" if pols else ""
    raise InvalidInputError(f"no spectral cube{wanted} covers {position.to_string('decimal')}")


def _channels(row):
    if "em_xel" in row.colnames and not np.ma.is_masked(row["em_xel"]):
        return int(row["em_xel"])
    subtype = str(row["dataproduct_subtype"]) if "dataproduct_subtype" in row.colnames else ""
    return 2 if subtype.endswith((".3d", ".4d")) else 1


def _has_pols(row, pols):
    if not pols:
        return True
    states = str(row["pol_states"]) if "pol_states" in row.colnames else "/I/"
    return all(f"/{p}/" in states for p in pols)


def read_spectrum(path, coordinates=None):
    """Read a spectrum file, or a cube's spectra at a position, into a table.

    Handles CASDA spectrum-generation output (1-D FITS with a ``FREQ`` axis and a
    ``STOKES`` keyword) and image cubes or cutouts (a ``FREQ`` axis, optionally a
    ``STOKES`` axis: each Stokes plane becomes a column, read at the pixel nearest
    ``coordinates``, or at the centre).

    Parameters
    ----------
    path : str or path-like
    coordinates : `~astropy.coordinates.SkyCoord` or str, optional

    Returns
    -------
    `~astropy.table.Table`
        ``frequency`` (Hz) and one column per Stokes parameter, in the file's ``BUNIT``;
        ``meta['specsys']`` (the frame) and, when the file has one, ``meta['restfreq']``.

    Raises
    ------
    ValueError
        The file has no spectral axis.
    """
    with fits.open(path) as hdul:
        hdu = next((h for h in hdul if h.data is not None and h.data.ndim >= 1), None)
        if hdu is None:
            raise ValueError(f"{path}: no data")
        data, header = np.asarray(hdu.data, dtype=float), hdu.header.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    spec = wcs.wcs.spec
    if spec < 0:
        raise ValueError(f"{path}: no spectral axis")
    frequency = _axis_world(wcs, spec, data.shape[data.ndim - 1 - spec]) * _axis_unit(wcs, spec)
    frequency = frequency.to(u.Hz, equivalencies=u.spectral())
    unit = _image_unit(header) if "BUNIT" in header else u.dimensionless_unscaled
    table = Table({"frequency": frequency})
    for name, values in _stokes_spectra(data, header, wcs, spec, coordinates):
        table[name] = values * unit
    # the reference frame and rest frequency, for plots' axis labels and velocity axes
    table.meta["specsys"] = str(header.get("SPECSYS", "")).strip()
    rest = header.get("RESTFRQ", header.get("RESTFREQ"))
    if rest:
        table.meta["restfreq"] = float(rest) * u.Hz
    return table


def _axis_world(wcs, axis, length):
    sub = wcs.sub([axis + 1])
    return np.asarray(sub.pixel_to_world_values(np.arange(length)), dtype=float).ravel()


def _axis_unit(wcs, axis):
    unit = wcs.wcs.cunit[axis]
    return u.Unit(unit) if str(unit) else u.Hz


def _stokes_spectra(data, header, wcs, spec, coordinates):
    """(Stokes name, 1-D values) for each Stokes plane of ``data``."""
    ndim = data.ndim
    if ndim == 1:
        return [(str(header.get("STOKES", "I")).strip().upper() or "I", data)]
    index = [0] * ndim                         # numpy order: axis i of the WCS is numpy axis ndim-1-i
    index[ndim - 1 - spec] = slice(None)
    if wcs.wcs.lng >= 0 and wcs.wcs.lat >= 0:
        nx, ny = data.shape[ndim - 1 - wcs.wcs.lng], data.shape[ndim - 1 - wcs.wcs.lat]
        x, y = _pixel_of(wcs, coordinates, nx, ny)
        index[ndim - 1 - wcs.wcs.lng], index[ndim - 1 - wcs.wcs.lat] = x, y
    stokes_axis = next((i for i, t in enumerate(wcs.wcs.ctype) if t.upper().startswith("STOKES")), None)
    if stokes_axis is None:
        return [("I", data[tuple(index)])]
    codes = _axis_world(wcs, stokes_axis, data.shape[ndim - 1 - stokes_axis])
    spectra = []
    for plane, code in enumerate(codes):
        index[ndim - 1 - stokes_axis] = plane
        spectra.append((STOKES_NAMES.get(int(round(code)), f"S{int(round(code))}"), data[tuple(index)]))
    return spectra


def _pixel_of(wcs, coordinates, nx, ny):
    """Nearest pixel (x, y) of a position (the centre when none), clipped to the image."""
    if coordinates is None:
        return nx // 2, ny // 2
    x, y = celestial_wcs(wcs.to_header()).world_to_pixel(parse_coordinates(coordinates))
    return int(np.clip(round(float(x)), 0, nx - 1)), int(np.clip(round(float(y)), 0, ny - 1))


def combine_spectra(spectra):
    """Join spectra of the same position (e.g. one file per Stokes) on their frequencies.

    Returns
    -------
    `~astropy.table.Table`
        ``frequency`` and every Stokes column, ordered I, Q, U, V.

    Raises
    ------
    ValueError
        The spectra do not share the same frequencies.
    """
    combined = Table({"frequency": spectra[0]["frequency"]})
    for spectrum in spectra:
        if len(spectrum) != len(combined) or not np.allclose(spectrum["frequency"], combined["frequency"]):
            raise ValueError("the spectra have different frequency axes and cannot be combined")
        for name in spectrum.colnames[1:]:
            combined[name] = spectrum[name]
    order = [name for name in ("I", "Q", "U", "V") if name in combined.colnames]
    others = [name for name in combined.colnames[1:] if name not in order]
    return combined[["frequency"] + order + others]


# --- cross-archive --------------------------------------------------------------------------------

_NVSS = "VIII/65/nvss"


def compare_with_vizier(casda, coordinates, radius, *, catalog=_NVSS, match_radius=20 * u.arcsec,
                        vizier=None):
    """Match CASDA continuum components in a cone with another catalogue from VizieR.

    CASDA's ``casda.continuum_component`` table is queried through TAP; the other catalogue
    (NVSS, 1.4 GHz, by default) through ``astroquery.vizier``.  Each CASDA component gets its
    nearest counterpart within ``match_radius``.

    Parameters
    ----------
    casda : `~astroquery_casda_ext.CasdaClass`
    coordinates : str or `~astropy.coordinates.SkyCoord`
        Centre of the cone.
    radius : `~astropy.units.Quantity` or str
        Cone radius (at most 1 degree: both services answer quickly below that).
    catalog : str, optional
        A VizieR catalogue with positions (``_RAJ2000``/``_DEJ2000`` are computed by VizieR).
    match_radius : `~astropy.units.Quantity`, optional
        Largest separation of a match.
    vizier : `astroquery.vizier.VizierClass`, optional
        The VizieR client (default: a new one returning every row).

    Returns
    -------
    `~astropy.table.Table`
        One row per CASDA component: ``component_name``, ``ra``, ``dec``, ``flux_peak``,
        ``flux_int`` (CASDA's units), ``matched`` (bool), ``separation`` (arcsec),
        ``other_flux`` (the counterpart's first flux column, e.g. NVSS ``S1.4`` in mJy) and
        ``flux_ratio`` (``flux_int / other_flux``; differs from 1 with frequency).
    """
    centre = parse_coordinates(coordinates)
    radius = parse_radius(radius, max_deg=1.0)
    components = casda.query_tap(_cone_adql(centre, radius))
    if vizier is None:
        from astroquery.vizier import Vizier
        vizier = Vizier(columns=["*", "_RAJ2000", "_DEJ2000"], row_limit=-1)
    found = vizier.query_region(centre, radius=radius, catalog=catalog)
    other = found[0] if len(found) else Table({"_RAJ2000": [], "_DEJ2000": []})
    return _match(components, other, match_radius)


def _cone_adql(centre, radius):
    return ("SELECT component_name, ra_deg_cont, dec_deg_cont, flux_peak, flux_int "
            "FROM casda.continuum_component WHERE 1 = CONTAINS(POINT('ICRS', ra_deg_cont, dec_deg_cont), "
            f"CIRCLE('ICRS', {format_number(centre.ra.deg)}, {format_number(centre.dec.deg)}, "
            f"{format_number(radius.to_value(u.deg))}))")


def _match(components, other, match_radius):
    table = Table()
    for name, source in (("component_name", "component_name"), ("ra", "ra_deg_cont"), ("dec", "dec_deg_cont"),
                         ("flux_peak", "flux_peak"), ("flux_int", "flux_int")):
        table[name] = components[source]
    count = len(components)
    table["matched"] = np.zeros(count, bool)
    table["separation"] = np.full(count, np.nan) * u.arcsec
    flux_column = next((c for c in other.colnames if c.startswith("S") and other[c].dtype.kind == "f"), None)
    table["other_flux"] = np.full(count, np.nan)
    if count and len(other):
        ours = SkyCoord(table["ra"], table["dec"], unit="deg")
        theirs = SkyCoord(other["_RAJ2000"], other["_DEJ2000"], unit="deg")
        index, separation = _nearest(ours, theirs)
        matched = separation <= match_radius
        table["matched"] = matched
        table["separation"] = np.where(matched, separation.to_value(u.arcsec), np.nan) * u.arcsec
        if flux_column:
            values = np.asarray(other[flux_column], dtype=float)[index]
            table["other_flux"] = np.where(matched, values, np.nan)
            table["other_flux"].unit = other[flux_column].unit
    flux_int = np.asarray(table["flux_int"], dtype=float)
    table["flux_ratio"] = flux_int / np.asarray(table["other_flux"], dtype=float)
    return table


def _nearest(ours, theirs, chunk=2000):
    """Index of and separation to the nearest of ``theirs`` for each of ``ours``.

    A brute-force search in chunks (a cone holds at most thousands of sources), because
    astropy's ``match_to_catalog_sky`` needs scipy, which is not a dependency.
    """
    indices, separations = [], []
    for start in range(0, len(ours), chunk):
        block = ours[start:start + chunk]
        distance = block[:, np.newaxis].separation(theirs[np.newaxis, :])
        nearest = np.argmin(distance, axis=1)
        indices.append(nearest)
        separations.append(distance[np.arange(len(block)), nearest])
    return np.concatenate(indices), u.Quantity(np.concatenate(separations))
