"""The matrix summary lines (tests/matrix_summary.py) are the same whether the suite runs in one
process or on pytest-xdist workers (as setup.cfg runs it), where the process that prints them
collects nothing itself."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Two files (setup.cfg hands out a file at a time), every outcome the summary counts.
SAMPLE = {
    "test_one.py": '''
import pytest

@pytest.mark.matrix("faults")
def test_absorbed(): pass

@pytest.mark.matrix("faults")
def test_not_absorbed(): assert False

@pytest.mark.matrix("faults")
def test_not_here(): pytest.skip("no such fault here")

def test_outside_the_matrix(): pass
''',
    "test_two.py": '''
import pytest

@pytest.fixture
def broken(): raise RuntimeError("set-up fails")

@pytest.mark.matrix("security")
@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_refused(case): pass

@pytest.mark.matrix("security")
def test_with_a_broken_fixture(broken): pass

@pytest.mark.matrix("load")
def test_load(): pass
''',
}

EXPECTED = ["matrix faults: 1 passed, 1 failed, 1 skipped",
            "matrix security: 3 passed, 1 failed",
            "matrix load: 1 passed, 0 failed"]


def matrix_lines(folder, *options):
    """The summary lines of a pytest run of ``folder`` with ``options`` (no ini file of ours)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.matrix_summary",
         "--rootdir", str(folder), "-c", str(folder / "pytest.ini"), *options, str(folder)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode in (1, 2), result.stdout + result.stderr   # failures (2: xdist's -x stop)
    return [line for line in result.stdout.splitlines() if line.startswith("matrix ")]


@pytest.fixture
def sample(tmp_path):
    for name, text in SAMPLE.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    return tmp_path


def test_serial_and_xdist_runs_print_the_same_matrix_lines(sample):
    assert matrix_lines(sample) == EXPECTED
    assert matrix_lines(sample, "-n", "2", "--dist", "loadfile") == EXPECTED


def test_tests_that_never_ran_are_counted_under_xdist_too(sample):
    expected = ["matrix faults: 1 passed, 1 failed, 1 not run", "matrix security: 0 passed, 0 failed, 4 not run",
                "matrix load: 0 passed, 0 failed, 1 not run"]
    assert matrix_lines(sample, "-x") == expected
    assert matrix_lines(sample, "-x", "-n", "1") == expected
