"""The `Casda` façade: drop-in compatibility with astroquery.casda, and the whole path
(query → DataLink → SODA → download) over real HTTP against the emulator."""
import inspect
import logging
import os

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astroquery.casda import CasdaClass as AstroqueryCasdaClass
from astroquery.exceptions import InvalidQueryError, LoginError

from astroquery_casda_ext import Casda, CasdaClass, conf
from astroquery_casda_ext.checksum import checksum_of_file, parse_checksum
from astroquery_casda_ext.errors import (CasdaLoginError, InvalidRegionError, InvalidSpectralRangeError,
                                         InvalidTableError, NoAccessError, NotLoggedInError)

DROP_IN_METHODS = ("query_region", "query_region_async", "filter_out_unreleased", "stage_data",
                   "cutout", "download_files", "login")


@pytest.fixture
def casda(emulator):
    """A client pointed at the emulator, logged in with the built-in account."""
    client = CasdaClass(server=emulator.url)
    client.login(emulator.username, password=emulator.password)
    return client


# --- drop-in compatibility -------------------------------------------------------------------

@pytest.mark.parametrize("name", DROP_IN_METHODS)
def test_every_astroquery_method_accepts_the_same_arguments(name):
    """Each parameter of astroquery.casda's method exists here with the same default."""
    theirs = inspect.signature(getattr(AstroqueryCasdaClass, name)).parameters
    ours = inspect.signature(getattr(CasdaClass, name)).parameters
    for param in theirs.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        assert param.name in ours or any(p.kind == p.VAR_KEYWORD for p in ours.values()), param.name
        if param.name in ours and param.default is not param.empty:
            assert ours[param.name].default == param.default, param.name


def test_config_items_keep_astroquery_names():
    for item in ("server", "timeout", "poll_interval", "soda_base_url", "login_url", "username"):
        assert hasattr(conf, item)


def test_the_singleton_targets_production_by_default():
    assert Casda.endpoints.sia2_url == "https://casda.csiro.au/casda_vo_tools/sia2/query"
    assert Casda.endpoints.datalink_url == "https://data.csiro.au/casda_vo_proxy/vo/datalink/links"


def test_environments_are_chosen_by_configuration():
    with conf.set_temp("environment", "test"):
        assert CasdaClass().endpoints.vo_proxy == "https://daptst.csiro.au/casda_vo_proxy/vo/"


def test_query_payload_is_returned_without_sending(emulator):
    client = CasdaClass(server=emulator.url)
    start = len(emulator.request_log)
    payload = client.query_region("333.9 0.0", radius=30 * u.arcsec, get_query_payload=True)
    assert payload["POS"] in ("CIRCLE 333.9 0 0.0083333333", ["CIRCLE 333.9 0 0.0083333333"])
    assert emulator.request_log[start:] == []


def test_query_region_returns_a_table_like_astroquery(emulator):
    client = CasdaClass(server=emulator.url)
    table = client.query_region(SkyCoord(187.5, -45.0, unit="deg"), radius=1 * u.deg)
    assert isinstance(table, Table) and len(table) > 0
    assert {"obs_publisher_did", "access_url", "obs_release_date"} <= set(table.colnames)
    SkyCoord(table["s_ra"], table["s_dec"])  # units are usable as they are


def test_query_region_async_returns_the_response(emulator):
    client = CasdaClass(server=emulator.url)
    response = client.query_region_async("187.5 -45.0", radius=1 * u.deg, cache=False)
    assert response.status_code == 200 and b"VOTABLE" in response.content


def test_filter_out_unreleased_drops_embargoed_and_unreleased(emulator):
    client = CasdaClass(server=emulator.url)
    table = client.query_tap("SELECT obs_publisher_did, obs_release_date FROM ivoa.obscore")
    released = client.filter_out_unreleased(table)
    dates = [str(d) for d in released["obs_release_date"]]
    assert 0 < len(released) < len(table)
    assert all(d and not d.startswith("2099") for d in dates)


# --- login -----------------------------------------------------------------------------------

def test_wrong_password_raises_login_error_with_the_server_answer(emulator):
    client = CasdaClass(server=emulator.url)
    with pytest.raises(CasdaLoginError, match="401") as excinfo:
        client.login(emulator.username, password="not-the-password")
    assert isinstance(excinfo.value, LoginError)
    assert "not-the-password" not in str(excinfo.value)


def test_password_from_the_environment(emulator, monkeypatch):
    monkeypatch.setenv("CASDA_USER", emulator.username)
    monkeypatch.setenv("CASDA_PASSWORD", emulator.password)
    client = CasdaClass(server=emulator.url)
    client.login()
    assert client.authenticated()


def test_logout_forgets_the_credentials(casda, emulator):
    casda.logout()
    table = casda.query_sbid_images(609)
    with pytest.raises(NotLoggedInError):
        casda.stage_data(table)


def test_repr_never_shows_the_password(casda, emulator):
    assert emulator.password not in repr(casda)
    assert emulator.username in repr(casda)


# --- the whole path ----------------------------------------------------------------------------

def test_stage_and_download_verified_files(casda, emulator, tmp_path):
    images = casda.query_sbid_images(609)
    urls = casda.stage_data(images)
    assert len(urls) == 2 * len(images)
    paths = casda.download_files(urls, savedir=tmp_path)
    data_files = [p for p in paths if not p.endswith(".checksum")]
    assert len(data_files) == len(images)
    for path in data_files:
        expected = parse_checksum(open(path + ".checksum").read())
        assert checksum_of_file(path)[1] == expected


def test_fifty_positions_across_three_images_is_one_job_and_one_datalink_request(casda, emulator):
    images = casda.query_sbid_images(609, subtypes=None)
    images = images[images["dataproduct_subtype"] != "spectral.restored.3d"][:3]
    assert len(images) == 3
    centre = SkyCoord(images[0]["s_ra"], images[0]["s_dec"], unit="deg")
    offsets = np.linspace(-0.05, 0.05, 50)
    positions = SkyCoord(centre.ra + offsets * u.deg, centre.dec + offsets[::-1] * u.deg)
    start = len(emulator.request_log)
    jobs = casda.cutout(images, coordinates=positions, radius=20 * u.arcsec, wait=False)
    assert len(jobs) == 1
    served = emulator.request_log[start:]
    assert len([r for r in served if "datalink/links" in r.path]) == 1
    creates = [r for r in served if r.method == "POST" and r.path.rstrip("/").endswith("data/async")]
    assert len(creates) == 1
    jobs[0].wait()
    labels = casda.cutout_table(jobs[0])
    assert len(labels) == 150
    assert set(labels["product_id"]) == set(images["obs_publisher_did"])
    assert all(labels["region"])


def test_cutout_of_a_source_list_file(casda, emulator, tmp_path):
    image = casda.query_sbid_images(609)[:1]
    components = casda.query_components(sbid=609, flux_min=500)
    source_list = tmp_path / "sources.txt"
    source_list.write_text("# bright sources\n" + "\n".join(
        f"{ra} {dec}" for ra, dec in zip(components["ra_deg_cont"], components["dec_deg_cont"])))
    urls = casda.cutout(image, coordinates=source_list, radius=30 * u.arcsec)
    assert len(urls) == 2 * len(components)


def test_spectra_from_a_cube(casda, emulator, tmp_path):
    cubes = casda.query_sbid_images(609, subtypes=("spectral.restored.3d",))
    centre = SkyCoord(cubes[0]["s_ra"], cubes[0]["s_dec"], unit="deg")
    urls = casda.spectra(cubes, centre, 20 * u.arcsec)
    names = [os.path.basename(u) for u in urls]
    assert any(n.startswith("spectrum-") and n.endswith(".fits") for n in names)


def test_a_job_resumes_from_its_url_in_a_new_client(casda, emulator, tmp_path):
    images = casda.query_sbid_images(609)
    [job] = casda.stage_data(images, wait=False)
    fresh = CasdaClass(server=emulator.url)
    resumed = fresh.load_job(job.url)
    resumed.wait()
    assert resumed.phase == "COMPLETED"
    manifest = fresh.download(resumed, tmp_path)
    assert len(manifest.paths) == len(images)
    assert (tmp_path / "casda_manifest.ecsv").exists()


def test_embargoed_product_needs_project_membership(casda, emulator):
    embargoed = casda.query_tap("SELECT * FROM ivoa.obscore WHERE obs_release_date LIKE '2099%'")
    assert len(embargoed) > 0
    assert casda.stage_data(embargoed[:1])  # the built-in user is a member

    emulator.add_user("outsider", "outsider-password", projects=())
    outsider = CasdaClass(server=emulator.url)
    outsider.login("outsider", password="outsider-password")
    with pytest.raises(NoAccessError) as excinfo:
        outsider.stage_data(embargoed[:1])
    assert "permission" in str(excinfo.value)


# --- credentials stay where they belong ---------------------------------------------------------

def test_credentials_reach_only_the_proxy(casda, emulator, tmp_path):
    images = casda.query_sbid_images(609)
    casda.download_files(casda.cutout(images[:1], coordinates="187.5 -45.0"), savedir=tmp_path)
    authenticated = [r for r in emulator.request_log if r.user is not None]
    assert authenticated, "the proxy was used"
    assert all(r.path.startswith("/casda_vo_proxy/vo/") for r in authenticated)


def test_credentials_never_appear_in_debug_logs(emulator, caplog, tmp_path):
    from astroquery import log as astroquery_log
    client = CasdaClass(server=emulator.url)
    previous = astroquery_log.level
    astroquery_log.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG):
            client.login(emulator.username, password=emulator.password)
            images = client.query_sbid_images(609)
            client.download_files(client.stage_data(images[:1]), savedir=tmp_path)
    finally:
        astroquery_log.setLevel(previous)
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    import base64
    basic = base64.b64encode(f"{emulator.username}:{emulator.password}".encode()).decode()
    assert emulator.password not in text and basic not in text


# --- bad input is refused before anything is sent ------------------------------------------------

BAD_INPUT = [
    ("unparsable coordinates", dict(coordinates="not a position"), InvalidRegionError),
    ("negative radius", dict(coordinates="187.5 -45", radius=-1 * u.arcmin), InvalidRegionError),
    ("radius over 10 degrees", dict(coordinates="187.5 -45", radius=11 * u.deg), InvalidRegionError),
    ("band with mixed units", dict(band=[1 * u.GHz, 0.2 * u.m]), InvalidSpectralRangeError),
    ("band with wrong units", dict(band=[1 * u.kg, 2 * u.kg]), InvalidSpectralRangeError),
    ("channel not two integers", dict(channel=(1.5, 3)), InvalidSpectralRangeError),
    ("channel of three values", dict(channel=(1, 2, 3)), InvalidSpectralRangeError),
]


@pytest.mark.parametrize("label, kwargs, error", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_cutout_input_is_refused_before_sending(casda, emulator, label, kwargs, error):
    table = casda.query_sbid_images(609)
    start = len(emulator.request_log)
    with pytest.raises(error) as excinfo:
        casda.cutout(table, **kwargs)
    assert isinstance(excinfo.value, (InvalidQueryError, ValueError))
    assert emulator.request_log[start:] == []


def test_empty_table_and_table_without_access_url(casda, emulator):
    start = len(emulator.request_log)
    assert casda.stage_data(Table(names=["access_url"], dtype=[str])) == []
    with pytest.raises(InvalidTableError):
        casda.stage_data(Table({"s_ra": [1.0]}))
    assert emulator.request_log[start:] == []


def test_staging_without_login(emulator):
    client = CasdaClass(server=emulator.url)
    table = client.query_sbid_images(609)
    start = len(emulator.request_log)
    with pytest.raises(NotLoggedInError) as excinfo:
        client.stage_data(table)
    assert isinstance(excinfo.value, ValueError)  # as astroquery.casda raised
    assert emulator.request_log[start:] == []


def test_unknown_collection_type(emulator):
    client = CasdaClass(server=emulator.url)
    start = len(emulator.request_log)
    with pytest.raises(InvalidQueryError):
        client.query_region("187.5 -45", dataproduct_type="spectrum")
    assert emulator.request_log[start:] == []


def test_logged_in_queries_see_embargoed_catalogue_rows_of_my_projects(casda, emulator):
    anonymous = CasdaClass(server=emulator.url)
    query = "SELECT COUNT(*) AS n FROM casda.continuum_component"
    assert casda.query_tap(query)["n"][0] > anonymous.query_tap(query)["n"][0]


def test_authenticated_query_without_login_is_refused_before_sending(emulator):
    client = CasdaClass(server=emulator.url)
    start = len(emulator.request_log)
    with pytest.raises(NotLoggedInError):
        client.query_tap("SELECT TOP 1 * FROM ivoa.obscore", authenticated=True)
    assert emulator.request_log[start:] == []


def test_presigned_signatures_stay_out_of_urllib3_debug_logs(casda, emulator, caplog, tmp_path):
    emulator.set_options(href_style="presigned")
    urls = casda.stage_data(casda.query_sbid_images(609))
    signatures = [u.split("X-Amz-Signature=")[1].split("&")[0] for u in urls]
    with caplog.at_level(logging.DEBUG, logger="urllib3"):
        casda.download_files(urls, savedir=tmp_path)
    assert "X-Amz-Signature" not in caplog.text
    assert not any(signature in caplog.text for signature in signatures)
    assert "GET /download/s3/" in caplog.text   # the request lines are still logged


def test_cutout_labels_name_the_right_region_when_some_regions_miss(casda, emulator):
    """Each file is labelled with the region it came from; misses are reported, not returned."""
    first = casda.query_sbid_images(609)
    second = casda.query_sbid_images(2338)
    images = Table(np.concatenate([first.as_array(), second.as_array()]))
    centres = SkyCoord([first[0]["s_ra"], second[0]["s_ra"]], [first[0]["s_dec"], second[0]["s_dec"]],
                       unit="deg")
    [job] = casda.cutout(images, coordinates=centres, radius=30 * u.arcsec, wait=False)
    job.wait()
    labels = casda.cutout_table(job)
    assert len(labels) == 2 and len(job.error_files()) == 2
    by_product = {row["product_id"]: row["region"] for row in labels}
    assert by_product[first[0]["obs_publisher_did"]].startswith(
        f"CIRCLE {first[0]['s_ra']:.4f}"[:12])
    assert by_product[second[0]["obs_publisher_did"]].startswith(
        f"CIRCLE {second[0]['s_ra']:.4f}"[:12])


def test_box_and_polygon_work_the_astroquery_way(emulator):
    """astroquery ignores its default radius when a box is given; so do we."""
    client = CasdaClass(server=emulator.url)
    box = client.query_region("187.5 -45.0", width=0.5 * u.deg, height=0.5 * u.deg, get_query_payload=True)
    assert str(box["POS"]).startswith("RANGE ")
    polygon = client.query_region(None, polygon=["187 -45.5", "188 -45.5", "187.5 -44.5"],
                                  get_query_payload=True)
    assert str(polygon["POS"]).startswith("POLYGON ")


def test_jobs_handed_back_follow_the_configured_polling(casda, emulator, fake_time):
    emulator.set_options(job_progression="polls")   # one phase per look: no wall-clock waits
    [job] = casda.stage_data(casda.query_sbid_images(609), wait=False)
    with conf.set_temp("poll_first", 0.25), conf.set_temp("poll_interval", 0.1):
        assert job.wait(sleep=fake_time.sleep, clock=fake_time.clock) == "COMPLETED"
    assert len(fake_time.sleeps) >= 3 and set(fake_time.sleeps) == {0.1}   # the cap, even below poll_first


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_a_tap_answer_that_breaks_off_mid_parse_is_asked_for_again(emulator, kind, fake_time):
    """TAP results stream into the parser; a body cut short is sent for again, whole, once,
    after one backoff of the transport's policy (shared with the adapter: one call, one budget)."""
    from astroquery_casda_ext.emulator import FaultRule
    from astroquery_casda_ext.transport import mount_api_retries
    client = CasdaClass(server=emulator.url)
    mount_api_retries(client._session, sleep=fake_time.sleep, clock=fake_time.clock, rand=lambda: 0.5)
    query = "SELECT * FROM ivoa.obscore"
    expected = len(client.query_tap(query, result_format="votable"))   # one request, read whole
    start = len(emulator.request_log)
    emulator.add_fault(FaultRule(path=r"tap/sync$", kind=kind, after_bytes=20_000, times=1))
    assert len(client.query_tap(query, result_format="votable")) == expected
    sync_calls = [r for r in emulator.request_log[start:] if r.path.endswith("tap/sync")]
    assert len(sync_calls) == 2 and sync_calls[0].bytes_sent <= 20_000 < sync_calls[1].bytes_sent
    assert fake_time.sleeps == [0.5]


def test_login_stores_a_password_that_worked_in_astroquerys_keyring_entry(emulator, memory_keyring):
    client = CasdaClass(server=emulator.url)
    with pytest.raises(CasdaLoginError):
        client.login(emulator.username, password="wrong", store_password=True)
    assert memory_keyring.passwords == {}
    client.login(emulator.username, password=emulator.password, store_password=True)
    assert memory_keyring.passwords == {("astroquery:casda.csiro.au", emulator.username): emulator.password}


def test_a_cutout_job_loaded_by_url_labels_its_files_as_the_job_that_made_it(casda, emulator):
    """The regions and windows live on the job (read back from its document), so load_job keeps them."""
    images = casda.query_sbid_images(609, subtypes=("spectral.restored.3d",))[:1]
    centre = f"{images[0]['s_ra']} {images[0]['s_dec']}"
    [job] = casda.cutout(images, coordinates=[centre, "10.0 10.0"], radius=20 * u.arcsec,
                         channel=[(1, 1), (2, 2)], wait=False)
    job.wait()
    made_here = casda.cutout_table(job)
    resumed = CasdaClass(server=emulator.url).load_job(job.url)
    assert len(made_here) == 2 and all(made_here["region"]) and set(made_here["window"]) == {
        "CHANNEL 1 1", "CHANNEL 2 2"}
    assert [list(row) for row in casda.cutout_table(resumed)] == [list(row) for row in made_here]


def test_the_services_live_as_long_as_the_session_and_follow_the_login(emulator):
    client = CasdaClass(server=emulator.url)
    discovery, datalink = client._discovery, client._datalink()
    client.query_tap("SELECT TOP 1 * FROM ivoa.obscore")
    client.query_tap("SELECT TOP 2 * FROM ivoa.obscore")
    assert client._discovery is discovery and client._datalink() is datalink
    client.login(emulator.username, password=emulator.password)
    assert client._discovery is not discovery and client._datalink() is not datalink
    logged_in = client._discovery
    assert client._discovery is logged_in
    client.logout()
    assert client._discovery is not logged_in
