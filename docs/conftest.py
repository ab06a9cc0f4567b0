"""Doctests in these pages run against the local emulator: ``casda`` is a `CasdaClass`
pointed at it and logged in with its built-in account, ``emu`` is the emulator."""
import pytest


@pytest.fixture(autouse=True)
def _docs_namespace(doctest_namespace, emulator, tmp_path, monkeypatch):
    from astroquery import log
    from astroquery_casda_ext import CasdaClass
    # The pages show results, not astroquery's INFO chatter (which goes to stdout).
    previous_level = log.level
    log.setLevel("WARNING")
    casda = CasdaClass(server=emulator.url)
    doctest_namespace.update(emu=emulator, casda=casda, CasdaClass=CasdaClass,
                             username=emulator.username, password=emulator.password)
    monkeypatch.chdir(tmp_path)
    yield
    log.setLevel(previous_level)


#: Catalogue positions (ICRS, degrees) of the object names astroquery's CASDA examples use:
#: the docs build has no network, so Sesame cannot be asked.
_KNOWN_NAMES = {"NGC 7232": (333.9083, -45.8500)}


@pytest.fixture(autouse=True)
def _astroquery_examples(request, emulator, monkeypatch, memory_keyring):
    """For astroquery_examples.rst: ``Casda``'s class-level URL is the emulator, the examples'
    OPAL account exists with its password in the keyring, and names resolve offline."""
    if "astroquery_examples" not in str(request.node.fspath):
        yield
        return
    from astropy.coordinates import SkyCoord
    from astropy.coordinates.name_resolve import NameResolveError
    from astroquery_casda_ext import CasdaClass
    from astroquery_casda_ext.credentials import KEYRING_SERVICE

    def from_name(name, *args, **kwargs):
        if name not in _KNOWN_NAMES:
            raise NameResolveError(f"{name!r} is not among the names the offline docs build knows")
        return SkyCoord(*_KNOWN_NAMES[name], unit="deg", frame=kwargs.get("frame", "icrs"))

    monkeypatch.setattr(SkyCoord, "from_name", from_name)
    user, password = "email@somewhere.edu.au", "example-opal-password"
    emulator.add_user(user, password)
    memory_keyring.set_password(KEYRING_SERVICE, user, password)
    CasdaClass.URL = emulator.url.rstrip("/") + "/casda_vo_tools/sia2/query"
    try:
        yield
    finally:
        del CasdaClass.URL
