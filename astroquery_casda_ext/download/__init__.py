"""Parallel, resumable, verified downloads of CASDA files, with a manifest.

A download (`Downloader.download`) runs in these steps:

1. **Lock** the folder (``download.lock``): one downloader per destination folder, across
   processes and hosts sharing it.  A second run waits, saying who holds the folder, or
   with ``no_wait`` fails at once (`~astroquery_casda_ext.errors.FolderBusyError`).
2. **Plan and claim** (``download.naming``, no network): each data URL is paired with its
   ``.checksum`` sidecar and given a safe local name inside ``savedir``.  Every path the
   run may write (final name, ``.part``, ``.part.validator``, sidecar, later the
   server's ``Content-Disposition`` name) is claimed first; a clash is an error row, never
   an overwrite.
3. **Read the checksums**: every sidecar is fetched first (they are tiny), kept on disk
   next to its data file as ``astroquery.casda`` does, and parsed: the expected size,
   CRC-32 and SHA-1.  A file that a previous run's manifest lists as verified and that
   still matches its sidecar on disk is skipped without a request.
4. **Transfer** (``download.transfer``, one call per file, in parallel): the data file is streamed
   into ``<name>.part`` (opened exclusively, never through a link) while the checksum of
   the bytes written is computed (``download.verify``: on a helper thread when a core is idle).
   An interrupted ``.part`` is continued with ``Range`` and ``If-Range`` (the validator
   of the response it came from), so a file changed on the server starts again from zero
   instead of being spliced.  Only a file whose size, CRC-32 and SHA-1 all match is
   renamed to its final name; the rename never follows or replaces a link.  Without a
   ``.checksum`` only the size is checked, and the manifest says ``size-only``.
   Retries and restarts are bounded by the transport's one
   `~astroquery_casda_ext.transport.RetryPolicy`; a body longer than announced is cut; a
   transfer slower than ``min_rate`` stops with an error naming the file and the rate.
5. **The manifest** (``download.manifest``): one row per file; saved as ECSV next to the files,
   merged with the manifest of earlier runs (never two rows for one path).

Downloads never carry credentials: CASDA's download URLs are capabilities in themselves,
so the session's ``auth`` and any ``Authorization`` header are stripped, and no message
shows the query string of a presigned URL.

Executors
---------
By default the transfers run on a thread pool of ``workers`` threads, each with its own
`requests.Session` (built from the one you pass: headers, proxies, TLS settings, no
credentials) carrying the transport's adapter and a pool of ``workers`` connections.
Any `concurrent.futures.Executor` can run them instead, for example a dask.distributed
cluster::

    from dask.distributed import Client
    client = Client()                          # or Client("tcp://scheduler:8786")
    downloader = Downloader(session, executor=client.get_executor())
    manifest = downloader.download(job.result_files(), savedir="/shared/casda")

With a foreign executor each task is ``transfer_file(task, config)``: a top-level function
whose arguments and result (`FileTask`, `TransferConfig`, `FileResult`) are plain,
picklable dataclasses, so process-based workers on other machines can run it; each
worker thread lazily builds its own session from a `SessionSpec`.  ``savedir`` must then
be a directory the workers can write to (a shared file system).  A name the server gives
there is placed without replacing anything (a clash fails that file), since the workers
do not share the run's claims.

Every file is written through the package's one safe writer, `astroquery_casda_ext.writer` (claimed
temporaries, renames that never follow a link, reserved names, the folder lock).

Modules: ``download.naming`` (names, claims, planning), ``download.http`` (sessions
and the HTTP boundary), ``download.transfer`` (the loop of one file), ``download.verify`` (hashing what is on
disk), ``download.manifest``, ``download.lock``, ``download.executors`` (`Downloader`).
"""
from ..transport import RetryPolicy, parse_retry_after
from .executors import Downloader, download_files
from .http import SessionSpec
from .lock import LOCK_NAME, FolderLock
from .manifest import MANIFEST_NAME, ChecksumStatus, FileResult, FileStatus, Manifest
from .naming import (Claims, FileTask, filename_from_url, parse_content_disposition, plan_downloads,
                     safe_filename)
from .transfer import Hooks as _Hooks, TransferConfig, read_checksum, transfer_file

__all__ = [
    "RetryPolicy", "FileStatus", "ChecksumStatus", "FileTask", "FileResult", "TransferConfig",
    "SessionSpec", "Downloader", "Manifest", "download_files", "plan_downloads", "transfer_file",
    "read_checksum", "parse_retry_after", "parse_content_disposition", "filename_from_url", "safe_filename",
    "Claims", "FolderLock", "MANIFEST_NAME", "LOCK_NAME",
]
