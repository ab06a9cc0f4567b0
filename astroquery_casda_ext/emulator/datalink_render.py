"""The DataLink document, shaped like ``casda_vo_tools``' (``DataLinkVoTableBuilder``).

Two flavours (``EmulatorOptions.datalink_flavour``):

``"current"`` (vo_tools v1.24+)
    a ``standardID`` INFO in the results RESOURCE; the Pawsey async row uses the service
    ``pawsey_async_service``; meta RESOURCEs carry a ``name`` and a DESCRIPTION; cutout and
    spectrum services advertise CIRCLE, POLYGON, BAND, CHANNEL (unit ``pixel``), POL, COORD.
``"old"`` (as recorded in astroquery's ``datalink.xml``)
    no INFO; both async rows say ``async_service``; three ``POS`` PARAMs, CHANNEL unit
    ``pixels``; meta RESOURCEs without name or DESCRIPTION.

Renderers take rows (``datalink_state.Row``) and plain values and return text.
"""
from xml.sax.saxutils import escape, quoteattr

__all__ = ["render_table", "render_services", "render_self_description", "render_document", "render_error",
           "SERVICES"]

SODA_ASYNC_STANDARD = "ivo://ivoa.net/std/SODA#async-1.0"

#: Meta RESOURCEs in the order vo_tools v1.24+ writes them: (ID, name, DESCRIPTION).
#: The download descriptions are vo_tools' ``datalink/service.authenticated.released.xml``.
SERVICES = (
    ("pawsey_async_service", "DownloadToPawseyService",
     "Asynchronous download of the file(s) to servers within the Pawsey Supercomputing Centre."),
    ("async_service", "DownloadService", "Asynchronous download of the file(s) to any server."),
    ("cutout_service", "CASDA Image Generation Service", "Generate a cutout image or cube"),
    ("spectrum_generation_service", "CASDA Spectrum Generation Service",
     "Generate a 1D spectrum for a specific region"),
)

GENERATED_FILE_SERVICES = frozenset({"cutout_service", "spectrum_generation_service"})

#: CIRCLE and POLYGON carry no ``unit`` at CASDA (``service.authenticated.released.xml``).
INPUT_PARAMS_CURRENT = (
    '<PARAM datatype="double" xtype="circle" name="CIRCLE" arraysize="3" value=""/>',
    '<PARAM datatype="double" xtype="polygon" name="POLYGON" arraysize="*" value=""/>',
    '<PARAM unit="m" datatype="double" xtype="interval" name="BAND" arraysize="2" value=""/>',
    '<PARAM unit="pixel" datatype="int" xtype="interval" name="CHANNEL" arraysize="2" value=""/>',
    '<PARAM datatype="char" name="POL" arraysize="*" value=""/>',
    '<PARAM datatype="char" name="COORD" arraysize="*" value=""/>',
)
INPUT_PARAMS_OLD = (
    '<PARAM datatype="char" xtype="circle" name="POS" arraysize="*"/>',
    '<PARAM datatype="char" xtype="range" name="POS" arraysize="*"/>',
    '<PARAM datatype="char" xtype="polygon" name="POS" arraysize="*"/>',
    '<PARAM unit="m" datatype="double" xtype="interval" name="BAND" arraysize="*"/>',
    '<PARAM unit="pixels" datatype="int" xtype="interval" name="CHANNEL" arraysize="*"/>',
    '<PARAM datatype="char" name="POL" arraysize="*"/>',
    '<PARAM datatype="char" name="COORD" arraysize="*"/>',
)

FIELDS = """\
            <FIELD datatype="char" name="ID" ucd="meta.id;meta.main" arraysize="*"/>
            <FIELD datatype="char" name="access_url" ucd="meta.ref.url" arraysize="*"/>
            <FIELD datatype="char" name="service_def" ucd="meta.ref" arraysize="*"/>
            <FIELD datatype="char" name="error_message" ucd="meta.code.error" arraysize="*"/>
            <FIELD datatype="char" name="description" ucd="meta.note" arraysize="*"/>
            <FIELD datatype="char" name="semantics" ucd="meta.code" arraysize="*"/>
            <FIELD datatype="char" name="content_type" ucd="meta.code.mime" arraysize="*"/>
            <FIELD unit="byte" datatype="long" name="content_length" ucd="phys.size;meta.file"/>
            <FIELD ID="authenticatedIdToken" datatype="char" name="authenticated_id_token" ucd="meta.id" \
arraysize="*"/>
"""


def _td(value):
    return "<TD/>" if value == "" else f"<TD>{escape(value)}</TD>"


def render_table(rows, flavour):
    """The results RESOURCE (always present, possibly with no rows)."""
    out = ['    <RESOURCE name="CASDA Datalink Result" type="results">']
    if flavour == "current":
        out.append('        <INFO name="standardID" value="ivo://ivoa.net/std/DataLink#links-1.1"/>')
    out += ["        <TABLE>", FIELDS.rstrip("\n"), "            <DATA>", "                <TABLEDATA>"]
    for row in rows:
        out.append("                    <TR>")
        out += [f"                        {_td(cell)}" for cell in row.cells()]
        out.append("                    </TR>")
    out += ["                </TABLEDATA>", "            </DATA>", "        </TABLE>", "    </RESOURCE>"]
    return out


def render_services(services, flavour, async_url):
    """One meta RESOURCE per service used, each once.

    vo_tools appends the service RESOURCEs once per requested ID, so a multi-ID answer
    repeats ``<RESOURCE ID="async_service">``.  Repeated XML IDs make the document invalid
    (astropy warns, pyvo keeps one), so the emulator writes each service once, in the
    v1.24 order.  Clients must not depend on either behaviour.
    """
    out = []
    for service_id, name, description in SERVICES:
        if service_id not in services:
            continue
        if flavour == "current":
            out.append(f'    <RESOURCE ID="{service_id}" name={quoteattr(name)} utype="adhoc:service" '
                       f'type="meta">')
            out.append(f"        <DESCRIPTION>{escape(description)}</DESCRIPTION>")
        else:
            out.append(f'    <RESOURCE ID="{service_id}" utype="adhoc:service" type="meta">')
        out.append(f'        <PARAM value="{SODA_ASYNC_STANDARD}" datatype="char" name="standardID" '
                   f'arraysize="*"/>')
        out.append(f"        <PARAM value={quoteattr(async_url)} datatype=\"char\" name=\"accessURL\" "
                   'arraysize="*"/>')
        out.append('        <GROUP name="inputParams">')
        out.append('            <PARAM value="" datatype="char" ref="authenticatedIdToken" name="ID" '
                   'arraysize="*"/>')
        if service_id in GENERATED_FILE_SERVICES:
            params = INPUT_PARAMS_CURRENT if flavour == "current" else INPUT_PARAMS_OLD
            out += [f"            {param}" for param in params]
        out += ["        </GROUP>", "    </RESOURCE>"]
    return out


def render_self_description(links_url, flavour):
    """The ``name="this"`` meta RESOURCE written when no ID was given."""
    version = "1.1" if flavour == "current" else "1.0"
    return [
        '    <RESOURCE utype="adhoc:service" name="this" type="meta">',
        f'        <PARAM value="ivo://ivoa.net/std/DataLink#links-{version}" datatype="char" '
        'name="standardID" arraysize="*"/>',
        # "accessUrl" (sic) is how vo_tools spells it.
        f'        <PARAM value={quoteattr(links_url)} datatype="char" name="accessUrl" arraysize="*"/>',
        '        <GROUP name="inputParams">',
        '            <PARAM value="" datatype="char" name="ID" arraysize="*"/>',
        "        </GROUP>",
        "    </RESOURCE>",
    ]


def render_document(stylesheet, body_lines):
    head = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            f"<?xml-stylesheet href='{stylesheet}' type='text/xsl' ?>\n\n"
            '<VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3" version="1.3">\n')
    return head + "\n".join(body_lines) + "\n</VOTABLE>\n"


def render_error(message):
    """vo_tools ``VotableError.reportError``: a bare QUERY_STATUS=ERROR VOTable."""
    return ('<?xml version="1.0"?>\n<VOTABLE version="1.3" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xmlns="http://www.ivoa.net/xml/VOTable/v1.3" xmlns:stc="http://www.ivoa.net/xml/STC/v1.30" >\n'
            "<RESOURCE name=\"CASDA Data Link\" type='results'>\n"
            f'<INFO name="QUERY_STATUS" value="ERROR">{escape(message)}</INFO>\n</RESOURCE>\n</VOTABLE>')
