"""The SODA cube engine: where a region and a spectral or Stokes selection fall in a product.

`open_cube` memory-maps a product's FITS file; a `Cube` locates a region as a pixel box
(CASDA's footprint rule: the region's centre must lie inside the image), turns ``BAND``,
``CHANNEL`` and ``COORD`` selections into plane ranges and Stokes names into planes, and
reads only the pixels a cutout or spectrum needs, one 2-D plane at a time.  Writing the
results is ``cutouts.py``'s.
"""
import itertools
import math
import mmap
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .sky_model import SPEED_OF_LIGHT
from .soda_validation import STOKES_NUMBERS

__all__ = ["open_cube", "Cube", "FITS_DTYPES"]

FITS_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
#: Pixels whose sky positions are computed at once when building a region mask.
MASK_BLOCK_PIXELS = 1 << 18
# --- sky geometry -----------------------------------------------------------------------------------

def _separation(ra1, dec1, ra2, dec2):
    """Angular distance in degrees (haversine; arrays welcome)."""
    ra1, dec1, ra2, dec2 = (np.radians(v) for v in (ra1, dec1, ra2, dec2))
    term = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(term, 0.0, 1.0))))


def _ra_span(ra_low, ra_high):
    """(start, width) of an RA interval on the circle; infinite ends mean no RA limit."""
    if math.isinf(ra_low) or math.isinf(ra_high) or ra_high - ra_low >= 360.0:
        return 0.0, 360.0
    return ra_low % 360.0, (ra_high - ra_low) % 360.0


def _bounds(region):
    """(ra_start, ra_width, dec_low, dec_high, centre or None) of a RANGE or POLYGON region."""
    if region.shape == "RANGE":
        ra1, ra2, dec1, dec2 = region.numbers
        start, width = _ra_span(ra1, ra2)
        finite = not any(math.isinf(v) for v in region.numbers)
        centre = ((start + width / 2.0) % 360.0, (dec1 + dec2) / 2.0) if finite else None
        # Descending Dec bounds are accepted by CASDA; the band between them is meant.
        dec_low, dec_high = min(dec1, dec2), max(dec1, dec2)
        return start, width, max(dec_low, -90.0), min(dec_high, 90.0), centre
    ras, decs = np.array(region.numbers[0::2]), np.array(region.numbers[1::2])
    # The bounding box is taken around the first vertex, so polygons across RA 0 stay small.
    offsets = (ras - ras[0] + 180.0) % 360.0 - 180.0
    start, width = (ras[0] + offsets.min()) % 360.0, float(offsets.max() - offsets.min())
    centre = ((start + width / 2.0) % 360.0, float(decs.min() + decs.max()) / 2.0)
    return start, width, float(decs.min()), float(decs.max()), centre


@dataclass(frozen=True)
class _Box:
    """Pixel bounds (0-based, inclusive) and the aperture mask inside them."""

    x0: int
    x1: int
    y0: int
    y1: int
    mask: np.ndarray


def _box_from_mask(mask, x0, y0):
    """Shrink a mask found inside a window starting at (x0, y0) to its bounding box."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    sub = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return _Box(x0 + int(cols[0]), x0 + int(cols[-1]), y0 + int(rows[0]), y0 + int(rows[-1]), sub)


# --- reading a product --------------------------------------------------------------------------------

class Cube:
    """A memory-mapped FITS image cube and what CASDA's tools know about its axes."""

    def __init__(self, path):
        self._hdulist = fits.open(path, memmap=True)
        hdu = self._hdulist[0]
        self.header = hdu.header
        self._mapped = None
        if "BSCALE" in self.header or "BZERO" in self.header or self.header["BITPIX"] not in FITS_DTYPES:
            self.section = hdu.section      # reads only what is sliced, and scales it
        else:
            self._mapped, self.section = _map_data(path, self.header, hdu.fileinfo()["datLoc"])
        self.wcs = WCS(self.header).celestial
        self.nx, self.ny = self.header["NAXIS1"], self.header["NAXIS2"]
        self.freq_axis = self._axis("FREQ")
        self.stokes_axis = self._axis("STOKES")

    def close(self):
        self.section = None
        if self._mapped is not None:
            try:
                self._mapped.close()
            except BufferError:     # a caller still holds a view; the map closes with it
                pass
        self._hdulist.close()

    def _axis(self, ctype):
        for number in range(3, self.header["NAXIS"] + 1):
            if str(self.header.get(f"CTYPE{number}", "")).upper().startswith(ctype):
                return number
        return None

    def axis_values(self, number):
        """World values of every plane along FITS axis ``number``."""
        h = self.header
        planes = np.arange(h[f"NAXIS{number}"]) + 1.0
        return h[f"CRVAL{number}"] + (planes - h.get(f"CRPIX{number}", 1.0)) * h.get(f"CDELT{number}", 1.0)

    # spatial
    def contains(self, ra, dec):
        """Is (ra, dec) inside the image footprint?  (CASDA's overlap test.)"""
        if _separation(ra, dec, self.header["CRVAL1"], self.header["CRVAL2"]) >= 90.0:
            return False       # the far hemisphere has no SIN pixel coordinates
        x, y = self.wcs.world_to_pixel_values(ra, dec)
        return bool(np.isfinite(x) and np.isfinite(y) and -0.5 <= x <= self.nx - 0.5
                    and -0.5 <= y <= self.ny - 0.5)

    def pixel_world(self, x0, x1, y0, y1):
        """RA and Dec of the pixel centres in a window (inclusive bounds)."""
        yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        ra, dec = self.wcs.pixel_to_world_values(xx, yy)
        return np.asarray(ra) % 360.0, np.asarray(dec)

    def world_mask(self, x0, x1, y0, y1, inside):
        """Mask over a window of the pixels whose centres satisfy ``inside(ra, dec)``.

        Computed a block of rows at a time so a big window never needs big arrays.
        """
        mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), bool)
        rows = max(1, MASK_BLOCK_PIXELS // (x1 - x0 + 1))
        for start in range(y0, y1 + 1, rows):
            stop = min(start + rows - 1, y1)
            mask[start - y0:stop - y0 + 1] = inside(*self.pixel_world(x0, x1, start, stop))
        return mask

    def locate(self, region):
        """The `_Box` a region selects, or None when the region misses this image."""
        if region is None:
            return _Box(0, self.nx - 1, 0, self.ny - 1, np.ones((self.ny, self.nx), bool))
        if region.shape == "CIRCLE":
            return self._locate_circle(*region.numbers)
        return self._locate_bounds(*_bounds(region))

    def _locate_circle(self, ra, dec, radius):
        if not self.contains(ra, dec):
            return None
        xc, yc = (float(v) for v in self.wcs.world_to_pixel_values(ra, dec))
        # SIN pixel offsets never exceed angular ones, so this window holds the whole circle.
        half = radius / np.min(np.abs(self.wcs.wcs.cdelt)) + 1.0
        x0, x1 = max(0, math.floor(xc - half)), min(self.nx - 1, math.ceil(xc + half))
        y0, y1 = max(0, math.floor(yc - half)), min(self.ny - 1, math.ceil(yc + half))
        mask = self.world_mask(x0, x1, y0, y1, lambda ras, decs: _separation(ra, dec, ras, decs) <= radius)
        if not mask.any():      # a circle smaller than a pixel still gets the pixel it is in
            row = min(max(round(yc) - y0, 0), mask.shape[0] - 1)
            mask[row, min(max(round(xc) - x0, 0), mask.shape[1] - 1)] = True
        return _box_from_mask(mask, x0, y0)

    def _locate_bounds(self, ra_start, ra_width, dec_low, dec_high, centre):
        if centre is not None and not self.contains(*centre):
            return None

        def inside(ras, decs):
            in_ra = True if ra_width >= 360.0 else (ras - ra_start) % 360.0 <= ra_width
            return in_ra & (decs >= dec_low) & (decs <= dec_high)
        window = self._bounds_window(ra_start, ra_width, dec_low, dec_high)
        if window is None:
            return None
        mask = self.world_mask(*window, inside)
        return _box_from_mask(mask, window[0], window[2]) if mask.any() else None

    def _bounds_window(self, ra_start, ra_width, dec_low, dec_high):
        """(x0, x1, y0, y1) holding an RA/Dec box: its edges projected, or the whole image.

        The projected edges bound the box unless it reaches a pole, spans half the sky or
        crosses the far hemisphere (no SIN coordinates there): then every pixel is tested.
        """
        whole = (0, self.nx - 1, 0, self.ny - 1)
        if ra_width >= 180.0 or dec_low <= -90.0 or dec_high >= 90.0:
            return whole
        step = np.linspace(0.0, 1.0, 65)
        ras = np.concatenate([ra_start + ra_width * step, np.full(65, ra_start + ra_width),
                              ra_start + ra_width * step, np.full(65, ra_start)])
        decs = np.concatenate([np.full(65, dec_low), dec_low + (dec_high - dec_low) * step,
                               np.full(65, dec_high), dec_low + (dec_high - dec_low) * step])
        far = _separation(ras, decs, self.header["CRVAL1"], self.header["CRVAL2"]) >= 90.0
        xs, ys = (np.asarray(v) for v in self.wcs.world_to_pixel_values(ras % 360.0, decs))
        if far.any() or not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            return whole
        x0, x1 = max(0, math.floor(xs.min())), min(self.nx - 1, math.ceil(xs.max()))
        y0, y1 = max(0, math.floor(ys.min())), min(self.ny - 1, math.ceil(ys.max()))
        return (x0, x1, y0, y1) if x0 <= x1 and y0 <= y1 else None

    # spectral and polarisation
    def planes_for(self, selection):
        """(first, last) 0-based planes of the FREQ axis a BAND/CHANNEL/COORD value selects, or None."""
        if self.freq_axis is None:
            return None
        count = self.header[f"NAXIS{self.freq_axis}"]
        if selection.param == "CHANNEL":
            low, high = selection.bounds
            return (low - 1, min(high, count) - 1) if low <= count else None
        if selection.param == "BAND":
            low_m, high_m = selection.bounds
            low_hz = SPEED_OF_LIGHT / high_m if high_m > 0 else math.inf
            high_hz = SPEED_OF_LIGHT / low_m if low_m > 0 else math.inf
        else:
            axis, low_hz, high_hz = selection.bounds
            if axis != "FREQ":
                return None
        return self._planes_in(low_hz, high_hz)

    def _planes_in(self, low_hz, high_hz):
        centres = self.axis_values(self.freq_axis)
        half = abs(self.header.get(f"CDELT{self.freq_axis}", 0.0)) / 2.0
        if low_hz == high_hz:
            hit = (centres - half <= low_hz) & (low_hz <= centres + half)
        else:
            hit = (centres - half < high_hz) & (centres + half > low_hz)
        planes = np.flatnonzero(hit)
        return (int(planes[0]), int(planes[-1])) if planes.size else None

    def all_planes(self, axis):
        return None if axis is None else (0, self.header[f"NAXIS{axis}"] - 1)

    def stokes_ranges(self, pols):
        """([(first, last) plane ranges], [POL values this product lacks]) for the requested Stokes."""
        numbers = [1] if self.stokes_axis is None else [round(v) for v in self.axis_values(self.stokes_axis)]
        if not pols:
            return [self.all_planes(self.stokes_axis)], []
        found = sorted({numbers.index(STOKES_NUMBERS[p]) for p in pols
                        if STOKES_NUMBERS.get(p) in numbers})
        missing = [p for p in pols if STOKES_NUMBERS.get(p) not in numbers]
        if self.stokes_axis is None:
            return ([None] if found else []), missing
        return _runs(found), missing

    def planes(self, box, freq_range, stokes_range):
        """Yield the 2-D planes of a sub-cube in file order (last FITS axis outermost)."""
        ranges = []
        for number in range(self.header["NAXIS"], 2, -1):
            chosen = {self.freq_axis: freq_range, self.stokes_axis: stokes_range}.get(number)
            first, last = chosen if chosen is not None else (0, self.header[f"NAXIS{number}"] - 1)
            ranges.append(range(first, last + 1))
        for index in itertools.product(*ranges):
            yield self.section[index + (slice(box.y0, box.y1 + 1), slice(box.x0, box.x1 + 1))]


def _map_data(path, header, offset):
    """(mmap, array): the data as a read-only view of a memory map, set up for random access.

    A cutout reads a few rows of each plane; the kernel's default read-ahead would fetch
    far more around every row (measured: 40x slower on a 4 GB cube).
    """
    shape = tuple(header[f"NAXIS{n}"] for n in range(header["NAXIS"], 0, -1))
    with open(path, "rb") as stream:
        mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return mapped, np.ndarray(shape, FITS_DTYPES[header["BITPIX"]], buffer=mapped, offset=offset)


def _runs(indices):
    """Sorted plane indices as (first, last) ranges of consecutive planes: [0, 1, 3] -> [(0, 1), (3, 3)]."""
    runs = []
    for index in indices:
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def open_cube(product):
    """A `Cube` for an image product, None for products that are not images (bulk files)."""
    if product.kind == "bulk":
        return None
    cube = Cube(product.path)
    if not str(cube.header.get("CTYPE1", "")).startswith("RA"):
        cube.close()
        return None
    return cube
