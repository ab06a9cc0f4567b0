"""The emulator's SIA2 endpoint over HTTP (protocol §2.2): document shape, content types,
MAXREC/OVERFLOW, UsageFault error VOTables, the proxy, VOSI, and pyvo's SIA2Service."""
import io
import warnings
import xml.etree.ElementTree as ET

import pyvo
import requests
from astropy.io.votable import parse_single_table

VOT = "{http://www.ivoa.net/xml/VOTable/v1.3}"
CONE = "CIRCLE 187.5 -45 0.1"


def sia2_url(emulator, proxy=False):
    return emulator.url + ("casda_vo_proxy/vo/" if proxy else "casda_vo_tools/") + "sia2/query"


def sia2(emulator, params, method="GET", **kwargs):
    send = requests.get if method == "GET" else requests.post
    key = "params" if method == "GET" else "data"
    return send(kwargs.pop("url", sia2_url(emulator)), timeout=30, **{key: params}, **kwargs)


def table_of(response):
    return parse_single_table(io.BytesIO(response.content)).to_table()


def resource_of(response):
    return ET.fromstring(response.content).find(f"{VOT}RESOURCE")


def error_text(response):
    resource = resource_of(response)
    assert resource.get("name") == "CASDA SIAPv2 Result"
    assert resource.find(f"{VOT}TABLE") is None
    info = resource.find(f"{VOT}INFO")
    assert (info.get("name"), info.get("value")) == ("QUERY_STATUS", "ERROR")
    return info.text


def test_cone_search_document_is_shaped_like_casdas(emulator):
    response = sia2(emulator, {"POS": CONE})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/xml"
    assert "Content-Disposition" not in response.headers
    stylesheet = f"<?xml-stylesheet href='{emulator.url}casda_vo_tools/votable.xsl' type='text/xsl'?>"
    assert stylesheet in response.text
    resource = resource_of(response)
    assert (resource.get("name"), resource.get("type")) == ("CASDA SIAPv2 Result", "results")
    names = [info.get("name") for info in resource.findall(f"{VOT}INFO")]
    assert names == ["QUERY_STATUS", "Instrument", "Server", "Service Short Name", "Service Title",
                     "Identifier", "Service Publisher", "Further Information", "Contact Person", "Copyright",
                     "SIAP  query", "Execution Time", "Datetime Requested", "Table Name", "Table Description",
                     "Table Long Description"]
    assert resource.find(f"{VOT}INFO[@name='SIAP  query']").get("value") == "POS=" + CONE
    assert resource.find(f"{VOT}INFO[@name='Table Name']").get("value") == "ivoa.obscore"
    assert resource.find(f"{VOT}INFO[@name='Table Description']").get("value") == "null"


def test_single_circle_puts_distance_first_and_sorts_on_it(emulator):
    table = table_of(sia2(emulator, {"POS": CONE}))
    assert table.colnames[0] == "distance"
    assert len(table) > 0
    assert list(table["distance"]) == sorted(table["distance"])
    assert set(table["dataproduct_type"]) <= {"cube", "image", "visibility"}
    assert table["access_url"][0].startswith(emulator.url + "casda_vo_proxy/vo/datalink/links?ID=cube-")


def test_post_gives_the_same_rows(emulator):
    get = table_of(sia2(emulator, {"POS": CONE}))
    post = table_of(sia2(emulator, {"POS": CONE}, method="POST"))
    assert list(get["obs_publisher_did"]) == list(post["obs_publisher_did"])


def test_responseformat_makes_an_attachment(emulator):
    response = sia2(emulator, {"POS": CONE, "RESPONSEFORMAT": "votable"})
    assert response.headers["Content-Type"] == "application/x-votable+xml"
    assert response.headers["Content-Disposition"] == 'attachment; filename="sia2_results.xml"'
    assert len(table_of(response)) > 0


def test_maxrec_truncates_with_overflow_after_the_table(emulator):
    response = sia2(emulator, {"POS": CONE, "MAXREC": "1"})
    assert len(table_of(response)) == 1
    assert response.text.endswith('</TABLE>\r\n<INFO name="QUERY_STATUS" value="OVERFLOW" />\r\n'
                                  "</RESOURCE>\r\n</VOTABLE>\r\n")


def test_nothing_there_is_an_empty_ok_table(emulator):
    response = sia2(emulator, {"POS": "CIRCLE 10 10 0.1"})
    assert len(table_of(response)) == 0
    assert resource_of(response).find(f"{VOT}INFO").get("value") == "OK"


def test_unknown_parameter_is_a_usage_fault_with_http_200(emulator):
    response = sia2(emulator, {"POS": CONE, "FOO": "1"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/xml"
    assert error_text(response) == "UsageFault: Invalid parameter name FOO"


def test_exponent_in_pos_is_refused_as_at_casda(emulator):
    response = sia2(emulator, {"POS": "CIRCLE 333.9 2.3e-06 0.5"})
    assert error_text(response).startswith("UsageFault: Invalid POS value CIRCLE 333.9 2.3e-06 0.5")
    assert response.text.startswith('<?xml version="1.0"?>\r\n<VOTABLE version="1.3"')


def test_proxy_needs_a_login_and_then_serves_the_same_search(emulator):
    url = sia2_url(emulator, proxy=True)
    assert sia2(emulator, {"POS": CONE}, url=url).status_code == 401
    response = sia2(emulator, {"POS": CONE}, url=url, auth=(emulator.username, emulator.password))
    assert f"<?xml-stylesheet href='{emulator.url}casda_vo_proxy/vo/votable.xsl'" in response.text
    assert len(table_of(response)) == len(table_of(sia2(emulator, {"POS": CONE})))


def test_capabilities_name_the_query_endpoint(emulator):
    response = requests.get(emulator.url + "casda_vo_tools/sia2/capabilities", timeout=10)
    assert response.headers["Content-Type"].startswith("application/xml")
    assert f'<accessURL use="base">{sia2_url(emulator)}</accessURL>' in response.text
    assert 'standardID="ivo://ivoa.net/std/SIA#query-2.0"' in response.text


def test_pyvo_sia2_service_finds_the_query_endpoint_and_searches(emulator):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # CASDA's capabilities use xsi:type="sia:SimpleImageAccess" and SIA elements that
        # pyvo does not model: it warns about them, and carries on.
        service = pyvo.dal.SIA2Service(emulator.url + "casda_vo_tools/sia2")
    expected = ("sia:SimpleImageAccess", "Unknown element")
    assert all(any(text in str(w.message) for text in expected) for w in caught)
    assert service.query_ep == sia2_url(emulator)
    results = service.search(pos=(187.5, -45.0, 0.1), maxrec=3)
    table = results.to_table()
    assert 0 < len(table) <= 3
    assert str(table["obs_publisher_did"][0]).startswith("cube-")


def test_other_constraints_reach_the_query(emulator):
    table = table_of(sia2(emulator, {"COLLECTION": "EMU Pilot Survey", "DPTYPE": "cube"}))
    assert len(table) > 0
    assert set(table["obs_collection"]) == {"EMU Pilot Survey"}
    overlapping = table_of(sia2(emulator, {"BAND": "0.3 0.31"}))
    assert len(overlapping) > 0
    assert all(row["em_min"] <= 0.31 and row["em_max"] >= 0.3 for row in overlapping)
