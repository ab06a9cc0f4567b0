"""TAP async job documents (UWS 1.0 in the default namespace, as CASDA's UWS 4.1 library
writes them): the job, its parameters and results, the (empty) job list.

Renderers take a job record (``tap_state.TapJob``) and plain values and return bytes;
they never see a request.
"""
import datetime as _dt
from urllib.parse import quote

from .result_writers import _cdata, xml_escape

__all__ = ["tap_job", "tap_job_list", "tap_parameters", "tap_results", "uws_time"]


#: The root attributes of CASDA's TAP job documents, as recorded (tests/data/tap_async_*.xml):
#: UWS 4.1's ``XMLSerializer`` declares ``xs`` too and gives three schema locations.
_UWS_NAMESPACES = ('xmlns="http://www.ivoa.net/xml/UWS/v1.0" xmlns:xlink="http://www.w3.org/1999/xlink" '
                   'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
                   'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                   'xsi:schemaLocation="http://www.ivoa.net/xml/UWS/v1.0 http://www.ivoa.net/xml/UWS/v1.0 '
                   'http://www.w3.org/1999/xlink http://www.w3.org/1999/xlink.xsd '
                   'http://www.w3.org/2001/XMLSchema http://www.w3.org/2001/XMLSchema.xsd"')


def uws_time(moment):
    """A TAP job timestamp as CASDA's UWS 4.1 library writes it: ``yyyy-MM-ddTHH:mm:ss``.

    ``ISO8601Format`` with ``displayTimeZone = false`` and ``displayMilliseconds = false``:
    no milliseconds and no zone (the emulator writes UTC).
    """
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _uws_element(name, value):
    if value is None:
        return f'\t<{name} xsi:nil="true" />\n'
    return f"\t<{name}>{value}</{name}>\n"


def _result_href(result_url, style):
    # CASDA's UWS library passes every href through java.net.URLEncoder.
    if style == "encoded":
        return quote(result_url, safe="*-._").replace("%20", "+")
    return xml_escape(result_url)


def _parameters_xml(parameters, indent="\t"):
    lines = [f'{indent}\t<parameter id="{xml_escape(name)}">{_cdata(value)}</parameter>\n'
             for name, value in parameters.items()]
    return "".join(lines)


def _result_xml(job, job_url, href_style, indent):
    if job.phase != "COMPLETED" or job.result_path is None:
        return ""
    href = _result_href(job_url + "/results/result", href_style)
    return f'{indent}<result id="result" xlink:type="simple" xlink:href="{href}" />\n'


def tap_job(job, *, job_url, href_style):
    """The UWS document of a TAP async job (``job`` is a ``tap_state.TapJob``).

    Written as CASDA's UWS 4.1 library does (``XMLSerializer.getJob``): UWS 1.0 as the
    default namespace; jobId, ownerId, phase, ``quote xsi:nil``, startTime, endTime,
    executionDuration, destruction, parameters, results, in that order (no runId: it is
    null); ``<errorSummary>`` only on error; times by `uws_time`; and
    (``href_style="encoded"``) the result href percent-encoded whole.
    """
    body = [
        '<?xml version="1.0" encoding="UTF-8"?>\n', f"<job {_UWS_NAMESPACES}>\n",
        f"\t<jobId>{_cdata(job.job_id)}</jobId>\n",
        _uws_element("ownerId", None), _uws_element("phase", job.phase), _uws_element("quote", None),
        _uws_element("startTime", uws_time(job.start_time) if job.start_time else None),
        _uws_element("endTime", uws_time(job.end_time) if job.end_time else None),
        _uws_element("executionDuration", job.execution_duration),
        _uws_element("destruction", uws_time(job.destruction)),
        "\t<parameters>\n", _parameters_xml(job.parameters), "\t</parameters>\n",
        "\t<results>\n", _result_xml(job, job_url, href_style, "\t\t"), "\t</results>\n",
    ]
    if job.error is not None:
        body.append(f'\t<errorSummary type="FATAL" hasDetail="false">\n'
                    f"\t\t<message>{_cdata(job.error)}</message>\n\t</errorSummary>\n")
    body.append("</job>")
    return "".join(body).encode("utf-8")


def tap_job_list():
    """The job list CASDA shows everyone but its administrators: always empty."""
    return ('<uws:jobList xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:schemaLocation="http://www.ivoa.net/xml/UWS/v1.0 http://www.ivoa.net/xml/UWS/v1.0"> '
            "</uws:jobList>").encode("utf-8")


def tap_parameters(job):
    """``<parameters>`` of a TAP job on its own."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<parameters {_UWS_NAMESPACES}>\n{_parameters_xml(job.parameters, indent='')}</parameters>"
            ).encode("utf-8")


def tap_results(job, *, job_url, href_style):
    """``<results>`` of a TAP job on its own."""
    inner = _result_xml(job, job_url, href_style, "\t")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<results {_UWS_NAMESPACES}>\n{inner}</results>").encode("utf-8")
