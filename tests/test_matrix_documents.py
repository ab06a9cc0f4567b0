"""Every document and every TAP stream is bounded: in bytes (decoded), in time, in rows, and read
with its completion status wherever the server put it.

Over real HTTP on 127.0.0.1: the emulator's own fault injection (``slow``: a trickle,
``endless``: a body without end) where it can make the attack, and `hostile_front.HostileFront`
in front of it where it cannot (gzip bombs, XML entity bombs, HTML pages, an ERROR after the
table, rows without end).  Each test asserts what the call raised or returned, and in how long.
"""
import time
import tracemalloc
import warnings

import astropy.units as u
import pytest

from astroquery_casda_ext import CasdaClass, conf
from astroquery_casda_ext.emulator import FaultRule
from astroquery_casda_ext.errors import (DataLinkError, IncompleteResultError, IncompleteResultWarning, JobError,
                                         QueryError, ServiceError)
from astroquery_casda_ext.jobs import PollPolicy

from tests.hostile_front import HostileFront, endless, error_after_table, gzip_bomb, html_page, trickle, xml_bomb

#: Fast jobs, so that a test is about its attack and not the wait.
FAST_JOBS = (("QUEUED", 0.05), ("EXECUTING", 0.05))
QUERY = "SELECT TOP 5 obs_publisher_did, obs_id FROM ivoa.obscore"
#: Small bounds for the tests (the defaults are 64 MiB and 1 GiB).
DOCUMENT_BOUND = 1 << 20
TABLE_BOUND = 4 << 20
BUDGET = 1.0


@pytest.fixture
def bounds():
    with conf.set_temp("document_max_bytes", DOCUMENT_BOUND), conf.set_temp("table_max_bytes", TABLE_BOUND), \
            conf.set_temp("request_budget", BUDGET), conf.set_temp("request_retries", 0), \
            conf.set_temp("download_grace", 0.5), conf.set_temp("download_min_rate", 2000), \
            conf.set_temp("poll_first", 0.05), conf.set_temp("poll_interval", 1), conf.set_temp("timeout", 5):
        yield


@pytest.fixture
def front(emulator):
    emulator.set_options(job_phases=FAST_JOBS)
    with HostileFront(emulator.url) as hostile:
        yield hostile


def client(server, emulator, login=True):
    casda = CasdaClass(server=server)
    if login:
        casda.login(emulator.username, password=emulator.password)
    return casda


def one_image(casda):
    return casda.query_sbid_images(609)[:1]


# --- the document types, and the call that reads each ---------------------------------------------

class Doc:
    """One document type: the request that fetches it, the call that reads it, its error."""

    def __init__(self, method, path, error, table=False):
        self.method, self.path, self.error, self.table = method, path, error, table

    def prepare(self, casda):
        return None

    def call(self, casda, prepared):
        raise NotImplementedError


class TapTable(Doc):
    def call(self, casda, prepared):
        return casda.query_tap(QUERY)


class TapMetadata(Doc):
    def call(self, casda, prepared):
        return casda.list_columns("ivoa.obscore")


class TapJobDocument(Doc):
    def call(self, casda, prepared):
        return casda.query_tap(QUERY, async_job=True)


class Sia2(Doc):
    def call(self, casda, prepared):
        return casda.query_region("187.5 -45.0", radius=2 * u.deg, cache=False)


class DataLink(Doc):
    def prepare(self, casda):
        return one_image(casda)

    def call(self, casda, prepared):
        return casda.get_access_tokens(prepared)


class SodaJobDocument(Doc):
    def prepare(self, casda):
        return one_image(casda)

    def call(self, casda, prepared):
        return casda.stage_data(prepared)


class Availability(Doc):
    def call(self, casda, prepared):
        return casda.login(prepared[0], password=prepared[1])


DOCUMENTS = {
    "TAP table": TapTable("POST", r"/tap/sync$", ServiceError, table=True),
    "TAP metadata": TapMetadata("POST", r"/tap/sync$", ServiceError, table=True),
    "TAP job document": TapJobDocument("GET", r"/tap/async/[^/]+$", ServiceError),
    "SIA2": Sia2("GET", r"/sia2/query$", ServiceError, table=True),
    "DataLink": DataLink("GET", r"/datalink/links$", DataLinkError),
    "SODA job document": SodaJobDocument("GET", r"/data/async/[^/]+$", JobError),
    "availability": Availability("GET", r"/tap/availability$", ServiceError, table=True),
}


def _prepared(doc, casda, emulator):
    if isinstance(doc, Availability):
        return (emulator.username, emulator.password)
    return doc.prepare(casda)


def _bound_named(doc):
    return "conf.table_max_bytes" if doc.table else "conf.document_max_bytes"


# --- gzip bombs -------------------------------------------------------------------------------------

@pytest.mark.matrix("security")
@pytest.mark.parametrize("name", DOCUMENTS)
def test_a_gzip_bomb_stops_at_the_decoded_byte_bound(front, emulator, bounds, name):
    """A 3 MB gzip body that decodes to 3 GB: the read stops at the bound, memory stays small."""
    doc = DOCUMENTS[name]
    casda = client(front.url, emulator, login=not isinstance(doc, Availability))
    prepared = _prepared(doc, casda, emulator)
    front.attack(doc.method, doc.path, gzip_bomb(3 << 30))
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(doc.error) as info:
            doc.call(casda, prepared)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert front.url.split("//")[1].rstrip("/") in message, "the message names the URL"
    assert "once decoded" in message and _bound_named(doc) in message
    assert peak < 4 * (TABLE_BOUND if doc.table else DOCUMENT_BOUND) + (16 << 20), f"peak {peak:,} bytes"
    assert elapsed < 10


@pytest.mark.matrix("security")
def test_a_gzip_bomb_as_an_error_body_costs_no_more_than_its_first_64_kib(front, emulator, bounds):
    casda = client(front.url, emulator)
    image = one_image(casda)
    front.attack("POST", r"/data/async$", gzip_bomb(3 << 30, status=500, content_type="text/plain"))
    tracemalloc.start()
    try:
        with pytest.raises(JobError, match="HTTP 500") as info:
            casda.stage_data(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "/data/async" in str(info.value) and len(str(info.value)) < 1000
    assert peak < 16 << 20


# --- trickling and endless bodies -------------------------------------------------------------------

@pytest.mark.matrix("faults")
@pytest.mark.parametrize("name", DOCUMENTS)
def test_a_trickling_document_fails_within_its_budget(emulator, bounds, name):
    """The emulator sends the document at 20 bytes per second: the call fails in seconds, naming
    the URL and the budget (documents) or the minimum rate (tables)."""
    doc = DOCUMENTS[name]
    emulator.set_options(job_phases=FAST_JOBS)
    casda = client(emulator.url, emulator, login=not isinstance(doc, Availability))
    prepared = _prepared(doc, casda, emulator)
    emulator.add_fault(FaultRule(doc.path, kind="slow", rate=20, methods=(doc.method,)))
    started = time.monotonic()
    with pytest.raises(doc.error) as info:
        doc.call(casda, prepared)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert emulator.url.split("//")[1].rstrip("/") in message
    said = "below the minimum rate" if doc.table else f"past the budget of {BUDGET:g} s"
    assert said in message
    assert elapsed < BUDGET + 2.5


@pytest.mark.matrix("faults")
@pytest.mark.parametrize("name", DOCUMENTS)
def test_an_endless_document_stops_at_the_byte_bound(emulator, bounds, name):
    doc = DOCUMENTS[name]
    emulator.set_options(job_phases=FAST_JOBS)
    casda = client(emulator.url, emulator, login=not isinstance(doc, Availability))
    prepared = _prepared(doc, casda, emulator)
    emulator.add_fault(FaultRule(doc.path, kind="endless", methods=(doc.method,)))
    started = time.monotonic()
    with conf.set_temp("request_budget", 30), pytest.raises(doc.error) as info:
        doc.call(casda, prepared)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert emulator.url.split("//")[1].rstrip("/") in message and _bound_named(doc) in message
    assert elapsed < 10


@pytest.mark.matrix("faults")
@pytest.mark.parametrize("when", ["while waiting", "when created"])
def test_a_trickling_job_document_does_not_outlive_job_timeout(emulator, bounds, when):
    """request_budget is 30 s, job_timeout 1 s: each look at the job is bounded by the wait's time left
    (and the first look, when the job is made, by job_timeout)."""
    emulator.set_options(job_phases=(("QUEUED", 30.0),))
    casda = client(emulator.url, emulator)
    image = one_image(casda)
    jobs = casda.stage_data(image, wait=False) if when == "while waiting" else None
    emulator.add_fault(FaultRule(r"/data/async/[^/]+$", kind="slow", rate=20, methods=("GET",)))
    started = time.monotonic()
    with conf.set_temp("request_budget", 30), conf.set_temp("job_timeout", 1.0), \
            pytest.raises(JobError) as info:
        if jobs:
            jobs[0].wait(PollPolicy.from_conf())
        else:
            casda.stage_data(image)
    elapsed = time.monotonic() - started
    assert "/data/async/" in str(info.value) and "budget of 1 s" in str(info.value)
    assert elapsed < 1.0 + 2.5


# --- what answers a metadata request ----------------------------------------------------------------

@pytest.mark.matrix("security")
@pytest.mark.parametrize("call", ["list_tables", "csv metadata", "DataLink", "job document"])
def test_html_where_a_document_was_asked_for_is_a_clear_error_with_the_pages_text(front, emulator, bounds, call):
    casda = client(front.url, emulator)
    image = one_image(casda) if call in ("DataLink", "job document") else None
    paths = {"list_tables": ("POST", r"/tap/sync$"), "csv metadata": ("POST", r"/tap/sync$"),
             "DataLink": ("GET", r"/datalink/links$"), "job document": ("GET", r"/data/async/[^/]+$")}
    front.attack(*paths[call], html_page())
    started = time.monotonic()
    with pytest.raises((ServiceError, JobError)) as info:
        {"list_tables": lambda: casda.list_tables(),
         "csv metadata": lambda: casda.query_tap(QUERY, result_format="csv"),
         "DataLink": lambda: casda.get_access_tokens(image),
         "job document": lambda: casda.stage_data(image)}[call]()
    message = str(info.value)
    assert "text/html" in message and "Please sign in to continue" in message
    assert front.url.split("//")[1].rstrip("/") in message and "Traceback" not in message
    assert time.monotonic() - started < 5


@pytest.mark.matrix("security")
@pytest.mark.parametrize("name", ["TAP table", "TAP metadata", "TAP job document", "DataLink", "SODA job document"])
def test_an_xml_entity_bomb_is_refused_unread(front, emulator, bounds, name):
    doc = DOCUMENTS[name]
    casda = client(front.url, emulator)
    prepared = doc.prepare(casda)
    front.attack(doc.method, doc.path, xml_bomb())
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(doc.error, match="declares XML entities") as info:
            doc.call(casda, prepared)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert front.url.split("//")[1].rstrip("/") in str(info.value)
    assert peak < 16 << 20 and time.monotonic() - started < 5


# --- completion status wherever it is ---------------------------------------------------------------

@pytest.mark.matrix("faults")
@pytest.mark.parametrize("how", ["table", "votable table", "output .xml"])
def test_an_error_after_the_table_is_an_error_not_a_complete_result(front, emulator, bounds, tmp_path, how):
    casda = client(front.url, emulator, login=False)
    front.attack("POST", r"/tap/sync$", error_after_table("Query timeout after 1200 rows"))
    output = tmp_path / "result.xml"
    with pytest.raises(QueryError, match="Query timeout after 1200 rows") as info:
        if how == "table":
            casda.query_tap(QUERY)
        elif how == "votable table":
            casda.query_tap(QUERY, result_format="votable")
        else:
            casda.query_tap(QUERY, output=output)
    assert info.value.server_message == "Query timeout after 1200 rows"
    assert list(tmp_path.iterdir()) == [], "nothing is kept of a failed query"


# --- TAP streams: bounded rows, pacing ---------------------------------------------------------------

def _endless_csv(handler, upstream):
    if b"FORMAT=csv" not in handler.body:
        handler.relay(*upstream())       # the metadata (MAXREC=0) comes from the emulator
        handler.close_connection = False
        return
    endless(b"obs_publisher_did,obs_id\r\n", b"cube-1,609\r\n", "text/csv")(handler, upstream)


_VOTABLE_HEAD = (b'<?xml version="1.0"?><VOTABLE version="1.3" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">'
                 b'<RESOURCE type="results"><INFO name="QUERY_STATUS" value="OK"/><TABLE>'
                 b'<FIELD name="obs_publisher_did" datatype="char" arraysize="*"/><DATA><TABLEDATA>')


@pytest.mark.matrix("faults")
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_endless_tap_stream_stops_at_maxrec_plus_one(front, emulator, bounds, tmp_path, suffix):
    casda = client(front.url, emulator, login=False)
    front.attack("POST", r"/tap/sync$", _endless_csv)
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = casda.query_tap("SELECT obs_publisher_did, obs_id FROM ivoa.obscore", maxrec=1000,
                                 output=tmp_path / f"rows{suffix}")
    assert time.monotonic() - started < 10
    assert result.rows == 1000 and result.complete is False
    assert any(issubclass(item.category, IncompleteResultWarning) for item in caught)
    # what is read is the parser's read-ahead (a few 1 MiB blocks), not the endless answer
    assert result.bytes_read < 16 << 20, "the endless answer was not read on"


@pytest.mark.matrix("faults")
def test_an_endless_votable_stream_stops_past_maxrec_and_keeps_nothing(front, emulator, bounds, tmp_path):
    casda = client(front.url, emulator, login=False)
    front.attack("POST", r"/tap/sync$", endless(_VOTABLE_HEAD, b"<TR><TD>cube-1</TD></TR>\n",
                                                "application/x-votable+xml"))
    started = time.monotonic()
    with pytest.raises(IncompleteResultError, match="past MAXREC=1,000"):
        casda.query_tap(QUERY, maxrec=1000, output=tmp_path / "rows.xml")
    assert time.monotonic() - started < 10 and list(tmp_path.iterdir()) == []


@pytest.mark.matrix("faults")
@pytest.mark.parametrize("suffix", [".xml", ".csv"])
def test_a_trickling_tap_stream_fails_at_the_minimum_rate(emulator, bounds, tmp_path, suffix):
    """The streams' pacing rule (download_min_rate after download_grace), the downloads' own."""
    casda = client(emulator.url, emulator, login=False)
    emulator.add_fault(FaultRule(r"/tap/sync$", kind="slow", rate=50, methods=("POST",)))
    started = time.monotonic()
    with pytest.raises(ServiceError, match="below the minimum rate of 2.0 kB/s") as info:
        casda.query_tap(QUERY, output=tmp_path / f"rows{suffix}")
    assert emulator.url.split("//")[1].rstrip("/") in str(info.value)
    assert time.monotonic() - started < 4 and list(tmp_path.iterdir()) == []


@pytest.mark.matrix("faults")
def test_a_trickle_through_the_front_also_ends(front, emulator, bounds):
    """A document sent one byte at a time by a server that is not the emulator."""
    casda = client(front.url, emulator, login=False)
    front.attack("GET", r"/tap/availability$", trickle(0.1))
    started = time.monotonic()
    with pytest.raises(ServiceError, match="minimum rate"):
        casda.login(emulator.username, password=emulator.password)
    assert time.monotonic() - started < 4
