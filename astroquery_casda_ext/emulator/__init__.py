"""A local CASDA for tests, demos and benchmarks (never imported by the client code).

``CasdaEmulator`` serves the anonymous VO tools, the OPAL-authenticated VO proxy, SODA and
the staged-file downloads of CASDA on one local HTTP server, from synthetic holdings::

    from astroquery_casda_ext.emulator import CasdaEmulator

    with CasdaEmulator() as emu:
        print(emu.url)            # http://127.0.0.1:PORT/
"""
from .holdings import HoldingsConfig
from .options import EmulatorOptions, FaultRule
from .backend import LoggedRequest, User
from .server import CasdaEmulator

__all__ = ["CasdaEmulator", "EmulatorOptions", "FaultRule", "HoldingsConfig", "LoggedRequest", "User"]
