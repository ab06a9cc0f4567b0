"""The ``casda`` command line: CASDA's survey workflows from a shell.

Every command is a thin layer over the `~astroquery_casda_ext.CasdaClass` façade and the
`~astroquery_casda_ext.recipes`: it parses and checks its arguments, calls the library,
and prints.  `main` takes ``argv`` and *returns* the exit code, so tests call it directly;
``python -m astroquery_casda_ext.cli`` and the ``casda`` console script both run it.

Where things are printed: results (tables, job URLs, summaries) go to standard output and
nothing else does; narration, progress, warnings and the ``-v``/``--debug`` log go to
standard error at every verbosity, so ``casda ... --json | jq`` and ``casda query ... -o -``
stay clean.  Errors are one line on standard error, never a traceback (``--debug`` shows it).

Values are read by click parameter types that call the library's own parsers
(`~astroquery_casda_ext.regions`), so ``--radius 0.5`` means what ``radius=0.5`` means in
Python.  Only click is imported at start-up: ``casda --help`` must not pay for astropy.
"""
import contextlib
import functools
import json
import logging
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import click

from . import __version__

__all__ = ["main", "cli", "EXIT_OK", "EXIT_NOTHING_FOUND", "EXIT_USAGE", "EXIT_LOGIN", "EXIT_JOB",
           "EXIT_DOWNLOAD", "EXIT_SERVICE", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "COLLECTION_ALIASES",
           "EXIT_CODES"]

EXIT_OK = 0
#: The request was valid but matched nothing (no images, no sources above the flux limit).
EXIT_NOTHING_FOUND = 1
EXIT_USAGE = 2
EXIT_LOGIN = 3
EXIT_JOB = 4
EXIT_DOWNLOAD = 5
EXIT_SERVICE = 6
#: A bug: the message says so and ``--debug`` shows the traceback.
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

#: The one exit-code table: (code, situation); ``casda --help`` and docs/cli.rst show it.
EXIT_CODES = (
    (EXIT_OK, "success, also a rerun that found everything already there and verified"),
    (EXIT_NOTHING_FOUND, "nothing matched: no rows, images, cubes or sources above the flux limit, "
                         "an unknown product, or no position inside any footprint"),
    (EXIT_USAGE, "usage error: bad arguments, values, coordinates, source file, unwritable destination "
                 "or -o file (checked before anything is sent; nothing is created)"),
    (EXIT_LOGIN, "login failed or no credentials (no user name, wrong password, unsafe password file)"),
    (EXIT_JOB, "a CASDA job failed, expired, was aborted or timed out"),
    (EXIT_DOWNLOAD, "a download failed or did not match its checksum"),
    (EXIT_SERVICE, "another CASDA service error, or no connection (CASDA, the name resolver)"),
    (EXIT_INTERNAL, "internal error (rerun with --debug for the traceback)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C); a started job goes on: 'casda job URL --wait'"),
)


def _wrapped(text, indent=7, width=92):
    import textwrap
    return textwrap.fill(text, width=width, initial_indent="", subsequent_indent=" " * indent)


EXIT_CODES_HELP = "\b\nExit codes (the same for every command):\n" + "\n".join(
    f"  {code:<4} {_wrapped(text)}" for code, text in EXIT_CODES) + """

\b
Credentials (never on the command line), first found wins:
  --password-file FILE (mode 600), CASDA_PASSWORD, the keyring
  (store one with 'casda login'), or a prompt.  User name: --user or CASDA_USER.
  No keyring (headless, HPC)? Use the first two, or: pip install keyrings.alt

\b
Values: angles with units or plain degrees (2arcmin, 0.5deg, 0.5); positions in degrees,
  sexagesimal (RA in hours) or an object name; --band LOW HIGH with units ('-' for an open
  end); --channel FIRST LAST (1-based); --time START END (ISO dates or MJD).
Output: tables go to the screen; -o FILE writes .xml/.vot, .csv or .ecsv;
  -o - with --format {table,csv,ecsv,votable,json} writes them to stdout.
  Logs (-v: each HTTP request; --debug: with headers, secrets masked) go to stderr.
Options: --radius is always a search cone; --cutout-radius (alias --size)
  is always the size of a cutout.
Reruns: the same command into the same DEST only verifies; a changed request
  fetches what it needs under new names."""

#: Formats of ``-o -`` (standard output), by ``--format``; ``table`` is the screen layout.
STDOUT_FORMATS = {"table": None, "csv": "ascii.csv", "ecsv": "ascii.ecsv", "votable": "votable",
                  "json": "json"}

#: Short collection names, mapped to CASDA's project short names (``obs_collection``).  An
#: alias stands for every name listed (SIA2 and TAP OR them); any other value is sent as is.
COLLECTION_ALIASES = {
    "RACS": ("The Rapid ASKAP Continuum Survey",),
    "EMU": ("Evolutionary Map of the Universe", "EMU Pilot Survey"),
    "VAST": ("Variables and Slow Transients", "VAST Pilot Survey"),
    "POSSUM": ("Polarisation Sky Survey of the Universe's Magnetism", "POSSUM"),
    "WALLABY": ("Widefield ASKAP L-band Legacy All-sky Blind surveY", "WALLABY"),
    "DINGO": ("Deep Investigation of Neutral Gas Origins", "DINGO"),
    "FLASH": ("The First Large Absorption Survey in HI", "FLASH"),
    "GASKAP": ("Galactic ASKAP Spectral Line Survey", "GASKAP"),
    "DEEP": ("ASKAP Deep Embargoed Field",),
}

#: Constants of CASDA's sample scripts (casda-samples), kept as option defaults.
SCRIPT_CUTOUT_RADIUS = "0.1 deg"      # cutouts.py, sources.py
SCRIPT_SEARCH_RADIUS = "0.1 deg"      # siap.py
SCRIPT_FLUX_MIN = "500 mJy/beam"      # cutouts.py: flux_peak > 500
DEMO_SBID = 609
DEMO_DEST = "casda-demo"
PREVIEW_NAME = "preview.png"

_PRODUCT_ID = re.compile(r"^[a-z][a-z_]*-\d+$", re.IGNORECASE)
_JOB_URL = re.compile(r"/data/async/[^/?#]+/?$")
_OBSCORE_SCREEN_COLUMNS = ("obs_publisher_did", "obs_id", "obs_collection", "dataproduct_subtype",
                           "filename", "s_ra", "s_dec", "t_min", "em_min", "em_max", "obs_release_date")

#: The logger of the ``-v`` request log (one line per HTTP exchange), made by `_request_log`.
HTTP_LOGGER = "astroquery_casda_ext.http"


class NothingFound(Exception):
    """A valid request that matched nothing (exit code 1)."""


# --- output -------------------------------------------------------------------------------------

@dataclass
class Console:
    """Where a command's words go: narration to stderr, results to stdout, or one JSON document."""

    quiet: bool = False
    json_mode: bool = False

    @property
    def interactive(self):
        return not self.quiet and _isatty(sys.stderr)

    def say(self, message=""):
        """Narration and progress (stderr), silenced by ``--quiet``; control characters escaped."""
        if not self.quiet:
            click.echo(plain_text(message), err=True)

    def warn(self, message):
        if not self.quiet:
            click.echo(f"casda: warning: {_one_line(message)}", err=True)

    def out(self, text=""):
        """A result for humans (stdout); replaced by the JSON summary under ``--json``."""
        if not self.json_mode:
            click.echo(plain_text(text))

    def summary(self, data, text):
        """The command's final summary: JSON on stdout with ``--json``, else ``text``."""
        if self.json_mode:
            click.echo(json.dumps(data, indent=2, default=_json_default))
        elif text:
            click.echo(plain_text(text))


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _json_default(value):
    import numpy as np
    from astropy import units as u
    from astropy.time import Time
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, u.Quantity):
        return value.value.tolist()
    if isinstance(value, Time):
        return value.isot
    return str(value)


def plain_text(text):
    """Text made safe for the terminal, control characters escaped (`errors.plain_text`; imported
    when first needed, so that the help costs nothing more than click)."""
    from .errors import plain_text as escaped
    return escaped(text)


def _one_line(text, limit=600):
    """``text`` on one line, control characters escaped (server text reaches the terminal here)."""
    lines = [plain_text(line.strip()) for line in str(text).splitlines() if line.strip()]
    joined = "; ".join(lines) if lines else plain_text(str(text))
    return joined if len(joined) <= limit else joined[:limit - 3] + "..."


#: Python spellings in the library's messages, and what a shell user types instead.
_SHELL_TERMS = (
    (re.compile(r"(\d+(?:\.\d+)?)\s*\*\s*u\.([A-Za-z]+)"), r"\1\2"),            # 0.5 * u.deg -> 0.5deg
    (re.compile(r"\bpass username=\s*(\([^)]*\))?"), "give --user "),
    (re.compile(r"\busername=\b"), "--user "),
    (re.compile(r"\brest_frequency\b"), "--rest-frequency"),
    (re.compile(r"\bpassword_file\b"), "--password-file"),
    (re.compile(r"use None for an open end"), "use '-' for an open end"),
    (re.compile(r"\bor None\b"), "or '-'"),
    (re.compile(r"call Casda\.login\(\) first"), "log in ('casda login', CASDA_PASSWORD or --password-file)"),
)


def shell_terms(text):
    """A library message in the shell's words (``--user``, ``0.5deg``), not Python's."""
    for pattern, replacement in _SHELL_TERMS:
        text = pattern.sub(replacement, text)
    return text


class JobProgress:
    """Shows each job's phase as it changes; on a terminal, the elapsed time ticks while it runs."""

    def __init__(self, console, tick=1.0):
        self.console = console
        self.tick = tick
        self._status = None

    def on_phase(self, job, phase, elapsed):
        self._clear()
        self.console.say(f"  job {job.job_id[:8]}: {phase:<10} after {elapsed:5.1f} s")
        self._status = (job.job_id[:8], phase, time.monotonic() - elapsed)

    def sleep(self, seconds):
        """``time.sleep`` that refreshes a one-line status while waiting (terminal only)."""
        if not self.console.interactive or self._status is None:
            time.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            name, phase, since = self._status
            line = f"\r  job {name}: {plain_text(phase)}, {time.monotonic() - since:5.0f} s elapsed"
            click.echo(line, err=True, nl=False)
            time.sleep(min(self.tick, left))
        self._clear()

    def _clear(self):
        if self.console.interactive and self._status is not None:
            click.echo("\r" + " " * 60 + "\r", err=True, nl=False)


# --- values: click types over the library's parsers ---------------------------------------------

class LibraryValue(click.ParamType):
    """A click type whose text goes to one of the library's parsers.

    The CLI and Python then read a value alike; the library's error (an
    `~astroquery_casda_ext.errors.InvalidInputError`) becomes click's usage error, in the
    shell's words.
    """

    def parse(self, text):
        raise NotImplementedError

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        from .errors import InvalidInputError
        try:
            return self.parse(value.strip())
        except InvalidInputError as exc:
            self.fail(shell_terms(str(exc)), param, ctx)


class Angle(LibraryValue):
    """An angle with units (``2arcmin``, ``0.5deg``) or plain degrees (``0.5``): `regions.parse_radius`."""

    name = "angle"

    def __init__(self, max_deg=10.0):
        self.max_deg = max_deg

    def get_metavar(self, param, ctx=None):
        return "ANGLE"

    def parse(self, text):
        from .regions import parse_radius
        return parse_radius(text, name="angle", max_deg=self.max_deg)


class SpectralValue(LibraryValue):
    """One end of a ``--band``: a frequency, wavelength or velocity with units; '-' is an open end."""

    name = "quantity"

    def parse(self, text):
        from astropy import units as u
        from .errors import InvalidSpectralRangeError
        if text.lower() in ("-", "none", "inf", "+inf", "-inf"):
            return None
        try:
            quantity = u.Quantity(text)
        except (TypeError, ValueError):
            raise InvalidSpectralRangeError(f"{text!r} is not a quantity, e.g. 1.2GHz, 21cm, "
                                            "1500km/s") from None
        if quantity.unit == u.dimensionless_unscaled:
            raise InvalidSpectralRangeError(f"{text!r} needs a unit (GHz, MHz, m, cm, km/s)")
        return quantity


class FluxValue(LibraryValue):
    """A flux limit in mJy/beam: a number (mJy/beam) or a quantity such as ``0.5Jy/beam``."""

    name = "flux"

    def parse(self, text):
        from astropy import units as u
        from .errors import InvalidInputError
        try:
            quantity = u.Quantity(text)
        except (TypeError, ValueError):
            raise InvalidInputError(f"{text!r} is not a flux; give e.g. 500 or 0.5Jy/beam") from None
        if quantity.unit == u.dimensionless_unscaled:
            return float(quantity.value)
        try:
            return float(quantity.to_value(u.mJy / u.beam))
        except u.UnitsError:
            raise InvalidInputError(f"{text!r} is not a flux per beam (mJy/beam)") from None


class TimeValue(LibraryValue):
    """A time: an ISO date/time or an MJD number."""

    name = "time"

    def parse(self, text):
        from astropy.time import Time
        from .errors import InvalidInputError
        try:
            return Time(float(text), format="mjd") if re.fullmatch(r"[0-9.]+", text) else Time(text)
        except ValueError:
            raise InvalidInputError(f"{text!r} is not a time: give an ISO date (2020-01-31T12:00) "
                                    "or an MJD") from None


class PolValue(LibraryValue):
    """Stokes parameters: ``I``, ``QU``, ``Q,U``: `regions.parse_pol`."""

    name = "pol"

    def parse(self, text):
        from .regions import parse_pol
        return tuple(parse_pol(text))


ANGLE = Angle()
SPECTRAL = SpectralValue()
FLUX = FluxValue()
TIME = TimeValue()
POL = PolValue()


def checked_band(band, rest_frequency, option="--band"):
    """``(low, high)`` as given, after the library's check (`regions.parse_band`); None if not given."""
    if not band:
        return None
    from .errors import InvalidInputError
    from .regions import parse_band
    try:
        parse_band(tuple(band), rest_frequency=rest_frequency)
    except InvalidInputError as exc:
        raise click.BadParameter(shell_terms(str(exc)), param_hint=option) from None
    return tuple(band)


def checked_channel(channel):
    """``(first, last)`` after `regions.parse_channel` (1-based); None if not given."""
    if not channel:
        return None
    from .errors import InvalidInputError
    from .regions import parse_channel
    try:
        return parse_channel(tuple(channel))
    except InvalidInputError as exc:
        raise click.BadParameter(shell_terms(str(exc)), param_hint="--channel") from None


# --- shared options -----------------------------------------------------------------------------

@dataclass
class Options:
    """The options every command takes."""

    server: str | None
    user: str | None
    password_file: str | None
    quiet: bool
    json_mode: bool
    verbose: bool
    debug: bool
    #: A named CASDA environment (prod, at, test, dev) given as ``--server``.
    environment: str | None = None
    #: ``--poll-interval``: the longest wait between two looks at a running job.
    poll_interval: float | None = None
    #: ``--no-wait``: fail at once if another download is writing into DEST.
    no_wait: bool = False

    @property
    def policy(self):
        """The job polling policy: ``--poll-interval`` if given, else the configuration's
        (ours, or the ``[casda]`` section of astroquery.cfg)."""
        from .core import poll_policy
        return poll_policy(self.poll_interval)

    @property
    def console(self):
        return Console(quiet=self.quiet, json_mode=self.json_mode)


#: CASDA's environments, as ``--server`` names (kept here: the help must not import endpoints' deps).
_ENVIRONMENTS = ("prod", "at", "test", "dev")


def _check_server(ctx, param, value):
    if value is None or value.lower() in _ENVIRONMENTS:
        return value
    if not re.match(r"^https?://[^/\s]+", value):
        raise click.BadParameter(f"{value!r} is not an http(s) URL (e.g. http://127.0.0.1:8080/) "
                                 f"or a CASDA environment ({', '.join(_ENVIRONMENTS)})")
    return value


_COMMON = [
    click.option("--server", metavar="URL", envvar="CASDA_SERVER", callback=_check_server,
                 help="Another CASDA: a base URL (e.g. the emulator's http://127.0.0.1:PORT/) or an "
                      "environment name (prod, at, test, dev); default: production. Env: CASDA_SERVER."),
    click.option("--user", metavar="NAME", envvar="CASDA_USER",
                 help="ATNF OPAL user name (e-mail). Env: CASDA_USER."),
    click.option("--password-file", metavar="FILE",
                 help="Read the OPAL password from the first line of FILE (must be mode 600)."),
    click.option("-q", "--quiet", is_flag=True, help="No narration or progress, only results and errors."),
    click.option("--json", "json_mode", is_flag=True,
                 help="Print a machine-readable JSON summary on stdout."),
    click.option("-v", "--verbose", is_flag=True,
                 help="Log each HTTP request (method, URL without credentials, status, time) and job "
                      "poll, on stderr."),
    click.option("--debug", is_flag=True,
                 help="Also log request and response headers (secrets masked); show tracebacks."),
]


def common_options(func):
    """Give a command the shared options, passed on as one `Options` argument."""
    @functools.wraps(func)
    def wrapper(*args, server, user, password_file, quiet, json_mode, verbose, debug, **kwargs):
        environment = server.lower() if server and not server.lower().startswith("http") else None
        options = Options(None if environment else server, user, password_file, quiet, json_mode, verbose,
                          debug, environment, kwargs.pop("poll_interval", None), kwargs.pop("no_wait", False))
        with _logging_for(options), contextlib.ExitStack() as stack:
            if environment is not None:
                from . import conf
                # a named environment (prod, at, test, dev) picks CASDA's own hosts for this command only
                stack.enter_context(conf.set_temp("environment", environment))
            return func(options, *args, **kwargs)
    for option in reversed(_COMMON):
        wrapper = option(wrapper)
    return wrapper


def job_options(func):
    """The options of commands that follow SODA jobs (and download what they made)."""
    func = click.option("--no-wait", is_flag=True,
                        help="If another download is writing into DEST, fail at once "
                             "instead of waiting.")(func)
    return click.option("--poll-interval", type=click.FloatRange(min=0.05), metavar="SECONDS",
                        help="Longest wait between two looks at a running job "
                             "(default: the configuration's poll_interval, 10 s).")(func)


def window_options(func):
    """``--band``, ``--channel``, ``--pol`` and ``--rest-frequency``: the same in every cutting command."""
    func = click.option("--pol", type=POL, help="Stokes parameters to keep: I, QU, Q,U...")(func)
    func = click.option("--channel", nargs=2, type=click.INT, metavar="FIRST LAST",
                        help="Channel window, 1-based and inclusive.")(func)
    return click.option("--band", nargs=2, type=SPECTRAL, metavar="LOW HIGH",
                        help="Spectral window with units (1.2GHz 1.4GHz, 20cm 22cm, or velocities with "
                             "--rest-frequency); '-' for an open end.")(func)


# --- logs on stderr, and the request log of -v/--debug -----------------------------------------------

#: Request and response headers whose values are credentials.
_SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-amz-security-token")


def _masked_headers(headers):
    return ", ".join(f"{name}: {'***' if name.lower() in _SECRET_HEADERS else value}"
                     for name, value in headers.items())


@contextlib.contextmanager
def _request_log(debug):
    """Log every HTTP exchange of this command (each attempt of the retry layer too).

    Every session of the package (queries, DataLink, jobs, pyvo's TAP sessions, download
    workers) sends through a requests ``HTTPAdapter``, so its ``send`` is the one place that
    sees them all; a session hook would miss the sessions made inside pyvo and the downloader.
    The original method is restored when the command ends.
    """
    from requests.adapters import HTTPAdapter
    from .errors import package_logger, redact_url
    http_log = package_logger(HTTP_LOGGER)
    original = HTTPAdapter.send

    def send(self, request, *args, **kwargs):
        started = time.monotonic()
        url = redact_url(request.url)
        if debug:
            http_log.debug(f"> {request.method} {url} [{_masked_headers(request.headers)}]")
        try:
            response = original(self, request, *args, **kwargs)
        except Exception as exc:
            http_log.info(f"{request.method} {url} -> {type(exc).__name__} after "
                          f"{time.monotonic() - started:.3f} s")
            raise
        seconds = time.monotonic() - started
        http_log.info(f"{request.method} {url} -> {response.status_code} in {seconds:.3f} s")
        if debug:
            http_log.debug(f"< {response.status_code} [{_masked_headers(response.headers)}]")
        return response

    HTTPAdapter.send = send
    try:
        yield
    finally:
        HTTPAdapter.send = original


@contextlib.contextmanager
def _logging_for(options):
    """Log levels for one command: quiet by default (the command narrates), more with -v/--debug.

    Every log line goes to stderr: astroquery's logger (astropy's handler prints INFO to
    *stdout*) is given our stderr handler for the command.  The levels and handlers are
    restored afterwards, so calling `main` from Python changes nothing.
    """
    level = logging.DEBUG if options.debug else logging.INFO if options.verbose else logging.WARNING
    from astroquery import log as astroquery_log
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter("%(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("astroquery_casda_ext")
    saved = [(logger, logger.level, list(logger.handlers), logger.propagate)
             for logger in (astroquery_log, ours)]
    astroquery_log.handlers = [handler]
    astroquery_log.propagate = False
    ours.addHandler(handler)
    ours.propagate = False
    for logger, *_ in saved:
        logger.setLevel(level)
    try:
        with _request_log(options.debug) if options.verbose or options.debug else contextlib.nullcontext():
            yield
    finally:
        for logger, old_level, handlers, propagate in saved:
            logger.setLevel(old_level)
            logger.handlers = handlers
            logger.propagate = propagate


class _PlainFormatter(logging.Formatter):
    """Log lines with control characters escaped: a record may carry a server's text."""

    def format(self, record):
        return plain_text(super().format(record))


class CoordinateCommand(click.Command):
    """A command whose positional arguments may be negative numbers (a declination of -45).

    click would read ``-45`` as an unknown option; here unknown options are kept as
    arguments, except words that look like options (``--radus``, ``-x``): those are still
    reported as unknown options.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", {})["ignore_unknown_options"] = True
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx, args):
        known = {name for param in self.get_params(ctx) for name in param.opts + param.secondary_opts}
        for token in args:
            if token == "--":
                break
            name = token.split("=", 1)[0]
            if re.match(r"^--?[A-Za-z]", name) and name not in known:
                raise click.NoSuchOption(name, ctx=ctx)
        return super().parse_args(ctx, args)


# --- parsing values -----------------------------------------------------------------------------

def expand_collections(values):
    """Collection names to send: aliases (RACS, EMU, ...) expanded, other names kept as given.

    Returns
    -------
    list of str or None
        None when no collection was asked for.
    """
    names = []
    for value in values or ():
        for name in COLLECTION_ALIASES.get(value.strip().upper(), (value.strip(),)):
            if name not in names:
                names.append(name)
    return names or None


def _position(tokens, ra=None, dec=None):
    """One position from positional tokens ('187.5 -45', '12:30:00 -45:00:00', 'M31') or --ra/--dec."""
    from .regions import parse_coordinates
    if tokens and (ra is not None or dec is not None):
        raise click.UsageError("give the position either as POSITION or with --ra/--dec, not both")
    if ra is not None or dec is not None:
        if ra is None or dec is None:
            raise click.UsageError("--ra and --dec go together")
        degrees = _numbers(ra, dec)
        return parse_coordinates(tuple(degrees) if degrees else f"{ra} {dec}")
    return parse_coordinates(" ".join(tokens)) if tokens else None


def _numbers(*texts):
    try:
        return [float(text) for text in texts]
    except ValueError:
        return None


def _table_writer_format(path):
    suffix = Path(path).suffix.lower()
    formats = {".xml": "votable", ".vot": "votable", ".votable": "votable", ".csv": "ascii.csv",
               ".ecsv": "ascii.ecsv"}
    if suffix not in formats:
        raise click.BadParameter(f"{path}: use a .xml/.vot (VOTable), .csv or .ecsv file name",
                                 param_hint="--output")
    return formats[suffix]


def check_output_path(path, overwrite, option="--output"):
    """Refuse an ``-o`` file that cannot be written, before anything is sent; create nothing.

    The folder must exist and take a new file (probed with a private temporary, as the
    destination folders are); an existing file needs ``--overwrite``; a symbolic link or
    anything but a regular file is refused.
    """
    target = Path(path).expanduser()
    if target.is_symlink():
        raise click.BadParameter(f"{path} is a symbolic link; give the real file", param_hint=option)
    if target.exists():
        if not target.is_file():
            raise click.BadParameter(f"{path} exists and is not a regular file", param_hint=option)
        if not overwrite:
            raise click.BadParameter(f"{path} exists; add --overwrite to replace it", param_hint=option)
    from .errors import InvalidInputError
    from .writer import refuse_reserved
    try:
        refuse_reserved(target.name, source="the output's")
    except InvalidInputError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
    folder = target.absolute().parent
    if not folder.is_dir():
        raise click.BadParameter(f"{path}: the folder {folder} does not exist (it is not created)",
                                 param_hint=option)
    probe = folder / f".casda-write-test.{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise click.BadParameter(f"{path}: cannot write into {folder} ({exc.strerror})",
                                 param_hint=option) from None
    probe.unlink(missing_ok=True)


def _check_output(path, overwrite, output_format=None):
    """The astropy writer format of ``--output``; for ``-o -`` (stdout) the ``--format`` name."""
    if path == "-":
        return output_format or "table"
    if path is None:
        if output_format:
            raise click.UsageError("--format goes with -o - (standard output) or -o FILE")
        return None
    fmt = STDOUT_FORMATS[output_format] if output_format and output_format not in ("table", "json") \
        else _table_writer_format(path)
    check_output_path(path, overwrite)
    return fmt


def _check_preview(path, option="--preview", overwrite=True):
    if path is None:
        return None
    if Path(path).suffix.lower() != ".png":
        raise click.BadParameter(f"{path}: the picture is a PNG file; name it *.png", param_hint=option)
    check_output_path(path, overwrite, option)
    from .plots import require_matplotlib
    try:
        require_matplotlib()
    except ImportError as exc:
        raise click.UsageError(f"{option}: {exc}") from None
    return path


# --- the client ---------------------------------------------------------------------------------

def make_client(options):
    """A `CasdaClass` for ``--server`` (or the configured CASDA)."""
    from .core import CasdaClass
    return CasdaClass(server=options.server)


def log_in(casda, options, console):
    """Log in with the usual credential sources (never a command-line password)."""
    console.say(f"Logging in to CASDA{_server_note(options)} ...")
    casda.login(username=options.user, password_file=options.password_file)


def _server_note(options):
    from .errors import redact_url
    if options.environment:
        return f" ({options.environment})"
    return f" at {redact_url(options.server)}" if options.server else ""


def _progress(options):
    return False if options.quiet or options.json_mode else None


def download_into(casda, sources, dest, options, console):
    """Download, verify, save the manifest; raise `DownloadError` if any file failed."""
    from .recipes import download_jobs
    console.say(f"Downloading into {dest} and verifying checksums ...")
    return download_jobs(casda, sources, str(dest), progress=_progress(options), no_wait=options.no_wait)


#: (job URL, destination) of the jobs this command started: the resume hint names them.
_STARTED_JOBS = []
#: Folders this command created: removed again (when still empty) if it fails.
_CREATED_FOLDERS = []


def _remember_jobs(jobs, dest=None):
    _STARTED_JOBS.extend((job.url, str(dest) if dest else None) for job in jobs)


def resume_hint():
    """How to pick up the jobs this command started (they go on running on CASDA)."""
    if not _STARTED_JOBS:
        return ""
    commands = [f"casda job {url} --wait" + (f" --dest {dest}" if dest else "")
                for url, dest in _STARTED_JOBS]
    return "the CASDA job(s) go on running; resume with: " + "; ".join(commands[:3]) + \
        (f" (and {len(commands) - 3} more)" if len(commands) > 3 else "")


def destination(dest):
    """Create or check DEST before anything is sent (a rerun into it is safe).

    Folders made here are removed again, when still empty, if the command fails.
    """
    from .reruns import prepare_destination
    path, created = prepare_destination(dest)
    _CREATED_FOLDERS.extend(created)
    return path


def _cutout_radius(size, radius_alias, console, default):
    """``--cutout-radius``/``--size``; ``--radius`` is still read here, with a warning, for old scripts."""
    if radius_alias is not None:
        if size is not None:
            raise click.UsageError("give the cutout size once, with --cutout-radius")
        console.warn("--radius for a cutout size is deprecated (--radius means the search cone in every "
                     "command): use --cutout-radius (or --size)")
        size = radius_alias
    return ANGLE.convert(default, None, None) if size is None else size


def cutout_size_options(default):
    """``--cutout-radius``/``--size`` and the hidden, deprecated ``--radius`` of cutout commands."""
    def decorate(func):
        func = click.option("--radius", "radius_alias", hidden=True, type=ANGLE,
                            help="Deprecated: use --cutout-radius.")(func)
        return click.option("--cutout-radius", "--size", "cutout_radius", type=ANGLE,
                            help=f"Radius of each cutout: 2arcmin, 0.1deg or degrees "
                                 f"(default {default}).")(func)
    return decorate


def _whole_files_only(full_files, **cut_options):
    """Refuse cutting options beside ``--full-files`` (whole files are staged as they are)."""
    given = [name for name, value in cut_options.items()
             if value is not None and not (isinstance(value, (tuple, list)) and not value)]
    if full_files and given:
        raise click.UsageError(f"--full-files stages whole files: {', '.join(given)} do(es) not apply")


def cut_request(service, radius, band=None, channel=None, pol=None, rest_frequency=None):
    """The `~astroquery_casda_ext.reruns.CutRequest` of a command's options (checked by the library)."""
    from .reruns import CutRequest
    from astropy import units as u
    band = checked_band(band, rest_frequency)
    if band and rest_frequency is not None:
        # velocities become frequencies here, so every service (spectra take no rest frequency) and
        # the manifest's window label see the same window
        band = tuple(end.to(u.GHz, equivalencies=u.doppler_radio(rest_frequency))
                     if end is not None and end.unit.is_equivalent(u.km / u.s) else end for end in band)
    channel = checked_channel(channel)
    return CutRequest(service, float(radius.to_value("deg")) if radius is not None else None,
                      (band,) if band else (), (channel,) if channel else (), tuple(pol or ()))


def coverage(images, sources):
    """``{product: names of the sources inside its footprint}`` (ObsCore ``s_region``)."""
    from astropy.coordinates import SkyCoord
    from .regions import footprint_contains
    positions = SkyCoord([s.ra for s in sources], [s.dec for s in sources], unit="deg")
    covered = {}
    for row in images:
        region = row["s_region"] if "s_region" in images.colnames else ""
        inside = footprint_contains(str(region), positions)
        covered[str(row["obs_publisher_did"])] = {s.name for s, ok in zip(sources, inside) if ok}
    return covered


@dataclass
class Plan:
    """One part of a command's request: what to ask (`CutRequest`) of which products and sources."""

    request: object
    images: object
    sources: list = None
    covered: dict = None


def cut_sources(casda, images, sources, request, dest, options, console, *, preview=None, policy=None,
                before_download=None, what="image"):
    """Cut every source out of every image whose footprint holds it, into ``dest``; safe to rerun.

    Positions that no image's footprint contains are not sent (CASDA would answer each with
    an error file, or fail the job); they are named on stderr and in the summary
    (``uncovered``), and when none is left the command matched nothing (exit 1).
    """
    covered = coverage(images, sources)
    uncovered = [s.name for s in sources if not any(s.name in names for names in covered.values())]
    if uncovered:
        console.warn(f"{len(uncovered)} of {len(sources)} position(s) lie in no {what}'s footprint and are "
                     f"not asked for: {', '.join(uncovered[:5])}{' ...' if len(uncovered) > 5 else ''}")
    if len(uncovered) == len(sources):
        raise NothingFound(f"no {what} footprint contains any of the {len(sources)} position(s)")
    summary = fetch_missing(casda, [Plan(request, images, sources, covered)], dest, options, console,
                            policy=policy, before_download=before_download)
    summary.update(uncovered=uncovered, sources=len(sources))
    if preview:
        from astropy.coordinates import SkyCoord
        from .download import Manifest
        everything = SkyCoord([s.ra for s in sources], [s.dec for s in sources], unit="deg")
        subtypes = ({str(r["obs_publisher_did"]): str(r["dataproduct_subtype"]) for r in images}
                    if "dataproduct_subtype" in images.colnames else None)
        summary["preview"] = draw_preview(preview, Manifest.read(summary["manifest"]), everything, console,
                                          [s.name for s in sources], subtypes)
    return summary


def fetch_missing(casda, plans, dest, options, console, *, policy=None, before_download=None):
    """Ask CASDA for what the folder's manifest lacks of the request, download it, save the manifest.

    The request is keyed whole (`reruns.RerunState`): files of an equal request that are
    there and verified are kept, and with nothing missing no job is started.  The saved
    manifest describes this request only.
    """
    from .reruns import RerunState, request_keys, wanted_files
    state = RerunState(dest)
    keys, submissions, wanted_count = set(), [], 0
    for plan in plans:
        products = [str(p) for p in plan.images["obs_publisher_did"]]
        wanted = wanted_files(plan.request, products, plan.sources, plan.covered)
        keys |= request_keys(plan.request, wanted)
        wanted_count += len(wanted)
        missing = state.missing(plan.request, wanted)
        if missing:
            submissions.append((plan, missing))
    missing_count = sum(len(missing) for _, missing in submissions)
    if missing_count < wanted_count:
        rest = f"asking CASDA for the other {missing_count}" if missing_count else "nothing to ask CASDA"
        console.say(f"  {wanted_count - missing_count} of {wanted_count} file(s) of this request are already "
                    f"in {dest} and verified (its manifest): {rest}")
    submitted = []
    for plan, missing in submissions:
        submitted += _submit(casda, plan, missing, console)
    jobs = [job for job, _, _ in submitted]
    new = None
    if jobs:
        from .recipes import wait_for_jobs
        _remember_jobs(jobs, dest)
        progress = JobProgress(console)
        for job in jobs:
            console.say(f"  job {job.job_id[:8]} started: {job.url}")
        wait_for_jobs(jobs, policy=policy or options.policy, on_phase=progress.on_phase, sleep=progress.sleep)
        if before_download is not None:
            before_download()
        console.say(f"Downloading into {dest} and verifying checksums ...")
        new = _download_labelled(casda, submitted, dest, options)
    merged, earlier = state.merged(keys, new.table if new is not None else None)
    merged.save(merge=False)
    if earlier:
        console.say(f"  {len(earlier)} file(s) in {dest} answered an earlier, different request: they stay "
                    "there, but are not part of this answer (nor of the manifest)")
    if new is not None:
        new.raise_for_errors()
    summary = manifest_summary(merged)
    summary.update(jobs=[job.url for job in jobs], dest=str(dest), earlier_files=len(earlier))
    return summary


def _submit(casda, plan, missing, console):
    """Start the jobs for the missing files: products grouped by what each lacks, one call per group.

    Returns
    -------
    list of (job, sources, request)
        The sources in the order of the job's regions, and the request it was sent.
    """
    import dataclasses
    from astropy.coordinates import SkyCoord
    request = plan.request
    lacking = {}
    for item in missing:
        lacking.setdefault(item.product, set()).add(item.source.name if item.source else item.window)
    groups = {}
    for product, what in lacking.items():
        groups.setdefault(frozenset(what), []).append(product)
    ids = [str(p) for p in plan.images["obs_publisher_did"]]
    submitted = []
    for what, products in groups.items():
        rows = plan.images[[i for i, p in enumerate(ids) if p in products]]
        if request.service == "stage":
            console.say(f"Staging {len(rows)} whole file(s) in one SODA job ...")
            jobs = casda.stage_data(rows, wait=False)
            submitted += [(job, [], request) for job in jobs]
            continue
        if plan.sources is None:          # windows of whole products (slices)
            channels = tuple(c for c, label in zip(request.channels, request.windows()) if label in what)
            part = dataclasses.replace(request, channels=channels)
            console.say(f"Cutting {len(channels)} channel window(s) out of {len(rows)} cube(s) in one SODA "
                        "job ...")
            jobs = casda.cutout(rows, wait=False, **part.call_kwargs())
            submitted += [(job, [], part) for job in jobs]
            continue
        sources = [s for s in plan.sources if s.name in what]
        positions = SkyCoord([s.ra for s in sources], [s.dec for s in sources], unit="deg")
        if request.service == "spectrum":
            console.say(f"Extracting spectra at {len(sources)} position(s) from {len(rows)} cube(s) in one "
                        "SODA job ...")
            jobs = casda.spectra(rows, positions, wait=False, **request.call_kwargs())
        else:
            console.say(f"Cutting {len(sources)} region(s) ({request.describe()}) out of {len(rows)} "
                        f"image(s) in one SODA job ...")
            jobs = casda.cutout(rows, coordinates=positions, wait=False, **request.call_kwargs())
        submitted += [(job, sources, request) for job in jobs]
    return submitted


def _download_labelled(casda, submitted, dest, options):
    """Download the jobs' files under their stable names, with the manifest's request columns."""
    from .reruns import CutoutLabels, label_whole_files
    names, labels, staged = {}, {}, []
    for job, sources, request in submitted:
        if request.service == "stage":
            staged.append(job)
            continue
        job_names, job_labels = CutoutLabels([job], casda.cutout_table(job), sources, request.service,
                                             request).for_download([job])
        names.update(job_names)
        labels.update(job_labels)
    jobs = [job for job, _, _ in submitted]
    new = casda.download(jobs, str(dest), progress=_progress(options), save_manifest=False,
                         names=names or None, labels=labels or None, no_wait=options.no_wait)
    if staged:
        new.table = label_whole_files(new.table)
    return new


def stage_whole_files(casda, products, dest, options, console, policy=None):
    """Whole files of ``products`` (a table with ``obs_publisher_did``) into ``dest``; safe to rerun.

    The folder's manifest is read before anything is staged: products whose files are there
    and verified are not staged again (on CASDA, staging can mean a tape recall).
    """
    from .reruns import CutRequest
    return fetch_missing(casda, [Plan(CutRequest("stage"), products)], dest, options, console, policy=policy)


def manifest_summary(manifest):
    """Counts and bytes of a manifest, for the summary line and ``--json``."""
    import numpy as np
    table = manifest.table
    data = table[table["kind"] == "data"] if len(table) else table
    verified = int(np.sum(data["checksum_status"] == "verified")) if len(data) else 0
    errors = manifest.error_files
    return {"files": len(data), "bytes": int(np.sum(data["size"])) if len(data) else 0,
            "verified": verified, "size_only": len(manifest.size_only), "failed": len(manifest.failed),
            "error_files": len(errors),
            "error_messages": [str(m) for m in errors["message"]] if len(errors) else [],
            "paths": manifest.paths, "manifest": os.path.join(manifest.savedir, _manifest_name())}


def _manifest_name():
    from .download import MANIFEST_NAME
    return MANIFEST_NAME


def _size(nbytes):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000.0


def _summary_text(summary, elapsed, what="file(s)"):
    text = (f"{summary['files']} {what} ({_size(summary['bytes'])}), {summary['verified']} verified "
            f"against CASDA checksums, in {elapsed:.1f} s; manifest: {summary['manifest']}")
    if summary.get("size_only"):
        text += (f"\n{summary['size_only']} file(s) had no CASDA .checksum: only their size was checked "
                 "('size-only' in the manifest)")
    if summary.get("uncovered"):
        text += (f"\n{len(summary['uncovered'])} position(s) in no footprint, not asked for: "
                 f"{', '.join(summary['uncovered'][:10])}")
    if summary["error_files"]:
        text += f"\n{summary['error_files']} region(s) had no data in some image (CASDA error files):"
        text += "".join(f"\n  {_one_line(message, 200)}" for message in summary["error_messages"][:5])
    return text


def _cutout_titles(paths, positions, names=None):
    """Panel titles: the product, and the source a cutout is centred on (its name when known)."""
    import numpy as np
    from .jobs import product_id_of
    from .plots import image_centre
    titles = []
    for path in paths:
        title = product_id_of(Path(path).stem) or Path(path).stem
        if positions is not None and len(positions):
            try:
                centre, width = image_centre(path)
            except (OSError, ValueError):
                titles.append(title)
                continue
            separation = positions.separation(centre)
            nearest = int(np.argmin(separation))
            if separation[nearest] < width / 2:
                title += "\n" + (str(names[nearest]) if names is not None else
                                 positions[nearest].to_string("decimal", precision=4))
        titles.append(title)
    return titles


def _manifest_titles(manifest, paths, subtypes):
    """Panel titles from a labelled manifest: subtype and product, then the source."""
    table = manifest.table
    if "source" not in table.colnames:
        return None
    rows = {str(row["path"]): row for row in table}
    titles = []
    for path in paths:
        row = rows.get(path)
        if row is None:
            return None
        product = str(row["product_id"])
        head = f"{subtypes[product]}  {product}" if product in (subtypes or {}) else product
        titles.append(f"{head}\n{row['source']}" if row["source"] else head)
    return titles


def _manifest_targets(manifest, paths):
    """The source position of each cutout, from a labelled manifest (None where unknown)."""
    import numpy as np
    from astropy.coordinates import SkyCoord
    table = manifest.table
    if "source_ra" not in table.colnames:
        return None
    rows = {str(row["path"]): row for row in table}
    targets = []
    for path in paths:
        row = rows.get(path)
        ok = row is not None and np.isfinite(row["source_ra"]) and np.isfinite(row["source_dec"])
        targets.append(SkyCoord(float(row["source_ra"]), float(row["source_dec"]), unit="deg")
                       if ok else None)
    return targets


def draw_preview(path, manifest, positions, console, names=None, subtypes=None):
    """Contact sheet of the downloaded cutouts, with the requested positions marked."""
    from .plots import contact_sheet
    fits_paths = [p for p in manifest.paths if p.lower().endswith(".fits")]
    if not fits_paths:
        console.warn("no FITS cutouts to preview")
        return None
    titles = _manifest_titles(manifest, fits_paths, subtypes) or _cutout_titles(fits_paths, positions, names)
    count = contact_sheet(fits_paths, path, positions=positions, titles=titles,
                          targets=_manifest_targets(manifest, fits_paths))
    console.say(f"Preview of {count} cutout(s) written to {path}")
    return str(path)


# --- error handling -----------------------------------------------------------------------------

def exit_code_for(exc):
    """The documented exit code of an exception (`EXIT_CODES`, ``casda --help``)."""
    import requests
    from astroquery.exceptions import LoginError
    from .errors import (CasdaError, DownloadError, InvalidInputError, JobError, MissingDependencyError,
                         NameResolverUnavailableError, NoAccessError, NotLoggedInError, ServiceError,
                         UnsafeFilenameError)
    table = [
        (click.exceptions.UsageError, EXIT_USAGE),
        (MissingDependencyError, EXIT_USAGE),      # says what to install
        (NameResolverUnavailableError, EXIT_SERVICE),      # bad input only in form: the network failed
        (NothingFound, EXIT_NOTHING_FOUND),
        (UnsafeFilenameError, EXIT_DOWNLOAD),
        (DownloadError, EXIT_DOWNLOAD),
        (NotLoggedInError, EXIT_LOGIN),
        (LoginError, EXIT_LOGIN),
        (InvalidInputError, EXIT_USAGE),
        (JobError, EXIT_JOB),
        (NoAccessError, EXIT_SERVICE),
        (ServiceError, EXIT_SERVICE),
        (requests.RequestException, EXIT_SERVICE),
        (CasdaError, EXIT_SERVICE),
        (OSError, EXIT_USAGE),
    ]
    return next((code for kind, code in table if isinstance(exc, kind)), EXIT_INTERNAL)


def _error_message(exc):
    from .errors import CasdaError
    if isinstance(exc, click.exceptions.UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return f"{exc.format_message()}{hint}"
    if isinstance(exc, OSError) and not isinstance(exc, CasdaError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    text = str(exc) or type(exc).__name__
    if exit_code_for(exc) == EXIT_INTERNAL:
        return f"internal error {type(exc).__name__}: {text} (rerun with --debug for the traceback)"
    return shell_terms(text)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """One line per warning (astropy's and ours) on stderr, instead of Python's file:line form."""
    click.echo(f"casda: warning: {shell_terms(_one_line(message))}", err=True)


def main(argv=None):
    """Run the ``casda`` command line and return its exit code.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success; see ``casda --help`` for the others.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _STARTED_JOBS.clear()
    _CREATED_FOLDERS.clear()
    code = EXIT_OK
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        if "-q" in argv or "--quiet" in argv:
            warnings.simplefilter("ignore")
        elif not debug:
            # CASDA's DataLink documents give CHANNEL the unit "pixel(s)", which astropy warns
            # about (VOTable W50) on every call: a quirk of the server, nothing a shell user
            # can act on. Python callers still get it, as from astroquery.casda; --debug shows it.
            warnings.filterwarnings("ignore", message=r".*W50: Invalid unit string 'pixels?'")
        try:
            result = cli.main(args=argv, prog_name="casda", standalone_mode=False)
            code = result if isinstance(result, int) else EXIT_OK
        except (click.exceptions.Abort, KeyboardInterrupt):
            hint = resume_hint()
            click.echo("casda: interrupted" + (f"; {hint}" if hint else ""), err=True)
            code = EXIT_INTERRUPTED
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.exceptions.NoArgsIsHelpError as exc:   # plain 'casda': the help, not an error line
            click.echo(exc.format_message(), err=True)
            code = EXIT_USAGE
        except Exception as exc:  # every error ends as one line and an exit code
            from .errors import JobTimeoutError
            if debug:
                import traceback
                traceback.print_exc()
            message = _one_line(_error_message(exc))
            if isinstance(exc, JobTimeoutError) and "casda job " not in message and resume_hint():
                message += f"; {resume_hint()}"      # a timed-out job is still running on CASDA
            click.echo(f"casda: error: {message}", err=True)
            code = exit_code_for(exc)
    if code not in (EXIT_OK, EXIT_INTERRUPTED):
        from .reruns import remove_if_empty
        remove_if_empty(_CREATED_FOLDERS)     # a failed command leaves no empty folder
    return code


# --- commands -----------------------------------------------------------------------------------

@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"],
                                                       "max_content_width": 100})
@click.version_option(__version__, prog_name="casda", message="%(prog)s %(version)s")
def cli():
    """Query, cut out, stage and download ASKAP data from CASDA.

    \b
    New here? Run the demo: it starts a local CASDA emulator and shows each step:
      casda demo
    """


def _epilog(*examples):
    lines = "\n".join(f"  {example}" for example in examples)
    return f"\b\nExamples:\n{lines}\n\nExit codes, credentials and output: see 'casda --help'."


def _ids(table, limit=6):
    ids = [str(value) for value in table["obs_publisher_did"]]
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _finish(console, options, started, summary, text):
    summary["seconds"] = round(time.monotonic() - started, 2)
    console.summary(summary, text)
    return EXIT_OK


# --- query / tap --------------------------------------------------------------------------------

def _screen_columns(table, columns, command):
    if columns:
        if columns.strip().lower() == "all":
            return table.colnames
        wanted = [name.strip() for name in columns.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in table.colnames]
        if unknown:
            raise click.BadParameter(f"no column {', '.join(unknown)}; the table has: "
                                     f"{', '.join(table.colnames)}", param_hint="--columns")
        return wanted
    if command == "query" and "obs_publisher_did" in table.colnames:
        return [name for name in _OBSCORE_SCREEN_COLUMNS if name in table.colnames]
    return table.colnames


def _rows_as_dicts(table):
    """The rows as JSON-ready dictionaries (masked cells become null)."""
    return [{name: _json_value(row[name]) for name in table.colnames} for row in table]


def _json_value(value):
    import numpy as np
    if np.ma.is_masked(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else _json_default(value)


def _write_stdout(table, output_format, columns):
    """``-o -``: the table on standard output, in ``--format``, and nothing else there."""
    import io
    if output_format == "table":       # the screen layout: server text escaped as on the screen
        click.echo(plain_text("\n".join(table[columns].pformat(max_lines=-1, max_width=-1))))
    elif output_format == "json":
        click.echo(json.dumps(_rows_as_dicts(table[columns]), indent=1, default=_json_default))
    elif output_format == "votable":
        buffer = io.BytesIO()   # the VOTable writer wants bytes
        table[columns].write(buffer, format="votable")
        click.echo(buffer.getvalue().decode("utf-8"), nl=False)
    else:
        buffer = io.StringIO()
        table[columns].write(buffer, format=STDOUT_FORMATS[output_format])
        click.echo(buffer.getvalue(), nl=False)


def show_table(table, options, console, *, output, output_format, columns, command, overwrite=False):
    """Write the table to ``output`` (``-`` is stdout) or the screen; the JSON summary carries it too.

    A table with no rows is "nothing matched" (exit 1), as in every other command.
    """
    summary = {"command": command, "rows": len(table), "columns": table.colnames, "output": output}
    if not len(table):
        raise NothingFound(f"the {command} matched no rows")
    if output == "-":
        _write_stdout(table, output_format, table.colnames if columns is None else
                      _screen_columns(table, columns, command))
        console.say(f"{len(table)} row(s) written to standard output")
        return EXIT_OK
    if output:
        write_table(table, output, output_format, overwrite=overwrite)
        console.say(f"{len(table)} row(s) written to {output}")
        return _finish(console, options, time.monotonic(), summary, "")
    shown = _screen_columns(table, columns, command)
    if len(shown) < len(table.colnames):
        console.say(f"showing {len(shown)} of {len(table.colnames)} columns "
                    "(--columns all, or --output FILE for every column)")
    summary["data"] = _rows_as_dicts(table)
    text = "\n".join(table[shown].pformat(max_lines=-1, max_width=-1)) if len(table) else "(no rows)"
    console.summary(summary, text)
    return EXIT_OK


def write_table(table, path, output_format, *, overwrite=False):
    """``-o FILE``: the table written through the package's one safe writer (never via a link)."""
    import io
    from .writer import write_bytes
    buffer = io.BytesIO()
    if output_format == "votable":
        table.write(buffer, format="votable")     # the VOTable writer wants bytes
    else:
        text = io.StringIO()
        table.write(text, format=output_format)
        buffer.write(text.getvalue().encode("utf-8"))
    write_bytes(path, buffer.getvalue(), overwrite=overwrite)


def _output_options(func):
    """``-o FILE`` / ``-o -`` with ``--format``, and ``--overwrite``: the same for every table command."""
    func = click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")(func)
    func = click.option("--format", "output_format", type=click.Choice(list(STDOUT_FORMATS)),
                        help="Format of -o - (standard output); default: table.")(func)
    return click.option("-o", "--output", metavar="FILE",
                        help="Write the table: .xml/.vot (VOTable), .csv or .ecsv ('casda tap' also "
                             ".parquet, "
                             "streamed); '-' for stdout.")(func)


@cli.command(cls=CoordinateCommand, epilog=_epilog(
    "casda query 187.5 -45.0 --radius 30arcmin --collection EMU",
    "casda query '22h15m38s -45d50m30s' --band 1.2GHz 1.4GHz --type cube -o found.ecsv",
    "casda query 'NGC 7232' --radius 1deg -o - --format csv | head",
    "casda query --ra 333.9 --dec -45.84 --time 2019-01-01 2020-01-01 --subtype cont.restored.t0"))
@click.argument("position", nargs=-1)
@click.option("--ra", help="Right ascension (degrees or sexagesimal hours), with --dec.")
@click.option("--dec", help="Declination (degrees or sexagesimal), with --ra.")
@click.option("--radius", type=ANGLE, help="Cone radius: 2arcmin, 0.5deg or degrees (default 1 arcmin).")
@click.option("--width", type=ANGLE, help="Box width (with --height) instead of a cone.")
@click.option("--height", type=ANGLE, help="Box height (with --width).")
@click.option("--band", nargs=2, type=SPECTRAL, metavar="LOW HIGH",
              help="Spectral range with units (1.2GHz 1.4GHz, 20cm 22cm); '-' for an open end.")
@click.option("--rest-frequency", type=SPECTRAL, metavar="FREQ", help="Rest frequency for a velocity --band.")
@click.option("--time", "time_range", nargs=2, type=TIME, metavar="START END",
              help="Products observed entirely within START..END (ISO dates or MJD).")
@click.option("--pol", multiple=True, help="Polarisation (I, Q, U, V...); repeat for several.")
@click.option("--collection", multiple=True,
              help="Project: an alias (RACS, EMU, VAST, POSSUM, WALLABY...) or CASDA's full name; "
                   "repeatable.")
@click.option("--type", "dataproduct_type", type=click.Choice(["image", "cube"]), help="Data product type.")
@click.option("--subtype", multiple=True, help="dataproduct_subtype, e.g. cont.restored.t0; repeatable.")
@click.option("--maxrec", type=click.IntRange(min=1), help="Most rows to return.")
@_output_options
@click.option("--columns", help="Columns to show on screen (comma-separated, or 'all').")
@common_options
def query(options, position, ra, dec, radius, width, height, band, rest_frequency, time_range, pol,
          collection, dataproduct_type, subtype, maxrec, output, output_format, overwrite, columns):
    """Find images and cubes with CASDA's SIA2 service.

    POSITION is a centre such as '187.5 -45.0' or '12:30:00 -45:00:00' (or use --ra/--dec).
    """
    console = options.console
    output_format = _check_output(output, overwrite, output_format)
    coordinates = _position(position, ra, dec)
    kwargs = _sia2_constraints(coordinates, radius, width, height, band, rest_frequency, time_range)
    optional = dict(pol=list(pol) or None, collection=expand_collections(collection),
                    dataproduct_type=dataproduct_type, maxrec=maxrec)
    if coordinates is None and not (band or time_range or pol or collection or dataproduct_type or subtype):
        raise click.UsageError("no constraint: give a position, --band, --time, --pol, --collection, --type "
                               "or --subtype (a query of the whole archive is not sent)")
    kwargs.update({key: value for key, value in optional.items() if value is not None})
    casda = make_client(options)
    console.say(f"Querying CASDA SIA2{_server_note(options)} ...")
    table = casda.query_region(coordinates, dataproduct_subtype=list(subtype) or None, **kwargs)
    return show_table(table, options, console, output=output, output_format=output_format, columns=columns,
                      command="query", overwrite=overwrite)


def _sia2_constraints(coordinates, radius, width, height, band, rest_frequency, time_range):
    """query_region's keyword arguments; without a position there is no cone (radius=None)."""
    kwargs = {}
    if (width is None) != (height is None):
        raise click.UsageError("--width and --height go together")
    if coordinates is None and (radius or width):
        raise click.UsageError("--radius, --width and --height need a position (POSITION or --ra/--dec)")
    if width is not None:
        if radius is not None:
            raise click.UsageError("give --radius or --width/--height, not both")
        kwargs.update(width=width, height=height, radius=None)
    elif radius is not None:
        kwargs["radius"] = radius
    elif coordinates is None:
        kwargs["radius"] = None
    if band:
        kwargs["band"] = checked_band(band, rest_frequency)
    if rest_frequency is not None:
        kwargs["rest_frequency"] = rest_frequency
    if time_range:
        kwargs["time"] = tuple(time_range)
    return kwargs


@cli.command(epilog=_epilog(
    "casda tap \"SELECT TOP 5 * FROM ivoa.obscore WHERE obs_id = '609'\"",
    "casda tap \"SELECT * FROM casda.continuum_component WHERE first_sbid = 609\" -o components.csv",
    "echo 'SELECT * FROM TAP_SCHEMA.tables' | casda tap - --async"))
@click.argument("adql")
@click.option("--async", "async_job", is_flag=True, help="Run as an asynchronous TAP job (long queries).")
@click.option("--maxrec", type=click.IntRange(min=1), help="Most rows to return.")
@click.option("--auth", is_flag=True, help="Query through the OPAL proxy (needs a login): includes "
                                           "embargoed rows of your projects.")
@_output_options
@click.option("--columns", help="Columns to show on screen (comma-separated).")
@common_options
def tap(options, adql, async_job, maxrec, auth, output, output_format, overwrite, columns):
    """Run an ADQL query on CASDA's TAP service ('-' reads it from standard input)."""
    console = options.console
    if adql != "-" and not adql.strip():
        raise click.UsageError("the ADQL query is empty")
    if output and output != "-" and Path(output).suffix.lower() in (".parquet", ".pq"):
        if output_format:
            raise click.UsageError("--format goes with -o - (standard output); a .parquet file is Parquet")
        return _tap_to_parquet(options, adql, async_job, maxrec, auth, output, overwrite)
    output_format = _check_output(output, overwrite, output_format)
    if adql == "-":
        adql = sys.stdin.read()
    if not adql.strip():
        raise click.UsageError("the ADQL query is empty")
    casda = make_client(options)
    if auth:
        log_in(casda, options, console)
    console.say(f"Querying CASDA TAP{_server_note(options)}{' (async job)' if async_job else ''} ...")
    table = casda.query_tap(adql, async_job=async_job, maxrec=maxrec, authenticated=auth)
    return show_table(table, options, console, output=output, output_format=output_format, columns=columns,
                      command="tap", overwrite=overwrite)


def _tap_to_parquet(options, adql, async_job, maxrec, auth, output, overwrite):
    """``casda tap ... -o x.parquet``: the result streamed to Parquet (the tap package), never held whole."""
    console, started = options.console, time.monotonic()
    check_output_path(output, overwrite)
    adql = sys.stdin.read() if adql == "-" else adql
    if not adql.strip():
        raise click.UsageError("the ADQL query is empty")
    casda = make_client(options)
    if auth:
        log_in(casda, options, console)
    written = casda.query_tap(adql, async_job=async_job, maxrec=maxrec, authenticated=auth, output=output,
                              overwrite=overwrite)
    console.say(f"{written.rows} row(s) written to {output}" + ("" if written.complete else " (incomplete)"))
    summary = {"command": "tap", "rows": written.rows, "output": str(output), "complete": written.complete,
               "bytes_read": written.bytes_read}
    return _finish(console, options, started, summary, "")


# --- cutout workflows -----------------------------------------------------------------------------

def jobs_to_files(casda, jobs, dest, options, console, *, policy=None):
    """Follow jobs given by URL, download and verify into ``dest``: the summary dictionary."""
    from .recipes import wait_for_jobs
    _remember_jobs(jobs, dest)
    progress = JobProgress(console)
    wait_for_jobs(jobs, policy=policy or options.policy, on_phase=progress.on_phase, sleep=progress.sleep)
    manifest = download_into(casda, jobs, dest, options, console)
    summary = manifest_summary(manifest)
    summary["jobs"] = [job.url for job in jobs]
    summary["dest"] = str(dest)
    return summary


@cli.command(epilog=_epilog(
    "casda cutouts 609 out/ --flux-min 500 --cutout-radius 2arcmin --preview out/sheet.png",
    "casda cutouts 609 out/ --flux-min 500 --cutout-radius 2arcmin   # again: only verifies",
    "casda cutouts 609 out/ --cutout-radius 0.02   # a new size: new files, nothing stale",
    "casda cutouts 609 whole/ --full-files"))
@click.argument("sbid", type=click.IntRange(min=1))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--flux-min", type=FLUX, default=SCRIPT_FLUX_MIN, show_default=True,
              help="Cut out catalogue components brighter than this (mJy/beam if no unit).")
@cutout_size_options(SCRIPT_CUTOUT_RADIUS)
@window_options
@click.option("--subtype", multiple=True, default=("cont.restored.t0",), show_default=True,
              help="Image subtypes to cut (repeatable), e.g. spectral.restored.3d.")
@click.option("--max-sources", type=click.IntRange(min=1), help="Only the N brightest components.")
@click.option("--full-files", is_flag=True, help="Stage and download the whole images instead of cutouts.")
@click.option("--preview", metavar="FILE.png", help="Draw a contact sheet of the cutouts (needs matplotlib).")
@job_options
@common_options
def cutouts(options, sbid, dest, flux_min, cutout_radius, radius_alias, band, channel, pol, subtype,
            max_sources, full_files, preview):
    """Cutouts around the bright catalogue sources of a scheduling block (CASDA's cutouts.py).

    Finds the images of scheduling block SBID, the catalogue components above --flux-min,
    cuts a circle around each out of every image whose footprint holds it, and downloads
    and verifies the files (and a manifest) into DEST.  Files are named
    PRODUCT_COMPONENT_rSIZE.fits and the manifest names each file's source, position,
    region, window and polarisations.  Run again into the same DEST: the same request only
    verifies; a changed one fetches what it needs under its own names.
    """
    from .regions import parse_positions
    from .reruns import sources_from
    console, started = options.console, time.monotonic()
    _whole_files_only(full_files, **{"--cutout-radius": cutout_radius, "--band": band, "--channel": channel,
                                     "--pol": pol, "--preview": preview})
    radius = _cutout_radius(cutout_radius, radius_alias, console, SCRIPT_CUTOUT_RADIUS)
    request = cut_request("cutout", radius, band, channel, pol)
    dest = destination(dest)
    preview = _check_preview(preview)        # after DEST: the picture may go into it
    casda = make_client(options)
    log_in(casda, options, console)
    images = _sbid_images(casda, sbid, list(subtype), console)
    if full_files:
        summary = stage_whole_files(casda, images, dest, options, console)
        summary.update(sources=0)
    else:
        console.say(f"Finding catalogue components of SB{sbid} brighter than {flux_min:g} mJy/beam ...")
        components = casda.query_components(sbid=sbid, flux_min=flux_min)[:max_sources]
        if not len(components):
            raise NothingFound(f"no catalogue component of SB{sbid} is brighter than {flux_min:g} mJy/beam")
        console.say(f"  {len(components)} component(s)")
        sources = sources_from(parse_positions(components), list(components["component_name"]))
        summary = cut_sources(casda, images, sources, request, dest, options, console, preview=preview)
    summary.update(command="cutouts", sbid=sbid, images=len(images))
    return _finish(console, options, started, summary, _summary_text(summary, time.monotonic() - started))


def _sbid_images(casda, sbid, subtypes, console):
    console.say(f"Finding the images of scheduling block {sbid} ({', '.join(subtypes)}) ...")
    images = casda.query_sbid_images(sbid, subtypes=subtypes)
    if not len(images):
        raise NothingFound(f"scheduling block {sbid} has no images of subtype {', '.join(subtypes)}")
    console.say(f"  {len(images)} image(s): {_ids(images)}")
    return images


def _product_rows(casda, ids):
    """The ObsCore rows of product ids; an id CASDA does not know is "nothing matched" (exit 1)."""
    quoted = ", ".join(f"'{product}'" for product in ids)
    rows = casda.query_tap(f"SELECT * FROM ivoa.obscore WHERE obs_publisher_did IN ({quoted})")
    unknown = [product for product in ids if product not in {str(p) for p in rows["obs_publisher_did"]}]
    if unknown:
        raise NothingFound(f"CASDA has no product {', '.join(unknown)}")
    return rows


@cli.command(epilog=_epilog("casda sources cube-1001 my_sources.txt out/ --cutout-radius 1arcmin "
                            "--preview s.png",
                            "casda sources cube-1001 my_sources.txt out/ --cutout-radius 0.02",
                            "# my_sources.txt: one 'ra dec' per line, degrees or sexagesimal; '#' comments"))
@click.argument("image_id")
@click.argument("source_file", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@cutout_size_options(SCRIPT_CUTOUT_RADIUS)
@window_options
@click.option("--preview", metavar="FILE.png", help="Draw a contact sheet of the cutouts (needs matplotlib).")
@job_options
@common_options
def sources(options, image_id, source_file, dest, cutout_radius, radius_alias, band, channel, pol, preview):
    """Cutouts of a list of sources from one image (CASDA's sources.py).

    Each source is named by its position (Jhhmmss.s+ddmmss) in file names and the manifest;
    positions outside the image's footprint are named and not asked for.
    """
    from .regions import read_source_list
    from .reruns import sources_from
    console, started = options.console, time.monotonic()
    if not _PRODUCT_ID.match(image_id):
        raise click.BadParameter(f"{image_id!r} is not a product id like cube-1001", param_hint="IMAGE_ID")
    positions = read_source_list(source_file)
    radius = _cutout_radius(cutout_radius, radius_alias, console, SCRIPT_CUTOUT_RADIUS)
    request = cut_request("cutout", radius, band, channel, pol)
    dest = destination(dest)
    preview = _check_preview(preview)        # after DEST: the picture may go into it
    console.say(f"Read {len(positions)} position(s) from {source_file}")
    casda = make_client(options)
    log_in(casda, options, console)
    images = _product_rows(casda, [image_id])
    summary = cut_sources(casda, images, sources_from(positions), request, dest, options, console,
                          preview=preview)
    summary.update(command="sources", image=image_id)
    return _finish(console, options, started, summary, _summary_text(summary, time.monotonic() - started))


@cli.command(cls=CoordinateCommand, epilog=_epilog(
    "casda images 187.5 -45.0 out/ --cutout-radius 2arcmin --preview out/sheet.png",
    "casda images 12:30:00 -45:00:00 out/ --radius 0.05 --cutout-radius 0.02",
    "casda images 22:15:38 -45:50:30 racs/ --collection RACS --subtype cont.noise.t0 --full-files"))
@click.argument("ra")
@click.argument("dec")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--radius", "search_radius", type=ANGLE,
              help=f"Find images intersecting this cone (SIA2; default {SCRIPT_SEARCH_RADIUS}).")
@click.option("--search-radius", "search_alias", hidden=True, type=ANGLE, help="Deprecated: use --radius.")
@click.option("--cutout-radius", "--size", "cutout_radius", type=ANGLE,
              help=f"Radius of each cutout (default {SCRIPT_CUTOUT_RADIUS}).")
@window_options
@click.option("--collection", multiple=True, help="Project alias (RACS, EMU...) or full name; repeatable.")
@click.option("--subtype", multiple=True, help="Only these dataproduct_subtypes (default: every image).")
@click.option("--max-images", type=click.IntRange(min=1), help="Use only the first N images found.")
@click.option("--full-files", is_flag=True, help="Stage and download the whole images instead of cutouts.")
@click.option("--preview", metavar="FILE.png", help="Draw a contact sheet of the cutouts (needs matplotlib).")
@job_options
@common_options
def images(options, ra, dec, dest, search_radius, search_alias, cutout_radius, band, channel, pol, collection,
           subtype, max_images, full_files, preview):
    """Every image at a position (SIA2), as cutouts or whole files (CASDA's siap.py).

    RA and DEC are degrees or sexagesimal (RA in hours): 187.5 -45.0 or 12:30:00 -45:00:00.
    """
    from .reruns import sources_from
    console, started = options.console, time.monotonic()
    position = _position((ra, dec))
    if search_alias is not None:
        if search_radius is not None:
            raise click.UsageError("give the search cone once, with --radius")
        console.warn("--search-radius is deprecated: use --radius (the search cone in every command)")
        search_radius = search_alias
    _whole_files_only(full_files, **{"--cutout-radius": cutout_radius, "--band": band, "--channel": channel,
                                     "--pol": pol, "--preview": preview})
    search = search_radius if search_radius is not None else ANGLE.convert(SCRIPT_SEARCH_RADIUS, None, None)
    radius = cutout_radius if cutout_radius is not None else ANGLE.convert(SCRIPT_CUTOUT_RADIUS, None, None)
    request = cut_request("cutout", radius, band, channel, pol)
    dest = destination(dest)
    preview = _check_preview(preview)        # after DEST: the picture may go into it
    casda = make_client(options)
    log_in(casda, options, console)
    console.say(f"Finding images within {search.to('arcmin'):.3g} of {position.to_string('decimal')} "
                "(SIA2) ...")
    found = casda.query_region(position, radius=search, collection=expand_collections(collection),
                               dataproduct_subtype=list(subtype) or None)[:max_images]
    if not len(found):
        raise NothingFound(f"no images at {position.to_string('decimal')}")
    console.say(f"  {len(found)} image(s): {_ids(found)}")
    if full_files:
        summary = stage_whole_files(casda, found, dest, options, console)
    else:
        summary = cut_sources(casda, found, sources_from(position.reshape((1,))), request, dest, options,
                              console, preview=preview)
    summary.update(command="images", ra=position.ra.deg, dec=position.dec.deg, images=len(found))
    return _finish(console, options, started, summary, _summary_text(summary, time.monotonic() - started))


@cli.command(epilog=_epilog("casda spectra my_sources.txt 30arcsec out/ --plot out/spectra.png",
                            "casda spectra my_sources.txt 0.01 out/ --collection EMU "
                            "--subtype spectral.restored.3d",
                            "casda spectra my_sources.txt 30arcsec out/ --channel 1 8 --pol I"))
@click.argument("source_file", type=click.Path(dir_okay=False))
@click.argument("radius", type=ANGLE)
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--collection", multiple=True, help="Project alias (RACS, EMU...) or full name; repeatable.")
@click.option("--subtype", multiple=True, default=("spectral.restored.3d",), show_default=True,
              help="Cube subtypes to extract from (repeatable).")
@window_options
@click.option("--plot", metavar="FILE.png", help="Draw the spectra (needs matplotlib).")
@click.option("--rest-frequency", type=SPECTRAL, metavar="FREQ",
              help="Rest frequency: for a velocity --band, and a radio-velocity axis on --plot (e.g. "
                   "1420.405752MHz for HI; default: the files' RESTFREQ).")
@job_options
@common_options
def spectra(options, source_file, radius, dest, collection, subtype, band, channel, pol, plot,
            rest_frequency):
    """Spectra at each source of a list from the cubes covering it (CASDA's get_spectra.py).

    RADIUS is the aperture (30arcsec, or degrees); CASDA's spectrum generation service
    sums it into one spectrum per cube, source and Stokes parameter.  Each position is sent
    only to the cubes whose footprint holds it; positions no cube covers are named.
    """
    from .regions import read_source_list
    from .reruns import sources_from
    console, started = options.console, time.monotonic()
    positions = read_source_list(source_file)
    request = cut_request("spectrum", radius, band, channel, pol, rest_frequency)
    dest = destination(dest)
    plot = _check_preview(plot, "--plot")    # after DEST: the picture may go into it
    console.say(f"Read {len(positions)} position(s) from {source_file}")
    casda = make_client(options)
    log_in(casda, options, console)
    console.say(f"Finding cubes ({', '.join(subtype)}) covering them (SIA2) ...")
    cubes = casda.query_region(positions, radius=radius, collection=expand_collections(collection),
                               dataproduct_subtype=list(subtype))
    if not len(cubes):
        raise NothingFound(f"no {', '.join(subtype)} cube covers the sources in {source_file}")
    console.say(f"  {len(cubes)} cube(s): {_ids(cubes)}")
    summary = cut_sources(casda, cubes, sources_from(positions), request, dest, options, console, what="cube")
    if plot:
        from .download import Manifest
        subtypes = {str(r["obs_publisher_did"]): str(r["dataproduct_subtype"]) for r in cubes}
        summary["plot"] = _plot_spectra(plot, Manifest.read(summary["manifest"]), console, rest_frequency,
                                        subtypes)
    summary.update(command="spectra", cubes=len(cubes), sources=len(positions))
    text = _summary_text(summary, time.monotonic() - started, "spectrum file(s)")
    return _finish(console, options, started, summary, text)


def _spectrum_titles(manifest, paths, subtypes):
    """``subtype  product`` over the source's name and position, from the labelled manifest."""
    rows = {str(row["path"]): row for row in manifest.table}
    titles = []
    for path in paths:
        row = rows[path]
        product = str(row["product_id"])
        head = f"{subtypes[product]}  {product}" if product in (subtypes or {}) else product
        where = f"{row['source']} ({float(row['source_ra']):.4f} {float(row['source_dec']):+.4f})" \
            if row["source"] else ""
        titles.append(f"{head}\n{where}" if where else head)
    return titles


def _plot_spectra(path, manifest, console, rest_frequency=None, subtypes=None):
    from .plots import plot_spectra
    from .recipes import read_spectrum
    fits_paths = [p for p in manifest.paths if p.lower().endswith(".fits")]
    if not fits_paths:
        console.warn("no spectra to plot")
        return None
    titles = _spectrum_titles(manifest, fits_paths, subtypes)
    count = plot_spectra([read_spectrum(p) for p in fits_paths], path, titles=titles,
                         rest_frequency=rest_frequency)
    console.say(f"Plot of {count} spectr{'um' if count == 1 else 'a'} written to {path}")
    return str(path)


@cli.command(name="slice", epilog=_epilog("casda slice 609 8 out/",
                                          "casda slice 609 8 out/   # again: only verifies",
                                          "casda slice 609 16 out/ --subtype spectral.restored.3d"))
@click.argument("sbid", type=click.IntRange(min=1))
@click.argument("num_channels", type=click.IntRange(min=1))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--subtype", multiple=True, default=("spectral.restored.3d",), show_default=True,
              help="Cube subtypes to slice (repeatable).")
@click.option("--pol", type=POL, help="Stokes parameters to keep: I, QU, Q,U...")
@job_options
@common_options
def slice_command(options, sbid, num_channels, dest, subtype, pol):
    """Split each spectral cube of a scheduling block into chunks of NUM_CHANNELS channels.

    One job asks for every channel window (CASDA's CHANNEL parameter, 1-based) of every
    cube (CASDA's cutouts_channels.py); cubes with different channel counts get one job each.
    Files are named PRODUCT_CHANNEL_FIRST_LAST.fits; a rerun fetches only windows not yet
    there and verified.
    """
    from .reruns import CutRequest
    console, started = options.console, time.monotonic()
    dest = destination(dest)
    casda = make_client(options)
    log_in(casda, options, console)
    cubes = _sbid_images(casda, sbid, list(subtype), console)
    plans = []
    for channels, group in _by_channel_count(cubes).items():
        windows = channel_windows(channels, num_channels)
        console.say(f"  {len(group)} cube(s) of {channels} channels: {len(windows)} window(s) of "
                    f"{num_channels}")
        plans.append(Plan(CutRequest("cutout", channels=tuple(windows), pol=tuple(pol or ())), group))
    if not plans:
        raise NothingFound(f"no cube of SB{sbid} has more than one channel")
    summary = fetch_missing(casda, plans, dest, options, console)
    summary.update(command="slice", sbid=sbid, cubes=len(cubes), num_channels=num_channels)
    return _finish(console, options, started, summary, _summary_text(summary, time.monotonic() - started))


def channel_windows(channels, width):
    """1-based inclusive windows of ``width`` channels covering ``channels`` (the last may be shorter)."""
    return [(first, min(first + width - 1, channels)) for first in range(1, channels + 1, width)]


def _by_channel_count(cubes):
    """{channel count: sub-table} for the cubes with more than one channel (ObsCore ``em_xel``)."""
    import numpy as np
    from .errors import InvalidInputError
    if "em_xel" not in cubes.colnames:
        raise InvalidInputError("the ObsCore rows have no em_xel column: cannot count the channels")
    counts = np.asarray(cubes["em_xel"].filled(0) if hasattr(cubes["em_xel"], "filled") else cubes["em_xel"])
    return {int(n): cubes[counts == n] for n in sorted(set(counts.tolist())) if n > 1}


# --- staging, downloads, jobs ---------------------------------------------------------------------

def _product_ids_from(items):
    from .access import product_ids_from_table
    ids = []
    for item in items:
        if os.path.isfile(item):
            ids += product_ids_from_table(_read_table(item))
        elif _PRODUCT_ID.match(item):
            ids.append(item)
        else:
            raise click.BadParameter(f"{item!r} is neither a table file nor a product id like cube-1001",
                                     param_hint="ITEMS")
    return list(dict.fromkeys(ids))


def _read_table(path):
    from astropy.table import Table
    from .errors import InvalidInputError
    suffix = Path(path).suffix.lower()
    fmt = {".xml": "votable", ".vot": "votable", ".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(suffix)
    try:
        return Table.read(path, format=fmt) if fmt else Table.read(path)
    except (ValueError, OSError, TypeError) as exc:
        raise InvalidInputError(f"cannot read a table from {path}: {_one_line(exc, 200)}") from None


@cli.command(epilog=_epilog("casda stage cube-1001 cube-1002",
                            "casda query 187.5 -45.0 --radius 5arcmin --type cube -o found.ecsv",
                            "casda stage found.ecsv --dest out/   # a table from 'casda query -o'",
                            "casda stage found.ecsv --dest out/   # again: stages nothing, only verifies"))
@click.argument("items", nargs=-1, required=True)
@click.option("--dest", type=click.Path(file_okay=False),
              help="Wait for the job, then download and verify the files into DEST; products whose "
                   "files are already there and verified are not staged again.")
@job_options
@common_options
def stage(options, items, dest):
    """Stage whole files for download: product ids (cube-1001) or tables of products.

    Without --dest it prints the job URL and returns; resume with 'casda job URL --wait'.
    """
    console, started = options.console, time.monotonic()
    ids = _product_ids_from(items)
    dest = destination(dest) if dest else None
    casda = make_client(options)
    log_in(casda, options, console)
    products = _product_rows(casda, ids)
    if dest:
        summary = stage_whole_files(casda, products, dest, options, console)
        summary.update(command="stage", products=ids)
        return _finish(console, options, started, summary, _summary_text(summary, time.monotonic() - started))
    console.say(f"Staging {len(ids)} product(s) ...")
    jobs = casda.stage_data(products, wait=False)
    summary = {"command": "stage", "products": ids, "jobs": [job.url for job in jobs]}
    return _finish(console, options, started, summary, "\n".join(job.url for job in jobs))


@cli.command(epilog=_epilog("casda download https://casda.csiro.au/casda_data_access/data/async/<job> out/",
                            "casda download URL1 URL2 out/"))
@click.argument("sources", nargs=-1, required=True)
@click.argument("dest", type=click.Path(file_okay=False))
@job_options
@common_options
def download(options, sources, dest):
    """Download files by URL, or everything a job produced (waiting for it if needed).

    Each file is checked against its CASDA .checksum; a manifest is written into DEST.
    Interrupted downloads resume when run again.  No login is needed.
    """
    from .errors import redact_url
    console, started = options.console, time.monotonic()
    for source in sources:
        if not re.match(r"^https?://", source):
            raise click.BadParameter(f"{redact_url(source)!r} is not an http(s) URL", param_hint="SOURCES")
    dest = destination(dest)
    casda = make_client(options)
    jobs = [casda.load_job(url) for url in sources if _JOB_URL.search(url.split("?", 1)[0])]
    urls = [url for url in sources if not _JOB_URL.search(url.split("?", 1)[0])]
    if jobs:
        from .recipes import wait_for_jobs
        progress = JobProgress(console)
        wait_for_jobs(jobs, policy=options.policy, on_phase=progress.on_phase, sleep=progress.sleep)
    manifest = download_into(casda, jobs + urls, dest, options, console)
    summary = manifest_summary(manifest)
    summary.update(command="download", dest=str(dest), jobs=[job.url for job in jobs])
    return _finish(console, options, started, summary, _summary_text(summary, time.monotonic() - started))


@cli.command(epilog=_epilog("casda job https://casda.csiro.au/casda_data_access/data/async/<job id>",
                            "casda job URL --wait --dest out/",
                            "casda job URL --abort"))
@click.argument("url")
@click.option("--wait", is_flag=True, help="Wait for the job to finish, then download its files.")
@click.option("--dest", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where --wait downloads to.")
@click.option("--abort", is_flag=True, help="Abort the job.")
@job_options
@common_options
def job(options, url, wait, dest, abort):
    """Show a SODA job's status; resume (--wait) or --abort it."""
    console, started = options.console, time.monotonic()
    if wait and abort:
        raise click.UsageError("--wait and --abort exclude each other")
    if wait:
        dest = destination(dest)
    casda = make_client(options)
    soda_job = casda.load_job(url)
    if abort:
        soda_job.abort()
        soda_job.refresh()
        return _finish(console, options, started, _job_status(soda_job), f"{soda_job.url}: {soda_job.phase}")
    if wait:
        summary = jobs_to_files(casda, [soda_job], dest, options, console)
        summary.update(command="job", phase=soda_job.phase)
        return _finish(console, options, started, summary, _summary_text(summary, time.monotonic() - started))
    status = _job_status(soda_job)
    return _finish(console, options, started, status, _job_status_text(status))


def _job_status(soda_job):
    return {"command": "job", "url": soda_job.url, "job_id": soda_job.job_id, "phase": soda_job.phase,
            "results": len(soda_job.result_files()), "error_files": len(soda_job.error_files()),
            "error_summary": soda_job.error_summary,
            "destruction": soda_job.destruction.isoformat() if soda_job.destruction else None}


def _job_status_text(status):
    lines = [f"job:         {status['url']}", f"phase:       {status['phase']}",
             f"results:     {status['results']} file(s), {status['error_files']} error file(s)"]
    if status["error_summary"]:
        lines.append(f"error:       {_one_line(status['error_summary'], 300)}")
    if status["destruction"]:
        lines.append(f"expires:     {status['destruction']}")
    return "\n".join(lines)


# --- credentials ----------------------------------------------------------------------------------

@cli.command(epilog=_epilog("casda login --user you@example.org",
                            "CASDA_USER=you@example.org casda login"))
@common_options
def login(options):
    """Check your OPAL password with CASDA and store it in the system keyring.

    The password is asked for without echo (or read from --password-file, which beats
    CASDA_PASSWORD); it is stored only after CASDA accepted it.  With no keyring (headless
    machines) the check still runs and says how to log in next time.
    """
    from .credentials import KEYRING_SERVICE, PASSWORD_ENV_VARS, read_password_file
    console, started = options.console, time.monotonic()
    user = options.user or _ask_user()
    if options.password_file:
        password = read_password_file(options.password_file)
    elif any(os.environ.get(name) for name in PASSWORD_ENV_VARS):
        password = next(os.environ[name] for name in PASSWORD_ENV_VARS if os.environ.get(name))
    else:
        password = _ask_password(user)
    from .credentials import PasswordNotStoredWarning, keyring_advice
    casda = make_client(options)
    console.say(f"Checking the password of {user} with CASDA{_server_note(options)} ...")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PasswordNotStoredWarning)
        casda.login(username=user, password=password, store_password=True)
    stored = not any(issubclass(w.category, PasswordNotStoredWarning) for w in caught)
    for warning in caught:
        if not issubclass(warning.category, PasswordNotStoredWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    summary = {"command": "login", "user": user, "stored": stored, "keyring_service": KEYRING_SERVICE}
    if not stored:
        # a headless machine: the password was right, only the keyring is missing
        console.warn(f"no keyring could store the password. {keyring_advice()}")
        return _finish(console, options, started, summary,
                       f"CASDA accepted the password of {user}; it was not stored (no keyring).")
    return _finish(console, options, started, summary,
                   f"Logged in as {user}; password stored in the keyring ({KEYRING_SERVICE}).")


def _ask_user():
    from .errors import NotLoggedInError
    if not _isatty(sys.stdin):
        raise NotLoggedInError("no user name: give --user or set CASDA_USER")
    return click.prompt("ATNF OPAL user name (e-mail)", err=True).strip()


def _ask_password(user):
    import getpass
    from .errors import NotLoggedInError
    if not _isatty(sys.stdin):
        raise NotLoggedInError("no terminal to ask for the password: use --password-file or CASDA_PASSWORD")
    password = getpass.getpass(f"CASDA (ATNF OPAL) password for {user}: ")
    if not password:
        raise NotLoggedInError("no password entered")
    return password


@cli.command(epilog=_epilog("casda logout --user you@example.org"))
@common_options
def logout(options):
    """Remove your stored password from the system keyring."""
    import keyring
    from keyring.errors import KeyringError, PasswordDeleteError
    from .credentials import KEYRING_SERVICE
    console, started = options.console, time.monotonic()
    user = options.user or _ask_user()
    try:
        keyring.delete_password(KEYRING_SERVICE, user)
        removed = True
    except PasswordDeleteError:
        removed = False
    except KeyringError as exc:
        # no usable keyring (headless machines): nothing can be stored there, so nothing is, as
        # 'casda login' says on such machines; that is success, not a login failure
        console.warn(f"no usable keyring ({type(exc).__name__}): no password is stored on this machine")
        removed = False
    text = f"Removed the stored password of {user}." if removed else f"No password was stored for {user}."
    return _finish(console, options, started, {"command": "logout", "user": user, "removed": removed}, text)


# --- the demo -------------------------------------------------------------------------------------

class _Steps:
    """Numbered, narrated steps: a title and one plain sentence of what happens."""

    def __init__(self, console, total):
        self.console, self.total, self.number = console, total, 0

    def __call__(self, title, explanation):
        self.number += 1
        self.console.say(f"\nStep {self.number}/{self.total}: {title}")
        self.console.say(f"  {explanation}")


@contextlib.contextmanager
def _demo_casda(options, console):
    """A logged-in client and a poll policy: the embedded emulator, or --server."""
    from .core import CasdaClass
    from .jobs import PollPolicy
    if options.server or options.environment:
        casda = make_client(options)
        log_in(casda, options, console)
        yield casda, None
        return
    try:
        from .emulator import CasdaEmulator
    except ModuleNotFoundError as exc:     # the [emulator] extra is not installed: one line, exit 2
        raise click.UsageError(f"{exc} (or run the demo on CASDA with --server)") from None
    console.say("Starting a local CASDA emulator (synthetic ASKAP data; nothing leaves this machine) ...")
    with CasdaEmulator() as emu:
        console.say(f"  CASDA emulator at {emu.url}")
        casda = CasdaClass(server=emu.url)
        casda.login(username=emu.username, password=emu.password)
        console.say(f"  logged in as {emu.username}, the emulator's built-in account")
        # The emulator's jobs take a fraction of a second: look often, so each phase shows.
        yield casda, PollPolicy(first=0.1, factor=1.5, cap=1.0, timeout=600)


@cli.command(epilog=_epilog("casda demo", "casda demo my-demo/ --json",
                            "casda demo --server prod --sbid <SBID> --user you@example.org"))
@click.argument("dest", required=False, default=DEMO_DEST, type=click.Path(file_okay=False))
@click.option("--sbid", type=click.IntRange(min=1), default=DEMO_SBID, show_default=True,
              help="The scheduling block to use.")
@click.option("--flux-min", type=FLUX, default=SCRIPT_FLUX_MIN, show_default=True,
              help="What counts as a bright source.")
@cutout_size_options("2 arcmin")
@job_options
@common_options
def demo(options, dest, sbid, flux_min, cutout_radius, radius_alias):
    """Start here: CASDA's whole cutout workflow, step by step, on a local emulator.

    \b
    With no --server it starts the embedded CASDA emulator, logs in with its
    built-in account, and on scheduling block 609:
      1. finds the block's images (TAP on ObsCore),
      2. gets authenticated access to each (DataLink),
      3. finds the bright sources in the catalogue (TAP, flux_peak > 500 mJy/beam),
      4. cuts them all out in ONE SODA job (its phases are shown),
      5. downloads and verifies the cutouts.
    DEST (default ./casda-demo) receives the files, the manifest and preview.png.
    With --server (a URL or 'prod') the same steps run against that CASDA, with your
    usual credentials.
    """
    console, started = options.console, time.monotonic()
    radius = _cutout_radius(cutout_radius, radius_alias, console, "2 arcmin")
    dest = destination(dest)
    with _demo_casda(options, console) as (casda, policy):
        summary = _demo_steps(casda, sbid, flux_min, radius, dest, options, console, policy)
    summary.update(command="demo", sbid=sbid)
    return _finish(console, options, started, summary, _demo_text(summary, time.monotonic() - started))


def _demo_steps(casda, sbid, flux, radius, dest, options, console, policy):
    from .errors import redact_url
    from .regions import parse_positions
    step = _Steps(console, 5)
    step(f"TAP/ObsCore finds the images of scheduling block {sbid}",
         f"An ADQL query on ivoa.obscore selects the restored continuum images with obs_id = '{sbid}'.")
    images = casda.query_sbid_images(sbid)
    if not len(images):
        raise NothingFound(f"scheduling block {sbid} has no restored continuum images")
    for row in images:
        size = _size(float(row["access_estsize"]) * 1000)       # ObsCore gives kbytes
        console.say(f"    {row['obs_publisher_did']}: {row['filename']} ({size})")
    step("DataLink gets authenticated access to each image",
         "Behind your OPAL login, DataLink hands out a SODA service and an access token per image "
         "(tokens are credentials, so they are not shown).")
    access = casda.get_access_tokens(images, service="cutout_service")
    console.say(f"    {len(access.tokens)} token(s) for CASDA's cutout service at "
                f"{redact_url(access.tokens[0].service_url)}")
    for product_id, reason in access.denied.items():
        console.say(f"    no access to {product_id}: {_one_line(reason, 200)}")
    image = images[0]
    step("TAP queries the catalogue for the bright sources in the image",
         f"casda.continuum_component rows inside the footprint (s_region) of {image['obs_publisher_did']} "
         f"with flux_peak > {flux:g} mJy/beam, brightest first.")
    components = casda.query_components(image=image, flux_min=flux)
    if not len(components):
        raise NothingFound(f"no catalogue component in {image['obs_publisher_did']} is brighter than "
                           f"{flux:g} mJy/beam")
    for row in components:
        console.say(f"    {row['component_name']}: {float(row['flux_peak']):8.1f} mJy/beam at "
                    f"{float(row['ra_deg_cont']):.4f} {float(row['dec_deg_cont']):+.4f}")
    from .reruns import sources_from
    positions = parse_positions(components)
    step("SODA runs ONE cutout job for all of them",
         f"One job cuts a {radius.to('arcmin'):.3g} circle around each of the {len(positions)} sources "
         f"out of {len(images)} image(s); CASDA moves it through its phases:")
    preview = Path(dest) / PREVIEW_NAME if _can_plot(console) else None
    def before_download():
        step("The cutouts are downloaded and verified",
             "Each file is streamed into DEST, kept only if it matches CASDA's .checksum "
             "(size, CRC-32, SHA-1) and named after its image and source.")

    sources = sources_from(positions, list(components["component_name"]))
    summary = cut_sources(casda, images, sources, cut_request("cutout", radius), dest, options, console,
                          preview=preview, policy=policy, before_download=before_download)
    summary.update(images=len(images))
    return summary


def _can_plot(console):
    from .plots import require_matplotlib
    try:
        require_matplotlib()
    except ImportError as exc:
        console.warn(f"no preview: {exc}")
        return False
    return True


def _demo_text(summary, elapsed):
    names = [os.path.basename(path) for path in summary["paths"]]
    lines = [f"Demo complete in {elapsed:.1f} s: {summary['images']} image(s), {summary['sources']} bright "
             f"source(s), {len(summary['jobs'])} SODA job(s), {summary['files']} cutout(s) "
             f"({_size(summary['bytes'])}), {summary['verified']}/{summary['files']} verified.",
             f"  cutouts:  {summary['dest']}/ {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}",
             f"  manifest: {summary['manifest']}"]
    if summary.get("preview"):
        lines.append(f"  preview:  {summary['preview']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
