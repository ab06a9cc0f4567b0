"""The package's configuration: `Conf` and its one instance `conf` (astropy config items).

Kept out of the package's ``__init__`` because astropy's config machinery imports numpy and
astropy itself (0.2-0.4 s): ``casda --help`` and the emulator start without it, and
``astroquery_casda_ext.conf`` loads this module when first asked for.
"""
import functools

from astropy import config as _config

__all__ = ["Conf", "conf"]

# Every item belongs to the package, not to this module: astropy names a config file's
# section after an item's module, and users' astroquery_casda_ext.cfg files keep these items
# at the top level, where they were when this class lived in the package's __init__.
_item = functools.partial(_config.ConfigItem, module="astroquery_casda_ext")


class Conf(_config.ConfigNamespace):
    """Configuration parameters for `astroquery_casda_ext`.

    Names shared with ``astroquery.casda`` (``server``, ``timeout``, ``poll_interval``,
    ``soda_base_url``, ``login_url``, ``username``) keep their meaning.  Values are read
    when a call runs, so ``conf.set_temp`` works in scripts and tests.
    """

    environment = _item(
        'prod', "CASDA environment whose hosts to use: 'prod', 'at', 'test' or 'dev'. "
        "For 'prod' the URL items below are used as they are.")
    server = _item(
        'https://casda.csiro.au/casda_vo_tools/sia2/query',
        'Address of the CASDA SIA2 query service (anonymous).')
    tap_url = _item(
        'https://casda.csiro.au/casda_vo_tools/tap',
        'Address of the anonymous CASDA TAP service.')
    vo_proxy_url = _item(
        'https://data.csiro.au/casda_vo_proxy/vo/',
        'Base address of the authenticated CASDA VO proxy (TAP, SIA2, DataLink behind OPAL login).')
    soda_base_url = _item(
        'https://casda.csiro.au/casda_data_access/',
        'Address of the CASDA SODA server.')
    login_url = _item(
        'https://data.csiro.au/casda_vo_proxy/vo/tap/availability',
        'Address for test logins.')
    username = _item(
        '', 'Optional default username (ATNF OPAL login) for the CASDA archive.')
    timeout = _item(
        30, 'Time limit in seconds for connecting to and reading from CASDA servers.')
    poll_interval = _item(
        10.0, 'Longest wait in seconds between two looks at a running job; '
        'polling starts at poll_first and backs off to this.')
    poll_first = _item(
        0.5, 'First wait in seconds before looking at a job that was just started '
        '(and the shortest wait between two looks).')
    job_timeout = _item(
        86400.0, 'Seconds to wait for a staging or cutout job before giving up (0 = no limit). '
        'The job keeps running on the server and can be resumed by URL.')
    datalink_batch_size = _item(
        50, 'Product IDs sent in one DataLink request.')
    job_batch_size = _item(
        500, 'Most products put into one SODA job; larger selections are split over several jobs.')
    download_workers = _item(
        8, 'Files downloaded in parallel (8 keep a high-latency link busy with small files).')
    download_retries = _item(
        5, 'Retries per file on connection errors, timeouts, 429 and 5xx responses.')
    download_min_rate = _item(
        1000.0, 'Slowest average rate (bytes per second) a file transfer or a streamed TAP result '
        'may keep once download_grace seconds have passed; a slower one stops with an error (0 = no limit).')
    download_grace = _item(
        60.0, 'Seconds a file transfer or a streamed TAP result may take before download_min_rate applies.')
    request_retries = _item(
        5, 'Retries of a query, DataLink or job request when CASDA answers 429/5xx or the '
        'connection breaks (requests that are not safe to repeat are retried only on 429/503).')
    request_budget = _item(
        30.0, 'Longest time in seconds one query, DataLink or job request may take, retries and '
        'their waits included, before its failure is raised (0 = no limit beyond request_retries).')
    document_max_bytes = _item(
        64 << 20, 'Most bytes (after decompression) of a job, DataLink, metadata or error document; '
        'a longer answer stops with an error naming the URL.')
    table_max_bytes = _item(
        1 << 30, 'Most bytes (after decompression) of a TAP or SIA2 answer read whole into a Table; '
        'stream larger results to a file with query_tap(output=...).')
    unknown_phase_polls = _item(
        20, 'Looks at a job in a phase this client does not know before giving up with JobError '
        '(the phase is logged once and taken as not final until then).')


conf = Conf()
