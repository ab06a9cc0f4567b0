"""Every Table the package returns holds its text at the data's own width, and is otherwise
pyvo's Table: the same values, masks, units and dtype kinds.  Over real HTTP (the emulator),
pyvo reading the same answers as the baseline."""
import numpy as np
import pyarrow as pa
import pytest
import pyvo
from astropy.table import Table

from astroquery_casda_ext import CasdaClass
from astroquery_casda_ext.documents import parse_votable, table_of
from astroquery_casda_ext.tables import numpy_text, numpy_values

OBSCORE = "SELECT * FROM ivoa.obscore"


def assert_pyvos_table_at_own_width(ours, pyvos):
    assert ours.colnames == pyvos.colnames and len(ours) == len(pyvos) > 0
    for name in pyvos.colnames:
        mine, theirs = ours[name], pyvos[name]
        assert mine.dtype.kind == theirs.dtype.kind, name
        assert str(mine.unit) == str(theirs.unit), name
        assert np.array_equal(np.ma.getmaskarray(mine), np.ma.getmaskarray(theirs)), name
        shown = ~np.ma.getmaskarray(theirs)
        if theirs.dtype.kind == "f":
            assert np.allclose(np.ma.getdata(mine)[shown], np.ma.getdata(theirs)[shown], rtol=0, atol=0,
                               equal_nan=True), name
        else:
            assert list(np.ma.getdata(mine)[shown]) == list(np.ma.getdata(theirs)[shown]), name
        if theirs.dtype.kind == "U":
            longest = max((len(value) for value in np.ma.getdata(theirs)), default=0)
            assert mine.dtype.itemsize == 4 * max(1, longest), f"{name} is not at its longest value"
            assert mine.dtype.itemsize <= theirs.dtype.itemsize


@pytest.fixture
def pyvo_tap(emulator):
    return pyvo.dal.TAPService(emulator.url + "casda_vo_tools/tap")


@pytest.mark.parametrize("how", [{}, {"result_format": "votable"}, {"cache": True}], ids=["default", "votable",
                                                                                         "cached"])
def test_query_tap_is_pyvos_table_at_its_own_width(emulator, pyvo_tap, how, tmp_path):
    client = CasdaClass(server=emulator.url)
    client.cache_location = tmp_path
    ours = client.query_tap(OBSCORE, maxrec=500, **how)
    assert_pyvos_table_at_own_width(ours, pyvo_tap.run_sync(OBSCORE, maxrec=500).to_table())
    assert ours["access_url"].dtype.itemsize < 2000 * 4 // 10      # declared U2000


def test_the_default_is_one_votable_request(emulator):
    """(An error CASDA writes after the rows is reported: tests/test_matrix_documents.py.)"""
    client = CasdaClass(server=emulator.url)
    start = len(emulator.request_log)
    client.query_tap(OBSCORE, maxrec=50)
    sent = [entry for entry in emulator.request_log[start:] if entry.path.endswith("tap/sync")]
    assert len(sent) == 1      # CASDA's VOTable: its QUERY_STATUS markers kept (its CSV has none)


def test_query_region_is_pyvos_sia2_table_at_its_own_width(emulator):
    client = CasdaClass(server=emulator.url)
    ours = client.query_region("187.5 -45.0", radius="3 deg", cache=False)
    pyvos = pyvo.dal.sia2.SIA2Query(emulator.url + "casda_vo_tools/sia2/query", pos=(187.5, -45.0, 3.0)).execute()
    assert_pyvos_table_at_own_width(ours, pyvos.to_table())


def test_catalogue_helpers_return_text_at_its_own_width(emulator, pyvo_tap):
    client = CasdaClass(server=emulator.url)
    ours = client.query_sbid_images(609, subtypes=None)
    pyvos = pyvo_tap.run_sync("SELECT * FROM ivoa.obscore WHERE obs_id = '609' AND dataproduct_type = 'cube'")
    assert_pyvos_table_at_own_width(Table(ours, copy=False), pyvos.to_table())


VARIABLE_AND_FIXED = b"""<?xml version="1.0"?>
<VOTABLE version="1.3" xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE type="results"><TABLE>
<FIELD name="fixed" datatype="char" arraysize="255"/><FIELD name="free" datatype="char" arraysize="*"/>
<FIELD name="n" datatype="int"/>
<DATA><TABLEDATA><TR><TD>&lt;ab&gt;</TD><TD>x</TD><TD>1</TD></TR><TR><TD>\xc3\xa9t\xc3\xa9</TD><TD/><TD/></TR>
</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>"""


def test_declared_widths_shrink_and_variable_text_stays_objects_as_pyvo_gives_it():
    ours = table_of(parse_votable(VARIABLE_AND_FIXED, relaxed=True), "TAP")
    theirs = parse_votable(VARIABLE_AND_FIXED).get_first_table().to_table()
    assert (ours["fixed"].dtype, theirs["fixed"].dtype) == (np.dtype("U4"), np.dtype("U255"))
    assert ours["free"].dtype.kind == theirs["free"].dtype.kind == "O"
    assert list(ours["fixed"]) == ["<ab>", "été"] and list(ours["n"].mask) == [False, True]


@pytest.mark.parametrize("values", [["a", "", "abc"], ["é", "ab"], [], ["x" * 3000]])
def test_numpy_text_is_as_wide_as_its_longest_value(values):
    array = numpy_text(pa.array(values, pa.string()))
    assert list(array) == values
    assert array.dtype == np.dtype(f"U{max([len(v) for v in values] + [1])}")
    assert list(numpy_text(pa.array(values, pa.string()).slice(1))) == values[1:]   # an offset view


def test_null_text_cells_are_blank_under_their_mask():
    array = pa.array(["abc", None, "d"], pa.string())
    assert list(numpy_text(array)) == ["abc", "", "d"] and numpy_text(array).dtype == np.dtype("U3")
    assert list(numpy_text(pa.array([None, "é"], pa.string()))) == ["", "é"]   # the non-ASCII path


@pytest.mark.parametrize("values, kind, fill", [
    ([1.5, None, -2.0, None], pa.float64(), np.nan),
    ([3, None, -7], pa.int64(), 0),
    ([True, None, False, True, True, False, True, False, True, None], pa.bool_(), False),
    ([], pa.int32(), 0),
])
def test_numpy_values_are_the_arrays_values_with_nulls_filled(values, kind, fill):
    array = pa.array(values, kind)
    for view, expected in ((array, values), (array.slice(1), values[1:])):      # an offset view too
        out = numpy_values(view, fill=fill)
        assert out.dtype == np.dtype(kind.to_pandas_dtype()) and out.flags.writeable
        filled = [fill if value is None else value for value in expected]
        assert filled == pytest.approx(list(out), nan_ok=True)
    if array.null_count:
        with pytest.raises(ValueError, match="no fill value"):
            numpy_values(array)


def test_a_query_tap_table_can_be_edited_in_place(emulator):
    """Its columns are the user's: they were once read-only views of pyarrow's memory."""
    table = CasdaClass(server=emulator.url).query_tap("SELECT TOP 20 * FROM ivoa.obscore")
    for name in ("s_ra", "calib_level", "em_xel", "obs_publisher_did"):
        table[name][0] = table[name][1]
        assert table[name][0] == table[name][1]
    table["s_ra"][table["s_ra"] > 0] += 1.0


def test_a_table_query_does_not_import_pandas(emulator):
    """pyarrow's ``to_numpy`` and ``fill_null`` import pandas whenever it is installed: half
    a second and tens of MB on a session's first table, which the table never uses."""
    import importlib.util
    import subprocess
    import sys
    assert importlib.util.find_spec("pandas"), "the test extra installs pandas (through dask[dataframe])"
    script = "\n".join([
        "import sys",
        "from astroquery_casda_ext import CasdaClass",
        f"casda = CasdaClass(server={emulator.url!r})",
        "assert len(casda.query_tap('SELECT * FROM ivoa.obscore', maxrec=200)) > 0",
        "assert len(casda.query_region('187.5 -45.0', radius='3 deg', cache=False)) > 0",
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'pandas'))",
    ])
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- Parquet outputs -----------------------------------------------------------------------------

def test_a_parquet_output_reads_back_with_table_read_as_the_table_path(emulator, tmp_path):
    """astropy's own Parquet convention: units, descriptions, formats, UCDs, masks and dtypes."""
    client = CasdaClass(server=emulator.url)
    query = "SELECT * FROM ivoa.obscore WHERE obs_id = '609'"
    client.query_tap(query, output=tmp_path / "x.parquet")
    back, table = Table.read(tmp_path / "x.parquet"), client.query_tap(query)
    assert back.colnames == table.colnames and len(back) == len(table) > 0
    masked = [name for name in table.colnames if np.ma.getmaskarray(table[name]).any()]
    assert masked and set(masked) >= {"t_resolution", "thumbnail_id"}     # a float and an integer
    for name in table.colnames:
        ours, read = table[name], back[name]
        assert (read.dtype, read.unit, read.description) == (ours.dtype, ours.unit, ours.description), name
        assert read.meta.get("ucd") == ours.meta.get("ucd"), name
        assert np.array_equal(np.ma.getmaskarray(read), np.ma.getmaskarray(ours)), name
        shown = ~np.ma.getmaskarray(ours)
        assert np.array_equal(np.ma.getdata(read)[shown], np.ma.getdata(ours)[shown],
                              equal_nan=ours.dtype.kind == "f"), name
    import pyarrow.parquet as pq
    assert b"pandas" not in (pq.read_metadata(tmp_path / "x.parquet").metadata or {})   # astropy's keys only


@pytest.fixture
def without_pyarrow(monkeypatch):
    """As if pyarrow were not installed (``import pyarrow`` fails)."""
    import sys
    for name in [module for module in sys.modules if module == "pyarrow" or module.startswith("pyarrow.")]:
        monkeypatch.setitem(sys.modules, name, None)


def test_without_pyarrow_the_default_reads_the_votable_and_a_parquet_output_says_what_to_install(
        emulator, tmp_path, without_pyarrow):
    from astroquery_casda_ext.errors import MissingDependencyError
    client = CasdaClass(server=emulator.url)
    table = client.query_tap("SELECT TOP 20 * FROM ivoa.obscore")
    assert len(table) == 20 and table["access_url"].dtype.kind == "U" and table["access_url"].dtype.itemsize < 800
    assert client.query_region("187.5 -45.0", cache=False)["access_url"].dtype.itemsize < 800
    start = len(emulator.request_log)
    with pytest.raises(MissingDependencyError, match=r"pip install 'astroquery_casda_ext\[parquet\]'"):
        client.query_tap(OBSCORE, output=tmp_path / "x.parquet")
    assert emulator.request_log[start:] == [] and not list(tmp_path.iterdir())   # nothing sent, nothing left


def test_the_command_line_without_pyarrow_is_a_usage_error_with_the_install_hint(
        emulator, tmp_path, without_pyarrow, capsys):
    from astroquery_casda_ext import cli
    code = cli.main(["tap", OBSCORE, "-o", str(tmp_path / "x.parquet"), "--server", emulator.url])
    assert code == cli.EXIT_USAGE == 2
    assert "pip install 'astroquery_casda_ext[parquet]'" in capsys.readouterr().err


# --- CASDA's VOTable rows through pyarrow ----------------------------------------------------------

AWKWARD = b"""<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.3" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
 <RESOURCE type="results">
  <INFO name="QUERY_STATUS" value="OK"/>
  <TABLE>
   <FIELD name="name" datatype="char" arraysize="64"/>
   <FIELD name="note" datatype="char" arraysize="*"/>
   <FIELD name="flux" datatype="double" unit="mJy"/>
   <FIELD name="n" datatype="long"/>
   <FIELD name="flag" datatype="boolean"/>
   <DATA>
    <TABLEDATA>
     <TR><TD>a &lt;b&gt; &amp; &quot;c&quot;</TD><TD>line one
line two</TD><TD>1.5</TD><TD>7</TD><TD>T</TD></TR>
     <TR>
      <TD>caf&#233;, d\xc3\xa9j\xc3\xa0 vu</TD>
      <TD/>
      <TD>NaN</TD>
      <TD></TD>
      <TD>F</TD>
     </TR>
     <TR><TD>tab\there</TD><TD>x</TD><TD>-2e-05</TD><TD>-9</TD><TD></TD></TR>
    </TABLEDATA>
   </DATA>
  </TABLE>
  <INFO name="QUERY_STATUS" value="OVERFLOW"/>
 </RESOURCE>
</VOTABLE>
"""


def test_votable_rows_through_pyarrow_are_astropys_rows_at_their_own_width():
    from astropy.io.votable.exceptions import VOWarning
    from astroquery.exceptions import MaxResultsWarning
    from astroquery_casda_ext.tap.rows import answer_table
    with pytest.warns(MaxResultsWarning):
        ours = answer_table(AWKWARD, "TAP")
    with pytest.warns(MaxResultsWarning), np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VOWarning)
            astropys = table_of(parse_votable(AWKWARD, relaxed=True), "TAP")
    assert ours.meta["complete"] is False
    for name in astropys.colnames:
        assert ours[name].dtype == astropys[name].dtype, name
        assert list(np.ma.getmaskarray(ours[name])) == list(np.ma.getmaskarray(astropys[name])), name
        shown = ~np.ma.getmaskarray(astropys[name])
        assert list(np.ma.getdata(ours[name])[shown]) == list(np.ma.getdata(astropys[name])[shown]), name
    assert list(ours["name"]) == ['a <b> & "c"', "café, déjà vu", "tab\there"]
    assert ours["note"][0] == "line one\nline two" and ours["flux"].unit == "mJy"


@pytest.mark.parametrize("cut", [-40, -400])
def test_a_votable_cut_short_is_incomplete_and_markup_in_a_cell_is_refused(cut):
    from astroquery_casda_ext.errors import IncompleteResultError, ServiceError
    from astroquery_casda_ext.tap.rows import answer_table
    with pytest.raises(IncompleteResultError, match="broke off"):
        answer_table(AWKWARD[:cut], "TAP")
    with pytest.raises(ServiceError, match="result_format='votable'"):
        answer_table(AWKWARD.replace(b"<TD>7</TD>", b'<TD ref="x">7</TD>'), "TAP")
