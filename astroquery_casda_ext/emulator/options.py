"""Every switch of the emulator, and the fault rules tests inject.

`EmulatorOptions` says which CASDA the emulator plays (old or current DataLink, how
result URLs look, whether downloads honour ``Range``, how jobs progress).  `FaultRule`
describes one misbehaviour of the network or the server, applied by ``server.py``
before the normal handling of every request whose path matches.
"""
import dataclasses
import re
from dataclasses import dataclass, field

from .sky_model import HoldingsConfig

__all__ = ["EmulatorOptions", "FaultRule", "FAULT_KINDS"]

#: The fault kinds `FaultRule.kind` accepts.
FAULT_KINDS = ("latency", "status", "reset", "truncate", "corrupt", "slow", "stall", "endless", "disposition",
               "gzip")

_CHOICES = {
    "datalink_flavour": ("current", "old"),
    "href_style": ("plain", "encoded", "presigned"),
    "tap_result_href": ("encoded", "plain"),
    "job_progression": ("time", "polls"),
}


@dataclass
class FaultRule:
    """One injected fault, for requests whose path matches ``path``.

    Attributes
    ----------
    path : str
        Regular expression searched (not matched) in the request path, e.g. ``r"/download/"``.
    kind : str
        ``"latency"`` sleep ``delay`` seconds, then answer normally;
        ``"status"`` answer ``status`` at once (with ``Retry-After`` if ``retry_after``);
        ``"reset"`` send ``after_bytes`` of the body, then reset the TCP connection;
        ``"truncate"`` send ``after_bytes`` of the body, then close cleanly (the
        ``Content-Length`` still promises the whole body);
        ``"corrupt"`` send the whole body with every byte from ``after_bytes`` on inverted;
        ``"slow"`` send the body at ``rate`` bytes per second;
        ``"stall"`` send the headers and ``after_bytes``, then stop for ``delay`` seconds
        (long enough to trip a client's read timeout), then send the rest;
        ``"endless"`` send the body with no ``Content-Length`` and keep sending after it
        (``after_bytes`` of it, then filler) until the client hangs up;
        ``"disposition"`` answer normally but name the file ``filename`` in
        ``Content-Disposition`` (a server-chosen name);
        ``"gzip"`` send the body gzip-encoded (``Content-Encoding: gzip``) whatever the
        request's ``Accept-Encoding`` says, with the encoded length; with ``after_bytes``,
        followed by that many zero bytes more inside the encoding (a gzip bomb: a GB of
        zeros is a MB encoded), streamed with no length.
    status : int
        HTTP status of a ``"status"`` fault.
    retry_after : float or None
        ``Retry-After`` seconds sent with a ``"status"`` fault; None sends no header.
    after_bytes : int
        Body bytes sent before a reset, truncate, corrupt or stall fault strikes (for
        ``"gzip"``: zero bytes added after the body, inside the encoding).
    delay : float
        Seconds of a ``"latency"`` or ``"stall"`` fault.
    rate : float or None
        Bytes per second of a ``"slow"`` fault.
    times : int or None
        The rule applies to the next ``times`` matching requests, then retires;
        None means every matching request.
    methods : tuple of str
        HTTP methods the rule applies to.
    filename : str or None
        The name a ``"disposition"`` fault sends.
    """

    path: str
    kind: str
    status: int = 503
    retry_after: float | None = None
    after_bytes: int = 0
    delay: float = 0.0
    rate: float | None = None
    times: int | None = None
    methods: tuple[str, ...] = ("GET", "POST", "HEAD", "DELETE")
    filename: str | None = None

    def __post_init__(self):
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; choose one of {', '.join(FAULT_KINDS)}")
        if self.kind == "slow" and not (self.rate and self.rate > 0):
            raise ValueError("a 'slow' fault needs a positive rate (bytes per second)")
        if self.after_bytes < 0 or self.delay < 0:
            raise ValueError("after_bytes and delay must not be negative")
        self.methods = tuple(method.upper() for method in self.methods)
        self._pattern = re.compile(self.path)

    def matches(self, method, path):
        """Whether this rule applies to a request (ignores ``times``)."""
        return method.upper() in self.methods and self._pattern.search(path) is not None


@dataclass
class EmulatorOptions:
    """Which CASDA the emulator plays.  Change them with ``CasdaEmulator.set_options``.

    Attributes
    ----------
    holdings : HoldingsConfig
        Size and content of the synthetic archive (only read when the emulator starts).
    datalink_flavour : str
        ``"current"`` (v1.24+: CIRCLE/POLYGON inputs, ``pawsey_async_service``) or ``"old"``
        (POS inputs, both async rows called ``async_service``).
    href_style : str
        How SODA job results point at files: ``"plain"`` URLs, ``"encoded"`` (the whole URL
        percent-encoded, as older servers did) or ``"presigned"`` (S3-style signed URLs).
    tap_result_href : str
        How the TAP async job's ``results/result`` link is written: ``"encoded"`` (CASDA's
        UWS 4.1 library percent-encodes every href) or ``"plain"``.
    shuffle_results : bool
        List SODA results in a random order (CASDA promises no order).
    range_support : bool
        Downloads honour ``Range`` and advertise ``Accept-Ranges: bytes``.
    uws_wait : bool
        Honour UWS 1.1 blocking ``WAIT`` on job GETs (CASDA has none).
    job_phases : tuple of (str, float)
        Phases a SODA job passes through after RUN, with seconds spent in each.
    job_progression : str
        ``"time"`` (phases advance with the clock) or ``"polls"`` (one phase per GET of the job).
    hold_jobs : bool
        Jobs stop in HELD until ``backend.release_job(job_id)``.
    job_expiry_seconds : float
        Seconds after completion before a job answers 410 Gone.
    transfer_rate : float or None
        Per-connection cap on download speed in bytes per second; None is unlimited.
    datalink_size_limit_gb : float or None
        Files larger than this lose their web download rows in DataLink.
    request_latency : float
        Seconds every request waits before it is answered, as if the client were far from
        the archive (each request pays one round trip; concurrent requests wait together).
    control_api : bool
        Serve ``/_emulator/`` (``GET /_emulator/log``: the request log as JSON; ``DELETE
        /_emulator/log``; ``POST /_emulator/reset``), so another process (the benchmarks)
        can read and reset the log.  Off by default: CASDA has no such path.
    catalogue_rows : int
        Rows of the large deterministic TAP table ``casda.bulk_continuum_component``
        (0: no such table); generated once into the data directory (``catalogue.py``).
    """

    holdings: HoldingsConfig = field(default_factory=HoldingsConfig)
    datalink_flavour: str = "current"
    href_style: str = "plain"
    tap_result_href: str = "encoded"
    shuffle_results: bool = False
    range_support: bool = True
    uws_wait: bool = False
    job_phases: tuple = (("QUEUED", 0.1), ("SUSPENDED", 0.1), ("EXECUTING", 0.1))
    job_progression: str = "time"
    hold_jobs: bool = False
    job_expiry_seconds: float = 72 * 3600
    transfer_rate: float | None = None
    datalink_size_limit_gb: float | None = None
    request_latency: float = 0.0
    control_api: bool = False
    catalogue_rows: int = 0

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if isinstance(self.catalogue_rows, bool) or not isinstance(self.catalogue_rows, int) \
                or self.catalogue_rows < 0:
            raise ValueError("catalogue_rows must be a whole number of rows (0: none)")
        if self.transfer_rate is not None and self.transfer_rate <= 0:
            raise ValueError("transfer_rate must be positive (bytes per second) or None")
        if not 0 <= self.request_latency <= 60:
            raise ValueError("request_latency must be between 0 and 60 seconds")

    def replace(self, **changes):
        """A copy with ``changes`` applied (checked like the constructor)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown emulator option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)
