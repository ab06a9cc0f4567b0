"""Cutout downloads that can be run again: stable file names, source columns, a merged manifest.

CASDA numbers cutouts per job (``cutout-13-imagecube-1001``), so the same request run twice
would leave two sets of files side by side, and nothing in a file name says which source it
shows.  Here every cutout is named after what it *is* — the product and the source
(``cube-1001_J123039-450343.fits``) — and the manifest rows carry the source's name and
position and the region cut.  A rerun reads the manifest already in the folder, keeps every
file that is present and still matches its ``.checksum``, and asks CASDA only for the
sources that are missing.

The downloader fetches files under CASDA's names; they are then renamed to their stable
names (one rename each).  When the downloader takes caller-chosen names itself, the
rename step goes and `stable_name` is passed to it instead.  Renames go through the package's
one writer (``writer.place``): a link at a stable name is refused.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import vstack

from .checksum import checksum_of_file, parse_checksum
from .download import MANIFEST_NAME, Manifest
from .errors import InvalidInputError
from .writer import place

__all__ = ["Source", "sources_from", "stable_name", "check_destination", "RerunState", "CutoutLabels",
           "label_manifest", "SOURCE_COLUMNS", "SERVICE_TAGS"]

#: Columns added to the manifest rows of labelled cutouts.
SOURCE_COLUMNS = ("service", "source", "source_ra", "source_dec", "region", "window")

#: What a job made, by SODA service: its files' name tag (cutouts have none).
SERVICE_TAGS = {"cutout": "", "spectrum": "spectrum"}

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


def check_destination(dest):
    """Create ``dest`` if needed and prove it is a writable directory; nothing is sent before this.

    Returns
    -------
    pathlib.Path
        The absolute directory.

    Raises
    ------
    OSError
        With the directory as ``filename``: it cannot be created or written.
    """
    path = Path(dest).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        raise NotADirectoryError(20, "not a directory", str(path))
    probe = path / f".casda-write-test.{os.getpid()}"
    try:
        # os.access alone is fooled by root and by read-only mounts: really create a file
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except OSError as exc:
        raise PermissionError(exc.errno, f"cannot write into the destination ({exc.strerror})",
                              str(path)) from None
    finally:
        probe.unlink(missing_ok=True)
    return path


def _key(service, product_id, source, window):
    return str(service or ""), str(product_id), str(source or ""), str(window or "")


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
    """What an earlier run left in a folder, from its manifest (empty when there is none)."""

    def __init__(self, dest):
        self.dest = Path(dest)
        self.path = self.dest / MANIFEST_NAME
        self.table = None
        if self.path.is_file():
            try:
                table = Manifest.read(self.path).table
            except (OSError, ValueError):
                table = None    # unreadable: start again (files are renamed over, never duplicated)
            if table is not None and all(name in table.colnames for name in SOURCE_COLUMNS):
                self.table = table

    def done(self):
        """Keys (product, source, window) already answered: verified files, or recorded misses."""
        keys = set()
        if self.table is None:
            return keys
        for row in self.table:
            key = _key(row["service"], row["product_id"], row["source"], row["window"])
            if row["kind"] == "error-file" and row["source"]:
                keys.add(key)
            elif row["kind"] == "data" and _verified_on_disk(str(row["path"]), str(row["checksum_path"])):
                keys.add(key)
        return keys

    def sources_to_fetch(self, product_ids, sources, window="", service="cutout"):
        """The sources some product still lacks (cutouts, or spectra with ``service='spectrum'``)."""
        done = self.done()
        return [s for s in sources
                if any(_key(service, p, s.name, window) not in done for p in product_ids)]

    def merged(self, new_table):
        """The old rows of files not written again, then the new rows; ordered by product and source."""
        if self.table is None or not len(self.table):
            table = new_table
        elif new_table is None or not len(new_table):
            table = self.table
        else:
            fresh = {_key(r["service"], r["product_id"], r["source"], r["window"]) for r in new_table}
            keep = [i for i, r in enumerate(self.table)
                    if _key(r["service"], r["product_id"], r["source"], r["window"]) not in fresh]
            table = vstack([self.table[keep], new_table], metadata_conflicts="silent")
        if len(table):
            table.sort(["product_id", "source", "window", "kind"])
        table.meta["savedir"] = str(self.dest)
        return Manifest(table, savedir=str(self.dest))


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

    def __init__(self, jobs, labels, sources, service="cutout"):
        self.service = service
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
        return stable_name(product, source and source.name, window, suffix, SERVICE_TAGS[self.service])

    def columns(self, product, region, source, window):
        return {"product_id": product, "service": self.service, "source": source.name if source else "",
                "source_ra": source.ra if source else np.nan, "source_dec": source.dec if source else np.nan,
                "region": region, "window": window}

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


def label_manifest(manifest, jobs, labels, sources, dest, service="cutout"):
    """Rename a download's cutouts to their stable names and add the source columns.

    For a downloader that writes files under CASDA's names: each file (and its
    ``.checksum``) is moved to its `stable_name` with one rename.

    Parameters
    ----------
    manifest : `~astroquery_casda_ext.download.Manifest`
        What the downloader wrote (CASDA's names).
    jobs, labels, sources, service
        As for `CutoutLabels`.
    dest : path-like

    Returns
    -------
    `~astropy.table.Table`
        The manifest rows, renamed and labelled.
    """
    known = CutoutLabels(jobs, labels, sources, service)
    table = manifest.table.copy()
    # new lists, not item assignment: a numpy string column would cut longer names short
    columns = {name: [] for name in ("product_id", "path", "checksum_path") + SOURCE_COLUMNS}
    for row in table:
        kind = str(row["kind"])
        product, region, source, window = known.of(kind, row["result_id"], row["message"], row["product_id"])
        path, checksum_path = str(row["path"]), str(row["checksum_path"])
        name = known.name(kind, product, source, window)
        if name:
            path, checksum_path = _rename(path, checksum_path, dest, name)
        for column, value in known.columns(product, region, source, window).items():
            columns[column].append(value)
        columns["path"].append(path)
        columns["checksum_path"].append(checksum_path)
    for name, values in columns.items():
        table[name] = np.array(values, dtype=float if name in ("source_ra", "source_dec") else str)
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


def _rename(path, checksum_path, dest, name):
    """Move a downloaded file (and its ``.checksum``) to its stable name, replacing an older copy."""
    if not path or not os.path.isfile(path):
        return path, checksum_path
    new = os.path.join(str(dest), name)
    if os.path.abspath(path) != os.path.abspath(new):
        place(path, new, replace=True)     # the one writer's rename: a link at the stable name is refused
    if checksum_path and os.path.isfile(checksum_path):
        place(checksum_path, new + ".checksum", replace=True)
        checksum_path = new + ".checksum"
    return new, checksum_path
