"""Reliability matrix, bad input: malformed arguments across the public API and the
command line.

Every bad value gets a specific exception (a `CasdaError` that is also astroquery's
`InvalidQueryError` or `LoginError`) whose message names the problem, and nothing is sent
to CASDA (the emulator's request log does not grow).  On the command line the same input
ends in one ``casda: error: ...`` line on standard error and a non-zero exit code, with no
traceback.  ADQL the server rejects is sent once and comes back as `QueryError` carrying
the server's own words.

(Bad cutout radii, band units and channel types are in ``test_core.py``.)
"""
import os
import time

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from astroquery.exceptions import InvalidQueryError, LoginError

from astroquery_casda_ext import CasdaClass
from astroquery_casda_ext.cli import main
from astroquery_casda_ext.errors import (CasdaError, CasdaLoginError, DownloadError, InvalidInputError,
                                         InvalidRegionError, InvalidSourceListError,
                                         InvalidSpectralRangeError, InvalidTableError, InvalidURLError,
                                         JobNotFoundError, NotLoggedInError, QueryError, UnsafeFilenameError)

pytestmark = pytest.mark.matrix("bad-input")

POSITION = "187.5 -45.0"


@pytest.fixture
def casda(emulator):
    client = CasdaClass(server=emulator.url)
    client.login(emulator.username, password=emulator.password)
    return client


@pytest.fixture
def images(casda):
    return casda.query_sbid_images(609)[:1]


@pytest.fixture
def files(tmp_path):
    """Local files the cases refer to: source lists, a password file, a plain file."""
    (tmp_path / "bad_line.txt").write_text("187.5 -45\n187.6 -45.1 extra\n")
    (tmp_path / "only_comments.txt").write_text("# nothing here\n\n")
    (tmp_path / "binary.txt").write_bytes(b"\x00\xff\xfe\x89PNG\r\n")
    (tmp_path / "empty_password").write_text("")
    os.chmod(tmp_path / "empty_password", 0o600)
    (tmp_path / "a_file").write_text("not a directory")
    return tmp_path


def job_url(emulator, tail):
    return emulator.url + "casda_data_access/data/async/" + tail


# (label, call(casda, images, files, emulator), expected exception)
API_CASES = [
    # coordinates
    ("declination beyond the pole", lambda c, i, f, e: c.query_region("187.5 -95"), InvalidRegionError),
    ("right ascension over 360", lambda c, i, f, e: c.query_region("400 -45"), InvalidRegionError),
    ("one number for a position", lambda c, i, f, e: c.query_region("187.5"), InvalidRegionError),
    ("a bare number for a position", lambda c, i, f, e: c.query_region(5), InvalidRegionError),
    ("a radius without coordinates", lambda c, i, f, e: c.query_region(None), InvalidRegionError),
    ("an array of positions of the wrong shape",
     lambda c, i, f, e: c.cutout(i, coordinates=np.array([1.0, 2.0, 3.0])), InvalidRegionError),
    ("a table of positions without ra/dec columns",
     lambda c, i, f, e: c.cutout(i, coordinates=Table({"x": [1.0]})), InvalidRegionError),
    ("an unreadable spectrum position", lambda c, i, f, e: c.spectra(i, "nonsense"), InvalidRegionError),
    ("an unreadable position for products_at", lambda c, i, f, e: c.query_products_at("nowhere"),
     InvalidRegionError),
    # radii and regions
    ("a radius that is a word",
     lambda c, i, f, e: c.query_region(POSITION, radius="banana"), InvalidRegionError),
    ("a radius in kilograms",
     lambda c, i, f, e: c.query_region(POSITION, radius=1 * u.kg), InvalidRegionError),
    ("a radius of NaN",
     lambda c, i, f, e: c.query_region(POSITION, radius=np.nan * u.deg), InvalidRegionError),
    ("a radius of zero", lambda c, i, f, e: c.query_region(POSITION, radius=0 * u.deg), InvalidRegionError),
    ("a box with a width only",
     lambda c, i, f, e: c.query_region(POSITION, width=1 * u.deg), InvalidRegionError),
    ("a polygon of two vertices",
     lambda c, i, f, e: c.query_region(None, radius=None, polygon=["187 -45", "188 -45"]),
     InvalidRegionError),
    ("a cutout box with a negative height",
     lambda c, i, f, e: c.cutout(i, coordinates=POSITION, radius=None, width=1 * u.arcmin,
                                 height=-1 * u.arcmin), InvalidRegionError),
    ("a negative spectrum aperture", lambda c, i, f, e: c.spectra(i, POSITION, radius=-2 * u.arcsec),
     InvalidRegionError),
    # bands, channels, polarisations
    ("a band of one value", lambda c, i, f, e: c.query_region(POSITION, band=[1 * u.GHz]),
     InvalidSpectralRangeError),
    ("a velocity band without rest frequency",
     lambda c, i, f, e: c.query_region(POSITION, band=[1 * u.km / u.s, 100 * u.km / u.s]),
     InvalidSpectralRangeError),
    ("a band of bare numbers", lambda c, i, f, e: c.cutout(i, coordinates=POSITION, band=(1.3, 1.4)),
     InvalidSpectralRangeError),
    ("a rest frequency without a band",
     lambda c, i, f, e: c.query_region(POSITION, rest_frequency=1.42 * u.GHz), InvalidInputError),
    ("an unknown polarisation",
     lambda c, i, f, e: c.query_region(POSITION, pol="Z"), InvalidSpectralRangeError),
    ("an unknown Stokes parameter in a cutout",
     lambda c, i, f, e: c.cutout(i, coordinates=POSITION, pol=["Q", "X"]), InvalidSpectralRangeError),
    ("channel 0 (CASDA counts from 1)", lambda c, i, f, e: c.cutout(i, coordinates=POSITION, channel=(0, 5)),
     InvalidSpectralRangeError),
    ("one bad window among channel windows",
     lambda c, i, f, e: c.cutout(i, coordinates=POSITION, channel=[(1, 4), (0, 2)]),
     InvalidSpectralRangeError),
    # times and query options
    ("a time interval ending before it starts",
     lambda c, i, f, e: c.query_region(POSITION, time=("2020-01-01", "2019-01-01")), InvalidInputError),
    ("a time that is a word",
     lambda c, i, f, e: c.query_region(POSITION, time="yesterday"), InvalidInputError),
    ("maxrec of zero", lambda c, i, f, e: c.query_region(POSITION, maxrec=0), InvalidInputError),
    ("an empty collection name",
     lambda c, i, f, e: c.query_region(POSITION, collection=""), InvalidInputError),
    ("an unknown dataproduct type among good ones",
     lambda c, i, f, e: c.query_region(POSITION, dataproduct_type=["image", "spectrum"]), InvalidInputError),
    ("a scheduling block id that is a word",
     lambda c, i, f, e: c.query_sbid_images("abc"), InvalidInputError),
    ("scheduling block 0", lambda c, i, f, e: c.query_sbid_images(0), InvalidInputError),
    ("components of the whole sky", lambda c, i, f, e: c.query_components(), InvalidInputError),
    ("components with a flux limit that is a word",
     lambda c, i, f, e: c.query_components(sbid=609, flux_min="lots"), InvalidInputError),
    ("components inside an image given as a number", lambda c, i, f, e: c.query_components(image=42),
     InvalidInputError),
    ("an image interval ending before it starts",
     lambda c, i, f, e: c.query_images_in_interval(POSITION, "2021-01-01", "2020-01-01"), InvalidInputError),
    ("an image interval starting at a word",
     lambda c, i, f, e: c.query_images_in_interval(POSITION, "notatime", "2020-01-01"), InvalidInputError),
    ("a poll interval of zero", lambda c, i, f, e: c.stage_data(i, poll_interval=0), InvalidInputError),
    ("a negative poll interval",
     lambda c, i, f, e: c.cutout(i, coordinates=POSITION, poll_interval=-1), InvalidInputError),
    ("a cutout without any cutout parameter", lambda c, i, f, e: c.cutout(i), InvalidInputError),
    # tables
    ("a table whose product id is empty",
     lambda c, i, f, e: c.stage_data(Table({"obs_publisher_did": [""]})), InvalidTableError),
    ("a number instead of a table", lambda c, i, f, e: c.stage_data(42), InvalidTableError),
    ("an unknown DataLink service", lambda c, i, f, e: c.get_access_tokens(i, service="bogus"),
     InvalidInputError),
    ("a table without release dates", lambda c, i, f, e: c.filter_out_unreleased(Table({"x": [1]})),
     InvalidTableError),
    ("a table name that is not schema.table",
     lambda c, i, f, e: c.list_columns("bad name;"), InvalidInputError),
    # ADQL that never needs the server
    ("an empty ADQL query", lambda c, i, f, e: c.query_tap(""), InvalidInputError),
    ("a blank asynchronous ADQL query",
     lambda c, i, f, e: c.query_tap("   ", async_job=True), InvalidInputError),
    ("a negative maxrec for TAP", lambda c, i, f, e: c.query_tap("SELECT * FROM ivoa.obscore", maxrec=-5),
     InvalidInputError),
    # job URLs
    ("an ftp job URL", lambda c, i, f, e: c.load_job("ftp://x"), InvalidURLError),
    ("a URL that is not a job", lambda c, i, f, e: c.load_job("http://host/not/a/job"), InvalidURLError),
    ("a job URL without a job id", lambda c, i, f, e: c.load_job(job_url(e, "")), InvalidURLError),
    ("a job URL with a query string", lambda c, i, f, e: c.load_job(job_url(e, "abc?x=1")), InvalidURLError),
    ("an empty job URL", lambda c, i, f, e: c.load_job(""), InvalidURLError),
    # source lists
    ("a source list that does not exist",
     lambda c, i, f, e: c.cutout(i, coordinates=f / "missing.txt"), InvalidSourceListError),
    ("a source list with a malformed line",
     lambda c, i, f, e: c.cutout(i, coordinates=str(f / "bad_line.txt")), InvalidSourceListError),
    ("a source list without positions",
     lambda c, i, f, e: c.cutout(i, coordinates=str(f / "only_comments.txt")), InvalidSourceListError),
    ("a binary file as a source list", lambda c, i, f, e: c.cutout(i, coordinates=f / "binary.txt"),
     InvalidSourceListError),
    # download URLs, file names and directories
    ("a download URL whose name climbs out of the directory",
     lambda c, i, f, e: c.download_files([e.url + "download/web/job/..%2F..%2Fevil.fits"], savedir=f / "out"),
     UnsafeFilenameError),
    ("a presigned URL naming a file outside the directory",
     lambda c, i, f, e: c.download_files(
         [e.url + "download/s3/b/job/x.fits?response-content-disposition="
                  "attachment%3Bfilename%3D..%2Fevil.fits&X-Amz-Signature=abc"], savedir=f / "out"),
     UnsafeFilenameError),
    ("a download directory that is a file",
     lambda c, i, f, e: c.download_files([e.url + "download/web/job/a.fits"], savedir=f / "a_file"),
     DownloadError),
    # logins
    ("a login without a user name", lambda c, i, f, e: CasdaClass(server=e.url).login(password="x"),
     NotLoggedInError),
    ("a password file that does not exist",
     lambda c, i, f, e: CasdaClass(server=e.url).login("someone", password_file=f / "missing"),
     CasdaLoginError),
    ("an empty password file",
     lambda c, i, f, e: CasdaClass(server=e.url).login("someone", password_file=f / "empty_password"),
     CasdaLoginError),
]


@pytest.mark.parametrize("label, call, error", API_CASES, ids=[case[0] for case in API_CASES])
def test_bad_input_is_refused_before_anything_is_sent(casda, images, files, emulator, label, call, error):
    sent = len(emulator.request_log)
    with pytest.raises(error) as info:
        call(casda, images, files, emulator)
    exc = info.value
    assert isinstance(exc, CasdaError) and isinstance(exc, (InvalidQueryError, LoginError, DownloadError))
    message = str(exc)
    assert message.strip() and "Traceback" not in message and len(message) < 600
    assert len(emulator.request_log) == sent, "nothing is sent for bad input"
    assert not (files.parent / "evil.fits").exists() and not (files / "evil.fits").exists()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x.fits", "not a url", "http:///no-host.fits"])
def test_a_download_url_that_cannot_work_is_reported_at_once(casda, emulator, tmp_path, url):
    """No retrying with backoff for a URL that can never be fetched: the user hears at once."""
    sent = len(emulator.request_log)
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        casda.download_files([url], savedir=tmp_path)
    assert time.monotonic() - started < 3
    assert "Traceback" not in str(info.value)
    assert len(emulator.request_log) == sent
    assert list(tmp_path.iterdir()) == []


ADQL_REJECTED = [
    ("SELEKT 1", "Unexpected token"),
    ("SELECT * FROM nosuch.table", 'Unknown table "nosuch.table"'),
    ("SELECT nosuchcolumn FROM ivoa.obscore", 'Unknown column "nosuchcolumn"'),
]


@pytest.mark.parametrize("async_job", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("adql, says", ADQL_REJECTED, ids=[case[0] for case in ADQL_REJECTED])
def test_adql_the_server_rejects_is_a_query_error_with_its_message(casda, emulator, adql, says, async_job):
    sent = len(emulator.request_log)
    with pytest.raises(QueryError, match=says) as info:
        casda.query_tap(adql, async_job=async_job)
    assert isinstance(info.value, InvalidQueryError)
    assert says in info.value.server_message
    queries = [entry for entry in emulator.request_log[sent:] if entry.method == "POST"
               and entry.path.endswith(("/tap/sync", "/tap/async"))]
    assert len(queries) == 1, "a rejected query is not sent again"


def test_a_job_url_the_server_does_not_know_is_named(casda, emulator):
    url = job_url(emulator, "no-such-job")
    with pytest.raises(JobNotFoundError, match="does not know job") as info:
        casda.load_job(url)
    assert info.value.job_url == url


# --- the command line --------------------------------------------------------------------------------

@pytest.fixture
def cli_files(tmp_path):
    (tmp_path / "sources.txt").write_text("187.5 -45.0\n")
    (tmp_path / "bad_line.txt").write_text("187.5 -45\nnot a line\n")
    (tmp_path / "table.txt").write_text("x\n")
    return tmp_path


# (label, arguments; "{d}" is the temporary directory)
CLI_CASES = [
    ("unreadable position", ["query", "not a position"]),
    ("radius that is a word", ["query", "187.5", "-45", "--radius", "banana"]),
    ("misspelt option", ["query", "187.5", "-45", "--radus", "1"]),
    ("declination beyond the pole", ["query", "187.5", "95"]),
    ("band in kilograms", ["query", "187.5", "-45", "--band", "1kg", "2kg"]),
    ("time that is a word", ["query", "187.5", "-45", "--time", "yesterday", "today"]),
    ("maxrec of zero", ["query", "187.5", "-45", "--maxrec", "0"]),
    ("unknown polarisation", ["query", "187.5", "-45", "--pol", "Z"]),
    ("output file of an unknown format", ["query", "187.5", "-45", "-o", "{d}/table.txt"]),
    ("empty ADQL", ["tap", ""]),
    ("ftp job URL", ["job", "ftp://x"]),
    ("URL that is not a job", ["job", "http://host/not/a/job"]),
    ("ftp download URL", ["download", "ftp://x", "{d}/out"]),
    ("source list that does not exist", ["sources", "cube-1001", "{d}/missing.txt", "{d}/out"]),
    ("source list with a malformed line", ["sources", "cube-1001", "{d}/bad_line.txt", "{d}/out"]),
    ("spectrum radius that is a word", ["spectra", "{d}/sources.txt", "wide", "{d}/out"]),
    ("scheduling block 0", ["slice", "0", "8", "{d}/out"]),
    ("zero channels per slice", ["slice", "609", "0", "{d}/out"]),
    ("product id that is not one", ["stage", "not_a_product!"]),
    ("negative cutout radius", ["cutouts", "609", "{d}/out", "--radius", "-1deg"]),
    ("flux limit that is a word", ["cutouts", "609", "{d}/out", "--flux-min", "lots"]),
    ("right ascension over 360", ["images", "400", "-45", "{d}/out"]),
    ("unknown command", ["frobnicate"]),
]


def run_cli(arguments, capsys):
    code = main(arguments)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err):
    errors = [line for line in err.splitlines() if line.startswith("casda: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err and "File \"" not in err
    return errors[0]


@pytest.mark.parametrize("label, arguments", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_bad_command_line_input_is_one_error_line_and_a_failure_code(emulator, cli_files, capsys, label,
                                                                     arguments):
    sent = len(emulator.request_log)
    arguments = [argument.format(d=cli_files) for argument in arguments] + ["--server", emulator.url]
    code, out, err = run_cli(arguments, capsys)
    assert code != 0
    assert_one_error_line(err)
    assert len(emulator.request_log) == sent, "nothing is sent for bad input"
    assert not (cli_files / "out").exists()


def test_the_command_line_reports_adql_the_server_rejects_in_the_servers_words(emulator, capsys):
    arguments = ["tap", "SELECT nosuchcolumn FROM ivoa.obscore", "--server", emulator.url]
    code, out, err = run_cli(arguments, capsys)
    assert code != 0
    assert 'Unknown column "nosuchcolumn"' in assert_one_error_line(err)
