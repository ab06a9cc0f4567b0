"""``except`` clauses written for astroquery.casda catch our errors in the same situations.

astroquery.casda lets ``requests`` exceptions through (``raise_for_status`` on DataLink, SODA
and job answers; connection failures and timeouts from its session), raises ``ValueError``
for refusals and ``LoginError`` for login problems.  Each of our errors is also the
astroquery (``RemoteServiceError``, ``LoginError``, ``TimeoutError``, ``InvalidQueryError``)
and ``requests`` exception of its situation.  Over real HTTP against the emulator.
"""
import astropy.units as u
import pytest
import requests
from astroquery import exceptions as aq

from astroquery_casda_ext import CasdaClass, conf
from astroquery_casda_ext.emulator import FaultRule
from astroquery_casda_ext.transport import mount_api_retries


@pytest.fixture
def client(emulator, fake_time):
    casda = CasdaClass(server=emulator.url)
    mount_api_retries(casda._session, sleep=fake_time.sleep, clock=fake_time.clock, rand=lambda: 0.5)
    return casda


@pytest.fixture
def logged_in(client, emulator):
    emulator.set_options(job_phases=(("EXECUTING", 0.05),))
    client.login(emulator.username, password=emulator.password)
    with conf.set_temp("poll_first", 0.05), conf.set_temp("poll_interval", 0.1):
        yield client


def test_a_service_error_status_is_a_remote_service_error_and_an_http_error(client, emulator):
    emulator.add_fault(FaultRule(r"/sia2/query$", "status", status=500))
    with pytest.raises(aq.RemoteServiceError) as info:
        client.query_region("187.5 -45.0", cache=False)
    assert isinstance(info.value, requests.HTTPError) and info.value.response.status_code == 500
    emulator.add_fault(FaultRule(r"/tap/sync$", "status", status=500, methods=("POST",)))
    with pytest.raises(requests.HTTPError) as info:
        client.query_tap("SELECT TOP 1 obs_id FROM ivoa.obscore")
    assert isinstance(info.value, aq.RemoteServiceError) and "HTTP 500" in str(info.value)


def test_datalink_and_job_http_errors_are_http_errors_as_raise_for_status_made_them(logged_in, emulator):
    images = logged_in.query_sbid_images(609)
    emulator.add_fault(FaultRule(r"/datalink/links$", "status", status=500, times=1))
    with pytest.raises(requests.exceptions.HTTPError) as info:      # astroquery: raise_for_status()
        logged_in.stage_data(images[:1])
    assert isinstance(info.value, aq.RemoteServiceError) and info.value.response.status_code == 500
    emulator.add_fault(FaultRule(r"/data/async$", "status", status=500, methods=("POST",), times=1))
    with pytest.raises(requests.exceptions.HTTPError):
        logged_in.stage_data(images[:1])


def test_a_refused_connection_is_a_requests_connection_error(closed_port, fake_time):
    client = CasdaClass(server=f"http://127.0.0.1:{closed_port}/")
    mount_api_retries(client._session, sleep=fake_time.sleep, clock=fake_time.clock, rand=lambda: 0.5)
    with pytest.raises(requests.exceptions.ConnectionError) as info:
        client.query_tap("SELECT TOP 1 obs_id FROM ivoa.obscore")
    assert isinstance(info.value, aq.RemoteServiceError) and "refused" in str(info.value).lower()


def test_a_read_timeout_is_a_requests_timeout_and_astroquerys_timeout_error(client, emulator):
    emulator.add_fault(FaultRule(r"/sia2/query$", "latency", delay=2.0, times=1))
    client.TIMEOUT = 0.3
    with conf.set_temp("request_retries", 0), pytest.raises(requests.exceptions.Timeout) as info:
        client.query_region("187.5 -45.0", cache=False)
    assert isinstance(info.value, aq.TimeoutError) and isinstance(info.value, aq.RemoteServiceError)


def test_login_problems_are_login_errors(client, emulator):
    with pytest.raises(aq.LoginError, match=r"^If you do not pass a username to login\(\),"):
        client.login()
    with pytest.raises(aq.LoginError):
        client.login(emulator.username, password="not-the-password")
    with pytest.raises(aq.LoginError, match="^Credentials must be supplied") as info:
        client.stage_data(["cube-1"])
    assert isinstance(info.value, ValueError)           # astroquery.casda raised ValueError here


def test_no_access_is_astroquerys_value_error(logged_in):
    with pytest.raises(ValueError, match=r"^You do not have access to any of the requested data files\."):
        logged_in.stage_data(["cube-999999"])


def test_bad_input_is_an_invalid_query_error_and_a_value_error(client):
    with pytest.raises(aq.InvalidQueryError) as info:
        client.query_region("187.5 -45.0", radius=30 * u.deg)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match=r"^The 'band' value must be a list of 2 wavelength or frequency"):
        client.query_region("187.5 -45.0", band="1.4 GHz")


def test_a_job_that_ends_in_error_is_astroquerys_value_error_and_a_remote_service_error(logged_in):
    images = logged_in.query_sbid_images(609)
    with pytest.raises(ValueError, match="^Data staging job did not complete successfully") as info:
        logged_in.cutout(images[:1], coordinates="10 -89", radius=1 * u.arcsec)
    assert isinstance(info.value, aq.RemoteServiceError)


def test_a_job_past_its_time_is_astroquerys_timeout_error(logged_in, emulator):
    emulator.set_options(hold_jobs=True)
    images = logged_in.query_sbid_images(609)
    with conf.set_temp("job_timeout", 0.3), pytest.raises(aq.TimeoutError) as info:
        logged_in.stage_data(images[:1])
    assert isinstance(info.value, TimeoutError) and info.value.job_url
