"""Shared pytest fixtures: one emulator for the session, reset before each test, and a
hermetic environment (no CASDA_* variables, no real keyring)."""
import os

import pytest

#: Prints one summary line per reliability/security matrix category at the end of a run.
pytest_plugins = ["tests.matrix_summary", "tests.astroquery_suite"]

CASDA_ENV_VARS = ("CASDA_USER", "CASDA_PASSWORD", "CASDA_PASSWD")


#: Workers ``-n auto`` starts at most: the load test's two minutes bound the run from below, and
#: four workers already finish the other files within them; more add start-up time and memory.
MAX_WORKERS = 4


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (setup.cfg): one worker per CPU this process may run on, at most `MAX_WORKERS`.

    pytest-xdist's own count is of physical cores when psutil is installed (as dask brings it),
    which is 1 on a machine whose 2 CPUs are the threads of one core.
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None                       # the user's explicit count: pytest-xdist reads it
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cpus or 1))


def pytest_collection_modifyitems(config, items):
    """On pytest-xdist workers (setup.cfg runs the suite on one per core, a file at a time) the
    files of ``slow`` tests are handed out first, so that the short ones fill the other workers
    while they run instead of a long one starting last.  A serial run keeps the files' order."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)   # stable: else as collected


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """A `CasdaEmulator` serving real HTTP on 127.0.0.1 for the whole test session."""
    from astroquery_casda_ext.emulator import CasdaEmulator
    with CasdaEmulator(data_dir=tmp_path_factory.mktemp("casda-holdings")) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _reset_emulator(request):
    """Give every test that uses the emulator a clean one (faults, log, jobs, options)."""
    if "emulator" in request.fixturenames:
        request.getfixturevalue("emulator").reset()
    yield


@pytest.fixture(autouse=True)
def _hermetic_environment(request, monkeypatch):
    """Tests see no CASDA credentials from the developer's shell or keyring.

    Tests against the real CASDA (``remote_data``) are the exception: they read
    ``CASDA_USER`` / ``CASDA_PASSWORD``.
    """
    if request.node.get_closest_marker("remote_data"):
        yield
        return
    for name in CASDA_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    import keyring
    from keyring.backends.fail import Keyring as FailKeyring
    previous = keyring.get_keyring()
    keyring.set_keyring(FailKeyring())
    yield
    keyring.set_keyring(previous)


class FakeTime:
    """An injected clock whose time passes only when the code under test sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self):
        return self.now


@pytest.fixture
def fake_time():
    """A `FakeTime`: pass ``sleep=fake_time.sleep, clock=fake_time.clock`` to wait loops."""
    return FakeTime()


@pytest.fixture
def memory_keyring():
    """An in-memory keyring backend in place of the real one (restored afterwards)."""
    import keyring
    from keyring.backend import KeyringBackend
    from keyring.errors import PasswordDeleteError

    class MemoryKeyring(KeyringBackend):
        priority = 1

        def __init__(self):
            super().__init__()
            self.passwords = {}

        def get_password(self, service, username):
            return self.passwords.get((service, username))

        def set_password(self, service, username, password):
            self.passwords[(service, username)] = password

        def delete_password(self, service, username):
            if self.passwords.pop((service, username), None) is None:
                raise PasswordDeleteError(username)

    backend = MemoryKeyring()
    keyring.set_keyring(backend)   # _hermetic_environment restores the previous backend
    return backend


@pytest.fixture
def casda_cli(emulator, capsys, monkeypatch):
    """Run ``casda ARGS`` in this process (no interpreter start-up; still real HTTP to the
    emulator), with the built-in account in the environment and ``--server`` the emulator.

    Returns a `subprocess.CompletedProcess` (``returncode``, ``stdout``, ``stderr``).
    """
    import subprocess
    from astroquery_casda_ext import cli

    def run(*args, password=True, user=True, server=True):
        for name, value, wanted in (("CASDA_USER", emulator.username, user),
                                    ("CASDA_PASSWORD", emulator.password, password)):
            if wanted:
                monkeypatch.setenv(name, value)
            else:
                monkeypatch.delenv(name, raising=False)
        argv = [str(arg) for arg in args] + (["--server", emulator.url] if server else [])
        code = cli.main(argv)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)
    return run


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on (connections to it are refused)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
