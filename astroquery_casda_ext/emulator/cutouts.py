"""The outputs of SODA jobs in the CASDA emulator: cutouts, 1-D spectra, error files (no HTTP).

Parameters are checked and read by ``soda_validation.py``, pixels found and read by
``cube_engine.py``; this module applies CASDA's rules for what a job produces and writes
the files (each with its ``.checksum``).

CASDA's rules (protocol reference §4.5), as reproduced here:

* Parameters are validated by `validate_soda_params`, with CASDA's ``UsageFault`` texts.
* For each product, in the given order, every value of every parameter is checked against
  the product on its own.  A spatial value (``POS``/``CIRCLE``/``POLYGON``) hits when the
  region's centre lies inside the image footprint (CASDA tests ``spoint(centre) @
  s_region``, not a true intersection); ``BAND``/``CHANNEL``/``COORD`` hit when they select
  at least one plane; ``POL`` hits when the product has that Stokes plane.  Every value
  that misses gives one error file, ``error-NN.txt``, holding ``UsageError: No data is
  available for the parameter combination: <NAME>=<value as sent>,ID=cube-<n>``.
* Data files are the cross product of the hits: regions (all in order; none means the whole
  image) x spectral selections (each ``BAND``, ``CHANNEL``, ``COORD FREQ`` value; none means
  every plane) x Stokes ranges (the requested Stokes present in the product, contiguous ones
  merged into one range; none means every plane).  In spectrum mode each Stokes plane gets
  its own spectrum.
* When no data file at all results, `NothingMatched` is raised with CASDA's job error text.
"""
import io
import itertools
import math
import pathlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from .cube_engine import FITS_DTYPES, open_cube
from .fits_synthesis import fits_chunks
from .sidecars import write_file
from .soda_validation import SODA_PARAMETERS, STOKES_NAMES, SodaRequest, validate_soda_params

__all__ = ["GeneratedFile", "NothingMatched", "validate_soda_params", "process_job",
           "SODA_PARAMETERS", "NOTHING_MATCHED_MESSAGE"]

NOTHING_MATCHED_MESSAGE = ("UsageError: None of the selected image cubes had data matching the supplied "
                           "cutout parameters.")
MISS_MESSAGE = "UsageError: No data is available for the parameter combination: {given}ID={product_id}"

# Number syntax of CASDA's parameter processors (single spaces between values).
@dataclass(frozen=True)
class GeneratedFile:
    """One file a job produced (its sidecar is ``path`` + ``.checksum``)."""

    result_id: str           # "cutout-7-imagecube-1001" / "spectrum-3-imagecube-1002" / "error-01"
    path: pathlib.Path
    product_id: str | None
    region: str | None       # the spatial parameter that produced it, e.g. "CIRCLE 187.5 -45.0 0.01"
    message: str | None      # for error files: the text written into it


class NothingMatched(Exception):
    """No cutout or spectrum could be made; CASDA puts the job in ERROR with this message.

    Attributes
    ----------
    message : str
    files : list of GeneratedFile
        The error files written before giving up.
    """

    def __init__(self, message=NOTHING_MATCHED_MESSAGE, files=()):
        super().__init__(message)
        self.message = message
        self.files = list(files)


# --- writing results ----------------------------------------------------------------------------------

def _cutout_header(cube, box, freq_range, stokes_range, product, region):
    """The source header with the new axis lengths and reference pixels shifted to match."""
    header = cube.header.copy()
    if "BSCALE" in header or "BZERO" in header:     # sections come back scaled: store floats
        header["BITPIX"] = -32
        for key in ("BSCALE", "BZERO", "BLANK"):
            header.remove(key, ignore_missing=True)
    shifts = {1: (box.x0, box.x1), 2: (box.y0, box.y1)}
    shifts.update({axis: rng for axis, rng in ((cube.freq_axis, freq_range), (cube.stokes_axis, stokes_range))
                   if axis is not None})
    for axis, (first, last) in shifts.items():
        header[f"NAXIS{axis}"] = last - first + 1
        header[f"CRPIX{axis}"] = header.get(f"CRPIX{axis}", 1.0) - first
    selection = region.label if region else "all pixels"
    header.add_history(f"CASDA emulator cutout of {product.product_id}: {selection}")
    return header


def _write_cutout(cube, box, freq_range, stokes_range, product, region, path, image_format):
    if image_format == "png":
        return write_file(path, [_png_bytes(_preview(cube, box, freq_range, stokes_range))])
    header = _cutout_header(cube, box, freq_range, stokes_range, product, region)
    planes = cube.planes(box, freq_range, stokes_range)
    return write_file(path, fits_chunks(header, planes, dtype=FITS_DTYPES[header["BITPIX"]]))


def _preview(cube, box, freq_range, stokes_range):
    """The mean over the selected channels of the first selected Stokes plane."""
    first_stokes = None if stokes_range is None else (stokes_range[0], stokes_range[0])
    total, count = None, 0
    for plane in cube.planes(box, freq_range, first_stokes):
        total = np.array(plane, dtype=float) if total is None else total + plane
        count += 1
    return total / count


def _png_bytes(image):
    """A PNG preview (north up, as astronomers plot): matplotlib if present, else grey-scale."""
    finite = image[np.isfinite(image)]
    low, high = (np.percentile(finite, (1.0, 99.5)) if finite.size else (0.0, 1.0))
    high = high if high > low else low + 1.0
    try:
        from matplotlib.image import imsave
    except ImportError:
        return _grey_png(np.clip((image - low) / (high - low), 0.0, 1.0)[::-1])
    buffer = io.BytesIO()
    imsave(buffer, image, vmin=low, vmax=high, cmap="inferno", origin="lower", format="png")
    return buffer.getvalue()


def _grey_png(scaled):
    """An 8-bit grey-scale PNG of an image scaled to [0, 1], first row at the top."""
    rows = (np.nan_to_num(scaled) * 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", rows.shape[1], rows.shape[0], 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _beam_area_pixels(header):
    """Pixels per restoring beam, to turn a sum of Jy/beam pixels into Jy (None if no beam)."""
    if "BMAJ" not in header or "BMIN" not in header:
        return None
    return math.pi / (4.0 * math.log(2.0)) * header["BMAJ"] * header["BMIN"] / abs(
        header["CDELT1"] * header["CDELT2"])


#: Keywords a spectrum inherits from its cube (MJD-OBS with DATE-OBS, or WCS readers "fix" it).
SPECTRUM_COPIED_KEYWORDS = ("SPECSYS", "RESTFREQ", "OBJECT", "TELESCOP", "PROJECT", "SBID", "DATE-OBS",
                            "MJD-OBS", "TIMESYS")


def _spectrum_values(cube, box, freq_range, stokes_plane):
    return np.array([float(np.nansum(np.asarray(plane)[box.mask]))
                     for plane in cube.planes(box, freq_range, (stokes_plane, stokes_plane))])


def _spectrum_header(cube, box, freq_range, stokes_plane, region, count):
    source = cube.header
    beam = _beam_area_pixels(source)
    header = fits.Header([("SIMPLE", True), ("BITPIX", -64), ("NAXIS", 1), ("NAXIS1", count)])
    if cube.freq_axis is not None:
        axis = cube.freq_axis
        header["CTYPE1"] = "FREQ"
        header["CRVAL1"] = float(cube.axis_values(axis)[freq_range[0]])
        header["CDELT1"] = source.get(f"CDELT{axis}", 1.0)
        header["CRPIX1"] = 1.0
        header["CUNIT1"] = "Hz"
    header["BUNIT"] = ("Jy", "flux density in the aperture") if beam else source.get("BUNIT", "")
    header["FLUXTYPE"] = ("SUM/BEAM" if beam else "SUM", "sum of aperture pixels / beam area in pixels"
                          if beam else "sum of aperture pixels")
    header["NPIXAPER"] = (int(box.mask.sum()), "pixels in the aperture")
    stokes_number = 1 if cube.stokes_axis is None else round(cube.axis_values(cube.stokes_axis)[stokes_plane])
    header["STOKES"] = STOKES_NAMES.get(stokes_number, str(stokes_number))
    for key in SPECTRUM_COPIED_KEYWORDS:
        if key in source:
            header[key] = source[key]
    header.add_history(f"Aperture: {region.label if region else 'all pixels'}")
    return header, beam


def _write_spectrum(cube, box, freq_range, stokes_plane, region, path):
    values = _spectrum_values(cube, box, freq_range, stokes_plane)
    header, beam = _spectrum_header(cube, box, freq_range, stokes_plane, region, values.size)
    return write_file(path, fits_chunks(header, [values / beam if beam else values], dtype=">f8"))


# --- the job --------------------------------------------------------------------------------------

class _Outputs:
    """Names and collects a job's files in loop order."""

    def __init__(self, out_dir, first_number):
        self.out_dir = pathlib.Path(out_dir)
        self.next_number = first_number
        self.errors = 0
        self.files = []

    def error(self, product, given, region=None):
        self.errors += 1
        result_id = f"error-{self.errors:02d}"
        message = MISS_MESSAGE.format(given=f"{given}," if given else "", product_id=product.product_id)
        path = self.out_dir / f"{result_id}.txt"
        write_file(path, [message.encode("utf-8")])
        self.files.append(GeneratedFile(result_id, path, product.product_id,
                                        region.label if region else None, message))

    def data(self, prefix, product, region, extension, write):
        result_id = f"{prefix}-{self.next_number}-imagecube-{product.numeric_id}"
        self.next_number += 1
        path = self.out_dir / f"{result_id}.{extension}"
        write(path)
        self.files.append(GeneratedFile(result_id, path, product.product_id,
                                        region.label if region else None, None))


def _process_product(product, wanted, mode, outputs):
    cube = open_cube(product)
    if cube is None:        # not an image: every value misses
        for given, region in _all_given(wanted):
            outputs.error(product, given, region)
        return
    try:
        _cross_product(cube, product, wanted, mode, outputs)
    finally:
        cube.close()


def _all_given(wanted):
    given = [(r.given, r) for r in wanted.regions] + [(s.given, None) for s in wanted.spectral]
    given += [(f"POL={p}", None) for p in wanted.pols]
    return given or [(None, None)]


def _cross_product(cube, product, wanted, mode, outputs):
    spectral = [(s, cube.planes_for(s)) for s in wanted.spectral]
    freq_ranges = [planes for _, planes in spectral if planes is not None]
    if not wanted.spectral:
        freq_ranges = [cube.all_planes(cube.freq_axis)]
    stokes_ranges, missing_pols = cube.stokes_ranges(wanted.pols)
    for region in wanted.regions or [None]:
        box = cube.locate(region)
        if box is None:
            outputs.error(product, region.given, region)
            continue
        for freq_range, stokes_range in itertools.product(freq_ranges, stokes_ranges):
            _emit(cube, product, region, box, freq_range, stokes_range, wanted, mode, outputs)
    for selection, planes in spectral:
        if planes is None:
            outputs.error(product, selection.given)
    for pol in missing_pols:
        outputs.error(product, f"POL={pol}")


def _emit(cube, product, region, box, freq_range, stokes_range, wanted, mode, outputs):
    if mode == "cutout":
        outputs.data("cutout", product, region, wanted.image_format, lambda path: _write_cutout(
            cube, box, freq_range, stokes_range, product, region, path, wanted.image_format))
        return
    first, last = stokes_range if stokes_range is not None else (0, 0)
    for plane in range(first, last + 1):
        outputs.data("spectrum", product, region, "fits", lambda path, p=plane: _write_spectrum(
            cube, box, freq_range, p if stokes_range is not None else None, region, path))


def process_job(products, params, out_dir, *, mode, first_number):
    """Run a SODA cutout or spectrum job over ``products``.

    Parameters
    ----------
    products : list of astroquery_casda_ext.emulator.holdings.Product
        The job's products, in the order their tokens were given.
    params : dict of str to list of str
        The job's parameters (``id`` values are ignored; the products stand for them).
    out_dir : path-like
        Where the files and their ``.checksum`` sidecars are written (created if needed).
    mode : {"cutout", "spectrum"}
        Which service the job's tokens were minted for.  Spectra are always FITS (a 1-D
        image with a FREQ axis, flux summed over the aperture and divided by the beam
        area); ``FORMAT=png`` only changes cutouts.
    first_number : int
        Number of the first data file (``cutout-<n>-imagecube-<id>``); the following files
        count up from it in loop order.

    Returns
    -------
    list of GeneratedFile
        Data files and error files in loop order.

    Raises
    ------
    ValueError
        If ``mode`` is unknown or a parameter fails `validate_soda_params`.
    NothingMatched
        If no data file at all was produced.
    """
    if mode not in ("cutout", "spectrum"):
        raise ValueError(f"mode must be 'cutout' or 'spectrum', not {mode!r}")
    problems = validate_soda_params(params)
    if problems:
        raise ValueError("\r\n".join(problems))
    wanted = SodaRequest.from_params(params)
    outputs = _Outputs(out_dir, first_number)
    outputs.out_dir.mkdir(parents=True, exist_ok=True)
    for product in products:
        _process_product(product, wanted, mode, outputs)
    if not any(f.message is None for f in outputs.files):
        raise NothingMatched(NOTHING_MATCHED_MESSAGE, outputs.files)
    return outputs.files
