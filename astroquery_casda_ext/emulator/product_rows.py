"""The table rows of the synthetic holdings: ``ivoa.obscore``, ``casda.continuum_component``
and ``casda.observation``, from a product's FITS header and the sky model.

Row conventions worth knowing are in ``holdings.py``'s docstring.
"""
import math
from datetime import datetime, timezone

import numpy as np
from astropy.wcs import WCS

from .sky_model import BULK_PROJECT, PROJECTS, SPEED_OF_LIGHT, epoch_flux, iso_mjd

__all__ = ["obscore_row", "component_rows", "observation_row"]


def _iso_z(iso, seconds=0.0):
    moment = datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp() + seconds
    text = datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text[:-3] + "Z"


def _footprint(header):
    """s_ra, s_dec, s_region and s_fov from the outer corners of the pixel grid."""
    wcs = WCS(header).celestial
    nx, ny = header["NAXIS1"], header["NAXIS2"]
    xs = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    ys = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ras, decs = wcs.pixel_to_world_values(xs, ys)
    region = "POLYGON ICRS " + " ".join(f"{float(ra) % 360.0!r} {float(dec)!r}" for ra, dec in zip(ras, decs))
    diagonal = math.hypot(nx, ny) * abs(header["CDELT2"])
    return float(header["CRVAL1"]), float(header["CRVAL2"]), region, diagonal


def _spectral_coverage(header):
    """(em_min, em_max, em_res_power, em_resolution) in metres from the FREQ axis."""
    n, crval, cdelt = header["NAXIS3"], header["CRVAL3"], abs(header["CDELT3"])
    low, high = crval - cdelt / 2.0, crval + (n - 1) * cdelt + cdelt / 2.0
    centre = (low + high) / 2.0
    return SPEED_OF_LIGHT / high, SPEED_OF_LIGHT / low, centre / cdelt, SPEED_OF_LIGHT * cdelt / centre ** 2


def _project(code):
    return next(p for p in PROJECTS + (BULK_PROJECT,) if p.code == code)


def obscore_row(plan, header, size):
    obs = plan.observation
    s_ra, s_dec, s_region, s_fov = _footprint(header)
    em_min, em_max, res_power, em_resolution = _spectral_coverage(header)
    t_min = iso_mjd(obs.start)
    n_stokes = header["NAXIS4"]
    product_id = f"cube-{plan.numeric_id}"
    return {
        "dataproduct_type": "cube", "calib_level": 2, "obs_collection": _project(obs.project).short_name,
        "obs_id": str(obs.sbid), "obs_publisher_did": product_id,
        "access_url": f"#{{baseUrl}}datalink/links?ID={product_id}",
        "access_format": "application/x-votable+xml;content=datalink",
        "access_estsize": math.ceil(size / 1024), "target_name": obs.field.name,
        "s_ra": s_ra, "s_dec": s_dec, "s_fov": s_fov, "s_region": s_region,
        "s_resolution": header.get("BMAJ", 0.0) * 3600.0,
        "t_min": t_min, "t_max": t_min + obs.duration_s / 86400.0, "t_exptime": obs.duration_s,
        "t_resolution": None, "em_min": em_min, "em_max": em_max, "em_res_power": res_power,
        "o_ucd": "phot.flux.density;phys.polarisation" if n_stokes > 1 else "phot.flux.density",
        "pol_states": "/I/Q/U/V/" if n_stokes == 4 else "/I/", "facility_name": "ASKAP",
        "instrument_name": None, "dataproduct_subtype": plan.subtype, "em_ucd": "em.freq", "em_unit": "m",
        "em_resolution": em_resolution, "s_resolution_min": header.get("BMIN", 0.0) * 3600.0,
        "s_resolution_max": header.get("BMAJ", 0.0) * 3600.0, "s_ucd": "pos.eq", "s_unit": "deg",
        "obs_release_date": plan.release or None, "quality_level": obs.quality, "thumbnail_id": None,
        "filename": plan.filename, "em_xel": header["NAXIS3"], "s_xel1": header["NAXIS1"],
        "s_xel2": header["NAXIS2"], "t_xel": 1, "pol_xel": n_stokes,
    }


def _sexagesimal(ra, dec):
    """('12:30:00.00', '-45:00:00.0', 'J123000-450000') for a position in degrees."""
    ra_s = round(ra / 15.0 * 3600.0, 2) % 86400.0
    sign = "-" if dec < 0 else "+"
    dec_s = round(abs(dec) * 3600.0, 1)
    h, rem = divmod(ra_s, 3600.0)
    m, s = divmod(rem, 60.0)
    d, drem = divmod(dec_s, 3600.0)
    dm, ds = divmod(drem, 60.0)
    hms = f"{int(h):02d}:{int(m):02d}:{s:05.2f}"
    dms = f"{sign}{int(d):02d}:{int(dm):02d}:{ds:04.1f}"
    name = f"J{int(h):02d}{int(m):02d}{int(s):02d}{sign}{int(d):02d}{int(dm):02d}{int(ds):02d}"
    return hms, dms, name


def component_rows(config, obs, catalogue_id, sky):
    fld = obs.field
    rows = []
    for source in sky[fld.name]:
        flux = epoch_flux(source, obs.epoch)
        hms, dms, name = _sexagesimal(source.ra, source.dec)
        position_error = max(0.05, fld.beam[0] * fld.rms_mjy / (2.0 * flux))
        rows.append({
            "catalogue_id": catalogue_id, "first_sbid": obs.sbid, "other_sbids": "",
            "project_id": obs.project, "island_id": f"SB{obs.sbid}_island_{source.index}",
            "component_id": f"SB{obs.sbid}_component_{source.index}a", "component_name": name,
            "ra_hms_cont": hms, "dec_dms_cont": dms, "ra_deg_cont": source.ra, "dec_deg_cont": source.dec,
            "ra_err": round(position_error, 3), "dec_err": round(position_error, 3), "freq": fld.freq_mhz,
            "flux_peak": flux, "flux_peak_err": fld.rms_mjy, "flux_int": flux,
            "flux_int_err": round(fld.rms_mjy * math.sqrt(2.0), 4),
            "maj_axis": fld.beam[0], "min_axis": fld.beam[1], "pos_ang": fld.beam[2],
            "spectral_index": source.spectral_index, "rms_image": fld.rms_mjy, "has_siblings": 0,
            "released_date": obs.release or None, "sbid": obs.sbid,
        })
    return rows


def observation_row(obs):
    return {
        "sbid": obs.sbid, "obs_start": _iso_z(obs.start), "obs_end": _iso_z(obs.start, obs.duration_s),
        "obs_start_mjd": iso_mjd(obs.start), "obs_end_mjd": iso_mjd(obs.start) + obs.duration_s / 86400.0,
        "telescope": "ASKAP", "obs_program": _project(obs.project).short_name,
        "project_code": obs.project, "released_date": obs.release or None,
    }
