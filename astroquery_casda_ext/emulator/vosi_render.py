"""VOSI documents shaped like CASDA's: availability, capabilities, the tableset, and the
stylesheet the result documents point at.

Renderers take plain values (the time the service came up, a service's base URL, the
TAP tables) and return bytes; they follow vo_tools' VOSI JSP templates and the recorded
``availability.xml``.
"""
import datetime as _dt

from .result_writers import xml_escape
from .schema import adql_datatype

__all__ = ["availability", "tap_capabilities", "sia2_capabilities", "datalink_capabilities", "vosi_tables",
           "VOTABLE_XSL"]


def availability(up_since, *, available=True, note=""):
    """The VOSI availability document (as the recorded ``availability.xml``)."""
    stamp = up_since.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{up_since.microsecond // 1000:03d}Z"
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<availability xmlns="http://www.ivoa.net/xml/VOSIAvailability/v1.0">\n'
        f"    <available>{'true' if available else 'false'}</available>\n"
        f"    <upSince>{stamp}</upSince>\n"
        f"    <note>{xml_escape(note)}</note>\n"
        "</availability>"
    ).encode("utf-8")


_CAPABILITIES_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<vosi:capabilities\n'
    '    xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0"\n{extra_ns}'
    '    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"\n'
    '    xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1">\n'
)


def _vosi_capability(standard_id, url):
    return (
        f'    <capability standardID="{standard_id}">\n'
        '        <interface xsi:type="vs:ParamHTTP" version="1.0" role="std">\n'
        f'            <accessURL use="full">\n                {url}\n            </accessURL>\n'
        "            <queryType>GET</queryType>\n            <resultType>application/xml</resultType>\n"
        "        </interface>\n    </capability>\n"
    )


def tap_capabilities(service_base):
    """VOSI capabilities of TAP at ``service_base`` (``.../tap``, no trailing slash)."""
    return (
        _CAPABILITIES_HEAD.format(extra_ns='    xmlns:tap="http://www.ivoa.net/xml/TAPRegExt/v1.0"\n')
        + _vosi_capability("ivo://ivoa.net/std/VOSI#capabilities", service_base + "/capabilities")
        + _vosi_capability("ivo://ivoa.net/std/VOSI#availability", service_base + "/availability")
        + _vosi_capability("ivo://ivoa.net/std/VOSI#tables", service_base + "/tables")
        + '    <capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tap:TableAccess">\n'
        '        <interface xsi:type="vs:ParamHTTP" version="1.0" role="std">\n'
        f'            <accessURL use="base">{service_base}</accessURL>\n'
        "            <queryType>GET</queryType>\n            <resultType>application/xml</resultType>\n"
        "        </interface>\n"
        '        <dataModel ivo-id="ivo://ivoa.net/std/ObsCore/v1.0">ObsCore 1.0</dataModel>\n'
        "        <language>\n            <name>ADQL</name>\n"
        '            <version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0</version>\n'
        "            <description>ADQL 2.0</description>\n        </language>\n"
        "        <outputFormat>\n            <mime>application/x-votable+xml</mime>\n"
        "            <alias>votable</alias>\n        </outputFormat>\n"
        "        <outputFormat>\n            <mime>text/csv;header=present</mime>\n"
        "            <alias>csv</alias>\n        </outputFormat>\n"
        "        <outputFormat>\n            <mime>text/tab-separated-values</mime>\n"
        "            <alias>tsv</alias>\n        </outputFormat>\n"
        "        <retentionPeriod>\n            <default>43200</default>\n            <hard>432000</hard>\n"
        "        </retentionPeriod>\n"
        "        <executionDuration>\n            <default>360000</default>\n"
        "            <hard>360000</hard>\n"
        "        </executionDuration>\n"
        '        <outputLimit>\n            <hard unit="row">20000000</hard>\n        </outputLimit>\n'
        "    </capability>\n</vosi:capabilities>\n"
    ).encode("utf-8")


def sia2_capabilities(service_base):
    """VOSI capabilities of SIA2 at ``service_base`` (``.../sia2``).

    CASDA's template reads a model key its service never fills, so its SIA2 accessURL is
    empty; the emulator writes the query URL, which pyvo's ``SIA2Service`` needs.
    """
    return (
        _CAPABILITIES_HEAD.format(extra_ns='    xmlns:sia="http://www.ivoa.net/xml/SIA/v1.1"\n')
        + _vosi_capability("ivo://ivoa.net/std/VOSI#capabilities", service_base + "/capabilities")
        + _vosi_capability("ivo://ivoa.net/std/VOSI#availability", service_base + "/availability")
        + '    <capability standardID="ivo://ivoa.net/std/SIA#query-2.0" xsi:type="sia:SimpleImageAccess">\n'
        '        <interface xsi:type="vs:ParamHTTP" version="2.0" role="std">\n'
        f'            <accessURL use="base">{service_base}/query</accessURL>\n'
        "            <queryType>GET</queryType>\n            <resultType>application/xml</resultType>\n"
        "        </interface>\n        <imageServiceType>Pointed</imageServiceType>\n"
        "        <maxImageExtent>\n            <long>10</long>\n            <lat>10</lat>\n"
        "        </maxImageExtent>\n    </capability>\n</vosi:capabilities>\n"
    ).encode("utf-8")


def datalink_capabilities(service_base):
    """VOSI capabilities of DataLink at ``service_base`` (``.../datalink``)."""
    return (
        _CAPABILITIES_HEAD.format(extra_ns="")
        + _vosi_capability("ivo://ivoa.net/std/VOSI#capabilities", service_base + "/capabilities")
        + _vosi_capability("ivo://ivoa.net/std/VOSI#availability", service_base + "/availability")
        + '    <capability standardID="ivo://ivoa.net/std/DataLink#links-1.1">\n'
        '        <interface version="1.0" xsi:type="vs:ParamHTTP" role="std">\n'
        f'            <accessURL use="base">{service_base}/links</accessURL>\n'
        "            <queryType>GET</queryType>\n            <queryType>POST</queryType>\n"
        "            <resultType>application/x-votable+xml;content=datalink</resultType>\n"
        '            <param use="required" std="true">\n                <name>ID</name>\n'
        "                <description>publisher dataset identifier</description>\n"
        "                <ucd>meta.id;meta.main</ucd>\n                <dataType>string</dataType>\n"
        "            </param>\n        </interface>\n    </capability>\n</vosi:capabilities>\n"
    ).encode("utf-8")


def _vosi_column(column):
    parts = [f"        <column>\n          <name>{xml_escape(column.name)}</name>\n"]
    if getattr(column, "description", ""):
        parts.append(f"          <description>{xml_escape(column.description)}</description>\n")
    for attribute in ("unit", "ucd", "utype"):
        value = getattr(column, attribute, None)
        if value:
            parts.append(f"          <{attribute}>{xml_escape(value)}</{attribute}>\n")
    # vo_tools TablesController.getColumn: a vs:TAPType holding the TAP_SCHEMA datatype,
    # with TAP_SCHEMA's size (fixed lengths only) as the ``size`` attribute.
    size = column.arraysize if column.arraysize and column.arraysize.isdigit() else None
    size_attribute = f' size="{size}"' if size else ""
    parts.append(f'          <dataType xsi:type="vs:TAPType"{size_attribute}>'
                 f"{adql_datatype(column)}</dataType>\n        </column>\n")
    return "".join(parts)


def vosi_tables(tables):
    """The VOSI tableset of ``tables`` (TableDef objects), grouped by schema in order."""
    schemas = {}
    for table in tables:
        schemas.setdefault(table.schema, []).append(table)
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n'
           '<vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" '
           'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" '
           'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n']
    for schema, members in schemas.items():
        out.append(f"  <schema>\n    <name>{xml_escape(schema)}</name>\n")
        for table in members:
            full_name = table.name if "." in table.name else f"{table.schema}.{table.name}"
            out.append(f'    <table type="output">\n      <name>{xml_escape(full_name)}</name>\n')
            if table.description:
                out.append(f"      <description>{xml_escape(table.description)}</description>\n")
            out.extend(_vosi_column(column) for column in table.columns)
            out.append("    </table>\n")
        out.append("  </schema>\n")
    out.append("</vosi:tableset>\n")
    return "".join(out).encode("utf-8")




#: A small stylesheet served as ``votable.xsl`` (the documents' ``xml-stylesheet`` target).
VOTABLE_XSL = b"""<?xml version="1.0" encoding="UTF-8"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:vo="http://www.ivoa.net/xml/VOTable/v1.3">
  <xsl:output method="html"/>
  <xsl:template match="/">
    <html><body>
      <xsl:for-each select="//vo:TABLE">
        <table border="1">
          <tr><xsl:for-each select="vo:FIELD"><th><xsl:value-of select="@name"/></th></xsl:for-each></tr>
          <xsl:for-each select="vo:DATA/vo:TABLEDATA/vo:TR">
            <tr><xsl:for-each select="vo:TD"><td><xsl:value-of select="."/></td></xsl:for-each></tr>
          </xsl:for-each>
        </table>
      </xsl:for-each>
    </body></html>
  </xsl:template>
</xsl:stylesheet>
"""
