"""The ``Casda`` façade (being assembled; see docs/internals.rst)."""
from astroquery.query import QueryWithLogin

__all__ = ["Casda", "CasdaClass"]


class CasdaClass(QueryWithLogin):
    """Access to the CSIRO ASKAP Science Data Archive."""

    def _login(self, *args, **kwargs):
        raise NotImplementedError


Casda = CasdaClass()
