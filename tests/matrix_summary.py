"""pytest plugin: the reliability and security matrix, one summary line per category.

Tests join the matrix with ``@pytest.mark.matrix("faults")`` (or ``"bad-input"``, ``"data-safety"``,
``"security"``, ``"load"``).  At the end of the run one line per category that had tests
is printed, e.g. ``matrix faults: 31 passed, 0 failed``; skipped tests, and tests that
were collected but never ran (``-x``, Ctrl-C), are added when there are any.

Registered from the root ``conftest.py``::

    pytest_plugins = ["tests.matrix_summary"]

Under pytest-xdist the controller, which prints the summary, collects nothing itself: each
worker hands the categories it collected back with its results (``workeroutput``), and the
controller receives every test's reports, so the lines are the same as in a serial run.
"""
import pytest

#: The categories, in the order the summary lists them.
CATEGORIES = ("faults", "bad-input", "security", "data-safety", "load")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"matrix(category): part of the reliability and security matrix; category is one of "
                   f"{', '.join(CATEGORIES)} (a summary line per category ends the run)")
    config.pluginmanager.register(MatrixSummary(), "matrix-summary")


def summary_lines(categories, outcomes):
    """The summary lines for ``{nodeid: category}`` and ``{nodeid: outcome}``."""
    lines = []
    for category in CATEGORIES:
        nodeids = [nodeid for nodeid, name in categories.items() if name == category]
        if not nodeids:
            continue
        counts = {"passed": 0, "failed": 0, "skipped": 0, "not run": 0}
        for nodeid in nodeids:
            counts[outcomes.get(nodeid, "not run")] += 1
        line = f"matrix {category}: {counts['passed']} passed, {counts['failed']} failed"
        lines.append(", ".join([line] + [f"{counts[name]} {name}" for name in ("skipped", "not run")
                                         if counts[name]]))
    return lines


class MatrixSummary:
    """Counts the outcome of every matrix test, by category."""

    def __init__(self):
        self.categories = {}   # nodeid -> category
        self.outcomes = {}     # nodeid -> "passed" | "failed" | "skipped"

    def pytest_collection_finish(self, session):
        """Note each selected matrix test's category; an unknown category is a mistake in the test."""
        for item in session.items:
            marker = item.get_closest_marker("matrix")
            if marker is None:
                continue
            category = marker.args[0] if marker.args else None
            if category not in CATEGORIES:
                raise pytest.UsageError(f"{item.nodeid}: matrix category {category!r} is not one of "
                                        f"{', '.join(CATEGORIES)}")
            self.categories[item.nodeid] = category
        workeroutput = getattr(session.config, "workeroutput", None)   # an xdist worker
        if workeroutput is not None:
            workeroutput["matrix_categories"] = dict(self.categories)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        """(xdist controller) A worker is done: take the categories of the tests it collected."""
        self.categories.update(getattr(node, "workeroutput", {}).get("matrix_categories", {}))

    def pytest_runtest_logreport(self, report):
        """A test failed if any phase failed; it passed if its call passed and nothing failed.

        Every test's outcome is noted: under xdist the categories arrive only as the workers end."""
        previous = self.outcomes.get(report.nodeid)
        if report.failed:
            self.outcomes[report.nodeid] = "failed"
        elif report.skipped and previous != "failed":
            self.outcomes[report.nodeid] = "skipped"
        elif report.when == "call" and report.passed and previous is None:
            self.outcomes[report.nodeid] = "passed"

    def pytest_terminal_summary(self, terminalreporter):
        lines = summary_lines(self.categories, self.outcomes)
        if lines:
            terminalreporter.section("reliability and security matrix")
            for line in lines:
                terminalreporter.write_line(line)
