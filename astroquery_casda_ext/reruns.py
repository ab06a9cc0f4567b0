"""Downloads that can be run again: the whole request as the key, stable names, one manifest.

CASDA numbers cutouts per job (``cutout-13-imagecube-1001``), so the same request run twice
would leave two sets of files side by side, and nothing in a file name says which source it
shows.  Here every file is named after what it *is* — the product, the source, the window
and what was asked (``cube-1001_J123039-450343_r2arcmin.fits``,
``cube-1004_CHANNEL_1_8.fits``, ``cube-1005_J123000-450000_r30arcsec_spectrum.fits``) — and
the manifest rows carry the service, the source's name and position, the region cut
(centre, shape and size), the spectral window and the polarisations.

A rerun reads the manifest already in the folder (`RerunState`) and keys it on the whole
request (`CutRequest` and the sources): files of an equal request that are present and
still match their ``.checksum`` are kept and not asked for; anything else is fetched
under its own name.  The saved manifest then describes this request only; files of an
earlier, different request stay on disk but are never reported as this answer.

The downloader is given the stable names (``names=``, `CutoutLabels.for_download`), so every
file is written once, under its final name, by the package's one writer.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import vstack

from .checksum import checksum_of_file, parse_checksum
from .download import MANIFEST_NAME, Manifest
from .errors import InvalidInputError

__all__ = ["Source", "sources_from", "stable_name", "check_destination", "prepare_destination",
           "remove_if_empty", "CutRequest", "Wanted", "wanted_files", "request_keys", "angle_tag",
           "RerunState",
           "CutoutLabels", "label_whole_files", "SOURCE_COLUMNS", "SERVICE_TAGS"]

#: Columns added to the manifest rows of labelled cutouts.
SOURCE_COLUMNS = ("service", "source", "source_ra", "source_dec", "region", "window", "pol")

#: What a job made, by SODA service: its files' name tag (cutouts have none).
SERVICE_TAGS = {"cutout": "", "spectrum": "spectrum", "stage": ""}

_UNSAFE = re.compile(r"[^A-Za-z0-9+\-.]+")


@dataclass(frozen=True)
class Source:
    """A position cut out, with the name files and manifest rows use."""

    name: str
    ra: float     #: degrees, ICRS
    dec: float


def _iau_name(coord):
    """``Jhhmmss.s-ddmmss``: a name for an unnamed position, stable to 0.1 s / 1 arcsec."""
    ra = coord.ra.to_string(unit="hour", sep="", precision=1, pad=True)
    dec = coord.dec.to_string(sep="", precision=0, alwayssign=True, pad=True)
    return f"J{ra}{dec}"


def sources_from(positions, names=None):
    """`Source` objects for positions, named by ``names`` (catalogue or list) or by IAU-style J-names.

    A name used twice gets ``_2``, ``_3``... so no two sources share a file name (names
    are compared as they appear in file names: "a/b" and "a_b" are the same there).
    """
    positions = positions.reshape((-1,))
    given = ([None if name is None or np.ma.is_masked(name) else str(name).strip() for name in names]
             if names is not None else [None] * len(positions))
    if len(given) != len(positions):
        raise InvalidInputError(f"{len(given)} names for {len(positions)} positions")
    sources, seen = [], {}
    for coord, name in zip(positions, given):
        name = name or _iau_name(coord)
        key = _slug(name).lower()          # file systems may ignore case
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            name = f"{name}_{seen[key]}"
        sources.append(Source(name, float(coord.ra.deg), float(coord.dec.deg)))
    return sources


def _slug(text):
    return _UNSAFE.sub("_", str(text)).strip("_.") or "x"


def stable_name(product_id, source=None, window="", suffix=".fits", tag=""):
    """A file name that depends only on what the file holds (product, source, spectral window,
    and ``tag``, e.g. ``spectrum``, for what was made of it)."""
    parts = [_slug(product_id)]
    for part in (source, window, tag):
        if part:
            parts.append(_slug(part))
    return "_".join(parts) + suffix


def prepare_destination(dest):
    """Create ``dest`` if needed and prove it is a writable directory; nothing is sent before this.

    Returns
    -------
    path : pathlib.Path
        The absolute directory.
    created : list of pathlib.Path
        The directories made here, deepest first: a command that then fails removes
        those still empty (`remove_if_empty`), so a failed command leaves no empty folder.

    Raises
    ------
    OSError
        With the directory as ``filename``: it cannot be created or written.
    """
    path = Path(dest).expanduser().absolute()
    missing = [p for p in (path, *path.parents) if not p.exists() and not p.is_symlink()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_if_empty(missing)
        raise PermissionError(exc.errno, f"cannot create the destination ({exc.strerror})",
                              str(exc.filename or path)) from None
    if not path.is_dir():
        raise NotADirectoryError(20, "not a directory", str(path))
    probe = path / f".casda-write-test.{os.getpid()}"
    try:
        # os.access alone is fooled by root and by read-only mounts: really create a file
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except OSError as exc:
        remove_if_empty(missing)
        raise PermissionError(exc.errno, f"cannot write into the destination ({exc.strerror})",
                              str(path)) from None
    finally:
        probe.unlink(missing_ok=True)
    return path, missing


def check_destination(dest):
    """`prepare_destination` without the list of created folders: the absolute directory."""
    return prepare_destination(dest)[0]


def remove_if_empty(directories):
    """Remove the folders `prepare_destination` made that are still empty (deepest first)."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:         # not empty (or gone): keep it, and so its parents
            continue


@dataclass(frozen=True)
class CutRequest:
    """What a cutout, spectrum or staging command asks of each product, positions aside.

    With the positions, this is the whole request: a rerun with an equal `CutRequest` and
    the same sources only verifies; any difference (size, window, polarisation, service)
    gives other region/window/pol labels, other file names, and fetches anew.

    Attributes
    ----------
    service : {'cutout', 'spectrum', 'stage'}
    radius : float or None
        Circle radius (cutout) or aperture (spectrum), degrees.
    bands : tuple of (Quantity or None, Quantity or None)
    channels : tuple of (int, int)
    pol : tuple of str
    rest_frequency : Quantity or None
        For velocity bands.
    """

    service: str = "cutout"
    radius: float = None
    bands: tuple = ()
    channels: tuple = ()
    pol: tuple = ()
    rest_frequency: object = None

    def soda(self, positions=None):
        """The validated `~astroquery_casda_ext.soda_params.SodaRequest` for ``positions``."""
        from .soda_params import SodaRequest
        return SodaRequest.build(coordinates=positions, radius=self.radius * u.deg if self.radius else None,
                                 band=list(self.bands) or None, channel=list(self.channels) or None,
                                 pol=list(self.pol) or None, rest_frequency=self.rest_frequency)

    def call_kwargs(self):
        """Keyword arguments of ``CasdaClass.cutout``/``spectra`` for this request (positions aside)."""
        kwargs = {"radius": self.radius * u.deg} if self.radius else {}
        if self.bands:
            kwargs["band"] = list(self.bands)
            if self.rest_frequency is not None and self.service == "cutout":
                kwargs["rest_frequency"] = self.rest_frequency
        if self.channels:
            kwargs["channel"] = list(self.channels)
        if self.pol:
            kwargs["pol"] = list(self.pol)
        return kwargs

    @property
    def pol_label(self):
        return ",".join(self.pol)

    def windows(self):
        """The window labels (as in the manifest) of this request; one empty label if none."""
        return [window or "" for window in self.soda().spectral_windows()] or [""]

    def tag(self):
        """The part of file names that says what was asked: ``r2arcmin``, ``r30arcsec_QU``."""
        parts = [f"r{angle_tag(self.radius)}"] if self.radius else []
        if self.pol:
            parts.append("".join(self.pol))
        return "_".join(parts)

    def describe(self):
        """The request in words, for messages."""
        parts = [f"radius {angle_tag(self.radius)}"] if self.radius else []
        parts += [window.lower() for window in self.windows() if window]
        if self.pol:
            parts.append(f"pol {self.pol_label}")
        return ", ".join(parts) or "whole files"


def angle_tag(degrees):
    """An angle as short text for names: ``30arcsec``, ``2arcmin``, ``1.5deg``."""
    arcsec = round(float(degrees) * 3600.0, 6)
    if arcsec < 60 or arcsec % 60:
        return f"{arcsec:.6g}arcsec"
    if arcsec < 3600 or arcsec % 3600:
        return f"{arcsec / 60:.6g}arcmin"
    return f"{arcsec / 3600:.6g}deg"


@dataclass(frozen=True)
class Wanted:
    """One file a request asks for: product, source (None for whole files and slices), region, window."""

    product: str
    source: object = None
    region: str = ""
    window: str = ""


def wanted_files(request, products, sources=None, covered=None):
    """Every file ``request`` asks of ``products`` (and ``sources``): a list of `Wanted`.

    ``covered`` (``{product: set of source names}``) limits each product to the sources
    inside its footprint; without it every source is asked of every product.
    """
    if request.service == "stage":
        return [Wanted(str(p)) for p in products]
    windows = request.windows()
    if not sources:
        return [Wanted(str(p), None, "", w) for p in products for w in windows]
    from astropy.coordinates import SkyCoord
    positions = SkyCoord([s.ra for s in sources], [s.dec for s in sources], unit="deg")
    regions = [r.sia2_pos() for r in request.soda(positions).regions]
    wanted = []
    for product in products:
        for source, region in zip(sources, regions):
            if covered is None or source.name in covered.get(str(product), ()):
                wanted.extend(Wanted(str(product), source, region, w) for w in windows)
    return wanted


def _text(row, name):
    return str(row[name]) if name in row.colnames and not np.ma.is_masked(row[name]) else ""


def _row_key(row):
    return (_text(row, "service"), _text(row, "product_id"), _text(row, "region"), _text(row, "window"),
            _text(row, "pol"))


def _verified_on_disk(path, checksum_path):
    """The file is there and matches its ``.checksum`` (what a finished download left)."""
    try:
        if not path or not os.path.isfile(path) or not checksum_path or not os.path.isfile(checksum_path):
            return False
        with open(checksum_path, encoding="ascii") as handle:
            expected = parse_checksum(handle.read())
        return not expected.mismatches(checksum_of_file(path)[1])
    except (OSError, ValueError, UnicodeDecodeError):
        return False


class RerunState:
    """What an earlier run left in a folder, from its manifest (empty when there is none).

    Rows are keyed on the whole request: service, product, region (position, shape and
    size), spectral window and polarisation.  A file counts as already answered only when
    its row has the same key and the file still matches its ``.checksum``.
    """

    def __init__(self, dest):
        self.dest = Path(dest)
        self.path = self.dest / MANIFEST_NAME
        self.table = None
        if self.path.is_file():
            try:
                table = Manifest.read(self.path).table
            except (OSError, ValueError):
                table = None    # unreadable: start again (files are renamed over, never duplicated)
            if table is not None and "service" in table.colnames:
                self.table = table

    def _answered(self):
        """Keys answered by a verified file, and (without the window) regions CASDA said missed."""
        data, missed = {}, set()
        for index, row in enumerate(self.table if self.table is not None else ()):
            key = _row_key(row)
            if row["kind"] == "error-file" and key[2]:
                missed.add(key[:3] + key[4:])
            elif row["kind"] == "data" and _verified_on_disk(str(row["path"]), str(row["checksum_path"])):
                data[key] = index
        return data, missed

    def missing(self, request, wanted):
        """The `Wanted` files of ``request`` this folder does not hold yet (verified)."""
        data, missed = self._answered()
        return [item for item in wanted
                if _key(request, item) not in data and _key(request, item)[:3] + _key(request, item)[4:]
                not in missed]

    def merged(self, keys, new_table):
        """The manifest of this request: kept rows that answer it, then the new rows.

        Parameters
        ----------
        keys : set
            `request_keys` of the request (of several, for a command that sends several).
        new_table : `~astropy.table.Table` or None
            The rows of this run's downloads.

        Returns
        -------
        manifest : `~astroquery_casda_ext.download.Manifest`
        earlier : list of str
            Files of the folder's manifest that answered an earlier, different request: they
            stay on disk but are not part of this answer.
        """
        missed_keys = {key[:3] + key[4:] for key in keys}
        fresh = {_row_key(r) for r in new_table} if new_table is not None and len(new_table) else set()
        keep, earlier = [], []
        for index, row in enumerate(self.table if self.table is not None else ()):
            key = _row_key(row)
            wanted_row = key in keys or (row["kind"] == "error-file" and key[:3] + key[4:] in missed_keys)
            if wanted_row and key not in fresh:
                keep.append(index)
            elif not wanted_row and row["kind"] == "data" and os.path.isfile(str(row["path"])):
                earlier.append(str(row["path"]))
        parts = [t for t in (self.table[keep] if keep else None, new_table) if t is not None and len(t)]
        if not parts:
            table = Manifest.from_results([], savedir=str(self.dest)).table
            for name in SOURCE_COLUMNS:
                table[name] = np.array([], dtype=float if name in ("source_ra", "source_dec") else str)
        else:
            table = vstack(parts, join_type="outer", metadata_conflicts="silent") if len(parts) > 1 \
                else parts[0]
        if len(table):
            table.sort(["product_id", "source", "window", "kind"])
        table.meta["savedir"] = str(self.dest)
        return Manifest(table, savedir=str(self.dest)), earlier


def _key(request, item):
    return (request.service, item.product, item.region, item.window, request.pol_label)


def request_keys(request, wanted):
    """The manifest keys of the `Wanted` files of ``request`` (for `RerunState.merged`)."""
    return {_key(request, item) for item in wanted}


class CutoutLabels:
    """Which product, source, region and spectral window each file of finished cutout jobs holds.

    Parameters
    ----------
    jobs : list of `~astroquery_casda_ext.jobs.SodaJob`
    labels : `~astropy.table.Table`
        ``CasdaClass.cutout_table`` rows of all the jobs (result id -> product, region, window).
    sources : list of `Source`
        In the order of the jobs' regions.
    service : {'cutout', 'spectrum'}
        What the jobs made (`SERVICE_TAGS`).
    """

    def __init__(self, jobs, labels, sources, service="cutout", request=None):
        self.service = service
        self.request = request or CutRequest(service)
        self.labels = labels
        self.by_result = {str(row["result_id"]): row for row in labels}
        self.regions = {}
        for job in jobs:
            request = getattr(job, "request", None)
            for region, source in zip(getattr(request, "regions", ()) or (), sources):
                self.regions[region.sia2_pos()] = source

    def of(self, kind, result_id, message="", product_id=""):
        """``(product, region, source or None, window)`` of one result file."""
        from .soda_params import _names as names_region   # the one reader of CASDA's miss messages
        label = self.by_result.get(str(result_id))
        if kind == "data" and label is not None:
            region, window = str(label["region"]), str(label["window"])
            return str(label["product_id"] or product_id), region, self.regions.get(region), window
        if kind == "error-file":
            region, source, product = _missed(str(message), self.regions, self.labels, names_region,
                                              product_id)
            return str(product), region, source, ""
        return str(product_id), "", None, ""

    def name(self, kind, product, source, window):
        """The stable file name, or None when nothing is known to name it by."""
        if source is None and not window:
            return None
        suffix = ".fits" if kind == "data" else ".error.txt"
        tag = "_".join(t for t in (self.request.tag(), SERVICE_TAGS[self.service]) if t)
        return stable_name(product, source and source.name, window, suffix, tag)

    def columns(self, product, region, source, window):
        return {"product_id": product, "service": self.service, "source": source.name if source else "",
                "source_ra": source.ra if source else np.nan, "source_dec": source.dec if source else np.nan,
                "region": region, "window": window, "pol": self.request.pol_label}

    def for_download(self, jobs):
        """``names`` and ``labels`` keyed by URL, for a downloader that names files itself."""
        names, labels = {}, {}
        for job in jobs:
            items = [("data", f) for f in job.result_files()]
            items += [("error-file", f) for f in job.error_files(fetch_messages=True)]
            for kind, item in items:
                product, region, source, window = self.of(kind, item.result_id, item.message or "",
                                                          item.product_id or "")
                name = self.name(kind, product, source, window)
                if name:
                    names[item.url] = name
                labels[item.url] = {k: v for k, v in self.columns(product, region, source, window).items()
                                    if k != "product_id"}
        return names, labels


def label_whole_files(table):
    """Whole staged files' manifest rows, with the source columns a rerun reads (service ``stage``)."""
    table = table.copy()
    for name in SOURCE_COLUMNS:
        if name in ("source_ra", "source_dec"):
            table[name] = np.full(len(table), np.nan)
        else:
            table[name] = np.array(["stage" if name == "service" else ""] * len(table), dtype=str)
    return table


def _missed(message, regions, labels, names_region, product_id):
    """(region, source, product) an error file says missed, from CASDA's echo of the request."""
    products = {str(p) for p in labels["product_id"]} if len(labels) else set()
    products |= set(re.findall(r"ID=([A-Za-z_]+-\d+)", message))
    if product_id:
        products.add(str(product_id))
    for region, source in regions.items():
        for product in sorted(products):
            if names_region(message, region, product):
                return region, source, product
    return "", None, product_id
