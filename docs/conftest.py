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
