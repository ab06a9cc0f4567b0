"""Catalogue-scale TAP over real HTTP: CASDA's CSV/TSV as the emulator serves it (each quirk
quoted from ``casda_vo_tools``), the typed CSV reader, results streamed to files, cut and
broken-off results, and partitioned queries that resume."""
import io
import time
import warnings

import numpy as np
import pyarrow.dataset
import pyarrow.parquet
import pytest
import requests
from astropy.table import Table

from astroquery_casda_ext import CasdaClass
from astroquery_casda_ext.emulator import CasdaEmulator, FaultRule
from astroquery_casda_ext.errors import (IncompleteResultError, IncompleteResultWarning, InvalidInputError,
                                         PartitionedQueryError, QueryError)
from astroquery_casda_ext.tap.rows import _PacedReader
from astroquery_casda_ext.tap import (MANIFEST_NAME, read_casda_csv, relaxed_votable,
                                      split_select)

ROWS = 2000
CATALOGUE = "casda.bulk_continuum_component"
ALL_ROWS = f"SELECT * FROM {CATALOGUE}"
# Cells with every character CASDA's CSV writer treats specially.
AWKWARD = ['say "hi", then go', "two\nlines", "a,b,c", "tab\there", "&amp; <tag> café", ""]


@pytest.fixture(scope="module")
def catalogue_emulator(tmp_path_factory):
    with CasdaEmulator(tmp_path_factory.mktemp("casda-catalogue"), catalogue_rows=ROWS) as emu:
        yield emu


@pytest.fixture
def casda(catalogue_emulator):
    yield CasdaClass(server=catalogue_emulator.url)
    catalogue_emulator.clear_faults()


def sync(emulator, query, fmt, maxrec=None):
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, "FORMAT": fmt}
    if maxrec is not None:
        data["MAXREC"] = str(maxrec)
    response = requests.post(emulator.url + "casda_vo_tools/tap/sync", data=data, timeout=30)
    response.raise_for_status()
    return response


def literal(text):
    return "'" + text.replace("'", "''") + "'"


def awkward_query():
    cells = ", ".join(f"{literal(text)} AS c{index}" for index, text in enumerate(AWKWARD))
    return f"SELECT TOP 3 {cells}, first_sbid, spectral_index FROM {CATALOGUE} WHERE catalogue_id = 5000"


# --- the emulator writes CSV/TSV as CASDA's CsvTsvResultsExtractor does ---------------------------

def test_csv_header_names_are_lower_cased(catalogue_emulator):
    # CsvTsvResultsExtractor.outputHeader: String name = metaData.getColumnName(i).toLowerCase();
    response = sync(catalogue_emulator, f"SELECT TOP 1 first_sbid AS FirstSBID FROM {CATALOGUE}", "csv")
    assert response.content.startswith(b"firstsbid\r\n")
    votable = sync(catalogue_emulator, f"SELECT TOP 1 first_sbid AS FirstSBID FROM {CATALOGUE}", "votable")
    assert b'<FIELD name="FirstSBID"' in votable.content


def test_csv_rows_end_in_crlf(catalogue_emulator):
    # CsvTsvResultsExtractor.buildRowOutput: rowOutput.append("\r\n");
    body = sync(catalogue_emulator, f"SELECT TOP 3 first_sbid FROM {CATALOGUE}", "csv").content
    assert body == b"first_sbid\r\n50000\r\n50000\r\n50000\r\n"


def test_csv_quotes_separators_and_newlines_without_doubling_and_xml_escapes_every_cell(catalogue_emulator):
    # CsvTsvResultsExtractor.escapeValue: "if the string contains the separator character, or double
    # quotes or new line characters" -> '"' + value + '"' (inner quotes are not doubled), applied to
    # ResultsExtractor.getFieldValue's value, which is StringEscapeUtils.ESCAPE_XML11 (with
    # NumericEntityEscaper.between(0x7f, ...)): a quote arrives as &quot;, never raw.
    body = sync(catalogue_emulator, awkward_query(), "csv").content.decode()
    row = body.split("\r\n")[1]
    assert row == ('"say &quot;hi&quot;, then go","two\nlines","a,b,c",tab\there,'
                   '&amp;amp; &lt;tag&gt; caf&#233;,,50000,')


def test_tsv_quotes_tabs_not_commas(catalogue_emulator):
    # CsvTsvResultsExtractor.OutputType.TSV('\t'): the separator tested by escapeValue is the tab.
    body = sync(catalogue_emulator, awkward_query(), "tsv").content.decode()
    assert body.split("\r\n")[1].split("\t")[:4] == ['say &quot;hi&quot;, then go', '"two\nlines"', "a,b,c",
                                                     '"tab']


def test_csv_has_no_overflow_or_error_marker(catalogue_emulator):
    # CsvTsvResultsExtractor.outputFooter(boolean overflow, String error) { } writes nothing.
    csv = sync(catalogue_emulator, ALL_ROWS, "csv", maxrec=5).content
    assert csv.count(b"\r\n") == 6 and b"OVERFLOW" not in csv
    assert b'value="OVERFLOW"' in sync(catalogue_emulator, ALL_ROWS, "votable", maxrec=5).content


# --- the typed CSV reader --------------------------------------------------------------------------

def test_awkward_values_round_trip_and_equal_the_votable_path(casda):
    table = casda.query_tap(awkward_query(), result_format="csv")
    assert [table[f"c{index}"][0] for index in range(len(AWKWARD))] == AWKWARD
    votable = casda.query_tap(awkward_query())
    for name in table.colnames:
        assert list(table[name].filled(0)) == list(votable[name].filled(0)) if table[name].dtype.kind != "O" \
            else list(table[name]) == list(votable[name])


@pytest.mark.parametrize("query", [ALL_ROWS, "SELECT TOP 40 * FROM ivoa.obscore ORDER BY obs_publisher_did",
                                   "SELECT * FROM casda.continuum_component ORDER BY component_id"])
def test_types_units_and_nulls_equal_the_votable_paths(casda, query):
    table = casda.query_tap(query, result_format="csv")
    through_pyvo = casda.query_tap(query)
    relaxed = casda.query_tap(query, result_format="votable")
    assert table.colnames == through_pyvo.colnames == relaxed.colnames
    assert len(table) == len(through_pyvo) > 0
    for name in table.colnames:
        ours, theirs, same = table[name], through_pyvo[name], relaxed[name]
        assert ours.dtype == same.dtype, name
        # text: variable length here ("O"); pyvo keeps CASDA's fixed widths ("U") unless arraysize="*"
        kind = ours.dtype.kind
        assert theirs.dtype.kind in (("O", "U") if kind == "O" else (kind,)), name
        assert ours.unit == theirs.unit == same.unit, name
        assert ours.description == theirs.description
        mask = getattr(theirs, "mask", np.zeros(len(theirs), bool))
        assert list(ours.mask) == list(mask) == list(same.mask), name
        if kind == "f":
            assert np.array_equal(ours.filled(np.nan), np.asarray(theirs.filled(np.nan)),
                                  equal_nan=True), name
        else:
            assert [str(v) for v in ours.filled()] == [str(v) for v in theirs.filled()], name
    if query == ALL_ROWS:
        assert table["spectral_index"].mask.any()       # the catalogue's NULLs are there to compare


def test_text_columns_cost_what_they_hold_in_the_relaxed_votable(catalogue_emulator):
    body = sync(catalogue_emulator, "SELECT TOP 40 * FROM ivoa.obscore", "votable").content
    assert b'arraysize="255"' in body
    table = relaxed_votable(body).get_first_table().to_table()
    assert table["obs_id"].dtype.kind == "O" and table["s_region"].dtype.kind == "O"
    assert table["s_ra"].dtype == np.float64


def test_a_result_cut_at_maxrec_is_reported_incomplete(casda, tmp_path):
    with pytest.warns(IncompleteResultWarning, match="stopped at 150 rows"):
        table = casda.query_tap(ALL_ROWS, result_format="csv", maxrec=150)
    assert len(table) == 150 and table.meta["complete"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # exactly maxrec rows: complete, no warning
        assert casda.query_tap(ALL_ROWS, result_format="csv", maxrec=ROWS).meta["complete"] is True
    with pytest.warns(IncompleteResultWarning):
        written = casda.query_tap(ALL_ROWS, output=tmp_path / "cut.parquet", maxrec=10)
    assert (written.rows, written.complete) == (10, False)
    assert pyarrow.parquet.read_metadata(tmp_path / "cut.parquet").num_rows == 10


def test_a_sync_result_broken_off_mid_stream_is_an_error_and_leaves_no_file(casda, catalogue_emulator,
                                                                             tmp_path):
    # the MAXREC=0 metadata answer is short: only the long CSV answer is reset
    catalogue_emulator.add_fault(FaultRule(path="/tap/sync$", kind="reset", after_bytes=60_000))
    with pytest.raises(IncompleteResultError, match="broke off"):
        casda.query_tap(ALL_ROWS, result_format="csv")
    with pytest.raises(IncompleteResultError):
        casda.query_tap(ALL_ROWS, output=tmp_path / "broken.parquet")
    assert list(tmp_path.iterdir()) == []


def test_an_async_result_cut_short_is_an_error(casda, catalogue_emulator):
    catalogue_emulator.add_fault(FaultRule(path="/results/result$", kind="truncate", after_bytes=30_000))
    with pytest.raises(IncompleteResultError):
        casda.query_tap(ALL_ROWS, result_format="csv", async_job=True)


def test_query_errors_keep_the_servers_words(casda, tmp_path):
    with pytest.raises(QueryError, match="no_such_table|Unknown table"):
        casda.query_tap("SELECT * FROM casda.no_such_table", result_format="csv")
    with pytest.raises(QueryError):
        casda.query_tap("SELECT * FROM casda.no_such_table", output=tmp_path / "x.xml")
    assert list(tmp_path.iterdir()) == []


# --- streaming to files ----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix, fmt", [(".parquet", "parquet"), (".csv", "ascii.csv"),
                                         (".ecsv", "ascii.ecsv"), (".xml", "votable")])
def test_streamed_files_hold_the_whole_result(casda, tmp_path, suffix, fmt):
    reference = casda.query_tap(ALL_ROWS, result_format="csv")
    written = casda.query_tap(ALL_ROWS, output=tmp_path / f"all{suffix}", progress=True)
    assert written.rows == ROWS and written.complete and written.bytes_read > 0
    back = pyarrow.parquet.read_table(written.path).to_pydict() if fmt == "parquet" else \
        Table.read(written.path, format=fmt)
    assert len(back["component_id"]) == ROWS
    assert list(back["component_id"]) == list(reference["component_id"])
    assert np.allclose(np.asarray(back["ra_deg_cont"], float), reference["ra_deg_cont"])
    assert [name for name in tmp_path.iterdir()] == [written.path]
    with pytest.raises(InvalidInputError, match="exists"):
        casda.query_tap(ALL_ROWS, output=written.path)


def test_output_format_is_checked_before_sending(casda, catalogue_emulator, tmp_path):
    before = len(catalogue_emulator.request_log)
    with pytest.raises(InvalidInputError, match="unknown format"):
        casda.query_tap(ALL_ROWS, output=tmp_path / "x.fits")
    assert len(catalogue_emulator.request_log) == before


# --- partitioned queries ---------------------------------------------------------------------------

def checksum(table):
    """(rows, sorted component ids, sum of first_sbid, sum of fluxes) of an arrow table."""
    ids = sorted(table.column("component_id").to_pylist())
    return (table.num_rows, ids, int(np.sum(table.column("first_sbid"))),
            round(float(np.sum(np.asarray(table.column("flux_peak"), dtype=np.float64))), 3))


@pytest.fixture
def reference(casda, tmp_path):
    written = casda.query_tap(ALL_ROWS, output=tmp_path / "reference.parquet")
    return checksum(pyarrow.parquet.read_table(written.path))


def test_partitioned_query_writes_one_dataset_pyarrow_and_dask_open(casda, tmp_path, reference):
    result = casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=5, output=tmp_path / "parts")
    assert (result.rows, result.parts, result.resumed) == (ROWS, 5, 0)
    dataset = pyarrow.dataset.dataset(result.path, format="parquet")
    assert checksum(dataset.to_table()) == reference
    assert len(dataset.files) == 5
    import dask.dataframe
    frame = dask.dataframe.read_parquet(str(result.path))
    assert len(frame) == ROWS and frame.npartitions >= 5


def test_a_failed_part_is_retried_alone_and_a_rerun_resumes(casda, catalogue_emulator, tmp_path, reference):
    directory = tmp_path / "parts"
    # one part at a time: the first part's result breaks off three times (its first try and
    # both retries), so it fails; the other parts are written.  (The rule also counts the three
    # short answers before the parts, MIN/MAX's FIELDs and rows and the query's FIELDs, which
    # end before 20 000 bytes.)
    catalogue_emulator.add_fault(FaultRule(path="/results/result$", kind="truncate", after_bytes=20_000,
                                           times=3 + 3))
    with pytest.raises(PartitionedQueryError, match="1 of 6 parts failed") as failure:
        casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=6, output=directory, max_running=1)
    assert list(failure.value.failed) == [0]
    assert not (directory / "part-00000.parquet").exists()
    catalogue_emulator.clear_faults()
    jobs_before = _jobs_created(catalogue_emulator)
    result = casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=6, output=directory)
    assert (result.rows, result.resumed) == (ROWS, 5)
    assert _jobs_created(catalogue_emulator) - jobs_before == 1 + 1      # the FIELDs, the missing part
    assert checksum(pyarrow.dataset.dataset(directory).to_table()) == reference


def test_a_part_that_fails_once_is_retried_and_the_run_completes(casda, catalogue_emulator, tmp_path,
                                                                  reference):
    catalogue_emulator.add_fault(FaultRule(path="/results/result$", kind="truncate", after_bytes=20_000,
                                           times=3 + 1))      # MIN/MAX and the FIELDs pass, then one part
    before = _jobs_created(catalogue_emulator)
    result = casda.query_tap_partitioned(ALL_ROWS, by="flux_peak", parts=4, output=tmp_path / "p",
                                         verify_counts=True)
    assert result.rows == ROWS
    assert _jobs_created(catalogue_emulator) - before == 3 + 4 + 1      # MIN/MAX (2), FIELDs; parts; a retry
    assert checksum(pyarrow.dataset.dataset(tmp_path / "p").to_table()) == reference


def test_a_damaged_part_is_fetched_again_on_rerun(casda, catalogue_emulator, tmp_path, reference):
    directory = tmp_path / "parts"
    casda.query_tap_partitioned(ALL_ROWS, by="dec_deg_cont", parts=4, output=directory)
    (directory / "part-00002.parquet").write_bytes(b"half a file")
    before = _jobs_created(catalogue_emulator)
    result = casda.query_tap_partitioned(ALL_ROWS, by="dec_deg_cont", parts=4, output=directory)
    assert (result.rows, result.resumed) == (ROWS, 3)
    assert _jobs_created(catalogue_emulator) - before == 1 + 1          # the FIELDs, the damaged part
    assert checksum(pyarrow.dataset.dataset(directory).to_table()) == reference


def test_declination_bands_cover_the_sky(casda, tmp_path):
    client = casda._tap_client(False)
    queries, edges = client.partition_queries(ALL_ROWS, "dec_deg_cont", 6)
    assert edges == [-60.0, -30.0, 0.0, 30.0, 60.0]
    assert "dec_deg_cont < -60.0 OR dec_deg_cont IS NULL" in queries[0]
    assert queries[-1].endswith("(dec_deg_cont >= 60.0)")


def test_partitioned_query_with_a_where_keeps_it(casda, tmp_path):
    query = f"SELECT component_id, flux_peak FROM {CATALOGUE} WHERE first_sbid = 50000"
    result = casda.query_tap_partitioned(query, by="flux_peak", parts=3, output=tmp_path / "w")
    expected = len(casda.query_tap(query, result_format="csv"))
    assert result.rows == expected == pyarrow.dataset.dataset(tmp_path / "w").count_rows()


@pytest.mark.parametrize("query, by, error", [
    (f"SELECT TOP 5 * FROM {CATALOGUE}", "ra_deg_cont", "TOP"),
    (f"SELECT first_sbid, COUNT(*) FROM {CATALOGUE} GROUP BY first_sbid", "first_sbid", "GROUP BY"),
    (ALL_ROWS, "component_id", "numeric"),
    (ALL_ROWS, "ra; DROP", "column name"),
])
def test_queries_that_cannot_be_split_are_refused(casda, tmp_path, query, by, error):
    with pytest.raises(InvalidInputError, match=error):
        casda.query_tap_partitioned(query, by=by, parts=3, output=tmp_path / "x")


def test_a_directory_of_another_query_is_refused(casda, tmp_path):
    casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=2, output=tmp_path / "d")
    with pytest.raises(InvalidInputError, match="another partitioned query"):
        casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=3, output=tmp_path / "d")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not empty"):
        casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=3, output=tmp_path / "other")
    assert (tmp_path / "d" / MANIFEST_NAME).is_file()


def test_split_select_finds_clauses_outside_strings_and_parentheses():
    assert split_select("SELECT a, (SELECT 1 FROM x WHERE y) FROM t WHERE s = 'FROM WHERE' ORDER BY a") == \
        ("a, (SELECT 1 FROM x WHERE y)", "t", "s = 'FROM WHERE'", "a")


def _jobs_created(emulator):
    return sum(1 for entry in emulator.request_log
               if entry.method == "POST" and entry.path.rstrip("/").endswith("/tap/async"))


def test_cli_tap_streams_to_parquet(catalogue_emulator, tmp_path, capsys):
    from astroquery_casda_ext import cli
    output = tmp_path / "components.parquet"
    code = cli.main(["tap", ALL_ROWS, "-o", str(output), "--json", "--server", catalogue_emulator.url])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert pyarrow.parquet.read_metadata(output).num_rows == ROWS
    assert '"rows": 2000' in out
    assert cli.main(["tap", ALL_ROWS, "-o", str(output), "--server", catalogue_emulator.url]) != 0


@pytest.fixture
def cutting_server(catalogue_emulator):
    """A real HTTP/1.0 server in front of the emulator that ends CSV answers cleanly, mid-row
    (a close-delimited body: no transport error tells the client it is short)."""
    import http.server
    import threading
    from urllib.parse import parse_qs

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            upstream = requests.post(catalogue_emulator.url.rstrip("/") + self.path, data=body, timeout=30,
                                     headers={"Content-Type": self.headers["Content-Type"]})
            content = upstream.content
            if parse_qs(body.decode()).get("FORMAT") == ["csv"]:
                content = content[:content.index(b"\r\n", 20_000) + 30]      # 30 bytes into a row
            self.send_response(200)
            self.send_header("Content-Type", upstream.headers["Content-Type"])
            self.end_headers()
            self.wfile.write(content)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for serve_forever's next poll: 0.5 s each time by default
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_result_ending_cleanly_mid_row_is_an_error(cutting_server, tmp_path):
    casda = CasdaClass(server=cutting_server)
    with pytest.raises(IncompleteResultError, match="mid-row"):
        casda.query_tap(ALL_ROWS, result_format="csv")
    with pytest.raises(IncompleteResultError, match="mid-row"):
        casda.query_tap(ALL_ROWS, output=tmp_path / "cut.parquet")
    assert list(tmp_path.iterdir()) == []


def test_async_csv_equals_sync(casda):
    query = f"{ALL_ROWS} WHERE dec_deg_cont > 0"
    later = casda.query_tap(query, result_format="csv", async_job=True)
    now = casda.query_tap(query, result_format="csv")
    assert len(later) == len(now) > 0 and list(later["component_id"]) == list(now["component_id"])


def test_parts_run_on_a_process_pool(casda, tmp_path, reference):
    import concurrent.futures
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
        result = casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=3, output=tmp_path / "p",
                                             executor=pool)
    assert result.rows == ROWS
    assert checksum(pyarrow.dataset.dataset(tmp_path / "p").to_table()) == reference


def test_the_emulator_command_line_takes_the_catalogue_size():
    from astroquery_casda_ext.emulator.__main__ import build_parser, options_from
    options = options_from(build_parser().parse_args(["--catalogue-rows", "1000000"]))
    assert options.catalogue_rows == 1_000_000
    with pytest.raises(ValueError, match="catalogue_rows"):
        CasdaEmulator(catalogue_rows=-1)


def test_an_abandoned_answer_does_not_hold_the_emulators_database(catalogue_emulator):
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": ALL_ROWS, "FORMAT": "csv"}
    with requests.post(catalogue_emulator.url + "casda_vo_tools/tap/sync", data=data, stream=True,
                       timeout=30) as response:
        assert len(response.raw.read(1000)) == 1000       # then hang up mid-answer
    counted = sync(catalogue_emulator, f"SELECT COUNT(*) AS n FROM {CATALOGUE}", "csv")
    assert counted.text == f"n\r\n{ROWS}\r\n"


def test_logged_in_streams_go_through_the_proxy_as_the_user(catalogue_emulator, tmp_path):
    casda = CasdaClass(server=catalogue_emulator.url)
    casda.login(username=catalogue_emulator.username, password=catalogue_emulator.password)
    before = len(catalogue_emulator.request_log)
    casda.query_tap(f"SELECT TOP 5 * FROM {CATALOGUE}", output=tmp_path / "mine.parquet")
    casda.query_tap_partitioned(ALL_ROWS, by="ra_deg_cont", parts=2, output=tmp_path / "mine")
    served = catalogue_emulator.request_log[before:]
    assert served and all(entry.path.startswith("/casda_vo_proxy/") for entry in served)
    assert {entry.user for entry in served} == {catalogue_emulator.username}


class _CountingBody(io.RawIOBase):
    """An answer body that remembers how far it has been read."""

    def __init__(self, data):
        self.data, self.position = data, 0

    def readable(self):
        return True

    def readinto(self, target):
        size = min(len(target), len(self.data) - self.position)
        target[:size] = self.data[self.position:self.position + size]
        self.position += size
        return size


@pytest.mark.parametrize("ahead", [2, 3])
def test_the_csv_reader_reads_only_a_few_blocks_ahead_of_the_rows_taken(ahead):
    """Unpaced, pyarrow's reader queues up to 32 blocks read ahead (memory that adds up when
    several parts stream at once); paced, a slow consumer holds it to ``ahead`` blocks."""
    schema = pyarrow.schema([("n", pyarrow.int64()), ("text", pyarrow.string())])
    lines = [b"%d,row number %d\r\n" % (index, index) for index in range(100_000)]
    parsed_until = np.cumsum([len(line) for line in lines])
    body, block, buffer = _CountingBody(b"".join(lines)), 1 << 14, 1 << 12
    paced = _PacedReader(body, buffer, ahead)
    taken, furthest = 0, 0
    try:
        for batch in read_casda_csv(paced, schema, block_size=block):
            paced.batch_done()
            taken += batch.num_rows
            time.sleep(0.002)        # a consumer slower than the reader (as Parquet writing is)
            furthest = max(furthest, body.position - int(parsed_until[taken - 1]))
    finally:
        paced.release()
    assert taken == len(lines)
    assert furthest <= (ahead + 1) * block + buffer       # unpaced: up to 32 blocks
