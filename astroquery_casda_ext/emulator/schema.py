"""Column definitions of the emulator's TAP tables: ``ivoa.obscore``, ``casda.continuum_component``,
``casda.observation`` and the ``TAP_SCHEMA`` tables that describe them.

The ObsCore columns copy CASDA's own field definitions (name, datatype, arraysize, unit, UCD,
utype, description) from a recorded SIA2 response (astroquery's ``casda/tests/data/cone.xml``),
in CASDA's order, then the columns later servers added (``filename`` and the ObsCore 1.1
``*_xel`` counts).  Catalogue columns follow the TAP_SCHEMA rows of CASDA's deposit-manager
migrations.  Datatypes are VOTable datatypes; `adql_datatype` gives the TAP_SCHEMA spelling.

No HTTP and no SQL here: `TableDef` is plain data that ``adql.TapDatabase`` loads.
"""
from dataclasses import dataclass, field

__all__ = [
    "Column", "TableDef", "OBSCORE_COLUMNS", "CONTINUUM_COMPONENT_COLUMNS", "OBSERVATION_COLUMNS",
    "OBSCORE_DESCRIPTION", "CONTINUUM_COMPONENT_DESCRIPTION", "OBSERVATION_DESCRIPTION",
    "obscore_table", "continuum_component_table", "observation_table", "tap_schema_tables",
    "adql_datatype",
]


@dataclass(frozen=True)
class Column:
    """One column of a TAP table, as a VOTable ``FIELD`` describes it.

    ``datatype`` is a VOTable datatype (``char``, ``int``, ``long``, ``float``, ``double``...);
    ``arraysize`` is the VOTable arraysize (``"255"``, ``"*"``) or None for scalars.
    """

    name: str
    datatype: str
    arraysize: str | None = None
    unit: str | None = None
    ucd: str | None = None
    utype: str | None = None
    description: str = ""
    xtype: str | None = None


@dataclass
class TableDef:
    """A TAP table: where it lives, what its columns are, and its rows.

    Rows are dicts keyed by column name; a missing key is NULL.  ``release_column`` and
    ``project_column`` name the columns CASDA's embargo rule reads (protocol §8.2): when set,
    anyone but an administrator sees only rows released by now, or rows of their projects.
    """

    schema: str
    name: str
    description: str
    columns: list[Column]
    rows: list[dict] = field(default_factory=list)
    release_column: str | None = None
    project_column: str | None = None
    #: A SQLite file holding the rows (a large table, attached rather than loaded); see catalogue.py.
    sqlite_file: str | None = None

    @property
    def full_name(self):
        """The name used in ADQL and in ``TAP_SCHEMA.tables``, e.g. ``ivoa.obscore``."""
        return f"{self.schema}.{self.name}"

    def column(self, name):
        """The column called ``name`` (case-insensitive); KeyError if there is none."""
        wanted = name.lower()
        for column in self.columns:
            if column.name.lower() == wanted:
                return column
        raise KeyError(name)


# --- ivoa.obscore ---------------------------------------------------------------------------

#: CASDA gives ``ivoa.obscore`` no description: its SIA2 responses say ``Table Description`` "null".
OBSCORE_DESCRIPTION = ""

#: ``ivoa.obscore`` in CASDA's order (recorded ``cone.xml``), then the columns later servers added.
OBSCORE_COLUMNS = [
    Column("dataproduct_type", "char", arraysize="255", ucd="meta.id",
           utype="obscore:Obs.dataProductType",
           description=("Logical data product type from the IVOA controlled list. Catalogues will be "
                        "null but described in the dataproduct_subtype field.")),
    Column("calib_level", "int", ucd="meta.code;obs.calib",
           utype="obscore:Obs.calibLevel",
           description="Calibration level {0, 1, 2, 3}"),
    Column("obs_collection", "char", arraysize="255", ucd="meta.id",
           utype="obscore:DataID.Collection",
           description="Name of the data collection"),
    Column("obs_id", "char", arraysize="255", ucd="meta.id",
           utype="obscore:DataID.observationID",
           description="Observation ID"),
    Column("obs_publisher_did", "char", arraysize="255", ucd="meta.ref.url;meta.curation",
           utype="obscore:Curation.PublisherDID",
           description="Dataset identifier given by the publisher"),
    Column("access_url", "char", arraysize="2000", ucd="meta.ref.url",
           utype="obscore:Access.Reference",
           description="URL used to access (download) dataset"),
    Column("access_format", "char", arraysize="255", ucd="meta.code.mime",
           utype="obscore:Access.Format",
           description="File content format"),
    Column("access_estsize", "long", unit="kbyte", ucd="phys.size;meta.file",
           utype="obscore:Access.Size",
           description="Estimated size of dataset in kilobytes"),
    Column("target_name", "char", arraysize="255", ucd="meta.id;src",
           utype="obscore:Target.Name",
           description="Astronomical object observed, if any"),
    Column("s_ra", "double", unit="deg", ucd="pos.eq.ra",
           utype="obscore:Char.SpatialAxis.Coverage.Location.Coord.Position2D.Value2.C1",
           description="Central right ascension, ICRS"),
    Column("s_dec", "double", unit="deg", ucd="pos.eq.dec",
           utype="obscore:Char.SpatialAxis.Coverage.Location.Coord.Position2D.Value2.C2",
           description="Central declination, ICRS"),
    Column("s_fov", "double", unit="deg", ucd="phys.angSize;instr.fov",
           utype="obscore:Char.SpatialAxis.Coverage.Bounds.Extent.diameter",
           description="Diameter (bounds) of the covered region"),
    Column("s_region", "char", arraysize="200", ucd="phys.angArea;obs",
           utype="obscore:Char.SpatialAxis.Coverage.Support.Area",
           description="Region covered as specified in STC or ADQL"),
    Column("s_resolution", "double", unit="arcsec", ucd="pos.angResolution",
           utype="obscore:Char.SpatialAxis.Resolution.refval",
           description="Spatial resolution of data as FWHM"),
    Column("t_min", "double", unit="d", ucd="time.start;obs.exposure",
           utype="obscore:Char.TimeAxis.Coverage.Bounds.Limits.Interval.StartTime",
           description="Start time in MJD"),
    Column("t_max", "double", unit="d", ucd="time.end;obs.exposure",
           utype="obscore:Char.TimeAxis.Coverage.Bounds.Limits.Interval.StopTime",
           description="Stop time in MJD"),
    Column("t_exptime", "double", unit="s", ucd="time.duration;obs.exposure",
           utype="obscore:Char.TimeAxis.Coverage.Support.Extent",
           description="Total exposure time"),
    Column("t_resolution", "double", unit="s", ucd="time.resolution",
           utype="obscore:Char.TimeAxis.Resolution.refval",
           description="Temporal resolution FWHM"),
    Column("em_min", "double", unit="m", ucd="em.wl;stat.min",
           utype="obscore:Char.SpectralAxis.Coverage.Bounds.Limits.Interval.LoLim",
           description="Start in spectral coordinates"),
    Column("em_max", "double", unit="m", ucd="em.wl;stat.max",
           utype="obscore:Char.SpectralAxis.Coverage.Bounds.Limits.Interval.HiLim",
           description="Stop in spectral coordinates"),
    Column("em_res_power", "double", ucd="spect.resolution",
           utype="obscore:Char.SpectralAxis.Resolution.ResolPower.refVal",
           description="Spectral resolving power"),
    Column("o_ucd", "char", arraysize="255", ucd="meta.ucd",
           utype="obscore:Char.ObservableAxis.ucd",
           description="UCD of observable (e.g. phot. plux. density)"),
    Column("pol_states", "char", arraysize="255", ucd="meta.code;phys.polarization",
           utype="obscore:Char.PolarizationAxis.stateList",
           description="List of polarization states or NULL if not applicable"),
    Column("facility_name", "char", arraysize="255", ucd="meta.id;instr.tel",
           utype="obscore:Provenance.ObsConfig.facility.name",
           description="Name of the facility used for this observation"),
    Column("instrument_name", "char", arraysize="255", ucd="meta.id;instr",
           utype="obscore:Provenance.ObsConfig.instrument.name",
           description="Name of the instrument used for this observation"),
    Column("dataproduct_subtype", "char", arraysize="255", ucd="meta.id",
           utype="obscore:Obs.dataProductSubtype",
           description=("Further description of the type of data product, including where the "
                        "dataproduct_type is null.")),
    Column("em_ucd", "char", arraysize="255", ucd="meta.ucd",
           utype="obscore:Char.SpectralAxis.ucd",
           description="Nature of the spectral axis"),
    Column("em_unit", "char", arraysize="255", ucd="meta.unit",
           utype="obscore:Char.SpectralAxis.unit",
           description="Units along the spectral axis"),
    Column("em_resolution", "double", unit="m", ucd="spect.resolution;stat.mean",
           utype="obscore:Char.SpectralAxis.Resolution.refval.value",
           description="Value of Resolution along the spectral axis"),
    Column("s_resolution_min", "double", unit="arcsec", ucd="pos.angResolution;stat.min",
           utype="obscore:Char.SpatialAxis.Resolution.Bounds.Limits.Interval.LoLim",
           description="Resolution min value on spatial axis (FHWM of PSF)"),
    Column("s_resolution_max", "double", unit="arcsec", ucd="pos.angResolution;stat.max",
           utype="obscore:Char.SpatialAxis.Resolution.Bounds.Limits.Interval.HiLim",
           description="Resolution max value on spatial axis"),
    Column("s_ucd", "char", arraysize="255", ucd="meta.ucd",
           utype="obscore:Char.SpatialAxis.ucd",
           description="Ucd for the nature of the spatial axis (pos or u,v data)"),
    Column("s_unit", "char", arraysize="255", ucd="meta.unit",
           utype="obscore:Char.SpatialAxis.unit",
           description="Unit used for spatial axis"),
    Column("obs_release_date", "char", arraysize="24",
           description="The date that this data product was released"),
    Column("quality_level", "char", arraysize="15", ucd="meta.code.qual",
           description="Indicator of quality level, updated by validators"),
    Column("thumbnail_id", "long",
           description="The id of the thumbnail or preview image for this data product."),
    # Added after the 2019 recording: ``filename`` (astroquery docs, issue #3132) and the
    # ObsCore 1.1 axis lengths (vo_tools reports ObsCore 1.1 once ``s_xel1`` exists).
    Column("filename", "char", arraysize="255", ucd="meta.id;meta.file",
           description="The name of the file of this data product"),
    Column("em_xel", "long", ucd="meta.number", utype="obscore:Char.SpectralAxis.numBins",
           description="Number of elements along the spectral axis"),
    Column("s_xel1", "long", ucd="meta.number", utype="obscore:Char.SpatialAxis.numBins1",
           description="Number of elements along the first spatial axis"),
    Column("s_xel2", "long", ucd="meta.number", utype="obscore:Char.SpatialAxis.numBins2",
           description="Number of elements along the second spatial axis"),
    Column("t_xel", "long", ucd="meta.number", utype="obscore:Char.TimeAxis.numBins",
           description="Number of elements along the time axis"),
    Column("pol_xel", "long", ucd="meta.number", utype="obscore:Char.PolarizationAxis.numBins",
           description="Number of elements along the polarization axis"),
]

# --- casda.continuum_component --------------------------------------------------------------

CONTINUUM_COMPONENT_DESCRIPTION = "Continuum component data"

#: Units and UCDs from CASDA's TAP_SCHEMA rows for ``casda.continuum_component``.
#: ``project_id`` holds the project's OPAL code here (CASDA keeps a numeric id), because the
#: emulator's users carry project codes and the embargo rule compares the two.
CONTINUUM_COMPONENT_COLUMNS = [
    Column("catalogue_id", "long", description="Catalogue identifier"),
    Column("first_sbid", "int", ucd="meta.id;obs",
           description="The first scheduling block identifier of the observations the catalogue is from"),
    Column("other_sbids", "char", arraysize="*", ucd="meta.id;obs",
           description="Comma separated list of the other scheduling block identifiers"),
    Column("project_id", "char", arraysize="32", ucd="meta.id;obs.proposal",
           description="Project identifier"),
    Column("island_id", "char", arraysize="255", ucd="meta.id.parent", description="Island identifier"),
    Column("component_id", "char", arraysize="256", ucd="meta.id;meta.main",
           description="Component identifier"),
    Column("component_name", "char", arraysize="32", ucd="meta.id", description="Component name"),
    Column("ra_hms_cont", "char", arraysize="16", unit="h:m:s", ucd="pos.eq.ra",
           description="J2000 right ascension (hh:mm:ss.sss)"),
    Column("dec_dms_cont", "char", arraysize="16", unit="deg:arcmin:arcsec", ucd="pos.eq.dec",
           description="J2000 declination (dd:mm:ss.ss)"),
    Column("ra_deg_cont", "double", unit="deg", ucd="pos.eq.ra;meta.main",
           description="J2000 right ascension in decimal degrees"),
    Column("dec_deg_cont", "double", unit="deg", ucd="pos.eq.dec;meta.main",
           description="J2000 declination in decimal degrees"),
    Column("ra_err", "float", unit="arcsec", ucd="stat.error;pos.eq.ra",
           description="Error in Right Ascension"),
    Column("dec_err", "float", unit="arcsec", ucd="stat.error;pos.eq.dec",
           description="Error in Declination"),
    Column("freq", "float", unit="MHz", ucd="em.freq", description="Frequency"),
    Column("flux_peak", "float", unit="mJy/beam", ucd="phot.flux.density;stat.max;em.radio;stat.fit",
           description="Peak flux density"),
    Column("flux_peak_err", "float", unit="mJy/beam",
           ucd="stat.error;phot.flux.density;stat.max;em.radio;stat.fit",
           description="Error in peak flux density"),
    Column("flux_int", "float", unit="mJy", ucd="phot.flux.density;em.radio;stat.fit",
           description="Integrated flux density"),
    Column("flux_int_err", "float", unit="mJy", ucd="stat.error;phot.flux.density;em.radio;stat.fit",
           description="Error in integrated flux density"),
    Column("maj_axis", "float", unit="arcsec", ucd="phys.angSize.smajAxis;em.radio;stat.fit",
           description="FWHM major axis before deconvolution"),
    Column("min_axis", "float", unit="arcsec", ucd="phys.angSize.sminAxis;em.radio;stat.fit",
           description="FWHM minor axis before deconvolution"),
    Column("pos_ang", "float", unit="deg", ucd="phys.angSize;pos.posAng;em.radio;stat.fit",
           description="Position angle before deconvolution"),
    Column("spectral_index", "float", ucd="spect.index;em.radio",
           description="Spectral index (First Taylor term)"),
    Column("rms_image", "float", unit="mJy/beam", ucd="stat.stdev;phot.flux.density",
           description="rms noise level in image"),
    Column("has_siblings", "int", ucd="meta.code", description="Source has siblings (1) or not (0)"),
    Column("released_date", "char", arraysize="24", ucd="time.release",
           description="Date the component was released (empty: not released)"),
    Column("sbid", "int", ucd="meta.id;obs", description="Scheduling Block identifier"),
]

# --- casda.observation ----------------------------------------------------------------------

OBSERVATION_DESCRIPTION = "ASKAP observations (scheduling blocks) and the projects they belong to"

OBSERVATION_COLUMNS = [
    Column("sbid", "int", ucd="meta.id;obs", description="Scheduling Block identifier"),
    Column("obs_start", "char", arraysize="24", ucd="time.start;obs",
           description="Start of the observation (UTC, ISO 8601)"),
    Column("obs_end", "char", arraysize="24", ucd="time.end;obs",
           description="End of the observation (UTC, ISO 8601)"),
    Column("obs_start_mjd", "double", unit="d", ucd="time.start;obs",
           description="Start of the observation (MJD)"),
    Column("obs_end_mjd", "double", unit="d", ucd="time.end;obs", description="End of the observation (MJD)"),
    Column("telescope", "char", arraysize="255", ucd="meta.id;instr.tel",
           description="Name of the telescope"),
    Column("obs_program", "char", arraysize="255", ucd="meta.id", description="Observation program"),
    Column("project_code", "char", arraysize="32", ucd="meta.id;obs.proposal",
           description="OPAL code of the project the observation belongs to"),
]


def obscore_table(rows):
    """``ivoa.obscore`` with ``rows``.  Not row-filtered: CASDA shows unreleased products too."""
    return TableDef("ivoa", "obscore", OBSCORE_DESCRIPTION, OBSCORE_COLUMNS, list(rows))


def continuum_component_table(rows):
    """``casda.continuum_component`` with ``rows``, under CASDA's embargo rule."""
    return TableDef("casda", "continuum_component", CONTINUUM_COMPONENT_DESCRIPTION,
                    CONTINUUM_COMPONENT_COLUMNS, list(rows),
                    release_column="released_date", project_column="project_id")


def observation_table(rows):
    """``casda.observation`` with ``rows``."""
    return TableDef("casda", "observation", OBSERVATION_DESCRIPTION, OBSERVATION_COLUMNS, list(rows))


# --- TAP_SCHEMA -----------------------------------------------------------------------------

_ADQL_TYPES = {"char": "VARCHAR", "unicodeChar": "VARCHAR", "boolean": "BOOLEAN", "short": "SMALLINT",
               "int": "INTEGER", "long": "BIGINT", "float": "REAL", "double": "DOUBLE"}

#: Schemas CASDA describes (``casda_deposit_manager`` migration ``create_tap_tables_and_data``).
_SCHEMA_DESCRIPTIONS = {"TAP_SCHEMA": "", "ivoa": "", "casda": "CSIRO ASKAP Science Data Archive"}


def adql_datatype(column):
    """The TAP_SCHEMA (ADQL) datatype of ``column``, e.g. ``DOUBLE`` or ``VARCHAR``.

    ``s_region`` is a ``REGION`` in CASDA's TAP_SCHEMA although its FIELD says ``char``.
    """
    if column.name == "s_region":
        return "REGION"
    if column.xtype == "timestamp":
        return "TIMESTAMP"
    return _ADQL_TYPES.get(column.datatype, column.datatype.upper())


def _char(name, size, description):
    return Column(name, "char", arraysize=str(size), description=description)


def _int(name, description):
    return Column(name, "int", description=description)


_TAP_SCHEMA_COLUMNS = {
    "schemas": [
        _char("schema_name", 64, "Fully qualified schema name"),
        _char("description", 255, "Brief description of schema"),
        _char("utype", 255, "UTYPE if schema corresponds to a data model"),
    ],
    "tables": [
        _char("schema_name", 64, "Fully qualified schema name"),
        _char("table_name", 64, "Fully qualified table name"),
        _char("table_type", 8, "One of: table or view"),
        _char("description", 255, "Brief description of table"),
        _char("utype", 255, "UTYPE if table corresponds to a data model"),
    ],
    "columns": [
        _char("table_name", 64, "Fully qualified table name"),
        _char("column_name", 64, "Column name"),
        _char("description", 255, "Brief description of column"),
        _char("unit", 64, "Unit in VO std format"),
        _char("ucd", 255, "UCD of column if any"),
        _char("utype", 255, "UTYPE of column if any"),
        _char("datatype", 64, "ADQL datatype as in section 2.5"),
        _int("size", "Length of variable length datatypes"),
        _int("principal", "A principal column (1 true, 0 false)"),
        _int("indexed", "An indexed column (1 true, 0 false)"),
        _int("std", "A standard column (1 true, 0 false)"),
    ],
    "keys": [
        _char("key_id", 64, "Unique key descriptor"),
        _char("from_table", 64, "Fully qualified table name"),
        _char("target_table", 64, "Fully qualified table name"),
        _char("description", 255, "Description of this key"),
        _char("utype", 255, "Utype of this key"),
    ],
    "key_columns": [
        _char("key_id", 64, "Key identifier from keys table"),
        _char("from_column", 64, "Key column name in the from_table"),
        _char("target_column", 64, "Key column name in the target_table"),
    ],
}

_TAP_SCHEMA_DESCRIPTIONS = {
    "schemas": "The names of the TAP services schemas",
    "tables": "The names of the TAP services schemas tables",
    "columns": "The columns of the tables of the TAP service",
    "keys": "Foreign keys between the tables of the TAP service",
    "key_columns": "The columns of the foreign keys of the TAP service",
}


def tap_schema_tables(tables):
    """The ``TAP_SCHEMA`` tables describing ``tables`` and themselves.

    Parameters
    ----------
    tables : list of TableDef
        The data tables of the service.

    Returns
    -------
    list of TableDef
        ``TAP_SCHEMA.schemas``, ``.tables``, ``.columns``, ``.keys`` and ``.key_columns``
        (the last two empty: the emulator's tables declare no foreign keys).
    """
    meta = [TableDef("TAP_SCHEMA", name, _TAP_SCHEMA_DESCRIPTIONS[name], columns)
            for name, columns in _TAP_SCHEMA_COLUMNS.items()]
    described = list(tables) + meta
    by_name = {table.name: table for table in meta}
    by_name["schemas"].rows = _schema_rows(described)
    by_name["tables"].rows = [_table_row(table) for table in described]
    by_name["columns"].rows = [row for table in described for row in _column_rows(table)]
    return meta


def _schema_rows(tables):
    names = list(dict.fromkeys(table.schema for table in tables))
    return [{"schema_name": name, "description": _SCHEMA_DESCRIPTIONS.get(name, ""), "utype": None}
            for name in names]


def _table_row(table):
    # CASDA publishes ObsCore as a view over its data-product tables.
    table_type = "view" if table.full_name == "ivoa.obscore" else "table"
    return {"schema_name": table.schema, "table_name": table.full_name, "table_type": table_type,
            "description": table.description, "utype": None}


def _column_rows(table):
    standard = 0 if table.schema == "casda" else 1
    return [{"table_name": table.full_name, "column_name": column.name, "description": column.description,
             "unit": column.unit, "ucd": column.ucd, "utype": column.utype,
             "datatype": adql_datatype(column), "size": _size(column), "principal": 1, "indexed": 0,
             "std": standard}
            for column in table.columns]


def _size(column):
    return int(column.arraysize) if column.arraysize and column.arraysize.isdigit() else None
