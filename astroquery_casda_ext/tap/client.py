"""The TAP client: the one entry point of every TAP query (sync or async; a Table, a stream
to a file, or parallel parts), its requests and its async jobs (`~astroquery_casda_ext.jobs.TapJob`)."""
import importlib.util
import io
import sys
import time as _time
import warnings

from ..documents import StatusScanner, fetch, parse_votable, query_status, table_of
from ..documents import repair_units as _repair_units
from ..errors import (IncompleteResultError, IncompleteResultWarning, QueryError, ServiceError,
                      redact_url)
from ..jobs import PollPolicy, TapJob
from ..transport import failure, failures_as
from ..writer import atomic_output
from .outputs import StreamedResult, _check_output, _Progress, _writer
from . import partitions
from .rows import (_CHUNK, SERVER_MAX_RECORDS, _arrow_schema, _BodyReader, _fields_of,
                   _PacedReader, _pyarrow, astropy_table, read_casda_csv, votable_table)

__all__ = ["TapClient"]


# --- the client ------------------------------------------------------------------------------

class TapClient:
    """Large TAP results from CASDA, typed, streamed, and in parallel parts.

    Parameters
    ----------
    session : AuthSession
        What the requests go through (the façade's session, credentials per URL).
    tap_url : str
        The TAP base (``.../casda_vo_tools/tap`` or the proxy's).
    timeout : float
        Seconds to wait for a connection and for each chunk of an answer.
    poll_first, poll_cap : float
        First and longest pause between looks at an async job.
    job_timeout : float
        Seconds an async job may take.
    sleep : callable
        Injected by tests.
    """

    #: Bytes of CSV parsed at a time (1 MiB parses as fast as larger blocks).
    block_size = 1 << 20
    #: The same for each part of a partitioned query (up to 4 run at once).
    part_block_size = 1 << 20
    #: Blocks read ahead of the parser (see ``_PacedReader``): memory per running stream is
    #: a small multiple of ``block_size`` (unpaced, pyarrow reads up to 32 blocks ahead).
    blocks_ahead = 3

    def __init__(self, session, tap_url, *, timeout=60.0, poll_first=0.2, poll_cap=5.0, job_timeout=36000.0,
                 sleep=_time.sleep, clock=_time.monotonic):
        self.session = session
        self.tap_url = tap_url.rstrip("/")
        self.timeout = timeout
        self.poll_first, self.poll_cap, self.job_timeout = poll_first, poll_cap, job_timeout
        self._sleep, self._clock = sleep, clock

    # --- the one entry point

    def query(self, query, *, maxrec=None, async_job=False, output=None, overwrite=False, result_format=None,
              progress=None):
        """Run ``query``, synchronously or as an async job, and return what was asked for.

        Parameters
        ----------
        query : str
            ADQL.
        maxrec : int, optional
            Most rows.
        async_job : bool
            Run as an async job (`~astroquery_casda_ext.jobs.TapJob`).
        output : path-like, optional
            Stream the result to this file (`stream_to`); returns a `StreamedResult`.
        overwrite : bool
            With ``output``: replace an existing file.
        result_format : {None, 'csv', 'votable'}
            The Table's road: None, CASDA's VOTable in one request, its rows read by pyarrow
            (`pyarrow_table`; read by astropy, `astroquery_table`, without pyarrow);
            ``'csv'``, CASDA's CSV typed by the query's FIELDs (`table`); ``'votable'``, the
            VOTable with text columns read as variable length (`votable_table`).
        progress : bool, optional
            Rows and bytes on stderr while streaming.

        Returns
        -------
        `~astropy.table.Table` or `StreamedResult`
        """
        if output is not None:
            return self.stream_to(query, output, maxrec=maxrec, async_job=async_job, overwrite=overwrite,
                                  progress=progress)
        if result_format == "csv":
            return self.table(query, maxrec=maxrec, async_job=async_job, progress=bool(progress))
        if result_format == "votable":
            return self.votable_table(query, maxrec=maxrec, async_job=async_job)
        if importlib.util.find_spec("pyarrow") is not None:
            return self.pyarrow_table(query, maxrec=maxrec, async_job=async_job)
        return self.astroquery_table(query, maxrec=maxrec, async_job=async_job)

    def pyarrow_table(self, query, *, maxrec=None, async_job=False):
        """CASDA's VOTable in one request, read whole by the one document reader (within the
        retry layer and ``conf.table_max_bytes``), its rows then read by pyarrow, its header by
        astropy, its ``QUERY_STATUS`` wherever it is (``tap.rows.votable_table``): pyvo's
        Table with each text column at its longest value, at a fraction of pyvo's time and
        memory (the answer's bytes are let go once its rows are read).

        Raises
        ------
        QueryError
            CASDA refused the query, or it failed while its rows were written.
        """
        document = self._document(query, maxrec, async_job, fmt=None)
        url, source = document.url, io.BytesIO(document.content)
        del document            # the bytes now live in `source` only, closed once the rows are read
        return votable_table(source, lambda data: parse_votable(data, what="CASDA TAP query", url=url, relaxed=True),
                             "TAP", url=url, block_size=4 << 20)

    def astroquery_table(self, query, *, maxrec=None, async_job=False):
        """CASDA's VOTable in one request, as astroquery reads it but with each text column at
        its longest value (read relaxed, then narrowed: `~astroquery_casda_ext.tables`).

        Warns
        -----
        MaxResultsWarning
            The result was truncated (``QUERY_STATUS=OVERFLOW``).
        """
        document = self._document(query, maxrec, async_job, fmt=None)
        return table_of(parse_votable(document, what="CASDA TAP query", relaxed=True), "TAP", url=document.url)

    # --- requests

    def _params(self, query, fmt, maxrec):
        params = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query}
        if fmt is not None:
            params["FORMAT"] = fmt
        if maxrec is not None:
            params["MAXREC"] = str(maxrec)
        return params

    def _sync(self, query, fmt, maxrec):
        """The streamed answer of a synchronous query: (response, URL)."""
        url = self.tap_url + "/sync"
        with failures_as(url=url, what="CASDA TAP query"):
            response = self.session.post(url, data=self._params(query, fmt, maxrec), stream=True,
                                         timeout=self.timeout)
        if response.status_code >= 400:
            with response:
                raise failure(url=url, what="CASDA TAP query", response=response)
        return response, url

    def _job(self, query, fmt, maxrec):
        """An async job for ``query``, run to its end (`~astroquery_casda_ext.jobs.TapJob`)."""
        job = TapJob.create(self.session, self.tap_url, self._params(query, fmt, maxrec), timeout=self.timeout)
        try:
            job.run()
            job.wait(PollPolicy(first=self.poll_first, cap=self.poll_cap, timeout=self.job_timeout),
                     sleep=self._sleep, clock=self._clock)
            job.raise_if_error()
        except BaseException:
            job.discard()
            raise
        return job

    def _async(self, query, fmt, maxrec):
        """Submit, run and wait for an async job; (streamed result response, job URL)."""
        job = self._job(query, fmt, maxrec)
        url = job.result_url()
        try:
            with failures_as(url=url, what="reading the TAP job's result"):
                response = self.session.get(url, stream=True, timeout=self.timeout)
        except ServiceError:
            job.discard()
            raise
        if response.status_code >= 400:
            job.discard()
            with response:
                raise failure(url=url, what="reading the TAP job's result", response=response)
        return response, job.url

    def _document(self, query, maxrec, async_job, fmt="votable"):
        """The whole VOTable answer of ``query`` (metadata, small tables), read by the one reader."""
        if not async_job:
            url = self.tap_url + "/sync"
            return fetch(self.session, "POST", url, what="CASDA TAP query", table=True,
                         data=self._params(query, fmt, maxrec), timeout=self.timeout)
        job = self._job(query, fmt, maxrec)
        try:
            return fetch(self.session, "GET", job.result_url(), what="reading the TAP job's result", table=True,
                         timeout=self.timeout)
        finally:
            job.discard()

    def _delete(self, job_url):
        TapJob(self.session, job_url, timeout=self.timeout).discard()   # good manners; failing is harmless

    # --- metadata

    def metadata(self, query, async_job=False):
        """(empty astropy Table, arrow schema) of ``query``, from its FIELDs (``MAXREC=0``).

        ``async_job``: ask through an async job (a query too slow for the sync limit may be
        slow even for no rows, e.g. when it sorts).

        Raises
        ------
        QueryError
            CASDA refused the query (its ``QUERY_STATUS=ERROR`` text is kept).
        """
        document = self._document(query, 0, async_job)
        votable = parse_votable(document, what="CASDA TAP metadata", relaxed=True)
        status, message = query_status(votable)
        if status == "ERROR":
            raise QueryError(f"CASDA TAP query failed: {message}", url=document.url, server_message=message)
        template, fields = _fields_of(votable)
        return template, _arrow_schema(fields)

    # --- reading a CSV answer

    def _batches(self, response, url, schema, limit, progress, tally, separator=",", lean=False):
        """Typed record batches of a CSV answer, at most ``limit`` rows; fills ``tally``
        (a dict: rows, bytes, truncated) when the answer has ended as it should.  ``lean``: small
        blocks parsed in this thread (several parts stream at once: their memory adds up)."""
        body = _BodyReader(response, url, progress)
        header = body.readline_bytes()
        if not header.endswith(b"\r\n"):
            raise IncompleteResultError(f"CASDA's TAP answer from {redact_url(url)} ended before its header",
                                        url=url)
        names = header.decode("utf-8", "replace").rstrip("\r\n").split(separator)
        if [name.strip('"') for name in names] != [name.lower() for name in schema.names]:
            raise ServiceError(f"CASDA's CSV columns {names} are not the query's {schema.names}", url=url)
        rows, truncated = 0, False
        paced = _PacedReader(body, _CHUNK, self.blocks_ahead)
        batches = () if body.at_end() else read_casda_csv(
            paced, schema, separator=separator, use_threads=not lean,
            block_size=self.part_block_size if lean else self.block_size)
        try:
            for batch in batches:       # (pyarrow refuses an empty CSV: a header alone is no rows)
                paced.batch_done()
                if rows + batch.num_rows > limit:
                    batch, truncated = batch.slice(0, limit - rows), True
                rows += batch.num_rows
                if progress is not None:
                    progress.update(rows=rows)
                if batch.num_rows:
                    yield batch
                if truncated:
                    break   # MAXREC + 1 rows were asked for: more than that is never read (an endless answer)
        except _pyarrow().ArrowInvalid as exc:
            if body.tail != b"\r\n":     # a last row cut short fails to parse before we see the end
                raise IncompleteResultError(
                    f"CASDA's TAP answer from {redact_url(url)} broke off mid-row after {body.bytes_read:,} "
                    "bytes; nothing was kept: run the query again", url=url) from exc
            raise ServiceError(f"CASDA's CSV from {redact_url(url)} could not be read: {exc}",
                               url=url) from exc
        finally:
            paced.release()
            if hasattr(batches, "close"):
                batches.close()
        if not truncated and body.bytes_read > len(header) and body.tail != b"\r\n":
            raise IncompleteResultError(f"CASDA's TAP answer from {redact_url(url)} broke off mid-row after "
                                        f"{body.bytes_read:,} bytes; nothing was kept: run the query again",
                                        url=url)
        tally.update(rows=rows, bytes=body.bytes_read, truncated=truncated)

    def _answer(self, query, limit, async_job, fmt="csv"):
        """(response, url, job URL or None) of ``query`` asking one row beyond ``limit``."""
        if async_job:
            response, job_url = self._async(query, fmt, limit + 1)
            return response, job_url, job_url
        response, url = self._sync(query, fmt, limit + 1)
        return response, url, None

    @staticmethod
    def _limit(maxrec):
        return SERVER_MAX_RECORDS if maxrec is None else int(maxrec)

    def _warn_if_cut(self, rows, truncated, maxrec):
        if truncated or (maxrec is None and rows >= SERVER_MAX_RECORDS):
            warnings.warn(IncompleteResultWarning(
                f"CASDA's TAP stopped at {rows:,} rows (MAXREC or the server's limit): there are more. "
                "Narrow the query, raise maxrec, or use query_tap_partitioned."), stacklevel=4)
            return False
        return True

    def table(self, query, *, maxrec=None, async_job=False, progress=False):
        """The result of ``query`` as an astropy Table, read from CASDA's CSV.

        Columns have the types, units, UCDs and descriptions of CASDA's FIELDs; empty
        numeric cells are masked.  See `~astroquery_casda_ext.CasdaClass.query_tap`.
        """
        pa = _pyarrow()
        template, schema = self.metadata(query, async_job)
        limit = self._limit(maxrec)
        response, url, job_url = self._answer(query, limit, async_job)
        meter = _Progress("TAP") if progress else None
        try:
            with response:
                batches = list(self._batches(response, url, schema, limit, meter, tally := {}))
        finally:
            if job_url:
                self._delete(job_url)
            if meter:
                meter.close()
        rows, truncated = tally["rows"], tally["truncated"]
        table = _repair_units(astropy_table(pa.Table.from_batches(batches, schema=schema), template))
        table.meta["complete"] = self._warn_if_cut(rows, truncated, maxrec)
        return table

    def votable_table(self, query, *, maxrec=None, async_job=False):
        """The result through CASDA's VOTable, text columns relaxed to variable length."""
        document = self._document(query, maxrec, async_job)
        votable = parse_votable(document, what="CASDA TAP query", relaxed=True)
        status, message = query_status(votable)
        if status == "ERROR":
            raise QueryError(f"CASDA TAP query failed: {message}", url=document.url, server_message=message)
        table = _repair_units(_fields_of(votable)[0])
        table.meta["complete"] = status != "OVERFLOW"
        if status == "OVERFLOW":
            warnings.warn(IncompleteResultWarning(
                f"CASDA's TAP stopped at {len(table):,} rows: there are more"), stacklevel=2)
        return table

    # --- streaming to a file

    def stream_to(self, query, output, *, maxrec=None, async_job=False, overwrite=False, progress=None):
        """Write the result of ``query`` to ``output`` without holding it in memory.

        Parameters
        ----------
        query : str
            ADQL.
        output : path-like
            ``.parquet`` (needs pyarrow), ``.csv``, ``.ecsv`` or ``.xml``/``.vot`` (CASDA's
            VOTable, as sent).  Written through the package's one safe writer
            (`~astroquery_casda_ext.writer.atomic_output`): claimed before the query is
            sent, into a temporary renamed when complete, never through a link.
        maxrec : int, optional
            Most rows (default: CASDA's limit, 20 000 000).
        async_job : bool
            Run as an async job (no 20 s limit).
        overwrite : bool
            Replace an existing file (never a link, nor a file another run is writing).
        progress : bool, optional
            Show rows and bytes on stderr (default: when stderr is a terminal).

        Returns
        -------
        StreamedResult

        Raises
        ------
        OutputExistsError
            ``output`` exists (without ``overwrite``) or another run is writing it.
        UnsafeFilenameError
            ``output`` is a symbolic link or not a regular file.
        IncompleteResultError
            The answer broke off; no file is left behind.
        QueryError
            CASDA refused the query.
        """
        path, fmt = _check_output(output)
        if fmt != "votable":
            _pyarrow()          # before anything is sent or claimed: CSV, ECSV and Parquet are read by pyarrow
        with atomic_output(path, overwrite=overwrite) as sink:     # claimed before anything is sent
            meter = _Progress(f"TAP -> {path.name}") if (sys.stderr.isatty() if progress is None
                                                          else progress) else None
            try:
                if fmt == "votable":
                    result = self._stream_votable(query, sink, maxrec, async_job, meter)
                else:
                    result = self._stream_rows(query, sink, fmt, maxrec, async_job, meter)
            finally:
                if meter:
                    meter.close()
        rows, bytes_read, complete = result
        return StreamedResult(path, rows, bytes_read, complete)

    def _stream_rows(self, query, sink, fmt, maxrec, async_job, meter):
        template, schema = self.metadata(query, async_job)
        limit = self._limit(maxrec)
        response, url, job_url = self._answer(query, limit, async_job)
        try:
            with response, _writer(fmt, sink, schema, template) as writer:
                for batch in self._batches(response, url, schema, limit, meter, tally := {}):
                    writer.write(batch)
        finally:
            if job_url:
                self._delete(job_url)
        rows, bytes_read, truncated = tally["rows"], tally["bytes"], tally["truncated"]
        return rows, bytes_read, self._warn_if_cut(rows, truncated, maxrec)

    def _stream_votable(self, query, sink, maxrec, async_job, meter):
        """CASDA's VOTable copied as it arrives; its QUERY_STATUS found wherever it is (an ERROR
        met while writing rows comes after ``</TABLE>``), its rows bounded by ``maxrec``."""
        if async_job:
            response, url = self._async(query, "votable", maxrec)
        else:
            response, url = self._sync(query, "votable", maxrec)
        limit = self._limit(maxrec)
        tail, rows, status = b"", 0, StatusScanner()
        try:
            with response:
                body = _BodyReader(response, url, meter)
                while True:
                    chunk = body.read(_CHUNK)
                    if not chunk:
                        break
                    sink.write(chunk)
                    rows += (tail[-2:] + chunk).count(b"<TR")    # a "<TR" may straddle two chunks
                    status.feed(chunk)
                    tail = (tail + chunk)[-4096:]
                    if meter is not None:
                        meter.update(rows=rows)
                    if rows > limit:
                        raise IncompleteResultError(
                            f"CASDA's VOTable from {redact_url(url)} went on past MAXREC={limit:,} rows; stopped, "
                            "nothing was kept", url=url)
        finally:
            if async_job:
                self._delete(url)
        state, message = status.status
        if state == "ERROR":
            raise QueryError(f"CASDA TAP query failed: {message}", url=url, server_message=message)
        if not tail.rstrip().endswith(b"</VOTABLE>"):
            raise IncompleteResultError(f"CASDA's VOTable from {redact_url(url)} broke off; nothing was kept",
                                        url=url)
        complete = state != "OVERFLOW"
        if not complete:
            warnings.warn(IncompleteResultWarning("CASDA's TAP stopped at MAXREC: there are more rows"),
                          stacklevel=4)
        return rows, body.bytes_read, complete

    # --- partitioned queries

    # --- partitioned queries (tap.partitions)

    def count(self, query):
        """The number of rows of ``query``, by asking CASDA for its ``COUNT(*)``.

        ``query`` must be a plain SELECT (see `~astroquery_casda_ext.tap.split_select`).
        """
        return partitions.count(self, query)

    def partition_queries(self, query, by, parts, bounds=None):
        """The ``parts`` disjoint ADQL queries covering ``query``, split on column ``by``, and
        the edges between them (see ``tap.partitions.partition_queries``)."""
        return partitions.partition_queries(self, query, by, parts, bounds)

    def partitioned(self, query, *, by, parts, output, **options):
        """See `~astroquery_casda_ext.CasdaClass.query_tap_partitioned`."""
        return partitions.partitioned(self, query, by=by, parts=parts, output=output, **options)
