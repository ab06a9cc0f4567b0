"""
astroquery_casda_ext: a client for the CSIRO ASKAP Science Data Archive (CASDA).

``from astroquery_casda_ext import Casda`` is a drop-in replacement for
``from astroquery.casda import Casda``.
"""
__version__ = "0.1.0"

__all__ = ['Casda', 'CasdaClass', 'conf', 'Conf']
_FACADE = ('Casda', 'CasdaClass')
_CONFIG = ('Conf', 'conf')


def __getattr__(name):
    # The façade, and with it astroquery.query (pyvo's registry, astropy's tables: 0.7 s), and
    # the configuration (astropy's config machinery imports numpy: 0.2-0.4 s) are imported
    # when first asked for, so that the emulator, the checksum module and the command line's
    # help start without them (PEP 562).
    if name in _CONFIG:
        from . import config
        globals().update((key, getattr(config, key)) for key in _CONFIG)
        return globals()[name]
    if name in _FACADE:
        from . import core
        globals().update((key, getattr(core, key)) for key in _FACADE)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_FACADE) | set(_CONFIG))
