"""The one retry layer (issue 9), over real HTTP against the emulator and closed ports.

Every retry happens in `ApiRetryAdapter`, under one policy and one time budget per call;
nothing above it loops again.  These tests count requests (in the emulator's log) and
connection attempts, never seconds: the adapter sleeps on the injected fake clock.
"""
import re
import socket

import pytest
import requests
import urllib3.util.connection

from astroquery_casda_ext import CasdaClass, conf
from astroquery_casda_ext.emulator import FaultRule
from astroquery_casda_ext.errors import (DataLinkError, JobError, JobSubmissionError, ServiceError)
from astroquery_casda_ext.jobs import ACTIVE_PHASES, SodaJob, parse_job_document
from astroquery_casda_ext.transport import RetryPolicy, RetryState, mount_api_retries

#: ``rand`` for the adapter: no jitter, so the backoffs are exactly 0.5, 1, 2, 4, 8 s.
NO_JITTER = 0.5


def on_fake_clock(client, fake_time):
    """The client's retry adapter, sleeping on the test's fake clock."""
    mount_api_retries(client._session, sleep=fake_time.sleep, clock=fake_time.clock, rand=lambda: NO_JITTER)
    return client


@pytest.fixture
def connections(monkeypatch):
    """(host, port) of every TCP connection urllib3 tries to open."""
    tried = []
    connect = urllib3.util.connection.create_connection

    def counting(address, *args, **kwargs):
        tried.append(address[:2])
        return connect(address, *args, **kwargs)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", counting)
    return tried


# --- the policy -----------------------------------------------------------------------------------

def test_a_refused_connection_gets_a_shorter_budget_than_other_failures(fake_time):
    policy = RetryPolicy(jitter=0, budget=30, refused_budget=2)
    state = RetryState(policy, sleep=fake_time.sleep, clock=fake_time.clock)
    assert state.wait(within=policy.refused_budget) and state.wait(within=policy.refused_budget)
    assert not state.wait(within=policy.refused_budget)          # 0.5 + 1 + 2 > 2
    assert [state.wait() for _ in range(4)] == [True, True, True, False]   # other failures: 5 retries in all
    assert fake_time.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_the_api_policy_comes_from_the_configuration():
    with conf.set_temp("request_retries", 2), conf.set_temp("request_budget", 12):
        policy = RetryPolicy.for_api()
    assert (policy.total, policy.budget, policy.status_forcelist) == (2, 12.0, (429, 502, 503, 504))
    with conf.set_temp("request_budget", 0):
        assert RetryPolicy.for_api().budget is None


# --- failures that end in seconds ------------------------------------------------------------------

CALLS = {
    "TAP query": (lambda c: c.query_tap("SELECT TOP 1 * FROM ivoa.obscore"), ServiceError, r"/tap/sync$"),
    "SIA2 query": (lambda c: c.query_region("187.5 -45.0", cache=False), ServiceError, r"/sia2/query$"),
}


@pytest.mark.parametrize("call", CALLS)
def test_a_refused_port_fails_after_three_attempts(call, closed_port, connections, fake_time):
    """Nothing listens: tried within ``refused_budget`` (2 s: at 0, 0.5 and 1.5 s), then reported."""
    make_call, error, _ = CALLS[call]
    client = on_fake_clock(CasdaClass(server=f"http://127.0.0.1:{closed_port}/"), fake_time)
    with pytest.raises(error, match="(?i)refused") as info:
        make_call(client)
    assert f"127.0.0.1:{closed_port}" in str(info.value)
    assert connections == [("127.0.0.1", closed_port)] * 3
    assert fake_time.sleeps == [0.5, 1.0]


@pytest.mark.parametrize("call", CALLS)
def test_a_persistent_503_fails_within_the_budget(call, emulator, fake_time):
    make_call, error, path = CALLS[call]
    client = on_fake_clock(CasdaClass(server=emulator.url), fake_time)
    emulator.add_fault(FaultRule(path, "status", status=503, methods=("GET", "POST")))
    with pytest.raises(error, match="503") as info:
        make_call(client)
    assert "FAILURE: Service Unavailable" in str(info.value), "the server's message"
    hits = [entry for entry in emulator.request_log if re.search(path, entry.path)]
    assert [entry.status for entry in hits] == [503] * 6        # request_retries = 5, one call
    assert sum(fake_time.sleeps) <= conf.request_budget


def test_a_smaller_budget_means_fewer_requests(emulator, fake_time):
    client = on_fake_clock(CasdaClass(server=emulator.url), fake_time)
    emulator.add_fault(FaultRule(r"/tap/sync$", "status", status=503, methods=("POST",)))
    with conf.set_temp("request_budget", 3), pytest.raises(ServiceError, match="503"):
        client.query_tap("SELECT TOP 1 * FROM ivoa.obscore")
    assert len([e for e in emulator.request_log if e.path.endswith("/tap/sync")]) == 3   # 0.5 + 1 <= 3 < + 2
    assert fake_time.sleeps == [0.5, 1.0]


def test_a_retry_after_beyond_the_budget_is_not_waited_for(emulator, fake_time):
    client = on_fake_clock(CasdaClass(server=emulator.url), fake_time)
    emulator.add_fault(FaultRule(r"/sia2/query$", "status", status=429, retry_after=60))
    with pytest.raises(ServiceError, match="429"):
        client.query_region("187.5 -45.0", cache=False)
    assert fake_time.sleeps == [] and len([e for e in emulator.request_log if "sia2" in e.path]) == 1


def test_a_429_with_retry_after_is_honoured(emulator, fake_time):
    client = on_fake_clock(CasdaClass(server=emulator.url), fake_time)
    emulator.add_fault(FaultRule(r"/sia2/query$", "status", status=429, retry_after=3, times=2))
    assert len(client.query_region("187.5 -45.0", radius="2 deg", cache=False)) > 0
    assert fake_time.sleeps == [3.0, 3.0]


def test_a_500_is_not_sent_again(emulator, fake_time):
    """CASDA's own error fails the same way twice: reported at once with its message."""
    client = on_fake_clock(CasdaClass(server=emulator.url), fake_time)
    emulator.add_fault(FaultRule(r"/sia2/query$", "status", status=500))
    with pytest.raises(ServiceError, match="500"):
        client.query_region("187.5 -45.0", cache=False)
    assert fake_time.sleeps == [] and len([e for e in emulator.request_log if "sia2" in e.path]) == 1


@pytest.fixture
def casda(emulator, fake_time):
    """A logged-in client on the fake clock, with jobs of one product each."""
    emulator.set_options(job_phases=(("QUEUED", 0.05), ("EXECUTING", 0.05)))
    client = CasdaClass(server=emulator.url)
    client.login(emulator.username, password=emulator.password)
    with conf.set_temp("poll_first", 0.05), conf.set_temp("poll_interval", 0.2), \
            conf.set_temp("job_batch_size", 1):
        yield on_fake_clock(client, fake_time)


def test_a_persistent_503_while_polling_ends_with_the_job_url_and_how_to_resume(casda, emulator):
    image = casda.query_sbid_images(609)
    [job] = casda.stage_data(image, wait=False)
    emulator.add_fault(FaultRule(r"/data/async/[^/]+$", "status", status=503, methods=("GET",)))
    start = len(emulator.request_log)
    with pytest.raises(JobError, match="503") as info:
        job.wait()
    error = info.value
    assert type(error).__name__ == "JobError" and isinstance(error, JobError)    # the plain kind...
    assert isinstance(error, requests.HTTPError)      # ...made from an HTTP 503, as raise_for_status would
    assert error.job_url == job.url and error.job_urls == [job.url]
    assert f"Casda.load_job('{job.url}')" in str(error)
    polls = [entry for entry in emulator.request_log[start:] if entry.path.endswith(job.job_id)]
    assert [entry.status for entry in polls] == [503] * 6      # one look, five retries: no second loop
    emulator.clear_faults()
    assert casda.load_job(job.url).wait() == "COMPLETED"        # the resume the message names works


# --- jobs are never lost -------------------------------------------------------------------------

def _created_jobs(emulator):
    """The job URLs the emulator handed out, from its request log (the client reads each one)."""
    paths = {entry.path for entry in emulator.request_log if re.search(r"/data/async/[^/]+$", entry.path)}
    return sorted(emulator.url.rstrip("/") + path for path in paths)


def _phase(url):
    return parse_job_document(requests.get(url, timeout=10).content).phase


@pytest.fixture
def five_products(casda):
    return casda.query_region("187.5 -45.0", radius="2 deg", cache=False)[:5]


@pytest.fixture
def third_creation_fails(monkeypatch, emulator):
    """The 3rd SODA job creation of the test is answered with a 500."""
    create, calls = SodaJob.create.__func__, []

    def counting(cls, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            emulator.add_fault(FaultRule(r"/data/async$", "status", status=500, methods=("POST",), times=1))
        return create(cls, *args, **kwargs)
    monkeypatch.setattr(SodaJob, "create", classmethod(counting))
    return calls


def test_a_failure_creating_the_third_of_five_jobs_aborts_the_two_made(casda, emulator, five_products,
                                                                       third_creation_fails, caplog):
    assert len(five_products) == 5
    # The jobs made must still be running when the abort comes, however slow the machine is
    # (with the fixture's 0.1 s jobs, a busy machine let them complete first).
    emulator.set_options(job_phases=(("QUEUED", 0.05), ("EXECUTING", 600)))
    with caplog.at_level("INFO"), pytest.raises(JobSubmissionError, match="job 3 of 5") as info:
        casda.stage_data(five_products)
    created = _created_jobs(emulator)
    assert len(created) == 2 and sorted(info.value.job_urls) == created
    assert [_phase(url) for url in created] == ["ABORTED", "ABORTED"]
    assert not [url for url in created if _phase(url) in ACTIVE_PHASES], "no job left running"
    assert "aborted" in str(info.value) and "HTTP 500" in str(info.value)
    logged = caplog.text
    assert all(url in logged for url in created), "each job URL was logged the moment it existed"


def test_keep_hands_back_every_job_made_before_the_failure(casda, emulator, five_products,
                                                           third_creation_fails):
    with pytest.raises(JobSubmissionError, match="keep running") as info:
        casda.stage_data(five_products, on_error="keep")
    created = _created_jobs(emulator)
    assert sorted(info.value.job_urls) == created and len(created) == 2
    assert [job.url for job in info.value.jobs] == info.value.job_urls
    assert all(_phase(url) != "ABORTED" for url in created)
    assert [casda.load_job(url).wait() for url in info.value.job_urls] == ["COMPLETED", "COMPLETED"]


def test_on_error_is_checked_before_anything_is_sent(casda, emulator, five_products):
    start = len(emulator.request_log)
    with pytest.raises(ValueError, match="on_error"):
        casda.stage_data(five_products, on_error="ignore")
    assert len(emulator.request_log) == start


def test_several_jobs_are_waited_for_together(casda, emulator, five_products):
    """Five jobs, one loop: each round looks at every job still running, in turn."""
    emulator.set_options(job_progression="polls")   # one phase per look
    assert len(casda.stage_data(five_products)) == 10
    log = emulator.request_log
    last_run = max(index for index, entry in enumerate(log) if entry.path.endswith("/phase"))
    looks = [entry.path.rsplit("/", 1)[-1] for entry in log[last_run + 1:]
             if entry.method == "GET" and re.search(r"/data/async/[^/]+$", entry.path)]
    assert len(set(looks[:5])) == 5 and looks[5:10] == looks[:5], "round after round, not job after job"


def test_datalink_503_is_a_public_error_after_one_layer_of_retries(casda, emulator, fake_time):
    emulator.add_fault(FaultRule(r"/datalink/links$", "status", status=503))
    start = len(emulator.request_log)
    with pytest.raises(DataLinkError, match="503"):
        casda.get_access_tokens(casda.query_sbid_images(609))
    assert len([e for e in emulator.request_log[start:] if "datalink" in e.path]) == 6


def test_an_unknown_host_is_looked_up_once(monkeypatch, fake_time):
    """A DNS failure fails the same way every time: raised at once, never retried."""
    lookups = []

    def no_such_host(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    client = on_fake_clock(CasdaClass(server="https://casda.invalid/"), fake_time)
    with pytest.raises(ServiceError, match="host name not found"):
        client.query_tap("SELECT TOP 1 * FROM ivoa.obscore")
    assert lookups == ["casda.invalid"] and fake_time.sleeps == []


def test_a_job_that_cannot_be_started_is_aborted_with_the_rest(casda, emulator, five_products):
    emulator.add_fault(FaultRule(r"/phase$", "status", status=500, methods=("POST",), times=1))
    with pytest.raises(JobSubmissionError, match="job 1 of 5 could not be started") as info:
        casda.stage_data(five_products)
    [created] = _created_jobs(emulator)
    assert info.value.job_urls == [created] and _phase(created) == "ABORTED"
    assert "resume it with" not in str(info.value), "an aborted job is not offered for resuming"
