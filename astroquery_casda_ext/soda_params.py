"""SODA cutout and spectrum requests: what to send, and which file answers which request.

A SODA job is a cross product: every spatial region × every spectral window (band or
channel range) × the polarisations, for every product in the job (protocol §4.5).  This
module turns validated user input into the job's parameters, and labels the job's result
files with the product and region they came from.
"""
import re
from dataclasses import dataclass, field

from astropy.table import Table

from .regions import band_string, make_regions, parse_band, parse_channel, parse_pol, parse_positions
from .errors import InvalidInputError

__all__ = ["SodaRequest", "label_results"]

_CUTOUT_NUMBER = re.compile(r"^(?:cutout|spectrum)-(\d+)-")


@dataclass(frozen=True)
class SodaRequest:
    """Everything that selects data inside each product of a job.

    Attributes
    ----------
    regions : tuple
        `~astroquery_casda_ext.regions.Circle`, ``Box`` or ``Polygon`` objects (may be empty:
        the whole spatial extent).
    bands : tuple of (float or None, float or None)
        Wavelength windows in metres.
    channels : tuple of (int, int)
        1-based inclusive channel windows.
    pol : tuple of str
        Stokes parameters, e.g. ``('Q', 'U')``.
    """

    regions: tuple = ()
    bands: tuple = ()
    channels: tuple = ()
    pol: tuple = ()
    extra: dict = field(default_factory=dict)

    @classmethod
    def build(cls, *, coordinates=None, radius=None, height=None, width=None, polygon=None,
              band=None, channel=None, pol=None, rest_frequency=None):
        """Validate user input (nothing is sent) and return the request.

        ``band`` and ``channel`` take one window each (as in ``astroquery.casda``) or a list
        of windows; both may be given, giving one file per window.
        """
        regions = ()
        if coordinates is not None or polygon is not None:
            positions = parse_positions(coordinates) if coordinates is not None else None
            regions = tuple(make_regions(positions, radius=radius, width=width, height=height,
                                         polygon=polygon))
        bands = tuple(parse_band(b, rest_frequency=rest_frequency) for b in _windows(band))
        channels = tuple(parse_channel(c) for c in _windows(channel))
        pols = tuple(parse_pol(pol)) if pol is not None else ()
        return cls(regions, bands, channels, pols)

    def __bool__(self):
        return bool(self.regions or self.bands or self.channels or self.pol)

    def parameters(self):
        """The SODA parameters as a dict of lists (repeated keys are OR-ed windows)."""
        params = {}
        for region in self.regions:
            for key, value in region.soda_params().items():
                params.setdefault(key, []).append(value)
        if self.bands:
            params["BAND"] = [band_string(lo, hi) for lo, hi in self.bands]
        if self.channels:
            params["CHANNEL"] = [f"{lo} {hi}" for lo, hi in self.channels]
        if self.pol:
            params["POL"] = list(self.pol)
        return params

    def spectral_windows(self):
        """Labels of the spectral windows, in the order CASDA loops over them."""
        windows = [f"BAND {band_string(lo, hi)}" for lo, hi in self.bands]
        windows += [f"CHANNEL {lo} {hi}" for lo, hi in self.channels]
        return windows or [None]


def _windows(value):
    """One window ``(a, b)`` or a list of windows → list of windows."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        return list(value)
    return [value]


def label_results(files, request, errors=()):
    """Label a job's result files with the product and region each came from.

    CASDA names cutouts ``cutout-<n>-imagecube-<cube>``, numbered in the order it loops:
    for each product, each region, each spectral window (protocol §4.5).  Regions that
    missed a product produced an error file naming the region instead.  So, per product,
    the data files in number order answer the (region, window) pairs that did not miss.

    Parameters
    ----------
    files : list of `~astroquery_casda_ext.jobs.ResultFile`
    request : SodaRequest
    errors : list of str
        The texts of the job's error files.

    Returns
    -------
    `~astropy.table.Table`
        Columns ``result_id``, ``product_id``, ``region``, ``window``, ``url``,
        ``checksum_url``.  ``region`` is empty where the labelling is ambiguous.
    """
    regions = [r.sia2_pos() for r in request.regions] or [None]
    windows = request.spectral_windows()
    rows = []
    by_product = {}
    for result in files:
        by_product.setdefault(result.product_id, []).append(result)
    for product_id, product_files in by_product.items():
        missed = {r for r in regions if r and any(_names(e, r, product_id) for e in errors)}
        combos = [(r, w) for r in regions if r not in missed for w in windows]
        ordered = sorted(product_files, key=_cutout_number)
        known = len(ordered) == len(combos)
        for index, result in enumerate(ordered):
            region, window = combos[index] if known else (None, None)
            rows.append((result.result_id, product_id or "", region or "", window or "",
                         result.url, result.checksum_url or ""))
    names = ("result_id", "product_id", "region", "window", "url", "checksum_url")
    return Table(rows=rows or None, names=names, dtype=[str] * len(names))


def _cutout_number(result):
    match = _CUTOUT_NUMBER.match(result.result_id)
    return int(match.group(1)) if match else 0


def _numbers(text):
    return [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", text)]


def _names(error_text, region, product_id):
    """Whether an error file's text says ``region`` missed ``product_id``.

    CASDA echoes the parameter as it was sent: ``POS=CIRCLE ra dec r`` or ``CIRCLE=ra dec r``.
    """
    if product_id and f"ID={product_id}" not in error_text:
        return False
    shape, _, values = region.partition(" ")
    found = re.search(rf"(?:POS=)?{shape}[=\s]+([-+0-9.eE ]+)", error_text)
    if not found:
        return False
    wanted, got = _numbers(values), _numbers(found.group(1))
    return len(wanted) == len(got) and all(abs(a - b) < 1e-6 for a, b in zip(wanted, got))


def require_request(request):
    """Raise unless a cutout request selects something."""
    if not request:
        raise InvalidInputError("Please provide cutout parameters such as coordinates, band or channel.")
