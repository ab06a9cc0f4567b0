"""The emulator's DataLink service over real HTTP: CASDA's row sets, both document
flavours, the fault rows, the anonymous row, and the tokens behind the rows."""
import io
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import astroquery.casda
import numpy as np
import pytest
import requests
from astropy.io.votable import parse
from pyvo.dal.adhoc import DatalinkResults

from astroquery_casda_ext.emulator.datalink_state import TOKEN_MODES, TokenStore

VOT = "{http://www.ivoa.net/xml/VOTable/v1.3}"
RECORDED = Path(astroquery.casda.__file__).parent / "tests" / "data"
NO_PERMISSION = "DefaultFault: Sorry, but you do not have permission to access this data product"
PAWSEY_NOTE = ("Note: Only users from within PSC network can access the data through this link. "
               "Only use if you currently have access to Pawsey facilities.")


# --- helpers ------------------------------------------------------------------------------

def released(product):
    if not product.release_date:
        return False
    return datetime.fromisoformat(product.release_date.replace("Z", "+00:00")) < datetime.now(timezone.utc)


def pick(emulator, kind, *, is_released=True):
    """The first product of ``kind`` whose release state is ``is_released``."""
    for product in emulator.holdings.products:
        if product.kind == kind and released(product) == is_released:
            return product
    raise AssertionError(f"the holdings have no {'released' if is_released else 'embargoed'} {kind} product")


def links_url(emulator, *, proxy=True):
    return emulator.url + ("casda_vo_proxy/vo/" if proxy else "casda_vo_tools/") + "datalink/links"


def fetch(emulator, ids, *, auth="builtin", proxy=True, method="GET", key="ID", extra=()):
    """One DataLink request; ``auth`` is "builtin", a (user, password) pair, or None."""
    credentials = (emulator.username, emulator.password) if auth == "builtin" else auth
    params = [(key, product_id) for product_id in ids] + list(extra)
    if method == "POST":
        response = requests.post(links_url(emulator, proxy=proxy), data=params, auth=credentials, timeout=30)
    else:
        response = requests.get(links_url(emulator, proxy=proxy), params=params, auth=credentials, timeout=30)
    assert response.status_code == 200, response.text
    return response


def rows(response):
    """The results table as dicts of str (content_length: int or None)."""
    table = parse(io.BytesIO(response.content)).get_first_table().to_table(use_names_over_ids=True)
    out = []
    for row in table:
        record = {}
        for name in table.colnames:
            value = row[name]
            if name == "content_length":
                record[name] = None if np.ma.is_masked(value) else int(value)
            else:
                record[name] = "" if np.ma.is_masked(value) else str(value)
        out.append(record)
    return out


def meta_resources(response):
    root = ET.fromstring(response.content)
    return [resource for resource in root.findall(f"{VOT}RESOURCE") if resource.get("type") == "meta"]


def input_params(resource):
    return [param.attrib for param in resource.find(f"{VOT}GROUP").findall(f"{VOT}PARAM")]


def param_value(resource, name):
    return next(param.get("value") for param in resource.findall(f"{VOT}PARAM") if param.get("name") == name)


def token_of_url(url):
    return url.split("?id=", 1)[1]


# --- the row set -------------------------------------------------------------------------------

def test_member_gets_the_six_rows_of_an_image_cube(emulator):
    cube = pick(emulator, "spectral")
    found = rows(fetch(emulator, [cube.product_id]))
    size = int(cube.obscore["access_estsize"]) * 1024
    assert [row["service_def"] for row in found] == [
        "", "", "async_service", "pawsey_async_service", "cutout_service", "spectrum_generation_service"]
    assert [row["description"] for row in found] == [
        "Download data product via web", "Download data at Pawsey Centre. " + PAWSEY_NOTE,
        "Scripted file access via Web", "Scripted file access via Pawsey Centre. " + PAWSEY_NOTE,
        "Scripted cut-out service", "Scripted spectrum generation service"]
    assert [row["semantics"] for row in found] == ["#this"] * 4 + ["#cutout", "#proc"]
    assert [row["content_length"] for row in found] == [size] * 4 + [None, None]
    assert {row["content_type"] for row in found} == {"application/fits"}
    assert {row["ID"] for row in found} == {cube.product_id}
    assert all(row["error_message"] == "" for row in found)
    assert found[0]["access_url"].startswith(emulator.url + "casda_data_access/data/sync?id=")
    assert found[1]["access_url"].startswith(emulator.url + "casda_data_access/data/sync/pawsey?id=")
    # The async rows carry the same tokens as the sync rows of the same mode.
    assert found[2]["authenticated_id_token"] == token_of_url(found[0]["access_url"])
    assert found[3]["authenticated_id_token"] == token_of_url(found[1]["access_url"])
    assert found[0]["authenticated_id_token"] == found[1]["authenticated_id_token"] == ""


def test_tokens_name_product_user_and_mode(emulator):
    cube = pick(emulator, "spectral")
    found = rows(fetch(emulator, [cube.product_id]))
    tokens = [found[2]["authenticated_id_token"], found[3]["authenticated_id_token"],
              found[4]["authenticated_id_token"], found[5]["authenticated_id_token"]]
    grants = [emulator.backend.tokens.resolve(token) for token in tokens]
    assert [grant.mode for grant in grants] == ["WEB", "INTERNAL", "CUTOUT", "GENERATED_SPECTRUM"]
    assert {grant.product_id for grant in grants} == {cube.product_id}
    assert {grant.user_id for grant in grants} == {emulator.backend.builtin_user.user_id}
    assert len(set(tokens)) == 4
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{64}", token) for token in tokens)


def test_each_request_mints_fresh_tokens_and_old_ones_stay_valid(emulator):
    cube = pick(emulator, "continuum")
    first = rows(fetch(emulator, [cube.product_id]))[2]["authenticated_id_token"]
    second = rows(fetch(emulator, [cube.product_id]))[2]["authenticated_id_token"]
    assert first != second
    assert emulator.backend.tokens.resolve(first).product_id == cube.product_id


def test_current_flavour_document(emulator):
    cube = pick(emulator, "spectral")
    response = fetch(emulator, [cube.product_id])
    assert response.headers["Content-Type"].startswith("text/xml")
    assert "Content-Disposition" not in response.headers
    assert response.text.startswith('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                                    f"<?xml-stylesheet href='{emulator.url}casda_vo_proxy/vo/votable.xsl'")
    root = ET.fromstring(response.content)
    info = root.find(f"{VOT}RESOURCE/{VOT}INFO")
    assert info.attrib == {"name": "standardID", "value": "ivo://ivoa.net/std/DataLink#links-1.1"}
    metas = meta_resources(response)
    assert [(meta.get("ID"), meta.get("name")) for meta in metas] == [
        ("pawsey_async_service", "DownloadToPawseyService"), ("async_service", "DownloadService"),
        ("cutout_service", "CASDA Image Generation Service"),
        ("spectrum_generation_service", "CASDA Spectrum Generation Service")]
    assert all(meta.find(f"{VOT}DESCRIPTION").text for meta in metas)
    for meta in metas:
        assert param_value(meta, "standardID") == "ivo://ivoa.net/std/SODA#async-1.0"
        assert param_value(meta, "accessURL") == emulator.url + "casda_data_access/data/async"
    cutout = input_params(metas[2])
    assert [param["name"] for param in cutout] == [
        "ID", "CIRCLE", "POLYGON", "BAND", "CHANNEL", "POL", "COORD"]
    channel = cutout[4]
    assert (channel["datatype"], channel["arraysize"], channel["unit"]) == ("int", "2", "pixel")
    assert (cutout[1]["xtype"], cutout[1]["arraysize"]) == ("circle", "3")
    assert cutout[0]["ref"] == "authenticatedIdToken"
    assert [param["name"] for param in input_params(metas[0])] == ["ID"]


def test_old_flavour_has_the_recorded_shape(emulator):
    emulator.set_options(datalink_flavour="old")
    cube = pick(emulator, "spectral")
    response = fetch(emulator, [cube.product_id])
    root = ET.fromstring(response.content)
    assert root.find(f"{VOT}RESOURCE/{VOT}INFO") is None
    assert [row["service_def"] for row in rows(response)] == [
        "", "", "async_service", "async_service", "cutout_service", "spectrum_generation_service"]
    recorded = ET.parse(RECORDED / "datalink.xml").getroot()
    recorded_metas = [r for r in recorded.findall(f"{VOT}RESOURCE") if r.get("type") == "meta"]
    ours = meta_resources(response)
    assert [meta.attrib for meta in ours] == [meta.attrib for meta in recorded_metas]
    assert all(meta.find(f"{VOT}DESCRIPTION") is None for meta in ours)
    for mine, theirs in zip(ours, recorded_metas):
        assert input_params(mine) == input_params(theirs)
        assert mine.find(f"{VOT}PARAM").attrib == theirs.find(f"{VOT}PARAM").attrib
    # The recorded table header, FIELD for FIELD.
    fields = [f.attrib for f in root.iter(f"{VOT}FIELD")]
    assert fields == [f.attrib for f in recorded.iter(f"{VOT}FIELD")]


@pytest.mark.parametrize("flavour", ["current", "old"])
def test_pyvo_reads_both_flavours(emulator, flavour):
    emulator.set_options(datalink_flavour=flavour)
    cube = pick(emulator, "spectral")
    session = requests.Session()
    session.auth = (emulator.username, emulator.password)
    results = DatalinkResults.from_result_url(f"{links_url(emulator)}?ID={cube.product_id}", session=session)
    assert len(results) == 6
    service = results.get_adhocservice_by_id("cutout_service")
    access = next(param for param in service.params if param.name == "accessURL")
    assert access.value == emulator.url + "casda_data_access/data/async"
    table = results.to_table()
    assert list(table["service_def"][4:]) == ["cutout_service", "spectrum_generation_service"]


def test_continuum_image_is_an_image_cube_too(emulator):
    image = pick(emulator, "continuum")
    assert [row["service_def"] for row in rows(fetch(emulator, [image.product_id]))][-2:] == [
        "cutout_service", "spectrum_generation_service"]


# --- several IDs, faults ---------------------------------------------------------------------

def test_several_ids_keep_request_order_and_list_each_service_once(emulator):
    first, second = pick(emulator, "spectral"), pick(emulator, "continuum")
    params = [("id", second.product_id.upper())]
    response = fetch(emulator, [first.product_id], extra=params)
    found = rows(response)
    assert [row["ID"] for row in found] == [first.product_id] * 6 + [second.product_id.upper()] * 6
    assert [meta.get("ID") for meta in meta_resources(response)] == [
        "pawsey_async_service", "async_service", "cutout_service", "spectrum_generation_service"]


def test_unknown_and_malformed_ids_get_fault_rows(emulator):
    response = fetch(emulator, ["cube-999999", "banana", "", "cube-"])
    assert "<TD>UsageFault: Invalid id </TD>" in response.text    # the blank ID, as vo_tools writes it
    found = rows(response)
    assert [(row["ID"], row["error_message"], row["semantics"]) for row in found] == [
        ("cube-999999", "NotFoundFault: cube-999999 cannot be found", "#error"),
        ("banana", "UsageFault: Invalid id banana", "#error"),
        ("", "UsageFault: Invalid id", "#error"),     # astropy strips the trailing blank
        ("cube-", "UsageFault: Invalid id cube-", "#error")]
    assert all(row["access_url"] == row["service_def"] == "" for row in found)


def test_no_id_describes_the_service(emulator):
    response = fetch(emulator, [])
    assert rows(response) == []
    (this,) = meta_resources(response)
    assert this.get("name") == "this"
    assert param_value(this, "standardID") == "ivo://ivoa.net/std/DataLink#links-1.1"
    assert param_value(this, "accessUrl") == links_url(emulator)
    assert [param["name"] for param in input_params(this)] == ["ID"]


def test_post_form_is_answered_like_get(emulator):
    cube = pick(emulator, "spectral")
    found = rows(fetch(emulator, [cube.product_id], method="POST"))
    assert len(found) == 6


@pytest.mark.parametrize("value", ["votable", "application/x-votable+xml", "text/xml"])
def test_responseformat_makes_an_attachment(emulator, value):
    cube = pick(emulator, "spectral")
    response = fetch(emulator, [cube.product_id], extra=[("RESPONSEFORMAT", value)])
    assert response.headers["Content-Type"].startswith("application/x-votable+xml")
    assert response.headers["Content-Disposition"] == 'attachment; filename="datalink_results.xml"'
    assert len(rows(response)) == 6


def test_unsupported_responseformat_is_an_error_votable(emulator):
    cube = pick(emulator, "spectral")
    response = fetch(emulator, [cube.product_id], extra=[("responseformat", "csv")])
    root = ET.fromstring(response.content)
    info = root.find(f"{VOT}RESOURCE/{VOT}INFO")
    assert (info.get("name"), info.get("value"), info.text) == (
        "QUERY_STATUS", "ERROR", "Unsupported RESPONSEFORMAT of 'csv'.")
    assert root.find(f"{VOT}RESOURCE").get("name") == "CASDA Data Link"


def test_size_limit_turns_web_rows_into_faults(emulator):
    limit = 0.000001
    emulator.set_options(datalink_size_limit_gb=limit)
    cube = pick(emulator, "spectral")
    found = rows(fetch(emulator, [cube.product_id]))
    message = f"DefaultFault: This option is unavailable due to the file size exceeding {limit:g} GB in size"
    assert [(row["error_message"], row["description"], row["semantics"]) for row in found[:3]] == [
        (message, "Download data product via web", "#error"),
        ("", "Download data at Pawsey Centre. " + PAWSEY_NOTE, "#this"),
        (message, "Scripted file access via Web", "#error")]
    assert [row["service_def"] for row in found[3:]] == [
        "pawsey_async_service", "cutout_service", "spectrum_generation_service"]


# --- who may see what --------------------------------------------------------------------------

def test_outsider_gets_one_error_row_with_the_user_id(emulator):
    user = emulator.add_user("outsider", "pw", projects=())
    embargoed = pick(emulator, "spectral", is_released=False)
    response = fetch(emulator, [embargoed.product_id], auth=("outsider", "pw"))
    found = rows(response)
    assert [(row["ID"], row["error_message"], row["semantics"]) for row in found] == [
        (str(user.user_id), NO_PERMISSION, "#error")]
    assert found[0]["ID"] != emulator.backend.builtin_user.user_id
    assert meta_resources(response) == []


def test_recorded_no_access_document_has_our_shape(emulator):
    emulator.add_user("outsider", "pw", projects=())
    embargoed = pick(emulator, "spectral", is_released=False)
    ours = ET.fromstring(fetch(emulator, [embargoed.product_id], auth=("outsider", "pw"), extra=[
        ("RESPONSEFORMAT", "votable")]).content)
    emulator.set_options(datalink_flavour="old")
    old = ET.fromstring(fetch(emulator, [embargoed.product_id], auth=("outsider", "pw")).content)
    recorded = ET.parse(RECORDED / "datalink_noaccess.xml").getroot()
    shape = lambda root: [(e.tag, {k: v for k, v in e.attrib.items()}) for e in root.iter()  # noqa: E731
                          if e.tag != f"{VOT}TD" and e.tag != f"{VOT}INFO"]
    assert shape(old) == shape(recorded)
    assert shape(ours) == shape(recorded)


def test_outsider_may_have_released_data(emulator):
    emulator.add_user("outsider", "pw", projects=())
    cube = pick(emulator, "spectral")
    found = rows(fetch(emulator, [cube.product_id], auth=("outsider", "pw")))
    assert len(found) == 6
    assert emulator.backend.tokens.resolve(found[2]["authenticated_id_token"]).user_id != \
        emulator.backend.builtin_user.user_id


def test_member_and_admin_see_embargoed_data(emulator):
    embargoed = pick(emulator, "spectral", is_released=False)
    assert embargoed.project_code in emulator.backend.builtin_user.projects
    assert len(rows(fetch(emulator, [embargoed.product_id]))) == 6
    emulator.backend.add_user("boss", "pw", admin=True)
    assert len(rows(fetch(emulator, [embargoed.product_id], auth=("boss", "pw")))) == 6


def test_mixed_access_answers_each_id(emulator):
    emulator.add_user("outsider", "pw", projects=())
    user_id = str(emulator.backend.authenticate("outsider", "pw").user_id)
    embargoed, cube = pick(emulator, "spectral", is_released=False), pick(emulator, "spectral")
    found = rows(fetch(emulator, [embargoed.product_id, cube.product_id], auth=("outsider", "pw")))
    assert [row["ID"] for row in found] == [user_id] + [cube.product_id] * 6


@pytest.mark.parametrize("is_released", [True, False])
def test_anonymous_caller_is_sent_to_the_proxy(emulator, is_released):
    product = pick(emulator, "spectral", is_released=is_released)
    response = fetch(emulator, [product.product_id], auth=None, proxy=False)
    assert f"<?xml-stylesheet href='{emulator.url}casda_vo_tools/votable.xsl'" in response.text
    assert rows(response) == [{
        "ID": product.product_id,
        "access_url": f"{emulator.url}casda_vo_proxy/vo/datalink/links?ID={product.product_id}",
        "service_def": "", "error_message": "", "description": "Authenticated Data Link",
        "semantics": "#this",
        "content_type": "application/x-votable+xml;content=datalink", "content_length": None,
        "authenticated_id_token": ""}]
    assert meta_resources(response) == []


def test_anonymous_caller_still_gets_fault_rows(emulator):
    found = rows(fetch(emulator, ["cube-999999"], auth=None, proxy=False))
    assert [row["error_message"] for row in found] == ["NotFoundFault: cube-999999 cannot be found"]


# --- the token store ---------------------------------------------------------------------------

def test_token_store_binds_and_forgets():
    store = TokenStore()
    tokens = {mode: store.mint("cube-1", "42", mode) for mode in TOKEN_MODES}
    assert len(set(tokens.values())) == len(TOKEN_MODES)
    for mode, token in tokens.items():
        grant = store.resolve(token)
        assert (grant.product_id, grant.user_id, grant.mode) == ("cube-1", "42", mode)
    assert store.resolve("not-a-token") is None
    with pytest.raises(ValueError, match="download mode"):
        store.mint("cube-1", "42", "FTP")
    store.clear()
    assert store.resolve(tokens["WEB"]) is None
