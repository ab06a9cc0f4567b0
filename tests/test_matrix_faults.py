"""Reliability matrix, faults: the whole client (the `CasdaClass` façade) against an
emulator that misbehaves.

Each endpoint class (TAP and SIA2 queries, DataLink, SODA job documents, downloads) sees
in turn a 503, a 429 with ``Retry-After``, a connection reset and a read timeout.  Where
the fault is transient the call completes; where it persists the call raises a specific
error saying what went wrong.  Jobs that linger in QUEUED and SUSPENDED are waited for,
a job that ends in ERROR or expires (410) is reported, and a corrupted file is fetched
again.  After every download the directory holds only verified files under their final
names (and ``.part`` files only where a resume is pending).
"""
import re
import time

import astropy.units as u
import pytest
import requests

from astroquery_casda_ext import CasdaClass, conf
from astroquery_casda_ext.checksum import checksum_of_file, parse_checksum
from astroquery_casda_ext.emulator import FaultRule
from astroquery_casda_ext.errors import (ChecksumMismatchError, DataLinkError, DownloadError,
                                         JobError, JobExpiredError, JobFailedError, ServiceError)
from astroquery_casda_ext.jobs import PollPolicy
from astroquery_casda_ext.transport import mount_api_retries

pytestmark = pytest.mark.matrix("faults")

#: Jobs that finish quickly, so that a test is about the fault and not the wait.
FAST_JOBS = (("QUEUED", 0.05), ("EXECUTING", 0.05))
#: Client read timeout while a fault is active, and the stall that trips it.
SHORT_TIMEOUT = 1
STALL = 1.5

FAULTS = {
    "503": dict(kind="status", status=503),
    "429 with Retry-After": dict(kind="status", status=429, retry_after=1),
    "connection reset": dict(kind="reset"),
    "read timeout": dict(kind="stall", delay=STALL),
}

#: What a persistent fault's error message must say, so the user knows what happened.
SAYS = {
    "503": r"503",
    "429 with Retry-After": r"429",
    "connection reset": r"(?i)reset|broken",
    "read timeout": r"(?i)timed out|timeout",
}


@pytest.fixture
def casda(emulator, fake_time):
    """A logged-in client with fast jobs and fast polling, whose API retries wait on the fake clock."""
    emulator.set_options(job_phases=FAST_JOBS)
    client = CasdaClass(server=emulator.url)
    mount_api_retries(client._session, sleep=fake_time.sleep, clock=fake_time.clock)
    client.login(emulator.username, password=emulator.password)
    with conf.set_temp("poll_first", 0.05), conf.set_temp("poll_interval", 1):
        yield client


def one_image(casda):
    return casda.query_sbid_images(609)[:1]


def assert_savedir_sound(savedir, *, resumable=()):
    """Every file under a final name matches its ``.checksum``; ``.part`` only where resumable."""
    for path in savedir.iterdir():
        if path.name.endswith(".part"):
            assert path.name[:-len(".part")] in resumable, f"{path.name} left behind"
        elif not path.name.endswith(".checksum") and path.name != "casda_manifest.ecsv":
            sidecar = path.with_name(path.name + ".checksum")
            assert sidecar.is_file(), f"{path.name} has no .checksum"
            assert checksum_of_file(path)[1] == parse_checksum(sidecar.read_text()), f"{path.name} unverified"


def data_files(savedir):
    return sorted(p.name for p in savedir.iterdir()
                  if not p.name.endswith((".checksum", ".part")) and p.name != "casda_manifest.ecsv")


# --- the endpoint classes ---------------------------------------------------------------------------

class Endpoint:
    """One class of requests: the path the fault strikes, the call that makes them, and
    the error a persistent fault must end in."""

    def __init__(self, path, error, methods=("GET",)):
        self.path, self.error, self.methods = path, error, methods

    def prepare(self, casda, emulator, tmp_path):
        """Whatever the call needs, done before the fault is injected."""
        return None

    def call(self, casda, prepared, tmp_path):
        raise NotImplementedError

    def check(self, result, prepared, tmp_path):
        """The call's result is complete and right."""

    def subject(self, prepared, emulator):
        """What an error message must name for the user to know what failed: the server."""
        return emulator.url.split("//")[1].rstrip("/")


class TapQuery(Endpoint):
    def call(self, casda, prepared, tmp_path):
        return casda.query_tap("SELECT TOP 5 obs_publisher_did FROM ivoa.obscore")

    def check(self, result, prepared, tmp_path):
        assert len(result) == 5 and all(result["obs_publisher_did"])


class Sia2Query(Endpoint):
    def call(self, casda, prepared, tmp_path):
        return casda.query_region("187.5 -45.0", radius=2 * u.deg, cache=False)

    def check(self, result, prepared, tmp_path):
        assert len(result) > 0 and "obs_publisher_did" in result.colnames


class DataLink(Endpoint):
    def prepare(self, casda, emulator, tmp_path):
        return one_image(casda)

    def call(self, casda, prepared, tmp_path):
        return casda.get_access_tokens(prepared)

    def check(self, result, prepared, tmp_path):
        assert [token.product_id for token in result.tokens] == list(prepared["obs_publisher_did"])


class JobDocument(Endpoint):
    def prepare(self, casda, emulator, tmp_path):
        return one_image(casda)

    def call(self, casda, prepared, tmp_path):
        return casda.stage_data(prepared)

    def check(self, result, prepared, tmp_path):
        assert len(result) == 2 * len(prepared)   # each file and its .checksum


class Download(Endpoint):
    def prepare(self, casda, emulator, tmp_path):
        return casda.stage_data(one_image(casda))

    def call(self, casda, prepared, tmp_path):
        return casda.download_files(prepared, savedir=tmp_path)

    def check(self, result, prepared, tmp_path):
        assert len(result) == len(prepared) and len(data_files(tmp_path)) == 1
        assert_savedir_sound(tmp_path)

    def subject(self, prepared, emulator):
        """A download error names the file that could not be had."""
        return next(url for url in prepared if not url.endswith(".checksum")).rsplit("/", 1)[-1]


ENDPOINTS = {
    "TAP query": TapQuery(r"/tap/sync$", ServiceError, methods=("GET", "POST")),
    "SIA2 query": Sia2Query(r"/sia2/query$", ServiceError),
    "DataLink": DataLink(r"/datalink/links$", DataLinkError),
    "job document": JobDocument(r"/data/async/[^/]+$", JobError),
    "download": Download(r"^/download/.*\.fits$", DownloadError),
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_transient_fault_is_absorbed(casda, emulator, tmp_path, endpoint, fault, fake_time):
    """One faulty answer, then the same request again: the call completes as if nothing happened."""
    endpoint, rule = ENDPOINTS[endpoint], FAULTS[fault]
    prepared = endpoint.prepare(casda, emulator, tmp_path)
    start = len(emulator.request_log)
    emulator.add_fault(FaultRule(endpoint.path, times=1, methods=endpoint.methods, **rule))
    started = time.monotonic()
    with conf.set_temp("timeout", SHORT_TIMEOUT):
        result = endpoint.call(casda, prepared, tmp_path)
    elapsed = time.monotonic() - started
    endpoint.check(result, prepared, tmp_path)
    assert not emulator.backend.faults.rules, "the fault struck"
    hits = [entry for entry in emulator.request_log[start:] if _matches(endpoint, entry)]
    assert len(hits) >= 2, "the faulty request was sent again"
    if rule.get("retry_after") and isinstance(endpoint, Download):
        assert elapsed >= rule["retry_after"], "Retry-After was honoured"   # the downloader's own clock
    elif rule.get("retry_after"):
        assert fake_time.sleeps == [rule["retry_after"]], "Retry-After was honoured"


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_persistent_fault_ends_in_a_specific_readable_error(casda, emulator, tmp_path, endpoint, fault):
    """A fault that does not go away: the endpoint's own error, saying what happened."""
    endpoint, rule = ENDPOINTS[endpoint], FAULTS[fault]
    prepared = endpoint.prepare(casda, emulator, tmp_path)
    emulator.add_fault(FaultRule(endpoint.path, methods=endpoint.methods, **rule))
    with conf.set_temp("timeout", SHORT_TIMEOUT), conf.set_temp("request_retries", 0), \
            conf.set_temp("download_retries", 0), pytest.raises(endpoint.error, match=SAYS[fault]) as info:
        endpoint.call(casda, prepared, tmp_path)
    message = str(info.value)
    assert "Traceback" not in message and len(message) < 1000
    assert endpoint.subject(prepared, emulator) in message, "the message names what failed"
    assert_savedir_sound(tmp_path)
    assert not data_files(tmp_path)


def _matches(endpoint, entry):
    return entry.method in endpoint.methods and re.search(endpoint.path, entry.path) is not None


def test_retries_are_bounded_and_then_reported(casda, emulator):
    """With request_retries=1 a server that keeps answering 503 is asked twice, then reported."""
    emulator.add_fault(FaultRule(r"/datalink/links$", "status", status=503))
    image = one_image(casda)
    start = len(emulator.request_log)
    with conf.set_temp("request_retries", 1), pytest.raises(DataLinkError, match="503"):
        casda.get_access_tokens(image)
    assert [entry.status for entry in emulator.request_log[start:]] == [503, 503]


def test_a_503_from_sia2_is_not_replayed_from_astroquerys_cache(emulator):
    """astroquery caches answers; a failure must not be served again once CASDA is back."""
    client = CasdaClass(server=emulator.url)
    position = "187.5 -45.0"   # cache=True, as astroquery users call it
    emulator.add_fault(FaultRule(r"/sia2/query$", "status", status=503))
    with conf.set_temp("request_retries", 0), pytest.raises(ServiceError, match="503"):
        client.query_region(position, radius=1.5 * u.deg)
    emulator.clear_faults()
    assert len(client.query_region(position, radius=1.5 * u.deg)) > 0


# --- job creation: only safe repetitions ------------------------------------------------------------

CREATE = r"/data/async$"


def _creations(emulator, start):
    return [entry for entry in emulator.request_log[start:]
            if entry.method == "POST" and entry.path.rstrip("/").endswith("/data/async")]


@pytest.mark.parametrize("status", [503, 429])
def test_job_creation_refused_with_503_or_429_is_sent_again(casda, emulator, tmp_path, status):
    """The server did not act on the request: sending it again creates exactly one job."""
    image = one_image(casda)
    start = len(emulator.request_log)
    emulator.add_fault(FaultRule(CREATE, "status", status=status, retry_after=1 if status == 429 else None,
                                 times=1, methods=("POST",)))
    urls = casda.stage_data(image)
    assert len(urls) == 2
    assert [entry.status for entry in _creations(emulator, start)] == [status, 303]
    assert len(casda.download_files(urls, savedir=tmp_path)) == 2
    assert_savedir_sound(tmp_path)


def test_a_connection_reset_after_creating_a_job_is_not_sent_again(casda, emulator):
    """The job may exist already: the client reports it rather than risk a duplicate job."""
    image = one_image(casda)
    start = len(emulator.request_log)
    emulator.add_fault(FaultRule(CREATE, "reset", times=1, methods=("POST",)))
    with pytest.raises(JobError, match="(?i)creating the SODA job"):
        casda.stage_data(image)
    assert len(_creations(emulator, start)) == 1


def test_an_async_tap_job_survives_faults_while_it_is_followed(casda, emulator):
    emulator.add_fault(FaultRule(r"/tap/async/[^/]+$", "status", status=503, times=1, methods=("GET",)))
    emulator.add_fault(FaultRule(r"/tap/async/[^/]+/results/", "reset", times=1, methods=("GET",)))
    table = casda.query_tap("SELECT TOP 7 obs_publisher_did FROM ivoa.obscore", async_job=True)
    assert len(table) == 7
    assert not emulator.backend.faults.rules


# --- jobs that linger, fail or expire ---------------------------------------------------------------

def test_a_job_lingering_in_queued_and_suspended_is_waited_for(casda, emulator, tmp_path, caplog):
    """Staging from tape: long QUEUED and SUSPENDED phases, then the job proceeds and completes."""
    emulator.set_options(job_phases=(("QUEUED", 0.6), ("SUSPENDED", 0.6), ("EXECUTING", 0.05)))
    image = one_image(casda)
    start = len(emulator.request_log)
    started = time.monotonic()
    with caplog.at_level("INFO"):
        urls = casda.stage_data(image, verbose=True)
    assert time.monotonic() - started >= 1.2 and len(urls) == 2
    reported = [phase for record in caplog.records for phase in ("QUEUED", "SUSPENDED", "COMPLETED")
                if f": {phase} after" in record.getMessage()]
    assert reported == ["QUEUED", "SUSPENDED", "COMPLETED"]
    polls = [entry for entry in emulator.request_log[start:]
             if entry.method == "GET" and re.search(r"/data/async/[^/]+$", entry.path)]
    assert len(polls) >= 4, "the job was looked at all through QUEUED and SUSPENDED"
    casda.download_files(urls, savedir=tmp_path)
    assert_savedir_sound(tmp_path)
    assert len(data_files(tmp_path)) == 1


def test_a_job_that_ends_in_error_is_reported_with_the_servers_summary(casda, emulator, tmp_path):
    """A cutout that matches no data: CASDA ends the job in ERROR; nothing is downloaded."""
    image = one_image(casda)
    with pytest.raises(JobFailedError, match="ERROR") as info:
        casda.cutout(image, coordinates="10.0 10.0", radius=1 * u.arcmin)
    error = info.value
    assert error.phase == "ERROR" and error.server_message and error.server_message in str(error)
    assert error.job_url and error.job_url in str(error)
    assert list(tmp_path.iterdir()) == []


def test_an_expired_job_is_reported_as_such_and_nothing_is_half_downloaded(casda, emulator, tmp_path):
    emulator.set_options(job_expiry_seconds=0.5)
    image = one_image(casda)
    [job] = casda.stage_data(image, wait=False)
    assert job.wait(PollPolicy(first=0.02, factor=1.0, cap=0.02)) == "COMPLETED"
    urls = job.result_urls()
    time.sleep(0.6)
    with conf.set_temp("download_retries", 1), pytest.raises(DownloadError, match="410"):
        casda.download_files(urls, savedir=tmp_path)
    assert data_files(tmp_path) == [] and not list(tmp_path.glob("*.part"))
    with pytest.raises(JobExpiredError, match="stage the data again"):
        casda.load_job(job.url)


# --- corrupted and interrupted files ---------------------------------------------------------------

DATA = r"^/download/.*\.fits$"


@pytest.mark.parametrize("fault", ["503", "connection reset"])
def test_a_checksum_sidecar_that_fails_once_is_fetched_again(casda, emulator, tmp_path, fault):
    urls = casda.stage_data(one_image(casda))
    emulator.add_fault(FaultRule(r"^/download/.*\.checksum$", times=1, methods=("GET",), **FAULTS[fault]))
    manifest = casda.download(urls, tmp_path)
    assert list(manifest.table["checksum_status"]) == ["verified"]
    assert not emulator.backend.faults.rules
    assert_savedir_sound(tmp_path)


def test_a_corrupted_file_is_fetched_again_and_verified(casda, emulator, tmp_path):
    urls = casda.stage_data(one_image(casda))
    emulator.add_fault(FaultRule(DATA, "corrupt", after_bytes=1000, times=1, methods=("GET",)))
    manifest = casda.download(urls, tmp_path)
    assert list(manifest.table["checksum_status"]) == ["verified"]
    assert not emulator.backend.faults.rules
    assert_savedir_sound(tmp_path)


def test_a_file_corrupted_every_time_is_deleted_and_named(casda, emulator, tmp_path):
    urls = casda.stage_data(one_image(casda))
    emulator.add_fault(FaultRule(DATA, "corrupt", after_bytes=1000, methods=("GET",)))
    with pytest.raises(ChecksumMismatchError, match="did not match") as info:
        casda.download_files(urls, savedir=tmp_path)
    assert urls[0].rsplit("/", 1)[-1] in str(info.value)
    assert data_files(tmp_path) == [] and not list(tmp_path.glob("*.part"))


def test_an_interrupted_download_keeps_its_part_and_the_next_call_resumes_it(casda, emulator, tmp_path):
    """Resets that outlast the retries: the .part stays for the next call, which sends only the rest."""
    urls = casda.stage_data(one_image(casda))
    data_url, checksum_url = sorted(urls, key=lambda url: url.endswith(".checksum"))
    name = data_url.rsplit("/", 1)[-1]
    size = parse_checksum(requests.get(checksum_url, timeout=10).text).size
    emulator.add_fault(FaultRule(DATA, "reset", after_bytes=size // 3, methods=("GET",)))
    with conf.set_temp("download_retries", 1), pytest.raises(DownloadError, match=name):
        casda.download_files(urls, savedir=tmp_path)
    part = tmp_path / (name + ".part")
    kept = part.stat().st_size
    assert 0 < kept < size and part.read_bytes() == emulator.holdings.product(
        one_image(casda)["obs_publisher_did"][0]).path.read_bytes()[:kept]
    assert_savedir_sound(tmp_path, resumable={name})
    emulator.clear_faults()
    start = len(emulator.request_log)
    casda.download_files(urls, savedir=tmp_path)
    sent = sum(entry.bytes_sent for entry in emulator.request_log[start:] if entry.path.endswith(name))
    assert sent == size - kept, "only the missing bytes were sent"
    assert_savedir_sound(tmp_path)
    assert data_files(tmp_path) == [name]
