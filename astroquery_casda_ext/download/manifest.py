"""The manifest: one row per file, what happened to it, saved as ECSV next to the files."""
import io
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from astropy.table import MaskedColumn, Table, vstack

from ..errors import (ChecksumMismatchError, DownloadError, UnsafeFilenameError, package_logger, plain_text,
                      redact_url)
from ..writer import MANIFEST_NAME as _MANIFEST_NAME, place
from .naming import DATA, ERROR_FILE, is_regular_file, write_file

__all__ = []

log = package_logger(__name__.split(".")[0])

#: File name of the manifest `Manifest.save` writes into the download directory.
MANIFEST_NAME = _MANIFEST_NAME


class FileStatus(str, Enum):
    """Outcome of one file."""

    COMPLETE = "COMPLETE"   #: downloaded (and verified as far as ``checksum_status`` says)
    SKIPPED = "SKIPPED"     #: already present and verified; not fetched again
    ERROR = "ERROR"         #: failed; ``message`` says why, and no file has its final name


class ChecksumStatus(str, Enum):
    """How far a file was verified."""

    VERIFIED = "verified"        #: size, CRC-32 and SHA-1 match CASDA's ``.checksum``
    SIZE_ONLY = "size-only"      #: no ``.checksum`` to compare with: only the size was checked
    MISMATCH = "mismatch"        #: did not match its ``.checksum``, twice; deleted
    NOT_CHECKED = "not-checked"  #: not verified (``verify=False``, no size known, or failed first)


@dataclass
class FileResult:
    """What happened to one file: a row of the `Manifest` (picklable)."""

    index: int
    url: str
    path: str
    checksum_path: str = ""
    product_id: str = ""
    result_id: str = ""
    kind: str = DATA
    size: int = 0
    checksum_status: ChecksumStatus = ChecksumStatus.NOT_CHECKED
    status: FileStatus = FileStatus.ERROR
    message: str = ""
    error_type: str = ""             #: name of the errors.py class describing the failure
    attempts: int = 0                #: HTTP requests made for the data file
    bytes_transferred: int = 0       #: body bytes received for the data file in this call
    labels: tuple = ()               #: (column, value) pairs given by the caller


_ERROR_CLASSES = {cls.__name__: cls for cls in (DownloadError, ChecksumMismatchError, UnsafeFilenameError)}


def _label_column(name, values):
    """A column of caller labels; missing values are masked."""
    present = [value for value in values if value is not None]
    if present and all(isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
                       for value in present):
        data = [value if value is not None else 0 for value in values]
    else:
        data = ["" if value is None else str(value) for value in values]
    return MaskedColumn(data, name=name, mask=[value is None for value in values])


class Manifest:
    """What a download did, one row per file, as an astropy `~astropy.table.Table`.

    Columns: ``product_id``, ``result_id``, ``kind`` (``data``, ``error-file`` for a job's
    error results, ``checksum`` for a sidecar given alone), ``url`` (redacted: no query
    string), ``path``, ``checksum_path``, ``size``, ``checksum_status`` (`ChecksumStatus`
    values: ``size-only`` marks a file that had no ``.checksum`` to compare with),
    ``status`` (`FileStatus` values), ``message``, ``error_type``, ``attempts`` and
    ``bytes_transferred``; then any label columns the caller gave (``labels=``).
    """

    COLUMNS = ("product_id", "result_id", "kind", "url", "path", "checksum_path", "size",
               "checksum_status", "status", "message", "error_type", "attempts", "bytes_transferred")
    _DTYPES = (str, str, str, str, str, str, "i8", str, str, str, str, "i8", "i8")

    def __init__(self, table, *, savedir=".", item_paths=()):
        #: The rows (an astropy Table).
        self.table = table
        #: The download directory.
        self.savedir = str(savedir)
        self._item_paths = list(item_paths)

    @classmethod
    def from_results(cls, results, *, savedir=".", refs=()):
        results = sorted(results, key=lambda result: result.index)
        rows = [(r.product_id, r.result_id, r.kind, redact_url(r.url), r.path, r.checksum_path, r.size,
                 ChecksumStatus(r.checksum_status).value, FileStatus(r.status).value, r.message,
                 r.error_type, r.attempts, r.bytes_transferred) for r in results]
        table = Table(rows=rows or None, names=cls.COLUMNS, dtype=cls._DTYPES)
        label_names = list(dict.fromkeys(key for r in results for key, _ in r.labels))
        for name in label_names:
            if name not in table.colnames:
                table[name] = _label_column(name, [dict(r.labels).get(name) for r in results])
        table.meta["savedir"] = str(savedir)
        by_index = {result.index: result for result in results}
        item_paths = [by_index[index].path if role == "data" else by_index[index].checksum_path
                      for index, role in refs if index in by_index]
        return cls(table, savedir=savedir, item_paths=item_paths)

    @classmethod
    def read(cls, path):
        """A manifest saved by `save`.

        Raises
        ------
        DownloadError
            The file cannot be read as a manifest (the message names it).
        """
        try:
            table = Table.read(path, format="ascii.ecsv")
        except (OSError, ValueError, KeyError) as exc:
            raise DownloadError(f"{path} is not a readable manifest: {type(exc).__name__}: "
                                f"{plain_text(str(exc))[:300]}", path=str(path)) from None
        return cls(table, savedir=table.meta.get("savedir", os.path.dirname(os.path.abspath(path))))

    def __len__(self):
        return len(self.table)

    def __repr__(self):
        counts = {status.value: int((self.table["status"] == status.value).sum()) for status in FileStatus}
        return f"<Manifest of {len(self)} files in {self.savedir}: {counts}>"

    def _rows(self, mask):
        return self.table[mask]

    @property
    def paths(self):
        """Local paths of the data files that are there and checked (COMPLETE or SKIPPED)."""
        ok = (self.table["kind"] != ERROR_FILE) & (self.table["status"] != FileStatus.ERROR.value)
        return [str(path) for path in self.table["path"][ok]]

    @property
    def all_paths(self):
        """Local path of every URL given, in order, ``.checksum`` and error files included."""
        return [path for path in self._item_paths if path]

    @property
    def failed(self):
        """The rows of the files that failed (a Table)."""
        return self._rows(self.table["status"] == FileStatus.ERROR.value)

    @property
    def size_only(self):
        """The rows of files that had no ``.checksum``: only their size was checked."""
        ok = self.table["status"] != FileStatus.ERROR.value
        return self._rows(ok & (self.table["checksum_status"] == ChecksumStatus.SIZE_ONLY.value))

    @property
    def error_files(self):
        """The rows of the job's error files; ``message`` holds what each one says."""
        return self._rows(self.table["kind"] == ERROR_FILE)

    @property
    def ok(self):
        return len(self.failed) == 0

    def merged_with(self, previous):
        """The rows of ``previous`` (another manifest's table) for paths not in this one, then these.

        A rerun into a folder so never writes two rows for one path, and keeps the rows of
        files it was not asked about.
        """
        if previous is None or len(previous) == 0:
            return self.table
        mine = {str(path) for path in self.table["path"] if path}
        keep = [index for index, path in enumerate(previous["path"])
                if str(path) not in mine or not path]
        kept = previous[keep]
        if len(kept) == 0:
            return self.table
        try:
            merged = vstack([kept, self.table], join_type="outer", metadata_conflicts="silent")
        except Exception:  # noqa: BLE001 - label columns of different types in two runs: keep as text
            kept, table = kept.copy(), self.table.copy()
            for other in (kept, table):
                for name in other.colnames:
                    if name not in self.COLUMNS:
                        other[name] = _label_column(name, [None if np.ma.is_masked(value) else str(value)
                                                           for value in other[name]])
            merged = vstack([kept, table], join_type="outer", metadata_conflicts="silent")
        merged.meta = dict(self.table.meta)
        return merged

    def save(self, path=None, *, merge=True):
        """Write the manifest as ECSV, atomically; default ``<savedir>/casda_manifest.ecsv``.

        With ``merge`` (default), rows of a manifest already there for other paths are kept
        (see `merged_with`); one that cannot be read is never dropped: it is kept beside as
        ``casda_manifest.unreadable-<time>.ecsv`` with a warning.  The file is written
        through the package's one writer (`~astroquery_casda_ext.writer.atomic_output`); a
        symbolic link at ``path`` is refused, never followed or replaced.

        Text cells are written with the characters that would break ECSV's line-based format
        (NUL, CR, form feed, U+2028/U+2029, other C0/C1 controls) escaped as ``\\x..`` /
        ``\\u....`` (`~astroquery_casda_ext.errors.plain_text`); a server's text therefore
        never makes the manifest unreadable.  Local paths never hold such characters (they
        are refused as file names).

        Returns
        -------
        str
            The path written.
        """
        path = Path(path) if path is not None else Path(self.savedir, MANIFEST_NAME)
        previous = None
        if merge and is_regular_file(path):
            try:
                previous = Table.read(path, format="ascii.ecsv")
            except Exception:  # noqa: BLE001 - any parser failure: keep the old file, never drop its rows
                _keep_unreadable(path)
        table = _text_safe(self.merged_with(previous))
        text = io.StringIO()
        table.write(text, format="ascii.ecsv")
        write_file(path, text.getvalue().encode("utf-8"), package_file=True)
        return str(path)

    def raise_for_errors(self):
        """Raise if any file failed; the exception lists every failure.

        Raises
        ------
        DownloadError
            Or its subclass `ChecksumMismatchError` / `UnsafeFilenameError` when every
            failure is of that kind. ``exc.manifest`` is this manifest.
        """
        failed = self.failed
        if len(failed) == 0:
            return
        kinds = set(failed["error_type"])
        error_class = _ERROR_CLASSES.get(kinds.pop(), DownloadError) if len(kinds) == 1 else DownloadError
        lines = "\n".join(f"  {row['message']}" for row in failed)
        single = failed[0] if len(failed) == 1 else None
        error = error_class(f"{len(failed)} of {len(self)} files could not be downloaded:\n{lines}",
                            url=single["url"] if single else None, path=single["path"] if single else None)
        error.manifest = self
        raise error


def _text_safe(table):
    """A copy of ``table`` whose text cells hold nothing that breaks a line-based text format."""
    table = table.copy(copy_data=True)
    for name in table.colnames:
        column = table[name]
        if column.dtype.kind != "U":
            continue
        values = [plain_text(value) if isinstance(value, str) else value for value in column.tolist()]
        if values != column.tolist():
            mask = getattr(column, "mask", None)
            table[name] = MaskedColumn(values, name=name, mask=mask) if mask is not None and mask.any() \
                else values
    return table


def _keep_unreadable(path):
    """Move an unreadable manifest aside (never over anything), so its rows are not lost."""
    from datetime import datetime, timezone
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = Path(path).with_name(f"{Path(path).stem}.unreadable-{stamp}.ecsv")
    place(path, aside, replace=False)
    log.warning("the manifest %s could not be read; it is kept as %s and a new one is started", path, aside)

