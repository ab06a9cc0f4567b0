"""Where CASDA's services live.

CASDA spreads its services over two hosts: the anonymous VO tools (discovery) and the
OPAL-authenticated VO proxy (the same services, plus DataLink tokens), with SODA on the
first host.  An `Endpoints` names all of them; `Endpoints.resolve` picks them from a
single base URL (the emulator, a port forward), a named environment, or the config.
"""
from dataclasses import dataclass

from . import conf

__all__ = ["Endpoints", "ENVIRONMENTS"]

#: Host pairs of CASDA's environments: (anonymous VO/SODA host, authenticated proxy host).
ENVIRONMENTS = {
    "prod": ("https://casda.csiro.au/", "https://data.csiro.au/"),
    "at": ("https://casda-at-app.csiro.au/", "https://daplt.csiro.au/"),
    "test": ("https://casda-tst-app.csiro.au/", "https://daptst.csiro.au/"),
    "dev": ("https://casda-dev-app.csiro.au/", "https://dapdev.csiro.au/"),
}


def _slash(url):
    return url if url.endswith("/") else url + "/"


@dataclass(frozen=True)
class Endpoints:
    """Base URLs of CASDA's services (each ends with ``/``).

    Attributes
    ----------
    vo_tools : str
        Anonymous VO services: ``tap/``, ``sia2/query``, ``datalink/links``.
    vo_proxy : str
        The same services behind OPAL HTTP Basic auth; the only place credentials go.
    data_access : str
        SODA (``data/async``, ``data/sync``); authorised by tokens, never by password.
    """

    vo_tools: str
    vo_proxy: str
    data_access: str

    @property
    def sia2_url(self):
        return self.vo_tools + "sia2/query"

    @property
    def tap_url(self):
        return self.vo_tools + "tap"

    @property
    def proxy_tap_url(self):
        return self.vo_proxy + "tap"

    @property
    def proxy_sia2_url(self):
        return self.vo_proxy + "sia2/query"

    @property
    def datalink_url(self):
        return self.vo_proxy + "datalink/links"

    @property
    def login_url(self):
        return self.vo_proxy + "tap/availability"

    @property
    def soda_async_url(self):
        return self.data_access + "data/async"

    @classmethod
    def for_server(cls, base_url):
        """CASDA's whole path layout under one base URL (as the emulator serves it)."""
        base = _slash(base_url)
        return cls(base + "casda_vo_tools/", base + "casda_vo_proxy/vo/", base + "casda_data_access/")

    @classmethod
    def for_environment(cls, name):
        """The hosts of a named CASDA environment (``prod``, ``at``, ``test``, ``dev``)."""
        try:
            anonymous, proxy = ENVIRONMENTS[name]
        except KeyError:
            raise ValueError(f"unknown CASDA environment {name!r}; "
                             f"choose one of {', '.join(ENVIRONMENTS)}") from None
        return cls(anonymous + "casda_vo_tools/", proxy + "casda_vo_proxy/vo/",
                   anonymous + "casda_data_access/")

    @classmethod
    def from_conf(cls):
        """The endpoints the configuration names (read now, not at import)."""
        from .settings import effective   # server and soda_base_url may come from astroquery.cfg [casda]
        if conf.environment and conf.environment != "prod":
            return cls.for_environment(conf.environment)
        sia2 = effective("server")
        vo_tools = sia2.rsplit("sia2/query", 1)[0] if "sia2/query" in sia2 else _slash(conf.tap_url)[:-4]
        return cls(_slash(vo_tools), _slash(conf.vo_proxy_url), _slash(effective("soda_base_url")))

    @classmethod
    def resolve(cls, server=None):
        """`for_server` when ``server`` is given, else `from_conf`."""
        return cls.for_server(server) if server else cls.from_conf()
