"""Running a download: the folder lock, the sidecars first, then the transfers on an executor.

`Downloader.download` locks the folder (`lock.FolderLock`), plans and claims every name
(`naming.plan_downloads`), skips files a previous run's manifest lists as verified and
that still match their local ``.checksum`` (no request at all), reads the other
sidecars, runs `transfer.transfer_file` per file on the built-in thread pool (one
`requests.Session` per thread) or on any `concurrent.futures.Executor`, and saves the
manifest (merged with the one already there) before it lets the folder go.
"""
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import requests
from astropy.table import Table

from .. import conf
from ..checksum import parse_checksum
from ..errors import DownloadError
from ..transport import RetryPolicy
from .http import SessionPool, SessionSpec
from .lock import FolderLock
from .manifest import MANIFEST_NAME, ChecksumStatus, FileResult, FileStatus, Manifest
from .naming import Claims, is_regular_file, plan_downloads
from .transfer import Hooks, TransferConfig, failed_result, read_checksum, transfer_file
from .verify import matches

__all__ = []

#: Bytes per read and write: 8 MiB blocks cost the least CPU per GB in measurements (1, 4, 8 MiB).
CHUNK_SIZE = 8 << 20


# --- progress -----------------------------------------------------------------------------------

def _progress_mode(progress):
    """(overall bar?, per-file bars?) for ``progress`` None (auto), bool or ``"files"``."""
    if progress is None:
        interactive = getattr(sys.stderr, "isatty", None)
        return bool(interactive and interactive()), False
    if progress == "files":
        return True, True
    return bool(progress), False


class _NoBar:
    """What `_Progress` needs of a disabled tqdm bar."""

    disable = True
    n = total = 0

    def __init__(self, *args, **kwargs):
        pass

    def update(self, count):
        self.n += count

    def set_postfix_str(self, *args, **kwargs):
        pass

    refresh = close = set_postfix_str


class _Progress:
    """The overall bar (bytes, rate, ETA, files done) and optional per-file bars; thread-safe."""

    def __init__(self, progress, n_files):
        enabled, self._per_file = _progress_mode(progress)
        if enabled:
            from tqdm.auto import tqdm
        else:
            tqdm = _NoBar     # importing tqdm.auto costs ~0.3 s of CPU: not for a bar never shown
        self._lock = threading.Lock()
        self._tqdm = tqdm
        self._bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc="CASDA download",
                         disable=not enabled, dynamic_ncols=True, postfix=f"0/{n_files} files")
        self._file_bars, self._counted, self._planned = {}, {}, {}
        self._total, self._files, self._done = 0, n_files, 0

    def _show_files(self):
        self._bar.set_postfix_str(f"{self._done}/{self._files} files", refresh=False)

    def _grow(self, index, nbytes):
        self._planned[index] = self._planned.get(index, 0) + nbytes
        self._total += nbytes
        self._bar.total = self._total
        self._bar.refresh()

    def plan(self, task):
        """Count a file's remaining bytes into the total before it starts."""
        if task.expected is not None:
            part = task.part_path
            done = os.lstat(part).st_size if is_regular_file(part) else 0
            with self._lock:
                self._grow(task.index, max(task.expected.size - done, 0))

    def report(self, event, index, value):
        """Called by the workers: ``("start", i, (offset, size, name))`` and ``("bytes", i, n)``."""
        with self._lock:
            if event == "bytes":
                self._counted[index] = self._counted.get(index, 0) + value
                self._bar.update(value)
                if index in self._file_bars:
                    self._file_bars[index].update(value)
            elif event == "start":
                self._start_file(index, *value)

    def _start_file(self, index, offset, size, name):
        if size is not None and index not in self._planned:
            self._grow(index, max(size - offset, 0))
        if self._per_file and not self._bar.disable and index not in self._file_bars:
            label = name if len(name) <= 40 else "..." + name[-37:]
            self._file_bars[index] = self._tqdm(total=size, initial=offset, unit="B", unit_scale=True,
                                                unit_divisor=1024, desc=label, leave=False)

    def finish(self, result):
        """A file is done: settle its bytes (foreign executors report nothing before)."""
        with self._lock:
            missing = result.bytes_transferred - self._counted.get(result.index, 0)
            self._total += result.bytes_transferred - self._planned.get(result.index, 0)
            self._bar.total = max(self._total, self._bar.n + missing)
            if missing > 0:
                self._bar.update(missing)
            self._done += 1
            self._show_files()
            self._bar.refresh()
            bar = self._file_bars.pop(result.index, None)
            if bar is not None:
                bar.close()

    def close(self):
        with self._lock:
            for bar in self._file_bars.values():
                bar.close()
            self._bar.close()


# --- reruns -------------------------------------------------------------------------------------

def _verified_before(savedir):
    """Paths a manifest already in ``savedir`` lists as verified: ``{path: row}``."""
    path = Path(savedir, MANIFEST_NAME)
    if not is_regular_file(path):
        return {}
    try:
        table = Table.read(path, format="ascii.ecsv")
    except Exception:  # noqa: BLE001 - an unreadable manifest only costs the shortcut
        return {}
    ok = ((table["status"] != FileStatus.ERROR.value)
          & (table["checksum_status"] == ChecksumStatus.VERIFIED.value))
    return {str(row["path"]): row for row in table[ok]}


def _still_verified(task, previous):
    """SKIPPED without a request: listed as verified, sidecar on disk, file matching it."""
    row = previous.get(task.path)
    if row is None or not task.checksum_name or str(row["checksum_path"]) != task.checksum_path:
        return None
    try:
        with open(task.checksum_path, "rb") as stream:     # a regular file, checked below
            expected = parse_checksum(stream.read(4096))
    except (OSError, ValueError):
        return None
    if not is_regular_file(task.checksum_path) or not matches(task.path, expected):
        return None
    return FileResult(task.index, task.url, task.path, task.checksum_path, task.product_id, task.result_id,
                      task.kind, expected.size, ChecksumStatus.VERIFIED, FileStatus.SKIPPED,
                      str(row["message"]) if task.kind != "data" else "", labels=task.labels)


# --- the downloader -----------------------------------------------------------------------------

class Downloader:
    """Parallel, resumable, verified downloads of CASDA files (see `astroquery_casda_ext.download`).

    Parameters
    ----------
    session : requests.Session, optional
        Whose headers, proxies and TLS settings the transfers use (never its ``auth``).
        Each worker thread gets a session of its own built from these (`SessionSpec`),
        with a connection pool of ``workers`` connections per host.
    workers : int, optional
        Files transferred at once (default ``conf.download_workers``).
    retry : RetryPolicy, optional
        Default `RetryPolicy.from_conf`: retries and restarts per file, with backoff.
    executor : concurrent.futures.Executor, optional
        Runs the transfers instead of the built-in thread pool, e.g.
        ``dask.distributed.Client.get_executor()`` (see the package docstring).
    progress : bool, "files" or None
        None (default): an overall progress bar when stderr is a terminal; True: always;
        ``"files"``: also one bar per file; False: never.
    timeout : float or (float, float), optional
        Seconds to connect and between bytes received (default ``conf.timeout``).
    chunk_size : int
        Bytes read and written per step; memory use is a few chunks per worker.
    min_rate : float, optional
        Slowest average rate in bytes per second a transfer may keep after ``grace``
        seconds (default ``conf.download_min_rate``; 0 for no limit).
    grace : float, optional
        Seconds a transfer may take before ``min_rate`` applies (default
        ``conf.download_grace``).
    max_unannounced : int, optional
        Most bytes accepted for a file whose size nothing announced (no ``.checksum``,
        DataLink size or ``Content-Length``); default `TransferConfig.max_unannounced`.
    sleep, clock : callable, optional
        Replace the interruptible wait between retries and the monotonic clock (tests).
    """

    def __init__(self, session=None, *, workers=None, retry=None, executor=None, progress=None,
                 timeout=None, chunk_size=CHUNK_SIZE, min_rate=None, grace=None, max_unannounced=None,
                 sleep=None, clock=None):
        #: Whose settings (not credentials) the per-thread sessions copy.
        self.session = session if session is not None else requests.Session()
        #: Files transferred at once.
        self.workers = int(workers if workers is not None else conf.download_workers)
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        #: When and how long to wait before retrying a file.
        self.retry = retry if retry is not None else RetryPolicy.from_conf()
        #: A concurrent.futures.Executor for the transfers, or None for the built-in threads.
        self.executor = executor
        #: None (auto), True, "files" or False; see the class docstring.
        self.progress = progress
        #: Seconds to connect and between bytes received.
        self.timeout = timeout if timeout is not None else float(conf.timeout)
        #: Bytes per read and write.
        self.chunk_size = int(chunk_size)
        #: Slowest average bytes per second after ``grace`` seconds.
        self.min_rate = float(min_rate if min_rate is not None else conf.download_min_rate)
        #: Seconds before ``min_rate`` applies.
        self.grace = float(grace if grace is not None else conf.download_grace)
        #: Most bytes accepted when no size is announced.
        self.max_unannounced = int(max_unannounced or TransferConfig.max_unannounced)
        self._sleep, self._clock = sleep, clock

    def __repr__(self):
        return (f"{type(self).__name__}(workers={self.workers}, retry={self.retry!r}, "
                f"executor={self.executor!r}, timeout={self.timeout!r})")

    def _config(self, transfers):
        # Helper threads writing and hashing pay off only while there are fewer transfers than cores.
        spare_cores = min(self.workers, transfers) < (os.cpu_count() or 1)
        return TransferConfig(self.retry, self.timeout, self.chunk_size,
                              SessionSpec.from_session(self.session, self.workers), spare_cores,
                              self.min_rate, self.grace, self.max_unannounced)

    def download(self, items, savedir=".", *, verify=True, names=None, labels=None, no_wait=False,
                 save_manifest=False):
        """Download files and their ``.checksum`` sidecars into ``savedir``; never raises per file.

        Parameters
        ----------
        items : iterable of str or ResultFile-like
            URLs as a staging job lists them (each file and its ``.checksum``, any order),
            or objects with ``url``, ``checksum_url``, ``product_id`` and ``result_id``
            (``SodaJob.result_files()``). A job's ``error-NN`` files are fetched and
            reported as ``kind == "error-file"`` rows carrying their message.
        savedir : str or path-like
            Download directory (created if missing); default the current directory.
        verify : bool
            Compare each file with its ``.checksum`` (size, CRC-32, SHA-1). When False only
            sizes are checked.
        names : dict, optional
            ``{data URL: local file name}``: names chosen by the caller (checked like any
            name; the sidecar becomes ``<name>.checksum``; the server's name is not used).
        labels : dict, optional
            ``{data URL: {column: value}}``: extra manifest columns (e.g. source name,
            ``ra``, ``dec``, region, spectral window) for those files.
        no_wait : bool
            If another download holds ``savedir``, raise `~astroquery_casda_ext.errors.FolderBusyError`
            at once instead of waiting for it.
        save_manifest : bool
            Save the manifest into ``savedir`` (merged with the one there: rows of other
            files are kept, and no path gets two rows) before the folder is let go.

        Returns
        -------
        Manifest
            One row per file. Call ``raise_for_errors()`` to turn failures into an exception.

        Raises
        ------
        TypeError
            If an item is neither a URL nor ResultFile-like.
        DownloadError
            If ``savedir`` cannot be created or locked (`~astroquery_casda_ext.errors.FolderBusyError`
            with ``no_wait``). Problems with single files do not raise: they are rows.
        """
        savedir = Path(savedir or ".").resolve()
        try:
            savedir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot create the download directory {savedir}: {exc}",
                                path=str(savedir)) from None
        with FolderLock(savedir, wait=not no_wait):
            claims = Claims(savedir)
            tasks, results, refs = plan_downloads(items, savedir, names=names, labels=labels, claims=claims)
            previous, n_files = _verified_before(savedir), len(tasks) + len(results)
            pending = []
            for task in tasks:
                done = _still_verified(task, previous) if verify else None
                (results if done is not None else pending).append(done or task)
            progress = _Progress(self.progress, n_files)
            hooks = Hooks(progress.report, threading.Event(), self._sleep, self._clock, claims)
            config = self._config(len(pending))
            sessions = SessionPool(config.session)
            try:
                for result in results:
                    progress.finish(result)
                ready, failures = self._read_checksums(pending, config, hooks, sessions, verify)
                results += failures + self._transfer(ready, config, hooks, progress, sessions)
            finally:
                progress.close()
                sessions.close()
            manifest = Manifest.from_results(results, savedir=savedir, refs=refs)
            if save_manifest:
                manifest.save()
        return manifest

    def download_files(self, urls, *, savedir=".", names=None, labels=None, no_wait=False):
        """``astroquery.casda``'s contract: the local paths of all ``urls``, in order.

        ``names``, ``labels`` and ``no_wait`` are as in `download`.

        Raises
        ------
        DownloadError
            After every other file is done, if any file failed (`Manifest.raise_for_errors`).
        """
        manifest = self.download(urls, savedir, names=names, labels=labels, no_wait=no_wait)
        manifest.raise_for_errors()
        return manifest.all_paths

    def _read_checksums(self, tasks, config, hooks, sessions, verify):
        """Fetch every sidecar first (tiny, in parallel): tasks with ``expected``, and failures."""
        ready, failures = [task for task in tasks if not task.checksum_url], []
        with ThreadPoolExecutor(self.workers, thread_name_prefix="casda-checksum") as pool:
            def read(task):
                return read_checksum(task, config, sessions.get(), hooks)
            futures = {pool.submit(read, task): task for task in tasks if task.checksum_url}
            for future, task in _completed(futures, hooks):
                try:
                    checked = future.result()
                except DownloadError as exc:
                    failures.append(failed_result(task, exc))
                    continue
                ready.append(checked if verify else replace(checked, expected=None))
        return sorted(ready, key=lambda task: task.index), failures

    def _transfer(self, tasks, config, hooks, progress, sessions):
        for task in tasks:
            progress.plan(task)
        if self.executor is not None:
            futures = {self.executor.submit(transfer_file, task, config): task for task in tasks}
            return self._collect(futures, hooks, progress)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="casda-download") as pool:
            def transfer(task):
                return transfer_file(task, config, sessions.get(), hooks)
            futures = {pool.submit(transfer, task): task for task in tasks}
            return self._collect(futures, hooks, progress)

    @staticmethod
    def _collect(futures, hooks, progress):
        results = []
        for future, task in _completed(futures, hooks):
            try:
                result = future.result()
            except Exception as exc:   # a foreign executor could not run the task at all
                failure = DownloadError(f"{task.name}: the executor failed: {type(exc).__name__}: {exc}",
                                        url=task.url, path=task.path)
                result = failed_result(task, failure)
            progress.finish(result)
            results.append(result)
        return results


def _completed(futures, hooks):
    """``(future, task)`` as they finish; on Ctrl-C, stop the workers (keeping .part files)."""
    try:
        for future in as_completed(futures):
            yield future, futures[future]
    except BaseException:
        hooks.cancel()
        for future in futures:
            future.cancel()
        raise


def download_files(urls, *, savedir=".", session=None, names=None, labels=None, no_wait=False, **options):
    """Download ``urls`` like ``astroquery.casda.Casda.download_files``, fast and verified.

    Parameters
    ----------
    urls : list of str
        Data and ``.checksum`` URLs (any order), as ``Casda.stage_data`` returns them.
    savedir : str or path-like
        Download directory; default the current directory.
    session : requests.Session, optional
    names, labels, no_wait
        As in `Downloader.download`.
    **options
        `Downloader` keywords (``workers``, ``retry``, ``executor``, ``progress``, ``timeout``).

    Returns
    -------
    list of str
        The local path of every URL given (``.checksum`` files included), in order.
    """
    return Downloader(session, **options).download_files(urls, savedir=savedir, names=names, labels=labels,
                                                         no_wait=no_wait)
