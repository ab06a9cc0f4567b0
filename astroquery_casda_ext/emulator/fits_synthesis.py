"""FITS files shaped like the ones ASKAPsoft deposits in CASDA, from the sky model.

4-D ``RA---SIN``/``DEC--SIN``/``FREQ``/``STOKES`` continuum images, spectral-line cubes and
I/Q/U/V cubes (``Jy/beam``, restoring beam keywords) with Gaussian sources where
``sky_model`` puts them, and the bulk files of the benchmarks.  Files are streamed as
byte chunks (`fits_chunks`) through ``sidecars.write_file``, so no file is held whole.
Also used by ``cutouts.py`` to write cutouts and spectra.
"""
import math

import numpy as np
from astropy.io import fits

from .sidecars import write_file
from .sky_model import (
    BULK_FIELD, BULK_PROJECT, BULK_SBID, HI_REST_FREQUENCY, LINE_CHANNEL_WIDTH_HZ, POL_ANGLE0, POL_FRACTION,
    POL_ROTATION_MEASURE, SPEED_OF_LIGHT, Grid, continuum_grid, cube_grid, epoch_flux, iso_mjd,
    line_frequencies, pol_frequencies, source_seed, spectral_line_source)

__all__ = ["fits_chunks", "fits_header_bytes", "write_image", "bulk_chunks", "bulk_obscore_header",
           "FITS_BLOCK"]


FITS_BLOCK = 2880


#: Bytes per write when streaming a bulk file (also the period of its byte pattern).
BULK_CHUNK = 1 << 20


FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _add_gaussian(image, x, y, peak, beam, cdelt):
    """Add an elliptical Gaussian (FWHM = the beam) centred on pixel (x, y) of a 2-D image."""
    bmaj, bmin, bpa = beam
    smaj = bmaj / 3600.0 / cdelt * FWHM_TO_SIGMA
    smin = bmin / 3600.0 / cdelt * FWHM_TO_SIGMA
    half = int(math.ceil(5.0 * smaj))
    y0, y1 = max(y - half, 0), min(y + half + 1, image.shape[0])
    x0, x1 = max(x - half, 0), min(x + half + 1, image.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    dy, dx = np.mgrid[y0 - y:y1 - y, x0 - x:x1 - x]
    # Position angle runs from north through east; RA (east) grows towards smaller x.
    theta = math.radians(bpa)
    east, north = -dx, dy
    along = east * math.sin(theta) + north * math.cos(theta)
    across = east * math.cos(theta) - north * math.sin(theta)
    image[y0:y1, x0:x1] += peak * np.exp(-0.5 * ((along / smaj) ** 2 + (across / smin) ** 2))


def fits_header_bytes(header):
    """The header as FITS bytes, END card included, padded to whole 2880-byte blocks."""
    return header.tostring(endcard=True, padding=True).encode("ascii")


def fits_chunks(header, planes, *, dtype=">f4"):
    """Yield the bytes of a single-HDU FITS file: header, data planes, block padding.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Complete primary header (SIMPLE, BITPIX, NAXISn first).
    planes : iterable of numpy.ndarray
        The data in file order, e.g. one 2-D plane at a time, so large files stream.
    dtype : str
        Big-endian dtype matching BITPIX.
    """
    yield fits_header_bytes(header)
    written = 0
    for plane in planes:
        data = np.ascontiguousarray(plane, dtype=dtype).tobytes()
        written += len(data)
        yield data
    if written % FITS_BLOCK:
        yield bytes(FITS_BLOCK - written % FITS_BLOCK)


def _common_cards(bunit, beam):
    return [("BUNIT", bunit), ("BMAJ", beam[0] / 3600.0), ("BMIN", beam[1] / 3600.0), ("BPA", beam[2])]


def _tail_cards(obs, restfreq=None):
    cards = [("RESTFREQ", restfreq)] if restfreq else []
    return cards + [
        ("SPECSYS", "TOPOCENT"), ("BTYPE", "Intensity"), ("OBJECT", obs.field.name),
        ("TELESCOP", "ASKAP"), ("PROJECT", obs.project), ("SBID", str(obs.sbid)),
        ("DATE-OBS", obs.start + ".000"), ("MJD-OBS", iso_mjd(obs.start)), ("TIMESYS", "UTC"),
        ("DURATION", obs.duration_s), ("ORIGIN", "CSIRO CASDA emulator (synthetic data)"),
    ]


def _header(grid, shape, spectral, stokes, cards_before, cards_after):
    """Primary header of a 4-D ASKAP-style image; shape is numpy order (stokes, freq, y, x)."""
    crval3, cdelt3 = spectral
    axes = [("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 4), ("NAXIS1", shape[3]), ("NAXIS2", shape[2]),
            ("NAXIS3", shape[1]), ("NAXIS4", shape[0]), ("EXTEND", True)]
    world = grid.celestial_cards() + [
        ("CTYPE3", "FREQ"), ("CRVAL3", crval3), ("CDELT3", cdelt3), ("CRPIX3", 1.0), ("CUNIT3", "Hz"),
        ("CTYPE4", "STOKES"), ("CRVAL4", float(stokes)), ("CDELT4", 1.0), ("CRPIX4", 1.0), ("CUNIT4", ""),
    ]
    return fits.Header(axes + cards_before + world + cards_after)


def _radius_map(n):
    yy, xx = np.mgrid[0:n, 0:n]
    return np.hypot(xx - n // 2, yy - n // 2) / (n / 2.0)


def _continuum_data(config, plan, sky):
    obs, fld = plan.observation, plan.observation.field
    grid = continuum_grid(config, fld)
    if plan.subtype == "cont.noise.t0":
        return grid, (fld.rms_mjy / 1000.0 * (1.0 + 0.6 * _radius_map(grid.n) ** 2)).astype(np.float32)
    if plan.subtype == "cont.weight.t0":
        return grid, np.exp(-(_radius_map(grid.n) / 0.9) ** 2).astype(np.float32)
    rng = np.random.default_rng(source_seed(config, "noise", plan.relpath))
    image = rng.normal(0.0, fld.rms_mjy / 1000.0, size=(grid.n, grid.n))
    for source in sky[fld.name]:
        peak = epoch_flux(source, obs.epoch) / 1000.0
        _add_gaussian(image, source.x, source.y, peak, fld.beam, grid.cdelt)
    return grid, image.astype(np.float32)


def _render_continuum(config, plan, sky):
    grid, image = _continuum_data(config, plan, sky)
    obs, fld = plan.observation, plan.observation.field
    bunit = "" if plan.subtype == "cont.weight.t0" else "Jy/beam"
    header = _header(grid, (1, 1) + image.shape, (fld.freq_mhz * 1e6, fld.bandwidth_mhz * 1e6), 1,
                     _common_cards(bunit, fld.beam), _tail_cards(obs))
    return header, image[np.newaxis, np.newaxis]


def _cube_offset(config, fld, grid):
    """Pixel shift from the continuum grid to a cube grid (both centred on the field centre)."""
    return grid.n // 2 - continuum_grid(config, fld).n // 2


def _render_spectral(config, plan, sky):
    """A continuum-subtracted line cube: noise plus one line source at the cube centre."""
    obs, fld = plan.observation, plan.observation.field
    grid = cube_grid(config, fld, config.cube_pixels)
    freqs = line_frequencies(config)
    line = spectral_line_source(obs.sbid, config)
    sigma = max(1.0, config.cube_channels / 16.0)
    profile = line["peak"] * np.exp(-0.5 * ((np.arange(freqs.size) - (line["channel"] - 1)) / sigma) ** 2)
    rng = np.random.default_rng(source_seed(config, "noise", plan.relpath))
    cube = rng.normal(0.0, 0.0015, size=(freqs.size, grid.n, grid.n))
    beam_image = np.zeros((grid.n, grid.n))
    _add_gaussian(beam_image, grid.n // 2, grid.n // 2, 1.0, fld.beam, grid.cdelt)
    cube += profile[:, None, None] * beam_image[None]
    header = _header(grid, (1,) + cube.shape, (float(freqs[0]), LINE_CHANNEL_WIDTH_HZ), 1,
                     _common_cards("Jy/beam", fld.beam), _tail_cards(obs, HI_REST_FREQUENCY))
    return header, cube.astype(np.float32)[np.newaxis]


def _render_polarisation(config, plan, sky):
    """Stokes I/Q/U/V cube: every source in I with its spectral index; Q/U rotate with lambda^2."""
    obs, fld = plan.observation, plan.observation.field
    grid = cube_grid(config, fld, config.pol_pixels)
    freqs, width = pol_frequencies(config)
    shift = _cube_offset(config, fld, grid)
    rng = np.random.default_rng(source_seed(config, "noise", plan.relpath))
    cube = rng.normal(0.0, 0.0003, size=(4, freqs.size, grid.n, grid.n))
    angle = 2.0 * (POL_ANGLE0 + POL_ROTATION_MEASURE * (SPEED_OF_LIGHT / freqs) ** 2)
    for source in sky[fld.name]:
        unit = np.zeros((grid.n, grid.n))
        _add_gaussian(unit, source.x + shift, source.y + shift, 1.0, fld.beam, grid.cdelt)
        stokes_i = source.flux_mjy / 1000.0 * (freqs / (fld.freq_mhz * 1e6)) ** source.spectral_index
        cube[0] += stokes_i[:, None, None] * unit
        if source.role == "polarised":
            cube[1] += (POL_FRACTION * stokes_i * np.cos(angle))[:, None, None] * unit
            cube[2] += (POL_FRACTION * stokes_i * np.sin(angle))[:, None, None] * unit
    header = _header(grid, cube.shape, (float(freqs[0]), width), 1,
                     _common_cards("Jy/beam", fld.beam), _tail_cards(obs))
    return header, cube.astype(np.float32)


_RENDERERS = {"continuum": _render_continuum, "spectral": _render_spectral,
              "polarisation": _render_polarisation}


def write_image(config, plan, sky, path):
    header, data = _RENDERERS[plan.kind](config, plan, sky)
    planes = (data[s, c] for s in range(data.shape[0]) for c in range(data.shape[1]))
    return write_file(path, fits_chunks(header, planes))


def _bulk_header(data_bytes):
    cards = [("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 2), ("NAXIS1", FITS_BLOCK),
             ("NAXIS2", data_bytes // FITS_BLOCK), ("EXTEND", True), ("OBJECT", BULK_FIELD.name),
             ("TELESCOP", "ASKAP"), ("PROJECT", BULK_PROJECT.code), ("SBID", str(BULK_SBID)),
             ("ORIGIN", "CSIRO CASDA emulator (synthetic data)"),
             ("COMMENT", "Benchmark payload: a deterministic byte pattern, not an image.")]
    return fits.Header(cards)


def bulk_chunks(config, plan):
    """Header, whole 2880-byte data blocks, then zero bytes up to exactly ``bulk_size``.

    A FITS file is a whole number of 2880-byte blocks; when ``bulk_size`` is not, the
    last few bytes follow the (complete) HDU as zero padding, which readers ignore
    (astropy warns about it).
    """
    data_bytes = (config.bulk_size - FITS_BLOCK) // FITS_BLOCK * FITS_BLOCK
    yield fits_header_bytes(_bulk_header(data_bytes))
    pattern = np.random.default_rng(source_seed(config, "bulk", plan.bulk_index)).bytes(BULK_CHUNK)
    view = memoryview(pattern)
    counter, remaining = 0, data_bytes
    while remaining > 0:
        # A chunk counter in front of each period keeps the file from being one repeated block.
        head = counter.to_bytes(8, "big")[:remaining]
        body = view[len(head):min(BULK_CHUNK, remaining)]
        yield head
        yield body
        remaining -= len(head) + len(body)
        counter += 1
    yield bytes(config.bulk_size - FITS_BLOCK - data_bytes)


def bulk_obscore_header():
    """A nominal 1-degree, single-plane footprint for the bulk products' ObsCore rows."""
    grid = Grid(BULK_FIELD, 360, 10.0 / 3600.0)
    return _header(grid, (1, 1, grid.n, grid.n), (1.3675e9, 144e6), 1,
                   _common_cards("Jy/beam", BULK_FIELD.beam), [])
