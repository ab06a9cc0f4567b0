"""Where the OPAL password comes from, and which URLs may see it.

`find_password` looks for a password in this order (the first found wins):

==========================  ===============================================================
source                      how
==========================  ===============================================================
argument                    ``password=`` given by the caller
password file               ``password_file=``: first line of a file only its owner can
                            read (``chmod 600``); other files are refused.  An explicit
                            file beats the environment.
environment                 ``CASDA_PASSWORD`` (or ``CASDA_PASSWD``); the user name defaults
                            to ``CASDA_USER``
keyring                     ``keyring.get_password("astroquery:casda.csiro.au", username)``
                            (astroquery's entry; skipped with ``reenter=True``)
prompt                      ``getpass`` when standard input is a terminal
==========================  ===============================================================

`ProxyAuth` then decides, per URL, whether a request gets the credentials: only
CASDA's authenticated VO proxy does (see its docstring).  `guard_session` keeps it so
through redirects (the header is re-checked at every hop) and scrubs credentials a
server echoes back out of the answers that carried them.  Nothing in this module
prints, logs or puts a password into an exception.
"""
import base64
import binascii
import getpass
import ipaddress
import os
import posixpath
import stat
import sys
from urllib.parse import unquote, urlsplit

import keyring
import requests
from astropy.utils.exceptions import AstropyWarning
from keyring.errors import KeyringError

from .errors import CasdaLoginError, InsecureTransportError, NotLoggedInError, redact_url, scrub_secrets

__all__ = ["KEYRING_SERVICE", "PASSWORD_ENV_VARS", "USER_ENV_VAR", "Credentials", "find_password",
           "read_password_file", "store_password", "ProxyAuth", "BasicAuthPair", "AuthSession", "guard_session",
           "basic_secrets", "PasswordNotStoredWarning", "keyring_advice"]

#: Keyring service name; the same as astroquery.casda's, so stored passwords keep working.
KEYRING_SERVICE = "astroquery:casda.csiro.au"

#: Environment variables read for the password, in order.
PASSWORD_ENV_VARS = ("CASDA_PASSWORD", "CASDA_PASSWD")

#: Environment variable read for the user name when none is given.
USER_ENV_VAR = "CASDA_USER"

_DEFAULT_PORTS = {"http": 80, "https": 443}


class PasswordNotStoredWarning(AstropyWarning):
    """CASDA accepted the password, but no keyring could store it (e.g. a headless machine)."""


def keyring_advice():
    """How to log in without a keyring next time (for messages)."""
    return ("Without a keyring, give the password with the CASDA_PASSWORD environment variable or "
            "a password file (--password-file FILE, mode 600), or install a file-based keyring: "
            "pip install keyrings.alt")


class Credentials:
    """An OPAL user name and password.  ``repr`` and ``str`` never show the password.

    Attributes
    ----------
    username : str
    password : str
    source : str
        Where the password came from: "argument", "environment", "password file",
        "keyring" or "prompt".
    """

    __slots__ = ("username", "password", "source")

    def __init__(self, username, password, source="argument"):
        self.username = username
        self.password = password
        self.source = source

    def __repr__(self):
        return f"Credentials(username={self.username!r}, source={self.source!r})"

    __str__ = __repr__

    def __eq__(self, other):
        return (isinstance(other, Credentials)
                and (self.username, self.password) == (other.username, other.password))

    __hash__ = None


def _username(username):
    from .settings import effective   # late: settings imports the package's conf
    name = (username or os.environ.get(USER_ENV_VAR) or effective("username") or "").strip()
    if not name:
        raise NotLoggedInError("If you do not pass a username to login(), you should configure a default "
                               "one! No CASDA user name: pass username= (your ATNF OPAL login), set "
                               f"{USER_ENV_VAR} or conf.username")
    return name


def find_password(username=None, *, password=None, password_file=None, reenter=False, interactive=None):
    """The credentials of ``username``, from the first source that has a password.

    Parameters
    ----------
    username : str, optional
        ATNF OPAL user name; defaults to ``$CASDA_USER``, then ``conf.username``.
    password : str, optional
        Used as is when given.
    password_file : str or path-like, optional
        A file whose first line is the password, readable by its owner only.
    reenter : bool
        Ignore a password stored in the keyring (ask again).
    interactive : bool or None
        Whether to prompt; ``None`` prompts only when standard input is a terminal.

    Returns
    -------
    Credentials

    Raises
    ------
    NotLoggedInError
        No user name, or no password from any source.
    CasdaLoginError
        The password file is unreadable, empty or readable by group/others.
    """
    name = _username(username)
    if password:
        return Credentials(name, password, "argument")
    if password_file is not None:      # asked for explicitly: beats the environment
        return Credentials(name, read_password_file(password_file), "password file")
    for variable in PASSWORD_ENV_VARS:
        if os.environ.get(variable):
            return Credentials(name, os.environ[variable], "environment")
    stored = None if reenter else _keyring_password(name)
    if stored:
        return Credentials(name, stored, "keyring")
    if interactive is None:
        interactive = _stdin_is_terminal()
    if interactive:
        return Credentials(name, _prompt(name), "prompt")
    raise NotLoggedInError(f"no password for {name}: set CASDA_PASSWORD, use a password file "
                           "(--password-file), store one in the keyring ('casda login'; on headless machines: pip install "
                           "keyrings.alt), or run interactively")


def _keyring_password(username):
    try:
        return keyring.get_password(KEYRING_SERVICE, username)
    except KeyringError:   # no usable backend (headless machine, CI): fall through to the prompt
        return None


def _stdin_is_terminal():
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):   # closed or detached stdin
        return False


def _prompt(username):
    entered = getpass.getpass(f"CASDA (ATNF OPAL) password for {username}: ")
    if not entered:
        raise NotLoggedInError(f"no password entered for {username}")
    return entered


def read_password_file(path):
    """The password in ``path``: its first line, without the line ending.

    The file must not be accessible by group or others (``chmod 600 <file>``), as with
    ``~/.netrc`` or ssh keys; on Windows, where these mode bits mean nothing, the check is skipped.

    Raises
    ------
    CasdaLoginError
        The file is missing, unreadable, empty, or accessible by group/others.
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
        if os.name != "nt" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CasdaLoginError(f"password file {path} is accessible by group or others "
                                  f"(mode {stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {path}")
        with open(path, encoding="utf-8") as handle:
            first_line = handle.readline().rstrip("\r\n")
    except OSError as exc:
        raise CasdaLoginError(f"cannot read password file {path}: {exc.strerror or exc}") from None
    if not first_line:
        raise CasdaLoginError(f"password file {path} is empty")
    return first_line


def store_password(credentials):
    """Save the password in the keyring (where `find_password` and astroquery.casda look).

    Raises
    ------
    CasdaLoginError
        The keyring refused (e.g. no backend is available).
    """
    try:
        keyring.set_password(KEYRING_SERVICE, credentials.username, credentials.password)
    except KeyringError as exc:
        raise CasdaLoginError(f"no keyring could store the password of {credentials.username} "
                              f"({type(exc).__name__})") from None


def _origin(parts):
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:   # a port that is not a number
        return None
    return scheme, (parts.hostname or "").lower(), port


def _is_loopback(hostname):
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _normal_path(path):
    # resolve "." and ".." (also percent-encoded) as the server would, so that
    # ".../vo/../../elsewhere" is not taken to be under the proxy
    resolved = posixpath.normpath("/" + unquote(path or "/"))
    return resolved if resolved.endswith("/") else resolved + "/"


class ProxyAuth:
    """Decide per URL whether the OPAL credentials go with a request.

    ``auth(url)`` returns a `BasicAuthPair` (HTTP Basic) for URLs under ``proxy_base`` and
    ``None`` for every other URL, so that passwords reach CASDA's authenticating proxy and
    nothing else (SODA and downloads are authorised by tokens and signed URLs).  The
    credentials are attached per request, never to the session, so requests drops them
    when a redirect leaves the host.

    ===============================================  ==========================
    URL                                              ``auth(url)``
    ===============================================  ==========================
    same scheme, host and port as ``proxy_base``     `BasicAuthPair`
    and path under it, ``https``
    same, plain ``http`` to a loopback host          `BasicAuthPair`
    (127.0.0.0/8, ::1, localhost: the emulator)
    same, plain ``http`` to any other host           raises `InsecureTransportError`
    other scheme, host or port, or path outside      ``None``
    ===============================================  ==========================

    Parameters
    ----------
    credentials : Credentials
    proxy_base : str
        Base URL of the VO proxy, e.g. ``https://data.csiro.au/casda_vo_proxy/vo/``.
    """

    def __init__(self, credentials, proxy_base):
        self.credentials = credentials
        self.proxy_base = proxy_base
        parts = urlsplit(proxy_base)
        self._origin = _origin(parts)
        self._path = _normal_path(parts.path)

    def __repr__(self):
        return f"ProxyAuth(username={self.credentials.username!r}, proxy_base={self.proxy_base!r})"

    def applies_to(self, url):
        """True when ``url`` is under the proxy base (same scheme, host, port; path below)."""
        parts = urlsplit(url)
        origin = _origin(parts)
        return (origin is not None and origin == self._origin
                and _normal_path(parts.path).startswith(self._path))

    def __call__(self, url):
        if not self.applies_to(url):
            return None
        scheme, host, _ = self._origin
        if scheme != "https" and not _is_loopback(host):
            raise InsecureTransportError(f"refusing to send the CASDA password over plain {scheme} to "
                                         f"{redact_url(url)}; use https")
        return BasicAuthPair(self.credentials.username, self.credentials.password)


class BasicAuthPair(tuple):
    """``(username, password)``: the Basic credentials as astroquery passes them (``_auth``).

    requests sends a pair as HTTP Basic; a plain tuple is what astroquery's ``_request``,
    its mocks and user hooks expect.  Its repr hides the password.
    """

    def __new__(cls, username, password):
        return super().__new__(cls, (username, password))

    def __repr__(self):
        return f"BasicAuthPair({self[0]!r}, '***')"

    __str__ = __repr__


# --- redirects and echoes -----------------------------------------------------------------

def basic_secrets(authorization):
    """What must never be shown of an ``Authorization: Basic ...`` header value.

    The header itself, its base64 value, and the password in it (also ``user:password``).
    Empty for other schemes and for headers that do not decode.
    """
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return ()
    value = value.strip()
    try:
        pair = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return (authorization, value)
    password = pair.partition(":")[2]
    return tuple(item for item in (authorization, value, pair, password) if item)


class _RedirectGuard:
    """`requests.Session.rebuild_auth` that also drops ``Authorization`` off the proxy.

    requests keeps the header on a redirect to the same host (another path included); the
    password must reach nothing but the proxy prefix, so every hop is checked again.
    """

    def __init__(self, session, allowed):
        self._session, self._allowed = session, allowed

    def __call__(self, prepared_request, response):
        requests.Session.rebuild_auth(self._session, prepared_request, response)
        if "Authorization" in prepared_request.headers and not self._allowed(prepared_request.url):
            del prepared_request.headers["Authorization"]


def _scrub_echo(response, *args, **kwargs):
    """Response hook: remove from an answer any credentials its request carried.

    A server (or a proxy's error page) may echo the request's ``Authorization`` header or
    the password; the answer's text then reaches exception messages.  Answers already read
    (every API answer: the retry adapter reads them) and error answers are scrubbed;
    streamed successful answers (large query results) are left to stream.
    """
    secrets = basic_secrets(response.request.headers.get("Authorization"))
    if not secrets or not (response._content_consumed or response.status_code >= 400):
        return response
    content = response.content or b""
    encoding = response.encoding or "utf-8"
    for secret in sorted(secrets, key=len, reverse=True):
        for form in {secret.encode("utf-8"), secret.encode(encoding, "ignore")}:
            if form and form in content:
                content = content.replace(form, b"***")
    response._content = content
    response.reason = scrub_secrets(response.reason, secrets)
    return response


def guard_session(session, allowed):
    """Keep credentials on the proxy through redirects, and out of echoed answers.

    Parameters
    ----------
    session : `requests.Session`
    allowed : callable
        ``allowed(url) -> bool``: whether ``url`` may carry the ``Authorization`` header
        (e.g. `ProxyAuth.applies_to` of the current login; False when logged out).
    """
    session.rebuild_auth = _RedirectGuard(session, allowed)
    hooks = session.hooks.setdefault("response", [])
    if _scrub_echo not in hooks:
        hooks.insert(0, _scrub_echo)
    return session


class AuthSession:
    """A `requests.Session` whose credentials are chosen per URL, by ``auth(url)``.

    ``auth`` is a `ProxyAuth` (or None): it answers only for URLs under the OPAL proxy, so
    the shared session itself never carries credentials and no other host sees them.
    ``discovery.py`` and the TAP client (``tap/``) are
    both handed one.  Pickled (for a process pool or dask workers), it arrives with the
    session guarded again (``guard_session``): the redirect guard is not lost on the way.
    """

    def __init__(self, session, auth=None):
        self.session, self.auth = session, auth

    def __setstate__(self, state):
        # Unpickled in another process (a process pool, dask workers): requests pickles a
        # Session without the instance attributes guard_session set, so the redirect guard
        # would be lost and a same-host redirect off the proxy would get the password.  The
        # credentials never arrive without it.
        self.__dict__.update(state)
        guard_session(self.session, self._may_carry_credentials)

    def _may_carry_credentials(self, url):
        return self.auth is not None and self.auth.applies_to(url)

    @property
    def headers(self):
        return self.session.headers

    def request(self, method, url, **kwargs):
        if self.auth is not None and kwargs.get("auth") is None:
            kwargs["auth"] = self.auth(url)
        return self.session.request(method, url, **kwargs)

    def get(self, url, **kwargs):
        return self.request("GET", url, **kwargs)

    def post(self, url, data=None, **kwargs):
        return self.request("POST", url, data=data, **kwargs)

    def delete(self, url, **kwargs):
        return self.request("DELETE", url, **kwargs)
