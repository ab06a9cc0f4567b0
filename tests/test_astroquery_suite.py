"""The plugin that runs astroquery's installed CASDA tests (``tests/astroquery_suite.py``):
its import rewrite survives other spellings of the file, and a listed difference cannot
hide a regression."""
import ast
import textwrap

import pytest

from astroquery_casda_ext import CasdaClass
from tests import astroquery_suite
from tests.astroquery_suite import (DIFFERENCES, CasdaImports, Difference, check_difference, installed_test_file,
                                    rewritten_module)

PROVIDED = {"Casda", "CasdaClass", "conf"}


def rewrite(source):
    tree = CasdaImports("astroquery.casda.tests", PROVIDED).visit(ast.parse(textwrap.dedent(source)))
    return ast.unparse(ast.fix_missing_locations(tree))


@pytest.mark.parametrize("source, expected", [
    ("from astroquery.casda import Casda", "from astroquery_casda_ext import Casda"),
    ("from astroquery.casda import Casda, CasdaClass as C", "from astroquery_casda_ext import Casda, CasdaClass as C"),
    ("from astroquery.casda.core import CasdaClass", "from astroquery_casda_ext import CasdaClass"),
    ("from ... import casda", "import astroquery_casda_ext as casda"),
    ("from astroquery import casda as c, log", "import astroquery_casda_ext as c\nfrom astroquery import log"),
    ("from .. import Casda, conf", "from astroquery_casda_ext import Casda, conf"),
    ("from ...utils.mocks import MockResponse", "from astroquery.utils.mocks import MockResponse"),
    ("from astroquery.exceptions import LoginError", "from astroquery.exceptions import LoginError"),
])
def test_imports_are_matched_on_the_syntax_tree(source, expected):
    assert rewrite(source) == expected


def test_a_name_we_do_not_provide_stops_the_collection():
    with pytest.raises(ImportError, match="_uws_ns.*line 1"):
        rewrite("from astroquery.casda.core import _uws_ns")


def test_a_newer_file_with_plain_and_presigned_hrefs_runs_rewritten(tmp_path):
    """A file shaped like a later astroquery's: other import spelling, new tests, its own data."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "job.xml").write_text("presigned")
    path = tmp_path / "test_casda.py"
    path.write_text(textwrap.dedent('''
        import os
        from astroquery.casda import (CasdaClass,
                                      Casda)
        def data_path(name):
            return os.path.join(os.path.dirname(__file__), "data", name)
        def test_uses_ours():
            assert Casda().__class__.__module__ == "astroquery_casda_ext.core"
            assert open(data_path("job.xml")).read() == "presigned"
    '''))
    module = rewritten_module(path)
    assert module.rewritten_imports == ("CasdaClass", "Casda") and module.CasdaClass is CasdaClass
    module.test_uses_ours()


def test_the_installed_file_is_astroquerys_own():
    path = installed_test_file()
    assert path is not None and "site-packages" in str(path) and path.parts[-3:] == ("casda", "tests",
                                                                                    "test_casda.py")
    assert {name for difference in DIFFERENCES for name in difference.tests} <= set(
        vars(rewritten_module(path)))      # every listed difference names a test of the file


def _box_difference():
    (box,) = [difference for difference in DIFFERENCES if "test_query_region_box" in difference.tests]
    return box


def test_a_listed_test_that_fails_elsewhere_fails():
    def regressed():
        values = [1]
        assert values == [2]        # not the documented statement
    box = _box_difference()
    with pytest.raises(pytest.fail.Exception, match="no longer fails only for the documented difference"):
        check_difference(Difference(box.reason, ("regressed",), AssertionError, "", {"regressed": "ra - width"},
                                    box.as_astroquery), "regressed", regressed, {})


def test_a_listed_test_that_no_longer_fails_fails():
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        check_difference(_box_difference(), "test_query_region_box", lambda: None, {})


def test_a_listed_test_must_pass_with_astroquerys_behaviour_put_back():
    def fails_twice():
        ra, width = 1.0, 2.0
        assert isclose(ra - width / 2)       # noqa: F821  (isclose: the documented failure's text)
    monkeypatched = Difference("why", ("fails_twice",), NameError, "isclose", {"fails_twice": "ra - width / 2"},
                               lambda monkeypatch: None)
    with pytest.raises(NameError):
        check_difference(monkeypatched, "fails_twice", fails_twice, {})


def test_the_box_difference_undoes_exactly_cos_dec():
    payload = CasdaClass()._args_to_payload(service="sia2", coordinates="187.5 -60", width="2 arcmin",
                                            height="3 arcmin")
    low, high, *_ = (float(x) for x in astroquery_suite._unwrapped_box(payload)["POS"].split()[1:])
    assert high - low == pytest.approx(2 / 60, abs=1e-9)
