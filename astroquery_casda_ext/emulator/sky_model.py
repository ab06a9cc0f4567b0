"""The sky and the archive the synthetic holdings describe: no files, no rows.

`HoldingsConfig` (sizes), the projects, fields and observations (``OBSERVATIONS``), each
field's point sources at exact pixel centres (`field_sources`), the injected signals
(a spectral line, a polarised source, a variable source) and the public helpers that
say where they are (`spectral_line_source`, `polarised_source`,
`variable_source_fluxes`).  ``fits_synthesis.py`` turns this into images,
``product_rows.py`` into table rows, ``holdings.py`` stores them.
"""
import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

__all__ = ["HoldingsConfig", "OBSERVATIONS", "PROJECTS", "MEMBER_PROJECTS", "EMBARGO_DATE", "SPEED_OF_LIGHT",
           "spectral_line_source", "polarised_source", "variable_source_fluxes", "field_sources"]


#: Release date of every product of the embargoed project.
EMBARGO_DATE = "2099-01-01T00:00:00.000Z"


SPEED_OF_LIGHT = 299792458.0


HI_REST_FREQUENCY = 1.420405751786e9


@dataclass(frozen=True)
class HoldingsConfig:
    """Sizes of the synthetic holdings (defaults keep the whole set under ~10 MB)."""

    image_pixels: int = 192        # side of continuum images (4-D: RA, DEC, FREQ(1), STOKES(1))
    cube_pixels: int = 48          # spatial side of spectral-line cubes (4-D: RA, DEC, FREQ(n), STOKES(1))
    cube_channels: int = 32
    pol_pixels: int = 48           # polarisation cube: RA, DEC, FREQ(pol_channels), STOKES(4: I,Q,U,V)
    pol_channels: int = 8
    bulk_count: int = 0            # extra products of bulk_size bytes (benchmarks), in their own SBID
    bulk_size: int = 5_000_000
    bulk_listed_rows: int = 0      # ObsCore rows listed beyond the products (benchmarks): Holdings.obscore_rows
    seed: int = 609


@dataclass(frozen=True)
class Project:
    code: str
    short_name: str
    embargoed: bool


@dataclass(frozen=True)
class Field:
    name: str
    ra: float
    dec: float
    freq_mhz: float          # continuum reference frequency
    bandwidth_mhz: float
    beam: tuple              # (bmaj arcsec, bmin arcsec, bpa deg)
    rms_mjy: float           # continuum image noise, mJy/beam
    n_sources: int
    special: str             # "cubes": line + polarised sources; "variable": one variable source


@dataclass(frozen=True)
class Observation:
    sbid: int
    project: str
    field: Field
    start: str               # "YYYY-MM-DDTHH:MM:SS" UTC
    duration_s: float
    release: str
    subtypes: tuple
    quality: str = "UNCERTAIN"
    epoch: int = 0
    unreleased: tuple = ()   # subtypes deposited but never released


PROJECTS = (
    Project("AS101", "EMU Pilot Survey", False),
    Project("AS110", "The Rapid ASKAP Continuum Survey", False),
    Project("AS107", "VAST Pilot Survey", False),
    Project("AS199", "ASKAP Deep Embargoed Field", True),
)


BULK_PROJECT = Project("AS900", "bulk", False)


BULK_SBID = 9001


#: The built-in emulator user's projects: the embargoed one, so embargo can be tested both ways.
MEMBER_PROJECTS = frozenset({"AS199"})


_EMU = Field("EMU_1230-45", 187.5, -45.0, 943.5, 288.0, (18.0, 16.0, 35.0), 0.12, 22, "cubes")


_RACS = Field("RACS_2215-46A", 333.9, -45.84, 887.5, 288.0, (25.0, 22.0, -60.0), 0.2, 22, "cubes")


_DEEP = Field("DEEP_0400-30", 60.0, -30.0, 1367.5, 144.0, (17.0, 15.0, 80.0), 0.08, 18, "cubes")


VAST_FIELD = Field("VAST_2120-51", 320.0, -51.0, 887.5, 288.0, (20.0, 17.0, 10.0), 0.2, 20, "variable")


BULK_FIELD = Field("BULK_1000-30", 150.0, -30.0, 1367.5, 144.0, (15.0, 15.0, 0.0), 0.1, 0, "")


_ALL_TYPES = ("cont.restored.t0", "cont.noise.t0", "cont.weight.t0", "spectral.restored.3d",
              "cont.restored.4d")


OBSERVATIONS = (
    Observation(609, "AS101", _EMU, "2019-04-20T10:00:00", 36000.0, "2019-10-01T03:51:19.728Z",
                 _ALL_TYPES),
    Observation(2338, "AS110", _RACS, "2019-05-01T15:30:00", 900.0, "2020-12-01T00:00:00.000Z",
                 _ALL_TYPES, quality="GOOD", unreleased=("cont.weight.t0",)),
    Observation(11000, "AS199", _DEEP, "2024-01-10T12:00:00", 43200.0, EMBARGO_DATE,
                 ("cont.restored.t0", "cont.noise.t0", "spectral.restored.3d", "cont.restored.4d")),
) + tuple(
    Observation(sbid, "AS107", VAST_FIELD, start, 720.0, release, ("cont.restored.t0", "cont.noise.t0"),
                 quality="GOOD", epoch=epoch)
    for epoch, (sbid, start, release) in enumerate((
        (9668, "2019-08-27T13:38:00", "2020-02-01T00:00:00.000Z"),
        (9694, "2019-10-28T09:12:00", "2020-04-01T00:00:00.000Z"),
        (9723, "2019-12-19T06:45:00", "2020-06-01T00:00:00.000Z"),
        (9760, "2020-01-11T04:20:00", "2020-07-01T00:00:00.000Z"),
    ))
)


#: Peak flux of the VAST variable source per epoch, as a multiple of its first-epoch flux.
VARIABLE_FACTORS = (1.0, 3.4, 0.85, 2.6)


VARIABLE_FLUX_MJY = 38.0


#: subtype -> (kind, file name pattern, pol_states)
SUBTYPES = {
    "cont.restored.t0": ("continuum", "image.i.SB{sbid}.cont.taylor.0.restored.fits"),
    "cont.noise.t0": ("continuum", "noiseMap.image.i.SB{sbid}.cont.taylor.0.restored.fits"),
    "cont.weight.t0": ("continuum", "weights.i.SB{sbid}.cont.taylor.0.fits"),
    "spectral.restored.3d": ("spectral", "image.restored.i.SB{sbid}.cube.contsub.fits"),
    "cont.restored.4d": ("polarisation", "image.restored.iquv.SB{sbid}.contcube.fits"),
}


#: Spectral-line cubes: channel width and centre of the band.
LINE_CHANNEL_WIDTH_HZ = 250e3


LINE_BAND_CENTRE_HZ = 1.4195e9


#: Polarisation cubes cover ASKAP band 1 (1296-1440 MHz).
POL_BAND_HZ = (1.296e9, 1.440e9)


POL_FRACTION = 0.12


POL_ROTATION_MEASURE = 120.0     # rad m^-2


POL_ANGLE0 = 0.3                 # rad


@dataclass(frozen=True)
class Grid:
    """A SIN-projected pixel grid centred (on a pixel centre) on a field centre."""

    field: Field
    n: int
    cdelt: float              # degrees per pixel

    @property
    def crpix(self):
        return self.n // 2 + 1.0

    def celestial_cards(self):
        return [
            ("EQUINOX", 2000.0), ("RADESYS", "FK5"), ("LONPOLE", 180.0), ("LATPOLE", self.field.dec),
            ("CTYPE1", "RA---SIN"), ("CRVAL1", self.field.ra), ("CDELT1", -self.cdelt),
            ("CRPIX1", self.crpix), ("CUNIT1", "deg"),
            ("CTYPE2", "DEC--SIN"), ("CRVAL2", self.field.dec), ("CDELT2", self.cdelt),
            ("CRPIX2", self.crpix), ("CUNIT2", "deg"),
        ]

    def wcs(self):
        header = fits.Header([("NAXIS", 2), ("NAXIS1", self.n), ("NAXIS2", self.n)] + self.celestial_cards())
        return WCS(header)


@dataclass(frozen=True)
class Source:
    index: int
    x: int                    # 0-based pixel on the field's continuum grid
    y: int
    ra: float
    dec: float
    flux_mjy: float           # peak, mJy/beam, at the field's continuum frequency
    spectral_index: float
    role: str = ""            # "" | "line" | "polarised" | "variable"


def _pixel_scale(config, fld):
    """Degrees per pixel: the image covers ~0.4 deg, with >= 2.5 pixels across the beam minor axis."""
    arcsec = min(max(0.4 * 3600.0 / config.image_pixels, 2.0), fld.beam[1] / 2.5)
    return round(arcsec, 2) / 3600.0


def continuum_grid(config, fld):
    return Grid(fld, config.image_pixels, _pixel_scale(config, fld))


def cube_grid(config, fld, n):
    """Cube grids share the continuum pixel scale and centre, so sources sit on pixel centres."""
    return Grid(fld, n, _pixel_scale(config, fld))


def source_seed(config, *parts):
    text = "|".join(str(p) for p in (config.seed,) + parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _special_sources(fld, grid):
    """Sources every test can rely on: offsets in pixels from the field centre."""
    centre = grid.n // 2
    if fld.special == "cubes":
        return [(centre, centre, 9.0, -0.5, "line"), (centre + 9, centre - 6, 720.0, -0.7, "polarised")]
    if fld.special == "variable":
        return [(centre - 14, centre + 11, VARIABLE_FLUX_MJY, -0.8, "variable")]
    return []


def _place_sources(config, fld, grid):
    """(x, y, flux, alpha, role) tuples: specials first, then random isolated point sources."""
    rng = np.random.default_rng(source_seed(config, "sky", fld.name))
    beam_px = fld.beam[0] / 3600.0 / grid.cdelt
    spacing, margin = 4.0 * beam_px, int(math.ceil(3.0 * beam_px))
    placed = _special_sources(fld, grid)
    n_bright = 3 - sum(1 for p in placed if p[2] > 500)
    for _ in range(400 * max(fld.n_sources, 1)):
        if len(placed) >= fld.n_sources:
            break
        x, y = (int(v) for v in rng.integers(margin, grid.n - margin, size=2))
        if any(math.hypot(x - p[0], y - p[1]) < spacing for p in placed):
            continue
        bright = n_bright > 0
        n_bright -= bright
        flux = rng.uniform(520.0, 1500.0) if bright else math.exp(rng.uniform(math.log(8.0), math.log(200.0)))
        placed.append((x, y, round(float(flux), 3), round(float(rng.normal(-0.75, 0.2)), 3), ""))
    return placed


def field_sources(config, fld):
    """The field's sources with their exact sky positions (pixel centres of the continuum grid)."""
    grid = continuum_grid(config, fld)
    placed = _place_sources(config, fld, grid)
    xs = np.array([p[0] for p in placed], dtype=float)
    ys = np.array([p[1] for p in placed], dtype=float)
    ras, decs = grid.wcs().pixel_to_world_values(xs, ys)
    return [Source(i + 1, p[0], p[1], float(ras[i]) % 360.0, float(decs[i]), p[2], p[3], p[4])
            for i, p in enumerate(placed)]


def epoch_flux(source, epoch):
    if source.role == "variable":
        return round(source.flux_mjy * VARIABLE_FACTORS[epoch % len(VARIABLE_FACTORS)], 3)
    return source.flux_mjy


def _field_of_sbid(sbid):
    for obs in OBSERVATIONS:
        if obs.sbid == int(sbid):
            return obs.field
    raise KeyError(f"no observation with SBID {sbid}")


def spectral_line_source(sbid, config=HoldingsConfig()):
    """Where the spectral-line cube of ``sbid`` has its line.

    Returns
    -------
    dict
        ``ra``, ``dec`` (deg, the cube centre), ``frequency`` (Hz, a channel centre),
        ``channel`` (1-based plane number) and ``peak`` (Jy/beam).
    """
    fld = _field_of_sbid(sbid)
    channel = int(round(0.62 * (config.cube_channels - 1)))
    return {"ra": fld.ra, "dec": fld.dec, "frequency": float(line_frequencies(config)[channel]),
            "channel": channel + 1, "peak": 0.06}


def polarised_source(sbid, config=HoldingsConfig()):
    """The linearly polarised source of the I/Q/U/V cube of ``sbid``.

    Returns
    -------
    dict
        ``ra``, ``dec`` (deg), ``rotation_measure`` (rad/m^2), ``fraction`` and ``angle0``
        (rad, at zero wavelength): Q + iU = fraction * I * exp(2i(angle0 + RM lambda^2)).
    """
    fld = _field_of_sbid(sbid)
    source = next(s for s in field_sources(config, fld) if s.role == "polarised")
    return {"ra": source.ra, "dec": source.dec, "rotation_measure": POL_ROTATION_MEASURE,
            "fraction": POL_FRACTION, "angle0": POL_ANGLE0}


def variable_source_fluxes(config=HoldingsConfig()):
    """``{sbid: peak flux (mJy/beam)}`` of the VAST field's variable source, and its position.

    Returns
    -------
    tuple
        ``(ra, dec, {sbid: flux_mjy})``.
    """
    source = next(s for s in field_sources(config, VAST_FIELD) if s.role == "variable")
    fluxes = {obs.sbid: epoch_flux(source, obs.epoch) for obs in OBSERVATIONS if obs.field is VAST_FIELD}
    return source.ra, source.dec, fluxes


def line_frequencies(config):
    n = config.cube_channels
    return LINE_BAND_CENTRE_HZ + (np.arange(n) - (n - 1) / 2.0) * LINE_CHANNEL_WIDTH_HZ


def pol_frequencies(config):
    low, high = POL_BAND_HZ
    width = (high - low) / config.pol_channels
    return low + (np.arange(config.pol_channels) + 0.5) * width, width


def iso_mjd(iso):
    moment = datetime.fromisoformat(iso).replace(tzinfo=timezone.utc)
    return (moment - datetime(1858, 11, 17, tzinfo=timezone.utc)).total_seconds() / 86400.0
