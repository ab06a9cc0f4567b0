"""A local CASDA for tests, demos and benchmarks (never imported by the client code).

``CasdaEmulator`` serves the anonymous VO tools, the OPAL-authenticated VO proxy, SODA and
the staged-file downloads of CASDA on one local HTTP server, from synthetic holdings::

    from astroquery_casda_ext.emulator import CasdaEmulator

    with CasdaEmulator() as emu:
        print(emu.url)            # http://127.0.0.1:PORT/

It needs the ``[emulator]`` extra (werkzeug and sqlglot), which a client that only talks to
CASDA does not: importing this package is free, and asking for one of its names without
the extra raises `ModuleNotFoundError` naming `INSTALL_COMMAND`.
"""
import importlib

__all__ = ["CasdaEmulator", "EmulatorOptions", "FaultRule", "HoldingsConfig", "LoggedRequest", "User",
           "INSTALL_COMMAND", "missing_requirements"]

#: What installs the emulator's own dependencies.
INSTALL_COMMAND = "pip install 'astroquery_casda_ext[emulator]'"
#: Import names of the packages only the emulator uses (the ``[emulator]`` extra of setup.cfg).
REQUIREMENTS = ("werkzeug", "sqlglot")

# The public names and the modules that define them, imported on first use (PEP 562) so that
# `python -m astroquery_casda_ext.emulator` can say what is missing in one line.  ManualClock
# is documented with its module (astroquery_casda_ext.emulator.clock).
_EXPORTS = {"CasdaEmulator": "server", "EmulatorOptions": "options", "FaultRule": "options",
            "HoldingsConfig": "holdings", "LoggedRequest": "backend", "User": "backend",
            "ManualClock": "clock"}


def missing_requirements():
    """The emulator's dependencies that cannot be imported (empty when it can run).

    They are imported for real (the emulator needs them next anyway), so a package that is
    present but broken counts as missing too.

    Returns
    -------
    list of str
    """
    missing = []
    for name in REQUIREMENTS:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def require():
    """Raise `ModuleNotFoundError` naming `INSTALL_COMMAND` when a dependency is missing."""
    missing = missing_requirements()
    if missing:
        raise ModuleNotFoundError(f"the CASDA emulator needs {' and '.join(missing)}: {INSTALL_COMMAND}",
                                  name=missing[0])


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require()
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
