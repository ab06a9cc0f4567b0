"""
astroquery_casda_ext: a client for the CSIRO ASKAP Science Data Archive (CASDA).

``from astroquery_casda_ext import Casda`` is a drop-in replacement for
``from astroquery.casda import Casda``.
"""
from astropy import config as _config

__version__ = "0.1.0"


class Conf(_config.ConfigNamespace):
    """Configuration parameters for `astroquery_casda_ext`.

    Names shared with ``astroquery.casda`` (``server``, ``timeout``, ``poll_interval``,
    ``soda_base_url``, ``login_url``, ``username``) keep their meaning.  Values are read
    when a call runs, so ``conf.set_temp`` works in scripts and tests.
    """

    environment = _config.ConfigItem(
        'prod', "CASDA environment whose hosts to use: 'prod', 'at', 'test' or 'dev'. "
        "For 'prod' the URL items below are used as they are.")
    server = _config.ConfigItem(
        'https://casda.csiro.au/casda_vo_tools/sia2/query',
        'Address of the CASDA SIA2 query service (anonymous).')
    tap_url = _config.ConfigItem(
        'https://casda.csiro.au/casda_vo_tools/tap',
        'Address of the anonymous CASDA TAP service.')
    vo_proxy_url = _config.ConfigItem(
        'https://data.csiro.au/casda_vo_proxy/vo/',
        'Base address of the authenticated CASDA VO proxy (TAP, SIA2, DataLink behind OPAL login).')
    soda_base_url = _config.ConfigItem(
        'https://casda.csiro.au/casda_data_access/',
        'Address of the CASDA SODA server.')
    login_url = _config.ConfigItem(
        'https://data.csiro.au/casda_vo_proxy/vo/tap/availability',
        'Address for test logins.')
    username = _config.ConfigItem(
        '', 'Optional default username (ATNF OPAL login) for the CASDA archive.')
    timeout = _config.ConfigItem(
        30, 'Time limit in seconds for connecting to and reading from CASDA servers.')
    poll_interval = _config.ConfigItem(
        10.0, 'Longest wait in seconds between two looks at a running job; '
        'polling starts at poll_first and backs off to this.')
    poll_first = _config.ConfigItem(
        0.5, 'First wait in seconds before looking at a job that was just started '
        '(and the shortest wait between two looks).')
    job_timeout = _config.ConfigItem(
        86400.0, 'Seconds to wait for a staging or cutout job before giving up (0 = no limit). '
        'The job keeps running on the server and can be resumed by URL.')
    datalink_batch_size = _config.ConfigItem(
        50, 'Product IDs sent in one DataLink request.')
    job_batch_size = _config.ConfigItem(
        500, 'Most products put into one SODA job; larger selections are split over several jobs.')
    download_workers = _config.ConfigItem(
        8, 'Files downloaded in parallel (8 keep a high-latency link busy with small files).')
    download_retries = _config.ConfigItem(
        5, 'Retries per file on connection errors, timeouts, 429 and 5xx responses.')
    download_min_rate = _config.ConfigItem(
        1000.0, 'Slowest average rate (bytes per second) a file transfer or a streamed TAP result '
        'may keep once download_grace seconds have passed; a slower one stops with an error (0 = no limit).')
    download_grace = _config.ConfigItem(
        60.0, 'Seconds a file transfer or a streamed TAP result may take before download_min_rate applies.')
    request_retries = _config.ConfigItem(
        5, 'Retries of a query, DataLink or job request when CASDA answers 429/5xx or the '
        'connection breaks (requests that are not safe to repeat are retried only on 429/503).')
    request_budget = _config.ConfigItem(
        30.0, 'Longest time in seconds one query, DataLink or job request may take, retries and '
        'their waits included, before its failure is raised (0 = no limit beyond request_retries).')
    document_max_bytes = _config.ConfigItem(
        64 << 20, 'Most bytes (after decompression) of a job, DataLink, metadata or error document; '
        'a longer answer stops with an error naming the URL.')
    table_max_bytes = _config.ConfigItem(
        1 << 30, 'Most bytes (after decompression) of a TAP or SIA2 answer read whole into a Table; '
        'stream larger results to a file with query_tap(output=...).')
    unknown_phase_polls = _config.ConfigItem(
        20, 'Looks at a job in a phase this client does not know before giving up with JobError '
        '(the phase is logged once and taken as not final until then).')


conf = Conf()

__all__ = ['Casda', 'CasdaClass', 'conf', 'Conf']
_FACADE = ('Casda', 'CasdaClass')


def __getattr__(name):
    # The façade, and with it astroquery.query (pyvo's registry, astropy's tables: 0.7 s), is
    # imported when first asked for, so that the emulator, the checksum module and the command
    # line's help start without it (PEP 562).
    if name in _FACADE:
        from . import core
        globals().update((key, getattr(core, key)) for key in _FACADE)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_FACADE))
