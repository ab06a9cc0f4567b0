"""The `Casda` façade: a drop-in superset of ``astroquery.casda.Casda``.

Each public method validates its input, then delegates in a few lines to the module that
does the work (see ``docs/internals.rst``): `discovery` (SIA2, TAP), `access` (DataLink
tokens), `jobs` (SODA/UWS), `download`, `credentials`.
"""
import dataclasses
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import astropy.units as u
from astroquery import log
from astroquery.query import BaseVOQuery, QueryWithLogin

from . import conf
from .access import DataLinkClient, product_ids_from_table
# aliased: login()'s store_password argument (astroquery's name) would shadow it
from .credentials import (BasicAuthPair, Credentials, PasswordNotStoredWarning, ProxyAuth, find_password,
                          guard_session, keyring_advice, store_password as save_password)
from .discovery import Discovery
from .download import Downloader
from .download.naming import filename_from_url, safe_filename
from .endpoints import Endpoints
from .errors import (CasdaLoginError, InvalidInputError, InvalidTableError, InvalidURLError, NotLoggedInError,
                     QueryError, ServiceError, redact_url)
from .jobs import JobBatch, PollPolicy, SodaJob
from .settings import ClassSetting, SettingsMeta, effective
from .soda_params import SodaRequest, label_results, require_request
from .tap.rows import answer_table
from .transport import RetryPolicy, failure, failures_as, install_log_redaction, mount_api_retries

__all__ = ["Casda", "CasdaClass", "poll_policy"]

#: DataLink service names, by what a job does with the products.
STAGING_SERVICE = "async_service"
CUTOUT_SERVICE = "cutout_service"
SPECTRUM_SERVICE = "spectrum_generation_service"


def poll_policy(poll_interval=None):
    """The job polling policy of the configuration, its cap set to ``poll_interval`` if given.

    ``poll_interval`` defaults to the ``poll_interval`` in force (ours, or the
    ``[casda]`` section of ``astroquery.cfg``); the first wait never exceeds the cap.
    """
    cap = _positive_seconds(effective("poll_interval") if poll_interval is None else poll_interval,
                            "poll_interval")
    return PollPolicy.from_conf(cap)


def _positive_seconds(value, name):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise InvalidInputError(f"{name} must be > 0 seconds, got {value!r}")
    return seconds


def _sia2_url(value):
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise InvalidURLError(f"URL must be the http(s) address of CASDA's SIA2 query service, got {value!r}")
    return value


def _endpoints_for_sia2(url):
    """The endpoints implied by an ``astroquery.casda``-style ``URL`` (the SIA2 query address).

    The configured URL keeps the configured hosts; a URL with CASDA's path layout on
    another host (the emulator, a port forward) moves every service there; any other
    address replaces only the anonymous VO services.
    """
    configured = Endpoints.from_conf()
    if url == configured.sia2_url:
        return configured
    if "/casda_vo_tools/sia2/query" in url:
        return Endpoints.for_server(url.split("casda_vo_tools/sia2/query", 1)[0])
    base = url.rsplit("sia2/query", 1)[0] if "sia2/query" in url else url.rsplit("/", 1)[0] + "/"
    return dataclasses.replace(configured, vo_tools=base if base.endswith("/") else base + "/")


class _FacadeMeta(SettingsMeta, type(QueryWithLogin)):
    """astroquery's login metaclass, plus class-level assignment of the shared settings."""


class _QueryPayload(Exception):
    """Carries the request a query helper would send (``get_query_payload=True``)."""

    def __init__(self, payload):
        super().__init__("query payload")
        self.payload = payload


class _FacadeDiscovery(Discovery):
    """`Discovery` whose TAP queries honour astroquery's ``get_query_payload`` and ``cache``.

    pyvo has no cache, so a cacheable synchronous query is sent through the façade's
    ``_request`` (astroquery's cache) and the VOTable handed to pyvo's `TAPResults`.
    """

    def __init__(self, facade, *, cache=False, payload_only=False, **kwargs):
        super().__init__(**kwargs)
        self._facade = facade
        self._cache = cache
        self._payload_only = payload_only

    def tap(self, query, *, async_job=False, maxrec=None, authenticated=False):
        payload = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query}
        if maxrec is not None:
            payload["MAXREC"] = str(maxrec)
        if self._payload_only:
            raise _QueryPayload(payload)
        if async_job or not self._cache:
            return super().tap(query, async_job=async_job, maxrec=maxrec, authenticated=authenticated)
        return self._facade._cached_tap(payload, authenticated)


class CasdaClass(QueryWithLogin, BaseVOQuery, metaclass=_FacadeMeta):
    """Access to the CSIRO ASKAP Science Data Archive (CASDA).

    Typical use::

        from astroquery_casda_ext import Casda
        images = Casda.query_region('22h15m38.2s -45d50m30.5s', radius=0.5 * u.deg)
        Casda.login(username='me@example.org')
        urls = Casda.cutout(images[:3], coordinates=..., radius=2 * u.arcmin)
        Casda.download_files(urls, savedir='cutouts')

    Parameters
    ----------
    server : str, optional
        A base URL under which CASDA's whole path layout lives (``casda_vo_tools/``,
        ``casda_vo_proxy/vo/``, ``casda_data_access/``), such as the local emulator's
        ``emu.url``.  ``None`` (default) uses the hosts named by `~astroquery_casda_ext.conf`
        (production unless ``conf.environment`` says otherwise).
    """

    # QueryWithLogin comes first: astroquery's LoginABCMeta builds ``login()`` from
    # ``bases[0].login``, which BaseVOQuery does not have.

    # astroquery.casda's class attributes, read at each call (see settings.py): on the
    # class they change every instance, on an instance only that one.
    URL = ClassSetting(lambda self: (self.endpoints if self is not None else Endpoints.from_conf()).sia2_url,
                       _sia2_url, "Address of CASDA's SIA2 query service; setting it moves the services.")
    TIMEOUT = ClassSetting(lambda self: _positive_seconds(effective("timeout"), "timeout"),
                           lambda value: _positive_seconds(value, "TIMEOUT"),
                           "Seconds to connect to and read from CASDA (``conf.timeout``).")
    POLL_INTERVAL = ClassSetting(lambda self: _positive_seconds(effective("poll_interval"), "poll_interval"),
                                 lambda value: _positive_seconds(value, "POLL_INTERVAL"),
                                 "Longest wait between two looks at a job (``conf.poll_interval``).")

    def __init__(self, *, server=None):
        super().__init__()
        BaseVOQuery.__init__(self)  # BaseQuery.__init__ does not chain to it
        # astroquery's response hook logs request headers (Authorization included) at DEBUG.
        self._session.hooks["response"] = [_log_response]
        # the one retry layer: queries, DataLink and job requests are sent again when CASDA is
        # busy (429, 502-504) or a connection breaks, within conf.request_budget per request
        mount_api_retries(self._session)
        # the password goes only under the proxy prefix, checked again at every redirect hop
        guard_session(self._session, self._may_carry_credentials)
        install_log_redaction()
        self._server = server
        self._services = (None, None, None)   # (what they were built for, Discovery, DataLinkClient)
        self.USERNAME = effective("username")

    def __repr__(self):
        user = self._credentials.username if self._credentials else None
        return f"<CasdaClass server={self.endpoints.vo_tools!r} user={user!r}>"

    # --- plumbing -------------------------------------------------------------------------

    @property
    def _credentials(self):
        """The login in force, read from astroquery's login state: ``_authenticated`` and
        ``_auth`` (the ``(username, password)`` pair), which code written for
        astroquery.casda (and its tests) may set directly."""
        auth = self.__dict__.get("_auth")
        if not getattr(self, "_authenticated", False) or not auth or len(auth) != 2:
            return None
        return Credentials(auth[0], auth[1], self.__dict__.get("_auth_source", "argument"))

    @_credentials.setter
    def _credentials(self, credentials):
        if credentials is None:
            self.logout()
            return
        self._auth = BasicAuthPair(credentials.username, credentials.password)
        self._auth_source = credentials.source
        self._authenticated = True

    @property
    def endpoints(self):
        """The service URLs in force: from ``URL`` if assigned, else ``server``, else ``conf``."""
        assigned = self.__dict__.get("_setting_URL")
        if assigned is None:
            assigned = next((k.__dict__["_setting_URL"] for k in type(self).__mro__
                             if "_setting_URL" in k.__dict__), None)
        if assigned is not None:
            return _endpoints_for_sia2(assigned)
        return Endpoints.resolve(self._server)

    def _proxy_auth(self):
        """A callable giving per-URL credentials: only ever for the authenticated proxy."""
        if self._credentials is None:
            return None
        return ProxyAuth(self._credentials, self.endpoints.vo_proxy)

    def _may_carry_credentials(self, url):
        auth = self._proxy_auth()
        return auth is not None and auth.applies_to(url)

    def _built_services(self):
        """One `Discovery` (with its pyvo services) and one DataLink client for the session's
        life, as astroquery.ipac.irsa keeps its services; rebuilt only when the server, the
        login or the settings they were built with change."""
        endpoints = self.endpoints
        key = (endpoints, self._credentials, self.TIMEOUT, int(conf.datalink_batch_size))
        if self._services[0] != key:
            auth = self._proxy_auth()
            self._services = (key,
                              _FacadeDiscovery(self, session=self._session, endpoints=endpoints, auth=auth,
                                               timeout=self.TIMEOUT),
                              DataLinkClient(self._session, endpoints.datalink_url, auth=auth,
                                             batch_size=int(conf.datalink_batch_size), timeout=self.TIMEOUT))
        return self._services

    @property
    def _discovery(self):
        return self._built_services()[1]

    def _discovery_for(self, *, cache=False, get_query_payload=False):
        if not cache and not get_query_payload:
            return self._discovery     # the session's own, with its pyvo services
        return _FacadeDiscovery(self, cache=cache, payload_only=get_query_payload, session=self._session,
                                endpoints=self.endpoints, auth=self._proxy_auth(), timeout=self.TIMEOUT)

    def _query(self, method, *args, cache=False, get_query_payload=False, **kwargs):
        """Run a `Discovery` method with astroquery's ``cache`` and ``get_query_payload``."""
        discovery = self._discovery_for(cache=cache, get_query_payload=get_query_payload)
        try:
            return getattr(discovery, method)(*args, **kwargs)
        except _QueryPayload as request:
            return request.payload

    def _cached_tap(self, payload, authenticated):
        """A synchronous TAP query through astroquery's `_request` (and so its cache)."""
        url = (self.endpoints.proxy_tap_url if authenticated else self.endpoints.tap_url) + "/sync"
        auth = self._proxy_auth()(url) if authenticated else None
        with failures_as(url=url, what="CASDA TAP query"):
            response = self._request("POST", url, data=payload, auth=auth, timeout=self.TIMEOUT, cache=True)
        try:
            if response.status_code >= 400:
                raise failure(url=url, what="CASDA TAP query", response=response)
            return answer_table(response.content, "TAP", url=url)
        except QueryError:
            raise   # CASDA's answer to this query: the same query gets the same answer
        except ServiceError:
            # never replay a failed answer from the cache once CASDA is back
            self._last_query.request_file(self.cache_location).unlink(missing_ok=True)
            raise

    def _datalink(self):
        return self._built_services()[2]

    def _poll_policy(self, poll_interval=None):
        return poll_policy(self.POLL_INTERVAL if poll_interval is None else poll_interval)

    def _require_login(self):
        if self._credentials is None:
            raise NotLoggedInError("Credentials must be supplied to download CASDA image data. "
                                   "Call Casda.login() first.")

    # --- login ----------------------------------------------------------------------------

    def _login(self, username=None, *, password=None, store_password=False, reenter_password=False,
               password_file=None):
        """Log in to CASDA with an ATNF OPAL account, to access data and embargoed products.

        The password comes from, in order: ``password``, the ``CASDA_PASSWORD`` environment
        variable, ``password_file`` (refused if others can read it), the system keyring
        (service ``astroquery:casda.csiro.au``, shared with ``astroquery.casda``), or a prompt.

        Parameters
        ----------
        username : str, optional
            OPAL user name (e-mail).  Defaults to ``conf.username`` or ``CASDA_USER``.
        password : str, optional
            Avoid in scripts that others can read; prefer the keyring.
        store_password : bool, optional
            Store the password in the keyring once the login has succeeded.
        reenter_password : bool, optional
            Ask again even if the keyring has a password (to replace it).
        password_file : str or path-like, optional
            A file holding the password on its first line.

        Raises
        ------
        astroquery.exceptions.LoginError
            No password could be found, or CASDA rejected the credentials (the message
            carries the server's answer).
        """
        credentials = find_password(username or self.USERNAME or None, password=password,
                                    password_file=password_file, reenter=reenter_password)
        log.info(f"Authenticating {credentials.username} on CASDA ...")
        auth = ProxyAuth(credentials, self.endpoints.vo_proxy)
        url = self.endpoints.login_url
        with failures_as(url=url, what="CASDA's login check"):
            response = self._request("GET", url, auth=auth(url), timeout=self.TIMEOUT, cache=False)
        if response.status_code in (401, 403):
            raise CasdaLoginError(f"CASDA rejected the login for {credentials.username}: "
                                  f"HTTP {response.status_code} {_server_text(response)}")
        if response.status_code != 200:
            raise failure(url=url, what="CASDA's login check", response=response)
        self._credentials = credentials
        self.USERNAME = credentials.username
        log.info("Authentication successful!")
        if store_password and credentials.source != "keyring":
            try:
                save_password(credentials)
            except CasdaLoginError as exc:
                # the password was right: stay logged in for this session, and say how to avoid retyping it
                warnings.warn(f"CASDA accepted the password of {credentials.username}, but {exc}. "
                              f"You are logged in for this session only. {keyring_advice()}",
                              PasswordNotStoredWarning, stacklevel=3)
        return True

    def logout(self):
        """Forget the credentials of this session (the keyring is left as it is)."""
        self.__dict__.pop("_auth", None)
        self.__dict__.pop("_auth_source", None)
        self._authenticated = False

    # --- discovery ------------------------------------------------------------------------

    def query_region_async(self, coordinates, *, radius=1 * u.arcmin, height=None, width=None,
                           polygon=None, band=None, rest_frequency=None, time=None, pol=None,
                           collection=None, dataproduct_type=None, maxrec=None,
                           get_query_payload=False, cache=True):
        """Query CASDA's SIA2 service for images and cubes in a region.

        Either a radius, or both a height and a width, or a polygon describe the region.

        Parameters
        ----------
        coordinates : str, `~astropy.coordinates.SkyCoord`, or a list of them
            Centre(s) of the region(s); several positions are OR-ed.
        radius : str or `~astropy.units.Quantity`, optional
            Cone radius (at most 10 degrees).  Default 1 arcmin, as ``astroquery.casda``.
        height, width : str or `~astropy.units.Quantity`, optional
            Size of a box region (on-sky; RA extent is widened by 1/cos(dec)).
        polygon : list of coordinates, optional
            Vertices of a polygon region (replaces ``coordinates``).
        band : sequence of two `~astropy.units.Quantity`, optional
            Spectral range as wavelengths, frequencies or (with ``rest_frequency``)
            radio velocities; ``None`` for an open end.
        rest_frequency : `~astropy.units.Quantity`, optional
            Rest frequency for a velocity ``band``.
        time : sequence of two `~astropy.time.Time` (or ISO strings or MJDs), optional
            Products observed entirely within this interval.
        pol : str or list of str, optional
            Polarisation states, e.g. ``'I'`` or ``['Q', 'U']``.
        collection : str or list of str, optional
            Project short names, e.g. ``'The Rapid ASKAP Continuum Survey'``.
        dataproduct_type : str, optional
            ``'image'`` or ``'cube'`` (CASDA labels 2-D images ``cube`` too).
        maxrec : int, optional
            Most rows to return; an overflow is warned about.
        get_query_payload : bool, optional
            Return the request parameters instead of sending the request.
        cache : bool, optional
            Use astroquery's cache for the response.

        Returns
        -------
        response : `requests.Response`
        """
        payload = self._args_to_payload(
            service="sia2", coordinates=coordinates, radius=radius, width=width, height=height,
            polygon=polygon, band=band, rest_frequency=rest_frequency, time=time, pol=pol,
            collection=collection, dataproduct_type=dataproduct_type, maxrec=maxrec)
        if get_query_payload:
            return payload
        url = self.endpoints.sia2_url
        with failures_as(url=url, what="CASDA SIA2 query"):
            response = self._request("GET", url, params=payload, timeout=self.TIMEOUT, cache=cache)
        if cache and response.status_code >= 400:
            # astroquery caches every answer: a 503 must not be replayed once CASDA is back
            self._last_query.request_file(self.cache_location).unlink(missing_ok=True)
        return response

    def query_region(self, coordinates, *, dataproduct_subtype=None, verbose=False, **kwargs):
        """Query CASDA's SIA2 service and return a `~astropy.table.Table` of products.

        Takes every argument of `query_region_async`, plus ``dataproduct_subtype`` (e.g.
        ``'cont.restored.t0'``), applied to the results since CASDA's SIA2 has no such
        parameter.
        """
        response = self.query_region_async(coordinates, **kwargs)
        if kwargs.get("get_query_payload"):
            return response
        if response.status_code >= 400:
            raise failure(url=getattr(response, "url", None) or self.endpoints.sia2_url, what="CASDA SIA2 query",
                          response=response)
        return self._discovery.parse_sia2(response.content, dataproduct_subtype=dataproduct_subtype)

    def _args_to_payload(self, *, radius=1 * u.arcmin, service="soda", **kwargs):
        """The parameters of one SODA cutout (or, with ``service="sia2"``, one SIA2 query), as
        astroquery.casda's ``_args_to_payload`` builds them and with its error messages.

        Parameters
        ----------
        radius : str or `~astropy.units.Quantity`, optional
            Circle radius, used unless ``width`` and ``height`` (a box) or ``polygon`` are given.
        service : {'soda', 'sia2'}, optional
            ``'sia2'`` also takes `query_region_async`'s ``time``, ``pol``, ``collection``,
            ``dataproduct_type`` and ``maxrec``.
        **kwargs
            ``coordinates``, ``height``, ``width``, ``polygon``, ``band``, ``channel`` (SODA),
            ``pol``, ``rest_frequency``; ``verbose`` is accepted and ignored.

        Returns
        -------
        dict
            ``{'POS': 'CIRCLE ra dec r', 'BAND': 'low high', 'CHANNEL': 'first last'}`` (those
            that apply); a parameter with several values holds a list.
        """
        kwargs.pop("verbose", None)
        width, height, polygon = kwargs.get("width"), kwargs.get("height"), kwargs.get("polygon")
        kwargs["radius"] = _cone_radius(radius, width, height, polygon)
        if service == "sia2":
            return self._discovery.sia2_payload(kwargs.pop("coordinates", None), **kwargs)
        if service != "soda":
            raise InvalidInputError(f"service must be 'soda' or 'sia2', not {service!r}")
        return _soda_payload(SodaRequest.build(**kwargs))

    def query_tap(self, query, *, async_job=False, maxrec=None, authenticated=None,
                  get_query_payload=False, cache=False, output=None, overwrite=False, result_format=None,
                  progress=None):
        """Run an ADQL query on CASDA's TAP service.

        Parameters
        ----------
        query : str
            ADQL, e.g. ``"SELECT TOP 10 * FROM ivoa.obscore WHERE obs_id = '609'"``.
        async_job : bool, optional
            Run as a UWS async job (for long queries).
        maxrec : int, optional
            Most rows to return; an overflow is warned about.
        authenticated : bool, optional
            Query through the OPAL proxy so embargoed rows of your projects are included.
            Default: when logged in.
        get_query_payload : bool, optional
            Return the request parameters instead of sending the request.
        cache : bool, optional
            Keep the answer of a synchronous query in astroquery's cache (default False:
            TAP answers change as CASDA releases data).
        output : str or path-like, optional
            Stream the result to this file at flat memory instead of returning a Table:
            ``.parquet`` (needs pyarrow), ``.csv``, ``.ecsv`` or ``.xml`` (CASDA's VOTable).
            Returns a `~astroquery_casda_ext.tap.StreamedResult`.  Written through the one
            safe writer (`~astroquery_casda_ext.writer`): an existing file, a link, or a
            file another call is writing is refused
            (`~astroquery_casda_ext.errors.OutputExistsError`,
            `~astroquery_casda_ext.errors.UnsafeFilenameError`) before anything is sent.
        overwrite : bool, optional
            Replace an existing ``output`` (never a link, nor a file being written).
        result_format : {'csv', 'votable'}, optional
            How the Table travels and is read; every way gives pyvo's Table (types, units,
            masks) with each text column only as wide as its longest value.  Default: CASDA's
            VOTable in one request, streamed, its rows read by pyarrow when it is installed
            (many times faster and smaller than pyvo for large results; the error and
            overflow markers kept), else by astropy.  ``'votable'``: the VOTable read whole
            by astropy, text read as variable length.  ``'csv'`` (needs pyarrow): CASDA's
            CSV typed by the query's own FIELDs (asked for first, with ``MAXREC=0``); CASDA's
            CSV has no error marker, so a query that fails while its rows are written looks
            complete there.
        progress : bool, optional
            Show rows and bytes while streaming (default: when stderr is a terminal).

        Warns
        -----
        astroquery_casda_ext.errors.IncompleteResultWarning
            The result stopped at ``maxrec`` or the server's limit.
        """
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query must be a non-empty ADQL string")
        if result_format not in (None, "votable", "csv"):
            raise InvalidInputError(f"result_format {result_format!r}: choose 'votable' or 'csv'")
        if authenticated is None:
            authenticated = self._logged_in()
        elif authenticated:
            self._require_login()
        if output is not None or result_format is not None or not cache:
            if get_query_payload:
                return self._query("tap", query, maxrec=maxrec, authenticated=authenticated,
                                   get_query_payload=True)
            if maxrec is not None and (isinstance(maxrec, bool) or not isinstance(maxrec, int) or maxrec < 1):
                raise InvalidInputError(f"maxrec {maxrec!r} must be a positive integer")
            return self._tap_client(authenticated).query(query, maxrec=maxrec, async_job=async_job, output=output,
                                                         overwrite=overwrite, result_format=result_format,
                                                         progress=progress)
        return self._query("tap", query, async_job=async_job, maxrec=maxrec, authenticated=authenticated,
                           cache=cache, get_query_payload=get_query_payload)

    # --- catalogue-scale TAP (tap/) ------------------------------------------------------

    def _tap_client(self, authenticated):
        return self._discovery.tap_client(authenticated)

    def query_tap_partitioned(self, query, *, by, parts=8, output, bounds=None, executor=None, max_running=4,
                              part_retries=2, verify_counts=False, authenticated=None, progress=None):
        """Run a large ADQL query as parallel parts into one Parquet dataset, resumably.

        The query is split into ``parts`` disjoint ranges of the numeric column ``by``, each
        run as an async TAP job (at most ``max_running`` at once: CASDA runs 4 per user) and
        written to ``output/part-NNNNN.parquet``.  A manifest records each written part's
        rows and size: calling again with the same arguments after an interruption asks
        only for the parts not yet written and verified.

        Parameters
        ----------
        query : str
            ``SELECT ... FROM ... [WHERE ...]`` (no TOP, DISTINCT, GROUP BY or HAVING).
        by : str
            A numeric column to split on, e.g. ``'ra_deg_cont'``; a declination column
            (UCD ``pos.eq.dec``) is split into declination bands of -90..90.
        parts : int, optional
            How many parts (ranges of equal width).
        output : str or path-like
            A new or empty directory, or one holding this query's earlier run (its
            ``_casda_partitions.json`` fingerprints the query, ``by``, ``parts``, ``bounds``
            and the columns; parts are verified by SHA-256 before they are kept).
        bounds : (low, high), optional
            The range of ``by`` to split (default: its MIN and MAX, asked first).  Rows
            outside it still land in the first or last part.
        executor : concurrent.futures.Executor, optional
            Where the parts run (default: a thread pool of ``max_running``), e.g. a dask
            ``distributed.Client``'s executor.
        max_running : int, optional
            Most parts running at once (never more than 4).
        part_retries : int, optional
            A failed part is tried again alone this many times.
        verify_counts : bool, optional
            Also compare each part with a ``COUNT(*)`` query.
        authenticated : bool, optional
            Query through the OPAL proxy (default: when logged in).
        progress : bool, optional
            Print each finished part (default: when stderr is a terminal).

        Returns
        -------
        astroquery_casda_ext.tap.PartitionedResult
            ``path``, ``rows``, ``parts``, ``resumed``.  Open with
            ``pyarrow.dataset.dataset(path)`` or ``dask.dataframe.read_parquet(path)``.

        Raises
        ------
        astroquery_casda_ext.errors.PartitionedQueryError
            Parts still failed after their retries; the others are kept: call again.
        InvalidInputError
            A query that cannot be split, a bad column, a directory holding something else
            (another query: the message says what differs), or a damaged manifest (named).
        astroquery_casda_ext.errors.FolderBusyError
            Another run is writing into the directory.
        astroquery_casda_ext.errors.LockUnavailableError
            The file system refuses locks (``flock``).
        """
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query must be a non-empty ADQL string")
        if authenticated is None:
            authenticated = self._logged_in()
        elif authenticated:
            self._require_login()
        return self._tap_client(authenticated).partitioned(
            query, by=by, parts=parts, output=output, bounds=bounds, executor=executor,
            max_running=max_running, part_retries=part_retries, verify_counts=verify_counts, progress=progress)

    def _logged_in(self):
        """Helpers query through the OPAL proxy once logged in, to see the user's embargoed rows."""
        return self._credentials is not None

    def list_tables(self, *, get_query_payload=False, cache=False):
        """The tables of CASDA's TAP service (from ``TAP_SCHEMA.tables``).

        Every TAP-based helper below takes astroquery's ``get_query_payload`` (return the
        request, send nothing) and ``cache`` (see `query_tap`).
        """
        return self._query("list_tables", authenticated=self._logged_in(), cache=cache,
                           get_query_payload=get_query_payload)

    def list_columns(self, table_name, *, get_query_payload=False, cache=False):
        """The columns of one TAP table, with units, UCDs and descriptions."""
        return self._query("columns", table_name, authenticated=self._logged_in(), cache=cache,
                           get_query_payload=get_query_payload)

    def query_sbid_images(self, sbid, *, subtypes=("cont.restored.t0",), dataproduct_types=("cube",),
                          get_query_payload=False, cache=False):
        """Images and cubes of one scheduling block (``obs_id``), optionally by subtype.

        ``subtypes=None`` returns every subtype.  Queries go through the OPAL proxy when
        logged in (this holds for every ``query_*`` helper).
        """
        return self._query("images_of_sbid", sbid, subtypes=subtypes, dataproduct_types=dataproduct_types,
                           authenticated=self._logged_in(), cache=cache, get_query_payload=get_query_payload)

    def query_components(self, *, sbid=None, image=None, flux_min=None, maxrec=None, get_query_payload=False,
                         cache=False):
        """Continuum catalogue components of a scheduling block, or inside an image's footprint.

        Parameters
        ----------
        sbid : int, optional
        image : `~astropy.table.Row` or str, optional
            An ObsCore row (or product id) whose ``s_region`` bounds the search.
        flux_min : float or `~astropy.units.Quantity`, optional
            Keep components with ``flux_peak`` above this (mJy/beam when a float).
        """
        return self._query("components", sbid=sbid, image=image, flux_min=flux_min, maxrec=maxrec,
                           authenticated=self._logged_in(), cache=cache, get_query_payload=get_query_payload)

    def query_products_at(self, coordinates, *, collection=None, dataproduct_type=None,
                          get_query_payload=False, cache=False):
        """Products whose footprint contains a position (optionally of one collection)."""
        return self._query("products_containing", coordinates, collection=collection,
                           dataproduct_type=dataproduct_type, authenticated=self._logged_in(), cache=cache,
                           get_query_payload=get_query_payload)

    def query_images_in_interval(self, coordinates, start, end, *, radius=None, collection=None,
                                 subtypes=("cont.restored.t0",), get_query_payload=False, cache=False):
        """Images covering a position observed between ``start`` and ``end``, oldest first."""
        return self._query("images_in_interval", coordinates, start, end, radius=radius,
                           collection=collection, subtypes=subtypes, authenticated=self._logged_in(), cache=cache,
                           get_query_payload=get_query_payload)

    def filter_out_unreleased(self, table):
        """Return the rows of ``table`` that are released (public) now.

        Parameters
        ----------
        table : `~astropy.table.Table`
            Must include an ``obs_release_date`` column.

        Returns
        -------
        table : `~astropy.table.Table`
        """
        if "obs_release_date" not in table.colnames:
            raise InvalidTableError("filter_out_unreleased needs an 'obs_release_date' column")
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
        dates = table["obs_release_date"]
        if hasattr(dates, "filled"):
            dates = dates.filled("")
        dates = [d.decode() if isinstance(d, bytes) else str(d) for d in dates]
        return table[[bool(d) and d < now for d in dates]]

    # --- access, staging and cutouts ------------------------------------------------------

    def get_access_tokens(self, table, service=STAGING_SERVICE):
        """DataLink access tokens for the products of ``table`` (batched requests).

        Returns
        -------
        `~astroquery_casda_ext.access.AccessReport`
            ``tokens`` for the products you may access, and ``denied`` (product id → the
            server's message) for the others.
        """
        self._require_login()
        return self._datalink().tokens_for(product_ids_from_table(table), service)

    def load_job(self, job_url):
        """Reattach to a SODA job by its URL (e.g. in a new process), without creating a new one."""
        return SodaJob.load(self._session, job_url, timeout=self.TIMEOUT)

    def stage_data(self, table, *, verbose=False, wait=True, poll_interval=None, on_error="abort"):
        """Stage whole files of the products in ``table`` for download.

        Parameters
        ----------
        table : `~astropy.table.Table`
            Products, e.g. from `query_region`; needs ``obs_publisher_did`` or ``access_url``.
        verbose : bool, optional
            Log job progress.
        wait : bool, optional
            If False, return the started jobs at once instead of waiting for them.
        poll_interval : float, optional
            Longest wait between two looks at a job (default ``conf.poll_interval``).
        on_error : {'abort', 'keep'}, optional
            When creating or starting one of several jobs fails: abort the jobs already
            started (default), or keep them running and hand them back in the
            `~astroquery_casda_ext.errors.JobSubmissionError` (``jobs``, ``job_urls``).

        Returns
        -------
        list of str, or list of `~astroquery_casda_ext.jobs.SodaJob`
            With ``wait=True``, the URLs of every staged file and of its ``.checksum`` (as
            ``astroquery.casda``); with ``wait=False``, the running jobs.  Every job URL is
            also logged (INFO) as soon as the job exists.
        """
        _check_on_error(on_error)
        self._require_login()
        policy = self._poll_policy(poll_interval)
        if _no_rows(table):
            return []
        jobs = self._submit(table, STAGING_SERVICE, {}, on_error=on_error)
        return self._finish(jobs, wait, verbose, policy)

    def cutout(self, table, *, coordinates=None, radius=1 * u.arcmin, height=None, width=None,
               polygon=None, band=None, channel=None, pol=None, rest_frequency=None, verbose=False,
               wait=True, poll_interval=None, on_error="abort"):
        """Cut regions out of each product in ``table`` on the server, in as few jobs as possible.

        Every region × every spectral window is cut from every product whose footprint
        contains the region's centre; regions that miss a product are reported (a log
        warning; ``job.error_files()``; the download manifest), not returned as data.

        Parameters
        ----------
        table : `~astropy.table.Table`
            Image or cube products; needs ``obs_publisher_did`` or ``access_url``.
        coordinates : coordinates, list, `~astropy.table.Table` or path, optional
            One or many centres: a coordinate string or `~astropy.coordinates.SkyCoord`, a list
            of them, a table with ra/dec columns, or a source-list file (``ra dec`` per line,
            decimal or sexagesimal, ``#`` comments).
        radius : str or `~astropy.units.Quantity`, optional
            Circle radius (default 1 arcmin; at most 10 degrees).
        height, width : str or `~astropy.units.Quantity`, optional
            Box size instead of a circle.
        polygon : list of coordinates, optional
            A polygon region instead.
        band : two `~astropy.units.Quantity`, or a list of such pairs, optional
            Spectral window(s): wavelengths, frequencies, or velocities with ``rest_frequency``.
        channel : two int, or a list of such pairs, optional
            Channel window(s), 1-based, inclusive.
        pol : str or list of str, optional
            Stokes parameters to keep, e.g. ``['Q', 'U']``.
        wait : bool, optional
            If False, return the started jobs at once.
        on_error : {'abort', 'keep'}, optional
            As in `stage_data`.

        Returns
        -------
        list of str, or list of `~astroquery_casda_ext.jobs.SodaJob`
            The URLs of every cutout and its ``.checksum``, or the running jobs.
        """
        _check_on_error(on_error)
        request = SodaRequest.build(coordinates=coordinates,
                                    radius=_cone_radius(radius, width, height, polygon),
                                    height=height, width=width, polygon=polygon, band=band,
                                    channel=channel, pol=pol, rest_frequency=rest_frequency)
        self._require_login()
        policy = self._poll_policy(poll_interval)
        if _no_rows(table):
            return []          # nothing to cut (astroquery.casda answers [] before looking at the region)
        require_request(request)
        jobs = self._submit(table, CUTOUT_SERVICE, _soda_payload(request), request=request, on_error=on_error)
        return self._finish(jobs, wait, verbose, policy)

    def spectra(self, table, coordinates, radius=None, *, band=None, channel=None, pol=None,
                verbose=False, wait=True, poll_interval=None, on_error="abort"):
        """Extract 1-D spectra at positions from cubes, with CASDA's spectrum generation service.

        Parameters are as in `cutout` (``on_error`` too); ``radius`` is the aperture (default 1 arcmin).

        Returns
        -------
        list of str, or list of `~astroquery_casda_ext.jobs.SodaJob`
        """
        _check_on_error(on_error)
        request = SodaRequest.build(coordinates=coordinates, radius=1 * u.arcmin if radius is None else radius,
                                    band=band, channel=channel, pol=pol)
        self._require_login()
        policy = self._poll_policy(poll_interval)
        if _no_rows(table):
            return []
        jobs = self._submit(table, SPECTRUM_SERVICE, _soda_payload(request), request=request, on_error=on_error)
        return self._finish(jobs, wait, verbose, policy)

    def _submit(self, table, service, params, request=None, on_error="abort"):
        """The call's jobs (`~astroquery_casda_ext.jobs.JobBatch`) for the products of ``table``."""
        report = self._datalink().tokens_for(product_ids_from_table(table), service)
        return JobBatch.submit(self._session, report.tokens, params, request=request, timeout=self.TIMEOUT,
                               on_error=on_error, service=service)

    @staticmethod
    def _finish(batch, wait, verbose, policy):
        return batch.finish(policy, verbose=verbose) if wait else batch.jobs

    def cutout_table(self, job):
        """A table naming, for each file of a finished cutout job, its product and region."""
        errors = [f.message or "" for f in job.error_files(fetch_messages=True)]
        return label_results(job.result_files(), job.request or SodaRequest(), errors)

    # --- downloads ------------------------------------------------------------------------

    def _downloader(self, workers=None, progress=None, executor=None):
        return Downloader(self._session, workers=int(workers or conf.download_workers),
                          retry=RetryPolicy(total=int(conf.download_retries)), executor=executor,
                          progress=progress, timeout=self.TIMEOUT)

    def download_files(self, urls, *, savedir="", workers=None, progress=None, executor=None, names=None,
                       labels=None, no_wait=False):
        """Download files (e.g. the URLs `stage_data` or `cutout` returned), in parallel.

        Files are written as ``<name>.part``, resumed after an interruption, verified against
        their ``.checksum`` and only then renamed; files already present and verified are
        skipped.  One download at a time writes into a folder (others wait, or fail at once
        with ``no_wait``).

        Parameters
        ----------
        urls : list of str
        savedir : str, optional
            Directory for the files (default: the current directory).
        workers : int, optional
            Parallel transfers (default ``conf.download_workers``).
        progress : bool, optional
            Show progress bars (default: when the terminal is interactive).
        executor : `concurrent.futures.Executor`, optional
            Run transfers on this executor (e.g. a dask.distributed client's).
        names : dict, optional
            ``{data URL: local file name}`` for files you name yourself (the ``.checksum``
            becomes ``<name>.checksum``).
        labels : dict, optional
            ``{data URL: {column: value}}``: extra columns of the manifest for those files
            (e.g. source name, ra, dec, region, spectral window).
        no_wait : bool, optional
            Raise `~astroquery_casda_ext.errors.FolderBusyError` at once if another download
            is writing into ``savedir``, instead of waiting for it.

        Returns
        -------
        list of str
            The local paths of the downloaded files, in the order of ``urls``.

        Raises
        ------
        astroquery_casda_ext.errors.DownloadError
            If any file could not be downloaded and verified (the others are kept).
        """
        if self._download_file_replaced():
            return self._download_with_hook(list(urls), savedir or ".", names or {}, workers, executor)
        return self._downloader(workers, progress, executor).download_files(
            list(urls), savedir=savedir or ".", names=names, labels=labels, no_wait=no_wait)

    def _download_file(self, url, local_filepath, timeout=None, auth=None, continuation=True, cache=False,
                       method="GET", head_safe=False, verbose=True, **kwargs):
        """Download one file to ``local_filepath``: astroquery's per-file hook, done by our downloader.

        The file is written as ``<name>.part``, resumed, and renamed when complete (verified
        when its ``.checksum`` sits beside it at CASDA).  A subclass or an instance may
        replace this method, as with any astroquery module: `download_files` then maps the
        replacement over its URLs in parallel instead.  ``auth``, ``cache``, ``method``,
        ``head_safe`` and ``continuation`` are astroquery's arguments; downloads need no
        credentials (CASDA's links are signed) and always resume.

        Returns
        -------
        str
            ``local_filepath``.
        """
        directory, name = os.path.split(os.fspath(local_filepath))
        paths = self._downloader(1, bool(verbose) and None).download_files(
            [url], savedir=directory or ".", names={url: name})
        return paths[0]

    def _download_file_replaced(self):
        """Whether ``_download_file`` was replaced (on this instance, or by a subclass)."""
        return "_download_file" in self.__dict__ or type(self)._download_file is not CasdaClass._download_file

    def _download_with_hook(self, urls, savedir, names, workers, executor):
        """astroquery's loop over ``_download_file``, mapped over the URLs in parallel."""
        targets = [os.path.join(savedir, safe_filename(names.get(url) or filename_from_url(url), url=url))
                   for url in urls]
        pool = executor or ThreadPoolExecutor(max_workers=max(1, int(workers or conf.download_workers)))
        try:
            futures = [pool.submit(self._download_file, url, target, timeout=self.TIMEOUT, cache=False)
                       for url, target in zip(urls, targets)]
            for future in futures:
                future.result()
        finally:
            if executor is None:
                pool.shutdown(wait=True)
        return targets

    def download(self, source, savedir=".", *, workers=None, progress=None, executor=None,
                 save_manifest=True, names=None, labels=None, no_wait=False):
        """Download what a job produced, or a list of URLs, and return the manifest.

        Parameters
        ----------
        source : `~astroquery_casda_ext.jobs.SodaJob`, list of jobs, or list of str
            Finished jobs (files are paired with their checksums; error files reported),
            or URLs.

        Returns
        -------
        `~astroquery_casda_ext.download.Manifest`
            One row per file: product, URL, local path, size, checksum status, error.
            With ``save_manifest`` it is saved into ``savedir``, merged with the manifest of
            earlier runs there; ``names``, ``labels`` and ``no_wait`` are as in `download_files`.
        """
        jobs = [source] if isinstance(source, SodaJob) else list(source)
        items = []
        for item in jobs:
            if isinstance(item, SodaJob):
                items.extend(item.result_files())
                items.extend(item.error_files())
            else:
                items.append(item)
        return self._downloader(workers, progress, executor).download(
            items, savedir, names=names, labels=labels, no_wait=no_wait, save_manifest=save_manifest)


def _soda_payload(request):
    """A `SodaRequest`'s parameters as astroquery posts them: one value as a string, several as a list."""
    return {name: values[0] if len(values) == 1 else values for name, values in request.parameters().items()}


def _check_on_error(on_error):
    if on_error not in ("abort", "keep"):
        raise InvalidInputError(f"on_error must be 'abort' or 'keep', not {on_error!r}")


def _no_rows(table):
    """True for None or an empty table (nothing to do); a non-table is refused here."""
    if table is None:
        return True
    try:
        return len(table) == 0
    except TypeError:
        raise InvalidTableError(f"expected a table of products, a row or product ids, "
                                f"got {type(table).__name__}") from None


def _cone_radius(radius, width, height, polygon):
    """The radius, unless a box or polygon is asked for: then astroquery ignores its default radius."""
    return None if (width is not None or height is not None or polygon is not None) else radius


def _server_text(response):
    """The first line of a server's answer, for error messages."""
    text = (getattr(response, "text", "") or "").strip()
    return text.splitlines()[0][:300] if text else getattr(response, "reason", "") or ""


def _log_response(response, *args, **kwargs):
    """Log each exchange at DEBUG: method, redacted URL, status. Never headers or bodies."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug(f"{response.request.method} {redact_url(response.url)} -> {response.status_code}")


Casda = CasdaClass()
