"""Placeholder: collected as astroquery's own ``astroquery/casda/tests/test_casda.py``, as installed.

The plugin ``tests/astroquery_suite.py`` replaces this file's collection by astroquery's
test file, read from the installed astroquery with its ``astroquery.casda`` imports
rewritten to ``astroquery_casda_ext``; the tests that check a documented difference are
listed there (``DIFFERENCES``).  ``tests/test_astroquery_suite.py`` tests the rewrite.
"""
