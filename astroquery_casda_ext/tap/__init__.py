"""TAP at CASDA, one package with one entry point: ``TapClient.query``.

Every TAP query of the package goes through `TapClient` (the façade's
`~astroquery_casda_ext.CasdaClass.query_tap`, its ADQL helpers through ``Discovery``, and
`~astroquery_casda_ext.CasdaClass.query_tap_partitioned`): synchronous or as an async job
(`~astroquery_casda_ext.jobs.TapJob`, followed by the package's one poll loop); answered as
an astropy Table, streamed to a file at flat memory, or split into resumable parallel parts.
Whole answers are read by `~astroquery_casda_ext.documents` (bounded in bytes and time);
streams keep the streams' pacing rule (`~astroquery_casda_ext.transport.Pacing`) and are
bounded to ``MAXREC + 1`` rows.

Why pyarrow: astropy reads CASDA's fixed-width text columns (``arraysize="255"``,
``"2000"``) into 4-byte-per-character arrays of that width, so a 100 000-row ObsCore result
costs gigabytes, and its TABLEDATA parser is many times slower than a CSV parser.  So a
Table is read from CASDA's VOTable, streamed, its rows rewritten into CSV lines that pyarrow
reads (``tap.rows``: the header by astropy, the ``QUERY_STATUS`` markers kept), each text
column at its longest value (`~astroquery_casda_ext.tables`).  Streams to files and
partitions read CASDA's CSV, typed from the FIELDs of the same query run with ``MAXREC=0``.

=====================  ==================================================================
module                 job
=====================  ==================================================================
``tap.client``         `TapClient`: requests, async jobs, metadata, Tables, streams
``tap.rows``           the paced body reader, CASDA's CSV and VOTable rows through pyarrow
``tap.outputs``        output formats and their writers, `StreamedResult`, progress
``tap.partitions``     partitioned queries: `split_select`, parts, their manifest
=====================  ==================================================================

pyarrow is an optional dependency (``pip install astroquery_casda_ext[parquet]``).
"""
from ..credentials import AuthSession   # re-exported: the session TapClient is given
from ..documents import relaxed_votable
from .client import TapClient
from .outputs import OUTPUT_FORMATS, StreamedResult
from .partitions import MANIFEST_NAME, PartitionedResult, split_select
from .rows import MAX_RUNNING_JOBS, SERVER_MAX_RECORDS, read_casda_csv

__all__ = ["TapClient", "AuthSession", "StreamedResult", "PartitionedResult", "relaxed_votable",
           "read_casda_csv", "split_select", "SERVER_MAX_RECORDS", "MAX_RUNNING_JOBS", "OUTPUT_FORMATS",
           "MANIFEST_NAME"]
