"""One downloader per destination folder: `FolderLock` on ``<savedir>/.casda-download.lock``.

The lock lives with the package's one safe writer (`astroquery_casda_ext.writer`), which
partitioned TAP outputs use too; see `~astroquery_casda_ext.writer.FolderLock` for how it
works across threads, processes and hosts, and for the clear error where the file system
refuses locks.
"""
from ..writer import LOCK_NAME, FolderLock

__all__ = ["FolderLock", "LOCK_NAME"]
