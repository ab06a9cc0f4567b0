"""Tests of download.py: the pure parts (policy, names, planning, manifest), then whole
downloads against the emulator over HTTP (see also test_download_faults.py and
test_download_crash.py)."""
import os
import pickle
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import requests
import responses

from astroquery_casda_ext import conf
from astroquery_casda_ext.access import DataLinkClient
from astroquery_casda_ext.checksum import Checksum
from astroquery_casda_ext.credentials import Credentials, ProxyAuth
from astroquery_casda_ext.download import (
    MANIFEST_NAME, ChecksumStatus, Downloader, FileResult, FileStatus, FileTask, Manifest, RetryPolicy,
    SessionSpec, TransferConfig, download_files, filename_from_url, parse_content_disposition,
    _Hooks, parse_retry_after, plan_downloads, read_checksum, safe_filename, transfer_file)
from astroquery_casda_ext.endpoints import Endpoints
from astroquery_casda_ext.errors import ChecksumMismatchError, DownloadError, UnsafeFilenameError
from astroquery_casda_ext.jobs import PollPolicy, ResultFile, SodaJob

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


# --- RetryPolicy ----------------------------------------------------------------------------------

@pytest.mark.parametrize("attempt, expected", [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 30.0), (30, 30.0)])
def test_backoff_doubles_per_retry_up_to_the_cap(attempt, expected):
    """With the jitter at its midpoint the n-th retry waits factor * 2**(n-1), capped."""
    assert RetryPolicy().delay(attempt, rand=lambda: 0.5) == pytest.approx(expected)


@pytest.mark.parametrize("rand, factor", [(0.0, 0.75), (0.999999, 1.25)])
def test_jitter_spreads_the_backoff_by_the_given_fraction(rand, factor):
    assert RetryPolicy().delay(3, rand=lambda: rand) == pytest.approx(2.0 * factor, rel=1e-5)


def test_jitter_never_exceeds_backoff_max():
    assert RetryPolicy(backoff_max=4.0).delay(10, rand=lambda: 0.999) == 4.0


def test_zero_backoff_factor_means_no_wait():
    assert RetryPolicy(backoff_factor=0).delay(5) == 0


@pytest.mark.parametrize("retry_after, expected", [(7, 7.0), (0, 0.0), (-3, 0.0), (500, 120.0)])
def test_server_retry_after_wins_over_backoff_and_is_capped(retry_after, expected):
    assert RetryPolicy().delay(1, retry_after) == expected


@pytest.mark.parametrize("kwargs", [{"total": -1}, {"backoff_factor": -1}, {"jitter": 1.5}])
def test_retry_policy_rejects_impossible_values(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_retry_policy_reads_retries_from_conf_when_called():
    with conf.set_temp("download_retries", 2):
        assert RetryPolicy.from_conf().total == 2


@pytest.mark.parametrize("status, retryable", [(429, True), (503, True), (500, True), (404, False),
                                               (410, False)])
def test_which_statuses_are_retried(status, retryable):
    assert RetryPolicy().is_retryable_status(status) is retryable


@pytest.mark.parametrize("value, expected", [
    ("120", 120.0), (" 3 ", 3.0), ("1.5", 1.5),
    ("Wed, 01 Jan 2025 12:00:30 GMT", 30.0),      # HTTP-date 30 s after NOW
    ("Wed, 01 Jan 2025 11:00:00 GMT", 0.0),       # in the past: go now
    ("soon", None), ("", None), (None, None), ("-5", None),
])
def test_retry_after_accepts_seconds_and_http_dates(value, expected):
    assert parse_retry_after(value, now=NOW) == expected


# --- file names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("header, name", [
    ("attachment; filename=cube-1001.fits", "cube-1001.fits"),                 # CASDA: unquoted
    ('attachment; filename="my cube; v2.fits"', "my cube; v2.fits"),           # ; inside quotes
    (r'attachment; filename="say \"hi\".fits"', 'say "hi".fits'),             # escaped quotes
    ("attachment; FILENAME=upper.fits", "upper.fits"),                         # case-insensitive
    ("attachment; filename=plain.fits; filename*=UTF-8''na%C3%AFve.fits", "naïve.fits"),   # RFC 5987 wins
    ("attachment; filename*=utf-8'en'%E2%82%AC%20rates.fits", "€ rates.fits"),
    ("attachment; filename=fallback.fits; filename*=bogus''x%FF.fits", "fallback.fits"),  # undecodable
    ("attachment", None), ("", None), (None, None),
])
def test_content_disposition_names(header, name):
    assert parse_content_disposition(header) == name


@pytest.mark.parametrize("url, name", [
    ("https://casda.csiro.au/download/web/1a2b/image.i.SB609.cont.fits", "image.i.SB609.cont.fits"),
    ("https://casda.csiro.au/download/web/1a2b/with%20space%2Bplus.fits", "with space+plus.fits"),
    ("https://ingest.pawsey.org.au/casda-cache/1a2b/obj?response-content-disposition="
     "attachment%3B%20filename%3D%22real-name.fits%22&X-Amz-Signature=abc", "real-name.fits"),
])
def test_filename_from_url(url, name):
    assert filename_from_url(url) == name


@pytest.mark.parametrize("name", ["", "  ", ".", "..", "a/b", "a\\b", "/etc/passwd", "nul\x00byte",
                                  "new\nline", "del\x7f", "x" * 256])
def test_unsafe_names_are_refused(name):
    with pytest.raises(UnsafeFilenameError):
        safe_filename(name)


@pytest.mark.parametrize("name", ["cube-1001.fits", "…unicode é.fits", "...", "a b.fits", "-dash.fits"])
def test_ordinary_names_are_kept(name):
    assert safe_filename(name) == name


# --- planning -------------------------------------------------------------------------------------

BASE = "https://casda.csiro.au/download/web/job-1/"


def test_files_pair_with_their_checksums_in_any_order(tmp_path):
    urls = [BASE + "b.fits.checksum", BASE + "a.fits", BASE + "b.fits", BASE + "a.fits.checksum"]
    tasks, failures, refs = plan_downloads(urls, tmp_path)
    assert failures == []
    assert [(task.name, task.checksum_name) for task in tasks] == [
        ("b.fits", "b.fits.checksum"), ("a.fits", "a.fits.checksum")]
    # Every URL given maps to a local file, in the order given.
    paths = [tasks[i].path if role == "data" else tasks[i].checksum_path for i, role in refs]
    assert [Path(path).name for path in paths] == ["b.fits.checksum", "a.fits", "b.fits", "a.fits.checksum"]


def test_presigned_urls_pair_by_path_not_by_signature(tmp_path):
    s3 = "https://ingest.pawsey.org.au/casda-cache/job-1/"
    urls = [s3 + "c.fits?X-Amz-Signature=111", s3 + "c.fits.checksum?X-Amz-Signature=222"]
    tasks, _, _ = plan_downloads(urls, tmp_path)
    assert len(tasks) == 1 and tasks[0].checksum_url == urls[1]


def test_a_lone_checksum_url_is_downloaded_as_a_file(tmp_path):
    tasks, _, _ = plan_downloads([BASE + "lonely.fits.checksum"], tmp_path)
    assert [(task.name, task.kind, task.checksum_url) for task in tasks] == [
        ("lonely.fits.checksum", "checksum", None)]


def test_result_files_keep_their_ids_and_error_files_are_marked(tmp_path):
    items = [ResultFile("cutout-7-imagecube-1001", BASE + "cutout-7-imagecube-1001.fits",
                        BASE + "cutout-7-imagecube-1001.fits.checksum", "cube-1001"),
             ResultFile("error-01", BASE + "error-01.txt", BASE + "error-01.txt.checksum", None)]
    tasks, _, refs = plan_downloads(items, tmp_path)
    assert [(t.product_id, t.result_id, t.kind) for t in tasks] == [
        ("cube-1001", "cutout-7-imagecube-1001", "data"), ("", "error-01", "error-file")]
    assert refs == [(0, "data"), (0, "checksum"), (1, "data"), (1, "checksum")]


def test_the_same_url_twice_is_fetched_once(tmp_path):
    tasks, failures, refs = plan_downloads([BASE + "a.fits", BASE + "a.fits"], tmp_path)
    assert len(tasks) == 1 and failures == [] and refs == [(0, "data"), (0, "data")]


def test_two_urls_with_the_same_local_name_are_refused(tmp_path):
    tasks, failures, _ = plan_downloads([BASE + "a.fits", "https://other.host/x/a.fits"], tmp_path)
    assert len(tasks) == 1
    assert failures[0].status is FileStatus.ERROR and "'a.fits'" in failures[0].message


def test_a_traversal_name_in_the_url_is_refused(tmp_path):
    tasks, failures, _ = plan_downloads([BASE + "..%2F..%2Fescape.fits", BASE + "ok.fits"], tmp_path)
    assert [task.name for task in tasks] == ["ok.fits"]
    assert failures[0].error_type == "UnsafeFilenameError"


def test_a_symlink_planted_under_the_name_cannot_redirect_the_write(tmp_path):
    savedir = tmp_path / "dl"
    savedir.mkdir()
    (savedir / "trap.fits").symlink_to(tmp_path / "outside.fits")
    _, failures, _ = plan_downloads([BASE + "trap.fits"], savedir)
    assert failures[0].error_type == "UnsafeFilenameError"


def test_items_must_be_urls_or_result_files(tmp_path):
    with pytest.raises(TypeError):
        plan_downloads([42], tmp_path)


def test_planning_defaults_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tasks, _, _ = plan_downloads([BASE + "a.fits"], savedir="")
    assert Path(tasks[0].path) == tmp_path.resolve() / "a.fits"


# --- sessions, pools, pickling --------------------------------------------------------------------

def test_each_worker_thread_gets_its_own_pooled_session_with_the_transports_adapter():
    """A requests.Session is not promised to be thread-safe: the façade's is never shared."""
    from astroquery_casda_ext.download.http import SessionPool
    from astroquery_casda_ext.transport import ApiRetryAdapter
    pool = SessionPool(SessionSpec(pool_size=16))
    sessions = {}
    threads = [threading.Thread(target=lambda n=n: sessions.__setitem__(n, pool.get())) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(session) for session in sessions.values()}) == 3
    for session in sessions.values():
        for scheme in ("http://", "https://"):
            adapter = session.get_adapter(scheme + "example.org")
            assert isinstance(adapter, ApiRetryAdapter) and adapter._pool_maxsize >= 16
    assert pool.get() is pool.get()                                  # one per thread, reused
    pool.close()


def test_the_callers_session_and_its_adapter_are_left_alone():
    """The façade mounts its own adapter (API retries); the downloader must not touch it."""
    class CustomAdapter(requests.adapters.HTTPAdapter):
        pass
    session = requests.Session()
    adapter = CustomAdapter(max_retries=3, pool_maxsize=2)
    session.mount("https://", adapter)
    Downloader(session, workers=8, progress=False)
    assert session.get_adapter("https://casda.csiro.au/") is adapter
    assert adapter._pool_maxsize == 2 and adapter.max_retries.total == 3


def test_worker_sessions_never_carry_credentials():
    session = requests.Session()
    session.auth = ("casda-user", "secret")
    session.headers["Authorization"] = "Basic c2VjcmV0"
    session.headers["User-Agent"] = "astroquery/test"
    spec = SessionSpec.from_session(session, 6)
    rebuilt = pickle.loads(pickle.dumps(spec)).build()
    assert rebuilt.auth is None and "Authorization" not in rebuilt.headers
    assert rebuilt.headers["User-Agent"] == "astroquery/test"
    assert "secret" not in repr(spec)


def test_work_units_survive_pickling():
    """What a process-based executor ships: the task, the config, the result."""
    task = FileTask(0, BASE + "a.fits", "/tmp", "a.fits", expected=Checksum("0" * 8, "0" * 40, 5))
    config = TransferConfig(RetryPolicy(total=2), 5.0, 4096, SessionSpec())
    result = FileResult(0, task.url, task.path, status=FileStatus.COMPLETE,
                        checksum_status=ChecksumStatus.VERIFIED)
    for value in (task, config, result):
        assert pickle.loads(pickle.dumps(value)) == value


def test_workers_must_be_positive():
    with pytest.raises(ValueError):
        Downloader(workers=0)


def test_workers_default_to_conf():
    with conf.set_temp("download_workers", 3):
        assert Downloader(progress=False).workers == 3


# --- manifest -------------------------------------------------------------------------------------

def _result(index, name, status=FileStatus.COMPLETE, checksum_status=ChecksumStatus.VERIFIED, **kwargs):
    return FileResult(index, f"https://s3.example/job/{name}?X-Amz-Signature=SECRET", f"/data/{name}",
                      f"/data/{name}.checksum", status=status, checksum_status=checksum_status, **kwargs)


def test_manifest_lists_every_file_with_a_redacted_url(tmp_path):
    manifest = Manifest.from_results(
        [_result(1, "b.fits", FileStatus.SKIPPED), _result(0, "a.fits", size=10, attempts=2)],
        savedir=tmp_path)
    table = manifest.table
    assert list(table.colnames) == list(Manifest.COLUMNS)
    assert list(table["path"]) == ["/data/a.fits", "/data/b.fits"]            # input order
    assert list(table["status"]) == ["COMPLETE", "SKIPPED"]
    assert not any("SECRET" in url for url in table["url"])
    assert manifest.paths == ["/data/a.fits", "/data/b.fits"] and manifest.ok


def test_manifest_saves_atomically_next_to_the_files_and_reads_back(tmp_path):
    manifest = Manifest.from_results([_result(0, "a.fits", size=10, bytes_transferred=10)], savedir=tmp_path)
    written = manifest.save()
    assert written == str(tmp_path / MANIFEST_NAME)
    assert os.listdir(tmp_path) == [MANIFEST_NAME]                             # no temporary left
    again = Manifest.read(written)
    assert list(again.table["bytes_transferred"]) == [10] and again.savedir == str(tmp_path)
    assert "SECRET" not in Path(written).read_text()


def test_failures_are_listed_and_raised_together(tmp_path):
    manifest = Manifest.from_results([
        _result(0, "a.fits"),
        _result(1, "b.fits", FileStatus.ERROR, ChecksumStatus.MISMATCH, message="b.fits: crc32 did not match",
                error_type="ChecksumMismatchError"),
        _result(2, "c.fits", FileStatus.ERROR, message="c.fits: HTTP 404", error_type="DownloadError")],
        savedir=tmp_path)
    assert list(manifest.failed["path"]) == ["/data/b.fits", "/data/c.fits"]
    assert manifest.paths == ["/data/a.fits"]
    with pytest.raises(DownloadError) as caught:
        manifest.raise_for_errors()
    assert type(caught.value) is DownloadError                                 # mixed kinds
    assert "b.fits: crc32" in str(caught.value) and "c.fits: HTTP 404" in str(caught.value)
    assert caught.value.manifest is manifest


def test_a_single_kind_of_failure_raises_that_kind(tmp_path):
    failure = _result(0, "b.fits", FileStatus.ERROR, ChecksumStatus.MISMATCH, message="bad",
                      error_type="ChecksumMismatchError")
    manifest = Manifest.from_results([failure], savedir=tmp_path)
    with pytest.raises(ChecksumMismatchError) as caught:
        manifest.raise_for_errors()
    assert caught.value.path == "/data/b.fits" and "SECRET" not in caught.value.url


def test_error_files_are_reported_but_not_failures(tmp_path):
    manifest = Manifest.from_results([_result(0, "a.fits"), _result(1, "error-01.txt", kind="error-file",
                                                                   message="UsageError: No data...")],
                                     savedir=tmp_path)
    assert manifest.ok and manifest.paths == ["/data/a.fits"]
    assert list(manifest.error_files["message"]) == ["UsageError: No data..."]
    manifest.raise_for_errors()


# --- transfers against a scripted server (byte-level cases the emulator does not produce) ---------

PAYLOAD = bytes(range(256)) * 400            # 102 400 bytes


def _checksum_text(payload):
    from astroquery_casda_ext.checksum import ChecksumAccumulator
    accumulator = ChecksumAccumulator()
    accumulator.update(payload)
    return str(accumulator.result())


class ScriptedFile:
    """A download endpoint with Range support (switchable) that records every request."""

    def __init__(self, payload=PAYLOAD, *, ranges=True, disposition=None, bad_range_start=False):
        self.payload, self.ranges, self.disposition = payload, ranges, disposition
        self.bad_range_start = bad_range_start
        self.requests = []

    def __call__(self, request):
        self.requests.append(dict(request.headers))
        headers = {"Content-Type": "image/x-fits"}
        if self.disposition:
            headers["Content-Disposition"] = self.disposition
        if self.ranges:
            headers["Accept-Ranges"] = "bytes"
        match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        if self.ranges and match:
            start = int(match[1]) + (1 if self.bad_range_start else 0)
            body = self.payload[start:]
            headers["Content-Range"] = f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}"
            return 206, {**headers, "Content-Length": str(len(body))}, body
        return 200, {**headers, "Content-Length": str(len(self.payload))}, self.payload


@pytest.fixture
def scripted():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def _serve(mock, name, endpoint, *, checksum=True, base=BASE):
    mock.add_callback(responses.GET, base + name, callback=endpoint)
    if checksum:
        mock.add(responses.GET, base + name + ".checksum", body=_checksum_text(endpoint.payload),
                 content_type="text/plain")
    return [base + name] + ([base + name + ".checksum"] if checksum else [])


def _downloader(**kwargs):
    return Downloader(requests.Session(), progress=False, sleep=lambda seconds: None, **kwargs)


def test_a_file_is_verified_and_its_checksum_kept(scripted, tmp_path):
    urls = _serve(scripted, "a.fits", ScriptedFile())
    manifest = _downloader().download(urls, tmp_path)
    row = manifest.table[0]
    assert (row["status"], row["checksum_status"], row["size"]) == ("COMPLETE", "verified", len(PAYLOAD))
    assert (tmp_path / "a.fits").read_bytes() == PAYLOAD
    assert (tmp_path / "a.fits.checksum").read_text() == _checksum_text(PAYLOAD)
    assert sorted(os.listdir(tmp_path)) == ["a.fits", "a.fits.checksum"]        # no .part left


def test_the_servers_content_disposition_names_the_file(scripted, tmp_path):
    urls = _serve(scripted, "opaque-key", ScriptedFile(disposition='attachment; filename="nice name.fits"'))
    manifest = _downloader().download(urls, tmp_path)
    assert manifest.paths == [str(tmp_path / "nice name.fits")]
    assert (tmp_path / "nice name.fits").read_bytes() == PAYLOAD
    again = _downloader().download(urls, tmp_path)                               # found under that name
    assert list(again.table["status"]) == ["SKIPPED"]


def test_an_unsafe_content_disposition_is_refused(scripted, tmp_path):
    savedir = tmp_path / "dl"
    urls = _serve(scripted, "a.fits", ScriptedFile(disposition="attachment; filename=../../evil.fits"))
    manifest = _downloader().download(urls, savedir)
    assert manifest.failed["error_type"][0] == "UnsafeFilenameError"
    assert not (tmp_path / "evil.fits").exists() and not list(tmp_path.rglob("evil*"))
    with pytest.raises(UnsafeFilenameError):
        manifest.raise_for_errors()


def test_no_credentials_are_sent_even_across_a_redirect(scripted, tmp_path):
    endpoint = ScriptedFile()
    scripted.add(responses.GET, BASE + "moved.fits", status=302, headers={"Location": BASE + "a.fits"})
    _serve(scripted, "a.fits", endpoint, checksum=False)
    session = requests.Session()
    session.auth = ("casda-user", "s3cret")
    session.headers["Authorization"] = "Basic c2VjcmV0"
    manifest = Downloader(session, progress=False).download([BASE + "moved.fits"], tmp_path)
    assert manifest.table["status"][0] == "COMPLETE"
    assert all("Authorization" not in call.request.headers for call in scripted.calls)
    assert len(scripted.calls) == 2


def test_a_partial_file_is_continued_with_range(scripted, tmp_path):
    endpoint = ScriptedFile()
    urls = _serve(scripted, "a.fits", endpoint)
    (tmp_path / "a.fits.part").write_bytes(PAYLOAD[:40_000])
    row = _downloader().download(urls, tmp_path).table[0]
    assert endpoint.requests[0]["Range"] == "bytes=40000-"
    assert (row["status"], row["checksum_status"], row["bytes_transferred"]) == (
        "COMPLETE", "verified", len(PAYLOAD) - 40_000)
    assert (tmp_path / "a.fits").read_bytes() == PAYLOAD


def test_a_server_ignoring_range_restarts_the_file(scripted, tmp_path):
    endpoint = ScriptedFile(ranges=False)
    urls = _serve(scripted, "a.fits", endpoint)
    (tmp_path / "a.fits.part").write_bytes(PAYLOAD[:40_000])
    row = _downloader().download(urls, tmp_path).table[0]
    assert (row["checksum_status"], row["bytes_transferred"]) == ("verified", len(PAYLOAD))
    assert (tmp_path / "a.fits").read_bytes() == PAYLOAD


def test_a_wrong_content_range_restarts_without_range(scripted, tmp_path):
    endpoint = ScriptedFile(bad_range_start=True)
    urls = _serve(scripted, "a.fits", endpoint)
    (tmp_path / "a.fits.part").write_bytes(PAYLOAD[:40_000])
    row = _downloader().download(urls, tmp_path).table[0]
    assert [headers.get("Range") for headers in endpoint.requests] == ["bytes=40000-", None]
    assert row["bytes_transferred"] == len(PAYLOAD)          # the misplaced body was never read
    assert row["checksum_status"] == "verified" and (tmp_path / "a.fits").read_bytes() == PAYLOAD


def test_a_cancelled_transfer_keeps_its_part_and_the_next_call_resumes(scripted, tmp_path):
    """What Ctrl-C does to a running transfer: it stops at the next chunk, keeping the .part."""
    endpoint = ScriptedFile()
    urls = _serve(scripted, "a.fits", endpoint)
    session, config = requests.Session(), TransferConfig(chunk_size=16_384)
    task = read_checksum(plan_downloads(urls, tmp_path)[0][0], config, session)
    cancel = threading.Event()
    hooks = _Hooks(report=lambda event, index, value: event == "bytes" and cancel.set(), cancel=cancel)
    stopped = transfer_file(task, config, session, hooks)
    assert stopped.status is FileStatus.ERROR and "cancelled" in stopped.message
    assert (tmp_path / "a.fits.part").stat().st_size == 16_384 and not (tmp_path / "a.fits").exists()
    row = _downloader().download(urls, tmp_path).table[0]
    assert endpoint.requests[-1]["Range"] == "bytes=16384-"
    assert (row["checksum_status"], row["bytes_transferred"]) == ("verified", len(PAYLOAD) - 16_384)


def test_a_complete_part_left_by_a_killed_run_is_finished_without_a_request(scripted, tmp_path):
    endpoint = ScriptedFile()
    urls = _serve(scripted, "a.fits", endpoint)
    (tmp_path / "a.fits.part").write_bytes(PAYLOAD)
    row = _downloader().download(urls, tmp_path).table[0]
    assert (row["status"], row["attempts"], endpoint.requests) == ("COMPLETE", 0, [])
    assert (tmp_path / "a.fits").read_bytes() == PAYLOAD


def test_a_part_with_a_wrong_prefix_is_fetched_again_from_scratch(scripted, tmp_path):
    endpoint = ScriptedFile()
    urls = _serve(scripted, "a.fits", endpoint)
    (tmp_path / "a.fits.part").write_bytes(b"\xff" * 40_000)          # not this file's bytes
    row = _downloader().download(urls, tmp_path).table[0]
    assert [headers.get("Range") for headers in endpoint.requests] == ["bytes=40000-", None]
    assert (row["checksum_status"], row["attempts"]) == ("verified", 2)
    assert (tmp_path / "a.fits").read_bytes() == PAYLOAD


def test_a_damaged_file_under_the_final_name_is_replaced(scripted, tmp_path):
    urls = _serve(scripted, "a.fits", ScriptedFile())
    (tmp_path / "a.fits").write_bytes(b"\0" * len(PAYLOAD))
    row = _downloader().download(urls, tmp_path).table[0]
    assert (row["status"], row["checksum_status"]) == ("COMPLETE", "verified")
    assert (tmp_path / "a.fits").read_bytes() == PAYLOAD


def test_without_a_checksum_only_the_size_is_checked(scripted, tmp_path):
    endpoint = ScriptedFile()
    urls = _serve(scripted, "a.fits", endpoint, checksum=False)
    first = _downloader().download(urls, tmp_path).table[0]
    again = _downloader().download(urls, tmp_path).table[0]
    assert (first["status"], first["checksum_status"]) == ("COMPLETE", "size-only")
    assert (again["status"], again["checksum_status"]) == ("SKIPPED", "size-only")


def test_verify_false_checks_sizes_only(scripted, tmp_path):
    urls = _serve(scripted, "a.fits", ScriptedFile())
    row = _downloader().download(urls, tmp_path, verify=False).table[0]
    assert (row["status"], row["checksum_status"]) == ("COMPLETE", "size-only")
    assert (tmp_path / "a.fits.checksum").exists()


def test_an_http_error_is_reported_with_the_servers_words_and_not_retried(scripted, tmp_path):
    scripted.add(responses.GET, BASE + "gone.fits", status=404,
                 body="FAILURE: File gone.fits could not be found", content_type="text/plain")
    manifest = _downloader().download([BASE + "gone.fits"], tmp_path)
    row = manifest.failed[0]
    assert row["attempts"] == 1 and "404" in row["message"] and "could not be found" in row["message"]
    assert os.listdir(tmp_path) == []


def test_a_broken_checksum_sidecar_fails_the_file_without_downloading_it(scripted, tmp_path):
    endpoint = ScriptedFile()
    scripted.add_callback(responses.GET, BASE + "a.fits", callback=endpoint)
    scripted.add(responses.GET, BASE + "a.fits.checksum", body="<html>not a checksum</html>")
    manifest = _downloader().download([BASE + "a.fits", BASE + "a.fits.checksum"], tmp_path)
    assert "not a CASDA checksum" in manifest.failed["message"][0] and endpoint.requests == []


def test_connection_errors_are_retried_with_backoff(scripted, tmp_path):
    endpoint = ScriptedFile()
    failures = iter([requests.ConnectionError("connection refused"), requests.ReadTimeout("slow")])

    def flaky(request):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return endpoint(request)
    scripted.add_callback(responses.GET, BASE + "a.fits", callback=flaky)
    waits = []
    downloader = Downloader(requests.Session(), progress=False, sleep=waits.append,
                            retry=RetryPolicy(backoff_factor=1.0, jitter=0))
    row = downloader.download([BASE + "a.fits"], tmp_path).table[0]
    assert (row["status"], row["attempts"], waits) == ("COMPLETE", 3, [1.0, 2.0])


def test_presigned_signatures_never_reach_messages(scripted, tmp_path):
    url = "https://s3.example/bucket/job/x.fits?X-Amz-Signature=SECRET"
    scripted.add(responses.GET, url, status=403, body="denied")
    refused = requests.ConnectionError(
        "Max retries exceeded with url: /bucket/job/y.fits?X-Amz-Signature=SECRET")
    scripted.add(responses.GET, "https://s3.example/bucket/job/y.fits", body=refused)
    manifest = _downloader(retry=RetryPolicy(total=1)).download(
        [url, "https://s3.example/bucket/job/y.fits?X-Amz-Signature=SECRET"], tmp_path)
    with pytest.raises(DownloadError) as caught:
        manifest.raise_for_errors()
    assert len(manifest.failed) == 2 and "SECRET" not in str(caught.value)
    assert not any("SECRET" in value for value in manifest.table["message"])


def test_download_files_returns_every_path_in_the_order_given(scripted, tmp_path):
    urls = _serve(scripted, "a.fits", ScriptedFile()) + _serve(scripted, "b.fits", ScriptedFile())
    urls = [urls[1], urls[2], urls[0], urls[3]]
    paths = download_files(urls, savedir=tmp_path, progress=False)
    assert [Path(path).name for path in paths] == ["a.fits.checksum", "b.fits", "a.fits", "b.fits.checksum"]
    assert all(Path(path).is_file() for path in paths)


def test_download_files_raises_after_finishing_the_rest(scripted, tmp_path):
    urls = _serve(scripted, "a.fits", ScriptedFile())
    scripted.add(responses.GET, BASE + "gone.fits", status=404)
    with pytest.raises(DownloadError) as caught:
        download_files([BASE + "gone.fits"] + urls, savedir=tmp_path, progress=False)
    assert (tmp_path / "a.fits").read_bytes() == PAYLOAD
    assert "gone.fits" in str(caught.value)


def test_progress_bar_counts_bytes_and_files(scripted, tmp_path, capsys):
    urls = _serve(scripted, "a.fits", ScriptedFile())
    Downloader(requests.Session(), progress=True).download(urls, tmp_path)
    err = capsys.readouterr().err
    assert "CASDA download" in err and "1/1 files" in err and "100k" in err


def test_progress_is_quiet_when_stderr_is_not_a_terminal(scripted, tmp_path, capsys):
    urls = _serve(scripted, "a.fits", ScriptedFile())
    Downloader(requests.Session()).download(urls, tmp_path)          # pytest's stderr is no tty
    assert capsys.readouterr().err == ""


def test_per_file_bars_on_request(scripted, tmp_path, capsys):
    urls = _serve(scripted, "a.fits", ScriptedFile()) + _serve(scripted, "b.fits", ScriptedFile())
    Downloader(requests.Session(), progress="files", workers=2).download(urls, tmp_path)
    err = capsys.readouterr().err
    assert "a.fits" in err and "b.fits" in err and "2/2 files" in err


# --- whole downloads from the emulator, over HTTP --------------------------------------------------

FAST_POLL = PollPolicy(first=0.05, factor=1.0, cap=0.05, timeout=60)


def stage(emulator, product_ids, *, service="async_service", params=None):
    """Stage products the way the client does (DataLink tokens, a SODA job); the job's files.

    Returns ``(result_files, error_files)`` as `ResultFile` lists.
    """
    endpoints = Endpoints.for_server(emulator.url)
    session = requests.Session()
    auth = ProxyAuth(Credentials(emulator.username, emulator.password), endpoints.vo_proxy)
    report = DataLinkClient(session, endpoints.datalink_url, auth=auth).tokens_for(product_ids, service)
    job = SodaJob.create(session, report.tokens[0].service_url, [token.token for token in report.tokens],
                         params)
    job.run()
    job.wait(FAST_POLL, sleep=time.sleep)
    job.raise_if_error()
    return job.result_files(), job.error_files()


def products_of(emulator, kind, count):
    return [product for product in emulator.holdings.products if product.kind == kind][:count]


def test_download_files_keeps_astroquerys_contract(emulator, tmp_path):
    products = products_of(emulator, "continuum", 2)
    files, _ = stage(emulator, [product.product_id for product in products])
    urls = [url for item in files for url in (item.checksum_url, item.url)]        # checksums first
    paths = download_files(urls, savedir=tmp_path, progress=False)
    # The astroquery naming: the last URL path segment, percent-decoded, in the order given.
    assert [Path(path).name for path in paths] == [unquote(urlsplit(url).path.rsplit("/", 1)[-1])
                                                   for url in urls]
    for product in products:
        assert (tmp_path / product.staged_name).read_bytes() == product.path.read_bytes()
        assert (tmp_path / (product.staged_name + ".checksum")).read_text() == product.checksum


def test_downloading_a_jobs_files_gives_a_verified_manifest(emulator, tmp_path):
    products = products_of(emulator, "spectral", 2)
    files, _ = stage(emulator, [product.product_id for product in products])
    manifest = Downloader(requests.Session(), progress=False).download(files, tmp_path)
    table = manifest.table
    assert sorted(table["product_id"]) == sorted(product.product_id for product in products)
    assert set(table["status"]) == {"COMPLETE"} and set(table["checksum_status"]) == {"verified"}
    assert list(table["bytes_transferred"]) == list(table["size"]) and set(table["attempts"]) == {1}
    assert Manifest.read(manifest.save()).table["path"].tolist() == manifest.paths


def test_a_second_download_skips_verified_files_without_fetching_them(emulator, tmp_path):
    products = products_of(emulator, "continuum", 2)
    files, _ = stage(emulator, [product.product_id for product in products])
    Downloader(requests.Session(), progress=False).download(files, tmp_path)
    logged = len(emulator.request_log)
    again = Downloader(requests.Session(), progress=False).download(files, tmp_path)
    assert set(again.table["status"]) == {"SKIPPED"} and set(again.table["checksum_status"]) == {"verified"}
    fetched = [entry.path for entry in emulator.request_log[logged:]]
    assert fetched and all(path.endswith(".checksum") for path in fetched)      # only the sidecars


def test_presigned_urls_work_verbatim_and_stay_out_of_the_manifest(emulator, tmp_path):
    emulator.set_options(href_style="presigned")
    product = products_of(emulator, "continuum", 1)[0]
    files, _ = stage(emulator, [product.product_id])
    assert "X-Amz-Signature" in files[0].url
    manifest = Downloader(requests.Session(), progress=False).download(files, tmp_path)
    assert manifest.table["checksum_status"][0] == "verified"
    assert (tmp_path / product.staged_name).read_bytes() == product.path.read_bytes()
    assert "X-Amz" not in Path(manifest.save()).read_text()


def test_a_jobs_error_files_are_reported_as_such(emulator, tmp_path):
    product = products_of(emulator, "spectral", 1)[0]
    centre = f"{product.obscore['s_ra']} {product.obscore['s_dec']} 0.01"
    files, error_files = stage(emulator, [product.product_id], service="cutout_service",
                               params={"CIRCLE": [centre, "10.0 10.0 0.01"]})
    manifest = Downloader(requests.Session(), progress=False).download(files + error_files, tmp_path)
    assert manifest.ok
    errors = manifest.error_files
    assert len(errors) == 1 and errors["checksum_status"][0] == "verified"
    assert errors["message"][0].startswith("UsageError: No data is available")
    assert len(manifest.paths) == 1 and "cutout" in Path(manifest.paths[0]).name


def test_a_dask_cluster_can_run_the_transfers(emulator, tmp_path):
    import distributed   # in the test extra: the pluggable executor is tested, never skipped
    products = products_of(emulator, "continuum", 3)
    files, _ = stage(emulator, [product.product_id for product in products])
    # TCP on loopback (the scheduler's HTTP server too), so tasks really are pickled, and no
    # public address is looked up (tests may not touch the internet).
    cluster = distributed.LocalCluster(processes=False, n_workers=2, threads_per_worker=1, protocol="tcp://",
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
    with cluster, distributed.Client(cluster) as client:
        manifest = Downloader(requests.Session(), executor=client.get_executor(),
                              progress=False).download(files, tmp_path)
    assert set(manifest.table["checksum_status"]) == {"verified"}
    for product in products:
        assert (tmp_path / product.staged_name).read_bytes() == product.path.read_bytes()
