"""Documents of the emulated SODA service, shaped like ``casda_data_access``'s.

UWS 1.0 job documents with the ``uws:`` prefix and CDATA values (``AccessJobManager``,
the recorded job documents in astroquery's test data), the exception text file, error
bodies, the service descriptor and VOSI capabilities, and result hrefs in each style
(plain, percent-encoded whole, S3-style presigned).  Renderers take plain values and
return text; they never see a request (absolute URLs come from a ``url(path)`` callable).
"""
import time
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from .soda_state import NO_RESULTS, S3_BUCKET, s3_path, sign

__all__ = ["format_time", "render_job", "render_parameters", "render_named_parameter", "render_results",
           "render_job_list", "error_summary_text", "exception_file_text", "ERROR_PAGE", "SERVICE_DESCRIPTOR",
           "capabilities_document", "s3_error_body", "href_maker"]

#: CASDA's recorded timestamps carry the Perth offset (AWST, no daylight saving).
AWST = timezone(timedelta(hours=8))

UWS_NAMESPACES = ('xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" xmlns:xlink="http://www.w3.org/1999/xlink" '
                  'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
                  'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"')
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
S3_EXPIRES = 604800


def format_time(epoch):
    """``yyyy-MM-dd'T'HH:mm:ss.SSS+0800`` as CASDA writes it."""
    moment = datetime.fromtimestamp(epoch, AWST)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0800"


def cdata(value):
    return "<![CDATA[" + str(value).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def param_value(values):
    """One value as is; several as Commons ``ArrayUtils.toString``: ``{a,b}``."""
    return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"


def nil_or(tag, value):
    if value is None:
        return f'    <uws:{tag} xsi:nil="true" />'
    return f"    <uws:{tag}>{value}</uws:{tag}>"


def render_parameter_lines(params, indent="        "):
    return [f'{indent}<uws:parameter id={quoteattr(key)}>{cdata(param_value(values))}</uws:parameter>'
            for key, values in params.items() if values]


def render_result_lines(results, href, indent="        "):
    return [f'{indent}<uws:result id={quoteattr(result.result_id)} xlink:type="simple" '
            f'xlink:href={quoteattr(href(result))} />' for result in results]


def render_job(job, href, *, version=None):
    """The job document, UWS 1.0 with the ``uws:`` prefix (UWS 1.1 ``version`` when asked)."""
    with job.lock:
        version_attribute = f' version="{version}"' if version else ""
        lines = [f"<uws:job {UWS_NAMESPACES}{version_attribute}>",
                 f"    <uws:jobId>{cdata(job.job_id)}</uws:jobId>",
                 '    <uws:runId xsi:nil="true" />', '    <uws:ownerId xsi:nil="true" />',
                 f"    <uws:phase>{job.phase}</uws:phase>", '    <uws:quote xsi:nil="true" />',
                 nil_or("startTime", format_time(job.created)),
                 nil_or("endTime", format_time(job.end_time) if job.end_time else None),
                 "    <uws:executionDuration>0</uws:executionDuration>",
                 nil_or("destruction", format_time(job.expires_at) if job.expires_at else None),
                 "    <uws:parameters>", *render_parameter_lines(job.params), "    </uws:parameters>",
                 "    <uws:results>", *render_result_lines(job.results, href), "    </uws:results>"]
        if job.error:
            lines += ['    <uws:errorSummary type="FATAL" hasDetail="false">',
                      f"        <uws:message>{cdata(job.error)}</uws:message>", "    </uws:errorSummary>"]
        else:
            lines.append('    <uws:errorSummary xsi:nil="true" />')
    return XML_DECLARATION + "\n".join(lines) + "\n</uws:job>"


def render_parameters(params):
    """``GET .../parameters``: the job's parameters on their own."""
    lines = render_parameter_lines(params, indent="    ")
    return (XML_DECLARATION + f"<uws:parameters {UWS_NAMESPACES}>\n" + "\n".join(lines)
            + ("\n" if lines else "") + "</uws:parameters>")


def render_named_parameter(name, values):
    """``GET .../parameters/<name>``: CASDA echoes the name upper-cased; nothing when unset."""
    if not values:
        return ""
    return ('<uws:parameter xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" '
            f"id={quoteattr(name.upper())}>{cdata(param_value(values))}</uws:parameter>")


def render_results(results, href):
    """``GET .../results``: the result list on its own."""
    lines = render_result_lines(results, href, indent="    ")
    return XML_DECLARATION + f"<uws:results {UWS_NAMESPACES}>\n" + "\n".join(lines) + "\n</uws:results>"


def render_job_list():
    """``GET data/async``: always empty, CASDA lists no owners' jobs."""
    return f'{XML_DECLARATION}<uws:jobList {UWS_NAMESPACES} name="CASDA SODA ASYNC">\n</uws:jobList>\n'


def error_summary_text(message):
    """The UWS library's ``ErrorSummary.toString()``."""
    return f'ERROR_SUMMARY {{type: FATAL; message: "{message}"; details: none}}'


def exception_file_text(job):
    """``DataAccessService.returnErrorFile`` with the parameters listed."""
    message = error_summary_text(job.error) if job.error else NO_RESULTS
    lines = [message, f"Request ID: {job.job_id}", "Parameters: "]
    lines += [f"{key} : " + "".join(" " + value for value in values) for key, values in job.params.items()]
    return "\n".join(lines) + "\n"


ERROR_PAGE = """<html>
<head>
\t<title>CSIRO Data Access Portal - CASDA Access Error</title>
</head>

<body>
\t<div id="wrapper">
\t\t<div id="content">
\t\t    <fieldset>
\t\t        <legend>Error</legend>
\t\t        <p>
\t\t            Your request could not be completed. Please contact the CASDA Support team.
\t\t        </p>
\t\t    </fieldset>
\t    </div>
    </div>
</body>
</html>
"""


SERVICE_DESCRIPTOR = """<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
\txmlns="http://www.ivoa.net/xml/VOTable/v1.3" >
\t<RESOURCE type="meta" utype="adhoc:service" name="this">
\t\t<PARAM name="standardID" datatype="char" arraysize="*"
\t\t\tvalue="ivo://ivoa.net/std/SODA#sync-1.0" />
\t\t<PARAM name="accessURL" datatype="char" arraysize="*"
\t\t\tvalue={sync_url} />
\t\t<GROUP name="inputParams">
\t\t\t<PARAM name="ID" ucd="meta.ref.url;meta.curation" datatype="char"
\t\t\t\tarraysize="*" value="" />
\t\t\t<PARAM name="POS" ucd="phys.angArea;obs" datatype="char"
\t\t\t\tarraysize="*" xtype="region" value="" />
\t\t\t<PARAM name="CIRCLE" ucd="phys.angArea;obs" unit="deg" datatype="double"
\t\t\t\tarraysize="3" xtype="circle" value="" />
\t\t\t<PARAM name="POLYGON" ucd="phys.angArea;obs" unit="deg" datatype="double"
\t\t\t\tarraysize="*" xtype="polygon" value="" />
\t\t\t<PARAM name="BAND" ucd="em.wl" unit="m" datatype="double"
\t\t\t\tarraysize="2" xtype="interval" value="" />
\t\t\t<PARAM name="TIME" ucd="time.interval;obs.exposure" unit="d"
\t\t\t\tdatatype="double" arraysize="2" xtype="interval" value="" />
\t\t\t<PARAM name="POL" ucd="meta.code;phys.polarization" datatype="char"
\t\t\t\tarraysize="*" value="" />
\t\t</GROUP>
\t</RESOURCE>
</VOTABLE>"""


JOB_ID_PARAM = ("jobId", "the data access job id", "required")
NAME_PARAM = ("name", "the parameter name", "required")


def _interface(url, query_types, result_type, params):
    """One ``<interface>`` of the async capability (``capabilities.xml.jsp``)."""
    lines = ['        <interface xsi:type="vod:ParamHTTP" role="std" version="1.0">',
             f'            <accessURL use="full">{escape(url)}</accessURL>']
    lines += [f"            <queryType>{query_type}</queryType>" for query_type in query_types]
    if result_type:
        lines.append(f"            <resultType>{result_type}</resultType>")
    for name, description, use in params:
        lines += [f'            <param use="{use}" std="true">', f"                <name>{name}</name>",
                  f"                <description>{description}</description>",
                  "                <ucd>meta.id;meta.main</ucd>",
                  "                <dataType>string</dataType>", "            </param>"]
    return lines + ["        </interface>"]


ASYNC_INTERFACES = (
    ("phase", ("GET",), "text/plain", (JOB_ID_PARAM,)),
    ("phase", ("POST",), None, (JOB_ID_PARAM, ("phase", "the phase", "required"))),
    ("owner", ("GET",), "application/json", (JOB_ID_PARAM,)),
    ("executionduration", ("GET",), "text/plain", (JOB_ID_PARAM,)),
    ("quote", ("GET",), "text/plain", (JOB_ID_PARAM,)),
    ("destruction", ("GET",), "text/plain", (JOB_ID_PARAM,)),
    ("error", ("GET",), "text/plain", (JOB_ID_PARAM,)),
    ("results", ("GET",), "application/xml", (JOB_ID_PARAM,)),
    ("parameters", ("GET", "POST"), "application/xml", (JOB_ID_PARAM, NAME_PARAM)),
    ("parameters/{name}", ("GET",), "application/xml", (JOB_ID_PARAM, NAME_PARAM)),
)


def capabilities_document(base):
    """VOSI capabilities of the SODA service at ``base`` (``.../data/``): sync and async (with
    each UWS sub-resource), as ``capabilities.xml.jsp``."""
    async_url = base + "async"
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0" '
             'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
             'xmlns:vod="http://www.ivoa.net/xml/VODataService/v1.1">']
    for name in ("capabilities", "availability"):
        lines += [f'    <capability standardID="ivo://ivoa.net/std/VOSI#{name}">',
                  '        <interface xsi:type="vod:ParamHTTP" version="1.0">',
                  f'            <accessURL use="full">{escape(base + name)}</accessURL>',
                  "        </interface>", "    </capability>"]
    lines += ['    <capability standardID="ivo://ivoa.net/std/SODA#sync-1.0">',
              '        <interface xsi:type="vod:ParamHTTP" role="std" version="1.0">',
              f'            <accessURL use="full">{escape(base + "sync")}</accessURL>',
              "            <queryType>GET</queryType>", "            <queryType>POST</queryType>",
              '            <param use="required" std="true">', "                <name>ID</name>",
              "                <description>publisher dataset identifier</description>",
              "                <ucd>meta.id;meta.main</ucd>", "                <dataType>string</dataType>",
              "            </param>", "        </interface>", "    </capability>",
              '    <capability standardID="ivo://ivoa.net/std/SODA#async-1.0">']
    lines += _interface(async_url, ("GET",), "application/xml", ((*JOB_ID_PARAM[:2], "optional"),))
    for suffix, query_types, result_type, params in ASYNC_INTERFACES:
        lines += _interface(f"{async_url}/{{jobId}}/{suffix}", query_types, result_type, params)
    lines += ["    </capability>", "</vosi:capabilities>"]
    return "\n".join(lines) + "\n"


def s3_error_body(code, message, key):
    """An S3 ``<Error>`` document (what a refused presigned download answers)."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message><Key>{escape(key)}</Key>"
            f"<BucketName>{S3_BUCKET}</BucketName><Resource>/{S3_BUCKET}/{escape(key)}</Resource>"
            f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>")


def presigned_url(url, secret, job_id, file_name, now):
    """An S3-style presigned URL whose query string carries significant percent-escapes."""
    disposition = quote(f'attachment; filename="{file_name}"', safe="")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    credential = quote(f"casda-emulator/{stamp[:8]}/ap-southeast-2/s3/aws4_request", safe="")
    query = (f"response-content-disposition={disposition}&X-Amz-Algorithm=AWS4-HMAC-SHA256"
             f"&X-Amz-Credential={credential}&X-Amz-Date={stamp}&X-Amz-Expires={S3_EXPIRES}"
             f"&X-Amz-SignedHeaders=host")
    signature = sign(secret, s3_path(job_id, file_name), query)
    return url(s3_path(job_id, quote(file_name)).lstrip("/")) + f"?{query}&X-Amz-Signature={signature}"


def href_maker(url, style, secret, job, now):
    """A function giving each `JobResult` its href in ``style``.

    ``plain`` ``<host>/download/web/<job>/<file>`` (``/pawsey/`` for Pawsey jobs); ``encoded``
    the same URL percent-encoded whole; ``presigned`` an S3-style URL signed with ``secret``.
    ``url(path)`` makes a server path absolute; ``now`` (seconds since the epoch) is when
    presigned URLs are signed.
    """
    area = "pawsey" if job.pawsey else "web"

    def href(result):
        if style == "presigned":
            return presigned_url(url, secret, job.job_id, result.file_name, now)
        plain = url(f"download/{area}/{job.job_id}/{quote(result.file_name)}")
        # Older CASDA ran every href through URLEncoder (the recorded completed_job.xml).
        return quote(plain, safe="") if style == "encoded" else plain
    return href
